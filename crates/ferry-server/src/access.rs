//! Authorisation and auditing in one place.
//!
//! Every API route (except `/healthz`, `/readyz`, `/openapi.json`) goes through [`gate`],
//! which looks the route up in [`RULES`] — its stable action name, the permission it needs
//! and where its target comes from — then, in order:
//! 1. authenticates the bearer token (401 when missing or bad; `POST /v1/login` is public);
//! 2. resolves the target (app/env from the path, a deployment's app/env from the store,
//!    the app of a manifest body) and asks [`ferry_core::rbac::decide`] (403 when denied —
//!    before any existence check, so an invisible app answers 403, never 404);
//! 3. runs the handler with the [`Access`] and an [`AuditSlot`] in the request extensions;
//! 4. appends an audit record for every non-GET request, every denial and every login.
//!
//! Handlers refine: lists are filtered with [`Access::decide`]; a few endpoints need a
//! check only the handler can make (minting a token within one's own rights, changing one's
//! own password) and call [`Access::require`], whose denials are audited the same way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_core::api::ApplyRequest;
use ferry_core::audit::AuditEntry;
use ferry_core::rbac::{self, Binding, Decision, Permission, Role, Target, Throttle};
use ferry_store::Store;
use serde_json::Value;

use crate::api::{ApiFailure, AppState, internal};
use crate::auth::{self, Caller};
use crate::clock::now_ms;

use ferry_core::api::MAX_REQUEST_BYTES;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credentials (login).
    Public,
    /// Any authenticated caller; the handler may check more.
    Authenticated,
    /// This permission on the route's target.
    Perm(Permission),
    /// This permission somewhere (lists; the handler filters what is shown).
    Anywhere(Permission),
    /// The caller is the user named in the path, or has this permission (globally).
    SelfOr(Permission),
    // releases:
    /// This permission on the route's app in at least one environment (recording a
    /// release: whoever may deploy it somewhere).
    InSomeEnv(Permission),
}

/// Where a route's target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFrom {
    /// The server itself.
    Global,
    /// `{app}` in the path.
    App,
    /// `{app}` and `{env}` in the path.
    AppEnv,
    /// `{id}` of a deployment in the path: its app and env.
    Deployment,
    /// The `app:` of the manifest in an `ApplyRequest` body.
    Manifest,
    // releases:
    /// `{app}` in the path and the environment named by the body's `to` (promotions).
    BodyTo,
}

/// One route: method, path template (as in the router), stable audit action name, what it
/// needs and on what.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Method,
    pub path: &'static str,
    pub action: &'static str,
    pub need: Need,
    pub target: TargetFrom,
}

const fn rule(
    method: Method,
    path: &'static str,
    action: &'static str,
    need: Need,
    target: TargetFrom,
) -> Rule {
    Rule {
        method,
        path,
        action,
        need,
        target,
    }
}

use Need::{Anywhere, Authenticated, InSomeEnv, Perm, Public, SelfOr};
use Permission as P;
use TargetFrom::{App, AppEnv, BodyTo, Deployment, Global, Manifest};

