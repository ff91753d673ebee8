//! Layered configuration in the server: the environment a replica starts with, the digest
//! it is recorded with, what a redeploy must replace, and `GET .../config`.
//!
//! The decisions are `ferry_core::config`'s; this is the shell around them (store reads,
//! secrets, the HTTP handler).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use ferry_core::config::{
    self, ConfigSummary, EffectiveVar, EnvConfig, ReplicaConfigState, SecretRef, ServiceConfig,
    Source,
};
use ferry_core::manifest::{Manifest, Service};
use ferry_core::rollout::ServiceInput;
use ferry_store::{AppRecord, ReplicaRecord, SecretInfo, Store, StoreError};
use serde::Deserialize;

use crate::api::{ApiFailure, ApiResult, AppState};

/// Suffix given to the version of replicas a redeploy must replace, so that the unchanged
/// reconciler sees them as "another version".
pub const STALE_SUFFIX: &str = "~stale";
/// Suffix given, while a failed redeploy rolls back, to its new replicas that are not ready.
pub const NEW_SUFFIX: &str = "~new";

/// Working directory of a service's replicas: `cwd` relative to the manifest's directory.
pub fn cwd_of(app: &AppRecord, service: &Service) -> Option<PathBuf> {
    let base_dir = app.base_dir.as_ref().map(PathBuf::from);
    match (&base_dir, &service.cwd) {
        (Some(base), Some(cwd)) => Some(base.join(cwd)),
        (None, Some(cwd)) => Some(PathBuf::from(cwd)),
        (base, None) => base.clone(),
    }
}

/// The environment variables (besides the runtime's own `PORT`, `VERSION`, `FERRY_*`) a
/// replica of `service` in `env` starts with: the layered, templated manifest variables,
/// then the secrets. A template that no longer resolves (a manifest stored before
/// templating existed) keeps its literal value.
pub fn replica_env(
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
    secrets: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let (vars, errors) = config::resolve(manifest, env, service, version);
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    if !errors.is_empty() {
        tracing::warn!(env, service, error = %errors[0], "a stored template does not resolve; using its literal value");
        out.extend(manifest.vars.clone());
        if let Some(s) = manifest.services.get(service) {
            out.extend(s.env.clone());
        }
        if let Some(e) = manifest.environments.get(env) {
            out.extend(e.vars.clone());
        }
    }
    for v in vars {
        if v.source != Source::Builtin {
            out.insert(v.name, v.value);
        }
    }
    // Secrets win over everything else.
    out.extend(secrets);
    out
}

pub fn secret_refs(infos: &[SecretInfo]) -> Vec<SecretRef> {
    infos
        .iter()
        .map(|s| SecretRef {
            name: s.name.clone(),
            version: s.version,
            fingerprint: s.fingerprint.clone(),
        })
        .collect()
}

/// The configuration a new replica of `service` would get now.
pub fn desired_summary(
    app: &AppRecord,
    manifest: &Manifest,
    env: &str,
    service: &str,
    version: &str,
    secrets: &[SecretRef],
) -> Option<ConfigSummary> {
    let svc = manifest.services.get(service)?;
    let (vars, _) = config::resolve(manifest, env, service, version);
    let cwd = cwd_of(app, svc).map(|p| p.display().to_string());
    Some(config::summarize(&vars, secrets, &svc.run, cwd.as_deref()))
}

/// Records the configuration a replica starts with (its row exists already). A failure is
/// only logged: an unrecorded configuration counts as out of date, which is safe.
pub async fn record(store: &Store, app: &AppRecord, manifest: &Manifest, replica: &ReplicaRecord) {
    let secrets = match store.list_secrets(&replica.app, &replica.env).await {
        Ok(s) => secret_refs(&s),
        Err(e) => {
            tracing::error!(replica = %replica.id, error = %e, "cannot read secret versions");
            return;
        }
    };
    let Some(summary) = desired_summary(
        app,
        manifest,
        &replica.env,
        &replica.service,
        &replica.version,
        &secrets,
    ) else {
        return;
    };
    let json = serde_json::to_string(&summary).unwrap_or_default();
    if let Err(e) = store
        .set_replica_config(&replica.id, &summary.digest(), &json)
        .await
    {
        tracing::error!(replica = %replica.id, error = %e, "cannot record the replica's configuration");
    }
}

