//! The HTTP API: JSON in and out, errors as `ApiError`. Every route but the health checks
//! and `/openapi.json` passes the gate ([`crate::access::gate`]): authentication, the
//! route's permission, the audit record. Handlers only translate; decisions live in the
//! controller and the pure core.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, get, on};
use axum::{Extension, Json, Router};
use ferry_core::api::{
    ApiError, AppSummary, ApplyRequest, ApplyResponse, DeployRequest, DeploymentDetail,
    DeploymentView, MAX_MESSAGE_CHARS, MAX_REQUEST_BYTES, PromoteRequest, RedeployAnswer,
    RedeployRequest, RollbackRequest, clip,
};
use ferry_core::endpoint::{Endpoint, Method};
use ferry_core::manifest::{self, Manifest};
use ferry_core::rbac::{Permission, Target};
use ferry_store::{AppRecord, NewManifest, Store};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::access::{self, Access, AuditSlot, Governance};
use crate::approvals;
use crate::clock::now_ms;
use crate::controller::{Controller, RequestError};
use crate::progressive::CommandName;

/// The API's description, served at `/openapi.json`; a test keeps it in step with the router.
pub const OPENAPI: &str = include_str!("../openapi.json");

const MAX_EVENT_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// `None` when the API runs without the deployment controller (identity/audit only, as
    /// in the API tests): routes that need it answer 503 after the gate.
    pub controller: Option<Arc<Controller>>,
    pub secrets: Arc<crate::secrets::Secrets>,
    pub shutdown: CancellationToken,
    pub gov: Arc<Governance>,
    /// What the flag SDK endpoints serve, per environment and revision.
    pub flags: Arc<crate::flags_api::FlagCache>,
    /// leader: whether this server leads, for `/v1/version`, teardown and wake-ups.
    pub leader: crate::leader::Status,
}

impl AppState {
    /// Now (Unix ms), by the controller's clock (a manual one in tests), else the wall
    /// clock's.
    pub(crate) fn now_ms(&self) -> i64 {
        self.controller
            .as_ref()
            .map_or_else(crate::clock::now_ms, |c| c.now_ms())
    }

    pub(crate) fn controller(&self) -> ApiResult<&Arc<Controller>> {
        self.controller.as_ref().ok_or_else(|| {
            ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the deployment controller is not running in this server",
            )
        })
    }
}

