//! Domain vocabulary shared by every layer: deployment and replica states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a deployment is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Accepted, about to start.
    Pending,
    /// Waiting before it may start for approvals only (every other gate holds).
    AwaitingApproval,
    /// Waiting before it may start for a gate nobody can approve: a freeze window, `after`,
    /// a soak, a check (and maybe approvals too).
    Blocked,
    /// Replicas being replaced and traffic moving.
    Progressing,
    /// The new version failed; the previous one is being restored.
    RollingBack,
    /// Terminal: the new version serves all traffic.
    Succeeded,
    /// Terminal: the new version failed and the previous version serves all traffic again.
    RolledBack,
    /// Terminal: failed with nothing to restore (e.g. the very first deployment).
    Failed,
    /// Terminal: replaced by a newer deployment request.
    Superseded,
    /// Terminal: stopped by hand (`ferry abort`); the previous version serves all traffic.
    Aborted,
    /// Terminal: an approver rejected it before it started.
    Rejected,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 11] = [
        DeploymentState::Pending,
        DeploymentState::AwaitingApproval,
        DeploymentState::Blocked,
        DeploymentState::Progressing,
        DeploymentState::RollingBack,
        DeploymentState::Succeeded,
        DeploymentState::RolledBack,
        DeploymentState::Failed,
        DeploymentState::Superseded,
        DeploymentState::Aborted,
        DeploymentState::Rejected,
    ];

    /// Not started yet: pending, or held at its gates.
    pub fn is_waiting(self) -> bool {
        matches!(
            self,
            DeploymentState::Pending | DeploymentState::AwaitingApproval | DeploymentState::Blocked
        )
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded
                | DeploymentState::RolledBack
                | DeploymentState::Failed
                | DeploymentState::Superseded
                | DeploymentState::Aborted
                | DeploymentState::Rejected
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Pending => "pending",
            DeploymentState::AwaitingApproval => "awaiting-approval",
            DeploymentState::Blocked => "blocked",
            DeploymentState::Progressing => "progressing",
            DeploymentState::RollingBack => "rolling-back",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::RolledBack => "rolled-back",
            DeploymentState::Failed => "failed",
            DeploymentState::Superseded => "superseded",
            DeploymentState::Aborted => "aborted",
            DeploymentState::Rejected => "rejected",
        }
    }
}

impl fmt::Display for DeploymentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeploymentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeploymentState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown deployment state {s:?}"))
    }
}

/// Lifecycle of one replica process as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Process started, health not yet confirmed.
    Starting,
    Healthy,
    /// Was healthy, now failing its health check.
    Unhealthy,
    /// Being stopped (SIGTERM sent).
    Stopping,
    /// Exited; may be restarted with backoff.
    Exited,
    /// Stopped on purpose; will not come back.
    Stopped,
}

impl ReplicaState {
    pub const ALL: [ReplicaState; 6] = [
        ReplicaState::Starting,
        ReplicaState::Healthy,
        ReplicaState::Unhealthy,
        ReplicaState::Stopping,
        ReplicaState::Exited,
        ReplicaState::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Healthy => "healthy",
            ReplicaState::Unhealthy => "unhealthy",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Exited => "exited",
            ReplicaState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReplicaState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReplicaState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown replica state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_text_and_json() {
        for state in DeploymentState::ALL {
            assert_eq!(state.as_str().parse::<DeploymentState>().unwrap(), state);
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
        for state in ReplicaState::ALL {
            assert_eq!(state.as_str().parse::<ReplicaState>().unwrap(), state);
        }
    }
}
