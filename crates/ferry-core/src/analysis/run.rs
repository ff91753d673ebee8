//! An analysis run: the per-metric counters the controller persists, and the pure step
//! from one round of measurements to the run's verdict.

use serde::{Deserialize, Serialize};

use super::judge::{Measurement, Verdict};
use super::spec::{AnalysisSpec, InconclusivePolicy};

/// Where an analysis run stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunVerdict {
    /// Measuring; no decision yet.
    #[default]
    Running,
    /// Every enforced metric passed `consecutive_successes` times in a row. Not final: a
    /// later failure can still fail the run if the controller keeps measuring.
    Passed,
    /// A metric failed more than `failure_limit` times (or stayed Inconclusive beyond
    /// `inconclusive_limit` with `on_inconclusive: fail`). Final.
    Failed { metric: String, reason: String },
    /// A metric stayed Inconclusive beyond `inconclusive_limit` with
    /// `on_inconclusive: pause`: a human must promote or abort. Lasts until
    /// [`AnalysisRun::resume`].
    NeedsHuman { reason: String },
}

impl RunVerdict {
    /// Failed or NeedsHuman: no more measurements are due.
    pub fn is_stopped(&self) -> bool {
        matches!(
            self,
            RunVerdict::Failed { .. } | RunVerdict::NeedsHuman { .. }
        )
    }
}

/// Counters of one metric over a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MetricRecord {
    pub name: String,
    /// The metric was `dry_run` when last measured.
    pub dry_run: bool,
    pub passes: u32,
    pub failures: u32,
    pub inconclusives: u32,
    /// Passes since the last failure (Inconclusive measurements neither count nor reset).
    pub consecutive_successes: u32,
    /// Inconclusive measurements since the last Pass or Fail.
    pub consecutive_inconclusive: u32,
    /// The latest measurement.
    pub last: Option<Measurement>,
    /// Reason of the latest failed measurement.
    pub last_failure: Option<String>,
}

/// The state of one analysis (of one step, or of a whole rollout), persisted as JSON by
/// the controller between rounds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnalysisRun {
    /// Unix ms when the analysis started; the first round is due one interval later.
    pub started_at_ms: i64,
    /// Unix ms of the latest round.
    pub last_measured_at_ms: Option<i64>,
    /// Rounds recorded.
    pub rounds: u64,
    /// One record per metric, in the order first measured.
    pub metrics: Vec<MetricRecord>,
    pub verdict: RunVerdict,
}

impl AnalysisRun {
    pub fn new(now_ms: i64) -> AnalysisRun {
        AnalysisRun {
            started_at_ms: now_ms,
            ..AnalysisRun::default()
        }
    }

    pub fn metric(&self, name: &str) -> Option<&MetricRecord> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// After a human chose to go on from NeedsHuman: back to Running, every metric's
    /// inconclusive streak forgotten (so each gets `inconclusive_limit` more rounds), and
    /// the next round due one interval from `now_ms`. Failed stays Failed.
    pub fn resume(&self, now_ms: i64) -> AnalysisRun {
        let mut run = self.clone();
        if matches!(run.verdict, RunVerdict::NeedsHuman { .. }) {
            run.verdict = RunVerdict::Running;
            for m in &mut run.metrics {
                m.consecutive_inconclusive = 0;
            }
            run.last_measured_at_ms = Some(now_ms);
        }
        run
    }
}

