//! Identity endpoints: login/logout, whoami, users, roles, role bindings, tokens, can-i.
//! The gate ([`crate::access::gate`]) has authenticated the caller and checked the route's
//! permission; handlers here check what only they can (self-service, no escalation).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_core::api::identity::{
    BindingView, CanIResponse, CreateBindingRequest, CreateRoleRequest, CreateTokenRequest,
    CreateUserRequest, CreatedToken, LoginLinkRequest, LoginRequest, LoginResponse,
    PasswordRequest, RoleDeleted, TokenState, TokenView, UseLoginLinkRequest, UserView, WhoAmI,
};
use ferry_core::duration::HumanDuration;
use ferry_core::manifest::Manifest;
use ferry_core::rbac::{self, Permission, Role, Scope, Target};
use ferry_store::{BindingRecord, NewBinding, NewToken, RoleRecord, TokenRecord, UserRecord};
use serde::Deserialize;

use crate::access::{Access, AuditSlot, ClientAddr, load_roles, too_many};
use crate::api::{ApiFailure, ApiResult, AppState, internal};
use crate::auth::{self, CallerKind, SESSION_TTL_MS};
use crate::clock::now_ms;

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
}

fn store_failure(e: ferry_store::StoreError) -> ApiFailure {
    match e {
        ferry_store::StoreError::NotFound(m) => not_found(format!("{m} not found")),
        ferry_store::StoreError::Conflict(m) => {
            ApiFailure::new(StatusCode::CONFLICT, "conflict", m)
        }
        other => internal(other),
    }
}

/// User names: 1–64 characters, a letter or digit first, then letters, digits, `.`, `_`,
/// `-` or `@`.
pub fn validate_username(name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if name.is_empty() || name.len() > 64 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid user name {name:?}: 1 to 64 characters, starting with a letter or digit, \
             then letters, digits, '.', '_', '-' or '@'"
        ));
    }
    Ok(())
}

fn validate_scope(app: &Option<String>, envs: &[String]) -> Result<(), String> {
    if app.as_deref().is_some_and(|a| a.trim().is_empty()) {
        return Err("app must not be empty (leave it out for all apps)".to_string());
    }
    if envs.iter().any(|e| e.trim().is_empty()) {
        return Err("environment names must not be empty".to_string());
    }
    Ok(())
}

