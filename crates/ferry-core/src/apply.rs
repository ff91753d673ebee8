//! What applying a manifest does to what runs: `ferry apply` stores a manifest and
//! restarts nothing; the replicas of an environment change only through a deployment.
//! The exceptions are removals, which can only stop things: an environment or a service
//! dropped from the manifest stops its replicas (and an environment's listener closes).
//! Those must be confirmed (`--prune`), and `--dry-run` lists them exactly.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::manifest::Manifest;
use crate::rollout::ServiceInput;

/// A replica that runs now (not draining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub env: String,
    pub service: String,
    pub version: String,
}

/// A deployment not yet ended in an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub id: i64,
    pub env: String,
    pub version: String,
    pub state: String,
}

/// The effects of applying `new` over `old` on what runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// What would stop at once: replicas of removed environments and services, the
    /// listeners of removed environments, deployments there that would never finish.
    /// Refused unless confirmed with `--prune`.
    pub stops: Vec<String>,
    /// Environments (with a deployment not yet ended) abandoned by the removal.
    pub abandoned: Vec<i64>,
    /// Changes that take effect with the next deployment of each environment.
    pub next_deployment: Vec<String>,
}

/// Decides what applying `new` over `old` (the stored manifest, if any) does to the
/// replicas in `running` and the deployments in `active`.
pub fn effects(
    app: &str,
    old: Option<&Manifest>,
    new: &Manifest,
    running: &[Running],
    active: &[Active],
) -> Effects {
    let mut out = Effects::default();
    let Some(old) = old else {
        return out;
    };
    // (env, service) -> version -> count
    let mut counts: BTreeMap<(&str, &str), BTreeMap<&str, u32>> = BTreeMap::new();
    for r in running {
        *counts
            .entry((&r.env, &r.service))
            .or_default()
            .entry(&r.version)
            .or_default() += 1;
    }
    let describe = |env: &str, service: Option<&str>| -> Vec<String> {
        counts
            .iter()
            .filter(|((e, s), _)| *e == env && service.is_none_or(|x| x == *s))
            .flat_map(|((_, s), versions)| {
                versions.iter().map(move |(v, n)| format!("{s} {v} ×{n}"))
            })
            .collect()
    };
    let total = |env: &str, service: Option<&str>| -> u32 {
        counts
            .iter()
            .filter(|((e, s), _)| *e == env && service.is_none_or(|x| x == *s))
            .flat_map(|(_, versions)| versions.values())
            .sum()
    };
    for (env, environment) in old.environments.iter() {
        if new.environments.get(env).is_some() {
            continue;
        }
        let n = total(env, None);
        if n > 0 {
            out.stops.push(format!(
                "environment {env}: {n} replica(s) stop ({}) and listener {} closes",
                describe(env, None).join(", "),
                environment.listen
            ));
        }
        for a in active.iter().filter(|a| a.env == env) {
            out.stops.push(format!(
                "environment {env}: deployment #{} of {app} {} ({}) is abandoned",
                a.id, a.version, a.state
            ));
            out.abandoned.push(a.id);
        }
    }
    for (service, _) in old.services.iter() {
        if new.services.contains_key(service) {
            continue;
        }
        for (env, _) in new.environments.iter() {
            let n = total(env, Some(service));
            if n > 0 {
                out.stops.push(format!(
                    "service {service} in {env}: {n} replica(s) stop ({})",
                    describe(env, Some(service)).join(", ")
                ));
            }
        }
    }
    for (env, _) in new.environments.iter() {
        if old.environments.get(env).is_none() || total(env, None) == 0 {
            continue;
        }
        let mut pending = edge_changes(env, old, new);
        for (service, _) in new.services.iter() {
            let want = new.replicas(service, env);
            if !old.services.contains_key(service) {
                pending.push(format!("{service} starts ({want} replica(s))"));
                continue;
            }
            let had = old.replicas(service, env);
            if had != want {
                pending.push(format!("{service} {had} → {want} replicas"));
            }
        }
        if !pending.is_empty() {
            out.next_deployment.push(format!(
                "{env}: {} with the next deployment (`ferry redeploy {app} --env {env}`)",
                pending.join(", ")
            ));
        }
    }
    out
}

