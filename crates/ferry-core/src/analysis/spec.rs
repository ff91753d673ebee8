//! The `analysis:` block of a canary or blue/green strategy: the typed manifest shape.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::format::{fmt_exact, fmt_ms};
use crate::duration::HumanDuration;

/// Default time between two measurements.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Default number of failed measurements tolerated per metric (the next one fails the run).
pub const DEFAULT_FAILURE_LIMIT: u32 = 0;
/// Default number of consecutive inconclusive measurements tolerated per metric.
pub const DEFAULT_INCONCLUSIVE_LIMIT: u32 = 12;
/// Default number of consecutive passing measurements a metric needs.
pub const DEFAULT_CONSECUTIVE_SUCCESSES: u32 = 1;
/// Default `min_requests` of the `error_rate` and `latency_*` builtins.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;
/// Default `min_requests` of the `request_rate` builtin (it only needs some traffic).
pub const DEFAULT_REQUEST_RATE_MIN_REQUESTS: u64 = 1;
/// Default `compare.min_requests` (on each side).
pub const DEFAULT_COMPARE_MIN_REQUESTS: u64 = 100;
/// Default confidence of the `compare` judge's tests.
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
/// Default `compare.latency.max_increase` (relative): 20%.
pub const DEFAULT_LATENCY_MAX_INCREASE: f64 = 0.20;
/// Default `compare.latency.min_increase` (absolute floor of the tolerated increase): 5ms.
pub const DEFAULT_LATENCY_MIN_INCREASE: Duration = Duration::from_millis(5);
/// Default `compare.errors.max_increase` (absolute, in error-rate points): 0.5%.
pub const DEFAULT_ERRORS_MAX_INCREASE: f64 = 0.005;
/// Default timeout of `http` checks and `prometheus` queries.
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of `command` checks.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Automated analysis of a rollout: metrics measured every `interval` while a step runs,
/// each measurement judged Pass, Fail or Inconclusive, and the run judged from them.
///
/// The run **fails** as soon as one metric has failed more than `failure_limit` times; it
/// **passes** once every enforced metric (not `dry_run`) has passed
/// `consecutive_successes` times in a row; a metric that stays Inconclusive (too little
/// traffic, a check that cannot run) more than `inconclusive_limit` times in a row applies
/// `on_inconclusive`: pause for a human, or fail.
///
/// Speed against false alarms: with the defaults (`interval: 5s`, `failure_limit: 0`) a
/// bad canary is rolled back at the first measurement that has enough requests, about one
/// interval after it goes bad. Raising `failure_limit` to N tolerates N bad windows (blips)
/// at the cost of about N more intervals before a rollback; raising `min_requests` makes
/// each verdict more reliable but needs more traffic (or a longer interval) per window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Time between two measurements (default 5s). The first measurement happens one
    /// interval after the analysis starts, so it covers a full window of traffic.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// Failed measurements tolerated per metric over the whole run (default 0): one more
    /// fails the analysis (and rolls the release back).
    #[serde(default)]
    pub failure_limit: u32,
    /// Consecutive Inconclusive measurements tolerated per metric (default 12, i.e. one
    /// minute at the default interval) before `on_inconclusive` applies. While a metric is
    /// Inconclusive the step holds and waits.
    #[serde(default = "default_inconclusive_limit")]
    pub inconclusive_limit: u32,
    /// What happens when a metric stays Inconclusive beyond `inconclusive_limit`: `pause`
    /// (default; the rollout waits for `ferry promote` or `ferry abort`) or `fail`.
    #[serde(default)]
    pub on_inconclusive: InconclusivePolicy,
    /// Passing measurements in a row each enforced metric needs for the analysis to pass
    /// (default 1). Inconclusive measurements do not break the streak; a failed one does.
    #[serde(default = "default_consecutive_successes")]
    #[schemars(range(min = 1))]
    pub consecutive_successes: u32,
    /// The metrics measured at each interval. At least one.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub metrics: Vec<MetricSpec>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        AnalysisSpec {
            interval: default_interval(),
            failure_limit: DEFAULT_FAILURE_LIMIT,
            inconclusive_limit: DEFAULT_INCONCLUSIVE_LIMIT,
            on_inconclusive: InconclusivePolicy::default(),
            consecutive_successes: DEFAULT_CONSECUTIVE_SUCCESSES,
            metrics: Vec::new(),
        }
    }
}

