//! DORA metrics from Ferry's own history: deployment frequency, lead time for changes,
//! change failure rate, failed deployment recovery time and deployment rework rate, per
//! app and environment, over daily, weekly (ISO, Monday) or monthly buckets in UTC, each
//! figure with DORA's performance level and the deployments behind it.
//!
//! Pure: the facts (finished deployments, incidents attributed to them) and the window come
//! in, a [`DoraReport`] comes out. The rules, in one place:
//!
//! - A *production deployment* is any deployment but a `rollback` request of the app in the
//!   environment that ended succeeded, rolled back, failed or aborted. It belongs to the
//!   bucket of its end time. Superseded and rejected requests never reached production.
//! - *Deployment frequency*: succeeded production deployments.
//! - *Lead time for changes*: end time − commit time of each succeeded deployment that has a
//!   commit time, median; negative lead times (clock skew, bad input) are dropped and listed.
//! - A *failed change* is a production deployment that rolled back, failed or was aborted,
//!   that a `rollback` request right after it rolled away from, or that has at least one incident
//!   attributed to it. It counts once however many incidents it caused.
//!   *Change failure rate* = failed changes / production deployments.
//! - *Failed deployment recovery time*: from the failure (the deployment's start when it
//!   failed on its own; the rollback request's start; the first incident) to the moment the
//!   environment is healthy again (its own end when it rolled back or was aborted; else the
//!   end of the next succeeded deployment or rollback, or the first incident's restore — an
//!   alert's resolve — when that comes first), median. Unrecovered ones are listed.
//! - *Deployment rework rate*: production deployments that are the first deployment after a
//!   failed change (the fix) / production deployments.

use std::collections::{BTreeSet, HashMap};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::{DeploymentKind, DeploymentState};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// At most this many buckets in one report (ten years of days).
pub const MAX_BUCKETS: usize = 3660;

/// One deployment as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentFact {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub kind: DeploymentKind,
    pub state: DeploymentState,
    pub started_at_ms: i64,
    /// None while it is still in progress.
    pub finished_at_ms: Option<i64>,
    /// When the release's commit was made (`ferry release create --commit-time`).
    pub commit_at_ms: Option<i64>,
}

/// Something that went wrong in production, attributed to the deployment that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentFact {
    pub deployment_id: i64,
    pub opened_at_ms: i64,
    /// When the environment was healthy again by itself (an alert's incident: when the
    /// alert resolved); None for `--fix-of` marks and alerts still firing.
    pub restored_at_ms: Option<i64>,
}

/// Bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "DoraInterval")]
pub enum Interval {
    Daily,
    Weekly,
    Monthly,
    /// One figure for the whole window, no buckets.
    All,
}

impl Interval {
    /// The names the API accepts.
    pub const NAMES: &[&str] = &["daily", "weekly", "monthly", "all"];
}

/// DORA's performance levels.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "DoraLevel")]
pub enum Level {
    Elite,
    High,
    Medium,
    Low,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Elite => "elite",
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }
}

/// A lead or recovery time for people: `45m 12s`, `3h 20m`, `4d 2h`.
pub fn human_duration(ms: i64) -> String {
    let (minutes, hours, days) = (ms / 60_000, ms / HOUR_MS, ms / DAY_MS);
    if days >= 2 {
        format!("{days}d {}h", hours % 24)
    } else if hours >= 1 {
        format!("{hours}h {}m", minutes % 60)
    } else {
        format!("{}m {}s", minutes, (ms / 1000) % 60)
    }
}

/// A rate for people: `12.5 %`.
pub fn human_rate(rate: f64) -> String {
    format!("{:.1} %", rate * 100.0)
}

