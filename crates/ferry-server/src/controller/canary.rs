//! Canary and blue/green rollouts, the shell: observes, measures what is due, runs the
//! post_deploy hooks when traffic first moves, asks the pure steps (`steps::progressive`)
//! and hands their effects to the executor.

use std::path::PathBuf;

use ferry_core::duration::HumanDuration;
use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentState, ReplicaState};
use ferry_core::rollout::{self, Observed, ServiceInput};
use ferry_store::{AppRecord, DeploymentRecord};

use crate::error::ServerError;

use crate::progressive::{Phase, Subject};

use ferry_core::progressive::{self, Plan};

use super::Controller;
use super::executor::Scope;
use super::replicas::ActError;
use super::steps;

use super::strategy::target_or;

impl Controller {
    /// One pass of a canary or blue/green rollout: observe, measure what is due, advance
    /// the pure machine, persist its progress, then move replicas to match it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn drive_progressive(
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
        let phase = Phase::of(deployment)?;
        if deployment.state == DeploymentState::RollingBack {
            let effects = steps::progressive::roll_back(&steps::progressive::RollingBack {
                deployment,
                stable: &stable,
                services,
                routed_to_stable: self.routed_only_to(&app.name, env, &stable, services),
                aborted_by: phase.aborted_by.as_deref(),
            });
            if effects
                .iter()
                .any(|e| matches!(e, steps::Effect::Transition(_)))
            {
                self.meter.forget(deployment.id);
            }
            let scope = Scope {
                app,
                manifest,
                env,
                deployment: Some(deployment),
                now,
            };
            self.execute_logged(&scope, effects).await?;
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
            runtime: &self.runtime,
        };
        let stage_key = (deployment.id, progress.stage as u64);
        let background_key = (deployment.id, u64::MAX);
        let (stage_spec, background_spec) = progressive::wants(plan, &progress, now);
        let analysing = progress.stage_run.is_some() || progress.background_run.is_some();
        // console: the rollout's per-version traffic, sampled for the deployment page's charts.
        let chart_due = self.series.due(deployment.id, now);
        let stats = if analysing || chart_due {
            self.proxy.stats().await.ok()
        } else {
            None
        };
        if let Some(stats) = stats.as_ref().filter(|_| chart_due) {
            let versions = [canary, stable.as_str()];
            self.series
                .record(&self.store, deployment.id, &listener, &versions, stats, now)
                .await;
        }
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
            phase.command.as_ref().map(|c| c.name.command()),
            now,
        );
        // hooks: post_deploy smoke tests through the preview route before traffic first moves.
        let post_deploy = if steps::progressive::first_move(&progress, &next, &outcome) {
            self.progressive_post_deploy(app, manifest, env, deployment)
                .await?
        } else {
            crate::hooks::PhaseStatus::Done
        };
        let pass = steps::progressive::forward(&steps::progressive::Forward {
            deployment,
            phase: &phase,
            plan,
            progress: &progress,
            next: &next,
            outcome: &outcome,
            background: observed.background_measurements.as_deref(),
            stable: &stable,
            services,
            post_deploy: &post_deploy,
            routed_to_canary: self.routed_only_to(&app.name, env, canary, services),
            bake: self.bake_of(app, manifest, deployment, env).await,
            now,
        });
        let scope = Scope {
            app,
            manifest,
            env,
            deployment: Some(deployment),
            now,
        };
        if !pass.judged {
            if let Err(e) = self.execute(&scope, pass.effects).await {
                tracing::error!(deployment = deployment.id, "{e}");
            }
            return Ok(());
        }
        let effects = self
            .never_back_past_irreversible(deployment, pass.effects)
            .await?;
        let ends = steps::ends(&effects);
        // Persisted, then the replicas move to match the progress.
        let failed = match self.execute(&scope, effects).await {
            Ok(_) => {
                if ends {
                    self.meter.forget(deployment.id);
                }
                self.infra_recovered(deployment).await;
                return Ok(());
            }
            Err(ActError::Failed(reason)) => reason,
            // The store or the engine failed: the phase is saved; retry next pass, for
            // at most the retry window.
            Err(ActError::Infra(e)) => match self.infra_failed(&scope, deployment, &e).await {
                Some(reason) => reason,
                None => return Err(e),
            },
        };
        let back = steps::progressive::back(&pass.phase, &stable, &failed);
        let effects = self
            .never_back_past_irreversible(deployment, vec![back.into()])
            .await?;
        self.execute_logged(&scope, effects).await?;
        Ok(())
    }

    /// The bake of the deployment's manifest revision, whatever was applied since.
    pub(super) async fn bake_of(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        deployment: &DeploymentRecord,
        env: &str,
    ) -> Option<HumanDuration> {
        let pinned = self.manifest_at(app, deployment.manifest_revision).await;
        let manifest = pinned.as_deref().unwrap_or(manifest);
        manifest.environments.get(env).and_then(|e| e.bake)
    }

    /// hooks: `effects`, unless they send the deployment back past an irreversible
    /// migration: then it fails forward instead (`steps::hooks::never_back_past`).
    pub(super) async fn never_back_past_irreversible(
        &self,
        deployment: &DeploymentRecord,
        effects: Vec<steps::Effect>,
    ) -> Result<Vec<steps::Effect>, ServerError> {
        if !steps::hooks::rolls_back(&effects) {
            return Ok(effects);
        }
        Ok(
            match self.hooks.irreversible_migration(deployment.id).await? {
                Some(migration) => steps::hooks::never_back_past(deployment, &migration, effects),
                None => effects,
            },
        )
    }
}

/// How many new-version replicas count as ready for the rollout: the wanted number when
/// every service has its share ready, else the fewest ready in any service.
pub(super) fn canary_readiness(services: &[ServiceInput], canary: &str, wanted: u32) -> u32 {
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

pub(super) fn count_live(services: &[ServiceInput], matches: impl Fn(&Observed) -> bool) -> u32 {
    let n = services
        .iter()
        .flat_map(|s| s.replicas.iter())
        .filter(|r| !r.draining && matches(r))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}
