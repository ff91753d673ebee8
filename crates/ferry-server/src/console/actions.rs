//! The console's forms (POST). Each checks the CSRF token, then makes the same request to
//! the API router as the logged-in person: the API's gate decides, answers and audits.

use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::console::Action;
use serde::Deserialize;
use serde_json::{Value, json};

use super::views::Page;
use super::{
    Console, LOGIN_COOKIE, SESSION_COOKIE, cookie, cross_site, refused, safe_next, same_origin,
    same_secret, see_other, seg, set_cookie,
};

/// Longest reason, user name or password the console forwards (the API bounds them too).
const MAX_FIELD_CHARS: usize = 1024;

fn peer(extensions: &Extensions) -> Option<ConnectInfo<SocketAddr>> {
    extensions.get::<ConnectInfo<SocketAddr>>().cloned()
}

fn field(text: &str) -> &str {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

// ---------------------------------------------------------------------------------------------
// Login, logout
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&form.csrf, expected) {
        return refused(
            StatusCode::FORBIDDEN,
            "This login form is not from this console (CSRF check failed); reload the login page and try again.",
        );
    }
    let username = field(form.username.trim());
    let answer = console
        .api(
            None,
            Method::POST,
            "/v1/login",
            Some(json!({ "username": username, "password": field(&form.password) })),
            None,
            peer(&extensions),
        )
        .await;
    let next = safe_next(&form.next);
    if !answer.status.is_success() {
        let failure = answer.failure();
        let mut page = super::pages::login_page(&headers, next, username, &failure.message, "");
        *page.status_mut() = answer.status;
        if let Some(retry) = answer.headers.get(header::RETRY_AFTER) {
            page.headers_mut()
                .insert(header::RETRY_AFTER, retry.clone());
        }
        return page;
    }
    session_cookie(&headers, &answer.body, next)
}

/// `POST /login/link/{token}` (the "Sign in" button of the link's page): uses a one-time
/// login link (from `ferry quickstart` or `POST /v1/login-links`). The API exchanges it for
/// a session once (and audits it); the session goes into the cookie, and the browser on to
/// the dashboard. A used or expired link shows the login form with why. Guarded like the
/// login form (same origin, double-submit CSRF cookie), so no other site can sign a
/// browser in as someone else.
pub(crate) async fn login_link(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path(token): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !same_secret(&form.csrf, expected) {
        return refused(
            StatusCode::FORBIDDEN,
            "This sign-in form is not from this console (CSRF check failed); open the link again.",
        );
    }
    let answer = console
        .api(
            None,
            Method::POST,
            "/v1/login/link",
            Some(json!({ "token": field(&token) })),
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        let failure = answer.failure();
        let mut page = super::pages::login_page(&headers, "/", "", &failure.message, "");
        *page.status_mut() = answer.status;
        return page;
    }
    session_cookie(&headers, &answer.body, "/")
}

/// The answer to a successful login (the API's `LoginResponse`): the session cookie, the
/// login form's CSRF cookie cleared, and on to `next`.
fn session_cookie(headers: &HeaderMap, login_answer: &[u8], next: &str) -> Response {
    let body: Value = serde_json::from_slice(login_answer).unwrap_or(Value::Null);
    let (Some(token), Some(expires)) = (body["token"].as_str(), body["expires_at_ms"].as_i64())
    else {
        return refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the login answer had no session",
        );
    };
    let max_age = ((expires - crate::clock::now_ms()) / 1000).max(0);
    let mut response = see_other(next);
    let cookies = response.headers_mut();
    cookies.append(
        header::SET_COOKIE,
        set_cookie(headers, SESSION_COOKIE, token, max_age),
    );
    cookies.append(header::SET_COOKIE, set_cookie(headers, LOGIN_COOKIE, "", 0));
    response
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(crate) async fn logout(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let answer = console
        .api(Some(&session), Method::POST, "/v1/logout", None, None, None)
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    let mut response = see_other("/login?out=1");
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&headers, SESSION_COOKIE, "", 0),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Deployment actions
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct ActionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
    /// The deployment page to go back to.
    #[serde(default)]
    deployment: Option<i64>,
}

