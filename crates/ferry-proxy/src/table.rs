//! Compiled per-listener route tables and the backend pickers of the hot path.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;

use crate::access_log::AccessLog;
use crate::dataplane::h1::RawConn;
use crate::metrics::{KeyStats, StatsRegistry};
use crate::routes::{ListenerConfig, Route, parse_sha256_hex, sticky_bucket};
use crate::stats::EndpointUsage;
use crate::upstream::{Conn, IdlePool};

/// One upstream address; shared by every table that mentions it, so outstanding-request
/// counts and ejections survive table swaps.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    pub authority: Authority,
    in_flight: AtomicI64,
    /// Live compiled tables that list this endpoint: the ones being served and older ones
    /// still held by requests that loaded them before a swap. While above zero a request
    /// may still pick the endpoint (see [`Listing`]).
    listed: AtomicI64,
    /// Unix ms; 0 = never ejected.
    ejected_until_ms: AtomicI64,
    /// Idle upstream connections of hyper's client (h2 and fallback requests), per worker.
    pub idle: IdlePool<Conn>,
    /// Idle upstream connections of the HTTP/1.1 fast path, per worker thread.
    pub raw: IdlePool<RawConn>,
}

impl Endpoint {
    fn new(addr: SocketAddr, workers: usize, max_idle: usize) -> Self {
        let authority = Authority::from_maybe_shared(Bytes::from(addr.to_string()))
            .unwrap_or_else(|_| Authority::from_static("invalid"));
        Self {
            addr,
            authority,
            in_flight: AtomicI64::new(0),
            listed: AtomicI64::new(0),
            ejected_until_ms: AtomicI64::new(0),
            idle: IdlePool::new(workers, max_idle),
            raw: IdlePool::new(workers, max_idle),
        }
    }

    #[inline]
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed).max(0) as u64
    }

    #[inline]
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn finish(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }

    pub fn eject(&self, until_ms: i64) {
        self.ejected_until_ms.store(until_ms, Relaxed);
    }

    #[inline]
    fn is_ejected(&self, now: &mut LazyNow) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && until > now.get()
    }

    pub fn ejected_until(&self, now_ms: i64) -> Option<i64> {
        let until = self.ejected_until_ms.load(Relaxed);
        (until > now_ms).then_some(until)
    }

    /// Whether a request can still reach this endpoint, for the drain of a replica.
    pub fn usage(&self) -> EndpointUsage {
        EndpointUsage {
            addr: self.addr,
            listed: self.listed.load(Relaxed).max(0) as u64,
            in_flight: self.in_flight(),
        }
    }
}

/// Counts a compiled table in its endpoints' `listed` for as long as the table lives.
///
/// A request loads its listener's table once and keeps it until it has an answer (it
/// picks endpoints from it, maybe after reading the body or retrying), then the response
/// body keeps the endpoint's in-flight count raised. So an endpoint that is in no live
/// table and has nothing in flight can get no more requests: its process may be stopped.
#[derive(Debug)]
pub(crate) struct Listing(Box<[Arc<Endpoint>]>);

impl Listing {
    pub fn new(endpoints: &[Arc<Endpoint>]) -> Self {
        for e in endpoints {
            e.listed.fetch_add(1, Relaxed);
        }
        Self(endpoints.into())
    }
}

