//! `bake`: a new version is watched for a while after it converged, before the deployment
//! succeeds; a version that crash-loops right after a fast success is rolled back.

mod common;

use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded};

const LIMIT: Duration = Duration::from_secs(120);

/// A rolling update whose replicas are healthy at once, then crash-loop: the deployment
/// does not succeed during its bake; it is rolled back automatically and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_that_crash_loops_after_converging_is_rolled_back_during_the_bake() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("baked");
        spec.replicas = 1;
        // 2.0.0 serves (and is healthy) until the test drops the marker, then dies at
        // once — on every restart too: a crash loop.
        let marker = ferry.dir.path().join("crash-now");
        spec.prelude = format!(
            "if [ \"$VERSION\" = 2.0.0 ]; then (while [ ! -e '{m}' ]; do sleep 0.1; done; kill $$) & fi;",
            m = marker.display()
        );
        let rolling = spec.strategy.clone();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        spec.strategy = format!("{rolling}\n    bake: 90s");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let id = ferry.deploy_id(&spec, "2.0.0").await;
        let baking = ferry
            .wait_for_event(id, Duration::from_secs(30), |e| {
                e.message.contains("2.0.0 converged; baking until")
            })
            .await;
        assert!(baking.message.contains("(1m 30s)"), "{}", baking.message);
        // Converged, the old version is gone and 2.0.0 serves: still not `succeeded`.
        ferry.assert_serves(&spec, "2.0.0").await;
        let detail = ferry.deployment(id).await;
        assert_eq!(detail.deployment.state.to_string(), "progressing");

        std::fs::write(&marker, b"").expect("marker");
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state.to_string(), "rolled-back", "{done:?}");
        let reason = done.reason.clone().unwrap_or_default();
        assert!(reason.contains("web 2.0.0: replica"), "{reason}");
        let timeline = ferry
            .deployment(id)
            .await
            .events
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            timeline.contains("rolling back to 1.0.0 during the bake:"),
            "{timeline}"
        );
        assert!(!timeline.contains("baked:"), "{timeline}");
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("1.0.0"));
        ferry.assert_serves(&spec, "1.0.0").await;

        // A healthy version bakes, then succeeds: "baking until", then "baked", at least the
        // bake apart on the server's clock.
        spec.strategy = format!("{rolling}\n    bake: 2s");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let id = ferry.deploy_id(&spec, "3.0.0").await;
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let events = ferry.deployment(id).await.events;
        let at = |needle: &str| {
            events
                .iter()
                .find(|e| e.message.contains(needle))
                .map(|e| e.at_ms)
                .unwrap_or_else(|| panic!("no {needle:?} on the timeline: {events:#?}"))
        };
        let baked_for = at("baked: 3.0.0 watched for 2s") - at("3.0.0 converged; baking until");
        assert!(baked_for >= 2_000, "baked for {baked_for}ms");
    })
    .await;
}

/// A canary bakes too once it has all the traffic and the old version is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_bakes_after_its_final_promotion() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("bakedcanary");
        spec.replicas = 1;
        spec.strategy = "{ canary: { steps: [{ weight: 50 }] } }\n    bake: 2s".into();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let id = ferry.deploy_id(&spec, "2.0.0").await;
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
        let events = ferry.deployment(id).await.events;
        let at = |needle: &str| {
            events
                .iter()
                .find(|e| e.message.contains(needle))
                .map(|e| e.at_ms)
                .unwrap_or_else(|| panic!("no {needle:?} on the timeline: {events:#?}"))
        };
        let baked_for = at("baked: 2.0.0 watched for 2s") - at("2.0.0 converged; baking until");
        assert!(baked_for >= 2_000, "baked for {baked_for}ms");
        assert!(at("serves all traffic") >= at("baked: 2.0.0"));
        ferry.assert_serves(&spec, "2.0.0").await;
    })
    .await;
}

/// The bake's length is the deployment's manifest revision's: an `apply` during the
/// rollout that changes `bake` takes effect with the next deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bake_is_as_long_as_the_deployments_manifest_says() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("bakepinned");
        spec.replicas = 1;
        spec.start_timeout = "60s".into();
        // 2.0.0 starts serving only once the test drops the marker.
        let marker = ferry.dir.path().join("serve-now");
        spec.prelude = format!(
            "if [ \"$VERSION\" = 2.0.0 ]; then while [ ! -e '{m}' ]; do sleep 0.1; done; fi;",
            m = marker.display()
        );
        let rolling = spec.strategy.clone();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        spec.strategy = format!("{rolling}\n    bake: 2s");
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        let id = ferry.deploy_id(&spec, "2.0.0").await;
        // while 2.0.0 cannot converge, a longer bake is applied
        spec.strategy = format!("{rolling}\n    bake: 10m");
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        std::fs::write(&marker, b"").expect("marker");
        let baking = ferry
            .wait_for_event(id, Duration::from_secs(60), |e| {
                e.message.contains("2.0.0 converged; baking until")
            })
            .await;
        assert!(baking.message.contains("(2s)"), "{}", baking.message);
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state.to_string(), "succeeded", "{done:?}");
    })
    .await;
}
