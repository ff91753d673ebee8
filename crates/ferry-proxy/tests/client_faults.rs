//! Who is to blame: a client's malformed, stalled or abandoned request never counts
//! against a version; the preview header is not open to the network; connections that
//! send nothing or go idle are closed. Real sockets on loopback, raw bytes where a
//! well-behaved client library would refuse to misbehave.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proxy::routes::{BackendGroup, ListenerConfig, PreviewRule, Route, RouteTable};
use ferry_proxy::stats::{StatsSnapshot, VersionStats};
use ferry_proxy::{ProxyOptions, RunningProxy, spawn_for_test_with};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

/// An upstream that reads the whole request body, then answers 200 with its name.
async fn upstream(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let got = req.into_body().collect().await.map(|b| b.to_bytes().len());
                let status = if got.is_ok() { 200 } else { 400 };
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("x-upstream", name)
                        .body(Full::new(Bytes::from_static(name.as_bytes())))
                        .unwrap(),
                )
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

fn free_port(ip: [u8; 4]) -> SocketAddr {
    std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// canary `v2` (weight 0, reachable by preview header) and stable `v1`.
fn canary_table(listen: SocketAddr, canary: SocketAddr, stable: SocketAddr) -> RouteTable {
    RouteTable {
        generation: 1,
        listeners: vec![ListenerConfig {
            id: "shop/prod".into(),
            hosts: vec![],
            tls: None,
            redirect_https: None,
            access_log: None,
            listen,
            routes: vec![Route {
                service: "api".into(),
                path_prefix: "/".into(),
                backends: vec![
                    BackendGroup {
                        version: "v2".into(),
                        weight: 0,
                        endpoints: vec![canary],
                    },
                    BackendGroup {
                        version: "v1".into(),
                        weight: 10_000,
                        endpoints: vec![stable],
                    },
                ],
                preview: Some(PreviewRule {
                    header: "X-Ferry-Preview".into(),
                    version: "v2".into(),
                    token_sha256: None,
                }),
                sticky: None,
                upstream_timeout_ms: None,
            }],
        }],
    }
}

async fn proxy(options: ProxyOptions) -> (RunningProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_for_test_with(
        dir.path(),
        ProxyOptions {
            workers: 2,
            drain_timeout: Duration::from_secs(5),
            ..options
        },
    )
    .await
    .unwrap();
    (p, dir)
}

async fn put(p: &RunningProxy, t: &RouteTable) {
    let r = reqwest::Client::new()
        .put(format!("http://{}/v1/routes", p.admin_addr))
        .bearer_auth(&p.token)
        .json(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn stats(p: &RunningProxy) -> StatsSnapshot {
    reqwest::Client::new()
        .get(format!("http://{}/v1/stats", p.admin_addr))
        .bearer_auth(&p.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn version<'a>(s: &'a StatsSnapshot, v: &str) -> &'a VersionStats {
    s.versions.iter().find(|x| x.version == v).unwrap()
}

/// Polls the stats until `ok` holds (or fails after [`SOON`]).
async fn stats_until(p: &RunningProxy, ok: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let deadline = Instant::now() + SOON;
    loop {
        let s = stats(p).await;
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "stats never got there: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends raw bytes on a new connection and reads until the peer closes (bounded).
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads until EOF; returns how long it took (fails if the peer keeps it open).
async fn time_to_close(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout(SOON, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the proxy kept an idle connection open for {SOON:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_chunked_bodies_cannot_roll_back_a_canary() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (green, t1) = upstream("green").await;
    let (blue, t2) = upstream("blue").await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, green, blue)).await;

    // The attack of the probe: a bad chunk size, aimed at the canary by preview header.
    for _ in 0..40 {
        let answer = exchange(
            listen,
            b"POST /orders HTTP/1.1\r\nhost: shop\r\nx-ferry-preview: 1\r\n\
              transfer-encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    // A healthy request still counts normally.
    let ok = exchange(
        listen,
        b"GET / HTTP/1.1\r\nhost: shop\r\nx-ferry-preview: 1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("green"),
        "{ok}"
    );

    let s = stats(&p).await;
    let v2 = version(&s, "v2");
    assert_eq!(
        v2.errors_5xx, 0,
        "a client's bad body is not the version's error"
    );
    assert_eq!(v2.requests, 1, "only the healthy request is the version's");
    assert_eq!(v2.client_errors, 40);
    p.shutdown.cancel();
    t1.abort();
    t2.abort();
}

#[tokio::test]
async fn abandoned_and_stalled_bodies_are_the_clients_fault() {
    let (p, _dir) = proxy(ProxyOptions {
        header_read_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    })
    .await;
    let (green, t1) = upstream("green").await;
    let (blue, t2) = upstream("blue").await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, green, blue)).await;

    // Streamed (chunked) body, then the client goes away half-way.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(
        b"POST / HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(s);
    stats_until(&p, |s| version(s, "v1").client_errors == 1).await;

    // A small (buffered) body that stops arriving gets 408 after header_read_timeout.
    let started = Instant::now();
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: shop\r\ncontent-length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SOON, s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(400));

    let s = stats_until(&p, |s| version(s, "v1").client_errors == 2).await;
    let v1 = version(&s, "v1");
    assert_eq!((v1.requests, v1.errors_5xx), (0, 0), "{v1:?}");
    p.shutdown.cancel();
    t1.abort();
    t2.abort();
}

/// This host's address on a non-loopback interface, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route's source address.
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.0.0.1:9"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn preview_header_is_not_open_to_remote_clients() {
    use sha2::Digest;
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address on this host: the unit tests cover the rule");
        return;
    };
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (green, t1) = upstream("green").await;
    let (blue, t2) = upstream("blue").await;
    let listen = free_port([0, 0, 0, 0]);
    let mut t = canary_table(listen, green, blue);
    put(&p, &t).await;
    let local = SocketAddr::from(([127, 0, 0, 1], listen.port()));
    let remote = SocketAddr::new(ip, listen.port());
    let get = |addr: SocketAddr, value: &'static str| async move {
        let raw = format!(
            "GET / HTTP/1.1\r\nhost: shop\r\nx-ferry-preview: {value}\r\nconnection: close\r\n\r\n"
        );
        let answer = exchange(addr, raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
    };
    assert_eq!(get(local, "1").await, "green", "this host may preview");
    assert_eq!(get(remote, "1").await, "blue", "the network may not");

    // With a token, remote clients that know it may, and the token stays in the proxy.
    let digest = hex(&sha2::Sha256::digest(b"let-me-in"));
    t.generation = 2;
    t.listeners[0].routes[0]
        .preview
        .as_mut()
        .unwrap()
        .token_sha256 = Some(digest);
    put(&p, &t).await;
    assert_eq!(get(remote, "let-me-in").await, "green");
    assert_eq!(get(remote, "let-me-out").await, "blue");
    assert_eq!(get(remote, "1").await, "blue");
    assert_eq!(get(local, "1").await, "green");
    p.shutdown.cancel();
    t1.abort();
    t2.abort();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    let (p, _dir) = proxy(ProxyOptions {
        header_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(500),
        ..ProxyOptions::default()
    })
    .await;
    let (blue, t1) = upstream("blue").await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, blue, blue)).await;

    // Sends nothing at all.
    let mut s = TcpStream::connect(listen).await.unwrap();
    let took = time_to_close(&mut s).await;
    assert!(took >= Duration::from_millis(400), "{took:?}");

    // Half a request head, then nothing (slowloris).
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n")
        .await
        .unwrap();
    time_to_close(&mut s).await;

    // A keep-alive connection left idle after one exchange.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: shop\r\n\r\n")
        .await
        .unwrap();
    time_to_close(&mut s).await;

    // HTTP/2 (prior knowledge): the preface and empty SETTINGS, then silence.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    time_to_close(&mut s).await;

    p.shutdown.cancel();
    t1.abort();
}
