//! The runtimes the controller runs workloads through, chosen per environment
//! (`runtime: process | docker`): the process runtime always, the Docker runtime once an
//! environment needs it (connected on first use, so the quickstart never needs Docker).
//! Replica ids are unique, so status, stop and events need no environment: each replica is
//! asked of the runtime that supervises it, and both runtimes' events arrive on one channel.
//!
//! The Docker runtime is behind the `docker` cargo feature (on by default). A build without
//! it refuses `runtime: docker` environments when the manifest is applied ([`available`]),
//! and [`RuntimeError::Unavailable`] answers any use of it.
//!
//! `runtime: kubernetes` environments (cargo feature `kubernetes`) run on
//! `ferry_k8s::runtime::KubernetesRuntime`, one per kubeconfig context (connected when the
//! controller first configures an environment of it, [`Runtimes::configure_kubernetes`]);
//! [`available`] offers them only when the server finds a cluster configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_core::manifest::{Manifest, RuntimeKind};
use ferry_runtime::{
    ContainerSpec, Instance, ProcessIdentity, ProcessRuntime, RegistryAuth, ReplicaSpec,
    ReplicaStatus, Runtime, RuntimeError, RuntimeEvent, TaskOutcome, TaskSpec,
};
use tokio::sync::{OnceCell, broadcast, oneshot};

/// Registry credentials for pulls, read from the environment's Ferry secrets (and never
/// given to the containers).
pub const REGISTRY_USERNAME: &str = "FERRY_REGISTRY_USERNAME";
pub const REGISTRY_PASSWORD: &str = "FERRY_REGISTRY_PASSWORD";

/// The runtimes this server can run: processes; Docker in a build with the `docker`
/// feature; Kubernetes in a build with the `kubernetes` feature that finds a cluster
/// configuration ([`kubernetes_configured`]).
pub fn available() -> Vec<RuntimeKind> {
    let mut kinds = vec![RuntimeKind::Process];
    if cfg!(feature = "docker") {
        kinds.push(RuntimeKind::Docker);
    }
    if cfg!(feature = "kubernetes") && kubernetes_configured() {
        kinds.push(RuntimeKind::Kubernetes);
    }
    kinds
}

/// Whether a cluster configuration is there: the in-cluster service account
/// (`KUBERNETES_SERVICE_HOST` and its token), a file named by `$KUBECONFIG`, or
/// `~/.kube/config`.
pub fn kubernetes_configured() -> bool {
    cluster_configuration(
        std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        std::env::var_os("KUBECONFIG").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
}

/// [`kubernetes_configured`], with what it reads passed in.
fn cluster_configuration(
    service_host: bool,
    token: &std::path::Path,
    kubeconfig: Option<&std::ffi::OsStr>,
    home: Option<&std::ffi::OsStr>,
) -> bool {
    let in_cluster = service_host && token.is_file();
    let kubeconfig =
        kubeconfig.is_some_and(|paths| std::env::split_paths(paths).any(|path| path.is_file()));
    let home = home.is_some_and(|home| PathBuf::from(home).join(".kube/config").is_file());
    in_cluster || kubeconfig || home
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Runtimes {
    inner: Arc<Inner>,
}

struct Inner {
    /// The runtime of `runtime: process` environments (a fake one in the controller's tests).
    local: Arc<dyn Runtime>,
    /// Where the local runtime writes replica logs (`<id>.log`).
    log_dir: PathBuf,
    docker: OnceCell<Arc<dyn Runtime>>,
    /// Names this server on the engine (its data directory).
    owner: String,
    socket: PathBuf,
    events: broadcast::Sender<RuntimeEvent>,
    /// The proxy pods' image when their manifest names none ([`Runtimes::set_proxy_image`]).
    proxy_image: Mutex<Option<String>>,
    /// `runtime: kubernetes` environments (app, env) and their kubeconfig context.
    kube_envs: Mutex<BTreeMap<(String, String), Option<String>>>,
    /// One Kubernetes runtime per context (None: the current one, or in-cluster).
    #[cfg(feature = "kubernetes")]
    kube: Mutex<BTreeMap<Option<String>, ferry_k8s::runtime::KubernetesRuntime>>,
    #[cfg(feature = "kubernetes")]
    kube_connect: tokio::sync::Mutex<()>,
    /// The proxy pods of `traffic: proxy` Kubernetes environments ([`Runtimes::serve_fleets`]).
    #[cfg(feature = "kubernetes")]
    fleets: Mutex<Fleets>,
}

/// (app, env).
#[cfg(feature = "kubernetes")]
type EnvKey = (String, String);

/// The proxy fleets, as the route table last declared them.
#[cfg(feature = "kubernetes")]
#[derive(Default)]
struct Fleets {
    /// The environments whose listeners proxy pods serve, whether or not their fleet could
    /// be made yet: never the local proxy's.
    serving: std::collections::BTreeSet<EnvKey>,
    live: BTreeMap<EnvKey, ProxyFleet>,
    /// Fleets no longer served whose objects are still to be deleted (retried every pass).
    retiring: BTreeMap<EnvKey, (Place, Arc<crate::fleet_kube::KubePods>)>,
    /// Torn down: no fleet is made again (a pass still in flight serves none).
    closed: bool,
}

/// Where a fleet's objects are: the kubeconfig context and the namespace.
#[cfg(feature = "kubernetes")]
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    context: Option<String>,
    namespace: String,
}

#[cfg(feature = "kubernetes")]
struct ProxyFleet {
    place: Place,
    pods: Arc<crate::fleet_kube::KubePods>,
    fleet: Arc<crate::fleet::Fleet>,
}

/// The namespace the server's own pod runs in (its service account's), else Ferry's
/// default (`ferry-system`, as deploy/kubernetes/ferry.yaml has it): the only one whose
/// `app.kubernetes.io/name: ferry` pods the proxy pods' NetworkPolicy admits to their admin
/// port.
#[cfg(feature = "kubernetes")]
fn server_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|ns| ns.trim().to_string())
        .filter(|ns| ferry_core::manifest::kubernetes::is_dns_label(ns))
        .unwrap_or_else(|| ferry_k8s::proxy::DEFAULT_SERVER_NAMESPACE.to_string())
}

