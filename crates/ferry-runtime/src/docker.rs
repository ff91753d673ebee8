//! The Docker runtime: replicas and tasks as containers on a Docker engine, over the Engine
//! API (bollard, Unix socket).
//!
//! - **Labels, not memory.** Every container carries `ferry.owner` (which Ferry server owns
//!   it), `ferry.app`, `ferry.env`, `ferry.service`, `ferry.version`, `ferry.replica` (or
//!   `ferry.task`) and the spec's own labels (`ferry.deployment`). A restarted server finds
//!   its replicas by label ([`Runtime::adopt`]): no orphan, no duplicate.
//! - **Secure by default.** Never uid 0 unless the spec allows it explicitly; every
//!   capability dropped, no-new-privileges, read-only root filesystem with a writable tmpfs
//!   `/tmp` owned by the container's uid (the engine ignores a tmpfs `mode=1777`), memory and
//!   CPU limits, the stop signal and grace period of the spec, bounded json-file logs.
//! - **Networking.** The container listens on `$PORT`. Without a bridge network (`dockerd
//!   --bridge=none`) it shares the host's network and answers on 127.0.0.1:`$PORT`; with one,
//!   `$PORT` is published on 127.0.0.1:`$PORT`. Either way [`Runtime::endpoint`] says where.
//! - Like replica processes, containers outlive the server: dropping the runtime detaches.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, ContainerSummary, ContainerSummaryStateEnum,
    HostConfig, HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StatsOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::runtime::{
    BoxFuture, ContainerSpec, Instance, LogLines, Runtime, TaskEnd, TaskOutcome, TaskOutput,
    TaskSpec, Usage,
};
use crate::supervisor::{Done, Driver, Started, Supervisor};
use crate::{
    DetachOnDrop, ProcessIdentity, ReplicaSpec, ReplicaStatus, RuntimeError, RuntimeEvent,
};

/// How often a container is inspected when the engine's wait call failed.
const EXIT_POLL: Duration = Duration::from_millis(500);
/// Grace for containers stopped without a spec (discarded, leftovers).
const DISCARD_GRACE_SECS: i32 = 10;
/// How many of an exited container's last log lines are read for its diagnosis (those of
/// its latest run are then bounded as a process replica's are).
const LAST_OUTPUT_TAIL: usize = 200;
/// The most bytes of them read.
const LAST_OUTPUT_READ: usize = 256 * 1024;
/// How long the engine gets to answer with them.
const LAST_OUTPUT_WAIT: Duration = Duration::from_secs(5);
/// Size of the writable `/tmp`.
const TMPFS_SIZE: &str = "64m";

/// Labels (see the module documentation).
pub const LABEL_OWNER: &str = "ferry.owner";
pub const LABEL_APP: &str = "ferry.app";
pub const LABEL_ENV: &str = "ferry.env";
pub const LABEL_SERVICE: &str = "ferry.service";
pub const LABEL_VERSION: &str = "ferry.version";
pub const LABEL_REPLICA: &str = "ferry.replica";
pub const LABEL_TASK: &str = "ferry.task";

/// How containers reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace: the container answers on 127.0.0.1:`$PORT`.
    Host,
    /// The engine's default bridge, `$PORT` published on 127.0.0.1:`$PORT`.
    Bridge,
}

/// Starts and supervises containers. Cheap to clone.
#[derive(Clone)]
pub struct DockerRuntime {
    sup: Arc<Supervisor<Engine>>,
    _detach: Arc<DetachOnDrop>,
}

/// The engine connection: the Docker runtime's [`Driver`] (a replica's instance is one
/// container, restarted in place when it exits).
struct Engine {
    docker: Docker,
    owner: String,
    /// Short hash of the owner, in container names (unique per engine).
    prefix: String,
    network: Network,
    tasks: AtomicU64,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("owner", &self.sup.driver.owner)
            .field("network", &self.sup.driver.network)
            .finish()
    }
}

fn engine_error(what: impl Into<String>) -> impl FnOnce(EngineError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Engine {
        what,
        source: Box::new(source),
    }
}

