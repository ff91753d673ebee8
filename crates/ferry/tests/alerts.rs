//! Alert rules end to end: a version that answers 500s through the proxy makes its alert
//! pending, then firing, and the alert rolls the canary back (audited as `alert:NAME`); a
//! firing alert (from a Prometheus-compatible server on loopback) holds deployments into its
//! environment, survives a `kill -9` of the server with its state, and resolves after it;
//! a firing and a resolved alert reach a signed webhook once each, although the server was
//! killed between the firing and its delivery, and DORA counts it as an incident.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::receiver::WebhookReceiver;
use common::*;
use ferry_core::alerts::{AlertStatus, AlertsAnswer};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(240);

fn append(manifest: &Path, yaml: &str) {
    let mut text = std::fs::read_to_string(manifest).expect("manifest");
    text.push_str(yaml);
    std::fs::write(manifest, text).expect("write manifest");
}

async fn alerts(ferry: &Ferry, app: &str) -> AlertsAnswer {
    let (status, body) = ferry.api_get(&format!("/v1/alerts?app={app}")).await;
    assert!(status.is_success(), "GET /v1/alerts: {status} {body}");
    serde_json::from_value(body).expect("AlertsAnswer")
}

/// Polls `GET /v1/alerts` until `pred` holds (or fails with what was seen).
async fn wait_alerts(
    ferry: &Ferry,
    app: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(&AlertsAnswer) -> bool,
) -> AlertsAnswer {
    let deadline = Instant::now() + limit;
    loop {
        let answer = alerts(ferry, app).await;
        if pred(&answer) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; alerts now: {answer:#?}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn history_has(answer: &AlertsAnswer, kind: &str, needle: &str) -> bool {
    answer
        .history
        .iter()
        .any(|e| e.kind == kind && e.message.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_on_500s_rolls_back_the_canary_that_causes_them() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        spec.prelude = "if [ \"$VERSION\" = 2.0.0 ]; then export DEMO_ERROR_RATE=1; fi;".into();
        // No analysis: only the alert can stop this canary, which otherwise waits 10 minutes.
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 10m }] } }".into();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        append(
            &manifest,
            "alerts:
  - name: high_error_rate
    condition: error_rate > 10%
    for: 2s
    interval: 1s
    severity: critical
    annotations:
      summary: \"{{ $labels.version }} answers {{ $value }} errors\"
    actions: { rollback: true }
",
        );
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let load = Load::start(&spec.listener(), 2);
        load.warm_up(30).await;

        ferry.deploy_nowait(&spec, "2.0.0").await;
        let firing = wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(90),
            "2.0.0's alert fires",
            |a| {
                a.alerts.iter().any(|v| {
                    v.status == AlertStatus::Firing
                        && v.labels.get("version").map(String::as_str) == Some("2.0.0")
                })
            },
        )
        .await;
        let alert = firing
            .alerts
            .iter()
            .find(|v| v.labels["version"] == "2.0.0")
            .expect("the alert of 2.0.0");
        assert_eq!(alert.alert, "high_error_rate");
        assert!(
            alert.annotations["summary"].starts_with("2.0.0 answers "),
            "{alert:?}"
        );
        assert!(
            firing.alerts.iter().all(|v| v.labels["version"] != "1.0.0"),
            "the stable version answers no errors: {firing:#?}"
        );
        // pending for `for` (2s) first, then firing
        let lines: Vec<&str> = firing
            .history
            .iter()
            .rev()
            .filter(|e| e.series.contains("2.0.0"))
            .map(|e| e.kind.as_str())
            .collect();
        let pending = lines.iter().position(|k| *k == "pending");
        let fired = lines.iter().position(|k| *k == "firing");
        assert!(
            matches!((pending, fired), (Some(p), Some(f)) if p < f),
            "pending then firing: {lines:?}"
        );

        let deployments = ferry
            .api_get("/v1/apps/shop/envs/production/deployments?limit=5")
            .await
            .1;
        let id = deployments
            .as_array()
            .and_then(|list| list.iter().find(|d| d["version"] == "2.0.0"))
            .and_then(|d| d["id"].as_i64())
            .expect("the deployment of 2.0.0");
        let ended = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(ended.state, DeploymentState::RolledBack, "{ended:?}");
        assert!(
            ended
                .reason
                .as_deref()
                .unwrap_or("")
                .contains("alert:high_error_rate"),
            "{ended:?}"
        );
        let after = wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(10),
            "the action is recorded",
            |a| {
                history_has(
                    a,
                    "action",
                    &format!("rolled back deployment #{id} of 2.0.0"),
                )
            },
        )
        .await;
        assert_eq!(
            after.history.iter().filter(|e| e.kind == "action").count(),
            1,
            "one action per firing: {after:#?}"
        );
        let (_, audit) = ferry.api_get("/v1/audit?actor=alert:high_error_rate").await;
        let records = audit.as_array().cloned().unwrap_or_default();
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "alerts.rollback" && r["outcome"] == "ok"),
            "audited as the alert: {audit}"
        );
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("1.0.0"));
        load.stop().await;
    })
    .await;
}

