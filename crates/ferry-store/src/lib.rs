//! Ferry's durable state.
//!
//! One [`Store`] over a sqlx `Any` pool, so the same runtime queries run on SQLite (embedded
//! default) and PostgreSQL (`ferry server --database postgres://…`). Portability rules followed by every query here:
//! `$n` placeholders, times as i64 milliseconds, JSON as TEXT, booleans as 0/1 integers,
//! enums as their `as_str()` text, no engine-specific SQL besides `RETURNING` and
//! `ON CONFLICT` (both engines have them).
//!
//! Concurrency: deployments carry a `row_version` that every [`Store::transition`] compares
//! and bumps in one transaction. Every write transaction starts with a write statement so
//! that SQLite takes its write lock up front (waiting on the busy timeout) instead of failing
//! to upgrade a read snapshot.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::api::{DeploymentView, EventView};
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row, SqlSafeStr};

// alerts:
mod alerts;
pub use alerts::{AlertEvent, AlertWrite, IncidentChange, StoredAlert};
mod approvals;
mod audit;
// hooks:
mod hooks;
mod identity;
mod secrets;
// releases:
mod dora;
mod series;
pub use dora::{DoraFacts, NewIncident};
mod releases;
// gates:
mod gates;
// config:
mod config;
pub use config::ReplicaConfig;
// flags:
mod flags;
// notify:
pub mod notify;
// leader: leases and wake-ups between servers
mod lease;
mod live;
pub use flags::{
    ChangeMeta, FlagChange, FlagClientScope, FlagDecide, FlagGuardRecord, FlagMetricRow,
    FlagRecord, FlagTokenRecord, FlagWrite, GuardRefused, ServedFlags,
};
pub use lease::{Acquire, Fence, LeaseGrant, LeaseRecord, MAX_LEASE_NAME_LEN, WAKE_CHANNEL};
pub use live::{CHANGED_CHANNEL, LiveRecord};
pub use notify::{DeliveryQuery, DeliveryRecord, GroupRow, NewDelivery};

pub use audit::{AuditQuery, CheckpointRecord};
pub use hooks::{HookRunRecord, NewHookRun};
pub use identity::{
    BindingRecord, LinkRefusal, NewBinding, NewToken, RoleRecord, TokenRecord, UserRecord,
};
pub use secrets::{SecretInfo, SecretRecord};
// releases:
pub use releases::{DeploymentFact, NewRelease, ReleaseOutcome, ReleaseRecord};

