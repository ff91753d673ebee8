//! DORA metrics end to end, with the real binary and a Python server as the workload: the
//! commit time given by CI (`deploy --commit-time`) and by `release create --commit-time`
//! becomes the lead time (a commit time in the future is dropped and listed), `deploy
//! --fix-of N` makes N a failed change whose fix is rework, bad input is refused naming
//! the field, and `ferry dora` and the console's DORA page show it all from a real server.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{CliOutput, Ferry, SERIAL, Spec, add_person, bounded, wall_ms};
use ferry_core::release::commit_time_text;

const LIMIT: Duration = Duration::from_secs(240);
const HOUR: i64 = 3_600_000;

fn ok(out: &CliOutput, what: &str) {
    assert_eq!(out.code, 0, "{what}:\n{out}");
}

fn refused(out: &CliOutput, needle: &str, what: &str) {
    assert_ne!(out.code, 0, "{what} should fail:\n{out}");
    assert!(
        out.stderr.contains(needle),
        "{what}: stderr should mention {needle:?}:\n{out}"
    );
}

/// The id of the deployment a `deploy -o json --wait` printed.
fn deployment_id(out: &CliOutput) -> i64 {
    out.json()["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_times_and_fixes_feed_the_dora_metrics() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/server.py");
        spec.program = Some(format!(
            "python3 '{server}' --port \"$PORT\" --version \"$VERSION\" --on-sigterm exit"
        ));
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let deploy = |version: &'static str, extra: &'static [&'static str]| {
            let ferry = &ferry;
            async move {
                let mut args = vec![
                    "deploy",
                    "shop",
                    "--env",
                    "production",
                    "--version",
                    version,
                    "--wait",
                    "--timeout",
                    "60s",
                    "-o",
                    "json",
                ];
                args.extend_from_slice(extra);
                ferry.cli(&args).await
            }
        };

        // CI gives the commit time with the deployment (an offset, not UTC)
        let committed = wall_ms() - 2 * HOUR;
        let text = commit_time_text(committed).unwrap();
        let with_offset = format!("{}+00:00", text.trim_end_matches('Z'));
        let first = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "production",
                "--version",
                "1.0.0",
                "--commit",
                "abcdef1",
                "--commit-time",
                &with_offset,
                "--wait",
                "--timeout",
                "60s",
                "-o",
                "json",
            ])
            .await;
        ok(&first, "deploy 1.0.0 with its commit time");
        let first = deployment_id(&first);
        let show = ferry.cli(&["release", "show", "shop", "1.0.0"]).await;
        ok(&show, "release show");
        assert!(
            show.stdout.contains(&format!("committed  {text}")),
            "{show}"
        );

        // `release create` records it too; a commit time in the future is accepted (clock
        // skew happens) but its negative lead time is dropped
        let future = commit_time_text(wall_ms() + 24 * HOUR).unwrap();
        let out = ferry
            .cli(&[
                "release",
                "create",
                "shop",
                "--version",
                "1.1.0",
                "--commit",
                "1234567",
                "--commit-time",
                &future,
            ])
            .await;
        ok(&out, "release create --commit-time");
        let again = ferry
            .cli(&[
                "release",
                "create",
                "shop",
                "--version",
                "1.1.0",
                "--commit",
                "1234567",
                "--commit-time",
                &text,
            ])
            .await;
        refused(
            &again,
            "different commit_time",
            "a release's commit time is immutable",
        );
        let second = deploy("1.1.0", &[]).await;
        ok(&second, "deploy 1.1.0");
        let second = deployment_id(&second);

        // bad input is refused before anything happens, naming what is wrong
        refused(
            &deploy(
                "1.2.0",
                &["--commit", "7654321", "--commit-time", "yesterday"],
            )
            .await,
            "commit time \"yesterday\" is not an RFC 3339 time",
            "a commit time that is not RFC 3339",
        );
        refused(
            &deploy("1.2.0", &["--commit-time", "2026-03-02T09:15:00"]).await,
            "with an offset",
            "a commit time without an offset",
        );
        refused(
            &deploy("1.2.0", &["--fix-of", "999999"]).await,
            "fix_of: deployment 999999 does not exist",
            "--fix-of an unknown deployment",
        );
        let (_, releases) = ferry.api_get("/v1/apps/shop/releases").await;
        assert!(
            !releases.to_string().contains("1.2.0"),
            "a refused deploy records no release: {releases}"
        );

        // 1.1.0 shipped a bug: 1.2.0 fixes it
        let fix_of = second.to_string();
        let out = ferry
            .cli(&[
                "deploy",
                "shop",
                "--env",
                "production",
                "--version",
                "1.2.0",
                "--fix-of",
                &fix_of,
                "--wait",
                "--timeout",
                "60s",
                "-o",
                "json",
            ])
            .await;
        ok(&out, "deploy 1.2.0 --fix-of");
        let third = deployment_id(&out);

        let out = ferry
            .cli(&["dora", "shop", "--env", "production", "-o", "json"])
            .await;
        ok(&out, "dora -o json");
        let report = out.json();
        let s = &report["summary"];
        assert_eq!(
            s["production_deployments"],
            serde_json::json!([first, second, third])
        );
        assert_eq!(s["deployment_frequency"]["count"], 3);
        let lead = &s["lead_time_for_changes"];
        assert_eq!(lead["samples"].as_array().unwrap().len(), 1, "{lead}");
        assert_eq!(lead["samples"][0]["deployment"], first);
        let ms = lead["samples"][0]["ms"].as_i64().unwrap();
        assert!((2 * HOUR..2 * HOUR + 240_000).contains(&ms), "{lead}");
        assert_eq!(lead["dropped_negative"], serde_json::json!([second]));
        let cfr = &s["change_failure_rate"];
        assert_eq!(cfr["deployments"], serde_json::json!([second]), "{cfr}");
        assert_eq!(
            (cfr["count"].as_i64(), cfr["total"].as_i64()),
            (Some(1), Some(3))
        );
        let recovery = &s["failed_deployment_recovery_time"];
        assert_eq!(recovery["samples"][0]["deployment"], second, "{recovery}");
        assert!(recovery["samples"][0]["ms"].as_i64().unwrap() < 120_000);
        assert_eq!(
            s["deployment_rework_rate"]["deployments"],
            serde_json::json!([third])
        );

        // the text view says the same, and where each figure comes from
        let out = ferry
            .cli(&["dora", "shop", "--env", "production", "--show-deployments"])
            .await;
        ok(&out, "dora --show-deployments");
        assert!(out.stdout.contains("3 production deployments"), "{out}");
        assert!(out.stdout.contains("change failure rate"), "{out}");
        assert!(
            out.stdout.contains(&format!("#{second}")),
            "the failed change is listed: {out}"
        );

        // the console's page, as a viewer of shop, without JavaScript: the same figures, each
        // linking to its deployments
        let page = |who: &'static str, path: &'static str| {
            let ferry = &ferry;
            async move {
                let login = ferry
                    .http
                    .post(format!("{}/v1/login", ferry.url))
                    .json(&serde_json::json!({"username": who, "password": PASSWORD}))
                    .send()
                    .await
                    .unwrap();
                let token: serde_json::Value = login.json().await.unwrap();
                let answer = ferry
                    .http
                    .get(format!("{}{path}", ferry.url))
                    .header(
                        "cookie",
                        format!("ferry_session={}", token["token"].as_str().unwrap()),
                    )
                    .send()
                    .await
                    .unwrap();
                (answer.status().as_u16(), answer.text().await.unwrap())
            }
        };
        add_person(&ferry, "dana", PASSWORD, &[("viewer", "shop", None)]).await;
        add_person(&ferry, "olga", PASSWORD, &[("viewer", "other", None)]).await;
        let (status, html) = page("dana", "/apps/shop").await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("href=\"/apps/shop/dora\""), "{html}");
        let (status, html) = page("dana", "/apps/shop/dora").await;
        assert_eq!(status, 200, "{html}");
        for needle in [
            "DORA metrics of shop",
            "3 production deployments",
            "Change failure rate",
            "33.3 %",
            &format!("href=\"/deployments/{second}\""),
            &format!("href=\"/deployments/{third}\""),
            "dropped: committed after it ended",
        ] {
            assert!(
                html.contains(needle),
                "the page should show {needle:?}:\n{html}"
            );
        }
        assert!(!html.contains("<script>"), "no inline script");
        let (status, html) = page(
            "dana",
            "/apps/shop/dora?env=production&days=30&interval=weekly",
        )
        .await;
        assert_eq!(status, 200, "{html}");
        assert!(html.contains("Per week"), "{html}");
        let (status, html) = page("dana", "/apps/shop/dora?env=qa").await;
        assert_eq!(status, 404, "{html}");
        assert!(html.contains("qa"), "{html}");
        let (status, _) = page("olga", "/apps/shop/dora").await;
        assert_eq!(status, 403, "someone who may not view shop");
    })
    .await;
}

const PASSWORD: &str = "correct horse battery";