/// What a metric that stays Inconclusive does to the analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InconclusivePolicy {
    /// Pause the rollout and ask a human (`ferry promote` or `ferry abort`).
    #[default]
    Pause,
    /// Fail the analysis (the release is rolled back).
    Fail,
}

/// One metric: a name, exactly one source (`builtin`, `prometheus`, `http`, `command` or
/// `compare`) and its conditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    /// Name shown in verdicts and on the timeline; unique within the analysis
    /// (lowercase letters, digits and `-`, starting with a letter).
    pub name: String,
    /// One of Ferry's own proxy metrics of the new version over the last window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<Builtin>,
    /// An instant PromQL query; its single value is compared with `max` / `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusQuery>,
    /// An HTTP request whose status, body or JSON field must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// A command whose exit code decides: 0 passes, anything else fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandCheck>,
    /// Statistical comparison of the new version against the stable one on the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<CompareSpec>,
    /// Highest passing value (inclusive). A number (`0.01`), a percentage (`1%` = 0.01)
    /// for `error_rate`, or a duration (`500ms`) for `latency_*`. `request_rate` is in
    /// requests per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Threshold>,
    /// Lowest passing value (inclusive); same forms as `max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<Threshold>,
    /// For `builtin` metrics: requests the window must hold before the metric is judged
    /// (default 20; 1 for `request_rate`). Below it the measurement is Inconclusive — except
    /// when the errors (or slow requests) already seen would break `max` even if every
    /// missing request were fine, which fails at once. A window with no requests is always
    /// Inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Record this metric's verdicts without acting on them (default false), to try a new
    /// metric before enforcing it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The source of a metric, borrowed from a [`MetricSpec`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Source<'a> {
    Builtin(Builtin),
    Prometheus(&'a PrometheusQuery),
    Http(&'a HttpCheck),
    Command(&'a CommandCheck),
    Compare(&'a CompareSpec),
}

impl MetricSpec {
    /// A metric with only a name; set one source and conditions on it.
    pub fn named(name: impl Into<String>) -> MetricSpec {
        MetricSpec {
            name: name.into(),
            builtin: None,
            prometheus: None,
            http: None,
            command: None,
            compare: None,
            max: None,
            min: None,
            min_requests: None,
            dry_run: false,
        }
    }

    /// The metric's source: the first one set (validation ensures there is exactly one).
    pub fn source(&self) -> Option<Source<'_>> {
        if let Some(b) = self.builtin {
            return Some(Source::Builtin(b));
        }
        if let Some(p) = &self.prometheus {
            return Some(Source::Prometheus(p));
        }
        if let Some(h) = &self.http {
            return Some(Source::Http(h));
        }
        if let Some(c) = &self.command {
            return Some(Source::Command(c));
        }
        self.compare.as_ref().map(Source::Compare)
    }

    /// Names of the sources set (`["builtin", "http"]`), in declaration order.
    pub fn source_names(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.builtin.is_some() {
            out.push("builtin");
        }
        if self.prometheus.is_some() {
            out.push("prometheus");
        }
        if self.http.is_some() {
            out.push("http");
        }
        if self.command.is_some() {
            out.push("command");
        }
        if self.compare.is_some() {
            out.push("compare");
        }
        out
    }

    /// Whether the controller must run an external check (prometheus, http, command) and
    /// pass its [`Observation`](super::Observation) to [`measure`](super::measure).
    pub fn is_external(&self) -> bool {
        matches!(
            self.source(),
            Some(Source::Prometheus(_) | Source::Http(_) | Source::Command(_))
        )
    }

    /// Whether [`measure`](super::measure) needs the stable version's window.
    pub fn needs_baseline(&self) -> bool {
        matches!(self.source(), Some(Source::Compare(_)))
    }

    /// `min_requests` with its default for this metric's source.
    pub fn effective_min_requests(&self) -> u64 {
        match self.source() {
            Some(Source::Builtin(Builtin::RequestRate)) => self
                .min_requests
                .unwrap_or(DEFAULT_REQUEST_RATE_MIN_REQUESTS)
                .max(1),
            Some(Source::Compare(c)) => c.min_requests,
            _ => self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS),
        }
    }
}

/// Ferry's own per-version proxy metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Share of requests answered with a 5xx status (0..=1).
    ErrorRate,
    /// Median latency to response headers.
    LatencyP50,
    /// 90th percentile latency.
    LatencyP90,
    /// 95th percentile latency.
    LatencyP95,
    /// 99th percentile latency.
    LatencyP99,
    /// Requests per second over the window.
    RequestRate,
}

