//! A follower's answers and live views (docs/high-availability.md): two `ferry server`s on
//! one PostgreSQL database; the leader supervises the replicas and stores what it sees; the
//! follower's `status` shows the replicas' live health as the leader last stored it, saying
//! who saw it and how old it is, and its live views (`deploy --wait`'s long poll, `/watch`,
//! the console) hear each change of the leader through the store's `NOTIFY`, not a poll.
//!
//! Skipped (saying so) without a local PostgreSQL, unless `FERRY_REQUIRE_POSTGRES=1` (set by
//! `.ci/run`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FERRY, Ferry, PgDatabase, SERIAL, Spec, bounded, free_port, wall_ms};
use ferry_core::api::{AppStatus, EnvStatus, EventView};
use ferry_core::model::ReplicaState;

const LIMIT: Duration = Duration::from_secs(180);

/// The second server, following.
struct Follower {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Follower {
    fn start(ferry: &Ferry, database: &str) -> Follower {
        let port = free_port();
        let log = ferry.dir.path().join("server-b.err");
        let child = Command::new(FERRY)
            .args(["server", "--data"])
            .arg(&ferry.data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--server-id", "b", "--lease-ttl", "3s"])
            .env("FERRY_DATABASE_URL", database)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn the second server");
        Follower {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server b\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(ferry: &Ferry, url: &str) -> Option<serde_json::Value> {
    let resp = ferry
        .http
        .get(url)
        .bearer_auth(&ferry.token)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The environment's status as the server at `base` answers it (`None` while it does not).
async fn status_at(ferry: &Ferry, base: &str, spec: &Spec) -> Option<EnvStatus> {
    let body = get(
        ferry,
        &format!("{base}/v1/apps/{}/status?env={}", spec.app, spec.env),
    )
    .await?;
    let app: AppStatus = serde_json::from_value(body).ok()?;
    app.environments.into_iter().next()
}

/// Polls the server at `base` (bounded) until `pred` holds for its status.
async fn until_status(
    ferry: &Ferry,
    base: &str,
    spec: &Spec,
    what: &str,
    pred: impl Fn(&EnvStatus) -> bool,
) -> EnvStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = status_at(ferry, base, spec).await;
        if let Some(status) = seen.as_ref().filter(|s| pred(s)) {
            return status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{base}: never {what}; last status: {seen:#?}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_healthy(status: &EnvStatus, version: &str, replicas: usize) -> bool {
    status.replicas.len() == replicas
        && status
            .replicas
            .iter()
            .all(|r| r.version == version && r.state == ReplicaState::Healthy && r.pid.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_serves_the_leaders_live_view_and_hears_its_changes_at_once() {
    let _serial = SERIAL.lock().await;
    let Some(db) = PgDatabase::create("ferry_follower") else {
        return;
    };
    bounded(LIMIT, async {
        let database = db.url();
        let mut ferry = Ferry::start_with_env(&[
            ("FERRY_DATABASE_URL", &database),
            ("FERRY_SERVER_ID", "a"),
            ("FERRY_LEASE_TTL", "3s"),
        ])
        .await;
        let follower = Follower::start(&ferry, &database);
        let (a, b) = (ferry.url.clone(), follower.url.clone());
        // `a` started first and leads; `b` answers once it is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = get(&ferry, &format!("{b}/v1/version")).await;
            let leadership = seen.map(|v| v["leadership"].clone());
            if leadership.as_ref().is_some_and(|l| l["leader"] == "a") {
                assert_eq!(leadership.unwrap()["leading"], false);
                break;
            }
            assert!(Instant::now() < deadline, "b: {leadership:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // A real-server-like app (python, dies at once on SIGTERM), two replicas.
        let mut spec = Spec::new("shop");
        spec.program = Some(format!(
            "python3 '{}' --port \"$PORT\" --version \"$VERSION\" --on-sigterm exit",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/server.py")
        ));
        ferry.apply(&ferry.write_manifest(&spec, "ferry.yaml")).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        // The leader sees them itself; the follower serves what the leader stored: the same
        // live health and pids, saying who saw them and how old that is.
        let leader = until_status(&ferry, &a, &spec, "healthy on a", |s| {
            all_healthy(s, "1.0.0", 2)
        })
        .await;
        let observed = leader.observed.clone().expect("observed on the leader");
        assert_eq!((observed.server.as_str(), observed.live), ("a", true));
        let followed = until_status(&ferry, &b, &spec, "healthy on b", |s| {
            all_healthy(s, "1.0.0", 2)
        })
        .await;
        let observed = followed.observed.clone().expect("observed on the follower");
        assert_eq!((observed.server.as_str(), observed.live), ("a", false));
        let age = observed.age_ms.expect("an age");
        assert!((0..15_000).contains(&age), "{observed:?}");
        let pids = |s: &EnvStatus| {
            let mut p: Vec<u32> = s.replicas.iter().filter_map(|r| r.pid).collect();
            p.sort_unstable();
            p
        };
        assert_eq!(pids(&followed), pids(&leader));
        // The follower's CLI says so too.
        ferry.url = b.clone();
        let out = ferry.cli(&["status", "shop", "--env", "production"]).await;
        ferry.url = a.clone();
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("as the leader a saw them"), "{out}");

        // A deploy through the leader, followed on the follower by a long poll of its
        // timeline (as `deploy --wait` does): each line arrives at once, woken by the
        // leader's NOTIFY (no periodic poll on PostgreSQL).
        let id = ferry.deploy_id_to("shop", "production", "2.0.0").await;
        let mut after = 0;
        let mut delays = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        'follow: loop {
            assert!(Instant::now() < deadline, "the follower saw: {delays:?}");
            let events: Vec<EventView> = serde_json::from_value(
                get(
                    &ferry,
                    &format!("{b}/v1/deployments/{id}/events?after={after}&wait_ms=10000"),
                )
                .await
                .unwrap_or_default(),
            )
            .unwrap_or_default();
            let seen_at = wall_ms();
            for event in &events {
                after = after.max(event.seq);
                // Lines written before this poll began are no measure of the wake-up.
                delays.push(seen_at - event.at_ms);
                if event.kind == "state" && event.message.starts_with("succeeded") {
                    break 'follow;
                }
            }
        }
        delays.sort_unstable();
        let median = delays[delays.len() / 2];
        eprintln!(
            "follower: {} timeline lines seen {}..{} ms after the leader wrote them (median {median} ms)",
            delays.len(),
            delays[0],
            delays[delays.len() - 1]
        );
        assert!(delays.len() >= 5, "{delays:?}");
        assert!(median < 200, "median {median} ms: {delays:?}");
        let done = until_status(&ferry, &b, &spec, "2.0.0 healthy on b", |s| {
            all_healthy(s, "2.0.0", 2)
        })
        .await;
        assert_eq!(done.current_version.as_deref(), Some("2.0.0"));
    })
    .await;
}
