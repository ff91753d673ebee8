//! Replicas: observing them (store + runtime), carrying out the core's start/drain actions, keeping an idle environment at its version, and the spec a replica runs with.

use std::sync::Arc;

use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentState, EventKind, ReplicaState};
use ferry_core::rollout::{Action, Observed, Patience, ServiceInput};
use ferry_runtime::{HealthSpec, ReplicaSpec};
use ferry_store::{AppRecord, DeploymentRecord, EnvState, ReplicaRecord};
use rand::RngExt;

use crate::error::ServerError;
use crate::lock;

use super::executor::Scope;
use super::steps;
use super::strategy::millis;
use super::strategy::restore_pace;
use super::{Controller, MAX_START_EXITS};

impl Controller {
    /// Keeps an idle environment at its current version: replaces lost replicas, removes
    /// anything else (e.g. the remains of a failed first deployment).
    pub(super) async fn maintain(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        services: &[ServiceInput],
        current: Option<&str>,
        now: i64,
    ) -> Result<(), ServerError> {
        let effects =
            super::steps::maintain::step(current, services, restore_pace(manifest, env), now);
        let scope = super::executor::Scope {
            app,
            manifest,
            env,
            deployment: None,
            now,
        };
        if let Err(e) = self.execute(&scope, effects).await {
            tracing::error!(app = %app.name, env, "{e}");
        }
        Ok(())
    }

    pub(super) fn observe(
        &self,
        manifest: &Manifest,
        env: &str,
        replicas: &[&ReplicaRecord],
    ) -> Vec<ServiceInput> {
        manifest
            .services
            .iter()
            .map(|(name, service)| ServiceInput {
                service: name.clone(),
                desired: manifest.replicas(name, env),
                replicas: replicas
                    .iter()
                    .filter(|r| &r.service == name)
                    .map(|r| self.observed(r))
                    .collect(),
                patience: Patience {
                    start_timeout_ms: millis(service.health.start_timeout.get()),
                    max_start_exits: MAX_START_EXITS,
                },
            })
            .collect()
    }

    pub(super) fn observed(&self, record: &ReplicaRecord) -> Observed {
        let status = self.runtime.status(&record.id);
        Observed {
            id: record.id.clone(),
            version: record.version.clone(),
            state: status
                .as_ref()
                .map(|s| s.state)
                .unwrap_or(ReplicaState::Exited),
            started_at_ms: record.created_at_ms,
            restarts: status.as_ref().map(|s| s.restarts).unwrap_or(0),
            ever_healthy: status.as_ref().is_some_and(|s| s.ever_healthy),
            draining: record.draining,
            last_output: status
                .as_ref()
                .map(|s| s.last_output.clone())
                .unwrap_or_default(),
            last_probe: status.as_ref().and_then(|s| s.last_probe.clone()),
            last_exit: status.and_then(|s| s.last_exit),
        }
    }

