//! The sample manifest and the objects the tests build from it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ferry_core::manifest::{self, Manifest};
use ferry_k8s::objects::{self, HookAttempt, Release};
use ferry_k8s::proxy;

pub const VERSION: &str = "1.4.0";
/// A secret value that must never appear outside the Secret object.
pub const SECRET_VALUE: &str = "s3cr3t-db-password-7f2a";

pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

pub fn manifest() -> Manifest {
    let text = std::fs::read_to_string(data("data/shop.yaml")).expect("read the sample manifest");
    manifest::parse(&text, "shop.yaml").expect("the sample manifest is valid")
}

pub fn secrets() -> Vec<String> {
    vec!["DB_PASSWORD".to_string(), "LOG_LEVEL".to_string()]
}

pub fn release<'a>(manifest: &'a Manifest, env: &'a str, secrets: &'a [String]) -> Release<'a> {
    Release {
        manifest,
        env,
        version: VERSION,
        secrets,
    }
}

/// Every kind of object Ferry makes, for one environment, as JSON: the release's objects,
/// the Secret (with a fake value) and the hook's Job.
pub fn every_object(manifest: &Manifest, env: &str) -> Vec<serde_json::Value> {
    let secrets = secrets();
    let release = release(manifest, env, &secrets);
    let mut values = objects::objects(&release)
        .expect("objects of the sample")
        .to_values();
    let secret = objects::secret(
        manifest,
        env,
        &BTreeMap::from([
            ("DB_PASSWORD".to_string(), SECRET_VALUE.to_string()),
            ("LOG_LEVEL".to_string(), "warn".to_string()),
        ]),
    );
    values.push(serde_json::to_value(secret).expect("secret JSON"));
    let hook = &manifest.hooks.pre_deploy[0];
    let job = objects::hook_job(
        &release,
        &HookAttempt {
            deployment: 42,
            phase: "pre_deploy",
            hook,
            attempt: 1,
            previous: Some("1.3.2"),
        },
    )
    .expect("hook job");
    values.push(serde_json::to_value(job).expect("job JSON"));
    if manifest::kubernetes::Kubernetes::proxy_fleet_of(manifest, env).is_some() {
        values.extend(
            proxy::proxy_objects(
                manifest,
                env,
                "registry.example.com/ferry:1.0.0",
                proxy::DEFAULT_SERVER_NAMESPACE,
            )
            .expect("proxy objects")
            .to_values(),
        );
        values.push(
            serde_json::to_value(proxy::routes_config_map(manifest, env, ROUTES))
                .expect("ConfigMap JSON"),
        );
        values.push(
            serde_json::to_value(proxy::admin_secret(manifest, env, ADMIN_TOKEN))
                .expect("Secret JSON"),
        );
    }
    values
}

/// The proxy pods' admin token in the samples (only in its Secret).
pub const ADMIN_TOKEN: &str = "admin-token-0f3c";
/// A route table as the server writes it to the ConfigMap.
pub const ROUTES: &str = r#"{"generation":7,"listeners":[]}"#;
