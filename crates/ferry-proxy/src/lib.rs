//! Ferry's data plane: a small HTTP reverse proxy with exact weighted traffic splitting,
//! driven by whole route tables pushed over an authenticated local admin API.
//!
//! It runs as its own process (`ferry proxy`), remembers the last route table in its state
//! directory and serves it again after a restart, so apps keep serving when the control
//! plane is down.
//!
//! Files in `state_dir`:
//! - `admin.token`: bearer token of the admin API (created 0600 with 256 random bits, hex).
//! - `proxy.json`: `{"pid":u32,"admin_addr":"127.0.0.1:PORT","started_at_ms":i64}`, written
//!   once the admin listener is bound.
//! - `routes.json`: the last accepted [`routes::RouteTable`].
//!
//! Admin API (HTTP/1.1, JSON, `Authorization: Bearer <token>` except `/healthz`):
//! `GET /healthz`, `GET|PUT /v1/routes`, `GET /v1/stats` ([`stats::StatsSnapshot`]),
//! `GET /v1/endpoints/{ip:port}` ([`stats::EndpointUsage`]: whether a request can still
//! reach an upstream, whatever the current table), `GET /metrics` (OpenMetrics text).

pub mod routes;
pub mod stats;

mod access_log;
mod admin;
mod body;
mod dataplane;
mod flags;
mod metrics;
mod table;
mod tls;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Where the proxy keeps its files and where its admin API listens (loopback only).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub state_dir: PathBuf,
    pub admin_listen: SocketAddr,
}

/// Tunables of the data plane; [`run`] uses the defaults.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Time to wait for an upstream's response headers before answering 504, for routes
    /// without an `upstream_timeout_ms` of their own.
    pub upstream_timeout: Duration,
    /// Time to establish an upstream connection before ejecting the endpoint.
    pub connect_timeout: Duration,
    /// How long an endpoint that refused a connection is skipped.
    pub ejection: Duration,
    /// Request bodies up to this size are buffered so the request can be retried.
    pub max_buffered_body: usize,
    /// How long a removed listener (or the proxy at shutdown) waits for open connections
    /// (upgraded tunnels included, which are closed then).
    pub drain_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint and per worker thread.
    pub pool_max_idle_per_host: usize,
    /// Data-plane threads (single-threaded runtimes); default: one per CPU.
    pub workers: usize,
    /// A client connection must send its first byte, each request head (from its first
    /// byte, or from the end of the previous exchange on a keep-alive connection) and a
    /// buffered request body within this time, else it is closed (a stalled body gets
    /// 408). Env `FERRY_PROXY_HEADER_READ_TIMEOUT` for `ferry proxy`; default 30s.
    pub header_read_timeout: Duration,
    /// A client connection on which no byte moved either way, while none of its requests
    /// waits on an upstream, is closed after between one and two times this; so is an
    /// upgraded (WebSocket) tunnel. Env `FERRY_PROXY_IDLE_TIMEOUT`; default 75s.
    pub idle_timeout: Duration,
    /// How often the certificate files of TLS sites are checked for changes.
    pub cert_check_interval: Duration,
    /// Read the admin token from this file instead of `admin.token` in the state directory
    /// (a Kubernetes Secret); only then may the admin API listen beyond loopback.
    pub admin_token_file: Option<PathBuf>,
    /// The table to serve at start when the state directory has none (a ConfigMap the
    /// server keeps up to date), so a new pod routes before the server reaches it.
    pub seed_routes: Option<PathBuf>,
    /// Bind every listener on this address instead of the table's (a pod's own IP).
    pub listen_ip: Option<std::net::IpAddr>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(2),
            ejection: Duration::from_secs(5),
            max_buffered_body: 64 * 1024,
            drain_timeout: Duration::from_secs(30),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 1024,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            cert_check_interval: Duration::from_secs(2),
            admin_token_file: None,
            seed_routes: None,
            listen_ip: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("admin token file {path} is empty or unreadable")]
    BadToken { path: PathBuf },
    #[error(
        "admin API must listen on a loopback address, not {0} (unless its token comes from --admin-token-file)"
    )]
    AdminNotLoopback(SocketAddr),
    #[error("cannot bind admin API on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the proxy worker threads: {0}")]
    Workers(#[source] std::io::Error),
    #[error("proxy task failed: {0}")]
    Task(String),
}

