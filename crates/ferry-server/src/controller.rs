//! The deployment controller: a loop that observes replicas (store + runtime), asks the pure
//! core (`ferry_core::rollout`) what to do, persists the decision, then acts on it.
//!
//! Invariants:
//! - A deployment's state transition is committed (compare-and-set) before its effects.
//! - A replica row is written before its process starts, and marked draining (and taken out
//!   of the pushed route table) before its process is stopped; so after a crash every
//!   process is either known to the store or findable by its `FERRY_REPLICA_ID`.
//! - Decisions are level-triggered: a restarted controller recomputes them from what runs.
//!
//! One module per concern: `reconcile` (the loop; an environment's pass, concern by concern
//! as `steps::next_concern` picks them; the rolling/recreate reconciler), `canary` (canary
//! and blue/green), `strategy` (plan and pace of a deployment
//! kind), `gate_steps`, `hook_steps`, `replicas`, `routes`, `drain`, `timeline`
//! (transitions and events), `commands` (the command API), `status`, `recover`, `teardown`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use ferry_core::manifest::Manifest;
use ferry_core::model::DeploymentState;

use crate::runtimes::Runtimes;
use ferry_store::{Store, StoreError};
use tokio::sync::{Notify, watch};

use crate::error::ServerError;

use crate::clock::Clock;
use crate::progressive::Meter;
use crate::proxy_link::DataPlane;

mod canary;
mod commands;
mod drain;
mod executor;
mod facts;
mod gate_steps;
mod hook_steps;
mod reconcile;
mod recover;
mod replicas;
mod routes;
mod status;
mod steps;
mod strategy;
mod teardown;
mod timeline;

#[cfg(test)]
mod crash_sim;
#[cfg(test)]
mod fakes;
#[cfg(test)]
mod fast_tests;
#[cfg(test)]
mod pass_cost;

/// How often the loop re-evaluates without being woken (timeouts, proxy liveness).
const TICK: Duration = Duration::from_millis(200);
/// How long adopted replicas get to report their health before decisions resume.
const SETTLE_TIMEOUT_MS: i64 = 10_000;
/// Exits before first becoming healthy that mark a new version as crash-looping.
const MAX_START_EXITS: u32 = 3;
/// How often a draining replica's usage is asked of the proxy.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// Every app with its latest manifest, by name.
pub type Apps = std::collections::BTreeMap<String, (ferry_store::AppRecord, Arc<Manifest>)>;

/// A state change asked for by a person, applied with compare-and-set.
struct Change {
    state: DeploymentState,
    reason: Option<String>,
    phase: serde_json::Value,
    message: String,
    /// The kind of its timeline line.
    event_kind: ferry_core::model::EventKind,
}

/// Why a user request was refused; the API maps these to status codes.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl From<StoreError> for RequestError {
    fn from(e: StoreError) -> Self {
        RequestError::Server(ServerError::Store(e))
    }
}

pub struct Controller {
    store: Store,
    runtime: Runtimes,
    /// The proxy (a fake in tests).
    proxy: Arc<dyn DataPlane>,
    /// Where decisions and records get "now" (a manual clock in tests).
    clock: Arc<dyn Clock>,
    wake: Notify,
    events_changed: watch::Sender<u64>,
    /// Replicas whose stop task is running.
    stopping: Mutex<HashSet<String>>,
    /// Decisions wait until adopted replicas have reported health (or this time passes).
    settle_until_ms: Mutex<i64>,
    adopted: Mutex<HashSet<String>>,
    /// Last traffic split announced per (app, env), so the timeline only shows changes.
    traffic_summary: Mutex<HashMap<(String, String), String>>,
    /// Analysis windows over the proxy's counters.
    meter: Meter,
    /// When acting for a deployment first failed on the store or the engine (cleared when
    /// it works again); bounded by `steps::retry::LIMIT`. The store keeps it too
    /// (across restarts); this copy covers a store that is what fails.
    infra_failing_since: Mutex<HashMap<i64, i64>>,
    /// Last unmet-gate keys announced per waiting deployment (timeline shows changes only).
    unmet_gates: Mutex<HashMap<i64, Vec<String>>>,
    /// Every effect the executor applied, in order (tests read it).
    #[cfg(test)]
    journal: Mutex<Vec<steps::Effect>>,
    torn_down: AtomicBool,
    /// Decrypts each environment's secrets when its replicas start.
    secrets: Arc<crate::secrets::Secrets>,
    // gates:
    /// Runs the external gate checks of waiting deployments in the background.
    gate_checks: crate::gates::CheckRunner,
    // hooks:
    /// Runs deployment hooks (pre_deploy, post_deploy, on_rollback) as recorded tasks.
    hooks: crate::hooks::HookRunner,
    /// The proxy's counters when each running deployment started (in memory: after a
    /// restart a deployment counts from its first transition seen by this server).
    traffic_baselines: Mutex<HashMap<i64, ferry_proxy::stats::StatsSnapshot>>,
    /// Manifests at older revisions (immutable), read when replicas start with one; at
    /// most `facts::PINNED_CACHE` of them.
    pinned: Mutex<HashMap<(String, i64), Arc<Manifest>>>,
    /// Each app's latest record and manifest, read and parsed once per revision (a pass
    /// reads only the revisions: `facts.rs`).
    parsed: Mutex<HashMap<String, (ferry_store::AppRecord, Arc<Manifest>)>>,
    /// Who workloads run as (and their log filter).
    workloads: Arc<crate::workload::Workloads>,
    /// Recent samples of the proxy's counters, for the traffic `status` shows.
    traffic: crate::traffic::Sampler,
    /// Each progressive rollout's per-version traffic, sampled for the console's charts.
    series: crate::series::SeriesSampler,
    /// Each replica's CPU and memory share, sampled by `usage::run`.
    pub(crate) usage: crate::usage::Sampler,
    /// Who this server is among several and whether it leads (unset: it runs alone, as in
    /// the tests): a follower's status serves the leader's stored live views (`live.rs`).
    observer: std::sync::OnceLock<crate::leader::Status>,
}

