//! Notifications: what Ferry tells people about (deployments, approvals, alerts), as one
//! typed value written to the store's durable outbox in the same transaction as the event
//! that causes it (`ferry_store::notify::enqueue`), then routed, grouped and delivered by
//! the server's dispatcher. The decisions of that pipeline — which receivers a notification
//! goes to, whether it is inhibited, when a group flushes — are pure functions in
//! [`route`], with the clock passed in.
//!
//! Every notification carries a stable idempotency `key`: enqueueing the same key twice
//! stores it once, and every delivery carries a key derived from it, so a receiver can
//! drop a duplicate that a crash between "sent" and "recorded as sent" may cause.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::DeploymentState;

pub mod route;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A deployment started moving replicas (`progressing`).
    DeploymentStarted,
    /// A deployment succeeded.
    DeploymentSucceeded,
    /// A deployment failed with nothing to restore.
    DeploymentFailed,
    /// A deployment is rolling back, or has rolled back.
    DeploymentRolledBack,
    /// A deployment was aborted by hand.
    DeploymentAborted,
    /// Any other state change of a deployment (pending, awaiting-approval, blocked,
    /// superseded, rejected); the `state` label says which.
    DeploymentChanged,
    /// A deployment waits for approvals.
    ApprovalRequested,
    /// Someone approved (or rejected) a waiting deployment.
    ApprovalGiven,
    /// An alert rule started firing.
    AlertFiring,
    /// A firing alert stopped firing.
    AlertResolved,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::DeploymentStarted,
        Kind::DeploymentSucceeded,
        Kind::DeploymentFailed,
        Kind::DeploymentRolledBack,
        Kind::DeploymentAborted,
        Kind::DeploymentChanged,
        Kind::ApprovalRequested,
        Kind::ApprovalGiven,
        Kind::AlertFiring,
        Kind::AlertResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::DeploymentStarted => "deployment-started",
            Kind::DeploymentSucceeded => "deployment-succeeded",
            Kind::DeploymentFailed => "deployment-failed",
            Kind::DeploymentRolledBack => "deployment-rolled-back",
            Kind::DeploymentAborted => "deployment-aborted",
            Kind::DeploymentChanged => "deployment-changed",
            Kind::ApprovalRequested => "approval-requested",
            Kind::ApprovalGiven => "approval-given",
            Kind::AlertFiring => "alert-firing",
            Kind::AlertResolved => "alert-resolved",
        }
    }

    /// The kind of a deployment entering `state`.
    pub fn of_deployment_state(state: DeploymentState) -> Kind {
        match state {
            DeploymentState::Progressing => Kind::DeploymentStarted,
            DeploymentState::Succeeded => Kind::DeploymentSucceeded,
            DeploymentState::Failed => Kind::DeploymentFailed,
            DeploymentState::RollingBack | DeploymentState::RolledBack => {
                Kind::DeploymentRolledBack
            }
            DeploymentState::Aborted => Kind::DeploymentAborted,
            DeploymentState::Pending
            | DeploymentState::AwaitingApproval
            | DeploymentState::Blocked
            | DeploymentState::Superseded
            | DeploymentState::Rejected => Kind::DeploymentChanged,
        }
    }

    /// Alerts are firing or resolved; everything else is a one-off event.
    pub fn is_alert(self) -> bool {
        matches!(self, Kind::AlertFiring | Kind::AlertResolved)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown notification kind {s:?}"))
    }
}

