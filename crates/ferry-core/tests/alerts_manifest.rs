//! `alerts:` in `ferry.yaml`: seed 003's rules written as Ferry rules (same meaning), and
//! every mistake located at its line with a hint.

use ferry_core::alerts::{AlertStatus, Condition, Input, Metric, Op, Sample, Severity, evaluate};
use ferry_core::manifest;

/// Seed 003's application, infrastructure and database alerts. What Ferry measures itself
/// (error rate, instance down) uses its own metrics; what it does not (CPU, memory, disk,
/// network, connections, query time) is a PromQL query against Prometheus, as the seed's
/// own `metrics:` blocks scrape them.
const SEED_003: &str = r#"app: app
services:
  web:
    run: ["./server", "--port", "${PORT}"]
environments:
  staging:
    listen: 127.0.0.1:8080
  production:
    listen: 127.0.0.1:8090
alerts:
  - name: high_cpu
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'max by (instance) (rate(process_cpu_seconds_total{app="{{app}}",environment="{{env}}"}[5m])) * 100'
    condition: value > 80
    for: 5m
    severity: critical
  - name: high_memory
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'max by (instance) (container_memory_working_set_bytes{app="{{app}}"} / container_spec_memory_limit_bytes{app="{{app}}"}) * 100'
    condition: value > 80
    duration: 5m
    severity: critical
  - name: high_error_rate
    environments: [production]
    condition: error_rate > 1%
    for: 5m
    severity: critical
    annotations:
      summary: "{{ $labels.service }} {{ $labels.version }} answers {{ $value }} errors"
      runbook_url: https://runbooks.example.com/high_error_rate
    actions:
      rollback: true
      rollback_within: 30m
      block_promotions: true
  - name: instance_down
    environments: [production]
    condition: up == 0
    for: 1m
    severity: critical
  - name: high_disk_usage
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: '(1 - node_filesystem_avail_bytes{app="infrastructure"} / node_filesystem_size_bytes{app="infrastructure"}) * 100 > 80'
    for: 5m
    severity: warning
    labels:
      team: infrastructure
  - name: high_network_usage
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'rate(node_network_receive_bytes_total{app="infrastructure"}[5m]) / 125000000 * 100'
    condition: value > 80
    for: 5m
    severity: warning
  - name: database_down
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'up{app="database"}'
    condition: value == 0
    for: 1m
    severity: critical
  - name: high_connections
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'sum(pg_stat_activity_count{app="database"})'
    condition: value > 100
    for: 5m
    severity: warning
  - name: slow_queries
    environments: [production]
    prometheus:
      address: http://127.0.0.1:9090
      query: 'max(pg_stat_activity_max_tx_duration{app="database"})'
    condition: value > 1
    for: 5m
    severity: warning
"#;

