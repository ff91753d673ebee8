//! The [`Runtime`] trait: what the control plane asks of whatever runs the workloads (local
//! processes today, containers on a Docker engine, another orchestrator tomorrow), and the
//! types it speaks in. Object safe (`Arc<dyn Runtime>`), so the controller can pick one per
//! environment and tests can swap in a fake.
//!
//! A runtime makes no rollout decisions. It starts, adopts, observes and stops replicas,
//! reports [`RuntimeEvent`]s, says where a replica answers ([`Runtime::endpoint`]), serves its
//! logs, and runs one-off tasks (hooks, gate checks, command analyses) with a timeout and a
//! guaranteed stop of everything the task started.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::redact::LogFilter;
use crate::{ProcessIdentity, ReplicaSpec, ReplicaStatus, RunAs, RuntimeError, RuntimeEvent};

/// A boxed future, so that [`Runtime`] stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What runs one replica (or one task) right now, as the runtime that owns it names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instance {
    /// A local process (group leader), identified by pid AND start time.
    Process(ProcessIdentity),
    /// A container, by the engine's id.
    Container(String),
}

impl Instance {
    /// The process identity, when the instance is a local process (the store persists it).
    pub fn process(&self) -> Option<ProcessIdentity> {
        match self {
            Instance::Process(identity) => Some(*identity),
            Instance::Container(_) => None,
        }
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instance::Process(identity) => write!(f, "pid {}", identity.pid),
            Instance::Container(id) => write!(f, "container {}", &id[..id.len().min(12)]),
        }
    }
}

/// A one-off task: a hook, a gate's command check, a command analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    /// What the task is, for errors and (containers) its name and labels, e.g. `hook-migrate-42`.
    pub name: String,
    pub app: String,
    pub env: String,
    /// Program and arguments (for a container: the command run in the image; empty = the
    /// image's own command).
    pub argv: Vec<String>,
    /// The task's whole environment on top of the runtime's base (see each runtime).
    pub env_vars: BTreeMap<String, String>,
    /// Working directory (processes only).
    pub cwd: Option<PathBuf>,
    /// The user a process runs as (None: the server's own user; see [`crate::isolation`]).
    pub run_as: Option<RunAs>,
    /// After this the task and everything it started are killed: [`TaskEnd::TimedOut`].
    pub timeout: Duration,
    pub output: TaskOutput,
    /// Run in a container of this image (Docker runtime); `None` for processes.
    pub container: Option<ContainerSpec>,
}

/// How to run a replica or task as a container (Docker runtime). Secure by default: the
/// runtime refuses uid 0 unless `allow_root`, and always drops every capability, sets
/// no-new-privileges and a read-only root filesystem with a writable tmpfs `/tmp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// `registry/name:tag`, `${VERSION}` already substituted.
    pub image: String,
    /// `uid[:gid]` (or a name the image knows); `None`: the image's `USER`.
    pub user: Option<String>,
    /// Only then may the container run as uid 0.
    pub allow_root: bool,
    pub memory_bytes: Option<i64>,
    /// CPUs in billionths (`0.5` CPU = 500_000_000).
    pub nano_cpus: Option<i64>,
    /// e.g. `SIGTERM` (the default), `SIGQUIT`.
    pub stop_signal: Option<String>,
    /// Credentials to pull the image when it is missing locally.
    pub registry_auth: Option<RegistryAuth>,
    /// More container labels, e.g. `ferry.deployment`.
    pub labels: BTreeMap<String, String>,
}

/// Registry credentials (from Ferry secrets); never logged.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Where a task's stdout and stderr go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskOutput {
    /// Kept in memory, each stream cut to its last `max_bytes`
    /// ([`TaskOutcome::stdout`]/[`TaskOutcome::stderr`]).
    Capture { max_bytes: usize },
    /// Appended to a file (created 0600 with its directory) that outlives a dying server;
    /// kept under about `4 × max_bytes` while the task writes (the tail is kept). With a
    /// `filter`, through the redacting log filter ([`crate::redact`]).
    File {
        path: PathBuf,
        max_bytes: u64,
        filter: Option<LogFilter>,
    },
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEnd {
    Exited(i32),
    /// Killed by this signal (not by the runtime's timeout).
    Signalled(i32),
    /// Still running at its timeout: it and everything it started were killed.
    TimedOut,
}

