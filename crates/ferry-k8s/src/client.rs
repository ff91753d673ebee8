//! Talking to a cluster through kube-rs: the imperative shell around [`crate::objects`] and
//! [`crate::gateway`].
//!
//! - [`Cluster::apply`]: server-side apply under the field manager [`FIELD_MANAGER`]
//!   (forced: Ferry is the authority for the fields it sets), but first a GET, and no
//!   write at all when the live object already holds everything Ferry wants and carries
//!   the hash of what Ferry last applied ([`ANNOTATION_APPLIED`]; a field Ferry stopped
//!   setting changes the hash, so it is removed). A 409 conflict is read again and retried
//!   (at most [`MAX_CONFLICT_RETRIES`] times).
//! - [`Cluster::adopt`]: after a restart, the Deployments of an environment found by
//!   Ferry's labels, with their version and replica counts.
//! - [`Cluster::endpoints`]: the ready pod addresses of a version, from its EndpointSlices.
//! - [`Cluster::watch`]: a wake-up whenever a watched kind changes (the runtime watches its
//!   Deployments and EndpointSlices instead of polling them).
//! - [`Cluster::stop`]: scale to 0 (the pods get SIGTERM and their grace period), then
//!   delete the Deployment and its Service.
//! - [`Cluster::run_hook`]: a hook attempt as a Job, exactly once (an existing Job of the
//!   same name is waited for, never created again), its logs, deleted with its pods at its
//!   timeout.
//! - [`Cluster::set_weights`]: `traffic: gateway`'s HTTPRoute weights
//!   ([`crate::gateway::weights_patch`]), with the `resourceVersion` it read.
//! - [`Cluster::delete_proxy`]: a proxy fleet's objects, those Ferry's labels say it owns.

use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, LogParams, Patch,
    PatchParams, PostParams, Preconditions, PropagationPolicy, WatchEvent, WatchParams,
};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::FIELD_MANAGER;
use crate::gateway::{self, GatewayError, WeightsPatch};
use crate::objects::{
    ANNOTATION_VERSION, LABEL_APP, LABEL_DEPLOYMENT, LABEL_ENV, LABEL_MANAGED_BY, LABEL_SERVICE,
    Objects,
};
use crate::proxy::{self, ProxyObjects};

/// The hash of what Ferry last applied to an object.
pub const ANNOTATION_APPLIED: &str = "ferry.dev/applied";
/// How often a 409 conflict is read again and retried before it is an error.
pub const MAX_CONFLICT_RETRIES: u32 = 3;
/// Most log bytes kept of a hook Job.
pub const MAX_HOOK_LOG_BYTES: i64 = 64 * 1024;
/// How often a running Job is looked at.
const JOB_POLL: Duration = Duration::from_millis(500);
/// How long the API server keeps one watch open before Ferry opens the next (its own
/// limit; a watch it ends is simply opened again from the last version seen).
const WATCH_TIMEOUT_SECS: u32 = 290;