/// Errors of the store. `NotFound`/`Conflict` are for callers to act on; `Database` carries
/// the operation that failed; `Corrupt` means a row holds a value this code can't read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// What was missing, e.g. `deployment 42`.
    #[error("not found: {0}")]
    NotFound(String),
    /// A compare-and-set lost, a uniqueness rule was hit, or a terminal deployment was changed.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database failed while doing the operation named by the first field.
    #[error("database error while {0}: {1}")]
    Database(String, #[source] sqlx::Error),
    /// A stored value could not be decoded (names the row).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Attaches the operation to a sqlx error (unique violations become `Conflict`).
trait Ctx<T> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, sqlx::Error> {
    fn ctx(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| {
            let op = op();
            if let sqlx::Error::Database(db) = &e
                && db.is_unique_violation()
            {
                return StoreError::Conflict(format!("{op}: {db}"));
            }
            StoreError::Database(op, e)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewManifest {
    pub app: String,
    pub yaml: String,
    pub manifest_json: String,
    pub base_dir: Option<String>,
    pub applied_by: String,
    pub now_ms: i64,
}

/// An app with its latest manifest revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppRecord {
    pub name: String,
    pub revision: i64,
    pub yaml: String,
    pub manifest_json: String,
    pub base_dir: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDeployment {
    pub app: String,
    pub env: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub kind: DeploymentKind,
    pub strategy: String,
    pub requested_by: String,
    pub manifest_revision: i64,
    pub now_ms: i64,
    /// dora: the deployment this one fixes (`ferry deploy --fix-of N`): the incident is
    /// written in the same transaction as the deployment.
    pub fix_of: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentRecord {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub version: String,
    pub previous_version: Option<String>,
    pub kind: DeploymentKind,
    pub strategy: String,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub requested_by: String,
    pub manifest_revision: i64,
    /// The controller's private progress; stored as TEXT, `{}` when new.
    pub phase: serde_json::Value,
    pub row_version: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// When acting for it first failed on the store or the engine, while that lasts (the
    /// controller's infrastructure-retry window; see [`Store::infra_failing_since`]).
    #[serde(skip)]
    pub infra_failing_since_ms: Option<i64>,
}

impl DeploymentRecord {
    pub fn view(&self) -> DeploymentView {
        DeploymentView {
            id: self.id,
            app: self.app.clone(),
            env: self.env.clone(),
            version: self.version.clone(),
            previous_version: self.previous_version.clone(),
            strategy: self.strategy.clone(),
            state: self.state,
            reason: self.reason.clone(),
            kind: self.kind,
            requested_by: self.requested_by.clone(),
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            finished_at_ms: self.finished_at_ms,
            gates: Vec::new(),
        }
    }
}

/// A compare-and-set state change of one deployment (see [`Store::transition`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    pub id: i64,
    pub expected_row_version: i64,
    pub state: DeploymentState,
    pub reason: Option<String>,
    pub phase: serde_json::Value,
    /// When Some, the environment's current version becomes this (with this deployment's id).
    pub set_current_version: Option<String>,
    /// Message of the event appended in the same transaction.
    pub event: String,
    /// Its kind: [`EventKind::State`], or a person's command to a rollout
    /// ([`EventKind::CommandRequested`]) and its application ([`EventKind::CommandApplied`]).
    pub event_kind: EventKind,
    pub now_ms: i64,
    /// Notifications enqueued in the outbox in the same transaction (see [`notify::enqueue`]).
    pub notifications: Vec<ferry_core::notify::Notification>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnvRecord {
    pub app: String,
    pub env: String,
    pub current_version: Option<String>,
    pub deployment_id: Option<i64>,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaRecord {
    pub id: String,
    pub app: String,
    pub env: String,
    pub service: String,
    pub version: String,
    pub port: u16,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub draining: bool,
    pub deployment_id: Option<i64>,
    pub created_at_ms: i64,
}

// ---------------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------------

/// The migrations, embedded: the same versions/descriptions `sqlx::migrate!` would produce for
/// `migrations/` (file `NNNN_description.sql`), without needing sqlx's proc-macro feature. A
/// test checks that every file of the folder is listed here. They are written for SQLite in
/// portable SQL; PostgreSQL runs them through [`postgres_sql`].
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "identity",
        include_str!("../migrations/0002_identity.sql"),
    ),
    (
        3,
        "approvals",
        include_str!("../migrations/0003_approvals.sql"),
    ),
    (4, "secrets", include_str!("../migrations/0004_secrets.sql")),
    (
        5,
        "releases",
        include_str!("../migrations/0005_releases.sql"),
    ),
    (6, "hooks", include_str!("../migrations/0006_hooks.sql")),
    (7, "config", include_str!("../migrations/0007_config.sql")),
    (8, "gates", include_str!("../migrations/0008_gates.sql")),
    (9, "flags", include_str!("../migrations/0009_flags.sql")),
    (
        11,
        "notifications",
        include_str!("../migrations/0011_notifications.sql"),
    ),
    (12, "alerts", include_str!("../migrations/0012_alerts.sql")),
    (13, "dora", include_str!("../migrations/0013_dora.sql")),
    (
        14,
        "flag guards",
        include_str!("../migrations/0014_flag_guards.sql"),
    ),
    (
        15,
        "login links",
        include_str!("../migrations/0015_login_links.sql"),
    ),
    // console:
    (
        16,
        "deployment series",
        include_str!("../migrations/0016_deployment_series.sql"),
    ),
    (
        17,
        "alert incidents",
        include_str!("../migrations/0017_alert_incidents.sql"),
    ),
    (
        18,
        "notification retention",
        include_str!("../migrations/0018_notification_retention.sql"),
    ),
    (
        19,
        "infra retry",
        include_str!("../migrations/0019_infra_retry.sql"),
    ),
    (20, "leases", include_str!("../migrations/0020_leases.sql")),
    (
        21,
        "lease instance",
        include_str!("../migrations/0021_lease_instance.sql"),
    ),
    (
        22,
        "live views",
        include_str!("../migrations/0022_live_views.sql"),
    ),
];

/// The migration files this build embeds (`(version, description)`), for tests.
#[doc(hidden)]
pub fn embedded_migrations() -> Vec<(i64, &'static str)> {
    MIGRATIONS.iter().map(|(v, d, _)| (*v, *d)).collect()
}

/// A migration's SQL for PostgreSQL: the only differences the portable schema needs are its
/// integer types — every `INTEGER` is a `BIGINT` there (the store reads all integers as
/// i64), and SQLite's auto-increment ids are identity columns.
fn postgres_sql(sqlite: &str) -> String {
    sqlite
        .replace(
            "INTEGER PRIMARY KEY AUTOINCREMENT",
            "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        )
        .replace("INTEGER", "BIGINT")
}

fn migrator_for(backend: &str) -> Result<Migrator> {
    let postgres =
        backend.eq_ignore_ascii_case("postgresql") || backend.eq_ignore_ascii_case("postgres");
    if !postgres && !backend.eq_ignore_ascii_case("sqlite") {
        return Err(StoreError::Database(
            "choosing migrations".into(),
            sqlx::Error::Configuration(format!("no migrations for database {backend:?}").into()),
        ));
    }
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            let sql = if postgres {
                AssertSqlSafe(postgres_sql(sql)).into_sql_str()
            } else {
                sql.into_sql_str()
            };
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql,
                false,
            )
        })
        .collect();
    Ok(Migrator::with_migrations(migrations))
}

// ---------------------------------------------------------------------------------------------
// SQL
// ---------------------------------------------------------------------------------------------

macro_rules! deployment_cols {
    () => {
        "id, app, env, version, previous_version, kind, strategy, state, reason, requested_by, \
         manifest_revision, phase, row_version, created_at_ms, updated_at_ms, finished_at_ms, \
         infra_failing_since_ms"
    };
}

macro_rules! replica_cols {
    () => {
        "id, app, env, service, version, port, pid, start_time, draining, deployment_id, \
         created_at_ms"
    };
}

// What a controller pass reads once (declared after the column macros it uses).
mod pass;
pub use pass::{AppRevision, EnvState};

fn get<'r, T>(row: &'r AnyRow, col: &str, what: &dyn Fn() -> String) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get::<T, _>(col)
        .map_err(|e| StoreError::Corrupt(format!("{}: column {col}: {e}", what())))
}

