use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::api::{DeploymentView, EnvStatus, ReplicaView, TrafficStatus, TrafficView};
use crate::duration::HumanDuration;
use crate::gates::GateState;
use crate::model::{DeploymentKind, DeploymentState, ReplicaState};

fn rule(condition: &str, for_s: u64, keep_s: u64) -> AlertRule {
    AlertRule {
        name: "high_error_rate".into(),
        environments: Vec::new(),
        service: None,
        condition: Some(condition.into()),
        prometheus: None,
        for_: (for_s > 0).then(|| HumanDuration(Duration::from_secs(for_s))),
        keep_firing_for: (keep_s > 0).then(|| HumanDuration(Duration::from_secs(keep_s))),
        severity: Severity::Critical,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        actions: AlertActions::default(),
        interval: None,
    }
}

fn sample(version: &str, value: f64) -> Sample {
    Sample {
        labels: BTreeMap::from([
            ("service".to_string(), "web".to_string()),
            ("version".to_string(), version.to_string()),
        ]),
        value,
    }
}

/// Runs `steps` (time in seconds, value of version 1.0.0 or None for no sample, or NaN)
/// through `evaluate` and returns the status after each step with the transitions seen.
fn run(
    r: &AlertRule,
    steps: &[(i64, Option<f64>)],
) -> Vec<(AlertStatus, Vec<(AlertStatus, AlertStatus)>)> {
    let condition = r.parsed_condition().expect("parses");
    let mut alerts: Vec<AlertInstance> = Vec::new();
    let mut out = Vec::new();
    for (t, value) in steps {
        let samples = value.map(|v| vec![sample("1.0.0", v)]).unwrap_or_default();
        let e = evaluate(
            r,
            condition.as_ref(),
            &Input::Samples(samples),
            &alerts,
            t * 1000,
        );
        let status = e.alerts.first().map_or(AlertStatus::Inactive, |a| a.status);
        out.push((
            status,
            e.transitions.iter().map(|t| (t.from, t.to)).collect(),
        ));
        alerts = e.alerts;
    }
    out
}

use AlertStatus::{Firing as F, Inactive as I, Pending as P, Resolved as R};

#[test]
fn evaluation_follows_prometheus_for_and_keep_firing_for() {
    struct Case {
        name: &'static str,
        for_s: u64,
        keep_s: u64,
        steps: Vec<(i64, Option<f64>)>,
        statuses: Vec<AlertStatus>,
        transitions: Vec<Vec<(AlertStatus, AlertStatus)>>,
    }
    let hi = Some(0.5);
    let lo = Some(0.0);
    let cases = vec![
        Case {
            name: "for 0 fires at once, resolves at once",
            for_s: 0,
            keep_s: 0,
            steps: vec![(0, lo), (10, hi), (20, hi), (30, lo)],
            statuses: vec![I, F, F, R],
            transitions: vec![vec![], vec![(I, F)], vec![], vec![(F, R)]],
        },
        Case {
            name: "pending until for has passed, inclusive",
            for_s: 20,
            keep_s: 0,
            steps: vec![(0, hi), (10, hi), (19, hi), (20, hi), (30, hi)],
            statuses: vec![P, P, P, F, F],
            transitions: vec![vec![(I, P)], vec![], vec![], vec![(P, F)], vec![]],
        },
        Case {
            name: "a pending alert that stops holding ends without firing",
            for_s: 20,
            keep_s: 0,
            steps: vec![(0, hi), (10, lo), (20, hi), (30, hi), (40, hi)],
            statuses: vec![P, I, P, P, F],
            transitions: vec![
                vec![(I, P)],
                vec![(P, I)],
                vec![(I, P)],
                vec![],
                vec![(P, F)],
            ],
        },
        Case {
            name: "a missing series does not hold (no data resolves)",
            for_s: 0,
            keep_s: 0,
            steps: vec![(0, hi), (10, None)],
            statuses: vec![F, R],
            transitions: vec![vec![(I, F)], vec![(F, R)]],
        },
        Case {
            name: "NaN never holds",
            for_s: 0,
            keep_s: 0,
            steps: vec![(0, Some(f64::NAN)), (10, hi), (20, Some(f64::NAN))],
            statuses: vec![I, F, R],
            transitions: vec![vec![], vec![(I, F)], vec![(F, R)]],
        },
        Case {
            name: "keep_firing_for holds a flapping alert, then resolves",
            for_s: 0,
            keep_s: 30,
            steps: vec![(0, hi), (10, lo), (20, hi), (30, lo), (49, lo), (50, lo)],
            statuses: vec![F, F, F, F, F, R],
            transitions: vec![vec![(I, F)], vec![], vec![], vec![], vec![], vec![(F, R)]],
        },
        Case {
            name: "a resolved alert that holds again starts a new episode",
            for_s: 10,
            keep_s: 0,
            steps: vec![(0, hi), (10, hi), (20, lo), (30, hi), (40, hi)],
            statuses: vec![P, F, R, P, F],
            transitions: vec![
                vec![(I, P)],
                vec![(P, F)],
                vec![(F, R)],
                vec![(R, P)],
                vec![(P, F)],
            ],
        },
        Case {
            name: "resolved alerts are dropped after the retention",
            for_s: 0,
            keep_s: 0,
            steps: vec![(0, hi), (10, lo), (10 + 899, lo), (10 + 900, lo)],
            statuses: vec![F, R, R, I],
            transitions: vec![vec![(I, F)], vec![(F, R)], vec![], vec![]],
        },
    ];
    for case in cases {
        let r = rule("error_rate > 1%", case.for_s, case.keep_s);
        let got = run(&r, &case.steps);
        let statuses: Vec<AlertStatus> = got.iter().map(|(s, _)| *s).collect();
        let transitions: Vec<_> = got.into_iter().map(|(_, t)| t).collect();
        assert_eq!(statuses, case.statuses, "{}: statuses", case.name);
        assert_eq!(transitions, case.transitions, "{}: transitions", case.name);
    }
}