fn role_named(roles: &[Role], name: &str) -> ApiResult<Role> {
    rbac::find_role(roles, name).cloned().ok_or_else(|| {
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        bad_request(format!(
            "unknown role {name:?}; roles: {}",
            names.join(", ")
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Login, logout, whoami
// ---------------------------------------------------------------------------------------------

pub async fn login(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Extension(client): Extension<ClientAddr>,
    Json(request): Json<LoginRequest>,
) -> Response {
    let username = request.username.trim().to_string();
    slot.with(|n| n.actor = Some(format!("user:{username}")));
    let now = now_ms();
    let user_key = format!("user:{username}");
    let addr_key = client.0.map(|ip| format!("addr:{ip}"));
    let locked = {
        let throttle = state.gov.throttle();
        [Some(&user_key), addr_key.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|k| throttle.check(k, now).err())
            .max()
    };
    if let Some(retry_after_ms) = locked {
        let secs = retry_after_ms.div_ceil(1000);
        slot.with(|n| n.outcome = Some(format!("denied: throttled, retry in {secs}s")));
        return too_many(
            retry_after_ms,
            format!("too many failed logins; try again in {secs} s"),
        );
    }
    let user = match state.store.get_user(&username).await {
        Ok(user) => user,
        Err(e) => return internal(e).into_response(),
    };
    let ok = auth::verify_password(
        request.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await;
    let Some(user) = user.filter(|_| ok) else {
        {
            let mut throttle = state.gov.throttle();
            throttle.failed(&user_key, now);
            if let Some(k) = &addr_key {
                throttle.failed(k, now);
            }
            throttle.prune(now);
        }
        slot.with(|n| n.outcome = Some("failed: wrong username or password".to_string()));
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong username or password",
        )
        .into_response();
    };
    if user.disabled {
        slot.with(|n| n.outcome = Some("denied: user is disabled".to_string()));
        return ApiFailure::new(
            StatusCode::FORBIDDEN,
            "disabled",
            format!("user {username} is disabled; ask an administrator"),
        )
        .into_response();
    }
    state.gov.throttle().succeeded(&user_key);
    open_session(&state, &slot, user, now).await
}

/// A new session for `user` (a password login or a one-time link): its token, shown once.
async fn open_session(state: &AppState, slot: &AuditSlot, user: UserRecord, now: i64) -> Response {
    let token = auth::new_token();
    let expires_at_ms = now.saturating_add(SESSION_TTL_MS);
    let created = state
        .store
        .create_token(NewToken {
            name: "session".to_string(),
            token_hash: auth::token_hash(&token),
            kind: "session".to_string(),
            owner: Some(user.name.clone()),
            role: String::new(),
            app: None,
            envs: Vec::new(),
            expires_at_ms: Some(expires_at_ms),
            now_ms: now,
        })
        .await;
    match created {
        Ok(record) => {
            slot.with(|n| n.target = Some(format!("session #{}", record.id)));
            Json(LoginResponse {
                token,
                expires_at_ms,
                user: user_view(user),
            })
            .into_response()
        }
        Err(e) => internal(e).into_response(),
    }
}

/// How long a one-time console login link may wait for its use.
pub const LOGIN_LINK_TTL_MS: i64 = 10 * 60 * 1000;

/// `POST /v1/login-links`: a one-time link that logs `user` into the console, valid for ten
/// minutes (`ferry quickstart` prints one). The link is shown once; it is stored as its
/// SHA-256 only.
pub async fn create_login_link(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Json(request): Json<LoginLinkRequest>,
) -> ApiResult<(StatusCode, Json<ferry_core::api::LoginLink>)> {
    validate_username(&request.user).map_err(bad_request)?;
    slot.with(|n| n.target = Some(format!("user {}", request.user)));
    let user = state
        .store
        .get_user(&request.user)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("user {} not found", request.user)))?;
    if user.disabled {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "disabled",
            format!("user {} is disabled; enable it first", user.name),
        ));
    }
    let token = auth::new_token();
    let now = now_ms();
    let expires_at_ms = now.saturating_add(LOGIN_LINK_TTL_MS);
    state
        .store
        .create_login_link(
            &auth::token_hash(&token),
            &user.name,
            &access.caller.principal(),
            now,
            expires_at_ms,
        )
        .await
        .map_err(store_failure)?;
    Ok((
        StatusCode::CREATED,
        Json(ferry_core::api::LoginLink {
            user: user.name,
            path: format!("/login/link/{token}"),
            expires_at_ms,
        }),
    ))
}

/// `POST /v1/login/link`: exchanges a one-time login link's token for a session, once.
/// A used, expired or unknown link is refused (401) and counts as a failed login of the
/// client's address (the same throttle as `POST /v1/login`).
pub async fn use_login_link(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Extension(client): Extension<ClientAddr>,
    Json(request): Json<UseLoginLinkRequest>,
) -> Response {
    let now = now_ms();
    let addr_key = client.0.map(|ip| format!("addr:{ip}"));
    let locked = addr_key
        .as_ref()
        .and_then(|k| state.gov.throttle().check(k, now).err());
    if let Some(retry_after_ms) = locked {
        let secs = retry_after_ms.div_ceil(1000);
        slot.with(|n| n.outcome = Some(format!("denied: throttled, retry in {secs}s")));
        return too_many(
            retry_after_ms,
            format!("too many failed logins; try again in {secs} s"),
        );
    }
    if request.token.len() > 128 {
        return bad_request("a login link token has at most 128 characters").into_response();
    }
    let used = match state
        .store
        .use_login_link(&auth::token_hash(&request.token), now)
        .await
    {
        Ok(used) => used,
        Err(e) => return internal(e).into_response(),
    };
    let username = match used {
        Ok(username) => username,
        Err(why) => {
            if let Some(k) = &addr_key {
                let mut throttle = state.gov.throttle();
                throttle.failed(k, now);
                throttle.prune(now);
            }
            let message = match why {
                ferry_store::LinkRefusal::Unknown => "unknown login link".to_string(),
                ferry_store::LinkRefusal::Used(at) => {
                    format!(
                        "this login link was used already (at {})",
                        auth::rfc3339(at)
                    )
                }
                ferry_store::LinkRefusal::Expired(at) => {
                    format!("this login link expired at {}", auth::rfc3339(at))
                }
            };
            slot.with(|n| n.outcome = Some(format!("failed: {message}")));
            return ApiFailure::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{message}; log in with a password or ask for a new link"),
            )
            .into_response();
        }
    };
    slot.with(|n| n.actor = Some(format!("user:{username}")));
    let user = match state.store.get_user(&username).await {
        Ok(Some(user)) if !user.disabled => user,
        Ok(_) => {
            slot.with(|n| n.outcome = Some("denied: user is disabled or gone".to_string()));
            return ApiFailure::new(
                StatusCode::FORBIDDEN,
                "disabled",
                format!("user {username} is disabled; ask an administrator"),
            )
            .into_response();
        }
        Err(e) => return internal(e).into_response(),
    };
    open_session(&state, &slot, user, now).await
}

