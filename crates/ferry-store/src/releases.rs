//! Releases (immutable once they carry data) and the deployment facts that promotion and
//! `ferry releases` need.

use std::collections::{BTreeMap, BTreeSet};

use ferry_core::model::{DeploymentKind, DeploymentState};
use ferry_core::release::{self, Reconciled, ReleaseData, reconcile};
use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{Ctx, EnvRecord, Result, Store, StoreError, env_from_row, get};

/// A release of an app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReleaseRecord {
    pub app: String,
    pub version: String,
    pub created_at_ms: i64,
    /// Commit (7–40 lowercase hex), artifacts per service, notes; all empty for a bare
    /// release recorded by a plain deploy.
    pub data: ReleaseData,
    /// Who recorded it (`user:alice`); `None` for releases recorded before this was kept.
    pub created_by: Option<String>,
}

/// A release to record (see [`Store::record_release`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewRelease {
    pub app: String,
    pub version: String,
    /// Already validated and normalized by the caller.
    pub data: ReleaseData,
    pub created_by: String,
    pub now_ms: i64,
}

/// What recording a release did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReleaseOutcome {
    /// A new release.
    Created(ReleaseRecord),
    /// It existed with the same data (nothing written).
    Exists(ReleaseRecord),
    /// It existed bare and now carries the requested data.
    Completed(ReleaseRecord),
    /// It exists with different data (nothing written).
    Conflict {
        existing: ReleaseRecord,
        field: &'static str,
        stored: String,
        requested: String,
    },
}

/// One deployment as `ferry releases` needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentFact {
    pub id: i64,
    pub env: String,
    pub version: String,
    pub state: DeploymentState,
    pub kind: DeploymentKind,
    pub created_at_ms: i64,
}

macro_rules! release_cols {
    () => {
        "app, version, created_at_ms, commit_sha, artifacts, notes, created_by, commit_at_ms"
    };
}

pub(crate) fn release_from_row(row: &AnyRow) -> Result<ReleaseRecord> {
    let app: String = get(row, "app", &|| "releases row".to_string())?;
    let version: String = get(row, "version", &|| format!("release of {app}"))?;
    let what = || format!("release {app} {version}");
    let artifacts_text: String = get(row, "artifacts", &what)?;
    let artifacts: BTreeMap<String, String> = serde_json::from_str(&artifacts_text)
        .map_err(|e| StoreError::Corrupt(format!("release {app} {version}: artifacts: {e}")))?;
    let commit_at_ms: Option<i64> = get(row, "commit_at_ms", &what)?;
    let commit_time = commit_at_ms
        .map(|ms| {
            release::commit_time_text(ms).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "release {app} {version}: commit time {ms} is out of range"
                ))
            })
        })
        .transpose()?;
    Ok(ReleaseRecord {
        created_at_ms: get(row, "created_at_ms", &what)?,
        data: ReleaseData {
            commit: get(row, "commit_sha", &what)?,
            artifacts,
            notes: get(row, "notes", &what)?,
            commit_time,
        },
        created_by: get(row, "created_by", &what)?,
        app,
        version,
    })
}

/// The stored form of a release's commit time (validated by the caller).
fn commit_at_ms(data: &ReleaseData) -> Result<Option<i64>> {
    data.commit_time
        .as_deref()
        .map(|text| {
            release::commit_time_ms(text)
                .map_err(|e| StoreError::Corrupt(format!("encoding the commit time: {e}")))
        })
        .transpose()
}

fn artifacts_json(data: &ReleaseData) -> Result<String> {
    serde_json::to_string(&data.artifacts)
        .map_err(|e| StoreError::Corrupt(format!("encoding artifacts: {e}")))
}

