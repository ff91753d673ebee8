//! The authenticated local admin API and the listener set it manages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLogs;
use crate::dataplane::{ListenerCtx, Shared, spawn_listener};
use crate::metrics::{MetricsCollector, StatsRegistry};
use crate::routes::{ListenerConfig, RouteTable};
use crate::stats::StatsSnapshot;
use crate::table::{AddrTable, EndpointRegistry, now_ms};
use crate::tls::{self, CertCache, SniMap};

const MAX_ADMIN_BODY: usize = 16 * 1024 * 1024;

struct ListenerHandle {
    ctx: Arc<ListenerCtx>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    listeners: HashMap<SocketAddr, ListenerHandle>,
    draining: Vec<JoinHandle<()>>,
}

pub(crate) struct Proxy {
    shared: Arc<Shared>,
    stats: Arc<StatsRegistry>,
    endpoints: EndpointRegistry,
    certs: CertCache,
    access_logs: AccessLogs,
    registry: Registry,
    table: ArcSwap<RouteTable>,
    state: tokio::sync::Mutex<State>,
    token: String,
    state_dir: PathBuf,
    started_at_ms: i64,
}

#[derive(Debug)]
pub(crate) struct AdminError {
    status: StatusCode,
    message: String,
}

impl AdminError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What a listening address does about TLS after a table change.
enum TlsPlan {
    Plain,
    Certs(SniMap),
    /// The new certificates did not load: keep what it has.
    Keep,
}

/// Answer of `PUT /v1/routes`.
#[derive(Serialize)]
pub(crate) struct Applied {
    pub generation: u64,
    /// Problems that did not stop the table (e.g. a certificate file that does not load).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Writes `contents` to `path` via a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

impl Proxy {
    pub fn new(shared: Arc<Shared>, token: String, state_dir: PathBuf) -> Self {
        let stats = Arc::new(StatsRegistry::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(MetricsCollector(stats.clone())));
        let endpoints = EndpointRegistry::new(
            shared.opts.workers.max(1),
            shared.opts.pool_max_idle_per_host,
        );
        Self {
            shared,
            stats,
            endpoints,
            certs: CertCache::default(),
            access_logs: AccessLogs::default(),
            registry,
            table: ArcSwap::from_pointee(RouteTable::default()),
            state: tokio::sync::Mutex::new(State::default()),
            token,
            state_dir,
            started_at_ms: now_ms(),
        }
    }

    /// Closes expired or upstream-closed idle upstream connections now and then.
    pub async fn reap_idle_connections(self: Arc<Self>, shutdown: CancellationToken) {
        let timeout = self.shared.opts.pool_idle_timeout;
        let period = (timeout / 2).clamp(
            std::time::Duration::from_millis(100),
            std::time::Duration::from_secs(5),
        );
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let left = self.endpoints.reap_idle(timeout);
            tracing::trace!(idle = left, "reaped idle upstream connections");
        }
    }

    fn routes_path(&self) -> PathBuf {
        self.state_dir.join("routes.json")
    }

