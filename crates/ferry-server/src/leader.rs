//! Several servers, one leader. Every server serves the API (reads from the store; writes
//! go to the store and wake the leader); only the server holding the store's `leader`
//! lease does the work that acts: the proxy's supervision, re-adoption, the controller's
//! loop (and the gate checks and hooks it runs), the notification dispatcher, the alert
//! evaluator, guarded flag rollouts, the traffic/usage/series samplers, audit checkpoints
//! and pruning ([`Work::start`] is the one list).
//!
//! The lease is granted and judged by the database's clock (`ferry_store::lease`); when to
//! renew and when to stop are `ferry_core::lease`'s pure rules over this process's
//! monotonic clock. A leader that cannot renew stops acting at its deadline (the lease's
//! expiry minus a margin, counted from before its last renewal was sent) and then exits
//! (fail-stop, as Kubernetes' controller-manager does: the replicas' supervision lives in
//! the process, so it ends with it); its supervisor (systemd, Kubernetes) starts it again as
//! a follower. Its deployment transitions are fenced with its token in the meantime.
//! On a clean stop the leader releases the lease, so a follower takes over at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_core::lease::{self, FollowerOutcome, Holding, Next, Timing};
use ferry_proxy::routes::RouteTable;
use ferry_proxy::stats::{EndpointUsage, StatsSnapshot};
use ferry_runtime::BoxFuture;
use ferry_store::{Acquire, Fence, LeaseGrant, LeaseRecord, Store};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::error::ServerError;
use crate::lock;
use crate::proxy_link::{DataPlane, ProxyLink};

/// The lease's name in the store.
pub const LEASE: &str = "leader";
/// Default lease TTL (`ferry server --lease-ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// How often a starting server looks at a lease held under its own id by another process.
const NAMESAKE_POLL: Duration = Duration::from_millis(200);

