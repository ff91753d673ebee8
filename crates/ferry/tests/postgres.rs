//! The server keeps its state in a real PostgreSQL (`ferry server --database URL`): deploys,
//! history and users live there, survive a `kill -9` of the server, and nothing is written
//! to a SQLite file. Skipped (saying so) without a local PostgreSQL, unless
//! `FERRY_REQUIRE_POSTGRES=1` (set by `.ci/run`, which installs and starts one).

mod common;

use std::time::Duration;

use common::{Ferry, PgDatabase, SERIAL, Spec, bounded, psql};

const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_keeps_its_state_in_postgresql() {
    let _serial = SERIAL.lock().await;
    let Some(db) = PgDatabase::create("ferry_state") else {
        return;
    };
    bounded(LIMIT, async {
        let url = db.url();
        let mut ferry = Ferry::start_with_env(&[("FERRY_DATABASE_URL", &url)]).await;
        let mut spec = Spec::new("ledger");
        spec.replicas = 1;
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.deploy_ok(&spec, "1.1.0").await;
        ferry.assert_serves(&spec, "1.1.0").await;

        assert!(
            !ferry.data.join("ferry.db").exists(),
            "with --database no SQLite file is made"
        );
        assert_eq!(
            psql(
                &db.name,
                "SELECT string_agg(version || ':' || state, ',' ORDER BY id) FROM deployments"
            )
            .as_deref(),
            Ok("1.0.0:succeeded,1.1.0:succeeded")
        );
        assert_eq!(
            psql(&db.name, "SELECT current_version FROM environments").as_deref(),
            Ok("1.1.0")
        );

        // A crash loses nothing: the next server reads the same database.
        ferry.kill9_server();
        ferry.start_server().await;
        let status = ferry.env_status(&spec).await;
        assert_eq!(status.current_version.as_deref(), Some("1.1.0"));
        let history = ferry
            .cli(&["history", "ledger", "--env", "production"])
            .await;
        assert_eq!(history.code, 0, "{history}");
        assert!(
            history.stdout.contains("1.0.0") && history.stdout.contains("1.1.0"),
            "{history}"
        );
        let rollback = ferry
            .cli(&[
                "rollback",
                "ledger",
                "--env",
                "production",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        assert_eq!(rollback.code, 0, "{rollback}");
        ferry.assert_serves(&spec, "1.0.0").await;
        assert_eq!(
            psql(&db.name, "SELECT current_version FROM environments").as_deref(),
            Ok("1.0.0")
        );
        let audit = psql(
            &db.name,
            "SELECT count(*) FROM audit_log WHERE action LIKE 'deploy%'",
        )
        .expect("audit rows");
        assert!(
            audit.parse::<i64>().unwrap_or(0) >= 2,
            "audit in PostgreSQL: {audit}"
        );
    })
    .await;
}
