//! Login, sessions, tokens, users, roles, bindings and can-i through the real router.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::{Harness, PASSWORD};
use serde_json::json;

#[tokio::test]
async fn login_ok_wrong_password_unknown_user_and_disabled() {
    let h = Harness::new().await;
    h.add_user("alice").await;
    h.bind("alice", "developer", Some("shop"), &["dev", "staging"])
        .await;

    let ok = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": PASSWORD})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let body = ok.json();
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("ferry_"));
    assert_eq!(body["user"]["name"], "alice");
    assert!(body["user"].get("password_hash").is_none());
    let ttl = body["expires_at_ms"].as_i64().unwrap() - ferry_now();
    assert!((11 * 3_600_000..=12 * 3_600_000).contains(&ttl), "{ttl}");

    let me = h.call("GET", "/v1/whoami", Some(token), None).await.json();
    assert_eq!(me["name"], "user:alice");
    assert_eq!(me["kind"], "user");
    assert_eq!(me["role"], "developer");
    assert_eq!(me["bindings"][0]["scope"]["app"], "shop");
    assert_eq!(
        me["bindings"][0]["scope"]["envs"],
        json!(["dev", "staging"])
    );

    let wrong = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": "not the password"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let unknown = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "mallory", "password": "not the password"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        wrong.json()["message"],
        unknown.json()["message"],
        "same answer"
    );

    // disabling ends the session and refuses logins
    h.admin_ok("POST", "/v1/users/alice/disable", None).await;
    let after = h.call("GET", "/v1/whoami", Some(token), None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{}", after.text);
    let refused = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": PASSWORD})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);
    assert!(refused.text.contains("disabled"));
    h.admin_ok("POST", "/v1/users/alice/enable", None).await;
    h.login("alice").await;
}

fn ferry_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn failed_logins_are_throttled_per_user_and_per_address() {
    let h = Harness::new().await;
    h.add_user("alice").await;
    let bad = json!({"username": "alice", "password": "wrong wrong wrong"});
    for i in 0..5 {
        let a = h
            .call_from("10.0.0.1:1", "POST", "/v1/login", None, Some(bad.clone()))
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // locked for the user, even with the right password and from elsewhere
    let locked = h
        .call_from(
            "10.0.0.2:1",
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": PASSWORD})),
        )
        .await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        locked.text
    );
    let retry: u64 = locked.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");

    // per address: five different (unknown) users from one address lock the address
    h.add_user("bob").await;
    for i in 0..5 {
        let a = h
            .call_from(
                "10.0.0.9:1",
                "POST",
                "/v1/login",
                None,
                Some(json!({"username": format!("ghost{i}"), "password": "nope nope nope"})),
            )
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    let from_locked = h
        .call_from(
            "10.0.0.9:2",
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "bob", "password": PASSWORD})),
        )
        .await;
    assert_eq!(from_locked.status, StatusCode::TOO_MANY_REQUESTS);
    let elsewhere = h
        .call_from(
            "10.0.0.10:2",
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "bob", "password": PASSWORD})),
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::OK);

    // every attempt is in the audit log with its outcome
    let log = h
        .admin_ok("GET", "/v1/audit?action=login&limit=100", None)
        .await;
    let outcomes: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| o.starts_with("failed")).count(),
        10,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| o.contains("throttled")).count(),
        2,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "ok").count(),
        1,
        "{outcomes:?}"
    );
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|r| r["source"].is_string())
    );
}

