//! Route tables pushed by the control plane.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Total weight of a route's backend groups, in basis points.
pub const TOTAL_WEIGHT: u32 = 10_000;

/// The whole routing configuration of the proxy. Pushed as one unit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RouteTable {
    /// Monotonic version of the table; a lower generation than the current one is refused.
    pub generation: u64,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
}

/// One site (one app environment) on a listening socket. Several sites may share one
/// `listen` address when each names its `hosts` and no host is claimed twice; they must
/// then all use TLS or none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Usually `"app/env"`; the stats key of its versions.
    pub id: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Host names this site answers for: `shop.example.com`, or `*.example.com` for any
    /// one label in front. Matched (case-insensitively, port ignored) against the
    /// request's `Host` (HTTP/2: `:authority`), else the TLS server name. Empty: any
    /// host. On a shared address a request for no listed host gets a 404 that says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Terminate TLS with this certificate (chosen by SNI among the address's sites).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
    /// Route nothing: answer every request with `308` to `https://HOST[:PORT]/path`
    /// (the port left out when it is 443). For a plain-HTTP listener beside a TLS one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_https: Option<u16>,
    /// Append one JSON line per answered request to this file (absolute path; created
    /// 0640 if missing). Off when absent. Fields: time, request_id, listener, host,
    /// method, path (no query), protocol, service, version, upstream, status, duration_ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<PathBuf>,
}

impl ListenerConfig {
    /// A plain site answering any host.
    pub fn new(id: impl Into<String>, listen: SocketAddr, routes: Vec<Route>) -> Self {
        Self {
            id: id.into(),
            listen,
            routes,
            hosts: Vec::new(),
            tls: None,
            redirect_https: None,
            access_log: None,
        }
    }
}

/// A certificate chain and its private key, PEM files on the proxy's machine. Reloaded
/// when either file changes, without dropping open connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The leaf certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key.
    pub key: PathBuf,
    /// Send `Strict-Transport-Security: max-age=N` on this site's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_max_age_secs: Option<u64>,
}

/// A valid `hosts` entry: DNS labels of letters, digits and `-`, optionally after `*.`.
fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Requests whose path starts with `path_prefix` (segment-aware) go to `backends`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub path_prefix: String,
    #[serde(default)]
    pub backends: Vec<BackendGroup>,
    /// Header override: requests carrying the header reach `version` whatever its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewRule>,
    /// Keeps a client (by header or cookie) on the same version while weights change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickyRule>,
    /// Time to wait for an upstream's response head before answering 504, in ms
    /// (`1..=`[`MAX_UPSTREAM_TIMEOUT_MS`]); absent: the proxy's default (60 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_timeout_ms: Option<u64>,
}

/// Longest [`Route::upstream_timeout_ms`]: one day.
pub const MAX_UPSTREAM_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

/// A request carrying `header` goes to the group of `version`, even at weight 0, as long
/// as that group has endpoints (otherwise the normal choice applies), when either
/// - the client connects from this host (a loopback address) and the value is anything
///   other than empty, `0` or `false` (case-insensitive, surrounding whitespace ignored);
///   a local client could reach the replicas' loopback ports directly anyway; or
/// - `token_sha256` is set and the SHA-256 of the value is that digest (any client).
///
/// Any other client's header is ignored, so no one on the network can steer traffic to
/// an unreleased version. When a token is set, the header is not passed upstream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PreviewRule {
    /// E.g. `X-Ferry-Preview`.
    pub header: String,
    pub version: String,
    /// Lowercase hex SHA-256 of the value remote clients must send (never the value
    /// itself, so the route table holds no secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
}

/// Parses a lowercase or uppercase hex SHA-256 digest.
pub(crate) fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Sticky group choice. The key is the (first) value of `header` if the request has it
/// and it is not empty, else the value of the cookie `cookie` from the `Cookie` header.
/// With a key, the group is the first one, in table order, whose cumulative weight
/// exceeds [`sticky_bucket`]`(key)`; zero-weight groups are never chosen. Put the canary
/// group first: as its weight grows, clients already on it stay on it. Requests without a
/// key get the exact per-request weighted choice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct StickyRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// The sticky bucket of a key, in `0..TOTAL_WEIGHT`: FNV-1a 64-bit of the key's bytes
/// (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) modulo 10000. Fixed, so
/// the same key lands in the same bucket across proxy restarts, machines and versions.
pub fn sticky_bucket(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(TOTAL_WEIGHT)) as u32
}

