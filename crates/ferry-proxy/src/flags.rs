//! Attribution of requests to feature flags: an app names the flags (and variants) a request
//! evaluated in a `Ferry-Flags` response header (`checkout=on, search=off`); the proxy
//! removes the header from the answer and counts the request, its 5xx and its latency per
//! (flag, variant) beside its version's figures, so that a guarded flag rollout is judged
//! on the requests that carried the flag.
//!
//! The hot path pays one header-map lookup when the header is absent. When it is there, its
//! value is bounded before it is read: at most [`MAX_HEADER_BYTES`] over all its lines (else
//! nothing is counted), at most [`MAX_FLAGS`] pairs per answer, names and variants of at
//! most [`MAX_NAME`] characters of `A-Z a-z 0-9 . _ - :`; each version keeps at most
//! [`MAX_SERIES_PER_VERSION`] (flag, variant) series and the proxy [`MAX_SERIES`] in all.
//! Whatever is not counted is counted in [`FlagCounters::dropped`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use http::header::{HeaderMap, HeaderName};

use crate::stats::FlagStats;

/// The response header naming the flags a request evaluated.
pub static FERRY_FLAGS: HeaderName = HeaderName::from_static("ferry-flags");

/// Longest `Ferry-Flags` value (all its lines together) that is read.
pub const MAX_HEADER_BYTES: usize = 1024;
/// Most (flag, variant) pairs counted per answer.
pub const MAX_FLAGS: usize = 16;
/// Longest flag or variant name (as a flag name in Ferry).
pub const MAX_NAME: usize = 100;
/// Most (flag, variant) series one (listener, service, version) keeps.
pub const MAX_SERIES_PER_VERSION: usize = 64;
/// Most series the whole proxy keeps (each holds a latency histogram of ~26 KB).
pub const MAX_SERIES: usize = 1024;

/// Series kept by this process, against [`MAX_SERIES`].
static SERIES: AtomicUsize = AtomicUsize::new(0);

/// Attributions not counted (a header too long, a malformed pair, over a bound).
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Attributions dropped since the proxy started.
pub(crate) fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

/// One (flag, variant)'s cumulative figures.
#[derive(Debug)]
struct Series {
    requests: u64,
    errors_5xx: u64,
    hist: Histogram<u64>,
}

/// A (flag, variant) as an answer named it.
type SeriesKey = (Box<str>, Box<str>);

/// One (flag, variant)'s figures as `/metrics` shows them ([`FlagCounters::buckets`]).
#[derive(Debug)]
pub(crate) struct FlagBuckets {
    pub flag: Box<str>,
    pub variant: Box<str>,
    pub requests: u64,
    pub errors_5xx: u64,
    /// Latencies per bucket (not cumulative), the last one above every bound.
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

/// The per-flag figures of one (listener, service, version). Touched only by answers that
/// carry the header, under one lock.
#[derive(Debug, Default)]
pub(crate) struct FlagCounters {
    series: Mutex<BTreeMap<SeriesKey, Series>>,
}

impl FlagCounters {
    /// Removes `Ferry-Flags` from an answer's headers and counts the answer for each pair
    /// it names. Costs one lookup when the header is absent.
    #[inline]
    pub fn take(&self, headers: &mut HeaderMap, status: u16, elapsed: Duration) {
        if !headers.contains_key(&FERRY_FLAGS) {
            return;
        }
        self.take_present(headers, status, elapsed);
    }

    #[cold]
    fn take_present(&self, headers: &mut HeaderMap, status: u16, elapsed: Duration) {
        let http::header::Entry::Occupied(entry) = headers.entry(&FERRY_FLAGS) else {
            return;
        };
        let (_, values) = entry.remove_entry_mult();
        let values: Vec<_> = values.collect();
        let lines: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        self.record(&lines, status, elapsed);
    }

