//! Who is to blame: a client's malformed, stalled or abandoned request never counts
//! against a version; the preview header is not open to the network; connections that
//! send nothing or go idle are closed. Real sockets on loopback, raw bytes where a
//! well-behaved client library would refuse to misbehave.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

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

// ---------- the HTTP/1.1 fast path, byte by byte ----------

/// An upstream speaking raw HTTP/1.1 on keep-alive connections: `/echo` answers with the
/// request head (and body) it received, `/close` with a body that ends when it closes,
/// `/early` with a 103 first, `/chunked` chunked, `/dated` with a `Date`, `/hang` never;
/// anything else `ok`. Reads `Content-Length` and (simple) chunked request bodies.
async fn raw_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head: Vec<u8> = buf.drain(..end).collect();
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let chunked = text.contains("\r\ntransfer-encoding: chunked\r\n");
                    let mut len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    loop {
                        if chunked && let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                            len = i + 5;
                        }
                        if (!chunked || len > 0) && buf.len() >= len {
                            break;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..len).collect();
                    let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                    let answer: Vec<u8> = match path.split('?').next().unwrap() {
                        "/echo" => {
                            let mut a = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
                                head.len() + body.len()
                            )
                            .into_bytes();
                            a.extend_from_slice(&head);
                            a.extend_from_slice(&body);
                            a
                        }
                        "/dated" => b"HTTP/1.1 200 OK\r\nDate: Sun, 06 Dec 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil-close").await;
                            return;
                        }
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly".to_vec(),
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n".to_vec(),
                        "/hang" => {
                            tokio::time::sleep(SOON).await;
                            return;
                        }
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn the_fast_path_copies_header_lines_and_strips_hop_by_hop_ones() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = raw_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, up, up)).await;

    let answer = exchange(
        listen,
        b"GET /echo?q=1 HTTP/1.1\r\nHost: shop\r\nConnection: x-secret, close\r\nX-Secret: s\r\n\
          Keep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Host: evil\r\n\
          X-Request-Id: rid-1\r\nX-Kept: k\r\n\r\n",
    )
    .await;
    let (head, seen) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // The response: the upstream's hop-by-hop headers gone, the request id back.
    let lower = format!("{}\r\n", head.to_ascii_lowercase());
    assert!(lower.contains("\r\nx-request-id: rid-1\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(
        !lower.contains("x-hop") && !lower.contains("keep-alive"),
        "{head}"
    );
    // The request as the upstream saw it.
    assert!(seen.starts_with("GET /echo?q=1 HTTP/1.1\r\n"), "{seen}");
    for line in [
        "Host: shop",
        "X-Kept: k",
        "x-forwarded-host: shop",
        "x-forwarded-for: 10.0.0.1, 127.0.0.1",
        "x-forwarded-proto: http",
        "x-request-id: rid-1",
    ] {
        assert!(seen.contains(&format!("\r\n{line}\r\n")), "{line}: {seen}");
    }
    let seen_lower = seen.to_ascii_lowercase();
    for gone in ["x-secret", "keep-alive", "connection", "evil"] {
        assert!(!seen_lower.contains(gone), "{gone}: {seen}");
    }

    // Bare LF line ends are read (as nginx does) and forwarded as CRLF.
    let answer = exchange(
        listen,
        b"GET /echo HTTP/1.1\nHost: shop\nX-A: 1\nConnection: close\n\n",
    )
    .await;
    let seen = body_of(&answer);
    assert!(seen.contains("\r\nX-A: 1\r\n"), "{answer}");
    assert!(
        seen.match_indices('\n')
            .all(|(i, _)| i > 0 && &seen[i - 1..i] == "\r"),
        "{seen:?}"
    );

    // Response bodies: until close, after a 103, chunked (passed through).
    let answer = exchange(listen, b"GET /close HTTP/1.1\r\nHost: shop\r\n\r\n").await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    assert_eq!(body_of(&answer), "until-close");
    let answer = exchange(
        listen,
        b"GET /early HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(body_of(&answer), "early");
    let answer = exchange(
        listen,
        b"GET /chunked HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.contains("transfer-encoding: chunked\r\n"),
        "{answer}"
    );
    assert_eq!(body_of(&answer), "3\r\none\r\n0\r\n\r\n");

    // Pipelined requests (one with a body) are answered in order on one connection.
    let answer = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p1\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p2\r\nContent-Length: 4\r\n\r\nbody\
          HEAD / HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p3\r\n\r\n\
          GET / HTTP/1.1\r\nHost: shop\r\nX-Request-Id: p4\r\nConnection: close\r\n\r\n",
    )
    .await;
    let at = |id: &str| {
        answer
            .find(&format!("x-request-id: {id}\r\n"))
            .unwrap_or_else(|| panic!("{id} missing: {answer}"))
    };
    assert!(
        at("p1") < at("p2") && at("p2") < at("p3") && at("p3") < at("p4"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    let s = stats(&p).await;
    assert_eq!(
        (version(&s, "v1").requests, version(&s, "v1").errors_5xx),
        (9, 0)
    );
    p.shutdown.cancel();
    task.abort();
}

#[tokio::test]
async fn smuggling_shapes_and_oversized_heads_are_refused() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = raw_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, up, up)).await;

    for raw in [
        // Both framings, either order.
        &b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        // Two lengths (equal or not), a list, a sign.
        b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nbody",
        b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 4\r\ncontent-length: 4\r\n\r\nbody",
        b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 4, 4\r\n\r\nbody",
        b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: +4\r\n\r\nbody",
        // Obsolete line folding; whitespace before the colon; two hosts.
        b"GET / HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\n  folded\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: shop\r\nHost: other\r\n\r\n",
    ] {
        let answer = exchange(listen, raw).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{}: {answer}",
            String::from_utf8_lossy(raw)
        );
    }

    let mut many = b"GET / HTTP/1.1\r\nHost: shop\r\n".to_vec();
    for i in 0..120 {
        many.extend_from_slice(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let answer = exchange(listen, &many).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let mut big = b"GET / HTTP/1.1\r\nHost: shop\r\nx-big: ".to_vec();
    big.resize(70 * 1024, b'a');
    let answer = exchange(listen, &big).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // None of them reached a version.
    let s = stats(&p).await;
    assert_eq!(version(&s, "v1").requests, 0);
    let ok = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        ok.starts_with("HTTP/1.1 200 ") && ok.ends_with("ok"),
        "{ok}"
    );
    p.shutdown.cancel();
    task.abort();
}

