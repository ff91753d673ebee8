//! Data planes of several proxies: an environment's proxy fleet (the `ferry-proxy` pods of a
//! `runtime: kubernetes`, `traffic: proxy` environment) and [`Planes`], the composite the
//! controller speaks to, which sends each environment's listeners to where they are served
//! (the local proxy, or the environment's fleet).
//!
//! The invariants the controller relies on stay exact over N pods:
//! - **push**: a table is acknowledged only when every ready pod holds it (and at least one
//!   does). A pod that appears (or restarts and reports another generation) gets the table
//!   before it is counted. The table is first saved where a starting pod reads it
//!   ([`PodSource::publish`], the ConfigMap), so a pod that starts while the server is down
//!   serves the last table;
//! - **drains**: an endpoint is drained only when every pod says it is unlisted and idle; a
//!   pod that does not answer makes it not drained (the caller's drain timeout bounds it);
//! - **stats**: counters are the sum over pods and never go backwards: a pod that leaves or
//!   restarts keeps its last counters in the fleet's total (they are "retired"), and
//!   latency histograms are merged; `started_at_ms` is when this server began counting the
//!   fleet;
//! - **metrics**: every pod's samples, labelled `pod="NAME"`.

// Without the `kubernetes` feature no environment has a fleet (only tests build one).
#![cfg_attr(not(feature = "kubernetes"), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_proxy::routes::RouteTable;
use ferry_proxy::stats::{
    EndpointUsage, FlagStats, LatencyPercentiles, StatsSnapshot, VersionStats, decode_histogram,
    encode_histogram,
};
use ferry_runtime::BoxFuture;
use futures_util::future::join_all;
use hdrhistogram::Histogram;

use crate::clock::now_ms;
use crate::error::ServerError;
use crate::lock;
use crate::proxy_link::DataPlane;

/// How long the list of ready pods is reused before it is read again.
const PODS_FRESH: Duration = Duration::from_secs(1);
/// How long one pod may take to answer.
const POD_TIMEOUT: Duration = Duration::from_secs(3);

/// One proxy pod's admin API.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProxyPod {
    pub name: String,
    pub admin: SocketAddr,
}

/// Where a fleet's pods are, where a starting pod reads its table, and their admin token.
pub trait PodSource: Send + Sync + 'static {
    /// The ready pods, which must all hold the table.
    fn pods(&self) -> BoxFuture<'_, Result<Vec<ProxyPod>, ServerError>>;
    /// Saves `routes_json` (a [`RouteTable`]) where a pod that starts reads it.
    fn publish(&self, routes_json: String) -> BoxFuture<'_, Result<(), ServerError>>;
    /// The bearer token of the pods' admin API.
    fn token(&self) -> BoxFuture<'_, Result<String, ServerError>>;
}

#[derive(Default)]
struct PodState {
    /// The generation the pod is known to serve.
    generation: Option<u64>,
    started_at_ms: Option<i64>,
    /// Its last stats, counted in the fleet's total.
    last: Option<StatsSnapshot>,
}

#[derive(Default)]
struct State {
    /// The table the pods must hold (with its generation).
    table: Option<RouteTable>,
    /// Whether `table` was published (saved for starting pods).
    published: bool,
    acknowledged: Option<RouteTable>,
    pods: Vec<ProxyPod>,
    pods_read: Option<Instant>,
    seen: BTreeMap<ProxyPod, PodState>,
    /// The counters of pods that left or restarted.
    retired: Option<StatsSnapshot>,
}

/// The proxy pods of one environment (see the module documentation).
pub struct Fleet {
    source: Arc<dyn PodSource>,
    http: reqwest::Client,
    started_at_ms: i64,
    state: Mutex<State>,
}

fn fleet_error(what: impl std::fmt::Display) -> ServerError {
    ServerError::Proxy(what.to_string())
}

impl Fleet {
    pub fn new(source: Arc<dyn PodSource>) -> Fleet {
        Fleet {
            source,
            http: reqwest::Client::builder()
                .timeout(POD_TIMEOUT)
                .build()
                .unwrap_or_default(),
            started_at_ms: now_ms(),
            state: Mutex::new(State::default()),
        }
    }

