//! Feature flags end to end against a live `ferry server`: the CLI, and the real SDKs — the
//! Python `UnleashClient`, the Node `unleash-client` and OpenFeature's Python SDK with the
//! OFREP provider — evaluating the Unleash client specification's states as it expects.
//!
//! The SDKs are installed by `.ci/run` into `$CARGO_TARGET_DIR/flags-sdks` (a venv and a
//! node_modules; `FERRY_FLAG_SDKS` names another place). Without them the SDK test says
//! SKIPPED, unless `FERRY_REQUIRE_SDKS=1` (as in CI), where it fails.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Ferry, SERIAL, bounded, free_port};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(300);
const SPEC_DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../ferry-core/tests/data/unleash-client-specification"
);
const DRIVERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flags_sdk");

/// The specification files served through Ferry. Left out: 18 (non-ASCII flag names,
/// which Ferry refuses), 19 and 20 (the delta API's events, not what SDKs poll here);
/// the engine itself runs all 22 (`ferry-core/tests/flags_spec.rs`).
const SERVED: [&str; 19] = [
    "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15", "16",
    "17", "21", "22",
];

fn sdks() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_FLAG_SDKS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target"))
                });
            target.join("flags-sdks")
        });
    let ready = dir.join("venv/bin/python").exists()
        && dir.join("node/node_modules/unleash-client").exists();
    if ready {
        return Some(dir);
    }
    let required = std::env::var("FERRY_REQUIRE_SDKS").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "FERRY_REQUIRE_SDKS=1 but no SDKs in {}",
        dir.display()
    );
    eprintln!("SKIPPED: no flag SDKs in {} (see .ci/run)", dir.display());
    None
}

fn spec_file(prefix: &str) -> (PathBuf, Value) {
    let entry = std::fs::read_dir(SPEC_DIR)
        .expect("spec dir")
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
        })
        .expect("spec file");
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).expect("read"))
        .expect("spec JSON");
    (entry.path(), spec)
}

/// A manifest with one environment per name (no services run: flags need none).
fn manifest(ferry: &Ferry, app: &str, envs: &[String]) -> PathBuf {
    let mut yaml = format!("app: {app}\nservices:\n  web:\n    run: [\"true\"]\nenvironments:\n");
    for env in envs {
        yaml.push_str(&format!(
            "  {env}:\n    listen: 127.0.0.1:{}\n",
            free_port()
        ));
    }
    let path = ferry.dir.path().join(format!("{app}.yaml"));
    std::fs::write(&path, yaml).expect("manifest");
    path
}

async fn ok(ferry: &Ferry, args: &[&str]) -> common::CliOutput {
    let out = ferry.cli(args).await;
    assert_eq!(out.code, 0, "ferry {}:\n{out}", args.join(" "));
    out
}

