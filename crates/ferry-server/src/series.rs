//! The per-version traffic of each rollout, for the deployment page's charts: every
//! [`SAMPLE_EVERY_MS`] the proxy's cumulative counters go to [`SeriesSampler::record`],
//! which stores one point per version (requests, 5xx, p95 since the previous sample) in
//! `deployment_series`. During a canary or blue/green rollout the controller's
//! progressive step does it (it reads the counters for its analysis anyway); for every
//! deployment on the rolling path (rolling and recreate; a canary environment's first
//! deployment, redeploy or rollback), which has no analysis, [`run`] does (the new version
//! and the one it replaces, while it progresses or rolls back).
//! The last snapshot of each deployment is kept in memory only: after a restart of the
//! server or the proxy the next sample starts a new baseline.
//!
//! Retention: [`run`] keeps the charts of the newest [`KEEP_PER_ENV`] deployments of each
//! app environment and deletes older ones every [`PRUNE_EVERY`] (and once at start).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::analysis::WindowStats;
use ferry_core::model::{DeploymentKind, DeploymentState};
use ferry_core::series::{MAX_POINTS, SeriesPoint};
use ferry_proxy::stats::StatsSnapshot;
use ferry_store::{DeploymentRecord, Store};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::controller::Controller;
use crate::error::ServerError;
use crate::lock;

/// How often a rollout's traffic is sampled.
pub const SAMPLE_EVERY_MS: i64 = 1_000;
/// A deployment not sampled for this long is forgotten (it ended).
const FORGET_AFTER_MS: i64 = 10 * 60_000;
/// The charts of this many newest deployments of each app environment are kept.
pub const KEEP_PER_ENV: u32 = 20;
/// How often older charts are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// What [`run`] samples of deployment `d`: its listener and versions (the new one, then
/// the one it replaces); None when it moves no traffic now, or when it follows a canary or
/// blue/green plan, whose pass samples it (as `controller::strategy::plan_of` decides:
/// a rollback, a first deployment and a redeploy of the serving version take the rolling
/// path whatever the strategy).
fn sampled_here(d: &DeploymentRecord) -> Option<(String, Vec<&str>)> {
    let moving = matches!(
        d.state,
        DeploymentState::Progressing | DeploymentState::RollingBack
    );
    let progressive = matches!(d.strategy.as_str(), "canary" | "blue_green")
        && d.kind != DeploymentKind::Rollback
        && d.previous_version.as_ref().is_some_and(|p| *p != d.version);
    (moving && !progressive).then(|| {
        let mut versions = vec![d.version.as_str()];
        versions.extend(d.previous_version.as_deref());
        (format!("{}/{}", d.app, d.env), versions)
    })
}

/// Samples rolling and recreate deployments' traffic, and prunes old charts, until
/// `shutdown`.
pub async fn run(controller: Arc<Controller>, shutdown: CancellationToken) {
    let sampler = SeriesSampler::default();
    let mut pruned_at: Option<tokio::time::Instant> = None;
    loop {
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            match controller.store().prune_series(KEEP_PER_ENV).await {
                Ok(0) => {}
                Ok(rows) => tracing::info!(rows, "deleted old rollout charts"),
                Err(e) => tracing::warn!(error = %e, "could not delete old rollout charts"),
            }
            pruned_at = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(SAMPLE_EVERY_MS.unsigned_abs())) => {}
        }
        if let Err(e) = sample_rolling(&controller, &sampler).await {
            tracing::debug!(error = %e, "could not sample rolling deployments' traffic");
        }
    }
}

async fn sample_rolling(
    controller: &Controller,
    sampler: &SeriesSampler,
) -> Result<(), ServerError> {
    let store = controller.store();
    let active = store.active_deployments().await?;
    let wanted: Vec<(&DeploymentRecord, (String, Vec<&str>))> = active
        .iter()
        .filter_map(|d| sampled_here(d).map(|what| (d, what)))
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let stats = controller.proxy().stats().await?;
    let now = now_ms();
    for (d, (listener, versions)) in wanted {
        sampler
            .record(store, d.id, &listener, &versions, &stats, now)
            .await;
    }
    Ok(())
}

