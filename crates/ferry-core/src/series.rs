//! Per-version traffic over a rollout, as the deployment page draws it: request rate, error
//! rate and p95 latency of each version, one point per sampling interval.
//!
//! The controller turns two cumulative proxy snapshots into a [`SeriesPoint`] per version
//! ([`SeriesPoint::between`]); the store keeps at most [`MAX_POINTS`] points per version of
//! a deployment, halving the resolution ([`downsample`]) when a long rollout goes over.

use serde::{Deserialize, Serialize};

use crate::analysis::WindowStats;

/// Most points kept per version of one deployment (two versions: 240 rows at most).
pub const MAX_POINTS: usize = 120;

/// One version's traffic over one interval, ending at `t_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// End of the interval (Unix ms).
    pub t_ms: i64,
    /// Length of the interval (ms, > 0).
    pub span_ms: i64,
    /// Requests completed in the interval.
    pub requests: u64,
    /// Of those, answered with a status >= 500 (never more than `requests`).
    pub errors: u64,
    /// p95 latency to response headers over the interval (µs); None without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_us: Option<u64>,
}

impl SeriesPoint {
    /// The interval between two cumulative windows of one version's counters, `span_ms`
    /// long and ending at `t_ms`.
    pub fn between(
        earlier: &WindowStats,
        later: &WindowStats,
        t_ms: i64,
        span_ms: i64,
    ) -> SeriesPoint {
        let window = WindowStats::between(earlier, later);
        SeriesPoint {
            t_ms,
            span_ms,
            requests: window.requests,
            errors: window.errors(),
            p95_us: window.latency_us.percentile(95.0),
        }
    }

    /// Requests per second.
    pub fn rate_per_s(&self) -> f64 {
        if self.span_ms <= 0 {
            return 0.0;
        }
        self.requests as f64 * 1000.0 / self.span_ms as f64
    }

    /// Share of 5xx answers in percent; None without requests.
    pub fn error_pct(&self) -> Option<f64> {
        (self.requests > 0)
            .then(|| self.errors.min(self.requests) as f64 * 100.0 / self.requests as f64)
    }

    /// p95 latency in milliseconds.
    pub fn p95_ms(&self) -> Option<f64> {
        self.p95_us.map(|us| us as f64 / 1000.0)
    }

    /// This interval and the one right after it as one interval. The p95 is the higher of
    /// the two: an upper bound of the p95 of both together (at least 95 % of each side's
    /// requests were no slower).
    pub fn merge(&self, later: &SeriesPoint) -> SeriesPoint {
        SeriesPoint {
            t_ms: later.t_ms.max(self.t_ms),
            span_ms: self.span_ms.saturating_add(later.span_ms),
            requests: self.requests.saturating_add(later.requests),
            errors: self.errors.saturating_add(later.errors),
            p95_us: match (self.p95_us, later.p95_us) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// One version's points over a rollout, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionSeries {
    pub version: String,
    pub points: Vec<SeriesPoint>,
}

/// `points` (oldest first) with at most `max` left: while there are more, each pair of
/// neighbours becomes one point (an odd last point stays as it is). Totals of requests and
/// errors, and the time covered, are kept.
pub fn downsample(points: &[SeriesPoint], max: usize) -> Vec<SeriesPoint> {
    let max = max.max(1);
    let mut points = points.to_vec();
    while points.len() > max {
        points = points
            .chunks(2)
            .map(|pair| match pair {
                [a, b] => a.merge(b),
                [a] => *a,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::LatencyBins;

    fn point(t_ms: i64, requests: u64, errors: u64, p95_us: Option<u64>) -> SeriesPoint {
        SeriesPoint {
            t_ms,
            span_ms: 1_000,
            requests,
            errors,
            p95_us,
        }
    }

    #[test]
    fn a_point_is_the_difference_of_two_cumulative_windows() {
        let earlier = WindowStats {
            requests: 100,
            errors_5xx: 4,
            duration_ms: 0,
            latency_us: LatencyBins::from_bins([(1_000, 100)]),
        };
        let later = WindowStats {
            requests: 120,
            errors_5xx: 9,
            duration_ms: 0,
            // 20 new requests: 18 at 1 ms, 2 at 50 ms → p95 (rank 19) is 50 ms
            latency_us: LatencyBins::from_bins([(1_000, 118), (50_000, 2)]),
        };
        let p = SeriesPoint::between(&earlier, &later, 5_000, 2_000);
        assert_eq!(
            p,
            SeriesPoint {
                t_ms: 5_000,
                span_ms: 2_000,
                requests: 20,
                errors: 5,
                p95_us: Some(50_000)
            }
        );
        assert_eq!(p.rate_per_s(), 10.0);
        assert_eq!(p.error_pct(), Some(25.0));
        assert_eq!(p.p95_ms(), Some(50.0));
        // no traffic: no error rate, no latency, a rate of 0
        let idle = SeriesPoint::between(&later, &later, 6_000, 1_000);
        assert_eq!(
            (idle.error_pct(), idle.p95_us, idle.rate_per_s()),
            (None, None, 0.0)
        );
    }

    #[test]
    fn downsampling_halves_until_it_fits_and_keeps_the_totals() {
        let points: Vec<SeriesPoint> = (0..9)
            .map(|i| {
                point(
                    1_000 * (i + 1),
                    10,
                    i as u64 % 2,
                    (i != 4).then_some(100 * i as u64),
                )
            })
            .collect();
        assert_eq!(downsample(&points, 9), points, "fits already");
        let half = downsample(&points, 5);
        assert_eq!(half.len(), 5);
        assert_eq!(
            half[0],
            SeriesPoint {
                t_ms: 2_000,
                span_ms: 2_000,
                requests: 20,
                errors: 1,
                p95_us: Some(100)
            }
        );
        // the pair (4, 5): point 4 had no latency; the other's stands
        assert_eq!(half[2].p95_us, Some(500));
        assert_eq!(half[4], points[8], "the odd last point stays");
        let quarter = downsample(&points, 3);
        assert_eq!(quarter.len(), 3);
        for list in [&half, &quarter] {
            assert_eq!(list.iter().map(|p| p.requests).sum::<u64>(), 90);
            assert_eq!(list.iter().map(|p| p.errors).sum::<u64>(), 4);
            assert_eq!(list.iter().map(|p| p.span_ms).sum::<i64>(), 9_000);
            assert_eq!(list.last().map(|p| p.t_ms), Some(9_000));
        }
        assert_eq!(
            downsample(&points, 0).len(),
            1,
            "never empty for a non-empty series"
        );
    }
}
