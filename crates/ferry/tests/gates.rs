//! Promotion gates end to end: `after` + `soak` hold a production deployment until the
//! release has succeeded and served in staging long enough; a freeze window holds it.

mod common;

use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded, with_gated_production};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(60);

/// The deployment's state and its timeline as text.
async fn state_and_timeline(ferry: &Ferry, id: i64) -> (String, String) {
    let detail = ferry.deployment(id).await;
    let timeline = detail
        .events
        .iter()
        .map(|e| format!("{} {}", e.kind, e.message))
        .collect::<Vec<_>>()
        .join("\n");
    (detail.deployment.state.to_string(), timeline)
}

async fn wait_state(ferry: &Ferry, id: i64, state: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (now, timeline) = state_and_timeline(ferry, id).await;
        if now == state {
            return timeline;
        }
        assert!(
            Instant::now() < deadline,
            "deployment #{id} is {now}, never {state}; timeline:\n{timeline}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A positive proof that a waiting deployment stays put: another deployment (of `version`
/// in the ungated staging) goes all the way through the controller loop meanwhile, and the
/// production one is still `blocked` afterwards.
async fn still_blocked_after_the_loop_ran(ferry: &Ferry, spec: &Spec, prod: i64, version: &str) {
    ferry.deploy_ok(spec, version).await;
    let (state, timeline) = state_and_timeline(ferry, prod).await;
    assert_eq!(state, "blocked", "{timeline}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_waits_for_staging_and_the_soak() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::staging("gated");
        let manifest = with_gated_production(
            &ferry,
            &spec,
            &spec.strategy,
            "{ after: staging, soak: 2s }",
        );
        ferry.apply(&manifest).await;

        // Never ran in staging: production waits, and says why.
        let prod = ferry.deploy_id_to("gated", "production", "1.0.0").await;
        let timeline = wait_state(&ferry, prod, "blocked").await;
        assert!(
            timeline.contains("waiting for 1.0.0 to succeed in staging"),
            "{timeline}"
        );
        assert!(!timeline.contains("waiting for waiting for"), "{timeline}");
        still_blocked_after_the_loop_ran(&ferry, &spec, prod, "0.9.0").await;

        // It succeeds in staging; production then soaks 2 s before it starts.
        ferry.deploy_ok(&spec, "1.0.0").await;
        let staged_at = ferry
            .env_status(&spec)
            .await
            .latest_deployment
            .and_then(|d| d.finished_at_ms)
            .expect("staging's deployment finished");
        ferry
            .wait_for_event(prod, Duration::from_secs(10), |e| {
                e.message.contains("soaking in staging:") && e.message.contains("(needs 2s)")
            })
            .await;
        let done = ferry.wait_terminal(prod, Duration::from_secs(25)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        // The soak itself, on the server's clock: from the moment 1.0.0 succeeded in
        // staging to the moment production passed its gates (not to the end of its rollout).
        let passed_at = ferry
            .deployment(prod)
            .await
            .events
            .iter()
            .find(|e| e.kind == "gate" && e.message.starts_with("soak: "))
            .map(|e| e.at_ms)
            .expect("a `soak` gate line when production passed its gates");
        let soaked = passed_at - staged_at;
        assert!(
            (2_000..10_000).contains(&soaked),
            "production passed its soak {soaked}ms after 1.0.0 succeeded in staging (needs 2s)"
        );
        // The countdown does not flood the timeline.
        let (_, timeline) = state_and_timeline(&ferry, prod).await;
        let gate_lines = timeline.lines().filter(|l| l.starts_with("gates ")).count();
        assert!(gate_lines <= 2, "{timeline}");
    })
    .await;
}

/// A canary held at its gates: its timeline says, in order, what it waits for, the gate
/// that let it go, that its rollout started (from which version, how), then its first step.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_held_at_its_gates_says_when_its_rollout_starts() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::staging("held");
        let manifest = with_gated_production(
            &ferry,
            &spec,
            "{ canary: { steps: [{ weight: 50 }] } }",
            "{ after: staging }",
        );
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let first = ferry.deploy_id_to("held", "production", "1.0.0").await;
        let done = ferry.wait_terminal(first, Duration::from_secs(25)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");

        let prod = ferry.deploy_id_to("held", "production", "2.0.0").await;
        wait_state(&ferry, prod, "blocked").await;
        ferry.deploy_ok(&spec, "2.0.0").await;
        let done = ferry.wait_terminal(prod, Duration::from_secs(25)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let (_, timeline) = state_and_timeline(&ferry, prod).await;
        let at = |needle: &str| {
            timeline
                .find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{timeline}"))
        };
        let waits = at("state blocked: waiting for 2.0.0 to succeed in staging");
        let passed = at("gate after: ");
        let started = at("state progressing: rollout started: 1.0.0 -> 2.0.0 (canary");
        let step = at("weight 0% → 50%");
        assert!(
            waits < passed && passed < started && started < step,
            "{timeline}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_freeze_window_holds_the_deployment() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::staging("frozen");
        let manifest = with_gated_production(&ferry, &spec, &spec.strategy,
            "{ freeze: [ { from: \"2000-01-01T00:00:00\", until: \"2999-01-01T00:00:00\", timezone: UTC } ] }",
        );
        ferry.apply(&manifest).await;

        let prod = ferry.deploy_id_to("frozen", "production", "1.0.0").await;
        let timeline = wait_state(&ferry, prod, "blocked").await;
        assert!(
            timeline.contains(
                "freeze window 2000-01-01T00:00:00 to 2999-01-01T00:00:00 (UTC) open until 2999-01-01T00:00:00+00:00"
            ),
            "{timeline}"
        );
        still_blocked_after_the_loop_ran(&ferry, &spec, prod, "0.9.0").await;

        let out = ferry.cli(&["abort", "frozen", "--env", "production"]).await;
        assert_eq!(out.code, 0, "abort:\n{out}");
        let done = ferry.wait_terminal(prod, Duration::from_secs(10)).await;
        assert_eq!(done.state.to_string(), "aborted", "{done:?}");
        // Nothing of it started: the timeline says so, and no traffic "goes back".
        let (_, timeline) = state_and_timeline(&ferry, prod).await;
        assert!(
            timeline.contains("before it started: nothing of 1.0.0 ran"),
            "{timeline}"
        );
        assert!(!timeline.contains("all traffic back"), "{timeline}");
    })
    .await;
}

/// What waited at its gates runs as it was requested (and approved): a manifest applied
/// meanwhile changes the next deployments, not this one — its hooks included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_deployment_keeps_the_manifest_it_was_requested_with() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let log = ferry.dir.path().join("hooks.log");
        let hook = |word: &str| {
            format!(
                "hooks:\n  pre_deploy:\n    - name: mark\n      run: [\"sh\", \"-c\", \"echo \\\"$FERRY_ENV $VERSION {word}\\\" >> '{}'\"]\n",
                log.display()
            )
        };
        let mut spec = Spec::staging("pinned");
        spec.extra_service_yaml = hook("ONE");
        let manifest = with_gated_production(&ferry, &spec, &spec.strategy, "{ after: staging }");
        ferry.apply(&manifest).await;
        let prod = ferry.deploy_id_to("pinned", "production", "1.0.0").await;
        wait_state(&ferry, prod, "blocked").await;

        // The hook changes while production waits for staging.
        spec.extra_service_yaml = hook("TWO");
        let manifest = with_gated_production(&ferry, &spec, &spec.strategy, "{ after: staging }");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let done = ferry.wait_terminal(prod, Duration::from_secs(30)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let ran = std::fs::read_to_string(&log).expect("hooks ran");
        assert_eq!(
            ran.lines().collect::<Vec<_>>(),
            ["staging 1.0.0 TWO", "production 1.0.0 ONE"],
            "production ran the hook it was requested with"
        );
    })
    .await;
}
