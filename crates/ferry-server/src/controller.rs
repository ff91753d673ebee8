//! The deployment controller: a loop that observes replicas (store + runtime), asks the pure
//! core (`ferry_core::rollout`) what to do, persists the decision, then acts on it.
//!
//! Invariants:
//! - A deployment's state transition is committed (compare-and-set) before its effects.
//! - A replica row is written before its process starts, and marked draining (and taken out
//!   of the pushed route table) before its process is stopped; so after a crash every
//!   process is either known to the store or findable by its `FERRY_REPLICA_ID`.
//! - Decisions are level-triggered: a restarted controller recomputes them from what runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_core::api::{
    AppStatus, DeploymentView, EnvStatus, EventView, RedeployAnswer, ReplicaView, Unchanged,
};
use ferry_core::gates;
use ferry_core::manifest::{BlueGreen, Manifest, Strategy};
use ferry_core::model::{DeploymentState, ReplicaState};
use ferry_core::rollout::{self, Action, Observed, Pace, Patience, ServiceInput, Verdict};
use ferry_proxy::routes::{
    BackendGroup, ListenerConfig, PreviewRule, Route, RouteTable, StickyRule, TlsFiles,
};
use ferry_runtime::{HealthSpec, ProcessIdentity, ReplicaSpec, RuntimeEvent};

use crate::runtimes::Runtimes;
use ferry_store::{
    AppRecord, DeploymentRecord, NewDeployment, ReplicaRecord, Store, StoreError, Transition,
};
use rand::RngExt;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::error::ServerError;
use crate::lock;
use crate::progressive::{CommandName, Meter, PendingCommand, Phase, Subject, plan_for};
use crate::proxy_link::ProxyLink;
use ferry_core::progressive::{self, Outcome, Plan};

// hooks:
mod hook_steps;

/// How often the loop re-evaluates without being woken (timeouts, proxy liveness).
const TICK: Duration = Duration::from_millis(200);
/// How long adopted replicas get to report their health before decisions resume.
const SETTLE_TIMEOUT_MS: i64 = 10_000;
/// Exits before first becoming healthy that mark a new version as crash-looping.
const MAX_START_EXITS: u32 = 3;
/// How often a draining replica's usage is asked of the proxy.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// A state change asked for by a person, applied with compare-and-set.
struct Change {
    state: DeploymentState,
    reason: Option<String>,
    phase: serde_json::Value,
    message: String,
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
    proxy: ProxyLink,
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
    /// Last unmet-gate keys announced per waiting deployment (timeline shows changes only).
    unmet_gates: Mutex<HashMap<i64, Vec<String>>>,
    /// Client for webhooks.
    http: reqwest::Client,
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
    /// Manifests at older revisions (immutable), read when replicas start with one.
    pinned: Mutex<HashMap<(String, i64), Arc<Manifest>>>,
    /// Who workloads run as (and their log filter).
    workloads: Arc<crate::workload::Workloads>,
}

