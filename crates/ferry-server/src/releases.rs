//! Releases over HTTP: record (immutable), list, show; a deploy's release flags; promotion
//! requests. Decisions (validation, immutability, placement, tags) are in
//! `ferry_core::release`; this is the shell around them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_core::api::{
    DeployRequest, DeploymentView, PromotionRequest, ReleaseCreated, ReleaseEnvView,
    ReleaseRequest, ReleaseView,
};
use ferry_core::manifest::Manifest;
use ferry_core::release::{self, ReleaseData};
use ferry_store::{DeploymentFact, EnvRecord, NewRelease, ReleaseOutcome, ReleaseRecord, Store};

use crate::access::{Access, AuditSlot};
use crate::api::{ApiFailure, ApiResult, AppState, internal};
use crate::clock::now_ms;

/// Most deployments read to tell where releases are deployed.
const MAX_FACTS: u32 = 100_000;

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// The app's stored manifest, or 404.
pub(crate) async fn manifest_of(store: &Store, app: &str) -> ApiResult<Manifest> {
    let record = store
        .get_app(app)
        .await?
        .ok_or_else(|| not_found(format!("app {app:?} not found; apply its manifest first")))?;
    serde_json::from_str(&record.manifest_json)
        .map_err(|e| internal(format!("stored manifest of {app} is unreadable: {e}")))
}

/// Validates release data against the manifest (400 with what is wrong).
fn validated(
    manifest: &Manifest,
    version: &str,
    data: &ReleaseData,
    require_semver: bool,
) -> ApiResult<ReleaseData> {
    release::validate(
        version,
        data,
        manifest.services.keys().map(String::as_str),
        require_semver,
    )
    .map_err(|e| bad_request(format!("release {version}: {e}")))
}

fn conflict(app: &str, version: &str, field: &str, stored: &str, requested: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!(
            "release {app} {version} already exists with a different {field}: {stored} (asked: \
             {requested}); releases are immutable, record a new version"
        ),
    )
}

/// A release with where it is deployed, environments in manifest order.
pub fn view(
    manifest: &Manifest,
    record: &ReleaseRecord,
    facts: &[DeploymentFact],
    currents: &[EnvRecord],
) -> ReleaseView {
    let mut environments = Vec::new();
    for (env, _) in manifest.environments.iter() {
        let mine: Vec<&DeploymentFact> = facts
            .iter()
            .filter(|f| f.env == env && f.version == record.version)
            .collect();
        let states: Vec<_> = mine.iter().map(|f| f.state).collect();
        let current = currents
            .iter()
            .find(|c| c.env == env)
            .and_then(|c| c.current_version.as_deref());
        if let Some(placement) = release::placement(&record.version, current, &states) {
            environments.push(ReleaseEnvView {
                env: env.to_string(),
                placement,
                tag: release::tag(&record.version, record.data.commit.as_deref(), env),
                deployments: mine.iter().map(|f| f.id).collect(),
            });
        }
    }
    ReleaseView {
        app: record.app.clone(),
        version: record.version.clone(),
        commit: record.data.commit.clone(),
        commit_time: record.data.commit_time.clone(),
        artifacts: record.data.artifacts.clone(),
        notes: record.data.notes.clone(),
        created_by: record.created_by.clone(),
        created_at_ms: record.created_at_ms,
        environments,
    }
}

async fn view_one(
    store: &Store,
    manifest: &Manifest,
    record: &ReleaseRecord,
) -> ApiResult<ReleaseView> {
    let facts = store
        .deployment_facts(&record.app, Some(&record.version), MAX_FACTS)
        .await?;
    let currents = store.env_currents(&record.app).await?;
    Ok(view(manifest, record, &facts, &currents))
}

