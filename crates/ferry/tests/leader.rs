//! Several `ferry server`s on one PostgreSQL database, one leader (docs/high-availability.md):
//! two servers share the database and the data directory (as a shared volume would); exactly
//! one leads; a deploy sent to the follower is carried out by the leader at once (woken
//! through the store) and followed on the follower; `kill -9` of the leader → the follower
//! leads within the lease TTL, adopts the proxy and the replicas (same pids: no restart, no
//! duplicate) and carries on with the next deploy. A second live server given the same
//! `--server-id` refuses to start; a server restarted with its id after a `kill -9` takes its
//! dead predecessor's lease over at once.
//!
//! Skipped (saying so) without a local PostgreSQL, unless `FERRY_REQUIRE_POSTGRES=1` (set by
//! `.ci/run`).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{FERRY, Ferry, PgDatabase, SERIAL, Spec, bounded, free_port};
use ferry_core::model::{DeploymentState, ReplicaState};

const LIMIT: Duration = Duration::from_secs(240);
const TTL: &str = "3s";

/// A second server on the installation's data directory and database.
struct Follower {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Follower {
    fn start(ferry: &Ferry, database: &str) -> Follower {
        Follower::start_as(ferry, database, "b", TTL)
    }

    fn start_as(ferry: &Ferry, database: &str, id: &str, ttl: &str) -> Follower {
        let port = free_port();
        let log = ferry.dir.path().join(format!("server-{id}-{port}.err"));
        let child = Command::new(FERRY)
            .args(["server", "--data"])
            .arg(&ferry.data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--server-id", id, "--lease-ttl", ttl])
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

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- {}\n{}", self.log.display(), self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /v1/version`'s `leadership` from the server at `url` (Null while it does not answer).
async fn leadership(ferry: &Ferry, url: &str) -> serde_json::Value {
    let Ok(resp) = ferry
        .http
        .get(format!("{url}/v1/version"))
        .bearer_auth(&ferry.token)
        .send()
        .await
    else {
        return serde_json::Value::Null;
    };
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    body["leadership"].clone()
}

/// Polls `url`'s leadership until `pred` holds (bounded); returns it and how long it took.
async fn until_leadership(
    ferry: &Ferry,
    url: &str,
    within: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> (serde_json::Value, Duration) {
    let start = Instant::now();
    loop {
        let seen = leadership(ferry, url).await;
        if pred(&seen) {
            return (seen, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "{url}: leadership still {seen} after {within:?}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Healthy replica pids of `version`, sorted (as the server at `ferry.url` reports them).
async fn healthy_pids(ferry: &Ferry, spec: &Spec, version: &str) -> Vec<u32> {
    let status = ferry.status_api(spec).await;
    let mut pids: Vec<u32> = status
        .replicas
        .iter()
        .filter(|r| r.version == version && r.state == ReplicaState::Healthy)
        .filter_map(|r| r.pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_acts_a_follower_takes_over_after_kill_9() {
    let _serial = SERIAL.lock().await;
    let Some(db) = PgDatabase::create("ferry_leader") else {
        return;
    };
    bounded(LIMIT, async {
        let database = db.url();
        let mut ferry = Ferry::start_with_env(&[
            ("FERRY_DATABASE_URL", &database),
            ("FERRY_SERVER_ID", "a"),
            ("FERRY_LEASE_TTL", TTL),
        ])
        .await;
        let a_url = ferry.url.clone();
        let follower = Follower::start(&ferry, &database);
        let b_url = follower.url.clone();

        // Exactly one leads, and both say which.
        let (a, _) = until_leadership(&ferry, &a_url, Duration::from_secs(30), |l| {
            l["leading"] == true
        })
        .await;
        assert_eq!(
            (&a["server"], &a["leader"]),
            (&"a".into(), &"a".into()),
            "{a}"
        );
        let (b, _) = until_leadership(&ferry, &b_url, Duration::from_secs(60), |l| {
            l["server"] == "b"
        })
        .await;
        assert_eq!(
            (&b["leading"], &b["leader"]),
            (&false.into(), &"a".into()),
            "{b}"
        );
        assert!(b["token"].as_i64().is_some_and(|t| t >= 1), "{b}");

        // A deploy sent to the follower: the leader carries it out, the follower's
        // `deploy --wait` follows it to the end.
        let mut spec = Spec::new("ha");
        spec.replicas = 2;
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.url = b_url.clone();
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        let id = ferry
            .status_api(&spec)
            .await
            .latest_deployment
            .expect("a deployment")
            .id;
        let detail = ferry.deployment(id).await;
        assert_eq!(detail.deployment.state, DeploymentState::Succeeded);
        let picked_up = detail
            .events
            .iter()
            .find(|e| e.message.starts_with("progressing"))
            .map(|e| e.at_ms - detail.deployment.created_at_ms)
            .expect("a progressing line");
        eprintln!(
            "a deploy accepted by the follower was picked up by the leader after {picked_up} ms"
        );
        assert!(picked_up < 5_000, "{picked_up} ms");
        ferry.assert_serves(&spec, "1.0.0").await;
        // Replicas' live health is known to the server that supervises them: the leader.
        ferry.url = a_url.clone();
        let before = healthy_pids(&ferry, &spec, "1.0.0").await;
        ferry.url = b_url.clone();
        assert_eq!(before.len(), 2, "{before:?}");

        // kill -9 of the leader: the follower leads within the TTL (+ its retry interval
        // and a loaded machine's slack), adopts the proxy and the same replicas.
        ferry.kill9_server();
        let (b, took) = until_leadership(&ferry, &b_url, Duration::from_secs(20), |l| {
            l["leading"] == true
        })
        .await;
        eprintln!(
            "the follower led {} ms after the leader's kill -9 (TTL {TTL})",
            took.as_millis()
        );
        assert_eq!(b["leader"], "b", "{b}");
        assert!(
            b["token"].as_i64() > a["token"].as_i64(),
            "a new fencing token: {b} vs {a}"
        );
        ferry.assert_serves(&spec, "1.0.0").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let after = healthy_pids(&ferry, &spec, "1.0.0").await;
            if after == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replicas not adopted: {before:?} → {after:?}\n{}",
                follower.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // It carries on: the next deploy through the new leader.
        ferry.deploy_ok(&spec, "1.1.0").await;
        ferry.assert_serves(&spec, "1.1.0").await;
        assert_eq!(healthy_pids(&ferry, &spec, "1.1.0").await.len(), 2);
        let status = ferry.status_api(&spec).await;
        assert_eq!(
            status.replicas.len(),
            2,
            "no duplicate: {:?}",
            status.replicas
        );

        // Teardown through the leader; it stops, leaving nothing behind (the harness checks).
        let out = ferry.cli(&["teardown", "--yes"]).await;
        assert_eq!(out.code, 0, "{out}\n{}", follower.logs());
        let mut follower = follower;
        let deadline = Instant::now() + Duration::from_secs(30);
        while follower.child.try_wait().expect("wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "the leader did not stop after teardown"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ferry.url = a_url;
    })
    .await;
}

/// Two live servers with one `--server-id` would both lead (the lease was keyed by the id):
/// the second refuses to start, saying why, and the first leads on undisturbed. A restart
/// with that id after a `kill -9` is not a duplicate: it takes the dead predecessor's lease
/// over at once, without waiting for it to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_server_with_the_same_id_refuses_to_start_a_restarted_one_takes_over() {
    let _serial = SERIAL.lock().await;
    let Some(db) = PgDatabase::create("ferry_same_id") else {
        return;
    };
    bounded(LIMIT, async {
        let database = db.url();
        // Renewals every 5 s: the twin sees one within that; the lease outlives a restart.
        let ttl = "15s";
        let mut ferry = Ferry::start_with_env(&[
            ("FERRY_DATABASE_URL", &database),
            ("FERRY_SERVER_ID", "a"),
            ("FERRY_LEASE_TTL", ttl),
        ])
        .await;
        let url = ferry.url.clone();
        let (a, _) = until_leadership(&ferry, &url, Duration::from_secs(30), |l| {
            l["leading"] == true
        })
        .await;

        let mut twin = Follower::start_as(&ferry, &database, "a", ttl);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = twin.child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the second server with id a still runs:\n{}",
                twin.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let logs = twin.logs();
        assert!(!status.success(), "{status}\n{logs}");
        assert!(
            logs.contains("another live server uses --server-id \"a\""),
            "{logs}"
        );
        eprintln!(
            "the second server with the same id stopped after {} ms",
            started.elapsed().as_millis()
        );
        let (still, _) = until_leadership(&ferry, &url, Duration::from_secs(10), |l| {
            l["leading"] == true
        })
        .await;
        assert_eq!(still["token"], a["token"], "undisturbed: {still}");

        ferry.kill9_server();
        let restarted = Instant::now();
        ferry.start_server().await;
        let (led, _) = until_leadership(&ferry, &url, Duration::from_secs(30), |l| {
            l["leading"] == true
        })
        .await;
        eprintln!(
            "the restarted server led {} ms after its start (TTL {ttl})",
            restarted.elapsed().as_millis()
        );
        assert_eq!(led["leader"], "a", "{led}");
        assert!(led["token"].as_i64() > a["token"].as_i64(), "{led} vs {a}");
        assert!(
            ferry
                .server_logs()
                .contains("the leader's process is gone; taking over"),
            "{}",
            ferry.server_logs()
        );
    })
    .await;
}