impl Builtin {
    /// The quantile (0..=1) of a latency builtin.
    pub fn quantile(self) -> Option<f64> {
        match self {
            Builtin::LatencyP50 => Some(0.50),
            Builtin::LatencyP90 => Some(0.90),
            Builtin::LatencyP95 => Some(0.95),
            Builtin::LatencyP99 => Some(0.99),
            Builtin::ErrorRate | Builtin::RequestRate => None,
        }
    }

    pub fn is_latency(self) -> bool {
        self.quantile().is_some()
    }

    /// Human label: `error rate`, `p95 latency`, `request rate`.
    pub fn label(self) -> &'static str {
        match self {
            Builtin::ErrorRate => "error rate",
            Builtin::LatencyP50 => "p50 latency",
            Builtin::LatencyP90 => "p90 latency",
            Builtin::LatencyP95 => "p95 latency",
            Builtin::LatencyP99 => "p99 latency",
            Builtin::RequestRate => "request rate",
        }
    }
}

/// An instant query against Prometheus's HTTP API (`GET {address}/api/v1/query`). It must
/// return exactly one sample (a scalar, or a vector with one series — aggregate with
/// `sum(…)`); no series or `NaN` is Inconclusive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusQuery {
    /// Base URL of Prometheus, e.g. `http://127.0.0.1:9090`.
    pub address: String,
    /// PromQL; `{{version}}`, `{{env}}` and `{{app}}` are substituted.
    pub query: String,
    /// How long the query may take (default 5s); a timeout is Inconclusive.
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
}

/// An HTTP request that must answer as expected. Without `expect_status`, any 2xx passes.
/// A connection error or timeout is Inconclusive; an unexpected answer fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// `http://` or `https://` URL; `{{version}}`, `{{env}}` and `{{app}}` are substituted.
    pub url: String,
    /// HTTP method (default `GET`).
    #[serde(default = "default_method")]
    pub method: String,
    /// Request headers (values are templated).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body (templated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Status the answer must have (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: Option<u16>,
    /// Text the answer's body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// A field of the JSON answer: with `equals` it must equal that value; without, it
    /// must be a number, compared with the metric's `max` / `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_field: Option<JsonFieldCheck>,
    /// How long the request may take (default 5s); a timeout is Inconclusive.
    #[serde(default = "default_http_timeout")]
    pub timeout: HumanDuration,
}

/// A field of a JSON body, by dotted path (`status`, `checks.db.status`, `items.0.ok`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonFieldCheck {
    /// Dotted path; numeric segments index arrays.
    pub path: String,
    /// Value the field must equal (any JSON value). Leave it out to compare a numeric field
    /// with `max` / `min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
}

/// A command run once per measurement: exit code 0 passes, any other fails; a timeout or a
/// command that cannot start is Inconclusive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandCheck {
    /// Argv, not run through a shell; `{{version}}`, `{{env}}` and `{{app}}` are substituted.
    #[schemars(length(min = 1))]
    pub run: Vec<String>,
    /// How long the command may run (default 30s).
    #[serde(default = "default_command_timeout")]
    pub timeout: HumanDuration,
}

/// Canary-versus-stable statistical judge on the same window (Kayenta-style). Each listed
/// sub-metric is classified Pass, Fail or Inconclusive; with none listed, both are
/// compared with their defaults. The measurement's value is a score 0–100: the share of
/// passing sub-metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Compare latency distributions (Mann-Whitney U test plus a minimum shift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCompare>,
    /// Compare error rates (two-proportion z-test plus a minimum increase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorsCompare>,
    /// Requests each side (new and stable) must have in the window before judging
    /// (default 100); fewer is Inconclusive.
    #[serde(default = "default_compare_min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: u64,
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            latency: None,
            errors: None,
            min_requests: DEFAULT_COMPARE_MIN_REQUESTS,
        }
    }
}

