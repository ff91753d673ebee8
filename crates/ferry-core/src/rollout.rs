//! Rollout decisions: given what runs now, what should happen next.
//!
//! Level-triggered like a Kubernetes controller: `reconcile` looks only at the observed
//! replicas (not at what it asked for before), so a controller that crashed and lost its
//! memory resumes from the same answer. Pure: the clock is an argument.

use std::collections::BTreeMap;

use crate::model::{DeploymentState, ReplicaState};

/// One replica as the controller observes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub id: String,
    pub version: String,
    pub state: ReplicaState,
    pub started_at_ms: i64,
    pub restarts: u32,
    pub ever_healthy: bool,
    /// Leaving: out of traffic and being stopped.
    pub draining: bool,
    pub last_exit: Option<String>,
    /// The last lines its last process wrote before it ended (bounded, escaped, redacted).
    pub last_output: Vec<String>,
    /// What its latest failed health check got (status and body, refused, timeout…).
    pub last_probe: Option<String>,
}

impl Observed {
    fn ready(&self) -> bool {
        self.state == ReplicaState::Healthy && !self.draining
    }
}

/// One service of the app in the environment being rolled out.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInput {
    pub service: String,
    pub desired: u32,
    pub replicas: Vec<Observed>,
    pub patience: Patience,
}

/// How replicas are replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Everything old goes first, then everything new starts.
    Recreate,
    /// At most `desired + max_surge` replicas, at least `desired - max_unavailable` ready.
    Rolling {
        max_surge: u32,
        max_unavailable: u32,
    },
}

/// Bounds on how long a new replica may take before the rollout gives up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    pub start_timeout_ms: i64,
    /// Exits before first becoming healthy that count as a crash loop.
    pub max_start_exits: u32,
}

/// Something the controller must do next. Idempotent from the controller's side: a repeated
/// `reconcile` after a crash yields the same or a later action, never a conflicting one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start `count` more replicas of `version`.
    Start {
        service: String,
        version: String,
        count: u32,
    },
    /// Take these replicas out of traffic, then stop them.
    Drain { service: String, ids: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Do these actions (none: wait for replicas to change state).
    Progress(Vec<Action>),
    /// Every service runs exactly `desired` ready replicas of the target, nothing else.
    Converged,
    /// The target version cannot become ready; the reason says which replica and why.
    Failed(String),
}

/// Decides the next actions that move `services` towards `target` replicas of `version`.
pub fn reconcile(version: &str, services: &[ServiceInput], pace: Pace, now_ms: i64) -> Verdict {
    let mut actions = Vec::new();
    let mut converged = true;
    for service in services {
        if let Some(reason) = failure(version, service, now_ms) {
            return Verdict::Failed(reason);
        }
        let (service_actions, done) = plan_service(version, service, pace);
        converged &= done;
        actions.extend(service_actions);
    }
    if converged {
        Verdict::Converged
    } else {
        Verdict::Progress(actions)
    }
}

/// Why `version`'s replicas of `service` cannot be trusted, if they cannot: not healthy in
/// time, crash-looping, or unhealthy after being healthy.
pub fn failure(version: &str, service: &ServiceInput, now_ms: i64) -> Option<String> {
    let name = &service.service;
    let patience = service.patience;
    service
        .replicas
        .iter()
        .filter(|r| r.version == version && !r.draining)
        .find_map(|r| {
            let last_exit = r
                .last_exit
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default();
            let crash_loop = !r.ever_healthy && r.restarts >= patience.max_start_exits;
            let reason = if crash_loop {
                format!(
                    "{name} {version}: replica {} exited {} times before becoming healthy{last_exit}",
                    r.id, r.restarts
                )
            } else if !r.ever_healthy && now_ms - r.started_at_ms > patience.start_timeout_ms {
                format!(
                    "{name} {version}: replica {} not healthy within {}s of starting (state {}){last_exit}",
                    r.id,
                    patience.start_timeout_ms / 1000,
                    r.state
                )
            } else if r.ever_healthy && matches!(r.state, ReplicaState::Unhealthy | ReplicaState::Exited) {
                format!(
                    "{name} {version}: replica {} became {} after being healthy{last_exit}",
                    r.id, r.state
                )
            } else {
                return None;
            };
            // A crash loop's health checks only found nobody there.
            Some(reason + &diagnosis(r, !crash_loop))
        })
}

