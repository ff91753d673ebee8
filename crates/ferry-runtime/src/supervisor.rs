//! The supervision core every runtime shares: the map of supervised replicas, one task per
//! replica that watches its instance, probes its health (fast until the first success, then
//! at the spec's interval; Starting/Unhealthy → Healthy → Unhealthy), restarts it with
//! exponential backoff when it exits, and stops it on request; status and list over the map.
//!
//! What differs between runtimes — how an instance is started again, how its exit is seen,
//! how it is stopped, where it answers — is a [`Driver`]: the process runtime's drives
//! process groups, the Docker runtime's drives containers, and a Kubernetes runtime would
//! drive pods.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_core::model::ReplicaState;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::runtime::Instance;
use crate::{ReplicaSpec, ReplicaStatus, RuntimeError, RuntimeEvent};

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A replica healthy this long before it exits restarts without accumulated backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);
/// Polling period before the first successful health check (capped by the interval).
const FAST_HEALTH_POLL: Duration = Duration::from_millis(50);
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(10);

/// How one runtime starts again, watches and stops the instances of its replicas.
pub(crate) trait Driver: Send + Sync + 'static {
    /// A running instance, as the supervision task holds it.
    type Running: Send + Sync + 'static;
    /// What is left of an instance that exited (what a restart starts from).
    type Exited: Send + Sync + 'static;

    /// Waits until the instance has exited; says how. Cancel safe.
    fn wait_exit<'a>(
        &'a self,
        running: &'a mut Self::Running,
    ) -> impl Future<Output = String> + Send + 'a;

    /// After an exit: clean up what the instance left and keep what a restart needs.
    fn exited<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        running: Self::Running,
        reason: &'a str,
    ) -> impl Future<Output = Self::Exited> + Send + 'a;

    /// Starts the replica again; `Err` is the reason (logged, retried with backoff).
    fn restart<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        exited: &'a Self::Exited,
    ) -> impl Future<Output = Result<Started<Self::Running>, String>> + Send + 'a;

    /// Stops a running instance for good: stop signal, the spec's grace period, then a kill.
    fn stop<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        running: Self::Running,
    ) -> impl Future<Output = Done> + Send + 'a;

    /// Removes what is left of an exited instance (stopped while waiting to restart).
    fn discard_exited<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        exited: Self::Exited,
    ) -> impl Future<Output = ()> + Send + 'a;

    /// Once a replica is stopped for good (e.g. a line in its log file).
    fn stopped(&self, _spec: &ReplicaSpec) {}

    /// The last lines an instance that just exited wrote (bounded, escaped, redacted), when
    /// the runtime can tell.
    fn last_output<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        exited: &'a Self::Exited,
    ) -> impl Future<Output = Vec<String>> + Send + 'a;

    /// Where the replica answers (health checks and the proxy).
    fn endpoint(&self, spec: &ReplicaSpec) -> SocketAddr;
}

/// A started instance: what the supervision task holds, and what it is reported as.
pub(crate) struct Started<R> {
    pub running: R,
    pub instance: Instance,
    /// Its main process on this host, when visible.
    pub pid: Option<u32>,
}

/// How a supervision task ended, for `stop` to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    Running,
    Stopped,
    /// The process (this pid) survived SIGKILL.
    Stuck(u32),
}

pub(crate) struct Replica {
    pub spec: ReplicaSpec,
    shared: Mutex<Shared>,
    stop: CancellationToken,
    done: watch::Sender<Done>,
}

#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub state: ReplicaState,
    /// The current instance (None while waiting to restart, or once stopped).
    pub instance: Option<Instance>,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub ever_healthy: bool,
    pub last_exit: Option<String>,
    /// The last lines its last instance wrote before it exited.
    pub last_output: Vec<String>,
    /// What the latest health check got while failing (None after a success).
    pub last_probe: Option<String>,
    pub healthy_since: Option<Instant>,
}

impl Replica {
    pub(crate) fn shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn status(&self) -> ReplicaStatus {
        let shared = self.shared();
        ReplicaStatus {
            id: self.spec.id.clone(),
            state: shared.state,
            pid: shared.pid,
            restarts: shared.restarts,
            ever_healthy: shared.ever_healthy,
            last_exit: shared.last_exit.clone(),
            last_output: shared.last_output.clone(),
            last_probe: shared.last_probe.clone(),
        }
    }
}

