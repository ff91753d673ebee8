//! Secret redaction of workload output, applied when the output is written.
//!
//! A [`Redactor`] replaces every occurrence of a secret value, and of its simple encodings
//! (base64 standard and URL-safe, padded or not; hex; percent-encoding), by `[redacted]`.
//! Values shorter than [`MIN_SECRET_LEN`] bytes are left alone (they would match everywhere).
//!
//! Output that must not reach the disk in plaintext goes through a pipe into the log
//! filter, a small process of its own ([`spawn_filter`] starts `ferry __log-filter`, which
//! runs [`run_filter`]): it survives the server like the workload does, and it redacts the
//! stream as it arrives ([`StreamRedactor`] holds back only a tail that could be the start of
//! a secret), so the file never holds a plaintext value, not even while the workload runs
//! or after the server died.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";
/// Shorter values are not redacted.
pub const MIN_SECRET_LEN: usize = 4;
/// The hidden `ferry` subcommand that runs [`run_filter`].
pub const FILTER_SUBCOMMAND: &str = "__log-filter";
/// Most secret values a filter accepts, and the largest one (the header is bounded).
const MAX_VALUES: usize = 4096;
const MAX_VALUE_LEN: usize = 64 * 1024;

/// Replaces secret values and their simple encodings.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    patterns: Vec<Vec<u8>>,
    matcher: Option<AhoCorasick>,
    longest: usize,
}

impl Redactor {
    /// A redactor for these values (every version of every secret a process could have
    /// seen); each also in its encodings.
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for value in values {
            let value = value.as_ref();
            if value.len() < MIN_SECRET_LEN {
                continue;
            }
            patterns.push(value.to_vec());
            for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
                patterns.push(engine.encode(value).into_bytes());
            }
            let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
            patterns.push(hex.to_uppercase().into_bytes());
            patterns.push(hex.into_bytes());
            patterns.push(
                percent_encoding::percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
                    .into_bytes(),
            );
        }
        patterns.sort();
        patterns.dedup();
        let longest = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let matcher = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Redactor {
            patterns,
            matcher,
            longest,
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `text` with every value replaced.
    pub fn redact(&self, text: &str) -> String {
        match &self.matcher {
            None => text.to_string(),
            Some(m) => m.replace_all(text, &vec![REDACTED; self.patterns.len()]),
        }
    }

    /// `bytes` with every value replaced.
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        match &self.matcher {
            None => bytes.to_vec(),
            Some(m) => m.replace_all_bytes(bytes, &vec![REDACTED.as_bytes(); self.patterns.len()]),
        }
    }

    /// A redactor of a stream that arrives in pieces.
    pub fn stream(&self) -> StreamRedactor<'_> {
        StreamRedactor {
            redactor: self,
            held: Vec::new(),
        }
    }

    /// Whether `tail` is a proper prefix of some pattern (a value may be completed later).
    fn could_continue(&self, tail: &[u8]) -> bool {
        self.patterns
            .iter()
            .any(|p| p.len() > tail.len() && p.starts_with(tail))
    }
}

/// Redacts a byte stream: what [`StreamRedactor::push`] returns may be written out at once;
/// only a tail that could be the beginning of a secret is held back until more arrives (or
/// [`StreamRedactor::finish`]).
pub struct StreamRedactor<'a> {
    redactor: &'a Redactor,
    held: Vec<u8>,
}

impl StreamRedactor<'_> {
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(matcher) = &self.redactor.matcher else {
            return chunk.to_vec();
        };
        self.held.extend_from_slice(chunk);
        let len = self.held.len();
        // The earliest start of a tail that may still grow into a match.
        let from = len.saturating_sub(self.redactor.longest.saturating_sub(1));
        let hold_at = (from..len)
            .find(|&s| self.redactor.could_continue(&self.held[s..]))
            .unwrap_or(len);
        let mut out = Vec::with_capacity(len);
        let mut last = 0;
        for m in matcher.find_iter(&self.held) {
            if m.start() >= hold_at {
                break;
            }
            out.extend_from_slice(&self.held[last..m.start()]);
            out.extend_from_slice(REDACTED.as_bytes());
            last = m.end();
        }
        let cut = hold_at.max(last);
        out.extend_from_slice(&self.held[last..cut]);
        self.held.drain(..cut);
        out
    }

    /// The rest, redacted.
    pub fn finish(self) -> Vec<u8> {
        self.redactor.redact_bytes(&self.held)
    }
}

/// Output to redact on its way to a file: the `ferry` executable that runs the filter and
/// the secret values (every version the writer may know).
#[derive(Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub exe: PathBuf,
    pub values: Vec<String>,
}

impl std::fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFilter")
            .field("exe", &self.exe)
            .field("values", &self.values.len())
            .finish()
    }
}

