//! dora: the DORA metrics page of an app (`/apps/{app}/dora?env=…&days=…&interval=…`). It
//! reads `GET /v1/apps/{app}/envs/{env}/dora` as the logged-in person, so it shows exactly
//! what the API would; every figure links to the deployments behind it.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ferry_core::api::AppStatus;
use ferry_core::dora::{self, DoraReport, Figures, Level, Sample};
use serde::Deserialize;

use super::pages::nav;
use super::views::Nav;
use super::{Console, Failure, Session, seg};

/// The windows the page offers, in days.
const WINDOWS: &[i64] = &[7, 30, 90, 180, 365];
/// The intervals the page offers (the API's names) and how they read.
const INTERVALS: &[(&str, &str)] = &[
    ("all", "whole window"),
    ("weekly", "per week"),
    ("monthly", "per month"),
];
/// Most deployment links shown for one figure.
const MAX_LINKS: usize = 100;

#[derive(Deserialize)]
pub(crate) struct DoraQuery {
    env: Option<String>,
    days: Option<String>,
    interval: Option<String>,
}

/// One metric's row: value, level and the deployments behind it.
pub(crate) struct MetricRow {
    pub name: &'static str,
    pub value: String,
    /// `elite`, `high`, `medium`, `low` or empty.
    pub level: String,
    /// The state class that colours the level.
    pub class: &'static str,
    pub basis: String,
    /// `(deployment id, what it contributes)`, at most [`MAX_LINKS`].
    pub deployments: Vec<(i64, String)>,
    /// How many more there are than listed.
    pub more: usize,
}

/// One bucket of the per-week/per-month table.
pub(crate) struct BucketRow {
    pub from: String,
    pub deployments: usize,
    pub frequency: String,
    pub lead_time: String,
    pub failure_rate: String,
    pub recovery: String,
    pub rework: String,
}

#[derive(Template)]
#[template(path = "console/dora.html")]
pub(crate) struct DoraPage {
    pub nav: Nav,
    pub app: String,
    pub env: String,
    pub envs: Vec<String>,
    pub days: i64,
    pub windows: Vec<i64>,
    pub interval: String,
    pub intervals: Vec<(&'static str, &'static str)>,
    pub from: String,
    pub to: String,
    pub production: usize,
    pub metrics: Vec<MetricRow>,
    pub buckets: Vec<BucketRow>,
}

pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<DoraQuery>,
) -> Response {
    let back = format!("/apps/{}/dora", seg(&app));
    console
        .page(&headers, &back, |c, s| async move {
            dora_page(c, &s, &app, q).await
        })
        .await
}

async fn dora_page(
    console: &Console,
    session: &Session,
    app: &str,
    q: DoraQuery,
) -> Result<DoraPage, Failure> {
    let status: AppStatus = console
        .get(session, &format!("/v1/apps/{}/status", seg(app)))
        .await?;
    let envs: Vec<String> = status.environments.iter().map(|e| e.env.clone()).collect();
    // production by default when there is one, else the last environment (the promotion
    // order ends in production)
    let env = q
        .env
        .map(|e| e.chars().take(64).collect::<String>())
        .or_else(|| envs.iter().find(|e| *e == "production").cloned())
        .or_else(|| envs.last().cloned())
        .unwrap_or_default();
    let days = q
        .days
        .and_then(|d| d.parse::<i64>().ok())
        .filter(|d| WINDOWS.contains(d))
        .unwrap_or(90);
    let interval = q
        .interval
        .filter(|i| INTERVALS.iter().any(|(name, _)| name == i))
        .unwrap_or_else(|| "all".into());
    let now = crate::clock::now_ms();
    let start = dora::date_of(now - (days - 1) * 86_400_000).unwrap_or_default();
    let report: DoraReport = console
        .get(
            session,
            &format!(
                "/v1/apps/{}/envs/{}/dora?interval={interval}&start_date={start}",
                seg(app),
                seg(&env)
            ),
        )
        .await?;
    let s = &report.summary;
    Ok(DoraPage {
        nav: nav(session),
        app: app.to_string(),
        envs,
        days,
        windows: WINDOWS.to_vec(),
        intervals: INTERVALS.to_vec(),
        from: dora::date_of(report.start_ms).unwrap_or_default(),
        to: dora::date_of(report.end_ms - 1).unwrap_or_default(),
        production: s.production_deployments.len(),
        metrics: metrics(s),
        buckets: report.buckets.iter().map(bucket).collect(),
        env,
        interval,
    })
}