/// A proxy started by [`start`].
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound admin address (useful with port 0).
    pub admin_addr: SocketAddr,
    pub token: String,
    /// Cancel to stop the proxy (listeners drain gracefully).
    pub shutdown: CancellationToken,
    /// Resolves once everything has stopped.
    pub handle: JoinHandle<()>,
}

/// Runs the proxy until `shutdown` is cancelled.
pub async fn run(config: ProxyConfig, shutdown: CancellationToken) -> Result<(), ProxyError> {
    run_with_options(config, ProxyOptions::default(), shutdown).await
}

/// [`run`] with explicit tunables.
pub async fn run_with_options(
    config: ProxyConfig,
    options: ProxyOptions,
    shutdown: CancellationToken,
) -> Result<(), ProxyError> {
    let running = start(config, options, shutdown).await?;
    running
        .handle
        .await
        .map_err(|e| ProxyError::Task(e.to_string()))
}

/// Starts the proxy in the background: restores `routes.json`, binds the admin API,
/// writes `proxy.json`, and returns once it accepts requests.
pub async fn start(
    config: ProxyConfig,
    options: ProxyOptions,
    shutdown: CancellationToken,
) -> Result<RunningProxy, ProxyError> {
    if !config.admin_listen.ip().is_loopback() && options.admin_token_file.is_none() {
        return Err(ProxyError::AdminNotLoopback(config.admin_listen));
    }
    let dir = &config.state_dir;
    let state_err = |source| ProxyError::StateDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(state_err)?;
    let token = match &options.admin_token_file {
        Some(path) => read_token_file(path)?,
        None => load_or_create_token(dir)?,
    };

    let shared = Arc::new(dataplane::Shared::new(options).map_err(ProxyError::Workers)?);
    let proxy = Arc::new(admin::Proxy::new(shared, token.clone(), dir.clone()));
    proxy.restore().await;

    let listener = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| ProxyError::AdminBind {
            addr: config.admin_listen,
            source,
        })?;
    let admin_addr = listener
        .local_addr()
        .map_err(|source| ProxyError::AdminBind {
            addr: config.admin_listen,
            source,
        })?;

    #[derive(Serialize)]
    struct ProxyInfo {
        pid: u32,
        admin_addr: String,
        started_at_ms: i64,
    }
    let info = ProxyInfo {
        pid: std::process::id(),
        admin_addr: admin_addr.to_string(),
        started_at_ms: table::now_ms(),
    };
    let info = serde_json::to_vec(&info).unwrap_or_default();
    admin::write_atomic(&dir.join("proxy.json"), &info).map_err(state_err)?;
    tracing::info!(%admin_addr, "ferry proxy admin API listening");

    tokio::spawn(proxy.clone().reap_idle_connections(shutdown.clone()));
    tokio::spawn(proxy.clone().reload_certificates(shutdown.clone()));
    let handle = tokio::spawn(admin::serve_admin(proxy, listener, shutdown.clone()));
    Ok(RunningProxy {
        admin_addr,
        token,
        shutdown,
        handle,
    })
}

/// Starts a proxy for tests: admin API on an ephemeral loopback port, short drains.
pub async fn spawn_for_test(state_dir: &Path) -> Result<RunningProxy, ProxyError> {
    spawn_for_test_with(
        state_dir,
        ProxyOptions {
            drain_timeout: Duration::from_secs(5),
            workers: 2,
            ..ProxyOptions::default()
        },
    )
    .await
}

/// [`spawn_for_test`] with explicit tunables.
pub async fn spawn_for_test_with(
    state_dir: &Path,
    options: ProxyOptions,
) -> Result<RunningProxy, ProxyError> {
    start(
        ProxyConfig {
            state_dir: state_dir.to_path_buf(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        },
        options,
        CancellationToken::new(),
    )
    .await
}

fn read_token_file(path: &Path) -> Result<String, ProxyError> {
    let bad = || ProxyError::BadToken {
        path: path.to_path_buf(),
    };
    let token = std::fs::read_to_string(path).map_err(|_| bad())?;
    let token = token.trim();
    if token.is_empty() || token.len() > 4096 {
        return Err(bad());
    }
    Ok(token.to_owned())
}

fn load_or_create_token(dir: &Path) -> Result<String, ProxyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Err(ProxyError::BadToken { path });
            }
            return Ok(t.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => return Err(ProxyError::BadToken { path }),
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ProxyError::StateDir {
            path: path.clone(),
            source,
        })?;
    f.write_all(token.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|source| ProxyError::StateDir { path, source })?;
    Ok(token)
}
