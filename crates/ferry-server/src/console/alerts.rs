//! alerts: the alerts page (`/alerts?app=&env=`) and its silence forms.
//!
//! The page reads `GET /v1/alerts` and `GET /v1/silences` as the logged-in person, so it
//! shows exactly what the API would (permission `view` on each app environment): the alerts
//! firing, pending, silenced and recently resolved, the silences in force, and the recent
//! history. Its forms (`POST /alerts`, `op=silence` or `op=lift`) check the CSRF token and
//! make the API's own request as that person (`POST …/silences`, `DELETE …/silences/{id}`):
//! the gate judges them by `rollback` on the app and environment, answers 403 and audits
//! them as any other. A person who may not silence an environment's alerts sees no form.

use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::alerts::{AlertStatus, AlertView, AlertsAnswer, MAX_REASON, Silence};
use ferry_core::rbac::{Permission, Target};
use serde::Deserialize;
use serde_json::json;

use super::pages::{age, nav};
use super::views::{Nav, Page};
use super::{Console, Session, refused, see_other, seg};
use crate::auth::rfc3339;
use crate::clock::now_ms;

/// Longest app, environment or alert name taken from a query string or a form.
const MAX_NAME_CHARS: usize = 63;
/// Longest silence length (`30d`, `90m`) a form forwards.
const MAX_FOR_CHARS: usize = 16;

#[derive(Deserialize)]
pub(crate) struct AlertsQuery {
    app: Option<String>,
    env: Option<String>,
}

/// One alert as the page lists it.
pub(crate) struct AlertRow {
    pub app: String,
    pub env: String,
    pub alert: String,
    pub severity: String,
    pub status: String,
    /// The state class that colours it.
    pub class: &'static str,
    /// `service=web, version=2.0.0` (or a Prometheus series' labels).
    pub series: String,
    /// The value now, and the one that fired.
    pub value: String,
    pub summary: String,
    /// `12m ago`.
    pub since: String,
    /// `#3` when a silence is in force.
    pub silenced_by: String,
    /// The person may silence it (`rollback` on its app and environment).
    pub may_silence: bool,
}

/// One silence in force.
pub(crate) struct SilenceRow {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub alert: String,
    pub created_by: String,
    pub reason: String,
    pub until: String,
    pub may_lift: bool,
}

/// One line of the history.
pub(crate) struct HistoryRow {
    pub at: String,
    pub app: String,
    pub env: String,
    pub alert: String,
    pub series: String,
    pub kind: String,
    pub class: &'static str,
    pub message: String,
}

/// Firing, pending, silenced or resolved alerts.
pub(crate) struct Section {
    pub title: &'static str,
    pub rows: Vec<AlertRow>,
    /// Its alerts get a silence form (firing and pending ones not silenced yet).
    pub silence_form: bool,
}

#[derive(Template)]
#[template(path = "console/alerts.html")]
pub(crate) struct AlertsPage {
    pub nav: Nav,
    pub app: String,
    pub env: String,
    /// Firing, Pending, Silenced, Resolved.
    pub sections: Vec<Section>,
    pub silences: Vec<SilenceRow>,
    pub history: Vec<HistoryRow>,
    pub error: String,
    pub max_reason: usize,
}

fn bounded(text: &str, max: usize) -> String {
    text.trim().chars().take(max).collect()
}

fn may_silence(session: &Session, app: &str, env: &str) -> bool {
    session
        .access
        .allows(Permission::Rollback, Target::env(app, env))
}

fn row(session: &Session, v: AlertView, now: i64) -> AlertRow {
    let series = ["service", "version"]
        .iter()
        .filter_map(|k| v.labels.get(*k).map(|val| format!("{k}={val}")))
        .collect::<Vec<_>>()
        .join(", ");
    let value = match &v.fired_value {
        Some(fired) if *fired != v.value => format!("{} (fired at {fired})", v.value),
        _ => v.value.clone(),
    };
    let since = match (v.status, v.fired_at_ms, v.resolved_at_ms) {
        (AlertStatus::Resolved, _, Some(at)) => format!("resolved {} ago", age(now, at)),
        (_, Some(at), _) => format!("firing for {}", age(now, at)),
        _ => format!("pending for {}", age(now, v.active_since_ms)),
    };
    AlertRow {
        may_silence: may_silence(session, &v.app, &v.env),
        class: match v.status {
            AlertStatus::Firing => "s-failed",
            AlertStatus::Pending => "s-pending",
            AlertStatus::Resolved => "s-succeeded",
            AlertStatus::Inactive => "s-paused",
        },
        status: v.status.to_string(),
        severity: v.severity.to_string(),
        summary: v.annotations.get("summary").cloned().unwrap_or_default(),
        silenced_by: v.silenced_by.map(|id| format!("#{id}")).unwrap_or_default(),
        series,
        value,
        since,
        app: v.app,
        env: v.env,
        alert: v.alert,
    }
}

pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<AlertsQuery>,
) -> Response {
    let session = match console.session_or_login(&headers, "/alerts").await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let app = bounded(q.app.as_deref().unwrap_or_default(), MAX_NAME_CHARS);
    let env = bounded(q.env.as_deref().unwrap_or_default(), MAX_NAME_CHARS);
    let mut page = AlertsPage {
        nav: nav(&session),
        sections: [
            ("Firing", true),
            ("Pending", true),
            ("Silenced", false),
            ("Resolved", false),
        ]
        .into_iter()
        .map(|(title, silence_form)| Section {
            title,
            rows: Vec::new(),
            silence_form,
        })
        .collect(),
        silences: Vec::new(),
        history: Vec::new(),
        error: String::new(),
        max_reason: MAX_REASON,
        app,
        env,
    };
    let mut query = Vec::new();
    for (key, value) in [("app", &page.app), ("env", &page.env)] {
        if !value.is_empty() {
            query.push(format!("{key}={}", seg(value)));
        }
    }
    let query = query.join("&");
    let now = now_ms();
    match console
        .get::<AlertsAnswer>(&session, &format!("/v1/alerts?{query}"))
        .await
    {
        Ok(answer) => {
            for v in answer.alerts {
                let silenced = v.silenced_by.is_some();
                let status = v.status;
                let section = match status {
                    AlertStatus::Resolved | AlertStatus::Inactive => 3,
                    _ if silenced => 2,
                    AlertStatus::Firing => 0,
                    AlertStatus::Pending => 1,
                };
                page.sections[section].rows.push(row(&session, v, now));
            }
            page.history = answer
                .history
                .into_iter()
                .map(|e| HistoryRow {
                    at: rfc3339(e.at_ms),
                    class: match e.kind.as_str() {
                        "firing" => "s-failed",
                        "pending" => "s-pending",
                        "resolved" => "s-succeeded",
                        _ => "s-paused",
                    },
                    app: e.app,
                    env: e.env,
                    alert: e.alert,
                    series: e.series,
                    kind: e.kind,
                    message: e.message,
                })
                .collect();
        }
        // a refusal (403 naming the app) or a bad filter (400) is shown above the lists
        Err(e) => page.error = e.message,
    }
    let silences = if page.app.is_empty() {
        "/v1/silences".to_string()
    } else {
        format!("/v1/silences?app={}", seg(&page.app))
    };
    if page.error.is_empty()
        && let Ok(silences) = console.get::<Vec<Silence>>(&session, &silences).await
    {
        page.silences = silences
            .into_iter()
            .filter(|s| page.env.is_empty() || s.env == page.env)
            .map(|s| SilenceRow {
                may_lift: may_silence(&session, &s.app, &s.env),
                until: rfc3339(s.until_ms),
                id: s.id,
                app: s.app,
                env: s.env,
                alert: s.alert,
                created_by: s.created_by,
                reason: s.reason,
            })
            .collect();
    }
    page.into_page(StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct SilenceForm {
    #[serde(default)]
    csrf: String,
    /// `silence` or `lift`.
    #[serde(default)]
    op: String,
    #[serde(default)]
    app: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    alert: String,
    #[serde(default, rename = "for")]
    duration: String,
    #[serde(default)]
    reason: String,
    /// The silence to lift.
    #[serde(default)]
    id: i64,
}

/// `POST /alerts`: silence an alert (`op=silence`: app, env, alert, for, reason) or lift a
/// silence (`op=lift`: app, env, id), as the API's own request.
pub(crate) async fn act(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<SilenceForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let app = bounded(&form.app, MAX_NAME_CHARS);
    let env = bounded(&form.env, MAX_NAME_CHARS);
    if app.is_empty() || env.is_empty() {
        return refused(
            StatusCode::BAD_REQUEST,
            "the form names no app and environment",
        );
    }
    let base = format!("/v1/apps/{}/envs/{}/silences", seg(&app), seg(&env));
    let (method, uri, body) = match form.op.as_str() {
        "silence" => (
            Method::POST,
            base,
            Some(json!({
                "alert": bounded(&form.alert, MAX_NAME_CHARS),
                "for": bounded(&form.duration, MAX_FOR_CHARS),
                "reason": bounded(&form.reason, MAX_REASON),
            })),
        ),
        "lift" => (Method::DELETE, format!("{base}/{}", form.id), None),
        _ => return refused(StatusCode::BAD_REQUEST, "no such action"),
    };
    let answer = console
        .api(
            Some(&session),
            method,
            &uri,
            body,
            None,
            extensions.get().cloned(),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other(&format!("/alerts?app={}&env={}", seg(&app), seg(&env)))
}