impl CompareSpec {
    /// The sub-metrics judged: those listed, or both with defaults when none is.
    pub fn effective(&self) -> (Option<LatencyCompare>, Option<ErrorsCompare>) {
        if self.latency.is_none() && self.errors.is_none() {
            (
                Some(LatencyCompare::default()),
                Some(ErrorsCompare::default()),
            )
        } else {
            (self.latency.clone(), self.errors.clone())
        }
    }
}

/// Latency comparison. The tolerated increase is the larger of `max_increase` (relative to
/// the stable median) and `min_increase` (absolute): 20% of 55µs is 11µs, far below what a
/// user notices or a busy machine's noise, so the floor (default 5ms) keeps identical builds
/// from being rolled back under load. The new version fails only when its typical latency
/// (Hodges-Lehmann shift) grew by more than that tolerance **and** it is slower than stable
/// plus the tolerance with the given `confidence` (one-sided Mann-Whitney U test of the
/// canary's latencies minus the tolerance against the stable ones). Tiny but significant
/// differences on huge samples, and large but noisy ones on few samples, pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyCompare {
    /// Largest tolerated relative increase (default `20%`).
    #[serde(default = "default_latency_max_increase")]
    pub max_increase: Ratio,
    /// Smallest increase that can ever fail, whatever `max_increase` says (default `5ms`;
    /// `0ms` leaves only the relative bound).
    #[serde(default = "default_latency_min_increase")]
    pub min_increase: HumanDuration,
    /// Confidence of the test, strictly between 0.5 and 1 (default 0.95).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

impl Default for LatencyCompare {
    fn default() -> Self {
        LatencyCompare {
            max_increase: default_latency_max_increase(),
            min_increase: default_latency_min_increase(),
            confidence: DEFAULT_CONFIDENCE,
        }
    }
}

impl LatencyCompare {
    /// The tolerated increase in milliseconds over a stable median of `baseline_ms`.
    pub fn tolerance_ms(&self, baseline_ms: f64) -> f64 {
        (self.max_increase.get() * baseline_ms).max(self.min_increase.get().as_secs_f64() * 1e3)
    }
}

/// Error-rate comparison: the new version fails when its error rate is higher than the
/// stable one's with the given `confidence` (one-sided two-proportion z-test) **and** higher
/// by more than `max_increase` error-rate points (absolute: `0.5%` means 0.2% → 0.7% fails).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorsCompare {
    /// Largest tolerated absolute increase of the error rate (default `0.5%`).
    #[serde(default = "default_errors_max_increase")]
    pub max_increase: Ratio,
    /// Confidence of the test, strictly between 0.5 and 1 (default 0.95).
    #[serde(default = "default_confidence")]
    pub confidence: f64,
}

impl Default for ErrorsCompare {
    fn default() -> Self {
        ErrorsCompare {
            max_increase: default_errors_max_increase(),
            confidence: DEFAULT_CONFIDENCE,
        }
    }
}

/// A metric bound: a plain number (`0.01`, `5`), a percentage (`"1%"`, stored as the
/// fraction 0.01) or a duration (`500ms`, `1.5s`, `1s 500ms`, `800us`; compared in
/// milliseconds with latencies).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Number(f64),
    /// A fraction written as a percentage: `Percent(0.01)` reads and writes as `1%`.
    Percent(f64),
    Duration(HumanDuration),
}

impl Threshold {
    /// The bound in the unit measurements use: the number, the fraction, or milliseconds.
    pub fn value(self) -> f64 {
        match self {
            Threshold::Number(v) | Threshold::Percent(v) => v,
            Threshold::Duration(d) => d.0.as_secs_f64() * 1000.0,
        }
    }

    pub fn is_duration(self) -> bool {
        matches!(self, Threshold::Duration(_))
    }
}

impl fmt::Display for Threshold {
    /// For humans: `0.01`, `1%`, `500ms`, `1.5s`, `800µs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Number(v) => f.write_str(&fmt_exact(*v)),
            Threshold::Percent(v) => write!(f, "{}%", fmt_exact(v * 100.0)),
            Threshold::Duration(d) => f.write_str(&fmt_ms(d.0.as_secs_f64() * 1000.0)),
        }
    }
}