/// Whether a round of measurements is due: `interval` has elapsed since the latest round
/// (or since the start, before the first), and the run is not stopped (Failed or
/// NeedsHuman).
pub fn due(run: &AnalysisRun, spec: &AnalysisSpec, now_ms: i64) -> bool {
    if run.verdict.is_stopped() {
        return false;
    }
    let since = run.last_measured_at_ms.unwrap_or(run.started_at_ms);
    let interval_ms = i64::try_from(spec.interval.0.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(since) >= interval_ms
}

/// Records one round of measurements and judges the run.
///
/// Per metric: Pass adds to `passes` and the success streak and ends the inconclusive
/// streak; Fail adds to `failures`, ends both streaks; Inconclusive adds to the inconclusive
/// streak only. Then, looking at enforced metrics (not `dry_run` in `spec`) in `spec` order:
/// 1. `failures > failure_limit` → Failed, naming the metric and its failing measurement
///    (Failed is final: later rounds keep it);
/// 2. `consecutive_inconclusive > inconclusive_limit` → `on_inconclusive`: NeedsHuman
///    (pause) or Failed (fail);
/// 3. every enforced metric has `consecutive_successes` ≥ the spec's → Passed;
/// 4. otherwise Running.
///
/// `dry_run` metrics are counted the same way but never change the verdict. Measurements
/// of metrics that are not in `spec` are recorded and ignored.
pub fn record(
    run: &AnalysisRun,
    spec: &AnalysisSpec,
    measurements: &[Measurement],
    now_ms: i64,
) -> (AnalysisRun, RunVerdict) {
    let mut next = run.clone();
    next.rounds = next.rounds.saturating_add(1);
    next.last_measured_at_ms = Some(now_ms);
    for m in measurements {
        let dry_run = spec
            .metrics
            .iter()
            .find(|s| s.name == m.metric)
            .map_or(m.dry_run, |s| s.dry_run);
        let idx = match next.metrics.iter().position(|r| r.name == m.metric) {
            Some(i) => i,
            None => {
                next.metrics.push(MetricRecord {
                    name: m.metric.clone(),
                    ..MetricRecord::default()
                });
                next.metrics.len() - 1
            }
        };
        let r = &mut next.metrics[idx];
        r.dry_run = dry_run;
        match m.verdict {
            Verdict::Pass => {
                r.passes = r.passes.saturating_add(1);
                r.consecutive_successes = r.consecutive_successes.saturating_add(1);
                r.consecutive_inconclusive = 0;
            }
            Verdict::Fail => {
                r.failures = r.failures.saturating_add(1);
                r.consecutive_successes = 0;
                r.consecutive_inconclusive = 0;
                r.last_failure = Some(m.reason.clone());
            }
            Verdict::Inconclusive => {
                r.inconclusives = r.inconclusives.saturating_add(1);
                r.consecutive_inconclusive = r.consecutive_inconclusive.saturating_add(1);
            }
        }
        r.last = Some(m.clone());
    }
    let verdict = judge(&next, spec);
    next.verdict = verdict.clone();
    (next, verdict)
}

fn judge(run: &AnalysisRun, spec: &AnalysisSpec) -> RunVerdict {
    if let RunVerdict::Failed { .. } = run.verdict {
        return run.verdict.clone();
    }
    let enforced: Vec<(&str, Option<&MetricRecord>)> = spec
        .metrics
        .iter()
        .filter(|s| !s.dry_run)
        .map(|s| (s.name.as_str(), run.metric(&s.name)))
        .collect();
    for &(name, rec) in &enforced {
        if let Some(r) = rec
            && r.failures > spec.failure_limit
        {
            let why = r.last_failure.as_deref().unwrap_or("failed");
            return RunVerdict::Failed {
                metric: name.to_string(),
                reason: format!(
                    "{name}: {why} — {} failed measurement{} (failure_limit {})",
                    r.failures,
                    if r.failures == 1 { "" } else { "s" },
                    spec.failure_limit
                ),
            };
        }
    }
    if let RunVerdict::NeedsHuman { .. } = run.verdict {
        return run.verdict.clone();
    }
    for &(name, rec) in &enforced {
        if let Some(r) = rec
            && r.consecutive_inconclusive > spec.inconclusive_limit
        {
            let last = r
                .last
                .as_ref()
                .map_or("no measurement", |m| m.reason.as_str());
            let head = format!(
                "{name}: inconclusive {} times in a row (inconclusive_limit {}) — {last}",
                r.consecutive_inconclusive, spec.inconclusive_limit
            );
            return match spec.on_inconclusive {
                InconclusivePolicy::Pause => RunVerdict::NeedsHuman {
                    reason: format!(
                        "{head}; paused: `ferry resume` measures again, `ferry promote` goes \
                         on without a verdict, `ferry abort` rolls back"
                    ),
                },
                InconclusivePolicy::Fail => RunVerdict::Failed {
                    metric: name.to_string(),
                    reason: format!("{head}; on_inconclusive: fail"),
                },
            };
        }
    }
    let all_passed = enforced.iter().all(|&(_, rec)| {
        rec.is_some_and(|r| r.consecutive_successes >= spec.consecutive_successes)
    });
    if all_passed {
        RunVerdict::Passed
    } else {
        RunVerdict::Running
    }
}