#[test]
fn every_status_against_every_input_in_one_table() {
    // (status before, condition holds now, for elapsed?, keep elapsed?) → status after
    let r = rule("error_rate > 1%", 10, 10);
    let condition = r.parsed_condition().unwrap();
    let base = AlertInstance {
        rule: r.name.clone(),
        series: sample("1.0.0", 0.0).series(),
        labels: sample("1.0.0", 0.0).labels,
        status: P,
        active_since_ms: 0,
        last_active_ms: 0,
        fired_at_ms: None,
        resolved_at_ms: None,
        value: 0.5,
        fired_value: None,
        acted: false,
    };
    let table = [
        (P, true, 5, P),
        (P, true, 10, F),
        (P, false, 5, I),
        (F, true, 5, F),
        (F, false, 5, F),
        (F, false, 10, R),
        (R, false, 5, R),
        (R, true, 5, P),
    ];
    for (before, holds, at_s, after) in table {
        let mut prev = base.clone();
        prev.status = before;
        if before == R {
            prev.resolved_at_ms = Some(0);
        }
        let value = if holds { 0.5 } else { 0.0 };
        let e = evaluate(
            &r,
            condition.as_ref(),
            &Input::Samples(vec![sample("1.0.0", value)]),
            &[prev],
            at_s * 1000,
        );
        let got = e.alerts.first().map_or(I, |a| a.status);
        assert_eq!(got, after, "{before} holds={holds} at {at_s}s");
        assert_eq!(
            e.transitions.len(),
            usize::from(before != after),
            "{before} → {after}"
        );
    }
}

#[test]
fn a_failed_measurement_changes_nothing() {
    let r = rule("error_rate > 1%", 0, 0);
    let c = r.parsed_condition().unwrap();
    let fired = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("1.0.0", 0.3)]),
        &[],
        0,
    );
    assert_eq!(fired.alerts[0].status, F);
    let after = evaluate(
        &r,
        c.as_ref(),
        &Input::Failed("unreachable".into()),
        &fired.alerts,
        60_000,
    );
    assert_eq!(after.alerts, fired.alerts);
    assert!(after.transitions.is_empty());
}

#[test]
fn each_series_is_its_own_alert_and_keeps_the_value_that_fired() {
    let r = rule("error_rate > 1%", 0, 0);
    let c = r.parsed_condition().unwrap();
    let first = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("1.0.0", 0.0), sample("2.0.0", 0.4)]),
        &[],
        0,
    );
    assert_eq!(first.alerts.len(), 1);
    assert_eq!(first.alerts[0].labels["version"], "2.0.0");
    assert_eq!(first.alerts[0].fired_value, Some(0.4));
    let second = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("1.0.0", 0.2), sample("2.0.0", 0.9)]),
        &first.alerts,
        1000,
    );
    assert_eq!(second.alerts.len(), 2);
    let v2 = second
        .alerts
        .iter()
        .find(|a| a.labels["version"] == "2.0.0")
        .unwrap();
    assert_eq!(
        (v2.value, v2.fired_value, v2.fired_at_ms),
        (0.9, Some(0.4), Some(0))
    );
    assert_eq!(second.transitions.len(), 1, "only 1.0.0 fired now");
}

#[test]
fn retiring_a_rule_resolves_what_fires() {
    let r = rule("error_rate > 1%", 0, 0);
    let c = r.parsed_condition().unwrap();
    let fired = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("1.0.0", 0.3)]),
        &[],
        0,
    );
    let retired = retire(&fired.alerts, 5000);
    assert_eq!(retired.transitions.len(), 1);
    assert_eq!(
        (retired.transitions[0].from, retired.transitions[0].to),
        (F, R)
    );
    assert!(retired.alerts.is_empty());
}

#[test]
fn conditions_parse_with_their_units_and_refuse_what_ferry_cannot_measure() {
    let ok = [
        ("error_rate > 1%", Metric::ErrorRate, Op::Gt, 0.01),
        ("error_rate>=0.05", Metric::ErrorRate, Op::Ge, 0.05),
        ("latency_p99 > 500ms", Metric::LatencyP99, Op::Gt, 500.0),
        ("latency_p50 > 1.5s", Metric::LatencyP50, Op::Gt, 1500.0),
        ("up == 0", Metric::Up, Op::Eq, 0.0),
        ("replicas_ready < 2", Metric::ReplicasReady, Op::Lt, 2.0),
        ("restarts > 3", Metric::Restarts, Op::Gt, 3.0),
        ("request_rate <= 0.5", Metric::RequestRate, Op::Le, 0.5),
        ("up != 1", Metric::Up, Op::Ne, 1.0),
        ("latency_p90 > 250ms", Metric::LatencyP90, Op::Gt, 250.0),
        // CPU and memory: shares of the limit, a bare number in percent (seed 003)
        ("cpu_usage > 80", Metric::Cpu, Op::Gt, 0.8),
        ("memory_usage > 80", Metric::Memory, Op::Gt, 0.8),
        ("cpu > 80%", Metric::Cpu, Op::Gt, 0.8),
        ("memory >= 95.5%", Metric::Memory, Op::Ge, 0.955),
        ("cpu > 150", Metric::Cpu, Op::Gt, 1.5),
    ];
    for (text, metric, op, value) in ok {
        let c = Condition::parse(text, false).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!((c.metric, c.op), (metric, op), "{text}");
        assert!((c.threshold.value() - value).abs() < 1e-9, "{text}");
    }
    // shown as written by the metric's first name, in percent
    let c = Condition::parse("cpu_usage > 80", false).unwrap();
    assert_eq!(c.to_string(), "cpu > 80%");
    assert_eq!(Metric::Memory.format(0.934), "93.4%");
    let bad = [
        ("error_rate > 1", "could never hold"),
        ("cpu > 0.8", "is ambiguous"),
        ("memory_usage > 500ms", "not a duration"),
        ("disk_usage > 80", "unknown metric `disk_usage`"),
        ("latency_p99 > 500", "give the threshold with its unit"),
        ("up = 0", "no comparison"),
        ("error_rate >", "nothing after"),
        ("> 3", "names no metric"),
        ("restarts > 5ms", "not a duration"),
        ("restarts > 5%", "not a share"),
        ("value > 80", "has none"),
        ("error_rate > banana", "invalid threshold"),
    ];
    for (text, wanted) in bad {
        let e = Condition::parse(text, false).expect_err(text);
        assert!(e.contains(wanted), "{text}: {e}");
    }
    assert!(Condition::parse("value > 80", true).is_ok());
    assert!(
        Condition::parse("error_rate > 1%", true)
            .unwrap_err()
            .contains("compares each series with `value`")
    );
    assert!(Op::Ne.holds(1.0, 0.0) && !Op::Ne.holds(f64::NAN, 0.0) && !Op::Gt.holds(f64::NAN, 0.0));
}

