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
//!
//! Templating is bounded, because a manifest is caller input: references nest at most
//! [`MAX_TEMPLATE_DEPTH`] levels, one value expands to at most [`MAX_VALUE_BYTES`], the
//! variables of one replica to at most [`MAX_EXPANDED_BYTES`] together, a map holds at most
//! [`MAX_VARIABLES`] variables, and checking a whole manifest does at most
//! [`MAX_CHECK_WORK`] bytes of templating work. Each bound, when reached, is an error at the
//! variable that reached it; nothing is expanded past it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

/// Variables every template may reference besides the layered `vars`.
pub const BUILTINS: [&str; 4] = ["VERSION", "FERRY_APP", "FERRY_ENV", "FERRY_SERVICE"];
/// Version used to check templates at apply time (no release is known then).
pub const CHECK_VERSION: &str = "0.0.0";

/// Deepest chain of references (`A` uses `B` uses `C`…) a template may follow.
pub const MAX_TEMPLATE_DEPTH: usize = 16;
/// Largest value one variable may expand to: Linux refuses to start a process with a
/// longer environment string (`MAX_ARG_STRLEN`, 128 KiB).
pub const MAX_VALUE_BYTES: usize = 128 * 1024;
/// Largest total of the variables one replica (or hook) receives from the manifest.
pub const MAX_EXPANDED_BYTES: usize = 1024 * 1024;
/// Longest value a placeholder of another template (`${VERSION}` in `run`, `{{app}}` in an
/// analysis query…) stands for: a version (128 bytes; names are shorter).
pub const MAX_PLACEHOLDER_BYTES: usize = 128;
/// Most variables one map (`vars`, an environment's `vars`, a service's `env`) may hold.
pub const MAX_VARIABLES: usize = 1000;
/// Most templating work (bytes read plus bytes written) checking one manifest may take, over
/// all its environments × services.
pub const MAX_CHECK_WORK: usize = 64 * 1024 * 1024;
/// Errors one resolution reports before it stops.
const MAX_ERRORS: usize = 100;

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
    /// References nest deeper than [`MAX_TEMPLATE_DEPTH`]; `chain` is the way down.
    TooDeep {
        path: Vec<String>,
        chain: Vec<String>,
    },
    /// One value would be longer than [`MAX_VALUE_BYTES`].
    ValueTooLarge {
        path: Vec<String>,
        name: String,
    },
    /// One replica's variables would total more than [`MAX_EXPANDED_BYTES`].
    TotalTooLarge {
        path: Vec<String>,
    },
    /// A map holds more than [`MAX_VARIABLES`] variables.
    TooMany {
        path: Vec<String>,
        count: usize,
    },
    /// Checking the manifest would take more than [`MAX_CHECK_WORK`] bytes of templating.
    TooMuchWork {
        path: Vec<String>,
        environments: usize,
        services: usize,
    },
}

impl ConfigError {
    /// The manifest field the error is about (empty for unknown environments/services).
    pub fn path(&self) -> &[String] {
        match self {
            ConfigError::UnknownVariable { path, .. }
            | ConfigError::Cycle { path, .. }
            | ConfigError::Unclosed { path }
            | ConfigError::TooDeep { path, .. }
            | ConfigError::ValueTooLarge { path, .. }
            | ConfigError::TotalTooLarge { path }
            | ConfigError::TooMany { path, .. }
            | ConfigError::TooMuchWork { path, .. } => path,
            ConfigError::UnknownEnvironment(_) | ConfigError::UnknownService(_) => &[],
        }
    }

