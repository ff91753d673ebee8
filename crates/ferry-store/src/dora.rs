//! The facts the DORA metrics are computed from (`ferry_core::dora`): finished deployments
//! with their release's commit time, and the incidents attributed to deployments
//! (`ferry deploy --fix-of N`, which says deployment N needed a fix, and critical alerts that
//! fired — see `Store::save_alerts`).

use ferry_core::dora::{DeploymentFact, IncidentFact};

use crate::{Ctx, Result, Store, StoreError, get};

/// What the metrics of one app/env are computed from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DoraFacts {
    /// Finished deployments, oldest first.
    pub deployments: Vec<DeploymentFact>,
    /// Incidents attributed to those deployments, oldest first.
    pub incidents: Vec<IncidentFact>,
}

/// An incident to record: deployment `deployment_id` needed a fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewIncident {
    pub deployment_id: i64,
    pub opened_at_ms: i64,
    /// The deployment that fixes it, when known.
    pub fixed_by: Option<i64>,
    /// Who said so (`user:alice`).
    pub opened_by: String,
}

impl Store {
    /// The finished deployments of app/env (with their release's commit time) and the
    /// incidents attributed to them, oldest first, at most `limit` of each (the newest are
    /// kept when there are more).
    pub async fn dora_facts(&self, app: &str, env: &str, limit: u32) -> Result<DoraFacts> {
        let op = || format!("reading the deployment history of {app}/{env}");
        let rows = sqlx::query(
            "SELECT d.id, d.kind, d.state, d.created_at_ms, d.finished_at_ms, r.commit_at_ms \
             FROM deployments d LEFT JOIN releases r ON r.app = d.app AND r.version = d.version \
             WHERE d.app = $1 AND d.env = $2 AND d.finished_at_ms IS NOT NULL \
             ORDER BY d.id DESC LIMIT $3",
        )
        .bind(app)
        .bind(env)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(op)?;
        let mut deployments = rows
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
                    commit_at_ms: get(row, "commit_at_ms", &what)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        deployments.reverse();
        let rows = sqlx::query(
            "SELECT i.id, i.deployment_id, i.opened_at_ms, i.restored_at_ms FROM incidents i \
             JOIN deployments d ON d.id = i.deployment_id \
             WHERE d.app = $1 AND d.env = $2 ORDER BY i.id DESC LIMIT $3",
        )
        .bind(app)
        .bind(env)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(op)?;
        let mut incidents = rows
            .iter()
            .map(|row| {
                let id: i64 = get(row, "id", &|| "incidents row".to_string())?;
                let what = || format!("incident {id}");
                Ok(IncidentFact {
                    deployment_id: get(row, "deployment_id", &what)?,
                    opened_at_ms: get(row, "opened_at_ms", &what)?,
                    restored_at_ms: get(row, "restored_at_ms", &what)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        incidents.reverse();
        Ok(DoraFacts {
            deployments,
            incidents,
        })
    }

    /// Records that a deployment needed a fix; returns the incident's id.
    pub async fn record_incident(&self, incident: &NewIncident) -> Result<i64> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .ctx(|| "recording an incident".into())?;
        insert_incident(&mut conn, incident).await
    }
}

/// Inserts an incident on `conn` (a transaction's, to write it with its cause).
pub(crate) async fn insert_incident(
    conn: &mut sqlx::AnyConnection,
    incident: &NewIncident,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO incidents (deployment_id, opened_at_ms, fixed_by, opened_by) \
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(incident.deployment_id)
    .bind(incident.opened_at_ms)
    .bind(incident.fixed_by)
    .bind(&incident.opened_by)
    .fetch_one(conn)
    .await
    .ctx(|| {
        format!(
            "recording that deployment {} needed a fix",
            incident.deployment_id
        )
    })?;
    get(&row, "id", &|| "incidents row".to_string())
}
