//! Semantic validation: everything serde's types cannot say, all collected at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::tree::{Node, Seg, path_string};
use super::{
    MAX_REPLICAS, Manifest, ManifestError, NAME_PATTERN, RESERVED_VARS, RUN_PLACEHOLDERS, Service,
    Strategy,
};
use crate::analysis::{AnalysisSpec, PathPart};
use crate::duration::HumanDuration;
use crate::manifest::{
    BlueGreen, Canary, DEFAULT_PREVIEW_HEADER, IntOrPercent, Pause, weight_basis_points,
};

/// One semantic mistake, located by field path (turned into line:column by the tree).
pub(super) struct Issue {
    path: Vec<Seg>,
    /// Point at the value (`true`) or at its key (`false`).
    at_value: bool,
    message: String,
    hint: Option<String>,
}

impl Issue {
    pub(super) fn into_error(self, tree: &Node, file: &str) -> ManifestError {
        let pos = tree.locate(&self.path, self.at_value);
        ManifestError {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path_string(&self.path),
            message: self.message,
            hint: self.hint,
        }
    }
}

#[derive(Default)]
struct Issues(Vec<Issue>);

impl Issues {
    fn value(&mut self, path: Vec<Seg>, message: impl Into<String>, hint: Option<String>) {
        self.0.push(Issue {
            path,
            at_value: true,
            message: message.into(),
            hint,
        });
    }
    fn key(&mut self, path: Vec<Seg>, message: impl Into<String>, hint: Option<String>) {
        self.0.push(Issue {
            path,
            at_value: false,
            message: message.into(),
            hint,
        });
    }
}