/// A Prometheus HTTP API answering `up`-like samples from a file: `0`/`1`, or `none`.
struct FakePrometheus {
    child: Child,
    port: u16,
    value: std::path::PathBuf,
}

impl FakePrometheus {
    fn start(dir: &Path) -> FakePrometheus {
        let script = dir.join("prometheus.py");
        std::fs::write(
            &script,
            r#"import http.server, json, sys, time
value_file = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        v = open(value_file).read().strip()
        result = [] if v == "none" else [{"metric": {"db": "main"}, "value": [time.time(), v]}]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"#,
        )
        .expect("write the fake Prometheus");
        let value = dir.join("prometheus.value");
        std::fs::write(&value, "1").expect("value");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(&value)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the fake Prometheus's port");
        let port = line.trim().parse().expect("a port");
        FakePrometheus { child, port, value }
    }

    fn set(&self, value: &str) {
        std::fs::write(&self.value, value).expect("value");
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// App `shop` (one replica of 1.0.0 deployed) with the alert `database_down` (critical,
/// `for: 1s`, evaluated every second), which fires while `prometheus` answers 0, with
/// `actions` and `extra` (top-level manifest YAML, before `environments:`).
async fn database_down_app(
    ferry: &Ferry,
    prometheus: &FakePrometheus,
    actions: &str,
    extra: &str,
) -> Spec {
    let mut spec = Spec::new("shop");
    spec.replicas = 1;
    spec.extra_service_yaml = extra.to_string();
    let manifest = ferry.write_manifest(&spec, "ferry.yaml");
    append(
        &manifest,
        &format!(
            "alerts:
  - name: database_down
    prometheus:
      address: http://127.0.0.1:{}
      query: 'up{{app=\"{{{{app}}}}\",env=\"{{{{env}}}}\"}}'
    condition: value == 0
    for: 1s
    interval: 1s
    severity: critical
    annotations: {{ summary: 'database {{{{ $labels.db }}}} is down' }}
    actions: {{ {actions} }}
",
            prometheus.port
        ),
    );
    ferry.apply(&manifest).await;
    ferry.deploy_ok(&spec, "1.0.0").await;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_alert_holds_deployments_survives_a_restart_and_resolves() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let prometheus = FakePrometheus::start(ferry.dir.path());
        let spec = database_down_app(&ferry, &prometheus, "block_promotions: true", "").await;

        prometheus.set("0");
        let firing = wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(30),
            "database_down fires",
            |a| a.alerts.iter().any(|v| v.status == AlertStatus::Firing),
        )
        .await;
        let fired_at = firing.alerts[0].fired_at_ms.expect("fired at");
        assert_eq!(firing.alerts[0].labels["db"], "main", "the series' labels");
        assert!(history_has(&firing, "pending", "value"), "{firing:#?}");

        // A deployment into the environment waits, naming the alert.
        ferry.deploy_nowait(&spec, "2.0.0").await;
        let id = ferry
            .env_status(&spec)
            .await
            .latest_deployment
            .expect("deployment")
            .id;
        ferry
            .wait_for_event(id, Duration::from_secs(30), |e| {
                e.message
                    .contains("alert database_down (critical) is firing")
            })
            .await;
        assert_eq!(
            ferry.deployment(id).await.deployment.state,
            DeploymentState::Blocked
        );

        // kill -9 and restart: the alert is still firing since the same moment, the
        // deployment still waits, and no second `firing` line is written.
        ferry.kill9_server();
        ferry.start_server().await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let again = alerts(&ferry, "shop").await;
        assert_eq!(again.alerts.len(), 1, "{again:#?}");
        assert_eq!(again.alerts[0].status, AlertStatus::Firing);
        assert_eq!(again.alerts[0].fired_at_ms, Some(fired_at));
        assert_eq!(
            again.history.iter().filter(|e| e.kind == "firing").count(),
            1,
            "{again:#?}"
        );
        assert_eq!(
            ferry.deployment(id).await.deployment.state,
            DeploymentState::Blocked
        );
        let listed = ferry.cli(&["alerts", "shop", "--env", "production"]).await;
        assert_eq!(listed.code, 0, "{listed}");
        for needle in [
            "firing",
            "critical",
            "shop/production",
            "database_down",
            "db=main",
            "history",
        ] {
            assert!(
                listed.stdout.contains(needle),
                "`ferry alerts` shows {needle:?}:\n{listed}"
            );
        }

        // It resolves on the new server; the deployment goes ahead.
        prometheus.set("1");
        let resolved = wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(30),
            "database_down resolves",
            |a| a.alerts.iter().any(|v| v.status == AlertStatus::Resolved),
        )
        .await;
        assert!(
            history_has(&resolved, "resolved", "no longer holds"),
            "{resolved:#?}"
        );
        let ended = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(ended.state, DeploymentState::Succeeded, "{ended:?}");

