//! The DORA endpoint over HTTP (no controller): GitLab's shape (`metric`, `interval`,
//! `start_date`, `end_date`, `[{date, value}]`, its `time_to_restore_service` name), the
//! whole report with the deployments behind each figure, 404s naming the unknown app or
//! environment, JSON 400s naming the field and what it allows, permissions first, and a
//! deploy's `fix_of` refused (400 naming it) before anything is written.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::Harness;
use ferry_core::model::{DeploymentKind, DeploymentState, EventKind};
use ferry_store::{NewDeployment, NewRelease, Transition};
use serde_json::{Value, json};

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;
const DAY: i64 = 24 * HOUR;
/// 2026-03-02T00:00:00Z, a Monday.
const T0: i64 = 1_772_409_600_000;

/// A deployment of `version` in `env` from `start` to `end`, ending `state`.
async fn finished(
    h: &Harness,
    env: &str,
    version: &str,
    state: DeploymentState,
    start: i64,
    end: i64,
) -> i64 {
    let d = h
        .store
        .create_deployment(NewDeployment {
            app: "shop".into(),
            env: env.into(),
            version: version.into(),
            previous_version: None,
            kind: DeploymentKind::Deploy,
            strategy: "rolling".into(),
            requested_by: "user:alice".into(),
            manifest_revision: 1,
            now_ms: start,
            fix_of: None,
        })
        .await
        .unwrap();
    h.store
        .transition(Transition {
            id: d.id,
            expected_row_version: d.row_version,
            state,
            reason: None,
            phase: d.phase.clone(),
            set_current_version: None,
            event: format!("state: {state}"),
            event_kind: EventKind::State,
            now_ms: end,
            notifications: Vec::new(),
        })
        .await
        .unwrap();
    d.id
}

/// shop with staging and production; in production: 1.0.0 (committed an hour before it
/// started) succeeded on Monday, 1.1.0 rolled back on Tuesday, 1.2.0 succeeded the next
/// Monday; one failed deployment in staging.
async fn with_history() -> (Harness, [i64; 4]) {
    let h = Harness::with_manifest(common::SHOP).await;
    let mut data = ferry_core::release::ReleaseData {
        commit: Some("abcdef1".into()),
        ..Default::default()
    };
    data.commit_time = ferry_core::release::commit_time_text(T0 + 9 * HOUR);
    h.store
        .record_release(
            NewRelease {
                app: "shop".into(),
                version: "1.0.0".into(),
                data,
                created_by: "user:alice".into(),
                now_ms: 1,
            },
            true,
        )
        .await
        .unwrap();
    let ok = finished(
        &h,
        "production",
        "1.0.0",
        DeploymentState::Succeeded,
        T0 + 10 * HOUR,
        T0 + 10 * HOUR + 10 * MIN,
    )
    .await;
    let bad = finished(
        &h,
        "production",
        "1.1.0",
        DeploymentState::RolledBack,
        T0 + DAY + 10 * HOUR,
        T0 + DAY + 10 * HOUR + 5 * MIN,
    )
    .await;
    let fixed = finished(
        &h,
        "production",
        "1.2.0",
        DeploymentState::Succeeded,
        T0 + 7 * DAY + 10 * HOUR,
        T0 + 7 * DAY + 10 * HOUR + 10 * MIN,
    )
    .await;
    let staging = finished(
        &h,
        "staging",
        "1.1.0",
        DeploymentState::Failed,
        T0 + DAY,
        T0 + DAY + MIN,
    )
    .await;
    (h, [ok, bad, fixed, staging])
}

const PATH: &str = "/v1/apps/shop/envs/production/dora";
const TWO_WEEKS: &str = "start_date=2026-03-02&end_date=2026-03-15";

async fn get(h: &Harness, query: &str) -> (StatusCode, Value) {
    let answer = h
        .call("GET", &format!("{PATH}?{query}"), Some(&h.admin), None)
        .await;
    let json = answer.json();
    (answer.status, json)
}

