//! The `ferry.yaml` manifest: the typed shape, parsing with precise errors, and validation.
//!
//! Parsing never touches the outside world: a manifest is text in, `Manifest` or
//! `ManifestErrors` (each with file, line, column, field path and hint) out.
//!
//! Parsing runs in three passes over the same text:
//! 1. a position tree ([`tree`]) — YAML syntax errors and duplicate keys stop here;
//! 2. the typed parse (serde) — unknown fields and wrong types stop here, named by path;
//! 3. semantic validation ([`validate`]) — every remaining mistake is reported at once.
//!
//! The reference for users is `docs/manifest.md`; the editor schema is `docs/ferry.schema.json`.

mod diff;
mod errors;
// hooks:
mod hooks;
pub mod kubernetes;
// notify:
mod notify;
mod progressive;
mod tree;
mod validate;
mod warnings;
pub use validate::is_user_name;
pub use warnings::{MAX_WARNINGS, warnings};

pub(crate) use errors::closest;
pub use hooks::{DEFAULT_HOOK_TIMEOUT, ExpectJson, Hook, Hooks, HttpHook, Migration, OnInterrupt};
pub use notify::{
    EmailReceiver, EmailTls, InhibitRule, MAX_NOTIFY_ITEMS, MatchValue, Matchers, NotifyRoute,
    PAGERDUTY_EVENTS_URL, PagerDutyReceiver, Receiver, SlackReceiver, WebhookReceiver,
};
pub use progressive::{
    BlueGreen, Canary, CanaryStep, DEFAULT_PREVIEW_HEADER, Pause, Stickiness, weight_basis_points,
};

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// Pattern every app, service and environment name must match.
pub const NAME_PATTERN: &str = "^[a-z][a-z0-9-]{0,62}$";
/// Most replicas a service may run in one environment.
pub const MAX_REPLICAS: u32 = 64;
/// Most services one app may have.
pub const MAX_SERVICES: usize = 100;
/// Most environments one app may have.
pub const MAX_ENVIRONMENTS: usize = 100;
/// Environment variables Ferry sets for every replica; manifests may not set them.
pub const RESERVED_VARS: [&str; 8] = [
    "PORT",
    "VERSION",
    "FERRY_APP",
    "FERRY_ENV",
    "FERRY_SERVICE",
    "FERRY_COMMIT",
    "FERRY_RELEASE_TAG",
    "FERRY_REPLICA_ID",
];
/// Placeholders substituted in a service's `run` arguments.
pub const RUN_PLACEHOLDERS: [&str; 2] = ["PORT", "VERSION"];

/// A Ferry manifest (`ferry.yaml`): one app, its services and its environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Ferry manifest (ferry.yaml)")]
pub struct Manifest {
    /// App name: lowercase letters, digits and `-`, starting with a letter (at most 63).
    #[serde(default)]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub app: String,
    /// App-wide variables: defaults for every environment (an environment's `vars` override
    /// them). Values may reference other variables as `${NAME}` (`$${` is a literal `${`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    pub vars: BTreeMap<String, String>,
    /// Services keyed by name (same naming rule as the app). At least one.
    #[serde(default)]
    #[schemars(length(min = 1))]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z][a-z0-9-]{0,62}$" }))]
    pub services: BTreeMap<String, Service>,
    /// Environments keyed by name (same naming rule as the app), in promotion order:
    /// a release goes through them in the order they are written. At least one.
    #[serde(default)]
    #[schemars(length(min = 1))]
    #[schemars(extend("propertyNames" = { "pattern": "^[a-z][a-z0-9-]{0,62}$" }))]
    pub environments: IndexedMap<Environment>,
    /// Webhooks told about every deployment state change (or only the listed states).
    /// Deprecated in favour of `receivers` + `routes`, which they are compiled into.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<Notification>,
    /// Named receivers of notifications (webhook, slack, email, pagerduty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub receivers: BTreeMap<String, Receiver>,
    /// Which notifications go to which receiver, grouped how (first match wins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<NotifyRoute>,
    /// Notifications not sent while a matching alert fires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inhibit: Vec<InhibitRule>,
    /// Commands and HTTP smoke tests run at fixed points of every deployment.
    #[serde(default, skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    // alerts:
    /// Alert rules watched in every environment (or those each rule lists): a condition
    /// over Ferry's own metrics or a Prometheus query, `for`, severity, labels, annotations
    /// and actions (notify, pause or roll back the rollout, hold deployments while firing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alerts::AlertRule>,
}

