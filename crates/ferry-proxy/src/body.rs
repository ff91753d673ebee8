//! One body type for both directions, so the hot path boxes nothing.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::metrics::KeyStats;
use crate::table::Endpoint;

/// Keeps an endpoint's and a version's in-flight count raised until dropped (i.e. until
/// the response body has been sent or abandoned).
#[derive(Debug)]
pub(crate) struct InFlight {
    endpoint: Arc<Endpoint>,
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

#[derive(Debug)]
pub(crate) enum ProxyBody {
    Full(Option<Bytes>),
    /// An upstream or client body, with the in-flight guard released when it is dropped.
    Stream(Incoming, #[allow(dead_code)] Option<InFlight>),
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
            ProxyBody::Stream(inner, _) => Pin::new(inner).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Stream(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Stream(inner, _) => inner.size_hint(),
        }
    }
}
