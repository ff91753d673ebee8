//! Golden dataset for the DORA metrics: four weeks of an app deploying ten times a day, with
//! rollbacks, incidents, a rollback request, a failed deployment, deployments that end after
//! midnight UTC, a commit time from the future, and noise from other apps and environments.
//! Every expectation below is computed by hand in the comments.

#[path = "dora_golden/dataset.rs"]
mod dataset;

use dataset::{DAY, DAYS, HOUR, MIN, T0, dataset, fact, query};
use ferry_core::dora::{Bucket, DoraError, IncidentFact, Interval, Level, compute};
use ferry_core::model::{DeploymentKind, DeploymentState};

#[test]
fn golden_summary_over_four_weeks() {
    let (deployments, incidents) = dataset();
    assert!(deployments.len() > 300);
    let report = compute(
        &deployments,
        &incidents,
        &query(T0, T0 + DAYS * DAY, Interval::All),
    )
    .unwrap();
    assert!(report.buckets.is_empty());
    let s = &report.summary;
    // 28 days × 10 + 27 late ones ending inside the window (day 27's ends on day 28).
    assert_eq!(s.production_deployments.len(), 307);
    // 28 × 9 succeeded regular − day 27's failed one + 27 late ones.
    assert_eq!(s.deployment_frequency.count, 278);
    assert!((s.deployment_frequency.per_day - 278.0 / 28.0).abs() < 1e-9);
    assert_eq!(s.deployment_frequency.level, Some(Level::Elite));
    assert!(
        !s.deployment_frequency.deployments.contains(&1060),
        "a rollback request is no deployment of a change"
    );
    assert!(!s.deployment_frequency.deployments.contains(&90_001));

    // 277 samples (day 3's negative one dropped): 27×40m, 27×1h10, 28×2h10, 28×3h10,
    // 28×4h10, then 6h10 from index 138 = the 139th, the median.
    let lead = &s.lead_time_for_changes;
    assert_eq!(lead.samples.len(), 277);
    assert_eq!(lead.dropped_negative, vec![300]);
    assert_eq!(lead.median_ms, Some(6 * HOUR + 10 * MIN));
    assert_eq!(lead.level, Some(Level::Elite));

    // 28 rolled back + 14 with incidents (two each, counted once) + 1 rolled away + 1 failed.
    let cfr = &s.change_failure_rate;
    assert_eq!((cfr.count, cfr.total), (44, 307));
    assert!((cfr.rate.unwrap() - 44.0 / 307.0).abs() < 1e-12);
    assert_eq!(cfr.level, Some(Level::Medium));
    assert!(cfr.deployments.contains(&1009) && cfr.deployments.contains(&2709));
    assert!(cfr.deployments.contains(&7) && !cfr.deployments.contains(&107));

    // 5 min (rollback request), 28 × 10 min, 14 × 1h10, 5h05 (day 27 fixed by the late one).
    let rec = &s.failed_deployment_recovery_time;
    assert_eq!(rec.samples.len(), 44);
    assert!(rec.unrecovered.is_empty());
    assert_eq!(rec.median_ms, Some(10 * MIN));
    assert_eq!(rec.level, Some(Level::Elite));
    let sample = |id: i64| rec.samples.iter().find(|x| x.deployment == id).unwrap().ms;
    assert_eq!(sample(1009), 5 * MIN);
    assert_eq!(sample(4), 10 * MIN);
    assert_eq!(sample(207), HOUR + 10 * MIN);
    assert_eq!(sample(2709), 5 * HOUR + 5 * MIN);

    // Fixes: 28 × k=5 + 14 × k=8 + day 10's late one; day 27's late one ends outside.
    let rework = &s.deployment_rework_rate;
    assert_eq!((rework.count, rework.total), (43, 307));
    assert!(rework.deployments.contains(&1050) && !rework.deployments.contains(&2750));
    // 43/307 = 14.0 %: at most 15 %.
    assert_eq!(rework.level, Some(Level::Medium));
}

fn day(buckets: &[Bucket], d: i64) -> &Bucket {
    let b = &buckets[d as usize];
    assert_eq!((b.start_ms, b.end_ms), (T0 + d * DAY, T0 + (d + 1) * DAY));
    b
}

