//! Guarded flag rollouts end to end: a real app (`tests/apps/flag_app.py`) reads its flag
//! through Ferry's OFREP endpoint on every request and names it in a `Ferry-Flags` response
//! header, traffic goes through Ferry's proxy, and the analysis judges the error rate of the
//! requests that carried each flag on.
//! - Two guarded rollouts at once on one environment: a flag whose ON path answers 500 goes
//!   back to 0 % by itself and says why (its own error rate and sample; audited as
//!   `analysis`), while a good flag climbs every step to 100 % — across a `kill -9` of the
//!   server mid-rollout. Judged on the environment's whole traffic, the bad flag's errors
//!   would have rolled the good one back too.
//! - A flag no answer names is never judged on other traffic: Inconclusive, saying how to
//!   attribute requests.

mod common;

use std::time::{Duration, Instant};

use common::{Ferry, Load, SERIAL, Spec, bounded};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(240);
const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/flag_app.py");

async fn show(ferry: &Ferry, spec: &Spec, flag: &str) -> Value {
    let out = ferry
        .cli(&[
            "flags", "show", &spec.app, "--env", &spec.env, flag, "-o", "json",
        ])
        .await;
    assert_eq!(out.code, 0, "flags show:\n{out}");
    serde_json::from_str(&out.stdout).expect("show -o json")
}

