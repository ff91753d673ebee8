//! The Docker runtime on a real engine: replicas as labelled, locked-down containers that
//! answer where the runtime says, survive the runtime (re-adopted by label, no duplicate),
//! restart when they crash, and leave nothing behind when stopped; one-off tasks in
//! containers with a timeout; root and missing images refused with clear errors.
//!
//! Skipped (saying so) without a Docker engine, unless `FERRY_REQUIRE_DOCKER=1` (set by
//! `.ci/run`, which installs and starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::docker::{self, Cleanup, DEMO_IMAGE, ROOT_IMAGE};
use common::{Ferry, Load, SERIAL, Spec, bounded};
use ferry_core::model::DeploymentState;
use ferry_runtime::docker::DockerRuntime;
use ferry_runtime::{
    ContainerSpec, HealthSpec, Instance, ReplicaSpec, Runtime, RuntimeError, RuntimeEvent, TaskEnd,
    TaskOutput, TaskSpec, free_port,
};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(60);

/// A runtime with its own owner label (tests never see each other's containers).
async fn runtime(test: &str) -> Option<(DockerRuntime, Cleanup)> {
    if !docker::engine_or_skip() {
        return None;
    }
    docker::images();
    let owner = format!("ferry-test-{test}-{}", std::process::id());
    let runtime = DockerRuntime::connect(Path::new(docker::SOCKET), &owner)
        .await
        .expect("connect to the engine");
    Some((runtime, Cleanup(owner)))
}

