//! HTTP/1.1 protocol upgrades (WebSocket and the like): the request goes to one upstream
//! on a connection of its own (never the pool), and once both sides agreed to switch
//! protocols the two connections are joined byte for byte until either side closes.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

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

/// Sends `req` (which carries `Connection: upgrade` and `Upgrade:`) to `addr` on a new
/// connection and returns the upstream's answer. On `101 Switching Protocols` a task then
/// joins the client's connection (`client`) with the upstream's.
pub(crate) async fn forward(
    addr: SocketAddr,
    connect_timeout: Duration,
    response_timeout: Duration,
    req: Request<ReqBody>,
    client: OnUpgrade,
) -> Result<Response<Incoming>, TunnelError> {
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
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (client, upstream) = tokio::join!(client, upstream);
            match (client, upstream) {
                (Ok(client), Ok(upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                (client, upstream) => tracing::debug!(
                    upstream = %addr,
                    client_ok = client.is_ok(),
                    upstream_ok = upstream.is_ok(),
                    "protocol switch did not complete"
                ),
            }
        });
    }
    Ok(response)
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