pub fn router(state: AppState) -> Router {
    use crate::{alerts, api_hooks, apply, audit, config, dora, flags_api, gates, identity};
    use crate::{notify_api, releases, secrets};
    use ferry_core::endpoint as e;
    // Every declared endpoint, bound to its handler (tests: the router serves exactly the
    // declarations, and openapi.json describes exactly them).
    let gated = Router::new()
        .serve(e::Login, identity::login)
        .serve(e::LoginWithLink, identity::use_login_link)
        .serve(e::LoginLinksCreate, identity::create_login_link)
        .serve(e::Logout, identity::logout)
        .serve(e::Whoami, identity::whoami)
        .serve(e::Version, version)
        .serve(e::Metrics, metrics)
        .serve(e::AppsList, list_apps)
        .serve(e::Apply, apply)
        .serve(e::AppsGet, get_app)
        .serve(e::AppsDelete, apply::delete_app)
        .serve(e::Status, status)
        .serve(e::Deploy, deploy)
        .serve(e::History, history)
        .serve(e::Rollback, rollback)
        .serve(e::Logs, logs)
        .serve(e::Dora, dora::metrics)
        .serve(e::AlertsList, alerts::list)
        .serve(e::SilencesList, alerts::list_silences)
        .serve(e::SilencesCreate, alerts::create_silence)
        .serve(e::SilencesDelete, alerts::end_silence)
        .serve(e::Watch, watch)
        .serve(e::Promote, promote)
        .serve(e::Pause, pause)
        .serve(e::Resume, resume)
        .serve(e::Abort, abort)
        .serve(e::Retry, retry)
        .serve(e::SecretsList, secrets::list)
        .serve(e::SecretsSet, secrets::set)
        .serve(e::SecretsDelete, secrets::delete)
        .serve(e::SecretsRotateKey, secrets::rotate_key)
        .serve(e::DeploymentsGet, deployment)
        .serve(e::DeploymentsEvents, events)
        .serve(e::Approve, approvals::decide)
        .serve(e::ApproveWithdraw, approvals::withdraw)
        .serve(e::Approvals, approvals::list)
        .serve(e::ChangeRecord, audit::change_record)
        .serve(e::Teardown, teardown)
        .serve(e::UsersList, identity::list_users)
        .serve(e::UsersCreate, identity::create_user)
        .serve(e::UsersDisable, identity::disable_user)
        .serve(e::UsersEnable, identity::enable_user)
        .serve(e::UsersPassword, identity::set_password)
        .serve(e::RolesList, identity::list_roles)
        .serve(e::RolesCreate, identity::create_role)
        .serve(e::RolesDelete, identity::delete_role)
        .serve(e::BindingsList, identity::list_bindings)
        .serve(e::BindingsCreate, identity::create_binding)
        .serve(e::BindingsDelete, identity::delete_binding)
        .serve(e::TokensList, identity::list_tokens)
        .serve(e::TokensCreate, identity::create_token)
        .serve(e::TokensDelete, identity::delete_token)
        .serve(e::AuthCanI, identity::can_i)
        .serve(e::Notifications, notify_api::history)
        .serve(e::AuditQuery, audit::query)
        .serve(e::AuditExport, audit::export)
        .serve(e::AuditVerify, audit::verify)
        .serve(e::AuditCheckpoints, audit::checkpoints)
        .serve(e::ReleasesCreate, releases::create)
        .serve(e::ReleasesList, releases::list)
        .serve(e::ReleasesGet, releases::show)
        .serve(e::PromotionsCreate, releases::promote)
        .serve(e::Gates, gates::status)
        .serve(e::GatesOverride, gates::create_override)
        .serve(e::ConfigGet, config::get_config)
        .serve(e::Redeploy, redeploy)
        .serve(e::DeploymentsHooks, api_hooks::list)
        .serve(e::DeploymentsHookOutput, api_hooks::output)
        .serve(e::FlagsList, flags_api::list)
        .serve(e::FlagsCreate, flags_api::create)
        .serve(e::FlagsGet, flags_api::show)
        .serve(e::FlagsSet, flags_api::set)
        .serve(e::FlagsEnable, flags_api::enable)
        .serve(e::FlagsDisable, flags_api::disable)
        .serve(e::FlagsArchive, flags_api::archive)
        .serve(e::FlagsRollout, flags_api::rollout)
        .serve(e::FlagsVariants, flags_api::variants)
        .serve(e::FlagsGuardedRolloutGet, flags_api::guard_show)
        .serve(e::FlagsGuardedRolloutStart, flags_api::guard_start)
        .serve(e::FlagsGuardedRolloutStop, flags_api::guard_stop)
        .serve(e::FlagsExport, flags_api::export)
        .serve(e::FlagsImport, flags_api::import)
        .serve(e::FlagsTokensList, flags_api::list_tokens)
        .serve(e::FlagsTokensCreate, flags_api::create_token)
        .serve(e::FlagsTokensDelete, flags_api::delete_token)
        .serve(e::FlagsMetrics, flags_api::metrics)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            wake_the_leader,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), access::gate));
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(gated)
        .merge(crate::flags_api::sdk_routes())
        .fallback(|| async {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see /openapi.json",
            )
        })
        .layer(middleware::from_fn(json_errors))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state.clone());
    // console: the web console at `/`, beside the API (it calls the API router itself)
    crate::console::mount(api, state)
}

/// Binds a declared endpoint ([`ferry_core::endpoint`]) to its handler: the path and method
/// come from the declaration, never written twice.
trait Serve {
    fn serve<E: Endpoint, H: Handler<T, AppState>, T: 'static>(self, _: E, handler: H) -> Self;
}

impl Serve for Router<AppState> {
    fn serve<E: Endpoint, H: Handler<T, AppState>, T: 'static>(self, _: E, handler: H) -> Self {
        let method = match E::SPEC.method {
            Method::Get => MethodFilter::GET,
            Method::Post => MethodFilter::POST,
            Method::Put => MethodFilter::PUT,
            Method::Delete => MethodFilter::DELETE,
        };
        self.route(E::SPEC.path, on(method, handler))
    }
}

/// Every error answer is the JSON error object: what the framework answers in plain text
/// (a body that is not JSON or not declared as JSON, a path or query parameter that does
/// not parse, a method a route does not serve) is turned into one, headers such as
/// `Allow` kept.
async fn json_errors(request: axum::extract::Request, next: middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let mut answer = ApiFailure::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    answer.headers_mut().extend(parts.headers);
    answer
}

/// An error answer: status code plus the `ApiError` body.
#[derive(Debug)]
pub struct ApiFailure {
    status: StatusCode,
    body: ApiError,
}

