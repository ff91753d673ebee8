//! The facts the DORA metrics are computed from (`ferry_core::dora`).

use ferry_core::dora::DeploymentFact;

use crate::{Ctx, Result, Store, StoreError, get};

impl Store {
    /// The finished deployments of app/env, oldest first, at most `limit` (the newest are
    /// kept when there are more). The commit time is not stored yet.
    pub async fn dora_facts(
        &self,
        app: &str,
        env: &str,
        limit: u32,
    ) -> Result<Vec<DeploymentFact>> {
        let rows = sqlx::query(
            "SELECT id, kind, state, created_at_ms, finished_at_ms FROM deployments \
             WHERE app = $1 AND env = $2 AND finished_at_ms IS NOT NULL \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(app)
        .bind(env)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the deployment history of {app}/{env}"))?;
        let mut facts = rows
            .iter()
            .map(|row| {
                let id: i64 = get(row, "id", &|| "deployments row".to_string())?;
                let what = || format!("deployment {id}");
                let state: String = get(row, "state", &what)?;
                let kind: String = get(row, "kind", &what)?;
                Ok(DeploymentFact {
                    id,
                    app: app.to_string(),
                    env: env.to_string(),
                    kind: kind
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: kind: {e}")))?,
                    state: state
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: state: {e}")))?,
                    started_at_ms: get(row, "created_at_ms", &what)?,
                    finished_at_ms: get(row, "finished_at_ms", &what)?,
                    commit_at_ms: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        facts.reverse();
        Ok(facts)
    }
}
