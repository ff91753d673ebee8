//! The `ferry.yaml` manifest: the typed shape, parsing with precise errors, and validation.
//!
//! Parsing never touches the outside world: a manifest is text in, `Manifest` or
//! `ManifestError` (with file, line, column, field path and hint) out.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// A whole manifest: one app, its services and its environments (in promotion order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// App name: lowercase letters, digits and `-`, starting with a letter.
    pub app: String,
    /// Services keyed by name (same naming rule as the app).
    pub services: BTreeMap<String, Service>,
    /// Environments keyed by name, in the order they are written (promotion order).
    pub environments: IndexedMap<Environment>,
}

/// How to run one version of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Command line (argv). `${PORT}` and `${VERSION}` are substituted.
    pub run: Vec<String>,
    /// Working directory, relative to the directory of the manifest file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment variables for every replica.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Number of replicas per environment (1..=64).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Path prefix routed to this service on the environment's listener (default `/`).
    #[serde(default = "default_route")]
    pub route: String,
    /// Active health check.
    #[serde(default)]
    pub health: HealthCheck,
    /// How long a replica gets between SIGTERM and SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: HumanDuration,
}

/// HTTP health check against each replica on `127.0.0.1:$PORT`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested; any 2xx answer is healthy.
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes before a replica is healthy.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    /// Consecutive failures before a healthy replica is unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// How long a new replica may take to become healthy before the rollout fails.
    #[serde(default = "default_start_timeout")]
    pub start_timeout: HumanDuration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: default_health_path(),
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            start_timeout: default_start_timeout(),
        }
    }
}

/// A stage (dev, qa, staging, production…) with its own listener, variables and strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Proxy listener, e.g. `127.0.0.1:8080`.
    pub listen: String,
    /// Variables given to every replica in this environment (override service `env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    /// Replica count override for every service in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub strategy: Strategy,
}

/// How a new version replaces the running one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Stop everything old, then start everything new (downtime; for dev).
    Recreate {},
    /// Replace replicas in health-gated batches.
    Rolling(Rolling),
}

impl Default for Strategy {
    fn default() -> Self {
        Strategy::Rolling(Rolling::default())
    }
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate {} => "recreate",
            Strategy::Rolling(_) => "rolling",
        }
    }
}

/// Rolling update limits, as replica counts or percentages of the replica count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Replicas that may run above the desired count during the update (`1` or `25%`).
    #[serde(default = "default_max_surge")]
    pub max_surge: IntOrPercent,
    /// Replicas that may be missing below the desired count (`0` or `25%`).
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: IntOrPercent,
}

impl Default for Rolling {
    fn default() -> Self {
        Rolling {
            max_surge: default_max_surge(),
            max_unavailable: default_max_unavailable(),
        }
    }
}

/// A count (`2`) or a percentage of the replica count (`"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum IntOrPercent {
    Count(u32),
    Percent(#[schemars(with = "String")] Percent),
}

impl IntOrPercent {
    /// Resolves against `total`; percentages round up for surge, down for unavailable
    /// (Kubernetes' convention), chosen by `round_up`.
    pub fn resolve(self, total: u32, round_up: bool) -> u32 {
        match self {
            IntOrPercent::Count(n) => n,
            IntOrPercent::Percent(Percent(p)) => {
                let scaled = u64::from(total) * u64::from(p);
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

/// A whole percentage written as `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u32);

impl Serialize for Percent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}%", self.0))
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let digits = text.strip_suffix('%').ok_or_else(|| {
            serde::de::Error::custom(format!("expected a count or a percentage like \"25%\", got {text:?}"))
        })?;
        let value: u32 = digits.trim().parse().map_err(|_| {
            serde::de::Error::custom(format!("expected a percentage like \"25%\", got {text:?}"))
        })?;
        if value > 100 {
            return Err(serde::de::Error::custom(format!("percentage {value}% is above 100%")));
        }
        Ok(Percent(value))
    }
}

/// A map that keeps the order its keys were written in (environments are ordered).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexedMap<T>(pub Vec<(String, T)>);

impl<T> IndexedMap<T> {
    pub fn get(&self, key: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<T: Serialize> Serialize for IndexedMap<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for IndexedMap<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = IndexedMap<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, T)> = Vec::new();
                while let Some((k, v)) = access.next_entry::<String, T>()? {
                    if entries.iter().any(|(existing, _)| *existing == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    entries.push((k, v));
                }
                Ok(IndexedMap(entries))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for IndexedMap<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_of_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <BTreeMap<String, T>>::json_schema(generator)
    }
}

fn default_replicas() -> u32 {
    1
}
fn default_route() -> String {
    "/".to_string()
}
fn default_stop_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_health_path() -> String {
    "/health".to_string()
}
fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}
fn default_healthy_threshold() -> u32 {
    1
}
fn default_unhealthy_threshold() -> u32 {
    3
}
fn default_start_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_surge() -> IntOrPercent {
    IntOrPercent::Count(1)
}
fn default_max_unavailable() -> IntOrPercent {
    IntOrPercent::Count(0)
}

/// Everything wrong with a manifest, each error pinned to a place in the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

/// One mistake: where (file:line:column and field path), what, and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}:{column}: {path}: {message}{}", .hint.as_ref().map(|h| format!(" (hint: {h})")).unwrap_or_default())]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Dotted field path, e.g. `services.api.health.interval`.
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses and validates a manifest. `file_name` is only used in error messages.
pub fn parse(text: &str, file_name: &str) -> Result<Manifest, ManifestErrors> {
    serde_saphyr::from_str::<Manifest>(text).map_err(|e| ManifestErrors {
        errors: vec![ManifestError {
            file: file_name.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            message: e.to_string(),
            hint: None,
        }],
    })
}

impl Manifest {
    /// Replica count of `service` in `env` (the environment's override wins).
    pub fn replicas(&self, service: &str, env: &str) -> u32 {
        let env_override = self.environments.get(env).and_then(|e| e.replicas);
        env_override
            .or_else(|| self.services.get(service).map(|s| s.replicas))
            .unwrap_or(1)
    }

    /// Human-readable changes from `old` to `self` (`+ added`, `- removed`, `~ changed`).
    pub fn diff(&self, old: Option<&Manifest>) -> Vec<String> {
        match old {
            None => vec![format!("+ app {}", self.app)],
            Some(old) if old == self => Vec::new(),
            Some(_) => vec![format!("~ app {}", self.app)],
        }
    }
}

/// JSON Schema of `ferry.yaml`, for editors.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Manifest)).unwrap_or_default()
}
