//! [`ProcessRuntime`] behind the [`Runtime`] trait: replicas are local process groups on
//! 127.0.0.1, logs are files, tasks are process groups (see [`crate::task`]).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot};

use crate::runtime::{BoxFuture, Instance, LogLines, Runtime, TaskOutcome, TaskSpec, Usage};
use crate::{
    ProcessIdentity, ProcessRuntime, ReplicaSpec, ReplicaStatus, RuntimeError, RuntimeEvent,
    kill_by_marker, kill_process_group, procfs,
};

/// How long a discarded replica gets between SIGTERM and SIGKILL.
const DISCARD_GRACE: Duration = Duration::from_secs(10);
/// How often a followed log file is read for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The most of a log file read for its tail.
const TAIL_WINDOW: u64 = 256 * 1024;

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        ProcessRuntime::subscribe(self)
    }

    fn start(&self, spec: ReplicaSpec) -> BoxFuture<'_, Result<Instance, RuntimeError>> {
        Box::pin(async move {
            ProcessRuntime::start(self, spec)
                .await
                .map(Instance::Process)
        })
    }

    fn adopt(
        &self,
        spec: ReplicaSpec,
        recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        Box::pin(async move {
            match recorded {
                Some(identity) => ProcessRuntime::adopt(self, spec, identity).await,
                None => Ok(false),
            }
        })
    }

    fn discard<'a>(
        &'a self,
        id: &'a str,
        recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            match recorded {
                Some(identity) if procfs::is_alive(&identity) => {
                    kill_process_group(&identity, DISCARD_GRACE).await;
                    1
                }
                Some(_) => 0,
                // The server died between writing the row and recording the pid.
                None => kill_by_marker(crate::REPLICA_MARKER, id, DISCARD_GRACE)
                    .await
                    .len(),
            }
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(ProcessRuntime::stop(self, id))
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(ProcessRuntime::stop_all(self))
    }

    fn usage(&self) -> BoxFuture<'_, BTreeMap<String, Usage>> {
        // Each replica leads its own process group: one pass over /proc for all of them.
        let leaders: Vec<(String, ProcessIdentity)> = self
            .sup
            .replicas()
            .iter()
            .filter_map(|(id, r)| Some((id.clone(), r.shared().instance.as_ref()?.process()?)))
            .collect();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let groups = leaders.iter().map(|(_, p)| i64::from(p.pid)).collect();
                let usage = procfs::group_usage(&groups);
                leaders
                    .into_iter()
                    .filter(|(_, p)| procfs::is_alive(p))
                    .filter_map(|(id, p)| Some((id, *usage.get(&i64::from(p.pid))?)))
                    .collect()
            })
            .await
            .unwrap_or_default()
        })
    }

    fn status(&self, id: &str) -> Option<ReplicaStatus> {
        ProcessRuntime::status(self, id)
    }

    fn list(&self) -> Vec<ReplicaStatus> {
        ProcessRuntime::list(self)
    }

    fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.sup.endpoint(id)
    }

    fn logs(&self, id: &str, tail: usize, follow: bool) -> LogLines {
        follow_file(self.log_path(id), tail, follow)
    }

    fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> BoxFuture<'_, Result<TaskOutcome, RuntimeError>> {
        Box::pin(crate::task::run(spec, started))
    }
}

/// The last `tail` lines of a file, then (with `follow`) what is appended to it.
pub(crate) fn follow_file(path: std::path::PathBuf, tail: usize, follow: bool) -> LogLines {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let (text, mut offset) = read_tail(&path, tail);
        for line in text.lines() {
            if tx.send(line.to_string()).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut partial = String::new();
        loop {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(FOLLOW_POLL) => {}
            }
            let (text, end) = read_from(&path, offset);
            offset = end;
            partial.push_str(&text);
            while let Some(newline) = partial.find('\n') {
                let line: String = partial.drain(..=newline).collect();
                if tx
                    .send(line.trim_end_matches('\n').to_string())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

/// The last `lines` lines of a file (read from at most its last [`TAIL_WINDOW`] bytes), and
/// the offset of its end.
pub(crate) fn read_tail(path: &Path, lines: usize) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return (String::new(), len);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let kept = all[all.len().saturating_sub(lines)..].join("\n");
    let end = start + bytes.len() as u64;
    (if kept.is_empty() { kept } else { kept + "\n" }, end)
}

/// What a file holds from `offset` on (from its start again if it was cut below `offset`),
/// and the new offset.
pub(crate) fn read_from(path: &Path, offset: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < offset { 0 } else { offset };
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err()
        || file.take(TAIL_WINDOW).read_to_end(&mut bytes).is_err()
    {
        return (String::new(), offset);
    }
    let end = from + bytes.len() as u64;
    (String::from_utf8_lossy(&bytes).into_owned(), end)
}
