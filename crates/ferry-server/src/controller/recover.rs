//! Re-adoption after a restart: what a previous server left running is adopted or stopped.

use std::collections::HashSet;

use ferry_runtime::ProcessIdentity;

use crate::error::ServerError;
use crate::lock;

use super::replicas::replica_spec;
use super::{Controller, SETTLE_TIMEOUT_MS};

impl Controller {
    /// Re-adopts the replicas a previous server left running; stops what it can't vouch for.
    pub async fn recover(&self) -> Result<(), ServerError> {
        // hooks: attempts the previous server left running are interrupted, never re-adopted.
        self.hooks.recover().await?;
        let apps = self.apps().await?;
        let mut adopted = HashSet::new();
        for record in self.store.list_replicas(None, None).await? {
            // An adopted process keeps the environment it started with; these are for the
            // runtime's restarts of it.
            let secrets = self
                .secrets
                .for_workloads(&record.app, &record.env)
                .await
                .unwrap_or_else(|e| {
                    tracing::error!(replica = %record.id, error = %e, "cannot decrypt its secrets");
                    Default::default()
                });
            let commit = self.release_commit(&record.app, &record.version).await;
            let spec = match apps.get(&record.app) {
                Some((app, latest)) => {
                    let pinned = self
                        .spec_manifest(app, &record.env, record.deployment_id)
                        .await;
                    let manifest = pinned.as_deref().unwrap_or(latest);
                    if let Err(e) = self
                        .runtime
                        .configure_kubernetes(manifest, &record.env, &secrets)
                        .await
                    {
                        tracing::error!(replica = %record.id, error = %e, "cannot reach its cluster");
                    }
                    // A restart of an adopted replica runs as its environment says; never
                    // as the server's user because the lookup failed.
                    match self.workloads.run_as(manifest, &record.env) {
                        Ok(run_as) => replica_spec(
                            app,
                            manifest,
                            &record,
                            secrets.clone(),
                            commit.as_deref(),
                            run_as.clone(),
                        )
                        .or_else(|| {
                            replica_spec(app, latest, &record, secrets, commit.as_deref(), run_as)
                        }),
                        Err(e) => {
                            tracing::error!(replica = %record.id, error = %e, "cannot resolve the user it runs as");
                            None
                        }
                    }
                }
                None => None,
            };
            let identity = record
                .pid
                .zip(record.start_time)
                .map(|(pid, start_time)| ProcessIdentity { pid, start_time });
            // Draining replicas are adopted too: the loop takes them out of the route table
            // before stopping them, as it would have done without the crash.
            // What can't be adopted is stopped: a process by its identity or (crashed
            // between writing the row and recording the pid) by its id, containers by label.
            let keep = match spec {
                Some(spec) => self.runtime.adopt(spec, identity).await?,
                None => {
                    self.runtime.discard(&record.id, identity).await;
                    false
                }
            };
            if keep {
                tracing::info!(replica = %record.id, "re-adopted replica");
                adopted.insert(record.id.clone());
            } else {
                tracing::info!(replica = %record.id, "replica from a previous run is gone; forgetting it");
                self.store.delete_replica(&record.id).await?;
            }
        }
        // What runs without a row (a container whose row was forgotten after a failed
        // removal): nothing may run that the store does not account for.
        let keep: Vec<String> = adopted.iter().cloned().collect();
        match self.runtime.remove_orphans(&keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed replicas no row accounts for"),
            Err(e) => tracing::warn!(error = %e, "cannot look for orphaned replicas"),
        }
        *lock(&self.settle_until_ms) = self.now_ms() + SETTLE_TIMEOUT_MS;
        *lock(&self.adopted) = adopted;
        Ok(())
    }
}
