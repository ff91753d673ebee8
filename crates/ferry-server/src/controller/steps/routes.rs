//! The route table the proxy serves, as a pure function of a snapshot: per environment
//! ([`Site`]) its manifests (the latest, and the revision that says how traffic reaches it),
//! its running deployment with the progress it persisted, its replicas as observed with the
//! endpoints the runtime reports; across them, the table the proxy acknowledged last. The
//! shell (`controller/routes.rs`) reads these, calls [`site`] per environment, sets a
//! `traffic: gateway` split on the cluster, then [`push`] says what to send and which
//! traffic lines to write.
//!
//! Weights come from what is stored only: a progressive rollout's weight from its persisted
//! progress (0 while rolling back or not yet progressing), anything else by ready replicas.
//! A group without ready replicas gets no weight; each route's weights sum to 100 %.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_core::manifest::kubernetes::Traffic;
use ferry_core::manifest::{BlueGreen, Manifest, RuntimeKind, Strategy};
use ferry_core::model::DeploymentState;
use ferry_core::rollout::{self, Observed};
use ferry_proxy::routes::{
    BackendGroup, ListenerConfig, PreviewRule, Route, RouteTable, StickyRule, TlsFiles,
};
use ferry_store::DeploymentRecord;

use crate::controller::strategy::progressive;
use crate::progressive::Phase;

/// A replica of the environment, as observed, and where the runtime says it answers.
#[derive(Debug, Clone)]
pub(in crate::controller) struct Replica {
    pub service: String,
    pub observed: Observed,
    /// `None`: the runtime reports none (yet); it takes no request.
    pub endpoint: Option<SocketAddr>,
}

/// What [`site`] sees of one environment.
pub(in crate::controller) struct Site<'a> {
    pub app: &'a str,
    pub env: &'a str,
    /// The app's latest manifest (its services, the environment's strategy and runtime).
    pub manifest: &'a Manifest,
    /// The manifest revision the environment is deployed with, when not the latest: its
    /// listener, hosts, TLS and routes (so `apply` alone never moves a listener).
    pub serving: Option<&'a Manifest>,
    /// The deployment running there (not terminal), if any.
    pub deployment: Option<&'a DeploymentRecord>,
    pub replicas: &'a [Replica],
    /// SHA-256 (hex) of the preview secret, when [`preview_secret`] named one and it is set.
    pub preview_token: Option<&'a str>,
}

/// A `traffic: gateway` environment's split, per service: (version, weight) pairs.
pub(in crate::controller) type GatewaySplit = Vec<(String, Vec<(String, u32)>)>;

/// What [`site`] makes of one environment.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::controller) enum SitePlan {
    /// No listener: its address does not parse (an old manifest; `apply` refuses that).
    Unlisted,
    /// Keep what the proxy has for it: its deployment's phase is unreadable, which says
    /// nothing of the weights.
    Keep(String),
    /// Its listeners, the split for the cluster's gateway (when it has one), and the
    /// traffic line (`web 2.0 20% (1 replica), …`).
    Routes {
        listeners: Vec<ListenerConfig>,
        gateway: Option<GatewaySplit>,
        summary: String,
    },
}

/// The preview secret whose hash the shell must read for [`Site::preview_token`]: only for
/// a progressive rollout whose strategy names one.
pub(in crate::controller) fn preview_secret<'m>(
    manifest: &'m Manifest,
    env: &str,
    deployment: Option<&DeploymentRecord>,
) -> Option<&'m str> {
    let strategy = &manifest.environments.get(env)?.strategy;
    deployment.filter(|d| progressive(d, strategy))?;
    match strategy {
        Strategy::Canary(c) => c.preview_secret.as_deref(),
        Strategy::BlueGreen(b) => b.preview_secret.as_deref(),
        _ => None,
    }
}

