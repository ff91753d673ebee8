//! The controller's hook call sites: small methods the loop calls at fixed points of a
//! deployment. The decisions are `ferry_core::hooks::decide`, the running is
//! `crate::hooks::HookRunner`; this file only maps deployments to phases.

use std::net::SocketAddr;

use ferry_core::hooks::HookPhase;
use ferry_core::manifest::{BlueGreen, Manifest, Strategy};
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_core::rollout::Verdict;
use ferry_store::{AppRecord, DeploymentRecord};

use super::executor::Scope;
use super::steps;
use super::steps::routes::preview_header;
use super::{Controller, RequestError};
use crate::error::ServerError;
use crate::hooks::{HookRunner, HttpVia, Job, PhaseStatus, Target};

/// How a phase's HTTP hooks reach the new version.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The environment's listener (the new version serves everything there).
    Listener,
    /// The preview route: blue/green's `preview_listen`, else the preview header.
    Preview,
}

fn loopback(addr: &str) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let ip = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("{ip}:{}", a.port())
        }
        _ => addr.to_string(),
    }
}

fn http_via(manifest: &Manifest, env: &str, route: Route) -> HttpVia {
    let Some(environment) = manifest.environments.get(env) else {
        return HttpVia::default();
    };
    // On a listener shared by host, the environment's first host (a wildcard's `www`).
    let host = environment.hosts.first().map(|h| {
        h.strip_prefix('*')
            .map_or(h.clone(), |rest| format!("www{rest}"))
    });
    match (route, &environment.strategy) {
        (Route::Listener, _) => HttpVia {
            addr: loopback(&environment.listen),
            header: None,
            host,
        },
        (
            Route::Preview,
            Strategy::BlueGreen(BlueGreen {
                preview_listen: Some(preview),
                ..
            }),
        ) => HttpVia {
            addr: loopback(preview),
            header: None,
            host: None,
        },
        (Route::Preview, strategy) => HttpVia {
            addr: loopback(&environment.listen),
            header: Some(preview_header(strategy)),
            host,
        },
    }
}

impl Controller {
    async fn hook_phase(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: &DeploymentRecord,
        phase: HookPhase,
        route: Route,
    ) -> Result<PhaseStatus, ServerError> {
        // The hooks of the manifest revision the deployment was requested (and approved) with.
        let pinned = self.manifest_at(app, deployment.manifest_revision).await;
        let manifest = pinned.as_deref().unwrap_or(manifest);
        let mut jobs = HookRunner::jobs(manifest, phase, env);
        if phase == HookPhase::PreDeploy {
            jobs = self
                .skip_applied_migrations(app, env, deployment, jobs)
                .await?;
        }
        let target = Target {
            app,
            manifest,
            env,
            deployment_id: deployment.id,
            version: &deployment.version,
            previous: deployment.previous_version.as_deref(),
            http: http_via(manifest, env, route),
        };
        let status = self.hooks.drive(&target, phase, &jobs).await?;
        if status == PhaseStatus::Waiting {
            self.events_changed.send_modify(|n| *n += 1);
        }
        Ok(status)
    }

    /// Leaves out the irreversible migrations that already succeeded for this version in
    /// this environment (in an earlier deployment): they never run twice. The timeline says
    /// so once, before the phase's first attempt.
    async fn skip_applied_migrations(
        &self,
        app: &AppRecord,
        env: &str,
        deployment: &DeploymentRecord,
        jobs: Vec<Job>,
    ) -> Result<Vec<Job>, ServerError> {
        let mut kept = Vec::with_capacity(jobs.len());
        let mut skipped = Vec::new();
        for job in jobs {
            if job.migration.as_deref() == Some("irreversible")
                && let Some(earlier) = self
                    .store
                    .irreversible_migration_ran(
                        &app.name,
                        env,
                        &deployment.version,
                        &job.name,
                        deployment.id,
                    )
                    .await?
            {
                skipped.push(format!("{} (deployment #{earlier})", job.name));
                continue;
            }
            kept.push(job);
        }
        if !skipped.is_empty()
            && !self
                .store
                .hook_runs(deployment.id)
                .await?
                .iter()
                .any(|r| r.phase == HookPhase::PreDeploy)
        {
            self.event(
                deployment.id,
                EventKind::Hook,
                &format!(
                    "skipped: irreversible migration {} already ran for {} in {env}",
                    skipped.join(", "),
                    deployment.version
                ),
            )
            .await;
        }
        Ok(kept)
    }