fn is_status(e: &EngineError, code: u16) -> bool {
    matches!(e, EngineError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The engine's own words for an error (the registry's message for a failed pull).
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { message, .. } => message.clone(),
        EngineError::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

impl DockerRuntime {
    /// Connects to the engine at `socket` (e.g. `/var/run/docker.sock`), agrees on an API
    /// version, and detects whether a bridge network exists. `owner` names this Ferry server
    /// on the engine (e.g. its data directory): only containers labelled with it are
    /// adopted, discarded or listed.
    pub async fn connect(socket: &Path, owner: &str) -> Result<DockerRuntime, RuntimeError> {
        let socket = socket.display().to_string();
        let docker = Docker::connect_with_unix(&socket, 120, bollard::API_DEFAULT_VERSION)
            .map_err(engine_error(format!(
                "cannot use the Docker engine at {socket}"
            )))?
            .negotiate_version()
            .await
            .map_err(engine_error(format!(
                "the Docker engine at {socket} does not answer"
            )))?;
        let network = match docker
            .inspect_network(
                "bridge",
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Network::Bridge,
            Err(e) if is_status(&e, 404) => Network::Host,
            Err(e) => return Err(engine_error("listing the engine's networks")(e)),
        };
        Ok(Self::with(docker, owner, network))
    }

    fn with(docker: Docker, owner: &str, network: Network) -> DockerRuntime {
        let sup = Supervisor::new(Engine {
            docker,
            owner: owner.to_string(),
            prefix: short_hash(owner),
            network,
            tasks: AtomicU64::new(0),
        });
        let detach = sup.detach.clone();
        DockerRuntime {
            sup,
            _detach: Arc::new(DetachOnDrop(detach)),
        }
    }

    pub fn network(&self) -> Network {
        self.sup.driver.network
    }

    /// Every container this server owns, running or not (by label).
    pub async fn containers(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        self.sup.driver.find(&[]).await
    }

    /// Removes the owned replica containers whose replica id is not in `keep` and that are not
    /// supervised (left by a crash between a stop and the forgetting of its row); returns
    /// how many.
    pub async fn remove_orphans(&self, keep: &[String]) -> Result<usize, RuntimeError> {
        let supervised: Vec<String> = self.sup.replicas().keys().cloned().collect();
        let mut removed = 0;
        for container in self.sup.driver.find(&[]).await? {
            let Some(replica) = label(&container, LABEL_REPLICA) else {
                continue;
            };
            if keep.iter().chain(&supervised).any(|id| id == replica) {
                continue;
            }
            if let Some(id) = &container.id {
                self.sup.driver.remove(id, DISCARD_GRACE_SECS).await;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Stops and removes every container this server owns (teardown); returns how many.
    pub async fn remove_all(&self) -> Result<usize, RuntimeError> {
        let found = self.sup.driver.find(&[]).await?;
        for id in found.iter().filter_map(|c| c.id.as_deref()) {
            self.sup.driver.remove(id, DISCARD_GRACE_SECS).await;
        }
        Ok(found.len())
    }

    /// Stops and removes the containers of a task (by its name), e.g. one a dead server left
    /// running; returns how many.
    pub async fn discard_task(&self, name: &str) -> Result<usize, RuntimeError> {
        let found = self.sup.driver.find(&[(LABEL_TASK, name)]).await?;
        for id in found.iter().filter_map(|c| c.id.as_deref()) {
            self.sup.driver.remove(id, 1).await;
        }
        Ok(found.len())
    }

    /// Takes over a task's container an earlier server left (see [`Runtime::adopt_task`]):
    /// found by its `ferry.task` label, awaited, its whole log (kept by the engine) written
    /// again to `output`, then removed.
    pub async fn adopt_task(
        &self,
        name: &str,
        timeout: Duration,
        output: TaskOutput,
    ) -> Result<Option<TaskOutcome>, RuntimeError> {
        let began = Instant::now();
        let engine = &self.sup.driver;
        let mut found = engine.find(&[(LABEL_TASK, name)]).await?;
        let Some((id, state)) = found.pop().and_then(|c| Some((c.id?, c.state))) else {
            return Ok(None);
        };
        // One container per task name; anything else is a leftover.
        for extra in found.iter().filter_map(|c| c.id.as_deref()) {
            engine.remove(extra, 1).await;
        }
        let _guard = RemoveOnDrop {
            docker: engine.docker.clone(),
            id: id.clone(),
        };
        if state == Some(ContainerSummaryStateEnum::CREATED) {
            // The dead server created it but never started it: this is its only run (the
            // engine's wait would read "not running" as already ended).
            engine
                .docker
                .start_container(&id, None)
                .await
                .map_err(engine_error(format!(
                    "task {name}: cannot start its container"
                )))?;
        }
        if let TaskOutput::File { path, .. } = &output {
            // The engine has all of it: what the dead server wrote goes.
            let _ = std::fs::write(path, b"");
        }
        let collected = tokio::spawn(collect_output(engine.docker.clone(), id.clone(), output));
        let end = match tokio::time::timeout(timeout, wait_exit(&engine.docker, &id)).await {
            Ok(code) => code.map_or(TaskEnd::Signalled(0), TaskEnd::Exited),
            Err(_) => {
                engine.remove(&id, 0).await;
                TaskEnd::TimedOut
            }
        };
        let (stdout, stderr) = match tokio::time::timeout(Duration::from_secs(5), collected).await {
            Ok(Ok(pair)) => pair,
            _ => (String::new(), String::new()),
        };
        Ok(Some(TaskOutcome {
            end,
            stdout,
            stderr,
            took: began.elapsed(),
        }))
    }

    async fn start_replica(&self, spec: ReplicaSpec) -> Result<Instance, RuntimeError> {
        crate::validate_id(&spec.id)?;
        Supervisor::<Engine>::ensure_absent(&self.sup.replicas(), &spec.id)?;
        let engine = &self.sup.driver;
        let Some(container) = &spec.container else {
            return Err(RuntimeError::NoImage {
                id: spec.id.clone(),
            });
        };
        let image_user = engine.ensure_image(container).await?;
        let user = effective_user(&spec.id, container, image_user.as_deref())?;
        let name = format!("ferry-{}-{}", engine.prefix, container_name(&spec.id));
        let body = engine.replica_body(&spec, container, user);
        let id = engine.create(&name, body).await?;
        if let Err(e) = engine.docker.start_container(&id, None).await {
            engine.remove(&id, 0).await;
            return Err(engine_error(format!(
                "replica {}: cannot start its container",
                spec.id
            ))(e));
        }
        let pid = engine.pid(&id).await;
        let instance = Instance::Container(id.clone());
        let started = Started {
            running: id,
            instance: instance.clone(),
            pid,
        };
        let clash = {
            let mut replicas = self.sup.replicas();
            match Supervisor::<Engine>::ensure_absent(&replicas, &spec.id) {
                Ok(()) => {
                    self.sup.supervise(&mut replicas, spec, started, true);
                    None
                }
                Err(e) => Some((e, started.running)),
            }
        };
        if let Some((e, container)) = clash {
            // Started twice at once: the replica already supervised stays.
            engine.remove(&container, 0).await;
            return Err(e);
        }
        Ok(instance)
    }

    async fn adopt_replica(&self, spec: ReplicaSpec) -> Result<bool, RuntimeError> {
        crate::validate_id(&spec.id)?;
        let engine = &self.sup.driver;
        if self.sup.replicas().contains_key(&spec.id) {
            return Ok(true);
        }
        let mut found = engine.find(&[(LABEL_REPLICA, &spec.id)]).await?;
        // The newest running one is kept; any other is a duplicate (or dead): removed.
        found.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
        let running = found
            .iter()
            .position(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING));
        for (i, container) in found.iter().enumerate() {
            if Some(i) != running
                && let Some(id) = &container.id
            {
                engine.remove(id, DISCARD_GRACE_SECS).await;
            }
        }
        let Some(id) = running.and_then(|i| found[i].id.clone()) else {
            return Ok(false);
        };
        let pid = engine.pid(&id).await;
        let started = Started {
            running: id.clone(),
            instance: Instance::Container(id),
            pid,
        };
        let mut replicas = self.sup.replicas();
        if replicas.contains_key(&spec.id) {
            return Ok(true);
        }
        self.sup.supervise(&mut replicas, spec, started, false);
        Ok(true)
    }

    async fn task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> Result<TaskOutcome, RuntimeError> {
        let began = Instant::now();
        let engine = &self.sup.driver;
        let Some(container) = &spec.container else {
            return crate::task::run(spec, started).await;
        };
        let image_user = engine.ensure_image(container).await?;
        let user = effective_user(&spec.name, container, image_user.as_deref())?;
        let serial = engine.tasks.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "ferry-{}-task-{}-{}-{serial}",
            engine.prefix,
            container_name(&spec.name),
            std::process::id()
        );
        let mut labels = container_labels(&engine.owner, &spec.app, &spec.env, container);
        labels.insert(LABEL_TASK.into(), spec.name.clone());
        let body = ContainerCreateBody {
            image: Some(container.image.clone()),
            cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
            env: Some(
                spec.env_vars
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
            user: Some(user.clone()),
            labels: Some(labels),
            stop_signal: container.stop_signal.clone(),
            host_config: Some(engine.host_config(container, &user, None)),
            ..ContainerCreateBody::default()
        };
        let id = engine.create(&name, body).await?;
        // From here on the container goes, whatever happens (even if this future is dropped).
        let _guard = RemoveOnDrop {
            docker: engine.docker.clone(),
            id: id.clone(),
        };
        engine
            .docker
            .start_container(&id, None)
            .await
            .map_err(engine_error(format!(
                "task {}: cannot start its container",
                spec.name
            )))?;
        if let Some(started) = started {
            let _ = started.send(Instance::Container(id.clone()));
        }
        let output = tokio::spawn(collect_output(
            engine.docker.clone(),
            id.clone(),
            spec.output.clone(),
        ));
        let end = match tokio::time::timeout(spec.timeout, wait_exit(&engine.docker, &id)).await {
            Ok(code) => code.map_or(TaskEnd::Signalled(0), TaskEnd::Exited),
            Err(_) => {
                engine.remove(&id, 0).await;
                TaskEnd::TimedOut
            }
        };
        let (stdout, stderr) = match tokio::time::timeout(Duration::from_secs(5), output).await {
            Ok(Ok(pair)) => pair,
            _ => (String::new(), String::new()),
        };
        Ok(TaskOutcome {
            end,
            stdout,
            stderr,
            took: began.elapsed(),
        })
    }
}

/// Removes a task's container when the task ends, however it ends.
struct RemoveOnDrop {
    docker: Docker,
    id: String,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let docker = self.docker.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                if let Err(e) = docker.remove_container(&id, Some(options)).await
                    && !is_status(&e, 404)
                {
                    tracing::warn!(container = %id, error = %e, "cannot remove a task's container");
                }
            });
        }
    }
}

