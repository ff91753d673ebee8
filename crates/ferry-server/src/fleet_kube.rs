//! A `traffic: proxy` Kubernetes environment's proxy pods as a [`PodSource`]: the fleet's
//! objects applied (no write when unchanged, read again every [`REAPPLY`]), the ready pods
//! from the EndpointSlices of the headless `ferry-proxy-admin` Service, the table saved in
//! the `ferry-proxy-routes` ConfigMap, the admin token in the `ferry-proxy-admin` Secret
//! (made once, kept across server restarts); [`KubePods::remove`] deletes them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_core::manifest::Manifest;
use ferry_k8s::client::Cluster;
use ferry_k8s::{objects, proxy};
use ferry_runtime::BoxFuture;

use crate::error::ServerError;
use crate::fleet::{PodSource, ProxyPod};
use crate::lock;

/// How often the fleet's objects are compared with the cluster's even when unchanged.
const REAPPLY: Duration = Duration::from_secs(60);

fn kube_error(what: &str, e: impl std::fmt::Display) -> ServerError {
    ServerError::Proxy(format!("{what}: {e}"))
}

pub struct KubePods {
    cluster: Cluster,
    env: String,
    manifest: Mutex<Manifest>,
    default_image: String,
    /// Where the server's own pods run (the NetworkPolicy admits them to the admin port).
    server_namespace: String,
    token: tokio::sync::OnceCell<String>,
    /// What was applied last (the objects as JSON) and when.
    applied: Mutex<Option<(String, Instant)>>,
}

impl KubePods {
    pub fn new(
        cluster: Cluster,
        manifest: &Manifest,
        env: &str,
        default_image: String,
        server_namespace: String,
    ) -> Self {
        KubePods {
            cluster,
            env: env.to_string(),
            manifest: Mutex::new(manifest.clone()),
            default_image,
            server_namespace,
            token: tokio::sync::OnceCell::new(),
            applied: Mutex::new(None),
        }
    }

    /// The manifest the objects are built from (a new `kubernetes.proxy`, say).
    pub fn set_manifest(&self, manifest: &Manifest) {
        *lock(&self.manifest) = manifest.clone();
    }

    fn manifest(&self) -> Manifest {
        lock(&self.manifest).clone()
    }

    fn namespace(&self) -> String {
        objects::namespace_name(&self.manifest(), &self.env)
    }

    /// Deletes the fleet's objects (those Ferry's labels say are this environment's proxy:
    /// `Cluster::delete_proxy`); how many deletes were sent.
    pub async fn remove(&self) -> Result<usize, ServerError> {
        let label = proxy::proxy_label(&self.manifest(), &self.env);
        let deleted = self
            .cluster
            .delete_proxy(&self.namespace(), &label)
            .await
            .map_err(|e| kube_error("deleting the proxy pods", e))?;
        *lock(&self.applied) = None;
        Ok(deleted)
    }

    async fn ensure_applied(&self) -> Result<(), ServerError> {
        let manifest = self.manifest();
        let fleet = proxy::proxy_objects(
            &manifest,
            &self.env,
            &self.default_image,
            &self.server_namespace,
        )
        .map_err(|e| kube_error("the proxy pods' objects", e))?;
        let key = serde_json::Value::Array(fleet.to_values()).to_string();
        if lock(&self.applied)
            .as_ref()
            .is_some_and(|(applied, at)| *applied == key && at.elapsed() < REAPPLY)
        {
            return Ok(());
        }
        let token = self.admin_token().await?;
        self.cluster
            .apply_proxy(
                &objects::namespace(&manifest, &self.env),
                &proxy::admin_secret(&manifest, &self.env, &token),
                &fleet,
            )
            .await
            .map_err(|e| kube_error("applying the proxy pods", e))?;
        *lock(&self.applied) = Some((key, Instant::now()));
        Ok(())
    }

    async fn admin_token(&self) -> Result<String, ServerError> {
        self.token
            .get_or_try_init(|| async {
                let namespace = self.namespace();
                let existing = self
                    .cluster
                    .secret_value(&namespace, proxy::ADMIN_SECRET, proxy::TOKEN_KEY)
                    .await
                    .map_err(|e| kube_error("reading the proxy pods' token", e))?;
                if let Some(token) = existing.filter(|t| !t.trim().is_empty()) {
                    return Ok(token.trim().to_string());
                }
                let token = crate::auth::hex(&rand::random::<[u8; 32]>());
                let manifest = self.manifest();
                let made = async {
                    self.cluster
                        .apply_namespace(&objects::namespace(&manifest, &self.env))
                        .await?;
                    self.cluster
                        .apply_secret(&proxy::admin_secret(&manifest, &self.env, &token))
                        .await
                };
                made.await
                    .map_err(|e| kube_error("writing the proxy pods' token", e))?;
                Ok(token)
            })
            .await
            .cloned()
    }
}

impl PodSource for KubePods {
    fn pods(&self) -> BoxFuture<'_, Result<Vec<ProxyPod>, ServerError>> {
        Box::pin(async move {
            self.ensure_applied().await?;
            let pods = self
                .cluster
                .ready_endpoints(
                    &self.namespace(),
                    proxy::ADMIN_SERVICE,
                    proxy::ADMIN_PORT_NAME,
                )
                .await
                .map_err(|e| kube_error("finding the proxy pods", e))?;
            Ok(pods
                .into_iter()
                .map(|(name, admin)| ProxyPod { name, admin })
                .collect())
        })
    }

    fn publish(&self, routes_json: String) -> BoxFuture<'_, Result<(), ServerError>> {
        Box::pin(async move {
            let map = proxy::routes_config_map(&self.manifest(), &self.env, &routes_json);
            self.cluster
                .apply_config_map(&map)
                .await
                .map_err(|e| kube_error("saving the route table for the proxy pods", e))?;
            Ok(())
        })
    }

    fn token(&self) -> BoxFuture<'_, Result<String, ServerError>> {
        Box::pin(self.admin_token())
    }
}
