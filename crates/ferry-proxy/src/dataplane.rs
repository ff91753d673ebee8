//! Listeners and the per-request proxy path.

pub(crate) mod h1;

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ProxyOptions;
use crate::access_log::{AccessLog, Entry, Rfc3339};
use crate::body::{InFlight, ProxyBody, UpstreamBody};
use crate::metrics::KeyStats;
use crate::table::{AddrTable, LazyNow, ListenerTable, Tried, now_ms, request_host};
use crate::tls::SniCerts;
use crate::tunnel::{self, UPGRADE_TOKEN};
use crate::upstream::{self, ClientBody, ClientBodyState, ClientFault, ReqBody};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");
static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Attempts per request (connect failures move on to another endpoint).
const MAX_ATTEMPTS: usize = 4;

/// A request sent on a pooled connection idle for at least this long keeps a copy (when
/// it is idempotent and its body is buffered), so that it can be sent again if the
/// upstream closed the connection at the moment it was written (idle-timeout race).
/// Connections used more recently than that had no time to reach an upstream's idle
/// timeout, and their closing is seen when they are taken from the pool.
const RETRY_COPY_AFTER: Duration = Duration::from_millis(100);

/// Data-plane worker threads, each running a single-threaded tokio runtime (like nginx
/// workers): a client connection, its requests and the upstream connections they use stay
/// on one thread, with no cross-thread wake-ups or work stealing on the hot path.
pub(crate) struct Workers {
    handles: Vec<tokio::runtime::Handle>,
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
                            crate::metrics::pin_shard(i);
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
        Ok(Self {
            handles,
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
    pub table: ArcSwap<AddrTable>,
    pub shared: Arc<Shared>,
    /// The certificates of the address's TLS sites (swapped on reload).
    pub certs: Arc<SniCerts>,
    /// Set when the address's sites terminate TLS.
    pub tls: ArcSwapOption<tokio_rustls::TlsAcceptor>,
}

struct ConnCtx {
    listener: Arc<ListenerCtx>,
    /// The worker thread serving this connection (index of its upstream idle pools).
    worker: usize,
    client_ip: HeaderValue,
    /// Over TLS (`X-Forwarded-Proto: https`).
    tls: bool,
    /// The TLS server name the client asked for.
    sni: std::sync::OnceLock<Box<str>>,
    /// The client is on this host (loopback): it may use preview headers without a token.
    local_client: bool,
    /// The listener's drain (upgraded connections take part in it).
    drain: Arc<Drain>,
    /// Reads and writes that moved bytes on the client connection (for the idle timeout).
    activity: AtomicU64,
    /// Requests of this connection waiting for an upstream's response head: the client
    /// is not idle then, the upstream is slow (bounded by `upstream_timeout`).
    waiting: AtomicUsize,
}

/// Counts the requests of a connection waiting on an upstream while alive.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection that counts its reads and writes (see [`ConnCtx::activity`]).
struct Watched {
    io: tokio::net::TcpStream,
    conn: Arc<ConnCtx>,
}

impl Watched {
    #[inline]
    fn touch(&self) {
        // One thread serves the connection: no read-modify-write needed.
        let a = &self.conn.activity;
        a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Watched {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn server_builder(opts: &ProxyOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer whenever it waits for a request head: for the first request
    // and between keep-alive requests alike.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true);
    b.http2().timer(TokioTimer::new());
    b
}

/// Graceful drain of a listener's client connections. Cheaper per poll than hyper-util's
/// `GracefulShutdown`, whose watcher polls a `watch` channel (and takes its lock) on every
/// poll of every connection: here a connection registers for the start signal once and
/// then only reads an atomic flag.
#[derive(Default)]
pub(crate) struct Drain {
    draining: AtomicBool,
    started: tokio::sync::Notify,
    active: AtomicUsize,
    idle: tokio::sync::Notify,
    /// Cancelled when the drain is over (done or timed out): closes the tunnels left.
    abort: CancellationToken,
}

/// One open connection (or upgraded tunnel) of a [`Drain`] (counted from accept to close).
pub(crate) struct DrainToken(Arc<Drain>);

impl DrainToken {
    fn new(d: &Arc<Drain>) -> Self {
        d.active.fetch_add(1, Ordering::SeqCst);
        Self(d.clone())
    }
}

impl Drop for DrainToken {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Asks every connection to finish gracefully and waits until all have closed.
    async fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.started.notify_waiters();
        loop {
            let idle = self.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Accepts on `listener` until `cancel`, then drains open connections gracefully
/// (in-flight requests complete, idle keep-alive connections close).
pub(crate) fn spawn_listener(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let drain = Arc::new(Drain::default());
        let builder = Arc::new(server_builder(&ctx.shared.opts));
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
            let tls = ctx.tls.load_full();
            let conn = Arc::new(ConnCtx {
                listener: ctx.clone(),
                worker,
                client_ip: ip_header(peer),
                tls: tls.is_some(),
                sni: std::sync::OnceLock::new(),
                local_client: peer.ip().to_canonical().is_loopback(),
                drain: drain.clone(),
                activity: AtomicU64::new(0),
                waiting: AtomicUsize::new(0),
            });
            let token = DrainToken::new(&drain);
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
                let first_byte = conn.listener.shared.opts.header_read_timeout;
                let io = Watched {
                    io: stream,
                    conn: conn.clone(),
                };
                match tls {
                    None => serve_h1(io, conn, &builder, token).await,
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(first_byte, acceptor.accept(io)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                        let tls = stream.get_ref().1;
                        if let Some(name) = tls.server_name() {
                            let _ = conn.sni.set(name.into());
                        }
                        if tls.alpn_protocol() == Some(b"h2") {
                            serve_connection(TokioIo::new(stream), conn, &builder, token).await;
                        } else {
                            serve_h1(stream, conn, &builder, token).await;
                        }
                    }
                }
            });
        }
        drop(listener);
        let limit = ctx.shared.opts.drain_timeout;
        tokio::select! {
            _ = drain.drain() => {}
            _ = tokio::time::sleep(limit) => {
                tracing::warn!("listener drain timed out after {limit:?}");
            }
        }
        drain.abort.cancel();
    })
}

/// Serves a client connection: HTTP/1.1 on the fast path, handed to hyper (with the bytes
/// already read) for anything else (HTTP/2 prior knowledge, HTTP/1.0, upgrades...).
async fn serve_h1<I>(
    mut io: I,
    conn: Arc<ConnCtx>,
    builder: &auto::Builder<TokioExecutor>,
    token: DrainToken,
) where
    I: h1::Io + Send + 'static,
{
    let read = {
        let fast = std::pin::pin!(h1::serve(&mut io, &conn));
        // The fast path notices the drain itself, between requests.
        match guard_connection(&conn, &token.0, fast, |_| {}).await {
            Some(h1::Ended::Fallback(read)) => read,
            Some(h1::Ended::Closed) => return,
            None => {
                tracing::debug!("idle client connection closed");
                return;
            }
        }
    };
    serve_connection(
        TokioIo::new(h1::Prefixed::new(io, read)),
        conn,
        builder,
        token,
    )
    .await;
}

/// Serves one client connection with hyper until it ends, drains, or stays idle too long.
async fn serve_connection<I>(
    io: I,
    conn: Arc<ConnCtx>,
    builder: &auto::Builder<TokioExecutor>,
    token: DrainToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| handle(conn.clone(), req))
    };
    let served = std::pin::pin!(builder.serve_connection_with_upgrades(io, svc));
    match guard_connection(&conn, &token.0, served, |s| s.graceful_shutdown()).await {
        Some(Err(e)) => tracing::debug!(error = %e, "client connection ended with an error"),
        Some(Ok(())) => {}
        None => tracing::debug!("idle client connection closed"),
    }
}

