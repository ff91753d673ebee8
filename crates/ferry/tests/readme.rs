//! The README's commands are real: every `ferry …` line of its shell blocks parses with
//! this binary (no usage error), and the tour's `ferry.yaml`, written where the README says,
//! passes `ferry validate`. The tour itself (its manifest and its command block, in order)
//! runs against a live server on free ports: each command succeeds and each `curl` answers
//! what the README's comment says. (The other blocks: the pipeline block is a sketch for your
//! own builds; the users block needs deployment 42 — the README says so beside each.)

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DEMO, Ferry, SERIAL, bounded, free_port};

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

/// The tour, as a newcomer runs it: its `ferry.yaml` at the root of a checkout, a server
/// whose admin token is at `./.ferry/server/admin.token`, then each line of the command
/// block in order. Only the ports (7070, 8080, 9080) and the demo binary's path differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tour_runs_against_a_live_server() {
    let _serial = SERIAL.lock().await;
    bounded(Duration::from_secs(240), async {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
        let blocks = blocks(&readme);
        let manifest = &blocks
            .iter()
            .find(|(info, body)| info == "yaml" && body.starts_with("# yaml-language-server"))
            .expect("the tour's ferry.yaml block")
            .1;
        let commands = &blocks
            .iter()
            .find(|(info, body)| info == "sh" && body.contains("ferry login --token"))
            .expect("the tour's command block")
            .1;
        let ferry = Ferry::start().await;
        let (staging, production) = (free_port().to_string(), free_port().to_string());
        let api = ferry
            .url
            .trim_start_matches("http://127.0.0.1:")
            .to_string();
        let ports = |text: &str| {
            text.replace("8080", &staging)
                .replace("9080", &production)
                .replace("7070", &api)
        };
        let mark = serde_json::to_string(&ferry.mark).expect("json");
        let manifest = ports(manifest)
            .replace("./target/release/ferry-demo", DEMO)
            // the harness finds (and checks for leftovers) what the test started by this mark
            .replace(
                "    replicas: 2\n",
                &format!("    replicas: 2\n    env: {{ FERRY_TEST_MARK: {mark} }}\n"),
            );
        let dir = ferry.dir.path().join("checkout");
        std::fs::create_dir_all(dir.join(".ferry")).expect("checkout");
        std::os::unix::fs::symlink(&ferry.data, dir.join(".ferry/server")).expect("symlink");
        std::fs::write(dir.join("ferry.yaml"), manifest).expect("ferry.yaml");
        let bin = Path::new(common::FERRY).parent().expect("bin dir");
        let mut ran = Vec::new();
        for line in ports(commands).lines() {
            let command = line.split("  #").next().unwrap_or(line).trim();
            let comment = line.split_once("  #").map(|(_, c)| c.trim()).unwrap_or("");
            if command.is_empty() || command.starts_with("export PATH=") {
                continue;
            }
            let out = tokio::process::Command::new("timeout")
                .args(["120", "sh", "-c", command])
                .current_dir(&dir)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bin.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("HOME", &dir)
                .env("FERRY_CONFIG", dir.join("config.json"))
                .env("FERRY_URL", &ferry.url)
                .env_remove("FERRY_TOKEN")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
                .expect("run sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let timeline = || async {
                let (_, list) = ferry
                    .api_get("/v1/apps/shop/envs/staging/deployments?limit=5")
                    .await;
                list.to_string()
            };
            assert!(
                out.status.success(),
                "README tour: `{command}` failed ({}):\n{stdout}\n{stderr}\n{}",
                out.status,
                timeline().await
            );
            if command.starts_with("curl ") {
                assert!(
                    stdout.trim() == comment,
                    "README tour: `{command}` answered {stdout:?}, the README says {comment:?}"
                );
            }
            ran.push(command.to_string());
        }
        assert!(
            ran.len() >= 12,
            "only {} tour commands ran: {ran:#?}",
            ran.len()
        );
        // Where the tour leaves things: rolled back to 1.0.0 on staging.
        let out = ferry
            .cli(&["status", "shop", "--env", "staging", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(out.json()["current_version"], "1.0.0", "{out}");
    })
    .await;
}
