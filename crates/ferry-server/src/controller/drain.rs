//! Stopping drained replicas once the proxy confirms nothing can reach them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferry_runtime::ProcessIdentity;
use ferry_store::ReplicaRecord;
use tracing::Instrument;

use crate::error::ServerError;
use crate::lock;

use super::{Controller, DRAIN_POLL};

impl Controller {
    /// Stops replicas marked draining, once the proxy confirms no request can reach them
    /// any more (or their service's `drain_timeout` has passed).
    /// `replicas`: every replica row, as this pass left them (read once per pass).
    pub(super) async fn stop_drained(
        self: &Arc<Self>,
        apps: &crate::controller::Apps,
        replicas: &[ReplicaRecord],
    ) -> Result<(), ServerError> {
        // Forget ids whose rows are gone so the set doesn't grow forever.
        lock(&self.stopping).retain(|id| replicas.iter().any(|r| &r.id == id));
        for record in replicas.iter().filter(|r| r.draining).cloned() {
            if !lock(&self.stopping).insert(record.id.clone()) {
                continue;
            }
            let drain_timeout = apps
                .get(&record.app)
                .and_then(|(_, m)| m.services.get(&record.service))
                .map(|s| s.drain_timeout.get())
                .unwrap_or(DEFAULT_DRAIN_TIMEOUT);
            let this = Arc::clone(self);
            let stop = async move {
                // Where the proxy was sent (the runtime's endpoint); a replica no runtime
                // supervises is in no route table this server pushed.
                let drained = match this.runtime.endpoint(&record.id) {
                    Some(addr) => this.wait_for_drain(addr, drain_timeout).await,
                    None => Drained::NotRunning,
                };
                this.replica_event(&record.id, &drained.to_string()).await;
                let stopped = match this.runtime.status(&record.id) {
                    Some(_) => this
                        .runtime
                        .stop(&record.id)
                        .await
                        .map_err(|e| e.to_string()),
                    None => {
                        let identity = record
                            .pid
                            .zip(record.start_time)
                            .map(|(pid, start_time)| ProcessIdentity { pid, start_time });
                        this.runtime.discard(&record.id, identity).await;
                        Ok(())
                    }
                };
                match stopped {
                    Ok(()) => {
                        // Said here, while the row still names the replica (the runtime's
                        // own `Stopped` event may arrive after the row is gone).
                        this.replica_event(&record.id, "stopped").await;
                        if let Err(e) = this.store.delete_replica(&record.id).await {
                            tracing::error!(replica = %record.id, error = %e, "could not forget a stopped replica");
                        }
                    }
                    Err(e) => {
                        tracing::error!(replica = %record.id, error = %e, "could not stop replica")
                    }
                }
                this.wake.notify_one();
            };
            // In the pass's span: its statements are the pass's (`pass_cost` counts them).
            tokio::spawn(stop.in_current_span());
        }
        Ok(())
    }

    /// Waits until the proxy confirms that no request can reach `addr` any more: it is in
    /// no route table a request holds and nothing is in flight to it. Bounded by `limit`;
    /// while the proxy does not answer, the wait goes on (a restarted proxy may still
    /// route to it from its saved table).
    pub(super) async fn wait_for_drain(&self, addr: SocketAddr, limit: Duration) -> Drained {
        let started = tokio::time::Instant::now();
        let mut last = Err("no answer yet".to_string());
        while started.elapsed() < limit {
            last = self
                .proxy
                .endpoint_usage(addr)
                .await
                .map_err(|e| e.to_string());
            if let Ok(usage) = &last
                && usage.drained()
            {
                return Drained::Confirmed(started.elapsed());
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        Drained::TimedOut { limit, last }
    }
}

/// Default `drain_timeout` for a replica whose service left the manifest.
pub(super) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How the drain of a replica ended (a timeline line).
pub(super) enum Drained {
    Confirmed(Duration),
    /// No runtime supervises it: nothing runs there to drain.
    NotRunning,
    TimedOut {
        limit: Duration,
        last: Result<ferry_proxy::stats::EndpointUsage, String>,
    },
}

impl std::fmt::Display for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drained::Confirmed(after) => write!(
                f,
                "drained: out of every route table, nothing in flight ({:.1}s); stopping",
                after.as_secs_f64()
            ),
            Drained::NotRunning => write!(f, "not running: nothing to drain; stopping"),
            Drained::TimedOut {
                limit,
                last: Ok(usage),
            } => write!(
                f,
                "drain_timeout ({}) reached with {} request(s) in flight{}; stopping anyway",
                ferry_core::duration::HumanDuration(*limit),
                usage.in_flight,
                if usage.listed > 0 {
                    " and still in a route table"
                } else {
                    ""
                }
            ),
            Drained::TimedOut {
                limit,
                last: Err(e),
            } => write!(
                f,
                "drain_timeout ({}) reached without an answer from the proxy ({e}); stopping anyway",
                ferry_core::duration::HumanDuration(*limit)
            ),
        }
    }
}