/// RFC 6265 cookie-name (an RFC 7230 token).
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The endpoints of one version of a service and the share of traffic they get.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BackendGroup {
    pub version: String,
    /// Basis points, `0..=10000`; the groups of a route sum to 10000.
    pub weight: u32,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

/// Why a route table was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

impl RouteTable {
    /// Checks the invariants the data plane relies on.
    pub fn validate(&self) -> Result<(), ValidationError> {
        // The first site seen on each address, and which site claimed each host there.
        let mut addrs: HashMap<SocketAddr, &ListenerConfig> = HashMap::new();
        let mut claimed: HashMap<(SocketAddr, String), &str> = HashMap::new();
        let mut ids = HashSet::new();
        for l in &self.listeners {
            if l.id.is_empty() {
                return Err(ValidationError(format!(
                    "listener on {} has an empty id",
                    l.listen
                )));
            }
            if !ids.insert(l.id.as_str()) {
                return Err(ValidationError(format!("duplicate listener id {:?}", l.id)));
            }
            for h in &l.hosts {
                if !valid_host_pattern(h) {
                    return Err(ValidationError(format!(
                        "listener {:?}: host {h:?} is not a host name (e.g. shop.example.com or *.example.com)",
                        l.id
                    )));
                }
                if let Some(other) = claimed.insert((l.listen, h.to_ascii_lowercase()), &l.id) {
                    return Err(ValidationError(format!(
                        "listener {:?}: host {h} on {} is already served by listener {other:?}",
                        l.id, l.listen
                    )));
                }
            }
            if let Some(path) = &l.access_log
                && !path.is_absolute()
            {
                return Err(ValidationError(format!(
                    "listener {:?}: access_log {} must be an absolute path",
                    l.id,
                    path.display()
                )));
            }
            if l.redirect_https.is_some() && (l.tls.is_some() || !l.routes.is_empty()) {
                return Err(ValidationError(format!(
                    "listener {:?}: redirect_https is for a plain listener without routes",
                    l.id
                )));
            }
            if let Some(first) = addrs.get(&l.listen) {
                if l.hosts.is_empty() || first.hosts.is_empty() {
                    return Err(ValidationError(format!(
                        "listener {:?}: listen address {} is used by listener {:?}; sites sharing an address must each list their hosts",
                        l.id, l.listen, first.id
                    )));
                }
                if l.tls.is_some() != first.tls.is_some() {
                    return Err(ValidationError(format!(
                        "listener {:?}: listen address {} is shared with listener {:?}, and only one of them has tls",
                        l.id, l.listen, first.id
                    )));
                }
            } else {
                addrs.insert(l.listen, l);
            }
            let mut prefixes = HashSet::new();
            for r in &l.routes {
                if !r.path_prefix.starts_with('/') {
                    return Err(ValidationError(format!(
                        "listener {:?} service {:?}: path_prefix {:?} must start with '/'",
                        l.id, r.service, r.path_prefix
                    )));
                }
                if !prefixes.insert(r.path_prefix.as_str()) {
                    return Err(ValidationError(format!(
                        "listener {:?}: duplicate path_prefix {:?}",
                        l.id, r.path_prefix
                    )));
                }
                let mut versions = HashSet::new();
                let mut sum: u64 = 0;
                for g in &r.backends {
                    if g.weight > TOTAL_WEIGHT {
                        return Err(ValidationError(format!(
                            "listener {:?} service {:?} version {:?}: weight {} exceeds {TOTAL_WEIGHT}",
                            l.id, r.service, g.version, g.weight
                        )));
                    }
                    if !versions.insert(g.version.as_str()) {
                        return Err(ValidationError(format!(
                            "listener {:?} service {:?}: duplicate version {:?}",
                            l.id, r.service, g.version
                        )));
                    }
                    sum += u64::from(g.weight);
                }
                if !r.backends.is_empty() && sum != u64::from(TOTAL_WEIGHT) {
                    return Err(ValidationError(format!(
                        "listener {:?} service {:?}: weights sum to {sum}, expected {TOTAL_WEIGHT}",
                        l.id, r.service
                    )));
                }
                let ctx = || format!("listener {:?} service {:?}", l.id, r.service);
                if let Some(ms) = r.upstream_timeout_ms
                    && !(1..=MAX_UPSTREAM_TIMEOUT_MS).contains(&ms)
                {
                    return Err(ValidationError(format!(
                        "{}: upstream_timeout_ms {ms} is not within 1..={MAX_UPSTREAM_TIMEOUT_MS}",
                        ctx()
                    )));
                }
                if let Some(p) = &r.preview {
                    if http::HeaderName::from_bytes(p.header.as_bytes()).is_err() {
                        return Err(ValidationError(format!(
                            "{}: preview header {:?} is not a valid header name",
                            ctx(),
                            p.header
                        )));
                    }
                    if let Some(t) = &p.token_sha256
                        && parse_sha256_hex(t).is_none()
                    {
                        return Err(ValidationError(format!(
                            "{}: preview token_sha256 must be 64 hex digits",
                            ctx()
                        )));
                    }
                    if !versions.contains(p.version.as_str()) {
                        return Err(ValidationError(format!(
                            "{}: preview version {:?} is not one of the route's backend groups",
                            ctx(),
                            p.version
                        )));
                    }
                }
                if let Some(st) = &r.sticky {
                    if st.header.is_none() && st.cookie.is_none() {
                        return Err(ValidationError(format!(
                            "{}: sticky needs a header or a cookie",
                            ctx()
                        )));
                    }
                    if let Some(h) = &st.header
                        && http::HeaderName::from_bytes(h.as_bytes()).is_err()
                    {
                        return Err(ValidationError(format!(
                            "{}: sticky header {h:?} is not a valid header name",
                            ctx()
                        )));
                    }
                    if let Some(c) = &st.cookie
                        && !valid_cookie_name(c)
                    {
                        return Err(ValidationError(format!(
                            "{}: sticky cookie {c:?} is not a valid cookie name",
                            ctx()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(weights: &[u32], prefix: &str) -> RouteTable {
        RouteTable {
            generation: 1,
            listeners: vec![ListenerConfig {
                id: "a/b".into(),
                listen: "127.0.0.1:1".parse().expect("addr"),
                hosts: vec![],
                tls: None,
                redirect_https: None,
                access_log: None,
                routes: vec![Route {
                    service: "api".into(),
                    path_prefix: prefix.into(),
                    backends: weights
                        .iter()
                        .enumerate()
                        .map(|(i, w)| BackendGroup {
                            version: format!("v{i}"),
                            weight: *w,
                            endpoints: vec![],
                        })
                        .collect(),
                    preview: None,
                    sticky: None,
                    upstream_timeout_ms: None,
                }],
            }],
        }
    }

    #[test]
    fn validation() {
        assert!(table(&[2500, 7500], "/").validate().is_ok());
        assert!(table(&[], "/").validate().is_ok());
        assert!(table(&[0, 10000], "/api").validate().is_ok());
        assert!(table(&[2500, 7000], "/").validate().is_err());
        assert!(table(&[20000], "/").validate().is_err());
        assert!(table(&[10000], "api").validate().is_err());
        let mut t = table(&[10000], "/");
        t.listeners.push(t.listeners[0].clone());
        t.listeners[1].id = "other".into();
        assert!(t.validate().is_err(), "duplicate listen address");
        // Sharing an address: fine with disjoint hosts, refused otherwise.
        t.listeners[0].hosts = vec!["shop.example.com".into()];
        assert!(t.validate().is_err(), "the other site lists no host");
        t.listeners[1].hosts = vec!["*.blog.example.com".into()];
        assert!(t.validate().is_ok());
        t.listeners[1].hosts.push("SHOP.example.com".into());
        let e = t.validate().expect_err("a host claimed twice");
        assert!(e.0.contains("already served by listener \"a/b\""), "{e}");
        t.listeners[1].hosts = vec!["blog.example.com".into()];
        t.listeners[1].tls = Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            hsts_max_age_secs: None,
        });
        assert!(t.validate().is_err(), "tls and plain on one address");
        for bad in ["", "shop.example.com:443", "*", "a..b", "-a.b", "sh op"] {
            t.listeners[1].tls = None;
            t.listeners[1].hosts = vec![bad.into()];
            assert!(t.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_timeout_and_access_log_validation() {
        let mut t = table(&[10000], "/");
        for (ms, ok) in [
            (Some(1), true),
            (Some(MAX_UPSTREAM_TIMEOUT_MS), true),
            (None, true),
            (Some(0), false),
            (Some(MAX_UPSTREAM_TIMEOUT_MS + 1), false),
        ] {
            t.listeners[0].routes[0].upstream_timeout_ms = ms;
            assert_eq!(t.validate().is_ok(), ok, "{ms:?}");
        }
        t.listeners[0].routes[0].upstream_timeout_ms = None;
        t.listeners[0].access_log = Some("/var/log/ferry/a.log".into());
        assert!(t.validate().is_ok());
        t.listeners[0].access_log = Some("logs/a.log".into());
        let e = t.validate().expect_err("relative access log");
        assert!(e.0.contains("absolute path"), "{e}");
    }

    #[test]
    fn preview_and_sticky_validation() {
        let with = |preview: Option<PreviewRule>, sticky: Option<StickyRule>| {
            let mut t = table(&[0, 10000], "/");
            t.listeners[0].routes[0].preview = preview;
            t.listeners[0].routes[0].sticky = sticky;
            t.validate()
        };
        let preview = |h: &str, v: &str| {
            Some(PreviewRule {
                header: h.into(),
                version: v.into(),
                token_sha256: None,
            })
        };
        let sticky = |h: Option<&str>, c: Option<&str>| {
            Some(StickyRule {
                header: h.map(Into::into),
                cookie: c.map(Into::into),
            })
        };
        assert!(with(preview("X-Ferry-Preview", "v0"), None).is_ok());
        assert!(with(preview("X-Ferry-Preview", "v9"), None).is_err());
        assert!(with(preview("bad header", "v0"), None).is_err());
        assert!(with(preview("", "v0"), None).is_err());
        let with_token = |t: &str| {
            let mut p = preview("X-Ferry-Preview", "v0");
            if let Some(p) = p.as_mut() {
                p.token_sha256 = Some(t.into());
            }
            with(p, None)
        };
        assert!(with_token(&"ab".repeat(32)).is_ok());
        assert!(with_token("abc").is_err());
        assert!(with_token(&"zz".repeat(32)).is_err());
        assert!(with(None, sticky(Some("X-User-Id"), None)).is_ok());
        assert!(with(None, sticky(None, Some("ferry_id"))).is_ok());
        assert!(with(None, sticky(Some("x-user"), Some("sid"))).is_ok());
        assert!(with(None, sticky(None, None)).is_err());
        assert!(with(None, sticky(Some("x:y"), None)).is_err());
        assert!(with(None, sticky(None, Some("a=b"))).is_err());
        assert!(with(None, sticky(None, Some(""))).is_err());
    }

    #[test]
    fn new_fields_are_optional_in_json() {
        let old = r#"{"service":"api","path_prefix":"/","backends":[]}"#;
        let r: Route = serde_json::from_str(old).expect("old route json");
        assert!(r.preview.is_none() && r.sticky.is_none() && r.upstream_timeout_ms.is_none());
        // And are left out when unset, so older readers keep working.
        let back = serde_json::to_string(&r).expect("json");
        assert!(
            !back.contains("preview") && !back.contains("sticky") && !back.contains("timeout"),
            "{back}"
        );
    }

    #[test]
    fn sticky_bucket_is_fixed_fnv1a() {
        // FNV-1a 64 reference values, so the bucket never depends on the process.
        assert_eq!(
            sticky_bucket(b""),
            (0xcbf2_9ce4_8422_2325u64 % 10_000) as u32
        );
        assert_eq!(
            sticky_bucket(b"a"),
            (0xaf63_dc4c_8601_ec8cu64 % 10_000) as u32
        );
        assert_eq!(
            sticky_bucket(b"foobar"),
            (0x8594_4171_f739_67e8u64 % 10_000) as u32
        );
        assert!((0..1000).all(|i| sticky_bucket(format!("user-{i}").as_bytes()) < 10_000));
    }
}