/// Who this server is among several, and how long its lease lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderSettings {
    /// Unique among the servers sharing a database (default: `HOST:PID`).
    pub server_id: String,
    pub lease_ttl: Duration,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        LeaderSettings {
            server_id: default_server_id(),
            lease_ttl: DEFAULT_TTL,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `HOST:PID`.
pub fn default_server_id() -> String {
    format!("{}:{}", hostname(), std::process::id())
}

/// This process among the servers sharing a database, whatever its `--server-id`:
/// `HOST:PID:RANDOM`, new at every start. The lease is held by (server id, instance).
pub fn new_instance() -> String {
    format!(
        "{}:{}:{:016x}",
        hostname(),
        std::process::id(),
        rand::random::<u64>()
    )
}

/// The process holding `record`: its instance (a holding older than migration 0021 has
/// none; its holder is then a default id `HOST:PID`, or says nothing).
fn holding_process(record: &LeaseRecord) -> &str {
    if record.instance.is_empty() {
        &record.holder
    } else {
        &record.instance
    }
}

/// Whether `process` (`HOST:PID[:RANDOM]`, an instance or a default id) is a process of
/// this host that is gone (or a zombie): a server restarted after a crash takes its own
/// host's dead lease over at once instead of waiting for it to expire. Any doubt (another
/// host, a custom id of an old holding, a live pid that may have been reused) is "alive":
/// the lease then simply expires.
fn dead_here(process: &str) -> bool {
    let mut parts = process.split(':');
    let (Some(host), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    if parts.count() > 1 {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host != hostname() || pid == std::process::id() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses (which may hold spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Two live servers were given the same `--server-id`: the one that finds out stops (at
/// start, or as a follower when the other renews the lease under their id).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "another live server uses --server-id {id:?} (process {instance}, which renews the leader lease under that id): server ids must be unique among the servers sharing a database; give this server another --server-id (FERRY_SERVER_ID), or stop the other one"
)]
pub struct DuplicateServerId {
    pub id: String,
    /// The other server's instance (`HOST:PID:RANDOM`).
    pub instance: String,
}

/// Why leader settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("--server-id {0:?}: must be 1 to 200 printable characters")]
    ServerId(String),
    #[error("--lease-ttl: {0}")]
    Ttl(#[from] lease::TtlOutOfRange),
}

impl LeaderSettings {
    pub fn timing(&self) -> Result<Timing, SettingsError> {
        let id = &self.server_id;
        if id.is_empty()
            || id.len() > ferry_store::MAX_LEASE_NAME_LEN
            || id.chars().any(char::is_control)
        {
            return Err(SettingsError::ServerId(id.chars().take(200).collect()));
        }
        let ttl = u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(Timing::new(ttl)?)
    }
}

/// What this server knows about leadership, for `GET /v1/version`.
#[derive(Debug, Clone, Default)]
pub struct Status(Arc<Mutex<Seen>>);

#[derive(Debug, Clone, Default)]
struct Seen {
    server_id: String,
    leading: bool,
    token: Option<i64>,
}

/// `GET /v1/version`'s `leadership`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LeadershipView {
    /// This server's id.
    pub server: String,
    /// Whether this server leads (acts) now.
    pub leading: bool,
    /// The server holding the lease, if anyone does (by the database's clock).
    pub leader: Option<String>,
    /// The lease's fencing token (one more at each takeover).
    pub token: Option<i64>,
    /// How long the lease lasts without a renewal.
    pub expires_in_ms: Option<i64>,
}

impl Status {
    fn new(server_id: &str) -> Status {
        Status(Arc::new(Mutex::new(Seen {
            server_id: server_id.to_string(),
            ..Seen::default()
        })))
    }

    pub fn leading(&self) -> bool {
        lock(&self.0).leading
    }

    /// This server's id.
    pub fn server_id(&self) -> String {
        lock(&self.0).server_id.clone()
    }

    fn set(&self, token: Option<i64>) {
        let mut seen = lock(&self.0);
        seen.leading = token.is_some();
        seen.token = token;
    }

    /// This server's view, with the lease as stored (`None` when no store answers or no
    /// server ever led, e.g. an API-only router).
    pub async fn view(&self, store: &Store) -> Option<LeadershipView> {
        let seen = lock(&self.0).clone();
        if seen.server_id.is_empty() {
            return None;
        }
        let record = store.lease(LEASE).await.ok().flatten();
        let held = record.filter(|r| r.held());
        Some(LeadershipView {
            server: seen.server_id,
            leading: seen.leading,
            leader: held.as_ref().map(|r| r.holder.clone()),
            token: held.as_ref().map(|r| r.token),
            expires_in_ms: held.map(|r| r.expires_at_ms - r.db_now_ms),
        })
    }
}

/// The data plane as the controller sees it on every server: the proxy link exists only
/// once this server leads (a follower starts no proxy; its API answers from the store).
#[derive(Default)]
pub(crate) struct LeaderProxy(OnceLock<Arc<ProxyLink>>);

impl LeaderProxy {
    fn link(&self) -> Result<&Arc<ProxyLink>, ServerError> {
        self.0.get().ok_or_else(|| {
            ServerError::Proxy(
                "this server does not lead: the leader runs the proxy (GET /v1/version)".into(),
            )
        })
    }
}

impl DataPlane for LeaderProxy {
    fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        Box::pin(async move { self.link()?.ensure_alive().await })
    }

    fn acknowledged(&self) -> Option<RouteTable> {
        self.0.get().and_then(|link| link.acknowledged())
    }

    fn push(&self, table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>> {
        Box::pin(async move { self.link()?.push(table).await })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>> {
        Box::pin(async move { self.link()?.stats().await })
    }

    fn endpoint_usage(
        &self,
        addr: SocketAddr,
    ) -> BoxFuture<'_, Result<EndpointUsage, ServerError>> {
        Box::pin(async move { self.link()?.endpoint_usage(addr).await })
    }

    fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>> {
        Box::pin(async move { self.link()?.metrics_text().await })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(link) = self.0.get() {
                link.stop().await;
            }
        })
    }
}

/// Everything the leader-only work needs.
pub(crate) struct Work {
    pub store: Store,
    pub controller: Arc<Controller>,
    pub proxy: Arc<LeaderProxy>,
    pub ferry_exe: PathBuf,
    pub proxy_dir: PathBuf,
    pub ports: Option<ferry_runtime::PortRange>,
    pub audit_key: [u8; 32],
    pub secrets: Arc<crate::secrets::Secrets>,
    pub notify: crate::notify::Settings,
}

impl Work {
    /// Adopts or starts the proxy, re-adopts what runs, then starts every loop that acts,
    /// each stopping when `acting` is cancelled. The one list of leader-only work.
    async fn start(&self, acting: &CancellationToken) -> Result<Vec<JoinHandle<()>>, ServerError> {
        if self.proxy.0.get().is_none() {
            let link =
                ProxyLink::adopt_or_start(&self.ferry_exe, &self.proxy_dir, self.ports).await?;
            let _ = self.proxy.0.set(Arc::new(link));
        }
        self.controller.recover().await?;
        let c = &self.controller;
        let dispatcher =
            crate::notify::Dispatcher::new(self.store.clone(), self.secrets.clone(), self.notify);
        let mut tasks = vec![
            tokio::spawn(c.clone().run(acting.clone())),
            tokio::spawn(crate::audit::run_checkpoints(
                self.store.clone(),
                self.audit_key,
                acting.clone(),
            )),
            tokio::spawn(crate::auth::purge_ended_sessions(
                self.store.clone(),
                acting.clone(),
            )),
            tokio::spawn(crate::alerts::run(c.clone(), acting.clone())),
            tokio::spawn(crate::usage::run(c.clone(), acting.clone())),
            tokio::spawn(dispatcher.run(acting.clone())),
            tokio::spawn(crate::series::run(c.clone(), acting.clone())),
            tokio::spawn(crate::flags_guard::run(c.clone(), acting.clone())),
            // live.rs: the followers' answers and live views
            tokio::spawn(crate::live::run(c.clone(), acting.clone())),
        ];
        // Wake-ups from the other servers' writes (PostgreSQL NOTIFY): the controller and
        // the notification dispatcher look at once.
        let (store, controller, stop) = (self.store.clone(), c.clone(), acting.clone());
        tasks.push(tokio::spawn(async move {
            let outbox = store.outbox_signal();
            store
                .follow_wakes(
                    move || {
                        controller.wake();
                        outbox.notify_one();
                    },
                    stop.cancelled_owned(),
                )
                .await
        }));
        Ok(tasks)
    }
}

/// This process's monotonic clock in milliseconds.
#[derive(Clone, Copy)]
struct Mono(Instant);

impl Mono {
    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_millis(ms))
    }
}