impl Drop for Listing {
    fn drop(&mut self) {
        for e in self.0.iter() {
            e.listed.fetch_sub(1, Relaxed);
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads the clock at most once, and only if an ejection has to be checked.
#[derive(Default)]
pub(crate) struct LazyNow(Option<i64>);

impl LazyNow {
    fn get(&mut self) -> i64 {
        *self.0.get_or_insert_with(now_ms)
    }
}

/// Endpoints by address, shared across table generations.
#[derive(Debug)]
pub(crate) struct EndpointRegistry {
    map: Mutex<HashMap<SocketAddr, Arc<Endpoint>>>,
    workers: usize,
    max_idle: usize,
}

impl EndpointRegistry {
    pub fn new(workers: usize, max_idle: usize) -> Self {
        Self {
            map: Mutex::default(),
            workers,
            max_idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Endpoint>>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    fn get(&self, addr: SocketAddr) -> Arc<Endpoint> {
        self.lock()
            .entry(addr)
            .or_insert_with(|| Arc::new(Endpoint::new(addr, self.workers, self.max_idle)))
            .clone()
    }

    /// Whether a request can still reach `addr` (all zero for an address never routed to,
    /// or forgotten once it was in no table and had nothing in flight).
    pub fn usage(&self, addr: SocketAddr) -> EndpointUsage {
        match self.lock().get(&addr) {
            Some(e) => e.usage(),
            None => EndpointUsage {
                addr,
                listed: 0,
                in_flight: 0,
            },
        }
    }

    /// Closes idle upstream connections that expired or were closed by the upstream, and
    /// forgets endpoints nothing refers to any more (no table, no request, no stats list).
    pub fn reap_idle(&self, idle_timeout: std::time::Duration) -> usize {
        let eps: Vec<Arc<Endpoint>> = {
            let mut map = self.lock();
            map.retain(|_, e| Arc::strong_count(e) > 1);
            map.values().cloned().collect()
        };
        let now = std::time::Instant::now();
        eps.iter()
            .map(|e| e.idle.reap(now, idle_timeout) + e.raw.reap(now, idle_timeout))
            .sum()
    }
}

#[derive(Debug)]
pub(crate) struct Group {
    pub weight: u32,
    pub endpoints: Box<[Arc<Endpoint>]>,
    pub stats: Arc<KeyStats>,
    /// Marks the endpoints as listed while this table lives (drain confirmation).
    _listing: Listing,
}

#[derive(Debug)]
pub(crate) struct RouteEntry {
    prefix: String,
    pub groups: Box<[Group]>,
    /// Group index per slot; one period of a smooth weighted round-robin.
    schedule: Box<[u16]>,
    counter: AtomicUsize,
    /// Stats key for answers of a route without backends.
    pub no_backend_stats: Arc<KeyStats>,
    preview: Option<Preview>,
    sticky: Option<Sticky>,
    /// Running sum of the group weights, in table order (for sticky buckets).
    cumulative: Box<[u32]>,
    /// The service's own upstream timeout, if it has one.
    pub upstream_timeout: Option<Duration>,
}

/// A compiled [`crate::routes::PreviewRule`].
#[derive(Debug)]
struct Preview {
    header: HeaderName,
    /// The group it forces.
    group: usize,
    token_sha256: Option<[u8; 32]>,
}

impl Preview {
    /// Whether a request with this header value, from a local client or not, asks for
    /// (and may have) the preview.
    fn allows(&self, value: &[u8], local_client: bool) -> bool {
        if local_client && preview_on(value) {
            return true;
        }
        match &self.token_sha256 {
            Some(want) => {
                use sha2::Digest;
                use subtle::ConstantTimeEq;
                let got = sha2::Sha256::digest(value);
                let got: [u8; 32] = got.into();
                bool::from(got.ct_eq(want))
            }
            None => false,
        }
    }
}

#[derive(Debug)]
struct Sticky {
    header: Option<HeaderName>,
    cookie: Option<Box<[u8]>>,
}

impl Sticky {
    fn compile(r: &Route) -> Option<Self> {
        let st = r.sticky.as_ref()?;
        Some(Self {
            header: st
                .header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok()),
            cookie: st.cookie.as_deref().map(|c| c.as_bytes().into()),
        })
    }

    /// The request's sticky key: the header's value, else the cookie's.
    fn key<'h, H: Headers + ?Sized>(&self, headers: &'h H) -> Option<&'h [u8]> {
        if let Some(name) = &self.header
            && let Some(v) = headers.first(name)
            && !v.is_empty()
        {
            return Some(v);
        }
        headers.cookie(self.cookie.as_deref()?)
    }
}

/// Request headers as the pickers read them: hyper's map, or the header lines of the
/// HTTP/1.1 fast path (read in place, never copied into a map).
pub(crate) trait Headers {
    /// The first value of header `name`.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
    /// The value of cookie `name` in the request's `Cookie` headers.
    fn cookie(&self, name: &[u8]) -> Option<&[u8]>;
}

impl Headers for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
    fn cookie(&self, name: &[u8]) -> Option<&[u8]> {
        self.get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie_value(v.as_bytes(), name))
    }
}

