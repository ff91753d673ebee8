//! JSON bodies of Ferry's HTTP API, shared by the server and the CLI so they never drift.
//!
//! Times are milliseconds since the Unix epoch (`*_ms`).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::{DeploymentState, ReplicaState};

pub mod audit;
pub mod gates;
pub mod identity;
pub mod secrets;

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
    /// Valid but probably not meant, each `file:line:column: path: message (hint: …)`
    /// (e.g. `$PORT` without braces, which is passed on as it is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// DORA: this deployment fixes deployment N (an earlier production deployment of the app
    /// in the same environment), which counts as a failed change from this request on.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::whole::opt_i64"
    )]
    pub fix_of: Option<i64>,
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
    /// What kind of request created it.
    pub kind: crate::model::DeploymentKind,
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
    pub kind: crate::model::EventKind,
    pub message: String,
}

/// `GET /v1/deployments/{id}`: the deployment with its timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentDetail {
    pub deployment: DeploymentView,
    pub events: Vec<EventView>,
    /// A progressive deployment's analysis metrics (the current step's, then the
    /// background analysis's), kept after it ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisMetric>,
    /// A progressive deployment's traffic per version over the rollout (request rate, error
    /// rate, p95 latency per sampling interval), for the console's charts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<crate::series::VersionSeries>,
}

/// Which analysis of a rollout a metric belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    /// The analysis of the current (or last) step.
    Step,
    /// The background analysis, over the whole rollout.
    Background,
}

impl AnalysisKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisKind::Step => "step",
            AnalysisKind::Background => "background",
        }
    }
}

/// One analysis metric of a progressive deployment: its latest measurement (value,
/// threshold, sample size, verdict, the service it is about) and its verdicts so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisMetric {
    pub analysis: AnalysisKind,
    pub metric: String,
    pub passes: u32,
    pub failures: u32,
    pub inconclusives: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<crate::analysis::Measurement>,
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
    /// How its last process ended (`exit code 1`, `signal 9`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The last lines that process wrote (at most 20 lines / 4 KiB, escaped, redacted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_output: Vec<String>,
    /// What its latest health check got while failing (status and body, refused, timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_health_check: Option<String>,
    /// CPU it used over the latest sampling interval, as a share of its limit
    /// ([`crate::usage`]); None when not sampled (yet, or by its runtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_share: Option<f64>,
    /// Memory it holds (resident, without the page cache), as a share of its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_share: Option<f64>,
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
    /// Requests, errors and latency per service and version over the last minute, as the
    /// proxy saw them (None when the proxy could not be asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficStatus>,
    /// Who saw the replicas' live state and the traffic, and when: this server (it
    /// supervises them) or, on a follower, the leader as it last stored them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Observed>,
}

/// Where an answer's live parts (replica health, traffic) come from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Observed {
    /// The server that saw them: the one answering, or the leader.
    pub server: String,
    /// `true`: seen now by the server answering (it leads); `false`: what the leader last
    /// stored (the answering server follows), `at_ms` old.
    pub live: bool,
    /// When they were seen (Unix ms; `None`: the leader has stored nothing yet).
    pub at_ms: Option<i64>,
    /// How old they are, by the answering server's clock.
    pub age_ms: Option<i64>,
}

/// What the proxy saw of an environment's traffic over a recent window.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrafficStatus {
    /// Length of the window in seconds: the last minute, or less when the proxy (or the
    /// server) started more recently.
    pub window_s: f64,
    /// The window starts when the proxy started (no older sample to compare with).
    pub since_proxy_start: bool,
    /// One row per service and version that served in the window or has replicas listed.
    pub versions: Vec<TrafficView>,
}