/// Drives a connection's future `served`, telling it (`drain`) once when the listener
/// drains, and ends it (`None`) when it stays idle too long.
async fn guard_connection<F: Future>(
    conn: &ConnCtx,
    d: &Drain,
    mut served: std::pin::Pin<&mut F>,
    mut drain: impl FnMut(std::pin::Pin<&mut F>),
) -> Option<F::Output> {
    let idle_timeout = conn.listener.shared.opts.idle_timeout;
    let mut started = std::pin::pin!(d.started.notified());
    let (mut registered, mut finishing) = (false, false);
    // One timer per connection, re-armed only when it fires: the connection closes after
    // between one and two `idle_timeout`s without a byte either way while no request
    // waits on an upstream.
    let mut idle = std::pin::pin!(tokio::time::sleep(idle_timeout));
    let mut seen = conn.activity.load(Ordering::Relaxed);
    std::future::poll_fn(|cx| {
        if !finishing {
            if !registered {
                // Once: the task's waker is stable, so this registration wakes the
                // connection when the drain starts.
                registered = true;
                let _ = started.as_mut().poll(cx);
            }
            if d.draining.load(Ordering::Acquire) {
                finishing = true;
                drain(served.as_mut());
            }
        }
        if let Poll::Ready(r) = served.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        while idle.as_mut().poll(cx).is_ready() {
            let now = conn.activity.load(Ordering::Relaxed);
            if now == seen && conn.waiting.load(Ordering::Relaxed) == 0 {
                return Poll::Ready(None);
            }
            seen = now;
            idle.as_mut()
                .reset(tokio::time::Instant::now() + idle_timeout);
        }
        Poll::Pending
    })
    .await
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
    HeaderValue::from_bytes(&new_request_id_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn new_request_id_bytes() -> [u8; 32] {
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
    buf
}

/// Hop-by-hop headers (RFC 9110 7.6.1 and the usual non-standard ones): never forwarded.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &PROXY_CONNECTION,
];

/// `Connection` tokens that name no header beyond [`HOP_BY_HOP`] (or none at all).
fn names_only_hop_by_hop(connection: &HeaderValue) -> bool {
    connection.as_bytes().split(|b| *b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty()
            || t.eq_ignore_ascii_case(b"close")
            || HOP_BY_HOP
                .iter()
                .any(|n| t.eq_ignore_ascii_case(n.as_str().as_bytes()))
    })
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the (few) headers notes which hop-by-hop names are there; the usual
    // `Connection: keep-alive` or `close` then costs no parsing and no header-name building.
    let mut found = 0u16;
    let mut listed_others = false;
    for (name, value) in h.iter() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| *n == name) {
            found |= 1 << i;
            if i == 0 && !names_only_hop_by_hop(value) {
                listed_others = true;
            }
        }
    }
    if found == 0 {
        return;
    }
    if listed_others {
        let listed: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            h.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if found & (1 << i) != 0 {
            h.remove(*name);
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

/// The upstream closed the (pooled) connection before answering.
fn is_stale_connection(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
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

/// A copy of a request with a buffered body.
fn copy_request(r: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    let body = match r.body() {
        ReqBody::Full(b) => ReqBody::Full(b.clone()),
        ReqBody::Stream(_) => return None,
    };
    let mut c = Request::new(body);
    *c.method_mut() = r.method().clone();
    *c.uri_mut() = r.uri().clone();
    *c.version_mut() = r.version();
    *c.headers_mut() = r.headers().clone();
    Some(c)
}

fn truncated(path: &str) -> &str {
    match path.char_indices().nth(200) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

/// Blames the client for a request abandoned before its answer (the client closed the
/// connection, or it was closed for being idle): dropped with the request's future.
struct Abandoned<'t>(Option<&'t KeyStats>);

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(stats) = self.0 {
            stats.record_client_error();
        }
    }
}

/// An answer to a request the client spoiled: counted apart from the version's requests.
fn client_fault_answer(
    stats: &KeyStats,
    fault: ClientFault,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    stats.record_client_error();
    let msg = match fault {
        ClientFault::Malformed => "ferry-proxy: malformed request body\n",
        ClientFault::Stalled => "ferry-proxy: the request body stopped arriving\n",
        ClientFault::Aborted => "ferry-proxy: the client went away\n",
    };
    let mut resp = Response::new(ProxyBody::full(msg));
    *resp.status_mut() = fault.status();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(X_REQUEST_ID.clone(), request_id);
    resp
}

async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let sites = conn.listener.table.load_full();
    let mut abandoned = Abandoned(None);
    let resp = proxy(&conn, &sites, req, &mut abandoned).await;
    abandoned.0 = None;
    Ok(resp)
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => new_request_id(),
    }
}

