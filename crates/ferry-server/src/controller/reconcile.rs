//! The reconcile loop: one pass over every environment (woken by requests, runtime events or a tick), and the rolling/recreate rollout of one environment.

use super::Apps;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ferry_core::manifest::{Manifest, Strategy};
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind, ReplicaState};
use ferry_core::rollout::{self, ServiceInput, Verdict};
use ferry_runtime::RuntimeEvent;
use ferry_store::{AppRecord, DeploymentRecord, EnvState, ReplicaRecord, StoreError};

use tokio_util::sync::CancellationToken;

use crate::error::ServerError;
use crate::lock;
use crate::progressive::Phase;

use super::executor::Scope;
use super::facts::env_state;
use super::replicas::ActError;
use super::replicas::short_id;
use super::steps;
use super::steps::Concern;
use super::strategy::describe_run;
use super::strategy::pace_of;
use super::strategy::plan_of;
use super::strategy::restore_pace;
use super::{Controller, TICK};

impl Controller {
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
            let now = self.now_ms();
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
            if self.traffic.due(now)
                && let Ok(stats) = self.proxy.stats().await
            {
                self.traffic.record(stats);
            }
        }
    }

    pub(super) fn settled(&self) -> bool {
        if self.now_ms() >= *lock(&self.settle_until_ms) {
            return true;
        }
        let adopted = lock(&self.adopted).clone();
        adopted.iter().all(|id| {
            self.runtime
                .status(id)
                .is_none_or(|s| s.state != ReplicaState::Starting)
        })
    }

    pub(super) async fn on_runtime_event(&self, event: RuntimeEvent) {
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
            } => {
                let mut message = format!("exited ({reason})");
                if *will_restart {
                    message.push_str("; restarting");
                }
                // What it said before it went, from its (redacted) log.
                if let Some(status) = self.runtime.status(id) {
                    message.push_str(&ferry_core::rollout::output_block(&status.last_output));
                }
                (id, message)
            }
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
    pub(super) async fn replica_event(&self, id: &str, message: &str) {
        let Ok(Some(record)) = self.store.get_replica(id).await else {
            return;
        };
        let at = match self.runtime.endpoint(id) {
            Some(addr) => addr.to_string(),
            None => format!("port {}", record.port),
        };
        let line = format!(
            "{} {} {} on {at}: {message}",
            record.service,
            record.version,
            short_id(id),
        );
        tracing::info!(app = %record.app, env = %record.env, "{line}");
        if let Ok(Some(active)) = self.active_deployment(&record.app, &record.env).await {
            self.event(active.id, EventKind::Replica, &line).await;
        }
    }

    pub(super) async fn active_deployment(
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
    pub(super) async fn reconcile_all(self: &Arc<Self>) -> Result<(), ServerError> {
        if !self.settled() {
            return Ok(());
        }
        let apps = self.apps().await?;
        let replicas = self.store.list_replicas(None, None).await?;
        let states = self.store.env_states().await?;
        let now = self.now_ms();
        for (app, manifest) in apps.values() {
            for (env_name, _) in manifest.environments.iter() {
                let env_replicas: Vec<&ReplicaRecord> = replicas
                    .iter()
                    .filter(|r| r.app == app.name && r.env == env_name)
                    .collect();
                if let Err(e) = self
                    .reconcile_env(
                        app,
                        manifest,
                        env_name,
                        &env_replicas,
                        env_state(&states, &app.name, env_name),
                        now,
                    )
                    .await
                {
                    tracing::error!(app = %app.name, env = env_name, error = %e, "could not reconcile");
                }
            }
        }
        // releases: auto-promotion, level-triggered from the store.
        if let Err(e) = self.auto_promote(&apps, now).await {
            tracing::error!(error = %e, "auto-promotion pass failed; retrying");
        }
        // Replicas of apps, environments or services no longer in any manifest.
        for id in steps::maintain::orphans(&apps, &replicas) {
            self.store.set_replica_draining(&id, now).await?;
        }
        // One read of the replicas and environments as this pass left them, for the table
        // and the drains.
        let replicas = self.store.list_replicas(None, None).await?;
        let states = self.store.env_states().await?;
        self.push_routes(&apps, &replicas, &states).await?;
        self.stop_drained(&apps, &replicas).await?;
        Ok(())
    }

    /// The auto-promotion pass: for each app that asks for it, the facts
    /// (`promotion::env_facts`), the pure step, the executor (request, audit, timeline).
    async fn auto_promote(&self, apps: &Apps, now: i64) -> Result<(), ServerError> {
        for (app, manifest) in apps.values() {
            if !steps::promotion::wanted(manifest) {
                continue;
            }
            let facts = crate::promotion::env_facts(self, &app.name, manifest).await?;
            let scope = Scope {
                app,
                manifest,
                env: "",
                deployment: None,
                now,
            };
            self.execute_logged(&scope, steps::promotion::step(&app.name, &facts))
                .await?;
        }
        Ok(())
    }

    /// One environment's pass: its snapshot (the deployment running there, the observed
    /// replicas, a redeploy's plan), then concern by concern as `steps::next_concern` picks
    /// them — each reads its facts, asks its pure step, executes — for as long as each lets
    /// the deployment go on.
    pub(super) async fn reconcile_env(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        replicas: &[&ReplicaRecord],
        state: &EnvState,
        now: i64,
    ) -> Result<(), ServerError> {
        let active = state.active().cloned();
        // apply: replica counts and services follow the manifest revision of a deployment
        // (the active one, else the one that made the current version), never a bare apply.
        let pinned = self.running_manifest(app, state).await;
        let spec = ferry_core::apply::running_spec(manifest, pinned.as_deref());
        let mut services = self.observe(&spec, env, replicas);
        let strategy = manifest
            .environments
            .get(env)
            .map(|e| e.strategy.clone())
            .unwrap_or_default();
        // config: a redeploy replaces the replicas whose configuration is out of date, and
        // scales to the replica counts of its manifest revision.
        let redeploy = match &active {
            Some(d) if d.kind == DeploymentKind::Redeploy => {
                let pinned = self.manifest_at(app, d.manifest_revision).await;
                let manifest = pinned.as_deref().unwrap_or(manifest);
                let mut plan =
                    crate::config::redeploy_state(&self.store, app, manifest, env, &d.version)
                        .await?;
                plan.scale = ferry_core::apply::scale_changes(&services, &d.version);
                plan.edge = self.edge_changes(app, env, manifest).await;
                Some(plan)
            }
            _ => None,
        };
        let nothing_to_redeploy = active
            .as_ref()
            .zip(redeploy.as_ref())
            .and_then(|(d, plan)| steps::rollout::nothing_to_redeploy(d, plan));
        let mut after = None;
        let mut verdict = None;
        loop {
            let concern = steps::next_concern(&steps::concern::Snapshot {
                deployment: active.as_ref(),
                strategy: &strategy,
                nothing_to_redeploy: nothing_to_redeploy.is_some(),
                after,
                verdict: verdict.as_ref(),
            });
            let deployment = match (concern, active.as_ref()) {
                (Concern::Done, _) => return Ok(()),
                (Concern::AfterRollback, _) => {
                    self.after_rollback_hooks(app, manifest, env, state.latest.as_ref())
                        .await?;
                    after = Some(concern);
                    continue;
                }
                (Concern::Maintain, _) => {
                    self.maintain(app, manifest, env, &services, state.current_version(), now)
                        .await?;
                    after = Some(concern);
                    continue;
                }
                // Every other concern acts on the running deployment.
                (_, None) => return Ok(()),
                (_, Some(d)) => d,
            };
            let scope = Scope {
                app,
                manifest,
                env,
                deployment: Some(deployment),
                now,
            };
            let goes_on = match concern {
                Concern::NothingToRedeploy => {
                    if let Some(done) = nothing_to_redeploy.clone() {
                        self.execute_logged(&scope, vec![done.into()]).await?;
                    }
                    true
                }
                Concern::Gates => self.gates_pass(app, deployment, manifest, env).await?,
                // hooks: pre_deploy runs to completion before anything moves.
                Concern::PreDeploy => self.pre_deploy_done(app, manifest, env, deployment).await?,
                Concern::Progressive => {
                    if let Some(plan) = plan_of(deployment, &strategy, manifest, env) {
                        self.drive_progressive(
                            app, manifest, env, deployment, &plan, &services, now,
                        )
                        .await?;
                    }
                    true
                }
                Concern::Start => {
                    let run = describe_run(deployment, &strategy, manifest, env);
                    if let Some(started) =
                        steps::rollout::start(deployment, &run, redeploy.as_ref())
                    {
                        self.execute_logged(&scope, vec![started.into()]).await?;
                    }
                    true
                }
                Concern::Rollout => {
                    verdict = self
                        .roll(
                            &scope,
                            deployment,
                            &strategy,
                            &mut services,
                            redeploy.as_ref(),
                        )
                        .await?;
                    verdict.is_some()
                }
                // hooks: post_deploy smoke tests before `succeeded`; a failure rolls back.
                Concern::PostDeploy => {
                    verdict = self
                        .post_deploy_verdict(app, manifest, env, deployment)
                        .await?;
                    verdict.is_some()
                }
                // bake: a converged version is watched for `bake` before it succeeds.
                Concern::Bake => {
                    let phase = Phase::of(deployment)?;
                    let bake = self.bake_of(app, manifest, deployment, env).await;
                    let bake = steps::bake::step(deployment, &phase, bake, now);
                    self.execute_logged(&scope, bake.effects).await?;
                    bake.baked
                }
                Concern::Finish => {
                    if let Some(verdict) = &verdict {
                        self.finish(&scope, deployment, verdict, redeploy.is_some())
                            .await?;
                    }
                    true
                }
                Concern::AfterRollback | Concern::Maintain | Concern::Done => true,
            };
            if !goes_on {
                return Ok(());
            }
            after = Some(concern);
        }
    }

    /// The rolling/recreate replica moves towards the deployment's target (its version, or
    /// the previous one on the way back) at its pace. `None`: replicas moved or are still
    /// starting, or the proxy has not yet confirmed a table that sends everything to the
    /// converged version; `Some(verdict)`: converged (and routed), or failed.
    async fn roll(
        &self,
        scope: &Scope<'_>,
        deployment: &DeploymentRecord,
        strategy: &Strategy,
        services: &mut [ServiceInput],
        redeploy: Option<&crate::config::Redeploy>,
    ) -> Result<Option<Verdict>, ServerError> {
        let (manifest, env) = (scope.manifest, scope.env);
        let (target, pace) = match deployment.state {
            DeploymentState::Progressing => {
                (deployment.version.clone(), pace_of(strategy, manifest, env))
            }
            DeploymentState::RollingBack => match &deployment.previous_version {
                Some(previous) => (previous.clone(), restore_pace(manifest, env)),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        if let Some(plan) = redeploy {
            let rolling_back = deployment.state == DeploymentState::RollingBack;
            crate::config::mark(services, &deployment.version, plan, rolling_back);
        }
        let verdict = match rollout::reconcile(&target, services, pace, scope.now) {
            Verdict::Progress(actions) => match self
                .execute(scope, vec![steps::Effect::Replicas(actions)])
                .await
            {
                Ok(_) => {
                    self.infra_recovered(deployment).await;
                    return Ok(None);
                }
                Err(ActError::Failed(reason)) => Verdict::Failed(reason),
                // The store or the engine failed: decide nothing, retry on the next pass,
                // for at most INFRA_RETRY_LIMIT.
                Err(ActError::Infra(e)) => match self.infra_failed(scope, deployment, &e).await {
                    Some(reason) => Verdict::Failed(reason),
                    None => return Err(e),
                },
            },
            other => other,
        };
        // Converged replicas are not enough: the proxy must have acknowledged a table that
        // sends everything to them before the deployment can claim success.
        if verdict == Verdict::Converged
            && !self.routed_only_to(&scope.app.name, env, &target, services)
        {
            return Ok(None);
        }
        Ok(Some(verdict))
    }

    /// What the verdict makes of a rolling deployment (`steps::rollout::finish`); the
    /// timeline warns when it goes back past an irreversible migration.
    async fn finish(
        &self,
        scope: &Scope<'_>,
        deployment: &DeploymentRecord,
        verdict: &Verdict,
        redeploy: bool,
    ) -> Result<(), ServerError> {
        let phase = Phase::of(deployment)?;
        let Some(next) = steps::rollout::finish(
            deployment,
            verdict,
            phase.bake_until_ms.is_some(),
            phase.aborted_by.as_deref(),
            redeploy,
        ) else {
            return Ok(());
        };
        // hooks: say so when this goes back past an irreversible migration.
        if next.to == DeploymentState::RollingBack {
            self.warn_if_irreversible(deployment).await?;
        }
        self.execute_logged(scope, vec![next.into()]).await?;
        Ok(())
    }
}
