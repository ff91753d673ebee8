//! A replica's CPU and memory as a share of its limit, from the cumulative counters a
//! runtime samples (CPU time used so far, resident memory now).
//!
//! The limit is the service's `resources:` (`cpus`, `memory`); without one, the whole host
//! (every CPU it has, all its memory), as `docker stats` measures an unlimited container.
//! CPU is the CPU time used between two samples over the wall time between them, divided by
//! the CPUs allowed: `1.0` is a replica using all of its `cpus`. The process runtime does
//! not enforce `resources:`, so a process may go above `1.0`; a container cannot (the
//! engine throttles it).

use crate::manifest::Resources;

/// What one sample of a replica gave: cumulative CPU time and memory held now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// CPU time used since the replica started, in nanoseconds (user + system, with its
    /// children and the rest of its process group for a process).
    pub cpu_ns: u64,
    /// Resident memory without the page cache, in bytes.
    pub memory_bytes: u64,
    /// When it was taken (ms since the Unix epoch).
    pub at_ms: i64,
}

/// What a share is relative to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub cpus: f64,
    pub memory_bytes: u64,
}

impl Limits {
    /// The service's `resources:`, each missing one replaced by the host's (`host_cpus`
    /// CPUs, `host_memory` bytes).
    pub fn of(resources: Option<&Resources>, host_cpus: f64, host_memory: u64) -> Limits {
        let cpus = resources
            .and_then(|r| r.cpus)
            .filter(|c| c.is_finite() && *c > 0.0)
            .unwrap_or(host_cpus);
        let memory_bytes = resources
            .and_then(|r| r.memory_bytes().ok().flatten())
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(host_memory);
        Limits { cpus, memory_bytes }
    }
}

/// The shares of a replica at its latest sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    /// None until two samples span some time.
    pub cpu: Option<f64>,
    pub memory: Option<f64>,
}

/// The shares from the replica's `previous` sample (None: its first) and its `latest`.
/// A counter that went backwards (the replica restarted, a child left the group) gives no
/// CPU share this time rather than a negative one.
pub fn shares(previous: Option<&Counters>, latest: &Counters, limits: &Limits) -> Shares {
    let cpu = previous.and_then(|p| {
        let wall_ms = latest.at_ms.checked_sub(p.at_ms).filter(|ms| *ms > 0)?;
        let used_ns = latest.cpu_ns.checked_sub(p.cpu_ns)?;
        (limits.cpus > 0.0).then(|| used_ns as f64 / (wall_ms as f64 * 1e6) / limits.cpus)
    });
    let memory =
        (limits.memory_bytes > 0).then(|| latest.memory_bytes as f64 / limits.memory_bytes as f64);
    Shares { cpu, memory }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cpu_ms: u64, memory_mib: u64, at_ms: i64) -> Counters {
        Counters {
            cpu_ns: cpu_ms * 1_000_000,
            memory_bytes: memory_mib << 20,
            at_ms,
        }
    }

    const HALF_CPU_256MI: Limits = Limits {
        cpus: 0.5,
        memory_bytes: 256 << 20,
    };

    #[test]
    fn cpu_is_time_used_over_wall_time_over_the_cpus_allowed() {
        // 2.5 s of CPU in 5 s of wall time = half a CPU = all of a 0.5 CPU limit
        let s = shares(
            Some(&at(1_000, 64, 10_000)),
            &at(3_500, 64, 15_000),
            &HALF_CPU_256MI,
        );
        assert_eq!(s.cpu, Some(1.0));
        assert_eq!(s.memory, Some(0.25));
        // idle
        let s = shares(
            Some(&at(1_000, 64, 10_000)),
            &at(1_000, 64, 15_000),
            &HALF_CPU_256MI,
        );
        assert_eq!(s.cpu, Some(0.0));
    }

    #[test]
    fn no_cpu_share_from_one_sample_a_backwards_counter_or_no_elapsed_time() {
        assert_eq!(shares(None, &at(1_000, 128, 1), &HALF_CPU_256MI).cpu, None);
        assert_eq!(
            shares(None, &at(1_000, 128, 1), &HALF_CPU_256MI).memory,
            Some(0.5)
        );
        let restarted = shares(Some(&at(9_000, 64, 0)), &at(10, 64, 5_000), &HALF_CPU_256MI);
        assert_eq!(restarted.cpu, None);
        let same_instant = shares(Some(&at(0, 64, 5)), &at(10, 64, 5), &HALF_CPU_256MI);
        assert_eq!(same_instant.cpu, None);
    }

    #[test]
    fn limits_come_from_resources_else_the_host() {
        let host = Limits::of(None, 8.0, 16 << 30);
        assert_eq!(
            host,
            Limits {
                cpus: 8.0,
                memory_bytes: 16 << 30
            }
        );
        let r = Resources {
            memory: Some("256Mi".into()),
            cpus: Some(0.5),
        };
        assert_eq!(Limits::of(Some(&r), 8.0, 16 << 30), HALF_CPU_256MI);
        let cpu_only = Resources {
            memory: None,
            cpus: Some(2.0),
        };
        assert_eq!(
            Limits::of(Some(&cpu_only), 8.0, 16 << 30),
            Limits {
                cpus: 2.0,
                memory_bytes: 16 << 30
            }
        );
        // a host whose memory could not be read gives no memory share
        assert_eq!(
            shares(None, &at(0, 64, 0), &Limits::of(None, 1.0, 0)).memory,
            None
        );
    }
}
