//! `ferry logs`: the tail of each replica's log file, then (with follow) what they append;
//! also the replicas no longer running (exited before becoming healthy, stopped) since the
//! environment's latest deployment began: their log files are kept until the next
//! deployment of the environment supersedes it ([`prune`]).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
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
            if first {
                // Replicas of the latest deployment no longer running: their log, once.
                let since = match controller.store().latest_deployment(&app, &env).await {
                    Ok(Some(deployment)) => deployment.created_at_ms,
                    _ => i64::MAX,
                };
                let live: HashSet<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
                let dir = log_dir(&controller);
                for gone in gone_replicas(&dir, &app, &env, &live, since)
                    .into_iter()
                    .filter(|g| service.as_ref().is_none_or(|s| s == &g.service))
                {
                    let (text, _) = read_tail(&gone.path, tail);
                    let prefix = format!(
                        "[{} {} {} {}] ",
                        gone.service,
                        gone.version,
                        short(&gone.id),
                        gone.how
                    );
                    let mut chunk = String::with_capacity(text.len() + 64);
                    for line in text.lines() {
                        chunk.push_str(&prefix);
                        chunk.push_str(line);
                        chunk.push('\n');
                    }
                    if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
            }
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

/// The directory of the replicas' log files (`<id>.log`).
fn log_dir(controller: &Controller) -> PathBuf {
    let path = controller.runtime().log_path("x");
    path.parent().map(Path::to_path_buf).unwrap_or(path)
}

/// A replica no longer running whose log file is kept.
#[derive(Debug, PartialEq)]
struct Gone {
    id: String,
    service: String,
    version: String,
    /// `exited` (its last process ended on its own), `stopped`, or `exited N times,
    /// stopped`.
    how: String,
    path: PathBuf,
}

/// The log files of `app`/`env` replicas not in `live`, written to since `since_ms`,
/// oldest first. Replica ids are `app.env.service.version.tail` (names have no dots).
fn gone_replicas(
    dir: &Path,
    app: &str,
    env: &str,
    live: &HashSet<&str>,
    since_ms: i64,
) -> Vec<Gone> {
    let mut found: Vec<(std::time::SystemTime, Gone)> = own_log_files(dir, app, env)
        .into_iter()
        .filter(|(id, _)| !live.contains(id.as_str()))
        .filter_map(|(id, path)| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
            let modified_ms = modified
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_millis()).ok())?;
            if modified_ms < since_ms {
                return None;
            }
            let rest = id.strip_prefix(&format!("{app}.{env}."))?;
            let (service, rest) = rest.split_once('.')?;
            let (version, _) = rest.rsplit_once('.')?;
            let (text, _) = read_from(&path, 0);
            let mut markers = text
                .lines()
                .filter(|l| l.starts_with("--- ") && l.ends_with(" ---"));
            let exits = markers
                .clone()
                .filter(|l| l.starts_with("--- pid "))
                .count();
            let stopped = markers
                .next_back()
                .is_some_and(|l| l.starts_with("--- stopped at "));
            let how = match (exits, stopped) {
                (0, _) => "stopped".to_string(),
                (_, false) => "exited".to_string(),
                (1, true) => "exited once, stopped".to_string(),
                (n, true) => format!("exited {n} times, stopped"),
            };
            Some((
                modified,
                Gone {
                    service: service.to_string(),
                    version: version.to_string(),
                    how,
                    id,
                    path,
                },
            ))
        })
        .collect();
    found.sort_by_key(|a| a.0);
    found.into_iter().map(|(_, gone)| gone).collect()
}

/// `(replica id, path)` of every log file of `app`/`env` in `dir`.
fn own_log_files(dir: &Path, app: &str, env: &str) -> Vec<(String, PathBuf)> {
    let prefix = format!("{app}.{env}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_suffix(".log")?;
            id.starts_with(&prefix)
                .then(|| (id.to_string(), entry.path()))
        })
        .collect()
}

/// A new deployment supersedes the last one: the log files of `app`/`env` replicas that no
/// longer run go (those of running replicas stay).
pub async fn prune(controller: &Controller, app: &str, env: &str) {
    let Ok(replicas) = controller.store().list_replicas(Some(app), Some(env)).await else {
        return;
    };
    let live: HashSet<&str> = replicas.iter().map(|r| r.id.as_str()).collect();
    for (id, path) in own_log_files(&log_dir(controller), app, env) {
        if !live.contains(id.as_str())
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an old replica log");
        }
    }
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
    fn gone_replicas_are_this_environments_logs_not_running_since_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let write = |id: &str, text: &str| {
            std::fs::write(dir.path().join(format!("{id}.log")), text).unwrap()
        };
        write(
            "shop.prod.api.2.0.0.aaaaaa",
            "--- started pid 1 at t ---\nError: bad port\n--- pid 1 exit code 1 at t ---\n",
        );
        write(
            "shop.prod.api.1.0.0.bbbbbb",
            "--- started pid 2 at t ---\nbye\n--- stopped at t ---\n",
        );
        write(
            "shop.prod.api.1.5.0.ffffff",
            "--- started pid 3 at t ---\nno\n--- pid 3 exit code 1 at t ---\n--- started pid 4 at t ---\nno\n--- pid 4 exit code 1 at t ---\n--- stopped at t ---\n",
        );
        write("shop.prod.web.1.0.0.cccccc", "running\n");
        write("shop.staging.api.2.0.0.dddddd", "other env\n");
        write("shop.prod-eu.api.2.0.0.eeeeee", "other env, same prefix\n");
        let live = HashSet::from(["shop.prod.web.1.0.0.cccccc"]);
        let mut gone = gone_replicas(dir.path(), "shop", "prod", &live, 0);
        gone.sort_by(|a, b| a.id.cmp(&b.id));
        let summary: Vec<(&str, &str, &str)> = gone
            .iter()
            .map(|g| (g.service.as_str(), g.version.as_str(), g.how.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("api", "1.0.0", "stopped"),
                ("api", "1.5.0", "exited 2 times, stopped"),
                ("api", "2.0.0", "exited")
            ]
        );
        assert!(gone_replicas(dir.path(), "shop", "prod", &live, i64::MAX).is_empty());
    }

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
