//! The process runtime's [`Driver`]: spawning replica processes (each in its own process
//! group, output appended to its log file), watching them exit, stopping their group.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::runtime::Instance;
use crate::supervisor::{Done, Driver, Started};
use crate::{
    ProcessIdentity, REPLICA_MARKER, ReplicaSpec, RuntimeError, isolation, logs, procfs, redact,
};

/// How often an adopted (not our child) process is checked in /proc.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How often an adopted process is checked while it is being stopped.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long an exit waits for the log filter to write what the process said last.
const FILTER_FLUSH: Duration = Duration::from_secs(2);
/// How long to wait for a process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Replicas as local process groups on 127.0.0.1, logs in `log_dir/<id>.log`.
pub(crate) struct ProcessDriver {
    pub log_dir: PathBuf,
    pub max_log_bytes: u64,
    pub janitor_started: AtomicBool,
    /// The `ferry` executable that runs the redacting log filter.
    pub log_filter: OnceLock<PathBuf>,
}

impl ProcessDriver {
    pub(crate) fn log_path(&self, id: &str) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }
}

impl Driver for ProcessDriver {
    type Running = Proc;
    /// Nothing of an exited process is needed to start it again.
    type Exited = ();

    async fn wait_exit(&self, running: &mut Proc) -> String {
        running.wait_exit().await
    }

    async fn exited(&self, spec: &ReplicaSpec, running: Proc, reason: &str) {
        let identity = running.identity();
        procfs::kill_stragglers_and_wait(identity.pid, Duration::from_secs(2)).await;
        // The filter ends once nothing holds the pipe: then the log has it all.
        if let Proc::Own {
            filter: Some(filter),
            ..
        } = running
        {
            let _ = tokio::time::timeout(FILTER_FLUSH, filter).await;
        }
        logs::append_line(
            &self.log_path(&spec.id),
            &format!(
                "--- pid {} {reason} at {} ---",
                identity.pid,
                logs::now_rfc3339()
            ),
        );
    }

    async fn restart(&self, spec: &ReplicaSpec, (): &()) -> Result<Started<Proc>, String> {
        let running = spawn(self, spec).map_err(|e| e.to_string())?;
        let identity = running.identity();
        Ok(Started {
            running,
            instance: Instance::Process(identity),
            pid: Some(identity.pid),
        })
    }

    async fn stop(&self, spec: &ReplicaSpec, mut running: Proc) -> Done {
        terminate(&mut running, spec.stop_timeout).await
    }

    async fn discard_exited(&self, _spec: &ReplicaSpec, (): ()) {}

    fn stopped(&self, spec: &ReplicaSpec) {
        logs::append_line(
            &self.log_path(&spec.id),
            &format!("--- stopped at {} ---", logs::now_rfc3339()),
        );
    }

    async fn last_output(&self, spec: &ReplicaSpec, _exited: &Self::Exited) -> Vec<String> {
        logs::last_output(&self.log_path(&spec.id))
    }

    fn endpoint(&self, spec: &ReplicaSpec) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port))
    }
}

/// The process being supervised.
pub(crate) enum Proc {
    /// Spawned by this runtime: exit via `wait` (which also reaps it). `filter`: the log
    /// filter's end, when its output goes through one.
    Own {
        child: Child,
        identity: ProcessIdentity,
        filter: Option<tokio::task::JoinHandle<()>>,
    },
    /// Started by an earlier server: exit detected by polling /proc.
    Adopted { identity: ProcessIdentity },
}

impl Proc {
    pub(crate) fn identity(&self) -> ProcessIdentity {
        match self {
            Proc::Own { identity, .. } | Proc::Adopted { identity } => *identity,
        }
    }

    /// Waits until the process has exited; returns how. Cancel safe.
    async fn wait_exit(&mut self) -> String {
        self.wait_exit_polling(ADOPTED_POLL).await
    }

    /// Like `wait_exit`, polling /proc every `poll` for an adopted process.
    async fn wait_exit_polling(&mut self, poll: Duration) -> String {
        match self {
            Proc::Own {
                child, identity, ..
            } => match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => {
                    tracing::warn!(pid = identity.pid, error = %e, "wait failed; polling /proc");
                    poll_until_gone(identity, poll).await;
                    format!("exited (wait failed: {e})")
                }
            },
            Proc::Adopted { identity } => {
                poll_until_gone(identity, poll).await;
                "exited (adopted process: status unknown)".to_string()
            }
        }
    }
}

async fn poll_until_gone(identity: &ProcessIdentity, poll: Duration) {
    while procfs::is_alive(identity) {
        tokio::time::sleep(poll).await;
    }
}

pub(crate) fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit code {code}")
    } else if let Some(signal) = status.signal() {
        format!("signal {signal}")
    } else {
        status.to_string()
    }
}

