//! No password or token value in any log line (everything at TRACE, from every crate), in
//! any audit record, or anywhere in the database files, across logins, failed logins,
//! password changes and token creation. Its own test binary: it owns the global subscriber.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use common::{Harness, PASSWORD};
use serde_json::json;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_in_logs_audit_or_database() {
    let logs = Buffer::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish(),
    )
    .unwrap();

    let h = Harness::new().await;
    let mut secrets: Vec<String> = vec![h.admin.clone(), PASSWORD.to_string()];

    h.add_user("alice").await;
    h.bind("alice", "developer", Some("shop"), &[]).await;
    let session = h.login("alice").await;
    secrets.push(session.clone());
    let wrong = "a wrong password typed";
    secrets.push(wrong.to_string());
    let a = h
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": wrong})),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let unknown_user_pw = "password of a stranger";
    secrets.push(unknown_user_pw.to_string());
    h.call(
        "POST",
        "/v1/login",
        None,
        Some(json!({"username": "stranger", "password": unknown_user_pw})),
    )
    .await;

    let new_password = "alice's brand new password";
    secrets.push(new_password.to_string());
    let changed = h
        .call(
            "PUT",
            "/v1/users/alice/password",
            Some(&session),
            Some(json!({"password": new_password, "current_password": PASSWORD})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let short = "too short";
    secrets.push(short.to_string());
    h.call(
        "POST",
        "/v1/users",
        Some(&h.admin),
        Some(json!({"username": "bob", "password": short})),
    )
    .await;

    let made = h
        .call(
            "POST",
            "/v1/tokens",
            Some(&session),
            Some(json!({"name": "ci", "role": "deployer", "app": "shop"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let ci = made.json()["token"].as_str().unwrap().to_string();
    secrets.push(ci.clone());
    let admin_made = h.token("ops", "viewer", None, &[]).await;
    secrets.push(admin_made.clone());
    // use them, including a denial, an expired-style refusal and a logout
    h.call("GET", "/v1/whoami", Some(&ci), None).await;
    h.call(
        "POST",
        "/v1/apps/shop/envs/production/rollback",
        Some(&admin_made),
        Some(json!({})),
    )
    .await;
    h.call("GET", "/v1/whoami", Some(&format!("{ci}x")), None)
        .await;
    h.call("POST", "/v1/logout", Some(&session), None).await;
    h.call("GET", "/v1/whoami", Some(&session), None).await;
    assert!(h.api.checkpoint().await.unwrap());

    let log_text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        log_text.lines().count() > 10,
        "the subscriber captured the run:\n{log_text}"
    );
    let export = h
        .call("GET", "/v1/audit/export", Some(&h.admin), None)
        .await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(export.text.lines().count() >= 10, "{}", export.text);
    assert!(export.text.contains("login"));
    h.store.close().await;
    let mut db = Vec::new();
    for file in ["ferry.db", "ferry.db-wal"] {
        if let Ok(bytes) = std::fs::read(h.dir.path().join(file)) {
            db.extend(bytes);
        }
    }
    assert!(!db.is_empty());
    for secret in &secrets {
        assert!(
            !log_text.contains(secret.as_str()),
            "secret {secret:?} in the logs"
        );
        assert!(
            !export.text.contains(secret.as_str()),
            "secret {secret:?} in the audit log"
        );
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret {secret:?} in the database files"
        );
    }
}
