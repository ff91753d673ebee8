//! Every object Ferry generates, validated against the official Kubernetes OpenAPI schemas
//! of the versions Ferry supports ([`ferry_k8s::SUPPORTED_VERSIONS`]) with PyPI
//! `kubernetes-validate` in strict mode (unknown fields are errors).
//!
//! The tool is found as `$FERRY_K8S_VALIDATE` (the executable; `.ci/run` installs it in a
//! virtualenv in the build directory) or `kubernetes-validate` on the PATH. Without it the
//! test says so and passes, unless `FERRY_REQUIRE_K8S_VALIDATE=1` (set by `.ci/run`): then
//! it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn validator() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_K8S_VALIDATE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    found.then(|| PathBuf::from("kubernetes-validate"))
}

fn required() -> bool {
    std::env::var("FERRY_REQUIRE_K8S_VALIDATE").is_ok_and(|v| v == "1")
}

/// Runs the validator on `files` for `version`; its exit status and output.
fn validate(tool: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(tool)
        .arg("--strict")
        .arg("--kubernetes-version")
        .arg(format!("{version}.0"))
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn every_generated_object_is_valid_for_every_supported_kubernetes_version() {
    let Some(tool) = validator() else {
        assert!(
            !required(),
            "kubernetes-validate is missing (FERRY_REQUIRE_K8S_VALIDATE=1): install it with `pip install kubernetes-validate` or set FERRY_K8S_VALIDATE"
        );
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = common::manifest();
    let mut files = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for env in ["staging", "production"] {
        for (i, value) in common::every_object(&manifest, env).iter().enumerate() {
            kinds.insert(value["kind"].as_str().unwrap_or_default().to_string());
            let path = dir.path().join(format!("{env}-{i}.yaml"));
            std::fs::write(&path, ferry_k8s::to_yaml(std::slice::from_ref(value)))
                .expect("write object");
            files.push(path);
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ConfigMap",
            "Deployment",
            "Job",
            "Namespace",
            "NetworkPolicy",
            "Secret",
            "Service"
        ],
        "every kind of object Ferry makes is validated"
    );
    for version in ferry_k8s::SUPPORTED_VERSIONS {
        let (ok, output) = validate(&tool, version, &files);
        assert!(
            ok,
            "Kubernetes {version} refuses Ferry's objects:\n{output}"
        );
        assert!(!output.contains("ERROR"), "Kubernetes {version}:\n{output}");
    }

    // The validator is not a rubber stamp: a wrong type and an unknown field are refused.
    let broken = dir.path().join("broken.yaml");
    let mut deployment = common::every_object(&manifest, "staging")
        .into_iter()
        .find(|v| v["kind"] == "Deployment")
        .expect("a Deployment");
    deployment["spec"]["replicas"] = serde_json::json!("three");
    std::fs::write(&broken, ferry_k8s::to_yaml(&[deployment.clone()])).expect("write");
    let (ok, output) = validate(
        &tool,
        ferry_k8s::SUPPORTED_VERSIONS[0],
        std::slice::from_ref(&broken),
    );
    assert!(!ok, "a string replica count passed:\n{output}");
    deployment["spec"]["replicas"] = serde_json::json!(1);
    deployment["spec"]["template"]["spec"]["containers"][0]["bogus"] = serde_json::json!(true);
    std::fs::write(&broken, ferry_k8s::to_yaml(&[deployment])).expect("write");
    let (ok, output) = validate(&tool, ferry_k8s::SUPPORTED_VERSIONS[0], &[broken]);
    assert!(!ok, "an unknown field passed strict validation:\n{output}");
}

#[test]
fn ferry_s_own_manifests_are_valid_for_every_supported_kubernetes_version() {
    let Some(tool) = validator() else {
        assert!(
            !required(),
            "kubernetes-validate is missing (FERRY_REQUIRE_K8S_VALIDATE=1)"
        );
        eprintln!("SKIPPED: kubernetes-validate is not installed");
        return;
    };
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/ferry.yaml");
    for version in ferry_k8s::SUPPORTED_VERSIONS {
        let (ok, output) = validate(&tool, version, std::slice::from_ref(&file));
        assert!(
            ok,
            "deploy/kubernetes/ferry.yaml on Kubernetes {version}:\n{output}"
        );
        for kind in [
            "clusterrole/ferry",
            "deployment/ferry",
            "persistentvolumeclaim/ferry-data",
        ] {
            assert!(
                output.contains(&format!("passed for resource {kind}")),
                "{output}"
            );
        }
    }
}
