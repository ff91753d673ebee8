//! In-process API harness: a real SQLite store in a temporary directory, the router from
//! `ferry_server::ApiOnly` (no controller, no proxy), requests through `oneshot`.

#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode};
use ferry_server::ApiOnly;
use ferry_store::{NewDeployment, Store};
use serde_json::{Value, json};
use tower::ServiceExt;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct Harness {
    pub api: ApiOnly,
    pub store: Store,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }
}

/// App `shop` with a `staging` and a `production` environment; tests append to it.
pub const SHOP: &str = "app: shop
services:
  web:
    run: [./web]
environments:
  staging:
    listen: 127.0.0.1:18081
  production:
    listen: 127.0.0.1:18082
";

impl Harness {
    /// A harness with the manifest `yaml` applied (revision 1, by `admin`).
    pub async fn with_manifest(yaml: &str) -> Harness {
        let h = Harness::new().await;
        let manifest = ferry_core::manifest::parse(yaml, "ferry.yaml").expect("manifest");
        h.store
            .apply_manifest(ferry_store::NewManifest {
                app: manifest.app.clone(),
                yaml: yaml.into(),
                manifest_json: serde_json::to_string(&manifest).expect("json"),
                base_dir: None,
                applied_by: "admin".into(),
                now_ms: 1,
            })
            .await
            .expect("apply the manifest");
        h
    }

    pub async fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .expect("store");
        let api = ApiOnly::open(store.clone(), dir.path()).await.expect("api");
        let admin = api.admin_token().to_string();
        Harness {
            api,
            store,
            admin,
            dir,
        }
    }

    /// A request from 127.0.0.1.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.call_from("127.0.0.1:40000", method, path, token, body)
            .await
    }

    pub async fn call_from(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut builder = Request::builder()
            .method(method.parse::<Method>().expect("method"))
            .uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let mut request = builder.body(body).expect("request");
        let addr: SocketAddr = addr.parse().expect("addr");
        request.extensions_mut().insert(ConnectInfo(addr));
        let response = self
            .api
            .router()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024 * 1024)
            .await
            .expect("body");
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Admin call that must succeed (2xx); returns the JSON.
    pub async fn admin_ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let a = self.call(method, path, Some(&self.admin), body).await;
        assert!(
            a.status.is_success(),
            "{method} {path}: {} {}",
            a.status,
            a.text
        );
        serde_json::from_str(&a.text).unwrap_or(Value::Null)
    }

    pub async fn add_user(&self, name: &str) {
        self.admin_ok(
            "POST",
            "/v1/users",
            Some(json!({ "username": name, "password": PASSWORD })),
        )
        .await;
    }

    /// Binds ahead of time (`allow_missing`): this harness applies no manifests, its apps
    /// are names in requests.
    pub async fn bind(&self, user: &str, role: &str, app: Option<&str>, envs: &[&str]) -> i64 {
        let b = self
            .admin_ok(
                "POST",
                "/v1/bindings",
                Some(json!({
                    "user": user, "role": role, "app": app, "envs": envs, "allow_missing": true
                })),
            )
            .await;
        b["id"].as_i64().expect("binding id")
    }

    /// Logs in; returns the session token.
    pub async fn login(&self, user: &str) -> String {
        let a = self
            .call(
                "POST",
                "/v1/login",
                None,
                Some(json!({ "username": user, "password": PASSWORD })),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "login {user}: {}", a.text);
        a.json()["token"].as_str().expect("token").to_string()
    }

    /// A user with one binding, logged in.
    pub async fn user_with(
        &self,
        name: &str,
        role: &str,
        app: Option<&str>,
        envs: &[&str],
    ) -> String {
        self.add_user(name).await;
        self.bind(name, role, app, envs).await;
        self.login(name).await
    }

    /// An API token made with the admin token.
    pub async fn token(&self, name: &str, role: &str, app: Option<&str>, envs: &[&str]) -> String {
        let t = self
            .admin_ok(
                "POST",
                "/v1/tokens",
                Some(json!({ "name": name, "role": role, "app": app, "envs": envs })),
            )
            .await;
        t["token"].as_str().expect("token").to_string()
    }

    /// A deployment row (as the controller would create it); returns its id.
    pub async fn deployment(&self, app: &str, env: &str, version: &str, by: &str) -> i64 {
        self.store
            .create_deployment(NewDeployment {
                app: app.into(),
                env: env.into(),
                version: version.into(),
                previous_version: None,
                kind: ferry_core::model::DeploymentKind::Deploy,
                strategy: "rolling".into(),
                requested_by: by.into(),
                manifest_revision: 1,
                now_ms: 1_000,
                fix_of: None,
            })
            .await
            .expect("deployment")
            .id
    }
}