impl Engine {
    /// How a replica's container is created: labels, environment (with `HOST`, the address
    /// to listen on: 127.0.0.1 on the host's network, 0.0.0.0 behind a bridge, where only
    /// the published port reaches it), command, user, limits, network.
    fn replica_body(
        &self,
        spec: &ReplicaSpec,
        container: &ContainerSpec,
        user: String,
    ) -> ContainerCreateBody {
        let mut labels = container_labels(&self.owner, &spec.app, &spec.env, container);
        labels.insert(LABEL_SERVICE.into(), spec.service.clone());
        labels.insert(LABEL_VERSION.into(), spec.version.clone());
        labels.insert(LABEL_REPLICA.into(), spec.id.clone());
        let host = match self.network {
            Network::Host => Ipv4Addr::LOCALHOST,
            Network::Bridge => Ipv4Addr::UNSPECIFIED,
        };
        let mut env = vec![
            format!("PORT={}", spec.port),
            format!("HOST={host}"),
            format!("VERSION={}", spec.version),
            format!("FERRY_APP={}", spec.app),
            format!("FERRY_ENV={}", spec.env),
            format!("FERRY_SERVICE={}", spec.service),
        ];
        env.extend(spec.env_vars.iter().map(|(k, v)| format!("{k}={v}")));
        let cmd: Vec<String> = spec
            .argv
            .iter()
            .map(|a| {
                a.replace("${PORT}", &spec.port.to_string())
                    .replace("${VERSION}", &spec.version)
            })
            .collect();
        ContainerCreateBody {
            image: Some(container.image.clone()),
            cmd: (!cmd.is_empty()).then_some(cmd),
            env: Some(env),
            host_config: Some(self.host_config(container, &user, Some(spec.port))),
            user: Some(user),
            labels: Some(labels),
            stop_signal: container.stop_signal.clone(),
            stop_timeout: Some(secs(spec.stop_timeout)),
            exposed_ports: (self.network == Network::Bridge)
                .then(|| vec![format!("{}/tcp", spec.port)]),
            ..ContainerCreateBody::default()
        }
    }

