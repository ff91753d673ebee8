//! The kube-rs client against a mocked API server (tower-test, as kube-rs's own tests do):
//! which requests Ferry sends, in what order, with which bodies. The fake keeps the objects
//! it was sent (adding what an API server adds: resourceVersion, defaults, status) so that a
//! second pass sees what the first one left. It is not Kubernetes: see docs/kubernetes.md.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_k8s::client::{Applied, Cluster, ClusterError, JobEnd, MAX_CONFLICT_RETRIES};
use ferry_k8s::names;
use ferry_k8s::objects::{self, HookAttempt};
use ferry_k8s::runtime::KubernetesRuntime;
use ferry_runtime::{
    HealthSpec, ReplicaSpec, Runtime, RuntimeEvent, TaskEnd, TaskOutput, TaskSpec,
};
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Seen {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Every request any fake answered in this test binary, and whether its object existed
/// then (for the RBAC test).
static EVERY_REQUEST: Mutex<Vec<(Seen, bool)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    seen: Vec<Seen>,
    /// Answer the next requests whose `METHOD path` starts with the key with this status.
    faults: Vec<(String, u16)>,
    /// Jobs become Complete after this many GETs (None: never).
    job_done_after: Option<usize>,
    job_gets: usize,
    version: u64,
    /// Deployments (by name) whose pods never become ready.
    unready: Vec<String>,
    /// The watch requests (kept apart from `seen`: they come from background tasks).
    watches: Vec<Seen>,
}

/// What the Deployment controller, the kubelet and the EndpointSlice controller would make
/// of a Deployment's `spec.replicas`: `status` and one EndpointSlice with as many pod
/// addresses (10.0.N.i, N per Deployment), ready unless the Deployment is `unready`.
fn settle(state: &mut State, path: &str) {
    let Some(live) = state.objects.get_mut(path) else {
        return;
    };
    let name = live["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let namespace = live["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let replicas = live["spec"]["replicas"].as_u64().unwrap_or(0);
    let ready = !state.unready.contains(&name);
    live["status"] =
        json!({ "replicas": replicas, "readyReplicas": if ready { replicas } else { 0 } });
    state.version += 1;
    let version = state.version.to_string();
    let Some(live) = state.objects.get_mut(path) else {
        return;
    };
    live["metadata"]["resourceVersion"] = json!(version);
    let pod_labels = live["spec"]["template"]["metadata"]["labels"].clone();
    // The EndpointSlice controller copies the Service's labels (Ferry's) onto its slices.
    let mut slice_labels = pod_labels.clone();
    slice_labels["kubernetes.io/service-name"] = json!(name);
    let net = name.bytes().map(u64::from).sum::<u64>() % 250;
    let endpoints: Vec<Value> = (1..=replicas)
        .map(|i| json!({ "addresses": [format!("10.0.{net}.{i}")], "conditions": { "ready": ready } }))
        .collect();
    state.objects.insert(
        format!("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}-auto"),
        json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": { "name": format!("{name}-auto"), "namespace": namespace,
                              "labels": slice_labels, "resourceVersion": version },
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": endpoints }),
    );
    // Its pods (for their logs).
    state.objects.insert(
        format!("/api/v1/namespaces/{namespace}/pods/{name}-pod0"),
        json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": format!("{name}-pod0"), "namespace": namespace,
                              "labels": pod_labels } }),
    );
}

/// The fake's state, a signal of every change to it (for the watches it holds open), and
/// how many watches a client holds open now, by collection path.
#[derive(Clone, Default)]
struct Fake(
    Arc<Mutex<State>>,
    Arc<tokio::sync::Notify>,
    Arc<Mutex<BTreeMap<String, usize>>>,
);

/// A response body: a whole one, or a watch's, whose events the fake sends when it has them
/// (the headers go at once, as an API server does). A watch's body counts as open until the
/// client drops it: it read it to the end, or hung up.
struct FakeBody {
    whole: Option<bytes::Bytes>,
    events: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
    _open: Option<OpenWatch>,
}

struct OpenWatch(Arc<Mutex<BTreeMap<String, usize>>>, String);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        let mut open = self.0.lock().expect("open watches");
        if let Some(count) = open.get_mut(&self.1) {
            *count -= 1;
        }
    }
}

impl FakeBody {
    fn whole(bytes: Vec<u8>) -> Self {
        FakeBody {
            whole: Some(bytes.into()),
            events: None,
            _open: None,
        }
    }
}

impl http_body::Body for FakeBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if let Some(bytes) = self.whole.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(bytes))));
        }
        match self.events.as_mut() {
            Some(events) => events
                .poll_recv(cx)
                .map(|chunk| chunk.map(|bytes| Ok(http_body::Frame::data(bytes)))),
            None => std::task::Poll::Ready(None),
        }
    }
}

fn status(code: u16, reason: &str) -> Value {
    json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason,
            "reason": reason, "code": code })
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, from) => *into = from.clone(),
    }
}