fn p(parts: &[&str]) -> Vec<Seg> {
    parts.iter().map(|s| Seg::Key((*s).to_string())).collect()
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 63
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'))
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn name_hint(name: &str) -> Option<String> {
    let suggestion: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let rule = format!(
        "names match {NAME_PATTERN}: a lowercase letter, then lowercase letters, digits or `-`, at most 63 in all"
    );
    if is_name(&suggestion) && suggestion != name {
        Some(format!("{rule}; e.g. `{suggestion}`"))
    } else {
        Some(rule)
    }
}

pub(super) fn validate(m: &Manifest) -> Vec<Issue> {
    let mut out = Issues::default();
    if m.app.is_empty() {
        out.key(
            p(&["app"]),
            "an app name is required",
            Some("add a line like `app: shop`".into()),
        );
    } else if !is_name(&m.app) {
        out.value(
            p(&["app"]),
            format!("invalid app name {:?}", m.app),
            name_hint(&m.app),
        );
    }

    if m.services.is_empty() {
        out.key(
            p(&["services"]),
            "at least one service is required",
            Some(
                "e.g. `services: { web: { run: [\"./server\", \"--port\", \"${PORT}\"] } }`".into(),
            ),
        );
    }
    let mut routes: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, service) in &m.services {
        let base = p(&["services", name]);
        if !is_name(name) {
            out.key(
                base.clone(),
                format!("invalid service name {name:?}"),
                name_hint(name),
            );
        }
        check_service(&mut out, &base, service);
        if service.route.starts_with('/')
            && let Some(other) = routes.insert(&service.route, name)
        {
            out.value(
                with(&base, "route"),
                format!("route `{}` is already used by service `{other}`", service.route),
                Some("each service needs its own path prefix on the environment's listener, e.g. `/api` and `/`".into()),
            );
        }
    }

    if m.environments.is_empty() {
        out.key(
            p(&["environments"]),
            "at least one environment is required",
            Some("e.g. `environments: { dev: { listen: 127.0.0.1:8080 } }`; they are listed in promotion order".into()),
        );
    }
    let mut listeners: Vec<(SocketAddr, &str)> = Vec::new();
    for (name, env) in m.environments.iter() {
        let base = p(&["environments", name]);
        if !is_name(name) {
            out.key(
                base.clone(),
                format!("invalid environment name {name:?}"),
                name_hint(name),
            );
        }
        let listen_path = with(&base, "listen");
        if env.listen.is_empty() {
            out.key(
                base.clone(),
                "`listen` is required",
                Some(
                    "add the proxy address for this environment, e.g. `listen: 127.0.0.1:8080`"
                        .into(),
                ),
            );
        } else {
            match env.listen.parse::<SocketAddr>() {
                Err(_) => out.value(
                    listen_path,
                    format!("invalid listen address {:?}", env.listen),
                    Some("write it as IP:PORT, e.g. `127.0.0.1:8080` or `0.0.0.0:80` (IPv6: `[::1]:8080`)".into()),
                ),
                Ok(addr) if addr.port() == 0 => out.value(
                    listen_path,
                    format!("listen address {:?} has port 0", env.listen),
                    Some("pick a fixed port, e.g. `127.0.0.1:8080`".into()),
                ),
                Ok(addr) => {
                    let clash = listeners.iter().find(|(other, _)| {
                        other.port() == addr.port()
                            && (other.ip() == addr.ip() || other.ip().is_unspecified() || addr.ip().is_unspecified())
                    });
                    if let Some((other, other_env)) = clash {
                        out.value(
                            listen_path,
                            format!("listen address `{addr}` clashes with environment `{other_env}` ({other})"),
                            Some("every environment needs its own listener; use another port".into()),
                        );
                    }
                    listeners.push((addr, name));
                }
            }
        }
        check_vars(&mut out, &with(&base, "vars"), &env.vars);
        if let Some(replicas) = env.replicas {
            check_replicas(&mut out, with(&base, "replicas"), replicas);
        }
        if let Strategy::Rolling(rolling) = &env.strategy {
            let spath = with(&base, "strategy");
            let rpath = with(&spath, "rolling");
            for (field, value) in [
                ("max_surge", rolling.max_surge),
                ("max_unavailable", rolling.max_unavailable),
            ] {
                if let IntOrPercent::Percent(pct) = value
                    && pct.0 > 100
                {
                    out.value(
                        with(&rpath, field),
                        format!("{field} {value} is above 100%"),
                        Some("a percentage of the replica count is at most \"100%\"".into()),
                    );
                }
            }
            if rolling.max_surge.is_zero() && rolling.max_unavailable.is_zero() {
                out.value(
                    rpath,
                    "max_surge and max_unavailable are both 0: the rollout could never replace a replica",
                    Some("allow at least one extra replica (`max_surge: 1`) or one missing (`max_unavailable: 1`)".into()),
                );
            }
        }
        if let Some(gates) = &env.gates {
            for (i, rule) in gates.approvals.iter().enumerate() {
                let mut rpath = with(&with(&base, "gates"), "approvals");
                rpath.push(Seg::Index(i));
                if let Err(message) = crate::rbac::validate_role_name(&rule.role) {
                    out.value(with(&rpath, "role"), message, None);
                }
                if !(1..=10).contains(&rule.count) {
                    out.value(
                        with(&rpath, "count"),
                        format!("count {} is out of range", rule.count),
                        Some("between 1 and 10 approvals".into()),
                    );
                }
            }
        }
        match &env.strategy {
            Strategy::Canary(canary) => {
                check_canary(&mut out, &with(&with(&base, "strategy"), "canary"), canary)
            }
            Strategy::BlueGreen(blue_green) => {
                let bpath = with(&with(&base, "strategy"), "blue_green");
                check_blue_green(&mut out, &bpath, blue_green);
                if let Some(preview) = &blue_green.preview_listen {
                    let ppath = with(&bpath, "preview_listen");
                    match preview.parse::<SocketAddr>() {
                        Ok(addr) if addr.port() != 0 => {
                            if listeners.iter().any(|(other, _)| *other == addr)
                                || env.listen == *preview
                            {
                                out.value(
                                    ppath,
                                    format!("preview listener `{addr}` is already an environment's listener"),
                                    Some("give the preview its own port".into()),
                                );
                            }
                            listeners.push((addr, name));
                        }
                        _ => out.value(
                            ppath,
                            format!("invalid preview listen address {preview:?}"),
                            Some(
                                "write it as IP:PORT with a fixed port, e.g. `127.0.0.1:8081`"
                                    .into(),
                            ),
                        ),
                    }
                }
            }
            _ => {}
        }
    }
    for (i, notification) in m.notifications.iter().enumerate() {
        let base = vec![Seg::Key("notifications".into()), Seg::Index(i)];
        let url = &notification.webhook;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            out.value(
                with(&base, "webhook"),
                format!("invalid webhook URL {url:?}"),
                Some("write a full URL, e.g. `https://hooks.example.com/ferry`".into()),
            );
        }
        for (j, state) in notification.states.iter().enumerate() {
            if state.parse::<crate::model::DeploymentState>().is_err() {
                let mut path = with(&base, "states");
                path.push(Seg::Index(j));
                let names: Vec<&str> = crate::model::DeploymentState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect();
                out.value(
                    path,
                    format!("unknown state `{state}`"),
                    Some(format!("one of: {}", names.join(", "))),
                );
            }
        }
        for (j, env) in notification.environments.iter().enumerate() {
            if m.environments.get(env).is_none() {
                let mut path = with(&base, "environments");
                path.push(Seg::Index(j));
                out.value(
                    path,
                    format!("no environment `{env}` in this manifest"),
                    None,
                );
            }
        }
    }
    out.0
}

