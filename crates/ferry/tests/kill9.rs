//! Crash safety of progressive rollouts: the server is killed with SIGKILL at many points of
//! canary and blue/green rollouts (each time right after the Nth event of the deployment's
//! timeline), restarted on the same data directory, and every rollout must converge to the
//! same end: succeeded, 100% of the new version, no orphan process, no step applied twice,
//! and zero failed client requests through the proxy, which keeps serving meanwhile. The same
//! on a real Docker engine (rolling, canary and blue/green), where "no orphan, no duplicate" is counted
//! through the engine by label, and teardown must leave no container.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{
    Ferry, Load, RuntimeKind, SERIAL, Spec, active_replicas, bounded, docker, free_port, is_alive,
    wall_ms,
};
use ferry_core::api::EventView;
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_canary_at_many_points() {
    let strategy = "{ canary: { steps: [{ weight: 20 }, { pause: 1s }, { weight: 50 }, { pause: 1s }], \
                    analysis: { interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 0.05, min_requests: 20 }] } } }";
    kill9_many_points(
        RuntimeKind::Process,
        "canary",
        strategy.to_string(),
        &[0, 100, 250, 500, 800],
        20,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_blue_green_at_many_points() {
    let strategy = format!(
        "{{ blue_green: {{ auto_promote: false, auto_promote_after: 1s, scale_down_delay: 1s, preview_listen: \"127.0.0.1:{}\" }} }}",
        free_port()
    );
    kill9_many_points(
        RuntimeKind::Process,
        "blue/green",
        strategy,
        &[0, 100, 250, 500, 800],
        20,
    )
    .await;
}

/// Containers on a real Docker engine: the server is killed mid rolling update; the restarted
/// server re-adopts the containers by label (no orphan, no duplicate, counted through the
/// engine) and finishes the rollout; teardown leaves no container.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_rolling_update_on_docker() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::demo_versions(&["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]);
    let strategy = "{ rolling: { max_surge: 1, max_unavailable: 0 } }".to_string();
    kill9_many_points(
        RuntimeKind::Docker,
        "rolling on docker",
        strategy,
        &[0, 150, 300, 600],
        6,
    )
    .await;
}

/// The same mid canary (weights, pauses, analysis), on Docker.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_canary_on_docker() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::demo_versions(&["1.0.0", "1.1.0", "1.2.0"]);
    let strategy = "{ canary: { steps: [{ weight: 20 }, { pause: 1s }, { weight: 50 }, { pause: 1s }], \
                    analysis: { interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 0.05, min_requests: 20 }] } } }";
    kill9_many_points(
        RuntimeKind::Docker,
        "canary on docker",
        strategy.to_string(),
        &[0, 300],
        6,
    )
    .await;
}

/// The same mid blue/green (preview, promotion after a bake, scale-down delay), on Docker.
#[cfg(feature = "docker")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_blue_green_on_docker() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::demo_versions(&["1.0.0", "1.1.0", "1.2.0"]);
    let strategy = format!(
        "{{ blue_green: {{ auto_promote: false, auto_promote_after: 1s, scale_down_delay: 1s, preview_listen: \"127.0.0.1:{}\" }} }}",
        free_port()
    );
    kill9_many_points(
        RuntimeKind::Docker,
        "blue/green on docker",
        strategy,
        &[0, 300],
        6,
    )
    .await;
}

/// One kill: which rollout, after its how-manyth transition (`state` event) and how long
/// after it, and the transition it followed.
struct KillPoint {
    run: usize,
    transition: usize,
    delay_ms: u64,
    after: String,
}

