//! Authorisation and auditing in one place.
//!
//! Every API route (except `/healthz`, `/readyz`, `/openapi.json`) goes through [`gate`],
//! which looks the route up in the endpoint declarations ([`ferry_core::endpoint`]) — its
//! stable action name, the permission it needs and where its target comes from — then, in
//! order:
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
use ferry_core::endpoint::Fields;
use ferry_core::rbac::{self, Binding, Decision, Permission, Role, Target, Throttle};
use ferry_store::Store;
use serde_json::Value;

use crate::api::{ApiFailure, AppState, internal};
use crate::auth::{self, Caller};
use crate::clock::now_ms;

use ferry_core::api::MAX_REQUEST_BYTES;

use Need::{Anywhere, Authenticated, InSomeEnv, Perm, Public, SelfOr};
pub use ferry_core::endpoint::{Need, Spec as Rule, TargetFrom};

/// The declared endpoint ([`ferry_core::endpoint::ENDPOINTS`]) a request's method and
/// matched path name; none answers 405 — deny by default.
pub fn rule_for(method: &Method, path: &str) -> Option<&'static Rule> {
    ferry_core::endpoint::find(method.as_str(), path)
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
    // Every body the API takes is a JSON object (openapi.json). Another JSON value is
    // refused here: serde reads an array into a struct's fields in order, so `[]` would
    // pass for a body whose fields are all optional.
    let body: Option<Value> = serde_json::from_slice(&bytes).ok();
    if body.as_ref().is_some_and(|b| !b.is_object()) {
        if access.is_some() {
            record(&state, &seen, &actor, "failed: 422", slot).await;
        }
        return ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the request body must be a JSON object",
        )
        .into_response();
    }
    // Every request body that has a `reason` documents it as a string (or null): another
    // type is refused, not silently left out of the audit record.
    if body
        .as_ref()
        .and_then(|b| b.get("reason"))
        .is_some_and(|r| !r.is_string() && !r.is_null())
    {
        if access.is_some() {
            record(&state, &seen, &actor, "failed: 422", slot).await;
        }
        return ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "`reason` must be a string",
        )
        .into_response();
    }
    // A secret's value never enters what the gate keeps for the audit record.
    if !rule.secret_body {
        seen.body = body;
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

/// A one-line description of what the request asks, as its endpoint declares it.
fn summarize(seen: &Seen) -> String {
    seen.rule.summarize(&Fields {
        app: seen.app.as_deref(),
        env: seen.env.as_deref(),
        target: seen.target.as_deref(),
        params: &seen.params,
        body: seen.body.as_ref(),
    })
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
