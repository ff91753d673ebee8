//! The console's pages (GET). Each reads through the API's own handlers (or, for the
//! dashboard, the controller's `status` behind the same permission decision) as the
//! logged-in person, so a page never shows what the API would refuse that person.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::api::{AppStatus, DeploymentDetail, EnvStatus, HookOutput, HookRunView};
use ferry_core::config::{EnvConfig, diff};
use ferry_core::console::{Action, Facts, Reason, actions};
use ferry_core::rbac::{Permission, Target};
use serde::Deserialize;
use serde_json::Value;

use super::views::{
    ActionForm, AnalysisRow, AppPage, AppRow, AuditPage, AuditRow, Cell, Dashboard, DashboardLive,
    DashboardParts, DeploymentPage, DiffRow, EnvView, EventRow, GateView, HookView, LoginLinkPage,
    LoginPage, Nav, Page, ReleaseRow, RolloutBox, RolloutRow, UserRow, UsersPage, WaitingRow,
    Weight, fingerprint,
};
use super::{Console, Failure, NoSession, Session, cookie, refused, safe_next, seg};
use crate::auth::rfc3339;
use crate::clock::now_ms;

/// Longest filter text taken from a query string.
const MAX_FILTER_CHARS: usize = 64;

pub(crate) fn nav(session: &Session) -> Nav {
    Nav {
        user: session.user().to_string(),
        csrf: session.csrf.clone(),
        manage_users: session.access.anywhere(Permission::ManageUsers),
    }
}

fn bounded(text: Option<String>) -> String {
    text.unwrap_or_default()
        .trim()
        .chars()
        .take(MAX_FILTER_CHARS)
        .collect()
}

/// `42s`, `5m`, `3h`, `2d` ago.
pub(crate) fn age(now: i64, at: i64) -> String {
    let s = (now - at).max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

// ---------------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
    ended: Option<String>,
    out: Option<String>,
}

pub(crate) async fn login_form(headers: HeaderMap, Query(q): Query<LoginQuery>) -> Response {
    login_page(&headers, q.next.as_deref().unwrap_or("/"), "", "", {
        if q.ended.is_some() {
            "Your session ended; log in again."
        } else if q.out.is_some() {
            "You are logged out."
        } else {
            ""
        }
    })
}

/// The login form with a fresh double-submit CSRF cookie (or the one the browser has).
pub(crate) fn login_page(
    headers: &HeaderMap,
    next: &str,
    username: &str,
    error: &str,
    notice: &str,
) -> Response {
    let csrf = login_csrf(headers);
    let status = if error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut response = LoginPage {
        nav: Nav::default(),
        csrf: csrf.clone(),
        next: safe_next(next).to_string(),
        username: username.chars().take(64).collect(),
        error: error.to_string(),
        notice: notice.to_string(),
    }
    .into_page(status);
    response.headers_mut().insert(
        header::SET_COOKIE,
        super::set_cookie(headers, super::LOGIN_COOKIE, &csrf, 3600),
    );
    response
}