fn view_row(version: &str, requests: u64, errors: u64) -> TrafficView {
    TrafficView {
        service: "web".into(),
        version: version.into(),
        requests,
        rate_per_s: requests as f64 / 60.0,
        errors_5xx: errors,
        error_rate: if requests > 0 {
            errors as f64 / requests as f64
        } else {
            0.0
        },
        p50_ms: (requests > 0).then_some(10.0),
        p90_ms: (requests > 0).then_some(15.0),
        p95_ms: (requests > 0).then_some(20.0),
        p99_ms: (requests > 0).then_some(30.0),
    }
}

fn replica(version: &str, state: ReplicaState, restarts: u32) -> ReplicaView {
    ReplicaView {
        id: format!("r-{version}-{restarts}"),
        service: "web".into(),
        version: version.into(),
        port: 1,
        pid: None,
        state,
        restarts,
        in_traffic: state == ReplicaState::Healthy,
        last_exit: None,
        last_output: Vec::new(),
        last_health_check: None,
        cpu_share: None,
        memory_share: None,
    }
}

fn env_status() -> EnvStatus {
    EnvStatus {
        app: "shop".into(),
        env: "production".into(),
        listen: "127.0.0.1:1".into(),
        current_version: Some("1.0.0".into()),
        latest_deployment: None,
        replicas: vec![
            replica("1.0.0", ReplicaState::Healthy, 0),
            replica("1.0.0", ReplicaState::Healthy, 1),
            replica("2.0.0", ReplicaState::Healthy, 0),
            replica("2.0.0", ReplicaState::Unhealthy, 4),
            replica("0.9.0", ReplicaState::Stopping, 9),
        ],
        rollout: None,
        release_tag: None,
        traffic: Some(TrafficStatus {
            window_s: 60.0,
            since_proxy_start: false,
            versions: vec![
                view_row("1.0.0", 100, 0),
                view_row("2.0.0", 20, 10),
                view_row("0.9.0", 0, 0),
            ],
        }),
        observed: None,
    }
}

#[test]
fn ferry_metrics_are_sampled_per_service_and_version() {
    let env = env_status();
    let values = |metric| -> Vec<(String, f64)> {
        builtin_samples(metric, None, &env)
            .into_iter()
            .map(|s| (s.labels["version"].clone(), s.value))
            .collect()
    };
    assert_eq!(
        values(Metric::ErrorRate),
        vec![("1.0.0".into(), 0.0), ("2.0.0".into(), 0.5)],
        "a version without requests has no error rate"
    );
    assert_eq!(values(Metric::RequestRate).len(), 3);
    assert_eq!(
        values(Metric::LatencyP99),
        vec![("1.0.0".into(), 30.0), ("2.0.0".into(), 30.0)]
    );
    assert_eq!(
        values(Metric::LatencyP90),
        vec![("1.0.0".into(), 15.0), ("2.0.0".into(), 15.0)]
    );
    assert_eq!(
        values(Metric::Up),
        vec![("1.0.0".into(), 1.0), ("2.0.0".into(), 0.0)],
        "a replica being stopped does not count"
    );
    assert_eq!(
        values(Metric::ReplicasReady),
        vec![("1.0.0".into(), 2.0), ("2.0.0".into(), 1.0)]
    );
    assert_eq!(
        values(Metric::Restarts),
        vec![("1.0.0".into(), 1.0), ("2.0.0".into(), 4.0)]
    );
    assert!(builtin_samples(Metric::ErrorRate, Some("api"), &env).is_empty());
    let mut no_traffic = env.clone();
    no_traffic.traffic = None;
    assert!(builtin_samples(Metric::ErrorRate, None, &no_traffic).is_empty());
    // without the proxy's counters a traffic metric is not measured (nothing resolves)…
    assert!(matches!(
        builtin_input(Metric::ErrorRate, None, &no_traffic),
        Input::Failed(_)
    ));
    // …while replica metrics still are
    assert!(
        matches!(builtin_input(Metric::Up, None, &no_traffic), Input::Samples(s) if s.len() == 2)
    );
}

