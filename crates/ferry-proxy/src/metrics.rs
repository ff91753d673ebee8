//! Hot-path counters per (listener, service, version), `/v1/stats` and `/metrics`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::flags::FlagCounters;
use crate::stats::{EndpointStats, FlagStats, LatencyPercentiles, VersionStats};
use crate::table::Endpoint;

/// Upper bounds (seconds) of the Prometheus histogram buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const BUCKETS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];
/// Highest latency the HDR histograms track (values above are clamped): 1 hour.
pub(crate) const HDR_MAX_US: u64 = 3_600_000_000;
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn new_hist() -> Histogram<u64> {
    // 2 significant digits (1 % precision) keeps each histogram around 30 KB.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, HDR_MAX_US, 2).expect("static histogram bounds are valid")
}

/// Shards per key: a power of two, at least one per CPU (so one per worker thread).
fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .clamp(1, 16)
        .next_power_of_two()
}

thread_local! {
    static SHARD: Cell<usize> = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Cell::new(NEXT.fetch_add(1, Relaxed))
    };
}

/// Makes the calling thread (data-plane worker `i`) record into shard `i` of every key,
/// so that no two workers write the same cache lines.
pub(crate) fn pin_shard(i: usize) {
    SHARD.with(|s| s.set(i));
}

/// The figures of one key that one worker thread records: cache-line aligned, so workers
/// on different cores never contend for them (the snapshot sums the shards).
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    requests: AtomicU64,
    errors_5xx: AtomicU64,
    client_errors: AtomicU64,
    codes: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_us: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl Shard {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors_5xx: AtomicU64::new(0),
            client_errors: AtomicU64::new(0),
            codes: Default::default(),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
        }
    }
}

/// Cumulative figures of one (listener, service, version).
#[derive(Debug)]
pub(crate) struct KeyStats {
    pub listener: Arc<str>,
    pub service: Arc<str>,
    pub version: Arc<str>,
    /// Created for a proxy-generated answer (no route / no backends), not a real group.
    synthetic: bool,
    in_flight: AtomicI64,
    /// A power-of-two count of shards, indexed by the recording thread.
    shards: Box<[Shard]>,
    endpoints: Mutex<Vec<Arc<Endpoint>>>,
    /// Its answers' figures per (flag, variant), from their `Ferry-Flags` header.
    pub flags: FlagCounters,
}

impl KeyStats {
    fn new(listener: &str, service: &str, version: &str, synthetic: bool) -> Self {
        Self {
            listener: listener.into(),
            service: service.into(),
            version: version.into(),
            synthetic,
            in_flight: AtomicI64::new(0),
            shards: (0..shard_count()).map(|_| Shard::new()).collect(),
            endpoints: Mutex::new(Vec::new()),
            flags: FlagCounters::default(),
        }
    }

    #[inline]
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn finish(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    /// The calling thread's shard.
    #[inline]
    fn shard(&self) -> &Shard {
        let i = SHARD.with(Cell::get) & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// A counter summed over the shards.
    fn total(&self, counter: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| counter(s).load(Relaxed)).sum()
    }

    /// Records one answered request. Cheap: a few uncontended atomics on the thread's own
    /// cache lines, and its own histogram's lock.
    #[inline]
    pub fn record(&self, status: u16, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let s = self.shard();
        s.requests.fetch_add(1, Relaxed);
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        s.codes[class].fetch_add(1, Relaxed);
        if status >= 500 {
            s.errors_5xx.fetch_add(1, Relaxed);
        }
        s.sum_us.fetch_add(us, Relaxed);
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            s.buckets[i].fetch_add(1, Relaxed);
        }
        if let Ok(mut h) = s.hist.lock() {
            h.saturating_record(us.clamp(1, HDR_MAX_US));
        }
    }

    /// Records a request the client spoiled (malformed, stalled or abandoned): it never
    /// counts against the version.
    #[inline]
    pub fn record_client_error(&self) {
        self.shard().client_errors.fetch_add(1, Relaxed);
    }

    fn merged_hist(&self) -> Histogram<u64> {
        let mut out = new_hist();
        for shard in self.shards.iter() {
            if let Ok(h) = shard.hist.lock() {
                let _ = out.add(&*h);
            }
        }
        out
    }

