//! The CLI bounds what it reads and sends: a templating bomb is refused locally with a
//! located error, a file over the server's request limit is never sent, and errors never
//! repeat a huge value.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_core::api::MAX_REQUEST_BYTES;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

const SERVICES: &str = "services:\n  web:\n    run: [\"./web\", \"--port\", \"${PORT}\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:1\n";

/// Runs `ferry apply -f FILE` against a URL where nothing listens: whatever it prints comes
/// from local checks.
fn apply(file: &std::path::Path) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = Command::new(FERRY)
        .args(["apply", "-f", &file.display().to_string()])
        .env("FERRY_URL", "http://127.0.0.1:1")
        .env("FERRY_TOKEN", "unused")
        .env("FERRY_CONFIG", file.with_extension("cli.json"))
        .output()
        .expect("run ferry");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn apply_refuses_a_templating_bomb_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from("app: shop\nvars:\n  T0: \"xxxxxxxxxxxxxxxx\"\n");
    for i in 1..=30 {
        yaml.push_str(&format!("  T{i}: \"${{T{}}}${{T{}}}\"\n", i - 1, i - 1));
    }
    yaml.push_str(SERVICES);
    let file = dir.path().join("bomb.yaml");
    std::fs::write(&file, yaml).unwrap();
    let (code, stderr, took) = apply(&file);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("bomb.yaml:17:8: vars.T14: `T14` expands to more than 131072 bytes"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was sent"), "{stderr}");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn apply_refuses_a_file_over_the_request_limit_without_sending_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    let yaml = format!(
        "app: shop\n{SERVICES}{}\n",
        "#".repeat(MAX_REQUEST_BYTES + 1)
    );
    std::fs::write(&file, &yaml).unwrap();
    let (code, stderr, _) = apply(&file);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "big.yaml is too large to send: {} bytes, the server accepts at most {MAX_REQUEST_BYTES} bytes per request; nothing was sent",
            yaml.len()
        )),
        "{stderr}"
    );
    // A file under the limit whose JSON encoding is over it (every `"` is escaped).
    let quotes = format!(
        "app: shop\n{SERVICES}#{}\n",
        "\"".repeat(MAX_REQUEST_BYTES / 2 + 10)
    );
    std::fs::write(&file, &quotes).unwrap();
    let (code, stderr, _) = apply(&file);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is too large to send"), "{stderr}");
    assert!(!stderr.contains("cannot reach"), "{stderr}");
}

#[test]
fn errors_print_a_cut_value() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.yaml");
    std::fs::write(
        &file,
        format!("app: \"{}\"\n{SERVICES}", "A".repeat(3_000_000)),
    )
    .unwrap();
    let (code, stderr, _) = apply(&file);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.len() < 5_000, "{} bytes of stderr", stderr.len());
    assert!(stderr.contains("bytes)…"), "{stderr}");
}
