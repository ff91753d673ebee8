//! The controller's gate call site: whether a deployment may start (`steps::gates` decides over `ferry_core::gates`; `crate::gates` gathers the facts; the executor applies).

use ferry_core::manifest::Manifest;
use ferry_store::{AppRecord, DeploymentRecord};

use crate::error::ServerError;
use crate::lock;

use super::Controller;
use super::executor::Scope;
use super::steps;

impl Controller {
    /// Whether a deployment may start: its environment's approval rules hold (rollbacks
    /// to a known-good version skip them). Gathers the gate facts, asks the pure step
    /// (`steps::gates`) and applies its plan: `awaiting-approval` or `blocked` (saying who
    /// must approve) before any check starts, or `rejected`; `true` when it may go on.
    pub(super) async fn gates_pass(
        &self,
        app: &AppRecord,
        deployment: &DeploymentRecord,
        manifest: &Manifest,
        env: &str,
    ) -> Result<bool, ServerError> {
        // alerts: an environment without gates still holds deployments while one of its
        // `block_promotions` alerts fires.
        let env_gates = manifest
            .environments
            .get(env)
            .and_then(|e| e.gates.clone())
            .or_else(|| crate::alerts::blocks(manifest, env).then(Default::default));
        if !steps::gates::applies(deployment, env_gates.as_ref()) {
            return Ok(true);
        }
        let env_gates = env_gates.unwrap_or_default();
        let history = crate::gates::history(&self.store, deployment, &env_gates).await?;
        let approvals = self.store.approvals(deployment.id).await?;
        let now = self.now_ms();
        let facts = crate::gates::facts(&self.store, Some(manifest), deployment, now).await?;
        let announced = lock(&self.unmet_gates).get(&deployment.id).cloned();
        let plan = steps::gates::step(&steps::gates::Snapshot {
            deployment,
            gates: &env_gates,
            history: &history,
            approvals: &approvals,
            facts: &facts,
            announced: announced.as_deref(),
            now,
        });
        let scope = Scope {
            app,
            manifest,
            env,
            deployment: Some(deployment),
            now,
        };
        self.execute_logged(&scope, plan.effects).await?;
        Ok(plan.proceed)
    }
}
