//! The README's commands are real: every `ferry …` line of its shell blocks parses with
//! this binary (no usage error), and the tour's `ferry.yaml`, written where the README says,
//! passes `ferry validate`. (What each block needs to run: the tour needs the server it
//! starts; the pipeline block is a sketch for your own builds; the users block needs an
//! applied `shop` and deployment 42 — the README says so beside each.)

use std::path::Path;
use std::process::{Command, Stdio};

/// Fenced blocks of `text`: (info string, body).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// The `ferry` command of a README line (comment and a leading pipe stripped), if any.
fn ferry_command(line: &str) -> Option<String> {
    let line = line.split("  #").next().unwrap_or(line).trim();
    let line = line.rsplit("| ").next().unwrap_or(line).trim();
    let args = line.strip_prefix("ferry ")?;
    Some(format!("ferry {args}"))
}

#[test]
fn every_readme_command_parses_and_the_tour_manifest_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    let tour = blocks
        .iter()
        .find(|(info, body)| info == "yaml" && body.starts_with("# yaml-language-server"))
        .expect("the tour's ferry.yaml block");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ferry.yaml"), &tour.1).expect("write ferry.yaml");
    std::fs::create_dir_all(dir.path().join(".ferry/server")).expect("data dir");
    std::fs::write(dir.path().join(".ferry/server/admin.token"), "ferry_0000").expect("token");
    let bin = Path::new(env!("CARGO_BIN_EXE_ferry"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let mut checked = 0;
    for (info, body) in blocks.iter().filter(|(info, _)| info == "sh") {
        for command in body.lines().filter_map(ferry_command) {
            let out = Command::new("timeout")
                .args(["20", "sh", "-c", &command])
                .current_dir(dir.path())
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("HOME", dir.path())
                .env("FERRY_CONFIG", dir.path().join("config.json"))
                .env("FERRY_URL", format!("http://127.0.0.1:{closed}"))
                .env("DB_PASSWORD", "not-a-real-password")
                .env_remove("FERRY_TOKEN")
                .stdin(Stdio::null())
                .output()
                .expect("run sh");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !stderr.contains("Usage:") && out.status.code() != Some(124),
                "README ({info} block): `{command}` does not parse with this ferry:\n{stderr}"
            );
            if command.starts_with("ferry validate") {
                assert!(out.status.success(), "the tour's ferry.yaml: {stderr}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 30,
        "only {checked} ferry commands found in the README"
    );
}
