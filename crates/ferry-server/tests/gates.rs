//! The gate report and freeze overrides through the API (no controller): rows for every
//! configured gate from the stored facts, an override needs a reason, the freeze gate, a
//! waiting deployment and an environment with freeze windows; it is stored and audited.

#![allow(clippy::unwrap_used)]

mod common;

use axum::http::StatusCode;
use common::Harness;
use ferry_core::gates::CheckResult;
use serde_json::{Value, json};

/// Appended to `common::SHOP`: production's gates.
const GATES: &str = "    gates:
      freeze:
        - { from: \"2000-01-01T00:00:00\", until: \"2999-01-01T00:00:00\" }
      approvals:
        - { role: approver }
      checks:
        - { name: ci, http: { url: \"http://127.0.0.1:9/${VERSION}\" }, interval: 1h }
";

async fn with_manifest() -> Harness {
    Harness::with_manifest(&format!("{}{GATES}", common::SHOP)).await
}

fn rows(report: &Value) -> Vec<(String, String)> {
    report["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["gate"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn pair(gate: &str, state: &str) -> (String, String) {
    (gate.into(), state.into())
}

#[tokio::test]
async fn the_report_lists_every_gate_and_an_override_lifts_the_freeze() {
    let h = with_manifest().await;
    let dep = h
        .deployment("shop", "production", "1.2.0", "user:alice")
        .await;
    let admin = Some(h.admin.as_str());
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    h.store
        .record_check_result(
            dep,
            &CheckResult {
                name: "ci".into(),
                passed: false,
                explanation: "expected status 200, got 503".into(),
                at_ms: now,
            },
        )
        .await
        .unwrap();

    let report = h
        .call("GET", &format!("/v1/deployments/{dep}/gates"), admin, None)
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text);
    let report = report.json();
    assert_eq!(report["verdict"], "waiting");
    assert_eq!(
        rows(&report),
        vec![
            pair("freeze", "waiting"),
            pair("approvals", "waiting"),
            pair("checks:ci", "failed")
        ]
    );
    assert!(
        report["gates"][2]["detail"]
            .as_str()
            .unwrap()
            .contains("got 503"),
        "{report:#}"
    );

    let path = format!("/v1/deployments/{dep}/overrides");
    for (body, why) in [
        (json!({"gate": "freeze"}), "reason"),
        (json!({"gate": "freeze", "reason": "   "}), "reason"),
        (json!({"gate": "approvals", "reason": "x"}), "only `freeze`"),
        (json!({"reason": "x"}), "--gate freeze"),
    ] {
        let a = h.call("POST", &path, admin, Some(body.clone())).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert!(a.text.contains(why), "{body}: {}", a.text);
    }
    let a = h
        .call(
            "POST",
            &path,
            admin,
            Some(json!({"gate": "freeze", "reason": "hotfix for INC-123"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let report = a.json();
    assert_eq!(
        rows(&report),
        vec![
            pair("freeze", "overridden"),
            pair("approvals", "waiting"),
            pair("checks:ci", "failed")
        ]
    );
    assert_eq!(
        report["gates"][0]["detail"],
        "overridden by token:admin: hotfix for INC-123"
    );
    assert_eq!(report["overrides"][0]["by"], "token:admin");
    assert_eq!(report["overrides"][0]["reason"], "hotfix for INC-123");

    // The approvals view carries the same rows.
    let a = h
        .call(
            "GET",
            &format!("/v1/deployments/{dep}/approvals"),
            admin,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(rows(&a.json()), rows(&report));

    // Audited, with its reason.
    let a = h.call("GET", "/v1/audit?app=shop", admin, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let records = a.json();
    assert!(
        records
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "gates.override"
                && r["reason"] == "hotfix for INC-123"
                && r["outcome"] == "ok"),
        "{records:#}"
    );

    // No freeze window in staging: nothing to override. Unknown deployment: 404.
    let staging = h.deployment("shop", "staging", "1.2.0", "user:alice").await;
    let a = h
        .call(
            "POST",
            &format!("/v1/deployments/{staging}/overrides"),
            admin,
            Some(json!({"gate": "freeze", "reason": "x"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.text);
    let a = h
        .call(
            "GET",
            &format!("/v1/deployments/{staging}/gates"),
            admin,
            None,
        )
        .await;
    assert_eq!(a.json()["verdict"], "passed", "{}", a.text);
    assert!(rows(&a.json()).is_empty());
    let a = h
        .call("GET", "/v1/deployments/999999/gates", admin, None)
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
}