/// A webhook that receives a POST for deployment state changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// `http://` or `https://` URL.
    pub webhook: String,
    /// `json` (Ferry's own body) or `slack` (a Slack-compatible `{"text": …}` body).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Only these states (e.g. `[succeeded, rolled-back, failed, aborted]`); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<String>,
    /// Only these environments; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

/// How to run one version of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Command line (argv), not run through a shell. `${PORT}` (the port this replica must
    /// listen on) and `${VERSION}` (the release version) are substituted in every argument.
    #[serde(default)]
    #[schemars(length(min = 1), example = example_run())]
    pub run: Vec<String>,
    /// Working directory, relative to the directory of the manifest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables for every replica (environment `vars` override them).
    /// Values may reference variables (`${DB_HOST}`) and `${VERSION}`, `${FERRY_APP}`,
    /// `${FERRY_ENV}`, `${FERRY_SERVICE}`; `$${` is a literal `${`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    pub env: BTreeMap<String, String>,
    /// Number of replicas in each environment (1..=64); an environment's `replicas` wins.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: u32,
    /// Path prefix routed to this service on each environment's listener (default `/`).
    /// The longest matching prefix wins; routes are unique within the app.
    #[serde(default = "default_route")]
    #[schemars(regex(pattern = r"^/"))]
    pub route: String,
    /// Active HTTP health check of every replica.
    #[serde(default)]
    pub health: HealthCheck,
    /// How long a replica gets between SIGTERM and SIGKILL (default 10s).
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: HumanDuration,
    /// Most time a replica taken out of traffic waits for the requests already sent to it
    /// before it gets SIGTERM (default 60s, the proxy's upstream timeout). A replica that
    /// is drained sooner is stopped sooner.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How long the proxy waits for a replica's response head before answering 504
    /// (at most `24h`). Default: the environment's `upstream_timeout`, else 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_timeout: Option<HumanDuration>,
    /// Container image for `runtime: docker` environments, e.g.
    /// `registry.example.com/shop/api:${VERSION}` (`${VERSION}` is substituted). With an
    /// image, `run` is optional: the command run in it (default: the image's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// `uid[:gid]` the container runs as (default: the image's `USER`). Ferry refuses uid 0
    /// unless `allow_root: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Let the container run as root (uid 0); off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_root: bool,
    /// Limits of each container: `{ memory: 256Mi, cpus: 0.5 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Limits: enforced on containers; what a replica's CPU and memory shares are relative to
/// ([`crate::usage`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory limit: bytes, or with a unit `K`/`M`/`G` (×1000) or `Ki`/`Mi`/`Gi` (×1024),
    /// e.g. `256Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(K|M|G|Ki|Mi|Gi)?$"))]
    pub memory: Option<String>,
    /// CPU limit in CPUs, e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
}

impl Resources {
    /// The memory limit in bytes; `None` when unset, `Err` when unreadable.
    pub fn memory_bytes(&self) -> Result<Option<i64>, String> {
        let Some(text) = &self.memory else {
            return Ok(None);
        };
        let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let factor: i64 = match &text[digits.len()..] {
            "" => 1,
            "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            unit => return Err(format!("unknown memory unit {unit:?}")),
        };
        digits
            .parse::<i64>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .filter(|n| *n >= 6 * 1024 * 1024)
            .map(Some)
            .ok_or_else(|| format!("memory {text:?} is not a size of at least 6Mi"))
    }

    /// The CPU limit in billionths of a CPU (the engine's unit).
    pub fn nano_cpus(&self) -> Result<Option<i64>, String> {
        match self.cpus {
            None => Ok(None),
            Some(cpus) if cpus.is_finite() && (0.01..=1024.0).contains(&cpus) => {
                Ok(Some((cpus * 1e9).round() as i64))
            }
            Some(cpus) => Err(format!("cpus {cpus} is not between 0.01 and 1024")),
        }
    }
}

/// What runs an environment's replicas and hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Local processes (`run`), the default.
    #[default]
    Process,
    /// Containers of each service's `image` on the local Docker engine.
    Docker,
    /// Deployments of each service's `image` on a Kubernetes cluster (see `kubernetes:`).
    Kubernetes,
}

impl RuntimeKind {
    fn is_process(&self) -> bool {
        *self == RuntimeKind::Process
    }
}

/// HTTP health check: `GET http://127.0.0.1:$PORT{path}` on each replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested; any 2xx answer is healthy (default `/health`).
    #[serde(default = "default_health_path")]
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Time between two checks of one replica (default 1s).
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    /// How long one check may take; at most `interval` (default 500ms).
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes before a replica is healthy (default 1).
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy replica is unhealthy (default 3).
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: u32,
    /// How long a new replica may take to become healthy before the rollout fails
    /// (default 30s).
    #[serde(default = "default_start_timeout")]
    pub start_timeout: HumanDuration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            start_timeout: default_start_timeout(),
        }
    }
}

