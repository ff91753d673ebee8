//! The tamper-evident audit log, pure: sealing records into a SHA-256 hash chain,
//! verifying a chain and saying where it breaks, and HMAC-signed checkpoints.
//!
//! # Record hash (format v1 — never change it silently; a golden test pins it)
//! `hash = lowercase_hex(SHA-256(canonical))`, where `canonical` is the UTF-8 bytes of
//! this JSON object, with **no whitespace**, **keys in exactly this order**:
//!
//! ```text
//! {"seq":…,"prev_hash":…,"at_ms":…,"actor":…,"source":…,"action":…,"app":…,"env":…,
//!  "target":…,"summary":…,"reason":…,"outcome":…}
//! ```
//!
//! - `seq`, `at_ms`: JSON integers in plain decimal (`-` sign if negative, no leading
//!   zeros, no exponent).
//! - `prev_hash` and every other field: JSON strings; `source`, `app`, `env`, `target`
//!   and `reason` are `null` when absent.
//! - Strings are escaped minimally: `"` → `\"`, `\` → `\\`, U+0008 → `\b`, U+000C → `\f`,
//!   U+000A → `\n`, U+000D → `\r`, U+0009 → `\t`, any other character below U+0020 →
//!   `\u00xx` (4 lowercase hex digits); every other character (including `/`, U+007F and
//!   all non-ASCII) is written as itself in UTF-8.
//!
//! This is what `serde_json` produces for a struct with those fields in that order, and
//! what Python's `json.dumps(obj, separators=(",", ":"), ensure_ascii=False)` produces
//! for a dict built in that order — so an operator can re-check a chain with a few lines
//! of script.
//!
//! The first record has `seq` 1 and `prev_hash` [`GENESIS`] (64 zeros); record `n+1`'s
//! `prev_hash` is record `n`'s `hash`.
//!
//! # Checkpoints
//! A [`Checkpoint`] is `(count, head_hash, at_ms)` signed with HMAC-SHA256 (RFC 2104)
//! under a 32-byte server key. The signed message is the UTF-8 bytes of
//! `ferry-audit-checkpoint-v1\n{count}\n{head_hash}\n{at_ms}` (decimal integers, no
//! trailing newline) — see [`checkpoint_message`]. The signature is lowercase hex.
//! Keeping checkpoints elsewhere detects truncation of the tail, which a hash chain by
//! itself cannot ([`verify_against_checkpoint`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One thing that happened, before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// `user:alice`, `token:ci`, `system`.
    pub actor: String,
    /// Client address, when there is one.
    pub source: Option<String>,
    /// `deploy`, `login`, `login_failed`, `permission_denied`, `approve`, …
    pub action: String,
    pub app: Option<String>,
    pub env: Option<String>,
    /// What was acted on, e.g. `deployment 42`.
    pub target: Option<String>,
    /// What changed. Never a secret value.
    pub summary: String,
    /// Why, as given by the actor.
    pub reason: Option<String>,
    /// `ok`, `denied`, `failed: …`.
    pub outcome: String,
}

/// An entry sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// 1, 2, 3, … without gaps.
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Lowercase hex; [`GENESIS`] for the first record.
    pub prev_hash: String,
    /// Lowercase hex SHA-256 of the canonical encoding (module docs).
    pub hash: String,
}

/// `prev_hash` of the first record: 64 zeros.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_json_str(out, s),
        None => out.push_str("null"),
    }
}

