//! End-to-end tests of canary and blue/green rollouts: a real server, proxy and `ferry-demo`
//! replicas on 127.0.0.1, driven through the CLI under a bounded client loop.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    Ferry, Load, LoadReport, RuntimeKind, SERIAL, Sample, Spec, active_replicas, bounded, docker,
    free_port, is_alive, sample_sequential, wall_ms,
};
use ferry_core::api::{EnvStatus, EventView};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(240);

/// Background analysis that rolls back a canary failing more than 5% of its requests.
const FAST_ERRORS: &str = "{ interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 0.05, min_requests: 20 }] }";

fn rollout_waits_for_promote(s: &EnvStatus, version: &str, weight: f64) -> bool {
    s.rollout.as_ref().is_some_and(|r| {
        r.canary_version == version
            && (r.canary_weight - weight).abs() < 1e-9
            && r.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("ferry promote"))
    })
}

/// Waits (bounded) until every pid is gone; returns how long it took.
/// The version each user (sent as `X-User`) lands on; panics if one user saw two versions.
async fn sticky_sides(listener: &str, users: usize, tries: usize) -> BTreeMap<String, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut sides = BTreeMap::new();
    for u in 0..users {
        let user = format!("user-{u}");
        for _ in 0..tries {
            let resp = http
                .get(format!("http://{listener}/"))
                .header("X-User", &user)
                .send()
                .await
                .expect("GET with X-User");
            assert!(resp.status().is_success(), "{user}: {}", resp.status());
            let version = resp
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let first = sides.entry(user.clone()).or_insert_with(|| version.clone());
            assert_eq!(first, &version, "{user} switched sides within one weight");
        }
    }
    sides
}

