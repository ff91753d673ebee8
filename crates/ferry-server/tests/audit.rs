//! The audit log as written by real requests: content, scope filtering, export, the hash
//! chain's verification against edits, deletions, reorderings and rewrites made directly in
//! SQLite, signed checkpoints against tail truncation, and change records.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::Harness;
use ferry_core::audit::{self, AuditEntry, AuditRecord};
use serde_json::{Value, json};

/// A little history made through the API; returns the number of audit records.
async fn some_history(h: &Harness) -> i64 {
    let dana = h
        .user_with("dana", "developer", Some("shop"), &["dev", "staging"])
        .await;
    // a deployment request (the controller is absent: recorded as failed: 503)
    let a = h
        .call(
            "POST",
            "/v1/apps/shop/envs/staging/deployments",
            Some(&dana),
            Some(json!({"version": "1.2.0", "reason": "JIRA-7 hotfix"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    // denied: production, and a GET on another app
    assert_eq!(
        h.call(
            "POST",
            "/v1/apps/shop/envs/production/deployments",
            Some(&dana),
            Some(json!({"version": "1.2.0"}))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call("GET", "/v1/apps/blog", Some(&dana), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // allowed GETs are not recorded
    assert_eq!(
        h.call("GET", "/v1/whoami", Some(&dana), None).await.status,
        StatusCode::OK
    );
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"username": "dana", "password": "wrong password!"})),
    )
    .await;
    h.call(
        "POST",
        "/v1/tokens",
        Some(&dana),
        Some(json!({"name": "ci", "role": "deployer", "app": "shop", "envs": ["staging"]})),
    )
    .await;
    let all = h.admin_ok("GET", "/v1/audit?limit=1000", None).await;
    all.as_array().unwrap().len() as i64
}

fn records(v: &Value) -> Vec<AuditRecord> {
    serde_json::from_value(v.clone()).unwrap()
}

#[tokio::test]
async fn requests_are_recorded_with_who_what_where_and_outcome() {
    let h = Harness::new().await;
    let count = some_history(&h).await;
    let all = records(&h.admin_ok("GET", "/v1/audit?limit=1000", None).await);
    assert_eq!(all.len() as i64, count);
    let actions: Vec<&str> = all.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "users.create",
            "bindings.create",
            "login",
            "deploy",
            "deploy",
            "apps.get",
            "login",
            "tokens.create"
        ],
    );
    let deploy = &all[3].entry;
    assert_eq!(deploy.actor, "user:dana");
    assert_eq!(deploy.source.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        (deploy.app.as_deref(), deploy.env.as_deref()),
        (Some("shop"), Some("staging"))
    );
    assert_eq!(deploy.summary, "deploy shop 1.2.0 to staging");
    assert_eq!(deploy.reason.as_deref(), Some("JIRA-7 hotfix"));
    assert_eq!(deploy.outcome, "failed: 503");
    let denied = &all[4].entry;
    assert!(
        denied
            .outcome
            .starts_with("denied: no binding gives deploy on shop/production"),
        "{}",
        denied.outcome
    );
    assert!(
        all[5].entry.outcome.starts_with("denied:"),
        "a denied GET is recorded"
    );
    assert_eq!(all[6].entry.outcome, "failed: wrong username or password");
    assert_eq!(all[6].entry.actor, "user:dana");
    assert_eq!(all[0].entry.actor, "token:admin");
    assert_eq!(all[0].entry.summary, "add user dana");
    // (the harness binds ahead of time: it applies no manifest)
    assert_eq!(
        all[1].entry.summary,
        "give role developer to user dana on shop [dev, staging] ahead of time: \
         no app named \"shop\""
    );
    assert!(
        all[7]
            .entry
            .summary
            .starts_with("create token ci with role deployer on shop [staging]")
    );
    assert_eq!(all[7].entry.outcome, "ok");
    assert!(
        all[7]
            .entry
            .target
            .as_deref()
            .unwrap()
            .starts_with("token #")
    );
    assert_eq!(
        all.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=count).collect::<Vec<_>>()
    );

    // filters
    let by_actor = records(
        &h.admin_ok("GET", "/v1/audit?actor=user:dana&action=deploy", None)
            .await,
    );
    assert_eq!(by_actor.len(), 2);
    let by_env = records(
        &h.admin_ok("GET", "/v1/audit?app=shop&env=production", None)
            .await,
    );
    assert_eq!(by_env.len(), 1);
    let limited = records(&h.admin_ok("GET", "/v1/audit?limit=2", None).await);
    assert_eq!(
        limited.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [count - 1, count],
        "newest, oldest first"
    );
    let t = all[3].entry.at_ms;
    let window = records(
        &h.admin_ok(
            "GET",
            &format!("/v1/audit?since_ms={t}&until_ms={}", t + 1),
            None,
        )
        .await,
    );
    assert!(window.iter().all(|r| r.entry.at_ms == t) && !window.is_empty());

    // scope: a viewer of shop sees shop's records, not blog's, nor global ones
    let viewer = h.user_with("vic", "viewer", Some("shop"), &[]).await;
    let seen = records(
        &h.call("GET", "/v1/audit?limit=1000", Some(&viewer), None)
            .await
            .json(),
    );
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|r| r.entry.app.as_deref() == Some("shop")),
        "{seen:?}"
    );
    let nobody = h.user_with("nob", "viewer", Some("other"), &[]).await;
    let theirs = records(&h.call("GET", "/v1/audit", Some(&nobody), None).await.json());
    // only the record of the binding that gave them app `other`
    assert!(
        theirs
            .iter()
            .all(|r| r.entry.app.as_deref() == Some("other")),
        "{theirs:?}"
    );
    assert_eq!(theirs.len(), 1);

    // export: JSON lines, oldest first, same records
    let export = h
        .call("GET", "/v1/audit/export", Some(&h.admin), None)
        .await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(
        export.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/x-ndjson")
    );
    let lines: Vec<AuditRecord> = export
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() as i64 > count);
    assert_eq!(audit::verify(&lines).unwrap().count, lines.len() as i64);
}

