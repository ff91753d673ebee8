//! Routing, grouping and inhibition as pure decisions, meaning what they mean in
//! Alertmanager:
//!
//! - **routing**: routes are tried in order; a notification goes to the receiver of the
//!   first route whose `match` labels all match, and on to later routes only while the
//!   matching route says `continue` ([`Routing::routes_for`]);
//! - **grouping**: per (route, receiver), notifications with the same values of the route's
//!   `group_by` labels form a group ([`Routing::group_key`]). A new group sends its first
//!   message `group_wait` after its first notification; later notifications wait until
//!   `group_interval` after the group's previous message; while alerts of the group still
//!   fire, they are sent again every `repeat_interval` ([`Group`]). A message carries the
//!   group's new notifications and its alerts still firing;
//! - **inhibition**: while an alert matching a rule's `source_match` fires, a notification
//!   matching its `target_match` with the same values of the `equal` labels is not sent
//!   ([`Routing::inhibited_by`]); an alert never inhibits itself. As in Alertmanager, it is
//!   decided when a group's message is sent, against the alerts firing then
//!   ([`Routing::mute`]): a notification routed while its inhibitor fired is sent if the
//!   inhibitor resolved before the message left, and one routed before its inhibitor
//!   started firing is muted if the inhibitor fires when the message leaves.
//!
//! The legacy `notifications:` entries compile to one receiver and one route each
//! (`notifications[N]`), matching only deployment events, ungrouped and never delayed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Kind, Notification};
use crate::manifest::{
    InhibitRule, Manifest, MatchValue, Matchers, Receiver, SlackReceiver, WebhookFormat,
    WebhookReceiver,
};

pub const DEFAULT_GROUP_WAIT: Duration = Duration::ZERO;
pub const DEFAULT_GROUP_INTERVAL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 60 * 60);

/// A group's timers, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub group_wait_ms: i64,
    pub group_interval_ms: i64,
    pub repeat_interval_ms: i64,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One route, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub receiver: String,
    pub matchers: Matchers,
    /// `None`: no grouping (`['...']`).
    pub group_by: Option<Vec<String>>,
    pub timing: Timing,
    pub continue_matching: bool,
}

/// A receiver as the dispatcher uses it: its manifest definition, and for legacy
/// `notifications:` whether today's body (a deployment's state change) is what it wants.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverSpec {
    pub receiver: Receiver,
    pub legacy: bool,
}

/// Receivers, routes and inhibition rules of one app.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Routing {
    pub receivers: BTreeMap<String, ReceiverSpec>,
    pub routes: Vec<Route>,
    pub inhibit: Vec<InhibitRule>,
}

/// The deployment kinds (what legacy `notifications:` hear about).
const DEPLOYMENT_KINDS: [Kind; 6] = [
    Kind::DeploymentStarted,
    Kind::DeploymentSucceeded,
    Kind::DeploymentFailed,
    Kind::DeploymentRolledBack,
    Kind::DeploymentAborted,
    Kind::DeploymentChanged,
];

