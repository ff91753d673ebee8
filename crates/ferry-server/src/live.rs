//! Live views across servers. The leader supervises the replicas and samples the proxy, so
//! only it sees their live health and the traffic: it stores what it sees of each
//! environment (`env_live`, at most [`LOOK`] late, rewritten at least every [`REFRESH_MS`]
//! so its age says how fresh it is) and announces every change it makes — a timeline line,
//! a live view — through the store (PostgreSQL `NOTIFY ferry_changed`). A follower's
//! answers (`ferry status`, `/watch`, the console) serve what the leader last stored,
//! saying who saw it and how old it is (`EnvStatus::observed`), and its live views look
//! again at each announcement (on SQLite, where there is none, every 500 ms).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::api::{Observed, ReplicaView, TrafficStatus};
use ferry_core::model::ReplicaState;
use ferry_store::{ReplicaRecord, Store};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::leader;

/// How often the leader looks at what it supervises (besides every timeline change).
const LOOK: Duration = Duration::from_secs(1);
/// An unchanged live view is stored again after this long, so its age stays meaningful.
pub const REFRESH_MS: i64 = 5_000;
/// Without announcements (SQLite), how often a follower's live views look again.
const FOLLOWER_POLL: Duration = Duration::from_millis(500);

/// One environment's live parts, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LiveParts {
    pub replicas: Vec<ReplicaView>,
    pub traffic: Option<TrafficStatus>,
}

/// The leader's side: stores its live views and announces every change, until `stop`.
pub(crate) async fn run(controller: Arc<Controller>, stop: CancellationToken) {
    let server = controller.server_id().unwrap_or_default();
    let store = controller.store().clone();
    let mut changes = controller.changes();
    let mut tick = tokio::time::interval(LOOK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: HashMap<(String, String), (LiveParts, i64)> = HashMap::new();
    loop {
        let mut changed = tokio::select! {
            () = stop.cancelled() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                changes.borrow_and_update();
                true
            }
            _ = tick.tick() => false,
        };
        match controller.live_parts_of_all().await {
            Ok(views) => {
                let now = controller.now_ms();
                for (key, parts) in views {
                    let (same, fresh) = match written.get(&key) {
                        Some((old, at)) => (*old == parts, now - at < REFRESH_MS),
                        None => (false, false),
                    };
                    if same && fresh {
                        continue;
                    }
                    let Ok(body) = serde_json::to_string(&parts) else {
                        continue;
                    };
                    match store.save_live(&key.0, &key.1, &server, now, &body).await {
                        Ok(()) => {
                            changed |= !same;
                            written.insert(key, (parts, now));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot store a live view"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the live views"),
        }
        if changed && let Err(e) = store.announce_change().await {
            tracing::warn!(error = %e, "cannot announce a change to the other servers");
        }
    }
}

/// A follower's side: its live views look again at every announcement of the leader (on
/// SQLite: every [`FOLLOWER_POLL`]), until this server leads or stops.
pub(crate) async fn follow(
    controller: Arc<Controller>,
    store: Store,
    status: leader::Status,
    stop: CancellationToken,
) {
    let leads = {
        let status = status.clone();
        async move {
            while !status.leading() {
                tokio::time::sleep(FOLLOWER_POLL).await;
            }
        }
    };
    let until = async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = leads => {}
        }
    };
    if store.announces_changes() {
        let c = controller.clone();
        store
            .follow_changes(move || c.changed_elsewhere(), until)
            .await;
        return;
    }
    let mut tick = tokio::time::interval(FOLLOWER_POLL);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return,
            _ = tick.tick() => controller.changed_elsewhere(),
        }
    }
}

/// A follower's answer: the replica rows as stored now, each with its live state as the
/// leader last stored it (a row it had not seen yet: `starting`; a draining one:
/// `stopping`), the traffic it saw, and who saw them when.
pub(crate) fn merge(
    rows: &[&ReplicaRecord],
    stored: Option<&ferry_store::LiveRecord>,
    now_ms: i64,
) -> (Vec<ReplicaView>, Option<TrafficStatus>, Option<Observed>) {
    let parts: Option<LiveParts> = stored.and_then(|r| serde_json::from_str(&r.body).ok());
    let replicas = rows
        .iter()
        .map(|row| {
            let seen = parts
                .as_ref()
                .and_then(|p| p.replicas.iter().find(|v| v.id == row.id));
            let mut view = match seen {
                Some(view) => view.clone(),
                None => ReplicaView {
                    id: row.id.clone(),
                    service: row.service.clone(),
                    version: row.version.clone(),
                    port: row.port,
                    pid: row.pid,
                    state: ReplicaState::Starting,
                    restarts: 0,
                    in_traffic: false,
                    last_health_check: None,
                    last_output: Vec::new(),
                    last_exit: None,
                    cpu_share: None,
                    memory_share: None,
                },
            };
            if row.draining {
                view.state = ReplicaState::Stopping;
                view.in_traffic = false;
            }
            view
        })
        .collect();
    let observed = stored.map(|r| Observed {
        server: r.server.clone(),
        live: false,
        at_ms: Some(r.observed_at_ms),
        age_ms: Some((now_ms - r.observed_at_ms).max(0)),
    });
    (replicas, parts.and_then(|p| p.traffic), observed)
}
