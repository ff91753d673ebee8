//! What the controller reads once per pass instead of once per environment or per replica:
//! every environment's state in one statement, the apps' revisions without their manifests,
//! one replica by id.

use std::collections::BTreeMap;

use crate::{
    AppRecord, Ctx, DeploymentRecord, EnvRecord, ReplicaRecord, Result, Store, deployment_from_row,
    get, replica_from_row,
};

/// One environment as a controller pass sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvState {
    /// The newest deployment of the environment that is unfinished or newer than the one
    /// that made the current version (so, whenever a deployment runs, the newest one that
    /// runs); `None` if there is none.
    pub latest: Option<DeploymentRecord>,
    /// What serves it, if a deployment ever succeeded there.
    pub current: Option<EnvRecord>,
    /// The manifest revision of the deployment that made the current version.
    pub current_revision: Option<i64>,
}

impl EnvState {
    /// The deployment that runs there now: the newest, unless it has finished.
    pub fn active(&self) -> Option<&DeploymentRecord> {
        self.latest.as_ref().filter(|d| !d.state.is_terminal())
    }

    /// The version serving there, if any.
    pub fn current_version(&self) -> Option<&str> {
        self.current.as_ref()?.current_version.as_deref()
    }
}

/// An app's latest revision without its manifest: whether a cached parse is still good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppRevision {
    pub revision: i64,
    /// Changes with every revision; tells an app deleted and applied again (its revisions
    /// start over) from the one cached.
    pub updated_at_ms: i64,
}

impl AppRevision {
    pub fn of(app: &AppRecord) -> AppRevision {
        AppRevision {
            revision: app.revision,
            updated_at_ms: app.updated_at_ms,
        }
    }
}

impl Store {
    /// Every environment that has a current version or an unfinished deployment, by (app,
    /// env), in ONE statement (so one snapshot on every engine: never a finished deployment
    /// beside the current version from before it finished). Reads the newest deployment of
    /// each environment through the (app, env, id) index and the unfinished ones through
    /// their partial index: the cost follows the number of environments, not the history.
    pub async fn env_states(&self) -> Result<BTreeMap<(String, String), EnvState>> {
        let rows = sqlx::query(concat!(
            "SELECT d.id, d.app, d.env, d.version, d.previous_version, d.kind, d.strategy, ",
            "d.state, d.reason, d.requested_by, d.manifest_revision, d.phase, d.row_version, ",
            "d.created_at_ms, d.updated_at_ms, d.finished_at_ms, d.infra_failing_since_ms, ",
            "e.current_version AS env_current_version, e.deployment_id AS env_deployment_id, ",
            "e.updated_at_ms AS env_updated_at_ms, c.manifest_revision AS env_revision ",
            "FROM deployments d ",
            "LEFT JOIN environments e ON e.app = d.app AND e.env = d.env ",
            "LEFT JOIN deployments c ON c.id = e.deployment_id ",
            "WHERE d.id IN (",
            "SELECT (SELECT MAX(x.id) FROM deployments x WHERE x.app = n.app AND x.env = n.env) ",
            "FROM environments n ",
            "UNION SELECT id FROM deployments WHERE finished_at_ms IS NULL) ",
            "ORDER BY d.id"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading the state of every environment".into())?;
        let mut states = BTreeMap::new();
        for row in &rows {
            let deployment = deployment_from_row(row)?;
            let what = || format!("environment {}/{}", deployment.app, deployment.env);
            let current_version: Option<String> = get(row, "env_current_version", &what)?;
            let updated_at_ms: Option<i64> = get(row, "env_updated_at_ms", &what)?;
            let current = match updated_at_ms {
                Some(updated_at_ms) => Some(EnvRecord {
                    app: deployment.app.clone(),
                    env: deployment.env.clone(),
                    current_version,
                    deployment_id: get(row, "env_deployment_id", &what)?,
                    updated_at_ms,
                }),
                None => None,
            };
            let current_revision = get(row, "env_revision", &what)?;
            // By id: the last row of an environment is its newest deployment.
            states.insert(
                (deployment.app.clone(), deployment.env.clone()),
                EnvState {
                    latest: Some(deployment),
                    current,
                    current_revision,
                },
            );
        }
        Ok(states)
    }

    /// Every app's latest revision, by name, without the manifests (see [`AppRevision`]).
    pub async fn app_revisions(&self) -> Result<BTreeMap<String, AppRevision>> {
        let rows = sqlx::query("SELECT name, revision, updated_at_ms FROM apps WHERE revision > 0")
            .fetch_all(&self.pool)
            .await
            .ctx(|| "listing the apps' revisions".into())?;
        rows.iter()
            .map(|row| {
                let name: String = get(row, "name", &|| "apps row".to_string())?;
                let what = || format!("app {name}");
                let revision = AppRevision {
                    revision: get(row, "revision", &what)?,
                    updated_at_ms: get(row, "updated_at_ms", &what)?,
                };
                Ok((name, revision))
            })
            .collect()
    }

    /// One replica by id (`None`: no such row).
    pub async fn get_replica(&self, id: &str) -> Result<Option<ReplicaRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            replica_cols!(),
            " FROM replicas WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading replica {id}"))?;
        row.as_ref().map(replica_from_row).transpose()
    }
}
