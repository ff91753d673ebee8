//! Alert rules: conditions over Ferry's own per-version metrics (or a Prometheus query)
//! watched in every environment, with Prometheus's `for` / `keep_firing_for` semantics,
//! and what a firing alert does (notify, pause or roll back the rollout, hold deployments).
//!
//! Pure, like the rest of the core. The server's evaluator, per rule and environment:
//! 1. measures: [`builtin_samples`] from the environment's status (the proxy's last minute,
//!    the replicas), or [`prometheus_samples`] from a query's answer ([`Input::Failed`] when
//!    it could not run);
//! 2. calls [`evaluate`] with the alerts stored for the rule and `now`, persists the new
//!    alerts and the [`Transition`]s together (history, and the [`notification`]s of firing
//!    and resolved alerts);
//! 3. for each firing alert not yet acted on and not silenced ([`silenced_by`]), carries out
//!    [`plan_actions`] through the controller's command API, then marks it acted.
//!
//! Deployments into an environment wait while one of its `block_promotions` alerts fires:
//! [`blocking`] → [`gate_row`], a row of the environment's gate report.

mod eval;
mod facts;
mod notice;
mod spec;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use eval::{
    AlertInstance, AlertStatus, Evaluation, Input, RESOLVED_RETENTION_MS, Sample, Transition,
    evaluate, retire, series_key,
};
pub use facts::{
    ActionPlan, BlockingAlert, MAX_SERIES, Silence, alert_labels, blocking, builtin_input,
    builtin_samples, describe, gate_row, plan_actions, prometheus_samples, silenced_by,
};
pub use notice::{
    episode_key, incident_change_of, incident_deployment, notification, notification_key,
    retired_notification,
};
pub use spec::{
    AlertActions, AlertIssue, AlertQuery, AlertRule, Condition, DEFAULT_INTERVAL,
    DEFAULT_QUERY_TIMEOUT, MAX_RULES, Metric, Op, QUERY_PLACEHOLDERS, RESERVED_LABELS, Severity,
    query_for, render, validate,
};

/// Longest silence.
pub const MAX_SILENCE_MS: i64 = 30 * 24 * 3600 * 1000;
/// Longest silence reason.
pub const MAX_REASON: usize = 1000;

/// One alert as `ferry alerts` and `GET /v1/alerts` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertView {
    pub app: String,
    pub env: String,
    pub alert: String,
    pub severity: Severity,
    pub status: AlertStatus,
    /// Every label: alertname, app, env, severity, the rule's, the series'.
    pub labels: BTreeMap<String, String>,
    /// The latest value while it held, for humans (`12%`, `340ms`).
    pub value: String,
    /// The value when it fired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_value: Option<String>,
    /// Pending (then firing) since.
    pub active_since_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fired_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_at_ms: Option<i64>,
    /// The rule's annotations, rendered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The silence in force, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<i64>,
}

/// A line of an alert's history: a transition, or what its actions did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertEventView {
    pub id: i64,
    pub at_ms: i64,
    pub app: String,
    pub env: String,
    pub alert: String,
    /// [`series_key`] of the series (`service=web,version=1.2.0`).
    pub series: String,
    /// `pending`, `firing`, `resolved`, `inactive`, or `action`.
    pub kind: String,
    pub message: String,
}

/// `GET /v1/alerts`: the alerts (firing, pending, recently resolved) and recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertsAnswer {
    pub alerts: Vec<AlertView>,
    pub history: Vec<AlertEventView>,
}

/// `POST /v1/apps/{app}/envs/{env}/silences`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// The alert (rule name).
    pub alert: String,
    /// How long, e.g. `2h` (at most 30 days).
    #[serde(rename = "for")]
    pub duration: String,
    /// Why (required; audited).
    pub reason: String,
}

impl SilenceRequest {
    /// The silence's length in ms, or what is wrong with the request.
    pub fn check(&self, rules: &[AlertRule]) -> Result<i64, String> {
        if !rules.iter().any(|r| r.name == self.alert) {
            let known: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
            return Err(format!(
                "no alert rule {:?} in this app (it has: {})",
                self.alert,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
        }
        if self.reason.trim().is_empty() || self.reason.len() > MAX_REASON {
            return Err(format!("a reason of 1 to {MAX_REASON} bytes is required"));
        }
        let d: crate::duration::HumanDuration = self.duration.parse()?;
        let ms = i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX);
        if !(1000..=MAX_SILENCE_MS).contains(&ms) {
            return Err(format!(
                "silence length {} must be between 1s and 30 days",
                self.duration
            ));
        }
        Ok(ms)
    }
}

/// The view of one stored alert of `rule` in app/env.
pub fn view(
    rule: &AlertRule,
    app: &str,
    env: &str,
    a: &AlertInstance,
    silences: &[Silence],
    now_ms: i64,
) -> AlertView {
    let metric = rule
        .parsed_condition()
        .ok()
        .flatten()
        .map_or(Metric::Value, |c| c.metric);
    let labels = alert_labels(rule, app, env, &a.labels);
    let value = metric.format(a.value);
    let annotations = rule
        .annotations
        .iter()
        .map(|(k, text)| (k.clone(), render(text, &value, &labels)))
        .collect();
    AlertView {
        app: app.to_string(),
        env: env.to_string(),
        alert: rule.name.clone(),
        severity: rule.severity,
        status: a.status,
        value,
        fired_value: a.fired_value.map(|v| metric.format(v)),
        labels,
        active_since_ms: a.active_since_ms,
        fired_at_ms: a.fired_at_ms,
        resolved_at_ms: a.resolved_at_ms,
        annotations,
        silenced_by: silenced_by(silences, app, env, &rule.name, now_ms).map(|s| s.id),
    }
}

/// The history line of a transition: `firing: error_rate 12% (> 1%) on web 1.2.0`.
pub fn transition_message(rule: &AlertRule, t: &Transition, a: Option<&AlertInstance>) -> String {
    match (t.to, a) {
        (AlertStatus::Firing | AlertStatus::Pending, Some(a)) => {
            format!("{}: {}", t.to, describe(rule, a))
        }
        (AlertStatus::Resolved, _) => "resolved: the condition no longer holds".to_string(),
        (AlertStatus::Inactive, _) => {
            "inactive: the condition stopped holding before `for` passed".to_string()
        }
        (to, _) => to.to_string(),
    }
}

#[cfg(test)]
mod tests;
