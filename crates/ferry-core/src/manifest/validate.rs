//! Semantic validation: everything serde's types cannot say, all collected at once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::tree::{Node, Seg, path_string};
use super::{
    MAX_ENVIRONMENTS, MAX_REPLICAS, MAX_SERVICES, Manifest, ManifestError, NAME_PATTERN,
    RESERVED_VARS, RUN_PLACEHOLDERS, RuntimeKind, Service, Strategy,
};
use crate::analysis::{AnalysisSpec, PathPart};
use crate::duration::HumanDuration;
use crate::gates;
use crate::manifest::{
    BlueGreen, Canary, DEFAULT_PREVIEW_HEADER, FreezeWindow, Gates, IntOrPercent, Pause,
    weight_basis_points,
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
pub(super) struct Issues(Vec<Issue>);

impl Issues {
    pub(super) fn value(
        &mut self,
        path: Vec<Seg>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.0.push(Issue {
            path,
            at_value: true,
            message: message.into(),
            hint,
        });
    }
    pub(super) fn key(&mut self, path: Vec<Seg>, message: impl Into<String>, hint: Option<String>) {
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

/// An OS user name (`[a-z_][a-z0-9_-]*`, at most 32) or a numeric uid.
pub fn is_user_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.is_empty()
        && name.len() <= 32
        && (name.bytes().all(|b| b.is_ascii_digit())
            || (matches!(chars.next(), Some('a'..='z' | '_'))
                && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))))
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
    // Counts first: everything below is bounded by them.
    for (key, count, max) in [
        ("services", m.services.len(), MAX_SERVICES),
        ("environments", m.environments.len(), MAX_ENVIRONMENTS),
    ] {
        if count > max {
            out.key(
                p(&[key]),
                format!("{count} {key}, more than the limit of {max}"),
                Some("split the app into several apps".into()),
            );
        }
    }
    if !out.0.is_empty() {
        return out.0;
    }
    check_expansions(&mut out, m);
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
    // Address, environment, its hosts and whether it terminates TLS.
    let mut listeners: Vec<(SocketAddr, &str, &[String], bool)> = Vec::new();
    for (position, (name, env)) in m.environments.iter().enumerate() {
        let base = p(&["environments", name]);
        if env.runtime == RuntimeKind::Docker {
            for (service_name, _) in m.services.iter().filter(|(_, s)| s.image.is_none()) {
                out.key(
                    p(&["services", service_name]),
                    format!("environment {name} runs on `runtime: docker`, so service {service_name} needs an `image`"),
                    Some("e.g. `image: registry.example.com/shop/api:${VERSION}`".into()),
                );
            }
        }
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
                    let tls = env.tls.is_some();
                    let clash = listeners.iter().find(|(other, _, hosts, other_tls)| {
                        other.port() == addr.port()
                            && (other.ip() == addr.ip() || other.ip().is_unspecified() || addr.ip().is_unspecified())
                            && !shares_by_host(*other, hosts, *other_tls, addr, &env.hosts, tls)
                    });
                    if let Some((other, other_env, _, _)) = clash {
                        out.value(
                            listen_path,
                            format!("listen address `{addr}` clashes with environment `{other_env}` ({other})"),
                            Some("every environment needs its own listener, or several share one exact address when each lists its `hosts` and all or none use `tls`".into()),
                        );
                    }
                    for (i, host) in env.hosts.iter().enumerate() {
                        if let Some((_, other_env, _, _)) = listeners.iter().find(|(other, _, hosts, _)| {
                            *other == addr && hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                        }) {
                            out.value(
                                at(&with(&base, "hosts"), i),
                                format!("host `{host}` on `{addr}` is also served by environment `{other_env}`"),
                                None,
                            );
                        }
                    }
                    listeners.push((addr, name, &env.hosts, tls));
                }
            }
        }
        check_site(&mut out, &base, env);
        super::kubernetes::check(&mut out, m, name, env);
        check_vars(&mut out, &with(&base, "vars"), &env.vars);
        if let Some(user) = &env.run_as
            && !is_user_name(user)
        {
            out.value(
                with(&base, "run_as"),
                format!("invalid run_as {user:?}"),
                Some("an OS user name (lowercase, e.g. `nobody`, `www-data`, `root`) or a numeric uid".into()),
            );
        }
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
            let earlier: Vec<&str> = m
                .environments
                .iter()
                .take(position)
                .map(|(n, _)| n)
                .collect();
            check_promotion_gates(&mut out, &with(&base, "gates"), name, gates, &earlier, m);
        }
        if let Some(bake) = env.bake {
            positive(&mut out, with(&base, "bake"), bake);
            if bake.get() > MAX_BAKE {
                out.value(
                    with(&base, "bake"),
                    "bake is limited to 24h",
                    Some("a deployment stays in progress while it bakes; e.g. `2m` or `1h`".into()),
                );
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
                            if listeners.iter().any(|(other, _, _, _)| *other == addr)
                                || env.listen == *preview
                            {
                                out.value(
                                    ppath,
                                    format!("preview listener `{addr}` is already an environment's listener"),
                                    Some("give the preview its own port".into()),
                                );
                            }
                            listeners.push((addr, name, &[], false));
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
    // notify:
    super::notify::validate(&mut out, m);
    // config: top-level vars and templates in vars / service env.
    check_vars(&mut out, &p(&["vars"]), &m.vars);
    for e in crate::config::check(m) {
        let path = e.path().iter().map(|k| Seg::Key(k.clone())).collect();
        if matches!(e, crate::config::ConfigError::TooMany { .. }) {
            out.key(path, e.message(), e.hint());
        } else {
            out.value(path, e.message(), e.hint());
        }
    }
    // hooks:
    check_hooks(&mut out, m);
    // alerts:
    check_alerts(&mut out, m);
    out.0
}

fn check_alerts(out: &mut Issues, m: &Manifest) {
    let environments: Vec<&str> = m.environments.keys().collect();
    let services: Vec<&str> = m.services.keys().map(String::as_str).collect();
    for issue in crate::alerts::validate(&m.alerts, &environments, &services) {
        let mut path = vec![Seg::Key("alerts".into())];
        path.extend(issue.path.iter().map(|part| match part {
            PathPart::Key(k) => Seg::Key(k.clone()),
            PathPart::Index(i) => Seg::Index(*i),
        }));
        if issue.at_key {
            out.key(path, issue.message, issue.hint);
        } else {
            out.value(path, issue.message, issue.hint);
        }
    }
}

/// Variables Ferry sets for every hook; `env:` may not set them.
pub const HOOK_RESERVED_VARS: [&str; 6] = [
    "VERSION",
    "PREVIOUS_VERSION",
    "FERRY_APP",
    "FERRY_ENV",
    "FERRY_DEPLOYMENT_ID",
    "FERRY_HOOK",
];

fn check_hooks(out: &mut Issues, m: &Manifest) {
    let known_envs: Vec<&str> = m.environments.keys().collect();
    for (phase, hooks) in [
        ("pre_deploy", &m.hooks.pre_deploy),
        ("post_deploy", &m.hooks.post_deploy),
        ("on_rollback", &m.hooks.on_rollback),
    ] {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, hook) in hooks.iter().enumerate() {
            let base = vec![
                Seg::Key("hooks".into()),
                Seg::Key(phase.into()),
                Seg::Index(i),
            ];
            if !is_name(&hook.name) {
                out.value(
                    with(&base, "name"),
                    format!("invalid hook name {:?}", hook.name),
                    name_hint(&hook.name),
                );
            }
            if let Some(first) = seen.insert(&hook.name, i) {
                out.value(
                    with(&base, "name"),
                    format!(
                        "hook name `{}` is already used by hooks.{phase}[{first}]",
                        hook.name
                    ),
                    Some("names must be unique within a phase".into()),
                );
            }
            match (&hook.run, &hook.http) {
                (Some(_), Some(_)) => out.key(
                    with(&base, "http"),
                    "a hook has either `run` or `http`, not both",
                    Some("split it into two hooks".into()),
                ),
                (None, None) => out.key(
                    base.clone(),
                    "a hook needs `run` (a command) or `http` (a smoke test)",
                    Some("e.g. `run: [\"./smoke.sh\"]` or `http: { path: /health }`".into()),
                ),
                _ => {}
            }
            if let Some(run) = &hook.run
                && (run.is_empty() || run[0].trim().is_empty())
            {
                out.value(
                    with(&base, "run"),
                    "the command is empty",
                    Some("write the argv, e.g. `[\"sh\", \"-c\", \"./backup.sh\"]`".into()),
                );
            }
            if let Some(http) = &hook.http {
                let hbase = with(&base, "http");
                if !http.path.starts_with('/') {
                    out.value(
                        with(&hbase, "path"),
                        format!("path {:?} must start with `/`", http.path),
                        None,
                    );
                }
                if let Some(status) = http.expect_status
                    && !(100..=599).contains(&status)
                {
                    out.value(
                        with(&hbase, "expect_status"),
                        format!("{status} is not an HTTP status"),
                        Some("a number between 100 and 599".into()),
                    );
                }
                if let Some(json) = &http.expect_json
                    && !(json.pointer.is_empty() || json.pointer.starts_with('/'))
                {
                    out.value(
                        with(&with(&hbase, "expect_json"), "pointer"),
                        format!("invalid JSON pointer {:?}", json.pointer),
                        Some("a JSON pointer starts with `/`, e.g. `/version`".into()),
                    );
                }
                if let Some(latency) = http.max_latency {
                    positive(out, with(&hbase, "max_latency"), latency);
                }
            }
            if let Some(timeout) = hook.timeout {
                positive(out, with(&base, "timeout"), timeout);
            }
            for (j, env) in hook.environments.iter().enumerate() {
                if m.environments.get(env).is_none() {
                    let mut path = with(&base, "environments");
                    path.push(Seg::Index(j));
                    out.value(
                        path,
                        format!("no environment `{env}` in this manifest"),
                        Some(format!("known environments: {}", known_envs.join(", "))),
                    );
                }
            }
            for name in hook.env.keys() {
                let path = with(&with(&base, "env"), name);
                if HOOK_RESERVED_VARS.contains(&name.as_str()) {
                    out.key(
                        path,
                        format!("`{name}` is set by Ferry for every hook"),
                        Some(format!("Ferry sets {}", HOOK_RESERVED_VARS.join(", "))),
                    );
                } else if !is_var_name(name) {
                    out.key(
                        path,
                        format!("invalid environment variable name {name:?}"),
                        Some("names are letters, digits and `_`, not starting with a digit".into()),
                    );
                }
            }
            if let Some(migration) = &hook.migration {
                if phase != "pre_deploy" {
                    out.key(
                        with(&base, "migration"),
                        "`migration` is only allowed on pre_deploy hooks",
                        Some("migrations run before the new version starts; move this hook to `pre_deploy`".into()),
                    );
                }
                if hook.http.is_some() {
                    out.key(
                        with(&base, "migration"),
                        "an HTTP hook cannot be a migration",
                        None,
                    );
                }
                if let super::Migration::Down(down) = migration
                    && (down.is_empty() || down[0].trim().is_empty())
                {
                    out.value(
                        with(&with(&base, "migration"), "down"),
                        "the down command is empty",
                        Some("write its argv, or `migration: irreversible`".into()),
                    );
                }
            }
        }
    }
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
    } else if canary.allow_unjudged {
        out.value(
            with(base, "allow_unjudged"),
            "allow_unjudged only applies with a background `analysis`",
            Some("remove it, or add `analysis:` to the canary".into()),
        );
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
    check_preview_secret(out, base, canary.preview_secret.as_deref());
}

