//! The controller's side of canary and blue/green: the persisted phase, the plan of an
//! environment's strategy, and the I/O that feeds analysis (proxy stats windows, HTTP and
//! command checks, Prometheus queries). Decisions stay in `ferry_core::progressive`.

use crate::lock;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

use ferry_core::analysis::{
    AnalysisRun, AnalysisSpec, LatencyBins, Measurement, MetricSpec, Observation, Source,
    TemplateVars, WindowStats, measure_services, observe_command, observe_http, observe_prometheus,
};
use ferry_core::manifest::Strategy;
use ferry_core::progressive::{self, Command, Plan, Progress};
use ferry_proxy::stats::{StatsSnapshot, decode_histogram};
use serde::{Deserialize, Serialize};

/// The most of a command analysis' stdout (and of its stderr) judged (the tail).
const COMMAND_OUTPUT_BYTES: usize = 64 * 1024;

/// What a progressive deployment keeps in its `phase` column.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Phase {
    #[serde(default)]
    pub progress: Option<Progress>,
    /// A command from a person, waiting for the loop to apply it.
    #[serde(default)]
    pub command: Option<PendingCommand>,
    /// Set when `ferry abort` asked for the way back: the end state is `aborted`.
    #[serde(default)]
    pub aborted_by: Option<String>,
    /// bake: when the watch after convergence ends (Unix ms), once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_until_ms: Option<i64>,
}

