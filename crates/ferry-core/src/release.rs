//! Releases and promotion between environments, as pure decisions.
//!
//! A release is an immutable record of one version of an app: its commit, the artifact each
//! service runs, notes. This module checks what a user asks for ([`validate`]), decides what
//! asking for an existing version means ([`reconcile`]: no-op, conflict naming the differing
//! field, or completing a bare release), names it per environment ([`tag`]), says where a
//! version stands in an environment ([`placement`]) and which versions the controller must
//! auto-promote ([`auto_promotions`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::model::DeploymentState;

/// What a release carries besides its version. A *bare* release (no commit, no artifacts,
/// no notes) is what a plain `ferry deploy --version V` records.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReleaseData {
    /// Commit the version was built from: 7–40 lowercase hex characters.
    #[serde(default)]
    pub commit: Option<String>,
    /// `service → artifact reference` (an image, a path, a URL).
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    #[serde(default)]
    pub notes: Option<String>,
    /// When the commit was made, RFC 3339 (`2026-03-02T09:15:00+01:00`); stored and shown in
    /// UTC to the millisecond. The start of DORA's lead time for changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<String>,
}

impl ReleaseData {
    pub fn is_bare(&self) -> bool {
        self.commit.is_none()
            && self.artifacts.is_empty()
            && self.notes.is_none()
            && self.commit_time.is_none()
    }
}

/// Why a release request is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("version {version:?} is not a semantic version ({reason}); e.g. 1.4.2 or 1.4.2-rc.1")]
    NotSemver { version: String, reason: String },
    #[error("commit {commit:?} must be 7 to 40 hexadecimal characters (a git SHA or its prefix)")]
    BadCommit { commit: String },
    #[error("artifact for unknown service {service:?}: the manifest's services are {known}")]
    UnknownService { service: String, known: String },
    #[error("artifact {text:?} must be SERVICE=REF (e.g. api=registry.local/shop-api:1.4.2)")]
    BadArtifact { text: String },
    #[error("notes are limited to {max} characters")]
    NotesTooLong { max: usize },
    #[error(
        "commit time {text:?} is not an RFC 3339 time with an offset (e.g. 2026-03-02T09:15:00Z or 2026-03-02T10:15:00+01:00): {reason}"
    )]
    BadCommitTime { text: String, reason: String },
}

/// Longest commit time text accepted before it is parsed.
const MAX_COMMIT_TIME: usize = 64;

/// A commit time as milliseconds since the epoch: RFC 3339 with an offset (`Z` or `±hh:mm`),
/// truncated to the millisecond.
pub fn commit_time_ms(text: &str) -> Result<i64, ReleaseError> {
    let bad = |reason: String| ReleaseError::BadCommitTime {
        text: text.chars().take(MAX_COMMIT_TIME).collect(),
        reason,
    };
    if text.len() > MAX_COMMIT_TIME {
        return Err(bad(format!("longer than {MAX_COMMIT_TIME} bytes")));
    }
    let at: jiff::Timestamp = text
        .trim()
        .parse()
        .map_err(|e: jiff::Error| bad(e.to_string()))?;
    Ok(at.as_millisecond())
}

/// A commit time as stored and shown: UTC, RFC 3339, to the millisecond.
pub fn commit_time_text(ms: i64) -> Option<String> {
    jiff::Timestamp::from_millisecond(ms)
        .ok()
        .map(|t| t.to_string())
}

/// A commit time in its stored form (see [`commit_time_text`]).
pub fn normalize_commit_time(text: &str) -> Result<String, ReleaseError> {
    let ms = commit_time_ms(text)?;
    commit_time_text(ms).ok_or_else(|| ReleaseError::BadCommitTime {
        text: text.to_string(),
        reason: "out of range".into(),
    })
}

/// Longest notes accepted.
pub const MAX_NOTES: usize = 10_000;

/// Checks a semantic version (`semver` crate rules: `MAJOR.MINOR.PATCH[-pre][+build]`).
pub fn check_semver(version: &str) -> Result<(), ReleaseError> {
    semver::Version::parse(version)
        .map(|_| ())
        .map_err(|e| ReleaseError::NotSemver {
            version: version.to_string(),
            reason: e.to_string(),
        })
}

/// A commit as stored: 7–40 hex characters, lowercased.
pub fn normalize_commit(commit: &str) -> Result<String, ReleaseError> {
    let c = commit.trim();
    if (7..=40).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_hexdigit()) {
        Ok(c.to_ascii_lowercase())
    } else {
        Err(ReleaseError::BadCommit {
            commit: commit.to_string(),
        })
    }
}

