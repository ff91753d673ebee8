//! Upstream HTTP/1.1 connections: pooled per endpoint and per worker thread, and driven
//! inside the task of the client request that uses them.
//!
//! hyper's connection future is polled by the request's own task (while waiting for the
//! response head, then by the response body as the client side reads it), so a proxied
//! request costs no cross-task wake-up, no spawned task and no shared pool lock. An idle
//! connection is not polled; it is checked (polled once with a no-op waker, which reads a
//! pending EOF) when it is taken out of the pool, and a reaper drops the expired and
//! closed ones in the background.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The body of a request sent upstream.
#[derive(Debug)]
pub(crate) enum ReqBody {
    Full(Option<Bytes>),
    Stream(ClientBody),
}

/// What a client did wrong, when a request failed because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// Malformed framing (e.g. a bad chunk size): 400.
    Malformed,
    /// The body stopped arriving: 408.
    Stalled,
    /// The client closed or reset its connection: 499.
    Aborted,
}

impl ClientFault {
    /// Classifies an error reading the client's request body.
    pub fn of(e: &hyper::Error) -> Self {
        if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
            return ClientFault::Aborted;
        }
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe => ClientFault::Aborted,
                    std::io::ErrorKind::TimedOut => ClientFault::Stalled,
                    _ => ClientFault::Malformed,
                };
            }
            if let Some(h2) = s.downcast_ref::<hyper::Error>()
                && (h2.is_incomplete_message() || h2.is_canceled())
            {
                return ClientFault::Aborted;
            }
            src = s.source();
        }
        ClientFault::Malformed
    }

    pub fn status(self) -> http::StatusCode {
        match self {
            ClientFault::Malformed => http::StatusCode::BAD_REQUEST,
            ClientFault::Stalled => http::StatusCode::REQUEST_TIMEOUT,
            // nginx's "client closed request"; nobody reads it, but logs and tests do.
            ClientFault::Aborted => {
                http::StatusCode::from_u16(499).unwrap_or(http::StatusCode::BAD_REQUEST)
            }
        }
    }
}

const BODY_READING: u8 = 0;
const BODY_DONE: u8 = 1;
const BODY_MALFORMED: u8 = 2;
const BODY_ABORTED: u8 = 3;

/// A client's request body streamed upstream, which remembers how it ended so that a
/// failed exchange is blamed on the right side.
#[derive(Debug)]
pub(crate) struct ClientBody {
    inner: Incoming,
    state: Arc<AtomicU8>,
}

/// How a [`ClientBody`] ended, readable after the body moved into the upstream request.
#[derive(Debug, Clone)]
pub(crate) struct ClientBodyState(Arc<AtomicU8>);

impl ClientBody {
    pub fn new(inner: Incoming) -> (Self, ClientBodyState) {
        let state = Arc::new(AtomicU8::new(BODY_READING));
        (
            Self {
                inner,
                state: state.clone(),
            },
            ClientBodyState(state),
        )
    }
}

impl ClientBodyState {
    /// The client's fault if its body failed, or had not ended when the exchange did.
    pub fn fault(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Acquire) {
            BODY_DONE => None,
            BODY_MALFORMED => Some(ClientFault::Malformed),
            BODY_ABORTED => Some(ClientFault::Aborted),
            _ => Some(ClientFault::Stalled),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(None) => this.state.store(BODY_DONE, Ordering::Release),
            Poll::Ready(Some(Err(e))) => {
                let s = match ClientFault::of(e) {
                    ClientFault::Malformed => BODY_MALFORMED,
                    ClientFault::Stalled | ClientFault::Aborted => BODY_ABORTED,
                };
                this.state.store(s, Ordering::Release);
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        // hyper may stop polling once the last byte arrived, without the final `None`.
        let end = self.inner.is_end_stream();
        if end {
            let _ = self.state.compare_exchange(
                BODY_READING,
                BODY_DONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream(inner) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(None) => SizeHint::with_exact(0),
            ReqBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ReqBody::Stream(inner) => inner.size_hint(),
        }
    }
}

type Connection = http1::Connection<TokioIo<TcpStream>, ReqBody>;

/// One upstream connection: the sending half and the connection state machine.
pub(crate) struct Conn {
    tx: http1::SendRequest<ReqBody>,
    conn: Connection,
    /// When it was put back into the pool (or opened).
    since: Instant,
    /// Requests already sent on it.
    pub uses: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("uses", &self.uses).finish()
    }
}

impl Conn {
    /// Lets the connection make progress without a task to wake: reads a pending EOF
    /// or moves a finished exchange back to idle. `false` once it has ended.
    fn poll_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.conn).poll(&mut cx).is_pending()
    }

    /// Reusable for another request right now.
    fn reusable(&mut self) -> bool {
        if !self.poll_idle() {
            return false;
        }
        self.tx.is_ready()
    }

    /// Drives the connection from the current task; `true` once it has ended.
    #[inline]
    pub fn poll_conn(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.conn).poll(cx).is_ready()
    }

    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }
}

