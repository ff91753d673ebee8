//! Evaluation: a pure function of (rule, samples, previous state, now) that gives the new
//! state of each alert and its transitions, with Prometheus's `for` and `keep_firing_for`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::{AlertRule, Condition};

/// How long a resolved alert stays listed (as Prometheus keeps it for Alertmanager).
pub const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Where one alert stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The condition does not hold (nothing stored).
    Inactive,
    /// The condition holds, for less than `for` so far.
    Pending,
    /// It held for `for`; its actions ran.
    Firing,
    /// It fired, then stopped holding (for longer than `keep_firing_for`).
    Resolved,
}

impl AlertStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Inactive => "inactive",
            AlertStatus::Pending => "pending",
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<AlertStatus> {
        [
            AlertStatus::Inactive,
            AlertStatus::Pending,
            AlertStatus::Firing,
            AlertStatus::Resolved,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

impl std::fmt::Display for AlertStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured series: its labels (`service`, `version`, or a Prometheus series' own) and
/// value (a fraction, milliseconds, a count, or the query's value).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The key that tells this series apart: `service=web,version=1.2.0` (`""` for none).
    pub fn series(&self) -> String {
        series_key(&self.labels)
    }
}

/// `k=v,k=v` in label order.
pub fn series_key(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What an evaluation saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Every series measured now (a series absent does not meet the condition).
    Samples(Vec<Sample>),
    /// The measurement failed (Prometheus unreachable, a bad answer): alerts stay as they
    /// are, as Prometheus leaves them when a rule's evaluation fails.
    Failed(String),
}

/// One alert of a rule (one series), as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertInstance {
    pub rule: String,
    /// [`series_key`] of `labels`.
    pub series: String,
    /// The series' labels (not the rule's).
    pub labels: BTreeMap<String, String>,
    pub status: AlertStatus,
    /// When the condition began to hold, this episode (pending since).
    pub active_since_ms: i64,
    /// The latest evaluation at which it held.
    pub last_active_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    /// The latest value while it held.
    pub value: f64,
    /// The value when it fired.
    pub fired_value: Option<f64>,
    /// The firing's actions have been carried out (or skipped, saying why).
    #[serde(default)]
    pub acted: bool,
}

/// A change of an alert's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub rule: String,
    pub series: String,
    pub labels: BTreeMap<String, String>,
    pub from: AlertStatus,
    pub to: AlertStatus,
    pub at_ms: i64,
    /// The value that caused it (None for a resolve without a sample).
    pub value: Option<f64>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    /// Every alert of the rule that is not inactive, by series.
    pub alerts: Vec<AlertInstance>,
    pub transitions: Vec<Transition>,
}