/// Polls the flag until its guarded rollout is no longer running (bounded).
async fn wait_ended(ferry: &Ferry, spec: &Spec, flag: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let shown = show(ferry, spec, flag).await;
        let state = shown["guarded_rollout"]["state"].as_str().unwrap_or("none");
        if state != "running" {
            return shown;
        }
        assert!(
            Instant::now() < deadline,
            "the guarded rollout of {flag} still runs after {limit:?}: {}\n{}",
            shown["guarded_rollout"],
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls until the flag's rollout reaches `percent` (bounded).
async fn wait_percent(ferry: &Ferry, spec: &Spec, flag: &str, percent: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = show(ferry, spec, flag).await;
        if shown["summary"]["rollout"].as_u64() >= Some(percent) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{flag} never reached {percent}%: {}",
            shown["guarded_rollout"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a guarded rollout 20 → 50 → 100 % (1 s per step, random stickiness).
async fn start(ferry: &Ferry, spec: &Spec, flag: &str, analysis: &str) {
    let args = [
        "flags",
        "rollout",
        &spec.app,
        "--env",
        &spec.env,
        flag,
        "--guarded",
        "--steps",
        "20,50,100",
        "--pause",
        "1s",
        "--stickiness",
        "random",
        "--analysis",
        analysis,
    ];
    let out = ferry.cli(&args).await;
    assert_eq!(out.code, 0, "rollout --guarded {flag}:\n{out}");
    assert!(
        out.stdout.contains("running, step 1/3 at 20%"),
        "the start says where it is:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_guarded_flag_rollout_rolls_a_bad_flag_back_and_takes_a_good_one_to_100() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let token_file = ferry.dir.path().join("flag-token");
        let mut spec = Spec::new("flagged");
        spec.replicas = 1;
        spec.program = Some(format!(
            "python3 '{APP}' --port \"$PORT\" --version \"$VERSION\" --ferry '{}' \
             --token-file '{}'",
            ferry.url,
            token_file.display()
        ));
        let manifest = ferry.write_manifest(&spec, "flagged.yaml");
        ferry.apply(&manifest).await;
        // The app's client token, readable by the replica (which may run as nobody).
        let out = ferry
            .cli(&["flags", "token", "create", &spec.app, "--env", &spec.env, "-o", "json"])
            .await;
        assert_eq!(out.code, 0, "token create:\n{out}");
        let token: Value = serde_json::from_str(&out.stdout).expect("token json");
        std::fs::write(&token_file, token["token"].as_str().expect("token")).expect("token");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        ferry.deploy_ok(&spec, "1.0.0").await;
        let analysis = ferry.dir.path().join("analysis.yaml");
        std::fs::write(
            &analysis,
            "interval: 1s\ninconclusive_limit: 30\nmetrics:\n  - { name: errors, builtin: error_rate, max: 2%, min_requests: 5 }\n",
        )
        .expect("analysis file");
        for flag in ["bad-checkout", "new-search", "silent"] {
            let out = ferry
                .cli(&["flags", "create", &spec.app, "--env", &spec.env, flag])
                .await;
            assert_eq!(out.code, 0, "create {flag}:\n{out}");
        }
        let analysis = analysis.display().to_string();
        // Two pages of the app, each evaluating its own flag; both rollouts start together.
        let bad_load = Load::start_on(&spec.listener(), "/?flag=bad-checkout", 3);
        let good_load = Load::start_on(&spec.listener(), "/?flag=new-search", 3);
        bad_load.warm_up(20).await;
        good_load.warm_up(20).await;
        start(&ferry, &spec, "bad-checkout", &analysis).await;
        start(&ferry, &spec, "new-search", &analysis).await;
        start(&ferry, &spec, "silent", &analysis).await;

        // The bad flag: back to 0 %, with a verdict on its own requests.
        let shown = wait_ended(&ferry, &spec, "bad-checkout", Duration::from_secs(90)).await;
        bad_load.stop().await;
        let guard = &shown["guarded_rollout"];
        assert_eq!(guard["state"], "rolled-back", "{guard}");
        assert_eq!(guard["metric"], "errors", "{guard}");
        assert_eq!(guard["percent"], 0, "{guard}");
        assert_eq!(guard["judge"], "flag", "{guard}");
        let reason = guard["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("errors: error rate")
                && reason.contains("max 2%")
                && reason.contains(" in ")
                && reason.contains("[requests carrying bad-checkout on]"),
            "the reason names the metric, its value and sample on the flag's requests: {reason}"
        );
        let sample = guard["measurements"][0]["sample_size"].as_u64().unwrap_or(0);
        assert!(sample > 0, "the sample is the flag's requests: {guard}");
        assert_eq!(shown["summary"]["rollout"], 0, "{}", shown["summary"]);
        assert_eq!(shown["summary"]["enabled"], true);
        let last = &shown["changes"][0];
        assert_eq!(last["actor"], "analysis", "{last}");
        assert!(
            last["reason"].as_str().unwrap_or_default().contains("rolled back to 0%"),
            "{last}"
        );
        let (status, audit) = ferry.api_get("/v1/audit?actor=analysis").await;
        assert!(status.is_success(), "{status} {audit}");
        let text = audit.to_string();
        assert!(
            text.contains("flags.guarded_rollout") && text.contains("rolled back to 0%"),
            "the audit log has the rollback by analysis: {text}"
        );
        // The server's /metrics has the proxy's per-flag series of those requests.
        let metrics = ferry
            .http
            .get(format!("{}/metrics", ferry.url))
            .bearer_auth(&ferry.token)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let series = r#"service="web",version="1.0.0",flag="bad-checkout",variant="on"}"#;
        let carried = metrics
            .lines()
            .find(|l| l.starts_with("ferry_proxy_flag_requests_total{") && l.contains(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no series {series} on /metrics:\n{metrics}"));
        let failed = metrics
            .lines()
            .find(|l| l.starts_with("ferry_proxy_flag_errors_total{") && l.contains(series))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_default();
        assert!(
            carried >= sample && failed > 0 && failed <= carried,
            "{carried} requests carried bad-checkout on, {failed} failed (sample {sample})"
        );
        // The CLI says it in words too, with whose requests were judged.
        let out = ferry
            .cli(&["flags", "show", &spec.app, "--env", &spec.env, "bad-checkout"])
            .await;
        assert!(
            out.stdout.contains("guarded rollout: rolled-back")
                && out.stdout.contains("why:")
                && out.stdout.contains("judged on: the requests that carried the flag"),
            "{out}"
        );

        // The good flag climbs to 100 %, across a kill -9 of the server after a step.
        wait_percent(&ferry, &spec, "new-search", 50).await;
        ferry.kill9_server();
        ferry.start_server().await;
        let shown = wait_ended(&ferry, &spec, "new-search", Duration::from_secs(90)).await;
        let report = good_load.stop().await;
        let guard = &shown["guarded_rollout"];
        assert_eq!(guard["state"], "completed", "{guard}");
        assert_eq!(shown["summary"]["rollout"], 100, "{}", shown["summary"]);
        let steps: Vec<&Value> = shown["changes"]
            .as_array()
            .expect("changes")
            .iter()
            .filter(|c| c["actor"] == "analysis")
            .collect();
        assert_eq!(steps.len(), 2, "20 → 50 and 50 → 100 by analysis: {steps:?}");
        assert!(report.total() > 0);

        // No answer names `silent`: never judged on the others' traffic.
        let shown = show(&ferry, &spec, "silent").await;
        let guard = &shown["guarded_rollout"];
        assert_eq!(guard["percent"], 20, "it never moves without a verdict: {guard}");
        let why = guard["measurements"][0]["reason"].as_str().unwrap_or_default();
        assert!(
            why.contains("no request carried flag silent on") && why.contains("Ferry-Flags"),
            "{guard}"
        );
        assert_eq!(guard["measurements"][0]["verdict"], "inconclusive", "{guard}");
    })
    .await;
}
