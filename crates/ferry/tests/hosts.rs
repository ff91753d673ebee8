//! Host-based routing end to end: two apps share one proxy listener, each on its own
//! host; a third app claiming a taken host is refused at apply time with the field named.

mod common;

use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded};

const LIMIT: Duration = Duration::from_secs(180);

/// The test manifest of `spec`, with `hosts` on its environment.
fn with_hosts(ferry: &Ferry, spec: &Spec, hosts: &[&str]) -> std::path::PathBuf {
    let path = ferry.write_manifest(spec, &format!("{}.yaml", spec.app));
    let yaml = std::fs::read_to_string(&path).expect("read manifest");
    let listen = format!("    listen: {}\n", spec.listener());
    let yaml = yaml.replacen(
        &listen,
        &format!(
            "{listen}    hosts: {}\n",
            serde_json::to_string(hosts).expect("json")
        ),
        1,
    );
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

async fn get(ferry: &Ferry, spec: &Spec, host: &str) -> (u16, String, String) {
    let resp = ferry
        .http
        .get(format!("http://{}/", spec.listener()))
        .header("host", host)
        .send()
        .await
        .expect("GET through the proxy");
    let status = resp.status().as_u16();
    let version = resp
        .headers()
        .get("x-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, version, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_share_a_listener_by_host() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut shop = Spec::new("shop");
        shop.replicas = 1;
        let mut blog = Spec::new("blog");
        blog.replicas = 1;
        blog.listen_port = shop.listen_port;
        ferry
            .apply(&with_hosts(&ferry, &shop, &["shop.example.com"]))
            .await;
        ferry
            .apply(&with_hosts(&ferry, &blog, &["blog.example.com", "*.blog.example.com"]))
            .await;
        ferry.deploy_ok(&shop, "1.0.0").await;
        ferry.deploy_ok(&blog, "7.0.0").await;

        let (status, version, _) = get(&ferry, &shop, "shop.example.com").await;
        assert_eq!((status, version.as_str()), (200, "1.0.0"));
        let (status, version, _) = get(&ferry, &shop, "Blog.Example.com:8080").await;
        assert_eq!((status, version.as_str()), (200, "7.0.0"));
        let (status, version, _) = get(&ferry, &shop, "www.blog.example.com").await;
        assert_eq!((status, version.as_str()), (200, "7.0.0"));
        let (status, _, body) = get(&ferry, &shop, "unknown.example.com").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("no site for host unknown.example.com"), "{body}");
        // The proxy's own answers are dated, like a replica's (the HTTP/1.1 fast path).
        let resp = ferry
            .http
            .get(format!("http://{}/", shop.listener()))
            .header("host", "unknown.example.com")
            .send()
            .await
            .expect("GET through the proxy");
        let date = resp.headers().get("date").expect("a Date on the 404");
        assert!(
            date.to_str().is_ok_and(|d| d.ends_with(" GMT")),
            "{date:?}"
        );

        // A third app claiming shop's host on the same address: a located conflict.
        let mut evil = Spec::new("evil");
        evil.listen_port = shop.listen_port;
        let path = with_hosts(&ferry, &evil, &["evil.example.com", "shop.example.com"]);
        let out = ferry
            .cli(&["apply", "-f", &path.display().to_string()])
            .await;
        assert_ne!(out.code, 0, "{out}");
        let expected = format!(
            "environments.production.hosts[1]: host shop.example.com on {} is already served by shop/production",
            shop.listener()
        );
        assert!(out.stderr.contains(&expected), "{expected}\n{out}");
        // And one without hosts may not take the shared address at all.
        let path = ferry.write_manifest(&evil, "evil-plain.yaml");
        let out = ferry
            .cli(&["apply", "-f", &path.display().to_string()])
            .await;
        assert!(
            out.code != 0 && out.stderr.contains("environments.production.listen: listener"),
            "{out}"
        );
    })
    .await;
}

/// An environment's `access_log` and `upstream_timeout` travel from the manifest through
/// the route table to the proxy: answers are logged as JSON lines, and the route carries
/// the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_log_and_upstream_timeout_reach_the_proxy() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut shop = Spec::new("shop");
        shop.replicas = 1;
        let log = ferry.dir.path().join("shop-access.log");
        let path = with_hosts(&ferry, &shop, &["shop.example.com"]);
        let yaml = std::fs::read_to_string(&path).expect("read manifest");
        let listen = format!("    listen: {}\n", shop.listener());
        let yaml = yaml.replacen(
            &listen,
            &format!(
                "{listen}    upstream_timeout: 5m\n    access_log: {}\n",
                log.display()
            ),
            1,
        );
        std::fs::write(&path, yaml).expect("write manifest");
        ferry.apply(&path).await;
        ferry.deploy_ok(&shop, "1.0.0").await;
        let (status, version, _) = get(&ferry, &shop, "shop.example.com").await;
        assert_eq!((status, version.as_str()), (200, "1.0.0"));

        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let line = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains("\"version\":\"1.0.0\"")) {
                break serde_json::from_str::<serde_json::Value>(l).expect("a JSON line");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line for 1.0.0 in {}: {text}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(line["listener"], "shop/production");
        assert_eq!(line["host"], "shop.example.com");
        assert_eq!(line["status"], 200);

        let routes = std::fs::read_to_string(ferry.data.join("proxy/routes.json"))
            .expect("the proxy's saved route table");
        assert!(
            routes.contains("\"upstream_timeout_ms\": 300000"),
            "{routes}"
        );
    })
    .await;
}
