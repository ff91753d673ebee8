//! The whole release pipeline through the real binary: one release goes dev → staging →
//! production. Staging is auto-promoted once dev succeeded; production is held by a freeze
//! window and by a missing approval; the requester's own approval is refused, a second
//! user approves, a release manager overrides the freeze with a reason, and the rollout
//! succeeds. The history shows every gate and who passed it.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{As, DEMO, Ferry, SERIAL, add_person, admin, bounded, free_port, ok, run};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(180);
const PASSWORD: &str = "correct horse battery staple";

fn pipeline_manifest(ferry: &Ferry) -> PathBuf {
    let script = format!(
        "echo $$ >> '{pids}'; exec '{DEMO}' --port \"$PORT\" --version \"$VERSION\"",
        pids = ferry.pids_file().display(),
    );
    let run = serde_json::to_string(&["sh", "-c", &script]).expect("json");
    let mark = serde_json::to_string(&ferry.mark).expect("json");
    // Frozen from yesterday to tomorrow (UTC): production is frozen while the test runs.
    let day = 24 * 60 * 60;
    let (from, until) = (utc_local_time(-day), utc_local_time(day));
    let yaml = format!(
        "app: shop
services:
  web:
    run: {run}
    replicas: 1
    env: {{ FERRY_TEST_MARK: {mark} }}
    stop_timeout: 5s
    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: 15s }}
environments:
  dev:
    listen: 127.0.0.1:{dev}
  staging:
    listen: 127.0.0.1:{staging}
    gates: {{ after: dev, auto_promote: true }}
  production:
    listen: 127.0.0.1:{prod}
    gates:
      after: staging
      approvals: [{{ role: approver }}]
      freeze: [{{ from: \"{from}\", until: \"{until}\", timezone: UTC }}]
",
        dev = free_port(),
        staging = free_port(),
        prod = free_port(),
    );
    let path = ferry.dir.path().join("shop.yaml");
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

/// The UTC date-time `offset_s` seconds from now, as `YYYY-MM-DDTHH:MM:SS`.
fn utc_local_time(offset_s: i64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}", now_s() + offset_s),
            "+%Y-%m-%dT%H:%M:%S",
        ])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn detail(ferry: &Ferry, who: &As<'_>, id: i64) -> serde_json::Value {
    let out = run(
        ferry,
        who,
        &["deployment", &id.to_string(), "-o", "json"],
        None,
    )
    .await;
    ok(&out, "deployment");
    out.json()
}

