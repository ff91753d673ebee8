//! DORA metrics over HTTP, shaped like GitLab's DORA API (`metric`, `interval`,
//! `start_date`, `end_date`). The computation is `ferry_core::dora`; this reads the facts.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::dora::{self, DoraQuery, Interval, Metric};
use serde::Deserialize;

use crate::api::{ApiFailure, ApiResult, AppState};
use crate::clock::now_ms;

/// Most deployments of one app/env read for the metrics (the newest are kept).
const MAX_FACTS: u32 = 200_000;

#[derive(Debug, Deserialize)]
pub struct DoraParams {
    metric: Option<Metric>,
    interval: Option<Interval>,
    start_date: Option<String>,
    end_date: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `GET /v1/apps/{app}/envs/{env}/dora`: the whole report, or with `metric` GitLab's
/// `[{date, value}]`.
pub async fn metrics(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(params): Query<DoraParams>,
) -> ApiResult<Response> {
    let (start_ms, end_ms) = dora::window(
        params.start_date.as_deref(),
        params.end_date.as_deref(),
        now_ms(),
    )
    .map_err(|e| bad_request(e.to_string()))?;
    if state.store.get_app(&app).await?.is_none() {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app:?} not found"),
        ));
    }
    let facts = state.store.dora_facts(&app, &env, MAX_FACTS).await?;
    let query = DoraQuery {
        app,
        env,
        start_ms,
        end_ms,
        interval: params.interval.unwrap_or(Interval::Daily),
    };
    let report = dora::compute(&facts, &[], &query).map_err(|e| bad_request(e.to_string()))?;
    Ok(match params.metric {
        Some(metric) => Json(dora::series(&report, metric)).into_response(),
        None => Json(report).into_response(),
    })
}
