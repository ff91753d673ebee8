//! The HTTP/1.1 fast path of client connections.
//!
//! hyper builds a `HeaderMap` of every request and response and encodes both again. This
//! path reads a request head in place (httparse), picks the site, route and version from
//! the header lines, writes the upstream request by copying the lines (minus hop-by-hop
//! ones, plus the forwarding headers), does the same with the response head, then copies
//! body bytes as they come (Content-Length, chunked or until close), as nginx does. A
//! connection runs one exchange at a time (pipelined requests wait their turn), on raw
//! upstream connections pooled per endpoint and worker thread.
//!
//! Request bodies (`Content-Length` or `chunked`) up to `max_buffered_body` are read whole
//! first (so that the request can be sent again); larger and chunked ones are copied
//! upstream as they arrive while the response is read, so an upstream that answers early
//! (413, 401) is heard: its answer is forwarded and both connections close. The proxy
//! answers `Expect: 100-continue` itself when it starts reading the body, and puts a `Date`
//! on its own answers and on responses that came without one (RFC 9110 6.6.1). A client
//! connection closed with a request body unread lingers as nginx's does (the rest is read
//! and dropped, bounded), so that the client reads the answer before any reset.
//!
//! It serves plain-text connections and TLS ones that did not negotiate h2. Anything else
//! goes to hyper, with the bytes read so far: HTTP/1.0, upgrades, an `Expect` other than
//! `100-continue`, transfer codings other than `chunked` alone, a request without `Host`, a
//! target that is not a path, the HTTP/2 preface, or a head httparse refuses (hyper answers
//! those with 400).
//!
//! Header names keep the case they were sent in, both ways (as nginx does); hyper, which
//! serves the rest, writes them in lower case. Names are case-insensitive (RFC 9110 5.1).

mod parse;

use std::cell::Cell;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use self::parse::{Chunked, Expect, HeadError, HeadLines, Line, Name, ReqHead, RespHead, classify};
use super::{
    AccessLine, ConnCtx, Logged, MAX_ATTEMPTS, TEXT_PLAIN, Waiting, client_fault_answer,
    local_answer, new_request_id_bytes, redirect_https, unanswered, unknown_host, unrouted,
};
use crate::body::{InFlight, ProxyBody};
use crate::table::{LazyNow, Tried, host_of, now_ms};
use crate::upstream::{ClientFault, Pooled, connect_tcp};

/// Read size of client and upstream sockets.
const READ_SIZE: usize = 16 * 1024;
/// Bytes a client may pipeline while its request waits on an upstream (then it is not
/// read until its turn).
const MAX_PIPELINED: usize = parse::MAX_HEAD;
/// A connection closed with a request body unread is read (and what comes dropped) for at
/// most this long, and until the client stays silent for [`LINGER_IDLE`] (nginx:
/// `lingering_time 30s`, `lingering_timeout 5s`).
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_IDLE: Duration = Duration::from_secs(5);

thread_local! {
    /// This thread's `Date` value and the second it was made for.
    static DATE: Cell<(u64, [u8; 29])> = const { Cell::new((0, [b' '; 29])) };
}

/// Now as an HTTP date (`Sun, 06 Dec 2026 12:00:00 GMT`), formatted once a second per
/// thread.
fn http_date() -> [u8; 29] {
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|c| {
        let (at, date) = c.get();
        if at == secs && at != 0 {
            return date;
        }
        let mut date = [b' '; 29];
        let s = httpdate::fmt_http_date(now);
        if s.len() == date.len() {
            date.copy_from_slice(s.as_bytes());
        }
        c.set((secs, date));
        date
    })
}

/// An upstream connection of the fast path.
#[derive(Debug)]
pub(crate) struct RawConn {
    io: TcpStream,
    since: Instant,
    uses: u64,
}

impl Pooled for RawConn {
    fn since(&self) -> Instant {
        self.since
    }

    fn set_since(&mut self, at: Instant) {
        self.since = at;
    }

