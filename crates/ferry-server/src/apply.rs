//! The apply path beside the handler in `api.rs`: names a manifest uses that must exist on
//! this server (located errors), and what applying it does to what runs
//! (`ferry_core::apply::effects`): removals that stop replicas need `--prune`; scale
//! changes, new services and listener/hosts/TLS/route changes wait for the environment's
//! next deployment.

use axum::http::StatusCode;
use ferry_core::apply::{self, Active, Effects, Running};
use ferry_core::manifest::{self, Manifest};
use ferry_store::Store;

use crate::access::Access;
use crate::api::{ApiFailure, ApiResult};

/// Roles named by approval rules must exist (built-in or custom): a typo would leave a
/// deployment that no one can ever approve.
pub(crate) fn check_names(
    access: &Access,
    text: &str,
    file_name: &str,
    manifest: &Manifest,
) -> ApiResult<()> {
    let roles: Vec<&str> = access.roles.iter().map(|r| r.name.as_str()).collect();
    let mut errors = manifest::check_references(text, file_name, manifest, &roles);
    errors.extend(manifest::check_runtimes(
        text,
        file_name,
        manifest,
        &crate::runtimes::available(),
    ));
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiFailure::with_details(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_manifest",
        format!(
            "{file_name} has {} error(s); nothing was changed",
            errors.len()
        ),
        errors.iter().map(ToString::to_string).collect(),
    ))
}

/// What applying `manifest` over `old` does to what runs now.
pub(crate) async fn effects(
    store: &Store,
    old: Option<&Manifest>,
    manifest: &Manifest,
) -> ApiResult<Effects> {
    if old.is_none() {
        return Ok(Effects::default());
    }
    let running: Vec<Running> = store
        .list_replicas(Some(&manifest.app), None)
        .await?
        .into_iter()
        .filter(|r| !r.draining)
        .map(|r| Running {
            env: r.env,
            service: r.service,
            version: r.version,
        })
        .collect();
    let active: Vec<Active> = store
        .active_deployments()
        .await?
        .into_iter()
        .filter(|d| d.app == manifest.app)
        .map(|d| Active {
            id: d.id,
            env: d.env,
            version: d.version,
            state: d.state.to_string(),
        })
        .collect();
    Ok(apply::effects(
        &manifest.app,
        old,
        manifest,
        &running,
        &active,
    ))
}

/// The environments of `apps` as the proxy may serve them now when that differs from
/// their latest manifests: an environment follows its deployment's manifest revision
/// (`apply` moves no listener), so its old listener is still in use until the next
/// deployment. One record per (app, revision), holding only those environments; for the
/// listener checks of an apply, so no address in use is handed to another app.
pub(crate) async fn serving_revisions(
    store: &Store,
    apps: &[ferry_store::AppRecord],
) -> ApiResult<Vec<ferry_store::AppRecord>> {
    let active = store.active_deployments().await?;
    let mut out = Vec::new();
    for app in apps {
        let Ok(latest) = serde_json::from_str::<Manifest>(&app.manifest_json) else {
            continue;
        };
        // revision -> the environments served with it
        let mut revisions: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for (env, _) in latest.environments.iter() {
            let current = match store.env_current(&app.name, env).await? {
                Some(current) => match current.deployment_id {
                    Some(id) => store.get_deployment(id).await?,
                    None => None,
                },
                None => None,
            };
            let started = active.iter().filter(|d| d.app == app.name && d.env == env);
            for d in current.iter().chain(started) {
                if d.manifest_revision != app.revision {
                    revisions
                        .entry(d.manifest_revision)
                        .or_default()
                        .push(env.to_string());
                }
            }
        }
        for (revision, envs) in revisions {
            let Some(mut record) = store.get_app_at(&app.name, revision).await? else {
                continue;
            };
            let Ok(mut manifest) = serde_json::from_str::<Manifest>(&record.manifest_json) else {
                continue;
            };
            manifest
                .environments
                .0
                .retain(|(env, _)| envs.contains(env));
            record.manifest_json =
                serde_json::to_string(&manifest).map_err(crate::api::internal)?;
            out.push(record);
        }
    }
    Ok(out)
}

/// The answer to a manifest whose removals would stop what runs, without `--prune`.
pub(crate) fn unconfirmed(file_name: &str, effects: &Effects) -> ApiFailure {
    let mut details = effects.stops.clone();
    details.push(format!(
        "to stop them, apply again with --prune (`ferry apply -f {file_name} --prune`); `--dry-run` shows this list"
    ));
    ApiFailure::with_details(
        StatusCode::CONFLICT,
        "conflict",
        format!("{file_name} removes what is running; nothing was changed"),
        details,
    )
}

#[derive(serde::Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    confirm: bool,
}

/// `DELETE /v1/apps/{app}[?confirm=true]`: forgets the app; its replicas stop and its
/// listeners close. Refused (409, listing what would stop) while anything runs or a
/// deployment has not ended, unless confirmed.
pub(crate) async fn delete_app(
    axum::extract::State(state): axum::extract::State<crate::api::AppState>,
    axum::Extension(access): axum::Extension<Access>,
    axum::Extension(slot): axum::Extension<crate::access::AuditSlot>,
    axum::extract::Path(app): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<DeleteQuery>,
) -> ApiResult<axum::Json<ferry_core::api::AppDeleted>> {
    let record = state.store.get_app(&app).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app:?} not found"),
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&record.manifest_json).map_err(crate::api::internal)?;
    // Everything it runs stops, as if every environment were removed.
    let mut nothing = manifest.clone();
    nothing.environments.0.clear();
    let effects = effects(&state.store, Some(&manifest), &nothing).await?;
    if !effects.stops.is_empty() && !query.confirm {
        let mut details = effects.stops.clone();
        details.push(format!(
            "to stop them and delete the app, run `ferry apps delete {app} --yes`"
        ));
        return Err(ApiFailure::with_details(
            StatusCode::CONFLICT,
            "conflict",
            format!("app {app} is running; nothing was deleted"),
            details,
        ));
    }
    if let Some(controller) = &state.controller {
        for id in &effects.abandoned {
            controller
                .abandon(*id, &format!("app {app} deleted by {}", access.caller.name))
                .await?;
        }
    }
    state.store.delete_app(&app).await?;
    slot.with(|n| {
        n.target = Some(format!("app {app}"));
        n.summary = Some(if effects.stops.is_empty() {
            format!("delete app {app} (nothing was running)")
        } else {
            format!("delete app {app}: {}", effects.stops.join("; "))
        });
    });
    if let Some(controller) = &state.controller {
        controller.wake();
    }
    Ok(axum::Json(ferry_core::api::AppDeleted {
        app,
        deleted: true,
        stopped: effects.stops,
    }))
}