/// The canonical bytes hashed for a record (see the module documentation).
pub fn canonical_bytes(seq: i64, prev_hash: &str, entry: &AuditEntry) -> Vec<u8> {
    let mut out = String::with_capacity(256 + entry.summary.len());
    out.push_str("{\"seq\":");
    out.push_str(&seq.to_string());
    out.push_str(",\"prev_hash\":");
    push_json_str(&mut out, prev_hash);
    out.push_str(",\"at_ms\":");
    out.push_str(&entry.at_ms.to_string());
    out.push_str(",\"actor\":");
    push_json_str(&mut out, &entry.actor);
    out.push_str(",\"source\":");
    push_opt_str(&mut out, entry.source.as_deref());
    out.push_str(",\"action\":");
    push_json_str(&mut out, &entry.action);
    out.push_str(",\"app\":");
    push_opt_str(&mut out, entry.app.as_deref());
    out.push_str(",\"env\":");
    push_opt_str(&mut out, entry.env.as_deref());
    out.push_str(",\"target\":");
    push_opt_str(&mut out, entry.target.as_deref());
    out.push_str(",\"summary\":");
    push_json_str(&mut out, &entry.summary);
    out.push_str(",\"reason\":");
    push_opt_str(&mut out, entry.reason.as_deref());
    out.push_str(",\"outcome\":");
    push_json_str(&mut out, &entry.outcome);
    out.push('}');
    out.into_bytes()
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes hex (either case); `None` on odd length or a non-hex character.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lowercase hex SHA-256 of `bytes` (also handy for storing token hashes).
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

/// The hash a record with this content must carry.
pub fn record_hash(seq: i64, prev_hash: &str, entry: &AuditEntry) -> String {
    sha256_hex(&canonical_bytes(seq, prev_hash, entry))
}

/// Seals `entry` as record `seq` following a record whose hash is `prev_hash`
/// ([`GENESIS`] for seq 1).
pub fn seal(seq: i64, prev_hash: &str, entry: AuditEntry) -> AuditRecord {
    let hash = record_hash(seq, prev_hash, &entry);
    AuditRecord {
        seq,
        entry,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

/// Where and how a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Break {
    /// The record's hash does not match its content: it was edited.
    Edited { seq: i64 },
    /// Records between `after_seq` and `next_seq` are gone (`after_seq` 0 = from the start).
    Missing { after_seq: i64, next_seq: i64 },
    /// The record is out of order (its seq is not the next one and the expected record
    /// comes later), repeats a seq, or does not link to the record before it (its
    /// `prev_hash` is not that record's hash — records replaced or reordered, or an earlier
    /// record rewritten and re-hashed).
    Reordered { seq: i64 },
    /// The chain does not contain the checkpoint's head: `found_count < expected_count`
    /// means the tail was truncated; otherwise record `expected_count` does not carry the
    /// checkpointed hash (the chain up to there was rewritten).
    HeadMismatch {
        expected_count: i64,
        found_count: i64,
    },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Break::Edited { seq } => write!(
                f,
                "record #{seq} was edited: its hash does not match its content"
            ),
            Break::Missing {
                after_seq: 0,
                next_seq,
            } => write!(
                f,
                "records missing at the start: the chain begins at #{next_seq} instead of #1"
            ),
            Break::Missing {
                after_seq,
                next_seq,
            } => {
                if next_seq == after_seq + 2 {
                    write!(
                        f,
                        "record #{} is missing: #{next_seq} follows #{after_seq}",
                        after_seq + 1
                    )
                } else {
                    write!(
                        f,
                        "records #{}..#{} are missing: #{next_seq} follows #{after_seq}",
                        after_seq + 1,
                        next_seq - 1
                    )
                }
            }
            Break::Reordered { seq } => write!(
                f,
                "record #{seq} is out of place: it is out of order or does not link to the \
                 record before it"
            ),
            Break::HeadMismatch {
                expected_count,
                found_count,
            } if found_count < expected_count => write!(
                f,
                "the chain was truncated: the checkpoint covers {expected_count} records but \
                 only {found_count} remain"
            ),
            Break::HeadMismatch {
                expected_count,
                found_count,
            } => write!(
                f,
                "the chain was rewritten: record #{expected_count} does not carry the \
                 checkpointed head hash (chain has {found_count} records)"
            ),
        }
    }
}

impl std::error::Error for Break {}

/// A verified chain: how many records and the last one's hash ([`GENESIS`] when empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedHead {
    pub count: i64,
    pub head_hash: String,
}

