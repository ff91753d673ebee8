//! `ferry apply` and `ferry redeploy` hold no surprises: what runs changes only through a
//! deployment (a scale change waits for the next one), removing what runs needs `--prune`
//! (and `--dry-run` lists it), unknown roles are located errors, a redeploy with nothing
//! changed is a no-op, a redeploy never silently supersedes a waiting promotion, and an
//! irreversible migration runs once per version. Plus `apps delete`, `validate`, `version`
//! and `completions`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    As, CliOutput, Ferry, SERIAL, Spec, active_replicas, add_person, bounded, free_port, is_alive,
    ok, run,
};
use ferry_core::model::DeploymentState;
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(240);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path
}

/// The test manifest's `web` block duplicated as `worker` (its own route).
fn with_worker(text: &str) -> String {
    let start = text.find("  web:\n").expect("web");
    let end = text.find("environments:").expect("environments");
    let worker = text[start..end]
        .replacen("  web:\n", "  worker:\n", 1)
        .replace("    replicas: 2\n", "    replicas: 1\n    route: /worker\n");
    format!("{}{worker}{}", &text[..end], &text[end..])
}

fn staging(port: u16) -> String {
    format!(
        "  staging:\n    listen: 127.0.0.1:{port}\n    strategy: {{ rolling: {{ max_surge: 1, max_unavailable: 0 }} }}\n"
    )
}

async fn cli(ferry: &Ferry, args: &[&str]) -> CliOutput {
    ferry.cli(args).await
}

async fn history_len(ferry: &Ferry, env: &str) -> usize {
    let out = cli(ferry, &["history", "shop", "--env", env, "-o", "json"]).await;
    ok(&out, "history");
    out.json().as_array().map(Vec::len).unwrap_or(0)
}

fn live(status: &ferry_core::api::EnvStatus, service: &str) -> usize {
    active_replicas(status)
        .iter()
        .filter(|r| r.service == service)
        .count()
}