/// `2026-12-06T04:12:30Z`: a moment on the timeline, to the second, UTC.
pub fn clock(unix_ms: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Phase {
    /// The phase deployment `id` persisted (`{}` when new). Unreadable is an error, never
    /// a default: a canary must not silently start again at stage 0.
    pub fn read(id: i64, value: &serde_json::Value) -> Result<Phase, crate::error::ServerError> {
        if value.is_null() {
            return Ok(Phase::default());
        }
        Phase::deserialize(value).map_err(|e| {
            crate::error::ServerError::Corrupt(format!(
                "deployment #{id}: its stored phase is unreadable ({e}); it is left as it is"
            ))
        })
    }

    /// [`Phase::read`] of a deployment record.
    pub fn of(
        deployment: &ferry_store::DeploymentRecord,
    ) -> Result<Phase, crate::error::ServerError> {
        Phase::read(deployment.id, &deployment.phase)
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommandName {
    Promote,
    PromoteFull,
    Pause,
    Resume,
}

impl CommandName {
    pub fn command(self) -> Command {
        match self {
            CommandName::Promote => Command::Promote,
            CommandName::PromoteFull => Command::PromoteFull,
            CommandName::Pause => Command::Pause,
            CommandName::Resume => Command::Resume,
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            CommandName::Promote => "promote",
            CommandName::PromoteFull => "promote --full",
            CommandName::Pause => "pause",
            CommandName::Resume => "resume",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingCommand {
    pub name: CommandName,
    pub by: String,
}

/// The plan of a progressive strategy for `replicas` (the environment's largest service).
pub fn plan_for(strategy: &Strategy, replicas: u32) -> Option<Plan> {
    match strategy {
        Strategy::Canary(canary) => Some(progressive::canary_plan(canary, replicas)),
        Strategy::BlueGreen(blue_green) => Some(progressive::blue_green_plan(blue_green, replicas)),
        _ => None,
    }
}

/// Who is measured: the new version against the serving one, on one listener.
pub struct Subject<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub listener: &'a str,
    pub canary: &'a str,
    pub stable: &'a str,
    pub base_dir: Option<PathBuf>,
    /// The user command analyses run as, or why it is not available.
    pub run_as: Result<Option<ferry_runtime::RunAs>, String>,
    /// Runs command analyses (on the server's host: as processes).
    pub runtime: &'a crate::runtimes::Runtimes,
}

/// Each service's window (or cumulative counters) of one version.
type PerService = BTreeMap<String, WindowStats>;

/// Cumulative counters of both sides when an analysis window opened.
#[derive(Debug, Clone)]
struct WindowStart {
    canary: PerService,
    stable: PerService,
    at_ms: i64,
    /// The data plane's `started_at_ms` then: its counters restart from zero when it does.
    counters_since_ms: i64,
}

impl WindowStart {
    fn at(stats: &StatsSnapshot, canary: PerService, stable: PerService) -> Self {
        WindowStart {
            canary,
            stable,
            at_ms: stats.taken_at_ms,
            counters_since_ms: stats.started_at_ms,
        }
    }

    /// Whether these counters can be subtracted from `stats`'s: the data plane did not
    /// restart in between (its counters would have gone back to zero, and `now − then`
    /// would mix two lives: fewer requests than errors, or nothing at all).
    fn same_counters(&self, stats: &StatsSnapshot) -> bool {
        self.counters_since_ms == stats.started_at_ms
    }
}

/// Opens and closes analysis windows over the proxy's cumulative stats.
#[derive(Default)]
pub struct Meter {
    windows: Mutex<HashMap<(i64, u64), WindowStart>>,
    http: reqwest::Client,
}

impl Meter {
    /// Makes sure a window is open for this analysis (the first one opens when the run
    /// starts, within one controller pass). A window opened long before the run's latest
    /// round (or start) is opened again: after a pause for a person, `ferry resume` starts
    /// the next round's clock, and the first measurement must cover one interval, not the
    /// whole wait.
    pub fn open(
        &self,
        key: (i64, u64),
        run: &AnalysisRun,
        stats: &StatsSnapshot,
        subject: &Subject<'_>,
    ) {
        let since = run.last_measured_at_ms.unwrap_or(run.started_at_ms);
        let mut windows = lock(&self.windows);
        let current = windows.get(&key).is_some_and(|w| {
            !stale_window(w.at_ms, since, stats.taken_at_ms) && w.same_counters(stats)
        });
        if !current {
            windows.insert(
                key,
                WindowStart::at(
                    stats,
                    cumulative(stats, subject.listener, subject.canary),
                    cumulative(stats, subject.listener, subject.stable),
                ),
            );
        }
    }

    /// Whether a window is open for this analysis.
    pub fn is_open(&self, key: (i64, u64)) -> bool {
        lock(&self.windows).contains_key(&key)
    }

    pub fn forget(&self, deployment_id: i64) {
        lock(&self.windows).retain(|(id, _), _| *id != deployment_id);
    }

    /// Measures every metric of `spec` over the window since the last call, then opens the
    /// next window. `None` while the open window is younger than most of an interval (it was
    /// just opened, e.g. by a restarted server): judging a near-empty window would only
    /// produce a spurious Inconclusive. `None` too when the data plane restarted since the
    /// window opened: the window opens again from its new counters.
    pub async fn measure(
        &self,
        key: (i64, u64),
        spec: &AnalysisSpec,
        stats: &StatsSnapshot,
        subject: &Subject<'_>,
    ) -> Option<Vec<Measurement>> {
        let canary_now = cumulative(stats, subject.listener, subject.canary);
        let stable_now = cumulative(stats, subject.listener, subject.stable);
        let interval_ms = i64::try_from(spec.interval.get().as_millis()).unwrap_or(i64::MAX);
        let start = {
            let mut windows = lock(&self.windows);
            let next = WindowStart::at(stats, canary_now.clone(), stable_now.clone());
            match windows.get(&key) {
                Some(w) if !w.same_counters(stats) => {
                    windows.insert(key, next);
                    return None;
                }
                Some(w) if stats.taken_at_ms - w.at_ms >= interval_ms * 4 / 5 => {}
                Some(_) => return None,
                None => {
                    windows.insert(key, next);
                    return None;
                }
            }
            windows.insert(key, next)?
        };
        let duration_ms = (stats.taken_at_ms - start.at_ms).max(0);
        let canary = window(&start.canary, &canary_now, duration_ms);
        let stable = window(&start.stable, &stable_now, duration_ms);
        let vars = TemplateVars {
            app: subject.app,
            env: subject.env,
            version: subject.canary,
        };
        let mut measurements = Vec::with_capacity(spec.metrics.len());
        for metric in &spec.metrics {
            let metric = metric.with_vars(&vars);
            let external = if metric.is_external() {
                Some(self.observe(&metric, subject).await)
            } else {
                None
            };
            measurements.push(measure_services(
                &metric,
                &canary,
                Some(&stable),
                external.as_ref(),
            ));
        }
        Some(measurements)
    }

    async fn observe(&self, metric: &MetricSpec, subject: &Subject<'_>) -> Observation {
        match metric.source() {
            Some(Source::Http(check)) => {
                let method = reqwest::Method::from_bytes(check.method.as_bytes())
                    .unwrap_or(reqwest::Method::GET);
                let mut request = self
                    .http
                    .request(method, &check.url)
                    .timeout(check.timeout.get());
                for (name, value) in &check.headers {
                    request = request.header(name, value);
                }
                if let Some(body) = &check.body {
                    request = request.body(body.clone());
                }
                match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        let body = response.text().await.unwrap_or_default();
                        observe_http(check, status, &body)
                    }
                    Err(e) => Observation::Error(format!("GET {} failed: {e}", check.url)),
                }
            }
            Some(Source::Command(check)) => {
                let Some(program) = check.run.first() else {
                    return Observation::Error("empty command".into());
                };
                let run_as = match &subject.run_as {
                    Ok(run_as) => run_as.clone(),
                    Err(e) => return Observation::Error(format!("cannot run {program}: {e}")),
                };
                // Its own process group, so a timeout stops what it started too.
                let task = ferry_runtime::TaskSpec {
                    name: format!("analysis-{program}"),
                    app: subject.app.to_string(),
                    env: subject.env.to_string(),
                    argv: check.run.clone(),
                    env_vars: BTreeMap::from([
                        ("FERRY_APP".to_string(), subject.app.to_string()),
                        ("FERRY_ENV".to_string(), subject.env.to_string()),
                        ("VERSION".to_string(), subject.canary.to_string()),
                    ]),
                    cwd: subject.base_dir.clone(),
                    run_as,
                    timeout: check.timeout.get(),
                    output: ferry_runtime::TaskOutput::Capture {
                        max_bytes: COMMAND_OUTPUT_BYTES,
                    },
                    container: None,
                };
                match subject.runtime.run_task(task, None).await {
                    Ok(outcome) if outcome.end == ferry_runtime::TaskEnd::TimedOut => {
                        Observation::Error(format!(
                            "{program} did not finish within {}",
                            check.timeout
                        ))
                    }
                    Ok(outcome) => {
                        let text = outcome.stdout + &outcome.stderr;
                        observe_command(outcome.end.code(), &text)
                    }
                    Err(e) => Observation::Error(format!("cannot run {program}: {e}")),
                }
            }
            Some(Source::Prometheus(query)) => {
                let url = format!("{}/api/v1/query", query.address.trim_end_matches('/'));
                let response = self
                    .http
                    .get(&url)
                    .query(&[("query", query.query.as_str())])
                    .timeout(query.timeout.get())
                    .send()
                    .await;
                match response {
                    Ok(response) => observe_prometheus(&response.text().await.unwrap_or_default()),
                    Err(e) => Observation::Error(format!(
                        "Prometheus at {} unreachable: {e}",
                        query.address
                    )),
                }
            }
            _ => Observation::Error("not an external metric".into()),
        }
    }
}

/// Whether a window opened at `opened_ms` started well before the round that is now
/// counting (`since_ms`, the run's latest round or resume): more than a second earlier, as
/// after a wait for a person. Rounds recorded at the pass that opened the window are never
/// stale (the controller's clock and the proxy's snapshot time differ by a pass at most).
fn stale_window(opened_ms: i64, since_ms: i64, now_ms: i64) -> bool {
    since_ms.min(now_ms) - opened_ms > 1_000
}

/// Each service's window between two cumulative snapshots, `duration_ms` long.
fn window(earlier: &PerService, later: &PerService, duration_ms: i64) -> PerService {
    later
        .iter()
        .map(|(service, now)| {
            let before = earlier.get(service).cloned().unwrap_or_default();
            let mut w = WindowStats::between(&before, now);
            w.duration_ms = duration_ms;
            (service.clone(), w)
        })
        .collect()
}

/// Everything the proxy has counted for `version` on `listener` and on its blue/green
/// preview listener (`LISTENER/preview`, which serves the new version before the switch),
/// per service.
fn cumulative(stats: &StatsSnapshot, listener: &str, version: &str) -> PerService {
    let ours = |id: &str| {
        id.strip_prefix(listener)
            .is_some_and(|rest| rest.is_empty() || rest == "/preview")
    };
    let mut per_service = PerService::new();
    for v in stats
        .versions
        .iter()
        .filter(|v| ours(&v.listener) && v.version == version)
    {
        let mut bins = LatencyBins::default();
        if let Ok(histogram) = decode_histogram(&v.histogram_us) {
            for value in histogram.iter_recorded() {
                bins.add(
                    histogram.highest_equivalent(value.value_iterated_to()),
                    value.count_at_value(),
                );
            }
        }
        let counted = WindowStats {
            requests: v.requests,
            errors_5xx: v.errors_5xx,
            duration_ms: 0,
            latency_us: bins,
        };
        let total = per_service.entry(v.service.clone()).or_default();
        *total = total.merge(&counted);
    }
    per_service
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::stats::{LatencyPercentiles, VersionStats};

    #[test]
    fn an_unreadable_phase_is_an_error_not_stage_zero() {
        // New deployments have `{}`; a saved phase reads back as saved.
        assert!(
            Phase::read(1, &serde_json::json!({}))
                .unwrap()
                .progress
                .is_none()
        );
        let phase = Phase {
            progress: Some(progressive::start(5)),
            bake_until_ms: Some(9),
            ..Default::default()
        };
        let back = Phase::read(1, &phase.to_value()).unwrap();
        assert_eq!(back.progress, phase.progress);
        assert_eq!(back.bake_until_ms, Some(9));
        // A phase the server cannot read is an error naming the deployment, never a
        // default (which would restart a canary at stage 0 with 0 % traffic).
        for bad in [
            serde_json::json!({ "progress": "stage 3" }),
            serde_json::json!([1, 2]),
            serde_json::json!({ "bake_until_ms": "soon" }),
        ] {
            let err = Phase::read(42, &bad).expect_err("unreadable");
            assert!(err.to_string().contains("deployment #42"), "{err}");
        }
    }

    fn counted(listener: &str, version: &str, requests: u64, errors_5xx: u64) -> VersionStats {
        VersionStats {
            listener: listener.into(),
            service: "web".into(),
            version: version.into(),
            requests,
            errors_5xx,
            client_errors: 0,
            in_flight: 0,
            latency_ms: LatencyPercentiles::default(),
            histogram_us: String::new(),
            endpoints: Vec::new(),
        }
    }

    #[test]
    fn a_window_opened_before_a_wait_for_a_person_is_opened_again_after_resume() {
        // Last round at 10s, paused for a person, resumed at 600s.
        assert!(stale_window(10_000, 600_000, 600_200));
        // Normal rounds: the window reopened by the round itself is current.
        assert!(!stale_window(10_050, 10_000, 12_000));
        assert!(!stale_window(15_000, 15_000, 15_000));
        // A run that started just now.
        assert!(!stale_window(0, 500, 700));
    }

    #[test]
    fn a_version_counts_on_its_listener_and_its_preview_listener_only() {
        let stats = StatsSnapshot {
            started_at_ms: 0,
            taken_at_ms: 1,
            generation: 1,
            versions: vec![
                counted("shop/production", "2.0.0", 10, 1),
                counted("shop/production/preview", "2.0.0", 30, 3),
                counted("shop/production", "1.0.0", 500, 0),
                counted("shop/production-eu", "2.0.0", 1000, 1000),
                counted("shop/staging/preview", "2.0.0", 1000, 1000),
            ],
            ..Default::default()
        };
        let green = &cumulative(&stats, "shop/production", "2.0.0")["web"];
        assert_eq!((green.requests, green.errors_5xx), (40, 4));
        let blue = &cumulative(&stats, "shop/production", "1.0.0")["web"];
        assert_eq!((blue.requests, blue.errors_5xx), (500, 0));
    }

    /// True while `pid` runs (a zombie waiting for init to reap it counts as gone).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().map(str::to_string))
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    }

    /// A process runtime whose logs go under `dir`.
    fn runtimes(dir: &std::path::Path) -> crate::runtimes::Runtimes {
        crate::runtimes::Runtimes::new(
            ferry_runtime::ProcessRuntime::new(dir.join("logs"), 1 << 20),
            "test".into(),
        )
    }

    /// shop/production's canary 2.0.0 against 1.0.0.
    fn subject(runtime: &crate::runtimes::Runtimes, base_dir: Option<PathBuf>) -> Subject<'_> {
        Subject {
            app: "shop",
            env: "production",
            listener: "shop/production",
            canary: "2.0.0",
            stable: "1.0.0",
            base_dir,
            run_as: Ok(None),
            runtime,
        }
    }

    #[tokio::test]
    async fn a_window_across_a_restart_of_the_data_plane_is_opened_again_not_judged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = runtimes(dir.path());
        let subject = subject(&runtime, None);
        let mut errors = MetricSpec::named("errors");
        errors.builtin = Some(ferry_core::analysis::Builtin::ErrorRate);
        errors.max = Some(ferry_core::analysis::Threshold::Number(0.05));
        let spec = AnalysisSpec {
            metrics: vec![errors],
            ..AnalysisSpec::default()
        };
        let interval = i64::try_from(spec.interval.get().as_millis()).expect("ms");
        let snapshot = |started_at_ms, taken_at_ms, requests, errors_5xx| StatsSnapshot {
            started_at_ms,
            taken_at_ms,
            generation: 1,
            versions: vec![
                counted("shop/production", "2.0.0", requests, errors_5xx),
                counted("shop/production", "1.0.0", 1000, 0),
            ],
            ..Default::default()
        };
        let meter = Meter::default();
        let key = (7, 0);
        // A window opens over a proxy that has counted 1,000 canary requests, 10 failed.
        assert!(
            meter
                .measure(key, &spec, &snapshot(1, 0, 1000, 10), &subject)
                .await
                .is_none()
        );
        // The proxy restarts: its counters start again (200 requests, 50 failed). Subtracted
        // from the old ones that would be 0 requests and 40 errors: the window opens again.
        let restarted = snapshot(5_000, interval, 200, 50);
        assert!(
            meter
                .measure(key, &spec, &restarted, &subject)
                .await
                .is_none()
        );
        // One interval later the window covers the new counters only: 100 requests, 5 failed.
        let later = snapshot(5_000, 2 * interval, 300, 55);
        let measured = meter
            .measure(key, &spec, &later, &subject)
            .await
            .expect("a window of one interval over the same counters is measured");
        assert_eq!(measured[0].sample_size, 100, "{measured:?}");
        assert_eq!(measured[0].value, Some(0.05), "{measured:?}");
    }

    #[tokio::test]
    async fn a_timed_out_command_analysis_leaves_no_process_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metric: MetricSpec = serde_json::from_value(serde_json::json!({
            "name": "probe",
            "command": {
                "run": ["sh", "-c", "sleep 300 & echo $! > first.pid; sleep 300 & echo $! > second.pid; wait"],
                "timeout": "500ms"
            }
        }))
        .expect("metric");
        let runtime = runtimes(dir.path());
        let subject = subject(&runtime, Some(dir.path().to_path_buf()));
        let observation = Meter::default().observe(&metric, &subject).await;
        match &observation {
            Observation::Error(why) => assert!(why.contains("did not finish"), "{why}"),
            other => panic!("a timed-out command is inconclusive, got {other:?}"),
        }
        for file in ["first.pid", "second.pid"] {
            let pid: u32 = std::fs::read_to_string(dir.path().join(file))
                .expect("the command wrote its child's pid")
                .trim()
                .parse()
                .expect("a pid");
            assert!(
                !running(pid),
                "the command's child {pid} outlived the analysis timeout"
            );
        }
    }
}
