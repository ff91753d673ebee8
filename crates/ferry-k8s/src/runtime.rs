//! [`KubernetesRuntime`]: the [`Runtime`] trait on a cluster, for `runtime: kubernetes`
//! environments (cargo feature `client`).
//!
//! Kubernetes runs pods, not the replicas the controller counts, so the mapping is:
//!
//! - the replicas of one (service, version) are the pods of ONE Deployment
//!   ([`crate::objects`]' `SERVICE-VERSION`, the same object `ferry export --k8s` prints):
//!   [`Runtime::start`] applies it (with its Service, the namespace and the environment's
//!   Secret) with `replicas` = the replicas Ferry supervises of that version; a stop scales it
//!   down, and the last stop deletes it and its Service (foreground propagation, the
//!   service's stop timeout as grace period). Which pod goes on a scale-down is Kubernetes'
//!   choice.
//! - Readiness comes from the Deployment's `status.readyReplicas` (the pods' readiness
//!   probes are the manifest's `health`): the first `readyReplicas` replicas of a version (by
//!   id) are Healthy. The runtime watches the environment's Deployments and EndpointSlices
//!   (by Ferry's labels, [`Cluster::watch`]) while it supervises a replica of it: the watches
//!   open with the first replica started or adopted and end (their requests dropped) with
//!   the last one stopped, a teardown included. On each change, and every
//!   [`DEFAULT_RESYNC`] besides, it lists the Deployments of the environments it has
//!   replicas of and emits the [`RuntimeEvent`]s.
//! - [`Runtime::endpoint`]: a ready pod address of the version (from its EndpointSlices,
//!   the n-th for the n-th replica), never an address on this host; none until it is ready.
//! - [`Runtime::adopt`] after a restart: the Deployment is found again by name and labels;
//!   as many replicas are adopted as it has `spec.replicas`.
//! - [`Runtime::logs`]: the n-th pod's log through the pods' log API.
//! - [`Runtime::run_task`]: a Job named from the task's name ([`crate::objects::task_job`]):
//!   a second create of the same name answers 409, and the existing Job is waited for
//!   instead: a hook attempt runs once.
//!
//! The runtime needs each environment's manifest and secrets ([`KubernetesRuntime::configure`])
//! to build the objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ferry_core::manifest::Manifest;
use ferry_core::model::ReplicaState;
use ferry_runtime::{
    BoxFuture, Instance, LogLines, ProcessIdentity, ReplicaSpec, ReplicaStatus, Runtime,
    RuntimeError, RuntimeEvent, TaskEnd, TaskOutcome, TaskOutput, TaskSpec,
};
use kube::api::{Api, ListParams, LogParams};
use tokio::sync::{broadcast, oneshot};

use crate::client::{Applied, Cluster, ClusterError, JobEnd};
use crate::gateway::{self, Split};
use crate::names;
use crate::objects::{self, LABEL_APP, LABEL_ENV, LABEL_SERVICE, LABEL_VERSION, Release};

/// How often the Deployments and EndpointSlices are read when no watch said they changed.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
/// How long a failed watch waits before it starts over.
const WATCH_RETRY: Duration = Duration::from_secs(2);
/// How long a `traffic: gateway` split that has not changed is trusted before the route is
/// read again (a GET; a write only if someone put other weights back).
pub const GATEWAY_RESYNC: Duration = Duration::from_secs(60);

/// (namespace, HTTPRoute, service).
type RouteKey = (String, String, String);

/// (namespace, app, env): the replicas whose Deployments one pair of watches sees.
type Group = (String, String, String);

/// The watch tasks of one [`Group`] (its Deployments, its EndpointSlices); dropped, they end:
/// the request each holds open is dropped with it.
struct Watches(Vec<tokio::task::AbortHandle>);