/// The login forms' double-submit CSRF token: the browser's `ferry_login` cookie, or a new one.
fn login_csrf(headers: &HeaderMap) -> String {
    cookie(headers, super::LOGIN_COOKIE)
        .filter(|c| c.len() == 64 && c.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .unwrap_or_else(|| crate::auth::hex(&rand::random::<[u8; 32]>()))
}

/// `GET /login/link/{token}`: the page of a one-time login link, with a "Sign in" button
/// (a POST to the same address, which uses the link). A GET uses nothing up, so a chat
/// app's link-preview bot leaves the link valid.
pub(crate) async fn login_link_page(headers: HeaderMap, Path(token): Path<String>) -> Response {
    let csrf = login_csrf(&headers);
    let mut response = LoginLinkPage {
        nav: Nav::default(),
        csrf: csrf.clone(),
        // A token is `ferry_` and 64 hex digits; anything longer is not one.
        token: token.chars().take(128).collect(),
    }
    .into_page(StatusCode::OK);
    let headers_out = response.headers_mut();
    headers_out.insert(
        header::SET_COOKIE,
        super::set_cookie(&headers, super::LOGIN_COOKIE, &csrf, 3600),
    );
    headers_out.insert(
        header::HeaderName::from_static("x-robots-tag"),
        header::HeaderValue::from_static("noindex, nofollow"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct DashboardQuery {
    app: Option<String>,
}

pub(crate) async fn dashboard(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<DashboardQuery>,
) -> Response {
    console
        .page(&headers, "/", |c, s| async move {
            dashboard_page(c, &s, bounded(q.app)).await
        })
        .await
}

pub(crate) async fn dashboard_page(
    console: &Console,
    session: &Session,
    filter: String,
) -> Result<Dashboard, Failure> {
    Ok(Dashboard {
        nav: nav(session),
        live: dashboard_live(console, session, &filter).await?,
        filter,
    })
}

/// What the dashboard's live part shows for this person and filter, with fingerprints.
async fn dashboard_live(
    console: &Console,
    session: &Session,
    filter: &str,
) -> Result<DashboardLive, Failure> {
    let controller = console.state.controller().map_err(|f| Failure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: f.message().to_string(),
    })?;
    let needle = filter.to_lowercase();
    let mut total = 0;
    let statuses: Vec<AppStatus> = controller
        .overview(|name| {
            let visible = session.access.allows(
                Permission::View,
                Target {
                    app: Some(name),
                    env: None,
                },
            );
            total += usize::from(visible);
            visible && (needle.is_empty() || name.to_lowercase().contains(&needle))
        })
        .await
        .map_err(|e| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })?;
    let now = now_ms();
    let mut columns: Vec<String> = Vec::new();
    for env in statuses.iter().flat_map(|s| &s.environments) {
        if !columns.contains(&env.env) {
            columns.push(env.env.clone());
        }
    }
    let mut rows = Vec::with_capacity(statuses.len());
    let mut rollouts = Vec::new();
    let mut waiting = Vec::new();
    for status in &statuses {
        let cells: Vec<Cell> = columns
            .iter()
            .map(
                |column| match status.environments.iter().find(|e| &e.env == column) {
                    Some(env) => cell(env, now),
                    None => Cell {
                        present: false,
                        version: String::new(),
                        state: String::new(),
                        at_ms: 0,
                        age: String::new(),
                        who: String::new(),
                        deployment: None,
                        weight: String::new(),
                    },
                },
            )
            .collect();
        // everything a row shows but the ages
        let shown: Vec<_> = cells
            .iter()
            .map(|c| {
                (
                    c.present,
                    &c.version,
                    &c.state,
                    c.at_ms,
                    &c.who,
                    c.deployment,
                    &c.weight,
                )
            })
            .collect();
        rows.push(AppRow {
            fp: fingerprint(&(&status.app, shown)),
            app: status.app.clone(),
            cells,
        });
        for env in &status.environments {
            if let Some(r) = &env.rollout {
                rollouts.push(RolloutRow {
                    app: env.app.clone(),
                    env: env.env.clone(),
                    id: r.deployment_id,
                    version: r.canary_version.clone(),
                    stable: r.stable_version.clone(),
                    weight: Weight::new(r.canary_weight),
                    stage: format!("{}/{} {}", r.stage, r.stages, r.stage_name),
                    paused: r.paused,
                });
            }
            if let Some(d) = &env.latest_deployment
                && d.state.is_waiting()
            {
                waiting.push(WaitingRow {
                    app: d.app.clone(),
                    env: d.env.clone(),
                    id: d.id,
                    version: d.version.clone(),
                    state: d.state.to_string(),
                    requested_by: d.requested_by.clone(),
                    waiting_for: d
                        .gates
                        .iter()
                        .filter(|g| g.state != ferry_core::gates::GateState::Met)
                        .map(|g| format!("{}: {}", g.gate, g.detail))
                        .collect(),
                });
            }
        }
    }
    let apps: Vec<&str> = rows.iter().map(|r| r.app.as_str()).collect();
    Ok(DashboardLive {
        frame: fingerprint(&(&columns, &apps, total)),
        now_ms: now,
        columns,
        rollouts_fp: fingerprint(&rollouts),
        waiting_fp: fingerprint(&waiting),
        rows,
        rollouts,
        waiting,
        total,
    })
}

#[derive(Deserialize)]
pub(crate) struct DashboardPartsQuery {
    app: Option<String>,
    /// The fingerprints the page has, `.`-separated: frame, waiting, rollouts, then each row.
    have: Option<String>,
}

/// `GET /dashboard/parts?app=FILTER&have=FINGERPRINTS`: the dashboard's pieces that differ
/// from the fingerprints the page has (see [`DashboardParts`]), for the console's script
/// (401 without a session: the script then says to reload).
pub(crate) async fn dashboard_parts(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<DashboardPartsQuery>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(session) => session,
        Err(NoSession::Failed(response)) => return response,
        Err(NoSession::Missing | NoSession::Ended(_)) => {
            return refused(
                StatusCode::UNAUTHORIZED,
                "Your session ended; log in again.",
            );
        }
    };
    let mut live = match dashboard_live(&console, &session, &bounded(q.app)).await {
        Ok(live) => live,
        Err(failure) => return failure.into_response(),
    };
    // At most one fingerprint per piece is looked at, whatever the length of `have`.
    let have = q.have.unwrap_or_default();
    let have: Vec<&str> = have.split('.').take(live.rows.len() + 4).collect();
    let full = have.len() != live.rows.len() + 3 || have[0] != live.frame;
    let rows = std::mem::take(&mut live.rows);
    let rows = if full {
        rows
    } else {
        rows.into_iter()
            .zip(&have[3..])
            .filter(|(row, fp)| row.fp != **fp)
            .map(|(row, _)| row)
            .collect()
    };
    let parts = DashboardParts {
        full,
        send_waiting: full || have[1] != live.waiting_fp,
        send_rollouts: full || have[2] != live.rollouts_fp,
        live: DashboardLive { rows, ..live },
    };
    parts.into_page(StatusCode::OK)
}

fn cell(env: &EnvStatus, now: i64) -> Cell {
    let latest = env.latest_deployment.as_ref();
    let at_ms = latest
        .map(|d| d.finished_at_ms.unwrap_or(d.updated_at_ms))
        .unwrap_or_default();
    Cell {
        present: true,
        version: env
            .current_version
            .clone()
            .unwrap_or_else(|| "—".to_string()),
        state: latest.map(|d| d.state.to_string()).unwrap_or_default(),
        at_ms,
        age: latest.map(|_| age(now, at_ms)).unwrap_or_default(),
        who: latest.map(|d| d.requested_by.clone()).unwrap_or_default(),
        deployment: latest.map(|d| d.id),
        weight: env
            .rollout
            .as_ref()
            .map(|r| format!("{:.0} %", r.canary_weight))
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment
// ---------------------------------------------------------------------------------------------

pub(crate) async fn deployment(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    console
        .page(&headers, &format!("/deployments/{id}"), |c, s| async move {
            deployment_page(c, &s, id).await
        })
        .await
}

/// `GET /deployments/{id}/parts`: the deployment page's live parts alone, for the
/// console's script (401 without a session: the script then says to reload).
pub(crate) async fn deployment_parts(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let session = match console.session(&headers).await {
        Ok(session) => session,
        Err(NoSession::Failed(response)) => return response,
        Err(NoSession::Missing | NoSession::Ended(_)) => {
            return refused(
                StatusCode::UNAUTHORIZED,
                "Your session ended; log in again.",
            );
        }
    };
    match deployment_page(&console, &session, id).await {
        Ok(page) => page.as_parts().into_page(StatusCode::OK),
        Err(failure) => failure.into_response(),
    }
}

async fn deployment_page(
    console: &Console,
    session: &Session,
    id: i64,
) -> Result<DeploymentPage, Failure> {
    let detail: DeploymentDetail = console
        .get(session, &format!("/v1/deployments/{id}"))
        .await?;
    let d = detail.deployment;
    let status: AppStatus = console
        .get(
            session,
            &format!("/v1/apps/{}/status?env={}", seg(&d.app), seg(&d.env)),
        )
        .await?;
    let env = status.environments.into_iter().next();
    let latest = env
        .as_ref()
        .and_then(|e| e.latest_deployment.as_ref())
        .is_some_and(|l| l.id == d.id);
    let rollout = env
        .as_ref()
        .and_then(|e| e.rollout.clone())
        .filter(|r| r.deployment_id == d.id);
    let gates: Value = console
        .get(session, &format!("/v1/deployments/{id}/gates"))
        .await
        .unwrap_or(Value::Null);
    let gate_rows: Vec<ferry_core::gates::GateRow> =
        serde_json::from_value(gates["gates"].clone()).unwrap_or_default();
    let approvals: Value = console
        .get(session, &format!("/v1/deployments/{id}/approvals"))
        .await
        .unwrap_or(Value::Null);
    let hook_runs: Vec<HookRunView> = console
        .get(session, &format!("/v1/deployments/{id}/hooks"))
        .await
        .unwrap_or_default();
    let may = |p: Permission| {
        session.access.allows(
            p,
            Target {
                app: Some(&d.app),
                env: Some(&d.env),
            },
        )
    };
    let mut outputs: Vec<HookOutput> = Vec::new();
    if may(Permission::ViewLogs) {
        let names: BTreeSet<&str> = hook_runs.iter().map(|r| r.hook.as_str()).collect();
        for name in names {
            if let Ok(mut found) = console
                .get::<Vec<HookOutput>>(
                    session,
                    &format!("/v1/deployments/{id}/hooks/{}/output", seg(name)),
                )
                .await
            {
                outputs.append(&mut found);
            }
        }
    }
    let can_roll_back =
        env.as_ref().is_some_and(|e| e.current_version.is_some()) && d.previous_version.is_some();
    let offered = actions(
        Facts {
            state: d.state,
            requested_by: &d.requested_by,
            latest,
            rollout_paused: rollout.as_ref().map(|r| r.paused),
            can_roll_back,
            gates: &gate_rows,
        },
        &session.principal(),
        may,
    );
    let forms = offered
        .into_iter()
        .map(|action| ActionForm {
            path: if action.on_deployment() {
                format!("/deployments/{id}/{}", action.segment())
            } else {
                format!(
                    "/apps/{}/envs/{}/{}",
                    seg(&d.app),
                    seg(&d.env),
                    action.segment()
                )
            },
            label: action.label(),
            reason: match action.reason() {
                Reason::None => "none",
                Reason::Optional => "optional",
                Reason::Required => "required",
            },
            danger: matches!(
                action,
                Action::Abort | Action::Rollback | Action::Reject | Action::OverrideFreeze
            ),
            id: action.segment().to_string(),
        })
        .collect();
    let last_seq = detail.events.last().map(|e| e.seq).unwrap_or(0);
    let approvals = approvals["approvals"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    format!(
                        "{} {} at {}{}",
                        a["approver"].as_str().unwrap_or("?"),
                        if a["approved"].as_bool() == Some(true) {
                            "approved"
                        } else {
                            "rejected"
                        },
                        rfc3339(a["at_ms"].as_i64().unwrap_or(0)),
                        a["reason"]
                            .as_str()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(DeploymentPage {
        nav: nav(session),
        id: d.id,
        app: d.app.clone(),
        env: d.env.clone(),
        version: d.version.clone(),
        previous: d.previous_version.clone().unwrap_or_default(),
        strategy: d.strategy.clone(),
        kind: d.kind.to_string(),
        state: d.state.to_string(),
        reason: d.reason.clone().unwrap_or_default(),
        requested_by: d.requested_by.clone(),
        created: rfc3339(d.created_at_ms),
        finished: d.finished_at_ms.map(rfc3339).unwrap_or_default(),
        live: !d.state.is_terminal(),
        rollout: rollout.map(|r| RolloutBox {
            weight: Weight::new(r.canary_weight),
            canary_version: r.canary_version,
            stable_version: r.stable_version,
            stage: format!("{}/{} {}", r.stage, r.stages, r.stage_name),
            summary: r.summary,
            waiting_for: r.waiting_for.unwrap_or_default(),
        }),
        analysis: detail.analysis.iter().map(AnalysisRow::of).collect(),
        charts: super::charts::charts(
            &detail.series,
            &[
                d.previous_version.as_deref().unwrap_or_default(),
                &d.version,
            ],
            d.created_at_ms,
        ),
        events: detail
            .events
            .iter()
            .map(|e| EventRow {
                seq: e.seq,
                at: rfc3339(e.at_ms),
                kind: e.kind.to_string(),
                message: e.message.clone(),
            })
            .collect(),
        last_seq,
        gates: gate_rows
            .iter()
            .map(|g| GateView {
                gate: g.gate.clone(),
                state: g.state.to_string(),
                detail: g.detail.clone(),
            })
            .collect(),
        approvals,
        hooks: hook_runs
            .iter()
            .map(|r| HookView {
                phase: r.phase.clone(),
                hook: r.hook.clone(),
                attempt: r.attempt,
                state: r.state.clone(),
                summary: r.summary.clone().unwrap_or_default(),
                duration: r
                    .duration_ms
                    .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                output: outputs
                    .iter()
                    .find(|o| o.run.id == r.id)
                    .map(|o| o.output.clone())
                    .unwrap_or_default(),
            })
            .collect(),
        actions: forms,
    })
}

/// The change record, downloaded as a file (the API's answer, as the API's gate allows).
pub(crate) async fn change_record(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let session = match console
        .session_or_login(&headers, &format!("/deployments/{id}"))
        .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let answer = console
        .api(
            Some(&session),
            Method::GET,
            &format!("/v1/deployments/{id}/change-record"),
            None,
            None,
            None,
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"change-record-{id}.json\""),
            ),
        ],
        answer.body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// App
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct AppQuery {
    left: Option<String>,
    right: Option<String>,
}

pub(crate) async fn app(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<AppQuery>,
) -> Response {
    let back = format!("/apps/{}", seg(&app));
    console
        .page(&headers, &back, |c, s| async move {
            app_page(c, &s, &app, q).await
        })
        .await
}

async fn app_page(
    console: &Console,
    session: &Session,
    app: &str,
    q: AppQuery,
) -> Result<AppPage, Failure> {
    let status: AppStatus = console
        .get(session, &format!("/v1/apps/{}/status", seg(app)))
        .await?;
    let releases: Vec<ferry_core::api::ReleaseView> = console
        .get(session, &format!("/v1/apps/{}/releases", seg(app)))
        .await
        .unwrap_or_default();
    let env_names: Vec<String> = status.environments.iter().map(|e| e.env.clone()).collect();
    let mut envs = Vec::new();
    for e in &status.environments {
        let gates = match &e.latest_deployment {
            Some(d) => console
                .get::<Value>(session, &format!("/v1/deployments/{}/gates", d.id))
                .await
                .ok()
                .and_then(|g| {
                    serde_json::from_value::<Vec<ferry_core::gates::GateRow>>(g["gates"].clone())
                        .ok()
                })
                .unwrap_or_default()
                .into_iter()
                .map(|g| format!("{} ({}): {}", g.gate, g.state, g.detail))
                .collect(),
            None => Vec::new(),
        };
        envs.push(EnvView {
            env: e.env.clone(),
            version: e.current_version.clone().unwrap_or_else(|| "—".into()),
            tag: e.release_tag.clone().unwrap_or_default(),
            state: e
                .latest_deployment
                .as_ref()
                .map(|d| d.state.to_string())
                .unwrap_or_default(),
            deployment: e.latest_deployment.as_ref().map(|d| d.id),
            replicas: format!(
                "{} of {} healthy",
                e.replicas.iter().filter(|r| r.in_traffic).count(),
                e.replicas.len()
            ),
            gates,
        });
    }
    let releases = releases
        .into_iter()
        .take(50)
        .map(|r| ReleaseRow {
            commit: r.commit.clone().unwrap_or_default(),
            created: rfc3339(r.created_at_ms),
            by: r.created_by.clone().unwrap_or_default(),
            notes: r.notes.clone().unwrap_or_default(),
            placements: r
                .environments
                .iter()
                .map(|p| {
                    format!(
                        "{}: {}{}",
                        p.env,
                        serde_json::to_value(p.placement)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        p.tag
                            .as_deref()
                            .map(|t| format!(" ({t})"))
                            .unwrap_or_default()
                    )
                })
                .collect(),
            version: r.version,
        })
        .collect();
    let pick = |wanted: Option<String>, index: usize| {
        wanted
            .filter(|w| env_names.contains(w))
            .or_else(|| env_names.get(index).cloned())
            .unwrap_or_default()
    };
    let left = pick(q.left, 0);
    let right = pick(q.right, env_names.len().saturating_sub(1));
    let mut page = AppPage {
        nav: nav(session),
        app: app.to_string(),
        revision: status.revision,
        envs,
        env_names: env_names.clone(),
        releases,
        left: left.clone(),
        right: right.clone(),
        diff: Vec::new(),
        left_secrets: Vec::new(),
        right_secrets: Vec::new(),
        diff_error: String::new(),
    };
    if !left.is_empty() && !right.is_empty() {
        let config = |env: String| async move {
            console
                .get::<EnvConfig>(
                    session,
                    &format!("/v1/apps/{}/envs/{}/config", seg(app), seg(&env)),
                )
                .await
        };
        match (config(left).await, config(right).await) {
            (Ok(l), Ok(r)) => {
                page.diff = diff(&l, &r)
                    .into_iter()
                    .map(|d| DiffRow {
                        service: d.service,
                        name: d.name,
                        left: d.left.unwrap_or_else(|| "(absent)".into()),
                        right: d.right.unwrap_or_else(|| "(absent)".into()),
                    })
                    .collect();
                let secrets = |c: &EnvConfig| -> Vec<String> {
                    let mut out: Vec<String> = c
                        .services
                        .iter()
                        .flat_map(|s| &s.secrets)
                        .map(|s| format!("{} v{} {}", s.name, s.version, s.fingerprint))
                        .collect();
                    out.sort();
                    out.dedup();
                    out
                };
                page.left_secrets = secrets(&l);
                page.right_secrets = secrets(&r);
            }
            (Err(e), _) | (_, Err(e)) => page.diff_error = e.message,
        }
    }
    Ok(page)
}

// ---------------------------------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    app: Option<String>,
    env: Option<String>,
    actor: Option<String>,
    /// RFC 3339 or `2026-12-06`.
    since: Option<String>,
    until: Option<String>,
}

fn parse_time(text: &str) -> Result<Option<i64>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_string()
    };
    humantime::parse_rfc3339_weak(&full)
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .ok()
        })
        .map_err(|e| {
            format!("{text:?} is not a time (use 2026-12-06 or 2026-12-06T08:00:00Z): {e}")
        })
}