        // It fires again (a new episode); a silence (with a reason, audited) lets the next
        // deployment through.
        prometheus.set("0");
        wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(30),
            "database_down fires again",
            |a| a.alerts.iter().any(|v| v.status == AlertStatus::Firing),
        )
        .await;
        let refused = ferry
            .cli(&[
                "alerts",
                "silence",
                "shop",
                "--env",
                "production",
                "--alert",
                "database_down",
                "--for",
                "1h",
            ])
            .await;
        assert_ne!(refused.code, 0, "a silence needs a reason: {refused}");
        assert!(refused.stderr.contains("--reason"), "{refused}");
        let unknown = ferry
            .cli(&[
                "alerts",
                "silence",
                "shop",
                "--env",
                "production",
                "--alert",
                "nope",
                "--for",
                "1h",
                "--reason",
                "x",
            ])
            .await;
        assert_ne!(unknown.code, 0, "{unknown}");
        assert!(
            unknown.stderr.contains("no alert rule \"nope\""),
            "{unknown}"
        );
        let silenced = ferry
            .cli(&[
                "alerts",
                "silence",
                "shop",
                "--env",
                "production",
                "--alert",
                "database_down",
                "--for",
                "1h",
                "--reason",
                "planned database failover",
                "-o",
                "json",
            ])
            .await;
        assert_eq!(silenced.code, 0, "{silenced}");
        let silence_id = silenced.json()["id"].as_i64().expect("silence id");
        // a silenced alert holds nothing
        ferry.deploy_ok(&spec, "3.0.0").await;
        let listed = ferry.cli(&["alerts", "silences", "shop"]).await;
        assert!(
            listed.stdout.contains("planned database failover"),
            "{listed}"
        );
        let lifted = ferry
            .cli(&["alerts", "unsilence", &silence_id.to_string()])
            .await;
        assert_eq!(lifted.code, 0, "{lifted}");
        assert!(
            ferry
                .cli(&["alerts", "silences"])
                .await
                .stdout
                .contains("no silence in force")
        );
        let (_, audit) = ferry.api_get("/v1/audit?action=silences.create").await;
        assert!(
            audit
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["outcome"] == "ok"
                    && r["summary"]
                        .as_str()
                        .unwrap_or("")
                        .contains("planned database failover"))),
            "the silence is audited: {audit}"
        );
    })
    .await;
}