/// Every gated route. The router serves exactly these (a test checks it); a route missing
/// here answers 405 — deny by default.
pub static RULES: &[Rule] = &[
    rule(Method::POST, "/v1/login", "login", Public, Global),
    rule(Method::POST, "/v1/login/link", "login.link", Public, Global),
    rule(
        Method::POST,
        "/v1/login-links",
        "login_links.create",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(Method::POST, "/v1/logout", "logout", Authenticated, Global),
    rule(Method::GET, "/v1/whoami", "whoami", Authenticated, Global),
    rule(Method::GET, "/v1/version", "version", Authenticated, Global),
    rule(
        Method::GET,
        "/metrics",
        "metrics",
        Perm(P::ViewMetrics),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/apps",
        "apps.list",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::POST,
        "/v1/apps",
        "apply",
        Perm(P::ManageApps),
        Manifest,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}",
        "apps.get",
        Perm(P::View),
        App,
    ),
    rule(
        Method::DELETE,
        "/v1/apps/{app}",
        "apps.delete",
        Perm(P::ManageApps),
        App,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/status",
        "status",
        Perm(P::View),
        App,
    ),
    rule(
        Method::POST,
        const_concat::DEPLOYMENTS,
        "deploy",
        Perm(P::Deploy),
        AppEnv,
    ),
    rule(
        Method::GET,
        const_concat::DEPLOYMENTS,
        "history",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::ROLLBACK,
        "rollback",
        Perm(P::Rollback),
        AppEnv,
    ),
    rule(
        Method::GET,
        const_concat::LOGS,
        "logs",
        Perm(P::ViewLogs),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/dora",
        "dora",
        Perm(P::View),
        AppEnv,
    ),
    // alerts: reading takes `view`; a silence switches off an alert's rollback and its
    // promotion block, so it takes `rollback` on the environment.
    rule(
        Method::GET,
        "/v1/alerts",
        "alerts.list",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/silences",
        "silences.list",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/silences",
        "silences.create",
        Perm(P::Rollback),
        AppEnv,
    ),
    rule(
        Method::DELETE,
        "/v1/apps/{app}/envs/{env}/silences/{id}",
        "silences.delete",
        Perm(P::Rollback),
        AppEnv,
    ),
    rule(
        Method::GET,
        const_concat::WATCH,
        "watch",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::PROMOTE,
        "promote",
        Perm(P::Promote),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::PAUSE,
        "pause",
        Perm(P::Promote),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::RESUME,
        "resume",
        Perm(P::Promote),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::ABORT,
        "abort",
        Perm(P::Abort),
        AppEnv,
    ),
    rule(
        Method::POST,
        const_concat::RETRY,
        "retry",
        Perm(P::Deploy),
        AppEnv,
    ),
    rule(
        Method::GET,
        const_concat::SECRETS,
        "secrets.list",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::PUT,
        const_concat::SECRET,
        "secrets.set",
        Perm(P::ManageSecrets),
        AppEnv,
    ),
    rule(
        Method::DELETE,
        const_concat::SECRET,
        "secrets.delete",
        Perm(P::ManageSecrets),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/secrets/rotate-key",
        "secrets.rotate_key",
        Perm(P::ManageServer),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/deployments/{id}",
        "deployments.get",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::GET,
        "/v1/deployments/{id}/events",
        "deployments.events",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::POST,
        "/v1/deployments/{id}/approve",
        "approve",
        Perm(P::Approve),
        Deployment,
    ),
    rule(
        Method::DELETE,
        "/v1/deployments/{id}/approve",
        "approve.withdraw",
        Perm(P::Approve),
        Deployment,
    ),
    rule(
        Method::GET,
        "/v1/deployments/{id}/approvals",
        "approvals",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::GET,
        "/v1/deployments/{id}/change-record",
        "change_record",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::POST,
        "/v1/teardown",
        "teardown",
        Perm(P::ManageServer),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/users",
        "users.list",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::POST,
        "/v1/users",
        "users.create",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::POST,
        "/v1/users/{name}/disable",
        "users.disable",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::POST,
        "/v1/users/{name}/enable",
        "users.enable",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::PUT,
        "/v1/users/{name}/password",
        "users.password",
        SelfOr(P::ManageUsers),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/roles",
        "roles.list",
        Authenticated,
        Global,
    ),
    rule(
        Method::POST,
        "/v1/roles",
        "roles.create",
        Perm(P::ManageRoles),
        Global,
    ),
    rule(
        Method::DELETE,
        "/v1/roles/{name}",
        "roles.delete",
        Perm(P::ManageRoles),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/bindings",
        "bindings.list",
        Authenticated,
        Global,
    ),
    rule(
        Method::POST,
        "/v1/bindings",
        "bindings.create",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::DELETE,
        "/v1/bindings/{id}",
        "bindings.delete",
        Perm(P::ManageUsers),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/tokens",
        "tokens.list",
        Authenticated,
        Global,
    ),
    rule(
        Method::POST,
        "/v1/tokens",
        "tokens.create",
        Authenticated,
        Global,
    ),
    rule(
        Method::DELETE,
        "/v1/tokens/{id}",
        "tokens.delete",
        Authenticated,
        Global,
    ),
    rule(
        Method::GET,
        "/v1/auth/can-i",
        "auth.can_i",
        Authenticated,
        Global,
    ),
    // notify:
    rule(
        Method::GET,
        "/v1/notifications",
        "notifications",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/audit",
        "audit.query",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/audit/export",
        "audit.export",
        Anywhere(P::View),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/audit/verify",
        "audit.verify",
        Perm(P::View),
        Global,
    ),
    rule(
        Method::GET,
        "/v1/audit/checkpoints",
        "audit.checkpoints",
        Perm(P::View),
        Global,
    ),
    // releases:
    rule(
        Method::POST,
        "/v1/apps/{app}/releases",
        "releases.create",
        InSomeEnv(P::Deploy),
        App,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/releases",
        "releases.list",
        Perm(P::View),
        App,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/releases/{version}",
        "releases.get",
        Perm(P::View),
        App,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/promotions",
        "promotions.create",
        Perm(P::Deploy),
        BodyTo,
    ),
    // gates:
    rule(
        Method::GET,
        "/v1/deployments/{id}/gates",
        "gates",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::POST,
        "/v1/deployments/{id}/overrides",
        "gates.override",
        Perm(P::OverrideFreeze),
        Deployment,
    ),
    // config:
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/config",
        "config.get",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/redeploy",
        "redeploy",
        Perm(P::Deploy),
        AppEnv,
    ),
    // hooks:
    rule(
        Method::GET,
        "/v1/deployments/{id}/hooks",
        "deployments.hooks",
        Perm(P::View),
        Deployment,
    ),
    rule(
        Method::GET,
        "/v1/deployments/{id}/hooks/{name}/output",
        "deployments.hook_output",
        Perm(P::ViewLogs),
        Deployment,
    ),
    // flags:
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/flags",
        "flags.list",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flags",
        "flags.create",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/flags/{flag}",
        "flags.get",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::PUT,
        "/v1/apps/{app}/envs/{env}/flags/{flag}",
        "flags.set",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/enable",
        "flags.enable",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/disable",
        "flags.disable",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/archive",
        "flags.archive",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::PUT,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/rollout",
        "flags.rollout",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::PUT,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/variants",
        "flags.variants",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout",
        "flags.guarded_rollout.get",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout",
        "flags.guarded_rollout.start",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::DELETE,
        "/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout",
        "flags.guarded_rollout.stop",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/features",
        "flags.export",
        Perm(P::View),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/features",
        "flags.import",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/flag-tokens",
        "flags.tokens.list",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::POST,
        "/v1/apps/{app}/envs/{env}/flag-tokens",
        "flags.tokens.create",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::DELETE,
        "/v1/apps/{app}/envs/{env}/flag-tokens/{id}",
        "flags.tokens.delete",
        Perm(P::ManageFlags),
        AppEnv,
    ),
    rule(
        Method::GET,
        "/v1/apps/{app}/envs/{env}/flag-metrics",
        "flags.metrics",
        Perm(P::View),
        AppEnv,
    ),
];

