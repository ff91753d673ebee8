//! The `alerts:` block of a manifest: the typed shape, conditions, and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::{PathPart, Threshold};
use crate::duration::HumanDuration;

/// Most alert rules one app may have.
pub const MAX_RULES: usize = 100;
/// Longest `condition`, `query`, label or annotation value.
pub const MAX_TEXT: usize = 4096;
/// Most labels or annotations on one rule.
pub const MAX_LABELS: usize = 32;
/// Default evaluation interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Default timeout of a Prometheus query.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `for`, `keep_firing_for` and `rollback_within`.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Placeholders of a Prometheus query.
pub const QUERY_PLACEHOLDERS: [&str; 2] = ["{{app}}", "{{env}}"];

/// One alert rule: a condition watched in every environment it applies to, the time it must
/// hold before it fires (`for`), and what firing does (`actions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Names the alert (`alertname`): letters, digits, `_` and `-`, starting with a letter;
    /// unique in the app.
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"), example = &"high_error_rate")]
    pub name: String,
    /// The environments it watches (default: every environment of the app).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Only this service's series (default: every service). Ferry's own metrics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// `METRIC OP VALUE` over Ferry's own metrics of each service and version in the
    /// environment, e.g. `error_rate > 1%`, `latency_p99 > 500ms`, `up == 0`,
    /// `replicas_ready < 2`, `restarts > 3`, `request_rate < 1`, `cpu_usage > 80` (a share
    /// of the replica's `resources:` limit, in percent), `memory > 90%`. With `prometheus`:
    /// `value OP VALUE` compared with each series the query returns (optional: without it,
    /// every series returned is active, as in a Prometheus rule's `expr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(example = "error_rate > 1%")]
    pub condition: Option<String>,
    /// An instant PromQL query against a Prometheus server instead of Ferry's own metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<AlertQuery>,
    /// How long the condition must hold before the alert fires (default 0: at once).
    /// Until then it is pending. (`duration` is accepted as another name.)
    #[serde(
        rename = "for",
        alias = "duration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub for_: Option<HumanDuration>,
    /// Keep firing this long after the condition stopped holding (default 0), so a
    /// flapping condition does not resolve and fire again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_firing_for: Option<HumanDuration>,
    /// `critical`, `warning` (default) or `info`.
    #[serde(default)]
    pub severity: Severity,
    /// Labels added to every alert of this rule (for routing notifications).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Texts sent with the alert, e.g. `summary` and `runbook_url`. `{{ $value }}` and
    /// `{{ $labels.NAME }}` (`app`, `env`, `service`, `version`, the rule's labels, a
    /// Prometheus series' labels) are substituted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// What firing does besides showing in `ferry alerts`.
    #[serde(default)]
    pub actions: AlertActions,
    /// How often the rule is evaluated (default 10s, at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<HumanDuration>,
}

/// An instant query against Prometheus's HTTP API (`GET {address}/api/v1/query`). Each
/// series it returns is one alert (told apart by its labels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertQuery {
    /// Base URL of Prometheus, e.g. `http://127.0.0.1:9090`.
    pub address: String,
    /// PromQL; `{{app}}` and `{{env}}` are substituted.
    pub query: String,
    /// How long the query may take (default 5s); a failed query leaves the alerts as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
}

/// How bad it is; a label (`severity`) for routing.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an alert does when it fires (each at most once per firing; nothing while silenced).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertActions {
    /// Send a notification when it fires and when it resolves (default true).
    #[serde(default = "yes")]
    pub notify: bool,
    /// Pause the environment's canary or blue/green rollout in progress (`ferry promote`
    /// or `ferry abort` continue it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// Roll back the environment's deployment in progress (or, with `rollback_within`, the
    /// one that succeeded less than that long ago). With a `version` label (Ferry's own
    /// metrics), only a deployment of that version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// With `rollback`: also roll back a deployment that succeeded less than this ago.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_within: Option<HumanDuration>,
    /// While it fires, deployments into the environment wait (state `blocked`, gate
    /// `alerts`); rollbacks still go through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub block_promotions: bool,
}

impl Default for AlertActions {
    fn default() -> Self {
        AlertActions {
            notify: true,
            pause: false,
            rollback: false,
            rollback_within: None,
            block_promotions: false,
        }
    }
}

fn yes() -> bool {
    true
}