impl ApiFailure {
    pub fn message(&self) -> &str {
        &self.body.message
    }

    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self::with_details(status, code, message, Vec::new())
    }

    /// An error with detail lines (e.g. each located manifest error).
    pub fn with_details(
        status: StatusCode,
        code: &str,
        message: impl Into<String>,
        details: Vec<String>,
    ) -> Self {
        ApiFailure {
            status,
            body: ApiError {
                code: code.to_string(),
                message: message.into(),
                details,
            },
        }
    }
}

impl IntoResponse for ApiFailure {
    /// The error object, with the message and each detail cut to a bounded length: an
    /// error never repeats a huge value back.
    fn into_response(mut self) -> Response {
        let cut = |text: &mut String| {
            if let std::borrow::Cow::Owned(short) = clip(text, MAX_MESSAGE_CHARS) {
                *text = short;
            }
        };
        cut(&mut self.body.message);
        self.body.details.iter_mut().for_each(cut);
        (self.status, Json(self.body)).into_response()
    }
}

impl From<RequestError> for ApiFailure {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::NotFound(m) => ApiFailure::new(StatusCode::NOT_FOUND, "not_found", m),
            RequestError::Conflict(m) => ApiFailure::new(StatusCode::CONFLICT, "conflict", m),
            RequestError::BadRequest(m) => {
                ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", m)
            }
            RequestError::Server(e) => internal(e),
        }
    }
}

impl From<ferry_store::StoreError> for ApiFailure {
    fn from(e: ferry_store::StoreError) -> Self {
        internal(e)
    }
}

pub fn internal(e: impl std::fmt::Display) -> ApiFailure {
    tracing::error!(error = %e, "internal error answering a request");
    ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

pub type ApiResult<T> = Result<T, ApiFailure>;

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let proxy = state
        .controller()?
        .proxy_metrics()
        .await
        .unwrap_or_else(|e| format!("# proxy metrics unavailable: {e}\n"));
    // The proxy speaks OpenMetrics, whose `# EOF` terminator must come last, after ours.
    let proxy = proxy.trim_end().trim_end_matches("# EOF").trim_end();
    let text = format!(
        "# HELP ferry_up The Ferry server is running.\n# TYPE ferry_up gauge\nferry_up 1\n{proxy}\n# EOF\n"
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// `GET /v1/version`: the server's version (the CLI prints it beside its own), and with
/// several servers on one database, whether this one leads and which one does.
async fn version(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut body = serde_json::json!({ "version": env!("CARGO_PKG_VERSION") });
    if let Some(view) = state.leader.view(&state.store).await {
        body["leadership"] = serde_json::json!(view);
    }
    Json(body)
}

/// leader: after a write accepted by a follower, the leader (another process) is woken
/// through the store (PostgreSQL NOTIFY), so it acts at once rather than at its next poll.
/// The handlers wake this server's own loop themselves.
async fn wake_the_leader(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let write = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let response = next.run(request).await;
    if write && response.status().is_success() && !state.leader.leading() {
        let store = state.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.wake_leader().await {
                tracing::warn!(error = %e, "cannot wake the leader; it acts at its next poll");
            }
        });
    }
    response
}

