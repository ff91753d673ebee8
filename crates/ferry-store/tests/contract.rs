//! Store contract suite. Every check is a function over a freshly migrated [`Store`] (plus,
//! when it needs one, the URL to open it again) so the same suite can run on every engine.
//! Every check runs on SQLite (a file in a temporary directory) and on PostgreSQL (a new
//! database per test, copied from a template migrated once per run, on the server named by
//! `FERRY_TEST_POSTGRES_URL`, by default the local one over its socket).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::Arc;

use ferry_core::audit::{self, AuditEntry};
use ferry_core::model::{DeploymentKind, DeploymentState};
use ferry_store::{
    AuditQuery, DeploymentRecord, NewBinding, NewDeployment, NewManifest, NewToken, ReplicaRecord,
    RoleRecord, Store, StoreError, Transition,
};
use serde_json::json;
// notify:
use ferry_core::notify::{self, DeliveryState, Notification};
use ferry_store::notify::ActiveChange;
use ferry_store::{DeliveryQuery, GroupRow, NewDelivery};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn manifest(app: &str, yaml: &str, now_ms: i64) -> NewManifest {
    NewManifest {
        app: app.into(),
        yaml: yaml.into(),
        manifest_json: format!("{{\"yaml\":{yaml:?}}}"),
        base_dir: Some("/srv/shop".into()),
        applied_by: "alice".into(),
        now_ms,
    }
}

fn new_deployment(app: &str, env: &str, version: &str, now_ms: i64) -> NewDeployment {
    NewDeployment {
        app: app.into(),
        env: env.into(),
        version: version.into(),
        previous_version: None,
        kind: DeploymentKind::Deploy,
        strategy: "rolling".into(),
        requested_by: "alice".into(),
        manifest_revision: 1,
        now_ms,
        fix_of: None,
    }
}

fn to(d: &DeploymentRecord, state: DeploymentState, now_ms: i64) -> Transition {
    Transition {
        id: d.id,
        expected_row_version: d.row_version,
        state,
        reason: None,
        phase: d.phase.clone(),
        set_current_version: None,
        event: format!("state: {state}"),
        event_kind: ferry_core::model::EventKind::State,
        now_ms,
        notifications: Vec::new(),
    }
}

/// Creates a deployment and drives it to `end` through progressing (and rolling-back for
/// rolled-back), setting the current version when it succeeds.
async fn finished(
    store: &Store,
    app: &str,
    env: &str,
    version: &str,
    end: DeploymentState,
    now: i64,
) -> DeploymentRecord {
    let d = store
        .create_deployment(new_deployment(app, env, version, now))
        .await
        .unwrap();
    let d = store
        .transition(to(&d, DeploymentState::Progressing, now + 1))
        .await
        .unwrap();
    let d = if end == DeploymentState::RolledBack {
        store
            .transition(to(&d, DeploymentState::RollingBack, now + 2))
            .await
            .unwrap()
    } else {
        d
    };
    let mut t = to(&d, end, now + 3);
    if end == DeploymentState::Succeeded {
        t.set_current_version = Some(version.into());
    }
    store.transition(t).await.unwrap()
}

fn replica(id: &str, app: &str, env: &str, service: &str, created_at_ms: i64) -> ReplicaRecord {
    ReplicaRecord {
        id: id.into(),
        app: app.into(),
        env: env.into(),
        service: service.into(),
        version: "1.0.0".into(),
        port: 41000,
        pid: None,
        start_time: None,
        draining: false,
        deployment_id: None,
        created_at_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// the contract
// ---------------------------------------------------------------------------------------------

pub async fn migrations_are_idempotent(store: Store, url: String) {
    store
        .apply_manifest(manifest("shop", "app: shop", 1))
        .await
        .unwrap();
    store.close().await;
    // opening again re-runs the migrator: nothing to apply, data intact
    let again = Store::open(&url).await.unwrap();
    let third = Store::open(&url).await.unwrap();
    assert_eq!(again.get_app("shop").await.unwrap().unwrap().revision, 1);
    assert_eq!(third.list_apps().await.unwrap().len(), 1);
}

pub async fn manifest_revision_bumps_only_on_change(store: Store, _url: String) {
    assert_eq!(store.get_app("shop").await.unwrap(), None);
    let first = store
        .apply_manifest(manifest("shop", "app: shop", 10))
        .await
        .unwrap();
    assert_eq!(first.revision, 1);
    assert_eq!(first.name, "shop");
    assert_eq!(first.base_dir.as_deref(), Some("/srv/shop"));
    assert_eq!(first.updated_at_ms, 10);

    // same yaml + json: no new revision, record unchanged
    let same = store
        .apply_manifest(manifest("shop", "app: shop", 20))
        .await
        .unwrap();
    assert_eq!(same, first);

    // yaml changes
    let second = store
        .apply_manifest(manifest("shop", "app: shop # v2", 30))
        .await
        .unwrap();
    assert_eq!(second.revision, 2);
    assert_eq!(second.yaml, "app: shop # v2");
    assert_eq!(second.updated_at_ms, 30);

    // only the json changes → still a new revision
    let mut m = manifest("shop", "app: shop # v2", 40);
    m.manifest_json = "{\"other\":true}".into();
    let third = store.apply_manifest(m).await.unwrap();
    assert_eq!(third.revision, 3);
    assert_eq!(third.manifest_json, "{\"other\":true}");

    // every revision stays readable: what a deployment requested with it runs
    let at_two = store.get_app_at("shop", 2).await.unwrap().unwrap();
    assert_eq!(
        (at_two.revision, at_two.yaml.as_str()),
        (2, "app: shop # v2")
    );
    assert_eq!(store.get_app_at("shop", 9).await.unwrap(), None);
    assert_eq!(store.get_app_at("nope", 1).await.unwrap(), None);

    // independent counter per app; list by name
    let blog = store
        .apply_manifest(manifest("blog", "app: blog", 50))
        .await
        .unwrap();
    assert_eq!(blog.revision, 1);
    let apps = store.list_apps().await.unwrap();
    assert_eq!(
        apps.iter()
            .map(|a| (a.name.as_str(), a.revision))
            .collect::<Vec<_>>(),
        [("blog", 1), ("shop", 3)]
    );
    assert_eq!(store.get_app("shop").await.unwrap(), Some(third));
}

pub async fn concurrent_applies_of_one_manifest_make_one_revision(store: Store, _url: String) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.apply_manifest(manifest("shop", "app: shop", i)).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().revision, 1);
    }
    assert_eq!(store.get_app("shop").await.unwrap().unwrap().revision, 1);
}

pub async fn releases_are_recorded_once(store: Store, _url: String) {
    store.ensure_release("shop", "1.0.0", 1).await.unwrap();
    store.ensure_release("shop", "1.0.0", 5).await.unwrap();
    store.ensure_release("shop", "1.1.0", 2).await.unwrap();
    store.ensure_release("blog", "9.9.9", 3).await.unwrap();
    let releases = store.list_releases("shop").await.unwrap();
    assert_eq!(
        releases
            .iter()
            .map(|r| (r.version.as_str(), r.created_at_ms))
            .collect::<Vec<_>>(),
        [("1.1.0", 2), ("1.0.0", 1)]
    );
    assert!(store.list_releases("nope").await.unwrap().is_empty());
}

pub async fn deployments_create_get_list_latest(store: Store, _url: String) {
    assert_eq!(store.latest_deployment("shop", "prod").await.unwrap(), None);
    assert_eq!(store.get_deployment(1234).await.unwrap(), None);

    let mut nd = new_deployment("shop", "prod", "1.0.0", 100);
    nd.previous_version = Some("0.9.0".into());
    let a = store.create_deployment(nd).await.unwrap();
    assert_eq!(a.state, DeploymentState::Pending);
    assert_eq!(a.row_version, 1);
    assert_eq!(a.phase, json!({}));
    assert_eq!(a.previous_version.as_deref(), Some("0.9.0"));
    assert_eq!(
        (a.created_at_ms, a.updated_at_ms, a.finished_at_ms),
        (100, 100, None)
    );
    assert_eq!(a.reason, None);

    let b = store
        .create_deployment(new_deployment("shop", "prod", "1.1.0", 200))
        .await
        .unwrap();
    let other_env = store
        .create_deployment(new_deployment("shop", "staging", "2.0.0", 300))
        .await
        .unwrap();
    assert!(b.id > a.id);

    assert_eq!(store.get_deployment(a.id).await.unwrap(), Some(a.clone()));
    let listed = store.list_deployments("shop", "prod", 10).await.unwrap();
    assert_eq!(
        listed,
        vec![b.clone(), a.clone()],
        "newest first, env filtered"
    );
    assert_eq!(
        store.list_deployments("shop", "prod", 1).await.unwrap(),
        vec![b.clone()]
    );
    assert_eq!(
        store.latest_deployment("shop", "prod").await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(
        store.latest_deployment("shop", "staging").await.unwrap(),
        Some(other_env.clone())
    );

    assert_eq!(
        store.latest_deployments().await.unwrap(),
        vec![b.clone(), other_env.clone()],
        "the newest of every app/env, by id"
    );

    // creation logs the first event
    let events = store.events_after(a.id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].seq,
            events[0].kind.as_str(),
            events[0].message.as_str(),
            events[0].at_ms
        ),
        (
            1,
            "state",
            "pending: deploy of 1.0.0 requested by alice",
            100
        )
    );

    // view carries the public fields
    let view = a.view();
    assert_eq!(
        (
            view.id,
            view.state,
            view.version.as_str(),
            view.kind.as_str()
        ),
        (a.id, DeploymentState::Pending, "1.0.0", "deploy")
    );

    // active: non-terminal, oldest first
    let active = store.active_deployments().await.unwrap();
    assert_eq!(
        active.iter().map(|d| d.id).collect::<Vec<_>>(),
        [a.id, b.id, other_env.id]
    );
    store
        .transition(to(&a, DeploymentState::Superseded, 400))
        .await
        .unwrap();
    let active = store.active_deployments().await.unwrap();
    assert_eq!(
        active.iter().map(|d| d.id).collect::<Vec<_>>(),
        [b.id, other_env.id]
    );
}

pub async fn transition_cas_conflicts_on_stale_row_version(store: Store, _url: String) {
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let mut t = to(&d, DeploymentState::Progressing, 2);
    t.phase = json!({"step": 1});
    t.reason = Some("starting".into());
    let p = store.transition(t).await.unwrap();
    assert_eq!(p.row_version, 2);
    assert_eq!(p.state, DeploymentState::Progressing);
    assert_eq!(p.phase, json!({"step": 1}));
    assert_eq!(p.reason.as_deref(), Some("starting"));
    assert_eq!((p.updated_at_ms, p.finished_at_ms), (2, None));

    // stale: expects 1 while it is 2
    let stale = to(&d, DeploymentState::RollingBack, 3);
    let err = store.transition(stale).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_deployment(d.id).await.unwrap(), Some(p.clone()));
    assert_eq!(
        store.events_after(d.id, 0, 100).await.unwrap().len(),
        2,
        "no event on conflict"
    );

    // unknown id
    let mut missing = to(&d, DeploymentState::Progressing, 3);
    missing.id = d.id + 1000;
    assert!(
        matches!(store.transition(missing).await.unwrap_err(), StoreError::NotFound(what) if what.contains("deployment"))
    );

    // terminal states never change again, even with the right row_version
    let done = store
        .transition(to(&p, DeploymentState::Failed, 4))
        .await
        .unwrap();
    let err = store
        .transition(to(&done, DeploymentState::Progressing, 5))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_deployment(d.id).await.unwrap(), Some(done));
}