/// One version of a service over [`TrafficStatus::window_s`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrafficView {
    pub service: String,
    pub version: String,
    /// Completed requests in the window.
    pub requests: u64,
    /// Requests per second.
    pub rate_per_s: f64,
    /// Answers with status >= 500 (the version's own, or the proxy's when its replicas
    /// failed).
    pub errors_5xx: u64,
    /// `errors_5xx / requests` (0 without requests).
    pub error_rate: f64,
    /// Latency to response headers in milliseconds (None without requests).
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p90_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl TrafficView {
    /// The row of one version's window (`window.duration_ms` is its length).
    pub fn from_window(
        service: &str,
        version: &str,
        window: &crate::analysis::WindowStats,
    ) -> TrafficView {
        let seconds = window.duration_ms as f64 / 1000.0;
        let ms = |q: f64| window.latency_us.quantile(q).map(|us| us as f64 / 1000.0);
        TrafficView {
            service: service.to_string(),
            version: version.to_string(),
            requests: window.requests,
            rate_per_s: if seconds > 0.0 {
                window.requests as f64 / seconds
            } else {
                0.0
            },
            errors_5xx: window.errors(),
            error_rate: if window.requests > 0 {
                window.errors() as f64 / window.requests as f64
            } else {
                0.0
            },
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
        }
    }
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

impl RolloutView {
    /// Whether every request already goes to the new version (blue/green during its
    /// scale-down delay, a canary's finale) while the old one is still kept until retired.
    pub fn all_traffic_on_new(&self) -> bool {
        self.canary_weight >= 100.0
    }
}

/// The version serving all traffic now: the recorded current version, or the new version
/// of a rollout that already sends it every request (the old one is only kept warm).
pub fn serving_version(recorded: Option<String>, rollout: Option<&RolloutView>) -> Option<String> {
    match rollout {
        Some(rollout) if rollout.all_traffic_on_new() => Some(rollout.canary_version.clone()),
        _ => recorded,
    }
}

/// `POST /v1/apps/{app}/envs/{env}/promote`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PromoteRequest {
    /// Skip every remaining step: straight to 100%.
    #[serde(default)]
    pub full: bool,
}

/// `GET /v1/version`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerVersion {
    pub version: String,
}

/// `DELETE /v1/apps/{app}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppDeleted {
    pub app: String,
    pub deleted: bool,
    /// What stopped with it (its running environments and services).
    #[serde(default)]
    pub stopped: Vec<String>,
}

/// `POST /v1/teardown`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TornDown {
    pub stopped: bool,
}

/// `GET /v1/apps/{app}/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub revision: i64,
    pub environments: Vec<EnvStatus>,
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
    /// When the commit was made (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<String>,
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

/// `POST /v1/login-links`: a one-time console login link (shown once).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LoginLink {
    /// The user it logs in.
    pub user: String,
    /// The path to open on the server (`/login/link/ferry_…`): it works once.
    pub path: String,
    /// Unused after this time, it is refused.
    pub expires_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout_at(weight: f64) -> RolloutView {
        RolloutView {
            deployment_id: 7,
            strategy: "blue_green".into(),
            stage: 4,
            stages: 5,
            stage_name: "scale-down delay".into(),
            canary_version: "2.0.0".into(),
            stable_version: "1.0.0".into(),
            canary_weight: weight,
            paused: false,
            paused_by_hand: false,
            waiting_for: None,
            analysis: vec![],
            summary: String::new(),
        }
    }

    #[test]
    fn the_version_serving_all_traffic_is_current() {
        let recorded = Some("1.0.0".to_string());
        // nothing in progress, or the new version not yet at 100 %: the recorded one
        assert_eq!(serving_version(recorded.clone(), None), recorded);
        for weight in [0.0, 10.0, 99.99] {
            assert_eq!(
                serving_version(recorded.clone(), Some(&rollout_at(weight))),
                recorded
            );
        }
        // blue/green during its scale-down delay: green serves everything
        assert_eq!(
            serving_version(recorded, Some(&rollout_at(100.0))).as_deref(),
            Some("2.0.0")
        );
        assert_eq!(
            serving_version(None, Some(&rollout_at(100.0))).as_deref(),
            Some("2.0.0")
        );
    }

    #[test]
    fn a_traffic_row_has_rate_error_rate_and_percentiles() {
        use crate::analysis::{LatencyBins, WindowStats};
        let mut samples: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        samples.push(2_000_000);
        let window = WindowStats {
            requests: 101,
            errors_5xx: 3,
            duration_ms: 10_100,
            latency_us: LatencyBins::from_samples(&samples),
        };
        let row = TrafficView::from_window("web", "1.0.0", &window);
        assert_eq!(row.rate_per_s, 10.0);
        assert!((row.error_rate - 3.0 / 101.0).abs() < 1e-9);
        let p50 = row.p50_ms.expect("p50");
        let p99 = row.p99_ms.expect("p99");
        assert!((49.0..=52.0).contains(&p50), "{p50}");
        assert!((99.0..=101.0).contains(&p99), "{p99}");
        let idle = TrafficView::from_window("web", "2.0.0", &WindowStats::default());
        assert_eq!(
            (idle.rate_per_s, idle.error_rate, idle.p50_ms),
            (0.0, 0.0, None)
        );
    }

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