/// Evaluates `rule` on `input` at `now_ms`, from the rule's `previous` alerts.
///
/// Per series, as Prometheus does: the condition holds → pending (or firing at once with
/// `for: 0`), firing once it has held for `for`; it stops holding → a pending alert is
/// dropped (inactive), a firing one stays firing until `keep_firing_for` has passed since it
/// last held, then resolves; a resolved alert that holds again is a new episode (pending).
/// Resolved alerts are kept [`RESOLVED_RETENTION_MS`], then dropped. A failed measurement
/// changes nothing (only the retention applies).
pub fn evaluate(
    rule: &AlertRule,
    condition: Option<&Condition>,
    input: &Input,
    previous: &[AlertInstance],
    now_ms: i64,
) -> Evaluation {
    let for_ms = millis(rule.for_duration());
    let keep_ms = millis(rule.keep_firing());
    let mut out = Evaluation::default();
    let samples = match input {
        Input::Samples(samples) => samples,
        Input::Failed(_) => {
            out.alerts = previous
                .iter()
                .filter(|a| !expired(a, now_ms))
                .cloned()
                .collect();
            return out;
        }
    };
    // The series that meet the condition now (NaN never does), with their value.
    let mut active: BTreeMap<String, &Sample> = BTreeMap::new();
    for sample in samples {
        let holds = match condition {
            Some(c) => c.holds(sample.value),
            None => !sample.value.is_nan(),
        };
        if holds {
            active.entry(sample.series()).or_insert(sample);
        }
    }
    let mut transition = |a: &AlertInstance, from: AlertStatus, value: Option<f64>| {
        out.transitions.push(Transition {
            rule: rule.name.clone(),
            series: a.series.clone(),
            labels: a.labels.clone(),
            from,
            to: a.status,
            at_ms: now_ms,
            value,
        });
    };
    let mut alerts = Vec::new();
    for old in previous {
        if let Some(sample) = active.remove(&old.series) {
            let mut a = old.clone();
            a.value = sample.value;
            a.last_active_ms = now_ms;
            match old.status {
                AlertStatus::Pending | AlertStatus::Inactive => {
                    if old.status == AlertStatus::Inactive {
                        a.active_since_ms = now_ms;
                    }
                    if now_ms.saturating_sub(a.active_since_ms) >= for_ms {
                        fire(&mut a, now_ms);
                    } else {
                        a.status = AlertStatus::Pending;
                    }
                    if a.status != old.status {
                        transition(&a, old.status, Some(sample.value));
                    }
                }
                AlertStatus::Firing => {}
                AlertStatus::Resolved => {
                    a = start(rule, sample, now_ms, for_ms);
                    transition(&a, old.status, Some(sample.value));
                }
            }
            alerts.push(a);
        } else {
            match old.status {
                AlertStatus::Pending | AlertStatus::Inactive => {
                    let mut a = old.clone();
                    a.status = AlertStatus::Inactive;
                    transition(&a, old.status, None);
                }
                AlertStatus::Firing if now_ms.saturating_sub(old.last_active_ms) < keep_ms => {
                    alerts.push(old.clone());
                }
                AlertStatus::Firing => {
                    let mut a = old.clone();
                    a.status = AlertStatus::Resolved;
                    a.resolved_at_ms = Some(now_ms);
                    transition(&a, old.status, None);
                    alerts.push(a);
                }
                AlertStatus::Resolved => {
                    if !expired(old, now_ms) {
                        alerts.push(old.clone());
                    }
                }
            }
        }
    }
    for sample in active.into_values() {
        let a = start(rule, sample, now_ms, for_ms);
        transition(&a, AlertStatus::Inactive, Some(sample.value));
        alerts.push(a);
    }
    alerts.sort_by(|a, b| a.series.cmp(&b.series));
    out.alerts = alerts;
    out
}

/// Every alert of a rule that no longer exists (or no longer watches the environment):
/// firing ones resolve, pending ones end; nothing else remains.
pub fn retire(previous: &[AlertInstance], now_ms: i64) -> Evaluation {
    let mut out = Evaluation::default();
    for old in previous {
        let to = match old.status {
            AlertStatus::Firing => AlertStatus::Resolved,
            AlertStatus::Pending => AlertStatus::Inactive,
            _ => continue,
        };
        out.transitions.push(Transition {
            rule: old.rule.clone(),
            series: old.series.clone(),
            labels: old.labels.clone(),
            from: old.status,
            to,
            at_ms: now_ms,
            value: None,
        });
    }
    out
}

fn start(rule: &AlertRule, sample: &Sample, now_ms: i64, for_ms: i64) -> AlertInstance {
    let mut a = AlertInstance {
        rule: rule.name.clone(),
        series: sample.series(),
        labels: sample.labels.clone(),
        status: AlertStatus::Pending,
        active_since_ms: now_ms,
        last_active_ms: now_ms,
        fired_at_ms: None,
        resolved_at_ms: None,
        value: sample.value,
        fired_value: None,
        acted: false,
    };
    if for_ms == 0 {
        fire(&mut a, now_ms);
    }
    a
}

fn fire(a: &mut AlertInstance, now_ms: i64) {
    a.status = AlertStatus::Firing;
    a.fired_at_ms = Some(now_ms);
    a.fired_value = Some(a.value);
    a.resolved_at_ms = None;
    a.acted = false;
}

fn expired(a: &AlertInstance, now_ms: i64) -> bool {
    a.status == AlertStatus::Resolved
        && a.resolved_at_ms
            .is_some_and(|at| now_ms.saturating_sub(at) >= RESOLVED_RETENTION_MS)
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