async fn wait_for_state(ferry: &Ferry, who: &As<'_>, id: i64, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = detail(ferry, who, id).await;
        if d["deployment"]["state"] == state {
            return d;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never became {state}: {d:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn timeline(detail: &serde_json::Value) -> String {
    detail["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    format!(
                        "{} {}",
                        e["kind"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_release_goes_from_dev_to_production_through_every_gate() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let root = admin(&ferry);
        ok(
            &run(
                &ferry,
                &root,
                &[
                    "roles",
                    "create",
                    "release-manager",
                    "--permission",
                    "override_freeze",
                    "--permission",
                    "view",
                ],
                None,
            )
            .await,
            "roles create",
        );
        let alice = add_person(&ferry, "alice", PASSWORD, &[("developer", "shop", None)]).await;
        let bob = add_person(
            &ferry,
            "bob",
            PASSWORD,
            &[("approver", "shop", Some("production"))],
        )
        .await;
        let carol = add_person(
            &ferry,
            "carol",
            PASSWORD,
            &[("release-manager", "shop", Some("production"))],
        )
        .await;
        // alice may approve production too, but never her own deployment
        ok(
            &run(
                &ferry,
                &root,
                &[
                    "grant",
                    "alice",
                    "approver",
                    "--app",
                    "shop",
                    "--env",
                    "production",
                    "--allow-missing",
                ],
                None,
            )
            .await,
            "grant",
        );
        let manifest = pipeline_manifest(&ferry);
        ok(
            &run(
                &ferry,
                &alice,
                &["apply", "-f", manifest.to_str().expect("utf-8")],
                None,
            )
            .await,
            "apply",
        );

        // The release, then dev.
        ok(
            &run(
                &ferry,
                &alice,
                &[
                    "release",
                    "create",
                    "shop",
                    "--version",
                    "1.4.2",
                    "--commit",
                    "abcdef1234",
                    "--notes",
                    "checkout rework",
                ],
                None,
            )
            .await,
            "release create",
        );
        ok(
            &run(
                &ferry,
                &alice,
                &[
                    "deploy",
                    "shop",
                    "--env",
                    "dev",
                    "--version",
                    "1.4.2",
                    "--wait",
                    "--timeout",
                    "60s",
                ],
                None,
            )
            .await,
            "deploy dev",
        );

        // Staging follows by itself, requested in alice's name.
        let deadline = Instant::now() + Duration::from_secs(60);
        let staging = loop {
            let out = run(
                &ferry,
                &alice,
                &["history", "shop", "--env", "staging", "-o", "json"],
                None,
            )
            .await;
            ok(&out, "history staging");
            let list = out.json();
            if let Some(d) = list.as_array().and_then(|a| {
                a.iter()
                    .find(|d| d["version"] == "1.4.2" && d["state"] == "succeeded")
            }) {
                break d.clone();
            }
            assert!(
                Instant::now() < deadline,
                "staging never got 1.4.2: {list:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(staging["requested_by"], "user:alice", "{staging:#}");

        // Production: promoted by alice, held by the freeze and the approval.
        let out = run(
            &ferry,
            &alice,
            &[
                "promote",
                "shop",
                "--from",
                "staging",
                "--to",
                "production",
                "-o",
                "json",
            ],
            None,
        )
        .await;
        ok(&out, "promote");
        let id = out.json()["id"].as_i64().expect("deployment id");
        wait_for_state(&ferry, &alice, id, "blocked").await;
        let gates = run(&ferry, &alice, &["gates", &id.to_string()], None).await;
        ok(&gates, "gates");
        for needle in ["after", "freeze", "approvals"] {
            assert!(gates.stdout.contains(needle), "{needle} in:\n{gates}");
        }

        let own = run(&ferry, &alice, &["approve", &id.to_string()], None).await;
        assert_eq!(own.code, 5, "the requester cannot approve:\n{own}");
        ok(
            &run(&ferry, &bob, &["approve", &id.to_string()], None).await,
            "bob approves",
        );
        // Still frozen: approvals alone do not start it.
        let d = detail(&ferry, &alice, id).await;
        assert_eq!(d["deployment"]["state"], "blocked", "{d:#}");

        let no_reason = run(
            &ferry,
            &carol,
            &["gates", "override", &id.to_string(), "--gate", "freeze"],
            None,
        )
        .await;
        assert_ne!(
            no_reason.code, 0,
            "an override needs a reason:\n{no_reason}"
        );
        let by_alice = run(
            &ferry,
            &alice,
            &[
                "--reason",
                "mine",
                "gates",
                "override",
                &id.to_string(),
                "--gate",
                "freeze",
            ],
            None,
        )
        .await;
        assert_eq!(
            by_alice.code, 5,
            "a developer cannot override a freeze:\n{by_alice}"
        );
        ok(
            &run(
                &ferry,
                &carol,
                &[
                    "--reason",
                    "INC-42 hotfix",
                    "gates",
                    "override",
                    &id.to_string(),
                    "--gate",
                    "freeze",
                ],
                None,
            )
            .await,
            "carol overrides the freeze",
        );
        let done = wait_for_state(&ferry, &alice, id, "succeeded").await;
        let history = timeline(&done);
        for needle in [
            "approved by",
            "bob",
            "overridden",
            "carol",
            "INC-42 hotfix",
            "staging",
        ] {
            assert!(
                history.contains(needle),
                "{needle:?} in the timeline:\n{history}"
            );
        }
        let releases = run(&ferry, &alice, &["releases", "shop"], None).await;
        ok(&releases, "releases");
        assert!(
            releases.stdout.contains("1.4.2-sha-abcdef1-production"),
            "{releases}"
        );
        let audit = run(&ferry, &root, &["audit", "--app", "shop"], None).await;
        ok(&audit, "audit");
        assert!(audit.stdout.contains("INC-42 hotfix"), "{audit}");
    })
    .await;
}