impl Runtimes {
    pub fn new(process: ProcessRuntime, owner: String) -> Runtimes {
        let log_dir = process
            .log_path("x")
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default();
        Runtimes::with_local(Arc::new(process), log_dir, owner)
    }

    /// Runtimes whose `runtime: process` environments run on `local` (which writes replica
    /// logs under `log_dir`): the process runtime, or a fake one in tests.
    pub fn with_local(local: Arc<dyn Runtime>, log_dir: PathBuf, owner: String) -> Runtimes {
        let (events, _) = broadcast::channel(1024);
        forward(local.subscribe(), events.clone());
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        Runtimes {
            inner: Arc::new(Inner {
                local,
                log_dir,
                docker: OnceCell::new(),
                owner,
                socket,
                events,
                proxy_image: Mutex::new(None),
                kube_envs: Mutex::new(BTreeMap::new()),
                #[cfg(feature = "kubernetes")]
                kube: Mutex::new(BTreeMap::new()),
                #[cfg(feature = "kubernetes")]
                kube_connect: tokio::sync::Mutex::new(()),
                #[cfg(feature = "kubernetes")]
                fleets: Mutex::new(Fleets::default()),
            }),
        }
    }

    /// The image of the proxy pods of `traffic: proxy` environments whose manifest names
    /// none (`ferry server --proxy-image`, or `$FERRY_PROXY_IMAGE`); `None`: Ferry's own image
    /// at this version. Fleets made from now on use it.
    pub fn set_proxy_image(&self, image: Option<String>) {
        *crate::lock(&self.inner.proxy_image) = image;
    }

    /// The Docker runtime, connected on first use.
    pub async fn docker(&self) -> Result<&dyn Runtime, RuntimeError> {
        self.inner
            .docker
            .get_or_try_init(|| async {
                let docker = connect_docker(&self.inner.socket, &self.inner.owner).await?;
                forward(docker.subscribe(), self.inner.events.clone());
                Ok(docker)
            })
            .await
            .map(|docker| docker.as_ref())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.inner.events.subscribe()
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.inner.log_dir.join(format!("{id}.log"))
    }

    /// The runtime that supervises `id`, if any.
    fn owner_of(&self, id: &str) -> Option<Arc<dyn Runtime>> {
        if self.inner.local.status(id).is_some() {
            return Some(self.inner.local.clone());
        }
        if let Some(docker) = self
            .inner
            .docker
            .get()
            .filter(|docker| docker.status(id).is_some())
        {
            return Some(docker.clone());
        }
        self.kube_owner_of(id)
    }

    #[cfg(feature = "kubernetes")]
    fn kube_owner_of(&self, id: &str) -> Option<Arc<dyn Runtime>> {
        crate::lock(&self.inner.kube)
            .values()
            .find(|kube| kube.status(id).is_some())
            .map(|kube| Arc::new(kube.clone()) as Arc<dyn Runtime>)
    }