/// What a failing replica last showed: its latest failed health check (with `probe`), and
/// the last lines its process wrote before it exited (indented, one per line).
pub fn diagnosis(r: &Observed, probe: bool) -> String {
    let mut out = String::new();
    if let Some(probe) = r.last_probe.as_ref().filter(|_| probe) {
        out.push_str("; last health check: ");
        out.push_str(probe);
    }
    if r.last_exit.is_some() {
        out.push_str(&output_block(&r.last_output));
    }
    out
}

/// `; its last output:` and the lines, indented one per line (nothing without lines).
pub fn output_block(lines: &[String]) -> String {
    let mut out = String::new();
    if !lines.is_empty() {
        out.push_str("; its last output:");
        for line in lines {
            out.push_str("\n    ");
            out.push_str(line);
        }
    }
    out
}

/// Actions for one service, and whether that service has converged.
fn plan_service(version: &str, service: &ServiceInput, pace: Pace) -> (Vec<Action>, bool) {
    let desired = service.desired;
    let live: Vec<&Observed> = service.replicas.iter().filter(|r| !r.draining).collect();
    let draining = service.replicas.len() - live.len();
    let (new, old): (Vec<&Observed>, Vec<&Observed>) =
        live.iter().partition(|r| r.version == version);
    let new_total = count(new.len());
    let new_ready = count(new.iter().filter(|r| r.ready()).count());

    if old.is_empty() && draining == 0 && new_total == desired && new_ready == desired {
        return (Vec::new(), true);
    }

    let mut actions = Vec::new();
    let mut drain: Vec<String> = Vec::new();
    // Surplus replicas of the target itself (e.g. after a crash mid-start): unready first.
    if new_total > desired {
        let mut surplus: Vec<&&Observed> = new.iter().collect();
        surplus.sort_by_key(|r| r.ready());
        drain.extend(
            surplus
                .iter()
                .take((new_total - desired) as usize)
                .map(|r| r.id.clone()),
        );
    }

    match pace {
        Pace::Recreate => {
            if !old.is_empty() {
                drain.extend(old.iter().map(|r| r.id.clone()));
            } else if draining == 0 && new_total < desired {
                actions.push(start(service, version, desired - new_total));
            }
        }
        Pace::Rolling {
            max_surge,
            max_unavailable,
        } => {
            let max_surge = if max_surge == 0 && max_unavailable == 0 {
                1
            } else {
                max_surge
            };
            let old_total = count(old.len());
            let ceiling = desired + max_surge;
            let room = ceiling.saturating_sub(new_total + old_total);
            let to_start = desired.saturating_sub(new_total).min(room);
            if to_start > 0 {
                actions.push(start(service, version, to_start));
            }
            // Unready old replicas serve nothing: they go first and cost no availability.
            let (old_ready, old_unready): (Vec<&&Observed>, Vec<&&Observed>) =
                old.iter().partition(|r| r.ready());
            drain.extend(old_unready.iter().map(|r| r.id.clone()));
            let min_available = desired.saturating_sub(max_unavailable);
            let ready_total = new_ready + count(old_ready.len());
            let removable = ready_total.saturating_sub(min_available) as usize;
            drain.extend(old_ready.iter().take(removable).map(|r| r.id.clone()));
        }
    }
    if !drain.is_empty() {
        actions.push(Action::Drain {
            service: service.service.clone(),
            ids: drain,
        });
    }
    (actions, false)
}