fn level(level: Option<Level>) -> (String, &'static str) {
    match level {
        Some(l @ (Level::Elite | Level::High)) => (l.as_str().into(), "s-succeeded"),
        Some(l @ Level::Medium) => (l.as_str().into(), "s-waiting"),
        Some(l @ Level::Low) => (l.as_str().into(), "s-failed"),
        None => (String::new(), ""),
    }
}

fn duration(ms: Option<i64>) -> String {
    ms.map_or("—".into(), dora::human_duration)
}

fn rate(rate: Option<f64>) -> String {
    rate.map_or("—".into(), dora::human_rate)
}

fn row(
    name: &'static str,
    value: String,
    lvl: Option<Level>,
    basis: String,
    mut deployments: Vec<(i64, String)>,
) -> MetricRow {
    let (level, class) = level(lvl);
    let more = deployments.len().saturating_sub(MAX_LINKS);
    deployments.truncate(MAX_LINKS);
    MetricRow {
        name,
        value,
        level,
        class,
        basis,
        deployments,
        more,
    }
}

fn plain(ids: &[i64]) -> Vec<(i64, String)> {
    ids.iter().map(|id| (*id, String::new())).collect()
}

fn timed(samples: &[Sample]) -> Vec<(i64, String)> {
    samples
        .iter()
        .map(|s| (s.deployment, dora::human_duration(s.ms)))
        .collect()
}

fn metrics(f: &Figures) -> Vec<MetricRow> {
    let freq = &f.deployment_frequency;
    let lead = &f.lead_time_for_changes;
    let cfr = &f.change_failure_rate;
    let rec = &f.failed_deployment_recovery_time;
    let rework = &f.deployment_rework_rate;
    let mut lead_deployments = timed(&lead.samples);
    lead_deployments.extend(
        lead.dropped_negative
            .iter()
            .map(|id| (*id, "dropped: committed after it ended".to_string())),
    );
    let mut recovered = timed(&rec.samples);
    recovered.extend(
        rec.unrecovered
            .iter()
            .map(|id| (*id, "not recovered yet".to_string())),
    );
    vec![
        row(
            "Deployment frequency",
            format!("{} ({:.2} a day)", freq.count, freq.per_day),
            freq.level,
            format!("{} succeeded", freq.count),
            plain(&freq.deployments),
        ),
        row(
            "Lead time for changes",
            duration(lead.median_ms),
            lead.level,
            format!("median of {} with a commit time", lead.samples.len()),
            lead_deployments,
        ),
        row(
            "Change failure rate",
            rate(cfr.rate),
            cfr.level,
            format!("{} of {} failed", cfr.count, cfr.total),
            plain(&cfr.deployments),
        ),
        row(
            "Failed deployment recovery time",
            duration(rec.median_ms),
            rec.level,
            format!(
                "median of {} recovered, {} not yet",
                rec.samples.len(),
                rec.unrecovered.len()
            ),
            recovered,
        ),
        row(
            "Deployment rework rate",
            rate(rework.rate),
            rework.level,
            format!("{} fixes of {}", rework.count, rework.total),
            plain(&rework.deployments),
        ),
    ]
}

fn bucket(b: &dora::Bucket) -> BucketRow {
    let f = &b.figures;
    BucketRow {
        from: dora::date_of(b.start_ms).unwrap_or_default(),
        deployments: f.production_deployments.len(),
        frequency: f.deployment_frequency.count.to_string(),
        lead_time: duration(f.lead_time_for_changes.median_ms),
        failure_rate: rate(f.change_failure_rate.rate),
        recovery: duration(f.failed_deployment_recovery_time.median_ms),
        rework: rate(f.deployment_rework_rate.rate),
    }
}

impl DoraPage {
    pub fn is_env(&self, env: &str) -> bool {
        self.env == env
    }

    pub fn is_days(&self, days: &i64) -> bool {
        self.days == *days
    }

    pub fn is_interval(&self, interval: &str) -> bool {
        self.interval == interval
    }
}