    /// A bound of templating was reached (the rest was not expanded).
    pub fn is_bound(&self) -> bool {
        matches!(
            self,
            ConfigError::TooDeep { .. }
                | ConfigError::ValueTooLarge { .. }
                | ConfigError::TotalTooLarge { .. }
                | ConfigError::TooMany { .. }
                | ConfigError::TooMuchWork { .. }
        )
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
            ConfigError::TooDeep { chain, .. } => format!(
                "variables reference each other more than {MAX_TEMPLATE_DEPTH} levels deep: {}",
                elide(chain, 3).join(" -> ")
            ),
            ConfigError::ValueTooLarge { name, .. } => format!(
                "`{name}` expands to more than {MAX_VALUE_BYTES} bytes (the limit of one value)"
            ),
            ConfigError::TotalTooLarge { .. } => format!(
                "the variables of one replica expand to more than {MAX_EXPANDED_BYTES} bytes in total (the limit)"
            ),
            ConfigError::TooMany { count, .. } => {
                format!("{count} variables, more than the limit of {MAX_VARIABLES}")
            }
            ConfigError::TooMuchWork {
                environments,
                services,
                ..
            } => format!(
                "templating {environments} environment(s) × {services} service(s) takes more than {MAX_CHECK_WORK} bytes of work (the limit)"
            ),
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
            ConfigError::TooDeep { .. } => {
                Some("reference fewer variables in a row; write some values out".into())
            }
            ConfigError::ValueTooLarge { .. } | ConfigError::TotalTooLarge { .. } => Some(
                "a value that repeats a variable (e.g. `${A}${A}`) doubles at each level; keep large data in a file the process reads".into(),
            ),
            ConfigError::TooMany { .. } => {
                Some("keep large configuration in a file the process reads".into())
            }
            ConfigError::TooMuchWork { .. } => {
                Some("move shared large values out of `vars` into a file the process reads".into())
            }
            ConfigError::UnknownEnvironment(_) | ConfigError::UnknownService(_) => None,
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

/// `items` with the middle replaced by `…` when there are more than `2 * keep`.
fn elide(items: &[String], keep: usize) -> Vec<String> {
    if items.len() <= 2 * keep + 1 {
        return items.to_vec();
    }
    let mut out = items[..keep].to_vec();
    out.push(format!("… ({} more)", items.len() - 2 * keep));
    out.extend_from_slice(&items[items.len() - keep..]);
    out
}

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

/// A resolved variable: its value, how deep its references nest (0: none) and through
/// which variable the deepest chain goes.
#[derive(Clone)]
struct Rendered<'a> {
    value: String,
    depth: usize,
    deepest: Option<&'a str>,
}

struct Resolver<'a> {
    manifest: &'a Manifest,
    env: &'a str,
    raw: BTreeMap<&'a str, Raw<'a>>,
    builtins: BTreeMap<&'static str, String>,
    done: BTreeMap<&'a str, Option<Rendered<'a>>>,
    errors: Vec<ConfigError>,
    /// Bytes written so far by this resolution (bounded by [`MAX_EXPANDED_BYTES`]).
    written: usize,
    /// Templating work (bytes read and written) this resolution may still do.
    work_left: usize,
    /// Set when a bound was reached: nothing more is rendered.
    stopped: bool,
}

impl<'a> Resolver<'a> {
    fn known(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.raw.keys().copied().collect();
        names.extend(self.builtins.keys().copied());
        names
    }

    /// Records `error`; stops the resolution when it is a bound or too many were found.
    fn fail(&mut self, error: ConfigError, stop: bool) {
        self.errors.push(error);
        if stop || self.errors.len() >= MAX_ERRORS {
            self.stopped = true;
        }
    }

    /// Takes `bytes` of work from what is left; `false` (and stops) when it runs out.
    fn charge(&mut self, bytes: usize, at: &[String]) -> bool {
        match self.work_left.checked_sub(bytes) {
            Some(left) => {
                self.work_left = left;
                true
            }
            None => {
                let error = ConfigError::TooMuchWork {
                    path: at.to_vec(),
                    environments: self.manifest.environments.len(),
                    services: self.manifest.services.len(),
                };
                self.fail(error, true);
                false
            }
        }
    }

    /// Appends `text` to the value of `name` (at `at`), within every bound.
    fn append(&mut self, out: &mut String, text: &str, name: &str, at: &[String]) -> bool {
        if out.len() + text.len() > MAX_VALUE_BYTES {
            let error = ConfigError::ValueTooLarge {
                path: at.to_vec(),
                name: name.to_string(),
            };
            self.fail(error, true);
            return false;
        }
        if self.written + text.len() > MAX_EXPANDED_BYTES {
            self.fail(ConfigError::TotalTooLarge { path: at.to_vec() }, true);
            return false;
        }
        if !self.charge(text.len(), at) {
            return false;
        }
        self.written += text.len();
        out.push_str(text);
        true
    }

