//! The controller's fast test tier: a fake runtime, a fake data plane and a manual clock, and
//! [`Sim`], a controller built on them over a real store in a temporary directory.
//!
//! A test applies a manifest, asks for a deployment through the command API, and drives the
//! controller pass by pass ([`Sim::pass`], [`Sim::until`]): no process, no socket, no sleep.
//! Replicas behave as their version is told to ([`Behaviour`]); tasks (hooks, command
//! analyses) end as a script says ([`FakeRuntime::script_tasks`]); time moves only when the
//! test advances the clock ([`Sim::advance`]). [`Sim::crash`] drops the controller and starts
//! a new one from the store, as `kill -9` of the server would: the fake's replicas keep
//! running and are adopted again by id.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::model::{DeploymentKind, DeploymentState, ReplicaState};
use ferry_proxy::routes::RouteTable;
use ferry_proxy::stats::{EndpointUsage, StatsSnapshot};
use ferry_runtime::{
    BoxFuture, Instance, LogLines, ProcessIdentity, ReplicaSpec, ReplicaStatus, Runtime,
    RuntimeError, RuntimeEvent, TaskEnd, TaskOutcome, TaskSpec,
};
use ferry_store::{DeploymentRecord, NewManifest, Store};
use tokio::sync::{broadcast, oneshot};
use tracing::Instrument;

use super::Controller;
use crate::clock::Clock;
use crate::error::ServerError;
use crate::lock;
use crate::proxy_link::DataPlane;
use crate::runtimes::Runtimes;

/// A clock that moves only when told to.
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(start_ms))
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// How the replicas of a version behave once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// Healthy at the next pass.
    #[default]
    Healthy,
    /// Runs, never passes a health check.
    NeverHealthy,
    /// Exits at every pass and is restarted (a crash loop).
    Crash,
}

/// One replica "running" on the fake.
#[derive(Debug, Clone)]
struct FakeReplica {
    spec: ReplicaSpec,
    status: ReplicaStatus,
    /// Supervised by the current server (a crash forgets it until it is adopted again).
    supervised: bool,
}

type TaskScript = Box<dyn Fn(&TaskSpec) -> TaskEnd + Send + Sync>;

#[derive(Default)]
struct Replicas {
    /// What runs, supervised or not, by replica id.
    running: BTreeMap<String, FakeReplica>,
    behaviour: HashMap<String, Behaviour>,
    /// Every start, in order (replica ids).
    starts: Vec<String>,
    /// Every task run, in order.
    tasks: Vec<TaskSpec>,
    script: Option<TaskScript>,
    /// Starts fail as an unreachable engine would.
    engine_down: bool,
    /// The address replicas answer on (default 127.0.0.1), as a container runtime may
    /// report another one.
    host: Option<IpAddr>,
}

/// What outlives a server: the replicas that run, the tasks that ran, and the crash gate.
#[derive(Default)]
pub struct World {
    replicas: Mutex<Replicas>,
    /// The server incarnation whose calls take effect; an older one is dead (its calls
    /// never return, as if its process were gone).
    incarnation: AtomicU64,
    /// Effects so far (starts, stops, discards, tasks, route pushes).
    effects: AtomicU64,
    /// Crash right after this effect (see [`Sim::crash_after`]).
    crash_at: AtomicU64,
    crashed: AtomicBool,
}

