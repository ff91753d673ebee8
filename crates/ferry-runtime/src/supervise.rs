//! Spawning replica processes and the per-replica supervision task.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_core::model::ReplicaState;
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::{
    Done, Inner, ProcessIdentity, Replica, ReplicaSpec, RuntimeError, RuntimeEvent, isolation,
    logs, procfs, redact,
};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A replica healthy this long before it exits restarts without accumulated backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// How often an adopted (not our child) process is checked in /proc.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// How often an adopted process is checked while it is being stopped.
const STOP_POLL: Duration = Duration::from_millis(20);
/// How long to wait for a process to vanish after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Polling period before the first successful health check (capped by the interval).
const FAST_HEALTH_POLL: Duration = Duration::from_millis(50);
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// The process being supervised.
pub(crate) enum Proc {
    /// Spawned by this runtime: exit via `wait` (which also reaps it).
    Own {
        child: Child,
        identity: ProcessIdentity,
    },
    /// Started by an earlier server: exit detected by polling /proc.
    Adopted { identity: ProcessIdentity },
}

impl Proc {
    fn identity(&self) -> ProcessIdentity {
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
            Proc::Own { child, identity } => match child.wait().await {
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
pub(crate) fn spawn(
    inner: &Inner,
    spec: &ReplicaSpec,
) -> Result<(Child, ProcessIdentity), RuntimeError> {
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
    let path = inner.log_path(id);
    let log_error = |source| RuntimeError::LogFile {
        id: id.clone(),
        path: path.clone(),
        source,
    };
    // Secrets never reach the file: the output goes through the redacting log filter.
    let (stdout, stderr): (Stdio, Stdio) = match inner.log_filter.get() {
        Some(exe) if !spec.redact.is_empty() => {
            // The filter appends to the file itself; make sure it exists with its mode.
            logs::open_append(&path).map_err(log_error)?;
            let (filter, pipe) =
                redact::spawn_filter(exe, &path, &spec.redact).map_err(log_error)?;
            reap(filter);
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
    Ok((child, identity))
}

/// Waits for a log filter in the background (it ends after its workload), so it never
/// lingers as a zombie while the server lives.
pub(crate) fn reap(mut filter: Child) {
    tokio::spawn(async move {
        let _ = filter.wait().await;
    });
}

enum Outcome {
    Stop,
    Detach,
    Exited(String),
}

/// Supervises one replica until it is stopped (or the runtime is dropped: then it just ends,
/// leaving the process running).
pub(crate) async fn supervise(inner: Arc<Inner>, replica: Arc<Replica>, first: Proc) {
    let id = replica.spec.id.clone();
    let mut backoff = BACKOFF_MIN;
    let mut current = first;
    loop {
        let outcome = tokio::select! {
            biased;
            () = inner.detach.cancelled() => Outcome::Detach,
            () = replica.stop.cancelled() => Outcome::Stop,
            reason = current.wait_exit() => Outcome::Exited(reason),
            never = health_loop(&inner, &replica) => match never {},
        };
        let identity = current.identity();
        match outcome {
            Outcome::Detach => return,
            Outcome::Stop => {
                replica.shared().state = ReplicaState::Stopping;
                let result = terminate(&mut current, replica.spec.stop_timeout).await;
                finish_stopped(&inner, &replica, result);
                return;
            }
            Outcome::Exited(reason) => {
                procfs::kill_stragglers_and_wait(identity.pid, Duration::from_secs(2)).await;
                drop(current);
                tracing::warn!(replica = %id, pid = identity.pid, %reason, "replica exited");
                logs::append_line(
                    &inner.log_path(&id),
                    &format!(
                        "--- pid {} {reason} at {} ---",
                        identity.pid,
                        logs::now_rfc3339()
                    ),
                );
                {
                    let mut shared = replica.shared();
                    if shared
                        .healthy_since
                        .is_some_and(|since| since.elapsed() >= BACKOFF_RESET_AFTER)
                    {
                        backoff = BACKOFF_MIN;
                    }
                    shared.state = ReplicaState::Exited;
                    shared.identity = None;
                    shared.healthy_since = None;
                    shared.last_exit = Some(reason.clone());
                }
                inner.emit(RuntimeEvent::Exited {
                    id: id.clone(),
                    reason,
                    will_restart: true,
                });
            }
        }
        // Restart with backoff until a spawn succeeds or we are told to stop.
        current = loop {
            tokio::select! {
                biased;
                () = inner.detach.cancelled() => return,
                () = replica.stop.cancelled() => {
                    finish_stopped(&inner, &replica, Done::Stopped);
                    return;
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match spawn(&inner, &replica.spec) {
                Ok((child, identity)) => {
                    {
                        let mut shared = replica.shared();
                        shared.state = ReplicaState::Starting;
                        shared.identity = Some(identity);
                        shared.restarts += 1;
                    }
                    inner.emit(RuntimeEvent::Started {
                        id: id.clone(),
                        instance: crate::Instance::Process(identity),
                    });
                    break Proc::Own { child, identity };
                }
                Err(e) => {
                    let reason = format!("restart failed: {e}");
                    tracing::warn!(replica = %id, %reason);
                    replica.shared().last_exit = Some(reason.clone());
                    inner.emit(RuntimeEvent::Exited {
                        id: id.clone(),
                        reason,
                        will_restart: true,
                    });
                }
            }
        };
    }
}

fn finish_stopped(inner: &Inner, replica: &Replica, result: Done) {
    {
        let mut shared = replica.shared();
        shared.state = ReplicaState::Stopped;
        shared.identity = None;
        shared.healthy_since = None;
    }
    logs::append_line(
        &inner.log_path(&replica.spec.id),
        &format!("--- stopped at {} ---", logs::now_rfc3339()),
    );
    inner.emit(RuntimeEvent::Stopped {
        id: replica.spec.id.clone(),
    });
    replica.done.send_replace(result);
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

/// Health checking for the current process; never returns (dropped by the supervisor).
async fn health_loop(inner: &Inner, replica: &Replica) -> Infallible {
    let spec = &replica.spec.health;
    let id = &replica.spec.id;
    if spec.path.is_empty() {
        set_healthy(inner, replica);
        return std::future::pending().await;
    }
    let path = if spec.path.starts_with('/') {
        spec.path.clone()
    } else {
        format!("/{}", spec.path)
    };
    let url = format!("http://127.0.0.1:{}{path}", replica.spec.port);
    let interval = spec.interval.max(MIN_HEALTH_INTERVAL);
    let fast = FAST_HEALTH_POLL.min(interval);
    let healthy_threshold = spec.healthy_threshold.max(1);
    let unhealthy_threshold = spec.unhealthy_threshold.max(1);
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut seen_success = false;
    loop {
        let result = check(&inner.http, &url, spec.timeout).await;
        let state = replica.shared().state;
        match result {
            Ok(()) => {
                seen_success = true;
                successes = successes.saturating_add(1);
                failures = 0;
                if matches!(state, ReplicaState::Starting | ReplicaState::Unhealthy)
                    && successes >= healthy_threshold
                {
                    set_healthy(inner, replica);
                }
            }
            Err(reason) => {
                failures = failures.saturating_add(1);
                successes = 0;
                if state == ReplicaState::Healthy && failures >= unhealthy_threshold {
                    {
                        let mut shared = replica.shared();
                        shared.state = ReplicaState::Unhealthy;
                        shared.healthy_since = None;
                    }
                    tracing::warn!(replica = %id, %reason, "replica unhealthy");
                    inner.emit(RuntimeEvent::Unhealthy {
                        id: id.clone(),
                        reason,
                    });
                }
            }
        }
        tokio::time::sleep(if seen_success { interval } else { fast }).await;
    }
}

fn set_healthy(inner: &Inner, replica: &Replica) {
    {
        let mut shared = replica.shared();
        shared.state = ReplicaState::Healthy;
        shared.ever_healthy = true;
        shared.healthy_since = Some(Instant::now());
    }
    inner.emit(RuntimeEvent::Healthy {
        id: replica.spec.id.clone(),
    });
}

pub(crate) async fn check(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let timeout = if timeout.is_zero() {
        Duration::from_secs(1)
    } else {
        timeout
    };
    let request = http.get(url).timeout(timeout).send();
    match tokio::time::timeout(timeout, request).await {
        Err(_) => Err(format!("GET {url}: timed out after {timeout:?}")),
        Ok(Err(e)) if e.is_timeout() => Err(format!("GET {url}: timed out after {timeout:?}")),
        Ok(Err(e)) if e.is_connect() => Err(format!("GET {url}: connection failed")),
        Ok(Err(e)) => Err(format!("GET {url}: {e}")),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("GET {url}: status {}", response.status().as_u16())),
    }
}
