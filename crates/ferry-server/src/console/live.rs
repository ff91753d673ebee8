//! Live updates over server-sent events, for the console's script.
//!
//! - `GET /deployments/{id}/live`: the deployment's timeline events (`event: timeline`,
//!   `id:` = the event's sequence number, so a reconnecting browser resumes after the last
//!   one it saw with `Last-Event-ID`; a first connection passes `?after=` = the last event
//!   the page showed), each batch followed by `event: status` (state, reason, weights).
//!   Between events, `event: sampled` (`data:` the newest sample's time) when the rollout's
//!   traffic was sampled again since the last one sent, at most every [`SAMPLED_EVERY`].
//!   The page then fetches its live parts (`GET /deployments/{id}/parts`, server-rendered:
//!   weights, analysis, charts, actions, gates, hooks) and swaps in those that changed.
//!   Ends with `event: end` once the deployment is over.
//! - `GET /live`: `event: changed` after any timeline event (at most every 300 ms, a burst
//!   making one event); the dashboard then fetches the pieces that changed
//!   (`GET /dashboard/parts` with the fingerprints it has) and swaps them in.
//!
//! Both check the session (and, for a deployment, the API's view permission) before they
//! start, re-check the session at least every [`SESSION_EVERY`], and end when the server
//! stops.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_core::api::DeploymentDetail;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::Deserialize;
use serde_json::json;

use super::{Console, refused};

/// Longest wait for new events before the charts' samples are looked at.
const SAMPLED_EVERY: Duration = Duration::from_secs(2);
/// The session is checked again at least this often.
const SESSION_EVERY: Duration = Duration::from_secs(15);
/// The dashboard is told of changes at most this often.
const DASHBOARD_EVERY: Duration = Duration::from_millis(300);

type Events = BoxStream<'static, Result<Event, Infallible>>;

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    after: Option<i64>,
}

fn last_event_id(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn sse(stream: Events) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(crate) async fn deployment(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<LiveQuery>,
) -> Response {
    let Ok(session) = console.session(&headers).await else {
        return refused(StatusCode::UNAUTHORIZED, "log in again");
    };
    // The API's gate decides whether this person may see the deployment.
    let answer = console
        .api(
            Some(&session),
            Method::GET,
            &format!("/v1/deployments/{id}"),
            None,
            None,
            None,
        )
        .await;
    let detail: DeploymentDetail = match answer.json() {
        Ok(d) => d,
        Err(failure) => return failure.into_response(),
    };
    let Ok(controller) = console.state.controller().cloned() else {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "no controller runs here");
    };
    let after = last_event_id(&headers).or(q.after).unwrap_or(0).max(0);
    let (app, env) = (detail.deployment.app, detail.deployment.env);
    let shutdown = console.state.shutdown.clone();
    struct Cursor {
        console: Console,
        headers: HeaderMap,
        after: i64,
        /// The newest sample the page was told of.
        sampled: Option<i64>,
        session_checked: Instant,
        done: bool,
    }
    let cursor = Cursor {
        sampled: console.state.store.series_head(id).await.ok().flatten(),
        console,
        headers,
        after,
        session_checked: Instant::now(),
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, move |mut cur| {
        let controller = controller.clone();
        let (app, env) = (app.clone(), env.clone());
        async move {
            if cur.done {
                return None;
            }
            if cur.session_checked.elapsed() >= SESSION_EVERY {
                cur.console.session(&cur.headers).await.ok()?;
                cur.session_checked = Instant::now();
            }
            let events = controller
                .wait_events(id, cur.after, SAMPLED_EVERY)
                .await
                .ok()?;
            let mut out: Vec<Result<Event, Infallible>> = Vec::new();
            for e in &events {
                cur.after = cur.after.max(e.seq);
                if let Ok(event) = Event::default()
                    .event("timeline")
                    .id(e.seq.to_string())
                    .json_data(json!({
                        "seq": e.seq,
                        "at": crate::auth::rfc3339(e.at_ms),
                        "at_ms": e.at_ms,
                        "kind": e.kind,
                        "message": e.message,
                    }))
                {
                    out.push(Ok(event));
                }
            }
            if events.is_empty() {
                let head = cur.console.state.store.series_head(id).await.ok().flatten();
                if let Some(t_ms) = head.filter(|_| head != cur.sampled) {
                    cur.sampled = head;
                    out.push(Ok(Event::default().event("sampled").data(t_ms.to_string())));
                }
            } else {
                let d = cur.console.state.store.get_deployment(id).await.ok()??;
                let status = controller.status(&app, Some(&env)).await.ok();
                let rollout = status
                    .and_then(|s| s.environments.into_iter().next())
                    .and_then(|e| e.rollout)
                    .filter(|r| r.deployment_id == id);
                let view = d.view();
                if let Ok(event) = Event::default().event("status").json_data(json!({
                    "state": view.state.to_string(),
                    "reason": view.reason,
                    "canary": rollout.as_ref().map(|r| r.canary_weight),
                    "stage": rollout.as_ref().map(|r| format!("{}/{} {}", r.stage, r.stages, r.stage_name)),
                    "summary": rollout.as_ref().map(|r| r.summary.clone()),
                })) {
                    out.push(Ok(event));
                }
                if view.state.is_terminal() {
                    cur.done = true;
                    out.push(Ok(Event::default().event("end").data("over")));
                }
            }
            Some((futures_util::stream::iter(out), cur))
        }
    })
    .flatten()
    .take_until(async move { shutdown.cancelled().await })
    .boxed();
    sse(stream)
}

pub(crate) async fn changes(State(console): State<Console>, headers: HeaderMap) -> Response {
    let Ok(_session) = console.session(&headers).await else {
        return refused(StatusCode::UNAUTHORIZED, "log in again");
    };
    let Ok(controller) = console.state.controller().cloned() else {
        return refused(StatusCode::SERVICE_UNAVAILABLE, "no controller runs here");
    };
    let shutdown = console.state.shutdown.clone();
    let changed = controller.changes();
    let stream = futures_util::stream::unfold(
        (console, headers, changed),
        |(console, headers, mut changed)| async move {
            changed.changed().await.ok()?;
            tokio::time::sleep(DASHBOARD_EVERY).await;
            let n = *changed.borrow_and_update();
            console.session(&headers).await.ok()?;
            // Browsers drop an event whose data is empty (the SSE spec): never send one.
            let event = Event::default()
                .event("changed")
                .id(n.to_string())
                .data(n.to_string());
            Some((Ok(event), (console, headers, changed)))
        },
    )
    .take_until(async move { shutdown.cancelled().await })
    .boxed();
    sse(stream)
}
