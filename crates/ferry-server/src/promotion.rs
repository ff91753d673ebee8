//! Promotion between environments: `ferry promote APP --from A --to B`, and the facts of
//! the controller's auto-promotion pass (`gates.auto_promote`), read from the store only;
//! the decision is the pure step `controller::steps::promotion`, applied by the executor.

use ferry_core::api::DeploymentView;
use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_core::release::{EnvFacts, Serving};

use crate::controller::{Controller, RequestError};
use crate::error::ServerError;

fn known_envs(manifest: &Manifest) -> String {
    manifest
        .environments
        .keys()
        .collect::<Vec<&str>>()
        .join(", ")
}

/// Deploys the version serving in `from` to `to` (kind `promote`); the timeline says
/// where it came from.
pub async fn request_promotion(
    controller: &Controller,
    app: &str,
    from: &str,
    to: &str,
    requested_by: &str,
) -> Result<DeploymentView, RequestError> {
    let store = controller.store();
    let record = store.get_app(app).await?.ok_or_else(|| {
        RequestError::NotFound(format!("app {app:?} not found; apply its manifest first"))
    })?;
    let manifest: Manifest = serde_json::from_str(&record.manifest_json).map_err(|e| {
        RequestError::Server(ServerError::Corrupt(format!(
            "stored manifest of {app} is unreadable: {e}"
        )))
    })?;
    if from == to {
        return Err(RequestError::BadRequest(format!(
            "cannot promote from {from} to itself: name two different environments"
        )));
    }
    for env in [from, to] {
        if manifest.environments.get(env).is_none() {
            return Err(RequestError::NotFound(format!(
                "app {app} has no environment {env:?} (it has: {})",
                known_envs(&manifest)
            )));
        }
    }
    let source = store.env_current(app, from).await?;
    let Some(version) = source.as_ref().and_then(|e| e.current_version.clone()) else {
        return Err(RequestError::Conflict(format!(
            "nothing serves in {app}/{from} yet: there is no version to promote"
        )));
    };
    let source_id = source.and_then(|e| e.deployment_id);
    let view = controller
        .request_deployment(app, to, &version, DeploymentKind::Promote, requested_by)
        .await?;
    let message = match source_id {
        Some(id) => format!("promoted from {from} (#{id})"),
        None => format!("promoted from {from}"),
    };
    controller
        .note(view.id, EventKind::Promotion, &message)
        .await;
    Ok(view)
}

/// What the auto-promotion step (`controller::steps::promotion`) needs, read from the store.
pub(crate) async fn env_facts(
    controller: &Controller,
    app: &str,
    manifest: &Manifest,
) -> Result<Vec<EnvFacts>, ServerError> {
    let store = controller.store();
    let mut facts = Vec::new();
    for (env, config) in manifest.environments.iter() {
        let gates = config.gates.as_ref();
        let auto_promote_from = gates
            .filter(|g| g.auto_promote)
            .and_then(|g| g.after.clone());
        let mut serving = None;
        if let Some(current) = store.env_current(app, env).await?
            && let (Some(version), Some(id)) = (current.current_version, current.deployment_id)
            && let Some(d) = store.get_deployment(id).await?
        {
            serving = Some(Serving {
                version,
                deployment_id: d.id,
                state: d.state,
                kind: d.kind,
                requested_by: d.requested_by,
            });
        }
        let (deployed_versions, busy) = if auto_promote_from.is_some() {
            let busy = store.latest_deployment(app, env).await?.is_some_and(|d| {
                matches!(
                    d.state,
                    DeploymentState::Progressing | DeploymentState::RollingBack
                )
            });
            (store.deployed_versions(app, env).await?, busy)
        } else {
            (Default::default(), false)
        };
        facts.push(EnvFacts {
            name: env.to_string(),
            auto_promote_from,
            serving,
            deployed_versions,
            busy,
        });
    }
    Ok(facts)
}
