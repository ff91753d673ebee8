//! Route tables pushed by the control plane.

use std::collections::HashSet;
use std::net::SocketAddr;

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

/// One listening socket (one app environment).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ListenerConfig {
    /// Usually `"app/env"`.
    pub id: String,
    pub listen: SocketAddr,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Requests whose path starts with `path_prefix` (segment-aware) go to `backends`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub service: String,
    pub path_prefix: String,
    #[serde(default)]
    pub backends: Vec<BackendGroup>,
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
        let mut addrs = HashSet::new();
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
            if !addrs.insert(l.listen) {
                return Err(ValidationError(format!(
                    "listener {:?}: listen address {} is used by another listener",
                    l.id, l.listen
                )));
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
    }
}