    fn alive(&mut self) -> bool {
        // No readiness since the last read returned "would block": nothing arrived, not
        // even a FIN, and no system call is needed to know it.
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut b = [0u8; 1];
                matches!(self.io.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// A client connection: plain TCP, or TLS that negotiated HTTP/1.1 (or nothing).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin {}

impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// How the fast path left a connection.
pub(super) enum Ended {
    Closed,
    /// For hyper, with what was read of it (from the start of a request head).
    Fallback(BytesMut),
}

/// The buffers of one client connection, reused by each of its requests.
struct Bufs {
    /// From the client: the current request's head (and buffered body), then whatever
    /// was pipelined after it.
    inp: BytesMut,
    /// The request head (and buffered body) for the upstream, then the response head.
    out: Vec<u8>,
    /// From the upstream (also the chunks of a streamed request body).
    up: BytesMut,
    lines: Vec<Line>,
    rlines: Vec<Line>,
}

/// Serves requests on a client connection until it closes or needs hyper.
pub(super) async fn serve<I: Io>(io: &mut I, conn: &ConnCtx) -> Ended {
    let timeout = conn.listener.shared.opts.header_read_timeout;
    let mut b = Bufs {
        inp: BytesMut::with_capacity(4096),
        out: Vec::with_capacity(1024),
        up: BytesMut::with_capacity(READ_SIZE),
        lines: Vec::with_capacity(16),
        rlines: Vec::with_capacity(16),
    };
    // A head must start within `timeout` of the connection (or of the end of the
    // previous exchange), and be complete within `timeout` of its first byte. One timer
    // per connection, re-armed only when it fires (never per request).
    let mut deadline = Instant::now() + timeout;
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline.into()));
    loop {
        let mut started = false;
        let head = loop {
            if !b.inp.is_empty() {
                match parse::request(&b.inp, &mut b.lines) {
                    Ok(Some(h)) => break h,
                    Ok(None) if !started => {
                        started = true;
                        deadline = Instant::now() + timeout;
                    }
                    Ok(None) => {}
                    Err(HeadError::Malformed) => return Ended::Fallback(b.inp),
                    Err(HeadError::TooLarge) => {
                        let resp = plain(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "ferry-proxy: request head too large\n",
                        );
                        encode_answer(&mut b.out, &resp, false, true);
                        let _ = io.write_all(&b.out).await;
                        return Ended::Closed;
                    }
                }
            }
            if !read_head(io, &mut b.inp, conn, timer.as_mut(), deadline).await {
                return Ended::Closed;
            }
        };
        match exchange(io, &mut b, &head, conn).await {
            Next::KeepAlive(consumed) => b.inp.advance(consumed),
            Next::Close => return Ended::Closed,
            Next::Linger => {
                linger(io, &mut b.inp, conn).await;
                return Ended::Closed;
            }
            Next::Fallback => return Ended::Fallback(b.inp),
        }
        if conn.drain.draining.load(Ordering::Acquire) {
            return Ended::Closed;
        }
        deadline = Instant::now() + timeout;
    }
}

/// Reads more of a request head into `inp`; `false` when the connection is to close: the
/// client closed it, the head is late, or the listener drains between requests.
async fn read_head<I: Io>(
    io: &mut I,
    inp: &mut BytesMut,
    conn: &ConnCtx,
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
) -> bool {
    inp.reserve(READ_SIZE);
    std::future::poll_fn(|cx| {
        if inp.is_empty() && conn.drain.draining.load(Ordering::Acquire) {
            return Poll::Ready(false);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, inp) {
            Poll::Ready(Ok(n)) => return Poll::Ready(n > 0),
            Poll::Ready(Err(_)) => return Poll::Ready(false),
            Poll::Pending => {}
        }
        // The timer may be set for an earlier head: then it is moved to this one's.
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(false);
            }
            timer.as_mut().reset(deadline.into());
        }
        Poll::Pending
    })
    .await
}