/// Chooses the site by host, then proxies (or redirects) there.
async fn proxy<'t>(
    conn: &ConnCtx,
    sites: &'t AddrTable,
    req: Request<Incoming>,
    abandoned: &mut Abandoned<'t>,
) -> Response<ProxyBody> {
    let host = || request_host(req.uri(), req.headers(), conn.sni.get().map(|s| &**s));
    let id = request_id(req.headers());
    let Some(table) = sites.site(host) else {
        return unknown_host(sites, host(), id);
    };
    let mut line = AccessLine::start(table, || Logged {
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(Into::into),
        method: req.method().as_str().into(),
        path: req.uri().path().into(),
        protocol: match req.version() {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        },
        request_id: id.to_str().unwrap_or("").into(),
    });
    let mut resp = if let Some(port) = table.redirect_https {
        let resp = redirect_https(host(), port, req.uri(), id);
        table
            .unrouted_stats
            .record(resp.status().as_u16(), Duration::ZERO);
        resp
    } else {
        proxy_site(conn, table, req, id, abandoned, &mut line.served).await
    };
    if let Some(hsts) = &table.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    line.finish(resp.status().as_u16());
    resp
}

/// `404` for a host no site of the address serves.
pub(crate) fn unknown_host(
    sites: &AddrTable,
    host: Option<&str>,
    id: HeaderValue,
) -> Response<ProxyBody> {
    let msg = match host {
        Some(h) => format!(
            "ferry-proxy: no site for host {} on {}\n",
            truncated(h),
            sites.addr
        ),
        None => format!(
            "ferry-proxy: no site on {} for a request without Host\n",
            sites.addr
        ),
    };
    local_answer(
        &sites.unknown_host_stats,
        Instant::now(),
        StatusCode::NOT_FOUND,
        msg,
        id,
    )
}

