//! The control plane's side of the data plane: starts `ferry proxy` as a separate process
//! (or adopts the one a previous server left running), pushes route tables to it, reads
//! its metrics, and restarts it if it dies. The proxy keeps serving its last table when
//! the server is gone.
//!
//! The controller speaks to the data plane through [`DataPlane`] only, so its tests can put
//! a fake in the proxy's place (one that records route tables and reports drains).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_proxy::routes::RouteTable;
use ferry_proxy::stats::{EndpointUsage, StatsSnapshot};
use ferry_runtime::BoxFuture;
use serde::Deserialize;

use crate::clock::now_ms;
use crate::error::ServerError;
use crate::lock;

/// Failed health checks (one a second) before a live but silent proxy is replaced.
const MAX_MISSED_CHECKS: u32 = 5;

/// How long a freshly started proxy may take to write its pid file.
const START_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
struct PidFile {
    pid: u32,
    admin_addr: String,
}

#[derive(Debug, Clone)]
struct Endpoint {
    pid: u32,
    base_url: String,
    token: String,
}

/// What the controller asks of the data plane. Object safe (`Arc<dyn DataPlane>`).
pub trait DataPlane: Send + Sync + 'static {
    /// Checks that the data plane answers, restarting it if it died.
    fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>>;
    /// The last route table the data plane accepted.
    fn acknowledged(&self) -> Option<RouteTable>;
    /// Sends `table` unless the data plane already has it. Returns whether anything was sent.
    fn push(&self, table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>>;
    /// The cumulative counters per (listener, service, version).
    fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>>;
    /// Whether a request can still reach `addr` (listed in a table a request holds, or in
    /// flight).
    fn endpoint_usage(&self, addr: SocketAddr)
    -> BoxFuture<'_, Result<EndpointUsage, ServerError>>;
    /// Prometheus text, re-exported on the server's `/metrics`.
    fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>>;
    /// Stops the data plane (teardown only).
    fn stop(&self) -> BoxFuture<'_, ()>;
}

impl DataPlane for ProxyLink {
    fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        Box::pin(ProxyLink::ensure_alive(self))
    }

    fn acknowledged(&self) -> Option<RouteTable> {
        ProxyLink::acknowledged(self)
    }

    fn push(&self, table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>> {
        Box::pin(ProxyLink::push(self, table))
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>> {
        Box::pin(ProxyLink::stats(self))
    }

    fn endpoint_usage(
        &self,
        addr: SocketAddr,
    ) -> BoxFuture<'_, Result<EndpointUsage, ServerError>> {
        Box::pin(ProxyLink::endpoint_usage(self, addr))
    }

    fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>> {
        Box::pin(ProxyLink::metrics_text(self))
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(ProxyLink::stop(self))
    }
}

pub struct ProxyLink {
    ferry_exe: PathBuf,
    state_dir: PathBuf,
    /// The operator's port range (`--ports`), for the admin port of a restarted proxy.
    ports: Option<ferry_runtime::PortRange>,
    endpoint: Mutex<Endpoint>,
    /// Last table the proxy accepted: pushes of an equal table are skipped.
    last_pushed: Mutex<Option<RouteTable>>,
    /// Consecutive failed health checks of a proxy whose process still exists.
    missed_checks: AtomicU32,
    http: reqwest::Client,
}

