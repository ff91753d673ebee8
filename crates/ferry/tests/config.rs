//! Layered configuration end to end with the real binary: effective config and its
//! sources, `config diff`, secrets never printed, `apply` restarts nothing, `redeploy`
//! replaces replicas under load with zero failed requests, a secret change reaches the new
//! replicas, unchanged config succeeds at once, a broken config rolls back.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{Ferry, Load, SERIAL, Spec, bounded, files_containing};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(400);

/// The test manifest: top-level vars, a templated service env, a second environment.
fn write(ferry: &Ferry, spec: &Spec, staging_port: u16, db_host: &str, broken: &str) -> PathBuf {
    let path = ferry.write_manifest(spec, "ferry.yaml");
    let yaml = std::fs::read_to_string(&path).expect("manifest");
    let yaml = yaml.replace(
        "    env: { FERRY_TEST_MARK: ",
        "    env: { DATABASE_URL: \"postgres://${DB_HOST}:5432/${DB_NAME}\", FERRY_TEST_MARK: ",
    );
    let yaml = format!(
        "vars:\n  DB_HOST: {db_host}\n  DB_NAME: shop\n  BROKEN: \"{broken}\"\n{yaml}  staging:\n    listen: 127.0.0.1:{staging_port}\n    vars: {{ DB_HOST: db-staging }}\n"
    );
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

/// `n` answers of the listener's `/`: their bodies.
async fn bodies(listener: &str, n: usize) -> BTreeSet<String> {
    let client = reqwest::Client::new();
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let body = client
            .get(format!("http://{listener}/"))
            .send()
            .await
            .expect("GET through the proxy")
            .text()
            .await
            .expect("body");
        out.insert(body.trim().to_string());
    }
    out
}

async fn replica_ids(ferry: &Ferry, spec: &Spec) -> BTreeSet<(String, Option<u32>)> {
    ferry
        .status_api(spec)
        .await
        .replicas
        .iter()
        .map(|r| (r.id.clone(), r.pid))
        .collect()
}