/// Starts the log filter (`exe __log-filter --out OUT`) in its own process group, hands it
/// the secret values, and returns the pipe a workload writes its output to (give it as the
/// workload's stdout and stderr, then drop it). The filter appends the redacted stream to
/// `out` (mode 0600) and ends when every writer has closed the pipe.
pub fn spawn_filter(
    exe: &Path,
    out: &Path,
    values: &[String],
) -> io::Result<(tokio::process::Child, io::PipeWriter)> {
    let (reader, mut writer) = io::pipe()?;
    let child = tokio::process::Command::new(exe)
        .arg(FILTER_SUBCOMMAND)
        .arg("--out")
        .arg(out)
        .env_clear()
        .stdin(reader)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()?;
    let values: Vec<&String> = values
        .iter()
        .filter(|v| v.len() >= MIN_SECRET_LEN && v.len() <= MAX_VALUE_LEN)
        .take(MAX_VALUES)
        .collect();
    let mut header = Vec::new();
    header.extend_from_slice(&(values.len() as u32).to_be_bytes());
    for value in values {
        header.extend_from_slice(&(value.len() as u32).to_be_bytes());
        header.extend_from_slice(value.as_bytes());
    }
    writer.write_all(&header)?;
    Ok((child, writer))
}

/// The log filter's main: reads the secret values (a count, then length-prefixed values)
/// and then the stream from `input`, appends it redacted to `out`.
pub fn run_filter(mut input: impl Read, out: &Path) -> io::Result<()> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut word = [0u8; 4];
    input.read_exact(&mut word)?;
    let count = u32::from_be_bytes(word) as usize;
    if count > MAX_VALUES {
        return Err(invalid("too many values"));
    }
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        input.read_exact(&mut word)?;
        let len = u32::from_be_bytes(word) as usize;
        if len > MAX_VALUE_LEN {
            return Err(invalid("value too long"));
        }
        let mut value = vec![0u8; len];
        input.read_exact(&mut value)?;
        values.push(value);
    }
    let redactor = Redactor::new(&values);
    drop(values);
    let mut file = open_private_append(out)?;
    let mut stream = redactor.stream();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let clean = stream.push(&buf[..n]);
        if !clean.is_empty() {
            file.write_all(&clean)?;
        }
    }
    file.write_all(&stream.finish())
}

/// Opens (creating it 0600, and its directory 0700) a file in append mode.
pub fn open_private_append(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_all(r: &Redactor, chunks: &[&[u8]]) -> String {
        let mut s = r.stream();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(s.push(c));
        }
        out.extend(s.finish());
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn redacts_values_and_encodings() {
        let r = Redactor::new(["hunter22", "old-secret", "abc"]);
        let b64 = STANDARD.encode("hunter22");
        let text = format!(
            "pw=hunter22 b64={b64} url={} hex=68756e7465723232 old=old-secret short=abc pct=old%2Dsecret",
            URL_SAFE_NO_PAD.encode("old-secret")
        );
        let clean = r.redact(&text);
        assert_eq!(
            clean,
            "pw=[redacted] b64=[redacted] url=[redacted] hex=[redacted] old=[redacted] short=abc pct=[redacted]"
        );
        assert!(Redactor::new(["ab"]).is_empty());
    }

    #[test]
    fn a_stream_split_anywhere_is_redacted_like_the_whole() {
        let r = Redactor::new(["hunter22", "hunter22-longer"]);
        let text = b"a hunter22 b hunter22-longer c hunte d hunter2";
        let whole = r.redact(std::str::from_utf8(text).expect("utf8"));
        assert_eq!(
            whole, "a [redacted] b [redacted] c hunte d hunter2",
            "longest match wins"
        );
        for i in 0..text.len() {
            for j in i..text.len() {
                let got = stream_all(&r, &[&text[..i], &text[i..j], &text[j..]]);
                assert_eq!(got, whole, "split at {i}, {j}");
            }
        }
        // Only what may start a secret is held back.
        let mut s = r.stream();
        assert_eq!(s.push(b"line one\n"), b"line one\n");
        assert_eq!(s.push(b"x hun"), b"x ");
        assert_eq!(s.push(b"gry\n"), b"hungry\n");
    }

    #[test]
    fn the_filter_reads_its_values_then_the_stream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("sub").join("out.log");
        let mut input = Vec::new();
        input.extend_from_slice(&2u32.to_be_bytes());
        for v in ["s3cr3t-v1", "s3cr3t-v2"] {
            input.extend_from_slice(&(v.len() as u32).to_be_bytes());
            input.extend_from_slice(v.as_bytes());
        }
        input.extend_from_slice(b"old s3cr3t-v1 new s3cr3t-v2\n");
        run_filter(input.as_slice(), &out).expect("filter");
        assert_eq!(
            std::fs::read_to_string(&out).expect("read"),
            "old [redacted] new [redacted]\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(out.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(run_filter(&b"\xff\xff\xff\xff"[..], &out).is_err());
    }
}