#[tokio::test]
async fn gitlab_shaped_series_and_the_whole_report() {
    let (h, [ok, bad, fixed, _]) = with_history().await;
    let (status, body) = get(
        &h,
        &format!("{TWO_WEEKS}&interval=weekly&metric=deployment_frequency"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!([{"date": "2026-03-02", "value": 1.0}, {"date": "2026-03-09", "value": 1.0}])
    );
    let (status, body) = get(
        &h,
        &format!("{TWO_WEEKS}&interval=all&metric=change_failure_rate"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body[0]["date"], Value::Null);
    assert!(
        (body[0]["value"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{body}"
    );
    // GitLab's name for the recovery time; seconds: rolled back 5 minutes after it started
    let (status, body) = get(
        &h,
        &format!("{TWO_WEEKS}&interval=all&metric=time_to_restore_service"),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!([{"date": null, "value": 300.0}]))
    );
    // lead time in seconds: committed 09:00, succeeded 10:10; daily buckets by default
    let (status, body) = get(&h, &format!("{TWO_WEEKS}&metric=lead_time_for_changes")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 14);
    assert_eq!(body[0], json!({"date": "2026-03-02", "value": 4200.0}));
    assert_eq!(body[1], json!({"date": "2026-03-03", "value": null}));

    // without `metric`: every figure and the deployments behind it
    let (status, report) = get(&h, &format!("{TWO_WEEKS}&interval=monthly")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["app"].clone(), report["env"].clone()),
        (json!("shop"), json!("production"))
    );
    assert_eq!(report["interval"], "monthly");
    assert_eq!(
        (report["start_ms"].as_i64(), report["end_ms"].as_i64()),
        (Some(T0), Some(T0 + 14 * DAY))
    );
    let s = &report["summary"];
    assert_eq!(s["production_deployments"], json!([ok, bad, fixed]));
    assert_eq!(s["deployment_frequency"]["deployments"], json!([ok, fixed]));
    assert_eq!(
        s["lead_time_for_changes"]["samples"],
        json!([{"deployment": ok, "ms": 70 * MIN}])
    );
    assert_eq!(s["change_failure_rate"]["deployments"], json!([bad]));
    assert_eq!(s["change_failure_rate"]["level"], "low");
    assert_eq!(
        s["failed_deployment_recovery_time"]["samples"],
        json!([{"deployment": bad, "ms": 5 * MIN}])
    );
    assert_eq!(s["deployment_rework_rate"]["deployments"], json!([fixed]));
    assert_eq!(report["buckets"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_names_bad_values_and_permissions() {
    let (h, [ok, _, _, staging]) = with_history().await;
    let admin = Some(h.admin.as_str());
    let error = |status: StatusCode, body: &Value, needles: &[&str]| {
        assert!(body["message"].is_string(), "a JSON error: {body}");
        for needle in needles {
            assert!(
                body["message"].as_str().unwrap().contains(needle),
                "{status} should mention {needle:?}: {body}"
            );
        }
    };
    let a = h
        .call("GET", "/v1/apps/nope/envs/production/dora", admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    error(a.status, &a.json(), &["\"nope\""]);
    let a = h
        .call("GET", "/v1/apps/shop/envs/qa/dora", admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    error(a.status, &a.json(), &["\"qa\"", "staging, production"]);

    for (query, needles) in [
        (
            "interval=hourly",
            &["interval", "\"hourly\"", "daily, weekly, monthly, all"][..],
        ),
        (
            "metric=mttr",
            &[
                "metric",
                "\"mttr\"",
                "deployment_frequency",
                "time_to_restore_service",
            ],
        ),
        ("start_date=2026-13-01", &["start_date", "2026-13-01"]),
        ("end_date=yesterday", &["end_date"]),
        ("start_date=2026-03-05&end_date=2026-03-02", &["empty"]),
        ("start_date=2000-01-01&end_date=2026-03-02", &["3660"]),
        ("interval=daily&interval=weekly", &["interval"]),
    ] {
        let (status, body) = get(&h, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], "bad_request", "{query}: {body}");
        error(status, &body, needles);
    }

    // permissions come first: someone who may not see shop gets 403, never a 404 that
    // would tell which apps exist
    let outsider = h.token("outsider", "viewer", Some("other"), &[]).await;
    for path in [PATH, "/v1/apps/nope/envs/production/dora"] {
        let a = h.call("GET", path, Some(&outsider), None).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}: {}", a.text);
    }
    let viewer = h
        .token("viewer", "viewer", Some("shop"), &["production"])
        .await;
    let a = h.call("GET", PATH, Some(&viewer), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);

    // a deploy's fix_of must name an earlier production deployment here; refused before
    // anything is written (no release recorded, no incident)
    let pending = h
        .deployment("shop", "production", "1.3.0", "user:alice")
        .await;
    for (fix_of, needle) in [
        (
            999_999,
            "fix_of: deployment 999999 does not exist".to_string(),
        ),
        (
            staging,
            format!(
                "fix_of: deployment {staging} is a deployment of shop/staging, not of shop/production"
            ),
        ),
        (
            pending,
            format!("fix_of: deployment {pending} is a deploy that ended pending"),
        ),
    ] {
        let a = h
            .call(
                "POST",
                "/v1/apps/shop/envs/production/deployments",
                admin,
                Some(json!({"version": "1.4.0", "commit": "1234567", "fix_of": fix_of})),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{fix_of}: {}", a.text);
        error(a.status, &a.json(), &[&needle]);
    }
    assert!(
        h.store
            .get_release("shop", "1.4.0")
            .await
            .unwrap()
            .is_none()
    );
    let facts = h.store.dora_facts("shop", "production", 100).await.unwrap();
    assert!(facts.incidents.is_empty());
    assert!(facts.deployments.iter().any(|d| d.id == ok));
}
