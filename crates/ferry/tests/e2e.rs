//! End-to-end tests of the `ferry` binary: real server, proxy and `ferry-demo` replicas on
//! 127.0.0.1, driven through the CLI and the HTTP API.

mod common;

use std::time::Duration;

use common::{Ferry, Load, SERIAL, Spec, active_replicas, bounded, is_alive};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_requires_token() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let http = reqwest::Client::new();
        let url = |path: &str| format!("{}{path}", ferry.url);

        let resp = http.get(url("/v1/apps")).send().await.unwrap();
        assert_eq!(resp.status(), 401, "no token must be refused");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "error body: {body}");

        let resp = http
            .get(url("/v1/apps"))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "a wrong token must be refused");

        let resp = http
            .get(url("/v1/apps"))
            .header("Authorization", format!("Basic {}", ferry.token))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "a non-bearer scheme must be refused");

        let resp = http
            .get(url("/v1/whoami"))
            .bearer_auth(&ferry.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "the admin token must be accepted");

        for open in ["/healthz", "/readyz"] {
            let resp = http.get(url(open)).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{open} must not need a token");
        }

        // The CLI maps 401 to exit code 5 with a message.
        let out = ferry.cli_with_token(&["apps"], Some("wrong")).await;
        assert_eq!(out.code, 5, "{out}");
        assert!(out.stderr.starts_with("error: "), "{out}");
        let out = ferry.cli_with_token(&["apps"], None).await;
        assert_eq!(out.code, 5, "{out}");
        assert!(
            out.stderr.contains("FERRY_TOKEN"),
            "should hint at the token: {out}"
        );

        // The admin token file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ferry.data.join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "admin.token mode is {mode:o}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_update_under_load() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 3;
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        let out = ferry.deploy_ok(&spec, "1.1.0").await;
        let done = Instant::now();
        assert!(out.stdout.contains("succeeded"), "{out}");
        assert!(
            out.stdout.contains("1.1.0") && out.stdout.contains("healthy"),
            "--wait should print the events as they happen:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;

        report.assert_no_failures(&ferry.timelines(&spec, origin).await);
        assert_eq!(
            report.first_versions(),
            ["1.0.0".to_string()].into(),
            "before the rollout every answer came from 1.0.0"
        );
        let after = report.versions_sent_after(done);
        assert!(
            report.count_sent_after(done) > 0,
            "no requests after the rollout"
        );
        assert_eq!(
            after,
            ["1.1.0".to_string()].into(),
            "requests sent after `deploy --wait` returned must all reach 1.1.0"
        );

        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("1.1.0"));
        let latest = status
            .latest_deployment
            .as_ref()
            .expect("latest deployment");
        assert_eq!(latest.version, "1.1.0");
        assert_eq!(latest.state, DeploymentState::Succeeded);
        let active = active_replicas(&status);
        assert_eq!(active.len(), 3, "replicas: {:#?}", status.replicas);
        assert!(active.iter().all(|r| r.version == "1.1.0"), "{active:#?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_health_rolls_back() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.prelude = "if [ \"$VERSION\" = 2.0.0 ]; then export DEMO_UNHEALTHY=1; fi;".to_string();
        spec.start_timeout = "3s".to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        let out = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "production",
                "--version",
                "2.0.0",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;

        assert_eq!(out.code, 3, "a rolled-back deployment exits 3:\n{out}");
        assert!(out.stderr.contains("rolled back"), "{out}");
        let status = ferry.env_status(&spec).await;
        let latest = status.latest_deployment.clone().expect("latest deployment");
        assert_eq!(latest.version, "2.0.0");
        assert_eq!(latest.state, DeploymentState::RolledBack, "{latest:#?}");
        let reason = latest
            .reason
            .clone()
            .expect("a rolled-back deployment has a reason");
        assert!(!reason.trim().is_empty());
        assert!(
            out.stderr.contains(reason.trim()),
            "the CLI prints the reason {reason:?}:\n{out}"
        );
        assert_eq!(status.current_version.as_deref(), Some("1.0.0"));

        report.assert_no_failures(&ferry.timelines(&spec, origin).await);
        assert_eq!(
            report.versions(),
            ["1.0.0".to_string()].into(),
            "an unhealthy version must never get traffic"
        );
        let active = active_replicas(&status);
        assert!(
            active.iter().all(|r| r.version == "1.0.0") && active.len() == 2,
            "after the rollback only 1.0.0 runs: {:#?}",
            status.replicas
        );
    })
    .await;
}

/// The server is killed while the first new replica is still starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_rollout_resumes() {
    kill9_scenario(|e| e.kind == "replica" && e.message.contains("1.1.0")).await;
}