/// One rollout per entry of `delays_ms`; each rollout is killed after **every** transition
/// of its deployment (each `state` event on the timeline: persisted progress of the state
/// machine), that many milliseconds after it. Restarts add no transition of their own, so
/// every kill is followed by progress and the rollout ends.
async fn kill9_many_points(
    runtime: RuntimeKind,
    name: &str,
    strategy: String,
    delays_ms: &[u64],
    min_points: usize,
) {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let started = Instant::now();
        let mut ferry = Ferry::start().await;
        let _cleanup = docker::cleanup_for(runtime, &ferry);
        let mut spec = Spec::new("shop");
        spec.runtime = runtime;
        spec.replicas = 2;
        spec.strategy = strategy;
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 2);
        load.warm_up(50).await;
        let mut kills: Vec<KillPoint> = Vec::new();
        for (run, &delay_ms) in delays_ms.iter().enumerate() {
            let from = format!("1.{run}.0");
            let to = format!("1.{}.0", run + 1);
            let run_started = Instant::now();
            let id = ferry.deploy_id_to("shop", "production", &to).await;

            let mut seen: Vec<EventView> = Vec::new();
            loop {
                let so_far = transitions(&seen);
                if let Reached::Terminal = wait_for_transitions(&ferry, id, &mut seen, so_far + 1).await {
                    break;
                }
                let transition = transitions(&seen);
                let after = seen
                    .iter()
                    .rev()
                    .find(|e| e.kind == "state")
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                ferry.kill9_server();
                kills.push(KillPoint { run, transition, delay_ms, after });
                // The proxy serves on its own while the server is down.
                let before = load.count();
                let down = Instant::now();
                while load.count() < before + 10 {
                    assert!(down.elapsed() < Duration::from_secs(10), "the proxy stopped serving while the server was down");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                ferry.start_server().await;
            }

            let done = ferry.wait_terminal(id, Duration::from_secs(90)).await;
            let timeline = ferry.timelines(&spec, load.started_wall_ms).await;
            assert_eq!(
                done.state,
                DeploymentState::Succeeded,
                "{name} run {run} ({from} → {to}) must converge to succeeded after kills at {:?}:\n{timeline}",
                kills.iter().filter(|k| k.run == run).map(|k| k.transition).collect::<Vec<_>>()
            );
            assert_no_repeated_steps(&ferry.deployment(id).await.events, &timeline);
            assert_converged(&ferry, &spec, &to).await;
            eprintln!(
                "{name} run {run}: {from} → {to} succeeded in {:.1}s with {} kill(s)",
                run_started.elapsed().as_secs_f64(),
                kills.iter().filter(|k| k.run == run).count()
            );
        }
        ferry.assert_serves(&spec, &format!("1.{}.0", delays_ms.len())).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(&spec, origin).await);

        let points: BTreeSet<(u64, usize)> = kills.iter().map(|k| (k.delay_ms, k.transition)).collect();
        eprintln!(
            "{name}: {} kills at {} distinct points, {} requests through the proxy, none failed, {:.1}s:",
            kills.len(),
            points.len(),
            report.total(),
            started.elapsed().as_secs_f64()
        );
        for k in &kills {
            eprintln!("  run {} +{:>3}ms after transition {:>2}: {}", k.run, k.delay_ms, k.transition, k.after);
        }
        assert!(
            points.len() >= min_points,
            "{name}: only {} distinct kill points",
            points.len()
        );
        if runtime == RuntimeKind::Docker {
            let owner = ferry.data.display().to_string();
            drop(ferry);
            assert_eq!(
                docker::containers("ferry.owner", &owner),
                Vec::<String>::new(),
                "{name}: teardown leaves no container"
            );
        }
    })
    .await;
}

enum Reached {
    Count,
    Terminal,
}

fn transitions(events: &[EventView]) -> usize {
    events.iter().filter(|e| e.kind == "state").count()
}

/// Long-polls the timeline of `id` until it holds `count` transitions (or the deployment
/// ended and every event was read).
async fn wait_for_transitions(
    ferry: &Ferry,
    id: i64,
    seen: &mut Vec<EventView>,
    count: usize,
) -> Reached {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let after = seen.last().map(|e| e.seq).unwrap_or(0);
        let (status, body) = ferry
            .api_get(&format!(
                "/v1/deployments/{id}/events?after={after}&wait_ms=500"
            ))
            .await;
        assert!(status.is_success(), "events of {id}: {status} {body}");
        let events: Vec<EventView> = serde_json::from_value(body).expect("events");
        let got = !events.is_empty();
        seen.extend(events);
        if transitions(seen) >= count {
            return Reached::Count;
        }
        if !got && ferry.deployment(id).await.deployment.state.is_terminal() {
            return Reached::Terminal;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id}: no new transition within 60s"
        );
    }
}

/// Each step's effect is recorded once: a crash between persisting and acting must not
/// apply (or announce) a weight change or the end of a pause twice.
fn assert_no_repeated_steps(events: &[EventView], timeline: &str) {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == "state") {
        for part in e.message.split(';') {
            let part = part.trim();
            let step = part
                .find("weight ")
                .map(|i| &part[i..])
                .filter(|p| p.contains('→'))
                .or_else(|| part.contains(" over").then_some(part));
            if let Some(step) = step {
                *counts.entry(step.to_string()).or_insert(0) += 1;
            }
        }
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "steps applied more than once: {repeated:?}\n{timeline}"
    );
}

/// After success: exactly the listed replicas run (no orphan, no duplicate), all of `version`:
/// processes by the pids each replica recorded, containers as the engine lists them by label.
async fn assert_converged(ferry: &Ferry, spec: &Spec, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = ferry.status_api(spec).await;
        let active = active_replicas(&status);
        // Sorted lists, not sets: a duplicate container must show.
        let (mut listed, mut alive): (Vec<String>, Vec<String>) = match spec.runtime {
            RuntimeKind::Process => (
                active
                    .iter()
                    .filter_map(|r| r.pid)
                    .map(|p| p.to_string())
                    .collect(),
                ferry
                    .recorded_replica_pids()
                    .into_iter()
                    .filter(|pid| is_alive(*pid))
                    .map(|p| p.to_string())
                    .collect(),
            ),
            RuntimeKind::Docker => {
                let containers = docker::replica_containers(&ferry.data.display().to_string());
                // Every container (in any state) is a listed replica of `version`, one each.
                let all: Vec<String> = containers
                    .iter()
                    .map(|c| format!("{} {} {}", c.replica, c.version, c.state))
                    .collect();
                let listed = active
                    .iter()
                    .map(|r| format!("{} {version} running", r.id))
                    .collect();
                (listed, all)
            }
            RuntimeKind::Kubernetes => panic!("no Kubernetes cluster can run in these tests"),
        };
        listed.sort();
        alive.sort();
        let settled = alive == listed
            && active.len() == spec.replicas as usize
            && active.iter().all(|r| r.version == version)
            && status.current_version.as_deref() == Some(version);
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "live replicas {alive:?} must be exactly the listed ones {listed:?}, {} replicas of {version}; status: {:#?}\n{}\n{}",
            spec.replicas,
            status,
            ferry.timelines(spec, wall_ms()).await,
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
