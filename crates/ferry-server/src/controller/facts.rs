//! What a pass reads once for every environment, instead of once per environment: the apps
//! with their manifests (read and parsed once per revision) and every environment's state
//! (`Store::env_states`: newest deployment, current version and its manifest revision).
//! `pass_cost.rs` counts what a pass costs and guards it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_core::manifest::Manifest;
use ferry_store::{AppRevision, EnvState};

use crate::error::ServerError;
use crate::lock;

use super::{Apps, Controller};

/// Every environment's state as a pass read it, by (app, env).
pub(super) type EnvStates = BTreeMap<(String, String), EnvState>;

/// An environment with no deployment that runs or ever succeeded.
static NOTHING: EnvState = EnvState {
    latest: None,
    current: None,
    current_revision: None,
};

/// The state of `app`/`env` in `states` (nothing known: [`NOTHING`]).
pub(super) fn env_state<'a>(states: &'a EnvStates, app: &str, env: &str) -> &'a EnvState {
    states
        .get(&(app.to_string(), env.to_string()))
        .unwrap_or(&NOTHING)
}

/// At most this many older manifest revisions stay parsed (`Controller::manifest_at`).
pub(super) const PINNED_CACHE: usize = 256;

impl Controller {
    /// Every app with its latest manifest. A pass reads only the apps' revisions; an app's
    /// manifest is read and parsed again only when its revision changed.
    pub(crate) async fn apps(&self) -> Result<Apps, ServerError> {
        let revisions = self.store.app_revisions().await?;
        let stale: Vec<String> = {
            let parsed = lock(&self.parsed);
            revisions
                .iter()
                .filter(|(name, revision)| {
                    parsed
                        .get(*name)
                        .is_none_or(|(record, _)| AppRevision::of(record) != **revision)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        let mut fresh = Vec::new();
        for name in stale {
            let Some(record) = self.store.get_app(&name).await? else {
                continue;
            };
            match serde_json::from_str::<Manifest>(&record.manifest_json) {
                Ok(manifest) => fresh.push((record, Arc::new(manifest))),
                Err(e) => {
                    tracing::error!(app = %record.name, error = %e, "stored manifest is unreadable")
                }
            }
        }
        let mut parsed = lock(&self.parsed);
        let mut restarted: Vec<String> = parsed
            .keys()
            .filter(|name| !revisions.contains_key(*name))
            .cloned()
            .collect();
        for (record, manifest) in fresh {
            // Deleted and applied again: its revisions start over, so the older revisions
            // cached under its name are another app's.
            if parsed
                .get(&record.name)
                .is_some_and(|(old, _)| old.revision >= record.revision)
            {
                restarted.push(record.name.clone());
            }
            parsed.insert(record.name.clone(), (record, manifest));
        }
        parsed.retain(|name, _| revisions.contains_key(name));
        if !restarted.is_empty() {
            lock(&self.pinned).retain(|(app, _), _| !restarted.contains(app));
        }
        Ok(parsed
            .iter()
            .map(|(name, (record, manifest))| (name.clone(), (record.clone(), manifest.clone())))
            .collect())
    }
}
