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

pub(crate) fn view(r: DeliveryRecord) -> DeliveryView {
    let d = r.delivery;
    DeliveryView {
        id: r.id,
        key: d.key,
        receiver: d.receiver,
        receiver_type: d.receiver_type,
        app: d.app,
        env: d.env,
        state: d.state,
        summary: d.summary,
        notifications: d.notification_ids.len(),
        attempts: r.attempts,
        last_error: d.last_error,
        created_at_ms: r.created_at_ms,
        next_attempt_at_ms: (d.state == DeliveryState::Pending).then_some(r.next_attempt_at_ms),
        delivered_at_ms: r.delivered_at_ms,
    }
}

/// The deliveries `access` may view (newest first): the limit counts only those, because
/// the (app, env) pairs the caller may not view are left out by the query itself.
pub(crate) async fn visible_deliveries(
    store: &ferry_store::Store,
    access: &Access,
    mut query: DeliveryQuery,
) -> Result<Vec<DeliveryRecord>, ferry_store::StoreError> {
    let may_view = |app: &str, env: &str| {
        access.allows(
            Permission::View,
            Target {
                app: Some(app),
                env: Some(env),
            },
        )
    };
    let scopes = store.delivery_scopes().await?;
    let visible: Vec<(String, String)> = scopes
        .iter()
        .filter(|(app, env)| {
            query.app.as_ref().is_none_or(|a| a == app)
                && query.env.as_ref().is_none_or(|e| e == env)
                && may_view(app, env)
        })
        .cloned()
        .collect();
    // everything there is visible: no need to list the pairs in the query (a pair that
    // appeared since is still checked below)
    let all = visible.len() == scopes.len();
    query.scopes = (!all).then_some(visible);
    let mut rows = store.deliveries(&query).await?;
    rows.retain(|r| may_view(&r.delivery.app, &r.delivery.env));
    Ok(rows)
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
    let query = DeliveryQuery {
        app: params.app,
        env: params.env,
        state: wanted_state,
        scopes: None,
        limit,
    };
    let rows = visible_deliveries(&state.store, &access, query).await?;
    Ok(Json(rows.into_iter().map(view).collect()))
}