/// What to compute: one app in one environment over `[start_ms, end_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoraQuery {
    pub app: String,
    pub env: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub interval: Interval,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoraError {
    #[error("the window is empty: start {start_ms} is not before end {end_ms}")]
    EmptyWindow { start_ms: i64, end_ms: i64 },
    #[error("{field}: {value:?} is not a date (YYYY-MM-DD)")]
    BadDate { field: &'static str, value: String },
    #[error("the window is {days} days long; at most {MAX_WINDOW_DAYS} are allowed")]
    WindowTooLong { days: i64 },
    #[error("timestamp {0} ms is outside the supported range")]
    OutOfRange(i64),
    #[error(
        "{buckets} buckets is more than the {MAX_BUCKETS} allowed; use a larger interval or a shorter window"
    )]
    TooManyBuckets { buckets: usize },
}

/// One deployment's lead time or recovery time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraSample")]
pub struct Sample {
    pub deployment: i64,
    pub ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraFrequency")]
pub struct Frequency {
    pub count: usize,
    pub per_day: f64,
    pub level: Option<Level>,
    pub deployments: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraLeadTime")]
pub struct LeadTime {
    pub median_ms: Option<i64>,
    pub level: Option<Level>,
    pub samples: Vec<Sample>,
    /// Succeeded deployments whose commit time is after their end.
    pub dropped_negative: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraRate")]
pub struct Rate {
    /// The deployments counted (failed changes, or fixes).
    pub count: usize,
    /// Production deployments.
    pub total: usize,
    pub rate: Option<f64>,
    pub level: Option<Level>,
    pub deployments: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraRecoveryTime")]
pub struct RecoveryTime {
    pub median_ms: Option<i64>,
    pub level: Option<Level>,
    pub samples: Vec<Sample>,
    /// Failed changes the environment has not recovered from yet.
    pub unrecovered: Vec<i64>,
}

/// The five metrics over one span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraFigures")]
pub struct Figures {
    pub deployment_frequency: Frequency,
    pub lead_time_for_changes: LeadTime,
    pub change_failure_rate: Rate,
    pub failed_deployment_recovery_time: RecoveryTime,
    pub deployment_rework_rate: Rate,
    /// Every production deployment of the span.
    pub production_deployments: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraBucket")]
pub struct Bucket {
    pub start_ms: i64,
    pub end_ms: i64,
    pub figures: Figures,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DoraReport {
    pub app: String,
    pub env: String,
    pub interval: Interval,
    pub start_ms: i64,
    pub end_ms: i64,
    pub summary: Figures,
    pub buckets: Vec<Bucket>,
}

/// Whether a deployment counts as a production deployment: anything but a `rollback`
/// request that ended succeeded, rolled back, failed or aborted.
pub fn is_production(kind: DeploymentKind, state: DeploymentState) -> bool {
    kind != DeploymentKind::Rollback
        && matches!(
            state,
            DeploymentState::Succeeded
                | DeploymentState::RolledBack
                | DeploymentState::Failed
                | DeploymentState::Aborted
        )
}

/// What each production deployment contributes, computed once over the whole history.
#[derive(Debug, Clone, Copy)]
struct Row {
    id: i64,
    finished_at_ms: i64,
    succeeded: bool,
    lead_time_ms: Option<i64>,
    failed: bool,
    /// Some(Ok(ms)) recovered after ms, Some(Err(())) not recovered yet.
    recovery: Option<Result<i64, ()>>,
    rework: bool,
}

/// Computes the report. `deployments` and `incidents` may cover every app and all time;
/// failures and fixes are judged over the whole history of the app in the environment, and
/// each deployment is counted in the bucket of its end time.
pub fn compute(
    deployments: &[DeploymentFact],
    incidents: &[IncidentFact],
    query: &DoraQuery,
) -> Result<DoraReport, DoraError> {
    if query.start_ms >= query.end_ms {
        return Err(DoraError::EmptyWindow {
            start_ms: query.start_ms,
            end_ms: query.end_ms,
        });
    }
    let bounds = bucket_bounds(query)?;
    let rows = rows(deployments, incidents, &query.app, &query.env);
    let in_span = |start: i64, end: i64| {
        let from = rows.partition_point(|r| r.finished_at_ms < start);
        let to = rows.partition_point(|r| r.finished_at_ms < end);
        figures(&rows[from..to], end - start)
    };
    let buckets = bounds
        .windows(2)
        .map(|w| Bucket {
            start_ms: w[0],
            end_ms: w[1],
            figures: in_span(w[0], w[1]),
        })
        .collect();
    Ok(DoraReport {
        app: query.app.clone(),
        env: query.env.clone(),
        interval: query.interval,
        start_ms: query.start_ms,
        end_ms: query.end_ms,
        summary: in_span(query.start_ms, query.end_ms),
        buckets,
    })
}

/// Production deployments of the app in the environment, sorted by end time, with what
/// each contributes.
fn rows(
    deployments: &[DeploymentFact],
    incidents: &[IncidentFact],
    app: &str,
    env: &str,
) -> Vec<Row> {
    let mut mine: Vec<&DeploymentFact> = deployments
        .iter()
        .filter(|d| d.app == app && d.env == env && d.finished_at_ms.is_some())
        .collect();
    mine.sort_by_key(|d| (d.started_at_ms, d.id));
    let is_production = |d: &DeploymentFact| is_production(d.kind, d.state);
    // Ends of every succeeded deployment or rollback: the moments the environment recovers.
    let mut healthy_at: Vec<i64> = mine
        .iter()
        .filter(|d| d.state == DeploymentState::Succeeded)
        .filter_map(|d| d.finished_at_ms)
        .collect();
    healthy_at.sort_unstable();
    // The moment each production deployment became a failed change (earliest reason).
    let mut failed_at: HashMap<i64, i64> = HashMap::new();
    // When its first incident was restored by itself (an alert resolved).
    let mut restored_at: HashMap<i64, (i64, Option<i64>)> = HashMap::new();
    let ids: BTreeSet<i64> = mine
        .iter()
        .filter(|d| is_production(d))
        .map(|d| d.id)
        .collect();
    for incident in incidents {
        if ids.contains(&incident.deployment_id) {
            let at = failed_at.entry(incident.deployment_id).or_insert(i64::MAX);
            *at = (*at).min(incident.opened_at_ms);
            let first = restored_at
                .entry(incident.deployment_id)
                .or_insert((i64::MAX, None));
            if incident.opened_at_ms < first.0 {
                *first = (incident.opened_at_ms, incident.restored_at_ms);
            }
        }
    }
    // A rollback request fails the production deployment just before it, when that one
    // succeeded (one that already rolled back or failed is no more failed for it).
    let mut last_succeeded: Option<i64> = None;
    for d in &mine {
        if d.kind == DeploymentKind::Rollback {
            if let Some(bad) = last_succeeded.take() {
                let at = failed_at.entry(bad).or_insert(i64::MAX);
                *at = (*at).min(d.started_at_ms);
            }
        } else if is_production(d) {
            last_succeeded = (d.state == DeploymentState::Succeeded).then_some(d.id);
        }
    }
    let production: Vec<&DeploymentFact> = mine.into_iter().filter(|d| is_production(d)).collect();
    let mut rework: BTreeSet<i64> = BTreeSet::new();
    let mut rows: Vec<Row> = production
        .iter()
        .enumerate()
        .map(|(index, d)| {
            let finished = d.finished_at_ms.unwrap_or(d.started_at_ms);
            let succeeded = d.state == DeploymentState::Succeeded;
            let failure_at = if !succeeded {
                Some(d.started_at_ms)
            } else {
                failed_at.get(&d.id).copied()
            };
            let recovery = failure_at.map(|at| {
                let recovered = if matches!(
                    d.state,
                    DeploymentState::RolledBack | DeploymentState::Aborted
                ) {
                    Some(finished)
                } else {
                    // The first moment after both the failure and this deployment's end
                    // that a deployment or rollback succeeded.
                    let after = at.max(finished);
                    let next = healthy_at
                        .get(healthy_at.partition_point(|&h| h <= after))
                        .copied();
                    // …or the first incident restored by itself, when that failure is
                    // the deployment's (not a rollback request's, which came earlier).
                    let restored = restored_at
                        .get(&d.id)
                        .filter(|(opened, _)| *opened == at)
                        .and_then(|(_, r)| *r)
                        .map(|r| r.max(at));
                    match (next, restored) {
                        (Some(n), Some(r)) => Some(n.min(r)),
                        (n, r) => n.or(r),
                    }
                };
                recovered.map(|r| r - at).ok_or(())
            });
            if let Some(at) = failure_at {
                // The fix: the next production deployment started after the failure.
                if let Some(fix) = production[index + 1..]
                    .iter()
                    .find(|n| n.started_at_ms >= at)
                {
                    rework.insert(fix.id);
                }
            }
            Row {
                id: d.id,
                finished_at_ms: finished,
                succeeded,
                lead_time_ms: d
                    .commit_at_ms
                    .filter(|_| succeeded)
                    .map(|commit| finished - commit),
                failed: failure_at.is_some(),
                recovery,
                rework: false,
            }
        })
        .collect();
    for row in &mut rows {
        row.rework = rework.contains(&row.id);
    }
    rows.sort_by_key(|r| (r.finished_at_ms, r.id));
    rows
}

/// The five metrics over the rows of one span `span_ms` long.
fn figures(rows: &[Row], span_ms: i64) -> Figures {
    let total = rows.len();
    let succeeded: Vec<i64> = rows.iter().filter(|r| r.succeeded).map(|r| r.id).collect();
    let per_day = succeeded.len() as f64 * DAY_MS as f64 / span_ms as f64;
    let mut lead_samples = Vec::new();
    let mut dropped_negative = Vec::new();
    for row in rows {
        match row.lead_time_ms {
            Some(ms) if ms < 0 => dropped_negative.push(row.id),
            Some(ms) => lead_samples.push(Sample {
                deployment: row.id,
                ms,
            }),
            None => {}
        }
    }
    let lead_median = median(&lead_samples);
    let failed: Vec<i64> = rows.iter().filter(|r| r.failed).map(|r| r.id).collect();
    let mut recovery_samples = Vec::new();
    let mut unrecovered = Vec::new();
    for row in rows {
        match row.recovery {
            Some(Ok(ms)) => recovery_samples.push(Sample {
                deployment: row.id,
                ms,
            }),
            Some(Err(())) => unrecovered.push(row.id),
            None => {}
        }
    }
    let recovery_median = median(&recovery_samples);
    let rework: Vec<i64> = rows.iter().filter(|r| r.rework).map(|r| r.id).collect();
    let rate = |deployments: Vec<i64>| {
        let rate = (total > 0).then(|| deployments.len() as f64 / total as f64);
        Rate {
            count: deployments.len(),
            total,
            rate,
            level: rate.map(failure_level),
            deployments,
        }
    };
    Figures {
        deployment_frequency: Frequency {
            count: succeeded.len(),
            per_day,
            level: Some(frequency_level(per_day)),
            deployments: succeeded,
        },
        lead_time_for_changes: LeadTime {
            median_ms: lead_median,
            level: lead_median.map(lead_time_level),
            samples: lead_samples,
            dropped_negative,
        },
        change_failure_rate: rate(failed),
        failed_deployment_recovery_time: RecoveryTime {
            median_ms: recovery_median,
            level: recovery_median.map(recovery_level),
            samples: recovery_samples,
            unrecovered,
        },
        deployment_rework_rate: rate(rework),
        production_deployments: rows.iter().map(|r| r.id).collect(),
    }
}

/// The median; with an even count, the mean of the two middle values (rounded down).
fn median(samples: &[Sample]) -> Option<i64> {
    let mut values: Vec<i64> = samples.iter().map(|s| s.ms).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        // Halves first: no overflow for any pair of i64.
        values[mid - 1] / 2 + values[mid] / 2 + (values[mid - 1] % 2 + values[mid] % 2) / 2
    })
}

/// DORA's levels for deployment frequency: on demand (daily or more), weekly, monthly, less.
pub fn frequency_level(per_day: f64) -> Level {
    if per_day >= 1.0 {
        Level::Elite
    } else if per_day >= 1.0 / 7.0 {
        Level::High
    } else if per_day >= 1.0 / 30.0 {
        Level::Medium
    } else {
        Level::Low
    }
}

/// DORA's levels for lead time: under a day, a week, a month, more.
pub fn lead_time_level(ms: i64) -> Level {
    if ms < DAY_MS {
        Level::Elite
    } else if ms < 7 * DAY_MS {
        Level::High
    } else if ms < 30 * DAY_MS {
        Level::Medium
    } else {
        Level::Low
    }
}

/// DORA's levels for failed deployment recovery time: under an hour, a day, a week, more.
pub fn recovery_level(ms: i64) -> Level {
    if ms < HOUR_MS {
        Level::Elite
    } else if ms < DAY_MS {
        Level::High
    } else if ms < 7 * DAY_MS {
        Level::Medium
    } else {
        Level::Low
    }
}

/// DORA's levels for change failure rate (5 %, 10 %, 15 %); DORA publishes none for the
/// rework rate, which is judged on the same scale.
pub fn failure_level(rate: f64) -> Level {
    if rate <= 0.05 {
        Level::Elite
    } else if rate <= 0.10 {
        Level::High
    } else if rate <= 0.15 {
        Level::Medium
    } else {
        Level::Low
    }
}

/// Bucket boundaries in UTC covering the window, clipped to it: `[start, b1, …, end]`.
fn bucket_bounds(query: &DoraQuery) -> Result<Vec<i64>, DoraError> {
    let (start, end) = (query.start_ms, query.end_ms);
    if query.interval == Interval::All {
        return Ok(Vec::new());
    }
    let date_of = |ms: i64| -> Result<Date, DoraError> {
        Ok(Timestamp::from_millisecond(ms)
            .map_err(|_| DoraError::OutOfRange(ms))?
            .to_zoned(TimeZone::UTC)
            .date())
    };
    let ms_of = |date: Date| -> Result<i64, DoraError> {
        Ok(date
            .to_zoned(TimeZone::UTC)
            .map_err(|_| DoraError::OutOfRange(end))?
            .timestamp()
            .as_millisecond())
    };
    // Rough count first, so a huge window is refused before anything is allocated.
    let rough = match query.interval {
        Interval::Daily => (end - start) / DAY_MS,
        Interval::Weekly => (end - start) / (7 * DAY_MS),
        Interval::Monthly | Interval::All => (end - start) / (28 * DAY_MS),
    };
    if rough >= MAX_BUCKETS as i64 {
        return Err(DoraError::TooManyBuckets {
            buckets: usize::try_from(rough).unwrap_or(usize::MAX),
        });
    }
    let first = date_of(start)?;
    let mut date = match query.interval {
        Interval::Daily | Interval::All => first,
        Interval::Weekly => first
            .checked_sub(i64::from(first.weekday().to_monday_zero_offset()).days())
            .map_err(|_| DoraError::OutOfRange(start))?,
        Interval::Monthly => first.first_of_month(),
    };
    let step = match query.interval {
        Interval::Daily | Interval::All => 1.day(),
        Interval::Weekly => 1.week(),
        Interval::Monthly => 1.month(),
    };
    let mut bounds = vec![start];
    loop {
        date = date
            .checked_add(step)
            .map_err(|_| DoraError::OutOfRange(end))?;
        let ms = ms_of(date)?;
        if ms >= end {
            break;
        }
        bounds.push(ms);
    }
    bounds.push(end);
    if bounds.len() - 1 > MAX_BUCKETS {
        return Err(DoraError::TooManyBuckets {
            buckets: bounds.len() - 1,
        });
    }
    Ok(bounds)
}

/// One metric, as GitLab's DORA API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DoraMetric")]
pub enum Metric {
    DeploymentFrequency,
    LeadTimeForChanges,
    ChangeFailureRate,
    /// GitLab's `time_to_restore_service` is accepted as well.
    #[serde(alias = "time_to_restore_service")]
    FailedDeploymentRecoveryTime,
    DeploymentReworkRate,
}

impl Metric {
    /// The names the API accepts.
    pub const NAMES: &[&str] = &[
        "deployment_frequency",
        "lead_time_for_changes",
        "change_failure_rate",
        "failed_deployment_recovery_time",
        "time_to_restore_service",
        "deployment_rework_rate",
    ];

