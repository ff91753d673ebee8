//! `ferry-runtime`: the process runtime. Starts replica processes on 127.0.0.1, supervises
//! them (health checks, exit detection, restart with backoff) and stops them. It makes no
//! rollout decisions: it reports [`RuntimeEvent`]s and the controller decides.
//!
//! Replicas survive the Ferry server's death: each runs in its own process group, writes
//! straight to an append-mode log file (no pipe to break), and is never killed when the
//! runtime is dropped. A restarted server re-adopts them with [`ProcessRuntime::adopt`]
//! using the [`ProcessIdentity`] (pid + start time) it persisted, so a reused pid is never
//! mistaken for a replica.
//!
//! Dropping the last [`ProcessRuntime`] handle detaches: supervision tasks end, processes
//! keep running (as if the server had crashed).
//!
//! Isolation ([`isolation`]): a replica starts with a clean environment (only what its spec
//! gives plus a documented minimal set) and as the user of [`ReplicaSpec::run_as`]. Its log
//! (mode 0600) is written through the redacting log filter ([`redact`]) when the spec has
//! secret values and the runtime knows the filter ([`ProcessRuntime::set_log_filter`]).

#[cfg(feature = "docker")]
pub mod docker;
pub mod isolation;
mod logs;
mod process;
mod procfs;
pub mod redact;
pub mod runtime;
mod supervise;
mod supervisor;
mod task;

pub use runtime::{
    BoxFuture, ContainerSpec, Instance, LogLines, RegistryAuth, Runtime, TaskEnd, TaskOutcome,
    TaskOutput, TaskSpec, Usage,
};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferry_core::model::ReplicaState;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use crate::isolation::RunAs;
use crate::supervise::{Proc, ProcessDriver};
use crate::supervisor::{Started, Supervisor};

/// What to run for one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Unique, chosen by the controller, e.g. `shop-staging-api-1.1.0-3f2a`. Also names the
    /// log file, so keep it file-name safe.
    pub id: String,
    pub app: String,
    pub env: String,
    pub service: String,
    pub version: String,
    /// Program and arguments. `${PORT}` and `${VERSION}` are substituted by the runtime.
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// Service env + environment vars, merged by the caller; set after the runtime's own
    /// (`PORT`, `VERSION`, `FERRY_APP`, `FERRY_ENV`, `FERRY_SERVICE`), so they may override them.
    /// Nothing else of the server's environment reaches the replica but
    /// [`isolation::base_env`].
    pub env_vars: BTreeMap<String, String>,
    /// The user the replica runs as (None: the server's own user).
    pub run_as: Option<RunAs>,
    /// Secret values (every version the replica may know) kept out of its log file.
    pub redact: Vec<String>,
    pub port: u16,
    pub health: HealthSpec,
    /// How long `stop` waits after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// The image and its settings, for a container runtime (`argv` is then the optional
    /// command); the process runtime ignores it.
    pub container: Option<ContainerSpec>,
}

/// HTTP health check: `GET http://127.0.0.1:{port}{path}`, 2xx is a success. An empty
/// `path` disables checks: the replica counts as healthy as soon as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: "/health".to_string(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
        }
    }
}

/// Identifies one process across server restarts: a pid alone may be reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// `/proc/PID/stat` field 22 (starttime, clock ticks since boot).
    pub start_time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: String,
    pub state: ReplicaState,
    /// The running process, if any (None while waiting to restart).
    pub pid: Option<u32>,
    /// Restarts after unexpected exits.
    pub restarts: u32,
    pub ever_healthy: bool,
    /// How the last process ended, e.g. `exit code 1`, `signal 9`.
    pub last_exit: Option<String>,
    /// The last lines that process wrote (bounded, escaped, from its redacted log), when
    /// the runtime knows them.
    #[serde(default)]
    pub last_output: Vec<String>,
    /// What the latest health check got while failing (None after a success).
    #[serde(default)]
    pub last_probe: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// A replica was started (first start or restart): persist a process `instance`'s
    /// identity to re-adopt it.
    Started { id: String, instance: Instance },
    /// Reached `healthy_threshold` consecutive successful checks (from Starting or Unhealthy).
    Healthy { id: String },
    /// Was healthy, then failed `unhealthy_threshold` consecutive checks.
    Unhealthy { id: String, reason: String },
    /// The process ended on its own (or a restart attempt failed to spawn).
    Exited {
        id: String,
        reason: String,
        will_restart: bool,
    },
    /// Stopped on purpose by `stop`; it will not come back.
    Stopped { id: String },
}

