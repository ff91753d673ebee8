//! Which concern acts on an environment next, in one pass: a pure function of what is
//! stored (the deployment running there, if any: its state and kind; the environment's
//! strategy; whether a redeploy has anything to change) and of what this pass learned so
//! far (the last concern that let the deployment go on, the rollout's verdict).
//!
//! The shell (`reconcile_env`) asks [`next_concern`], runs that concern's reconciler (its
//! facts read, its pure step, the executor), and asks again while the concern lets the
//! deployment go on; a concern that holds it (gates unmet, a hook running, replicas moved,
//! the table not yet acknowledged) ends the pass. So every order the invariants need is
//! written here, once, and table-tested: gates before the pre_deploy hooks before anything
//! moves; the post_deploy hooks before the bake before success; a failed rollout straight
//! to its way back.

use ferry_core::manifest::Strategy;
use ferry_core::model::DeploymentState;
use ferry_core::rollout::Verdict;
use ferry_store::DeploymentRecord;

use crate::controller::strategy::progressive;

/// A reconciler of one concern of an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::controller) enum Concern {
    /// No deployment runs: the `down` commands and on_rollback hooks of one that was rolled
    /// back (once).
    AfterRollback,
    /// No deployment runs: the environment kept at its current version.
    Maintain,
    /// A redeploy with nothing to change ends before its gates (`steps::rollout`).
    NothingToRedeploy,
    /// May a waiting deployment start (`steps::gates`)?
    Gates,
    /// Its pre_deploy hooks, to completion, before anything moves.
    PreDeploy,
    /// A canary or blue/green pass, forward or back (`steps::progressive`).
    Progressive,
    /// A rolling/recreate deployment (or a redeploy) starts: `progressing`.
    Start,
    /// The rolling/recreate replica moves towards the target version, and their verdict.
    Rollout,
    /// The post_deploy smoke tests of a converged rolling rollout.
    PostDeploy,
    /// The watch after convergence (`steps::bake`).
    Bake,
    /// What the verdict makes of the deployment (`steps::rollout::finish`).
    Finish,
    /// Nothing more this pass.
    Done,
}

/// What [`next_concern`] looks at.
pub(in crate::controller) struct Snapshot<'a> {
    /// The deployment running in the environment (not terminal), if any.
    pub deployment: Option<&'a DeploymentRecord>,
    /// The environment's strategy.
    pub strategy: &'a Strategy,
    /// A redeploy whose plan changes nothing (read by the shell; `false` for other kinds).
    pub nothing_to_redeploy: bool,
    /// The last concern of this pass that let the deployment go on (`None`: the pass
    /// begins).
    pub after: Option<Concern>,
    /// The rollout's verdict, once [`Concern::Rollout`] or [`Concern::PostDeploy`] gave one.
    pub verdict: Option<&'a Verdict>,
}

/// The concern that acts next in this pass.
pub(in crate::controller) fn next_concern(s: &Snapshot) -> Concern {
    use Concern::*;
    let Some(d) = s.deployment else {
        return match s.after {
            None => AfterRollback,
            Some(AfterRollback) => Maintain,
            Some(_) => Done,
        };
    };
    let progressive = progressive(d, s.strategy);
    if d.state.is_waiting() {
        return match s.after {
            None if s.nothing_to_redeploy => NothingToRedeploy,
            None => Gates,
            Some(Gates) => PreDeploy,
            // Every strategy starts the same way, held at its gates or not: `progressing`
            // with its "rollout started" line; a canary's first step comes next pass.
            Some(PreDeploy) => Start,
            Some(_) => Done,
        };
    }
    let running = matches!(
        d.state,
        DeploymentState::Progressing | DeploymentState::RollingBack
    );
    if !running {
        return Done;
    }
    let forward =
        matches!(s.verdict, Some(Verdict::Converged)) && d.state == DeploymentState::Progressing;
    match s.after {
        None if progressive => Progressive,
        // Rolling back with nothing to go back to: nothing to do (it fails on its own).
        None if d.state == DeploymentState::RollingBack && d.previous_version.is_none() => Done,
        None => Rollout,
        // A new version that converged (the proxy confirmed it) is smoke-tested, then
        // baked; a failed one, or one restored on the way back, is finished at once.
        Some(Rollout) if forward => PostDeploy,
        Some(PostDeploy) if forward => Bake,
        Some(Rollout | PostDeploy | Bake) if s.verdict.is_some() => Finish,
        Some(_) => Done,
    }
}

#[cfg(test)]
mod tests {
    use super::Concern::*;
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use ferry_core::model::DeploymentKind;
    use ferry_core::model::DeploymentState as S;

    fn strategy(json: serde_json::Value) -> Strategy {
        serde_json::from_value(json).expect("strategy")
    }