    /// pre_deploy hooks, after the gates passed and before anything moves. `false`: not
    /// done yet (or failed: then the deployment is now `failed` and nothing moved).
    pub(super) async fn pre_deploy_done(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: &DeploymentRecord,
    ) -> Result<bool, ServerError> {
        let pinned = self.manifest_at(app, deployment.manifest_revision).await;
        let manifest = pinned.as_deref().unwrap_or(manifest);
        if deployment.kind == ferry_core::model::DeploymentKind::Rollback
            || HookRunner::jobs(manifest, HookPhase::PreDeploy, env).is_empty()
        {
            return Ok(true);
        }
        // A superseded deployment's hook may still run (a migration, say): never run two
        // deployments' hooks of one environment at once.
        if let Some((hook, other)) = self.hooks.running_elsewhere(deployment).await? {
            if self.hooks.first_wait(deployment.id) {
                self.event(
                    deployment.id,
                    EventKind::Hook,
                    &format!(
                        "waiting for hook {hook} of deployment #{other} to finish before running pre_deploy hooks"
                    ),
                )
                .await;
            }
            return Ok(false);
        }
        match self
            .hook_phase(
                app,
                manifest,
                env,
                deployment,
                HookPhase::PreDeploy,
                Route::Listener,
            )
            .await?
        {
            PhaseStatus::Done => Ok(true),
            PhaseStatus::Waiting => Ok(false),
            PhaseStatus::Failed(reason) => {
                let failed = steps::hooks::pre_deploy_failed(deployment, &reason);
                let scope = Scope {
                    app,
                    manifest,
                    env,
                    deployment: Some(deployment),
                    now: self.now_ms(),
                };
                self.execute_logged(&scope, vec![failed.into()]).await?;
                Ok(false)
            }
        }
    }

    /// post_deploy hooks of a rolling/recreate rollout whose new version converged. `None`:
    /// wait (hooks running, or the deployment was ended here); `Some(verdict)`: go on
    /// (`steps::hooks::post_deploy` judges).
    pub(super) async fn post_deploy_verdict(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: &DeploymentRecord,
    ) -> Result<Option<Verdict>, ServerError> {
        if !steps::hooks::runs_post_deploy(deployment) {
            return Ok(Some(Verdict::Converged));
        }
        let status = self
            .hook_phase(
                app,
                manifest,
                env,
                deployment,
                HookPhase::PostDeploy,
                Route::Listener,
            )
            .await?;
        let verdict = steps::hooks::post_deploy(&status);
        if let Some(Verdict::Failed(reason)) = &verdict
            && self
                .fail_forward_if_irreversible(deployment, reason)
                .await?
        {
            return Ok(None);
        }
        Ok(verdict)
    }

    /// post_deploy hooks of a canary/blue-green rollout, through the preview route, before
    /// the first weight step. `Done` once they passed.
    pub(super) async fn progressive_post_deploy(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: &DeploymentRecord,
    ) -> Result<PhaseStatus, ServerError> {
        if deployment.kind == ferry_core::model::DeploymentKind::Rollback {
            return Ok(PhaseStatus::Done);
        }
        let pinned = self.manifest_at(app, deployment.manifest_revision).await;
        if HookRunner::jobs(
            pinned.as_deref().unwrap_or(manifest),
            HookPhase::PostDeploy,
            env,
        )
        .is_empty()
        {
            return Ok(PhaseStatus::Done);
        }
        if !steps::routes::preview_routed(
            self.proxy.acknowledged().as_ref(),
            &app.name,
            env,
            &deployment.version,
        ) {
            // The preview route must reach the new version before it is smoke-tested.
            return Ok(PhaseStatus::Waiting);
        }
        self.hook_phase(
            app,
            manifest,
            env,
            deployment,
            HookPhase::PostDeploy,
            Route::Preview,
        )
        .await
    }

    /// An automatic rollback past an irreversible migration does not happen: the deployment
    /// ends `failed`, the new version is made current and keeps serving. `true` when so.
    pub(super) async fn fail_forward_if_irreversible(
        &self,
        deployment: &DeploymentRecord,
        reason: &str,
    ) -> Result<bool, ServerError> {
        let Some(migration) = self.hooks.irreversible_migration(deployment.id).await? else {
            return Ok(false);
        };
        let t = steps::hooks::fail_forward(deployment, &migration, reason);
        self.transition(deployment, t.to, t.reason, t.current, &t.message)
            .await?;
        Ok(true)
    }

    /// A rolling/recreate rollout whose new version cannot serve still rolls back; the
    /// timeline says when that goes back past an irreversible migration.
    pub(super) async fn warn_if_irreversible(
        &self,
        deployment: &DeploymentRecord,
    ) -> Result<(), ServerError> {
        if let Some(migration) = self.hooks.irreversible_migration(deployment.id).await? {
            self.event(
                deployment.id,
                EventKind::Hook,
                &format!(
                    "warning: rolling back past irreversible migration {migration}: {} cannot serve, so the previous version runs on the migrated data",
                    deployment.version
                ),
            )
            .await;
        }
        Ok(())
    }