pub async fn terminal_transition_sets_finished_and_env_current_atomically(
    store: Store,
    _url: String,
) {
    assert_eq!(store.env_current("shop", "prod").await.unwrap(), None);
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 10))
        .await
        .unwrap();
    let p = store
        .transition(to(&d, DeploymentState::Progressing, 20))
        .await
        .unwrap();

    // a conflicting terminal transition changes nothing: no finished_at, no env row, no event
    let mut stale = to(&d, DeploymentState::Succeeded, 25);
    stale.set_current_version = Some("1.0.0".into());
    assert!(matches!(
        store.transition(stale).await.unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert_eq!(store.get_deployment(d.id).await.unwrap(), Some(p.clone()));
    assert_eq!(store.env_current("shop", "prod").await.unwrap(), None);
    assert_eq!(store.events_after(d.id, 0, 100).await.unwrap().len(), 2);

    let mut t = to(&p, DeploymentState::Succeeded, 30);
    t.set_current_version = Some("1.0.0".into());
    t.event = "succeeded: all traffic on 1.0.0".into();
    let s = store.transition(t).await.unwrap();
    assert_eq!(
        (s.state, s.finished_at_ms, s.updated_at_ms, s.row_version),
        (DeploymentState::Succeeded, Some(30), 30, 3)
    );
    let env = store.env_current("shop", "prod").await.unwrap().unwrap();
    assert_eq!(
        (
            env.current_version.as_deref(),
            env.deployment_id,
            env.updated_at_ms
        ),
        (Some("1.0.0"), Some(d.id), 30)
    );
    let last = store.events_after(d.id, 2, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(
        (last[0].kind.as_str(), last[0].message.as_str()),
        ("state", "succeeded: all traffic on 1.0.0")
    );

    // the next success overwrites (upsert); a non-terminal transition leaves finished_at NULL
    let d2 = store
        .create_deployment(new_deployment("shop", "prod", "1.1.0", 40))
        .await
        .unwrap();
    let mut t = to(&d2, DeploymentState::Progressing, 50);
    t.set_current_version = Some("1.1.0".into()); // e.g. blue/green switch before completion
    let p2 = store.transition(t).await.unwrap();
    assert_eq!(p2.finished_at_ms, None);
    let env = store.env_current("shop", "prod").await.unwrap().unwrap();
    assert_eq!(
        (env.current_version.as_deref(), env.deployment_id),
        (Some("1.1.0"), Some(d2.id))
    );

    // failing to another terminal state without set_current_version leaves env alone
    let f = store
        .transition(to(&p2, DeploymentState::Failed, 60))
        .await
        .unwrap();
    assert_eq!(f.finished_at_ms, Some(60));
    assert_eq!(
        store
            .env_current("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .current_version
            .as_deref(),
        Some("1.1.0")
    );
    assert_eq!(store.env_current("shop", "staging").await.unwrap(), None);
}

pub async fn events_have_increasing_seq(store: Store, _url: String) {
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let other = store
        .create_deployment(new_deployment("shop", "qa", "1.0.0", 1))
        .await
        .unwrap();
    for i in 0..5 {
        let seq = store
            .append_event(
                d.id,
                ferry_core::model::EventKind::Replica,
                &format!("replica {i} healthy"),
                10 + i,
            )
            .await
            .unwrap();
        assert_eq!(seq, i + 2, "seq 1 is the creation event");
    }
    assert_eq!(
        store
            .append_event(
                other.id,
                ferry_core::model::EventKind::Traffic,
                "weight 5%",
                20
            )
            .await
            .unwrap(),
        2,
        "seq is per deployment"
    );
    let d = store
        .transition(to(&d, DeploymentState::Progressing, 30))
        .await
        .unwrap();
    assert_eq!(d.row_version, 2, "append_event doesn't bump row_version");

    let all = store.events_after(d.id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6, 7]
    );
    // Kinds come back typed, as they were written.
    assert_eq!(all[0].kind, ferry_core::model::EventKind::State);
    assert_eq!(all[1].kind, ferry_core::model::EventKind::Replica);
    assert_eq!(all[6].message, "state: progressing");
    let page = store.events_after(d.id, 3, 2).await.unwrap();
    assert_eq!(
        page.iter()
            .map(|e| (e.seq, e.message.as_str()))
            .collect::<Vec<_>>(),
        [(4, "replica 2 healthy"), (5, "replica 3 healthy")]
    );
    assert!(store.events_after(d.id, 7, 10).await.unwrap().is_empty());
    assert!(matches!(
        store
            .append_event(d.id + 99, ferry_core::model::EventKind::State, "y", 1)
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));

    // concurrent appends still get distinct, gapless seqs
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let id = other.id;
        tasks.push(tokio::spawn(async move {
            store
                .append_event(
                    id,
                    ferry_core::model::EventKind::Health,
                    &format!("c{i}"),
                    100,
                )
                .await
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (3..=10).collect::<Vec<i64>>());
}

pub async fn previous_succeeded_version_skips_failures(store: Store, _url: String) {
    assert_eq!(
        store
            .previous_succeeded_version("shop", "prod", "1.0.0")
            .await
            .unwrap(),
        None
    );
    finished(
        &store,
        "shop",
        "prod",
        "1.0.0",
        DeploymentState::Succeeded,
        100,
    )
    .await;
    finished(
        &store,
        "shop",
        "prod",
        "1.1.0",
        DeploymentState::Succeeded,
        200,
    )
    .await;
    finished(
        &store,
        "shop",
        "prod",
        "1.2.0",
        DeploymentState::RolledBack,
        300,
    )
    .await;
    finished(
        &store,
        "shop",
        "prod",
        "1.3.0",
        DeploymentState::Failed,
        400,
    )
    .await;
    finished(
        &store,
        "shop",
        "staging",
        "1.5.0",
        DeploymentState::Succeeded,
        450,
    )
    .await;
    finished(
        &store,
        "shop",
        "prod",
        "1.4.0",
        DeploymentState::Succeeded,
        500,
    )
    .await;
    let pending = store
        .create_deployment(new_deployment("shop", "prod", "1.6.0", 600))
        .await
        .unwrap();
    assert_eq!(pending.state, DeploymentState::Pending);

    let prev = |cur: &'static str| {
        let store = store.clone();
        async move {
            store
                .previous_succeeded_version("shop", "prod", cur)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        prev("1.4.0").await.as_deref(),
        Some("1.1.0"),
        "skips rolled-back 1.2.0 and failed 1.3.0"
    );
    assert_eq!(prev("1.1.0").await.as_deref(), Some("1.4.0"));
    assert_eq!(prev("9.9.9").await.as_deref(), Some("1.4.0"));

    // a rollback deployment back to 1.1.0 that succeeds makes 1.1.0 current; the previous is 1.4.0
    let mut rb = new_deployment("shop", "prod", "1.1.0", 700);
    rb.kind = DeploymentKind::Rollback;
    let rb = store.create_deployment(rb).await.unwrap();
    let rb = store
        .transition(to(&rb, DeploymentState::Progressing, 701))
        .await
        .unwrap();
    let mut t = to(&rb, DeploymentState::Succeeded, 702);
    t.set_current_version = Some("1.1.0".into());
    store.transition(t).await.unwrap();
    assert_eq!(prev("1.1.0").await.as_deref(), Some("1.4.0"));
    assert_eq!(
        store
            .env_current("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .current_version
            .as_deref(),
        Some("1.1.0")
    );

    assert!(
        store
            .version_succeeded_in("shop", "prod", "1.0.0")
            .await
            .unwrap()
    );
    assert!(
        !store
            .version_succeeded_in("shop", "prod", "1.2.0")
            .await
            .unwrap()
    );
    assert!(
        !store
            .version_succeeded_in("shop", "prod", "1.3.0")
            .await
            .unwrap()
    );
    assert!(
        !store
            .version_succeeded_in("shop", "prod", "1.5.0")
            .await
            .unwrap()
    );
    assert!(
        store
            .version_succeeded_in("shop", "staging", "1.5.0")
            .await
            .unwrap()
    );
    assert!(
        !store
            .version_succeeded_in("shop", "prod", "1.6.0")
            .await
            .unwrap()
    );

    // the change that put a version into service: its newest succeeded deployment that was
    // not a rollback (1.1.0's is deployment 2, not the later rollback to it)
    let last = |version: &'static str, env: &'static str| {
        let store = store.clone();
        async move {
            store
                .last_succeeded_change("shop", env, version)
                .await
                .unwrap()
                .map(|d| (d.version, d.kind, d.state, d.created_at_ms))
        }
    };
    assert_eq!(
        last("1.1.0", "prod").await,
        Some((
            "1.1.0".to_string(),
            DeploymentKind::Deploy,
            DeploymentState::Succeeded,
            200
        ))
    );
    assert_eq!(last("1.2.0", "prod").await, None, "rolled back");
    assert_eq!(last("1.6.0", "prod").await, None, "pending");
    assert_eq!(last("1.5.0", "prod").await, None, "another environment's");
    assert!(last("1.5.0", "staging").await.is_some());
}

/// What a controller pass reads once: every environment's newest deployment, current
/// version and its manifest revision in one statement; the apps' revisions; one replica.
pub async fn env_states_read_every_environment_at_once(store: Store, _url: String) {
    let applied = store
        .apply_manifest(manifest("shop", "app: shop", 1))
        .await
        .unwrap();
    // prod: 1.0 succeeded at revision 3, then 2.0 failed: the newest is the failure,
    // the current version still 1.0 with its revision.
    let mut first = new_deployment("shop", "prod", "1.0", 10);
    first.manifest_revision = 3;
    let first = store.create_deployment(first).await.unwrap();
    let first = store
        .transition(to(&first, DeploymentState::Progressing, 11))
        .await
        .unwrap();
    let mut t = to(&first, DeploymentState::Succeeded, 12);
    t.set_current_version = Some("1.0".into());
    store.transition(t).await.unwrap();
    let failed = finished(&store, "shop", "prod", "2.0", DeploymentState::Failed, 20).await;
    // staging: only a deployment that waits; dev: only a failure (nothing to say).
    let waiting = store
        .create_deployment(new_deployment("shop", "staging", "1.0", 30))
        .await
        .unwrap();
    finished(&store, "shop", "dev", "0.1", DeploymentState::Failed, 40).await;

    let states = store.env_states().await.unwrap();
    let keys: Vec<_> = states.keys().cloned().collect();
    assert_eq!(
        keys,
        vec![
            ("shop".to_string(), "prod".to_string()),
            ("shop".to_string(), "staging".to_string())
        ]
    );
    let prod = &states[&("shop".to_string(), "prod".to_string())];
    assert_eq!(prod.latest.as_ref().map(|d| d.id), Some(failed.id));
    assert!(prod.active().is_none(), "the newest has finished");
    assert_eq!(prod.current_version(), Some("1.0"));
    assert_eq!(prod.current.as_ref().unwrap().deployment_id, Some(first.id));
    assert_eq!(prod.current_revision, Some(3));
    let staging = &states[&("shop".to_string(), "staging".to_string())];
    assert_eq!(staging.active().map(|d| d.id), Some(waiting.id));
    assert_eq!(staging.current, None);
    assert_eq!(staging.current_revision, None);

    let revisions = store.app_revisions().await.unwrap();
    assert_eq!(
        revisions.get("shop"),
        Some(&ferry_store::AppRevision::of(&applied))
    );

    let r = replica("shop.prod.web.1.0.000001", "shop", "prod", "web", 50);
    store.insert_replica(&r).await.unwrap();
    assert_eq!(store.get_replica(&r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(
        store.get_replica("shop.prod.web.1.0.nope").await.unwrap(),
        None
    );
}

pub async fn replicas_lifecycle_and_filters(store: Store, _url: String) {
    let mut a = replica("shop-prod-api-1", "shop", "prod", "api", 1);
    a.deployment_id = Some(7);
    store.insert_replica(&a).await.unwrap();
    store
        .insert_replica(&replica("shop-prod-web-1", "shop", "prod", "web", 2))
        .await
        .unwrap();
    store
        .insert_replica(&replica("shop-qa-api-1", "shop", "qa", "api", 3))
        .await
        .unwrap();
    store
        .insert_replica(&replica("blog-prod-api-1", "blog", "prod", "api", 4))
        .await
        .unwrap();
    assert!(matches!(
        store.insert_replica(&a).await.unwrap_err(),
        StoreError::Conflict(_)
    ));

    let ids = |v: Vec<ReplicaRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_replicas(None, None).await.unwrap()),
        [
            "blog-prod-api-1",
            "shop-prod-api-1",
            "shop-prod-web-1",
            "shop-qa-api-1"
        ]
    );
    assert_eq!(
        ids(store.list_replicas(Some("shop"), None).await.unwrap()),
        ["shop-prod-api-1", "shop-prod-web-1", "shop-qa-api-1"]
    );
    assert_eq!(
        ids(store
            .list_replicas(Some("shop"), Some("prod"))
            .await
            .unwrap()),
        ["shop-prod-api-1", "shop-prod-web-1"]
    );
    assert_eq!(
        ids(store.list_replicas(None, Some("prod")).await.unwrap()),
        ["blog-prod-api-1", "shop-prod-api-1", "shop-prod-web-1"]
    );
    assert!(
        store
            .list_replicas(Some("nope"), None)
            .await
            .unwrap()
            .is_empty()
    );

    // process identity: u64 start times round-trip, including ones above i64::MAX
    store
        .set_replica_process("shop-prod-api-1", 4242, 1_700_000_000_123)
        .await
        .unwrap();
    store
        .set_replica_process("shop-qa-api-1", u32::MAX, u64::MAX - 1)
        .await
        .unwrap();
    store
        .set_replica_draining("shop-prod-api-1", 50)
        .await
        .unwrap();
    store
        .set_replica_draining("shop-prod-api-1", 60)
        .await
        .unwrap(); // idempotent
    let all = store.list_replicas(Some("shop"), None).await.unwrap();
    let api = &all[0];
    assert_eq!(
        (
            api.pid,
            api.start_time,
            api.draining,
            api.deployment_id,
            api.port
        ),
        (Some(4242), Some(1_700_000_000_123), true, Some(7), 41000)
    );
    assert_eq!(
        api,
        &ReplicaRecord {
            pid: Some(4242),
            start_time: Some(1_700_000_000_123),
            draining: true,
            ..a.clone()
        }
    );
    assert!(!all[1].draining);
    assert_eq!(
        (all[2].pid, all[2].start_time),
        (Some(u32::MAX), Some(u64::MAX - 1))
    );

    assert!(matches!(
        store.set_replica_process("ghost", 1, 1).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store.set_replica_draining("ghost", 1).await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    store.delete_replica("shop-prod-api-1").await.unwrap();
    store.delete_replica("shop-prod-api-1").await.unwrap(); // idempotent
    assert_eq!(
        ids(store
            .list_replicas(Some("shop"), Some("prod"))
            .await
            .unwrap()),
        ["shop-prod-web-1"]
    );
}

pub async fn tokens_find_touch_count(store: Store, _url: String) {
    assert_eq!(store.count_tokens().await.unwrap(), 0);
    let hash = "a".repeat(64);
    let id = store
        .insert_token("admin", &hash, "admin", 10)
        .await
        .unwrap();
    let id2 = store
        .insert_token("ci", &"b".repeat(64), "deployer", 11)
        .await
        .unwrap();
    assert_ne!(id, id2);
    assert_eq!(store.count_tokens().await.unwrap(), 2);
    assert!(matches!(
        store
            .insert_token("dup", &hash, "viewer", 12)
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert_eq!(store.count_tokens().await.unwrap(), 2);

    let t = store.find_token(&hash).await.unwrap().unwrap();
    assert_eq!(
        (
            t.id,
            t.name.as_str(),
            t.role.as_str(),
            t.created_at_ms,
            t.last_used_at_ms
        ),
        (id, "admin", "admin", 10, None)
    );
    assert_eq!(store.find_token(&"c".repeat(64)).await.unwrap(), None);

    store.touch_token(id, 99).await.unwrap();
    assert_eq!(
        store
            .find_token(&hash)
            .await
            .unwrap()
            .unwrap()
            .last_used_at_ms,
        Some(99)
    );
    assert!(matches!(
        store.touch_token(id + id2 + 100, 1).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
}

pub async fn concurrent_transitions_exactly_one_wins(store: Store, _url: String) {
    for round in 0..20 {
        let d = store
            .create_deployment(new_deployment(
                "shop",
                "prod",
                &format!("1.0.{round}"),
                round,
            ))
            .await
            .unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for (i, state) in [DeploymentState::Progressing, DeploymentState::Superseded]
            .into_iter()
            .enumerate()
        {
            let store = store.clone();
            let barrier = barrier.clone();
            let mut t = to(&d, state, 1000 + round);
            t.set_current_version = Some(format!("winner-{i}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.transition(t).await
            }));
        }
        let mut wins = Vec::new();
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(rec) => wins.push(rec),
                Err(StoreError::Conflict(_)) => conflicts += 1,
                Err(other) => panic!("round {round}: unexpected error {other:?}"),
            }
        }
        assert_eq!((wins.len(), conflicts), (1, 1), "round {round}");
        let won = &wins[0];
        assert_eq!(won.row_version, 2);
        assert_eq!(
            store.get_deployment(d.id).await.unwrap().as_ref(),
            Some(won)
        );
        let events = store.events_after(d.id, 0, 10).await.unwrap();
        assert_eq!(events.len(), 2, "round {round}: only the winner's event");
        let env = store.env_current("shop", "prod").await.unwrap().unwrap();
        assert_eq!(env.deployment_id, Some(d.id));
        let winner = if won.state == DeploymentState::Progressing {
            "winner-0"
        } else {
            "winner-1"
        };
        assert_eq!(env.current_version.as_deref(), Some(winner));
    }
}

pub async fn corrupt_rows_are_reported(store: Store, _url: String) {
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    sqlx::query("UPDATE deployments SET state = 'exploded' WHERE id = $1")
        .bind(d.id)
        .execute(store.pool())
        .await
        .unwrap();
    match store.get_deployment(d.id).await.unwrap_err() {
        StoreError::Corrupt(msg) => assert!(
            msg.contains(&format!("deployment {}", d.id)) && msg.contains("exploded"),
            "{msg}"
        ),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

pub async fn users_create_get_list_disable_password(store: Store, _url: String) {
    assert!(store.list_users().await.unwrap().is_empty());
    let alice = store.create_user("alice", "$argon2id$a", 10).await.unwrap();
    assert_eq!(
        (
            alice.name.as_str(),
            alice.disabled,
            alice.created_at_ms,
            alice.updated_at_ms
        ),
        ("alice", false, 10, 10)
    );
    assert!(matches!(
        store
            .create_user("alice", "$argon2id$b", 11)
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    store.create_user("bob", "$argon2id$b", 12).await.unwrap();
    let names: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    // the hash is never serialised nor debug-printed
    let json = serde_json::to_string(&alice).unwrap();
    assert!(!json.contains("argon2"), "{json}");
    assert!(!format!("{alice:?}").contains("argon2"));

    let off = store.set_user_disabled("alice", true, 20).await.unwrap();
    assert!(off.disabled);
    assert_eq!(off.updated_at_ms, 20);
    assert!(store.get_user("alice").await.unwrap().unwrap().disabled);
    assert!(
        !store
            .set_user_disabled("alice", false, 21)
            .await
            .unwrap()
            .disabled
    );
    assert!(matches!(
        store
            .set_user_disabled("nobody", true, 1)
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));

    store
        .set_user_password("bob", "$argon2id$new", 30)
        .await
        .unwrap();
    let bob = store.get_user("bob").await.unwrap().unwrap();
    assert_eq!(
        (bob.password_hash.as_str(), bob.updated_at_ms),
        ("$argon2id$new", 30)
    );
    assert!(matches!(
        store.set_user_password("nobody", "x", 1).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert_eq!(store.get_user("nobody").await.unwrap(), None);
}

pub async fn roles_and_bindings(store: Store, _url: String) {
    let role = RoleRecord {
        name: "releaser".into(),
        description: "ships".into(),
        permissions: vec!["deploy".into(), "view".into()],
        created_at_ms: 5,
    };
    store.create_role(&role).await.unwrap();
    assert!(matches!(
        store.create_role(&role).await.unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert_eq!(
        store.get_role("releaser").await.unwrap(),
        Some(role.clone())
    );
    assert_eq!(store.list_roles().await.unwrap(), vec![role.clone()]);
    assert_eq!(store.get_role("nope").await.unwrap(), None);

    // bindings need an existing user
    let bind = |subject: &str, role: &str, app: Option<&str>, envs: &[&str]| NewBinding {
        subject: subject.into(),
        role: role.into(),
        app: app.map(String::from),
        envs: envs.iter().map(|e| e.to_string()).collect(),
        created_by: "user:root".into(),
        now_ms: 7,
    };
    assert!(matches!(
        store
            .create_binding(bind("ghost", "viewer", None, &[]))
            .await
            .unwrap_err(),
        StoreError::NotFound(_)
    ));
    store.create_user("alice", "h", 1).await.unwrap();
    store.create_user("bob", "h", 1).await.unwrap();
    let b1 = store
        .create_binding(bind("alice", "releaser", Some("shop"), &["dev", "staging"]))
        .await
        .unwrap();
    assert_eq!(
        (
            b1.subject.as_str(),
            b1.role.as_str(),
            b1.app.as_deref(),
            b1.envs.clone()
        ),
        (
            "alice",
            "releaser",
            Some("shop"),
            vec!["dev".to_string(), "staging".to_string()]
        )
    );
    let b2 = store
        .create_binding(bind("bob", "viewer", None, &[]))
        .await
        .unwrap();
    assert!(b2.id > b1.id);
    assert_eq!(b2.app, None);
    assert!(b2.envs.is_empty());
    assert_eq!(
        store.list_bindings(None).await.unwrap(),
        vec![b1.clone(), b2.clone()]
    );
    assert_eq!(
        store.list_bindings(Some("alice")).await.unwrap(),
        vec![b1.clone()]
    );
    assert_eq!(store.get_binding(b2.id).await.unwrap(), Some(b2.clone()));

    // a bound role can't be deleted; nothing changes
    assert!(matches!(
        store.delete_role("releaser", 8).await.unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert!(store.get_role("releaser").await.unwrap().is_some());
    assert_eq!(store.delete_binding(b1.id).await.unwrap(), b1);
    assert!(matches!(
        store.delete_binding(b1.id).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    // nor while an unrevoked, unexpired token uses it
    let t = store
        .create_token(token("ci", "f", "api", None, "releaser", None))
        .await
        .unwrap();
    assert!(matches!(
        store.delete_role("releaser", 8).await.unwrap_err(),
        StoreError::Conflict(_)
    ));
    store.revoke_token(t.id, 9).await.unwrap();
    store.delete_role("releaser", 10).await.unwrap();
    assert_eq!(store.get_role("releaser").await.unwrap(), None);
    assert!(matches!(
        store.delete_role("releaser", 10).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
}

fn token(
    name: &str,
    hash_char: &str,
    kind: &str,
    owner: Option<&str>,
    role: &str,
    expires_at_ms: Option<i64>,
) -> NewToken {
    NewToken {
        name: name.into(),
        token_hash: hash_char.repeat(64),
        kind: kind.parse().expect("a deployment kind"),
        owner: owner.map(String::from),
        role: role.into(),
        app: Some("shop".into()),
        envs: vec!["staging".into()],
        expires_at_ms,
        now_ms: 100,
    }
}

pub async fn ended_sessions_are_purged(store: Store, _url: String) {
    let live = store
        .create_token(token(
            "s1",
            "a",
            "session",
            Some("alice"),
            "viewer",
            Some(5_000),
        ))
        .await
        .unwrap();
    let expired = store
        .create_token(token(
            "s2",
            "b",
            "session",
            Some("alice"),
            "viewer",
            Some(1_000),
        ))
        .await
        .unwrap();
    let revoked = store
        .create_token(token("s3", "c", "session", Some("bob"), "viewer", None))
        .await
        .unwrap();
    store.revoke_token(revoked.id, 1_500).await.unwrap();
    let expired_api = store
        .create_token(token("ci", "d", "api", None, "deployer", Some(1_000)))
        .await
        .unwrap();
    assert_eq!(store.purge_sessions(2_000).await.unwrap(), 2);
    let left: Vec<i64> = store
        .list_tokens(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(
        left,
        [live.id, expired_api.id],
        "{expired:?} and {revoked:?} are gone"
    );
    assert_eq!(store.purge_sessions(2_000).await.unwrap(), 0);
}

pub async fn tokens_scoped_expiring_revocable(store: Store, _url: String) {
    let ci = store
        .create_token(token("ci", "a", "api", None, "deployer", Some(1_000)))
        .await
        .unwrap();
    assert_eq!(
        (
            ci.name.as_str(),
            ci.kind.as_str(),
            ci.owner.as_deref(),
            ci.role.as_str(),
            ci.app.as_deref(),
            ci.envs.clone(),
            ci.created_at_ms,
            ci.expires_at_ms,
            ci.revoked_at_ms,
            ci.last_used_at_ms
        ),
        (
            "ci",
            "api",
            None,
            "deployer",
            Some("shop"),
            vec!["staging".to_string()],
            100,
            Some(1_000),
            None,
            None
        )
    );
    let session = store
        .create_token(token(
            "session",
            "b",
            "session",
            Some("alice"),
            "viewer",
            None,
        ))
        .await
        .unwrap();
    let mine = store
        .create_token(token("mine", "c", "api", Some("alice"), "viewer", None))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_token(token("dup", "a", "api", None, "viewer", None))
            .await
            .unwrap_err(),
        StoreError::Conflict(_)
    ));
    assert_eq!(
        store.find_token(&"a".repeat(64)).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(
        store.get_token(session.id).await.unwrap(),
        Some(session.clone())
    );
    assert_eq!(store.get_token(9_999).await.unwrap(), None);
    let ids = |v: Vec<ferry_store::TokenRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_tokens(None, None).await.unwrap()),
        [ci.id, session.id, mine.id]
    );
    assert_eq!(
        ids(store.list_tokens(Some("alice"), None).await.unwrap()),
        [session.id, mine.id]
    );
    assert_eq!(
        ids(store.list_tokens(Some("alice"), Some("api")).await.unwrap()),
        [mine.id]
    );

    let revoked = store.revoke_token(ci.id, 500).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(500));
    // idempotent: the first revocation time stays
    assert_eq!(
        store.revoke_token(ci.id, 600).await.unwrap().revoked_at_ms,
        Some(500)
    );
    assert_eq!(
        store
            .find_token(&"a".repeat(64))
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        Some(500)
    );
    assert!(matches!(
        store.revoke_token(9_999, 1).await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    // admin rotation: every other admin token is revoked
    let old = store
        .create_token(token("admin", "d", "admin", None, "admin", None))
        .await
        .unwrap();
    let new = store
        .create_token(token("admin", "e", "admin", None, "admin", None))
        .await
        .unwrap();
    assert_eq!(
        store
            .revoke_tokens_of_kind_except("admin", &"e".repeat(64), 700)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .get_token(old.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        Some(700)
    );
    assert_eq!(
        store
            .get_token(new.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        None
    );
    assert_eq!(
        store
            .get_token(mine.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        None
    );
}

fn entry(
    at_ms: i64,
    actor: &str,
    action: &str,
    app: Option<&str>,
    env: Option<&str>,
) -> AuditEntry {
    AuditEntry {
        at_ms,
        actor: actor.into(),
        source: Some("127.0.0.1".into()),
        action: action.into(),
        app: app.map(String::from),
        env: env.map(String::from),
        target: None,
        summary: format!("{action} by {actor}"),
        reason: None,
        outcome: "ok".into(),
    }
}

pub async fn audit_appends_chain_and_queries(store: Store, _url: String) {
    assert_eq!(store.audit_head().await.unwrap(), None);
    let r1 = store
        .append_audit(entry(
            10,
            "user:alice",
            "deploy",
            Some("shop"),
            Some("prod"),
        ))
        .await
        .unwrap();
    assert_eq!((r1.seq, r1.prev_hash.as_str()), (1, audit::GENESIS));
    let mut no_source = entry(20, "token:ci", "apply", Some("shop"), None);
    no_source.source = None;
    let r2 = store.append_audit(no_source).await.unwrap();
    assert_eq!((r2.seq, r2.prev_hash.as_str()), (2, r1.hash.as_str()));
    let r3 = store
        .append_audit(entry(30, "user:bob", "users.create", None, None))
        .await
        .unwrap();
    assert_eq!(
        store.audit_head().await.unwrap(),
        Some((3, r3.hash.clone()))
    );

    let all = store.audit_records(0, 100).await.unwrap();
    assert_eq!(all, vec![r1.clone(), r2.clone(), r3.clone()]);
    assert_eq!(audit::verify(&all).unwrap().count, 3);
    assert_eq!(store.audit_records(1, 1).await.unwrap(), vec![r2.clone()]);

    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery {
            limit: 100,
            ..AuditQuery::default()
        };
        f(&mut q);
        q
    };
    let seqs = |v: Vec<audit::AuditRecord>| v.into_iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.query_audit(&q(&|_| {})).await.unwrap()),
        [3, 2, 1]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| q.app = Some("shop".into())))
                .await
                .unwrap()
        ),
        [2, 1]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| q.env = Some("prod".into())))
                .await
                .unwrap()
        ),
        [1]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| q.actor = Some("user:bob".into())))
                .await
                .unwrap()
        ),
        [3]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| q.action = Some("apply".into())))
                .await
                .unwrap()
        ),
        [2]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| {
                    q.since_ms = Some(20);
                    q.until_ms = Some(30)
                }))
                .await
                .unwrap()
        ),
        [2]
    );
    assert_eq!(
        seqs(
            store
                .query_audit(&q(&|q| q.before_seq = Some(3)))
                .await
                .unwrap()
        ),
        [2, 1]
    );
    assert_eq!(
        seqs(store.query_audit(&q(&|q| q.limit = 1)).await.unwrap()),
        [3]
    );
}

pub async fn concurrent_audit_appends_make_one_chain(store: Store, _url: String) {
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append_audit(entry(
                    i,
                    &format!("user:u{i}"),
                    "deploy",
                    Some("shop"),
                    None,
                ))
                .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let all = store.audit_records(0, 1_000).await.unwrap();
    assert_eq!(all.len(), 40);
    let head = audit::verify(&all).unwrap();
    assert_eq!(head.count, 40);
}

pub async fn audit_checkpoints_are_stored(store: Store, _url: String) {
    assert_eq!(store.latest_audit_checkpoint().await.unwrap(), None);
    let key = [7u8; 32];
    let c1 = audit::sign_checkpoint(&key, 1, "aa", 10);
    let c2 = audit::sign_checkpoint(&key, 2, "bb", 20);
    let id1 = store.insert_audit_checkpoint(&c1).await.unwrap();
    let id2 = store.insert_audit_checkpoint(&c2).await.unwrap();
    assert!(id2 > id1);
    let latest = store.latest_audit_checkpoint().await.unwrap().unwrap();
    assert_eq!((latest.id, &latest.checkpoint), (id2, &c2));
    assert!(audit::check_checkpoint(&key, &latest.checkpoint));
    let listed: Vec<_> = store
        .list_audit_checkpoints(10)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.checkpoint)
        .collect();
    assert_eq!(listed, vec![c2, c1]);
}

// ---------------------------------------------------------------------------------------------
// engines
// ---------------------------------------------------------------------------------------------

/// A fresh SQLite database file in its own temporary directory.
async fn fresh_sqlite() -> (Store, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("ferry.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let store = Store::open(&url).await.unwrap();
    (store, url, dir)
}

/// Where the PostgreSQL server for these tests is (its `postgres` database):
/// `FERRY_TEST_POSTGRES_URL`, by default the local server's socket as the current user.
fn postgres_admin_url() -> String {
    std::env::var("FERRY_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        let user = std::process::Command::new("id")
            .arg("-un")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        format!("postgres://{user}@localhost/postgres?host=/var/run/postgresql")
    })
}

/// What this test process keeps on the PostgreSQL server. Creating a database copies about
/// 8 MB and dropping one checkpoints the whole server, and migrating one takes seconds: a
/// second or more each on a busy machine. So the first PostgreSQL test migrates a template
/// database (`Store::open` on an empty database: the whole migration path, once per run);
/// a test gets a copy of it (`CREATE DATABASE … TEMPLATE`, by default `STRATEGY WAL_LOG` on
/// PostgreSQL 15, measured faster here than `FILE_COPY`, which checkpoints twice) or, when
/// an earlier test has ended, that test's database brought back to the template's state:
/// renamed (so nothing of the earlier test can connect to it again), every table emptied
/// and the migrations' own rows and sequences restored, in one transaction. A test's
/// database is its own while it runs: tests stay isolated from each other and from other
/// test processes on the same server, down to `NOTIFY`, which reaches a whole database.
///
/// Every database of this process is named `ferry_ct_{owner}_…`. A connection kept by a
/// thread of its own holds a session advisory lock on `owner` for as long as the process
/// lives (the server lets it go when the process ends, however it ends): databases whose
/// owner's lock is free belong to a process that is gone, and the next run drops them.
struct PostgresRun {
    admin_url: String,
    owner: String,
    template: String,
    /// Brings a used copy back to the template's state (one transaction).
    reset: String,
    /// Databases whose tests have ended, to reuse.
    ended: std::sync::Mutex<Vec<String>>,
    next: std::sync::atomic::AtomicU32,
}

/// The first key of the owners' advisory locks (the second is the owner's `hashtext`).
const OWNER_LOCK: i32 = 0x4665_7272; // "Ferr"
const DATABASE_PREFIX: &str = "ferry_ct_";
/// The schema, in the template and its copies, that keeps the rows the migrations wrote.
const PRISTINE: &str = "ferry_contract_pristine";

/// A test's database, handed back to the run when the guard goes.
struct PostgresDatabase {
    run: &'static PostgresRun,
    name: String,
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        if name.is_empty() {
            return; // reused already
        }
        self.run
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name);
    }
}

/// This process's [`PostgresRun`], set up by the first PostgreSQL test; `None` when no
/// server answers.
async fn postgres_run() -> Option<&'static PostgresRun> {
    static RUN: tokio::sync::OnceCell<Option<PostgresRun>> = tokio::sync::OnceCell::const_new();
    RUN.get_or_init(start_postgres_run).await.as_ref()
}

async fn start_postgres_run() -> Option<PostgresRun> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let admin_url = postgres_admin_url();
    let mut admin = match sqlx::AnyConnection::connect(&admin_url).await {
        Ok(conn) => conn,
        Err(e) => {
            let required = std::env::var("FERRY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "FERRY_REQUIRE_POSTGRES=1 but {admin_url} refused: {e}"
            );
            eprintln!("SKIPPED: no PostgreSQL at {admin_url} ({e})");
            return None;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let owner = format!("p{}n{nanos}", std::process::id());
    hold_owner_lock(&admin_url, &owner);

    let template = format!("{DATABASE_PREFIX}{owner}_template");
    execute(&mut admin, &format!("CREATE DATABASE {template}")).await;
    let template_url = database_url(&admin_url, &template);
    Store::open(&template_url).await.unwrap().close().await;

    let mut conn = sqlx::AnyConnection::connect(&template_url).await.unwrap();
    let reset = reset_script(&mut conn).await;
    conn.close().await.unwrap();
    Some(PostgresRun {
        admin_url,
        owner,
        template,
        reset,
        ended: std::sync::Mutex::default(),
        next: std::sync::atomic::AtomicU32::new(0),
    })
}

/// Keeps what the migrations wrote aside in the template (and so in every copy), and
/// returns the script that brings a copy back to that state: `DELETE` from every table,
/// children before the tables they reference (emptying a few small tables: tens of
/// milliseconds, where `TRUNCATE`, which makes new files for every table and index, took
/// about a second here), the migrations' rows written again, every sequence where it was.
async fn reset_script(conn: &mut sqlx::AnyConnection) -> String {
    use sqlx::Row;
    let mut tables: Vec<String> = sqlx::query(
        "SELECT quote_ident(tablename) FROM pg_tables \
         WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    let references: Vec<(String, String)> = sqlx::query(
        "SELECT quote_ident(child.relname), quote_ident(parent.relname) FROM pg_constraint k \
         JOIN pg_class child ON child.oid = k.conrelid \
         JOIN pg_class parent ON parent.oid = k.confrelid \
         WHERE k.contype = 'f' AND child.relnamespace = 'public'::regnamespace \
         AND child.oid <> parent.oid",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    // Emptying order: a table once no other table left references it.
    let mut order = Vec::new();
    while !tables.is_empty() {
        let free = tables
            .iter()
            .position(|table| {
                !references
                    .iter()
                    .any(|(child, parent)| parent == table && tables.contains(child))
            })
            .unwrap_or_else(|| panic!("foreign keys in a cycle among {tables:?}"));
        order.push(tables.remove(free));
    }
    let mut reset = String::from("BEGIN;\n");
    for table in &order {
        reset.push_str(&format!("DELETE FROM {table};\n"));
    }
    execute(conn, &format!("CREATE SCHEMA {PRISTINE}")).await;
    for table in order.iter().rev() {
        let rows: i64 = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .get(0);
        if rows > 0 {
            execute(
                conn,
                &format!("CREATE TABLE {PRISTINE}.{table} AS TABLE {table}"),
            )
            .await;
            reset.push_str(&format!(
                "INSERT INTO {table} OVERRIDING SYSTEM VALUE SELECT * FROM {PRISTINE}.{table};\n"
            ));
        }
    }
    let sequences: Vec<String> = sqlx::query(
        "SELECT format('SELECT setval(%L, %s, %L);', quote_ident(sequencename), \
         coalesce(last_value, start_value), last_value IS NOT NULL) \
         FROM pg_sequences WHERE schemaname = 'public'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    for sequence in sequences {
        reset.push_str(&format!("{sequence}\n"));
    }
    reset.push_str("COMMIT;");
    reset
}

async fn execute(conn: &mut sqlx::AnyConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Takes the advisory lock on `owner` on a connection that a thread of its own keeps until
/// the process exits (returning once the lock is held); that thread then drops the
/// databases of ended runs.
fn hold_owner_lock(admin_url: &str, owner: &str) {
    let (admin_url, owner) = (admin_url.to_string(), owner.to_string());
    let (held, is_held) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::AnyConnection::connect(&admin_url).await.unwrap();
            sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))::text")
                .bind(OWNER_LOCK)
                .bind(&owner)
                .execute(&mut conn)
                .await
                .unwrap();
            held.send(()).unwrap();
            drop_databases_of_ended_runs(&mut conn, &owner).await;
            std::future::pending::<()>().await;
        });
    });
    is_held
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the owner's advisory lock on PostgreSQL");
}

