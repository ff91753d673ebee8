//! The controller's gate call sites: whether a deployment may start (`ferry_core::gates` decides; `crate::gates` gathers the facts).

use ferry_core::gates;
use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_store::DeploymentRecord;

use crate::error::ServerError;
use crate::lock;

use super::Controller;

impl Controller {
    /// Whether a deployment may start: its environment's approval rules hold (rollbacks
    /// to a known-good version skip them). Moves it to `awaiting-approval` or `blocked` (saying who must
    /// approve) or `rejected`; `true` when it may go on.
    pub(super) async fn gates_pass(
        &self,
        deployment: &DeploymentRecord,
        manifest: &Manifest,
        env: &str,
    ) -> Result<bool, ServerError> {
        // alerts: an environment without gates still holds deployments while one of its
        // `block_promotions` alerts fires.
        let Some(env_gates) = manifest
            .environments
            .get(env)
            .and_then(|e| e.gates.clone())
            .or_else(|| crate::alerts::blocks(manifest, env).then(Default::default))
        else {
            return Ok(true);
        };
        if deployment.kind == DeploymentKind::Rollback {
            return Ok(true);
        }
        let history = self.gate_history(deployment, &env_gates).await?;
        let approvals = self.store.approvals(deployment.id).await?;
        let now = self.now_ms();
        let facts = crate::gates::facts(&self.store, deployment).await?;
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
                    self.event(deployment.id, EventKind::Gate, &line).await;
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
                    self.event(deployment.id, EventKind::Gates, &message).await;
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
    pub(super) async fn gate_history(
        &self,
        deployment: &DeploymentRecord,
        env_gates: &ferry_core::manifest::Gates,
    ) -> Result<gates::History, ServerError> {
        Ok(crate::gates::history(&self.store, deployment, env_gates).await?)
    }

    /// Whether the unmet gates of a waiting deployment differ from the last time they were
    /// seen (compared by their stable keys, so a soak countdown is not a change); `None`
    /// forgets the deployment. In memory: after a restart the list is recorded once more.
    pub(super) fn unmet_gates_changed(
        &self,
        deployment_id: i64,
        unmet: Option<&[gates::Unmet]>,
    ) -> bool {
        let mut seen = lock(&self.unmet_gates);
        match unmet {
            None => seen.remove(&deployment_id).is_some(),
            Some(unmet) => {
                let keys: Vec<String> = unmet.iter().map(|u| u.key.clone()).collect();
                seen.insert(deployment_id, keys.clone()) != Some(keys)
            }
        }
    }
}