async fn verify(h: &Harness) -> Value {
    h.admin_ok("GET", "/v1/audit/verify", None).await
}

#[tokio::test]
async fn the_chain_verifies_and_tampering_is_found_where_it_happened() {
    // intact
    let h = Harness::new().await;
    let count = some_history(&h).await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["count"].as_i64().unwrap() >= count);
    assert_eq!(v["problem"], Value::Null);

    // an edit
    sqlx::query("UPDATE audit_log SET summary = 'deploy shop 9.9.9 to staging' WHERE seq = 4")
        .execute(h.store.pool())
        .await
        .unwrap();
    let v = verify(&h).await;
    assert_eq!(
        (v["ok"].as_bool(), v["broken_at_seq"].as_i64()),
        (Some(false), Some(4)),
        "{v}"
    );
    assert!(
        v["problem"].as_str().unwrap().contains("#4 was edited"),
        "{v}"
    );

    // a deletion
    let h = Harness::new().await;
    some_history(&h).await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(h.store.pool())
        .await
        .unwrap();
    let v = verify(&h).await;
    assert_eq!(
        (v["ok"].as_bool(), v["broken_at_seq"].as_i64()),
        (Some(false), Some(3)),
        "{v}"
    );
    assert!(
        v["problem"].as_str().unwrap().contains("#3 is missing"),
        "{v}"
    );

    // a reordering: two records swap places (their seq numbers)
    let h = Harness::new().await;
    some_history(&h).await;
    for sql in [
        "UPDATE audit_log SET seq = -5 WHERE seq = 5",
        "UPDATE audit_log SET seq = 5 WHERE seq = 6",
        "UPDATE audit_log SET seq = 6 WHERE seq = -5",
    ] {
        sqlx::query(sql).execute(h.store.pool()).await.unwrap();
    }
    let v = verify(&h).await;
    assert_eq!(
        (v["ok"].as_bool(), v["broken_at_seq"].as_i64()),
        (Some(false), Some(5)),
        "{v}"
    );

    // a clever rewrite: record 2 changed and every later record re-hashed. The chain is
    // consistent again; the signed checkpoint taken before is not fooled.
    let h = Harness::new().await;
    some_history(&h).await;
    assert!(h.api.checkpoint().await.unwrap());
    let mut chain = h.store.audit_records(0, 10_000).await.unwrap();
    chain[1].entry.summary = "give role viewer to user dana on shop [dev, staging]".to_string();
    let mut prev = chain[0].hash.clone();
    for r in chain.iter_mut().skip(1) {
        let sealed = audit::seal(r.seq, &prev, r.entry.clone());
        sqlx::query("UPDATE audit_log SET summary = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(&sealed.entry.summary)
            .bind(&sealed.prev_hash)
            .bind(&sealed.hash)
            .bind(sealed.seq)
            .execute(h.store.pool())
            .await
            .unwrap();
        prev = sealed.hash;
    }
    let rewritten = h.store.audit_records(0, 10_000).await.unwrap();
    assert!(
        audit::verify(&rewritten).is_ok(),
        "the chain alone can't tell"
    );
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(v["problem"].as_str().unwrap().contains("rewritten"), "{v}");
}