/// What one deployment's last sample saw.
struct Baseline {
    /// Controller time of the sample (for [`SeriesSampler::due`]).
    sampled_at_ms: i64,
    proxy_started_at_ms: i64,
    taken_at_ms: i64,
    versions: BTreeMap<String, WindowStats>,
}

#[derive(Default)]
pub struct SeriesSampler {
    last: Mutex<HashMap<i64, Baseline>>,
}

impl SeriesSampler {
    /// Whether deployment `deployment_id` is due for a sample at `now_ms`.
    pub fn due(&self, deployment_id: i64, now_ms: i64) -> bool {
        lock(&self.last)
            .get(&deployment_id)
            .is_none_or(|b| now_ms - b.sampled_at_ms >= SAMPLE_EVERY_MS)
    }

    /// Stores one point per version of `versions` that served on `listener` (or its
    /// preview listener) since the deployment's previous sample. Errors are logged: a chart
    /// with a gap is better than a rollout held up.
    pub async fn record(
        &self,
        store: &Store,
        deployment_id: i64,
        listener: &str,
        versions: &[&str],
        stats: &StatsSnapshot,
        now_ms: i64,
    ) {
        let points = self.sample(deployment_id, listener, versions, stats, now_ms);
        if let Err(e) = store
            .append_series(deployment_id, &points, MAX_POINTS)
            .await
        {
            tracing::warn!(deployment = deployment_id, error = %e, "could not record the rollout's traffic");
        }
    }