#[test]
fn cpu_and_memory_are_the_highest_share_of_each_version_once_sampled() {
    let mut env = env_status();
    // nothing sampled yet (a server that just started): not measured, nothing resolves
    for metric in [Metric::Cpu, Metric::Memory] {
        assert!(
            matches!(builtin_input(metric, None, &env), Input::Failed(ref why) if why.contains("not been sampled")),
            "{metric:?}"
        );
    }
    let shares = [
        (Some(0.2), Some(0.5)),
        (Some(0.9), Some(0.1)),
        (Some(0.3), None),      // memory not read this time
        (None, None),           // just started
        (Some(5.0), Some(5.0)), // being stopped: not counted
    ];
    for (r, (cpu, memory)) in env.replicas.iter_mut().zip(shares) {
        r.cpu_share = cpu;
        r.memory_share = memory;
    }
    let values = |metric| -> Vec<(String, f64)> {
        match builtin_input(metric, None, &env) {
            Input::Samples(samples) => samples
                .into_iter()
                .map(|s| (s.labels["version"].clone(), s.value))
                .collect(),
            Input::Failed(why) => panic!("{why}"),
        }
    };
    assert_eq!(
        values(Metric::Cpu),
        vec![("1.0.0".into(), 0.9), ("2.0.0".into(), 0.3)]
    );
    assert_eq!(values(Metric::Memory), vec![("1.0.0".into(), 0.5)]);
    // `cpu > 80%` holds for 1.0.0 only, and says so in percent
    let r = rule("cpu_usage > 80", 0, 0);
    let c = r.parsed_condition().unwrap().unwrap();
    let e = evaluate(
        &r,
        Some(&c),
        &builtin_input(Metric::Cpu, None, &env),
        &[],
        1_000,
    );
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].labels["version"], "1.0.0");
    assert_eq!(describe(&r, &e.alerts[0]), "cpu 90% (> 80%) on web 1.0.0");
}

#[test]
fn seed_003s_rules_are_accepted_as_written() {
    // seed 003: `condition: cpu_usage > 80`, `duration: 5m`, `severity: critical` (its
    // `labels: {app, environment}` are what Ferry's labels `app` and `env` already say)
    for (name, condition) in [
        ("high_cpu", "cpu_usage > 80"),
        ("high_memory", "memory_usage > 80"),
        ("high_error_rate", "error_rate > 1%"),
    ] {
        let yaml = format!(
            "name: {name}\ncondition: {condition}\nduration: 5m\nseverity: critical\nlabels:\n  environment: production\n"
        );
        let r: AlertRule = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            validate(std::slice::from_ref(&r), &["production"], &["web"]).is_empty(),
            "{name}"
        );
        assert_eq!(r.for_duration(), Duration::from_secs(300));
        assert_eq!(r.severity, Severity::Critical);
    }
}

#[test]
fn prometheus_answers_become_series() {
    let vector = r#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","instance":"db1:9187","job":"postgres"},"value":[1.0,"0"]},
        {"metric":{"instance":"db2:9187","job":"postgres"},"value":[1.0,"1"]}]}}"#;
    let samples = prometheus_samples(vector).unwrap();
    assert_eq!(samples.len(), 2);
    assert_eq!(samples[0].series(), "instance=db1:9187,job=postgres");
    assert_eq!(samples[1].value, 1.0);
    let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"NaN"]}}"#;
    assert!(prometheus_samples(scalar).unwrap()[0].value.is_nan());
    let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    assert!(
        prometheus_samples(empty).unwrap().is_empty(),
        "no series: nothing holds"
    );
    for (body, wanted) in [
        ("nope", "not JSON"),
        (
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#,
            "parse error",
        ),
        (
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
            "matrix",
        ),
        (
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"x"]}]}}"#,
            "no readable value",
        ),
    ] {
        assert!(
            prometheus_samples(body).unwrap_err().contains(wanted),
            "{body}"
        );
    }
}

fn deployment(
    id: i64,
    state: DeploymentState,
    strategy: &str,
    finished_s_ago: Option<i64>,
) -> DeploymentView {
    DeploymentView {
        id,
        app: "shop".into(),
        env: "production".into(),
        version: "2.0.0".into(),
        previous_version: Some("1.0.0".into()),
        strategy: strategy.into(),
        state,
        reason: None,
        kind: DeploymentKind::Deploy,
        requested_by: "user:alice".into(),
        created_at_ms: 0,
        updated_at_ms: 0,
        finished_at_ms: finished_s_ago.map(|s| 1_000_000 - s * 1000),
        gates: Vec::new(),
    }
}