    #[cfg(not(feature = "kubernetes"))]
    fn kube_owner_of(&self, _id: &str) -> Option<Arc<dyn Runtime>> {
        None
    }

    /// Gives the Kubernetes runtime `env`'s manifest and secrets (its objects are built from
    /// them; the registry credentials are not among them), connecting to its cluster on first
    /// use; nothing for other environments. The controller calls it before it starts, adopts
    /// or runs anything of the environment.
    pub async fn configure_kubernetes(
        &self,
        manifest: &Manifest,
        env: &str,
        secrets: &EnvSecrets,
    ) -> Result<(), RuntimeError> {
        let key = (manifest.app.clone(), env.to_string());
        let Some(environment) = manifest
            .environments
            .get(env)
            .filter(|e| e.runtime == RuntimeKind::Kubernetes)
        else {
            // Not (or no longer: its runtime changed) a Kubernetes environment.
            crate::lock(&self.inner.kube_envs).remove(&key);
            return Ok(());
        };
        let context = environment
            .kubernetes
            .as_ref()
            .and_then(|k| k.context.clone());
        crate::lock(&self.inner.kube_envs).insert(key, context.clone());
        self.connect_kubernetes(context, manifest, env, &secrets.vars)
            .await
    }

    #[cfg(feature = "kubernetes")]
    async fn connect_kubernetes(
        &self,
        context: Option<String>,
        manifest: &Manifest,
        env: &str,
        secrets: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        self.kube_runtime(context)
            .await?
            .configure(manifest, env, secrets.clone());
        Ok(())
    }

    /// The Kubernetes runtime of `context`, connected on first use.
    #[cfg(feature = "kubernetes")]
    async fn kube_runtime(
        &self,
        context: Option<String>,
    ) -> Result<ferry_k8s::runtime::KubernetesRuntime, RuntimeError> {
        let _connecting = self.inner.kube_connect.lock().await;
        if let Some(kube) = crate::lock(&self.inner.kube).get(&context) {
            return Ok(kube.clone());
        }
        let cluster = ferry_k8s::client::Cluster::connect(context.as_deref())
            .await
            .map_err(|e| RuntimeError::Engine {
                what: "connecting to the Kubernetes cluster".to_string(),
                source: Box::new(e),
            })?;
        let kube = ferry_k8s::runtime::KubernetesRuntime::new(cluster);
        forward(kube.subscribe(), self.inner.events.clone());
        crate::lock(&self.inner.kube).insert(context, kube.clone());
        Ok(kube)
    }

