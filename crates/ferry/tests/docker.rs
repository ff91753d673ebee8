//! The Docker runtime on a real engine: replicas as labelled, locked-down containers that
//! answer where the runtime says, survive the runtime (re-adopted by label, no duplicate),
//! restart when they crash, and leave nothing behind when stopped; one-off tasks in
//! containers with a timeout; root and missing images refused with clear errors. Then the
//! whole server on the engine ([`OnDocker`]): a rolling update under load, hooks and gate
//! command checks in one-off containers, a hook once across `kill -9`, a failed pull before
//! traffic moves, and `examples/docker` as written. (Canary, blue/green and `kill -9` at many
//! points on Docker: `progressive.rs` and `kill9.rs`.)
//!
//! Skipped (saying so) without a Docker engine, unless `FERRY_REQUIRE_DOCKER=1` (set by
//! `.ci/run`, which installs and starts one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
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
    wait_no_container_with(&cleanup.0, "ferry.task").await;
}

/// A server that dies between creating a task's container and starting it leaves it
/// `created`: the next server's takeover starts it (its only run) and records its output,
/// rather than reading "not running" as a run that ended (exit 0, no output, never ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_container_left_created_runs_once_when_taken_over() {
    let Some((rt, cleanup)) = runtime("created").await else {
        return;
    };
    let out = std::process::Command::new("docker")
        .args(["create", "--label"])
        .arg(format!("ferry.owner={}", cleanup.0))
        .args(["--label", "ferry.task=hook-migrate-9", DEMO_IMAGE])
        .args(["/bin/sh", "-c", "echo ran once; exit 4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "docker create: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(docker::inspect(&id, "{{.State.Status}}"), "created");

    let outcome = rt
        .adopt_task(
            "hook-migrate-9",
            WAIT,
            TaskOutput::Capture { max_bytes: 4096 },
        )
        .await
        .unwrap()
        .expect("the container is found");
    assert_eq!(outcome.end, TaskEnd::Exited(4), "{outcome:?}");
    assert_eq!(outcome.stdout, "ran once\n", "{outcome:?}");
    wait_no_container_with(&cleanup.0, "ferry.task").await;
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
    // A tag the engine cannot read (semver build metadata) fails at once, not retried.
    let mut unreadable = replica("shop.staging.api.1.0.0.hhh", free_port().unwrap());
    unreadable.container = Some(container("ferry-test/demo:1.0.0+b1"));
    let err = rt.start(unreadable).await.unwrap_err();
    let RuntimeError::Pull { message, .. } = &err else {
        panic!("an unreadable reference is a pull failure, got {err:?}");
    };
    assert!(message.contains("invalid reference format"), "{err}");

    let mut no_image = replica("shop.staging.api.1.0.0.ggg", free_port().unwrap());
    no_image.container = None;
    let err = rt.start(no_image).await.unwrap_err();
    assert!(matches!(err, RuntimeError::NoImage { .. }), "{err:?}");
    assert!(docker::containers("ferry.owner", &cleanup.0).is_empty());
}

/// A whole Ferry server whose app runs in a `runtime: docker` environment (`production`):
/// the tests of the server on the engine hold [`SERIAL`]; every container of this server
/// is removed when it drops, even when the test fails.
struct OnDocker {
    ferry: Ferry,
    spec: Spec,
    /// The server's `ferry.owner` label (its data directory).
    owner: String,
    _cleanup: Cleanup,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl OnDocker {
    /// A server (with `server_env`) and `app` on the demo image (`versions` of it tagged),
    /// `replicas` of service `web`, its manifest applied. `top` is YAML put before
    /// `environments:` (hooks), `env` lines of the environment (gates); the manifest's
    /// `image:` is [`docker::DEMO_REPOSITORY`]`:${VERSION}` unless `image` says otherwise.
    /// None (skipped) without an engine.
    async fn start(
        app: &str,
        versions: &[&str],
        server_env: &[(&str, &str)],
        manifest: Manifest<'_>,
    ) -> Option<OnDocker> {
        OnDocker::start_with(server_env, |ferry| {
            docker::demo_versions(versions);
            let mut spec = Spec::new(app);
            spec.runtime = ferry_core::manifest::RuntimeKind::Docker;
            spec.replicas = manifest.replicas;
            spec.start_timeout = "30s".into();
            spec.extra_service_yaml = manifest.top.to_string();
            let path = ferry.write_manifest(&spec, "ferry.yaml");
            let mut yaml = std::fs::read_to_string(&path).unwrap();
            yaml.push_str(manifest.env);
            if let Some(image) = manifest.image {
                let demo = format!("image: {}:${{VERSION}}", docker::DEMO_REPOSITORY);
                assert!(yaml.contains(&demo), "{yaml}");
                yaml = yaml.replace(&demo, &format!("image: {image}"));
            }
            (spec, yaml)
        })
        .await
    }

    /// A server (with `server_env`) and the manifest `manifest` writes (its images built
    /// first if needed), applied; `spec` names its app, environment and listener. None
    /// (skipped) without an engine.
    async fn start_with(
        server_env: &[(&str, &str)],
        manifest: impl FnOnce(&Ferry) -> (Spec, String),
    ) -> Option<OnDocker> {
        if !docker::engine_or_skip() {
            return None;
        }
        let serial = SERIAL.lock().await;
        let ferry = Ferry::start_with_env(server_env).await;
        let owner = ferry.data.display().to_string();
        let cleanup = Cleanup(owner.clone());
        let (spec, yaml) = manifest(&ferry);
        let path = ferry.dir.path().join("ferry.yaml");
        std::fs::write(&path, yaml).unwrap();
        ferry.apply(&path).await;
        Some(OnDocker {
            ferry,
            spec,
            owner,
            _cleanup: cleanup,
            _serial: serial,
        })
    }

    /// The replica containers of this server as the engine lists them (any state).
    fn replicas(&self) -> Vec<docker::Listed> {
        docker::replica_containers(&self.owner)
    }

    /// `ferry deploy` without waiting; the deployment's id.
    async fn deploy(&self, version: &str) -> i64 {
        self.ferry.deploy_id(&self.spec, version).await
    }

    /// `ferry abort` of the environment's deployment.
    async fn abort(&self) {
        let out = self
            .ferry
            .cli(&["abort", &self.spec.app, "--env", &self.spec.env])
            .await;
        assert_eq!(out.code, 0, "abort:\n{out}");
    }

    async fn set_secret(&self, name: &str, value: &str) {
        let out = self
            .ferry
            .cli_with_stdin(
                &[
                    "secrets",
                    "set",
                    &self.spec.app,
                    "--env",
                    &self.spec.env,
                    name,
                ],
                value,
            )
            .await;
        assert_eq!(out.code, 0, "secrets set {name}:\n{out}");
    }

    /// Stops the server as `drop` does (teardown) and checks the engine holds no container
    /// of it any more.
    fn teardown(self) {
        let OnDocker { ferry, owner, .. } = self;
        drop(ferry);
        assert_eq!(
            docker::containers("ferry.owner", &owner),
            Vec::<String>::new(),
            "teardown leaves no container"
        );
    }
}

/// What [`OnDocker::start`] puts into the manifest.
struct Manifest<'a> {
    replicas: u32,
    top: &'a str,
    env: &'a str,
    image: Option<&'a str>,
}

impl Default for Manifest<'_> {
    fn default() -> Self {
        Manifest {
            replicas: 1,
            top: "",
            env: "",
            image: None,
        }
    }
}