/// promote, promote-full, pause, resume, abort, rollback on an environment.
pub(crate) async fn env_action(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path((app, env, segment)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(action) = Action::from_segment(&segment).filter(|a| !a.on_deployment()) else {
        return refused(StatusCode::NOT_FOUND, "no such action");
    };
    let reason = field(form.reason.trim());
    let base = format!("/v1/apps/{}/envs/{}", seg(&app), seg(&env));
    let (path, body) = match action {
        Action::Promote => ("promote", Some(json!({ "full": false }))),
        Action::PromoteFull => ("promote", Some(json!({ "full": true }))),
        Action::Pause => ("pause", None),
        Action::Resume => ("resume", None),
        Action::Abort => ("abort", None),
        Action::Rollback => (
            "rollback",
            Some(json!({ "reason": Some(reason).filter(|r| !r.is_empty()) })),
        ),
        Action::Approve | Action::Reject | Action::OverrideFreeze => {
            return refused(StatusCode::NOT_FOUND, "no such action");
        }
    };
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            &format!("{base}/{path}"),
            body,
            Some(reason),
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    // A rollback starts a new deployment: show that one.
    let id = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["id"].as_i64())
        .or(form.deployment);
    match id {
        Some(id) => see_other(&format!("/deployments/{id}")),
        None => see_other(&format!("/apps/{}", seg(&app))),
    }
}

/// approve, reject, override (the freeze) of a waiting deployment.
pub(crate) async fn deployment_action(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path((id, segment)): Path<(i64, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reason = field(form.reason.trim());
    let reason_json = Some(reason).filter(|r| !r.is_empty());
    let (path, body) = match Action::from_segment(&segment) {
        Some(Action::Approve) => ("approve", json!({ "reason": reason_json })),
        Some(Action::Reject) => ("approve", json!({ "reject": true, "reason": reason_json })),
        Some(Action::OverrideFreeze) => (
            "overrides",
            json!({ "gate": "freeze", "reason": reason_json }),
        ),
        _ => return refused(StatusCode::NOT_FOUND, "no such action"),
    };
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            &format!("/v1/deployments/{id}/{path}"),
            Some(body),
            Some(reason),
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other(&format!("/deployments/{id}"))
}

// ---------------------------------------------------------------------------------------------
// Users, bindings, tokens
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub(crate) async fn create_user(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<UserForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            "/v1/users",
            Some(json!({ "username": field(form.username.trim()), "password": field(&form.password) })),
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other("/users")
}

pub(crate) async fn user_action(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path((name, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if action != "disable" && action != "enable" {
        return refused(StatusCode::NOT_FOUND, "no such action");
    }
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            &format!("/v1/users/{}/{action}", seg(&name)),
            None,
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other("/users")
}

#[derive(Deserialize)]
pub(crate) struct GrantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    app: String,
    /// Comma-separated; empty = all environments.
    #[serde(default)]
    envs: String,
    #[serde(default)]
    expires_in: String,
}

impl GrantForm {
    fn scope(&self) -> (Option<&str>, Vec<&str>) {
        let app = Some(field(self.app.trim())).filter(|a| !a.is_empty());
        let envs = field(&self.envs)
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .collect();
        (app, envs)
    }
}

pub(crate) async fn grant(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<GrantForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (app, envs) = form.scope();
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            "/v1/bindings",
            Some(json!({
                "user": field(form.user.trim()),
                "role": field(form.role.trim()),
                "app": app,
                "envs": envs,
            })),
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other("/users")
}

pub(crate) async fn revoke(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path(id): Path<i64>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let answer = console
        .api(
            Some(&session),
            Method::DELETE,
            &format!("/v1/bindings/{id}"),
            None,
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other("/users")
}

/// Creates an API token and shows it once, on the answer to this POST (never stored or
/// shown again).
pub(crate) async fn create_token(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Form(form): Form<GrantForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let (app, envs) = form.scope();
    let expires = Some(field(form.expires_in.trim())).filter(|e| !e.is_empty());
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            "/v1/tokens",
            Some(json!({
                "name": field(form.name.trim()),
                "role": field(form.role.trim()),
                "app": app,
                "envs": envs,
                "expires_in": expires,
            })),
            None,
            peer(&extensions),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    let created: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    let token = created["token"].as_str().unwrap_or_default().to_string();
    match super::pages::users_page(
        &console,
        &session,
        token,
        format!(
            "Token {} created. Copy it now: it is shown only this once.",
            field(form.name.trim())
        ),
    )
    .await
    {
        Ok(page) => page.into_page(StatusCode::CREATED),
        Err(failure) => failure.into_response(),
    }
}
