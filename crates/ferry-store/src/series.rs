//! Per-version traffic of each rollout (`deployment_series`), for the deployment page's
//! charts: bounded to `max` points per version of a deployment, merged pairwise
//! (`ferry_core::series::downsample`) when a long rollout goes over.

use std::collections::BTreeMap;

use ferry_core::series::{SeriesPoint, VersionSeries, downsample};
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, get};

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn point_from_row(row: &AnyRow, deployment_id: i64) -> Result<(String, SeriesPoint)> {
    let what = || format!("deployment {deployment_id}: series point");
    let p95: Option<i64> = get(row, "p95_us", &what)?;
    Ok((
        get(row, "version", &what)?,
        SeriesPoint {
            t_ms: get(row, "t_ms", &what)?,
            span_ms: get(row, "span_ms", &what)?,
            requests: to_u64(get(row, "requests", &what)?),
            errors: to_u64(get(row, "errors", &what)?),
            p95_us: p95.map(to_u64),
        },
    ))
}

impl Store {
    /// Adds points (version, point) to deployment `deployment_id`'s series (a point already
    /// there for the same version and time is kept), then merges a version's points
    /// pairwise while it has more than `max`.
    pub async fn append_series(
        &self,
        deployment_id: i64,
        points: &[(String, SeriesPoint)],
        max: usize,
    ) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let op = || format!("recording the traffic of deployment {deployment_id}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        for (version, p) in points {
            insert(&mut tx, deployment_id, version, p).await.ctx(op)?;
        }
        let versions: std::collections::BTreeSet<&str> =
            points.iter().map(|(v, _)| v.as_str()).collect();
        for version in versions {
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM deployment_series WHERE deployment_id = $1 AND version = $2",
            )
            .bind(deployment_id)
            .bind(version)
            .fetch_one(&mut *tx)
            .await
            .ctx(op)?;
            if usize::try_from(count).unwrap_or(usize::MAX) <= max {
                continue;
            }
            let rows = sqlx::query(
                "SELECT version, t_ms, span_ms, requests, errors, p95_us FROM deployment_series \
                 WHERE deployment_id = $1 AND version = $2 ORDER BY t_ms",
            )
            .bind(deployment_id)
            .bind(version)
            .fetch_all(&mut *tx)
            .await
            .ctx(op)?;
            let old = rows
                .iter()
                .map(|row| point_from_row(row, deployment_id).map(|(_, p)| p))
                .collect::<Result<Vec<_>>>()?;
            sqlx::query("DELETE FROM deployment_series WHERE deployment_id = $1 AND version = $2")
                .bind(deployment_id)
                .bind(version)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            for p in downsample(&old, max) {
                insert(&mut tx, deployment_id, version, &p).await.ctx(op)?;
            }
        }
        tx.commit().await.ctx(op)
    }

    /// The time of deployment `deployment_id`'s newest point (None without one): what an
    /// open page compares to know whether its charts are behind.
    pub async fn series_head(&self, deployment_id: i64) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MAX(t_ms) FROM deployment_series WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await
            .ctx(|| format!("reading the traffic of deployment {deployment_id}"))
    }

    /// Deletes the charts of all but the newest `keep` deployments of each app environment
    /// (by deployment id, whether or not those have charts); the number of rows deleted.
    pub async fn prune_series(&self, keep: u32) -> Result<u64> {
        sqlx::query(
            "DELETE FROM deployment_series WHERE deployment_id IN ( \
               SELECT d.id FROM deployments d \
               WHERE d.id IN (SELECT DISTINCT deployment_id FROM deployment_series) \
               AND (SELECT COUNT(*) FROM deployments n \
                    WHERE n.app = d.app AND n.env = d.env AND n.id > d.id) >= $1)",
        )
        .bind(i64::from(keep))
        .execute(&self.pool)
        .await
        .map(|done| done.rows_affected())
        .ctx(|| "pruning old rollout charts".into())
    }

    /// Deployment `deployment_id`'s series, one per version (by name), points oldest first.
    pub async fn deployment_series(&self, deployment_id: i64) -> Result<Vec<VersionSeries>> {
        let rows = sqlx::query(
            "SELECT version, t_ms, span_ms, requests, errors, p95_us FROM deployment_series \
             WHERE deployment_id = $1 ORDER BY version, t_ms",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the traffic of deployment {deployment_id}"))?;
        let mut by_version: BTreeMap<String, Vec<SeriesPoint>> = BTreeMap::new();
        for row in &rows {
            let (version, point) = point_from_row(row, deployment_id)?;
            by_version.entry(version).or_default().push(point);
        }
        Ok(by_version
            .into_iter()
            .map(|(version, points)| VersionSeries { version, points })
            .collect())
    }
}

async fn insert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    deployment_id: i64,
    version: &str,
    p: &SeriesPoint,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO deployment_series \
         (deployment_id, version, t_ms, span_ms, requests, errors, p95_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (deployment_id, version, t_ms) DO NOTHING",
    )
    .bind(deployment_id)
    .bind(version)
    .bind(p.t_ms)
    .bind(p.span_ms)
    .bind(to_i64(p.requests))
    .bind(to_i64(p.errors))
    .bind(p.p95_us.map(to_i64))
    .execute(&mut **tx)
    .await
    .map(|_| ())
}