/// Polls until the engine lists no container of `owner` carrying `label` (any value):
/// removal of a finished one-off container may lag its end.
async fn wait_no_container_with(owner: &str, label: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let left: Vec<String> = docker::containers("ferry.owner", owner)
            .into_iter()
            .filter(|id| {
                !docker::inspect(id, &format!("{{{{index .Config.Labels {label:?}}}}}")).is_empty()
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "containers with {label} left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `runtime: docker` environment end to end through the real server: a pre_deploy hook in
/// a one-off container of the new image, a rolling update of 3 containers under load with
/// no failed request, `ferry logs` from the engine, locked-down replica containers whose
/// environment holds their variables and secrets and nothing else (no registry credentials,
/// nothing of the server's), and teardown leaves no container.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_environment_rolls_out_containers_under_load() {
    bounded(Duration::from_secs(240), async {
        let hooks = r#"hooks:
  pre_deploy:
    - name: migrate
      run: ["/bin/sh", "-c", "echo migrating to $VERSION from ${PREVIOUS_VERSION:-nothing} with ${DB_PASSWORD:+a} password, registry ${FERRY_REGISTRY_PASSWORD:-not} given"]
"#;
        let manifest = Manifest {
            replicas: 3,
            top: hooks,
            ..Manifest::default()
        };
        let server_env = [("FERRY_TEST_SERVER_ONLY", "server-only-value")];
        let Some(t) = OnDocker::start("boxed", &["1.0.0", "1.1.0"], &server_env, manifest).await
        else {
            return;
        };
        let (ferry, spec) = (&t.ferry, &t.spec);
        t.set_secret("DB_PASSWORD", "db-s3cr3t").await;
        t.set_secret("FERRY_REGISTRY_USERNAME", "robot").await;
        t.set_secret("FERRY_REGISTRY_PASSWORD", "registry-s3cr3t").await;
        ferry.deploy_ok(spec, "1.0.0").await;
        ferry.assert_serves(spec, "1.0.0").await;
        let first = t.replicas();
        assert_eq!(first.len(), 3, "three replica containers: {first:?}");

        // Each replica: locked down, and its environment is what the app needs.
        for container in &first {
            let id = &container.id;
            assert_eq!(docker::inspect(id, "{{.Config.User}}"), "65534:65534");
            assert_eq!(docker::inspect(id, "{{.HostConfig.ReadonlyRootfs}}"), "true");
            assert_eq!(docker::inspect(id, "{{json .HostConfig.CapDrop}}"), "[\"ALL\"]");
            assert_eq!(
                docker::inspect(id, "{{json .HostConfig.SecurityOpt}}"),
                "[\"no-new-privileges\"]"
            );
            assert_eq!(docker::inspect(id, "{{.HostConfig.Memory}}"), "134217728");
            let env: Vec<String> =
                serde_json::from_str(&docker::inspect(id, "{{json .Config.Env}}")).unwrap();
            let names: BTreeSet<&str> = env
                .iter()
                .map(|var| var.split_once('=').map_or(var.as_str(), |(name, _)| name))
                .collect();
            assert_eq!(
                names,
                BTreeSet::from([
                    "DB_PASSWORD",
                    "FERRY_APP",
                    "FERRY_ENV",
                    "FERRY_REPLICA_ID",
                    "FERRY_SERVICE",
                    "FERRY_TEST_MARK",
                    "HOST",
                    "PORT",
                    "VERSION",
                ]),
                "{env:?}"
            );
            assert!(env.contains(&"DB_PASSWORD=db-s3cr3t".to_string()), "{env:?}");
        }

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        ferry.deploy_ok(spec, "1.1.0").await;
        let done = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(spec, origin).await);
        assert_eq!(
            report.versions_sent_after(done),
            ["1.1.0".to_string()].into(),
            "after the rollout every answer comes from 1.1.0"
        );
        // The old containers are gone, three new ones run, found by label.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let versions: Vec<String> = t.replicas().into_iter().map(|c| c.version).collect();
            if versions == ["1.1.0"; 3] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "expected three 1.1.0 containers, got {versions:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The hook ran in a one-off container of the new image (its output captured), with
        // the secrets but not the registry's credentials (those are for the pull only).
        let out = ferry
            .cli(&["logs", "boxed", "--env", "production", "--hook", "migrate"])
            .await;
        assert!(
            out.stdout
                .contains("migrating to 1.1.0 from 1.0.0 with a password, registry not given"),
            "hook output:\n{out}"
        );
        // Replica logs through the Engine API.
        let out = ferry.cli(&["logs", "boxed", "--env", "production"]).await;
        assert!(out.stdout.contains("listening on 127.0.0.1"), "{out}");

        t.teardown();
    })
    .await;
}

/// A pre_deploy hook in a one-off container runs exactly once across a `kill -9` of the
/// server while it runs: the restarted server finds the container by its `ferry.task`
/// label, waits for it and records how it ended (its whole output), never starting it
/// again; the container is removed, teardown leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hook_container_runs_once_across_a_kill_9_of_the_server() {
    bounded(Duration::from_secs(180), async {
        let hooks = r#"hooks:
  pre_deploy:
    - name: migrate
      run: ["/bin/sh", "-c", "echo migration $FERRY_HOOK_RUN_ID begins; sleep 4; echo migration ends"]
      timeout: 60s
"#;
        let manifest = Manifest {
            top: hooks,
            ..Manifest::default()
        };
        let Some(mut t) = OnDocker::start("once", &["1.0.0"], &[], manifest).await else {
            return;
        };
        let id = t.deploy("1.0.0").await;
        t.ferry
            .wait_for_event(id, WAIT, |e| e.message.starts_with("migrate: started"))
            .await;
        // The hook's container runs (nothing else does yet): the server dies now.
        let deadline = std::time::Instant::now() + WAIT;
        while docker::containers("ferry.owner", &t.owner).is_empty() {
            assert!(std::time::Instant::now() < deadline, "no hook container");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        t.ferry.kill9_server();
        t.ferry.start_server().await;

        let ferry = &t.ferry;
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
        let left = docker::containers("ferry.owner", &t.owner);
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(
            docker::inspect(&left[0], "{{index .Config.Labels \"ferry.task\"}}").is_empty(),
            "the hook's container is gone"
        );
        t.teardown();
    })
    .await;
}

/// Gate command checks in a `runtime: docker` environment run in one-off containers of the
/// image of the version waiting at the gate, with its secrets (redacted from the record) and
/// without the registry's credentials: a passing check lets the deployment start, a failing
/// one holds it with its last output line in the gate record, a check that outlives its
/// `timeout` is stopped and its container removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gate_command_checks_run_in_one_off_containers() {
    bounded(Duration::from_secs(180), async {
        // `/ferry-demo` exists in the image only (not on this host).
        let gates = r#"    gates:
      checks:
        - name: smoke
          run: ["/bin/sh", "-c", "test -x /ferry-demo || exit 9; test -z \"$FERRY_REGISTRY_PASSWORD\" || exit 8; case $VERSION in 2.*) echo checking; echo not ready: $VERSION with $CHECK_TOKEN; exit 1;; esac"]
          interval: 300ms
          timeout: 30s
        - name: slow
          run: ["/bin/sh", "-c", "case $VERSION in 3.*) echo sleeping; sleep 300;; esac"]
          interval: 1h
          timeout: 3s
"#;
        let manifest = Manifest {
            env: gates,
            ..Manifest::default()
        };
        let Some(t) =
            OnDocker::start("gated", &["1.0.0", "2.0.0", "3.0.0"], &[], manifest).await
        else {
            return;
        };
        let ferry = &t.ferry;
        t.set_secret("CHECK_TOKEN", "check-s3cr3t").await;
        t.set_secret("FERRY_REGISTRY_USERNAME", "robot").await;
        t.set_secret("FERRY_REGISTRY_PASSWORD", "registry-s3cr3t").await;

        // Both pass: the deployment starts.
        let first = t.deploy("1.0.0").await;
        let done = ferry.wait_terminal(first, WAIT).await;
        let timeline = ferry.timeline(first).await;
        assert_eq!(done.state, DeploymentState::Succeeded, "{timeline}");
        for check in ["smoke", "slow"] {
            assert!(
                timeline.contains(&format!("gate checks:{check}: met (passed: exit 0)")),
                "{timeline}"
            );
        }

        // Failing: the deployment waits, the record holds the check's last line.
        let failing = t.deploy("2.0.0").await;
        let report = wait_gate(ferry, failing, "smoke", |row| row["state"] == "failed").await;
        let detail = row(&report, "smoke")["detail"].as_str().unwrap().to_string();
        assert_eq!(
            detail, "exit 1: not ready: 2.0.0 with [redacted] (re-run every 300ms)",
            "{report:#}"
        );
        assert_eq!(report["deployment"]["state"], "blocked", "{report:#}");
        assert_eq!(t.replicas().len(), 1, "nothing of 2.0.0 started");
        ferry.assert_serves(&t.spec, "1.0.0").await;
        t.abort().await;
        wait_no_container_with(&t.owner, "ferry.task").await;

        // Too slow: stopped at its timeout, its container removed, the deployment held.
        let slow = t.deploy("3.0.0").await;
        let report = wait_gate(ferry, slow, "slow", |row| row["state"] == "failed").await;
        let detail = row(&report, "slow")["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("/bin/sh did not finish within 3s"),
            "{report:#}"
        );
        assert_eq!(report["deployment"]["state"], "blocked", "{report:#}");
        // Only `smoke` (every 300 ms) may run on: `slow` runs again in an hour.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let slow_left = docker::containers("ferry.owner", &t.owner)
                .into_iter()
                .filter(|id| {
                    docker::inspect(id, "{{index .Config.Labels \"ferry.task\"}}")
                        .starts_with("check-slow-")
                })
                .count();
            if slow_left == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the timed-out check's container is still there"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        t.abort().await;
        wait_no_container_with(&t.owner, "ferry.task").await;
        t.teardown();
    })
    .await;
}

