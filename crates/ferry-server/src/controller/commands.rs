//! The command API: what users ask of the controller (deploy, redeploy, rollback, promote/pause/resume, abort, retry), applied with compare-and-set.

use ferry_core::api::{DeploymentView, RedeployAnswer, Unchanged};
use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_store::{
    AppRecord, DeploymentRecord, NewDeployment, ReplicaRecord, StoreError, Transition,
};

use crate::error::ServerError;

use crate::progressive::{CommandName, PendingCommand, Phase};

use super::strategy::plan_of;
use super::strategy::target_or;
use super::{Change, Controller, RequestError};

impl Controller {
    /// An app's stored record and its manifest.
    pub(super) async fn app_manifest(
        &self,
        app: &str,
    ) -> Result<(AppRecord, Manifest), RequestError> {
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
        kind: DeploymentKind,
        requested_by: &str,
    ) -> Result<DeploymentView, RequestError> {
        self.request_fix(app, env, version, kind, requested_by, None)
            .await
    }

    /// [`Controller::request_deployment`] that, with `fix_of`, also records (in the same
    /// transaction) that deployment `fix_of` needed this fix (dora).
    pub async fn request_fix(
        &self,
        app: &str,
        env: &str,
        version: &str,
        kind: DeploymentKind,
        requested_by: &str,
        fix_of: Option<i64>,
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
        let now = self.now_ms();
        self.store.ensure_release(app, version, now).await?;
        let previous_version = self
            .store
            .env_current(app, env)
            .await?
            .and_then(|e| e.current_version);
        // config: deploying (or retrying) the version that already serves rolls out its
        // configuration.
        let same = previous_version.as_deref() == Some(version);
        let kind = if same && matches!(kind, DeploymentKind::Deploy | DeploymentKind::Retry) {
            DeploymentKind::Redeploy
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
                kind,
                strategy: environment.strategy.name().to_string(),
                requested_by: requested_by.to_string(),
                manifest_revision: record.revision,
                now_ms: now,
                fix_of,
            })
            .await?;
        // The logs of replicas gone before this deployment are kept no longer.
        crate::logs::prune(self, app, env).await;
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
            plan.edge = self.edge_changes(&record, env, &manifest).await;
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
            .request_deployment(app, env, &current, DeploymentKind::Redeploy, requested_by)
            .await?;
        if let Some(other) = active.filter(|d| d.version != current) {
            self.event(
                view.id,
                EventKind::State,
                &format!(
                    "superseded deployment #{} of {} ({}) on request of {requested_by} (--force)",
                    other.id, other.version, other.state
                ),
            )
            .await;
        }
        Ok(RedeployAnswer::Started(view))
    }

    pub(super) async fn supersede(&self, active: &DeploymentRecord) -> Result<(), RequestError> {
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

    pub(super) async fn supersede_because(
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
                    event_kind: EventKind::State,
                    now_ms: self.now_ms(),
                    notifications: Vec::new(),
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
                        event_kind: EventKind::State,
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
        self.request_deployment(app, env, &target, DeploymentKind::Rollback, requested_by)
            .await
    }

    /// Applies `change` to the deployment in progress in app/env with compare-and-set,
    /// re-reading and retrying when the controller moved it meanwhile.
    pub(super) async fn change_in_progress(
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
                event_kind,
            } = change(&deployment)?;
            if self
                .transition_as(
                    &deployment,
                    state,
                    reason,
                    None,
                    phase,
                    event_kind,
                    &message,
                )
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
            let mut phase = Phase::of(deployment)?;
            phase.command = Some(PendingCommand { name, by: by.to_string() });
            Ok(Change {
                state: DeploymentState::Progressing,
                reason: None,
                phase: phase.to_value(),
                message: format!("{} requested by {by}", name.verb()),
                event_kind: EventKind::CommandRequested,
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
            let mut phase = Phase::of(deployment)?;
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
                event_kind: EventKind::State,
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
        self.request_deployment(app, env, &latest.version, DeploymentKind::Retry, by)
            .await
    }
}

pub(super) fn validate_version(version: &str) -> Result<(), RequestError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_checked() {
        assert!(validate_version("1.4.2-rc.1").is_ok());
        assert!(validate_version("").is_err());
        assert!(validate_version("1.0 ; rm -rf").is_err());
    }
}