/// A stage (dev, qa, staging, production…) with its own listener, variables and strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Proxy listener `IP:PORT`, e.g. `127.0.0.1:8080`; unique across environments.
    /// Every service of the app is reachable there under its `route`.
    #[serde(default)]
    #[schemars(example = "127.0.0.1:8080")]
    pub listen: String,
    /// Host names this environment answers for on `listen` (`shop.example.com`, or
    /// `*.example.com` for one label in front), matched against the request's `Host` and
    /// the TLS server name. Environments of any apps may share one `listen` address when
    /// each lists its hosts, no host twice, and all or none use `tls`; a request for
    /// another host gets a 404. Empty: every request on `listen`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Terminate TLS on `listen` with this certificate (chosen by SNI among the
    /// environments sharing the address; reloaded when the files change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// How long the proxy waits for a replica's response head before answering 504, for
    /// the services that set no `upstream_timeout` of their own (default 60s, at most `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_timeout: Option<HumanDuration>,
    /// Access log: the proxy appends one JSON line per answered request on `listen` (time,
    /// request id, host, method, path without query, protocol, service, version, upstream,
    /// status, duration) to this file, an absolute path on the server's machine (created
    /// 0640). Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "/var/log/ferry/shop-production.access.log")]
    pub access_log: Option<String>,
    /// Variables given to every replica in this environment (they override the app's
    /// `vars` and service `env`). Values may reference other variables as `${NAME}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    pub vars: BTreeMap<String, String>,
    /// Replica count for every service in this environment (1..=64), overriding the
    /// services' own `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub replicas: Option<u32>,
    /// How a new version replaces the running one (default: rolling, max_surge 1,
    /// max_unavailable 0).
    #[serde(default)]
    pub strategy: Strategy,
    /// What must hold before a deployment may start here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<Gates>,
    /// Keep watching a new version this long after it converged (e.g. `2m`), before the
    /// deployment succeeds: crash loops, failing health and (canary) the background analysis
    /// roll it back automatically meanwhile. Default: none (succeed at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<HumanDuration>,
    /// The OS user this environment's replicas, hooks and command checks run as, when the
    /// Ferry server runs as root (default: the server's `--run-as`, normally `nobody`).
    /// `root` only when written here explicitly. A server not running as root starts them
    /// as itself and refuses any other user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$"))]
    pub run_as: Option<String>,
    /// What runs the replicas and hooks: `process` (default), `docker` (containers of each
    /// service's `image`) or `kubernetes` (Deployments on a cluster, see `kubernetes:`).
    #[serde(default, skip_serializing_if = "RuntimeKind::is_process")]
    pub runtime: RuntimeKind,
    /// With `runtime: kubernetes`: the cluster context, namespace and traffic mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<kubernetes::Kubernetes>,
}

/// TLS termination of an environment's listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file on the server's machine: the certificate, then its intermediates.
    pub cert: String,
    /// PEM file with the private key (PKCS#8, RSA or EC).
    pub key: String,
    /// A plain-HTTP listener (e.g. `0.0.0.0:80`) that answers every request for the
    /// environment's hosts with a redirect (308) to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http: Option<String>,
    /// Send `Strict-Transport-Security: max-age=…` with this duration (e.g. `365d`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<HumanDuration>,
}

/// Conditions a deployment waits for (in state `blocked`, or `awaiting-approval` when only
/// approvals are missing) before it starts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    /// Approvals needed, by role; several rules must all hold (e.g. one tech-lead and one
    /// product-owner). The person who asked for the deployment never counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<ApprovalRule>,
    /// Each approver must also hold a role the requester does not have.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub separate_approver_role: bool,
    /// The release must have succeeded in this environment first; it must be written
    /// earlier in `environments`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]{0,62}$"))]
    pub after: Option<String>,
    /// And it must have been serving there for at least this long: the latest successful
    /// deployment of the version in `after` finished at least `soak` ago, and that
    /// environment still runs it (not replaced by a rollback or another version). Needs `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<HumanDuration>,
    /// Windows in which no deployment may start here (one already running carries on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze: Vec<FreezeWindow>,
    // releases:
    /// Deploy here, automatically, every version that succeeds in `after` and still serves
    /// there (once per version: a failed or rejected auto-promotion is not retried). The
    /// deployment then passes this environment's other gates like any other; it counts as
    /// requested by whoever requested the deployment in `after`. Needs `after`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_promote: bool,
    // gates:
    /// External checks that must pass (an HTTP answer, or a command exiting 0); re-run every
    /// `interval` while the deployment waits. A failing check keeps it waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<GateCheck>,
}