    /// Owned containers (all states) with these labels too.
    async fn find(&self, labels: &[(&str, &str)]) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let mut wanted = vec![format!("{LABEL_OWNER}={}", self.owner)];
        wanted.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let filters = HashMap::from([("label".to_string(), wanted)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error("listing containers"))
    }

    /// Stops (`grace` seconds) and removes a container; gone already is fine.
    async fn remove(&self, id: &str, grace: i32) {
        if grace > 0 {
            let options = StopContainerOptionsBuilder::new().t(grace).build();
            let _ = self.docker.stop_container(id, Some(options)).await;
        }
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        if let Err(e) = self.docker.remove_container(id, Some(options)).await
            && !is_status(&e, 404)
        {
            tracing::warn!(container = %id, error = %e, "cannot remove container");
        }
    }

    /// Creates a container; one left with the same name by an earlier attempt is removed.
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        let options = || CreateContainerOptionsBuilder::new().name(name).build();
        let created = match self
            .docker
            .create_container(Some(options()), body.clone())
            .await
        {
            Err(e) if is_status(&e, 409) => {
                self.remove(name, 0).await;
                self.docker.create_container(Some(options()), body).await
            }
            other => other,
        };
        created
            .map(|r| r.id)
            .map_err(engine_error(format!("cannot create container {name}")))
    }

    /// The container's main process on the host, when visible.
    async fn pid(&self, id: &str) -> Option<u32> {
        let inspect = self.docker.inspect_container(id, None).await.ok()?;
        inspect
            .state
            .and_then(|s| s.pid)
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
    }

    /// Pulls the image when it is missing; returns its configured `USER`.
    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        let user_of = |inspect: bollard::models::ImageInspect| {
            inspect
                .config
                .and_then(|c| c.user)
                .filter(|u| !u.is_empty())
        };
        match self.docker.inspect_image(&spec.image).await {
            Ok(inspect) => return Ok(user_of(inspect)),
            Err(e) if is_status(&e, 404) => {}
            // A reference the engine cannot read (a version like `1.0.0+build` as its
            // tag): no retry makes it valid.
            Err(e) if is_status(&e, 400) => {
                return Err(RuntimeError::Pull {
                    image: spec.image.clone(),
                    message: engine_message(&e),
                });
            }
            Err(e) => return Err(engine_error(format!("inspecting image {}", spec.image))(e)),
        }
        let (repo, tag) = split_image(&spec.image);
        let options = CreateImageOptionsBuilder::new()
            .from_image(repo)
            .tag(tag)
            .build();
        let credentials = spec.registry_auth.as_ref().map(|auth| DockerCredentials {
            username: Some(auth.username.clone()),
            password: Some(auth.password.clone()),
            serveraddress: registry_of(&spec.image).map(str::to_string),
            ..DockerCredentials::default()
        });
        let mut pull = self.docker.create_image(Some(options), None, credentials);
        while let Some(step) = pull.next().await {
            let message = match step {
                Ok(info) => info.error_detail.and_then(|d| d.message),
                Err(e) => Some(engine_message(&e)),
            };
            if let Some(message) = message {
                return Err(RuntimeError::Pull {
                    image: spec.image.clone(),
                    message,
                });
            }
        }
        match self.docker.inspect_image(&spec.image).await {
            Ok(inspect) => Ok(user_of(inspect)),
            Err(e) => Err(RuntimeError::Pull {
                image: spec.image.clone(),
                message: engine_message(&e),
            }),
        }
    }

    fn host_config(&self, spec: &ContainerSpec, user: &str, port: Option<u16>) -> HostConfig {
        let mut tmpfs = format!("rw,nosuid,nodev,size={TMPFS_SIZE}");
        let mut ids = user.split(':');
        if let Some(uid) = ids.next().filter(|u| u.parse::<u32>().is_ok()) {
            tmpfs.push_str(&format!(",uid={uid}"));
        }
        if let Some(gid) = ids.next().filter(|g| g.parse::<u32>().is_ok()) {
            tmpfs.push_str(&format!(",gid={gid}"));
        }
        let (network_mode, port_bindings) = match (self.network, port) {
            (Network::Host, _) => (Some("host".to_string()), None),
            (Network::Bridge, None) => (None, None),
            (Network::Bridge, Some(port)) => (
                None,
                Some(HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                        host_port: Some(port.to_string()),
                    }]),
                )])),
            ),
        };
        HostConfig {
            network_mode,
            port_bindings,
            readonly_rootfs: Some(true),
            tmpfs: Some(HashMap::from([("/tmp".to_string(), tmpfs)])),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            memory: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".to_string()),
                config: Some(HashMap::from([
                    ("max-size".to_string(), "10m".to_string()),
                    ("max-file".to_string(), "2".to_string()),
                ])),
            }),
            ..HostConfig::default()
        }
    }
}

