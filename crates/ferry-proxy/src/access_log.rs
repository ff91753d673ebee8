//! Optional access log of a site: one JSON line per answered request, appended to a file
//! by a thread of its own, so a slow disk never stalls the data plane (lines that do not
//! fit the bounded queue are counted and dropped, never waited for).
//!
//! A line:
//! `{"time":"2026-12-06T06:20:01.123Z","request_id":"…","listener":"shop/prod","host":"shop.example.com","method":"GET","path":"/cart","protocol":"HTTP/1.1","service":"web","version":"v2","upstream":"127.0.0.1:4101","status":200,"duration_ms":0.412}`
//!
//! `path` has no query string (it may carry secrets) and is cut at 1024 bytes, `host` at
//! 255; `service`, `version` and `upstream` are `null` when the proxy answered by itself
//! before choosing them (no route, redirect); `duration_ms` runs from the request head
//! to the response head. Requests abandoned by the client before an answer are not
//! logged (they are counted as `client_errors` in the stats).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Lines waiting for the writer thread; more are dropped (and counted).
const QUEUE: usize = 16 * 1024;
const MAX_PATH: usize = 1024;
const MAX_HOST: usize = 255;

/// One open access log file.
#[derive(Debug)]
pub(crate) struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    path: PathBuf,
    dropped: AtomicU64,
}

/// What one line says.
#[derive(Serialize)]
pub(crate) struct Entry<'a> {
    pub time: Rfc3339,
    pub request_id: &'a str,
    pub listener: &'a str,
    pub host: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub service: Option<&'a str>,
    pub version: Option<&'a str>,
    pub upstream: Option<SocketAddr>,
    pub status: u16,
    pub duration_ms: f64,
}

impl AccessLog {
    /// Queues one line (never blocks).
    pub fn write(&self, entry: &Entry<'_>) {
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(
            &mut line,
            &Entry {
                path: cut(entry.path, MAX_PATH),
                host: entry.host.map(|h| cut(h, MAX_HOST)),
                ..*entry
            },
        )
        .is_err()
        {
            return;
        }
        line.push(b'\n');
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                if self.dropped.fetch_add(1, Relaxed) == 0 {
                    tracing::warn!(path = %self.path.display(), "access log queue full; dropping lines");
                }
            }
        }
    }
}

/// The open access logs by path, shared across route table generations (a push that
/// keeps a site's log does not reopen it); a log closes when no table uses it any more.
#[derive(Debug, Default)]
pub(crate) struct AccessLogs {
    open: Mutex<HashMap<PathBuf, Weak<AccessLog>>>,
}

impl AccessLogs {
    /// The log writing to `path`, opened (created 0640, appended to) if needed.
    pub fn get(&self, path: &Path) -> std::io::Result<Arc<AccessLog>> {
        let mut open = match self.open.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        open.retain(|_, w| w.strong_count() > 0);
        if let Some(log) = open.get(path).and_then(Weak::upgrade) {
            return Ok(log);
        }
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(path)?
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let shown = path.display().to_string();
        std::thread::Builder::new()
            .name("ferry-access-log".into())
            .spawn(move || write_lines(file, rx, &shown))?;
        let log = Arc::new(AccessLog {
            tx,
            path: path.to_path_buf(),
            dropped: AtomicU64::new(0),
        });
        open.insert(path.to_path_buf(), Arc::downgrade(&log));
        Ok(log)
    }
}

/// The writer thread: batches what is queued, flushes when the queue is empty, and ends
/// (after writing everything) once the log is dropped.
fn write_lines(file: std::fs::File, rx: Receiver<Vec<u8>>, path: &str) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, file);
    let mut failing = false;
    while let Ok(line) = rx.recv() {
        let mut r = out.write_all(&line);
        while r.is_ok()
            && let Ok(line) = rx.try_recv()
        {
            r = out.write_all(&line);
        }
        let r = r.and_then(|()| out.flush());
        match r {
            Err(e) if !failing => {
                tracing::warn!(path, error = %e, "cannot write the access log");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A time written as RFC 3339 UTC with milliseconds (`2026-12-06T06:20:01.123Z`).
#[derive(Clone, Copy)]
pub(crate) struct Rfc3339(pub SystemTime);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = self
            .0
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            since.subsec_millis()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |ms: u64| Rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 23:59:59.999
        assert_eq!(at(951_868_799_999), "2000-02-29T23:59:59.999Z");
        // 2026-12-06 06:20:01.123
        assert_eq!(at(1_796_538_001_123), "2026-12-06T06:20:01.123Z");
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
    }

    #[test]
    fn long_values_are_cut_on_char_boundaries() {
        assert_eq!(cut("abc", 2), "ab");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("abc", 5), "abc");
    }
}
