//! Black-box harness: a real `ferry server` child on loopback ports, the `ferry` CLI as a
//! subprocess, manifests running `ferry-demo`, a bounded client loop, and a process audit
//! that makes sure nothing the test started outlives it.

#![allow(dead_code)]

pub mod docker;
pub mod receiver;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_core::api::{DeploymentDetail, DeploymentView, EnvStatus, EventView};
pub use ferry_core::manifest::RuntimeKind;
use ferry_core::model::ReplicaState;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
pub const DEMO: &str = env!("CARGO_BIN_EXE_ferry-demo");

/// The end-to-end tests run one at a time: each starts a server, a proxy, replicas and a
/// client loop, which is plenty for a small machine.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a test body with an overall deadline.
pub async fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, body: F) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

/// `n` sequential GETs from one keep-alive client; the answers in order.
pub async fn sample_sequential(listener: &str, n: usize) -> Vec<Sample> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let url = format!("http://{listener}/");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(request_once(&client, &url, Instant::now()).await);
    }
    out
}

pub fn free_port() -> u16 {
    // The port is free when asked, and released at once: the kernel may hand it out again
    // to a later call (two environments of one manifest got the same one). A port is given
    // out once per test process.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if given.insert(port) {
            return port;
        }
    }
}

/// What a CLI run produced.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A service of the test manifest: `ferry-demo` behind `sh -c PRELUDE; exec ferry-demo`.
#[derive(Clone)]
pub struct Spec {
    pub app: String,
    pub env: String,
    pub listen_port: u16,
    pub replicas: u32,
    /// Shell run before `exec ferry-demo` (may test `$VERSION`).
    pub prelude: String,
    pub start_timeout: String,
    pub extra_service_yaml: String,
    /// The environment's `strategy:` as one line of YAML (flow style).
    pub strategy: String,
    /// What the replica runs instead of `ferry-demo` (a shell command line, after `exec`).
    pub program: Option<String>,
    /// The environment's `run_as:` (None: the server's default, `nobody` under root).
    pub run_as: Option<String>,
    /// What runs the replicas: processes, containers of the test image
    /// ([`docker::DEMO_REPOSITORY`]`:VERSION`, see [`docker::demo_versions`]), or pods of
    /// `registry.example.com/APP/web:VERSION` (a fake API server runs nothing: see
    /// [`write_kubeconfig`]).
    pub runtime: RuntimeKind,
    /// `runtime: kubernetes`: the environment's `kubernetes:` options as one line of YAML
    /// (flow style, e.g. `{ traffic: gateway, route: shop }`); empty: none (the namespace
    /// `APP-ENV`, the current kubeconfig context, traffic through Ferry's proxy).
    pub kubernetes: String,
}

impl Spec {
    pub fn new(app: &str) -> Spec {
        Spec {
            app: app.to_string(),
            env: "production".to_string(),
            listen_port: free_port(),
            replicas: 2,
            prelude: String::new(),
            start_timeout: "15s".to_string(),
            extra_service_yaml: String::new(),
            strategy: "{ rolling: { max_surge: 1, max_unavailable: 0 } }".to_string(),
            program: None,
            run_as: None,
            runtime: RuntimeKind::Process,
            kubernetes: String::new(),
        }
    }

    /// A one-replica service in `staging`.
    pub fn staging(app: &str) -> Spec {
        let mut spec = Spec::new(app);
        spec.env = "staging".into();
        spec.replicas = 1;
        spec
    }

    pub fn listener(&self) -> String {
        format!("127.0.0.1:{}", self.listen_port)
    }
}

/// One Ferry installation under a temporary directory.
pub struct Ferry {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub api_port: u16,
    pub url: String,
    pub token: String,
    /// Put into every replica's environment so the audit finds them all.
    pub mark: String,
    server: Option<Child>,
    server_starts: u32,
    /// Extra environment of every `ferry server` this installation starts.
    server_env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

impl Ferry {
    pub async fn start() -> Ferry {
        Ferry::start_with_env(&[]).await
    }

