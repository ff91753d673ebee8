//! `ferry server` (the real binary) running `runtime: kubernetes` environments against a
//! fake Kubernetes API server on loopback (`tests/apps/fake_kube_api.py`, reached through a
//! kubeconfig like a cluster would be, running pods as real processes on 127.x.y.z):
//! - `traffic: gateway`: apply, a first deploy, a canary 10 → 50 % → promoted whose weights
//!   land on the HTTPRoute, and a version whose pods never get ready, rolled back;
//! - `traffic: proxy`: the environment's `ferry-proxy` pods (real `ferry proxy` processes the
//!   fake starts from the Deployment the server applied) serve its listener — never the
//!   local proxy —, a canary's requests through a pod are split by its weight, a rollback
//!   puts them back, and the fleet's objects are deleted when the environment leaves the
//!   manifest and at a teardown.
//!
//! What this proves and what it does not: docs/kubernetes.md.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use ferry_core::model::DeploymentState;
use serde_json::{Value, json};

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/fake_kube_api.py");
const NS: &str = "kshop-production";
const ROUTE: &str =
    "/apis/gateway.networking.k8s.io/v1/namespaces/kshop-production/httproutes/kshop";

/// The fake API server, stopped on drop.
struct FakeApi {
    child: Child,
    url: String,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FakeApi {
    fn start() -> FakeApi {
        let mut child = Command::new("python3")
            .arg(FAKE)
            // The proxy pods it runs.
            .env("FERRY_BIN", env!("CARGO_BIN_EXE_ferry"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 fake_kube_api.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the fake's port");
        let port: u16 = line.trim().parse().expect("a port");
        FakeApi {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Every write Ferry made (after the test's own first one, the route's seed).
    async fn writes(&self, http: &reqwest::Client) -> Vec<Value> {
        let all: Vec<Value> = http
            .get(format!("{}/fake/writes", self.url))
            .send()
            .await
            .expect("the fake's writes")
            .json()
            .await
            .expect("JSON");
        all.into_iter().skip(1).collect()
    }

    async fn get(&self, http: &reqwest::Client, path: &str) -> Value {
        http.get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET the fake")
            .json()
            .await
            .expect("JSON")
    }
}

/// The canary weights Ferry wrote to the route, in order.
fn route_weights(writes: &[Value]) -> Vec<u64> {
    writes
        .iter()
        .filter(|w| w["method"] == "PATCH" && w["path"] == ROUTE)
        .map(|w| {
            w["body"]["spec"]["rules"][0]["backendRefs"][1]["weight"]
                .as_u64()
                .expect("the canary's weight")
        })
        .collect()
}

async fn deployment_of(ferry: &Ferry, app: &str, version: &str) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = ferry
            .api_get(&format!(
                "/v1/apps/{app}/envs/production/deployments?limit=10"
            ))
            .await
            .1;
        if let Some(id) = list
            .as_array()
            .and_then(|list| list.iter().find(|d| d["version"] == version))
            .and_then(|d| d["id"].as_i64())
        {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no deployment of {version}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kubeconfig in `dir` whose cluster is `fake`.
fn kubeconfig(dir: &std::path::Path, fake: &FakeApi) -> String {
    let path = dir.join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{ server: \"{}\" }}\nusers:\n- name: ferry\n  user: {{ token: fake-token }}\ncontexts:\n- name: fake\n  context: {{ cluster: fake, user: ferry }}\ncurrent-context: fake\n",
            fake.url
        ),
    )
    .expect("kubeconfig");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_canary_and_a_rollback_through_the_server_against_a_fake_api_server() {
    bounded(Duration::from_secs(300), async {
        let fake = FakeApi::start();
        let http = reqwest::Client::new();
        // The route as the user's GitOps repository has it: all traffic on web-stable.
        http.patch(format!("{}{ROUTE}", fake.url))
            .json(&json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": { "name": "kshop", "namespace": NS },
                "spec": { "parentRefs": [{ "name": "public" }],
                          "rules": [{ "backendRefs": [
                              { "name": "web-stable", "port": 80, "weight": 10000 },
                              { "name": "web-canary", "port": 80, "weight": 0 } ] }] }
            }))
            .send()
            .await
            .expect("seed the route");
        let kube_dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = kubeconfig(kube_dir.path(), &fake);
        let ferry = Ferry::start_with_env(&[("KUBECONFIG", &kubeconfig)]).await;
        let manifest = ferry.dir.path().join("ferry.yaml");
        std::fs::write(
            &manifest,
            format!(
                "app: kshop
services:
  web:
    image: registry.example.com/kshop/web:${{VERSION}}
    replicas: 2
    stop_timeout: 5s
    health: {{ path: /health, start_timeout: 5s }}
environments:
  production:
    listen: 127.0.0.1:{}
    runtime: kubernetes
    kubernetes: {{ traffic: gateway, route: kshop }}
    strategy:
      canary:
        steps: [{{ weight: 10 }}, {{ pause: 1s }}, {{ weight: 50 }}, {{ pause: 1s }}]
",
                free_port()
            ),
        )
        .expect("manifest");
        ferry.apply(&manifest).await;

        // The first version: its Deployment, both gateway Services selecting it; the route
        // already has its weights, so it is not written.
        let out = ferry
            .cli(&[
                "deploy",
                "kshop",
                "--env",
                "production",
                "--version",
                "1.0.0",
                "--wait",
                "--timeout",
                "120s",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        let deployment = fake
            .get(
                &http,
                &format!(
                    "/apis/apps/v1/namespaces/{NS}/deployments/{}",
                    ferry_k8s::names::workload("web", "1.0.0")
                ),
            )
            .await;
        assert_eq!(deployment["spec"]["replicas"], 2, "{deployment}");
        let services = format!("/api/v1/namespaces/{NS}/services");
        let selects = |service: Value| service["spec"]["selector"]["ferry.dev/version"].clone();
        assert_eq!(
            selects(fake.get(&http, &format!("{services}/web-stable")).await),
            "1.0.0"
        );
        assert_eq!(
            selects(fake.get(&http, &format!("{services}/web-canary")).await),
            "1.0.0"
        );
        let writes = fake.writes(&http).await;
        assert_eq!(route_weights(&writes), Vec::<u64>::new(), "{writes:#?}");

        // The canary: web-canary selects 2.0.0, the weights go 10 → 50 %; at the promotion
        // the table holds 2.0.0 alone: web-stable selects it first, then takes all the
        // weight (the canary's goes back to 0), and only then does 1.0.0 go.
        let out = ferry
            .cli(&[
                "deploy",
                "kshop",
                "--env",
                "production",
                "--version",
                "2.0.0",
                "--wait",
                "--timeout",
                "120s",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        let writes = fake.writes(&http).await;
        // (A pass that caught the promotion half-way may have written 100 % on the canary
        // before the stable Service took the new version.)
        let weights = route_weights(&writes);
        assert!(
            weights.len() >= 3
                && weights[..2] == [1_000, 5_000]
                && weights[2..weights.len() - 1].iter().all(|w| *w == 10_000)
                && weights.last() == Some(&0),
            "{weights:?}: {writes:#?}"
        );
        let at = |what: &dyn Fn(&Value) -> bool| {
            writes
                .iter()
                .position(what)
                .unwrap_or_else(|| panic!("not written: {writes:#?}"))
        };
        let canary_selects = at(&|w| {
            w["path"] == format!("{services}/web-canary")
                && w["body"]["spec"]["selector"]["ferry.dev/version"] == "2.0.0"
        });
        let stable_selects = at(&|w| {
            w["path"] == format!("{services}/web-stable")
                && w["body"]["spec"]["selector"]["ferry.dev/version"] == "2.0.0"
        });
        let first_weight = at(&|w| w["path"] == ROUTE);
        let last_weight = writes
            .iter()
            .rposition(|w| w["path"] == ROUTE)
            .expect("a route write");
        let old_goes = at(&|w| {
            w["method"] == "DELETE"
                && w["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/deployments/web-1-0-0"))
        });
        assert!(
            canary_selects < first_weight && stable_selects < last_weight && last_weight < old_goes,
            "selectors before weights, weights before the old version goes: {writes:#?}"
        );
        let route = fake.get(&http, ROUTE).await;
        assert_eq!(
            route["spec"]["parentRefs"],
            json!([{ "name": "public" }]),
            "the rest of the route is left alone"
        );
        assert_eq!(
            selects(fake.get(&http, &format!("{services}/web-stable")).await),
            "2.0.0"
        );
        assert_eq!(
            selects(fake.get(&http, &format!("{services}/web-canary")).await),
            "2.0.0"
        );
        let patches = writes
            .iter()
            .filter(|w| w["method"] == "PATCH" && w["path"] == ROUTE)
            .collect::<Vec<_>>();
        assert!(
            patches
                .iter()
                .all(|p| p["body"]["metadata"]["resourceVersion"].is_string())
        );

        // The controller keeps computing the same table: no more writes to the route.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            route_weights(&fake.writes(&http).await).len(),
            weights.len()
        );

        // A version whose pods never get ready: rolled back, the route never moved.
        let before = fake.writes(&http).await.len();
        let out = ferry
            .cli(&[
                "deploy",
                "kshop",
                "--env",
                "production",
                "--version",
                "3.0.0-bad",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let id = deployment_of(&ferry, "kshop", "3.0.0-bad").await;
        let ended = ferry.wait_terminal(id, Duration::from_secs(120)).await;
        assert_eq!(
            ended.state,
            DeploymentState::RolledBack,
            "{ended:?}\n{}",
            ferry.server_logs()
        );
        let writes = fake.writes(&http).await;
        assert_eq!(
            route_weights(&writes[before..]),
            Vec::<u64>::new(),
            "{writes:#?}"
        );
        assert!(
            writes[before..].iter().any(|w| w["method"] == "DELETE"
                && w["path"]
                    .as_str()
                    .is_some_and(|p| p.contains("/deployments/web-3-0-0-bad"))),
            "the bad version's Deployment is deleted: {:#?}",
            &writes[before..]
        );
        assert_eq!(
            selects(fake.get(&http, &format!("{services}/web-canary")).await),
            "2.0.0"
        );
    })
    .await;
}

/// The addresses of the ready proxy pods of `namespace` (the fake's EndpointSlice of the
/// headless admin Service), once there are `n`.
async fn proxy_pods(
    fake: &FakeApi,
    http: &reqwest::Client,
    namespace: &str,
    n: usize,
) -> Vec<String> {
    let path = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/ferry-proxy-admin-auto"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let slice = fake.get(http, &path).await;
        let ready: Vec<String> = slice["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["conditions"]["ready"] == true)
            .filter_map(|e| e["addresses"][0].as_str().map(str::to_string))
            .collect();
        if ready.len() == n {
            return ready;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} ready proxy pods in {namespace}: {slice}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `n` requests through `pod`'s listener got, by answer.
async fn through(pod: &str, port: u16, n: usize) -> std::collections::BTreeMap<String, usize> {
    // A new connection each time, as many clients would.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..n {
        let answer = match client.get(format!("http://{pod}:{port}/")).send().await {
            Ok(response) => response
                .text()
                .await
                .unwrap_or_else(|e| format!("error: {e}")),
            Err(e) => format!("error: {e}"),
        };
        *got.entry(answer).or_default() += 1;
    }
    got
}

/// Whether anything accepts connections on `addr` now.
fn listening(addr: &str) -> bool {
    let addr: std::net::SocketAddr = addr.parse().expect("an address");
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// The DELETEs the server sent for `namespace`'s proxy fleet: (path, body).
fn fleet_deletes(writes: &[Value], namespace: &str) -> Vec<(String, Value)> {
    writes
        .iter()
        .filter(|w| w["method"] == "DELETE")
        .filter_map(|w| {
            let path = w["path"].as_str()?;
            (path.contains(&format!("/namespaces/{namespace}/"))
                && path.rsplit('/').next()?.starts_with("ferry-proxy"))
            .then(|| (path.to_string(), w["body"].clone()))
        })
        .collect()
}

/// Waits until the fleet of `namespace` was deleted, and checks it was exactly its six
/// objects, each with its uid as precondition and propagationPolicy Background.
async fn fleet_deleted(fake: &FakeApi, http: &reqwest::Client, namespace: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let deletes = loop {
        let deletes = fleet_deletes(&fake.writes(http).await, namespace);
        if deletes.len() >= 6 {
            break deletes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{namespace}'s proxy objects not deleted: {deletes:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let paths: Vec<&str> = deletes.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            format!("/apis/apps/v1/namespaces/{namespace}/deployments/ferry-proxy"),
            format!("/api/v1/namespaces/{namespace}/services/ferry-proxy"),
            format!("/api/v1/namespaces/{namespace}/services/ferry-proxy-admin"),
            format!("/api/v1/namespaces/{namespace}/configmaps/ferry-proxy-routes"),
            format!("/api/v1/namespaces/{namespace}/secrets/ferry-proxy-admin"),
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/ferry-proxy-admin"
            ),
        ]
    );
    for (path, body) in &deletes {
        assert_eq!(body["propagationPolicy"], "Background", "{path}: {body}");
        assert_eq!(
            body["preconditions"]["uid"],
            format!("uid-{path}"),
            "{path}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_through_the_proxy_pods_the_server_runs_then_its_fleet_deleted() {
    bounded(Duration::from_secs(300), async {
        let fake = FakeApi::start();
        let http = reqwest::Client::new();
        let kube_dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = kubeconfig(kube_dir.path(), &fake);
        let ferry = Ferry::start_with_env(&[("KUBECONFIG", &kubeconfig)]).await;
        let (port, staging_port) = (free_port(), free_port());
        let app = "app: kpods
services:
  web:
    image: registry.example.com/kpods/web:${VERSION}
    replicas: 2
    stop_timeout: 5s
    health: { path: /health, start_timeout: 5s }
environments:
";
        let production = format!(
            "  production:
    listen: 127.0.0.1:{port}
    runtime: kubernetes
    strategy:
      canary:
        steps: [{{ weight: 20 }}, {{ pause: {{}} }}]
"
        );
        let staging = format!(
            "  staging:
    listen: 127.0.0.1:{staging_port}
    runtime: kubernetes
    kubernetes: {{ proxy: {{ replicas: 1 }} }}
"
        );
        let manifest = ferry.dir.path().join("ferry.yaml");
        std::fs::write(&manifest, format!("{app}{production}{staging}")).expect("manifest");
        ferry.apply(&manifest).await;

        // Both environments' proxy pods run (the fake started them from the Deployments the
        // server applied) before anything is deployed; the listeners are theirs, on their
        // own addresses, never the local proxy's.
        let pods = proxy_pods(&fake, &http, "kpods-production", 2).await;
        let staging_pods = proxy_pods(&fake, &http, "kpods-staging", 1).await;
        let local = format!("127.0.0.1:{port}");
        assert!(
            !listening(&local),
            "the local proxy took a fleet's listener"
        );
        assert!(!listening(&format!("127.0.0.1:{staging_port}")));
        // (Once the server's next push reached them.)
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for pod in pods.iter().chain(&staging_pods) {
            let port = if staging_pods.contains(pod) {
                staging_port
            } else {
                port
            };
            while !listening(&format!("{pod}:{port}")) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "pod {pod} does not serve its listener\n{}",
                    ferry.server_logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            !listening(&local),
            "the local proxy took a fleet's listener"
        );

        let out = ferry
            .cli(&[
                "deploy",
                "kpods",
                "--env",
                "production",
                "--version",
                "1.0.0",
                "--wait",
                "--timeout",
                "120s",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}\n{}", ferry.server_logs());
        assert!(
            !listening(&local),
            "the local proxy took a fleet's listener"
        );
        for pod in &pods {
            let got = through(pod, port, 5).await;
            assert_eq!(got, [("1.0.0".to_string(), 5)].into(), "through {pod}");
        }

        // A canary at 20 %: requests through either pod are split by that weight.
        let out = ferry
            .cli(&[
                "deploy",
                "kpods",
                "--env",
                "production",
                "--version",
                "2.0.0",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let id = deployment_of(&ferry, "kpods", "2.0.0").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        for pod in &pods {
            while !through(pod, port, 10).await.contains_key("2.0.0") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no request through {pod} reached the canary\n{}",
                    ferry.server_logs()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for pod in &pods {
            let got = through(pod, port, 100).await;
            let canary = got.get("2.0.0").copied().unwrap_or(0);
            assert_eq!(got.values().sum::<usize>(), 100);
            assert_eq!(
                got.get("1.0.0").copied().unwrap_or(0) + canary,
                100,
                "{got:?}"
            );
            assert!((10..=30).contains(&canary), "20 % through {pod}: {got:?}");
        }

        // Rolled back: every request through the pods goes to 1.0.0 again.
        let out = ferry
            .cli(&["rollback", "kpods", "--env", "production"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let ended = ferry.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(ended.state, DeploymentState::RolledBack, "{ended:?}");
        for pod in &pods {
            let got = through(pod, port, 20).await;
            assert_eq!(got, [("1.0.0".to_string(), 20)].into(), "through {pod}");
        }

        // The environment leaves the manifest: its fleet's objects are deleted, its pods
        // stop; staging's are left alone.
        std::fs::write(&manifest, format!("{app}{staging}")).expect("manifest");
        let out = ferry
            .cli(&["apply", "-f", &manifest.display().to_string(), "--prune"])
            .await;
        assert_eq!(out.code, 0, "{out}");
        fleet_deleted(&fake, &http, "kpods-production").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pods.iter().any(|pod| listening(&format!("{pod}:{port}"))) {
            assert!(
                std::time::Instant::now() < deadline,
                "a production proxy pod still serves"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let writes = fake.writes(&http).await;
        assert_eq!(fleet_deletes(&writes, "kpods-staging"), []);
        assert!(listening(&format!("{}:{staging_port}", staging_pods[0])));

        // A teardown deletes the last fleet.
        let out = ferry.cli(&["teardown", "--yes"]).await;
        assert_eq!(out.code, 0, "{out}");
        fleet_deleted(&fake, &http, "kpods-staging").await;
    })
    .await;
}
