//! The analysis judges: manifest shape and validation, templates, builtin and external
//! judges, the statistical compare judge (statrs as the oracle), the run state machine, and
//! a few property-style invariants over deterministic generated inputs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use ferry_core::analysis::{
    self, AnalysisRun, AnalysisSpec, Builtin, CompareSpec, ErrorsCompare, HttpCheck,
    InconclusivePolicy, JsonFieldCheck, LatencyBins, LatencyCompare, Measurement, MetricSpec,
    Observation, Ratio, RunVerdict, TemplateVars, Threshold, Unit, Verdict, WindowStats, due,
    measure, record,
};
use ferry_core::duration::HumanDuration;
use statrs::distribution::{ContinuousCDF, Normal};
use statrs::stats_tests::Alternative;
use statrs::stats_tests::mannwhitneyu::{MannWhitneyUMethod, mannwhitneyu};

// ---------------------------------------------------------------------------------------
// helpers

/// Deterministic pseudo-random numbers (xorshift64*), no seed from the outside world.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn yaml(text: &str) -> AnalysisSpec {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn metric(text: &str) -> MetricSpec {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn window(requests: u64, errors: u64, duration_ms: i64) -> WindowStats {
    WindowStats {
        requests,
        errors_5xx: errors,
        duration_ms,
        latency_us: LatencyBins::from_bins([(10_000, requests)]),
    }
}

/// A window whose latencies are the given samples (µs), no errors, 5s long.
fn latencies(samples_us: &[u64]) -> WindowStats {
    WindowStats {
        requests: samples_us.len() as u64,
        errors_5xx: 0,
        duration_ms: 5000,
        latency_us: LatencyBins::from_samples(samples_us),
    }
}

/// A window of `n` requests whose latency is `base_us` plus a spread of ±`spread_us`.
fn spread(n: u64, base_us: u64, spread_us: u64, seed: u64) -> WindowStats {
    let mut g = Gen::new(seed);
    let samples: Vec<u64> = (0..n)
        .map(|_| base_us - spread_us + g.below(2 * spread_us + 1))
        .collect();
    latencies(&samples)
}

fn m(name: &str, verdict: Verdict) -> Measurement {
    Measurement {
        metric: name.to_string(),
        value: Some(1.0),
        unit: Unit::Ratio,
        sample_size: 100,
        threshold: "≤ 0.01".to_string(),
        verdict,
        reason: format!("{name} was {}", verdict.as_str()),
        dry_run: false,
        details: Vec::new(),
        service: None,
    }
}

fn spec_with(metrics: &[&str]) -> AnalysisSpec {
    AnalysisSpec {
        metrics: metrics
            .iter()
            .map(|n| {
                let mut s = MetricSpec::named(*n);
                s.builtin = Some(Builtin::ErrorRate);
                s.max = Some(Threshold::Number(0.01));
                s
            })
            .collect(),
        ..AnalysisSpec::default()
    }
}

fn rounds(spec: &AnalysisSpec, verdicts: &[&[(&str, Verdict)]]) -> (AnalysisRun, RunVerdict) {
    let mut run = AnalysisRun::new(0);
    let mut verdict = RunVerdict::Running;
    for (i, round) in verdicts.iter().enumerate() {
        let ms: Vec<Measurement> = round.iter().map(|(n, v)| m(n, *v)).collect();
        (run, verdict) = record(&run, spec, &ms, (i as i64 + 1) * 5000);
    }
    (run, verdict)
}

const EXAMPLE: &str = r#"
interval: 5s
failure_limit: 1
inconclusive_limit: 6
on_inconclusive: pause
consecutive_successes: 1
metrics:
  - { name: errors, builtin: error_rate, max: 0.01, min_requests: 50 }
  - { name: p95, builtin: latency_p95, max: 500ms }
  - { name: rate, builtin: request_rate, min: 1 }
  - { name: prom, prometheus: { address: "http://127.0.0.1:9090", query: "sum(rate(x{version=\"{{version}}\"}[1m]))" }, max: 5 }
  - { name: smoke, http: { url: "http://127.0.0.1:8081/api/health", expect_status: 200, body_contains: "ok", json_field: { path: "status", equals: "ok" }, timeout: 2s } }
  - { name: migrate-check, command: { run: ["./check.sh", "{{version}}"], timeout: 30s } }
  - name: vs-stable
    compare: { latency: { max_increase: 20%, confidence: 0.95 }, errors: { max_increase: 0.5%, confidence: 0.95 }, min_requests: 100 }
    dry_run: true
"#;

// ---------------------------------------------------------------------------------------
// manifest shape

#[test]
fn example_parses_and_validates() {
    let spec = yaml(EXAMPLE);
    assert_eq!(spec.interval, HumanDuration(Duration::from_secs(5)));
    assert_eq!(spec.failure_limit, 1);
    assert_eq!(spec.inconclusive_limit, 6);
    assert_eq!(spec.on_inconclusive, InconclusivePolicy::Pause);
    assert_eq!(spec.metrics.len(), 7);
    assert_eq!(spec.metrics[0].max, Some(Threshold::Number(0.01)));
    assert_eq!(spec.metrics[0].min_requests, Some(50));
    assert_eq!(
        spec.metrics[1].max,
        Some(Threshold::Duration(HumanDuration(Duration::from_millis(
            500
        ))))
    );
    assert_eq!(spec.metrics[2].min, Some(Threshold::Number(1.0)));
    let smoke = spec.metrics[4].http.as_ref().unwrap();
    assert_eq!(smoke.method, "GET");
    assert_eq!(smoke.timeout, HumanDuration(Duration::from_secs(2)));
    assert_eq!(
        smoke.json_field.as_ref().unwrap().equals,
        Some(serde_json::json!("ok"))
    );
    let cmp = spec.metrics[6].compare.as_ref().unwrap();
    assert!(spec.metrics[6].dry_run);
    assert!((cmp.latency.as_ref().unwrap().max_increase.get() - 0.20).abs() < 1e-12);
    assert!((cmp.errors.as_ref().unwrap().max_increase.get() - 0.005).abs() < 1e-12);
    assert_eq!(cmp.min_requests, 100);
    let issues = spec.validate();
    assert!(issues.is_empty(), "{issues:?}");
}

#[test]
fn defaults_are_documented_values() {
    let spec = yaml("metrics: [{ name: errors, builtin: error_rate, max: 1% }]");
    assert_eq!(spec.interval.0, analysis::DEFAULT_INTERVAL);
    assert_eq!(spec.failure_limit, 0);
    assert_eq!(spec.inconclusive_limit, 12);
    assert_eq!(spec.on_inconclusive, InconclusivePolicy::Pause);
    assert_eq!(spec.consecutive_successes, 1);
    assert_eq!(spec.metrics[0].max, Some(Threshold::Percent(0.01)));
    assert_eq!(spec.metrics[0].effective_min_requests(), 20);
    let rate = metric("{ name: r, builtin: request_rate, min: 1 }");
    assert_eq!(rate.effective_min_requests(), 1);
    let cmp = metric("{ name: c, compare: {} }");
    let (l, e) = cmp.compare.as_ref().unwrap().effective();
    assert_eq!(l, Some(LatencyCompare::default()));
    assert_eq!(e, Some(ErrorsCompare::default()));
    assert_eq!(cmp.effective_min_requests(), 100);
    let only_errors = metric("{ name: c, compare: { errors: {} } }");
    let (l, e) = only_errors.compare.as_ref().unwrap().effective();
    assert_eq!(l, None);
    assert_eq!(e.unwrap().confidence, 0.95);
    assert_eq!(AnalysisSpec::default().inconclusive_limit, 12);
}

#[test]
fn unknown_fields_are_rejected() {
    let err = serde_saphyr::from_str::<AnalysisSpec>(
        "metrics: [{ name: e, builtin: error_rate, maximum: 0.01 }]",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("maximum"), "{err}");
    let err = serde_saphyr::from_str::<AnalysisSpec>("intervall: 5s\nmetrics: []").unwrap_err();
    assert!(err.to_string().contains("intervall"), "{err}");
    let err = serde_saphyr::from_str::<AnalysisSpec>("on_inconclusive: wait\nmetrics: []")
        .unwrap_err()
        .to_string();
    assert!(err.contains("wait"), "{err}");
}

#[test]
fn thresholds_parse_numbers_percentages_and_durations() {
    for (text, want) in [
        ("0.01", Threshold::Number(0.01)),
        ("5", Threshold::Number(5.0)),
        ("-2", Threshold::Number(-2.0)),
        ("\"1%\"", Threshold::Percent(0.01)),
        ("0.5%", Threshold::Percent(0.005)),
        (
            "500ms",
            Threshold::Duration(HumanDuration(Duration::from_millis(500))),
        ),
        (
            "1s",
            Threshold::Duration(HumanDuration(Duration::from_secs(1))),
        ),
    ] {
        let got: Threshold = serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(got, want, "{text}");
    }
    assert_eq!(Threshold::Percent(0.01).value(), 0.01);
    assert_eq!(
        Threshold::Duration(HumanDuration(Duration::from_millis(500))).value(),
        500.0
    );
    for (text, micros) in [
        ("1.5s", 1_500_000),
        ("0.5ms", 500),
        ("250 ms", 250_000),
        ("800us", 800),
    ] {
        let got: Threshold = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            got,
            Threshold::Duration(HumanDuration(Duration::from_micros(micros))),
            "{text}"
        );
    }
    assert_eq!(
        Threshold::Duration(HumanDuration(Duration::from_micros(1500))).to_string(),
        "1.5ms"
    );
    assert_eq!(
        Threshold::Duration(HumanDuration(Duration::from_millis(1500))).to_string(),
        "1.5s"
    );
    let err = serde_saphyr::from_str::<Threshold>("fast")
        .unwrap_err()
        .to_string();
    assert!(err.contains("500ms"), "{err}");
    // round trips through JSON and YAML
    for t in [
        Threshold::Number(0.01),
        Threshold::Percent(0.005),
        Threshold::Duration(HumanDuration(Duration::from_millis(1500))),
        Threshold::Duration(HumanDuration(Duration::from_micros(1500))),
    ] {
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            serde_json::from_str::<Threshold>(&json).unwrap(),
            t,
            "{json}"
        );
        let y = serde_saphyr::to_string(&t).unwrap();
        assert_eq!(serde_saphyr::from_str::<Threshold>(&y).unwrap(), t, "{y}");
    }
    assert_eq!(
        serde_json::to_string(&Threshold::Percent(0.07)).unwrap(),
        "\"7%\""
    );
    assert_eq!(
        serde_json::to_string(&Threshold::Duration(HumanDuration(Duration::from_millis(
            500
        ))))
        .unwrap(),
        "\"500ms\""
    );
}