/// Waits for `n` lines in an access log.
async fn log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + SOON;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        assert!(Instant::now() < deadline, "{n} lines never came: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn abandoned_requests_are_logged_with_499_and_their_duration() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = raw_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let mut t = canary_table(listen, up, up);
    t.listeners[0].access_log = Some(log.clone());
    put(&p, &t).await;

    // HTTP/1.1 (the fast path) and HTTP/1.0 (hyper): the client gives up waiting.
    for (i, raw) in [
        &b"GET /hang HTTP/1.1\r\nHost: shop\r\nX-Request-Id: gone-1\r\n\r\n"[..],
        b"GET /hang HTTP/1.0\r\nHost: shop\r\nX-Request-Id: gone-2\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(raw).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(s);
        let lines = log_lines(&log, i + 1).await;
        let l = &lines[i];
        assert_eq!(l["status"], 499, "{l}");
        assert_eq!(l["request_id"], format!("gone-{}", i + 1), "{l}");
        assert_eq!(l["version"], "v1", "{l}");
        assert_eq!(l["upstream"], up.to_string(), "{l}");
        assert!(l["duration_ms"].as_f64().unwrap() >= 250.0, "{l}");
    }
    let s = stats_until(&p, |s| version(s, "v1").client_errors == 2).await;
    assert_eq!(version(&s, "v1").errors_5xx, 0);
    p.shutdown.cancel();
    task.abort();
}

// ---------- request bodies and local answers on the fast path ----------

/// An upstream with a body limit of zero: answers 413 as soon as a request head arrives,
/// without reading the body, and closes at once (its kernel resets the connection over
/// the unread body, as a real server's does).
async fn refusing_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 9\r\n\
                          connection: close\r\n\r\ntoo large",
                    )
                    .await;
            });
        }
    });
    (addr, task)
}

/// The first response head on `s` (bytes up to its blank line).
async fn next_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(SOON, s.read(&mut b)).await {
            Ok(Ok(1)) => got.push(b[0]),
            other => panic!(
                "no head: {other:?} after {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8(got).unwrap()
}

fn lines_named<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.eq_ignore_ascii_case(name))
        })
        .collect()
}

#[tokio::test]
async fn an_upstream_answering_before_a_large_body_is_heard() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = refusing_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    put(&p, &canary_table(listen, up, up)).await;
    let mib = 1024 * 1024;

    // A client that sends part of its body, then waits for an answer: it gets the
    // upstream's 413 (it used to wait until the proxy gave up on the body).
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(
        format!("POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: {mib}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s.write_all(&vec![b'x'; 100 * 1024]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert_eq!(body_of(&answer), "too large");
    assert_eq!(lines_named(&answer, "connection"), ["connection: close"]);

    // Clients that send the whole body without waiting (4 MiB each, as curl does): each
    // reads the whole 413, no reset, while the proxy reads and drops the rest.
    for _ in 0..3 {
        let s = TcpStream::connect(listen).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "PUT /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: {}\r\n\r\n",
                4 * mib
            );
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&vec![b'y'; 4 * mib]).await;
            wr
        });
        let mut answer = Vec::new();
        tokio::time::timeout(SOON, rd.read_to_end(&mut answer))
            .await
            .expect("answered")
            .expect("no reset before the answer was read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert_eq!(body_of(&answer), "too large");
        drop(
            tokio::time::timeout(SOON, writer)
                .await
                .expect("the writer finished"),
        );
    }

    // The upstream's answers, not the proxy's failures: 4 requests, no 5xx, no client fault.
    let s = stats_until(&p, |s| version(s, "v1").requests == 4).await;
    let v1 = version(&s, "v1");
    assert_eq!((v1.errors_5xx, v1.client_errors), (0, 0), "{v1:?}");
    p.shutdown.cancel();
    task.abort();
}

