//! One-off tasks as local processes: the one runner behind hooks, gate command checks and
//! command analyses. Each task leads its own process group, so a timeout (or its end) takes
//! everything it started with it (`sh -c 'sleep 300 & …'` included).

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::oneshot;

use crate::runtime::{Instance, TaskEnd, TaskOutcome, TaskOutput, TaskSpec};
use crate::{ProcessIdentity, RuntimeError, isolation, kill_process_group, procfs, redact};

/// How long a timed-out task's group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(1);
/// How long the leftovers of a finished task's group get to vanish after SIGKILL.
const STRAGGLER_WAIT: Duration = Duration::from_secs(2);
/// How often a file output is checked against its cap while the task runs.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Runs `spec` as a local process in its own group (see the module documentation), on a
/// clean environment ([`crate::isolation::base_env`] and `spec.env_vars`), as
/// `spec.run_as`.
pub async fn run(
    spec: TaskSpec,
    started: Option<oneshot::Sender<Instance>>,
) -> Result<TaskOutcome, RuntimeError> {
    let began = Instant::now();
    let Some((program, args)) = spec.argv.split_first() else {
        return Err(RuntimeError::EmptyCommand { name: spec.name });
    };
    if let Some(dir) = &spec.cwd
        && !dir.is_dir()
    {
        return Err(RuntimeError::TaskDir {
            name: spec.name.clone(),
            dir: dir.clone(),
        });
    }
    let mut command = Command::new(program);
    isolation::apply(&mut command, &spec.env_vars, spec.run_as.as_ref());
    command
        .args(args)
        .stdin(Stdio::null())
        // Its own group: a timeout stops what it started too. The group goes while its
        // leader still lives, so the leader is never dropped-and-killed alone.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &spec.cwd {
        command.current_dir(dir);
    }
    let mut log_filter = None;
    match &spec.output {
        TaskOutput::Capture { .. } => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        TaskOutput::File { path, filter, .. } => {
            let log_error = |source| RuntimeError::LogFile {
                id: spec.name.clone(),
                path: path.clone(),
                source,
            };
            let out = crate::logs::open_append(path).map_err(log_error)?;
            match filter {
                Some(filter) if !filter.values.is_empty() => {
                    let (child, pipe) = redact::spawn_filter(&filter.exe, path, &filter.values)
                        .map_err(log_error)?;
                    log_filter = Some(child);
                    let err = pipe.try_clone().map_err(log_error)?;
                    command.stdout(pipe).stderr(err);
                }
                _ => {
                    let err = out.try_clone().map_err(log_error)?;
                    command.stdout(out).stderr(err);
                }
            }
        }
    }
    let spawned = command.spawn();
    // Our copies of the filter's pipe must close, or it never sees the end of the output.
    drop(command);
    let mut child = spawned.map_err(|source| RuntimeError::TaskStart {
        name: spec.name.clone(),
        program: program.clone(),
        hint: isolation::spawn_hint(&source, spec.run_as.as_ref()),
        source,
    })?;
    // Not yet waited for, so /proc/PID exists even if it already exited: a task that
    // exits at once is a zombie here, and its group's stragglers must still be found.
    let identity = child.id().and_then(|pid| {
        procfs::read_stat(pid).map(|stat| ProcessIdentity {
            pid,
            start_time: stat.start_time,
        })
    });
    if let (Some(identity), Some(started)) = (identity, started) {
        let _ = started.send(Instance::Process(identity));
    }
    let max = match &spec.output {
        TaskOutput::Capture { max_bytes } => *max_bytes,
        TaskOutput::File { .. } => 0,
    };
    let stdout = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(read_tail(pipe, max)));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(read_tail(pipe, max)));
    let trim = match &spec.output {
        TaskOutput::File {
            path, max_bytes, ..
        } => Some((path.clone(), *max_bytes)),
        TaskOutput::Capture { .. } => None,
    };

    let waited = tokio::time::timeout(spec.timeout, async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        loop {
            tokio::select! {
                status = child.wait() => return status,
                _ = tick.tick() => if let Some((path, max)) = &trim {
                    trim_running_output(path, *max);
                },
            }
        }
    })
    .await;
    let end = match waited {
        Ok(Ok(status)) => {
            // The task is done; anything it left behind in its group goes too.
            if let Some(identity) = identity {
                procfs::kill_stragglers_and_wait(identity.pid, STRAGGLER_WAIT).await;
            }
            match (status.code(), status.signal()) {
                (Some(code), _) => TaskEnd::Exited(code),
                (None, Some(signal)) => TaskEnd::Signalled(signal),
                (None, None) => TaskEnd::Signalled(0),
            }
        }
        Ok(Err(source)) => {
            if let Some(identity) = identity {
                kill_process_group(&identity, KILL_GRACE).await;
            }
            return Err(RuntimeError::Wait {
                id: spec.name,
                source,
            });
        }
        Err(_) => {
            if let Some(identity) = identity {
                kill_process_group(&identity, KILL_GRACE).await;
            }
            let _ = child.kill().await;
            let _ = child.wait().await;
            TaskEnd::TimedOut
        }
    };
    // The filter ends once everything the task started has closed the pipe.
    if let Some(mut filter) = log_filter
        && tokio::time::timeout(STRAGGLER_WAIT, filter.wait())
            .await
            .is_err()
    {
        tracing::warn!(task = %spec.name, "the task's log filter still runs (a leftover process holds its output)");
        crate::supervise::reap(filter);
    }
    // The group is gone, so the pipes are closed; bounded anyway (a member that left the
    // group with setsid could hold them).
    let collect = |reader: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match reader {
            Some(handle) => match tokio::time::timeout(STRAGGLER_WAIT, handle).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            },
            None => String::new(),
        }
    };
    Ok(TaskOutcome {
        end,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
        took: began.elapsed(),
    })
}

/// Reads a stream to its end, keeping only its last `max` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > max {
                    kept.drain(..kept.len() - max);
                }
            }
        }
    }
}

/// While a task writes: once its output file passes 4× `max`, keeps only the last `max`
/// bytes (lines written during the trim may be lost; the file stays bounded).
pub fn trim_running_output(path: &Path, max: u64) {
    if let Err(e) = trim(path, max) {
        tracing::debug!(path = %path.display(), error = %e, "cannot trim task output");
    }
}

fn trim(path: &Path, max: u64) -> io::Result<()> {
    let len = std::fs::metadata(path)?.len();
    if max == 0 || len <= 4 * max {
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(len - max))?;
    f.read_to_end(&mut tail)?;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    writeln!(f, "--- output truncated to its last {max} bytes ---")?;
    f.write_all(&tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_output_is_trimmed_past_four_caps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        std::fs::write(&path, "y".repeat(1000)).expect("write");
        trim_running_output(&path, 1000);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 1000);
        std::fs::write(&path, "z".repeat(5000)).expect("write");
        trim_running_output(&path, 1000);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("--- output truncated"), "{text}");
        assert!(text.len() > 1000 && text.len() < 1100, "{}", text.len());
    }

    #[tokio::test]
    async fn captured_output_keeps_the_tail() {
        let tail = read_tail(&b"0123456789"[..], 4).await;
        assert_eq!(tail, b"6789");
    }
}