    /// Makes the proxy fleets those of `serving`: each (manifest, env) is an environment
    /// whose listeners the route table gives to Ferry's proxy pods (`runtime: kubernetes`,
    /// `traffic: proxy` in the manifest it is routed by). The controller calls it every pass,
    /// before it pushes the table, so that the table's split ([`crate::fleet::Planes`])
    /// knows every fleet environment — and never gives its listeners to the local proxy —
    /// even before its fleet exists (its cluster not connected yet, or unreachable). A
    /// fleet is made on first use (its objects applied at its first push); one whose
    /// environment left `serving` (removed from the manifest, or switched to `traffic:
    /// gateway` or another runtime) has its objects deleted, retried every call until done.
    pub async fn serve_fleets(&self, serving: &[(&Manifest, &str)]) {
        #[cfg(feature = "kubernetes")]
        {
            let closed = crate::lock(&self.inner.fleets).closed;
            let wanted: Vec<(EnvKey, Place, &Manifest)> = serving
                .iter()
                .filter(|_| !closed)
                .map(|(manifest, env)| {
                    let place = Place {
                        context: manifest
                            .environments
                            .get(env)
                            .and_then(|e| e.kubernetes.as_ref())
                            .and_then(|k| k.context.clone()),
                        namespace: ferry_k8s::objects::namespace_name(manifest, env),
                    };
                    ((manifest.app.clone(), env.to_string()), place, *manifest)
                })
                .collect();
            {
                let mut fleets = crate::lock(&self.inner.fleets);
                let Fleets {
                    serving,
                    live,
                    retiring,
                    ..
                } = &mut *fleets;
                *serving = wanted.iter().map(|(key, _, _)| key.clone()).collect();
                // No longer served, or moved (another cluster or namespace): retired.
                let gone: Vec<EnvKey> = live
                    .iter()
                    .filter(|(key, fleet)| {
                        !wanted
                            .iter()
                            .any(|(k, place, _)| k == *key && *place == fleet.place)
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in gone {
                    if let Some(fleet) = live.remove(&key) {
                        retiring.insert(key, (fleet.place, fleet.pods));
                    }
                }
                // Served again where its objects still are: they are applied again, not
                // deleted.
                retiring.retain(|key, (place, _)| {
                    !wanted.iter().any(|(k, p, _)| k == key && p == place)
                });
            }
            for (key, place, manifest) in wanted {
                if let Some(fleet) = crate::lock(&self.inner.fleets).live.get(&key) {
                    fleet.pods.set_manifest(manifest);
                    continue;
                }
                let kube = match self.kube_runtime(place.context.clone()).await {
                    Ok(kube) => kube,
                    Err(e) => {
                        tracing::warn!(app = %key.0, env = %key.1, error = %e, "no proxy pods for this environment yet; its listeners wait for them");
                        continue;
                    }
                };
                let pods = Arc::new(crate::fleet_kube::KubePods::new(
                    kube.cluster().clone(),
                    manifest,
                    &key.1,
                    crate::lock(&self.inner.proxy_image)
                        .clone()
                        .unwrap_or_else(ferry_k8s::proxy::default_image),
                    server_namespace(),
                ));
                let fleet = Arc::new(crate::fleet::Fleet::new(pods.clone()));
                let mut fleets = crate::lock(&self.inner.fleets);
                if !fleets.closed {
                    fleets.live.insert(key, ProxyFleet { place, pods, fleet });
                }
            }
            self.delete_retired().await;
        }
        #[cfg(not(feature = "kubernetes"))]
        let _ = serving;
    }

    /// Deletes the objects of the retired fleets (see [`Runtimes::serve_fleets`]).
    #[cfg(feature = "kubernetes")]
    async fn delete_retired(&self) {
        let retiring: Vec<(EnvKey, Arc<crate::fleet_kube::KubePods>)> =
            crate::lock(&self.inner.fleets)
                .retiring
                .iter()
                .map(|(key, (_, pods))| (key.clone(), pods.clone()))
                .collect();
        for (key, pods) in retiring {
            match pods.remove().await {
                Ok(deleted) => {
                    tracing::info!(app = %key.0, env = %key.1, deleted, "proxy pods' objects deleted");
                    let mut fleets = crate::lock(&self.inner.fleets);
                    if fleets
                        .retiring
                        .get(&key)
                        .is_some_and(|(_, p)| Arc::ptr_eq(p, &pods))
                    {
                        fleets.retiring.remove(&key);
                    }
                }
                Err(e) => {
                    tracing::warn!(app = %key.0, env = %key.1, error = %e, "proxy pods' objects not deleted; retrying")
                }
            }
        }
    }

    #[cfg(not(feature = "kubernetes"))]
    async fn connect_kubernetes(
        &self,
        _context: Option<String>,
        _manifest: &Manifest,
        _env: &str,
        _secrets: &BTreeMap<String, String>,
    ) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unavailable {
            runtime: "kubernetes",
        })
    }

    /// The Kubernetes runtime of a `runtime: kubernetes` environment (an error when it could
    /// not be connected); `None` for other environments.
    fn kubernetes_of(
        &self,
        app: &str,
        env: &str,
    ) -> Option<Result<Arc<dyn Runtime>, RuntimeError>> {
        let context = crate::lock(&self.inner.kube_envs)
            .get(&(app.to_string(), env.to_string()))
            .cloned()?;
        Some(self.kube_for(&context))
    }

    #[cfg(feature = "kubernetes")]
    fn kube_for(&self, context: &Option<String>) -> Result<Arc<dyn Runtime>, RuntimeError> {
        crate::lock(&self.inner.kube)
            .get(context)
            .map(|kube| Arc::new(kube.clone()) as Arc<dyn Runtime>)
            .ok_or_else(|| RuntimeError::Engine {
                what: "the Kubernetes runtime".to_string(),
                source: "not connected to the cluster (see the server's log)".into(),
            })
    }

    #[cfg(not(feature = "kubernetes"))]
    fn kube_for(&self, _context: &Option<String>) -> Result<Arc<dyn Runtime>, RuntimeError> {
        Err(RuntimeError::Unavailable {
            runtime: "kubernetes",
        })
    }