/// The server is killed once traffic is split between the versions (an old replica is
/// being drained), the middle of a rolling update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_after_traffic_split_resumes() {
    kill9_scenario(|e| {
        e.kind == "traffic" && e.message.contains("1.0.0") && e.message.contains("1.1.0")
    })
    .await;
}

/// A rolling update of 3 replicas is caught in flight (new replicas take a second to come
/// up, so at least two more are still to start), the server is SIGKILLed, restarted, and
/// must finish that same deployment — `succeeded`, nothing else — from where it was: no
/// second "rollout started", the new replicas that were healthy at the kill are adopted
/// (not replaced), no new replica starts more than once (one whose spawn the kill
/// interrupted aside), and no old one starts again.
async fn kill9_scenario(kill_after: impl Fn(&ferry_core::api::EventView) -> bool) {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 3;
        // New replicas take a while to come up, so the rollout is caught mid-way.
        spec.prelude = "if [ \"$VERSION\" = 1.1.0 ]; then sleep 1; fi;".to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        let id = ferry.deploy_id(&spec, "1.1.0").await;
        let event = ferry
            .wait_for_event(id, Duration::from_secs(30), &kill_after)
            .await;
        // Where it was: in flight, with the replicas as they were at the kill.
        let at_kill = ferry.status_api(&spec).await;
        let before = ferry.deployment(id).await;
        assert_eq!(
            before.deployment.state,
            DeploymentState::Progressing,
            "the deployment must be in flight when the server is killed"
        );
        let old_server = ferry.server_pid().expect("server pid");
        ferry.kill9_server();
        assert!(!is_alive(old_server));
        let healthy_new: std::collections::BTreeSet<String> = at_kill
            .replicas
            .iter()
            .filter(|r| {
                r.version == "1.1.0" && r.state == ferry_core::model::ReplicaState::Healthy
            })
            .map(|r| r.id.clone())
            .collect();
        let seen_before = before.events.last().map(|e| e.seq).unwrap_or(0);
        eprintln!(
            "killed the server after: {} {} (healthy new replicas: {healthy_new:?})",
            event.kind, event.message
        );

        // Leaderless for a moment: the proxy keeps serving on its own.
        let before_count = load.count();
        let deadline = Instant::now() + Duration::from_secs(30);
        while load.count() < before_count + 20 {
            assert!(
                Instant::now() < deadline,
                "the proxy must serve while the server is down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        ferry.start_server().await;
        let done = ferry.wait_terminal(id, Duration::from_secs(90)).await;
        let timeline = ferry.timeline(id).await;
        assert_eq!(
            done.state,
            DeploymentState::Succeeded,
            "the resumed deployment must finish what it started:\n{timeline}\n{}",
            ferry.server_logs()
        );
        let events = ferry.deployment(id).await.events;
        assert!(
            events.iter().any(|e| e.seq > seen_before),
            "the restarted server carried on the same deployment:\n{timeline}"
        );
        let count = |needle: &str| {
            events
                .iter()
                .filter(|e| e.message.contains(needle))
                .count()
        };
        assert_eq!(count("rollout started"), 1, "started once:\n{timeline}");
        let new_starts = events
            .iter()
            .filter(|e| {
                e.kind == "replica" && e.message.contains("1.1.0") && e.message.contains("starting")
            })
            .count();
        assert!(
            (3..=4).contains(&new_starts),
            "3 new replicas, at most one of them replaced after an interrupted spawn; got {new_starts}:\n{timeline}"
        );
        assert!(
            !events.iter().any(|e| {
                e.kind == "replica" && e.message.contains("1.0.0") && e.message.contains("starting")
            }),
            "no old replica starts again:\n{timeline}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;
        report.assert_no_failures(&ferry.timelines(&spec, origin).await);

        // The runtime finishes stopping replaced replicas: poll until settled.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = ferry.env_status(&spec).await;
            let active = active_replicas(&status);
            let listed: std::collections::BTreeSet<u32> =
                active.iter().filter_map(|r| r.pid).collect();
            let alive: std::collections::BTreeSet<u32> = ferry
                .recorded_replica_pids()
                .into_iter()
                .filter(|pid| is_alive(*pid))
                .collect();
            let ids: std::collections::BTreeSet<&str> =
                active.iter().map(|r| r.id.as_str()).collect();
            let settled = alive == listed
                && active.len() == 3
                && ids.len() == active.len()
                && active.iter().all(|r| r.version == "1.1.0");
            if settled {
                assert_eq!(status.current_version.as_deref(), Some("1.1.0"));
                for id in &healthy_new {
                    assert!(
                        ids.contains(id.as_str()),
                        "{id} was healthy at the kill: it must be adopted, not replaced; now {ids:?}\n{timeline}"
                    );
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after the restart: live replica pids {alive:?} must be exactly the listed ones \
                 {listed:?} (no orphan, no duplicate), 3 replicas of 1.1.0; status: {:#?}\n{}",
                status.replicas,
                ferry.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollback_under_load() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("shop");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;
        ferry.deploy_ok(&spec, "1.1.0").await;

        let load = Load::start(&spec.listener(), 4);
        load.warm_up(100).await;
        let out = ferry
            .cli(&[
                "rollback",
                "shop",
                "--env",
                "production",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        let done = Instant::now();
        assert_eq!(
            out.code,
            0,
            "rollback --wait:\n{out}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let origin = load.started_wall_ms;
        let report = load.stop().await;

        report.assert_no_failures(&ferry.timelines(&spec, origin).await);
        assert_eq!(report.first_versions(), ["1.1.0".to_string()].into());
        assert!(report.count_sent_after(done) > 0);
        assert_eq!(
            report.versions_sent_after(done),
            ["1.0.0".to_string()].into(),
            "after the rollback every answer comes from 1.0.0"
        );
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("1.0.0"));
        let latest = status.latest_deployment.expect("latest");
        assert_eq!(latest.kind, "rollback");
        assert_eq!(latest.version, "1.0.0");
        assert_eq!(latest.state, DeploymentState::Succeeded);
    })
    .await;
}

/// `file:LINE:COL:` somewhere in `text` after `file`.
fn has_location(text: &str, file: &str) -> bool {
    text.match_indices(file).any(|(i, _)| {
        let rest = &text[i + file.len()..];
        let mut parts = rest.splitn(4, ':');
        parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_digit()) && l != "0")
            && parts
                .next()
                .is_some_and(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_digit()) && c != "0")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_outputs() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("shop");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");

        // Dry run of a new app stores nothing.
        let out = ferry
            .cli(&["apply", "-f", &manifest.display().to_string(), "--dry-run"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("dry run"), "{out}");
        let out = ferry.cli(&["apps", "-o", "json"]).await;
        assert_eq!(
            out.json(),
            serde_json::json!([]),
            "a dry run stores nothing"
        );

        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;
        let apps_before = ferry.cli(&["apps", "-o", "json"]).await.json();

        // An invalid manifest: every error with file:line:col, exit 2, nothing sent.
        let good = std::fs::read_to_string(&manifest).unwrap();
        // A misspelt field: located, named, with a hint.
        let typo = good.replace("replicas: 2", "replicaz: 2");
        let typo_path = ferry.dir.path().join("typo.yaml");
        std::fs::write(&typo_path, &typo).unwrap();
        let out = ferry
            .cli(&["apply", "-f", &typo_path.display().to_string()])
            .await;
        assert_eq!(out.code, 2, "{out}");
        assert!(
            has_location(&out.stderr, "typo.yaml"),
            "needs file:line:col:\n{out}"
        );
        assert!(
            out.stderr.contains("replicaz"),
            "names the unknown field:\n{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");

        // Several bad values: every one reported, each with its location.
        let bad = good
            .replace("replicas: 2", "replicas: 0")
            .replace(&spec.listener(), "nowhere");
        let bad_path = ferry.dir.path().join("bad.yaml");
        std::fs::write(&bad_path, &bad).unwrap();
        let out = ferry
            .cli(&["apply", "-f", &bad_path.display().to_string()])
            .await;
        assert_eq!(out.code, 2, "{out}");
        let located = out
            .stderr
            .lines()
            .filter(|l| has_location(l, "bad.yaml"))
            .count();
        assert!(located >= 2, "both errors with file:line:col:\n{out}");
        assert!(out.stderr.contains("services.web.replicas"), "{out}");
        assert!(
            out.stderr.contains("environments.production.listen"),
            "{out}"
        );
        assert!(out.stdout.is_empty(), "{out}");

        // The server validates too, and refuses without changing anything.
        let resp = ferry
            .http
            .post(format!("{}/v1/apps", ferry.url))
            .bearer_auth(&ferry.token)
            .json(&serde_json::json!({ "manifest": bad, "file_name": "bad.yaml" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_manifest", "{body}");
        let details = body["details"].as_array().cloned().unwrap_or_default();
        assert!(!details.is_empty(), "{body}");
        assert!(
            details
                .iter()
                .any(|d| has_location(d.as_str().unwrap_or(""), "bad.yaml")),
            "{body}"
        );
        let apps_after = ferry.cli(&["apps", "-o", "json"]).await.json();
        assert_eq!(
            apps_before, apps_after,
            "an invalid manifest changes nothing"
        );

        // status -o json (one environment): the contract fields.
        let out = ferry
            .cli(&["status", "shop", "--env", "production", "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let json = out.json();
        assert_eq!(json["current_version"], "1.0.0", "{json}");
        assert!(json["latest_deployment"]["id"].is_i64(), "{json}");
        assert_eq!(json["latest_deployment"]["version"], "1.0.0", "{json}");
        assert_eq!(json["latest_deployment"]["state"], "succeeded", "{json}");

        // status (whole app, human).
        let out = ferry.cli(&["status", "shop"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("production"), "{out}");
        assert!(out.stdout.contains("1.0.0"), "{out}");
        assert!(out.stdout.contains(&spec.listener()), "{out}");
        let out = ferry.cli(&["status", "shop", "-o", "json"]).await;
        assert_eq!(out.json()["environments"][0]["env"], "production", "{out}");

        // history.
        ferry.deploy_ok(&spec, "1.1.0").await;
        let out = ferry.cli(&["history", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines.len(), 3, "header + 2 deployments:\n{out}");
        assert!(
            lines[1].contains("1.1.0") && lines[1].contains("succeeded"),
            "{out}"
        );
        assert!(
            lines[2].contains("1.0.0") && lines[2].contains("succeeded"),
            "{out}"
        );
        let out = ferry
            .cli(&[
                "history",
                "shop",
                "--env",
                "production",
                "-o",
                "json",
                "--limit",
                "1",
            ])
            .await;
        let json = out.json();
        assert_eq!(json.as_array().map(Vec::len), Some(1), "{json}");
        assert_eq!(json[0]["version"], "1.1.0", "{json}");
        let id = json[0]["id"].as_i64().unwrap();

        // deployment detail with its timeline.
        let out = ferry.cli(&["deployment", &id.to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("succeeded"), "{out}");
        assert!(out.stdout.contains("timeline"), "{out}");

        // logs: the replicas' output, prefixed with service, version and replica.
        let out = ferry
            .cli(&["logs", "shop", "--env", "production", "--service", "web"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("[web 1.1.0 "), "{out}");
        assert!(out.stdout.contains("listening on"), "{out}");

        // Exit codes: not found, conflict, bad flags.
        let out = ferry.cli(&["status", "nope"]).await;
        assert_eq!(out.code, 6, "{out}");
        let out = ferry
            .cli(&["rollback", "shop", "--env", "production", "--to", "9.9.9"])
            .await;
        assert_eq!(out.code, 7, "{out}");
        let out = ferry.cli(&["deploy", "shop"]).await;
        assert_eq!(out.code, 2, "{out}");

        // The schema is JSON.
        let out = ferry.cli(&["schema"]).await;
        assert_eq!(out.code, 0);
        assert!(out.json().is_object());
    })
    .await;
}

/// A store failure while a replica starts is an infrastructure hiccup: nothing is decided,
/// the next pass tries again, and the healthy rollout goes on once the store recovers. It
/// used to become the deployment's failure, rolling it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_hiccup_while_starting_a_replica_is_retried_never_rolled_back() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("shop");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        // The real database refuses new replica rows (as a full disk or a lost connection
        // would), through a trigger.
        let db = ferry.data.join("ferry.db");
        sqlite(
            &db,
            "CREATE TRIGGER hiccup BEFORE INSERT ON replicas \
             BEGIN SELECT RAISE(ABORT, 'injected store hiccup'); END;",
        );
        let id = ferry.deploy_id(&spec, "1.1.0").await;
        // Wait until the server has met the failure (and retried) a few times, or gave up.
        let logs = || {
            ["out", "err"]
                .iter()
                .map(|ext| {
                    std::fs::read_to_string(ferry.dir.path().join(format!("server-1.{ext}")))
                        .unwrap_or_default()
                })
                .collect::<String>()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let state = ferry.deployment(id).await.deployment.state;
            let seen = logs().matches("injected store hiccup").count();
            if seen >= 3
                || !matches!(
                    state,
                    DeploymentState::Pending | DeploymentState::Progressing
                )
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no store failure within 60s:\n{}",
                logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let during = ferry.deployment(id).await;
        assert_eq!(
            during.deployment.state,
            DeploymentState::Progressing,
            "a store failure must not decide the deployment: {:#?}",
            during.events
        );
        ferry.assert_serves(&spec, "1.0.0").await;

        sqlite(&db, "DROP TRIGGER hiccup;");
        let done = ferry.wait_terminal(id, Duration::from_secs(90)).await;
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:#?}");
        ferry.assert_serves(&spec, "1.1.0").await;
    })
    .await;
}

/// Runs `sql` on the server's SQLite database from outside, as another client would.
fn sqlite(db: &std::path::Path, sql: &str) {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], timeout=10)\n\
                  c.executescript(sys.argv[2])\n\
                  c.close()\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(db)
        .arg(sql)
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{sql}: {out:?}");
}