#[tokio::test]
async fn expect_continue_and_chunked_uploads_are_served() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = raw_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    let mut t = canary_table(listen, up, up);
    t.listeners[0].hosts = vec!["shop".into()];
    put(&p, &t).await;

    // `Expect: 100-continue`: the proxy asks for the body, then forwards the request
    // without `Expect` (header names as sent: the fast path).
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: shop\r\nExpect: 100-continue\r\nX-Case: K\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next_head(&mut s).await, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"hello").await.unwrap();
    let head = next_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let len: usize = lines_named(&head, "content-length")[0][15..]
        .trim()
        .parse()
        .unwrap();
    let mut seen = vec![0u8; len];
    tokio::time::timeout(SOON, s.read_exact(&mut seen))
        .await
        .unwrap()
        .unwrap();
    let seen = String::from_utf8(seen).unwrap();
    assert!(seen.starts_with("PUT /echo HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nX-Case: K\r\n") && seen.ends_with("\r\n\r\nhello"),
        "{seen}"
    );
    assert!(lines_named(&seen, "expect").is_empty(), "{seen}");

    // The same connection: a chunked upload, forwarded chunked, then a pipelined request.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\nX-Case: K\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n\
          GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(SOON, s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8(rest).unwrap();
    let (first, second) = rest.split_at(rest.rfind("HTTP/1.1 200 OK\r\n").unwrap());
    let seen = body_of(first);
    assert!(seen.starts_with("POST /echo HTTP/1.1\r\n"), "{rest}");
    assert!(seen.contains("\r\nX-Case: K\r\n"), "{seen}");
    assert_eq!(
        lines_named(seen, "transfer-encoding"),
        ["transfer-encoding: chunked"]
    );
    assert!(
        seen.ends_with("\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"),
        "{seen}"
    );
    assert_eq!(body_of(second), "ok");

    // A request the proxy refuses is answered before the body is asked for.
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: elsewhere\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .unwrap();
    let head = next_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");

    let s = stats(&p).await;
    assert_eq!(
        (version(&s, "v1").requests, version(&s, "v1").errors_5xx),
        (3, 0)
    );
    p.shutdown.cancel();
    task.abort();
}

/// `answer` has `status` and one `Date`, of a time since `before`.
fn assert_dated(answer: &str, status: &str, before: SystemTime) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status} ")),
        "{answer}"
    );
    let head = answer.split_once("\r\n\r\n").unwrap().0;
    let dates = lines_named(head, "date");
    assert_eq!(dates.len(), 1, "{answer}");
    let date = httpdate::parse_http_date(dates[0][5..].trim()).unwrap();
    // HTTP dates count whole seconds.
    let since = before - Duration::from_secs(1);
    assert!(since <= date && date <= SystemTime::now(), "{answer}");
}

#[tokio::test]
async fn the_proxys_own_answers_and_undated_responses_carry_a_date() {
    let (p, _dir) = proxy(ProxyOptions::default()).await;
    let (up, task) = raw_upstream().await;
    let listen = free_port([127, 0, 0, 1]);
    let dead = free_port([127, 0, 0, 1]);
    // Nothing listens on `dead`: 502.
    let mut t = canary_table(listen, dead, dead);
    t.listeners[0].hosts = vec!["shop".into()];
    put(&p, &t).await;
    let before = SystemTime::now();
    let failing = exchange(
        listen,
        b"GET / HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_dated(&failing, "502", before);
    t.generation = 2;
    t.listeners[0].routes[0].backends[0].endpoints = vec![up];
    t.listeners[0].routes[0].backends[1].endpoints = vec![up];
    put(&p, &t).await;

    let mut big = b"GET / HTTP/1.1\r\nHost: shop\r\nx-big: ".to_vec();
    big.resize(70 * 1024, b'a');
    let undated =
        b"GET / HTTP/1.1\r\nHost: shop\r\nX-Ferry-Preview: 1\r\nConnection: close\r\n\r\n";
    for (raw, status) in [
        (
            &b"GET / HTTP/1.1\r\nHost: elsewhere\r\nConnection: close\r\n\r\n"[..],
            "404",
        ),
        (&big, "431"),
        (
            b"POST / HTTP/1.1\r\nHost: shop\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "400",
        ),
        (undated, "200"),
    ] {
        let before = SystemTime::now();
        assert_dated(&exchange(listen, raw).await, status, before);
    }
    // An upstream's own Date is kept, alone.
    let answer = exchange(
        listen,
        b"GET /dated HTTP/1.1\r\nHost: shop\r\nX-Ferry-Preview: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = answer.split_once("\r\n\r\n").unwrap().0;
    assert_eq!(
        lines_named(head, "date"),
        ["Date: Sun, 06 Dec 2026 00:00:00 GMT"]
    );
    p.shutdown.cancel();
    task.abort();
}