    /// After a deployment ended rolled back (or a requested rollback succeeded): the `down`
    /// commands of the reversible migrations rolled back past, then the on_rollback hooks.
    /// Failures are reported on the timeline, never fatal.
    pub(super) async fn after_rollback_hooks(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        latest: Option<&DeploymentRecord>,
    ) -> Result<(), ServerError> {
        let Some(latest) = latest else {
            return Ok(());
        };
        if self.hooks.is_settled(latest.id) {
            return Ok(());
        }
        let rolled_back = matches!(
            (latest.state, latest.kind.as_str()),
            (DeploymentState::RolledBack, _) | (DeploymentState::Succeeded, "rollback")
        );
        if !rolled_back {
            self.hooks.mark_settled(latest.id);
            return Ok(());
        }
        let past = self.rolled_back_past(latest).await?;
        let downs = self.hooks.down_jobs(manifest, &past).await?;
        let jobs = HookRunner::jobs(manifest, HookPhase::OnRollback, env);
        if downs.is_empty() && jobs.is_empty() {
            self.hooks.mark_settled(latest.id);
            return Ok(());
        }
        // VERSION: the version rolled back (away from); PREVIOUS_VERSION: the one serving.
        let (away, serving) = if latest.state == DeploymentState::RolledBack {
            (latest.version.clone(), latest.previous_version.clone())
        } else {
            (
                latest
                    .previous_version
                    .clone()
                    .unwrap_or_else(|| latest.version.clone()),
                Some(latest.version.clone()),
            )
        };
        let target = Target {
            app,
            manifest,
            env,
            deployment_id: latest.id,
            version: &away,
            previous: serving.as_deref(),
            http: http_via(manifest, env, Route::Listener),
        };
        match self
            .hooks
            .drive(&target, HookPhase::MigrationDown, &downs)
            .await?
        {
            PhaseStatus::Done | PhaseStatus::Failed(_) => {}
            PhaseStatus::Waiting => return Ok(()),
        }
        match self
            .hooks
            .drive(&target, HookPhase::OnRollback, &jobs)
            .await?
        {
            PhaseStatus::Waiting => {}
            PhaseStatus::Done | PhaseStatus::Failed(_) => self.hooks.mark_settled(latest.id),
        }
        self.events_changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// The deployments whose pre_deploy effects a rollback goes back past: the deployment
    /// itself when it was rolled back in flight; for a requested rollback to an earlier
    /// version, every deployment that succeeded in the environment after the target version
    /// last did (and before the rollback was asked for).
    pub(super) async fn rolled_back_past(
        &self,
        rollback: &DeploymentRecord,
    ) -> Result<Vec<i64>, ServerError> {
        if rollback.kind != DeploymentKind::Rollback {
            return Ok(vec![rollback.id]);
        }
        let history = self
            .store
            .list_deployments(&rollback.app, &rollback.env, 1000)
            .await?;
        Ok(past_deployments(&history, rollback.id, &rollback.version))
    }

    /// Refuses a rollback past an irreversible migration unless forced (with a reason).
    /// `active`: a deployment in progress being sent back; else the versions from
    /// `current` back to `target`.
    pub(super) async fn check_rollback_migrations(
        &self,
        app: &str,
        env: &str,
        active: Option<&DeploymentRecord>,
        target: &str,
        force: bool,
    ) -> Result<(), RequestError> {
        let past: Vec<i64> = match active {
            Some(d) => vec![d.id],
            None => {
                let history = self.store.list_deployments(app, env, 1000).await?;
                past_deployments(&history, i64::MAX, target)
            }
        };
        for id in past {
            if let Some(migration) = self.hooks.irreversible_migration(id).await? {
                let version = self
                    .store
                    .get_deployment(id)
                    .await?
                    .map(|d| d.version)
                    .unwrap_or_default();
                if force {
                    tracing::warn!(
                        app,
                        env,
                        migration,
                        version,
                        "forced rollback past an irreversible migration"
                    );
                    continue;
                }
                return Err(RequestError::Conflict(format!(
                    "rolling {app}/{env} back to {target} goes back past {version}, whose pre_deploy hook {migration} ran an irreversible migration (deployment #{id}); \
                     if the old version can run on the migrated data, force it: ferry rollback {app} --env {env} --force --reason \"...\""
                )));
            }
        }
        Ok(())
    }
}

/// From newest-first `history`: the succeeded deployments older than `before` and newer
/// than the latest succeeded deployment of `target`.
fn past_deployments(history: &[DeploymentRecord], before: i64, target: &str) -> Vec<i64> {
    let mut past = Vec::new();
    for d in history.iter().filter(|d| d.id < before) {
        if d.state != DeploymentState::Succeeded {
            continue;
        }
        if d.version == target {
            break;
        }
        past.push(d.id);
    }
    past
}
