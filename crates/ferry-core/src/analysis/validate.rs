//! Semantic checks of an `analysis:` block, all reported at once.

use std::collections::BTreeMap;
use std::fmt;

use super::checks::{TEMPLATE_PLACEHOLDERS, placeholders};
use super::spec::{AnalysisSpec, Builtin, MetricSpec, Source, Threshold};

/// One step of a field path, relative to the `analysis:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPart {
    Key(String),
    Index(usize),
}

/// One mistake in an `analysis:` block: where (path relative to the block, e.g.
/// `metrics[2].max`), what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisIssue {
    pub path: Vec<PathPart>,
    pub message: String,
    pub hint: Option<String>,
}

impl AnalysisIssue {
    /// The path as errors show it: `metrics[2].compare.latency.confidence`.
    pub fn path_string(&self) -> String {
        let mut out = String::new();
        for part in &self.path {
            match part {
                PathPart::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                PathPart::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for AnalysisIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path_string(), self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

struct Issues(Vec<AnalysisIssue>);

impl Issues {
    fn push(&mut self, path: Vec<PathPart>, message: impl Into<String>, hint: Option<&str>) {
        self.0.push(AnalysisIssue {
            path,
            message: message.into(),
            hint: hint.map(str::to_string),
        });
    }
}

fn key(k: &str) -> PathPart {
    PathPart::Key(k.to_string())
}

fn metric_path(i: usize, rest: &[&str]) -> Vec<PathPart> {
    let mut p = vec![key("metrics"), PathPart::Index(i)];
    p.extend(rest.iter().map(|k| key(k)));
    p
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

impl AnalysisSpec {
    /// Everything serde's types cannot say: exactly one source per metric, unique names,
    /// bounds that fit the source (durations for latencies, 0..=1 for error rates, min ≤
    /// max), confidences in (0.5, 1), known `{{placeholders}}`, usable URLs and commands.
    /// Paths are relative to the `analysis:` block.
    pub fn validate(&self) -> Vec<AnalysisIssue> {
        let mut issues = Issues(Vec::new());
        if self.interval.0.is_zero() {
            issues.push(
                vec![key("interval")],
                "interval must be longer than 0",
                Some("e.g. 5s"),
            );
        }
        if self.consecutive_successes == 0 {
            issues.push(
                vec![key("consecutive_successes")],
                "consecutive_successes must be at least 1",
                None,
            );
        }
        if self.metrics.is_empty() {
            issues.push(
                vec![key("metrics")],
                "analysis needs at least one metric",
                Some("e.g. - { name: errors, builtin: error_rate, max: 1% }"),
            );
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, m) in self.metrics.iter().enumerate() {
            if !is_metric_name(&m.name) {
                issues.push(
                    metric_path(i, &["name"]),
                    format!("invalid metric name {:?}", m.name),
                    Some("lowercase letters, digits, - and _, starting with a letter (at most 63)"),
                );
            } else if let Some(first) = seen.insert(&m.name, i) {
                issues.push(
                    metric_path(i, &["name"]),
                    format!(
                        "metric name {:?} is already used by metrics[{first}]",
                        m.name
                    ),
                    Some("metric names must be unique within an analysis"),
                );
            }
            validate_metric(i, m, &mut issues);
        }
        issues.0
    }
}

fn validate_metric(i: usize, m: &MetricSpec, issues: &mut Issues) {
    let sources = m.source_names();
    match sources.len() {
        0 => issues.push(
            metric_path(i, &[]),
            format!("metric {:?} has no source", m.name),
            Some("set exactly one of builtin, prometheus, http, command or compare"),
        ),
        1 => {}
        _ => issues.push(
            metric_path(i, &[sources[1]]),
            format!(
                "metric {:?} has several sources ({}); set exactly one",
                m.name,
                sources.join(", ")
            ),
            Some("split it into one metric per source"),
        ),
    }
    let bounds = [("min", m.min), ("max", m.max)];
    for (field, t) in bounds {
        if let Some(t) = t
            && !t.value().is_finite()
        {
            issues.push(
                metric_path(i, &[field]),
                format!("{field} must be a finite number"),
                None,
            );
        }
    }
    if let (Some(min), Some(max)) = (m.min, m.max)
        && min.value() > max.value()
    {
        issues.push(
            metric_path(i, &["min"]),
            format!("min {min} is greater than max {max}"),
            None,
        );
    }
    let no_min_requests = |issues: &mut Issues, hint: &str| {
        if m.min_requests.is_some() {
            issues.push(
                metric_path(i, &["min_requests"]),
                "min_requests only applies to builtin metrics",
                Some(hint),
            );
        }
    };
    let no_bounds = |issues: &mut Issues, why: &str| {
        for (field, t) in bounds {
            if t.is_some() {
                issues.push(metric_path(i, &[field]), why.to_string(), None);
            }
        }
    };
    let need_bounds = |issues: &mut Issues, example: &str| {
        if m.min.is_none() && m.max.is_none() {
            issues.push(
                metric_path(i, &[]),
                format!("metric {:?} needs max or min", m.name),
                Some(example),
            );
        }
    };
    match m.source() {
        None => {}
        Some(Source::Builtin(b)) => {
            need_bounds(
                issues,
                match b {
                    Builtin::ErrorRate => "e.g. max: 1%",
                    Builtin::RequestRate => "e.g. min: 1 (requests per second)",
                    _ => "e.g. max: 500ms",
                },
            );
            for (field, t) in bounds {
                let Some(t) = t else { continue };
                let path = metric_path(i, &[field]);
                match b {
                    Builtin::ErrorRate => {
                        if t.is_duration() {
                            issues.push(
                                path,
                                "error_rate is a share of requests, not a duration",
                                Some("write it like 0.01 or 1%"),
                            );
                        } else if !(0.0..=1.0).contains(&t.value()) {
                            issues.push(
                                path,
                                format!("error_rate {field} must be between 0 and 1 (0%–100%)"),
                                Some("write it like 0.01 or 1%"),
                            );
                        }
                    }
                    Builtin::RequestRate => {
                        if !matches!(t, Threshold::Number(_)) {
                            issues.push(
                                path,
                                "request_rate is in requests per second: write a plain number",
                                Some("e.g. min: 1"),
                            );
                        } else if t.value() < 0.0 {
                            issues.push(path, format!("{field} must not be negative"), None);
                        }
                    }
                    _ => {
                        if !t.is_duration() {
                            issues.push(
                                path,
                                format!("{} {field} must be a duration", b.label()),
                                Some("write it like 500ms or 1.5s"),
                            );
                        }
                    }
                }
            }
        }
        Some(Source::Prometheus(p)) => {
            no_min_requests(issues, "a query decides its own window, e.g. [1m]");
            need_bounds(issues, "e.g. max: 5");
            for (field, t) in bounds {
                if let Some(t) = t
                    && !matches!(t, Threshold::Number(_))
                {
                    issues.push(
                        metric_path(i, &[field]),
                        "a prometheus result is a plain number: write max/min as numbers",
                        Some("Prometheus reports durations in seconds: 500ms is 0.5"),
                    );
                }
            }
            if !is_http_url(&p.address) {
                issues.push(
                    metric_path(i, &["prometheus", "address"]),
                    format!("address {:?} is not an http:// or https:// URL", p.address),
                    Some("e.g. http://127.0.0.1:9090"),
                );
            }
            if p.query.trim().is_empty() {
                issues.push(
                    metric_path(i, &["prometheus", "query"]),
                    "query is empty",
                    None,
                );
            }
            check_placeholders(i, &["prometheus", "query"], &p.query, issues);
            check_timeout(i, &["prometheus", "timeout"], p.timeout.0, issues);
        }
        Some(Source::Http(h)) => {
            no_min_requests(issues, "an http check is one request per measurement");
            let numeric = h.json_field.as_ref().is_some_and(|j| j.equals.is_none());
            if numeric {
                need_bounds(issues, "json_field without equals is compared with max/min");
            } else {
                no_bounds(
                    issues,
                    "max/min on an http check only apply to a numeric json_field (without equals)",
                );
            }
            if !is_http_url(&h.url) {
                issues.push(
                    metric_path(i, &["http", "url"]),
                    format!("url {:?} is not an http:// or https:// URL", h.url),
                    Some("e.g. http://127.0.0.1:8081/api/health"),
                );
            }
            check_placeholders(i, &["http", "url"], &h.url, issues);
            for value in h.headers.values() {
                check_placeholders(i, &["http", "headers"], value, issues);
            }
            if let Some(body) = &h.body {
                check_placeholders(i, &["http", "body"], body, issues);
            }
            const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
            if !METHODS.contains(&h.method.as_str()) {
                issues.push(
                    metric_path(i, &["http", "method"]),
                    format!("unknown method {:?}", h.method),
                    Some("one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS (uppercase)"),
                );
            }
            if let Some(s) = h.expect_status
                && !(100..=599).contains(&s)
            {
                issues.push(
                    metric_path(i, &["http", "expect_status"]),
                    format!("expect_status {s} is not an HTTP status (100–599)"),
                    None,
                );
            }
            if let Some(j) = &h.json_field
                && j.path.split('.').all(str::is_empty)
            {
                issues.push(
                    metric_path(i, &["http", "json_field", "path"]),
                    "json_field.path is empty",
                    Some("a dotted path such as status or checks.db.status"),
                );
            }
            check_timeout(i, &["http", "timeout"], h.timeout.0, issues);
        }
        Some(Source::Command(c)) => {
            no_min_requests(issues, "a command is one run per measurement");
            no_bounds(
                issues,
                "a command passes or fails by its exit code; max/min do not apply",
            );
            if c.run.first().is_none_or(|a| a.trim().is_empty()) {
                issues.push(
                    metric_path(i, &["command", "run"]),
                    "run needs a program",
                    Some("e.g. run: [\"./check.sh\", \"{{version}}\"]"),
                );
            }
            for arg in &c.run {
                check_placeholders(i, &["command", "run"], arg, issues);
            }
            check_timeout(i, &["command", "timeout"], c.timeout.0, issues);
        }
        Some(Source::Compare(c)) => {
            no_min_requests(
                issues,
                "put it inside compare: compare: { min_requests: 100 }",
            );
            no_bounds(
                issues,
                "compare judges with max_increase per sub-metric; max/min do not apply",
            );
            if c.min_requests == 0 {
                issues.push(
                    metric_path(i, &["compare", "min_requests"]),
                    "compare.min_requests must be at least 1",
                    Some("the default, 100, keeps the statistics meaningful"),
                );
            }
            let confidences = [
                ("latency", c.latency.as_ref().map(|l| l.confidence)),
                ("errors", c.errors.as_ref().map(|e| e.confidence)),
            ];
            for (sub, conf) in confidences {
                if let Some(conf) = conf
                    && !(conf > 0.5 && conf < 1.0)
                {
                    issues.push(
                        metric_path(i, &["compare", sub, "confidence"]),
                        format!("confidence {conf} must be strictly between 0.5 and 1"),
                        Some("e.g. 0.95 (95%) or 0.99"),
                    );
                }
            }
            if let Some(l) = &c.latency {
                let v = l.max_increase.get();
                if !(v.is_finite() && v >= 0.0) {
                    issues.push(
                        metric_path(i, &["compare", "latency", "max_increase"]),
                        "max_increase must be a percentage of at least 0%",
                        Some("e.g. 20%"),
                    );
                }
            }
            if let Some(e) = &c.errors {
                let v = e.max_increase.get();
                if !(0.0..=1.0).contains(&v) {
                    issues.push(
                        metric_path(i, &["compare", "errors", "max_increase"]),
                        "max_increase of the error rate must be between 0% and 100%",
                        Some("e.g. 0.5% (error-rate points)"),
                    );
                }
            }
        }
    }
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

fn check_placeholders(i: usize, path: &[&str], text: &str, issues: &mut Issues) {
    for name in placeholders(text) {
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            issues.push(
                metric_path(i, path),
                format!("unknown placeholder {{{{{name}}}}}"),
                Some("use {{version}}, {{env}} or {{app}}"),
            );
        }
    }
}

fn check_timeout(i: usize, path: &[&str], timeout: std::time::Duration, issues: &mut Issues) {
    if timeout.is_zero() {
        issues.push(
            metric_path(i, path),
            "timeout must be longer than 0",
            Some("e.g. 5s"),
        );
    }
}
