//! `GET /v1/endpoints/{addr}`: the proxy confirms when no request can reach an upstream any
//! more, whatever the current table says (the controller stops a replica only then).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_proxy::routes::{BackendGroup, ListenerConfig, Route, RouteTable};
use ferry_proxy::stats::{EndpointUsage, StatsSnapshot};
use ferry_proxy::{RunningProxy, spawn_for_test};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

/// An upstream answering its name; `/hold` waits for a permit of `gate` first.
async fn upstream(name: &'static str, gate: Arc<Semaphore>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let gate = gate.clone();
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let gate = gate.clone();
                async move {
                    if req.uri().path() == "/hold" {
                        gate.acquire().await.unwrap().forget();
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn table(generation: u64, listen: SocketAddr, endpoints: &[SocketAddr]) -> RouteTable {
    RouteTable {
        generation,
        listeners: vec![ListenerConfig {
            id: "shop/prod".into(),
            hosts: vec![],
            tls: None,
            redirect_https: None,
            access_log: None,
            listen,
            routes: vec![Route {
                service: "web".into(),
                path_prefix: "/".into(),
                backends: vec![BackendGroup {
                    version: "v1".into(),
                    weight: 10000,
                    endpoints: endpoints.to_vec(),
                }],
                preview: None,
                sticky: None,
                upstream_timeout_ms: None,
            }],
        }],
    }
}

struct Admin {
    proxy: RunningProxy,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Admin {
    async fn new() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        Admin {
            proxy: spawn_for_test(dir.path()).await.unwrap(),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn put(&self, t: &RouteTable) {
        let r = self
            .http
            .put(format!("http://{}/v1/routes", self.proxy.admin_addr))
            .bearer_auth(&self.proxy.token)
            .json(t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}{path}", self.proxy.admin_addr))
            .bearer_auth(&self.proxy.token)
            .send()
            .await
            .unwrap()
    }

    async fn usage(&self, addr: SocketAddr) -> EndpointUsage {
        let r = self.get(&format!("/v1/endpoints/{addr}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls (bounded) until `addr`'s usage satisfies `pred`.
    async fn wait_usage(
        &self,
        addr: SocketAddr,
        what: &str,
        pred: impl Fn(&EndpointUsage) -> bool,
    ) -> EndpointUsage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let usage = self.usage(addr).await;
            if pred(&usage) {
                return usage;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 20s for {what}; last: {usage:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The defect this guards against: the per-version statistics list only the endpoints of
/// the current table, so a replica removed while its version keeps other replicas looked
/// idle at once, and was stopped with requests still in flight to it.
#[tokio::test]
async fn a_removed_endpoint_is_drained_only_when_its_requests_are_done() {
    let admin = Admin::new().await;
    let gate = Arc::new(Semaphore::new(0));
    let old = upstream("old", gate.clone()).await;
    let other = upstream("other", gate.clone()).await;
    let listen = free_port();
    admin.put(&table(1, listen, &[old])).await;

    let held = tokio::spawn(async move {
        let r = reqwest::get(format!("http://{listen}/hold")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    admin
        .wait_usage(old, "the held request in flight", |u| u.in_flight == 1)
        .await;

    // The version keeps another replica; `old` leaves the table.
    admin.put(&table(2, listen, &[other])).await;
    let stats: StatsSnapshot = admin.get("/v1/stats").await.json().await.unwrap();
    assert!(
        stats
            .versions
            .iter()
            .flat_map(|v| &v.endpoints)
            .all(|e| e.addr != old),
        "the per-version stats no longer list the removed endpoint (why they cannot drain it)"
    );
    // The held request keeps the old table (and the endpoint) until it has its answer.
    let usage = admin.usage(old).await;
    assert_eq!(usage.in_flight, 1, "{usage:?}");
    assert!(!usage.drained());
    assert!(admin.usage(other).await.listed >= 1);

    gate.add_permits(1);
    assert_eq!(held.await.unwrap(), (200, "old".to_string()));
    let usage = admin
        .wait_usage(old, "the removed endpoint drained", EndpointUsage::drained)
        .await;
    assert_eq!(usage.in_flight, 0);
}

/// A request that loaded the table before the swap may pick the removed endpoint later
/// (here: after its body arrives). Until it has, the endpoint is not drained.
#[tokio::test]
async fn a_request_holding_an_old_table_keeps_the_endpoint_listed() {
    let admin = Admin::new().await;
    let gate = Arc::new(Semaphore::new(0));
    let old = upstream("old", gate.clone()).await;
    let new = upstream("new", gate.clone()).await;
    let listen = free_port();
    admin.put(&table(1, listen, &[old])).await;

    // Headers now, the body later: the proxy answers `100 Continue` once the request's
    // handler reads the body, i.e. once it holds the table it will pick from.
    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    client
        .write_all(
            format!(
                "POST /slow-body HTTP/1.1\r\nHost: {listen}\r\nContent-Length: 4\r\n\
                 Expect: 100-continue\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(20), read_head(&mut client))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 100"), "{head}");

    admin.put(&table(2, listen, &[new])).await;
    let usage = admin.usage(old).await;
    assert_eq!(
        usage,
        EndpointUsage {
            addr: old,
            listed: 1,
            in_flight: 0
        },
        "the request in progress still holds the table listing the old endpoint"
    );
    assert!(!usage.drained());

    client.write_all(b"body").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(20), client.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("old"),
        "{answer}"
    );
    admin
        .wait_usage(old, "the old table released", EndpointUsage::drained)
        .await;
    drop(gate);
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`).
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(0) | Err(_) => break,
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn endpoint_queries_are_authenticated_and_checked() {
    let admin = Admin::new().await;
    let unknown: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let usage = admin.usage(unknown).await;
    assert!(usage.drained(), "never routed to: {usage:?}");
    let r = admin.get("/v1/endpoints/not-an-address").await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("IP:PORT"));
    let r = reqwest::get(format!(
        "http://{}/v1/endpoints/127.0.0.1:9",
        admin.proxy.admin_addr
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 401);
}
