//! Ferry with a real PostgreSQL:
//! - the server keeps its state there (`ferry server --database URL`): deploys, history and
//!   the audit live there, survive a `kill -9` of the server, and no SQLite file is made;
//! - deployment hooks against an app database: a `pre_deploy` hook takes a `pg_dump`
//!   backup, the next applies the release's schema migration; a failing migration stops the
//!   deployment before any traffic moves (the previous version keeps serving, the backup is
//!   on disk), and a rollback past the irreversible migration is refused unless forced with
//!   a reason.
//!
//! Skipped (saying so) without a local PostgreSQL, unless `FERRY_REQUIRE_POSTGRES=1` (set by
//! `.ci/run`, which installs and starts one).

mod common;

use std::path::Path;
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

fn hooks_yaml(database: &str) -> String {
    format!(
        r#"hooks:
  pre_deploy:
    - name: backup
      run: ["sh", "-c", "mkdir -p backups && pg_dump --no-owner -d \"$PGDATABASE\" -f \"backups/backup-$VERSION.sql\""]
      env: {{ PGDATABASE: {database} }}
      timeout: 60s
    - name: migrate
      run: ["sh", "-c", "psql -X -q --single-transaction -v ON_ERROR_STOP=1 -d \"$PGDATABASE\" -f \"migrations/$VERSION.sql\""]
      env: {{ PGDATABASE: {database} }}
      timeout: 60s
      migration: irreversible
"#
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn replica_starts(ferry: &Ferry) -> usize {
    std::fs::read_to_string(ferry.pids_file())
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_dump_backup_and_migration_run_before_traffic_moves() {
    let _serial = SERIAL.lock().await;
    let Some(db) = PgDatabase::create("ferry_hooks") else {
        return;
    };
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let dir = ferry.dir.path().to_path_buf();
        write(
            &dir,
            "migrations/1.0.0.sql",
            "CREATE TABLE accounts (id serial PRIMARY KEY, email text NOT NULL);\n\
             INSERT INTO accounts (email) VALUES ('ada@example.com');\n",
        );
        write(
            &dir,
            "migrations/1.1.0.sql",
            "ALTER TABLE accounts ADD COLUMN display_name text;\n",
        );
        // The first statement would work; the second fails, so the whole file rolls back.
        write(
            &dir,
            "migrations/1.2.0.sql",
            "ALTER TABLE accounts ADD COLUMN half_done text;\n\
             ALTER TABLE no_such_table ADD COLUMN x int;\n",
        );
        let mut spec = Spec::new("ledger");
        spec.replicas = 1;
        spec.extra_service_yaml = hooks_yaml(&db.name);
        // The hooks reach PostgreSQL by peer authentication as the user running the tests:
        // the environment says explicitly that its workloads run as that user (under root,
        // they would otherwise run as `nobody`).
        spec.run_as = Some(common::os_user());
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;

        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.assert_serves(&spec, "1.0.0").await;
        assert!(dir.join("backups/backup-1.0.0.sql").is_file());
        assert_eq!(
            psql(&db.name, "SELECT email FROM accounts").as_deref(),
            Ok("ada@example.com")
        );

        ferry.deploy_ok(&spec, "1.1.0").await;
        ferry.assert_serves(&spec, "1.1.0").await;
        let backup = std::fs::read_to_string(dir.join("backups/backup-1.1.0.sql"))
            .expect("the 1.1.0 backup");
        assert!(
            backup.contains("CREATE TABLE public.accounts") && backup.contains("ada@example.com"),
            "the backup taken before 1.1.0 holds the schema and the data:\n{backup}"
        );
        assert!(psql(&db.name, "SELECT display_name FROM accounts").is_ok());

        // A failing migration: the deployment fails before any replica of 1.2.0 starts.
        let starts_before = replica_starts(&ferry);
        let out = ferry
            .cli(&[
                "deploy",
                "ledger",
                "--env",
                "production",
                "--version",
                "1.2.0",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        assert_ne!(
            out.code, 0,
            "a failing migration must fail the deployment:\n{out}"
        );
        assert!(
            out.stdout.contains("migrate") || out.stderr.contains("migrate"),
            "the failure names the hook:\n{out}"
        );
        assert!(
            dir.join("backups/backup-1.2.0.sql").is_file(),
            "the backup ran before the failing migration"
        );
        assert!(
            psql(&db.name, "SELECT half_done FROM accounts").is_err(),
            "the failed migration left nothing behind"
        );
        assert_eq!(
            replica_starts(&ferry),
            starts_before,
            "no replica of 1.2.0 was started"
        );
        ferry.assert_serves(&spec, "1.1.0").await;
        let migrate_log = ferry
            .cli(&["logs", "ledger", "--env", "production", "--hook", "migrate"])
            .await;
        assert!(
            migrate_log.stdout.contains("no_such_table"),
            "the hook's captured output shows psql's error:\n{migrate_log}"
        );

        // Going back to 1.0.0 crosses 1.1.0's irreversible migration.
        let refused = ferry
            .cli(&["rollback", "ledger", "--env", "production", "--to", "1.0.0"])
            .await;
        assert_ne!(
            refused.code, 0,
            "rollback past an irreversible migration:\n{refused}"
        );
        assert!(
            refused.stderr.contains("irreversible"),
            "the refusal explains why:\n{refused}"
        );
        let forced = ferry
            .cli(&[
                "rollback",
                "ledger",
                "--env",
                "production",
                "--to",
                "1.0.0",
                "--force",
                "--reason",
                "restore drill",
                "--wait",
                "--timeout",
                "60s",
            ])
            .await;
        assert_eq!(
            forced.code, 0,
            "a forced rollback with a reason goes ahead:\n{forced}"
        );
        ferry.assert_serves(&spec, "1.0.0").await;
        let audit = ferry.cli(&["audit", "--app", "ledger"]).await;
        assert!(
            audit.stdout.contains("restore drill"),
            "the reason is audited:\n{audit}"
        );
    })
    .await;
}
