//! JSON bodies of Ferry's HTTP API, shared by the server and the CLI so they never drift.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::{DeploymentState, ReplicaState};

/// Largest request body the server reads (a manifest travels in one, JSON-escaped); the
/// CLI refuses to send more, so both sides say the same.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Longest message (in characters) an error repeats: input quoted in an error is cut.
pub const MAX_MESSAGE_CHARS: usize = 512;

/// `text` if it has at most `max` characters; else its start and end around
/// `…(cut N of M bytes)…`, so that an error quoting a 20 MB value stays one short line.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    let Some((head_end, _)) = text.char_indices().nth(max) else {
        return Cow::Borrowed(text);
    };
    let head = max * 2 / 3;
    let tail = max - head;
    let head_end = text.char_indices().nth(head).map_or(head_end, |(i, _)| i);
    let tail_start = text
        .char_indices()
        .rev()
        .nth(tail.saturating_sub(1))
        .map_or(text.len(), |(i, _)| i)
        .max(head_end);
    Cow::Owned(format!(
        "{}…(cut {} of {} bytes)…{}",
        &text[..head_end],
        tail_start - head_end,
        text.len(),
        &text[tail_start..]
    ))
}

/// Every error answer of the API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApiError {
    /// Stable machine-readable code: `unauthorized`, `not_found`, `invalid_manifest`,
    /// `conflict`, `bad_request`, `internal`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// Details such as the manifest errors, each with file:line:column and hint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

/// `POST /v1/apps`: apply a manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The manifest text, exactly as written (so errors point at the user's lines).
    pub manifest: String,
    /// The file name shown in errors (e.g. `ferry.yaml`).
    #[serde(default)]
    pub file_name: Option<String>,
    /// Absolute directory of the manifest: relative `cwd:` and `run` paths resolve here.
    #[serde(default)]
    pub base_dir: Option<String>,
    /// Validate and show the changes without storing anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Confirms removals that stop what runs (an environment or a service with replicas):
    /// without it such a manifest is refused and nothing changes.
    #[serde(default)]
    pub prune: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyResponse {
    pub app: String,
    /// The stored manifest revision (unchanged when nothing changed or on a dry run).
    pub revision: i64,
    pub dry_run: bool,
    /// Human-readable changes, e.g. `+ environment staging`, `~ services.api.replicas: 2 -> 3`.
    pub changes: Vec<String>,
    /// What stops at once (confirmed with `prune`), or would stop (a dry run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stops: Vec<String>,
    /// What changes in running environments only with their next deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next_deployment: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppSummary {
    pub name: String,
    pub revision: i64,
    pub services: Vec<String>,
    pub environments: Vec<String>,
    pub updated_at_ms: i64,
}

/// `POST /v1/apps/{app}/envs/{env}/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DeployRequest {
    pub version: String,
    /// Release data (commit, artifacts, notes): records the release when it is unknown
    /// (then the version must be semver), must match it when it is known.
    #[serde(flatten)]
    pub release: crate::release::ReleaseData,
}

/// `POST /v1/apps/{app}/envs/{env}/rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct RollbackRequest {
    /// Version to go back to; default: the release before the current one that succeeded.
    #[serde(default)]
    pub to: Option<String>,
    // hooks:
    /// Go back past an irreversible migration anyway (needs a reason).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Why (kept in the audit log); the `X-Ferry-Reason` header works too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /v1/apps/{app}/envs/{env}/redeploy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RedeployRequest {
    /// Supersede a deployment of another version that has not ended (e.g. one waiting for
    /// approval: its approvals and freeze override are lost). Without it that is refused.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a redeploy: a deployment (201), or nothing to do (200).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedeployAnswer {
    Started(DeploymentView),
    Unchanged(Unchanged),
}

/// A redeploy with nothing to change: no deployment was created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Unchanged {
    pub app: String,
    pub env: String,
    /// The version serving there, unchanged.
    pub version: String,
    /// Always `true`.
    pub unchanged: bool,
    pub message: String,
}

/// One deployment (rollout) of a version into an environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeploymentView {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub version: String,
    /// Version that was serving when the deployment started (None for the first one).
    pub previous_version: Option<String>,
    pub strategy: String,
    pub state: DeploymentState,
    /// Why it ended the way it did (failure reason, rollback target…).
    pub reason: Option<String>,
    /// What kind of request created it: `deploy` or `rollback`.
    pub kind: String,
    pub requested_by: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    // gates:
    /// While it waits (pending / awaiting-approval / blocked) in `ferry status`: every configured gate
    /// of its environment with its state. Empty (and left out) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<crate::gates::GateRow>,
}