/// Verifies a whole chain, given in seq order from #1. Checks, record by record: the hash
/// matches the content (else [`Break::Edited`]); the seq is the next one (a jump is
/// [`Break::Missing`] unless the skipped seq appears later, which is
/// [`Break::Reordered`]; a repeat or step back is `Reordered`); `prev_hash` is the previous
/// record's hash, or [`GENESIS`] for the first (else `Reordered`). Reports the first break.
pub fn verify(records: &[AuditRecord]) -> Result<VerifiedHead, Break> {
    let mut prev_seq = 0i64;
    let mut prev_hash = GENESIS;
    for (i, rec) in records.iter().enumerate() {
        if record_hash(rec.seq, &rec.prev_hash, &rec.entry) != rec.hash {
            return Err(Break::Edited { seq: rec.seq });
        }
        let expected = prev_seq.saturating_add(1);
        if rec.seq > expected {
            let later = records[i + 1..]
                .iter()
                .any(|r| r.seq >= expected && r.seq < rec.seq);
            return Err(if later {
                Break::Reordered { seq: rec.seq }
            } else {
                Break::Missing {
                    after_seq: prev_seq,
                    next_seq: rec.seq,
                }
            });
        }
        if rec.seq < expected || rec.prev_hash != prev_hash {
            return Err(Break::Reordered { seq: rec.seq });
        }
        prev_seq = rec.seq;
        prev_hash = &rec.hash;
    }
    Ok(VerifiedHead {
        count: prev_seq,
        head_hash: prev_hash.to_string(),
    })
}

/// [`verify`], then requires the chain to contain the checkpoint's head: at least
/// `checkpoint.count` records, record #`count` carrying `checkpoint.head_hash` (for a
/// count of 0, the head is [`GENESIS`]). Records after the checkpoint are fine. Does not
/// check the signature — call [`check_checkpoint`] for that.
pub fn verify_against_checkpoint(
    records: &[AuditRecord],
    checkpoint: &Checkpoint,
) -> Result<VerifiedHead, Break> {
    let head = verify(records)?;
    let mismatch = Break::HeadMismatch {
        expected_count: checkpoint.count,
        found_count: head.count,
    };
    if checkpoint.count < 0 || head.count < checkpoint.count {
        return Err(mismatch);
    }
    let hash_at_count = if checkpoint.count == 0 {
        GENESIS
    } else {
        // verify() guarantees record i has seq i + 1.
        let idx = usize::try_from(checkpoint.count - 1).map_err(|_| mismatch.clone())?;
        match records.get(idx) {
            Some(r) => r.hash.as_str(),
            None => return Err(mismatch),
        }
    };
    if !hash_at_count.eq_ignore_ascii_case(&checkpoint.head_hash) {
        return Err(mismatch);
    }
    Ok(head)
}

/// A signed statement "the chain had `count` records ending in `head_hash` at `at_ms`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub count: i64,
    pub head_hash: String,
    pub at_ms: i64,
    /// Lowercase hex HMAC-SHA256 of [`checkpoint_message`].
    pub signature: String,
}

/// The bytes a checkpoint signature covers:
/// `ferry-audit-checkpoint-v1\n{count}\n{head_hash}\n{at_ms}`.
pub fn checkpoint_message(count: i64, head_hash: &str, at_ms: i64) -> String {
    format!("ferry-audit-checkpoint-v1\n{count}\n{head_hash}\n{at_ms}")
}

/// HMAC-SHA256 (RFC 2104): `H((K ⊕ opad) ‖ H((K ⊕ ipad) ‖ msg))`, with keys longer than
/// the 64-byte block hashed first and shorter ones zero-padded.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares two byte strings in time independent of where they differ (all bytes are
/// compared, differences folded with OR). Different lengths compare unequal at once —
/// lengths are not secret here.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Signs a checkpoint with the server's key.
pub fn sign_checkpoint(key: &[u8; 32], count: i64, head_hash: &str, at_ms: i64) -> Checkpoint {
    let mac = hmac_sha256(key, checkpoint_message(count, head_hash, at_ms).as_bytes());
    Checkpoint {
        count,
        head_hash: head_hash.to_string(),
        at_ms,
        signature: to_hex(&mac),
    }
}

/// Whether the checkpoint's signature is valid under `key` (constant-time comparison).
pub fn check_checkpoint(key: &[u8; 32], checkpoint: &Checkpoint) -> bool {
    let Some(given) = from_hex(&checkpoint.signature) else {
        return false;
    };
    let expected = hmac_sha256(
        key,
        checkpoint_message(checkpoint.count, &checkpoint.head_hash, checkpoint.at_ms).as_bytes(),
    );
    constant_time_eq(&expected, &given)
}