/// The leader's side of a holding: its work, stopped when it ends.
struct Acting {
    token: i64,
    holding: Holding,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// Leadership: started by [`crate::start`]; `lost` is set when this server stepped down
/// because it lost its lease (the server then stops: see the module's doc).
pub(crate) struct Leadership {
    pub store: Store,
    pub settings: LeaderSettings,
    /// This process ([`new_instance`]).
    pub instance: String,
    pub timing: Timing,
    pub status: Status,
    pub work: Work,
    pub shutdown: CancellationToken,
    pub lost: Arc<AtomicBool>,
    /// Set when this server stopped because another live server uses its id.
    pub duplicate: Arc<OnceLock<DuplicateServerId>>,
}

impl Leadership {
    pub fn status(settings: &LeaderSettings) -> Status {
        Status::new(&settings.server_id)
    }

    /// One attempt to acquire at start: leads at once (the proxy and re-adoption done before
    /// the API serves, as a single server always did) or follows. Errors of the work's start
    /// are the server's start errors.
    pub async fn start(self) -> Result<JoinHandle<()>, ServerError> {
        let mono = Mono(Instant::now());
        let mut sent = mono.now();
        // `acquire`, not a bare attempt: a server restarted after a crash on this host takes
        // its predecessor's lease over before the API serves, instead of serving as a
        // follower until its first retry.
        let mut acquired = self.acquire().await;
        if let Ok(Acquire::HeldBy(record)) = &acquired
            && self.namesake(record)
        {
            self.wait_out_namesake(record).await?;
            sent = mono.now();
            acquired = self.acquire().await;
        }
        let acting = match acquired {
            Ok(Acquire::Granted(grant)) => Some(self.begin(grant, sent).await?),
            Ok(Acquire::HeldBy(record)) => {
                tracing::info!(leader = %record.holder, "another server leads; following");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the lease; following until it answers");
                None
            }
        };
        if acting.is_none() {
            self.follower_refresh();
        }
        Ok(tokio::spawn(self.run(mono, acting)))
    }