/// A failure talking to the cluster, with the object it was about.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what}: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: still conflicting after {MAX_CONFLICT_RETRIES} retries: {source}")]
    Conflict {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("kubeconfig context {context}: {source}")]
    Config {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: the object cannot be encoded: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What [`Cluster::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The live object already was what Ferry wants: nothing was sent.
    Unchanged,
    /// Created or changed by a server-side apply.
    Written,
}

/// A Deployment found by Ferry's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub service: String,
    /// The full version (from the annotation; labels cannot hold every version).
    pub version: String,
    pub deployment: Option<String>,
    pub replicas: i32,
    pub ready: i32,
}

/// How a hook Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    Failed(String),
    /// Still running at the timeout: the Job and its pods were deleted.
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    pub end: JobEnd,
    /// The last [`MAX_HOOK_LOG_BYTES`] of its pod's log (empty when none could be read).
    pub log: String,
    /// Whether this call created the Job (false: it existed, e.g. before a restart).
    pub created: bool,
}

/// A cluster, through a kube-rs client.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Api { what, source }
}

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

fn is_already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409 && status.reason == "AlreadyExists")
}

/// Every field of `want` is in `have` with the same value (`have` may hold more: defaults,
/// status, other managers' fields).
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| have.get(k).is_some_and(|h| contains(h, w))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        _ => have == want,
    }
}

impl Cluster {
    pub fn new(client: Client) -> Self {
        Cluster { client }
    }

    /// The kube-rs client, for the calls this type does not wrap.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client of a kubeconfig context (None: the current context, or the in-cluster
    /// configuration).
    pub async fn connect(context: Option<&str>) -> Result<Self, ClusterError> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| ClusterError::Config {
            context: context.unwrap_or("(current)").to_string(),
            source,
        };
        let config = match context {
            None => kube::Config::infer().await.map_err(|e| fail(e.into()))?,
            Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                context: Some(context.to_string()),
                ..Default::default()
            })
            .await
            .map_err(|e| fail(e.into()))?,
        };
        Ok(Cluster::new(
            Client::try_from(config).map_err(|e| fail(e.into()))?,
        ))
    }

    /// Server-side applies `desired` through `api` unless nothing would change (see the
    /// module documentation).
    pub async fn apply<K>(&self, api: &Api<K>, desired: &K) -> Result<Applied, ClusterError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = desired.meta().name.clone().unwrap_or_default();
        let what = format!("{} {name}", K::kind(&()));
        let mut body = serde_json::to_value(desired).map_err(|source| ClusterError::Encode {
            what: what.clone(),
            source,
        })?;
        let hash = crate::names::short_hash(&[&body.to_string()], 16);
        body["metadata"]["annotations"][ANNOTATION_APPLIED] = Value::String(hash.clone());
        let mut attempt = 0;
        loop {
            let live = api.get_opt(&name).await.map_err(api_error(&what))?;
            if let Some(live) = &live {
                let live = serde_json::to_value(live).map_err(|source| ClusterError::Encode {
                    what: what.clone(),
                    source,
                })?;
                if contains(&live, &body) {
                    return Ok(Applied::Unchanged);
                }
            }
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => return Ok(Applied::Written),
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::info!(object = %what, attempt, "conflict while applying; reading it again");
                }
                Err(source) if is_conflict(&source) => {
                    return Err(ClusterError::Conflict { what, source });
                }
                Err(source) => return Err(ClusterError::Api { what, source }),
            }
        }
    }

    fn namespaced<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Applies a release's objects in order: the namespace, the Services, the Deployments.
    pub async fn apply_release(&self, objects: &Objects) -> Result<Vec<Applied>, ClusterError> {
        let mut done = vec![
            self.apply(
                &Api::<Namespace>::all(self.client.clone()),
                &objects.namespace,
            )
            .await?,
        ];
        for service in &objects.services {
            let ns = service.metadata.namespace.clone().unwrap_or_default();
            done.push(
                self.apply(&self.namespaced::<Service>(&ns), service)
                    .await?,
            );
        }
        for deployment in &objects.deployments {
            let ns = deployment.metadata.namespace.clone().unwrap_or_default();
            done.push(
                self.apply(&self.namespaced::<Deployment>(&ns), deployment)
                    .await?,
            );
        }
        Ok(done)
    }

    /// Applies the environment's Secret (see [`crate::objects::secret`]).
    pub async fn apply_secret(&self, secret: &Secret) -> Result<Applied, ClusterError> {
        let ns = secret.metadata.namespace.clone().unwrap_or_default();
        self.apply(&self.namespaced::<Secret>(&ns), secret).await
    }

    /// Ferry's Deployments of `app` in `env`, by label, sorted by name.
    pub async fn adopt(
        &self,
        namespace: &str,
        app: &str,
        env: &str,
    ) -> Result<Vec<Workload>, ClusterError> {
        let params = ListParams::default().labels(&format!("{LABEL_APP}={app},{LABEL_ENV}={env}"));
        let list = self
            .namespaced::<Deployment>(namespace)
            .list(&params)
            .await
            .map_err(api_error(format!(
                "Deployments of {app}/{env} in {namespace}"
            )))?;
        let mut found: Vec<Workload> = list
            .items
            .into_iter()
            .map(|d| {
                let label =
                    |key: &str| d.metadata.labels.as_ref().and_then(|l| l.get(key)).cloned();
                Workload {
                    name: d.metadata.name.clone().unwrap_or_default(),
                    service: label(LABEL_SERVICE).unwrap_or_default(),
                    version: d
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(ANNOTATION_VERSION))
                        .cloned()
                        .unwrap_or_default(),
                    deployment: label(LABEL_DEPLOYMENT),
                    replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                    ready: d
                        .status
                        .as_ref()
                        .and_then(|s| s.ready_replicas)
                        .unwrap_or(0),
                }
            })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    /// The ready endpoints of the Service `service` (a version of a service), from its
    /// EndpointSlices, sorted.
    pub async fn endpoints(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<SocketAddr>, ClusterError> {
        let mut out: Vec<SocketAddr> = self
            .ready_endpoints(namespace, service, "http")
            .await?
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The ready endpoints of `service`'s port named `port_name`, each with the name of its
    /// pod (its `targetRef`, else its address), from its EndpointSlices.
    pub async fn ready_endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
    ) -> Result<Vec<(String, SocketAddr)>, ClusterError> {
        let params = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
        let slices = self
            .namespaced::<EndpointSlice>(namespace)
            .list(&params)
            .await
            .map_err(api_error(format!("EndpointSlices of Service {service}")))?;
        let mut out = Vec::new();
        for slice in slices.items {
            let port = slice
                .ports
                .as_ref()
                .and_then(|ports| ports.iter().find(|p| p.name.as_deref() == Some(port_name)))
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok());
            let Some(port) = port else { continue };
            for endpoint in slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                for address in &endpoint.addresses {
                    if let Ok(ip) = address.parse::<IpAddr>() {
                        let pod = endpoint
                            .target_ref
                            .as_ref()
                            .and_then(|r| r.name.clone())
                            .unwrap_or_else(|| address.clone());
                        out.push((pod, SocketAddr::new(ip, port)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Applies an environment's proxy fleet ([`crate::proxy`]): its namespace, the admin
    /// token's Secret, then the Services, the NetworkPolicy and the Deployment.
    pub async fn apply_proxy(
        &self,
        namespace: &Namespace,
        token: &Secret,
        fleet: &ProxyObjects,
    ) -> Result<(), ClusterError> {
        self.apply_namespace(namespace).await?;
        self.apply_secret(token).await?;
        for service in &fleet.services {
            let ns = service.metadata.namespace.clone().unwrap_or_default();
            self.apply(&self.namespaced::<Service>(&ns), service)
                .await?;
        }
        let ns = fleet
            .network_policy
            .metadata
            .namespace
            .clone()
            .unwrap_or_default();
        self.apply(
            &self.namespaced::<NetworkPolicy>(&ns),
            &fleet.network_policy,
        )
        .await?;
        let ns = fleet
            .deployment
            .metadata
            .namespace
            .clone()
            .unwrap_or_default();
        self.apply(&self.namespaced::<Deployment>(&ns), &fleet.deployment)
            .await?;
        Ok(())
    }

    /// Deletes an environment's proxy fleet (its namespace's `ferry-proxy` Deployment, client
    /// and admin Services, route table ConfigMap, token Secret and NetworkPolicy) — each only if its labels
    /// say it is that fleet's (`ferry.dev/proxy` = `proxy_label`, managed by `ferry`):
    /// read first (no `list`, so Ferry needs no right to list Secrets), then deleted with
    /// the `uid` it read as a precondition (an object replaced in between is not touched: a
    /// 409, retried by the caller) and `propagationPolicy: Background` (the object goes at
    /// once, so the same name can be applied again; the garbage collector removes the
    /// Deployment's ReplicaSets and pods after it, each pod with its grace period). Gone
    /// already, or already being deleted (a finalizer holds it), counts as done. The
    /// namespace stays (it may hold other objects). Returns how many deletes were sent.
    pub async fn delete_proxy(
        &self,
        namespace: &str,
        proxy_label: &str,
    ) -> Result<usize, ClusterError> {
        let mut deleted = 0;
        for done in [
            self.delete_owned::<Deployment>(namespace, proxy::PROXY_NAME, proxy_label)
                .await?,
            self.delete_owned::<Service>(namespace, proxy::PROXY_NAME, proxy_label)
                .await?,
            self.delete_owned::<Service>(namespace, proxy::ADMIN_SERVICE, proxy_label)
                .await?,
            self.delete_owned::<ConfigMap>(namespace, proxy::ROUTES_CONFIG_MAP, proxy_label)
                .await?,
            self.delete_owned::<Secret>(namespace, proxy::ADMIN_SECRET, proxy_label)
                .await?,
            self.delete_owned::<NetworkPolicy>(namespace, proxy::ADMIN_POLICY, proxy_label)
                .await?,
        ] {
            deleted += usize::from(done);
        }
        Ok(deleted)
    }

    /// Deletes `name` if it is `proxy_label`'s fleet's (see [`Cluster::delete_proxy`]);
    /// whether a delete was sent.
    async fn delete_owned<K>(
        &self,
        namespace: &str,
        name: &str,
        proxy_label: &str,
    ) -> Result<bool, ClusterError>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        let api = self.namespaced::<K>(namespace);
        let what = format!("{} {name}", K::kind(&()));
        let Some(live) = api.get_opt(name).await.map_err(api_error(&what))? else {
            return Ok(false);
        };
        let meta = live.meta();
        let label = |key: &str| {
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .map(String::as_str)
        };
        if label(proxy::LABEL_PROXY) != Some(proxy_label)
            || label(LABEL_MANAGED_BY) != Some("ferry")
        {
            tracing::warn!(object = %what, %namespace, "not a Ferry proxy object of this environment (labels): left alone");
            return Ok(false);
        }
        if meta.deletion_timestamp.is_some() {
            return Ok(false);
        }
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(Preconditions {
                uid: meta.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(source) => Err(ClusterError::Api {
                what: format!("delete {what}"),
                source,
            }),
        }
    }

    /// Applies a Namespace, unless it already is as wanted.
    pub async fn apply_namespace(&self, namespace: &Namespace) -> Result<Applied, ClusterError> {
        self.apply(&Api::<Namespace>::all(self.client.clone()), namespace)
            .await
    }

    /// Applies a ConfigMap (the proxy fleet's route table), unless it already holds it.
    pub async fn apply_config_map(&self, map: &ConfigMap) -> Result<Applied, ClusterError> {
        let ns = map.metadata.namespace.clone().unwrap_or_default();
        self.apply(&self.namespaced::<ConfigMap>(&ns), map).await
    }

    /// The value of `key` in the Secret `name`, if both exist.
    pub async fn secret_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ClusterError> {
        let secret = self
            .namespaced::<Secret>(namespace)
            .get_opt(name)
            .await
            .map_err(api_error(format!("Secret {name}")))?;
        Ok(secret
            .and_then(|s| s.data)
            .and_then(|mut data| data.remove(key))
            .and_then(|bytes| String::from_utf8(bytes.0).ok()))
    }

    /// Watches the `K`s of `namespace` that `labels` selects and sends a wake-up on `changed`
    /// after each change (a full channel already holds one: none is lost, several are
    /// coalesced). Watches from resourceVersion "0" (the API server first sends the objects
    /// as they are), then from the last version seen; a watch the server ends is opened
    /// again, an error (a 410 Gone: that version is too old) waits `retry` and starts over.
    /// Returns when `changed` is closed.
    pub async fn watch<K>(
        &self,
        namespace: &str,
        labels: &str,
        changed: tokio::sync::mpsc::Sender<()>,
        retry: Duration,
    ) where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug
            + Send
            + 'static,
    {
        use futures_util::StreamExt;
        let api = self.namespaced::<K>(namespace);
        let params = WatchParams::default()
            .labels(labels)
            .timeout(WATCH_TIMEOUT_SECS);
        let what = format!("watch of {} in {namespace}", K::plural(&()));
        let mut version = "0".to_string();
        while !changed.is_closed() {
            let stream = match api.watch(&params, &version).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(watch = %what, error = %e, "cannot watch; trying again");
                    version = "0".to_string();
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let object = match event {
                    Ok(WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o)) => {
                        o
                    }
                    Ok(WatchEvent::Bookmark(mark)) => {
                        version = mark.metadata.resource_version;
                        continue;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        tracing::debug!(watch = %what, code = status.code, "watch ended; starting over");
                        version = "0".to_string();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(watch = %what, error = %e, "watch failed; starting over");
                        version = "0".to_string();
                        tokio::time::sleep(retry).await;
                        break;
                    }
                };
                if let Some(seen) = object.meta().resource_version.clone() {
                    version = seen;
                }
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) =
                    changed.try_send(())
                {
                    return;
                }
            }
        }
    }

    /// Scales a version's Deployment to `replicas` (only `spec.replicas`, under Ferry's field
    /// manager).
    pub async fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) -> Result<(), ClusterError> {
        let body = serde_json::json!({ "spec": { "replicas": replicas } });
        self.namespaced::<Deployment>(namespace)
            .patch_scale(name, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .map_err(api_error(format!("scale Deployment {name}")))?;
        Ok(())
    }

    /// Stops a version: scale to 0 (its pods get SIGTERM and `grace`), then delete its
    /// Deployment and Service (already gone is fine).
    pub async fn stop(
        &self,
        namespace: &str,
        name: &str,
        grace: Duration,
    ) -> Result<(), ClusterError> {
        match self.scale(namespace, name, 0).await {
            Err(ClusterError::Api {
                source: kube::Error::Api(status),
                ..
            }) if status.code == 404 => {}
            other => other?,
        }
        let grace = u32::try_from(grace.as_secs()).unwrap_or(u32::MAX);
        let params = DeleteParams::foreground().grace_period(grace);
        for result in [
            self.namespaced::<Deployment>(namespace)
                .delete(name, &params)
                .await
                .map(|_| ()),
            self.namespaced::<Service>(namespace)
                .delete(name, &DeleteParams::default())
                .await
                .map(|_| ()),
        ] {
            match result {
                Ok(()) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => {
                    return Err(ClusterError::Api {
                        what: format!("delete {name}"),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs a hook attempt's Job to its end (see the module documentation).
    pub async fn run_hook(&self, job: &Job, timeout: Duration) -> Result<JobOutcome, ClusterError> {
        let namespace = job.metadata.namespace.clone().unwrap_or_default();
        let name = job.metadata.name.clone().unwrap_or_default();
        let jobs = self.namespaced::<Job>(&namespace);
        let what = format!("Job {name}");
        let created = match jobs.create(&PostParams::default(), job).await {
            Ok(_) => true,
            Err(e) if is_already_exists(&e) => false,
            Err(source) => return Err(ClusterError::Api { what, source }),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let end = loop {
            let live = jobs.get(&name).await.map_err(api_error(&what))?;
            if let Some(end) = job_end(&live) {
                break end;
            }
            if tokio::time::Instant::now() >= deadline {
                break JobEnd::TimedOut;
            }
            tokio::time::sleep(JOB_POLL).await;
        };
        let log = self.job_log(&namespace, &name).await;
        if end == JobEnd::TimedOut {
            match jobs.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(source) => return Err(ClusterError::Api { what, source }),
            }
        }
        Ok(JobOutcome { end, log, created })
    }

    /// The log of a Job's (last) pod; empty when it cannot be read.
    async fn job_log(&self, namespace: &str, job: &str) -> String {
        let pods = self.namespaced::<Pod>(namespace);
        let params = ListParams::default().labels(&format!("job-name={job}"));
        let Ok(list) = pods.list(&params).await else {
            return String::new();
        };
        let Some(pod) = list.items.last().and_then(|p| p.metadata.name.clone()) else {
            return String::new();
        };
        let params = LogParams {
            limit_bytes: Some(MAX_HOOK_LOG_BYTES),
            ..LogParams::default()
        };
        pods.logs(&pod, &params).await.unwrap_or_default()
    }

    /// Sets `service`'s canary weight (basis points) on the HTTPRoute `route`; `Ok(false)`
    /// when the route already had it (nothing sent). A 409 (someone changed the route
    /// since it was read) reads it again.
    pub async fn set_weights(
        &self,
        namespace: &str,
        route: &str,
        service: &str,
        canary: u32,
    ) -> Result<bool, ClusterError> {
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        ));
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let what = format!("HTTPRoute {route}");
        let mut attempt = 0;
        loop {
            let live = api.get(route).await.map_err(api_error(&what))?;
            let live = serde_json::to_value(&live).map_err(|source| ClusterError::Encode {
                what: what.clone(),
                source,
            })?;
            let WeightsPatch::Apply(body) = gateway::weights_patch(&live, service, canary)? else {
                return Ok(false);
            };
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api.patch(route, &params, &Patch::Apply(&body)).await {
                Ok(_) => return Ok(true),
                Err(e) if is_conflict(&e) && attempt < MAX_CONFLICT_RETRIES => attempt += 1,
                Err(source) if is_conflict(&source) => {
                    return Err(ClusterError::Conflict { what, source });
                }
                Err(source) => return Err(ClusterError::Api { what, source }),
            }
        }
    }
}

/// How a Job ended, from its conditions (None: still running).
fn job_end(job: &Job) -> Option<JobEnd> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let holds = |kind: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == kind && c.status == "True")
    };
    if holds("Complete").is_some() {
        return Some(JobEnd::Succeeded);
    }
    holds("Failed").map(|c| {
        JobEnd::Failed(
            c.message
                .clone()
                .or_else(|| c.reason.clone())
                .unwrap_or_else(|| "failed".to_string()),
        )
    })
}
