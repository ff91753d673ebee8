//! The way back of a canary or blue/green rollout: all traffic is on the stable version
//! already (the route table gives the new version weight 0 while rolling back); restore the
//! stable replicas, drain the new ones, and end once the proxy confirmed the stable-only
//! table.

use ferry_core::model::DeploymentState;
use ferry_core::rollout::{self, ServiceInput};
use ferry_store::DeploymentRecord;

use super::{Effect, Transition};

/// What the step sees of a progressive deployment that is rolling back.
pub(in crate::controller) struct RollingBack<'a> {
    pub deployment: &'a DeploymentRecord,
    pub stable: &'a str,
    pub services: &'a [ServiceInput],
    /// The proxy acknowledged a table that sends everything to `stable`.
    pub routed_to_stable: bool,
    /// Who aborted it (`ferry abort`), if a person did.
    pub aborted_by: Option<&'a str>,
}

/// Replica moves towards `stable` at its full count first; then, once nothing else runs and
/// the proxy routes only to it, `rolled-back` (or `aborted`) with `stable` current.
pub(in crate::controller) fn roll_back(s: &RollingBack) -> Vec<Effect> {
    let mut actions = Vec::new();
    let mut converged = true;
    for service in s.services {
        let want = vec![(s.stable.to_string(), service.desired)];
        let (moves, done) = rollout::reconcile_sets(service, &want);
        converged &= done;
        actions.extend(moves);
    }
    let mut effects = Vec::new();
    if !actions.is_empty() {
        effects.push(Effect::Replicas(actions));
    }
    if converged && s.routed_to_stable {
        let stable = s.stable;
        let (state, message) = match s.aborted_by {
            Some(by) => (
                DeploymentState::Aborted,
                format!("aborted by {by}; {stable} serves all traffic"),
            ),
            None => (
                DeploymentState::RolledBack,
                format!("{stable} restored and serving all traffic"),
            ),
        };
        effects.push(
            Transition::to(state, message)
                .because(s.deployment.reason.clone())
                .current(Some(stable.to_string()))
                .into(),
        );
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use crate::controller::steps::maintain::tests::{replica, web};
    use ferry_core::model::{DeploymentKind, ReplicaState};
    use ferry_core::rollout::Action;

    fn plan(services: &[ServiceInput], routed: bool, aborted_by: Option<&str>) -> Vec<Effect> {
        let mut d = deployment(DeploymentState::RollingBack, DeploymentKind::Deploy);
        d.reason = Some("analysis failed: error rate 9%".into());
        roll_back(&RollingBack {
            deployment: &d,
            stable: "1.0",
            services,
            routed_to_stable: routed,
            aborted_by,
        })
    }

    #[test]
    fn the_new_replicas_are_drained_and_the_stable_ones_restored_before_it_ends() {
        let services = web(vec![
            replica("s1", "1.0", ReplicaState::Healthy, false),
            replica("c1", "2.0", ReplicaState::Healthy, false),
        ]);
        let effects = plan(&services, true, None);
        let [Effect::Replicas(actions)] = effects.as_slice() else {
            panic!("only replica moves while anything but 1.0 runs: {effects:?}");
        };
        assert!(actions.contains(&Action::Start {
            service: "web".into(),
            version: "1.0".into(),
            count: 1
        }));
        assert!(actions.contains(&Action::Drain {
            service: "web".into(),
            ids: vec!["c1".into()]
        }));
    }

    #[test]
    fn it_ends_only_when_converged_and_routed_to_the_stable_version() {
        let stable = web(vec![
            replica("s1", "1.0", ReplicaState::Healthy, false),
            replica("s2", "1.0", ReplicaState::Healthy, false),
        ]);
        assert_eq!(
            plan(&stable, false, None),
            Vec::new(),
            "the table not yet acknowledged"
        );
        for (aborted_by, to, message) in [
            (
                None,
                DeploymentState::RolledBack,
                "1.0 restored and serving all traffic",
            ),
            (
                Some("user:bob"),
                DeploymentState::Aborted,
                "aborted by user:bob; 1.0 serves all traffic",
            ),
        ] {
            let effects = plan(&stable, true, aborted_by);
            let [Effect::Transition(t)] = effects.as_slice() else {
                panic!("one transition: {effects:?}");
            };
            assert_eq!((t.to, t.message.as_str()), (to, message));
            assert_eq!(t.current.as_deref(), Some("1.0"));
            assert_eq!(
                t.reason.as_deref(),
                Some("analysis failed: error rate 9%"),
                "keeps why it rolled back"
            );
        }
    }
}
