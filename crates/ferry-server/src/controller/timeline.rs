//! Transitions (compare-and-set) and the timeline: events, webhooks, and what clients saw during a rollout.

use std::collections::BTreeMap;

use ferry_core::model::{DeploymentState, EventKind};
use ferry_core::notify::{self, Kind, Notification, Severity};
use ferry_store::{DeploymentRecord, StoreError, Transition};

use crate::error::ServerError;
use crate::lock;

use super::Controller;

impl Controller {
    pub(super) async fn event(&self, deployment_id: i64, kind: EventKind, message: &str) {
        match self
            .store
            .append_event(deployment_id, kind, message, self.now_ms())
            .await
        {
            Ok(_) => {
                self.events_changed.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(deployment = deployment_id, error = %e, "could not record an event")
            }
        }
    }

    /// Records a line on a deployment's timeline from outside the loop (an approval), and
    /// lets the loop look again.
    pub async fn note(&self, deployment_id: i64, kind: EventKind, message: &str) {
        self.event(deployment_id, kind, message).await;
        self.wake.notify_one();
    }

    pub(super) async fn transition(
        &self,
        deployment: &DeploymentRecord,
        state: DeploymentState,
        reason: Option<String>,
        set_current_version: Option<String>,
        message: &str,
    ) -> Result<(), ServerError> {
        self.transition_with_phase(
            deployment,
            state,
            reason,
            set_current_version,
            deployment.phase.clone(),
            message,
        )
        .await
        .map(|_| ())
    }

    /// A compare-and-set transition that also replaces the phase. `Ok(false)`: someone else
    /// changed the deployment first (it is re-read on the next pass).
    pub(super) async fn transition_with_phase(
        &self,
        deployment: &DeploymentRecord,
        state: DeploymentState,
        reason: Option<String>,
        set_current_version: Option<String>,
        phase: serde_json::Value,
        message: &str,
    ) -> Result<bool, ServerError> {
        self.transition_as(
            deployment,
            state,
            reason,
            set_current_version,
            phase,
            EventKind::State,
            message,
        )
        .await
    }

