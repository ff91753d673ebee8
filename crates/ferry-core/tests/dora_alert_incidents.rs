//! DORA and alert incidents: a critical alert that fires is an incident of the deployment
//! running then (a failed change); the environment recovers when the alert resolves, or when
//! a later deployment succeeds, whichever comes first.

#[path = "dora_golden/dataset.rs"]
mod dataset;

use dataset::{DAY, MIN, fact, query};
use ferry_core::dora::{IncidentFact, Interval, compute};
use ferry_core::model::{DeploymentKind, DeploymentState};

fn succeeded(id: i64, start: i64) -> ferry_core::dora::DeploymentFact {
    fact(
        id,
        DeploymentKind::Deploy,
        DeploymentState::Succeeded,
        start,
        start + MIN,
    )
}

fn alert(deployment_id: i64, opened: i64, restored: Option<i64>) -> IncidentFact {
    IncidentFact {
        deployment_id,
        opened_at_ms: opened,
        restored_at_ms: restored,
    }
}

#[test]
fn an_alert_incident_fails_its_deployment_and_recovers_when_the_alert_resolves() {
    let q = query(0, DAY, Interval::All);
    let deployments = [succeeded(1, 0), succeeded(2, 60 * MIN)];
    // fired 10 min after deployment 1 ended, resolved 5 min later: recovered in 5 min
    let report = compute(&deployments, &[alert(1, 11 * MIN, Some(16 * MIN))], &q).unwrap();
    let s = &report.summary;
    assert_eq!(s.change_failure_rate.deployments, vec![1]);
    assert_eq!(
        (s.change_failure_rate.count, s.change_failure_rate.total),
        (1, 2)
    );
    assert_eq!(s.failed_deployment_recovery_time.median_ms, Some(5 * MIN));
    // the next deployment (ended at 61 min) rework-fixes it either way
    assert_eq!(s.deployment_rework_rate.deployments, vec![2]);

    // still firing: recovered only by the next succeeded deployment (61 − 11 = 50 min)
    let report = compute(&deployments, &[alert(1, 11 * MIN, None)], &q).unwrap();
    assert_eq!(
        report.summary.failed_deployment_recovery_time.median_ms,
        Some(50 * MIN)
    );
    // resolved after the next deployment succeeded: that deployment recovered it first
    let report = compute(&deployments, &[alert(1, 11 * MIN, Some(90 * MIN))], &q).unwrap();
    assert_eq!(
        report.summary.failed_deployment_recovery_time.median_ms,
        Some(50 * MIN)
    );
    // the only deployment, alert still firing: unrecovered
    let report = compute(&deployments[..1], &[alert(1, 11 * MIN, None)], &q).unwrap();
    assert_eq!(
        report.summary.failed_deployment_recovery_time.unrecovered,
        vec![1]
    );
    // two alerts on one deployment: one failed change, recovered when the first resolved
    let report = compute(
        &deployments[..1],
        &[alert(1, 11 * MIN, Some(13 * MIN)), alert(1, 12 * MIN, None)],
        &q,
    )
    .unwrap();
    let s = &report.summary;
    assert_eq!(s.change_failure_rate.count, 1);
    assert_eq!(s.failed_deployment_recovery_time.median_ms, Some(2 * MIN));
}