fn matches_labels(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        object["metadata"]["labels"][k] == v
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

impl Fake {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("fake state")
    }

    fn seen(&self) -> Vec<String> {
        self.lock().seen.iter().map(Seen::line).collect()
    }

    fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn forget_requests(&self) {
        self.lock().seen.clear();
    }

    fn put(&self, path: &str, object: Value) {
        self.lock().objects.insert(path.to_string(), object);
    }

    /// Tells the watches held open that the state changed (after a test changed it).
    fn touch(&self) {
        self.1.notify_waiters();
    }

    /// How many watches a client holds open in `namespace`.
    fn open_watches(&self, namespace: &str) -> usize {
        let infix = format!("/namespaces/{namespace}/");
        self.2
            .lock()
            .expect("open watches")
            .iter()
            .filter(|(path, _)| path.contains(&infix))
            .map(|(_, count)| count)
            .sum()
    }

    /// A watch (`?watch=true`): held until an object of the collection that the label
    /// selector selects has a resourceVersion above the one asked for, then answered with
    /// those objects as MODIFIED events (the body ends: the client watches again).
    async fn watch(&self, seen: Seen) -> Vec<u8> {
        {
            let mut state = self.lock();
            state.watches.push(seen.clone());
        }
        EVERY_REQUEST
            .lock()
            .expect("every request")
            .push((seen.clone(), false));
        let from: u64 = query_param(&seen.query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let selector = query_param(&seen.query, "labelSelector").unwrap_or_default();
        let prefix = format!("{}/", seen.path);
        loop {
            let changed = self.1.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let events: Vec<u8> = self
                .lock()
                .objects
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                .map(|(_, v)| v)
                .filter(|v| matches_labels(v, &selector))
                .filter(|v| {
                    v["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse::<u64>().ok())
                        .is_some_and(|r| r > from)
                })
                .flat_map(|v| {
                    let mut line = serde_json::to_vec(&json!({ "type": "MODIFIED", "object": v }))
                        .expect("json");
                    line.push(b'\n');
                    line
                })
                .collect();
            if !events.is_empty() {
                return events;
            }
            changed.await;
        }
    }

    fn fail(&self, prefix: &str, code: u16) {
        self.lock().faults.push((prefix.to_string(), code));
    }

    fn answer(&self, seen: Seen) -> (u16, Value) {
        let mut state = self.lock();
        state.seen.push(seen.clone());
        let existed = state.objects.contains_key(&seen.path);
        EVERY_REQUEST
            .lock()
            .expect("every request")
            .push((seen.clone(), existed));
        let line = seen.line();
        if let Some(i) = state
            .faults
            .iter()
            .position(|(p, _)| line.starts_with(p.as_str()))
        {
            let (_, code) = state.faults.remove(i);
            return (
                code,
                status(code, if code == 409 { "Conflict" } else { "Fault" }),
            );
        }
        let path = seen.path.clone();
        match seen.method.as_str() {
            "GET" if path.ends_with("/log") => {
                (200, Value::String("migrated 3 tables\n".to_string()))
            }
            "GET" => {
                if let Some(object) = state.objects.get(&path).cloned() {
                    let mut object = object;
                    if path.contains("/jobs/") {
                        state.job_gets += 1;
                        if state.job_done_after.is_some_and(|n| state.job_gets >= n) {
                            object["status"] = json!({ "conditions": [
                                { "type": "Complete", "status": "True" }
                            ]});
                        }
                    }
                    return (200, object);
                }
                // A collection: list what is under it, filtered by labels.
                let selector = query_param(&seen.query, "labelSelector").unwrap_or_default();
                let prefix = format!("{path}/");
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                    .map(|(_, v)| v.clone())
                    .filter(|v| matches_labels(v, &selector))
                    .collect();
                let collection = path.rsplit('/').next().is_some_and(|last| {
                    [
                        "deployments",
                        "services",
                        "pods",
                        "jobs",
                        "endpointslices",
                        "secrets",
                        "namespaces",
                        "httproutes",
                    ]
                    .contains(&last)
                });
                if !collection {
                    return (404, status(404, "NotFound"));
                }
                (
                    200,
                    json!({ "apiVersion": "v1", "kind": "List", "metadata": {}, "items": items }),
                )
            }
            "PATCH" if path.ends_with("/scale") => {
                let object = path.trim_end_matches("/scale").to_string();
                let Some(live) = state.objects.get_mut(&object) else {
                    return (404, status(404, "NotFound"));
                };
                merge(live, &seen.body);
                let name = live["metadata"]["name"].clone();
                settle(&mut state, &object);
                (
                    200,
                    json!({ "apiVersion": "autoscaling/v1", "kind": "Scale",
                              "metadata": { "name": name },
                              "spec": seen.body["spec"] }),
                )
            }
            "PATCH" => {
                state.version += 1;
                let version = state.version.to_string();
                let live = state.objects.entry(path.clone()).or_insert(json!({}));
                merge(live, &seen.body);
                // What an API server adds.
                live["metadata"]["resourceVersion"] = json!(version);
                live["metadata"]["uid"] = json!(format!("uid-{path}"));
                let deployment = live["kind"] == "Deployment";
                if deployment {
                    live["spec"]["progressDeadlineSeconds"] = json!(600);
                }
                let answer = live.clone();
                if deployment {
                    settle(&mut state, &path);
                }
                (200, answer)
            }
            "POST" => {
                let name = seen.body["metadata"]["name"].as_str().unwrap_or_default();
                let object = format!("{path}/{name}");
                if state.objects.contains_key(&object) {
                    return (409, status(409, "AlreadyExists"));
                }
                let mut body = seen.body.clone();
                body["metadata"]["resourceVersion"] = json!("1");
                state.objects.insert(object, body.clone());
                // Its pod, as the Job controller would make it.
                let namespace = body["metadata"]["namespace"].as_str().unwrap_or_default();
                state.objects.insert(
                    format!("/api/v1/namespaces/{namespace}/pods/{name}-x7k2p"),
                    json!({ "apiVersion": "v1", "kind": "Pod",
                            "metadata": { "name": format!("{name}-x7k2p"), "namespace": namespace,
                                          "labels": { "job-name": name } } }),
                );
                (201, body)
            }
            "DELETE" => {
                let uid = &seen.body["preconditions"]["uid"];
                match state.objects.get(&path) {
                    None => (404, status(404, "NotFound")),
                    Some(live) if !uid.is_null() && live["metadata"]["uid"] != *uid => {
                        (409, status(409, "Conflict"))
                    }
                    Some(_) => (200, state.objects.remove(&path).unwrap_or_default()),
                }
            }
            _ => (405, status(405, "MethodNotAllowed")),
        }
    }

    /// A kube client whose every request this fake answers.
    fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<FakeBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let seen = Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                if query_param(&seen.query, "watch").as_deref() == Some("true") {
                    *fake
                        .2
                        .lock()
                        .expect("open watches")
                        .entry(seen.path.clone())
                        .or_default() += 1;
                    let (send, events) = tokio::sync::mpsc::channel(1);
                    let response = Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(FakeBody {
                            whole: None,
                            events: Some(events),
                            _open: Some(OpenWatch(fake.2.clone(), seen.path.clone())),
                        })
                        .expect("response");
                    respond.send_response(response);
                    let fake = fake.clone();
                    tokio::spawn(async move {
                        // Until the client hangs up (the body is dropped).
                        tokio::select! {
                            events = fake.watch(seen) => {
                                let _ = send.send(events.into()).await;
                            }
                            () = send.closed() => {}
                        }
                    });
                    continue;
                }
                let (code, body) = fake.answer(seen);
                fake.touch();
                let bytes = match &body {
                    Value::String(text) => text.clone().into_bytes(),
                    other => serde_json::to_vec(other).expect("json"),
                };
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).expect("status"))
                    .header("content-type", "application/json")
                    .body(FakeBody::whole(bytes))
                    .expect("response");
                respond.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }
}

const NS: &str = "/api/v1/namespaces/shop-staging";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop-staging/deployments";
const SERVICES: &str = "/api/v1/namespaces/shop-staging/services";
const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/shop-staging/networkpolicies";

#[tokio::test]
async fn a_release_is_applied_in_order_once_and_then_left_alone() {
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let manifest = common::manifest();
    let secrets = common::secrets();
    let release = common::release(&manifest, "staging", &secrets);
    let objects = objects::objects(&release).expect("objects");
    let web = objects.deployments[0].metadata.name.clone().expect("name");
    let worker = objects.deployments[1].metadata.name.clone().expect("name");

    let done = cluster.apply_release(&objects).await.expect("apply");
    assert_eq!(done, vec![Applied::Written; 5]);
    assert_eq!(
        fake.seen(),
        [
            format!("GET {NS}"),
            format!("PATCH {NS}"),
            format!("GET {SERVICES}/{web}"),
            format!("PATCH {SERVICES}/{web}"),
            format!("GET {SERVICES}/{worker}"),
            format!("PATCH {SERVICES}/{worker}"),
            format!("GET {DEPLOYMENTS}/{web}"),
            format!("PATCH {DEPLOYMENTS}/{web}"),
            format!("GET {DEPLOYMENTS}/{worker}"),
            format!("PATCH {DEPLOYMENTS}/{worker}"),
        ],
        "the namespace first, then the Services, then the Deployments"
    );
    for patch in fake.requests().iter().filter(|s| s.method == "PATCH") {
        assert_eq!(
            patch.content_type, "application/apply-patch+yaml",
            "server-side apply"
        );
        assert_eq!(
            query_param(&patch.query, "fieldManager").as_deref(),
            Some("ferry")
        );
        assert_eq!(query_param(&patch.query, "force").as_deref(), Some("true"));
        assert!(
            patch.body["metadata"]["annotations"]["ferry.dev/applied"].is_string(),
            "{}",
            patch.body
        );
    }
    let deployment = &fake.requests()[7].body;
    let mut expected = serde_json::to_value(&objects.deployments[0]).expect("json");
    expected["metadata"]["annotations"]["ferry.dev/applied"] =
        deployment["metadata"]["annotations"]["ferry.dev/applied"].clone();
    assert_eq!(
        deployment, &expected,
        "the body is the pure function's object"
    );

    // The same release again: reads only, no write.
    fake.forget_requests();
    let done = cluster.apply_release(&objects).await.expect("apply again");
    assert_eq!(done, vec![Applied::Unchanged; 5]);
    assert!(
        fake.seen().iter().all(|l| l.starts_with("GET ")),
        "{:?}",
        fake.seen()
    );

    // A change of replicas writes that Deployment alone.
    let mut scaled = manifest.clone();
    scaled.services.get_mut("web").expect("web").replicas = 4;
    let objects =
        objects::objects(&common::release(&scaled, "staging", &secrets)).expect("objects");
    fake.forget_requests();
    cluster.apply_release(&objects).await.expect("apply scaled");
    let writes: Vec<String> = fake
        .seen()
        .into_iter()
        .filter(|l| !l.starts_with("GET "))
        .collect();
    assert_eq!(writes, [format!("PATCH {DEPLOYMENTS}/{web}")]);
    assert_eq!(
        fake.requests()
            .iter()
            .rfind(|s| s.method == "PATCH")
            .expect("patch")
            .body["spec"]["replicas"],
        4
    );
}

#[tokio::test]
async fn a_conflict_is_read_again_and_retried_then_reported() {
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let manifest = common::manifest();
    let secrets = common::secrets();
    let objects =
        objects::objects(&common::release(&manifest, "staging", &secrets)).expect("objects");
    let deployment = &objects.deployments[0];
    let name = deployment.metadata.name.clone().expect("name");
    let api = kube::Api::namespaced(fake.client(), "shop-staging");
    fake.fail(&format!("PATCH {DEPLOYMENTS}/{name}"), 409);
    assert_eq!(
        cluster.apply(&api, deployment).await.expect("retried"),
        Applied::Written
    );
    assert_eq!(
        fake.seen(),
        [
            format!("GET {DEPLOYMENTS}/{name}"),
            format!("PATCH {DEPLOYMENTS}/{name}"),
            format!("GET {DEPLOYMENTS}/{name}"),
            format!("PATCH {DEPLOYMENTS}/{name}"),
        ]
    );
    // Conflicting every time: an error naming the object, after the bounded retries.
    let other = &objects.deployments[1];
    let other_name = other.metadata.name.clone().expect("name");
    for _ in 0..=MAX_CONFLICT_RETRIES {
        fake.fail(&format!("PATCH {DEPLOYMENTS}/{other_name}"), 409);
    }
    fake.forget_requests();
    let error = cluster.apply(&api, other).await.unwrap_err();
    assert!(matches!(error, ClusterError::Conflict { .. }), "{error}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("Deployment {other_name}: still conflicting")),
        "{error}"
    );
    let patches = fake
        .seen()
        .iter()
        .filter(|l| l.starts_with("PATCH"))
        .count();
    assert_eq!(patches, 1 + MAX_CONFLICT_RETRIES as usize);
}