    /// [`Controller::transition_with_phase`] whose timeline line is of `event_kind` (a
    /// person's command to a rollout, or its application).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn transition_as(
        &self,
        deployment: &DeploymentRecord,
        state: DeploymentState,
        reason: Option<String>,
        set_current_version: Option<String>,
        phase: serde_json::Value,
        event_kind: EventKind,
        message: &str,
    ) -> Result<bool, ServerError> {
        // What clients saw during the rollout goes on the timeline when it ends (and
        // becomes the reason of a deployment that succeeded although clients saw errors).
        let mut reason = reason;
        if state.is_terminal() && !deployment.state.is_terminal() {
            if let Some(seen) = self.rollout_traffic(deployment).await {
                self.event(deployment.id, EventKind::Traffic, &seen.to_string())
                    .await;
                if seen.errors() > 0 && reason.is_none() {
                    reason = Some(seen.errors_line());
                }
            }
            lock(&self.traffic_baselines).remove(&deployment.id);
        } else if !state.is_terminal()
            && !lock(&self.traffic_baselines).contains_key(&deployment.id)
            && let Ok(stats) = self.proxy.stats().await
        {
            lock(&self.traffic_baselines).insert(deployment.id, stats);
        }
        let now = self.now_ms();
        let notifications = if state != deployment.state {
            state_notifications(deployment, state, message, now)
        } else {
            Vec::new()
        };
        let result = self
            .store
            .transition(Transition {
                id: deployment.id,
                expected_row_version: deployment.row_version,
                state,
                reason,
                phase,
                set_current_version,
                event: format!("{state}: {message}"),
                event_kind,
                now_ms: now,
                notifications,
            })
            .await;
        match result {
            Ok(_) => {
                tracing::info!(deployment = deployment.id, app = %deployment.app, env = %deployment.env, %state, "{message}");
                self.events_changed.send_modify(|n| *n += 1);
                self.wake.notify_one();
                Ok(true)
            }
            // Someone else (a newer request) moved it first: re-read on the next pass.
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Requests and errors the proxy answered per version of the deployment's environment
    /// since the deployment started (or since this server or the proxy did).
    pub(super) async fn rollout_traffic(
        &self,
        deployment: &DeploymentRecord,
    ) -> Option<RolloutTraffic> {
        let after = self.proxy.stats().await.ok()?;
        let before = lock(&self.traffic_baselines).get(&deployment.id).cloned();
        Some(RolloutTraffic::between(
            before.as_ref(),
            &after,
            &format!("{}/{}", deployment.app, deployment.env),
        ))
    }
}

/// The notifications of a deployment entering `state` (enqueued with the transition): its
/// state change (today's webhook body as details), and an approval request when it starts
/// waiting for approvals.
fn state_notifications(
    d: &DeploymentRecord,
    state: DeploymentState,
    message: &str,
    now: i64,
) -> Vec<Notification> {
    let kind = Kind::of_deployment_state(state);
    let change = crate::notify::StateChange {
        app: d.app.clone(),
        env: d.env.clone(),
        deployment_id: d.id,
        version: d.version.clone(),
        previous_version: d.previous_version.clone(),
        state: state.to_string(),
        previous_state: d.state.to_string(),
        message: message.to_string(),
        at_ms: now,
    };
    let base = |key: String, kind: Kind, summary: String| {
        Notification::new(
            key,
            kind,
            &d.app,
            &d.env,
            Severity::of_kind(kind),
            summary,
            now,
        )
        .label("state", state.as_str())
        .label("version", &d.version)
        .label("deployment", d.id.to_string())
    };
    let mut out = vec![
        base(
            notify::key_deployment(d.id, d.row_version + 1, state),
            kind,
            format!(
                "{}/{}: deployment #{} of {} is {state} — {message}",
                d.app, d.env, d.id, d.version
            ),
        )
        .with_details(serde_json::to_value(&change).unwrap_or_default()),
    ];
    if state == DeploymentState::AwaitingApproval {
        out.push(base(
            notify::key_approval_requested(d.id),
            Kind::ApprovalRequested,
            format!(
                "{}/{}: deployment #{} of {} waits for approval",
                d.app, d.env, d.id, d.version
            ),
        ));
    }
    out
}

/// What the proxy answered per version of one environment during a rollout.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct RolloutTraffic {
    /// (service, version, requests, 5xx) with any request, in name order.
    versions: Vec<(String, String, u64, u64)>,
    /// The proxy restarted during the rollout: counted since then.
    since_proxy_start: bool,
}

impl RolloutTraffic {
    /// Differences of the counters of listeners `listener` and `listener/…` between two
    /// snapshots (`before` missing, or of an older proxy process: counted from zero).
    fn between(
        before: Option<&ferry_proxy::stats::StatsSnapshot>,
        after: &ferry_proxy::stats::StatsSnapshot,
        listener: &str,
    ) -> RolloutTraffic {
        let before = before.filter(|b| b.started_at_ms == after.started_at_ms);
        let ours = |l: &str| {
            l == listener
                || l.strip_prefix(listener)
                    .is_some_and(|rest| rest.starts_with('/'))
        };
        let mut sums: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for v in after.versions.iter().filter(|v| ours(&v.listener)) {
            let (r0, e0) = before
                .and_then(|b| {
                    b.versions.iter().find(|o| {
                        o.listener == v.listener && o.service == v.service && o.version == v.version
                    })
                })
                .map(|o| (o.requests, o.errors_5xx))
                .unwrap_or((0, 0));
            let sum = sums
                .entry((v.service.clone(), v.version.clone()))
                .or_default();
            sum.0 += v.requests.saturating_sub(r0);
            sum.1 += v.errors_5xx.saturating_sub(e0);
        }
        RolloutTraffic {
            versions: sums
                .into_iter()
                .filter(|(_, (requests, _))| *requests > 0)
                .map(|((service, version), (requests, errors))| {
                    (service, version, requests, errors)
                })
                .collect(),
            since_proxy_start: before.is_none(),
        }
    }