impl Drop for Watches {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The groups the supervised `replicas` belong to.
fn groups(replicas: &BTreeMap<String, Replica>) -> BTreeSet<Group> {
    replicas
        .values()
        .map(|r| (r.namespace.clone(), r.spec.app.clone(), r.spec.env.clone()))
        .collect()
}

/// One service's traffic in the controller's route table: the service, and (version, basis
/// points) for each version with ready replicas.
pub type ServiceShares = (String, Vec<(String, u32)>);

/// What the runtime knows of one environment.
#[derive(Clone)]
struct Environment {
    manifest: Manifest,
    /// The environment's Ferry secrets (values only ever go into its Secret).
    secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct Replica {
    spec: ReplicaSpec,
    namespace: String,
    /// The Deployment (and Service) of its (service, version).
    workload: String,
    state: ReplicaState,
    ever_healthy: bool,
    endpoint: Option<SocketAddr>,
}

struct Inner {
    cluster: Cluster,
    environments: Mutex<BTreeMap<(String, String), Environment>>,
    replicas: Mutex<BTreeMap<String, Replica>>,
    events: broadcast::Sender<RuntimeEvent>,
    /// Serializes the writes that change a Deployment's replica count.
    writes: tokio::sync::Mutex<()>,
    /// Replicas whose adoption failed: (namespace, app, env, workload), for `discard`.
    unadopted: Mutex<BTreeMap<String, (String, String, String, String)>>,
    /// Wakes the observer (a watch saw a change).
    wake: tokio::sync::mpsc::Sender<()>,
    /// Whether the runtime watches (false: it only polls, see `with_poll`).
    watching: bool,
    /// The watches of each (namespace, app, env) with a supervised replica (see
    /// [`KubernetesRuntime::follow_replicas`]); dropping one ends them.
    watched: Mutex<BTreeMap<Group, Watches>>,
    /// `traffic: gateway`: the split last written per (namespace, route, service), and when.
    gateway: Mutex<BTreeMap<RouteKey, (Split, tokio::time::Instant)>>,
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct KubernetesRuntime {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine(what: impl Into<String>, source: ClusterError) -> RuntimeError {
    RuntimeError::Engine {
        what: what.into(),
        source: Box::new(source),
    }
}

fn refused(what: impl Into<String>, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Engine {
        what: what.into(),
        source: message.into().into(),
    }
}

impl KubernetesRuntime {
    /// A runtime on `cluster` that watches its Deployments and EndpointSlices (and reads
    /// them again every [`DEFAULT_RESYNC`]). Needs a Tokio runtime.
    pub fn new(cluster: Cluster) -> Self {
        Self::build(cluster, DEFAULT_RESYNC, true)
    }

    /// A runtime that reads the cluster every `poll` and watches nothing (tests step it with
    /// [`KubernetesRuntime::observe`]). Needs a Tokio runtime.
    pub fn with_poll(cluster: Cluster, poll: Duration) -> Self {
        Self::build(cluster, poll, false)
    }

    fn build(cluster: Cluster, resync: Duration, watch: bool) -> Self {
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            cluster,
            environments: Mutex::new(BTreeMap::new()),
            replicas: Mutex::new(BTreeMap::new()),
            events,
            writes: tokio::sync::Mutex::new(()),
            unadopted: Mutex::new(BTreeMap::new()),
            wake,
            watching: watch,
            watched: Mutex::new(BTreeMap::new()),
            gateway: Mutex::new(BTreeMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(observe_loop(weak, woken, resync));
        KubernetesRuntime { inner }
    }

    /// The cluster this runtime runs on.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Makes the watches follow the supervised replicas: the Deployments and EndpointSlices
    /// of each (namespace, app, env) with a replica are watched, once; the watches of one
    /// with none left end. Called after every change to the replicas: the set is read under
    /// the watches' lock, so the last call sees the last change.
    fn follow_replicas(&self) {
        if !self.inner.watching {
            return;
        }
        let mut watched = lock(&self.inner.watched);
        let groups = groups(&lock(&self.inner.replicas));
        watched.retain(|(namespace, app, env), _| {
            let keep = groups.contains(&(namespace.clone(), app.clone(), env.clone()));
            if !keep {
                tracing::debug!(%namespace, %app, %env, "no replica left: watches end");
            }
            keep
        });
        for group in groups {
            if let std::collections::btree_map::Entry::Vacant(slot) = watched.entry(group) {
                let watches = self.spawn_watches(slot.key());
                slot.insert(watches);
            }
        }
    }

    /// Watches the Deployments and EndpointSlices of (namespace, app, env) by Ferry's labels;
    /// each change wakes the observer.
    fn spawn_watches(&self, (namespace, app, env): &Group) -> Watches {
        // The EndpointSlice controller copies a Service's labels onto its slices.
        let labels = format!("{LABEL_APP}={app},{LABEL_ENV}={env}");
        let cluster = self.inner.cluster.clone();
        let (ns, by, changed) = (namespace.clone(), labels.clone(), self.inner.wake.clone());
        let deployments = tokio::spawn(async move {
            cluster
                .watch::<k8s_openapi::api::apps::v1::Deployment>(&ns, &by, changed, WATCH_RETRY)
                .await;
        });
        let cluster = self.inner.cluster.clone();
        let (ns, changed) = (namespace.clone(), self.inner.wake.clone());
        let slices = tokio::spawn(async move {
            cluster
                .watch::<k8s_openapi::api::discovery::v1::EndpointSlice>(
                    &ns,
                    &labels,
                    changed,
                    WATCH_RETRY,
                )
                .await;
        });
        Watches(vec![deployments.abort_handle(), slices.abort_handle()])
    }

    /// The manifest and secrets of `env` (its objects are built from them); call again when
    /// either changes.
    pub fn configure(&self, manifest: &Manifest, env: &str, secrets: BTreeMap<String, String>) {
        lock(&self.inner.environments).insert(
            (manifest.app.clone(), env.to_string()),
            Environment {
                manifest: manifest.clone(),
                secrets,
            },
        );
    }

    fn environment(&self, app: &str, env: &str) -> Result<Environment, RuntimeError> {
        lock(&self.inner.environments)
            .get(&(app.to_string(), env.to_string()))
            .cloned()
            .ok_or_else(|| {
                refused(
                    format!("{app}/{env}"),
                    "the Kubernetes runtime was not given this environment's manifest",
                )
            })
    }

    /// Reads the cluster once and emits what changed (the poller does this every interval;
    /// tests call it to step without waiting).
    pub async fn observe(&self) {
        observe(&self.inner).await;
    }

    /// Applies the objects of `spec`'s (service, version) with `replicas` = the replicas
    /// supervised for it (and, first, the namespace and the environment's Secret).
    async fn apply_workload(&self, spec: &ReplicaSpec) -> Result<(), RuntimeError> {
        let environment = self.environment(&spec.app, &spec.env)?;
        let secret_names: Vec<String> = environment.secrets.keys().cloned().collect();
        let release = Release {
            manifest: &environment.manifest,
            env: &spec.env,
            version: &spec.version,
            secrets: &secret_names,
        };
        let what = format!("replica {}", spec.id);
        let mut built =
            objects::objects(&release).map_err(|e| refused(what.clone(), e.to_string()))?;
        let workload = names::workload(&spec.service, &spec.version);
        let count = lock(&self.inner.replicas)
            .values()
            .filter(|r| r.workload == workload && r.spec.env == spec.env && r.spec.app == spec.app)
            .count();
        built
            .deployments
            .retain(|d| d.metadata.name.as_deref() == Some(workload.as_str()));
        built
            .services
            .retain(|s| s.metadata.name.as_deref() == Some(workload.as_str()));
        let Some(deployment) = built.deployments.first_mut() else {
            return Err(refused(
                what,
                format!("the manifest has no service {}", spec.service),
            ));
        };
        if let Some(deployment_spec) = deployment.spec.as_mut() {
            deployment_spec.replicas = Some(i32::try_from(count).unwrap_or(i32::MAX));
        }
        let cluster = &self.inner.cluster;
        if !environment.secrets.is_empty() {
            // The namespace first: the Secret lives in it.
            let namespaces = Api::all(cluster.client());
            cluster
                .apply(&namespaces, &built.namespace)
                .await
                .map_err(|e| engine(&what, e))?;
            let secret = objects::secret(&environment.manifest, &spec.env, &environment.secrets);
            cluster
                .apply_secret(&secret)
                .await
                .map_err(|e| engine(&what, e))?;
        }
        cluster
            .apply_release(&built)
            .await
            .map_err(|e| engine(&what, e))?;
        Ok(())
    }

    /// `traffic: gateway`: makes the environment's HTTPRoute split each service as the
    /// controller's route table does (`traffic`; `new` is the version being rolled out):
    /// first `SERVICE-stable` and `SERVICE-canary` select the two versions
    /// ([`gateway::split`]), then the route's weights are set. Nothing is sent for a split
    /// written less than [`GATEWAY_RESYNC`] ago, and the cluster sees no write when the
    /// Services and the weights already are right. Returns how many objects were written;
    /// 0 for an environment that is not `traffic: gateway`.
    pub async fn route_gateway(
        &self,
        app: &str,
        env: &str,
        new: Option<&str>,
        traffic: &[ServiceShares],
    ) -> Result<usize, RuntimeError> {
        let environment = self.environment(app, env)?;
        let Some(route) = environment
            .manifest
            .environments
            .get(env)
            .and_then(|e| e.kubernetes.as_ref())
            .filter(|k| k.traffic == ferry_core::manifest::kubernetes::Traffic::Gateway)
            .and_then(|k| k.route.clone())
        else {
            return Ok(0);
        };
        let namespace = objects::namespace_name(&environment.manifest, env);
        let cluster = &self.inner.cluster;
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(cluster.client(), &namespace);
        let mut written = 0;
        for (service, shares) in traffic {
            let Some(split) = gateway::split(shares, new) else {
                continue;
            };
            let key = (namespace.clone(), route.clone(), service.clone());
            let fresh = lock(&self.inner.gateway)
                .get(&key)
                .is_some_and(|(last, at)| *last == split && at.elapsed() < GATEWAY_RESYNC);
            if fresh {
                continue;
            }
            let what = format!("HTTPRoute {route} of {app}/{env}, service {service}");
            // The selectors first: a weight moves only onto a Service that already selects
            // its version (the canary's weight is 0 until then, or its version is the same).
            for (role, version) in [("canary", &split.canary), ("stable", &split.stable)] {
                let release = Release {
                    manifest: &environment.manifest,
                    env,
                    version,
                    secrets: &[],
                };
                let object = objects::gateway_service(&release, &namespace, service, role);
                if cluster
                    .apply(&services, &object)
                    .await
                    .map_err(|e| engine(&what, e))?
                    == Applied::Written
                {
                    written += 1;
                }
            }
            let canary_weight = split.canary_weight;
            if cluster
                .set_weights(&namespace, &route, service, canary_weight)
                .await
                .map_err(|e| engine(&what, e))?
            {
                written += 1;
            }
            tracing::debug!(%app, %env, %service, canary = %split.canary, canary_weight, "gateway route in step");
            lock(&self.inner.gateway).insert(key, (split, tokio::time::Instant::now()));
        }
        Ok(written)
    }

    /// Brings the Deployments of app/env (`only`: that one) in line with the replicas this
    /// runtime supervises: one no replica accounts for is deleted (scaled to 0 first, its
    /// grace period), one with more pods than replicas is scaled down to them. Returns how
    /// many pods it removed.
    async fn trim(
        &self,
        namespace: &str,
        app: &str,
        env: &str,
        only: Option<&str>,
    ) -> Result<usize, RuntimeError> {
        let _writes = self.inner.writes.lock().await;
        let manifest = self.environment(app, env)?.manifest;
        let cluster = &self.inner.cluster;
        let what = format!("Deployments of {app}/{env}");
        let found = cluster
            .adopt(namespace, app, env)
            .await
            .map_err(|e| engine(&what, e))?;
        let mut removed = 0;
        for live in found {
            if only.is_some_and(|only| only != live.name) {
                continue;
            }
            let supervised = lock(&self.inner.replicas)
                .values()
                .filter(|r| r.namespace == namespace && r.workload == live.name)
                .count();
            let supervised = i32::try_from(supervised).unwrap_or(i32::MAX);
            if supervised >= live.replicas && supervised > 0 {
                continue;
            }
            let what = format!("Deployment {}", live.name);
            if supervised == 0 {
                let grace = manifest
                    .services
                    .get(&live.service)
                    .map_or(Duration::from_secs(10), |s| s.stop_timeout.get());
                cluster
                    .stop(namespace, &live.name, grace)
                    .await
                    .map_err(|e| engine(&what, e))?;
            } else {
                cluster
                    .scale(namespace, &live.name, supervised)
                    .await
                    .map_err(|e| engine(&what, e))?;
            }
            tracing::info!(deployment = %live.name, from = live.replicas, to = supervised, "removed pods no replica accounts for");
            removed += usize::try_from(live.replicas - supervised).unwrap_or(0);
        }
        Ok(removed)
    }

    fn emit(&self, event: RuntimeEvent) {
        let _ = self.inner.events.send(event);
    }

    async fn stop_one(&self, id: &str) -> Result<(), RuntimeError> {
        let _writes = self.inner.writes.lock().await;
        let Some(replica) = lock(&self.inner.replicas).remove(id) else {
            return Ok(());
        };
        self.follow_replicas();
        let left = lock(&self.inner.replicas)
            .values()
            .filter(|r| r.namespace == replica.namespace && r.workload == replica.workload)
            .count();
        let cluster = &self.inner.cluster;
        let result = if left == 0 {
            cluster
                .stop(
                    &replica.namespace,
                    &replica.workload,
                    replica.spec.stop_timeout,
                )
                .await
        } else {
            cluster
                .scale(
                    &replica.namespace,
                    &replica.workload,
                    i32::try_from(left).unwrap_or(i32::MAX),
                )
                .await
        };
        result.map_err(|e| engine(format!("stop replica {id}"), e))?;
        self.emit(RuntimeEvent::Stopped { id: id.to_string() });
        Ok(())
    }

    fn replica(&self, id: &str) -> Option<Replica> {
        lock(&self.inner.replicas).get(id).cloned()
    }

    /// The ids supervised for `replica`'s workload, sorted, and where `replica` is among them.
    fn ordinal(&self, replica: &Replica) -> usize {
        lock(&self.inner.replicas)
            .values()
            .filter(|r| r.namespace == replica.namespace && r.workload == replica.workload)
            .position(|r| r.spec.id == replica.spec.id)
            .unwrap_or(0)
    }
}

/// One pass of the poller: per (namespace, app, env) with supervised replicas, the
/// Deployments by label, and per workload its ready endpoints.
async fn observe(inner: &Inner) {
    let groups = groups(&lock(&inner.replicas));
    for (namespace, app, env) in groups {
        let workloads = match inner.cluster.adopt(&namespace, &app, &env).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(namespace, error = %e, "cannot read the Deployments");
                continue;
            }
        };
        for workload in workloads {
            let endpoints = inner
                .cluster
                .endpoints(&namespace, &workload.name)
                .await
                .unwrap_or_default();
            let mut events = Vec::new();
            let mut replicas = lock(&inner.replicas);
            let ready = usize::try_from(workload.ready).unwrap_or(0);
            for (n, replica) in replicas
                .values_mut()
                .filter(|r| r.namespace == namespace && r.workload == workload.name)
                .enumerate()
            {
                let healthy = n < ready;
                replica.endpoint = if healthy {
                    endpoints.get(n).copied()
                } else {
                    None
                };
                let id = replica.spec.id.clone();
                match (replica.state, healthy) {
                    (ReplicaState::Starting | ReplicaState::Unhealthy, true) => {
                        replica.state = ReplicaState::Healthy;
                        replica.ever_healthy = true;
                        events.push(RuntimeEvent::Healthy { id });
                    }
                    (ReplicaState::Healthy, false) => {
                        replica.state = ReplicaState::Unhealthy;
                        events.push(RuntimeEvent::Unhealthy {
                            id,
                            reason: format!(
                                "Deployment {} has {} ready pods of {}",
                                workload.name, workload.ready, workload.replicas
                            ),
                        });
                    }
                    _ => {}
                }
            }
            drop(replicas);
            for event in events {
                let _ = inner.events.send(event);
            }
        }
    }
}

/// Reads the cluster whenever a watch saw a change, and every `resync` besides; ends when
/// the runtime is dropped (its watches end with it: [`Watches`]).
async fn observe_loop(
    inner: Weak<Inner>,
    mut woken: tokio::sync::mpsc::Receiver<()>,
    resync: Duration,
) {
    loop {
        let _ = tokio::time::timeout(resync, woken.recv()).await;
        let Some(inner) = inner.upgrade() else { return };
        observe(&inner).await;
    }
}

impl Runtime for KubernetesRuntime {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    fn start(&self, spec: ReplicaSpec) -> BoxFuture<'_, Result<Instance, RuntimeError>> {
        Box::pin(async move {
            let environment = self.environment(&spec.app, &spec.env)?;
            let namespace = objects::namespace_name(&environment.manifest, &spec.env);
            let workload = names::workload(&spec.service, &spec.version);
            let id = spec.id.clone();
            let _writes = self.inner.writes.lock().await;
            {
                let mut replicas = lock(&self.inner.replicas);
                if replicas.contains_key(&id) {
                    return Err(RuntimeError::AlreadySupervised { id, pid: None });
                }
                replicas.insert(
                    id.clone(),
                    Replica {
                        spec: spec.clone(),
                        namespace: namespace.clone(),
                        workload: workload.clone(),
                        state: ReplicaState::Starting,
                        ever_healthy: false,
                        endpoint: None,
                    },
                );
            }
            if let Err(e) = self.apply_workload(&spec).await {
                lock(&self.inner.replicas).remove(&id);
                self.follow_replicas();
                return Err(e);
            }
            self.follow_replicas();
            let instance = Instance::Container(format!("{namespace}/{workload}"));
            self.emit(RuntimeEvent::Started {
                id,
                instance: instance.clone(),
            });
            Ok(instance)
        })
    }