#[tokio::test]
async fn a_restarted_server_adopts_by_labels_and_reads_endpoints() {
    let fake = Fake::default();
    let manifest = common::manifest();
    let secrets = common::secrets();
    let objects =
        objects::objects(&common::release(&manifest, "staging", &secrets)).expect("objects");
    Cluster::new(fake.client())
        .apply_release(&objects)
        .await
        .expect("apply");
    // Someone else's Deployment in the namespace is not Ferry's.
    fake.put(
        &format!("{DEPLOYMENTS}/redis"),
        json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": { "name": "redis", "labels": { "app": "redis" } } }),
    );

    // A new client, as after a restart.
    fake.forget_requests();
    let cluster = Cluster::new(fake.client());
    let found = cluster
        .adopt("shop-staging", "shop", "staging")
        .await
        .expect("adopt");
    assert_eq!(fake.requests()[0].line(), format!("GET {DEPLOYMENTS}"),);
    assert_eq!(
        query_param(&fake.requests()[0].query, "labelSelector").as_deref(),
        Some("ferry.dev/app=shop,ferry.dev/env=staging")
    );
    let summary: Vec<(String, String, i32)> = found
        .iter()
        .map(|w| (w.service.clone(), w.version.clone(), w.replicas))
        .collect();
    assert_eq!(
        summary,
        [
            ("web".into(), common::VERSION.into(), 2),
            ("worker".into(), common::VERSION.into(), 1)
        ]
    );

    let web = objects.services[0].metadata.name.clone().expect("name");
    let slices = "/apis/discovery.k8s.io/v1/namespaces/shop-staging/endpointslices";
    // Instead of the fake's own slices, one with an unready endpoint.
    fake.lock().objects.retain(|k, _| !k.starts_with(slices));
    fake.put(
        &format!("{slices}/{web}-abc"),
        json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": { "name": format!("{web}-abc"), "labels": { "kubernetes.io/service-name": web } },
                "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
                "endpoints": [
                    { "addresses": ["10.1.0.7"], "conditions": { "ready": true } },
                    { "addresses": ["10.1.0.5"], "conditions": { "ready": true } },
                    { "addresses": ["10.1.0.9"], "conditions": { "ready": false } }
                ] }),
    );
    let endpoints = cluster
        .endpoints("shop-staging", &web)
        .await
        .expect("endpoints");
    assert_eq!(
        endpoints,
        [
            "10.1.0.5:8080".parse().expect("addr"),
            "10.1.0.7:8080".parse().expect("addr")
        ],
        "ready endpoints only, sorted"
    );
}

#[tokio::test]
async fn stop_scales_to_zero_then_deletes_with_the_grace_period() {
    let fake = Fake::default();
    let manifest = common::manifest();
    let secrets = common::secrets();
    let objects =
        objects::objects(&common::release(&manifest, "staging", &secrets)).expect("objects");
    let cluster = Cluster::new(fake.client());
    cluster.apply_release(&objects).await.expect("apply");
    let web = objects.deployments[0].metadata.name.clone().expect("name");
    fake.forget_requests();
    cluster
        .stop("shop-staging", &web, Duration::from_secs(20))
        .await
        .expect("stop");
    assert_eq!(
        fake.seen(),
        [
            format!("PATCH {DEPLOYMENTS}/{web}/scale"),
            format!("DELETE {DEPLOYMENTS}/{web}"),
            format!("DELETE {SERVICES}/{web}"),
        ]
    );
    let requests = fake.requests();
    assert_eq!(requests[0].body, json!({ "spec": { "replicas": 0 } }));
    assert_eq!(requests[1].body["gracePeriodSeconds"], 20);
    assert_eq!(requests[1].body["propagationPolicy"], "Foreground");
    // Stopping what is already gone is fine.
    cluster
        .stop("shop-staging", &web, Duration::from_secs(20))
        .await
        .expect("stop again");
}

#[tokio::test(start_paused = true)]
async fn a_hook_job_runs_once_even_when_asked_twice_and_dies_at_its_timeout() {
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let manifest = common::manifest();
    let secrets = common::secrets();
    let release = common::release(&manifest, "staging", &secrets);
    let hook = &manifest.hooks.pre_deploy[0];
    let attempt = HookAttempt {
        deployment: 42,
        phase: "pre_deploy",
        hook,
        attempt: 1,
        previous: None,
    };
    let job = objects::hook_job(&release, &attempt).expect("job");
    let name = job.metadata.name.clone().expect("name");
    let jobs = "/apis/batch/v1/namespaces/shop-staging/jobs";

    fake.lock().job_done_after = Some(3);
    let outcome = cluster
        .run_hook(&job, Duration::from_secs(60))
        .await
        .expect("run");
    assert_eq!(outcome.end, JobEnd::Succeeded);
    assert!(outcome.created);
    assert_eq!(outcome.log, "migrated 3 tables\n");
    let seen = fake.seen();
    assert_eq!(seen[0], format!("POST {jobs}"));
    assert_eq!(seen.iter().filter(|l| l.starts_with("POST")).count(), 1);

    // The same attempt again (a restarted server): the existing Job, never a second one.
    fake.forget_requests();
    let again = cluster
        .run_hook(&job, Duration::from_secs(60))
        .await
        .expect("run again");
    assert!(!again.created);
    assert_eq!(again.end, JobEnd::Succeeded);
    assert_eq!(
        fake.lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(jobs))
            .count(),
        1
    );

    // An attempt that never ends is deleted (with its pods) at its timeout.
    let stuck = objects::hook_job(
        &release,
        &HookAttempt {
            attempt: 2,
            ..attempt
        },
    )
    .expect("job");
    let stuck_name = stuck.metadata.name.clone().expect("name");
    fake.lock().job_done_after = None;
    fake.forget_requests();
    let outcome = cluster
        .run_hook(&stuck, Duration::from_secs(5))
        .await
        .expect("run stuck");
    assert_eq!(outcome.end, JobEnd::TimedOut);
    let delete = fake
        .requests()
        .into_iter()
        .find(|s| s.method == "DELETE")
        .expect("a DELETE");
    assert_eq!(delete.path, format!("{jobs}/{stuck_name}"));
    assert_eq!(delete.body["propagationPolicy"], "Background");
    assert!(
        !fake
            .lock()
            .objects
            .contains_key(&format!("{jobs}/{stuck_name}"))
    );
    assert_ne!(name, stuck_name);
}

#[tokio::test]
async fn gateway_weights_are_applied_only_when_they_change() {
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop-prod/httproutes/shop";
    fake.put(
        path,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "shop", "namespace": "shop-prod", "resourceVersion": "7" },
            "spec": { "parentRefs": [{ "name": "public" }], "hostnames": ["shop.example.com"],
                      "rules": [{ "backendRefs": [
                          { "name": "web-stable", "port": 80, "weight": 10000 },
                          { "name": "web-canary", "port": 80, "weight": 0 } ] }] }
        }),
    );
    assert!(
        cluster
            .set_weights("shop-prod", "shop", "web", 250)
            .await
            .expect("set")
    );
    let requests = fake.requests();
    assert_eq!(
        requests.iter().map(Seen::line).collect::<Vec<_>>(),
        [format!("GET {path}"), format!("PATCH {path}")]
    );
    let patch = &requests[1];
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        query_param(&patch.query, "fieldManager").as_deref(),
        Some("ferry")
    );
    assert_eq!(
        patch.body,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "shop", "namespace": "shop-prod", "resourceVersion": "7" },
            "spec": { "rules": [{ "backendRefs": [
                { "name": "web-stable", "port": 80, "weight": 9750 },
                { "name": "web-canary", "port": 80, "weight": 250 } ] }] }
        })
    );
    // Unchanged: a GET, no write.
    fake.forget_requests();
    assert!(
        !cluster
            .set_weights("shop-prod", "shop", "web", 250)
            .await
            .expect("set again")
    );
    assert_eq!(fake.seen(), [format!("GET {path}")]);
    // Someone changed the route meanwhile: 409, read again, apply again.
    fake.forget_requests();
    fake.fail(&format!("PATCH {path}"), 409);
    assert!(
        cluster
            .set_weights("shop-prod", "shop", "web", 5000)
            .await
            .expect("retried")
    );
    assert_eq!(
        fake.seen(),
        [
            format!("GET {path}"),
            format!("PATCH {path}"),
            format!("GET {path}"),
            format!("PATCH {path}")
        ]
    );
}

