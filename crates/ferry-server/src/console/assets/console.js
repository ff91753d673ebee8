// Ferry console: live updates over server-sent events. Every page works without this
// script; with it, a deployment's timeline, state, traffic weights, analysis and charts,
// and the dashboard's rows and sections, follow what happens without a reload. No inline
// script (the CSP forbids it); text from the event stream is inserted as text, never as
// HTML; HTML comes only from the console's own server-rendered pages and fragments
// (escaped there).
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

  // Whether a part holds something the person is doing (focus, a typed reason): it is
  // left alone unless the deployment's state changed.
  function inUse(part) {
    if (part.contains(document.activeElement) && document.activeElement !== document.body) {
      return true;
    }
    return Array.prototype.some.call(part.querySelectorAll('input, select, textarea'), function (input) {
      return input.type !== 'hidden' && input.value !== input.defaultValue;
    });
  }

  // Fetches `url` (this page, or a fragment of it) and swaps in the fresh versions of the
  // elements matching `selector` that changed (by id). `force`: even those in use.
  var busy = false;
  var pending = null;
  function refresh(url, selector, force) {
    if (busy) {
      pending = { url: url, selector: selector, force: force || (pending && pending.force) };
      return;
    }
    busy = true;
    fetch(url, { credentials: 'same-origin', headers: { Accept: 'text/html' } })
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
          if (next && !old.isEqualNode(next) && (force || !inUse(old))) {
            old.replaceWith(document.importNode(next, true));
          }
        });
        main.setAttribute('data-refreshed', String(Date.now()));
      })
      .catch(function () {
        say('Could not refresh this page; reload it.');
      })
      .finally(function () {
        busy = false;
        if (pending) {
          var again = pending;
          pending = null;
          refresh(again.url, again.selector, again.force);
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
    // The parts that change (weights, analysis, charts, actions, gates, hooks), rendered by
    // the server, after each batch of events and each new traffic sample.
    var parts = '/deployments/' + encodeURIComponent(deployment) + '/parts';
    function refreshParts(force) {
      refresh(parts, '[data-live-part]', force);
    }
    source.addEventListener('sampled', function () {
      refreshParts(false);
    });
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
      var changed = s.state !== state;
      state = s.state;
      main.setAttribute('data-state', state);
      refreshParts(changed);
    });
    source.addEventListener('end', function () {
      source.close();
      say('This deployment is over.');
      refreshParts(true);
    });
  }

  // The dashboard: after a change, only the pieces whose fingerprint moved are fetched
  // (`/dashboard/parts`, given the fingerprints this page has) and swapped in — a row, the
  // waiting or rollouts section, or the whole live part when the set of apps or columns
  // changed. Events arriving while a fetch runs make one more fetch after it, not one each.
  if (main.hasAttribute('data-live-dashboard')) {
    var filter = new URLSearchParams(location.search).get('app') || '';
    var skew = 0;
    var setClock = function () {
      var live = document.getElementById('live');
      var now = live ? Number(live.getAttribute('data-now-ms')) : 0;
      if (now) {
        skew = now - Date.now();
      }
    };
    setClock();
    var have = function () {
      var live = document.getElementById('live');
      if (!live) {
        return '';
      }
      var fps = [live.getAttribute('data-frame')];
      live.querySelectorAll('[data-fp]').forEach(function (el) {
        fps.push(el.getAttribute('data-fp'));
      });
      return fps.join('.');
    };
    var fetching = false;
    var again = false;
    var update = function () {
      if (fetching) {
        again = true;
        return;
      }
      fetching = true;
      fetch('/dashboard/parts?app=' + encodeURIComponent(filter) + '&have=' + encodeURIComponent(have()), {
        credentials: 'same-origin',
        headers: { Accept: 'text/html' }
      })
        .then(function (r) {
          if (!r.ok) {
            throw new Error('HTTP ' + r.status);
          }
          return r.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, 'text/html');
          var whole = fresh.getElementById('live');
          var pieces = whole ? [whole] : Array.prototype.slice.call(fresh.querySelectorAll('[data-fp]'));
          pieces.forEach(function (piece) {
            var old = document.getElementById(piece.id);
            if (old) {
              old.replaceWith(document.importNode(piece, true));
            }
          });
          if (whole) {
            setClock();
          }
          main.setAttribute('data-refreshed', String(Date.now()));
        })
        .catch(function () {
          say('Could not refresh this page; reload it.');
        })
        .finally(function () {
          fetching = false;
          if (again) {
            again = false;
            update();
          }
        });
    };
    var changes = new EventSource('/live');
    changes.addEventListener('changed', update);
    // Whatever changed before the stream was (re)connected is fetched once it is.
    changes.onopen = update;
    // Ages (`5m`) count on between updates, from the server's clock.
    var age = function (ms) {
      var s = Math.max(0, Math.floor(ms / 1000));
      return s < 60 ? s + 's' : s < 3600 ? Math.floor(s / 60) + 'm' : s < 86400 ? Math.floor(s / 3600) + 'h' : Math.floor(s / 86400) + 'd';
    };
    setInterval(function () {
      var now = Date.now() + skew;
      document.querySelectorAll('#live time[data-at-ms]').forEach(function (t) {
        t.textContent = age(now - Number(t.getAttribute('data-at-ms')));
      });
    }, 10000);
  }
})();
