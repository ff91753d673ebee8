//! Layered, templated configuration: which variables a replica of a service receives in an
//! environment, where each one comes from, and a digest of all of it.
//!
//! Layers, later wins:
//!
//! 1. the app's top-level `vars` (defaults for every environment),
//! 2. the service's `env`,
//! 3. the environment's `vars` (they win over service `env`, as they always have),
//! 4. the environment's secrets (injected by the server, only ever as their own variable).
//!
//! Values of `vars` and of service `env` are templates: `${NAME}` is replaced by the layered
//! variable `NAME` (app `vars` ⊕ environment `vars`) or a built-in (`${VERSION}`,
//! `${FERRY_APP}`, `${FERRY_ENV}`, `${FERRY_SERVICE}`); `$${` is a literal `${`; any other
//! `$` is left alone. Secrets are never visible to templates, so no template can copy a
//! secret into a visible value. Pure: no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// Variables every template may reference besides the layered `vars`.
pub const BUILTINS: [&str; 4] = ["VERSION", "FERRY_APP", "FERRY_ENV", "FERRY_SERVICE"];
/// Version used to check templates at apply time (no release is known then).
pub const CHECK_VERSION: &str = "0.0.0";

/// Where an effective variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Source {
    /// The app's top-level `vars`.
    App,
    /// The environment's `vars` (`env:NAME`).
    Env(String),
    /// The service's `env` (`service:NAME`).
    Service(String),
    /// Set by Ferry (`VERSION`, `FERRY_APP`, `FERRY_ENV`, `FERRY_SERVICE`).
    Builtin,
    /// A secret of the environment.
    Secret,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::App => f.write_str("app"),
            Source::Env(e) => write!(f, "env:{e}"),
            Source::Service(s) => write!(f, "service:{s}"),
            Source::Builtin => f.write_str("builtin"),
            Source::Secret => f.write_str("secret"),
        }
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Source, String> {
        match s.as_str() {
            "app" => Ok(Source::App),
            "builtin" => Ok(Source::Builtin),
            "secret" => Ok(Source::Secret),
            other => match other.split_once(':') {
                Some(("env", name)) => Ok(Source::Env(name.to_string())),
                Some(("service", name)) => Ok(Source::Service(name.to_string())),
                _ => Err(format!("unknown variable source {other:?}")),
            },
        }
    }
}

/// One variable a replica receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveVar {
    pub name: String,
    /// The value after templating; `(secret)` for a secret (never its value).
    pub value: String,
    pub source: Source,
}

/// What may be known of a secret without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    pub name: String,
    pub version: i64,
    pub fingerprint: String,
}

/// Shown instead of a secret's value.
pub const SECRET_PLACEHOLDER: &str = "(secret)";

/// A template that cannot be resolved; `path` is the manifest field (`services.web.env.URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    UnknownEnvironment(String),
    UnknownService(String),
    UnknownVariable {
        path: Vec<String>,
        name: String,
        suggestion: Option<String>,
        /// The environment it was resolved for.
        env: String,
        /// Other environments whose `vars` set it.
        defined_in: Vec<String>,
    },
    Cycle {
        path: Vec<String>,
        cycle: Vec<String>,
    },
    Unclosed {
        path: Vec<String>,
    },
}

impl ConfigError {
    /// The manifest field the error is about (empty for unknown environments/services).
    pub fn path(&self) -> &[String] {
        match self {
            ConfigError::UnknownVariable { path, .. }
            | ConfigError::Cycle { path, .. }
            | ConfigError::Unclosed { path } => path,
            _ => &[],
        }
    }

    /// The message without the path.
    pub fn message(&self) -> String {
        match self {
            ConfigError::UnknownEnvironment(e) => format!("no environment `{e}`"),
            ConfigError::UnknownService(s) => format!("no service `{s}`"),
            ConfigError::UnknownVariable {
                name,
                env,
                defined_in,
                ..
            } => {
                if defined_in.is_empty() {
                    format!("unknown variable {name}")
                } else {
                    format!("unknown variable {name} in environment {env}")
                }
            }
            ConfigError::Cycle { cycle, .. } => {
                format!(
                    "variables reference each other in a cycle: {}",
                    cycle.join(" -> ")
                )
            }
            ConfigError::Unclosed { .. } => "`${` is missing its closing `}`".to_string(),
        }
    }