impl Routing {
    /// The routing of a (valid) manifest: its `receivers`/`routes`/`inhibit`, then its
    /// legacy `notifications:` as receivers and routes named `notifications[N]`.
    pub fn of(m: &Manifest) -> Routing {
        let mut routing = Routing {
            receivers: m
                .receivers
                .iter()
                .map(|(name, r)| {
                    (
                        name.clone(),
                        ReceiverSpec {
                            receiver: r.clone(),
                            legacy: false,
                        },
                    )
                })
                .collect(),
            routes: m
                .routes
                .iter()
                .map(|r| Route {
                    receiver: r.receiver.clone(),
                    matchers: r.matchers.clone(),
                    group_by: r.group_by.clone().filter(|g| !g.iter().any(|l| l == "...")),
                    timing: Timing {
                        group_wait_ms: ms(r.group_wait.map_or(DEFAULT_GROUP_WAIT, |d| d.get())),
                        group_interval_ms: ms(r
                            .group_interval
                            .map_or(DEFAULT_GROUP_INTERVAL, |d| d.get())),
                        repeat_interval_ms: ms(r
                            .repeat_interval
                            .map_or(DEFAULT_REPEAT_INTERVAL, |d| d.get())),
                    },
                    continue_matching: r.continue_matching,
                })
                .collect(),
            inhibit: m.inhibit.clone(),
        };
        for (i, n) in m.notifications.iter().enumerate() {
            let name = format!("notifications[{i}]");
            let receiver = match n.format {
                WebhookFormat::Json => Receiver::Webhook(WebhookReceiver {
                    url: n.webhook.clone(),
                    secret: None,
                }),
                WebhookFormat::Slack => Receiver::Slack(SlackReceiver {
                    url: Some(n.webhook.clone()),
                    url_secret: None,
                }),
            };
            routing.receivers.insert(
                name.clone(),
                ReceiverSpec {
                    receiver,
                    legacy: true,
                },
            );
            let mut matchers = Matchers::new();
            matchers.insert(
                super::LABEL_KIND.into(),
                MatchValue::Any(DEPLOYMENT_KINDS.iter().map(|k| k.as_str().into()).collect()),
            );
            if !n.states.is_empty() {
                matchers.insert("state".into(), MatchValue::Any(n.states.clone()));
            }
            if !n.environments.is_empty() {
                matchers.insert(
                    super::LABEL_ENV.into(),
                    MatchValue::Any(n.environments.clone()),
                );
            }
            routing.routes.push(Route {
                receiver: name,
                matchers,
                group_by: None,
                timing: Timing {
                    group_wait_ms: 0,
                    group_interval_ms: 0,
                    repeat_interval_ms: ms(DEFAULT_REPEAT_INTERVAL),
                },
                // every legacy webhook hears every event it wants, as before
                continue_matching: true,
            });
        }
        routing
    }

    /// The routes `n` goes to (indexes into `routes`), in order.
    pub fn routes_for(&self, n: &Notification) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if matches(&route.matchers, n) {
                out.push(i);
                if !route.continue_matching {
                    // legacy routes come last and always continue: a user route that stops
                    // the walk does not silence them
                    out.extend(
                        self.routes
                            .iter()
                            .enumerate()
                            .skip(i + 1)
                            .filter(|(_, r)| {
                                self.receivers.get(&r.receiver).is_some_and(|s| s.legacy)
                                    && matches(&r.matchers, n)
                            })
                            .map(|(j, _)| j),
                    );
                    break;
                }
            }
        }
        out
    }

    /// The group `n` joins on route `route`: `ROUTE:label=value,…` for `group_by`, or
    /// for no grouping the alert's fingerprint (firing and resolved together) or the
    /// notification's key.
    pub fn group_key(&self, route: usize, n: &Notification) -> String {
        let Some(r) = self.routes.get(route) else {
            return format!("{route}:{}", n.key);
        };
        match &r.group_by {
            None if n.kind.is_alert() => format!("{route}:alert:{}", n.fingerprint()),
            None => format!("{route}:{}", n.key),
            Some(labels) => {
                let parts: Vec<String> = labels
                    .iter()
                    .map(|l| format!("{l}={}", n.labels.get(l).map_or("", String::as_str)))
                    .collect();
                format!("{route}:{}", parts.join(","))
            }
        }
    }

    /// The firing alert (and the rule's index) that mutes `target`, if any.
    pub fn inhibited_by<'a>(
        &self,
        target: &Notification,
        firing: &'a [Notification],
    ) -> Option<(usize, &'a Notification)> {
        for (i, rule) in self.inhibit.iter().enumerate() {
            if !matches(&rule.target_match, target) {
                continue;
            }
            let source = firing.iter().find(|source| {
                source.kind == Kind::AlertFiring
                    && source.fingerprint() != target.fingerprint()
                    && matches(&rule.source_match, source)
                    && rule
                        .equal
                        .iter()
                        .all(|l| source.labels.get(l) == target.labels.get(l))
            });
            if let Some(source) = source {
                return Some((i, source));
            }
        }
        None
    }
}

/// A group's message split at the moment it is sent ([`Routing::mute`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Muting<'a> {
    /// Outbox ids to send, in the batch's order.
    pub send: Vec<i64>,
    /// Outbox ids an alert firing now mutes, in the batch's order.
    pub muted: Vec<i64>,
    /// The rule (index into `inhibit`) and firing alert that muted the first of `muted`.
    pub muted_by: Option<(usize, &'a Notification)>,
}