    /// The ready pods, read again when older than [`PODS_FRESH`] or when `fresh`. Pods that
    /// left have their counters retired.
    async fn pods(&self, fresh: bool) -> Result<Vec<ProxyPod>, ServerError> {
        {
            let state = lock(&self.state);
            if !fresh && state.pods_read.is_some_and(|at| at.elapsed() < PODS_FRESH) {
                return Ok(state.pods.clone());
            }
        }
        let mut pods = self.source.pods().await?;
        pods.sort();
        let mut state = lock(&self.state);
        let gone: Vec<ProxyPod> = state
            .seen
            .keys()
            .filter(|p| !pods.contains(p))
            .cloned()
            .collect();
        for pod in gone {
            if let Some(last) = state.seen.remove(&pod).and_then(|s| s.last) {
                retire(&mut state.retired, &last);
            }
        }
        state.pods = pods.clone();
        state.pods_read = Some(Instant::now());
        Ok(pods)
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        pod: &ProxyPod,
        token: &str,
        path: &str,
    ) -> Result<T, ServerError> {
        let response = self
            .http
            .get(format!("http://{}{path}", pod.admin))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| fleet_error(format!("proxy pod {}: GET {path}: {e}", pod.name)))?;
        if !response.status().is_success() {
            return Err(fleet_error(format!(
                "proxy pod {}: GET {path}: {}",
                pod.name,
                response.status()
            )));
        }
        response
            .json()
            .await
            .map_err(|e| fleet_error(format!("proxy pod {}: GET {path}: {e}", pod.name)))
    }

    /// Reads every ready pod's stats: counts them, and notices a pod that restarted or
    /// serves another table than the fleet's (it gets the table at the next push).
    async fn observe(&self, fresh: bool) -> Result<(), ServerError> {
        let pods = self.pods(fresh).await?;
        let token = self.source.token().await?;
        let answers = join_all(
            pods.iter()
                .map(|pod| self.get::<StatsSnapshot>(pod, &token, "/v1/stats")),
        )
        .await;
        let mut state = lock(&self.state);
        for (pod, answer) in pods.into_iter().zip(answers) {
            let Ok(stats) = answer else { continue };
            let State { seen, retired, .. } = &mut *state;
            let seen = seen.entry(pod).or_default();
            if seen.started_at_ms.is_some_and(|s| s != stats.started_at_ms)
                && let Some(last) = seen.last.take()
            {
                retire(retired, &last);
            }
            seen.started_at_ms = Some(stats.started_at_ms);
            seen.generation = Some(stats.generation);
            seen.last = Some(stats);
        }
        Ok(())
    }

    /// Checks the pods (every second from the controller): restarts and stale tables.
    pub async fn ensure_alive(&self) -> Result<(), ServerError> {
        self.observe(true).await
    }

    pub fn acknowledged(&self) -> Option<RouteTable> {
        lock(&self.state).acknowledged.clone()
    }

    /// Makes every ready pod hold `table` (see the module documentation). Returns whether
    /// anything changed: a table sent, or a new table acknowledged.
    pub async fn push(&self, mut table: RouteTable) -> Result<bool, ServerError> {
        let pods = self.pods(false).await?;
        let (table, publish) = {
            let mut state = lock(&self.state);
            match &state.table {
                Some(current) if current.listeners == table.listeners => {}
                current => {
                    let previous = current.as_ref().map_or(0, |t| t.generation);
                    table.generation = (previous + 1).max(u64::try_from(now_ms()).unwrap_or(0));
                    state.table = Some(table);
                    state.published = false;
                }
            }
            let table = state.table.clone().unwrap_or_default();
            (table, !state.published)
        };
        let json = serde_json::to_string(&table)
            .map_err(|e| fleet_error(format!("encoding the route table: {e}")))?;
        if publish {
            self.source.publish(json.clone()).await?;
            lock(&self.state).published = true;
        }
        let missing: Vec<ProxyPod> = {
            let state = lock(&self.state);
            pods.iter()
                .filter(|p| state.seen.get(p).and_then(|s| s.generation) != Some(table.generation))
                .cloned()
                .collect()
        };
        let mut first_error = None;
        if !missing.is_empty() {
            let token = self.source.token().await?;
            let sent = join_all(missing.iter().map(|pod| {
                self.http
                    .put(format!("http://{}/v1/routes", pod.admin))
                    .bearer_auth(&token)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(json.clone())
                    .send()
            }))
            .await;
            let mut state = lock(&self.state);
            for (pod, answer) in missing.iter().zip(sent) {
                match answer {
                    Ok(r) if r.status().is_success() => {
                        state.seen.entry(pod.clone()).or_default().generation =
                            Some(table.generation);
                    }
                    Ok(r) => {
                        first_error.get_or_insert(fleet_error(format!(
                            "proxy pod {} refused the route table ({})",
                            pod.name,
                            r.status()
                        )));
                    }
                    Err(e) => {
                        first_error.get_or_insert(fleet_error(format!(
                            "pushing routes to proxy pod {}: {e}",
                            pod.name
                        )));
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let mut state = lock(&self.state);
        let held = !pods.is_empty()
            && pods
                .iter()
                .all(|p| state.seen.get(p).and_then(|s| s.generation) == Some(table.generation));
        let newly = held
            && state
                .acknowledged
                .as_ref()
                .is_none_or(|a| a.generation != table.generation);
        if newly {
            state.acknowledged = Some(table);
        }
        Ok(newly || !missing.is_empty())
    }

    /// The fleet's counters: retired ones plus each pod's last.
    pub async fn stats(&self) -> StatsSnapshot {
        if let Err(e) = self.observe(false).await {
            tracing::debug!(error = %e, "proxy pods' stats not read; using the last ones");
        }
        let state = lock(&self.state);
        let parts: Vec<&StatsSnapshot> = state
            .retired
            .iter()
            .chain(state.seen.values().filter_map(|s| s.last.as_ref()))
            .collect();
        let mut merged = merge(&parts);
        merged.started_at_ms = self.started_at_ms;
        merged.taken_at_ms = now_ms();
        merged.generation = state.acknowledged.as_ref().map_or(0, |t| t.generation);
        merged
    }

    /// Whether a request can still reach `addr` through any ready pod.
    pub async fn endpoint_usage(&self, addr: SocketAddr) -> Result<EndpointUsage, ServerError> {
        let pods = self.pods(false).await?;
        let token = self.source.token().await?;
        let path = format!("/v1/endpoints/{addr}");
        let answers = join_all(
            pods.iter()
                .map(|pod| self.get::<EndpointUsage>(pod, &token, &path)),
        )
        .await;
        let mut total = EndpointUsage {
            addr,
            listed: 0,
            in_flight: 0,
        };
        for answer in answers {
            let usage = answer?;
            total.listed += usage.listed;
            total.in_flight += usage.in_flight;
        }
        Ok(total)
    }

    /// Every ready pod's Prometheus text, each sample labelled with its pod.
    pub async fn metrics_text(&self) -> Result<String, ServerError> {
        let pods = self.pods(false).await?;
        let token = self.source.token().await?;
        let texts = join_all(pods.iter().map(|pod| async {
            let response = self
                .http
                .get(format!("http://{}/metrics", pod.admin))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| fleet_error(format!("proxy pod {}: metrics: {e}", pod.name)))?;
            response
                .text()
                .await
                .map_err(|e| fleet_error(format!("proxy pod {}: metrics: {e}", pod.name)))
        }))
        .await;
        let mut parts = Vec::new();
        for (pod, text) in pods.iter().zip(texts) {
            parts.push((Some(pod.name.clone()), text?));
        }
        Ok(merge_metrics(&parts))
    }
}

/// Adds `last`'s cumulative counters to `retired` (what is in flight or listed is not
/// cumulative: it leaves with the pod).
fn retire(retired: &mut Option<StatsSnapshot>, last: &StatsSnapshot) {
    let mut merged = merge(&retired.iter().chain([last]).collect::<Vec<_>>());
    for v in &mut merged.versions {
        v.in_flight = 0;
        v.endpoints.clear();
    }
    *retired = Some(merged);
}

fn add_histogram(into: &mut Option<Histogram<u64>>, encoded: &str) {
    let Ok(h) = decode_histogram(encoded) else {
        return;
    };
    match into {
        None => {
            let mut h = h;
            h.auto(true);
            *into = Some(h);
        }
        Some(total) => {
            if let Err(e) = total.add(&h) {
                tracing::warn!(error = ?e, "latency histograms not merged");
            }
        }
    }
}

fn percentiles(h: Option<&Histogram<u64>>) -> LatencyPercentiles {
    let at = |q: f64| h.map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0);
    LatencyPercentiles {
        p50: at(0.5),
        p90: at(0.9),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// The sum of several proxies' snapshots (pure): counters and in-flight requests added per
/// (listener, service, version) and per flag variant, histograms merged (percentiles
/// recomputed from them), endpoints listed once with their in-flight requests added.
pub fn merge(parts: &[&StatsSnapshot]) -> StatsSnapshot {
    type Key = (String, String, String);
    type Merged<T> = (T, Option<Histogram<u64>>);
    let mut versions: BTreeMap<Key, Merged<VersionStats>> = BTreeMap::new();
    let mut flags: BTreeMap<(Key, String, String), Merged<FlagStats>> = BTreeMap::new();
    let mut out = StatsSnapshot::default();
    for part in parts {
        out.started_at_ms = out.started_at_ms.max(part.started_at_ms);
        out.taken_at_ms = out.taken_at_ms.max(part.taken_at_ms);
        out.generation = out.generation.max(part.generation);
        out.flags_dropped += part.flags_dropped;
        for v in &part.versions {
            let key = (v.listener.clone(), v.service.clone(), v.version.clone());
            let (total, histogram) = versions.entry(key).or_insert_with(|| {
                (
                    VersionStats {
                        requests: 0,
                        errors_5xx: 0,
                        client_errors: 0,
                        in_flight: 0,
                        endpoints: Vec::new(),
                        ..v.clone()
                    },
                    None,
                )
            });
            total.requests += v.requests;
            total.errors_5xx += v.errors_5xx;
            total.client_errors += v.client_errors;
            total.in_flight += v.in_flight;
            for e in &v.endpoints {
                match total.endpoints.iter_mut().find(|t| t.addr == e.addr) {
                    Some(t) => {
                        t.in_flight += e.in_flight;
                        t.ejected_until_ms = t.ejected_until_ms.max(e.ejected_until_ms);
                    }
                    None => total.endpoints.push(e.clone()),
                }
            }
            add_histogram(histogram, &v.histogram_us);
        }
        for f in &part.flags {
            let key = (
                (f.listener.clone(), f.service.clone(), f.version.clone()),
                f.flag.clone(),
                f.variant.clone(),
            );
            let (total, histogram) = flags.entry(key).or_insert_with(|| {
                (
                    FlagStats {
                        requests: 0,
                        errors_5xx: 0,
                        ..f.clone()
                    },
                    None,
                )
            });
            total.requests += f.requests;
            total.errors_5xx += f.errors_5xx;
            add_histogram(histogram, &f.histogram_us);
        }
    }
    out.versions = versions
        .into_values()
        .map(|(mut v, h)| {
            v.latency_ms = percentiles(h.as_ref());
            if let Some(h) = &h {
                v.histogram_us = encode_histogram(h);
            }
            v.endpoints.sort_by_key(|e| e.addr);
            v
        })
        .collect();
    out.flags = flags
        .into_values()
        .map(|(mut f, h)| {
            if let Some(h) = &h {
                f.histogram_us = encode_histogram(h);
            }
            f
        })
        .collect();
    out
}

/// Several Prometheus/OpenMetrics texts as one (pure): each family's `# HELP`/`# TYPE`
/// once, then its samples from every part, a part's samples labelled `pod="NAME"` when it
/// has a name; one `# EOF` at the end.
pub fn merge_metrics(parts: &[(Option<String>, String)]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut samples: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pod, text) in parts {
        let mut family = String::new();
        for line in text.lines() {
            if line.trim().is_empty() || line.starts_with("# EOF") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let mut words = rest.splitn(3, ' ');
                let _kind = words.next();
                family = words.next().unwrap_or_default().to_string();
                if !order.contains(&family) {
                    order.push(family.clone());
                }
                let lines = headers.entry(family.clone()).or_default();
                if !lines.iter().any(|l| l == line) {
                    lines.push(line.to_string());
                }
                continue;
            }
            if family.is_empty() || !line.starts_with(family.as_str()) {
                family = line
                    .split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_string();
                if !order.contains(&family) {
                    order.push(family.clone());
                }
            }
            samples
                .entry(family.clone())
                .or_default()
                .push(label_sample(line, pod.as_deref()));
        }
    }
    let mut out = String::new();
    let mut done = BTreeSet::new();
    for family in order {
        if !done.insert(family.clone()) {
            continue;
        }
        for line in headers.get(&family).into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
        for line in samples.get(&family).into_iter().flatten() {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

fn label_sample(line: &str, pod: Option<&str>) -> String {
    let Some(pod) = pod else {
        return line.to_string();
    };
    let label = format!("pod=\"{}\"", pod.replace('\\', "\\\\").replace('"', "\\\""));
    match line.find(['{', ' ']) {
        Some(i) if line[i..].starts_with("{}") => {
            format!("{}{{{label}}}{}", &line[..i], &line[i + 2..])
        }
        Some(i) if line[i..].starts_with('{') => {
            format!("{}{{{label},{}", &line[..i], &line[i + 1..])
        }
        Some(i) => format!("{}{{{label}}}{}", &line[..i], &line[i..]),
        None => line.to_string(),
    }
}

/// Where an environment's listeners are served.
pub enum Plane {
    /// By the proxy next to the server.
    Local,
    /// By its proxy pods.
    Fleet(Arc<Fleet>),
    /// By proxy pods that do not exist yet (their cluster is not reached yet): nowhere
    /// until they do, never by the local proxy.
    Pending,
}

/// Which environments' listeners a fleet serves.
pub trait FleetDirectory: Send + Sync + 'static {
    /// Where the listeners of `app`/`env` go.
    fn plane_of(&self, app: &str, env: &str) -> Plane;
    /// Every fleet known, by `app/env`.
    fn fleets(&self) -> Vec<(String, Arc<Fleet>)>;
    /// Deletes every fleet (a teardown).
    fn remove_all(&self) -> BoxFuture<'_, ()>;
}

/// The data plane the controller speaks to: the local proxy, and the fleets of the
/// environments that have one; each listener (`APP/ENV[/…]`) goes to its environment's.
pub struct Planes {
    local: Arc<dyn DataPlane>,
    directory: Arc<dyn FleetDirectory>,
}

impl Planes {
    pub fn new(local: Arc<dyn DataPlane>, directory: Arc<dyn FleetDirectory>) -> Planes {
        Planes { local, directory }
    }

    /// `table` split into the local proxy's part and each fleet's (every known fleet gets
    /// one, empty when none of its listeners remain). A listener of an environment whose
    /// fleet is [`Plane::Pending`] is in no part.
    fn split(&self, table: RouteTable) -> (RouteTable, Vec<(Arc<Fleet>, RouteTable)>) {
        let mut local = RouteTable {
            generation: table.generation,
            listeners: Vec::new(),
        };
        let mut parts: BTreeMap<String, (Arc<Fleet>, RouteTable)> = self
            .directory
            .fleets()
            .into_iter()
            .map(|(key, fleet)| (key, (fleet, RouteTable::default())))
            .collect();
        for listener in table.listeners {
            let mut segments = listener.id.splitn(3, '/');
            let (app, env) = (
                segments.next().unwrap_or_default(),
                segments.next().unwrap_or_default(),
            );
            let key = format!("{app}/{env}");
            match self.directory.plane_of(app, env) {
                Plane::Fleet(fleet) => parts
                    .entry(key)
                    .or_insert_with(|| (fleet, RouteTable::default()))
                    .1
                    .listeners
                    .push(listener),
                Plane::Local => local.listeners.push(listener),
                Plane::Pending => {
                    tracing::debug!(listener = %listener.id, "its proxy pods do not exist yet");
                }
            }
        }
        (local, parts.into_values().collect())
    }
}

impl DataPlane for Planes {
    fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>> {
        Box::pin(async move {
            for (key, fleet) in self.directory.fleets() {
                if let Err(e) = fleet.ensure_alive().await {
                    tracing::warn!(fleet = %key, error = %e, "proxy pods not checked");
                }
            }
            self.local.ensure_alive().await
        })
    }

    fn acknowledged(&self) -> Option<RouteTable> {
        let mut table = self.local.acknowledged();
        for (_, fleet) in self.directory.fleets() {
            if let Some(part) = fleet.acknowledged() {
                let table = table.get_or_insert_with(RouteTable::default);
                table.generation = table.generation.max(part.generation);
                table.listeners.extend(part.listeners);
            }
        }
        table
    }

    fn push(&self, table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>> {
        Box::pin(async move {
            let (local, fleets) = self.split(table);
            let mut changed = self.local.push(local).await?;
            let mut first_error = None;
            for (fleet, part) in fleets {
                match fleet.push(part).await {
                    Ok(sent) => changed |= sent,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(changed),
            }
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>> {
        Box::pin(async move {
            let mut stats = self.local.stats().await?;
            for (_, fleet) in self.directory.fleets() {
                let part = fleet.stats().await;
                // A restart anywhere moves the start: windows across it are not compared.
                stats.started_at_ms = stats.started_at_ms.max(part.started_at_ms);
                stats.versions.extend(part.versions);
                stats.flags.extend(part.flags);
                stats.flags_dropped += part.flags_dropped;
            }
            Ok(stats)
        })
    }

    fn endpoint_usage(
        &self,
        addr: SocketAddr,
    ) -> BoxFuture<'_, Result<EndpointUsage, ServerError>> {
        Box::pin(async move {
            let mut usage = self.local.endpoint_usage(addr).await?;
            for (_, fleet) in self.directory.fleets() {
                let part = fleet.endpoint_usage(addr).await?;
                usage.listed += part.listed;
                usage.in_flight += part.in_flight;
            }
            Ok(usage)
        })
    }

    fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>> {
        Box::pin(async move {
            let local = self.local.metrics_text().await?;
            let fleets = self.directory.fleets();
            if fleets.is_empty() {
                return Ok(local);
            }
            let mut parts = vec![(None, local)];
            for (key, fleet) in fleets {
                match fleet.metrics_text().await {
                    Ok(text) => parts.push((None, text)),
                    Err(e) => {
                        tracing::debug!(fleet = %key, error = %e, "proxy pods' metrics not read")
                    }
                }
            }
            Ok(merge_metrics(&parts))
        })
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        // A teardown: the proxy pods go with the local proxy.
        Box::pin(async move {
            self.directory.remove_all().await;
            self.local.stop().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::routes::{BackendGroup, ListenerConfig, Route};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TOKEN: &str = "fleet-test-token";

    /// Pods as the test says they are; what was published.
    #[derive(Default)]
    struct Pods {
        pods: Mutex<Vec<ProxyPod>>,
        published: Mutex<Vec<String>>,
    }

    impl PodSource for Pods {
        fn pods(&self) -> BoxFuture<'_, Result<Vec<ProxyPod>, ServerError>> {
            Box::pin(async move { Ok(lock(&self.pods).clone()) })
        }
        fn publish(&self, routes_json: String) -> BoxFuture<'_, Result<(), ServerError>> {
            Box::pin(async move {
                lock(&self.published).push(routes_json);
                Ok(())
            })
        }
        fn token(&self) -> BoxFuture<'_, Result<String, ServerError>> {
            Box::pin(async move { Ok(TOKEN.to_string()) })
        }
    }

    /// A real proxy as a pod on its own loopback address, its token from a file.
    async fn pod(
        dir: &std::path::Path,
        ip: &str,
        seed: Option<std::path::PathBuf>,
    ) -> (ProxyPod, ferry_proxy::RunningProxy) {
        let token = dir.join("token");
        std::fs::write(&token, TOKEN).expect("token");
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        let running = ferry_proxy::start(
            ferry_proxy::ProxyConfig {
                state_dir: dir.join(format!("state-{ip}-{}", now_ms())),
                admin_listen: SocketAddr::new(ip, 0),
            },
            ferry_proxy::ProxyOptions {
                admin_token_file: Some(token),
                seed_routes: seed,
                listen_ip: Some(ip),
                workers: 1,
                drain_timeout: Duration::from_secs(2),
                ..ferry_proxy::ProxyOptions::default()
            },
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("proxy");
        (
            ProxyPod {
                name: format!("ferry-proxy-{ip}"),
                admin: running.admin_addr,
            },
            running,
        )
    }

    /// An upstream answering `ok` to every request, one per connection.
    async fn upstream() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = socket.read(&mut buf).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        addr
    }

    fn table(port: u16, endpoints: &[SocketAddr]) -> RouteTable {
        RouteTable {
            generation: 0,
            listeners: vec![ListenerConfig::new(
                "shop/production".to_string(),
                SocketAddr::from(([0, 0, 0, 0], port)),
                vec![Route {
                    service: "web".into(),
                    path_prefix: "/".into(),
                    backends: vec![BackendGroup {
                        version: "1.0.0".into(),
                        weight: 10_000,
                        endpoints: endpoints.to_vec(),
                    }],
                    preview: None,
                    sticky: None,
                    upstream_timeout_ms: None,
                }],
            )],
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.2:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a port")
    }

    async fn served_generation(pod: &ProxyPod) -> u64 {
        let stats: StatsSnapshot = reqwest::Client::new()
            .get(format!("http://{}/v1/stats", pod.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats.generation
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_ready_pod_gets_the_table_before_it_is_acknowledged() {
        let dir = tempfile::tempdir().expect("dir");
        let source = Arc::new(Pods::default());
        let fleet = Fleet::new(source.clone());
        let (a, proxy_a) = pod(dir.path(), "127.0.0.2", None).await;
        let (b, proxy_b) = pod(dir.path(), "127.0.0.3", None).await;
        let up = upstream().await;
        let port = free_port();

        // No pod ready: nothing is acknowledged.
        assert!(!fleet.push(table(port, &[up])).await.expect("push"));
        assert_eq!(fleet.acknowledged(), None);

        *lock(&source.pods) = vec![a.clone(), b.clone()];
        tokio::time::sleep(PODS_FRESH).await;
        assert!(fleet.push(table(port, &[up])).await.expect("push"));
        let acked = fleet.acknowledged().expect("acknowledged");
        assert_eq!(served_generation(&a).await, acked.generation);
        assert_eq!(served_generation(&b).await, acked.generation);
        // Saved first for pods that start later.
        let published: RouteTable =
            serde_json::from_str(lock(&source.published).last().expect("published"))
                .expect("a table");
        assert_eq!(published, acked);
        // Real traffic through each pod, on its own address.
        for ip in ["127.0.0.2", "127.0.0.3"] {
            let body = reqwest::get(format!("http://{ip}:{port}/"))
                .await
                .expect("through the pod")
                .text()
                .await
                .expect("body");
            assert_eq!(body, "ok");
        }
        // The same table again: nothing sent.
        assert!(!fleet.push(table(port, &[up])).await.expect("push"));

        // A pod that becomes ready later gets the current table.
        let seed = dir.path().join("seed.json");
        std::fs::write(&seed, lock(&source.published).last().expect("table")).expect("seed");
        let (c, proxy_c) = pod(dir.path(), "127.0.0.4", None).await;
        lock(&source.pods).push(c.clone());
        tokio::time::sleep(PODS_FRESH).await;
        assert!(fleet.push(table(port, &[up])).await.expect("push"));
        assert_eq!(served_generation(&c).await, acked.generation);

        // A pod that does not answer: the new table is not acknowledged.
        proxy_c.shutdown.cancel();
        let _ = proxy_c.handle.await;
        let other = upstream().await;
        assert!(fleet.push(table(port, &[other])).await.is_err());
        assert_eq!(
            fleet.acknowledged().map(|t| t.generation),
            Some(acked.generation)
        );
        // Nor is an endpoint drained while it does not answer.
        assert!(fleet.endpoint_usage(up).await.is_err());
        // Once it is gone from the ready pods, the others take the table; `up` drains.
        lock(&source.pods).retain(|p| p != &c);
        tokio::time::sleep(PODS_FRESH).await;
        assert!(fleet.push(table(port, &[other])).await.expect("push"));
        assert_ne!(
            fleet.acknowledged().map(|t| t.generation),
            Some(acked.generation)
        );
        let usage = fleet.endpoint_usage(up).await.expect("usage");
        assert!(usage.drained(), "{usage:?}");
        let usage = fleet.endpoint_usage(other).await.expect("usage");
        assert_eq!(usage.listed, 2, "listed by both pods: {usage:?}");

        // A pod restarted from the seed (an older table) is noticed and brought up to date.
        proxy_a.shutdown.cancel();
        let _ = proxy_a.handle.await;
        let (a2, proxy_a2) = pod(dir.path(), "127.0.0.2", Some(seed)).await;
        *lock(&source.pods) = vec![a2.clone(), b.clone()];
        fleet.ensure_alive().await.expect("checked");
        assert_eq!(served_generation(&a2).await, acked.generation, "the seed");
        assert!(fleet.push(table(port, &[other])).await.expect("push"));
        assert_eq!(
            served_generation(&a2).await,
            fleet.acknowledged().expect("acked").generation
        );
        for p in [proxy_a2, proxy_b] {
            p.shutdown.cancel();
            let _ = p.handle.await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fleet_s_counters_add_up_and_never_go_backwards() {
        let dir = tempfile::tempdir().expect("dir");
        let source = Arc::new(Pods::default());
        let fleet = Fleet::new(source.clone());
        let (a, proxy_a) = pod(dir.path(), "127.0.0.5", None).await;
        let (b, proxy_b) = pod(dir.path(), "127.0.0.6", None).await;
        *lock(&source.pods) = vec![a.clone(), b.clone()];
        let up = upstream().await;
        let port = free_port();
        fleet.push(table(port, &[up])).await.expect("push");
        let send = |ip: &'static str, n: usize| async move {
            for _ in 0..n {
                reqwest::get(format!("http://{ip}:{port}/"))
                    .await
                    .expect("request");
            }
        };
        send("127.0.0.5", 3).await;
        send("127.0.0.6", 2).await;
        let requests = |s: &StatsSnapshot| {
            s.versions
                .iter()
                .filter(|v| v.version == "1.0.0")
                .map(|v| v.requests)
                .sum::<u64>()
        };
        let first = fleet.stats().await;
        assert_eq!(requests(&first), 5, "{first:?}");
        let merged = first
            .versions
            .iter()
            .find(|v| v.version == "1.0.0")
            .expect("the version");
        assert_eq!(
            decode_histogram(&merged.histogram_us)
                .expect("histogram")
                .len(),
            5,
            "the histograms are merged"
        );
        // A pod restarts (its counters start again from 0) and another goes away: the
        // fleet's total keeps what they had counted.
        proxy_a.shutdown.cancel();
        let _ = proxy_a.handle.await;
        let (a2, proxy_a2) = pod(dir.path(), "127.0.0.5", None).await;
        *lock(&source.pods) = vec![a2.clone()];
        tokio::time::sleep(PODS_FRESH).await;
        fleet.push(table(port, &[up])).await.expect("push");
        send("127.0.0.5", 1).await;
        let second = fleet.stats().await;
        assert_eq!(requests(&second), 6, "{second:?}");
        assert_eq!(second.started_at_ms, first.started_at_ms);
        for p in [proxy_a2, proxy_b] {
            p.shutdown.cancel();
            let _ = p.handle.await;
        }
    }

    /// The local proxy: records the tables it is given.
    #[derive(Default)]
    struct Local(Mutex<Vec<RouteTable>>);

    impl DataPlane for Local {
        fn ensure_alive(&self) -> BoxFuture<'_, Result<(), ServerError>> {
            Box::pin(async { Ok(()) })
        }
        fn acknowledged(&self) -> Option<RouteTable> {
            lock(&self.0).last().cloned()
        }
        fn push(&self, table: RouteTable) -> BoxFuture<'_, Result<bool, ServerError>> {
            Box::pin(async move {
                lock(&self.0).push(table);
                Ok(true)
            })
        }
        fn stats(&self) -> BoxFuture<'_, Result<StatsSnapshot, ServerError>> {
            Box::pin(async { Ok(StatsSnapshot::default()) })
        }
        fn endpoint_usage(
            &self,
            addr: SocketAddr,
        ) -> BoxFuture<'_, Result<EndpointUsage, ServerError>> {
            Box::pin(async move {
                Ok(EndpointUsage {
                    addr,
                    listed: 0,
                    in_flight: 0,
                })
            })
        }
        fn metrics_text(&self) -> BoxFuture<'_, Result<String, ServerError>> {
            Box::pin(async { Ok(String::new()) })
        }
        fn stop(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    /// `shop/production` is a fleet environment whose pods do not exist yet; `shop/staging`
    /// is served locally.
    struct NoFleetYet;

    impl FleetDirectory for NoFleetYet {
        fn plane_of(&self, _app: &str, env: &str) -> Plane {
            match env {
                "production" => Plane::Pending,
                _ => Plane::Local,
            }
        }
        fn fleets(&self) -> Vec<(String, Arc<Fleet>)> {
            Vec::new()
        }
        fn remove_all(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_fleet_environment_s_listeners_never_go_to_the_local_proxy() {
        let local = Arc::new(Local::default());
        let planes = Planes::new(local.clone(), Arc::new(NoFleetYet));
        let up: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let mut both = table(18080, &[up]);
        let mut staging = both.listeners[0].clone();
        staging.id = "shop/staging".to_string();
        both.listeners.push(staging);
        planes.push(both).await.expect("push");
        let pushed = lock(&local.0).last().cloned().expect("a table");
        let ids: Vec<&str> = pushed.listeners.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["shop/staging"]);
        // Nor is it acknowledged: what waits on its routes keeps waiting.
        let acked = planes.acknowledged().expect("acknowledged");
        assert!(acked.listeners.iter().all(|l| l.id != "shop/production"));
    }

    #[test]
    fn metrics_of_several_pods_are_one_exposition() {
        let pod = |n: u64| {
            format!(
                "# HELP ferry_requests Requests.\n# TYPE ferry_requests counter\nferry_requests_total{{version=\"1\"}} {n}\nferry_up 1\n# EOF\n"
            )
        };
        let text = merge_metrics(&[
            (Some("p-a".to_string()), pod(3)),
            (Some("p-b".to_string()), pod(4)),
        ]);
        assert_eq!(
            text,
            "# HELP ferry_requests Requests.\n# TYPE ferry_requests counter\nferry_requests_total{pod=\"p-a\",version=\"1\"} 3\nferry_requests_total{pod=\"p-b\",version=\"1\"} 4\nferry_up{pod=\"p-a\"} 1\nferry_up{pod=\"p-b\"} 1\n# EOF\n"
        );
    }
}