/// What the access log needs of a request, taken before it is forwarded.
pub(crate) struct Logged {
    pub host: Option<Box<str>>,
    pub method: Box<str>,
    pub path: Box<str>,
    pub protocol: &'static str,
    pub request_id: Box<str>,
}

/// The access-log line of one request (when its site has a log): written once the
/// answer's status is known, or, if the request is abandoned first (the client went
/// away, the connection closed), with status 499 when dropped. Always carries the
/// version and endpoint the request went to.
pub(crate) struct AccessLine<'t> {
    open: Option<(
        &'t AccessLog,
        &'t str,
        std::time::SystemTime,
        Instant,
        Logged,
    )>,
    pub served: Served<'t>,
}

impl<'t> AccessLine<'t> {
    /// Takes what the line needs (`what` runs only when the site logs).
    pub fn start(table: &'t ListenerTable, what: impl FnOnce() -> Logged) -> Self {
        Self {
            open: table.access_log.as_deref().map(|log| {
                (
                    log,
                    &*table.id,
                    std::time::SystemTime::now(),
                    Instant::now(),
                    what(),
                )
            }),
            served: Served::default(),
        }
    }

    pub fn finish(&mut self, status: u16) {
        let Some((log, listener, time, start, l)) = self.open.take() else {
            return;
        };
        fn named(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        log.write(&Entry {
            time: Rfc3339(time),
            request_id: &l.request_id,
            listener,
            host: l.host.as_deref(),
            method: &l.method,
            path: &l.path,
            protocol: l.protocol,
            service: self.served.stats.and_then(|s| named(&s.service)),
            version: self.served.stats.and_then(|s| named(&s.version)),
            upstream: self.served.upstream,
            status,
            duration_ms: start.elapsed().as_secs_f64() * 1000.0,
        });
    }
}

impl Drop for AccessLine<'_> {
    fn drop(&mut self) {
        // Abandoned before its answer: nginx's "client closed request".
        self.finish(ClientFault::Aborted.status().as_u16());
    }
}

/// Which version (and endpoint) a request was sent to, for the access log.
#[derive(Default)]
pub(crate) struct Served<'t> {
    pub stats: Option<&'t KeyStats>,
    pub upstream: Option<SocketAddr>,
}