/// The user a container runs as: the spec's, else the image's. Root (no user, `0`, `root`)
/// is refused unless the spec allows it explicitly.
fn effective_user(
    what: &str,
    spec: &ContainerSpec,
    image_user: Option<&str>,
) -> Result<String, RuntimeError> {
    let user = spec
        .user
        .as_deref()
        .or(image_user)
        .unwrap_or("0")
        .to_string();
    let uid = user.split(':').next().unwrap_or_default();
    if (uid.is_empty() || uid == "0" || uid == "root") && !spec.allow_root {
        return Err(RuntimeError::RootRefused {
            what: what.to_string(),
            image: spec.image.clone(),
        });
    }
    Ok(user)
}

fn container_labels(
    owner: &str,
    app: &str,
    env: &str,
    spec: &ContainerSpec,
) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    labels.insert(LABEL_OWNER.into(), owner.to_string());
    labels.insert(LABEL_APP.into(), app.to_string());
    labels.insert(LABEL_ENV.into(), env.to_string());
    labels
}

fn label<'a>(container: &'a ContainerSummary, name: &str) -> Option<&'a str> {
    container.labels.as_ref()?.get(name).map(String::as_str)
}

/// A name fragment the engine accepts (`[a-zA-Z0-9_.-]`).
fn container_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn short_hash(text: &str) -> String {
    // FNV-1a: stable across builds, enough to keep two owners' names apart.
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{:08x}", hash as u32)
}

/// `registry/name:tag` → (`registry/name`, `tag`); no tag means `latest` (never "every
/// tag"); a digest reference stays whole.
fn split_image(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (&image[..name_start + i], &image[name_start + i + 1..]),
        None => (image, "latest"),
    }
}

/// The registry host of an image reference, when it names one.
fn registry_of(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1)
}

/// Waits until the container has stopped; its exit code (None: unknown, e.g. removed).
async fn wait_exit(docker: &Docker, id: &str) -> Option<i32> {
    let mut wait = docker.wait_container(id, None);
    match wait.next().await {
        Some(Ok(response)) => return i32::try_from(response.status_code).ok(),
        Some(Err(EngineError::DockerContainerWaitError { code, .. })) => {
            return i32::try_from(code).ok();
        }
        Some(Err(e)) if is_status(&e, 404) => return None,
        _ => {}
    }
    // The wait call broke (engine restarting?): poll.
    loop {
        match docker.inspect_container(id, None).await {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                if !state.running.unwrap_or(false) {
                    return state.exit_code.and_then(|c| i32::try_from(c).ok());
                }
            }
            Err(e) if is_status(&e, 404) => return None,
            Err(_) => {}
        }
        tokio::time::sleep(EXIT_POLL).await;
    }
}

/// An engine time (`2026-12-06T13:00:00.123456789Z`, UTC, any number of fraction digits) as
/// (seconds since the Unix epoch, nanoseconds), ordered as the times are.
fn parse_timestamp(text: &str) -> Option<(i64, u32)> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(str::parse::<i64>);
    let (hour, minute, second) = (
        clock.next()?.ok()?,
        clock.next()?.ok()?,
        clock.next()?.ok()?,
    );
    if !(1..=12).contains(&month) || fraction.len() > 9 {
        return None;
    }
    let nanos = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32)
    };
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + second, nanos))
}

fn describe_exit(code: Option<i32>) -> String {
    match code {
        Some(code) if code > 128 => format!("exit code {code} (signal {})", code - 128),
        Some(code) => format!("exit code {code}"),
        None => "container gone".to_string(),
    }
}