impl World {
    /// Called before an effect: a dead incarnation never acts again.
    async fn alive(&self, incarnation: u64) {
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            std::future::pending::<()>().await;
        }
    }

    /// Called before a read: a dead incarnation's task ends here (unwinding without the
    /// panic hook, so nothing is printed; tokio ends just that task), never acting on what
    /// the next server does.
    fn alive_now(&self, incarnation: u64) {
        if self.incarnation.load(Ordering::SeqCst) != incarnation {
            std::panic::resume_unwind(Box::new("this server is dead"));
        }
    }

    /// Called after an effect: at the crash point, the server dies here.
    async fn effect_done(&self) {
        let n = self.effects.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.crash_at.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
            std::future::pending::<()>().await;
        }
    }

    pub fn effects(&self) -> u64 {
        self.effects.load(Ordering::SeqCst)
    }

    /// How replicas of `version` behave from now on (default: healthy).
    pub fn set_behaviour(&self, version: &str, behaviour: Behaviour) {
        lock(&self.replicas)
            .behaviour
            .insert(version.to_string(), behaviour);
    }

    /// Makes every start fail as an unreachable engine would (or work again).
    pub fn set_engine_down(&self, down: bool) {
        lock(&self.replicas).engine_down = down;
    }

    /// Replicas answer on `host` from now on (what [`Runtime::endpoint`] reports).
    pub fn set_host(&self, host: IpAddr) {
        lock(&self.replicas).host = Some(host);
    }

    /// Where a replica listening on `port` answers.
    pub fn endpoint(&self, port: u16) -> SocketAddr {
        let host = lock(&self.replicas).host;
        SocketAddr::new(host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)), port)
    }

    /// How tasks end (default: exit 0).
    pub fn script_tasks(&self, script: impl Fn(&TaskSpec) -> TaskEnd + Send + Sync + 'static) {
        lock(&self.replicas).script = Some(Box::new(script));
    }

    /// The tasks run so far: (name, the deployment it ran for, if any).
    pub fn tasks(&self) -> Vec<(String, Option<String>)> {
        lock(&self.replicas)
            .tasks
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.env_vars.get("FERRY_DEPLOYMENT_ID").cloned(),
                )
            })
            .collect()
    }

    /// The tasks run so far, by name.
    pub fn task_names(&self) -> Vec<String> {
        lock(&self.replicas)
            .tasks
            .iter()
            .map(|t| t.name.clone())
            .collect()
    }

    /// Replica ids started so far (every start, also of replicas gone since).
    pub fn starts(&self) -> Vec<String> {
        lock(&self.replicas).starts.clone()
    }

    /// What runs now: (id, version), supervised or not.
    pub fn running(&self) -> Vec<(String, String)> {
        lock(&self.replicas)
            .running
            .values()
            .map(|r| (r.spec.id.clone(), r.spec.version.clone()))
            .collect()
    }
}

/// One server's view of the [`World`]: an in-memory runtime whose replicas' health moves
/// when [`FakeRuntime::progress`] is called (once per [`Sim::pass`]).
pub struct FakeRuntime {
    world: Arc<World>,
    incarnation: u64,
    pub events: broadcast::Sender<RuntimeEvent>,
}

impl FakeRuntime {
    fn new(world: Arc<World>) -> FakeRuntime {
        let incarnation = world.incarnation.fetch_add(1, Ordering::SeqCst) + 1;
        // A new server supervises nothing until it adopts.
        for replica in lock(&world.replicas).running.values_mut() {
            replica.supervised = false;
        }
        FakeRuntime {
            world,
            incarnation,
            events: broadcast::channel(4096).0,
        }
    }