/// Path templates under `/v1/apps/{app}/envs/{env}`.
mod const_concat {
    pub const DEPLOYMENTS: &str = "/v1/apps/{app}/envs/{env}/deployments";
    pub const ROLLBACK: &str = "/v1/apps/{app}/envs/{env}/rollback";
    pub const LOGS: &str = "/v1/apps/{app}/envs/{env}/logs";
    pub const WATCH: &str = "/v1/apps/{app}/envs/{env}/watch";
    pub const PROMOTE: &str = "/v1/apps/{app}/envs/{env}/promote";
    pub const PAUSE: &str = "/v1/apps/{app}/envs/{env}/pause";
    pub const RESUME: &str = "/v1/apps/{app}/envs/{env}/resume";
    pub const ABORT: &str = "/v1/apps/{app}/envs/{env}/abort";
    pub const RETRY: &str = "/v1/apps/{app}/envs/{env}/retry";
    pub const SECRETS: &str = "/v1/apps/{app}/envs/{env}/secrets";
    pub const SECRET: &str = "/v1/apps/{app}/envs/{env}/secrets/{name}";
}

pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.method == *method && r.path == path)
}

// ---------------------------------------------------------------------------------------------
// Server-wide security state
// ---------------------------------------------------------------------------------------------

/// In-memory security state shared by the API: the login throttle and the audit key.
pub struct Governance {
    pub throttle: Mutex<Throttle>,
    /// HMAC key of the audit checkpoints (`DATA_DIR/audit.key`).
    pub audit_key: [u8; 32],
}