/// What a redeploy of `version` has to do in one environment, recomputed on every pass.
#[derive(Debug, Default)]
pub struct Redeploy {
    /// Replicas of `version` whose configuration differs from what a new one would get.
    pub stale: HashSet<String>,
    /// Replicas of `version` already running the desired configuration.
    pub fresh: HashSet<String>,
    /// What differs, by name only (`DB_HOST`, `secret API_KEY v2 → v3`).
    pub changes: Vec<String>,
    /// Replica counts to reach (`api 2 → 3 replicas`, `ferry_core::apply::scale_changes`).
    pub scale: Vec<String>,
    /// How traffic reaches the environment changes (`listener 127.0.0.1:8080 →
    /// 127.0.0.1:8081`, `ferry_core::apply::edge_changes`): it moves when the redeploy
    /// has passed its gates.
    pub edge: Vec<String>,
}

impl Redeploy {
    /// Nothing to replace, to scale nor to move.
    pub fn is_empty(&self) -> bool {
        self.stale.is_empty() && self.scale.is_empty() && self.edge.is_empty()
    }

    /// What the redeploy does, for its timeline.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.stale.is_empty() {
            parts.push(format!("config changed: {}", self.changes.join(", ")));
        }
        if !self.scale.is_empty() {
            parts.push(format!("scale: {}", self.scale.join(", ")));
        }
        if !self.edge.is_empty() {
            parts.push(format!("traffic: {}", self.edge.join(", ")));
        }
        parts.join("; ")
    }
}

pub async fn redeploy_state(
    store: &Store,
    app: &AppRecord,
    manifest: &Manifest,
    env: &str,
    version: &str,
) -> Result<Redeploy, StoreError> {
    let secrets = secret_refs(&store.list_secrets(&app.name, env).await?);
    let configs: BTreeMap<String, (Option<String>, Option<String>)> = store
        .replica_configs(&app.name, env)
        .await?
        .into_iter()
        .map(|c| (c.id, (c.digest, c.summary)))
        .collect();
    let mut desired: BTreeMap<String, Option<ConfigSummary>> = BTreeMap::new();
    let mut out = Redeploy::default();
    for replica in store.list_replicas(Some(&app.name), Some(env)).await? {
        if replica.version != version || replica.draining {
            continue;
        }
        let want = desired
            .entry(replica.service.clone())
            .or_insert_with(|| {
                desired_summary(app, manifest, env, &replica.service, version, &secrets)
            })
            .clone();
        let Some(want) = want else { continue };
        let (digest, summary) = configs.get(&replica.id).cloned().unwrap_or_default();
        if digest.as_deref() == Some(want.digest().as_str()) {
            out.fresh.insert(replica.id);
            continue;
        }
        let changes = match summary.and_then(|s| serde_json::from_str::<ConfigSummary>(&s).ok()) {
            Some(old) => want.changes_from(&old),
            None => vec!["configuration not recorded".to_string()],
        };
        for change in changes {
            if !out.changes.contains(&change) {
                out.changes.push(change);
            }
        }
        out.stale.insert(replica.id);
    }
    Ok(out)
}

/// Maps observed versions to rollout keys for a redeploy, so the reconciler replaces what
/// is out of date at the environment's pace: while progressing, out-of-date replicas become
/// `VERSION~stale` (an "old version"); while rolling back, new replicas that are not ready
/// become `VERSION~new` (and are drained) and everything else is kept.
pub fn mark(services: &mut [ServiceInput], version: &str, plan: &Redeploy, rolling_back: bool) {
    for service in services {
        for r in &mut service.replicas {
            if r.version != version {
                continue;
            }
            if rolling_back {
                let ready = r.state == ferry_core::model::ReplicaState::Healthy;
                if plan.fresh.contains(&r.id) && !ready {
                    r.version = format!("{version}{NEW_SUFFIX}");
                }
            } else if plan.stale.contains(&r.id) {
                r.version = format!("{version}{STALE_SUFFIX}");
            }
        }
    }
}

#[derive(Deserialize)]
pub struct ConfigQuery {
    service: Option<String>,
}

