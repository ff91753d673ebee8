//! TLS termination and host routing, with a CA generated here (root → intermediate →
//! leaves) and verifying rustls clients on loopback.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_proxy::routes::{BackendGroup, ListenerConfig, Route, RouteTable, TlsFiles};
use ferry_proxy::{ProxyOptions, RunningProxy, spawn_for_test_with};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

const SOON: Duration = Duration::from_secs(20);

/// A root, an intermediate, and leaves signed by the intermediate.
struct Pki {
    root: CertificateDer<'static>,
    intermediate: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(DnType::CommonName, "Ferry test root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);

        let int_key = KeyPair::generate().unwrap();
        let mut int_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        int_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        int_params
            .distinguished_name
            .push(DnType::CommonName, "Ferry test intermediate");
        let intermediate = int_params.signed_by(&int_key, &root_issuer).unwrap();
        Pki {
            root: root.der().clone(),
            intermediate,
            issuer: Issuer::new(int_params, int_key),
        }
    }

    /// Writes `NAME.pem` (leaf + intermediate) and `NAME.key` for `hosts`; returns the
    /// files and the leaf's DER.
    fn leaf(&self, dir: &Path, name: &str, hosts: &[&str]) -> (TlsFiles, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            hsts_max_age_secs: None,
        };
        // The key first: a reload that sees the new certificate also finds its key.
        write_atomic(&files.key, key.serialize_pem().as_bytes());
        write_atomic(
            &files.cert,
            format!("{}{}", leaf.pem(), self.intermediate.pem()).as_bytes(),
        );
        (files, leaf.der().to_vec())
    }
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn upstream(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                let proto = req
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let body = format!("{name} {} {proto}", req.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
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

fn site(
    id: &str,
    listen: SocketAddr,
    hosts: &[&str],
    tls: Option<TlsFiles>,
    routes: Vec<(&str, SocketAddr)>,
) -> ListenerConfig {
    let mut l = ListenerConfig::new(
        id,
        listen,
        routes
            .into_iter()
            .map(|(prefix, up)| Route {
                service: format!("svc{prefix}"),
                path_prefix: prefix.into(),
                backends: vec![BackendGroup {
                    version: "v1".into(),
                    weight: 10_000,
                    endpoints: vec![up],
                }],
                preview: None,
                sticky: None,
                upstream_timeout_ms: None,
            })
            .collect(),
    );
    l.hosts = hosts.iter().map(|h| h.to_string()).collect();
    l.tls = tls;
    l
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn proxy() -> (RunningProxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let p = spawn_for_test_with(
        dir.path(),
        ProxyOptions {
            workers: 2,
            drain_timeout: Duration::from_secs(5),
            cert_check_interval: Duration::from_millis(100),
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    (p, dir)
}

async fn put(p: &RunningProxy, t: &RouteTable) -> (u16, String) {
    let r = reqwest::Client::new()
        .put(format!("http://{}/v1/routes", p.admin_addr))
        .bearer_auth(&p.token)
        .json(t)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn client(
    root: &CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    c: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    c.connect(name, tcp).await
}

/// The chain the server presented (DER of each certificate).
fn chain(s: &Tls) -> Vec<Vec<u8>> {
    s.get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

/// An HTTP/1.1 connection over `tls`: GET `path` with `Host: host`, returns (status,
/// headers, body) and the sender for more requests.
struct H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl H1 {
    async fn open(tls: Tls) -> H1 {
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        H1(tx)
    }

    async fn get(&mut self, host: &str, path: &str) -> (u16, http::HeaderMap, String) {
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let resp = self.0.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }
}

#[tokio::test]
async fn sni_picks_the_certificate_and_host_picks_the_site() {
    let (p, dir) = proxy().await;
    let pki = Pki::new();
    let (shop_files, shop_leaf) = pki.leaf(dir.path(), "shop", &["shop.example.com"]);
    let (blog_files, blog_leaf) = pki.leaf(dir.path(), "blog", &["*.blog.example.com"]);
    let (shop, t1) = upstream("shop").await;
    let (shop_api, t2) = upstream("shop-api").await;
    let (blog, t3) = upstream("blog").await;
    let listen = free_port();
    let mut shop_site = site(
        "shop/production",
        listen,
        &["shop.example.com"],
        Some(shop_files.clone()),
        vec![("/", shop), ("/api", shop_api)],
    );
    shop_site.tls.as_mut().unwrap().hsts_max_age_secs = Some(31_536_000);
    let table = RouteTable {
        generation: 1,
        listeners: vec![
            shop_site,
            site(
                "blog/production",
                listen,
                &["*.blog.example.com"],
                Some(blog_files),
                vec![("/", blog)],
            ),
        ],
    };
    assert_eq!(put(&p, &table).await.0, 200);

    let c13 = client(&pki.root, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let tls = connect(&c13, listen, "shop.example.com").await.unwrap();
    assert_eq!(
        chain(&tls),
        vec![shop_leaf.clone(), pki.intermediate.der().to_vec()],
        "the leaf, then its intermediate"
    );
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let mut h1 = H1::open(tls).await;
    let (status, headers, body) = h1.get("shop.example.com", "/cart").await;
    assert_eq!((status, body.as_str()), (200, "shop /cart https"));
    assert_eq!(headers["strict-transport-security"], "max-age=31536000");
    // Path prefixes within a host.
    let (_, _, body) = h1.get("shop.example.com", "/api/x").await;
    assert_eq!(body, "shop-api /api/x https");
    // Another host on the same connection goes to its own site; an unknown one is a 404.
    let (_, headers, body) = h1.get("www.blog.example.com", "/post").await;
    assert_eq!(body, "blog /post https");
    assert!(headers.get("strict-transport-security").is_none());
    let (status, _, body) = h1.get("nope.example.com", "/").await;
    assert_eq!(status, 404);
    assert!(body.contains("no site for host nope.example.com"), "{body}");

    // TLS 1.2, the wildcard certificate by SNI.
    let c12 = client(&pki.root, &[&rustls::version::TLS12], &[b"http/1.1"]);
    let tls = connect(&c12, listen, "www.blog.example.com").await.unwrap();
    assert_eq!(chain(&tls)[0], blog_leaf);
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // A verifying client refuses the certificate it gets for a host nobody serves.
    let err = connect(&c13, listen, "evil.example.com").await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // ALPN h2: the same sites over HTTP/2.
    let ch2 = client(&pki.root, &[&rustls::version::TLS13], &[b"h2", b"http/1.1"]);
    let tls = connect(&ch2, listen, "shop.example.com").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = tx
        .send_request(
            Request::get("https://shop.example.com/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "shop /h2 https");

    p.shutdown.cancel();
    for t in [t1, t2, t3] {
        t.abort();
    }
}

#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let (p, dir) = proxy().await;
    let pki = Pki::new();
    let (files, first) = pki.leaf(dir.path(), "shop", &["shop.example.com"]);
    let (up, t1) = upstream("shop").await;
    let listen = free_port();
    let table = RouteTable {
        generation: 1,
        listeners: vec![site(
            "shop/production",
            listen,
            &["shop.example.com"],
            Some(files),
            vec![("/", up)],
        )],
    };
    assert_eq!(put(&p, &table).await.0, 200);
    let c = client(&pki.root, &[&rustls::version::TLS13], &[b"http/1.1"]);
    let tls = connect(&c, listen, "shop.example.com").await.unwrap();
    assert_eq!(chain(&tls)[0], first);
    let mut open = H1::open(tls).await;
    assert_eq!(open.get("shop.example.com", "/a").await.0, 200);

    // Renew: new key and certificate in the same files.
    let (_, second) = pki.leaf(dir.path(), "shop", &["shop.example.com"]);
    assert_ne!(first, second);
    let deadline = Instant::now() + SOON;
    loop {
        let tls = connect(&c, listen, "shop.example.com").await.unwrap();
        if chain(&tls)[0] == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection opened before the reload still works.
    let (status, _, body) = open.get("shop.example.com", "/b").await;
    assert_eq!((status, body.as_str()), (200, "shop /b https"));

    // Files that do not load: the table is taken (other sites' changes must not wait on
    // one bad renewal), the answer warns with the file named, and the site keeps serving
    // its previous certificate.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let mut bad = table.clone();
    bad.generation = 2;
    bad.listeners[0].tls.as_mut().unwrap().cert = dir.path().join("bad.pem");
    let (status, body) = put(&p, &bad).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("warnings") && body.contains("bad.pem"),
        "{body}"
    );
    let tls = connect(&c, listen, "shop.example.com").await.unwrap();
    assert_eq!(chain(&tls)[0], second);

    p.shutdown.cancel();
    t1.abort();
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let (p, _dir) = proxy().await;
    let listen = free_port();
    let mut redirect = ListenerConfig::new("shop/production/redirect", listen, vec![]);
    redirect.hosts = vec!["shop.example.com".into()];
    redirect.redirect_https = Some(8443);
    let t = RouteTable {
        generation: 1,
        listeners: vec![redirect],
    };
    assert_eq!(put(&p, &t).await.0, 200);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = http
        .get(format!("http://{listen}/cart?item=1"))
        .header("host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        "https://shop.example.com:8443/cart?item=1"
    );
    let r = http
        .get(format!("http://{listen}/"))
        .header("host", "other.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    p.shutdown.cancel();
}
