//! Replicas are stopped only once the proxy confirms nothing can reach them: apps that
//! treat SIGTERM like common servers (die at once; or finish what they accepted and refuse
//! new work) see long requests in flight and a keep-alive load through rolling updates,
//! redeploys, rollbacks and canary scale-downs, and no client request fails.
//!
//! The load counts what a client without retries sees (`common::StrictClient`).

mod common;

use std::time::Duration;

use common::{Ferry, Load, LoadReport, SERIAL, Spec, bounded};

const LIMIT: Duration = Duration::from_secs(300);
/// A long request: in flight across several route-table changes.
const SLOW: &str = "/slow?ms=1500";

fn app_program(on_sigterm: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/server.py");
    format!("python3 '{script}' --port \"$PORT\" --version \"$VERSION\" --on-sigterm {on_sigterm}")
}

/// Fast keep-alive load and long requests, both counted without retries.
struct Traffic {
    fast: Load,
    slow: Load,
}

impl Traffic {
    async fn start(spec: &Spec) -> Traffic {
        let traffic = Traffic {
            fast: Load::start(&spec.listener(), 4),
            slow: Load::start_on(&spec.listener(), SLOW, 4),
        };
        traffic.fast.warm_up(50).await;
        traffic.slow.warm_up(4).await;
        traffic
    }

    async fn stop(self) -> (LoadReport, LoadReport) {
        (self.fast.stop().await, self.slow.stop().await)
    }
}

/// Asserts no failure in either load and returns `(requests, failures)` for the figures.
fn check(what: &str, fast: &LoadReport, slow: &LoadReport, timeline: &str) -> (usize, usize) {
    let failures = fast.failures().len() + slow.failures().len();
    let total = fast.total() + slow.total();
    eprintln!(
        "FIGURES {what}: {total} requests ({} fast, {} long), {failures} failed",
        fast.total(),
        slow.total()
    );
    fast.assert_no_failures(&format!("{what} (keep-alive load)\n{timeline}"));
    slow.assert_no_failures(&format!("{what} (long requests)\n{timeline}"));
    assert!(
        slow.total() >= 4,
        "{what}: long requests were in flight during the change"
    );
    (total, failures)
}

async fn cli_ok(ferry: &Ferry, args: &[&str]) -> common::CliOutput {
    let out = ferry.cli(args).await;
    assert_eq!(out.code, 0, "ferry {}:\n{out}", args.join(" "));
    out
}

/// Every stopped replica of a deployment gets a `drained` line (after its requests were
/// done), then a `stopped` line, and `succeeded` comes after the last of them.
async fn assert_drained_before_stop(ferry: &Ferry, spec: &Spec, what: &str) {
    let timeline = ferry.timelines(spec, common::wall_ms()).await;
    let last = timeline
        .rsplit("deployment #")
        .next()
        .unwrap_or_default()
        .to_string();
    let drained = last.matches(": drained:").count();
    let stopped = last.matches(": stopped").count();
    assert!(
        drained > 0 && drained == stopped,
        "{what}: every stopped replica is drained first ({drained} drained, {stopped} stopped):\n{last}"
    );
    assert!(
        !last.contains("drain_timeout"),
        "{what}: drains end when the requests are done, not at the timeout:\n{last}"
    );
    assert!(
        last.contains("traffic during the rollout: web ") && !last.contains("clients saw"),
        "{what}: the timeline says what clients saw during the rollout (no errors):\n{last}"
    );
    let succeeded = last
        .rfind("succeeded")
        .or_else(|| last.rfind("rolled-back"));
    let last_stop = last.rfind(": stopped");
    assert!(
        matches!((last_stop, succeeded), (Some(s), Some(d)) if s < d),
        "{what}: the end of the deployment comes after its replicas stopped:\n{last}"
    );
}