impl RuntimeEvent {
    pub fn id(&self) -> &str {
        match self {
            RuntimeEvent::Started { id, .. }
            | RuntimeEvent::Healthy { id }
            | RuntimeEvent::Unhealthy { id, .. }
            | RuntimeEvent::Exited { id, .. }
            | RuntimeEvent::Stopped { id } => id,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "invalid replica id {id:?}: it names the log file, so it must be non-empty without '/' or NUL"
    )]
    InvalidId { id: String },
    #[error("replica {id}: empty argv")]
    EmptyArgv { id: String },
    #[error("replica {id}: working directory {} does not exist", dir.display())]
    MissingCwd { id: String, dir: PathBuf },
    #[error("replica {id}: cannot start {program:?}: {source}{hint}")]
    Spawn {
        id: String,
        program: String,
        #[source]
        source: std::io::Error,
        /// What a replica running as another user needs (may be empty).
        hint: String,
    },
    #[error("replica {id}: cannot open log file {}: {source}", path.display())]
    LogFile {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {id}: cannot read /proc/{pid}/stat of the process just started")]
    Identity { id: String, pid: u32 },
    #[error("replica {id} is already supervised (pid {pid:?})")]
    AlreadySupervised { id: String, pid: Option<u32> },
    #[error("replica {id}: process {pid} still runs after SIGKILL")]
    StopFailed { id: String, pid: u32 },
    #[error("task {name}: empty command")]
    EmptyCommand { name: String },
    #[error("task {name}: working directory {} does not exist", dir.display())]
    TaskDir { name: String, dir: PathBuf },
    #[error("task {name}: cannot start {program:?}: {source}{hint}")]
    TaskStart {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
        /// What a task running as another user needs (may be empty).
        hint: String,
    },
    #[error("replica {id}: a container runtime needs an `image:` for its service")]
    NoImage { id: String },
    #[error(
        "{what}: image {image} would run as root (uid 0): set `user:` to a non-root uid, or `allow_root: true` to allow it explicitly"
    )]
    RootRefused { what: String, image: String },
    #[error("pulling image {image} failed: {message}")]
    Pull { image: String, message: String },
    #[error("{what}: {source}")]
    Engine {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("task {id}: waiting for it failed: {source}")]
    Wait {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this Ferry was built without the {runtime} runtime: rebuild with the `{runtime}` cargo feature (on by default)"
    )]
    Unavailable { runtime: &'static str },
    #[error("cannot reserve a free port on 127.0.0.1: {0}")]
    FreePort(#[source] std::io::Error),
    #[error(
        "no free port left in the range {range} (--ports / FERRY_PORTS): widen it or stop what holds them"
    )]
    PortsExhausted { range: PortRange },
}

/// Starts and supervises replica processes. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct ProcessRuntime {
    sup: Arc<Supervisor<ProcessDriver>>,
    /// Detaches (ends supervision without touching processes) when the last handle drops.
    _detach: Arc<DetachOnDrop>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime")
            .field("log_dir", &self.sup.driver.log_dir)
            .field("replicas", &self.sup.replicas().len())
            .finish()
    }
}

pub(crate) struct DetachOnDrop(pub CancellationToken);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