pub async fn logout(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
) -> ApiResult<Json<TokenView>> {
    if access.caller.kind != CallerKind::User {
        return Err(bad_request(
            "logout ends a session from `POST /v1/login`; revoke API tokens with \
             `DELETE /v1/tokens/{id}`",
        ));
    }
    slot.with(|n| n.target = Some(format!("session #{}", access.caller.token_id)));
    let record = state
        .store
        .revoke_token(access.caller.token_id, now_ms())
        .await
        .map_err(store_failure)?;
    Ok(Json(token_view(record, now_ms())))
}

pub async fn whoami(Extension(access): Extension<Access>) -> Json<WhoAmI> {
    let c = access.caller;
    Json(WhoAmI {
        role: c.role_names(),
        name: c.name,
        kind: c.kind,
        user: c.user,
        token_id: c.token_id,
        expires_at_ms: c.token_expires_at_ms,
        bindings: c.bindings,
    })
}

// ---------------------------------------------------------------------------------------------
// Users
// ---------------------------------------------------------------------------------------------

pub async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<UserView>>> {
    Ok(Json(
        state
            .store
            .list_users()
            .await
            .map_err(internal)?
            .into_iter()
            .map(user_view)
            .collect(),
    ))
}

pub async fn create_user(
    State(state): State<AppState>,
    Json(request): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<UserView>)> {
    let name = request.username.trim().to_string();
    validate_username(&name).map_err(bad_request)?;
    request.password.check_policy().map_err(bad_request)?;
    // A taken name is refused before the (costly) hash; the insert still refuses a race.
    if state
        .store
        .get_user(&name)
        .await
        .map_err(internal)?
        .is_some()
    {
        return Err(user_exists(&name));
    }
    let hash = auth::hash_password(request.password)
        .await
        .map_err(internal)?;
    let user = state
        .store
        .create_user(&name, &hash, now_ms())
        .await
        .map_err(|e| match e {
            ferry_store::StoreError::Conflict(_) => user_exists(&name),
            other => internal(other),
        })?;
    Ok((StatusCode::CREATED, Json(user_view(user))))
}

fn user_exists(name: &str) -> ApiFailure {
    ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("user {name} already exists"),
    )
}