#[test]
fn golden_daily_buckets_cut_at_midnight_utc() {
    let (deployments, incidents) = dataset();
    let report = compute(
        &deployments,
        &incidents,
        &query(T0, T0 + DAYS * DAY, Interval::Daily),
    )
    .unwrap();
    assert_eq!(report.buckets.len(), 28);

    // Day 0: no late one from the day before; k=4 rolled back, k=7 incidents.
    let f = &day(&report.buckets, 0).figures;
    assert_eq!(f.production_deployments.len(), 10);
    assert_eq!(f.deployment_frequency.count, 9);
    assert_eq!(
        (f.change_failure_rate.count, f.deployment_rework_rate.count),
        (2, 2)
    );
    assert_eq!(f.lead_time_for_changes.median_ms, Some(6 * HOUR + 10 * MIN));

    // Day 3: the negative lead time dropped; 40m, 2h10..4h10, 6h10..10h10 → 6h10.
    let f = &day(&report.buckets, 3).figures;
    assert_eq!(f.lead_time_for_changes.dropped_negative, vec![300]);
    assert_eq!(f.lead_time_for_changes.samples.len(), 9);
    assert_eq!(f.lead_time_for_changes.median_ms, Some(6 * HOUR + 10 * MIN));

    // Day 10: k=4, k=7 and k=9 failed; 10 min, 1h10, 5 min → 10 min.
    let f = &day(&report.buckets, 10).figures;
    assert_eq!(
        (f.change_failure_rate.count, f.change_failure_rate.total),
        (3, 11)
    );
    assert_eq!(f.failed_deployment_recovery_time.median_ms, Some(10 * MIN));

    // Day 11: day 10's late deployment (ended 00:05) is here, and it is the fix.
    let f = &day(&report.buckets, 11).figures;
    assert!(f.production_deployments.contains(&1050));
    assert!(
        !day(&report.buckets, 10)
            .figures
            .production_deployments
            .contains(&1050)
    );
    // In end order: 1050 ended 00:05, 1105 at 11:10.
    assert_eq!(f.deployment_rework_rate.deployments, vec![1050, 1105]);
    assert_eq!(f.change_failure_rate.count, 1);

    let summed: usize = report
        .buckets
        .iter()
        .map(|b| b.figures.production_deployments.len())
        .sum();
    assert_eq!(summed, 307);
}

#[test]
fn golden_weekly_and_monthly_buckets() {
    let (deployments, incidents) = dataset();
    let weekly = compute(
        &deployments,
        &incidents,
        &query(T0, T0 + DAYS * DAY, Interval::Weekly),
    )
    .unwrap();
    let sizes: Vec<usize> = weekly
        .buckets
        .iter()
        .map(|b| b.figures.production_deployments.len())
        .collect();
    assert_eq!(sizes, vec![76, 77, 77, 77]);
    assert_eq!(weekly.buckets[1].start_ms, T0 + 7 * DAY);

    // A window starting mid-week snaps the next bucket to Monday.
    let mid = compute(
        &deployments,
        &incidents,
        &query(T0 + 3 * DAY, T0 + 10 * DAY, Interval::Weekly),
    )
    .unwrap();
    let bounds: Vec<(i64, i64)> = mid.buckets.iter().map(|b| (b.start_ms, b.end_ms)).collect();
    assert_eq!(
        bounds,
        vec![(T0 + 3 * DAY, T0 + 7 * DAY), (T0 + 7 * DAY, T0 + 10 * DAY)]
    );

    // 2026-02-15 .. 2026-04-10: February empty, March everything (day 27's late one too),
    // April empty.
    let (feb15, mar1, apr1, apr10) = (T0 - 15 * DAY, T0 - DAY, T0 + 30 * DAY, T0 + 39 * DAY);
    let monthly = compute(
        &deployments,
        &incidents,
        &query(feb15, apr10, Interval::Monthly),
    )
    .unwrap();
    let bounds: Vec<(i64, i64)> = monthly
        .buckets
        .iter()
        .map(|b| (b.start_ms, b.end_ms))
        .collect();
    assert_eq!(bounds, vec![(feb15, mar1), (mar1, apr1), (apr1, apr10)]);
    let feb = &monthly.buckets[0].figures;
    assert_eq!(feb.deployment_frequency.count, 0);
    assert_eq!(feb.deployment_frequency.level, Some(Level::Low));
    assert_eq!(feb.change_failure_rate.rate, None);
    assert_eq!(feb.lead_time_for_changes.median_ms, None);
    let mar = &monthly.buckets[1].figures;
    assert_eq!(mar.production_deployments.len(), 308);
    assert_eq!(mar.deployment_rework_rate.count, 44);
    assert_eq!(mar.deployment_frequency.count, 279);
}

#[test]
fn unrecovered_failure_and_bad_windows() {
    let (mut deployments, incidents) = dataset();
    // A failure after everything else: nothing recovers it.
    let late = T0 + 40 * DAY;
    deployments.push(fact(
        99_999,
        DeploymentKind::Deploy,
        DeploymentState::Failed,
        late,
        late + MIN,
    ));
    let report = compute(
        &deployments,
        &incidents,
        &query(late, late + DAY, Interval::All),
    )
    .unwrap();
    assert_eq!(
        report.summary.failed_deployment_recovery_time.unrecovered,
        vec![99_999]
    );
    assert_eq!(
        report.summary.failed_deployment_recovery_time.median_ms,
        None
    );
    assert_eq!(report.summary.change_failure_rate.rate, Some(1.0));

    assert_eq!(
        compute(&deployments, &incidents, &query(T0, T0, Interval::Daily)),
        Err(DoraError::EmptyWindow {
            start_ms: T0,
            end_ms: T0
        })
    );
    assert!(matches!(
        compute(
            &deployments,
            &incidents,
            &query(T0, T0 + 20_000 * DAY, Interval::Daily)
        ),
        Err(DoraError::TooManyBuckets { .. })
    ));
    assert!(
        compute(
            &deployments,
            &incidents,
            &query(T0, T0 + 20_000 * DAY, Interval::Monthly)
        )
        .is_ok()
    );
}

