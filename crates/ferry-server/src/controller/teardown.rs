//! Teardown: stop every workload and the proxy.

use std::sync::atomic::Ordering;

use ferry_runtime::ProcessIdentity;

use super::Controller;

impl Controller {
    /// Stops every replica and the proxy; the controller stops acting.
    pub async fn teardown(&self) {
        self.torn_down.store(true, Ordering::SeqCst);
        // hooks: running hooks are workloads too.
        self.hooks.stop_all().await;
        self.runtime.stop_all().await;
        if let Ok(records) = self.store.list_replicas(None, None).await {
            for record in records {
                // Also one whose pid was never recorded.
                let identity = record
                    .pid
                    .zip(record.start_time)
                    .map(|(pid, start_time)| ProcessIdentity { pid, start_time });
                self.runtime.discard(&record.id, identity).await;
                let _ = self.store.delete_replica(&record.id).await;
            }
        }
        self.proxy.stop().await;
        tracing::info!("teardown complete: replicas and proxy stopped");
    }
}