fn deployment_from_row(row: &AnyRow) -> Result<DeploymentRecord> {
    let id: i64 = get(row, "id", &|| "deployments row".to_string())?;
    let what = move || format!("deployment {id}");
    let state_text: String = get(row, "state", &what)?;
    let state = state_text
        .parse::<DeploymentState>()
        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: state: {e}")))?;
    let kind_text: String = get(row, "kind", &what)?;
    let kind = kind_text
        .parse::<DeploymentKind>()
        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: kind: {e}")))?;
    let phase_text: String = get(row, "phase", &what)?;
    let phase = serde_json::from_str(&phase_text)
        .map_err(|e| StoreError::Corrupt(format!("deployment {id}: phase: {e}")))?;
    Ok(DeploymentRecord {
        id,
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        version: get(row, "version", &what)?,
        previous_version: get(row, "previous_version", &what)?,
        kind,
        strategy: get(row, "strategy", &what)?,
        state,
        reason: get(row, "reason", &what)?,
        requested_by: get(row, "requested_by", &what)?,
        manifest_revision: get(row, "manifest_revision", &what)?,
        phase,
        row_version: get(row, "row_version", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
        finished_at_ms: get(row, "finished_at_ms", &what)?,
        infra_failing_since_ms: get(row, "infra_failing_since_ms", &what)?,
    })
}

fn replica_from_row(row: &AnyRow) -> Result<ReplicaRecord> {
    let id: String = get(row, "id", &|| "replicas row".to_string())?;
    let what = || format!("replica {id}");
    let port: i64 = get(row, "port", &what)?;
    let port = u16::try_from(port)
        .map_err(|_| StoreError::Corrupt(format!("replica {id}: port {port} out of range")))?;
    let pid: Option<i64> = get(row, "pid", &what)?;
    let pid = pid
        .map(u32::try_from)
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("replica {id}: pid out of range")))?;
    let start_time: Option<i64> = get(row, "start_time", &what)?;
    let draining: i64 = get(row, "draining", &what)?;
    Ok(ReplicaRecord {
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        service: get(row, "service", &what)?,
        version: get(row, "version", &what)?,
        port,
        pid,
        // u64 stored bit-for-bit as i64
        start_time: start_time.map(|t| t as u64),
        draining: draining != 0,
        deployment_id: get(row, "deployment_id", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        id,
    })
}