// ---------------------------------------------------------------------------------------
// The Kubernetes runtime (the `Runtime` trait) through the same fake.

const V1: &str = "1.4.0";
const V2: &str = "1.5.0";
const V3: &str = "1.6.0";

fn replica(id: &str, version: &str) -> ReplicaSpec {
    ReplicaSpec {
        id: id.to_string(),
        app: "shop".to_string(),
        env: "staging".to_string(),
        service: "web".to_string(),
        version: version.to_string(),
        argv: Vec::new(),
        cwd: None,
        env_vars: BTreeMap::new(),
        run_as: None,
        redact: Vec::new(),
        port: 0,
        health: HealthSpec::default(),
        stop_timeout: Duration::from_secs(20),
        container: None,
    }
}

fn runtime(fake: &Fake) -> KubernetesRuntime {
    // The poller would read every hour: the test steps it with `observe`.
    let runtime =
        KubernetesRuntime::with_poll(Cluster::new(fake.client()), Duration::from_secs(3600));
    runtime.configure(
        &common::manifest(),
        "staging",
        BTreeMap::from([("DB_PASSWORD".to_string(), common::SECRET_VALUE.to_string())]),
    );
    runtime
}

fn writes(fake: &Fake) -> Vec<String> {
    fake.seen()
        .into_iter()
        .filter(|l| !l.starts_with("GET "))
        .collect()
}

fn drain(events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>) -> Vec<RuntimeEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

fn replicas_sent(fake: &Fake, name: &str) -> Value {
    fake.requests()
        .iter()
        .rev()
        .find(|s| s.method == "PATCH" && s.path.ends_with(name))
        .map(|s| s.body["spec"]["replicas"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn a_canary_on_the_runtime_scales_two_deployments_and_retires_the_old_one() {
    let fake = Fake::default();
    let rt = runtime(&fake);
    let mut events = rt.subscribe();
    let v1 = names::workload("web", V1);
    let v2 = names::workload("web", V2);

    // The stable version: two replicas are one Deployment with replicas 2.
    rt.start(replica("web-a", V1)).await.expect("start a");
    rt.start(replica("web-b", V1)).await.expect("start b");
    assert_eq!(replicas_sent(&fake, &format!("deployments/{v1}")), 2);
    let secret = fake
        .requests()
        .into_iter()
        .find(|s| s.method == "PATCH" && s.path.contains("/secrets/"))
        .expect("the Secret is applied");
    assert_eq!(
        secret.body["data"]["DB_PASSWORD"], "czNjcjN0LWRiLXBhc3N3b3JkLTdmMmE=",
        "base64 of the value, in the Secret alone"
    );
    let deployment = fake
        .requests()
        .into_iter()
        .rfind(|s| s.path.ends_with(&format!("deployments/{v1}")))
        .expect("deployment");
    assert!(
        !deployment.body.to_string().contains(common::SECRET_VALUE),
        "a secret value only ever goes into the Secret"
    );
    rt.observe().await;
    let healthy: Vec<String> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            RuntimeEvent::Healthy { id } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(healthy, ["web-a", "web-b"]);
    let a = rt.endpoint("web-a").expect("endpoint of a");
    let b = rt.endpoint("web-b").expect("endpoint of b");
    assert_ne!(a, b);
    for endpoint in [a, b] {
        assert!(!endpoint.ip().is_loopback(), "{endpoint}: a pod address");
        assert_eq!(endpoint.port(), 8080);
    }

    // The canary: one replica of the new version, the stable Deployment untouched.
    fake.forget_requests();
    rt.start(replica("web-c", V2)).await.expect("start canary");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {SERVICES}/{v2}"),
            format!("PATCH {DEPLOYMENTS}/{v2}")
        ],
        "the namespace, the Secret and v1 are unchanged: no write"
    );
    assert_eq!(replicas_sent(&fake, &format!("deployments/{v2}")), 1);
    rt.observe().await;
    assert!(rt.endpoint("web-c").is_some());

    // Scale steps: v2 up to 2, v1 down to 1, then 0 (deleted with its Service).
    fake.forget_requests();
    rt.start(replica("web-d", V2)).await.expect("start d");
    rt.stop("web-a").await.expect("stop a");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {DEPLOYMENTS}/{v2}"),
            format!("PATCH {DEPLOYMENTS}/{v1}/scale")
        ]
    );
    assert_eq!(replicas_sent(&fake, &format!("deployments/{v2}")), 2);
    assert_eq!(replicas_sent(&fake, &format!("deployments/{v1}/scale")), 1);
    fake.forget_requests();
    rt.stop("web-b").await.expect("stop b");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {DEPLOYMENTS}/{v1}/scale"),
            format!("DELETE {DEPLOYMENTS}/{v1}"),
            format!("DELETE {SERVICES}/{v1}"),
        ]
    );
    assert_eq!(fake.requests()[1].body["propagationPolicy"], "Foreground");
    assert_eq!(fake.requests()[1].body["gracePeriodSeconds"], 20);
    let stopped: Vec<RuntimeEvent> = drain(&mut events)
        .into_iter()
        .filter(|e| matches!(e, RuntimeEvent::Stopped { .. }))
        .collect();
    assert_eq!(
        stopped,
        [
            RuntimeEvent::Stopped { id: "web-a".into() },
            RuntimeEvent::Stopped { id: "web-b".into() }
        ]
    );
    assert!(rt.status("web-a").is_none());
    let ids: Vec<String> = rt.list().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, ["web-c", "web-d"]);

    // Its logs come from the pods' log API.
    let mut lines = rt.logs("web-c", 10, false);
    assert_eq!(lines.recv().await.as_deref(), Some("migrated 3 tables"));
    let log = fake
        .requests()
        .into_iter()
        .find(|s| s.path.ends_with("/log"))
        .expect("a log request");
    assert!(
        log.path
            .starts_with("/api/v1/namespaces/shop-staging/pods/")
    );
    assert_eq!(query_param(&log.query, "tailLines").as_deref(), Some("10"));
}

#[tokio::test]
async fn a_version_that_never_gets_ready_is_rolled_back() {
    let fake = Fake::default();
    let rt = runtime(&fake);
    let mut events = rt.subscribe();
    let v2 = names::workload("web", V2);
    let v3 = names::workload("web", V3);
    fake.lock().unready.push(v3.clone());
    rt.start(replica("web-c", V2)).await.expect("start stable");
    rt.start(replica("web-e", V3)).await.expect("start canary");
    rt.observe().await;
    let seen = drain(&mut events);
    assert!(seen.contains(&RuntimeEvent::Healthy { id: "web-c".into() }));
    assert!(
        !seen.contains(&RuntimeEvent::Healthy { id: "web-e".into() }),
        "{seen:?}"
    );
    assert_eq!(rt.endpoint("web-e"), None, "no address before it is ready");
    assert_eq!(
        rt.status("web-e").expect("status").state,
        ferry_core::model::ReplicaState::Starting
    );

    // The rollback: the canary goes, the stable version stays as it was.
    fake.forget_requests();
    rt.stop("web-e").await.expect("stop canary");
    let w = writes(&fake);
    assert!(w.contains(&format!("DELETE {DEPLOYMENTS}/{v3}")), "{w:?}");
    assert!(w.iter().all(|l| !l.contains(&v2)), "{w:?}");
    assert!(rt.endpoint("web-c").is_some());

    // A ready replica whose pods stop being ready is Unhealthy.
    fake.lock().unready.push(v2.clone());
    let path = format!("{DEPLOYMENTS}/{v2}");
    settle(&mut fake.lock(), &path);
    rt.observe().await;
    assert!(drain(&mut events).contains(&RuntimeEvent::Unhealthy {
        id: "web-c".into(),
        reason: format!("Deployment {v2} has 0 ready pods of 1"),
    }));
    assert_eq!(rt.endpoint("web-c"), None);
}