/// `308` to the same host and path over HTTPS.
fn redirect_https(
    host: Option<&str>,
    port: u16,
    uri: &Uri,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = host.and_then(|h| {
        let h = if h.contains(':') {
            format!("[{h}]")
        } else {
            h.to_string()
        };
        let url = if port == 443 {
            format!("https://{h}{path}")
        } else {
            format!("https://{h}:{port}{path}")
        };
        HeaderValue::from_str(&url).ok()
    });
    let (status, body) = match &location {
        Some(_) => (StatusCode::PERMANENT_REDIRECT, "ferry-proxy: use HTTPS\n"),
        None => (
            StatusCode::BAD_REQUEST,
            "ferry-proxy: a valid Host header is needed to redirect to HTTPS\n",
        ),
    };
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    h.insert(X_REQUEST_ID.clone(), request_id);
    if let Some(l) = location {
        h.insert(header::LOCATION, l);
    }
    resp
}

async fn proxy_site<'t>(
    conn: &ConnCtx,
    table: &'t ListenerTable,
    mut req: Request<Incoming>,
    request_id: HeaderValue,
    abandoned: &mut Abandoned<'t>,
    served: &mut Served<'t>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let opts = &conn.listener.shared.opts;
    // WebSocket and other upgrades: the protocol asked for, and the client side's switch.
    let upgrade = tunnel::requested_protocol(req.version(), req.headers())
        .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
    let (mut parts, body) = req.into_parts();

    let Some(route) = table.route_for(parts.uri.path()) else {
        return unrouted(table, None, parts.uri.path(), start, request_id);
    };
    if !route.has_backends() {
        served.stats = Some(&route.no_backend_stats);
        return unrouted(table, Some(route), parts.uri.path(), start, request_id);
    }
    let preferred = route.choose_group(&parts.headers, conn.local_client);
    let preferred_stats = &route.groups[preferred.min(route.groups.len() - 1)].stats;
    abandoned.0 = Some(preferred_stats);
    served.stats = Some(preferred_stats);
    let upstream_timeout = route.upstream_timeout.unwrap_or(opts.upstream_timeout);

    // Small or empty bodies are buffered so that the request can be sent again.
    let buffered = body.is_end_stream()
        || body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= opts.max_buffered_body as u64);
    let mut body_state = None;
    let up_body = if body.is_end_stream() {
        ReqBody::Full(None)
    } else if buffered {
        match tokio::time::timeout(opts.header_read_timeout, body.collect()).await {
            Ok(Ok(c)) => {
                let b = c.to_bytes();
                ReqBody::Full((!b.is_empty()).then_some(b))
            }
            Ok(Err(e)) => {
                abandoned.0 = None;
                return client_fault_answer(preferred_stats, ClientFault::of(&e), request_id);
            }
            Err(_elapsed) => {
                abandoned.0 = None;
                return client_fault_answer(preferred_stats, ClientFault::Stalled, request_id);
            }
        }
    } else {
        let (b, state) = ClientBody::new(body);
        body_state = Some(state);
        ReqBody::Stream(b)
    };
    // The client's fault, if its streamed body is why an exchange failed.
    let client_fault = |state: &Option<ClientBodyState>| state.as_ref().and_then(|s| s.fault());

    // Upstream request headers.
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    route.strip_preview_token(h);
    // Room for the forwarding headers in one allocation.
    h.reserve(4);
    if buffered && h.contains_key(header::EXPECT) {
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
    h.insert(
        X_FORWARDED_PROTO.clone(),
        if conn.tls {
            HTTPS.clone()
        } else {
            HTTP.clone()
        },
    );
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some((protocol, _)) = &upgrade {
        h.insert(header::CONNECTION, UPGRADE_TOKEN.clone());
        h.insert(header::UPGRADE, protocol.clone());
    }

    // Origin-form request target, as an HTTP/1.1 request.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let retryable = buffered
        && matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::PUT
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
        );
    let mut pending = {
        let mut up = Request::new(up_body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = Uri::from(path_and_query);
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = std::mem::take(&mut parts.headers);
        Some(up)
    };

    let mut tried = Tried::default();
    let mut now = LazyNow::default();
    if let Some((_, client)) = upgrade
        && let Some(up) = pending.take()
    {
        let resp = upgrade_through(
            conn, route, preferred, up, client, start, request_id, served,
        )
        .await;
        abandoned.0 = None;
        return resp;
    }
    let mut stale_retry_used = false;
    let mut last_stats: Option<&KeyStats> = None;
    let mut failure: Option<&'static str> = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some((gi, ei)) = route.pick(preferred, &tried, &mut now) else {
            break;
        };
        let Some(mut up) = pending.take() else {
            break;
        };
        let group = &route.groups[usize::from(gi)];
        let ep = &group.endpoints[usize::from(ei)];
        abandoned.0 = Some(&group.stats);
        served.stats = Some(&group.stats);
        served.upstream = Some(ep.addr);
        if !up.headers().contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(ep.authority.as_str())
        {
            up.headers_mut().insert(header::HOST, v);
        }
        let waiting = Waiting::new(&conn.waiting);
        let c = match ep.idle.checkout(conn.worker, start, opts.pool_idle_timeout) {
            Some(c) => c,
            None => match upstream::connect(ep.addr, opts.connect_timeout).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(upstream = %ep.addr, error = %e, "connect failed; ejecting");
                    let ms = i64::try_from(opts.ejection.as_millis()).unwrap_or(i64::MAX / 2);
                    ep.eject(now_ms().saturating_add(ms));
                    tried.add((gi, ei));
                    failure = Some("could not connect to any upstream");
                    pending = Some(up);
                    continue;
                }
            },
        };
        let copy = if retryable
            && !stale_retry_used
            && c.uses > 0
            && c.idle_for(start) >= RETRY_COPY_AFTER
        {
            copy_request(&up)
        } else {
            None
        };

        let guard = InFlight::new(ep.clone(), group.stats.clone());
        last_stats = Some(&group.stats);
        let sent = tokio::time::timeout(upstream_timeout, upstream::send(c, up)).await;
        drop(waiting);
        abandoned.0 = None;
        match sent {
            Ok((Ok(resp), alive)) => {
                let (mut rp, rb) = resp.into_parts();
                strip_hop_by_hop(&mut rp.headers);
                rp.headers.insert(X_REQUEST_ID.clone(), request_id);
                let (status, elapsed) = (rp.status.as_u16(), start.elapsed());
                group.stats.record(status, elapsed);
                group.stats.flags.take(&mut rp.headers, status, elapsed);
                let body = UpstreamBody::new(rb, alive, conn.worker, guard);
                return Response::from_parts(rp, ProxyBody::Upstream(body));
            }
            Err(_elapsed) => {
                drop(guard);
                if let Some(fault) = client_fault(&body_state) {
                    return client_fault_answer(&group.stats, fault, request_id);
                }
                return local_answer(
                    &group.stats,
                    start,
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("ferry-proxy: upstream {} timed out\n", ep.addr),
                    request_id,
                );
            }
            Ok((Err(mut e), _)) => {
                drop(guard);
                if let Some(req) = e.take_message() {
                    // Never written: the pooled connection had closed. Safe to send again.
                    tracing::debug!(upstream = %ep.addr, error = %e.error(), "pooled connection closed; retrying");
                    failure = Some("upstream closed the connection");
                    pending = Some(req);
                    continue;
                }
                let e = e.into_error();
                if let Some(fault) = client_fault(&body_state) {
                    tracing::debug!(upstream = %ep.addr, error = %e, ?fault, "client request failed");
                    return client_fault_answer(&group.stats, fault, request_id);
                }
                if let Some(copy) = copy
                    && is_stale_connection(&e)
                {
                    tracing::debug!(upstream = %ep.addr, error = %e, "stale pooled connection; retrying");
                    stale_retry_used = true;
                    failure = Some("upstream closed the connection");
                    pending = Some(copy);
                    continue;
                }
                tracing::debug!(upstream = %ep.addr, error = %e, "upstream request failed");
                failure = Some("upstream request failed");
                break;
            }
        }
    }
    abandoned.0 = None;
    let stats = last_stats.unwrap_or(preferred_stats);
    unanswered(table, stats, failure, parts.uri.path(), start, request_id)
}