fn env_from_row(row: &AnyRow) -> Result<EnvRecord> {
    let app: String = get(row, "app", &|| "environments row".to_string())?;
    let env: String = get(row, "env", &|| format!("environment of {app}"))?;
    let what = || format!("environment {app}/{env}");
    Ok(EnvRecord {
        current_version: get(row, "current_version", &what)?,
        deployment_id: get(row, "deployment_id", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
        app: app.clone(),
        env: env.clone(),
    })
}

fn app_from_row(row: &AnyRow) -> Result<AppRecord> {
    let name: String = get(row, "name", &|| "apps row".to_string())?;
    let what = || format!("app {name}");
    Ok(AppRecord {
        revision: get(row, "revision", &what)?,
        yaml: get(row, "yaml", &what)?,
        manifest_json: get(row, "manifest_json", &what)?,
        base_dir: get(row, "base_dir", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
        name: name.clone(),
    })
}

/// `sqlite:` URLs with `:memory:` or `mode=memory` give each connection its own database.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// Percent-encodes what SQLite URL parsing would otherwise misread in a file path.
fn sqlite_url_for(path: &Path) -> Result<String> {
    let text = path.to_str().ok_or_else(|| {
        StoreError::Database(
            format!("opening {}", path.display()),
            sqlx::Error::Configuration("database path is not valid UTF-8".into()),
        )
    })?;
    let mut url = String::from("sqlite://");
    for c in text.chars() {
        match c {
            '%' => url.push_str("%25"),
            '?' => url.push_str("%3F"),
            '#' => url.push_str("%23"),
            c => url.push(c),
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

/// Handle on Ferry's database; cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Signalled after a commit that enqueued notifications (see [`Store::outbox_signal`]).
    outbox: Arc<tokio::sync::Notify>,
    /// leader: PostgreSQL's URL (for the wake-up listener); `None` on SQLite.
    postgres: Option<lease::PostgresUrl>,
    /// leader: the lease deployment transitions are fenced with ([`Store::set_fence`]).
    fence: Arc<std::sync::RwLock<Option<Fence>>>,
}

impl Store {
    /// Opens (creating with `mode=rwc`) the database at `url` and applies pending migrations.
    /// e.g. `sqlite:///abs/path/ferry.db?mode=rwc`. SQLite connections get WAL journaling,
    /// `synchronous=NORMAL`, foreign keys and a 5 s busy timeout.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let in_memory = is_in_memory(url);
        let mut options = AnyPoolOptions::new()
            .max_connections(if in_memory { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
                        for pragma in [
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA foreign_keys = ON",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        if in_memory {
            // the only connection holds the whole database: never let it go
            options = options
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        let pool = options
            .connect(url)
            .await
            .ctx(|| format!("connecting to {}", redact(url)))?;

        let mut conn = pool
            .acquire()
            .await
            .ctx(|| "acquiring a connection".into())?;
        let backend = conn.backend_name().to_string();
        let migrator = migrator_for(&backend)?;
        migrator
            .run(&mut *conn)
            .await
            .map_err(|e| StoreError::Database("running migrations".into(), e.into()))?;
        drop(conn);
        tracing::debug!(backend, "store opened and migrated");
        let postgres = (backend.eq_ignore_ascii_case("postgresql")
            || backend.eq_ignore_ascii_case("postgres"))
        .then(|| lease::PostgresUrl(url.to_string()));
        Ok(Store {
            pool,
            outbox: Arc::default(),
            postgres,
            fence: Arc::default(),
        })
    }

    /// Opens (creating if needed) a SQLite database file.
    pub async fn open_sqlite_file(path: &Path) -> Result<Store> {
        Store::open(&sqlite_url_for(path)?).await
    }

    /// The underlying pool (for diagnostics and tests, e.g. `PRAGMA journal_mode`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // -- apps and manifest revisions ----------------------------------------------------------

    /// Records a manifest: a new revision only when yaml or JSON differ from the latest one.
    /// Returns the app's latest revision either way.
    pub async fn apply_manifest(&self, m: NewManifest) -> Result<AppRecord> {
        let op = || format!("applying the manifest of app {}", m.app);
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: takes the write lock (SQLite) / the row lock (PostgreSQL)
        sqlx::query(
            "INSERT INTO apps (name, revision, created_at_ms, updated_at_ms) \
             VALUES ($1, 0, $2, $2) \
             ON CONFLICT (name) DO UPDATE SET revision = apps.revision",
        )
        .bind(&m.app)
        .bind(m.now_ms)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        let latest = sqlx::query(
            "SELECT a.revision, m.yaml, m.manifest_json FROM apps a \
             LEFT JOIN manifest_revisions m ON m.app = a.name AND m.revision = a.revision \
             WHERE a.name = $1",
        )
        .bind(&m.app)
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        let what = || format!("app {}", m.app);
        let revision: i64 = get(&latest, "revision", &what)?;
        let yaml: Option<String> = get(&latest, "yaml", &what)?;
        let json: Option<String> = get(&latest, "manifest_json", &what)?;
        let unchanged = revision > 0
            && yaml.as_deref() == Some(m.yaml.as_str())
            && json.as_deref() == Some(m.manifest_json.as_str());
        if !unchanged {
            let next = revision + 1;
            sqlx::query(
                "INSERT INTO manifest_revisions \
                 (app, revision, yaml, manifest_json, base_dir, applied_by, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&m.app)
            .bind(next)
            .bind(&m.yaml)
            .bind(&m.manifest_json)
            .bind(m.base_dir.as_deref())
            .bind(&m.applied_by)
            .bind(m.now_ms)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
            sqlx::query("UPDATE apps SET revision = $1, updated_at_ms = $2 WHERE name = $3")
                .bind(next)
                .bind(m.now_ms)
                .bind(&m.app)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            tracing::info!(app = %m.app, revision = next, "manifest revision recorded");
        }
        let row = sqlx::query(concat!(
            "SELECT a.name, a.revision, m.yaml, m.manifest_json, m.base_dir, a.updated_at_ms ",
            "FROM apps a JOIN manifest_revisions m ON m.app = a.name AND m.revision = a.revision ",
            "WHERE a.name = $1"
        ))
        .bind(&m.app)
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        let record = app_from_row(&row)?;
        tx.commit().await.ctx(op)?;
        Ok(record)
    }

    pub async fn get_app(&self, app: &str) -> Result<Option<AppRecord>> {
        let row = sqlx::query(concat!(
            "SELECT a.name, a.revision, m.yaml, m.manifest_json, m.base_dir, a.updated_at_ms ",
            "FROM apps a JOIN manifest_revisions m ON m.app = a.name AND m.revision = a.revision ",
            "WHERE a.name = $1"
        ))
        .bind(app)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading app {app}"))?;
        row.as_ref().map(app_from_row).transpose()
    }

    /// The app as it was at manifest `revision` (what a deployment requested with it runs);
    /// `None` if the app or that revision is unknown.
    pub async fn get_app_at(&self, app: &str, revision: i64) -> Result<Option<AppRecord>> {
        let row = sqlx::query(concat!(
            "SELECT a.name, m.revision AS revision, m.yaml, m.manifest_json, m.base_dir, ",
            "a.updated_at_ms ",
            "FROM apps a JOIN manifest_revisions m ON m.app = a.name ",
            "WHERE a.name = $1 AND m.revision = $2"
        ))
        .bind(app)
        .bind(revision)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading revision {revision} of app {app}"))?;
        row.as_ref().map(app_from_row).transpose()
    }

    /// All apps with their latest revision, by name.
    pub async fn list_apps(&self) -> Result<Vec<AppRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT a.name, a.revision, m.yaml, m.manifest_json, m.base_dir, a.updated_at_ms ",
            "FROM apps a JOIN manifest_revisions m ON m.app = a.name AND m.revision = a.revision ",
            "ORDER BY a.name"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing apps".into())?;
        rows.iter().map(app_from_row).collect()
    }

    /// Forgets what served `env` of `app` (its environment was removed from the manifest):
    /// adding it back later starts nothing until a deployment.
    pub async fn forget_environment(&self, app: &str, env: &str) -> Result<()> {
        sqlx::query("DELETE FROM environments WHERE app = $1 AND env = $2")
            .bind(app)
            .bind(env)
            .execute(&self.pool)
            .await
            .ctx(|| format!("forgetting environment {app}/{env}"))?;
        Ok(())
    }

    /// Forgets an app: its manifest revisions, what serves its environments and its
    /// secrets. Its deployments (with their timelines), releases, hook runs and audit
    /// records stay. Its replica rows stay too: the controller stops those replicas (they
    /// belong to no manifest any more). `false` if there was no such app.
    pub async fn delete_app(&self, app: &str) -> Result<bool> {
        let op = || format!("deleting app {app}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        let deleted = sqlx::query("DELETE FROM apps WHERE name = $1")
            .bind(app)
            .execute(&mut *tx)
            .await
            .ctx(op)?
            .rows_affected();
        for delete in [
            "DELETE FROM manifest_revisions WHERE app = $1",
            "DELETE FROM environments WHERE app = $1",
            "DELETE FROM secrets WHERE app = $1",
            // flags: (their change history stays, like deployments)
            "DELETE FROM flags WHERE app = $1",
            "DELETE FROM flag_envs WHERE app = $1",
            "DELETE FROM flag_tokens WHERE app = $1",
            "DELETE FROM flag_clients WHERE app = $1",
        ] {
            sqlx::query(delete)
                .bind(app)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
        }
        tx.commit().await.ctx(op)?;
        Ok(deleted > 0)
    }

    // -- releases -----------------------------------------------------------------------------

    /// Records release `version` of `app` unless it exists (idempotent).
    pub async fn ensure_release(&self, app: &str, version: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO releases (app, version, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (app, version) DO NOTHING",
        )
        .bind(app)
        .bind(version)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .ctx(|| format!("recording release {app} {version}"))?;
        Ok(())
    }

    // -- deployments --------------------------------------------------------------------------

    /// Creates a deployment in state `pending` with `row_version` 1 and its first event
    /// (`state`, "pending: KIND of VERSION requested by WHO").
    pub async fn create_deployment(&self, d: NewDeployment) -> Result<DeploymentRecord> {
        let op = || {
            format!(
                "creating a deployment of {} {} to {}",
                d.app, d.version, d.env
            )
        };
        let mut tx = self.pool.begin().await.ctx(op)?;
        let row = sqlx::query(concat!(
            "INSERT INTO deployments (app, env, version, previous_version, kind, strategy, ",
            "state, reason, requested_by, manifest_revision, phase, row_version, ",
            "created_at_ms, updated_at_ms, finished_at_ms) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8, $9, '{}', 1, $10, $10, NULL) ",
            "RETURNING ",
            deployment_cols!()
        ))
        .bind(&d.app)
        .bind(&d.env)
        .bind(&d.version)
        .bind(d.previous_version.as_deref())
        .bind(d.kind.as_str())
        .bind(&d.strategy)
        .bind(DeploymentState::Pending.as_str())
        .bind(&d.requested_by)
        .bind(d.manifest_revision)
        .bind(d.now_ms)
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        let record = deployment_from_row(&row)?;
        insert_event(
            &mut tx,
            record.id,
            EventKind::State,
            &format!(
                "{}: {} of {} requested by {}",
                DeploymentState::Pending,
                d.kind,
                d.version,
                d.requested_by
            ),
            d.now_ms,
        )
        .await?;
        if let Some(fix_of) = d.fix_of {
            let incident = NewIncident {
                deployment_id: fix_of,
                opened_at_ms: d.now_ms,
                fixed_by: Some(record.id),
                opened_by: d.requested_by.clone(),
            };
            dora::insert_incident(&mut tx, &incident).await?;
        }
        tx.commit().await.ctx(op)?;
        tracing::info!(id = record.id, app = %record.app, env = %record.env,
            version = %record.version, kind = %record.kind, "deployment created");
        Ok(record)
    }

    pub async fn get_deployment(&self, id: i64) -> Result<Option<DeploymentRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading deployment {id}"))?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Deployments of app/env, newest first, at most `limit`.
    pub async fn list_deployments(
        &self,
        app: &str,
        env: &str,
        limit: u32,
    ) -> Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE app = $1 AND env = $2 ORDER BY id DESC LIMIT $3"
        ))
        .bind(app)
        .bind(env)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("listing deployments of {app}/{env}"))?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// The newest deployment of app/env, whatever its state.
    pub async fn latest_deployment(
        &self,
        app: &str,
        env: &str,
    ) -> Result<Option<DeploymentRecord>> {
        Ok(self.list_deployments(app, env, 1).await?.into_iter().next())
    }

    /// The newest deployment of every app/env at once, whatever its state (the console's
    /// dashboard: one query instead of one per app × environment).
    pub async fn latest_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE id IN (SELECT MAX(id) FROM deployments GROUP BY app, env) ",
            "ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing the newest deployment of every environment".into())?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Deployments not in a terminal state, oldest first (what to resume after a crash).
    pub async fn active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE finished_at_ms IS NULL ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing active deployments".into())?;
        rows.iter().map(deployment_from_row).collect()
    }

    /// Compare-and-set transition, all in ONE transaction:
    /// - `Conflict` if the stored `row_version` isn't `expected_row_version`, or the deployment
    ///   is already terminal (terminal states never change); `NotFound` if it doesn't exist;
    /// - sets state, reason, phase, `updated_at`, `finished_at` (when the new state is
    ///   terminal) and bumps `row_version`;
    /// - with `set_current_version`, upserts the environment's current version and deployment;
    /// - appends the event (`state`, `t.event`).
    ///
    /// Nothing is written when it fails.
    pub async fn transition(&self, t: Transition) -> Result<DeploymentRecord> {
        let id = t.id;
        let op = || format!("transitioning deployment {id} to {}", t.state);
        let mut tx = self.pool.begin().await.ctx(op)?;
        let finished_at = t.state.is_terminal().then_some(t.now_ms);
        let row = sqlx::query(concat!(
            "UPDATE deployments SET state = $1, reason = $2, phase = $3, ",
            "row_version = row_version + 1, updated_at_ms = $4, finished_at_ms = $5 ",
            "WHERE id = $6 AND row_version = $7 AND finished_at_ms IS NULL ",
            "RETURNING ",
            deployment_cols!()
        ))
        .bind(t.state.as_str())
        .bind(t.reason.as_deref())
        .bind(t.phase.to_string())
        .bind(t.now_ms)
        .bind(finished_at)
        .bind(id)
        .bind(t.expected_row_version)
        .fetch_optional(&mut *tx)
        .await
        .ctx(op)?;
        let Some(row) = row else {
            let current = sqlx::query("SELECT row_version, state FROM deployments WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .ctx(op)?;
            drop(tx);
            let Some(current) = current else {
                return Err(StoreError::NotFound(format!("deployment {id}")));
            };
            let what = || format!("deployment {id}");
            let row_version: i64 = get(&current, "row_version", &what)?;
            let state: String = get(&current, "state", &what)?;
            return Err(if row_version != t.expected_row_version {
                StoreError::Conflict(format!(
                    "deployment {id} changed concurrently: row_version is {row_version}, \
                     expected {}",
                    t.expected_row_version
                ))
            } else {
                StoreError::Conflict(format!(
                    "deployment {id} is already {state} (terminal), cannot become {}",
                    t.state
                ))
            });
        };
        // leader: only while this server still holds its lease (when it set a fence).
        self.check_fence(&mut tx).await?;
        let record = deployment_from_row(&row)?;
        if let Some(version) = &t.set_current_version {
            sqlx::query(
                "INSERT INTO environments (app, env, current_version, deployment_id, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (app, env) DO UPDATE SET current_version = excluded.current_version, \
                 deployment_id = excluded.deployment_id, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(&record.app)
            .bind(&record.env)
            .bind(version)
            .bind(id)
            .bind(t.now_ms)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        }
        insert_event(&mut tx, id, t.event_kind, &t.event, t.now_ms).await?;
        for n in &t.notifications {
            notify::enqueue(&mut tx, n, t.now_ms).await?;
        }
        tx.commit().await.ctx(op)?;
        if !t.notifications.is_empty() {
            self.outbox_committed();
        }
        tracing::debug!(id, state = %record.state, row_version = record.row_version,
            "deployment transitioned");
        Ok(record)
    }

    /// Acting for deployment `id` failed on the store or the engine at `now`: when that
    /// began (kept across restarts, so a restart grants no new retry window). `true` when
    /// it began now.
    pub async fn infra_failing_since(&self, id: i64, now: i64) -> Result<(i64, bool)> {
        let op = || format!("recording an infrastructure failure of deployment {id}");
        let started = sqlx::query(
            "UPDATE deployments SET infra_failing_since_ms = $1 \
             WHERE id = $2 AND infra_failing_since_ms IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx(op)?
        .rows_affected()
            > 0;
        if started {
            return Ok((now, true));
        }
        let row = sqlx::query("SELECT infra_failing_since_ms FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ctx(op)?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id}")))?;
        let since: Option<i64> = get(&row, "infra_failing_since_ms", &|| {
            format!("deployment {id}")
        })?;
        Ok((since.unwrap_or(now), false))
    }

    /// Acting for deployment `id` works again (or its failure was judged): a later failure
    /// starts a new retry window.
    pub async fn infra_recovered(&self, id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE deployments SET infra_failing_since_ms = NULL \
             WHERE id = $1 AND infra_failing_since_ms IS NOT NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx(|| format!("clearing the infrastructure failure of deployment {id}"))?;
        Ok(())
    }

    /// For `rollback` without `--to`: the version of the newest *succeeded* deployment of
    /// app/env whose version differs from `current`.
    pub async fn previous_succeeded_version(
        &self,
        app: &str,
        env: &str,
        current: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT version FROM deployments \
             WHERE app = $1 AND env = $2 AND state = $3 AND version <> $4 \
             ORDER BY id DESC LIMIT 1",
        )
        .bind(app)
        .bind(env)
        .bind(DeploymentState::Succeeded.as_str())
        .bind(current)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("finding the previous succeeded version of {app}/{env}"))?;
        row.as_ref()
            .map(|r| get(r, "version", &|| format!("deployment of {app}/{env}")))
            .transpose()
    }

    /// The newest deployment of `version` in app/env that succeeded and was not a rollback:
    /// the change that put that version into service (an alert's incident on the stable
    /// version during a canary belongs to it).
    pub async fn last_succeeded_change(
        &self,
        app: &str,
        env: &str,
        version: &str,
    ) -> Result<Option<DeploymentRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            deployment_cols!(),
            " FROM deployments WHERE app = $1 AND env = $2 AND version = $3 AND state = $4 ",
            "AND kind <> $5 ORDER BY id DESC LIMIT 1"
        ))
        .bind(app)
        .bind(env)
        .bind(version)
        .bind(DeploymentState::Succeeded.as_str())
        .bind(DeploymentKind::Rollback.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("finding the last succeeded deployment of {version} in {app}/{env}"))?;
        row.as_ref().map(deployment_from_row).transpose()
    }

    /// Whether a deployment of `version` ever succeeded in app/env (promotion gates).
    pub async fn version_succeeded_in(&self, app: &str, env: &str, version: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT id FROM deployments \
             WHERE app = $1 AND env = $2 AND state = $3 AND version = $4 LIMIT 1",
        )
        .bind(app)
        .bind(env)
        .bind(DeploymentState::Succeeded.as_str())
        .bind(version)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("checking whether {version} succeeded in {app}/{env}"))?;
        Ok(row.is_some())
    }

    // -- environments -------------------------------------------------------------------------

    pub async fn env_current(&self, app: &str, env: &str) -> Result<Option<EnvRecord>> {
        let row = sqlx::query(
            "SELECT app, env, current_version, deployment_id, updated_at_ms FROM environments \
             WHERE app = $1 AND env = $2",
        )
        .bind(app)
        .bind(env)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading environment {app}/{env}"))?;
        row.as_ref().map(env_from_row).transpose()
    }

    // -- timeline -----------------------------------------------------------------------------

    /// Appends an event to a deployment's timeline; returns its `seq` (1, 2, …).
    /// `NotFound` if the deployment doesn't exist.
    pub async fn append_event(
        &self,
        deployment_id: i64,
        kind: EventKind,
        message: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let op = || format!("appending an event to deployment {deployment_id}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: locks the deployment row (PostgreSQL) / the database (SQLite) so the
        // max(seq)+1 below can't race; also tells whether the deployment exists
        let locked = sqlx::query("UPDATE deployments SET row_version = row_version WHERE id = $1")
            .bind(deployment_id)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        if locked.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployment {deployment_id}")));
        }
        let seq = insert_event(&mut tx, deployment_id, kind, message, now_ms).await?;
        tx.commit().await.ctx(op)?;
        Ok(seq)
    }

    /// Events of a deployment with `seq > after_seq`, in order, at most `limit`.
    pub async fn events_after(
        &self,
        deployment_id: i64,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<EventView>> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, kind, message FROM deployment_events \
             WHERE deployment_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(deployment_id)
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading events of deployment {deployment_id}"))?;
        rows.iter()
            .map(|row| {
                let what = || format!("event of deployment {deployment_id}");
                let kind: String = get(row, "kind", &what)?;
                Ok(EventView {
                    seq: get(row, "seq", &what)?,
                    at_ms: get(row, "at_ms", &what)?,
                    kind: kind
                        .parse()
                        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", what())))?,
                    message: get(row, "message", &what)?,
                })
            })
            .collect()
    }

    // -- replicas -----------------------------------------------------------------------------

    /// Records a replica. `Conflict` if the id exists.
    /// Fenced ([`Store::set_fence`]): a replica is started only by the leader.
    pub async fn insert_replica(&self, r: &ReplicaRecord) -> Result<()> {
        let op = || format!("recording replica {}", r.id);
        let mut tx = self.pool.begin().await.ctx(op)?;
        self.check_fence(&mut tx).await?;
        sqlx::query(concat!(
            "INSERT INTO replicas (",
            replica_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ))
        .bind(&r.id)
        .bind(&r.app)
        .bind(&r.env)
        .bind(&r.service)
        .bind(&r.version)
        .bind(i64::from(r.port))
        .bind(r.pid.map(i64::from))
        // u64 stored bit-for-bit as i64
        .bind(r.start_time.map(|t| t as i64))
        .bind(i64::from(r.draining))
        .bind(r.deployment_id)
        .bind(r.created_at_ms)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        Ok(())
    }

    /// Records the process of a replica (pid + start time to recognise it after a restart).
    pub async fn set_replica_process(&self, id: &str, pid: u32, start_time: u64) -> Result<()> {
        let done = sqlx::query("UPDATE replicas SET pid = $1, start_time = $2 WHERE id = $3")
            .bind(i64::from(pid))
            .bind(start_time as i64)
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx(|| format!("recording the process of replica {id}"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("replica {id}")));
        }
        Ok(())
    }

    /// Marks a replica as leaving: out of traffic, about to be stopped. Idempotent (keeps the
    /// first draining time).
    pub async fn set_replica_draining(&self, id: &str, now_ms: i64) -> Result<()> {
        let done = sqlx::query(
            "UPDATE replicas SET draining = 1, \
             draining_since_ms = COALESCE(draining_since_ms, $1) WHERE id = $2",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx(|| format!("marking replica {id} draining"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("replica {id}")));
        }
        Ok(())
    }

    /// Forgets a replica. Idempotent: deleting an unknown id is not an error.
    pub async fn delete_replica(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx(|| format!("deleting replica {id}"))?;
        Ok(())
    }

    /// Replicas, optionally only of an app and/or env; ordered by app, env, service,
    /// creation time, id.
    pub async fn list_replicas(
        &self,
        app: Option<&str>,
        env: Option<&str>,
    ) -> Result<Vec<ReplicaRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            replica_cols!(),
            " FROM replicas WHERE ($1 IS NULL OR app = $1) AND ($2 IS NULL OR env = $2) ",
            "ORDER BY app, env, service, created_at_ms, id"
        ))
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing replicas".into())?;
        rows.iter().map(replica_from_row).collect()
    }
}