/// How urgent: the `severity` label's usual values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The default severity of a kind (an alert's comes from its rule).
    pub fn of_kind(kind: Kind) -> Severity {
        match kind {
            Kind::DeploymentFailed | Kind::DeploymentRolledBack | Kind::AlertFiring => {
                Severity::Warning
            }
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels every notification has, set by [`Notification::new`] (routes match on them).
pub const LABEL_APP: &str = "app";
pub const LABEL_ENV: &str = "env";
pub const LABEL_KIND: &str = "kind";
pub const LABEL_SEVERITY: &str = "severity";

/// One notification, as enqueued in the outbox and handed to receivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Stable idempotency key: the same event always gets the same key (see the `key_*`
    /// helpers); enqueueing a key twice stores it once.
    pub key: String,
    pub kind: Kind,
    pub app: String,
    pub env: String,
    /// Routing labels: always `app`, `env`, `kind` and `severity`; alerts add `alertname`
    /// and their rule's labels, deployments `state` and `version`.
    pub labels: BTreeMap<String, String>,
    /// One line for people (a chat message, an email subject).
    pub summary: String,
    /// More for people (`description`, `runbook_url`, …); never routed on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Kind-specific facts for machines (a deployment's state change as today's webhooks
    /// send it); `null` when none.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
    /// When the event happened (ms since the epoch).
    pub at_ms: i64,
}

impl Notification {
    /// A notification with the four standard labels set; add more with [`Notification::label`].
    pub fn new(
        key: impl Into<String>,
        kind: Kind,
        app: impl Into<String>,
        env: impl Into<String>,
        severity: Severity,
        summary: impl Into<String>,
        at_ms: i64,
    ) -> Notification {
        let app = app.into();
        let env = env.into();
        let labels = BTreeMap::from([
            (LABEL_APP.to_string(), app.clone()),
            (LABEL_ENV.to_string(), env.clone()),
            (LABEL_KIND.to_string(), kind.as_str().to_string()),
            (LABEL_SEVERITY.to_string(), severity.as_str().to_string()),
        ]);
        Notification {
            key: key.into(),
            kind,
            app,
            env,
            labels,
            summary: summary.into(),
            annotations: BTreeMap::new(),
            details: serde_json::Value::Null,
            at_ms,
        }
    }

    /// Adds (or replaces) a label.
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Notification {
        self.labels.insert(name.into(), value.into());
        self
    }

    /// Adds (or replaces) an annotation.
    pub fn annotation(mut self, name: impl Into<String>, value: impl Into<String>) -> Notification {
        self.annotations.insert(name.into(), value.into());
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Notification {
        self.details = details;
        self
    }

    /// The `severity` label (`info` when missing or unknown).
    pub fn severity(&self) -> Severity {
        match self.labels.get(LABEL_SEVERITY).map(String::as_str) {
            Some("critical") => Severity::Critical,
            Some("warning") => Severity::Warning,
            _ => Severity::Info,
        }
    }

    /// What this notification is about, the same for an alert's firing and resolved
    /// notifications (and for every state change of one deployment): SHA-256 over the
    /// labels without `kind` (and, for a deployment, `state` and `version`; an alert's
    /// `version` tells its series apart). PagerDuty's `dedup_key`, and how a resolved
    /// alert finds the firing one it ends.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for (name, value) in &self.labels {
            let skipped = match name.as_str() {
                LABEL_KIND => true,
                "state" | "version" => !self.kind.is_alert(),
                _ => false,
            };
            if skipped {
                continue;
            }
            hash.update(name.as_bytes());
            hash.update([0]);
            hash.update(value.as_bytes());
            hash.update([0]);
        }
        hex(&hash.finalize()[..16])
    }
}

/// The key of a deployment's state change: `deployment-ID-ROWVERSION-STATE`, where
/// ROWVERSION is the row version the transition wrote (unique per transition).
pub fn key_deployment(id: i64, row_version: i64, state: DeploymentState) -> String {
    format!("deployment-{id}-{row_version}-{state}")
}

/// The key of an approval request: `approval-DEPLOYMENT-requested` (once per deployment).
pub fn key_approval_requested(deployment_id: i64) -> String {
    format!("approval-{deployment_id}-requested")
}

/// The key of a decision: `approval-DEPLOYMENT-given-BY-AT` (a person may decide again
/// after withdrawing).
pub fn key_approval_given(deployment_id: i64, by: &str, at_ms: i64) -> String {
    format!("approval-{deployment_id}-given-{}-{at_ms}", printable(by))
}

/// The key of an alert's firing or resolved notification: one per rule, environment and
/// the time it started firing, so a restart that re-evaluates never sends it twice.
pub fn key_alert(app: &str, env: &str, rule: &str, active_since_ms: i64, kind: Kind) -> String {
    let what = if kind == Kind::AlertResolved {
        "resolved"
    } else {
        "firing"
    };
    format!(
        "alert-{app}-{env}-{}-{active_since_ms}-{what}",
        printable(rule)
    )
}