#[tokio::test]
async fn checkpoints_catch_tail_truncation_and_forged_checkpoints() {
    let h = Harness::new().await;
    assert!(
        !h.api.checkpoint().await.unwrap(),
        "nothing to checkpoint yet"
    );
    some_history(&h).await;
    assert!(h.api.checkpoint().await.unwrap());
    assert!(
        !h.api.checkpoint().await.unwrap(),
        "only when the chain grew"
    );
    let cps = h.admin_ok("GET", "/v1/audit/checkpoints", None).await;
    let cp = &cps[0];
    let n = cp["count"].as_i64().unwrap();
    assert_eq!(cp["signature"].as_str().unwrap().len(), 64);
    // the log grows after the checkpoint: still fine
    h.add_user("late").await;
    let v = verify(&h).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoint"]["count"].as_i64(), Some(n));

    // the tail is cut to before the checkpoint: the chain alone is consistent, the
    // checkpoint says records are gone
    sqlx::query("DELETE FROM audit_log WHERE seq > $1")
        .bind(n - 2)
        .execute(h.store.pool())
        .await
        .unwrap();
    let rest = h.store.audit_records(0, 10_000).await.unwrap();
    assert!(audit::verify(&rest).is_ok());
    let v = verify(&h).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["broken_at_seq"].as_i64(), Some(n - 1), "{v}");
    assert!(v["problem"].as_str().unwrap().contains("truncated"), "{v}");

    // a checkpoint not signed with the server key is refused
    let h = Harness::new().await;
    some_history(&h).await;
    let forged = audit::sign_checkpoint(&[0u8; 32], 1, "00", 1);
    h.store.insert_audit_checkpoint(&forged).await.unwrap();
    let v = verify(&h).await;
    assert_eq!(v["ok"], false);
    assert!(
        v["problem"].as_str().unwrap().contains("invalid signature"),
        "{v}"
    );
    // and the key file is private
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.dir.path().join("audit.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn change_record_links_release_requester_timeline_and_audit() {
    let h = Harness::new().await;
    h.store.ensure_release("shop", "1.2.0", 900).await.unwrap();
    let id = h
        .deployment("shop", "production", "1.2.0", "user:dana")
        .await;
    h.store
        .append_event(
            id,
            ferry_core::model::EventKind::Traffic,
            "canary 1.2.0 at 5%",
            1_100,
        )
        .await
        .unwrap();
    h.store
        .append_event(
            id,
            ferry_core::model::EventKind::Analysis,
            "analysis errors: 0.001 <= 0.01 (pass)",
            1_200,
        )
        .await
        .unwrap();
    let entry = |actor: &str, action: &str, at_ms: i64| AuditEntry {
        at_ms,
        actor: actor.into(),
        source: Some("10.0.0.1".into()),
        action: action.into(),
        app: Some("shop".into()),
        env: Some("production".into()),
        target: Some(format!("deployment {id}")),
        summary: format!("{action} shop in production"),
        reason: Some("CHG-1".into()),
        outcome: "ok".into(),
    };
    h.store
        .append_audit(entry("user:dana", "deploy", 1_000))
        .await
        .unwrap();
    h.store
        .append_audit(entry("user:paul", "promote", 1_300))
        .await
        .unwrap();
    let mut other = entry("user:x", "deploy", 1_400);
    other.target = Some("deployment 999".into());
    h.store.append_audit(other).await.unwrap();

    let json = h
        .admin_ok("GET", &format!("/v1/deployments/{id}/change-record"), None)
        .await;
    assert_eq!(json["release"]["version"], "1.2.0");
    assert_eq!(json["release"]["created_at_ms"], 900);
    assert_eq!(json["requested_by"], "user:dana");
    assert_eq!(json["outcome"], "pending");
    assert_eq!(json["timeline"].as_array().unwrap().len(), 3);
    assert_eq!(json["traffic"].as_array().unwrap().len(), 1);
    assert_eq!(json["analysis"].as_array().unwrap().len(), 1);
    let actors: Vec<&str> = json["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["user:dana", "user:paul"]);
    for empty in ["approvals", "gates", "hooks"] {
        assert_eq!(json[empty], json!([]), "{empty}");
    }

    let md = h
        .call(
            "GET",
            &format!("/v1/deployments/{id}/change-record?format=markdown"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(md.status, StatusCode::OK);
    assert!(
        md.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/markdown")
    );
    for needle in [
        &format!("# Change record: shop 1.2.0 → production (deployment #{id})") as &str,
        "| Requested by | user:dana |",
        "## Approvals",
        "## Audit trail",
        "user:paul",
        "CHG-1",
        "canary 1.2.0 at 5%",
    ] {
        assert!(md.text.contains(needle), "{needle:?} in\n{}", md.text);
    }
    let bad = h
        .call(
            "GET",
            &format!("/v1/deployments/{id}/change-record?format=pdf"),
            Some(&h.admin),
            None,
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