impl Controller {
    pub fn new(
        store: Store,
        runtime: Runtimes,
        proxy: Arc<dyn DataPlane>,
        clock: Arc<dyn Clock>,
        secrets: Arc<crate::secrets::Secrets>,
        workloads: Arc<crate::workload::Workloads>,
    ) -> Arc<Controller> {
        // hooks: output lives beside the replicas' logs, in DATA_DIR/hooks.
        let hooks_dir = runtime
            .log_path("x")
            .parent()
            .and_then(|logs| logs.parent())
            .map(|data| data.join("hooks"))
            .unwrap_or_else(|| PathBuf::from("hooks"));
        let hooks = crate::hooks::HookRunner::new(
            store.clone(),
            secrets.clone(),
            hooks_dir,
            workloads.clone(),
            runtime.clone(),
        );
        Arc::new(Controller {
            store,
            runtime,
            proxy,
            clock,
            wake: Notify::new(),
            events_changed: watch::channel(0).0,
            stopping: Mutex::new(HashSet::new()),
            settle_until_ms: Mutex::new(0),
            adopted: Mutex::new(HashSet::new()),
            traffic_summary: Mutex::new(HashMap::new()),
            meter: Meter::default(),
            unmet_gates: Mutex::new(HashMap::new()),
            #[cfg(test)]
            journal: Mutex::new(Vec::new()),
            infra_failing_since: Mutex::new(HashMap::new()),
            torn_down: AtomicBool::new(false),
            secrets,
            gate_checks: crate::gates::CheckRunner::default(),
            hooks,
            pinned: Mutex::new(HashMap::new()),
            parsed: Mutex::new(HashMap::new()),
            traffic_baselines: Mutex::new(HashMap::new()),
            workloads,
            traffic: crate::traffic::Sampler::default(),
            series: crate::series::SeriesSampler::default(),
            usage: crate::usage::Sampler::default(),
            observer: std::sync::OnceLock::new(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &Runtimes {
        &self.runtime
    }

    /// Now, by the controller's clock (Unix ms).
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn proxy(&self) -> &Arc<dyn DataPlane> {
        &self.proxy
    }

    pub fn workloads(&self) -> &crate::workload::Workloads {
        &self.workloads
    }

    /// Asks the loop for a pass now (after an apply, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// leader: this server is one of several (`status`: who it is, whether it leads).
    pub(crate) fn observe_as(&self, status: crate::leader::Status) {
        let _ = self.observer.set(status);
    }

    /// This server's id among several (`None`: it runs alone).
    pub(crate) fn server_id(&self) -> Option<String> {
        self.observer.get().map(|status| status.server_id())
    }

    /// leader: the store may have changed under another server's loop; live views
    /// (`watch`, `wait_events`, the console) look again.
    pub(crate) fn changed_elsewhere(&self) {
        self.events_changed.send_modify(|n| *n += 1);
    }
}

/// Invariants of the layer's shape.
#[cfg(test)]
mod tidy {
    /// The control layer knows nothing of HTTP: the API (`api.rs`) turns its answers into
    /// responses, so the console, flags or another front end can drive it too.
    #[test]
    fn the_control_layer_does_not_import_axum() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![src.join("controller.rs")];
        let mut dirs = vec![src.join("controller")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("controller/") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        assert!(files.len() > 10, "found the controller's modules");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            let code = text.split("mod tidy").next().unwrap_or(&text);
            assert!(
                !code.contains("axum"),
                "{} uses axum: the control layer returns data; api.rs speaks HTTP",
                file.display()
            );
        }
    }
}
