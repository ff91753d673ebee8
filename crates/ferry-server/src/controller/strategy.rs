//! What a deployment's kind and its environment's strategy mean for a pass: the progressive plan it follows, the pace of a rolling update, how it is described.

use std::time::Duration;

use ferry_core::manifest::{Manifest, Strategy};
use ferry_core::model::DeploymentKind;
use ferry_core::rollout::Pace;
use ferry_store::DeploymentRecord;

use crate::progressive::plan_for;

use ferry_core::progressive::Plan;

/// The progressive plan a deployment follows, if it follows one: canary and blue/green
/// need a serving version to compare with, and rollbacks go straight back.
pub(super) fn plan_of(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> Option<Plan> {
    if !progressive(deployment, strategy) {
        return None;
    }
    plan_for(strategy, largest_replicas(manifest, env))
}

/// Whether a deployment follows a progressive plan ([`plan_of`]): a canary or blue/green
/// strategy, a different version serving to compare with, and not a rollback.
pub(super) fn progressive(deployment: &DeploymentRecord, strategy: &Strategy) -> bool {
    matches!(strategy, Strategy::Canary(_) | Strategy::BlueGreen(_))
        && deployment.kind != DeploymentKind::Rollback
        && deployment
            .previous_version
            .as_ref()
            .is_some_and(|previous| previous != &deployment.version)
}

pub(super) fn largest_replicas(manifest: &Manifest, env: &str) -> u32 {
    manifest
        .services
        .keys()
        .map(|s| manifest.replicas(s, env))
        .max()
        .unwrap_or(1)
}

pub(super) fn pace_of(strategy: &Strategy, manifest: &Manifest, env: &str) -> Pace {
    match strategy {
        Strategy::Recreate {} => Pace::Recreate,
        // A first deployment (nothing to compare with) of a progressive strategy starts
        // everything at once.
        Strategy::Canary(_) | Strategy::BlueGreen(_) => restore_pace(manifest, env),
        Strategy::Rolling(rolling) => {
            let desired = largest_replicas(manifest, env);
            Pace::Rolling {
                max_surge: rolling.max_surge.resolve(desired, true),
                max_unavailable: rolling.max_unavailable.resolve(desired, false),
            }
        }
    }
}

/// Restoring a known-good version goes as fast as capacity allows: start all of it at
/// once, keep the current replicas until their replacements are ready.
pub(super) fn restore_pace(manifest: &Manifest, env: &str) -> Pace {
    Pace::Rolling {
        max_surge: largest_replicas(manifest, env),
        max_unavailable: 0,
    }
}

/// How a deployment actually runs, for its timeline: in a canary or blue/green
/// environment a rollback, a first deployment or a redeploy takes the rolling path.
pub(super) fn describe_run(
    deployment: &DeploymentRecord,
    strategy: &Strategy,
    manifest: &Manifest,
    env: &str,
) -> String {
    let progressive = matches!(strategy, Strategy::Canary(_) | Strategy::BlueGreen(_));
    if !progressive || plan_of(deployment, strategy, manifest, env).is_some() {
        return describe(strategy);
    }
    let why = if deployment.kind == DeploymentKind::Rollback {
        "a rollback"
    } else if deployment.previous_version.is_none() {
        "a first deployment"
    } else {
        "the serving version"
    };
    match pace_of(strategy, manifest, env) {
        Pace::Rolling { max_surge, .. } => {
            format!("rolling, max surge {max_surge}, max unavailable 0: {why} skips the steps")
        }
        Pace::Recreate => "recreate".to_string(),
    }
}

pub(super) fn describe(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Recreate {} => "recreate".to_string(),
        Strategy::Rolling(r) => format!(
            "rolling, max surge {}, max unavailable {}",
            r.max_surge, r.max_unavailable
        ),
        Strategy::Canary(c) => format!("canary, {} steps", c.steps.len()),
        Strategy::BlueGreen(b) => format!(
            "blue/green, {}",
            if b.auto_promote {
                "auto-promote"
            } else {
                "promote by hand"
            }
        ),
    }
}

pub(super) fn target_or(version: &Option<String>) -> &str {
    version.as_deref().unwrap_or("nothing")
}

pub(super) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