    /// A hint on how to fix it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::UnknownVariable {
                name,
                env,
                defined_in,
                ..
            } if !defined_in.is_empty() => Some(format!(
                "it is set only in environment {}; give it a default in the top-level `vars` or set it in `environments.{env}.vars.{name}`",
                defined_in.join(", ")
            )),
            ConfigError::UnknownVariable {
                suggestion: Some(s),
                ..
            } => Some(format!("did you mean {s}?")),
            ConfigError::UnknownVariable { name, .. } if name == "PORT" => {
                Some("`${PORT}` exists only in `run`; the process reads its port from $PORT".into())
            }
            ConfigError::UnknownVariable { .. } => Some(format!(
                "define it in the top-level `vars` or the environment's `vars`; built-ins are {}; secrets are never templated (each is its own variable)",
                BUILTINS.join(", ")
            )),
            ConfigError::Cycle { .. } => Some("make one of them a literal value".into()),
            ConfigError::Unclosed { .. } => Some("write `$${` for a literal `${`".into()),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path().join(".");
        if !path.is_empty() {
            write!(f, "{path}: ")?;
        }
        f.write_str(&self.message())?;
        if let Some(hint) = self.hint() {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Ref(String),
}

/// Splits a template into text and `${NAME}` references. `Err` if a `${` is not closed.
fn parse_template(s: &str) -> Result<Vec<Piece>, ()> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or(())?;
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Ref(after[..end].to_string()));
            rest = &after[end + 1..];
        } else {
            text.push('$');
            rest = &tail[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A variable of the `vars` layers, not yet resolved.
struct Raw<'a> {
    template: &'a str,
    source: Source,
    path: Vec<String>,
}

fn path(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

struct Resolver<'a> {
    manifest: &'a Manifest,
    env: &'a str,
    raw: BTreeMap<&'a str, Raw<'a>>,
    builtins: BTreeMap<&'static str, String>,
    done: BTreeMap<&'a str, Option<String>>,
    errors: Vec<ConfigError>,
}

impl<'a> Resolver<'a> {
    fn known(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.raw.keys().copied().collect();
        names.extend(self.builtins.keys().copied());
        names
    }

    /// Resolves the layered variable `name`; `None` when it (or what it references) fails.
    fn var(&mut self, name: &'a str, stack: &mut Vec<&'a str>) -> Option<String> {
        if let Some(done) = self.done.get(name) {
            return done.clone();
        }
        if let Some(start) = stack.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            let at = self
                .raw
                .get(name)
                .map(|r| r.path.clone())
                .unwrap_or_default();
            self.errors.push(ConfigError::Cycle { path: at, cycle });
            return None;
        }
        let raw = self.raw.get(name)?;
        let (template, at) = (raw.template, raw.path.clone());
        stack.push(name);
        let value = self.render(template, &at, stack);
        stack.pop();
        self.done.insert(name, value.clone());
        value
    }

    fn render(
        &mut self,
        template: &'a str,
        at: &[String],
        stack: &mut Vec<&'a str>,
    ) -> Option<String> {
        let Ok(pieces) = parse_template(template) else {
            self.errors
                .push(ConfigError::Unclosed { path: at.to_vec() });
            return None;
        };
        let mut out = String::new();
        let mut ok = true;
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(&t),
                Piece::Ref(name) => {
                    if let Some(v) = self.builtins.get(name.as_str()) {
                        out.push_str(v);
                        continue;
                    }
                    // Borrow the key from the map so that it lives as long as the resolver.
                    let key = self.raw.keys().copied().find(|k| *k == name);
                    match key {
                        Some(key) => match self.var(key, stack) {
                            Some(v) => out.push_str(&v),
                            None => ok = false,
                        },
                        None => {
                            let known = self.known();
                            let suggestion =
                                crate::manifest::closest(&name, &known).map(str::to_string);
                            let defined_in = self
                                .manifest
                                .environments
                                .iter()
                                .filter(|(_, e)| e.vars.contains_key(&name))
                                .map(|(n, _)| n.to_string())
                                .collect();
                            self.errors.push(ConfigError::UnknownVariable {
                                path: at.to_vec(),
                                name,
                                suggestion,
                                env: self.env.to_string(),
                                defined_in,
                            });
                            ok = false;
                        }
                    }
                }
            }
        }
        ok.then_some(out)
    }
}

