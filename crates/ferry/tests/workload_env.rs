//! What a workload's environment holds, compared whole (as `env -i` would start it), for
//! every path that starts something on the process runtime: a replica, a pre_deploy hook, a
//! gate command check and a command analysis. Each is a python3 script that writes the
//! environment it was started with (`/proc/self/environ`) to a file; the test compares the
//! set of names with exactly what the manifest, the secrets and the documented variables give
//! (docs/security.md), and checks that no value of Ferry's own (the registry credentials, the
//! server's environment, the admin token, the keys in the data directory, the proxy's admin
//! token) is anywhere in it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Ferry, SERIAL, bounded, free_port};
use ferry_core::model::DeploymentState;

const LIMIT: Duration = Duration::from_secs(240);

/// `probe.py LABEL OUT [serve]`: writes its environment to `OUT/LABEL-PID.env`; with
/// `serve`, then answers HTTP on 127.0.0.1:$PORT (dies at once on SIGTERM).
const PROBE: &str = r#"import http.server, os, sys
label, out = sys.argv[1], sys.argv[2]
path = os.path.join(out, "%s-%d.env" % (label, os.getpid()))
with open(path + ".tmp", "wb") as f:
    f.write(open("/proc/self/environ", "rb").read())
os.rename(path + ".tmp", path)
if sys.argv[3:] == ["serve"]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["VERSION"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// The server's variables a workload may inherit (isolation's pass-through set, and the
/// user's identity).
const BASE: [&str; 7] = ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"];

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The environments the probes wrote, by label.
fn environments(out: &Path) -> BTreeMap<String, Vec<BTreeMap<String, Vec<u8>>>> {
    let mut found: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for entry in std::fs::read_dir(out)
        .expect("read the probes' directory")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some((label, _)) = name.strip_suffix(".env").and_then(|n| n.split_once('-')) else {
            continue;
        };
        let bytes = std::fs::read(entry.path()).expect("read an environment");
        let vars = bytes
            .split(|b| *b == 0)
            .filter(|v| !v.is_empty())
            .map(|v| {
                let at = v.iter().position(|b| *b == b'=').expect("NAME=value");
                (
                    String::from_utf8_lossy(&v[..at]).to_string(),
                    v[at + 1..].to_vec(),
                )
            })
            .collect();
        found.entry(label.to_string()).or_default().push(vars);
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workloads_environment_is_exactly_its_manifest_secrets_and_documented_variables() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let canary = format!("server-only-{}", std::process::id());
        let ferry = Ferry::start_with_env(&[("FERRY_CANARY_CREDENTIAL", canary.as_str())]).await;
        let root = nix::unistd::Uid::effective().is_root();
        let out = ferry.dir.path().join("environments");
        std::fs::create_dir(&out).expect("mkdir");
        // Workloads run as `nobody` under root: they must be able to write there.
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let probe = ferry.dir.path().join("probe.py");
        std::fs::write(&probe, PROBE).expect("probe.py");
        let argv = |label: &str, serve: bool| {
            let mut argv = vec![
                "python3".to_string(),
                probe.display().to_string(),
                label.to_string(),
                out.display().to_string(),
            ];
            if serve {
                argv.push("serve".into());
            }
            serde_json::to_string(&argv).expect("json")
        };
        let mark = serde_json::to_string(&ferry.mark).expect("json");
        let manifest = format!(
            r#"app: envs
vars: {{ APP_LEVEL: app }}
services:
  web:
    run: {replica}
    replicas: 1
    env: {{ FERRY_TEST_MARK: {mark}, GREETING: hello }}
    stop_timeout: 5s
    health: {{ path: /, interval: 300ms, timeout: 300ms, start_timeout: 60s }}
hooks:
  pre_deploy:
    - name: probe
      run: {hook}
      env: {{ HOOK_ONLY: hook }}
environments:
  production:
    listen: 127.0.0.1:{port}
    vars: {{ REGION: eu }}
    gates: {{ checks: [ {{ name: probe, run: {check}, interval: 300ms }} ] }}
    strategy:
      canary:
        steps:
          - weight: 50
            analysis:
              interval: 500ms
              metrics: [ {{ name: probe, command: {{ run: {analysis} }} }} ]
"#,
            replica = argv("replica", true),
            hook = argv("hook", false),
            check = argv("check", false),
            analysis = argv("analysis", false),
            port = free_port(),
        );
        let path = ferry.dir.path().join("ferry.yaml");
        std::fs::write(&path, manifest).expect("manifest");
        ferry.apply(&path).await;
        let registry_password = format!("registry-s3cr3t-{}", std::process::id());
        for (name, value) in [
            ("API_KEY", "api-key-value"),
            ("FERRY_REGISTRY_USERNAME", "robot-puller"),
            ("FERRY_REGISTRY_PASSWORD", registry_password.as_str()),
        ] {
            let out = ferry
                .cli_with_stdin(
                    &["secrets", "set", "envs", "--env", "production", name],
                    value,
                )
                .await;
            assert_eq!(out.code, 0, "{out}");
        }

        // 1.0.0 starts plainly (nothing serves yet); 2.0.0 is a canary with its analysis.
        for version in ["1.0.0", "2.0.0"] {
            let id = ferry.deploy_id_to("envs", "production", version).await;
            let done = ferry.wait_terminal(id, Duration::from_secs(120)).await;
            assert_eq!(
                done.state,
                DeploymentState::Succeeded,
                "{version}: {done:?}\n{}",
                ferry.timeline(id).await
            );
        }

        let found = environments(&out);
        let documented = |label: &str| -> BTreeSet<String> {
            match label {
                "replica" => names(&[
                    "PORT",
                    "VERSION",
                    "FERRY_APP",
                    "FERRY_ENV",
                    "FERRY_SERVICE",
                    "FERRY_REPLICA_ID",
                    "FERRY_TEST_MARK",
                    "GREETING",
                    "APP_LEVEL",
                    "REGION",
                    "API_KEY",
                ]),
                "hook" => names(&[
                    "VERSION",
                    "PREVIOUS_VERSION",
                    "FERRY_APP",
                    "FERRY_ENV",
                    "FERRY_DEPLOYMENT_ID",
                    "FERRY_HOOK",
                    "FERRY_HOOK_RUN_ID",
                    "HOOK_ONLY",
                    "APP_LEVEL",
                    "REGION",
                    "API_KEY",
                ]),
                "check" => names(&[
                    "VERSION",
                    "FERRY_APP",
                    "FERRY_ENV",
                    "APP_LEVEL",
                    "REGION",
                    "API_KEY",
                ]),
                "analysis" => names(&["VERSION", "FERRY_APP", "FERRY_ENV"]),
                other => panic!("unexpected probe {other}"),
            }
        };
        assert_eq!(
            found.keys().cloned().collect::<BTreeSet<_>>(),
            names(&["analysis", "check", "hook", "replica"]),
            "every path wrote its environment"
        );
        // Ferry's own values: none may be in any workload's environment.
        let mut forbidden: Vec<(String, Vec<u8>)> = vec![
            (
                "the registry password".into(),
                registry_password.clone().into_bytes(),
            ),
            ("the registry user".into(), b"robot-puller".to_vec()),
            (
                "the server's environment".into(),
                canary.clone().into_bytes(),
            ),
            (
                "the data directory's path".into(),
                ferry.data.display().to_string().into_bytes(),
            ),
        ];
        for file in [
            "admin.token",
            "secrets.key",
            "audit.key",
            "proxy/admin.token",
        ] {
            let bytes =
                std::fs::read(ferry.data.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let text = String::from_utf8_lossy(&bytes).trim().to_string();
            assert!(text.len() >= 16, "{file} holds a key");
            forbidden.push((file.to_string(), text.into_bytes()));
        }
        for (label, seen) in &found {
            for vars in seen {
                let given: BTreeSet<String> = vars
                    .keys()
                    .filter(|name| !BASE.contains(&name.as_str()))
                    .cloned()
                    .collect();
                assert_eq!(given, documented(label), "{label}: {:?}", vars.keys());
                for name in BASE {
                    let Some(value) = vars.get(name) else {
                        continue;
                    };
                    let value = String::from_utf8_lossy(value);
                    let inherited = std::env::var(name).ok();
                    let as_nobody = root && ["HOME", "USER", "LOGNAME"].contains(&name);
                    assert!(
                        as_nobody || inherited.as_deref() == Some(&*value),
                        "{label}: {name}={value} is neither the server's nor the user's"
                    );
                }
                for (what, value) in &forbidden {
                    for (name, given) in vars {
                        assert!(!contains(given, value), "{label}: {what} in {name}");
                    }
                }
                assert_eq!(
                    vars.get("API_KEY").map(Vec::as_slice),
                    (label != "analysis").then_some(b"api-key-value".as_slice()),
                    "{label}: the app's secret"
                );
            }
        }
        assert!(found["replica"].len() >= 2, "both versions' replicas");
    })
    .await;
}
