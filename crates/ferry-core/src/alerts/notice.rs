//! What an alert's transitions leave besides its state, written in the transaction that
//! stores them: a notification when it fires and one when it resolves (the outbox), and
//! for a critical alert an incident on the change that put the version that fired into
//! service (DORA).

use sha2::{Digest, Sha256};

use super::eval::{AlertInstance, AlertStatus, Transition};
use super::facts::{Silence, alert_labels, describe, silenced_by};
use super::spec::{AlertRule, Metric, render};
use crate::api::DeploymentView;
use crate::model::{DeploymentKind, DeploymentState};
use crate::notify::{self, Kind, LABEL_APP, LABEL_ENV, LABEL_KIND, Notification};

/// The notification of transition `t` of alert `a` (its state after `t`) of `rule` in
/// app/env: `None` unless it fires or resolves, the rule notifies and no silence is in
/// force at `now_ms`.
///
/// - key: [`notify::key_alert`] (rule, environment, when the episode began, firing or
///   resolved) with a hash of the series, so a restart that re-evaluates never enqueues it
///   twice and two series of one rule never share a key;
/// - labels: the alert's (`alertname`, `app`, `env`, `severity`, the rule's, the series'),
///   which routes match; the firing and resolved notifications share a fingerprint;
/// - summary: the rule's `summary` annotation, else what fired and where;
/// - annotations: the rule's, rendered with the value; details: the series and values.
pub fn notification(
    rule: &AlertRule,
    app: &str,
    env: &str,
    t: &Transition,
    a: &AlertInstance,
    silences: &[Silence],
    now_ms: i64,
) -> Option<Notification> {
    let kind = match t.to {
        AlertStatus::Firing => Kind::AlertFiring,
        AlertStatus::Resolved => Kind::AlertResolved,
        AlertStatus::Pending | AlertStatus::Inactive => return None,
    };
    if !rule.actions.notify || silenced_by(silences, app, env, &rule.name, now_ms).is_some() {
        return None;
    }
    let metric = rule
        .parsed_condition()
        .ok()
        .flatten()
        .map_or(Metric::Value, |c| c.metric);
    let value = metric.format(t.value.unwrap_or(a.value));
    let labels = alert_labels(rule, app, env, &a.labels);
    let annotations: Vec<(String, String)> = rule
        .annotations
        .iter()
        .map(|(k, text)| (k.clone(), render(text, &value, &labels)))
        .collect();
    let summary = annotations
        .iter()
        .find(|(k, _)| k == "summary")
        .map_or_else(
            || format!("{} {}: {}", rule.name, t.to, describe(rule, a)),
            |(_, s)| s.clone(),
        );
    let key = notification_key(app, env, a, kind);
    let mut n = Notification::new(key, kind, app, env, notify_severity(rule), summary, t.at_ms);
    for (name, v) in labels {
        // the outbox's own app, env and kind stay what routes match on
        if ![LABEL_APP, LABEL_ENV, LABEL_KIND].contains(&name.as_str()) {
            n = n.label(name, v);
        }
    }
    for (name, text) in annotations {
        n = n.annotation(name, text);
    }
    Some(n.with_details(serde_json::json!({
        "alert": rule.name,
        "series": a.series,
        "status": t.to,
        "value": value,
        "fired_value": a.fired_value.map(|v| metric.format(v)),
        "active_since_ms": a.active_since_ms,
        "fired_at_ms": a.fired_at_ms,
        "resolved_at_ms": a.resolved_at_ms,
    })))
}

/// The idempotency key of alert `a`'s `kind` notification in app/env:
/// [`notify::key_alert`] (rule, environment, when the episode began, firing or resolved)
/// with a hash of the series.
pub fn notification_key(app: &str, env: &str, a: &AlertInstance, kind: Kind) -> String {
    let mut key = notify::key_alert(app, env, &a.rule, a.active_since_ms, kind);
    if !a.series.is_empty() {
        let digest = Sha256::digest(a.series.as_bytes());
        key.push('-');
        key.extend(digest[..6].iter().map(|b| format!("{b:02x}")));
    }
    key
}

