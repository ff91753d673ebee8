//! Verdicts through the real proxy: one broken service of a release cannot hide inside the
//! release's combined error rate.

mod common;

use std::time::Duration;

use common::{Ferry, Load, SERIAL, Spec, bounded};
use ferry_core::model::DeploymentState;

const LIMIT: Duration = Duration::from_secs(120);

/// `api` (a little of the traffic) answers only 500s in 2.0.0, `web` (most of it) is fine:
/// the canary is rolled back, and the verdict, the timeline and the change record name
/// `api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_service_is_named_and_rolls_the_release_back() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("duo");
        spec.replicas = 1;
        // api: a small Python server; 2.0.0 answers every request but its health check
        // with a 500. It dies at once on SIGTERM, like most.
        let api_server = "import http.server, os
v = os.environ['VERSION']
bad = v == '2.0.0'
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        code = 500 if bad and self.path != '/health' else 200
        body = ('api ' + v + '\\n').encode()
        self.send_response(code)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('X-Version', v)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()
";
        let api_run = serde_json::to_string(&[
            "sh",
            "-c",
            &format!(
                "echo $$ >> '{pids}'; exec python3 -c \"$0\"",
                pids = ferry.pids_file().display()
            ),
            api_server,
        ])
        .expect("json");
        spec.extra_service_yaml = format!(
            "  api:\n    run: {api_run}\n    route: /api\n    replicas: 1\n    env: {{ FERRY_TEST_MARK: {mark} }}\n    stop_timeout: 5s\n    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: 15s }}\n",
            mark = serde_json::to_string(&ferry.mark).expect("json"),
        );
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 60s }], analysis: { interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 5% }] } } }".into();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        // Most requests go to web; api gets a few a second.
        let web = Load::start(&spec.listener(), 3);
        let api_url = format!("http://{}/api/", spec.listener());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let api = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = http.get(&api_url).send().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let id = ferry.deploy_id_to("duo", "production", "2.0.0").await;
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        api.await.expect("api client");
        web.stop().await;

        assert_eq!(done.state, DeploymentState::RolledBack, "{done:?}");
        let reason = done.reason.clone().unwrap_or_default();
        assert!(
            reason.contains("background analysis failed: errors: service api: error rate"),
            "{reason}"
        );
        let detail = ferry.deployment(id).await;
        assert!(
            detail
                .events
                .iter()
                .any(|e| e.message.contains("all traffic back to 1.0.0 now: background analysis \
                     failed: errors: service api: error rate 1")),
            "{:#?}",
            detail.events
        );
        // the measurement that failed it is on the timeline, like a step analysis's
        assert!(
            detail.events.iter().any(|e| e.kind == "analysis"
                && e.message.contains("background analysis: errors Fail: service api: error rate 1 (")),
            "{:#?}",
            detail.events
        );
        let (status, record) = ferry
            .api_get(&format!("/v1/deployments/{id}/change-record"))
            .await;
        assert!(status.is_success(), "{status} {record}");
        assert!(
            record["reason"]
                .as_str()
                .is_some_and(|r| r.contains("service api:")),
            "{record:#}"
        );
        ferry.assert_serves(&spec, "1.0.0").await;
    })
    .await;
}

/// A canary nobody sends traffic to: its background analysis can only say Inconclusive. Its
/// pause ends, but it does not reach 100%: it holds before the final promotion and says so,
/// then (after `inconclusive_limit`) is paused for a person — `paused: true` in the JSON
/// and the text, `ferry resume` named — and a person's `promote` finishes it on the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_its_background_analysis_never_judged_does_not_finish_by_itself() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("quiet");
        spec.replicas = 1;
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 1s }], analysis: { interval: 1s, inconclusive_limit: 3, metrics: [{ name: errors, builtin: error_rate, max: 5% }] } } }".into();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let id = ferry.deploy_id_to("quiet", "production", "2.0.0").await;

        ferry
            .wait_for_event(id, Duration::from_secs(30), |e| {
                e.message
                    .contains("holding before the final promotion until the background analysis passes")
            })
            .await;
        let status = ferry
            .wait_status(&spec, Duration::from_secs(30), "paused for a person", |s| {
                s.rollout.as_ref().is_some_and(|r| r.paused)
            })
            .await;
        let rollout = status.rollout.expect("rollout");
        assert!(!rollout.paused_by_hand);
        assert_eq!(rollout.canary_weight, 50.0, "never reached 100%");
        let waiting = rollout.waiting_for.unwrap_or_default();
        assert!(
            waiting.starts_with("background analysis at 50%:") && waiting.contains("ferry resume"),
            "{waiting}"
        );
        let text = ferry.cli(&["status", "quiet", "--env", "production"]).await;
        assert!(
            text.stdout.contains("paused    analysis could not judge (`ferry resume` measures again"),
            "{text}"
        );

        let out = ferry.cli(&["promote", "quiet", "--env", "production"]).await;
        assert_eq!(out.code, 0, "{out}");
        let done = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done.state, DeploymentState::Succeeded, "{done:?}");
        let reason = done.reason.unwrap_or_default();
        assert!(
            reason.starts_with("promoted by hand without a conclusive verdict from the background analysis"),
            "{reason}"
        );
        ferry.assert_serves(&spec, "2.0.0").await;
    })
    .await;
}