const LOG_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl ProcessRuntime {
    /// `log_dir` receives `<id>.log` per replica (created when needed); a log above
    /// `max_log_bytes` is cut to its last `max_log_bytes / 2` bytes (0 = no limit).
    pub fn new(log_dir: PathBuf, max_log_bytes: u64) -> Self {
        let sup = Supervisor::new(ProcessDriver {
            log_dir,
            max_log_bytes,
            janitor_started: AtomicBool::new(false),
            log_filter: OnceLock::new(),
        });
        let detach = sup.detach.clone();
        ProcessRuntime {
            sup,
            _detach: Arc::new(DetachOnDrop(detach)),
        }
    }

    /// Replicas with secret values ([`ReplicaSpec::redact`]) write their output through
    /// `ferry_exe __log-filter` (see [`redact`]), so their log never holds a secret in plain
    /// text. Without it (set once) their output goes straight to the file.
    pub fn set_log_filter(&self, ferry_exe: PathBuf) {
        let _ = self.sup.driver.log_filter.set(ferry_exe);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.sup.subscribe()
    }

    /// Spawns the replica and supervises it. Returns once the process exists (not once it
    /// is healthy: wait for [`RuntimeEvent::Healthy`]). Also emits `Started`.
    pub async fn start(&self, spec: ReplicaSpec) -> Result<ProcessIdentity, RuntimeError> {
        validate_id(&spec.id)?;
        self.ensure_janitor();
        let mut replicas = self.sup.replicas();
        Supervisor::<ProcessDriver>::ensure_absent(&replicas, &spec.id)?;
        let running = supervise::spawn(&self.sup.driver, &spec)?;
        let identity = running.identity();
        let started = Started {
            running,
            instance: Instance::Process(identity),
            pid: Some(identity.pid),
        };
        self.sup.supervise(&mut replicas, spec, started, true);
        Ok(identity)
    }

    /// Re-adopts a replica started by an earlier server. `Ok(true)`: a process with the same
    /// pid AND start time still runs and is supervised again (health checks from Starting,
    /// exit detection by polling /proc, restart on exit like any replica). `Ok(false)`: it is
    /// gone or the pid belongs to another process now: nothing was done, the caller decides.
    /// Adopting an id already supervised with the same identity is `Ok(true)`.
    pub async fn adopt(
        &self,
        spec: ReplicaSpec,
        identity: ProcessIdentity,
    ) -> Result<bool, RuntimeError> {
        validate_id(&spec.id)?;
        self.ensure_janitor();
        let mut replicas = self.sup.replicas();
        if let Some(existing) = replicas.get(&spec.id) {
            let current = existing
                .shared()
                .instance
                .as_ref()
                .and_then(Instance::process);
            if current == Some(identity) {
                return Ok(true);
            }
            return Err(RuntimeError::AlreadySupervised {
                id: spec.id.clone(),
                pid: current.map(|i| i.pid),
            });
        }
        if !procfs::is_alive(&identity) {
            return Ok(false);
        }
        logs::append_line(
            &self.sup.driver.log_path(&spec.id),
            &format!(
                "--- adopted pid {} at {} ---",
                identity.pid,
                logs::now_rfc3339()
            ),
        );
        let started = Started {
            running: Proc::Adopted { identity },
            instance: Instance::Process(identity),
            pid: Some(identity.pid),
        };
        self.sup.supervise(&mut replicas, spec, started, false);
        Ok(true)
    }

    /// Stops a replica for good: SIGTERM to its process group, up to `stop_timeout` to exit,
    /// then SIGKILL to the group. No restart afterwards. Returns once the process is gone;
    /// the replica is then forgotten (`status` returns None). Unknown id: `Ok(())`.
    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.sup.stop(id).await
    }

    pub fn status(&self, id: &str) -> Option<ReplicaStatus> {
        self.sup.status(id)
    }

    /// Every supervised replica, sorted by id.
    pub fn list(&self) -> Vec<ReplicaStatus> {
        self.sup.list()
    }

    /// The identity of the replica's current process (None while waiting to restart).
    pub fn identity(&self, id: &str) -> Option<ProcessIdentity> {
        self.sup.get(id).and_then(|replica| {
            replica
                .shared()
                .instance
                .as_ref()
                .and_then(Instance::process)
        })
    }

    /// The port a supervised replica listens on.
    pub fn port(&self, id: &str) -> Option<u16> {
        self.sup.get(id).map(|replica| replica.spec.port)
    }

    /// `log_dir/<id>.log`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.sup.driver.log_path(id)
    }

    /// Stops every supervised replica concurrently (errors are logged).
    pub async fn stop_all(&self) {
        self.sup.stop_all().await;
    }

    fn ensure_janitor(&self) {
        if self.sup.driver.janitor_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let sup = self.sup.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = sup.detach.cancelled() => return,
                    () = tokio::time::sleep(LOG_CHECK_INTERVAL) => {}
                }
                let max = sup.driver.max_log_bytes;
                if max == 0 {
                    continue;
                }
                let paths: Vec<PathBuf> = sup
                    .replicas()
                    .keys()
                    .map(|id| sup.driver.log_path(id))
                    .collect();
                let _ = tokio::task::spawn_blocking(move || {
                    for path in paths {
                        if let Err(e) = logs::cap_log(&path, max) {
                            tracing::warn!(path = %path.display(), error = %e, "cannot cap log file");
                        }
                    }
                })
                .await;
            }
        });
    }
}