/// The app's `vars` overridden by `env`'s, templated: what a hook in `env` receives from the
/// manifest (hooks belong to no service), sorted by name; plus every error found.
pub fn environment_vars(
    manifest: &Manifest,
    env: &str,
    version: &str,
) -> (Vec<EffectiveVar>, Vec<ConfigError>) {
    let Some(environment) = manifest.environments.get(env) else {
        return (
            vec![],
            vec![ConfigError::UnknownEnvironment(env.to_string())],
        );
    };
    let (r, out) = layered(manifest, env, environment, version, None);
    (out.into_values().collect(), r.errors)
}

/// The layered (app, then environment) variables, resolved, and the resolver that did it
/// (for service templates and the errors).
fn layered<'a>(
    manifest: &'a Manifest,
    env: &'a str,
    environment: &'a crate::manifest::Environment,
    version: &str,
    service: Option<&str>,
) -> (Resolver<'a>, BTreeMap<String, EffectiveVar>) {
    let mut raw: BTreeMap<&str, Raw> = BTreeMap::new();
    for (name, template) in &manifest.vars {
        raw.insert(
            name,
            Raw {
                template,
                source: Source::App,
                path: path(&["vars", name]),
            },
        );
    }
    for (name, template) in &environment.vars {
        raw.insert(
            name,
            Raw {
                template,
                source: Source::Env(env.to_string()),
                path: path(&["environments", env, "vars", name]),
            },
        );
    }
    let mut builtins = BTreeMap::from([
        ("VERSION", version.to_string()),
        ("FERRY_APP", manifest.app.clone()),
        ("FERRY_ENV", env.to_string()),
    ]);
    if let Some(service) = service {
        builtins.insert("FERRY_SERVICE", service.to_string());
    }
    let mut r = Resolver {
        manifest,
        env,
        raw,
        builtins,
        done: BTreeMap::new(),
        errors: Vec::new(),
    };
    let mut out: BTreeMap<String, EffectiveVar> = BTreeMap::new();
    let names: Vec<&str> = r.raw.keys().copied().collect();
    for name in names {
        if let Some(value) = r.var(name, &mut Vec::new()) {
            let source = r.raw[name].source.clone();
            out.insert(
                name.to_string(),
                EffectiveVar {
                    name: name.to_string(),
                    value,
                    source,
                },
            );
        }
    }
    (r, out)
}

/// Every variable a replica of `service` in `env` receives from the manifest (not its
/// secrets, not `PORT`), sorted by name, with their sources; plus every error found.
pub fn resolve(
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
) -> (Vec<EffectiveVar>, Vec<ConfigError>) {
    let Some(environment) = manifest.environments.get(env) else {
        return (
            vec![],
            vec![ConfigError::UnknownEnvironment(env.to_string())],
        );
    };
    let Some(svc) = manifest.services.get(service) else {
        return (
            vec![],
            vec![ConfigError::UnknownService(service.to_string())],
        );
    };
    let (mut r, mut out) = layered(manifest, env, environment, version, Some(service));
    for (name, template) in &svc.env {
        let at = path(&["services", service, "env", name]);
        // Rendered even when shadowed, so that its mistakes are reported.
        let value = r.render(template, &at, &mut Vec::new());
        if environment.vars.contains_key(name) {
            continue;
        }
        if let Some(value) = value {
            out.insert(
                name.clone(),
                EffectiveVar {
                    name: name.clone(),
                    value,
                    source: Source::Service(service.to_string()),
                },
            );
        }
    }
    for (name, value) in &r.builtins {
        out.insert(
            name.to_string(),
            EffectiveVar {
                name: name.to_string(),
                value: value.clone(),
                source: Source::Builtin,
            },
        );
    }
    let mut errors = r.errors;
    let mut seen = BTreeSet::new();
    errors.retain(|e| seen.insert(e.to_string()));
    (out.into_values().collect(), errors)
}