    pub fn set_endpoints(&self, eps: Vec<Arc<Endpoint>>) {
        if let Ok(mut e) = self.endpoints.lock() {
            *e = eps;
        }
    }

    fn snapshot(&self, now_ms: i64) -> VersionStats {
        let h = self.merged_hist();
        let q = |p: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(p) as f64 / 1000.0
            }
        };
        let mut buf = Vec::new();
        let _ = hdrhistogram::serialization::Serializer::serialize(
            &mut hdrhistogram::serialization::V2Serializer::new(),
            &h,
            &mut buf,
        );
        let endpoints = self
            .endpoints
            .lock()
            .map(|eps| {
                eps.iter()
                    .map(|e| EndpointStats {
                        addr: e.addr,
                        in_flight: e.in_flight(),
                        ejected_until_ms: e.ejected_until(now_ms),
                    })
                    .collect()
            })
            .unwrap_or_default();
        VersionStats {
            listener: self.listener.to_string(),
            service: self.service.to_string(),
            version: self.version.to_string(),
            requests: self.total(|s| &s.requests),
            errors_5xx: self.total(|s| &s.errors_5xx),
            client_errors: self.total(|s| &s.client_errors),
            in_flight: self.in_flight.load(Relaxed).max(0) as u64,
            latency_ms: LatencyPercentiles {
                p50: q(0.50),
                p90: q(0.90),
                p95: q(0.95),
                p99: q(0.99),
            },
            histogram_us: crate::stats::base64_encode(&buf),
            endpoints,
        }
    }

    fn visible(&self) -> bool {
        !self.synthetic
            || self.total(|s| &s.requests) > 0
            || self.total(|s| &s.client_errors) > 0
            || self.in_flight.load(Relaxed) > 0
    }
}

type Key = (String, String, String);

/// All keys ever created since start (counters are cumulative, so keys are never dropped).
#[derive(Debug, Default)]
pub(crate) struct StatsRegistry {
    keys: Mutex<BTreeMap<Key, Arc<KeyStats>>>,
}

impl StatsRegistry {
    pub fn key(
        &self,
        listener: &str,
        service: &str,
        version: &str,
        synthetic: bool,
    ) -> Arc<KeyStats> {
        let mut keys = match self.keys.lock() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        keys.entry((listener.to_owned(), service.to_owned(), version.to_owned()))
            .or_insert_with(|| Arc::new(KeyStats::new(listener, service, version, synthetic)))
            .clone()
    }

    fn all(&self) -> Vec<Arc<KeyStats>> {
        match self.keys.lock() {
            Ok(k) => k.values().filter(|k| k.visible()).cloned().collect(),
            Err(p) => p
                .into_inner()
                .values()
                .filter(|k| k.visible())
                .cloned()
                .collect(),
        }
    }

    pub fn snapshot(&self, now_ms: i64) -> Vec<VersionStats> {
        self.all().iter().map(|k| k.snapshot(now_ms)).collect()
    }

    /// Every key's per-flag figures.
    pub fn flag_snapshot(&self) -> Vec<FlagStats> {
        self.all()
            .iter()
            .flat_map(|k| k.flags.snapshot(&k.listener, &k.service, &k.version))
            .collect()
    }
}

/// Encodes the registry on each scrape of `/metrics`.
#[derive(Debug)]
pub(crate) struct MetricsCollector(pub Arc<StatsRegistry>);