#[test]
fn ratios_parse_percentages_and_fractions() {
    for (text, want) in [("20%", 0.2), ("0.5%", 0.005), ("0.2", 0.2), ("1", 1.0)] {
        let r: Ratio = serde_saphyr::from_str(text).unwrap();
        assert!((r.get() - want).abs() < 1e-12, "{text}");
    }
    assert_eq!(Ratio(0.005).to_string(), "0.5%");
    assert_eq!(serde_json::to_string(&Ratio(0.2)).unwrap(), "\"20%\"");
    assert!(serde_saphyr::from_str::<Ratio>("lots").is_err());
}

#[test]
fn spec_round_trips_and_has_a_schema() {
    let spec = yaml(EXAMPLE);
    let json = serde_json::to_string(&spec).unwrap();
    let back: AnalysisSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    let y = serde_saphyr::to_string(&spec).unwrap();
    assert_eq!(yaml(&y), spec, "{y}");
    let schema = serde_json::to_string(&schemars::schema_for!(AnalysisSpec)).unwrap();
    for word in [
        "failure_limit",
        "Threshold",
        "max_increase",
        "on_inconclusive",
    ] {
        assert!(schema.contains(word), "{word}");
    }
}

// ---------------------------------------------------------------------------------------
// validation

fn issues_of(text: &str) -> Vec<(String, String)> {
    yaml(text)
        .validate()
        .into_iter()
        .map(|i| (i.path_string(), i.message))
        .collect()
}

fn assert_issue(text: &str, path: &str, needle: &str) {
    let issues = issues_of(text);
    assert!(
        issues
            .iter()
            .any(|(p, msg)| p == path && msg.contains(needle)),
        "expected {path}: …{needle}… in {issues:#?}"
    );
}

#[test]
fn validation_reports_sources() {
    assert_issue(
        "metrics: [{ name: a, max: 1 }]",
        "metrics[0]",
        "has no source",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, command: { run: [x] }, max: 0.1 }]",
        "metrics[0].command",
        "several sources (builtin, command)",
    );
    assert_issue("metrics: []", "metrics", "at least one metric");
}

#[test]
fn validation_reports_names() {
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, max: 0.1 }, { name: a, builtin: latency_p50, max: 1s }]",
        "metrics[1].name",
        "already used by metrics[0]",
    );
    assert_issue(
        "metrics: [{ name: Errors, builtin: error_rate, max: 0.1 }]",
        "metrics[0].name",
        "invalid metric name",
    );
}

#[test]
fn validation_reports_thresholds() {
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, min: 0.5, max: 0.1 }]",
        "metrics[0].min",
        "greater than max",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, max: 2 }]",
        "metrics[0].max",
        "between 0 and 1",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, max: 150% }]",
        "metrics[0].max",
        "between 0 and 1",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: error_rate, max: 1s }]",
        "metrics[0].max",
        "not a duration",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: latency_p95, max: 500 }]",
        "metrics[0].max",
        "must be a duration",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: request_rate, min: 1s }]",
        "metrics[0].min",
        "requests per second",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: latency_p99 }]",
        "metrics[0]",
        "needs max or min",
    );
    assert_issue(
        "metrics: [{ name: a, builtin: latency_p99, min: 2s, max: 1s }]",
        "metrics[0].min",
        "min 2s is greater than max 1s",
    );
    assert_issue(
        "metrics: [{ name: p, prometheus: { address: 'http://p:9090', query: up }, max: 500ms }]",
        "metrics[0].max",
        "plain number",
    );
    assert_issue(
        "metrics: [{ name: c, command: { run: [x] }, max: 1 }]",
        "metrics[0].max",
        "exit code",
    );
    assert_issue(
        "metrics: [{ name: h, http: { url: 'http://x/' }, max: 1 }]",
        "metrics[0].max",
        "numeric json_field",
    );
    let ok = issues_of(
        "metrics: [{ name: h, http: { url: 'http://x/', json_field: { path: queue } }, max: 10 }]",
    );
    assert!(ok.is_empty(), "{ok:?}");
    assert_issue(
        "metrics: [{ name: h, http: { url: 'http://x/', json_field: { path: queue } } }]",
        "metrics[0]",
        "needs max or min",
    );
}

#[test]
fn validation_reports_compare_settings() {
    for conf in ["0.5", "1", "1.0", "0.3", "95"] {
        assert_issue(
            &format!("metrics: [{{ name: c, compare: {{ latency: {{ confidence: {conf} }} }} }}]"),
            "metrics[0].compare.latency.confidence",
            "strictly between 0.5 and 1",
        );
    }
    let ok = issues_of("metrics: [{ name: c, compare: { errors: { confidence: 0.999 } } }]");
    assert!(ok.is_empty(), "{ok:?}");
    assert_issue(
        "metrics: [{ name: c, compare: { errors: { max_increase: 2 } } }]",
        "metrics[0].compare.errors.max_increase",
        "between 0% and 100%",
    );
    assert_issue(
        "metrics: [{ name: c, compare: {}, min_requests: 10 }]",
        "metrics[0].min_requests",
        "only applies to builtin",
    );
    assert_issue(
        "metrics: [{ name: c, compare: { min_requests: 0 } }]",
        "metrics[0].compare.min_requests",
        "at least 1",
    );
    assert_issue(
        "metrics: [{ name: c, compare: {}, max: 1 }]",
        "metrics[0].max",
        "max_increase",
    );
}

#[test]
fn validation_reports_checks_and_templates() {
    assert_issue(
        "metrics: [{ name: p, prometheus: { address: 'http://p:9090', query: 'up{v=\"{{verison}}\"}' }, max: 1 }]",
        "metrics[0].prometheus.query",
        "unknown placeholder {{verison}}",
    );
    assert_issue(
        "metrics: [{ name: p, prometheus: { address: 'p:9090', query: up }, max: 1 }]",
        "metrics[0].prometheus.address",
        "not an http",
    );
    assert_issue(
        "metrics: [{ name: h, http: { url: '/health' } }]",
        "metrics[0].http.url",
        "not an http",
    );
    assert_issue(
        "metrics: [{ name: h, http: { url: 'http://x/', method: get } }]",
        "metrics[0].http.method",
        "unknown method",
    );
    assert_issue(
        "metrics: [{ name: h, http: { url: 'http://x/', expect_status: 42 } }]",
        "metrics[0].http.expect_status",
        "not an HTTP status",
    );
    assert_issue(
        "metrics: [{ name: h, http: { url: 'http://x/', timeout: 0s } }]",
        "metrics[0].http.timeout",
        "longer than 0",
    );
    assert_issue(
        "metrics: [{ name: c, command: { run: [] } }]",
        "metrics[0].command.run",
        "needs a program",
    );
    assert_issue(
        "metrics: [{ name: c, command: { run: [x, '{{ app }}-{{ nope }}'] } }]",
        "metrics[0].command.run",
        "{{nope}}",
    );
    assert_issue(
        "metrics: [{ name: p, prometheus: { address: 'http://p', query: up }, max: 1, min_requests: 5 }]",
        "metrics[0].min_requests",
        "only applies to builtin",
    );
    assert_issue(
        "interval: 0s\nmetrics: [{ name: e, builtin: error_rate, max: 0.1 }]",
        "interval",
        "longer than 0",
    );
    assert_issue(
        "consecutive_successes: 0\nmetrics: [{ name: e, builtin: error_rate, max: 0.1 }]",
        "consecutive_successes",
        "at least 1",
    );
    let issue = &yaml("metrics: [{ name: c, command: { run: [] } }]").validate()[0];
    assert!(issue.hint.is_some());
    assert!(
        issue
            .to_string()
            .starts_with("metrics[0].command.run: run needs a program")
    );
}

// ---------------------------------------------------------------------------------------
// templates