async fn wait_dead(pids: &[u32], limit: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|p| is_alive(*p)) {
        assert!(
            start.elapsed() < limit,
            "{what}: pids {pids:?} still alive after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn latest_state(s: &EnvStatus) -> Option<DeploymentState> {
    s.latest_deployment.as_ref().map(|d| d.state)
}

fn count_versions(samples: &[Sample]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for s in samples {
        let key = match &s.result {
            Ok(v) => v.clone(),
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// Per client worker, once an answer came from `new`, no later answer came from `old`.
fn assert_switch_is_monotonic(report: &LoadReport, old: &str, new: &str) {
    for (i, worker) in report.workers.iter().enumerate() {
        let mut switched = false;
        for s in worker {
            match s.result.as_deref() {
                Ok(v) if v == new => switched = true,
                Ok(v) if v == old && switched => panic!(
                    "worker {i}: {old} answered at {} after {new} had answered: not an atomic switch",
                    report.at(s.sent)
                ),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_progresses_under_load() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        spec.strategy = format!(
            "{{ canary: {{ steps: [{{ weight: 10 }}, {{ pause: {{}} }}, {{ weight: 50 }}, {{ pause: 1s }}], analysis: {FAST_ERRORS}, stickiness: {{ header: X-User }} }} }}"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 2);
        load.warm_up(50).await;
        let id = ferry.deploy_id_to("shop", "production", "2.0.0").await;
        let status = ferry
            .wait_status(&spec, Duration::from_secs(60), "canary at 10% waiting for promote", |s| {
                rollout_waits_for_promote(s, "2.0.0", 10.0)
            })
            .await;
        let rollout = status.rollout.clone().expect("rollout");
        assert_eq!(rollout.strategy, "canary");
        assert_eq!(rollout.stable_version, "1.0.0");
        assert!(!rollout.paused);
        assert_eq!(latest_state(&status), Some(DeploymentState::Progressing));

        // Human status shows the rollout block.
        let out = ferry.cli(&["status", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        for needle in ["rollout   canary", "new     2.0.0", "10%", "stable  1.0.0", "90%", "waiting", "ferry promote"] {
            assert!(out.stdout.contains(needle), "status should show {needle:?}:\n{out}");
        }
        let first_load = load.stop().await;

        // Exact split: the proxy's choice is exact per 100 requests; alone on the listener,
        // one client's 400 requests must hold 40 ± 10 answers of the canary.
        let sample = sample_sequential(&spec.listener(), 400).await;
        let counts = count_versions(&sample);
        let canary = counts.get("2.0.0").copied().unwrap_or(0);
        let stable = counts.get("1.0.0").copied().unwrap_or(0);
        assert_eq!(canary + stable, 400, "every request answered by one of the versions: {counts:?}");
        assert!((30..=50).contains(&canary), "10% of 400 should be ~40 answers of 2.0.0: {counts:?}");

        // Stickiness: each user stays on one side; the preview header forces the canary.
        let sticky_before = sticky_sides(&spec.listener(), 60, 3).await;
        let on_canary: Vec<&String> = sticky_before
            .iter()
            .filter(|(_, v)| v.as_str() == "2.0.0")
            .map(|(u, _)| u)
            .collect();
        eprintln!("{} of 60 sticky users on the canary at 10%", on_canary.len());
        let forced = reqwest::Client::new()
            .get(format!("http://{}/", spec.listener()))
            .header("X-Ferry-Preview", "1")
            .send()
            .await
            .expect("GET with the preview header");
        assert_eq!(
            forced.headers().get("x-version").and_then(|v| v.to_str().ok()),
            Some("2.0.0"),
            "the preview header forces the canary"
        );

        // Follow it live while promoting.
        let load = Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        let watch = ferry.cli(&["status", "shop", "--env", "production", "--watch", "--timeout", "90s"]);
        let promote = async {
            // Let the watcher connect and draw the first block.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let out = ferry.cli(&["promote", "shop", "--env", "production"]).await;
            assert_eq!(out.code, 0, "promote:\n{out}");
            assert!(out.stdout.contains("promote"), "{out}");
            // Users on the canary at 10% stay on it as the weight grows.
            ferry
                .wait_status(&spec, Duration::from_secs(30), "weight 50% or more", |s| {
                    s.rollout.as_ref().is_none_or(|r| r.canary_weight >= 50.0)
                })
                .await;
            let sticky_after = sticky_sides(&spec.listener(), 60, 1).await;
            for (user, version) in &sticky_before {
                if version == "2.0.0" {
                    assert_eq!(sticky_after.get(user).map(String::as_str), Some("2.0.0"), "{user} left the canary as its weight grew");
                }
            }
            ferry.wait_terminal(id, Duration::from_secs(60)).await
        };
        let (watched, done) = tokio::join!(watch, promote);
        eprintln!("--- ferry status --watch (not a terminal)\n{}", watched.stdout);
        let done_at = Instant::now();
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:?}\n{}", ferry.timelines(&spec, wall_ms()).await);
        assert_eq!(watched.code, 0, "status --watch should exit 0 on success:\n{watched}");
        assert!(
            watched.stdout.contains("rollout   canary") && watched.stdout.contains("succeeded"),
            "status --watch should draw the rollout and the end:\n{watched}"
        );
        assert!(watched.stdout.matches("shop/production").count() >= 2, "one block per event:\n{watched}");

        ferry.assert_serves(&spec, "2.0.0").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        let timelines = ferry.timelines(&spec, origin).await;
        first_load.assert_no_failures(&timelines);
        report.assert_no_failures(&timelines);
        assert_eq!(
            report.versions_sent_after(done_at),
            ["2.0.0".to_string()].into(),
            "after success every answer comes from 2.0.0"
        );
        // The promote moved it to 50% before 100%: both versions answered in the second load.
        assert_eq!(report.versions(), ["1.0.0".to_string(), "2.0.0".to_string()].into());

        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("2.0.0"));
        assert!(status.rollout.is_none(), "no rollout once it succeeded: {:?}", status.rollout);
        let active = active_replicas(&status);
        assert_eq!(active.len(), 2, "{active:#?}");
        assert!(active.iter().all(|r| r.version == "2.0.0"), "{active:#?}");
        let timeline = ferry.deployment(id).await.events;
        assert!(
            timeline.iter().any(|e| e.message.contains("promote by") && e.message.contains("weight 10% → 50%")),
            "the timeline records who promoted and the weight change:\n{timelines}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_canary_rolls_back_fast() {
    bad_canary_rolls_back(RuntimeKind::Process).await;
}

/// The same scenario with containers on a real Docker engine.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_canary_rolls_back_fast_on_docker() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::demo_versions(&["2.0.0", "3.0.0"]);
    bad_canary_rolls_back(RuntimeKind::Docker).await;
}

async fn bad_canary_rolls_back(runtime: RuntimeKind) {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let _cleanup = docker::cleanup_for(runtime, &ferry);
        let mut spec = Spec::new("shop");
        spec.runtime = runtime;
        spec.replicas = 2;
        spec.prelude = "if [ \"$VERSION\" = 3.0.0 ]; then export DEMO_ERROR_RATE=0.5; fi;".into();
        // Default analysis settings (interval 5s, failure_limit 0, min_requests 20).
        spec.strategy = "{ canary: { steps: [{ weight: 10 }, { pause: 2m }, { weight: 50 }], analysis: { metrics: [{ name: errors, builtin: error_rate, max: 0.05 }] } } }".into();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "2.0.0").await;

        let load = Load::start(&spec.listener(), 2);
        load.warm_up(50).await;
        let out = ferry
            .cli(&["deploy", "shop", "--env", "production", "--version", "3.0.0", "--wait", "--timeout", "90s"])
            .await;
        let returned = Instant::now();
        assert_eq!(out.code, 3, "deploy of a bad canary should exit 3:\n{out}");
        for needle in ["rolled back", "errors", "error rate", "max 0.05", "2.0.0"] {
            assert!(out.stderr.contains(needle), "the reason should name {needle:?}:\n{out}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        let timelines = ferry.timelines(&spec, origin).await;

        // Time from the canary's first traffic to rolled-back, on the server's clock.
        let status = ferry.env_status(&spec).await;
        let dep = status.latest_deployment.clone().expect("latest");
        assert_eq!(dep.state, DeploymentState::RolledBack, "{timelines}");
        assert_eq!(status.current_version.as_deref(), Some("2.0.0"));
        let events = ferry.deployment(dep.id).await.events;
        let first_traffic = events
            .iter()
            .find(|e| e.kind == "traffic" && e.message.contains("3.0.0") && !e.message.contains("3.0.0 0%"))
            .unwrap_or_else(|| panic!("no traffic event for 3.0.0:\n{timelines}"));
        let back: &EventView = events
            .iter()
            .find(|e| e.kind == "state" && e.message.starts_with("rolling-back"))
            .unwrap_or_else(|| panic!("no rolling-back event:\n{timelines}"));
        let rolled_back = events
            .iter()
            .find(|e| e.message.starts_with("rolled-back"))
            .unwrap_or_else(|| panic!("no rolled-back event:\n{timelines}"));
        let to_decision = back.at_ms - first_traffic.at_ms;
        let to_rolled_back = rolled_back.at_ms - first_traffic.at_ms;
        eprintln!(
            "bad canary: first traffic → all traffic back {to_decision} ms, → rolled-back {to_rolled_back} ms"
        );
        assert!(to_rolled_back < 10_000, "rollback took {to_rolled_back} ms (> 10s):\n{timelines}");

        // Failures: only the canary's own 500s.
        let failures: Vec<&Sample> = report.samples().filter(|s| s.result.is_err()).collect();
        let foreign: Vec<String> = failures
            .iter()
            .filter(|s| !(s.status == Some(500) && s.version.as_deref() == Some("3.0.0")))
            .map(|s| format!("{} {:?}", report.at(s.sent), s.result))
            .collect();
        assert!(foreign.is_empty(), "failures other than the canary's 500s: {foreign:#?}\n{timelines}");
        assert!(!failures.is_empty(), "the bad canary should have answered some 500s");
        let canary_answers = report.samples().filter(|s| s.version.as_deref() == Some("3.0.0")).count();
        eprintln!(
            "bad canary: {} requests, {canary_answers} reached 3.0.0, {} were its 500s",
            report.total(),
            failures.len()
        );
        assert_eq!(
            report.versions_sent_after(returned),
            ["2.0.0".to_string()].into(),
            "after the rollback every answer comes from 2.0.0"
        );
        let active = active_replicas(&status);
        assert!(active.iter().all(|r| r.version == "2.0.0") && active.len() == 2, "{active:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_and_retry() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        spec.strategy = format!(
            "{{ canary: {{ steps: [{{ weight: 20 }}, {{ pause: {{}} }}, {{ weight: 60 }}], analysis: {FAST_ERRORS} }} }}"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        // Nothing in progress: steering commands are conflicts (exit 7) with the reason.
        for cmd in ["promote", "abort", "pause"] {
            let out = ferry.cli(&[cmd, "shop", "--env", "production"]).await;
            assert_eq!(out.code, 7, "{cmd} with nothing in progress:\n{out}");
            assert!(out.stderr.starts_with("error: "), "{out}");
        }
        let out = ferry.cli(&["retry", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 7, "retry of a succeeded deployment:\n{out}");
        assert!(out.stderr.contains("succeeded"), "{out}");

        let load = Load::start(&spec.listener(), 2);
        load.warm_up(50).await;
        let out = ferry.cli(&["deploy", "shop", "--env", "production", "--version", "2.0.0"]).await;
        assert_eq!(out.code, 0, "{out}");
        ferry
            .wait_status(&spec, Duration::from_secs(60), "canary at 20% waiting", |s| {
                rollout_waits_for_promote(s, "2.0.0", 20.0)
            })
            .await;
        let canary_pids: Vec<u32> = ferry
            .status_api(&spec)
            .await
            .replicas
            .iter()
            .filter(|r| r.version == "2.0.0")
            .filter_map(|r| r.pid)
            .collect();
        assert!(!canary_pids.is_empty());

        // Pause and resume are recorded (and a paused rollout says so).
        let out = ferry.cli(&["pause", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        ferry
            .wait_status(&spec, Duration::from_secs(10), "paused", |s| s.rollout.as_ref().is_some_and(|r| r.paused))
            .await;
        let out = ferry.cli(&["status", "shop", "--env", "production"]).await;
        assert!(out.stdout.contains("paused    by hand"), "{out}");
        let out = ferry.cli(&["resume", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        ferry
            .wait_status(&spec, Duration::from_secs(10), "resumed", |s| s.rollout.as_ref().is_some_and(|r| !r.paused))
            .await;

        let aborting = Instant::now();
        let out = ferry.cli(&["abort", "shop", "--env", "production", "--wait", "--timeout", "60s"]).await;
        assert_eq!(out.code, 0, "abort --wait:\n{out}\n{}", ferry.timelines(&spec, wall_ms()).await);
        assert!(out.stdout.contains("aborted"), "{out}");
        let aborted_at = Instant::now();
        let status = ferry.env_status(&spec).await;
        let dep = status.latest_deployment.clone().expect("latest");
        assert_eq!(dep.state, DeploymentState::Aborted);
        assert_eq!(status.current_version.as_deref(), Some("1.0.0"));
        let active = active_replicas(&status);
        assert!(active.iter().all(|r| r.version == "1.0.0") && active.len() == 2, "{active:#?}");
        let took = wait_dead(&canary_pids, Duration::from_secs(5), "canary after abort").await;
        eprintln!("canary processes gone {took:?} after abort --wait returned");
        ferry
            .wait_status(&spec, Duration::from_secs(5), "no canary replica listed", |s| {
                s.replicas.iter().all(|r| r.version == "1.0.0")
            })
            .await;
        let sample = sample_sequential(&spec.listener(), 100).await;
        assert_eq!(count_versions(&sample), [("1.0.0".to_string(), 100)].into(), "100% stable after abort");
        let history = ferry.cli(&["history", "shop", "--env", "production"]).await;
        assert!(history.stdout.contains("aborted"), "{history}");
        let abort_took = aborted_at - aborting;
        eprintln!("abort --wait took {abort_took:?}");
        if abort_took > Duration::from_secs(3) {
            eprintln!("slow abort; timeline:\n{}", ferry.timelines(&spec, wall_ms()).await);
        }

        // Retry: a new deployment of the same version, from the first step.
        let out = ferry.cli(&["retry", "shop", "--env", "production", "-o", "json"]).await;
        assert_eq!(out.code, 0, "{out}");
        let retried = out.json();
        assert_eq!(retried["kind"], "retry");
        assert_eq!(retried["version"], "2.0.0");
        let id = retried["id"].as_i64().expect("id");
        assert_ne!(id, dep.id);
        ferry
            .wait_status(&spec, Duration::from_secs(60), "retried canary at 20% waiting", |s| {
                rollout_waits_for_promote(s, "2.0.0", 20.0)
                    && s.latest_deployment.as_ref().is_some_and(|d| d.id == id)
            })
            .await;
        let out = ferry.cli(&["promote", "shop", "--env", "production", "--full"]).await;
        assert_eq!(out.code, 0, "{out}");
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state, DeploymentState::Succeeded);
        ferry.assert_serves(&spec, "2.0.0").await;

        // `ferry rollback` mid-rollout: straight back to the serving version.
        let out = ferry.cli(&["deploy", "shop", "--env", "production", "--version", "3.0.0"]).await;
        assert_eq!(out.code, 0, "{out}");
        ferry
            .wait_status(&spec, Duration::from_secs(60), "3.0.0 at 20% waiting", |s| {
                rollout_waits_for_promote(s, "3.0.0", 20.0)
            })
            .await;
        let out = ferry.cli(&["rollback", "shop", "--env", "production", "--wait", "--timeout", "60s"]).await;
        assert_eq!(out.code, 0, "rollback mid-rollout:\n{out}\n{}", ferry.timelines(&spec, wall_ms()).await);
        assert!(out.stdout.contains("rolled back") && out.stdout.contains("2.0.0"), "{out}");
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("2.0.0"));
        assert_eq!(latest_state(&status), Some(DeploymentState::RolledBack));
        ferry.assert_serves(&spec, "2.0.0").await;

        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(&spec, origin).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switch() {
    blue_green(RuntimeKind::Process).await;
}

/// The same scenario with containers on a real Docker engine.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_switch_on_docker() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::demo_versions(&["1.0.0", "2.0.0"]);
    blue_green(RuntimeKind::Docker).await;
}

async fn blue_green(runtime: RuntimeKind) {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let _cleanup = docker::cleanup_for(runtime, &ferry);
        let mut spec = Spec::new("shop");
        spec.runtime = runtime;
        spec.replicas = 2;
        let preview_port = free_port();
        spec.strategy = format!(
            "{{ blue_green: {{ auto_promote: false, preview_listen: \"127.0.0.1:{preview_port}\", scale_down_delay: 2s }} }}"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 3);
        load.warm_up(50).await;
        let id = ferry.deploy_id_to("shop", "production", "2.0.0").await;
        let status = ferry
            .wait_status(&spec, Duration::from_secs(60), "green ready, awaiting promotion", |s| {
                s.rollout.as_ref().is_some_and(|r| {
                    r.strategy == "blue_green" && r.waiting_for.as_deref().is_some_and(|w| w.contains("ferry promote"))
                })
            })
            .await;
        let rollout = status.rollout.clone().expect("rollout");
        assert_eq!(rollout.canary_weight, 0.0, "blue serves everything before promotion");
        let green = active_replicas(&status).into_iter().filter(|r| r.version == "2.0.0").count();
        assert_eq!(green, 2, "green runs at full size before the switch: {:#?}", status.replicas);
        let blue_pids: Vec<u32> = status.replicas.iter().filter(|r| r.version == "1.0.0").filter_map(|r| r.pid).collect();
        assert_eq!(blue_pids.len(), 2);
        let blue_ids: Vec<String> = status.replicas.iter().filter(|r| r.version == "1.0.0").map(|r| r.id.clone()).collect();

        // The main listener still serves blue.
        let sample = sample_sequential(&spec.listener(), 50).await;
        assert_eq!(count_versions(&sample), [("1.0.0".to_string(), 50)].into(), "main listener is blue before the switch");

        // Green before promotion: on the preview listener and with the preview header.
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
        let preview = sample_sequential(&format!("127.0.0.1:{preview_port}"), 20).await;
        assert_eq!(
            count_versions(&preview),
            [("2.0.0".to_string(), 20)].into(),
            "the preview listener serves green before the switch"
        );
        for (value, expect) in [("1", "2.0.0"), ("true", "2.0.0"), ("0", "1.0.0"), ("false", "1.0.0")] {
            let resp = http
                .get(format!("http://{}/", spec.listener()))
                .header("X-Ferry-Preview", value)
                .send()
                .await
                .expect("GET with the preview header");
            let version = resp.headers().get("x-version").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            assert_eq!(version, expect, "X-Ferry-Preview: {value} on the main listener");
        }

        let out = ferry.cli(&["promote", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        let switch = ferry
            .wait_for_event(id, Duration::from_secs(30), |e| e.kind == "traffic" && e.message.contains("2.0.0 100%"))
            .await;
        // During the scale-down delay green serves everything: status says green is
        // current and blue only kept warm (unless this machine was too slow to ask in time).
        let during = ferry.status_api(&spec).await;
        match &during.rollout {
            Some(rollout) if rollout.all_traffic_on_new() => {
                assert_eq!(during.current_version.as_deref(), Some("2.0.0"), "green is current during the delay: {during:#?}");
                assert!(rollout.summary.contains("1.0.0 kept warm"), "status says blue is only kept warm: {}", rollout.summary);
            }
            _ => eprintln!("status was read after the scale-down delay: {:?}", during.rollout),
        }
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state, DeploymentState::Succeeded);
        let events = ferry.deployment(id).await.events;
        // Blue stays up during the scale-down delay: on the server's clock, each blue
        // replica starts draining only once the delay is over, however slow this machine.
        for blue in &blue_ids {
            let tail = format!("#{}: draining", blue.rsplit('.').next().unwrap_or(blue));
            let drained = events
                .iter()
                .find(|e| e.kind == "replica" && e.message.contains(&tail))
                .unwrap_or_else(|| panic!("blue replica {blue} is never drained: {events:#?}"));
            assert!(
                drained.at_ms - switch.at_ms >= 1900,
                "blue is kept warm for scale_down_delay: {blue} drained {} ms after the switch",
                drained.at_ms - switch.at_ms
            );
        }
        let retired = events
            .iter()
            .find(|e| e.message.contains("scale-down delay of 2s over"))
            .unwrap_or_else(|| panic!("no scale-down delay event: {events:#?}"));
        assert!(retired.at_ms - switch.at_ms >= 1900, "blue retired {} ms after the switch", retired.at_ms - switch.at_ms);
        let took = wait_dead(&blue_pids, Duration::from_secs(5), "blue after the scale-down delay").await;
        eprintln!("blue processes gone {took:?} after the deployment succeeded");
        ferry.assert_serves(&spec, "2.0.0").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        let timelines = ferry.timelines(&spec, origin).await;
        report.assert_no_failures(&timelines);
        assert_switch_is_monotonic(&report, "1.0.0", "2.0.0");
        assert_eq!(report.versions(), ["1.0.0".to_string(), "2.0.0".to_string()].into());
    })
    .await;
}
