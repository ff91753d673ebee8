//! The Ferry server: HTTP API, authentication and the deployment controller, around the
//! store (state), the process runtime (replicas) and the proxy (a separate process fed
//! route tables over its local admin API).
//!
//! Data directory layout:
//! - `ferry.db`     SQLite state store (unless the state is in PostgreSQL: `database_url`)
//! - `admin.token`  the admin API token (mode 0600), created on first start
//! - `audit.key`    the key signing audit checkpoints (mode 0600), created on first start
//! - `secrets.key`  the master key of the secrets (mode 0600), created on first start unless
//!   `FERRY_MASTER_KEY_FILE` names the operator's own key file
//! - `proxy/`       the proxy's own state (its admin token, pid file, last route table)
//! - `logs/`        one log file per replica
//! - `hooks/`       captured hook output: `<deployment>/<phase>-<name>-<attempt>.log`
//!
//! The directory is 0700 and every file in it 0600 (the server sets umask 077 and fixes
//! the modes of what an older version left): workloads never run as the server's user when
//! it is root, and must not read its keys when it is not.

mod access;
// alerts:
mod alerts;
mod api;
mod apply;
// hooks:
mod api_hooks;
mod approvals;
mod audit;
mod auth;
mod clock;
// console:
mod console;
mod controller;
mod dora;
mod error;
// flags:
mod flags_api;
mod flags_guard;
// gates:
mod gates;
// hooks:
mod fleet;
#[cfg(feature = "kubernetes")]
mod fleet_kube;
mod hooks;
mod identity;
// leader: several servers, one leader
mod leader;
mod live;
mod logs;
mod notify;
mod notify_api;
mod progressive;
mod proxy_link;
mod runtimes;
mod secrets;
mod series;
mod traffic;
// alerts: replica CPU and memory
mod usage;
// releases:
mod promotion;
mod releases;
// config:
mod config;
mod workload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_runtime::ProcessRuntime;
use ferry_store::Store;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::ServerError;
pub use leader::{
    DEFAULT_TTL as DEFAULT_LEASE_TTL, DuplicateServerId, LeaderSettings, default_server_id,
};
pub use notify::Settings as NotifySettings;

/// Locks a mutex whose data stays valid even if a holder panicked (plain maps and sets).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Largest replica log kept on disk before the oldest half is dropped.
const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The `ferry` executable, started as `ferry proxy` for the data plane.
    pub ferry_exe: PathBuf,
    /// The store: a `postgres://` (or `sqlite://`) URL; `None` = `DATA_DIR/ferry.db`.
    pub database_url: Option<String>,
    /// Who workloads run as when the server runs as root and their environment has no
    /// `run_as` (`None`: `nobody`).
    pub run_as: Option<String>,
    /// The ports replicas and the proxy's admin API get (`--ports`; None: anywhere).
    pub ports: Option<ferry_runtime::PortRange>,
    /// The image of `traffic: proxy` environments' proxy pods when their manifest names
    /// none (`--proxy-image` / `$FERRY_PROXY_IMAGE`; None: Ferry's own, `ferry:VERSION`).
    pub proxy_image: Option<String>,
    /// The notification dispatcher's retry base and retention.
    pub notify: NotifySettings,
    /// This server's id among several sharing the database, and its lease's TTL.
    pub leader: LeaderSettings,
}

/// A running server. Dropping it leaves the proxy and replicas running.
pub struct Server {
    addr: SocketAddr,
    admin_token: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    controller: Arc<controller::Controller>,
    /// Set when this server stopped because it lost the leader lease.
    lost_lease: Arc<std::sync::atomic::AtomicBool>,
    /// Set when this server stopped because another live server uses its id.
    duplicate_id: Arc<std::sync::OnceLock<leader::DuplicateServerId>>,
}