#[test]
fn template_substitution() {
    let vars = TemplateVars {
        app: "shop",
        env: "production",
        version: "1.2.3-sha-abcdef1",
    };
    assert_eq!(
        analysis::substitute(
            r#"sum(rate(http{app="{{app}}",env="{{ env }}",version="{{version}}"}[1m]))"#,
            &vars
        ),
        r#"sum(rate(http{app="shop",env="production",version="1.2.3-sha-abcdef1"}[1m]))"#
    );
    assert_eq!(
        analysis::substitute("{{unknown}} {{app}}", &vars),
        "{{unknown}} shop"
    );
    assert_eq!(analysis::substitute("open {{app", &vars), "open {{app");
    assert_eq!(
        analysis::substitute("no placeholders", &vars),
        "no placeholders"
    );
    assert_eq!(analysis::substitute("{{app}}{{app}}", &vars), "shopshop");
    // one pass: a value that looks like a placeholder is not substituted again
    let tricky = TemplateVars {
        app: "shop",
        env: "e",
        version: "{{app}}",
    };
    assert_eq!(analysis::substitute("{{version}}", &tricky), "{{app}}");
    assert_eq!(
        analysis::placeholders("a {{ version }} b {{x}} {{ unclosed"),
        vec!["version", "x"]
    );

    let spec = yaml(EXAMPLE);
    let prom = spec.metrics[3].with_vars(&vars);
    assert!(
        prom.prometheus
            .as_ref()
            .unwrap()
            .query
            .contains("version=\"1.2.3-sha-abcdef1\"")
    );
    let cmd = spec.metrics[5].with_vars(&vars);
    assert_eq!(
        cmd.command.as_ref().unwrap().run,
        vec!["./check.sh", "1.2.3-sha-abcdef1"]
    );
    let mut http = metric(
        "{ name: h, http: { url: 'http://x/{{env}}', headers: { X-App: '{{app}}' }, body: 'v={{version}}' } }",
    );
    http = http.with_vars(&vars);
    let h = http.http.as_ref().unwrap();
    assert_eq!(h.url, "http://x/production");
    assert_eq!(h.headers["X-App"], "shop");
    assert_eq!(h.body.as_deref(), Some("v=1.2.3-sha-abcdef1"));
}

// ---------------------------------------------------------------------------------------
// inputs

#[test]
fn latency_bins_normalize_and_answer_quantiles() {
    let bins = LatencyBins::from_bins([(3000, 1), (1000, 2), (2000, 0), (1000, 1)]);
    assert_eq!(bins.bins(), &[(1000, 3), (3000, 1)]);
    assert_eq!(bins.total(), 4);
    assert_eq!(bins.quantile(0.5), Some(1000));
    assert_eq!(bins.quantile(0.75), Some(1000));
    assert_eq!(bins.quantile(0.76), Some(3000));
    assert_eq!(bins.percentile(100.0), Some(3000));
    assert_eq!(bins.quantile(0.0), Some(1000));
    assert_eq!(LatencyBins::new().quantile(0.5), None);
    assert_eq!(bins.count_above(1000), 1);
    assert_eq!(bins.count_above(999), 4);

    let mut b = LatencyBins::new();
    b.add(5, 1);
    b.add(1, 2);
    b.add(5, 3);
    b.add(9, 0);
    assert_eq!(b.bins(), &[(1, 2), (5, 4)]);

    let merged = bins.merge(&b);
    assert_eq!(merged.bins(), &[(1, 2), (5, 4), (1000, 3), (3000, 1)]);
    assert_eq!(merged.saturating_sub(&b), bins);
    assert_eq!(b.saturating_sub(&merged), LatencyBins::new());

    let json = serde_json::to_string(&bins).unwrap();
    assert_eq!(json, "[[1000,3],[3000,1]]");
    let back: LatencyBins = serde_json::from_str("[[3000,1],[1000,3],[7,0]]").unwrap();
    assert_eq!(back, bins);
}

#[test]
fn latency_quantiles_match_nearest_rank_on_samples() {
    let mut g = Gen::new(7);
    for case in 0..200 {
        let n = 1 + g.below(60) as usize;
        let mut samples: Vec<u64> = (0..n).map(|_| g.below(50) * 100).collect();
        let bins = LatencyBins::from_samples(&samples);
        samples.sort_unstable();
        for q in [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            assert_eq!(
                bins.quantile(q),
                Some(samples[rank - 1]),
                "case {case} q {q}"
            );
        }
    }
}

#[test]
fn window_stats_between_and_merge() {
    let earlier = WindowStats {
        requests: 100,
        errors_5xx: 2,
        duration_ms: 10_000,
        latency_us: LatencyBins::from_bins([(1000, 90), (5000, 10)]),
    };
    let later = WindowStats {
        requests: 160,
        errors_5xx: 5,
        duration_ms: 15_000,
        latency_us: LatencyBins::from_bins([(1000, 140), (5000, 15), (9000, 5)]),
    };
    let w = WindowStats::between(&earlier, &later);
    assert_eq!(w.requests, 60);
    assert_eq!(w.errors_5xx, 3);
    assert_eq!(w.duration_ms, 5000);
    assert_eq!(w.latency_us.bins(), &[(1000, 50), (5000, 5), (9000, 5)]);
    // counters reset (proxy restarted): saturate rather than wrap
    let reset = WindowStats::between(&later, &earlier);
    assert_eq!(reset.requests, 0);
    assert_eq!(reset.duration_ms, 0);
    let both = w.merge(&w);
    assert_eq!(both.requests, 120);
    assert_eq!(both.duration_ms, 5000);
    assert_eq!(both.latency_us.total(), 120);
    assert_eq!(window(5, 9, 1000).errors(), 5);
}

// ---------------------------------------------------------------------------------------
// builtin judges

#[test]
fn no_traffic_is_inconclusive_for_every_builtin() {
    for b in [
        "error_rate, max: 0.01",
        "latency_p50, max: 1s",
        "latency_p99, min: 1ms",
        "request_rate, min: 1",
        "request_rate, max: 100",
        "error_rate, min: 0.5",
    ] {
        let spec = metric(&format!("{{ name: x, builtin: {b} }}"));
        for w in [
            WindowStats::default(),
            window(0, 0, 5000),
            window(0, 3, 5000),
        ] {
            let got = measure(&spec, &w, None, None);
            assert_eq!(got.verdict, Verdict::Inconclusive, "{b}: {}", got.reason);
            assert!(got.reason.contains("no requests"), "{}", got.reason);
            assert_eq!(got.sample_size, 0);
        }
    }
}