impl ProxyLink {
    pub async fn adopt_or_start(
        ferry_exe: &Path,
        state_dir: &Path,
        ports: Option<ferry_runtime::PortRange>,
    ) -> Result<ProxyLink, ServerError> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| ServerError::io(format!("creating {}", state_dir.display()), e))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ServerError::Proxy(format!("building HTTP client: {e}")))?;
        let endpoint = match read_endpoint(state_dir) {
            Some(existing) if healthy(&http, &existing).await => {
                tracing::info!(pid = existing.pid, "adopted the running proxy");
                existing
            }
            _ => start_proxy(ferry_exe, state_dir, ports, &http).await?,
        };
        let link = ProxyLink {
            ferry_exe: ferry_exe.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            ports,
            endpoint: Mutex::new(endpoint),
            last_pushed: Mutex::new(None),
            missed_checks: AtomicU32::new(0),
            http,
        };
        let current = link.current_routes().await?;
        *lock(&link.last_pushed) = current;
        Ok(link)
    }

    fn endpoint(&self) -> Endpoint {
        lock(&self.endpoint).clone()
    }

    /// Restarts the proxy if it stopped answering; it reloads its last table from disk.
    pub async fn ensure_alive(&self) -> Result<(), ServerError> {
        let endpoint = self.endpoint();
        if healthy(&self.http, &endpoint).await {
            self.missed_checks.store(0, Ordering::Relaxed);
            return Ok(());
        }
        // A live but slow proxy (a loaded machine) is given a few more checks; a second
        // proxy beside it could not take over its listeners anyway.
        let identity = ferry_runtime::process_identity(endpoint.pid);
        let missed = self.missed_checks.fetch_add(1, Ordering::Relaxed) + 1;
        if identity.is_some() && missed < MAX_MISSED_CHECKS {
            tracing::warn!(
                pid = endpoint.pid,
                missed,
                "proxy is slow to answer its health check"
            );
            return Ok(());
        }
        tracing::warn!(pid = endpoint.pid, "proxy is not answering; replacing it");
        if let Some(identity) = identity {
            ferry_runtime::kill_process_group(&identity, Duration::from_secs(5)).await;
        }
        self.missed_checks.store(0, Ordering::Relaxed);
        let fresh = start_proxy(&self.ferry_exe, &self.state_dir, self.ports, &self.http).await?;
        *lock(&self.endpoint) = fresh;
        Ok(())
    }

    async fn current_routes(&self) -> Result<Option<RouteTable>, ServerError> {
        let endpoint = self.endpoint();
        let response = self
            .http
            .get(format!("{}/v1/routes", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .map_err(|e| ServerError::Proxy(format!("reading routes: {e}")))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        Ok(response.json::<RouteTable>().await.ok())
    }

    /// The last table the proxy accepted.
    pub fn acknowledged(&self) -> Option<RouteTable> {
        lock(&self.last_pushed).clone()
    }

    /// Sends `table` unless the proxy already has it. Returns whether anything was sent.
    pub async fn push(&self, mut table: RouteTable) -> Result<bool, ServerError> {
        let previous = lock(&self.last_pushed).clone();
        if let Some(previous) = &previous
            && previous.listeners == table.listeners
        {
            return Ok(false);
        }
        let previous_generation = previous.map(|t| t.generation).unwrap_or(0);
        table.generation = (previous_generation + 1).max(u64::try_from(now_ms()).unwrap_or(0));
        let endpoint = self.endpoint();
        let response = self
            .http
            .put(format!("{}/v1/routes", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .json(&table)
            .send()
            .await
            .map_err(|e| ServerError::Proxy(format!("pushing routes: {e}")))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(ServerError::Proxy(format!(
                "proxy refused the route table ({status}): {}",
                body.trim()
            )));
        }
        *lock(&self.last_pushed) = Some(table);
        Ok(true)
    }

    pub async fn stats(&self) -> Result<StatsSnapshot, ServerError> {
        let endpoint = self.endpoint();
        self.http
            .get(format!("{}/v1/stats", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .map_err(|e| ServerError::Proxy(format!("reading stats: {e}")))?
            .json::<StatsSnapshot>()
            .await
            .map_err(|e| ServerError::Proxy(format!("decoding stats: {e}")))
    }

    /// Whether a request can still reach `addr` through the proxy (listed in a table a
    /// request holds, or in flight), whatever the current table says.
    pub async fn endpoint_usage(&self, addr: SocketAddr) -> Result<EndpointUsage, ServerError> {
        let endpoint = self.endpoint();
        let response = self
            .http
            .get(format!("{}/v1/endpoints/{addr}", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| ServerError::Proxy(format!("reading the drain of {addr}: {e}")))?;
        if !response.status().is_success() {
            return Err(ServerError::Proxy(format!(
                "reading the drain of {addr}: the proxy answered {}",
                response.status()
            )));
        }
        response
            .json::<EndpointUsage>()
            .await
            .map_err(|e| ServerError::Proxy(format!("decoding the drain of {addr}: {e}")))
    }

    /// The proxy's Prometheus text, re-exported on the server's `/metrics`.
    pub async fn metrics_text(&self) -> Result<String, ServerError> {
        let endpoint = self.endpoint();
        self.http
            .get(format!("{}/metrics", endpoint.base_url))
            .bearer_auth(&endpoint.token)
            .send()
            .await
            .map_err(|e| ServerError::Proxy(format!("reading metrics: {e}")))?
            .text()
            .await
            .map_err(|e| ServerError::Proxy(format!("reading metrics: {e}")))
    }

    /// Stops the proxy process (teardown only).
    pub async fn stop(&self) {
        let pid = self.endpoint().pid;
        if let Some(identity) = ferry_runtime::process_identity(pid) {
            ferry_runtime::kill_process_group(&identity, Duration::from_secs(10)).await;
        }
        let _ = std::fs::remove_file(self.state_dir.join("proxy.json"));
    }
}

fn read_endpoint(state_dir: &Path) -> Option<Endpoint> {
    let pid_file: PidFile =
        serde_json::from_str(&std::fs::read_to_string(state_dir.join("proxy.json")).ok()?).ok()?;
    let token = std::fs::read_to_string(state_dir.join("admin.token"))
        .ok()?
        .trim()
        .to_string();
    Some(Endpoint {
        pid: pid_file.pid,
        base_url: format!("http://{}", pid_file.admin_addr),
        token,
    })
}

async fn healthy(http: &reqwest::Client, endpoint: &Endpoint) -> bool {
    ferry_runtime::process_identity(endpoint.pid).is_some()
        && http
            .get(format!("{}/healthz", endpoint.base_url))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
}

async fn start_proxy(
    ferry_exe: &Path,
    state_dir: &Path,
    ports: Option<ferry_runtime::PortRange>,
    http: &reqwest::Client,
) -> Result<Endpoint, ServerError> {
    // The admin API: in the operator's port range if one was given, else anywhere.
    let admin_port = match ports {
        Some(_) => ferry_runtime::free_port_in(ports)
            .map_err(|e| ServerError::Proxy(format!("choosing the proxy's admin port: {e}")))?,
        None => 0,
    };
    let log_path = state_dir.join("proxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| ServerError::io(format!("opening {}", log_path.display()), e))?;
    let log_err = log
        .try_clone()
        .map_err(|e| ServerError::io(format!("opening {}", log_path.display()), e))?;
    let _ = std::fs::remove_file(state_dir.join("proxy.json"));
    // Nothing of the server's environment (its database URL, say) but the minimal set and
    // the log filter.
    let mut env = ferry_runtime::isolation::base_env(None);
    if let Ok(filter) = std::env::var("RUST_LOG") {
        env.insert("RUST_LOG".into(), filter);
    }
    let mut child = tokio::process::Command::new(ferry_exe)
        .env_clear()
        .envs(env)
        .arg("proxy")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin_port}"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C aimed at the server must not stop the traffic.
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(|e| {
            ServerError::io(
                format!("starting the proxy ({} proxy)", ferry_exe.display()),
                e,
            )
        })?;
    let pid = child.id().unwrap_or(0);
    // Reap it when it exits, so it never lingers as a zombie while we live.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Some(endpoint) = read_endpoint(state_dir).filter(|e| e.pid == pid)
            && healthy(http, &endpoint).await
        {
            tracing::info!(pid, admin = %endpoint.base_url, "proxy started");
            return Ok(endpoint);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(ServerError::Proxy(format!(
                "the proxy (pid {pid}) did not come up within {}s; see {}",
                START_TIMEOUT.as_secs(),
                log_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