async fn apply(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Json(request): Json<ApplyRequest>,
) -> ApiResult<Json<ApplyResponse>> {
    let file_name = request
        .file_name
        .clone()
        .unwrap_or_else(|| "ferry.yaml".to_string());
    let manifest = manifest::parse(&request.manifest, &file_name).map_err(|errors| ApiFailure {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: ApiError {
            code: "invalid_manifest".to_string(),
            message: format!(
                "{file_name} has {} error(s); nothing was changed",
                errors.errors.len()
            ),
            details: errors.errors.iter().map(ToString::to_string).collect(),
        },
    })?;
    if let Some(base_dir) = &request.base_dir
        && !std::path::Path::new(base_dir).is_absolute()
    {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("base_dir {base_dir:?} must be absolute"),
        ));
    }
    crate::apply::check_names(&access, &request.manifest, &file_name, &manifest)?;
    let apps = state.store.list_apps().await?;
    let serving = crate::apply::serving_revisions(&state.store, &apps).await?;
    check_listeners(&manifest, &[apps.as_slice(), &serving].concat())?;
    let old = apps.iter().find(|a| a.name == manifest.app);
    let old_manifest: Option<Manifest> =
        old.and_then(|a| serde_json::from_str(&a.manifest_json).ok());
    let effects = crate::apply::effects(&state.store, old_manifest.as_ref(), &manifest).await?;
    let warnings: Vec<String> = manifest::warnings(&request.manifest, &file_name, &manifest)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut changes = manifest.diff(old_manifest.as_ref());
    if old.is_some_and(|a| a.base_dir != request.base_dir) {
        changes.push(format!(
            "~ base_dir: {}",
            request.base_dir.as_deref().unwrap_or("(none)")
        ));
    }
    if request.dry_run {
        return Ok(Json(ApplyResponse {
            app: manifest.app.clone(),
            revision: old.map(|a| a.revision).unwrap_or(0),
            dry_run: true,
            changes,
            stops: effects.stops,
            next_deployment: effects.next_deployment,
            warnings,
        }));
    }
    if !effects.stops.is_empty() && !request.prune {
        return Err(crate::apply::unconfirmed(&file_name, &effects));
    }
    let manifest_json = serde_json::to_string(&manifest).map_err(internal)?;
    let record = state
        .store
        .apply_manifest(NewManifest {
            app: manifest.app.clone(),
            yaml: request.manifest,
            manifest_json,
            base_dir: request.base_dir,
            applied_by: access.caller.name.clone(),
            now_ms: now_ms(),
        })
        .await?;
    slot.with(|n| {
        n.target = Some(format!("revision {}", record.revision));
        n.summary = Some(format!(
            "apply the manifest of {}: revision {}{}{}",
            record.name,
            record.revision,
            if changes.is_empty() {
                " (no change)".to_string()
            } else {
                format!(" ({} change(s))", changes.len())
            },
            if effects.stops.is_empty() {
                String::new()
            } else {
                format!("; pruned: {}", effects.stops.join("; "))
            }
        ));
    });
    // A removed environment keeps no current version: added back, it starts nothing.
    if let Some(old) = &old_manifest {
        for (env, _) in old.environments.iter() {
            if manifest.environments.get(env).is_none() {
                state.store.forget_environment(&record.name, env).await?;
            }
        }
    }
    if let Some(controller) = &state.controller {
        for id in &effects.abandoned {
            controller
                .abandon(
                    *id,
                    &format!(
                        "its environment was removed from the manifest by {} (--prune)",
                        access.caller.name
                    ),
                )
                .await?;
        }
        controller.wake();
    }
    Ok(Json(ApplyResponse {
        app: record.name,
        revision: record.revision,
        dry_run: false,
        changes,
        stops: effects.stops,
        next_deployment: effects.next_deployment,
        warnings,
    }))
}

/// A listener may belong to one environment of one app, or be shared by environments of
/// any apps that each list their `hosts` (none twice, all or none with TLS); it must be
/// free to bind if nobody uses it yet.
fn check_listeners(manifest: &Manifest, apps: &[AppRecord]) -> ApiResult<()> {
    // Other apps' sites by address, and the addresses this app holds already.
    let mut ours: HashMap<String, Vec<Site>> = HashMap::new();
    let mut mine: HashSet<String> = HashSet::new();
    for app in apps {
        let Ok(other) = serde_json::from_str::<Manifest>(&app.manifest_json) else {
            continue;
        };
        for (env, config) in other.environments.iter() {
            for site in sites(config, &format!("{}/{env}", app.name)) {
                if app.name == manifest.app {
                    mine.insert(site.listen);
                } else {
                    ours.entry(site.listen.clone()).or_default().push(site);
                }
            }
        }
    }
    for (env, config) in manifest.environments.iter() {
        for site in sites(config, env) {
            check_listener(env, &site, &ours, &mine)?;
        }
    }
    Ok(())
}

/// One use of a proxy listener by an environment.
struct Site {
    listen: String,
    /// `app/env` (or, for the manifest being applied, `env`).
    owner: String,
    hosts: Vec<String>,
    tls: bool,
    /// Where an error about it points.
    field: &'static str,
}

/// An environment's proxy listeners: the main one, blue/green's preview and the HTTPS
/// redirect.
fn sites(env: &ferry_core::manifest::Environment, owner: &str) -> Vec<Site> {
    let site = |listen: &str, hosts: &[String], tls: bool, field| Site {
        listen: listen.to_string(),
        owner: owner.to_string(),
        hosts: hosts.to_vec(),
        tls,
        field,
    };
    let mut all = vec![site(&env.listen, &env.hosts, env.tls.is_some(), "listen")];
    if let ferry_core::manifest::Strategy::BlueGreen(bg) = &env.strategy
        && let Some(preview) = &bg.preview_listen
    {
        all.push(site(
            preview,
            &[],
            false,
            "strategy.blue_green.preview_listen",
        ));
    }
    if let Some(redirect) = env.tls.as_ref().and_then(|t| t.redirect_http.as_ref()) {
        all.push(site(redirect, &env.hosts, false, "tls.redirect_http"));
    }
    all
}

