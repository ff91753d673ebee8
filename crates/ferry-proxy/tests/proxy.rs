//! End-to-end tests on real loopback sockets with in-process upstreams.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ferry_proxy::routes::{
    BackendGroup, ListenerConfig, PreviewRule, Route, RouteTable, StickyRule, sticky_bucket,
};
use ferry_proxy::stats::{StatsSnapshot, decode_histogram};
use ferry_proxy::{RunningProxy, spawn_for_test};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;

// ---------- helpers ----------

/// An upstream HTTP server answering with its name (and echoing what it saw in headers).
struct Upstream {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start(name: &'static str) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            loop {
                let stream = tokio::select! {
                    _ = s.cancelled() => break,
                    r = listener.accept() => match r { Ok((st, _)) => st, Err(_) => continue },
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let mut resp = Response::builder().header("x-upstream", name);
                    for (seen, h) in [
                        ("x-seen-xff", "x-forwarded-for"),
                        ("x-seen-xfp", "x-forwarded-proto"),
                        ("x-seen-xfh", "x-forwarded-host"),
                        ("x-seen-rid", "x-request-id"),
                        ("x-seen-connection", "connection"),
                    ] {
                        if let Some(v) = req.headers().get(h) {
                            resp = resp.header(seen, v.clone());
                        }
                    }
                    // `…/flags/checkout=on,search=off`: the flags this answer evaluated.
                    if let Some((_, flags)) = req.uri().path().split_once("/flags/") {
                        resp = resp.header("ferry-flags", flags);
                    }
                    if req.uri().path() == "/slow" {
                        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    }
                    let status = if req.uri().path().starts_with("/fail") {
                        500
                    } else {
                        200
                    };
                    Ok::<_, Infallible>(
                        resp.status(status)
                            .body(Full::new(Bytes::from_static(name.as_bytes())))
                            .unwrap(),
                    )
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                let fut = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = fut.await;
                });
            }
            graceful.shutdown().await;
        });
        Upstream { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn group(version: &str, weight: u32, endpoints: &[SocketAddr]) -> BackendGroup {
    BackendGroup {
        version: version.into(),
        weight,
        endpoints: endpoints.to_vec(),
    }
}

fn table(
    generation: u64,
    listen: SocketAddr,
    routes: Vec<(&str, &str, Vec<BackendGroup>)>,
) -> RouteTable {
    RouteTable {
        generation,
        listeners: vec![ListenerConfig {
            id: "shop/prod".into(),
            hosts: vec![],
            tls: None,
            redirect_https: None,
            access_log: None,
            listen,
            routes: routes
                .into_iter()
                .map(|(service, prefix, backends)| Route {
                    service: service.into(),
                    path_prefix: prefix.into(),
                    backends,
                    preview: None,
                    sticky: None,
                    upstream_timeout_ms: None,
                })
                .collect(),
        }],
    }
}

struct Harness {
    proxy: RunningProxy,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Harness {
    async fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let proxy = spawn_for_test(dir.path()).await.unwrap();
        Harness {
            proxy,
            http: reqwest::Client::new(),
            _dir: Some(dir),
        }
    }

    async fn with_options(options: ferry_proxy::ProxyOptions) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let proxy = ferry_proxy::spawn_for_test_with(dir.path(), options)
            .await
            .unwrap();
        Harness {
            proxy,
            http: reqwest::Client::new(),
            _dir: Some(dir),
        }
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy.admin_addr, path)
    }

    async fn put(&self, t: &RouteTable) -> reqwest::Response {
        self.http
            .put(self.admin("/v1/routes"))
            .bearer_auth(&self.proxy.token)
            .json(t)
            .send()
            .await
            .unwrap()
    }

    async fn put_ok(&self, t: &RouteTable) {
        let r = self.put(t).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["generation"], t.generation);
    }

    async fn stats(&self) -> StatsSnapshot {
        self.http
            .get(self.admin("/v1/stats"))
            .bearer_auth(&self.proxy.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/endpoints/{addr}`: (listed, in_flight).
    async fn usage(&self, addr: SocketAddr) -> (u64, u64) {
        let u: ferry_proxy::stats::EndpointUsage = self
            .http
            .get(self.admin(&format!("/v1/endpoints/{addr}")))
            .bearer_auth(&self.proxy.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (u.listed, u.in_flight)
    }

    /// Polls (bounded) until `addr`'s (listed, in_flight) satisfies `pred`.
    async fn wait_usage(&self, addr: SocketAddr, pred: impl Fn((u64, u64)) -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let u = self.usage(addr).await;
            if pred(u) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage of {addr} (listed, in flight): {u:?} after 20s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn wait_in_flight(&self, addr: SocketAddr, want: u64) {
        self.wait_usage(addr, |(_, n)| n == want).await;
    }

    async fn stop(self) {
        self.proxy.shutdown.cancel();
        self.proxy.handle.await.unwrap();
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.text().await.unwrap())
}

// ---------- tests ----------

#[tokio::test]
async fn routes_by_longest_prefix_and_sets_forwarding_headers() {
    let h = Harness::new().await;
    let api = Upstream::start("api").await;
    let web = Upstream::start("web").await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![
            ("web", "/", vec![group("v1", 10000, &[web.addr])]),
            ("api", "/api", vec![group("v1", 10000, &[api.addr])]),
        ],
    ))
    .await;
    let base = format!("http://{listen}");
    assert_eq!(
        get(&h.http, &format!("{base}/api")).await,
        (200, "api".into())
    );
    assert_eq!(
        get(&h.http, &format!("{base}/api/x?q=1")).await,
        (200, "api".into())
    );
    assert_eq!(
        get(&h.http, &format!("{base}/apix")).await,
        (200, "web".into())
    );
    assert_eq!(get(&h.http, &format!("{base}/")).await, (200, "web".into()));

    // Forwarding headers; a request id is generated and returned.
    let r = h
        .http
        .get(format!("{base}/api/h"))
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .send()
        .await
        .unwrap();
    let hd = r.headers();
    assert_eq!(hd["x-seen-xff"], "127.0.0.1");
    assert_eq!(hd["x-seen-xfp"], "http");
    assert_eq!(hd["x-seen-xfh"], listen.to_string().as_str());
    let rid = hd["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(rid.len(), 32);
    assert_eq!(hd["x-seen-rid"], rid.as_str());
    // Another request gets another id.
    let r2 = h.http.get(format!("{base}/api/h")).send().await.unwrap();
    assert_ne!(r2.headers()["x-request-id"], rid.as_str());

    // Incoming X-Forwarded-For is appended to, incoming X-Request-Id kept.
    let r = h
        .http
        .get(format!("{base}/api/h"))
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-seen-xff"], "10.1.2.3, 127.0.0.1");
    assert_eq!(r.headers()["x-seen-rid"], "req-42");
    assert_eq!(r.headers()["x-request-id"], "req-42");

    // h2c (prior knowledge) is served too.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{base}/api/h2")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["x-seen-xfh"], listen.to_string().as_str());
    assert_eq!(r.text().await.unwrap(), "api");

    h.stop().await;
    api.stop().await;
    web.stop().await;
}

#[tokio::test]
async fn answers_503_without_route_or_backend() {
    let h = Harness::new().await;
    let listen = free_port();
    h.put_ok(&table(1, listen, vec![("api", "/api", vec![])]))
        .await;
    let (s, body) = get(&h.http, &format!("http://{listen}/api/x")).await;
    assert_eq!(s, 503);
    assert!(
        body.contains("shop/prod") && body.contains("/api/x"),
        "{body}"
    );
    let (s, body) = get(&h.http, &format!("http://{listen}/other")).await;
    assert_eq!(s, 503);
    assert!(body.contains("no route"), "{body}");
    // A group with no endpoints.
    h.put_ok(&table(
        2,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[])])],
    ))
    .await;
    let (s, body) = get(&h.http, &format!("http://{listen}/x")).await;
    assert_eq!(s, 503, "{body}");
    let st = h.stats().await;
    let v1 = st.versions.iter().find(|v| v.version == "v1").unwrap();
    assert_eq!((v1.requests, v1.errors_5xx), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn weights_are_exact() {
    let h = Harness::new().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![(
            "api",
            "/",
            vec![group("v1", 2500, &[a.addr]), group("v2", 7500, &[b.addr])],
        )],
    ))
    .await;
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        let (s, body) = get(&h.http, &format!("http://{listen}/")).await;
        assert_eq!(s, 200);
        *counts.entry(body).or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&25));
    assert_eq!(counts.get("b"), Some(&75));

    h.put_ok(&table(
        2,
        listen,
        vec![(
            "api",
            "/",
            vec![group("v1", 0, &[a.addr]), group("v2", 10000, &[b.addr])],
        )],
    ))
    .await;
    for _ in 0..100 {
        assert_eq!(
            get(&h.http, &format!("http://{listen}/")).await,
            (200, "b".into())
        );
    }
    h.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switch_under_load_has_no_errors() {
    let h = Harness::new().await;
    let v1 = Upstream::start("v1").await;
    let v2 = Upstream::start("v2").await;
    let listen = free_port();
    let t = |generation: u64, to_v2: bool| {
        let (w1, w2) = if to_v2 { (0, 10000) } else { (10000, 0) };
        table(
            generation,
            listen,
            vec![(
                "api",
                "/",
                vec![group("v1", w1, &[v1.addr]), group("v2", w2, &[v2.addr])],
            )],
        )
    };
    h.put_ok(&t(1, false)).await;
    let url = format!("http://{listen}/");
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (done, ok, url, progress) = (done.clone(), ok.clone(), url.clone(), progress.clone());
        clients.push(tokio::spawn(async move {
            let c = reqwest::Client::new(); // keep-alive connection per client
            let mut failures = Vec::new();
            // Until the switches are done (bounded): a fixed request count could run out
            // while a slow disk holds up the PUTs, and the progress wait would then fail.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while std::time::Instant::now() < deadline {
                if done.load(Ordering::Relaxed) {
                    break;
                }
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let body = r.text().await.unwrap_or_default();
                        if body == "v1" || body == "v2" {
                            ok.fetch_add(1, Ordering::Relaxed);
                            progress.notify_waiters();
                        } else {
                            failures.push(format!("body {body:?}"));
                        }
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("error {e}")),
                }
            }
            failures
        }));
    }
    let checker = reqwest::Client::new();
    for generation in 2..=9u64 {
        // Let some load run on the current table.
        let target = ok.load(Ordering::Relaxed) + 100;
        let reached = async {
            loop {
                let notified = progress.notified();
                if ok.load(Ordering::Relaxed) >= target {
                    break;
                }
                notified.await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), reached)
            .await
            .expect("clients made no progress");
        let to_v2 = generation % 2 == 0;
        h.put_ok(&t(generation, to_v2)).await;
        let want = if to_v2 { "v2" } else { "v1" };
        // Any request after the PUT returned sees the new version.
        for _ in 0..5 {
            assert_eq!(get(&checker, &url).await, (200, want.to_string()));
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok.load(Ordering::Relaxed) >= 800);
    h.stop().await;
    v1.stop().await;
    v2.stop().await;
}

#[tokio::test]
async fn stopped_upstream_is_ejected_and_requests_retry() {
    let h = Harness::new().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let a_addr = a.addr;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[a.addr, b.addr])])],
    ))
    .await;
    let url = format!("http://{listen}/");
    let mut seen = HashMap::<String, u32>::new();
    for _ in 0..50 {
        let (s, body) = get(&h.http, &url).await;
        assert_eq!(s, 200);
        *seen.entry(body).or_default() += 1;
    }
    assert!(seen.contains_key("a") && seen.contains_key("b"), "{seen:?}");

    a.stop().await; // closes its listener and its (idle) pooled connections
    for i in 0..200 {
        let (s, body) = get(&h.http, &url).await;
        assert_eq!((s, body.as_str()), (200, "b"), "request {i}");
    }
    let st = h.stats().await;
    let v1 = st.versions.iter().find(|v| v.version == "v1").unwrap();
    assert_eq!(v1.errors_5xx, 0);
    let ep = v1.endpoints.iter().find(|e| e.addr == a_addr).unwrap();
    assert!(ep.ejected_until_ms.is_some(), "{ep:?}");

    // A POST with a small body is retried too.
    let r = h.http.post(&url).body("hello").send().await.unwrap();
    assert_eq!(r.status(), 200);
    h.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unreachable_upstream_gives_502() {
    let h = Harness::new().await;
    let listen = free_port();
    // Port 1: nothing listens there, and no test's port-0 bind can ever be given it (a
    // freed free_port() could be re-bound by a concurrent test's proxy and answer slowly).
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    h.put_ok(&table(
        1,
        listen,
        vec![("api", "/", vec![group("v9", 10000, &[dead])])],
    ))
    .await;
    let (s, body) = get(&h.http, &format!("http://{listen}/")).await;
    assert_eq!(s, 502, "{body}");
    let st = h.stats().await;
    let v = st.versions.iter().find(|v| v.version == "v9").unwrap();
    assert_eq!((v.requests, v.errors_5xx), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn routes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("up").await;
    let listen = free_port();
    let t = table(
        7,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[up.addr])])],
    );
    let first = Harness {
        proxy: spawn_for_test(dir.path()).await.unwrap(),
        http: reqwest::Client::new(),
        _dir: None,
    };
    let token = first.proxy.token.clone();
    first.put_ok(&t).await;
    assert_eq!(
        get(&first.http, &format!("http://{listen}/")).await,
        (200, "up".into())
    );
    first.stop().await;

    // Files: token 0600, proxy.json, routes.json.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let saved: RouteTable =
        serde_json::from_slice(&std::fs::read(dir.path().join("routes.json")).unwrap()).unwrap();
    assert_eq!(saved, t);

    let second = Harness {
        proxy: spawn_for_test(dir.path()).await.unwrap(),
        http: reqwest::Client::new(),
        _dir: None,
    };
    assert_eq!(second.proxy.token, token);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("proxy.json")).unwrap()).unwrap();
    assert_eq!(info["admin_addr"], second.proxy.admin_addr.to_string());
    assert_eq!(info["pid"], std::process::id());
    assert_eq!(
        get(&second.http, &format!("http://{listen}/")).await,
        (200, "up".into())
    );
    let current: RouteTable = second
        .http
        .get(second.admin("/v1/routes"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current, t);
    second.stop().await;
    up.stop().await;
}

#[tokio::test]
async fn admin_auth_stale_generation_and_bind_conflict() {
    let h = Harness::new().await;
    let up = Upstream::start("up").await;
    assert_eq!(
        h.http
            .get(h.admin("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        h.http
            .get(h.admin("/v1/routes"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = h
        .http
        .get(h.admin("/v1/routes"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let listen = free_port();
    let t5 = table(
        5,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[up.addr])])],
    );
    let r = h
        .http
        .put(h.admin("/v1/routes"))
        .json(&t5)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    h.put_ok(&t5).await;

    // Stale writer.
    let mut t4 = t5.clone();
    t4.generation = 4;
    assert_eq!(h.put(&t4).await.status(), 409);

    // Invalid table.
    let bad = table(
        6,
        listen,
        vec![("api", "/", vec![group("v1", 5000, &[up.addr])])],
    );
    assert_eq!(h.put(&bad).await.status(), 400);

    // Bind conflict: a second listener on an occupied port.
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = occupied.local_addr().unwrap();
    let mut t6 = t5.clone();
    t6.generation = 6;
    t6.listeners[0].routes[0].backends = vec![];
    t6.listeners.push(ListenerConfig {
        id: "shop/staging".into(),
        hosts: vec![],
        tls: None,
        redirect_https: None,
        access_log: None,
        listen: busy,
        routes: vec![],
    });
    let r = h.put(&t6).await;
    assert_eq!(r.status(), 409);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("shop/staging") && body.contains(&busy.to_string()),
        "{body}"
    );
    // Nothing changed.
    assert_eq!(
        get(&h.http, &format!("http://{listen}/")).await,
        (200, "up".into())
    );
    let current: RouteTable = h
        .http
        .get(h.admin("/v1/routes"))
        .bearer_auth(&h.proxy.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current, t5);

    // Removing a listener frees its port; re-adding binds again.
    let other = free_port();
    let mut t7 = t5.clone();
    t7.generation = 7;
    t7.listeners[0].listen = other;
    h.put_ok(&t7).await;
    assert_eq!(
        get(&h.http, &format!("http://{other}/")).await,
        (200, "up".into())
    );
    let mut t8 = t5.clone();
    t8.generation = 8;
    h.put_ok(&t8).await;
    assert_eq!(
        get(&reqwest::Client::new(), &format!("http://{listen}/")).await,
        (200, "up".into())
    );
    drop(occupied);
    h.stop().await;
    up.stop().await;
}

#[tokio::test]
async fn stats_and_metrics_count_per_version() {
    let h = Harness::new().await;
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![(
            "api",
            "/",
            vec![group("v1", 5000, &[a.addr]), group("v2", 5000, &[b.addr])],
        )],
    ))
    .await;
    for i in 0..40 {
        let path = if i % 4 < 2 { "/ok" } else { "/fail" };
        get(&h.http, &format!("http://{listen}{path}")).await;
    }
    let st = h.stats().await;
    assert_eq!(st.generation, 1);
    for v in ["v1", "v2"] {
        let s = st.versions.iter().find(|s| s.version == v).unwrap();
        assert_eq!(s.listener, "shop/prod");
        assert_eq!(s.service, "api");
        assert_eq!(s.requests, 20, "{s:?}");
        assert_eq!(s.errors_5xx, 10, "{s:?}");
        assert_eq!(s.in_flight, 0);
        assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.p99 >= s.latency_ms.p50);
        let hist = decode_histogram(&s.histogram_us).unwrap();
        assert_eq!(hist.len(), 20);
        assert_eq!(s.endpoints.len(), 1);
    }
    // No synthetic entries without traffic.
    assert_eq!(st.versions.len(), 2);

    let text = h
        .http
        .get(h.admin("/metrics"))
        .bearer_auth(&h.proxy.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"ferry_proxy_requests_total{listener="shop/prod",service="api",version="v1",code="2xx"} 10"#,
        r#"ferry_proxy_requests_total{listener="shop/prod",service="api",version="v2",code="5xx"} 10"#,
        r#"ferry_proxy_request_duration_seconds_count{listener="shop/prod",service="api",version="v1"} 20"#,
        r#"ferry_proxy_request_duration_seconds_bucket{le="+Inf",listener="shop/prod",service="api",version="v2"} 20"#,
        r#"ferry_proxy_in_flight{listener="shop/prod",service="api",version="v1"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    h.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn ferry_flags_answers_are_counted_per_flag_and_the_header_never_reaches_clients() {
    let h = Harness::new().await;
    let a = Upstream::start("a").await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[a.addr])])],
    ))
    .await;
    for (path, n) in [
        ("/flags/checkout=on,search=off", 6),
        ("/fail/flags/checkout=on", 3),
        ("/flags/checkout=off", 5),
        ("/plain", 4),
    ] {
        for _ in 0..n {
            let r = h
                .http
                .get(format!("http://{listen}{path}"))
                .send()
                .await
                .unwrap();
            assert!(
                r.headers().get("ferry-flags").is_none(),
                "{path}: the header is removed before the answer reaches the client"
            );
            assert_eq!(r.headers()["x-upstream"], "a", "other headers stay");
        }
    }
    let st = h.stats().await;
    let v1 = st.versions.iter().find(|s| s.version == "v1").unwrap();
    assert_eq!((v1.requests, v1.errors_5xx), (18, 3));
    let mut counted: Vec<(&str, &str, u64, u64)> = st
        .flags
        .iter()
        .map(|f| {
            assert_eq!(
                (&*f.listener, &*f.service, &*f.version),
                ("shop/prod", "api", "v1")
            );
            let hist = decode_histogram(&f.histogram_us).unwrap();
            assert_eq!(hist.len(), f.requests, "one latency per request");
            (&*f.flag, &*f.variant, f.requests, f.errors_5xx)
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        [
            ("checkout", "off", 5, 0),
            ("checkout", "on", 9, 3),
            ("search", "off", 6, 0)
        ]
    );
    assert_eq!(st.flags_dropped, 0);
    // the same series on /metrics (the server re-exports them on its own)
    let text = h
        .http
        .get(h.admin("/metrics"))
        .bearer_auth(&h.proxy.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = |flag: &str, variant: &str| {
        format!(
            r#"listener="shop/prod",service="api",version="v1",flag="{flag}",variant="{variant}""#
        )
    };
    for line in [
        format!(
            "ferry_proxy_flag_requests_total{{{}}} 9",
            labels("checkout", "on")
        ),
        format!(
            "ferry_proxy_flag_errors_total{{{}}} 3",
            labels("checkout", "on")
        ),
        format!(
            "ferry_proxy_flag_requests_total{{{}}} 5",
            labels("checkout", "off")
        ),
        format!(
            "ferry_proxy_flag_errors_total{{{}}} 0",
            labels("checkout", "off")
        ),
        format!(
            "ferry_proxy_flag_requests_total{{{}}} 6",
            labels("search", "off")
        ),
        format!(
            "ferry_proxy_flag_request_duration_seconds_count{{{}}} 9",
            labels("checkout", "on")
        ),
        format!(
            "ferry_proxy_flag_request_duration_seconds_bucket{{le=\"+Inf\",{}}} 6",
            labels("search", "off")
        ),
        "ferry_proxy_flag_dropped_total 0".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert_eq!(
        text.matches("ferry_proxy_flag_requests_total{").count(),
        3,
        "one series per (flag, variant): {text}"
    );
    h.stop().await;
    a.stop().await;
}

/// An upstream that answers one keep-alive response per connection and then closes the
/// socket, so the proxy's pool keeps finding dead connections.
async fn one_shot_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                // Dropped: closed without `Connection: close`.
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn upstream_closing_pooled_connections_causes_no_errors() {
    let h = Harness::new().await;
    let (up, task) = one_shot_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[up])])],
    ))
    .await;
    let url = format!("http://{listen}/");
    for i in 0..200 {
        assert_eq!(get(&h.http, &url).await, (200, "ok".into()), "request {i}");
    }
    h.stop().await;
    task.abort();
}

#[tokio::test]
async fn removed_listener_drains_in_flight_requests() {
    let h = Harness::new().await;
    let up = Upstream::start("up").await;
    let listen = free_port();
    let keep = free_port();
    let mut t = table(
        1,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[up.addr])])],
    );
    t.listeners.push(ListenerConfig {
        id: "shop/staging".into(),
        hosts: vec![],
        tls: None,
        redirect_https: None,
        access_log: None,
        listen: keep,
        routes: t.listeners[0].routes.clone(),
    });
    h.put_ok(&t).await;
    let client = reqwest::Client::new();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { get(&client, &format!("http://{listen}/slow")).await }
    });
    // Wait (bounded) until the slow request is in flight.
    let mut in_flight = false;
    for _ in 0..200 {
        let st = h.stats().await;
        if st
            .versions
            .iter()
            .any(|v| v.listener == "shop/prod" && v.in_flight == 1)
        {
            in_flight = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(in_flight, "slow request never became in flight");
    let mut t2 = t.clone();
    t2.generation = 2;
    t2.listeners.remove(0);
    h.put_ok(&t2).await;
    // The in-flight request completes; the port no longer accepts; the other listener serves.
    assert_eq!(slow.await.unwrap(), (200, "up".into()));
    assert!(
        reqwest::Client::new()
            .get(format!("http://{listen}/"))
            .send()
            .await
            .is_err()
    );
    assert_eq!(
        get(&client, &format!("http://{keep}/")).await,
        (200, "up".into())
    );
    h.stop().await;
    up.stop().await;
}

// ---------- preview override and stickiness ----------

/// canary (first, as the server orders them) + stable, with the given canary weight.
fn canary_table(
    generation: u64,
    listen: SocketAddr,
    canary: SocketAddr,
    stable: SocketAddr,
    canary_bp: u32,
    preview: Option<PreviewRule>,
    sticky: Option<StickyRule>,
) -> RouteTable {
    let mut t = table(
        generation,
        listen,
        vec![(
            "api",
            "/",
            vec![
                group("v2", canary_bp, &[canary]),
                group("v1", 10000 - canary_bp, &[stable]),
            ],
        )],
    );
    t.listeners[0].routes[0].preview = preview;
    t.listeners[0].routes[0].sticky = sticky;
    t
}

async fn get_with(c: &reqwest::Client, url: &str, name: &str, value: &str) -> String {
    let r = c.get(url).header(name, value).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

#[tokio::test]
async fn preview_header_reaches_a_zero_weight_group() {
    let h = Harness::new().await;
    let green = Upstream::start("green").await;
    let blue = Upstream::start("blue").await;
    let listen = free_port();
    let preview = Some(PreviewRule {
        header: "X-Ferry-Preview".into(),
        version: "v2".into(),
        token_sha256: None,
    });
    h.put_ok(&canary_table(
        1,
        listen,
        green.addr,
        blue.addr,
        0,
        preview.clone(),
        None,
    ))
    .await;
    let url = format!("http://{listen}/");
    for _ in 0..50 {
        assert_eq!(
            get_with(&h.http, &url, "x-ferry-preview", "1").await,
            "green"
        );
        assert_eq!(get(&h.http, &url).await, (200, "blue".into()));
        for off in ["0", "false", ""] {
            assert_eq!(
                get_with(&h.http, &url, "x-ferry-preview", off).await,
                "blue"
            );
        }
    }
    let st = h.stats().await;
    let v2 = st.versions.iter().find(|v| v.version == "v2").unwrap();
    assert_eq!(
        v2.requests, 50,
        "preview requests are counted under the canary"
    );

    // A preview group without endpoints falls back to the weighted choice.
    let mut t = canary_table(2, listen, green.addr, blue.addr, 0, preview, None);
    t.listeners[0].routes[0].backends[0].endpoints.clear();
    h.put_ok(&t).await;
    assert_eq!(
        get_with(&h.http, &url, "x-ferry-preview", "1").await,
        "blue"
    );

    // Validation: the preview version must be a group of the route.
    let mut bad = canary_table(3, listen, green.addr, blue.addr, 0, None, None);
    bad.listeners[0].routes[0].preview = Some(PreviewRule {
        header: "X-Ferry-Preview".into(),
        version: "v9".into(),
        token_sha256: None,
    });
    assert_eq!(h.put(&bad).await.status(), 400);
    bad.listeners[0].routes[0].preview = Some(PreviewRule {
        header: "bad header".into(),
        version: "v2".into(),
        token_sha256: None,
    });
    assert_eq!(h.put(&bad).await.status(), 400);
    h.stop().await;
    green.stop().await;
    blue.stop().await;
}

/// Side (`canary`/`stable`) of each of `keys` sticky keys, sent as header `x-user-id`.
async fn sides(h: &Harness, listen: SocketAddr, keys: usize) -> Vec<String> {
    let url = format!("http://{listen}/");
    let mut out = Vec::with_capacity(keys);
    for k in 0..keys {
        out.push(get_with(&h.http, &url, "x-user-id", &format!("user-{k}")).await);
    }
    out
}

fn within(count: usize, expected: usize, keys: usize) -> bool {
    let tol = keys * 3 / 100;
    count.abs_diff(expected) <= tol
}

#[tokio::test]
async fn sticky_header_is_stable_and_monotonic_as_the_canary_grows() {
    let h = Harness::new().await;
    let canary = Upstream::start("canary").await;
    let stable = Upstream::start("stable").await;
    let listen = free_port();
    let sticky = Some(StickyRule {
        header: Some("X-User-Id".into()),
        cookie: None,
    });
    h.put_ok(&canary_table(
        1,
        listen,
        canary.addr,
        stable.addr,
        1000,
        None,
        sticky.clone(),
    ))
    .await;
    let url = format!("http://{listen}/");

    // Same key, same side, every time; a canary key and a stable key both exist.
    let mut seen = HashMap::new();
    for k in 0..20 {
        let key = format!("user-{k}");
        let first = get_with(&h.http, &url, "x-user-id", &key).await;
        for _ in 0..100 {
            assert_eq!(get_with(&h.http, &url, "x-user-id", &key).await, first);
        }
        seen.insert(key, first);
    }
    // Requests without the key keep the exact weighted choice (10 % of 100).
    let mut canary_hits = 0;
    for _ in 0..100 {
        if get(&h.http, &url).await.1 == "canary" {
            canary_hits += 1;
        }
    }
    assert_eq!(canary_hits, 10);

    // 1000 keys at 10 %, then 50 %: nobody leaves the canary, shares match the weights.
    const KEYS: usize = 1000;
    let at10 = sides(&h, listen, KEYS).await;
    let on10 = at10.iter().filter(|s| *s == "canary").count();
    let expected10 = (0..KEYS)
        .filter(|k| sticky_bucket(format!("user-{k}").as_bytes()) < 1000)
        .count();
    assert_eq!(on10, expected10, "the proxy uses sticky_bucket");
    assert!(
        within(on10, KEYS / 10, KEYS),
        "{on10} keys on a 10 % canary"
    );
    h.put_ok(&canary_table(
        2,
        listen,
        canary.addr,
        stable.addr,
        5000,
        None,
        sticky.clone(),
    ))
    .await;
    let at50 = sides(&h, listen, KEYS).await;
    let on50 = at50.iter().filter(|s| *s == "canary").count();
    assert!(within(on50, KEYS / 2, KEYS), "{on50} keys on a 50 % canary");
    for k in 0..KEYS {
        if at10[k] == "canary" {
            assert_eq!(at50[k], "canary", "user-{k} left the canary at 50 %");
        }
    }

    // Zero weight is never chosen by stickiness; 100 % takes everyone.
    h.put_ok(&canary_table(
        3,
        listen,
        canary.addr,
        stable.addr,
        0,
        None,
        sticky.clone(),
    ))
    .await;
    assert!(sides(&h, listen, 200).await.iter().all(|s| s == "stable"));
    h.put_ok(&canary_table(
        4,
        listen,
        canary.addr,
        stable.addr,
        10000,
        None,
        sticky,
    ))
    .await;
    assert!(sides(&h, listen, 200).await.iter().all(|s| s == "canary"));
    h.stop().await;
    canary.stop().await;
    stable.stop().await;
}

#[tokio::test]
async fn sticky_cookie_and_preview_precedence() {
    let h = Harness::new().await;
    let canary = Upstream::start("canary").await;
    let stable = Upstream::start("stable").await;
    let listen = free_port();
    h.put_ok(&canary_table(
        1,
        listen,
        canary.addr,
        stable.addr,
        2000,
        Some(PreviewRule {
            header: "X-Ferry-Preview".into(),
            version: "v2".into(),
            token_sha256: None,
        }),
        Some(StickyRule {
            header: None,
            cookie: Some("ferry_id".into()),
        }),
    ))
    .await;
    let url = format!("http://{listen}/");
    let mut on_canary = 0;
    for k in 0..200 {
        let cookie = format!("theme=dark; ferry_id=sess-{k}; other=1");
        let first = get_with(&h.http, &url, "cookie", &cookie).await;
        for _ in 0..5 {
            assert_eq!(get_with(&h.http, &url, "cookie", &cookie).await, first);
        }
        let expected = if sticky_bucket(format!("sess-{k}").as_bytes()) < 2000 {
            "canary"
        } else {
            "stable"
        };
        assert_eq!(first, expected, "sess-{k}");
        if first == "canary" {
            on_canary += 1;
        }
        // The preview header wins over the cookie.
        let r = h
            .http
            .get(&url)
            .header("cookie", &cookie)
            .header("x-ferry-preview", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "canary");
    }
    assert!(on_canary > 0 && on_canary < 200);
    h.stop().await;
    canary.stop().await;
    stable.stop().await;
}

#[tokio::test]
async fn stickiness_survives_a_proxy_restart() {
    let dir = tempfile::tempdir().unwrap();
    let canary = Upstream::start("canary").await;
    let stable = Upstream::start("stable").await;
    let listen = free_port();
    let t = canary_table(
        1,
        listen,
        canary.addr,
        stable.addr,
        3000,
        None,
        Some(StickyRule {
            header: Some("x-user-id".into()),
            cookie: Some("ferry_id".into()),
        }),
    );
    let first = Harness {
        proxy: spawn_for_test(dir.path()).await.unwrap(),
        http: reqwest::Client::new(),
        _dir: None,
    };
    first.put_ok(&t).await;
    let before = sides(&first, listen, 300).await;
    first.stop().await;

    let second = Harness {
        proxy: spawn_for_test(dir.path()).await.unwrap(),
        http: reqwest::Client::new(),
        _dir: None,
    };
    let after = sides(&second, listen, 300).await;
    assert_eq!(before, after);
    assert!(before.iter().any(|s| s == "canary") && before.iter().any(|s| s == "stable"));
    let saved: RouteTable =
        serde_json::from_slice(&std::fs::read(dir.path().join("routes.json")).unwrap()).unwrap();
    assert_eq!(saved, t, "preview/sticky are persisted");
    second.stop().await;
    canary.stop().await;
    stable.stop().await;
}

// ---------- upstream connection pooling ----------

/// An upstream that counts the connections it accepted and answers by path:
/// `/chunked` (a streamed body of 3 chunks), `/empty` (204), `/echo` (the request body),
/// anything else `ok` (HEAD: no body).
async fn counting_upstream() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                type B = http_body_util::combinators::BoxBody<Bytes, Infallible>;
                let resp: Response<B> = match req.uri().path() {
                    "/chunked" => Response::new(BodyExt::boxed(ChunkedBody(
                        ["one ", "two ", "three"].into_iter().collect(),
                    ))),
                    "/empty" => Response::builder()
                        .status(204)
                        .body(BodyExt::boxed(Full::new(Bytes::new())))
                        .unwrap(),
                    "/echo" => {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        Response::new(BodyExt::boxed(Full::new(body)))
                    }
                    _ => Response::new(BodyExt::boxed(Full::new(Bytes::from_static(b"ok")))),
                };
                Ok::<_, Infallible>(resp)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted, task)
}

/// A body of unknown length (sent chunked), one frame per poll.
struct ChunkedBody(std::collections::VecDeque<&'static str>);

impl hyper::body::Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let next = self.get_mut().0.pop_front();
        std::task::Poll::Ready(next.map(|c| Ok(hyper::body::Frame::data(Bytes::from(c)))))
    }
}

#[tokio::test]
async fn upstream_connections_are_reused_across_response_kinds() {
    let h = Harness::new().await;
    let (addr, accepted, task) = counting_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[addr])])],
    ))
    .await;
    let base = format!("http://{listen}");
    // One keep-alive client connection: its requests stay on one worker, which needs one
    // upstream connection for all of them, whatever the kind of response.
    let big = "x".repeat(200 * 1024); // above max_buffered_body: streamed upstream
    for i in 0..30 {
        assert_eq!(
            get(&h.http, &format!("{base}/plain")).await,
            (200, "ok".into())
        );
        assert_eq!(
            get(&h.http, &format!("{base}/chunked")).await,
            (200, "one two three".into())
        );
        let r = h.http.get(format!("{base}/empty")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let r = h.http.head(format!("{base}/plain")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = h
            .http
            .post(format!("{base}/echo"))
            .body(format!("small {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), format!("small {i}"));
        if i % 10 == 0 {
            let r = h
                .http
                .post(format!("{base}/echo"))
                .body(big.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.text().await.unwrap().len(), big.len());
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
    let st = h.stats().await;
    let v1 = st.versions.iter().find(|v| v.version == "v1").unwrap();
    assert_eq!((v1.requests, v1.errors_5xx, v1.in_flight), (153, 0, 0));
    h.stop().await;
    task.abort();
}

/// An upstream that accepts `Upgrade: echo` with `101 Switching Protocols` (saying which
/// `x-request-id` and `connection` it saw), then echoes every byte in upper case.
async fn upgrading_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let lower = head.to_ascii_lowercase();
                if !lower.contains("upgrade: echo") {
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let rid = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("x-request-id: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\nx-seen-rid: {rid}\r\n\r\n"
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 1024];
                loop {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let upper = chunk[..n].to_ascii_uppercase();
                            if s.write_all(&upper).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); nothing after it is consumed because
/// the peer sends nothing more before it gets an answer.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
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
async fn upgrades_are_tunnelled_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::new().await;
    let (up, task) = upgrading_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("ws", "/", vec![group("v1", 10000, &[up])])],
    ))
    .await;

    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    client
        .write_all(
            b"GET /socket HTTP/1.1\r\nhost: shop\r\nconnection: keep-alive, Upgrade\r\nupgrade: echo\r\nx-request-id: ws-1\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(
        head.contains("x-seen-rid: ws-1"),
        "the request id travels: {head}"
    );
    for message in ["hello", "through the proxy", "and back"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; message.len()];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, message.to_ascii_uppercase().as_bytes());
    }
    drop(client);

    // A plain request on the same route is not an upgrade: the upstream refuses it, and the
    // proxy passes that answer on.
    assert_eq!(
        get(&h.http, &format!("http://{listen}/socket")).await.0,
        426
    );
    h.stop().await;
    task.abort();
}

/// Opens an `Upgrade: echo` tunnel through the proxy on `listen` and checks it echoes.
async fn open_tunnel(listen: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();
    client
        .write_all(
            b"GET /socket HTTP/1.1\r\nhost: shop\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut client).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_echoes(&mut client).await;
    client
}

async fn assert_echoes(client: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 4];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.read_exact(&mut answer),
    )
    .await
    .expect("echo within 10s")
    .unwrap();
    assert_eq!(&answer, b"PING");
}

/// Waits (bounded) until the proxy closes `client`'s connection; returns how long it took.
async fn wait_closed(
    client: &mut tokio::net::TcpStream,
    within: std::time::Duration,
) -> std::time::Duration {
    use tokio::io::AsyncReadExt;
    let t = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(within, client.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("the tunnel is still open after {within:?}"));
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    t.elapsed()
}

/// The defect: the endpoint's in-flight count dropped as soon as the upstream answered 101,
/// so a replica's drain did not wait for its open WebSockets.
#[tokio::test]
async fn an_open_tunnel_counts_as_in_flight_until_it_closes() {
    let h = Harness::new().await;
    let (up, task) = upgrading_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("ws", "/", vec![group("v1", 10000, &[up])])],
    ))
    .await;
    let mut client = open_tunnel(listen).await;
    // Still in flight while open, even once no table lists the endpoint any more.
    h.put_ok(&table(2, listen, vec![("ws", "/", vec![])])).await;
    h.wait_usage(up, |u| u == (0, 1)).await;
    let v1 = h.stats().await;
    let v1 = v1.versions.iter().find(|v| v.version == "v1").unwrap();
    assert_eq!(v1.in_flight, 1);
    assert_echoes(&mut client).await;
    drop(client);
    h.wait_in_flight(up, 0).await;
    h.stop().await;
    task.abort();
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let idle = std::time::Duration::from_millis(300);
    let h = Harness::with_options(ferry_proxy::ProxyOptions {
        idle_timeout: idle,
        workers: 2,
        ..ferry_proxy::ProxyOptions::default()
    })
    .await;
    let (up, task) = upgrading_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("ws", "/", vec![group("v1", 10000, &[up])])],
    ))
    .await;
    let mut client = open_tunnel(listen).await;
    // Traffic keeps it open past the idle timeout...
    for _ in 0..4 {
        tokio::time::sleep(idle / 2).await;
        assert_echoes(&mut client).await;
    }
    // ...silence closes it (after one to two idle timeouts), and the endpoint is free.
    let took = wait_closed(&mut client, std::time::Duration::from_secs(20)).await;
    assert!(took >= idle, "closed after {took:?}");
    h.wait_in_flight(up, 0).await;
    h.stop().await;
    task.abort();
}

#[tokio::test]
async fn a_removed_listener_waits_for_its_tunnels_until_the_drain_timeout() {
    let drain = std::time::Duration::from_millis(1500);
    let h = Harness::with_options(ferry_proxy::ProxyOptions {
        drain_timeout: drain,
        workers: 2,
        ..ferry_proxy::ProxyOptions::default()
    })
    .await;
    let (up, task) = upgrading_upstream().await;
    let listen = free_port();
    h.put_ok(&table(
        1,
        listen,
        vec![("ws", "/", vec![group("v1", 10000, &[up])])],
    ))
    .await;
    let mut client = open_tunnel(listen).await;
    let removed = std::time::Instant::now();
    h.put_ok(&RouteTable {
        generation: 2,
        listeners: vec![],
    })
    .await;
    // The drain lets it work meanwhile, then closes it.
    assert_echoes(&mut client).await;
    wait_closed(&mut client, std::time::Duration::from_secs(20)).await;
    assert!(
        removed.elapsed() >= drain,
        "closed after {:?}",
        removed.elapsed()
    );
    h.wait_in_flight(up, 0).await;
    h.stop().await;
    task.abort();
}

#[tokio::test]
async fn the_upstream_timeout_is_per_route() {
    let h = Harness::new().await;
    let up = Upstream::start("api").await;
    let listen = free_port();
    let mut t = table(
        1,
        listen,
        vec![("web", "/", vec![group("v1", 10000, &[up.addr])])],
    );
    // The upstream answers /slow after 300 ms.
    t.listeners[0].routes[0].upstream_timeout_ms = Some(100);
    h.put_ok(&t).await;
    let (status, body) = get(&h.http, &format!("http://{listen}/slow")).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("timed out"), "{body}");
    // Without one of its own, the route has the proxy's default (60 s).
    t.generation = 2;
    t.listeners[0].routes[0].upstream_timeout_ms = None;
    h.put_ok(&t).await;
    assert_eq!(
        get(&h.http, &format!("http://{listen}/slow")).await,
        (200, "api".into())
    );
    h.stop().await;
    up.stop().await;
}

#[tokio::test]
async fn the_access_log_has_one_json_line_per_answer() {
    let h = Harness::new().await;
    let up = Upstream::start("api").await;
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut t = table(
        1,
        listen,
        vec![
            ("api", "/api", vec![group("v1", 10000, &[up.addr])]),
            ("api", "/fail", vec![group("v1", 10000, &[up.addr])]),
        ],
    );
    t.listeners[0].access_log = Some(log.clone());
    h.put_ok(&t).await;
    let r = h
        .http
        .get(format!("http://{listen}/api/cart?token=s3cret"))
        .header("x-request-id", "log-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.http
            .post(format!("http://{listen}/fail"))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    let r = h
        .http
        .get(format!("http://{listen}/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let generated_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 3 || std::time::Instant::now() > deadline {
            break text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let (ok, fail, unrouted) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(ok["request_id"], "log-1");
    assert_eq!(ok["listener"], "shop/prod");
    assert_eq!(ok["host"], listen.to_string());
    assert_eq!(ok["method"], "GET");
    assert_eq!(
        ok["path"], "/api/cart",
        "no query string (it may carry secrets)"
    );
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["service"], "api");
    assert_eq!(ok["version"], "v1");
    assert_eq!(ok["upstream"], up.addr.to_string());
    assert_eq!(ok["status"], 200);
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0, "{ok}");
    let time = ok["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    assert_eq!(
        (fail["method"].as_str(), fail["status"].as_u64()),
        (Some("POST"), Some(500))
    );
    assert_eq!(unrouted["status"], 503);
    assert_eq!(unrouted["request_id"], generated_id.as_str());
    assert!(
        unrouted["service"].is_null() && unrouted["upstream"].is_null(),
        "{unrouted}"
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains("s3cret"));

    // A relative path is refused with a located error; a file that cannot be opened is a
    // warning, and the site serves unlogged.
    let mut bad = t.clone();
    bad.generation = 2;
    bad.listeners[0].access_log = Some("access.log".into());
    let r = h.put(&bad).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("absolute path"));
    bad.listeners[0].access_log = Some(dir.path().join("missing/dir/access.log"));
    let r = h.put(&bad).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("cannot open access log"));
    assert_eq!(get(&h.http, &format!("http://{listen}/api/x")).await.0, 200);
    h.stop().await;
    up.stop().await;
}

/// A proxy pod (Kubernetes): its token from a file, listeners bound on its own IP whatever
/// the table says, and at its first start the seed table (the ConfigMap the server writes).
#[tokio::test]
async fn a_pod_reads_its_token_binds_its_own_ip_and_starts_from_the_seed_table() {
    let dir = tempfile::tempdir().unwrap();
    let up = Upstream::start("up").await;
    // The pod's IP: another loopback address than the table's 127.0.0.1.
    let pod_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let port = std::net::TcpListener::bind((pod_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let seed = dir.path().join("seed.json");
    let t = table(
        9,
        listen,
        vec![("api", "/", vec![group("v1", 10000, &[up.addr])])],
    );
    std::fs::write(&seed, serde_json::to_vec(&t).unwrap()).unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "pod-token-7\n").unwrap();
    let state = dir.path().join("state");
    let options = ferry_proxy::ProxyOptions {
        admin_token_file: Some(token_file.clone()),
        seed_routes: Some(seed.clone()),
        listen_ip: Some(pod_ip),
        workers: 2,
        ..ferry_proxy::ProxyOptions::default()
    };
    let pod = Harness {
        proxy: ferry_proxy::start(
            ferry_proxy::ProxyConfig {
                state_dir: state.clone(),
                admin_listen: SocketAddr::new(pod_ip, 0),
            },
            options.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap(),
        http: reqwest::Client::new(),
        _dir: None,
    };
    assert_eq!(pod.proxy.token, "pod-token-7");
    assert!(!state.join("admin.token").exists(), "no token of its own");
    assert_eq!(pod.stats().await.generation, 9, "serves the seed table");
    assert_eq!(
        get(&pod.http, &format!("http://{pod_ip}:{port}/")).await,
        (200, "up".into()),
        "bound on the pod's IP"
    );
    assert!(
        reqwest::get(format!("http://{listen}/")).await.is_err(),
        "not on the table's address"
    );
    // A pushed table wins over the seed at the next start (the state directory has it).
    let mut newer = t.clone();
    newer.generation = 10;
    pod.put_ok(&newer).await;
    pod.stop().await;
    let again = ferry_proxy::start(
        ferry_proxy::ProxyConfig {
            state_dir: state.clone(),
            admin_listen: SocketAddr::new(pod_ip, 0),
        },
        options,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let again = Harness {
        proxy: again,
        http: reqwest::Client::new(),
        _dir: None,
    };
    assert_eq!(again.stats().await.generation, 10);
    again.stop().await;

    // Beyond loopback only with a token file.
    let refused = ferry_proxy::start(
        ferry_proxy::ProxyConfig {
            state_dir: dir.path().join("other"),
            admin_listen: "0.0.0.0:0".parse().unwrap(),
        },
        ferry_proxy::ProxyOptions::default(),
        CancellationToken::new(),
    )
    .await;
    assert!(
        matches!(refused, Err(ferry_proxy::ProxyError::AdminNotLoopback(_))),
        "{refused:?}"
    );
}