    /// Carries out the core's actions. [`ActError::Failed`]: the new version can't even be
    /// started; [`ActError::Infra`]: the store or the engine failed (retried next pass).
    pub(super) async fn act(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        deployment: Option<i64>,
        actions: Vec<Action>,
        now: i64,
    ) -> Result<(), ActError> {
        for action in actions {
            match action {
                Action::Start {
                    service,
                    version,
                    count,
                } => {
                    for _ in 0..count {
                        self.start_replica(app, manifest, env, &service, &version, deployment, now)
                            .await?;
                    }
                }
                Action::Drain { service, ids } => {
                    for id in ids {
                        self.store.set_replica_draining(&id, now).await?;
                        if let Some(deployment) = deployment {
                            self.event(
                                deployment,
                                EventKind::Replica,
                                &format!("{service} {}: draining", short_id(&id)),
                            )
                            .await;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_replica(
        &self,
        app: &AppRecord,
        manifest: &Manifest,
        env: &str,
        service: &str,
        version: &str,
        deployment: Option<i64>,
        now: i64,
    ) -> Result<(), ActError> {
        let port = self
            .workloads
            .free_port()
            .map_err(|e| ActError::Infra(e.into()))?;
        let record = ReplicaRecord {
            id: replica_id(&app.name, env, service, version),
            app: app.name.clone(),
            env: env.to_string(),
            service: service.to_string(),
            version: version.to_string(),
            port,
            pid: None,
            start_time: None,
            draining: false,
            deployment_id: deployment,
            created_at_ms: now,
        };
        let secrets = self
            .secrets
            .for_workloads(&app.name, env)
            .await
            .map_err(|e| match e {
                crate::secrets::EnvSecretsError::Store(e) => ActError::from(e),
                e => ActError::Failed(format!("cannot start {service}: {e}")),
            })?;
        let commit = self.release_commit(&app.name, version).await;
        // A service new since that revision has no older configuration: the latest it is.
        let pinned = self.spec_manifest(app, env, deployment).await;
        let manifest = pinned
            .as_deref()
            .filter(|pinned| pinned.services.contains_key(service))
            .unwrap_or(manifest);
        let run_as = self
            .workloads
            .run_as(manifest, env)
            .map_err(|e| ActError::Failed(format!("cannot start {service}: {e}")))?;
        self.runtime
            .configure_kubernetes(manifest, env, &secrets)
            .await
            .map_err(|e| ActError::Failed(format!("cannot start {service}: {e}")))?;
        let spec = replica_spec(app, manifest, &record, secrets, commit.as_deref(), run_as)
            .ok_or_else(|| ActError::Failed(format!("service {service} is not in the manifest")))?;
        // Persist, then act: the row exists before the process does.
        self.store.insert_replica(&record).await?;
        crate::config::record(&self.store, app, manifest, &record).await;
        if let Some(deployment) = deployment {
            self.event(
                deployment,
                EventKind::Replica,
                &format!(
                    "{service} {version} {}: starting on port {port}",
                    short_id(&record.id)
                ),
            )
            .await;
        }
        match self.runtime.start(spec).await {
            Ok(instance) => {
                if let Some(identity) = instance.process() {
                    self.store
                        .set_replica_process(&record.id, identity.pid, identity.start_time)
                        .await?;
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.store.delete_replica(&record.id).await;
                Err(if is_infrastructure(&e) {
                    ActError::Infra(e.into())
                } else {
                    ActError::Failed(format!("{service} {version}: could not start: {e}"))
                })
            }
        }
    }

    /// The manifest revision that says how traffic reaches an environment (listener, hosts,
    /// TLS, routes), when it is not the latest: the `active` deployment's once it has passed
    /// its gates, else the one that made the current version (`current_revision`). So `apply` never moves a
    /// listener; the next deployment (or `ferry redeploy`) does, on its timeline.
    pub(super) async fn edge_manifest(
        &self,
        app: &AppRecord,
        active: Option<&DeploymentRecord>,
        current_revision: Option<i64>,
    ) -> Option<Arc<Manifest>> {
        let started = active.filter(|d| {
            !matches!(
                d.state,
                DeploymentState::Pending
                    | DeploymentState::AwaitingApproval
                    | DeploymentState::Blocked
            )
        });
        let revision = started.map(|d| d.manifest_revision).or(current_revision)?;
        self.manifest_at(app, revision).await
    }

    /// The manifest an environment's replicas run with, when it is not the latest: the
    /// active deployment's revision, else the one of the deployment that made the current
    /// version (see [`Controller::spec_manifest`]), from what the pass read.
    pub(super) async fn running_manifest(
        &self,
        app: &AppRecord,
        state: &EnvState,
    ) -> Option<Arc<Manifest>> {
        let revision = state
            .active()
            .map(|d| d.manifest_revision)
            .or(state.current_revision)?;
        self.manifest_at(app, revision).await
    }

    /// How traffic would reach `env` differently under `manifest` than it does now.
    pub(super) async fn edge_changes(
        &self,
        app: &AppRecord,
        env: &str,
        manifest: &Manifest,
    ) -> Vec<String> {
        match self.spec_manifest(app, env, None).await {
            Some(serving) => ferry_core::apply::edge_changes(env, &serving, manifest),
            None => Vec::new(),
        }
    }

    /// The manifest a replica of `env` runs with, when it is not the latest: the revision of
    /// the deployment that starts it (`deployment_id`), else of the deployment that made the
    /// environment's current version. So `ferry apply` alone never changes what runs, not
    /// even for a replica replaced after a crash or re-adopted after a restart; the next
    /// deployment brings the change. `None`: the latest manifest.
    pub(super) async fn spec_manifest(
        &self,
        app: &AppRecord,
        env: &str,
        deployment_id: Option<i64>,
    ) -> Option<Arc<Manifest>> {
        let deployment_id = match deployment_id {
            Some(id) => id,
            None => {
                self.store
                    .env_current(&app.name, env)
                    .await
                    .ok()
                    .flatten()?
                    .deployment_id?
            }
        };
        let deployment = self.store.get_deployment(deployment_id).await.ok()??;
        self.manifest_at(app, deployment.manifest_revision).await
    }

    /// The app's manifest at `revision` when that is not its latest (revisions are
    /// immutable: cached). `None`: the latest is it, or that revision can't be read.
    pub(super) async fn manifest_at(
        &self,
        app: &AppRecord,
        revision: i64,
    ) -> Option<Arc<Manifest>> {
        if revision == app.revision {
            return None;
        }
        let key = (app.name.clone(), revision);
        if let Some(manifest) = lock(&self.pinned).get(&key) {
            return Some(manifest.clone());
        }
        let pinned = match self.store.get_app_at(&app.name, revision).await {
            Ok(Some(record)) => serde_json::from_str::<Manifest>(&record.manifest_json).ok(),
            _ => None,
        };
        let Some(manifest) = pinned else {
            tracing::warn!(app = %app.name, revision, "manifest revision unreadable; using the latest");
            return None;
        };
        let manifest = Arc::new(manifest);
        let mut pinned = lock(&self.pinned);
        if pinned.len() >= super::facts::PINNED_CACHE {
            // Bounded: the revisions still in use are read again as needed.
            pinned.clear();
        }
        pinned.insert(key, manifest.clone());
        Some(manifest)
    }

    // releases:
    /// The commit of a release, when it is known (for `FERRY_COMMIT`/`FERRY_RELEASE_TAG`).
    pub(super) async fn release_commit(&self, app: &str, version: &str) -> Option<String> {
        match self.store.get_release(app, version).await {
            Ok(release) => release.and_then(|r| r.data.commit),
            Err(e) => {
                tracing::error!(app, version, error = %e, "cannot read the release");
                None
            }
        }
    }
}

impl Controller {
    /// The store or the engine failed while acting for `deployment`: `Some(reason)` once it
    /// has kept failing for [`steps::retry::LIMIT`] (the deployment then fails or rolls
    /// back), `None` meanwhile (retry on the next pass); the pure step decides. Counted from
    /// the first failure as the store keeps it (`deployments.infra_failing_since_ms`): a
    /// restart grants no new window. While the store itself fails, this server remembers
    /// when it began.
    pub(super) async fn infra_failed(
        &self,
        scope: &Scope<'_>,
        deployment: &DeploymentRecord,
        error: &ServerError,
    ) -> Option<String> {
        let now = scope.now;
        let known = deployment
            .infra_failing_since_ms
            .or_else(|| lock(&self.infra_failing_since).get(&deployment.id).copied());
        let (since, first) = match known {
            Some(since) => (since, false),
            None => match self.store.infra_failing_since(deployment.id, now).await {
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(deployment = deployment.id, error = %e, "the retry window is kept in memory only");
                    (now, true)
                }
            },
        };
        lock(&self.infra_failing_since)
            .entry(deployment.id)
            .or_insert(since);
        let verdict = steps::retry::step(since, first, &error.to_string(), now);
        if let Err(e) = self.execute_logged(scope, verdict.effects).await {
            tracing::warn!(deployment = deployment.id, error = %e, "announcing the retries");
        }
        if verdict.give_up.is_some() {
            self.infra_recovered(deployment).await;
        }
        verdict.give_up
    }

    /// Acting for `deployment` worked (or its failure was judged): a later failure starts a
    /// new retry window. Writes only when a window is open.
    pub(super) async fn infra_recovered(&self, deployment: &DeploymentRecord) {
        let remembered = lock(&self.infra_failing_since)
            .remove(&deployment.id)
            .is_some();
        if (remembered || deployment.infra_failing_since_ms.is_some())
            && let Err(e) = self.store.infra_recovered(deployment.id).await
        {
            tracing::warn!(deployment = deployment.id, error = %e, "clearing the retry window");
        }
    }
}

/// Why carrying out an action failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActError {
    /// The new version cannot run (a bad command, a refused or missing image…): the
    /// deployment fails, or rolls back.
    #[error("{0}")]
    Failed(String),
    /// The store or the engine failed (a database hiccup, the engine unreachable): nothing
    /// is decided; the next pass tries again. Never rolls a healthy deployment back.
    #[error(transparent)]
    Infra(#[from] ServerError),
}

impl From<ferry_store::StoreError> for ActError {
    fn from(e: ferry_store::StoreError) -> Self {
        ActError::Infra(e.into())
    }
}

/// A runtime failure that says nothing about the version being started: the engine or the
/// host failed, so the start is retried rather than judged.
fn is_infrastructure(e: &ferry_runtime::RuntimeError) -> bool {
    use ferry_runtime::RuntimeError as E;
    matches!(
        e,
        E::Engine { .. } | E::FreePort(_) | E::LogFile { .. } | E::Identity { .. }
    )
}

/// `app.env.service.version.xxxxxx`: unique across servers (the random tail) and readable.
pub(super) fn replica_id(app: &str, env: &str, service: &str, version: &str) -> String {
    let tail: u32 = rand::rng().random();
    let safe_version: String = version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{app}.{env}.{service}.{safe_version}.{:06x}",
        tail & 0xff_ffff
    )
}

/// The random tail of a replica id: enough to tell replicas apart in a timeline.
pub(super) fn short_id(id: &str) -> String {
    format!("#{}", id.rsplit('.').next().unwrap_or(id))
}

/// What the runtime needs to run (or re-adopt) the replica of `record`.
pub(super) fn replica_spec(
    app: &AppRecord,
    manifest: &Manifest,
    record: &ReplicaRecord,
    secrets: crate::runtimes::EnvSecrets,
    commit: Option<&str>,
    run_as: Option<ferry_runtime::RunAs>,
) -> Option<ReplicaSpec> {
    let service = manifest.services.get(&record.service)?;
    manifest.environments.get(&record.env)?;
    let cwd = crate::config::cwd_of(app, service);
    // Kept out of the replica's log (every value it is given).
    let redact: Vec<String> = secrets.vars.values().cloned().collect();
    // runtime: a container in a `runtime: docker` environment (registry credentials for
    // the pull only, never in its environment).
    let container = crate::runtimes::container_spec(
        manifest,
        &record.env,
        &record.service,
        &record.version,
        secrets.registry.as_ref(),
    )
    .map(|mut container| {
        if let Some(deployment) = record.deployment_id {
            container
                .labels
                .insert("ferry.deployment".into(), deployment.to_string());
        }
        container
    });
    // Layered, templated variables; secrets win over all of them.
    let mut env_vars = crate::config::replica_env(
        manifest,
        &record.env,
        &record.service,
        &record.version,
        secrets.vars,
    );
    env_vars.insert("FERRY_REPLICA_ID".to_string(), record.id.clone());
    // releases: the release's identity, when its commit is known
    if let Some(commit) = commit {
        env_vars.insert("FERRY_COMMIT".to_string(), commit.to_string());
        if let Some(tag) = ferry_core::release::tag(&record.version, Some(commit), &record.env) {
            env_vars.insert("FERRY_RELEASE_TAG".to_string(), tag);
        }
    }
    let health = &service.health;
    Some(ReplicaSpec {
        id: record.id.clone(),
        app: record.app.clone(),
        env: record.env.clone(),
        service: record.service.clone(),
        version: record.version.clone(),
        argv: service.run.clone(),
        cwd,
        env_vars,
        run_as,
        redact,
        port: record.port,
        health: HealthSpec {
            path: health.path.clone(),
            interval: health.interval.get(),
            timeout: health.timeout.get(),
            healthy_threshold: health.healthy_threshold,
            unhealthy_threshold: health.unhealthy_threshold,
        },
        stop_timeout: service.stop_timeout.get(),
        container,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_unique_and_readable() {
        let a = replica_id("shop", "prod", "api", "1.2.3+build");
        let b = replica_id("shop", "prod", "api", "1.2.3+build");
        assert_ne!(a, b);
        assert!(a.starts_with("shop.prod.api.1.2.3_build."), "{a}");
        assert_eq!(short_id(&a).len(), 7);
    }

    /// The registry credentials are for the pull (`EnvSecrets`, shared with hooks and gate
    /// checks): no replica of any runtime sees them (a process replica got them before);
    /// its other secrets it does, and a container is pulled with them.
    #[test]
    fn a_replica_gets_its_secrets_but_never_the_registry_credentials() {
        for runtime in ["docker", "process"] {
            let yaml = format!(
                r#"app: shop
services:
  web:
    image: registry.example.com/shop/web:${{VERSION}}
    run: ["./web"]
    replicas: 1
environments:
  production:
    listen: 127.0.0.1:18080
    runtime: {runtime}
"#
            );
            let manifest = ferry_core::manifest::parse(&yaml, "ferry.yaml").expect("manifest");
            let app = AppRecord {
                name: "shop".into(),
                revision: 1,
                yaml: yaml.clone(),
                manifest_json: String::new(),
                base_dir: None,
                updated_at_ms: 0,
            };
            let record = ReplicaRecord {
                id: replica_id("shop", "production", "web", "1.0"),
                app: "shop".into(),
                env: "production".into(),
                service: "web".into(),
                version: "1.0".into(),
                port: 18081,
                pid: None,
                start_time: None,
                draining: false,
                deployment_id: Some(7),
                created_at_ms: 0,
            };
            let secrets = crate::runtimes::EnvSecrets::split(
                [
                    (crate::runtimes::REGISTRY_USERNAME, "puller"),
                    (crate::runtimes::REGISTRY_PASSWORD, "pull-secret"),
                    ("DB_PASSWORD", "db-secret"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            let spec = replica_spec(&app, &manifest, &record, secrets, None, None).expect("spec");
            let auth = spec.container.as_ref().map(|c| {
                let auth = c.registry_auth.as_ref().expect("the pull's credentials");
                (auth.username.as_str(), auth.password.as_str())
            });
            let expected = (runtime == "docker").then_some(("puller", "pull-secret"));
            assert_eq!(auth, expected, "{runtime}");
            assert_eq!(
                spec.env_vars.get("DB_PASSWORD").map(String::as_str),
                Some("db-secret"),
                "{runtime}"
            );
            assert!(
                !spec
                    .env_vars
                    .iter()
                    .any(|(k, v)| k.starts_with("FERRY_REGISTRY") || v.contains("pull")),
                "{runtime}: {:?}",
                spec.env_vars.keys()
            );
        }
    }
}