    fn adopt(
        &self,
        spec: ReplicaSpec,
        _recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        Box::pin(async move {
            let environment = self.environment(&spec.app, &spec.env)?;
            let namespace = objects::namespace_name(&environment.manifest, &spec.env);
            let workload = names::workload(&spec.service, &spec.version);
            let found = self
                .inner
                .cluster
                .adopt(&namespace, &spec.app, &spec.env)
                .await
                .map_err(|e| engine(format!("adopt replica {}", spec.id), e))?;
            let Some(live) = found.iter().find(|w| w.name == workload) else {
                return Ok(false);
            };
            let mut replicas = lock(&self.inner.replicas);
            if replicas.contains_key(&spec.id) {
                return Ok(false);
            }
            let supervised = replicas
                .values()
                .filter(|r| r.namespace == namespace && r.workload == workload)
                .count();
            if supervised >= usize::try_from(live.replicas).unwrap_or(0) {
                lock(&self.inner.unadopted).insert(
                    spec.id.clone(),
                    (namespace, spec.app.clone(), spec.env.clone(), workload),
                );
                return Ok(false);
            }
            replicas.insert(
                spec.id.clone(),
                Replica {
                    spec,
                    namespace: namespace.clone(),
                    workload,
                    state: ReplicaState::Starting,
                    ever_healthy: false,
                    endpoint: None,
                },
            );
            drop(replicas);
            self.follow_replicas();
            Ok(true)
        })
    }