/// One environment's listeners: its site (weights per version, the canary group's preview
/// header and sticky rules), the plain-HTTP twin that redirects to HTTPS, blue/green's
/// preview listener (the new version only).
pub(in crate::controller) fn site(s: &Site) -> SitePlan {
    let Some(env) = s.manifest.environments.get(s.env) else {
        return SitePlan::Unlisted;
    };
    let edge = s
        .serving
        .and_then(|m| m.environments.get(s.env))
        .unwrap_or(env);
    let Ok(listen) = edge.listen.parse::<SocketAddr>() else {
        return SitePlan::Unlisted;
    };
    let phase = match s.deployment.map(Phase::of).transpose() {
        Ok(phase) => phase,
        Err(e) => return SitePlan::Keep(e.to_string()),
    };
    // A progressive rollout splits by its persisted weight; anything else by replica count.
    let weighting = s.deployment.and_then(|d| {
        if !progressive(d, &env.strategy) {
            return None;
        }
        let stable = d.previous_version.clone()?;
        let bp = match d.state {
            DeploymentState::Progressing => phase
                .as_ref()
                .and_then(|p| p.progress.as_ref())
                .map_or(0, |p| p.weight_bp),
            _ => 0,
        };
        Some((stable, d.version.clone(), bp))
    });
    let gateway = env.runtime == RuntimeKind::Kubernetes
        && env
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.traffic == Traffic::Gateway);
    let mut gateway_split = Vec::new();
    let mut routes = Vec::new();
    let mut preview_routes = Vec::new();
    let mut summary = Vec::new();
    for (service_name, service) in &s.manifest.services {
        let replicas: Vec<&Replica> = s
            .replicas
            .iter()
            .filter(|r| &r.service == service_name)
            .collect();
        let observed: Vec<Observed> = replicas.iter().map(|r| r.observed.clone()).collect();
        let shares = match &weighting {
            Some((stable, canary, bp)) => rollout::weighted_traffic(&observed, stable, canary, *bp),
            None => rollout::traffic(&observed),
        };
        if gateway {
            gateway_split.push((
                service_name.clone(),
                shares
                    .iter()
                    .map(|s| (s.version.clone(), s.weight))
                    .collect(),
            ));
        }
        let endpoint = |id: &String| {
            replicas
                .iter()
                .find(|r| &r.observed.id == id)
                .and_then(|r| r.endpoint)
        };
        let backends: Vec<BackendGroup> = shares
            .into_iter()
            .map(|share| {
                let n = share.replica_ids.len();
                summary.push(format!(
                    "{service_name} {} {}% ({n} replica{})",
                    share.version,
                    share.weight as f64 / 100.0,
                    if n == 1 { "" } else { "s" }
                ));
                BackendGroup {
                    version: share.version,
                    weight: share.weight,
                    // Where the runtime says the replica answers (a container's may be
                    // another address).
                    endpoints: share.replica_ids.iter().filter_map(endpoint).collect(),
                }
            })
            .collect();
        let (preview, sticky) = match &weighting {
            Some((_, canary, _)) if backends.iter().any(|g| &g.version == canary) => (
                Some(PreviewRule {
                    header: preview_header(&env.strategy),
                    version: canary.clone(),
                    token_sha256: s.preview_token.map(str::to_string),
                }),
                sticky_rule(&env.strategy),
            ),
            _ => (None, None),
        };
        // Blue/green's preview listener serves the new version only.
        let preview_backends: Vec<BackendGroup> = match &weighting {
            Some((_, canary, _)) => backends
                .iter()
                .filter(|g| &g.version == canary && !g.endpoints.is_empty())
                .map(|g| BackendGroup {
                    weight: 10_000,
                    ..g.clone()
                })
                .collect(),
            None => backends.clone(),
        };
        // The service's own, else the environment's (else the proxy's 60 s).
        let upstream_timeout_ms = service
            .upstream_timeout
            .or(env.upstream_timeout)
            .map(|d| u64::try_from(d.get().as_millis()).unwrap_or(u64::MAX));
        let path_prefix = s
            .serving
            .and_then(|m| m.services.get(service_name))
            .unwrap_or(service)
            .route
            .clone();
        preview_routes.push(Route {
            service: service_name.clone(),
            path_prefix: path_prefix.clone(),
            backends: preview_backends,
            preview: None,
            sticky: None,
            upstream_timeout_ms,
        });
        routes.push(Route {
            service: service_name.clone(),
            path_prefix,
            backends,
            preview,
            sticky,
            upstream_timeout_ms,
        });
    }
    let access_log = env.access_log.as_ref().map(Into::into);
    let id = format!("{}/{}", s.app, s.env);
    let mut listeners = Vec::new();
    let mut site = ListenerConfig::new(id.clone(), listen, routes);
    site.hosts = edge.hosts.clone();
    site.access_log.clone_from(&access_log);
    site.tls = edge.tls.as_ref().map(|t| TlsFiles {
        cert: t.cert.clone().into(),
        key: t.key.clone().into(),
        hsts_max_age_secs: t.hsts.map(|d| d.get().as_secs()),
    });
    listeners.push(site);
    // The plain-HTTP twin that sends the environment's hosts to HTTPS.
    if let Some(redirect) = edge.tls.as_ref().and_then(|t| t.redirect_http.as_ref())
        && let Ok(addr) = redirect.parse::<SocketAddr>()
    {
        let mut r = ListenerConfig::new(format!("{id}/redirect"), addr, vec![]);
        r.hosts = edge.hosts.clone();
        r.access_log.clone_from(&access_log);
        r.redirect_https = Some(listen.port());
        listeners.push(r);
    }
    if let Strategy::BlueGreen(BlueGreen {
        preview_listen: Some(preview),
        ..
    }) = &env.strategy
        && let Ok(listen) = preview.parse::<SocketAddr>()
    {
        let mut p = ListenerConfig::new(format!("{id}/preview"), listen, preview_routes);
        p.access_log = access_log;
        listeners.push(p);
    }
    SitePlan::Routes {
        listeners,
        gateway: gateway.then_some(gateway_split),
        summary: if summary.is_empty() {
            "no ready replicas".to_string()
        } else {
            summary.join(", ")
        },
    }
}