async fn run_driver(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Value {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("the SDK driver finished in time")
        .expect("run the SDK driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("driver output is not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flags_through_the_cli() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let m = manifest(&ferry, "shop", &["staging".into()]);
        ferry.apply(&m).await;
        let at = ["shop", "--env", "staging"];
        let with = |cmd: &[&str], rest: &[&str]| -> Vec<String> {
            cmd.iter()
                .chain(at.iter())
                .chain(rest.iter())
                .map(|s| s.to_string())
                .collect()
        };
        let f = &ferry;
        let run = move |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(f, &args).await
        };
        let created = run(with(&["flags", "create"], &["checkout", "-o", "json"]))
            .await
            .json();
        assert_eq!(created["summary"]["enabled"], false);
        let out = run(with(
            &["--reason", "launch day", "flags", "enable"],
            &["checkout"],
        ))
        .await;
        assert!(out.stdout.contains("on, rollout 100%"), "{out}");
        run(with(
            &["flags", "rollout"],
            &["checkout", "25", "--stickiness", "userId"],
        ))
        .await;
        let v = run(with(
            &["flags", "variants"],
            &[
                "checkout",
                "blue=30",
                "red",
                "--payload",
                "blue=string:dark",
                "-o",
                "json",
            ],
        ))
        .await
        .json();
        assert_eq!(v["feature"]["variants"][0]["payload"]["value"], "dark");
        assert_eq!(v["feature"]["variants"][1]["weight"], 700);
        let list = run(with(&["flags", "list"], &["-o", "json"])).await.json();
        assert_eq!(list["flags"][0]["rollout"], 25);
        assert_eq!(list["revision"], 4);
        let show = run(with(&["flags", "show"], &["checkout", "-o", "json"]))
            .await
            .json();
        let enable = &show["changes"][2];
        assert_eq!(
            (enable["action"].clone(), enable["reason"].clone()),
            (json!("enable"), json!("launch day"))
        );
        let text = run(with(&["flags", "list"], &[])).await;
        assert!(
            text.stdout.contains("checkout") && text.stdout.contains("25%"),
            "{text}"
        );

        // export → import into a fresh flag set round-trips
        let file = ferry.dir.path().join("export.json");
        run(with(&["flags", "export"], &[file.to_str().unwrap()])).await;
        run(with(&["flags", "disable"], &["checkout"])).await;
        let imported = run(with(
            &["flags", "import"],
            &[file.to_str().unwrap(), "-o", "json"],
        ))
        .await
        .json();
        assert_eq!(
            (imported["imported"].clone(), imported["created"].clone()),
            (json!(1), json!(0))
        );
        let show = run(with(&["flags", "show"], &["checkout", "-o", "json"]))
            .await
            .json();
        assert_eq!(show["summary"]["enabled"], true, "the export had it on");

        // bad input: a located error, exit code 2 (invalid) or 6 (not found)
        let bad = ferry
            .cli(&[
                "flags", "rollout", "shop", "--env", "staging", "checkout", "150",
            ])
            .await;
        assert_eq!(bad.code, 2, "{bad}");
        let missing = ferry
            .cli(&["flags", "enable", "shop", "--env", "staging", "nope"])
            .await;
        assert_eq!(missing.code, 6, "{missing}");
        let token = run(with(
            &["flags", "token", "create"],
            &["--name", "web", "-o", "json"],
        ))
        .await
        .json();
        assert!(token["token"].as_str().unwrap().starts_with("ferry_flags_"));
        let tokens = run(with(&["flags", "token", "list"], &[])).await;
        assert!(
            tokens.stdout.contains("web") && !tokens.stdout.contains("ferry_flags_"),
            "{tokens}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_unleash_and_openfeature_sdks_evaluate_the_specification_through_ferry() {
    let Some(sdks) = sdks() else { return };
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let envs: Vec<String> = SERVED.iter().map(|n| format!("s{n}")).collect();
        let mut all = envs.clone();
        all.push("ofrep".into());
        ferry.apply(&manifest(&ferry, "spec", &all)).await;

        // each specification state in an environment of its own, with a client token
        let mut plan = Vec::new();
        for (n, env) in SERVED.iter().zip(&envs) {
            let (_, mut spec) = spec_file(n);
            // an operator this version does not know is refused at import; the flag
            // that uses it is left out (its case expects `false`, as for a missing flag)
            if let Some(features) = spec["state"]["features"].as_array_mut() {
                features.retain(|f| {
                    !f.to_string().contains("NOT_A_VALID_OPERATOR")
                });
            }
            let state = ferry.dir.path().join(format!("state-{n}.json"));
            std::fs::write(&state, spec["state"].to_string()).unwrap();
            ok(&ferry, &["flags", "import", "spec", "--env", env, state.to_str().unwrap()]).await;
            let token = ok(&ferry, &["flags", "token", "create", "spec", "--env", env, "-o", "json"])
                .await
                .json()["token"]
                .as_str()
                .unwrap()
                .to_string();
            let spec_path = ferry.dir.path().join(format!("spec-{n}.json"));
            std::fs::write(&spec_path, spec.to_string()).unwrap();
            plan.push(json!({"token": token, "spec": spec_path}));
        }
        let plan_path = ferry.dir.path().join("plan.json");
        std::fs::write(&plan_path, Value::from(plan).to_string()).unwrap();
        let plan_arg = plan_path.to_str().unwrap();

        let python = sdks.join("venv/bin/python");
        let py = run_driver(
            &python,
            &[&format!("{DRIVERS}/unleash_python.py"), &ferry.url, plan_arg],
            &[],
        )
        .await;
        let node_modules = sdks.join("node/node_modules");
        let node = run_driver(
            Path::new("node"),
            &[&format!("{DRIVERS}/unleash_node.js"), &ferry.url, plan_arg],
            &[("NODE_PATH", &node_modules)],
        )
        .await;
        for (sdk, result) in [("UnleashClient (Python)", &py), ("unleash-client (Node)", &node)] {
            assert_eq!(result["failures"], json!([]), "{sdk}: {result:#}");
            assert!(result["cases"].as_u64().unwrap() >= 250, "{sdk}: {result}");
        }

        // the Python SDK registered and reported its counts (metrics every second)
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = ok(&ferry, &["flags", "metrics", "spec", "--env", "s01", "-o", "json"]).await.json();
            if m["metrics"].as_array().is_some_and(|rows| rows.iter().any(|r| r["yes"].as_i64() > Some(0))) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no SDK counts arrived: {m}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }

        // OpenFeature over OFREP
        let doc = json!({"features": [
            {"name": "beta", "enabled": true, "strategies": [{"name": "userWithId", "parameters": {"userIds": "u1"}}]},
            {"name": "banner", "enabled": true, "strategies": [{"name": "default"}],
             "variants": [{"name": "big", "weight": 1000, "payload": {"type": "string", "value": "BIG"}}]},
            {"name": "config", "enabled": true, "strategies": [{"name": "default", "constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro"]}]}],
             "variants": [{"name": "pro", "weight": 1000, "payload": {"type": "json", "value": "{\"limit\": 100}"}}]}
        ]});
        let file = ferry.dir.path().join("ofrep.json");
        std::fs::write(&file, doc.to_string()).unwrap();
        ok(&ferry, &["flags", "import", "spec", "--env", "ofrep", file.to_str().unwrap()]).await;
        let token = ok(&ferry, &["flags", "token", "create", "spec", "--env", "ofrep", "-o", "json"])
            .await
            .json()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let of = run_driver(&python, &[&format!("{DRIVERS}/ofrep_python.py"), &ferry.url, &token], &[]).await;
        assert_eq!(of["beta/u1"]["value"], true, "{of:#}");
        assert_eq!(of["beta/u1"]["variant"], "on", "{of:#}");
        assert_eq!(of["beta/u1"]["reason"], "TARGETING_MATCH", "{of:#}");
        assert_eq!(of["beta/u9"]["value"], false, "{of:#}");
        assert_eq!(of["beta/u9"]["variant"], "off", "{of:#}");
        assert_eq!(of["missing/u1"]["error_code"], "FLAG_NOT_FOUND", "{of:#}");
        assert_eq!(of["banner"]["value"], "BIG", "{of:#}");
        assert_eq!(of["config"]["value"], json!({"limit": 100}), "{of:#}");
    })
    .await;
}
