//! What the hooks' outcomes make of a deployment: a failed pre_deploy phase fails it with
//! nothing moved; no automatic rollback goes back past an irreversible migration (the new
//! version is kept serving and the deployment fails forward).

use ferry_core::model::{DeploymentKind, DeploymentState};
use ferry_core::rollout::Verdict;
use ferry_store::DeploymentRecord;

use super::{Effect, Transition};
use crate::hooks::PhaseStatus;

/// Whether a rolling/recreate rollout that converged runs its post_deploy hooks before it
/// succeeds: a new version going forward does; a rollback, or a deployment on its way
/// back, does not.
pub(in crate::controller) fn runs_post_deploy(deployment: &DeploymentRecord) -> bool {
    deployment.kind != DeploymentKind::Rollback && deployment.state == DeploymentState::Progressing
}

/// What the post_deploy phase makes of a converged rollout: `None` while a hook runs;
/// done, it goes on; failed, the version is judged failed (it rolls back, unless past an
/// irreversible migration: see [`never_back_past`]).
pub(in crate::controller) fn post_deploy(status: &PhaseStatus) -> Option<Verdict> {
    match status {
        PhaseStatus::Done => Some(Verdict::Converged),
        PhaseStatus::Waiting => None,
        PhaseStatus::Failed(reason) => Some(Verdict::Failed(reason.clone())),
    }
}

/// A pre_deploy hook failed for good: `failed`, nothing was changed.
pub(in crate::controller) fn pre_deploy_failed(
    deployment: &DeploymentRecord,
    reason: &str,
) -> Transition {
    let serving = deployment
        .previous_version
        .as_deref()
        .map(|v| format!("; {v} keeps serving"))
        .unwrap_or_default();
    Transition::to(
        DeploymentState::Failed,
        format!("{reason}; nothing was changed{serving}"),
    )
    .because(Some(reason.to_string()))
}

/// The deployment ends `failed` with the new version current and serving, instead of
/// rolling back past `migration` (irreversible) for `reason`.
pub(in crate::controller) fn fail_forward(
    deployment: &DeploymentRecord,
    migration: &str,
    reason: &str,
) -> Transition {
    let reason = format!(
        "cannot roll back automatically: migration {migration} is irreversible; {} keeps \
         serving ({reason})",
        deployment.version
    );
    Transition::to(DeploymentState::Failed, reason.clone())
        .because(Some(reason))
        .current(Some(deployment.version.clone()))
}

/// Whether a plan sends its deployment back (a transition to `rolling-back`).
pub(in crate::controller) fn rolls_back(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Transition(t) if t.to == DeploymentState::RollingBack))
}

/// `effects` with every way back replaced by [`fail_forward`], for a deployment whose
/// pre_deploy hooks ran the irreversible `migration`.
pub(in crate::controller) fn never_back_past(
    deployment: &DeploymentRecord,
    migration: &str,
    effects: Vec<Effect>,
) -> Vec<Effect> {
    effects
        .into_iter()
        .map(|effect| match effect {
            Effect::Transition(t) if t.to == DeploymentState::RollingBack => {
                let reason = t.reason.unwrap_or(t.message);
                fail_forward(deployment, migration, &reason).into()
            }
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use ferry_core::model::{DeploymentKind, EventKind};

    #[test]
    fn the_post_deploy_phase_holds_or_judges_a_converged_rollout() {
        use DeploymentState as S;
        for (state, kind, runs) in [
            (S::Progressing, DeploymentKind::Deploy, true),
            (S::Progressing, DeploymentKind::Redeploy, true),
            (S::Progressing, DeploymentKind::Rollback, false),
            (S::RollingBack, DeploymentKind::Deploy, false),
        ] {
            let d = deployment(state, kind);
            assert_eq!(runs_post_deploy(&d), runs, "{state} {kind:?}");
        }
        assert_eq!(post_deploy(&PhaseStatus::Done), Some(Verdict::Converged));
        assert_eq!(post_deploy(&PhaseStatus::Waiting), None);
        assert_eq!(
            post_deploy(&PhaseStatus::Failed("smoke: 503".into())),
            Some(Verdict::Failed("smoke: 503".into()))
        );
    }

    #[test]
    fn a_failed_pre_deploy_phase_fails_the_deployment_saying_what_serves() {
        let mut d = deployment(DeploymentState::Pending, DeploymentKind::Deploy);
        let t = pre_deploy_failed(&d, "hook migrate failed: exit 1");
        assert_eq!(t.to, DeploymentState::Failed);
        assert_eq!(t.reason.as_deref(), Some("hook migrate failed: exit 1"));
        assert_eq!(
            t.message,
            "hook migrate failed: exit 1; nothing was changed; 1.0 keeps serving"
        );
        assert_eq!(t.current, None);
        d.previous_version = None;
        let t = pre_deploy_failed(&d, "hook migrate failed: exit 1");
        assert_eq!(
            t.message,
            "hook migrate failed: exit 1; nothing was changed"
        );
    }

    #[test]
    fn no_way_back_goes_past_an_irreversible_migration() {
        let d = deployment(DeploymentState::Progressing, DeploymentKind::Deploy);
        let note = Effect::Event {
            kind: EventKind::Analysis,
            message: "error_rate 9%".into(),
        };
        let back = Transition::to(DeploymentState::RollingBack, "all traffic back to 1.0 now")
            .because(Some("analysis failed".into()));
        let plan = vec![note.clone(), back.into()];
        assert!(rolls_back(&plan));
        let kept = never_back_past(&d, "drop-column", plan);
        assert!(!rolls_back(&kept));
        let [first, Effect::Transition(t)] = kept.as_slice() else {
            panic!("the note, then one transition: {kept:?}");
        };
        assert_eq!(first, &note, "the rest of the plan is kept");
        assert_eq!(t.to, DeploymentState::Failed);
        assert_eq!(
            t.current.as_deref(),
            Some("2.0"),
            "the new version stays current"
        );
        assert_eq!(
            t.reason.as_deref(),
            Some(
                "cannot roll back automatically: migration drop-column is irreversible; 2.0 \
                 keeps serving (analysis failed)"
            )
        );
        // Anything else goes through untouched.
        let done = vec![Effect::from(Transition::to(
            DeploymentState::Succeeded,
            "done",
        ))];
        assert_eq!(never_back_past(&d, "drop-column", done.clone()), done);
    }
}