async fn set_disabled(state: &AppState, name: &str, disabled: bool) -> ApiResult<UserRecord> {
    let now = now_ms();
    let user = state
        .store
        .set_user_disabled(name, disabled, now)
        .await
        .map_err(store_failure)?;
    if disabled {
        // end their sessions now (their tokens are refused while they are disabled)
        for session in state
            .store
            .list_tokens(Some(name), Some("session"))
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|t| t.revoked_at_ms.is_none())
        {
            state
                .store
                .revoke_token(session.id, now)
                .await
                .map_err(internal)?;
        }
    }
    Ok(user)
}

pub async fn disable_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(user_view(set_disabled(&state, &name, true).await?)))
}

pub async fn enable_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<UserView>> {
    Ok(Json(user_view(set_disabled(&state, &name, false).await?)))
}

/// Changes a password. One's own: `current_password` must match (even for an admin);
/// someone else's: `manage_users` (checked by the gate). Other sessions of the user end.
pub async fn set_password(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(name): Path<String>,
    Json(request): Json<PasswordRequest>,
) -> ApiResult<Json<UserView>> {
    request.password.check_policy().map_err(bad_request)?;
    let Some(user) = state.store.get_user(&name).await.map_err(internal)? else {
        return Err(not_found(format!("user {name} not found")));
    };
    let own = access.caller.kind == CallerKind::User
        && access.caller.user.as_deref() == Some(name.as_str());
    if own {
        let Some(current) = request.current_password else {
            return Err(bad_request(
                "changing your own password needs current_password",
            ));
        };
        if !auth::verify_password(current, Some(user.password_hash.clone())).await {
            return Err(slot.deny("the current password is wrong".to_string()));
        }
    }
    let hash = auth::hash_password(request.password)
        .await
        .map_err(internal)?;
    let now = now_ms();
    state
        .store
        .set_user_password(&name, &hash, now)
        .await
        .map_err(store_failure)?;
    for session in state
        .store
        .list_tokens(Some(&name), Some("session"))
        .await
        .map_err(internal)?
        .into_iter()
        .filter(|t| t.revoked_at_ms.is_none() && t.id != access.caller.token_id)
    {
        state
            .store
            .revoke_token(session.id, now)
            .await
            .map_err(internal)?;
    }
    let user = state
        .store
        .get_user(&name)
        .await
        .map_err(internal)?
        .ok_or_else(|| not_found(format!("user {name} not found")))?;
    Ok(Json(user_view(user)))
}

// ---------------------------------------------------------------------------------------------
// Roles
// ---------------------------------------------------------------------------------------------

pub async fn list_roles(State(state): State<AppState>) -> ApiResult<Json<Vec<Role>>> {
    Ok(Json(load_roles(&state.store).await.map_err(internal)?))
}

pub async fn create_role(
    State(state): State<AppState>,
    Json(request): Json<CreateRoleRequest>,
) -> ApiResult<(StatusCode, Json<Role>)> {
    rbac::validate_role_name(&request.name).map_err(bad_request)?;
    if rbac::is_builtin_role_name(&request.name) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "{} is a built-in role and cannot be redefined",
                request.name
            ),
        ));
    }
    let permissions = request
        .permissions
        .iter()
        .map(|p| p.parse::<Permission>())
        .collect::<Result<std::collections::BTreeSet<_>, _>>()
        .map_err(bad_request)?;
    if permissions.is_empty() {
        return Err(bad_request("a role needs at least one permission"));
    }
    state
        .store
        .create_role(&RoleRecord {
            name: request.name.clone(),
            description: request.description.clone(),
            permissions: permissions.iter().map(|p| p.as_str().to_string()).collect(),
            created_at_ms: now_ms(),
        })
        .await
        .map_err(|e| match e {
            ferry_store::StoreError::Conflict(_) => ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("role {} already exists", request.name),
            ),
            other => internal(other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(Role {
            name: request.name,
            description: request.description,
            permissions,
            builtin: false,
        }),
    ))
}