impl TaskEnd {
    pub fn success(self) -> bool {
        self == TaskEnd::Exited(0)
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            TaskEnd::Exited(code) => Some(code),
            TaskEnd::Signalled(_) | TaskEnd::TimedOut => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutcome {
    pub end: TaskEnd,
    /// Captured output ([`TaskOutput::Capture`]; empty for files), lossily UTF-8.
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

/// What a replica has used: the cumulative CPU time and the memory it holds now (see
/// [`Runtime::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// CPU time (user + system) since it started, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory without the page cache, in bytes.
    pub memory_bytes: u64,
}

/// Lines of a replica's log, in order, as they come (see [`Runtime::logs`]).
pub type LogLines = mpsc::Receiver<String>;

/// Runs replicas and tasks. See the module documentation.
pub trait Runtime: Send + Sync + 'static {
    /// `process` or `docker`, for messages.
    fn name(&self) -> &'static str;

    /// Every [`RuntimeEvent`] from now on.
    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent>;

    /// Starts a replica and supervises it (health checks, restart with backoff). Returns once
    /// it runs, not once it is healthy (wait for [`RuntimeEvent::Healthy`]); also emits
    /// [`RuntimeEvent::Started`].
    fn start(&self, spec: ReplicaSpec) -> BoxFuture<'_, Result<Instance, RuntimeError>>;

    /// Supervises again a replica that an earlier server started: `Ok(true)` when it still
    /// runs (the process runtime checks the `recorded` pid and start time; the Docker runtime
    /// finds the container by its replica label). `Ok(false)`: nothing to adopt, nothing done.
    fn adopt(
        &self,
        spec: ReplicaSpec,
        recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'_, Result<bool, RuntimeError>>;

    /// Stops whatever still runs for a replica that is not (or no longer) supervised and
    /// will not be adopted: a process by `recorded` identity or, when the server died before
    /// recording it, by its `FERRY_REPLICA_ID`; containers by label. Returns how many
    /// instances it stopped.
    fn discard<'a>(
        &'a self,
        id: &'a str,
        recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'a, usize>;

    /// Stops a replica for good (its stop signal, the grace period, then a kill); it is then
    /// forgotten. Unknown id: `Ok(())`.
    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Stops every supervised replica (errors are logged).
    fn stop_all(&self) -> BoxFuture<'_, ()>;

    /// Teardown: stops every supervised replica, then removes whatever else this server still
    /// owns on the runtime (e.g. containers of replicas it no longer supervises); returns how
    /// many of those it removed. By default the same as [`Runtime::stop_all`].
    fn remove_all(&self) -> BoxFuture<'_, Result<usize, RuntimeError>> {
        Box::pin(async move {
            self.stop_all().await;
            Ok(0)
        })
    }

    /// Stops and removes what a one-off task named `name` left running when an earlier
    /// server died during it; returns how many instances. By default nothing: a process task
    /// dies with its process group.
    fn discard_task<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        let _ = name;
        Box::pin(async { Ok(0) })
    }

    /// Takes over a one-off task named `name` that an earlier server started and died
    /// during: waits (up to `timeout`) for the instance still there, running or already
    /// ended, and reports how it ended, its whole output written to `output` (a file is
    /// rewritten, not appended to); it is then removed. `Ok(None)`: nothing to take over.
    /// By default nothing: a process task's group can't be awaited by another server.
    fn adopt_task<'a>(
        &'a self,
        name: &'a str,
        timeout: Duration,
        output: TaskOutput,
    ) -> BoxFuture<'a, Result<Option<TaskOutcome>, RuntimeError>> {
        let _ = (name, timeout, output);
        Box::pin(async { Ok(None) })
    }

    /// After a restart's adoptions: stops and removes what this server owns on the runtime
    /// for a replica that is neither in `keep` (the replicas the store knows) nor
    /// supervised, so nothing runs that no row accounts for; returns how many. By default
    /// nothing: a process replica without a row is found by its `FERRY_REPLICA_ID` when its
    /// row is read ([`Runtime::discard`]).
    fn remove_orphans<'a>(
        &'a self,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        let _ = keep;
        Box::pin(async { Ok(0) })
    }

    /// The [`Usage`] of every supervised replica this runtime can measure, by replica id
    /// (one that it cannot, e.g. one restarting, is left out). Callers sample it every few
    /// seconds and take CPU shares from two samples. By default none: the replicas' CPU and
    /// memory are not sampled (Kubernetes: that needs metrics-server or Prometheus).
    fn usage(&self) -> BoxFuture<'_, BTreeMap<String, Usage>> {
        Box::pin(async { BTreeMap::new() })
    }

    fn status(&self, id: &str) -> Option<ReplicaStatus>;

    /// Every supervised replica, sorted by id.
    fn list(&self) -> Vec<ReplicaStatus>;

    /// Where the replica answers (what the proxy routes to), once it is known.
    fn endpoint(&self, id: &str) -> Option<SocketAddr>;

    /// The last `tail` lines of a replica's log, then (with `follow`) the lines it adds until
    /// the receiver is dropped. Without `follow` the channel closes after the tail.
    fn logs(&self, id: &str, tail: usize, follow: bool) -> LogLines;

    /// Runs a one-off task to its end, or kills it and everything it started at its timeout.
    /// `started` receives the instance as soon as it runs (to persist it before waiting).
    fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> BoxFuture<'_, Result<TaskOutcome, RuntimeError>>;
}
