//! The web console, served by `ferry server` at `/` beside the API.
//!
//! Server-rendered HTML (askama templates, escaped by default) with one small script for
//! live updates over server-sent events; every page reads fine without JavaScript.
//!
//! Security model:
//! - Login with a Ferry user: the console calls `POST /v1/login` through the API router, so
//!   the failed-login throttling and the audit record are the API's own. The session token
//!   goes into a cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` when the request
//!   came over TLS) and expires with the session.
//! - Every action is a form POST carrying a CSRF token (derived from the session token, so
//!   no other site can know it; the login form uses a double-submit cookie) and, when the
//!   browser sends one, a same-origin `Origin`. The console then makes the same request to
//!   the API router with the session as bearer token: the API's gate judges it by the same
//!   rules, answers 403 and writes the same audit record. Hiding a button is a courtesy.
//! - Reads go through the same API handlers (or, for the dashboard, the controller's
//!   `status` with the same permission decision), so the console never has its own view of
//!   what a deployment is.
//! - A Content-Security-Policy allows only the console's own script and style sheet: no
//!   inline script or style.

mod actions;
mod charts;
mod dora;
mod flags;
mod live;
mod notifications;
// alerts: the alerts page and its silence forms
mod alerts;
mod pages;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ferry_core::api::ApiError;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

use crate::access::{Access, load_roles};
use crate::api::AppState;
use crate::auth::{self, CallerKind};
use crate::clock::now_ms;
use views::Page;

/// Largest form the console reads.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// The session cookie (the session token of `POST /v1/login`).
const SESSION_COOKIE: &str = "ferry_session";
/// The login form's double-submit CSRF cookie.
const LOGIN_COOKIE: &str = "ferry_login";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
pub(crate) struct Console {
    /// The API router: every action and most reads are requests to it.
    api: Router,
    state: AppState,
}

/// The API router with the console's routes beside it.
pub(crate) fn mount(api: Router, state: AppState) -> Router {
    let console = Console {
        api: api.clone(),
        state,
    };
    let routes = Router::new()
        .route("/", get(pages::dashboard))
        .route("/dashboard/parts", get(pages::dashboard_parts))
        .route("/login", get(pages::login_form).post(actions::login))
        .route(
            "/login/link/{token}",
            get(pages::login_link_page).post(actions::login_link),
        )
        .route("/logout", post(actions::logout))
        .route("/apps/{app}", get(pages::app))
        .route("/apps/{app}/dora", get(dora::page))
        .route("/apps/{app}/envs/{env}/{action}", post(actions::env_action))
        .route("/apps/{app}/flags", get(flags::page))
        .route(
            "/apps/{app}/envs/{env}/flags/{flag}/{action}",
            post(flags::switch),
        )
        .route("/deployments/{id}", get(pages::deployment))
        .route("/deployments/{id}/live", get(live::deployment))
        .route("/deployments/{id}/parts", get(pages::deployment_parts))
        .route("/deployments/{id}/change-record", get(pages::change_record))
        .route(
            "/deployments/{id}/{action}",
            post(actions::deployment_action),
        )
        .route("/audit", get(pages::audit))
        .route("/notifications", get(notifications::page))
        .route("/alerts", get(alerts::page).post(alerts::act))
        .route("/users", get(pages::users).post(actions::create_user))
        .route("/users/{name}/{action}", post(actions::user_action))
        .route("/bindings", post(actions::grant))
        .route("/bindings/{id}/revoke", post(actions::revoke))
        .route("/tokens", post(actions::create_token))
        .route("/live", get(live::changes))
        .route("/assets/console.css", get(assets::css))
        .route("/assets/console.js", get(assets::js))
        .layer(middleware::from_fn(security_headers))
        .layer(DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console);
    api.merge(routes)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

mod assets {
    use axum::http::header;
    use axum::response::IntoResponse;

    const CSS: &str = include_str!("assets/console.css");
    const JS: &str = include_str!("assets/console.js");

    pub async fn css() -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            CSS,
        )
    }

    pub async fn js() -> impl IntoResponse {
        (
            [
                (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=300"),
            ],
            JS,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions and CSRF
// ---------------------------------------------------------------------------------------------

/// A logged-in person on this request.
#[derive(Clone)]
pub(crate) struct Session {
    token: String,
    pub access: Access,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

impl Session {
    /// `user:alice`.
    pub fn principal(&self) -> String {
        self.access.caller.principal()
    }

    pub fn user(&self) -> &str {
        self.access.caller.user.as_deref().unwrap_or("?")
    }
}

/// The CSRF token of a session: only who holds the session token (an HttpOnly cookie) can
/// compute it.
fn csrf_for(token: &str) -> String {
    auth::hex(&Sha256::digest(
        format!("ferry-console-csrf\0{token}").as_bytes(),
    ))
}

fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over TLS (directly or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, Secure over TLS.
fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("ferry_invalid=; Max-Age=0"))
}

/// Why a request has no session.
pub(crate) enum NoSession {
    /// No cookie at all.
    Missing,
    /// A cookie that no longer works: expired, revoked, user disabled (the message).
    Ended(String),
    Failed(Response),
}

impl Console {
    /// The session of the request's cookie, with the roles in force.
    pub(crate) async fn session(&self, headers: &HeaderMap) -> Result<Session, NoSession> {
        let Some(token) = cookie(headers, SESSION_COOKIE) else {
            return Err(NoSession::Missing);
        };
        let bearer = format!("Bearer {token}");
        let caller = match auth::authenticate(&self.state.store, Some(&bearer), now_ms()).await {
            Ok(Ok(caller)) if caller.kind == CallerKind::User => caller,
            Ok(Ok(_)) => return Err(NoSession::Ended("not a console session".into())),
            Ok(Err(message)) => return Err(NoSession::Ended(message)),
            Err(e) => return Err(NoSession::Failed(page_error(&crate::api::internal(e)))),
        };
        let roles = load_roles(&self.state.store)
            .await
            .map_err(|e| NoSession::Failed(page_error(&crate::api::internal(e))))?;
        Ok(Session {
            csrf: csrf_for(token),
            token: token.to_string(),
            access: Access {
                caller,
                roles: Arc::new(roles),
            },
        })
    }

    /// The session, or the answer that sends the browser to the login page (back to
    /// `path` afterwards).
    pub(crate) async fn session_or_login(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<Session, Response> {
        match self.session(headers).await {
            Ok(session) => Ok(session),
            Err(NoSession::Failed(response)) => Err(response),
            Err(NoSession::Missing) => Err(to_login(path, None)),
            Err(NoSession::Ended(why)) => Err(to_login(path, Some(why))),
        }
    }

    /// A page for the request's session: the login page (back to `back` afterwards)
    /// without one, else the page `build` makes for it, or its failure as an error page.
    pub(crate) async fn page<'c, P, F, Fut>(
        &'c self,
        headers: &HeaderMap,
        back: &str,
        build: F,
    ) -> Response
    where
        P: Page,
        F: FnOnce(&'c Console, Session) -> Fut,
        Fut: Future<Output = Result<P, Failure>> + 'c,
    {
        match self.session_or_login(headers, back).await {
            Ok(session) => match build(self, session).await {
                Ok(page) => page.into_page(StatusCode::OK),
                Err(failure) => failure.into_response(),
            },
            Err(response) => response,
        }
    }

    /// The session of a form POST whose CSRF token (and Origin, when sent) checks out.
    pub(crate) async fn form_session(
        &self,
        headers: &HeaderMap,
        csrf: &str,
    ) -> Result<Session, Response> {
        if !same_origin(headers) {
            return Err(cross_site());
        }
        let session = match self.session(headers).await {
            Ok(session) => session,
            Err(NoSession::Failed(response)) => return Err(response),
            Err(NoSession::Missing) => return Err(to_login("/", None)),
            Err(NoSession::Ended(why)) => return Err(to_login("/", Some(why))),
        };
        if !same_secret(csrf, &session.csrf) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "This form is not from your console session (CSRF check failed); reload the page and try again.",
            ));
        }
        Ok(session)
    }
}

/// Whether a POST comes from this site, as far as the browser says (`Origin`, when sent).
fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return true;
    };
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    origin_host.eq_ignore_ascii_case(host)
}