    /// The figure's value as GitLab gives it: a count, seconds, or a ratio.
    pub fn value(self, figures: &Figures) -> Option<f64> {
        let seconds = |ms: Option<i64>| ms.map(|ms| ms as f64 / 1000.0);
        match self {
            Metric::DeploymentFrequency => Some(figures.deployment_frequency.count as f64),
            Metric::LeadTimeForChanges => seconds(figures.lead_time_for_changes.median_ms),
            Metric::ChangeFailureRate => figures.change_failure_rate.rate,
            Metric::FailedDeploymentRecoveryTime => {
                seconds(figures.failed_deployment_recovery_time.median_ms)
            }
            Metric::DeploymentReworkRate => figures.deployment_rework_rate.rate,
        }
    }
}

/// One point of a metric's series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "DoraPoint")]
pub struct MetricPoint {
    /// The bucket's first day (`YYYY-MM-DD`, UTC); None for the interval `all`.
    pub date: Option<String>,
    pub value: Option<f64>,
}

/// The report as GitLab's DORA API answers for one metric: one point per bucket.
pub fn series(report: &DoraReport, metric: Metric) -> Vec<MetricPoint> {
    if report.interval == Interval::All {
        return vec![MetricPoint {
            date: None,
            value: metric.value(&report.summary),
        }];
    }
    report
        .buckets
        .iter()
        .map(|b| MetricPoint {
            date: date_of(b.start_ms),
            value: metric.value(&b.figures),
        })
        .collect()
}

/// Longest window the API accepts (about ten years).
pub const MAX_WINDOW_DAYS: i64 = MAX_BUCKETS as i64;

/// The window `[start of start_date, end of end_date)` in UTC, as GitLab reads
/// `start_date`/`end_date` (both inclusive, `YYYY-MM-DD`); by default the 90 days up to and
/// including today.
pub fn window(
    start_date: Option<&str>,
    end_date: Option<&str>,
    now_ms: i64,
) -> Result<(i64, i64), DoraError> {
    let parse = |field: &'static str, text: &str| -> Result<Date, DoraError> {
        if text.len() > 10 {
            return Err(DoraError::BadDate {
                field,
                value: text.chars().take(16).collect(),
            });
        }
        text.parse::<Date>().map_err(|_| DoraError::BadDate {
            field,
            value: text.to_string(),
        })
    };
    let midnight = |date: Date| -> Result<i64, DoraError> {
        Ok(date
            .to_zoned(TimeZone::UTC)
            .map_err(|_| DoraError::OutOfRange(now_ms))?
            .timestamp()
            .as_millisecond())
    };
    let today = Timestamp::from_millisecond(now_ms)
        .map_err(|_| DoraError::OutOfRange(now_ms))?
        .to_zoned(TimeZone::UTC)
        .date();
    let end = match end_date {
        Some(text) => parse("end_date", text)?,
        None => today,
    };
    let end_ms = midnight(end)? + DAY_MS;
    let start_ms = match start_date {
        Some(text) => midnight(parse("start_date", text)?)?,
        None => end_ms - 90 * DAY_MS,
    };
    if start_ms >= end_ms {
        return Err(DoraError::EmptyWindow { start_ms, end_ms });
    }
    if end_ms - start_ms > MAX_WINDOW_DAYS * DAY_MS {
        return Err(DoraError::WindowTooLong {
            days: (end_ms - start_ms) / DAY_MS,
        });
    }
    Ok((start_ms, end_ms))
}

/// `YYYY-MM-DD` of a moment in UTC.
pub fn date_of(ms: i64) -> Option<String> {
    Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_zoned(TimeZone::UTC).date().to_string())
}
