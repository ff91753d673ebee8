//! Notifications with real receivers on loopback: a webhook receiver that checks the
//! HMAC-SHA256 signature and dedupes by idempotency key sees a deployment's notification
//! exactly once although the server was killed (SIGKILL) while delivering it; PagerDuty
//! and Slack receivers get their bodies with credentials read from Ferry's secrets; a real
//! SMTP server (aiosmtpd, STARTTLS required, AUTH required) receives the email. Secrets never
//! appear in the server's logs or in `ferry notifications`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::receiver::WebhookReceiver;
use common::{Ferry, SERIAL, Spec, add_person, bounded, free_port, run};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(180);
/// How long a receiver is waited for.
const RECEIVER_WAIT: Duration = Duration::from_secs(60);

async fn set_secret(ferry: &Ferry, app: &str, name: &str, value: &str) {
    let out = ferry
        .cli_with_stdin(&["secrets", "set", app, "--env", "production", name], value)
        .await;
    assert_eq!(out.code, 0, "secrets set {name}: {out}");
}

fn on_path<'a>(lines: &'a [serde_json::Value], path: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["path"] == path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_is_delivered_once_across_kill9_signed_and_to_every_receiver() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        const SIGNING_KEY: &str = "whsec-6c1f0e2a-signing-key";
        const ROUTING_KEY: &str = "pdkey-93b7d55e-routing-key";
        let mut ferry = Ferry::start().await;
        // the first delivery to /held is answered after 60 s: the server dies first
        let receiver = WebhookReceiver::start_holding(ferry.dir.path(), SIGNING_KEY, 60);
        let port = receiver.port;
        let mut spec = Spec::new("notified");
        spec.replicas = 1;
        spec.extra_service_yaml = format!(
            "receivers:
  signed:
    webhook: {{ url: 'http://127.0.0.1:{port}/held', secret: HOOK_KEY }}
  chat:
    slack: {{ url_secret: CHAT_URL }}
  pager:
    pagerduty: {{ routing_key_secret: PD_KEY, url: 'http://127.0.0.1:{port}/pagerduty' }}
routes:
  - receiver: signed
    match: {{ kind: deployment-succeeded }}
    continue: true
  - receiver: pager
    match: {{ kind: deployment-succeeded }}
    continue: true
  - receiver: chat
    match: {{ state: [succeeded] }}
notifications:
  - webhook: http://127.0.0.1:{port}/legacy
    states: [succeeded]
"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        set_secret(&ferry, "notified", "HOOK_KEY", SIGNING_KEY).await;
        set_secret(&ferry, "notified", "PD_KEY", ROUTING_KEY).await;
        set_secret(
            &ferry,
            "notified",
            "CHAT_URL",
            &format!("http://127.0.0.1:{port}/slack"),
        )
        .await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        // The signed delivery's first attempt reached the receiver, which holds it: kill
        // the server now, between sending and recording it.
        receiver
            .wait("the first signed delivery", &ferry, RECEIVER_WAIT, |l| {
                !on_path(l, "/held").is_empty()
            })
            .await;
        ferry.kill9_server();
        ferry.start_server().await;

        // After the restart the attempt is made again with the same key: the receiver
        // sees it twice and keeps it once.
        let lines = receiver
            .wait(
                "the signed delivery again after the restart",
                &ferry,
                RECEIVER_WAIT,
                |l| on_path(l, "/held").len() >= 2,
            )
            .await;
        let held = on_path(&lines, "/held");
        let keys: std::collections::BTreeSet<&str> = held
            .iter()
            .map(|l| l["key"].as_str().expect("an Idempotency-Key"))
            .collect();
        assert_eq!(keys.len(), 1, "one notification, one key: {held:#?}");
        let key = *keys.iter().next().expect("a key");
        for line in &held {
            assert_eq!(line["sig_ok"], true, "the signature must verify: {line}");
            assert_eq!(line["body"]["key"], key);
            let body = &line["body"];
            assert_eq!(body["receiver"], "signed");
            assert_eq!(body["notifications"][0]["kind"], "deployment-succeeded");
            assert_eq!(body["notifications"][0]["labels"]["version"], "1.0.0");
            // today's fields too
            assert_eq!(body["state"], "succeeded");
            assert_eq!(body["app"], "notified");
        }

        // PagerDuty got a trigger with the routing key from the secret; Slack its line; the
        // legacy webhook today's body plus the key (unsigned).
        let lines = receiver
            .wait(
                "pagerduty, slack and the legacy webhook",
                &ferry,
                RECEIVER_WAIT,
                |l| {
                    ["/pagerduty", "/slack", "/legacy"]
                        .iter()
                        .all(|p| !on_path(l, p).is_empty())
                },
            )
            .await;
        let pd = on_path(&lines, "/pagerduty")[0];
        assert_eq!(pd["body"]["routing_key"], ROUTING_KEY);
        assert_eq!(pd["body"]["event_action"], "trigger");
        assert_eq!(pd["body"]["payload"]["source"], "notified/production");
        let slack = on_path(&lines, "/slack")[0];
        let text = slack["body"]["text"].as_str().expect("slack text");
        assert!(
            text.contains("notified/production") && text.contains("succeeded"),
            "{text}"
        );
        let legacy = on_path(&lines, "/legacy")[0];
        assert_eq!(legacy["body"]["state"], "succeeded");
        assert_eq!(legacy["body"]["version"], "1.0.0");
        assert!(legacy["body"]["key"].is_string());
        assert!(legacy["body"].get("notifications").is_none(), "{legacy}");
        assert_eq!(legacy["sig_ok"], serde_json::Value::Null);

        // The history: the signed delivery is delivered after the restart; nothing failed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let history = loop {
            let out = ferry
                .cli(&["notifications", "--app", "notified", "-o", "json"])
                .await;
            assert_eq!(out.code, 0, "{out}");
            let rows = out.json();
            let signed = rows
                .as_array()
                .expect("rows")
                .iter()
                .find(|r| r["receiver"] == "signed")
                .cloned();
            if signed.as_ref().is_some_and(|r| r["state"] == "delivered") {
                break rows;
            }
            assert!(Instant::now() < deadline, "not delivered: {rows:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let rows = history.as_array().expect("rows");
        let signed = rows
            .iter()
            .find(|r| r["receiver"] == "signed")
            .expect("signed");
        assert_eq!(signed["key"], key);
        // the attempt the crash cut short, and the one after the restart
        assert!(signed["attempts"].as_i64() >= Some(2), "{signed:#}");
        assert!(rows.iter().all(|r| r["state"] != "failed"), "{history:#}");
        let text = ferry.cli(&["notifications", "--app", "notified"]).await;
        assert!(text.stdout.contains("signed (webhook)"), "{text}");

        // No secret anywhere a person or a log could read it.
        let logs = ferry.server_logs();
        for secret in [SIGNING_KEY, ROUTING_KEY, &format!("127.0.0.1:{port}/slack")] {
            assert!(
                !logs.contains(secret),
                "the server logged {secret:?}:\n{logs}"
            );
            assert!(
                !history.to_string().contains(secret),
                "the history shows {secret:?}"
            );
            assert!(!text.stdout.contains(secret));
        }
    })
    .await;
}

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`).
fn self_signed(dir: &Path) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
}

/// The python3 with aiosmtpd: `FERRY_SMTP_PYTHON`, else `python3` if it has the module.
/// `None` (skip) unless `FERRY_REQUIRE_SMTP=1`, which fails instead.
fn smtp_python() -> Option<String> {
    let python = std::env::var("FERRY_SMTP_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has {
        return Some(python);
    }
    assert!(
        std::env::var("FERRY_REQUIRE_SMTP").as_deref() != Ok("1"),
        "FERRY_REQUIRE_SMTP=1 but {python} has no aiosmtpd (pip install aiosmtpd; FERRY_SMTP_PYTHON)"
    );
    eprintln!("skipped: no aiosmtpd (set FERRY_SMTP_PYTHON to a python3 that has it)");
    None
}

const SMTP: &str = r#"
import json, signal, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key, log, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(log, 'a') as f:
            f.write(json.dumps({'from': envelope.mail_from, 'to': envelope.rcpt_tos,
                                'data': envelope.content.decode('utf8', 'replace'),
                                'tls': session.ssl is not None,
                                'auth': bool(session.authenticated)}) + '\n')
        return '250 OK'
def check(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
controller = Controller(Handler(), hostname='127.0.0.1', port=port, tls_context=context,
                        require_starttls=True, authenticator=check, auth_required=True)
controller.start()
open(log + '.ready', 'w').close()
threading.Event().wait()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn email_goes_through_a_real_smtp_server_with_starttls_and_auth() {
    let Some(python) = smtp_python() else {
        return;
    };
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        const PASSWORD: &str = "smtp-pw-5a0d1c7e";
        let certs = tempfile::tempdir().expect("tempdir");
        self_signed(certs.path());
        let port = free_port();
        let log = certs.path().join("mail.log");
        let mut smtp = Command::new(&python)
            .args(["-c", SMTP, &port.to_string()])
            .arg(certs.path().join("cert.pem"))
            .arg(certs.path().join("key.pem"))
            .arg(&log)
            .args(["ferry", PASSWORD])
            .stdout(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let ready = PathBuf::from(format!("{}.ready", log.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cert_file = certs.path().join("cert.pem").display().to_string();
        let ferry = Ferry::start_with_env(&[("SSL_CERT_FILE", &cert_file)]).await;
        let mut spec = Spec::new("mailed");
        spec.replicas = 1;
        spec.extra_service_yaml = format!(
            "receivers:
  mail:
    email:
      smarthost: '127.0.0.1:{port}'
      from: ferry@example.com
      to: [oncall@example.com, lead@example.com]
      username: ferry
      password_secret: SMTP_PASSWORD
routes:
  - receiver: mail
    match: {{ kind: deployment-succeeded }}
"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        set_secret(&ferry, "mailed", "SMTP_PASSWORD", PASSWORD).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        let deadline = Instant::now() + Duration::from_secs(60);
        let mail = loop {
            if let Some(line) = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .next()
            {
                break serde_json::from_str::<serde_json::Value>(line).expect("json");
            }
            assert!(
                Instant::now() < deadline,
                "no email arrived\n{}",
                ferry.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = smtp.kill();
        let _ = smtp.wait();
        assert_eq!(mail["tls"], true, "STARTTLS before the message: {mail}");
        assert_eq!(mail["auth"], true, "authenticated: {mail}");
        assert_eq!(mail["from"], "ferry@example.com");
        assert_eq!(
            mail["to"],
            serde_json::json!(["oncall@example.com", "lead@example.com"])
        );
        let data = mail["data"].as_str().expect("data");
        assert!(
            data.contains("Subject: [Ferry] mailed/production: deployment #"),
            "{data}"
        );
        assert!(data.contains("deployment-succeeded"), "{data}");
        let out = ferry
            .cli(&[
                "notifications",
                "--app",
                "mailed",
                "--state",
                "delivered",
                "-o",
                "json",
            ])
            .await;
        let rows = out.json();
        let row = &rows.as_array().expect("rows")[0];
        assert_eq!(row["receiver_type"], "email");
        let key = row["key"].as_str().expect("key");
        assert!(
            data.contains(&format!("Message-ID: <{key}@ferry>")),
            "{data}"
        );
        assert!(!ferry.server_logs().contains(PASSWORD));
        assert!(!out.stdout.contains(PASSWORD));
    })
    .await;
}

/// A receiver that always answers 500: after the bounded attempts (a 10 ms retry base
/// here) the delivery is `failed` with the last error, as `ferry notifications` shows. A
/// viewer of that app alone asking for the newest delivery gets it, although another
/// app's deliveries are newer (the limit applies to what the caller may see).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_always_fails_ends_failed_and_the_history_is_per_viewer() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start_with_env(&[("FERRY_NOTIFY_RETRY_BASE", "10ms")]).await;
        let receiver = WebhookReceiver::start(ferry.dir.path(), "unused");
        let port = receiver.port;
        for (app, path) in [("failing", "fail"), ("other", "ok")] {
            let mut spec = Spec::new(app);
            spec.replicas = 1;
            spec.extra_service_yaml = format!(
                "receivers:\n  hook:\n    webhook: {{ url: 'http://127.0.0.1:{port}/{path}' }}\nroutes:\n  - receiver: hook\n    match: {{ kind: deployment-succeeded }}\n"
            );
            let manifest = ferry.write_manifest(&spec, &format!("{app}.yaml"));
            ferry.apply(&manifest).await;
            ferry.deploy_ok(&spec, "1.0.0").await;
            if app == "failing" {
                // every attempt reaches the receiver, then the delivery gives up
                receiver
                    .wait("8 attempts", &ferry, RECEIVER_WAIT, |l| on_path(l, "/fail").len() >= 8)
                    .await;
            }
        }
        receiver
            .wait("the other app's delivery", &ferry, RECEIVER_WAIT, |l| {
                !on_path(l, "/ok").is_empty()
            })
            .await;
        let args = [
            "notifications",
            "--app",
            "failing",
            "--state",
            "failed",
            "-o",
            "json",
        ];
        let deadline = Instant::now() + Duration::from_secs(60);
        let row = loop {
            let out = ferry.cli(&args).await;
            assert_eq!(out.code, 0, "{out}");
            if let Some(row) = out.json().as_array().and_then(|rows| rows.first().cloned()) {
                break row;
            }
            assert!(
                Instant::now() < deadline,
                "no failed delivery within 60 s\n{}",
                ferry.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(row["attempts"], 8, "{row}");
        let error = format!("127.0.0.1:{port} answered 500 Internal Server Error");
        assert_eq!(row["last_error"], error.as_str(), "{row}");
        assert!(row.get("next_attempt_at_ms").is_none_or(|v| v.is_null()), "{row}");
        assert_eq!(on_path(&receiver.lines(), "/fail").len(), 8, "no 9th attempt");
        let text = ferry.cli(&["notifications", "--app", "failing"]).await;
        assert!(
            text.stdout.contains("failed") && text.stdout.contains(&error),
            "{text}"
        );

        // the newest delivery is the other app's; a viewer of `failing` alone still gets one
        let vera = add_person(&ferry, "vera", "a-long-password-1", &[("viewer", "failing", None)]).await;
        let out = run(&ferry, &vera, &["notifications", "--limit", "1", "-o", "json"], None).await;
        assert_eq!(out.code, 0, "{out}");
        let rows = out.json();
        let rows = rows.as_array().expect("rows");
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["app"], "failing");
        let everything = ferry.cli(&["notifications", "--limit", "1", "-o", "json"]).await;
        assert_eq!(everything.json()[0]["app"], "other", "{everything}");

        // the console's page, as vera: the same rows as the API, filterable; another app's
        // history is refused with the API's reason
        let login = ferry
            .http
            .post(format!("{}/v1/login", ferry.url))
            .json(&serde_json::json!({"username": "vera", "password": "a-long-password-1"}))
            .send()
            .await
            .unwrap();
        let session: serde_json::Value = login.json().await.unwrap();
        let cookie = format!("ferry_session={}", session["token"].as_str().unwrap());
        let page = |path: &'static str| {
            let (ferry, cookie) = (&ferry, &cookie);
            async move {
                let answer = ferry
                    .http
                    .get(format!("{}{path}", ferry.url))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap();
                (answer.status().as_u16(), answer.text().await.unwrap())
            }
        };
        let (status, html) = page("/").await;
        assert_eq!(status, 200);
        assert!(html.contains("href=\"/notifications\""), "a nav link: {html}");
        let (status, html) = page("/notifications?state=failed").await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("<option value=\"failed\" selected>"), "{html}");
        assert!(html.contains("failing</a>/production"), "{html}");
        assert!(html.contains(&format!("127.0.0.1:{port} answered 500")), "{html}");
        assert!(!html.contains("other</a>/"), "another app's row: {html}");
        assert!(!html.contains("/fail'") && !html.contains("/fail\""), "no receiver URL: {html}");
        let (_, html) = page("/notifications?state=delivered").await;
        assert!(html.contains("No deliveries."), "{html}");
        let (_, html) = page("/notifications?app=other").await;
        assert!(
            html.contains("viewing the notifications of other needs the permission view there"),
            "{html}"
        );
    })
    .await;
}
