//! One response body type for proxied and local answers, so the hot path boxes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::KeyStats;
use crate::table::Endpoint;
use crate::upstream::Conn;

/// Keeps an endpoint's and a version's in-flight count raised until dropped (i.e. until
/// the response body has been sent or abandoned).
#[derive(Debug)]
pub(crate) struct InFlight {
    pub endpoint: Arc<Endpoint>,
    stats: Arc<KeyStats>,
}

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>, stats: Arc<KeyStats>) -> Self {
        endpoint.start();
        stats.start();
        Self { endpoint, stats }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.finish();
        self.stats.finish();
    }
}

/// An upstream response body, with the connection it arrives on: polling the body drives
/// the connection, and once the body is complete the connection goes back to its
/// endpoint's idle pool (of worker `worker`).
#[derive(Debug)]
pub(crate) struct UpstreamBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    worker: usize,
    done: bool,
    guard: InFlight,
}

impl UpstreamBody {
    pub fn new(body: Incoming, conn: Option<Box<Conn>>, worker: usize, guard: InFlight) -> Self {
        Self {
            body,
            conn,
            worker,
            done: false,
            guard,
        }
    }

    fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = r {
            self.done = true;
        }
        r
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take()
            && (self.done || self.body.is_end_stream())
        {
            self.guard.endpoint.idle.checkin(self.worker, c);
        }
        // Otherwise the body was abandoned half-way: the connection closes.
    }
}

#[derive(Debug)]
pub(crate) enum ProxyBody {
    Full(Option<Bytes>),
    /// A proxied response body (with its in-flight guard, released when dropped).
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        if b.is_empty() {
            ProxyBody::Full(None)
        } else {
            ProxyBody::Full(Some(b))
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream(u) => {
                // Data reaches `body` only while the connection is polled, here in this
                // task, so the body channel is polled without a waker (one would
                // re-schedule this task for nothing after every chunk); the connection
                // registers the task's waker for the socket.
                let mut noop = Context::from_waker(Waker::noop());
                if let Poll::Ready(r) = u.poll_body(&mut noop) {
                    return Poll::Ready(r);
                }
                if let Some(c) = u.conn.as_mut()
                    && c.poll_conn(cx)
                {
                    // Ended (closed or failed): dropping it ends the body channel, so
                    // what it received stays readable and then the body ends.
                    u.conn = None;
                }
                u.poll_body(&mut noop)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Upstream(u) => u.done || u.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Upstream(u) => u.body.size_hint(),
        }
    }
}