/// The value of cookie `name` in a `Cookie:` header value (`a=1; b=2`), unquoted;
/// `None` if absent or empty.
pub(crate) fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        if pair[..eq].trim_ascii() != name {
            return None;
        }
        let mut v = pair[eq + 1..].trim_ascii();
        if v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"' {
            v = &v[1..v.len() - 1];
        }
        (!v.is_empty()).then_some(v)
    })
}

/// A preview header turns the override on unless empty, `0` or `false`.
fn preview_on(v: &[u8]) -> bool {
    let v = v.trim_ascii();
    !(v.is_empty() || v == b"0" || v.eq_ignore_ascii_case(b"false"))
}

/// The sites sharing one listening address, chosen by host.
#[derive(Debug)]
pub(crate) struct AddrTable {
    pub addr: SocketAddr,
    sites: Box<[ListenerTable]>,
    /// Lowercase host → site.
    exact: HashMap<Box<str>, usize>,
    /// `*.example.com` as `example.com` → site.
    wildcard: HashMap<Box<str>, usize>,
    /// The site that answers any host (a lone site without `hosts`).
    any: Option<usize>,
    /// Requests for a host no site serves.
    pub unknown_host_stats: Arc<KeyStats>,
}

impl AddrTable {
    pub fn compile(
        addr: SocketAddr,
        sites: &[&ListenerConfig],
        endpoints: &EndpointRegistry,
        stats: &StatsRegistry,
        logs: &HashMap<PathBuf, Arc<AccessLog>>,
    ) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut any = None;
        for (i, site) in sites.iter().enumerate() {
            if site.hosts.is_empty() {
                any = Some(i);
            }
            for h in &site.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.into(), i),
                    None => exact.insert(h.into_boxed_str(), i),
                };
            }
        }
        Self {
            addr,
            sites: sites
                .iter()
                .map(|s| ListenerTable::compile(s, endpoints, stats, logs))
                .collect(),
            exact,
            wildcard,
            any,
            unknown_host_stats: stats.key(&addr.to_string(), "", "", true),
        }
    }

    /// The site for a request to `host` (asked for only when hosts decide).
    #[inline]
    pub fn site<'h>(&self, host: impl FnOnce() -> Option<&'h str>) -> Option<&ListenerTable> {
        if let Some(i) = self.any {
            return Some(&self.sites[i]);
        }
        let host = host()?;
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let i = match self.exact.get(host) {
            Some(i) => *i,
            None => *self.wildcard.get(host.split_once('.')?.1)?,
        };
        Some(&self.sites[i])
    }
}

/// The host a request is for: HTTP/2's `:authority`, else `Host`, else the TLS server
/// name; without port or trailing dot.
pub(crate) fn request_host<'a>(
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
    sni: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(a) = uri.authority() {
        return Some(a.host().trim_end_matches('.'));
    }
    let Some(v) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return sni;
    };
    Some(host_of(v))
}

/// The host of a `Host` header value: without port or trailing dot.
pub(crate) fn host_of(v: &str) -> &str {
    let host = if let Some(rest) = v.strip_prefix('[') {
        // [v6]:port
        rest.split_once(']').map_or(v, |(h, _)| h)
    } else {
        match v.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => v,
        }
    };
    host.trim_end_matches('.')
}