/// One external check of the `checks` gate: exactly one of `http` or `run`. `${VERSION}`,
/// `${FERRY_ENV}` and `${FERRY_APP}` are replaced in the URL, the body and the arguments.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["http"], "not": { "required": ["run"] } },
    { "required": ["run"], "not": { "required": ["http"] } }
]))]
pub struct GateCheck {
    /// Names the check in reports (`checks:NAME`); unique in the environment.
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"),
        example = "ci-green"
    )]
    pub name: String,
    /// Passes when a GET of `url` answers `expect_status` (and its body contains `expect_body`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpGateCheck>,
    /// Passes when this command (argv, run in the manifest's directory; under
    /// `runtime: docker`, in a one-off container of the deployment's image) exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<String>>,
    /// How often the check is re-run while the deployment waits (default `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
    /// How long one run may take (default `5s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

impl GateCheck {
    /// `interval`, or its default of 10 s.
    pub fn interval(&self) -> Duration {
        self.interval
            .map(HumanDuration::get)
            .unwrap_or(Duration::from_secs(10))
    }

    /// `timeout`, or its default of 5 s.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .map(HumanDuration::get)
            .unwrap_or(Duration::from_secs(5))
    }
}

/// The `http` form of a gate check.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpGateCheck {
    /// `http://` or `https://` URL fetched with GET.
    #[schemars(example = "http://127.0.0.1:9000/status/${VERSION}")]
    pub url: String,
    /// The status the answer must have (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

/// A freeze window: either recurring (`cron` + `duration`) or absolute (`from` + `until`),
/// read in `timezone`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [
    { "required": ["cron", "duration"], "not": { "anyOf": [{ "required": ["from"] }, { "required": ["until"] }] } },
    { "required": ["from", "until"], "not": { "anyOf": [{ "required": ["cron"] }, { "required": ["duration"] }] } }
]))]
pub struct FreezeWindow {
    /// When the window opens, as a cron expression in `timezone` (5 fields, or 6 with
    /// seconds first), e.g. `0 18 * * FRI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "0 18 * * FRI")]
    pub cron: Option<String>,
    /// How long each window stays open (elapsed time), e.g. `64h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    /// Start of an absolute window, a local date-time in `timezone`: `2026-12-20T00:00:00`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "2026-12-20T00:00:00")]
    pub from: Option<String>,
    /// End of an absolute window (excluded), a local date-time in `timezone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "2027-01-03T00:00:00")]
    pub until: Option<String>,
    /// IANA time zone the window is read in, e.g. `Europe/Paris` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "Europe/Paris")]
    pub timezone: Option<String>,
}

/// `count` approvals from people holding `role` in this app and environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub role: String,
    #[serde(default = "default_approval_count")]
    pub count: u32,
}

fn default_approval_count() -> u32 {
    1
}

/// How a new version replaces the running one.
///
/// Written either as a bare name (`recreate`, `rolling` — rolling with default limits) or
/// as a one-key map (`{ recreate: {} }`, `{ rolling: { max_surge: 1, max_unavailable: 0 } }`).
#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    /// Stop everything old, then start everything new (downtime; for dev).
    Recreate {},
    /// Replace replicas in health-gated batches.
    Rolling(Rolling),
    /// Shift a share of requests to the new version step by step, with analysis.
    Canary(Canary),
    /// Start the new version beside the old, then switch all traffic at once.
    BlueGreen(BlueGreen),
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling(Rolling::default())
    }
}

impl Strategy {
    /// Names accepted for `strategy`.
    pub const NAMES: [&'static str; 4] = ["recreate", "rolling", "canary", "blue_green"];

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate {} => "recreate",
            Strategy::Rolling(_) => "rolling",
            Strategy::Canary(_) => "canary",
            Strategy::BlueGreen(_) => "blue_green",
        }
    }

    /// Canary and blue/green run two versions side by side with weighted traffic.
    pub fn is_progressive(&self) -> bool {
        matches!(self, Strategy::Canary(_) | Strategy::BlueGreen(_))
    }
}