fn substitute(arg: &str, spec: &ReplicaSpec) -> String {
    arg.replace("${PORT}", &spec.port.to_string())
        .replace("${VERSION}", &spec.version)
}

/// Spawns the replica's process in its own process group, output appended to its log file.
pub(crate) fn spawn(driver: &ProcessDriver, spec: &ReplicaSpec) -> Result<Proc, RuntimeError> {
    let id = &spec.id;
    let argv: Vec<String> = spec.argv.iter().map(|a| substitute(a, spec)).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(RuntimeError::EmptyArgv { id: id.clone() });
    };
    if let Some(dir) = &spec.cwd
        && !dir.is_dir()
    {
        return Err(RuntimeError::MissingCwd {
            id: id.clone(),
            dir: dir.clone(),
        });
    }
    let path = driver.log_path(id);
    let log_error = |source| RuntimeError::LogFile {
        id: id.clone(),
        path: path.clone(),
        source,
    };
    // Secrets never reach the file: the output goes through the redacting log filter.
    let mut filter_end = None;
    let (stdout, stderr): (Stdio, Stdio) = match driver.log_filter.get() {
        Some(exe) if !spec.redact.is_empty() => {
            // The filter appends to the file itself; make sure it exists with its mode.
            logs::open_append(&path).map_err(log_error)?;
            let (filter, pipe) =
                redact::spawn_filter(exe, &path, &spec.redact).map_err(log_error)?;
            filter_end = Some(reap(filter));
            let err = pipe.try_clone().map_err(log_error)?;
            (pipe.into(), err.into())
        }
        _ => {
            let log = logs::open_append(&path).map_err(log_error)?;
            let err = log.try_clone().map_err(log_error)?;
            (log.into(), err.into())
        }
    };

    let mut command = Command::new(program);
    let mut vars = BTreeMap::from([
        ("PORT".to_string(), spec.port.to_string()),
        ("VERSION".to_string(), spec.version.clone()),
        ("FERRY_APP".to_string(), spec.app.clone()),
        ("FERRY_ENV".to_string(), spec.env.clone()),
        ("FERRY_SERVICE".to_string(), spec.service.clone()),
    ]);
    vars.extend(spec.env_vars.clone());
    // The runtime's own marker: a replica whose pid was never recorded (the server died
    // right after starting it) is found by it ([`crate::kill_by_marker`]).
    vars.insert(REPLICA_MARKER.to_string(), spec.id.clone());
    isolation::apply(&mut command, &vars, spec.run_as.as_ref());
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    let child = command.spawn().map_err(|source| RuntimeError::Spawn {
        id: id.clone(),
        program: program.clone(),
        hint: isolation::spawn_hint(&source, spec.run_as.as_ref()),
        source,
    })?;
    // Our copies of the pipe's write end must close, or the filter never sees the end.
    drop(command);
    // Not yet waited for, so /proc/PID exists even if it already exited (zombie).
    let identity = child
        .id()
        .and_then(|pid| {
            procfs::read_stat(pid).map(|stat| ProcessIdentity {
                pid,
                start_time: stat.start_time,
            })
        })
        .ok_or_else(|| RuntimeError::Identity {
            id: id.clone(),
            pid: child.id().unwrap_or(0),
        })?;
    logs::append_line(
        &path,
        &format!(
            "--- started pid {} at {} ---",
            identity.pid,
            logs::now_rfc3339()
        ),
    );
    tracing::info!(replica = %id, pid = identity.pid, "replica started");
    Ok(Proc::Own {
        child,
        identity,
        filter: filter_end,
    })
}

/// Waits for a log filter in the background (it ends after its workload), so it never
/// lingers as a zombie while the server lives. The handle ends with it.
pub(crate) fn reap(mut filter: Child) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = filter.wait().await;
    })
}

/// SIGTERM to the group, wait up to `stop_timeout`, SIGKILL the group, wait.
async fn terminate(current: &mut Proc, stop_timeout: Duration) -> Done {
    let identity = current.identity();
    procfs::signal_identity(&identity, Signal::SIGTERM);
    if tokio::time::timeout(stop_timeout, current.wait_exit_polling(STOP_POLL))
        .await
        .is_err()
    {
        tracing::info!(pid = identity.pid, "no exit after SIGTERM; sending SIGKILL");
        procfs::signal_identity(&identity, Signal::SIGKILL);
        if tokio::time::timeout(KILL_WAIT, current.wait_exit_polling(STOP_POLL))
            .await
            .is_err()
        {
            return Done::Stuck(identity.pid);
        }
    }
    procfs::kill_stragglers_and_wait(identity.pid, Duration::from_secs(2)).await;
    Done::Stopped
}