/// The effective variables of `service` in `env` for `version` (see [`resolve`]); the
/// first error if any template cannot be resolved.
pub fn effective(
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
) -> Result<Vec<EffectiveVar>, ConfigError> {
    let (vars, mut errors) = resolve(manifest, env, service, version);
    if errors.is_empty() {
        Ok(vars)
    } else {
        Err(errors.remove(0))
    }
}

/// Adds the environment's secrets on top (they win); their value is shown as `(secret)`.
pub fn with_secrets(vars: Vec<EffectiveVar>, secrets: &[SecretRef]) -> Vec<EffectiveVar> {
    let mut out: BTreeMap<String, EffectiveVar> =
        vars.into_iter().map(|v| (v.name.clone(), v)).collect();
    for s in secrets {
        out.insert(
            s.name.clone(),
            EffectiveVar {
                name: s.name.clone(),
                value: SECRET_PLACEHOLDER.to_string(),
                source: Source::Secret,
            },
        );
    }
    out.into_values().collect()
}

/// Every template mistake of a manifest, for every environment × service, once each.
/// Checked with version [`CHECK_VERSION`].
pub fn check(manifest: &Manifest) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (env, _) in manifest.environments.iter() {
        for service in manifest.services.keys() {
            let (_, found) = resolve(manifest, env, service, CHECK_VERSION);
            for e in found {
                if seen.insert(e.to_string()) {
                    errors.push(e);
                }
            }
        }
    }
    errors
}

/// What a replica was started with, without values: a SHA-256 per variable value, each
/// secret's version and fingerprint, a SHA-256 of the command line and working directory.
/// Two replicas with equal summaries run with the same configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub vars: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, SecretStamp>,
    pub command: String,
}

/// A secret as recorded in a [`ConfigSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStamp {
    pub version: i64,
    pub fingerprint: String,
}

fn sha256_hex(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Summarises a replica's configuration: its effective (manifest) variables, the secrets of
/// its environment (which win over variables of the same name), its `run` and `cwd`.
pub fn summarize(
    vars: &[EffectiveVar],
    secrets: &[SecretRef],
    run: &[String],
    cwd: Option<&str>,
) -> ConfigSummary {
    let secret_names: BTreeSet<&str> = secrets.iter().map(|s| s.name.as_str()).collect();
    let vars = vars
        .iter()
        .filter(|v| !secret_names.contains(v.name.as_str()))
        .map(|v| (v.name.clone(), sha256_hex(&[&v.name, &v.value])))
        .collect();
    let secrets = secrets
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                SecretStamp {
                    version: s.version,
                    fingerprint: s.fingerprint.clone(),
                },
            )
        })
        .collect();
    let mut parts: Vec<&str> = run.iter().map(String::as_str).collect();
    parts.push("\0cwd");
    parts.push(cwd.unwrap_or(""));
    ConfigSummary {
        vars,
        secrets,
        command: sha256_hex(&parts),
    }
}

impl ConfigSummary {
    /// SHA-256 (hex) over a canonical encoding: stable across runs and map orders.
    pub fn digest(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (name, hash) in &self.vars {
            parts.push(format!("var {name} {hash}"));
        }
        for (name, s) in &self.secrets {
            parts.push(format!("secret {name} {} {}", s.version, s.fingerprint));
        }
        parts.push(format!("command {}", self.command));
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        sha256_hex(&refs)
    }

