//! Replica log files: append-mode files (0600) the replica (or its log filter) writes to
//! directly, capped in size.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Opens (creating it 0600 and its directory 0700) the log file in append mode.
pub(crate) fn open_append(path: &Path) -> io::Result<File> {
    crate::redact::open_private_append(path)
}

/// Appends one line of our own to a replica log (best effort).
pub(crate) fn append_line(path: &Path, line: &str) {
    let result = open_append(path).and_then(|mut f| writeln!(f, "{line}"));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot write to replica log");
    }
}

/// Most lines [`last_output`] returns.
pub(crate) const LAST_OUTPUT_LINES: usize = 20;
/// Most bytes (of text, after escaping) [`last_output`] returns.
pub(crate) const LAST_OUTPUT_BYTES: usize = 4096;
/// Longest line [`last_output`] keeps whole (in characters); longer ones are clipped.
const LAST_OUTPUT_LINE_CHARS: usize = 300;
/// How far back from the end of the log [`last_output`] reads.
const LAST_OUTPUT_WINDOW: u64 = 64 * 1024;

/// What the replica's latest process wrote before it ended: the last lines after the last
/// `--- started pid` marker (our own `--- … ---` lines left out), at most
/// [`LAST_OUTPUT_LINES`] lines and [`LAST_OUTPUT_BYTES`] bytes, long lines clipped and
/// control characters escaped, so it can go on a timeline as it is. The file is already
/// redacted (a replica with secrets writes through the log filter). Empty when the file
/// can't be read.
pub(crate) fn last_output(path: &Path) -> Vec<String> {
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LAST_OUTPUT_WINDOW);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(len - start).read_to_end(&mut buf).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    // A window that starts mid-file starts mid-line.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    last_lines(lines)
}

/// The tail of `lines` as [`last_output`] returns it: after the last `--- started pid`
/// marker, our own `--- … ---` lines left out, bounded, clipped and escaped.
pub(crate) fn last_lines(mut lines: Vec<&str>) -> Vec<String> {
    if let Some(marker) = lines
        .iter()
        .rposition(|l| l.starts_with("--- started pid "))
    {
        lines.drain(..=marker);
    }
    let ours = |l: &&str| l.starts_with("--- ") && l.ends_with(" ---");
    let mut out: Vec<String> = Vec::new();
    let mut bytes = 0;
    for line in lines.iter().rev().filter(|l| !ours(l)) {
        if out.len() == LAST_OUTPUT_LINES {
            break;
        }
        let line = escape_line(line);
        if bytes + line.len() > LAST_OUTPUT_BYTES {
            break;
        }
        bytes += line.len();
        out.push(line);
    }
    out.reverse();
    out
}

/// Control characters escaped (`\u{1b}`), clipped to [`LAST_OUTPUT_LINE_CHARS`].
fn escape_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (n, c) in line.trim_end_matches('\r').chars().enumerate() {
        if n == LAST_OUTPUT_LINE_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_rfc3339(secs)
}

pub(crate) fn format_rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// When the file is above `max_bytes`, keeps only its last `max_bytes / 2` bytes (from a
/// line start). Copy-tail-then-truncate: writers holding the file with O_APPEND keep
/// writing at the new end; lines written during the copy may be lost. Returns whether the
/// file was cut.
pub(crate) fn cap_log(path: &Path, max_bytes: u64) -> io::Result<bool> {
    if max_bytes == 0 {
        return Ok(false);
    }
    let len = match std::fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    let keep = max_bytes / 2;
    let mut file = OpenOptions::new().read(true).append(true).open(path)?;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(usize::try_from(keep).unwrap_or(0));
    Read::by_ref(&mut file).take(keep).read_to_end(&mut tail)?;
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |nl| nl + 1);
    file.set_len(0)?;
    let mut out = format!(
        "--- log truncated at {} (over {max_bytes} bytes) ---\n",
        now_rfc3339()
    )
    .into_bytes();
    out.extend_from_slice(&tail[start..]);
    file.write_all(&out)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_time() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn last_output_is_the_latest_process_tail_bounded_and_escaped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        let mut text = String::from("--- started pid 1 at 2026-01-01T00:00:00Z ---\nold run\n");
        text.push_str("--- pid 1 exit code 1 at 2026-01-01T00:00:01Z ---\n");
        text.push_str("--- started pid 2 at 2026-01-01T00:00:02Z ---\n");
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        text.push_str(
            "Error: \u{1b}[31mbad\r\n--- pid 2 exit code 1 at 2026-01-01T00:00:03Z ---\n",
        );
        std::fs::write(&path, &text).expect("write");
        let out = last_output(&path);
        assert_eq!(out.len(), LAST_OUTPUT_LINES, "{out:?}");
        assert_eq!(
            out.last().map(String::as_str),
            Some("Error: \\u{1b}[31mbad")
        );
        assert_eq!(out[0], "line 11");
        assert!(
            !out.iter()
                .any(|l| l.contains("old run") || l.starts_with("---"))
        );

        let long = "x".repeat(10_000);
        std::fs::write(
            &path,
            format!("{long}\n{long}\n{long}\n{long}\n{long}\nend\n"),
        )
        .expect("write");
        let out = last_output(&path);
        let bytes: usize = out.iter().map(String::len).sum();
        assert!(bytes <= LAST_OUTPUT_BYTES, "{bytes}");
        assert_eq!(out.last().map(String::as_str), Some("end"));
        assert!(out[0].ends_with('…') && out.len() > 2, "{out:?}");
        assert!(last_output(&dir.path().join("missing.log")).is_empty());
    }

    #[test]
    fn caps_keeping_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.log");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("line {i:05}\n"));
        }
        std::fs::write(&path, &text).expect("write");
        assert!(cap_log(&path, 2000).expect("cap"));
        let after = std::fs::read_to_string(&path).expect("read");
        assert!(after.len() <= 2000, "{}", after.len());
        assert!(after.starts_with("--- log truncated"));
        assert!(after.ends_with("line 00999\n"));
        assert!(!cap_log(&path, 2000).expect("cap again"));
    }
}