/// What the shell sends after [`site`]: the table, unless the proxy acknowledged the same
/// listeners already (then nothing, and no line); and once it is sent, the traffic lines
/// (app, env, summary) whose summary differs from the one `announced` last.
#[derive(Debug, PartialEq)]
pub(in crate::controller) struct Push {
    pub table: Option<RouteTable>,
    pub lines: Vec<(String, String, String)>,
}

pub(in crate::controller) fn push(
    acknowledged: Option<&RouteTable>,
    listeners: Vec<ListenerConfig>,
    announced: &HashMap<(String, String), String>,
    summaries: Vec<(String, String, String)>,
) -> Push {
    if acknowledged.is_some_and(|t| t.listeners == listeners) {
        return Push {
            table: None,
            lines: Vec::new(),
        };
    }
    let lines = summaries
        .into_iter()
        .filter(|(app, env, summary)| announced.get(&(app.clone(), env.clone())) != Some(summary))
        .collect();
    Push {
        table: Some(RouteTable {
            generation: 0,
            listeners,
        }),
        lines,
    }
}

/// The listeners of app/env in the `acknowledged` table (its site and its twins).
pub(in crate::controller) fn listeners_of(
    acknowledged: Option<&RouteTable>,
    app: &str,
    env: &str,
) -> Vec<ListenerConfig> {
    let id = format!("{app}/{env}");
    acknowledged
        .map(|table| {
            table
                .listeners
                .iter()
                .filter(|l| {
                    l.id == id || l.id.strip_prefix(&id).is_some_and(|r| r.starts_with('/'))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the `acknowledged` table sends every route of app/env to exactly `desired`
/// replicas (per service) of `version` and nothing else.
pub(in crate::controller) fn routed_only_to(
    acknowledged: Option<&RouteTable>,
    app: &str,
    env: &str,
    version: &str,
    desired: &[(&str, u32)],
) -> bool {
    let id = format!("{app}/{env}");
    let Some(listener) = acknowledged.and_then(|t| t.listeners.iter().find(|l| l.id == id)) else {
        return false;
    };
    desired.iter().all(|(service, count)| {
        listener.routes.iter().any(|route| {
            &route.service == service
                && matches!(route.backends.as_slice(), [group]
                    if group.version == version
                        && group.weight == 10_000
                        && group.endpoints.len() == *count as usize)
        })
    })
}

/// Whether the `acknowledged` table routes the preview of `version`: a group of it with
/// endpoints on every route of app/env.
pub(in crate::controller) fn preview_routed(
    acknowledged: Option<&RouteTable>,
    app: &str,
    env: &str,
    version: &str,
) -> bool {
    let id = format!("{app}/{env}");
    let Some(listener) = acknowledged.and_then(|t| t.listeners.iter().find(|l| l.id == id)) else {
        return false;
    };
    listener.routes.iter().all(|route| {
        route
            .backends
            .iter()
            .any(|g| g.version == version && !g.endpoints.is_empty())
    })
}

pub(in crate::controller) fn preview_header(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Canary(c) => c.preview_header.clone(),
        Strategy::BlueGreen(b) => b.preview_header.clone(),
        _ => ferry_core::manifest::DEFAULT_PREVIEW_HEADER.to_string(),
    }
}

fn sticky_rule(strategy: &Strategy) -> Option<StickyRule> {
    match strategy {
        Strategy::Canary(c) => c.stickiness.as_ref().map(|s| StickyRule {
            header: s.header.clone(),
            cookie: s.cookie.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::steps::gates::tests::deployment;
    use crate::controller::steps::maintain::tests::replica;
    use ferry_core::model::{DeploymentKind, ReplicaState};
    use ferry_core::progressive::Progress;

    const HEALTHY: ReplicaState = ReplicaState::Healthy;

    fn manifest(strategy: &str) -> Manifest {
        let yaml = format!(
            r#"app: shop
services:
  web:
    run: ["server", "--port", "${{PORT}}"]
    replicas: 2
    health: {{ path: /health }}
  api:
    run: ["server", "--port", "${{PORT}}"]
    route: /api
environments:
  production:
    listen: 127.0.0.1:18080
    strategy: {strategy}
"#
        );
        ferry_core::manifest::parse(&yaml, "ferry.yaml").expect("manifest")
    }

    const CANARY: &str =
        "{ canary: { steps: [{ weight: 20 }], stickiness: { cookie: ferry-canary } } }";
    const BLUE_GREEN: &str = "{ blue_green: { preview_listen: 127.0.0.1:18081 } }";

    fn at(id: &str, version: &str, state: ReplicaState, port: u16) -> Replica {
        Replica {
            service: "web".into(),
            observed: replica(id, version, state, false),
            endpoint: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        }
    }

    /// A deployment of 2.0 over 1.0 in `state`, its persisted weight `bp` (if any).
    fn rollout(state: DeploymentState, bp: Option<u32>) -> DeploymentRecord {
        let mut d = deployment(state, DeploymentKind::Deploy);
        if let Some(bp) = bp {
            d.phase = Phase {
                progress: Some(Progress {
                    weight_bp: bp,
                    ..ferry_core::progressive::start(0)
                }),
                ..Phase::default()
            }
            .to_value();
        }
        d
    }

    fn plan(
        m: &Manifest,
        d: Option<&DeploymentRecord>,
        replicas: &[Replica],
    ) -> (Vec<ListenerConfig>, String) {
        match site(&Site {
            app: "shop",
            env: "production",
            manifest: m,
            serving: None,
            deployment: d,
            replicas,
            preview_token: Some("abc123"),
        }) {
            SitePlan::Routes {
                listeners, summary, ..
            } => (listeners, summary),
            other => panic!("routes: {other:?}"),
        }
    }

    fn weights(listeners: &[ListenerConfig], service: &str) -> Vec<(String, u32, usize)> {
        listeners[0]
            .routes
            .iter()
            .find(|r| r.service == service)
            .expect("route")
            .backends
            .iter()
            .map(|g| (g.version.clone(), g.weight, g.endpoints.len()))
            .collect()
    }

    #[test]
    fn weights_sum_to_all_traffic_and_skip_a_group_without_ready_replicas() {
        let states = [
            ReplicaState::Starting,
            ReplicaState::Healthy,
            ReplicaState::Unhealthy,
            ReplicaState::Exited,
        ];
        let strategies = ["rolling", CANARY, BLUE_GREEN];
        let deployments = [
            None,
            Some(rollout(DeploymentState::Progressing, Some(2_000))),
            Some(rollout(DeploymentState::Progressing, Some(10_000))),
            Some(rollout(DeploymentState::RollingBack, Some(5_000))),
            Some(rollout(DeploymentState::Pending, None)),
        ];
        let mut checked = 0;
        for strategy in strategies {
            let m = manifest(strategy);
            for d in &deployments {
                // every state of one old and one new replica
                for old in states {
                    for new in states {
                        let replicas = [at("s1", "1.0", old, 1), at("c1", "2.0", new, 2)];
                        let (listeners, _) = plan(&m, d.as_ref(), &replicas);
                        let groups = weights(&listeners, "web");
                        let total: u32 = groups.iter().map(|g| g.1).sum();
                        let ready = [old, new].contains(&HEALTHY);
                        let what = format!(
                            "{strategy} {:?} {old:?} {new:?}: {groups:?}",
                            d.as_ref().map(|d| d.state)
                        );
                        assert_eq!(total, if ready { 10_000 } else { 0 }, "{what}");
                        for (version, weight, endpoints) in &groups {
                            let state = if version == "1.0" { old } else { new };
                            if *weight > 0 {
                                assert_eq!(state, HEALTHY, "weight on an unready group: {what}");
                                assert_eq!(*endpoints, 1, "{what}");
                            }
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 3 * 5 * 16);
    }

    #[test]
    fn a_progressive_rollout_splits_by_its_persisted_weight_only() {
        let m = manifest(CANARY);
        let replicas = [
            at("s1", "1.0", HEALTHY, 1),
            at("s2", "1.0", HEALTHY, 2),
            at("c1", "2.0", HEALTHY, 3),
        ];
        let cases = [
            // (state, persisted weight) -> new version's weight
            (DeploymentState::Progressing, Some(2_000), 2_000),
            (DeploymentState::Progressing, Some(10_000), 10_000),
            // nothing persisted yet: no traffic, however many new replicas are ready
            (DeploymentState::Progressing, None, 0),
            // on the way back: none, whatever was persisted
            (DeploymentState::RollingBack, Some(5_000), 0),
            // held at its gates
            (DeploymentState::Blocked, Some(5_000), 0),
        ];
        for (state, bp, want) in cases {
            let d = rollout(state, bp);
            let (listeners, _) = plan(&m, Some(&d), &replicas);
            let groups = weights(&listeners, "web");
            let new = groups.iter().find(|g| g.0 == "2.0").map_or(0, |g| g.1);
            assert_eq!(new, want, "{state} {bp:?}: {groups:?}");
            assert_eq!(groups.iter().map(|g| g.1).sum::<u32>(), 10_000);
        }
        // A rolling update (or a rollback) splits by ready replicas instead: 2 to 1.
        let rolling = manifest("rolling");
        let d = rollout(DeploymentState::Progressing, Some(2_000));
        let (listeners, summary) = plan(&rolling, Some(&d), &replicas);
        assert_eq!(
            weights(&listeners, "web"),
            vec![("1.0".into(), 6_667, 2), ("2.0".into(), 3_333, 1)]
        );
        assert_eq!(
            summary,
            "web 1.0 66.67% (2 replicas), web 2.0 33.33% (1 replica)"
        );
        let rollback = deployment(DeploymentState::Progressing, DeploymentKind::Rollback);
        let (listeners, _) = plan(&m, Some(&rollback), &replicas);
        assert_eq!(
            weights(&listeners, "web")[1].1,
            3_333,
            "a rollback: by count"
        );
    }

    #[test]
    fn the_canary_group_gets_the_preview_header_and_sticky_rules_and_nothing_else_does() {
        let m = manifest(CANARY);
        let d = rollout(DeploymentState::Progressing, Some(2_000));
        let with_canary = [at("s1", "1.0", HEALTHY, 1), at("c1", "2.0", HEALTHY, 2)];
        let (listeners, _) = plan(&m, Some(&d), &with_canary);
        let web = &listeners[0]
            .routes
            .iter()
            .find(|r| r.service == "web")
            .expect("web");
        assert_eq!(
            web.preview,
            Some(PreviewRule {
                header: ferry_core::manifest::DEFAULT_PREVIEW_HEADER.into(),
                version: "2.0".into(),
                token_sha256: Some("abc123".into()),
            })
        );
        assert_eq!(
            web.sticky
                .as_ref()
                .and_then(|s| s.cookie.clone())
                .as_deref(),
            Some("ferry-canary")
        );
        // No group of the new version (its replicas not ready; or no service replica):
        // no preview rule.
        let api = &listeners[0]
            .routes
            .iter()
            .find(|r| r.service == "api")
            .expect("api");
        assert_eq!((api.preview.clone(), api.sticky.clone()), (None, None));
        let (listeners, _) = plan(&m, Some(&d), &[at("s1", "1.0", HEALTHY, 1)]);
        assert_eq!(listeners[0].routes[1].preview, None);
        // Nothing progressive running: no rule at all.
        let (listeners, _) = plan(&m, None, &with_canary);
        assert!(
            listeners[0]
                .routes
                .iter()
                .all(|r| r.preview.is_none() && r.sticky.is_none())
        );
        assert_eq!(listeners.len(), 1, "a canary has no preview listener");
    }

    #[test]
    fn blue_green_has_a_preview_listener_serving_only_the_new_version() {
        let m = manifest(BLUE_GREEN);
        let d = rollout(DeploymentState::Progressing, Some(0));
        let replicas = [at("s1", "1.0", HEALTHY, 1), at("c1", "2.0", HEALTHY, 2)];
        let (listeners, _) = plan(&m, Some(&d), &replicas);
        let ids: Vec<&str> = listeners.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["shop/production", "shop/production/preview"]);
        assert_eq!(
            weights(&listeners, "web"),
            vec![("2.0".into(), 0, 1), ("1.0".into(), 10_000, 1)],
            "the new version first (sticky buckets), at 0 until the switch"
        );
        let preview = &listeners[1]
            .routes
            .iter()
            .find(|r| r.service == "web")
            .expect("web");
        let groups: Vec<(&str, u32)> = preview
            .backends
            .iter()
            .map(|g| (g.version.as_str(), g.weight))
            .collect();
        assert_eq!(groups, [("2.0", 10_000)]);
        assert_eq!(listeners[1].listen.port(), 18081);
        // With nothing progressive running, the preview listener serves what the site does.
        let (listeners, _) = plan(&m, None, &replicas[..1]);
        assert_eq!(
            listeners[1].routes[1].backends,
            listeners[0].routes[1].backends
        );
    }

    #[test]
    fn an_unreadable_phase_keeps_what_the_proxy_has_and_an_empty_site_says_so() {
        let m = manifest(CANARY);
        let mut d = rollout(DeploymentState::Progressing, Some(2_000));
        d.phase = serde_json::json!({ "progress": "garbage" });
        let kept = site(&Site {
            app: "shop",
            env: "production",
            manifest: &m,
            serving: None,
            deployment: Some(&d),
            replicas: &[],
            preview_token: None,
        });
        assert!(
            matches!(&kept, SitePlan::Keep(e) if e.contains("unreadable")),
            "{kept:?}"
        );
        let (listeners, summary) = plan(&m, None, &[]);
        assert_eq!(summary, "no ready replicas");
        assert!(listeners[0].routes.iter().all(|r| r.backends.is_empty()));
    }

    #[test]
    fn the_preview_secret_is_read_only_for_a_progressive_rollout_that_names_one() {
        let named =
            manifest("{ canary: { steps: [{ weight: 20 }], preview_secret: PREVIEW_TOKEN } }");
        let d = rollout(DeploymentState::Progressing, Some(2_000));
        assert_eq!(
            preview_secret(&named, "production", Some(&d)),
            Some("PREVIEW_TOKEN")
        );
        assert_eq!(preview_secret(&named, "production", None), None);
        let rollback = deployment(DeploymentState::Progressing, DeploymentKind::Rollback);
        assert_eq!(preview_secret(&named, "production", Some(&rollback)), None);
        assert_eq!(
            preview_secret(&manifest(CANARY), "production", Some(&d)),
            None
        );
    }

    #[test]
    fn an_unchanged_table_is_not_pushed_and_only_changed_lines_are_written() {
        let m = manifest("rolling");
        let (listeners, summary) = plan(&m, None, &[at("s1", "1.0", HEALTHY, 1)]);
        let key = ("shop".to_string(), "production".to_string());
        let line = vec![(key.0.clone(), key.1.clone(), summary.clone())];
        // First table: pushed, its line written.
        let first = push(None, listeners.clone(), &HashMap::new(), line.clone());
        let table = first.table.expect("pushed");
        assert_eq!(table.listeners, listeners);
        assert_eq!(first.lines, line);
        // The same again: nothing pushed, nothing said.
        let same = push(
            Some(&table),
            listeners.clone(),
            &HashMap::new(),
            line.clone(),
        );
        assert_eq!(
            same,
            Push {
                table: None,
                lines: Vec::new()
            }
        );
        // Another table whose summary for this site was announced already: pushed, silent.
        let announced = HashMap::from([(key, summary)]);
        let mut moved = listeners;
        moved[0].routes[1].backends[0].endpoints[0] = SocketAddr::from(([127, 0, 0, 1], 9));
        let other = push(Some(&table), moved, &announced, line);
        assert!(other.table.is_some());
        assert_eq!(other.lines, Vec::new());
    }

    #[test]
    fn only_a_table_sending_everything_to_the_desired_replicas_counts_as_routed() {
        let m = manifest("rolling");
        let (listeners, _) = plan(
            &m,
            None,
            &[at("c1", "2.0", HEALTHY, 1), at("c2", "2.0", HEALTHY, 2)],
        );
        let table = RouteTable {
            generation: 1,
            listeners,
        };
        let routed = |version: &str, web: u32| {
            routed_only_to(Some(&table), "shop", "production", version, &[("web", web)])
        };
        assert!(routed("2.0", 2));
        assert!(!routed("2.0", 3), "one replica short");
        assert!(!routed("1.0", 2));
        assert!(!routed_only_to(
            None,
            "shop",
            "production",
            "2.0",
            &[("web", 2)]
        ));
        assert!(
            !preview_routed(Some(&table), "shop", "production", "2.0"),
            "api has no 2.0 group"
        );
        assert_eq!(listeners_of(Some(&table), "shop", "production").len(), 1);
        assert!(
            listeners_of(Some(&table), "shop", "prod").is_empty(),
            "prefix is not enough"
        );
    }
}