/// Polls `GET /v1/deployments/{id}/gates` until the row of check `name` satisfies `pred`;
/// the whole report.
async fn wait_gate(
    ferry: &Ferry,
    id: i64,
    name: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, report) = ferry.api_get(&format!("/v1/deployments/{id}/gates")).await;
        assert!(status.is_success(), "gates of {id}: {status} {report}");
        if report["gates"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["gate"] == format!("checks:{name}") && pred(r))
        }) {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "check {name} never got there: {report:#}\n{}",
            ferry.timeline(id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The row of check `name` in a gates report.
fn row<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["gates"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["gate"] == format!("checks:{name}")))
        .unwrap_or_else(|| panic!("no row checks:{name} in {report:#}"))
}

/// A registry on loopback that wants Basic credentials and has no image: without the
/// right credentials 401, with them `/v2/` answers and every manifest is unknown (404, with
/// a message of its own). Remembers each request's `Authorization`.
struct Registry {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

const REGISTRY_MESSAGE: &str = "manifest unknown: this registry has no such version";

impl Registry {
    async fn start(expected_authorization: String) -> Registry {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (log, expected) = (log.clone(), expected_authorization.clone());
                tokio::spawn(async move {
                    // One request per connection, its head bounded.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let Some(path) = head.split_whitespace().nth(1).map(str::to_string) else {
                        return; // not HTTP (the engine tries TLS first)
                    };
                    let authorization = head.lines().find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("authorization")
                            .then(|| value.trim().to_string())
                    });
                    let allowed = authorization.as_deref() == Some(expected.as_str());
                    log.lock().unwrap().push(authorization);
                    let (status, body) = match (allowed, path.as_str()) {
                        (false, _) => (
                            "401 Unauthorized",
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#.to_string(),
                        ),
                        (true, "/v2/") => ("200 OK", "{}".to_string()),
                        (true, _) => (
                            "404 Not Found",
                            format!(r#"{{"errors":[{{"code":"MANIFEST_UNKNOWN","message":"{REGISTRY_MESSAGE}","detail":null}}]}}"#),
                        ),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         docker-distribution-api-version: registry/2.0\r\n\
                         www-authenticate: Basic realm=\"ferry-test\"\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Registry { port, seen }
    }
}

/// An image pulled from a registry with the environment's credentials (its secrets
/// `FERRY_REGISTRY_USERNAME`/`_PASSWORD`), which the registry does not have: the deployment
/// fails before any traffic moves, with the registry's own message on its timeline; the old
/// containers keep serving every request and no container of the new version is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_failure_fails_the_deployment_before_traffic_moves() {
    use base64::Engine as _;
    bounded(Duration::from_secs(180), async {
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("robot:registry-s3cr3t")
        );
        let registry = Registry::start(authorization.clone()).await;
        // 1.0.0 is there locally; 2.0.0 must be pulled.
        let image = format!("127.0.0.1:{}/ferry-test/demo", registry.port);
        if docker::engine_or_skip() {
            docker::images();
            docker::tag(docker::DEMO_IMAGE, &format!("{image}:1.0.0"));
        }
        let templated = format!("{image}:${{VERSION}}");
        let manifest = Manifest {
            replicas: 2,
            image: Some(&templated),
            ..Manifest::default()
        };
        let Some(t) = OnDocker::start("pulled", &[], &[], manifest).await else {
            return;
        };
        let (ferry, spec) = (&t.ferry, &t.spec);
        t.set_secret("FERRY_REGISTRY_USERNAME", "robot").await;
        t.set_secret("FERRY_REGISTRY_PASSWORD", "registry-s3cr3t")
            .await;
        ferry.deploy_ok(spec, "1.0.0").await;
        assert!(
            registry.seen.lock().unwrap().is_empty(),
            "a local image is not pulled"
        );
        let load = Load::start(&spec.listener(), 2);
        load.warm_up(50).await;
        let id = t.deploy("2.0.0").await;
        let done = ferry.wait_terminal(id, WAIT).await;
        let timeline = ferry.timeline(id).await;
        assert_eq!(done.state, DeploymentState::RolledBack, "{timeline}");
        assert!(
            timeline.contains(&format!("pulling image {image}:2.0.0 failed"))
                && timeline.contains(REGISTRY_MESSAGE),
            "the registry's message:\n{timeline}"
        );
        assert!(!timeline.contains("registry-s3cr3t"), "{timeline}");
        assert!(
            registry.seen.lock().unwrap().contains(&Some(authorization)),
            "the credentials reached the registry: {:?}",
            registry.seen.lock().unwrap()
        );
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(spec, origin).await);
        assert_eq!(report.versions(), ["1.0.0".to_string()].into());
        let versions: Vec<String> = t.replicas().into_iter().map(|c| c.version).collect();
        assert_eq!(versions, ["1.0.0"; 2], "only the old containers");
        t.teardown();
        docker::untag(&format!("{image}:1.0.0"));
    })
    .await;
}

