//! Listeners and the per-request proxy path.

use std::cell::Cell;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ProxyOptions;
use crate::body::{InFlight, ProxyBody};
use crate::metrics::KeyStats;
use crate::table::{LazyNow, ListenerTable, Tried, now_ms};

pub(crate) type UpstreamClient = Client<HttpConnector, ProxyBody>;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Attempts per request (connect failures move on to another endpoint).
const MAX_ATTEMPTS: usize = 4;

/// Data-plane worker threads, each running a single-threaded tokio runtime (like nginx
/// workers): a client connection, its requests and the upstream connections they use stay
/// on one thread, with no cross-thread wake-ups or work stealing on the hot path.
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    clients: Vec<UpstreamClient>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    fn start(opts: &ProxyOptions) -> std::io::Result<Self> {
        let n = opts.workers.max(1);
        let stop = CancellationToken::new();
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("ferry-proxy-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(stop.cancelled());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("proxy worker thread died"))??;
            handles.push(handle);
        }
        let clients = (0..n).map(|_| upstream_client(opts)).collect();
        Ok(Self {
            handles,
            clients,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    fn pick(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()
    }

    /// Ends the worker threads (after the listeners have drained).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn upstream_client(opts: &ProxyOptions) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    http.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(opts.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(opts.pool_max_idle_per_host)
        .build(http)
}

pub(crate) struct Shared {
    pub workers: Workers,
    pub opts: ProxyOptions,
}

impl Shared {
    pub fn new(opts: ProxyOptions) -> std::io::Result<Self> {
        Ok(Self {
            workers: Workers::start(&opts)?,
            opts,
        })
    }
}

/// A listener's live state: its table is swapped atomically by the admin API.
pub(crate) struct ListenerCtx {
    pub table: ArcSwap<ListenerTable>,
    pub shared: Arc<Shared>,
}

struct ConnCtx {
    listener: Arc<ListenerCtx>,
    client: UpstreamClient,
    client_ip: HeaderValue,
}

fn server_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Accepts on `listener` until `cancel`, then drains open connections gracefully
/// (in-flight requests complete, idle keep-alive connections close).
pub(crate) fn spawn_listener(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        let builder = Arc::new(server_builder());
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off a little instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            // Hand the connection to a worker runtime; it stays there for its lifetime.
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot hand over a connection");
                    continue;
                }
            };
            let worker = ctx.shared.workers.pick();
            let conn = Arc::new(ConnCtx {
                listener: ctx.clone(),
                client: ctx.shared.workers.clients[worker].clone(),
                client_ip: ip_header(peer),
            });
            let watcher = graceful.watcher();
            let builder = builder.clone();
            ctx.shared.workers.handles[worker].spawn(async move {
                let stream = match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot register a connection");
                        return;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = service_fn(move |req| handle(conn.clone(), req));
                let fut = watcher.watch(
                    builder
                        .serve_connection(TokioIo::new(stream), svc)
                        .into_owned(),
                );
                if let Err(e) = fut.await {
                    tracing::debug!(error = %e, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        let drain = ctx.shared.opts.drain_timeout;
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(drain) => {
                tracing::warn!("listener drain timed out after {drain:?}");
            }
        }
    })
}

fn ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

thread_local! {
    static REQ_ID: Cell<(u64, u64)> = Cell::new((
        std::collections::hash_map::RandomState::new().build_hasher().finish(),
        0,
    ));
}

/// 32 hex chars: a random per-thread prefix and a per-thread counter.
fn new_request_id() -> HeaderValue {
    let (seed, n) = REQ_ID.with(|c| {
        let (s, n) = c.get();
        c.set((s, n.wrapping_add(1)));
        (s, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        let word = if i < 16 { seed } else { n };
        let shift = (15 - (i % 16)) * 4;
        *b = HEX[((word >> shift) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION) {
        let listed: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            h.remove(name);
        }
        h.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ] {
        if h.contains_key(name) {
            h.remove(name);
        }
    }
}

fn local_answer(
    stats: &KeyStats,
    start: Instant,
    status: StatusCode,
    msg: String,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    stats.record(status.as_u16(), start.elapsed());
    let mut resp = Response::new(ProxyBody::full(msg));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    h.insert(X_REQUEST_ID.clone(), request_id);
    resp
}

/// A pooled connection the upstream closed before (or while) the request was written.
fn is_stale_connection(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(he) = s.downcast_ref::<hyper::Error>()
            && (he.is_incomplete_message() || he.is_canceled() || he.is_closed())
        {
            return true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        src = s.source();
    }
    false
}

fn truncated(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let ctx = &conn.listener;
    let opts = &ctx.shared.opts;
    let table = ctx.table.load_full();
    let (mut parts, body) = req.into_parts();
    let request_id = match parts.headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => new_request_id(),
    };

    let Some(route) = table.route_for(parts.uri.path()) else {
        let msg = format!(
            "ferry-proxy: no route on listener {} for path {}\n",
            table.id,
            truncated(parts.uri.path())
        );
        return Ok(local_answer(
            &table.unrouted_stats,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            msg,
            request_id,
        ));
    };
    if !route.has_backends() {
        let msg = format!(
            "ferry-proxy: no backend on listener {} for path {}\n",
            table.id,
            truncated(parts.uri.path())
        );
        return Ok(local_answer(
            &route.no_backend_stats,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            msg,
            request_id,
        ));
    }
    let preferred = route.choose_group(&parts.headers);

    // Small or empty bodies are buffered so that a failed connect can be retried.
    let mut streamed: Option<Incoming> = None;
    let buffered: Option<Option<Bytes>> = if body.is_end_stream() {
        Some(None)
    } else if body
        .size_hint()
        .upper()
        .is_some_and(|n| n <= opts.max_buffered_body as u64)
    {
        match body.collect().await {
            Ok(c) => {
                let b = c.to_bytes();
                Some((!b.is_empty()).then_some(b))
            }
            Err(_) => {
                let stats = &route.groups[preferred.min(route.groups.len() - 1)].stats;
                return Ok(local_answer(
                    stats,
                    start,
                    StatusCode::BAD_REQUEST,
                    "ferry-proxy: could not read the request body\n".into(),
                    request_id,
                ));
            }
        }
    } else {
        streamed = Some(body);
        None
    };

    // Upstream request headers.
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    if buffered.is_some() && h.contains_key(header::EXPECT) {
        // The body is already read (hyper answered any 100-continue).
        h.remove(header::EXPECT);
    }
    let host = match h.get(header::HOST) {
        Some(v) => Some(v.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = host {
        if !h.contains_key(header::HOST) {
            h.insert(header::HOST, host.clone());
        }
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    let xff = match h.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + conn.client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.client_ip.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.client_ip.clone())
        }
        None => conn.client_ip.clone(),
    };
    h.insert(X_FORWARDED_FOR.clone(), xff);
    h.insert(X_FORWARDED_PROTO.clone(), HTTP.clone());
    h.insert(X_REQUEST_ID.clone(), request_id.clone());

    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    );

    let mut tried = Tried::default();
    let mut now = LazyNow::default();
    let mut stale_retry_used = false;
    let mut last_stats: Option<&KeyStats> = None;
    let mut failure: Option<&'static str> = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some((gi, ei)) = route.pick(preferred, &tried, &mut now) else {
            break;
        };
        let group = &route.groups[usize::from(gi)];
        let ep = &group.endpoints[usize::from(ei)];
        let body = match &buffered {
            Some(b) => ProxyBody::Full(b.clone()),
            None => match streamed.take() {
                Some(b) => ProxyBody::Stream(b, None),
                None => break,
            },
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(ep.authority.clone());
        uri.path_and_query = Some(path_and_query.clone());
        *up.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = if buffered.is_some() {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };

        let guard = InFlight::new(ep.clone(), group.stats.clone());
        last_stats = Some(&group.stats);
        match tokio::time::timeout(opts.upstream_timeout, conn.client.request(up)).await {
            Ok(Ok(resp)) => {
                let (mut rp, rb) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                rp.headers.insert(X_REQUEST_ID.clone(), request_id);
                group.stats.record(rp.status.as_u16(), start.elapsed());
                return Ok(Response::from_parts(rp, ProxyBody::Stream(rb, Some(guard))));
            }
            Err(_elapsed) => {
                drop(guard);
                return Ok(local_answer(
                    &group.stats,
                    start,
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("ferry-proxy: upstream {} timed out\n", ep.addr),
                    request_id,
                ));
            }
            Ok(Err(e)) => {
                drop(guard);
                if e.is_connect() {
                    tracing::debug!(upstream = %ep.addr, error = %e, "connect failed; ejecting");
                    let ms = i64::try_from(opts.ejection.as_millis()).unwrap_or(i64::MAX / 2);
                    ep.eject(now_ms().saturating_add(ms));
                    tried.add((gi, ei));
                    failure = Some("could not connect to any upstream");
                    continue;
                }
                if buffered.is_some() && idempotent && !stale_retry_used && is_stale_connection(&e)
                {
                    tracing::debug!(upstream = %ep.addr, error = %e, "stale pooled connection; retrying");
                    stale_retry_used = true;
                    failure = Some("upstream closed the connection");
                    continue;
                }
                tracing::debug!(upstream = %ep.addr, error = %e, "upstream request failed");
                failure = Some("upstream request failed");
                break;
            }
        }
    }
    let (status, msg) = match failure {
        Some(f) => (
            StatusCode::BAD_GATEWAY,
            format!("ferry-proxy: {f} (listener {})\n", table.id),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "ferry-proxy: no endpoint on listener {} for path {}\n",
                table.id,
                truncated(parts.uri.path())
            ),
        ),
    };
    let stats = last_stats.unwrap_or(&route.groups[preferred.min(route.groups.len() - 1)].stats);
    Ok(local_answer(stats, start, status, msg, request_id))
}