impl Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Strategy::Recreate {} => s.serialize_str("recreate"),
            Strategy::Rolling(rolling) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("rolling", rolling)?;
                map.end()
            }
            Strategy::Canary(canary) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("canary", canary)?;
                map.end()
            }
            Strategy::BlueGreen(blue_green) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("blue_green", blue_green)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Strategy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Strategy;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`recreate`, `rolling`, `blue_green` or a map like `{ rolling: { max_surge: 1 } }` or `{ canary: { steps: [...] } }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Strategy, E> {
                match v {
                    "recreate" => Ok(Strategy::Recreate {}),
                    "rolling" => Ok(Strategy::Rolling(Rolling::default())),
                    "blue_green" => Ok(Strategy::BlueGreen(BlueGreen::default())),
                    "canary" => Err(E::custom(
                        "a canary needs its steps: write `canary: { steps: [{ weight: 10 }, { pause: 1m }] }`",
                    )),
                    other => Err(E::unknown_variant(other, &Strategy::NAMES)),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Strategy, A::Error> {
                use serde::de::Error;
                let Some(name) = map.next_key::<String>()? else {
                    return Err(A::Error::invalid_length(
                        0,
                        &"a map with one key: `recreate`, `rolling`, `canary` or `blue_green`",
                    ));
                };
                let strategy = match name.as_str() {
                    "recreate" => {
                        map.next_value::<Empty>()?;
                        Strategy::Recreate {}
                    }
                    "rolling" => {
                        Strategy::Rolling(map.next_value::<Option<Rolling>>()?.unwrap_or_default())
                    }
                    "canary" => Strategy::Canary(map.next_value::<Canary>()?),
                    "blue_green" => Strategy::BlueGreen(
                        map.next_value::<Option<BlueGreen>>()?.unwrap_or_default(),
                    ),
                    other => return Err(A::Error::unknown_variant(other, &Strategy::NAMES)),
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!(
                        "a strategy has exactly one key, found `{name}` and `{extra}`"
                    )));
                }
                Ok(strategy)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `recreate:` takes no settings: accepts `{}` or nothing.
struct Empty;

impl<'de> Deserialize<'de> for Empty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Empty;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("nothing or `{}`")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Empty, E> {
                Ok(Empty)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Empty, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::unknown_field(&key, &[])),
                    None => Ok(Empty),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Strategy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Strategy".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let rolling = generator.subschema_for::<Rolling>();
        let canary = generator.subschema_for::<Canary>();
        let blue_green = generator.subschema_for::<BlueGreen>();
        schemars::json_schema!({
            "description": "How a new version replaces the running one: `recreate` (stop all old, then start all new; downtime), `rolling` (replace replicas in health-gated batches), `canary` (weighted steps with analysis) or `blue_green` (start beside, switch at once). Write a bare name or a one-key map.",
            "oneOf": [
                { "type": "string", "enum": ["recreate", "rolling", "blue_green"] },
                {
                    "type": "object",
                    "properties": { "recreate": { "type": ["object", "null"], "additionalProperties": false } },
                    "required": ["recreate"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "rolling": rolling },
                    "required": ["rolling"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "canary": canary },
                    "required": ["canary"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "blue_green": blue_green },
                    "required": ["blue_green"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// Rolling update limits, as replica counts or percentages of the replica count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Replicas that may run above the desired count during the update: a count (`1`) or a
    /// percentage of the replica count (`"25%"`, rounded up). Default 1.
    #[serde(default = "default_max_surge")]
    pub max_surge: IntOrPercent,
    /// Replicas that may be missing below the desired count: a count (`0`) or a percentage
    /// (`"25%"`, rounded down). Default 0. Not both limits may be 0.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// A count (`2`) or a percentage of the replica count (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IntOrPercent {
    Count(u32),
    Percent(Percent),
}

impl IntOrPercent {
    /// Resolves against `total`; percentages round up for surge, down for unavailable
    /// (Kubernetes' convention), chosen by `round_up`.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(Percent(p)) => {
                let scaled = u64::from(total) * u64::from(p);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }

    /// True for `0` and `"0%"`.
    pub fn is_zero(self) -> bool {
        matches!(
            self,
            IntOrPercent::Count(0) | IntOrPercent::Percent(Percent(0))
        )
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IntOrPercent::Count(n) => write!(f, "{n}"),
            IntOrPercent::Percent(Percent(p)) => write!(f, "{p}%"),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a count like 1 or a percentage like \"25%\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<IntOrPercent, E> {
                u32::try_from(v)
                    .map(IntOrPercent::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<IntOrPercent, E> {
                u64::try_from(v)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IntOrPercent, E> {
                Percent::parse(v)
                    .map(IntOrPercent::Percent)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A count (`2`) or a percentage of the replica count (`\"25%\"`, at most 100%).",
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^(100|[1-9]?[0-9])%$" }
            ]
        })
    }
}