    /// One step of the replicas' lives: starting ones of a healthy version pass their
    /// health check, crashing ones exit and come back.
    pub fn progress(&self) {
        let mut replicas = lock(&self.world.replicas);
        let behaviour = replicas.behaviour.clone();
        for replica in replicas.running.values_mut().filter(|r| r.supervised) {
            let id = replica.spec.id.clone();
            match behaviour
                .get(&replica.spec.version)
                .copied()
                .unwrap_or_default()
            {
                Behaviour::Healthy if replica.status.state == ReplicaState::Starting => {
                    replica.status.state = ReplicaState::Healthy;
                    replica.status.ever_healthy = true;
                    let _ = self.events.send(RuntimeEvent::Healthy { id });
                }
                Behaviour::Crash => {
                    replica.status.restarts += 1;
                    replica.status.last_exit = Some("exit code 1".into());
                    replica.status.last_output = vec!["boom".into()];
                    let _ = self.events.send(RuntimeEvent::Exited {
                        id,
                        reason: "exit code 1".into(),
                        will_restart: true,
                    });
                }
                _ => {}
            }
        }
    }
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    fn start(&self, spec: ReplicaSpec) -> BoxFuture<'_, Result<Instance, RuntimeError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            let id = spec.id.clone();
            {
                let mut replicas = lock(&self.world.replicas);
                if replicas.engine_down {
                    return Err(RuntimeError::Engine {
                        what: format!("starting {id}"),
                        source: "connection refused".into(),
                    });
                }
                if replicas.running.contains_key(&id) {
                    return Err(RuntimeError::AlreadySupervised { id, pid: None });
                }
                // Nothing listens on a fake replica's port, so the port the controller
                // found free may be one a running replica has: fail as a real bind would.
                if replicas.running.values().any(|r| r.spec.port == spec.port) {
                    return Err(RuntimeError::FreePort(std::io::Error::from(
                        std::io::ErrorKind::AddrInUse,
                    )));
                }
                replicas.starts.push(id.clone());
                replicas.running.insert(
                    id.clone(),
                    FakeReplica {
                        status: status(&id),
                        spec,
                        supervised: true,
                    },
                );
            }
            let instance = Instance::Container(format!("fake-{id}"));
            let _ = self.events.send(RuntimeEvent::Started {
                id,
                instance: instance.clone(),
            });
            self.world.effect_done().await;
            Ok(instance)
        })
    }

    fn adopt(
        &self,
        spec: ReplicaSpec,
        _recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'_, Result<bool, RuntimeError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            Ok(match lock(&self.world.replicas).running.get_mut(&spec.id) {
                Some(replica) => {
                    replica.supervised = true;
                    true
                }
                None => false,
            })
        })
    }

    fn discard<'a>(
        &'a self,
        id: &'a str,
        _recorded: Option<ProcessIdentity>,
    ) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            let gone = lock(&self.world.replicas).running.remove(id).is_some();
            self.world.effect_done().await;
            usize::from(gone)
        })
    }

    fn stop<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            if lock(&self.world.replicas).running.remove(id).is_some() {
                let _ = self
                    .events
                    .send(RuntimeEvent::Stopped { id: id.to_string() });
            }
            self.world.effect_done().await;
            Ok(())
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            lock(&self.world.replicas)
                .running
                .retain(|_, r| !r.supervised);
        })
    }

    fn remove_orphans<'a>(
        &'a self,
        keep: &'a [String],
    ) -> BoxFuture<'a, Result<usize, RuntimeError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            let mut replicas = lock(&self.world.replicas);
            let before = replicas.running.len();
            replicas
                .running
                .retain(|id, r| r.supervised || keep.contains(id));
            Ok(before - replicas.running.len())
        })
    }

    fn status(&self, id: &str) -> Option<ReplicaStatus> {
        self.world.alive_now(self.incarnation);
        lock(&self.world.replicas)
            .running
            .get(id)
            .filter(|r| r.supervised)
            .map(|r| r.status.clone())
    }

    fn list(&self) -> Vec<ReplicaStatus> {
        self.world.alive_now(self.incarnation);
        lock(&self.world.replicas)
            .running
            .values()
            .filter(|r| r.supervised)
            .map(|r| r.status.clone())
            .collect()
    }

    fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.world.alive_now(self.incarnation);
        let port = lock(&self.world.replicas).running.get(id)?.spec.port;
        Some(self.world.endpoint(port))
    }

    fn logs(&self, _id: &str, _tail: usize, _follow: bool) -> LogLines {
        tokio::sync::mpsc::channel(1).1
    }

    fn run_task(
        &self,
        spec: TaskSpec,
        started: Option<oneshot::Sender<Instance>>,
    ) -> BoxFuture<'_, Result<TaskOutcome, RuntimeError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            if let Some(started) = started {
                let _ = started.send(Instance::Container(format!("fake-{}", spec.name)));
            }
            let end = {
                let mut replicas = lock(&self.world.replicas);
                let end = replicas
                    .script
                    .as_ref()
                    .map_or(TaskEnd::Exited(0), |script| script(&spec));
                replicas.tasks.push(spec);
                end
            };
            self.world.effect_done().await;
            Ok(TaskOutcome {
                end,
                stdout: String::new(),
                stderr: if end.success() {
                    String::new()
                } else {
                    "scripted failure".into()
                },
                took: Duration::from_millis(1),
            })
        })
    }
}