fn start(service: &ServiceInput, version: &str, count: u32) -> Action {
    Action::Start {
        service: service.service.clone(),
        version: version.to_string(),
        count,
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Moves one service towards exact replica counts per version (`want`); versions not in
/// `want` are drained. Used by progressive strategies, whose traffic is weighted by the
/// rollout rather than by replica counts, so replicas can come and go freely. Returns the
/// actions and whether every wanted replica is ready and nothing else runs.
pub fn reconcile_sets(service: &ServiceInput, want: &[(String, u32)]) -> (Vec<Action>, bool) {
    let mut actions = Vec::new();
    let mut drain = Vec::new();
    let live: Vec<&Observed> = service.replicas.iter().filter(|r| !r.draining).collect();
    let mut converged = live.len() == service.replicas.len();
    for (version, count) in want {
        let mut mine: Vec<&&Observed> = live.iter().filter(|r| &r.version == version).collect();
        let total = self::count(mine.len());
        let ready = self::count(mine.iter().filter(|r| r.ready()).count());
        converged &= total == *count && ready == *count;
        if total < *count {
            actions.push(start(service, version, count - total));
        } else if total > *count {
            mine.sort_by_key(|r| r.ready());
            drain.extend(
                mine.iter()
                    .take((total - count) as usize)
                    .map(|r| r.id.clone()),
            );
        }
    }
    for r in live
        .iter()
        .filter(|r| !want.iter().any(|(v, _)| v == &r.version))
    {
        converged = false;
        drain.push(r.id.clone());
    }
    if !drain.is_empty() {
        actions.push(Action::Drain {
            service: service.service.clone(),
            ids: drain,
        });
    }
    (actions, converged)
}

/// Traffic for one service: which versions get what share, over which replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionTraffic {
    pub version: String,
    /// Basis points (0..=10000); the shares of a service sum to 10000 when it has replicas.
    pub weight: u32,
    pub replica_ids: Vec<String>,
}

/// Splits traffic across the ready replicas of every version, in proportion to their
/// number (a rolling update moves traffic one replica at a time).
pub fn traffic(replicas: &[Observed]) -> Vec<VersionTraffic> {
    let mut by_version: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.ready()) {
        by_version.entry(&r.version).or_default().push(r.id.clone());
    }
    let total: usize = by_version.values().map(Vec::len).sum();
    if total == 0 {
        return Vec::new();
    }
    let mut shares: Vec<VersionTraffic> = by_version
        .into_iter()
        .map(|(version, replica_ids)| VersionTraffic {
            version: version.to_string(),
            weight: count(replica_ids.len() * 10_000 / total),
            replica_ids,
        })
        .collect();
    let assigned: u32 = shares.iter().map(|s| s.weight).sum();
    if let Some(first) = shares.first_mut() {
        first.weight += 10_000 - assigned;
    }
    shares
}

/// Traffic for a weighted rollout: `canary_bp` basis points to `canary`, the rest to
/// `stable`, over their ready replicas. A side with no ready replica gets nothing (all goes
/// to the other), so a weight is never sent into a void. Canary first: sticky clients hash
/// into buckets counted from the first group, so raising the weight keeps them in place.
pub fn weighted_traffic(
    replicas: &[Observed],
    stable: &str,
    canary: &str,
    canary_bp: u32,
) -> Vec<VersionTraffic> {
    let ready = |version: &str| -> Vec<String> {
        replicas
            .iter()
            .filter(|r| r.ready() && r.version == version)
            .map(|r| r.id.clone())
            .collect()
    };
    let (canary_ids, stable_ids) = (ready(canary), ready(stable));
    let canary_bp = match (canary_ids.is_empty(), stable_ids.is_empty()) {
        (true, true) => return Vec::new(),
        (true, false) => 0,
        (false, true) => 10_000,
        (false, false) => canary_bp.min(10_000),
    };
    let mut shares = Vec::new();
    if !canary_ids.is_empty() {
        shares.push(VersionTraffic {
            version: canary.to_string(),
            weight: canary_bp,
            replica_ids: canary_ids,
        });
    }
    if !stable_ids.is_empty() {
        shares.push(VersionTraffic {
            version: stable.to_string(),
            weight: 10_000 - canary_bp,
            replica_ids: stable_ids,
        });
    }
    shares
}