/// `1.5s`, `0.5ms`, `250 ms`: a decimal number and one unit (humantime only takes integers).
fn parse_decimal_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|&i| i > 0)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds_per_unit = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(number * seconds_per_unit).ok()
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            return p
                .trim()
                .parse::<f64>()
                .map(|v| Threshold::Percent(v / 100.0))
                .map_err(|_| format!("invalid percentage {text:?}; write it like 1% or 0.5%"));
        }
        if let Ok(v) = t.parse::<f64>() {
            return Ok(Threshold::Number(v));
        }
        t.parse::<HumanDuration>()
            .ok()
            .or_else(|| parse_decimal_duration(t).map(HumanDuration))
            .map(Threshold::Duration)
            .ok_or_else(|| {
                format!(
                    "invalid threshold {text:?}; write a number (0.01), a percentage (1%) \
                     or a duration (500ms)"
                )
            })
    }
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threshold::Number(v) => s.serialize_f64(*v),
            Threshold::Percent(_) => s.collect_str(self),
            // humantime's form (`1s 500ms`) always parses back
            Threshold::Duration(d) => s.collect_str(d),
        }
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Threshold;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number (0.01), a percentage (1%) or a duration (500ms)")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Threshold, E> {
                Ok(Threshold::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threshold, E> {
                Ok(Threshold::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threshold, E> {
                Ok(Threshold::Number(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Threshold {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Threshold".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number (0.01), a percentage (\"1%\") or a duration (500ms)",
            "oneOf": [
                { "type": "number" },
                { "type": "string", "pattern": "^\\s*-?[0-9.]+\\s*%\\s*$" },
                { "type": "string", "pattern": "^([0-9.]+ ?(ns|us|µs|ms|s|m|h|d) ?)+$" }
            ]
        })
    }
}

/// A fraction written as a percentage (`"20%"`, `"0.5%"`) or as a plain fraction (`0.2`).
/// Always written back as a percentage.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Ratio(pub f64);

impl Ratio {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", fmt_exact(self.0 * 100.0))
    }
}

impl FromStr for Ratio {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let t = text.trim();
        let parsed = match t.strip_suffix('%') {
            Some(p) => p.trim().parse::<f64>().map(|v| v / 100.0),
            None => t.parse::<f64>(),
        };
        parsed.map(Ratio).map_err(|_| {
            format!("invalid ratio {text:?}; write a percentage like 20% or a fraction like 0.2")
        })
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ratio;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a percentage (20%) or a fraction (0.2)")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ratio, E> {
                Ok(Ratio(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ratio, E> {
                Ok(Ratio(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ratio, E> {
                Ok(Ratio(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ratio, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Ratio {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ratio".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A percentage (\"20%\") or a fraction (0.2)",
            "oneOf": [
                { "type": "number", "minimum": 0 },
                { "type": "string", "pattern": "^\\s*[0-9.]+\\s*%\\s*$" }
            ]
        })
    }
}

fn default_interval() -> HumanDuration {
    HumanDuration(DEFAULT_INTERVAL)
}
fn default_inconclusive_limit() -> u32 {
    DEFAULT_INCONCLUSIVE_LIMIT
}
fn default_consecutive_successes() -> u32 {
    DEFAULT_CONSECUTIVE_SUCCESSES
}
fn default_http_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_HTTP_TIMEOUT)
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(DEFAULT_COMMAND_TIMEOUT)
}
fn default_method() -> String {
    "GET".to_string()
}
fn default_compare_min_requests() -> u64 {
    DEFAULT_COMPARE_MIN_REQUESTS
}
fn default_confidence() -> f64 {
    DEFAULT_CONFIDENCE
}
fn default_latency_max_increase() -> Ratio {
    Ratio(DEFAULT_LATENCY_MAX_INCREASE)
}
fn default_latency_min_increase() -> HumanDuration {
    HumanDuration(DEFAULT_LATENCY_MIN_INCREASE)
}
fn default_errors_max_increase() -> Ratio {
    Ratio(DEFAULT_ERRORS_MAX_INCREASE)
}