impl Routing {
    /// Splits a group's message (`batch`: outbox id and notification) into what is sent and
    /// what the alerts firing at this moment (`firing`) inhibit.
    pub fn mute<'a>(
        &self,
        batch: &[(i64, Notification)],
        firing: &'a [Notification],
    ) -> Muting<'a> {
        let mut out = Muting {
            send: Vec::new(),
            muted: Vec::new(),
            muted_by: None,
        };
        for (id, n) in batch {
            match self.inhibited_by(n, firing) {
                Some(by) => {
                    out.muted.push(*id);
                    out.muted_by.get_or_insert(by);
                }
                None => out.send.push(*id),
            }
        }
        out
    }
}

/// Whether every matcher matches `n`'s labels.
pub fn matches(matchers: &Matchers, n: &Notification) -> bool {
    matchers
        .iter()
        .all(|(label, want)| want.matches(n.labels.get(label).map(String::as_str)))
}

/// A notification group's state, persisted between the dispatcher's passes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Group {
    /// Notifications (outbox ids) not sent yet, in arrival order.
    pub pending: Vec<i64>,
    /// When the oldest of them arrived.
    pub first_pending_at_ms: Option<i64>,
    /// When the group last sent a message.
    pub last_flush_at_ms: Option<i64>,
    /// The group's alerts firing now: fingerprint → their firing notification's id.
    pub firing: BTreeMap<String, i64>,
    /// Messages sent so far.
    pub flushes: u64,
    /// The notifications the latest message left out as inhibited (see [`Group::note_muted`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted: Vec<i64>,
}

/// What a group does at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flush {
    /// Send these notifications (outbox ids, ascending) as one message.
    Send(Vec<i64>),
    /// Nothing to send before this time.
    Wait(i64),
    /// Nothing left: the group may be forgotten.
    Idle,
}

impl Group {
    /// Adds notification `id` that arrived at `now`.
    pub fn add(&mut self, id: i64, n: &Notification, now_ms: i64) {
        match n.kind {
            Kind::AlertFiring => {
                self.firing.insert(n.fingerprint(), id);
            }
            Kind::AlertResolved => {
                self.firing.remove(&n.fingerprint());
            }
            _ => {}
        }
        if !self.pending.contains(&id) {
            self.pending.push(id);
        }
        self.first_pending_at_ms.get_or_insert(now_ms);
    }

    /// When the group next has something to do (send, repeat, or be forgotten).
    pub fn due_at(&self, t: &Timing) -> i64 {
        match (self.pending.is_empty(), self.last_flush_at_ms) {
            (false, None) => self
                .first_pending_at_ms
                .unwrap_or(0)
                .saturating_add(t.group_wait_ms),
            (false, Some(last)) => last
                .saturating_add(t.group_interval_ms)
                .max(self.first_pending_at_ms.unwrap_or(0)),
            (true, Some(last)) if !self.firing.is_empty() => {
                last.saturating_add(t.repeat_interval_ms.max(t.group_interval_ms))
            }
            (true, Some(last)) => last.saturating_add(t.group_interval_ms),
            (true, None) => 0,
        }
    }

    /// Decides at `now`; on [`Flush::Send`] the group has recorded the message.
    pub fn flush(&mut self, t: &Timing, now_ms: i64) -> Flush {
        let due = self.due_at(t);
        if now_ms < due {
            return Flush::Wait(due);
        }
        if self.pending.is_empty() && self.firing.is_empty() {
            return Flush::Idle;
        }
        let batch: BTreeSet<i64> = self
            .pending
            .drain(..)
            .chain(self.firing.values().copied())
            .collect();
        self.first_pending_at_ms = None;
        self.last_flush_at_ms = Some(now_ms);
        self.flushes += 1;
        Flush::Send(batch.into_iter().collect())
    }
}

impl Group {
    /// Records that this message leaves out `muted` (outbox ids, ascending) as inhibited;
    /// true when that is news to record: not what the previous message left out. A group
    /// whose alerts stay inhibited repeats its message at each `repeat_interval`, but the
    /// inhibition is one episode, recorded once; it ends when a message mutes nothing.
    pub fn note_muted(&mut self, muted: &[i64]) -> bool {
        let news = !muted.is_empty() && muted != self.muted.as_slice();
        self.muted = muted.to_vec();
        news
    }
}

