//! The one executor: applies the effects a pure step returned (`steps`), in the order the
//! step gave them. The order is where the invariants live; the steps put effects in it:
//! - a transition is committed (compare-and-set) before the effects that follow it — the
//!   checks of a deployment just `blocked`, the replicas of one just `progressing` — and
//!   when another writer moved the deployment first, the rest of the plan is dropped;
//! - a replica's row is written before it starts; a drained replica leaves the route table
//!   before it stops (`act`, `drain`).

use ferry_core::manifest::Manifest;
use ferry_store::{AppRecord, DeploymentRecord};

use crate::lock;

use super::Controller;
use super::replicas::ActError;
use super::steps::Effect;
use super::steps::promotion::Request;

/// What a plan is about: one environment, and the deployment running there (if any); for
/// an app-wide plan (auto-promotion: each request names its environment), `env` is empty.
pub(super) struct Scope<'a> {
    pub app: &'a AppRecord,
    pub manifest: &'a Manifest,
    pub env: &'a str,
    pub deployment: Option<&'a DeploymentRecord>,
    pub now: i64,
}

/// How far a plan got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Applied {
    /// Every effect was applied.
    All,
    /// A transition lost its compare-and-set: the effects after it were dropped.
    Lost,
}

impl Controller {
    /// Applies `effects` in order. An error stops the plan where it failed: the next pass
    /// decides again from what is stored (every step is level-triggered).
    pub(super) async fn execute(
        &self,
        scope: &Scope<'_>,
        effects: Vec<Effect>,
    ) -> Result<Applied, ActError> {
        for effect in effects {
            tracing::debug!(app = %scope.app.name, env = scope.env, ?effect, "effect");
            #[cfg(test)]
            lock(&self.journal).push(effect.clone());
            let deployment = scope.deployment;
            match effect {
                Effect::Transition(t) => {
                    let Some(deployment) = deployment else {
                        debug_assert!(false, "a transition without a deployment");
                        continue;
                    };
                    let won = self
                        .transition_as(
                            deployment,
                            t.to,
                            t.reason,
                            t.current,
                            t.phase.unwrap_or_else(|| deployment.phase.clone()),
                            t.kind,
                            &t.message,
                        )
                        .await?;
                    if !won {
                        return Ok(Applied::Lost);
                    }
                }
                Effect::Event { kind, message } => {
                    if let Some(deployment) = deployment {
                        self.event(deployment.id, kind, &message).await;
                    }
                }
                Effect::Replicas(actions) => {
                    self.act(
                        scope.app,
                        scope.manifest,
                        scope.env,
                        deployment.map(|d| d.id),
                        actions,
                        scope.now,
                    )
                    .await?;
                }
                Effect::StartChecks(checks) => {
                    if let Some(deployment) = deployment {
                        self.gate_checks
                            .start(
                                &self.store,
                                &self.runtime,
                                &self.secrets,
                                &self.workloads,
                                scope.manifest,
                                deployment,
                                &checks,
                                &self.clock,
                            )
                            .await;
                    }
                }
                Effect::RecordPassedGates(rows) => {
                    if let Some(deployment) = deployment {
                        self.store
                            .record_passed_gates(deployment.id, &rows, scope.now)
                            .await?;
                    }
                }
                Effect::Request(request) => self.request(scope, request).await,
                Effect::RememberUnmet(keys) => {
                    if let Some(deployment) = deployment {
                        let mut announced = lock(&self.unmet_gates);
                        match keys {
                            Some(keys) => announced.insert(deployment.id, keys),
                            None => announced.remove(&deployment.id),
                        };
                    }
                }
            }
        }
        Ok(Applied::All)
    }

    /// Requests a deployment for the plan's app (as the API does: superseding, waking the
    /// loop), then records who did it (`system`) and says where it came from.
    async fn request(&self, scope: &Scope<'_>, request: Request) {
        let app = &scope.app.name;
        let view = match self
            .request_deployment(
                app,
                &request.env,
                &request.version,
                request.kind,
                &request.requested_by,
            )
            .await
        {
            Ok(view) => view,
            Err(e) => {
                tracing::error!(app = %app, env = %request.env, version = %request.version,
                    error = %e, "could not request a {} deployment", request.kind.as_str());
                return;
            }
        };
        tracing::info!(app = %app, env = %request.env, version = %request.version, id = view.id,
            "{}", request.note.1);
        let entry = ferry_core::audit::AuditEntry {
            at_ms: scope.now,
            actor: "system".to_string(),
            source: None,
            action: request.audit_action.to_string(),
            app: Some(app.clone()),
            env: Some(request.env.clone()),
            target: Some(format!("deployment {}", view.id)),
            summary: request.audit_summary,
            reason: None,
            outcome: "ok".to_string(),
        };
        if let Err(e) = self.store.append_audit(entry).await {
            tracing::error!(error = %e, "could not write the audit record of a {} deployment", request.kind.as_str());
        }
        let (kind, message) = request.note;
        self.note(view.id, kind, &message).await;
    }

    /// [`Controller::execute`] for a plan whose replica moves judge nothing (gates, an idle
    /// environment): a replica that cannot start is logged, an infrastructure error returned.
    pub(super) async fn execute_logged(
        &self,
        scope: &Scope<'_>,
        effects: Vec<Effect>,
    ) -> Result<Applied, crate::error::ServerError> {
        match self.execute(scope, effects).await {
            Ok(applied) => Ok(applied),
            Err(ActError::Infra(e)) => Err(e),
            Err(ActError::Failed(reason)) => {
                tracing::error!(app = %scope.app.name, env = scope.env, "{reason}");
                Ok(Applied::All)
            }
        }
    }
}

#[cfg(test)]
impl Controller {
    /// Every effect applied so far, in order.
    pub(super) fn journal(&self) -> Vec<Effect> {
        lock(&self.journal).clone()
    }
}
