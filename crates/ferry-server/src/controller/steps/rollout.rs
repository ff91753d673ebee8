//! The transitions of a rolling (or recreate) deployment — and of a redeploy — around the
//! replica moves the core decides (`ferry_core::rollout::reconcile`): how it starts, and
//! what a verdict makes of it.

use ferry_core::model::DeploymentState;
use ferry_core::rollout::{self, Verdict};
use ferry_store::DeploymentRecord;

use super::Transition;
use crate::config::Redeploy;

use crate::controller::strategy::target_or;

/// A redeploy with nothing to change ends before its gates: no gate, hook or replica is
/// touched. `None`: there is something to do (or it has started already).
pub(in crate::controller) fn nothing_to_redeploy(
    deployment: &DeploymentRecord,
    redeploy: &Redeploy,
) -> Option<Transition> {
    (redeploy.is_empty() && deployment.state.is_waiting()).then(|| {
        Transition::to(
            DeploymentState::Succeeded,
            format!(
                "nothing to redeploy: {} already runs with this configuration and replica \
                 count; no gate, hook or replica was touched",
                deployment.version
            ),
        )
        .current(Some(deployment.version.clone()))
    })
}

/// A deployment that passed its gates and pre_deploy hooks starts: `progressing`, saying
/// how it runs (`run`, e.g. `rolling, max surge 1, max unavailable 0`). `None`: it has
/// started already.
pub(in crate::controller) fn start(
    deployment: &DeploymentRecord,
    run: &str,
    redeploy: Option<&Redeploy>,
) -> Option<Transition> {
    if !deployment.state.is_waiting() {
        return None;
    }
    let message = match (redeploy, &deployment.previous_version) {
        (Some(plan), _) => format!(
            "redeploy of {} started ({run}): {}",
            deployment.version,
            plan.describe()
        ),
        (None, Some(previous)) => {
            format!(
                "rollout started: {previous} -> {} ({run})",
                deployment.version
            )
        }
        (None, None) => format!("rollout started: {} ({run})", deployment.version),
    };
    Some(Transition::to(DeploymentState::Progressing, message))
}