    /// A `traffic: gateway` environment's route table, per service (version, basis points)
    /// with `new` the version being rolled out, onto its HTTPRoute's weights and its
    /// stable/canary Services (`KubernetesRuntime::route_gateway`). Nothing for an
    /// environment the Kubernetes runtime does not run (yet).
    pub async fn route_gateway(
        &self,
        app: &str,
        env: &str,
        new: Option<&str>,
        traffic: &[(String, Vec<(String, u32)>)],
    ) -> Result<(), RuntimeError> {
        #[cfg(feature = "kubernetes")]
        {
            let Some(context) = crate::lock(&self.inner.kube_envs)
                .get(&(app.to_string(), env.to_string()))
                .cloned()
            else {
                return Ok(());
            };
            let kube = crate::lock(&self.inner.kube).get(&context).cloned();
            let Some(kube) = kube else {
                return Err(RuntimeError::Engine {
                    what: "the Kubernetes runtime".to_string(),
                    source: "not connected to the cluster (see the server's log)".into(),
                });
            };
            kube.route_gateway(app, env, new, traffic).await.map(|_| ())
        }
        #[cfg(not(feature = "kubernetes"))]
        {
            let _ = (app, env, new, traffic);
            Ok(())
        }
    }

    pub fn status(&self, id: &str) -> Option<ReplicaStatus> {
        self.owner_of(id).and_then(|runtime| runtime.status(id))
    }

    /// The CPU and memory of every replica the process and Docker runtimes supervise (a
    /// Kubernetes runtime samples none: that needs metrics-server or Prometheus).
    pub async fn usage(&self) -> std::collections::BTreeMap<String, ferry_runtime::Usage> {
        let mut usage = self.inner.local.usage().await;
        if let Some(docker) = self.inner.docker.get() {
            usage.extend(docker.usage().await);
        }
        usage
    }