/// Inserts an event with seq = max(seq)+1 for the deployment, inside the caller's transaction
/// (which must already hold the write lock on the deployment).
async fn insert_event(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    deployment_id: i64,
    kind: EventKind,
    message: &str,
    now_ms: i64,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO deployment_events (deployment_id, seq, at_ms, kind, message) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4 FROM deployment_events \
         WHERE deployment_id = $1 RETURNING seq",
    )
    .bind(deployment_id)
    .bind(now_ms)
    .bind(kind.as_str())
    .bind(message)
    .fetch_one(&mut **tx)
    .await
    .ctx(|| format!("appending an event to deployment {deployment_id}"))?;
    get(&row, "seq", &|| {
        format!("event of deployment {deployment_id}")
    })
}

/// Hides a password in a database URL before it goes into an error message.
/// `url` with any password replaced by `***` (for logs and messages).
pub fn redact(url: &str) -> Cow<'_, str> {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _password)) = creds.split_once(':')
    {
        return Cow::Owned(format!("{scheme}://{user}:***@{host}"));
    }
    Cow::Borrowed(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_and_redacted() {
        let url = sqlite_url_for(Path::new("/tmp/a b/f?#%.db")).unwrap();
        assert_eq!(url, "sqlite:///tmp/a b/f%3F%23%25.db?mode=rwc");
        assert_eq!(
            redact("postgres://ferry:secret@db:5432/ferry"),
            "postgres://ferry:***@db:5432/ferry"
        );
        assert_eq!(redact("sqlite:///x.db"), "sqlite:///x.db");
    }

    #[test]
    fn every_migration_file_is_embedded() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(i64, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| {
                let stem = n.trim_end_matches(".sql");
                let (v, d) = stem.split_once('_').unwrap();
                (v.parse().unwrap(), d.replace('_', " "))
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String)> = embedded_migrations()
            .into_iter()
            .map(|(v, d)| (v, d.to_string()))
            .collect();
        assert_eq!(files, embedded);
    }

    #[test]
    fn postgres_gets_bigint_columns_and_identity_ids() {
        assert_eq!(
            postgres_sql(
                "id INTEGER PRIMARY KEY AUTOINCREMENT,\n    draining INTEGER NOT NULL DEFAULT 0,\n    port BIGINT"
            ),
            "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,\n    draining BIGINT NOT NULL DEFAULT 0,\n    port BIGINT"
        );
    }
}