/// Parses `SERVICE=REF`.
pub fn parse_artifact(text: &str) -> Result<(String, String), ReleaseError> {
    match text.split_once('=') {
        Some((service, reference))
            if !service.trim().is_empty() && !reference.trim().is_empty() =>
        {
            Ok((service.trim().to_string(), reference.trim().to_string()))
        }
        _ => Err(ReleaseError::BadArtifact {
            text: text.to_string(),
        }),
    }
}

/// Checks (and normalizes) release data of `version` against the manifest's `services`.
/// `require_semver`: explicit `release create`, or a deploy that carries release data.
pub fn validate<'a>(
    version: &str,
    data: &ReleaseData,
    services: impl IntoIterator<Item = &'a str>,
    require_semver: bool,
) -> Result<ReleaseData, ReleaseError> {
    if require_semver {
        check_semver(version)?;
    }
    let services: BTreeSet<&str> = services.into_iter().collect();
    let commit = data.commit.as_deref().map(normalize_commit).transpose()?;
    for service in data.artifacts.keys() {
        if !services.contains(service.as_str()) {
            return Err(ReleaseError::UnknownService {
                service: service.clone(),
                known: services.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
    }
    if data
        .notes
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NOTES)
    {
        return Err(ReleaseError::NotesTooLong { max: MAX_NOTES });
    }
    let commit_time = data
        .commit_time
        .as_deref()
        .map(normalize_commit_time)
        .transpose()?;
    Ok(ReleaseData {
        commit,
        artifacts: data.artifacts.clone(),
        notes: data.notes.clone().filter(|n| !n.is_empty()),
        commit_time,
    })
}

/// What a request for release data of a version means, given what is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// Unknown version: record it.
    Create,
    /// Already recorded with the same data (or, implicitly, nothing asked differs): no-op.
    Exists,
    /// A bare release (recorded by a plain deploy) gets its data, once.
    Complete,
    /// The version exists with different data: refused (409), naming the field.
    Conflict {
        field: &'static str,
        stored: String,
        requested: String,
    },
}

/// Decides what asking for `requested` means when `stored` is what the store holds.
/// `explicit` (`release create`): every field must be identical. Implicit (a deploy's
/// flags): only the fields given are compared. Either way a bare stored release is
/// completed by a request that carries data.
pub fn reconcile(
    stored: Option<&ReleaseData>,
    requested: &ReleaseData,
    explicit: bool,
) -> Reconciled {
    let Some(stored) = stored else {
        return Reconciled::Create;
    };
    if stored == requested {
        return Reconciled::Exists;
    }
    if stored.is_bare() {
        return if requested.is_bare() {
            Reconciled::Exists
        } else {
            Reconciled::Complete
        };
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".to_string());
    let show_map = |m: &BTreeMap<String, String>| {
        if m.is_empty() {
            "(none)".to_string()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let commit_differs = (explicit || requested.commit.is_some())
        && !same_commit(stored.commit.as_deref(), requested.commit.as_deref());
    if commit_differs {
        return Reconciled::Conflict {
            field: "commit",
            stored: show(&stored.commit),
            requested: show(&requested.commit),
        };
    }
    let artifacts_differ =
        (explicit || !requested.artifacts.is_empty()) && stored.artifacts != requested.artifacts;
    if artifacts_differ {
        return Reconciled::Conflict {
            field: "artifacts",
            stored: show_map(&stored.artifacts),
            requested: show_map(&requested.artifacts),
        };
    }
    let notes_differ = (explicit || requested.notes.is_some()) && stored.notes != requested.notes;
    if notes_differ {
        return Reconciled::Conflict {
            field: "notes",
            stored: show(&stored.notes),
            requested: show(&requested.notes),
        };
    }
    let commit_time_differs = (explicit || requested.commit_time.is_some())
        && stored.commit_time != requested.commit_time;
    if commit_time_differs {
        return Reconciled::Conflict {
            field: "commit_time",
            stored: show(&stored.commit_time),
            requested: show(&requested.commit_time),
        };
    }
    Reconciled::Exists
}

/// Whether two recorded commits name the same commit: equal, or one is a prefix of the
/// other (both are normalized, at least 7 hex characters). A release's commit is fixed by
/// its version, so the short form every listing shows (`abcdef1`) names it unambiguously.
pub fn same_commit(stored: Option<&str>, requested: Option<&str>) -> bool {
    match (stored, requested) {
        (Some(a), Some(b)) => a.starts_with(b) || b.starts_with(a),
        (a, b) => a == b,
    }
}

/// The first 7 characters of a commit.
pub fn short_commit(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

/// The release tag of `version` deployed in `env`: `{version}-sha-{commit7}-{env}`, e.g.
/// `1.4.2-sha-abcdef1-production`. `None` without a commit.
pub fn tag(version: &str, commit: Option<&str>, env: &str) -> Option<String> {
    commit.map(|c| format!("{version}-sha-{}-{env}", short_commit(c)))
}

/// Where a version stands in one environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// It serves there now.
    Current,
    /// A deployment of it is under way there.
    InProgress,
    /// It served there before (succeeded), something else serves now.
    PreviouslyServed,
    /// Its deployments there failed, rolled back or were aborted.
    Failed,
    /// Its deployment there was rejected by an approver.
    Rejected,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Current => "current",
            Placement::InProgress => "in-progress",
            Placement::PreviouslyServed => "previously-served",
            Placement::Failed => "failed",
            Placement::Rejected => "rejected",
        }
    }
}

/// Where `version` stands in an environment whose current version is `current`, given the
/// states of every deployment of that version there. `None`: never deployed there (or only
/// superseded requests).
pub fn placement(
    version: &str,
    current: Option<&str>,
    states: &[DeploymentState],
) -> Option<Placement> {
    use DeploymentState as S;
    if current == Some(version) {
        return Some(Placement::Current);
    }
    if states.iter().any(|s| !s.is_terminal()) {
        return Some(Placement::InProgress);
    }
    if states.contains(&S::Succeeded) {
        return Some(Placement::PreviouslyServed);
    }
    if states
        .iter()
        .any(|s| matches!(s, S::Failed | S::RolledBack | S::Aborted))
    {
        return Some(Placement::Failed);
    }
    if states.contains(&S::Rejected) {
        return Some(Placement::Rejected);
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Auto-promotion
// ---------------------------------------------------------------------------------------------

/// The deployment that made a version current in an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub version: String,
    pub deployment_id: i64,
    pub state: DeploymentState,
    pub kind: crate::model::DeploymentKind,
    pub requested_by: String,
}

/// What the auto-promotion decision knows about one environment of an app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvFacts {
    pub name: String,
    /// `gates.after` when `gates.auto_promote` is on.
    pub auto_promote_from: Option<String>,
    /// What serves here now and which deployment made it so.
    pub serving: Option<Serving>,
    /// Every version a deployment (in any state) was ever created for here.
    pub deployed_versions: BTreeSet<String>,
    /// A deployment is moving replicas here now (progressing or rolling back).
    pub busy: bool,
}

/// A deployment the controller must create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPromotion {
    pub env: String,
    pub version: String,
    pub from_env: String,
    pub source_deployment_id: i64,
    /// The requester of the source deployment (so they still can't approve it downstream).
    pub requested_by: String,
}

/// Which versions to auto-promote now. For each environment with `auto_promote`: the version
/// serving in its `after` environment, if the deployment that made it current there
/// succeeded and was not a rollback, and no deployment of that version was ever created
/// here (so a failed or rejected auto-promotion is not retried, and a restart never creates
/// a second one), and nothing is moving replicas here right now (a pending or
/// awaiting-approval deployment is superseded like by any new request).
pub fn auto_promotions(envs: &[EnvFacts]) -> Vec<AutoPromotion> {
    let mut out = Vec::new();
    for env in envs {
        let Some(from) = &env.auto_promote_from else {
            continue;
        };
        if from == &env.name || env.busy {
            continue;
        }
        let Some(source) = envs.iter().find(|e| &e.name == from) else {
            continue;
        };
        let Some(serving) = &source.serving else {
            continue;
        };
        if serving.state != DeploymentState::Succeeded
            || serving.kind == crate::model::DeploymentKind::Rollback
        {
            continue;
        }
        if env.deployed_versions.contains(&serving.version) {
            continue;
        }
        out.push(AutoPromotion {
            env: env.name.clone(),
            version: serving.version.clone(),
            from_env: from.clone(),
            source_deployment_id: serving.deployment_id,
            requested_by: serving.requested_by.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data(commit: Option<&str>, artifacts: &[(&str, &str)], notes: Option<&str>) -> ReleaseData {
        ReleaseData {
            commit: commit.map(str::to_string),
            artifacts: artifacts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            notes: notes.map(str::to_string),
            commit_time: None,
        }
    }

    #[test]
    fn commit_times_are_rfc3339_with_an_offset_stored_in_utc() {
        let with = |t: &str| ReleaseData {
            commit_time: Some(t.to_string()),
            ..data(Some("abcdef1"), &[], None)
        };
        let valid = validate("1.0.0", &with("2026-03-02T10:15:00.5+01:00"), [], true).unwrap();
        assert_eq!(valid.commit_time.as_deref(), Some("2026-03-02T09:15:00.5Z"));
        assert_eq!(
            commit_time_ms("2026-03-02T00:00:00Z").unwrap(),
            1_772_409_600_000
        );
        assert_eq!(
            commit_time_text(1_772_409_600_000).as_deref(),
            Some("2026-03-02T00:00:00Z")
        );
        for bad in [
            "2026-03-02T10:15:00",
            "2026-03-02",
            "yesterday",
            &"9".repeat(100),
        ] {
            match validate("1.0.0", &with(bad), [], true) {
                Err(ReleaseError::BadCommitTime { text, .. }) => {
                    assert!(text.len() <= 64 && bad.starts_with(&text), "{text}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // a commit time is release data: immutable once given, compared when asked for
        let stored = validate("1.0.0", &with("2026-03-02T09:15:00Z"), [], true).unwrap();
        assert!(
            !ReleaseData {
                commit: None,
                ..stored.clone()
            }
            .is_bare()
        );
        assert_eq!(reconcile(Some(&stored), &stored, true), Reconciled::Exists);
        let later = validate("1.0.0", &with("2026-03-02T09:16:00Z"), [], true).unwrap();
        assert!(matches!(
            reconcile(Some(&stored), &later, false),
            Reconciled::Conflict {
                field: "commit_time",
                ..
            }
        ));
        // a deploy that does not give it does not compare it; `release create` does
        let commit_only = data(Some("abcdef1"), &[], None);
        assert_eq!(
            reconcile(Some(&stored), &commit_only, false),
            Reconciled::Exists
        );
        assert!(matches!(
            reconcile(Some(&stored), &commit_only, true),
            Reconciled::Conflict {
                field: "commit_time",
                ..
            }
        ));
    }

    #[test]
    fn versions_commits_and_artifacts_are_checked() {
        assert!(check_semver("1.4.2").is_ok());
        assert!(check_semver("1.4.2-rc.1+build.5").is_ok());
        for bad in ["v1.4.2", "1.4", "blue", "", "1.4.2.1"] {
            let e = check_semver(bad).unwrap_err();
            assert!(
                e.to_string().contains("not a semantic version"),
                "{bad}: {e}"
            );
        }
        assert_eq!(normalize_commit("ABCDEF1").unwrap(), "abcdef1");
        assert_eq!(normalize_commit(&"a".repeat(40)).unwrap(), "a".repeat(40));
        for bad in ["abcdef", "abcdefg", &"a".repeat(41), "abc def1"] {
            assert!(normalize_commit(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_artifact("api=registry/shop:1.4.2=x").unwrap(),
            ("api".to_string(), "registry/shop:1.4.2=x".to_string())
        );
        assert!(parse_artifact("api").is_err());
        assert!(parse_artifact("=x").is_err());
        assert!(parse_artifact("api=").is_err());

        let ok = validate(
            "1.4.2",
            &data(Some("ABCDEF1"), &[("api", "img:1")], Some("")),
            ["api", "web"],
            true,
        )
        .unwrap();
        assert_eq!(ok, data(Some("abcdef1"), &[("api", "img:1")], None));
        let e = validate(
            "1.4.2",
            &data(None, &[("db", "x")], None),
            ["api", "web"],
            true,
        )
        .unwrap_err();
        assert_eq!(
            e,
            ReleaseError::UnknownService {
                service: "db".into(),
                known: "api, web".into()
            }
        );
        assert!(validate("blue", &ReleaseData::default(), ["api"], true).is_err());
        assert!(validate("blue", &ReleaseData::default(), ["api"], false).is_ok());
        let long = "x".repeat(MAX_NOTES + 1);
        assert!(validate("1.0.0", &data(None, &[], Some(&long)), ["api"], true).is_err());
    }

    #[test]
    fn the_short_commit_listings_show_names_a_release_recorded_with_its_full_sha() {
        let sha = "abcdef1234567890abcdef1234567890abcdef12";
        let full = data(Some(sha), &[("api", "img:1")], None);
        // `ferry deploy --commit abcdef1` (implicit) and `release create` (explicit)
        let short = data(Some("abcdef1"), &[], None);
        assert_eq!(reconcile(Some(&full), &short, false), Reconciled::Exists);
        let short_explicit = data(Some("abcdef12345"), &[("api", "img:1")], None);
        assert_eq!(
            reconcile(Some(&full), &short_explicit, true),
            Reconciled::Exists
        );
        // a prefix of another commit, or a longer SHA that diverges, is another commit
        for other in ["abcdef2", "abcdef1234567890abcdef1234567890abcdef13"] {
            assert!(
                matches!(
                    reconcile(Some(&full), &data(Some(other), &[], None), false),
                    Reconciled::Conflict {
                        field: "commit",
                        ..
                    }
                ),
                "{other}"
            );
        }
        assert!(same_commit(Some("abcdef1"), Some(sha)));
        assert!(!same_commit(Some(sha), None));
        assert!(same_commit(None, None));
    }

    #[test]
    fn an_existing_release_is_immutable() {
        let full = data(Some("abcdef1"), &[("api", "img:1")], Some("first"));
        assert_eq!(reconcile(None, &full, true), Reconciled::Create);
        assert_eq!(reconcile(Some(&full), &full, true), Reconciled::Exists);
        assert_eq!(reconcile(Some(&full), &full, false), Reconciled::Exists);
        let other_commit = data(Some("1234567"), &[("api", "img:1")], Some("first"));
        assert!(matches!(
            reconcile(Some(&full), &other_commit, true),
            Reconciled::Conflict {
                field: "commit",
                ..
            }
        ));
        let other_artifacts = data(Some("abcdef1"), &[("api", "img:2")], Some("first"));
        assert!(matches!(
            reconcile(Some(&full), &other_artifacts, false),
            Reconciled::Conflict {
                field: "artifacts",
                ..
            }
        ));
        let other_notes = data(Some("abcdef1"), &[("api", "img:1")], Some("second"));
        match reconcile(Some(&full), &other_notes, true) {
            Reconciled::Conflict {
                field,
                stored,
                requested,
            } => {
                assert_eq!(
                    (field, stored.as_str(), requested.as_str()),
                    ("notes", "first", "second")
                );
            }
            other => panic!("{other:?}"),
        }
        // explicit: a missing field differs; implicit: only what is given is compared
        let commit_only = data(Some("abcdef1"), &[], None);
        assert!(matches!(
            reconcile(Some(&full), &commit_only, true),
            Reconciled::Conflict {
                field: "artifacts",
                ..
            }
        ));
        assert_eq!(
            reconcile(Some(&full), &commit_only, false),
            Reconciled::Exists
        );
        assert_eq!(
            reconcile(Some(&full), &ReleaseData::default(), false),
            Reconciled::Exists
        );
        // a bare release (from a plain deploy) is completed once, then immutable
        let bare = ReleaseData::default();
        assert_eq!(reconcile(Some(&bare), &full, true), Reconciled::Complete);
        assert_eq!(
            reconcile(Some(&bare), &commit_only, false),
            Reconciled::Complete
        );
        assert_eq!(reconcile(Some(&bare), &bare, false), Reconciled::Exists);
    }

    #[test]
    fn tags_follow_the_convention() {
        assert_eq!(
            tag("1.4.2", Some("abcdef1234567"), "production").as_deref(),
            Some("1.4.2-sha-abcdef1-production")
        );
        assert_eq!(
            tag("1.4.2", Some("abcdef1"), "qa").as_deref(),
            Some("1.4.2-sha-abcdef1-qa")
        );
        assert_eq!(tag("1.4.2", None, "qa"), None);
    }

    #[test]
    fn placement_of_a_version() {
        use DeploymentState as S;
        assert_eq!(
            placement("1", Some("1"), &[S::Succeeded]),
            Some(Placement::Current)
        );
        assert_eq!(
            placement("1", Some("2"), &[S::Succeeded, S::Failed]),
            Some(Placement::PreviouslyServed)
        );
        assert_eq!(
            placement("1", Some("2"), &[S::RolledBack]),
            Some(Placement::Failed)
        );
        assert_eq!(
            placement("1", None, &[S::Failed, S::Aborted]),
            Some(Placement::Failed)
        );
        assert_eq!(
            placement("1", None, &[S::Rejected]),
            Some(Placement::Rejected)
        );
        assert_eq!(
            placement("1", Some("2"), &[S::Superseded, S::Progressing]),
            Some(Placement::InProgress)
        );
        assert_eq!(placement("1", Some("2"), &[S::Superseded]), None);
        assert_eq!(placement("1", None, &[]), None);
        assert_eq!(Placement::PreviouslyServed.as_str(), "previously-served");
    }

    fn serving(version: &str, id: i64, state: DeploymentState, kind: &str) -> Serving {
        Serving {
            version: version.into(),
            deployment_id: id,
            state,
            kind: kind.parse().expect("a deployment kind"),
            requested_by: "user:alice".into(),
        }
    }

    fn env(
        name: &str,
        from: Option<&str>,
        serving: Option<Serving>,
        deployed: &[&str],
    ) -> EnvFacts {
        EnvFacts {
            name: name.into(),
            auto_promote_from: from.map(str::to_string),
            serving,
            deployed_versions: deployed.iter().map(|v| v.to_string()).collect(),
            busy: false,
        }
    }

    #[test]
    fn a_version_that_succeeded_upstream_is_promoted_once() {
        use DeploymentState as S;
        let dev = env(
            "dev",
            None,
            Some(serving("1.1.0", 12, S::Succeeded, "deploy")),
            &["1.0.0", "1.1.0"],
        );
        let qa = env(
            "qa",
            Some("dev"),
            Some(serving("1.0.0", 7, S::Succeeded, "auto-promote")),
            &["1.0.0"],
        );
        let prod = env("production", None, None, &[]);
        let got = auto_promotions(&[dev.clone(), qa.clone(), prod.clone()]);
        assert_eq!(
            got,
            vec![AutoPromotion {
                env: "qa".into(),
                version: "1.1.0".into(),
                from_env: "dev".into(),
                source_deployment_id: 12,
                requested_by: "user:alice".into(),
            }]
        );
        // once a deployment of 1.1.0 exists in qa (whatever became of it): nothing more
        let mut qa_done = qa.clone();
        qa_done.deployed_versions.insert("1.1.0".into());
        assert!(auto_promotions(&[dev.clone(), qa_done, prod.clone()]).is_empty());
        // without auto_promote: nothing
        let manual = env("qa", None, None, &[]);
        assert!(auto_promotions(&[dev.clone(), manual]).is_empty());
        // busy target: wait
        let mut busy = qa.clone();
        busy.busy = true;
        assert!(auto_promotions(&[dev.clone(), busy]).is_empty());
    }

    #[test]
    fn only_a_succeeded_non_rollback_serving_version_is_promoted() {
        use DeploymentState as S;
        let qa = env("qa", Some("dev"), None, &[]);
        for (state, kind) in [
            (S::RolledBack, "deploy"),
            (S::Succeeded, "rollback"),
            (S::Aborted, "deploy"),
        ] {
            let dev = env(
                "dev",
                None,
                Some(serving("1.1.0", 3, state, kind)),
                &["1.1.0"],
            );
            assert!(
                auto_promotions(&[dev, qa.clone()]).is_empty(),
                "{state} {kind}"
            );
        }
        // nothing serving upstream, unknown upstream, or the env promoting from itself
        assert!(auto_promotions(&[env("dev", None, None, &[]), qa.clone()]).is_empty());
        assert!(auto_promotions(std::slice::from_ref(&qa)).is_empty());
        let selfish = env(
            "dev",
            Some("dev"),
            Some(serving("1.0.0", 1, S::Succeeded, "deploy")),
            &[],
        );
        assert!(auto_promotions(&[selfish]).is_empty());
        // a chain: dev → qa → staging each step from what serves upstream
        let dev = env(
            "dev",
            None,
            Some(serving("2.0.0", 20, S::Succeeded, "deploy")),
            &["2.0.0"],
        );
        let qa = env(
            "qa",
            Some("dev"),
            Some(serving("1.0.0", 8, S::Succeeded, "auto-promote")),
            &["1.0.0"],
        );
        let staging = env("staging", Some("qa"), None, &[]);
        let got = auto_promotions(&[dev, qa, staging]);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|p| (p.env.as_str(), p.version.as_str()))
            .collect();
        assert_eq!(pairs, vec![("qa", "2.0.0"), ("staging", "1.0.0")]);
    }
}
