//! The route table pushed to the proxy: weights per version, preview and sticky rules, listeners.

use std::collections::HashMap;
use std::net::SocketAddr;

use ferry_core::manifest::kubernetes::Traffic;
use ferry_core::manifest::{BlueGreen, RuntimeKind, Strategy};
use ferry_core::model::{DeploymentState, EventKind};
use ferry_core::rollout::{self, Observed, ServiceInput};
use ferry_proxy::routes::{
    BackendGroup, ListenerConfig, PreviewRule, Route, RouteTable, StickyRule, TlsFiles,
};

use ferry_store::{DeploymentRecord, ReplicaRecord};

use crate::error::ServerError;
use crate::lock;
use crate::progressive::Phase;

use super::Controller;
use super::strategy::plan_of;

impl Controller {
    /// Whether the proxy's acknowledged table sends every route of app/env to exactly the
    /// desired replicas of `version` and nothing else.
    pub(super) fn routed_only_to(
        &self,
        app: &str,
        env: &str,
        version: &str,
        services: &[ServiceInput],
    ) -> bool {
        let Some(table) = self.proxy.acknowledged() else {
            return false;
        };
        let id = format!("{app}/{env}");
        let Some(listener) = table.listeners.iter().find(|l| l.id == id) else {
            return false;
        };
        services.iter().all(|service| {
            listener.routes.iter().any(|route| {
                route.service == service.service
                    && matches!(route.backends.as_slice(), [group]
                        if group.version == version
                            && group.weight == 10_000
                            && group.endpoints.len() == service.desired as usize)
            })
        })
    }