fn check_preview_secret(out: &mut Issues, base: &[Seg], secret: Option<&str>) {
    if let Some(name) = secret
        && !is_var_name(name)
    {
        out.value(
            with(base, "preview_secret"),
            format!("invalid secret name {name:?}"),
            Some("the name of a secret of this environment, e.g. `PREVIEW_TOKEN`".into()),
        );
    }
}

fn check_blue_green(out: &mut Issues, base: &[Seg], blue_green: &BlueGreen) {
    check_preview_secret(out, base, blue_green.preview_secret.as_deref());
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

fn at(base: &[Seg], index: usize) -> Vec<Seg> {
    let mut path = base.to_vec();
    path.push(Seg::Index(index));
    path
}

/// Two environments may share one exact address when both list their hosts, none twice
/// (checked per host), and both or neither terminate TLS.
fn shares_by_host(
    a: SocketAddr,
    a_hosts: &[String],
    a_tls: bool,
    b: SocketAddr,
    b_hosts: &[String],
    b_tls: bool,
) -> bool {
    a == b && !a_hosts.is_empty() && !b_hosts.is_empty() && a_tls == b_tls
}

/// `shop.example.com` or `*.example.com`: DNS labels of letters, digits and `-`.
pub fn is_host_pattern(h: &str) -> bool {
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

/// `hosts` and `tls` of an environment.
fn check_site(out: &mut Issues, base: &[Seg], env: &crate::manifest::Environment) {
    let hosts = with(base, "hosts");
    for (i, host) in env.hosts.iter().enumerate() {
        if !is_host_pattern(host) {
            out.value(
                at(&hosts, i),
                format!("invalid host {host:?}"),
                Some("a host name without scheme or port, e.g. `shop.example.com` or `*.example.com`".into()),
            );
        } else if env.hosts[..i].iter().any(|h| h.eq_ignore_ascii_case(host)) {
            out.value(
                at(&hosts, i),
                format!("host `{host}` is listed twice"),
                None,
            );
        }
    }
    if let Some(d) = env.upstream_timeout {
        upstream_timeout(out, with(base, "upstream_timeout"), d);
    }
    if let Some(file) = &env.access_log
        && !std::path::Path::new(file).is_absolute()
    {
        out.value(
            with(base, "access_log"),
            "`access_log` must be the absolute path of a file on the server's machine",
            Some("e.g. `/var/log/ferry/shop-production.access.log`".into()),
        );
    }
    let Some(tls) = &env.tls else { return };
    let tpath = with(base, "tls");
    for (key, file) in [("cert", &tls.cert), ("key", &tls.key)] {
        if !std::path::Path::new(file).is_absolute() {
            out.value(
                with(&tpath, key),
                format!("`{key}` must be the absolute path of a PEM file on the server's machine"),
                Some("e.g. `/etc/ferry/tls/shop.pem`".into()),
            );
        }
    }
    if let Some(redirect) = &tls.redirect_http {
        match redirect.parse::<SocketAddr>() {
            Ok(addr)
                if env
                    .listen
                    .parse::<SocketAddr>()
                    .is_ok_and(|l| l.port() == addr.port()) =>
            {
                out.value(
                    with(&tpath, "redirect_http"),
                    format!("`{addr}` is the port of `listen` itself"),
                    Some("the plain-HTTP port, e.g. `0.0.0.0:80`".into()),
                );
            }
            Ok(_) => {}
            Err(_) => out.value(
                with(&tpath, "redirect_http"),
                format!("invalid listen address {redirect:?}"),
                Some("write it as IP:PORT, e.g. `0.0.0.0:80`".into()),
            ),
        }
    }
    if let Some(hsts) = tls.hsts {
        positive(out, with(&tpath, "hsts"), hsts);
    }
}

pub(super) fn with(base: &[Seg], key: &str) -> Vec<Seg> {
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
    if let Some(resources) = &s.resources {
        let at = with(base, "resources");
        if let Err(e) = resources.memory_bytes() {
            out.value(with(&at, "memory"), e, Some("e.g. `memory: 256Mi`".into()));
        }
        if let Err(e) = resources.nano_cpus() {
            out.value(with(&at, "cpus"), e, Some("e.g. `cpus: 0.5`".into()));
        }
    }
    if let Some(problem) = s.image.as_deref().and_then(image_reference_problem) {
        out.value(
            with(base, "image"),
            problem,
            Some("e.g. `image: registry.example.com/shop/api:${VERSION}`".into()),
        );
    }
    if s.run.is_empty() && s.image.is_none() {
        out.key(
            run.clone(),
            "`run` is required: the command line that starts one replica (or an `image`)",
            Some("e.g. `run: [\"./server\", \"--port\", \"${PORT}\"]`, or `image: shop/api:${VERSION}` for `runtime: docker`".into()),
        );
    } else if s.run.first().is_some_and(|p| p.trim().is_empty()) {
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
    positive(out, with(base, "drain_timeout"), s.drain_timeout);
    if let Some(d) = s.upstream_timeout {
        upstream_timeout(out, with(base, "upstream_timeout"), d);
    }
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

/// `after` names an earlier environment, `soak` goes with `after`, freeze windows read.
fn check_promotion_gates(
    out: &mut Issues,
    gpath: &[Seg],
    env: &str,
    gates: &Gates,
    earlier: &[&str],
    m: &Manifest,
) {
    if let Some(after) = &gates.after {
        let apath = with(gpath, "after");
        let listed = if earlier.is_empty() {
            "none: this is the first environment".to_string()
        } else {
            earlier
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if after == env {
            out.value(
                apath,
                format!("environment `{env}` cannot come after itself"),
                Some(format!("name an environment written before it ({listed})")),
            );
        } else if m.environments.get(after).is_none() {
            out.value(
                apath,
                format!("`after` names unknown environment `{after}`"),
                Some(format!("environments written before `{env}`: {listed}")),
            );
        } else if !earlier.contains(&after.as_str()) {
            out.value(
                apath,
                format!("`after: {after}` names an environment written after `{env}`"),
                Some(format!(
                    "environments are in promotion order; move `{after}` before `{env}` or name one of: {listed}"
                )),
            );
        }
    }
    if let Some(soak) = gates.soak {
        let spath = with(gpath, "soak");
        if gates.after.is_none() {
            out.key(
                spath.clone(),
                "`soak` needs `after`: the environment the release soaks in",
                Some("e.g. `after: staging` with `soak: 30m`".into()),
            );
        }
        positive(out, spath, soak);
    }
    // releases:
    if gates.auto_promote && gates.after.is_none() {
        out.key(
            with(gpath, "auto_promote"),
            "`auto_promote` needs `after`: the environment versions are promoted from",
            Some("e.g. `after: dev` with `auto_promote: true`".into()),
        );
    }
    for (i, window) in gates.freeze.iter().enumerate() {
        let mut wpath = with(gpath, "freeze");
        wpath.push(Seg::Index(i));
        check_freeze_window(out, &wpath, window);
    }
    check_gate_checks(out, gpath, gates);
}

/// Placeholders a gate check may use.
pub(crate) const CHECK_PLACEHOLDERS: [&str; 3] = ["VERSION", "FERRY_ENV", "FERRY_APP"];

/// `${NAME}` placeholders of `text` that a gate check does not know.
fn unknown_check_placeholders(text: &str) -> Vec<String> {
    placeholders_outside(text, &CHECK_PLACEHOLDERS)
}

// gates:
/// Each check: a unique name, exactly one of `http`/`run`, known placeholders, sane times.
fn check_gate_checks(out: &mut Issues, gpath: &[Seg], gates: &Gates) {
    let placeholder_hint =
        || Some("gate checks know `${VERSION}`, `${FERRY_ENV}` and `${FERRY_APP}`".to_string());
    let mut seen: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    for (i, check) in gates.checks.iter().enumerate() {
        let mut cpath = with(gpath, "checks");
        cpath.push(Seg::Index(i));
        let name = check.name.as_str();
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid_name {
            out.value(
                with(&cpath, "name"),
                format!("invalid check name {name:?}"),
                Some("letters, digits, `.`, `_` and `-` (at most 63), e.g. `ci-green`".into()),
            );
        } else if seen.contains(&name) {
            out.value(
                with(&cpath, "name"),
                format!("check `{name}` is defined twice in this environment"),
                Some("give each check its own name".into()),
            );
        }
        seen.insert(name);
        match (&check.http, &check.run) {
            (Some(_), Some(_)) => out.value(
                cpath.clone(),
                "a check is either `http` or `run`, not both",
                Some("split it into two checks".into()),
            ),
            (None, None) => out.value(
                cpath.clone(),
                "a check needs `http` or `run`",
                Some(
                    "e.g. `http: { url: \"http://ci/status/${VERSION}\", expect_status: 200 }` or `run: [\"sh\", \"-c\", \"test -f /srv/uat/${VERSION}.ok\"]`".into(),
                ),
            ),
            _ => {}
        }
        if let Some(http) = &check.http {
            let hpath = with(&cpath, "http");
            let url = http.url.trim();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                out.value(
                    with(&hpath, "url"),
                    format!("check URL {:?} is not an http:// or https:// URL", http.url),
                    Some("e.g. `http://127.0.0.1:9000/status/${VERSION}`".into()),
                );
            }
            for bad in unknown_check_placeholders(&http.url) {
                out.value(
                    with(&hpath, "url"),
                    format!("unknown placeholder `{bad}`"),
                    placeholder_hint(),
                );
            }
            if let Some(status) = http.expect_status
                && !(100..=599).contains(&status)
            {
                out.value(
                    with(&hpath, "expect_status"),
                    format!("{status} is not an HTTP status"),
                    Some("a status from 100 to 599, e.g. 200".into()),
                );
            }
        }
        if let Some(run) = &check.run {
            let rpath = with(&cpath, "run");
            if run.first().is_none_or(|p| p.trim().is_empty()) {
                out.value(
                    rpath.clone(),
                    "`run` needs a program",
                    Some("argv form, e.g. `[\"sh\", \"-c\", \"test -f ok\"]`".into()),
                );
            }
            for (j, arg) in run.iter().enumerate() {
                for bad in unknown_check_placeholders(arg) {
                    let mut apath = rpath.clone();
                    apath.push(Seg::Index(j));
                    out.value(
                        apath,
                        format!("unknown placeholder `{bad}`"),
                        placeholder_hint(),
                    );
                }
            }
        }
        if let Some(interval) = check.interval {
            positive(out, with(&cpath, "interval"), interval);
        }
        if let Some(timeout) = check.timeout {
            positive(out, with(&cpath, "timeout"), timeout);
        }
    }
}

fn check_freeze_window(out: &mut Issues, wpath: &[Seg], w: &FreezeWindow) {
    let shape_hint = Some(
        "write `{ cron: \"0 18 * * FRI\", duration: 64h, timezone: Europe/Paris }` or \
         `{ from: \"2026-12-20T00:00:00\", until: \"2027-01-03T00:00:00\", timezone: UTC }`"
            .to_string(),
    );
    let recurring = w.cron.is_some() || w.duration.is_some();
    let absolute = w.from.is_some() || w.until.is_some();
    if recurring && absolute {
        out.value(
            wpath.to_vec(),
            "a freeze window is either recurring (`cron` + `duration`) or absolute (`from` + `until`), not both",
            shape_hint.clone(),
        );
    } else if !recurring && !absolute {
        out.value(
            wpath.to_vec(),
            "a freeze window needs `cron` + `duration` or `from` + `until`",
            shape_hint.clone(),
        );
    }
    let tz = match &w.timezone {
        None => gates::parse_timezone("UTC").ok(),
        Some(name) => match gates::parse_timezone(name) {
            Ok(tz) => Some(tz),
            Err(message) => {
                out.value(
                    with(wpath, "timezone"),
                    message,
                    Some("an IANA time zone name such as `Europe/Paris`, `America/New_York` or `UTC`".into()),
                );
                None
            }
        },
    };
    if recurring {
        match &w.cron {
            None => out.key(
                wpath.to_vec(),
                "`cron` is required with `duration`",
                Some("when the window opens, e.g. `cron: \"0 18 * * FRI\"` (Fridays 18:00)".into()),
            ),
            Some(expression) => {
                if let Err(message) = gates::parse_cron(expression) {
                    out.value(
                        with(wpath, "cron"),
                        message,
                        Some("5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g. `0 18 * * FRI`".into()),
                    );
                }
            }
        }
        match w.duration {
            None => out.key(
                wpath.to_vec(),
                "`duration` is required with `cron`",
                Some("how long each window stays open, e.g. `duration: 64h`".into()),
            ),
            Some(d) => positive(out, with(wpath, "duration"), d),
        }
    }
    if absolute {
        let mut read = |field: &str, value: &Option<String>| match value {
            None => {
                out.key(
                    wpath.to_vec(),
                    format!("`{field}` is required in an absolute freeze window"),
                    shape_hint.clone(),
                );
                None
            }
            Some(text) => match gates::parse_local(text) {
                Ok(dt) => Some(dt),
                Err(message) => {
                    out.value(
                        with(wpath, field),
                        message,
                        Some("a local date-time without offset, e.g. `2026-12-20T00:00:00`; the zone is `timezone`".into()),
                    );
                    None
                }
            },
        };
        let from = read("from", &w.from);
        let until = read("until", &w.until);
        if let (Some(from), Some(until), Some(tz)) = (from, until, tz) {
            let ordered = match (from.to_zoned(tz.clone()), until.to_zoned(tz)) {
                (Ok(a), Ok(b)) => a < b,
                _ => from < until,
            };
            if !ordered {
                out.value(
                    with(wpath, "until"),
                    format!("`until` {until} is not after `from` {from}"),
                    Some("the window runs from `from` (included) to `until` (excluded)".into()),
                );
            }
        }
    }
}

/// Longest `bake`: a deployment stays in progress (holding its environment) meanwhile.
const MAX_BAKE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Longest `upstream_timeout` (the proxy's bound too).
const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

fn upstream_timeout(out: &mut Issues, path: Vec<Seg>, d: HumanDuration) {
    if d.0 > MAX_UPSTREAM_TIMEOUT {
        out.value(
            path,
            format!("upstream_timeout {d} is longer than 24h"),
            Some("e.g. `60s` or `5m`".into()),
        );
    } else if d.0 < Duration::from_millis(1) {
        out.value(
            path,
            format!("upstream_timeout {d} is shorter than 1ms"),
            Some("e.g. `60s` or `5m`".into()),
        );
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

/// Every templated text outside the variable maps (`run` arguments, check URLs and
/// commands, hook expectations, analysis queries, URLs, headers and bodies…) has its
/// placeholders (`${VERSION}`, `{{app}}`…) replaced by values of at most
/// [`crate::config::MAX_PLACEHOLDER_BYTES`]: a text whose worst case would exceed
/// [`crate::config::MAX_VALUE_BYTES`] is refused here, before anything expands it.
fn check_expansions(out: &mut Issues, m: &Manifest) {
    use crate::config::{MAX_PLACEHOLDER_BYTES, MAX_VALUE_BYTES};
    fn walk(value: &serde_json::Value, path: &mut Vec<Seg>, out: &mut Issues) {
        match value {
            serde_json::Value::String(text) => {
                let placeholders = text.matches("${").count() + text.matches("{{").count();
                let bound = text.len() + placeholders * MAX_PLACEHOLDER_BYTES;
                if placeholders > 0 && bound > MAX_VALUE_BYTES {
                    out.value(
                        path.clone(),
                        format!(
                            "{} bytes with {placeholders} placeholder(s) may expand to {bound} bytes, more than the limit of {MAX_VALUE_BYTES}",
                            text.len()
                        ),
                        Some(format!(
                            "each placeholder stands for up to {MAX_PLACEHOLDER_BYTES} bytes (a version); write fewer"
                        )),
                    );
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    walk(item, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Object(fields) => {
                for (key, item) in fields {
                    // Variable maps are templates of their own, bounded by `config::check`.
                    let variables = matches!(
                        (path.as_slice(), key.as_str()),
                        ([], "vars") | ([Seg::Key(_), Seg::Key(_)], "vars" | "env")
                    );
                    if variables {
                        continue;
                    }
                    path.push(Seg::Key(key.clone()));
                    walk(item, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    if let Ok(value) = serde_json::to_value(m) {
        walk(&value, &mut Vec::new(), out);
    }
}

/// What is wrong with an image reference, by Docker's grammar (`[DOMAIN/]PATH[:TAG][@DIGEST]`,
/// each path component lowercase), `${...}` placeholders standing for valid text; `None`
/// when it is fine. Docker would refuse it at every start ("invalid reference format").
fn image_reference_problem(image: &str) -> Option<String> {
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        return Some("the image reference is empty or has spaces".into());
    }
    let mut text = String::with_capacity(image.len());
    let mut rest = image;
    while let Some(start) = rest.find("${") {
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        text.push_str(&rest[..start]);
        text.push('x');
        rest = &rest[start + end + 1..];
    }
    text.push_str(rest);
    if text.contains('$') {
        return Some(format!(
            "image {image:?}: only `${{VERSION}}` is expanded, and Docker refuses a `$` (did you mean `${{VERSION}}`?)"
        ));
    }
    let name = text.split('@').next().unwrap_or_default();
    let (name, tag) = match name.rfind(':') {
        Some(i) if !name[i + 1..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    let mut path: Vec<&str> = name.split('/').collect();
    let first = path[0];
    if path.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()))
    {
        path.remove(0);
    }
    if let Some(bad) = path.iter().find(|c| !is_path_component(c)) {
        let why = if bad.chars().any(|c| c.is_ascii_uppercase()) {
            "must be lowercase"
        } else {
            "must be lowercase letters and digits, separated by `.`, `_`, `__` or dashes"
        };
        return Some(format!(
            "image {image:?}: the repository name's part {bad:?} {why} (Docker refuses it: invalid reference format)"
        ));
    }
    if let Some(tag) = tag {
        let valid = (1..=128).contains(&tag.len())
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Some(format!(
                "image {image:?}: the tag (after the last `:`) must be 1 to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`"
            ));
        }
    }
    None
}

/// One `/`-separated component of an image's repository path: `[a-z0-9]+` separated by `.`,
/// `_`, `__` or any number of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    c.split(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
        .all(|sep| matches!(sep, "" | "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

/// The names inside `${...}` in `arg` that Ferry does not substitute.
fn unknown_placeholders(arg: &str) -> Vec<String> {
    placeholders_outside(arg, &RUN_PLACEHOLDERS)
}

/// The names inside `${...}` in `text` that are not in `known` (an unclosed `${` counts,
/// as itself).
fn placeholders_outside(text: &str, known: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                if !known.contains(&name) {
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

    /// `gates` gives exactly one error, at `environments.production.gates.FIELD`, saying
    /// `expected`.
    fn assert_one_gate_error(gates: &str, expected: &str, field: &str) {
        let errors = gate_errors(gates);
        assert_eq!(errors.len(), 1, "{gates}: {errors:?}");
        assert!(errors[0].contains(expected), "{gates}: {errors:?}");
        assert!(
            errors[0].contains(&format!("environments.production.gates.{field}:")),
            "{gates}: {errors:?}"
        );
    }

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
    fn image_references() {
        for good in [
            "shop/web:${VERSION}",
            "registry.example.com/shop/api:${VERSION}",
            "localhost:5000/shop/web",
            "Registry.Example.com/shop/web:1.0.0",
            "ghcr.io/a__b/c.d/e---f:v1_2-3",
            "shop/web@sha256:0123abcd",
            "debian",
        ] {
            assert_eq!(image_reference_problem(good), None, "{good}");
        }
        for (bad, expected) in [
            ("QA-walk/Web:${VERSION}", "\"Web\" must be lowercase"),
            ("shop/Web", "\"Web\" must be lowercase"),
            ("shop/-web", "\"-web\" must be lowercase letters and digits"),
            ("shop/a...b", "\"a...b\""),
            (
                "shop/web:${VERSION}+1",
                "the tag (after the last `:`) must be",
            ),
            ("shop/web:", "the tag (after the last `:`) must be"),
            ("shop/web:$VERSION", "did you mean `${VERSION}`?"),
            ("shop/web :1", "empty or has spaces"),
            ("", "empty or has spaces"),
        ] {
            let problem = image_reference_problem(bad).unwrap_or_default();
            assert!(problem.contains(expected), "{bad}: {problem}");
        }
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

    /// Errors of a manifest with a `staging` and a `production` environment (YAML text
    /// of their bodies), as `path: message`.
    fn site_errors(staging: &str, production: &str) -> Vec<String> {
        let text = format!(
            "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging: {staging}\n  production: {production}\n"
        );
        match crate::manifest::parse(&text, "ferry.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    #[test]
    fn environments_share_a_listener_by_host() {
        let tls = "tls: { cert: /etc/ferry/shop.pem, key: /etc/ferry/shop.key, redirect_http: \"0.0.0.0:80\", hsts: 365d }";
        let ok = site_errors(
            &format!("{{ listen: \"0.0.0.0:443\", hosts: [staging.shop.example.com], {tls} }}"),
            &format!(
                "{{ listen: \"0.0.0.0:443\", hosts: [shop.example.com, \"*.shop.example.com\"], {tls} }}"
            ),
        );
        assert!(ok.is_empty(), "{ok:?}");

        let overlap = site_errors(
            "{ listen: \"0.0.0.0:8080\", hosts: [shop.example.com] }",
            "{ listen: \"0.0.0.0:8080\", hosts: [www.example.com, SHOP.example.com] }",
        );
        assert_eq!(
            overlap,
            vec![
                "environments.production.hosts[1]: host `SHOP.example.com` on `0.0.0.0:8080` is also served by environment `staging`"
            ]
        );
        let no_hosts = site_errors(
            "{ listen: \"0.0.0.0:8080\", hosts: [shop.example.com] }",
            "{ listen: \"0.0.0.0:8080\" }",
        );
        assert!(
            no_hosts.len() == 1
                && no_hosts[0].starts_with(
                    "environments.production.listen: listen address `0.0.0.0:8080` clashes"
                ),
            "{no_hosts:?}"
        );
        let mixed_tls = site_errors(
            "{ listen: \"0.0.0.0:8443\", hosts: [a.example.com] }",
            &format!("{{ listen: \"0.0.0.0:8443\", hosts: [b.example.com], {tls} }}"),
        );
        assert!(
            mixed_tls.iter().any(|e| e.contains("clashes")),
            "{mixed_tls:?}"
        );

        let bad = site_errors(
            "{ listen: \"0.0.0.0:8080\", hosts: [\"shop.example.com:80\", a.example.com, a.example.com] }",
            "{ listen: \"0.0.0.0:8443\", tls: { cert: shop.pem, key: /k.pem, redirect_http: \"0.0.0.0:8443\" } }",
        );
        for expected in [
            "environments.staging.hosts[0]: invalid host",
            "environments.staging.hosts[2]: host `a.example.com` is listed twice",
            "environments.production.tls.cert: `cert` must be the absolute path",
            "environments.production.tls.redirect_http: `0.0.0.0:8443` is the port of `listen`",
        ] {
            assert!(
                bad.iter().any(|e| e.starts_with(expected)),
                "{expected}: {bad:?}"
            );
        }
        assert_eq!(bad.len(), 4, "{bad:?}");
    }

    #[test]
    fn upstream_timeouts_and_access_logs_are_checked() {
        let ok = site_errors(
            "{ listen: \"127.0.0.1:8081\", upstream_timeout: 5m, access_log: /var/log/ferry/shop.log }",
            "{ listen: \"127.0.0.1:8082\", upstream_timeout: 24h }",
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad = site_errors(
            "{ listen: \"127.0.0.1:8081\", upstream_timeout: 0s, access_log: logs/shop.log }",
            "{ listen: \"127.0.0.1:8082\", upstream_timeout: 25h }",
        );
        for expected in [
            "environments.staging.upstream_timeout: upstream_timeout 0s is shorter than 1ms",
            "environments.staging.access_log: `access_log` must be the absolute path",
            "environments.production.upstream_timeout: upstream_timeout 1day 1h is longer than 24h",
        ] {
            assert!(
                bad.iter().any(|e| e.starts_with(expected)),
                "{expected}: {bad:?}"
            );
        }
        assert_eq!(bad.len(), 3, "{bad:?}");
        let text = "app: shop\nservices:\n  web:\n    run: [./web]\n    upstream_timeout: 2d\nenvironments:\n  staging: { listen: \"127.0.0.1:8081\" }\n";
        let e = crate::manifest::parse(text, "ferry.yaml").expect_err("2d is too long");
        assert!(
            e.errors
                .iter()
                .any(|e| e.path == "services.web.upstream_timeout"),
            "{:?}",
            e.errors
        );
    }

    // -- after, soak and freeze ----------------------------------------------------------

    const HEAD: &str = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging:\n    listen: 127.0.0.1:8081\n";

    /// Parses a manifest whose `production` environment has `gates` (YAML flow text);
    /// returns the errors as `line:column path: message`.
    fn gate_errors(gates: &str) -> Vec<String> {
        let text = format!("{HEAD}  production:\n    listen: 127.0.0.1:8082\n    gates: {gates}\n");
        match crate::manifest::parse(&text, "ferry.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e
                .errors
                .iter()
                .map(|e| format!("{}:{} {}: {}", e.line, e.column, e.path, e.message))
                .collect(),
        }
    }

    #[test]
    fn auto_promote_needs_after() {
        let errors = gate_errors("{ auto_promote: true }");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("environments.production.gates.auto_promote"),
            "{errors:?}"
        );
        assert!(errors[0].contains("needs `after`"), "{errors:?}");
        assert!(errors[0].starts_with("10:"), "located: {errors:?}");
        assert!(gate_errors("{ after: staging, auto_promote: true }").is_empty());
        assert!(gate_errors("{ auto_promote: false }").is_empty());
    }

    #[test]
    fn good_promotion_gates_parse() {
        let text = format!(
            "{HEAD}  production:\n    listen: 127.0.0.1:8082\n    gates:\n      after: staging\n      soak: 10m\n      freeze:\n        - {{ cron: \"0 18 * * FRI\", duration: 64h, timezone: Europe/Paris }}\n        - {{ from: \"2026-12-20T00:00:00\", until: \"2027-01-03T00:00:00\", timezone: UTC }}\n        - {{ from: \"2026-12-24T00:00:00\", until: \"2026-12-27T00:00:00\" }}\n"
        );
        let m = crate::manifest::parse(&text, "ferry.yaml").expect("valid");
        let gates = m
            .environments
            .get("production")
            .and_then(|e| e.gates.clone())
            .expect("gates");
        assert_eq!(gates.after.as_deref(), Some("staging"));
        assert_eq!(gates.soak.map(|d| d.get().as_secs()), Some(600));
        assert_eq!(gates.freeze.len(), 3);
        assert_eq!(gates.freeze[0].cron.as_deref(), Some("0 18 * * FRI"));
        assert_eq!(gates.freeze[2].timezone, None);
    }

    #[test]
    fn after_must_name_an_earlier_environment() {
        let errors = gate_errors("{ after: production }");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("environments.production.gates.after"),
            "{errors:?}"
        );
        assert!(errors[0].contains("cannot come after itself"), "{errors:?}");
        let errors = gate_errors("{ after: qa }");
        assert!(errors[0].contains("unknown environment `qa`"), "{errors:?}");
        assert!(
            errors[0].starts_with("10:21 "),
            "located at the value: {errors:?}"
        );

        // Naming a later environment is refused: promotion goes in written order.
        let text = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging:\n    listen: 127.0.0.1:8081\n    gates: { after: production }\n  production:\n    listen: 127.0.0.1:8082\n";
        let errors = crate::manifest::parse(text, "ferry.yaml")
            .expect_err("invalid")
            .errors;
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].message.contains("written after `staging`"),
            "{errors:?}"
        );
        assert_eq!(errors[0].line, 8);
    }

    #[test]
    fn soak_needs_after_and_a_length() {
        let errors = gate_errors("{ soak: 10m }");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("`soak` needs `after`"), "{errors:?}");
        let errors = gate_errors("{ after: staging, soak: 0s }");
        assert!(errors[0].contains("greater than 0"), "{errors:?}");
    }

    #[test]
    fn freeze_windows_are_checked_field_by_field() {
        for (gates, expected, field) in [
            (
                "{ freeze: [ { cron: \"0 25 * * *\", duration: 1h } ] }",
                "invalid cron expression",
                "freeze[0].cron",
            ),
            (
                "{ freeze: [ { cron: \"0 18 * * FRI\", duration: 1h, timezone: Europe/Pariss } ] }",
                "unknown time zone \"Europe/Pariss\"",
                "freeze[0].timezone",
            ),
            (
                "{ freeze: [ { cron: \"0 18 * * FRI\" } ] }",
                "`duration` is required",
                "freeze[0]",
            ),
            (
                "{ freeze: [ { duration: 1h } ] }",
                "`cron` is required",
                "freeze[0]",
            ),
            (
                "{ freeze: [ { cron: \"0 18 * * FRI\", duration: 0s } ] }",
                "greater than 0",
                "freeze[0].duration",
            ),
            (
                "{ freeze: [ { from: \"2026-12-20T00:00:00\" } ] }",
                "`until` is required",
                "freeze[0]",
            ),
            (
                "{ freeze: [ { from: \"2026-12-32T00:00:00\", until: \"2027-01-03T00:00:00\" } ] }",
                "invalid date-time",
                "freeze[0].from",
            ),
            (
                "{ freeze: [ { from: \"2027-01-03T00:00:00\", until: \"2026-12-20T00:00:00\" } ] }",
                "is not after",
                "freeze[0].until",
            ),
            (
                "{ freeze: [ { cron: \"0 18 * * FRI\", duration: 1h, from: \"2026-12-20T00:00:00\", until: \"2027-01-03T00:00:00\" } ] }",
                "not both",
                "freeze[0]",
            ),
            (
                "{ freeze: [ { timezone: UTC } ] }",
                "needs `cron` + `duration` or `from` + `until`",
                "freeze[0]",
            ),
        ] {
            assert_one_gate_error(gates, expected, field);
        }
    }

    // gates: checks ---------------------------------------------------------------------

    #[test]
    fn good_gate_checks_parse() {
        let text = format!(
            "{HEAD}  production:\n    listen: 127.0.0.1:8082\n    gates:\n      checks:\n        - name: ci-green\n          http: {{ url: \"http://127.0.0.1:9000/status/${{VERSION}}\", expect_status: 200, expect_body: success }}\n          interval: 2s\n          timeout: 1s\n        - name: uat-signed-off\n          run: [\"sh\", \"-c\", \"test -f /srv/uat/${{VERSION}}-${{FERRY_ENV}}-${{FERRY_APP}}.ok\"]\n"
        );
        let m = crate::manifest::parse(&text, "ferry.yaml").expect("valid");
        let gates = m
            .environments
            .get("production")
            .and_then(|e| e.gates.clone())
            .expect("gates");
        assert_eq!(gates.checks.len(), 2);
        assert_eq!(gates.checks[0].name, "ci-green");
        assert_eq!(gates.checks[0].interval().as_secs(), 2);
        assert_eq!(gates.checks[1].interval().as_secs(), 10, "default");
        assert_eq!(gates.checks[1].timeout().as_secs(), 5, "default");
        assert_eq!(
            gates.checks[0].http.as_ref().and_then(|h| h.expect_status),
            Some(200)
        );
    }

    #[test]
    fn gate_checks_are_checked_field_by_field() {
        for (gates, expected, field) in [
            (
                "{ checks: [ { name: a, http: { url: \"http://x/\" }, run: [\"true\"] } ] }",
                "either `http` or `run`, not both",
                "checks[0]",
            ),
            (
                "{ checks: [ { name: a } ] }",
                "needs `http` or `run`",
                "checks[0]",
            ),
            (
                "{ checks: [ { name: a, run: [\"true\"] }, { name: a, run: [\"true\"] } ] }",
                "defined twice",
                "checks[1].name",
            ),
            (
                "{ checks: [ { name: \"bad name\", run: [\"true\"] } ] }",
                "invalid check name",
                "checks[0].name",
            ),
            (
                "{ checks: [ { name: a, http: { url: \"ftp://x/\" } } ] }",
                "not an http:// or https:// URL",
                "checks[0].http.url",
            ),
            (
                "{ checks: [ { name: a, http: { url: \"http://x/${PORT}\" } } ] }",
                "unknown placeholder `PORT`",
                "checks[0].http.url",
            ),
            (
                "{ checks: [ { name: a, http: { url: \"http://x/\", expect_status: 999 } } ] }",
                "not an HTTP status",
                "checks[0].http.expect_status",
            ),
            (
                "{ checks: [ { name: a, run: [] } ] }",
                "needs a program",
                "checks[0].run",
            ),
            (
                "{ checks: [ { name: a, run: [\"sh\", \"${HOME}\"] } ] }",
                "unknown placeholder `HOME`",
                "checks[0].run[1]",
            ),
            (
                "{ checks: [ { name: a, run: [\"true\"], interval: 0s } ] }",
                "greater than 0",
                "checks[0].interval",
            ),
        ] {
            assert_one_gate_error(gates, expected, field);
        }
        // Unknown fields are refused by the typed parse.
        let errors = gate_errors("{ checks: [ { name: a, run: [\"true\"], every: 1s } ] }");
        assert!(!errors.is_empty());
    }
}

// hooks:
#[cfg(test)]
mod hook_tests {
    const HEAD: &str = "app: shop\nservices:\n  web:\n    run: [./web]\nenvironments:\n  staging:\n    listen: 127.0.0.1:8081\n  production:\n    listen: 127.0.0.1:8082\n";

    fn errors(hooks: &str) -> Vec<String> {
        let text = format!("{HEAD}hooks:\n{hooks}");
        match crate::manifest::parse(&text, "ferry.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let text = format!(
            "{HEAD}{}",
            r#"hooks:
  pre_deploy:
    - name: backup
      run: ["sh", "-c", "pg_dump -f \"$BACKUP_DIR/backup-$VERSION.sql\" app"]
      timeout: 60s
      retries: 1
      environments: [staging, production]
      env: { PGDATABASE: app }
      on_interrupt: fail
    - name: migrate
      run: ["sh", "-c", "psql -v ON_ERROR_STOP=1 -f migrations/002.sql"]
      migration: irreversible
    - name: migrate2
      run: ["true"]
      migration: { down: ["sh","-c","psql -f migrations/002.down.sql"] }
      on_interrupt: rerun
  post_deploy:
    - name: smoke
      http: { path: /health, expect_status: 200, expect_body: "ok",
              expect_json: { pointer: /version, equals: "${VERSION}" }, max_latency: 500ms }
      retries: 2
    - name: e2e
      run: ["./smoke.sh"]
  on_rollback:
    - name: page-oncall
      run: ["sh", "-c", "echo rolled back $VERSION"]
"#
        );
        let m = crate::manifest::parse(&text, "ferry.yaml").expect("valid");
        assert_eq!(m.hooks.pre_deploy.len(), 3);
        assert_eq!(
            m.hooks.pre_deploy[1].migration,
            Some(crate::manifest::Migration::Irreversible)
        );
        assert!(matches!(
            &m.hooks.pre_deploy[2].migration,
            Some(crate::manifest::Migration::Down(d)) if d.len() == 3
        ));
        assert_eq!(m.hooks.pre_deploy[0].timeout().as_secs(), 60);
        let http = m.hooks.post_deploy[0].http.as_ref().expect("http");
        assert_eq!(http.expect_status, Some(200));
        assert_eq!(m.hooks.on_rollback[0].name, "page-oncall");
        // Round trip through JSON (how the server stores it).
        let json = serde_json::to_string(&m).expect("json");
        let back: crate::manifest::Manifest = serde_json::from_str(&json).expect("back");
        assert_eq!(back, m);
    }

    #[test]
    fn mistakes_are_located() {
        for (hooks, expected, at) in [
            (
                "  pre_deploy:\n    - { name: a, run: [x], environments: [qa] }\n",
                "no environment `qa`",
                "hooks.pre_deploy[0].environments[0]",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [] }\n",
                "the command is empty",
                "hooks.pre_deploy[0].run",
            ),
            (
                "  pre_deploy:\n    - { name: a }\n",
                "needs `run`",
                "hooks.pre_deploy[0]",
            ),
            (
                "  post_deploy:\n    - { name: a, run: [x], http: { path: /h } }\n",
                "not both",
                "hooks.post_deploy[0].http",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x] }\n    - { name: a, run: [y] }\n",
                "already used by hooks.pre_deploy[0]",
                "hooks.pre_deploy[1].name",
            ),
            (
                "  post_deploy:\n    - { name: a, run: [x], migration: irreversible }\n",
                "only allowed on pre_deploy",
                "hooks.post_deploy[0].migration",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x], timeout: 0s }\n",
                "greater than 0",
                "hooks.pre_deploy[0].timeout",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x], env: { VERSION: x } }\n",
                "set by Ferry",
                "hooks.pre_deploy[0].env.VERSION",
            ),
            (
                "  on_rollback:\n    - { name: Bad_Name, run: [x] }\n",
                "invalid hook name",
                "hooks.on_rollback[0].name",
            ),
            (
                "  post_deploy:\n    - { name: a, http: { path: health } }\n",
                "must start with `/`",
                "hooks.post_deploy[0].http.path",
            ),
        ] {
            let errors = errors(hooks);
            assert_eq!(errors.len(), 1, "{hooks}: {errors:?}");
            assert!(errors[0].contains(expected), "{hooks}: {errors:?}");
            assert!(
                errors[0].contains(&format!("{at}: ")),
                "{hooks}: {errors:?}"
            );
            assert!(errors[0].starts_with("ferry.yaml:1"), "{errors:?}");
        }
    }

    #[test]
    fn type_mistakes_are_located_too() {
        for (hooks, expected) in [
            (
                "  pre_deploy:\n    - { name: a, run: [x], timeout: soon }\n",
                "invalid duration",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x], migration: maybe }\n",
                "irreversible",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x], on_interrupt: retry }\n",
                "on_interrupt",
            ),
            (
                "  pre_deploy:\n    - { name: a, run: [x], bogus: 1 }\n",
                "bogus",
            ),
        ] {
            let errors = errors(hooks);
            assert_eq!(errors.len(), 1, "{hooks}: {errors:?}");
            assert!(errors[0].contains(expected), "{hooks}: {errors:?}");
        }
    }
}
