//! Audit hash chain: sealing, verification and where it breaks, signed checkpoints, HMAC
//! test vectors and the frozen canonical encoding.

use ferry_core::audit::{
    AuditEntry, AuditRecord, Break, Checkpoint, GENESIS, VerifiedHead, canonical_bytes,
    check_checkpoint, checkpoint_message, constant_time_eq, from_hex, hmac_sha256, record_hash,
    seal, sign_checkpoint, to_hex, verify, verify_against_checkpoint,
};

fn entry(i: i64) -> AuditEntry {
    let actions = [
        "deploy",
        "login",
        "login_failed",
        "approve",
        "permission_denied",
    ];
    AuditEntry {
        at_ms: 1_700_000_000_000 + i * 1000,
        actor: if i % 3 == 0 {
            "token:ci".to_string()
        } else {
            format!("user:u{}", i % 4)
        },
        source: (i % 2 == 0).then(|| format!("10.0.0.{}", i % 250)),
        action: actions[usize::try_from(i).expect("small") % actions.len()].to_string(),
        app: (i % 5 != 0).then(|| "shop".to_string()),
        env: (i % 4 != 0).then(|| ["dev", "staging", "production"][(i % 3) as usize].to_string()),
        target: (i % 2 == 1).then(|| format!("deployment {i}")),
        summary: format!("record {i}: release 1.2.{i} \"quoted\" \\ tab\tnewline\n ünïcödé"),
        reason: (i % 3 == 1).then(|| "hotfix".to_string()),
        outcome: if i % 7 == 0 { "denied" } else { "ok" }.to_string(),
    }
}

fn chain(n: i64) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    for i in 1..=n {
        let prev = out.last().map_or(GENESIS.to_string(), |r| r.hash.clone());
        out.push(seal(i, &prev, entry(i)));
    }
    out
}

const KEY: [u8; 32] = [0x42; 32];

#[test]
fn genesis_is_64_zeros() {
    assert_eq!(GENESIS.len(), 64);
    assert!(GENESIS.bytes().all(|b| b == b'0'));
}

#[test]
fn long_chains_verify() {
    assert_eq!(
        verify(&[]),
        Ok(VerifiedHead {
            count: 0,
            head_hash: GENESIS.to_string()
        })
    );
    let records = chain(200);
    assert_eq!(records[0].prev_hash, GENESIS);
    for w in records.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    let head = verify(&records).expect("valid chain");
    assert_eq!(head.count, 200);
    assert_eq!(head.head_hash, records[199].hash);
    for n in 1..=200 {
        assert_eq!(verify(&records[..n]).expect("prefix").count, n as i64);
    }
}

/// Every field of an entry, each changed in some way.
type Edit = fn(&mut AuditRecord);

fn edits() -> Vec<(&'static str, Edit)> {
    vec![
        ("at_ms", |r| r.entry.at_ms += 1),
        ("actor", |r| r.entry.actor = "user:mallory".into()),
        ("source", |r| {
            r.entry.source = match r.entry.source.take() {
                Some(_) => None,
                None => Some("10.9.9.9".into()),
            }
        }),
        ("action", |r| r.entry.action.push('x')),
        ("app", |r| {
            r.entry.app = match r.entry.app.take() {
                Some(_) => None,
                None => Some("billing".into()),
            }
        }),
        ("env", |r| {
            r.entry.env = Some(match r.entry.env.take() {
                Some(e) if e == "production" => "dev".into(),
                _ => "production".into(),
            })
        }),
        ("target", |r| r.entry.target = Some("deployment 999".into())),
        ("summary", |r| r.entry.summary.push(' ')),
        ("reason", |r| {
            r.entry.reason = match r.entry.reason.take() {
                Some(_) => None,
                None => Some("because".into()),
            }
        }),
        ("outcome", |r| r.entry.outcome = "failed: edited".into()),
        ("seq", |r| r.seq += 1000),
        ("prev_hash", |r| r.prev_hash = "f".repeat(64)),
        ("hash", |r| r.hash = "a".repeat(64)),
    ]
}