    fn errors(&self) -> u64 {
        self.versions.iter().map(|v| v.3).sum()
    }

    /// `clients saw 6 errors (5xx) during the rollout: web 1.1.0 6 of 2100`.
    fn errors_line(&self) -> String {
        let parts: Vec<String> = self
            .versions
            .iter()
            .filter(|v| v.3 > 0)
            .map(|(service, version, requests, errors)| {
                let version = if version.is_empty() {
                    "(no replica)"
                } else {
                    version
                };
                format!("{service} {version} {errors} of {requests}")
            })
            .collect();
        format!(
            "clients saw {} error(s) (5xx, including the proxy's 502/503/504) during the rollout: {}",
            self.errors(),
            parts.join(", ")
        )
    }
}

impl std::fmt::Display for RolloutTraffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since = if self.since_proxy_start {
            " (since the proxy or this server started)"
        } else {
            ""
        };
        if self.versions.is_empty() {
            return write!(f, "no requests through the proxy during the rollout{since}");
        }
        let parts: Vec<String> = self
            .versions
            .iter()
            .map(|(service, version, requests, errors)| {
                let version = if version.is_empty() {
                    "(no replica)"
                } else {
                    version
                };
                format!("{service} {version}: {requests} requests, {errors} 5xx")
            })
            .collect();
        write!(f, "during the rollout{since}: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(started: i64, rows: &[(&str, &str, u64, u64)]) -> ferry_proxy::stats::StatsSnapshot {
        ferry_proxy::stats::StatsSnapshot {
            started_at_ms: started,
            taken_at_ms: started,
            generation: 1,
            versions: rows
                .iter()
                .map(
                    |(listener, version, requests, errors)| ferry_proxy::stats::VersionStats {
                        listener: listener.to_string(),
                        service: "web".to_string(),
                        version: version.to_string(),
                        requests: *requests,
                        errors_5xx: *errors,
                        client_errors: 0,
                        in_flight: 0,
                        latency_ms: Default::default(),
                        histogram_us: String::new(),
                        endpoints: Vec::new(),
                    },
                )
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rollout_traffic_counts_what_clients_saw_per_version() {
        let before = stats(
            1,
            &[("shop/prod", "1.0", 100, 1), ("shop/dev", "1.0", 5, 5)],
        );
        let after = stats(
            1,
            &[
                ("shop/prod", "1.0", 160, 3),
                ("shop/prod/preview", "1.1", 10, 0),
                ("shop/prod", "1.1", 40, 4),
                ("shop/dev", "1.0", 50, 50),
                ("shop/production", "1.0", 7, 7),
            ],
        );
        let seen = RolloutTraffic::between(Some(&before), &after, "shop/prod");
        assert_eq!(
            seen.versions,
            vec![
                ("web".to_string(), "1.0".to_string(), 60, 2),
                ("web".to_string(), "1.1".to_string(), 50, 4)
            ]
        );
        assert_eq!(seen.errors(), 6);
        assert_eq!(
            seen.to_string(),
            "during the rollout: web 1.0: 60 requests, 2 5xx; web 1.1: 50 requests, 4 5xx"
        );
        assert!(seen.errors_line().starts_with("clients saw 6 error(s)"));
        assert!(
            seen.errors_line()
                .ends_with("web 1.0 2 of 60, web 1.1 4 of 50")
        );
        // A restarted proxy counts from zero; no baseline says so too.
        let restarted = RolloutTraffic::between(
            Some(&before),
            &stats(2, &[("shop/prod", "1.1", 9, 0)]),
            "shop/prod",
        );
        assert!(restarted.since_proxy_start);
        assert_eq!(restarted.errors(), 0);
        assert!(restarted.to_string().contains("since the proxy"));
    }
}
