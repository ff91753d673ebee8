//! A canary or blue/green rollout. Forward ([`forward`]): what one pass of the machine
//! (`ferry_core::progressive::advance`, called by the shell with this pass's measurements)
//! makes of the deployment — its progress persisted (compare-and-set) before the replicas
//! move to match it, the post_deploy hold before traffic first moves, the bake, success or
//! the way back. Back ([`roll_back`]): all traffic is on the stable version already (the
//! route table gives the new version weight 0 while rolling back); restore the stable
//! replicas, drain the new ones, and end once the proxy confirmed the stable-only table.

use ferry_core::analysis::Measurement;
use ferry_core::duration::HumanDuration;
use ferry_core::model::{DeploymentState, EventKind};
use ferry_core::progressive::{self, Outcome, Plan, Progress};
use ferry_core::rollout::{self, Action, ServiceInput};
use ferry_store::DeploymentRecord;

use super::{Effect, Transition, bake};
use crate::hooks::PhaseStatus;
use crate::progressive::Phase;

/// What the forward step sees of a progressive deployment that is progressing.
pub(in crate::controller) struct Forward<'a> {
    pub deployment: &'a DeploymentRecord,
    /// As stored, with a person's pending command if any.
    pub phase: &'a Phase,
    pub plan: &'a Plan,
    /// Where the rollout was (as stored, or its start).
    pub progress: &'a Progress,
    /// Where the machine moved it this pass, and what it made of it.
    pub next: &'a Progress,
    pub outcome: &'a Outcome,
    /// This pass's background measurements, if any (told on the timeline while baking).
    pub background: Option<&'a [Measurement]>,
    pub stable: &'a str,
    pub services: &'a [ServiceInput],
    /// The post_deploy hooks, run by the shell when [`first_move`] says so (else `Done`).
    pub post_deploy: &'a PhaseStatus,
    /// The proxy acknowledged a table that sends everything to the new version.
    pub routed_to_canary: bool,
    /// The bake of the deployment's manifest revision.
    pub bake: Option<HumanDuration>,
    pub now: i64,
}

/// The forward step's answer.
#[derive(Debug)]
pub(in crate::controller) struct Pass {
    pub effects: Vec<Effect>,
    /// The phase after this pass: what the way back stores if a replica move fails.
    pub phase: Phase,
    /// Whether a replica move that fails sends the rollout back (not while the post_deploy
    /// hooks hold the weight at 0: then it is only logged).
    pub judged: bool,
}

/// Whether this pass sends the new version its first traffic: its post_deploy smoke tests
/// (through the preview route) must have passed before.
pub(in crate::controller) fn first_move(
    progress: &Progress,
    next: &Progress,
    outcome: &Outcome,
) -> bool {
    next.weight_bp > 0 && progress.weight_bp == 0 && !matches!(outcome, Outcome::Failed { .. })
}