/// `POST /v1/apps/{app}/releases`.
pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(app): Path<String>,
    Json(request): Json<ReleaseRequest>,
) -> ApiResult<(StatusCode, Json<ReleaseCreated>)> {
    let manifest = manifest_of(&state.store, &app).await?;
    let data = validated(&manifest, &request.version, &request.data, true)?;
    if data.commit.is_none() {
        return Err(bad_request(format!(
            "release {}: `commit` is required (the commit the version was built from)",
            request.version
        )));
    }
    slot.with(|n| n.target = Some(format!("release {}", request.version)));
    let outcome = state
        .store
        .record_release(
            NewRelease {
                app: app.clone(),
                version: request.version.clone(),
                data,
                created_by: access.caller.principal(),
                now_ms: now_ms(),
            },
            true,
        )
        .await?;
    let (status, word, record) = match outcome {
        ReleaseOutcome::Created(r) => (StatusCode::CREATED, "created", r),
        ReleaseOutcome::Exists(r) => (StatusCode::OK, "exists", r),
        ReleaseOutcome::Completed(r) => (StatusCode::OK, "completed", r),
        ReleaseOutcome::Conflict {
            field,
            stored,
            requested,
            ..
        } => {
            return Err(conflict(&app, &request.version, field, &stored, &requested));
        }
    };
    let release = view_one(&state.store, &manifest, &record).await?;
    Ok((
        status,
        Json(ReleaseCreated {
            outcome: word.to_string(),
            release,
        }),
    ))
}

/// `GET /v1/apps/{app}/releases`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<ReleaseView>>> {
    let manifest = manifest_of(&state.store, &app).await?;
    let releases = state.store.list_releases(&app).await?;
    let facts = state.store.deployment_facts(&app, None, MAX_FACTS).await?;
    let currents = state.store.env_currents(&app).await?;
    Ok(Json(
        releases
            .iter()
            .map(|r| view(&manifest, r, &facts, &currents))
            .collect(),
    ))
}

/// `GET /v1/apps/{app}/releases/{version}`.
pub async fn show(
    State(state): State<AppState>,
    Path((app, version)): Path<(String, String)>,
) -> ApiResult<Json<ReleaseView>> {
    let manifest = manifest_of(&state.store, &app).await?;
    let record = state
        .store
        .get_release(&app, &version)
        .await?
        .ok_or_else(|| not_found(format!("app {app} has no release {version:?}")))?;
    Ok(Json(view_one(&state.store, &manifest, &record).await?))
}

/// A deploy's release flags: the release is recorded when unknown (its version must then be
/// semver) and must agree with them when known (409). Without flags nothing happens here:
/// the deployment records a bare release, whatever its version's form.
pub async fn record_for_deploy(
    state: &AppState,
    access: &Access,
    app: &str,
    env: &str,
    request: &DeployRequest,
) -> ApiResult<()> {
    if request.release.is_bare() {
        return Ok(());
    }
    let manifest = manifest_of(&state.store, app).await?;
    if manifest.environments.get(env).is_none() {
        // the deployment request explains it
        return Ok(());
    }
    let data = validated(&manifest, &request.version, &request.release, true)?;
    let outcome = state
        .store
        .record_release(
            NewRelease {
                app: app.to_string(),
                version: request.version.clone(),
                data,
                created_by: access.caller.principal(),
                now_ms: now_ms(),
            },
            false,
        )
        .await?;
    match outcome {
        ReleaseOutcome::Conflict {
            field,
            stored,
            requested,
            ..
        } => Err(conflict(app, &request.version, field, &stored, &requested)),
        _ => Ok(()),
    }
}

/// `POST /v1/apps/{app}/promotions`.
pub async fn promote(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(app): Path<String>,
    Json(request): Json<PromotionRequest>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let controller = state.controller()?;
    let view = crate::promotion::request_promotion(
        controller,
        &app,
        &request.from,
        &request.to,
        &access.caller.principal(),
    )
    .await?;
    slot.with(|n| n.target = Some(format!("deployment {}", view.id)));
    Ok((StatusCode::CREATED, Json(view)))
}