#[derive(Debug)]
pub(crate) struct ListenerTable {
    pub id: Arc<str>,
    /// Longest prefix first.
    routes: Box<[RouteEntry]>,
    pub unrouted_stats: Arc<KeyStats>,
    /// `Strict-Transport-Security` value for this site's answers.
    pub hsts: Option<HeaderValue>,
    /// Redirect everything to HTTPS on this port instead of routing.
    pub redirect_https: Option<u16>,
    pub access_log: Option<Arc<AccessLog>>,
}

impl ListenerTable {
    pub fn compile(
        cfg: &ListenerConfig,
        endpoints: &EndpointRegistry,
        stats: &StatsRegistry,
        logs: &HashMap<PathBuf, Arc<AccessLog>>,
    ) -> Self {
        let mut routes: Vec<RouteEntry> = cfg
            .routes
            .iter()
            .map(|r| {
                let groups: Box<[Group]> = r
                    .backends
                    .iter()
                    .map(|g| {
                        let eps: Box<[Arc<Endpoint>]> =
                            g.endpoints.iter().map(|a| endpoints.get(*a)).collect();
                        let key = stats.key(&cfg.id, &r.service, &g.version, false);
                        key.set_endpoints(eps.to_vec());
                        Group {
                            weight: g.weight,
                            _listing: Listing::new(&eps),
                            endpoints: eps,
                            stats: key,
                        }
                    })
                    .collect();
                let weights: Vec<u32> = groups.iter().map(|g| g.weight).collect();
                let cumulative = weights
                    .iter()
                    .scan(0u32, |acc, w| {
                        *acc = acc.saturating_add(*w);
                        Some(*acc)
                    })
                    .collect();
                let preview = r.preview.as_ref().and_then(|p| {
                    Some(Preview {
                        header: HeaderName::from_bytes(p.header.as_bytes()).ok()?,
                        group: r.backends.iter().position(|g| g.version == p.version)?,
                        token_sha256: match &p.token_sha256 {
                            Some(t) => Some(parse_sha256_hex(t)?),
                            None => None,
                        },
                    })
                });
                RouteEntry {
                    prefix: r.path_prefix.clone(),
                    schedule: smooth_schedule(&weights),
                    groups,
                    counter: AtomicUsize::new(0),
                    no_backend_stats: stats.key(&cfg.id, &r.service, "", true),
                    preview,
                    sticky: Sticky::compile(r),
                    cumulative,
                    upstream_timeout: r.upstream_timeout_ms.map(Duration::from_millis),
                }
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self {
            id: cfg.id.as_str().into(),
            routes: routes.into_boxed_slice(),
            unrouted_stats: stats.key(&cfg.id, "", "", true),
            hsts: cfg
                .tls
                .as_ref()
                .and_then(|t| t.hsts_max_age_secs)
                .and_then(|s| HeaderValue::from_str(&format!("max-age={s}")).ok()),
            redirect_https: cfg.redirect_https,
            access_log: cfg.access_log.as_ref().and_then(|p| logs.get(p).cloned()),
        }
    }

    #[inline]
    pub fn route_for(&self, path: &str) -> Option<&RouteEntry> {
        self.routes.iter().find(|r| prefix_matches(&r.prefix, path))
    }
}

#[inline]
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with(['/', '?']),
        None => false,
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// One period of smooth weighted round-robin over the groups with a positive weight.
/// Weights are reduced by their gcd, so 2500/7500 gives a period of 4 (1 + 3) and any
/// 100 consecutive picks are split exactly 25/75.
pub(crate) fn smooth_schedule(weights: &[u32]) -> Box<[u16]> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if g == 0 {
        return Box::new([]);
    }
    let reduced: Vec<i64> = weights.iter().map(|w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reduced.len() {
            current[i] += reduced[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u16);
    }
    out.into_boxed_slice()
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1,
    );
}

/// xorshift64*: cheap per-thread randomness for power-of-two choices.
#[inline]
pub(crate) fn fast_rand() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// (group index, endpoint index)
pub(crate) type Pick = (u16, u16);

/// Endpoints already attempted for one request.
#[derive(Default)]
pub(crate) struct Tried {
    picks: [Pick; 4],
    n: usize,
}

impl Tried {
    pub fn add(&mut self, p: Pick) {
        if self.n < self.picks.len() {
            self.picks[self.n] = p;
            self.n += 1;
        }
    }
    #[inline]
    fn contains(&self, p: Pick) -> bool {
        self.picks[..self.n].contains(&p)
    }
}

impl RouteEntry {
    pub fn has_backends(&self) -> bool {
        !self.groups.is_empty()
    }