fn validate_id(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() || id == "." || id == ".." || id.contains(['/', '\0']) {
        return Err(RuntimeError::InvalidId { id: id.to_string() });
    }
    Ok(())
}

/// Binds 127.0.0.1:0, reads the port the OS chose, releases it.
/// The ports Ferry may give replicas and its proxy's admin API (`ferry server --ports
/// 20000-29999`), for hosts whose firewall allows only a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// Why a `--ports` value is not a range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a port range: {why} (e.g. 20000-29999)")]
pub struct PortRangeError {
    value: String,
    why: &'static str,
}

impl std::str::FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(value: &str) -> Result<PortRange, PortRangeError> {
        let fail = |why| PortRangeError {
            value: value.chars().take(64).collect(),
            why,
        };
        let (first, last) = value
            .trim()
            .split_once('-')
            .ok_or_else(|| fail("expected FIRST-LAST"))?;
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .map_err(|_| fail("each end must be a port number from 1 to 65535"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first == 0 {
            return Err(fail("port 0 is not a port"));
        }
        if first > last {
            return Err(fail("the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A free port on 127.0.0.1: anywhere (the kernel's choice) without a range, else the first
/// free one in the range, searched from a rotating start so that a port just released is not
/// handed out again at once.
pub fn free_port_in(range: Option<PortRange>) -> Result<u16, RuntimeError> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let Some(range) = range else {
        return free_port();
    };
    let size = u32::from(range.last - range.first) + 1;
    let start = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % size;
    for step in 0..size {
        let port = range.first + u16::try_from((start + step) % size).unwrap_or(0);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            NEXT.store(start + step + 1, std::sync::atomic::Ordering::Relaxed);
            return Ok(port);
        }
    }
    Err(RuntimeError::PortsExhausted { range })
}

pub fn free_port() -> Result<u16, RuntimeError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(RuntimeError::FreePort)?;
    let port = listener
        .local_addr()
        .map_err(RuntimeError::FreePort)?
        .port();
    Ok(port)
}

/// Reads the identity of a running process from /proc; None if it is gone (or a zombie).
pub fn process_identity(pid: u32) -> Option<ProcessIdentity> {
    procfs::read_stat(pid)
        .filter(|stat| !stat.is_dead())
        .map(|stat| ProcessIdentity {
            pid,
            start_time: stat.start_time,
        })
}

/// Kills a replica process group the controller no longer wants (e.g. found after a
/// crash): SIGTERM to the group, up to `timeout` to exit, then SIGKILL. Signals only when
/// pid AND start time match, so a reused pid is never touched. Returns true when no process
/// with this identity runs afterwards (including when it was already gone), false if it
/// survived SIGKILL.
pub async fn kill_process_group(identity: &ProcessIdentity, timeout: Duration) -> bool {
    if !procfs::is_alive(identity) {
        return true;
    }
    procfs::signal_identity(identity, nix::sys::signal::Signal::SIGTERM);
    if !procfs::wait_gone(identity, timeout).await {
        procfs::signal_identity(identity, nix::sys::signal::Signal::SIGKILL);
        if !procfs::wait_gone(identity, Duration::from_secs(5)).await {
            return false;
        }
    }
    procfs::kill_stragglers_and_wait(identity.pid, Duration::from_secs(2)).await;
    true
}

/// The environment variable every replica process starts with, set to its replica id by the
/// process runtime itself: how [`Runtime::discard`] finds a replica whose pid was never
/// recorded.
pub const REPLICA_MARKER: &str = "FERRY_REPLICA_ID";

/// Finds the processes started with the environment variable `name=value` (a marker such
/// as `FERRY_REPLICA_ID`, for a process whose pid was never recorded because the server died
/// right after starting it) and stops each one's process group; returns their pids.
pub async fn kill_by_marker(name: &str, value: &str, timeout: Duration) -> Vec<u32> {
    let needle = format!("{name}={value}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut killed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
            && let Some(identity) = process_identity(pid)
        {
            kill_process_group(&identity, timeout).await;
            killed.push(pid);
        }
    }
    killed
}
