//! `ferry logs`: the tail of each replica's log file, then (with follow) what they append.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::controller::Controller;

const FOLLOW_POLL: Duration = Duration::from_millis(250);

pub fn stream(
    controller: Arc<Controller>,
    app: String,
    env: String,
    service: Option<String>,
    tail: usize,
    follow: bool,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut offsets: HashMap<String, u64> = HashMap::new();
        let mut streamed: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut first = true;
        loop {
            let Ok(replicas) = controller
                .store()
                .list_replicas(Some(&app), Some(&env))
                .await
            else {
                break;
            };
            for replica in replicas
                .iter()
                .filter(|r| service.as_ref().is_none_or(|s| s == &r.service))
            {
                let path = controller.runtime().log_path(&replica.id);
                let prefix = format!(
                    "[{} {} {}] ",
                    replica.service,
                    replica.version,
                    short(&replica.id)
                );
                // runtime: a container's log comes from the engine, streamed once per replica.
                if controller.runtime().is_container(&replica.id) {
                    if !streamed.insert(replica.id.clone()) {
                        continue;
                    }
                    let lines_wanted = if first { tail } else { usize::MAX >> 1 };
                    let mut lines = controller.runtime().logs(&replica.id, lines_wanted, follow);
                    let tx = tx.clone();
                    let forward = async move {
                        while let Some(line) = lines.recv().await {
                            if tx
                                .send(Bytes::from(format!("{prefix}{line}\n")))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    };
                    if follow {
                        tokio::spawn(forward);
                    } else {
                        forward.await;
                    }
                    continue;
                }
                let known = offsets.get(&replica.id).copied();
                let (text, end) = match known {
                    None if first => read_tail(&path, tail),
                    None => read_from(&path, 0),
                    Some(offset) => read_from(&path, offset),
                };
                offsets.insert(replica.id.clone(), end);
                if text.is_empty() {
                    continue;
                }
                let mut chunk = String::with_capacity(text.len() + 64);
                for line in text.lines() {
                    chunk.push_str(&prefix);
                    chunk.push_str(line);
                    chunk.push('\n');
                }
                if tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
            }
            first = false;
            if !follow {
                break;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok(chunk), rx))
    })
}

fn short(id: &str) -> &str {
    id.rsplit('.').next().unwrap_or(id)
}

/// The last `lines` complete lines of the file, and the offset just past them.
fn read_tail(path: &std::path::Path, lines: usize) -> (String, u64) {
    let (text, end) = read_from(path, 0);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    (all[start..].join("\n"), end)
}

/// Complete lines appended after `offset` (a truncated file starts over), and the new offset.
fn read_from(path: &std::path::Path, offset: u64) -> (String, u64) {
    let Ok(mut file) = std::fs::File::open(path) else {
        return (String::new(), offset);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = if len < offset { 0 } else { offset };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), offset);
    }
    let mut buf = Vec::new();
    if file.take(len - offset).read_to_end(&mut buf).is_err() {
        return (String::new(), offset);
    }
    // Keep a partial last line for the next read.
    let complete = buf
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    buf.truncate(complete);
    (
        String::from_utf8_lossy(&buf).into_owned(),
        offset + complete as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_incremental_reads_keep_partial_lines_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.log");
        std::fs::write(&path, "one\ntwo\nthree\npart").unwrap();
        let (text, end) = read_tail(&path, 2);
        assert_eq!(text, "two\nthree");
        assert_eq!(end, "one\ntwo\nthree\n".len() as u64);
        std::fs::write(&path, "one\ntwo\nthree\npartial done\nnext\n").unwrap();
        let (text, _) = read_from(&path, end);
        assert_eq!(text, "partial done\nnext\n");
        let (text, end) = read_from(&path, 10_000);
        assert_eq!(
            text.lines().count(),
            5,
            "a truncated file is read from the start"
        );
        assert!(end > 0);
    }
}
