//! `kubernetes:` — where an environment with `runtime: kubernetes` runs on a cluster, and
//! how its traffic is split (Ferry's proxy, or a Gateway API `HTTPRoute`'s weights).
//!
//! The objects themselves are built by the `ferry-k8s` crate; this module only holds the
//! manifest's shape and its located checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::tree::Seg;
use super::validate::Issues;
use super::{Environment, Manifest, RuntimeKind, Strategy};
use crate::analysis::AnalysisSpec;

/// Longest kubeconfig context name accepted.
pub const MAX_CONTEXT_BYTES: usize = 253;

/// `runtime: kubernetes` settings of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The kubeconfig context to use (default: the kubeconfig's current context, or the
    /// in-cluster configuration when Ferry runs in a pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The namespace of this environment's objects (default `APP-ENV`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub namespace: Option<String>,
    /// How traffic is split between versions: `proxy` (Ferry's proxy routes to the pods'
    /// endpoints, the default) or `gateway` (the weights of a Gateway API `HTTPRoute`).
    #[serde(default)]
    pub traffic: Traffic,
    /// With `traffic: gateway`: the name of the `HTTPRoute` (in the namespace) whose
    /// `SERVICE-stable` / `SERVICE-canary` backendRef weights Ferry sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"))]
    pub route: Option<String>,
    /// With `traffic: proxy`: the `ferry-proxy` Deployment Ferry runs in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyFleet>,
}

/// The port of the admin API of Ferry's proxy pods (the server pushes route tables to it).
pub const PROXY_ADMIN_PORT: u16 = 9901;
/// Most `ferry-proxy` pods an environment may ask for.
pub const MAX_PROXY_REPLICAS: u32 = 50;
/// Longest container image reference accepted.
pub const MAX_IMAGE_BYTES: usize = 512;

/// `kubernetes.proxy`: the proxy pods of a `traffic: proxy` environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyFleet {
    /// Ferry's image (it runs `ferry proxy`); default: the server's `--proxy-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// How many proxy pods (1 to 50, default 2).
    #[serde(default = "default_proxy_replicas")]
    #[schemars(range(min = 1, max = 50))]
    pub replicas: u32,
    /// The type of the `ferry-proxy` Service the clients reach (default `ClusterIP`).
    #[serde(default)]
    pub service_type: ServiceType,
}

fn default_proxy_replicas() -> u32 {
    2
}

impl Default for ProxyFleet {
    fn default() -> Self {
        ProxyFleet {
            image: None,
            replicas: default_proxy_replicas(),
            service_type: ServiceType::default(),
        }
    }
}

/// The type of the Service in front of the proxy pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// How a Kubernetes environment's traffic is split between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// Ferry's proxy routes by exact weights to the endpoints of each version's Service.
    #[default]
    Proxy,
    /// Ferry sets the backendRef weights of a Gateway API `HTTPRoute`.
    Gateway,
}

impl Kubernetes {
    /// The namespace of `env`'s objects: `namespace:`, else `APP-ENV`.
    pub fn namespace_of(manifest: &Manifest, env: &str) -> String {
        manifest
            .environments
            .get(env)
            .and_then(|e| e.kubernetes.as_ref())
            .and_then(|k| k.namespace.clone())
            .unwrap_or_else(|| format!("{}-{env}", manifest.app))
    }

    /// The proxy pods of a `runtime: kubernetes`, `traffic: proxy` environment (their
    /// settings, defaults when `kubernetes.proxy` is absent); `None` for any other.
    pub fn proxy_fleet_of(manifest: &Manifest, env: &str) -> Option<ProxyFleet> {
        let environment = manifest.environments.get(env)?;
        if environment.runtime != RuntimeKind::Kubernetes {
            return None;
        }
        match &environment.kubernetes {
            None => Some(ProxyFleet::default()),
            Some(k) if k.traffic == Traffic::Proxy => Some(k.proxy.clone().unwrap_or_default()),
            Some(_) => None,
        }
    }
}