/// Drops the databases of test processes that have ended (their owner's lock is free).
async fn drop_databases_of_ended_runs(admin: &mut sqlx::AnyConnection, owner: &str) {
    use sqlx::Row;
    let names: Vec<String> =
        sqlx::query("SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)")
            .bind(DATABASE_PREFIX)
            .fetch_all(&mut *admin)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
    let mut owners: Vec<&str> = names
        .iter()
        .filter_map(|name| name.strip_prefix(DATABASE_PREFIX)?.split('_').next())
        .filter(|other| *other != owner)
        .collect();
    owners.sort_unstable();
    owners.dedup();
    for other in owners {
        let ended: bool = sqlx::query("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(OWNER_LOCK)
            .bind(other)
            .fetch_one(&mut *admin)
            .await
            .unwrap()
            .get(0);
        if !ended {
            continue;
        }
        let prefix = format!("{DATABASE_PREFIX}{other}_");
        for name in names.iter().filter(|name| name.starts_with(&prefix)) {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                .execute(&mut *admin)
                .await;
        }
        sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
            .bind(OWNER_LOCK)
            .bind(other)
            .execute(&mut *admin)
            .await
            .unwrap();
    }
}

/// A freshly migrated store in a PostgreSQL database of its own (see [`PostgresRun`]);
/// `None` (the test is skipped, and says so) when no server answers, unless
/// `FERRY_REQUIRE_POSTGRES=1` (as in `.ci/run`).
async fn fresh_postgres() -> Option<(Store, String, PostgresDatabase)> {
    let run = postgres_run().await?;
    let ended = run
        .ended
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop();
    Some(run.database(ended).await)
}

impl PostgresRun {
    /// A database for a test: `ended` (an ended test's) reset, or a new copy of the template.
    async fn database(&'static self, ended: Option<String>) -> (Store, String, PostgresDatabase) {
        use sqlx::Connection;
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{DATABASE_PREFIX}{}_{n}", self.owner);
        let url = database_url(&self.admin_url, &name);
        let mut admin = sqlx::AnyConnection::connect(&self.admin_url).await.unwrap();
        match ended {
            None => {
                let create = format!("CREATE DATABASE {name} TEMPLATE {}", self.template);
                execute(&mut admin, &create).await;
            }
            Some(old) => {
                // Whatever the earlier test left connected goes; under its new name the
                // database is out of reach of anything that still knows the old one.
                let rename = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{old}';
                     ALTER DATABASE {old} RENAME TO {name}"
                );
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
                while let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(rename.clone()))
                    .execute(&mut admin)
                    .await
                {
                    // a connection of the earlier test still closing ("being accessed by
                    // other users")
                    assert!(std::time::Instant::now() < deadline, "{rename}: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
                execute(&mut conn, &self.reset).await;
                conn.close().await.unwrap();
            }
        }
        admin.close().await.unwrap();
        let guard = PostgresDatabase { run: self, name };
        // Opening runs the migrator as a server does (nothing left to apply).
        let store = Store::open(&url).await.unwrap();
        (store, url, guard)
    }
}

/// Every table's rows (as one digest each) and every sequence's position.
async fn postgres_contents(url: &str) -> Vec<String> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query(
        "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    let mut contents = Vec::new();
    for table in tables {
        let digest: String = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') \
             FROM {table} t"
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
        contents.push(format!("{table}: {digest}"));
    }
    let sequences: Vec<String> = sqlx::query(
        "SELECT sequencename || ' ' || coalesce(last_value::text, 'unused') FROM pg_sequences \
         WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect();
    contents.extend(sequences);
    conn.close().await.unwrap();
    contents
}

/// The harness itself: a database reused after a test holds what a new copy of the
/// template holds, to the row and the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reused_database_holds_what_a_new_copy_holds() {
    let Some(run) = postgres_run().await else {
        return;
    };
    let (store, used_url, mut used) = run.database(None).await;
    store
        .apply_manifest(manifest("shop", "app: shop", 1))
        .await
        .unwrap();
    finished(
        &store,
        "shop",
        "prod",
        "1.0.0",
        DeploymentState::Succeeded,
        10,
    )
    .await;
    store
        .append_audit(entry(20, "user:alice", "deploy", Some("shop"), None))
        .await
        .unwrap();
    store.close().await;
    let (_copy_store, copy_url, _copy) = run.database(None).await;
    let fresh = postgres_contents(&copy_url).await;
    let dirty = postgres_contents(&used_url).await;
    assert_ne!(dirty, fresh, "the test wrote nothing");
    let (_reused_store, reused_url, _reused) =
        run.database(Some(std::mem::take(&mut used.name))).await;
    assert_eq!(postgres_contents(&reused_url).await, fresh);
}

/// `admin_url` with its database name replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    if query.is_empty() {
        format!("{server}/{name}")
    } else {
        format!("{server}/{name}?{query}")
    }
}