/// One pass forward: the transition that persists the new progress (saying what changed, or
/// that a person's command was applied), then the replica moves that match it. A failure
/// (of the machine, or of the post_deploy hooks) sends all traffic back to the stable version;
/// a completed rollout bakes, then succeeds once the old replicas are gone and the proxy
/// routes only to the new version.
pub(in crate::controller) fn forward(s: &Forward) -> Pass {
    let canary = s.deployment.version.as_str();
    let mut phase = s.phase.clone();
    let command = phase.command.take();
    let changed = phase.progress.as_ref() != Some(s.next) || command.is_some();
    if first_move(s.progress, s.next, s.outcome) {
        match s.post_deploy {
            PhaseStatus::Done => {}
            // Hold the weight at 0; keep the new replicas the step wants running.
            PhaseStatus::Waiting => {
                return Pass {
                    effects: replicas(moves(s, false)),
                    phase,
                    judged: false,
                };
            }
            PhaseStatus::Failed(reason) => {
                return Pass {
                    effects: vec![back(&phase, s.stable, reason).into()],
                    phase,
                    judged: true,
                };
            }
        }
    }
    phase.progress = Some(s.next.clone());
    let mut effects = Vec::new();
    match s.outcome {
        Outcome::Failed { reason, notes } => {
            // the measurements that failed it, as a step analysis's are
            if !notes.is_empty() {
                effects.push(Effect::Event {
                    kind: EventKind::Analysis,
                    message: notes.join("; "),
                });
            }
            effects.push(back(&phase, s.stable, reason).into());
            return Pass {
                effects,
                phase,
                judged: true,
            };
        }
        Outcome::Completed => {
            // `retired` only once the old processes are gone (drained, then stopped).
            let old_gone = s
                .services
                .iter()
                .all(|service| service.replicas.iter().all(|r| r.version == canary));
            if old_gone && s.routed_to_canary {
                // bake: keep watching (crash loops, health, the background analysis). The
                // phase as stored with this pass's progress: one transition persists both.
                let mut fresh = s.phase.clone();
                fresh.progress = Some(s.next.clone());
                let bake = bake::step(s.deployment, &fresh, s.bake, s.now);
                effects.extend(bake.effects);
                if !bake.baked {
                    if let Some(measured) = s.background {
                        let lines: Vec<String> = measured
                            .iter()
                            .map(|m| {
                                format!("baking: background analysis: {}", progressive::describe(m))
                            })
                            .collect();
                        let lines = lines.join("; ");
                        // The bake begins in this very pass: its transition says it too (a
                        // second one would lose its compare-and-set against the first).
                        match effects.iter_mut().find_map(|e| match e {
                            Effect::Transition(t) => Some(t),
                            _ => None,
                        }) {
                            Some(begins) => {
                                begins.message.push_str("; ");
                                begins.message.push_str(&lines);
                            }
                            None => effects.push(
                                Transition::to(DeploymentState::Progressing, lines)
                                    .phase(&fresh)
                                    .into(),
                            ),
                        }
                    }
                } else {
                    // A rollout that went on without its background verdict says so, on
                    // the timeline and (as the reason) in the change record.
                    let mut message = format!("{canary} serves all traffic; {} retired", s.stable);
                    if let Some(why) = &s.next.unjudged {
                        message.push_str(&format!("; {why}"));
                    }
                    effects.push(
                        Transition::to(DeploymentState::Succeeded, message)
                            .because(s.next.unjudged.clone())
                            .current(Some(canary.to_string()))
                            .phase(&phase)
                            .into(),
                    );
                }
                return Pass {
                    effects,
                    phase,
                    judged: true,
                };
            }
        }
        Outcome::Continue(notes) if changed => {
            let mut message = notes.join("; ");
            if let Some(command) = &command {
                let done = format!("{} by {}", command.name.verb(), command.by);
                message = if message.is_empty() {
                    done
                } else {
                    format!("{done}: {message}")
                };
            }
            if message.is_empty() {
                message = progressive::summary(s.plan, s.next);
            }
            let kind = match command {
                Some(_) => EventKind::CommandApplied,
                None => EventKind::State,
            };
            effects.push(
                Transition::to(DeploymentState::Progressing, message)
                    .phase(&phase)
                    .kind(kind)
                    .into(),
            );
        }
        Outcome::Continue(_) => {}
    }
    // Persisted first (a lost compare-and-set drops these): the replicas follow the progress.
    effects.extend(replicas(moves(s, s.next.retiring_stable)));
    Pass {
        effects,
        phase,
        judged: true,
    }
}

/// The replica moves that match `next`: the new version's share beside the whole stable
/// version, or (`retiring`) the new version alone.
fn moves(s: &Forward, retiring: bool) -> Vec<Action> {
    let canary = &s.deployment.version;
    let mut actions = Vec::new();
    for service in s.services {
        let want = if retiring {
            vec![(canary.clone(), service.desired)]
        } else {
            vec![
                (canary.clone(), s.next.canary_replicas.min(service.desired)),
                (s.stable.to_string(), service.desired),
            ]
        };
        actions.extend(rollout::reconcile_sets(service, &want).0);
    }
    actions
}

fn replicas(actions: Vec<Action>) -> Vec<Effect> {
    if actions.is_empty() {
        Vec::new()
    } else {
        vec![Effect::Replicas(actions)]
    }
}