    fn strategies() -> [(&'static str, Strategy); 4] {
        [
            ("rolling", Strategy::default()),
            ("recreate", strategy(serde_json::json!({ "recreate": {} }))),
            (
                "canary",
                strategy(serde_json::json!({ "canary": { "steps": [{ "weight": 20 }] } })),
            ),
            (
                "blue_green",
                strategy(serde_json::json!({ "blue_green": {} })),
            ),
        ]
    }

    /// The concerns of one pass in which every concern lets the deployment go on, the
    /// rollout (and then its smoke tests) judging `verdict`.
    fn chain(
        d: Option<&DeploymentRecord>,
        strategy: &Strategy,
        nothing_to_redeploy: bool,
        verdict: &Verdict,
    ) -> Vec<Concern> {
        let mut after = None;
        let mut judged = None;
        let mut chain = Vec::new();
        loop {
            let next = next_concern(&Snapshot {
                deployment: d,
                strategy,
                nothing_to_redeploy,
                after,
                verdict: judged,
            });
            chain.push(next);
            if next == Done {
                return chain;
            }
            assert!(chain.len() < 12, "a pass ends: {chain:?}");
            if next == Rollout {
                judged = Some(verdict);
            }
            after = Some(next);
        }
    }

    #[test]
    fn an_idle_environment_settles_a_rollback_then_keeps_its_version() {
        for (_, strategy) in strategies() {
            assert_eq!(
                chain(None, &strategy, false, &Verdict::Converged),
                [AfterRollback, Maintain, Done]
            );
        }
    }

    /// Every active state × kind × strategy × first deployment or not × verdict: the
    /// concerns of a pass, in order.
    #[test]
    fn every_state_kind_and_strategy_has_its_order_of_concerns() {
        let failed = Verdict::Failed("web 2.0: never healthy".into());
        let active = S::ALL.iter().filter(|s| !s.is_terminal());
        let mut rows = 0;
        for &state in active {
            for kind in DeploymentKind::ALL {
                for (name, strategy) in strategies() {
                    for first in [false, true] {
                        for verdict in [&Verdict::Converged, &failed] {
                            let mut d = deployment(state, kind);
                            if first {
                                d.previous_version = None;
                            }
                            let steps = kind != DeploymentKind::Rollback
                                && !first
                                && matches!(name, "canary" | "blue_green");
                            let converged = verdict == &Verdict::Converged;
                            let want: Vec<Concern> = match state {
                                // Held at its gates or not, it starts (and says so)
                                // before a canary's first step.
                                S::Pending | S::AwaitingApproval | S::Blocked => {
                                    vec![Gates, PreDeploy, Start, Done]
                                }
                                S::Progressing | S::RollingBack if steps => {
                                    vec![Progressive, Done]
                                }
                                S::RollingBack if first => vec![Done],
                                S::Progressing if converged => {
                                    vec![Rollout, PostDeploy, Bake, Finish, Done]
                                }
                                S::Progressing | S::RollingBack => vec![Rollout, Finish, Done],
                                other => panic!("{other} is not active"),
                            };
                            let what = format!(
                                "{state} {} {name} first={first} {verdict:?}",
                                kind.as_str()
                            );
                            assert_eq!(chain(Some(&d), &strategy, false, verdict), want, "{what}");
                            rows += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 5 * 6 * 4 * 2 * 2, "every combination");
    }

    #[test]
    fn a_redeploy_with_nothing_to_change_ends_before_its_gates_only_while_waiting() {
        for state in [S::Pending, S::AwaitingApproval, S::Blocked] {
            let d = deployment(state, DeploymentKind::Redeploy);
            assert_eq!(
                chain(Some(&d), &Strategy::default(), true, &Verdict::Converged),
                [NothingToRedeploy, Done],
                "{state}"
            );
        }
        let d = deployment(S::Progressing, DeploymentKind::Redeploy);
        assert_eq!(
            chain(Some(&d), &Strategy::default(), true, &Verdict::Converged)[0],
            Rollout
        );
    }

    /// A concern that holds the deployment ends the pass: the shell stops asking. Asked
    /// again with what it learned, the function never goes back to an earlier concern.
    #[test]
    fn a_rollout_without_a_verdict_or_smoke_tests_without_one_end_the_pass_there() {
        let d = deployment(S::Progressing, DeploymentKind::Deploy);
        let rolling = Strategy::default();
        let ask = |after, verdict| {
            next_concern(&Snapshot {
                deployment: Some(&d),
                strategy: &rolling,
                nothing_to_redeploy: false,
                after,
                verdict,
            })
        };
        assert_eq!(
            ask(Some(Rollout), None),
            Done,
            "replicas moved, nothing judged"
        );
        assert_eq!(ask(Some(PostDeploy), None), Done);
        assert_eq!(ask(Some(Finish), Some(&Verdict::Converged)), Done);
        assert_eq!(ask(Some(Start), None), Done);
    }
}
