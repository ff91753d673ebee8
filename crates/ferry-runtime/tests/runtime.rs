//! Real-process tests of the process runtime (python3 and sh as replicas).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::model::ReplicaState;
use ferry_runtime::{
    HealthSpec, Instance, ProcessIdentity, ProcessRuntime, ReplicaSpec, RuntimeError, RuntimeEvent,
    free_port, kill_process_group, process_identity,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

/// Kills the process groups it saw when the test ends, even when the test fails.
#[derive(Default)]
struct Reaper(Mutex<Vec<u32>>);

impl Reaper {
    fn watch(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().drain(..) {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

fn spec(id: &str, argv: &[&str], port: u16) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_string(),
        app: "shop".to_string(),
        env: "staging".to_string(),
        service: "api".to_string(),
        version: "1.2.3".to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        env_vars: BTreeMap::new(),
        run_as: None,
        redact: Vec::new(),
        port,
        health: HealthSpec {
            path: "/".to_string(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1,
            unhealthy_threshold: 2,
        },
        stop_timeout: Duration::from_secs(5),
        container: None,
    }
}

fn python_server(id: &str) -> ReplicaSpec {
    spec(
        id,
        &[
            "python3",
            "-m",
            "http.server",
            "${PORT}",
            "--bind",
            "127.0.0.1",
        ],
        free_port().unwrap(),
    )
}

/// A shell replica without health checks (healthy once running).
fn shell(id: &str, script: &str) -> ReplicaSpec {
    let mut spec = spec(id, &["sh", "-c", script], free_port().unwrap());
    spec.health.path = String::new();
    spec
}

async fn wait_event(
    rx: &mut broadcast::Receiver<RuntimeEvent>,
    what: &str,
    mut pred: impl FnMut(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(Ok(event)) if pred(&event) => return event,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event channel closed: {e}"),
        }
    }
}

async fn wait_log(path: &Path, what: &str, mut pred: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} in {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn runtime(dir: &Path) -> ProcessRuntime {
    ProcessRuntime::new(dir.to_path_buf(), 10 * 1024 * 1024)
}

/// No live (non-zombie) process is left in the process group `pgid`.
fn group_gone(pgid: u32) -> bool {
    let entries = std::fs::read_dir("/proc").unwrap();
    !entries.filter_map(Result::ok).any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some(close) = stat.rfind(')') else {
            return false;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_becomes_healthy_then_stop_removes_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let mut rx = rt.subscribe();
    let spec = python_server("web-1");
    let port = spec.port;
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    assert_eq!(process_identity(identity.pid), Some(identity));
    let started = wait_event(&mut rx, "Started", |e| {
        matches!(e, RuntimeEvent::Started { .. })
    })
    .await;
    assert_eq!(
        started,
        RuntimeEvent::Started {
            id: "web-1".into(),
            instance: Instance::Process(identity)
        }
    );
    wait_event(
        &mut rx,
        "Healthy",
        |e| matches!(e, RuntimeEvent::Healthy { id } if id == "web-1"),
    )
    .await;
    let status = rt.status("web-1").unwrap();
    assert_eq!(status.state, ReplicaState::Healthy);
    assert_eq!(status.pid, Some(identity.pid));
    assert!(status.ever_healthy);
    assert_eq!(rt.list().len(), 1);
    let answer = reqwest::get(format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert!(answer.status().is_success());

    rt.stop("web-1").await.unwrap();
    assert_eq!(process_identity(identity.pid), None);
    assert!(group_gone(identity.pid));
    wait_event(&mut rx, "Stopped", |e| {
        matches!(e, RuntimeEvent::Stopped { .. })
    })
    .await;
    assert!(rt.status("web-1").is_none());
    // Idempotent.
    rt.stop("web-1").await.unwrap();
    rt.stop("never-existed").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_sees_env_vars_argv_substitution_and_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let mut spec = shell(
        "env-1",
        r#"echo "env $PORT $VERSION $FERRY_APP $FERRY_ENV $FERRY_SERVICE $EXTRA"; echo "argv $1 $2"; echo "cwd $(pwd)"; echo "err" >&2; exec sleep 30"#,
    );
    spec.argv
        .extend(["sh".into(), "p=${PORT}".into(), "v=${VERSION}".into()]);
    spec.env_vars.insert("EXTRA".into(), "extra-value".into());
    spec.cwd = Some(workdir.path().to_path_buf());
    let port = spec.port;
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    let log = wait_log(&rt.log_path("env-1"), "cwd line", |t| {
        t.contains("cwd ") && t.contains("err")
    })
    .await;
    assert!(
        log.contains(&format!("env {port} 1.2.3 shop staging api extra-value")),
        "{log}"
    );
    assert!(log.contains(&format!("argv p={port} v=1.2.3")), "{log}");
    let cwd = workdir.path().canonicalize().unwrap();
    assert!(log.contains(&format!("cwd {}", cwd.display())), "{log}");
    assert!(
        log.contains(&format!("--- started pid {} at ", identity.pid)),
        "{log}"
    );
    assert_eq!(rt.log_path("env-1"), dir.path().join("env-1.log"));
    rt.stop("env-1").await.unwrap();
    assert_eq!(process_identity(identity.pid), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_gets_a_clean_environment_and_a_private_log() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    // `cargo test` gives this process CARGO_* variables; none may reach the replica.
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let mut spec = shell("clean-1", "env; echo END-OF-ENV; exec sleep 30");
    spec.env_vars.insert("GIVEN".into(), "yes".into());
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    let log = wait_log(&rt.log_path("clean-1"), "the environment", |t| {
        t.contains("END-OF-ENV")
    })
    .await;
    let names: Vec<&str> = log
        .lines()
        .filter(|l| !l.starts_with("---") && *l != "END-OF-ENV")
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let allowed = [
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "HOME",
        "USER",
        "LOGNAME",
        "PORT",
        "VERSION",
        "FERRY_APP",
        "FERRY_ENV",
        "FERRY_SERVICE",
        // The runtime's own marker (how a replica whose pid was never recorded is found).
        "FERRY_REPLICA_ID",
        "GIVEN",
        "PWD",
        "SHLVL",
        "_",
    ];
    assert!(names.contains(&"GIVEN") && names.contains(&"PATH"), "{log}");
    for name in names {
        assert!(
            allowed.contains(&name),
            "{name} leaked into the replica:\n{log}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rt.log_path("clean-1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "replica logs are private");
    rt.stop("clean-1").await.unwrap();
}

/// Root (as in CI) starts a replica as `nobody`: it cannot read a root-only file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_runs_as_the_user_it_is_given() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("admin.token");
    std::fs::write(&private, "top-secret-token").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let nobody = ferry_runtime::isolation::RunAs::lookup("nobody").unwrap();
    let mut spec = shell(
        "nobody-1",
        &format!(
            "echo \"uid $(id -u) gid $(id -g) home $HOME\"; cat '{}' || echo DENIED; exec sleep 30",
            private.display()
        ),
    );
    spec.run_as = Some(nobody.clone());
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    let log = wait_log(&rt.log_path("nobody-1"), "the uid line", |t| {
        t.contains("DENIED") || t.contains("top-secret")
    })
    .await;
    assert!(
        log.contains(&format!(
            "uid {} gid {} home {}",
            nobody.uid,
            nobody.gid,
            nobody.home.display()
        )),
        "{log}"
    );
    assert!(!log.contains("top-secret-token"), "{log}");
    rt.stop("nobody-1").await.unwrap();

    // A working directory the user may not enter: a clear error that says why.
    let closed = dir.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut spec = shell("nobody-2", "true");
    spec.run_as = Some(nobody);
    spec.cwd = Some(closed);
    let err = rt.start(spec).await.unwrap_err().to_string();
    assert!(err.contains("runs as nobody"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_is_restarted_with_a_new_pid() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let mut rx = rt.subscribe();
    let first = rt
        .start(shell("crash-1", "echo up; sleep 0.3; exit 3"))
        .await
        .unwrap();
    reaper.watch(first.pid);
    let exited = wait_event(&mut rx, "Exited", |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    assert_eq!(
        exited,
        RuntimeEvent::Exited {
            id: "crash-1".into(),
            reason: "exit code 3".into(),
            will_restart: true
        }
    );
    let second = match wait_event(
        &mut rx,
        "restart",
        |e| matches!(e, RuntimeEvent::Started { instance, .. } if instance.process() != Some(first)),
    )
    .await
    {
        RuntimeEvent::Started {
            instance: Instance::Process(identity),
            ..
        } => identity,
        other => panic!("{other:?}"),
    };
    reaper.watch(second.pid);
    assert_ne!(second.pid, first.pid);
    let status = rt.status("crash-1").unwrap();
    assert!(status.restarts >= 1, "{status:?}");
    assert_eq!(status.last_exit.as_deref(), Some("exit code 3"));
    let restarts = status.restarts;
    rt.stop("crash-1").await.unwrap();
    let starts = std::fs::read_to_string(rt.log_path("crash-1"))
        .unwrap()
        .matches("--- started pid")
        .count();
    assert!(starts >= 2, "started, then restarted");
    // No restart after stop. A witness with the same script goes through one more restart
    // than crash-1 had (so through every backoff crash-1 could still be waiting out), on
    // this machine at its current load; meanwhile crash-1 must not start again.
    let witness = rt
        .start(shell("crash-2", "echo up; sleep 0.3; exit 3"))
        .await
        .unwrap();
    reaper.watch(witness.pid);
    let deadline = Instant::now() + WAIT;
    while rt.status("crash-2").map(|s| s.restarts).unwrap_or(0) <= restarts {
        assert!(Instant::now() < deadline, "the witness never restarted");
        if let Ok(RuntimeEvent::Started { id, .. }) = rx.try_recv() {
            assert_ne!(id, "crash-1", "crash-1 restarted after stop");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while let Ok(event) = rx.try_recv() {
        if let RuntimeEvent::Started { id, .. } = event {
            assert_ne!(id, "crash-1", "crash-1 restarted after stop");
        }
    }
    assert!(rt.status("crash-1").is_none());
    let log = std::fs::read_to_string(rt.log_path("crash-1")).unwrap();
    assert_eq!(log.matches("--- started pid").count(), starts, "{log}");
    rt.stop("crash-2").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sigkills_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let mut spec = shell(
        "stubborn-1",
        r#"trap "" TERM; echo ready; while true; do sleep 0.1; done"#,
    );
    spec.stop_timeout = Duration::from_millis(500);
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    wait_log(&rt.log_path("stubborn-1"), "ready", |t| t.contains("ready")).await;
    let began = Instant::now();
    rt.stop("stubborn-1").await.unwrap();
    assert!(began.elapsed() >= Duration::from_millis(450));
    assert_eq!(process_identity(identity.pid), None);
    assert!(group_gone(identity.pid), "sleep children left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_runtime_drop_and_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let spec = python_server("adopt-1");
    let port = spec.port;
    let identity = {
        let rt1 = runtime(dir.path());
        let mut rx = rt1.subscribe();
        let identity = rt1.start(spec.clone()).await.unwrap();
        reaper.watch(identity.pid);
        wait_event(&mut rx, "Healthy", |e| {
            matches!(e, RuntimeEvent::Healthy { .. })
        })
        .await;
        identity
        // rt1 dropped here without stop: a simulated server crash.
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(process_identity(identity.pid), Some(identity));

    let rt2 = runtime(dir.path());
    let mut rx = rt2.subscribe();
    assert!(rt2.adopt(spec.clone(), identity).await.unwrap());
    // Adopting again with the same identity is idempotent.
    assert!(rt2.adopt(spec.clone(), identity).await.unwrap());
    wait_event(&mut rx, "Healthy after adopt", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    assert_eq!(rt2.status("adopt-1").unwrap().pid, Some(identity.pid));
    assert_eq!(rt2.identity("adopt-1"), Some(identity));

    let began = Instant::now();
    rt2.stop("adopt-1").await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(4));
    assert_eq!(process_identity(identity.pid), None);
    // Nobody restarted it (neither rt2 nor the dropped rt1): by the time a witness that
    // crashes has been restarted here, a restart of adopt-1 would have happened too.
    let witness = rt2
        .start(shell("adopt-witness", "sleep 0.3; exit 3"))
        .await
        .unwrap();
    reaper.watch(witness.pid);
    let deadline = Instant::now() + WAIT;
    while rt2.status("adopt-witness").map(|s| s.restarts).unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "the witness never restarted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt2.stop("adopt-witness").await.unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something still listens on {port}"
    );
    let log = std::fs::read_to_string(rt2.log_path("adopt-1")).unwrap();
    assert!(log.contains(&format!("--- adopted pid {}", identity.pid)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopted_process_that_exits_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    // Started outside any runtime, like a replica of a crashed server.
    let mut outside = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut outside, 0);
    let mut outside = outside.arg("30").spawn().unwrap();
    reaper.watch(outside.id());
    let identity = process_identity(outside.id()).unwrap();
    let rt = runtime(dir.path());
    let mut rx = rt.subscribe();
    let spec = shell("adopt-2", "exec sleep 30");
    assert!(rt.adopt(spec, identity).await.unwrap());
    nix::sys::signal::kill(Pid::from_raw(identity.pid as i32), Signal::SIGKILL).unwrap();
    outside.wait().unwrap();
    let exited = wait_event(&mut rx, "Exited", |e| {
        matches!(e, RuntimeEvent::Exited { .. })
    })
    .await;
    assert!(matches!(
        exited,
        RuntimeEvent::Exited {
            will_restart: true,
            ..
        }
    ));
    let new = match wait_event(&mut rx, "Started", |e| {
        matches!(e, RuntimeEvent::Started { .. })
    })
    .await
    {
        RuntimeEvent::Started {
            instance: Instance::Process(identity),
            ..
        } => identity,
        other => panic!("{other:?}"),
    };
    reaper.watch(new.pid);
    assert_ne!(new, identity);
    rt.stop_all().await;
    assert_eq!(process_identity(new.pid), None);
    assert!(rt.list().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopt_refuses_dead_and_reused_pids() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());

    // A pid that is gone.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let gone = ProcessIdentity {
        pid: dead_pid,
        start_time: 1,
    };
    assert!(!rt.adopt(shell("dead-1", "true"), gone).await.unwrap());
    assert!(rt.status("dead-1").is_none());

    // A live pid whose start time differs: it is someone else's process now.
    let mut other = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut other, 0);
    let mut other = other.arg("30").spawn().unwrap();
    reaper.watch(other.id());
    let real = process_identity(other.id()).unwrap();
    let reused = ProcessIdentity {
        pid: real.pid,
        start_time: real.start_time + 1,
    };
    assert!(!rt.adopt(shell("reused-1", "true"), reused).await.unwrap());
    assert!(rt.list().is_empty());

    // kill_process_group never touches a reused pid...
    assert!(kill_process_group(&reused, Duration::from_millis(200)).await);
    assert_eq!(process_identity(real.pid), Some(real));
    // ...and kills the right one.
    assert!(kill_process_group(&real, Duration::from_secs(2)).await);
    assert_eq!(process_identity(real.pid), None);
    other.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let max = 20_000;
    let rt = ProcessRuntime::new(dir.path().to_path_buf(), max);
    let spec = shell(
        "noisy-1",
        r#"i=0; while [ $i -lt 4000 ]; do echo "line $i padding padding padding"; i=$((i+1)); done; echo LAST-LINE; exec sleep 30"#,
    );
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    let path = rt.log_path("noisy-1");
    wait_log(&path, "LAST-LINE", |t| t.contains("LAST-LINE")).await;
    let log = wait_log(&path, "truncation", |t| t.len() as u64 <= max).await;
    assert!(log.contains("--- log truncated"), "{log}");
    assert!(log.contains("LAST-LINE"));
    assert!(!log.contains("line 10 padding"));
    // The replica keeps writing to the same file after the cut.
    rt.stop("noisy-1").await.unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains("--- stopped at"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let err = rt
        .start(shell("missing-1", "true").with_argv(&["/nonexistent/ferry-nope", "x"]))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Spawn { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("/nonexistent/ferry-nope"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert!(text.contains("missing-1"), "{text}");
    assert!(rt.status("missing-1").is_none());

    let mut spec = shell("cwd-1", "true");
    spec.cwd = Some(PathBuf::from("/nonexistent/dir"));
    let text = rt.start(spec).await.unwrap_err().to_string();
    assert!(text.contains("/nonexistent/dir"), "{text}");

    let text = rt
        .start(shell("empty-1", "true").with_argv(&[]))
        .await
        .unwrap_err()
        .to_string();
    assert!(text.contains("empty argv"), "{text}");

    let err = rt.start(shell("../escape", "true")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidId { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_start_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let identity = rt.start(shell("dup-1", "exec sleep 30")).await.unwrap();
    reaper.watch(identity.pid);
    let err = rt.start(shell("dup-1", "exec sleep 30")).await.unwrap_err();
    assert!(
        matches!(err, RuntimeError::AlreadySupervised { .. }),
        "{err}"
    );
    rt.stop("dup-1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_transitions_unhealthy_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let site = tempfile::tempdir().unwrap();
    let reaper = Reaper::default();
    let rt = runtime(dir.path());
    let mut rx = rt.subscribe();
    std::fs::write(site.path().join("ok"), "ok").unwrap();
    let mut spec = python_server("health-1");
    spec.cwd = Some(site.path().to_path_buf());
    spec.health.path = "/ok".into();
    let identity = rt.start(spec).await.unwrap();
    reaper.watch(identity.pid);
    wait_event(&mut rx, "Healthy", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    std::fs::remove_file(site.path().join("ok")).unwrap();
    let unhealthy = wait_event(&mut rx, "Unhealthy", |e| {
        matches!(e, RuntimeEvent::Unhealthy { .. })
    })
    .await;
    match unhealthy {
        RuntimeEvent::Unhealthy { reason, .. } => assert!(reason.contains("404"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rt.status("health-1").unwrap().state,
        ReplicaState::Unhealthy
    );
    std::fs::write(site.path().join("ok"), "ok").unwrap();
    wait_event(&mut rx, "Healthy again", |e| {
        matches!(e, RuntimeEvent::Healthy { .. })
    })
    .await;
    assert_eq!(rt.status("health-1").unwrap().state, ReplicaState::Healthy);
    rt.stop_all().await;
    assert_eq!(process_identity(identity.pid), None);
}

trait WithArgv {
    fn with_argv(self, argv: &[&str]) -> Self;
}

impl WithArgv for ReplicaSpec {
    fn with_argv(mut self, argv: &[&str]) -> Self {
        self.argv = argv.iter().map(|s| s.to_string()).collect();
        self
    }
}