    /// The group a request should go to: the preview group if the request asks for it
    /// and may have it (see [`crate::routes::PreviewRule`]) and it has endpoints, else the
    /// sticky group of the request's key, else the next group by weight.
    #[inline]
    pub fn choose_group<H: Headers + ?Sized>(&self, headers: &H, local_client: bool) -> usize {
        if let Some(p) = &self.preview
            && let Some(v) = headers.first(&p.header)
            && !self.groups[p.group].endpoints.is_empty()
            && p.allows(v, local_client)
        {
            return p.group;
        }
        if let Some(st) = &self.sticky
            && let Some(key) = st.key(headers)
            && let Some(gi) = self.sticky_group(sticky_bucket(key))
        {
            return gi;
        }
        self.next_group()
    }

    /// Removes a token-protected preview header, so that its token never reaches a replica.
    #[inline]
    pub fn strip_preview_token(&self, headers: &mut HeaderMap) {
        if let Some(name) = self.preview_token_header() {
            headers.remove(name);
        }
    }

    /// The preview header, when it carries a token (never forwarded).
    #[inline]
    pub fn preview_token_header(&self) -> Option<&HeaderName> {
        self.preview
            .as_ref()
            .filter(|p| p.token_sha256.is_some())
            .map(|p| &p.header)
    }

    /// First group, in table order, whose cumulative weight exceeds `bucket`.
    #[inline]
    fn sticky_group(&self, bucket: u32) -> Option<usize> {
        self.cumulative.iter().position(|c| *c > bucket)
    }

    /// Next group by weight (exact, deterministic).
    #[inline]
    fn next_group(&self) -> usize {
        if self.schedule.is_empty() {
            return 0;
        }
        let n = self.counter.fetch_add(1, Relaxed);
        usize::from(self.schedule[n % self.schedule.len()])
    }

    /// Endpoint for an attempt: least outstanding (power of two choices) in the
    /// preferred group; else in another weighted group; else anything not yet tried
    /// (ejected or zero-weight endpoints included, as a last resort).
    pub fn pick(&self, preferred: usize, tried: &Tried, now: &mut LazyNow) -> Option<Pick> {
        if let Some(p) = self.pick_in(preferred, tried, now, true) {
            return Some(p);
        }
        let n = self.groups.len();
        for off in 1..n {
            let gi = (preferred + off) % n;
            if self.groups[gi].weight > 0
                && let Some(p) = self.pick_in(gi, tried, now, true)
            {
                return Some(p);
            }
        }
        for off in 0..n {
            let gi = (preferred + off) % n;
            if let Some(p) = self.pick_in(gi, tried, now, false) {
                return Some(p);
            }
        }
        None
    }

