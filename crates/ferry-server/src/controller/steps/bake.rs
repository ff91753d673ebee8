//! The bake: a converged version is watched for the environment's `bake` (its own manifest
//! revision's) before it succeeds. Meanwhile the rollout's own checks go on (crash loops,
//! failing health, a canary's background analysis) and roll back as during the rollout.

use ferry_core::duration::HumanDuration;
use ferry_core::model::{DeploymentState, EventKind};
use ferry_store::DeploymentRecord;

use super::{Effect, Transition};
use crate::controller::strategy::millis;
use crate::progressive::Phase;

/// The bake's answer: what to do, and whether the deployment may succeed in this pass.
#[derive(Debug, PartialEq)]
pub(in crate::controller) struct Plan {
    pub effects: Vec<Effect>,
    pub baked: bool,
}

/// For a deployment that would succeed now (`phase`: as stored): the first time, records
/// when the bake ends on its phase (so a restarted server keeps the same end) and says so;
/// until then, waits; at the end, says `baked` and lets it succeed. No `bake`: baked.
pub(in crate::controller) fn step(
    deployment: &DeploymentRecord,
    phase: &Phase,
    bake: Option<HumanDuration>,
    now: i64,
) -> Plan {
    let Some(bake) = bake else {
        return Plan {
            effects: Vec::new(),
            baked: true,
        };
    };
    match phase.bake_until_ms {
        None => {
            let until = now.saturating_add(millis(bake.get()));
            let mut phase = phase.clone();
            phase.bake_until_ms = Some(until);
            let message = format!(
                "{} converged; baking until {} ({bake}): rolls back on crash loops, failing \
                 health or a failing analysis",
                deployment.version,
                crate::progressive::clock(until)
            );
            Plan {
                effects: vec![
                    Transition::to(DeploymentState::Progressing, message)
                        .phase(&phase)
                        .into(),
                ],
                baked: false,
            }
        }
        Some(until) if now < until => Plan {
            effects: Vec::new(),
            baked: false,
        },
        Some(_) => Plan {
            effects: vec![Effect::Event {
                kind: EventKind::Bake,
                message: format!(
                    "baked: {} watched for {bake} without a failure",
                    deployment.version
                ),
            }],
            baked: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use ferry_core::model::DeploymentKind;
    use std::time::Duration;

    const NOW: i64 = 1_796_551_200_000;

    fn minutes(n: u64) -> Option<HumanDuration> {
        Some(HumanDuration(Duration::from_secs(60 * n)))
    }

    #[test]
    fn every_moment_of_a_bake_has_its_answer() {
        let d = deployment(DeploymentState::Progressing, DeploymentKind::Deploy);
        let until = |ms: i64| Phase {
            bake_until_ms: Some(ms),
            ..Phase::default()
        };
        // No bake: it succeeds now, saying nothing.
        assert_eq!(
            step(&d, &Phase::default(), None, NOW),
            Plan {
                effects: Vec::new(),
                baked: true
            }
        );
        // Not begun: its end is stored on the phase by a transition, and it waits.
        let begun = step(&d, &Phase::default(), minutes(5), NOW);
        assert!(!begun.baked);
        let [Effect::Transition(t)] = begun.effects.as_slice() else {
            panic!("one transition: {:?}", begun.effects);
        };
        assert_eq!(t.to, DeploymentState::Progressing);
        assert_eq!(t.phase, Some(until(NOW + 300_000).to_value()));
        assert!(
            t.message
                .starts_with("2.0 converged; baking until 2026-12-06T10:05:00Z (5m)"),
            "{}",
            t.message
        );
        // Begun, not over (to the last millisecond): it waits, saying nothing.
        for now in [NOW, NOW + 299_999] {
            assert_eq!(
                step(&d, &until(NOW + 300_000), minutes(5), now),
                Plan {
                    effects: Vec::new(),
                    baked: false
                }
            );
        }
        // Over: `baked` on the timeline, and it may succeed.
        let over = step(&d, &until(NOW + 300_000), minutes(5), NOW + 300_000);
        assert!(over.baked);
        assert_eq!(
            over.effects,
            vec![Effect::Event {
                kind: EventKind::Bake,
                message: "baked: 2.0 watched for 5m without a failure".into()
            }]
        );
    }
}