fn cross_site() -> Response {
    refused(
        StatusCode::FORBIDDEN,
        "Cross-site form submissions are refused (Origin does not match).",
    )
}

/// 303 to the login page, which says why when a session ended.
fn to_login(next: &str, why: Option<String>) -> Response {
    let next = safe_next(next);
    let mut to = format!("/login?next={}", urlencode(next));
    if why.is_some() {
        to.push_str("&ended=1");
    }
    see_other(&to)
}

/// Only a path of this site (no `//host`, no scheme) is a place to go back to.
pub(crate) fn safe_next(next: &str) -> &str {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/"
    }
}

pub(crate) fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

pub(crate) fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Talking to the API router
// ---------------------------------------------------------------------------------------------

/// What the API answered.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as `T` on success, else the API's error.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Failure> {
        if !self.status.is_success() {
            return Err(self.failure());
        }
        serde_json::from_slice(&self.body).map_err(|e| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the API's answer did not parse: {e}"),
        })
    }

    pub fn failure(&self) -> Failure {
        let message = serde_json::from_slice::<ApiError>(&self.body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).into_owned());
        Failure {
            status: self.status,
            message,
        }
    }
}

/// An error to show on a page, with its status code.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub message: String,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        refused(self.status, &self.message)
    }
}

impl Console {
    /// One request to the API router as the session's user (the gate authenticates it,
    /// judges it and audits it as any other), from the browser's address.
    pub(crate) async fn api(
        &self,
        session: Option<&Session>,
        method: Method,
        uri: &str,
        body: Option<serde_json::Value>,
        reason: Option<&str>,
        peer: Option<ConnectInfo<SocketAddr>>,
    ) -> Answer {
        let mut builder = axum::http::Request::builder().method(method).uri(uri);
        if let Some(session) = session {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {}", session.token));
        }
        if let Some(reason) = reason.filter(|r| !r.trim().is_empty()) {
            builder = builder.header("x-ferry-reason", urlencode(reason));
        }
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        let mut request = match builder.body(body) {
            Ok(request) => request,
            Err(e) => {
                return Answer {
                    status: StatusCode::BAD_REQUEST,
                    headers: HeaderMap::new(),
                    body: Bytes::from(
                        serde_json::json!({"code": "bad_request", "message": e.to_string()})
                            .to_string(),
                    ),
                };
            }
        };
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        let response = match self.api.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, 64 * 1024 * 1024)
            .await
            .unwrap_or_default();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A GET to the API, its body as `T`.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        session: &Session,
        uri: &str,
    ) -> Result<T, Failure> {
        self.api(Some(session), Method::GET, uri, None, None, None)
            .await
            .json()
    }
}

/// The HTML page of an error (403 refusals, 404, CSRF failures…), message as text.
pub(crate) fn refused(status: StatusCode, message: &str) -> Response {
    views::ErrorPage {
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error"),
        message,
    }
    .into_page(status)
}

fn page_error(failure: &crate::api::ApiFailure) -> Response {
    refused(StatusCode::INTERNAL_SERVER_ERROR, failure.message())
}

/// Path segments are encoded before they go into an API URI.
pub(crate) fn seg(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}