/// How traffic reaches environment `env` changes from manifest `from` to `to`: its
/// listener address, hosts, TLS settings and the services' route prefixes. Like replica
/// counts, these follow the environment's deployment (the proxy serves an environment as
/// its deployment's manifest revision says), so `apply` reports them as waiting for the
/// next deployment. Empty: nothing changes, or `env` is missing from either manifest.
pub fn edge_changes(env: &str, from: &Manifest, to: &Manifest) -> Vec<String> {
    let (Some(a), Some(b)) = (from.environments.get(env), to.environments.get(env)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if a.listen != b.listen {
        out.push(format!("listener {} → {}", a.listen, b.listen));
    }
    if a.hosts != b.hosts {
        let hosts = |h: &[String]| {
            if h.is_empty() {
                "(any)".to_string()
            } else {
                h.join(", ")
            }
        };
        out.push(format!("hosts {} → {}", hosts(&a.hosts), hosts(&b.hosts)));
    }
    match (&a.tls, &b.tls) {
        (None, Some(_)) => out.push("TLS on".to_string()),
        (Some(_), None) => out.push("TLS off".to_string()),
        (Some(x), Some(y)) if x != y => out.push("TLS settings".to_string()),
        _ => {}
    }
    for (service, old) in from.services.iter() {
        if let Some(new) = to.services.get(service)
            && old.route != new.route
        {
            out.push(format!("{service} route {} → {}", old.route, new.route));
        }
    }
    out
}

/// The manifest what runs in an environment follows: the revision of its deployment
/// (`pinned`; `None` when that is the latest), without the services the latest manifest
/// removed (those stop: removing them was confirmed with `--prune`). So a bare apply never
/// changes a replica count nor starts a new service.
pub fn running_spec<'a>(latest: &'a Manifest, pinned: Option<&'a Manifest>) -> Cow<'a, Manifest> {
    let Some(pinned) = pinned else {
        return Cow::Borrowed(latest);
    };
    if pinned
        .services
        .keys()
        .all(|s| latest.services.contains_key(s))
    {
        return Cow::Borrowed(pinned);
    }
    let mut spec = pinned.clone();
    spec.services.retain(|s, _| latest.services.contains_key(s));
    Cow::Owned(spec)
}

/// The services whose live replicas of `version` (not draining) differ in number from what
/// their manifest revision wants: `api 2 → 3 replicas`. Empty: nothing to scale.
pub fn scale_changes(services: &[ServiceInput], version: &str) -> Vec<String> {
    services
        .iter()
        .filter_map(|s| {
            let live = s
                .replicas
                .iter()
                .filter(|r| r.version == version && !r.draining)
                .count() as u32;
            (live != s.desired).then(|| format!("{} {live} → {} replicas", s.service, s.desired))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse;

    fn manifest(services: &str, envs: &str) -> Manifest {
        let text = format!("app: shop\nservices:\n{services}environments:\n{envs}");
        parse(&text, "ferry.yaml").expect("valid manifest")
    }

    fn run(env: &str, service: &str, version: &str) -> Running {
        Running {
            env: env.into(),
            service: service.into(),
            version: version.into(),
        }
    }

    const API: &str = "  api:\n    run: [./api]\n    replicas: 2\n";
    const WORKER: &str = "  worker:\n    run: [./worker]\n    route: /worker\n";
    const STAGING: &str = "  staging:\n    listen: 127.0.0.1:8080\n";
    const PRODUCTION: &str = "  production:\n    listen: 127.0.0.1:9080\n";

    #[test]
    fn removing_a_serving_environment_lists_what_stops() {
        let old = manifest(API, &format!("{STAGING}{PRODUCTION}"));
        let new = manifest(API, STAGING);
        let running = [
            run("staging", "api", "1.0.0"),
            run("production", "api", "1.0.0"),
            run("production", "api", "1.0.0"),
        ];
        let active = [Active {
            id: 7,
            env: "production".into(),
            version: "1.1.0".into(),
            state: "awaiting-approval".into(),
        }];
        let e = effects("shop", Some(&old), &new, &running, &active);
        assert_eq!(
            e.stops,
            [
                "environment production: 2 replica(s) stop (api 1.0.0 ×2) and listener 127.0.0.1:9080 closes",
                "environment production: deployment #7 of shop 1.1.0 (awaiting-approval) is abandoned",
            ]
        );
        assert_eq!(e.abandoned, [7]);
        assert!(e.next_deployment.is_empty());
    }

    #[test]
    fn removing_an_idle_environment_stops_nothing() {
        let old = manifest(API, &format!("{STAGING}{PRODUCTION}"));
        let new = manifest(API, STAGING);
        let e = effects("shop", Some(&old), &new, &[run("staging", "api", "1")], &[]);
        assert_eq!(e, Effects::default());
    }

    #[test]
    fn removing_a_service_lists_its_replicas_per_environment() {
        let old = manifest(&format!("{API}{WORKER}"), &format!("{STAGING}{PRODUCTION}"));
        let new = manifest(API, &format!("{STAGING}{PRODUCTION}"));
        let running = [
            run("staging", "worker", "1.0.0"),
            run("staging", "api", "1.0.0"),
        ];
        let e = effects("shop", Some(&old), &new, &running, &[]);
        assert_eq!(
            e.stops,
            ["service worker in staging: 1 replica(s) stop (worker 1.0.0 ×1)"]
        );
    }

    #[test]
    fn scale_changes_and_new_services_wait_for_the_next_deployment() {
        let old = manifest(API, &format!("{STAGING}{PRODUCTION}"));
        let new = manifest(
            &format!("{}{WORKER}", API.replace("replicas: 2", "replicas: 3")),
            &format!("{STAGING}{PRODUCTION}"),
        );
        let e = effects("shop", Some(&old), &new, &[run("staging", "api", "1")], &[]);
        assert!(e.stops.is_empty());
        assert_eq!(
            e.next_deployment,
            [
                "staging: api 2 → 3 replicas, worker starts (1 replica(s)) with the next deployment (`ferry redeploy shop --env staging`)"
            ]
        );
    }

    #[test]
    fn listener_hosts_tls_and_routes_wait_for_the_next_deployment() {
        let old = manifest(API, &format!("{STAGING}{PRODUCTION}"));
        let new = manifest(
            &format!("{API}    route: /api\n"),
            &format!(
                "{}    hosts: [shop.example]\n    tls: {{ cert: /etc/c.pem, key: /etc/k.pem }}\n{PRODUCTION}",
                STAGING.replace("8080", "8081")
            ),
        );
        let e = effects("shop", Some(&old), &new, &[run("staging", "api", "1")], &[]);
        assert!(e.stops.is_empty());
        assert_eq!(
            e.next_deployment,
            [
                "staging: listener 127.0.0.1:8080 → 127.0.0.1:8081, hosts (any) → shop.example, TLS on, api route / → /api with the next deployment (`ferry redeploy shop --env staging`)"
            ]
        );
        assert_eq!(edge_changes("staging", &new, &new), Vec::<String>::new());
        assert_eq!(edge_changes("qa", &old, &new), Vec::<String>::new());
        assert_eq!(
            edge_changes("staging", &new, &old),
            [
                "listener 127.0.0.1:8081 → 127.0.0.1:8080",
                "hosts shop.example → (any)",
                "TLS off",
                "api route /api → /",
            ]
        );
    }

    #[test]
    fn a_first_apply_has_no_effect() {
        let new = manifest(API, STAGING);
        assert_eq!(effects("shop", None, &new, &[], &[]), Effects::default());
    }

    #[test]
    fn what_runs_follows_the_deployed_revision_minus_pruned_services() {
        let deployed = manifest(&format!("{API}{WORKER}"), STAGING);
        let latest = manifest(&API.replace("replicas: 2", "replicas: 5"), STAGING);
        let spec = running_spec(&latest, Some(&deployed));
        assert_eq!(
            spec.replicas("api", "staging"),
            2,
            "a bare apply scales nothing"
        );
        assert!(
            !spec.services.contains_key("worker"),
            "a pruned service stops"
        );
        let spec = running_spec(&latest, None);
        assert_eq!(spec.replicas("api", "staging"), 5);
    }

    #[test]
    fn scale_changes_count_live_replicas_of_the_version() {
        use crate::model::ReplicaState;
        use crate::rollout::{Observed, Patience};
        let replica = |version: &str, draining: bool| Observed {
            id: format!("r-{version}-{draining}"),
            version: version.into(),
            state: ReplicaState::Healthy,
            started_at_ms: 0,
            restarts: 0,
            ever_healthy: true,
            draining,
            last_exit: None,
            last_output: Vec::new(),
            last_probe: None,
        };
        let mut api = ServiceInput {
            service: "api".into(),
            desired: 2,
            replicas: vec![
                replica("1.0.0", false),
                replica("1.0.0", true),
                replica("0.9.0", false),
            ],
            patience: Patience {
                start_timeout_ms: 1000,
                max_start_exits: 3,
            },
        };
        assert_eq!(
            scale_changes(std::slice::from_ref(&api), "1.0.0"),
            ["api 1 → 2 replicas"]
        );
        api.desired = 1;
        assert!(scale_changes(&[api], "1.0.0").is_empty());
    }
}