#[test]
fn editing_any_field_of_any_record_is_caught_at_that_record() {
    let records = chain(30);
    for idx in 0..records.len() {
        for (field, edit) in edits() {
            let mut tampered = records.clone();
            edit(&mut tampered[idx]);
            assert_ne!(
                tampered[idx], records[idx],
                "{field} edit must change something"
            );
            let got = verify(&tampered);
            assert_eq!(
                got,
                Err(Break::Edited {
                    seq: tampered[idx].seq
                }),
                "editing {field} of record #{}",
                idx + 1
            );
        }
    }
}

#[test]
fn edit_then_reseal_of_one_record_breaks_the_link() {
    let mut records = chain(10);
    let mut e = records[4].entry.clone();
    e.summary = "nothing to see".into();
    records[4] = seal(5, &records[3].hash, e);
    assert_eq!(verify(&records), Err(Break::Reordered { seq: 6 }));
    // Re-sealing the last record cannot be caught by the chain alone …
    let mut records = chain(10);
    let checkpoint = sign_checkpoint(&KEY, 10, &records[9].hash, 0);
    let mut e = records[9].entry.clone();
    e.outcome = "ok".into();
    e.actor = "user:nobody".into();
    records[9] = seal(10, &records[8].hash, e);
    assert!(verify(&records).is_ok());
    // … but it is by a checkpoint.
    assert_eq!(
        verify_against_checkpoint(&records, &checkpoint),
        Err(Break::HeadMismatch {
            expected_count: 10,
            found_count: 10
        })
    );
}

#[test]
fn deleting_records_is_missing() {
    let records = chain(20);
    for k in 1..19 {
        let mut tampered = records.clone();
        tampered.remove(k);
        assert_eq!(
            verify(&tampered),
            Err(Break::Missing {
                after_seq: k as i64,
                next_seq: k as i64 + 2
            }),
            "deleting #{}",
            k + 1
        );
    }
    // Several in a row.
    let mut tampered = records.clone();
    tampered.drain(5..9);
    assert_eq!(
        verify(&tampered),
        Err(Break::Missing {
            after_seq: 5,
            next_seq: 10
        })
    );
    // The first record.
    assert_eq!(
        verify(&records[1..]),
        Err(Break::Missing {
            after_seq: 0,
            next_seq: 2
        })
    );
}

#[test]
fn swapping_records_is_reordered() {
    let records = chain(20);
    for j in 0..19 {
        let mut tampered = records.clone();
        tampered.swap(j, j + 1);
        assert_eq!(
            verify(&tampered),
            Err(Break::Reordered { seq: j as i64 + 2 }),
            "swapping #{} and #{}",
            j + 1,
            j + 2
        );
    }
    let mut tampered = records.clone();
    tampered.swap(3, 12);
    assert_eq!(verify(&tampered), Err(Break::Reordered { seq: 13 }));
    // A duplicated record.
    let mut tampered = records.clone();
    tampered.insert(8, records[7].clone());
    assert_eq!(verify(&tampered), Err(Break::Reordered { seq: 8 }));
    // A first record that does not start from GENESIS.
    let bad_start = vec![seal(1, &"1".repeat(64), entry(1))];
    assert_eq!(verify(&bad_start), Err(Break::Reordered { seq: 1 }));
    // A record spliced in from another chain with the right seq.
    let mut other = chain(20);
    other[0] = seal(1, GENESIS, entry(99));
    let other = {
        let mut v: Vec<AuditRecord> = Vec::new();
        for (i, r) in other.into_iter().enumerate() {
            let prev = v.last().map_or(GENESIS.to_string(), |p| p.hash.clone());
            v.push(seal(i as i64 + 1, &prev, r.entry));
        }
        v
    };
    let mut tampered = records.clone();
    tampered[6] = other[6].clone();
    assert_eq!(verify(&tampered), Err(Break::Reordered { seq: 7 }));
}