    fn pick_in(
        &self,
        gi: usize,
        tried: &Tried,
        now: &mut LazyNow,
        healthy_only: bool,
    ) -> Option<Pick> {
        let eps = &self.groups.get(gi)?.endpoints;
        let ok = |i: usize, now: &mut LazyNow| {
            let usable = !(healthy_only && eps[i].is_ejected(now));
            usable && !tried.contains((gi as u16, i as u16))
        };
        let pick = |i: usize| Some((gi as u16, i as u16));
        match eps.len() {
            0 => None,
            1 => {
                if ok(0, now) {
                    pick(0)
                } else {
                    None
                }
            }
            len => {
                let r = fast_rand();
                let a = (r % len as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (len as u64 - 1)) as usize) % len;
                match (ok(a, now), ok(b, now)) {
                    (true, true) => {
                        if eps[b].in_flight.load(Relaxed) < eps[a].in_flight.load(Relaxed) {
                            pick(b)
                        } else {
                            pick(a)
                        }
                    }
                    (true, false) => pick(a),
                    (false, true) => pick(b),
                    (false, false) => (0..len).find(|i| ok(*i, now)).and_then(pick),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(!prefix_matches("/api/", "/api"));
    }

    #[test]
    fn hosts_of_requests() {
        let h = |host: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_str(host).expect("value"));
            m
        };
        let origin: http::Uri = "/x".parse().expect("uri");
        let host = |v: &str| request_host(&origin, &h(v), None).map(str::to_owned);
        assert_eq!(
            host("shop.example.com").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            host("shop.example.com:8443").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            host("shop.example.com.").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(host("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(
            request_host(&origin, &HeaderMap::new(), Some("sni.example.com")),
            Some("sni.example.com")
        );
        let absolute: http::Uri = "https://h2.example.com/x".parse().expect("uri");
        assert_eq!(
            request_host(&absolute, &h("other"), None),
            Some("h2.example.com")
        );
    }

    #[test]
    fn cookies() {
        let h = b"a=1; ferry_id=\"u-7\" ;b=; c = 3";
        assert_eq!(cookie_value(h, b"ferry_id"), Some(&b"u-7"[..]));
        assert_eq!(cookie_value(h, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(h, b"c"), Some(&b"3"[..]));
        assert_eq!(cookie_value(h, b"b"), None);
        assert_eq!(cookie_value(h, b"ferry"), None);
        assert_eq!(cookie_value(b"", b"a"), None);
        assert_eq!(cookie_value(b"garbage;;=x", b"a"), None);
    }

    #[test]
    fn preview_values() {
        for on in ["1", "true", "yes", "v2", " 1 "] {
            assert!(preview_on(on.as_bytes()), "{on}");
        }
        for off in ["", "0", "false", "FALSE", " 0 "] {
            assert!(!preview_on(off.as_bytes()), "{off}");
        }
    }

    #[test]
    fn preview_is_for_local_clients_or_token_holders() {
        use sha2::Digest;
        let open = Preview {
            header: HeaderName::from_static("x-ferry-preview"),
            group: 0,
            token_sha256: None,
        };
        assert!(open.allows(b"1", true));
        assert!(!open.allows(b"0", true));
        assert!(!open.allows(b"1", false), "a remote client needs a token");
        let digest: [u8; 32] = sha2::Sha256::digest(b"s3cret").into();
        let guarded = Preview {
            token_sha256: Some(digest),
            ..open
        };
        assert!(guarded.allows(b"s3cret", false));
        assert!(!guarded.allows(b"s3cre", false));
        assert!(!guarded.allows(b"1", false));
        assert!(
            guarded.allows(b"1", true),
            "local clients keep the plain switch"
        );
    }

    #[test]
    fn schedules_are_exact() {
        let s = smooth_schedule(&[2500, 7500]);
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().filter(|g| **g == 0).count(), 1);
        let s = smooth_schedule(&[0, 10000]);
        assert_eq!(&*s, &[1]);
        let s = smooth_schedule(&[1, 9999]);
        assert_eq!(s.len(), 10000);
        assert_eq!(s.iter().filter(|g| **g == 0).count(), 1);
        let s = smooth_schedule(&[3333, 3333, 3334]);
        assert_eq!(s.len(), 10000);
        // Smooth: within any 100 consecutive picks of a 5 % group, exactly 5.
        let s = smooth_schedule(&[500, 9500]);
        assert_eq!(s.len(), 20);
        let rep: Vec<u16> = s.iter().cycle().take(137 + 100).copied().collect();
        assert_eq!(rep[137..].iter().filter(|g| **g == 0).count(), 5);
        assert!(smooth_schedule(&[]).is_empty());
    }
}