    /// The listeners of app/env in the table the proxy acknowledged last.
    fn acknowledged_listeners(&self, app: &str, env: &str) -> Vec<ListenerConfig> {
        let id = format!("{app}/{env}");
        self.proxy
            .acknowledged()
            .map(|table| {
                table
                    .listeners
                    .into_iter()
                    .filter(|l| {
                        l.id == id || l.id.strip_prefix(&id).is_some_and(|r| r.starts_with('/'))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) async fn push_routes(
        &self,
        apps: &crate::controller::Apps,
        replicas: &[ReplicaRecord],
    ) -> Result<(), ServerError> {
        let active: HashMap<(String, String), DeploymentRecord> = self
            .store
            .active_deployments()
            .await?
            .into_iter()
            .map(|d| ((d.app.clone(), d.env.clone()), d))
            .collect();
        let mut listeners = Vec::new();
        let mut summaries: Vec<(String, String, String)> = Vec::new();
        for (app, manifest) in apps.values() {
            for (env_name, env) in manifest.environments.iter() {
                // apply: the listener, hosts, TLS and routes are those of the manifest
                // revision the environment is deployed with (a deployment's once it has
                // passed its gates), never a bare apply's.
                let serving = self
                    .edge_manifest(
                        app,
                        env_name,
                        active.get(&(app.name.clone(), env_name.to_string())),
                    )
                    .await;
                let serving = serving.as_deref();
                let edge = serving
                    .and_then(|m| m.environments.get(env_name))
                    .unwrap_or(env);
                let Ok(listen) = edge.listen.parse::<SocketAddr>() else {
                    continue;
                };
                let mut routes = Vec::new();
                let mut preview_routes = Vec::new();
                let mut summary = Vec::new();
                let deployment = active.get(&(app.name.clone(), env_name.to_string()));
                let phase = match deployment.map(Phase::of).transpose() {
                    Ok(phase) => phase,
                    Err(e) => {
                        // An unreadable phase says nothing of the weights: what the proxy
                        // has for this environment stays as it is.
                        tracing::error!(app = %app.name, env = env_name, error = %e, "route table of this environment kept as it is");
                        listeners.extend(self.acknowledged_listeners(&app.name, env_name));
                        continue;
                    }
                };
                // A progressive rollout splits by its weight; anything else by replica count.
                let weighting = deployment.and_then(|d| {
                    plan_of(d, &env.strategy, manifest, env_name)?;
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
                let preview_token = match (&weighting, preview_secret(&env.strategy)) {
                    (Some(_), Some(name)) => self.preview_token(&app.name, env_name, name).await,
                    _ => None,
                };
                // `traffic: gateway`: the same split goes onto the cluster's HTTPRoute.
                let gateway = env.runtime == RuntimeKind::Kubernetes
                    && env
                        .kubernetes
                        .as_ref()
                        .is_some_and(|k| k.traffic == Traffic::Gateway);
                let mut gateway_traffic = Vec::new();
                for (service_name, service) in &manifest.services {
                    let observed: Vec<Observed> = replicas
                        .iter()
                        .filter(|r| {
                            r.app == app.name && r.env == env_name && &r.service == service_name
                        })
                        .map(|r| self.observed(r))
                        .collect();
                    let shares = match &weighting {
                        Some((stable, canary, bp)) => {
                            rollout::weighted_traffic(&observed, stable, canary, *bp)
                        }
                        None => rollout::traffic(&observed),
                    };
                    if gateway {
                        gateway_traffic.push((
                            service_name.clone(),
                            shares
                                .iter()
                                .map(|s| (s.version.clone(), s.weight))
                                .collect(),
                        ));
                    }
                    let backends: Vec<BackendGroup> = shares
                        .into_iter()
                        .map(|share| {
                            summary.push(format!(
                                "{service_name} {} {}% ({} replica{})",
                                share.version,
                                share.weight as f64 / 100.0,
                                share.replica_ids.len(),
                                if share.replica_ids.len() == 1 {
                                    ""
                                } else {
                                    "s"
                                }
                            ));
                            BackendGroup {
                                version: share.version,
                                weight: share.weight,
                                endpoints: share
                                    .replica_ids
                                    .iter()
                                    // Where the runtime says the replica answers
                                    // (a container's may be another address).
                                    .filter_map(|id| self.runtime.endpoint(id))
                                    .collect(),
                            }
                        })
                        .collect();
                    let (preview, sticky) = match &weighting {
                        Some((_, canary, _)) if backends.iter().any(|g| &g.version == canary) => (
                            Some(PreviewRule {
                                header: preview_header(&env.strategy),
                                version: canary.clone(),
                                token_sha256: preview_token.clone(),
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
                    let path_prefix = serving
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
                if gateway
                    && let Err(e) = self
                        .runtime
                        .route_gateway(
                            &app.name,
                            env_name,
                            deployment.map(|d| d.version.as_str()),
                            &gateway_traffic,
                        )
                        .await
                {
                    // Until the cluster has the new split, the proxy keeps the old one too,
                    // so that nothing waiting on the table (drains, steps) moves on.
                    tracing::warn!(app = %app.name, env = env_name, error = %e, "gateway route not set; retrying");
                    listeners.extend(self.acknowledged_listeners(&app.name, env_name));
                    continue;
                }
                let mut site =
                    ListenerConfig::new(format!("{}/{env_name}", app.name), listen, routes);
                site.hosts = edge.hosts.clone();
                site.access_log = env.access_log.as_ref().map(Into::into);
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
                    let mut r = ListenerConfig::new(
                        format!("{}/{env_name}/redirect", app.name),
                        addr,
                        vec![],
                    );
                    r.hosts = edge.hosts.clone();
                    r.access_log = env.access_log.as_ref().map(Into::into);
                    r.redirect_https = Some(listen.port());
                    listeners.push(r);
                }
                if let Strategy::BlueGreen(BlueGreen {
                    preview_listen: Some(preview),
                    ..
                }) = &env.strategy
                    && let Ok(listen) = preview.parse::<SocketAddr>()
                {
                    let mut p = ListenerConfig::new(
                        format!("{}/{env_name}/preview", app.name),
                        listen,
                        preview_routes,
                    );
                    p.access_log = env.access_log.as_ref().map(Into::into);
                    listeners.push(p);
                }
                let summary = if summary.is_empty() {
                    "no ready replicas".to_string()
                } else {
                    summary.join(", ")
                };
                summaries.push((app.name.clone(), env_name.to_string(), summary));
            }
        }
        let previous = lock(&self.traffic_summary).clone();
        if self
            .proxy
            .push(RouteTable {
                generation: 0,
                listeners,
            })
            .await?
        {
            // Decisions wait on the acknowledged table: take the next pass right away.
            self.wake.notify_one();
            for (app, env, summary) in summaries {
                if previous.get(&(app.clone(), env.clone())) == Some(&summary) {
                    continue;
                }
                if let Ok(Some(active)) = self.active_deployment(&app, &env).await {
                    self.event(active.id, EventKind::Traffic, &summary).await;
                }
                lock(&self.traffic_summary).insert((app, env), summary);
            }
        }
        Ok(())
    }

    /// SHA-256 (hex) of the environment's preview secret, for the proxy to compare remote
    /// clients' preview headers with; `None` (local clients only) if it is not set.
    pub(super) async fn preview_token(&self, app: &str, env: &str, secret: &str) -> Option<String> {
        match self.secrets.env_vars(app, env).await {
            Ok(vars) => match vars.get(secret) {
                Some(value) => Some(ferry_core::audit::sha256_hex(value.as_bytes())),
                None => {
                    tracing::debug!(%app, %env, %secret, "preview_secret is not set; the preview header works from this host only");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(%app, %env, error = %e, "cannot read the preview secret");
                None
            }
        }
    }
}

pub(super) fn preview_header(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Canary(c) => c.preview_header.clone(),
        Strategy::BlueGreen(b) => b.preview_header.clone(),
        _ => ferry_core::manifest::DEFAULT_PREVIEW_HEADER.to_string(),
    }
}

pub(super) fn preview_secret(strategy: &Strategy) -> Option<&str> {
    match strategy {
        Strategy::Canary(c) => c.preview_secret.as_deref(),
        Strategy::BlueGreen(b) => b.preview_secret.as_deref(),
        _ => None,
    }
}

pub(super) fn sticky_rule(strategy: &Strategy) -> Option<StickyRule> {
    match strategy {
        Strategy::Canary(c) => c.stickiness.as_ref().map(|s| StickyRule {
            header: s.header.clone(),
            cookie: s.cookie.clone(),
        }),
        _ => None,
    }
}