async fn wait_refused(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "{what}: {addr} still accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_changes_what_runs_only_through_deployments() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("shop");
        let base =
            std::fs::read_to_string(ferry.write_manifest(&spec, "base.yaml")).expect("manifest");
        let staging_port = free_port();
        let staging_addr = format!("127.0.0.1:{staging_port}");
        let v1 = with_worker(&base) + &staging(staging_port);
        let dir = ferry.dir.path();
        ferry.apply(&write(dir, "v1.yaml", &v1)).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let out = cli(
            &ferry,
            &[
                "deploy",
                "shop",
                "--env",
                "staging",
                "--version",
                "1.0.0",
                "--wait",
            ],
        )
        .await;
        ok(&out, "deploy staging");

        // A new replica count is stored, not acted on.
        let v2 = v1.replace("    replicas: 2\n", "    replicas: 3\n");
        let out = cli(
            &ferry,
            &[
                "apply",
                "-f",
                &write(dir, "v2.yaml", &v2).display().to_string(),
            ],
        )
        .await;
        ok(&out, "apply v2");
        assert!(
            out.stdout
                .contains("production: web 2 → 3 replicas with the next deployment")
                && out.stdout.contains("ferry redeploy shop --env production"),
            "apply says when the scale change takes effect:\n{out}"
        );
        // Witness: the same controller loop scales staging through a redeploy; production,
        // which got no deployment, still runs 2.
        let out = cli(
            &ferry,
            &[
                "redeploy", "shop", "--env", "staging", "--wait", "-o", "json",
            ],
        )
        .await;
        ok(&out, "redeploy staging");
        let id = out.json()["id"].as_i64().expect("a deployment");
        assert!(
            ferry
                .timeline(id)
                .await
                .contains("scale: web 2 → 3 replicas"),
            "{}",
            ferry.timeline(id).await
        );
        let staged = ferry
            .status_api(&Spec {
                env: "staging".into(),
                ..Spec::new("shop")
            })
            .await;
        assert_eq!(live(&staged, "web"), 3, "{:#?}", staged.replicas);
        let production = ferry.status_api(&spec).await;
        assert_eq!(
            live(&production, "web"),
            2,
            "a bare apply scaled production: {:#?}",
            production.replicas
        );

        // The redeploy is the scale change, on the timeline.
        let out = cli(
            &ferry,
            &["redeploy", "shop", "--env", "production", "--wait"],
        )
        .await;
        ok(&out, "redeploy production");
        assert!(out.stdout.contains("scale: web 2 → 3 replicas"), "{out}");
        assert_eq!(live(&ferry.status_api(&spec).await, "web"), 3);

        // Nothing changed: a no-op that says so, and no deployment.
        let before = history_len(&ferry, "production").await;
        let out = cli(
            &ferry,
            &["redeploy", "shop", "--env", "production", "--wait"],
        )
        .await;
        ok(&out, "idle redeploy");
        assert!(out.stdout.contains("nothing to redeploy"), "{out}");
        assert_eq!(
            history_len(&ferry, "production").await,
            before,
            "no deployment"
        );

        // Removing a serving environment: refused, listed, nothing changes.
        let v3 = v2.replace(&staging(staging_port), "");
        let v3_path = write(dir, "v3.yaml", &v3).display().to_string();
        let out = cli(&ferry, &["apply", "-f", &v3_path, "--dry-run"]).await;
        ok(&out, "dry run");
        assert!(
            out.stdout.contains("would stop")
                && out.stdout.contains(
                    "environment staging: 4 replica(s) stop (web 1.0.0 ×3, worker 1.0.0 ×1)"
                )
                && out
                    .stdout
                    .contains(&format!("listener {staging_addr} closes")),
            "--dry-run lists exactly what would stop:\n{out}"
        );
        let out = cli(&ferry, &["apply", "-f", &v3_path]).await;
        assert_eq!(out.code, 7, "{out}");
        assert!(
            out.stderr
                .contains("removes what is running; nothing was changed")
                && out
                    .stderr
                    .contains("environment staging: 4 replica(s) stop")
                && out.stderr.contains("--prune"),
            "{out}"
        );
        let staged = ferry
            .status_api(&Spec {
                env: "staging".into(),
                ..Spec::new("shop")
            })
            .await;
        assert_eq!(active_replicas(&staged).len(), 4);
        assert!(
            std::net::TcpStream::connect(&staging_addr).is_ok(),
            "staging still listens"
        );
        let staging_pids: Vec<u32> = staged.replicas.iter().filter_map(|r| r.pid).collect();
        // Confirmed: its replicas stop and its listener closes.
        let out = cli(&ferry, &["apply", "-f", &v3_path, "--prune"]).await;
        ok(&out, "apply --prune");
        assert!(out.stdout.contains("stopped (--prune)"), "{out}");
        wait_refused(&staging_addr, "the removed environment's listener").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while staging_pids.iter().any(|pid| is_alive(*pid)) {
            assert!(Instant::now() < deadline, "staging replicas still run");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Added back, the environment starts nothing until a deployment.
        let back = write(dir, "back.yaml", &v2).display().to_string();
        ok(
            &cli(&ferry, &["apply", "-f", &back]).await,
            "apply staging back",
        );
        let staged = ferry
            .status_api(&Spec {
                env: "staging".into(),
                ..Spec::new("shop")
            })
            .await;
        assert_eq!(staged.current_version, None, "{staged:#?}");
        ok(
            &cli(&ferry, &["apply", "-f", &v3_path]).await,
            "no replicas: no --prune needed",
        );

        // Removing a running service: the same.
        let v4 = v3.replace(
            &v3[v3.find("  worker:\n").expect("worker")..v3.find("environments:").expect("envs")],
            "",
        );
        let v4_path = write(dir, "v4.yaml", &v4).display().to_string();
        let out = cli(&ferry, &["apply", "-f", &v4_path]).await;
        assert_eq!(out.code, 7, "{out}");
        assert!(
            out.stderr
                .contains("service worker in production: 1 replica(s) stop (worker 1.0.0 ×1)"),
            "{out}"
        );
        assert_eq!(live(&ferry.status_api(&spec).await, "worker"), 1);
        ok(
            &cli(&ferry, &["apply", "-f", &v4_path, "--prune"]).await,
            "prune worker",
        );
        ferry
            .wait_status(&spec, Duration::from_secs(30), "worker stopped", |s| {
                s.replicas.iter().all(|r| r.service != "worker")
            })
            .await;
        assert_eq!(
            live(&ferry.status_api(&spec).await, "web"),
            3,
            "web untouched"
        );

        // A role no one has is a located error at apply time.
        let v5 = v4.replace(
            "    strategy: { rolling",
            "    gates: { approvals: [{ role: tech-lead }] }\n    strategy: { rolling",
        );
        let out = cli(
            &ferry,
            &[
                "apply",
                "-f",
                &write(dir, "v5.yaml", &v5).display().to_string(),
            ],
        )
        .await;
        assert_eq!(out.code, 2, "{out}");
        assert!(
            out.stderr.contains("v5.yaml:")
                && out.stderr.contains(
                    "environments.production.gates.approvals[0].role: unknown role \"tech-lead\""
                )
                && out.stderr.contains("ferry roles create tech-lead"),
            "{out}"
        );
        ok(
            &cli(
                &ferry,
                &["roles", "create", "tech-lead", "--permission", "approve"],
            )
            .await,
            "roles create",
        );
        ok(
            &cli(
                &ferry,
                &[
                    "apply",
                    "-f",
                    &write(dir, "v5.yaml", &v5).display().to_string(),
                ],
            )
            .await,
            "apply v5",
        );

        // Deleting the app: refused while it serves, then confirmed; audited.
        let out = cli(&ferry, &["apps", "delete", "shop"]).await;
        assert_eq!(out.code, 7, "{out}");
        assert!(
            out.stderr
                .contains("environment production: 3 replica(s) stop")
                && out.stderr.contains("--yes"),
            "{out}"
        );
        assert!(std::net::TcpStream::connect(spec.listener()).is_ok());
        let out = cli(&ferry, &["apps", "delete", "shop", "--yes"]).await;
        ok(&out, "apps delete --yes");
        wait_refused(&spec.listener(), "the deleted app's listener").await;
        assert_eq!(
            cli(&ferry, &["apps", "-o", "json"]).await.json(),
            serde_json::json!([])
        );
        let out = cli(&ferry, &["audit", "-o", "json"]).await;
        ok(&out, "audit");
        assert!(
            out.stdout.contains("\"apps.delete\"") && out.stdout.contains("delete app shop"),
            "{out}"
        );
    })
    .await;
}

