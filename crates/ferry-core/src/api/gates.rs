//! Gate and approval bodies: what a waiting deployment still needs.

use serde::{Deserialize, Serialize};

use crate::api::DeploymentView;
use crate::gates::{Approval, GateRow, Override};

/// `POST /v1/deployments/{id}/approve`. The reason may come as `X-Ferry-Reason` instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApproveRequest {
    /// Reject instead of approve (needs a reason).
    #[serde(default)]
    pub reject: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A deployment's approvals and what its gate still needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalStatus {
    pub deployment: DeploymentView,
    pub approvals: Vec<Approval>,
    /// One line per unmet rule; empty when the gate holds.
    pub waiting_for: Vec<String>,
    pub rejected: Option<String>,
    /// Every configured gate of the environment with its state (the same rows as
    /// `GET /v1/deployments/{id}/gates`).
    #[serde(default)]
    pub gates: Vec<GateRow>,
}

/// Where a deployment stands at its gates, as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatesVerdict {
    Passed,
    Waiting,
    Rejected,
}

impl std::fmt::Display for GatesVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GatesVerdict::Passed => "passed",
            GatesVerdict::Waiting => "waiting",
            GatesVerdict::Rejected => "rejected",
        })
    }
}

/// `GET /v1/deployments/{id}/gates`: every configured gate of the deployment's environment
/// with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatesStatus {
    pub deployment: DeploymentView,
    /// Derived from the rows.
    pub verdict: GatesVerdict,
    pub gates: Vec<GateRow>,
    /// Gates lifted for this deployment (who, when, why).
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// Set when the deployment has passed its gates: the rows are as they stood then
    /// (otherwise they are judged now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_at_ms: Option<i64>,
}

/// `POST /v1/deployments/{id}/overrides`. The reason may come as `X-Ferry-Reason` instead.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OverrideRequest {
    /// The gate to lift: `freeze`.
    #[serde(default)]
    pub gate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