impl AlertRule {
    /// Whether the rule watches `env`.
    pub fn watches(&self, env: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == env)
    }

    /// `for`, 0 when unset.
    pub fn for_duration(&self) -> Duration {
        self.for_.map(HumanDuration::get).unwrap_or_default()
    }

    /// `keep_firing_for`, 0 when unset.
    pub fn keep_firing(&self) -> Duration {
        self.keep_firing_for
            .map(HumanDuration::get)
            .unwrap_or_default()
    }

    /// `interval`, or its default.
    pub fn interval(&self) -> Duration {
        self.interval
            .map(HumanDuration::get)
            .unwrap_or(DEFAULT_INTERVAL)
    }

    /// The parsed condition (None for a Prometheus rule without one); validation ensures it
    /// parses.
    pub fn parsed_condition(&self) -> Result<Option<Condition>, String> {
        self.condition
            .as_deref()
            .map(|c| Condition::parse(c, self.prometheus.is_some()))
            .transpose()
    }
}

/// What a condition measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Share of the version's requests answered 5xx over the last minute (0..=1).
    ErrorRate,
    /// Requests per second over the last minute.
    RequestRate,
    /// Latency percentiles over the last minute, in milliseconds.
    LatencyP50,
    LatencyP90,
    LatencyP95,
    LatencyP99,
    /// 1 when every replica of the version is healthy, 0 when one is not.
    Up,
    /// Healthy replicas of the version.
    ReplicasReady,
    /// Restarts of the version's current replicas after unexpected exits.
    Restarts,
    /// CPU of the version's busiest replica over the latest sampling interval, as a share
    /// of its limit ([`crate::usage`]; 0.8 = 80 %).
    Cpu,
    /// Memory of the version's fullest replica, as a share of its limit.
    Memory,
    /// A Prometheus series' value.
    Value,
}

impl Metric {
    /// Every name a condition may use, with its metric.
    /// The first name of a metric is the one it is shown with; `cpu_usage` and
    /// `memory_usage` are other names (seed 003 writes them so).
    pub const NAMES: [(&'static str, Metric); 14] = [
        ("error_rate", Metric::ErrorRate),
        ("request_rate", Metric::RequestRate),
        ("latency_p50", Metric::LatencyP50),
        ("latency_p90", Metric::LatencyP90),
        ("latency_p95", Metric::LatencyP95),
        ("latency_p99", Metric::LatencyP99),
        ("up", Metric::Up),
        ("replicas_ready", Metric::ReplicasReady),
        ("restarts", Metric::Restarts),
        ("cpu", Metric::Cpu),
        ("cpu_usage", Metric::Cpu),
        ("memory", Metric::Memory),
        ("memory_usage", Metric::Memory),
        ("value", Metric::Value),
    ];

    pub fn name(self) -> &'static str {
        Metric::NAMES
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("value", |(n, _)| n)
    }

    /// Measured from the proxy's counters (the others from the replicas).
    pub fn from_proxy(self) -> bool {
        matches!(self, Metric::ErrorRate | Metric::RequestRate) || self.is_latency()
    }

    /// Sampled from the replicas' CPU and memory (not by every runtime).
    pub fn from_usage(self) -> bool {
        matches!(self, Metric::Cpu | Metric::Memory)
    }

    fn is_latency(self) -> bool {
        matches!(
            self,
            Metric::LatencyP50 | Metric::LatencyP90 | Metric::LatencyP95 | Metric::LatencyP99
        )
    }

    /// A fraction, written as a percentage.
    fn is_share(self) -> bool {
        matches!(self, Metric::ErrorRate | Metric::Cpu | Metric::Memory)
    }

    /// A value of this metric for humans: `12%`, `340ms`, `2.5/s`, `3`.
    pub fn format(self, value: f64) -> String {
        use crate::analysis::format::{fmt_ms, fmt_sig};
        match self {
            m if m.is_share() => format!("{}%", fmt_sig(value * 100.0)),
            Metric::RequestRate => format!("{}/s", fmt_sig(value)),
            m if m.is_latency() => fmt_ms(value),
            _ => fmt_sig(value),
        }
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    const ALL: [(&'static str, Op); 6] = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];

    pub fn as_str(self) -> &'static str {
        Op::ALL
            .iter()
            .find(|(_, o)| *o == self)
            .map_or(">", |(s, _)| s)
    }

    /// `value OP threshold`; false for NaN (as in PromQL).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => !value.is_nan() && value != threshold,
        }
    }
}