    /// The points since the deployment's previous sample (none for its first sample, or
    /// after the proxy restarted), and `stats` as the next baseline.
    fn sample(
        &self,
        deployment_id: i64,
        listener: &str,
        versions: &[&str],
        stats: &StatsSnapshot,
        now_ms: i64,
    ) -> Vec<(String, SeriesPoint)> {
        let mut per_version: BTreeMap<String, WindowStats> = BTreeMap::new();
        for ((_service, version), counted) in crate::traffic::cumulative(listener, stats) {
            if versions.contains(&version.as_str()) {
                let total = per_version.entry(version).or_default();
                *total = total.merge(&counted);
            }
        }
        let next = Baseline {
            sampled_at_ms: now_ms,
            proxy_started_at_ms: stats.started_at_ms,
            taken_at_ms: stats.taken_at_ms,
            versions: per_version,
        };
        let mut last = lock(&self.last);
        last.retain(|_, b| now_ms - b.sampled_at_ms < FORGET_AFTER_MS);
        let points = match last.get(&deployment_id) {
            Some(before)
                if before.proxy_started_at_ms == next.proxy_started_at_ms
                    && next.taken_at_ms > before.taken_at_ms =>
            {
                let span_ms = next.taken_at_ms - before.taken_at_ms;
                next.versions
                    .iter()
                    .map(|(version, now)| {
                        let earlier = before.versions.get(version).cloned().unwrap_or_default();
                        (
                            version.clone(),
                            SeriesPoint::between(&earlier, now, next.taken_at_ms, span_ms),
                        )
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        last.insert(deployment_id, next);
        points
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::stats::{LatencyPercentiles, VersionStats};

    fn row(listener: &str, version: &str, requests: u64, errors: u64) -> VersionStats {
        VersionStats {
            listener: listener.into(),
            service: "web".into(),
            version: version.into(),
            requests,
            errors_5xx: errors,
            client_errors: 0,
            in_flight: 0,
            latency_ms: LatencyPercentiles::default(),
            histogram_us: String::new(),
            endpoints: Vec::new(),
        }
    }

    fn snapshot(started: i64, taken: i64, versions: Vec<VersionStats>) -> StatsSnapshot {
        StatsSnapshot {
            started_at_ms: started,
            taken_at_ms: taken,
            generation: 1,
            versions,
            ..Default::default()
        }
    }

    #[test]
    fn rolling_deployments_are_sampled_here_while_they_move_traffic() {
        let store = |strategy: &str, state, previous: Option<&str>| DeploymentRecord {
            id: 1,
            app: "shop".into(),
            env: "prod".into(),
            version: "2.0".into(),
            previous_version: previous.map(str::to_string),
            kind: DeploymentKind::Deploy,
            strategy: strategy.into(),
            state,
            reason: None,
            requested_by: "alice".into(),
            manifest_revision: 1,
            phase: serde_json::json!({}),
            row_version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            finished_at_ms: None,
            infra_failing_since_ms: None,
        };
        use DeploymentState::*;
        assert_eq!(
            sampled_here(&store("rolling", Progressing, Some("1.0"))),
            Some(("shop/prod".to_string(), vec!["2.0", "1.0"]))
        );
        assert_eq!(
            sampled_here(&store("recreate", RollingBack, None)),
            Some(("shop/prod".to_string(), vec!["2.0"]))
        );
        // a canary environment's rolling paths: a first deployment, a redeploy, a rollback
        assert!(sampled_here(&store("canary", Progressing, None)).is_some());
        assert!(sampled_here(&store("blue_green", Progressing, Some("2.0"))).is_some());
        let rollback = DeploymentRecord {
            kind: DeploymentKind::Rollback,
            ..store("canary", Progressing, Some("1.0"))
        };
        assert!(sampled_here(&rollback).is_some());
        for (strategy, state) in [
            ("canary", Progressing),
            ("canary", RollingBack),
            ("blue_green", Progressing),
            ("rolling", AwaitingApproval),
            ("rolling", Pending),
            ("rolling", Succeeded),
        ] {
            assert_eq!(
                sampled_here(&store(strategy, state, Some("1.0"))),
                None,
                "{strategy} {state}"
            );
        }
    }

    #[test]
    fn each_sample_is_the_traffic_since_the_previous_one_per_version() {
        let sampler = SeriesSampler::default();
        let versions = ["2.0", "1.0"];
        let first = snapshot(
            0,
            10_000,
            vec![
                row("shop/prod", "1.0", 100, 1),
                row("shop/dev", "1.0", 7, 7),
            ],
        );
        assert!(sampler.due(1, 0));
        assert!(
            sampler
                .sample(1, "shop/prod", &versions, &first, 0)
                .is_empty(),
            "a baseline"
        );
        assert!(!sampler.due(1, 500));
        assert!(sampler.due(1, 1_000));
        let second = snapshot(
            0,
            12_000,
            vec![
                row("shop/prod", "1.0", 150, 1),
                row("shop/prod/preview", "2.0", 4, 0),
                row("shop/prod", "2.0", 6, 2),
                row("shop/prod", "0.9", 9, 9),
                row("shop/dev", "1.0", 70, 70),
            ],
        );
        let points = sampler.sample(1, "shop/prod", &versions, &second, 2_000);
        let seen: Vec<(&str, i64, i64, u64, u64)> = points
            .iter()
            .map(|(v, p)| (v.as_str(), p.t_ms, p.span_ms, p.requests, p.errors))
            .collect();
        assert_eq!(
            seen,
            vec![("1.0", 12_000, 2_000, 50, 0), ("2.0", 12_000, 2_000, 10, 2)],
            "other listeners and versions left out, the preview listener counted"
        );
        // A restarted proxy counts from zero: a new baseline, no point.
        let restarted = snapshot(20_000, 21_000, vec![row("shop/prod", "2.0", 3, 0)]);
        assert!(
            sampler
                .sample(1, "shop/prod", &versions, &restarted, 3_000)
                .is_empty()
        );
        // Deployments are sampled apart.
        assert!(sampler.due(2, 3_000));
    }
}
