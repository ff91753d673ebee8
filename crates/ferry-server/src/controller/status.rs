//! Status queries and streams: `ferry status`, the SSE watch, deployment events.

use std::sync::Arc;
use std::time::Duration;

use ferry_core::api::{AppStatus, EnvStatus, EventView, Observed, ReplicaView, TrafficStatus};
use ferry_core::manifest::{Manifest, Strategy};
use ferry_core::model::{DeploymentState, ReplicaState};
use ferry_store::{DeploymentRecord, ReplicaRecord};

use crate::error::ServerError;

use crate::progressive::Phase;

use ferry_core::progressive;

use super::facts::env_state;
use super::strategy::plan_of;
use super::{Controller, RequestError};

use super::strategy::target_or;

impl Controller {
    /// Ticks after every timeline event of any deployment (the console's live dashboard).
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.events_changed.subscribe()
    }

    /// The environment's status now and after every change (at most every 250 ms).
    pub fn watch(
        self: Arc<Self>,
        app: String,
        env: String,
    ) -> futures_util::stream::BoxStream<'static, EnvStatus> {
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
                Some((env_status, (this, changed, false)))
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
        let wanted: Vec<_> = manifest
            .environments
            .iter()
            .filter(|(name, _)| only_env.is_none_or(|only| only == *name))
            .collect();
        // Each environment's newest deployment, then (after them, so that a deployment seen
        // finished is never beside the current version from before it finished) what
        // serves each one.
        let mut latest = Vec::with_capacity(wanted.len());
        for (env_name, _) in &wanted {
            latest.push(self.store.latest_deployment(app, env_name).await?);
        }
        let states = self.store.env_states().await?;
        let mut environments = Vec::new();
        for ((env_name, env), latest) in wanted.into_iter().zip(latest) {
            let state = env_state(&states, app, env_name);
            let current_version = state.current_version().map(str::to_string);
            let latest_deployment = match &latest {
                Some(d) => {
                    let mut view = d.view();
                    // gates: the rows of a deployment waiting at its gates
                    view.gates =
                        crate::gates::rows_if_waiting(&self.store, d, self.now_ms()).await?;
                    Some(view)
                }
                None => None,
            };
            let rows: Vec<&ReplicaRecord> = replicas.iter().filter(|r| r.env == env_name).collect();
            let (replicas, traffic, observed) = self.live_parts(app, env_name, &rows).await?;
            let active = latest.filter(|d| !d.state.is_terminal());
            // apply: the address traffic reaches it on now (see `edge_manifest`)
            let listen = match self
                .edge_manifest(&record, active.as_ref(), state.current_revision)
                .await
            {
                Some(serving) => serving
                    .environments
                    .get(env_name)
                    .unwrap_or(env)
                    .listen
                    .clone(),
                None => env.listen.clone(),
            };
            let rollout = active.and_then(|d| rollout_view(&d, &env.strategy, &manifest, env_name));
            // blue/green's scale-down delay: the new version serves everything; the old one
            // is only kept warm (the summary says so)
            let current_version =
                ferry_core::api::serving_version(current_version, rollout.as_ref());
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
                listen,
                current_version,
                latest_deployment,
                replicas,
                rollout,
                traffic,
                observed,
            });
        }
        Ok(AppStatus {
            app: app.to_string(),
            revision: record.revision,
            environments,
        })
    }

    /// Every wanted app's environments in one pass over the store (the console's dashboard):
    /// versions, the newest deployment with its gates when it waits, and the rollout in
    /// progress — a fixed handful of queries, whatever the number of apps. Lighter than
    /// [`Controller::status`]: no replicas, no traffic, no release tag, the manifest's
    /// listen address.
    pub async fn overview(
        &self,
        mut wanted: impl FnMut(&str) -> bool,
    ) -> Result<Vec<AppStatus>, RequestError> {
        use std::collections::HashMap;
        let apps = self.apps().await?;
        let currents: HashMap<(String, String), Option<String>> = self
            .store
            .all_env_currents()
            .await?
            .into_iter()
            .map(|e| ((e.app, e.env), e.current_version))
            .collect();
        let mut latest: HashMap<(String, String), ferry_store::DeploymentRecord> = self
            .store
            .latest_deployments()
            .await?
            .into_iter()
            .map(|d| ((d.app.clone(), d.env.clone()), d))
            .collect();
        let mut out = Vec::new();
        for (name, (record, manifest)) in apps.iter().filter(|(name, _)| wanted(name)) {
            let mut environments = Vec::with_capacity(manifest.environments.len());
            for (env_name, env) in manifest.environments.iter() {
                let key = (name.clone(), env_name.to_string());
                let deployment = latest.remove(&key);
                let latest_deployment = match &deployment {
                    Some(d) => {
                        let mut view = d.view();
                        view.gates =
                            crate::gates::rows_if_waiting(&self.store, d, self.now_ms()).await?;
                        Some(view)
                    }
                    None => None,
                };
                let rollout = deployment
                    .filter(|d| !d.state.is_terminal())
                    .and_then(|d| rollout_view(&d, &env.strategy, manifest, env_name));
                environments.push(EnvStatus {
                    app: name.clone(),
                    env: env_name.to_string(),
                    listen: env.listen.clone(),
                    current_version: ferry_core::api::serving_version(
                        currents.get(&key).cloned().flatten(),
                        rollout.as_ref(),
                    ),
                    latest_deployment,
                    replicas: Vec::new(),
                    rollout,
                    release_tag: None,
                    traffic: None,
                    observed: None,
                });
            }
            out.push(AppStatus {
                app: name.clone(),
                revision: record.revision,
                environments,
            });
        }
        Ok(out)
    }

    /// An environment's replicas with their live state, its traffic, and who saw them when:
    /// this server when it supervises them (it leads, or runs alone), else what the leader
    /// last stored (`live.rs`).
    async fn live_parts(
        &self,
        app: &str,
        env: &str,
        rows: &[&ReplicaRecord],
    ) -> Result<(Vec<ReplicaView>, Option<TrafficStatus>, Option<Observed>), RequestError> {
        let now = self.now_ms();
        match self.observer.get() {
            Some(status) if !status.leading() => {
                let stored = self.store.live(app, env).await?;
                Ok(crate::live::merge(rows, stored.as_ref(), now))
            }
            observer => Ok((
                rows.iter().map(|r| self.replica_view(r)).collect(),
                self.traffic.status(&format!("{app}/{env}")),
                observer.map(|status| Observed {
                    server: status.server_id(),
                    live: true,
                    at_ms: Some(now),
                    age_ms: Some(0),
                }),
            )),
        }
    }

    /// Every environment's live parts as this server sees them (the leader stores them for
    /// the followers: `live::run`).
    pub(crate) async fn live_parts_of_all(
        &self,
    ) -> Result<Vec<((String, String), crate::live::LiveParts)>, ServerError> {
        let apps = self.apps().await?;
        let rows = self.store.list_replicas(None, None).await?;
        let mut out = Vec::new();
        for (record, manifest) in apps.values() {
            for (env, _) in manifest.environments.iter() {
                let replicas = rows
                    .iter()
                    .filter(|r| r.app == record.name && r.env == env)
                    .map(|r| self.replica_view(r))
                    .collect();
                let traffic = self.traffic.status(&format!("{}/{env}", record.name));
                out.push((
                    (record.name.clone(), env.to_string()),
                    crate::live::LiveParts { replicas, traffic },
                ));
            }
        }
        Ok(out)
    }

    /// A replica as this server's runtime supervises it (`exited` when it does not).
    fn replica_view(&self, r: &ReplicaRecord) -> ReplicaView {
        let status = self.runtime.status(&r.id);
        let usage = self.usage.shares(&r.id);
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
            last_health_check: status.as_ref().and_then(|s| s.last_probe.clone()),
            last_output: status
                .as_ref()
                .map(|s| s.last_output.clone())
                .unwrap_or_default(),
            last_exit: status.and_then(|s| s.last_exit),
            cpu_share: usage.and_then(|u| u.cpu),
            memory_share: usage.and_then(|u| u.memory),
        }
    }

    pub async fn proxy_metrics(&self) -> Result<String, ServerError> {
        self.proxy.metrics_text().await
    }
}

/// Where a progressive deployment stands, for `ferry status`.
pub(super) fn rollout_view(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> Option<ferry_core::api::RolloutView> {
    let plan = plan_of(deployment, strategy, manifest, env)?;
    let progress = Phase::of(deployment).ok()?.progress.unwrap_or_default();
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
            _ if weight >= 10_000 => format!(
                "{}; {} kept warm until it is retired",
                progressive::summary(&plan, &progress),
                target_or(&deployment.previous_version)
            ),
            _ => progressive::summary(&plan, &progress),
        },
    })
}
