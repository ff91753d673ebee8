//! Types of `GET /v1/stats`.
//!
//! Counters are cumulative since the proxy process started; the controller diffs two
//! snapshots (and two decoded histograms) to get a window.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Body of `GET /v1/stats`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct StatsSnapshot {
    /// Unix ms when this proxy process started (counters restart from zero then).
    pub started_at_ms: i64,
    /// Unix ms when this snapshot was taken.
    pub taken_at_ms: i64,
    /// Generation of the route table being served.
    pub generation: u64,
    /// One entry per (listener, service, version) ever routed to since start.
    pub versions: Vec<VersionStats>,
    /// One entry per (listener, service, version, flag, variant) that answers named in
    /// their `Ferry-Flags` header since start.
    #[serde(default)]
    pub flags: Vec<FlagStats>,
    /// `Ferry-Flags` attributions not counted since start (a header over 1 KiB, a malformed
    /// pair, more than 16 pairs in an answer, or a new series over the bounds).
    #[serde(default)]
    pub flags_dropped: u64,
}

/// Cumulative figures of the answers of one (listener, service, version) that named
/// `flag=variant` in their `Ferry-Flags` header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FlagStats {
    pub listener: String,
    pub service: String,
    pub version: String,
    pub flag: String,
    /// As the app wrote it (`on`, `off`, a variant's name).
    pub variant: String,
    /// Answers counted (as in [`VersionStats::requests`]).
    pub requests: u64,
    /// Of which with status >= 500.
    pub errors_5xx: u64,
    /// Latency to response headers, as [`VersionStats::histogram_us`].
    pub histogram_us: String,
}

/// Cumulative figures of one (listener, service, version).
///
/// Requests that matched no route are counted under `service == ""`, requests to a
/// route with no backends under `version == ""`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VersionStats {
    pub listener: String,
    pub service: String,
    pub version: String,
    /// Completed requests (response headers sent or proxy error answered), not counting
    /// those the client spoiled (see `client_errors`).
    pub requests: u64,
    /// Answers with status >= 500 that are the version's doing: its own 5xx, and the
    /// proxy's 502/503/504 when its replicas refused, failed or timed out. Never a
    /// client's fault (a malformed or abandoned request).
    pub errors_5xx: u64,
    /// Requests the client spoiled: a malformed request body (400), a body that stalled
    /// (408) or a client that went away before the answer (499). Not counted in
    /// `requests` or `errors_5xx`, so no client can move a version's error rate.
    #[serde(default)]
    pub client_errors: u64,
    pub in_flight: u64,
    /// Latency to response headers.
    pub latency_ms: LatencyPercentiles,
    /// HDR histogram of latencies in microseconds, V2 serialization, base64 (standard,
    /// padded). Decode with [`decode_histogram`].
    pub histogram_us: String,
    /// Endpoints of this version in the current table.
    pub endpoints: Vec<EndpointStats>,
}

/// Latency percentiles in milliseconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Default)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Live state of one upstream endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EndpointStats {
    pub addr: SocketAddr,
    pub in_flight: u64,
    /// Unix ms until which the endpoint is passively ejected (connect failure); `None`
    /// when it takes traffic.
    pub ejected_until_ms: Option<i64>,
}

/// Body of `GET /v1/endpoints/{addr}`: whether a request can still reach an upstream
/// address, independently of the current table. A replica may be stopped without failing
/// a client once [`EndpointUsage::drained`] holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointUsage {
    pub addr: SocketAddr,
    /// Live route tables listing it: the one being served, and older ones still held by
    /// requests that loaded them before a swap (they may still pick it).
    pub listed: u64,
    /// Requests sent to it whose response is not finished yet.
    pub in_flight: u64,
}

impl EndpointUsage {
    /// In no table any request holds, and nothing in flight: no request can reach it.
    pub fn drained(&self) -> bool {
        self.listed == 0 && self.in_flight == 0
    }
}

/// Error decoding [`VersionStats::histogram_us`].
#[derive(Debug, thiserror::Error)]
pub enum HistogramDecodeError {
    #[error("invalid base64")]
    Base64,
    #[error("invalid histogram: {0:?}")]
    Histogram(hdrhistogram::serialization::DeserializeError),
}

/// Decodes [`VersionStats::histogram_us`] (values are microseconds).
pub fn decode_histogram(
    encoded: &str,
) -> Result<hdrhistogram::Histogram<u64>, HistogramDecodeError> {
    let bytes = base64_decode(encoded).ok_or(HistogramDecodeError::Base64)?;
    let mut d = hdrhistogram::serialization::Deserializer::new();
    d.deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(HistogramDecodeError::Histogram)
}

/// Encodes a histogram as [`VersionStats::histogram_us`] carries it (V2, base64), e.g. one
/// merged from several proxies' histograms.
pub fn encode_histogram(histogram: &hdrhistogram::Histogram<u64>) -> String {
    let mut buf = Vec::new();
    let _ = hdrhistogram::serialization::Serializer::serialize(
        &mut hdrhistogram::serialization::V2Serializer::new(),
        histogram,
        &mut buf,
    );
    base64_encode(&buf)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            B64[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            B64[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = input.trim().as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|c| **c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(*c)? };
            n = (n << 6) | v;
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip() {
        for len in 0..20 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&data);
            assert_eq!(base64_decode(&enc).as_deref(), Some(&data[..]));
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert!(base64_decode("Zm9").is_none());
    }
}