/// Starts the control plane: opens the store, adopts or starts the proxy, re-adopts the
/// replicas of a previous run, resumes unfinished deployments and serves the API.
pub async fn start(config: ServerConfig) -> Result<Server, ServerError> {
    // Everything the server (and the proxy it starts) creates is private to its user.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        ServerError::io(
            format!("creating data directory {}", config.data_dir.display()),
            e,
        )
    })?;
    let data_dir = std::fs::canonicalize(&config.data_dir)
        .map_err(|e| ServerError::io(format!("resolving {}", config.data_dir.display()), e))?;
    make_private(&data_dir).map_err(|e| {
        ServerError::io(
            format!("restricting {} to 0700/0600", data_dir.display()),
            e,
        )
    })?;
    let workloads = Arc::new(
        workload::Workloads::new(config.run_as.clone(), Some(config.ferry_exe.clone()))
            .with_ports(config.ports),
    );
    let store = match &config.database_url {
        Some(url) => Store::open(url).await?,
        None => Store::open_sqlite_file(&data_dir.join("ferry.db")).await?,
    };
    let timing = config
        .leader
        .timing()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let admin_token = auth::ensure_admin_token(&store, &data_dir).await?;
    let audit_key = audit::load_or_create_key(&data_dir)?;
    let secrets = secrets::Secrets::open(store.clone(), &data_dir, master_key_file()).await?;
    auth::warm_up().await;

    // Bind first: a taken port must fail the start before anything is spawned.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::io(format!("binding the API on {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::io("reading the API address".to_string(), e))?;
    let shutdown = CancellationToken::new();
    // The proxy link exists once this server leads (leader.rs): a follower starts none.
    let proxy = Arc::new(leader::LeaderProxy::default());
    let process = ProcessRuntime::new(data_dir.join("logs"), MAX_LOG_BYTES);
    process.set_log_filter(config.ferry_exe.clone());
    let runtime = runtimes::Runtimes::new(process, data_dir.display().to_string());
    runtime.set_proxy_image(config.proxy_image.clone());
    // Each environment's listeners go to the local proxy or to its proxy pods.
    let planes = fleet::Planes::new(proxy.clone(), Arc::new(runtime.clone()));
    let controller = controller::Controller::new(
        store.clone(),
        runtime,
        Arc::new(planes),
        Arc::new(clock::SystemClock),
        secrets.clone(),
        workloads,
    );

    // Every server serves the API; what acts runs only while this server holds the
    // leader lease (leader.rs: `Work::start` is the list). Leading at once, the proxy and
    // the re-adoption are done before the API serves, as a single server always did.
    let status = leader::Leadership::status(&config.leader);
    controller.observe_as(status.clone());
    let lost_lease = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let duplicate_id = Arc::new(std::sync::OnceLock::new());
    let instance = leader::new_instance();
    tracing::info!(server = %config.leader.server_id, %instance, "this server's process");
    let leadership = leader::Leadership {
        store: store.clone(),
        settings: config.leader.clone(),
        instance,
        timing,
        status: status.clone(),
        work: leader::Work {
            store: store.clone(),
            controller: controller.clone(),
            proxy,
            ferry_exe: config.ferry_exe.clone(),
            proxy_dir: data_dir.join("proxy"),
            ports: config.ports,
            audit_key,
            secrets: secrets.clone(),
            notify: config.notify,
        },
        shutdown: shutdown.clone(),
        lost: lost_lease.clone(),
        duplicate: duplicate_id.clone(),
    };
    let mut tasks = vec![leadership.start().await?];

    let app = api::router(api::AppState {
        store,
        controller: Some(controller.clone()),
        secrets,
        shutdown: shutdown.clone(),
        gov: Arc::new(access::Governance::new(audit_key)),
        flags: Default::default(),
        leader: status,
    });
    let api_shutdown = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "API server stopped");
        }
    }));
    tracing::info!(%addr, data_dir = %data_dir.display(), "ferry server ready");
    Ok(Server {
        addr,
        admin_token,
        shutdown,
        tasks,
        controller,
        lost_lease,
        duplicate_id,
    })
}

/// The data directory 0700, and everything below it: directories 0700, files 0600 (what an
/// older version or another umask left). Symbolic links are not followed.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            let path = entry.path();
            if entry.metadata()?.permissions().mode() & 0o777 != 0o600 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

/// The operator's master key file (`FERRY_MASTER_KEY_FILE`), if given.
fn master_key_file() -> Option<PathBuf> {
    std::env::var_os(secrets::KEY_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_token(&self) -> String {
        self.admin_token.clone()
    }

    /// Stops the control plane only: the proxy and the replicas keep serving.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Stops every replica and the proxy, then the control plane.
    pub async fn teardown(self) {
        self.controller.teardown().await;
        self.stop().await;
    }

    /// Resolves when the server was asked to stop through the API (`POST /v1/teardown`),
    /// or stopped acting because it lost the leader lease ([`Server::lost_lease`]) or found
    /// another live server with its id ([`Server::duplicate_id`]).
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await
    }

    /// Whether the server stopped because it lost the leader lease (another server leads
    /// now); its supervisor should start it again, as a follower.
    pub fn lost_lease(&self) -> bool {
        self.lost_lease.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Set when the server stopped because another live server uses its `--server-id`.
    pub fn duplicate_id(&self) -> Option<&leader::DuplicateServerId> {
        self.duplicate_id.get()
    }
}

/// The HTTP API without the deployment controller or the proxy: identity, roles, tokens,
/// audit and the stored history answer; routes that drive deployments answer 503 once the
/// caller passed authentication and authorisation. Built for in-process tests (with
/// `tower::ServiceExt::oneshot`) and tools. Requests should carry
/// `axum::extract::ConnectInfo<SocketAddr>` in their extensions for source addresses.
pub struct ApiOnly {
    router: axum::Router,
    admin_token: String,
    store: Store,
    audit_key: [u8; 32],
}

impl ApiOnly {
    /// Uses `data_dir` for `admin.token` and `audit.key` (created when missing).
    pub async fn open(store: Store, data_dir: &Path) -> Result<ApiOnly, ServerError> {
        let admin_token = auth::ensure_admin_token(&store, data_dir).await?;
        let audit_key = audit::load_or_create_key(data_dir)?;
        let secrets = secrets::Secrets::open(store.clone(), data_dir, master_key_file()).await?;
        let router = api::router(api::AppState {
            store: store.clone(),
            controller: None,
            secrets,
            shutdown: CancellationToken::new(),
            gov: Arc::new(access::Governance::new(audit_key)),
            flags: Default::default(),
            leader: Default::default(),
        });
        Ok(ApiOnly {
            router,
            admin_token,
            store,
            audit_key,
        })
    }

    pub fn router(&self) -> axum::Router {
        self.router.clone()
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Writes a signed audit checkpoint now if the chain grew since the last one (what the
    /// server's background task does every minute); returns whether it wrote one.
    pub async fn checkpoint(&self) -> Result<bool, ServerError> {
        Ok(audit::checkpoint_now(&self.store, &self.audit_key)
            .await?
            .is_some())
    }
}