    /// Where the replica answers, as the runtime that supervises it reports it (what the
    /// proxy routes to); `None` when no runtime supervises it.
    pub fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.owner_of(id).and_then(|runtime| runtime.endpoint(id))
    }

    /// Whether the replica runs as a container (its logs come from the engine or the
    /// cluster, not a file of this server).
    pub fn is_container(&self, id: &str) -> bool {
        self.inner
            .docker
            .get()
            .is_some_and(|docker| docker.status(id).is_some())
            || self.kube_owner_of(id).is_some()
    }

    /// The replica's log lines (tail, then follow), from whichever runtime runs it.
    pub fn logs(&self, id: &str, tail: usize, follow: bool) -> ferry_runtime::LogLines {
        match self.owner_of(id) {
            Some(runtime) => runtime.logs(id, tail, follow),
            None => self.inner.local.logs(id, tail, follow),
        }
    }

    /// Starts a replica: pods on Kubernetes for a `runtime: kubernetes` environment, a
    /// container when its spec has one, else a process.
    pub async fn start(&self, spec: ReplicaSpec) -> Result<Instance, RuntimeError> {
        if let Some(kube) = self.kubernetes_of(&spec.app, &spec.env) {
            kube?.start(spec).await
        } else if spec.container.is_some() {
            self.docker().await?.start(spec).await
        } else {
            self.inner.local.start(spec).await
        }
    }

    /// Re-adopts a replica an earlier server started; when it can't be, whatever still runs
    /// for it is stopped (a process by identity or `FERRY_REPLICA_ID`, containers by label).
    pub async fn adopt(
        &self,
        spec: ReplicaSpec,
        recorded: Option<ProcessIdentity>,
    ) -> Result<bool, RuntimeError> {
        let id = spec.id.clone();
        let runtime: Arc<dyn Runtime> = if let Some(kube) = self.kubernetes_of(&spec.app, &spec.env)
        {
            kube?
        } else if spec.container.is_some() {
            self.docker().await?;
            self.inner
                .docker
                .get()
                .cloned()
                .ok_or(RuntimeError::Unavailable { runtime: "docker" })?
        } else {
            self.inner.local.clone()
        };
        let adopted = runtime.adopt(spec, recorded).await?;
        if !adopted {
            runtime.discard(&id, recorded).await;
        }
        Ok(adopted)
    }

    /// Stops what runs for a replica no runtime supervises: its process group (by the
    /// `recorded` identity or, when the server died before recording it, by the marker the
    /// process runtime gives every replica), its containers.
    pub async fn discard(&self, id: &str, recorded: Option<ProcessIdentity>) {
        self.inner.local.discard(id, recorded).await;
        if let Some(docker) = self.inner.docker.get() {
            docker.discard(id, None).await;
        }
    }

    /// Removes a task's containers left by an earlier server (only when an engine is there).
    pub async fn discard_task(&self, name: &str) {
        if self.inner.docker.get().is_none() && !self.inner.socket.exists() {
            return;
        }
        match self.docker().await {
            Ok(docker) => {
                if let Err(e) = docker.discard_task(name).await {
                    tracing::warn!(task = name, error = %e, "cannot look for its containers");
                }
            }
            Err(e) => tracing::debug!(error = %e, "no Docker engine to look for task containers"),
        }
    }

    /// Takes over a task's container an earlier server left (see [`Runtime::adopt_task`]);
    /// `Ok(None)` when there is none (or no engine to ask).
    pub async fn adopt_task(
        &self,
        name: &str,
        timeout: std::time::Duration,
        output: ferry_runtime::TaskOutput,
    ) -> Result<Option<TaskOutcome>, RuntimeError> {
        if self.inner.docker.get().is_none() && !self.inner.socket.exists() {
            return Ok(None);
        }
        self.docker().await?.adopt_task(name, timeout, output).await
    }

    /// After the adoptions of a restart: removes what runs for replicas the store does not
    /// know (`keep`: the ids it knows), on the local runtime, on the engine when this
    /// server is connected to one, and in the namespaces of its `runtime: kubernetes`
    /// environments (Deployments trimmed to the adopted replicas).
    pub async fn remove_orphans(&self, keep: &[String]) -> Result<usize, RuntimeError> {
        let mut removed = self.inner.local.remove_orphans(keep).await?;
        if let Some(docker) = self.inner.docker.get() {
            removed += docker.remove_orphans(keep).await?;
        }
        #[cfg(feature = "kubernetes")]
        {
            let kubes: Vec<_> = crate::lock(&self.inner.kube).values().cloned().collect();
            for kube in kubes {
                removed += kube.remove_orphans(keep).await?;
            }
        }
        Ok(removed)
    }

    pub async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        match self.owner_of(id) {
            Some(runtime) => runtime.stop(id).await,
            None => Ok(()),
        }
    }

    /// Stops every replica of the runtimes, and every container this server owns.
    pub async fn stop_all(&self) {
        self.inner.local.stop_all().await;
        #[cfg(feature = "kubernetes")]
        {
            let kubes: Vec<_> = crate::lock(&self.inner.kube).values().cloned().collect();
            for kube in kubes {
                kube.stop_all().await;
            }
        }
        if let Some(docker) = self.inner.docker.get()
            && let Err(e) = docker.remove_all().await
        {
            tracing::warn!(error = %e, "could not remove every container");
        }
    }

    /// Runs a one-off task: in a container when its spec has one, else as a process group.
    pub async fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> Result<TaskOutcome, RuntimeError> {
        if let Some(kube) = self.kubernetes_of(&spec.app, &spec.env) {
            kube?.run_task(spec, started).await
        } else if spec.container.is_some() {
            self.docker().await?.run_task(spec, started).await
        } else {
            self.inner.local.run_task(spec, started).await
        }
    }
}

/// Connects to the Docker engine at `socket`, as `owner`.
#[cfg(feature = "docker")]
async fn connect_docker(
    socket: &std::path::Path,
    owner: &str,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    let docker = ferry_runtime::docker::DockerRuntime::connect(socket, owner).await?;
    Ok(Arc::new(docker))
}

/// A build without the `docker` feature has no Docker runtime.
#[cfg(not(feature = "docker"))]
async fn connect_docker(
    _socket: &std::path::Path,
    _owner: &str,
) -> Result<Arc<dyn Runtime>, RuntimeError> {
    Err(RuntimeError::Unavailable { runtime: "docker" })
}