/// A timeline entry of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventView {
    /// Increasing per deployment; pass as `after` to get only newer events.
    pub seq: i64,
    pub at_ms: i64,
    /// e.g. `state`, `replica`, `health`, `traffic`, `error`.
    pub kind: String,
    pub message: String,
}

/// `GET /v1/deployments/{id}`: the deployment with its timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentDetail {
    pub deployment: DeploymentView,
    pub events: Vec<EventView>,
}

/// One running (or failed) replica.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReplicaView {
    pub id: String,
    pub service: String,
    pub version: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub state: ReplicaState,
    pub restarts: u32,
    /// Whether the proxy currently sends it traffic.
    pub in_traffic: bool,
}

/// Status of one environment of an app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvStatus {
    pub app: String,
    pub env: String,
    pub listen: String,
    /// Version serving all traffic now (None before the first successful deployment).
    pub current_version: Option<String>,
    pub latest_deployment: Option<DeploymentView>,
    pub replicas: Vec<ReplicaView>,
    /// Where a canary or blue/green rollout in progress stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
    // releases:
    /// `{version}-sha-{commit7}-{env}` of the current version, when its commit is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_tag: Option<String>,
}

/// A canary or blue/green rollout in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RolloutView {
    pub deployment_id: i64,
    pub strategy: String,
    /// 1-based stage number and the number of stages.
    pub stage: usize,
    pub stages: usize,
    pub stage_name: String,
    pub canary_version: String,
    pub stable_version: String,
    /// Share of requests the new version gets now, in percent.
    pub canary_weight: f64,
    /// Held until a person acts, and `ferry resume` continues it: paused by hand, or an
    /// analysis that stayed Inconclusive beyond its `inconclusive_limit`.
    pub paused: bool,
    /// Paused by `ferry pause` (else, when `paused`, by an analysis).
    #[serde(default)]
    pub paused_by_hand: bool,
    /// What it waits for, if it holds (a pause step, an analysis without a verdict yet, a
    /// person).
    pub waiting_for: Option<String>,
    /// Latest verdict of each analysis metric, one line each.
    pub analysis: Vec<String>,
    pub summary: String,
}

/// `POST /v1/apps/{app}/envs/{env}/promote`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PromoteRequest {
    /// Skip every remaining step: straight to 100%.
    #[serde(default)]
    pub full: bool,
}

/// `GET /v1/apps/{app}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub revision: i64,
    pub environments: Vec<EnvStatus>,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: String,
}

// releases:

/// `POST /v1/apps/{app}/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ReleaseRequest {
    pub version: String,
    #[serde(flatten)]
    pub data: crate::release::ReleaseData,
}

/// Where a release stands in one environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseEnvView {
    pub env: String,
    pub placement: crate::release::Placement,
    /// `{version}-sha-{commit7}-{env}` when the commit is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Ids of the deployments of this version there, oldest first.
    pub deployments: Vec<i64>,
}

/// A release with where it is deployed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseView {
    pub app: String,
    pub version: String,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub artifacts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub created_by: Option<String>,
    pub created_at_ms: i64,
    /// Environments this version was deployed to, in manifest order.
    pub environments: Vec<ReleaseEnvView>,
}

/// Answer of `POST /v1/apps/{app}/releases`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReleaseCreated {
    /// `created`, `exists` (same data: nothing changed) or `completed` (a bare release got
    /// its data).
    pub outcome: String,
    pub release: ReleaseView,
}

/// `POST /v1/apps/{app}/promotions`: deploy what serves in `from` to `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotionRequest {
    pub from: String,
    pub to: String,
}

// hooks:
/// One attempt of a deployment hook (`GET /v1/deployments/{id}/hooks`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookRunView {
    pub id: i64,
    pub deployment_id: i64,
    /// `pre_deploy`, `post_deploy`, `on_rollback` or `migration_down`.
    pub phase: String,
    pub hook: String,
    pub attempt: u32,
    /// `running`, `succeeded`, `failed`, `interrupted` or `timed-out`.
    pub state: String,
    pub started_at_ms: i64,
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub summary: Option<String>,
    /// `irreversible`, `reversible` or none.
    #[serde(default)]
    pub migration: Option<String>,
}

/// The captured output of one attempt (`GET /v1/deployments/{id}/hooks/{name}/output`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HookOutput {
    pub run: HookRunView,
    pub output: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_with_its_length() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("0123456789", 10), "0123456789");
        let long = "é".repeat(30);
        let cut = clip(&long, 9);
        assert_eq!(cut, format!("éééééé…(cut 42 of 60 bytes)…ééé"));
        let huge = "x".repeat(20_000_000);
        assert!(clip(&huge, MAX_MESSAGE_CHARS).len() < 600);
    }
}
