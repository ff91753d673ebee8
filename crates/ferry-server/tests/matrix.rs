//! The role × endpoint matrix, generated from ONE table: every built-in role, bound to
//! `shop [staging]` (through a user session and through an API token) and bound everywhere,
//! × every gated endpoint × in-scope target / another app / another environment.
//! Expected: allowed (an answer that is neither 401/403 nor a server error), 403, or 401
//! without credentials.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{Harness, PASSWORD};
use ferry_core::rbac::{Permission, builtin_roles};
use serde_json::{Value, json};

/// What an endpoint acts on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum On {
    /// `{app}/{env}` of the case (or a deployment there).
    AppEnv,
    /// The case's whole app.
    App,
    /// The server (global).
    Global,
}

/// What an endpoint needs.
#[derive(Clone, Copy, Debug)]
enum Needs {
    /// Just a valid credential.
    Auth,
    /// The permission on the target.
    Perm(Permission, On),
    /// The permission somewhere (lists, filtered afterwards).
    Anywhere(Permission),
    /// The permission on the target, and a user (API tokens may not).
    UserPerm(Permission, On),
    // releases:
    /// The permission on the case's app, in at least one of its environments.
    SomeEnvPerm(Permission),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Case {
    InScope,
    OtherApp,
    OtherEnv,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Principal {
    /// A user session, binding on shop [staging].
    ScopedUser,
    /// An API token made by the admin, role on shop [staging].
    ScopedToken,
    /// A user session, binding on all apps and environments.
    Everywhere,
}

struct Row {
    method: &'static str,
    /// `{app}`, `{env}`, `{dep}` (a deployment in app/env), `{n}` (unique per call).
    path: &'static str,
    body: Option<&'static str>,
    needs: Needs,
}

const fn row(
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    needs: Needs,
) -> Row {
    Row {
        method,
        path,
        body,
        needs,
    }
}

use Needs::*;
use On::*;
use Permission as P;

/// THE table: every gated endpoint with what it needs. (`/v1/login` and `/v1/login/link`
/// are public and `/v1/logout` ends the session it is called with: they are checked after
/// the matrix.)
const TABLE: &[Row] = &[
    row("GET", "/v1/whoami", None, Auth),
    row("GET", "/v1/version", None, Auth),
    row("GET", "/metrics", None, Perm(P::ViewMetrics, Global)),
    row("GET", "/v1/apps", None, Anywhere(P::View)),
    row(
        "POST",
        "/v1/apps",
        Some(
            r#"{"manifest": "app: {app}\nservices:\n  api:\n    run: [\"true\"]\nenvironments:\n  {env}:\n    listen: 127.0.0.1:{port}\n", "dry_run": true}"#,
        ),
        Perm(P::ManageApps, App),
    ),
    row("GET", "/v1/apps/{app}", None, Perm(P::View, App)),
    // No app is stored here: an allowed caller gets 404, the others 403.
    row("DELETE", "/v1/apps/{app}", None, Perm(P::ManageApps, App)),
    row("GET", "/v1/apps/{app}/status", None, Perm(P::View, App)),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/deployments",
        Some(r#"{"version": "1.2.0"}"#),
        Perm(P::Deploy, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/deployments",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/rollback",
        Some("{}"),
        Perm(P::Rollback, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/logs",
        None,
        Perm(P::ViewLogs, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/dora",
        None,
        Perm(P::View, AppEnv),
    ),
    // alerts:
    row("GET", "/v1/alerts", None, Anywhere(P::View)),
    row("GET", "/v1/silences", None, Anywhere(P::View)),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/silences",
        Some(r#"{"alert": "high_error_rate", "for": "1h", "reason": "known"}"#),
        Perm(P::Rollback, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/apps/{app}/envs/{env}/silences/{n}",
        None,
        Perm(P::Rollback, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/watch",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/promote",
        Some("{}"),
        Perm(P::Promote, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/pause",
        None,
        Perm(P::Promote, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/resume",
        None,
        Perm(P::Promote, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/abort",
        None,
        Perm(P::Abort, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/retry",
        None,
        Perm(P::Deploy, AppEnv),
    ),
    row("GET", "/v1/deployments/{dep}", None, Perm(P::View, AppEnv)),
    row(
        "GET",
        "/v1/deployments/{dep}/events",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "GET",
        "/v1/deployments/{dep}/change-record?format=markdown",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/deployments/{dep}/approve",
        Some("{}"),
        Perm(P::Approve, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/deployments/{dep}/approve",
        None,
        Perm(P::Approve, AppEnv),
    ),
    row(
        "GET",
        "/v1/deployments/{dep}/approvals",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/secrets",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "PUT",
        "/v1/apps/{app}/envs/{env}/secrets/MATRIX_{n}",
        Some(r#"{"value": "matrix value {n}"}"#),
        Perm(P::ManageSecrets, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/apps/{app}/envs/{env}/secrets/NOSUCH",
        None,
        Perm(P::ManageSecrets, AppEnv),
    ),
    row(
        "POST",
        "/v1/secrets/rotate-key",
        None,
        Perm(P::ManageServer, Global),
    ),
    row("POST", "/v1/teardown", None, Perm(P::ManageServer, Global)),
    row("GET", "/v1/users", None, Perm(P::ManageUsers, Global)),
    row(
        "POST",
        "/v1/login-links",
        Some(r#"{"user": "victim"}"#),
        Perm(P::ManageUsers, Global),
    ),
    row(
        "POST",
        "/v1/users",
        Some(r#"{"username": "new{n}", "password": "a long enough password"}"#),
        Perm(P::ManageUsers, Global),
    ),
    row(
        "POST",
        "/v1/users/victim/disable",
        None,
        Perm(P::ManageUsers, Global),
    ),
    row(
        "POST",
        "/v1/users/victim/enable",
        None,
        Perm(P::ManageUsers, Global),
    ),
    row(
        "PUT",
        "/v1/users/victim/password",
        Some(r#"{"password": "a long enough password"}"#),
        Perm(P::ManageUsers, Global),
    ),
    row("GET", "/v1/roles", None, Auth),
    row(
        "POST",
        "/v1/roles",
        Some(r#"{"name": "custom{n}", "permissions": ["view"]}"#),
        Perm(P::ManageRoles, Global),
    ),
    row(
        "DELETE",
        "/v1/roles/nosuch",
        None,
        Perm(P::ManageRoles, Global),
    ),
    row("GET", "/v1/bindings", None, Auth),
    row(
        "GET",
        "/v1/bindings?user=victim",
        None,
        Perm(P::ManageUsers, Global),
    ),
    row(
        "POST",
        "/v1/bindings",
        Some(r#"{"user": "victim", "role": "viewer", "app": "{app}"}"#),
        Perm(P::ManageUsers, Global),
    ),
    row(
        "DELETE",
        "/v1/bindings/999999",
        None,
        Perm(P::ManageUsers, Global),
    ),
    row("GET", "/v1/tokens", None, Auth),
    row(
        "POST",
        "/v1/tokens",
        Some(
            r#"{"name": "t{n}", "role": "reader", "app": "{app}", "envs": ["{env}"], "expires_in": "1h"}"#,
        ),
        UserPerm(P::View, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/tokens/999999",
        None,
        Perm(P::ManageUsers, Global),
    ),
    row(
        "GET",
        "/v1/auth/can-i?permission=deploy&app={app}&env={env}",
        None,
        Auth,
    ),
    row(
        "GET",
        "/v1/auth/can-i?permission=deploy&as=victim",
        None,
        Perm(P::ManageUsers, Global),
    ),
    // notify:
    row("GET", "/v1/notifications", None, Anywhere(P::View)),
    row("GET", "/v1/audit?app={app}", None, Anywhere(P::View)),
    row("GET", "/v1/audit/export", None, Anywhere(P::View)),
    row("GET", "/v1/audit/verify", None, Perm(P::View, Global)),
    row("GET", "/v1/audit/checkpoints", None, Perm(P::View, Global)),
    // releases:
    row(
        "POST",
        "/v1/apps/{app}/releases",
        Some(r#"{"version": "1.{n}.0", "commit": "abcdef1"}"#),
        SomeEnvPerm(P::Deploy),
    ),
    row("GET", "/v1/apps/{app}/releases", None, Perm(P::View, App)),
    row(
        "GET",
        "/v1/apps/{app}/releases/1.0.0",
        None,
        Perm(P::View, App),
    ),
    row(
        "POST",
        "/v1/apps/{app}/promotions",
        Some(r#"{"from": "dev", "to": "{env}"}"#),
        Perm(P::Deploy, AppEnv),
    ),
    // gates:
    row(
        "GET",
        "/v1/deployments/{dep}/gates",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/deployments/{dep}/overrides",
        Some(r#"{"gate": "freeze", "reason": "matrix {n}"}"#),
        Perm(P::OverrideFreeze, AppEnv),
    ),
    // config:
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/config",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/redeploy",
        None,
        Perm(P::Deploy, AppEnv),
    ),
    // hooks:
    row(
        "GET",
        "/v1/deployments/{dep}/hooks",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "GET",
        "/v1/deployments/{dep}/hooks/smoke/output",
        None,
        Perm(P::ViewLogs, AppEnv),
    ),
    // flags: (no app is stored here: an allowed caller gets 404)
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/flags",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flags",
        Some(r#"{"name": "f{n}"}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/flags/f",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "PUT",
        "/v1/apps/{app}/envs/{env}/flags/f",
        Some(r#"{"feature": {"name": "f", "enabled": true}}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flags/f/enable",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flags/f/disable",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flags/f/archive",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "PUT",
        "/v1/apps/{app}/envs/{env}/flags/f/rollout",
        Some(r#"{"percent": 5}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "PUT",
        "/v1/apps/{app}/envs/{env}/flags/f/variants",
        Some(r#"{"variants": [{"name": "a"}]}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/flags/f/guarded-rollout",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flags/f/guarded-rollout",
        Some(r#"{"steps": [5, 100]}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/apps/{app}/envs/{env}/flags/f/guarded-rollout",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/features",
        None,
        Perm(P::View, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/features",
        Some(r#"{"features": []}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/flag-tokens",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "POST",
        "/v1/apps/{app}/envs/{env}/flag-tokens",
        Some(r#"{"name": "t{n}"}"#),
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "DELETE",
        "/v1/apps/{app}/envs/{env}/flag-tokens/1",
        None,
        Perm(P::ManageFlags, AppEnv),
    ),
    row(
        "GET",
        "/v1/apps/{app}/envs/{env}/flag-metrics",
        None,
        Perm(P::View, AppEnv),
    ),
];

/// The rules spelled independently of the server: a binding on `shop [staging]` grants a
/// permission of its role on shop/staging; on the whole app `shop` only read permissions;
/// nothing global. A binding everywhere grants everything its role has.
fn expect_allowed(
    role_perms: &[Permission],
    principal: Principal,
    needs: Needs,
    case: Case,
) -> bool {
    let has = |p: Permission| role_perms.contains(&p);
    let scoped = principal != Principal::Everywhere;
    let on_target = |p: Permission, on: On| {
        has(p)
            && (!scoped
                || match on {
                    AppEnv => case == Case::InScope,
                    App => case != Case::OtherApp && p.is_read_only(),
                    Global => false,
                })
    };
    match needs {
        Auth => true,
        Perm(p, on) => on_target(p, on),
        Anywhere(p) => has(p),
        UserPerm(p, on) => principal != Principal::ScopedToken && on_target(p, on),
        // releases:
        SomeEnvPerm(p) => has(p) && (!scoped || case != Case::OtherApp),
    }
}

/// The harness runs the API without the deployment controller: routes that need it answer
/// 503 `unavailable` after the gate (so the permission was granted). Any other server error
/// is a failure.
fn without_controller(a: &common::Answer) -> bool {
    a.status == StatusCode::SERVICE_UNAVAILABLE
        && serde_json::from_str::<Value>(&a.text).is_ok_and(|v| v["code"] == "unavailable")
}

/// Whether `path` (with values) is an instance of the route `template` (with `{params}`).
fn same_route(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}')))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_times_every_endpoint_times_scope() {
    let h = Harness::new().await;
    h.add_user("victim").await;
    h.admin_ok(
        "POST",
        "/v1/roles",
        Some(json!({"name": "reader", "permissions": ["view"]})),
    )
    .await;
    let deps = [
        (
            ("shop", "staging"),
            h.deployment("shop", "staging", "1.0.0", "user:x").await,
        ),
        (
            ("blog", "staging"),
            h.deployment("blog", "staging", "1.0.0", "user:x").await,
        ),
        (
            ("shop", "production"),
            h.deployment("shop", "production", "1.0.0", "user:x").await,
        ),
    ];
    let cases = [
        (Case::InScope, "shop", "staging"),
        (Case::OtherApp, "blog", "staging"),
        (Case::OtherEnv, "shop", "production"),
    ];
    let mut principals = Vec::new();
    for role in builtin_roles() {
        let perms: Vec<Permission> = role.permissions.iter().copied().collect();
        let scoped = h
            .user_with(
                &format!("{}-scoped", role.name),
                &role.name,
                Some("shop"),
                &["staging"],
            )
            .await;
        let token = h
            .token(
                &format!("{}-token", role.name),
                &role.name,
                Some("shop"),
                &["staging"],
            )
            .await;
        let everywhere = h
            .user_with(&format!("{}-all", role.name), &role.name, None, &[])
            .await;
        principals.push((
            role.name.clone(),
            perms.clone(),
            Principal::ScopedUser,
            scoped,
        ));
        principals.push((
            role.name.clone(),
            perms.clone(),
            Principal::ScopedToken,
            token,
        ));
        principals.push((role.name.clone(), perms, Principal::Everywhere, everywhere));
    }

    let mut n = 0;
    let mut failures = Vec::new();
    let mut checked = 0;
    for r in TABLE {
        for (case, app, env) in cases {
            let dep = deps
                .iter()
                .find(|((a, e), _)| *a == app && *e == env)
                .unwrap()
                .1;
            let fill = |text: &str, n: i32| {
                text.replace("{app}", app)
                    .replace("{env}", env)
                    .replace("{dep}", &dep.to_string())
                    .replace("{n}", &n.to_string())
                    .replace("{port}", &free_port().to_string())
            };
            // no credentials, bad credentials
            for token in [None, Some("ferry_0000")] {
                n += 1;
                let body: Option<Value> =
                    r.body.map(|b| serde_json::from_str(&fill(b, n)).unwrap());
                let a = h.call(r.method, &fill(r.path, n), token, body).await;
                checked += 1;
                if a.status != StatusCode::UNAUTHORIZED {
                    failures.push(format!(
                        "{} {} {case:?} token={token:?}: want 401, got {} {}",
                        r.method, r.path, a.status, a.text
                    ));
                }
            }
            for (role, perms, principal, token) in &principals {
                n += 1;
                let body: Option<Value> =
                    r.body.map(|b| serde_json::from_str(&fill(b, n)).unwrap());
                let path = fill(r.path, n);
                let a = h.call(r.method, &path, Some(token), body).await;
                checked += 1;
                let allowed = expect_allowed(perms, *principal, r.needs, case);
                let ok = if allowed {
                    a.status != StatusCode::FORBIDDEN
                        && a.status != StatusCode::UNAUTHORIZED
                        && (!a.status.is_server_error() || without_controller(&a))
                } else {
                    a.status == StatusCode::FORBIDDEN
                };
                if !ok {
                    failures.push(format!(
                        "{role} {principal:?} {} {path} ({case:?}): want {}, got {} {}",
                        r.method,
                        if allowed { "allowed" } else { "403" },
                        a.status,
                        a.text.chars().take(300).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {checked} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked > 1_500, "{checked}");

    // the table covers exactly the gated routes but login and logout (as a set: each row
    // names its route template, each documented operation is in the table)
    let spec: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    let mut gated = std::collections::BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("x-ferry-action").is_some() {
                gated.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut covered: std::collections::BTreeSet<(String, String)> = TABLE
        .iter()
        .map(|r| {
            let path = r.path.split('?').next().unwrap();
            let template = gated
                .iter()
                .map(|(_, t)| t)
                .find(|t| same_route(t, path))
                .unwrap_or_else(|| panic!("{} {path} matches no documented route", r.method));
            (r.method.to_string(), template.clone())
        })
        .collect();
    covered.insert(("POST".into(), "/v1/login".into()));
    covered.insert(("POST".into(), "/v1/login/link".into()));
    covered.insert(("POST".into(), "/v1/logout".into()));
    assert_eq!(covered, gated, "the table covers exactly the gated routes");

    // a one-time login link is public too: an unknown one is refused
    let link = h
        .call(
            "POST",
            "/v1/login/link",
            None,
            Some(json!({"token": "ferry_not_a_link"})),
        )
        .await;
    assert_eq!(link.status, StatusCode::UNAUTHORIZED, "{}", link.text);

    // login is public; logout ends the session it comes with (any principal may)
    let login = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "victim", "password": "a long enough password"})),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.text);
    let session = login.json()["token"].as_str().unwrap().to_string();
    assert_eq!(
        h.call("POST", "/v1/logout", Some(&session), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.call("POST", "/v1/logout", Some(&session), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call("POST", "/v1/logout", None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let _ = PASSWORD;
}