pub(crate) async fn audit(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    console
        .page(&headers, "/audit", |c, s| async move {
            Ok::<_, Failure>(audit_page(c, &s, q).await)
        })
        .await
}

async fn audit_page(console: &Console, session: &Session, q: AuditQuery) -> AuditPage {
    let mut page = AuditPage {
        nav: nav(session),
        app: bounded(q.app),
        env: bounded(q.env),
        actor: bounded(q.actor),
        since: bounded(q.since),
        until: bounded(q.until),
        rows: Vec::new(),
        verification: String::new(),
        verified: false,
        error: String::new(),
    };
    let mut uri = "/v1/audit?limit=200".to_string();
    for (key, value) in [
        ("app", &page.app),
        ("env", &page.env),
        ("actor", &page.actor),
    ] {
        if !value.is_empty() {
            uri.push_str(&format!("&{key}={}", seg(value)));
        }
    }
    for (key, value) in [("since_ms", &page.since), ("until_ms", &page.until)] {
        match parse_time(value) {
            Ok(Some(ms)) => uri.push_str(&format!("&{key}={ms}")),
            Ok(None) => {}
            Err(e) => page.error = e,
        }
    }
    if page.error.is_empty() {
        match console
            .get::<Vec<ferry_core::audit::AuditRecord>>(session, &uri)
            .await
        {
            Ok(records) => {
                page.rows = records
                    .into_iter()
                    .rev()
                    .map(|r| AuditRow {
                        seq: r.seq,
                        at: rfc3339(r.entry.at_ms),
                        actor: r.entry.actor,
                        action: r.entry.action,
                        target: [
                            r.entry.app,
                            r.entry.env,
                            r.entry.target,
                            Some(r.entry.summary).filter(|s| !s.is_empty()),
                        ]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" · "),
                        outcome: r.entry.outcome,
                        reason: r.entry.reason.unwrap_or_default(),
                    })
                    .collect()
            }
            Err(e) => page.error = e.message,
        }
    }
    match console.get::<Value>(session, "/v1/audit/verify").await {
        Ok(v) => {
            page.verified = v["ok"].as_bool() == Some(true);
            page.verification = if page.verified {
                format!(
                    "The chain of {} records verifies (head {}).",
                    v["count"],
                    v["head_hash"].as_str().unwrap_or("?")
                )
            } else {
                format!(
                    "The chain does NOT verify: {}",
                    v["problem"].as_str().unwrap_or("unknown problem")
                )
            };
        }
        Err(e) => page.verification = format!("Verification not available to you: {}", e.message),
    }
    page
}