/// The resolve notification of alert `a`, firing when its rule was removed (or stopped
/// watching the environment) at `now_ms`, made from its `firing` notification: the rule
/// and its labels are gone from the manifest, so the firing one's labels and annotations
/// (what receivers matched and grouped it by) are kept, under the resolved key. A firing
/// that was never notified (silenced, `notify: false`) has no resolve either.
pub fn retired_notification(firing: &Notification, a: &AlertInstance, now_ms: i64) -> Notification {
    let mut n = firing.clone();
    n.key = notification_key(&firing.app, &firing.env, a, Kind::AlertResolved);
    n.kind = Kind::AlertResolved;
    n.labels.insert(
        LABEL_KIND.to_string(),
        Kind::AlertResolved.as_str().to_string(),
    );
    if !firing.annotations.contains_key("summary") {
        n.summary = format!("{} resolved: its rule was removed", a.rule);
    }
    n.at_ms = now_ms;
    if let Some(details) = n.details.as_object_mut() {
        details.insert("status".into(), serde_json::json!(AlertStatus::Resolved));
        details.insert("resolved_at_ms".into(), serde_json::json!(now_ms));
        details.insert("reason".into(), serde_json::json!("its rule was removed"));
    }
    n
}

fn notify_severity(rule: &AlertRule) -> notify::Severity {
    match rule.severity {
        super::Severity::Info => notify::Severity::Info,
        super::Severity::Warning => notify::Severity::Warning,
        super::Severity::Critical => notify::Severity::Critical,
    }
}

/// Whether `d` is a change in progress or done that serves now: not a rollback, progressing
/// or succeeded.
fn serving_change(d: &DeploymentView) -> bool {
    d.kind != DeploymentKind::Rollback
        && matches!(
            d.state,
            DeploymentState::Progressing | DeploymentState::Succeeded
        )
}

/// The version whose last succeeded change a firing alert's incident belongs to, when it is
/// not the latest deployment's own: a `critical` alert on version `v` that serves beside or
/// instead of the latest deployment — its previous version while that one has not succeeded
/// (the stable version during a canary, before it starts, or restored after a rollback,
/// abort or failure), or the version a rollback brings back. The shell then reads that
/// version's last succeeded deployment that was not a rollback and passes it to
/// [`incident_deployment`]; `None`: nothing to read.
pub fn incident_change_of<'a>(
    rule: &AlertRule,
    a: &'a AlertInstance,
    latest: Option<&DeploymentView>,
) -> Option<&'a str> {
    let v = a.labels.get("version")?;
    let d = latest?;
    if rule.severity != super::Severity::Critical || (d.version == *v && serving_change(d)) {
        return None;
    }
    let brought_back = d.kind == DeploymentKind::Rollback
        && d.version == *v
        && matches!(
            d.state,
            DeploymentState::Progressing | DeploymentState::Succeeded
        );
    let stable =
        d.previous_version.as_deref() == Some(v.as_str()) && d.state != DeploymentState::Succeeded;
    (brought_back || stable).then_some(v.as_str())
}

/// The deployment a firing alert opens an incident on (the DORA metrics count it as a
/// failed change, restored when the alert resolves): only a `critical` alert does, on the
/// change that put the version that fired into service —
/// - the environment's latest deployment when it is of that version (any, for an alert
///   without a `version` label), in progress or succeeded, and not a rollback;
/// - else, when that version serves beside or instead of the latest deployment (see
///   [`incident_change_of`]: the stable version during a canary, the version restored
///   after a rollback), `last_change`: its last succeeded deployment that was not a
///   rollback (`None` if there is none: nothing to blame).
///
/// An alert on a version that no longer serves (the old version after a rollout succeeded,
/// the canary once it is rolling back) opens none. A silenced alert opens none (the shell
/// checks).
pub fn incident_deployment(
    rule: &AlertRule,
    a: &AlertInstance,
    latest: Option<&DeploymentView>,
    last_change: Option<&DeploymentView>,
) -> Option<i64> {
    let d = latest?;
    if rule.severity != super::Severity::Critical {
        return None;
    }
    let ours = a.labels.get("version").is_none_or(|v| *v == d.version);
    if ours && serving_change(d) {
        return Some(d.id);
    }
    let v = incident_change_of(rule, a, latest)?;
    last_change
        .filter(|c| {
            c.version == v
                && c.kind != DeploymentKind::Rollback
                && c.state == DeploymentState::Succeeded
        })
        .map(|c| c.id)
}

/// Names one episode of an alert (an incident's `alert_key`): app, environment, rule,
/// series and when it began.
pub fn episode_key(app: &str, env: &str, a: &AlertInstance) -> String {
    format!("{app}/{env}/{}/{}/{}", a.rule, a.series, a.active_since_ms)
}