/// `METRIC OP VALUE`, parsed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub metric: Metric,
    pub op: Op,
    /// As written (`1%`, `500ms`, `0`).
    pub threshold: Threshold,
}

impl Condition {
    /// Parses `error_rate > 1%`. `prometheus`: the rule queries Prometheus (only `value`).
    pub fn parse(text: &str, prometheus: bool) -> Result<Condition, String> {
        if text.len() > MAX_TEXT {
            return Err(format!("condition is longer than {MAX_TEXT} bytes"));
        }
        let t = text.trim();
        let Some((at, op_text, op)) = Op::ALL
            .iter()
            .filter_map(|(s, op)| t.find(s).map(|i| (i, *s, *op)))
            .min_by_key(|(i, s, _)| (*i, std::cmp::Reverse(s.len())))
        else {
            return Err(format!(
                "condition {text:?} has no comparison; write it like `error_rate > 1%` (one of > >= < <= == !=)"
            ));
        };
        let name = t[..at].trim();
        let value = t[at + op_text.len()..].trim();
        let metric = match Metric::NAMES.iter().find(|(n, _)| *n == name) {
            Some((_, m)) => *m,
            None if name.is_empty() => {
                return Err(format!(
                    "condition {text:?} names no metric before `{op_text}`"
                ));
            }
            None => return Err(format!("unknown metric `{name}` in condition {text:?}")),
        };
        if prometheus != (metric == Metric::Value) {
            return Err(if prometheus {
                format!(
                    "a `prometheus` rule compares each series with `value`, not `{name}`: write e.g. `value > 80`"
                )
            } else {
                "`value` is the value of a `prometheus` query; this rule has none".to_string()
            });
        }
        if value.is_empty() {
            return Err(format!("condition {text:?} has nothing after `{op_text}`"));
        }
        let mut threshold: Threshold = value.parse()?;
        if !threshold.value().is_finite() {
            return Err(format!("threshold {value:?} is not a finite number"));
        }
        // CPU and memory: a bare number is a percentage (`cpu_usage > 80`, as seed 003 and
        // most dashboards write it); below 1 it would read as a fraction, so it is refused.
        if let (true, Threshold::Number(n)) = (metric.from_usage(), threshold) {
            if n > 0.0 && n < 1.0 {
                return Err(format!(
                    "`{name} {op_text} {value}` is ambiguous: a share of the limit is written in percent, e.g. `{name} {op_text} 80%` (or `{name} {op_text} 80`)"
                ));
            }
            threshold = Threshold::Percent(n / 100.0);
        }
        match (metric, threshold) {
            (m, Threshold::Duration(_)) if !m.is_latency() && m != Metric::Value => {
                return Err(format!(
                    "`{name}` is not a duration; compare it with a number"
                ));
            }
            (m, Threshold::Number(_) | Threshold::Percent(_)) if m.is_latency() => {
                return Err(format!(
                    "`{name}` is a latency: give the threshold with its unit, e.g. `{name} > 500ms`"
                ));
            }
            (Metric::ErrorRate, Threshold::Number(n)) if n >= 1.0 => {
                return Err(format!(
                    "`error_rate` is a fraction of requests (0 to 1), so `> {value}` could never hold; write `error_rate > {value}%` for {value} percent"
                ));
            }
            (m, Threshold::Percent(_)) if !m.is_share() && m != Metric::Value => {
                return Err(format!("`{name}` is not a share; compare it with a number"));
            }
            _ => {}
        }
        Ok(Condition {
            metric,
            op,
            threshold,
        })
    }

    /// Whether `value` (in the metric's unit: a fraction, ms, a count) meets the condition.
    pub fn holds(&self, value: f64) -> bool {
        self.op.holds(value, self.threshold.value())
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.metric.name(),
            self.op.as_str(),
            self.threshold
        )
    }
}

/// One mistake in the `alerts:` block, located relative to it (`[2].condition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertIssue {
    pub path: Vec<PathPart>,
    /// Point at the key rather than at its value.
    pub at_key: bool,
    pub message: String,
    pub hint: Option<String>,
}

fn is_alert_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Labels every alert of Ferry's own metrics carries; `labels:` may not set them.
pub const RESERVED_LABELS: [&str; 6] =
    ["alertname", "app", "env", "service", "version", "severity"];