/// Manifest with a gated production (one approval), a backup hook and an irreversible
/// migration that log each run to files.
fn gated(ferry: &Ferry, spec: &Spec, level: &str) -> PathBuf {
    let base =
        std::fs::read_to_string(ferry.write_manifest(spec, "gated-base.yaml")).expect("manifest");
    let dir = ferry.dir.path().display().to_string();
    let text = base
        .replace(
            "    strategy: {",
            "    vars: { LEVEL: LEVEL_VALUE }\n    gates: { approvals: [{ role: approver }] }\n    strategy: {",
        )
        .replace("LEVEL_VALUE", level)
        + &format!(
            "hooks:\n  pre_deploy:\n    - {{ name: backup, run: [sh, -c, 'echo $VERSION >> {dir}/backup.log'] }}\n    - {{ name: migrate, run: [sh, -c, 'echo $VERSION >> {dir}/migrate.log'], migration: irreversible }}\n"
        );
    write(ferry.dir.path(), "gated.yaml", &text)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn state_of(ferry: &Ferry, id: i64) -> DeploymentState {
    ferry.deployment(id).await.deployment.state
}

async fn wait_awaiting_approval(ferry: &Ferry, id: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(ferry, id).await != DeploymentState::AwaitingApproval {
        assert!(Instant::now() < deadline, "#{id} never awaits approval");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn approve_and_wait(ferry: &Ferry, bob: &As<'_>, id: i64) {
    wait_awaiting_approval(ferry, id).await;
    ok(
        &run(ferry, bob, &["approve", &id.to_string()], None).await,
        "approve",
    );
    let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(
        done.state,
        DeploymentState::Succeeded,
        "{}",
        ferry.timeline(id).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redeploy_is_explicit_and_migrations_run_once() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        ferry.apply(&gated(&ferry, &spec, "one")).await;
        let bob = add_person(
            &ferry,
            "bob",
            "bob-password-1",
            &[("approver", "shop", None)],
        )
        .await;
        let backup = ferry.dir.path().join("backup.log");
        let migrate = ferry.dir.path().join("migrate.log");
        let deploy = |version| ferry.deploy_id_to("shop", "production", version);
        let first = deploy("1.0.0").await;
        approve_and_wait(&ferry, &bob, first).await;
        assert_eq!(lines(&backup), ["1.0.0"]);
        assert_eq!(lines(&migrate), ["1.0.0"]);

        // Nothing changed: no deployment, no approval asked, no hook.
        let before = history_len(&ferry, "production").await;
        let out = cli(
            &ferry,
            &["redeploy", "shop", "--env", "production", "-o", "json"],
        )
        .await;
        ok(&out, "idle redeploy");
        assert_eq!(out.json()["unchanged"], true, "{out}");
        assert_eq!(history_len(&ferry, "production").await, before);
        // `deploy` of the serving version with nothing changed ends at once, ungated.
        let same = deploy("1.0.0").await;
        let done = ferry.wait_terminal(same, Duration::from_secs(30)).await;
        assert_eq!(done.state, DeploymentState::Succeeded);
        assert!(ferry.timeline(same).await.contains("nothing to redeploy"));
        assert_eq!(lines(&backup), ["1.0.0"], "no hook ran");

        // A promotion waits for approval: a redeploy does not silently supersede it.
        let waiting = deploy("1.1.0").await;
        wait_awaiting_approval(&ferry, waiting).await;
        ferry.apply(&gated(&ferry, &spec, "two")).await;
        let out = cli(&ferry, &["redeploy", "shop", "--env", "production"]).await;
        assert_eq!(out.code, 7, "{out}");
        assert!(
            out.stderr.contains(&format!(
                "deployment #{waiting} of 1.1.0 is awaiting-approval"
            )) && out.stderr.contains("--force"),
            "{out}"
        );
        assert_eq!(
            state_of(&ferry, waiting).await,
            DeploymentState::AwaitingApproval
        );

        // --force supersedes it, and says so on the redeploy's timeline.
        let out = cli(
            &ferry,
            &[
                "redeploy",
                "shop",
                "--env",
                "production",
                "--force",
                "-o",
                "json",
            ],
        )
        .await;
        ok(&out, "redeploy --force");
        let redeploy = out.json()["id"].as_i64().expect("id");
        assert_eq!(state_of(&ferry, waiting).await, DeploymentState::Superseded);
        assert!(
            ferry.timeline(redeploy).await.contains(&format!(
                "superseded deployment #{waiting} of 1.1.0 (awaiting-approval)"
            )),
            "{}",
            ferry.timeline(redeploy).await
        );
        // The changed variable is rolled out; the backup runs again, the irreversible
        // migration of 1.0.0 does not.
        approve_and_wait(&ferry, &bob, redeploy).await;
        assert_eq!(lines(&backup), ["1.0.0", "1.0.0"]);
        assert_eq!(
            lines(&migrate),
            ["1.0.0"],
            "an irreversible migration ran twice"
        );
        let timeline = ferry.timeline(redeploy).await;
        assert!(
            timeline.contains("skipped: irreversible migration migrate (deployment #")
                && timeline.contains("already ran for 1.0.0 in production"),
            "{timeline}"
        );
        // A new version runs it.
        let next = deploy("1.1.0").await;
        approve_and_wait(&ferry, &bob, next).await;
        assert_eq!(lines(&migrate), ["1.0.0", "1.1.0"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_version_and_completions_work_offline() {
    bounded(LIMIT, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let nowhere = format!("http://127.0.0.1:{}", free_port());
        let ferry = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(args)
                .env("FERRY_URL", &nowhere)
                .env("FERRY_CONFIG", dir.path().join("config.json"))
                .output()
                .expect("run ferry")
        };
        let good = write(
            dir.path(),
            "ferry.yaml",
            "app: shop\nservices:\n  api:\n    run: [./api, --port, \"${PORT}\"]\nenvironments:\n  staging:\n    listen: 127.0.0.1:8080\n",
        );
        let out = ferry(&["validate", "-f", &good.display().to_string()]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(stdout.contains("valid manifest of app shop"), "{stdout}");
        let bad = write(
            dir.path(),
            "bad.yaml",
            "app: shop\nservices:\n  api:\n    run: [./api]\n    replicas: 0\nenvironments:\n  staging:\n    listen: nowhere\n",
        );
        let out = ferry(&["validate", "-f", &bad.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("bad.yaml:5:15: services.api.replicas")
                && stderr.contains("bad.yaml:8:13: environments.staging.listen"),
            "{stderr}"
        );

        // The client's version even without a server; the server's says why it is unknown.
        let out = ferry(&["version"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(stdout.contains(&format!("client  ferry {}", env!("CARGO_PKG_VERSION"))), "{stdout}");
        assert!(stdout.contains("server  unknown"), "{stdout}");

        for (shell, needle) in [("bash", "complete -F"), ("zsh", "#compdef ferry"), ("fish", "complete -c ferry")] {
            let out = ferry(&["completions", shell]);
            let script = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{shell}");
            assert!(script.contains(needle) && script.contains("redeploy"), "{shell}: {script}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn version_names_client_and_server() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let out = ferry.cli(&["version", "-o", "json"]).await;
        ok(&out, "version");
        let json = out.json();
        assert_eq!(json["client"], env!("CARGO_PKG_VERSION"));
        assert_eq!(json["server"], env!("CARGO_PKG_VERSION"));
        let out = ferry.cli_with_token(&["version"], None).await;
        assert!(out.stdout.contains("server  unknown"), "{out}");
    })
    .await;
}

/// A new `listen` address is stored by `apply`, not acted on: the old listener serves until
/// the environment's next deployment (here `ferry redeploy`), which moves it on its
/// timeline; apply and the redeploy say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_moves_only_with_a_deployment() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        let base =
            std::fs::read_to_string(ferry.write_manifest(&spec, "base.yaml")).expect("manifest");
        let (staging_old, staging_new) = (free_port(), free_port());
        let v1 = base.clone() + &staging(staging_old);
        let dir = ferry.dir.path();
        ferry.apply(&write(dir, "v1.yaml", &v1)).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let out = cli(
            &ferry,
            &[
                "deploy",
                "shop",
                "--env",
                "staging",
                "--version",
                "1.0.0",
                "--wait",
            ],
        )
        .await;
        ok(&out, "deploy staging");

        let moved = Spec {
            listen_port: free_port(),
            ..spec.clone()
        };
        let v2 = base.replace(&spec.listener(), &moved.listener()) + &staging(staging_new);
        let out = cli(
            &ferry,
            &[
                "apply",
                "-f",
                &write(dir, "v2.yaml", &v2).display().to_string(),
            ],
        )
        .await;
        ok(&out, "apply v2");
        assert!(
            out.stdout.contains(&format!(
                "production: listener {} → {} with the next deployment",
                spec.listener(),
                moved.listener()
            )) && out.stdout.contains("ferry redeploy shop --env production"),
            "apply says when the listener moves:\n{out}"
        );
        // Witness: the same controller loop moves staging's listener through a redeploy;
        // production, which got no deployment, still listens where it did.
        let out = cli(
            &ferry,
            &[
                "redeploy", "shop", "--env", "staging", "--wait", "-o", "json",
            ],
        )
        .await;
        ok(&out, "redeploy staging");
        let id = out.json()["id"].as_i64().expect("a deployment");
        let timeline = ferry.timeline(id).await;
        assert!(
            timeline.contains(&format!(
                "traffic: listener 127.0.0.1:{staging_old} → 127.0.0.1:{staging_new}"
            )),
            "{timeline}"
        );
        wait_refused(
            &format!("127.0.0.1:{staging_old}"),
            "staging's old listener",
        )
        .await;
        ferry.assert_serves(&spec, "1.0.0").await;
        assert!(
            std::net::TcpStream::connect(moved.listener()).is_err(),
            "a bare apply opened production's new listener"
        );
        assert_eq!(ferry.status_api(&spec).await.listen, spec.listener());

        let out = cli(
            &ferry,
            &["redeploy", "shop", "--env", "production", "--wait"],
        )
        .await;
        ok(&out, "redeploy production");
        ferry.assert_serves(&moved, "1.0.0").await;
        wait_refused(&spec.listener(), "production's old listener").await;
        assert_eq!(ferry.status_api(&moved).await.listen, moved.listener());
    })
    .await;
}