    /// Resolves the layered variable `name`; `None` when it (or what it references) fails.
    fn var(&mut self, name: &'a str, stack: &mut Vec<&'a str>) -> Option<Rendered<'a>> {
        if let Some(done) = self.done.get(name) {
            return done.clone();
        }
        if self.stopped {
            return None;
        }
        let at = self.raw.get(name)?.path.clone();
        if let Some(start) = stack.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            self.fail(ConfigError::Cycle { path: at, cycle }, false);
            return None;
        }
        let template = self.raw[name].template;
        stack.push(name);
        let rendered = self.render(template, name, &at, stack);
        stack.pop();
        let rendered = match rendered {
            Some(r) if r.depth > MAX_TEMPLATE_DEPTH => {
                let chain = self.chain(name, &r);
                self.fail(ConfigError::TooDeep { path: at, chain }, true);
                None
            }
            other => other,
        };
        self.done.insert(name, rendered.clone());
        rendered
    }

    /// The deepest chain of references from `name` (resolved as `r`).
    fn chain(&self, name: &'a str, r: &Rendered<'a>) -> Vec<String> {
        let mut chain = vec![name.to_string()];
        let mut next = r.deepest;
        while let Some(n) = next {
            chain.push(n.to_string());
            next = self
                .done
                .get(n)
                .and_then(|d| d.as_ref())
                .and_then(|d| d.deepest);
        }
        chain
    }

    /// Renders `template`, the value of `name` at `at`. The stack of variables being
    /// resolved never grows past [`MAX_TEMPLATE_DEPTH`] + 1: deeper is an error anyway.
    fn render(
        &mut self,
        template: &'a str,
        name: &str,
        at: &[String],
        stack: &mut Vec<&'a str>,
    ) -> Option<Rendered<'a>> {
        if self.stopped || !self.charge(template.len(), at) {
            return None;
        }
        let Ok(pieces) = parse_template(template) else {
            self.fail(ConfigError::Unclosed { path: at.to_vec() }, false);
            return None;
        };
        let mut out = Rendered {
            value: String::new(),
            depth: 0,
            deepest: None,
        };
        let mut ok = true;
        for piece in pieces {
            if self.stopped {
                return None;
            }
            match piece {
                Piece::Text(t) => {
                    if !self.append(&mut out.value, &t, name, at) {
                        return None;
                    }
                }
                Piece::Ref(reference) => {
                    if let Some(v) = self.builtins.get(reference.as_str()) {
                        let v = v.clone();
                        if !self.append(&mut out.value, &v, name, at) {
                            return None;
                        }
                        continue;
                    }
                    // Borrow the key from the map so that it lives as long as the resolver.
                    let key = self.raw.get_key_value(reference.as_str()).map(|(k, _)| *k);
                    match key {
                        Some(key) if stack.len() > MAX_TEMPLATE_DEPTH => {
                            // Deeper than allowed whatever `key` holds.
                            out.depth = out.depth.max(stack.len());
                            out.deepest = Some(key);
                        }
                        Some(key) => match self.var(key, stack) {
                            Some(v) => {
                                if v.depth + 1 > out.depth {
                                    out.depth = v.depth + 1;
                                    out.deepest = Some(key);
                                }
                                if !self.append(&mut out.value, &v.value, name, at) {
                                    return None;
                                }
                            }
                            None => ok = false,
                        },
                        None => {
                            self.unknown(reference, at);
                            ok = false;
                        }
                    }
                }
            }
        }
        ok.then_some(out)
    }

    fn unknown(&mut self, name: String, at: &[String]) {
        let known = self.known();
        let suggestion = crate::manifest::closest(&name, &known).map(str::to_string);
        let defined_in = self
            .manifest
            .environments
            .iter()
            .filter(|(_, e)| e.vars.contains_key(&name))
            .map(|(n, _)| n.to_string())
            .collect();
        let error = ConfigError::UnknownVariable {
            path: at.to_vec(),
            name,
            suggestion,
            env: self.env.to_string(),
            defined_in,
        };
        self.fail(error, false);
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
    let (r, out) = layered(manifest, env, environment, version, None, MAX_CHECK_WORK);
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
    work: usize,
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
        written: 0,
        work_left: work,
        stopped: false,
    };
    let mut out: BTreeMap<String, EffectiveVar> = BTreeMap::new();
    let names: Vec<&str> = r.raw.keys().copied().collect();
    for name in names {
        if let Some(Rendered { value, .. }) = r.var(name, &mut Vec::new()) {
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
    let (vars, errors, _) = resolve_within(manifest, env, service, version, MAX_CHECK_WORK);
    (vars, errors)
}

/// [`resolve`] with at most `work` bytes of templating work; also returns the work left.
fn resolve_within(
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
    work: usize,
) -> (Vec<EffectiveVar>, Vec<ConfigError>, usize) {
    let Some(environment) = manifest.environments.get(env) else {
        return (
            vec![],
            vec![ConfigError::UnknownEnvironment(env.to_string())],
            work,
        );
    };
    let Some(svc) = manifest.services.get(service) else {
        return (
            vec![],
            vec![ConfigError::UnknownService(service.to_string())],
            work,
        );
    };
    let (mut r, mut out) = layered(manifest, env, environment, version, Some(service), work);
    for (name, template) in &svc.env {
        let at = path(&["services", service, "env", name]);
        // Rendered even when shadowed, so that its mistakes are reported.
        let value = r.render(template, name, &at, &mut Vec::new());
        if environment.vars.contains_key(name) {
            continue;
        }
        if let Some(Rendered { value, .. }) = value {
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
    (out.into_values().collect(), errors, r.work_left)
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
/// Checked with version [`CHECK_VERSION`], within every bound (see the module's doc): a
/// map with more than [`MAX_VARIABLES`] is reported without expanding anything.
pub fn check(manifest: &Manifest) -> Vec<ConfigError> {
    let mut maps = vec![(path(&["vars"]), manifest.vars.len())];
    for (name, e) in manifest.environments.iter() {
        maps.push((path(&["environments", name, "vars"]), e.vars.len()));
    }
    for (name, s) in &manifest.services {
        maps.push((path(&["services", name, "env"]), s.env.len()));
    }
    let too_many: Vec<ConfigError> = maps
        .into_iter()
        .filter(|(_, count)| *count > MAX_VARIABLES)
        .map(|(path, count)| ConfigError::TooMany { path, count })
        .collect();
    if !too_many.is_empty() {
        return too_many;
    }
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    let mut work = MAX_CHECK_WORK;
    'all: for (env, _) in manifest.environments.iter() {
        for service in manifest.services.keys() {
            let (_, found, left) = resolve_within(manifest, env, service, CHECK_VERSION, work);
            work = left;
            for e in found {
                if seen.insert(e.to_string()) {
                    errors.push(e);
                }
            }
            if errors.len() >= MAX_ERRORS || errors.iter().any(ConfigError::is_bound) {
                break 'all;
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