impl Governance {
    pub fn new(audit_key: [u8; 32]) -> Self {
        Governance {
            throttle: Mutex::new(Throttle::new()),
            audit_key,
        }
    }

    pub fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// ---------------------------------------------------------------------------------------------
// Access: the caller plus the roles, with the decisions
// ---------------------------------------------------------------------------------------------

/// The authenticated caller and the roles in force, for this request.
#[derive(Debug, Clone)]
pub struct Access {
    pub caller: Caller,
    pub roles: Arc<Vec<Role>>,
}

impl Access {
    /// May the caller do `permission` on `target`? For a token made by a user, the owner's
    /// bindings must allow it too.
    pub fn decide(&self, permission: Permission, target: Target<'_>) -> Decision {
        let decision = rbac::decide(&self.roles, &self.caller.bindings, permission, target);
        if !decision.allowed {
            return decision;
        }
        if let Some(owner) = &self.caller.owner_bindings {
            let theirs = rbac::decide(&self.roles, owner, permission, target);
            if !theirs.allowed {
                return Decision {
                    allowed: false,
                    reason: format!(
                        "denied: the token's owner {} lacks it — {}",
                        self.caller.user.as_deref().unwrap_or("?"),
                        theirs.reason
                    ),
                    granted_by: None,
                };
            }
        }
        decision
    }

    pub fn allows(&self, permission: Permission, target: Target<'_>) -> bool {
        self.decide(permission, target).allowed
    }

    /// Whether some binding (and, for a user's token, some owner binding) carries
    /// `permission` on any scope.
    pub fn anywhere(&self, permission: Permission) -> bool {
        let has = |bindings: &[Binding]| {
            bindings
                .iter()
                .any(|b| rbac::find_role(&self.roles, &b.role).is_some_and(|r| r.has(permission)))
        };
        has(&self.caller.bindings) && self.caller.owner_bindings.as_deref().is_none_or(has)
    }

    /// `Ok` if allowed; else a 403 whose reason is also written to the audit slot.
    pub fn require(
        &self,
        slot: &AuditSlot,
        permission: Permission,
        target: Target<'_>,
    ) -> Result<(), ApiFailure> {
        let decision = self.decide(permission, target);
        if decision.allowed {
            Ok(())
        } else {
            Err(slot.deny(decision.reason))
        }
    }
}

/// Built-in roles plus the custom ones from the store (unknown permission names in a stored
/// role are skipped with a warning).
pub async fn load_roles(store: &Store) -> Result<Vec<Role>, ferry_store::StoreError> {
    let mut roles = rbac::builtin_roles();
    for custom in store.list_roles().await? {
        let mut permissions = std::collections::BTreeSet::new();
        for name in &custom.permissions {
            match name.parse::<Permission>() {
                Ok(p) => {
                    permissions.insert(p);
                }
                Err(e) => tracing::warn!(role = %custom.name, error = %e, "skipping permission"),
            }
        }
        roles.push(Role {
            name: custom.name,
            description: custom.description,
            permissions,
            builtin: false,
        });
    }
    Ok(roles)
}

// ---------------------------------------------------------------------------------------------
// The audit slot: what handlers add to the record of their request
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// Overrides the actor (login: the user who tried).
    pub actor: Option<String>,
    pub summary: Option<String>,
    pub target: Option<String>,
    pub app: Option<String>,
    pub env: Option<String>,
    /// Set when a handler refused: `denied: <reason>`.
    pub denied: Option<String>,
    /// Overrides the computed outcome (e.g. `failed: wrong password`).
    pub outcome: Option<String>,
}

/// Shared with the handler through the request extensions.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<AuditNote>>);

