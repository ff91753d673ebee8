//! One-off tasks and the rest of the `Runtime` trait on the process runtime, with real
//! processes (sh, python3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_runtime::{
    HealthSpec, Instance, ProcessRuntime, ReplicaSpec, Runtime, RuntimeError, TaskEnd, TaskOutput,
    TaskSpec, free_port,
};

const WAIT: Duration = Duration::from_secs(20);

fn task(dir: &Path, script: &str, timeout: Duration) -> TaskSpec {
    TaskSpec {
        name: "probe".into(),
        app: "shop".into(),
        env: "staging".into(),
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env_vars: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
        cwd: Some(dir.to_path_buf()),
        run_as: None,
        timeout,
        output: TaskOutput::Capture { max_bytes: 1024 },
        container: None,
    }
}

fn runtime(dir: &Path) -> Arc<dyn Runtime> {
    Arc::new(ProcessRuntime::new(dir.join("logs"), 0))
}

/// True while `pid` runs (a zombie waiting for init to reap it counts as gone).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit(')').next().map(str::to_string))
        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
}

fn pid_in(dir: &Path, file: &str) -> u32 {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_task_reports_its_exit_and_bounded_output() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let script = "echo $GREETING from $(pwd); head -c 5000 /dev/zero | tr '\\0' x; echo; echo oops >&2; exit 3";
    let outcome = rt
        .run_task(task(dir.path(), script, WAIT), None)
        .await
        .unwrap();
    assert_eq!(outcome.end, TaskEnd::Exited(3));
    assert_eq!(outcome.end.code(), Some(3));
    assert!(!outcome.end.success());
    // Only the tail is kept.
    assert_eq!(outcome.stdout.len(), 1024, "{}", outcome.stdout.len());
    assert!(outcome.stdout.ends_with("xxx\n"));
    assert_eq!(outcome.stderr, "oops\n");
    let greeting = rt
        .run_task(task(dir.path(), "echo $GREETING from $(pwd)", WAIT), None)
        .await
        .unwrap();
    assert!(greeting.end.success());
    assert_eq!(
        greeting.stdout.trim(),
        format!(
            "hello from {}",
            dir.path().canonicalize().unwrap().display()
        )
    );
}

#[tokio::test]
async fn a_timed_out_task_takes_everything_it_started_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = Instant::now();
    let outcome = rt
        .run_task(
            task(
                dir.path(),
                "sleep 300 & echo $! > first.pid; sleep 300 & echo $! > second.pid; echo begun; wait",
                Duration::from_millis(500),
            ),
            Some(tx),
        )
        .await
        .unwrap();
    assert_eq!(outcome.end, TaskEnd::TimedOut);
    assert!(started.elapsed() < WAIT, "{:?}", started.elapsed());
    assert_eq!(
        outcome.stdout, "begun\n",
        "output up to the timeout is kept"
    );
    let Ok(Instance::Process(identity)) = rx.await else {
        panic!("the task's process was announced");
    };
    assert!(!running(identity.pid), "the task itself still runs");
    for file in ["first.pid", "second.pid"] {
        let pid = pid_in(dir.path(), file);
        assert!(!running(pid), "the task's child {pid} outlived its timeout");
    }
}

#[tokio::test]
async fn what_a_finished_task_left_running_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let outcome = rt
        .run_task(
            task(dir.path(), "sleep 300 & echo $! > left.pid; exit 0", WAIT),
            None,
        )
        .await
        .unwrap();
    assert_eq!(outcome.end, TaskEnd::Exited(0));
    let pid = pid_in(dir.path(), "left.pid");
    assert!(!running(pid), "{pid} outlived its task");
}

#[tokio::test]
async fn a_task_can_write_to_a_file_and_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let path = dir.path().join("out/hook.log");
    let mut spec = task(dir.path(), "echo to file; echo err >&2", WAIT);
    spec.output = TaskOutput::File {
        path: path.clone(),
        max_bytes: 1024,
        filter: None,
    };
    let outcome = rt.run_task(spec, None).await.unwrap();
    assert!(outcome.end.success());
    assert_eq!(outcome.stdout, "");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "to file\nerr\n");

    let mut missing = task(dir.path(), "", WAIT);
    missing.argv = vec!["/nonexistent/tool".into()];
    let err = rt.run_task(missing, None).await.unwrap_err();
    assert!(matches!(err, RuntimeError::TaskStart { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/tool"), "{err}");
    let mut empty = task(dir.path(), "", WAIT);
    empty.argv.clear();
    let err = rt.run_task(empty, None).await.unwrap_err();
    assert_eq!(err.to_string(), "task probe: empty command");
}

#[tokio::test]
async fn replicas_have_an_endpoint_and_logs_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let port = free_port().unwrap();
    let spec = ReplicaSpec {
        id: "logger-1".into(),
        app: "shop".into(),
        env: "staging".into(),
        service: "api".into(),
        version: "1.0.0".into(),
        argv: vec![
            "sh".into(),
            "-c".into(),
            "for i in 1 2 3; do echo line $i; done; while true; do sleep 0.2; echo tick; done"
                .into(),
        ],
        cwd: None,
        env_vars: BTreeMap::new(),
        run_as: None,
        redact: Vec::new(),
        port,
        health: HealthSpec {
            path: String::new(),
            ..HealthSpec::default()
        },
        stop_timeout: Duration::from_secs(5),
        container: None,
    };
    let instance = rt.start(spec).await.unwrap();
    assert!(matches!(instance, Instance::Process(_)));
    assert_eq!(
        rt.endpoint("logger-1"),
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    );
    assert_eq!(rt.endpoint("nobody"), None);
    // Follow: the tail, then new lines as they come.
    let mut lines = rt.logs("logger-1", 2, true);
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while seen.iter().filter(|l: &&String| *l == "tick").count() < 2 {
        let line = tokio::time::timeout_at(deadline.into(), lines.recv())
            .await
            .expect("lines within the deadline")
            .expect("the stream stays open while following");
        seen.push(line);
    }
    drop(lines);
    // Without follow: only the tail, then the end.
    let mut tail = rt.logs("logger-1", 1, false);
    let last = tail.recv().await.expect("one line");
    assert!(last == "tick" || last.starts_with("line"), "{last}");
    assert_eq!(tail.recv().await, None);
    rt.stop("logger-1").await.unwrap();
    assert!(rt.status("logger-1").is_none());
    assert_eq!(rt.discard("logger-1", None).await, 0);
}

/// A task gets none of this process's environment (`cargo test` sets CARGO_*), and under
/// root runs as the user it is given.
#[tokio::test]
async fn a_task_runs_on_a_clean_environment_as_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    assert!(std::env::vars().any(|(k, _)| k.starts_with("CARGO")));
    let mut spec = task(dir.path(), "env; id -u", WAIT);
    spec.cwd = None;
    let root = nix::unistd::Uid::effective().is_root();
    let nobody = ferry_runtime::isolation::RunAs::lookup("nobody").unwrap();
    if root {
        spec.run_as = Some(nobody.clone());
    }
    let outcome = rt.run_task(spec, None).await.unwrap();
    assert!(outcome.end.success(), "{outcome:?}");
    assert!(
        outcome.stdout.contains("GREETING=hello"),
        "{}",
        outcome.stdout
    );
    assert!(!outcome.stdout.contains("CARGO"), "{}", outcome.stdout);
    if root {
        assert!(
            outcome.stdout.trim_end().ends_with(&nobody.uid.to_string()),
            "{}",
            outcome.stdout
        );
    }
}