/// Sends a progressive rollout back to `stable` (`phase`: as it is after this pass): the
/// next route table gives it 100 %.
pub(in crate::controller) fn back(phase: &Phase, stable: &str, reason: &str) -> Transition {
    Transition::to(
        DeploymentState::RollingBack,
        format!("all traffic back to {stable} now: {reason}"),
    )
    .because(Some(reason.to_string()))
    .phase(phase)
}

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
    use crate::progressive::{CommandName, PendingCommand};
    use ferry_core::model::{DeploymentKind, ReplicaState};
    use ferry_core::rollout::Action;
    use std::time::Duration;

    const NOW: i64 = 1_796_551_200_000;

    fn at(weight_bp: u32, canary_replicas: u32) -> Progress {
        Progress {
            weight_bp,
            canary_replicas,
            ..progressive::start(NOW)
        }
    }

    fn stored(progress: &Progress) -> Phase {
        Phase {
            progress: Some(progress.clone()),
            ..Phase::default()
        }
    }

    fn no_plan() -> Plan {
        Plan {
            stages: Vec::new(),
            finale: 0,
            background: None,
            allow_unjudged: false,
        }
    }

    struct Case {
        phase: Phase,
        progress: Progress,
        next: Progress,
        outcome: Outcome,
        services: Vec<ServiceInput>,
        post_deploy: PhaseStatus,
        routed: bool,
        bake: Option<HumanDuration>,
        background: Option<Vec<Measurement>>,
    }

    impl Case {
        fn new(progress: Progress, next: Progress, outcome: Outcome) -> Case {
            Case {
                phase: stored(&progress),
                progress,
                next,
                outcome,
                services: web(vec![
                    replica("s1", "1.0", ReplicaState::Healthy, false),
                    replica("s2", "1.0", ReplicaState::Healthy, false),
                ]),
                post_deploy: PhaseStatus::Done,
                routed: false,
                bake: None,
                background: None,
            }
        }

        fn run(&self) -> Pass {
            let d = deployment(DeploymentState::Progressing, DeploymentKind::Deploy);
            forward(&Forward {
                deployment: &d,
                phase: &self.phase,
                plan: &no_plan(),
                progress: &self.progress,
                next: &self.next,
                outcome: &self.outcome,
                background: self.background.as_deref(),
                stable: "1.0",
                services: &self.services,
                post_deploy: &self.post_deploy,
                routed_to_canary: self.routed,
                bake: self.bake,
                now: NOW,
            })
        }
    }

    fn start_canary(count: u32) -> Action {
        Action::Start {
            service: "web".into(),
            version: "2.0".into(),
            count,
        }
    }

    fn transitions(effects: &[Effect]) -> Vec<&Transition> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Transition(t) => Some(t),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_step_forward_is_persisted_before_the_replicas_move() {
        let next = at(2_000, 1);
        let pass = Case::new(
            at(0, 0),
            next.clone(),
            Outcome::Continue(vec!["20% to 2.0".into()]),
        )
        .run();
        assert!(pass.judged);
        let [Effect::Transition(t), Effect::Replicas(actions)] = pass.effects.as_slice() else {
            panic!("a transition, then the moves: {:?}", pass.effects);
        };
        assert_eq!(
            (t.to, t.kind),
            (DeploymentState::Progressing, EventKind::State)
        );
        assert_eq!(t.message, "20% to 2.0");
        assert_eq!(t.phase, Some(stored(&next).to_value()), "the new progress");
        assert_eq!(actions, &vec![start_canary(1)]);
        assert_eq!(pass.phase.to_value(), stored(&next).to_value());
    }

    #[test]
    fn an_unchanged_rollout_writes_nothing_and_only_keeps_its_replicas() {
        let same = at(2_000, 1);
        let mut case = Case::new(same.clone(), same, Outcome::Continue(Vec::new()));
        assert_eq!(
            case.run().effects,
            vec![Effect::Replicas(vec![start_canary(1)])]
        );
        case.services[0]
            .replicas
            .push(replica("c1", "2.0", ReplicaState::Healthy, false));
        assert_eq!(case.run().effects, Vec::new(), "nothing to do at all");
    }

    #[test]
    fn a_persons_command_is_applied_once_and_said_so() {
        let same = at(2_000, 1);
        for (notes, want) in [
            (Vec::new(), "promote by user:bob"),
            (
                vec!["stage 2 done".to_string()],
                "promote by user:bob: stage 2 done",
            ),
        ] {
            let mut case = Case::new(same.clone(), same.clone(), Outcome::Continue(notes));
            case.phase.command = Some(PendingCommand {
                name: CommandName::Promote,
                by: "user:bob".into(),
            });
            let pass = case.run();
            let [t] = transitions(&pass.effects)[..] else {
                panic!("one transition: {:?}", pass.effects);
            };
            assert_eq!(
                (t.kind, t.message.as_str()),
                (EventKind::CommandApplied, want)
            );
            assert!(pass.phase.command.is_none(), "the command is consumed");
            assert_eq!(t.phase, Some(pass.phase.to_value()));
        }
    }

    #[test]
    fn traffic_first_moves_only_once_the_post_deploy_hooks_passed() {
        let (from, to) = (at(0, 1), at(2_000, 1));
        let step = Outcome::Continue(vec!["20% to 2.0".into()]);
        assert!(first_move(&from, &to, &step));
        assert!(!first_move(&to, &at(5_000, 1), &step), "not the first move");
        let failed = Outcome::Failed {
            reason: "crash loop".into(),
            notes: Vec::new(),
        };
        assert!(
            !first_move(&from, &to, &failed),
            "a failure needs no smoke test"
        );
        // Waiting: weight stays at 0 (nothing persisted), the new replica is kept starting,
        // and a replica that cannot start is not judged.
        let mut case = Case::new(from.clone(), to.clone(), step.clone());
        case.post_deploy = PhaseStatus::Waiting;
        let pass = case.run();
        assert_eq!(pass.effects, vec![Effect::Replicas(vec![start_canary(1)])]);
        assert!(!pass.judged);
        // Failed: all traffic back, the progress as it was (weight 0).
        case.post_deploy = PhaseStatus::Failed("smoke test failed: 503".into());
        let pass = case.run();
        let [Effect::Transition(t)] = pass.effects.as_slice() else {
            panic!("one transition: {:?}", pass.effects);
        };
        assert_eq!(t.to, DeploymentState::RollingBack);
        assert_eq!(
            t.message,
            "all traffic back to 1.0 now: smoke test failed: 503"
        );
        assert_eq!(t.reason.as_deref(), Some("smoke test failed: 503"));
        assert_eq!(t.phase, Some(stored(&from).to_value()));
    }

    #[test]
    fn a_failed_analysis_says_why_then_sends_all_traffic_back() {
        let next = at(2_000, 1);
        let pass = Case::new(
            next.clone(),
            next.clone(),
            Outcome::Failed {
                reason: "analysis failed".into(),
                notes: vec!["error_rate 9%".into(), "latency ok".into()],
            },
        )
        .run();
        let [Effect::Event { kind, message }, Effect::Transition(t)] = pass.effects.as_slice()
        else {
            panic!("the notes, then the way back: {:?}", pass.effects);
        };
        assert_eq!(
            (*kind, message.as_str()),
            (EventKind::Analysis, "error_rate 9%; latency ok")
        );
        assert_eq!(t.to, DeploymentState::RollingBack);
        assert_eq!(t.phase, Some(stored(&next).to_value()));
        // No notes: no line before it.
        let quiet = Case::new(
            next.clone(),
            next,
            Outcome::Failed {
                reason: "crash loop".into(),
                notes: Vec::new(),
            },
        )
        .run();
        assert_eq!(transitions(&quiet.effects).len(), quiet.effects.len());
    }

    #[test]
    fn a_completed_rollout_succeeds_only_when_the_old_version_is_gone_and_unrouted() {
        let done = Progress {
            retiring_stable: true,
            ..at(10_000, 2)
        };
        let only_new = web(vec![
            replica("c1", "2.0", ReplicaState::Healthy, false),
            replica("c2", "2.0", ReplicaState::Healthy, false),
        ]);
        // Old replicas still there: they are drained, nothing else.
        let mut case = Case::new(done.clone(), done.clone(), Outcome::Completed);
        case.routed = true;
        case.services[0]
            .replicas
            .extend(only_new[0].replicas.iter().cloned());
        let pass = case.run();
        assert!(transitions(&pass.effects).is_empty(), "{:?}", pass.effects);
        assert!(matches!(pass.effects.as_slice(), [Effect::Replicas(a)]
            if a == &vec![Action::Drain { service: "web".into(), ids: vec!["s1".into(), "s2".into()] }]));
        // Gone, but the proxy has not confirmed the new-only table: wait.
        case.services = only_new;
        case.routed = false;
        assert_eq!(case.run().effects, Vec::new());
        // Gone and routed: succeeded, the new version current.
        case.routed = true;
        let pass = case.run();
        let [Effect::Transition(t)] = pass.effects.as_slice() else {
            panic!("one transition: {:?}", pass.effects);
        };
        assert_eq!(t.to, DeploymentState::Succeeded);
        assert_eq!(t.message, "2.0 serves all traffic; 1.0 retired");
        assert_eq!(
            (t.current.as_deref(), t.reason.as_deref()),
            (Some("2.0"), None)
        );
        // Without its background verdict: says so, and that is the reason.
        case.next.unjudged = Some("no background verdict (allow_unjudged)".into());
        let pass = case.run();
        let [t] = transitions(&pass.effects)[..] else {
            panic!("one transition");
        };
        assert_eq!(
            t.message,
            "2.0 serves all traffic; 1.0 retired; no background verdict (allow_unjudged)"
        );
        assert_eq!(t.reason, case.next.unjudged);
    }

    #[test]
    fn a_completed_rollout_bakes_before_it_succeeds() {
        let done = Progress {
            retiring_stable: true,
            ..at(10_000, 2)
        };
        let mut case = Case::new(done.clone(), done, Outcome::Completed);
        case.services = web(vec![
            replica("c1", "2.0", ReplicaState::Healthy, false),
            replica("c2", "2.0", ReplicaState::Healthy, false),
        ]);
        case.routed = true;
        case.bake = Some(HumanDuration(Duration::from_secs(600)));
        // Begins: the end stored, no success.
        let pass = case.run();
        let [t] = transitions(&pass.effects)[..] else {
            panic!("one transition: {:?}", pass.effects);
        };
        assert_eq!(t.to, DeploymentState::Progressing);
        assert!(t.message.contains("baking until"), "{}", t.message);
        // Baking, with a background measurement this pass: told, with the new progress.
        case.background = Some(vec![Measurement {
            metric: "error_rate".into(),
            value: Some(0.0),
            unit: ferry_core::analysis::Unit::Ratio,
            sample_size: 100,
            threshold: "≤ 0.01".into(),
            verdict: ferry_core::analysis::Verdict::Pass,
            reason: "0 of 100".into(),
            dry_run: false,
            details: Vec::new(),
            service: None,
        }]);
        // ... in the pass the bake begins: ONE transition says both and stores both (a
        // second would always lose its compare-and-set against the first).
        let mut moved = case.next.clone();
        moved.stage += 1;
        case.next = moved.clone();
        let pass = case.run();
        let [Effect::Transition(t)] = pass.effects.as_slice() else {
            panic!("one transition: {:?}", pass.effects);
        };
        assert_eq!(t.to, DeploymentState::Progressing);
        assert!(
            t.message.starts_with("2.0 converged; baking until")
                && t.message
                    .ends_with("; baking: background analysis: error_rate Pass: 0 of 100"),
            "{}",
            t.message
        );
        let stored_phase = Phase::read(1, t.phase.as_ref().expect("a phase")).expect("phase");
        assert_eq!(stored_phase.bake_until_ms, Some(NOW + 600_000));
        assert_eq!(stored_phase.progress, Some(moved), "this pass's progress");
        // ... once it is under way: told, with the new progress.
        case.phase.bake_until_ms = Some(NOW + 1);
        let pass = case.run();
        let [t] = transitions(&pass.effects)[..] else {
            panic!("one transition: {:?}", pass.effects);
        };
        assert_eq!(t.to, DeploymentState::Progressing);
        assert_eq!(
            t.message,
            "baking: background analysis: error_rate Pass: 0 of 100"
        );
        // Baked: said, then succeeded.
        case.phase.bake_until_ms = Some(NOW);
        let pass = case.run();
        let [Effect::Event { kind, .. }, Effect::Transition(t)] = pass.effects.as_slice() else {
            panic!("baked, then succeeded: {:?}", pass.effects);
        };
        assert_eq!((*kind, t.to), (EventKind::Bake, DeploymentState::Succeeded));
        assert!(crate::controller::steps::ends(&pass.effects));
    }

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