impl AuditSlot {
    pub fn with(&self, f: impl FnOnce(&mut AuditNote)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn take(&self) -> AuditNote {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A 403 answer, with the reason recorded for the audit log.
    pub fn deny(&self, reason: String) -> ApiFailure {
        self.with(|n| n.denied = Some(reason.clone()));
        ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", reason)
    }
}

// ---------------------------------------------------------------------------------------------
// The gate
// ---------------------------------------------------------------------------------------------

/// The client's IP address, when the connection told it (request extension).
#[derive(Debug, Clone)]
pub struct ClientAddr(pub Option<String>);

/// What the gate knows about a request, for the decision and the audit record.
struct Seen {
    rule: &'static Rule,
    source: Option<String>,
    params: HashMap<String, String>,
    body: Option<Value>,
    reason: Option<String>,
    app: Option<String>,
    env: Option<String>,
    target: Option<String>,
}

pub async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let Some(rule) = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|m| rule_for(&method, m.as_str()))
    else {
        return ApiFailure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not served here; see /openapi.json"),
        )
        .into_response();
    };
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let (mut parts, body) = request.into_parts();
    let params = raw_params(&mut parts).await;
    let mut seen = Seen {
        rule,
        source,
        app: params.get("app").cloned(),
        env: params.get("env").cloned(),
        target: None,
        params,
        body: None,
        reason: reason_header(&parts.headers).filter(|r| !r.trim().is_empty()),
    };
    let slot = AuditSlot::default();
    let now = now_ms();

    // 1. who: from the headers alone, before anything the caller sent is read
    let access = if rule.need == Need::Public {
        None
    } else {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match auth::authenticate(&state.store, header, now).await {
            Ok(Ok(caller)) => match load_roles(&state.store).await {
                Ok(roles) => Some(Access {
                    caller,
                    roles: Arc::new(roles),
                }),
                Err(e) => return internal(e).into_response(),
            },
            Ok(Err(message)) => {
                discard(body.into_data_stream());
                let response =
                    ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", message.clone())
                        .into_response();
                if method != Method::GET {
                    record(
                        &state,
                        &seen,
                        "anonymous",
                        &format!("failed: 401 {message}"),
                        slot,
                    )
                    .await;
                }
                return response;
            }
            Err(e) => return internal(e).into_response(),
        }
    };
    let actor = access
        .as_ref()
        .map(|a| a.caller.name.clone())
        .unwrap_or_else(|| "anonymous".to_string());

    // 2. may they, as far as the path tells: still nothing of the body is read, so a
    //    caller without the permission costs no parsing, however large the body
    if let Some(access) = &access
        && let Err(denied) = authorize(&state, access, &mut seen).await
    {
        discard(body.into_data_stream());
        let outcome = denied_outcome(denied.message());
        record(&state, &seen, &actor, &outcome, slot).await;
        return denied.into_response();
    }

    // 3. the body, bounded
    let bytes = if method == Method::GET {
        Bytes::new()
    } else {
        match read_bounded(body).await {
            Some(b) => b,
            None => {
                let failure = ApiFailure::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("request bodies are limited to {MAX_REQUEST_BYTES} bytes"),
                );
                if access.is_some() {
                    record(&state, &seen, &actor, "failed: 413", slot).await;
                }
                return failure.into_response();
            }
        }
    };
    // A secret's value never enters what the gate keeps for the audit record.
    if rule.action != "secrets.set" {
        seen.body = serde_json::from_slice(&bytes).ok();
    }
    if let Some(reason) = seen
        .body
        .as_ref()
        .and_then(|b| b.get("reason"))
        .and_then(Value::as_str)
        .filter(|r| !r.trim().is_empty())
    {
        seen.reason = Some(reason.to_string());
    }

    // 4. may they, for targets the body names
    if let Some(access) = &access
        && let Err(denied) = authorize_body(access, &mut seen, &bytes)
    {
        let outcome = denied_outcome(denied.message());
        record(&state, &seen, &actor, &outcome, slot).await;
        return denied.into_response();
    }

    // 5. do it
    if let Some(access) = access {
        parts.extensions.insert(access);
    }
    parts.extensions.insert(slot.clone());
    parts.extensions.insert(ClientAddr(seen.source.clone()));
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;

    // 6. write it down
    let status = response.status();
    let denied = slot.0.lock().map(|n| n.denied.clone()).unwrap_or(None);
    let must = method != Method::GET || status == StatusCode::FORBIDDEN || denied.is_some();
    if must {
        let outcome = match denied {
            Some(reason) => denied_outcome(&reason),
            None if status.is_success() || status.is_redirection() => "ok".to_string(),
            None => format!("failed: {}", status.as_u16()),
        };
        record(&state, &seen, &actor, &outcome, slot).await;
    }
    response
}