/// A whole percentage written as `"25%"` (validation rejects values above 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u32);

impl Percent {
    fn parse(text: &str) -> Result<Percent, String> {
        let digits = text.trim().strip_suffix('%').ok_or_else(|| {
            format!("expected a count like 1 or a percentage like \"25%\", got {text:?}")
        })?;
        digits
            .trim()
            .parse()
            .map(Percent)
            .map_err(|_| format!("expected a percentage like \"25%\", got {text:?}"))
    }
}

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Percent::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A map that keeps the order its keys were written in (environments are ordered).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexedMap<T>(pub Vec<(String, T)>);

impl<T> Default for IndexedMap<T> {
    fn default() -> Self {
        IndexedMap(Vec::new())
    }
}

impl<T> IndexedMap<T> {
    pub fn get(&self, key: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Position of `key` in written order (promotion order for environments).
    pub fn position(&self, key: &str) -> Option<usize> {
        self.0.iter().position(|(k, _)| k == key)
    }
}

impl<T: Serialize> Serialize for IndexedMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for IndexedMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = IndexedMap<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, T)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((k, v)) = access.next_entry::<String, T>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    entries.push((k, v));
                }
                Ok(IndexedMap(entries))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for IndexedMap<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, T>>::json_schema(generator)
    }
    fn inline_schema() -> bool {
        true
    }
}

fn example_run() -> Vec<String> {
    ["./server", "--port", "${PORT}"].map(String::from).to_vec()
}
fn default_replicas() -> u32 {
    1
}
fn default_route() -> String {
    "/".to_string()
}
fn default_stop_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_drain_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_health_path() -> String {
    "/health".to_string()
}
fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_healthy_threshold() -> u32 {
    1
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_start_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_surge() -> IntOrPercent {
    IntOrPercent::Count(1)
}
fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Count(0)
}

/// Everything wrong with a manifest, each error pinned to a place in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

