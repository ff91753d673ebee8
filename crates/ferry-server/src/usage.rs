//! Replica CPU and memory as a share of their limit, for `ferry status` and the `cpu` and
//! `memory` alert conditions: every [`SAMPLE_EVERY`] one pass asks each runtime for the
//! usage of every replica it supervises ([`Runtime::usage`](ferry_runtime::Runtime::usage):
//! one pass over `/proc` for processes, one stats call per container), and keeps, per
//! replica, the latest counters and the shares [`ferry_core::usage::shares`] makes of them
//! against the service's `resources:` (else the host's CPUs and memory). In memory only: a
//! restarted server has shares again after two passes, and until then a CPU or memory alert
//! is not evaluated (nothing resolves for want of data).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::usage::{Counters, Limits, Shares};
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::lock;

/// How often replicas are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The latest counters and shares of each replica.
#[derive(Default)]
pub struct Sampler {
    replicas: Mutex<HashMap<String, (Counters, Shares)>>,
}

impl Sampler {
    /// The replica's shares at its latest sample (None: not sampled).
    pub fn shares(&self, id: &str) -> Option<Shares> {
        lock(&self.replicas).get(id).map(|(_, s)| *s)
    }

    /// Records one pass: `sampled` (replica id → its counters and limits); a replica not in
    /// it is forgotten (stopped, or no longer measurable).
    pub fn record(&self, sampled: Vec<(String, Counters, Limits)>) {
        let mut replicas = lock(&self.replicas);
        let mut next = HashMap::with_capacity(sampled.len());
        for (id, counters, limits) in sampled {
            let previous = replicas.remove(&id).map(|(c, _)| c);
            let shares = ferry_core::usage::shares(previous.as_ref(), &counters, &limits);
            next.insert(id, (counters, shares));
        }
        *replicas = next;
    }
}

/// The host's CPUs and memory (`MemTotal` of `/proc/meminfo`; 0 when unreadable: then no
/// memory share without a `resources.memory`).
fn host() -> (f64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0);
    (cpus, memory)
}

/// Samples every replica's usage until `shutdown`.
pub async fn run(controller: Arc<Controller>, shutdown: CancellationToken) {
    let (host_cpus, host_memory) = host();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = pass(&controller, host_cpus, host_memory).await {
            tracing::warn!(error = %e, "sampling the replicas' CPU and memory failed");
        }
    }
}

async fn pass(
    controller: &Controller,
    host_cpus: f64,
    host_memory: u64,
) -> Result<(), crate::error::ServerError> {
    let usage = controller.runtime().usage().await;
    let at_ms = controller.now_ms();
    let apps = controller.apps().await?;
    let replicas = controller.store().list_replicas(None, None).await?;
    let sampled = replicas
        .into_iter()
        .filter_map(|r| {
            let u = usage.get(&r.id)?;
            let resources = apps
                .get(&r.app)
                .and_then(|(_, m)| m.services.get(&r.service))
                .and_then(|s| s.resources.as_ref());
            Some((
                r.id,
                Counters {
                    cpu_ns: u.cpu_ns,
                    memory_bytes: u.memory_bytes,
                    at_ms,
                },
                Limits::of(resources, host_cpus, host_memory),
            ))
        })
        .collect();
    controller.usage.record(sampled);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_need_two_samples_and_stopped_replicas_are_forgotten() {
        let sampler = Sampler::default();
        let limits = Limits {
            cpus: 0.5,
            memory_bytes: 1000,
        };
        let at = |cpu_ms: u64, at_ms: i64| Counters {
            cpu_ns: cpu_ms * 1_000_000,
            memory_bytes: 900,
            at_ms,
        };
        sampler.record(vec![("a".into(), at(0, 0), limits)]);
        let first = sampler.shares("a").unwrap();
        assert_eq!((first.cpu, first.memory), (None, Some(0.9)));
        sampler.record(vec![("a".into(), at(2_000, 5_000), limits)]);
        assert_eq!(sampler.shares("a").unwrap().cpu, Some(0.8));
        sampler.record(Vec::new());
        assert_eq!(sampler.shares("a"), None);
    }

    #[test]
    fn the_host_has_cpus_and_memory() {
        let (cpus, memory) = host();
        assert!(cpus >= 1.0);
        assert!(memory > 0);
    }
}