/// The whole body if it has at most [`MAX_REQUEST_BYTES`]; else `None`, the rest being
/// discarded (see [`discard`]).
async fn read_bounded(body: Body) -> Option<Bytes> {
    use futures_util::StreamExt;
    let mut chunks = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.ok()?;
        if bytes.len() + chunk.len() > MAX_REQUEST_BYTES {
            discard(chunks);
            return None;
        }
        bytes.extend_from_slice(&chunk);
    }
    Some(bytes.freeze())
}

/// Reads and drops, in the background, the body of a request answered without it (at most
/// 4 × [`MAX_REQUEST_BYTES`] more, for at most 30 s): a client still sending then gets to
/// read the answer instead of a broken pipe. Nothing is kept or parsed.
fn discard(body: impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send + 'static) {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut body = std::pin::pin!(body);
        let drain = async {
            let mut read = 0;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len();
                if read > 4 * MAX_REQUEST_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), drain).await;
    });
}

/// `denied: <reason>` (decisions' reasons already start with `denied:`).
fn denied_outcome(reason: &str) -> String {
    if reason.starts_with("denied") {
        reason.to_string()
    } else {
        format!("denied: {reason}")
    }
}

async fn raw_params(parts: &mut axum::http::request::Parts) -> HashMap<String, String> {
    let mut into = HashMap::new();
    if let Ok(raw) =
        <RawPathParams as axum::extract::FromRequestParts<()>>::from_request_parts(parts, &()).await
    {
        for (k, v) in raw.iter() {
            into.insert(k.to_string(), v.to_string());
        }
    }
    into
}

fn forbidden(reason: String) -> ApiFailure {
    ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", reason)
}

/// Whether the rule's target is named by the request body (judged in [`authorize_body`]).
fn body_target(target: TargetFrom) -> bool {
    matches!(target, TargetFrom::Manifest | TargetFrom::BodyTo)
}

/// Resolves the target from the path and checks the rule, before the body is read. A
/// target named by the body is only pre-checked here: the caller must hold the permission
/// somewhere, or no byte of the body is read. `Err` = the 403 answer.
async fn authorize(state: &AppState, access: &Access, seen: &mut Seen) -> Result<(), ApiFailure> {
    if body_target(seen.rule.target) {
        return match seen.rule.need {
            Perm(p) | InSomeEnv(p) | Anywhere(p) if !access.anywhere(p) => Err(forbidden(format!(
                "denied: none of your bindings gives {p} anywhere"
            ))),
            _ => Ok(()),
        };
    }
    if seen.rule.target == TargetFrom::Deployment {
        let id = seen.params.get("id").and_then(|id| id.parse::<i64>().ok());
        if let Some(id) = id {
            seen.target = Some(format!("deployment {id}"));
            if let Some(d) = state.store.get_deployment(id).await.map_err(internal)? {
                seen.app = Some(d.app);
                seen.env = Some(d.env);
            }
            // unknown: judged as a global target, so only who may see everything
            // learns that it doesn't exist
        }
    }
    decide(access, seen, seen.rule.need)
}