/// The idempotency key of a group's message: unique per (app, receiver, group, message),
/// stable across retries (it is stored with the delivery).
pub fn delivery_key(
    app: &str,
    receiver: &str,
    group_key: &str,
    batch: &[i64],
    flushes: u64,
) -> String {
    let mut hash = Sha256::new();
    for part in [app, receiver, group_key] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
    let last = batch.iter().max().copied().unwrap_or(0);
    format!("ferry-{hex}-{last}-{flushes}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;
    use crate::notify::{Severity, key_alert};

    const BASE: &str = "app: shop\nservices:\n  web:\n    run: [\"x\"]\nenvironments:\n  staging: { listen: \"127.0.0.1:8081\" }\n  prod: { listen: \"127.0.0.1:8080\" }\n";

    fn alert(name: &str, severity: Severity, env: &str, kind: Kind) -> Notification {
        Notification::new(
            key_alert("shop", env, name, 1, kind),
            kind,
            "shop",
            env,
            severity,
            name,
            1,
        )
        .label("alertname", name)
    }

    fn deploy(id: i64, state: &str, env: &str) -> Notification {
        let st: crate::model::DeploymentState = state.parse().unwrap();
        Notification::new(
            super::super::key_deployment(id, 2, st),
            Kind::of_deployment_state(st),
            "shop",
            env,
            Severity::of_kind(Kind::of_deployment_state(st)),
            state,
            1,
        )
        .label("state", state)
    }

    fn routing(yaml: &str) -> Routing {
        Routing::of(&parse(&format!("{BASE}{yaml}"), "ferry.yaml").unwrap())
    }

    const RECEIVERS: &str = "receivers:\n  pager:\n    pagerduty:\n      routing_key_secret: PD\n  chat:\n    slack:\n      url: https://chat.example.com/x\n  all:\n    webhook:\n      url: https://hooks.example.com/x\n";

    #[test]
    fn first_match_wins_unless_continue() {
        let r = routing(&format!(
            "{RECEIVERS}routes:\n  - receiver: pager\n    match: {{severity: critical}}\n    continue: true\n  - receiver: chat\n    match: {{severity: [critical, warning], env: prod}}\n  - receiver: all\n"
        ));
        let critical = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        assert_eq!(r.routes_for(&critical), vec![0, 1]);
        let warning = alert("slow", Severity::Warning, "prod", Kind::AlertFiring);
        assert_eq!(r.routes_for(&warning), vec![1]);
        let staging = alert("slow", Severity::Warning, "staging", Kind::AlertFiring);
        assert_eq!(r.routes_for(&staging), vec![2]);
        let info = deploy(1, "succeeded", "prod");
        assert_eq!(r.routes_for(&info), vec![2]);
        // a label the notification lacks never matches
        let r = routing(&format!(
            "{RECEIVERS}routes:\n  - receiver: chat\n    match: {{team: payments}}\n"
        ));
        assert!(r.routes_for(&info).is_empty());
    }

    #[test]
    fn legacy_notifications_hear_only_their_deployment_events_at_once() {
        let r = routing(&format!(
            "{RECEIVERS}routes:\n  - receiver: chat\nnotifications:\n  - webhook: http://127.0.0.1:9/a\n  - webhook: http://127.0.0.1:9/b\n    format: slack\n    states: [failed, rolled-back]\n    environments: [prod]\n"
        ));
        assert_eq!(r.receivers.len(), 5);
        assert!(r.receivers["notifications[0]"].legacy);
        assert_eq!(
            r.receivers["notifications[1]"].receiver.type_name(),
            "slack"
        );
        // a user route that matches everything does not silence the legacy webhooks
        assert_eq!(r.routes_for(&deploy(1, "succeeded", "prod")), vec![0, 1]);
        assert_eq!(
            r.routes_for(&deploy(1, "rolled-back", "prod")),
            vec![0, 1, 2]
        );
        assert_eq!(
            r.routes_for(&deploy(1, "rolled-back", "staging")),
            vec![0, 1]
        );
        // alerts never reach a legacy webhook
        let a = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        assert_eq!(r.routes_for(&a), vec![0]);
        let legacy = &r.routes[1];
        assert_eq!(legacy.timing.group_wait_ms, 0);
        assert_eq!(legacy.timing.group_interval_ms, 0);
    }

    #[test]
    fn group_keys_follow_group_by() {
        let r = routing(&format!(
            "{RECEIVERS}routes:\n  - receiver: chat\n    group_by: [env, alertname]\n    continue: true\n  - receiver: all\n    group_by: ['...']\n"
        ));
        let a = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        let b = alert("down", Severity::Warning, "prod", Kind::AlertFiring);
        let c = alert("slow", Severity::Critical, "prod", Kind::AlertFiring);
        assert_eq!(r.group_key(0, &a), "0:env=prod,alertname=down");
        assert_eq!(r.group_key(0, &a), r.group_key(0, &b));
        assert_ne!(r.group_key(0, &a), r.group_key(0, &c));
        // no grouping: an alert's firing and resolved share a group, events are alone
        let resolved = alert("down", Severity::Critical, "prod", Kind::AlertResolved);
        assert_eq!(r.group_key(1, &a), r.group_key(1, &resolved));
        assert_ne!(r.group_key(1, &a), r.group_key(1, &b));
        assert_ne!(
            r.group_key(1, &deploy(1, "succeeded", "prod")),
            r.group_key(1, &deploy(2, "succeeded", "prod"))
        );
        // a missing label groups as empty
        let d = deploy(1, "succeeded", "prod");
        assert_eq!(r.group_key(0, &d), "0:env=prod,alertname=");
    }

    #[test]
    fn inhibition_needs_a_firing_source_and_equal_labels() {
        let r = routing(&format!(
            "{RECEIVERS}inhibit:\n  - source_match: {{severity: critical}}\n    target_match: {{severity: warning}}\n    equal: [env]\n"
        ));
        let critical = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        let warning = alert("slow", Severity::Warning, "prod", Kind::AlertFiring);
        let warning_staging = alert("slow", Severity::Warning, "staging", Kind::AlertFiring);
        let firing = vec![critical.clone()];
        assert_eq!(r.inhibited_by(&warning, &firing), Some((0, &critical)));
        assert_eq!(r.inhibited_by(&warning_staging, &firing), None);
        assert_eq!(r.inhibited_by(&critical, &firing), None);
        assert_eq!(r.inhibited_by(&warning, &[]), None);
        // a resolved alert in the list inhibits nothing
        let resolved = alert("down", Severity::Critical, "prod", Kind::AlertResolved);
        assert_eq!(r.inhibited_by(&warning, &[resolved]), None);
        // an alert matching both sides never mutes itself
        let r = routing(&format!(
            "{RECEIVERS}inhibit:\n  - source_match: {{app: shop}}\n    target_match: {{app: shop}}\n"
        ));
        assert_eq!(r.inhibited_by(&critical, &firing), None);
        assert_eq!(r.inhibited_by(&warning, &firing), Some((0, &critical)));
        // a label both lack counts as equal (as in Alertmanager)
        let r = routing(&format!(
            "{RECEIVERS}inhibit:\n  - source_match: {{severity: critical}}\n    target_match: {{severity: warning}}\n    equal: [team]\n"
        ));
        assert!(r.inhibited_by(&warning, &firing).is_some());
    }

    #[test]
    fn an_inhibition_is_recorded_once_per_episode_not_at_each_repeat() {
        let mut g = Group::default();
        assert!(!g.note_muted(&[]), "nothing muted: nothing to record");
        assert!(g.note_muted(&[4]), "the first muted message");
        assert!(!g.note_muted(&[4]), "its repeat while still muted");
        assert!(!g.note_muted(&[4]), "and the next one");
        assert!(
            g.note_muted(&[4, 9]),
            "another alert of the group is muted too"
        );
        assert!(
            !g.note_muted(&[]),
            "the inhibitor resolved: sent, the episode ends"
        );
        assert!(g.note_muted(&[4, 9]), "muted again: a new episode");
        // the state survives a restart (it is stored with the group)
        let back: Group = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back.muted, vec![4, 9]);
        let old: Group = serde_json::from_str(
            r#"{"pending":[],"first_pending_at_ms":null,"last_flush_at_ms":null,"firing":{},"flushes":3}"#,
        )
        .unwrap();
        assert!(
            old.muted.is_empty(),
            "groups stored before read as muting nothing"
        );
    }

    #[test]
    fn inhibition_is_decided_when_the_message_is_sent() {
        let r = routing(&format!(
            "{RECEIVERS}inhibit:\n  - source_match: {{severity: critical}}\n    target_match: {{severity: warning}}\n    equal: [env]\n"
        ));
        let critical = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        let warning = alert("slow", Severity::Warning, "prod", Kind::AlertFiring);
        let staging = alert("slow", Severity::Warning, "staging", Kind::AlertFiring);
        let deploy_warning = deploy(9, "failed", "prod");
        let batch = vec![
            (1, warning.clone()),
            (2, staging.clone()),
            (3, deploy_warning.clone()),
        ];
        // the group's message leaves while the critical alert fires: the prod warnings are
        // muted, whenever they were routed (before the critical alert started firing too)
        let firing = [critical.clone()];
        let m = r.mute(&batch, &firing);
        assert_eq!(m.send, vec![2]);
        assert_eq!(m.muted, vec![1, 3]);
        assert_eq!(m.muted_by, Some((0, &critical)));
        // the critical alert resolved before the message left: everything is sent, although
        // it fired when the warnings were routed
        let m = r.mute(&batch, &[]);
        assert_eq!(m.send, vec![1, 2, 3]);
        assert!(m.muted.is_empty() && m.muted_by.is_none());
        // a firing list that holds the target itself does not mute it; the source itself
        // in a message is never muted by itself
        let m = r.mute(&[(4, critical.clone())], &firing);
        assert_eq!(m.send, vec![4]);
        // a group whose message is all muted sends nothing
        let m = r.mute(&batch[..1], &firing);
        assert!(m.send.is_empty());
        assert_eq!(m.muted, vec![1]);
    }

    const T: Timing = Timing {
        group_wait_ms: 30,
        group_interval_ms: 300,
        repeat_interval_ms: 3000,
    };

    #[test]
    fn a_group_waits_then_batches_then_repeats_then_goes_idle() {
        let firing = alert("down", Severity::Critical, "prod", Kind::AlertFiring);
        let other = alert("slow", Severity::Critical, "prod", Kind::AlertFiring);
        let resolved = alert("down", Severity::Critical, "prod", Kind::AlertResolved);
        let other_resolved = alert("slow", Severity::Critical, "prod", Kind::AlertResolved);
        let mut g = Group::default();
        g.add(1, &firing, 100);
        // group_wait: the first message waits for more
        assert_eq!(g.flush(&T, 129), Flush::Wait(130));
        g.add(2, &other, 120);
        assert_eq!(g.flush(&T, 130), Flush::Send(vec![1, 2]));
        assert_eq!(g.flushes, 1);
        // nothing new: the firing alerts repeat after repeat_interval
        assert_eq!(g.flush(&T, 131), Flush::Wait(3130));
        // something new waits for group_interval after the last message
        g.add(3, &resolved, 200);
        assert_eq!(g.flush(&T, 429), Flush::Wait(430));
        // the message carries the new notification and the alerts still firing
        assert_eq!(g.flush(&T, 430), Flush::Send(vec![2, 3]));
        assert_eq!(g.firing.len(), 1);
        assert_eq!(g.flush(&T, 431), Flush::Wait(3430));
        assert_eq!(g.flush(&T, 3430), Flush::Send(vec![2]));
        g.add(4, &other_resolved, 3500);
        assert_eq!(g.flush(&T, 3730), Flush::Send(vec![4]));
        assert!(g.firing.is_empty());
        // nothing pending, nothing firing: idle once group_interval has passed
        assert_eq!(g.flush(&T, 3731), Flush::Wait(4030));
        assert_eq!(g.flush(&T, 4030), Flush::Idle);
        assert_eq!(g.flushes, 4);
    }

    #[test]
    fn a_late_event_in_a_quiet_group_is_not_sent_before_it_arrived() {
        let mut g = Group::default();
        let d = deploy(1, "succeeded", "prod");
        g.add(1, &d, 0);
        assert_eq!(g.flush(&T, 30), Flush::Send(vec![1]));
        // long after group_interval: due at once (not in the past before it arrived)
        g.add(2, &deploy(2, "succeeded", "prod"), 10_000);
        assert_eq!(g.due_at(&T), 10_000);
        assert_eq!(g.flush(&T, 10_000), Flush::Send(vec![2]));
        // adding the same id twice sends it once
        g.add(3, &d, 20_000);
        g.add(3, &d, 20_001);
        assert_eq!(g.flush(&T, 20_001), Flush::Send(vec![3]));
    }

    #[test]
    fn zero_timers_send_at_once() {
        let t = Timing {
            group_wait_ms: 0,
            group_interval_ms: 0,
            repeat_interval_ms: 10,
        };
        let mut g = Group::default();
        g.add(1, &deploy(1, "progressing", "prod"), 5);
        assert_eq!(g.flush(&t, 5), Flush::Send(vec![1]));
        g.add(2, &deploy(1, "succeeded", "prod"), 5);
        assert_eq!(g.flush(&t, 5), Flush::Send(vec![2]));
        assert_eq!(g.flush(&t, 5), Flush::Idle);
    }

    #[test]
    fn every_timing_sends_each_notification_once_in_order_and_no_earlier_than_its_rules() {
        // Exhaustive over small timers and arrival patterns: each id is sent exactly once
        // (besides repeats of firing alerts), never before group_wait after the first
        // arrival, and two messages are never closer than group_interval.
        let kinds = [
            deploy(1, "succeeded", "prod"),
            alert("a", Severity::Critical, "prod", Kind::AlertFiring),
            alert("a", Severity::Critical, "prod", Kind::AlertResolved),
        ];
        for wait in [0, 1, 5] {
            for interval in [1, 3, 7] {
                for repeat in [2, 11] {
                    let t = Timing {
                        group_wait_ms: wait,
                        group_interval_ms: interval,
                        repeat_interval_ms: repeat,
                    };
                    for pattern in 0..27u32 {
                        let mut g = Group::default();
                        let mut sent: Vec<i64> = Vec::new();
                        let mut flush_times: Vec<i64> = Vec::new();
                        let arrivals: Vec<(i64, usize)> = (0..3)
                            .map(|i| {
                                let digit = (pattern / 3u32.pow(i)) % 3;
                                (i64::from(digit) * 4 + i64::from(i), i as usize)
                            })
                            .collect();
                        for now in 0..60 {
                            for (at, which) in &arrivals {
                                if *at == now {
                                    g.add(*which as i64 + 1, &kinds[*which], now);
                                }
                            }
                            if let Flush::Send(batch) = g.flush(&t, now) {
                                flush_times.push(now);
                                sent.extend(batch);
                            }
                        }
                        for id in 1..=3i64 {
                            let count = sent.iter().filter(|x| **x == id).count();
                            assert!(count >= 1, "{t:?} {pattern}: {id} never sent: {sent:?}");
                            if id != 2 {
                                assert_eq!(count, 1, "{t:?} {pattern}: {id} sent twice");
                            }
                        }
                        let first = arrivals.iter().map(|a| a.0).min().unwrap();
                        assert!(flush_times[0] >= first + wait);
                        for pair in flush_times.windows(2) {
                            assert!(pair[1] - pair[0] >= interval, "{t:?}: {flush_times:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn delivery_keys_are_unique_per_message_and_stable() {
        let a = delivery_key("shop", "chat", "0:x", &[3, 1], 1);
        assert_eq!(a, delivery_key("shop", "chat", "0:x", &[1, 3], 1));
        assert_ne!(a, delivery_key("shop", "chat", "0:x", &[1, 3], 2));
        assert_ne!(a, delivery_key("shop", "pager", "0:x", &[1, 3], 1));
        assert_ne!(a, delivery_key("shop", "chat", "0:x", &[1, 4], 1));
        assert!(a.starts_with("ferry-") && a.len() < 60);
    }

    #[test]
    fn route_defaults_are_documented_ones() {
        let r = routing(&format!("{RECEIVERS}routes:\n  - receiver: chat\n"));
        assert_eq!(
            r.routes[0].timing,
            Timing {
                group_wait_ms: 0,
                group_interval_ms: 300_000,
                repeat_interval_ms: 14_400_000
            }
        );
    }
}