#[test]
fn truncating_the_tail_is_caught_by_a_checkpoint() {
    let records = chain(50);
    let head = verify(&records[..40]).expect("prefix");
    let cp = sign_checkpoint(&KEY, head.count, &head.head_hash, 1_700_000_100_000);
    assert!(check_checkpoint(&KEY, &cp));
    // The full chain (records appended after the checkpoint) is fine.
    assert_eq!(
        verify_against_checkpoint(&records, &cp),
        Ok(VerifiedHead {
            count: 50,
            head_hash: records[49].hash.clone()
        })
    );
    // Exactly the checkpointed prefix is fine.
    assert!(verify_against_checkpoint(&records[..40], &cp).is_ok());
    // Truncated: verify alone cannot tell, the checkpoint can.
    assert!(verify(&records[..35]).is_ok());
    let err = verify_against_checkpoint(&records[..35], &cp).expect_err("truncated");
    assert_eq!(
        err,
        Break::HeadMismatch {
            expected_count: 40,
            found_count: 35
        }
    );
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(verify_against_checkpoint(&[], &cp).is_err());
    // Breaks inside the chain are still reported as such.
    let mut tampered = records.clone();
    tampered.remove(20);
    assert_eq!(
        verify_against_checkpoint(&tampered, &cp),
        Err(Break::Missing {
            after_seq: 20,
            next_seq: 22
        })
    );
    // A checkpoint of the empty chain.
    let empty = sign_checkpoint(&KEY, 0, GENESIS, 0);
    assert!(verify_against_checkpoint(&records, &empty).is_ok());
    assert!(verify_against_checkpoint(&[], &empty).is_ok());
    // A whole rewritten chain of the same length.
    let mut rewritten: Vec<AuditRecord> = Vec::new();
    for r in &records {
        let prev = rewritten
            .last()
            .map_or(GENESIS.to_string(), |p| p.hash.clone());
        let mut e = r.entry.clone();
        e.actor = "system".into();
        rewritten.push(seal(r.seq, &prev, e));
    }
    let err = verify_against_checkpoint(&rewritten, &cp).expect_err("rewritten");
    assert_eq!(
        err,
        Break::HeadMismatch {
            expected_count: 40,
            found_count: 50
        }
    );
    assert!(err.to_string().contains("rewritten"), "{err}");
}

#[test]
fn checkpoint_signatures() {
    let cp = sign_checkpoint(&KEY, 12, &"ab".repeat(32), 1_700_000_000_000);
    assert_eq!(cp.count, 12);
    assert_eq!(cp.at_ms, 1_700_000_000_000);
    assert_eq!(cp.signature.len(), 64);
    assert!(check_checkpoint(&KEY, &cp));
    // The signature is HMAC-SHA256 over the documented message.
    assert_eq!(
        checkpoint_message(12, &"ab".repeat(32), 1_700_000_000_000),
        format!(
            "ferry-audit-checkpoint-v1\n12\n{}\n1700000000000",
            "ab".repeat(32)
        )
    );
    assert_eq!(
        cp.signature,
        to_hex(&hmac_sha256(
            &KEY,
            checkpoint_message(12, &"ab".repeat(32), 1_700_000_000_000).as_bytes()
        ))
    );
    // Upper-case hex is the same signature.
    let upper = Checkpoint {
        signature: cp.signature.to_uppercase(),
        ..cp.clone()
    };
    assert!(check_checkpoint(&KEY, &upper));

    let tampers: Vec<Checkpoint> = vec![
        Checkpoint {
            count: 13,
            ..cp.clone()
        },
        Checkpoint {
            head_hash: "cd".repeat(32),
            ..cp.clone()
        },
        Checkpoint {
            at_ms: cp.at_ms + 1,
            ..cp.clone()
        },
        Checkpoint {
            signature: format!("{}0", &cp.signature[..63]),
            ..cp.clone()
        },
        Checkpoint {
            signature: cp.signature[..62].to_string(),
            ..cp.clone()
        },
        Checkpoint {
            signature: format!("{}zz", &cp.signature[..62]),
            ..cp.clone()
        },
        Checkpoint {
            signature: String::new(),
            ..cp.clone()
        },
    ];
    for t in &tampers {
        assert!(!check_checkpoint(&KEY, t), "{t:?}");
    }
    // Flipping any single bit of the signature.
    let sig = from_hex(&cp.signature).expect("hex");
    for byte in 0..32 {
        for bit in 0..8 {
            let mut s = sig.clone();
            s[byte] ^= 1 << bit;
            let t = Checkpoint {
                signature: to_hex(&s),
                ..cp.clone()
            };
            assert!(!check_checkpoint(&KEY, &t));
        }
    }
    assert!(!check_checkpoint(&[0x43; 32], &cp));

    let json = serde_json::to_string(&cp).expect("serialise");
    assert_eq!(
        serde_json::from_str::<Checkpoint>(&json).expect("parse"),
        cp
    );
}