/// Opens a TCP connection to `addr` (TCP_NODELAY) within `timeout`.
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ));
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a hyper client connection to `addr` within `timeout`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Box<Conn>> {
    let stream = connect_tcp(addr, timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    Ok(Box::new(Conn {
        tx,
        conn,
        since: Instant::now(),
        uses: 0,
    }))
}

/// Sends `req` on `c`, driving the connection from this task until the response head
/// arrives. Returns the connection too unless it ended (then it cannot be reused; any
/// body already received stays readable in the response).
pub(crate) async fn send(
    mut c: Box<Conn>,
    req: Request<ReqBody>,
) -> (
    Result<Response<Incoming>, TrySendError<Request<ReqBody>>>,
    Option<Box<Conn>>,
) {
    c.uses += 1;
    let mut fut = std::pin::pin!(c.tx.try_send_request(req));
    let mut alive = Some(c);
    let res = poll_fn(|cx| {
        if let Some(c) = alive.as_mut()
            && c.poll_conn(cx)
        {
            // Ended: dropping it resolves the request with an error (or with the
            // response it already delivered).
            alive = None;
        }
        // The response is only ever delivered while the connection is polled just above,
        // in this task: the receiver needs no waker of its own (one would re-schedule
        // this task for nothing after every response).
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    })
    .await;
    (res, alive)
}

/// An idle upstream connection: how long it has been idle, and whether it can carry
/// another request (checked once, when it is taken out of the pool).
pub(crate) trait Pooled {
    fn since(&self) -> Instant;
    fn set_since(&mut self, at: Instant);
    /// Lets the connection notice a close without a task to wake; `false` once it has
    /// ended (or cannot carry a request).
    fn alive(&mut self) -> bool;
}

impl Pooled for Conn {
    fn since(&self) -> Instant {
        self.since
    }
    fn set_since(&mut self, at: Instant) {
        self.since = at;
    }
    fn alive(&mut self) -> bool {
        self.reusable()
    }
}

/// Boxed on purpose: a connection (hyper's state machine and buffers) moves between the
/// pool and the response body of each request it serves; a box moves as one pointer.
#[allow(clippy::vec_box)]
type Stack<T> = Vec<Box<T>>;

/// Idle connections of one endpoint, one stack per worker thread (most recently used on
/// top, so a light load keeps a few connections warm and the rest expire).
#[derive(Debug)]
pub(crate) struct IdlePool<T> {
    slots: Box<[Mutex<Stack<T>>]>,
    max_idle: usize,
}

impl<T: Pooled> IdlePool<T> {
    pub fn new(workers: usize, max_idle: usize) -> Self {
        Self {
            slots: (0..workers.max(1))
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            max_idle,
        }
    }

    fn slot(&self, worker: usize) -> std::sync::MutexGuard<'_, Stack<T>> {
        let m = &self.slots[worker % self.slots.len()];
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// A live connection idle for less than `idle_timeout`, if any: the one place a
    /// pooled connection's liveness is probed.
    pub fn checkout(&self, worker: usize, now: Instant, idle_timeout: Duration) -> Option<Box<T>> {
        loop {
            let mut c = self.slot(worker).pop()?;
            if now.saturating_duration_since(c.since()) < idle_timeout && c.alive() {
                return Some(c);
            }
            // Dropped outside the lock: closes the socket.
        }
    }

    /// Puts a connection back after its exchange completed cleanly. Not probed here: it
    /// is, once, when taken out again (or by the reaper).
    pub fn checkin(&self, worker: usize, mut c: Box<T>) {
        if self.max_idle == 0 {
            return;
        }
        c.set_since(Instant::now());
        let evicted = {
            let mut slot = self.slot(worker);
            // Full: the oldest goes (closed outside the lock).
            let evicted = (slot.len() >= self.max_idle).then(|| slot.remove(0));
            slot.push(c);
            evicted
        };
        drop(evicted);
    }

    /// Drops expired and closed idle connections; returns how many are left.
    pub fn reap(&self, now: Instant, idle_timeout: Duration) -> usize {
        let mut left = 0;
        for w in 0..self.slots.len() {
            let dead: Vec<Box<T>> = {
                let mut slot = self.slot(w);
                let all = std::mem::take(&mut *slot);
                let (keep, dead): (Vec<_>, Vec<_>) = all
                    .into_iter()
                    .partition(|c| now.saturating_duration_since(c.since()) < idle_timeout);
                *slot = keep;
                let mut dead = dead;
                let mut i = 0;
                while i < slot.len() {
                    if slot[i].alive() {
                        i += 1;
                    } else {
                        dead.push(slot.remove(i));
                    }
                }
                left += slot.len();
                dead
            };
            drop(dead);
        }
        left
    }
}
