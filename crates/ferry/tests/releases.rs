//! Releases and promotion end to end, with the real binary: `release create` (immutable,
//! 409 naming the field, semver), `release show`, `releases`, implicit creation by `deploy`,
//! `promote --from --to`, `auto_promote` dev → qa exactly once across a server restart,
//! and the release tag in `ferry releases`, `ferry status` and the replicas' environment.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{CliOutput, Ferry, SERIAL, Spec, bounded, free_port};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(240);

/// dev (the spec's), qa (auto-promoted from dev), staging, production: one replica each,
/// every replica appending `VERSION TAG COMMIT` to `tags` when it starts.
fn four_environments(ferry: &Ferry, spec: &Spec) -> PathBuf {
    let path = ferry.write_manifest(spec, "ferry.yaml");
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    for (env, gates) in [
        ("qa", "{ after: dev, auto_promote: true }"),
        ("staging", "{}"),
        ("production", "{}"),
    ] {
        yaml.push_str(&format!(
            "  {env}:\n    listen: 127.0.0.1:{}\n    strategy: {}\n    gates: {gates}\n",
            free_port(),
            spec.strategy
        ));
    }
    std::fs::write(&path, yaml).unwrap();
    path
}

fn tags_file(ferry: &Ferry) -> PathBuf {
    ferry.dir.path().join("tags")
}

fn ok(out: &CliOutput, what: &str) {
    assert_eq!(out.code, 0, "{what}:\n{out}");
}

fn fails(out: &CliOutput, code: i32, needle: &str, what: &str) {
    assert_eq!(out.code, code, "{what}: want exit {code}:\n{out}");
    assert!(
        out.stderr.contains(needle),
        "{what}: stderr should mention {needle:?}:\n{out}"
    );
}

/// The deployments of app/env (newest first) from the API.
async fn history(ferry: &Ferry, env: &str) -> Vec<serde_json::Value> {
    let (status, body) = ferry
        .api_get(&format!("/v1/apps/shop/envs/{env}/deployments?limit=100"))
        .await;
    assert!(status.is_success(), "{status} {body}");
    body.as_array().unwrap().clone()
}