/// One mistake: where (file:line:column and field path), what, and how to fix it.
///
/// Displays as `file:line:column: path: message (hint: …)`; the path part is left out for
/// errors that concern no field (a YAML syntax error), the hint part when there is none.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{file}:{line}:{column}: {}{message}{}",
    if .path.is_empty() { String::new() } else { format!("{}: ", .path) },
    .hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default()
)]
pub struct ManifestError {
    pub file: String,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub column: usize,
    /// Dotted field path, e.g. `services.api.health.interval` (`run[0]` for list items).
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses and validates a manifest. `file_name` is only used in error messages.
///
/// On failure every error found is returned, sorted by position. A YAML syntax error or a
/// type error (unknown field, wrong type) stops parsing at that point; semantic mistakes
/// (names, ranges, listeners, variables…) are all collected.
pub fn parse(text: &str, file_name: &str) -> Result<Manifest, ManifestErrors> {
    parse_unbounded(text, file_name).map_err(|e| e.bounded())
}

fn parse_unbounded(text: &str, file_name: &str) -> Result<Manifest, ManifestErrors> {
    let tree = tree::parse(text).map_err(|e| ManifestErrors {
        errors: vec![errors::from_yaml(&e, None, file_name)],
    })?;
    let duplicates = errors::duplicates(&tree, file_name);
    if !duplicates.is_empty() {
        return Err(ManifestErrors { errors: duplicates });
    }
    let manifest = serde_saphyr::from_str::<Manifest>(text).map_err(|e| ManifestErrors {
        errors: vec![errors::from_yaml(&e, Some(&tree), file_name)],
    })?;
    let mut errors: Vec<ManifestError> = validate::validate(&manifest)
        .into_iter()
        .map(|issue| issue.into_error(&tree, file_name))
        .collect();
    if errors.is_empty() {
        return Ok(manifest);
    }
    errors.sort_by_key(|e| (e.line, e.column));
    Err(ManifestErrors { errors })
}

/// The `app:` of a manifest, read without validating or expanding anything else (the API
/// gate needs it to decide who may apply it). `None` when the text is not a YAML map.
pub fn app_name(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct AppOnly {
        #[serde(default)]
        app: String,
    }
    serde_saphyr::from_str::<AppOnly>(text).ok().map(|a| a.app)
}

/// Most errors [`parse`] reports; a last line says how many more there were.
pub const MAX_ERRORS: usize = 100;

impl ManifestErrors {
    /// At most [`MAX_ERRORS`] errors, each field cut to a bounded length (see
    /// [`crate::api::clip`]): a mistake in a 20 MB value is reported in one short line.
    fn bounded(mut self) -> ManifestErrors {
        use crate::api::{MAX_MESSAGE_CHARS, clip};
        let more = self.errors.len().saturating_sub(MAX_ERRORS);
        if more > 0 {
            let next = &self.errors[MAX_ERRORS];
            let note = ManifestError {
                file: next.file.clone(),
                line: next.line,
                column: next.column,
                path: String::new(),
                message: format!("{more} more error(s) from here on are not shown"),
                hint: Some(format!("fix the first {MAX_ERRORS} and validate again")),
            };
            self.errors.truncate(MAX_ERRORS);
            self.errors.push(note);
        }
        for e in &mut self.errors {
            for field in [&mut e.file, &mut e.path, &mut e.message] {
                if let std::borrow::Cow::Owned(cut) = clip(field, MAX_MESSAGE_CHARS) {
                    *field = cut;
                }
            }
            if let Some(hint) = &mut e.hint
                && let std::borrow::Cow::Owned(cut) = clip(hint, MAX_MESSAGE_CHARS)
            {
                *hint = cut;
            }
        }
        self
    }
}

/// Names a manifest uses that must exist outside it, checked where they are known (the
/// server, at apply time): each approval rule's `role` must be a built-in or custom role.
/// Every unknown name is a located error, like the parse errors (`text` is the manifest
/// `manifest` was parsed from).
pub fn check_references(
    text: &str,
    file_name: &str,
    manifest: &Manifest,
    known_roles: &[&str],
) -> Vec<ManifestError> {
    use tree::Seg;
    let Ok(tree) = tree::parse(text) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (env, environment) in manifest.environments.iter() {
        let Some(gates) = &environment.gates else {
            continue;
        };
        for (i, rule) in gates.approvals.iter().enumerate() {
            if known_roles.contains(&rule.role.as_str()) {
                continue;
            }
            let path = vec![
                Seg::Key("environments".into()),
                Seg::Key(env.to_string()),
                Seg::Key("gates".into()),
                Seg::Key("approvals".into()),
                Seg::Index(i),
                Seg::Key("role".into()),
            ];
            let pos = tree.locate(&path, true);
            let create = format!(
                "create it first: `ferry roles create {} --permission approve`",
                rule.role
            );
            let hint = match closest(&rule.role, known_roles) {
                Some(near) => format!("did you mean {near}? or {create}"),
                None => format!("{create}; known roles: {}", known_roles.join(", ")),
            };
            errors.push(ManifestError {
                file: file_name.to_string(),
                line: pos.line,
                column: pos.column,
                path: tree::path_string(&path),
                message: format!("unknown role {:?}: no one could ever approve", rule.role),
                hint: Some(hint),
            });
        }
    }
    errors
}

/// Environments whose `runtime:` this build of Ferry can't run (e.g. `docker` in a build
/// without the `docker` feature), each located at its `runtime:` key.
pub fn check_runtimes(
    text: &str,
    file_name: &str,
    manifest: &Manifest,
    available: &[RuntimeKind],
) -> Vec<ManifestError> {
    use tree::Seg;
    let Ok(tree) = tree::parse(text) else {
        return Vec::new();
    };
    let mut errors = Vec::new();
    for (env, environment) in manifest.environments.iter() {
        if available.contains(&environment.runtime) {
            continue;
        }
        let path = vec![
            Seg::Key("environments".into()),
            Seg::Key(env.to_string()),
            Seg::Key("runtime".into()),
        ];
        let pos = tree.locate(&path, true);
        let name = serde_json::to_value(environment.runtime)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        errors.push(ManifestError {
            file: file_name.to_string(),
            line: pos.line,
            column: pos.column,
            path: tree::path_string(&path),
            message: if environment.runtime == RuntimeKind::Kubernetes {
                "this Ferry server cannot run `runtime: kubernetes` environments: it was built without the `kubernetes` cargo feature, or it finds no cluster configuration (no in-cluster service account, no $KUBECONFIG, no ~/.kube/config)".to_string()
            } else {
                format!("this Ferry server was built without the {name} runtime")
            },
            hint: Some(if environment.runtime == RuntimeKind::Kubernetes {
                format!("give the server a kubeconfig (or run it in the cluster), or print the objects with `ferry export --k8s {} --env {env} --version V` to apply them with kubectl or a GitOps tool (docs/kubernetes.md)", manifest.app)
            } else {
                format!(
                    "use a build with the `{name}` cargo feature (the default), or `runtime: process`"
                )
            }),
        });
    }
    errors
}

impl Manifest {
    /// Replica count of `service` in `env` (the environment's override wins).
    pub fn replicas(&self, service: &str, env: &str) -> u32 {
        let env_override = self.environments.get(env).and_then(|e| e.replicas);
        env_override
            .or_else(|| self.services.get(service).map(|s| s.replicas))
            .unwrap_or(1)
    }