#[tokio::test]
async fn sessions_and_tokens_expire_and_are_revoked() {
    let h = Harness::new().await;
    let session = h.user_with("alice", "developer", Some("shop"), &[]).await;
    assert_eq!(
        h.call("GET", "/v1/whoami", Some(&session), None)
            .await
            .status,
        StatusCode::OK
    );

    // logout revokes the session
    let out = h.call("POST", "/v1/logout", Some(&session), None).await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.text);
    let gone = h.call("GET", "/v1/whoami", Some(&session), None).await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    assert!(gone.text.contains("revoked at"), "{}", gone.text);

    // an expired session
    let session = h.login("alice").await;
    sqlx::query("UPDATE api_tokens SET expires_at_ms = 1000 WHERE kind = 'session' AND revoked_at_ms IS NULL")
        .execute(h.store.pool())
        .await
        .unwrap();
    let expired = h.call("GET", "/v1/whoami", Some(&session), None).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(
        expired.text.contains("expired at 1970-01-01T00:00:01Z"),
        "{}",
        expired.text
    );

    // API tokens: made with an expiry, listed without secret, revocable
    let session = h.login("alice").await;
    let made = h
        .call("POST", "/v1/tokens", Some(&session), Some(json!({"name": "ci", "role": "deployer", "app": "shop", "envs": ["staging"], "expires_in": "90d"})))
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let made = made.json();
    let ci = made["token"].as_str().unwrap().to_string();
    let id = made["id"].as_i64().unwrap();
    let days = (made["expires_at_ms"].as_i64().unwrap() - ferry_now()) / 86_400_000;
    assert!((89..=90).contains(&days), "{days}");
    assert_eq!(made["owner"], "alice");

    let me = h.call("GET", "/v1/whoami", Some(&ci), None).await.json();
    assert_eq!(
        (me["name"].as_str(), me["kind"].as_str()),
        (Some("token:ci"), Some("token"))
    );
    let listed = h.call("GET", "/v1/tokens", Some(&session), None).await;
    assert!(!listed.text.contains(&ci), "never the secret");
    let listed = listed.json();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap();
    assert_eq!(row["state"], "active");
    assert!(row["last_used_at_ms"].is_i64(), "use recorded: {row}");
    assert!(row.get("token").is_none() && row.get("token_hash").is_none());

    sqlx::query("UPDATE api_tokens SET expires_at_ms = 1000 WHERE id = $1")
        .bind(id)
        .execute(h.store.pool())
        .await
        .unwrap();
    let expired = h.call("GET", "/v1/whoami", Some(&ci), None).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    assert!(expired.text.contains("token ci"), "{}", expired.text);
    assert!(expired.text.contains("expired at"), "{}", expired.text);

    let second = h
        .call(
            "POST",
            "/v1/tokens",
            Some(&session),
            Some(json!({"name": "ci2", "role": "viewer", "app": "shop"})),
        )
        .await
        .json();
    let ci2 = second["token"].as_str().unwrap().to_string();
    let revoke = h
        .call(
            "DELETE",
            &format!("/v1/tokens/{}", second["id"]),
            Some(&session),
            None,
        )
        .await;
    assert_eq!(revoke.status, StatusCode::OK, "{}", revoke.text);
    assert_eq!(revoke.json()["state"], "revoked");
    assert_eq!(
        h.call("GET", "/v1/whoami", Some(&ci2), None).await.status,
        StatusCode::UNAUTHORIZED
    );

    // someone else's token: 403 whether or not it exists; admin tokens aren't revoked here
    let bob = h.user_with("bob", "viewer", None, &[]).await;
    let other = h
        .call("DELETE", &format!("/v1/tokens/{id}"), Some(&bob), None)
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let none = h
        .call("DELETE", "/v1/tokens/424242", Some(&bob), None)
        .await;
    assert_eq!(none.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.call("DELETE", "/v1/tokens/424242", Some(&h.admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_users_token_never_outgrows_its_owner() {
    let h = Harness::new().await;
    let dev = h
        .user_with("dana", "developer", Some("shop"), &["dev", "staging"])
        .await;
    let mint = |body: serde_json::Value| {
        let h = &h;
        let dev = dev.clone();
        async move { h.call("POST", "/v1/tokens", Some(&dev), Some(body)).await }
    };
    // within her rights
    let ok =
        mint(json!({"name": "ci", "role": "deployer", "app": "shop", "envs": ["staging"]})).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    // escalations: another env, all envs, another app, all apps, a role with more
    for (body, why) in [
        (
            json!({"name": "x", "role": "deployer", "app": "shop", "envs": ["production"]}),
            "production",
        ),
        (
            json!({"name": "x", "role": "deployer", "app": "shop"}),
            "all environments",
        ),
        (
            json!({"name": "x", "role": "deployer", "app": "blog", "envs": ["staging"]}),
            "blog",
        ),
        (json!({"name": "x", "role": "viewer"}), "all apps"),
        (
            json!({"name": "x", "role": "admin", "app": "shop", "envs": ["staging"]}),
            "admin role",
        ),
        (
            json!({"name": "x", "role": "approver", "app": "shop", "envs": ["staging"]}),
            "approve",
        ),
    ] {
        let a = mint(body).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{why}: {}", a.text);
        assert!(
            a.text.contains("more rights than its maker"),
            "{why}: {}",
            a.text
        );
    }
    // API tokens cannot mint at all
    let ci = ok.json()["token"].as_str().unwrap().to_string();
    let by_token = h
        .call(
            "POST",
            "/v1/tokens",
            Some(&ci),
            Some(json!({"name": "y", "role": "deployer", "app": "shop", "envs": ["staging"]})),
        )
        .await;
    assert_eq!(by_token.status, StatusCode::FORBIDDEN);

    // the token follows its owner's rights: lose the binding, lose the token's power
    let check = |token: String| {
        let h = &h;
        async move {
            h.call(
                "GET",
                "/v1/auth/can-i?permission=deploy&app=shop&env=staging",
                Some(&token),
                None,
            )
            .await
            .json()
        }
    };
    assert_eq!(check(ci.clone()).await["allowed"], true);
    let bindings = h.admin_ok("GET", "/v1/bindings?user=dana", None).await;
    let bid = bindings[0]["id"].as_i64().unwrap();
    h.admin_ok("DELETE", &format!("/v1/bindings/{bid}"), None)
        .await;
    let now = check(ci.clone()).await;
    assert_eq!(now["allowed"], false, "{now}");
    assert!(
        now["reason"].as_str().unwrap().contains("owner dana"),
        "{now}"
    );
    let deploy = h
        .call(
            "POST",
            "/v1/apps/shop/envs/staging/deployments",
            Some(&ci),
            Some(json!({"version": "1.0.0"})),
        )
        .await;
    assert_eq!(deploy.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn can_i_explains_and_as_needs_manage_users() {
    let h = Harness::new().await;
    let dev = h
        .user_with("dana", "developer", Some("shop"), &["dev", "staging"])
        .await;
    let yes = h
        .call(
            "GET",
            "/v1/auth/can-i?permission=deploy&app=shop&env=staging",
            Some(&dev),
            None,
        )
        .await
        .json();
    assert_eq!(yes["allowed"], true);
    assert_eq!(yes["subject"], "user:dana");
    assert!(yes["granted_by"].is_i64());
    assert!(
        yes["reason"].as_str().unwrap().contains("developer"),
        "{yes}"
    );
    let no = h
        .call(
            "GET",
            "/v1/auth/can-i?permission=deploy&app=shop&env=production",
            Some(&dev),
            None,
        )
        .await
        .json();
    assert_eq!(no["allowed"], false);
    assert!(
        no["reason"]
            .as_str()
            .unwrap()
            .contains("production not in scope"),
        "{no}"
    );
    let bad = h
        .call("GET", "/v1/auth/can-i?permission=fly", Some(&dev), None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let as_other = h
        .call(
            "GET",
            "/v1/auth/can-i?permission=view&as=admin2",
            Some(&dev),
            None,
        )
        .await;
    assert_eq!(as_other.status, StatusCode::FORBIDDEN);
    let by_admin = h
        .admin_ok(
            "GET",
            "/v1/auth/can-i?permission=deploy&app=shop&env=production&as=dana",
            None,
        )
        .await;
    assert_eq!(
        (by_admin["subject"].as_str(), by_admin["allowed"].as_bool()),
        (Some("user:dana"), Some(false))
    );
}

#[tokio::test]
async fn users_passwords_roles_and_bindings() {
    let h = Harness::new().await;
    // password policy and names
    let short = h
        .call(
            "POST",
            "/v1/users",
            Some(&h.admin),
            Some(json!({"username": "eve", "password": "short"})),
        )
        .await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let bad_name = h
        .call(
            "POST",
            "/v1/users",
            Some(&h.admin),
            Some(json!({"username": "a:b", "password": PASSWORD})),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    h.add_user("eve").await;
    let dup = h
        .call(
            "POST",
            "/v1/users",
            Some(&h.admin),
            Some(json!({"username": "eve", "password": PASSWORD})),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    let users = h.admin_ok("GET", "/v1/users", None).await;
    assert_eq!(users[0]["name"], "eve");
    assert!(!users.to_string().contains("argon2"));

    // own password: needs the current one; other sessions end
    h.bind("eve", "viewer", None, &[]).await;
    let s1 = h.login("eve").await;
    let s2 = h.login("eve").await;
    let without = h
        .call(
            "PUT",
            "/v1/users/eve/password",
            Some(&s1),
            Some(json!({"password": "a brand new password"})),
        )
        .await;
    assert_eq!(without.status, StatusCode::BAD_REQUEST);
    let wrong = h
        .call(
            "PUT",
            "/v1/users/eve/password",
            Some(&s1),
            Some(json!({"password": "a brand new password", "current_password": "nope nope nope"})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let changed = h
        .call(
            "PUT",
            "/v1/users/eve/password",
            Some(&s1),
            Some(json!({"password": "a brand new password", "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(
        h.call("GET", "/v1/whoami", Some(&s1), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.call("GET", "/v1/whoami", Some(&s2), None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let relog = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "eve", "password": "a brand new password"})),
        )
        .await;
    assert_eq!(relog.status, StatusCode::OK);
    // someone else's password needs manage_users
    h.add_user("fred").await;
    let other = h
        .call(
            "PUT",
            "/v1/users/fred/password",
            Some(&s1),
            Some(json!({"password": "another new password"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    h.admin_ok(
        "PUT",
        "/v1/users/fred/password",
        Some(json!({"password": "another new password"})),
    )
    .await;

    // roles: custom ones can be defined, bound and deleted once unused; builtins immutable
    let roles = h.admin_ok("GET", "/v1/roles", None).await;
    let names: Vec<&str> = roles
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["admin", "developer", "deployer", "approver", "viewer"]
    );
    let role = h
        .admin_ok("POST", "/v1/roles", Some(json!({"name": "releaser", "description": "ships", "permissions": ["deploy", "view", "view-logs"]})))
        .await;
    assert_eq!(role["permissions"], json!(["deploy", "view", "view_logs"]));
    assert_eq!(role["builtin"], false);
    for (body, code) in [
        (
            json!({"name": "admin", "permissions": ["view"]}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"name": "Bad Name", "permissions": ["view"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "permissions": ["fly"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "releaser", "permissions": ["view"]}),
            StatusCode::CONFLICT,
        ),
    ] {
        assert_eq!(
            h.call("POST", "/v1/roles", Some(&h.admin), Some(body))
                .await
                .status,
            code
        );
    }
    assert_eq!(
        h.call("DELETE", "/v1/roles/viewer", Some(&h.admin), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    let bid = h.bind("fred", "releaser", Some("shop"), &["staging"]).await;
    let unknown_role = h
        .call(
            "POST",
            "/v1/bindings",
            Some(&h.admin),
            Some(json!({"user": "fred", "role": "nope"})),
        )
        .await;
    assert_eq!(unknown_role.status, StatusCode::BAD_REQUEST);
    let unknown_user = h
        .call(
            "POST",
            "/v1/bindings",
            Some(&h.admin),
            Some(json!({"user": "nobody", "role": "viewer"})),
        )
        .await;
    assert_eq!(unknown_user.status, StatusCode::NOT_FOUND);
    let fred = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "fred", "password": "another new password"})),
        )
        .await
        .json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let can = h
        .call(
            "GET",
            "/v1/auth/can-i?permission=deploy&app=shop&env=staging",
            Some(&fred),
            None,
        )
        .await
        .json();
    assert_eq!(can["allowed"], true, "{can}");
    // own bindings only, unless manage_users
    let mine = h
        .call("GET", "/v1/bindings", Some(&fred), None)
        .await
        .json();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(
        h.call("GET", "/v1/bindings?user=eve", Some(&fred), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call("DELETE", "/v1/roles/releaser", Some(&h.admin), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    h.admin_ok("DELETE", &format!("/v1/bindings/{bid}"), None)
        .await;
    h.admin_ok("DELETE", "/v1/roles/releaser", None).await;
    assert_eq!(
        h.call("DELETE", "/v1/roles/releaser", Some(&h.admin), None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn invisible_targets_answer_403_never_404() {
    let h = Harness::new().await;
    let viewer = h
        .user_with("vic", "viewer", Some("shop"), &["staging"])
        .await;
    let blog = h.deployment("blog", "staging", "1.0.0", "user:x").await;
    for path in [
        "/v1/apps/nosuch".to_string(),
        "/v1/apps/nosuch/status".to_string(),
        "/v1/apps/nosuch/envs/staging/deployments".to_string(),
        "/v1/apps/shop/envs/nosuch/deployments".to_string(),
        "/v1/deployments/99999".to_string(),
        "/v1/deployments/99999/change-record".to_string(),
        format!("/v1/deployments/{blog}"),
    ] {
        let a = h.call("GET", &path, Some(&viewer), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.text);
        assert!(!a.text.contains("not found"), "{path}: {}", a.text);
    }
    // whoever may see everything learns that it doesn't exist
    for path in ["/v1/apps/nosuch", "/v1/deployments/99999"] {
        assert_eq!(
            h.call("GET", path, Some(&h.admin), None).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // and the viewer's own scope answers normally
    let shop = h.deployment("shop", "staging", "1.0.0", "user:x").await;
    let own = h
        .call(
            "GET",
            &format!("/v1/deployments/{shop}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
}

#[tokio::test]
async fn missing_or_garbage_credentials_are_401_with_a_reason() {
    let h = Harness::new().await;
    let none = h.call("GET", "/v1/whoami", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(none.text.contains("missing API token"));
    let garbage = h.call("GET", "/v1/whoami", Some("ferry_nope"), None).await;
    assert_eq!(garbage.status, StatusCode::UNAUTHORIZED);
    assert!(garbage.text.contains("invalid token"));
    let admin = h.admin_ok("GET", "/v1/whoami", None).await;
    assert_eq!(
        (
            admin["name"].as_str(),
            admin["kind"].as_str(),
            admin["role"].as_str()
        ),
        (Some("token:admin"), Some("admin"), Some("admin"))
    );
}

/// A binding naming an app or environment that exists nowhere would grant nothing: refused
/// with the near miss named, unless bound ahead (`allow_missing`, audited as such); a role
/// that an applied manifest's approval rule uses cannot be deleted.
#[tokio::test]
async fn grants_name_what_exists_and_used_roles_stay() {
    let h = Harness::new().await;
    h.add_user("gina").await;
    h.admin_ok(
        "POST",
        "/v1/roles",
        Some(json!({"name": "tech-lead", "permissions": ["approve", "view"]})),
    )
    .await;
    let manifest = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging:\n    listen: 127.0.0.1:18081\n  production:\n    listen: 127.0.0.1:18082\n    gates:\n      approvals: [{ role: approver }, { role: tech-lead }]\n";
    h.admin_ok("POST", "/v1/apps", Some(json!({ "manifest": manifest })))
        .await;
    let grant =
        |body: serde_json::Value| h.call("POST", "/v1/bindings", Some(&h.admin), Some(body));
    for (body, says) in [
        (
            json!({"user": "gina", "role": "viewer", "app": "shp"}),
            "no app named \"shp\" (did you mean shop?)",
        ),
        (
            json!({"user": "gina", "role": "viewer", "app": "shop", "envs": ["prodution"]}),
            "app shop has no environment \"prodution\" (did you mean production?)",
        ),
        (
            json!({"user": "gina", "role": "viewer", "envs": ["qa"]}),
            "no app has an environment \"qa\"",
        ),
    ] {
        let a = grant(body.clone()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        let message = a.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains(says), "{message}");
        assert!(message.contains("--allow-missing"), "{message}");
    }
    assert_eq!(
        h.admin_ok("GET", "/v1/bindings?user=gina", None).await,
        json!([]),
        "a refused grant binds nothing"
    );
    // names that exist
    let a = grant(json!({"user": "gina", "role": "viewer", "app": "shop", "envs": ["production"]}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    // ahead of time: accepted, and the audit record says so
    let a = grant(json!({"user": "gina", "role": "viewer", "app": "cart", "allow_missing": true}))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let audit = h
        .admin_ok("GET", "/v1/audit?action=bindings.create", None)
        .await;
    // (the refused grants are recorded too, as failed)
    let summaries: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["outcome"].as_str().unwrap().starts_with("failed"))
        .map(|r| r["summary"].as_str().unwrap())
        .collect();
    assert_eq!(
        summaries,
        [
            "give role viewer to user gina on shop [production]",
            "give role viewer to user gina on cart [all environments] ahead of time: \
             no app named \"cart\"",
        ]
    );

    // a role an approval rule names stays until the manifest changes
    let a = h
        .call("DELETE", "/v1/roles/tech-lead", Some(&h.admin), None)
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    assert!(
        a.text
            .contains("app shop: environments.production.gates.approvals[1].role"),
        "{}",
        a.text
    );
    let without = manifest.replace(", { role: tech-lead }", "");
    h.admin_ok("POST", "/v1/apps", Some(json!({ "manifest": without })))
        .await;
    h.admin_ok("DELETE", "/v1/roles/tech-lead", None).await;
}