// ---------------------------------------------------------------------------------------------
// Users and tokens
// ---------------------------------------------------------------------------------------------

pub(crate) async fn users(State(console): State<Console>, headers: HeaderMap) -> Response {
    console
        .page(&headers, "/users", |c, s| async move {
            users_page(c, &s, String::new(), String::new()).await
        })
        .await
}

pub(crate) async fn users_page(
    console: &Console,
    session: &Session,
    new_token: String,
    notice: String,
) -> Result<UsersPage, Failure> {
    let users: Vec<Value> = console.get(session, "/v1/users").await?;
    let bindings: Vec<Value> = console.get(session, "/v1/bindings").await?;
    let roles: Vec<Value> = console.get(session, "/v1/roles").await?;
    let tokens: Vec<Value> = console.get(session, "/v1/tokens").await.unwrap_or_default();
    let scope = |b: &Value| {
        let app = b["app"].as_str().unwrap_or("all apps");
        let envs: Vec<&str> = b["envs"]
            .as_array()
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        format!(
            "{} on {} / {}",
            b["role"].as_str().unwrap_or("?"),
            app,
            if envs.is_empty() {
                "all environments".to_string()
            } else {
                envs.join(", ")
            }
        )
    };
    Ok(UsersPage {
        nav: nav(session),
        users: users
            .iter()
            .map(|u| {
                let name = u["name"].as_str().unwrap_or("?").to_string();
                UserRow {
                    disabled: u["disabled"].as_bool() == Some(true),
                    bindings: bindings
                        .iter()
                        .filter(|b| b["subject"].as_str() == Some(&name))
                        .map(|b| (b["id"].as_i64().unwrap_or(0), scope(b)))
                        .collect(),
                    name,
                }
            })
            .collect(),
        roles: roles
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect(),
        tokens: tokens
            .iter()
            .filter(|t| t["kind"].as_str() != Some("session"))
            .map(|t| {
                format!(
                    "#{} {} ({}, {}){}",
                    t["id"],
                    t["name"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?"),
                    t["state"].as_str().unwrap_or("?"),
                    t["owner"]
                        .as_str()
                        .map(|o| format!(", made by {o}"))
                        .unwrap_or_default()
                )
            })
            .collect(),
        new_token,
        notice,
    })
}