    /// Where this manifest uses `role` (approval rules), as field paths:
    /// `environments.production.gates.approvals[0].role`. A role still used here must not
    /// be deleted: no one could ever approve.
    pub fn role_uses(&self, role: &str) -> Vec<String> {
        self.environments
            .iter()
            .flat_map(|(env, environment)| {
                let rules = environment.gates.iter().flat_map(|g| g.approvals.iter());
                rules
                    .enumerate()
                    .filter(|(_, rule)| rule.role == role)
                    .map(move |(i, _)| format!("environments.{env}.gates.approvals[{i}].role"))
            })
            .collect()
    }

    /// Human-readable changes from `old` to `self`, one per line, in a stable order:
    /// `+ services.web`, `- environments.qa`, `~ services.api.replicas: 2 -> 3`.
    /// With no `old` every service and environment is listed as added. Empty when equal.
    pub fn diff(&self, old: Option<&Manifest>) -> Vec<String> {
        diff::diff(self, old)
    }

    /// Writes the manifest back as YAML (defaults spelled out).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_default()
    }
}

/// JSON Schema (draft-07) of `ferry.yaml`, for editors. Committed as `docs/ferry.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<Manifest>();
    let mut value = serde_json::to_value(schema).unwrap_or_default();
    // These fields default to empty so that validation can report all of them missing at
    // once; for editors they are required and have no default.
    mark_required(&mut value, &["app", "services", "environments"]);
    // `run` (or `image` for containers) is said by validation, not the schema.
    if let Some(environment) = value
        .get_mut("definitions")
        .and_then(|defs| defs.get_mut("Environment"))
    {
        mark_required(environment, &["listen"]);
    }
    value
}

fn mark_required(schema: &mut serde_json::Value, fields: &[&str]) {
    if let Some(props) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for field in fields {
            if let Some(prop) = props.get_mut(*field).and_then(|p| p.as_object_mut()) {
                prop.remove("default");
            }
        }
    }
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "required".into(),
            fields.iter().map(|f| serde_json::Value::from(*f)).collect(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uses_name_each_approval_rule() {
        let text = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging:\n    listen: 127.0.0.1:8081\n    gates:\n      approvals: [{ role: approver }]\n  production:\n    listen: 127.0.0.1:8082\n    gates:\n      approvals: [{ role: tech-lead }, { role: approver, count: 2 }]\n";
        let manifest = parse(text, "ferry.yaml").unwrap();
        assert_eq!(
            manifest.role_uses("approver"),
            [
                "environments.staging.gates.approvals[0].role",
                "environments.production.gates.approvals[1].role",
            ]
        );
        assert!(manifest.role_uses("viewer").is_empty());
    }

    #[test]
    fn unknown_approval_roles_are_located() {
        let text = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  production:\n    listen: 127.0.0.1:8082\n    gates:\n      approvals: [{ role: approver }, { role: tech-lead }]\n";
        let manifest = parse(text, "ferry.yaml").expect("valid");
        let roles = ["admin", "approver", "viewer"];
        let errors = check_references(text, "ferry.yaml", &manifest, &roles);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with(
                "ferry.yaml:9:47: environments.production.gates.approvals[1].role: unknown role \"tech-lead\""
            ),
            "{shown}"
        );
        assert!(shown.contains("ferry roles create tech-lead"), "{shown}");
        let roles = ["admin", "approver", "tech-lead"];
        assert!(check_references(text, "ferry.yaml", &manifest, &roles).is_empty());
    }

    #[test]
    fn a_runtime_this_build_lacks_is_located() {
        let text = "app: shop\nservices:\n  web:\n    image: shop/web:${VERSION}\n    user: \"65534\"\nenvironments:\n  production:\n    listen: 127.0.0.1:8082\n    runtime: docker\n  dev:\n    listen: 127.0.0.1:8083\n";
        let manifest = parse(text, "ferry.yaml").expect("valid");
        let errors = check_runtimes(text, "ferry.yaml", &manifest, &[RuntimeKind::Process]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("ferry.yaml:9:14: environments.production.runtime: this Ferry server was built without the docker runtime"),
            "{shown}"
        );
        assert!(shown.contains("`docker` cargo feature"), "{shown}");
        let all = [RuntimeKind::Process, RuntimeKind::Docker];
        assert!(check_runtimes(text, "ferry.yaml", &manifest, &all).is_empty());
    }
}