pub async fn delete_role(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<RoleDeleted>> {
    if rbac::is_builtin_role_name(&name) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{name} is a built-in role and cannot be deleted"),
        ));
    }
    // approval rules that name the role: no one could ever approve there any more
    let uses: Vec<String> = applied_manifests(&state)
        .await?
        .iter()
        .flat_map(|(app, m)| {
            m.role_uses(&name)
                .into_iter()
                .map(move |p| format!("app {app}: {p}"))
        })
        .collect();
    if !uses.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "role {name} is still used by manifests ({}); change those manifests and apply \
                 them first",
                uses.join(", ")
            ),
        ));
    }
    state
        .store
        .delete_role(&name, now_ms())
        .await
        .map_err(store_failure)?;
    Ok(Json(RoleDeleted { deleted: name }))
}

// ---------------------------------------------------------------------------------------------
// Bindings
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct BindingsQuery {
    pub user: Option<String>,
}

/// With `manage_users`: everyone's (or `?user=`'s). Otherwise: one's own.
pub async fn list_bindings(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Query(query): Query<BindingsQuery>,
) -> ApiResult<Json<Vec<BindingView>>> {
    let manager = access.allows(Permission::ManageUsers, Target::global());
    let own = access.caller.user.clone();
    let subject = match (manager, query.user) {
        (true, user) => user,
        (false, Some(user)) if Some(&user) == own.as_ref() => Some(user),
        (false, Some(_)) => {
            return Err(slot.deny(
                "denied: listing the bindings of other users needs manage_users".to_string(),
            ));
        }
        (false, None) => match own {
            Some(user) => Some(user),
            None => return Ok(Json(Vec::new())),
        },
    };
    Ok(Json(
        state
            .store
            .list_bindings(subject.as_deref())
            .await
            .map_err(internal)?
            .into_iter()
            .map(binding_view)
            .collect(),
    ))
}

/// Every app's manifest as applied now, by app name.
async fn applied_manifests(state: &AppState) -> ApiResult<Vec<(String, Manifest)>> {
    let apps = state.store.list_apps().await.map_err(internal)?;
    apps.into_iter()
        .map(|a| {
            Ok((
                a.name,
                serde_json::from_str(&a.manifest_json).map_err(internal)?,
            ))
        })
        .collect()
}

/// The names in `scope` that exist nowhere (apps as applied now, with their environments).
async fn unknown_in_scope(state: &AppState, scope: &Scope) -> ApiResult<Vec<rbac::UnknownName>> {
    let known = applied_manifests(state)
        .await?
        .into_iter()
        .map(|(app, m)| (app, m.environments.keys().map(|e| e.to_string()).collect()))
        .collect();
    Ok(rbac::unknown_in_scope(scope, &known))
}

pub async fn create_binding(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Json(request): Json<CreateBindingRequest>,
) -> ApiResult<(StatusCode, Json<BindingView>)> {
    validate_scope(&request.app, &request.envs).map_err(bad_request)?;
    role_named(&access.roles, &request.role)?;
    slot.with(|n| n.app = request.app.clone());
    let scope = Scope {
        app: request.app.clone(),
        envs: request.envs.clone(),
    };
    let unknown = unknown_in_scope(&state, &scope).await?;
    let unknown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    if !unknown.is_empty() && !request.allow_missing {
        return Err(bad_request(format!(
            "the binding would grant nothing: {}; apply the app's manifest first, or bind \
             ahead with --allow-missing (API: \"allow_missing\": true)",
            unknown.join("; ")
        )));
    }
    let binding = state
        .store
        .create_binding(NewBinding {
            subject: request.user.clone(),
            role: request.role,
            app: request.app,
            envs: request.envs,
            created_by: access.caller.name.clone(),
            now_ms: now_ms(),
        })
        .await
        .map_err(store_failure)?;
    slot.with(|n| {
        n.target = Some(format!("binding #{}", binding.id));
        if !unknown.is_empty() {
            n.summary = Some(format!(
                "give role {} to user {} on {} ahead of time: {}",
                binding.role,
                binding.subject,
                scope.short(),
                unknown.join("; ")
            ));
        }
    });
    Ok((StatusCode::CREATED, Json(binding_view(binding))))
}