impl Store {
    /// Records a release, or tells how it relates to the one stored, in ONE transaction:
    /// unknown → `Created`; same data → `Exists`; a bare stored release and data asked for
    /// → `Completed` (once); different data → `Conflict` naming the first differing field.
    /// `explicit` (`release create`) compares every field; otherwise (a deploy's flags)
    /// only the fields given. Nothing is written unless it is created or completed.
    pub async fn record_release(&self, r: NewRelease, explicit: bool) -> Result<ReleaseOutcome> {
        let op = || format!("recording release {} {}", r.app, r.version);
        let artifacts = artifacts_json(&r.data)?;
        let commit_at_ms = commit_at_ms(&r.data)?;
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: takes the write lock, and creates it when unknown
        let inserted = sqlx::query(
            "INSERT INTO releases (app, version, created_at_ms, commit_sha, artifacts, notes, \
             created_by, commit_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (app, version) DO NOTHING",
        )
        .bind(&r.app)
        .bind(&r.version)
        .bind(r.now_ms)
        .bind(r.data.commit.as_deref())
        .bind(&artifacts)
        .bind(r.data.notes.as_deref())
        .bind(&r.created_by)
        .bind(commit_at_ms)
        .execute(&mut *tx)
        .await
        .ctx(op)?
        .rows_affected()
            == 1;
        let read = concat!(
            "SELECT ",
            release_cols!(),
            " FROM releases WHERE app = $1 AND version = $2"
        );
        let row = sqlx::query(read)
            .bind(&r.app)
            .bind(&r.version)
            .fetch_one(&mut *tx)
            .await
            .ctx(op)?;
        let stored = release_from_row(&row)?;
        if inserted {
            tx.commit().await.ctx(op)?;
            return Ok(ReleaseOutcome::Created(stored));
        }
        let outcome = match reconcile(Some(&stored.data), &r.data, explicit) {
            Reconciled::Create | Reconciled::Exists => ReleaseOutcome::Exists(stored),
            Reconciled::Conflict {
                field,
                stored: was,
                requested,
            } => ReleaseOutcome::Conflict {
                existing: stored,
                field,
                stored: was,
                requested,
            },
            Reconciled::Complete => {
                sqlx::query(
                    "UPDATE releases SET commit_sha = $1, artifacts = $2, notes = $3, \
                     created_by = COALESCE(created_by, $4), commit_at_ms = $7 \
                     WHERE app = $5 AND version = $6",
                )
                .bind(r.data.commit.as_deref())
                .bind(&artifacts)
                .bind(r.data.notes.as_deref())
                .bind(&r.created_by)
                .bind(&r.app)
                .bind(&r.version)
                .bind(commit_at_ms)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
                let row = sqlx::query(read)
                    .bind(&r.app)
                    .bind(&r.version)
                    .fetch_one(&mut *tx)
                    .await
                    .ctx(op)?;
                let completed = release_from_row(&row)?;
                tx.commit().await.ctx(op)?;
                return Ok(ReleaseOutcome::Completed(completed));
            }
        };
        drop(tx);
        Ok(outcome)
    }

    pub async fn get_release(&self, app: &str, version: &str) -> Result<Option<ReleaseRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            release_cols!(),
            " FROM releases WHERE app = $1 AND version = $2"
        ))
        .bind(app)
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading release {app} {version}"))?;
        row.as_ref().map(release_from_row).transpose()
    }

    /// Releases of an app, newest first.
    pub async fn list_releases(&self, app: &str) -> Result<Vec<ReleaseRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            release_cols!(),
            " FROM releases WHERE app = $1 ORDER BY created_at_ms DESC, version DESC"
        ))
        .bind(app)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("listing releases of {app}"))?;
        rows.iter().map(release_from_row).collect()
    }

    /// Every deployment of an app (or only of one version), oldest first, at most `limit`.
    pub async fn deployment_facts(
        &self,
        app: &str,
        version: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DeploymentFact>> {
        let rows = sqlx::query(
            "SELECT id, env, version, state, kind, created_at_ms FROM deployments \
             WHERE app = $1 AND ($2 IS NULL OR version = $2) ORDER BY id LIMIT $3",
        )
        .bind(app)
        .bind(version)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("listing the deployments of {app}"))?;
        rows.iter()
            .map(|row| {
                let id: i64 = get(row, "id", &|| "deployments row".to_string())?;
                let what = || format!("deployment {id}");
                let state: String = get(row, "state", &what)?;
                let kind: String = get(row, "kind", &what)?;
                Ok(DeploymentFact {
                    id,
                    env: get(row, "env", &what)?,
                    version: get(row, "version", &what)?,
                    state: state
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: state: {e}")))?,
                    kind: kind
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: kind: {e}")))?,
                    created_at_ms: get(row, "created_at_ms", &what)?,
                })
            })
            .collect()
    }

    /// Every version a deployment was ever created for in app/env (any state).
    pub async fn deployed_versions(&self, app: &str, env: &str) -> Result<BTreeSet<String>> {
        let rows =
            sqlx::query("SELECT DISTINCT version FROM deployments WHERE app = $1 AND env = $2")
                .bind(app)
                .bind(env)
                .fetch_all(&self.pool)
                .await
                .ctx(|| format!("listing the versions deployed to {app}/{env}"))?;
        rows.iter()
            .map(|row| get(row, "version", &|| format!("deployment of {app}/{env}")))
            .collect()
    }

    /// What serves every environment of every app (the console's dashboard), by app and
    /// environment name.
    pub async fn all_env_currents(&self) -> Result<Vec<EnvRecord>> {
        let rows = sqlx::query(
            "SELECT app, env, current_version, deployment_id, updated_at_ms FROM environments \
             ORDER BY app, env",
        )
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading every environment's current version".into())?;
        rows.iter().map(env_from_row).collect()
    }

    /// What serves each environment of an app, by environment name.
    pub async fn env_currents(&self, app: &str) -> Result<Vec<EnvRecord>> {
        let rows = sqlx::query(
            "SELECT app, env, current_version, deployment_id, updated_at_ms FROM environments \
             WHERE app = $1 ORDER BY env",
        )
        .bind(app)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the environments of {app}"))?;
        rows.iter().map(env_from_row).collect()
    }
}