/// Waits until a deployment of `version` in `env` exists and has succeeded; returns it.
async fn wait_succeeded_in(ferry: &Ferry, env: &str, version: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = history(ferry, env)
            .await
            .into_iter()
            .find(|d| d["version"] == version);
        if let Some(d) = &found
            && d["state"] == "succeeded"
        {
            return d.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{version} never succeeded in {env}: {found:?}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_promotion_and_auto_promotion() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.env = "dev".into();
        spec.replicas = 1;
        spec.prelude = format!(
            "echo \"$VERSION $FERRY_ENV T=$FERRY_RELEASE_TAG C=$FERRY_COMMIT\" >> '{}';",
            tags_file(&ferry).display()
        );
        let manifest = four_environments(&ferry, &spec);
        ferry.apply(&manifest).await;

        // --- release create: created, then a no-op, then immutable ---------------------
        let create = [
            "release",
            "create",
            "shop",
            "--version",
            "1.4.2",
            "--commit",
            "ABCDEF1",
            "--artifact",
            "web=registry.local/shop-web:1.4.2",
            "--notes",
            "first cut",
        ];
        let out = ferry.cli(&create).await;
        ok(&out, "release create");
        assert!(out.stdout.contains("created"), "{out}");
        let mut json = create.to_vec();
        json.extend(["-o", "json"]);
        let out = ferry.cli(&json).await;
        ok(&out, "release create again, identical");
        assert_eq!(out.json()["outcome"], "exists", "{out}");
        assert_eq!(out.json()["release"]["commit"], "abcdef1", "{out}");

        let mut other = create.to_vec();
        other[6] = "1234567";
        fails(
            &ferry.cli(&other).await,
            7,
            "different commit",
            "other commit",
        );
        let mut other_notes = create.to_vec();
        other_notes[10] = "second cut";
        fails(
            &ferry.cli(&other_notes).await,
            7,
            "different notes",
            "other notes",
        );
        let mut not_semver = create.to_vec();
        not_semver[4] = "v1.4";
        fails(
            &ferry.cli(&not_semver).await,
            2,
            "not a semantic version",
            "semver",
        );
        let mut bad_service = create.to_vec();
        bad_service[8] = "db=x";
        fails(
            &ferry.cli(&bad_service).await,
            2,
            "unknown service \"db\"",
            "artifact",
        );
        let mut bad_commit = create.to_vec();
        bad_commit[6] = "xyz";
        fails(&ferry.cli(&bad_commit).await, 2, "hexadecimal", "commit");

        let out = ferry
            .cli(&["release", "show", "shop", "1.4.2", "-o", "json"])
            .await;
        ok(&out, "release show");
        let shown = out.json();
        assert_eq!(shown["artifacts"]["web"], "registry.local/shop-web:1.4.2");
        assert_eq!(shown["notes"], "first cut");
        assert!(shown["created_by"].is_string(), "{shown}");
        assert_eq!(shown["environments"].as_array().unwrap().len(), 0);
        fails(
            &ferry.cli(&["release", "show", "shop", "9.9.9"]).await,
            6,
            "no release",
            "unknown release",
        );

        // --- deploy it to staging: the tag everywhere --------------------------------
        let out = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "staging",
                "--version",
                "1.4.2",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        ok(&out, "deploy 1.4.2 to staging");
        let tag = "1.4.2-sha-abcdef1-staging";
        let started = std::fs::read_to_string(tags_file(&ferry)).unwrap();
        assert!(
            started.contains(&format!("1.4.2 staging T={tag} C=abcdef1")),
            "the replica's environment: {started}"
        );
        let out = ferry.cli(&["status", "shop", "--env", "staging"]).await;
        ok(&out, "status");
        assert!(out.stdout.contains(tag), "status shows the tag:\n{out}");

        // --- promote --from staging --to production ----------------------------------
        let staging_id = history(&ferry, "staging").await[0]["id"].as_i64().unwrap();
        let out = ferry
            .cli(&[
                "promote",
                "shop",
                "--from",
                "staging",
                "--to",
                "production",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        ok(&out, "promote --from staging --to production");
        let prod = &history(&ferry, "production").await[0];
        assert_eq!(prod["version"], "1.4.2");
        assert_eq!(prod["kind"], "promote");
        assert_eq!(prod["state"], "succeeded");
        let lines = ferry.timeline(prod["id"].as_i64().unwrap()).await;
        assert!(
            lines.contains(&format!("promoted from staging (#{staging_id})")),
            "{lines}"
        );
        fails(
            &ferry
                .cli(&["promote", "shop", "--from", "qa", "--to", "production"])
                .await,
            7,
            "nothing serves in shop/qa",
            "promote from an empty environment",
        );
        fails(
            &ferry
                .cli(&["promote", "shop", "--from", "staging", "--to", "staging"])
                .await,
            2,
            "to itself",
            "promote to itself",
        );
        fails(
            &ferry
                .cli(&["promote", "shop", "--from", "staging", "--to", "nope"])
                .await,
            6,
            "no environment \"nope\"",
            "promote to an unknown environment",
        );
        fails(
            &ferry
                .cli(&[
                    "promote", "shop", "--env", "staging", "--from", "dev", "--to", "qa",
                ])
                .await,
            2,
            "cannot be used with",
            "--env with --from/--to",
        );

        let out = ferry.cli(&["releases", "shop", "-o", "json"]).await;
        ok(&out, "releases");
        let envs = &out.json()[0]["environments"];
        let places: Vec<(String, String, String)> = envs
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["env"].as_str().unwrap().to_string(),
                    e["placement"].as_str().unwrap().to_string(),
                    e["tag"].as_str().unwrap_or("-").to_string(),
                )
            })
            .collect();
        assert_eq!(
            places,
            [
                ("staging".into(), "current".into(), tag.into()),
                (
                    "production".into(),
                    "current".into(),
                    "1.4.2-sha-abcdef1-production".into()
                ),
            ],
            "{out}"
        );
        let out = ferry.cli(&["releases", "shop"]).await;
        ok(&out, "releases (text)");
        assert!(
            out.stdout
                .contains("production: current [1.4.2-sha-abcdef1-production]"),
            "{out}"
        );

        // --- deploy creates the release; conflicting flags are refused ----------------
        let out = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "dev",
                "--version",
                "2.0.0",
                "--commit",
                "1234567",
                "--notes",
                "two",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        ok(&out, "deploy 2.0.0 to dev with release flags");
        let out = ferry
            .cli(&["release", "show", "shop", "2.0.0", "-o", "json"])
            .await;
        ok(&out, "the implicit release");
        assert_eq!(out.json()["commit"], "1234567", "{out}");
        assert_eq!(out.json()["notes"], "two", "{out}");
        fails(
            &ferry
                .cli(&[
                    "deploy",
                    "shop",
                    "--env",
                    "staging",
                    "--version",
                    "2.0.0",
                    "--commit",
                    "7654321",
                ])
                .await,
            7,
            "different commit",
            "deploy with a conflicting commit",
        );
        fails(
            &ferry
                .cli(&[
                    "deploy",
                    "shop",
                    "--env",
                    "dev",
                    "--version",
                    "build-7",
                    "--commit",
                    "7654321",
                ])
                .await,
            2,
            "not a semantic version",
            "release flags need semver",
        );

        // --- auto_promote: dev → qa, once -------------------------------------------
        let dev_id = history(&ferry, "dev").await[0]["id"].as_i64().unwrap();
        let qa = wait_succeeded_in(&ferry, "qa", "2.0.0").await;
        assert_eq!(qa["kind"], "auto-promote", "{qa}");
        assert_eq!(
            qa["requested_by"],
            history(&ferry, "dev").await[0]["requested_by"]
        );
        let lines = ferry.timeline(qa["id"].as_i64().unwrap()).await;
        assert!(
            lines.contains(&format!("auto-promoted from dev after #{dev_id} succeeded")),
            "{lines}"
        );
        let started = std::fs::read_to_string(tags_file(&ferry)).unwrap();
        assert!(
            started.contains("2.0.0 qa T=2.0.0-sha-1234567-qa C=1234567"),
            "{started}"
        );

        // restart the server: no second auto-promotion of 2.0.0; a plain (non-semver)
        // deploy still works and is auto-promoted once too
        ferry.kill9_server();
        ferry.start_server().await;
        let out = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "dev",
                "--version",
                "build-7",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        ok(&out, "plain deploy of a non-semver version");
        wait_succeeded_in(&ferry, "qa", "build-7").await;
        let qa_versions: Vec<String> = history(&ferry, "qa")
            .await
            .iter()
            .map(|d| d["version"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(qa_versions, ["build-7", "2.0.0"], "one auto-promotion each");
        // Each auto-promotion is in the audit log, by Ferry itself, once.
        let audit = ferry
            .cli(&[
                "audit",
                "--app",
                "shop",
                "--action",
                "promotions.auto",
                "-o",
                "json",
            ])
            .await;
        ok(&audit, "audit");
        let autos: Vec<String> = audit
            .json()
            .as_array()
            .expect("a list of records")
            .iter()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                format!("{} {}", text("actor"), text("summary"))
            })
            .collect();
        assert_eq!(autos.len(), 2, "{autos:?}");
        assert!(
            autos
                .iter()
                .all(|a| a.starts_with("system auto-promote shop ")),
            "{autos:?}"
        );
        let out = ferry
            .cli(&["release", "show", "shop", "build-7", "-o", "json"])
            .await;
        ok(&out, "bare release");
        assert!(out.json()["commit"].is_null(), "{out}");
        let started = std::fs::read_to_string(tags_file(&ferry)).unwrap();
        assert!(
            started.contains("build-7 dev T= C=\n"),
            "no tag without a commit: {started}"
        );
    })
    .await;
}