impl Collector for MetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let keys = self.0.all();
        {
            let mut m = encoder.encode_descriptor(
                "ferry_proxy_requests",
                "Requests answered by the proxy, by status class.",
                None,
                MetricType::Counter,
            )?;
            for k in &keys {
                for (i, class) in CODE_CLASSES.iter().enumerate() {
                    let v = k.total(|s| &s.codes[i]);
                    if v == 0 {
                        continue;
                    }
                    let labels = [
                        ("listener", &*k.listener),
                        ("service", &*k.service),
                        ("version", &*k.version),
                        ("code", *class),
                    ];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "ferry_proxy_request_duration_seconds",
                "Latency from request received to response headers.",
                None,
                MetricType::Histogram,
            )?;
            for k in &keys {
                let labels = [
                    ("listener", &*k.listener),
                    ("service", &*k.service),
                    ("version", &*k.version),
                ];
                // The encoder accumulates: pass per-bucket counts, +Inf gets the rest.
                let total = k.total(|s| &s.requests);
                let mut below = 0u64;
                let mut buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .enumerate()
                    .map(|(j, le)| {
                        let c = k.total(|s| &s.buckets[j]);
                        below += c;
                        (*le, c)
                    })
                    .collect();
                buckets.push((f64::INFINITY, total.saturating_sub(below)));
                let count = total.max(below);
                let sum = k.total(|s| &s.sum_us) as f64 / 1e6;
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "ferry_proxy_client_errors",
                "Requests the client spoiled (malformed, stalled or abandoned); not in ferry_proxy_requests.",
                None,
                MetricType::Counter,
            )?;
            for k in &keys {
                let v = k.total(|s| &s.client_errors);
                if v == 0 {
                    continue;
                }
                let labels = [
                    ("listener", &*k.listener),
                    ("service", &*k.service),
                    ("version", &*k.version),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        encode_flags(&mut encoder, &keys)?;
        {
            let mut m = encoder.encode_descriptor(
                "ferry_proxy_in_flight",
                "Requests being proxied now.",
                None,
                MetricType::Gauge,
            )?;
            for k in &keys {
                let labels = [
                    ("listener", &*k.listener),
                    ("service", &*k.service),
                    ("version", &*k.version),
                ];
                m.encode_family(&labels)?
                    .encode_gauge(&k.in_flight.load(Relaxed).max(0))?;
            }
        }
        Ok(())
    }
}

/// The per-flag series (from the answers' `Ferry-Flags` header): requests, 5xx answers and
/// latency per (listener, service, version, flag, variant). At most
/// [`crate::flags::MAX_SERIES`] in all ([`crate::flags::MAX_SERIES_PER_VERSION`] per
/// version); what did not fit is counted in `ferry_proxy_flag_dropped`.
fn encode_flags(
    encoder: &mut DescriptorEncoder,
    keys: &[Arc<KeyStats>],
) -> Result<(), std::fmt::Error> {
    let series: Vec<(&KeyStats, Vec<crate::flags::FlagBuckets>)> = keys
        .iter()
        .map(|k| (&**k, k.flags.buckets(&BUCKETS_US)))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    fn labels<'a>(
        k: &'a KeyStats,
        f: &'a crate::flags::FlagBuckets,
    ) -> [(&'static str, &'a str); 5] {
        [
            ("listener", &k.listener),
            ("service", &k.service),
            ("version", &k.version),
            ("flag", &f.flag),
            ("variant", &f.variant),
        ]
    }
    type Count = fn(&crate::flags::FlagBuckets) -> &u64;
    let counters: [(&str, &str, Count); 2] = [
        (
            "ferry_proxy_flag_requests",
            "Answers whose Ferry-Flags header named the flag's variant.",
            |f| &f.requests,
        ),
        (
            "ferry_proxy_flag_errors",
            "Of those answers, the ones with status 5xx.",
            |f| &f.errors_5xx,
        ),
    ];
    for (name, help, count) in counters {
        let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (k, flags) in &series {
            for f in flags {
                m.encode_family(&labels(k, f))?
                    .encode_counter::<NoLabelSet, _, u64>(count(f), None)?;
            }
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "ferry_proxy_flag_request_duration_seconds",
            "Latency to response headers of the answers that named the flag's variant (within 1 %).",
            None,
            MetricType::Histogram,
        )?;
        for (k, flags) in &series {
            for f in flags {
                // per-bucket counts (the encoder accumulates), +Inf last
                let buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(f.counts.iter().copied())
                    .collect();
                let count: u64 = f.counts.iter().sum();
                m.encode_family(&labels(k, f))?
                    .encode_histogram::<NoLabelSet>(f.sum_us as f64 / 1e6, count, &buckets, None)?;
            }
        }
    }
    let mut m = encoder.encode_descriptor(
        "ferry_proxy_flag_dropped",
        "Flag attributions not counted: a malformed or oversized Ferry-Flags header, or over the series bounds.",
        None,
        MetricType::Counter,
    )?;
    m.encode_counter::<NoLabelSet, _, u64>(&crate::flags::dropped(), None)?;
    Ok(())
}
