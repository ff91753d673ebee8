//! The judges: one metric, one window (and an observation) in, one [`Measurement`] out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::compare::{
    hodges_lehmann_shift, mann_whitney_u, two_proportion_excess, two_proportion_test,
};
use super::format::{fmt_exact, fmt_ms, fmt_pct, fmt_sig, fmt_window};
use super::spec::{
    Builtin, CompareSpec, ErrorsCompare, LatencyCompare, MetricSpec, Source, Threshold,
};
use super::stats::{LatencyBins, Observation, WindowStats, rank_for};

/// The verdict of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    /// Not enough data to judge (too few requests, a check that could not run).
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// Unit of [`Measurement::value`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// A fraction 0..=1 (error rate).
    Ratio,
    /// Milliseconds (latency).
    #[serde(rename = "ms")]
    Millis,
    /// Requests per second.
    PerSecond,
    /// A plain number (Prometheus, a JSON field).
    Number,
    /// A pass/fail check: no value.
    Check,
    /// A 0–100 score (`compare`).
    Score,
}

/// One judged measurement of one metric, as recorded on the deployment's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// The metric's name.
    pub metric: String,
    /// The measured value in `unit`; `None` when nothing could be measured.
    pub value: Option<f64>,
    pub unit: Unit,
    /// Requests the value is based on (canary side for `compare`; 1 for external checks that
    /// answered, 0 otherwise).
    pub sample_size: u64,
    /// The condition, for humans: `≤ 0.01`, `≤ 500ms`, `≥ 1/s`, `exit 0`.
    pub threshold: String,
    pub verdict: Verdict,
    /// One line: what was measured, against what, why this verdict, and what would change it.
    pub reason: String,
    /// The metric is `dry_run`: recorded, never acted on.
    pub dry_run: bool,
    /// Per-sub-metric results of a `compare` metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<CompareDetail>,
    /// For a builtin metric of a release of several services: the service this verdict is
    /// about (the first failing one, else the first undecided one). `None` when the verdict
    /// is about the release as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One sub-metric (`latency` or `errors`) of a `compare` measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareDetail {
    /// `latency` or `errors`.
    pub name: String,
    pub verdict: Verdict,
    /// Canary figure: median latency in ms, or error rate.
    pub canary: Option<f64>,
    /// Baseline figure, same unit.
    pub baseline: Option<f64>,
    /// Effect: relative latency shift (Hodges-Lehmann / baseline median), or absolute
    /// error-rate increase.
    pub effect: Option<f64>,
    /// One-sided p-value of the test.
    pub p_value: Option<f64>,
    pub canary_n: u64,
    pub baseline_n: u64,
    pub reason: String,
}

/// Judges one metric.
///
/// - `builtin` metrics read `canary` (the new version's window).
/// - `compare` reads `canary` and `baseline` (the stable version over the same window);
///   without a baseline it is Inconclusive.
/// - `prometheus`, `http` and `command` read `external` (what the controller observed
///   running the check, see [`observe_http`](super::observe_http) and friends); without
///   one it is Inconclusive.
///
/// No traffic is always Inconclusive, never Pass nor Fail.
pub fn measure(
    metric: &MetricSpec,
    canary: &WindowStats,
    baseline: Option<&WindowStats>,
    external: Option<&Observation>,
) -> Measurement {
    let mut m = match metric.source() {
        None => base(
            metric,
            Unit::Check,
            "-".to_string(),
            Verdict::Inconclusive,
            "metric has no source (set builtin, prometheus, http, command or compare)".into(),
        ),
        Some(Source::Builtin(b)) => judge_builtin(metric, b, canary),
        Some(Source::Compare(c)) => judge_compare(metric, c, canary, baseline),
        Some(Source::Prometheus(_) | Source::Http(_) | Source::Command(_)) => {
            judge_external(metric, external)
        }
    };
    m.dry_run = metric.dry_run;
    m
}