/// Closes a connection whose request body was (partly) left unread, after its answer:
/// sends FIN, then reads and drops what the client still sends, until it closes, stays
/// silent for [`LINGER_IDLE`], [`LINGER_TIME`] passes or the listener drains. Closing at
/// once would make the kernel reset the connection, and a client still sending could lose
/// the answer.
async fn linger<I: Io>(io: &mut I, buf: &mut BytesMut, conn: &ConnCtx) {
    if io.shutdown().await.is_err() {
        return;
    }
    let end = Instant::now() + LINGER_TIME;
    let mut timer = std::pin::pin!(tokio::time::sleep(LINGER_IDLE));
    std::future::poll_fn(|cx| {
        loop {
            if conn.drain.draining.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            buf.clear();
            buf.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
                Poll::Ready(Ok(n)) if n > 0 => {
                    let next = (Instant::now() + LINGER_IDLE).min(end);
                    timer.as_mut().reset(next.into());
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => {
                    return match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    })
    .await;
}

enum Next {
    /// The exchange is over; the request took this many bytes of the input buffer.
    KeepAlive(usize),
    Close,
    /// Close after a lingering read: the request's body was not read (in full).
    Linger,
    Fallback,
}

/// The request id: the client's `X-Request-Id`, else a new one.
enum Rid {
    Given(Range<usize>),
    New([u8; 32]),
}

impl Rid {
    fn bytes<'a>(&'a self, inp: &'a [u8]) -> &'a [u8] {
        match self {
            Rid::Given(r) => &inp[r.clone()],
            Rid::New(b) => b,
        }
    }

    fn header(&self, inp: &[u8]) -> HeaderValue {
        HeaderValue::from_bytes(self.bytes(inp)).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// How an answer ends the exchange: whether its head is all (HEAD), whether the
/// connection closes after it, and how many input bytes the request took (`None`: its
/// body was not read, so the connection closes).
struct Reply<'a> {
    head_only: bool,
    close: bool,
    consumed: Option<usize>,
    hsts: Option<&'a HeaderValue>,
}

/// Writes a local answer (an error, a redirect) and ends the exchange.
async fn answer<I: Io>(
    io: &mut I,
    out: &mut Vec<u8>,
    mut resp: Response<ProxyBody>,
    r: &Reply<'_>,
) -> Next {
    if let Some(hsts) = r.hsts {
        resp.headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    let close = r.close || r.consumed.is_none() || resp.headers().contains_key(header::CONNECTION);
    encode_answer(out, &resp, r.head_only, close);
    match (io.write_all(out).await, r.consumed) {
        (Ok(()), Some(n)) if !close => Next::KeepAlive(n),
        (Ok(()), None) => Next::Linger,
        _ => Next::Close,
    }
}

fn plain(status: StatusCode, msg: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(msg));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, TEXT_PLAIN.clone());
    resp
}

/// HTTP/1.1 bytes of a local answer (with a full body).
fn encode_answer(out: &mut Vec<u8>, resp: &Response<ProxyBody>, head_only: bool, close: bool) {
    let status = resp.status();
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    push_header(out, b"date", &http_date());
    for (n, v) in resp.headers() {
        push_header(out, n.as_str().as_bytes(), v.as_bytes());
    }
    let body: &[u8] = match resp.body() {
        ProxyBody::Full(Some(b)) => b,
        _ => &[],
    };
    push_header(out, b"content-length", body.len().to_string().as_bytes());
    if close && !resp.headers().contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

#[inline]
fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why an exchange with an upstream failed.
enum UpErr {
    /// Closed (or reset) before a byte of the response: on a pooled connection, the
    /// upstream had closed it.
    Closed,
    /// Failed after part of the response, or sent something that is not HTTP/1.x.
    Failed,
    /// The client's streamed request body failed.
    Client(ClientFault),
}

/// The body of a response, as it is read.
enum BodyKind {
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes (the client connection closes after it).
    UntilClose,
}

impl BodyKind {
    /// Of `data` (the next bytes from the upstream), how many belong to the body, and
    /// whether the body is complete after them.
    fn take(&mut self, data: &[u8]) -> Result<(usize, bool), parse::BadChunk> {
        match self {
            BodyKind::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            BodyKind::Chunked(c) => Ok(match c.feed(data)? {
                Some(n) => (n, true),
                None => (data.len(), false),
            }),
            BodyKind::UntilClose => Ok((data.len(), false)),
        }
    }
}

/// One request: routed, sent upstream (with retries), answered.
async fn exchange<I: Io>(io: &mut I, b: &mut Bufs, head: &ReqHead, conn: &ConnCtx) -> Next {
    let start = Instant::now();
    let opts = &conn.listener.shared.opts;
    let hl = HeadLines {
        buf: &b.inp[..head.len],
        lines: &b.lines,
    };
    let method = &b.inp[head.method.clone()];
    let head_only = method == b"HEAD";
    let mut reply = Reply {
        head_only,
        close: false,
        consumed: Some(head.len),
        hsts: None,
    };
    let f = match parse::framing(hl) {
        Ok(f) => f,
        Err(e) => {
            reply.close = true;
            let resp = plain(StatusCode::BAD_REQUEST, e.message());
            return answer(io, &mut b.out, resp, &reply).await;
        }
    };
    reply.close = f.close;
    if f.hosts > 1 {
        reply.close = true;
        let resp = plain(
            StatusCode::BAD_REQUEST,
            "ferry-proxy: a request may have only one Host\n",
        );
        return answer(io, &mut b.out, resp, &reply).await;
    }
    let target = &b.inp[head.target.clone()];
    let path_end = target
        .iter()
        .position(|c| *c == b'?')
        .unwrap_or(target.len());
    let (Ok(path), Some(Ok(host))) = (
        std::str::from_utf8(&target[..path_end]),
        hl.all(b"host").next().map(std::str::from_utf8),
    ) else {
        return Next::Fallback;
    };
    if head.minor != 1
        || f.upgrade
        || f.expect == Expect::Other
        || (f.transfer_encoding && !f.chunked_only)
        || f.hosts != 1
        || !path.starts_with('/')
    {
        return Next::Fallback;
    }
    let chunked = f.transfer_encoding;
    let rid = match hl.all(b"x-request-id").next() {
        Some(v) if !v.is_empty() => Rid::Given(parse::range_of(&b.inp, v)),
        _ => Rid::New(new_request_id_bytes()),
    };
    let body_len = f.content_length.unwrap_or(0);
    let has_body = chunked || body_len > 0;
    if has_body {
        // Answered before its body is read, a request closes the connection.
        reply.consumed = None;
    }

    let sites = conn.listener.table.load_full();
    let Some(table) = sites.site(|| Some(host_of(host))) else {
        let resp = unknown_host(&sites, Some(host_of(host)), rid.header(&b.inp));
        return answer(io, &mut b.out, resp, &reply).await;
    };
    reply.hsts = table.hsts.as_ref();
    let mut line = AccessLine::start(table, || Logged {
        host: Some(host.into()),
        method: String::from_utf8_lossy(method).into(),
        path: path.into(),
        protocol: "HTTP/1.1",
        request_id: String::from_utf8_lossy(rid.bytes(&b.inp)).into(),
    });
    if let Some(port) = table.redirect_https {
        let uri = Uri::try_from(target).unwrap_or_default();
        let resp = redirect_https(Some(host_of(host)), port, &uri, rid.header(&b.inp));
        table
            .unrouted_stats
            .record(resp.status().as_u16(), std::time::Duration::ZERO);
        line.finish(resp.status().as_u16());
        return answer(io, &mut b.out, resp, &reply).await;
    }
    let route = table.route_for(path);
    if let Some(r) = route {
        line.served.stats = Some(&r.no_backend_stats);
    }
    let Some(route) = route.filter(|r| r.has_backends()) else {
        let resp = unrouted(table, route, path, start, rid.header(&b.inp));
        line.finish(resp.status().as_u16());
        return answer(io, &mut b.out, resp, &reply).await;
    };
    let preferred = route.choose_group(&hl, conn.local_client);
    let preferred_stats = &route.groups[preferred.min(route.groups.len() - 1)].stats;
    line.served.stats = Some(preferred_stats);
    let upstream_timeout = route.upstream_timeout.unwrap_or(opts.upstream_timeout);
    let idempotent = matches!(
        method,
        b"GET" | b"HEAD" | b"PUT" | b"DELETE" | b"OPTIONS" | b"TRACE"
    );
    let target = head.target.clone();
    let method = head.method.clone();

    if f.expect == Expect::Continue && has_body && b.inp.len() == head.len {
        // The client waits before it sends the body: the proxy reads it now.
        if io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
        {
            return Next::Close;
        }
    }
    // Small bodies are read whole first, so that the request can be sent again.
    let buffered = !chunked && body_len <= opts.max_buffered_body as u64;
    if buffered && body_len > 0 {
        let want = head.len + body_len as usize;
        if let Err(fault) = read_body(io, &mut b.inp, want, opts.header_read_timeout).await {
            let resp = client_fault_answer(preferred_stats, fault, rid.header(&b.inp));
            line.finish(resp.status().as_u16());
            return answer(io, &mut b.out, resp, &reply).await;
        }
        reply.consumed = Some(want);
    }

    // The upstream request: the client's lines, minus hop-by-hop ones, plus forwarding.
    {
        let hl = HeadLines {
            buf: &b.inp[..head.len],
            lines: &b.lines,
        };
        let token = route.preview_token_header().map(|n| n.as_str().as_bytes());
        let out = &mut b.out;
        out.clear();
        out.extend_from_slice(&b.inp[method]);
        out.push(b' ');
        out.extend_from_slice(&b.inp[target]);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut host_value: &[u8] = b"";
        let mut xff = false;
        for (n, v) in hl.iter() {
            match classify(n) {
                Name::HopByHop | Name::Forwarded | Name::RequestId | Name::Expect => continue,
                Name::ForwardedFor => {
                    // Joined into one line below, with the client's address.
                    xff = true;
                    continue;
                }
                Name::Host => host_value = v,
                Name::Hsts | Name::Date | Name::FerryFlags => {}
                Name::Other => {
                    if parse::listed(n, hl, &f) || token.is_some_and(|t| n.eq_ignore_ascii_case(t))
                    {
                        continue;
                    }
                }
            }
            push_header(out, n, v);
        }
        push_header(out, b"x-forwarded-host", host_value);
        out.extend_from_slice(b"x-forwarded-for: ");
        if xff {
            for v in hl.all(b"x-forwarded-for") {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(conn.client_ip.as_bytes());
        out.extend_from_slice(b"\r\n");
        push_header(
            out,
            b"x-forwarded-proto",
            if conn.tls { b"https" } else { b"http" },
        );
        push_header(out, b"x-request-id", rid.bytes(&b.inp));
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if buffered {
            out.extend_from_slice(&b.inp[head.len..head.len + body_len as usize]);
        }
    }

    let mut tried = Tried::default();
    let mut now = LazyNow::default();
    let mut stale_retry_used = false;
    let mut last_stats = None;
    let mut failure: Option<&'static str> = None;
    for _ in 0..MAX_ATTEMPTS {
        let Some((gi, ei)) = route.pick(preferred, &tried, &mut now) else {
            break;
        };
        let group = &route.groups[usize::from(gi)];
        let ep = &group.endpoints[usize::from(ei)];
        line.served.stats = Some(&group.stats);
        line.served.upstream = Some(ep.addr);
        let waiting = Waiting::new(&conn.waiting);
        let mut c = match ep.raw.checkout(conn.worker, start, opts.pool_idle_timeout) {
            Some(c) => c,
            None => match connect_tcp(ep.addr, opts.connect_timeout).await {
                Ok(io) => Box::new(RawConn {
                    io,
                    since: Instant::now(),
                    uses: 0,
                }),
                Err(e) => {
                    tracing::debug!(upstream = %ep.addr, error = %e, "connect failed; ejecting");
                    let ms = i64::try_from(opts.ejection.as_millis()).unwrap_or(i64::MAX / 2);
                    ep.eject(now_ms().saturating_add(ms));
                    tried.add((gi, ei));
                    failure = Some("could not connect to any upstream");
                    continue;
                }
            },
        };
        let reused = c.uses > 0;
        c.uses += 1;
        let guard = InFlight::new(ep.clone(), group.stats.clone());
        last_stats = Some(&group.stats);
        let sent = if buffered {
            let send = tokio::time::timeout(
                upstream_timeout,
                send_buffered(&mut c.io, &b.out, &mut b.up, &mut b.rlines),
            );
            let send = async { send.await.map(|r| r.map(|h| (h, true))) };
            tokio::select! {
                biased;
                r = send => Some(r),
                () = client_gone(io, &mut b.inp) => None,
            }
        } else {
            let body = Streamed {
                client: io,
                inp: &mut b.inp,
                head_len: head.len,
                kind: if chunked {
                    BodyKind::Chunked(Chunked::default())
                } else {
                    BodyKind::Length(body_len)
                },
                read_timeout: opts.header_read_timeout,
            };
            let send = send_streamed(&mut c.io, &b.out, body, &mut b.up, &mut b.rlines);
            Some(tokio::time::timeout(upstream_timeout, send).await)
        };
        drop(waiting);
        let rh = match sent {
            None => {
                // The client went away while its request waited: its fault (499 in the
                // access log, when the line is dropped).
                group.stats.record_client_error();
                return Next::Close;
            }
            Some(Err(_elapsed)) => {
                drop(guard);
                // A streamed body was cut: the connection cannot carry another request.
                reply.close |= !buffered;
                let resp = local_answer(
                    &group.stats,
                    start,
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("ferry-proxy: upstream {} timed out\n", ep.addr),
                    rid.header(&b.inp),
                );
                line.finish(resp.status().as_u16());
                return answer(io, &mut b.out, resp, &reply).await;
            }
            Some(Ok(Err(UpErr::Client(fault)))) => {
                let resp = client_fault_answer(&group.stats, fault, rid.header(&b.inp));
                line.finish(resp.status().as_u16());
                return answer(io, &mut b.out, resp, &reply).await;
            }
            Some(Ok(Err(UpErr::Closed)))
                if reused && buffered && idempotent && !stale_retry_used =>
            {
                tracing::debug!(upstream = %ep.addr, "stale pooled connection; retrying");
                stale_retry_used = true;
                failure = Some("upstream closed the connection");
                continue;
            }
            Some(Ok(Err(_))) => {
                tracing::debug!(upstream = %ep.addr, "upstream request failed");
                failure = Some("upstream request failed");
                reply.close |= !buffered;
                break;
            }
            Some(Ok(Ok(rh))) => rh,
        };
        let (rh, whole) = rh;
        if !whole {
            // Answered before the whole body went: the rest is not read, and the
            // upstream connection (half a request on it) is not used again.
            let _ = c.io.shutdown().await;
        } else if !buffered {
            // The body went through; what follows it in the buffer is pipelined.
            reply.consumed = Some(head.len);
        }

        // The response head, copied for the client.
        let status = rh.status;
        let rl = HeadLines {
            buf: &b.up[..rh.len],
            lines: &b.rlines,
        };
        let rf = match parse::framing(rl) {
            Ok(rf) => rf,
            Err(_) => {
                failure = Some("upstream sent a malformed response");
                break;
            }
        };
        let mut kind = if head_only || status < 200 || status == 204 || status == 304 {
            BodyKind::Length(0)
        } else if rf.transfer_encoding {
            if rf.chunked {
                BodyKind::Chunked(Chunked::default())
            } else {
                BodyKind::UntilClose
            }
        } else if let Some(n) = rf.content_length {
            BodyKind::Length(n)
        } else {
            BodyKind::UntilClose
        };
        let until_close = matches!(kind, BodyKind::UntilClose);
        let mut reuse = whole && !until_close && !rf.close && (rh.minor == 1 || rf.keep_alive);
        let close = reply.close
            || until_close
            || reply.consumed.is_none()
            || conn.drain.draining.load(Ordering::Relaxed);
        let out = &mut b.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(itoa3(status).as_slice());
        out.push(b' ');
        out.extend_from_slice(&b.up[rh.reason.clone()]);
        out.extend_from_slice(b"\r\n");
        let mut dated = false;
        let mut flagged = false;
        for (n, v) in rl.iter() {
            match classify(n) {
                Name::HopByHop | Name::RequestId => continue,
                Name::FerryFlags => {
                    flagged = true;
                    continue;
                }
                Name::Hsts if reply.hsts.is_some() => continue,
                Name::Other if parse::listed(n, rl, &rf) => continue,
                Name::Date => dated = true,
                _ => {}
            }
            push_header(out, n, v);
        }
        if !dated {
            push_header(out, b"date", &http_date());
        }
        if matches!(kind, BodyKind::Chunked(_)) {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        push_header(out, b"x-request-id", rid.bytes(&b.inp));
        if let Some(hsts) = reply.hsts {
            push_header(out, b"strict-transport-security", hsts.as_bytes());
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let elapsed = start.elapsed();
        group.stats.record(status, elapsed);
        if flagged {
            let lines: Vec<&[u8]> = rl.all(b"ferry-flags").collect();
            group.stats.flags.record(&lines, status, elapsed);
        }
        line.finish(status);

        // The body: what came with the head, then the rest as it arrives.
        let mut at = rh.len;
        let mut up = Some((c, guard));
        loop {
            let data = &b.up[at..];
            let Ok((n, complete)) = kind.take(data) else {
                tracing::debug!(upstream = %ep.addr, "malformed chunked response body");
                return Next::Close;
            };
            if n < data.len() {
                // More than the response: the upstream is not to be trusted again.
                reuse = false;
            }
            if complete && let Some((c, guard)) = up.take() {
                // The replica's part is over: out of flight (and its connection back in
                // the pool) before the client sees the end.
                drop(guard);
                if reuse {
                    ep.raw.checkin(conn.worker, c);
                }
            }
            let written = if b.out.is_empty() {
                io.write_all(&data[..n]).await
            } else {
                // The head, with the first body bytes: one write.
                b.out.extend_from_slice(&data[..n]);
                let w = io.write_all(&b.out).await;
                b.out.clear();
                w
            };
            if written.is_err() {
                // The client went away during the body.
                return Next::Close;
            }
            let Some((c, _)) = up.as_mut() else {
                break;
            };
            b.up.clear();
            b.up.reserve(READ_SIZE);
            match c.io.read_buf(&mut b.up).await {
                Ok(0) if until_close => break,
                Ok(0) | Err(_) => {
                    tracing::debug!(upstream = %ep.addr, "upstream response body cut short");
                    return Next::Close;
                }
                Ok(_) => at = 0,
            }
        }
        return match reply.consumed {
            Some(n) if !close => Next::KeepAlive(n),
            None => Next::Linger,
            Some(_) => Next::Close,
        };
    }
    let stats = last_stats.unwrap_or(preferred_stats);
    let path = path_of(&b.inp, &head.target);
    let resp = unanswered(table, stats, failure, path, start, rid.header(&b.inp));
    line.finish(resp.status().as_u16());
    answer(io, &mut b.out, resp, &reply).await
}

fn path_of<'a>(inp: &'a [u8], target: &Range<usize>) -> &'a str {
    let t = &inp[target.clone()];
    let end = t.iter().position(|c| *c == b'?').unwrap_or(t.len());
    std::str::from_utf8(&t[..end]).unwrap_or("/")
}

/// Three decimal digits of a status code.
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// Reads a buffered request body until `inp` holds `want` bytes.
async fn read_body<I: Io>(
    io: &mut I,
    inp: &mut BytesMut,
    want: usize,
    timeout: std::time::Duration,
) -> Result<(), ClientFault> {
    let read = async {
        while inp.len() < want {
            inp.reserve(want - inp.len());
            match io.read_buf(inp).await {
                Ok(0) | Err(_) => return Err(ClientFault::Aborted),
                Ok(_) => {}
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ClientFault::Stalled))
}

/// Resolves when the client closes its connection while its request waits on an
/// upstream; keeps what it pipelines meanwhile (up to a bound, then stops reading).
async fn client_gone<I: Io>(io: &mut I, inp: &mut BytesMut) {
    loop {
        if inp.len() >= MAX_PIPELINED {
            return std::future::pending().await;
        }
        inp.reserve(4096);
        match io.read_buf(inp).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Sends a request whose body (if any) is in `out`, and reads the response head.
async fn send_buffered(
    up: &mut TcpStream,
    out: &[u8],
    rbuf: &mut BytesMut,
    rlines: &mut Vec<Line>,
) -> Result<RespHead, UpErr> {
    up.write_all(out).await.map_err(|_| UpErr::Closed)?;
    read_response(up, rbuf, rlines).await
}

/// A request body not buffered (too large, or chunked), copied from the client as it
/// arrives.
struct Streamed<'a, I> {
    client: &'a mut I,
    /// Holds the head, then any body bytes read with it (moved out) and pipelined ones.
    inp: &'a mut BytesMut,
    head_len: usize,
    kind: BodyKind,
    read_timeout: Duration,
}

impl<I: Io> Streamed<'_, I> {
    /// Copies the body to `up`: what came with the head, then the rest as it arrives
    /// (what follows it is kept in `inp`, pipelined). `UpErr::Failed` when the upstream
    /// stops taking it.
    async fn copy<W: AsyncWrite + Unpin>(
        &mut self,
        up: &mut W,
        chunk: &mut BytesMut,
    ) -> Result<(), UpErr> {
        let malformed = |_| UpErr::Client(ClientFault::Malformed);
        let have = &self.inp[self.head_len..];
        let (n, mut done) = self.kind.take(have).map_err(malformed)?;
        if n > 0 {
            up.write_all(&have[..n]).await.map_err(|_| UpErr::Failed)?;
            let rest = self.inp.split_off(self.head_len + n);
            self.inp.truncate(self.head_len);
            self.inp.extend_from_slice(&rest);
        }
        while !done {
            chunk.clear();
            chunk.reserve(READ_SIZE);
            let read = tokio::time::timeout(self.read_timeout, self.client.read_buf(chunk)).await;
            let got = match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Err(UpErr::Client(ClientFault::Aborted)),
                Ok(Ok(got)) => got,
                Err(_) => return Err(UpErr::Client(ClientFault::Stalled)),
            };
            let (n, complete) = self.kind.take(&chunk[..got]).map_err(malformed)?;
            up.write_all(&chunk[..n]).await.map_err(|_| UpErr::Failed)?;
            // Pipelined after the body: kept for its turn.
            self.inp.extend_from_slice(&chunk[n..got]);
            done = complete;
        }
        Ok(())
    }
}

/// Sends a request head, then its body from the client while reading the response head;
/// `true` with the head when the whole body went first (else the upstream answered
/// early, and the rest of the body is not read).
async fn send_streamed<I: Io>(
    up: &mut TcpStream,
    head: &[u8],
    mut body: Streamed<'_, I>,
    rbuf: &mut BytesMut,
    rlines: &mut Vec<Line>,
) -> Result<(RespHead, bool), UpErr> {
    up.write_all(head).await.map_err(|_| UpErr::Closed)?;
    let (mut rd, mut wr) = up.split();
    let mut chunk = BytesMut::new();
    let mut copy = std::pin::pin!(body.copy(&mut wr, &mut chunk));
    let mut read = std::pin::pin!(read_response(&mut rd, rbuf, rlines));
    let mut copying = true;
    let mut whole = false;
    loop {
        tokio::select! {
            biased;
            r = &mut read => return r.map(|h| (h, whole)),
            c = &mut copy, if copying => {
                copying = false;
                match c {
                    Ok(()) => whole = true,
                    Err(UpErr::Client(fault)) => return Err(UpErr::Client(fault)),
                    // The upstream stopped reading: its answer may be on the way.
                    Err(_) => {}
                }
            }
        }
    }
}

/// Reads a response head (skipping interim 1xx answers) into `rbuf`.
async fn read_response<R: AsyncRead + Unpin>(
    up: &mut R,
    rbuf: &mut BytesMut,
    rlines: &mut Vec<Line>,
) -> Result<RespHead, UpErr> {
    rbuf.clear();
    let mut any = false;
    loop {
        if !rbuf.is_empty() {
            match parse::response(rbuf, rlines) {
                Ok(Some(h)) if h.status == 101 => return Err(UpErr::Failed),
                Ok(Some(h)) if h.status < 200 => {
                    rbuf.advance(h.len);
                    continue;
                }
                Ok(Some(h)) => return Ok(h),
                Ok(None) => {}
                Err(_) => return Err(UpErr::Failed),
            }
        }
        rbuf.reserve(READ_SIZE);
        match up.read_buf(rbuf).await {
            Ok(0) | Err(_) if !any => return Err(UpErr::Closed),
            Ok(0) | Err(_) => return Err(UpErr::Failed),
            Ok(_) => any = true,
        }
    }
}

/// A client connection given to hyper after the fast path read from it: what was read
/// comes first.
pub(super) struct Prefixed<I> {
    io: I,
    read: BytesMut,
}

impl<I> Prefixed<I> {
    pub(super) fn new(io: I, read: BytesMut) -> Self {
        Self { io, read }
    }
}

impl<I: Io> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: Io> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