    /// Counts an answer for each (flag, variant) its `Ferry-Flags` lines name (the HTTP/1.1
    /// fast path gives the lines it skipped while copying the head).
    #[cold]
    pub fn record(&self, lines: &[&[u8]], status: u16, elapsed: Duration) {
        if lines.iter().map(|v| v.len() + 1).sum::<usize>() > MAX_HEADER_BYTES + 1 {
            DROPPED.fetch_add(1, Relaxed);
            return;
        }
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for item in lines.iter().flat_map(|v| v.split(|b| *b == b',')) {
            match parse_pair(item) {
                Some(pair) if pairs.len() < MAX_FLAGS => {
                    if !pairs.contains(&pair) {
                        pairs.push(pair);
                    }
                }
                None if item.iter().all(u8::is_ascii_whitespace) => {}
                _ => {
                    DROPPED.fetch_add(1, Relaxed);
                }
            }
        }
        if pairs.is_empty() {
            return;
        }
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut series = match self.series.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        for (flag, variant) in pairs {
            let key = (Box::<str>::from(flag), Box::<str>::from(variant));
            if !series.contains_key(&key) {
                let full = series.len() >= MAX_SERIES_PER_VERSION
                    || SERIES
                        .fetch_update(Relaxed, Relaxed, |n| (n < MAX_SERIES).then_some(n + 1))
                        .is_err();
                if full {
                    DROPPED.fetch_add(1, Relaxed);
                    continue;
                }
                series.insert(
                    key.clone(),
                    Series {
                        requests: 0,
                        errors_5xx: 0,
                        hist: crate::metrics::new_hist(),
                    },
                );
            }
            if let Some(s) = series.get_mut(&key) {
                s.requests += 1;
                if status >= 500 {
                    s.errors_5xx += 1;
                }
                s.hist
                    .saturating_record(us.clamp(1, crate::metrics::HDR_MAX_US));
            }
        }
    }

    /// Every series' figures for `/metrics`: (flag, variant, requests, 5xx, latency
    /// counts per bucket of `bounds_us` — the last one for above them all —, latency sum in
    /// microseconds). Latencies come from the HDR histogram: each within 1 % of what was
    /// measured.
    pub fn buckets(&self, bounds_us: &[u64]) -> Vec<FlagBuckets> {
        let series = match self.series.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        series
            .iter()
            .map(|((flag, variant), s)| {
                let mut counts = vec![0u64; bounds_us.len() + 1];
                let mut sum_us = 0u64;
                for v in s.hist.iter_recorded() {
                    let value = s.hist.highest_equivalent(v.value_iterated_to());
                    let n = v.count_at_value();
                    let i = bounds_us.partition_point(|b| *b < value);
                    counts[i] += n;
                    sum_us = sum_us.saturating_add(value.saturating_mul(n));
                }
                FlagBuckets {
                    flag: flag.clone(),
                    variant: variant.clone(),
                    requests: s.requests,
                    errors_5xx: s.errors_5xx,
                    counts,
                    sum_us,
                }
            })
            .collect()
    }