/// `text` with anything but printable ASCII replaced by `_`, cut to 100 bytes.
fn printable(text: &str) -> String {
    text.chars()
        .take(100)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where one delivery (a receiver's message about one or more notifications) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not confirmed yet: due now or at its next attempt.
    Pending,
    /// The receiver confirmed it.
    Delivered,
    /// Every attempt failed (or the receiver is gone); `last_error` says why.
    Failed,
    /// Not sent: an inhibition rule muted it while a matching alert fired.
    Inhibited,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Inhibited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Inhibited => "inhibited",
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryState::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown delivery state {s:?} (pending, delivered, failed, inhibited)")
            })
    }
}

/// One delivery as `GET /v1/notifications` answers it (no receiver URL or credential).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryView {
    pub id: i64,
    /// The idempotency key the receiver got.
    pub key: String,
    pub receiver: String,
    /// `webhook`, `slack`, `email` or `pagerduty`.
    pub receiver_type: String,
    pub app: String,
    pub env: String,
    pub state: DeliveryState,
    pub summary: String,
    /// How many notifications the message carried.
    pub notifications: usize,
    pub attempts: i64,
    /// The last attempt's error (or why it was inhibited).
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    /// When a pending delivery is next tried.
    pub next_attempt_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
}

/// Longest idempotency key accepted (keys go into HTTP headers and unique indexes).
pub const MAX_KEY_LEN: usize = 200;

/// Why a notification can't be enqueued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidNotification {
    #[error("notification key is empty")]
    EmptyKey,
    #[error("notification key is longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong,
    #[error("notification key {0:?} has a character outside printable ASCII")]
    KeyNotPrintable(String),
}

impl Notification {
    /// Checks what the outbox and HTTP headers need: a non-empty, bounded, printable key.
    pub fn check(&self) -> Result<(), InvalidNotification> {
        if self.key.is_empty() {
            return Err(InvalidNotification::EmptyKey);
        }
        if self.key.len() > MAX_KEY_LEN {
            return Err(InvalidNotification::KeyTooLong);
        }
        if !self.key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidNotification::KeyNotPrintable(self.key.clone()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: Kind) -> Notification {
        Notification::new(
            key_alert("shop", "prod", "errors", 1000, kind),
            kind,
            "shop",
            "prod",
            Severity::Critical,
            "error rate above 1 %",
            2000,
        )
        .label("alertname", "errors")
    }

    #[test]
    fn kinds_round_trip_and_map_states() {
        for kind in Kind::ALL {
            assert_eq!(kind.as_str().parse::<Kind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        assert!("nope".parse::<Kind>().is_err());
        assert_eq!(
            Kind::of_deployment_state(DeploymentState::Succeeded),
            Kind::DeploymentSucceeded
        );
        assert_eq!(
            Kind::of_deployment_state(DeploymentState::RolledBack),
            Kind::DeploymentRolledBack
        );
        assert_eq!(
            Kind::of_deployment_state(DeploymentState::Blocked),
            Kind::DeploymentChanged
        );
    }

    #[test]
    fn standard_labels_and_severity() {
        let n = alert(Kind::AlertFiring);
        assert_eq!(n.labels["app"], "shop");
        assert_eq!(n.labels["env"], "prod");
        assert_eq!(n.labels["kind"], "alert-firing");
        assert_eq!(n.severity(), Severity::Critical);
        assert_eq!(
            n.clone().label("severity", "bogus").severity(),
            Severity::Info
        );
        assert!(n.check().is_ok());
    }

    #[test]
    fn firing_and_resolved_share_a_fingerprint_other_alerts_do_not() {
        let firing = alert(Kind::AlertFiring);
        let resolved = alert(Kind::AlertResolved);
        assert_ne!(firing.key, resolved.key);
        assert_eq!(firing.fingerprint(), resolved.fingerprint());
        assert_ne!(
            firing.fingerprint(),
            firing.clone().label("alertname", "latency").fingerprint()
        );
        assert_eq!(firing.fingerprint().len(), 32);
    }

    #[test]
    fn keys_are_checked() {
        let mut n = alert(Kind::AlertFiring);
        n.key = String::new();
        assert_eq!(n.check(), Err(InvalidNotification::EmptyKey));
        n.key = "a".repeat(MAX_KEY_LEN + 1);
        assert_eq!(n.check(), Err(InvalidNotification::KeyTooLong));
        n.key = "a b".into();
        assert!(matches!(
            n.check(),
            Err(InvalidNotification::KeyNotPrintable(_))
        ));
        assert_eq!(
            key_deployment(7, 3, DeploymentState::Succeeded),
            "deployment-7-3-succeeded"
        );
    }
}
