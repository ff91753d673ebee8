//! May a deployment start? Its environment's gates, judged by `ferry_core::gates` over the
//! facts the shell read (history in the `after` environment, approvals, check results,
//! overrides, firing alerts).

use ferry_core::gates::{self, Approval, CheckResult, Facts, GatesVerdict, History};
use ferry_core::manifest::{GateCheck, Gates};
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_store::DeploymentRecord;

use super::{Effect, Transition};

/// Whether `deployment` must pass `gates` at all: rollbacks to a known-good version skip
/// them, and an environment without gates has none.
pub(in crate::controller) fn applies(deployment: &DeploymentRecord, gates: Option<&Gates>) -> bool {
    gates.is_some() && deployment.kind != DeploymentKind::Rollback
}

/// What the gate step sees of a waiting deployment.
pub(in crate::controller) struct Snapshot<'a> {
    pub deployment: &'a DeploymentRecord,
    pub gates: &'a Gates,
    pub history: &'a History,
    pub approvals: &'a [Approval],
    pub facts: &'a Facts,
    /// The unmet gate keys last announced on its timeline (by this server).
    pub announced: Option<&'a [String]>,
    pub now: i64,
}

/// The gate step's answer: what to do, and whether the deployment goes on in this pass.
#[derive(Debug, PartialEq)]
pub(in crate::controller) struct Plan {
    pub effects: Vec<Effect>,
    pub proceed: bool,
}

/// Passed: the gates and who passed them go on the timeline, and the deployment goes on.
/// Waiting: it moves to `awaiting-approval` (only approvals missing) or `blocked` FIRST, then
/// its due checks start — so a check that fails at once is never seen beside `pending`.
/// Rejected: `rejected`, with who and why.
pub(in crate::controller) fn step(s: &Snapshot) -> Plan {
    let report = gates::report(
        s.gates,
        s.history,
        s.approvals,
        &s.deployment.requested_by,
        s.facts,
        s.now,
    );
    match report.verdict() {
        GatesVerdict::Passed => {
            let mut effects = vec![Effect::RememberUnmet(None)];
            // History shows every gate and who or what passed it.
            effects.extend(
                report
                    .passed_lines()
                    .into_iter()
                    .map(|message| Effect::Event {
                        kind: EventKind::Gate,
                        message,
                    }),
            );
            if !report.rows.is_empty() {
                effects.push(Effect::RecordPassedGates(report.rows));
            }
            Plan {
                effects,
                proceed: true,
            }
        }
        GatesVerdict::Waiting(unmet) => {
            let message = gates::waiting_message(&unmet);
            let keys: Vec<String> = unmet.iter().map(|u| u.key.clone()).collect();
            let waiting = gates::waiting_state(&unmet);
            let mut effects = Vec::new();
            if s.deployment.state != waiting {
                effects.push(Transition::to(waiting, message).into());
            } else if s.announced != Some(keys.as_slice()) {
                // Already waiting: a new timeline line only when what is awaited changes
                // (not for every tick of a soak countdown).
                effects.push(Effect::Event {
                    kind: EventKind::Gates,
                    message,
                });
            }
            effects.push(Effect::RememberUnmet(Some(keys)));
            let due = due_checks(s.gates, &s.facts.checks, s.now);
            if !due.is_empty() {
                effects.push(Effect::StartChecks(due));
            }
            Plan {
                effects,
                proceed: false,
            }
        }
        GatesVerdict::Rejected { by, reason } => {
            let reason = format!("rejected by {by}: {reason}");
            Plan {
                effects: vec![
                    Effect::RememberUnmet(None),
                    Transition::to(DeploymentState::Rejected, reason.clone())
                        .because(Some(reason))
                        .into(),
                ],
                proceed: false,
            }
        }
    }
}