#[test]
fn seed_003s_rules_are_expressible_with_their_meaning() {
    let m = manifest::parse(SEED_003, "ferry.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.alerts.len(), 9);
    let rule = |name: &str| m.alerts.iter().find(|r| r.name == name).expect(name);
    let error_rate = rule("high_error_rate");
    assert_eq!(
        error_rate.parsed_condition().unwrap(),
        Some(Condition::parse("error_rate > 1%", false).unwrap())
    );
    assert_eq!(error_rate.for_duration().as_secs(), 300);
    assert_eq!(error_rate.severity, Severity::Critical);
    assert!(error_rate.watches("production") && !error_rate.watches("staging"));
    assert!(error_rate.actions.rollback && error_rate.actions.block_promotions);
    let down = rule("instance_down").parsed_condition().unwrap().unwrap();
    assert_eq!(
        (down.metric, down.op, down.threshold.value()),
        (Metric::Up, Op::Eq, 0.0)
    );
    assert_eq!(rule("instance_down").for_duration().as_secs(), 60);
    assert_eq!(
        rule("high_memory").for_duration().as_secs(),
        300,
        "`duration` is `for`"
    );
    assert!(
        rule("high_disk_usage").condition.is_none(),
        "the query filters, as in Prometheus"
    );
    assert_eq!(rule("slow_queries").severity, Severity::Warning);

    // The meaning of `error_rate > 1` for 5m: 2% of errors for five minutes fires, not before.
    let c = error_rate.parsed_condition().unwrap();
    let sample = |v: f64| {
        Input::Samples(vec![Sample {
            labels: Default::default(),
            value: v,
        }])
    };
    let pending = evaluate(error_rate, c.as_ref(), &sample(0.02), &[], 0);
    assert_eq!(pending.alerts[0].status, AlertStatus::Pending);
    let still = evaluate(
        error_rate,
        c.as_ref(),
        &sample(0.02),
        &pending.alerts,
        299_999,
    );
    assert_eq!(still.alerts[0].status, AlertStatus::Pending);
    let fired = evaluate(
        error_rate,
        c.as_ref(),
        &sample(0.02),
        &still.alerts,
        300_000,
    );
    assert_eq!(fired.alerts[0].status, AlertStatus::Firing);
    let below = evaluate(error_rate, c.as_ref(), &sample(0.005), &[], 0);
    assert!(below.alerts.is_empty(), "0.5% is below 1%");

    // The manifest round-trips.
    let json = serde_json::to_string(&m).unwrap();
    let back: manifest::Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
}

#[test]
fn alert_mistakes_are_located_with_a_hint() {
    let yaml = r#"app: app
services:
  web:
    run: ["./server"]
environments:
  production:
    listen: 127.0.0.1:8090
alerts:
  - name: high_cpu
    condition: cpu_usage > 0.8
  - name: high_error_rate
    condition: error_rate > 1
  - name: slow
    condition: latency_p99 > 500
    environments: [prod]
  - name: disk
    condition: disk_usage > 80
  - name: bad_summary
    condition: up == 0
    annotations:
      summary: "{{ $valu }}"
  - name: high_cpu
    condition: up == 0
    service: api
"#;
    let errors = manifest::parse(yaml, "ferry.yaml")
        .expect_err("invalid")
        .errors;
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = lines.join("\n");
    let expect = [
        (
            "ferry.yaml:10:",
            "alerts[0].condition",
            "is ambiguous: a share of the limit is written in percent",
            "",
        ),
        (
            "ferry.yaml:12:",
            "alerts[1].condition",
            "write `error_rate > 1%`",
            "",
        ),
        (
            "ferry.yaml:14:",
            "alerts[2].condition",
            "give the threshold with its unit",
            "",
        ),
        (
            "ferry.yaml:15:",
            "alerts[2].environments[0]",
            "no environment `prod`",
            "",
        ),
        (
            "ferry.yaml:17:",
            "alerts[3].condition",
            "unknown metric `disk_usage`",
            "a `prometheus` query",
        ),
        (
            "ferry.yaml:21:",
            "alerts[4].annotations.summary",
            "unknown placeholder",
            "",
        ),
        (
            "ferry.yaml:22:",
            "alerts[5].name",
            "already defined by alerts[0]",
            "",
        ),
        (
            "ferry.yaml:24:",
            "alerts[5].service",
            "no service `api`",
            "",
        ),
    ];
    assert_eq!(errors.len(), expect.len(), "{all}");
    for (at, path, message, hint) in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(at)
                && l.contains(path)
                && l.contains(message)
                && l.contains(hint)),
            "no error {at} {path} {message} {hint}:\n{all}"
        );
    }
    // Unknown fields stop at the typed parse, by name.
    let typo = "app: a\nservices: { web: { run: [x] } }\nenvironments: { p: { listen: 127.0.0.1:1 } }\nalerts:\n  - name: x\n    condition: up == 0\n    fore: 1m\n";
    let e = manifest::parse(typo, "ferry.yaml")
        .expect_err("typo")
        .to_string();
    assert!(e.contains("ferry.yaml:7:") && e.contains("fore"), "{e}");
}