    /// Acquires the lease if it is free, expired, or held by a dead server of this host.
    async fn acquire(&self) -> Result<Acquire, ferry_store::StoreError> {
        let (id, instance) = (&self.settings.server_id, &self.instance);
        match self
            .store
            .acquire_lease(LEASE, id, instance, self.timing.ttl_ms)
            .await?
        {
            Acquire::HeldBy(record) if dead_here(holding_process(&record)) => {
                tracing::info!(dead = %record.holder, process = %holding_process(&record), "the leader's process is gone; taking over");
                self.store
                    .take_over_lease(LEASE, id, instance, self.timing.ttl_ms, &record)
                    .await
            }
            other => Ok(other),
        }
    }

    /// Whether `record` is held under this server's id by another process.
    fn namesake(&self, record: &LeaseRecord) -> bool {
        record.held()
            && record.holder == self.settings.server_id
            && record.instance != self.instance
    }

    /// At start, the lease is held under this server's id by another process not known to
    /// be dead (of another host, or a live pid): another live server with the same id, or a
    /// predecessor that died on another host. Watches that holding until it ends (a dead
    /// predecessor's expires: go on) or is renewed (a live server: refuse to start).
    async fn wait_out_namesake(&self, seen: &LeaseRecord) -> Result<(), DuplicateServerId> {
        tracing::warn!(
            server = %self.settings.server_id,
            other = %seen.instance,
            "the leader lease is held under this server's id by another process; \
             waiting for it to expire (if it is renewed, another live server uses this id)"
        );
        // The holding ends by the database's clock at its expiry; the slack covers a
        // database that answers slowly meanwhile (then the follower's loop goes on).
        let left = u64::try_from(seen.expires_at_ms - seen.db_now_ms).unwrap_or(0);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(left.min(lease::MAX_TTL_MS))
            + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(NAMESAKE_POLL) => {}
            }
            match self.store.lease(LEASE).await {
                Ok(Some(now)) if now.held() && same_holding_process(&now, seen) => {
                    if renewed(&now, seen) {
                        return Err(self.duplicate_of(seen));
                    }
                }
                Ok(_) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "cannot read the lease"),
            }
        }
        Ok(())
    }

    fn duplicate_of(&self, record: &LeaseRecord) -> DuplicateServerId {
        DuplicateServerId {
            id: self.settings.server_id.clone(),
            instance: record.instance.clone(),
        }
    }

    /// Became the leader with `grant`: fence, start the work (stopping it again if that
    /// fails, and giving the lease back).
    async fn begin(&self, grant: LeaseGrant, sent: u64) -> Result<Acting, ServerError> {
        tracing::info!(server = %self.settings.server_id, token = grant.token, "leading");
        self.store.set_fence(Some(Fence {
            name: LEASE.into(),
            holder: self.settings.server_id.clone(),
            token: grant.token,
        }));
        let cancel = self.shutdown.child_token();
        match self.work.start(&cancel).await {
            Ok(tasks) => {
                // Leading (for teardown and `/v1/version`) only once the work runs: a
                // teardown accepted before the proxy is adopted would stop nothing and leave
                // it serving.
                self.status.set(Some(grant.token));
                Ok(Acting {
                    token: grant.token,
                    holding: self.timing.granted(sent),
                    cancel,
                    tasks,
                })
            }
            Err(e) => {
                cancel.cancel();
                let _ = self
                    .store
                    .release_lease(LEASE, &self.settings.server_id, grant.token)
                    .await;
                Err(e)
            }
        }
    }

    /// A follower's live views look again at each change the leader announces (until this
    /// server leads or stops): `live::follow`.
    fn follower_refresh(&self) {
        tokio::spawn(crate::live::follow(
            self.work.controller.clone(),
            self.store.clone(),
            self.status.clone(),
            self.shutdown.clone(),
        ));
    }

    async fn run(self, mono: Mono, mut acting: Option<Acting>) {
        let mut failures = 0u32;
        // The last holding seen under this server's id by another process.
        let mut namesake: Option<LeaseRecord> = None;
        loop {
            let Some(mut current) = acting.take() else {
                // Following: try to acquire when the holder's lease may have ended.
                let sent = mono.now();
                let acquired = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    r = self.acquire() => r,
                };
                let retry_at = match acquired {
                    Ok(Acquire::Granted(grant)) => match self.begin(grant, sent).await {
                        Ok(now_acting) => {
                            acting = Some(now_acting);
                            failures = 0;
                            continue;
                        }
                        Err(e) => {
                            // A server that cannot act exits, like one that lost its lease.
                            tracing::error!(error = %e, "took the lease but cannot lead; stopping");
                            self.lost.store(true, Ordering::SeqCst);
                            self.shutdown.cancel();
                            return;
                        }
                    },
                    Ok(Acquire::HeldBy(record)) => {
                        failures = 0;
                        if self.namesake(&record) {
                            // Renewed since seen: a live server with this server's id leads.
                            if let Some(seen) = &namesake
                                && same_holding_process(&record, seen)
                                && renewed(&record, seen)
                            {
                                let duplicate = self.duplicate_of(&record);
                                tracing::error!("{duplicate}; stopping");
                                let _ = self.duplicate.set(duplicate);
                                self.shutdown.cancel();
                                return;
                            }
                            namesake = Some(record.clone());
                        }
                        let left =
                            u64::try_from(record.expires_at_ms - record.db_now_ms).unwrap_or(0);
                        lease::follower_retry(
                            &self.timing,
                            mono.now(),
                            FollowerOutcome::Held {
                                expires_in_ms: left,
                            },
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot reach the lease");
                        failures = failures.saturating_add(1);
                        lease::follower_retry(
                            &self.timing,
                            mono.now(),
                            FollowerOutcome::Unreachable {
                                failures: failures - 1,
                            },
                        )
                    }
                };
                tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    () = tokio::time::sleep_until(mono.at(retry_at)) => {}
                }
                continue;
            };
            match lease::next(&current.holding, mono.now()) {
                Next::Wait { until } => {
                    tokio::select! {
                        () = self.shutdown.cancelled() => {
                            self.stop_acting(current).await;
                            return;
                        }
                        () = tokio::time::sleep_until(mono.at(until)) => acting = Some(current),
                    }
                }
                Next::Attempt => {
                    let sent = mono.now();
                    // Never wait on the database past the deadline.
                    let deadline = mono.at(current.holding.act_until);
                    let renewed = tokio::time::timeout_at(
                        deadline,
                        self.store.renew_lease(
                            LEASE,
                            &self.settings.server_id,
                            current.token,
                            self.timing.ttl_ms,
                        ),
                    )
                    .await;
                    match renewed {
                        Ok(Ok(Some(_))) => {
                            current.holding = self.timing.granted(sent);
                            acting = Some(current);
                        }
                        Ok(Ok(None)) => {
                            tracing::error!(
                                token = current.token,
                                "the lease is lost: another server leads"
                            );
                            return self.step_down(current).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, failures = current.holding.failures + 1, "cannot renew the lease");
                            current.holding =
                                lease::renewal_failed(&self.timing, &current.holding, mono.now());
                            acting = Some(current);
                        }
                        Err(_elapsed) => acting = Some(current),
                    }
                }
                Next::StepDown => {
                    tracing::error!(
                        token = current.token,
                        "could not renew the lease in time; stepping down"
                    );
                    return self.step_down(current).await;
                }
            }
        }
    }

    /// Lost the lease: stop acting, then stop the server (fail-stop; see the module doc).
    async fn step_down(&self, current: Acting) {
        self.lost.store(true, Ordering::SeqCst);
        self.status.set(None);
        current.cancel.cancel();
        // Within the margin the lease still has; what has not stopped by then is aborted
        // (a fenced transition could not commit anyway).
        let margin = Duration::from_millis(self.timing.margin_ms);
        for task in current.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(margin, task).await.is_err() {
                abort.abort();
            }
        }
        self.shutdown.cancel();
    }

    /// A clean stop: the work ends, then the lease is given back for a follower to take.
    async fn stop_acting(&self, current: Acting) {
        stop_tasks(current.cancel, current.tasks).await;
        self.status.set(None);
        match self
            .store
            .release_lease(LEASE, &self.settings.server_id, current.token)
            .await
        {
            Ok(true) => tracing::info!("released the leader lease"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot release the leader lease; it expires"),
        }
    }
}

