//! Audit bodies: the chain's verification and a deployment's change record.

use serde::{Deserialize, Serialize};

use crate::api::{DeploymentView, EventView, HookRunView};
use crate::audit::{AuditRecord, Checkpoint};
use crate::gates::{Approval, GateRow, Override};

/// The answer of `GET /v1/audit/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyReport {
    pub ok: bool,
    /// Records in the chain.
    pub count: i64,
    /// Hash of the newest record (64 zeros when empty).
    pub head_hash: String,
    /// What is wrong, in a sentence.
    pub problem: Option<String>,
    /// The first record where the chain breaks.
    pub broken_at_seq: Option<i64>,
    /// The newest checkpoint the chain was checked against.
    pub checkpoint: Option<Checkpoint>,
}

/// The release a change record is about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub app: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub created_at_ms: Option<i64>,
}

/// `GET /v1/deployments/{id}/change-record`: what a change-management system wants to
/// know about one deployment (`?format=markdown`: the same as Markdown text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub deployment: DeploymentView,
    pub release: ReleaseInfo,
    pub requested_by: String,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The deployment's state (final once `finished_at_ms` is set).
    pub outcome: String,
    pub reason: Option<String>,
    pub manifest_revision: i64,
    /// Every event, in order.
    pub timeline: Vec<EventView>,
    pub state_changes: Vec<EventView>,
    /// Analysis verdicts (events about analysis).
    pub analysis: Vec<EventView>,
    pub traffic: Vec<EventView>,
    /// Audit records about this deployment: who asked, promoted, paused, aborted.
    pub audit: Vec<AuditRecord>,
    /// Approvals and rejections, withdrawn ones included (with when).
    pub approvals: Vec<Approval>,
    /// Every gate as it stood when the deployment passed them (who or what passed each);
    /// empty when it never passed (or its environment has no gates).
    pub gates: Vec<GateRow>,
    /// The gates lifted for this deployment (who, when, why).
    pub overrides: Vec<Override>,
    /// Every hook attempt: backups, migrations, smoke tests, on-rollback jobs.
    pub hooks: Vec<HookRunView>,
    pub generated_at_ms: i64,
}