    /// Loads `routes.json` if present and serves it. Listeners that cannot be bound are
    /// logged and retried by the next PUT.
    pub async fn restore(&self) {
        let mut path = self.routes_path();
        if !path.exists()
            && let Some(seed) = &self.shared.opts.seed_routes
        {
            path = seed.clone();
        }
        let data = match tokio::fs::read(&path).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read saved routes");
                return;
            }
        };
        let table: RouteTable = match serde_json::from_slice(&data) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "saved routes are invalid; starting empty");
                return;
            }
        };
        match self.apply(table, false).await {
            Ok(a) => tracing::info!(generation = a.generation, "restored saved route table"),
            Err(e) => tracing::error!(error = %e.message, "cannot restore saved routes"),
        }
    }

    /// Validates, binds new listeners, persists, then swaps. All-or-nothing when `strict`.
    pub async fn apply(&self, mut new: RouteTable, strict: bool) -> Result<Applied, AdminError> {
        if let Some(ip) = self.shared.opts.listen_ip {
            for listener in &mut new.listeners {
                listener.listen.set_ip(ip);
            }
        }
        let mut st = self.state.lock().await;
        let current_generation = self.table.load().generation;
        if strict && new.generation < current_generation {
            return Err(AdminError::new(
                StatusCode::CONFLICT,
                format!(
                    "stale route table: generation {} is lower than the current {}",
                    new.generation, current_generation
                ),
            ));
        }
        new.validate()
            .map_err(|e| AdminError::new(StatusCode::BAD_REQUEST, e.0))?;

        // The sites of each address, in table order.
        let mut by_addr: Vec<(SocketAddr, Vec<&ListenerConfig>)> = Vec::new();
        for l in &new.listeners {
            match by_addr.iter_mut().find(|(a, _)| *a == l.listen) {
                Some((_, sites)) => sites.push(l),
                None => by_addr.push((l.listen, vec![l])),
            }
        }

        // 1. Load the certificates, then bind the new listeners; on a bind failure nothing
        //    has changed yet. A certificate that does not load is a warning, not a refusal:
        //    one site's bad renewal must not block every other route change, and the
        //    address keeps the certificates it had (or fails handshakes; never plain HTTP).
        let mut warnings = Vec::new();
        let mut certs = HashMap::with_capacity(by_addr.len());
        for (addr, sites) in &by_addr {
            let plan = match sites.iter().any(|s| s.tls.is_some()) {
                true => match SniMap::build(sites, &self.certs) {
                    Ok(map) => TlsPlan::Certs(map),
                    Err(e) => {
                        let msg = format!(
                            "listener {}: {e}; keeping its previous certificates",
                            sites[0].id
                        );
                        tracing::error!("{msg}");
                        warnings.push(msg);
                        TlsPlan::Keep
                    }
                },
                false => TlsPlan::Plain,
            };
            certs.insert(*addr, plan);
        }
        // An access log that cannot be opened is a warning too: the site serves unlogged.
        let mut logs = HashMap::new();
        for site in &new.listeners {
            let Some(path) = &site.access_log else {
                continue;
            };
            match self.access_logs.get(path) {
                Ok(log) => {
                    logs.insert(path.clone(), log);
                }
                Err(e) => {
                    let msg = format!(
                        "listener {}: cannot open access log {}: {e}; serving without it",
                        site.id,
                        path.display()
                    );
                    tracing::error!("{msg}");
                    warnings.push(msg);
                }
            }
        }
        let mut bound: HashMap<SocketAddr, TcpListener> = HashMap::new();
        for (addr, sites) in &by_addr {
            if st.listeners.contains_key(addr) {
                continue;
            }
            match TcpListener::bind(addr).await {
                Ok(sock) => {
                    bound.insert(*addr, sock);
                }
                Err(e) => {
                    let msg = format!("listener {} cannot bind {addr}: {e}", sites[0].id);
                    if strict {
                        return Err(AdminError::new(StatusCode::CONFLICT, msg));
                    }
                    tracing::error!("{msg}");
                }
            }
        }

        // 2. Compile.
        let compiled: Vec<(SocketAddr, AddrTable)> = by_addr
            .iter()
            .map(|(addr, sites)| {
                (
                    *addr,
                    AddrTable::compile(*addr, sites, &self.endpoints, &self.stats, &logs),
                )
            })
            .collect();

        // 3. Persist before answering.
        if strict {
            let json = serde_json::to_vec_pretty(&new)
                .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let path = self.routes_path();
            tokio::task::spawn_blocking(move || write_atomic(&path, &json))
                .await
                .map_err(|e| AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| {
                    AdminError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot persist routes: {e}"),
                    )
                })?;
        }

        // 4. Swap: existing listeners get the new table, new ones start, removed ones drain.
        let mut keep = std::collections::HashSet::new();
        for (addr, table) in compiled {
            let ctx = match st.listeners.get(&addr) {
                Some(h) => {
                    h.ctx.table.store(Arc::new(table));
                    h.ctx.clone()
                }
                None => match bound.remove(&addr) {
                    Some(sock) => {
                        let ctx = Arc::new(ListenerCtx {
                            table: ArcSwap::from_pointee(table),
                            shared: self.shared.clone(),
                            certs: Arc::default(),
                            tls: ArcSwapOption::empty(),
                        });
                        let cancel = CancellationToken::new();
                        let task = spawn_listener(sock, ctx.clone(), cancel.clone());
                        st.listeners.insert(
                            addr,
                            ListenerHandle {
                                ctx: ctx.clone(),
                                cancel,
                                task,
                            },
                        );
                        ctx
                    }
                    None => continue,
                },
            };
            keep.insert(addr);
            let plan = certs.remove(&addr).unwrap_or(TlsPlan::Plain);
            if let TlsPlan::Certs(map) = plan {
                ctx.certs.store(map);
            } else if let TlsPlan::Plain = plan {
                ctx.tls.store(None);
                continue;
            }
            if ctx.tls.load().is_none() {
                match tls::acceptor(ctx.certs.clone()) {
                    Ok(a) => ctx.tls.store(Some(Arc::new(a))),
                    Err(e) => tracing::error!(error = %e, "cannot configure TLS on {addr}"),
                }
            }
        }
        self.certs.retain(&tls::used_files(new.listeners.iter()));
        let removed: Vec<SocketAddr> = st
            .listeners
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(h) = st.listeners.remove(&addr) {
                h.cancel.cancel();
                st.draining.push(h.task);
            }
        }
        st.draining.retain(|t| !t.is_finished());
        let generation = new.generation;
        self.table.store(Arc::new(new));
        Ok(Applied {
            generation,
            warnings,
        })
    }

    /// Watches the certificate files of TLS sites; on a change, new handshakes get the
    /// new certificate (open connections keep theirs).
    pub async fn reload_certificates(self: Arc<Self>, shutdown: CancellationToken) {
        let period = self.shared.opts.cert_check_interval;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if !self.certs.refresh() {
                continue;
            }
            let st = self.state.lock().await;
            let table = self.table.load_full();
            for (addr, h) in &st.listeners {
                let sites: Vec<&ListenerConfig> = table
                    .listeners
                    .iter()
                    .filter(|l| l.listen == *addr && l.tls.is_some())
                    .collect();
                if sites.is_empty() {
                    continue;
                }
                match SniMap::build(&sites, &self.certs) {
                    Ok(map) => h.ctx.certs.store(map),
                    Err(e) => tracing::warn!(error = %e, "TLS certificates of {addr} not reloaded"),
                }
            }
        }
    }

    /// Stops every listener and waits for their drains.
    pub async fn shutdown(&self) {
        let mut st = self.state.lock().await;
        let mut tasks: Vec<JoinHandle<()>> = std::mem::take(&mut st.draining);
        for (_, h) in st.listeners.drain() {
            h.cancel.cancel();
            tasks.push(h.task);
        }
        for t in tasks {
            let _ = t.await;
        }
        self.shared.workers.stop();
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(v) = req.headers().get(header::AUTHORIZATION) else {
            return false;
        };
        let Some(given) = v.as_bytes().strip_prefix(b"Bearer ") else {
            return false;
        };
        constant_time_eq(given, self.token.as_bytes())
    }

    fn snapshot(&self) -> StatsSnapshot {
        let now = now_ms();
        StatsSnapshot {
            started_at_ms: self.started_at_ms,
            taken_at_ms: now,
            generation: self.table.load().generation,
            versions: self.stats.snapshot(now),
            flags: self.stats.flag_snapshot(),
            flags_dropped: crate::flags::dropped(),
        }
    }

    fn metrics_text(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type AdminResponse = Response<Full<Bytes>>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> AdminResponse {
    match serde_json::to_vec(v) {
        Ok(b) => respond(status, "application/json", b),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn error(status: StatusCode, msg: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "error": msg }))
}

