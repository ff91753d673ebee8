//! Canary and blue/green rollouts: one pass of the progressive machine, the bake, and the way back.

use std::path::PathBuf;

use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentState, EventKind, ReplicaState};
use ferry_core::rollout::{self, Observed, ServiceInput};
use ferry_store::{AppRecord, DeploymentRecord};

use crate::error::ServerError;

use crate::progressive::{Phase, Subject};

use ferry_core::progressive::{self, Outcome, Plan};

use super::Controller;
use super::executor::Scope;
use super::replicas::ActError;
use super::steps;

use super::strategy::millis;
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
        let mut phase = Phase::of(deployment)?;
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
        if next.weight_bp > 0
            && progress.weight_bp == 0
            && !matches!(outcome, Outcome::Failed { .. })
        {
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
            Outcome::Failed { reason, notes } => {
                // the measurements that failed it, as a step analysis's are
                if !notes.is_empty() {
                    self.event(deployment.id, EventKind::Analysis, &notes.join("; "))
                        .await;
                }
                return self.roll_back(deployment, &phase, &stable, &reason).await;
            }
            Outcome::Completed => {
                // `retired` only once the old processes are gone (drained, then stopped).
                let old_gone = services
                    .iter()
                    .all(|s| s.replicas.iter().all(|r| r.version == canary));
                if old_gone && self.routed_only_to(&app.name, env, canary, services) {
                    // bake: keep watching (crash loops, health, the background analysis).
                    if !self.baked(app, manifest, deployment, env, now).await? {
                        if let Some(measured) = &observed.background_measurements {
                            let mut fresh = Phase::of(deployment)?;
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
                    let kind = match command {
                        Some(_) => EventKind::CommandApplied,
                        None => EventKind::State,
                    };
                    let saved = self
                        .transition_as(
                            deployment,
                            DeploymentState::Progressing,
                            None,
                            None,
                            phase.to_value(),
                            kind,
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
            match self
                .act(app, manifest, env, Some(deployment.id), actions, now)
                .await
            {
                Ok(()) => {}
                Err(ActError::Failed(reason)) => {
                    return self.roll_back(deployment, &phase, &stable, &reason).await;
                }
                // The store or the engine failed: the phase is saved; retry next pass, for
                // at most INFRA_RETRY_LIMIT.
                Err(ActError::Infra(e)) => {
                    return match self.infra_failed(deployment, &e, now).await {
                        Some(reason) => self.roll_back(deployment, &phase, &stable, &reason).await,
                        None => Err(e),
                    };
                }
            }
        }
        self.infra_recovered(deployment).await;
        Ok(())
    }

    /// bake: whether a deployment that would succeed now has been watched long enough. The
    /// first time, records when the bake ends (on the deployment's phase, so a restarted
    /// server keeps the same end) and says so on the timeline; at the end, says "baked".
    /// Until then the caller keeps watching: crash loops, failing health and (canary) the
    /// background analysis roll back as during the rollout.
    /// The bake's length is the deployment's manifest revision's, whatever was applied since.
    pub(super) async fn baked(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        deployment: &DeploymentRecord,
        env: &str,
        now: i64,
    ) -> Result<bool, ServerError> {
        let pinned = self.manifest_at(app, deployment.manifest_revision).await;
        let manifest = pinned.as_deref().unwrap_or(manifest);
        let Some(bake) = manifest.environments.get(env).and_then(|e| e.bake) else {
            return Ok(true);
        };
        let bake_ms = millis(bake.get());
        let mut phase = Phase::of(deployment)?;
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
                    EventKind::Bake,
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
    pub(super) async fn roll_back(
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