/// Copies one runtime's events onto the shared channel until that runtime goes.
fn forward(mut from: broadcast::Receiver<RuntimeEvent>, to: broadcast::Sender<RuntimeEvent>) {
    tokio::spawn(async move {
        loop {
            match from.recv().await {
                Ok(event) => {
                    let _ = to.send(event);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "runtime events lagged");
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// An environment's secrets as Ferry hands them out: `vars` for what runs (the
/// environments of replicas, hooks and gate command checks of every runtime, and the
/// Kubernetes Secret its pods read), and the registry credentials ([`REGISTRY_USERNAME`],
/// [`REGISTRY_PASSWORD`]) for pulling images only: they are in no workload's environment.
#[derive(Clone, Default)]
pub struct EnvSecrets {
    pub vars: BTreeMap<String, String>,
    /// Both credentials, when both are set.
    pub registry: Option<RegistryAuth>,
}

impl EnvSecrets {
    /// Takes the registry credentials out of an environment's secrets.
    pub fn split(mut all: BTreeMap<String, String>) -> EnvSecrets {
        let username = all.remove(REGISTRY_USERNAME);
        let password = all.remove(REGISTRY_PASSWORD);
        EnvSecrets {
            vars: all,
            registry: username
                .zip(password)
                .map(|(username, password)| RegistryAuth { username, password }),
        }
    }
}

/// How `service` of `manifest` runs as a container in `env`, when the environment is
/// `runtime: docker` (`None` otherwise, or without an image), pulled with `registry`.
pub fn container_spec(
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
    registry: Option<&RegistryAuth>,
) -> Option<ContainerSpec> {
    if manifest.environments.get(env)?.runtime != RuntimeKind::Docker {
        return None;
    }
    let service = manifest.services.get(service)?;
    let image = service.image.as_ref()?.replace("${VERSION}", version);
    let resources = service.resources.clone().unwrap_or_default();
    Some(ContainerSpec {
        image,
        user: service.user.clone(),
        allow_root: service.allow_root,
        // Validated with the manifest: an unreadable value can't get here.
        memory_bytes: resources.memory_bytes().ok().flatten(),
        nano_cpus: resources.nano_cpus().ok().flatten(),
        stop_signal: None,
        registry_auth: registry.cloned(),
        labels: Default::default(),
    })
}

/// The image hooks run in for `env`: the first service (by name) with an image.
pub fn hook_container(
    manifest: &Manifest,
    env: &str,
    version: &str,
    registry: Option<&RegistryAuth>,
) -> Option<ContainerSpec> {
    manifest
        .services
        .iter()
        .find_map(|(name, _)| container_spec(manifest, env, name, version, registry))
}

impl crate::fleet::FleetDirectory for Runtimes {
    fn plane_of(&self, app: &str, env: &str) -> crate::fleet::Plane {
        #[cfg(feature = "kubernetes")]
        {
            let key = (app.to_string(), env.to_string());
            let fleets = crate::lock(&self.inner.fleets);
            match fleets.live.get(&key) {
                Some(f) if fleets.serving.contains(&key) => {
                    crate::fleet::Plane::Fleet(f.fleet.clone())
                }
                _ if fleets.serving.contains(&key) => crate::fleet::Plane::Pending,
                _ => crate::fleet::Plane::Local,
            }
        }
        #[cfg(not(feature = "kubernetes"))]
        {
            let _ = (app, env);
            crate::fleet::Plane::Local
        }
    }

    fn fleets(&self) -> Vec<(String, Arc<crate::fleet::Fleet>)> {
        #[cfg(feature = "kubernetes")]
        {
            crate::lock(&self.inner.fleets)
                .live
                .iter()
                .map(|((app, env), f)| (format!("{app}/{env}"), f.fleet.clone()))
                .collect()
        }
        #[cfg(not(feature = "kubernetes"))]
        {
            Vec::new()
        }
    }

    fn remove_all(&self) -> ferry_runtime::BoxFuture<'_, ()> {
        // A teardown: every fleet is retired, its objects deleted, and none made again.
        #[cfg(feature = "kubernetes")]
        {
            crate::lock(&self.inner.fleets).closed = true;
        }
        Box::pin(self.serve_fleets(&[]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ferry_runtime::HealthSpec;

    use super::*;

    #[test]
    fn a_cluster_configuration_is_the_service_account_a_kubeconfig_or_the_home_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        let config = dir.path().join("config");
        let none = dir.path().join("absent");
        let os = |p: &std::path::Path| p.as_os_str().to_owned();
        assert!(!cluster_configuration(
            true,
            &token,
            None,
            Some(&os(dir.path()))
        ));
        std::fs::write(&token, "t").expect("token");
        assert!(cluster_configuration(true, &token, None, None));
        assert!(
            !cluster_configuration(false, &token, None, None),
            "a token without the service host"
        );
        assert!(!cluster_configuration(
            false,
            &token,
            Some(&os(&none)),
            None
        ));
        std::fs::write(&config, "apiVersion: v1").expect("config");
        let both = std::env::join_paths([&none, &config]).expect("paths");
        assert!(cluster_configuration(false, &token, Some(&both), None));
        std::fs::create_dir_all(dir.path().join(".kube")).expect("dir");
        std::fs::write(dir.path().join(".kube/config"), "apiVersion: v1").expect("config");
        assert!(cluster_configuration(
            false,
            &token,
            None,
            Some(&os(dir.path()))
        ));
    }

    fn kube_manifest(kubernetes: &str) -> Manifest {
        ferry_core::manifest::parse(
            &format!(
                "app: shop
services:
  web:
    image: \"registry.example.com/web:${{VERSION}}\"
environments:
  production:
    listen: 127.0.0.1:18080
    {kubernetes}
"
            ),
            "ferry.yaml",
        )
        .expect("manifest")
    }

    /// The root of a listener once given to the local proxy on a first deploy: a `traffic:
    /// proxy` environment is known as a fleet's from its manifest, before its fleet exists
    /// (here its cluster cannot be reached at all), so the local proxy never gets it.
    #[cfg(feature = "kubernetes")]
    #[tokio::test]
    async fn a_proxy_environment_is_a_fleet_s_before_its_fleet_exists() {
        use crate::fleet::{FleetDirectory, Plane};
        let dir = tempfile::tempdir().expect("tempdir");
        let runtimes = Runtimes::new(
            ProcessRuntime::new(dir.path().join("logs"), 1 << 20),
            "t".into(),
        );
        let plane = |r: &Runtimes| match r.plane_of("shop", "production") {
            Plane::Local => "local",
            Plane::Fleet(_) => "fleet",
            Plane::Pending => "pending",
        };
        assert_eq!(plane(&runtimes), "local", "nothing declared yet");
        let proxy = kube_manifest(
            "runtime: kubernetes\n    kubernetes: { context: ferry-test-no-such-context }",
        );
        runtimes.serve_fleets(&[(&proxy, "production")]).await;
        assert_eq!(plane(&runtimes), "pending");
        assert!(runtimes.fleets().is_empty());
        // Switched to another traffic mode (or removed): the local proxy's again.
        runtimes.serve_fleets(&[]).await;
        assert_eq!(plane(&runtimes), "local");
    }

    /// An environment that moves off Kubernetes starts its next replicas on its new
    /// runtime, not on the cluster it used to run on.
    #[tokio::test]
    async fn an_environment_that_leaves_kubernetes_starts_locally_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtimes = Runtimes::new(
            ProcessRuntime::new(dir.path().join("logs"), 1 << 20),
            "t".into(),
        );
        let kube = kube_manifest(
            "runtime: kubernetes\n    kubernetes: { context: ferry-test-no-such-context }",
        );
        // Without the feature, or with no such context: an error, but the environment is
        // known as a Kubernetes one.
        assert!(
            runtimes
                .configure_kubernetes(&kube, "production", &EnvSecrets::default())
                .await
                .is_err()
        );
        assert!(runtimes.kubernetes_of("shop", "production").is_some());
        let local = kube_manifest("runtime: process");
        runtimes
            .configure_kubernetes(&local, "production", &EnvSecrets::default())
            .await
            .expect("nothing to do for a process environment");
        assert!(runtimes.kubernetes_of("shop", "production").is_none());
    }

    /// A replica whose pid was never recorded (the server died between starting it and
    /// writing the pid): a later server's `discard` finds it by the process runtime's own
    /// marker and stops it.
    #[tokio::test]
    async fn discard_stops_a_local_replica_whose_pid_was_never_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = format!("shop-production-web-1.0-discard{}", std::process::id());
        let pid_file = dir.path().join("replica.pid");
        let spec = ReplicaSpec {
            id: id.clone(),
            app: "shop".into(),
            env: "production".into(),
            service: "web".into(),
            version: "1.0".into(),
            // Like a real server, it runs until told to stop (and its child with it).
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("echo $$ > '{}'; sleep 120 & wait", pid_file.display()),
            ],
            cwd: None,
            env_vars: BTreeMap::new(),
            run_as: None,
            redact: Vec::new(),
            port: ferry_runtime::free_port().expect("port"),
            health: HealthSpec {
                path: String::new(),
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                healthy_threshold: 1,
                unhealthy_threshold: 2,
            },
            stop_timeout: Duration::from_secs(5),
            container: None,
        };
        let logs = dir.path().join("logs");
        let dead = Runtimes::new(ProcessRuntime::new(logs.clone(), 1 << 20), "t".into());
        dead.start(spec).await.expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let pid: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the replica never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // The server dies: its runtime detaches, the replica keeps running.
        drop(dead);
        assert!(ferry_runtime::process_identity(pid).is_some());

        let next = Runtimes::new(ProcessRuntime::new(logs, 1 << 20), "t".into());
        next.discard(&id, None).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while ferry_runtime::process_identity(pid).is_some() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {pid} still runs after discard"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