async fn admin_handle(p: Arc<Proxy>, req: Request<Incoming>) -> Result<AdminResponse, Infallible> {
    let path = req.uri().path();
    if path == "/healthz" {
        return Ok(respond(StatusCode::OK, "text/plain", "ok\n"));
    }
    let endpoint = path.strip_prefix("/v1/endpoints/");
    let known = endpoint.is_some() || matches!(path, "/v1/routes" | "/v1/stats" | "/metrics");
    if !known {
        return Ok(error(StatusCode::NOT_FOUND, "not found"));
    }
    if !p.authorized(&req) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or invalid bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let method = req.method().clone();
    if let Some(addr) = endpoint {
        if method != Method::GET {
            return Ok(error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"));
        }
        return Ok(match addr.parse::<SocketAddr>() {
            Ok(addr) => json(StatusCode::OK, &p.endpoints.usage(addr)),
            Err(_) => error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "invalid endpoint address {:?}: expected IP:PORT, e.g. 127.0.0.1:8080",
                    addr.chars().take(64).collect::<String>()
                ),
            ),
        });
    }
    Ok(match (method, path) {
        (Method::GET, "/v1/routes") => json(StatusCode::OK, &**p.table.load()),
        (Method::PUT, "/v1/routes") => {
            let body = match Limited::new(req.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read body: {e}"),
                    ));
                }
            };
            let table: RouteTable = match serde_json::from_slice(&body) {
                Ok(t) => t,
                Err(e) => {
                    return Ok(error(
                        StatusCode::BAD_REQUEST,
                        &format!("invalid route table: {e}"),
                    ));
                }
            };
            match p.apply(table, true).await {
                Ok(applied) => json(StatusCode::OK, &applied),
                Err(e) => error(e.status, &e.message),
            }
        }
        (Method::GET, "/v1/stats") => json(StatusCode::OK, &p.snapshot()),
        (Method::GET, "/metrics") => match p.metrics_text() {
            Ok(text) => respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics"),
        },
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    })
}

/// Serves the admin API until `shutdown`, then stops the data plane.
pub(crate) async fn serve_admin(p: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new());
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let p = p.clone();
        let svc = service_fn(move |req| admin_handle(p.clone(), req));
        let fut = graceful.watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            let _ = fut.await;
        });
    }
    drop(listener);
    p.shutdown().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}