pub async fn delete_binding(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Path(id): Path<i64>,
) -> ApiResult<Json<BindingView>> {
    let binding = state
        .store
        .delete_binding(id)
        .await
        .map_err(store_failure)?;
    slot.with(|n| {
        n.target = Some(format!("binding #{id}"));
        n.app = binding.app.clone();
        n.summary = Some(format!(
            "delete binding #{id}: role {} of user {} on {}",
            binding.role,
            binding.subject,
            Scope {
                app: binding.app.clone(),
                envs: binding.envs.clone()
            }
            .short()
        ));
    });
    Ok(Json(binding_view(binding)))
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Own tokens (sessions included); every token with `manage_users`.
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
) -> ApiResult<Json<Vec<TokenView>>> {
    let now = now_ms();
    let tokens = if access.allows(Permission::ManageUsers, Target::global()) {
        state
            .store
            .list_tokens(None, None)
            .await
            .map_err(internal)?
    } else if let (CallerKind::User, Some(user)) = (access.caller.kind, &access.caller.user) {
        state
            .store
            .list_tokens(Some(user), None)
            .await
            .map_err(internal)?
    } else {
        state
            .store
            .get_token(access.caller.token_id)
            .await
            .map_err(internal)?
            .into_iter()
            .collect()
    };
    Ok(Json(
        tokens.into_iter().map(|t| token_view(t, now)).collect(),
    ))
}

/// Mints an API token. Users and the admin token may; API tokens may not. The token's
/// permissions must all be the caller's own in the token's whole scope (no escalation);
/// a user's token stays limited by the user's rights afterwards too.
pub async fn create_token(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Json(request): Json<CreateTokenRequest>,
) -> ApiResult<(StatusCode, Json<CreatedToken>)> {
    let name = request.name.trim().to_string();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(bad_request(
            "token name: 1 to 64 characters, no control characters",
        ));
    }
    validate_scope(&request.app, &request.envs).map_err(bad_request)?;
    slot.with(|n| n.app = request.app.clone());
    if access.caller.kind == CallerKind::Token {
        return Err(slot.deny(
            "API tokens cannot make tokens; log in as a user (or use the admin token)".to_string(),
        ));
    }
    let role = role_named(&access.roles, &request.role)?;
    let now = now_ms();
    let expires_at_ms = match &request.expires_in {
        None => None,
        Some(text) => {
            let d: HumanDuration = text.parse().map_err(bad_request)?;
            let d: Duration = d.get();
            if d.is_zero() {
                return Err(bad_request("expires_in must be more than 0"));
            }
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            Some(now.saturating_add(ms))
        }
    };
    // no escalation: every permission of the role, on every target of the scope
    let targets: Vec<Target<'_>> = if request.envs.is_empty() {
        vec![Target {
            app: request.app.as_deref(),
            env: None,
        }]
    } else {
        request
            .envs
            .iter()
            .map(|e| Target {
                app: request.app.as_deref(),
                env: Some(e.as_str()),
            })
            .collect()
    };
    for permission in &role.permissions {
        for target in &targets {
            let decision = access.decide(*permission, *target);
            if !decision.allowed {
                return Err(slot.deny(format!(
                    "a token cannot have more rights than its maker: role {} has {permission} \
                     on {target}, which you lack ({})",
                    role.name, decision.reason
                )));
            }
        }
    }
    let token = auth::new_token();
    let record = state
        .store
        .create_token(NewToken {
            name,
            token_hash: auth::token_hash(&token),
            kind: "api".to_string(),
            owner: match access.caller.kind {
                CallerKind::User => access.caller.user.clone(),
                _ => None,
            },
            role: role.name.clone(),
            app: request.app,
            envs: request.envs,
            expires_at_ms,
            now_ms: now,
        })
        .await
        .map_err(internal)?;
    slot.with(|n| n.target = Some(format!("token #{}", record.id)));
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            info: token_view(record, now),
        }),
    ))
}