/// Checks the rule against the target the body names (manifests, promotions).
fn authorize_body(access: &Access, seen: &mut Seen, bytes: &Bytes) -> Result<(), ApiFailure> {
    let mut need = seen.rule.need;
    match seen.rule.target {
        // releases:
        TargetFrom::BodyTo => {
            // no `to`: judged app-wide, so only who may deploy everywhere in the app learns
            // what is wrong with the request
            seen.env = seen
                .body
                .as_ref()
                .and_then(|b| b.get("to"))
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        TargetFrom::Manifest => {
            // Only the `app:` line is read here; the handler parses and checks the rest.
            let app = serde_json::from_slice::<ApplyRequest>(bytes)
                .ok()
                .and_then(|r| ferry_core::manifest::app_name(&r.manifest))
                .filter(|app| !app.is_empty());
            match app {
                Some(app) => seen.app = Some(app),
                // the handler explains what is wrong with it to anyone who may apply somewhere
                None => {
                    if let Perm(p) = need {
                        need = Anywhere(p);
                    }
                }
            }
        }
        _ => return Ok(()),
    }
    decide(access, seen, need)
}

/// The decision of `need` on the target `seen` has resolved.
fn decide(access: &Access, seen: &Seen, need: Need) -> Result<(), ApiFailure> {
    let target = Target {
        app: seen.app.as_deref(),
        env: seen.env.as_deref(),
    };
    match need {
        Public | Authenticated => Ok(()),
        Perm(p) => {
            let decision = access.decide(p, target);
            if decision.allowed {
                Ok(())
            } else {
                Err(forbidden(decision.reason))
            }
        }
        Anywhere(p) => {
            if access.anywhere(p) {
                Ok(())
            } else {
                Err(forbidden(format!(
                    "denied: none of your bindings gives {p} anywhere"
                )))
            }
        }
        // releases:
        InSomeEnv(p) => {
            let decision = access.decide(p, target);
            if decision.allowed {
                return Ok(());
            }
            let envs: std::collections::BTreeSet<&str> = access
                .caller
                .bindings
                .iter()
                .flat_map(|b| b.scope.envs.iter().map(String::as_str))
                .collect();
            let somewhere = envs.into_iter().any(|env| {
                access.allows(
                    p,
                    Target {
                        app: target.app,
                        env: Some(env),
                    },
                )
            });
            if somewhere {
                Ok(())
            } else {
                Err(forbidden(decision.reason))
            }
        }
        SelfOr(p) => {
            let named = seen.params.get("name");
            if named.is_some()
                && access.caller.user.as_ref() == named
                && access.caller.kind == auth::CallerKind::User
            {
                return Ok(());
            }
            let decision = access.decide(p, Target::global());
            if decision.allowed {
                Ok(())
            } else {
                Err(forbidden(decision.reason))
            }
        }
    }
}

/// Appends the audit record of a request. A failure to write is logged, not answered: the
/// request has been served.
async fn record(state: &AppState, seen: &Seen, actor: &str, outcome: &str, slot: AuditSlot) {
    let note = slot.take();
    let entry = AuditEntry {
        at_ms: now_ms(),
        actor: note.actor.unwrap_or_else(|| actor.to_string()),
        source: seen.source.clone(),
        action: seen.rule.action.to_string(),
        app: note.app.or_else(|| seen.app.clone()),
        env: note.env.or_else(|| seen.env.clone()),
        target: note.target.or_else(|| seen.target.clone()),
        summary: note.summary.unwrap_or_else(|| summarize(seen)),
        reason: seen.reason.clone(),
        outcome: note.outcome.unwrap_or_else(|| outcome.to_string()),
    };
    if let Err(e) = state.store.append_audit(entry).await {
        tracing::error!(error = %e, action = seen.rule.action, "could not write the audit record");
    }
}

/// A one-line description of what the request asks, from the path and chosen body fields
/// only — never a password, token or secret value.
fn summarize(seen: &Seen) -> String {
    let s = |key: &str| -> Option<String> {
        seen.body
            .as_ref()
            .and_then(|b| b.get(key))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                _ => None,
            })
            .filter(|v| !v.is_empty())
    };
    let p = |key: &str| seen.params.get(key).cloned().unwrap_or_default();
    let app = seen.app.clone().unwrap_or_default();
    let env = seen.env.clone().unwrap_or_default();
    let scope = |app: Option<String>, envs: Option<String>| {
        format!(
            "{} [{}]",
            app.unwrap_or_else(|| "all apps".to_string()),
            envs.unwrap_or_else(|| "all environments".to_string())
        )
    };
    match seen.rule.action {
        "login" => format!("log in as {}", s("username").unwrap_or_default()),
        "login.link" => "log in with a one-time link".to_string(),
        "login_links.create" => format!(
            "create a one-time console login link for {}",
            s("user").unwrap_or_default()
        ),
        "logout" => "log out".to_string(),
        "apply" => format!(
            "apply the manifest of {}{}",
            if app.is_empty() { "an app" } else { &app },
            if s("dry_run").as_deref() == Some("true") {
                " (dry run)"
            } else {
                ""
            }
        ),
        "deploy" => format!(
            "deploy {app} {} to {env}",
            s("version").unwrap_or_else(|| "?".to_string())
        ),
        "retry" => format!("retry the last deployment of {app} in {env}"),
        "rollback" => match s("to") {
            Some(to) => format!("roll back {app} in {env} to {to}"),
            None => format!("roll back {app} in {env} to the previous version"),
        },
        "promote" => format!(
            "promote {app} in {env}{}",
            if s("full").as_deref() == Some("true") {
                " fully"
            } else {
                " one step"
            }
        ),
        "pause" => format!("pause the rollout of {app} in {env}"),
        "resume" => format!("resume the rollout of {app} in {env}"),
        "abort" => format!("abort the rollout of {app} in {env}"),
        "teardown" => "tear down every app and stop the server".to_string(),
        "secrets.set" => format!("set secret {} of {app} in {env}", p("name")),
        "secrets.delete" => format!("delete secret {} of {app} in {env}", p("name")),
        "secrets.rotate_key" => "rotate the secrets master key".to_string(),
        "users.create" => format!("add user {}", s("username").unwrap_or_default()),
        "users.disable" => format!("disable user {}", p("name")),
        "users.enable" => format!("enable user {}", p("name")),
        "users.password" => format!("change the password of user {}", p("name")),
        "roles.create" => format!(
            "define role {} with permissions [{}]",
            s("name").unwrap_or_default(),
            s("permissions").unwrap_or_default()
        ),
        "roles.delete" => format!("delete role {}", p("name")),
        "bindings.create" => format!(
            "give role {} to user {} on {}",
            s("role").unwrap_or_default(),
            s("user").unwrap_or_default(),
            scope(s("app"), s("envs"))
        ),
        "bindings.delete" => format!("delete binding #{}", p("id")),
        "tokens.create" => format!(
            "create token {} with role {} on {}{}",
            s("name").unwrap_or_default(),
            s("role").unwrap_or_default(),
            scope(s("app"), s("envs")),
            s("expires_in")
                .map(|e| format!(", expiring in {e}"))
                .unwrap_or_else(|| ", never expiring".to_string())
        ),
        "tokens.delete" => format!("revoke token #{}", p("id")),
        // releases:
        "releases.create" => format!(
            "record release {app} {}",
            s("version").unwrap_or_else(|| "?".to_string())
        ),
        "promotions.create" => format!(
            "promote {app} from {} to {}",
            s("from").unwrap_or_else(|| "?".to_string()),
            s("to").unwrap_or_else(|| "?".to_string())
        ),
        // config:
        "redeploy" => format!("redeploy {app} in {env} with its current configuration"),
        other => {
            let on = match (&seen.app, &seen.env, &seen.target) {
                (_, _, Some(t)) => format!(" {t}"),
                (Some(a), Some(e), None) => format!(" {a}/{e}"),
                (Some(a), None, None) => format!(" {a}"),
                _ => String::new(),
            };
            format!("{other}{on}")
        }
    }
}

