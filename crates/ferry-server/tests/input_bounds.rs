//! What a caller sends is bounded before it is parsed or expanded, and permissions come
//! first: a viewer's huge or explosive manifest is refused without being read; an
//! admin's gets a located error in bounded time; error answers never repeat a huge value.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use common::Harness;
use ferry_core::api::MAX_REQUEST_BYTES;
use serde_json::json;
use tower::ServiceExt;

/// The bomb: `T{i}: "${T{i-1}}${T{i-1}}"` for 30 levels (16 GiB if expanded).
fn bomb() -> String {
    let mut yaml = String::from("app: shop\nvars:\n  T0: \"xxxxxxxxxxxxxxxx\"\n");
    for i in 1..=30 {
        yaml.push_str(&format!("  T{i}: \"${{T{}}}${{T{}}}\"\n", i - 1, i - 1));
    }
    yaml.push_str(concat!(
        "services:\n  web:\n    run: [\"./web\"]\n    env:\n      ALL: \"${T30}\"\n",
        "environments:\n  prod:\n    listen: 127.0.0.1:1\n"
    ));
    yaml
}

/// `count` variables chained to each other (the 50,000-variable manifest).
fn many_vars(count: usize) -> String {
    let mut yaml = String::from("app: shop\nvars:\n");
    for i in 0..count {
        yaml.push_str(&format!("  V{i}: \"${{V{}}}\"\n", i + 1));
    }
    yaml.push_str(concat!(
        "services:\n  web:\n    run: [\"./web\"]\n",
        "environments:\n  prod:\n    listen: 127.0.0.1:1\n"
    ));
    yaml
}

/// A POST of `body` to `path` whose body is `chunk` and then never ends: answered only if
/// the server decides without reading the body.
async fn endless_post(h: &Harness, path: &str, token: &str, chunk: String) -> (StatusCode, String) {
    let stream = futures_util::StreamExt::chain(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(chunk)) }),
        futures_util::stream::pending(),
    );
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    let response = tokio::time::timeout(Duration::from_secs(30), h.api.router().oneshot(request))
        .await
        .expect("answered without reading the body")
        .unwrap();
    let status = response.status();
    let text = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&text).into_owned())
}

