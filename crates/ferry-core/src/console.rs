//! What the web console offers a person on a deployment's page: which action buttons, from
//! the deployment's state and what the person may do. Pure: the server passes the
//! permission decisions in. The console never relies on hiding a button — every action is
//! judged again by the API's gate — but a button that would be refused is not shown.

use crate::gates::{GateRow, GateState};
use crate::model::DeploymentState;
use crate::rbac::Permission;

/// An action button of the deployment page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    Approve,
    Reject,
    OverrideFreeze,
    Promote,
    PromoteFull,
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Action {
    /// The path segment of the console's form (`/apps/{app}/envs/{env}/{segment}` or
    /// `/deployments/{id}/{segment}`).
    pub fn segment(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::OverrideFreeze => "override",
            Action::Promote => "promote",
            Action::PromoteFull => "promote-full",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Abort => "abort",
            Action::Rollback => "rollback",
        }
    }

    /// The button's label.
    pub fn label(self) -> &'static str {
        match self {
            Action::Approve => "Approve",
            Action::Reject => "Reject",
            Action::OverrideFreeze => "Override the freeze",
            Action::Promote => "Promote to the next step",
            Action::PromoteFull => "Promote fully",
            Action::Pause => "Pause",
            Action::Resume => "Resume",
            Action::Abort => "Abort",
            Action::Rollback => "Roll back",
        }
    }

    /// Whether the form asks for a reason, and whether it must be given.
    pub fn reason(self) -> Reason {
        match self {
            Action::Reject | Action::OverrideFreeze => Reason::Required,
            Action::Approve | Action::Abort | Action::Rollback | Action::Pause => Reason::Optional,
            Action::Promote | Action::PromoteFull | Action::Resume => Reason::None,
        }
    }

    /// Whether it acts on the deployment (`/deployments/{id}/…`) rather than on its
    /// environment.
    pub fn on_deployment(self) -> bool {
        matches!(
            self,
            Action::Approve | Action::Reject | Action::OverrideFreeze
        )
    }

    /// The permission the API's gate judges it by.
    pub fn permission(self) -> Permission {
        match self {
            Action::Approve | Action::Reject => Permission::Approve,
            Action::OverrideFreeze => Permission::OverrideFreeze,
            Action::Promote | Action::PromoteFull | Action::Pause | Action::Resume => {
                Permission::Promote
            }
            Action::Abort => Permission::Abort,
            Action::Rollback => Permission::Rollback,
        }
    }

    /// The action named by a form's path segment.
    pub fn from_segment(segment: &str) -> Option<Action> {
        ALL.into_iter().find(|a| a.segment() == segment)
    }
}

const ALL: [Action; 9] = [
    Action::Approve,
    Action::Reject,
    Action::OverrideFreeze,
    Action::Promote,
    Action::PromoteFull,
    Action::Pause,
    Action::Resume,
    Action::Abort,
    Action::Rollback,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    None,
    Optional,
    Required,
}

/// What the page knows about the deployment.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub state: DeploymentState,
    /// `user:alice`, `token:ci`: who asked for it.
    pub requested_by: &'a str,
    /// It is the environment's latest deployment (commands act on the latest one).
    pub latest: bool,
    /// A progressive rollout (canary, blue/green) is under way: `Some(paused)`.
    pub rollout_paused: Option<bool>,
    /// The environment has a version to roll back to.
    pub can_roll_back: bool,
    pub gates: &'a [GateRow],
}

/// The buttons `viewer` (the person, `user:NAME`) gets, given `may(permission)` on the
/// deployment's app and environment. The requester never approves their own deployment.
pub fn actions(facts: Facts<'_>, viewer: &str, may: impl Fn(Permission) -> bool) -> Vec<Action> {
    let mut out = Vec::new();
    let waiting_at_gates = matches!(
        facts.state,
        DeploymentState::AwaitingApproval | DeploymentState::Blocked
    );
    if waiting_at_gates && facts.latest {
        if !facts.requested_by.eq_ignore_ascii_case(viewer) {
            out.extend([Action::Approve, Action::Reject]);
        }
        let frozen = facts
            .gates
            .iter()
            .any(|g| g.gate == "freeze" && g.state == GateState::Waiting);
        if frozen {
            out.push(Action::OverrideFreeze);
        }
    }
    if facts.latest && facts.state == DeploymentState::Progressing {
        if let Some(paused) = facts.rollout_paused {
            out.extend([Action::Promote, Action::PromoteFull]);
            out.push(if paused {
                Action::Resume
            } else {
                Action::Pause
            });
        }
        out.push(Action::Abort);
    }
    if facts.latest && facts.can_roll_back && !facts.state.is_waiting() {
        out.push(Action::Rollback);
    }
    out.retain(|a| may(a.permission()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(state: DeploymentState, gates: &[GateRow]) -> Facts<'_> {
        Facts {
            state,
            requested_by: "user:alice",
            latest: true,
            rollout_paused: None,
            can_roll_back: true,
            gates,
        }
    }

    fn freeze(state: GateState) -> GateRow {
        GateRow {
            gate: "freeze".into(),
            state,
            detail: "frozen until Monday".into(),
            key: "freeze".into(),
        }
    }

    #[test]
    fn the_requester_gets_no_approve_button_another_approver_does() {
        let f = facts(DeploymentState::AwaitingApproval, &[]);
        let all = |_| true;
        assert_eq!(actions(f, "user:alice", all), vec![]);
        assert_eq!(
            actions(f, "user:bob", all),
            vec![Action::Approve, Action::Reject]
        );
        assert_eq!(actions(f, "USER:ALICE", all), vec![]);
    }

    #[test]
    fn a_viewer_gets_nothing() {
        let gates = [freeze(GateState::Waiting)];
        let viewer = |p: Permission| p.is_read_only();
        for state in DeploymentState::ALL {
            let mut f = facts(state, &gates);
            f.rollout_paused = Some(false);
            assert!(actions(f, "user:vic", viewer).is_empty(), "{state}");
        }
    }

    #[test]
    fn a_canary_offers_promote_pause_abort_then_resume() {
        let mut f = facts(DeploymentState::Progressing, &[]);
        f.rollout_paused = Some(false);
        let dev = |p: Permission| p != Permission::Approve;
        assert_eq!(
            actions(f, "user:dan", dev),
            vec![
                Action::Promote,
                Action::PromoteFull,
                Action::Pause,
                Action::Abort,
                Action::Rollback
            ]
        );
        f.rollout_paused = Some(true);
        assert!(actions(f, "user:dan", dev).contains(&Action::Resume));
        f.latest = false;
        assert!(actions(f, "user:dan", dev).is_empty());
    }

    #[test]
    fn a_freeze_override_only_while_the_freeze_holds_and_for_who_may() {
        let waiting = [freeze(GateState::Waiting)];
        let lifted = [freeze(GateState::Overridden)];
        let f = facts(DeploymentState::Blocked, &waiting);
        assert!(actions(f, "user:bob", |_| true).contains(&Action::OverrideFreeze));
        assert!(
            !actions(f, "user:bob", |p| p != Permission::OverrideFreeze)
                .contains(&Action::OverrideFreeze)
        );
        let f = facts(DeploymentState::Blocked, &lifted);
        assert!(!actions(f, "user:bob", |_| true).contains(&Action::OverrideFreeze));
    }

    #[test]
    fn segments_round_trip() {
        for a in ALL {
            assert_eq!(Action::from_segment(a.segment()), Some(a));
        }
        assert_eq!(Action::from_segment("teardown"), None);
    }
}