/// Judges one metric over a release of several services, `canary` (and `baseline`) holding
/// each service's window.
///
/// A builtin metric is judged **per service**, so one broken service cannot hide inside the
/// release's combined figures: the measurement fails when any service fails (and names
/// it); it is Inconclusive when no service fails but one that served requests cannot be
/// judged yet; it passes only when every service that served requests passes. Services
/// without a request in the window are not judged (a window without any request at all is
/// Inconclusive). Other metrics (`compare`, external checks) judge the release as a whole
/// ([`measure`] on the merged windows). With one service this is exactly [`measure`].
pub fn measure_services(
    metric: &MetricSpec,
    canary: &BTreeMap<String, WindowStats>,
    baseline: Option<&BTreeMap<String, WindowStats>>,
    external: Option<&Observation>,
) -> Measurement {
    let merged = |side: &BTreeMap<String, WindowStats>| {
        side.values()
            .fold(WindowStats::default(), |acc, w| acc.merge(w))
    };
    let total = merged(canary);
    let baseline = baseline.map(merged);
    let per_service = matches!(metric.source(), Some(Source::Builtin(_)));
    let served: Vec<(&String, &WindowStats)> = canary
        .iter()
        .filter(|(_, w)| w.requests > 0 || !w.latency_us.is_empty())
        .collect();
    if !per_service || canary.len() < 2 || served.is_empty() {
        return measure(metric, &total, baseline.as_ref(), external);
    }
    let judged: Vec<(&String, Measurement)> = served
        .into_iter()
        .map(|(service, w)| (service, measure(metric, w, None, None)))
        .collect();
    let worst = [Verdict::Fail, Verdict::Inconclusive]
        .into_iter()
        .find_map(|v| judged.iter().find(|(_, m)| m.verdict == v));
    let others = |skip: &str, verdict: Verdict| -> Vec<&str> {
        judged
            .iter()
            .filter(|(s, m)| s.as_str() != skip && m.verdict == verdict)
            .map(|(s, _)| s.as_str())
            .collect()
    };
    let mut m = match worst {
        Some((service, m)) => {
            let mut out = m.clone();
            let mut reason = format!("service {service}: {}", m.reason);
            let failing = others(service, Verdict::Fail);
            if !failing.is_empty() {
                reason.push_str(&format!(" (also failing: {})", failing.join(", ")));
            }
            let passing = others(service, Verdict::Pass);
            if !passing.is_empty() {
                reason.push_str(&format!(
                    " ({} pass{})",
                    passing.join(", "),
                    if passing.len() == 1 { "es" } else { "" }
                ));
            }
            out.reason = reason;
            out.service = Some((*service).clone());
            out
        }
        None => {
            let mut out = measure(metric, &total, None, None);
            out.verdict = Verdict::Pass;
            out.reason = format!(
                "every service passes — {}",
                judged
                    .iter()
                    .map(|(s, m)| format!("{s}: {}", m.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            out
        }
    };
    m.sample_size = total.requests;
    m.dry_run = metric.dry_run;
    m
}

fn base(
    metric: &MetricSpec,
    unit: Unit,
    threshold: String,
    verdict: Verdict,
    reason: String,
) -> Measurement {
    Measurement {
        metric: metric.name.clone(),
        value: None,
        unit,
        sample_size: 0,
        threshold,
        verdict,
        reason,
        dry_run: metric.dry_run,
        details: Vec::new(),
        service: None,
    }
}

/// How a bound reads next to a value of this unit.
fn show_bound(t: Threshold, unit: Unit) -> String {
    match (t, unit) {
        (Threshold::Duration(_), _) => t.to_string(),
        (_, Unit::Millis) => fmt_ms(t.value()),
        (_, Unit::PerSecond) => format!("{}/s", fmt_exact(t.value())),
        _ => t.to_string(),
    }
}

fn show_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Millis => fmt_ms(v),
        Unit::PerSecond => format!("{}/s", fmt_sig(v)),
        _ => fmt_sig(v),
    }
}

/// `≤ 0.01`, `≥ 1/s`, `≥ 1/s and ≤ 100/s`, or `-` without bounds.
pub(crate) fn threshold_text(metric: &MetricSpec, unit: Unit) -> String {
    match (metric.min, metric.max) {
        (None, None) => "-".to_string(),
        (Some(min), None) => format!("≥ {}", show_bound(min, unit)),
        (None, Some(max)) => format!("≤ {}", show_bound(max, unit)),
        (Some(min), Some(max)) => format!(
            "≥ {} and ≤ {}",
            show_bound(min, unit),
            show_bound(max, unit)
        ),
    }
}

/// Compares a value with the metric's bounds: Pass or Fail, and the condition as it
/// reads after the value (`> max 0.01`, `≤ max 500ms`).
fn against_bounds(metric: &MetricSpec, value: f64, unit: Unit) -> (Verdict, String) {
    if let Some(max) = metric.max
        && value > max.value()
    {
        return (Verdict::Fail, format!("> max {}", show_bound(max, unit)));
    }
    if let Some(min) = metric.min
        && value < min.value()
    {
        return (Verdict::Fail, format!("< min {}", show_bound(min, unit)));
    }
    let cond = match (metric.min, metric.max) {
        (Some(min), Some(max)) => format!(
            "within {} … {}",
            show_bound(min, unit),
            show_bound(max, unit)
        ),
        (Some(min), None) => format!("≥ min {}", show_bound(min, unit)),
        (None, Some(max)) => format!("≤ max {}", show_bound(max, unit)),
        (None, None) => String::new(),
    };
    (Verdict::Pass, cond)
}

fn judge_builtin(metric: &MetricSpec, b: Builtin, w: &WindowStats) -> Measurement {
    let unit = match b {
        Builtin::ErrorRate => Unit::Ratio,
        Builtin::RequestRate => Unit::PerSecond,
        _ => Unit::Millis,
    };
    let threshold = threshold_text(metric, unit);
    let min_requests = metric.effective_min_requests();
    let label = b.label();
    let window = fmt_window(w.duration_ms);
    let mut m = base(
        metric,
        unit,
        threshold,
        Verdict::Inconclusive,
        String::new(),
    );
    if metric.min.is_none() && metric.max.is_none() {
        m.reason = format!("{label}: no max or min set, nothing to judge against");
        return m;
    }
    let n = match b {
        Builtin::ErrorRate | Builtin::RequestRate => w.requests,
        _ => w.latency_us.total(),
    };
    m.sample_size = n;
    if n == 0 {
        m.reason = format!(
            "{label}: no requests in {window}, nothing to judge yet (need {})",
            min_requests.max(1)
        );
        return m;
    }
    match b {
        Builtin::ErrorRate => {
            let e = w.errors();
            let rate = e as f64 / n as f64;
            m.value = Some(rate);
            if n < min_requests {
                // Fail early when the errors already seen break `max` even if every
                // missing request succeeded.
                if let Some(max) = metric.max
                    && e as f64 / min_requests as f64 > max.value()
                {
                    m.verdict = Verdict::Fail;
                    m.reason = format!(
                        "{label} {} ({e}/{n} in {window}) > max {}: fewer than min_requests \
                         {min_requests}, but {e} errors keep it above max even if the next {} \
                         requests succeed",
                        fmt_sig(rate),
                        show_bound(max, unit),
                        min_requests - n
                    );
                } else {
                    m.reason = format!(
                        "{label}: only {n} requests in {window}, need {min_requests} before \
                         judging ({e} errors so far) — more traffic or a lower min_requests \
                         would decide it"
                    );
                }
                return m;
            }
            let (verdict, cond) = against_bounds(metric, rate, unit);
            m.verdict = verdict;
            m.reason = format!("{label} {} ({e}/{n} in {window}) {cond}", fmt_sig(rate));
            m
        }
        Builtin::RequestRate => {
            if w.duration_ms <= 0 {
                m.reason = format!("{label}: the window has no duration, nothing to judge");
                return m;
            }
            let rate = n as f64 / (w.duration_ms as f64 / 1000.0);
            m.value = Some(rate);
            if n < min_requests {
                m.reason = format!(
                    "{label}: only {n} requests in {window}, need {min_requests} before \
                     judging — more traffic or a lower min_requests would decide it"
                );
                return m;
            }
            let (verdict, cond) = against_bounds(metric, rate, unit);
            m.verdict = verdict;
            m.reason = format!(
                "{label} {} ({n} requests in {window}) {cond}",
                show_value(rate, unit)
            );
            m
        }
        _ => {
            let q = b.quantile().unwrap_or(0.5);
            let Some(us) = w.latency_us.quantile(q) else {
                m.reason = format!("{label}: no latency samples in {window}");
                return m;
            };
            let ms = us as f64 / 1000.0;
            m.value = Some(ms);
            if n < min_requests {
                // Fail early when enough requests are already slower than `max` that the
                // quantile over `min_requests` requests must exceed it.
                if let Some(max) = metric.max {
                    let max_us = (max.value() * 1000.0).round().max(0.0) as u64;
                    let slow = w.latency_us.count_above(max_us);
                    let allowed = min_requests - rank_for(q, min_requests);
                    if slow > allowed {
                        m.verdict = Verdict::Fail;
                        m.reason = format!(
                            "{label}: {slow} of {n} requests in {window} already slower than \
                             max {}; {label} over {min_requests} requests must exceed it \
                             (at most {allowed} may be slower)",
                            show_bound(max, unit)
                        );
                        return m;
                    }
                }
                m.reason = format!(
                    "{label}: only {n} requests in {window}, need {min_requests} before \
                     judging (so far {}) — more traffic or a lower min_requests would decide it",
                    fmt_ms(ms)
                );
                return m;
            }
            let (verdict, cond) = against_bounds(metric, ms, unit);
            m.verdict = verdict;
            m.reason = format!("{label} {} ({n} requests in {window}) {cond}", fmt_ms(ms));
            m
        }
    }
}

fn judge_external(metric: &MetricSpec, external: Option<&Observation>) -> Measurement {
    let source = metric.source();
    let what = match source {
        Some(Source::Prometheus(_)) => "prometheus query",
        Some(Source::Http(_)) => "http check",
        _ => "command",
    };
    let has_bounds = metric.min.is_some() || metric.max.is_some();
    let (unit, threshold) = if has_bounds {
        (Unit::Number, threshold_text(metric, Unit::Number))
    } else {
        (Unit::Check, check_text(source))
    };
    let mut m = base(
        metric,
        unit,
        threshold,
        Verdict::Inconclusive,
        String::new(),
    );
    match external {
        None => {
            m.reason = format!("{what}: no observation yet, nothing to judge");
        }
        Some(Observation::Error(e)) => {
            m.reason = format!(
                "{what} could not run: {e} — inconclusive until it answers (fix the check or \
                 its target)"
            );
        }
        Some(Observation::Passed) => {
            m.sample_size = 1;
            m.verdict = Verdict::Pass;
            m.reason = format!("{what} passed ({})", m.threshold);
        }
        Some(Observation::FailedWith(why)) => {
            m.sample_size = 1;
            m.verdict = Verdict::Fail;
            m.reason = format!("{what} failed: {why} (expected {})", m.threshold);
        }
        Some(Observation::Value(v)) => {
            m.sample_size = 1;
            m.unit = Unit::Number;
            if !v.is_finite() {
                m.reason = format!(
                    "{what} returned {v} (no data, e.g. a rate over no traffic) — \
                     inconclusive until it returns a number"
                );
            } else if !has_bounds {
                m.value = Some(*v);
                m.reason = format!(
                    "{what} returned {}, but the metric has no max or min to judge it",
                    fmt_sig(*v)
                );
            } else {
                m.value = Some(*v);
                let (verdict, cond) = against_bounds(metric, *v, Unit::Number);
                m.verdict = verdict;
                m.reason = format!("{what} value {} {cond}", fmt_sig(*v));
            }
        }
    }
    m
}

/// What a pass/fail check expects, for humans.
fn check_text(source: Option<Source<'_>>) -> String {
    match source {
        Some(Source::Http(h)) => {
            let mut parts = vec![match h.expect_status {
                Some(s) => format!("status {s}"),
                None => "status 2xx".to_string(),
            }];
            if let Some(text) = &h.body_contains {
                parts.push(format!("body contains {text:?}"));
            }
            if let Some(j) = &h.json_field
                && let Some(eq) = &j.equals
            {
                parts.push(format!("{} = {eq}", j.path));
            }
            parts.join(", ")
        }
        Some(Source::Command(_)) => "exit 0".to_string(),
        _ => "-".to_string(),
    }
}

/// `latency ≤ +20% (95%), errors ≤ +0.5pp (95%)`.
fn compare_text(latency: Option<&LatencyCompare>, errors: Option<&ErrorsCompare>) -> String {
    let mut parts = Vec::new();
    if let Some(l) = latency {
        parts.push(format!(
            "latency ≤ +{} or +{} ({}% confidence)",
            l.max_increase,
            fmt_ms(l.min_increase.get().as_secs_f64() * 1000.0),
            fmt_exact(l.confidence * 100.0)
        ));
    }
    if let Some(e) = errors {
        parts.push(format!(
            "errors ≤ +{} ({}% confidence)",
            fmt_pp(e.max_increase.get()),
            fmt_exact(e.confidence * 100.0)
        ));
    }
    parts.join(", ")
}

fn judge_compare(
    metric: &MetricSpec,
    spec: &CompareSpec,
    canary: &WindowStats,
    baseline: Option<&WindowStats>,
) -> Measurement {
    let (latency, errors) = spec.effective();
    let threshold = compare_text(latency.as_ref(), errors.as_ref());
    let mut m = base(
        metric,
        Unit::Score,
        threshold,
        Verdict::Inconclusive,
        String::new(),
    );
    m.sample_size = canary.requests;
    let Some(baseline) = baseline else {
        m.reason = "compare: no stable-version window to compare with — inconclusive until \
                    the stable version serves traffic"
            .to_string();
        return m;
    };
    let min = spec.min_requests;
    let mut details = Vec::new();
    if let Some(l) = &latency {
        details.push(compare_latency(l, min, canary, baseline));
    }
    if let Some(e) = &errors {
        details.push(compare_errors(e, min, canary, baseline));
    }
    let total = details.len().max(1);
    let passed = details
        .iter()
        .filter(|d| d.verdict == Verdict::Pass)
        .count();
    let score = (100.0 * passed as f64 / total as f64).round();
    m.verdict = if details.iter().any(|d| d.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if details.iter().any(|d| d.verdict == Verdict::Inconclusive) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    // An Inconclusive comparison has no score: 0/100 would read as a failure.
    m.value = (m.verdict != Verdict::Inconclusive).then_some(score);
    let same_reason = details
        .iter()
        .all(|d| d.verdict == Verdict::Inconclusive && d.reason == details[0].reason);
    m.reason = if same_reason && !details.is_empty() {
        format!("compare inconclusive: {}", details[0].reason)
    } else {
        let parts: Vec<String> = details
            .iter()
            .map(|d| format!("{} {}: {}", d.name, d.verdict.as_str(), d.reason))
            .collect();
        let head = match m.value {
            Some(score) => format!("compare score {}/100", fmt_sig(score)),
            None => "compare inconclusive".to_string(),
        };
        format!(
            "{head} ({passed} of {total} passing) — {}",
            parts.join("; ")
        )
    };
    m.details = details;
    m
}

fn too_few(min: u64, n1: u64, n2: u64) -> Option<String> {
    if n1 >= min && n2 >= min {
        return None;
    }
    Some(format!(
        "{n1} new-version and {n2} stable requests, need {min} on each side before judging — \
         more traffic or a lower compare.min_requests would decide it"
    ))
}

fn compare_latency(
    spec: &LatencyCompare,
    min: u64,
    canary: &WindowStats,
    baseline: &WindowStats,
) -> CompareDetail {
    let (c, b) = (&canary.latency_us, &baseline.latency_us);
    let (n1, n2) = (c.total(), b.total());
    let canary_median = c.quantile(0.5).map(|v| v as f64 / 1000.0);
    let baseline_median = b.quantile(0.5).map(|v| v as f64 / 1000.0);
    let mut d = CompareDetail {
        name: "latency".to_string(),
        verdict: Verdict::Inconclusive,
        canary: canary_median,
        baseline: baseline_median,
        effect: None,
        p_value: None,
        canary_n: n1,
        baseline_n: n2,
        reason: String::new(),
    };
    if let Some(why) = too_few(min, n1, n2) {
        d.reason = why;
        return d;
    }
    let (Some(mw), Some(shift_us), Some(base_ms), Some(canary_ms)) = (
        mann_whitney_u(c, b),
        hodges_lehmann_shift(c, b),
        baseline_median,
        canary_median,
    ) else {
        d.reason = "no latency samples".to_string();
        return d;
    };
    let shift_ms = shift_us / 1000.0;
    let relative = if base_ms > 0.0 {
        shift_ms / base_ms
    } else if shift_ms > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let tolerance_ms = spec.tolerance_ms(base_ms);
    // "slower than stable by more than the tolerance": the canary's latencies minus the
    // tolerance against the stable ones.
    let tolerance_us = (tolerance_ms * 1000.0).round() as u64;
    let lowered = LatencyBins::from_bins(
        c.bins()
            .iter()
            .map(|&(v, n)| (v.saturating_sub(tolerance_us), n)),
    );
    let beyond = mann_whitney_u(&lowered, b).unwrap_or(mw);
    d.effect = Some(relative);
    d.p_value = Some(beyond.p_value);
    let alpha = 1.0 - spec.confidence;
    let significant = beyond.p_value <= alpha;
    let large = shift_ms > tolerance_ms;
    let figures = format!(
        "median {} vs {} stable, shift {}{} ({}{}), tolerance +{} (+{} or {}), {} (U={}, z={})",
        fmt_ms(canary_ms),
        fmt_ms(base_ms),
        if shift_ms >= 0.0 { "+" } else { "" },
        fmt_ms(shift_ms),
        if relative >= 0.0 { "+" } else { "" },
        fmt_pct(relative),
        fmt_ms(tolerance_ms),
        spec.max_increase,
        fmt_ms(spec.min_increase.get().as_secs_f64() * 1000.0),
        fmt_p(beyond.p_value),
        fmt_sig(beyond.u),
        fmt_sig(beyond.z),
    );
    let (verdict, why) = match (large, significant) {
        (true, true) => (
            Verdict::Fail,
            format!(
                "slower than stable by more than the tolerance, with {}% confidence",
                fmt_exact(spec.confidence * 100.0)
            ),
        ),
        (false, _) if mw.p_value > alpha => (
            Verdict::Pass,
            format!(
                "not significantly slower than stable (p={} > {})",
                fmt_sig(mw.p_value),
                fmt_exact(alpha)
            ),
        ),
        (false, _) => (
            Verdict::Pass,
            "slower than stable but within the tolerance".to_string(),
        ),
        (true, false) => (
            Verdict::Pass,
            format!(
                "the shift beyond the tolerance is not significant (p > {})",
                fmt_exact(alpha)
            ),
        ),
    };
    d.verdict = verdict;
    d.reason = format!("{figures}: {why}");
    d
}

fn compare_errors(
    spec: &ErrorsCompare,
    min: u64,
    canary: &WindowStats,
    baseline: &WindowStats,
) -> CompareDetail {
    let (n1, n2) = (canary.requests, baseline.requests);
    let (e1, e2) = (canary.errors(), baseline.errors());
    let mut d = CompareDetail {
        name: "errors".to_string(),
        verdict: Verdict::Inconclusive,
        canary: (n1 > 0).then(|| e1 as f64 / n1 as f64),
        baseline: (n2 > 0).then(|| e2 as f64 / n2 as f64),
        effect: None,
        p_value: None,
        canary_n: n1,
        baseline_n: n2,
        reason: String::new(),
    };
    if let Some(why) = too_few(min, n1, n2) {
        d.reason = why;
        return d;
    }
    let (Some(t), Some(beyond)) = (
        two_proportion_test(e1, n1, e2, n2),
        two_proportion_excess(e1, n1, e2, n2, spec.max_increase.get()),
    ) else {
        d.reason = "no requests".to_string();
        return d;
    };
    let diff = t.canary_rate - t.baseline_rate;
    d.effect = Some(diff);
    d.p_value = Some(beyond.p_value);
    let alpha = 1.0 - spec.confidence;
    let max = spec.max_increase.get();
    let significant = beyond.p_value <= alpha;
    let large = diff > max;
    let figures = format!(
        "error rate {} ({e1}/{n1}) vs {} ({e2}/{n2}) stable, {}{}, tolerance +{}, {}",
        fmt_pct(t.canary_rate),
        fmt_pct(t.baseline_rate),
        if diff >= 0.0 { "+" } else { "" },
        fmt_pp(diff),
        fmt_pp(max),
        fmt_p(beyond.p_value),
    );
    let (verdict, why) = match (large, significant) {
        (true, true) => (
            Verdict::Fail,
            format!(
                "higher than stable by more than the tolerance, with {}% confidence",
                fmt_exact(spec.confidence * 100.0)
            ),
        ),
        (false, _) if t.p_value > alpha => (
            Verdict::Pass,
            format!(
                "not significantly higher than stable (p={} > {})",
                fmt_sig(t.p_value),
                fmt_exact(alpha)
            ),
        ),
        (false, _) => (
            Verdict::Pass,
            "higher than stable but within the tolerance".to_string(),
        ),
        (true, false) => (
            Verdict::Pass,
            format!(
                "the increase beyond the tolerance is not significant (p > {})",
                fmt_exact(alpha)
            ),
        ),
    };
    d.verdict = verdict;
    d.reason = format!("{figures}: {why}");
    d
}

/// `p=0.03`, `p<0.0001`.
fn fmt_p(p: f64) -> String {
    if p < 0.0001 {
        "p<0.0001".to_string()
    } else {
        format!("p={}", fmt_sig(p))
    }
}

/// An error-rate difference in percentage points: `+0.5pp`.
fn fmt_pp(fraction: f64) -> String {
    format!("{}pp", fmt_sig(fraction * 100.0))
}
