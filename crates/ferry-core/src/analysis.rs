//! Analysis of progressive delivery: the judges that decide whether a canary (or a green
//! version) is healthy, as pure functions.
//!
//! The controller owns the I/O and the clock. At each interval ([`due`]) it
//! 1. diffs two cumulative proxy snapshots per version into [`WindowStats`] (new version,
//!    and the stable version for `compare`; [`WindowStats::between`], [`WindowStats::merge`]
//!    to cover all services of a release);
//! 2. runs the external checks itself (templated with [`MetricSpec::with_vars`]) and turns
//!    what came back into an [`Observation`] ([`observe_prometheus`], [`observe_http`],
//!    [`observe_command`], or [`Observation::Error`] for timeouts and connection errors);
//! 3. calls [`measure`] per metric, then [`record`] with the round's measurements, persists
//!    the returned [`AnalysisRun`] and acts on the [`RunVerdict`].
//!
//! Too little traffic is never a silent pass nor a spurious failure: a window without
//! requests is Inconclusive, so is one with fewer than `min_requests` (unless the errors or
//! slow requests already seen make a failure certain); a metric that stays Inconclusive
//! beyond `inconclusive_limit` applies `on_inconclusive` (pause for a human, or fail) with a
//! plain reason.

mod checks;
mod compare;
pub(crate) mod format;
mod judge;
mod run;
mod spec;
mod stats;
mod validate;

pub use checks::{
    TEMPLATE_PLACEHOLDERS, TemplateVars, json_path, observe_command, observe_http,
    observe_prometheus, placeholders, substitute,
};
pub use compare::{
    MannWhitney, TwoProportion, hodges_lehmann_shift, mann_whitney_u, normal_cdf, normal_sf,
    two_proportion_excess, two_proportion_test,
};
pub use judge::{CompareDetail, Measurement, Unit, Verdict, measure, measure_services};
pub use run::{AnalysisRun, MetricRecord, RunVerdict, due, record};
pub use spec::{
    AnalysisSpec, Builtin, CommandCheck, CompareSpec, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_COMPARE_MIN_REQUESTS, DEFAULT_CONFIDENCE, DEFAULT_CONSECUTIVE_SUCCESSES,
    DEFAULT_ERRORS_MAX_INCREASE, DEFAULT_FAILURE_LIMIT, DEFAULT_HTTP_TIMEOUT,
    DEFAULT_INCONCLUSIVE_LIMIT, DEFAULT_INTERVAL, DEFAULT_LATENCY_MAX_INCREASE,
    DEFAULT_LATENCY_MIN_INCREASE, DEFAULT_MIN_REQUESTS, DEFAULT_REQUEST_RATE_MIN_REQUESTS,
    ErrorsCompare, HttpCheck, InconclusivePolicy, JsonFieldCheck, LatencyCompare, MetricSpec,
    PrometheusQuery, Ratio, Source, Threshold,
};
pub use stats::{LatencyBins, Observation, WindowStats};
pub use validate::{AnalysisIssue, PathPart};