/// What the deployment becomes after a verdict, and why. `None`: stays as it is.
pub fn next_state(
    state: DeploymentState,
    verdict: &Verdict,
    has_previous: bool,
) -> Option<(DeploymentState, String)> {
    use DeploymentState::*;
    match (state, verdict) {
        (Pending, _) => Some((Progressing, "rollout started".to_string())),
        (Progressing, Verdict::Converged) => {
            Some((Succeeded, "all replicas healthy and serving".to_string()))
        }
        (Progressing, Verdict::Failed(reason)) if has_previous => {
            Some((RollingBack, reason.clone()))
        }
        (Progressing, Verdict::Failed(reason)) => Some((Failed, reason.clone())),
        (RollingBack, Verdict::Converged) => {
            Some((RolledBack, "previous version restored".to_string()))
        }
        (RollingBack, Verdict::Failed(reason)) => {
            Some((Failed, format!("rollback failed too: {reason}")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Patience = Patience {
        start_timeout_ms: 30_000,
        max_start_exits: 3,
    };

    fn replica(id: &str, version: &str, state: ReplicaState) -> Observed {
        Observed {
            id: id.to_string(),
            version: version.to_string(),
            state,
            started_at_ms: 0,
            restarts: 0,
            ever_healthy: state == ReplicaState::Healthy,
            draining: false,
            last_exit: None,
            last_output: Vec::new(),
            last_probe: None,
        }
    }

    fn svc(desired: u32, replicas: Vec<Observed>) -> Vec<ServiceInput> {
        vec![ServiceInput {
            service: "web".into(),
            desired,
            replicas,
            patience: PATIENCE,
        }]
    }

    #[test]
    fn first_deployment_starts_everything_at_once_when_nothing_runs() {
        let verdict = reconcile(
            "1.0.0",
            &svc(3, vec![]),
            Pace::Rolling {
                max_surge: 1,
                max_unavailable: 0,
            },
            0,
        );
        // With nothing old, the surge ceiling (3 + 1) leaves room for all three.
        assert_eq!(
            verdict,
            Verdict::Progress(vec![Action::Start {
                service: "web".into(),
                version: "1.0.0".into(),
                count: 3
            }])
        );
    }

    #[test]
    fn rolling_surges_one_then_drains_one_old_per_ready_new() {
        let old = || {
            (0..3)
                .map(|i| replica(&format!("o{i}"), "1", ReplicaState::Healthy))
                .collect::<Vec<_>>()
        };
        let pace = Pace::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        };
        assert_eq!(
            reconcile("2", &svc(3, old()), pace, 0),
            Verdict::Progress(vec![Action::Start {
                service: "web".into(),
                version: "2".into(),
                count: 1
            }])
        );
        let mut with_starting = old();
        with_starting.push(replica("n0", "2", ReplicaState::Starting));
        assert_eq!(
            reconcile("2", &svc(3, with_starting), pace, 0),
            Verdict::Progress(vec![])
        );
        let mut with_ready = old();
        with_ready.push(replica("n0", "2", ReplicaState::Healthy));
        assert_eq!(
            reconcile("2", &svc(3, with_ready), pace, 0),
            Verdict::Progress(vec![Action::Drain {
                service: "web".into(),
                ids: vec!["o0".into()]
            }])
        );
    }

    #[test]
    fn recreate_drains_old_before_starting_new() {
        let old = vec![replica("o0", "1", ReplicaState::Healthy)];
        assert_eq!(
            reconcile("2", &svc(1, old), Pace::Recreate, 0),
            Verdict::Progress(vec![Action::Drain {
                service: "web".into(),
                ids: vec!["o0".into()]
            }])
        );
        let mut leaving = replica("o0", "1", ReplicaState::Stopping);
        leaving.draining = true;
        assert_eq!(
            reconcile("2", &svc(1, vec![leaving]), Pace::Recreate, 0),
            Verdict::Progress(vec![])
        );
    }

    #[test]
    fn converged_only_when_exactly_desired_ready_and_nothing_else() {
        let ready = vec![
            replica("n0", "2", ReplicaState::Healthy),
            replica("n1", "2", ReplicaState::Healthy),
        ];
        assert_eq!(
            reconcile("2", &svc(2, ready.clone()), Pace::Recreate, 0),
            Verdict::Converged
        );
        let mut extra = ready;
        extra.push(replica("n2", "2", ReplicaState::Starting));
        assert_eq!(
            reconcile("2", &svc(2, extra), Pace::Recreate, 0),
            Verdict::Progress(vec![Action::Drain {
                service: "web".into(),
                ids: vec!["n2".into()]
            }])
        );
    }

    #[test]
    fn failures_name_the_replica_and_the_cause() {
        let mut slow = replica("n0", "2", ReplicaState::Starting);
        slow.started_at_ms = 1_000;
        let pace = Pace::Rolling {
            max_surge: 1,
            max_unavailable: 0,
        };
        assert_eq!(
            reconcile("2", &svc(1, vec![slow.clone()]), pace, 31_000),
            Verdict::Progress(vec![])
        );
        let Verdict::Failed(reason) = reconcile("2", &svc(1, vec![slow]), pace, 31_001) else {
            panic!("expected a failure")
        };
        assert!(
            reason.contains("n0") && reason.contains("not healthy within 30s"),
            "{reason}"
        );

        let mut crashing = replica("n1", "2", ReplicaState::Exited);
        crashing.restarts = 3;
        crashing.last_exit = Some("exit code 1".into());
        crashing.last_output = vec!["Traceback:".into(), "Error: '$PORT' is not valid".into()];
        let Verdict::Failed(reason) = reconcile("2", &svc(1, vec![crashing]), pace, 0) else {
            panic!("expected a failure")
        };
        assert!(
            reason.ends_with(
                "exited 3 times before becoming healthy (last: exit code 1); its last output:\n    Traceback:\n    Error: '$PORT' is not valid"
            ),
            "{reason}"
        );

        let mut refusing = replica("n3", "2", ReplicaState::Starting);
        refusing.last_probe = Some("GET /health: status 503, body \"db down\"".into());
        let Verdict::Failed(reason) = reconcile("2", &svc(1, vec![refusing]), pace, 31_001) else {
            panic!("expected a failure")
        };
        assert!(
            reason.ends_with(
                "not healthy within 30s of starting (state starting); last health check: GET /health: status 503, body \"db down\""
            ),
            "{reason}"
        );

        let mut relapsed = replica("n2", "2", ReplicaState::Unhealthy);
        relapsed.ever_healthy = true;
        assert!(matches!(
            reconcile("2", &svc(1, vec![relapsed]), pace, 0),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn old_versions_failing_do_not_fail_the_new_one() {
        let mut old = replica("o0", "1", ReplicaState::Unhealthy);
        old.ever_healthy = true;
        let verdict = reconcile(
            "2",
            &svc(1, vec![old]),
            Pace::Rolling {
                max_surge: 1,
                max_unavailable: 0,
            },
            0,
        );
        assert!(matches!(verdict, Verdict::Progress(_)), "{verdict:?}");
    }

    /// Simulates whole rolling updates for many sizes and limits, with new replicas
    /// becoming ready one step after they start, and checks the invariants at every step.
    #[test]
    fn rolling_invariants_hold_for_every_size_and_limit() {
        for desired in 1..=6u32 {
            for max_surge in 0..=3u32 {
                for max_unavailable in 0..=3u32 {
                    simulate(desired, max_surge, max_unavailable);
                }
            }
        }
    }

    fn simulate(desired: u32, max_surge: u32, max_unavailable: u32) {
        let pace = Pace::Rolling {
            max_surge,
            max_unavailable,
        };
        let effective_surge = if max_surge == 0 && max_unavailable == 0 {
            1
        } else {
            max_surge
        };
        let mut replicas: Vec<Observed> = (0..desired)
            .map(|i| replica(&format!("o{i}"), "1", ReplicaState::Healthy))
            .collect();
        let mut next_id = 0;
        for step in 0..100 {
            // Replicas started in the previous step are ready now; drained ones are gone.
            replicas.retain(|r| !r.draining);
            for r in &mut replicas {
                if r.state == ReplicaState::Starting {
                    r.state = ReplicaState::Healthy;
                    r.ever_healthy = true;
                }
            }
            let ready = replicas.iter().filter(|r| r.ready()).count() as u32;
            assert!(
                ready + max_unavailable.min(desired) >= desired,
                "availability broken: n={desired} surge={max_surge} unavail={max_unavailable} step={step}"
            );
            match reconcile("2", &svc(desired, replicas.clone()), pace, 0) {
                Verdict::Converged => {
                    assert!(replicas.iter().all(|r| r.version == "2"));
                    assert_eq!(replicas.len() as u32, desired);
                    return;
                }
                Verdict::Failed(reason) => panic!("unexpected failure: {reason}"),
                Verdict::Progress(actions) => {
                    assert!(
                        !actions.is_empty(),
                        "stuck: n={desired} surge={max_surge} unavail={max_unavailable}"
                    );
                    for action in actions {
                        match action {
                            Action::Start { count, .. } => {
                                for _ in 0..count {
                                    replicas.push(replica(
                                        &format!("n{next_id}"),
                                        "2",
                                        ReplicaState::Starting,
                                    ));
                                    next_id += 1;
                                }
                            }
                            Action::Drain { ids, .. } => {
                                for r in replicas.iter_mut().filter(|r| ids.contains(&r.id)) {
                                    r.draining = true;
                                }
                            }
                        }
                    }
                    let live = replicas.iter().filter(|r| !r.draining).count() as u32;
                    assert!(
                        live <= desired + effective_surge,
                        "surge exceeded at step {step}"
                    );
                }
            }
        }
        panic!("did not converge: n={desired} surge={max_surge} unavail={max_unavailable}");
    }

    #[test]
    fn traffic_is_proportional_and_sums_to_all() {
        let replicas = vec![
            replica("o0", "1", ReplicaState::Healthy),
            replica("o1", "1", ReplicaState::Healthy),
            replica("n0", "2", ReplicaState::Healthy),
            replica("n1", "2", ReplicaState::Starting),
        ];
        let shares = traffic(&replicas);
        assert_eq!(shares.len(), 2);
        assert_eq!(shares.iter().map(|s| s.weight).sum::<u32>(), 10_000);
        assert_eq!(shares[0].replica_ids, vec!["o0", "o1"]);
        assert_eq!(shares[1].replica_ids, vec!["n0"]);
        assert_eq!(shares[1].weight, 3333);
        assert!(traffic(&[replica("x", "1", ReplicaState::Starting)]).is_empty());
    }

    #[test]
    fn sets_reach_exact_counts_and_drain_everything_else() {
        let input = ServiceInput {
            service: "web".into(),
            desired: 3,
            replicas: vec![
                replica("s0", "1", ReplicaState::Healthy),
                replica("s1", "1", ReplicaState::Healthy),
                replica("c0", "2", ReplicaState::Starting),
                replica("c1", "2", ReplicaState::Healthy),
                replica("x0", "0.9", ReplicaState::Healthy),
            ],
            patience: PATIENCE,
        };
        let want = vec![("2".to_string(), 1), ("1".to_string(), 3)];
        let (actions, converged) = reconcile_sets(&input, &want);
        assert!(!converged);
        assert_eq!(
            actions,
            vec![
                Action::Start {
                    service: "web".into(),
                    version: "1".into(),
                    count: 1
                },
                Action::Drain {
                    service: "web".into(),
                    ids: vec!["c0".into(), "x0".into()]
                },
            ]
        );
    }

    #[test]
    fn weighted_traffic_never_points_at_a_side_without_ready_replicas() {
        let both = vec![
            replica("s0", "1", ReplicaState::Healthy),
            replica("c0", "2", ReplicaState::Healthy),
        ];
        let shares = weighted_traffic(&both, "1", "2", 500);
        assert_eq!(
            shares
                .iter()
                .map(|s| (s.version.as_str(), s.weight))
                .collect::<Vec<_>>(),
            vec![("2", 500), ("1", 9_500)]
        );
        let only_stable = vec![
            replica("s0", "1", ReplicaState::Healthy),
            replica("c0", "2", ReplicaState::Starting),
        ];
        let shares = weighted_traffic(&only_stable, "1", "2", 500);
        assert_eq!(
            shares
                .iter()
                .map(|s| (s.version.as_str(), s.weight))
                .collect::<Vec<_>>(),
            vec![("1", 10_000)]
        );
        for bp in [0, 1, 5_000, 9_999, 10_000, 20_000] {
            let total: u32 = weighted_traffic(&both, "1", "2", bp)
                .iter()
                .map(|s| s.weight)
                .sum();
            assert_eq!(total, 10_000, "weights always sum to 100%");
        }
    }

    #[test]
    fn state_machine_moves_only_forward() {
        use DeploymentState::*;
        let failed = Verdict::Failed("bad".into());
        assert_eq!(
            next_state(Progressing, &failed, true).map(|s| s.0),
            Some(RollingBack)
        );
        assert_eq!(
            next_state(Progressing, &failed, false).map(|s| s.0),
            Some(Failed)
        );
        assert_eq!(
            next_state(RollingBack, &Verdict::Converged, true).map(|s| s.0),
            Some(RolledBack)
        );
        assert_eq!(
            next_state(Progressing, &Verdict::Converged, true).map(|s| s.0),
            Some(Succeeded)
        );
        for terminal in DeploymentState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for verdict in [
                Verdict::Converged,
                failed.clone(),
                Verdict::Progress(vec![]),
            ] {
                assert_eq!(next_state(terminal, &verdict, true), None);
            }
        }
    }
}