#[tokio::test]
async fn a_restarted_server_adopts_the_replicas_its_deployments_have() {
    let fake = Fake::default();
    let v2 = names::workload("web", V2);
    {
        let before = runtime(&fake);
        before.start(replica("web-c", V2)).await.expect("c");
        before.start(replica("web-d", V2)).await.expect("d");
    }
    // A new server: a new client and runtime, the same cluster.
    fake.forget_requests();
    let rt = runtime(&fake);
    let mut events = rt.subscribe();
    assert!(rt.adopt(replica("web-c", V2), None).await.expect("adopt c"));
    assert!(rt.adopt(replica("web-d", V2), None).await.expect("adopt d"));
    assert!(
        !rt.adopt(replica("web-x", V2), None).await.expect("adopt x"),
        "the Deployment has 2 replicas: a third is not there"
    );
    assert!(
        !rt.adopt(replica("web-y", V3), None).await.expect("adopt y"),
        "no Deployment of that version"
    );
    assert!(writes(&fake).is_empty(), "adoption writes nothing");
    let list = &fake.requests()[0];
    assert_eq!(list.line(), format!("GET {DEPLOYMENTS}"));
    assert_eq!(
        query_param(&list.query, "labelSelector").as_deref(),
        Some("ferry.dev/app=shop,ferry.dev/env=staging")
    );
    rt.observe().await;
    assert_eq!(
        drain(&mut events),
        [
            RuntimeEvent::Healthy { id: "web-c".into() },
            RuntimeEvent::Healthy { id: "web-d".into() }
        ]
    );
    // Stopping one of them scales the adopted Deployment down.
    fake.forget_requests();
    rt.stop("web-d").await.expect("stop d");
    assert_eq!(writes(&fake), [format!("PATCH {DEPLOYMENTS}/{v2}/scale")]);
}

/// The next event matching `wanted`, within a bounded time (the watch drives it).
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<RuntimeEvent>,
    wanted: impl Fn(&RuntimeEvent) -> bool,
) -> RuntimeEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("the event within 20 s")
}

#[tokio::test]
async fn the_runtime_watches_deployments_and_endpoint_slices_instead_of_polling() {
    let fake = Fake::default();
    // Watching, with the default resync (30 s): within the bounded waits below only a
    // watch can bring the changes.
    let rt = KubernetesRuntime::new(Cluster::new(fake.client()));
    rt.configure(&common::manifest(), "staging", BTreeMap::new());
    let mut events = rt.subscribe();
    rt.start(replica("web-a", V1)).await.expect("start");
    let healthy = next_event(&mut events, |e| matches!(e, RuntimeEvent::Healthy { .. })).await;
    assert_eq!(healthy, RuntimeEvent::Healthy { id: "web-a".into() });
    assert!(rt.endpoint("web-a").is_some());
    let watches = fake.lock().watches.clone();
    for kind in [
        DEPLOYMENTS,
        "/apis/discovery.k8s.io/v1/namespaces/shop-staging/endpointslices",
    ] {
        let watch = watches
            .iter()
            .find(|w| w.path == kind)
            .unwrap_or_else(|| panic!("a watch of {kind} in {watches:?}"));
        assert_eq!(
            query_param(&watch.query, "labelSelector").as_deref(),
            Some("ferry.dev/app=shop,ferry.dev/env=staging")
        );
    }

    // Its pods stop being ready (the kubelet's probes fail): Unhealthy, by the watch.
    let v1 = names::workload("web", V1);
    fake.lock().unready.push(v1.clone());
    settle(&mut fake.lock(), &format!("{DEPLOYMENTS}/{v1}"));
    fake.touch();
    let unhealthy = next_event(&mut events, |e| matches!(e, RuntimeEvent::Unhealthy { .. })).await;
    assert_eq!(
        unhealthy,
        RuntimeEvent::Unhealthy {
            id: "web-a".into(),
            reason: format!("Deployment {v1} has 0 ready pods of 1"),
        }
    );
    assert_eq!(rt.endpoint("web-a"), None);
    // Each watch went on from the last resourceVersion it saw, not from the start.
    let later = fake.lock().watches.clone();
    assert!(
        later
            .iter()
            .any(|w| query_param(&w.query, "resourceVersion").is_some_and(|v| v != "0")),
        "{later:?}"
    );
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within 20 s"));
}

/// The watch requests the fake got for `namespace`.
fn watches_in(fake: &Fake, namespace: &str) -> Vec<Seen> {
    let infix = format!("/namespaces/{namespace}/");
    fake.lock()
        .watches
        .iter()
        .filter(|w| w.path.contains(&infix))
        .cloned()
        .collect()
}

#[tokio::test]
async fn watches_end_with_the_last_replica_and_open_again_with_the_next() {
    let fake = Fake::default();
    // Watching, with the default resync (30 s): within the bounded waits below only a
    // watch can bring the changes.
    let rt = KubernetesRuntime::new(Cluster::new(fake.client()));
    for env in ["staging", "production"] {
        rt.configure(&common::manifest(), env, BTreeMap::new());
    }
    let mut events = rt.subscribe();
    let in_production = |id: &str| ReplicaSpec {
        env: "production".to_string(),
        ..replica(id, V1)
    };
    rt.start(replica("web-a", V1)).await.expect("start a");
    rt.start(in_production("web-p")).await.expect("start p");
    for id in ["web-a", "web-p"] {
        next_event(&mut events, |e| {
            *e == RuntimeEvent::Healthy { id: id.into() }
        })
        .await;
    }
    // One watch of the Deployments and one of the EndpointSlices per environment.
    until("two watches in each namespace", || {
        fake.open_watches("shop-staging") == 2 && fake.open_watches("shop-prod") == 2
    })
    .await;

    // The last replica of staging stops: its watches end, production's go on.
    rt.stop("web-a").await.expect("stop a");
    until("staging's watches closed", || {
        fake.open_watches("shop-staging") == 0
    })
    .await;
    assert_eq!(fake.open_watches("shop-prod"), 2);
    let staging_watches = watches_in(&fake, "shop-staging").len();
    // Changes in both namespaces: production's watches answer and are opened again (the
    // client is still there), staging sees no watch request, and the resync reads nothing
    // of staging.
    let production_watches = watches_in(&fake, "shop-prod").len();
    for (namespace, name) in [("shop-staging", "other"), ("shop-prod", "other")] {
        fake.put(
            &format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}"),
            json!({ "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": { "name": name, "namespace": namespace, "resourceVersion": "9999",
                                  "labels": { "ferry.dev/app": "shop",
                                              "ferry.dev/env": if namespace == "shop-prod" { "production" } else { "staging" } } } }),
        );
    }
    fake.touch();
    until("production's watch opened again", || {
        watches_in(&fake, "shop-prod").len() > production_watches
    })
    .await;
    fake.forget_requests();
    rt.observe().await;
    assert_eq!(watches_in(&fake, "shop-staging").len(), staging_watches);
    assert!(
        fake.seen()
            .iter()
            .all(|line| !line.contains("shop-staging")),
        "{:?}",
        fake.seen()
    );

    // Teardown: every replica stopped, every watch closed; then not one request at all,
    // whatever changes.
    rt.remove_all().await.expect("teardown");
    until("production's watches closed", || {
        fake.open_watches("shop-prod") == 0
    })
    .await;
    let watched = fake.lock().watches.len();
    fake.forget_requests();
    rt.observe().await;
    assert_eq!(fake.seen(), Vec::<String>::new());
    assert_eq!(fake.lock().watches.len(), watched);

    // A replica started again opens the watches again, from the start, and they bring its
    // readiness.
    rt.start(replica("web-c", V2)).await.expect("start c");
    next_event(&mut events, |e| {
        *e == RuntimeEvent::Healthy { id: "web-c".into() }
    })
    .await;
    until("staging watched again", || {
        fake.open_watches("shop-staging") == 2
    })
    .await;
    // (then each goes on from the last version it saw)
    let mut again: Vec<(String, Option<String>)> = watches_in(&fake, "shop-staging")
        [staging_watches..]
        .iter()
        .take(2)
        .map(|w| (w.path.clone(), query_param(&w.query, "resourceVersion")))
        .collect();
    again.sort();
    assert_eq!(
        again,
        [
            (DEPLOYMENTS.to_string(), Some("0".to_string())),
            (
                "/apis/discovery.k8s.io/v1/namespaces/shop-staging/endpointslices".to_string(),
                Some("0".to_string())
            ),
        ]
    );
    assert_eq!(fake.open_watches("shop-prod"), 0);
}

/// A TLS API server on 127.0.0.1 for [`the_client_speaks_tls_and_sends_the_kubeconfig_token`]:
/// its certificate (for the IP 127.0.0.1) signed by a CA of its own; it answers an empty
/// list to a request that carries `Bearer fake-token`, 401 to others, and keeps each
/// request's head.
struct TlsApi {
    url: String,
    /// The CA that signed the server's certificate, PEM.
    ca: String,
    heads: Arc<Mutex<Vec<String>>>,
}

fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA");
    (cert, rcgen::Issuer::new(params, key))
}

impl TlsApi {
    async fn start() -> TlsApi {
        let (ca, issuer) = test_ca("fake cluster CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocols")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
                    .expect("private key"),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 16_384 {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let authorized = head
                        .lines()
                        .any(|l| l.eq_ignore_ascii_case("authorization: Bearer fake-token"));
                    seen.lock().expect("heads").push(head);
                    let (code, body) = if authorized {
                        (
                            "200 OK",
                            json!({ "apiVersion": "apps/v1", "kind": "DeploymentList",
                                            "metadata": { "resourceVersion": "7" }, "items": [] }),
                        )
                    } else {
                        ("401 Unauthorized", status(401, "Unauthorized"))
                    };
                    let body = body.to_string();
                    let answer = format!(
                        "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TlsApi {
            url,
            ca: ca.pem(),
            heads,
        }
    }

    /// A client configured by a kubeconfig naming this server, `ca` as its authority and
    /// `token`, as `Cluster::connect` would read it from `$KUBECONFIG`.
    async fn cluster(&self, dir: &std::path::Path, ca: &str, token: &str) -> Cluster {
        let ca_file = dir.join(format!(
            "ca-{}.pem",
            self.heads.lock().expect("heads").len()
        ));
        std::fs::write(&ca_file, ca).expect("write the CA");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{ server: \"{}\", certificate-authority: \"{}\" }}\nusers:\n- name: u\n  user: {{ token: {token} }}\ncontexts:\n- name: x\n  context: {{ cluster: c, user: u }}\ncurrent-context: x\n",
            self.url,
            ca_file.display()
        );
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("config");
        Cluster::new(kube::Client::try_from(config).expect("client"))
    }
}

#[tokio::test]
async fn the_client_speaks_tls_and_sends_the_kubeconfig_token() {
    let api = TlsApi::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The cluster's CA and token: the request goes through, with the token.
    let cluster = api.cluster(dir.path(), &api.ca, "fake-token").await;
    let found = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.adopt("shop-staging", "shop", "staging"),
    )
    .await
    .expect("an answer within 20 s")
    .expect("the list over TLS");
    assert!(found.is_empty());
    let heads = api.heads.lock().expect("heads").clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].starts_with("GET /apis/apps/v1/namespaces/shop-staging/deployments?"),
        "{heads:?}"
    );

    // A wrong token: the server's 401 is an error.
    let cluster = api.cluster(dir.path(), &api.ca, "wrong-token").await;
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.adopt("shop-staging", "shop", "staging"),
    )
    .await
    .expect("an answer within 20 s");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(api.heads.lock().expect("heads").len(), 2);

    // Another CA: the server is not trusted, no request reaches it.
    let (other, _) = test_ca("another CA");
    let cluster = api.cluster(dir.path(), &other.pem(), "fake-token").await;
    let untrusted = tokio::time::timeout(
        Duration::from_secs(20),
        cluster.adopt("shop-staging", "shop", "staging"),
    )
    .await
    .expect("an answer within 20 s");
    let error = untrusted.expect_err("a server another CA signed");
    assert_eq!(api.heads.lock().expect("heads").len(), 2, "{error}");
}

#[tokio::test]
async fn after_a_restart_deployments_no_replica_accounts_for_are_trimmed() {
    const V4: &str = "1.7.0";
    let fake = Fake::default();
    let [v1, v2, v3, v4] = [V1, V2, V3, V4].map(|v| names::workload("web", v));
    {
        let before = runtime(&fake);
        for (id, version) in [
            ("web-a", V1),
            ("web-b", V1),
            ("web-c", V2),
            ("web-d", V3),
            ("web-e", V4),
        ] {
            before.start(replica(id, version)).await.expect("start");
        }
    }
    // Someone scaled V3 to 0 while no server ran.
    fake.lock()
        .objects
        .get_mut(&format!("{DEPLOYMENTS}/{v3}"))
        .expect("v3")["spec"]["replicas"] = json!(0);

    // The new server's store knows web-a (not web-b), web-c, web-x (one more than V2 has)
    // and web-d.
    fake.forget_requests();
    let rt = runtime(&fake);
    assert!(rt.adopt(replica("web-a", V1), None).await.expect("a"));
    assert!(rt.adopt(replica("web-c", V2), None).await.expect("c"));
    assert!(!rt.adopt(replica("web-x", V2), None).await.expect("x"));
    assert_eq!(rt.discard("web-x", None).await, 0);
    assert!(
        writes(&fake).is_empty(),
        "V2 has as many pods as adopted replicas"
    );
    assert!(!rt.adopt(replica("web-d", V3), None).await.expect("d"));
    assert_eq!(rt.discard("web-d", None).await, 0, "it had no pods");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {DEPLOYMENTS}/{v3}/scale"),
            format!("DELETE {DEPLOYMENTS}/{v3}"),
            format!("DELETE {SERVICES}/{v3}"),
        ],
        "a Deployment no replica accounts for is deleted"
    );
    assert_eq!(rt.discard("never-adopted", None).await, 0);

    // What no row accounts for: web-b's pod (V1 2 → 1) and all of V4; V2 stays.
    fake.forget_requests();
    let removed = rt
        .remove_orphans(&["web-a".to_string(), "web-c".to_string()])
        .await
        .expect("orphans");
    assert_eq!(removed, 2);
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {DEPLOYMENTS}/{v1}/scale"),
            format!("PATCH {DEPLOYMENTS}/{v4}/scale"),
            format!("DELETE {DEPLOYMENTS}/{v4}"),
            format!("DELETE {SERVICES}/{v4}"),
        ]
    );
    assert_eq!(replicas_sent(&fake, &format!("deployments/{v1}/scale")), 1);
    let delete = fake
        .requests()
        .into_iter()
        .find(|s| s.line() == format!("DELETE {DEPLOYMENTS}/{v4}"))
        .expect("delete");
    assert_eq!(delete.body["gracePeriodSeconds"], 20, "web's stop_timeout");
    assert!(
        fake.lock()
            .objects
            .contains_key(&format!("{DEPLOYMENTS}/{v2}"))
    );
    // A second pass finds nothing more.
    fake.forget_requests();
    assert_eq!(rt.remove_orphans(&[]).await.expect("again"), 0);
    assert!(writes(&fake).is_empty(), "{:?}", writes(&fake));
}

#[tokio::test(start_paused = true)]
async fn a_task_runs_once_as_a_job_with_its_secrets_from_the_secret() {
    let fake = Fake::default();
    let rt = runtime(&fake);
    fake.lock().job_done_after = Some(2);
    let task = TaskSpec {
        name: "hook-migrate-17".to_string(),
        app: "shop".to_string(),
        env: "staging".to_string(),
        argv: vec!["shop".to_string(), "migrate".to_string()],
        env_vars: BTreeMap::from([
            ("VERSION".to_string(), V2.to_string()),
            ("DB_PASSWORD".to_string(), common::SECRET_VALUE.to_string()),
            ("MIGRATION_LOCK".to_string(), "1".to_string()),
        ]),
        cwd: None,
        run_as: None,
        timeout: Duration::from_secs(60),
        output: TaskOutput::Capture { max_bytes: 1024 },
        container: None,
    };
    let outcome = rt.run_task(task.clone(), None).await.expect("task");
    assert_eq!(outcome.end, TaskEnd::Exited(0));
    assert_eq!(outcome.stdout, "migrated 3 tables\n");
    let jobs = "/apis/batch/v1/namespaces/shop-staging/jobs";
    let post = fake
        .requests()
        .into_iter()
        .find(|s| s.method == "POST")
        .expect("the Job is created");
    assert_eq!(post.path, jobs);
    assert_eq!(post.body["metadata"]["name"], "hook-migrate-17");
    let container = &post.body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], json!(["shop", "migrate"]));
    assert_eq!(
        container["image"],
        format!("registry.example.com/shop/web:{V2}")
    );
    assert!(!post.body.to_string().contains(common::SECRET_VALUE));
    let password = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "DB_PASSWORD")
        .expect("DB_PASSWORD");
    assert_eq!(
        password["valueFrom"]["secretKeyRef"]["name"],
        "shop-staging-ferry-secrets"
    );

    // The same task again (a restarted server retrying the attempt): 409, the same Job.
    fake.forget_requests();
    let again = rt.run_task(task, None).await.expect("task again");
    assert_eq!(again.end, TaskEnd::Exited(0));
    assert_eq!(
        fake.lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(jobs))
            .count(),
        1,
        "one Job"
    );
}