#[tokio::test]
async fn a_viewer_gets_403_before_the_body_is_read() {
    let h = Harness::new().await;
    let viewer = h.user_with("vera", "viewer", None, &[]).await;
    // A body that never ends: reading it would hang the request.
    let (status, text) = endless_post(
        &h,
        "/v1/apps",
        &viewer,
        format!(
            "{{\"manifest\": {}",
            serde_json::to_string(&bomb()).unwrap()
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(
        text.contains("none of your bindings gives manage_apps anywhere"),
        "{text}"
    );
    // The same for a body sent whole, dry run or not: 403 at once.
    for dry_run in [false, true] {
        let started = Instant::now();
        let a = h
            .call(
                "POST",
                "/v1/apps",
                Some(&viewer),
                Some(json!({ "manifest": many_vars(50_000), "dry_run": dry_run })),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "403 took {:?}",
            started.elapsed()
        );
    }
    // The denial is audited.
    let audit = h.admin_ok("GET", "/v1/audit?action=apply", None).await;
    let denied = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"].as_str().unwrap_or("").starts_with("denied"))
        .count();
    assert_eq!(denied, 3, "{audit}");
}

#[tokio::test]
async fn a_developer_of_another_app_is_refused_after_only_the_app_name_is_read() {
    let h = Harness::new().await;
    // May manage apps, but only `cart`.
    let dev = h.user_with("dora", "admin", Some("cart"), &[]).await;
    let started = Instant::now();
    let a = h
        .call(
            "POST",
            "/v1/apps",
            Some(&dev),
            Some(json!({ "manifest": bomb() })),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_admin_gets_a_located_error_for_the_bomb_in_bounded_time() {
    let h = Harness::new().await;
    for dry_run in [true, false] {
        let started = Instant::now();
        let a = h
            .call(
                "POST",
                "/v1/apps",
                Some(&h.admin),
                Some(json!({ "manifest": bomb(), "file_name": "bomb.yaml", "dry_run": dry_run })),
            )
            .await;
        let elapsed = started.elapsed();
        assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
        let body = a.json();
        assert_eq!(body["code"], "invalid_manifest");
        let details = body["details"].to_string();
        assert!(
            details.contains("bomb.yaml:17:8: vars.T14: `T14` expands to more than 131072 bytes"),
            "{details}"
        );
        assert!(a.text.len() < 10_000, "short answer: {}", a.text);
        assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    }
    let a = h
        .call(
            "POST",
            "/v1/apps",
            Some(&h.admin),
            Some(json!({ "manifest": many_vars(50_000) })),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert!(
        a.text
            .contains("ferry.yaml:2:1: vars: 50000 variables, more than the limit of 1000"),
        "{}",
        a.text
    );
    // Nothing was stored.
    let apps = h.admin_ok("GET", "/v1/apps", None).await;
    assert_eq!(apps, json!([]));
}

#[tokio::test]
async fn bodies_over_the_shared_limit_get_a_json_413() {
    let h = Harness::new().await;
    let manifest = "#".repeat(MAX_REQUEST_BYTES);
    let a = h
        .call(
            "POST",
            "/v1/apps",
            Some(&h.admin),
            Some(json!({ "manifest": manifest })),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert_eq!(a.json()["code"], "too_large");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains(&MAX_REQUEST_BYTES.to_string()),
        "{}",
        a.text
    );
    // Just under the limit is read whole (and judged as a manifest, not refused by size).
    let fits = "#".repeat(MAX_REQUEST_BYTES - 1000);
    let a = h
        .call(
            "POST",
            "/v1/apps",
            Some(&h.admin),
            Some(json!({ "manifest": format!("app: shop\n{fits}") })),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.text);
    assert_eq!(a.json()["code"], "invalid_manifest");
}

#[tokio::test]
async fn errors_never_repeat_a_huge_value() {
    let h = Harness::new().await;
    let huge = "A".repeat(3_000_000);
    let a = h
        .call(
            "POST",
            "/v1/apps",
            Some(&h.admin),
            Some(json!({ "manifest": format!("app: \"{huge}\"\nservices: {{}}\nenvironments: {{}}\n") })),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        &a.text[..200]
    );
    assert!(a.text.len() < 10_000, "{} bytes", a.text.len());
    assert!(a.text.contains("bytes)…"), "{}", a.text);
    // The framework's own rejection of a wrong JSON type quotes the value too.
    let a = h
        .call(
            "POST",
            "/v1/users",
            Some(&h.admin),
            Some(json!({ "username": huge, "password": 7 })),
        )
        .await;
    assert!(a.status.is_client_error(), "{}", a.status);
    assert!(a.text.len() < 10_000, "{} bytes", a.text.len());
    a.json();
}

/// Over a real socket, a client that is still sending when the server has decided (a bad
/// token, a denial, a body over the limit) reads the JSON answer, not a broken pipe.
#[tokio::test]
async fn early_answers_reach_a_client_still_sending() {
    let h = Harness::new().await;
    let viewer = h.user_with("vera", "viewer", None, &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/apps", listener.local_addr().unwrap());
    let app = h
        .api
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    // 3.9 MB (under the limit) and 10 MB (over it): more than the socket buffers hold.
    let under = json!({ "manifest": "#".repeat(MAX_REQUEST_BYTES - 100_000) }).to_string();
    let over = json!({ "manifest": "#".repeat(10_000_000) }).to_string();
    for (token, body, status, code) in [
        ("not-a-token", &under, 401, "unauthorized"),
        (viewer.as_str(), &under, 403, "forbidden"),
        (h.admin.as_str(), &over, 413, "too_large"),
    ] {
        for _ in 0..3 {
            let answer = tokio::time::timeout(
                Duration::from_secs(60),
                client
                    .post(&url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send(),
            )
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("{status}: {e:?}"));
            assert_eq!(answer.status().as_u16(), status);
            let error: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(error["code"], code, "{error}");
        }
    }
    server.abort();
}

/// Every body the API takes is a JSON object (openapi.json). Serde reads a JSON array into a
/// struct's fields in order, so `[]` used to create a flag client token and evaluate OFREP
/// flags (found by schemathesis once the flag endpoints had a real app to act on). Now any
/// other JSON value is refused on every operation with a body: 422 `invalid_body` on the
/// Ferry API, 400 on the SDK endpoints.
#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_refused_on_every_operation() {
    let h = Harness::with_manifest(common::SHOP).await;
    let doc = h.call("GET", "/openapi.json", None, None).await.json();
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let concrete: Vec<&str> = path
            .split('/')
            .map(|segment| match segment {
                "{app}" => "shop",
                "{env}" => "staging",
                s if s.starts_with('{') => "1",
                s => s,
            })
            .collect();
        let concrete = concrete.join("/");
        for (method, operation) in operations.as_object().unwrap() {
            if operation.get("requestBody").is_none() {
                continue;
            }
            for body in [json!([]), json!(["x"]), json!("x"), json!(1), json!(null)] {
                let a = h
                    .call(
                        &method.to_uppercase(),
                        &concrete,
                        Some(&h.admin),
                        Some(body.clone()),
                    )
                    .await;
                assert_eq!(
                    a.status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{method} {concrete} {body}: {}",
                    a.text
                );
                assert_eq!(
                    a.json()["code"],
                    "invalid_body",
                    "{method} {concrete} {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} operations with a body");
    // A `reason` that is not a string is refused too (schemathesis: an array was taken by
    // `POST …/flag-tokens` and left out of the audit record).
    for body in [
        json!({ "reason": ["x"] }),
        json!({ "reason": 1 }),
        json!({ "reason": {} }),
    ] {
        let a = h
            .call(
                "POST",
                "/v1/apps/shop/envs/staging/flag-tokens",
                Some(&h.admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            a.text
        );
        assert!(a.text.contains("`reason` must be a string"), "{}", a.text);
    }

    let token = h
        .admin_ok(
            "POST",
            "/v1/apps/shop/envs/staging/flag-tokens",
            Some(json!({})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The SDK endpoints: an object is taken (202, 200), anything else is 400.
    for (path, taken) in [
        ("/api/client/register", StatusCode::ACCEPTED),
        ("/api/client/metrics", StatusCode::BAD_REQUEST), // `{}` has no `bucket`
        ("/ofrep/v1/evaluate/flags", StatusCode::OK),
    ] {
        let a = h.call("POST", path, Some(&token), Some(json!({}))).await;
        assert_eq!(a.status, taken, "{path} {{}}: {}", a.text);
        for body in [json!([]), json!("x")] {
            let a = h.call("POST", path, Some(&token), Some(body.clone())).await;
            assert_eq!(
                a.status,
                StatusCode::BAD_REQUEST,
                "{path} {body}: {}",
                a.text
            );
        }
    }
}