#[test]
fn hmac_sha256_rfc4231_vectors() {
    let cases: [(Vec<u8>, Vec<u8>, &str); 5] = [
        // Test case 1
        (
            vec![0x0b; 20],
            b"Hi There".to_vec(),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        ),
        // Test case 2
        (
            b"Jefe".to_vec(),
            b"what do ya want for nothing?".to_vec(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        // Test case 3
        (
            vec![0xaa; 20],
            vec![0xdd; 50],
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        ),
        // Test case 6: key longer than the block size
        (
            vec![0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
        // Test case 7
        (
            vec![0xaa; 131],
            b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ),
    ];
    for (key, data, want) in cases {
        assert_eq!(to_hex(&hmac_sha256(&key, &data)), want);
    }
}

#[test]
fn constant_time_eq_and_hex() {
    assert!(constant_time_eq(b"", b""));
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
    assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    assert_eq!(from_hex("000fA5ff"), Some(vec![0x00, 0x0f, 0xa5, 0xff]));
    assert_eq!(from_hex("abc"), None);
    assert_eq!(from_hex("zz"), None);
}

fn golden_entry() -> AuditEntry {
    AuditEntry {
        at_ms: 1_700_000_000_123,
        actor: "user:alice".into(),
        source: Some("192.0.2.10".into()),
        action: "deploy".into(),
        app: Some("shop".into()),
        env: Some("production".into()),
        target: Some("deployment 42".into()),
        summary: "release 1.2.3 \"canary\"\tto production\nnotes: ✓ ünïcode \u{1}/".into(),
        reason: None,
        outcome: "ok".into(),
    }
}

const GOLDEN_CANONICAL: &str = concat!(
    r#"{"seq":7,"prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","#,
    r#""at_ms":1700000000123,"actor":"user:alice","source":"192.0.2.10","action":"deploy","#,
    r#""app":"shop","env":"production","target":"deployment 42","#,
    r#""summary":"release 1.2.3 \"canary\"\tto production\nnotes: ✓ ünïcode \u0001/","#,
    r#""reason":null,"outcome":"ok"}"#
);

/// Pinned: if this changes, every existing chain stops verifying. Don't change it; add a
/// new format version instead. (Cross-checked with Python: `json.dumps(d, separators=(",", ":"),
/// ensure_ascii=False)` of the same fields in order, then SHA-256.)
const GOLDEN_HASH: &str = "d01fe17197b3bf0d521f57fb9aa1cb8ab0cc678ddbe9935c5d5591c82b206f46";

#[test]
fn canonical_encoding_is_frozen() {
    let bytes = canonical_bytes(7, GENESIS, &golden_entry());
    assert_eq!(
        String::from_utf8(bytes.clone()).expect("utf-8"),
        GOLDEN_CANONICAL
    );
    assert_eq!(record_hash(7, GENESIS, &golden_entry()), GOLDEN_HASH);
    let rec = seal(7, GENESIS, golden_entry());
    assert_eq!(rec.hash, GOLDEN_HASH);
    assert_eq!(rec.prev_hash, GENESIS);
    assert_eq!(rec.seq, 7);
}

#[derive(serde::Serialize)]
struct FixedOrder<'a> {
    seq: i64,
    prev_hash: &'a str,
    at_ms: i64,
    actor: &'a str,
    source: Option<&'a str>,
    action: &'a str,
    app: Option<&'a str>,
    env: Option<&'a str>,
    target: Option<&'a str>,
    summary: &'a str,
    reason: Option<&'a str>,
    outcome: &'a str,
}

#[test]
fn canonical_encoding_is_serde_json_of_a_fixed_order_struct() {
    let mut entries: Vec<AuditEntry> = (1..40).map(entry).collect();
    entries.push(golden_entry());
    let mut all_controls = golden_entry();
    all_controls.summary = (0u32..0x80)
        .filter_map(char::from_u32)
        .chain("é€😀\u{2028}".chars())
        .collect();
    all_controls.at_ms = -5;
    entries.push(all_controls);
    for (i, e) in entries.iter().enumerate() {
        let seq = i as i64 + 1;
        let prev = "9f".repeat(32);
        let fixed = FixedOrder {
            seq,
            prev_hash: &prev,
            at_ms: e.at_ms,
            actor: &e.actor,
            source: e.source.as_deref(),
            action: &e.action,
            app: e.app.as_deref(),
            env: e.env.as_deref(),
            target: e.target.as_deref(),
            summary: &e.summary,
            reason: e.reason.as_deref(),
            outcome: &e.outcome,
        };
        assert_eq!(
            canonical_bytes(seq, &prev, e),
            serde_json::to_vec(&fixed).expect("serialise"),
            "entry {i}"
        );
    }
}

#[test]
fn record_json_is_flat_and_round_trips() {
    let rec = seal(1, GENESIS, golden_entry());
    let v = serde_json::to_value(&rec).expect("serialise");
    let obj = v.as_object().expect("object");
    for key in [
        "seq",
        "at_ms",
        "actor",
        "source",
        "action",
        "app",
        "env",
        "target",
        "summary",
        "reason",
        "outcome",
        "prev_hash",
        "hash",
    ] {
        assert!(obj.contains_key(key), "missing {key}");
    }
    assert_eq!(obj.len(), 13);
    let back: AuditRecord = serde_json::from_value(v).expect("parse");
    assert_eq!(back, rec);
    assert!(verify(&[back]).is_ok());
}

#[test]
fn break_messages_say_where_and_what() {
    let cases = [
        (Break::Edited { seq: 4 }, "record #4 was edited"),
        (
            Break::Missing {
                after_seq: 3,
                next_seq: 5,
            },
            "record #4 is missing",
        ),
        (
            Break::Missing {
                after_seq: 3,
                next_seq: 9,
            },
            "records #4..#8 are missing",
        ),
        (
            Break::Missing {
                after_seq: 0,
                next_seq: 3,
            },
            "begins at #3",
        ),
        (Break::Reordered { seq: 6 }, "record #6 is out of place"),
        (
            Break::HeadMismatch {
                expected_count: 10,
                found_count: 8,
            },
            "truncated",
        ),
        (
            Break::HeadMismatch {
                expected_count: 10,
                found_count: 12,
            },
            "record #10 does not carry the checkpointed head hash",
        ),
    ];
    for (b, want) in cases {
        let msg = b.to_string();
        assert!(msg.contains(want), "{msg:?} should contain {want:?}");
        let json = serde_json::to_string(&b).expect("serialise");
        assert_eq!(serde_json::from_str::<Break>(&json).expect("parse"), b);
    }
}