/// Waits for the receiver's message to `/pager` whose status is `status` (`firing`,
/// `resolved`), which must be the only one.
async fn only_message(
    receiver: &WebhookReceiver,
    ferry: &Ferry,
    status: &str,
) -> serde_json::Value {
    let ours = |l: &serde_json::Value| l["path"] == "/pager" && l["body"]["status"] == status;
    let lines = receiver
        .wait(status, ferry, Duration::from_secs(60), |l| {
            l.iter().any(ours)
        })
        .await;
    let found: Vec<&serde_json::Value> = lines.iter().filter(|l| ours(l)).collect();
    assert_eq!(found.len(), 1, "one {status} message: {lines:#?}");
    found[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_is_notified_once_across_kill9_and_counts_as_an_incident() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        const SIGNING_KEY: &str = "whsec-alerts-4d1c9e";
        let mut ferry = Ferry::start().await;
        let prometheus = FakePrometheus::start(ferry.dir.path());
        let receiver = WebhookReceiver::start(ferry.dir.path(), SIGNING_KEY);
        // Critical alerts go to /pager after a group_wait long enough to kill the server
        // while the firing notification waits in the outbox; warnings go to /chat.
        let routes = format!(
            "receivers:
  pager:
    webhook: {{ url: '{pager}', secret: HOOK_KEY }}
  chat:
    webhook: {{ url: '{chat}' }}
routes:
  - receiver: pager
    match: {{ kind: [alert-firing, alert-resolved], severity: critical, env: production }}
    group_wait: 4s
    group_interval: 1s
  - receiver: chat
    match: {{ severity: warning }}
",
            pager = receiver.url("/pager"),
            chat = receiver.url("/chat"),
        );
        let spec = database_down_app(&ferry, &prometheus, "notify: true", &routes).await;
        let out = ferry
            .cli_with_stdin(
                &["secrets", "set", "shop", "--env", "production", "HOOK_KEY"],
                SIGNING_KEY,
            )
            .await;
        assert_eq!(out.code, 0, "secrets set: {out}");

        // It fires; the server dies (SIGKILL) while the notification waits for its group.
        prometheus.set("0");
        wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(30),
            "database_down fires",
            |a| a.alerts.iter().any(|v| v.status == AlertStatus::Firing),
        )
        .await;
        ferry.kill9_server();
        let before_restart = receiver.lines().len();
        ferry.start_server().await;
        let message = &only_message(&receiver, &ferry, "firing").await;
        assert_eq!(message["sig_ok"], true, "signed: {message}");
        assert!(message["key"].is_string(), "an Idempotency-Key: {message}");
        let n = &message["body"]["notifications"][0];
        assert_eq!(n["kind"], "alert-firing", "{message}");
        assert_eq!(n["summary"], "database main is down", "{message}");
        for (label, want) in [
            ("alertname", "database_down"),
            ("severity", "critical"),
            ("app", "shop"),
            ("env", "production"),
            ("db", "main"),
        ] {
            assert_eq!(n["labels"][label], want, "{label}: {message}");
        }
        assert_eq!(n["details"]["fired_value"], "0", "{message}");

        // It resolves: one resolve notification, about the same alert.
        prometheus.set("1");
        let resolved = only_message(&receiver, &ferry, "resolved").await;
        let r = &resolved["body"]["notifications"];
        assert_eq!(r.as_array().map(Vec::len), Some(1), "{r}");
        assert_eq!(r[0]["kind"], "alert-resolved");
        assert_eq!(r[0]["labels"]["alertname"], "database_down");
        assert_eq!(resolved["sig_ok"], true);

        // Every delivery is recorded as delivered (none left to retry), and nothing went
        // to the receiver of warnings or more than once anywhere.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, history) = ferry.api_get("/v1/notifications?app=shop").await;
            let rows = history.as_array().cloned().unwrap_or_default();
            let alerts: Vec<_> = rows.iter().filter(|d| d["receiver"] == "pager").collect();
            if alerts.len() == 2 && alerts.iter().all(|d| d["state"] == "delivered") {
                break;
            }
            assert!(Instant::now() < deadline, "deliveries: {history:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let lines = receiver.lines();
        assert_eq!(
            lines.iter().filter(|l| l["path"] == "/pager").count(),
            2,
            "one firing and one resolve message (the server was killed with {before_restart} \
             received): {lines:#?}"
        );
        assert!(
            lines.iter().all(|l| l["path"] != "/chat"),
            "a critical alert is not routed to warnings: {lines:#?}"
        );

        // DORA: the critical alert was an incident of the deployment running when it fired
        // (a failed change), restored when it resolved.
        let answer = alerts(&ferry, "shop").await;
        let alert = &answer.alerts[0];
        let (fired, resolved) = (
            alert.fired_at_ms.expect("fired"),
            alert.resolved_at_ms.expect("resolved"),
        );
        let deployed = ferry
            .env_status(&spec)
            .await
            .latest_deployment
            .expect("1.0.0's deployment");
        let (status, report) = ferry.api_get("/v1/apps/shop/envs/production/dora").await;
        assert!(status.is_success(), "{status} {report}");
        let s = &report["summary"];
        assert_eq!(
            s["change_failure_rate"]["deployments"],
            serde_json::json!([deployed.id]),
            "{s:#}"
        );
        assert_eq!(
            s["failed_deployment_recovery_time"]["median_ms"],
            serde_json::json!(resolved - fired),
            "recovered when the alert resolved: {s:#}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_burns_cpu_above_its_limit_fires_with_the_value_notified() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let receiver = WebhookReceiver::start(ferry.dir.path(), "unused");
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        // A busy loop in the replica's process group beside the server. Its limit is a
        // tenth of a CPU, so it stays above 80 % of it even on a loaded machine.
        spec.prelude = "python3 -c 'while True: pass' &".into();
        spec.extra_service_yaml = format!(
            "    resources: {{ cpus: 0.1, memory: 512Mi }}
receivers:
  hook:
    webhook: {{ url: '{}' }}
routes:
  - receiver: hook
    match: {{ kind: alert-firing }}
    group_wait: 0s
alerts:
  - name: high_cpu
    condition: cpu_usage > 80
    interval: 1s
    severity: critical
    annotations: {{ summary: '{{{{ $labels.service }}}} uses {{{{ $value }}}} of its CPU' }}
  - name: high_memory
    condition: memory_usage > 80
    interval: 1s
",
            receiver.url("/hook")
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        let firing = wait_alerts(
            &ferry,
            "shop",
            Duration::from_secs(60),
            "high_cpu fires",
            |a| {
                a.alerts
                    .iter()
                    .any(|v| v.alert == "high_cpu" && v.status == AlertStatus::Firing)
            },
        )
        .await;
        let alert = &firing.alerts[0];
        assert_eq!(alert.labels["version"], "1.0.0", "{alert:?}");
        let percent = |text: &str| -> f64 {
            text.trim_end_matches('%')
                .parse()
                .unwrap_or_else(|_| panic!("a percentage: {text:?}"))
        };
        let fired = alert.fired_value.as_deref().expect("the value that fired");
        assert!(percent(fired) > 80.0, "{alert:?}");
        assert!(
            firing.alerts.iter().all(|v| v.alert != "high_memory"),
            "a replica far below its memory limit does not fire: {firing:#?}"
        );

        // The notification carries the value, in the summary and the details.
        let lines = receiver
            .wait(
                "high_cpu's notification",
                &ferry,
                Duration::from_secs(30),
                |l| !l.is_empty(),
            )
            .await;
        let n = &lines[0]["body"]["notifications"][0];
        assert_eq!(n["labels"]["alertname"], "high_cpu", "{n:#}");
        let value = n["details"]["fired_value"].as_str().expect("fired_value");
        assert!(percent(value) > 80.0, "{n:#}");
        assert_eq!(
            n["summary"],
            format!("web uses {value} of its CPU"),
            "{n:#}"
        );

        // `ferry status` (the API) shows each replica's shares.
        let status = ferry.env_status(&spec).await;
        let replica = &status.replicas[0];
        assert!(replica.cpu_share.is_some_and(|c| c > 0.8), "{replica:?}");
        assert!(
            replica.memory_share.is_some_and(|m| m > 0.0 && m < 0.8),
            "{replica:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_rules_firing_alert_resolves_with_one_resolve_notification() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let prometheus = FakePrometheus::start(ferry.dir.path());
        let receiver = WebhookReceiver::start(ferry.dir.path(), "unused");
        let routes = format!(
            "receivers:
  pager:
    webhook: {{ url: '{}' }}
routes:
  - receiver: pager
    match: {{ kind: [alert-firing, alert-resolved] }}
    group_wait: 0s
    group_interval: 1s
",
            receiver.url("/pager")
        );
        let spec = database_down_app(&ferry, &prometheus, "notify: true", &routes).await;
        prometheus.set("0");
        only_message(&receiver, &ferry, "firing").await;

        // The rule goes (the same manifest without `alerts:`): its firing alert resolves,
        // notified once with the firing one's labels, although the rule is gone.
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let resolved = only_message(&receiver, &ferry, "resolved").await;
        let n = &resolved["body"]["notifications"][0];
        assert_eq!(n["kind"], "alert-resolved", "{resolved:#}");
        assert_eq!(n["labels"]["alertname"], "database_down", "{n:#}");
        assert_eq!(n["labels"]["db"], "main", "{n:#}");
        assert_eq!(n["details"]["reason"], "its rule was removed", "{n:#}");
        let answer = alerts(&ferry, "shop").await;
        assert!(answer.alerts.is_empty(), "{answer:#?}");
        assert!(
            history_has(&answer, "resolved", "its rule was removed"),
            "{answer:#?}"
        );

        // A restart neither resends it nor resolves anything again.
        ferry.kill9_server();
        ferry.start_server().await;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            alerts(&ferry, "shop").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let pager: Vec<_> = receiver
            .lines()
            .into_iter()
            .filter(|l| l["path"] == "/pager")
            .collect();
        assert_eq!(pager.len(), 2, "one firing, one resolve: {pager:#?}");
    })
    .await;
}