/// A task container's output: into memory (two bounded tails) or appended to a file.
async fn collect_output(docker: Docker, id: String, output: TaskOutput) -> (String, String) {
    let options = LogsOptionsBuilder::new()
        .follow(true)
        .stdout(true)
        .stderr(true)
        .build();
    let mut logs = docker.logs(&id, Some(options));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut file = match &output {
        TaskOutput::File { path, .. } => crate::logs::open_append(path).ok(),
        TaskOutput::Capture { .. } => None,
    };
    // The file never holds a secret value: redacted here, as it is written.
    let redactor = match &output {
        TaskOutput::File {
            filter: Some(filter),
            ..
        } => crate::redact::Redactor::new(&filter.values),
        _ => crate::redact::Redactor::default(),
    };
    let mut redacting = redactor.stream();
    let mut last_trim = Instant::now();
    while let Some(Ok(chunk)) = logs.next().await {
        match (&output, chunk) {
            (TaskOutput::Capture { max_bytes }, LogOutput::StdErr { message }) => {
                keep_tail(&mut err, &message, *max_bytes);
            }
            (TaskOutput::Capture { max_bytes }, other) => {
                keep_tail(&mut out, &other.into_bytes(), *max_bytes);
            }
            (
                TaskOutput::File {
                    path, max_bytes, ..
                },
                chunk,
            ) => {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = f.write_all(&redacting.push(&chunk.into_bytes()));
                }
                if last_trim.elapsed() >= Duration::from_secs(1) {
                    last_trim = Instant::now();
                    crate::task::trim_running_output(path, *max_bytes);
                }
            }
        }
    }
    if let Some(f) = file.as_mut() {
        use std::io::Write;
        let _ = f.write_all(&redacting.finish());
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

fn keep_tail(kept: &mut Vec<u8>, more: &[u8], max: usize) {
    kept.extend_from_slice(more);
    if kept.len() > max {
        kept.drain(..kept.len() - max);
    }
}

impl Driver for Engine {
    /// The container's id: a replica keeps its container across restarts.
    type Running = String;
    type Exited = String;

    async fn wait_exit(&self, container: &mut String) -> String {
        describe_exit(wait_exit(&self.docker, container).await)
    }

    async fn exited(&self, _spec: &ReplicaSpec, container: String, _reason: &str) -> String {
        container
    }

    async fn restart(
        &self,
        _spec: &ReplicaSpec,
        container: &String,
    ) -> Result<Started<String>, String> {
        self.docker
            .start_container(container, None)
            .await
            .map_err(|e| engine_message(&e))?;
        Ok(Started {
            running: container.clone(),
            instance: Instance::Container(container.clone()),
            pid: self.pid(container).await,
        })
    }

    async fn stop(&self, spec: &ReplicaSpec, container: String) -> Done {
        let grace = i32::try_from(secs(spec.stop_timeout)).unwrap_or(i32::MAX);
        self.remove(&container, grace).await;
        Done::Stopped
    }

    async fn discard_exited(&self, _spec: &ReplicaSpec, container: String) {
        self.remove(&container, 1).await;
    }

    /// What the container's latest run wrote (a restart reuses the container, so lines
    /// from before its latest start are left out), from the Engine API, redacted as read.
    async fn last_output(&self, spec: &ReplicaSpec, container: &String) -> Vec<String> {
        let started = match self.docker.inspect_container(container, None).await {
            Ok(inspect) => inspect
                .state
                .and_then(|state| state.started_at)
                .and_then(|at| parse_timestamp(&at)),
            Err(_) => None,
        };
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .timestamps(true)
            .tail(&LAST_OUTPUT_TAIL.to_string())
            .build();
        let mut logs = self.docker.logs(container, Some(options));
        let mut raw = Vec::new();
        let read = async {
            while let Some(Ok(chunk)) = logs.next().await {
                raw.extend_from_slice(&chunk.into_bytes());
                if raw.len() > LAST_OUTPUT_READ {
                    break;
                }
            }
        };
        // An engine that does not answer leaves the diagnosis without lines, never stuck.
        let _ = tokio::time::timeout(LAST_OUTPUT_WAIT, read).await;
        let redactor = crate::redact::Redactor::new(&spec.redact);
        let text = String::from_utf8_lossy(&raw);
        let lines: Vec<String> = text
            .lines()
            .filter_map(|line| {
                // Each line is `<RFC 3339 time> <text>`.
                let (at, text) = line.split_once(' ').unwrap_or((line, ""));
                match (started, parse_timestamp(at)) {
                    (Some(started), Some(at)) if at < started => None,
                    _ => Some(redactor.redact(text)),
                }
            })
            .collect();
        crate::logs::last_lines(lines.iter().map(String::as_str).collect())
    }

    fn endpoint(&self, spec: &ReplicaSpec) -> SocketAddr {
        // Host network: the container's own port; bridge: published on the same host port.
        SocketAddr::from((Ipv4Addr::LOCALHOST, spec.port))
    }
}

/// How long the engine gets to answer one container's stats.
const STATS_WAIT: Duration = Duration::from_secs(2);

impl DockerRuntime {
    /// One-shot stats of each replica's container, one after the other (each a few ms).
    async fn usage_of_replicas(&self) -> std::collections::BTreeMap<String, Usage> {
        let containers: Vec<(String, String)> = self
            .sup
            .replicas()
            .iter()
            .filter_map(|(id, r)| match &r.shared().instance {
                Some(Instance::Container(c)) => Some((id.clone(), c.clone())),
                _ => None,
            })
            .collect();
        let options = StatsOptionsBuilder::new()
            .stream(false)
            .one_shot(true)
            .build();
        let mut out = std::collections::BTreeMap::new();
        for (id, container) in containers {
            let mut stats = self
                .sup
                .driver
                .docker
                .stats(&container, Some(options.clone()));
            match tokio::time::timeout(STATS_WAIT, stats.next()).await {
                Ok(Some(Ok(stats))) => {
                    if let Some(usage) = usage_of(&stats) {
                        out.insert(id, usage);
                    }
                }
                Ok(Some(Err(e))) => tracing::debug!(replica = %id, error = %e, "no stats"),
                Ok(None) | Err(_) => tracing::debug!(replica = %id, "no stats in time"),
            }
        }
        out
    }
}

/// A container's CPU time and its memory minus the page cache it could give back (as
/// `docker stats` shows it: `inactive_file` on cgroup v2, `total_inactive_file` on v1).
fn usage_of(stats: &ContainerStatsResponse) -> Option<Usage> {
    let cpu_ns = stats.cpu_stats.as_ref()?.cpu_usage.as_ref()?.total_usage?;
    let memory = stats.memory_stats.as_ref()?;
    let cache = memory
        .stats
        .as_ref()
        .and_then(|s| {
            s.get("inactive_file")
                .or_else(|| s.get("total_inactive_file"))
        })
        .copied()
        .unwrap_or(0);
    Some(Usage {
        cpu_ns,
        memory_bytes: memory.usage?.saturating_sub(cache),
    })
}

impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.sup.subscribe()
    }

    fn start(&self, spec: ReplicaSpec) -> BoxFuture<'_, Result<Instance, RuntimeError>> {
        Box::pin(self.start_replica(spec))
    }

    fn adopt(
        &self,
        spec: ReplicaSpec,
        _recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        Box::pin(self.adopt_replica(spec))
    }

    fn discard<'a>(&'a self, id: &'a str, _: Option<ProcessIdentity>) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let found = match self.sup.driver.find(&[(LABEL_REPLICA, id)]).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(replica = id, error = %e, "cannot look for its containers");
                    return 0;
                }
            };
            for container in found.iter().filter_map(|c| c.id.as_deref()) {
                self.sup.driver.remove(container, DISCARD_GRACE_SECS).await;
            }
            found.len()
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.sup.stop(id))
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.sup.stop_all())
    }

    fn remove_all(&self) -> BoxFuture<'_, Result<usize, RuntimeError>> {
        Box::pin(async move {
            self.sup.stop_all().await;
            DockerRuntime::remove_all(self).await
        })
    }

    fn discard_task<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        Box::pin(DockerRuntime::discard_task(self, name))
    }

    fn remove_orphans<'a>(
        &'a self,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        Box::pin(DockerRuntime::remove_orphans(self, keep))
    }

    fn adopt_task<'a>(
        &'a self,
        name: &'a str,
        timeout: Duration,
        output: TaskOutput,
    ) -> BoxFuture<'a, Result<Option<TaskOutcome>, RuntimeError>> {
        Box::pin(DockerRuntime::adopt_task(self, name, timeout, output))
    }

    fn usage(&self) -> BoxFuture<'_, std::collections::BTreeMap<String, Usage>> {
        Box::pin(self.usage_of_replicas())
    }

    fn status(&self, id: &str) -> Option<ReplicaStatus> {
        self.sup.status(id)
    }

    fn list(&self) -> Vec<ReplicaStatus> {
        self.sup.list()
    }

    fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.sup.endpoint(id)
    }

    fn logs(&self, id: &str, tail: usize, follow: bool) -> LogLines {
        let (tx, rx) = mpsc::channel(256);
        let sup = self.sup.clone();
        let id = id.to_string();
        let replica = sup.get(&id);
        let known = replica
            .as_ref()
            .and_then(|replica| match &replica.shared().instance {
                Some(Instance::Container(container)) => Some(container.clone()),
                _ => None,
            });
        // The engine keeps the raw output (root-only, in its own storage): redacted as read.
        let redactor = replica
            .map(|replica| crate::redact::Redactor::new(&replica.spec.redact))
            .unwrap_or_default();
        tokio::spawn(async move {
            let container = match known {
                Some(container) => container,
                None => match sup.driver.find(&[(LABEL_REPLICA, &id)]).await {
                    Ok(found) => match found.into_iter().find_map(|c| c.id) {
                        Some(container) => container,
                        None => return,
                    },
                    Err(_) => return,
                },
            };
            let options = LogsOptionsBuilder::new()
                .follow(follow)
                .stdout(true)
                .stderr(true)
                .tail(&tail.to_string())
                .build();
            let mut logs = sup.driver.docker.logs(&container, Some(options));
            let mut partial = Vec::new();
            loop {
                let chunk = tokio::select! {
                    () = tx.closed() => return,
                    chunk = logs.next() => chunk,
                };
                let Some(Ok(chunk)) = chunk else { break };
                partial.extend_from_slice(&chunk.into_bytes());
                while let Some(newline) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=newline).collect();
                    let text = redactor.redact(&String::from_utf8_lossy(&line[..line.len() - 1]));
                    if tx.send(text).await.is_err() {
                        return;
                    }
                }
            }
            if !partial.is_empty() {
                let _ = tx
                    .send(redactor.redact(&String::from_utf8_lossy(&partial)))
                    .await;
            }
        });
        rx
    }

    fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> BoxFuture<'_, Result<TaskOutcome, RuntimeError>> {
        Box::pin(self.task(spec, started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_give_cpu_time_and_memory_without_the_cache() {
        // one-shot stats as Docker 20.10 answers them on cgroup v2 (shortened)
        let v2: ContainerStatsResponse = serde_json::from_str(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":2500000000},"online_cpus":2},
                "precpu_stats":{"cpu_usage":{"total_usage":0}},
                "memory_stats":{"usage":104857600,"limit":268435456,
                                "stats":{"inactive_file":4194304,"anon":96468992}}}"#,
        )
        .unwrap();
        assert_eq!(
            usage_of(&v2),
            Some(Usage {
                cpu_ns: 2_500_000_000,
                memory_bytes: 96 << 20
            })
        );
        // cgroup v1 names the cache `total_inactive_file`
        let v1: ContainerStatsResponse = serde_json::from_str(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":7}},
                "memory_stats":{"usage":1000,"stats":{"total_inactive_file":400}}}"#,
        )
        .unwrap();
        assert_eq!(
            usage_of(&v1),
            Some(Usage {
                cpu_ns: 7,
                memory_bytes: 600
            })
        );
        // a stopped container's stats are empty: not measured
        let stopped: ContainerStatsResponse =
            serde_json::from_str(r#"{"cpu_stats":{},"memory_stats":{}}"#).unwrap();
        assert_eq!(usage_of(&stopped), None);
    }

    #[test]
    fn engine_times_parse_and_order() {
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some((0, 0)));
        assert_eq!(
            parse_timestamp("2026-12-06T10:00:00.5Z"),
            Some((1_796_551_200, 500_000_000))
        );
        assert_eq!(
            parse_timestamp("2024-02-29T23:59:59.000000001Z"),
            Some((1_709_251_199, 1))
        );
        // Go trims trailing zeros: fewer digits still order right.
        assert!(
            parse_timestamp("2026-12-06T10:00:00.12Z")
                > parse_timestamp("2026-12-06T10:00:00.119999999Z")
        );
        assert_eq!(
            parse_timestamp("0001-01-01T00:00:00Z").map(|t| t.0),
            Some(-62_135_596_800)
        );
        for bad in [
            "",
            "2026-12-06",
            "2026-13-01T00:00:00Z",
            "2026-12-06T10:00:00.1234567890Z",
            "x",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        assert_eq!(split_image("shop/api:1.2.0"), ("shop/api", "1.2.0"));
        assert_eq!(
            split_image("registry.example.com:5000/shop/api:2.0"),
            ("registry.example.com:5000/shop/api", "2.0")
        );
        assert_eq!(
            split_image("registry.example.com:5000/shop/api"),
            ("registry.example.com:5000/shop/api", "latest")
        );
        assert_eq!(split_image("api@sha256:abc"), ("api@sha256:abc", ""));
        assert_eq!(
            registry_of("registry.example.com/shop/api:1"),
            Some("registry.example.com")
        );
        assert_eq!(registry_of("shop/api:1"), None);
        assert_eq!(registry_of("api:1"), None);
    }

    #[test]
    fn root_is_refused_unless_allowed() {
        let spec = ContainerSpec {
            image: "shop/api:1".into(),
            ..ContainerSpec::default()
        };
        for image_user in [None, Some("0"), Some("root"), Some("0:0")] {
            let err = effective_user("api", &spec, image_user).unwrap_err();
            assert!(err.to_string().contains("root"), "{err}");
        }
        assert_eq!(effective_user("api", &spec, Some("app")).unwrap(), "app");
        let explicit = ContainerSpec {
            user: Some("65534:65534".into()),
            ..spec.clone()
        };
        assert_eq!(
            effective_user("api", &explicit, Some("0")).unwrap(),
            "65534:65534"
        );
        let allowed = ContainerSpec {
            allow_root: true,
            ..spec
        };
        assert_eq!(effective_user("api", &allowed, None).unwrap(), "0");
    }

    fn engine(network: Network) -> Engine {
        Engine {
            // Never dialled: these tests only build requests.
            docker: Docker::connect_with_unix("/dev/null", 5, bollard::API_DEFAULT_VERSION)
                .unwrap(),
            owner: "/data".into(),
            prefix: short_hash("/data"),
            network,
            tasks: AtomicU64::new(0),
        }
    }

    fn replica_spec(port: u16) -> ReplicaSpec {
        ReplicaSpec {
            id: "shop.prod.api.1.0.0.a".into(),
            app: "shop".into(),
            env: "prod".into(),
            service: "api".into(),
            version: "1.0.0".into(),
            argv: vec!["serve".into(), "--port=${PORT}".into()],
            cwd: None,
            env_vars: Default::default(),
            run_as: None,
            redact: Vec::new(),
            port,
            health: crate::HealthSpec::default(),
            stop_timeout: Duration::from_secs(7),
            container: None,
        }
    }

    /// Bridge mode can't run on the CI engine (`--bridge=none`): the configuration it
    /// generates is checked here instead.
    #[tokio::test]
    async fn behind_a_bridge_the_port_is_published_on_loopback_and_the_app_listens_on_all_addresses()
     {
        let spec = replica_spec(18_080);
        let container = ContainerSpec {
            image: "shop/api:1.0.0".into(),
            ..ContainerSpec::default()
        };
        let bridge = engine(Network::Bridge);
        let body = bridge.replica_body(&spec, &container, "65534".into());
        let env = body.env.clone().unwrap();
        assert!(env.contains(&"HOST=0.0.0.0".to_string()), "{env:?}");
        assert!(env.contains(&"PORT=18080".to_string()), "{env:?}");
        assert_eq!(body.exposed_ports, Some(vec!["18080/tcp".to_string()]));
        assert_eq!(
            body.cmd,
            Some(vec!["serve".to_string(), "--port=18080".to_string()])
        );
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode, None, "the engine's default bridge");
        let bindings = host.port_bindings.unwrap();
        let published = bindings["18080/tcp"].as_ref().unwrap();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(published[0].host_port.as_deref(), Some("18080"));
        // The proxy and health checks go to the published host port.
        assert_eq!(
            bridge.endpoint(&spec),
            SocketAddr::from(([127, 0, 0, 1], 18_080))
        );

        let shared = engine(Network::Host);
        let body = shared.replica_body(&spec, &container, "65534".into());
        assert!(body.env.unwrap().contains(&"HOST=127.0.0.1".to_string()));
        assert_eq!(body.exposed_ports, None);
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.port_bindings, None);
        assert_eq!(
            shared.endpoint(&spec),
            SocketAddr::from(([127, 0, 0, 1], 18_080))
        );
    }

    #[test]
    fn container_names_are_engine_safe() {
        assert_eq!(
            container_name("shop.prod.api.1.2.3_b.0a1b2c"),
            "shop.prod.api.1.2.3_b.0a1b2c"
        );
        assert_eq!(container_name("hook migrate/1"), "hook_migrate_1");
        assert_eq!(short_hash("/data/a").len(), 8);
        assert_ne!(short_hash("/data/a"), short_hash("/data/b"));
    }
}
