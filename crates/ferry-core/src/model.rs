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

/// What kind of request created a deployment (its `kind`, as stored and answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentKind {
    /// `ferry deploy` of a version.
    Deploy,
    /// The serving version again with its current configuration (`ferry redeploy`, or a
    /// deploy or retry of the version that serves).
    Redeploy,
    /// Back to a version that succeeded before (`ferry rollback`): no gates, no steps.
    Rollback,
    /// An aborted, rolled-back or failed deployment started again (`ferry retry`).
    Retry,
    /// `ferry promote --from --to`.
    Promote,
    /// The auto-promotion pass (`gates: { auto_promote: true }`).
    AutoPromote,
}

impl DeploymentKind {
    pub const ALL: [DeploymentKind; 6] = [
        DeploymentKind::Deploy,
        DeploymentKind::Redeploy,
        DeploymentKind::Rollback,
        DeploymentKind::Retry,
        DeploymentKind::Promote,
        DeploymentKind::AutoPromote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Redeploy => "redeploy",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::Retry => "retry",
            DeploymentKind::Promote => "promote",
            DeploymentKind::AutoPromote => "auto-promote",
        }
    }
}

impl fmt::Display for DeploymentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for DeploymentKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeploymentKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown deployment kind {s:?}"))
    }
}

/// Lets tests and filters compare with the stored name.
impl PartialEq<&str> for DeploymentKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// What a line of a deployment's timeline is about (its `kind`, as stored and answered):
/// clients branch on this, never on the wording of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A state transition; the message starts with the new state (`succeeded: …`).
    State,
    /// A person asked a running rollout for promote, pause or resume.
    #[serde(rename = "request")]
    CommandRequested,
    /// The controller applied such a request (the rollout moved, paused or resumed).
    #[serde(rename = "command")]
    CommandApplied,
    /// A replica started, became healthy or unhealthy, exited, drained or stopped.
    Replica,
    Health,
    /// The traffic split changed, or what clients saw during the rollout.
    Traffic,
    /// A gate passed (one line per gate).
    Gate,
    /// What the deployment waits for at its gates changed.
    Gates,
    Approval,
    /// A freeze override.
    Override,
    Bake,
    Hook,
    Promotion,
    Analysis,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        EventKind::State,
        EventKind::CommandRequested,
        EventKind::CommandApplied,
        EventKind::Replica,
        EventKind::Health,
        EventKind::Traffic,
        EventKind::Gate,
        EventKind::Gates,
        EventKind::Approval,
        EventKind::Override,
        EventKind::Bake,
        EventKind::Hook,
        EventKind::Promotion,
        EventKind::Analysis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::State => "state",
            EventKind::CommandRequested => "request",
            EventKind::CommandApplied => "command",
            EventKind::Replica => "replica",
            EventKind::Health => "health",
            EventKind::Traffic => "traffic",
            EventKind::Gate => "gate",
            EventKind::Gates => "gates",
            EventKind::Approval => "approval",
            EventKind::Override => "override",
            EventKind::Bake => "bake",
            EventKind::Hook => "hook",
            EventKind::Promotion => "promotion",
            EventKind::Analysis => "analysis",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`: the CLI aligns timeline columns with `{:<8}`.
        f.pad(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown event kind {s:?}"))
    }
}

/// Lets tests and filters compare with the stored name.
impl PartialEq<&str> for EventKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
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
        assert_eq!(format!("{:<8}|", EventKind::Bake), "bake    |");
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>().unwrap(), kind);
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
        for kind in DeploymentKind::ALL {
            assert_eq!(kind.as_str().parse::<DeploymentKind>().unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("promote-by-hand".parse::<DeploymentKind>().is_err());
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