/// The replica map, the event channel and the supervision tasks of one runtime.
pub(crate) struct Supervisor<D: Driver> {
    pub driver: D,
    events: broadcast::Sender<RuntimeEvent>,
    replicas: Mutex<HashMap<String, Arc<Replica>>>,
    http: reqwest::Client,
    /// Ends every supervision task, leaving the instances running (the server goes away).
    pub detach: CancellationToken,
}

impl<D: Driver> Supervisor<D> {
    pub(crate) fn new(driver: D) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(Supervisor {
            driver,
            events,
            replicas: Mutex::new(HashMap::new()),
            http,
            detach: CancellationToken::new(),
        })
    }

    pub(crate) fn replicas(&self) -> MutexGuard<'_, HashMap<String, Arc<Replica>>> {
        self.replicas.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, id: &str) -> Option<Arc<Replica>> {
        self.replicas().get(id).cloned()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<RuntimeEvent> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: RuntimeEvent) {
        tracing::debug!(?event, "runtime event");
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// `Err(AlreadySupervised)` when `id` is supervised.
    pub(crate) fn ensure_absent(
        replicas: &HashMap<String, Arc<Replica>>,
        id: &str,
    ) -> Result<(), RuntimeError> {
        match replicas.get(id) {
            Some(existing) => Err(RuntimeError::AlreadySupervised {
                id: id.to_string(),
                pid: existing.shared().pid,
            }),
            None => Ok(()),
        }
    }

    /// Supervises `started` as replica `spec` from now on (in `replicas`, the locked map):
    /// health checks from Starting, restart on exit. With `announce` (a fresh start, not an
    /// adoption) it emits [`RuntimeEvent::Started`].
    pub(crate) fn supervise(
        self: &Arc<Self>,
        replicas: &mut HashMap<String, Arc<Replica>>,
        spec: ReplicaSpec,
        started: Started<D::Running>,
        announce: bool,
    ) {
        let replica = Arc::new(Replica {
            spec,
            shared: Mutex::new(Shared {
                state: ReplicaState::Starting,
                instance: Some(started.instance.clone()),
                pid: started.pid,
                restarts: 0,
                ever_healthy: false,
                last_exit: None,
                last_output: Vec::new(),
                last_probe: None,
                healthy_since: None,
            }),
            stop: CancellationToken::new(),
            done: watch::channel(Done::Running).0,
        });
        replicas.insert(replica.spec.id.clone(), replica.clone());
        if announce {
            self.emit(RuntimeEvent::Started {
                id: replica.spec.id.clone(),
                instance: started.instance,
            });
        }
        tokio::spawn(supervise(self.clone(), replica, started.running));
    }

    /// Stops a replica for good and forgets it; returns once its instance is gone. Unknown
    /// id: `Ok(())`.
    pub(crate) async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let Some(replica) = self.get(id) else {
            return Ok(());
        };
        replica.stop.cancel();
        let mut done = replica.done.subscribe();
        let outcome = match done.wait_for(|d| *d != Done::Running).await {
            Ok(d) => *d,
            // The supervision task ended without reporting (runtime shutting down).
            Err(_) => Done::Stopped,
        };
        {
            let mut replicas = self.replicas();
            if replicas
                .get(id)
                .is_some_and(|current| Arc::ptr_eq(current, &replica))
            {
                replicas.remove(id);
            }
        }
        match outcome {
            Done::Stuck(pid) => Err(RuntimeError::StopFailed {
                id: id.to_string(),
                pid,
            }),
            Done::Running | Done::Stopped => Ok(()),
        }
    }

    /// Stops every supervised replica concurrently (errors are logged).
    pub(crate) async fn stop_all(self: &Arc<Self>) {
        let ids: Vec<String> = self.replicas().keys().cloned().collect();
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            let this = self.clone();
            tasks.spawn(async move {
                if let Err(e) = this.stop(&id).await {
                    tracing::warn!(error = %e, "stop failed");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }

    pub(crate) fn status(&self, id: &str) -> Option<ReplicaStatus> {
        self.get(id).map(|replica| replica.status())
    }

    /// Every supervised replica, sorted by id.
    pub(crate) fn list(&self) -> Vec<ReplicaStatus> {
        let mut all: Vec<ReplicaStatus> = self
            .replicas()
            .values()
            .map(|replica| replica.status())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    pub(crate) fn endpoint(&self, id: &str) -> Option<SocketAddr> {
        self.get(id)
            .map(|replica| self.driver.endpoint(&replica.spec))
    }

    fn finish_stopped(&self, replica: &Replica, result: Done) {
        {
            let mut shared = replica.shared();
            shared.state = ReplicaState::Stopped;
            shared.instance = None;
            shared.pid = None;
            shared.healthy_since = None;
        }
        self.driver.stopped(&replica.spec);
        self.emit(RuntimeEvent::Stopped {
            id: replica.spec.id.clone(),
        });
        replica.done.send_replace(result);
    }

    fn set_healthy(&self, replica: &Replica) {
        {
            let mut shared = replica.shared();
            shared.state = ReplicaState::Healthy;
            shared.ever_healthy = true;
            shared.healthy_since = Some(Instant::now());
        }
        self.emit(RuntimeEvent::Healthy {
            id: replica.spec.id.clone(),
        });
    }

    /// Health checking for the current instance; never returns (dropped by the supervisor).
    async fn health_loop(&self, replica: &Replica) -> Infallible {
        let spec = &replica.spec.health;
        let id = &replica.spec.id;
        if spec.path.is_empty() {
            self.set_healthy(replica);
            return std::future::pending().await;
        }
        let path = if spec.path.starts_with('/') {
            spec.path.clone()
        } else {
            format!("/{}", spec.path)
        };
        let url = format!("http://{}{path}", self.driver.endpoint(&replica.spec));
        let interval = spec.interval.max(MIN_HEALTH_INTERVAL);
        let fast = FAST_HEALTH_POLL.min(interval);
        let healthy_threshold = spec.healthy_threshold.max(1);
        let unhealthy_threshold = spec.unhealthy_threshold.max(1);
        let (mut successes, mut failures) = (0u32, 0u32);
        let mut seen_success = false;
        loop {
            let result = check(&self.http, &url, spec.timeout).await;
            let state = replica.shared().state;
            match result {
                Ok(()) => {
                    seen_success = true;
                    successes = successes.saturating_add(1);
                    failures = 0;
                    replica.shared().last_probe = None;
                    if matches!(state, ReplicaState::Starting | ReplicaState::Unhealthy)
                        && successes >= healthy_threshold
                    {
                        self.set_healthy(replica);
                    }
                }
                Err(reason) => {
                    failures = failures.saturating_add(1);
                    successes = 0;
                    replica.shared().last_probe = Some(if failures > 1 {
                        format!("{reason} ({failures} failed checks in a row)")
                    } else {
                        reason.clone()
                    });
                    if state == ReplicaState::Healthy && failures >= unhealthy_threshold {
                        {
                            let mut shared = replica.shared();
                            shared.state = ReplicaState::Unhealthy;
                            shared.healthy_since = None;
                        }
                        tracing::warn!(replica = %id, %reason, "replica unhealthy");
                        self.emit(RuntimeEvent::Unhealthy {
                            id: id.clone(),
                            reason,
                        });
                    }
                }
            }
            tokio::time::sleep(if seen_success { interval } else { fast }).await;
        }
    }
}

enum Outcome {
    Stop,
    Detach,
    Exited(String),
}

/// Supervises one replica until it is stopped (or the runtime detaches: then it just ends,
/// leaving the instance running).
async fn supervise<D: Driver>(sup: Arc<Supervisor<D>>, replica: Arc<Replica>, first: D::Running) {
    let id = replica.spec.id.clone();
    let mut backoff = BACKOFF_MIN;
    let mut current = first;
    loop {
        let outcome = tokio::select! {
            biased;
            () = sup.detach.cancelled() => Outcome::Detach,
            () = replica.stop.cancelled() => Outcome::Stop,
            reason = sup.driver.wait_exit(&mut current) => Outcome::Exited(reason),
            never = sup.health_loop(&replica) => match never {},
        };
        let exited = match outcome {
            Outcome::Detach => return,
            Outcome::Stop => {
                replica.shared().state = ReplicaState::Stopping;
                let result = sup.driver.stop(&replica.spec, current).await;
                sup.finish_stopped(&replica, result);
                return;
            }
            Outcome::Exited(reason) => {
                tracing::warn!(replica = %id, %reason, "replica exited");
                let exited = sup.driver.exited(&replica.spec, current, &reason).await;
                let output = sup.driver.last_output(&replica.spec, &exited).await;
                {
                    let mut shared = replica.shared();
                    if shared
                        .healthy_since
                        .is_some_and(|since| since.elapsed() >= BACKOFF_RESET_AFTER)
                    {
                        backoff = BACKOFF_MIN;
                    }
                    shared.state = ReplicaState::Exited;
                    shared.instance = None;
                    shared.pid = None;
                    shared.healthy_since = None;
                    shared.last_exit = Some(reason.clone());
                    shared.last_output = output;
                }
                sup.emit(RuntimeEvent::Exited {
                    id: id.clone(),
                    reason,
                    will_restart: true,
                });
                exited
            }
        };
        // Restart with backoff until it starts or we are told to stop.
        current = loop {
            tokio::select! {
                biased;
                () = sup.detach.cancelled() => return,
                () = replica.stop.cancelled() => {
                    sup.driver.discard_exited(&replica.spec, exited).await;
                    sup.finish_stopped(&replica, Done::Stopped);
                    return;
                }
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match sup.driver.restart(&replica.spec, &exited).await {
                Ok(started) => {
                    {
                        let mut shared = replica.shared();
                        shared.state = ReplicaState::Starting;
                        shared.instance = Some(started.instance.clone());
                        shared.pid = started.pid;
                        shared.restarts += 1;
                        shared.last_probe = None;
                    }
                    sup.emit(RuntimeEvent::Started {
                        id: id.clone(),
                        instance: started.instance,
                    });
                    break started.running;
                }
                Err(e) => {
                    let reason = format!("restart failed: {e}");
                    tracing::warn!(replica = %id, %reason);
                    {
                        let mut shared = replica.shared();
                        shared.last_exit = Some(reason.clone());
                        shared.last_output = Vec::new();
                    }
                    sup.emit(RuntimeEvent::Exited {
                        id: id.clone(),
                        reason,
                        will_restart: true,
                    });
                }
            }
        };
    }
}

/// Most characters of a failing health check's answer body quoted in its reason.
const PROBE_BODY_CHARS: usize = 200;
/// Most bytes of that body read.
const PROBE_BODY_BYTES: usize = 1024;

/// One health check: `Ok` on 2xx; else what it got, for a person: the status and the start
/// of the body (escaped), a refused connection (nothing listens on that port), a timeout
/// with its length, or the transport error.
pub(crate) async fn check(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let timeout = if timeout.is_zero() {
        Duration::from_secs(1)
    } else {
        timeout
    };
    let timed_out = || {
        format!(
            "GET {url}: no answer within {} ms (timed out)",
            timeout.as_millis()
        )
    };
    let exchange = async {
        let response = http.get(url).timeout(timeout).send().await?;
        let status = response.status();
        if status.is_success() {
            return Ok(None);
        }
        let mut body = Vec::new();
        let mut response = response;
        while body.len() < PROBE_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                // A body cut short still tells something: keep what came.
                Ok(None) | Err(_) => break,
            }
        }
        Ok::<_, reqwest::Error>(Some((status, body)))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(timed_out()),
        Ok(Err(e)) if e.is_timeout() => Err(timed_out()),
        Ok(Err(e)) if e.is_connect() => Err(connect_failure(url, &e)),
        Ok(Err(e)) => Err(format!("GET {url}: {}", error_chain(&e))),
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some((status, body)))) => Err(format!(
            "GET {url}: status {}{}",
            status.as_u16(),
            quote_body(&body)
        )),
    }
}

/// `connection refused` says nothing listens there: most often the app listens on another
/// port than `$PORT` (or not yet).
fn connect_failure(url: &str, e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return format!(
                "GET {url}: connection refused (nothing listens on that port: does the app listen on $PORT?)"
            );
        }
        source = err.source();
    }
    format!("GET {url}: connection failed: {}", error_chain(e))
}

/// The error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(err) = source {
        let more = err.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = err.source();
    }
    text
}

/// `, body "…"` with the body's start escaped (quotes, control characters), or nothing
/// for an empty body.
fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut quoted = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == PROBE_BODY_CHARS {
            quoted.push('…');
            break;
        }
        quoted.extend(c.escape_debug());
    }
    format!(", body \"{quoted}\"")
}