#[test]
fn error_rate_judge() {
    let spec = metric("{ name: errors, builtin: error_rate, max: 0.01, min_requests: 50 }");
    let got = measure(&spec, &window(500, 31, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.value, Some(0.062));
    assert_eq!(got.unit, Unit::Ratio);
    assert_eq!(got.sample_size, 500);
    assert_eq!(got.threshold, "≤ 0.01");
    assert_eq!(got.reason, "error rate 0.062 (31/500 in 5s) > max 0.01");
    assert!(!got.dry_run);

    let got = measure(&spec, &window(500, 2, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Pass);
    assert_eq!(got.reason, "error rate 0.004 (2/500 in 5s) ≤ max 0.01");

    // exactly at the bound passes (bounds are inclusive)
    let got = measure(&spec, &window(500, 5, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);

    // all errors
    let got = measure(&spec, &window(500, 500, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.value, Some(1.0));

    // percent thresholds mean the same
    let pct = metric("{ name: errors, builtin: error_rate, max: 1%, min_requests: 50 }");
    assert_eq!(pct.max.unwrap().value(), 0.01);
    let got = measure(&pct, &window(500, 31, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.threshold, "≤ 1%");
    assert!(got.reason.ends_with("> max 1%"), "{}", got.reason);

    // a floor: min
    let floor = metric("{ name: e, builtin: error_rate, min: 0.5, max: 1 }");
    let got = measure(&floor, &window(100, 10, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert!(got.reason.contains("< min 0.5"), "{}", got.reason);
    assert_eq!(got.threshold, "≥ 0.5 and ≤ 1");
}

#[test]
fn min_requests_boundaries() {
    let spec = metric("{ name: errors, builtin: error_rate, max: 0.1, min_requests: 50 }");
    let below = measure(&spec, &window(49, 0, 5000), None, None);
    assert_eq!(below.verdict, Verdict::Inconclusive);
    assert_eq!(below.sample_size, 49);
    assert!(
        below.reason.contains("only 49 requests in 5s, need 50"),
        "{}",
        below.reason
    );
    let at = measure(&spec, &window(50, 0, 5000), None, None);
    assert_eq!(at.verdict, Verdict::Pass, "{}", at.reason);
    let at_fail = measure(&spec, &window(50, 6, 5000), None, None);
    assert_eq!(at_fail.verdict, Verdict::Fail, "{}", at_fail.reason);

    // default min_requests is 20
    let default = metric("{ name: errors, builtin: error_rate, max: 0.5 }");
    assert_eq!(
        measure(&default, &window(19, 0, 5000), None, None).verdict,
        Verdict::Inconclusive
    );
    assert_eq!(
        measure(&default, &window(20, 0, 5000), None, None).verdict,
        Verdict::Pass
    );
}

#[test]
fn errors_below_min_requests_fail_early_only_when_certain() {
    // max 0.1 of 50 requests allows 5 errors: 5 errors in 10 requests is not yet certain…
    let spec = metric("{ name: errors, builtin: error_rate, max: 0.1, min_requests: 50 }");
    let got = measure(&spec, &window(10, 5, 2000), None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    assert!(got.reason.contains("5 errors so far"), "{}", got.reason);
    // …6 errors are: even 40 successes more leave the rate at 6/50 > 0.1
    let got = measure(&spec, &window(10, 6, 2000), None, None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert_eq!(
        got.reason,
        "error rate 0.6 (6/10 in 2s) > max 0.1: fewer than min_requests 50, but 6 errors keep \
         it above max even if the next 40 requests succeed"
    );
    // a canary failing half its requests at low traffic is caught in its first window
    let got = measure(&spec, &window(30, 15, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
}

#[test]
fn latency_judge_with_durations() {
    let spec = metric("{ name: p95, builtin: latency_p95, max: 500ms }");
    assert_eq!(spec.effective_min_requests(), 20);
    // 100 requests: 94 at 100ms, 6 at 900ms → p95 (rank 95) is 900ms
    let slow = WindowStats {
        requests: 100,
        errors_5xx: 0,
        duration_ms: 5000,
        latency_us: LatencyBins::from_bins([(100_000, 94), (900_000, 6)]),
    };
    let got = measure(&spec, &slow, None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.value, Some(900.0));
    assert_eq!(got.unit, Unit::Millis);
    assert_eq!(got.threshold, "≤ 500ms");
    assert_eq!(
        got.reason,
        "p95 latency 900ms (100 requests in 5s) > max 500ms"
    );
    // 5 slow ones: p95 is rank 95 → 100ms
    let ok = WindowStats {
        latency_us: LatencyBins::from_bins([(100_000, 95), (900_000, 5)]),
        ..slow.clone()
    };
    let got = measure(&spec, &ok, None, None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert_eq!(got.value, Some(100.0));
    // exactly at the bound passes
    let at = WindowStats {
        latency_us: LatencyBins::from_bins([(500_000, 100)]),
        ..slow.clone()
    };
    assert_eq!(measure(&spec, &at, None, None).verdict, Verdict::Pass);
    let over = WindowStats {
        latency_us: LatencyBins::from_bins([(500_001, 100)]),
        ..slow.clone()
    };
    assert_eq!(measure(&spec, &over, None, None).verdict, Verdict::Fail);

    // sub-millisecond and second-scale bounds
    let fast = metric("{ name: p50, builtin: latency_p50, max: 1500us }");
    let w = latencies(&[800; 30]);
    let got = measure(&fast, &w, None, None);
    assert_eq!(got.verdict, Verdict::Pass);
    assert_eq!(
        got.reason,
        "p50 latency 800µs (30 requests in 5s) ≤ max 1.5ms"
    );
    let secs = metric("{ name: p99, builtin: latency_p99, max: 2s }");
    let got = measure(&secs, &latencies(&[2_500_000; 30]), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert!(
        got.reason.contains("2.5s") && got.reason.contains("> max 2s"),
        "{}",
        got.reason
    );
}

#[test]
fn latency_below_min_requests_fails_early_only_when_certain() {
    // p95 over 20 requests is rank 19: at most 1 of 20 may be slower than max.
    let spec = metric("{ name: p95, builtin: latency_p95, max: 500ms }");
    let one_slow = latencies(&[100_000, 100_000, 900_000]);
    let got = measure(&spec, &one_slow, None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    let two_slow = latencies(&[100_000, 900_000, 900_000]);
    let got = measure(&spec, &two_slow, None, None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert!(got.reason.contains("2 of 3 requests"), "{}", got.reason);
}

#[test]
fn request_rate_judge() {
    let spec = metric("{ name: rate, builtin: request_rate, min: 1 }");
    let got = measure(&spec, &window(3, 0, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.value, Some(0.6));
    assert_eq!(got.unit, Unit::PerSecond);
    assert_eq!(got.threshold, "≥ 1/s");
    assert_eq!(
        got.reason,
        "request rate 0.6/s (3 requests in 5s) < min 1/s"
    );
    let got = measure(&spec, &window(50, 0, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Pass);
    assert_eq!(got.value, Some(10.0));
    let got = measure(&spec, &window(50, 0, 0), None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive);
    let capped = metric("{ name: rate, builtin: request_rate, max: 100, min_requests: 10 }");
    let got = measure(&capped, &window(5, 0, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
}

#[test]
fn builtin_without_bounds_is_inconclusive() {
    let spec = metric("{ name: e, builtin: error_rate }");
    let got = measure(&spec, &window(500, 400, 5000), None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive);
    assert!(got.reason.contains("no max or min"));
    let none = MetricSpec::named("nothing");
    assert_eq!(
        measure(&none, &window(500, 0, 5000), None, None).verdict,
        Verdict::Inconclusive
    );
}

// ---------------------------------------------------------------------------------------
// external checks

#[test]
fn external_judge() {
    let prom =
        metric("{ name: prom, prometheus: { address: 'http://p:9090', query: up }, max: 5 }");
    let cases = [
        (None, Verdict::Inconclusive, "no observation"),
        (
            Some(Observation::Value(4.2)),
            Verdict::Pass,
            "value 4.2 ≤ max 5",
        ),
        (Some(Observation::Value(5.0)), Verdict::Pass, "≤ max 5"),
        (
            Some(Observation::Value(6.25)),
            Verdict::Fail,
            "value 6.25 > max 5",
        ),
        (
            Some(Observation::Value(f64::NAN)),
            Verdict::Inconclusive,
            "NaN",
        ),
        (
            Some(Observation::Error("connection refused".into())),
            Verdict::Inconclusive,
            "could not run: connection refused",
        ),
    ];
    for (obs, verdict, needle) in cases {
        let got = measure(&prom, &WindowStats::default(), None, obs.as_ref());
        assert_eq!(got.verdict, verdict, "{obs:?}: {}", got.reason);
        assert!(got.reason.contains(needle), "{obs:?}: {}", got.reason);
    }
    let smoke = yaml(EXAMPLE).metrics[4].clone();
    let got = measure(
        &smoke,
        &WindowStats::default(),
        None,
        Some(&Observation::Passed),
    );
    assert_eq!(got.verdict, Verdict::Pass);
    assert_eq!(got.unit, Unit::Check);
    assert_eq!(
        got.threshold,
        "status 200, body contains \"ok\", status = \"ok\""
    );
    let got = measure(
        &smoke,
        &WindowStats::default(),
        None,
        Some(&Observation::FailedWith("status 503, expected 200".into())),
    );
    assert_eq!(got.verdict, Verdict::Fail);
    assert!(got.reason.contains("status 503"), "{}", got.reason);
    let cmd = yaml(EXAMPLE).metrics[5].clone();
    let got = measure(
        &cmd,
        &WindowStats::default(),
        None,
        Some(&Observation::FailedWith("exit 3".into())),
    );
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.threshold, "exit 0");
}

fn http(text: &str) -> HttpCheck {
    serde_saphyr::from_str(text).unwrap()
}

#[test]
fn observe_http_answers() {
    let any2xx = http("{ url: 'http://x/' }");
    assert_eq!(
        analysis::observe_http(&any2xx, 204, ""),
        Observation::Passed
    );
    assert_eq!(
        analysis::observe_http(&any2xx, 503, "down"),
        Observation::FailedWith("status 503, expected 2xx".into())
    );
    let full = http(
        "{ url: 'http://x/', expect_status: 200, body_contains: ok, json_field: { path: checks.db.status, equals: ok } }",
    );
    assert_eq!(
        analysis::observe_http(&full, 200, r#"{"checks":{"db":{"status":"ok"}}}"#),
        Observation::Passed
    );
    assert_eq!(
        analysis::observe_http(&full, 201, "ok"),
        Observation::FailedWith("status 201, expected 200".into())
    );
    assert!(matches!(
        analysis::observe_http(&full, 200, r#"{"checks":{"db":{"status":"okay-ish"}}}"#),
        Observation::FailedWith(m) if m.contains("checks.db.status = \"okay-ish\", expected \"ok\"")
    ));
    assert!(matches!(
        analysis::observe_http(&full, 200, "nope"),
        Observation::FailedWith(m) if m.contains("does not contain")
    ));
    assert!(matches!(
        analysis::observe_http(&full, 200, "ok but not json"),
        Observation::FailedWith(m) if m.contains("not JSON")
    ));
    assert!(matches!(
        analysis::observe_http(&full, 200, r#"{"ok":1}"#),
        Observation::FailedWith(m) if m.contains("no field checks.db.status")
    ));
    let numeric = http("{ url: 'http://x/', json_field: { path: queue.0 } }");
    assert_eq!(
        analysis::observe_http(&numeric, 200, r#"{"queue":[12.5]}"#),
        Observation::Value(12.5)
    );
    assert!(matches!(
        analysis::observe_http(&numeric, 200, r#"{"queue":["x"]}"#),
        Observation::FailedWith(m) if m.contains("expected a number")
    ));
    let typed = HttpCheck {
        json_field: Some(JsonFieldCheck {
            path: "n".into(),
            equals: Some(serde_json::json!(3)),
        }),
        ..any2xx
    };
    assert_eq!(
        analysis::observe_http(&typed, 200, r#"{"n":3}"#),
        Observation::Passed
    );
}

#[test]
fn observe_command_exit_codes() {
    assert_eq!(
        analysis::observe_command(Some(0), "fine\n"),
        Observation::Passed
    );
    assert_eq!(
        analysis::observe_command(Some(3), "checking\nmigration 42 missing\n\n"),
        Observation::FailedWith("exit 3: migration 42 missing".into())
    );
    assert_eq!(
        analysis::observe_command(Some(1), ""),
        Observation::FailedWith("exit 1".into())
    );
    assert_eq!(
        analysis::observe_command(None, ""),
        Observation::FailedWith("killed by a signal".into())
    );
}

#[test]
fn observe_prometheus_answers() {
    let vector = |result: &str| {
        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":{result}}}}}"#)
    };
    assert_eq!(
        analysis::observe_prometheus(&vector(r#"[{"metric":{},"value":[1700000000.1,"0.25"]}]"#)),
        Observation::Value(0.25)
    );
    assert!(matches!(
        analysis::observe_prometheus(&vector("[]")),
        Observation::Error(m) if m.contains("no series")
    ));
    assert!(matches!(
        analysis::observe_prometheus(&vector(
            r#"[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]"#
        )),
        Observation::Error(m) if m.contains("2 series") && m.contains("sum(")
    ));
    assert!(matches!(
        analysis::observe_prometheus(&vector(r#"[{"metric":{},"value":[1,"NaN"]}]"#)),
        Observation::Value(v) if v.is_nan()
    ));
    assert_eq!(
        analysis::observe_prometheus(
            r#"{"status":"success","data":{"resultType":"scalar","result":[1,"7"]}}"#
        ),
        Observation::Value(7.0)
    );
    assert!(matches!(
        analysis::observe_prometheus(
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#
        ),
        Observation::Error(m) if m == "prometheus bad_data: parse error at char 5"
    ));
    assert!(matches!(
        analysis::observe_prometheus(
            r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#
        ),
        Observation::Error(m) if m.contains("matrix")
    ));
    assert!(matches!(
        analysis::observe_prometheus("<html>"),
        Observation::Error(m) if m.contains("not JSON")
    ));
}

// ---------------------------------------------------------------------------------------
// statistics: statrs as the oracle

#[test]
fn normal_cdf_matches_statrs() {
    let normal = Normal::standard();
    let mut z = -9.0;
    while z <= 9.0 {
        let want = normal.cdf(z);
        let got = analysis::normal_cdf(z);
        assert!(
            (got - want).abs() <= 1e-14 + 1e-9 * want,
            "z={z}: {got} vs {want}"
        );
        let sf = analysis::normal_sf(z);
        let want_sf = 1.0 - want;
        assert!(
            (sf - want_sf).abs() <= 1e-14 + 1e-9 * want_sf,
            "sf z={z}: {sf} vs {want_sf}"
        );
        z += 0.037;
    }
    assert_eq!(analysis::normal_sf(f64::INFINITY), 0.0);
    assert_eq!(analysis::normal_sf(f64::NEG_INFINITY), 1.0);
    assert!(analysis::normal_cdf(-40.0) >= 0.0);
}

fn oracle(x: &[u64], y: &[u64]) -> (f64, f64) {
    mannwhitneyu(
        x,
        y,
        MannWhitneyUMethod::AsymptoticInclContinuityCorrection,
        Alternative::Greater,
    )
    .unwrap()
}

#[test]
fn mann_whitney_matches_statrs_on_small_samples() {
    let mut g = Gen::new(42);
    for case in 0..300 {
        let n1 = 1 + g.below(40) as usize;
        let n2 = 1 + g.below(40) as usize;
        // few distinct values in some cases (many ties), wide in others
        let range = [3, 10, 1000][case % 3];
        let shift = g.below(3);
        let x: Vec<u64> = (0..n1).map(|_| g.below(range) + shift).collect();
        let y: Vec<u64> = (0..n2).map(|_| g.below(range)).collect();
        let (u, p) = oracle(&x, &y);
        let got = analysis::mann_whitney_u(
            &LatencyBins::from_samples(&x),
            &LatencyBins::from_samples(&y),
        )
        .unwrap();
        assert_eq!(got.u, u, "case {case}: U");
        assert_eq!((got.n1, got.n2), (n1 as u64, n2 as u64));
        assert!(
            (got.p_value - p).abs() < 1e-9,
            "case {case}: p {} vs statrs {p} (x={x:?}, y={y:?})",
            got.p_value
        );
    }
}

#[test]
fn mann_whitney_known_values() {
    // scipy's example: mannwhitneyu([19,22,16,29,24], [20,11,17,12], alternative="greater")
    let x = LatencyBins::from_samples(&[19, 22, 16, 29, 24]);
    let y = LatencyBins::from_samples(&[20, 11, 17, 12]);
    let got = analysis::mann_whitney_u(&x, &y).unwrap();
    assert_eq!(got.u, 17.0);
    let (_, p) = oracle(&[19, 22, 16, 29, 24], &[20, 11, 17, 12]);
    assert!((got.p_value - p).abs() < 1e-9);
    // everything tied: no evidence at all
    let tied = LatencyBins::from_bins([(1000, 500)]);
    let got = analysis::mann_whitney_u(&tied, &tied).unwrap();
    assert_eq!(got.u, 125_000.0);
    assert_eq!(got.p_value, 1.0);
    assert_eq!(
        oracle(&[1000; 5], &[1000; 7]).1,
        analysis::mann_whitney_u(
            &LatencyBins::from_bins([(1000, 5)]),
            &LatencyBins::from_bins([(1000, 7)])
        )
        .unwrap()
        .p_value
    );
    // empty side
    assert!(analysis::mann_whitney_u(&LatencyBins::new(), &tied).is_none());
    assert!(analysis::mann_whitney_u(&tied, &LatencyBins::new()).is_none());
}

#[test]
fn mann_whitney_on_big_binned_histograms_is_fast_and_sane() {
    // 2 million requests per side in ~2000 buckets
    let c = LatencyBins::from_bins((1..=2000u64).map(|i| (i * 100, 1000 + i % 7)));
    let b = LatencyBins::from_bins((1..=2000u64).map(|i| (i * 100, 1000 + (i + 3) % 7)));
    let got = analysis::mann_whitney_u(&c, &b).unwrap();
    assert!(got.p_value > 0.05, "{got:?}");
    let slower = LatencyBins::from_bins((1..=2000u64).map(|i| (i * 100 + 5000, 1000)));
    let got = analysis::mann_whitney_u(&slower, &b).unwrap();
    assert!(got.p_value < 1e-6, "{got:?}");
    let hl = analysis::hodges_lehmann_shift(&slower, &b).unwrap();
    assert!((4800.0..=5200.0).contains(&hl), "{hl}");
}

#[test]
fn hodges_lehmann_shift_estimates() {
    let base: Vec<u64> = (1..=50).map(|i| i * 1000).collect();
    let shifted: Vec<u64> = base.iter().map(|v| v + 7000).collect();
    let (b, s) = (
        LatencyBins::from_samples(&base),
        LatencyBins::from_samples(&shifted),
    );
    assert_eq!(analysis::hodges_lehmann_shift(&s, &b), Some(7000.0));
    assert_eq!(analysis::hodges_lehmann_shift(&b, &s), Some(-7000.0));
    assert_eq!(analysis::hodges_lehmann_shift(&b, &b), Some(0.0));
    // brute force on small random samples: the lower median of all pairwise differences
    let mut g = Gen::new(3);
    for case in 0..100 {
        let x: Vec<u64> = (0..1 + g.below(15)).map(|_| g.below(100)).collect();
        let y: Vec<u64> = (0..1 + g.below(15)).map(|_| g.below(100)).collect();
        let mut diffs: Vec<i64> = x
            .iter()
            .flat_map(|&a| y.iter().map(move |&b| a as i64 - b as i64))
            .collect();
        diffs.sort_unstable();
        let want = diffs[diffs.len().div_ceil(2) - 1] as f64;
        let got = analysis::hodges_lehmann_shift(
            &LatencyBins::from_samples(&x),
            &LatencyBins::from_samples(&y),
        );
        assert_eq!(got, Some(want), "case {case}");
    }
    assert_eq!(
        analysis::hodges_lehmann_shift(&LatencyBins::new(), &b),
        None
    );
}

#[test]
fn two_proportion_test_values() {
    // hand-computed: 50/1000 vs 20/1000
    let t = analysis::two_proportion_test(50, 1000, 20, 1000).unwrap();
    let pooled: f64 = 70.0 / 2000.0;
    let se = (pooled * (1.0 - pooled) * (2.0 / 1000.0)).sqrt();
    let z = (0.05 - 0.02 - 0.001) / se;
    assert!((t.z - z).abs() < 1e-12);
    assert!((t.p_value - (1.0 - Normal::standard().cdf(z))).abs() < 1e-12);
    // no errors anywhere, or nothing but errors: no evidence
    let t = analysis::two_proportion_test(0, 1000, 0, 1000).unwrap();
    assert_eq!(t.p_value, 1.0);
    let t = analysis::two_proportion_test(1000, 1000, 1000, 1000).unwrap();
    assert_eq!(t.p_value, 1.0);
    assert!(analysis::two_proportion_test(0, 0, 0, 10).is_none());
    // errors above requests are clamped
    let t = analysis::two_proportion_test(20, 10, 0, 10).unwrap();
    assert_eq!(t.canary_rate, 1.0);
}

// ---------------------------------------------------------------------------------------
// the compare judge

fn compare_metric(extra: &str) -> MetricSpec {
    metric(&format!("{{ name: vs-stable, compare: {{ {extra} }} }}"))
}

#[test]
fn compare_identical_distributions_pass() {
    let spec = compare_metric("");
    let w = spread(2000, 50_000, 20_000, 1);
    let got = measure(&spec, &w, Some(&w), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert_eq!(got.value, Some(100.0));
    assert_eq!(got.unit, Unit::Score);
    assert!(
        got.reason.starts_with("compare score 100/100"),
        "{}",
        got.reason
    );
    assert_eq!(got.details.len(), 2);
    // same distribution, different draws
    let other = spread(2000, 50_000, 20_000, 2);
    let got = measure(&spec, &other, Some(&w), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
}

#[test]
fn compare_clearly_slower_canary_fails() {
    let spec = compare_metric("latency: {}");
    let baseline = spread(500, 50_000, 10_000, 3);
    let canary = spread(500, 80_000, 10_000, 4);
    let got = measure(&spec, &canary, Some(&baseline), None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert_eq!(got.value, Some(0.0));
    let d = &got.details[0];
    assert_eq!(d.name, "latency");
    assert_eq!(d.verdict, Verdict::Fail);
    assert!(d.p_value.unwrap() < 1e-6);
    assert!((0.5..0.7).contains(&d.effect.unwrap()), "{d:?}");
    assert!(got.reason.contains("latency fail"), "{}", got.reason);
    assert!(
        got.reason.contains("by more than the tolerance"),
        "{}",
        got.reason
    );
    // a faster canary never fails
    let got = measure(&spec, &baseline, Some(&canary), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
}

#[test]
fn compare_tiny_shift_with_huge_samples_passes_on_effect_size() {
    let spec = compare_metric("latency: { max_increase: 20% }");
    // 100k requests each, canary 2% slower: hugely significant, too small to matter
    let baseline = spread(100_000, 50_000, 10_000, 5);
    let canary = spread(100_000, 51_000, 10_000, 6);
    let got = measure(&spec, &canary, Some(&baseline), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    let d = &got.details[0];
    assert!(d.effect.unwrap() < 0.05, "{d:?}");
    assert!(
        d.reason
            .contains("slower than stable but within the tolerance"),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("tolerance +10ms (+20% or 5ms)"),
        "{}",
        d.reason
    );
    // with max_increase 1%, the 5ms floor still tolerates a 1ms shift…
    let strict = compare_metric("latency: { max_increase: 1% }");
    assert_eq!(
        measure(&strict, &canary, Some(&baseline), None).verdict,
        Verdict::Pass
    );
    // …and without the floor the same data fails
    let no_floor = compare_metric("latency: { max_increase: 1%, min_increase: 0ms }");
    let got = measure(&no_floor, &canary, Some(&baseline), None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert!(
        got.details[0].p_value.unwrap() < 1e-6,
        "{:?}",
        got.details[0]
    );
}

#[test]
fn compare_latency_floor_and_significance_both_decide() {
    // 55µs against 70µs: +27%, over the relative bound, far under the 5ms floor
    let baseline = spread(20_000, 55, 10, 40);
    let canary = spread(20_000, 70, 10, 41);
    let spec = compare_metric("latency: {}");
    let got = measure(&spec, &canary, Some(&baseline), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert!(
        got.reason.contains("within the tolerance"),
        "{}",
        got.reason
    );
    // a larger shift than the tolerance on few, noisy samples: not significant beyond it
    let noisy_base = spread(100, 50_000, 45_000, 42);
    let noisy_canary = spread(100, 62_000, 45_000, 43);
    let got = measure(&spec, &noisy_canary, Some(&noisy_base), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    // the floor is a duration: bad input is refused with the field's name
    let err = serde_saphyr::from_str::<MetricSpec>(
        "{ name: c, compare: { latency: { min_increase: fast } } }",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("invalid duration"), "{err}");
}

#[test]
fn compare_ties_everywhere() {
    let spec = compare_metric("");
    // every request in the same bucket on both sides
    let w = WindowStats {
        requests: 1000,
        errors_5xx: 0,
        duration_ms: 5000,
        latency_us: LatencyBins::from_bins([(2000, 1000)]),
    };
    let got = measure(&spec, &w, Some(&w), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert_eq!(got.details[0].p_value, Some(1.0));
    // two buckets, canary a bit heavier in the slow one but within 20%: heavy ties
    let base = WindowStats {
        latency_us: LatencyBins::from_bins([(1000, 600), (2000, 400)]),
        ..w.clone()
    };
    let canary = WindowStats {
        latency_us: LatencyBins::from_bins([(1000, 560), (2000, 440)]),
        ..w.clone()
    };
    let got = measure(&spec, &canary, Some(&base), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
}

#[test]
fn compare_needs_both_sides() {
    let spec = compare_metric("min_requests: 100");
    let big = spread(500, 50_000, 10_000, 7);
    let small = spread(99, 50_000, 10_000, 8);
    for (c, b) in [
        (&big, &small),
        (&small, &big),
        (&big, &WindowStats::default()),
        (&WindowStats::default(), &big),
    ] {
        let got = measure(&spec, c, Some(b), None);
        assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
        assert!(
            got.reason.starts_with("compare inconclusive: ")
                && got.reason.contains("need 100 on each side"),
            "{}",
            got.reason
        );
        assert_eq!(got.value, None);
    }
    let exactly = spread(100, 50_000, 10_000, 9);
    let got = measure(&spec, &exactly, Some(&exactly), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    let got = measure(&spec, &big, None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive);
    assert!(
        got.reason.contains("no stable-version window"),
        "{}",
        got.reason
    );
}

fn errs(requests: u64, errors: u64) -> WindowStats {
    window(requests, errors, 5000)
}

#[test]
fn compare_errors() {
    let spec = compare_metric("errors: {}");
    // all-zero baseline, zero-error canary: Pass only with enough samples
    let got = measure(&spec, &errs(1000, 0), Some(&errs(1000, 0)), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    let got = measure(&spec, &errs(50, 0), Some(&errs(1000, 0)), None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    // all-zero baseline, failing canary
    let got = measure(&spec, &errs(1000, 50), Some(&errs(1000, 0)), None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert!(
        got.reason
            .contains("error rate 5% (50/1000) vs 0% (0/1000)"),
        "{}",
        got.reason
    );
    // one stray error over an all-zero baseline is not significant
    let got = measure(&spec, &errs(100, 1), Some(&errs(1000, 0)), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    // significant but within max_increase (0.5 points)
    let got = measure(&spec, &errs(100_000, 400), Some(&errs(100_000, 200)), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert!(
        got.reason
            .contains("higher than stable but within the tolerance"),
        "{}",
        got.reason
    );
    // all errors on both sides: not worse than stable (the builtin error_rate catches it)
    let got = measure(&spec, &errs(500, 500), Some(&errs(500, 500)), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    // all errors on the canary only
    let got = measure(&spec, &errs(500, 500), Some(&errs(500, 0)), None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
}

#[test]
fn compare_confidence_is_configurable() {
    // 40/1000 vs 20/1000: 2pp higher, 1.5pp beyond the 0.5pp tolerance, one-sided p ≈ 0.03
    let canary = errs(1000, 40);
    let base = errs(1000, 20);
    let p = analysis::two_proportion_excess(40, 1000, 20, 1000, 0.005)
        .unwrap()
        .p_value;
    assert!((0.01..0.05).contains(&p), "{p}");
    let lax = compare_metric("errors: { confidence: 0.8 }");
    let strict = compare_metric("errors: { confidence: 0.99 }");
    assert_eq!(
        measure(&lax, &canary, Some(&base), None).verdict,
        Verdict::Fail
    );
    assert_eq!(
        measure(&strict, &canary, Some(&base), None).verdict,
        Verdict::Pass
    );
}

#[test]
fn compare_errors_judges_the_excess_over_the_tolerance() {
    // hand-computed: 40/1000 vs 20/1000, margin 0.5pp, unpooled SE
    let t = analysis::two_proportion_excess(40, 1000, 20, 1000, 0.005).unwrap();
    let se = (0.04f64 * 0.96 / 1000.0 + 0.02 * 0.98 / 1000.0).sqrt();
    let z = (0.04 - 0.02 - 0.005 - 0.001) / se;
    assert!((t.z - z).abs() < 1e-12, "{t:?} {z}");
    assert!(
        (t.p_value - (1.0 - Normal::standard().cdf(z))).abs() < 1e-9,
        "{t:?}"
    );
    // an identical build with a few stray errors on a small canary sample: 3/120 against
    // 3/1080 is "significantly higher" for the plain test, not beyond the tolerance
    let plain = analysis::two_proportion_test(3, 120, 3, 1080).unwrap();
    assert!(plain.p_value < 0.01, "{plain:?}");
    let spec = compare_metric("errors: {}");
    let got = measure(&spec, &errs(120, 3), Some(&errs(1080, 3)), None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert!(
        got.reason
            .contains("the increase beyond the tolerance is not significant"),
        "{}",
        got.reason
    );
    // no variance at all: certain either way
    let t = analysis::two_proportion_excess(500, 500, 0, 500, 0.005).unwrap();
    assert_eq!(t.p_value, 0.0);
    let t = analysis::two_proportion_excess(0, 500, 0, 500, 0.005).unwrap();
    assert_eq!(t.p_value, 1.0);
    assert!(analysis::two_proportion_excess(0, 0, 0, 1, 0.0).is_none());
}

#[test]
fn compare_score_is_share_of_passing_submetrics() {
    let spec = compare_metric("");
    let mut canary = spread(1000, 90_000, 10_000, 10);
    canary.requests = 1000;
    canary.errors_5xx = 0;
    let baseline = spread(1000, 50_000, 10_000, 11);
    let got = measure(&spec, &canary, Some(&baseline), None);
    assert_eq!(got.verdict, Verdict::Fail);
    assert_eq!(got.value, Some(50.0));
    assert!(
        got.reason
            .starts_with("compare score 50/100 (1 of 2 passing)"),
        "{}",
        got.reason
    );
    assert_eq!(
        got.threshold,
        "latency ≤ +20% or +5ms (95% confidence), errors ≤ +0.5pp (95% confidence)"
    );
    // latency inconclusive (no latency samples recorded), errors pass → Inconclusive, 50
    let no_lat = WindowStats {
        latency_us: LatencyBins::new(),
        ..errs(1000, 0)
    };
    let got = measure(&spec, &no_lat, Some(&no_lat), None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    assert_eq!(got.value, None);
    assert!(
        got.reason
            .starts_with("compare inconclusive (1 of 2 passing) — latency inconclusive"),
        "{}",
        got.reason
    );
}

#[test]
fn compare_settings_can_be_built_in_code() {
    let mut spec = MetricSpec::named("c");
    spec.compare = Some(CompareSpec {
        latency: Some(LatencyCompare {
            max_increase: Ratio(0.1),
            min_increase: HumanDuration(Duration::from_millis(1)),
            confidence: 0.99,
        }),
        errors: None,
        min_requests: 10,
    });
    assert!(spec.needs_baseline() && !spec.is_external());
    let w = spread(20, 50_000, 5000, 12);
    assert_eq!(measure(&spec, &w, Some(&w), None).verdict, Verdict::Pass);
}

// ---------------------------------------------------------------------------------------
// the run

#[test]
fn failure_limit_boundaries() {
    let mut spec = spec_with(&["errors"]);
    // default 0: the first failure fails the run
    let (_, v) = rounds(&spec, &[&[("errors", Verdict::Fail)]]);
    let RunVerdict::Failed { metric, reason } = v else {
        panic!("{v:?}")
    };
    assert_eq!(metric, "errors");
    assert!(reason.starts_with("errors: errors was fail"), "{reason}");
    assert!(
        reason.contains("1 failed measurement (failure_limit 0)"),
        "{reason}"
    );

    spec.failure_limit = 1;
    let (run, v) = rounds(&spec, &[&[("errors", Verdict::Fail)]]);
    assert_eq!(v, RunVerdict::Running);
    assert_eq!(run.metric("errors").unwrap().failures, 1);
    // failures count over the whole run, not in a row
    let (_, v) = rounds(
        &spec,
        &[
            &[("errors", Verdict::Fail)],
            &[("errors", Verdict::Pass)],
            &[("errors", Verdict::Fail)],
        ],
    );
    assert!(matches!(v, RunVerdict::Failed { .. }), "{v:?}");
}

#[test]
fn failed_is_final() {
    let spec = spec_with(&["errors"]);
    let (run, v) = rounds(
        &spec,
        &[&[("errors", Verdict::Fail)], &[("errors", Verdict::Pass)]],
    );
    assert!(matches!(v, RunVerdict::Failed { .. }));
    assert_eq!(run.metric("errors").unwrap().passes, 1);
    assert!(!due(&run, &spec, i64::MAX));
}

#[test]
fn inconclusive_limit_boundaries_and_policies() {
    let mut spec = spec_with(&["errors"]);
    spec.inconclusive_limit = 2;
    let inc = [("errors", Verdict::Inconclusive)];
    let (_, v) = rounds(&spec, &[&inc, &inc]);
    assert_eq!(v, RunVerdict::Running);
    let (run, v) = rounds(&spec, &[&inc, &inc, &inc]);
    let RunVerdict::NeedsHuman { reason } = &v else {
        panic!("{v:?}")
    };
    assert!(
        reason.starts_with("errors: inconclusive 3 times in a row (inconclusive_limit 2)"),
        "{reason}"
    );
    assert!(reason.contains("ferry promote"), "{reason}");
    assert!(reason.contains("`ferry resume` measures again"), "{reason}");
    assert!(!due(&run, &spec, i64::MAX));
    // a Pass in between resets the streak
    let pass = [("errors", Verdict::Pass)];
    let mut spec3 = spec.clone();
    spec3.consecutive_successes = 5;
    let (_, v) = rounds(&spec3, &[&inc, &inc, &pass, &inc, &inc]);
    assert_eq!(v, RunVerdict::Running);
    // resume: back to Running with a fresh streak
    let resumed = run.resume(100_000);
    assert_eq!(resumed.verdict, RunVerdict::Running);
    assert_eq!(
        resumed.metric("errors").unwrap().consecutive_inconclusive,
        0
    );
    assert!(!due(&resumed, &spec, 100_000 + 4999));
    assert!(due(&resumed, &spec, 100_000 + 5000));
    let (_, v) = record(&resumed, &spec, &[m("errors", Verdict::Pass)], 105_000);
    assert_eq!(v, RunVerdict::Passed);

    spec.on_inconclusive = InconclusivePolicy::Fail;
    let (_, v) = rounds(&spec, &[&inc, &inc, &inc]);
    let RunVerdict::Failed { metric, reason } = v else {
        panic!()
    };
    assert_eq!(metric, "errors");
    assert!(reason.contains("on_inconclusive: fail"), "{reason}");
}

#[test]
fn needs_human_reason_says_why_plainly() {
    let spec = AnalysisSpec {
        inconclusive_limit: 1,
        ..yaml("metrics: [{ name: errors, builtin: error_rate, max: 0.01, min_requests: 50 }]")
    };
    let w = window(12, 0, 60_000);
    let mut run = AnalysisRun::new(0);
    let mut v = RunVerdict::Running;
    for i in 1..=2 {
        let ms = vec![measure(&spec.metrics[0], &w, None, None)];
        (run, v) = record(&run, &spec, &ms, i * 60_000);
    }
    let RunVerdict::NeedsHuman { reason } = v else {
        panic!("{v:?}")
    };
    assert!(
        reason.contains("only 12 requests in 1m, need 50 before judging"),
        "{reason}"
    );
    assert!(reason.contains("lower min_requests"), "{reason}");
    assert_eq!(run.rounds, 2);
}

#[test]
fn consecutive_successes_boundaries() {
    let mut spec = spec_with(&["errors", "p95"]);
    spec.consecutive_successes = 3;
    spec.failure_limit = 5;
    let pp = [("errors", Verdict::Pass), ("p95", Verdict::Pass)];
    let (_, v) = rounds(&spec, &[&pp, &pp]);
    assert_eq!(v, RunVerdict::Running);
    let (_, v) = rounds(&spec, &[&pp, &pp, &pp]);
    assert_eq!(v, RunVerdict::Passed);
    // inconclusive does not break the streak, a failure does
    let pi = [("errors", Verdict::Pass), ("p95", Verdict::Inconclusive)];
    let (_, v) = rounds(&spec, &[&pp, &pi, &pp, &pp]);
    assert_eq!(v, RunVerdict::Passed);
    let pf = [("errors", Verdict::Pass), ("p95", Verdict::Fail)];
    let (run, v) = rounds(&spec, &[&pp, &pp, &pf, &pp, &pp]);
    assert_eq!(v, RunVerdict::Running);
    assert_eq!(run.metric("p95").unwrap().consecutive_successes, 2);
    assert_eq!(run.metric("errors").unwrap().consecutive_successes, 5);
    // every enforced metric is needed: one never measured keeps the run Running
    spec.consecutive_successes = 1;
    let (_, v) = rounds(&spec, &[&[("errors", Verdict::Pass)]]);
    assert_eq!(v, RunVerdict::Running);
}

#[test]
fn dry_run_never_changes_the_verdict() {
    let mut spec = spec_with(&["errors", "trial"]);
    spec.metrics[1].dry_run = true;
    spec.inconclusive_limit = 0;
    let (run, v) = rounds(
        &spec,
        &[
            &[("errors", Verdict::Pass), ("trial", Verdict::Fail)],
            &[("trial", Verdict::Inconclusive)],
            &[("trial", Verdict::Fail)],
        ],
    );
    assert_eq!(v, RunVerdict::Passed);
    let trial = run.metric("trial").unwrap();
    assert!(trial.dry_run);
    assert_eq!(trial.failures, 2);
    assert_eq!(trial.inconclusives, 1);
    assert!(trial.last_failure.is_some());
    // measure marks dry-run measurements
    let mut dry = metric("{ name: e, builtin: error_rate, max: 0.01, dry_run: true }");
    let got = measure(&dry, &window(100, 50, 5000), None, None);
    assert!(got.dry_run);
    assert_eq!(got.verdict, Verdict::Fail);
    dry.dry_run = false;
    assert!(!measure(&dry, &window(100, 50, 5000), None, None).dry_run);
    // only dry-run metrics: nothing to enforce, passes at the first round
    let mut all_dry = spec_with(&["trial"]);
    all_dry.metrics[0].dry_run = true;
    let (_, v) = rounds(&all_dry, &[&[("trial", Verdict::Fail)]]);
    assert_eq!(v, RunVerdict::Passed);
}

#[test]
fn measurements_of_unknown_metrics_are_recorded_and_ignored() {
    let spec = spec_with(&["errors"]);
    let (run, v) = rounds(
        &spec,
        &[&[("errors", Verdict::Pass), ("renamed", Verdict::Fail)]],
    );
    assert_eq!(v, RunVerdict::Passed);
    assert_eq!(run.metric("renamed").unwrap().failures, 1);
}

#[test]
fn due_follows_the_interval() {
    let spec = spec_with(&["errors"]);
    let run = AnalysisRun::new(1_000);
    assert!(!due(&run, &spec, 1_000));
    assert!(!due(&run, &spec, 5_999));
    assert!(due(&run, &spec, 6_000));
    let (run, _) = record(&run, &spec, &[m("errors", Verdict::Inconclusive)], 6_500);
    assert_eq!(run.last_measured_at_ms, Some(6_500));
    assert!(!due(&run, &spec, 11_499));
    assert!(due(&run, &spec, 11_500));
    // a clock going backwards is never due
    assert!(!due(&run, &spec, 0));
}

#[test]
fn run_persists_as_json() {
    let spec = yaml(EXAMPLE);
    let w = window(500, 31, 5000);
    let ms: Vec<Measurement> = spec
        .metrics
        .iter()
        .map(|s| measure(s, &w, Some(&w), Some(&Observation::Value(3.0))))
        .collect();
    let (run, v) = record(&AnalysisRun::new(0), &spec, &ms, 5000);
    assert_eq!(run.verdict, v);
    let json = serde_json::to_string(&run).unwrap();
    let back: AnalysisRun = serde_json::from_str(&json).unwrap();
    assert_eq!(back, run);
    let failed = serde_json::to_value(RunVerdict::Failed {
        metric: "errors".into(),
        reason: "r".into(),
    })
    .unwrap();
    assert_eq!(
        failed,
        serde_json::json!({"state": "failed", "metric": "errors", "reason": "r"})
    );
    assert_eq!(
        serde_json::to_value(RunVerdict::Running).unwrap(),
        serde_json::json!({"state": "running"})
    );
    let obs = serde_json::to_value(Observation::Value(1.5)).unwrap();
    assert_eq!(obs, serde_json::json!({"kind": "value", "detail": 1.5}));
    assert_eq!(
        serde_json::to_value(Observation::Passed).unwrap(),
        serde_json::json!({"kind": "passed"})
    );
    let meas = serde_json::to_value(&ms[1]).unwrap();
    assert_eq!(meas["unit"], "ms");
    assert_eq!(meas["verdict"], "pass");
}

// ---------------------------------------------------------------------------------------
// invariants over generated inputs

#[test]
fn never_pass_below_min_requests() {
    let mut g = Gen::new(99);
    let kinds = [
        "error_rate, max: 0.05",
        "error_rate, min: 0.0, max: 1.0",
        "latency_p50, max: 1s",
        "latency_p95, max: 50ms",
        "latency_p99, min: 1ms",
        "request_rate, min: 0.1",
        "request_rate, max: 1000",
    ];
    for case in 0..3000 {
        let kind = kinds[case % kinds.len()];
        let min_requests = g.below(200);
        let spec = metric(&format!(
            "{{ name: x, builtin: {kind}, min_requests: {min_requests} }}"
        ));
        let n = g.below(250);
        let errors = if g.below(3) == 0 { 0 } else { g.below(n + 1) };
        let samples: Vec<u64> = (0..n).map(|_| 1 + g.below(200_000)).collect();
        let w = WindowStats {
            requests: n,
            errors_5xx: errors,
            duration_ms: g.below(20_000) as i64,
            latency_us: LatencyBins::from_samples(&samples),
        };
        let got = measure(&spec, &w, None, None);
        if n < spec.effective_min_requests() {
            assert_ne!(
                got.verdict,
                Verdict::Pass,
                "case {case}: {kind} n={n}: {}",
                got.reason
            );
        }
        if n == 0 {
            assert_eq!(got.verdict, Verdict::Inconclusive, "case {case}");
        }
        assert!(!got.reason.is_empty());
    }
}

#[test]
fn identical_sides_never_fail_compare() {
    let mut g = Gen::new(5);
    for case in 0..200 {
        let n = g.below(3000);
        let buckets = 1 + g.below(50);
        let bins: Vec<(u64, u64)> = (0..buckets)
            .map(|_| (1 + g.below(1_000_000), g.below(n / buckets + 1)))
            .collect();
        let lat = LatencyBins::from_bins(bins);
        let requests = lat.total();
        let w = WindowStats {
            requests,
            errors_5xx: g.below(requests + 1),
            duration_ms: 5000,
            latency_us: lat,
        };
        let conf = [0.51, 0.8, 0.95, 0.999][case % 4];
        let spec = compare_metric(&format!(
            "latency: {{ confidence: {conf}, max_increase: 0% }}, errors: {{ confidence: {conf}, max_increase: 0% }}, min_requests: {}",
            1 + g.below(200)
        ));
        let got = measure(&spec, &w, Some(&w), None);
        assert_ne!(got.verdict, Verdict::Fail, "case {case}: {}", got.reason);
        if requests >= spec.effective_min_requests() {
            assert_eq!(got.verdict, Verdict::Pass, "case {case}: {}", got.reason);
        }
    }
}

#[test]
fn swapping_sides_mirrors_the_u_statistic() {
    let mut g = Gen::new(11);
    for case in 0..200 {
        let x =
            LatencyBins::from_bins((0..1 + g.below(30)).map(|_| (g.below(100), 1 + g.below(20))));
        let y =
            LatencyBins::from_bins((0..1 + g.below(30)).map(|_| (g.below(100), 1 + g.below(20))));
        let a = analysis::mann_whitney_u(&x, &y).unwrap();
        let b = analysis::mann_whitney_u(&y, &x).unwrap();
        assert_eq!(a.u + b.u, (a.n1 * a.n2) as f64, "case {case}");
        // both one-sided tests cannot be significant at once
        assert!(
            a.p_value + b.p_value >= 1.0 - 1e-9,
            "case {case}: {a:?} {b:?}"
        );
    }
}

#[test]
fn slower_canary_never_scores_better() {
    // shifting the canary slower never lowers the latency p-value's evidence… i.e. p only
    // goes down as the shift grows
    let base = spread(400, 50_000, 20_000, 21);
    let mut last_p = 1.1;
    for shift in (0..=40_000u64).step_by(2_000) {
        let canary =
            LatencyBins::from_bins(base.latency_us.bins().iter().map(|&(b, c)| (b + shift, c)));
        let p = analysis::mann_whitney_u(&canary, &base.latency_us)
            .unwrap()
            .p_value;
        assert!(p <= last_p + 1e-12, "shift {shift}: {p} > {last_p}");
        last_p = p;
    }
    assert!(last_p < 1e-10);
}

// ---------------------------------------------------------------------------------------
// releases of several services

fn services(list: &[(&str, WindowStats)]) -> std::collections::BTreeMap<String, WindowStats> {
    list.iter()
        .map(|(s, w)| (s.to_string(), w.clone()))
        .collect()
}

#[test]
fn a_broken_service_cannot_hide_in_the_release_s_combined_error_rate() {
    // The issue's release: `api` answers only 500s but carries ~1.6% of the requests.
    let spec = metric("{ name: errors, builtin: error_rate, max: 5% }");
    let api = errs(4, 4);
    let web = errs(246, 2);
    let combined = api.merge(&web);
    assert_eq!(
        measure(&spec, &combined, None, None).verdict,
        Verdict::Pass,
        "6/250 = 2.4% passes when the services are merged"
    );
    let release = services(&[("api", api.clone()), ("web", web.clone())]);
    let got = analysis::measure_services(&spec, &release, None, None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert_eq!(got.service.as_deref(), Some("api"));
    assert!(
        got.reason
            .starts_with("service api: error rate 1 (4/4 in 5s) > max 5%"),
        "{}",
        got.reason
    );
    assert!(got.reason.contains("(web passes)"), "{}", got.reason);
    assert_eq!(got.sample_size, 250);
    // the run's failure (rollback reason, timeline, change record) names the service
    let run_spec = yaml("metrics: [{ name: errors, builtin: error_rate, max: 5% }]");
    let (_, verdict) = record(&AnalysisRun::new(0), &run_spec, &[got], 5_000);
    let RunVerdict::Failed { reason, .. } = verdict else {
        panic!("{verdict:?}")
    };
    assert!(
        reason.starts_with("errors: service api: error rate 1"),
        "{reason}"
    );
}

#[test]
fn every_service_must_pass_and_an_undecided_one_holds() {
    let spec = metric("{ name: errors, builtin: error_rate, max: 5% }");
    let both_fine = services(&[("api", errs(100, 0)), ("web", errs(300, 3))]);
    let got = analysis::measure_services(&spec, &both_fine, None, None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    assert_eq!(got.service, None);
    assert!(
        got.reason
            .starts_with("every service passes — api: error rate 0"),
        "{}",
        got.reason
    );
    // api has too few requests to be judged, and no error yet: Inconclusive, said why
    let thin = services(&[("api", errs(3, 0)), ("web", errs(300, 3))]);
    let got = analysis::measure_services(&spec, &thin, None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    assert_eq!(got.service.as_deref(), Some("api"));
    assert!(
        got.reason
            .contains("service api: error rate: only 3 requests"),
        "{}",
        got.reason
    );
    // a service without requests is not judged; without any request at all: Inconclusive
    let idle = services(&[("api", WindowStats::default()), ("web", errs(300, 3))]);
    let got = analysis::measure_services(&spec, &idle, None, None);
    assert_eq!(got.verdict, Verdict::Pass, "{}", got.reason);
    let none = services(&[
        ("api", WindowStats::default()),
        ("web", WindowStats::default()),
    ]);
    let got = analysis::measure_services(&spec, &none, None, None);
    assert_eq!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
    // latency is per service too: a slow api fails though the release's p95 is fast
    let p95 = metric("{ name: slow, builtin: latency_p95, max: 100ms }");
    let mut slow_api = latencies(&[900_000; 30]);
    slow_api.requests = 30;
    let fast_web = spread(1000, 20_000, 5_000, 50);
    let release = services(&[("api", slow_api.clone()), ("web", fast_web.clone())]);
    assert_eq!(
        measure(&p95, &slow_api.merge(&fast_web), None, None).verdict,
        Verdict::Pass
    );
    let got = analysis::measure_services(&p95, &release, None, None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
    assert_eq!(got.service.as_deref(), Some("api"));
    // one service: exactly `measure`
    let single = services(&[("web", errs(300, 30))]);
    assert_eq!(
        analysis::measure_services(&spec, &single, None, None),
        measure(&spec, &errs(300, 30), None, None)
    );
}
