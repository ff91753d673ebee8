//! Deployment hooks end to end, with the real binary: pre_deploy order and environment
//! (a secret reaches the hook and is never printed), a failing pre_deploy changes nothing,
//! retries and timeouts, post_deploy HTTP smoke test failure → rolled back + on_rollback,
//! `ferry logs --hook`, irreversible migrations refuse a rollback unless forced with a
//! reason (audited), and exactly-once across a SIGKILL of the server.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{CliOutput, Ferry, SERIAL, Spec, bounded, is_alive};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(300);

/// Writes the test manifest for `spec` with `hooks` (YAML, at top level) appended.
fn manifest_with_hooks(ferry: &Ferry, spec: &Spec, hooks: &str) -> PathBuf {
    let path = ferry.write_manifest(spec, "ferry.yaml");
    let mut text = std::fs::read_to_string(&path).expect("manifest");
    text.push_str("hooks:\n");
    text.push_str(hooks);
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn file(ferry: &Ferry, name: &str) -> PathBuf {
    ferry.dir.path().join(name)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Polls until `pred` holds for the file's lines (or fails after `limit`).
async fn wait_lines(path: &Path, limit: Duration, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let now = lines(path);
        if pred(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{} never matched; it has: {now:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_secret(ferry: &Ferry, spec: &Spec, name: &str, value: &str) {
    let out = ferry
        .cli_with_stdin(
            &["secrets", "set", &spec.app, "--env", &spec.env, name],
            value,
        )
        .await;
    assert_eq!(out.code, 0, "secrets set failed:\n{out}");
}

async fn deploy(ferry: &Ferry, spec: &Spec, version: &str, wait: bool) -> CliOutput {
    let mut args = vec![
        "deploy",
        spec.app.as_str(),
        "--env",
        spec.env.as_str(),
        "--version",
        version,
        "-o",
        "json",
    ];
    if wait {
        args.extend(["--wait", "--timeout", "90s"]);
    }
    ferry.cli(&args).await
}

fn deployment_id(out: &CliOutput) -> i64 {
    out.json()["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no deployment id in {out}"))
}

async fn hook_runs(ferry: &Ferry, id: i64) -> Vec<serde_json::Value> {
    let (status, body) = ferry.api_get(&format!("/v1/deployments/{id}/hooks")).await;
    assert!(status.is_success(), "{status}: {body}");
    body.as_array().cloned().unwrap_or_default()
}

fn summary(runs: &[serde_json::Value]) -> Vec<(String, String, i64, String)> {
    runs.iter()
        .map(|r| {
            (
                r["phase"].as_str().unwrap_or("").to_string(),
                r["hook"].as_str().unwrap_or("").to_string(),
                r["attempt"].as_i64().unwrap_or(0),
                r["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_deploy_runs_in_order_and_a_failure_changes_nothing() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("hooky");
        spec.replicas = 1;
        let log = file(&ferry, "pre.log");
        let pids = file(&ferry, "slow.pids");
        let hooks = format!(
            r#"  pre_deploy:
    - name: first
      run: ["sh", "-c", "echo \"first $VERSION|$PREVIOUS_VERSION|$FERRY_APP|$FERRY_ENV|$FERRY_HOOK|$FERRY_DEPLOYMENT_ID|$EXTRA|$(printf %s \"$DB_PASSWORD\" | wc -c)\" >> '{log}'; echo \"pw=$DB_PASSWORD\"; pwd"]
      env: {{ EXTRA: extra-value }}
    - name: second
      run: ["sh", "-c", "echo \"second $VERSION\" >> '{log}'; echo \"working on $VERSION\"; if [ \"$VERSION\" = 2.0 ]; then echo \"boom for $VERSION\"; exit 3; fi"]
      retries: 1
    - name: slow
      run: ["sh", "-c", "if [ \"$VERSION\" = 3.0 ]; then echo $$ >> '{pids}'; sleep 60; fi"]
      timeout: 1s
      retries: 1
"#,
            log = log.display(),
            pids = pids.display()
        );
        let manifest = manifest_with_hooks(&ferry, &spec, &hooks);
        ferry.apply(&manifest).await;
        let secret = format!("hook-s3cret-{}", std::process::id());
        set_secret(&ferry, &spec, "DB_PASSWORD", &secret).await;

        // 1.0: every hook runs, in order, with the documented environment.
        let out = deploy(&ferry, &spec, "1.0", true).await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        let first_id = deployment_id(&out);
        ferry.assert_serves(&spec, "1.0").await;
        let got = lines(&log);
        assert_eq!(
            got,
            vec![
                format!(
                    "first 1.0||hooky|production|first|{first_id}|extra-value|{}",
                    secret.len()
                ),
                "second 1.0".to_string(),
            ],
            "hooks in order with their environment"
        );
        let runs = hook_runs(&ferry, first_id).await;
        assert_eq!(
            summary(&runs),
            vec![
                ("pre_deploy".into(), "first".into(), 1, "succeeded".into()),
                ("pre_deploy".into(), "second".into(), 1, "succeeded".into()),
                ("pre_deploy".into(), "slow".into(), 1, "succeeded".into()),
            ]
        );
        let line = ferry.timeline(first_id).await;
        assert!(line.contains("hook first: started"), "{line}");
        assert!(line.contains("hook first: succeeded in "), "{line}");
        // The hook printed the secret: the captured output shows it redacted; cwd is the
        // manifest's directory.
        let out = ferry
            .cli(&["logs", "hooky", "--env", "production", "--hook", "first"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("pw=[redacted]"), "{out}");
        assert!(
            out.stdout.contains(&ferry.dir.path().display().to_string()),
            "cwd is the manifest's directory: {out}"
        );
        assert!(!out.stdout.contains(&secret), "{out}");

        // 2.0: `second` fails twice (retries: 1); the deployment fails, nothing moved.
        let out = deploy(&ferry, &spec, "2.0", true).await;
        assert_eq!(out.code, 3, "{out}\n{}", ferry.server_logs());
        let second_id = deployment_id(&out);
        let d = ferry.deployment(second_id).await.deployment;
        assert_eq!(d.state, DeploymentState::Failed);
        let reason = d.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("pre_deploy hook second failed after 2 attempts")
                && reason.contains("exit 3")
                && reason.contains("boom for 2.0"),
            "{reason}"
        );
        let got = lines(&log);
        assert_eq!(
            got.iter().filter(|l| *l == "second 2.0").count(),
            2,
            "one retry: {got:?}"
        );
        ferry.assert_serves(&spec, "1.0").await;
        let line = ferry.timeline(second_id).await;
        assert!(!line.contains("web 2.0"), "no 2.0 replica ever started:\n{line}");
        assert!(line.contains("started attempt 2 (retry 1 of 1"), "{line}");
        // The change record carries every attempt, for the change ticket.
        let record = ferry
            .cli(&["change-record", &second_id.to_string()])
            .await;
        assert_eq!(record.code, 0, "{record}");
        assert!(
            record.stdout.contains("| pre_deploy | first | 1 | succeeded |")
                && record.stdout.contains("| pre_deploy | second | 2 | failed |"),
            "{record}"
        );
        assert!(!record.stdout.contains(&secret), "{record}");
        let status = ferry.env_status(&spec).await;
        assert!(
            status.replicas.iter().all(|r| r.version == "1.0"),
            "{status:?}"
        );

        // `ferry logs --hook`: every attempt with a header line.
        let out = ferry
            .cli(&["logs", "hooky", "--env", "production", "--hook", "second"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout
                .contains(&format!("attempt 1 of deployment #{second_id}: failed (exit 3)")),
            "{out}"
        );
        assert!(out.stdout.contains("attempt 2 of deployment"), "{out}");
        assert_eq!(out.stdout.matches("boom for 2.0").count(), 2, "{out}");
        let out = ferry
            .cli(&[
                "logs",
                "hooky",
                "--env",
                "production",
                "--hook",
                "second",
                "--deployment",
                &first_id.to_string(),
            ])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("working on 1.0"), "{out}");
        assert!(!out.stdout.contains("boom"), "{out}");
        // `ferry deployment ID` lists the runs.
        let out = ferry.cli(&["deployment", &second_id.to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("hooks"), "{out}");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains("second") && l.contains("failed") && l.contains("#2")),
            "{out}"
        );

        // 3.0: `slow` times out twice; its process group is killed each time.
        let out = deploy(&ferry, &spec, "3.0", true).await;
        assert_eq!(out.code, 3, "{out}\n{}", ferry.server_logs());
        let third_id = deployment_id(&out);
        let runs = hook_runs(&ferry, third_id).await;
        let slow: Vec<_> = summary(&runs)
            .into_iter()
            .filter(|(_, hook, _, _)| hook == "slow")
            .collect();
        assert_eq!(
            slow,
            vec![
                ("pre_deploy".into(), "slow".into(), 1, "timed-out".into()),
                ("pre_deploy".into(), "slow".into(), 2, "timed-out".into()),
            ]
        );
        let started: Vec<u32> = lines(&pids).iter().filter_map(|l| l.parse().ok()).collect();
        assert_eq!(started.len(), 2, "{started:?}");
        for pid in started {
            assert!(!is_alive(pid), "timed-out hook {pid} still runs");
        }
        let d = ferry.deployment(third_id).await.deployment;
        assert!(
            d.reason.unwrap_or_default().contains("timed out after 1s"),
            "{}",
            ferry.timeline(third_id).await
        );
        ferry.assert_serves(&spec, "1.0").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_smoke_test_rolls_back_and_runs_on_rollback() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("smoky");
        spec.replicas = 1;
        // 2.0 answers 500 on `/` (its health check still passes).
        spec.prelude = "[ \"$VERSION\" = 2.0 ] && export DEMO_ERROR_RATE=1;".to_string();
        let rb = file(&ferry, "rollback.log");
        let up = file(&ferry, "up.log");
        let hooks = format!(
            r#"  pre_deploy:
    - name: migrate
      run: ["sh", "-c", "echo \"up $VERSION\" >> '{up}'"]
      migration: {{ down: ["sh", "-c", "echo \"down $VERSION to $PREVIOUS_VERSION\" >> '{rb}'"] }}
  post_deploy:
    - name: health
      http: {{ path: /health, expect_status: 200, expect_json: {{ pointer: /version, equals: "${{VERSION}}" }}, max_latency: 5s }}
    - name: smoke
      http: {{ path: /, expect_status: 200, expect_body: "hello" }}
      retries: 1
  on_rollback:
    - name: page
      run: ["sh", "-c", "echo \"rolled back $VERSION to $PREVIOUS_VERSION\" >> '{rb}'"]
"#,
            rb = rb.display(),
            up = up.display()
        );
        let manifest = manifest_with_hooks(&ferry, &spec, &hooks);
        ferry.apply(&manifest).await;
        let out = deploy(&ferry, &spec, "1.0", true).await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        let out = deploy(&ferry, &spec, "2.0", true).await;
        assert_eq!(out.code, 3, "{out}\n{}", ferry.server_logs());
        let id = deployment_id(&out);
        let d = ferry.deployment(id).await.deployment;
        assert_eq!(d.state, DeploymentState::RolledBack, "{d:?}");
        let reason = d.reason.unwrap_or_default();
        assert!(
            reason.contains("post_deploy hook smoke failed after 2 attempts")
                && reason.contains("expected status 200, got 500"),
            "{reason}"
        );
        ferry.assert_serves(&spec, "1.0").await;
        // The reversible migration's `down` runs first (traffic is back on 1.0), then
        // on_rollback.
        let got = wait_lines(&rb, Duration::from_secs(30), |l| l.len() >= 2).await;
        assert_eq!(
            got,
            vec![
                "down 2.0 to 1.0".to_string(),
                "rolled back 2.0 to 1.0".to_string()
            ]
        );
        assert_eq!(lines(&up), vec!["up 1.0".to_string(), "up 2.0".to_string()]);
        let runs = summary(&hook_runs(&ferry, id).await);
        assert!(
            runs.contains(&("post_deploy".into(), "health".into(), 1, "succeeded".into())),
            "{runs:?}"
        );
        assert!(
            runs.contains(&("on_rollback".into(), "page".into(), 1, "succeeded".into())),
            "{runs:?}"
        );
        assert!(
            runs.contains(&(
                "migration_down".into(),
                format!("migrate-down-{id}"),
                1,
                "succeeded".into()
            )),
            "{runs:?}"
        );
        // Exactly once: nothing runs again later. Witness: a whole further deployment
        // goes through the same controller loop (its idle passes included) meanwhile.
        let out = deploy(&ferry, &spec, "1.1", true).await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        assert_eq!(lines(&rb).len(), 2, "{:?}", lines(&rb));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn irreversible_migration_refuses_rollback_unless_forced_with_a_reason() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("migra");
        spec.replicas = 1;
        // 3.0 answers 500 on `/`: its smoke test fails after its migration ran.
        spec.prelude = "[ \"$VERSION\" = 3.0 ] && export DEMO_ERROR_RATE=1;".to_string();
        let m = file(&ferry, "migrations.log");
        let hooks = format!(
            r#"  pre_deploy:
    - name: migrate
      run: ["sh", "-c", "echo \"migrated for $VERSION\" >> '{m}'"]
      migration: irreversible
  post_deploy:
    - name: smoke
      http: {{ path: /, expect_status: 200 }}
"#,
            m = m.display()
        );
        let manifest = manifest_with_hooks(&ferry, &spec, &hooks);
        ferry.apply(&manifest).await;
        for v in ["1.0", "2.0"] {
            let out = deploy(&ferry, &spec, v, true).await;
            assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        }
        assert_eq!(lines(&m).len(), 2);
        let out = ferry
            .cli(&["rollback", "migra", "--env", "production"])
            .await;
        assert_eq!(out.code, 7, "refused with a conflict: {out}");
        assert!(
            out.stderr.contains("migrate")
                && out.stderr.contains("2.0")
                && out.stderr.contains("irreversible"),
            "{out}"
        );
        ferry.assert_serves(&spec, "2.0").await;
        let out = ferry
            .cli(&["rollback", "migra", "--env", "production", "--force"])
            .await;
        assert_eq!(out.code, 2, "--force without --reason: {out}");
        let reason = "1.0 reads the new column fine";
        let out = ferry
            .cli(&[
                "rollback",
                "migra",
                "--env",
                "production",
                "--force",
                "--reason",
                reason,
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        ferry.assert_serves(&spec, "1.0").await;
        let out = ferry.cli(&["audit", "-o", "json"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains("rollback") && l.contains(reason))
                || out.stdout.contains(reason),
            "the forced rollback and its reason are audited: {out}"
        );

        // An automatic rollback never goes back past an irreversible migration: 3.0's smoke
        // test fails after its migration ran → failed, and 3.0 keeps serving.
        let out = deploy(&ferry, &spec, "3.0", true).await;
        assert_eq!(out.code, 3, "{out}\n{}", ferry.server_logs());
        let id = deployment_id(&out);
        let d = ferry.deployment(id).await.deployment;
        assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
        let reason = d.reason.unwrap_or_default();
        assert!(
            reason.contains("cannot roll back automatically: migration migrate is irreversible")
                && reason.contains("expected status 200, got 500"),
            "{reason}"
        );
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("3.0"), "{status:?}");
        let resp = ferry
            .http
            .get(format!("http://{}/", spec.listener()))
            .send()
            .await
            .expect("GET");
        assert_eq!(
            resp.headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok()),
            Some("3.0")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_interrupted_by_a_server_kill_fails_or_reruns_exactly_once() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let mut spec = Spec::new("crashy");
        spec.replicas = 1;
        let a = file(&ferry, "a.log");
        let b = file(&ferry, "b.log");
        let hooks = format!(
            r#"  pre_deploy:
    - name: fragile
      run: ["sh", "-c", "if [ \"$VERSION\" = 1.0 ]; then echo $$ >> '{a}'; sleep 120; fi"]
      on_interrupt: fail
    - name: rerunnable
      run: ["sh", "-c", "if [ \"$VERSION\" = 2.0 ]; then echo $$ >> '{b}'; [ $(wc -l < '{b}') -ge 2 ] || sleep 120; fi"]
      on_interrupt: rerun
"#,
            a = a.display(),
            b = b.display()
        );
        let manifest = manifest_with_hooks(&ferry, &spec, &hooks);
        ferry.apply(&manifest).await;

        // on_interrupt: fail
        let out = deploy(&ferry, &spec, "1.0", false).await;
        assert_eq!(out.code, 0, "{out}");
        let id = deployment_id(&out);
        let pids = wait_lines(&a, Duration::from_secs(30), |l| l.len() == 1).await;
        let pid: u32 = pids[0].parse().expect("pid");
        ferry.kill9_server();
        assert!(is_alive(pid), "the hook outlives the server, like replicas do");
        ferry.start_server().await;
        let d = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(d.state, DeploymentState::Failed, "{d:?}");
        assert!(
            d.reason.clone().unwrap_or_default().contains("interrupted by a server restart"),
            "{d:?}"
        );
        let line = ferry.timeline(id).await;
        assert!(
            line.contains("hook fragile was interrupted by a server restart"),
            "{line}"
        );
        assert!(!is_alive(pid), "recovery stopped the interrupted hook's group");
        assert_eq!(lines(&a).len(), 1, "never run twice");

        // on_interrupt: rerun
        let out = deploy(&ferry, &spec, "2.0", false).await;
        assert_eq!(out.code, 0, "{out}");
        let id = deployment_id(&out);
        let pids = wait_lines(&b, Duration::from_secs(30), |l| l.len() == 1).await;
        let pid: u32 = pids[0].parse().expect("pid");
        ferry.kill9_server();
        ferry.start_server().await;
        let d = ferry.wait_terminal(id, Duration::from_secs(90)).await;
        assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}\n{}", ferry.server_logs());
        assert!(!is_alive(pid));
        let runs: Vec<_> = summary(&hook_runs(&ferry, id).await)
            .into_iter()
            .filter(|(_, hook, _, _)| hook == "rerunnable")
            .collect();
        assert_eq!(
            runs,
            vec![
                ("pre_deploy".into(), "rerunnable".into(), 1, "interrupted".into()),
                ("pre_deploy".into(), "rerunnable".into(), 2, "succeeded".into()),
            ]
        );
        assert_eq!(lines(&b).len(), 2, "exactly two attempts ran");
        ferry.assert_serves(&spec, "2.0").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progressive_smoke_tests_go_through_the_preview_before_traffic_moves() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        // blue/green with a preview listener: green 2.0 fails its smoke test there; blue
        // keeps all the traffic and green is removed.
        let mut spec = Spec::new("bluey");
        spec.replicas = 1;
        let preview_port = common::free_port();
        spec.strategy = format!("{{ blue_green: {{ preview_listen: 127.0.0.1:{preview_port} }} }}");
        let hooks = r#"  post_deploy:
    - name: version
      http: { path: /health, expect_json: { pointer: /version, equals: "1.0" } }
"#;
        let manifest = manifest_with_hooks(&ferry, &spec, hooks);
        ferry.apply(&manifest).await;
        let out = deploy(&ferry, &spec, "1.0", true).await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        let load = common::Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        let out = deploy(&ferry, &spec, "2.0", true).await;
        assert_eq!(out.code, 3, "{out}\n{}", ferry.server_logs());
        let id = deployment_id(&out);
        let report = load.stop().await;
        report.assert_no_failures("blue/green smoke test failure");
        assert_eq!(
            report.versions(),
            ["1.0".to_string()].into_iter().collect(),
            "no request reached green before its smoke test passed"
        );
        let d = ferry.deployment(id).await.deployment;
        assert_eq!(d.state, DeploymentState::RolledBack, "{d:?}");
        assert!(
            d.reason
                .unwrap_or_default()
                .contains("expected /version to equal \"1.0\", got \"2.0\""),
            "the smoke test reached green through the preview listener"
        );
        let outputs = ferry
            .cli(&[
                "logs",
                "bluey",
                "--env",
                "production",
                "--hook",
                "version",
                "-o",
                "json",
            ])
            .await;
        assert_eq!(outputs.code, 0, "{outputs}");
        assert!(
            outputs
                .stdout
                .contains(&format!("127.0.0.1:{preview_port}/health")),
            "{outputs}"
        );
        ferry.assert_serves(&spec, "1.0").await;

        // canary: the smoke test goes through the preview header before the first step.
        let mut spec = Spec::new("canny");
        spec.replicas = 1;
        spec.strategy = "{ canary: { steps: [{ weight: 50 }] } }".into();
        let hooks = r#"  post_deploy:
    - name: version
      http: { path: /health, expect_json: { pointer: /version, equals: "${VERSION}" } }
"#;
        let manifest = manifest_with_hooks(&ferry, &spec, hooks);
        ferry.apply(&manifest).await;
        for v in ["1.0", "2.0"] {
            let out = deploy(&ferry, &spec, v, true).await;
            assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        }
        let out = ferry
            .cli(&["logs", "canny", "--env", "production", "--hook", "version"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout.contains("preview header X-Ferry-Preview"),
            "{out}"
        );
        ferry.assert_serves(&spec, "2.0").await;
    })
    .await;
}
