//! The configuration a replica was started with (digest + summary), kept in two columns of
//! `replicas` (migration 0007) outside `ReplicaRecord`.

use crate::{Ctx, Result, Store, StoreError, get};

/// A replica's recorded configuration; `None` when it was never recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub id: String,
    pub digest: Option<String>,
    /// JSON of `ferry_core::config::ConfigSummary` (hashes and versions, no values).
    pub summary: Option<String>,
}

impl Store {
    /// Records the configuration a replica is started with.
    pub async fn set_replica_config(&self, id: &str, digest: &str, summary: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE replicas SET config_digest = $1, config_summary = $2 WHERE id = $3",
        )
        .bind(digest)
        .bind(summary)
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx(|| format!("recording the configuration of replica {id}"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("replica {id}")));
        }
        Ok(())
    }

    /// The recorded configurations of one environment's replicas, ordered by id.
    pub async fn replica_configs(&self, app: &str, env: &str) -> Result<Vec<ReplicaConfig>> {
        let rows = sqlx::query(
            "SELECT id, config_digest, config_summary FROM replicas \
             WHERE app = $1 AND env = $2 ORDER BY id",
        )
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the replica configurations of {app}/{env}"))?;
        rows.iter()
            .map(|row| {
                let what = || "replicas row".to_string();
                Ok(ReplicaConfig {
                    id: get(row, "id", &what)?,
                    digest: get(row, "config_digest", &what)?,
                    summary: get(row, "config_summary", &what)?,
                })
            })
            .collect()
    }
}
