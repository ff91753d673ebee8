//! An environment with no deployment running: kept at its current version (lost replicas
//! replaced, strays drained), and replicas that no manifest wants any more.

use ferry_core::manifest::Manifest;
use ferry_core::rollout::{self, Action, Pace, ServiceInput, Verdict};
use ferry_store::ReplicaRecord;

use super::Effect;
use crate::controller::Apps;

/// Keeps an idle environment at `current`, restoring at `pace`; with no current version
/// (e.g. the remains of a failed first deployment) every replica is drained.
pub(in crate::controller) fn step(
    current: Option<&str>,
    services: &[ServiceInput],
    pace: Pace,
    now: i64,
) -> Vec<Effect> {
    let actions = match current {
        Some(version) => match rollout::reconcile(version, services, pace, now) {
            Verdict::Progress(actions) => actions,
            _ => Vec::new(),
        },
        None => services
            .iter()
            .map(|s| Action::Drain {
                service: s.service.clone(),
                ids: s
                    .replicas
                    .iter()
                    .filter(|r| !r.draining)
                    .map(|r| r.id.clone())
                    .collect(),
            })
            .filter(|a| !matches!(a, Action::Drain { ids, .. } if ids.is_empty()))
            .collect(),
    };
    if actions.is_empty() {
        Vec::new()
    } else {
        vec![Effect::Replicas(actions)]
    }
}

/// Replicas (not yet draining) of apps, environments or services no longer in any manifest.
pub(in crate::controller) fn orphans(apps: &Apps, replicas: &[ReplicaRecord]) -> Vec<String> {
    let wanted = |r: &ReplicaRecord, m: &Manifest| {
        m.environments.get(&r.env).is_some() && m.services.contains_key(&r.service)
    };
    replicas
        .iter()
        .filter(|r| !r.draining)
        .filter(|r| apps.get(&r.app).is_none_or(|(_, m)| !wanted(r, m)))
        .map(|r| r.id.clone())
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ferry_core::model::ReplicaState;
    use ferry_core::rollout::{Observed, Patience};

    pub(in crate::controller::steps) fn replica(
        id: &str,
        version: &str,
        state: ReplicaState,
        draining: bool,
    ) -> Observed {
        Observed {
            id: id.into(),
            version: version.into(),
            state,
            started_at_ms: 0,
            restarts: 0,
            ever_healthy: state == ReplicaState::Healthy,
            draining,
            last_exit: None,
            last_output: Vec::new(),
            last_probe: None,
        }
    }

    /// Service `web`, 2 replicas wanted.
    pub(in crate::controller::steps) fn web(replicas: Vec<Observed>) -> Vec<ServiceInput> {
        vec![ServiceInput {
            service: "web".into(),
            desired: 2,
            replicas,
            patience: Patience {
                start_timeout_ms: 30_000,
                max_start_exits: 3,
            },
        }]
    }

    const PACE: Pace = Pace::Rolling {
        max_surge: 2,
        max_unavailable: 0,
    };

    #[test]
    fn an_idle_environment_at_its_version_is_left_alone() {
        let services = web(vec![
            replica("a", "1.0", ReplicaState::Healthy, false),
            replica("b", "1.0", ReplicaState::Healthy, false),
        ]);
        assert_eq!(step(Some("1.0"), &services, PACE, 1_000), Vec::new());
    }

    #[test]
    fn a_lost_replica_is_replaced() {
        let services = web(vec![replica("a", "1.0", ReplicaState::Healthy, false)]);
        let effects = step(Some("1.0"), &services, PACE, 1_000);
        assert_eq!(
            effects,
            vec![Effect::Replicas(vec![Action::Start {
                service: "web".into(),
                version: "1.0".into(),
                count: 1,
            }])]
        );
    }

    #[test]
    fn with_no_current_version_every_replica_not_yet_draining_is_drained() {
        let services = web(vec![
            replica("a", "1.0", ReplicaState::Healthy, false),
            replica("b", "1.0", ReplicaState::Exited, true),
        ]);
        assert_eq!(
            step(None, &services, PACE, 1_000),
            vec![Effect::Replicas(vec![Action::Drain {
                service: "web".into(),
                ids: vec!["a".into()],
            }])]
        );
        assert_eq!(step(None, &web(Vec::new()), PACE, 1_000), Vec::new());
    }

    #[test]
    fn replicas_no_manifest_wants_are_orphans() {
        let manifest: Manifest = ferry_core::manifest::parse(
            "app: shop\nservices:\n  web:\n    run: [server]\nenvironments:\n  production:\n    listen: 127.0.0.1:18080\n",
            "ferry.yaml",
        )
        .expect("manifest");
        let record = ferry_store::AppRecord {
            name: "shop".into(),
            revision: 1,
            yaml: String::new(),
            manifest_json: String::new(),
            base_dir: None,
            updated_at_ms: 0,
        };
        let apps: Apps = [("shop".to_string(), (record, std::sync::Arc::new(manifest)))].into();
        let row = |id: &str, app: &str, env: &str, service: &str, draining: bool| ReplicaRecord {
            id: id.into(),
            app: app.into(),
            env: env.into(),
            service: service.into(),
            version: "1.0".into(),
            port: 1,
            pid: None,
            start_time: None,
            draining,
            deployment_id: None,
            created_at_ms: 0,
        };
        let rows = [
            row("kept", "shop", "production", "web", false),
            row("gone-app", "blog", "production", "web", false),
            row("gone-env", "shop", "staging", "web", false),
            row("gone-service", "shop", "production", "worker", false),
            row("already", "blog", "production", "web", true),
        ];
        assert_eq!(
            orphans(&apps, &rows),
            ["gone-app", "gone-env", "gone-service"]
        );
    }
}