/// Checks every rule; `environments` and `services` are the manifest's names.
pub fn validate(rules: &[AlertRule], environments: &[&str], services: &[&str]) -> Vec<AlertIssue> {
    let mut out = Vec::new();
    let mut push = |path: Vec<PathPart>, at_key: bool, message: String, hint: Option<&str>| {
        out.push(AlertIssue {
            path,
            at_key,
            message,
            hint: hint.map(str::to_string),
        })
    };
    if rules.len() > MAX_RULES {
        push(
            Vec::new(),
            true,
            format!(
                "{} alert rules, more than the limit of {MAX_RULES}",
                rules.len()
            ),
            Some("keep the rules that someone acts on"),
        );
        return out;
    }
    let field = |i: usize, rest: &[&str]| {
        let mut p = vec![PathPart::Index(i)];
        p.extend(rest.iter().map(|k| PathPart::Key((*k).to_string())));
        p
    };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        if !is_alert_name(&rule.name) {
            push(
                field(i, &["name"]),
                false,
                format!("invalid alert name {:?}", rule.name),
                Some(
                    "letters, digits, `_` and `-`, starting with a letter, at most 63, e.g. `high_error_rate`",
                ),
            );
        } else if let Some(first) = seen.insert(&rule.name, i) {
            push(
                field(i, &["name"]),
                false,
                format!(
                    "alert `{}` is already defined by alerts[{first}]",
                    rule.name
                ),
                Some("names are unique in the app"),
            );
        }
        for (j, env) in rule.environments.iter().enumerate() {
            if !environments.contains(&env.as_str()) {
                let mut path = field(i, &["environments"]);
                path.push(PathPart::Index(j));
                push(
                    path,
                    false,
                    format!("no environment `{env}` in this manifest"),
                    None,
                );
            }
        }
        if let Some(service) = &rule.service {
            if rule.prometheus.is_some() {
                push(
                    field(i, &["service"]),
                    true,
                    "`service` selects Ferry's own metrics; a `prometheus` query selects its series itself".to_string(),
                    Some("put the service in the query's label matchers"),
                );
            } else if !services.contains(&service.as_str()) {
                push(
                    field(i, &["service"]),
                    false,
                    format!("no service `{service}` in this manifest"),
                    None,
                );
            }
        }
        match (&rule.condition, &rule.prometheus) {
            (None, None) => push(
                field(i, &[]),
                true,
                format!(
                    "alert `{}` needs a `condition` (or a `prometheus` query)",
                    rule.name
                ),
                Some("e.g. `condition: error_rate > 1%`"),
            ),
            (Some(text), prometheus) => {
                if let Err(message) = Condition::parse(text, prometheus.is_some()) {
                    let hint = condition_hint(&message, prometheus.is_some());
                    push(field(i, &["condition"]), false, message, hint);
                }
            }
            (None, Some(_)) => {}
        }
        if let Some(query) = &rule.prometheus {
            let url = &query.address;
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > MAX_TEXT
            {
                push(
                    field(i, &["prometheus", "address"]),
                    false,
                    format!("invalid Prometheus address {url:?}"),
                    Some("a base URL, e.g. `http://127.0.0.1:9090`"),
                );
            }
            if query.query.trim().is_empty() || query.query.len() > MAX_TEXT {
                push(
                    field(i, &["prometheus", "query"]),
                    false,
                    format!("a query of 1 to {MAX_TEXT} bytes is needed"),
                    None,
                );
            }
            for placeholder in unknown_placeholders(&query.query, &QUERY_PLACEHOLDERS) {
                push(
                    field(i, &["prometheus", "query"]),
                    false,
                    format!("unknown placeholder `{placeholder}`"),
                    Some("a query may use {{app}} and {{env}}"),
                );
            }
            if let Some(timeout) = query.timeout
                && !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout.get())
            {
                push(
                    field(i, &["prometheus", "timeout"]),
                    false,
                    format!("timeout {timeout} is out of range"),
                    Some("between 100ms and 60s"),
                );
            }
        }
        for (key, value) in [
            ("for", rule.for_),
            ("keep_firing_for", rule.keep_firing_for),
            ("rollback_within", rule.actions.rollback_within),
        ] {
            if let Some(d) = value
                && d.get() > MAX_WAIT
            {
                let path = if key == "rollback_within" {
                    field(i, &["actions", key])
                } else {
                    field(i, &[key])
                };
                push(
                    path,
                    false,
                    format!("{key} {d} is longer than 7 days"),
                    None,
                );
            }
        }
        if let Some(interval) = rule.interval
            && !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&interval.get())
        {
            push(
                field(i, &["interval"]),
                false,
                format!("interval {interval} is out of range"),
                Some("between 1s and 1h"),
            );
        }
        if rule.actions.rollback_within.is_some() && !rule.actions.rollback {
            push(
                field(i, &["actions", "rollback_within"]),
                true,
                "`rollback_within` needs `rollback: true`".to_string(),
                None,
            );
        }
        for (key, map) in [("labels", &rule.labels), ("annotations", &rule.annotations)] {
            if map.len() > MAX_LABELS {
                push(
                    field(i, &[key]),
                    true,
                    format!("{} {key}, more than the limit of {MAX_LABELS}", map.len()),
                    None,
                );
                continue;
            }
            for (name, value) in map {
                let path = field(i, &[key, name]);
                if !is_label_name(name) {
                    push(
                        path,
                        true,
                        format!("invalid {} name {name:?}", &key[..key.len() - 1]),
                        Some("letters, digits and `_`, not starting with a digit"),
                    );
                } else if key == "labels" && RESERVED_LABELS.contains(&name.as_str()) {
                    push(
                        path,
                        true,
                        format!("label `{name}` is set by Ferry"),
                        Some("Ferry sets alertname, app, env, service, version and severity"),
                    );
                } else if value.len() > MAX_TEXT {
                    push(path, false, format!("longer than {MAX_TEXT} bytes"), None);
                } else if key == "annotations"
                    && let Err(message) = check_template(value)
                {
                    push(
                        path,
                        false,
                        message,
                        Some("write {{ $value }} or {{ $labels.NAME }}"),
                    );
                }
            }
        }
    }
    out
}