/// `503` for a path the site has no route for (`route` `None`), or whose route has no
/// backend.
fn unrouted(
    table: &ListenerTable,
    route: Option<&crate::table::RouteEntry>,
    path: &str,
    start: Instant,
    id: HeaderValue,
) -> Response<ProxyBody> {
    let (stats, what) = match route {
        None => (&*table.unrouted_stats, "route"),
        Some(r) => (&*r.no_backend_stats, "backend"),
    };
    let msg = format!(
        "ferry-proxy: no {what} on listener {} for path {}\n",
        table.id,
        truncated(path)
    );
    local_answer(stats, start, StatusCode::SERVICE_UNAVAILABLE, msg, id)
}

/// The answer when no attempt got a response: 502 saying what failed, or 503 when no
/// endpoint could be tried.
fn unanswered(
    table: &ListenerTable,
    stats: &KeyStats,
    failure: Option<&str>,
    path: &str,
    start: Instant,
    id: HeaderValue,
) -> Response<ProxyBody> {
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
                truncated(path)
            ),
        ),
    };
    local_answer(stats, start, status, msg, id)
}

/// Forwards an upgrade request to one endpoint of the route (on a connection of its own)
/// and answers with the upstream's response; a `101` leaves the tunnel running, counted
/// in flight for its endpoint (so a replica's drain waits for it) and in its listener's
/// drain until either side closes it, it stays idle for `idle_timeout`, or the listener's
/// drain times out.
#[allow(clippy::too_many_arguments)]
async fn upgrade_through<'t>(
    conn: &ConnCtx,
    route: &'t crate::table::RouteEntry,
    preferred: usize,
    up: Request<ReqBody>,
    client: hyper::upgrade::OnUpgrade,
    start: Instant,
    request_id: HeaderValue,
    served: &mut Served<'t>,
) -> Response<ProxyBody> {
    let opts = &conn.listener.shared.opts;
    let mut now = LazyNow::default();
    let Some((gi, ei)) = route.pick(preferred, &Tried::default(), &mut now) else {
        let stats = &route.groups[preferred.min(route.groups.len() - 1)].stats;
        return local_answer(
            stats,
            start,
            StatusCode::SERVICE_UNAVAILABLE,
            "ferry-proxy: no endpoint for the upgrade\n".into(),
            request_id,
        );
    };
    let group = &route.groups[usize::from(gi)];
    let ep = &group.endpoints[usize::from(ei)];
    served.stats = Some(&group.stats);
    served.upstream = Some(ep.addr);
    let guard = InFlight::new(ep.clone(), group.stats.clone());
    let held = tunnel::Held {
        in_flight: guard,
        _drain: DrainToken::new(&conn.drain),
        closed: conn.drain.abort.clone(),
        idle_timeout: opts.idle_timeout,
    };
    match tunnel::forward(
        ep.addr,
        opts.connect_timeout,
        route.upstream_timeout.unwrap_or(opts.upstream_timeout),
        up,
        client,
        held,
    )
    .await
    {
        Ok((resp, held)) => {
            let (mut rp, rb) = resp.into_parts();
            rp.headers.insert(X_REQUEST_ID.clone(), request_id);
            let (status, elapsed) = (rp.status.as_u16(), start.elapsed());
            group.stats.record(status, elapsed);
            group.stats.flags.take(&mut rp.headers, status, elapsed);
            let Some(held) = held else {
                // `Connection`/`Upgrade` stay: they are the answer's point.
                return Response::from_parts(rp, ProxyBody::Full(None));
            };
            strip_hop_by_hop(&mut rp.headers);
            let body = UpstreamBody::new(rb, None, conn.worker, held.in_flight);
            Response::from_parts(rp, ProxyBody::Upstream(body))
        }
        Err(e) => {
            if matches!(e, tunnel::TunnelError::Connect(_)) {
                let ms = i64::try_from(opts.ejection.as_millis()).unwrap_or(i64::MAX / 2);
                ep.eject(now_ms().saturating_add(ms));
            }
            tracing::debug!(upstream = %ep.addr, error = %e, "upgrade failed");
            local_answer(
                &group.stats,
                start,
                StatusCode::BAD_GATEWAY,
                format!("ferry-proxy: {e}\n"),
                request_id,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(|n| n.as_str()).collect()
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_stripped() {
        let mut h = headers(&[
            ("content-type", "text/plain"),
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("x-version", "v1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["content-type", "x-version"]);

        let mut h = headers(&[
            ("connection", "Close"),
            ("connection", "X-Secret , upgrade"),
            ("x-secret", "hop"),
            ("upgrade", "websocket"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["x-kept"]);

        let mut h = headers(&[("host", "shop"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(names(&h), ["host", "x-a"]);
    }
}
