// Ferry console: live updates over server-sent events. Every page works without this
// script; with it, a deployment's timeline, state and traffic weights, and the dashboard,
// follow what happens without a reload. No inline script (the CSP forbids it); all text
// from the server is inserted as text, never as HTML.
(function () {
  'use strict';
  var main = document.getElementById('main');
  if (!main || !window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  var status = document.getElementById('live-status');
  function say(text) {
    if (status) {
      status.textContent = text;
    }
  }

  // Fetches this page again and swaps in the fresh versions of the given elements.
  var busy = false;
  var pending = null;
  function refresh(selector) {
    if (busy) {
      pending = selector;
      return;
    }
    busy = true;
    fetch(location.href, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
      .then(function (r) {
        if (!r.ok) {
          throw new Error('HTTP ' + r.status);
        }
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, 'text/html');
        document.querySelectorAll(selector).forEach(function (old) {
          if (!old.id) {
            return;
          }
          var next = fresh.getElementById(old.id);
          if (next) {
            old.replaceWith(document.importNode(next, true));
          }
        });
      })
      .catch(function () {
        say('Could not refresh this page; reload it.');
      })
      .finally(function () {
        busy = false;
        if (pending) {
          var again = pending;
          pending = null;
          refresh(again);
        }
      });
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) {
      el.textContent = text;
    }
  }

  function setWeight(canary) {
    var c = Math.max(0, Math.min(100, canary));
    setText('canary-weight', c.toFixed(1));
    setText('stable-weight', (100 - c).toFixed(1));
    var a = document.getElementById('w-canary');
    var b = document.getElementById('w-stable');
    if (a && b) {
      a.setAttribute('width', c.toFixed(2));
      b.setAttribute('x', c.toFixed(2));
      b.setAttribute('width', (100 - c).toFixed(2));
    }
  }

  var deployment = main.getAttribute('data-live-deployment');
  if (deployment) {
    var state = main.getAttribute('data-state');
    var after = main.getAttribute('data-after') || '0';
    var timeline = document.getElementById('timeline');
    var source = new EventSource('/deployments/' + encodeURIComponent(deployment) + '/live?after=' + encodeURIComponent(after));
    source.onopen = function () {
      say('Live: new events appear as they happen.');
    };
    source.onerror = function () {
      say('Live updates interrupted; reconnecting…');
    };
    source.addEventListener('timeline', function (message) {
      var e = JSON.parse(message.data);
      if (!timeline || timeline.querySelector('li[data-seq="' + e.seq + '"]')) {
        return;
      }
      var li = document.createElement('li');
      li.setAttribute('data-seq', String(e.seq));
      li.setAttribute('data-at-ms', String(e.at_ms));
      li.setAttribute('data-arrived-ms', String(Date.now()));
      li.className = 'fresh';
      var time = document.createElement('time');
      time.textContent = e.at;
      var kind = document.createElement('span');
      kind.className = 'kind';
      kind.textContent = e.kind;
      var text = document.createElement('span');
      text.className = 'msg';
      text.textContent = e.message;
      li.append(time, ' ', kind, ' ', text);
      timeline.appendChild(li);
    });
    // The charts follow the rollout: redrawn by the server every 5 s until it ends.
    var charts = window.setInterval(function () {
      if (document.getElementById('charts')) {
        refresh('#charts');
      }
    }, 5000);
    source.addEventListener('status', function (message) {
      var s = JSON.parse(message.data);
      if (typeof s.canary === 'number') {
        setWeight(s.canary);
      }
      if (s.stage) {
        setText('stage', s.stage);
      }
      if (s.summary) {
        setText('rollout-summary', s.summary);
      }
      if (s.state !== state) {
        state = s.state;
        main.setAttribute('data-state', state);
        refresh('[data-live-part]');
      }
    });
    source.addEventListener('end', function () {
      source.close();
      window.clearInterval(charts);
      say('This deployment is over.');
      refresh('[data-live-part]');
    });
  }

  if (main.hasAttribute('data-live-dashboard')) {
    var changes = new EventSource('/live');
    changes.addEventListener('changed', function () {
      refresh('#live');
    });
  }
})();
