//! HTTP/1.1 protocol upgrades (WebSocket and the like): the request goes to one upstream
//! on a connection of its own (never the pool), and once both sides agreed to switch
//! protocols the two connections are joined byte for byte until either side closes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::body::InFlight;
use crate::dataplane::DrainToken;
use crate::upstream::ReqBody;

pub(crate) static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade:` with `Connection: upgrade`).
pub(crate) fn requested_protocol(version: Version, headers: &HeaderMap) -> Option<HeaderValue> {
    if version != Version::HTTP_11 {
        return None;
    }
    let upgrade = headers.get(header::UPGRADE)?;
    let connection_says_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_says_upgrade.then(|| upgrade.clone())
}

/// What keeps an upgraded connection accounted for while its tunnel runs.
pub(crate) struct Held {
    /// The endpoint's and version's in-flight count.
    pub in_flight: InFlight,
    /// The listener's drain waits for the tunnel.
    pub _drain: DrainToken,
    /// Cancelled when the listener's drain is over: the tunnel closes.
    pub closed: CancellationToken,
    /// The tunnel closes after this long without a byte either way.
    pub idle_timeout: Duration,
}

/// Sends `req` (which carries `Connection: upgrade` and `Upgrade:`) to `addr` on a new
/// connection and returns the upstream's answer. On `101 Switching Protocols` a task then
/// joins the client's connection (`client`) with the upstream's, holding `held` until the
/// tunnel ends; otherwise `held` comes back for the response body to hold.
pub(crate) async fn forward(
    addr: SocketAddr,
    connect_timeout: Duration,
    response_timeout: Duration,
    req: Request<ReqBody>,
    client: OnUpgrade,
    held: Held,
) -> Result<(Response<Incoming>, Option<Held>), TunnelError> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| TunnelError::Connect("connect timed out".into()))?
        .map_err(|e| TunnelError::Connect(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| TunnelError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(upstream = %addr, error = %e, "upgrade connection ended with an error");
        }
    });
    let mut response = tokio::time::timeout(response_timeout, sender.send_request(req))
        .await
        .map_err(|_| TunnelError::Timeout)?
        .map_err(|e| TunnelError::Request(e.to_string()))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Ok((response, Some(held)));
    }
    let upstream = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, upstream);
        match (client, upstream) {
            (Ok(client), Ok(upstream)) => {
                let end = join(TokioIo::new(client), TokioIo::new(upstream), &held).await;
                tracing::debug!(upstream = %addr, ?end, "tunnel closed");
            }
            (client, upstream) => tracing::debug!(
                upstream = %addr,
                client_ok = client.is_ok(),
                upstream_ok = upstream.is_ok(),
                "protocol switch did not complete"
            ),
        }
        drop(held);
    });
    Ok((response, None))
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Either side closed (or failed).
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
    /// The listener's drain timed out.
    Drained,
}

/// Copies bytes both ways until one side closes, the tunnel stays idle for
/// `held.idle_timeout` (checked by one timer re-armed only when it fires), or the
/// listener's drain is over.
async fn join<A, B>(client: A, upstream: B, held: &Held) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicU64::new(0);
    let mut client = Counted {
        io: client,
        moved: &moved,
    };
    let mut upstream = Counted {
        io: upstream,
        moved: &moved,
    };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let mut copy = std::pin::pin!(copy);
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = &mut copy => return TunnelEnd::Closed,
            _ = held.closed.cancelled() => return TunnelEnd::Drained,
            _ = tokio::time::sleep(held.idle_timeout) => {
                let now = moved.load(Ordering::Relaxed);
                if now == seen {
                    return TunnelEnd::Idle;
                }
                seen = now;
            }
        }
    }
}

/// A stream that counts the reads and writes that moved bytes (for the idle timeout).
struct Counted<'a, T> {
    io: T,
    moved: &'a AtomicU64,
}

impl<T> Counted<'_, T> {
    fn bump(&self) {
        // One task moves both sides: no read-modify-write needed.
        let m = self.moved;
        m.store(m.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.bump();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.bump();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("upstream did not answer the upgrade in time")]
    Timeout,
    #[error("upgrade request failed: {0}")]
    Request(String),
}