fn status(id: &str) -> ReplicaStatus {
    ReplicaStatus {
        id: id.to_string(),
        state: ReplicaState::Starting,
        pid: None,
        restarts: 0,
        ever_healthy: false,
        last_exit: None,
        last_output: Vec::new(),
        last_probe: None,
    }
}

/// The proxy's state, which outlives a server: the route tables it accepted, requests in
/// flight.
pub struct Proxy {
    clock: Arc<ManualClock>,
    tables: Mutex<Vec<RouteTable>>,
    in_flight: Mutex<HashMap<SocketAddr, u64>>,
}

impl Proxy {
    pub fn last(&self) -> Option<RouteTable> {
        lock(&self.tables).last().cloned()
    }

    /// Requests in flight to `addr` (they hold its drain).
    pub fn set_in_flight(&self, addr: SocketAddr, n: u64) {
        lock(&self.in_flight).insert(addr, n);
    }

    /// The weight (basis points) per version of `service` on `listener` (`app/env`), in the
    /// last table.
    pub fn weights(&self, listener: &str, service: &str) -> BTreeMap<String, u32> {
        weights(self.last().as_ref(), listener, service)
    }
}

/// The weight (basis points) per version of `service` on `listener` in `table`.
pub fn weights(table: Option<&RouteTable>, listener: &str, service: &str) -> BTreeMap<String, u32> {
    table
        .and_then(|t| t.listeners.iter().find(|l| l.id == listener))
        .and_then(|l| l.routes.iter().find(|r| r.service == service))
        .map(|r| {
            r.backends
                .iter()
                .map(|g| (g.version.clone(), g.weight))
                .collect()
        })
        .unwrap_or_default()
}

/// One server's link to the fake [`Proxy`]: records the route tables it is given and reports
/// requests in flight as the test sets them.
pub struct FakeDataPlane {
    proxy: Arc<Proxy>,
    world: Arc<World>,
    incarnation: u64,
}

impl DataPlane for FakeDataPlane {
    fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn acknowledged(&self) -> Option<RouteTable> {
        self.world.alive_now(self.incarnation);
        self.proxy.last()
    }

    fn push(&self, mut table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            {
                let mut tables = lock(&self.proxy.tables);
                if tables
                    .last()
                    .is_some_and(|last| last.listeners == table.listeners)
                {
                    return Ok(false);
                }
                table.generation = tables.len() as u64 + 1;
                tables.push(table);
            }
            self.world.effect_done().await;
            Ok(true)
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>> {
        Box::pin(async move {
            Ok(StatsSnapshot {
                started_at_ms: 0,
                taken_at_ms: self.proxy.clock.now_ms(),
                generation: lock(&self.proxy.tables).len() as u64,
                ..Default::default()
            })
        })
    }

    fn endpoint_usage(
        &self,
        addr: SocketAddr,
    ) -> BoxFuture<'_, Result<EndpointUsage, ServerError>> {
        Box::pin(async move {
            self.world.alive(self.incarnation).await;
            Ok(self.proxy.usage(addr))
        })
    }

    fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>> {
        Box::pin(async { Ok(String::new()) })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Proxy {
    /// Listed in the current table (a fake request never holds an older one), and in flight.
    fn usage(&self, addr: SocketAddr) -> EndpointUsage {
        let listed = self.last().is_some_and(|t| {
            t.listeners.iter().any(|l| {
                l.routes
                    .iter()
                    .any(|r| r.backends.iter().any(|g| g.endpoints.contains(&addr)))
            })
        });
        EndpointUsage {
            addr,
            listed: u64::from(listed),
            in_flight: lock(&self.in_flight).get(&addr).copied().unwrap_or(0),
        }
    }
}

/// The most passes [`Sim::until`] makes before it gives up.
pub const MAX_PASSES: usize = 300;

/// A controller on the fakes, over a real SQLite store in a temporary directory.
pub struct Sim {
    pub dir: tempfile::TempDir,
    pub store: Store,
    pub world: Arc<World>,
    pub proxy: Arc<Proxy>,
    pub clock: Arc<ManualClock>,
    pub controller: Arc<Controller>,
    /// The current server's runtime (its events, its view of the world).
    pub runtime: Arc<FakeRuntime>,
    events: broadcast::Receiver<RuntimeEvent>,
    /// How many times the controller was dropped and built again.
    pub crashes: usize,
}

/// 2026-12-06T10:00:00Z: tests start at a fixed moment.
const START_MS: i64 = 1_796_551_200_000;

impl Sim {
    pub async fn new(yaml: &str) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .expect("store");
        let clock = Arc::new(ManualClock::new(START_MS));
        let world = Arc::new(World::default());
        let proxy = Arc::new(Proxy {
            clock: clock.clone(),
            tables: Mutex::new(Vec::new()),
            in_flight: Mutex::new(HashMap::new()),
        });
        let (controller, runtime, events) = build(&dir, &store, &world, &proxy, &clock).await;
        let sim = Sim {
            dir,
            store,
            world,
            proxy,
            clock,
            controller,
            runtime,
            events,
            crashes: 0,
        };
        sim.apply(yaml).await;
        sim
    }

    /// Applies a manifest (as `ferry apply` would store it).
    pub async fn apply(&self, yaml: &str) {
        let manifest = ferry_core::manifest::parse(yaml, "ferry.yaml")
            .unwrap_or_else(|e| panic!("manifest: {e:?}"));
        self.store
            .apply_manifest(NewManifest {
                app: manifest.app.clone(),
                yaml: yaml.to_string(),
                manifest_json: serde_json::to_string(&manifest).expect("json"),
                base_dir: Some(self.dir.path().display().to_string()),
                applied_by: "user:admin".into(),
                now_ms: self.clock.now_ms(),
            })
            .await
            .expect("apply");
    }

    /// Asks for a deployment, as `ferry deploy` does.
    pub async fn deploy(&self, app: &str, env: &str, version: &str) -> i64 {
        self.controller
            .request_deployment(app, env, version, DeploymentKind::Deploy, "user:admin")
            .await
            .unwrap_or_else(|e| panic!("deploy {version}: {e}"))
            .id
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    /// The server dies right after its `n`-th effect from now (0: never).
    pub fn crash_after(&self, n: u64) {
        let at = if n == 0 { 0 } else { self.world.effects() + n };
        self.world.crash_at.store(at, Ordering::SeqCst);
    }

    /// One pass of the loop: the replicas move on, the controller records their news, then
    /// decides and acts; stop tasks that can finish are awaited. Returns false when the
    /// server died during the pass (see [`Sim::crash_after`]): a new one then took over.
    pub async fn pass(&mut self) -> bool {
        self.runtime.progress();
        while let Ok(event) = self.events.try_recv() {
            self.controller.on_runtime_event(event).await;
        }
        let world = self.world.clone();
        let died = async move {
            while !world.crashed.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
        };
        tokio::select! {
            biased;
            result = self.controller.reconcile_all() => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "pass failed");
                }
            }
            () = died => {}
        }
        // The test's own reads while it waits are no part of the pass (`pass_cost`).
        self.settle_stops()
            .instrument(super::pass_cost::uncounted())
            .await;
        if self.world.crashed.swap(false, Ordering::SeqCst) {
            self.crash().await;
            return false;
        }
        true
    }

    /// Waits (bounded) for the stop tasks of drained replicas to delete their rows.
    async fn settle_stops(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if self.world.crashed.load(Ordering::SeqCst) {
                return;
            }
            let stopping = lock(&self.controller.stopping).clone();
            let rows = self.store.list_replicas(None, None).await.expect("rows");
            let waiting = rows
                .iter()
                .filter(|r| stopping.contains(&r.id))
                .any(|r| self.proxy.usage(self.world.endpoint(r.port)).drained());
            if !waiting {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stop tasks did not finish"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Passes until `done` holds for the deployment; panics after [`MAX_PASSES`], with its
    /// timeline.
    pub async fn until(
        &mut self,
        id: i64,
        what: &str,
        done: impl Fn(&DeploymentRecord) -> bool,
    ) -> DeploymentRecord {
        for _ in 0..MAX_PASSES {
            self.pass().await;
            let deployment = self.deployment(id).await;
            if done(&deployment) {
                return deployment;
            }
        }
        panic!(
            "deployment #{id} never {what}; it is {}:\n{}",
            self.deployment(id).await.state,
            self.timeline(id).await
        );
    }

    /// Passes until the deployment is in `state`.
    pub async fn until_state(&mut self, id: i64, state: DeploymentState) -> DeploymentRecord {
        self.until(id, &format!("became {state}"), |d| d.state == state)
            .await
    }

    pub async fn deployment(&self, id: i64) -> DeploymentRecord {
        self.store
            .get_deployment(id)
            .await
            .expect("read")
            .expect("deployment")
    }

    /// The deployment's timeline, one line per event.
    pub async fn timeline(&self, id: i64) -> String {
        self.store
            .events_after(id, 0, 10_000)
            .await
            .expect("events")
            .iter()
            .map(|e| format!("[{}] {}", e.kind, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// (version, healthy?) of every replica row of app/env.
    pub async fn rows(&self, app: &str, env: &str) -> Vec<(String, bool)> {
        self.store
            .list_replicas(Some(app), Some(env))
            .await
            .expect("rows")
            .iter()
            .map(|r| {
                (
                    r.version.clone(),
                    self.runtime
                        .status(&r.id)
                        .is_some_and(|s| s.state == ReplicaState::Healthy),
                )
            })
            .collect()
    }

    /// Kills the controller (`kill -9`: nothing is said, nothing is cleaned up; its tasks
    /// never act again) and starts a new one from the store, which re-adopts what still
    /// runs.
    pub async fn crash(&mut self) {
        let (controller, runtime, events) = build(
            &self.dir,
            &self.store,
            &self.world,
            &self.proxy,
            &self.clock,
        )
        .await;
        self.controller = controller;
        self.runtime = runtime;
        self.events = events;
        self.crashes += 1;
        self.controller.recover().await.expect("recover");
    }
}

async fn build(
    dir: &tempfile::TempDir,
    store: &Store,
    world: &Arc<World>,
    proxy: &Arc<Proxy>,
    clock: &Arc<ManualClock>,
) -> (
    Arc<Controller>,
    Arc<FakeRuntime>,
    broadcast::Receiver<RuntimeEvent>,
) {
    let secrets = crate::secrets::Secrets::open(store.clone(), dir.path(), None)
        .await
        .expect("secrets");
    let runtime = Arc::new(FakeRuntime::new(world.clone()));
    let data_plane = Arc::new(FakeDataPlane {
        proxy: proxy.clone(),
        world: world.clone(),
        incarnation: runtime.incarnation,
    });
    let runtimes = Runtimes::with_local(
        runtime.clone(),
        dir.path().join("logs"),
        dir.path().display().to_string(),
    );
    // Straight from the fake (not through the runtimes' forwarding task), so a pass sees
    // every event the fake sent before it.
    let events = runtime.subscribe();
    let controller = Controller::new(
        store.clone(),
        runtimes,
        data_plane,
        clock.clone(),
        secrets,
        Arc::new(crate::workload::Workloads::new(None, None)),
    );
    (controller, runtime, events)
}
