//! Auto-promotion (`gates.auto_promote`): which versions go into which environments next
//! (`ferry_core::release::auto_promotions`, over the facts `crate::promotion::env_facts`
//! read from the store), as requests the executor makes — each with its audit record (by
//! `system`, for the source deployment's requester) and its timeline line.
//!
//! Level-triggered and crash-safe: every pass decides again from the store only; a version
//! that ever had a deployment in the target environment is never requested again there, so
//! a restart creates no second one and a failed or rejected auto-promotion is not retried.

use ferry_core::manifest::Manifest;
use ferry_core::model::{DeploymentKind, EventKind};
use ferry_core::release::{EnvFacts, auto_promotions};

use super::Effect;

/// A deployment the executor requests, then records.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::controller) struct Request {
    pub env: String,
    pub version: String,
    pub kind: DeploymentKind,
    /// Who it is requested for (they still cannot approve it downstream).
    pub requested_by: String,
    /// The audit record's action and summary (its target: the deployment created).
    pub audit_action: &'static str,
    pub audit_summary: String,
    /// The created deployment's timeline line.
    pub note: (EventKind, String),
}

/// Whether any environment of `manifest` auto-promotes (else its facts are not even read).
pub(in crate::controller) fn wanted(manifest: &Manifest) -> bool {
    manifest
        .environments
        .iter()
        .any(|(_, e)| e.gates.as_ref().is_some_and(|g| g.auto_promote))
}

/// The requests of one pass for `app`, in the order of its environments.
pub(in crate::controller) fn step(app: &str, facts: &[EnvFacts]) -> Vec<Effect> {
    auto_promotions(facts)
        .into_iter()
        .map(|p| {
            Effect::Request(Request {
                audit_action: "promotions.auto",
                audit_summary: format!(
                    "auto-promote {app} {} from {} (#{}) to {} for {}",
                    p.version, p.from_env, p.source_deployment_id, p.env, p.requested_by
                ),
                note: (
                    EventKind::Promotion,
                    format!(
                        "auto-promoted from {} after #{} succeeded",
                        p.from_env, p.source_deployment_id
                    ),
                ),
                env: p.env,
                version: p.version,
                kind: DeploymentKind::AutoPromote,
                requested_by: p.requested_by,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::model::DeploymentState;
    use ferry_core::release::Serving;

    fn env(name: &str, from: Option<&str>, serving: Option<(&str, DeploymentState)>) -> EnvFacts {
        EnvFacts {
            name: name.into(),
            auto_promote_from: from.map(str::to_string),
            serving: serving.map(|(version, state)| Serving {
                version: version.into(),
                deployment_id: 7,
                state,
                kind: DeploymentKind::Deploy,
                requested_by: "user:alice".into(),
            }),
            ..EnvFacts::default()
        }
    }

    fn requests(effects: &[Effect]) -> Vec<(&str, &str)> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Request(r) => (r.env.as_str(), r.version.as_str()),
                other => panic!("only requests: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_version_that_succeeded_upstream_is_requested_recorded_and_said_once() {
        let facts = [
            env("dev", None, Some(("1.2.0", DeploymentState::Succeeded))),
            env(
                "qa",
                Some("dev"),
                Some(("1.1.0", DeploymentState::Succeeded)),
            ),
        ];
        let effects = step("shop", &facts);
        let [Effect::Request(r)] = effects.as_slice() else {
            panic!("one request: {effects:?}");
        };
        assert_eq!(
            r,
            &Request {
                env: "qa".into(),
                version: "1.2.0".into(),
                kind: DeploymentKind::AutoPromote,
                requested_by: "user:alice".into(),
                audit_action: "promotions.auto",
                audit_summary: "auto-promote shop 1.2.0 from dev (#7) to qa for user:alice".into(),
                note: (
                    EventKind::Promotion,
                    "auto-promoted from dev after #7 succeeded".into()
                ),
            }
        );
    }

    #[test]
    fn every_reason_not_to_promote_requests_nothing() {
        let ok = env("dev", None, Some(("1.2.0", DeploymentState::Succeeded)));
        let mut busy = env("qa", Some("dev"), None);
        busy.busy = true;
        let mut had_it = env("qa", Some("dev"), None);
        had_it.deployed_versions.insert("1.2.0".into());
        let mut rolled_back = ok.clone();
        if let Some(s) = rolled_back.serving.as_mut() {
            s.kind = DeploymentKind::Rollback;
        }
        let cases: [(&str, Vec<EnvFacts>); 6] = [
            ("no auto_promote", vec![ok.clone(), env("qa", None, None)]),
            (
                "nothing upstream",
                vec![env("dev", None, None), env("qa", Some("dev"), None)],
            ),
            (
                "upstream still rolling",
                vec![
                    env("dev", None, Some(("1.2.0", DeploymentState::Progressing))),
                    env("qa", Some("dev"), None),
                ],
            ),
            ("busy downstream", vec![ok.clone(), busy]),
            ("ever deployed downstream", vec![ok.clone(), had_it]),
            (
                "a rollback upstream",
                vec![rolled_back, env("qa", Some("dev"), None)],
            ),
        ];
        for (why, facts) in cases {
            assert_eq!(step("shop", &facts), Vec::new(), "{why}");
        }
    }

    #[test]
    fn a_chain_promotes_each_environment_from_its_own_upstream() {
        let facts = [
            env("dev", None, Some(("1.3.0", DeploymentState::Succeeded))),
            env(
                "qa",
                Some("dev"),
                Some(("1.2.0", DeploymentState::Succeeded)),
            ),
            env(
                "staging",
                Some("qa"),
                Some(("1.1.0", DeploymentState::Succeeded)),
            ),
        ];
        assert_eq!(
            requests(&step("shop", &facts)),
            vec![("qa", "1.3.0"), ("staging", "1.2.0")]
        );
    }
}
