//! `GET /v1/deployments/{id}/hooks` (view) and `GET /v1/deployments/{id}/hooks/{name}/output`
//! (view_logs): the recorded attempts of a deployment's hooks and their captured output.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferry_core::api::{HookOutput, HookRunView};
use ferry_core::hooks::migration_of_record;
use ferry_core::manifest::Migration;
use ferry_store::HookRunRecord;

use crate::api::{ApiFailure, ApiResult, AppState};

pub fn view(run: &HookRunRecord) -> HookRunView {
    HookRunView {
        id: run.id,
        deployment_id: run.deployment_id,
        phase: run.phase.as_str().to_string(),
        hook: run.hook.clone(),
        attempt: run.attempt,
        state: run.state.as_str().to_string(),
        started_at_ms: run.started_at_ms,
        finished_at_ms: run.finished_at_ms,
        duration_ms: run.finished_at_ms.map(|f| f - run.started_at_ms),
        exit_code: run.exit_code,
        summary: run.summary.clone(),
        migration: match migration_of_record(run.migration.as_deref()) {
            Some(Migration::Irreversible) => Some("irreversible".into()),
            Some(Migration::Down(_)) => Some("reversible".into()),
            None => None,
        },
    }
}

async fn runs_of(state: &AppState, id: i64) -> ApiResult<Vec<HookRunRecord>> {
    if state.store.get_deployment(id).await?.is_none() {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {id} not found"),
        ));
    }
    Ok(state.store.hook_runs(id).await?)
}

pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<HookRunView>>> {
    Ok(Json(runs_of(&state, id).await?.iter().map(view).collect()))
}

pub async fn output(
    State(state): State<AppState>,
    Path((id, name)): Path<(i64, String)>,
) -> ApiResult<Json<Vec<HookOutput>>> {
    // A running attempt's output is not redacted yet on disk: redact on the way out too.
    let secrets: Vec<String> = match state.store.get_deployment(id).await? {
        Some(d) => state
            .secrets
            .env_vars(&d.app, &d.env)
            .await
            .map(|s| s.into_values().filter(|v| v.len() >= 4).collect())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let runs: Vec<HookRunRecord> = runs_of(&state, id)
        .await?
        .into_iter()
        .filter(|r| r.hook == name)
        .collect();
    if runs.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {id} ran no hook named {name:?}"),
        ));
    }
    Ok(Json(
        runs.iter()
            .map(|run| HookOutput {
                run: view(run),
                output: crate::secrets::redact(crate::hooks::read_output(run), &secrets),
            })
            .collect(),
    ))
}