const ROUTE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop-prod/httproutes/shop";
const PROD_SERVICES: &str = "/api/v1/namespaces/shop-prod/services";

/// The production environment's HTTPRoute as its GitOps repository has it: all traffic on
/// `web-stable`.
fn gitops_route(fake: &Fake) {
    fake.put(
        ROUTE,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "shop", "namespace": "shop-prod", "resourceVersion": "3" },
            "spec": { "parentRefs": [{ "name": "public" }],
                      "rules": [{ "backendRefs": [
                          { "name": "web-stable", "port": 80, "weight": 10000 },
                          { "name": "web-canary", "port": 80, "weight": 0 } ] }] }
        }),
    );
}

/// (stable weight, canary weight) of the live route.
fn live_weights(fake: &Fake) -> (Value, Value) {
    let state = fake.lock();
    let refs = &state.objects[ROUTE]["spec"]["rules"][0]["backendRefs"];
    (refs[0]["weight"].clone(), refs[1]["weight"].clone())
}

/// The version label the live gateway Service `web-ROLE` selects.
fn selects(fake: &Fake, role: &str) -> Value {
    fake.lock().objects[&format!("{PROD_SERVICES}/web-{role}")]["spec"]["selector"]
        ["ferry.dev/version"]
        .clone()
}

fn web(shares: &[(&str, u32)]) -> Vec<(String, Vec<(String, u32)>)> {
    vec![(
        "web".to_string(),
        shares.iter().map(|(v, w)| (v.to_string(), *w)).collect(),
    )]
}

#[tokio::test]
async fn gateway_traffic_follows_the_route_table_through_a_canary_and_a_rollback() {
    let fake = Fake::default();
    gitops_route(&fake);
    let rt = runtime(&fake);
    rt.configure(&common::manifest(), "production", BTreeMap::new());
    let label = |version: &str| json!(names::label_value(version));

    // Before the rollout: V1 serves; both Services are created selecting it, and the
    // route already has these weights: no write to it.
    let n = rt
        .route_gateway("shop", "production", None, &web(&[(V1, 10_000)]))
        .await
        .expect("stable");
    assert_eq!(n, 2);
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {PROD_SERVICES}/web-canary"),
            format!("PATCH {PROD_SERVICES}/web-stable")
        ]
    );
    assert!(fake.seen().contains(&format!("GET {ROUTE}")));
    assert_eq!(
        (selects(&fake, "stable"), selects(&fake, "canary")),
        (label(V1), label(V1))
    );

    // The canary at 10 %: web-canary selects V2 first, then the weights move.
    fake.forget_requests();
    rt.route_gateway(
        "shop",
        "production",
        Some(V2),
        &web(&[(V2, 1_000), (V1, 9_000)]),
    )
    .await
    .expect("10 %");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {PROD_SERVICES}/web-canary"),
            format!("PATCH {ROUTE}")
        ],
        "the selector before the weight; web-stable unchanged"
    );
    assert_eq!(selects(&fake, "canary"), label(V2));
    assert_eq!(live_weights(&fake), (json!(9_000), json!(1_000)));
    let patch = fake
        .requests()
        .into_iter()
        .find(|s| s.line() == format!("PATCH {ROUTE}"))
        .expect("route patch");
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        query_param(&patch.query, "fieldManager").as_deref(),
        Some("ferry")
    );
    assert!(
        patch.body["spec"].get("parentRefs").is_none(),
        "the rest of the route is left to GitOps"
    );

    // The same table again (the controller's next pass): nothing sent at all.
    fake.forget_requests();
    let n = rt
        .route_gateway(
            "shop",
            "production",
            Some(V2),
            &web(&[(V2, 1_000), (V1, 9_000)]),
        )
        .await
        .expect("unchanged");
    assert_eq!(n, 0);
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());

    // 50 %, then 100 %: the weights alone.
    for (canary, stable) in [(5_000, 5_000), (10_000, 0)] {
        fake.forget_requests();
        rt.route_gateway(
            "shop",
            "production",
            Some(V2),
            &web(&[(V2, canary), (V1, stable)]),
        )
        .await
        .expect("step");
        assert_eq!(writes(&fake), [format!("PATCH {ROUTE}")]);
        assert_eq!(live_weights(&fake), (json!(stable), json!(canary)));
    }
    // V1's replicas are gone: V2 is the stable version, web-canary weighs 0 again.
    fake.forget_requests();
    rt.route_gateway("shop", "production", None, &web(&[(V2, 10_000)]))
        .await
        .expect("done");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {PROD_SERVICES}/web-stable"),
            format!("PATCH {ROUTE}")
        ],
        "web-stable selects V2 before it gets the weight"
    );
    assert_eq!(
        (selects(&fake, "stable"), selects(&fake, "canary")),
        (label(V2), label(V2))
    );
    assert_eq!(live_weights(&fake), (json!(10_000), json!(0)));

    // V3 canary at 25 %, then a rollback: its replicas are no longer ready, the weights go
    // back to V2 and web-canary selects V2 again.
    rt.route_gateway(
        "shop",
        "production",
        Some(V3),
        &web(&[(V3, 2_500), (V2, 7_500)]),
    )
    .await
    .expect("V3 at 25 %");
    assert_eq!(live_weights(&fake), (json!(7_500), json!(2_500)));
    assert_eq!(selects(&fake, "canary"), label(V3));
    fake.forget_requests();
    rt.route_gateway("shop", "production", Some(V3), &web(&[(V2, 10_000)]))
        .await
        .expect("rollback");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {PROD_SERVICES}/web-canary"),
            format!("PATCH {ROUTE}")
        ]
    );
    assert_eq!(live_weights(&fake), (json!(10_000), json!(0)));
    assert_eq!(selects(&fake, "canary"), label(V2));

    // Nothing ready (e.g. every pod restarting): the route is left as it is.
    fake.forget_requests();
    rt.route_gateway("shop", "production", Some(V3), &web(&[]))
        .await
        .expect("nothing ready");
    assert!(fake.seen().is_empty());

    // An environment that is not `traffic: gateway` has no route to set.
    assert_eq!(
        rt.route_gateway("shop", "staging", None, &web(&[(V1, 10_000)]))
            .await
            .expect("staging"),
        0
    );
    assert!(fake.seen().is_empty());

    // A route that does not list the service's two backends: a located error.
    fake.lock().objects.get_mut(ROUTE).expect("route")["spec"]["rules"][0]["backendRefs"][1]["name"] =
        json!("web-preview");
    let error = rt
        .route_gateway(
            "shop",
            "production",
            Some(V3),
            &web(&[(V3, 100), (V2, 9_900)]),
        )
        .await
        .unwrap_err();
    let shown = error.to_string();
    assert!(
        shown.contains("HTTPRoute shop has no backendRef to Service web-canary"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------
// Ferry's own RBAC (deploy/kubernetes/ferry.yaml) against the requests the fakes saw.

/// The (apiGroup, resource, verb) a request needs. A server-side apply that creates its
/// object is also authorized as a create.
fn permissions(seen: &Seen, existed: bool) -> Vec<(String, String, String)> {
    let segs: Vec<&str> = seen.path.trim_start_matches('/').split('/').collect();
    let (group, rest) = if segs[0] == "api" {
        ("", &segs[2..])
    } else {
        (segs[1], &segs[3..])
    };
    let (resource, name, sub) = if rest[0] == "namespaces" && rest.len() >= 3 {
        (rest[2], rest.get(3), rest.get(4))
    } else {
        (rest[0], rest.get(1), rest.get(2))
    };
    let resource = match sub {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_string(),
    };
    let verb = match (seen.method.as_str(), name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if query_param(&seen.query, "watch").as_deref() == Some("true") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        (other, _) => panic!("unexpected method {other}"),
    };
    let mut out = vec![(group.to_string(), resource.clone(), verb.to_string())];
    if seen.content_type == "application/apply-patch+yaml" && !existed {
        out.push((group.to_string(), resource, "create".to_string()));
    }
    out
}

#[test]
fn ferry_s_own_rbac_grants_every_request_the_runtime_makes_and_nothing_more() {
    // Every scenario above, again, so that this test sees all their requests.
    a_release_is_applied_in_order_once_and_then_left_alone();
    a_conflict_is_read_again_and_retried_then_reported();
    a_restarted_server_adopts_by_labels_and_reads_endpoints();
    stop_scales_to_zero_then_deletes_with_the_grace_period();
    a_hook_job_runs_once_even_when_asked_twice_and_dies_at_its_timeout();
    gateway_weights_are_applied_only_when_they_change();
    a_canary_on_the_runtime_scales_two_deployments_and_retires_the_old_one();
    a_version_that_never_gets_ready_is_rolled_back();
    a_restarted_server_adopts_the_replicas_its_deployments_have();
    a_task_runs_once_as_a_job_with_its_secrets_from_the_secret();
    gateway_traffic_follows_the_route_table_through_a_canary_and_a_rollback();
    after_a_restart_deployments_no_replica_accounts_for_are_trimmed();
    the_runtime_watches_deployments_and_endpoint_slices_instead_of_polling();
    watches_end_with_the_last_replica_and_open_again_with_the_next();
    the_proxy_fleet_is_applied_its_table_saved_and_its_ready_pods_found();
    a_retired_proxy_fleet_is_deleted_by_its_labels_only();
    let used: std::collections::BTreeSet<(String, String, String)> = EVERY_REQUEST
        .lock()
        .expect("every request")
        .iter()
        .flat_map(|(seen, existed)| permissions(seen, *existed))
        .collect();

    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/ferry.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/kubernetes/ferry.yaml");
    let role = text
        .split("\n---\n")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("a YAML document"))
        .find(|doc| doc["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut granted = std::collections::BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let list = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .unwrap_or_else(|| panic!("{key} in {rule}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_string())
                .collect()
        };
        for group in list("apiGroups") {
            for resource in list("resources") {
                for verb in list("verbs") {
                    assert!(
                        group != "*" && resource != "*" && verb != "*",
                        "no wildcard: {rule}"
                    );
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    let missing: Vec<_> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "requests the ClusterRole does not allow: {missing:?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "permissions no request needs: {unused:?}"
    );
}

#[tokio::test]
async fn the_proxy_fleet_is_applied_its_table_saved_and_its_ready_pods_found() {
    use ferry_k8s::proxy;
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let manifest = common::manifest();
    let fleet = proxy::proxy_objects(
        &manifest,
        "staging",
        "ferry:1",
        proxy::DEFAULT_SERVER_NAMESPACE,
    )
    .expect("fleet");
    let namespace = objects::namespace(&manifest, "staging");
    let token = proxy::admin_secret(&manifest, "staging", "t0k3n");
    assert_eq!(
        cluster
            .secret_value("shop-staging", proxy::ADMIN_SECRET, proxy::TOKEN_KEY)
            .await
            .expect("read"),
        None,
        "no token yet"
    );
    cluster
        .apply_proxy(&namespace, &token, &fleet)
        .await
        .expect("apply the fleet");
    let writes: Vec<String> = fake
        .seen()
        .into_iter()
        .filter(|l| l.starts_with("PATCH"))
        .collect();
    assert_eq!(
        writes,
        [
            format!("PATCH {NS}"),
            format!("PATCH {NS}/secrets/ferry-proxy-admin"),
            format!("PATCH {SERVICES}/ferry-proxy"),
            format!("PATCH {SERVICES}/ferry-proxy-admin"),
            format!("PATCH {POLICIES}/ferry-proxy-admin"),
            format!("PATCH {DEPLOYMENTS}/ferry-proxy"),
        ]
    );
    assert_eq!(
        cluster
            .secret_value("shop-staging", proxy::ADMIN_SECRET, proxy::TOKEN_KEY)
            .await
            .expect("read"),
        Some("t0k3n".to_string())
    );
    // Unchanged: reads only.
    fake.forget_requests();
    cluster
        .apply_proxy(&namespace, &token, &fleet)
        .await
        .expect("apply again");
    assert!(
        fake.seen().iter().all(|l| l.starts_with("GET ")),
        "{:?}",
        fake.seen()
    );
    // The route table's ConfigMap: written once, then left alone.
    let map = proxy::routes_config_map(&manifest, "staging", common::ROUTES);
    assert_eq!(
        cluster.apply_config_map(&map).await.expect("map"),
        Applied::Written
    );
    assert_eq!(
        cluster.apply_config_map(&map).await.expect("map"),
        Applied::Unchanged
    );
    // The ready pods of the headless admin Service, by name, on the admin port.
    fake.put(
        "/apis/discovery.k8s.io/v1/namespaces/shop-staging/endpointslices/ferry-proxy-admin-x1",
        json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": { "name": "ferry-proxy-admin-x1", "namespace": "shop-staging",
                              "labels": { "kubernetes.io/service-name": "ferry-proxy-admin" } },
                "ports": [{ "name": "admin", "port": 9901, "protocol": "TCP" }],
                "endpoints": [
                    { "addresses": ["10.1.0.7"], "conditions": { "ready": true },
                      "targetRef": { "kind": "Pod", "name": "ferry-proxy-abc" } },
                    { "addresses": ["10.1.0.8"], "conditions": { "ready": false },
                      "targetRef": { "kind": "Pod", "name": "ferry-proxy-def" } } ] }),
    );
    assert_eq!(
        cluster
            .ready_endpoints("shop-staging", proxy::ADMIN_SERVICE, proxy::ADMIN_PORT_NAME)
            .await
            .expect("pods"),
        [(
            "ferry-proxy-abc".to_string(),
            "10.1.0.7:9901".parse().unwrap()
        )]
    );
}