async fn rolling_paths(on_sigterm: &str) {
    let ferry = Ferry::start().await;
    let mut spec = Spec::new("drain");
    spec.replicas = 3;
    spec.program = Some(app_program(on_sigterm));
    let manifest = ferry.write_manifest(&spec, "ferry.yaml");
    ferry.apply(&manifest).await;
    ferry.deploy_ok(&spec, "1.0.0").await;
    ferry.assert_serves(&spec, "1.0.0").await;
    let (app, env) = (spec.app.as_str(), spec.env.as_str());
    let mut figures = Vec::new();

    // A rolling update.
    let traffic = Traffic::start(&spec).await;
    ferry.deploy_ok(&spec, "1.1.0").await;
    let (fast, slow) = traffic.stop().await;
    let timeline = ferry.timelines(&spec, fast.started_wall_ms).await;
    figures.push(check("rolling update", &fast, &slow, &timeline));
    assert_drained_before_stop(&ferry, &spec, "rolling update").await;

    // A redeploy (a secret changed).
    let traffic = Traffic::start(&spec).await;
    let out = ferry
        .cli_with_stdin(&["secrets", "set", app, "--env", env, "TOKEN"], "s3cr3t-v1")
        .await;
    assert_eq!(out.code, 0, "{out}");
    cli_ok(
        &ferry,
        &["redeploy", app, "--env", env, "--wait", "--timeout", "120s"],
    )
    .await;
    let (fast, slow) = traffic.stop().await;
    let timeline = ferry.timelines(&spec, fast.started_wall_ms).await;
    figures.push(check("redeploy", &fast, &slow, &timeline));
    assert_drained_before_stop(&ferry, &spec, "redeploy").await;

    // A rollback.
    let traffic = Traffic::start(&spec).await;
    cli_ok(
        &ferry,
        &["rollback", app, "--env", env, "--wait", "--timeout", "120s"],
    )
    .await;
    let (fast, slow) = traffic.stop().await;
    let timeline = ferry.timelines(&spec, fast.started_wall_ms).await;
    figures.push(check("rollback", &fast, &slow, &timeline));
    assert_drained_before_stop(&ferry, &spec, "rollback").await;

    let (total, failed) = figures.iter().fold((0, 0), |(t, f), (a, b)| (t + a, f + b));
    eprintln!("FIGURES {on_sigterm}: {total} requests, {failed} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_exiting_at_once_on_sigterm_loses_nothing_in_rolling_updates() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, rolling_paths("exit")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn app_refusing_new_work_on_sigterm_loses_nothing_in_rolling_updates() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, rolling_paths("finish")).await;
}

/// A canary that completes scales the old version down; its replicas die at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_scale_down_loses_nothing() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("drainc");
        spec.replicas = 3;
        spec.program = Some(app_program("exit"));
        spec.strategy =
            "{ canary: { steps: [{ weight: 34 }, { pause: 1s }, { weight: 67 }, { pause: 1s }] } }"
                .to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        let traffic = Traffic::start(&spec).await;
        ferry.deploy_ok(&spec, "2.0.0").await;
        let (fast, slow) = traffic.stop().await;
        let timeline = ferry.timelines(&spec, fast.started_wall_ms).await;
        check("canary scale-down", &fast, &slow, &timeline);
        assert_drained_before_stop(&ferry, &spec, "canary").await;
        let status = ferry.status_api(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("2.0.0"));
        assert!(
            status.replicas.iter().all(|r| r.version == "2.0.0"),
            "`succeeded … retired` only once the old replicas are gone: {:#?}",
            status.replicas
        );
    })
    .await;
}

/// `ferry status APP | head -2`: a reader that closed the pipe ends the CLI quietly (no
/// `Broken pipe` panic, no exit code 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_exits_quietly_when_stdout_is_closed() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("pipe");
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        for args in [
            vec!["status", "pipe"],
            vec!["status", "pipe", "-o", "json"],
            vec!["history", "pipe", "--env", "production"],
        ] {
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(reader);
            let out = tokio::process::Command::new(common::FERRY)
                .args(&args)
                .env("FERRY_URL", &ferry.url)
                .env("FERRY_TOKEN", &ferry.token)
                .env("FERRY_CONFIG", ferry.dir.path().join("cli-config.json"))
                .stdin(std::process::Stdio::null())
                .stdout(writer)
                .stderr(std::process::Stdio::piped())
                .output()
                .await
                .expect("run ferry");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(0),
                "ferry {args:?} with a closed stdout: {stderr}"
            );
            assert!(stderr.is_empty(), "ferry {args:?}: {stderr}");
        }
    })
    .await;
}

/// A rolling update without analysis still says when clients saw errors: on the timeline
/// and as the reason `ferry status` shows next to `succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_seen_during_a_rollout_are_reported() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("errs");
        spec.prelude =
            "if [ \"$VERSION\" = 2.0.0 ]; then export DEMO_ERROR_RATE=0.5; fi;".to_string();
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let load = Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        ferry.deploy_ok(&spec, "2.0.0").await;
        let report = load.stop().await;
        assert!(
            !report.failures().is_empty(),
            "2.0.0 answers 500s half the time"
        );
        let status = ferry.env_status(&spec).await;
        let latest = status.latest_deployment.expect("latest deployment");
        let reason = latest.reason.unwrap_or_default();
        assert!(
            reason.starts_with("clients saw ") && reason.contains("web 2.0.0 "),
            "{reason:?}"
        );
        let out = ferry.cli(&["status", "errs", "--env", "production"]).await;
        assert!(out.stdout.contains("clients saw "), "{out}");
        let timeline = ferry.timelines(&spec, common::wall_ms()).await;
        assert!(
            timeline.contains("traffic during the rollout: web 1.0.0: "),
            "{timeline}"
        );
    })
    .await;
}
