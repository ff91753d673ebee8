//! notify: the notification history page (`/notifications?app=&env=&state=`). It reads
//! `GET /v1/notifications` as the logged-in person, so it shows exactly the deliveries the
//! API would (permission `view` on each app environment, or 403 naming the app); receiver
//! URLs and credentials are never in the history, and errors are stored redacted.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ferry_core::notify::{DeliveryState, DeliveryView};
use serde::Deserialize;

use super::pages::nav;
use super::views::Nav;
use super::{Console, Failure, Session, seg};
use crate::auth::rfc3339;

/// Rows the page asks for.
const LIMIT: u32 = 200;
/// Longest filter text taken from the query string (app and environment names are shorter).
const MAX_FILTER_CHARS: usize = 63;

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    app: Option<String>,
    env: Option<String>,
    state: Option<String>,
}

/// One delivery as the page lists it.
pub(crate) struct DeliveryRow {
    pub created: String,
    pub app: String,
    pub env: String,
    pub receiver: String,
    pub receiver_type: String,
    pub state: String,
    /// The state class that colours it.
    pub class: &'static str,
    pub attempts: i64,
    /// Delivered at, or the next attempt of a pending delivery.
    pub when: String,
    pub summary: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "console/notifications.html")]
pub(crate) struct NotificationsPage {
    pub nav: Nav,
    pub app: String,
    pub env: String,
    pub state: String,
    pub states: Vec<&'static str>,
    pub rows: Vec<DeliveryRow>,
    pub error: String,
    pub limit: u32,
}

fn filter(text: Option<String>) -> String {
    text.unwrap_or_default()
        .trim()
        .chars()
        .take(MAX_FILTER_CHARS)
        .collect()
}

fn row(d: DeliveryView) -> DeliveryRow {
    let when = match (d.delivered_at_ms, d.next_attempt_at_ms) {
        (Some(at), _) => format!("delivered {}", rfc3339(at)),
        (None, Some(next)) => format!("next attempt {}", rfc3339(next)),
        (None, None) => String::new(),
    };
    DeliveryRow {
        created: rfc3339(d.created_at_ms),
        app: d.app,
        env: d.env,
        receiver: d.receiver,
        receiver_type: d.receiver_type,
        class: match d.state {
            DeliveryState::Delivered => "s-succeeded",
            DeliveryState::Failed => "s-failed",
            DeliveryState::Pending => "s-pending",
            DeliveryState::Inhibited => "s-paused",
        },
        state: d.state.to_string(),
        attempts: d.attempts,
        when,
        summary: d.summary,
        last_error: d.last_error.unwrap_or_default(),
    }
}

pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Response {
    console
        .page(&headers, "/notifications", |c, s| async move {
            Ok::<_, Failure>(history(c, &s, q).await)
        })
        .await
}

async fn history(console: &Console, session: &Session, q: HistoryQuery) -> NotificationsPage {
    let mut page = NotificationsPage {
        nav: nav(session),
        app: filter(q.app),
        env: filter(q.env),
        state: filter(q.state),
        states: DeliveryState::ALL.iter().map(|s| s.as_str()).collect(),
        rows: Vec::new(),
        error: String::new(),
        limit: LIMIT,
    };
    let mut uri = format!("/v1/notifications?limit={LIMIT}");
    for (key, value) in [
        ("app", &page.app),
        ("env", &page.env),
        ("state", &page.state),
    ] {
        if !value.is_empty() {
            uri.push_str(&format!("&{key}={}", seg(value)));
        }
    }
    match console.get::<Vec<DeliveryView>>(session, &uri).await {
        Ok(deliveries) => page.rows = deliveries.into_iter().map(row).collect(),
        // a refusal (403 naming the app) or a bad filter (400) is shown above the form
        Err(e) => page.error = e.message,
    }
    page
}
