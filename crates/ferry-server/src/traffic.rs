//! Per-version traffic in `ferry status`: requests, request rate, error rate and latency
//! percentiles over the last minute, from the proxy's cumulative counters. The controller
//! samples them every few seconds ([`Sampler::due`], [`Sampler::record`]); a status
//! compares the latest sample with the oldest one of the minute before it from the same
//! proxy process (or with zero, the proxy's start, when there is none). Status calls never
//! ask the proxy themselves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use ferry_core::analysis::{LatencyBins, WindowStats};
use ferry_core::api::{TrafficStatus, TrafficView};
use ferry_proxy::stats::{StatsSnapshot, decode_histogram};

use crate::lock;

/// How far back a status looks.
pub const WINDOW_MS: i64 = 60_000;
/// How often the controller samples the proxy's counters.
const SAMPLE_EVERY_MS: i64 = 5_000;

/// Recent snapshots of the proxy's counters, oldest first.
#[derive(Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<StatsSnapshot>>,
}

impl Sampler {
    /// Whether a new sample is due at `now_ms`.
    pub fn due(&self, now_ms: i64) -> bool {
        lock(&self.samples)
            .back()
            .is_none_or(|last| now_ms - last.taken_at_ms >= SAMPLE_EVERY_MS)
    }

    /// Keeps `stats`, dropping samples no status will compare with any more.
    pub fn record(&self, stats: StatsSnapshot) {
        let mut samples = lock(&self.samples);
        let now = stats.taken_at_ms;
        // The oldest sample still inside the window (and one just older) is enough.
        while samples.len() > 1 && now - samples[1].taken_at_ms >= WINDOW_MS {
            samples.pop_front();
        }
        samples.push_back(stats);
    }

    /// The traffic of listener `listener_id` (and its preview listener) over the minute
    /// before the latest sample; None before the first sample.
    pub fn status(&self, listener_id: &str) -> Option<TrafficStatus> {
        let samples = lock(&self.samples);
        let now = samples.back()?;
        let baseline = samples.iter().find(|s| {
            s.started_at_ms == now.started_at_ms
                && now.taken_at_ms - s.taken_at_ms <= WINDOW_MS
                && s.taken_at_ms < now.taken_at_ms
        });
        Some(window(listener_id, baseline, now))
    }
}

/// Pure: the rows between `earlier` (None: the proxy's start) and `later`. A version is
/// listed when it served in the window or has endpoints in the current table.
pub fn window(
    listener_id: &str,
    earlier: Option<&StatsSnapshot>,
    later: &StatsSnapshot,
) -> TrafficStatus {
    let end = cumulative(listener_id, later);
    let start = earlier
        .map(|s| cumulative(listener_id, s))
        .unwrap_or_default();
    let listed: Vec<(&str, &str)> = later
        .versions
        .iter()
        .filter(|v| ours(listener_id, &v.listener) && !v.endpoints.is_empty())
        .map(|v| (v.service.as_str(), v.version.as_str()))
        .collect();
    let window_ms = later.taken_at_ms - earlier.map_or(later.started_at_ms, |s| s.taken_at_ms);
    let versions = end
        .iter()
        .filter_map(|((service, version), total)| {
            let mut counted = match start.get(&(service.clone(), version.clone())) {
                Some(before) => WindowStats::between(before, total),
                None => total.clone(),
            };
            counted.duration_ms = window_ms;
            let shown =
                counted.requests > 0 || listed.contains(&(service.as_str(), version.as_str()));
            shown.then(|| TrafficView::from_window(service, version, &counted))
        })
        .collect();
    TrafficStatus {
        window_s: window_ms.max(0) as f64 / 1000.0,
        since_proxy_start: earlier.is_none(),
        versions,
    }
}

fn ours(listener_id: &str, listener: &str) -> bool {
    listener
        .strip_prefix(listener_id)
        .is_some_and(|rest| rest.is_empty() || rest == "/preview")
}