    fn discard<'a>(
        &'a self,
        id: &'a str,
        _recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'a, usize> {
        // A replica is a share of its version's Deployment: discarding one whose adoption
        // failed trims that Deployment to the replicas that were adopted (deleted when none
        // was).
        Box::pin(async move {
            let Some((namespace, app, env, workload)) = lock(&self.inner.unadopted).remove(id)
            else {
                return 0;
            };
            self.trim(&namespace, &app, &env, Some(&workload))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(replica = id, error = %e, "cannot discard");
                    0
                })
        })
    }

    fn remove_orphans<'a>(
        &'a self,
        _keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        // The replicas this runtime supervises are the adopted ones (all in `keep`): every
        // Deployment of a known environment is trimmed to them.
        Box::pin(async move {
            let environments: Vec<(String, String, String)> = lock(&self.inner.environments)
                .iter()
                .map(|((app, env), e)| {
                    (
                        objects::namespace_name(&e.manifest, env),
                        app.clone(),
                        env.clone(),
                    )
                })
                .collect();
            let mut removed = 0;
            for (namespace, app, env) in environments {
                removed += self.trim(&namespace, &app, &env, None).await?;
            }
            Ok(removed)
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.stop_one(id))
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let ids: Vec<String> = lock(&self.inner.replicas).keys().cloned().collect();
            for id in ids {
                if let Err(e) = self.stop_one(&id).await {
                    tracing::warn!(replica = id, error = %e, "cannot stop");
                }
            }
        })
    }

    fn status(&self, id: &str) -> Option<ReplicaStatus> {
        let replica = self.replica(id)?;
        Some(ReplicaStatus {
            id: id.to_string(),
            state: replica.state,
            pid: None,
            restarts: 0,
            ever_healthy: replica.ever_healthy,
            last_exit: None,
            last_output: Vec::new(),
            last_probe: None,
        })
    }

    fn list(&self) -> Vec<ReplicaStatus> {
        let ids: Vec<String> = lock(&self.inner.replicas).keys().cloned().collect();
        ids.iter().filter_map(|id| self.status(id)).collect()
    }

    fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.replica(id)?.endpoint
    }

    fn logs(&self, id: &str, tail: usize, follow: bool) -> LogLines {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let Some(replica) = self.replica(id) else {
            return rx;
        };
        let ordinal = self.ordinal(&replica);
        let cluster = self.inner.cluster.clone();
        tokio::spawn(async move {
            let selector = objects::selector(
                &replica.spec.app,
                &replica.spec.env,
                &replica.spec.service,
                &replica.spec.version,
            );
            let selector = [LABEL_APP, LABEL_ENV, LABEL_SERVICE, LABEL_VERSION]
                .iter()
                .filter_map(|k| selector.get(*k).map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",");
            let pods: Api<k8s_openapi::api::core::v1::Pod> =
                Api::namespaced(cluster.client(), &replica.namespace);
            let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
                return;
            };
            let mut names: Vec<String> = list
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            let Some(pod) = names.get(ordinal).or(names.last()) else {
                return;
            };
            let params = LogParams {
                tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
                follow,
                ..LogParams::default()
            };
            if follow {
                use futures_util::AsyncBufReadExt;
                use futures_util::StreamExt;
                let Ok(stream) = pods.log_stream(pod, &params).await else {
                    return;
                };
                let mut lines = stream.lines();
                while let Some(Ok(line)) = lines.next().await {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            } else if let Ok(text) = pods.logs(pod, &params).await {
                for line in text.lines() {
                    if tx.send(line.to_string()).await.is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> BoxFuture<'_, Result<TaskOutcome, RuntimeError>> {
        Box::pin(async move {
            let begun = tokio::time::Instant::now();
            let environment = self.environment(&spec.app, &spec.env)?;
            let secret_names: Vec<String> = environment.secrets.keys().cloned().collect();
            let version = spec.env_vars.get("VERSION").cloned().unwrap_or_default();
            let release = Release {
                manifest: &environment.manifest,
                env: &spec.env,
                version: &version,
                secrets: &secret_names,
            };
            let what = format!("task {}", spec.name);
            let job = objects::task_job(
                &release,
                &spec.name,
                &spec.argv,
                &spec.env_vars,
                spec.timeout,
            )
            .map_err(|e| refused(what.clone(), e.to_string()))?;
            if let Some(started) = started {
                let name = job.metadata.name.clone().unwrap_or_default();
                let namespace = job.metadata.namespace.clone().unwrap_or_default();
                let _ = started.send(Instance::Container(format!("{namespace}/job/{name}")));
            }
            let outcome = self
                .inner
                .cluster
                .run_hook(&job, spec.timeout)
                .await
                .map_err(|e| engine(&what, e))?;
            let end = match outcome.end {
                JobEnd::Succeeded => TaskEnd::Exited(0),
                JobEnd::Failed(_) => TaskEnd::Exited(1),
                JobEnd::TimedOut => TaskEnd::TimedOut,
            };
            let mut stdout = outcome.log;
            if let JobEnd::Failed(why) = &outcome.end {
                stdout.push_str(&format!("--- Job failed: {why} ---\n"));
            }
            // The pod's output may print a secret: never keep one (every value the
            // environment has, as the process runtime's log filter does).
            let redactor = ferry_runtime::redact::Redactor::new(environment.secrets.values());
            let stdout = redactor.redact(&stdout);
            let stdout = match &spec.output {
                TaskOutput::Capture { max_bytes } => tail_bytes(stdout, *max_bytes),
                TaskOutput::File {
                    path, max_bytes, ..
                } => {
                    let text =
                        tail_bytes(stdout, usize::try_from(*max_bytes).unwrap_or(usize::MAX));
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    append(path, &text);
                    String::new()
                }
            };
            Ok(TaskOutcome {
                end,
                stdout,
                stderr: String::new(),
                took: begun.elapsed(),
            })
        })
    }
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail_bytes(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// Appends to a task's output file (created 0600, as the process runtime does).
fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path);
    if let Ok(mut file) = file {
        let _ = file.write_all(text.as_bytes());
    }
}