/// `examples/docker/ferry.yaml` as written (only its listen addresses moved to free ports)
/// runs an image built as the README's "building an image Ferry can run" says: the server at
/// `/app/server` listening on `$PORT`, its migration tool at `/app/migrate`, `USER
/// 10001:10001`, nothing written outside `/tmp`. Staging deploys 3 replicas behind the
/// proxy, the pre_deploy hook runs once in a one-off container, teardown leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_docker_example_runs_as_written() {
    bounded(Duration::from_secs(180), async {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/docker/ferry.yaml");
        let example = std::fs::read_to_string(&example).unwrap();
        let Some(t) = OnDocker::start_with(&[], |_| {
            docker::example_image("registry.example.com/shop/web:1.0.0");
            let mut spec = Spec::new("shop");
            spec.env = "staging".into();
            spec.replicas = 3;
            let mut yaml = example.clone();
            for (written, port) in [
                ("127.0.0.1:8080", spec.listen_port),
                ("127.0.0.1:8081", free_port().unwrap()),
            ] {
                assert!(
                    yaml.contains(&format!("listen: {written}")),
                    "{written} in the example"
                );
                yaml = yaml.replace(
                    &format!("listen: {written}"),
                    &format!("listen: 127.0.0.1:{port}"),
                );
            }
            (spec, yaml)
        })
        .await
        else {
            return;
        };
        let (ferry, spec) = (&t.ferry, &t.spec);
        ferry.deploy_ok(spec, "1.0.0").await;
        ferry.assert_serves(spec, "1.0.0").await;
        let replicas = t.replicas();
        assert_eq!(replicas.len(), 3, "{replicas:?}");
        for replica in &replicas {
            assert_eq!(
                docker::inspect(&replica.id, "{{.Config.User}}"),
                "10001:10001"
            );
        }
        let out = ferry
            .cli(&["logs", "shop", "--env", "staging", "--hook", "migrate"])
            .await;
        assert_eq!(
            out.stdout.matches("migrated to 1.0.0: up").count(),
            1,
            "{out}"
        );
        t.teardown();
    })
    .await;
}