fn check_listener(
    env: &str,
    site: &Site,
    ours: &HashMap<String, Vec<Site>>,
    mine: &HashSet<String>,
) -> ApiResult<()> {
    let conflict = |field: String, message: String| {
        Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("environments.{env}.{field}: {message}"),
        ))
    };
    let listen = &site.listen;
    match ours.get(listen) {
        Some(others) => {
            for other in others {
                if site.hosts.is_empty() || other.hosts.is_empty() || site.tls != other.tls {
                    return conflict(
                        site.field.to_string(),
                        format!(
                            "listener {listen} is already used by {}; environments share a listener only when each lists its `hosts` and all or none use `tls`",
                            other.owner
                        ),
                    );
                }
                for (i, host) in site.hosts.iter().enumerate() {
                    if other.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
                        return conflict(
                            format!("hosts[{i}]"),
                            format!(
                                "host {host} on {listen} is already served by {}",
                                other.owner
                            ),
                        );
                    }
                }
            }
            Ok(())
        }
        None if mine.contains(listen) => Ok(()),
        None => {
            let addr: SocketAddr = listen.parse().map_err(|_| {
                ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "environments.{env}.{}: listener {listen:?} is not IP:PORT",
                        site.field
                    ),
                )
            })?;
            std::net::TcpListener::bind(addr).map(|_| ()).map_err(|e| {
                ApiFailure::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "environments.{env}.{}: cannot listen on {addr}: {e}; pick a free port",
                        site.field
                    ),
                )
            })
        }
    }
}

fn summary(record: &AppRecord) -> AppSummary {
    let manifest: Option<Manifest> = serde_json::from_str(&record.manifest_json).ok();
    AppSummary {
        name: record.name.clone(),
        revision: record.revision,
        services: manifest
            .as_ref()
            .map(|m| m.services.keys().cloned().collect())
            .unwrap_or_default(),
        environments: manifest
            .as_ref()
            .map(|m| m.environments.keys().map(str::to_string).collect())
            .unwrap_or_default(),
        updated_at_ms: record.updated_at_ms,
    }
}

/// The apps the caller may view.
async fn list_apps(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> ApiResult<Json<Vec<AppSummary>>> {
    Ok(Json(
        state
            .store
            .list_apps()
            .await?
            .iter()
            .filter(|a| access.allows(Permission::View, Target::app(&a.name)))
            .map(summary)
            .collect(),
    ))
}

async fn get_app(
    State(state): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<AppSummary>> {
    let record = state
        .store
        .get_app(&app)
        .await?
        .ok_or_else(|| not_found(format!("app {app:?} not found")))?;
    Ok(Json(summary(&record)))
}

fn not_found(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
}

#[derive(Deserialize)]
struct EnvFilter {
    env: Option<String>,
}

async fn status(
    State(state): State<AppState>,
    Path(app): Path<String>,
    Query(filter): Query<EnvFilter>,
) -> ApiResult<Json<ferry_core::api::AppStatus>> {
    Ok(Json(
        state
            .controller()?
            .status(&app, filter.env.as_deref())
            .await?,
    ))
}

/// Puts the deployment a command acted on into the request's audit record.
fn noted(slot: &AuditSlot, view: DeploymentView) -> DeploymentView {
    slot.with(|n| n.target = Some(format!("deployment {}", view.id)));
    view
}

async fn deploy(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    Json(request): Json<DeployRequest>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    // dora: `fix_of` names a deployment that needed this fix (checked before any write)
    if let Some(fix_of) = request.fix_of {
        crate::dora::check_fix_of(&state, &app, &env, fix_of).await?;
    }
    // releases: a deploy may carry release data (recorded when unknown, checked when known)
    crate::releases::record_for_deploy(&state, &access, &app, &env, &request).await?;
    let view = state
        .controller()?
        .request_fix(
            &app,
            &env,
            &request.version,
            ferry_core::model::DeploymentKind::Deploy,
            &access.caller.principal(),
            request.fix_of,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(noted(&slot, view))))
}

/// config: `POST .../redeploy` — the serving version again, with the current configuration.
/// Nothing changed: 200 and no deployment. A deployment of another version that has not
/// ended is superseded only with `force`.
async fn redeploy(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    body: Option<Json<RedeployRequest>>,
) -> ApiResult<(StatusCode, Json<RedeployAnswer>)> {
    let force = body.is_some_and(|Json(b)| b.force);
    let answer = state
        .controller()?
        .request_redeploy(&app, &env, &access.caller.principal(), force)
        .await?;
    Ok(match answer {
        RedeployAnswer::Started(view) => (
            StatusCode::CREATED,
            Json(RedeployAnswer::Started(noted(&slot, view))),
        ),
        RedeployAnswer::Unchanged(unchanged) => {
            slot.with(|n| n.summary = Some(unchanged.message.clone()));
            (StatusCode::OK, Json(RedeployAnswer::Unchanged(unchanged)))
        }
    })
}

async fn rollback(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<RollbackRequest>>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let request = body.map(|Json(r)| r).unwrap_or_default();
    // hooks: forcing a rollback past an irreversible migration needs a reason (audited).
    let has_reason = request
        .reason
        .clone()
        .or_else(|| access::reason_header(&headers))
        .is_some_and(|r| !r.trim().is_empty());
    if request.force && !has_reason {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a forced rollback needs a reason: `reason` in the body or X-Ferry-Reason (ferry rollback --force --reason \"...\")",
        ));
    }
    let view = state
        .controller()?
        .request_rollback(
            &app,
            &env,
            request.to,
            &access.caller.principal(),
            request.force,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(noted(&slot, view))))
}

