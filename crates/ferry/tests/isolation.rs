//! Workload isolation end to end: what a replica, a hook and a gate check can see. Run as
//! root (as in CI) they run as `nobody`: they cannot read Ferry's keys or database, they
//! get none of the server's environment, and a secret they print (or its base64) never
//! reaches a file in plain text, not even while the hook still runs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use common::{Ferry, SERIAL, Spec, bounded};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(240);

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file and directory below `dir` (no symbolic links followed).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            walk(&path, out);
        }
        out.push(path);
    }
}

async fn wait_file(
    path_of: impl Fn() -> Option<PathBuf>,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = path_of()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        if pred(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never showed up; last seen:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first file in `dir` whose name contains `part`.
fn find(dir: &Path, part: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains(part))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workloads_see_neither_ferrys_files_nor_its_environment_and_secrets_are_redacted() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let canary = format!("canary-credential-{}", std::process::id());
        let ferry = Ferry::start_with_env(&[("FERRY_CANARY_CREDENTIAL", canary.as_str())]).await;
        let root = nix::unistd::Uid::effective().is_root();
        let data = ferry.data.display().to_string();
        let go = ferry.dir.path().join("go");
        let secret = format!("api-key-{}-s3cr3t", std::process::id());
        let secret_b64 = base64::engine::general_purpose::STANDARD.encode(&secret);

        let mut spec = Spec::new("iso");
        spec.replicas = 1;
        spec.prelude = "echo \"replica uid $(id -u)\"; env | sort; echo \"raw:$API_KEY\"; \
                        echo \"b64:$(printf %s \"$API_KEY\" | base64)\";"
            .to_string();
        let probe = format!(
            "echo \"hook uid $(id -u)\"; env | sort; \
             for f in admin.token secrets.key audit.key ferry.db proxy/admin.token; do \
               if cat '{data}'/$f >/dev/null 2>&1; then echo \"READ $f\"; else echo \"denied $f\"; fi; \
             done; \
             echo \"raw:$API_KEY\"; echo \"b64:$(printf %s \"$API_KEY\" | base64)\"; \
             while [ ! -f '{go}' ]; do sleep 0.1; done; echo done",
            go = go.display()
        );
        spec.extra_service_yaml = format!(
            "hooks:\n  pre_deploy:\n    - name: probe\n      run: {}\n      timeout: 90s\n",
            serde_json::to_string(&["sh", "-c", &probe]).expect("json")
        );
        let path = ferry.write_manifest(&spec, "ferry.yaml");
        let check = r#"{ checks: [ { name: probe, run: ["sh", "-c", "echo \"canary=$(env | grep -c FERRY_CANARY) home=$HOME key=$API_KEY\""], interval: 300ms } ] }"#;
        let text = std::fs::read_to_string(&path).expect("manifest").replace(
            "    strategy: ",
            &format!("    gates: {check}\n    strategy: "),
        );
        std::fs::write(&path, text).expect("manifest");
        let out = ferry.cli(&["apply", "-f", &path.display().to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        let out = ferry
            .cli_with_stdin(&["secrets", "set", "iso", "--env", "production", "API_KEY"], &secret)
            .await;
        assert_eq!(out.code, 0, "{out}");

        let id = ferry.deploy_id_to("iso", "production", "1.0.0").await;

        // The gate check: none of the server's environment, the secret out of its explanation.
        let deadline = Instant::now() + Duration::from_secs(60);
        let detail = loop {
            let out = ferry.cli(&["gates", &id.to_string(), "-o", "json"]).await;
            assert_eq!(out.code, 0, "{out}");
            let report = out.json();
            let detail = report["gates"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["gate"] == "checks:probe"))
                .and_then(|r| r["detail"].as_str())
                .unwrap_or_default()
                .to_string();
            if detail.contains("canary=") {
                break detail;
            }
            assert!(Instant::now() < deadline, "no check result: {report:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(detail.contains("canary=0 "), "{detail}");
        assert!(detail.contains("key=[redacted]"), "{detail}");
        if root {
            assert!(detail.contains("home=/nonexistent"), "runs as nobody: {detail}");
        }

        // The hook, while it runs: its file already has the secret redacted.
        let hooks = ferry.data.join("hooks").join(id.to_string());
        let running = wait_file(|| find(&hooks, "probe"), "the hook's output", |t| {
            t.contains("b64:")
        })
        .await;
        assert!(!running.contains(&secret) && !running.contains(&secret_b64), "{running}");
        assert!(running.contains("raw:[redacted]") && running.contains("b64:[redacted]"), "{running}");
        std::fs::write(&go, "").expect("go");
        let done = ferry.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(
            done.state,
            DeploymentState::Succeeded,
            "{done:?}\n{}",
            ferry.server_logs()
        );

        let hook_file = find(&hooks, "probe").expect("hook output");
        let output = std::fs::read_to_string(&hook_file).expect("hook output");
        assert!(output.contains("done"), "{output}");
        assert!(!output.contains(&canary), "the server's environment leaked:\n{output}");
        assert!(!output.contains(&secret) && !output.contains(&secret_b64), "{output}");
        if root {
            assert!(output.contains("hook uid 65534"), "{output}");
            for f in ["admin.token", "secrets.key", "audit.key", "ferry.db", "proxy/admin.token"] {
                assert!(output.contains(&format!("denied {f}")), "{f}:\n{output}");
            }
            assert!(!output.contains("READ "), "{output}");
        } else {
            eprintln!("not root: workloads run as the server's user (file modes still checked)");
        }

        // The replica: same environment rules, its log redacted as it was written.
        let logs = ferry.data.join("logs");
        let log = wait_file(|| find(&logs, "iso.production.web"), "the replica's log", |t| {
            t.contains("b64:")
        })
        .await;
        assert!(!log.contains(&canary), "{log}");
        assert!(!log.contains(&secret) && !log.contains(&secret_b64), "{log}");
        assert!(log.contains("raw:[redacted]") && log.contains("b64:[redacted]"), "{log}");
        assert!(log.contains("FERRY_TEST_MARK="), "the service env is given:\n{log}");
        if root {
            assert!(log.contains("replica uid 65534"), "{log}");
        }
        let out = ferry.cli(&["logs", "iso", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("raw:[redacted]") && !out.stdout.contains(&secret), "{out}");

        // The proxy does not get the server's environment either.
        let proxy: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ferry.data.join("proxy/proxy.json")).expect("proxy.json"),
        )
        .expect("proxy.json");
        let pid = proxy["pid"].as_u64().expect("proxy pid");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("proxy environ");
        assert!(!String::from_utf8_lossy(&environ).contains("FERRY_CANARY"), "the proxy inherited the server's environment");

        // The data directory: 0700, every directory in it 0700 and every file 0600.
        assert_eq!(mode(&ferry.data), 0o700);
        let mut all = Vec::new();
        walk(&ferry.data, &mut all);
        assert!(all.len() > 5, "{all:?}");
        for path in all {
            let meta = std::fs::symlink_metadata(&path).expect("meta");
            if meta.is_dir() {
                assert_eq!(mode(&path), 0o700, "{}", path.display());
            } else if meta.is_file() {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
        }
    })
    .await;
}

/// A data directory left readable by an older version is made private at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_existing_data_directory_is_made_private_at_start() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        ferry.kill9_server();
        let logs = ferry.data.join("logs");
        std::fs::create_dir_all(&logs).expect("logs");
        std::fs::write(logs.join("old.log"), "old").expect("old log");
        for (path, m) in [
            (ferry.data.clone(), 0o755),
            (logs.clone(), 0o755),
            (logs.join("old.log"), 0o644),
            (ferry.data.join("ferry.db"), 0o644),
            (ferry.data.join("admin.token"), 0o644),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m)).expect("chmod");
        }
        ferry.start_server().await;
        assert_eq!(mode(&ferry.data), 0o700);
        assert_eq!(mode(&logs), 0o700);
        for file in [
            logs.join("old.log"),
            ferry.data.join("ferry.db"),
            ferry.data.join("admin.token"),
        ] {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    })
    .await;
}