    /// The cumulative figures of every series, for `/v1/stats`.
    pub fn snapshot(&self, listener: &str, service: &str, version: &str) -> Vec<FlagStats> {
        let series = match self.series.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        series
            .iter()
            .map(|((flag, variant), s)| {
                let mut buf = Vec::new();
                let _ = hdrhistogram::serialization::Serializer::serialize(
                    &mut hdrhistogram::serialization::V2Serializer::new(),
                    &s.hist,
                    &mut buf,
                );
                FlagStats {
                    listener: listener.to_string(),
                    service: service.to_string(),
                    version: version.to_string(),
                    flag: flag.to_string(),
                    variant: variant.to_string(),
                    requests: s.requests,
                    errors_5xx: s.errors_5xx,
                    histogram_us: crate::stats::base64_encode(&buf),
                }
            })
            .collect()
    }
}

/// `name=variant` (optional whitespace around each), both 1 to [`MAX_NAME`] characters of
/// `A-Z a-z 0-9 . _ - :`.
fn parse_pair(item: &[u8]) -> Option<(&str, &str)> {
    let item = item.trim_ascii();
    let eq = item.iter().position(|b| *b == b'=')?;
    let (name, variant) = (item[..eq].trim_ascii(), item[eq + 1..].trim_ascii());
    let ok = |s: &[u8]| {
        !s.is_empty()
            && s.len() <= MAX_NAME
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    };
    if !ok(name) || !ok(variant) {
        return None;
    }
    // Checked ASCII above.
    Some((
        std::str::from_utf8(name).ok()?,
        std::str::from_utf8(variant).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn answer(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        for v in values {
            h.append(&FERRY_FLAGS, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn counts(c: &FlagCounters) -> Vec<(String, String, u64, u64)> {
        c.snapshot("l", "s", "v")
            .into_iter()
            .map(|f| (f.flag, f.variant, f.requests, f.errors_5xx))
            .collect()
    }

    #[test]
    fn pairs_are_parsed_strictly() {
        assert_eq!(parse_pair(b" checkout = on "), Some(("checkout", "on")));
        assert_eq!(parse_pair(b"a.b:c_d-e=blue"), Some(("a.b:c_d-e", "blue")));
        for bad in ["checkout", "=on", "checkout=", "a b=on", "a=on=off", "é=on"] {
            assert_eq!(parse_pair(bad.as_bytes()), None, "{bad}");
        }
        let long = format!("{}=on", "x".repeat(MAX_NAME + 1));
        assert_eq!(parse_pair(long.as_bytes()), None);
    }

    #[test]
    fn the_header_is_removed_and_each_pair_counted_once() {
        let c = FlagCounters::default();
        let mut h = answer(&["checkout=on, search=off", "checkout=on,,bad pair"]);
        let before = dropped();
        c.take(&mut h, 503, Duration::from_millis(5));
        assert!(!h.contains_key(&FERRY_FLAGS), "stripped");
        assert!(h.contains_key("content-type"), "other headers stay");
        let mut h = answer(&["checkout=off"]);
        c.take(&mut h, 200, Duration::from_millis(1));
        assert_eq!(
            counts(&c),
            [
                ("checkout".into(), "off".into(), 1, 0),
                ("checkout".into(), "on".into(), 1, 1),
                ("search".into(), "off".into(), 1, 1),
            ]
        );
        assert!(
            dropped() > before,
            "the malformed pair is counted as dropped"
        );
        let flags = c.snapshot("l", "s", "v");
        let hist = crate::stats::decode_histogram(&flags[1].histogram_us).unwrap();
        assert_eq!(hist.len(), 1);
        assert!((4_900..=5_100).contains(&hist.max()), "{}", hist.max());
    }

    #[test]
    fn answers_without_the_header_are_untouched_and_bounds_hold() {
        let c = FlagCounters::default();
        let mut h = answer(&[]);
        let copy = h.clone();
        c.take(&mut h, 200, Duration::from_millis(1));
        assert_eq!(h, copy);
        assert!(counts(&c).is_empty());
        // Too long: stripped, nothing counted.
        let long = "a=b,".repeat(300);
        let mut h = answer(&[&long]);
        c.take(&mut h, 200, Duration::from_millis(1));
        assert!(!h.contains_key(&FERRY_FLAGS));
        assert!(counts(&c).is_empty());
        // At most MAX_FLAGS pairs per answer.
        let many: Vec<String> = (0..40).map(|i| format!("f{i}=on")).collect();
        let mut h = answer(&[&many.join(",")]);
        c.take(&mut h, 200, Duration::from_millis(1));
        assert_eq!(counts(&c).len(), MAX_FLAGS);
        // At most MAX_SERIES_PER_VERSION series.
        for i in 0..(MAX_SERIES_PER_VERSION * 2) {
            let mut h = answer(&[&format!("g{i}=on")]);
            c.take(&mut h, 200, Duration::from_millis(1));
        }
        assert_eq!(counts(&c).len(), MAX_SERIES_PER_VERSION);
    }
}