/// A container image reference as Ferry accepts it: 1 to [`MAX_IMAGE_BYTES`], no spaces or
/// control characters.
pub fn is_image(image: &str) -> bool {
    !image.is_empty()
        && image.len() <= MAX_IMAGE_BYTES
        && !image.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A DNS-1123 label: what Kubernetes accepts as a namespace name.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: what Kubernetes accepts as most object names.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The checks of one environment's `runtime:` / `kubernetes:` pair.
pub(super) fn check(out: &mut Issues, m: &Manifest, name: &str, env: &Environment) {
    let base = [Seg::Key("environments".into()), Seg::Key(name.to_string())];
    let key = |k: &str| {
        let mut path = base.to_vec();
        path.push(Seg::Key(k.to_string()));
        path
    };
    if Kubernetes::proxy_fleet_of(m, name).is_some() {
        check_proxy_ports(out, &base, env);
    }
    let Some(k8s) = &env.kubernetes else {
        if env.runtime == RuntimeKind::Kubernetes {
            check_images(out, m, name);
            let namespace = format!("{}-{name}", m.app);
            if !is_dns_label(&namespace) {
                out.value(
                    key("runtime"),
                    format!("the default namespace {namespace:?} (APP-ENV) is longer than 63 characters"),
                    Some("set `kubernetes: { namespace: NAME }` (a DNS label: a-z, 0-9, `-`, at most 63)".into()),
                );
            }
        }
        return;
    };
    if env.runtime != RuntimeKind::Kubernetes {
        out.key(
            key("kubernetes"),
            "`kubernetes:` settings need `runtime: kubernetes`",
            Some("add `runtime: kubernetes` to this environment, or remove `kubernetes:`".into()),
        );
        return;
    }
    check_images(out, m, name);
    let at = |k: &str| {
        let mut path = key("kubernetes");
        path.push(Seg::Key(k.to_string()));
        path
    };
    if let Some(context) = &k8s.context
        && (context.is_empty()
            || context.len() > MAX_CONTEXT_BYTES
            || context.chars().any(char::is_control))
    {
        out.value(
            at("context"),
            format!("invalid kubeconfig context {context:?}"),
            Some(format!(
                "a context name from `kubectl config get-contexts` (1 to {MAX_CONTEXT_BYTES} characters, no control characters)"
            )),
        );
    }
    match &k8s.namespace {
        Some(namespace) if !is_dns_label(namespace) => out.value(
            at("namespace"),
            format!("invalid namespace {namespace:?}"),
            Some("a DNS label: a-z, 0-9 and `-`, starting and ending with a letter or digit, at most 63".into()),
        ),
        Some(_) => {}
        None => {
            let namespace = format!("{}-{name}", m.app);
            if !is_dns_label(&namespace) {
                out.key(
                    key("kubernetes"),
                    format!("the default namespace {namespace:?} (APP-ENV) is longer than 63 characters"),
                    Some("set `namespace:` here (a DNS label, at most 63)".into()),
                );
            }
        }
    }
    match (k8s.traffic, &k8s.route) {
        (Traffic::Gateway, None) => out.key(
            key("kubernetes"),
            "`traffic: gateway` needs the `route:` (the HTTPRoute whose weights Ferry sets)",
            Some("e.g. `kubernetes: { traffic: gateway, route: shop-web }`".into()),
        ),
        (Traffic::Proxy, Some(_)) => out.key(
            at("route"),
            "`route:` is only used with `traffic: gateway`",
            Some("add `traffic: gateway`, or remove `route:`".into()),
        ),
        (Traffic::Gateway, Some(route)) if !is_dns_subdomain(route) => out.value(
            at("route"),
            format!("invalid HTTPRoute name {route:?}"),
            Some("a DNS subdomain: a-z, 0-9, `-` and `.`, at most 253".into()),
        ),
        _ => {}
    }
    if k8s.traffic == Traffic::Gateway {
        check_gateway_strategy(out, &key("strategy"), &env.strategy);
    }
    if let Some(proxy) = &k8s.proxy {
        let at_proxy = |k: &str| {
            let mut path = at("proxy");
            path.push(Seg::Key(k.to_string()));
            path
        };
        if k8s.traffic != Traffic::Proxy {
            out.key(
                at("proxy"),
                "`proxy:` sets Ferry's proxy pods, which only `traffic: proxy` runs",
                Some("remove `proxy:`, or use `traffic: proxy`".into()),
            );
        }
        if !(1..=MAX_PROXY_REPLICAS).contains(&proxy.replicas) {
            out.value(
                at_proxy("replicas"),
                format!(
                    "{} proxy pods: must be 1 to {MAX_PROXY_REPLICAS}",
                    proxy.replicas
                ),
                Some("e.g. `replicas: 2` (each pod serves every request it gets)".into()),
            );
        }
        if let Some(image) = &proxy.image
            && !is_image(image)
        {
            out.value(
                at_proxy("image"),
                format!("invalid image {image:?}"),
                Some(format!(
                    "Ferry's own image, e.g. `registry.example.com/ferry:1.0` (1 to {MAX_IMAGE_BYTES} characters, no spaces)"
                )),
            );
        }
    }
}

/// The proxy pods bind the environment's ports as a non-root user with no capability: each
/// must be 1024 or above, and not the admin API's.
fn check_proxy_ports(out: &mut Issues, base: &[Seg], env: &Environment) {
    let mut ports = vec![("listen", env.listen.as_str())];
    if let Strategy::BlueGreen(b) = &env.strategy
        && let Some(preview) = &b.preview_listen
    {
        ports.push(("preview_listen", preview.as_str()));
    }
    for (key, addr) in ports {
        let Ok(addr) = addr.parse::<std::net::SocketAddr>() else {
            continue;
        };
        let port = addr.port();
        if port < 1024 || port == PROXY_ADMIN_PORT {
            let mut path = base.to_vec();
            if key == "preview_listen" {
                path.extend([Seg::Key("strategy".into()), Seg::Key("blue_green".into())]);
            }
            path.push(Seg::Key(key.to_string()));
            out.value(
                path,
                format!("port {port}: Ferry's proxy pods (`traffic: proxy` on Kubernetes) bind ports from 1024 up, except {PROXY_ADMIN_PORT} (their admin API)"),
                Some("e.g. `listen: 0.0.0.0:8080`; the `ferry-proxy` Service exposes this port to clients".into()),
            );
        }
    }
}

/// With `traffic: gateway` the requests go through the cluster's Gateway, not Ferry's proxy:
/// what only the proxy can do (measure each version's requests, keep a client on one side)
/// is refused where the manifest asks for it.
fn check_gateway_strategy(out: &mut Issues, base: &[Seg], strategy: &Strategy) {
    let with = |path: &[Seg], k: &str| {
        let mut path = path.to_vec();
        path.push(Seg::Key(k.to_string()));
        path
    };
    let mut analyses: Vec<(Vec<Seg>, &AnalysisSpec)> = Vec::new();
    match strategy {
        Strategy::Canary(canary) => {
            let base = with(base, "canary");
            for (i, step) in canary.steps.iter().enumerate() {
                if let Some(analysis) = &step.analysis {
                    let mut path = with(&base, "steps");
                    path.push(Seg::Index(i));
                    analyses.push((with(&path, "analysis"), analysis));
                }
            }
            if let Some(analysis) = &canary.analysis {
                analyses.push((with(&base, "analysis"), analysis));
            }
            if canary.stickiness.is_some() {
                out.key(
                    with(&base, "stickiness"),
                    "stickiness needs Ferry's proxy: with `traffic: gateway` the Gateway splits the requests by weight alone",
                    Some("remove `stickiness`, or use `traffic: proxy` (docs/kubernetes.md)".into()),
                );
            }
        }
        Strategy::BlueGreen(blue_green) => {
            let base = with(base, "blue_green");
            for (key, analysis) in [
                ("pre_promotion_analysis", &blue_green.pre_promotion_analysis),
                (
                    "post_promotion_analysis",
                    &blue_green.post_promotion_analysis,
                ),
            ] {
                if let Some(analysis) = analysis {
                    analyses.push((with(&base, key), analysis));
                }
            }
        }
        _ => {}
    }
    for (path, analysis) in analyses {
        for (i, metric) in analysis.metrics.iter().enumerate() {
            let mut at = with(&path, "metrics");
            at.push(Seg::Index(i));
            let source = if metric.builtin.is_some() {
                "builtin"
            } else if metric.compare.is_some() {
                "compare"
            } else {
                continue;
            };
            out.key(
                with(&at, source),
                format!(
                    "metric {}: `{source}` metrics are measured by Ferry's proxy, which the requests do not cross with `traffic: gateway`",
                    metric.name
                ),
                Some("measure the versions with `prometheus:` (e.g. your Gateway's or mesh's request metrics of the Service SERVICE-canary), or use `traffic: proxy`".into()),
            );
        }
    }
}

/// Every service needs an image on a cluster, and a numeric `user` (Kubernetes' runAsUser).
fn check_images(out: &mut Issues, m: &Manifest, env: &str) {
    for (service_name, service) in &m.services {
        let base = vec![Seg::Key("services".into()), Seg::Key(service_name.clone())];
        if service.image.is_none() {
            out.key(
                base.clone(),
                format!("environment {env} runs on `runtime: kubernetes`, so service {service_name} needs an `image`"),
                Some("e.g. `image: registry.example.com/shop/api:${VERSION}`".into()),
            );
        }
        if let Some(user) = &service.user
            && parse_user(user).is_none()
        {
            let mut path = base;
            path.push(Seg::Key("user".into()));
            out.value(
                path,
                format!("environment {env} runs on `runtime: kubernetes`, which needs a numeric `user` (uid[:gid]), not {user:?}"),
                Some("e.g. `user: \"65534\"` or `user: \"1000:1000\"`".into()),
            );
        }
    }
}

/// `uid[:gid]` as numbers (Kubernetes' `runAsUser` / `runAsGroup`).
pub fn parse_user(user: &str) -> Option<(i64, Option<i64>)> {
    let number = |s: &str| {
        (!s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    match user.split_once(':') {
        Some((uid, gid)) => Some((number(uid)?, Some(number(gid)?))),
        None => Some((number(user)?, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{check_runtimes, parse};

    fn errors(environment: &str, web: &str) -> Vec<String> {
        let text = format!(
            "app: shop\nservices:\n  web:\n{web}environments:\n  production:\n    listen: 127.0.0.1:8082\n{environment}"
        );
        match parse(&text, "ferry.yaml") {
            Ok(_) => Vec::new(),
            Err(errors) => errors.errors.iter().map(ToString::to_string).collect(),
        }
    }

    const IMAGE: &str = "    image: shop/web:${VERSION}\n";

    #[test]
    fn a_kubernetes_environment_is_accepted() {
        let ok = "    runtime: kubernetes\n    kubernetes:\n      context: prod-eu\n      namespace: shop-prod\n      traffic: gateway\n      route: shop\n";
        assert_eq!(errors(ok, IMAGE), Vec::<String>::new());
        assert_eq!(
            errors("    runtime: kubernetes\n", IMAGE),
            Vec::<String>::new()
        );
        let manifest = parse(
            &format!("app: shop\nservices:\n  web:\n{IMAGE}environments:\n  production:\n    listen: 127.0.0.1:8082\n{ok}"),
            "ferry.yaml",
        )
        .unwrap();
        assert_eq!(
            Kubernetes::namespace_of(&manifest, "production"),
            "shop-prod"
        );
    }

    #[test]
    fn mistakes_are_located() {
        let cases = [
            (
                "    kubernetes:\n      namespace: shop\n",
                IMAGE,
                "ferry.yaml:8:5: environments.production.kubernetes: `kubernetes:` settings need `runtime: kubernetes`",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      namespace: Shop_Prod\n",
                IMAGE,
                "ferry.yaml:10:18: environments.production.kubernetes.namespace: invalid namespace \"Shop_Prod\"",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n",
                IMAGE,
                "ferry.yaml:9:5: environments.production.kubernetes: `traffic: gateway` needs the `route:`",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      route: shop\n",
                IMAGE,
                "ferry.yaml:10:7: environments.production.kubernetes.route: `route:` is only used with `traffic: gateway`",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      context: \"\"\n",
                IMAGE,
                "ferry.yaml:10:16: environments.production.kubernetes.context: invalid kubeconfig context",
            ),
            (
                "    runtime: kubernetes\n",
                "    run: [./web]\n",
                "ferry.yaml:3:3: services.web: environment production runs on `runtime: kubernetes`, so service web needs an `image`",
            ),
            (
                "    runtime: kubernetes\n",
                "    image: shop/web\n    user: nobody\n",
                "ferry.yaml:5:11: services.web.user: environment production runs on `runtime: kubernetes`, which needs a numeric `user`",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n      route: shop\n    strategy:\n      canary:\n        steps:\n          - weight: 10\n            analysis:\n              metrics:\n                - name: up\n                  prometheus: { address: 'http://prometheus:9090', query: 'up' }\n                  min: 1\n                - name: errors\n                  builtin: error_rate\n                  max: 1%\n",
                IMAGE,
                "ferry.yaml:22:19: environments.production.strategy.canary.steps[0].analysis.metrics[1].builtin: metric errors: `builtin` metrics are measured by Ferry's proxy, which the requests do not cross with `traffic: gateway`",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n      route: shop\n    strategy:\n      canary:\n        steps: [{ weight: 10 }]\n        stickiness: { header: X-User }\n        analysis:\n          metrics: [{ name: same, compare: { errors: {} } }]\n",
                IMAGE,
                "ferry.yaml:15:9: environments.production.strategy.canary.stickiness: stickiness needs Ferry's proxy",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n      route: shop\n    strategy:\n      canary:\n        steps: [{ weight: 10 }]\n        analysis:\n          metrics: [{ name: same, compare: { errors: {} } }]\n",
                IMAGE,
                "ferry.yaml:16:35: environments.production.strategy.canary.analysis.metrics[0].compare: metric same: `compare` metrics",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n      route: shop\n    strategy:\n      blue_green:\n        pre_promotion_analysis:\n          metrics: [{ name: p95, builtin: latency_p95, max: 500ms }]\n",
                IMAGE,
                "ferry.yaml:15:34: environments.production.strategy.blue_green.pre_promotion_analysis.metrics[0].builtin: metric p95",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      proxy: { replicas: 0 }\n",
                IMAGE,
                "ferry.yaml:10:26: environments.production.kubernetes.proxy.replicas: 0 proxy pods: must be 1 to 50",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      proxy: { image: 'ferry :1' }\n",
                IMAGE,
                "ferry.yaml:10:23: environments.production.kubernetes.proxy.image: invalid image \"ferry :1\"",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      proxy: { service_type: External }\n",
                IMAGE,
                "ferry.yaml:10:",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n      route: shop\n      proxy: { replicas: 3 }\n",
                IMAGE,
                "ferry.yaml:12:7: environments.production.kubernetes.proxy: `proxy:` sets Ferry's proxy pods, which only `traffic: proxy` runs",
            ),
            (
                "    runtime: kubernetes\n    kubernetes:\n      traffic: sideways\n",
                IMAGE,
                "ferry.yaml:10:16: environments.production.kubernetes.traffic",
            ),
        ];
        for (environment, web, expected) in cases {
            let found = errors(environment, web);
            assert!(
                found.iter().any(|e| e.starts_with(expected)),
                "{expected}\nnot in {found:#?}"
            );
        }
    }

    #[test]
    fn the_proxy_pods_get_their_defaults_and_bind_only_ports_they_may() {
        let text = |listen: &str, k8s: &str| {
            format!(
                "app: shop\nservices:\n  web:\n{IMAGE}environments:\n  production:\n    listen: {listen}\n    runtime: kubernetes\n{k8s}"
            )
        };
        let manifest = parse(&text("0.0.0.0:8080", ""), "ferry.yaml").unwrap();
        assert_eq!(
            Kubernetes::proxy_fleet_of(&manifest, "production"),
            Some(ProxyFleet {
                image: None,
                replicas: 2,
                service_type: ServiceType::ClusterIP
            })
        );
        let manifest = parse(
            &text(
                "0.0.0.0:8080",
                "    kubernetes: { proxy: { image: 'ferry:9', replicas: 3, service_type: LoadBalancer } }\n",
            ),
            "ferry.yaml",
        )
        .unwrap();
        assert_eq!(
            Kubernetes::proxy_fleet_of(&manifest, "production").map(|p| (
                p.image,
                p.replicas,
                p.service_type
            )),
            Some((Some("ferry:9".to_string()), 3, ServiceType::LoadBalancer))
        );
        let manifest = parse(
            &text(
                "0.0.0.0:8080",
                "    kubernetes: { traffic: gateway, route: r }\n",
            ),
            "ferry.yaml",
        )
        .unwrap();
        assert_eq!(Kubernetes::proxy_fleet_of(&manifest, "production"), None);
        for listen in ["0.0.0.0:80", "0.0.0.0:9901"] {
            let errors = match parse(&text(listen, ""), "ferry.yaml") {
                Ok(_) => Vec::new(),
                Err(errors) => errors.errors.iter().map(ToString::to_string).collect(),
            };
            assert!(
                errors.iter().any(|e| e.starts_with("ferry.yaml:7:13: environments.production.listen: port")),
                "{listen}: {errors:#?}"
            );
        }
    }

    #[test]
    fn a_server_that_cannot_run_kubernetes_points_to_export() {
        let text = format!(
            "app: shop\nservices:\n  web:\n{IMAGE}environments:\n  production:\n    listen: 127.0.0.1:8082\n    runtime: kubernetes\n"
        );
        let manifest = parse(&text, "ferry.yaml").unwrap();
        let errors = check_runtimes(&text, "ferry.yaml", &manifest, &[RuntimeKind::Process]);
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("ferry.yaml:8:14: environments.production.runtime: this Ferry server cannot run `runtime: kubernetes` environments: it was built without the `kubernetes` cargo feature, or it finds no cluster configuration"),
            "{shown}"
        );
        assert!(
            shown.contains("ferry export --k8s shop --env production --version V"),
            "{shown}"
        );
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("shop-production"));
        assert!(!is_dns_label("Shop"));
        assert!(!is_dns_label("-shop"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("shop.web-1"));
        assert!(!is_dns_subdomain("shop..web"));
        assert_eq!(parse_user("1000:2000"), Some((1000, Some(2000))));
        assert_eq!(parse_user("65534"), Some((65534, None)));
        assert_eq!(parse_user("nobody"), None);
        assert_eq!(parse_user("1:"), None);
    }
}