#[test]
fn actions_target_the_deployment_of_the_version_that_fired() {
    let mut r = rule("error_rate > 1%", 0, 0);
    r.actions.rollback = true;
    r.actions.rollback_within = Some(HumanDuration(Duration::from_secs(600)));
    r.actions.pause = true;
    let v2 = sample("2.0.0", 0.5).labels;
    let v1 = sample("1.0.0", 0.5).labels;
    let now = 1_000_000;
    let progressing = deployment(7, DeploymentState::Progressing, "canary", None);
    let plans = plan_actions(&r, &v2, Some(&progressing), now);
    assert_eq!(
        plans[0],
        ActionPlan::Rollback {
            deployment_id: 7,
            version: "2.0.0".into()
        }
    );
    assert!(matches!(&plans[1], ActionPlan::Skip { action, .. } if action == "pause"));
    // the stable version's errors do not roll back the new one
    assert!(
        matches!(&plan_actions(&r, &v1, Some(&progressing), now)[0], ActionPlan::Skip { why, .. } if why.contains("not 1.0.0"))
    );
    // a deployment that succeeded 5 minutes ago, within 10 minutes: rolled back
    let recent = deployment(8, DeploymentState::Succeeded, "rolling", Some(300));
    assert!(matches!(
        plan_actions(&r, &v2, Some(&recent), now)[0],
        ActionPlan::Rollback {
            deployment_id: 8,
            ..
        }
    ));
    let old = deployment(8, DeploymentState::Succeeded, "rolling", Some(601));
    assert!(
        matches!(&plan_actions(&r, &v2, Some(&old), now)[0], ActionPlan::Skip { why, .. } if why.contains("more than 10m ago"))
    );
    let mut rollback = recent.clone();
    rollback.kind = DeploymentKind::Rollback;
    assert!(
        matches!(
            plan_actions(&r, &v2, Some(&rollback), now)[0],
            ActionPlan::Skip { .. }
        ),
        "never roll back a rollback"
    );
    let mut first = progressing.clone();
    first.previous_version = None;
    assert!(
        matches!(&plan_actions(&r, &v2, Some(&first), now)[0], ActionPlan::Skip { why, .. } if why.contains("no earlier version"))
    );
    assert!(matches!(
        plan_actions(&r, &v2, None, now)[0],
        ActionPlan::Skip { .. }
    ));
    // pause only: canary pauses, rolling says why not
    r.actions.rollback = false;
    r.actions.rollback_within = None;
    assert_eq!(
        plan_actions(&r, &v2, Some(&progressing), now),
        vec![ActionPlan::Pause { deployment_id: 7 }]
    );
    let rolling = deployment(9, DeploymentState::Progressing, "rolling", None);
    assert!(
        matches!(&plan_actions(&r, &v2, Some(&rolling), now)[0], ActionPlan::Skip { why, .. } if why.contains("only canary and blue/green"))
    );
    // a Prometheus series without a version label acts on whatever is in progress
    assert_eq!(
        plan_actions(&r, &BTreeMap::new(), Some(&progressing), now),
        vec![ActionPlan::Pause { deployment_id: 7 }]
    );
    r.actions.pause = false;
    assert!(
        plan_actions(&r, &v2, Some(&progressing), now).is_empty(),
        "notify only"
    );
}

#[test]
fn silences_and_the_promotion_gate() {
    let mut r = rule("error_rate > 1%", 0, 0);
    r.actions.block_promotions = true;
    let c = r.parsed_condition().unwrap();
    let fired = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("2.0.0", 0.12)]),
        &[],
        5_000,
    )
    .alerts;
    let rules = vec![r.clone()];
    let held = blocking(&rules, &fired, &[], "shop", "production", 6_000);
    let row = gate_row(&held);
    assert_eq!(row.state, GateState::Waiting);
    assert!(
        row.detail.contains(
            "alert high_error_rate (critical) is firing: error_rate 12% (> 1%) on web 2.0.0"
        ),
        "{}",
        row.detail
    );
    assert_eq!(gate_row(&[]).state, GateState::Met);
    let silence = Silence {
        id: 1,
        app: "shop".into(),
        env: "production".into(),
        alert: "high_error_rate".into(),
        created_by: "user:alice".into(),
        reason: "known, fix coming".into(),
        created_at_ms: 0,
        until_ms: 10_000,
        ended_by: None,
    };
    let silences = [silence.clone()];
    assert!(blocking(&rules, &fired, &silences, "shop", "production", 9_999).is_empty());
    assert_eq!(
        blocking(&rules, &fired, &silences, "shop", "production", 10_000).len(),
        1,
        "expired"
    );
    assert!(silenced_by(&silences, "shop", "staging", "high_error_rate", 0).is_none());
    let mut ended = silence;
    ended.ended_by = Some("user:bob".into());
    assert!(silenced_by(&[ended], "shop", "production", "high_error_rate", 0).is_none());
    let mut quiet = r;
    quiet.actions.block_promotions = false;
    assert!(blocking(&[quiet], &fired, &[], "shop", "production", 6_000).is_empty());
}

#[test]
fn annotations_are_rendered_with_value_and_labels() {
    let mut r = rule("error_rate > 1%", 0, 0);
    r.annotations.insert("summary".into(), "{{ $labels.app }}/{{$labels.env}} {{ $labels.version }}: {{ $value }} errors{{ $labels.nope }}".into());
    r.annotations.insert(
        "runbook_url".into(),
        "https://runbooks.example.com/{{ $labels.alertname }}".into(),
    );
    let c = r.parsed_condition().unwrap();
    let a = evaluate(
        &r,
        c.as_ref(),
        &Input::Samples(vec![sample("2.0.0", 0.125)]),
        &[],
        0,
    )
    .alerts;
    let v = view(&r, "shop", "production", &a[0], &[], 0);
    assert_eq!(
        v.annotations["summary"],
        "shop/production 2.0.0: 12.5% errors"
    );
    assert_eq!(
        v.annotations["runbook_url"],
        "https://runbooks.example.com/high_error_rate"
    );
    assert_eq!(v.labels["severity"], "critical");
}

#[test]
fn validation_locates_each_mistake() {
    let mut bad = rule("disk_usage > 80", 0, 0);
    bad.name = "9lives".into();
    bad.environments = vec!["prod".into()];
    bad.labels.insert("severity".into(), "x".into());
    bad.annotations
        .insert("summary".into(), "{{ $values }}".into());
    bad.actions.rollback_within = Some(HumanDuration(Duration::from_secs(60)));
    bad.interval = Some(HumanDuration(Duration::from_millis(10)));
    let mut dup = rule("up == 0", 0, 0);
    dup.name = "dup".into();
    let issues = validate(&[bad, dup.clone(), dup], &["production"], &["web"]);
    let got: Vec<(String, &str)> = issues
        .iter()
        .map(|i| {
            let path = crate::analysis::AnalysisIssue {
                path: i.path.clone(),
                message: String::new(),
                hint: None,
            }
            .path_string();
            (path, i.message.as_str())
        })
        .collect();
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "[0].name",
            "[0].environments[0]",
            "[0].condition",
            "[0].interval",
            "[0].actions.rollback_within",
            "[0].labels.severity",
            "[0].annotations.summary",
            "[2].name"
        ],
        "{got:?}"
    );
}