fn condition_hint(message: &str, prometheus: bool) -> Option<&'static str> {
    if message.starts_with("unknown metric") && !prometheus {
        Some(
            "Ferry's metrics: error_rate, request_rate, latency_p50, latency_p90, latency_p95, latency_p99, up, replicas_ready, restarts, cpu, memory; anything else (disk, connections, queries): a `prometheus` query",
        )
    } else {
        None
    }
}

/// `{{...}}` placeholders of `text` not in `known`.
fn unknown_placeholders(text: &str, known: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        let placeholder = &rest[start..start + len + 2];
        if !known.contains(&placeholder) {
            out.push(placeholder.to_string());
        }
        rest = &rest[start + len + 2..];
    }
    out
}

/// One `{{ … }}` of an annotation: `$value` or `$labels.NAME`.
enum Part<'a> {
    Text(&'a str),
    Value,
    Label(&'a str),
}

fn parse_template(text: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        parts.push(Part::Text(&rest[..start]));
        let Some(len) = rest[start + 2..].find("}}") else {
            return Err("`{{` without its closing `}}`".to_string());
        };
        let inner = rest[start + 2..start + 2 + len].trim();
        parts.push(match inner.strip_prefix("$labels.") {
            _ if inner == "$value" => Part::Value,
            Some(name) if is_label_name(name) => Part::Label(name),
            _ => return Err(format!("unknown placeholder `{{{{ {inner} }}}}`")),
        });
        rest = &rest[start + 2 + len + 2..];
    }
    parts.push(Part::Text(rest));
    Ok(parts)
}

fn check_template(text: &str) -> Result<(), String> {
    parse_template(text).map(|_| ())
}

/// An annotation with `{{ $value }}` and `{{ $labels.NAME }}` replaced (an unknown label is
/// empty, as in Prometheus).
pub fn render(text: &str, value: &str, labels: &BTreeMap<String, String>) -> String {
    match parse_template(text) {
        Ok(parts) => parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => *t,
                Part::Value => value,
                Part::Label(name) => labels.get(*name).map_or("", String::as_str),
            })
            .collect(),
        Err(_) => text.to_string(),
    }
}

/// A Prometheus query with `{{app}}` and `{{env}}` replaced.
pub fn query_for(query: &AlertQuery, app: &str, env: &str) -> String {
    query.query.replace("{{app}}", app).replace("{{env}}", env)
}