impl Controller {
    pub fn new(
        store: Store,
        runtime: Runtimes,
        proxy: ProxyLink,
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
            wake: Notify::new(),
            events_changed: watch::channel(0).0,
            stopping: Mutex::new(HashSet::new()),
            settle_until_ms: Mutex::new(0),
            adopted: Mutex::new(HashSet::new()),
            traffic_summary: Mutex::new(HashMap::new()),
            meter: Meter::default(),
            unmet_gates: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            torn_down: AtomicBool::new(false),
            secrets,
            gate_checks: crate::gates::CheckRunner::default(),
            hooks,
            pinned: Mutex::new(HashMap::new()),
            traffic_baselines: Mutex::new(HashMap::new()),
            workloads,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &Runtimes {
        &self.runtime
    }

    /// Asks the loop for a pass now (after an apply, say).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Re-adopts the replicas a previous server left running; stops what it can't vouch for.
    pub async fn recover(&self) -> Result<(), ServerError> {
        // hooks: attempts the previous server left running are interrupted, never re-adopted.
        self.hooks.recover().await?;
        let apps = self.apps().await?;
        let mut adopted = HashSet::new();
        for record in self.store.list_replicas(None, None).await? {
            // An adopted process keeps the environment it started with; these are for the
            // runtime's restarts of it.
            let secrets = self
                .secrets
                .env_vars(&record.app, &record.env)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(replica = %record.id, error = %e, "cannot decrypt its secrets");
                    BTreeMap::new()
                });
            let commit = self.release_commit(&record.app, &record.version).await;
            let spec = match apps.get(&record.app) {
                Some((app, latest)) => {
                    let pinned = self
                        .spec_manifest(app, &record.env, record.deployment_id)
                        .await;
                    let manifest = pinned.as_deref().unwrap_or(latest);
                    // A restart of an adopted replica runs as its environment says; never
                    // as the server's user because the lookup failed.
                    match self.workloads.run_as(manifest, &record.env) {
                        Ok(run_as) => replica_spec(
                            app,
                            manifest,
                            &record,
                            secrets.clone(),
                            commit.as_deref(),
                            run_as.clone(),
                        )
                        .or_else(|| {
                            replica_spec(app, latest, &record, secrets, commit.as_deref(), run_as)
                        }),
                        Err(e) => {
                            tracing::error!(replica = %record.id, error = %e, "cannot resolve the user it runs as");
                            None
                        }
                    }
                }
                None => None,
            };
            let identity = record
                .pid
                .zip(record.start_time)
                .map(|(pid, start_time)| ProcessIdentity { pid, start_time });
            // Draining replicas are adopted too: the loop takes them out of the route table
            // before stopping them, as it would have done without the crash.
            // What can't be adopted is stopped: a process by its identity or (crashed
            // between writing the row and recording the pid) by its id, containers by label.
            let keep = match spec {
                Some(spec) => self.runtime.adopt(spec, identity).await?,
                None => {
                    match identity {
                        Some(identity) => {
                            ferry_runtime::kill_process_group(&identity, Duration::from_secs(10))
                                .await;
                        }
                        None => kill_by_replica_id(&record.id).await,
                    }
                    self.runtime.discard(&record.id, None).await;
                    false
                }
            };
            if keep {
                tracing::info!(replica = %record.id, "re-adopted replica");
                adopted.insert(record.id.clone());
            } else {
                tracing::info!(replica = %record.id, "replica from a previous run is gone; forgetting it");
                self.store.delete_replica(&record.id).await?;
            }
        }
        *lock(&self.settle_until_ms) = now_ms() + SETTLE_TIMEOUT_MS;
        *lock(&self.adopted) = adopted;
        Ok(())
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut events = self.runtime.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_proxy_check = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tick.tick() => {}
                event = events.recv() => match event {
                    Ok(event) => self.on_runtime_event(event).await,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "controller lagged behind runtime events");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
            }
            // Record everything already queued before deciding (decisions read live
            // status), so the timeline shows every change that led to a decision.
            while let Ok(event) = events.try_recv() {
                self.on_runtime_event(event).await;
            }
            if self.torn_down.load(Ordering::SeqCst) {
                continue;
            }
            let now = now_ms();
            if now - last_proxy_check > 1_000 {
                last_proxy_check = now;
                match self.proxy.ensure_alive().await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "proxy is down and could not be restarted")
                    }
                }
            }
            if let Err(e) = self.reconcile_all().await {
                tracing::error!(error = %e, "reconcile failed; retrying");
            }
        }
    }

    fn settled(&self) -> bool {
        if now_ms() >= *lock(&self.settle_until_ms) {
            return true;
        }
        let adopted = lock(&self.adopted).clone();
        adopted.iter().all(|id| {
            self.runtime
                .status(id)
                .is_none_or(|s| s.state != ReplicaState::Starting)
        })
    }

    async fn on_runtime_event(&self, event: RuntimeEvent) {
        let (id, message) = match &event {
            RuntimeEvent::Started { id, instance } => {
                if let Some(identity) = instance.process()
                    && let Err(e) = self
                        .store
                        .set_replica_process(id, identity.pid, identity.start_time)
                        .await
                {
                    tracing::error!(replica = %id, error = %e, "could not record the replica's pid");
                }
                (id, format!("started ({instance})"))
            }
            RuntimeEvent::Healthy { id } => (id, "healthy".to_string()),
            RuntimeEvent::Unhealthy { id, reason } => (id, format!("unhealthy: {reason}")),
            RuntimeEvent::Exited {
                id,
                reason,
                will_restart,
            } => (
                id,
                if *will_restart {
                    format!("exited ({reason}); restarting")
                } else {
                    format!("exited ({reason})")
                },
            ),
            // The stop task says `stopped` itself, while the replica's row still exists.
            RuntimeEvent::Stopped { .. } => {
                self.wake.notify_one();
                return;
            }
        };
        self.replica_event(id, &message).await;
        self.wake.notify_one();
    }

    /// Puts a replica's news on the timeline of the deployment running in its environment.
    async fn replica_event(&self, id: &str, message: &str) {
        let Ok(replicas) = self.store.list_replicas(None, None).await else {
            return;
        };
        let Some(record) = replicas.into_iter().find(|r| r.id == id) else {
            return;
        };
        let line = format!(
            "{} {} {} on 127.0.0.1:{}: {message}",
            record.service,
            record.version,
            short_id(id),
            record.port
        );
        tracing::info!(app = %record.app, env = %record.env, "{line}");
        if let Ok(Some(active)) = self.active_deployment(&record.app, &record.env).await {
            self.event(active.id, "replica", &line).await;
        }
    }

    async fn event(&self, deployment_id: i64, kind: &str, message: &str) {
        match self
            .store
            .append_event(deployment_id, kind, message, now_ms())
            .await
        {
            Ok(_) => {
                self.events_changed.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(deployment = deployment_id, error = %e, "could not record an event")
            }
        }
    }

    async fn apps(&self) -> Result<BTreeMap<String, (AppRecord, Manifest)>, ServerError> {
        let mut apps = BTreeMap::new();
        for record in self.store.list_apps().await? {
            match serde_json::from_str::<Manifest>(&record.manifest_json) {
                Ok(manifest) => {
                    apps.insert(record.name.clone(), (record, manifest));
                }
                Err(e) => {
                    tracing::error!(app = %record.name, error = %e, "stored manifest is unreadable")
                }
            }
        }
        Ok(apps)
    }

    async fn active_deployment(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Option<DeploymentRecord>, StoreError> {
        Ok(self
            .store
            .latest_deployment(app, env)
            .await?
            .filter(|d| !d.state.is_terminal()))
    }

    /// One pass over every environment of every app, then the route table.
    async fn reconcile_all(self: &Arc<Self>) -> Result<(), ServerError> {
        if !self.settled() {
            return Ok(());
        }
        let apps = self.apps().await?;
        let replicas = self.store.list_replicas(None, None).await?;
        let now = now_ms();
        for (app, manifest) in apps.values() {
            for (env_name, _) in manifest.environments.iter() {
                let env_replicas: Vec<&ReplicaRecord> = replicas
                    .iter()
                    .filter(|r| r.app == app.name && r.env == env_name)
                    .collect();
                if let Err(e) = self
                    .reconcile_env(app, manifest, env_name, &env_replicas, now)
                    .await
                {
                    tracing::error!(app = %app.name, env = env_name, error = %e, "could not reconcile");
                }
            }
        }
        // releases: auto-promotion, level-triggered from the store (promotion.rs)
        if let Err(e) = crate::promotion::auto_promote(self, &apps).await {
            tracing::error!(error = %e, "auto-promotion pass failed; retrying");
        }
        // Replicas of apps, environments or services no longer in any manifest.
        let orphans: Vec<String> = replicas
            .iter()
            .filter(|r| !r.draining)
            .filter(|r| {
                apps.get(&r.app).is_none_or(|(_, m)| {
                    m.environments.get(&r.env).is_none() || !m.services.contains_key(&r.service)
                })
            })
            .map(|r| r.id.clone())
            .collect();
        for id in orphans {
            self.store.set_replica_draining(&id, now).await?;
        }
        self.push_routes(&apps).await?;
        self.stop_drained(&apps).await?;
        Ok(())
    }

    async fn reconcile_env(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        replicas: &[&ReplicaRecord],
        now: i64,
    ) -> Result<(), ServerError> {
        let active = self.active_deployment(&app.name, env).await?;
        // apply: replica counts and services follow the manifest revision of a deployment
        // (the active one, else the one that made the current version), never a bare apply.
        let pinned = self
            .spec_manifest(app, env, active.as_ref().map(|d| d.id))
            .await;
        let spec = ferry_core::apply::running_spec(manifest, pinned.as_deref());
        let mut services = self.observe(&spec, env, replicas);
        let strategy = manifest
            .environments
            .get(env)
            .map(|e| e.strategy.clone())
            .unwrap_or_default();
        let Some(deployment) = active else {
            // hooks:
            self.after_rollback_hooks(app, manifest, env).await?;
            return self.maintain(app, manifest, env, &services, now).await;
        };
        // config: a redeploy replaces the replicas whose configuration is out of date, and
        // scales to the replica counts of its manifest revision.
        let redeploy = if deployment.kind == "redeploy" {
            let pinned = self.manifest_at(app, deployment.manifest_revision).await;
            let manifest = pinned.as_deref().unwrap_or(manifest);
            let mut plan =
                crate::config::redeploy_state(&self.store, app, manifest, env, &deployment.version)
                    .await?;
            plan.scale = ferry_core::apply::scale_changes(&services, &deployment.version);
            Some(plan)
        } else {
            None
        };
        // A redeploy with nothing to change ends here: no gate, hook or replica is touched.
        if let Some(plan) = &redeploy
            && plan.is_empty()
            && matches!(
                deployment.state,
                DeploymentState::Pending
                    | DeploymentState::AwaitingApproval
                    | DeploymentState::Blocked
            )
        {
            let message = format!(
                "nothing to redeploy: {} already runs with this configuration and replica count; no gate, hook or replica was touched",
                deployment.version
            );
            self.transition(
                &deployment,
                DeploymentState::Succeeded,
                None,
                Some(deployment.version.clone()),
                &message,
            )
            .await?;
            return Ok(());
        }
        if matches!(
            deployment.state,
            DeploymentState::Pending | DeploymentState::AwaitingApproval | DeploymentState::Blocked
        ) && !self.gates_pass(&deployment, manifest, env).await?
        {
            return Ok(());
        }
        // hooks: pre_deploy runs to completion before anything moves.
        if matches!(
            deployment.state,
            DeploymentState::Pending | DeploymentState::AwaitingApproval | DeploymentState::Blocked
        ) && !self
            .pre_deploy_done(app, manifest, env, &deployment)
            .await?
        {
            return Ok(());
        }
        if deployment.state != DeploymentState::Pending
            && let Some(plan) = plan_of(&deployment, &strategy, manifest, env)
        {
            return self
                .drive_progressive(app, manifest, env, &deployment, &plan, &services, now)
                .await;
        }
        let (target, pace) = match deployment.state {
            DeploymentState::Pending
            | DeploymentState::AwaitingApproval
            | DeploymentState::Blocked
                if let Some(plan) = &redeploy =>
            {
                let message = format!(
                    "redeploy of {} started ({}): {}",
                    deployment.version,
                    describe_run(&deployment, &strategy, manifest, env),
                    plan.describe()
                );
                self.transition(
                    &deployment,
                    DeploymentState::Progressing,
                    None,
                    None,
                    &message,
                )
                .await?;
                return Ok(());
            }
            DeploymentState::Pending
            | DeploymentState::AwaitingApproval
            | DeploymentState::Blocked => {
                let message = match &deployment.previous_version {
                    Some(previous) => format!(
                        "rollout started: {previous} -> {} ({})",
                        deployment.version,
                        describe_run(&deployment, &strategy, manifest, env)
                    ),
                    None => format!(
                        "rollout started: {} ({})",
                        deployment.version,
                        describe_run(&deployment, &strategy, manifest, env)
                    ),
                };
                self.transition(
                    &deployment,
                    DeploymentState::Progressing,
                    None,
                    None,
                    &message,
                )
                .await?;
                return Ok(());
            }
            DeploymentState::Progressing => (
                deployment.version.clone(),
                pace_of(&strategy, manifest, env),
            ),
            DeploymentState::RollingBack => match &deployment.previous_version {
                Some(previous) => (previous.clone(), restore_pace(manifest, env)),
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        if let Some(plan) = &redeploy {
            let rolling_back = deployment.state == DeploymentState::RollingBack;
            crate::config::mark(&mut services, &deployment.version, plan, rolling_back);
        }
        let verdict = match rollout::reconcile(&target, &services, pace, now) {
            Verdict::Progress(actions) => match self
                .act(app, manifest, env, Some(deployment.id), actions, now)
                .await
            {
                Ok(()) => return Ok(()),
                Err(reason) => Verdict::Failed(reason),
            },
            other => other,
        };
        if verdict == Verdict::Converged && !self.routed_only_to(&app.name, env, &target, &services)
        {
            // Converged replicas are not enough: the proxy must have acknowledged a table
            // that sends everything to them before the deployment can claim success.
            return Ok(());
        }
        // hooks: post_deploy smoke tests before `succeeded`; a failure rolls back.
        let verdict = if verdict == Verdict::Converged {
            match self
                .post_deploy_verdict(app, manifest, env, &deployment)
                .await?
            {
                Some(verdict) => verdict,
                None => return Ok(()),
            }
        } else {
            verdict
        };
        // bake: a converged version is watched for `bake` before it succeeds.
        let baking = Phase::of(&deployment.phase).bake_until_ms.is_some();
        if verdict == Verdict::Converged
            && deployment.state == DeploymentState::Progressing
            && !self.baked(&deployment, manifest, env, now).await?
        {
            return Ok(());
        }
        if let Some((state, reason)) = rollout::next_state(
            deployment.state,
            &verdict,
            deployment.previous_version.is_some(),
        ) {
            let current = match state {
                DeploymentState::Succeeded => Some(deployment.version.clone()),
                DeploymentState::RolledBack => deployment.previous_version.clone(),
                _ => None,
            };
            let message = match state {
                DeploymentState::RollingBack if baking => format!(
                    "rolling back to {} during the bake: {reason}",
                    target_or(&deployment.previous_version)
                ),
                DeploymentState::RollingBack => format!(
                    "rolling back to {}: {reason}",
                    target_or(&deployment.previous_version)
                ),
                _ => reason.clone(),
            };
            let keep_reason = matches!(
                state,
                DeploymentState::RollingBack | DeploymentState::Failed
            );
            let reason = if keep_reason {
                Some(reason)
            } else {
                deployment.reason.clone()
            };
            // hooks: say so when this goes back past an irreversible migration.
            if state == DeploymentState::RollingBack {
                self.warn_if_irreversible(&deployment).await?;
            }
            let aborted_by = Phase::of(&deployment.phase).aborted_by;
            let (state, message) = match (state, aborted_by) {
                (DeploymentState::RolledBack, Some(by)) => (
                    DeploymentState::Aborted,
                    format!("aborted by {by}; previous version restored"),
                ),
                // config: a failed redeploy keeps the replicas that run the old configuration.
                (DeploymentState::RolledBack, None) if redeploy.is_some() => (
                    DeploymentState::RolledBack,
                    "previous configuration kept: its replicas serve all traffic".to_string(),
                ),
                (state, _) => (state, message),
            };
            self.transition(&deployment, state, reason, current, &message)
                .await?;
        }
        Ok(())
    }

    /// One pass of a canary or blue/green rollout: observe, measure what is due, advance
    /// the pure machine, persist its progress, then move replicas to match it.
    #[allow(clippy::too_many_arguments)]
    async fn drive_progressive(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: &DeploymentRecord,
        plan: &Plan,
        services: &[ServiceInput],
        now: i64,
    ) -> Result<(), ServerError> {
        let canary = deployment.version.as_str();
        let stable = target_or(&deployment.previous_version).to_string();
        let mut phase = Phase::of(&deployment.phase);
        if deployment.state == DeploymentState::RollingBack {
            // All traffic is on the stable version already (routes use weight 0 here):
            // restore its replicas, stop the new ones.
            let mut converged = true;
            for service in services {
                let want = vec![(stable.clone(), service.desired)];
                let (actions, done) = rollout::reconcile_sets(service, &want);
                converged &= done;
                if let Err(reason) = self
                    .act(app, manifest, env, Some(deployment.id), actions, now)
                    .await
                {
                    tracing::error!(deployment = deployment.id, "{reason}");
                }
            }
            if converged && self.routed_only_to(&app.name, env, &stable, services) {
                self.meter.forget(deployment.id);
                let (state, message) = match &phase.aborted_by {
                    Some(by) => (
                        DeploymentState::Aborted,
                        format!("aborted by {by}; {stable} serves all traffic"),
                    ),
                    None => (
                        DeploymentState::RolledBack,
                        format!("{stable} restored and serving all traffic"),
                    ),
                };
                self.transition(
                    deployment,
                    state,
                    deployment.reason.clone(),
                    Some(stable),
                    &message,
                )
                .await?;
            }
            return Ok(());
        }

        let progress = phase
            .progress
            .clone()
            .unwrap_or_else(|| progressive::start(now));
        let canary_failure = services
            .iter()
            .find_map(|s| rollout::failure(canary, s, now));
        let canary_ready = canary_readiness(services, canary, progress.canary_replicas);
        let stable_running = count_live(services, |r| r.version != canary);

        let listener = format!("{}/{env}", app.name);
        let subject = Subject {
            app: &app.name,
            env,
            listener: &listener,
            canary,
            stable: &stable,
            base_dir: app.base_dir.as_ref().map(PathBuf::from),
            run_as: self
                .workloads
                .run_as(manifest, env)
                .map_err(|e| e.to_string()),
        };
        let stage_key = (deployment.id, progress.stage as u64);
        let background_key = (deployment.id, u64::MAX);
        let (stage_spec, background_spec) = progressive::wants(plan, &progress, now);
        let analysing = progress.stage_run.is_some() || progress.background_run.is_some();
        let stats = if analysing {
            self.proxy.stats().await.ok()
        } else {
            None
        };
        let mut stage_measurements = None;
        let mut background_measurements = None;
        if let Some(stats) = &stats {
            if let Some(run) = &progress.stage_run {
                self.meter.open(stage_key, run, stats, &subject);
            }
            if let Some(run) = &progress.background_run {
                self.meter.open(background_key, run, stats, &subject);
            }
            if let Some(spec) = stage_spec {
                stage_measurements = self.meter.measure(stage_key, spec, stats, &subject).await;
            }
            if let Some(spec) = background_spec {
                background_measurements = self
                    .meter
                    .measure(background_key, spec, stats, &subject)
                    .await;
            }
        }
        let command = phase.command.take();
        let observed = progressive::Observation {
            canary_ready,
            stable_running,
            canary_failure,
            stage_measurements,
            background_measurements,
        };
        let (next, outcome) = progressive::advance(
            plan,
            &progress,
            &observed,
            command.as_ref().map(|c| c.name.command()),
            now,
        );
        let changed = phase.progress.as_ref() != Some(&next) || command.is_some();
        // hooks: post_deploy smoke tests through the preview route before traffic first moves.
        if next.weight_bp > 0 && progress.weight_bp == 0 && !matches!(outcome, Outcome::Failed(_)) {
            match self
                .progressive_post_deploy(app, manifest, env, deployment)
                .await?
            {
                crate::hooks::PhaseStatus::Done => {}
                crate::hooks::PhaseStatus::Waiting => {
                    // Hold the weight at 0; keep the new replicas the step wants running.
                    for service in services {
                        let want = vec![
                            (
                                canary.to_string(),
                                next.canary_replicas.min(service.desired),
                            ),
                            (stable.clone(), service.desired),
                        ];
                        let (actions, _) = rollout::reconcile_sets(service, &want);
                        if let Err(reason) = self
                            .act(app, manifest, env, Some(deployment.id), actions, now)
                            .await
                        {
                            tracing::error!(deployment = deployment.id, "{reason}");
                        }
                    }
                    return Ok(());
                }
                crate::hooks::PhaseStatus::Failed(reason) => {
                    return self.roll_back(deployment, &phase, &stable, &reason).await;
                }
            }
        }
        phase.progress = Some(next.clone());

        match outcome {
            Outcome::Failed(reason) => {
                return self.roll_back(deployment, &phase, &stable, &reason).await;
            }
            Outcome::Completed => {
                // `retired` only once the old processes are gone (drained, then stopped).
                let old_gone = services
                    .iter()
                    .all(|s| s.replicas.iter().all(|r| r.version == canary));
                if old_gone && self.routed_only_to(&app.name, env, canary, services) {
                    // bake: keep watching (crash loops, health, the background analysis).
                    if !self.baked(deployment, manifest, env, now).await? {
                        if let Some(measured) = &observed.background_measurements {
                            let mut fresh = Phase::of(&deployment.phase);
                            fresh.progress = Some(next.clone());
                            let lines: Vec<String> = measured
                                .iter()
                                .map(|m| {
                                    format!(
                                        "baking: background analysis: {}",
                                        progressive::describe(m)
                                    )
                                })
                                .collect();
                            self.transition_with_phase(
                                deployment,
                                DeploymentState::Progressing,
                                None,
                                None,
                                fresh.to_value(),
                                &lines.join("; "),
                            )
                            .await?;
                        }
                        return Ok(());
                    }
                    self.meter.forget(deployment.id);
                    // A rollout that went on without its background verdict says so, on
                    // the timeline and (as the reason) in the change record.
                    let mut message = format!("{canary} serves all traffic; {stable} retired");
                    if let Some(why) = &next.unjudged {
                        message.push_str(&format!("; {why}"));
                    }
                    self.transition_with_phase(
                        deployment,
                        DeploymentState::Succeeded,
                        next.unjudged.clone(),
                        Some(canary.to_string()),
                        phase.to_value(),
                        &message,
                    )
                    .await?;
                    return Ok(());
                }
            }
            Outcome::Continue(notes) => {
                if changed {
                    let mut message = notes.join("; ");
                    if let Some(command) = &command {
                        let done = format!("{} by {}", command.name.verb(), command.by);
                        message = if message.is_empty() {
                            done
                        } else {
                            format!("{done}: {message}")
                        };
                    }
                    if message.is_empty() {
                        message = progressive::summary(plan, &next);
                    }
                    let saved = self
                        .transition_with_phase(
                            deployment,
                            DeploymentState::Progressing,
                            None,
                            None,
                            phase.to_value(),
                            &message,
                        )
                        .await?;
                    if !saved {
                        return Ok(());
                    }
                }
            }
        }
        // Persisted: now move replicas to match the progress.
        for service in services {
            let want = if next.retiring_stable {
                vec![(canary.to_string(), service.desired)]
            } else {
                vec![
                    (
                        canary.to_string(),
                        next.canary_replicas.min(service.desired),
                    ),
                    (stable.clone(), service.desired),
                ]
            };
            let (actions, _) = rollout::reconcile_sets(service, &want);
            if let Err(reason) = self
                .act(app, manifest, env, Some(deployment.id), actions, now)
                .await
            {
                return self.roll_back(deployment, &phase, &stable, &reason).await;
            }
        }
        Ok(())
    }

    /// bake: whether a deployment that would succeed now has been watched long enough. The
    /// first time, records when the bake ends (on the deployment's phase, so a restarted
    /// server keeps the same end) and says so on the timeline; at the end, says "baked".
    /// Until then the caller keeps watching: crash loops, failing health and (canary) the
    /// background analysis roll back as during the rollout.
    async fn baked(
        &self,
        deployment: &DeploymentRecord,
        manifest: &Manifest,
        env: &str,
        now: i64,
    ) -> Result<bool, ServerError> {
        let Some(bake) = manifest.environments.get(env).and_then(|e| e.bake) else {
            return Ok(true);
        };
        let bake_ms = millis(bake.get());
        let mut phase = Phase::of(&deployment.phase);
        match phase.bake_until_ms {
            None => {
                let until = now.saturating_add(bake_ms);
                phase.bake_until_ms = Some(until);
                let message = format!(
                    "{} converged; baking until {} ({bake}): rolls back on crash loops, failing \
                     health or a failing analysis",
                    deployment.version,
                    crate::progressive::clock(until)
                );
                self.transition_with_phase(
                    deployment,
                    DeploymentState::Progressing,
                    None,
                    None,
                    phase.to_value(),
                    &message,
                )
                .await?;
                Ok(false)
            }
            Some(until) if now < until => Ok(false),
            Some(_) => {
                self.event(
                    deployment.id,
                    "bake",
                    &format!(
                        "baked: {} watched for {bake} without a failure",
                        deployment.version
                    ),
                )
                .await;
                Ok(true)
            }
        }
    }

    /// Sends a progressive rollout back to `stable`: the next route table gives it 100 %.
    async fn roll_back(
        &self,
        deployment: &DeploymentRecord,
        phase: &Phase,
        stable: &str,
        reason: &str,
    ) -> Result<(), ServerError> {
        // hooks: never roll back past an irreversible migration automatically.
        if self
            .fail_forward_if_irreversible(deployment, reason)
            .await?
        {
            return Ok(());
        }
        self.transition_with_phase(
            deployment,
            DeploymentState::RollingBack,
            Some(reason.to_string()),
            None,
            phase.to_value(),
            &format!("all traffic back to {stable} now: {reason}"),
        )
        .await
        .map(|_| ())
    }

    /// Whether a deployment may start: its environment's approval rules hold (rollbacks
    /// to a known-good version skip them). Moves it to `awaiting-approval` or `blocked` (saying who must
    /// approve) or `rejected`; `true` when it may go on.
    async fn gates_pass(
        &self,
        deployment: &DeploymentRecord,
        manifest: &Manifest,
        env: &str,
    ) -> Result<bool, ServerError> {
        let Some(env_gates) = manifest.environments.get(env).and_then(|e| e.gates.clone()) else {
            return Ok(true);
        };
        if deployment.kind == "rollback" {
            return Ok(true);
        }
        let history = self.gate_history(deployment, &env_gates).await?;
        let approvals = self.store.approvals(deployment.id).await?;
        let now = now_ms();
        let facts = crate::gates::facts(&self.store, deployment.id).await?;
        self.gate_checks
            .start_due(
                &self.store,
                &self.secrets,
                &self.workloads,
                manifest,
                deployment,
                &env_gates,
                &facts.checks,
                now,
            )
            .await;
        let report = gates::report(
            &env_gates,
            &history,
            &approvals,
            &deployment.requested_by,
            &facts,
            now,
        );
        match report.verdict() {
            gates::GatesVerdict::Passed => {
                self.unmet_gates_changed(deployment.id, None);
                // History shows every gate and who or what passed it.
                for line in report.passed_lines() {
                    self.event(deployment.id, "gate", &line).await;
                }
                if !report.rows.is_empty() {
                    self.store
                        .record_passed_gates(deployment.id, &report.rows, now)
                        .await?;
                }
                Ok(true)
            }
            gates::GatesVerdict::Waiting(unmet) => {
                let message = gates::waiting_message(&unmet);
                // `awaiting-approval` when only approvals are missing, else `blocked`.
                let waiting = gates::waiting_state(&unmet);
                if deployment.state != waiting {
                    self.transition(deployment, waiting, None, None, &message)
                        .await?;
                    self.unmet_gates_changed(deployment.id, Some(&unmet));
                } else if self.unmet_gates_changed(deployment.id, Some(&unmet)) {
                    // Already waiting: a new timeline line only when what is awaited
                    // changes (not for every tick of a soak countdown).
                    self.event(deployment.id, "gates", &message).await;
                }
                Ok(false)
            }
            gates::GatesVerdict::Rejected { by, reason } => {
                self.unmet_gates_changed(deployment.id, None);
                let reason = format!("rejected by {by}: {reason}");
                self.transition(
                    deployment,
                    DeploymentState::Rejected,
                    Some(reason.clone()),
                    None,
                    &reason,
                )
                .await?;
                Ok(false)
            }
        }
    }

    /// What the `after` and `soak` gates need to know: the latest successful deployment of
    /// this version in the `after` environment, and whether that environment still runs it.
    async fn gate_history(
        &self,
        deployment: &DeploymentRecord,
        env_gates: &ferry_core::manifest::Gates,
    ) -> Result<gates::History, ServerError> {
        Ok(crate::gates::history(&self.store, deployment, env_gates).await?)
    }

    /// Whether the unmet gates of a waiting deployment differ from the last time they were
    /// seen (compared by their stable keys, so a soak countdown is not a change); `None`
    /// forgets the deployment. In memory: after a restart the list is recorded once more.
    fn unmet_gates_changed(&self, deployment_id: i64, unmet: Option<&[gates::Unmet]>) -> bool {
        let mut seen = lock(&self.unmet_gates);
        match unmet {
            None => seen.remove(&deployment_id).is_some(),
            Some(unmet) => {
                let keys: Vec<String> = unmet.iter().map(|u| u.key.clone()).collect();
                seen.insert(deployment_id, keys.clone()) != Some(keys)
            }
        }
    }

    /// Records a line on a deployment's timeline from outside the loop (an approval), and
    /// lets the loop look again.
    pub async fn note(&self, deployment_id: i64, kind: &str, message: &str) {
        self.event(deployment_id, kind, message).await;
        self.wake.notify_one();
    }

    /// Keeps an idle environment at its current version: replaces lost replicas, removes
    /// anything else (e.g. the remains of a failed first deployment).
    async fn maintain(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        services: &[ServiceInput],
        now: i64,
    ) -> Result<(), ServerError> {
        let current = self
            .store
            .env_current(&app.name, env)
            .await?
            .and_then(|e| e.current_version);
        match current {
            Some(version) => {
                if let Verdict::Progress(actions) =
                    rollout::reconcile(&version, services, restore_pace(manifest, env), now)
                    && let Err(reason) = self.act(app, manifest, env, None, actions, now).await
                {
                    tracing::error!(app = %app.name, env, "{reason}");
                }
            }
            None => {
                let leftovers: Vec<String> = services
                    .iter()
                    .flat_map(|s| s.replicas.iter())
                    .filter(|r| !r.draining)
                    .map(|r| r.id.clone())
                    .collect();
                for id in leftovers {
                    self.store.set_replica_draining(&id, now).await?;
                }
            }
        }
        Ok(())
    }

    fn observe(
        &self,
        manifest: &Manifest,
        env: &str,
        replicas: &[&ReplicaRecord],
    ) -> Vec<ServiceInput> {
        manifest
            .services
            .iter()
            .map(|(name, service)| ServiceInput {
                service: name.clone(),
                desired: manifest.replicas(name, env),
                replicas: replicas
                    .iter()
                    .filter(|r| &r.service == name)
                    .map(|r| self.observed(r))
                    .collect(),
                patience: Patience {
                    start_timeout_ms: millis(service.health.start_timeout.get()),
                    max_start_exits: MAX_START_EXITS,
                },
            })
            .collect()
    }

    fn observed(&self, record: &ReplicaRecord) -> Observed {
        let status = self.runtime.status(&record.id);
        Observed {
            id: record.id.clone(),
            version: record.version.clone(),
            state: status
                .as_ref()
                .map(|s| s.state)
                .unwrap_or(ReplicaState::Exited),
            started_at_ms: record.created_at_ms,
            restarts: status.as_ref().map(|s| s.restarts).unwrap_or(0),
            ever_healthy: status.as_ref().is_some_and(|s| s.ever_healthy),
            draining: record.draining,
            last_exit: status.and_then(|s| s.last_exit),
        }
    }

    /// Carries out the core's actions. Err: the new version can't even be started.
    async fn act(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: Option<i64>,
        actions: Vec<Action>,
        now: i64,
    ) -> Result<(), String> {
        for action in actions {
            match action {
                Action::Start {
                    service,
                    version,
                    count,
                } => {
                    for _ in 0..count {
                        self.start_replica(app, manifest, env, &service, &version, deployment, now)
                            .await?;
                    }
                }
                Action::Drain { service, ids } => {
                    for id in ids {
                        self.store
                            .set_replica_draining(&id, now)
                            .await
                            .map_err(|e| e.to_string())?;
                        if let Some(deployment) = deployment {
                            self.event(
                                deployment,
                                "replica",
                                &format!("{service} {}: draining", short_id(&id)),
                            )
                            .await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_replica(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        service: &str,
        version: &str,
        deployment: Option<i64>,
        now: i64,
    ) -> Result<(), String> {
        let port =
            ferry_runtime::free_port().map_err(|e| format!("no free port for {service}: {e}"))?;
        let record = ReplicaRecord {
            id: replica_id(&app.name, env, service, version),
            app: app.name.clone(),
            env: env.to_string(),
            service: service.to_string(),
            version: version.to_string(),
            port,
            pid: None,
            start_time: None,
            draining: false,
            deployment_id: deployment,
            created_at_ms: now,
        };
        let secrets = self
            .secrets
            .env_vars(&app.name, env)
            .await
            .map_err(|e| format!("cannot start {service}: {e}"))?;
        let commit = self.release_commit(&app.name, version).await;
        // A service new since that revision has no older configuration: the latest it is.
        let pinned = self.spec_manifest(app, env, deployment).await;
        let manifest = pinned
            .as_deref()
            .filter(|pinned| pinned.services.contains_key(service))
            .unwrap_or(manifest);
        let run_as = self
            .workloads
            .run_as(manifest, env)
            .map_err(|e| format!("cannot start {service}: {e}"))?;
        let spec = replica_spec(app, manifest, &record, secrets, commit.as_deref(), run_as)
            .ok_or_else(|| format!("service {service} is not in the manifest"))?;
        // Persist, then act: the row exists before the process does.
        self.store
            .insert_replica(&record)
            .await
            .map_err(|e| e.to_string())?;
        crate::config::record(&self.store, app, manifest, &record).await;
        if let Some(deployment) = deployment {
            self.event(
                deployment,
                "replica",
                &format!(
                    "{service} {version} {}: starting on 127.0.0.1:{port}",
                    short_id(&record.id)
                ),
            )
            .await;
        }
        match self.runtime.start(spec).await {
            Ok(instance) => {
                if let Some(identity) = instance.process() {
                    self.store
                        .set_replica_process(&record.id, identity.pid, identity.start_time)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.store.delete_replica(&record.id).await;
                Err(format!("{service} {version}: could not start: {e}"))
            }
        }
    }

    /// The manifest a replica of `env` runs with, when it is not the latest: the revision of
    /// the deployment that starts it (`deployment_id`), else of the deployment that made the
    /// environment's current version. So `ferry apply` alone never changes what runs, not
    /// even for a replica replaced after a crash or re-adopted after a restart; the next
    /// deployment brings the change. `None`: the latest manifest.
    async fn spec_manifest(
        &self,
        app: &AppRecord,
        env: &str,
        deployment_id: Option<i64>,
    ) -> Option<Arc<Manifest>> {
        let deployment_id = match deployment_id {
            Some(id) => id,
            None => {
                self.store
                    .env_current(&app.name, env)
                    .await
                    .ok()
                    .flatten()?
                    .deployment_id?
            }
        };
        let deployment = self.store.get_deployment(deployment_id).await.ok()??;
        self.manifest_at(app, deployment.manifest_revision).await
    }

    /// The app's manifest at `revision` when that is not its latest (revisions are
    /// immutable: cached). `None`: the latest is it, or that revision can't be read.
    async fn manifest_at(&self, app: &AppRecord, revision: i64) -> Option<Arc<Manifest>> {
        if revision == app.revision {
            return None;
        }
        let key = (app.name.clone(), revision);
        if let Some(manifest) = lock(&self.pinned).get(&key) {
            return Some(manifest.clone());
        }
        let pinned = match self.store.get_app_at(&app.name, revision).await {
            Ok(Some(record)) => serde_json::from_str::<Manifest>(&record.manifest_json).ok(),
            _ => None,
        };
        let Some(manifest) = pinned else {
            tracing::warn!(app = %app.name, revision, "manifest revision unreadable; using the latest");
            return None;
        };
        let manifest = Arc::new(manifest);
        lock(&self.pinned).insert(key, manifest.clone());
        Some(manifest)
    }

    async fn transition(
        &self,
        deployment: &DeploymentRecord,
        state: DeploymentState,
        reason: Option<String>,
        set_current_version: Option<String>,
        message: &str,
    ) -> Result<(), ServerError> {
        self.transition_with_phase(
            deployment,
            state,
            reason,
            set_current_version,
            deployment.phase.clone(),
            message,
        )
        .await
        .map(|_| ())
    }

    /// A compare-and-set transition that also replaces the phase. `Ok(false)`: someone else
    /// changed the deployment first (it is re-read on the next pass).
    async fn transition_with_phase(
        &self,
        deployment: &DeploymentRecord,
        state: DeploymentState,
        reason: Option<String>,
        set_current_version: Option<String>,
        phase: serde_json::Value,
        message: &str,
    ) -> Result<bool, ServerError> {
        // What clients saw during the rollout goes on the timeline when it ends (and
        // becomes the reason of a deployment that succeeded although clients saw errors).
        let mut reason = reason;
        if state.is_terminal() && !deployment.state.is_terminal() {
            if let Some(seen) = self.rollout_traffic(deployment).await {
                self.event(deployment.id, "traffic", &seen.to_string())
                    .await;
                if seen.errors() > 0 && reason.is_none() {
                    reason = Some(seen.errors_line());
                }
            }
            lock(&self.traffic_baselines).remove(&deployment.id);
        } else if !state.is_terminal()
            && !lock(&self.traffic_baselines).contains_key(&deployment.id)
            && let Ok(stats) = self.proxy.stats().await
        {
            lock(&self.traffic_baselines).insert(deployment.id, stats);
        }
        let result = self
            .store
            .transition(Transition {
                id: deployment.id,
                expected_row_version: deployment.row_version,
                state,
                reason,
                phase,
                set_current_version,
                event: format!("{state}: {message}"),
                now_ms: now_ms(),
            })
            .await;
        match result {
            Ok(_) => {
                tracing::info!(deployment = deployment.id, app = %deployment.app, env = %deployment.env, %state, "{message}");
                if state != deployment.state {
                    self.notify(deployment, state, message).await;
                }
                self.events_changed.send_modify(|n| *n += 1);
                self.wake.notify_one();
                Ok(true)
            }
            // Someone else (a newer request) moved it first: re-read on the next pass.
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Requests and errors the proxy answered per version of the deployment's environment
    /// since the deployment started (or since this server or the proxy did).
    async fn rollout_traffic(&self, deployment: &DeploymentRecord) -> Option<RolloutTraffic> {
        let after = self.proxy.stats().await.ok()?;
        let before = lock(&self.traffic_baselines).get(&deployment.id).cloned();
        Some(RolloutTraffic::between(
            before.as_ref(),
            &after,
            &format!("{}/{}", deployment.app, deployment.env),
        ))
    }

    /// Tells the app's webhooks that a deployment changed state.
    async fn notify(&self, deployment: &DeploymentRecord, state: DeploymentState, message: &str) {
        let Ok(Some(app)) = self.store.get_app(&deployment.app).await else {
            return;
        };
        let Ok(manifest) = serde_json::from_str::<Manifest>(&app.manifest_json) else {
            return;
        };
        if manifest.notifications.is_empty() {
            return;
        }
        let change = crate::notify::StateChange {
            app: deployment.app.clone(),
            env: deployment.env.clone(),
            deployment_id: deployment.id,
            version: deployment.version.clone(),
            previous_version: deployment.previous_version.clone(),
            state: state.to_string(),
            previous_state: deployment.state.to_string(),
            message: message.to_string(),
            at_ms: now_ms(),
        };
        crate::notify::send(&self.http, &manifest.notifications, change);
    }

    /// Whether the proxy's acknowledged table sends every route of app/env to exactly the
    /// desired replicas of `version` and nothing else.
    fn routed_only_to(
        &self,
        app: &str,
        env: &str,
        version: &str,
        services: &[ServiceInput],
    ) -> bool {
        let Some(table) = self.proxy.acknowledged() else {
            return false;
        };
        let id = format!("{app}/{env}");
        let Some(listener) = table.listeners.iter().find(|l| l.id == id) else {
            return false;
        };
        services.iter().all(|service| {
            listener.routes.iter().any(|route| {
                route.service == service.service
                    && matches!(route.backends.as_slice(), [group]
                        if group.version == version
                            && group.weight == 10_000
                            && group.endpoints.len() == service.desired as usize)
            })
        })
    }

    async fn push_routes(
        &self,
        apps: &BTreeMap<String, (AppRecord, Manifest)>,
    ) -> Result<(), ServerError> {
        let replicas = self.store.list_replicas(None, None).await?;
        let active: HashMap<(String, String), DeploymentRecord> = self
            .store
            .active_deployments()
            .await?
            .into_iter()
            .map(|d| ((d.app.clone(), d.env.clone()), d))
            .collect();
        let mut listeners = Vec::new();
        let mut summaries: Vec<(String, String, String)> = Vec::new();
        for (app, manifest) in apps.values() {
            for (env_name, env) in manifest.environments.iter() {
                let Ok(listen) = env.listen.parse::<SocketAddr>() else {
                    continue;
                };
                let mut routes = Vec::new();
                let mut preview_routes = Vec::new();
                let mut summary = Vec::new();
                // A progressive rollout splits by its weight; anything else by replica count.
                let weighting = active
                    .get(&(app.name.clone(), env_name.to_string()))
                    .and_then(|d| {
                        plan_of(d, &env.strategy, manifest, env_name)?;
                        let stable = d.previous_version.clone()?;
                        let bp = match d.state {
                            DeploymentState::Progressing => Phase::of(&d.phase)
                                .progress
                                .map(|p| p.weight_bp)
                                .unwrap_or(0),
                            _ => 0,
                        };
                        Some((stable, d.version.clone(), bp))
                    });
                let preview_token = match (&weighting, preview_secret(&env.strategy)) {
                    (Some(_), Some(name)) => self.preview_token(&app.name, env_name, name).await,
                    _ => None,
                };
                for (service_name, service) in &manifest.services {
                    let observed: Vec<Observed> = replicas
                        .iter()
                        .filter(|r| {
                            r.app == app.name && r.env == env_name && &r.service == service_name
                        })
                        .map(|r| self.observed(r))
                        .collect();
                    let ports: HashMap<&str, u16> =
                        replicas.iter().map(|r| (r.id.as_str(), r.port)).collect();
                    let shares = match &weighting {
                        Some((stable, canary, bp)) => {
                            rollout::weighted_traffic(&observed, stable, canary, *bp)
                        }
                        None => rollout::traffic(&observed),
                    };
                    let backends: Vec<BackendGroup> = shares
                        .into_iter()
                        .map(|share| {
                            summary.push(format!(
                                "{service_name} {} {}% ({} replica{})",
                                share.version,
                                share.weight as f64 / 100.0,
                                share.replica_ids.len(),
                                if share.replica_ids.len() == 1 {
                                    ""
                                } else {
                                    "s"
                                }
                            ));
                            BackendGroup {
                                version: share.version,
                                weight: share.weight,
                                endpoints: share
                                    .replica_ids
                                    .iter()
                                    .filter_map(|id| ports.get(id.as_str()))
                                    .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)))
                                    .collect(),
                            }
                        })
                        .collect();
                    let (preview, sticky) = match &weighting {
                        Some((_, canary, _)) if backends.iter().any(|g| &g.version == canary) => (
                            Some(PreviewRule {
                                header: preview_header(&env.strategy),
                                version: canary.clone(),
                                token_sha256: preview_token.clone(),
                            }),
                            sticky_rule(&env.strategy),
                        ),
                        _ => (None, None),
                    };
                    // Blue/green's preview listener serves the new version only.
                    let preview_backends: Vec<BackendGroup> = match &weighting {
                        Some((_, canary, _)) => backends
                            .iter()
                            .filter(|g| &g.version == canary && !g.endpoints.is_empty())
                            .map(|g| BackendGroup {
                                weight: 10_000,
                                ..g.clone()
                            })
                            .collect(),
                        None => backends.clone(),
                    };
                    preview_routes.push(Route {
                        service: service_name.clone(),
                        path_prefix: service.route.clone(),
                        backends: preview_backends,
                        preview: None,
                        sticky: None,
                    });
                    routes.push(Route {
                        service: service_name.clone(),
                        path_prefix: service.route.clone(),
                        backends,
                        preview,
                        sticky,
                    });
                }
                let mut site =
                    ListenerConfig::new(format!("{}/{env_name}", app.name), listen, routes);
                site.hosts = env.hosts.clone();
                site.tls = env.tls.as_ref().map(|t| TlsFiles {
                    cert: t.cert.clone().into(),
                    key: t.key.clone().into(),
                    hsts_max_age_secs: t.hsts.map(|d| d.get().as_secs()),
                });
                listeners.push(site);
                // The plain-HTTP twin that sends the environment's hosts to HTTPS.
                if let Some(redirect) = env.tls.as_ref().and_then(|t| t.redirect_http.as_ref())
                    && let Ok(addr) = redirect.parse::<SocketAddr>()
                {
                    let mut r = ListenerConfig::new(
                        format!("{}/{env_name}/redirect", app.name),
                        addr,
                        vec![],
                    );
                    r.hosts = env.hosts.clone();
                    r.redirect_https = Some(listen.port());
                    listeners.push(r);
                }
                if let Strategy::BlueGreen(BlueGreen {
                    preview_listen: Some(preview),
                    ..
                }) = &env.strategy
                    && let Ok(listen) = preview.parse::<SocketAddr>()
                {
                    listeners.push(ListenerConfig::new(
                        format!("{}/{env_name}/preview", app.name),
                        listen,
                        preview_routes,
                    ));
                }
                let summary = if summary.is_empty() {
                    "no ready replicas".to_string()
                } else {
                    summary.join(", ")
                };
                summaries.push((app.name.clone(), env_name.to_string(), summary));
            }
        }
        let previous = lock(&self.traffic_summary).clone();
        if self
            .proxy
            .push(RouteTable {
                generation: 0,
                listeners,
            })
            .await?
        {
            // Decisions wait on the acknowledged table: take the next pass right away.
            self.wake.notify_one();
            for (app, env, summary) in summaries {
                if previous.get(&(app.clone(), env.clone())) == Some(&summary) {
                    continue;
                }
                if let Ok(Some(active)) = self.active_deployment(&app, &env).await {
                    self.event(active.id, "traffic", &summary).await;
                }
                lock(&self.traffic_summary).insert((app, env), summary);
            }
        }
        Ok(())
    }

    /// Stops replicas marked draining, once the proxy confirms no request can reach them
    /// any more (or their service's `drain_timeout` has passed).
    async fn stop_drained(
        self: &Arc<Self>,
        apps: &BTreeMap<String, (AppRecord, Manifest)>,
    ) -> Result<(), ServerError> {
        for record in self
            .store
            .list_replicas(None, None)
            .await?
            .into_iter()
            .filter(|r| r.draining)
        {
            if !lock(&self.stopping).insert(record.id.clone()) {
                continue;
            }
            let drain_timeout = apps
                .get(&record.app)
                .and_then(|(_, m)| m.services.get(&record.service))
                .map(|s| s.drain_timeout.get())
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let drained = this.wait_for_drain(record.port, drain_timeout).await;
                this.replica_event(&record.id, &drained.to_string()).await;
                let stopped = match this.runtime.status(&record.id) {
                    Some(_) => this
                        .runtime
                        .stop(&record.id)
                        .await
                        .map_err(|e| e.to_string()),
                    None => {
                        let identity = record
                            .pid
                            .zip(record.start_time)
                            .map(|(pid, start_time)| ProcessIdentity { pid, start_time });
                        this.runtime.discard(&record.id, identity).await;
                        Ok(())
                    }
                };
                match stopped {
                    Ok(()) => {
                        // Said here, while the row still names the replica (the runtime's
                        // own `Stopped` event may arrive after the row is gone).
                        this.replica_event(&record.id, "stopped").await;
                        if let Err(e) = this.store.delete_replica(&record.id).await {
                            tracing::error!(replica = %record.id, error = %e, "could not forget a stopped replica");
                        }
                    }
                    Err(e) => {
                        tracing::error!(replica = %record.id, error = %e, "could not stop replica")
                    }
                }
                this.wake.notify_one();
            });
        }
        // Forget ids whose rows are gone so the set doesn't grow forever.
        let live: HashSet<String> = self
            .store
            .list_replicas(None, None)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect();
        lock(&self.stopping).retain(|id| live.contains(id));
        Ok(())
    }

    /// Waits until the proxy confirms that no request can reach `port` any more: it is in
    /// no route table a request holds and nothing is in flight to it. Bounded by `limit`;
    /// while the proxy does not answer, the wait goes on (a restarted proxy may still
    /// route to it from its saved table).
    async fn wait_for_drain(&self, port: u16, limit: Duration) -> Drained {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = tokio::time::Instant::now();
        let mut last = Err("no answer yet".to_string());
        while started.elapsed() < limit {
            last = self
                .proxy
                .endpoint_usage(addr)
                .await
                .map_err(|e| e.to_string());
            if let Ok(usage) = &last
                && usage.drained()
            {
                return Drained::Confirmed(started.elapsed());
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        Drained::TimedOut { limit, last }
    }
}

/// What the proxy answered per version of one environment during a rollout.
#[derive(Debug, Clone, PartialEq, Default)]
struct RolloutTraffic {
    /// (service, version, requests, 5xx) with any request, in name order.
    versions: Vec<(String, String, u64, u64)>,
    /// The proxy restarted during the rollout: counted since then.
    since_proxy_start: bool,
}

impl RolloutTraffic {
    /// Differences of the counters of listeners `listener` and `listener/…` between two
    /// snapshots (`before` missing, or of an older proxy process: counted from zero).
    fn between(
        before: Option<&ferry_proxy::stats::StatsSnapshot>,
        after: &ferry_proxy::stats::StatsSnapshot,
        listener: &str,
    ) -> RolloutTraffic {
        let before = before.filter(|b| b.started_at_ms == after.started_at_ms);
        let ours = |l: &str| {
            l == listener
                || l.strip_prefix(listener)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let mut sums: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for v in after.versions.iter().filter(|v| ours(&v.listener)) {
            let (r0, e0) = before
                .and_then(|b| {
                    b.versions.iter().find(|o| {
                        o.listener == v.listener && o.service == v.service && o.version == v.version
                    })
                })
                .map(|o| (o.requests, o.errors_5xx))
                .unwrap_or((0, 0));
            let sum = sums
                .entry((v.service.clone(), v.version.clone()))
                .or_default();
            sum.0 += v.requests.saturating_sub(r0);
            sum.1 += v.errors_5xx.saturating_sub(e0);
        }
        RolloutTraffic {
            versions: sums
                .into_iter()
                .filter(|(_, (requests, _))| *requests > 0)
                .map(|((service, version), (requests, errors))| {
                    (service, version, requests, errors)
                })
                .collect(),
            since_proxy_start: before.is_none(),
        }
    }

    fn errors(&self) -> u64 {
        self.versions.iter().map(|v| v.3).sum()
    }

    /// `clients saw 6 errors (5xx) during the rollout: web 1.1.0 6 of 2100`.
    fn errors_line(&self) -> String {
        let parts: Vec<String> = self
            .versions
            .iter()
            .filter(|v| v.3 > 0)
            .map(|(service, version, requests, errors)| {
                let version = if version.is_empty() {
                    "(no replica)"
                } else {
                    version
                };
                format!("{service} {version} {errors} of {requests}")
            })
            .collect();
        format!(
            "clients saw {} error(s) (5xx, including the proxy's 502/503/504) during the rollout: {}",
            self.errors(),
            parts.join(", ")
        )
    }
}

impl std::fmt::Display for RolloutTraffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = if self.since_proxy_start {
            " (since the proxy or this server started)"
        } else {
            ""
        };
        if self.versions.is_empty() {
            return write!(f, "no requests through the proxy during the rollout{since}");
        }
        let parts: Vec<String> = self
            .versions
            .iter()
            .map(|(service, version, requests, errors)| {
                let version = if version.is_empty() {
                    "(no replica)"
                } else {
                    version
                };
                format!("{service} {version}: {requests} requests, {errors} 5xx")
            })
            .collect();
        write!(f, "during the rollout{since}: {}", parts.join("; "))
    }
}

/// Default `drain_timeout` for a replica whose service left the manifest.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How the drain of a replica ended (a timeline line).
enum Drained {
    Confirmed(Duration),
    TimedOut {
        limit: Duration,
        last: Result<ferry_proxy::stats::EndpointUsage, String>,
    },
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drained::Confirmed(after) => write!(
                f,
                "drained: out of every route table, nothing in flight ({:.1}s); stopping",
                after.as_secs_f64()
            ),
            Drained::TimedOut {
                limit,
                last: Ok(usage),
            } => write!(
                f,
                "drain_timeout ({}) reached with {} request(s) in flight{}; stopping anyway",
                ferry_core::duration::HumanDuration(*limit),
                usage.in_flight,
                if usage.listed > 0 {
                    " and still in a route table"
                } else {
                    ""
                }
            ),
            Drained::TimedOut {
                limit,
                last: Err(e),
            } => write!(
                f,
                "drain_timeout ({}) reached without an answer from the proxy ({e}); stopping anyway",
                ferry_core::duration::HumanDuration(*limit)
            ),
        }
    }
}

// What the API asks of the controller.
impl Controller {
    // releases:
    /// The commit of a release, when it is known (for `FERRY_COMMIT`/`FERRY_RELEASE_TAG`).
    async fn release_commit(&self, app: &str, version: &str) -> Option<String> {
        match self.store.get_release(app, version).await {
            Ok(release) => release.and_then(|r| r.data.commit),
            Err(e) => {
                tracing::error!(app, version, error = %e, "cannot read the release");
                None
            }
        }
    }

    /// An app's stored record and its manifest.
    async fn app_manifest(&self, app: &str) -> Result<(AppRecord, Manifest), RequestError> {
        let record = self.store.get_app(app).await?.ok_or_else(|| {
            RequestError::NotFound(format!("app {app:?} not found; apply its manifest first"))
        })?;
        let manifest = serde_json::from_str(&record.manifest_json).map_err(|e| {
            RequestError::Server(ServerError::Corrupt(format!(
                "stored manifest of {app} is unreadable: {e}"
            )))
        })?;
        Ok((record, manifest))
    }

    /// Records a deployment request; the loop picks it up at once. A deployment still
    /// running in the environment is superseded: the newest request wins.
    pub async fn request_deployment(
        &self,
        app: &str,
        env: &str,
        version: &str,
        kind: &str,
        requested_by: &str,
    ) -> Result<DeploymentView, RequestError> {
        let (record, manifest) = self.app_manifest(app).await?;
        let environment = manifest.environments.get(env).ok_or_else(|| {
            let known: Vec<&str> = manifest.environments.keys().collect();
            RequestError::NotFound(format!(
                "app {app} has no environment {env:?} (it has: {})",
                known.join(", ")
            ))
        })?;
        validate_version(version)?;
        let now = now_ms();
        self.store.ensure_release(app, version, now).await?;
        let previous_version = self
            .store
            .env_current(app, env)
            .await?
            .and_then(|e| e.current_version);
        // config: deploying (or retrying) the version that already serves rolls out its
        // configuration.
        let same = previous_version.as_deref() == Some(version);
        let kind = if same && matches!(kind, "deploy" | "retry") {
            "redeploy"
        } else {
            kind
        };
        for active in self.store.active_deployments().await? {
            if active.app == app && active.env == env {
                self.supersede(&active).await?;
            }
        }
        let deployment = self
            .store
            .create_deployment(NewDeployment {
                app: app.to_string(),
                env: env.to_string(),
                version: version.to_string(),
                previous_version,
                kind: kind.to_string(),
                strategy: environment.strategy.name().to_string(),
                requested_by: requested_by.to_string(),
                manifest_revision: record.revision,
                now_ms: now,
            })
            .await?;
        self.events_changed.send_modify(|n| *n += 1);
        self.wake.notify_one();
        Ok(deployment.view())
    }

    /// config: a deployment of the version serving in `env`, replacing the replicas whose
    /// configuration (variables, secrets, command line) is out of date.
    /// Nothing changed (configuration, replica counts, services): no deployment, and the
    /// answer says so. A deployment of another version that has not ended is superseded
    /// only with `force` (and its timeline says by what).
    pub async fn request_redeploy(
        &self,
        app: &str,
        env: &str,
        requested_by: &str,
        force: bool,
    ) -> Result<RedeployAnswer, RequestError> {
        let (record, manifest) = self.app_manifest(app).await?;
        let current = self
            .store
            .env_current(app, env)
            .await?
            .and_then(|e| e.current_version)
            .ok_or_else(|| {
                RequestError::Conflict(format!(
                    "nothing has been deployed to {app}/{env} yet: use `ferry deploy` first"
                ))
            })?;
        let active = self.active_deployment(app, env).await?;
        if let Some(other) = active.as_ref().filter(|d| d.version != current) {
            if !force {
                return Err(RequestError::Conflict(format!(
                    "deployment #{} of {} is {} in {app}/{env}; a redeploy of {current} would supersede it (its approvals and any freeze override would be lost): wait until it ends, or pass --force",
                    other.id, other.version, other.state
                )));
            }
        } else if active.is_none() {
            let replicas = self.store.list_replicas(Some(app), Some(env)).await?;
            let replicas: Vec<&ReplicaRecord> = replicas.iter().collect();
            let services = self.observe(&manifest, env, &replicas);
            let mut plan =
                crate::config::redeploy_state(&self.store, &record, &manifest, env, &current)
                    .await?;
            plan.scale = ferry_core::apply::scale_changes(&services, &current);
            if plan.is_empty() {
                return Ok(RedeployAnswer::Unchanged(Unchanged {
                    app: app.to_string(),
                    env: env.to_string(),
                    message: format!(
                        "nothing to redeploy: {app}/{env} runs {current} with the current configuration and replica counts; no deployment was created"
                    ),
                    version: current,
                    unchanged: true,
                }));
            }
        }
        let view = self
            .request_deployment(app, env, &current, "redeploy", requested_by)
            .await?;
        if let Some(other) = active.filter(|d| d.version != current) {
            self.event(
                view.id,
                "state",
                &format!(
                    "superseded deployment #{} of {} ({}) on request of {requested_by} (--force)",
                    other.id, other.version, other.state
                ),
            )
            .await;
        }
        Ok(RedeployAnswer::Started(view))
    }

    async fn supersede(&self, active: &DeploymentRecord) -> Result<(), RequestError> {
        self.supersede_because(
            active,
            "superseded by a newer deployment request",
            "superseded: a newer deployment request takes over",
        )
        .await
    }

    /// Ends deployment `id` (if it has not ended) as superseded, saying why: its
    /// environment was removed from the manifest, so it could never finish.
    pub(crate) async fn abandon(&self, id: i64, why: &str) -> Result<(), RequestError> {
        match self.store.get_deployment(id).await? {
            Some(d) if !d.state.is_terminal() => {
                self.supersede_because(&d, why, &format!("superseded: {why}"))
                    .await
            }
            _ => Ok(()),
        }
    }

    async fn supersede_because(
        &self,
        active: &DeploymentRecord,
        reason: &str,
        event: &str,
    ) -> Result<(), RequestError> {
        let mut current = active.clone();
        for _ in 0..5 {
            let result = self
                .store
                .transition(Transition {
                    id: current.id,
                    expected_row_version: current.row_version,
                    state: DeploymentState::Superseded,
                    reason: Some(reason.to_string()),
                    phase: current.phase.clone(),
                    set_current_version: None,
                    event: event.to_string(),
                    now_ms: now_ms(),
                })
                .await;
            match result {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict(_)) => {
                    match self.store.get_deployment(current.id).await? {
                        Some(fresh) if !fresh.state.is_terminal() => current = fresh,
                        _ => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RequestError::Conflict(format!(
            "deployment {} keeps changing; try again",
            active.id
        )))
    }

    /// Rolls back to `to`, or to the last version that succeeded before the current one.
    pub async fn request_rollback(
        &self,
        app: &str,
        env: &str,
        to: Option<String>,
        requested_by: &str,
        force: bool,
    ) -> Result<DeploymentView, RequestError> {
        // Mid-rollout, "roll back" means: back to the version that was serving, now. For
        // blue/green that is the instant switch back to blue, which is still running.
        if let Some(active) = self.active_deployment(app, env).await?
            && active.state == DeploymentState::Progressing
            && active
                .previous_version
                .as_ref()
                .is_some_and(|previous| to.as_deref().is_none_or(|t| t == previous))
        {
            // hooks:
            self.check_rollback_migrations(
                app,
                env,
                Some(&active),
                target_or(&active.previous_version),
                force,
            )
            .await?;
            return self
                .change_in_progress(app, env, |deployment| {
                    let previous = target_or(&deployment.previous_version);
                    let reason = format!("rolled back by {requested_by}");
                    Ok(Change {
                        state: DeploymentState::RollingBack,
                        message: format!("{reason}: all traffic back to {previous}"),
                        reason: Some(reason),
                        phase: deployment.phase.clone(),
                    })
                })
                .await;
        }
        let current = self
            .store
            .env_current(app, env)
            .await?
            .and_then(|e| e.current_version);
        let target = match to {
            Some(version) => {
                if !self.store.version_succeeded_in(app, env, &version).await? {
                    return Err(RequestError::Conflict(format!(
                        "{version} never succeeded in {app}/{env}, so there is nothing to roll back to; deploy it instead"
                    )));
                }
                version
            }
            None => {
                let Some(current) = current.clone() else {
                    return Err(RequestError::Conflict(format!(
                        "{app}/{env} has no current version to roll back from"
                    )));
                };
                self.store
                    .previous_succeeded_version(app, env, &current)
                    .await?
                    .ok_or_else(|| {
                        RequestError::Conflict(format!(
                            "{app}/{env} has no earlier succeeded version than {current}"
                        ))
                    })?
            }
        };
        // hooks:
        self.check_rollback_migrations(app, env, None, &target, force)
            .await?;
        if current.as_deref() == Some(target.as_str())
            && let Some(active) = self.active_deployment(app, env).await?
        {
            // Current already is the target: just stop what's in progress.
            self.supersede(&active).await?;
            self.wake.notify_one();
            return Ok(self
                .store
                .get_deployment(active.id)
                .await?
                .unwrap_or(active)
                .view());
        }
        self.request_deployment(app, env, &target, "rollback", requested_by)
            .await
    }

    /// Applies `change` to the deployment in progress in app/env with compare-and-set,
    /// re-reading and retrying when the controller moved it meanwhile.
    async fn change_in_progress(
        &self,
        app: &str,
        env: &str,
        change: impl Fn(&DeploymentRecord) -> Result<Change, RequestError>,
    ) -> Result<DeploymentView, RequestError> {
        for _ in 0..5 {
            let deployment = self.active_deployment(app, env).await?.ok_or_else(|| {
                RequestError::Conflict(format!("no deployment in progress in {app}/{env}"))
            })?;
            let Change {
                state,
                reason,
                phase,
                message,
            } = change(&deployment)?;
            if self
                .transition_with_phase(&deployment, state, reason, None, phase, &message)
                .await?
            {
                let fresh = self.store.get_deployment(deployment.id).await?;
                return Ok(fresh.unwrap_or(deployment).view());
            }
        }
        Err(RequestError::Conflict(format!(
            "the deployment in {app}/{env} keeps changing; try again"
        )))
    }

    /// Hands a promote/pause/resume to the running canary or blue/green rollout; the loop
    /// applies it on its next pass (within milliseconds).
    pub async fn request_command(
        &self,
        app: &str,
        env: &str,
        name: CommandName,
        by: &str,
    ) -> Result<DeploymentView, RequestError> {
        let (_, manifest) = self.app_manifest(app).await?;
        let strategy = manifest
            .environments
            .get(env)
            .map(|e| e.strategy.clone())
            .unwrap_or_default();
        self.change_in_progress(app, env, |deployment| {
            if plan_of(deployment, &strategy, &manifest, env).is_none() {
                return Err(RequestError::Conflict(format!(
                    "deployment #{} of {} in {app}/{env} is a {} rollout; {} applies to canary and blue/green rollouts that replace a running version",
                    deployment.id, deployment.version, deployment.strategy, name.verb()
                )));
            }
            if deployment.state != DeploymentState::Progressing {
                return Err(RequestError::Conflict(format!(
                    "deployment #{} is {}; {} applies while it progresses",
                    deployment.id, deployment.state, name.verb()
                )));
            }
            let mut phase = Phase::of(&deployment.phase);
            phase.command = Some(PendingCommand { name, by: by.to_string() });
            Ok(Change {
                state: DeploymentState::Progressing,
                reason: None,
                phase: phase.to_value(),
                message: format!("{} requested by {by}", name.verb()),
            })
        })
        .await
    }

    /// Sends all traffic back to the serving version now and stops the new one; the
    /// deployment ends `aborted`. Works for every strategy.
    pub async fn request_abort(
        &self,
        app: &str,
        env: &str,
        by: &str,
    ) -> Result<DeploymentView, RequestError> {
        self.change_in_progress(app, env, |deployment| {
            let mut phase = Phase::of(&deployment.phase);
            phase.aborted_by = Some(by.to_string());
            let reason = format!("aborted by {by}");
            let waiting = matches!(
                deployment.state,
                DeploymentState::Pending
                    | DeploymentState::AwaitingApproval
                    | DeploymentState::Blocked
            );
            let (state, message) = match &deployment.previous_version {
                // Still at its gates: nothing of it started, nothing goes back.
                _ if waiting => (
                    DeploymentState::Aborted,
                    format!(
                        "{reason} before it started: nothing of {} ran, {}",
                        deployment.version,
                        match &deployment.previous_version {
                            Some(previous) => format!("{previous} keeps serving"),
                            None => "nothing was serving".to_string(),
                        }
                    ),
                ),
                Some(previous) => (
                    DeploymentState::RollingBack,
                    format!("{reason}: all traffic back to {previous}"),
                ),
                // Nothing to go back to: stop here; the environment's leftovers are removed.
                None => (DeploymentState::Aborted, reason.clone()),
            };
            Ok(Change {
                state,
                reason: Some(reason),
                phase: phase.to_value(),
                message,
            })
        })
        .await
    }

    /// Starts an aborted or rolled-back rollout again from the beginning.
    pub async fn request_retry(
        &self,
        app: &str,
        env: &str,
        by: &str,
    ) -> Result<DeploymentView, RequestError> {
        let latest = self
            .store
            .latest_deployment(app, env)
            .await?
            .ok_or_else(|| {
                RequestError::Conflict(format!("{app}/{env} has no deployment to retry"))
            })?;
        if !matches!(
            latest.state,
            DeploymentState::Aborted | DeploymentState::RolledBack | DeploymentState::Failed
        ) {
            return Err(RequestError::Conflict(format!(
                "the latest deployment of {app}/{env} (#{}, {}) is {}; only an aborted, rolled-back or failed one can be retried",
                latest.id, latest.version, latest.state
            )));
        }
        self.request_deployment(app, env, &latest.version, "retry", by)
            .await
    }

    /// The environment's status now and after every change (at most every 250 ms).
    pub fn watch(
        self: Arc<Self>,
        app: String,
        env: String,
    ) -> futures_util::stream::BoxStream<
        'static,
        Result<axum::response::sse::Event, std::convert::Infallible>,
    > {
        use futures_util::StreamExt;
        let changed = self.events_changed.subscribe();
        futures_util::stream::unfold((self, changed, true), move |(this, mut changed, first)| {
            let (app, env) = (app.clone(), env.clone());
            async move {
                if !first {
                    changed.changed().await.ok()?;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                changed.borrow_and_update();
                let status = this.status(&app, Some(&env)).await.ok()?;
                let env_status = status.environments.into_iter().next()?;
                let event = axum::response::sse::Event::default()
                    .event("status")
                    .json_data(&env_status)
                    .ok()?;
                Some((Ok(event), (this, changed, false)))
            }
        })
        .boxed()
    }

    /// Events after `after`, waiting up to `wait` for the first one.
    pub async fn wait_events(
        &self,
        id: i64,
        after: i64,
        wait: Duration,
    ) -> Result<Vec<EventView>, RequestError> {
        if self.store.get_deployment(id).await?.is_none() {
            return Err(RequestError::NotFound(format!("deployment {id} not found")));
        }
        let mut changed = self.events_changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changed.borrow_and_update();
            let events = self.store.events_after(id, after, 1000).await?;
            if !events.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(events);
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Ok(Vec::new());
            }
        }
    }

    pub async fn status(
        &self,
        app: &str,
        only_env: Option<&str>,
    ) -> Result<AppStatus, RequestError> {
        let (record, manifest) = self.app_manifest(app).await?;
        if let Some(env) = only_env
            && manifest.environments.get(env).is_none()
        {
            return Err(RequestError::NotFound(format!(
                "app {app} has no environment {env:?}"
            )));
        }
        let replicas = self.store.list_replicas(Some(app), None).await?;
        let mut environments = Vec::new();
        for (env_name, env) in manifest
            .environments
            .iter()
            .filter(|(name, _)| only_env.is_none_or(|only| only == *name))
        {
            let current_version = self
                .store
                .env_current(app, env_name)
                .await?
                .and_then(|e| e.current_version);
            let latest_deployment = match self.store.latest_deployment(app, env_name).await? {
                Some(d) => {
                    let mut view = d.view();
                    // gates: the rows of a deployment waiting at its gates
                    view.gates = crate::gates::rows_if_waiting(&self.store, &d).await?;
                    Some(view)
                }
                None => None,
            };
            let replicas = replicas
                .iter()
                .filter(|r| r.env == env_name)
                .map(|r| {
                    let status = self.runtime.status(&r.id);
                    let state = if r.draining {
                        ReplicaState::Stopping
                    } else {
                        status
                            .as_ref()
                            .map(|s| s.state)
                            .unwrap_or(ReplicaState::Exited)
                    };
                    ReplicaView {
                        id: r.id.clone(),
                        service: r.service.clone(),
                        version: r.version.clone(),
                        port: r.port,
                        pid: status.as_ref().and_then(|s| s.pid).or(r.pid),
                        state,
                        restarts: status.as_ref().map(|s| s.restarts).unwrap_or(0),
                        in_traffic: state == ReplicaState::Healthy,
                    }
                })
                .collect();
            let rollout = self
                .active_deployment(app, env_name)
                .await?
                .and_then(|d| rollout_view(&d, &env.strategy, &manifest, env_name));
            // releases:
            let release_tag = match &current_version {
                Some(version) => ferry_core::release::tag(
                    version,
                    self.release_commit(app, version).await.as_deref(),
                    env_name,
                ),
                None => None,
            };
            environments.push(EnvStatus {
                release_tag,
                app: app.to_string(),
                env: env_name.to_string(),
                listen: env.listen.clone(),
                current_version,
                latest_deployment,
                replicas,
                rollout,
            });
        }
        Ok(AppStatus {
            app: app.to_string(),
            revision: record.revision,
            environments,
        })
    }

    pub async fn proxy_metrics(&self) -> Result<String, ServerError> {
        self.proxy.metrics_text().await
    }

    /// Stops every replica and the proxy; the controller stops acting.
    pub async fn teardown(&self) {
        self.torn_down.store(true, Ordering::SeqCst);
        // hooks: running hooks are workloads too.
        self.hooks.stop_all().await;
        self.runtime.stop_all().await;
        if let Ok(records) = self.store.list_replicas(None, None).await {
            for record in records {
                if let Some(identity) = record
                    .pid
                    .zip(record.start_time)
                    .map(|(pid, start_time)| ProcessIdentity { pid, start_time })
                {
                    ferry_runtime::kill_process_group(&identity, Duration::from_secs(10)).await;
                }
                let _ = self.store.delete_replica(&record.id).await;
            }
        }
        self.proxy.stop().await;
        tracing::info!("teardown complete: replicas and proxy stopped");
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn target_or(version: &Option<String>) -> &str {
    version.as_deref().unwrap_or("nothing")
}

fn validate_version(version: &str) -> Result<(), RequestError> {
    let ok = !version.is_empty()
        && version.len() <= 128
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'));
    if ok {
        Ok(())
    } else {
        Err(RequestError::BadRequest(format!(
            "invalid version {version:?}: use letters, digits and . - _ + (e.g. 1.4.2 or 1.4.2-rc.1)"
        )))
    }
}

/// The progressive plan a deployment follows, if it follows one: canary and blue/green
/// need a serving version to compare with, and rollbacks go straight back.
fn plan_of(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> Option<Plan> {
    let previous = deployment.previous_version.as_ref()?;
    if previous == &deployment.version || deployment.kind == "rollback" {
        return None;
    }
    plan_for(strategy, largest_replicas(manifest, env))
}

fn preview_header(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Canary(c) => c.preview_header.clone(),
        Strategy::BlueGreen(b) => b.preview_header.clone(),
        _ => ferry_core::manifest::DEFAULT_PREVIEW_HEADER.to_string(),
    }
}

fn preview_secret(strategy: &Strategy) -> Option<&str> {
    match strategy {
        Strategy::Canary(c) => c.preview_secret.as_deref(),
        Strategy::BlueGreen(b) => b.preview_secret.as_deref(),
        _ => None,
    }
}

impl Controller {
    /// SHA-256 (hex) of the environment's preview secret, for the proxy to compare remote
    /// clients' preview headers with; `None` (local clients only) if it is not set.
    async fn preview_token(&self, app: &str, env: &str, secret: &str) -> Option<String> {
        match self.secrets.env_vars(app, env).await {
            Ok(vars) => match vars.get(secret) {
                Some(value) => Some(ferry_core::audit::sha256_hex(value.as_bytes())),
                None => {
                    tracing::debug!(%app, %env, %secret, "preview_secret is not set; the preview header works from this host only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(%app, %env, error = %e, "cannot read the preview secret");
                None
            }
        }
    }
}

fn sticky_rule(strategy: &Strategy) -> Option<StickyRule> {
    match strategy {
        Strategy::Canary(c) => c.stickiness.as_ref().map(|s| StickyRule {
            header: s.header.clone(),
            cookie: s.cookie.clone(),
        }),
        _ => None,
    }
}

fn largest_replicas(manifest: &Manifest, env: &str) -> u32 {
    manifest
        .services
        .keys()
        .map(|s| manifest.replicas(s, env))
        .max()
        .unwrap_or(1)
}

fn pace_of(strategy: &Strategy, manifest: &Manifest, env: &str) -> Pace {
    match strategy {
        Strategy::Recreate {} => Pace::Recreate,
        // A first deployment (nothing to compare with) of a progressive strategy starts
        // everything at once.
        Strategy::Canary(_) | Strategy::BlueGreen(_) => restore_pace(manifest, env),
        Strategy::Rolling(rolling) => {
            let desired = largest_replicas(manifest, env);
            Pace::Rolling {
                max_surge: rolling.max_surge.resolve(desired, true),
                max_unavailable: rolling.max_unavailable.resolve(desired, false),
            }
        }
    }
}

/// Where a progressive deployment stands, for `ferry status`.
fn rollout_view(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> Option<ferry_core::api::RolloutView> {
    let plan = plan_of(deployment, strategy, manifest, env)?;
    let progress = Phase::of(&deployment.phase).progress.unwrap_or_default();
    let weight = match deployment.state {
        DeploymentState::Progressing => progress.weight_bp,
        _ => 0,
    };
    let analysis = [&progress.stage_run, &progress.background_run]
        .into_iter()
        .flatten()
        .flat_map(|run| run.metrics.iter())
        .filter_map(|metric| metric.last.as_ref())
        .map(progressive::describe)
        .collect();
    Some(ferry_core::api::RolloutView {
        deployment_id: deployment.id,
        strategy: strategy.name().to_string(),
        stage: (progress.stage + 1).min(plan.stages.len()),
        stages: plan.stages.len(),
        stage_name: plan
            .stages
            .get(progress.stage)
            .map(progressive::stage_name)
            .unwrap_or_else(|| "done".to_string()),
        canary_version: deployment.version.clone(),
        stable_version: target_or(&deployment.previous_version).to_string(),
        canary_weight: f64::from(weight) / 100.0,
        paused: progress.paused(),
        paused_by_hand: progress.manually_paused,
        waiting_for: progress.waiting_for.clone(),
        analysis,
        summary: match deployment.state {
            DeploymentState::RollingBack => format!(
                "rolling back: all traffic on {}",
                target_or(&deployment.previous_version)
            ),
            _ => progressive::summary(&plan, &progress),
        },
    })
}

/// How many new-version replicas count as ready for the rollout: the wanted number when
/// every service has its share ready, else the fewest ready in any service.
fn canary_readiness(services: &[ServiceInput], canary: &str, wanted: u32) -> u32 {
    let mut all_ready = true;
    let mut fewest = u32::MAX;
    for service in services {
        let ready = count_live(std::slice::from_ref(service), |r| {
            r.version == canary && r.state == ReplicaState::Healthy
        });
        all_ready &= ready >= wanted.min(service.desired);
        fewest = fewest.min(ready);
    }
    if all_ready { wanted } else { fewest }
}

fn count_live(services: &[ServiceInput], matches: impl Fn(&Observed) -> bool) -> u32 {
    let n = services
        .iter()
        .flat_map(|s| s.replicas.iter())
        .filter(|r| !r.draining && matches(r))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Restoring a known-good version goes as fast as capacity allows: start all of it at
/// once, keep the current replicas until their replacements are ready.
fn restore_pace(manifest: &Manifest, env: &str) -> Pace {
    Pace::Rolling {
        max_surge: largest_replicas(manifest, env),
        max_unavailable: 0,
    }
}

/// How a deployment actually runs, for its timeline: in a canary or blue/green
/// environment a rollback, a first deployment or a redeploy takes the rolling path.
fn describe_run(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> String {
    let progressive = matches!(strategy, Strategy::Canary(_) | Strategy::BlueGreen(_));
    if !progressive || plan_of(deployment, strategy, manifest, env).is_some() {
        return describe(strategy);
    }
    let why = if deployment.kind == "rollback" {
        "a rollback"
    } else if deployment.previous_version.is_none() {
        "a first deployment"
    } else {
        "the serving version"
    };
    match pace_of(strategy, manifest, env) {
        Pace::Rolling { max_surge, .. } => {
            format!("rolling, max surge {max_surge}, max unavailable 0: {why} skips the steps")
        }
        Pace::Recreate => "recreate".to_string(),
    }
}

fn describe(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Recreate {} => "recreate".to_string(),
        Strategy::Rolling(r) => format!(
            "rolling, max surge {}, max unavailable {}",
            r.max_surge, r.max_unavailable
        ),
        Strategy::Canary(c) => format!("canary, {} steps", c.steps.len()),
        Strategy::BlueGreen(b) => format!(
            "blue/green, {}",
            if b.auto_promote {
                "auto-promote"
            } else {
                "promote by hand"
            }
        ),
    }
}

/// `app.env.service.version.xxxxxx`: unique across servers (the random tail) and readable.
fn replica_id(app: &str, env: &str, service: &str, version: &str) -> String {
    let tail: u32 = rand::rng().random();
    let safe_version: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{app}.{env}.{service}.{safe_version}.{:06x}",
        tail & 0xff_ffff
    )
}

/// The random tail of a replica id: enough to tell replicas apart in a timeline.
fn short_id(id: &str) -> String {
    format!("#{}", id.rsplit('.').next().unwrap_or(id))
}

/// What the runtime needs to run (or re-adopt) the replica of `record`.
fn replica_spec(
    app: &AppRecord,
    manifest: &Manifest,
    record: &ReplicaRecord,
    secrets: BTreeMap<String, String>,
    commit: Option<&str>,
    run_as: Option<ferry_runtime::RunAs>,
) -> Option<ReplicaSpec> {
    let service = manifest.services.get(&record.service)?;
    manifest.environments.get(&record.env)?;
    let cwd = crate::config::cwd_of(app, service);
    // Kept out of the replica's log (every value it is given).
    let redact: Vec<String> = secrets.values().cloned().collect();
    // runtime: a container in a `runtime: docker` environment (registry credentials for
    // the pull only, never in its environment).
    let container = crate::runtimes::container_spec(
        manifest,
        &record.env,
        &record.service,
        &record.version,
        &secrets,
    )
    .map(|mut container| {
        if let Some(deployment) = record.deployment_id {
            container
                .labels
                .insert("ferry.deployment".into(), deployment.to_string());
        }
        container
    });
    let mut secrets = secrets;
    if container.is_some() {
        secrets.remove(crate::runtimes::REGISTRY_USERNAME);
        secrets.remove(crate::runtimes::REGISTRY_PASSWORD);
    }
    // Layered, templated variables; secrets win over all of them.
    let mut env_vars = crate::config::replica_env(
        manifest,
        &record.env,
        &record.service,
        &record.version,
        secrets,
    );
    env_vars.insert("FERRY_REPLICA_ID".to_string(), record.id.clone());
    // releases: the release's identity, when its commit is known
    if let Some(commit) = commit {
        env_vars.insert("FERRY_COMMIT".to_string(), commit.to_string());
        if let Some(tag) = ferry_core::release::tag(&record.version, Some(commit), &record.env) {
            env_vars.insert("FERRY_RELEASE_TAG".to_string(), tag);
        }
    }
    let health = &service.health;
    Some(ReplicaSpec {
        id: record.id.clone(),
        app: record.app.clone(),
        env: record.env.clone(),
        service: record.service.clone(),
        version: record.version.clone(),
        argv: service.run.clone(),
        cwd,
        env_vars,
        run_as,
        redact,
        port: record.port,
        health: HealthSpec {
            path: health.path.clone(),
            interval: health.interval.get(),
            timeout: health.timeout.get(),
            healthy_threshold: health.healthy_threshold,
            unhealthy_threshold: health.unhealthy_threshold,
        },
        stop_timeout: service.stop_timeout.get(),
        container,
    })
}

/// Stops a replica whose pid was never recorded (the server died right after starting
/// it), found by its `FERRY_REPLICA_ID`.
async fn kill_by_replica_id(id: &str) {
    for pid in ferry_runtime::kill_by_marker("FERRY_REPLICA_ID", id, Duration::from_secs(10)).await
    {
        tracing::info!(
            replica = id,
            pid,
            "stopped a replica whose pid was never recorded"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_unique_and_readable() {
        let a = replica_id("shop", "prod", "api", "1.2.3+build");
        let b = replica_id("shop", "prod", "api", "1.2.3+build");
        assert_ne!(a, b);
        assert!(a.starts_with("shop.prod.api.1.2.3_build."), "{a}");
        assert_eq!(short_id(&a).len(), 7);
    }

    fn stats(started: i64, rows: &[(&str, &str, u64, u64)]) -> ferry_proxy::stats::StatsSnapshot {
        ferry_proxy::stats::StatsSnapshot {
            started_at_ms: started,
            taken_at_ms: started,
            generation: 1,
            versions: rows
                .iter()
                .map(
                    |(listener, version, requests, errors)| ferry_proxy::stats::VersionStats {
                        listener: listener.to_string(),
                        service: "web".to_string(),
                        version: version.to_string(),
                        requests: *requests,
                        errors_5xx: *errors,
                        client_errors: 0,
                        in_flight: 0,
                        latency_ms: Default::default(),
                        histogram_us: String::new(),
                        endpoints: Vec::new(),
                    },
                )
                .collect(),
        }
    }

    #[test]
    fn rollout_traffic_counts_what_clients_saw_per_version() {
        let before = stats(
            1,
            &[("shop/prod", "1.0", 100, 1), ("shop/dev", "1.0", 5, 5)],
        );
        let after = stats(
            1,
            &[
                ("shop/prod", "1.0", 160, 3),
                ("shop/prod/preview", "1.1", 10, 0),
                ("shop/prod", "1.1", 40, 4),
                ("shop/dev", "1.0", 50, 50),
                ("shop/production", "1.0", 7, 7),
            ],
        );
        let seen = RolloutTraffic::between(Some(&before), &after, "shop/prod");
        assert_eq!(
            seen.versions,
            vec![
                ("web".to_string(), "1.0".to_string(), 60, 2),
                ("web".to_string(), "1.1".to_string(), 50, 4)
            ]
        );
        assert_eq!(seen.errors(), 6);
        assert_eq!(
            seen.to_string(),
            "during the rollout: web 1.0: 60 requests, 2 5xx; web 1.1: 50 requests, 4 5xx"
        );
        assert!(seen.errors_line().starts_with("clients saw 6 error(s)"));
        assert!(
            seen.errors_line()
                .ends_with("web 1.0 2 of 60, web 1.1 4 of 50")
        );
        // A restarted proxy counts from zero; no baseline says so too.
        let restarted = RolloutTraffic::between(
            Some(&before),
            &stats(2, &[("shop/prod", "1.1", 9, 0)]),
            "shop/prod",
        );
        assert!(restarted.since_proxy_start);
        assert_eq!(restarted.errors(), 0);
        assert!(restarted.to_string().contains("since the proxy"));
    }

    #[test]
    fn versions_are_checked() {
        assert!(validate_version("1.4.2-rc.1").is_ok());
        assert!(validate_version("").is_err());
        assert!(validate_version("1.0 ; rm -rf").is_err());
    }
}