#[tokio::test]
async fn a_retired_proxy_fleet_is_deleted_by_its_labels_only() {
    use ferry_k8s::proxy;
    let fake = Fake::default();
    let cluster = Cluster::new(fake.client());
    let manifest = common::manifest();
    let fleet = proxy::proxy_objects(
        &manifest,
        "staging",
        "ferry:1",
        proxy::DEFAULT_SERVER_NAMESPACE,
    )
    .expect("fleet");
    let apply = || async {
        cluster
            .apply_proxy(
                &objects::namespace(&manifest, "staging"),
                &proxy::admin_secret(&manifest, "staging", "t0k3n"),
                &fleet,
            )
            .await
            .expect("apply the fleet");
        cluster
            .apply_config_map(&proxy::routes_config_map(
                &manifest,
                "staging",
                common::ROUTES,
            ))
            .await
            .expect("the table");
    };
    apply().await;
    // A Service of the same name that is not Ferry's proxy's (someone replaced it).
    let theirs = format!("{SERVICES}/ferry-proxy-admin");
    fake.put(
        &theirs,
        json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "ferry-proxy-admin", "namespace": "shop-staging",
                              "uid": "theirs", "labels": { "app": "theirs" } } }),
    );
    let label = proxy::proxy_label(&manifest, "staging");
    fake.forget_requests();
    assert_eq!(
        cluster
            .delete_proxy("shop-staging", &label)
            .await
            .expect("deleted"),
        5
    );
    let deletes: Vec<Seen> = fake
        .requests()
        .into_iter()
        .filter(|s| s.method != "GET")
        .collect();
    assert_eq!(
        deletes.iter().map(Seen::line).collect::<Vec<_>>(),
        [
            format!("DELETE {DEPLOYMENTS}/ferry-proxy"),
            format!("DELETE {SERVICES}/ferry-proxy"),
            format!("DELETE {NS}/configmaps/ferry-proxy-routes"),
            format!("DELETE {NS}/secrets/ferry-proxy-admin"),
            format!("DELETE {POLICIES}/ferry-proxy-admin"),
        ],
        "reads, then only the fleet's own objects are deleted"
    );
    for delete in &deletes {
        assert_eq!(delete.body["propagationPolicy"], "Background", "{delete:?}");
        assert_eq!(
            delete.body["preconditions"]["uid"],
            format!("uid-{}", delete.path),
            "the object that was read, not one made since: {delete:?}"
        );
    }
    assert!(fake.lock().objects.contains_key(&theirs), "theirs is left");
    // Nothing left: reads only.
    fake.forget_requests();
    assert_eq!(
        cluster
            .delete_proxy("shop-staging", &label)
            .await
            .expect("nothing to delete"),
        0
    );
    assert!(
        fake.seen().iter().all(|l| l.starts_with("GET ")),
        "{:?}",
        fake.seen()
    );
    // An object replaced between the read and the delete (its uid changed): the API
    // server's 409 is an error naming it, and it stays.
    apply().await;
    fake.fail(&format!("DELETE {DEPLOYMENTS}/ferry-proxy"), 409);
    let error = cluster
        .delete_proxy("shop-staging", &label)
        .await
        .expect_err("a conflict")
        .to_string();
    assert!(error.contains("delete Deployment ferry-proxy"), "{error}");
    assert!(
        fake.lock()
            .objects
            .contains_key(&format!("{DEPLOYMENTS}/ferry-proxy"))
    );
}
