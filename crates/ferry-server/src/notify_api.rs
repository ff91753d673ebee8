//! `GET /v1/notifications`: the delivery history (docs/notifications.md).

use axum::Extension;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use ferry_core::notify::{DeliveryState, DeliveryView};
use ferry_core::rbac::{Permission, Target};
use ferry_store::{DeliveryQuery, DeliveryRecord};
use serde::Deserialize;

use crate::access::Access;
use crate::api::{ApiFailure, ApiResult, AppState};

/// Rows answered when `limit` is not given, and at most.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    app: Option<String>,
    env: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
}

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn view(d: DeliveryRecord) -> DeliveryView {
    DeliveryView {
        id: d.id,
        key: d.key,
        receiver: d.receiver,
        receiver_type: d.receiver_type,
        app: d.app,
        env: d.env,
        state: d.state,
        summary: d.summary,
        notifications: d.notification_ids.len(),
        attempts: d.attempts,
        last_error: d.last_error,
        created_at_ms: d.created_at_ms,
        next_attempt_at_ms: (d.state == DeliveryState::Pending).then_some(d.next_attempt_at_ms),
        delivered_at_ms: d.delivered_at_ms,
    }
}

/// Newest first, only of the app environments the caller may view; naming an app or
/// environment the caller may not view is refused (403) before anything is read.
pub async fn history(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(params): Query<HistoryParams>,
) -> ApiResult<Json<Vec<DeliveryView>>> {
    for (what, value) in [("app", &params.app), ("env", &params.env)] {
        if value.as_ref().is_some_and(|v| v.is_empty() || v.len() > 63) {
            return Err(bad_request(format!("`{what}` must be 1 to 63 characters")));
        }
    }
    if let Some(app) = &params.app {
        let target = Target {
            app: Some(app),
            env: params.env.as_deref(),
        };
        if !access.allows(Permission::View, target) {
            return Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("viewing the notifications of {app} needs the permission view there"),
            ));
        }
    }
    let wanted_state = params
        .state
        .as_deref()
        .map(str::parse::<DeliveryState>)
        .transpose()
        .map_err(|e| bad_request(format!("`state`: {e}")))?;
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(bad_request(format!("`limit` must be 1 to {MAX_LIMIT}")));
    }
    let rows = state
        .store
        .deliveries(&DeliveryQuery {
            app: params.app.clone(),
            env: params.env.clone(),
            state: wanted_state,
            limit,
        })
        .await?;
    Ok(Json(
        rows.into_iter()
            .filter(|d| {
                access.allows(
                    Permission::View,
                    Target {
                        app: Some(&d.app),
                        env: Some(&d.env),
                    },
                )
            })
            .map(view)
            .collect(),
    ))
}