/// Adds `Retry-After` (seconds, rounded up) to a 429 answer.
pub fn too_many(retry_after_ms: u64, message: String) -> Response {
    let mut response =
        ApiFailure::new(StatusCode::TOO_MANY_REQUESTS, "throttled", message).into_response();
    let secs = retry_after_ms.div_ceil(1000).max(1);
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// The `X-Ferry-Reason` header: percent-encoded UTF-8 (plain ASCII passes as itself).
/// `None` when absent or not valid UTF-8 once decoded.
pub fn reason_header(headers: &axum::http::HeaderMap) -> Option<String> {
    let raw = headers.get("x-ferry-reason")?.as_bytes();
    percent_encoding::percent_decode(raw)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(raw: &str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            "x-ferry-reason",
            HeaderValue::from_str(raw).expect("header"),
        );
        headers
    }

    #[test]
    fn reasons_are_percent_decoded_utf8() {
        assert_eq!(
            reason_header(&with_reason("INC-7: bad config")).as_deref(),
            Some("INC-7: bad config")
        );
        assert_eq!(
            reason_header(&with_reason("d%C3%A9ploiement urgent 100%25")).as_deref(),
            Some("déploiement urgent 100%")
        );
        // A lone `%` from a hand-written header stays itself.
        assert_eq!(
            reason_header(&with_reason("99% sure")).as_deref(),
            Some("99% sure")
        );
        assert_eq!(reason_header(&with_reason("%FF%FE")), None);
        assert_eq!(reason_header(&axum::http::HeaderMap::new()), None);
    }
}