/// Fires then resolves version `version` of `r` (from 10s to 20s): the alerts after each
/// step with their transitions.
fn fire_and_resolve(r: &AlertRule, version: &str) -> Vec<(Transition, AlertInstance)> {
    let condition = r.parsed_condition().expect("parses");
    let mut alerts: Vec<AlertInstance> = Vec::new();
    let mut out = Vec::new();
    for (t, samples) in [
        (10, vec![sample(version, 0.5)]),
        (20, vec![sample(version, 0.0)]),
    ] {
        let e = evaluate(
            r,
            condition.as_ref(),
            &Input::Samples(samples),
            &alerts,
            t * 1000,
        );
        for tr in &e.transitions {
            let a = e
                .alerts
                .iter()
                .find(|a| a.series == tr.series)
                .expect("alert");
            out.push((tr.clone(), a.clone()));
        }
        alerts = e.alerts;
    }
    out
}

#[test]
fn firing_and_resolved_alerts_become_notifications_with_the_rules_labels() {
    use crate::notify::Kind;
    let mut r = rule("error_rate > 10%", 0, 0);
    r.labels.insert("team".into(), "checkout".into());
    r.annotations.insert(
        "summary".into(),
        "{{ $labels.version }} answers {{ $value }} errors".into(),
    );
    r.annotations
        .insert("runbook_url".into(), "https://runbooks/x".into());
    let steps = fire_and_resolve(&r, "2.0.0");
    assert_eq!(steps.len(), 2, "fired then resolved: {steps:?}");
    let notes: Vec<_> = steps
        .iter()
        .map(|(t, a)| notification(&r, "shop", "production", t, a, &[], 30_000).expect("notified"))
        .collect();
    let (firing, resolved) = (&notes[0], &notes[1]);
    assert_eq!(firing.kind, Kind::AlertFiring);
    assert_eq!(resolved.kind, Kind::AlertResolved);
    assert_eq!(firing.summary, "2.0.0 answers 50% errors");
    assert_eq!(firing.annotations["runbook_url"], "https://runbooks/x");
    for (label, want) in [
        ("alertname", "high_error_rate"),
        ("app", "shop"),
        ("env", "production"),
        ("severity", "critical"),
        ("team", "checkout"),
        ("version", "2.0.0"),
        ("service", "web"),
        ("kind", "alert-firing"),
    ] {
        assert_eq!(firing.labels[label], want, "{label}: {firing:?}");
    }
    assert!(firing.check().is_ok());
    assert_ne!(firing.key, resolved.key);
    assert!(firing.key.contains("-10000-firing-"), "{}", firing.key);
    assert!(
        resolved.key.contains("-10000-resolved-"),
        "{}",
        resolved.key
    );
    assert_eq!(firing.fingerprint(), resolved.fingerprint(), "one alert");
    assert_eq!(firing.details["fired_value"], "50%");

    // Another version of the same rule, firing in the same evaluation, is another alert.
    let other = fire_and_resolve(&r, "1.0.0");
    let (t, a) = &other[0];
    let firing_other = notification(&r, "shop", "production", t, a, &[], 30_000).expect("other");
    assert_ne!(firing_other.key, firing.key);
    assert_ne!(firing_other.fingerprint(), firing.fingerprint());
}

#[test]
fn a_removed_rules_firing_alert_resolves_with_its_firing_notifications_labels() {
    use crate::notify::Kind;
    let mut r = rule("error_rate > 10%", 0, 0);
    r.labels.insert("team".into(), "checkout".into());
    let steps = fire_and_resolve(&r, "2.0.0");
    let (t, firing_alert) = &steps[0];
    let firing = notification(&r, "shop", "production", t, firing_alert, &[], 10_000).unwrap();
    // the rule is removed while the alert fires: `retire` resolves it, without a rule
    let retired = retire(std::slice::from_ref(firing_alert), 50_000);
    assert_eq!(retired.transitions[0].to, AlertStatus::Resolved);
    let resolved = retired_notification(&firing, firing_alert, 50_000);
    assert_eq!(resolved.kind, Kind::AlertResolved);
    assert_eq!(
        resolved.key,
        notification_key("shop", "production", firing_alert, Kind::AlertResolved),
        "the key a normal resolve of this episode would have: stored once"
    );
    assert_eq!(resolved.labels["team"], "checkout");
    assert_eq!(resolved.labels["kind"], "alert-resolved");
    assert_eq!(
        resolved.fingerprint(),
        firing.fingerprint(),
        "the same alert"
    );
    assert_eq!(
        resolved.summary,
        "high_error_rate resolved: its rule was removed"
    );
    assert_eq!(resolved.details["status"], "resolved");
    assert_eq!(
        resolved.details["fired_value"],
        firing.details["fired_value"]
    );
    assert!(resolved.check().is_ok());
    // the same as the resolve the rule would have sent
    let normal = notification(&r, "shop", "production", &steps[1].0, &steps[1].1, &[], 0).unwrap();
    assert_eq!(normal.key, resolved.key);
}