/// What a verdict makes of a running rolling deployment: succeeded, rolling back, rolled
/// back (or aborted, when a person aborted it), failed. `baking`: it was in its bake;
/// `aborted_by`: who aborted it; `redeploy`: it replaces configuration, not a version.
pub(in crate::controller) fn finish(
    deployment: &DeploymentRecord,
    verdict: &Verdict,
    baking: bool,
    aborted_by: Option<&str>,
    redeploy: bool,
) -> Option<Transition> {
    let (state, reason) = rollout::next_state(
        deployment.state,
        verdict,
        deployment.previous_version.is_some(),
    )?;
    let current = match state {
        DeploymentState::Succeeded => Some(deployment.version.clone()),
        DeploymentState::RolledBack => deployment.previous_version.clone(),
        _ => None,
    };
    let message = match state {
        DeploymentState::RollingBack if baking => format!(
            "rolling back to {} during the bake: {reason}",
            target_or(&deployment.previous_version)
        ),
        DeploymentState::RollingBack => format!(
            "rolling back to {}: {reason}",
            target_or(&deployment.previous_version)
        ),
        _ => reason.clone(),
    };
    let reason = match state {
        DeploymentState::RollingBack | DeploymentState::Failed => Some(reason),
        _ => deployment.reason.clone(),
    };
    let (state, message) = match (state, aborted_by) {
        (DeploymentState::RolledBack, Some(by)) => (
            DeploymentState::Aborted,
            format!("aborted by {by}; previous version restored"),
        ),
        // config: a failed redeploy keeps the replicas that run the old configuration.
        (DeploymentState::RolledBack, None) if redeploy => (
            DeploymentState::RolledBack,
            "previous configuration kept: its replicas serve all traffic".to_string(),
        ),
        (state, _) => (state, message),
    };
    Some(
        Transition::to(state, message)
            .because(reason)
            .current(current),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use ferry_core::model::DeploymentKind;
    use ferry_core::model::DeploymentState as S;

    fn redeploy(empty: bool) -> Redeploy {
        let mut plan = Redeploy::default();
        if !empty {
            plan.stale.insert("shop.production.web.2.0.abcdef".into());
            plan.changes.push("LOG_LEVEL".into());
        }
        plan
    }

    #[test]
    fn a_redeploy_with_nothing_to_change_succeeds_before_its_gates() {
        for state in [S::Pending, S::AwaitingApproval, S::Blocked] {
            let d = deployment(state, DeploymentKind::Redeploy);
            let t = nothing_to_redeploy(&d, &redeploy(true)).expect("ends");
            assert_eq!(t.to, S::Succeeded);
            assert_eq!(t.current.as_deref(), Some("2.0"));
            assert!(
                t.message.starts_with("nothing to redeploy: 2.0"),
                "{}",
                t.message
            );
            assert_eq!(nothing_to_redeploy(&d, &redeploy(false)), None);
        }
        for state in [S::Progressing, S::RollingBack] {
            let d = deployment(state, DeploymentKind::Redeploy);
            assert_eq!(nothing_to_redeploy(&d, &redeploy(true)), None, "{state}");
        }
    }

    #[test]
    fn a_deployment_starts_once_saying_how_it_runs() {
        let run = "rolling, max surge 1, max unavailable 0";
        let mut first = deployment(S::Pending, DeploymentKind::Deploy);
        first.previous_version = None;
        let cases = [
            (
                deployment(S::Blocked, DeploymentKind::Deploy),
                None,
                "rollout started: 1.0 -> 2.0 (rolling, max surge 1, max unavailable 0)",
            ),
            (
                first,
                None,
                "rollout started: 2.0 (rolling, max surge 1, max unavailable 0)",
            ),
            (
                deployment(S::AwaitingApproval, DeploymentKind::Redeploy),
                Some(redeploy(false)),
                "redeploy of 2.0 started (rolling, max surge 1, max unavailable 0): ",
            ),
        ];
        for (d, plan, want) in cases {
            let t = start(&d, run, plan.as_ref()).expect("starts");
            assert_eq!(t.to, S::Progressing);
            assert!(t.message.starts_with(want), "{} / {want}", t.message);
            assert_eq!((t.reason, t.current), (None, None));
        }
        for state in [S::Progressing, S::RollingBack, S::Succeeded] {
            let d = deployment(state, DeploymentKind::Deploy);
            assert_eq!(start(&d, run, None), None, "{state}");
        }
    }

    #[test]
    fn every_verdict_of_a_running_deployment_has_its_transition() {
        let failed = Verdict::Failed("web 2.0: never healthy".into());
        // (state, verdict, baking, aborted_by, redeploy) -> (to, message starts with, current)
        type Case<'a> = (
            S,
            &'a Verdict,
            bool,
            Option<&'a str>,
            bool,
            Option<(S, &'a str, Option<&'a str>)>,
        );
        let cases: [Case; 10] = [
            (
                S::Progressing,
                &Verdict::Converged,
                false,
                None,
                false,
                Some((
                    S::Succeeded,
                    "all replicas healthy and serving",
                    Some("2.0"),
                )),
            ),
            (
                S::Progressing,
                &failed,
                false,
                None,
                false,
                Some((
                    S::RollingBack,
                    "rolling back to 1.0: web 2.0: never healthy",
                    None,
                )),
            ),
            (
                S::Progressing,
                &failed,
                true,
                None,
                false,
                Some((
                    S::RollingBack,
                    "rolling back to 1.0 during the bake: web 2.0",
                    None,
                )),
            ),
            (
                S::RollingBack,
                &Verdict::Converged,
                false,
                None,
                false,
                Some((S::RolledBack, "previous version restored", Some("1.0"))),
            ),
            (
                S::RollingBack,
                &Verdict::Converged,
                false,
                Some("user:bob"),
                false,
                Some((
                    S::Aborted,
                    "aborted by user:bob; previous version restored",
                    Some("1.0"),
                )),
            ),
            (
                S::RollingBack,
                &Verdict::Converged,
                false,
                None,
                true,
                Some((S::RolledBack, "previous configuration kept", Some("1.0"))),
            ),
            (
                S::RollingBack,
                &failed,
                false,
                None,
                false,
                Some((S::Failed, "rollback failed too: web 2.0", None)),
            ),
            (
                S::Progressing,
                &Verdict::Progress(Vec::new()),
                false,
                None,
                false,
                None,
            ),
            (
                S::RollingBack,
                &Verdict::Progress(Vec::new()),
                false,
                None,
                false,
                None,
            ),
            (S::Succeeded, &Verdict::Converged, false, None, false, None),
        ];
        for (state, verdict, baking, aborted_by, redeploy, want) in cases {
            let d = deployment(state, DeploymentKind::Deploy);
            let got = finish(&d, verdict, baking, aborted_by, redeploy);
            let what = format!("{state} {verdict:?} baking {baking} aborted {aborted_by:?}");
            match (got, want) {
                (None, None) => {}
                (Some(t), Some((to, message, current))) => {
                    assert_eq!(t.to, to, "{what}");
                    assert!(t.message.starts_with(message), "{what}: {}", t.message);
                    assert_eq!(t.current.as_deref(), current, "{what}");
                    // A failure keeps its reason; anything else keeps the deployment's.
                    let keeps = matches!(to, S::RollingBack | S::Failed);
                    assert_eq!(t.reason.is_some(), keeps, "{what}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_deployment_with_no_previous_version_fails_instead_of_rolling_back() {
        let mut d = deployment(S::Progressing, DeploymentKind::Deploy);
        d.previous_version = None;
        let t = finish(
            &d,
            &Verdict::Failed("crash loop".into()),
            false,
            None,
            false,
        )
        .expect("a transition");
        assert_eq!(t.to, S::Failed);
        assert_eq!(t.reason.as_deref(), Some("crash loop"));
    }
}