fn check_canary(out: &mut Issues, base: &[Seg], canary: &Canary) {
    if canary.steps.is_empty() {
        out.key(
            with(base, "steps"),
            "a canary needs at least one step",
            Some("e.g. `steps: [{ weight: 10 }, { pause: 1m }, { weight: 50 }]`".into()),
        );
    }
    for (i, step) in canary.steps.iter().enumerate() {
        let mut spath = with(base, "steps");
        spath.push(Seg::Index(i));
        if step.weight.is_none()
            && step.pause.is_none()
            && step.analysis.is_none()
            && step.replicas.is_none()
        {
            out.value(
                spath.clone(),
                "an empty step does nothing",
                Some("give it a `weight`, a `pause` or an `analysis`".into()),
            );
        }
        if let Some(weight) = step.weight
            && weight_basis_points(weight).is_none()
        {
            out.value(
                with(&spath, "weight"),
                format!("weight {weight} is not a percentage between 0 and 100 with at most two decimals"),
                Some("e.g. `weight: 5` or `weight: 0.5`".into()),
            );
        }
        if let Some(replicas) = step.replicas {
            check_replicas(out, with(&spath, "replicas"), replicas);
        }
        if let Some(Pause::For(d)) = &step.pause {
            positive(out, with(&spath, "pause"), *d);
        }
        if let Some(analysis) = &step.analysis {
            check_analysis(out, &with(&spath, "analysis"), analysis);
        }
    }
    if let Some(analysis) = &canary.analysis {
        check_analysis(out, &with(base, "analysis"), analysis);
    }
    if let Some(sticky) = &canary.stickiness {
        let spath = with(base, "stickiness");
        if sticky.header.is_none() && sticky.cookie.is_none() {
            out.value(
                spath,
                "stickiness needs a `header` or a `cookie` to recognise a client",
                Some("e.g. `stickiness: { header: X-User-Id }` or `{ cookie: session }`".into()),
            );
        } else if let Some(header) = &sticky.header
            && !is_header_name(header)
        {
            out.value(
                with(&spath, "header"),
                format!("invalid header name {header:?}"),
                None,
            );
        }
    }
    if !is_header_name(&canary.preview_header) {
        out.value(
            with(base, "preview_header"),
            format!("invalid header name {:?}", canary.preview_header),
            Some(format!("e.g. `{DEFAULT_PREVIEW_HEADER}`")),
        );
    }
}

fn check_blue_green(out: &mut Issues, base: &[Seg], blue_green: &BlueGreen) {
    if !is_header_name(&blue_green.preview_header) {
        out.value(
            with(base, "preview_header"),
            format!("invalid header name {:?}", blue_green.preview_header),
            Some(format!("e.g. `{DEFAULT_PREVIEW_HEADER}`")),
        );
    }
    if let Some(after) = blue_green.auto_promote_after {
        positive(out, with(base, "auto_promote_after"), after);
        if blue_green.auto_promote {
            out.value(
                with(base, "auto_promote_after"),
                "auto_promote_after only applies with `auto_promote: false`",
                Some("set `auto_promote: false` to wait for `ferry promote` (or this long)".into()),
            );
        }
    }
    positive(
        out,
        with(base, "scale_down_delay"),
        blue_green.scale_down_delay,
    );
    for (key, analysis) in [
        ("pre_promotion_analysis", &blue_green.pre_promotion_analysis),
        (
            "post_promotion_analysis",
            &blue_green.post_promotion_analysis,
        ),
    ] {
        if let Some(analysis) = analysis {
            check_analysis(out, &with(base, key), analysis);
        }
    }
}

fn check_analysis(out: &mut Issues, base: &[Seg], analysis: &AnalysisSpec) {
    for issue in analysis.validate() {
        let mut path = base.to_vec();
        path.extend(issue.path.iter().map(|part| match part {
            PathPart::Key(k) => Seg::Key(k.clone()),
            PathPart::Index(i) => Seg::Index(*i),
        }));
        out.value(path, issue.message, issue.hint);
    }
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

fn with(base: &[Seg], key: &str) -> Vec<Seg> {
    let mut path = base.to_vec();
    path.push(Seg::Key(key.to_string()));
    path
}

fn check_replicas(out: &mut Issues, path: Vec<Seg>, replicas: u32) {
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        out.value(
            path,
            format!("replicas must be between 1 and {MAX_REPLICAS}, got {replicas}"),
            Some(if replicas == 0 {
                "to stop a service, remove it from the manifest; a service runs at least 1 replica"
                    .to_string()
            } else {
                format!("Ferry runs at most {MAX_REPLICAS} replicas of a service per environment")
            }),
        );
    }
}