/// Revokes a token: one's own, or any with `manage_users`. The admin token is rotated by
/// deleting `DATA_DIR/admin.token` and restarting, not here.
pub async fn delete_token(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(id): Path<i64>,
) -> ApiResult<Json<TokenView>> {
    let manager = access.allows(Permission::ManageUsers, Target::global());
    let token = state.store.get_token(id).await.map_err(internal)?;
    let own = token.as_ref().is_some_and(|t| {
        t.id == access.caller.token_id
            || (access.caller.kind == CallerKind::User
                && t.owner.is_some()
                && t.owner == access.caller.user)
    });
    if !manager && !own {
        // the same answer whether or not it exists
        return Err(slot.deny(format!(
            "denied: token #{id} is not yours and revoking others' tokens needs manage_users"
        )));
    }
    let Some(token) = token else {
        return Err(not_found(format!("token #{id} not found")));
    };
    if token.kind == "admin" {
        return Err(bad_request(
            "the admin token is rotated by deleting DATA_DIR/admin.token and restarting the \
             server",
        ));
    }
    slot.with(|n| {
        n.summary = Some(format!("revoke token #{id} ({})", token.name));
        n.app = token.app.clone();
    });
    let record = state
        .store
        .revoke_token(id, now_ms())
        .await
        .map_err(store_failure)?;
    Ok(Json(token_view(record, now_ms())))
}

// ---------------------------------------------------------------------------------------------
// can-i
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct CanIQuery {
    pub permission: String,
    pub app: Option<String>,
    pub env: Option<String>,
    /// Ask for another user (needs manage_users).
    #[serde(rename = "as")]
    pub as_user: Option<String>,
}

pub async fn can_i(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Query(query): Query<CanIQuery>,
) -> ApiResult<Json<CanIResponse>> {
    let permission: Permission = query.permission.parse().map_err(bad_request)?;
    let target = Target {
        app: query.app.as_deref(),
        env: query.env.as_deref(),
    };
    let (subject, decision) = match &query.as_user {
        None => (
            access.caller.name.clone(),
            access.decide(permission, target),
        ),
        Some(user) => {
            access.require(&slot, Permission::ManageUsers, Target::global())?;
            let Some(record) = state.store.get_user(user).await.map_err(internal)? else {
                return Err(not_found(format!("user {user} not found")));
            };
            let bindings = auth::user_bindings(&state.store, &record.name)
                .await
                .map_err(internal)?;
            let mut decision = rbac::decide(&access.roles, &bindings, permission, target);
            if record.disabled {
                decision = rbac::Decision {
                    allowed: false,
                    reason: format!("denied: user {user} is disabled"),
                    granted_by: None,
                };
            }
            (format!("user:{user}"), decision)
        }
    };
    Ok(Json(CanIResponse {
        subject,
        permission,
        app: query.app,
        env: query.env,
        decision,
    }))
}

/// A user as the API shows one.
fn user_view(user: UserRecord) -> UserView {
    UserView {
        name: user.name,
        disabled: user.disabled,
        created_at_ms: user.created_at_ms,
        updated_at_ms: user.updated_at_ms,
    }
}

fn binding_view(b: BindingRecord) -> BindingView {
    BindingView {
        id: b.id,
        subject: b.subject,
        role: b.role,
        app: b.app,
        envs: b.envs,
        created_by: b.created_by,
        created_at_ms: b.created_at_ms,
    }
}

/// A token as listed at `now`: never its secret nor its hash.
fn token_view(t: TokenRecord, now: i64) -> TokenView {
    TokenView {
        state: TokenState::at(t.revoked_at_ms, t.expires_at_ms, now),
        id: t.id,
        name: t.name,
        kind: t.kind,
        owner: t.owner,
        role: t.role,
        app: t.app,
        envs: t.envs,
        created_at_ms: t.created_at_ms,
        expires_at_ms: t.expires_at_ms,
        revoked_at_ms: t.revoked_at_ms,
        last_used_at_ms: t.last_used_at_ms,
    }
}
