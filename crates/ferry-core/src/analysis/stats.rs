//! Inputs of the judges: a window of one version's proxy stats, and what external checks
//! observed.

use serde::{Deserialize, Serialize};

/// A latency distribution as a list of `(upper bound in µs, count)` buckets: `count`
/// requests took more than the previous bucket's bound and at most this bucket's bound.
/// The judges take each bucket's requests at its bound (as HDR histograms report
/// "highest equivalent values"), and treat the requests of one bucket as tied.
///
/// Always normalized: bounds strictly increasing, no empty bucket. Serializes as a JSON
/// array of pairs, e.g. `[[1000, 12], [2000, 3]]`. The controller converts an HDR histogram
/// by pushing each recorded value's highest-equivalent value with its count; tests may give
/// every sample its own bucket ([`LatencyBins::from_samples`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "Vec<(u64, u64)>", into = "Vec<(u64, u64)>")]
pub struct LatencyBins {
    bins: Vec<(u64, u64)>,
}

impl From<Vec<(u64, u64)>> for LatencyBins {
    fn from(bins: Vec<(u64, u64)>) -> Self {
        LatencyBins::from_bins(bins)
    }
}

impl From<LatencyBins> for Vec<(u64, u64)> {
    fn from(bins: LatencyBins) -> Self {
        bins.bins
    }
}

impl LatencyBins {
    pub fn new() -> LatencyBins {
        LatencyBins::default()
    }

    /// Buckets in any order; equal bounds are added up, empty buckets dropped.
    pub fn from_bins(bins: impl IntoIterator<Item = (u64, u64)>) -> LatencyBins {
        let mut bins: Vec<(u64, u64)> = bins.into_iter().filter(|&(_, c)| c > 0).collect();
        bins.sort_unstable_by_key(|&(b, _)| b);
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(bins.len());
        for (bound, count) in bins {
            match out.last_mut() {
                Some((b, c)) if *b == bound => *c = c.saturating_add(count),
                _ => out.push((bound, count)),
            }
        }
        LatencyBins { bins: out }
    }

    /// One bucket per distinct sample (exact values, µs).
    pub fn from_samples(samples_us: &[u64]) -> LatencyBins {
        LatencyBins::from_bins(samples_us.iter().map(|&v| (v, 1)))
    }

    /// Adds `count` requests of at most `upper_us`.
    pub fn add(&mut self, upper_us: u64, count: u64) {
        if count == 0 {
            return;
        }
        match self.bins.binary_search_by_key(&upper_us, |&(b, _)| b) {
            Ok(i) => self.bins[i].1 = self.bins[i].1.saturating_add(count),
            Err(i) => self.bins.insert(i, (upper_us, count)),
        }
    }

    /// The buckets, bounds strictly increasing, counts non-zero.
    pub fn bins(&self) -> &[(u64, u64)] {
        &self.bins
    }

    /// Number of requests.
    pub fn total(&self) -> u64 {
        self.bins
            .iter()
            .fold(0u64, |acc, &(_, c)| acc.saturating_add(c))
    }

    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// Both distributions together (e.g. all services of a release).
    pub fn merge(&self, other: &LatencyBins) -> LatencyBins {
        LatencyBins::from_bins(self.bins.iter().chain(other.bins.iter()).copied())
    }

    /// This cumulative distribution minus an earlier one of the same counters: the requests
    /// recorded in between (counts saturate at zero).
    pub fn saturating_sub(&self, earlier: &LatencyBins) -> LatencyBins {
        LatencyBins::from_bins(self.bins.iter().map(|&(bound, count)| {
            let before = earlier
                .bins
                .binary_search_by_key(&bound, |&(b, _)| b)
                .map(|i| earlier.bins[i].1)
                .unwrap_or(0);
            (bound, count.saturating_sub(before))
        }))
    }

    /// Nearest-rank quantile, `q` in `0..=1`: the bound of the bucket holding the request
    /// of rank `max(1, ceil(q·n))` — the same "highest equivalent value" HDR histograms
    /// report. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = rank_for(q, n);
        let mut seen = 0u64;
        for &(bound, count) in &self.bins {
            seen = seen.saturating_add(count);
            if seen >= rank {
                return Some(bound);
            }
        }
        self.bins.last().map(|&(b, _)| b)
    }

    /// [`quantile`](Self::quantile) with `p` in `0..=100` (`percentile(95.0)` = p95).
    pub fn percentile(&self, p: f64) -> Option<u64> {
        self.quantile(p / 100.0)
    }

    /// Requests slower than `threshold_us`, each bucket's requests taken at its bound (the
    /// same convention as [`quantile`](Self::quantile)).
    pub fn count_above(&self, threshold_us: u64) -> u64 {
        self.bins
            .iter()
            .filter(|&&(bound, _)| bound > threshold_us)
            .fold(0u64, |acc, &(_, c)| acc.saturating_add(c))
    }
}

/// Rank (1-based) of the nearest-rank `q` quantile among `n` values.
pub(crate) fn rank_for(q: f64, n: u64) -> u64 {
    let q = if q.is_nan() { 0.5 } else { q.clamp(0.0, 1.0) };
    ((q * n as f64).ceil() as u64).clamp(1, n.max(1))
}

/// One version's traffic over a window: what the proxy saw between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct WindowStats {
    /// Completed requests.
    pub requests: u64,
    /// Requests answered with a status >= 500.
    pub errors_5xx: u64,
    /// Length of the window in milliseconds.
    pub duration_ms: i64,
    /// Latency to response headers, µs.
    pub latency_us: LatencyBins,
}

impl WindowStats {
    /// The window between two cumulative snapshots of the same counters: counts are
    /// `later − earlier` (saturating), `duration_ms` too (so give each cumulative snapshot
    /// the time since its counters started, or any common origin).
    pub fn between(earlier: &WindowStats, later: &WindowStats) -> WindowStats {
        WindowStats {
            requests: later.requests.saturating_sub(earlier.requests),
            errors_5xx: later.errors_5xx.saturating_sub(earlier.errors_5xx),
            duration_ms: later.duration_ms.saturating_sub(earlier.duration_ms).max(0),
            latency_us: later.latency_us.saturating_sub(&earlier.latency_us),
        }
    }

    /// Two versions' (or services') windows over the same period added up; the duration is
    /// the longer of the two.
    pub fn merge(&self, other: &WindowStats) -> WindowStats {
        WindowStats {
            requests: self.requests.saturating_add(other.requests),
            errors_5xx: self.errors_5xx.saturating_add(other.errors_5xx),
            duration_ms: self.duration_ms.max(other.duration_ms),
            latency_us: self.latency_us.merge(&other.latency_us),
        }
    }

    /// 5xx answers, never more than the requests.
    pub fn errors(&self) -> u64 {
        self.errors_5xx.min(self.requests)
    }
}

/// What the controller observed running an external check (`prometheus`, `http`,
/// `command`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Observation {
    /// A number (a Prometheus sample, a numeric JSON field), judged against `max` / `min`.
    Value(f64),
    /// The check passed (HTTP answer as expected, command exited 0).
    Passed,
    /// The check ran and failed: why, in one line (`status 503, expected 200`, `exit 3`).
    FailedWith(String),
    /// The check could not run (connection refused, timeout, bad query): Inconclusive.
    Error(String),
}