#[test]
fn gitlab_shaped_series() {
    use ferry_core::dora::{Metric, series};
    let (deployments, incidents) = dataset();
    let weekly = compute(
        &deployments,
        &incidents,
        &query(T0, T0 + 14 * DAY, Interval::Weekly),
    )
    .unwrap();
    let points = series(&weekly, Metric::DeploymentFrequency);
    // Week 0: 7 × 9 + 6 late ones; week 1: 7 × 9 + 7 late ones.
    let got: Vec<(Option<String>, Option<f64>)> =
        points.into_iter().map(|p| (p.date, p.value)).collect();
    assert_eq!(
        got,
        vec![
            (Some("2026-03-02".into()), Some(69.0)),
            (Some("2026-03-09".into()), Some(70.0))
        ]
    );
    let metric: Metric = serde_json::from_str("\"time_to_restore_service\"").unwrap();
    assert_eq!(metric, Metric::FailedDeploymentRecoveryTime);
    let all = compute(
        &deployments,
        &incidents,
        &query(T0, T0 + DAYS * DAY, Interval::All),
    )
    .unwrap();
    let points = series(&all, Metric::LeadTimeForChanges);
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].date, None);
    assert_eq!(points[0].value, Some((6 * 3600 + 600) as f64));
}

#[test]
fn windows_from_dates() {
    use ferry_core::dora::window;
    let noon = T0 + 12 * HOUR;
    assert_eq!(
        window(None, None, noon),
        Ok((T0 + DAY - 90 * DAY, T0 + DAY))
    );
    assert_eq!(
        window(Some("2026-03-02"), Some("2026-03-02"), noon),
        Ok((T0, T0 + DAY))
    );
    assert!(matches!(
        window(Some("2026-3-2x"), None, noon),
        Err(DoraError::BadDate {
            field: "start_date",
            ..
        })
    ));
    assert!(matches!(
        window(None, Some(&"9".repeat(5000)), noon),
        Err(DoraError::BadDate {
            field: "end_date",
            ..
        })
    ));
    assert!(matches!(
        window(Some("2026-03-05"), Some("2026-03-02"), noon),
        Err(DoraError::EmptyWindow { .. })
    ));
    assert!(matches!(
        window(Some("2000-01-01"), Some("2026-03-02"), noon),
        Err(DoraError::WindowTooLong { .. })
    ));
}

#[test]
fn a_rollback_request_fails_only_the_succeeded_deployment_right_before_it() {
    let ok = fact(
        1,
        DeploymentKind::Deploy,
        DeploymentState::Succeeded,
        1000,
        1010,
    );
    let bad = fact(
        2,
        DeploymentKind::Deploy,
        DeploymentState::RolledBack,
        2000,
        2010,
    );
    let back = fact(
        3,
        DeploymentKind::Rollback,
        DeploymentState::Succeeded,
        3000,
        3010,
    );
    let report = compute(
        &[ok.clone(), bad, back.clone()],
        &[],
        &query(0, DAY, Interval::All),
    )
    .unwrap();
    assert_eq!(report.summary.change_failure_rate.deployments, vec![2]);
    let report = compute(&[ok, back], &[], &query(0, DAY, Interval::All)).unwrap();
    assert_eq!(report.summary.change_failure_rate.deployments, vec![1]);
    assert_eq!(
        report.summary.failed_deployment_recovery_time.samples[0].ms,
        10
    );
}

/// The benchmark (docs/benchmarks.md): 100,000 deployments over about 3 years, daily buckets.
/// `cargo test --release -p ferry-core --test dora_golden -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: run in release"]
fn bench_100k_deployments() {
    let mut deployments = Vec::with_capacity(100_000);
    let mut incidents = Vec::new();
    for i in 0..100_000i64 {
        let start = T0 + i * 15 * MIN;
        let state = if i % 20 == 0 {
            DeploymentState::RolledBack
        } else {
            DeploymentState::Succeeded
        };
        let mut f = fact(i, DeploymentKind::Deploy, state, start, start + 5 * MIN);
        f.commit_at_ms = Some(start - (i % 48) * HOUR);
        deployments.push(f);
        if i % 33 == 0 {
            incidents.push(IncidentFact {
                deployment_id: i,
                opened_at_ms: start + 6 * MIN,
                restored_at_ms: None,
            });
        }
    }
    let q = query(T0, T0 + 1100 * DAY, Interval::Daily);
    let started = std::time::Instant::now();
    let report = compute(&deployments, &incidents, &q).unwrap();
    let took = started.elapsed();
    println!(
        "100000 deployments, {} daily buckets: {took:?}",
        report.buckets.len()
    );
    assert_eq!(report.summary.production_deployments.len(), 100_000);
}