/// Cumulative counters per (service, version) of the listener (its preview listener
/// added); requests that matched no route or version are left out.
pub(crate) fn cumulative(
    listener_id: &str,
    stats: &StatsSnapshot,
) -> BTreeMap<(String, String), WindowStats> {
    let mut out: BTreeMap<(String, String), WindowStats> = BTreeMap::new();
    for v in stats.versions.iter().filter(|v| {
        ours(listener_id, &v.listener) && !v.service.is_empty() && !v.version.is_empty()
    }) {
        let mut latency = LatencyBins::default();
        if let Ok(histogram) = decode_histogram(&v.histogram_us) {
            for value in histogram.iter_recorded() {
                latency.add(
                    histogram.highest_equivalent(value.value_iterated_to()),
                    value.count_at_value(),
                );
            }
        }
        let counted = WindowStats {
            requests: v.requests,
            errors_5xx: v.errors_5xx,
            duration_ms: 0,
            latency_us: latency,
        };
        let total = out
            .entry((v.service.clone(), v.version.clone()))
            .or_default();
        *total = total.merge(&counted);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::stats::{EndpointStats, LatencyPercentiles, VersionStats};

    fn histogram(latencies_us: &[u64]) -> String {
        use base64::Engine;
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for &v in latencies_us {
            h.record(v).unwrap();
        }
        let mut bytes = Vec::new();
        use hdrhistogram::serialization::Serializer;
        hdrhistogram::serialization::V2Serializer::new()
            .serialize(&h, &mut bytes)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn row(
        listener: &str,
        version: &str,
        requests: u64,
        errors: u64,
        latencies_us: &[u64],
        listed: bool,
    ) -> VersionStats {
        VersionStats {
            listener: listener.into(),
            service: "web".into(),
            version: version.into(),
            requests,
            errors_5xx: errors,
            client_errors: 0,
            in_flight: 0,
            latency_ms: LatencyPercentiles::default(),
            histogram_us: histogram(latencies_us),
            endpoints: if listed {
                vec![EndpointStats {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    in_flight: 0,
                    ejected_until_ms: None,
                }]
            } else {
                Vec::new()
            },
        }
    }

    fn snapshot(taken_at_ms: i64, versions: Vec<VersionStats>) -> StatsSnapshot {
        StatsSnapshot {
            started_at_ms: 0,
            taken_at_ms,
            generation: 1,
            versions,
            ..Default::default()
        }
    }

    #[test]
    fn a_status_counts_the_last_minute_per_version_of_its_environment() {
        let sampler = Sampler::default();
        let old = vec![1_000u64; 10];
        sampler.record(snapshot(
            0,
            vec![row("shop/prod", "1.0.0", 10, 0, &old, true)],
        ));
        sampler.record(snapshot(
            50_000,
            vec![row("shop/prod", "1.0.0", 10, 0, &old, true)],
        ));
        let mut newer = old.clone();
        newer.extend([5_000u64; 90]);
        sampler.record(snapshot(
            70_000,
            vec![
                row("shop/prod", "1.0.0", 100, 9, &newer, false),
                row("shop/prod/preview", "2.0.0", 0, 0, &[], true),
                row("shop/staging", "1.0.0", 500, 0, &[], true),
                row("shop/prod", "0.9.0", 0, 0, &[], false),
            ],
        ));
        assert!(!sampler.due(74_000) && sampler.due(75_000));
        let status = sampler.status("shop/prod").expect("sampled");
        assert!(!status.since_proxy_start);
        assert_eq!(status.window_s, 20.0, "compared with the sample of 50 s");
        let rows: Vec<(&str, u64)> = status
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.requests))
            .collect();
        assert_eq!(rows, vec![("1.0.0", 90), ("2.0.0", 0)]);
        let v1 = &status.versions[0];
        assert_eq!(v1.rate_per_s, 4.5);
        assert!((v1.error_rate - 0.1).abs() < 1e-9);
        assert!(
            v1.p50_ms.is_some_and(|p| (4.9..=5.1).contains(&p)),
            "{v1:?}"
        );

        let fresh = Sampler::default();
        assert!(fresh.status("shop/prod").is_none());
        let latest = lock(&sampler.samples).back().cloned().expect("a sample");
        fresh.record(latest);
        let status = fresh.status("shop/prod").expect("sampled");
        assert!(status.since_proxy_start);
        assert_eq!(status.window_s, 70.0);
        assert_eq!(status.versions[0].requests, 100);
    }
}