async fn command(
    state: &AppState,
    access: &Access,
    slot: &AuditSlot,
    app: &str,
    env: &str,
    name: CommandName,
) -> ApiResult<Json<DeploymentView>> {
    let view = state
        .controller()?
        .request_command(app, env, name, &access.caller.name)
        .await?;
    Ok(Json(noted(slot, view)))
}

async fn promote(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    body: Option<Json<PromoteRequest>>,
) -> ApiResult<Json<DeploymentView>> {
    let full = body.is_some_and(|Json(b)| b.full);
    let name = if full {
        CommandName::PromoteFull
    } else {
        CommandName::Promote
    };
    command(&state, &access, &slot, &app, &env, name).await
}

async fn pause(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Json<DeploymentView>> {
    command(&state, &access, &slot, &app, &env, CommandName::Pause).await
}

async fn resume(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Json<DeploymentView>> {
    command(&state, &access, &slot, &app, &env, CommandName::Resume).await
}

async fn abort(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Json<DeploymentView>> {
    let view = state
        .controller()?
        .request_abort(&app, &env, &access.caller.name)
        .await?;
    Ok(Json(noted(&slot, view)))
}

async fn retry(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<DeploymentView>)> {
    let view = state
        .controller()?
        .request_retry(&app, &env, &access.caller.principal())
        .await?;
    Ok((StatusCode::CREATED, Json(noted(&slot, view))))
}

type StatusEvents = axum::response::sse::Sse<
    axum::response::sse::KeepAliveStream<
        futures_util::stream::BoxStream<
            'static,
            Result<axum::response::sse::Event, std::convert::Infallible>,
        >,
    >,
>;

/// Server-sent events: the environment's status (JSON `EnvStatus`) now and after every
/// change, for `ferry status --watch`. The stream ends when the server stops (a graceful
/// shutdown waits for open connections).
async fn watch(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<StatusEvents> {
    // Fail fast on an unknown app/env instead of opening an empty stream.
    let controller = state.controller()?;
    controller.status(&app, Some(&env)).await?;
    use futures_util::StreamExt;
    let stream = controller
        .clone()
        .watch(app, env)
        .filter_map(|status| async move {
            axum::response::sse::Event::default()
                .event("status")
                .json_data(&status)
                .ok()
                .map(Ok)
        })
        .take_until(state.shutdown.clone().cancelled_owned())
        .boxed();
    Ok(axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()))
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn history(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(limit): Query<Limit>,
) -> ApiResult<Json<Vec<DeploymentView>>> {
    if state.store.get_app(&app).await?.is_none() {
        return Err(not_found(format!("app {app:?} not found")));
    }
    let records = state
        .store
        .list_deployments(&app, &env, limit.limit.unwrap_or(20).min(1000))
        .await?;
    Ok(Json(records.iter().map(|d| d.view()).collect()))
}

async fn deployment(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<DeploymentDetail>> {
    // A transition writes the state and its event together; read the events between two
    // reads of the deployment and retry if a transition slipped in, so state and timeline
    // always agree.
    let read = || async {
        state
            .store
            .get_deployment(id)
            .await?
            .ok_or_else(|| not_found(format!("deployment {id} not found")))
    };
    let mut before = read().await?;
    loop {
        let events = state.store.events_after(id, 0, 10_000).await?;
        let after = read().await?;
        if after.row_version == before.row_version {
            let analysis = crate::progressive::Phase::of(&after)
                .ok()
                .and_then(|phase| phase.progress)
                .map(|progress| ferry_core::progressive::analysis_metrics(&progress))
                .unwrap_or_default();
            let series = state.store.deployment_series(id).await?;
            return Ok(Json(DeploymentDetail {
                deployment: after.view(),
                events,
                analysis,
                series,
            }));
        }
        before = after;
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    after: Option<i64>,
    wait_ms: Option<u64>,
}

async fn events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<Vec<ferry_core::api::EventView>>> {
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0)).min(MAX_EVENT_WAIT);
    Ok(Json(
        state
            .controller()?
            .wait_events(id, query.after.unwrap_or(0), wait)
            .await?,
    ))
}

#[derive(Deserialize)]
struct LogsQuery {
    service: Option<String>,
    tail: Option<usize>,
    follow: Option<bool>,
}

async fn logs(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Response> {
    let controller = state.controller()?;
    let status = controller.status(&app, Some(&env)).await?;
    if let Some(service) = &query.service {
        let known = status
            .environments
            .iter()
            .flat_map(|e| e.replicas.iter())
            .any(|r| &r.service == service);
        let declared = state
            .store
            .get_app(&app)
            .await?
            .and_then(|a| serde_json::from_str::<Manifest>(&a.manifest_json).ok())
            .is_some_and(|m| m.services.contains_key(service));
        if !known && !declared {
            return Err(not_found(format!("app {app} has no service {service:?}")));
        }
    }
    let tail = query.tail.unwrap_or(100).min(100_000);
    let follow = query.follow.unwrap_or(false);
    let stream = crate::logs::stream(controller.clone(), app, env, query.service, tail, follow);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok((headers, Body::from_stream(stream)).into_response())
}

async fn teardown(State(state): State<AppState>) -> ApiResult<Json<ferry_core::api::TornDown>> {
    let controller = state.controller()?;
    // leader: only the leader runs (and may stop) the workloads and the proxy.
    if !state.leader.leading() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "not_leader",
            "this server does not lead: send the teardown to the leader (GET /v1/version names it)",
        ));
    }
    controller.teardown().await;
    state.shutdown.cancel();
    Ok(Json(ferry_core::api::TornDown { stopped: true }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (method, path) pairs the real router serves, as it says itself: a method a path
    /// does not serve is answered 405 with `Allow` naming those it does. Probed on every path
    /// the document, the gate's rules and the public routes name.
    async fn served_routes(
        paths: &std::collections::BTreeSet<String>,
    ) -> std::collections::BTreeSet<(String, String)> {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ferry_store::Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .expect("store");
        let api = crate::ApiOnly::open(store, dir.path()).await.expect("api");
        let mut served = std::collections::BTreeSet::new();
        for path in paths {
            let uri: String = path
                .split('/')
                .map(|seg| if seg.starts_with('{') { "1" } else { seg })
                .collect::<Vec<_>>()
                .join("/");
            let request = axum::http::Request::builder()
                .method("PATCH")
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let response = api.router().oneshot(request).await.expect("infallible");
            match response.status() {
                StatusCode::METHOD_NOT_ALLOWED => {
                    let allow = response
                        .headers()
                        .get(header::ALLOW)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    for method in allow.split(',').map(str::trim) {
                        if !method.is_empty() && method != "HEAD" {
                            served.insert((method.to_lowercase(), path.clone()));
                        }
                    }
                }
                StatusCode::NOT_FOUND => {}
                other => panic!("PATCH {uri}: {other}, PATCH is served by no route"),
            }
        }
        served
    }

    /// Every route the router serves is described in openapi.json with its methods, and
    /// nothing more: compared with what the router itself serves.
    #[tokio::test]
    async fn openapi_documents_every_route() {
        let spec: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
        let mut documented = std::collections::BTreeSet::new();
        for (path, ops) in spec["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("operations").keys() {
                documented.insert((method.clone(), path.clone()));
            }
        }
        let mut paths: std::collections::BTreeSet<String> =
            documented.iter().map(|(_, p)| p.clone()).collect();
        paths.extend(
            ferry_core::endpoint::ENDPOINTS
                .iter()
                .map(|e| e.path.to_string()),
        );
        paths.extend(["/healthz", "/readyz", "/openapi.json"].map(String::from));
        let served = served_routes(&paths).await;
        assert_eq!(documented, served);
        // Outside the public and SDK routes, the router serves exactly the declarations.
        let declared: std::collections::BTreeSet<(String, String)> =
            ferry_core::endpoint::ENDPOINTS
                .iter()
                .map(|e| (e.method.as_str().to_lowercase(), e.path.to_string()))
                .collect();
        let gated: std::collections::BTreeSet<(String, String)> = served
            .into_iter()
            .filter(|(_, path)| {
                !["/healthz", "/readyz", "/openapi.json"].contains(&path.as_str())
                    && !crate::flags_api::SDK_PATHS.contains(&path.as_str())
            })
            .collect();
        assert_eq!(gated, declared);
        // A path nothing serves is the JSON 404 of the fallback (so the probe can tell).
        let probe: std::collections::BTreeSet<String> = ["/v1/nothing/here".to_string()].into();
        assert!(served_routes(&probe).await.is_empty());
    }

    /// A rollout's `stickiness` is described as the handler reads it, 1 to `MAX_NAME`
    /// characters (schemathesis sent `""`, schema-valid, and got 400).
    #[test]
    fn openapi_bounds_the_rollout_stickiness_as_the_handler_does() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json");
        let s = &spec["components"]["schemas"]["RolloutRequest"]["properties"]["stickiness"];
        assert_eq!(s["minLength"], 1, "{s}");
        assert_eq!(s["maxLength"], ferry_core::flags::edit::MAX_NAME, "{s}");
    }

    /// Every integer a caller sends (a parameter, or a field of a request body, however
    /// nested) is bounded in openapi.json: an unbounded one lets a client send a number no
    /// 64-bit field holds, which is refused as an invalid body rather than described.
    #[test]
    fn openapi_bounds_every_integer_a_caller_sends() {
        use serde_json::Value;
        fn refs(value: &Value, out: &mut std::collections::BTreeSet<String>) {
            match value {
                Value::Object(map) => {
                    for (key, v) in map {
                        match (key.as_str(), v.as_str()) {
                            ("$ref", Some(r)) => {
                                out.insert(r.rsplit('/').next().unwrap_or(r).to_string());
                            }
                            _ => refs(v, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        fn unbounded(value: &Value, at: &str, out: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    let integer = match &map.get("type") {
                        Some(Value::String(t)) => t == "integer",
                        Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                        _ => false,
                    };
                    if integer && !(map.contains_key("minimum") && map.contains_key("maximum")) {
                        out.push(at.to_string());
                    }
                    for (key, v) in map {
                        unbounded(v, &format!("{at}/{key}"), out);
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        unbounded(v, &format!("{at}[{i}]"), out);
                    }
                }
                _ => {}
            }
        }
        let spec: Value = serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
        let mut sent = std::collections::BTreeSet::new();
        let mut found = Vec::new();
        for (path, ops) in spec["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                refs(&op["requestBody"], &mut sent);
                refs(&op["parameters"], &mut sent);
                unbounded(
                    &op["parameters"],
                    &format!("{method} {path} parameters"),
                    &mut found,
                );
                unbounded(
                    &op["requestBody"],
                    &format!("{method} {path} body"),
                    &mut found,
                );
            }
        }
        let schemas = &spec["components"]["schemas"];
        loop {
            let before = sent.len();
            for name in sent.clone() {
                refs(&schemas[&name], &mut sent);
            }
            if sent.len() == before {
                break;
            }
        }
        for name in &sent {
            unbounded(&schemas[name], name, &mut found);
        }
        assert!(
            found.is_empty(),
            "integers without minimum and maximum: {found:#?}"
        );
    }

    /// openapi.json describes each declared endpoint with the declaration's audit action and
    /// permission, and every documented operation outside the public and SDK routes is
    /// declared (deny by default).
    #[test]
    fn openapi_matches_the_declarations() {
        let spec: serde_json::Value =
            serde_json::from_str(OPENAPI).expect("openapi.json is valid JSON");
        let public = ["/healthz", "/readyz", "/openapi.json"];
        let mut documented = 0;
        for (path, ops) in spec["paths"].as_object().expect("paths") {
            for (method, op) in ops.as_object().expect("operations") {
                // flags: the SDK endpoints authenticate client tokens themselves
                if public.contains(&path.as_str())
                    || crate::flags_api::SDK_PATHS.contains(&path.as_str())
                {
                    continue;
                }
                documented += 1;
                let endpoint = ferry_core::endpoint::find(method, path)
                    .unwrap_or_else(|| panic!("{method} {path} is not declared"));
                assert_eq!(op["x-ferry-action"], endpoint.action, "{method} {path}");
                assert_eq!(
                    op["x-ferry-permission"],
                    endpoint.permission_label(),
                    "{method} {path}"
                );
                if endpoint.need != access::Need::Public {
                    assert!(op["responses"]["403"].is_object(), "{method} {path}: 403");
                    assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
                }
            }
        }
        assert_eq!(documented, ferry_core::endpoint::ENDPOINTS.len());
    }
}