    /// Like [`Ferry::start`], with extra environment variables for the server process.
    pub async fn start_with_env(server_env: &[(&str, &str)]) -> Ferry {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir()
            .expect("tempdir");
        // Run as root (CI), the server starts workloads as `nobody`: like a user would, give
        // them a directory they may write to (the data dir inside stays 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
            .expect("chmod the test directory");
        let data = dir.path().join("data");
        let api_port = free_port();
        let mark = format!("{}", dir.path().display());
        let mut ferry = Ferry {
            url: format!("http://127.0.0.1:{api_port}"),
            dir,
            data,
            api_port,
            token: String::new(),
            mark,
            server: None,
            server_starts: 0,
            server_env: server_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        ferry.start_server().await;
        ferry
    }

    /// Starts `ferry server` on the same data dir and port, and waits until it is ready.
    pub async fn start_server(&mut self) {
        assert!(self.server.is_none(), "server already running");
        self.server_starts += 1;
        let n = self.server_starts;
        let out = std::fs::File::create(self.dir.path().join(format!("server-{n}.out")))
            .expect("server log");
        let err = std::fs::File::create(self.dir.path().join(format!("server-{n}.err")))
            .expect("server log");
        let child = std::process::Command::new(FERRY)
            .args(["server", "--data"])
            .arg(&self.data)
            .args(["--listen", &format!("127.0.0.1:{}", self.api_port)])
            .env("RUST_LOG", "info")
            .env_remove("FERRY_URL")
            .env_remove("FERRY_TOKEN")
            .envs(self.server_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn ferry server");
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.server = None;
                panic!(
                    "ferry server exited during start ({status})\n{}",
                    self.server_logs()
                );
            }
            let ready = self
                .http
                .get(format!("{}/readyz", self.url))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "ferry server not ready within 30s\n{}",
                self.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let token = std::fs::read_to_string(self.data.join("admin.token"))
            .expect("DATA/admin.token after start");
        self.token = token.trim().to_string();
        assert!(!self.token.is_empty(), "admin.token is empty");
    }

    pub fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// SIGTERM to the server (a graceful stop of the control plane: the proxy and the
    /// replicas keep serving) and its exit status, or None when it did not exit within
    /// `limit` (then it is killed). `start_server` starts it again.
    pub async fn stop_server(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.server.take().expect("server running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `kill -9` of the server process only (the proxy and replicas are its children in
    /// the process tree but must survive it).
    pub fn kill9_server(&mut self) {
        let mut child = self.server.take().expect("server running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Last lines of every server log, for failure messages.
    pub fn server_logs(&self) -> String {
        let mut text = String::new();
        for n in 1..=self.server_starts {
            for ext in ["out", "err"] {
                let path = self.dir.path().join(format!("server-{n}.{ext}"));
                let content = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = content.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                text.push_str(&format!(
                    "--- server-{n}.{ext} (last {} lines)\n",
                    tail.len()
                ));
                for line in tail {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }

    pub fn pids_file(&self) -> PathBuf {
        self.dir.path().join("replica-pids")
    }

    /// Writes the manifest for `spec` and returns its path.
    pub fn write_manifest(&self, spec: &Spec, file: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        let yaml = manifest_yaml(spec, &self.mark, &self.pids_file());
        std::fs::write(&path, yaml).expect("write manifest");
        path
    }

    /// Runs the `ferry` CLI against this server (bounded to 120 s).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        self.cli_with_token(args, Some(&self.token)).await
    }

    pub async fn cli_with_token(&self, args: &[&str], token: Option<&str>) -> CliOutput {
        let mut cmd = tokio::process::Command::new(FERRY);
        cmd.args(args)
            .env("FERRY_URL", &self.url)
            .env("FERRY_CONFIG", self.dir.path().join("cli-config.json"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match token {
            Some(t) => cmd.env("FERRY_TOKEN", t),
            None => cmd.env_remove("FERRY_TOKEN"),
        };
        let output = tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("`ferry {}` did not finish within 120s", args.join(" ")))
            .expect("run ferry");
        CliOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `ferry apply` + `ferry deploy --wait` that must succeed.
    pub async fn apply(&self, manifest: &Path) {
        let out = self
            .cli(&["apply", "-f", &manifest.display().to_string()])
            .await;
        assert_eq!(out.code, 0, "apply failed:\n{out}\n{}", self.server_logs());
    }

    /// `ferry deploy APP --env ENV --version VERSION` with `extra` arguments.
    async fn deploy_cli(&self, spec: &Spec, version: &str, extra: &[&str]) -> CliOutput {
        let mut args = vec![
            "deploy",
            &spec.app,
            "--env",
            &spec.env,
            "--version",
            version,
        ];
        args.extend_from_slice(extra);
        self.cli(&args).await
    }

    /// `ferry deploy` of `version` without waiting: the request must be accepted.
    pub async fn deploy_nowait(&self, spec: &Spec, version: &str) {
        let out = self.deploy_cli(spec, version, &[]).await;
        assert_eq!(out.code, 0, "deploy {version}:\n{out}");
    }

    /// `ferry deploy` of `version` without waiting: the request must be accepted; the new
    /// deployment's id.
    pub async fn deploy_id(&self, spec: &Spec, version: &str) -> i64 {
        self.deploy_id_to(&spec.app, &spec.env, version).await
    }

    /// [`Ferry::deploy_id`] for an app and environment named outright (no [`Spec`]).
    pub async fn deploy_id_to(&self, app: &str, env: &str, version: &str) -> i64 {
        let out = self
            .cli(&[
                "deploy",
                app,
                "--env",
                env,
                "--version",
                version,
                "-o",
                "json",
            ])
            .await;
        assert_eq!(out.code, 0, "deploy {app} {env} {version}:\n{out}");
        out.json()["id"].as_i64().expect("deployment id")
    }

    pub async fn deploy_ok(&self, spec: &Spec, version: &str) -> CliOutput {
        let out = self
            .deploy_cli(spec, version, &["--wait", "--timeout", "60s"])
            .await;
        assert_eq!(
            out.code,
            0,
            "deploy {version} --wait should succeed:\n{out}\n{}",
            self.server_logs()
        );
        out
    }

    /// Right after a successful `deploy --wait`, the listener must answer from `version`.
    pub async fn assert_serves(&self, spec: &Spec, version: &str) {
        let resp = self
            .http
            .get(format!("http://{}/", spec.listener()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET through the proxy right after deploy --wait: {e}"));
        let status = resp.status();
        let answered = resp
            .headers()
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success() && answered == version,
            "`deploy --wait` reported {version} succeeded, but the proxy's next answer was \
             {status} from version {answered:?}: {}\n{}",
            body.trim(),
            self.timelines(spec, wall_ms()).await
        );
    }

    pub async fn api_get(&self, path: &str) -> (reqwest::StatusCode, serde_json::Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn env_status(&self, spec: &Spec) -> EnvStatus {
        let out = self
            .cli(&["status", &spec.app, "--env", &spec.env, "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "status failed:\n{out}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status -o json is not an EnvStatus ({e}):\n{out}"))
    }

    /// The environment's status straight from the API (cheaper than the CLI in loops).
    pub async fn status_api(&self, spec: &Spec) -> EnvStatus {
        let (status, body) = self
            .api_get(&format!("/v1/apps/{}/status?env={}", spec.app, spec.env))
            .await;
        assert!(status.is_success(), "status: {status} {body}");
        let app: ferry_core::api::AppStatus = serde_json::from_value(body).expect("AppStatus");
        app.environments
            .into_iter()
            .find(|e| e.env == spec.env)
            .expect("the environment in the status")
    }

    /// Polls the environment's status until `pred` holds (or fails after `limit`, showing
    /// the last status and the timelines).
    pub async fn wait_status(
        &self,
        spec: &Spec,
        limit: Duration,
        what: &str,
        pred: impl Fn(&EnvStatus) -> bool,
    ) -> EnvStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status_api(spec).await;
            if pred(&status) {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {limit:?} for: {what}; last status: {:#?}\n{}\n{}",
                    status,
                    self.timelines(spec, wall_ms()).await,
                    self.server_logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn deployment(&self, id: i64) -> DeploymentDetail {
        let (status, body) = self.api_get(&format!("/v1/deployments/{id}")).await;
        assert!(status.is_success(), "GET deployment {id}: {status} {body}");
        serde_json::from_value(body).expect("DeploymentDetail")
    }

    /// Waits (long polls) for an event of deployment `id` matching `pred`.
    pub async fn wait_for_event(
        &self,
        id: i64,
        limit: Duration,
        pred: impl Fn(&EventView) -> bool,
    ) -> EventView {
        let deadline = Instant::now() + limit;
        let mut after = 0i64;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let (status, body) = self
                .api_get(&format!(
                    "/v1/deployments/{id}/events?after={after}&wait_ms=1000"
                ))
                .await;
            assert!(status.is_success(), "events of {id}: {status} {body}");
            let events: Vec<EventView> = serde_json::from_value(body).expect("events");
            for event in events {
                after = after.max(event.seq);
                if pred(&event) {
                    return event;
                }
                seen.push(format!("{} {}", event.kind, event.message));
            }
        }
        panic!(
            "no matching event of deployment {id} within {limit:?}; saw:\n{}",
            seen.join("\n")
        );
    }

    /// Waits until deployment `id` reaches a terminal state.
    pub async fn wait_terminal(&self, id: i64, limit: Duration) -> DeploymentView {
        let deadline = Instant::now() + limit;
        loop {
            let detail = self.deployment(id).await;
            if detail.deployment.state.is_terminal() {
                return detail.deployment;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} still {} after {limit:?}; timeline:\n{}\n{}",
                detail.deployment.state,
                detail
                    .events
                    .iter()
                    .map(|e| format!("{} {}", e.kind, e.message))
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The timelines of the environment's last deployments, times relative to `origin_ms`
    /// (wall clock), to explain a failure.
    pub async fn timelines(&self, spec: &Spec, origin_ms: i64) -> String {
        let (_, list) = self
            .api_get(&format!(
                "/v1/apps/{}/envs/{}/deployments?limit=5",
                spec.app, spec.env
            ))
            .await;
        let list: Vec<DeploymentView> = serde_json::from_value(list).unwrap_or_default();
        let mut text = String::new();
        for dep in list.iter().rev() {
            text.push_str(&format!(
                "deployment #{} {} {} ({})\n",
                dep.id, dep.kind, dep.version, dep.state
            ));
            for e in self.deployment(dep.id).await.events {
                text.push_str(&format!(
                    "  {:+.3}s {} {}\n",
                    (e.at_ms - origin_ms) as f64 / 1000.0,
                    e.kind,
                    e.message
                ));
            }
        }
        text
    }

    /// Every pid a replica ever had (each replica's `sh` records `$$` before `exec`).
    pub fn recorded_replica_pids(&self) -> BTreeSet<u32> {
        std::fs::read_to_string(self.pids_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Live processes that belong to this installation: the server, the proxy (their
    /// command lines name the data dir) and the replicas (their environment has the mark).
    pub fn live_processes(&self) -> Vec<(u32, String)> {
        let me = std::process::id();
        let needle_env = format!("FERRY_TEST_MARK={}", self.mark);
        let data = self.data.display().to_string();
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !is_alive(pid) {
                continue;
            }
            let cmdline = read_nul_separated(&format!("/proc/{pid}/cmdline"));
            let environ = read_nul_separated(&format!("/proc/{pid}/environ"));
            let ours = cmdline.iter().any(|arg| arg.contains(&data))
                || environ.iter().any(|var| var == &needle_env);
            if ours {
                found.push((pid, cmdline.join(" ")));
            }
        }
        found
    }

    /// POST /v1/teardown, then stop the server; kill what is left (by pid) and report it.
    fn shutdown_and_audit(&mut self) -> Vec<(u32, String)> {
        if let Some(mut child) = self.server.take() {
            let _ = raw_post(self.api_port, "/v1/teardown", &self.token);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
                    std::thread::sleep(Duration::from_secs(3));
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = self.live_processes();
            if left.is_empty() {
                return Vec::new();
            }
            if std::time::Instant::now() >= deadline {
                for (pid, _) in &left {
                    signal(*pid, nix::sys::signal::Signal::SIGKILL);
                }
                return left;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let left = self.shutdown_and_audit();
        if std::thread::panicking() {
            eprintln!("{}", self.server_logs());
            if !left.is_empty() {
                eprintln!("processes left behind (killed): {left:?}");
            }
            return;
        }
        assert!(
            left.is_empty(),
            "processes left behind after teardown (now killed): {left:#?}\n{}",
            self.server_logs()
        );
    }
}

/// The manifest of `spec` (see [`Ferry::write_manifest`]): its replicas carry `mark` in their
/// environment and, on processes, append their pid to `pids`.
pub fn manifest_yaml(spec: &Spec, mark: &str, pids: &Path) -> String {
    let mark = serde_json::to_string(mark).expect("json");
    // What a container runs: the prelude, then the program.
    let container_run = |default: &str| {
        let program = spec.program.as_deref().unwrap_or(default);
        let script = format!("{} exec {program}", spec.prelude);
        serde_json::to_string(&["/bin/sh", "-c", &script]).expect("json")
    };
    let (workload, runtime) = match spec.runtime {
        RuntimeKind::Process => {
            let program = spec
                .program
                .clone()
                .unwrap_or_else(|| format!("'{DEMO}' --port \"$PORT\" --version \"$VERSION\""));
            let script = format!(
                "echo $$ >> '{pids}'; {prelude} exec {program}",
                pids = pids.display(),
                prelude = spec.prelude,
            );
            let run = serde_json::to_string(&["sh", "-c", &script]).expect("json");
            (format!("run: {run}"), String::new())
        }
        // The test image's `ferry-demo` (it reads $PORT and $VERSION), in a container.
        RuntimeKind::Docker => (
            format!(
                "image: {}:${{VERSION}}\n    run: {}\n    resources: {{ memory: 128Mi, cpus: 0.5 }}",
                docker::DEMO_REPOSITORY,
                container_run("/ferry-demo")
            ),
            "    runtime: docker\n".to_string(),
        ),
        // A Deployment of an image no fake API server pulls; `run` (the container's args)
        // only when the spec names a program.
        RuntimeKind::Kubernetes => {
            let run = spec
                .program
                .as_ref()
                .map(|_| format!("\n    run: {}", container_run("")))
                .unwrap_or_default();
            let options = if spec.kubernetes.is_empty() {
                String::new()
            } else {
                format!("    kubernetes: {}\n", spec.kubernetes)
            };
            (
                format!(
                    "image: registry.example.com/{}/web:${{VERSION}}{run}\n    resources: {{ memory: 128Mi, cpus: 0.5 }}",
                    spec.app
                ),
                format!("    runtime: kubernetes\n{options}"),
            )
        }
    };
    format!(
        "app: {app}
services:
  web:
    {workload}
    replicas: {replicas}
    env: {{ FERRY_TEST_MARK: {mark} }}
    stop_timeout: 5s
    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: {start_timeout} }}
{extra}environments:
  {env}:
    listen: {listen}
    strategy: {strategy}
{runtime}{run_as}",
        app = spec.app,
        replicas = spec.replicas,
        start_timeout = spec.start_timeout,
        extra = spec.extra_service_yaml,
        env = spec.env,
        listen = spec.listener(),
        strategy = spec.strategy,
        run_as = spec
            .run_as
            .as_ref()
            .map(|user| format!("    run_as: {user}\n"))
            .unwrap_or_default(),
    )
}

/// Writes a kubeconfig at `path` whose current context reaches `server` (e.g. a fake API
/// server on loopback, plain HTTP) with a token; give it to `ferry server` as `KUBECONFIG`
/// ([`Ferry::start_with_env`]).
pub fn write_kubeconfig(path: &Path, server: &str) {
    std::fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{ server: \"{server}\" }}\nusers:\n- name: ferry\n  user: {{ token: fake-token }}\ncontexts:\n- name: fake\n  context: {{ cluster: fake, user: ferry }}\ncurrent-context: fake\n"
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

pub fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // State is the first field after the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn read_nul_separated(path: &str) -> Vec<String> {
    std::fs::read(path)
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// A blocking HTTP/1.1 POST (usable from `Drop`, inside or outside a runtime).
fn raw_post(port: u16, path: &str, token: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Replicas the server lists that are meant to be running.
pub fn active_replicas(status: &EnvStatus) -> Vec<&ferry_core::api::ReplicaView> {
    status
        .replicas
        .iter()
        .filter(|r| {
            matches!(
                r.state,
                ReplicaState::Starting | ReplicaState::Healthy | ReplicaState::Unhealthy
            )
        })
        .collect()
}

pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// One answer seen by the client loop.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    /// The version that answered, or what went wrong.
    pub result: Result<String, String>,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// `X-Version` of the answer (also on error answers), when there was one.
    pub version: Option<String>,
}

/// A client loop: `workers` keep-alive clients hitting the listener until stopped. Each
/// worker counts what a client WITHOUT retries sees (see [`StrictClient`]); the loop is
/// bounded by the test's own deadline, never by a silent cap on the number of requests.
pub struct Load {
    pub started: Instant,
    pub started_wall_ms: i64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

impl Load {
    /// `workers` clients sending `GET /` one after the other (3 ms apart).
    pub fn start(listener: &str, workers: usize) -> Load {
        Load::start_on(listener, "/", workers)
    }

    /// `workers` clients sending `GET path` one after the other (3 ms apart).
    pub fn start_on(listener: &str, path: &str, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let tasks = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                let count = count.clone();
                let mut client = StrictClient::new(listener, Duration::from_secs(30));
                let path = path.to_string();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        samples.push(client.get(&path).await);
                        count.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(3)).await;
                    }
                    samples
                })
            })
            .collect();
        Load {
            started: Instant::now(),
            started_wall_ms: wall_ms(),
            stop,
            count,
            tasks,
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` requests were answered (or fails after 20 s).
    pub async fn warm_up(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "client loop is not getting answers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut workers = Vec::new();
        for task in self.tasks {
            workers.push(task.await.expect("load task"));
        }
        LoadReport {
            started: self.started,
            started_wall_ms: self.started_wall_ms,
            workers,
        }
    }
}

/// An HTTP/1.1 keep-alive client that never retries, unlike reqwest/hyper-util's pooled
/// client (which silently sends a request again when its pooled connection turns out to be
/// closed). One connection, reopened only when it is known closed BEFORE a request is
/// written (as any client would); a request written on it that gets no complete answer is
/// a failure, as it would be for a client without retries.
pub struct StrictClient {
    addr: String,
    timeout: Duration,
    sender: Option<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>>,
}

impl StrictClient {
    pub fn new(addr: &str, timeout: Duration) -> StrictClient {
        StrictClient {
            addr: addr.to_string(),
            timeout,
            sender: None,
        }
    }

    /// The open connection if it is still usable, else a new one.
    async fn connection(
        &mut self,
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>, String>
    {
        if let Some(mut sender) = self.sender.take()
            && sender.ready().await.is_ok()
        {
            return Ok(sender);
        }
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One `GET path`: the version that answered, or what went wrong.
    pub async fn get(&mut self, path: &str) -> Sample {
        let sent = Instant::now();
        let failed = |result: String| Sample {
            sent,
            result: Err(result),
            status: None,
            version: None,
        };
        let mut sender = match self.connection().await {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, &self.addr)
            .body(http_body_util::Empty::new())
            .expect("request");
        let exchange = async {
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
            Ok::<_, hyper::Error>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return failed(format!("request written, no complete answer: {e}")),
            Err(_) => return failed(format!("no answer within {:?}", self.timeout)),
        };
        self.sender = Some(sender);
        let header = parts
            .headers
            .get("x-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = String::from_utf8_lossy(&body);
        if parts.status.is_success() {
            let version =
                header.unwrap_or_else(|| body.split_whitespace().last().unwrap_or("").to_string());
            Sample {
                sent,
                result: Ok(version.clone()),
                status: Some(parts.status.as_u16()),
                version: Some(version),
            }
        } else {
            let server = parts
                .headers
                .get("server")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let body: String = body.chars().take(200).collect();
            Sample {
                sent,
                result: Err(format!(
                    "HTTP {} (server {server:?}, version {header:?}): {}",
                    parts.status,
                    body.trim()
                )),
                status: Some(parts.status.as_u16()),
                version: header,
            }
        }
    }
}

/// One GET: the version that answered (`X-Version`, else the body's last word), or what
/// went wrong.
pub async fn request_once(client: &reqwest::Client, url: &str, sent: Instant) -> Sample {
    match client.get(url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let header = resp
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if status.is_success() {
                let result = match resp.text().await {
                    Ok(body) => Ok(header.clone().unwrap_or_else(|| {
                        body.split_whitespace().last().unwrap_or("").to_string()
                    })),
                    Err(e) => Err(format!("body: {e}")),
                };
                Sample {
                    sent,
                    version: result.as_ref().ok().cloned(),
                    result,
                    status: Some(status.as_u16()),
                }
            } else {
                let server = resp
                    .headers()
                    .get("server")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = resp.text().await.unwrap_or_default();
                let body: String = body.chars().take(200).collect();
                Sample {
                    sent,
                    result: Err(format!(
                        "HTTP {status} (server {server:?}, version {header:?}): {}",
                        body.trim()
                    )),
                    status: Some(status.as_u16()),
                    version: header,
                }
            }
        }
        Err(e) => Sample {
            sent,
            result: Err(format!("{e:?}")),
            status: None,
            version: None,
        },
    }
}

pub struct LoadReport {
    pub started: Instant,
    pub started_wall_ms: i64,
    pub workers: Vec<Vec<Sample>>,
}

impl LoadReport {
    pub fn total(&self) -> usize {
        self.workers.iter().map(Vec::len).sum()
    }

    pub fn failures(&self) -> Vec<String> {
        self.workers
            .iter()
            .flatten()
            .filter_map(|s| {
                s.result.as_ref().err().map(|e| {
                    format!(
                        "+{:.3}s after the load started: {e}",
                        s.sent.duration_since(self.started).as_secs_f64()
                    )
                })
            })
            .collect()
    }

    pub fn assert_no_failures(&self, context: &str) {
        let failures = self.failures();
        assert!(
            failures.is_empty(),
            "{} of {} client requests failed; first ones: {:#?}\n{context}",
            failures.len(),
            self.total(),
            &failures[..failures.len().min(5)]
        );
    }

    /// `+1.234s`: when `t` was, relative to the start of the load.
    pub fn at(&self, t: Instant) -> String {
        format!(
            "+{:.3}s",
            t.saturating_duration_since(self.started).as_secs_f64()
        )
    }

    /// Versions that answered requests sent at or after `t`.
    pub fn versions_sent_after(&self, t: Instant) -> BTreeSet<String> {
        self.workers
            .iter()
            .flatten()
            .filter(|s| s.sent >= t)
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect()
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.workers.iter().flatten()
    }

    pub fn versions(&self) -> BTreeSet<String> {
        self.workers
            .iter()
            .flatten()
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect()
    }

    pub fn count_sent_after(&self, t: Instant) -> usize {
        self.workers
            .iter()
            .flatten()
            .filter(|s| s.sent >= t)
            .count()
    }

    /// The first answer of every worker.
    pub fn first_versions(&self) -> BTreeSet<String> {
        self.workers
            .iter()
            .filter_map(|w| w.first())
            .filter_map(|s| s.result.as_ref().ok().cloned())
            .collect()
    }
}

/// Who runs a CLI command: a config file, maybe a token, maybe stdin.
pub struct As<'a> {
    pub config: PathBuf,
    pub token: Option<&'a str>,
}

/// Runs `ferry ARGS` with FERRY_CONFIG = `who.config`, FERRY_TOKEN = `who.token` (none
/// if `None`) and `stdin` written to its standard input.
pub async fn run(ferry: &Ferry, who: &As<'_>, args: &[&str], stdin: Option<&str>) -> CliOutput {
    let mut cmd = tokio::process::Command::new(FERRY);
    cmd.args(args)
        .env("FERRY_URL", &ferry.url)
        .env("FERRY_CONFIG", &who.config)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match who.token {
        Some(t) => cmd.env("FERRY_TOKEN", t),
        None => cmd.env_remove("FERRY_TOKEN"),
    };
    let mut child = cmd.spawn().expect("spawn ferry");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(text.as_bytes()).await.expect("write stdin");
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("`ferry {}` did not finish within 120s", args.join(" ")))
        .expect("run ferry");
    CliOutput {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Fails the test with the command's output unless it exited 0.
pub fn ok(out: &CliOutput, what: &str) {
    assert_eq!(out.code, 0, "{what} should succeed:\n{out}");
}

/// User `name` as a CLI actor with a config file of their own (no session yet).
pub fn user<'a>(ferry: &Ferry, name: &str) -> As<'a> {
    As {
        config: ferry.dir.path().join(format!("{name}.json")),
        token: None,
    }
}

/// The admin (the server's bootstrap token) as a CLI actor.
pub fn admin(ferry: &Ferry) -> As<'_> {
    As {
        config: ferry.dir.path().join("admin.json"),
        token: Some(&ferry.token),
    }
}

/// Creates user `name` with `password`, binds each `(role, app, env)` (ahead of time if
/// the app is not applied yet: `--allow-missing`), logs the user in and returns them as a
/// CLI actor (their session in their own config file).
pub async fn add_person<'a>(
    ferry: &'a Ferry,
    name: &str,
    password: &str,
    grants: &[(&str, &str, Option<&str>)],
) -> As<'a> {
    let root = admin(ferry);
    let stdin = format!("{password}\n");
    ok(
        &run(
            ferry,
            &root,
            &["users", "add", name, "--password-stdin"],
            Some(&stdin),
        )
        .await,
        "users add",
    );
    for (role, app, env) in grants {
        let mut args = vec!["grant", name, role, "--app", app, "--allow-missing"];
        if let Some(env) = env {
            args.extend(["--env", env]);
        }
        ok(&run(ferry, &root, &args, None).await, "grant");
    }
    let who = user(ferry, name);
    ok(
        &run(
            ferry,
            &who,
            &["login", "--user", name, "--password-stdin"],
            Some(&stdin),
        )
        .await,
        "login",
    );
    who
}

/// `spec`'s manifest (its environment, e.g. `staging`) followed by a `production`
/// environment with `strategy` (one line of YAML) held for an `approver`'s approval.
pub fn with_approved_production(ferry: &Ferry, spec: &Spec, strategy: &str) -> PathBuf {
    with_gated_production(ferry, spec, strategy, "{ approvals: [{ role: approver }] }")
}

/// `spec`'s manifest (its environment, e.g. `staging`) followed by a `production`
/// environment with `strategy` and `gates` (each one line of YAML, flow style).
pub fn with_gated_production(ferry: &Ferry, spec: &Spec, strategy: &str, gates: &str) -> PathBuf {
    let path = ferry.write_manifest(spec, "ferry.yaml");
    let mut yaml = std::fs::read_to_string(&path).expect("read manifest");
    yaml.push_str(&format!(
        "  production:\n    listen: 127.0.0.1:{}\n    strategy: {strategy}\n    gates: {gates}\n",
        free_port(),
    ));
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

/// `ferry deploy APP --env ENV --version VERSION` as person `who` (see [`add_person`]);
/// the new deployment's id.
pub async fn deploy_as(ferry: &Ferry, who: &str, app: &str, env: &str, version: &str) -> i64 {
    let out = run(
        ferry,
        &user(ferry, who),
        &[
            "deploy",
            app,
            "--env",
            env,
            "--version",
            version,
            "-o",
            "json",
        ],
        None,
    )
    .await;
    ok(&out, "deploy");
    out.json()["id"].as_i64().expect("deployment id")
}

/// Waits (up to `limit`) until deployment `id` is in `state` (as `ferry` writes it).
pub async fn wait_state(ferry: &Ferry, id: i64, state: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let detail = ferry.deployment(id).await;
        if detail.deployment.state.to_string() == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "deployment #{id} is {}, never {state}",
            detail.deployment.state
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `psql -X -d DB -Atc SQL` as the current user on the local server's socket: its output,
/// or psql's error text.
pub fn psql(database: &str, sql: &str) -> Result<String, String> {
    let output = std::process::Command::new("psql")
        .args(["-X", "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The name of the OS user running the tests (as whom `psql` connects, peer authentication).
pub fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .expect("the current user is in the user database")
}

/// A PostgreSQL database of its own on the local server, dropped at the end.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    /// `None` (after saying the test is skipped) when no local PostgreSQL answers, unless
    /// `FERRY_REQUIRE_POSTGRES=1` (as in `.ci/run`), where that fails the test.
    pub fn create(prefix: &str) -> Option<PgDatabase> {
        if let Err(e) = psql("postgres", "SELECT 1") {
            let required = std::env::var("FERRY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "FERRY_REQUIRE_POSTGRES=1 but PostgreSQL is not reachable with `psql -d postgres`: {e}"
            );
            eprintln!("SKIPPED: no PostgreSQL reachable with `psql -d postgres` ({e})");
            return None;
        }
        let name = format!("{prefix}_{}", std::process::id());
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        Some(PgDatabase { name })
    }

    /// A sqlx URL reaching it over the local socket as the current user.
    pub fn url(&self) -> String {
        let user = psql("postgres", "SELECT current_user").expect("current_user");
        format!(
            "postgres://{user}@localhost/{}?host=/var/run/postgresql",
            self.name
        )
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl Ferry {
    /// `ferry ARGS` as the admin with `stdin` on its standard input (e.g. a secret).
    pub async fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> CliOutput {
        run(self, &admin(self), args, Some(stdin)).await
    }

    /// A deployment's timeline, one `kind message` line per event.
    pub async fn timeline(&self, id: i64) -> String {
        self.deployment(id)
            .await
            .events
            .iter()
            .map(|e| format!("{} {}", e.kind, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Every file under `dir` whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}