#[test]
fn pending_silenced_and_quiet_rules_notify_nothing() {
    let r = rule("error_rate > 10%", 5, 0);
    let condition = r.parsed_condition().expect("parses");
    let e = evaluate(
        &r,
        condition.as_ref(),
        &Input::Samples(vec![sample("2.0.0", 0.5)]),
        &[],
        1000,
    );
    assert_eq!(e.transitions[0].to, AlertStatus::Pending);
    assert!(
        notification(
            &r,
            "shop",
            "production",
            &e.transitions[0],
            &e.alerts[0],
            &[],
            1000
        )
        .is_none()
    );

    let r = rule("error_rate > 10%", 0, 0);
    let (t, a) = fire_and_resolve(&r, "2.0.0").remove(0);
    let silence = Silence {
        id: 7,
        app: "shop".into(),
        env: "production".into(),
        alert: r.name.clone(),
        created_by: "user:alice".into(),
        reason: "known".into(),
        created_at_ms: 0,
        until_ms: 60_000,
        ended_by: None,
    };
    let silences = [silence];
    assert!(notification(&r, "shop", "production", &t, &a, &silences, 30_000).is_none());
    assert!(
        notification(&r, "shop", "staging", &t, &a, &silences, 30_000).is_some(),
        "a silence holds in its environment only"
    );
    assert!(
        notification(&r, "shop", "production", &t, &a, &silences, 60_000).is_some(),
        "an expired silence holds nothing"
    );
    let mut quiet = r.clone();
    quiet.actions.notify = false;
    assert!(notification(&quiet, "shop", "production", &t, &a, &[], 30_000).is_none());
}

/// A deployment of app/env `production` for the incident rule.
fn change(
    id: i64,
    version: &str,
    previous: Option<&str>,
    kind: DeploymentKind,
    state: DeploymentState,
) -> DeploymentView {
    DeploymentView {
        id,
        version: version.into(),
        previous_version: previous.map(str::to_string),
        kind,
        ..deployment(id, state, "canary", None)
    }
}

/// The alert of `fire_and_resolve` (on 2.0.0) moved to `version`.
fn firing_on(r: &AlertRule, version: Option<&str>) -> AlertInstance {
    let (_, mut a) = fire_and_resolve(r, "2.0.0").remove(0);
    match version {
        Some(v) => {
            a.labels.insert("version".into(), v.into());
        }
        None => {
            a.labels.remove("version");
        }
    }
    a
}

#[test]
fn an_alert_on_the_stable_version_during_a_canary_is_an_incident_of_its_last_change() {
    use DeploymentKind::{Deploy, Rollback};
    use DeploymentState::{AwaitingApproval, Progressing, RolledBack, RollingBack, Succeeded};
    let r = rule("error_rate > 10%", 0, 0);
    // 1.0.0 went out as deployment 3; 2.0.0 is the canary (9)
    let stable = change(3, "1.0.0", Some("0.9.0"), Deploy, Succeeded);
    let canary = |state| change(9, "2.0.0", Some("1.0.0"), Deploy, state);
    let on = |v: &str| firing_on(&r, Some(v));
    let decide = |a: &AlertInstance, latest: &DeploymentView| {
        let wanted = incident_change_of(&r, a, Some(latest));
        // the shell reads the last change of the version asked for, and only then
        let last = wanted.map(|v| {
            assert_eq!(v, "1.0.0");
            &stable
        });
        incident_deployment(&r, a, Some(latest), last)
    };
    for (what, alert, latest, want) in [
        (
            "stable during the canary",
            on("1.0.0"),
            canary(Progressing),
            Some(3),
        ),
        (
            "canary during the canary",
            on("2.0.0"),
            canary(Progressing),
            Some(9),
        ),
        (
            "stable while the canary waits",
            on("1.0.0"),
            canary(AwaitingApproval),
            Some(3),
        ),
        (
            "stable while the canary rolls back",
            on("1.0.0"),
            canary(RollingBack),
            Some(3),
        ),
        (
            "stable after the canary rolled back",
            on("1.0.0"),
            canary(RolledBack),
            Some(3),
        ),
        (
            "canary rolling back",
            on("2.0.0"),
            canary(RollingBack),
            None,
        ),
        ("canary rolled back", on("2.0.0"), canary(RolledBack), None),
        (
            "old version after the rollout",
            on("1.0.0"),
            canary(Succeeded),
            None,
        ),
        (
            "new version after the rollout",
            on("2.0.0"),
            canary(Succeeded),
            Some(9),
        ),
        (
            "the version a rollback brought back",
            on("1.0.0"),
            change(10, "1.0.0", Some("2.0.0"), Rollback, Succeeded),
            Some(3),
        ),
        (
            "a version that does not serve",
            on("0.9.0"),
            canary(Progressing),
            None,
        ),
    ] {
        assert_eq!(decide(&alert, &latest), want, "{what}");
    }
    // the stable's last change must be a succeeded deployment of it, not a rollback
    let a = on("1.0.0");
    let latest = canary(Progressing);
    assert_eq!(incident_change_of(&r, &a, Some(&latest)), Some("1.0.0"));
    for bad in [
        change(3, "1.0.0", None, Rollback, Succeeded),
        change(3, "1.0.0", None, Deploy, RolledBack),
        change(3, "0.9.0", None, Deploy, Succeeded),
    ] {
        assert_eq!(
            incident_deployment(&r, &a, Some(&latest), Some(&bad)),
            None,
            "{bad:?}"
        );
    }
    assert_eq!(incident_deployment(&r, &a, Some(&latest), None), None);
}

