//! Feature flags through the API in-process (real SQLite store, the router through
//! `oneshot`): Ferry's flag API with permissions and audit, the Unleash client API with
//! client tokens and ETags, metrics, OFREP, import/export.

#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::{Answer, Harness};
use ferry_store::NewManifest;
use serde_json::{Value, json};
use tower::ServiceExt;

const MANIFEST: &str = "\
app: shop
services:
  web:
    run: [\"true\"]
environments:
  staging:
    listen: 127.0.0.1:18080
  production:
    listen: 127.0.0.1:18081
";

async fn harness() -> Harness {
    let h = Harness::new().await;
    let manifest = ferry_core::manifest::parse(MANIFEST, "ferry.yaml").unwrap();
    h.store
        .apply_manifest(NewManifest {
            app: "shop".into(),
            yaml: MANIFEST.into(),
            manifest_json: serde_json::to_string(&manifest).unwrap(),
            base_dir: None,
            applied_by: "admin".into(),
            now_ms: 1,
        })
        .await
        .unwrap();
    h
}

/// A request with any headers (SDKs send `Authorization: TOKEN`, without `Bearer`).
async fn raw(
    h: &Harness,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let mut request = b.body(body).unwrap();
    request.extensions_mut().insert(ConnectInfo(
        "127.0.0.1:40000".parse::<std::net::SocketAddr>().unwrap(),
    ));
    let response = h.api.router().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn client_token(h: &Harness, env: &str) -> String {
    let t = h
        .admin_ok(
            "POST",
            &format!("/v1/apps/shop/envs/{env}/flag-tokens"),
            Some(json!({"name": "web"})),
        )
        .await;
    t["token"].as_str().unwrap().to_string()
}

fn etag(a: &Answer) -> String {
    a.headers["etag"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_change_bumps_the_revision_so_sdks_never_keep_a_stale_flag() {
    let h = harness().await;
    let token = client_token(&h, "staging").await;
    let base = "/v1/apps/shop/envs/staging/flags";
    let created = h
        .call(
            "POST",
            base,
            Some(&h.admin),
            Some(json!({"name": "checkout.v2"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.json()["summary"]["enabled"], false);

    let first = raw(
        &h,
        "GET",
        "/api/client/features",
        &[("authorization", &token)],
        None,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let doc = first.json();
    assert_eq!(doc["features"][0]["name"], "checkout.v2");
    assert_eq!(doc["features"][0]["enabled"], false);
    let tag = etag(&first);
    let again = raw(
        &h,
        "GET",
        "/api/client/features",
        &[("authorization", &token), ("if-none-match", &tag)],
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(etag(&again), tag);

    // the kill switch flips it back off; in between, enable
    let on = raw(
        &h,
        "POST",
        &format!("{base}/checkout.v2/enable"),
        &[
            ("authorization", &format!("Bearer {}", h.admin)),
            ("x-ferry-reason", "launch"),
        ],
        None,
    )
    .await;
    assert_eq!(on.status, StatusCode::OK, "{}", on.text);
    let after = raw(
        &h,
        "GET",
        "/api/client/features",
        &[("authorization", &token), ("if-none-match", &tag)],
        None,
    )
    .await;
    assert_eq!(
        after.status,
        StatusCode::OK,
        "a change must invalidate the old ETag"
    );
    assert_ne!(etag(&after), tag);
    assert_eq!(after.json()["features"][0]["enabled"], true);

    // who, before/after and why are kept with the flag, and in the audit log
    let shown = h
        .admin_ok("GET", &format!("{base}/checkout.v2"), None)
        .await;
    let change = &shown["changes"][0];
    assert_eq!(change["action"], "enable");
    assert_eq!(change["reason"], "launch");
    assert_eq!(change["before"]["enabled"], false);
    assert_eq!(change["after"]["enabled"], true);
    let audit = h.admin_ok("GET", "/v1/audit?app=shop", None).await;
    let text = audit.to_string();
    assert!(text.contains("flags.enable"), "{text}");
    assert!(text.contains("enabled false → true"), "{text}");

    // rollout and variants, then archive: no longer served
    let r = h
        .call(
            "PUT",
            &format!("{base}/checkout.v2/rollout"),
            Some(&h.admin),
            Some(json!({"percent": 25})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["summary"]["rollout"], 25);
    let v = h
        .call(
            "PUT",
            &format!("{base}/checkout.v2/variants"),
            Some(&h.admin),
            Some(json!({"variants": [
                {"name": "blue", "percent": 30, "payload": {"type": "string", "value": "b"}},
                {"name": "red"}
            ]})),
        )
        .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text);
    let weights: Vec<i64> = v.json()["feature"]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights, [300, 700]);
    h.admin_ok("POST", &format!("{base}/checkout.v2/archive"), None)
        .await;
    let served = raw(
        &h,
        "GET",
        "/api/client/features",
        &[("authorization", &token)],
        None,
    )
    .await;
    assert_eq!(served.json()["features"], json!([]));
    let listed = h
        .admin_ok("GET", &format!("{base}?archived=true"), None)
        .await;
    assert_eq!(listed["flags"][0]["archived"], true);
    assert_eq!(
        listed["revision"], 5,
        "one revision per change (create, enable, rollout, variants, archive): {listed}"
    );
}

#[tokio::test]
async fn manage_flags_is_scoped_by_app_and_environment_and_client_tokens_only_read_their_own() {
    let h = harness().await;
    h.admin_ok(
        "POST",
        "/v1/roles",
        Some(json!({"name": "flagger", "permissions": ["view", "manage_flags"]})),
    )
    .await;
    let flagger = h
        .user_with("fay", "flagger", Some("shop"), &["staging"])
        .await;
    let viewer = h.user_with("vic", "viewer", Some("shop"), &[]).await;
    let create = |env: &str| format!("/v1/apps/shop/envs/{env}/flags");
    let body = || Some(json!({"name": "a"}));
    assert_eq!(
        h.call("POST", &create("staging"), Some(&flagger), body())
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        h.call("POST", &create("production"), Some(&flagger), body())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call(
            "POST",
            &create("staging"),
            Some(&viewer),
            Some(json!({"name": "b"}))
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        h.call("GET", &create("staging"), Some(&viewer), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        h.call(
            "POST",
            &create("production"),
            Some(&h.admin),
            Some(json!({"name": "prod-only"}))
        )
        .await
        .status,
        StatusCode::CREATED
    );

    // a staging client token sees staging's flags only, and nothing of Ferry's API
    let token = client_token(&h, "staging").await;
    let doc = raw(
        &h,
        "GET",
        "/api/client/features",
        &[("authorization", &token)],
        None,
    )
    .await
    .json();
    let names: Vec<&str> = doc["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"]);
    assert_eq!(
        h.call("GET", &create("staging"), Some(&token), None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // and Ferry credentials are not client tokens
    assert_eq!(
        raw(
            &h,
            "GET",
            "/api/client/features",
            &[("authorization", &format!("Bearer {}", h.admin))],
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        raw(&h, "GET", "/api/client/features", &[], None)
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    // revoked: refused at once
    let tokens = h
        .admin_ok("GET", "/v1/apps/shop/envs/staging/flag-tokens", None)
        .await;
    assert!(
        !tokens.to_string().contains(&token),
        "token values are never listed"
    );
    let id = tokens["tokens"][0]["id"].as_i64().unwrap();
    h.admin_ok(
        "DELETE",
        &format!("/v1/apps/shop/envs/staging/flag-tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(
        raw(
            &h,
            "GET",
            "/api/client/features",
            &[("authorization", &token)],
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn sdk_metrics_are_counted_per_flag_and_hour_and_bounded() {
    let h = harness().await;
    let token = client_token(&h, "staging").await;
    let auth = [("authorization", token.as_str())];
    let reg = raw(
        &h,
        "POST",
        "/api/client/register",
        &auth,
        Some(json!({"appName": "web", "instanceId": "i1", "sdkVersion": "unleash-client-python:6.9.1", "strategies": [], "started": "2026-01-01T00:00:00Z", "interval": 15000})),
    )
    .await;
    assert_eq!(reg.status, StatusCode::ACCEPTED, "{}", reg.text);
    let report = |yes: u64| {
        json!({"appName": "web", "instanceId": "i1", "bucket": {"start": "2026-01-01T00:00:00Z", "stop": "2026-01-01T00:01:00Z",
            "toggles": {"checkout": {"yes": yes, "no": 2, "variants": {"blue": yes}}}}})
    };
    for yes in [3, 4] {
        let a = raw(&h, "POST", "/api/client/metrics", &auth, Some(report(yes))).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    }
    let m = h
        .admin_ok("GET", "/v1/apps/shop/envs/staging/flag-metrics", None)
        .await;
    let row = &m["metrics"][0];
    assert_eq!(
        (row["flag"].clone(), row["yes"].clone(), row["no"].clone()),
        (json!("checkout"), json!(7), json!(4))
    );
    assert_eq!(row["variants"]["blue"], 7);

    let many: serde_json::Map<String, Value> = (0..5_001)
        .map(|i| (format!("f{i}"), json!({"yes": 1, "no": 0})))
        .collect();
    let big = raw(
        &h,
        "POST",
        "/api/client/metrics",
        &auth,
        Some(json!({"appName": "web", "bucket": {"toggles": many}})),
    )
    .await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST, "{}", big.text);
}

#[tokio::test]
async fn ofrep_answers_values_reasons_variants_and_error_codes() {
    let h = harness().await;
    let token = client_token(&h, "staging").await;
    let doc = json!({"features": [
        {"name": "beta", "enabled": true, "strategies": [{"name": "userWithId", "parameters": {"userIds": "u1,u2"}}]},
        {"name": "banner", "enabled": true, "strategies": [{"name": "default"}],
         "variants": [{"name": "big", "weight": 1000, "payload": {"type": "string", "value": "BIG"}}]}
    ]});
    let imported = h
        .call(
            "POST",
            "/v1/apps/shop/envs/staging/features",
            Some(&h.admin),
            Some(doc),
        )
        .await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.text);
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];

    let one = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/beta",
        &auth,
        Some(json!({"context": {"targetingKey": "u1"}})),
    )
    .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    let one = one.json();
    assert_eq!(
        (
            one["value"].clone(),
            one["reason"].clone(),
            one["variant"].clone()
        ),
        (json!(true), json!("TARGETING_MATCH"), json!("on"))
    );
    let other = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/beta",
        &auth,
        Some(json!({"context": {"targetingKey": "u9"}})),
    )
    .await
    .json();
    assert_eq!(
        (other["value"].clone(), other["variant"].clone()),
        (json!(false), json!("off"))
    );
    let banner = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/banner",
        &auth,
        Some(json!({"context": {}})),
    )
    .await
    .json();
    assert_eq!(
        (banner["value"].clone(), banner["variant"].clone()),
        (json!("BIG"), json!("big"))
    );

    let missing = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/nope",
        &auth,
        Some(json!({"context": {}})),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["errorCode"], "FLAG_NOT_FOUND");
    let bad = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/beta",
        &auth,
        Some(json!({"context": {"a": {"b": 1}}})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["errorCode"], "INVALID_CONTEXT");
    let garbage = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags/beta",
        &auth,
        Some(json!([1, 2])),
    )
    .await;
    assert_eq!(garbage.json()["errorCode"], "PARSE_ERROR");

    let ctx = Some(json!({"context": {"targetingKey": "u2"}}));
    let all = raw(&h, "POST", "/ofrep/v1/evaluate/flags", &auth, ctx.clone()).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.text);
    assert_eq!(all.json()["flags"].as_array().unwrap().len(), 2);
    let tag = etag(&all);
    let with_tag = [
        ("authorization", bearer.as_str()),
        ("if-none-match", tag.as_str()),
    ];
    assert_eq!(
        raw(&h, "POST", "/ofrep/v1/evaluate/flags", &with_tag, ctx)
            .await
            .status,
        StatusCode::NOT_MODIFIED
    );
    let other_ctx = raw(
        &h,
        "POST",
        "/ofrep/v1/evaluate/flags",
        &with_tag,
        Some(json!({"context": {"targetingKey": "u9"}})),
    )
    .await;
    assert_eq!(
        other_ctx.status,
        StatusCode::OK,
        "another context is another answer"
    );
}

#[tokio::test]
async fn import_then_export_keeps_the_unleash_document_and_bad_flags_are_located() {
    let h = harness().await;
    let spec: Value = serde_json::from_str(include_str!(
        "../../ferry-core/tests/data/unleash-client-specification/15-global-constraints.json"
    ))
    .unwrap();
    let state = spec["state"].clone();
    let a = h
        .call(
            "POST",
            "/v1/apps/shop/envs/production/features",
            Some(&h.admin),
            Some(state.clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let exported = h
        .admin_ok("GET", "/v1/apps/shop/envs/production/features", None)
        .await;
    let parse = |doc: &Value| {
        let mut d: ferry_core::flags::ClientFeatures = serde_json::from_value(doc.clone()).unwrap();
        d.features.sort_by(|a, b| a.name.cmp(&b.name));
        (d.features, d.segments)
    };
    assert_eq!(parse(&exported), parse(&state));

    let bad = h
        .call(
            "PUT",
            "/v1/apps/shop/envs/production/flags/x",
            Some(&h.admin),
            Some(json!({"feature": {"name": "x", "enabled": true, "strategies": [{"name": "default",
                "constraints": [{"contextName": "version", "operator": "SEMVER_GT", "value": "v1"}]}]}})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text);
    assert_eq!(
        bad.json()["details"][0],
        "flag x.strategies[0].constraints[0]"
    );
    let unknown = h
        .call(
            "POST",
            "/v1/apps/shop/envs/nowhere/flags",
            Some(&h.admin),
            Some(json!({"name": "a"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_guarded_rollout_refuses_a_bad_analysis_block_with_a_located_400() {
    let h = harness().await;
    h.admin_ok(
        "POST",
        "/v1/apps/shop/envs/production/flags",
        Some(json!({"name": "checkout"})),
    )
    .await;
    let path = "/v1/apps/shop/envs/production/flags/checkout/guarded-rollout";
    // Any object is schema-valid for `analysis`: what the manifest's schema refuses (an
    // unknown field, a wrong type) is the same 400 as the analysis rules.
    for analysis in [
        json!({"¢": {}}),
        json!({"interval": 5}),
        json!({"metrics": [{"name": "errors", "builtin": "error_rate", "max": 1, "x": 1}]}),
    ] {
        let a = h
            .call(
                "POST",
                path,
                Some(&h.admin),
                Some(json!({ "analysis": analysis })),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{analysis}: {}", a.text);
        assert_eq!(a.json()["code"], "invalid_guarded_rollout", "{}", a.text);
        assert_eq!(a.json()["details"][0], "analysis", "{}", a.text);
    }
    let zero = h
        .call("POST", path, Some(&h.admin), Some(json!({"pause": "0s"})))
        .await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST, "{}", zero.text);
    assert_eq!(zero.json()["details"][0], "pause", "{}", zero.text);
    // Nothing was started by the refused requests.
    let none = h.call("GET", path, Some(&h.admin), None).await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.text);
}

/// openapi.json's bounds on the flag operations, each at the bound (accepted) and just
/// beyond it (refused), and shapes serde alone would take: an array where the schema has an
/// object, a strategy parameter that is neither a string nor a number, a pause outside the
/// pattern. Each was accepted before (schemathesis's negative data) or is a bound the
/// schema states.
#[tokio::test]
async fn the_flag_operations_refuse_exactly_what_openapi_refuses() {
    let h = harness().await;
    let flags = "/v1/apps/shop/envs/production/flags";
    h.admin_ok("POST", flags, Some(json!({"name": "checkout"})))
        .await;
    let name = |n: usize| "é".repeat(n);
    let strategy = |constraint: Value| {
        json!({"feature": {"name": "checkout", "strategies": [
            {"name": "default", "constraints": [constraint]}]}})
    };
    let put = format!("{flags}/checkout");
    let variants = format!("{flags}/checkout/variants");
    let guard = format!("{flags}/checkout/guarded-rollout");
    let tokens = "/v1/apps/shop/envs/production/flag-tokens";
    // (method, path, body, accepted?)
    let cases: Vec<(&str, &str, Value, bool)> = vec![
        // names counted in characters, as maxLength counts them
        (
            "PUT",
            &variants,
            json!({"variants": [{"name": name(100)}]}),
            true,
        ),
        (
            "PUT",
            &variants,
            json!({"variants": [{"name": name(101)}]}),
            false,
        ),
        ("PUT", &variants, json!({"variants": [{"name": ""}]}), false),
        (
            "PUT",
            &put,
            strategy(json!({"contextName": name(100), "operator": "IN"})),
            true,
        ),
        (
            "PUT",
            &put,
            strategy(json!({"contextName": name(101), "operator": "IN"})),
            false,
        ),
        (
            "PUT",
            &put,
            strategy(json!({"contextName": "", "operator": "IN"})),
            false,
        ),
        ("POST", tokens, json!({"name": name(64)}), true),
        ("POST", tokens, json!({"name": name(65)}), false),
        // a feature's name follows the flag names' pattern, even where the path's replaces it
        ("PUT", &put, json!({"feature": {"name": "a b"}}), false),
        (
            "POST",
            flags,
            json!({"name": "m", "feature": {"name": ""}}),
            false,
        ),
        // strategy names are the enum; parameters strings or numbers
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "strategies": [{"name": "custom"}]}}),
            false,
        ),
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "strategies": [
                {"name": "default", "parameters": {"a": "1", "b": 2}}]}}),
            true,
        ),
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "strategies": [
                {"name": "default", "parameters": {"a": true}}]}}),
            false,
        ),
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "strategies": [
                {"name": "default", "parameters": {"a": null}}]}}),
            false,
        ),
        // arrays where the schema has an object
        ("PUT", &put, json!({"feature": ["checkout"]}), false),
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "strategies": [["default"]]}}),
            false,
        ),
        ("PUT", &put, strategy(json!(["ctx", "IN"])), false),
        (
            "PUT",
            &put,
            json!({"feature": {"name": "x", "variants": [["a", 1000]]}}),
            false,
        ),
        ("POST", flags, json!({"name": "n", "feature": ["n"]}), false),
        ("POST", &guard, json!({"analysis": []}), false),
        // the pause's pattern, and no more
        ("POST", &guard, json!({"pause": "1d"}), false),
        ("POST", &guard, json!({"pause": "1h 30m"}), false),
        ("POST", &guard, json!({"pause": "5sec"}), false),
        ("POST", &guard, json!({"pause": "1234567890s"}), false),
        ("POST", &guard, json!({"pause": "1h30m"}), true),
    ];
    for (method, path, body, accepted) in cases {
        let a = h
            .call(method, path, Some(&h.admin), Some(body.clone()))
            .await;
        if accepted {
            assert!(a.status.is_success(), "{method} {path} {body}: {}", a.text);
        } else {
            assert!(
                a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::UNPROCESSABLE_ENTITY,
                "{method} {path} {body}: {} {}",
                a.status,
                a.text
            );
        }
    }
    // The SDK endpoints: a metrics report's bucket and counts are objects.
    let token = client_token(&h, "production").await;
    for (body, accepted) in [
        (
            json!({"bucket": {"toggles": {"checkout": {"yes": 1, "no": 0}}}}),
            true,
        ),
        (json!({"bucket": []}), false),
        (json!({"bucket": {"toggles": {"checkout": []}}}), false),
        (json!({"bucket": {"toggles": {"checkout": [1, 2]}}}), false),
    ] {
        let a = raw(
            &h,
            "POST",
            "/api/client/metrics",
            &[("authorization", &token)],
            Some(body.clone()),
        )
        .await;
        let expected = if accepted {
            StatusCode::ACCEPTED
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(a.status, expected, "{body}: {}", a.text);
    }
}