pub async fn secrets_put_get_list_delete_reencrypt(store: Store, _url: String) {
    // versions start at 1 and bump per set; `seal` sees the version it binds
    let a = store
        .put_secret("shop", "prod", "DB_PASSWORD", "fp1", "alice", 1000, |v| {
            Ok(format!("ct-{v}"))
        })
        .await
        .unwrap();
    assert_eq!((a.version, a.fingerprint.as_str()), (1, "fp1"));
    let b = store
        .put_secret("shop", "prod", "DB_PASSWORD", "fp2", "bob", 2000, |v| {
            Ok(format!("ct-{v}"))
        })
        .await
        .unwrap();
    assert_eq!(
        (b.version, b.updated_by.as_str(), b.updated_at_ms),
        (2, "bob", 2000)
    );
    store
        .put_secret("shop", "prod", "API_KEY", "fp3", "alice", 3000, |_| {
            Ok("x".into())
        })
        .await
        .unwrap();
    store
        .put_secret("shop", "dev", "API_KEY", "fp4", "alice", 3000, |_| {
            Ok("y".into())
        })
        .await
        .unwrap();
    // a failing seal writes nothing
    let failed = store
        .put_secret("shop", "prod", "DB_PASSWORD", "fp9", "eve", 4000, |_| {
            Err("no key".into())
        })
        .await;
    assert!(failed.is_err());

    let got = store
        .get_secret("shop", "prod", "DB_PASSWORD")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.ciphertext.as_str()), (2, "ct-2"));
    assert!(
        store
            .get_secret("shop", "prod", "NOPE")
            .await
            .unwrap()
            .is_none()
    );

    let listed = store.list_secrets("shop", "prod").await.unwrap();
    let names: Vec<_> = listed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD"]);
    // list results carry no ciphertext
    let json = serde_json::to_string(&listed).unwrap();
    assert!(
        !json.contains("ct-2") && !json.contains("ciphertext"),
        "{json}"
    );

    // re-encryption is all or nothing
    let all_before = store.all_secrets().await.unwrap();
    assert_eq!(all_before.len(), 3);
    let failed = store
        .reencrypt_secrets(|r| {
            if r.env == "dev" {
                Err("boom".into())
            } else {
                Ok(format!("new-{}", r.ciphertext))
            }
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(store.all_secrets().await.unwrap(), all_before);
    let n = store
        .reencrypt_secrets(|r| Ok(format!("new-{}", r.ciphertext)))
        .await
        .unwrap();
    assert_eq!(n, 3);
    let got = store
        .get_secret("shop", "prod", "DB_PASSWORD")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.version, got.ciphertext.as_str()), (2, "new-ct-2"));

    assert!(
        store
            .delete_secret("shop", "prod", "DB_PASSWORD")
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_secret("shop", "prod", "DB_PASSWORD")
            .await
            .unwrap()
    );
    // a secret set again after deletion starts over at version 1
    let again = store
        .put_secret("shop", "prod", "DB_PASSWORD", "fp5", "alice", 5000, |v| {
            Ok(format!("ct-{v}"))
        })
        .await
        .unwrap();
    assert_eq!(again.version, 1);
    assert_eq!(store.secrets_of("shop", "dev").await.unwrap().len(), 1);
}

pub async fn approvals_replace_and_withdraw(store: Store, _url: String) {
    use ferry_core::gates::Approval;
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let decision = |who: &str, approved: bool, at_ms: i64| Approval {
        approver: who.into(),
        roles: vec!["approver".into()],
        approved,
        reason: (!approved).then(|| "not yet".into()),
        at_ms,
    };
    assert!(store.approvals(d.id).await.unwrap().is_empty());
    store
        .record_approval(d.id, &decision("user:bob", true, 10), &[])
        .await
        .unwrap();
    store
        .record_approval(d.id, &decision("user:carol", true, 11), &[])
        .await
        .unwrap();
    // a new decision of the same person replaces the old one
    store
        .record_approval(d.id, &decision("user:bob", false, 12), &[])
        .await
        .unwrap();
    let live = store.approvals(d.id).await.unwrap();
    assert_eq!(
        live,
        vec![
            decision("user:carol", true, 11),
            decision("user:bob", false, 12)
        ]
    );
    store
        .withdraw_approval(d.id, "user:carol", 13)
        .await
        .unwrap();
    assert_eq!(
        store.approvals(d.id).await.unwrap(),
        vec![decision("user:bob", false, 12)]
    );
    assert!(matches!(
        store.withdraw_approval(d.id, "user:carol", 14).await,
        Err(StoreError::NotFound(_))
    ));
}

// releases:

fn new_release(
    version: &str,
    commit: Option<&str>,
    notes: Option<&str>,
    now_ms: i64,
) -> ferry_store::NewRelease {
    ferry_store::NewRelease {
        app: "shop".into(),
        version: version.into(),
        data: ferry_core::release::ReleaseData {
            commit: commit.map(str::to_string),
            artifacts: [("api".to_string(), format!("img:{version}"))].into(),
            notes: notes.map(str::to_string),
            commit_time: None,
        },
        created_by: "user:alice".into(),
        now_ms,
    }
}