fn container(image: &str) -> ContainerSpec {
    ContainerSpec {
        image: image.into(),
        memory_bytes: Some(128 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        labels: BTreeMap::from([("ferry.deployment".to_string(), "7".to_string())]),
        ..ContainerSpec::default()
    }
}

fn replica(id: &str, port: u16) -> ReplicaSpec {
    ReplicaSpec {
        id: id.into(),
        app: "shop".into(),
        env: "staging".into(),
        service: "api".into(),
        version: "1.0.0".into(),
        argv: Vec::new(),
        cwd: None,
        env_vars: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        run_as: None,
        redact: Vec::new(),
        port,
        health: HealthSpec {
            path: "/health".into(),
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        },
        stop_timeout: Duration::from_secs(5),
        container: Some(container(DEMO_IMAGE)),
    }
}

async fn wait_event(
    rx: &mut broadcast::Receiver<RuntimeEvent>,
    what: &str,
    pred: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = rx.recv().await.expect("events");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event within {WAIT:?}"))
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let url = format!("http://{addr}{path}");
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_a_locked_down_labelled_container_that_answers_and_goes() {
    let Some((rt, cleanup)) = runtime("replica").await else {
        return;
    };
    let mut events = rt.subscribe();
    let port = free_port().unwrap();
    let instance = rt
        .start(replica("shop.staging.api.1.0.0.aaa", port))
        .await
        .unwrap();
    let Instance::Container(id) = &instance else {
        panic!("a container, got {instance:?}");
    };
    wait_event(
        &mut events,
        "Healthy",
        |e| matches!(e, RuntimeEvent::Healthy { id } if id == "shop.staging.api.1.0.0.aaa"),
    )
    .await;
    let endpoint = rt
        .endpoint("shop.staging.api.1.0.0.aaa")
        .expect("an endpoint");
    assert_eq!(get(endpoint, "/").await, "hello from api 1.0.0\n");

    // Labelled, found by label, exactly one.
    assert_eq!(
        docker::containers("ferry.owner", &cleanup.0),
        vec![id.clone()]
    );
    let labels = docker::inspect(id, "{{json .Config.Labels}}");
    let labels: BTreeMap<String, String> = serde_json::from_str(&labels).unwrap();
    for (key, value) in [
        ("ferry.app", "shop"),
        ("ferry.env", "staging"),
        ("ferry.service", "api"),
        ("ferry.version", "1.0.0"),
        ("ferry.replica", "shop.staging.api.1.0.0.aaa"),
        ("ferry.deployment", "7"),
    ] {
        assert_eq!(labels.get(key).map(String::as_str), Some(value), "{key}");
    }
    // Secure by default.
    assert_eq!(docker::inspect(id, "{{.Config.User}}"), "65534:65534");
    assert_eq!(
        docker::inspect(id, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    assert_eq!(
        docker::inspect(id, "{{json .HostConfig.CapDrop}}"),
        "[\"ALL\"]"
    );
    assert_eq!(
        docker::inspect(id, "{{json .HostConfig.SecurityOpt}}"),
        "[\"no-new-privileges\"]"
    );
    assert_eq!(docker::inspect(id, "{{.HostConfig.Memory}}"), "134217728");
    assert_eq!(docker::inspect(id, "{{.HostConfig.NanoCpus}}"), "500000000");
    let tmpfs = docker::inspect(id, "{{json .HostConfig.Tmpfs}}");
    assert!(tmpfs.contains("uid=65534"), "{tmpfs}");
    let env = docker::inspect(id, "{{json .Config.Env}}");
    for var in ["PORT=", "VERSION=1.0.0", "FERRY_SERVICE=api", "GREETING=hi"] {
        assert!(env.contains(var), "{var} in {env}");
    }

    // Logs through the Engine API.
    let mut logs = rt.logs("shop.staging.api.1.0.0.aaa", 10, false);
    let mut lines = Vec::new();
    while let Some(line) = logs.recv().await {
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.contains("listening on 127.0.0.1")),
        "{lines:?}"
    );

    rt.stop("shop.staging.api.1.0.0.aaa").await.unwrap();
    assert!(rt.status("shop.staging.api.1.0.0.aaa").is_none());
    assert!(
        docker::containers("ferry.owner", &cleanup.0).is_empty(),
        "a stopped replica leaves no container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runtime_re_adopts_by_label_without_a_duplicate() {
    let Some((rt, cleanup)) = runtime("adopt").await else {
        return;
    };
    let port = free_port().unwrap();
    let spec = replica("shop.staging.api.1.0.0.bbb", port);
    let mut events = rt.subscribe();
    rt.start(spec.clone()).await.unwrap();
    wait_event(&mut events, "Healthy", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    let before = docker::containers("ferry.owner", &cleanup.0);
    // The server goes away: supervision ends, the container keeps serving.
    drop(events);
    drop(rt);
    let endpoint = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(endpoint, "/").await, "hello from api 1.0.0\n");

    let again = DockerRuntime::connect(Path::new(docker::SOCKET), &cleanup.0)
        .await
        .unwrap();
    let mut events = again.subscribe();
    assert!(again.adopt(spec.clone(), None).await.unwrap(), "re-adopted");
    wait_event(&mut events, "Healthy", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    assert_eq!(
        docker::containers("ferry.owner", &cleanup.0),
        before,
        "the same container, no duplicate"
    );
    // Adopting twice is harmless; a replica with no container is not adopted.
    assert!(again.adopt(spec.clone(), None).await.unwrap());
    let ghost = replica("shop.staging.api.1.0.0.ccc", free_port().unwrap());
    assert!(!again.adopt(ghost, None).await.unwrap());

    // Discard: what can't be adopted goes, by label.
    drop(again);
    let third = DockerRuntime::connect(Path::new(docker::SOCKET), &cleanup.0)
        .await
        .unwrap();
    assert_eq!(third.discard("shop.staging.api.1.0.0.bbb", None).await, 1);
    assert!(docker::containers("ferry.owner", &cleanup.0).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_container_is_restarted() {
    let Some((rt, cleanup)) = runtime("crash").await else {
        return;
    };
    let port = free_port().unwrap();
    let mut spec = replica("shop.staging.api.1.0.0.ddd", port);
    spec.env_vars
        .insert("DEMO_CRASH_AFTER".to_string(), "1".to_string());
    let mut events = rt.subscribe();
    rt.start(spec).await.unwrap();
    wait_event(&mut events, "Healthy", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    let endpoint = rt.endpoint("shop.staging.api.1.0.0.ddd").unwrap();
    let _ = get(endpoint, "/").await;
    let exited = wait_event(&mut events, "Exited", |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    assert!(
        matches!(&exited, RuntimeEvent::Exited { reason, will_restart: true, .. } if reason == "exit code 1"),
        "{exited:?}"
    );
    wait_event(&mut events, "Started again", |e| {
        matches!(e, RuntimeEvent::Started { .. })
    })
    .await;
    wait_event(&mut events, "Healthy again", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    assert_eq!(rt.status("shop.staging.api.1.0.0.ddd").unwrap().restarts, 1);
    assert_eq!(docker::containers("ferry.owner", &cleanup.0).len(), 1);
    // Its last lines, from the engine: what the failure diagnosis shows.
    let crashed = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| l.contains("ferry-demo crashing after 1 requests"))
            .count()
    };
    let first = rt.status("shop.staging.api.1.0.0.ddd").unwrap().last_output;
    assert_eq!(crashed(&first), 1, "{first:?}");
    // The same container crashes again: only its latest run's lines.
    let _ = get(endpoint, "/").await;
    wait_event(&mut events, "Exited again", |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    let second = rt.status("shop.staging.api.1.0.0.ddd").unwrap().last_output;
    assert_eq!(crashed(&second), 1, "{second:?}");
    rt.stop_all().await;
    assert!(docker::containers("ferry.owner", &cleanup.0).is_empty());
}

fn task(name: &str, script: &str, timeout: Duration) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        app: "shop".into(),
        env: "staging".into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env_vars: BTreeMap::from([("VERSION".to_string(), "1.0.0".to_string())]),
        cwd: None,
        run_as: None,
        timeout,
        output: TaskOutput::Capture { max_bytes: 4096 },
        container: Some(container(DEMO_IMAGE)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_in_one_off_containers_with_a_timeout() {
    let Some((rt, cleanup)) = runtime("task").await else {
        return;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let outcome = rt
        .run_task(
            task(
                "hook-migrate-1",
                "echo migrating to $VERSION; echo warn >&2; : > /tmp/ok && echo tmp writable; exit 3",
                WAIT,
            ),
            Some(tx),
        )
        .await
        .unwrap();
    assert_eq!(outcome.end, TaskEnd::Exited(3));
    assert!(outcome.stdout.contains("migrating to 1.0.0"), "{outcome:?}");
    assert!(outcome.stdout.contains("tmp writable"), "{outcome:?}");
    assert_eq!(outcome.stderr, "warn\n");
    assert!(matches!(rx.await, Ok(Instance::Container(_))));

    // Into a file, like hooks.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hook.log");
    let mut to_file = task("hook-seed-2", "echo seeded s3cr3t-value", WAIT);
    to_file.output = TaskOutput::File {
        path: path.clone(),
        max_bytes: 4096,
        // Secret values never reach the file (the engine's stream is redacted as written).
        filter: Some(ferry_runtime::redact::LogFilter {
            exe: std::path::PathBuf::new(),
            values: vec!["s3cr3t-value".to_string()],
        }),
    };
    assert!(rt.run_task(to_file, None).await.unwrap().end.success());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "seeded [redacted]\n"
    );

    let started = std::time::Instant::now();
    let slow = rt
        .run_task(
            task(
                "hook-slow-3",
                "sleep 300 & sleep 300",
                Duration::from_secs(2),
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(slow.end, TaskEnd::TimedOut);
    assert!(started.elapsed() < WAIT);
    // The task containers are gone (removal is asynchronous: bounded wait).
    let deadline = std::time::Instant::now() + WAIT;
    while !docker::containers("ferry.owner", &cleanup.0).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "task containers left: {:?}",
            docker::containers("ferry.owner", &cleanup.0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_and_missing_images_are_refused_before_any_container() {
    let Some((rt, cleanup)) = runtime("refuse").await else {
        return;
    };
    let mut spec = replica("shop.staging.api.1.0.0.eee", free_port().unwrap());
    spec.container = Some(container(ROOT_IMAGE));
    let err = rt.start(spec.clone()).await.unwrap_err();
    assert!(matches!(err, RuntimeError::RootRefused { .. }), "{err:?}");
    assert!(err.to_string().contains("user:"), "{err}");
    // Explicitly allowed, it runs (as uid 0).
    spec.container = Some(ContainerSpec {
        allow_root: true,
        ..container(ROOT_IMAGE)
    });
    rt.start(spec).await.unwrap();
    rt.stop("shop.staging.api.1.0.0.eee").await.unwrap();

    let mut missing = replica("shop.staging.api.1.0.0.fff", free_port().unwrap());
    missing.container = Some(container("127.0.0.1:1/ferry-test/nope:9.9.9"));
    let err = rt.start(missing).await.unwrap_err();
    let RuntimeError::Pull { image, message } = &err else {
        panic!("a pull failure, got {err:?}");
    };
    assert_eq!(image, "127.0.0.1:1/ferry-test/nope:9.9.9");
    assert!(!message.is_empty(), "the registry's message: {err}");

    let mut no_image = replica("shop.staging.api.1.0.0.ggg", free_port().unwrap());
    no_image.container = None;
    let err = rt.start(no_image).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoImage { .. }), "{err:?}");
    assert!(docker::containers("ferry.owner", &cleanup.0).is_empty());
}

/// A `runtime: docker` environment end to end through the real server: a pre_deploy hook in
/// a one-off container of the new image, a rolling update of 3 containers under load with
/// no failed request, `ferry logs` from the engine, and teardown leaves no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_environment_rolls_out_containers_under_load() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::images();
    let _serial = SERIAL.lock().await;
    bounded(Duration::from_secs(240), async {
        let ferry = Ferry::start().await;
        let owner = ferry.data.display().to_string();
        let _cleanup = Cleanup(owner.clone());
        let spec = Spec::new("boxed");
        let yaml = format!(
            r#"app: boxed
services:
  web:
    image: ferry-test/demo:${{VERSION}}
    replicas: 3
    stop_timeout: 5s
    resources: {{ memory: 128Mi, cpus: 0.5 }}
    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: 30s }}
hooks:
  pre_deploy:
    - name: migrate
      run: ["/bin/sh", "-c", "echo migrating to $VERSION from ${{PREVIOUS_VERSION:-nothing}}"]
environments:
  production:
    listen: {listen}
    runtime: docker
"#,
            listen = spec.listener(),
        );
        let manifest = ferry.dir.path().join("ferry.yaml");
        std::fs::write(&manifest, yaml).unwrap();
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;
        let first = docker::containers("ferry.owner", &owner);
        assert_eq!(first.len(), 3, "three replica containers: {first:?}");

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        ferry.deploy_ok(&spec, "1.1.0").await;
        let done = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(&spec, origin).await);
        assert_eq!(
            report.versions_sent_after(done),
            ["1.1.0".to_string()].into(),
            "after the rollout every answer comes from 1.1.0"
        );
        // The old containers are gone, three new ones run, found by label.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let now = docker::containers("ferry.owner", &owner);
            let versions: Vec<String> = now
                .iter()
                .map(|id| docker::inspect(id, "{{index .Config.Labels \"ferry.version\"}}"))
                .collect();
            if now.len() == 3 && versions.iter().all(|v| v == "1.1.0") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected three 1.1.0 containers, got {versions:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The hook ran in a one-off container of the new image (its output captured).
        let out = ferry
            .cli(&["logs", "boxed", "--env", "production", "--hook", "migrate"])
            .await;
        assert!(
            out.stdout.contains("migrating to 1.1.0 from 1.0.0"),
            "hook output:\n{out}"
        );
        // Replica logs through the Engine API.
        let out = ferry.cli(&["logs", "boxed", "--env", "production"]).await;
        assert!(out.stdout.contains("listening on 127.0.0.1"), "{out}");

        drop(ferry);
        assert!(
            docker::containers("ferry.owner", &owner).is_empty(),
            "teardown leaves no container"
        );
    })
    .await;
}

/// A pre_deploy hook in a one-off container runs exactly once across a `kill -9` of the
/// server while it runs: the restarted server finds the container by its `ferry.task`
/// label, waits for it and records how it ended (its whole output), never starting it
/// again; the container is removed, teardown leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_container_runs_once_across_a_kill_9_of_the_server() {
    if !docker::engine_or_skip() {
        return;
    }
    docker::images();
    let _serial = SERIAL.lock().await;
    bounded(Duration::from_secs(180), async {
        let mut ferry = Ferry::start().await;
        let owner = ferry.data.display().to_string();
        let _cleanup = Cleanup(owner.clone());
        let spec = Spec::new("once");
        let yaml = format!(
            r#"app: once
services:
  web:
    image: ferry-test/demo:${{VERSION}}
    replicas: 1
    stop_timeout: 5s
    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: 30s }}
hooks:
  pre_deploy:
    - name: migrate
      run: ["/bin/sh", "-c", "echo migration $FERRY_HOOK_RUN_ID begins; sleep 4; echo migration ends"]
      timeout: 60s
environments:
  production:
    listen: {listen}
    runtime: docker
"#,
            listen = spec.listener(),
        );
        let manifest = ferry.dir.path().join("ferry.yaml");
        std::fs::write(&manifest, yaml).unwrap();
        ferry.apply(&manifest).await;
        let out = ferry
            .cli(&["deploy", "once", "--env", "production", "--version", "1.0.0", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let id = out.json()["id"].as_i64().expect("deployment id");
        ferry
            .wait_for_event(id, WAIT, |e| e.message.starts_with("migrate: started"))
            .await;
        // The hook's container runs (nothing else does yet): the server dies now.
        let deadline = std::time::Instant::now() + WAIT;
        while docker::containers("ferry.owner", &owner).is_empty() {
            assert!(std::time::Instant::now() < deadline, "no hook container");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ferry.kill9_server();
        ferry.start_server().await;

        let done = ferry.wait_terminal(id, Duration::from_secs(90)).await;
        let timeline = ferry.timeline(id).await;
        assert_eq!(done.state, DeploymentState::Succeeded, "{timeline}");
        assert_eq!(
            timeline.matches("migrate: started").count(),
            1,
            "started once:\n{timeline}"
        );
        assert!(!timeline.contains("interrupted"), "{timeline}");
        assert!(timeline.contains("migrate: succeeded"), "{timeline}");
        // Its whole output, once.
        let out = ferry
            .cli(&["logs", "once", "--env", "production", "--hook", "migrate"])
            .await;
        assert_eq!(out.stdout.matches("begins").count(), 1, "{out}");
        assert!(out.stdout.contains("migration ends"), "{out}");
        // Only the replica's container is left; teardown removes it.
        let left = docker::containers("ferry.owner", &owner);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            docker::inspect(&left[0], "{{index .Config.Labels \"ferry.task\"}}").is_empty(),
            "the hook's container is gone"
        );
        drop(ferry);
        assert!(
            docker::containers("ferry.owner", &owner).is_empty(),
            "teardown leaves no container"
        );
    })
    .await;
}