/// Every latest deployment (kind × state × how its versions relate to the alert's), every
/// candidate for the stable version's last change, both severities, with and without a
/// version label: the incident is only ever on a change of the version that fired that
/// serves, and the shell is asked to read a last change exactly when the rule needs one.
#[test]
fn incidents_land_only_on_a_serving_change_of_the_version_that_fired() {
    let mut r = rule("error_rate > 10%", 0, 0);
    let versions = [
        ("2.0.0", Some("1.0.0")),
        ("1.0.0", Some("2.0.0")),
        ("1.0.0", Some("1.0.0")),
        ("2.0.0", None),
        ("3.0.0", Some("2.0.0")),
    ];
    let candidates: Vec<Option<DeploymentView>> = std::iter::once(None)
        .chain(DeploymentKind::ALL.iter().flat_map(|kind| {
            DeploymentState::ALL.iter().flat_map(move |state| {
                ["1.0.0", "2.0.0"]
                    .into_iter()
                    .map(move |v| Some(change(3, v, None, *kind, *state)))
            })
        }))
        .collect();
    let mut cases = 0;
    let mut opened = [0usize; 2];
    for severity in [Severity::Critical, Severity::Warning] {
        r.severity = severity;
        for fired_on in [Some("2.0.0"), Some("1.0.0"), None] {
            let a = firing_on(&r, fired_on);
            for kind in DeploymentKind::ALL {
                for state in DeploymentState::ALL {
                    for (version, previous) in versions {
                        let latest = change(9, version, previous, kind, state);
                        let wanted = incident_change_of(&r, &a, Some(&latest));
                        let serving_change = kind != DeploymentKind::Rollback
                            && matches!(
                                state,
                                DeploymentState::Progressing | DeploymentState::Succeeded
                            );
                        let serves_beside = fired_on.is_some_and(|v| {
                            (previous == Some(v) && state != DeploymentState::Succeeded)
                                || (version == v
                                    && kind == DeploymentKind::Rollback
                                    && matches!(
                                        state,
                                        DeploymentState::Progressing | DeploymentState::Succeeded
                                    ))
                        });
                        let own = fired_on.is_none_or(|v| v == version) && serving_change;
                        let critical = severity == Severity::Critical;
                        assert_eq!(
                            wanted,
                            fired_on.filter(|_| critical && !own && serves_beside),
                            "{fired_on:?} {latest:?}"
                        );
                        for last in &candidates {
                            cases += 1;
                            let got = incident_deployment(&r, &a, Some(&latest), last.as_ref());
                            let ctx = || format!("{severity:?} {fired_on:?} {latest:?} {last:?}");
                            match got {
                                None => {
                                    // none only when nothing qualifies
                                    assert!(
                                        !critical
                                            || (!own
                                                && (wanted.is_none()
                                                    || last.as_ref().is_none_or(|c| {
                                                        Some(c.version.as_str()) != wanted
                                                            || c.kind == DeploymentKind::Rollback
                                                            || c.state != DeploymentState::Succeeded
                                                    }))),
                                        "{}",
                                        ctx()
                                    );
                                }
                                Some(9) => {
                                    assert!(critical && own, "{}", ctx());
                                    opened[0] += 1;
                                }
                                Some(3) => {
                                    let c = last.as_ref().expect("a last change was given");
                                    assert!(critical && !own, "{}", ctx());
                                    assert_eq!(Some(c.version.as_str()), wanted, "{}", ctx());
                                    assert_eq!(Some(c.version.as_str()), fired_on, "{}", ctx());
                                    assert_ne!(c.kind, DeploymentKind::Rollback, "{}", ctx());
                                    assert_eq!(c.state, DeploymentState::Succeeded, "{}", ctx());
                                    opened[1] += 1;
                                }
                                Some(other) => panic!("incident on {other}: {}", ctx()),
                            }
                        }
                        // nothing given for the last change: only the latest's own
                        assert_eq!(
                            incident_deployment(&r, &a, Some(&latest), None),
                            (critical && own).then_some(9)
                        );
                    }
                }
            }
            assert_eq!(
                incident_deployment(&r, &a, None, candidates[1].as_ref()),
                None
            );
        }
    }
    assert!(cases > 100_000, "{cases}");
    assert!(opened[0] > 0 && opened[1] > 0, "{opened:?}");
}

#[test]
fn a_critical_alert_opens_an_incident_on_the_deployment_of_its_version() {
    let mut r = rule("error_rate > 10%", 0, 0);
    let (_, a) = fire_and_resolve(&r, "2.0.0").remove(0);
    let deployment = |version: &str, kind, state| DeploymentView {
        id: 9,
        version: version.into(),
        kind,
        ..deployment(9, state, "canary", None)
    };
    use DeploymentKind::{Deploy, Rollback};
    use DeploymentState::{Failed, Progressing, RolledBack, Succeeded};
    for (latest, want) in [
        (Some(deployment("2.0.0", Deploy, Progressing)), Some(9)),
        (Some(deployment("2.0.0", Deploy, Succeeded)), Some(9)),
        (Some(deployment("1.0.0", Deploy, Succeeded)), None),
        (Some(deployment("2.0.0", Rollback, Succeeded)), None),
        (Some(deployment("2.0.0", Deploy, RolledBack)), None),
        (Some(deployment("2.0.0", Deploy, Failed)), None),
        (None, None),
    ] {
        assert_eq!(
            incident_deployment(&r, &a, latest.as_ref(), None),
            want,
            "{latest:?}"
        );
    }
    let latest = deployment("2.0.0", Deploy, Succeeded);
    r.severity = Severity::Warning;
    assert_eq!(
        incident_deployment(&r, &a, Some(&latest), None),
        None,
        "critical only"
    );
    // an alert without a version (a Prometheus series) is the latest deployment's
    r.severity = Severity::Critical;
    let mut unversioned = a.clone();
    unversioned.labels.clear();
    unversioned.series.clear();
    assert_eq!(
        incident_deployment(&r, &unversioned, Some(&latest), None),
        Some(9)
    );
    assert_ne!(
        episode_key("shop", "production", &a),
        episode_key("shop", "production", &unversioned)
    );
}