pub async fn releases_are_immutable_and_bare_ones_completed_once(store: Store, _url: String) {
    use ferry_store::ReleaseOutcome as O;
    let first = new_release("1.4.2", Some("abcdef1"), Some("notes"), 10);
    let created = match store.record_release(first.clone(), true).await.unwrap() {
        O::Created(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(created.created_by.as_deref(), Some("user:alice"));
    assert_eq!(created.data.commit.as_deref(), Some("abcdef1"));
    assert_eq!(created.data.artifacts["api"], "img:1.4.2");
    // identical: no-op, the first creation time stays
    let mut again = first.clone();
    again.now_ms = 99;
    again.created_by = "user:bob".into();
    match store.record_release(again, true).await.unwrap() {
        O::Exists(r) => assert_eq!(
            (r.created_at_ms, r.created_by.as_deref()),
            (10, Some("user:alice"))
        ),
        other => panic!("{other:?}"),
    }
    // different commit: conflict naming the field; nothing changed
    let other = new_release("1.4.2", Some("1234567"), Some("notes"), 11);
    match store.record_release(other, true).await.unwrap() {
        O::Conflict {
            field,
            stored,
            requested,
            ..
        } => {
            assert_eq!(
                (field, stored.as_str(), requested.as_str()),
                ("commit", "abcdef1", "1234567")
            );
        }
        other => panic!("{other:?}"),
    }
    // implicit (a deploy's flags): only given fields count
    let mut partial = new_release("1.4.2", Some("abcdef1"), None, 12);
    partial.data.artifacts.clear();
    assert!(matches!(
        store.record_release(partial.clone(), false).await.unwrap(),
        O::Exists(_)
    ));
    assert!(matches!(
        store.record_release(partial, true).await.unwrap(),
        O::Conflict {
            field: "artifacts",
            ..
        }
    ));
    assert_eq!(
        store.get_release("shop", "1.4.2").await.unwrap().unwrap(),
        created
    );

    // a bare release from a plain deploy is completed once, then immutable
    store.ensure_release("shop", "2.0.0", 20).await.unwrap();
    let bare = store.get_release("shop", "2.0.0").await.unwrap().unwrap();
    assert!(bare.data.is_bare());
    assert_eq!(bare.created_by, None);
    let fill = new_release("2.0.0", Some("fedcba9"), None, 21);
    match store.record_release(fill.clone(), true).await.unwrap() {
        O::Completed(r) => {
            assert_eq!(r.data.commit.as_deref(), Some("fedcba9"));
            assert_eq!(r.created_at_ms, 20);
            assert_eq!(r.created_by.as_deref(), Some("user:alice"));
        }
        other => panic!("{other:?}"),
    }
    let refill = new_release("2.0.0", Some("0000000"), None, 22);
    assert!(matches!(
        store.record_release(refill, true).await.unwrap(),
        O::Conflict {
            field: "commit",
            ..
        }
    ));
    assert!(store.get_release("shop", "9.9.9").await.unwrap().is_none());

    let listed: Vec<String> = store
        .list_releases("shop")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(listed, ["2.0.0", "1.4.2"]);
}

pub async fn release_facts_per_version_and_env(store: Store, _url: String) {
    finished(
        &store,
        "shop",
        "dev",
        "1.0.0",
        DeploymentState::Succeeded,
        100,
    )
    .await;
    finished(&store, "shop", "dev", "1.1.0", DeploymentState::Failed, 200).await;
    finished(
        &store,
        "shop",
        "qa",
        "1.0.0",
        DeploymentState::Succeeded,
        300,
    )
    .await;
    finished(
        &store,
        "blog",
        "dev",
        "1.0.0",
        DeploymentState::Succeeded,
        400,
    )
    .await;
    let all = store.deployment_facts("shop", None, 100).await.unwrap();
    let seen: Vec<(&str, &str, DeploymentState)> = all
        .iter()
        .map(|f| (f.env.as_str(), f.version.as_str(), f.state))
        .collect();
    assert_eq!(
        seen,
        [
            ("dev", "1.0.0", DeploymentState::Succeeded),
            ("dev", "1.1.0", DeploymentState::Failed),
            ("qa", "1.0.0", DeploymentState::Succeeded),
        ]
    );
    assert_eq!(
        store
            .deployment_facts("shop", Some("1.1.0"), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        store.deployment_facts("shop", None, 2).await.unwrap().len(),
        2
    );
    let dev: Vec<String> = store
        .deployed_versions("shop", "dev")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(dev, ["1.0.0", "1.1.0"]);
    assert!(
        store
            .deployed_versions("shop", "production")
            .await
            .unwrap()
            .is_empty()
    );
    let currents = store.env_currents("shop").await.unwrap();
    let currents: Vec<(&str, Option<&str>)> = currents
        .iter()
        .map(|e| (e.env.as_str(), e.current_version.as_deref()))
        .collect();
    assert_eq!(currents, [("dev", Some("1.0.0")), ("qa", Some("1.0.0"))]);
    let all = store.all_env_currents().await.unwrap();
    let all: Vec<(&str, &str, Option<&str>)> = all
        .iter()
        .map(|e| (e.app.as_str(), e.env.as_str(), e.current_version.as_deref()))
        .collect();
    assert_eq!(
        all,
        [
            ("blog", "dev", Some("1.0.0")),
            ("shop", "dev", Some("1.0.0")),
            ("shop", "qa", Some("1.0.0"))
        ],
        "every app's, by app and environment"
    );
}

// console: one-time login links
pub async fn login_links_are_single_use_and_expire(store: Store, _url: String) {
    use ferry_store::LinkRefusal;
    store
        .create_login_link("h1", "alice", "token:admin", 1_000, 61_000)
        .await
        .unwrap();
    store
        .create_login_link("h2", "bob", "token:admin", 1_000, 61_000)
        .await
        .unwrap();
    assert!(
        store
            .create_login_link("h1", "mallory", "token:admin", 1_000, 61_000)
            .await
            .is_err(),
        "a token hash is stored once"
    );
    assert_eq!(
        store.use_login_link("nope", 2_000).await.unwrap(),
        Err(LinkRefusal::Unknown)
    );
    assert_eq!(
        store.use_login_link("h1", 2_000).await.unwrap(),
        Ok("alice".to_string())
    );
    assert_eq!(
        store.use_login_link("h1", 3_000).await.unwrap(),
        Err(LinkRefusal::Used(2_000)),
        "used twice: refused"
    );
    assert_eq!(
        store.use_login_link("h2", 61_000).await.unwrap(),
        Err(LinkRefusal::Expired(61_000)),
        "at its expiry: refused"
    );
}

// console: each rollout's traffic per version, for the charts
pub async fn deployment_series_round_trip_and_stay_bounded(store: Store, _url: String) {
    use ferry_core::series::{SeriesPoint, VersionSeries};
    let a = finished(
        &store,
        "shop",
        "prod",
        "2.0",
        DeploymentState::Succeeded,
        1_000,
    )
    .await;
    let b = finished(
        &store,
        "shop",
        "dev",
        "2.0",
        DeploymentState::Succeeded,
        1_000,
    )
    .await;
    let point = |t: i64, requests: u64, p95_us: Option<u64>| SeriesPoint {
        t_ms: t,
        span_ms: 1_000,
        requests,
        errors: requests / 10,
        p95_us,
    };
    assert_eq!(store.deployment_series(a.id).await.unwrap(), vec![]);
    let first = vec![
        ("2.0".to_string(), point(2_000, 10, Some(1_500))),
        ("1.0".to_string(), point(2_000, 90, None)),
        // u64 counts beyond i64 are stored clamped, not refused
        ("1.0".to_string(), point(3_000, u64::MAX, Some(u64::MAX))),
    ];
    store.append_series(a.id, &first, 4).await.unwrap();
    store
        .append_series(b.id, &[("2.0".to_string(), point(2_000, 1, None))], 4)
        .await
        .unwrap();
    // the same time again is kept as it was
    store
        .append_series(a.id, &[("2.0".to_string(), point(2_000, 99, None))], 4)
        .await
        .unwrap();
    let clamped = i64::MAX as u64;
    assert_eq!(
        store.deployment_series(a.id).await.unwrap(),
        vec![
            VersionSeries {
                version: "1.0".into(),
                points: vec![
                    point(2_000, 90, None),
                    SeriesPoint {
                        errors: u64::MAX / 10,
                        ..point(3_000, clamped, Some(clamped))
                    }
                ],
            },
            VersionSeries {
                version: "2.0".into(),
                points: vec![point(2_000, 10, Some(1_500))],
            },
        ],
        "by version, oldest first; deployments apart"
    );
    // Over the bound: the version's points are merged pairwise, the totals kept.
    let more: Vec<(String, SeriesPoint)> = (3..=5)
        .map(|i| {
            (
                "2.0".to_string(),
                point(i * 1_000, 10, Some(i as u64 * 100)),
            )
        })
        .collect();
    store.append_series(a.id, &more, 3).await.unwrap();
    let series = store.deployment_series(a.id).await.unwrap();
    let canary = &series[1].points;
    assert_eq!(canary.len(), 2, "{canary:?}");
    assert_eq!(canary.iter().map(|p| p.requests).sum::<u64>(), 40);
    assert_eq!(canary.iter().map(|p| p.span_ms).sum::<i64>(), 4_000);
    assert_eq!((canary[0].t_ms, canary[0].p95_us), (3_000, Some(1_500)));
    assert_eq!((canary[1].t_ms, canary[1].p95_us), (5_000, Some(500)));
    assert_eq!(series[0].points.len(), 2, "the other version untouched");
    assert_eq!(
        store.deployment_series(b.id).await.unwrap()[0].points.len(),
        1
    );
}

pub async fn old_deployment_series_are_pruned_per_environment(store: Store, _url: String) {
    use ferry_core::series::SeriesPoint;
    let point = SeriesPoint {
        t_ms: 2_000,
        span_ms: 1_000,
        requests: 5,
        errors: 0,
        p95_us: Some(900),
    };
    let mut prod = Vec::new();
    for version in ["1.0", "2.0", "3.0"] {
        let d = finished(
            &store,
            "shop",
            "prod",
            version,
            DeploymentState::Succeeded,
            1_000,
        )
        .await;
        store
            .append_series(d.id, &[(version.to_string(), point)], 10)
            .await
            .unwrap();
        prod.push(d.id);
    }
    let dev = finished(
        &store,
        "shop",
        "dev",
        "1.0",
        DeploymentState::Succeeded,
        1_000,
    )
    .await;
    store
        .append_series(dev.id, &[("1.0".to_string(), point)], 10)
        .await
        .unwrap();
    // a newer deployment without a chart still counts as one of the newest
    finished(
        &store,
        "shop",
        "prod",
        "4.0",
        DeploymentState::Failed,
        1_000,
    )
    .await;
    assert_eq!(store.prune_series(2).await.unwrap(), 2);
    let kept = |id| {
        let store = store.clone();
        async move { !store.deployment_series(id).await.unwrap().is_empty() }
    };
    assert!(
        !kept(prod[0]).await && !kept(prod[1]).await,
        "older than the newest two"
    );
    assert!(kept(prod[2]).await, "the second newest of prod");
    assert!(kept(dev.id).await, "environments are counted apart");
    assert_eq!(
        store.prune_series(2).await.unwrap(),
        0,
        "nothing left to prune"
    );
}

// gates:
// alerts:
pub async fn alerts_are_replaced_per_rule_with_their_history_and_silences(
    store: Store,
    _url: String,
) {
    use ferry_core::alerts::{AlertInstance, AlertStatus, Silence};
    use ferry_store::{AlertEvent, AlertWrite};
    let alert = |rule: &str, series: &str, status: AlertStatus| AlertInstance {
        rule: rule.into(),
        series: series.into(),
        labels: [("version".to_string(), series.to_string())].into(),
        status,
        active_since_ms: 1,
        last_active_ms: 2,
        fired_at_ms: Some(2),
        resolved_at_ms: None,
        value: 0.25,
        fired_value: Some(0.2),
        acted: false,
    };
    let line = |rule: &str, kind: &str, at_ms: i64| AlertEvent {
        id: 0,
        app: String::new(),
        env: String::new(),
        rule: rule.into(),
        series: "1.0".into(),
        kind: kind.into(),
        message: format!("{kind} line"),
        at_ms,
    };
    let a = alert("errors", "1.0", AlertStatus::Firing);
    let b = alert("errors", "2.0", AlertStatus::Pending);
    // the firing alert's notification is enqueued with it (once, however often it is saved)
    let fired = Notification::new(
        notify::key_alert("shop", "prod", "errors", 1, notify::Kind::AlertFiring),
        notify::Kind::AlertFiring,
        "shop",
        "prod",
        notify::Severity::Critical,
        "errors firing",
        5,
    );
    for events in [vec![line("errors", "firing", 5)], Vec::new()] {
        store
            .save_alerts(
                "shop",
                "prod",
                "errors",
                &AlertWrite {
                    alerts: &[a.clone(), b.clone()],
                    events: &events,
                    notifications: std::slice::from_ref(&fired),
                    incidents: &[],
                },
                5,
            )
            .await
            .unwrap();
    }
    let outbox = store.unrouted_notifications(10).await.unwrap();
    let keys: Vec<&str> = outbox
        .iter()
        .map(|(_, n)| n.key.as_str())
        .filter(|k| k.starts_with("alert-"))
        .collect();
    assert_eq!(
        keys,
        vec![fired.key.as_str()],
        "enqueued once with its alert"
    );
    store
        .save_alerts(
            "shop",
            "dev",
            "down",
            &AlertWrite {
                alerts: &[alert("down", "x", AlertStatus::Firing)],
                events: &[line("down", "firing", 6)],
                ..AlertWrite::default()
            },
            6,
        )
        .await
        .unwrap();
    assert_eq!(store.alerts(None, None).await.unwrap().len(), 3);
    // a rule's alerts are replaced as a whole; the others stay
    let mut acted = a.clone();
    acted.acted = true;
    store
        .save_alerts(
            "shop",
            "prod",
            "errors",
            &AlertWrite {
                alerts: &[acted.clone()],
                events: &[line("errors", "action", 7)],
                ..AlertWrite::default()
            },
            7,
        )
        .await
        .unwrap();
    let prod = store.alerts(Some("shop"), Some("prod")).await.unwrap();
    assert_eq!(prod.len(), 1);
    assert_eq!(prod[0].alert, acted, "read back exactly as saved");
    assert_eq!(store.alerts(Some("shop"), None).await.unwrap().len(), 2);
    let history = store
        .alert_events(Some("shop"), Some("prod"), 10)
        .await
        .unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, vec!["action", "firing"], "newest first");
    assert_eq!(
        (history[0].app.as_str(), history[0].env.as_str()),
        ("shop", "prod")
    );
    assert_eq!(
        store.alert_events(None, None, 1).await.unwrap().len(),
        1,
        "bounded"
    );

    let silence = store
        .create_silence(&Silence {
            id: 0,
            app: "shop".into(),
            env: "prod".into(),
            alert: "errors".into(),
            created_by: "user:alice".into(),
            reason: "failover".into(),
            created_at_ms: 10,
            until_ms: 1_000,
            ended_by: None,
        })
        .await
        .unwrap();
    assert!(silence.id > 0);
    assert_eq!(
        store.silences(Some("shop"), 500).await.unwrap(),
        vec![silence.clone()]
    );
    assert!(
        store
            .silences(Some("shop"), 1_000)
            .await
            .unwrap()
            .is_empty(),
        "expired"
    );
    assert!(store.silences(Some("other"), 0).await.unwrap().is_empty());
    assert!(store.end_silence(silence.id, "user:bob").await.unwrap());
    assert!(
        !store.end_silence(silence.id, "user:bob").await.unwrap(),
        "once"
    );
    let ended = store.silence(silence.id).await.unwrap().expect("kept");
    assert_eq!(ended.ended_by.as_deref(), Some("user:bob"));
    assert!(!ended.active(20));
    assert_eq!(store.silence(silence.id + 100).await.unwrap(), None);
}

pub async fn gate_check_results_and_overrides(store: Store, _url: String) {
    use ferry_core::gates::{CheckResult, Override};
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let other = store
        .create_deployment(new_deployment("shop", "staging", "1.0.0", 1))
        .await
        .unwrap();
    let result = |name: &str, passed: bool, explanation: &str, at_ms: i64| CheckResult {
        name: name.into(),
        passed,
        explanation: explanation.into(),
        at_ms,
    };
    assert!(store.check_results(d.id).await.unwrap().is_empty());
    store
        .record_check_result(
            d.id,
            &result("ci", false, "expected status 200, got 503", 10),
        )
        .await
        .unwrap();
    store
        .record_check_result(d.id, &result("uat", false, "exit 1: missing", 11))
        .await
        .unwrap();
    // the latest result replaces the previous one of the same check
    store
        .record_check_result(d.id, &result("ci", true, "status 200", 20))
        .await
        .unwrap();
    assert_eq!(
        store.check_results(d.id).await.unwrap(),
        vec![
            result("ci", true, "status 200", 20),
            result("uat", false, "exit 1: missing", 11)
        ]
    );
    assert!(store.check_results(other.id).await.unwrap().is_empty());

    let lift = |by: &str, reason: &str, at_ms: i64| Override {
        gate: "freeze".into(),
        by: by.into(),
        reason: reason.into(),
        at_ms,
    };
    assert!(store.overrides(d.id).await.unwrap().is_empty());
    store
        .record_override(d.id, &lift("user:bob", "hotfix for INC-123", 30))
        .await
        .unwrap();
    store
        .record_override(d.id, &lift("user:carol", "again", 31))
        .await
        .unwrap();
    assert_eq!(
        store.overrides(d.id).await.unwrap(),
        vec![
            lift("user:bob", "hotfix for INC-123", 30),
            lift("user:carol", "again", 31)
        ]
    );
    assert!(store.overrides(other.id).await.unwrap().is_empty());

    // the rows as they stood when the deployment passed its gates
    use ferry_core::gates::{GateRow, GateState};
    let passed = vec![
        GateRow {
            gate: "freeze".into(),
            state: GateState::Overridden,
            detail: "overridden by bob: hotfix for INC-123".into(),
            key: String::new(),
        },
        GateRow {
            gate: "checks:ci".into(),
            state: GateState::Met,
            detail: "passed: status 200".into(),
            key: String::new(),
        },
    ];
    assert_eq!(store.passed_gates(d.id).await.unwrap(), None);
    store
        .record_passed_gates(d.id, &passed[..1], 40)
        .await
        .unwrap();
    store.record_passed_gates(d.id, &passed, 41).await.unwrap();
    assert_eq!(store.passed_gates(d.id).await.unwrap(), Some((passed, 41)));
    assert_eq!(store.passed_gates(other.id).await.unwrap(), None);
}

pub async fn dora_facts_read_finished_deployments(store: Store, _url: String) {
    use ferry_core::dora::{self, DoraQuery, IncidentFact, Interval};
    // 1.0.0's release knows when its commit was made (stored in UTC to the millisecond)
    let mut release = new_release("1.0.0", Some("abcdef1"), None, 10);
    release.data.commit_time = Some("1970-01-01T00:00:00.4+00:00".into());
    let recorded = match store.record_release(release, true).await.unwrap() {
        ferry_store::ReleaseOutcome::Created(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        recorded.data.commit_time.as_deref(),
        Some("1970-01-01T00:00:00.4Z")
    );
    let ok = finished(
        &store,
        "shop",
        "prod",
        "1.0.0",
        DeploymentState::Succeeded,
        1000,
    )
    .await;
    let bad = finished(
        &store,
        "shop",
        "prod",
        "1.1.0",
        DeploymentState::RolledBack,
        2000,
    )
    .await;
    let mut request = new_deployment("shop", "prod", "1.0.0", 3000);
    request.kind = DeploymentKind::Rollback;
    let back = store.create_deployment(request).await.unwrap();
    let back = store
        .transition(to(&back, DeploymentState::Succeeded, 3005))
        .await
        .unwrap();
    let staging = finished(
        &store,
        "shop",
        "staging",
        "1.1.0",
        DeploymentState::Failed,
        4000,
    )
    .await;
    store
        .create_deployment(new_deployment("shop", "prod", "1.2.0", 5000))
        .await
        .unwrap();
    // deployment `ok` needed a fix, twice; an incident in staging is not production's
    for at in [6000, 7000] {
        store
            .record_incident(&ferry_store::NewIncident {
                deployment_id: ok.id,
                opened_at_ms: at,
                fixed_by: None,
                opened_by: "user:alice".into(),
            })
            .await
            .unwrap();
    }
    store
        .record_incident(&ferry_store::NewIncident {
            deployment_id: staging.id,
            opened_at_ms: 6500,
            fixed_by: None,
            opened_by: "user:alice".into(),
        })
        .await
        .unwrap();
    let facts = store.dora_facts("shop", "prod", 100).await.unwrap();
    let fact = |id, kind, state, started_at_ms, finished_at_ms, commit_at_ms| {
        ferry_core::dora::DeploymentFact {
            id,
            app: "shop".into(),
            env: "prod".into(),
            kind,
            state,
            started_at_ms,
            finished_at_ms: Some(finished_at_ms),
            commit_at_ms,
        }
    };
    assert_eq!(
        facts.deployments,
        vec![
            fact(
                ok.id,
                DeploymentKind::Deploy,
                DeploymentState::Succeeded,
                1000,
                1003,
                Some(400)
            ),
            fact(
                bad.id,
                DeploymentKind::Deploy,
                DeploymentState::RolledBack,
                2000,
                2003,
                None
            ),
            fact(
                back.id,
                DeploymentKind::Rollback,
                DeploymentState::Succeeded,
                3000,
                3005,
                Some(400)
            ),
        ]
    );
    assert_eq!(
        facts.incidents,
        vec![
            IncidentFact {
                deployment_id: ok.id,
                opened_at_ms: 6000,
                restored_at_ms: None,
            },
            IncidentFact {
                deployment_id: ok.id,
                opened_at_ms: 7000,
                restored_at_ms: None,
            },
        ]
    );
    // the newest are kept when there are more than the limit
    let newest = store.dora_facts("shop", "prod", 1).await.unwrap();
    assert_eq!(
        newest.deployments.iter().map(|f| f.id).collect::<Vec<_>>(),
        vec![back.id]
    );
    assert_eq!(newest.incidents.len(), 1);
    assert_eq!(newest.incidents[0].opened_at_ms, 7000);
    let query = DoraQuery {
        app: "shop".into(),
        env: "prod".into(),
        start_ms: 0,
        end_ms: 86_400_000,
        interval: Interval::All,
    };
    let report = dora::compute(&facts.deployments, &facts.incidents, &query).unwrap();
    let s = &report.summary;
    assert_eq!(s.production_deployments, vec![ok.id, bad.id]);
    assert_eq!(s.lead_time_for_changes.median_ms, Some(1003 - 400));
    // both failed: `bad` rolled back, `ok` needed a fix (counted once)
    assert_eq!(s.change_failure_rate.deployments, vec![ok.id, bad.id]);
    // `bad` recovered as it rolled back (3 ms); `ok` is not healthy again since its fix
    assert_eq!(s.failed_deployment_recovery_time.median_ms, Some(3));
    assert_eq!(s.failed_deployment_recovery_time.unrecovered, vec![ok.id]);

    // an alert's incident: opened once per episode however often it is saved, restored
    // once (the first resolve counts)
    use ferry_store::{AlertWrite, IncidentChange};
    let open = IncidentChange::Open {
        alert_key: "alert-shop-prod-down-8000".into(),
        deployment_id: ok.id,
        at_ms: 8000,
    };
    for (change, at) in [(open.clone(), 8000), (open, 8000)]
        .into_iter()
        .chain([9000, 9500].map(|at| {
            (
                IncidentChange::Restore {
                    alert_key: "alert-shop-prod-down-8000".into(),
                    at_ms: at,
                },
                at,
            )
        }))
    {
        let incidents = [change];
        let write = AlertWrite {
            incidents: &incidents,
            ..AlertWrite::default()
        };
        store
            .save_alerts("shop", "prod", "down", &write, at)
            .await
            .unwrap();
    }
    let facts = store.dora_facts("shop", "prod", 100).await.unwrap();
    assert_eq!(
        facts.incidents.last(),
        Some(&IncidentFact {
            deployment_id: ok.id,
            opened_at_ms: 8000,
            restored_at_ms: Some(9000),
        })
    );
    assert_eq!(facts.incidents.len(), 3);
}

// notify:
fn deployment_notification(d: &DeploymentRecord, state: DeploymentState) -> Notification {
    Notification::new(
        notify::key_deployment(d.id, d.row_version + 1, state),
        notify::Kind::of_deployment_state(state),
        &d.app,
        &d.env,
        notify::Severity::Info,
        format!("{} is {state}", d.version),
        5,
    )
}

async fn outbox_is_written_with_its_event_and_delivered_once(store: Store, _url: String) {
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let n = deployment_notification(&d, DeploymentState::Progressing);
    let mut t = to(&d, DeploymentState::Progressing, 2);
    t.notifications = vec![n.clone()];
    // a transition that loses its compare-and-set writes no notification either
    let mut stale = t.clone();
    stale.expected_row_version += 7;
    assert!(matches!(
        store.transition(stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.unrouted_notifications(10).await.unwrap().is_empty());
    store.transition(t).await.unwrap();
    // the same key again is stored once
    assert_eq!(
        store
            .enqueue_notifications(std::slice::from_ref(&n), 3)
            .await
            .unwrap(),
        0
    );
    let unrouted = store.unrouted_notifications(10).await.unwrap();
    assert_eq!(unrouted.len(), 1);
    let (id, stored) = &unrouted[0];
    assert_eq!(stored, &n);
    // a bad key is refused before anything is written
    let mut bad = n.clone();
    bad.key = "has space".into();
    assert!(store.enqueue_notifications(&[bad], 3).await.is_err());

    let group = GroupRow {
        app: "shop".into(),
        receiver: "ops".into(),
        group_key: "g1".into(),
        state: "{}".into(),
        due_at_ms: Some(10),
    };
    let inhibited = NewDelivery {
        key: "d-inhibited".into(),
        receiver: "chat".into(),
        receiver_type: "slack".into(),
        app: "shop".into(),
        env: "prod".into(),
        group_key: "g2".into(),
        summary: "1.0.0 is progressing".into(),
        notification_ids: vec![*id],
        state: DeliveryState::Inhibited,
        last_error: Some("inhibited by alert x".into()),
    };
    store
        .route_notification(
            *id,
            std::slice::from_ref(&group),
            &ActiveChange::Firing(Box::new(n.clone())),
            4,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .route_notification(*id, &[], &ActiveChange::None, 4)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.unrouted_notifications(10).await.unwrap().is_empty());
    assert_eq!(store.active_alerts("shop").await.unwrap(), vec![n.clone()]);
    assert_eq!(store.next_group_due().await.unwrap(), Some(10));
    assert!(store.due_groups(9, 10).await.unwrap().is_empty());
    assert_eq!(store.due_groups(10, 10).await.unwrap(), vec![group.clone()]);

    // the flush plans its deliveries (one inhibited, one to send) and saves the group in
    // one step
    let delivery = NewDelivery {
        key: "d-1".into(),
        receiver: "ops".into(),
        receiver_type: "webhook".into(),
        group_key: "g1".into(),
        state: DeliveryState::Pending,
        last_error: None,
        ..inhibited.clone()
    };
    store
        .flush_group(&group, None, &[inhibited.clone(), delivery.clone()], 11)
        .await
        .unwrap();
    assert!(store.group("shop", "ops", "g1").await.unwrap().is_none());
    assert_eq!(store.next_delivery_due().await.unwrap(), Some(11));
    let due = store.due_deliveries(11, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let pending = &due[0];
    assert_eq!(pending.delivery, delivery);
    assert_eq!(pending.attempts, 0);
    assert_eq!(
        store
            .notifications_by_id(&pending.delivery.notification_ids)
            .await
            .unwrap(),
        vec![(*id, n.clone())]
    );

    // one claim wins; a failed attempt keeps it pending until its retry time
    assert!(store.claim_delivery(pending.id, 0, 20).await.unwrap());
    assert!(!store.claim_delivery(pending.id, 0, 20).await.unwrap());
    store
        .finish_delivery(pending.id, Some("connection refused"), Some(20), 12)
        .await
        .unwrap();
    assert!(store.due_deliveries(19, 10).await.unwrap().is_empty());
    let retry = store.due_deliveries(20, 10).await.unwrap();
    assert_eq!(retry[0].attempts, 1);
    assert_eq!(
        retry[0].delivery.last_error.as_deref(),
        Some("connection refused")
    );
    assert!(store.claim_delivery(pending.id, 1, 40).await.unwrap());
    store
        .finish_delivery(pending.id, None, None, 21)
        .await
        .unwrap();
    // delivered is final: a late failure report changes nothing
    store
        .finish_delivery(pending.id, Some("late"), None, 22)
        .await
        .unwrap();
    assert!(store.due_deliveries(100, 10).await.unwrap().is_empty());

    let all = store
        .deliveries(&DeliveryQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].delivery.state, DeliveryState::Delivered);
    assert_eq!(all[0].delivered_at_ms, Some(21));
    assert_eq!(all[0].attempts, 2);
    assert_eq!(all[1].delivery.state, DeliveryState::Inhibited);
    let inhibited_only = store
        .deliveries(&DeliveryQuery {
            app: Some("shop".into()),
            env: Some("prod".into()),
            state: Some(DeliveryState::Inhibited),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(inhibited_only.len(), 1);
    assert_eq!(
        inhibited_only[0].delivery.last_error.as_deref(),
        Some("inhibited by alert x")
    );
    assert!(
        store
            .deliveries(&DeliveryQuery {
                env: Some("staging".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty()
    );

    // a resolved alert leaves the firing set
    let (id2, _) = {
        store
            .enqueue_notifications(
                &[Notification {
                    key: "k2".into(),
                    ..n.clone()
                }],
                30,
            )
            .await
            .unwrap();
        store.unrouted_notifications(1).await.unwrap().remove(0)
    };
    store
        .route_notification(id2, &[], &ActiveChange::Resolved(n.fingerprint()), 31)
        .await
        .unwrap();
    assert!(store.active_alerts("shop").await.unwrap().is_empty());
}

/// A delivery of `ids` planned for `app`/`env` (for the history and pruning tests).
fn planned(key: &str, app: &str, env: &str, ids: Vec<i64>, state: DeliveryState) -> NewDelivery {
    NewDelivery {
        key: key.into(),
        receiver: "ops".into(),
        receiver_type: "webhook".into(),
        app: app.into(),
        env: env.into(),
        group_key: format!("g-{key}"),
        summary: key.into(),
        notification_ids: ids,
        state,
        last_error: None,
    }
}

async fn flush(store: &Store, deliveries: &[NewDelivery], now_ms: i64) {
    let group = GroupRow {
        app: "shop".into(),
        receiver: "ops".into(),
        group_key: "g".into(),
        state: "{}".into(),
        due_at_ms: None,
    };
    store
        .flush_group(&group, None, deliveries, now_ms)
        .await
        .unwrap();
}

/// The outbox signal has a permit after a commit that enqueued, and none otherwise.
async fn committing_an_enqueue_signals_the_outbox(store: Store, _url: String) {
    let signal = store.outbox_signal();
    let signalled = || async {
        tokio::time::timeout(std::time::Duration::from_millis(50), signal.notified())
            .await
            .is_ok()
    };
    assert!(!signalled().await, "no permit before anything is enqueued");
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let mut t = to(&d, DeploymentState::Progressing, 2);
    t.notifications = vec![deployment_notification(&d, DeploymentState::Progressing)];
    let mut stale = t.clone();
    stale.expected_row_version += 7;
    assert!(store.transition(stale).await.is_err());
    assert!(
        !signalled().await,
        "a transition that wrote nothing signals nothing"
    );
    store.transition(t.clone()).await.unwrap();
    assert!(signalled().await, "a transition that enqueued signals");
    let n = deployment_notification(&d, DeploymentState::Succeeded);
    store
        .enqueue_notifications(std::slice::from_ref(&n), 3)
        .await
        .unwrap();
    assert!(signalled().await, "enqueue_notifications signals");
    // the same key again writes nothing: no signal
    store.enqueue_notifications(&[n], 4).await.unwrap();
    assert!(!signalled().await);
}

/// The limit of the history applies to the (app, env) pairs asked for, not before them.
async fn the_delivery_history_limit_applies_within_the_scopes(store: Store, _url: String) {
    let mut planned_rows = Vec::new();
    for i in 0..6 {
        // newest first: three of another app, then three of shop/prod
        let app = if i < 3 { "shop" } else { "other" };
        planned_rows.push(planned(
            &format!("d{i}"),
            app,
            "prod",
            vec![],
            DeliveryState::Pending,
        ));
    }
    flush(&store, &planned_rows, 10).await;
    let query = |scopes: Option<Vec<(String, String)>>, limit| DeliveryQuery {
        scopes,
        limit,
        ..Default::default()
    };
    let shop = Some(vec![("shop".to_string(), "prod".to_string())]);
    let rows = store.deliveries(&query(shop.clone(), 2)).await.unwrap();
    let keys: Vec<&str> = rows.iter().map(|r| r.delivery.key.as_str()).collect();
    assert_eq!(keys, ["d2", "d1"]);
    assert_eq!(store.deliveries(&query(None, 2)).await.unwrap().len(), 2);
    assert!(
        store
            .deliveries(&query(Some(vec![]), 9))
            .await
            .unwrap()
            .is_empty()
    );
    let both = Some(vec![
        ("shop".to_string(), "prod".to_string()),
        ("other".to_string(), "prod".to_string()),
    ]);
    assert_eq!(store.deliveries(&query(both, 9)).await.unwrap().len(), 6);
    assert_eq!(
        store.delivery_scopes().await.unwrap(),
        vec![
            ("other".to_string(), "prod".to_string()),
            ("shop".to_string(), "prod".to_string())
        ]
    );
}

/// Done deliveries and the notifications nothing needs go after the retention, a bounded
/// batch at a time; pending deliveries, their notifications and alerts firing now stay.
async fn the_notification_history_is_pruned_in_bounded_batches(store: Store, _url: String) {
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let old: Vec<Notification> = (0..5)
        .map(|i| Notification {
            key: format!("old-{i}"),
            ..deployment_notification(&d, DeploymentState::Progressing)
        })
        .collect();
    let firing = Notification::new(
        notify::key_alert("shop", "prod", "errors", 1, notify::Kind::AlertFiring),
        notify::Kind::AlertFiring,
        "shop",
        "prod",
        notify::Severity::Critical,
        "errors",
        1,
    );
    let mut all = old.clone();
    all.push(firing.clone());
    store.enqueue_notifications(&all, 100).await.unwrap();
    let ids: Vec<i64> = store
        .unrouted_notifications(10)
        .await
        .unwrap()
        .iter()
        .map(|(id, _)| *id)
        .collect();
    for (id, n) in ids.iter().zip(&all) {
        let active = match n.kind {
            notify::Kind::AlertFiring => ActiveChange::Firing(Box::new(n.clone())),
            _ => ActiveChange::None,
        };
        store
            .route_notification(*id, &[], &active, 100)
            .await
            .unwrap();
    }
    // ids[0..4]: delivered, failed, inhibited, and one still pending (its notification stays)
    flush(
        &store,
        &[
            planned("a", "shop", "prod", vec![ids[0]], DeliveryState::Pending),
            planned("b", "shop", "prod", vec![ids[1]], DeliveryState::Pending),
            planned("c", "shop", "prod", vec![ids[2]], DeliveryState::Inhibited),
            planned("p", "shop", "prod", vec![ids[3]], DeliveryState::Pending),
        ],
        100,
    )
    .await;
    let rows = store
        .deliveries(&DeliveryQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let id_of = |key: &str| rows.iter().find(|r| r.delivery.key == key).unwrap().id;
    store
        .finish_delivery(id_of("a"), None, None, 101)
        .await
        .unwrap();
    store
        .finish_delivery(id_of("b"), Some("answered 500"), None, 101)
        .await
        .unwrap();
    // nothing is older than the cutoff yet
    assert_eq!(
        store.prune_notifications(100, 10).await.unwrap(),
        ferry_store::notify::Pruned::default()
    );
    // a batch of two, then the last done one
    let first = store.prune_notifications(1000, 2).await.unwrap();
    assert_eq!(first.deliveries, 2);
    let second = store.prune_notifications(1000, 2).await.unwrap();
    assert_eq!(second.deliveries, 1);
    let left = store
        .deliveries(&DeliveryQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].delivery.key, "p");
    // the pending delivery is as old as every notification here, so none went
    assert_eq!(first.notifications + second.notifications, 0);
    assert_eq!(store.notifications_by_id(&ids).await.unwrap().len(), 6);
    // once it is delivered, the old notifications go, but not the alert firing now
    store
        .finish_delivery(left[0].id, None, None, 102)
        .await
        .unwrap();
    let mut pruned = ferry_store::notify::Pruned::default();
    loop {
        let p = store.prune_notifications(1000, 2).await.unwrap();
        if p == ferry_store::notify::Pruned::default() {
            break;
        }
        pruned.deliveries += p.deliveries;
        pruned.notifications += p.notifications;
    }
    assert_eq!(pruned.deliveries, 1);
    assert_eq!(pruned.notifications, 5);
    let kept = store.notifications_by_id(&ids).await.unwrap();
    assert_eq!(kept, vec![(ids[5], firing)]);
}

/// `ferry deploy --fix-of N`: the fix deployment and the incident on N are written in one
/// transaction — both or neither.
async fn a_fix_and_its_incident_are_written_together(store: Store, _url: String) {
    let broken = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 10))
        .await
        .unwrap();
    let mut fix = new_deployment("shop", "prod", "1.0.1", 20);
    fix.fix_of = Some(broken.id);
    let fixed = store.create_deployment(fix.clone()).await.unwrap();
    let facts = store.dora_facts("shop", "prod", 100).await.unwrap();
    assert_eq!(
        facts.incidents,
        vec![ferry_core::dora::IncidentFact {
            deployment_id: broken.id,
            opened_at_ms: 20,
            restored_at_ms: None,
        }]
    );
    // an incident that cannot be written (no deployment 999999) takes the fix with it
    fix.fix_of = Some(999_999);
    fix.version = "1.0.2".into();
    assert!(store.create_deployment(fix).await.is_err());
    let listed = store.list_deployments("shop", "prod", 10).await.unwrap();
    let ids: Vec<i64> = listed.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![fixed.id, broken.id]);
}

/// The core's golden DORA dataset (hundreds of deployments, incidents, a rollback request,
/// deployments across midnight UTC, a commit from the future, other apps and environments)
/// inserted through the store: the report from `Store::dora_facts` is the one the core
/// computes from the dataset itself (whose hand-computed expectations
/// `ferry-core/tests/dora_golden.rs` checks), deployment ids aside.
pub async fn dora_golden_dataset_through_the_store(store: Store, _url: String) {
    use dora_dataset::{DAY, DAYS, HOUR, MIN, T0, dataset, query};
    use ferry_core::dora::{DoraReport, Interval, compute};
    use std::collections::HashMap;
    let (mut facts, incidents) = dataset();
    facts.sort_by_key(|f| f.id);
    let mut ids: HashMap<i64, i64> = HashMap::new();
    for f in &facts {
        let version = format!("1.0.{}", f.id);
        if let Some(at) = f.commit_at_ms {
            let mut release = new_release(&version, Some("abcdef1"), None, f.started_at_ms);
            release.app = f.app.clone();
            release.data.commit_time = ferry_core::release::commit_time_text(at);
            store.record_release(release, true).await.unwrap();
        }
        let mut request = new_deployment(&f.app, &f.env, &version, f.started_at_ms);
        request.kind = f.kind;
        let d = store.create_deployment(request).await.unwrap();
        let end = f.finished_at_ms.unwrap_or(f.started_at_ms + 1);
        store.transition(to(&d, f.state, end)).await.unwrap();
        ids.insert(f.id, d.id);
    }
    for i in &incidents {
        store
            .record_incident(&ferry_store::NewIncident {
                deployment_id: ids[&i.deployment_id],
                opened_at_ms: i.opened_at_ms,
                fixed_by: None,
                opened_by: "user:alice".into(),
            })
            .await
            .unwrap();
    }
    let stored = store
        .dora_facts("shop", "production", 100_000)
        .await
        .unwrap();
    // 28 days × 11, the rollback request, a superseded and a rejected one (not the running one)
    assert_eq!(stored.deployments.len(), 28 * 11 + 3);
    assert_eq!(stored.incidents.len(), 28);
    let back: HashMap<i64, i64> = ids.iter().map(|(fact, id)| (*id, *fact)).collect();
    let relabel = |mut report: DoraReport| {
        let map = |list: &mut Vec<i64>| list.iter_mut().for_each(|id| *id = back[id]);
        let figures = std::iter::once(&mut report.summary)
            .chain(report.buckets.iter_mut().map(|b| &mut b.figures));
        for f in figures {
            map(&mut f.production_deployments);
            map(&mut f.deployment_frequency.deployments);
            map(&mut f.lead_time_for_changes.dropped_negative);
            map(&mut f.change_failure_rate.deployments);
            map(&mut f.failed_deployment_recovery_time.unrecovered);
            map(&mut f.deployment_rework_rate.deployments);
            for sample in f
                .lead_time_for_changes
                .samples
                .iter_mut()
                .chain(f.failed_deployment_recovery_time.samples.iter_mut())
            {
                sample.deployment = back[&sample.deployment];
            }
        }
        report
    };
    for q in [
        query(T0, T0 + DAYS * DAY, Interval::All),
        query(T0, T0 + DAYS * DAY, Interval::Daily),
        query(T0, T0 + DAYS * DAY, Interval::Weekly),
        query(T0 - 15 * DAY, T0 + 39 * DAY, Interval::Monthly),
    ] {
        let want = compute(&facts, &incidents, &q).unwrap();
        let got = relabel(compute(&stored.deployments, &stored.incidents, &q).unwrap());
        assert_eq!(got, want, "{:?}", q.interval);
    }
    // and some of the hand-computed figures, straight from the store's facts
    let s = compute(
        &stored.deployments,
        &stored.incidents,
        &query(T0, T0 + DAYS * DAY, Interval::All),
    )
    .unwrap()
    .summary;
    assert_eq!(s.production_deployments.len(), 307);
    assert_eq!(s.deployment_frequency.count, 278);
    assert_eq!(
        (s.change_failure_rate.count, s.change_failure_rate.total),
        (44, 307)
    );
    assert_eq!(s.lead_time_for_changes.median_ms, Some(6 * HOUR + 10 * MIN));
    assert_eq!(s.lead_time_for_changes.dropped_negative, vec![ids[&300]]);
    assert_eq!(s.failed_deployment_recovery_time.median_ms, Some(10 * MIN));
    assert_eq!(s.deployment_rework_rate.count, 43);
}

#[path = "../../ferry-core/tests/dora_golden/dataset.rs"]
mod dora_dataset;

macro_rules! contract_tests {
    ($engine:ident, $fresh:ident: $($case:ident),* $(,)?) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some((store, url, _guard)) = super::$fresh().await else {
                        return;
                    };
                    super::$case(store, url).await;
                }
            )*
        }
    };
}

/// The same suite on every engine.
macro_rules! on_every_engine {
    ($($case:ident),* $(,)?) => {
        contract_tests!(sqlite, fresh_sqlite_some: $($case),*);
        contract_tests!(postgres, fresh_postgres: $($case),*);
    };
}

async fn fresh_sqlite_some() -> Option<(Store, String, tempfile::TempDir)> {
    Some(fresh_sqlite().await)
}

on_every_engine!(
    migrations_are_idempotent,
    approvals_replace_and_withdraw,
    manifest_revision_bumps_only_on_change,
    concurrent_applies_of_one_manifest_make_one_revision,
    releases_are_recorded_once,
    deployments_create_get_list_latest,
    dora_facts_read_finished_deployments,
    dora_golden_dataset_through_the_store,
    transition_cas_conflicts_on_stale_row_version,
    terminal_transition_sets_finished_and_env_current_atomically,
    events_have_increasing_seq,
    previous_succeeded_version_skips_failures,
    replicas_lifecycle_and_filters,
    env_states_read_every_environment_at_once,
    tokens_find_touch_count,
    concurrent_transitions_exactly_one_wins,
    corrupt_rows_are_reported,
    users_create_get_list_disable_password,
    roles_and_bindings,
    tokens_scoped_expiring_revocable,
    audit_appends_chain_and_queries,
    concurrent_audit_appends_make_one_chain,
    audit_checkpoints_are_stored,
    secrets_put_get_list_delete_reencrypt,
    ended_sessions_are_purged,
    // releases:
    releases_are_immutable_and_bare_ones_completed_once,
    release_facts_per_version_and_env,
    // gates:
    gate_check_results_and_overrides,
    // alerts:
    alerts_are_replaced_per_rule_with_their_history_and_silences,
    // console:
    login_links_are_single_use_and_expire,
    deployment_series_round_trip_and_stay_bounded,
    old_deployment_series_are_pruned_per_environment,
    // config:
    replica_configs_are_recorded_and_listed,
    // flags:
    flags_write_bumps_the_revision_atomically_and_keeps_changes,
    flag_tokens_clients_and_metrics,
    flag_guards_start_once_and_move_by_compare_and_set,
    // notify:
    outbox_is_written_with_its_event_and_delivered_once,
    committing_an_enqueue_signals_the_outbox,
    the_delivery_history_limit_applies_within_the_scopes,
    the_notification_history_is_pruned_in_bounded_batches,
    a_fix_and_its_incident_are_written_together,
    // leader:
    a_lease_has_one_holder_and_a_new_token_per_holding,
    an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew,
    concurrent_acquisitions_grant_the_lease_once,
    one_server_id_in_two_processes_is_two_holders,
    transitions_commit_only_under_the_fence,
    the_leaders_visible_writes_commit_only_under_the_fence,
    a_wake_up_reaches_every_listening_server,
);

// flags:
fn flag_meta<'a>(action: &'a str, now_ms: i64) -> ferry_store::ChangeMeta<'a> {
    ferry_store::ChangeMeta {
        actor: "alice",
        action,
        reason: Some("why not"),
        now_ms,
        new_epoch: "e1",
    }
}

pub async fn flags_write_bumps_the_revision_atomically_and_keeps_changes(
    store: Store,
    _url: String,
) {
    use ferry_core::flags::{Feature, Segment};
    use ferry_store::FlagWrite;
    assert_eq!(store.flag_revision("shop", "prod").await.unwrap(), None);
    assert_eq!(store.served_flags("shop", "prod").await.unwrap(), None);
    let feature = |name: &str, enabled: bool| Feature {
        name: name.into(),
        enabled,
        ..Feature::default()
    };
    let names = vec!["a".to_string(), "b".to_string()];
    let segments = vec![Segment {
        id: 7,
        name: None,
        constraints: vec![],
    }];
    let (rev, changes) = store
        .write_flags(
            "shop",
            "prod",
            &names,
            Some(&segments),
            flag_meta("import", 10),
            |current| {
                assert_eq!(current, vec![None, None]);
                Ok::<_, ()>(vec![
                    Some(FlagWrite {
                        feature: feature("a", true),
                        archived: false,
                    }),
                    Some(FlagWrite {
                        feature: feature("b", false),
                        archived: true,
                    }),
                ])
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!((rev, changes.len()), (1, 2));
    assert!(changes[0].before.is_none());
    // served: not archived, with the segments, at the revision
    let served = store.served_flags("shop", "prod").await.unwrap().unwrap();
    assert_eq!((served.revision, served.epoch.as_str()), (1, "e1"));
    assert_eq!(served.features, vec![feature("a", true)]);
    assert_eq!(served.segments, segments);
    // a refused change leaves everything, the revision included, as it was
    let refused = store
        .write_flags(
            "shop",
            "prod",
            &names[..1],
            None,
            flag_meta("enable", 20),
            |_| Err("no"),
        )
        .await
        .unwrap();
    assert_eq!(refused, Err("no"));
    assert_eq!(
        store.flag_revision("shop", "prod").await.unwrap(),
        Some((1, "e1".into()))
    );
    // a change: revision 2, before and after kept, the segments kept
    let (rev, _) = store
        .write_flags(
            "shop",
            "prod",
            &names[..1],
            None,
            flag_meta("disable", 30),
            |current| {
                let mut f = current[0].clone().unwrap().feature;
                f.enabled = false;
                Ok::<_, ()>(vec![Some(FlagWrite {
                    feature: f,
                    archived: false,
                })])
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rev, 2);
    let changes = store
        .flag_changes("shop", "prod", Some("a"), 10)
        .await
        .unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].action, "disable");
    assert_eq!(changes[0].before.as_ref().unwrap()["enabled"], true);
    assert_eq!(changes[0].after.as_ref().unwrap()["enabled"], false);
    assert_eq!(changes[0].reason.as_deref(), Some("why not"));
    assert_eq!(
        store
            .flag_changes("shop", "prod", None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        store
            .served_flags("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .segments,
        segments
    );
    assert_eq!(
        store.list_flags("shop", "prod", true).await.unwrap().len(),
        2
    );
    assert_eq!(
        store.list_flags("shop", "prod", false).await.unwrap().len(),
        1
    );
    assert!(
        store
            .get_flag("shop", "prod", "b")
            .await
            .unwrap()
            .unwrap()
            .archived
    );
    assert!(
        store
            .list_flags("shop", "qa", true)
            .await
            .unwrap()
            .is_empty()
    );
    // concurrent writers each get their own revision
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .write_flags(
                    "shop",
                    "prod",
                    &[format!("c{i}")],
                    None,
                    flag_meta("create", 40),
                    |_| {
                        Ok::<_, ()>(vec![Some(FlagWrite {
                            feature: Feature {
                                name: format!("c{i}"),
                                ..Feature::default()
                            },
                            archived: false,
                        })])
                    },
                )
                .await
                .unwrap()
                .unwrap()
                .0
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap());
    }
    revisions.sort();
    assert_eq!(revisions, (3..=10).collect::<Vec<i64>>());
    // deleting the app forgets its flags (their history stays)
    store.delete_app("shop").await.unwrap();
    assert_eq!(store.flag_revision("shop", "prod").await.unwrap(), None);
    assert!(
        !store
            .flag_changes("shop", "prod", None, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn flag_tokens_clients_and_metrics(store: Store, _url: String) {
    use ferry_store::FlagMetricRow;
    let t = store
        .create_flag_token("shop", "prod", "web", "h1", "alice", 5)
        .await
        .unwrap();
    // the scope and the revision in one read: 0/none before any flag, then the revision's
    let scope = |revision: i64, epoch: &str| ferry_store::FlagClientScope {
        app: "shop".into(),
        env: "prod".into(),
        revision,
        epoch: epoch.into(),
    };
    assert_eq!(
        store.flag_client_scope("h1").await.unwrap(),
        Some(scope(0, "none"))
    );
    assert_eq!(store.flag_client_scope("h2").await.unwrap(), None);
    store
        .write_flags(
            "shop",
            "prod",
            &["a".to_string()],
            None,
            flag_meta("create", 6),
            |_| {
                Ok::<_, ()>(vec![Some(ferry_store::FlagWrite {
                    feature: ferry_core::flags::Feature {
                        name: "a".into(),
                        ..Default::default()
                    },
                    archived: false,
                })])
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.flag_client_scope("h1").await.unwrap(),
        Some(scope(1, "e1"))
    );
    assert_eq!(
        store.flag_revision("shop", "prod").await.unwrap(),
        Some((1, "e1".to_string()))
    );
    assert_eq!(
        store.list_flag_tokens("shop", "prod").await.unwrap(),
        vec![t.clone()]
    );
    assert!(!store.delete_flag_token("shop", "qa", t.id).await.unwrap());
    assert!(store.delete_flag_token("shop", "prod", t.id).await.unwrap());
    assert_eq!(store.flag_client_scope("h1").await.unwrap(), None);

    store
        .register_flag_client("shop", "prod", "web", "i1", "sdk:1", 5)
        .await
        .unwrap();
    store
        .register_flag_client("shop", "prod", "web", "i1", "sdk:2", 6)
        .await
        .unwrap();

    let row = |flag: &str, bucket_ms: i64, yes: i64| FlagMetricRow {
        flag: flag.into(),
        bucket_ms,
        yes,
        no: 1,
        variants: [("blue".to_string(), yes)].into(),
    };
    store
        .add_flag_metrics("shop", "prod", &[row("a", 0, 2), row("b", 0, 1)])
        .await
        .unwrap();
    store
        .add_flag_metrics("shop", "prod", &[row("a", 0, 3), row("a", 3_600_000, 1)])
        .await
        .unwrap();
    let all = store.flag_metrics("shop", "prod", None, 0).await.unwrap();
    assert_eq!(
        all,
        vec![
            FlagMetricRow {
                no: 2,
                ..row("a", 0, 5)
            },
            row("a", 3_600_000, 1),
            row("b", 0, 1),
        ]
    );
    let recent = store
        .flag_metrics("shop", "prod", Some("a"), 1)
        .await
        .unwrap();
    assert_eq!(recent, vec![row("a", 3_600_000, 1)]);
}

// config:
pub async fn replica_configs_are_recorded_and_listed(store: Store, _url: String) {
    store
        .insert_replica(&replica("shop-prod-web-b", "shop", "prod", "web", 1))
        .await
        .unwrap();
    store
        .insert_replica(&replica("shop-prod-web-a", "shop", "prod", "web", 2))
        .await
        .unwrap();
    store
        .insert_replica(&replica("shop-qa-web-a", "shop", "qa", "web", 3))
        .await
        .unwrap();
    store
        .set_replica_config("shop-prod-web-b", "d1", "{\"vars\":{}}")
        .await
        .unwrap();
    // Recording twice replaces.
    store
        .set_replica_config("shop-prod-web-b", "d2", "{}")
        .await
        .unwrap();
    let got = store.replica_configs("shop", "prod").await.unwrap();
    assert_eq!(
        got,
        vec![
            ferry_store::ReplicaConfig {
                id: "shop-prod-web-a".into(),
                digest: None,
                summary: None
            },
            ferry_store::ReplicaConfig {
                id: "shop-prod-web-b".into(),
                digest: Some("d2".into()),
                summary: Some("{}".into())
            },
        ]
    );
    assert!(matches!(
        store.set_replica_config("nope", "d", "{}").await,
        Err(StoreError::NotFound(_))
    ));
    // Other stored fields are untouched and deleting the replica forgets its config.
    let listed = store
        .list_replicas(Some("shop"), Some("prod"))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    store.delete_replica("shop-prod-web-b").await.unwrap();
    assert_eq!(
        store.replica_configs("shop", "prod").await.unwrap().len(),
        1
    );
    assert_eq!(store.replica_configs("shop", "qa").await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// SQLite-only checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn sqlite_uses_wal_normal_sync_and_foreign_keys() {
    let (store, _url, _dir) = fresh_sqlite().await;
    let one = |sql: &'static str| {
        let store = store.clone();
        async move {
            use sqlx::Row;
            let row = sqlx::query(sql).fetch_one(store.pool()).await.unwrap();
            match row.try_get::<String, _>(0) {
                Ok(text) => text,
                Err(_) => row.try_get::<i64, _>(0).unwrap().to_string(),
            }
        }
    };
    assert_eq!(one("PRAGMA journal_mode").await.to_lowercase(), "wal");
    assert_eq!(one("PRAGMA synchronous").await, "1", "NORMAL");
    assert_eq!(one("PRAGMA foreign_keys").await, "1");
    assert_eq!(one("PRAGMA busy_timeout").await, "5000");
}

#[tokio::test]
async fn open_sqlite_file_creates_the_database_with_odd_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with space #and?marks%.db");
    let store = Store::open_sqlite_file(&path).await.unwrap();
    store.ensure_release("shop", "1.0.0", 1).await.unwrap();
    store.close().await;
    assert!(path.exists());
    let again = Store::open_sqlite_file(&path).await.unwrap();
    assert_eq!(again.list_releases("shop").await.unwrap().len(), 1);
}

#[tokio::test]
async fn in_memory_sqlite_works_for_quick_tests() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let d = store
        .create_deployment(new_deployment("shop", "dev", "1.0.0", 1))
        .await
        .unwrap();
    assert_eq!(store.get_deployment(d.id).await.unwrap(), Some(d));
}

// flags:
/// A flag at `percent` (its gradual rollout), enabled.
fn flag_at(name: &str, percent: u32) -> ferry_store::FlagWrite {
    use ferry_core::flags::edit;
    let mut feature = edit::set_rollout(edit::new_flag(name, None), percent, None).unwrap();
    feature.enabled = true;
    ferry_store::FlagWrite {
        feature,
        archived: false,
    }
}

pub async fn flag_guards_start_once_and_move_by_compare_and_set(store: Store, _url: String) {
    use ferry_core::duration::HumanDuration;
    use ferry_core::flags::edit::rollout_of;
    use ferry_core::flags::guard::{self, GuardSpec, GuardState};
    use ferry_store::{FlagDecide, GuardRefused};

    let spec = GuardSpec {
        steps: vec![5, 25, 100],
        pause: HumanDuration(std::time::Duration::from_secs(30)),
        analysis: guard::default_analysis(),
        stickiness: None,
        judge: guard::Judge::Flag,
    };
    let first = guard::start(spec, 100);
    // No flag: `decide` refuses and nothing is written (not even the revision).
    let refused = store
        .start_flag_guard(
            "shop",
            "prod",
            "a",
            &first,
            flag_meta("guard", 100),
            |current| current.map(|_| flag_at("a", 5)).ok_or("no flag"),
        )
        .await
        .unwrap();
    assert!(matches!(refused, Err(GuardRefused::Refused("no flag"))));
    assert_eq!(store.flag_revision("shop", "prod").await.unwrap(), None);
    assert!(store.running_flag_guards().await.unwrap().is_empty());

    store
        .write_flags(
            "shop",
            "prod",
            &["a".into()],
            None,
            flag_meta("create", 110),
            |_| Ok::<_, ()>(vec![Some(flag_at("a", 0))]),
        )
        .await
        .unwrap()
        .unwrap();
    // Started: the flag at the first step in the same transaction, one more revision.
    let (record, revision, changes) = store
        .start_flag_guard(
            "shop",
            "prod",
            "a",
            &first,
            flag_meta("guard", 120),
            |current| current.map(|_| flag_at("a", 5)).ok_or("no flag"),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revision, 2);
    assert_eq!(changes.len(), 1);
    assert_eq!((record.seq, record.started_at_ms), (1, 120));
    assert_eq!(record.guard, first);
    let flag = store.get_flag("shop", "prod", "a").await.unwrap().unwrap();
    assert_eq!(rollout_of(&flag.feature), 5);
    assert_eq!(
        store.running_flag_guards().await.unwrap(),
        vec![record.clone()]
    );
    assert_eq!(
        store
            .latest_flag_guards("shop", "prod", None)
            .await
            .unwrap(),
        vec![record.clone()]
    );

    // A second start while one runs: refused, and its flag write rolled back with it.
    let again = store
        .start_flag_guard("shop", "prod", "a", &first, flag_meta("guard", 130), |_| {
            Ok::<_, ()>(flag_at("a", 50))
        })
        .await
        .unwrap();
    match again {
        Err(GuardRefused::Running(r)) => assert_eq!(r.id, record.id),
        other => panic!("expected Running, got {other:?}"),
    }
    assert_eq!(
        store
            .flag_revision("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .0,
        2
    );
    let flag = store.get_flag("shop", "prod", "a").await.unwrap().unwrap();
    assert_eq!(rollout_of(&flag.feature), 5);

    // The next step, by compare-and-set: two writers from the same state, one wins.
    let mut next = record.guard.clone();
    next.step = 1;
    next.step_started_ms = 200;
    let step = |pct: u32| -> FlagDecide<'static> {
        Box::new(move |current| current.map(|_| flag_at("a", pct)))
    };
    let writer = || {
        let (store, record, next) = (store.clone(), record.clone(), next.clone());
        tokio::spawn(async move {
            let write = Some((flag_meta("analysis", 200), step(25)));
            store
                .update_flag_guard(&record, &next, 200, write)
                .await
                .unwrap()
        })
    };
    let (w1, w2) = tokio::join!(writer(), writer());
    assert_eq!(
        [w1.unwrap(), w2.unwrap()].iter().filter(|w| **w).count(),
        1,
        "exactly one writer moves the guard"
    );
    assert_eq!(
        store
            .flag_revision("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .0,
        3
    );
    let moved = store.running_flag_guards().await.unwrap().pop().unwrap();
    assert_eq!(
        (moved.seq, moved.guard.step, moved.updated_at_ms),
        (2, 1, 200)
    );
    let flag = store.get_flag("shop", "prod", "a").await.unwrap().unwrap();
    assert_eq!(rollout_of(&flag.feature), 25);
    // A stale writer (the old seq) writes nothing, and neither does a refusing `decide`.
    assert!(
        !store
            .update_flag_guard(&record, &next, 210, None)
            .await
            .unwrap()
    );
    let mut paused = moved.guard.clone();
    paused.state = GuardState::Paused {
        reason: "inconclusive".into(),
    };
    let refuse: FlagDecide<'static> = Box::new(|_| None);
    assert!(
        !store
            .update_flag_guard(
                &moved,
                &paused,
                220,
                Some((flag_meta("analysis", 220), refuse))
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.running_flag_guards().await.unwrap(),
        vec![moved.clone()]
    );
    assert_eq!(
        store
            .flag_revision("shop", "prod")
            .await
            .unwrap()
            .unwrap()
            .0,
        3
    );

    // Rolled back: the guard ends and the flag goes to 0 % in the same transaction.
    let mut back = moved.guard.clone();
    back.state = GuardState::RolledBack {
        metric: "errors".into(),
        reason: "error rate 31% > 1% over 200 requests".into(),
    };
    assert!(
        store
            .update_flag_guard(
                &moved,
                &back,
                300,
                Some((flag_meta("analysis", 300), step(0)))
            )
            .await
            .unwrap()
    );
    assert!(store.running_flag_guards().await.unwrap().is_empty());
    let flag = store.get_flag("shop", "prod", "a").await.unwrap().unwrap();
    assert_eq!(rollout_of(&flag.feature), 0);
    let ended = store
        .latest_flag_guards("shop", "prod", Some("a"))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!((ended.seq, &ended.guard.state), (3, &back.state));
    let history = store
        .flag_changes("shop", "prod", Some("a"), 10)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|c| c.action.as_str())
            .collect::<Vec<_>>(),
        ["analysis", "analysis", "guard", "create"]
    );

    // Ended, so a new one may start; it is the flag's latest.
    let (second, _, _) = store
        .start_flag_guard("shop", "prod", "a", &first, flag_meta("guard", 400), |_| {
            Ok::<_, ()>(flag_at("a", 5))
        })
        .await
        .unwrap()
        .unwrap();
    assert!(second.id > record.id);
    assert_eq!(
        store
            .latest_flag_guards("shop", "prod", Some("a"))
            .await
            .unwrap(),
        vec![second]
    );
}

// leader: leases and wake-ups between servers

/// Waits (bounded) until `lease` has expired by the database's clock.
async fn until_expired(store: &Store, lease: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let record = store.lease(lease).await.unwrap().unwrap();
        if !record.held() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{record:?} never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

pub async fn a_lease_has_one_holder_and_a_new_token_per_holding(store: Store, _url: String) {
    use ferry_store::Acquire;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let Acquire::Granted(a) = store
        .acquire_lease("leader", "a", "a", 60_000)
        .await
        .unwrap()
    else {
        panic!("a free lease is granted");
    };
    assert_eq!(a.token, 1);
    assert_eq!(
        a.expires_at_ms - a.db_now_ms,
        60_000,
        "judged by the database's clock"
    );
    assert!((a.db_now_ms - wall).abs() < 60_000, "{a:?} vs {wall}");
    // Held: another server is told who holds it and until when.
    match store
        .acquire_lease("leader", "b", "b", 60_000)
        .await
        .unwrap()
    {
        Acquire::HeldBy(record) => {
            assert_eq!((record.holder.as_str(), record.token), ("a", 1));
            assert!(record.held());
            assert_eq!(record.expires_at_ms, a.expires_at_ms);
        }
        other => panic!("b must not get a held lease: {other:?}"),
    }
    // Renewals: only the holder with its token; the token stays.
    let renewed = store.renew_lease("leader", "a", 1, 60_000).await.unwrap();
    assert_eq!(renewed.map(|g| g.token), Some(1));
    assert!(renewed.unwrap().expires_at_ms >= a.expires_at_ms);
    assert_eq!(
        store.renew_lease("leader", "b", 1, 60_000).await.unwrap(),
        None
    );
    assert_eq!(
        store.renew_lease("leader", "a", 7, 60_000).await.unwrap(),
        None
    );
    // Released: the next server takes it at once, with a greater token; the old holder's
    // renewal and release with its old token fail.
    assert!(!store.release_lease("leader", "b", 1).await.unwrap());
    assert!(store.release_lease("leader", "a", 1).await.unwrap());
    assert!(!store.lease("leader").await.unwrap().unwrap().held());
    let Acquire::Granted(b) = store
        .acquire_lease("leader", "b", "b", 60_000)
        .await
        .unwrap()
    else {
        panic!("a released lease is granted");
    };
    assert_eq!(b.token, 2);
    assert_eq!(
        store.renew_lease("leader", "a", 1, 60_000).await.unwrap(),
        None
    );
    assert!(!store.release_lease("leader", "a", 1).await.unwrap());
    assert!(matches!(
        store.acquire_lease("leader", "a", "a", 60_000).await.unwrap(),
        Acquire::HeldBy(r) if r.holder == "b" && r.token == 2
    ));
    // The holder acquiring again (a restart with the same id) is a new holding: new token.
    let again = store
        .acquire_lease("leader", "b", "b", 60_000)
        .await
        .unwrap();
    assert!(
        matches!(again, Acquire::Granted(g) if g.token == 3),
        "{again:?}"
    );
    // Another lease name is independent; bad input is refused before any query.
    assert!(matches!(
        store.acquire_lease("other", "a", "a", 60_000).await.unwrap(),
        Acquire::Granted(g) if g.token == 1
    ));
    assert!(store.acquire_lease("leader", "", "", 1_000).await.is_err());
    assert!(store.acquire_lease("leader", "a", "a", 0).await.is_err());
    assert!(
        store
            .acquire_lease(&"x".repeat(201), "a", "a", 1_000)
            .await
            .is_err()
    );
    assert_eq!(store.lease("nothing").await.unwrap(), None);
}

pub async fn an_expired_lease_is_taken_over_and_its_old_holder_cannot_renew(
    store: Store,
    _url: String,
) {
    use ferry_store::Acquire;
    let Acquire::Granted(a) = store.acquire_lease("leader", "a", "a", 300).await.unwrap() else {
        panic!("granted");
    };
    until_expired(&store, "leader").await;
    let Acquire::Granted(b) = store
        .acquire_lease("leader", "b", "b", 60_000)
        .await
        .unwrap()
    else {
        panic!("an expired lease is granted");
    };
    assert_eq!(b.token, a.token + 1);
    assert_eq!(
        store
            .renew_lease("leader", "a", a.token, 60_000)
            .await
            .unwrap(),
        None
    );
    // An expired lease is not renewed either, even by its holder with its token.
    let Acquire::Granted(c) = store.acquire_lease("short", "c", "c", 300).await.unwrap() else {
        panic!("granted");
    };
    until_expired(&store, "short").await;
    assert_eq!(
        store
            .renew_lease("short", "c", c.token, 60_000)
            .await
            .unwrap(),
        None
    );
}

pub async fn concurrent_acquisitions_grant_the_lease_once(store: Store, _url: String) {
    use ferry_store::Acquire;
    for round in 0..5 {
        let name = format!("leader-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(6));
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let (store, barrier, name) = (store.clone(), barrier.clone(), name.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    store
                        .acquire_lease(
                            &name,
                            &format!("server-{i}"),
                            &format!("server-{i}"),
                            60_000,
                        )
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut granted = 0;
        for task in tasks {
            if let Acquire::Granted(g) = task.await.unwrap() {
                assert_eq!(g.token, 1);
                granted += 1;
            }
        }
        assert_eq!(granted, 1, "round {round}");
    }
}

/// Two live servers given the same id are two holders (the instance tells their processes
/// apart): the second is told who holds it; only the holding process renews or acquires
/// again; a takeover (of a process known dead) replaces only that exact holding.
pub async fn one_server_id_in_two_processes_is_two_holders(store: Store, _url: String) {
    use ferry_store::{Acquire, LeaseRecord};
    let first = "host:10:aaaa";
    let second = "host:11:bbbb";
    let Acquire::Granted(a) = store
        .acquire_lease("leader", "ferry-1", first, 60_000)
        .await
        .unwrap()
    else {
        panic!("a free lease is granted");
    };
    match store
        .acquire_lease("leader", "ferry-1", second, 60_000)
        .await
        .unwrap()
    {
        Acquire::HeldBy(r) => assert_eq!(
            (r.holder.as_str(), r.instance.as_str(), r.token),
            ("ferry-1", first, a.token)
        ),
        other => panic!("the same id in another process must not get it: {other:?}"),
    }
    // The holding process itself acquiring again (a new holding: a new token).
    let Acquire::Granted(again) = store
        .acquire_lease("leader", "ferry-1", first, 60_000)
        .await
        .unwrap()
    else {
        panic!("the holder's own process acquires again");
    };
    assert_eq!(again.token, a.token + 1);
    // A takeover replaces that exact holding only: not an older token, not another process.
    let held = store.lease("leader").await.unwrap().unwrap();
    let stale = LeaseRecord {
        token: a.token,
        ..held.clone()
    };
    let elsewhere = LeaseRecord {
        instance: "host:12:cccc".into(),
        ..held.clone()
    };
    for from in [&stale, &elsewhere] {
        assert!(
            matches!(
                store
                    .take_over_lease("leader", "ferry-1", second, 60_000, from)
                    .await
                    .unwrap(),
                Acquire::HeldBy(ref r) if r.instance == first
            ),
            "{from:?}"
        );
    }
    let Acquire::Granted(b) = store
        .take_over_lease("leader", "ferry-1", second, 60_000, &held)
        .await
        .unwrap()
    else {
        panic!("the exact holding is taken over");
    };
    assert_eq!(b.token, again.token + 1);
    assert_eq!(
        store.lease("leader").await.unwrap().unwrap().instance,
        second
    );
    assert_eq!(
        store
            .renew_lease("leader", "ferry-1", again.token, 60_000)
            .await
            .unwrap(),
        None,
        "the replaced process cannot renew"
    );
    assert!(
        store
            .acquire_lease("leader", "ferry-1", "", 1_000)
            .await
            .is_err()
    );
}

/// Takes the `leader` lease as `a` and fences the store's writes with it.
async fn lead_fenced_as_a(store: &Store) -> ferry_store::LeaseGrant {
    let ferry_store::Acquire::Granted(a) = store
        .acquire_lease("leader", "a", "a", 60_000)
        .await
        .unwrap()
    else {
        panic!("granted");
    };
    store.set_fence(Some(ferry_store::Fence {
        name: "leader".into(),
        holder: "a".into(),
        token: a.token,
    }));
    a
}

pub async fn transitions_commit_only_under_the_fence(store: Store, _url: String) {
    use ferry_store::Acquire;
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let a = lead_fenced_as_a(&store).await;
    let d = store
        .transition(to(&d, DeploymentState::Progressing, 2))
        .await
        .unwrap();
    // Another server takes over: this one's transitions are refused, nothing is written.
    assert!(store.release_lease("leader", "a", a.token).await.unwrap());
    assert!(matches!(
        store
            .acquire_lease("leader", "b", "b", 60_000)
            .await
            .unwrap(),
        Acquire::Granted(_)
    ));
    match store
        .transition(to(&d, DeploymentState::Succeeded, 3))
        .await
    {
        Err(StoreError::Conflict(message)) => assert!(message.contains("fenced"), "{message}"),
        other => panic!("a fenced transition must conflict: {other:?}"),
    }
    assert_eq!(store.get_deployment(d.id).await.unwrap().unwrap(), d);
    assert_eq!(store.events_after(d.id, 0, 10).await.unwrap().len(), 2);
    // Without a fence (a follower's API) transitions go on.
    store.set_fence(None);
    let done = store
        .transition(to(&d, DeploymentState::Succeeded, 4))
        .await
        .unwrap();
    assert_eq!(done.state, DeploymentState::Succeeded);
}

/// Besides transitions, the leader's writes whose double execution a user would see are
/// fenced: a replica's row (written before it starts), a hook attempt (before it runs), a
/// delivery's claim (before it is sent), a rule's alerts with their notifications, a guarded
/// rollout's step. A server that lost the lease writes none of them; without a fence (a
/// follower's API) they go on.
pub async fn the_leaders_visible_writes_commit_only_under_the_fence(store: Store, _url: String) {
    use ferry_core::flags::guard;
    use ferry_core::hooks::HookPhase;
    use ferry_store::{Acquire, AlertWrite, FlagGuardRecord, NewHookRun};
    let d = store
        .create_deployment(new_deployment("shop", "prod", "1.0.0", 1))
        .await
        .unwrap();
    let a = lead_fenced_as_a(&store).await;
    let hook = |attempt| NewHookRun {
        deployment_id: d.id,
        phase: HookPhase::PreDeploy,
        hook: "migrate".into(),
        attempt,
        output_path: None,
        migration: None,
        now_ms: 2,
    };
    let alerted = |key: &str| {
        Notification::new(
            key,
            notify::Kind::AlertFiring,
            "shop",
            "prod",
            notify::Severity::Critical,
            "errors firing",
            3,
        )
    };
    let save_alert = |n: Notification| {
        let store = store.clone();
        async move {
            store
                .save_alerts(
                    "shop",
                    "prod",
                    "errors",
                    &AlertWrite {
                        alerts: &[],
                        events: &[],
                        notifications: std::slice::from_ref(&n),
                        incidents: &[],
                    },
                    3,
                )
                .await
        }
    };
    let guard = FlagGuardRecord {
        id: 999,
        app: "shop".into(),
        env: "prod".into(),
        flag: "a".into(),
        seq: 1,
        guard: guard::start(
            guard::GuardSpec {
                steps: vec![5, 100],
                pause: ferry_core::duration::HumanDuration(std::time::Duration::from_secs(30)),
                analysis: guard::default_analysis(),
                stickiness: None,
                judge: guard::Judge::Flag,
            },
            100,
        ),
        started_by: "alice".into(),
        started_at_ms: 100,
        updated_at_ms: 100,
    };
    // Holding the lease: written.
    store
        .insert_replica(&replica("shop-prod-web-1", "shop", "prod", "web", 2))
        .await
        .unwrap();
    store.start_hook_run(&hook(1)).await.unwrap();
    save_alert(alerted("alert-1")).await.unwrap();
    assert!(!store.claim_delivery(999, 0, 20).await.unwrap());
    assert!(
        !store
            .update_flag_guard(&guard, &guard.guard, 200, None)
            .await
            .unwrap()
    );

    // Another server takes over: nothing of this one's is written any more.
    assert!(store.release_lease("leader", "a", a.token).await.unwrap());
    assert!(matches!(
        store
            .acquire_lease("leader", "b", "b", 60_000)
            .await
            .unwrap(),
        Acquire::Granted(_)
    ));
    let fenced = |what: &str, r: Result<(), StoreError>| match r {
        Err(StoreError::Conflict(message)) => {
            assert!(message.contains("fenced"), "{what}: {message}")
        }
        other => panic!("{what}: a fenced write must conflict: {other:?}"),
    };
    fenced(
        "replica",
        store
            .insert_replica(&replica("shop-prod-web-2", "shop", "prod", "web", 3))
            .await,
    );
    fenced("hook", store.start_hook_run(&hook(2)).await.map(|_| ()));
    fenced("alerts", save_alert(alerted("alert-2")).await);
    fenced(
        "delivery",
        store.claim_delivery(999, 0, 20).await.map(|_| ()),
    );
    fenced(
        "guard",
        store
            .update_flag_guard(&guard, &guard.guard, 200, None)
            .await
            .map(|_| ()),
    );
    let replicas: Vec<String> = store
        .list_replicas(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(replicas, vec!["shop-prod-web-1".to_string()]);
    assert_eq!(store.hook_runs(d.id).await.unwrap().len(), 1);
    let outbox: Vec<String> = store
        .unrouted_notifications(10)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n.key)
        .filter(|k| k.starts_with("alert-"))
        .collect();
    assert_eq!(outbox, vec!["alert-1".to_string()]);

    // Without a fence (a follower's API) the writes go on.
    store.set_fence(None);
    store.start_hook_run(&hook(2)).await.unwrap();
    assert!(!store.claim_delivery(999, 0, 20).await.unwrap());
}

pub async fn a_wake_up_reaches_every_listening_server(store: Store, url: String) {
    let listening = Store::open(&url).await.unwrap();
    let woken = Arc::new(tokio::sync::Notify::new());
    let stop = stop_signal();
    let follow = {
        let (woken, stop) = (woken.clone(), stop.clone());
        tokio::spawn(async move {
            listening
                .follow_wakes(
                    move || woken.notify_one(),
                    async move { stop.notified().await },
                )
                .await
        })
    };
    if url.starts_with("sqlite") {
        // One host, one server: nothing crosses processes; waking is a no-op that succeeds.
        store.wake_leader().await.unwrap();
        stop.notify_one();
        tokio::time::timeout(std::time::Duration::from_secs(10), follow)
            .await
            .expect("stops when asked")
            .unwrap();
        return;
    }
    // The listener may still be connecting: wake until it hears (bounded).
    let heard = async {
        loop {
            store.wake_leader().await.unwrap();
            if tokio::time::timeout(std::time::Duration::from_millis(200), woken.notified())
                .await
                .is_ok()
            {
                return;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), heard)
        .await
        .expect("the listening store hears a wake-up");
    stop.notify_one();
    tokio::time::timeout(std::time::Duration::from_secs(10), follow)
        .await
        .expect("stops when asked")
        .unwrap();
}

/// A stop signal for `follow_wakes` (a stored permit, so a stop sent early is not lost).
fn stop_signal() -> Arc<tokio::sync::Notify> {
    Arc::new(tokio::sync::Notify::new())
}