    /// What differs from `old` to `self`, by name only, e.g. `DB_HOST`,
    /// `secret API_KEY v2 → v3`, `NEW_VAR (added)`, `run/cwd`.
    pub fn changes_from(&self, old: &ConfigSummary) -> Vec<String> {
        let mut out = Vec::new();
        let names: BTreeSet<&String> = self.vars.keys().chain(old.vars.keys()).collect();
        for name in names {
            match (old.vars.get(name), self.vars.get(name)) {
                (Some(a), Some(b)) if a != b => out.push(name.clone()),
                (None, Some(_)) => out.push(format!("{name} (added)")),
                (Some(_), None) => out.push(format!("{name} (removed)")),
                _ => {}
            }
        }
        let names: BTreeSet<&String> = self.secrets.keys().chain(old.secrets.keys()).collect();
        for name in names {
            match (old.secrets.get(name), self.secrets.get(name)) {
                (Some(a), Some(b)) if a != b => {
                    out.push(format!("secret {name} v{} → v{}", a.version, b.version))
                }
                (None, Some(b)) => out.push(format!("secret {name} v{} (added)", b.version)),
                (Some(_), None) => out.push(format!("secret {name} (removed)")),
                _ => {}
            }
        }
        if self.command != old.command {
            out.push("run/cwd".to_string());
        }
        out
    }
}

/// `GET /v1/apps/{app}/envs/{env}/config`: the effective configuration of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvConfig {
    pub app: String,
    pub env: String,
    /// The version serving there (what `${VERSION}` is shown with); `None` before the
    /// first successful deployment (`VERSION` then shows `(none)`).
    pub version: Option<String>,
    pub services: Vec<ServiceConfig>,
}

/// One service's effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceConfig {
    pub service: String,
    /// Sorted by name; secrets show `(secret)` as their value.
    pub vars: Vec<EffectiveVar>,
    /// The environment's secrets: name, version and fingerprint only.
    pub secrets: Vec<SecretRef>,
    /// Digest a replica of the serving version started now would be recorded with.
    pub digest: String,
    /// Templates that do not resolve (only for manifests stored before they were checked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Running replicas and whether they run this configuration (`ferry redeploy` replaces
    /// the others).
    pub replicas: Vec<ReplicaConfigState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaConfigState {
    pub id: String,
    pub version: String,
    pub up_to_date: bool,
}

/// One difference between the configurations of two environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDifference {
    pub service: String,
    pub name: String,
    /// `only-in-left`, `only-in-right` or `different`.
    pub kind: String,
    /// Value (or `(secret) vN`) on each side; `None` where it is absent.
    pub left: Option<String>,
    pub right: Option<String>,
}

/// Compares two environments' configurations variable by variable (built-ins, which
/// always differ, are left out). Secrets are compared by presence and version only.
pub fn diff(left: &EnvConfig, right: &EnvConfig) -> Vec<ConfigDifference> {
    let shown = |c: &ServiceConfig| -> BTreeMap<String, String> {
        let secrets: BTreeMap<&str, i64> = c
            .secrets
            .iter()
            .map(|s| (s.name.as_str(), s.version))
            .collect();
        c.vars
            .iter()
            .filter(|v| v.source != Source::Builtin)
            .map(|v| {
                let value = match (&v.source, secrets.get(v.name.as_str())) {
                    (Source::Secret, Some(version)) => format!("{SECRET_PLACEHOLDER} v{version}"),
                    _ => v.value.clone(),
                };
                (v.name.clone(), value)
            })
            .collect()
    };
    let empty = BTreeMap::new();
    let services: BTreeSet<&str> = left
        .services
        .iter()
        .chain(&right.services)
        .map(|s| s.service.as_str())
        .collect();
    let mut out = Vec::new();
    for service in services {
        let l = left
            .services
            .iter()
            .find(|s| s.service == service)
            .map(shown);
        let r = right
            .services
            .iter()
            .find(|s| s.service == service)
            .map(shown);
        let (l, r) = (l.as_ref().unwrap_or(&empty), r.as_ref().unwrap_or(&empty));
        let names: BTreeSet<&String> = l.keys().chain(r.keys()).collect();
        for name in names {
            let (a, b) = (l.get(name), r.get(name));
            let kind = match (a, b) {
                (Some(a), Some(b)) if a == b => continue,
                (Some(_), Some(_)) => "different",
                (Some(_), None) => "only-in-left",
                _ => "only-in-right",
            };
            out.push(ConfigDifference {
                service: service.to_string(),
                name: name.clone(),
                kind: kind.to_string(),
                left: a.cloned(),
                right: b.cloned(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests;