async fn latest_deployment_id(ferry: &Ferry, spec: &Spec) -> i64 {
    let out = ferry
        .cli(&["history", &spec.app, "--env", &spec.env, "-o", "json"])
        .await;
    assert_eq!(out.code, 0, "{out}");
    out.json()[0]["id"].as_i64().expect("a deployment id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn layered_config_diff_and_redeploys() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("cfg");
        spec.replicas = 2;
        // The body says which DATABASE_URL and which secret length the replica got.
        spec.prelude = "[ \"$BROKEN\" = yes ] && exit 1; \
             K=$(printf %s \"$API_KEY\" | wc -c); \
             export FERRY_SERVICE=\"web@$DATABASE_URL@k$((K))\";"
            .to_string();
        let staging_port = common::free_port();
        let listener = spec.listener();

        // An unknown reference is a located error at apply time.
        let bad = write(&ferry, &spec, staging_port, "db-a", "no");
        let text = std::fs::read_to_string(&bad).unwrap().replace(
            "${DB_HOST}:5432",
            "${DB_HOSTT}:5432",
        );
        std::fs::write(&bad, text).unwrap();
        let out = ferry
            .cli(&["apply", "-f", &bad.display().to_string()])
            .await;
        assert_eq!(out.code, 2, "{out}");
        assert!(
            out.stderr.contains(
                "services.web.env.DATABASE_URL: unknown variable DB_HOSTT (hint: did you mean DB_HOST?)"
            ),
            "{out}"
        );

        let manifest = write(&ferry, &spec, staging_port, "db-a", "no");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        assert_eq!(
            bodies(&listener, 6).await,
            BTreeSet::from(["hello from web@postgres://db-a:5432/shop@k0 1.0.0".to_string()])
        );

        // Effective config with sources.
        let out = ferry
            .cli(&["config", "cfg", "--env", "production", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let cfg = out.json();
        assert_eq!(cfg["version"], "1.0.0");
        let vars = &cfg["services"][0]["vars"];
        let var = |name: &str| {
            vars.as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {vars}"))
                .clone()
        };
        assert_eq!(var("DATABASE_URL")["value"], "postgres://db-a:5432/shop");
        assert_eq!(var("DATABASE_URL")["source"], "service:web");
        assert_eq!(var("DB_HOST")["source"], "app");
        assert_eq!(var("VERSION")["value"], "1.0.0");
        assert_eq!(var("VERSION")["source"], "builtin");
        assert!(
            cfg["services"][0]["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["up_to_date"] == true),
            "{cfg}"
        );

        // A secret: listed by name, version and fingerprint, never its value.
        let secret_one = format!("first-secret-{}", std::process::id());
        let out = ferry.cli_with_stdin(&["secrets", "set", "cfg", "--env", "production", "API_KEY"],
            &secret_one,
        )
        .await;
        assert_eq!(out.code, 0, "{out}");
        let out = ferry.cli(&["config", "cfg", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("DATABASE_URL"), "{out}");
        assert!(out.stdout.contains("service:web"), "{out}");
        assert!(out.stdout.contains("(secret)"), "{out}");
        assert!(out.stdout.contains("secret v1"), "{out}");
        assert!(out.stdout.contains("older configuration"), "{out}");
        assert!(!out.stdout.contains(&secret_one), "{out}");
        let out = ferry
            .cli(&["config", "cfg", "--env", "production", "-o", "json"])
            .await;
        assert!(!out.stdout.contains(&secret_one), "{out}");

        // Diff of two environments.
        let out = ferry
            .cli(&["config", "diff", "cfg", "production", "staging", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let diff = out.json();
        let find = |name: &str| {
            diff.as_array()
                .unwrap()
                .iter()
                .find(|d| d["name"] == name)
                .cloned()
        };
        let db = find("DB_HOST").expect("DB_HOST differs");
        assert_eq!(db["kind"], "different");
        assert_eq!(db["left"], "db-a");
        assert_eq!(db["right"], "db-staging");
        assert_eq!(find("DATABASE_URL").expect("differs")["kind"], "different");
        let key = find("API_KEY").expect("API_KEY only in production");
        assert_eq!(key["kind"], "only-in-left");
        assert_eq!(key["left"], "(secret) v1");
        assert!(find("DB_NAME").is_none(), "{diff}");
        assert!(find("FERRY_ENV").is_none(), "built-ins are left out: {diff}");
        let out = ferry
            .cli(&["config", "diff", "cfg", "production", "staging"])
            .await;
        assert!(out.stdout.contains("db-staging"), "{out}");
        assert!(!out.stdout.contains(&secret_one), "{out}");

        // Applying changed vars restarts nothing.
        let before = replica_ids(&ferry, &spec).await;
        let manifest = write(&ferry, &spec, staging_port, "db-b", "no");
        ferry.apply(&manifest).await;
        let watch_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < watch_until {
            assert_eq!(replica_ids(&ferry, &spec).await, before, "apply restarted replicas");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            bodies(&listener, 4).await,
            BTreeSet::from(["hello from web@postgres://db-a:5432/shop@k0 1.0.0".to_string()])
        );

        // Redeploy under load: every replica replaced, no failed request.
        let load = Load::start(&listener, 4);
        load.warm_up(20).await;
        let out = ferry
            .cli(&[
                "redeploy", "cfg", "--env", "production", "--wait", "--timeout", "90s",
                "--reason", "new database host",
            ])
            .await;
        let report = load.stop().await;
        assert_eq!(out.code, 0, "redeploy failed:\n{out}\n{}", ferry.server_logs());
        report.assert_no_failures(&ferry.timelines(&spec, common::wall_ms()).await);
        let id = latest_deployment_id(&ferry, &spec).await;
        let detail = ferry.deployment(id).await;
        assert_eq!(detail.deployment.kind, "redeploy");
        assert_eq!(detail.deployment.version, "1.0.0");
        let lines = ferry.timeline(id).await;
        eprintln!("redeploy:\n{lines}\n{} requests", report.total());
        assert!(lines.contains("config changed: "), "{lines}");
        assert!(lines.contains("DB_HOST"), "{lines}");
        assert!(lines.contains("secret API_KEY v1 (added)"), "{lines}");
        assert!(!lines.contains("db-b"), "values never on the timeline: {lines}");
        let after = replica_ids(&ferry, &spec).await;
        assert_eq!(after.len(), 2);
        assert!(before.is_disjoint(&after), "{before:?} vs {after:?}");
        let expected = format!(
            "hello from web@postgres://db-b:5432/shop@k{} 1.0.0",
            secret_one.len()
        );
        assert_eq!(bodies(&listener, 6).await, BTreeSet::from([expected]));

        // A secret change reaches the new replicas through a redeploy.
        let secret_two = format!("second-and-longer-secret-{}", std::process::id());
        let out = ferry.cli_with_stdin(&["secrets", "set", "cfg", "--env", "production", "API_KEY"],
            &secret_two,
        )
        .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("ferry redeploy cfg --env production"), "{out}");
        let out = ferry
            .cli(&["redeploy", "cfg", "--env", "production", "--wait", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let id = out.json()["id"].as_i64().expect("id");
        let lines = ferry.timeline(id).await;
        assert!(lines.contains("config changed: secret API_KEY v1 → v2"), "{lines}");
        let expected = format!(
            "hello from web@postgres://db-b:5432/shop@k{} 1.0.0",
            secret_two.len()
        );
        assert_eq!(bodies(&listener, 6).await, BTreeSet::from([expected.clone()]));

        // Nothing changed: no deployment at all, replaces nothing; `ferry deploy` of the
        // serving version succeeds at once.
        let before = replica_ids(&ferry, &spec).await;
        let latest = latest_deployment_id(&ferry, &spec).await;
        let out = ferry
            .cli(&["redeploy", "cfg", "--env", "production", "--wait", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(out.json()["unchanged"], true, "{out}");
        assert_eq!(latest_deployment_id(&ferry, &spec).await, latest, "no deployment");
        let out = ferry.deploy_ok(&spec, "1.0.0").await;
        assert!(out.stdout.contains("1.0.0"), "{out}");
        let id = latest_deployment_id(&ferry, &spec).await;
        assert_eq!(ferry.deployment(id).await.deployment.kind, "redeploy");
        assert!(ferry.timeline(id).await.contains("nothing to redeploy"));
        assert_eq!(replica_ids(&ferry, &spec).await, before);

        // A broken configuration: the new replicas never become healthy, the old ones keep
        // serving, and the redeploy ends rolled back with the reason.
        let manifest = write(&ferry, &spec, staging_port, "db-b", "yes");
        ferry.apply(&manifest).await;
        let load = Load::start(&listener, 2);
        load.warm_up(10).await;
        let out = ferry
            .cli(&["redeploy", "cfg", "--env", "production", "--wait", "-o", "json"])
            .await;
        let report = load.stop().await;
        assert_eq!(out.code, 3, "a broken redeploy must fail:\n{out}");
        report.assert_no_failures("old replicas keep serving during a failed redeploy");
        let id = latest_deployment_id(&ferry, &spec).await;
        let detail = ferry.deployment(id).await;
        assert_eq!(detail.deployment.state.as_str(), "rolled-back", "{}", ferry.timeline(id).await);
        assert!(ferry.timeline(id).await.contains("previous configuration kept"));
        assert!(detail.deployment.reason.is_some());
        eprintln!("broken redeploy:\n{}", ferry.timeline(id).await);
        assert_eq!(bodies(&listener, 6).await, BTreeSet::from([expected]));
        let status = ferry
            .wait_status(&spec, Duration::from_secs(30), "two replicas serving", |s| {
                s.replicas.len() == 2 && s.replicas.iter().all(|r| r.in_traffic)
            })
            .await;
        let still: BTreeSet<String> = status.replicas.iter().map(|r| r.id.clone()).collect();
        let old: BTreeSet<String> = before.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(still, old, "the old replicas keep serving");

        // Fixed again: retrying the failed redeploy is a redeploy, and the replicas that
        // kept serving already run that configuration.
        let manifest = write(&ferry, &spec, staging_port, "db-b", "no");
        ferry.apply(&manifest).await;
        let out = ferry
            .cli(&["retry", "cfg", "--env", "production", "--wait", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert_eq!(out.json()["kind"], "redeploy", "{out}");
        let id = out.json()["id"].as_i64().expect("id");
        assert!(ferry.timeline(id).await.contains("nothing to redeploy"));

        // The secret values are nowhere: outputs above, logs, database files.
        for value in [&secret_one, &secret_two] {
            let found = files_containing(ferry.dir.path(), value.as_bytes());
            assert!(found.is_empty(), "a secret value is in {found:?}");
        }
    })
    .await;
}

/// In a canary environment a redeploy takes the rolling path (weights are per version):
/// no canary steps, every replica replaced, no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_environments_redeploy_on_the_rolling_path() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("cfgcanary");
        spec.replicas = 2;
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 1h }] } }".to_string();
        spec.prelude = "export FERRY_SERVICE=\"web@$DATABASE_URL\";".to_string();
        let staging_port = common::free_port();
        let listener = spec.listener();
        let manifest = write(&ferry, &spec, staging_port, "db-a", "no");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let before = replica_ids(&ferry, &spec).await;

        let manifest = write(&ferry, &spec, staging_port, "db-b", "no");
        ferry.apply(&manifest).await;
        let load = Load::start(&listener, 4);
        load.warm_up(20).await;
        let out = ferry
            .cli(&[
                "redeploy",
                "cfgcanary",
                "--env",
                "production",
                "--wait",
                "-o",
                "json",
            ])
            .await;
        let report = load.stop().await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        report.assert_no_failures(&ferry.timelines(&spec, common::wall_ms()).await);
        let id = out.json()["id"].as_i64().expect("id");
        let lines = ferry.timeline(id).await;
        assert!(
            lines.contains("config changed: DATABASE_URL, DB_HOST"),
            "{lines}"
        );
        assert!(!lines.contains("pause"), "no canary steps: {lines}");
        let after = replica_ids(&ferry, &spec).await;
        assert_eq!(after.len(), 2);
        assert!(before.is_disjoint(&after), "{before:?} vs {after:?}");
        assert_eq!(
            bodies(&listener, 6).await,
            BTreeSet::from(["hello from web@postgres://db-b:5432/shop 1.0.0".to_string()])
        );
    })
    .await;
}

/// `ferry apply` alone never changes what runs: replicas replaced after the server and
/// every replica were killed, and replicas re-adopted after a restart, keep the
/// configuration of the deployment that made the version current; `ferry redeploy` brings
/// the applied change.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_keep_their_deployments_configuration_until_the_next_deployment() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let mut spec = Spec::new("pinned");
        spec.replicas = 2;
        spec.prelude = "export FERRY_SERVICE=\"web@$DATABASE_URL\";".to_string();
        let staging_port = common::free_port();
        let listener = spec.listener();
        let first = write(&ferry, &spec, staging_port, "db-a", "no");
        ferry.apply(&first).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let a = "web@postgres://db-a:5432/shop";
        assert!(bodies(&listener, 20).await.iter().all(|b| b.contains(a)));

        // A new manifest, no deployment.
        let second = write(&ferry, &spec, staging_port, "db-b", "no");
        ferry.apply(&second).await;

        // The server dies, then every replica: the next server replaces them all.
        let before = replica_ids(&ferry, &spec).await;
        ferry.kill9_server();
        for pid in before.iter().filter_map(|(_, pid)| *pid) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        ferry.start_server().await;
        let replaced = ferry
            .wait_status(&spec, Duration::from_secs(60), "two new healthy replicas", |s| {
                let live = common::active_replicas(s);
                live.len() == 2
                    && live.iter().all(|r| {
                        r.state == ferry_core::model::ReplicaState::Healthy
                            && !before.iter().any(|(id, _)| *id == r.id)
                    })
            })
            .await;
        assert_eq!(replaced.current_version.as_deref(), Some("1.0.0"));
        // Healthy is not yet routed: wait until the proxy's table has them.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !bodies(&listener, 1).await.iter().all(|b| b.starts_with("hello from")) {
            assert!(Instant::now() < deadline, "the replaced replicas are never routed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answers = bodies(&listener, 20).await;
        assert!(
            answers.iter().all(|b| b.contains(a)),
            "replaced replicas run the deployed configuration, not the merely applied one: {answers:?}"
        );

        // Re-adopted after a plain restart: still the deployed configuration.
        ferry.kill9_server();
        ferry.start_server().await;
        assert!(bodies(&listener, 20).await.iter().all(|b| b.contains(a)));

        // The next deployment brings the applied change.
        let out = ferry
            .cli(&["redeploy", "pinned", "--env", "production", "--wait", "--timeout", "60s"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let answers = bodies(&listener, 20).await;
        assert!(
            answers
                .iter()
                .all(|b| b.contains("web@postgres://db-b:5432/shop")),
            "{answers:?}"
        );
    })
    .await;
}
