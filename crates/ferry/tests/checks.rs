//! Gate checks and freeze overrides end to end, with the real binary: an HTTP check served
//! by a tiny local server fails then passes and a command check waits for a file, so the
//! production deployment waits, then starts; a freeze is overridden by a user holding
//! `override_freeze` (a reason is required, a developer gets 403, the audit log shows it);
//! `ferry gates`, `ferry approvals` and `ferry status` list every gate with its state.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded, with_gated_production};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(90);

/// Polls `ferry gates ID -o json` until `pred` holds on its JSON (or fails with the last).
async fn wait_gates(ferry: &Ferry, id: i64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ferry.cli(&["gates", &id.to_string(), "-o", "json"]).await;
        assert_eq!(out.code, 0, "gates:\n{out}");
        let report = out.json();
        if pred(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "never {what}; last report:\n{report:#}\ntimeline:\n{}",
            ferry.timeline(id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The row of `gate` in a gates report.
fn row<'a>(report: &'a Value, gate: &str) -> &'a Value {
    report["gates"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["gate"] == gate))
        .unwrap_or_else(|| panic!("no row {gate} in {report:#}"))
}

/// A tiny HTTP server: answers 503 "pending" until `pass` is set, then 200 "success";
/// remembers the paths it was asked for.
struct CiServer {
    port: u16,
    pass: Arc<AtomicBool>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl CiServer {
    async fn start() -> CiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let pass = Arc::new(AtomicBool::new(false));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (p, seen) = (pass.clone(), paths.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (p, seen) = (p.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    seen.lock().await.push(path);
                    let (status, body) = if p.load(Ordering::SeqCst) {
                        ("200 OK", "build: success")
                    } else {
                        ("503 Service Unavailable", "pending")
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        CiServer { port, pass, paths }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_hold_the_deployment_until_they_pass() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let ci = CiServer::start().await;
        let spec = Spec::staging("checked");
        let gates = format!(
            "{{ checks: [ \
             {{ name: ci-green, http: {{ url: \"http://127.0.0.1:{}/status/${{VERSION}}\", expect_status: 200, expect_body: success }}, interval: 300ms, timeout: 2s }}, \
             {{ name: uat, run: [\"sh\", \"-c\", \"test -f uat-${{VERSION}}-${{FERRY_ENV}}.ok || {{ echo missing uat-${{VERSION}}-${{FERRY_ENV}}.ok; exit 1; }}\"], interval: 300ms }} ] }}",
            ci.port
        );
        let manifest = with_gated_production(&ferry, &spec, &spec.strategy, &gates);
        ferry.apply(&manifest).await;

        let prod = ferry.deploy_id_to("checked", "production", "1.0.0").await;
        // Both checks run and fail: the deployment waits, each row says why. (A check
        // started in the pass that blocks the deployment can fail before that pass
        // records `blocked`, so wait for both.)
        let report = wait_gates(&ferry, prod, "both checks failed", |r| {
            r["deployment"]["state"] == "blocked"
                && r["gates"].as_array().is_some_and(|rows| {
                    rows.len() == 2 && rows.iter().all(|row| row["state"] == "failed")
                })
        })
        .await;
        assert_eq!(report["verdict"], "waiting", "{report:#}");
        assert_eq!(report["deployment"]["state"], "blocked");
        let detail = row(&report, "checks:ci-green")["detail"].as_str().unwrap();
        assert!(detail.contains("expected status 200, got 503"), "{detail}");
        let detail = row(&report, "checks:uat")["detail"].as_str().unwrap();
        assert!(
            detail.contains("exit 1: missing uat-1.0.0-production.ok"),
            "{detail}"
        );
        assert!(
            ci.paths.lock().await.iter().any(|p| p == "/status/1.0.0"),
            "${{VERSION}} is substituted in the URL"
        );

        // The text table, `ferry approvals` and `ferry status` show the same rows.
        let out = ferry.cli(&["gates", &prod.to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        for text in ["GATE", "STATE", "DETAIL", "checks:ci-green", "checks:uat", "failed"] {
            assert!(out.stdout.contains(text), "{text}:\n{out}");
        }
        let out = ferry.cli(&["approvals", &prod.to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("checks:ci-green"), "{out}");
        let out = ferry.cli(&["status", "checked"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout.contains("gates") && out.stdout.contains("checks:uat"),
            "{out}"
        );
        let out = ferry
            .cli(&["status", "checked", "--env", "production", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let rows = out.json()["latest_deployment"]["gates"].clone();
        assert_eq!(rows.as_array().map(Vec::len), Some(2), "{out}");

        // A failing check is re-run, and keeps it waiting (never ends it).
        let runs = ci.paths.lock().await.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ci.paths.lock().await.len() < runs + 2 {
            assert!(Instant::now() < deadline, "the HTTP check is not re-run");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            ferry.deployment(prod).await.deployment.state.to_string(),
            "blocked"
        );

        // CI turns green: only the command check still holds it.
        ci.pass.store(true, Ordering::SeqCst);
        let report = wait_gates(&ferry, prod, "ci-green met", |r| {
            row(r, "checks:ci-green")["state"] == "met"
        })
        .await;
        assert_eq!(row(&report, "checks:uat")["state"], "failed");
        assert_eq!(
            ferry.deployment(prod).await.deployment.state.to_string(),
            "blocked"
        );

        // UAT signs off (in the manifest's directory): it starts and succeeds.
        std::fs::write(ferry.dir.path().join("uat-1.0.0-production.ok"), "ok").unwrap();
        let done = ferry.wait_terminal(prod, Duration::from_secs(40)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let timeline = ferry.timeline(prod).await;
        let waited = timeline.find("waiting for").expect("it waited");
        let started = timeline.find("rollout started").expect("it started");
        assert!(waited < started, "{timeline}");
        assert!(
            timeline.contains("gate checks:ci-green: met (passed: status 200"),
            "{timeline}"
        );
        assert!(
            timeline.contains("gate checks:uat: met (passed: exit 0)"),
            "{timeline}"
        );
        // Afterwards `ferry gates` shows the rows as they stood when it passed.
        let out = ferry.cli(&["gates", &prod.to_string(), "-o", "json"]).await;
        assert_eq!(out.code, 0, "{out}");
        let report = out.json();
        assert_eq!(report["verdict"], "passed", "{report:#}");
        assert!(report["passed_at_ms"].is_i64(), "{report:#}");
        assert_eq!(row(&report, "checks:ci-green")["state"], "met");
        assert_eq!(row(&report, "checks:uat")["state"], "met");
        // Once started, status shows no gate rows.
        let out = ferry
            .cli(&["status", "checked", "--env", "production", "-o", "json"])
            .await;
        assert!(out.json()["latest_deployment"].get("gates").is_none(), "{out}");
    })
    .await;
}

/// Adds a user with `role` on app `app`, returns a session token.
async fn user_with_role(ferry: &Ferry, name: &str, role: &str, app: &str) -> String {
    let post = |path: &str, body: Value, token: Option<String>| {
        let mut request = ferry.http.post(format!("{}{path}", ferry.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let admin = Some(ferry.token.clone());
    let password = "a long enough password";
    let r = post(
        "/v1/users",
        json!({"username": name, "password": password}),
        admin.clone(),
    )
    .await
    .unwrap();
    assert!(
        r.status().is_success(),
        "users: {}",
        r.text().await.unwrap()
    );
    let r = post(
        "/v1/bindings",
        json!({"user": name, "role": role, "app": app}),
        admin,
    )
    .await
    .unwrap();
    assert!(
        r.status().is_success(),
        "bindings: {}",
        r.text().await.unwrap()
    );
    let r = post(
        "/v1/login",
        json!({"username": name, "password": password}),
        None,
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "login");
    let answer: Value = r.json().await.unwrap();
    answer["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_is_overridden_by_someone_allowed_with_a_reason() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::staging("hotfix");
        let manifest = with_gated_production(&ferry, &spec, &spec.strategy,
            "{ freeze: [ { from: \"2000-01-01T00:00:00\", until: \"2999-01-01T00:00:00\", timezone: UTC } ] }",
        );
        ferry.apply(&manifest).await;
        let out = ferry
            .cli(&[
                "roles",
                "create",
                "release-manager",
                "--permission",
                "override_freeze",
                "--permission",
                "view",
            ])
            .await;
        assert_eq!(out.code, 0, "roles create:\n{out}");
        let bob = user_with_role(&ferry, "bob", "release-manager", "hotfix").await;
        let dave = user_with_role(&ferry, "dave", "developer", "hotfix").await;

        let prod = ferry.deploy_id_to("hotfix", "production", "1.0.0").await;
        let report = wait_gates(&ferry, prod, "frozen", |r| {
            r["deployment"]["state"] == "blocked"
        })
        .await;
        assert_eq!(row(&report, "freeze")["state"], "waiting", "{report:#}");
        let id = prod.to_string();

        // A developer may not override a freeze.
        let out = ferry
            .cli_with_token(
                &["gates", "override", &id, "--gate", "freeze", "--reason", "please"],
                Some(&dave),
            )
            .await;
        assert_eq!(out.code, 5, "a developer gets 403:\n{out}");
        // Bob may, but only with a reason, and only for the freeze gate.
        let out = ferry
            .cli_with_token(&["gates", "override", &id, "--gate", "freeze"], Some(&bob))
            .await;
        assert_eq!(out.code, 2, "no reason is a 400:\n{out}");
        assert!(out.stderr.contains("reason"), "{out}");
        let out = ferry
            .cli_with_token(
                &["gates", "override", &id, "--gate", "approvals", "--reason", "x"],
                Some(&bob),
            )
            .await;
        assert_eq!(out.code, 2, "only freeze can be overridden:\n{out}");
        assert_eq!(
            ferry.deployment(prod).await.deployment.state.to_string(),
            "blocked"
        );
        let out = ferry
            .cli_with_token(
                &[
                    "gates",
                    "override",
                    &id,
                    "--gate",
                    "freeze",
                    "--reason",
                    "hotfix for INC-123",
                ],
                Some(&bob),
            )
            .await;
        assert_eq!(out.code, 0, "override:\n{out}");
        assert!(
            out.stdout.contains("overridden by bob: hotfix for INC-123"),
            "{out}"
        );

        // It starts; the timeline says who lifted the freeze and why.
        let done = ferry.wait_terminal(prod, Duration::from_secs(40)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let timeline = ferry.timeline(prod).await;
        assert!(
            timeline.contains("freeze overridden by bob: hotfix for INC-123"),
            "{timeline}"
        );
        assert!(
            timeline.contains("gate freeze: overridden by bob: hotfix for INC-123"),
            "{timeline}"
        );
        // `ferry gates` still lists the gate, overridden, with who and why.
        let out = ferry.cli(&["gates", &id]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout.contains("freeze")
                && out.stdout.contains("overridden by bob: hotfix for INC-123"),
            "{out}"
        );
        let out = ferry.cli(&["gates", &id, "-o", "json"]).await;
        assert_eq!(row(&out.json(), "freeze")["state"], "overridden", "{out}");
        // A deployment no longer waiting gets no override.
        let out = ferry
            .cli_with_token(
                &["gates", "override", &id, "--gate", "freeze", "--reason", "late"],
                Some(&bob),
            )
            .await;
        assert_eq!(out.code, 7, "{out}");

        // The audit log has the override (with its reason) and the refused attempt.
        let out = ferry.cli(&["audit", "-o", "json", "--limit", "1000"]).await;
        assert_eq!(out.code, 0, "{out}");
        let records = out.json();
        let records = records.as_array().unwrap();
        assert!(
            records.iter().any(|r| r["action"] == "gates.override"
                && r["actor"] == "user:bob"
                && r["outcome"] == "ok"
                && r["reason"] == "hotfix for INC-123"),
            "the override is audited:\n{out}"
        );
        assert!(
            records.iter().any(|r| r["action"] == "gates.override"
                && r["actor"] == "user:dave"
                && r["outcome"].as_str().is_some_and(|o| o.starts_with("denied"))),
            "the refused override is audited:\n{out}"
        );
        // The change record lists the override, and every gate as it was passed.
        let (status, record) = ferry
            .api_get(&format!("/v1/deployments/{prod}/change-record"))
            .await;
        assert!(status.is_success(), "{record}");
        assert_eq!(record["overrides"][0]["by"], "user:bob", "{record:#}");
        let freeze = record["gates"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["gate"] == "freeze"))
            .unwrap_or_else(|| panic!("no freeze row in {record:#}"));
        assert_eq!(freeze["state"], "overridden", "{record:#}");
        let markdown = ferry.cli(&["change-record", &prod.to_string()]).await;
        assert!(
            markdown.stdout.contains("## Gates passed")
                && markdown.stdout.contains("| freeze | overridden |"),
            "{markdown}"
        );
    })
    .await;
}