/// Whether `a` and `b` are holdings of the same process.
fn same_holding_process(a: &LeaseRecord, b: &LeaseRecord) -> bool {
    a.holder == b.holder && a.instance == b.instance
}

/// Whether `now` (of the same process as `seen`) was renewed or acquired again since `seen`.
fn renewed(now: &LeaseRecord, seen: &LeaseRecord) -> bool {
    now.renewed_at_ms > seen.renewed_at_ms || now.token != seen.token
}

async fn stop_tasks(cancel: CancellationToken, tasks: Vec<JoinHandle<()>>) {
    cancel.cancel();
    for task in tasks {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_gone_process_of_this_host_is_dead() {
        let host = hostname();
        assert!(!dead_here(&default_server_id()), "this process is alive");
        assert!(!dead_here(&format!("{host}:1")), "init is alive");
        assert!(!dead_here(&format!("another-host-{host}:999999999")));
        assert!(!dead_here("custom-id"));
        assert!(!dead_here(&format!("{host}:not-a-pid")));
        // A child that exited and was reaped, and one that is a zombie.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dead_here(&format!("{host}:{pid}")) {
            assert!(Instant::now() < deadline, "the zombie is seen as dead");
            std::thread::sleep(Duration::from_millis(10));
        }
        child.wait().unwrap();
        assert!(dead_here(&format!("{host}:{pid}")));
        // An instance (`HOST:PID:RANDOM`) is judged by its host and pid the same way.
        assert!(dead_here(&format!("{host}:{pid}:00c0ffee")));
        assert!(!dead_here(&new_instance()), "this process is alive");
        assert!(!dead_here(&format!("{host}:{pid}:a:b")), "not an instance");
    }

    #[test]
    fn settings_are_checked_naming_the_flag() {
        let bad_id = LeaderSettings {
            server_id: "a\nb".into(),
            lease_ttl: DEFAULT_TTL,
        };
        assert!(
            bad_id
                .timing()
                .unwrap_err()
                .to_string()
                .starts_with("--server-id")
        );
        let bad_ttl = LeaderSettings {
            lease_ttl: Duration::from_secs(1),
            ..LeaderSettings::default()
        };
        assert!(
            bad_ttl
                .timing()
                .unwrap_err()
                .to_string()
                .starts_with("--lease-ttl")
        );
        assert_eq!(LeaderSettings::default().timing().unwrap().ttl_ms, 15_000);
    }
}