/// The checks due to run: never run, or their latest result at least `interval` old.
pub(in crate::controller) fn due_checks(
    gates: &Gates,
    results: &[CheckResult],
    now: i64,
) -> Vec<GateCheck> {
    gates
        .checks
        .iter()
        .filter(|check| {
            let interval_ms = i64::try_from(check.interval().as_millis()).unwrap_or(i64::MAX);
            results
                .iter()
                .rev()
                .find(|r| r.name == check.name)
                .is_none_or(|r| now.saturating_sub(r.at_ms) >= interval_ms)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ferry_core::model::DeploymentState as S;

    const NOW: i64 = 1_000_000;

    pub(in crate::controller::steps) fn deployment(
        state: S,
        kind: DeploymentKind,
    ) -> DeploymentRecord {
        DeploymentRecord {
            id: 7,
            app: "shop".into(),
            env: "production".into(),
            version: "2.0".into(),
            previous_version: Some("1.0".into()),
            kind,
            strategy: "rolling".into(),
            state,
            reason: None,
            requested_by: "user:alice".into(),
            manifest_revision: 1,
            phase: serde_json::json!({}),
            row_version: 3,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            infra_failing_since_ms: None,
        }
    }

    fn gates(json: serde_json::Value) -> Gates {
        serde_json::from_value(json).expect("gates")
    }

    fn check_gates() -> Gates {
        gates(
            serde_json::json!({ "checks": [{ "name": "ci", "http": { "url": "http://127.0.0.1:9/ok" } }] }),
        )
    }

    fn result(passed: bool, age_ms: i64) -> CheckResult {
        CheckResult {
            name: "ci".into(),
            passed,
            explanation: if passed { "200".into() } else { "503".into() },
            at_ms: NOW - age_ms,
        }
    }

    fn plan(
        d: &DeploymentRecord,
        gates: &Gates,
        approvals: &[Approval],
        checks: Vec<CheckResult>,
        announced: Option<&[String]>,
    ) -> Plan {
        let history = History {
            version: d.version.clone(),
            succeeded_in_after_env: None,
        };
        let facts = Facts {
            checks,
            overrides: Vec::new(),
            alerts: None,
        };
        step(&Snapshot {
            deployment: d,
            gates,
            history: &history,
            approvals,
            facts: &facts,
            announced,
            now: NOW,
        })
    }

    fn kinds(plan: &Plan) -> Vec<String> {
        plan.effects
            .iter()
            .map(|e| match e {
                Effect::Transition(t) => format!("transition {}", t.to),
                Effect::Event { kind, .. } => format!("event {kind:?}"),
                Effect::Replicas(_) => "replicas".into(),
                Effect::StartChecks(c) => format!(
                    "start {}",
                    c.iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Effect::RecordPassedGates(rows) => format!("record {}", rows.len()),
                Effect::RememberUnmet(None) => "forget".into(),
                Effect::RememberUnmet(Some(keys)) => format!("remember {}", keys.len()),
                Effect::Request(r) => format!("request {}", r.env),
            })
            .collect()
    }

    #[test]
    fn gates_apply_to_every_kind_but_a_rollback_and_only_where_there_are_gates() {
        let g = Gates::default();
        for kind in [
            DeploymentKind::Deploy,
            DeploymentKind::Redeploy,
            DeploymentKind::Retry,
            DeploymentKind::Promote,
        ] {
            assert!(applies(&deployment(S::Pending, kind), Some(&g)), "{kind:?}");
            assert!(!applies(&deployment(S::Pending, kind), None), "{kind:?}");
        }
        assert!(!applies(
            &deployment(S::Pending, DeploymentKind::Rollback),
            Some(&g)
        ));
    }

    /// Issue 11's gate race: the transition to `blocked` comes before the checks start, so
    /// a check that fails at once is never seen beside `pending`.
    #[test]
    fn a_pending_deployment_is_blocked_before_its_checks_start() {
        let d = deployment(S::Pending, DeploymentKind::Deploy);
        let p = plan(&d, &check_gates(), &[], Vec::new(), None);
        assert_eq!(kinds(&p), ["transition blocked", "remember 1", "start ci"]);
        assert!(!p.proceed);
        let Effect::Transition(t) = &p.effects[0] else {
            unreachable!()
        };
        assert!(
            t.message.starts_with("waiting for check ci"),
            "{}",
            t.message
        );
        assert_eq!((t.reason.as_ref(), t.current.as_ref()), (None, None));
    }

    #[test]
    fn a_waiting_deployment_is_told_on_its_timeline_only_when_what_it_awaits_changes() {
        let d = deployment(S::Blocked, DeploymentKind::Deploy);
        let g = check_gates();
        let keys = match plan(&d, &g, &[], vec![result(false, 1_000)], None)
            .effects
            .into_iter()
            .find_map(|e| match e {
                Effect::RememberUnmet(Some(keys)) => Some(keys),
                _ => None,
            }) {
            Some(keys) => keys,
            None => panic!("remembers what it awaits"),
        };
        // (already blocked, check failed 1 s ago: not due, nothing new to say)
        type Row<'a> = (Option<&'a [String]>, i64, &'a [&'a str]);
        let table: [Row; 4] = [
            (None, 1_000, &["event Gates", "remember 1"]),
            (Some(&keys), 1_000, &["remember 1"]),
            (Some(&keys), 10_000, &["remember 1", "start ci"]),
            (
                Some(&[]),
                60_000,
                &["event Gates", "remember 1", "start ci"],
            ),
        ];
        for (announced, age, want) in table {
            let p = plan(&d, &g, &[], vec![result(false, age)], announced);
            assert_eq!(
                kinds(&p),
                want,
                "announced {announced:?}, result {age} ms old"
            );
            assert!(!p.proceed);
        }
    }

    #[test]
    fn only_missing_approvals_await_approval_and_start_no_check() {
        let d = deployment(S::Pending, DeploymentKind::Deploy);
        let g = gates(serde_json::json!({ "approvals": [{ "role": "tech-lead" }] }));
        let p = plan(&d, &g, &[], Vec::new(), None);
        assert_eq!(kinds(&p), ["transition awaiting-approval", "remember 1"]);
    }

    #[test]
    fn passed_gates_are_recorded_and_the_deployment_goes_on() {
        for state in [S::Pending, S::Blocked, S::AwaitingApproval] {
            let d = deployment(state, DeploymentKind::Deploy);
            let p = plan(&d, &check_gates(), &[], vec![result(true, 1_000)], None);
            assert_eq!(kinds(&p), ["forget", "event Gate", "record 1"], "{state}");
            assert!(p.proceed);
        }
        // No gate row (an alerts-only environment with nothing firing): nothing to record.
        let d = deployment(S::Pending, DeploymentKind::Deploy);
        let p = plan(&d, &Gates::default(), &[], Vec::new(), None);
        assert_eq!(kinds(&p), ["forget"]);
        assert!(p.proceed);
    }

    #[test]
    fn a_rejection_ends_the_deployment_with_who_and_why() {
        let d = deployment(S::AwaitingApproval, DeploymentKind::Deploy);
        let g = gates(serde_json::json!({ "approvals": [{ "role": "tech-lead" }] }));
        let no = Approval {
            approver: "user:carol".into(),
            roles: vec!["tech-lead".into()],
            approved: false,
            reason: Some("not on a Friday".into()),
            at_ms: NOW - 5,
        };
        let p = plan(&d, &g, &[no], Vec::new(), None);
        assert_eq!(kinds(&p), ["forget", "transition rejected"]);
        let Effect::Transition(t) = &p.effects[1] else {
            unreachable!()
        };
        assert_eq!(t.reason.as_deref(), Some(t.message.as_str()));
        assert!(t.message.starts_with("rejected by "), "{}", t.message);
        assert!(t.message.contains("not on a Friday"), "{}", t.message);
        assert!(!p.proceed);
    }
}