/// `GET /v1/apps/{app}/envs/{env}/config[?service=S]`: the effective variables of each
/// service with their sources, the secrets by name/version/fingerprint (never a value),
/// and which replicas run with an out-of-date configuration.
pub async fn get_config(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(query): Query<ConfigQuery>,
) -> ApiResult<Json<EnvConfig>> {
    let record = state.store.get_app(&app).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app:?} not found; apply its manifest first"),
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&record.manifest_json).map_err(crate::api::internal)?;
    if manifest.environments.get(&env).is_none() {
        let known: Vec<&str> = manifest.environments.keys().collect();
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "app {app} has no environment {env:?} (it has: {})",
                known.join(", ")
            ),
        ));
    }
    if let Some(s) = &query.service
        && !manifest.services.contains_key(s)
    {
        let known: Vec<&str> = manifest.services.keys().map(String::as_str).collect();
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "app {app} has no service {s:?} (it has: {})",
                known.join(", ")
            ),
        ));
    }
    let version = state
        .store
        .env_current(&app, &env)
        .await?
        .and_then(|e| e.current_version);
    let shown_version = version.clone().unwrap_or_else(|| "(none)".to_string());
    let secrets = secret_refs(&state.store.list_secrets(&app, &env).await?);
    let configs: BTreeMap<String, Option<String>> = state
        .store
        .replica_configs(&app, &env)
        .await?
        .into_iter()
        .map(|c| (c.id, c.digest))
        .collect();
    let replicas = state.store.list_replicas(Some(&app), Some(&env)).await?;
    let mut services = Vec::new();
    for name in manifest.services.keys() {
        if query.service.as_ref().is_some_and(|s| s != name) {
            continue;
        }
        let (vars, errors) = config::resolve(&manifest, &env, name, &shown_version);
        let vars: Vec<EffectiveVar> = config::with_secrets(vars, &secrets);
        let digest = desired_summary(&record, &manifest, &env, name, &shown_version, &secrets)
            .map(|s| s.digest())
            .unwrap_or_default();
        let replica_states = replicas
            .iter()
            .filter(|r| &r.service == name && !r.draining)
            .map(|r| {
                // A replica of another version is compared with what that version would get.
                let want = if r.version == shown_version {
                    digest.clone()
                } else {
                    desired_summary(&record, &manifest, &env, name, &r.version, &secrets)
                        .map(|s| s.digest())
                        .unwrap_or_default()
                };
                ReplicaConfigState {
                    id: r.id.clone(),
                    version: r.version.clone(),
                    up_to_date: configs.get(&r.id).cloned().flatten().as_deref()
                        == Some(want.as_str()),
                }
            })
            .collect();
        services.push(ServiceConfig {
            service: name.clone(),
            vars,
            secrets: secrets.clone(),
            digest,
            errors: errors.iter().map(|e| e.to_string()).collect(),
            replicas: replica_states,
        });
    }
    Ok(Json(EnvConfig {
        app,
        env,
        version,
        services,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::model::ReplicaState;
    use ferry_core::rollout::{self, Action, Observed, Pace, Patience, Verdict};

    fn replica(id: &str, state: ReplicaState) -> Observed {
        Observed {
            id: id.to_string(),
            version: "1.0.0".to_string(),
            state,
            started_at_ms: 0,
            restarts: 0,
            ever_healthy: state == ReplicaState::Healthy,
            draining: false,
            last_exit: None,
            last_output: Vec::new(),
            last_probe: None,
        }
    }

    fn service(replicas: Vec<Observed>) -> ServiceInput {
        ServiceInput {
            service: "web".to_string(),
            desired: 2,
            replicas,
            patience: Patience {
                start_timeout_ms: 30_000,
                max_start_exits: 3,
            },
        }
    }

    fn plan(stale: &[&str], fresh: &[&str]) -> Redeploy {
        Redeploy {
            stale: stale.iter().map(|s| s.to_string()).collect(),
            fresh: fresh.iter().map(|s| s.to_string()).collect(),
            changes: vec![],
            scale: vec![],
            edge: vec![],
        }
    }

    const PACE: Pace = Pace::Rolling {
        max_surge: 1,
        max_unavailable: 0,
    };

    /// The unchanged reconciler, fed stale replicas as another version, replaces them one
    /// at a time without ever going below the desired count of ready replicas.
    #[test]
    fn stale_replicas_are_replaced_at_the_rolling_pace() {
        use ReplicaState::*;
        // Nothing started yet: one new replica of the same version.
        let mut s = vec![service(vec![replica("a", Healthy), replica("b", Healthy)])];
        mark(&mut s, "1.0.0", &plan(&["a", "b"], &[]), false);
        assert_eq!(s[0].replicas[0].version, "1.0.0~stale");
        assert_eq!(
            rollout::reconcile("1.0.0", &s, PACE, 1),
            Verdict::Progress(vec![Action::Start {
                service: "web".into(),
                version: "1.0.0".into(),
                count: 1
            }])
        );
        // The new one is healthy: one stale replica is drained.
        let mut s = vec![service(vec![
            replica("a", Healthy),
            replica("b", Healthy),
            replica("c", Healthy),
        ])];
        mark(&mut s, "1.0.0", &plan(&["a", "b"], &["c"]), false);
        match rollout::reconcile("1.0.0", &s, PACE, 1) {
            Verdict::Progress(actions) => assert!(
                actions.iter().any(|a| matches!(a, Action::Drain { ids, .. } if ids.len() == 1 && (ids[0] == "a" || ids[0] == "b"))),
                "{actions:?}"
            ),
            other => panic!("{other:?}"),
        }
        // All fresh and healthy: converged.
        let mut s = vec![service(vec![replica("c", Healthy), replica("d", Healthy)])];
        mark(&mut s, "1.0.0", &plan(&[], &["c", "d"]), false);
        assert_eq!(rollout::reconcile("1.0.0", &s, PACE, 1), Verdict::Converged);
    }

    /// Rolling back a redeploy drains the new replicas that are not ready and keeps the
    /// ones that serve (old configuration, or new and healthy).
    #[test]
    fn rolling_back_drains_unready_new_replicas_only() {
        use ReplicaState::*;
        let mut s = vec![service(vec![
            replica("a", Healthy),
            replica("b", Healthy),
            replica("c", Starting),
        ])];
        mark(&mut s, "1.0.0", &plan(&["a", "b"], &["c"]), true);
        assert_eq!(s[0].replicas[0].version, "1.0.0");
        assert_eq!(s[0].replicas[2].version, "1.0.0~new");
        assert_eq!(
            rollout::reconcile(
                "1.0.0",
                &s,
                Pace::Rolling {
                    max_surge: 2,
                    max_unavailable: 0
                },
                1
            ),
            Verdict::Progress(vec![Action::Drain {
                service: "web".into(),
                ids: vec!["c".into()]
            }])
        );
    }

    #[test]
    fn other_versions_are_left_alone() {
        let mut s = vec![service(vec![Observed {
            version: "0.9.0".into(),
            ..replica("z", ReplicaState::Healthy)
        }])];
        mark(&mut s, "1.0.0", &plan(&["z"], &[]), false);
        assert_eq!(s[0].replicas[0].version, "0.9.0");
    }

    #[test]
    fn replica_env_layers_templates_and_secrets() {
        let m = ferry_core::manifest::parse(
            r#"app: shop
vars: { HOST: db, SHARED: app }
services:
  web:
    run: ["./web"]
    env: { URL: "pg://${HOST}/${FERRY_ENV}", SHARED: service, TOKEN: visible }
environments:
  prod: { listen: 127.0.0.1:8080, vars: { HOST: prod-db } }
"#,
            "ferry.yaml",
        )
        .unwrap();
        let secrets = BTreeMap::from([("TOKEN".to_string(), "s3cr3t".to_string())]);
        let env = replica_env(&m, "prod", "web", "1.0.0", secrets);
        assert_eq!(env["URL"], "pg://prod-db/prod");
        assert_eq!(env["SHARED"], "service");
        assert_eq!(env["HOST"], "prod-db");
        assert_eq!(env["TOKEN"], "s3cr3t", "secrets win");
        assert!(
            !env.contains_key("VERSION"),
            "the runtime sets the built-ins"
        );
    }

    #[test]
    fn a_template_that_no_longer_resolves_keeps_its_literal_value() {
        let mut m = ferry_core::manifest::parse(
            "app: shop\nservices:\n  web: { run: [\"./web\"] }\nenvironments:\n  prod: { listen: 127.0.0.1:8080 }\n",
            "ferry.yaml",
        )
        .unwrap();
        // As stored before templates were checked.
        m.services
            .get_mut("web")
            .unwrap()
            .env
            .insert("OLD".into(), "${NOT_DEFINED}".into());
        let env = replica_env(&m, "prod", "web", "1", BTreeMap::new());
        assert_eq!(env["OLD"], "${NOT_DEFINED}");
    }
}
