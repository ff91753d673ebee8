//! The route table pushed to the proxy, the shell: reads what `steps::routes` needs (the
//! running deployments, each environment's serving manifest, replicas with their status and
//! endpoints, preview secrets, the acknowledged table), asks it per environment, sets a
//! `traffic: gateway` split on the cluster, then pushes through `proxy_link::DataPlane` and
//! writes the traffic lines.

use ferry_core::manifest::kubernetes::Kubernetes;
use ferry_core::model::EventKind;
use ferry_core::rollout::ServiceInput;
use ferry_store::ReplicaRecord;

use crate::error::ServerError;
use crate::lock;

use super::Controller;
use super::facts::{EnvStates, env_state};
use super::steps::routes::{self as decide, Replica, Site, SitePlan};

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
        let desired: Vec<(&str, u32)> = services
            .iter()
            .map(|s| (s.service.as_str(), s.desired))
            .collect();
        decide::routed_only_to(
            self.proxy.acknowledged().as_ref(),
            app,
            env,
            version,
            &desired,
        )
    }

    pub(super) async fn push_routes(
        &self,
        apps: &crate::controller::Apps,
        replicas: &[ReplicaRecord],
        states: &EnvStates,
    ) -> Result<(), ServerError> {
        let acknowledged = self.proxy.acknowledged();
        let mut listeners = Vec::new();
        let mut summaries = Vec::new();
        // Environments served by proxy pods, by the manifest they are routed by.
        let mut fleets = Vec::new();
        for (app, manifest) in apps.values() {
            for (env_name, _) in manifest.environments.iter() {
                let state = env_state(states, &app.name, env_name);
                let deployment = state.active();
                // apply: the listener, hosts, TLS and routes are those of the manifest
                // revision the environment is deployed with (a deployment's once it has
                // passed its gates), never a bare apply's.
                let serving = self
                    .edge_manifest(app, deployment, state.current_revision)
                    .await;
                let edge = serving.clone().unwrap_or_else(|| manifest.clone());
                if Kubernetes::proxy_fleet_of(&edge, env_name).is_some() {
                    fleets.push((edge, env_name.to_string()));
                }
                let observed: Vec<Replica> = replicas
                    .iter()
                    .filter(|r| r.app == app.name && r.env == env_name)
                    .map(|r| Replica {
                        service: r.service.clone(),
                        observed: self.observed(r),
                        endpoint: self.runtime.endpoint(&r.id),
                    })
                    .collect();
                let preview_token = match decide::preview_secret(manifest, env_name, deployment) {
                    Some(secret) => self.preview_token(&app.name, env_name, secret).await,
                    None => None,
                };
                let plan = decide::site(&Site {
                    app: &app.name,
                    env: env_name,
                    manifest,
                    serving: serving.as_deref(),
                    deployment,
                    replicas: &observed,
                    preview_token: preview_token.as_deref(),
                });
                let kept = || decide::listeners_of(acknowledged.as_ref(), &app.name, env_name);
                match plan {
                    SitePlan::Unlisted => {}
                    SitePlan::Keep(error) => {
                        tracing::error!(app = %app.name, env = env_name, %error, "route table of this environment kept as it is");
                        listeners.extend(kept());
                    }
                    SitePlan::Routes {
                        listeners: site,
                        gateway,
                        summary,
                    } => {
                        // `traffic: gateway`: the same split goes onto the cluster's
                        // HTTPRoute. Until the cluster has it, the proxy keeps the old one
                        // too, so that nothing waiting on the table (drains, steps) moves on.
                        if let Some(split) = gateway
                            && let Err(e) = self
                                .runtime
                                .route_gateway(
                                    &app.name,
                                    env_name,
                                    deployment.map(|d| d.version.as_str()),
                                    &split,
                                )
                                .await
                        {
                            tracing::warn!(app = %app.name, env = env_name, error = %e, "gateway route not set; retrying");
                            listeners.extend(kept());
                            continue;
                        }
                        listeners.extend(site);
                        summaries.push((app.name.clone(), env_name.to_string(), summary));
                    }
                }
            }
        }
        // Before the push: the table's split must know every fleet environment, even one
        // whose pods do not exist yet (its listeners never go to the local proxy).
        let fleets: Vec<(&ferry_core::manifest::Manifest, &str)> = fleets
            .iter()
            .map(|(m, env)| (m.as_ref(), env.as_str()))
            .collect();
        self.runtime.serve_fleets(&fleets).await;
        let announced = lock(&self.traffic_summary).clone();
        let push = decide::push(acknowledged.as_ref(), listeners, &announced, summaries);
        let Some(table) = push.table else {
            return Ok(());
        };
        if self.proxy.push(table).await? {
            // Decisions wait on the acknowledged table: take the next pass right away.
            self.wake.notify_one();
            for (app, env, summary) in push.lines {
                if let Some(active) = env_state(states, &app, &env).active() {
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