fn check_service(out: &mut Issues, base: &[Seg], s: &Service) {
    let run = with(base, "run");
    if s.run.is_empty() {
        out.key(
            run.clone(),
            "`run` is required: the command line that starts one replica",
            Some("e.g. `run: [\"./server\", \"--port\", \"${PORT}\"]`".into()),
        );
    } else if s.run[0].trim().is_empty() {
        let mut first = run.clone();
        first.push(Seg::Index(0));
        out.value(first, "the program to run (argv[0]) is empty", None);
    }
    for (i, arg) in s.run.iter().enumerate() {
        for bad in unknown_placeholders(arg) {
            let mut at = run.clone();
            at.push(Seg::Index(i));
            let message = if bad.starts_with("${") {
                format!("placeholder `{bad}` is missing its closing `}}`")
            } else {
                format!("unknown placeholder `${{{bad}}}`")
            };
            out.value(
                at,
                message,
                Some("`run` may use only `${PORT}` (the replica's port) and `${VERSION}` (the release version); pass other settings through `env` or environment `vars`".into()),
            );
        }
    }
    check_replicas(out, with(base, "replicas"), s.replicas);
    if !s.route.starts_with('/') {
        out.value(
            with(base, "route"),
            format!("route {:?} must start with `/`", s.route),
            Some(format!(
                "e.g. `route: /{}`",
                s.route.trim_start_matches('/')
            )),
        );
    }
    check_vars(out, &with(base, "env"), &s.env);

    let health = with(base, "health");
    if !s.health.path.starts_with('/') {
        out.value(
            with(&health, "path"),
            format!("health path {:?} must start with `/`", s.health.path),
            Some(format!(
                "e.g. `path: /{}`",
                s.health.path.trim_start_matches('/')
            )),
        );
    }
    for (field, d) in [
        ("interval", s.health.interval),
        ("timeout", s.health.timeout),
        ("start_timeout", s.health.start_timeout),
    ] {
        positive(out, with(&health, field), d);
    }
    positive(out, with(base, "stop_timeout"), s.stop_timeout);
    if !s.health.timeout.0.is_zero() && s.health.timeout > s.health.interval {
        out.value(
            with(&health, "timeout"),
            format!(
                "health timeout {} is longer than the interval {}",
                s.health.timeout, s.health.interval
            ),
            Some(format!(
                "a check must finish before the next one starts: lower `timeout` or raise `interval` to at least {}",
                s.health.timeout
            )),
        );
    }
    for (field, n) in [
        ("healthy_threshold", s.health.healthy_threshold),
        ("unhealthy_threshold", s.health.unhealthy_threshold),
    ] {
        if n == 0 {
            out.value(
                with(&health, field),
                format!("{field} must be at least 1"),
                Some(format!("e.g. `{field}: 1`")),
            );
        }
    }
}

fn positive(out: &mut Issues, path: Vec<Seg>, d: HumanDuration) {
    if d.0.is_zero() {
        out.value(
            path,
            "duration must be greater than 0",
            Some("e.g. `500ms`, `1s` or `2m`".into()),
        );
    }
}

fn check_vars(out: &mut Issues, base: &[Seg], vars: &BTreeMap<String, String>) {
    for name in vars.keys() {
        let path = with(base, name);
        if RESERVED_VARS.contains(&name.as_str()) {
            out.key(
                path,
                format!("`{name}` is set by Ferry and cannot be overridden"),
                Some(format!(
                    "Ferry sets {} for every replica; pick another name",
                    RESERVED_VARS.join(", ")
                )),
            );
        } else if !is_var_name(name) {
            out.key(
                path,
                format!("invalid environment variable name {name:?}"),
                Some("names are letters, digits and `_`, not starting with a digit (^[A-Za-z_][A-Za-z0-9_]*$)".into()),
            );
        }
    }
}

/// The names inside `${...}` in `arg` that Ferry does not substitute.
fn unknown_placeholders(arg: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = arg;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                if !RUN_PLACEHOLDERS.contains(&name) {
                    bad.push(name.to_string());
                }
                rest = &after[end + 1..];
            }
            None => {
                bad.push(format!("${{{after}"));
                break;
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["a", "shop", "api-v2", "x1"] {
            assert!(is_name(good), "{good}");
        }
        for bad in ["", "Shop", "1api", "-a", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_name(bad), "{bad}");
        }
        assert!(is_name(&"a".repeat(63)));
    }

    #[test]
    fn var_names() {
        assert!(is_var_name("LOG_LEVEL"));
        assert!(is_var_name("_x1"));
        assert!(!is_var_name("1X"));
        assert!(!is_var_name("A-B"));
        assert!(!is_var_name(""));
    }

    #[test]
    fn placeholders() {
        assert!(unknown_placeholders("--port=${PORT}/${VERSION}").is_empty());
        assert_eq!(unknown_placeholders("${HOME}/x${PORT}"), vec!["HOME"]);
        assert_eq!(unknown_placeholders("${PORT"), vec!["${PORT"]);
        assert!(unknown_placeholders("$PORT").is_empty());
    }
}
