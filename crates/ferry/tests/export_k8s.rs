//! `ferry export --k8s`: the binary prints a release's Kubernetes objects offline, and
//! refuses what it cannot export with a clear message and exit code 2.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ferry-k8s/tests/data/shop.yaml")
}

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_URL")
        .env_remove("FERRY_TOKEN")
        .output()
        .expect("run ferry")
}

#[test]
fn export_prints_the_objects_as_yaml_documents() {
    let file = sample();
    let file = file.to_str().expect("utf-8 path");
    let out = ferry(&[
        "export",
        "--k8s",
        "shop",
        "--env",
        "production",
        "--version",
        "2.0.1",
        "-f",
        file,
        "--secret",
        "DB_PASSWORD",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "Service",
            "Service",
            "Service",
            "Service",
            "Service",
            "Service",
            "Deployment",
            "Deployment"
        ],
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| *l == "---").count(),
        9,
        "one document per object"
    );
    assert!(stdout.contains("namespace: shop-prod"), "{stdout}");
    assert!(
        stdout.contains("image: registry.example.com/shop/web:2.0.1"),
        "{stdout}"
    );
    assert!(stdout.contains("name: web-stable") && stdout.contains("name: web-canary"));
    assert!(stdout.contains("secretKeyRef:"), "{stdout}");
    assert!(
        stdout.contains(
            "# The pods read DB_PASSWORD from the Secret shop-prod/shop-production-ferry-secrets"
        ),
        "{stdout}"
    );
}

#[test]
fn a_traffic_proxy_environment_also_gets_ferry_s_proxy_pods() {
    let file = sample();
    let file = file.to_str().expect("utf-8 path");
    let out = ferry(&[
        "export",
        "--k8s",
        "shop",
        "--env",
        "staging",
        "--version",
        "2.0.1",
        "-f",
        file,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let named: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .filter(|n| n.starts_with("ferry-proxy"))
        .collect();
    assert_eq!(
        named,
        [
            "ferry-proxy",
            "ferry-proxy-admin",
            "ferry-proxy-admin",
            "ferry-proxy"
        ],
        "{stdout}"
    );
    assert!(stdout.contains("kind: NetworkPolicy"), "{stdout}");
    assert!(
        stdout.contains(&format!("image: ferry:{}", env!("CARGO_PKG_VERSION"))),
        "the default image: {stdout}"
    );
    assert!(
        stdout.contains("# Ferry's proxy pods read their admin token from the Secret shop-staging/ferry-proxy-admin"),
        "{stdout}"
    );
    assert!(!stdout.contains("kind: ConfigMap") && !stdout.contains("kind: Secret"));
}

#[test]
fn export_refuses_what_it_cannot_print() {
    let file = sample();
    let file = file.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 4] = [
        (
            &["--k8s", "blog", "--env", "production"],
            "describes app shop, not blog",
        ),
        (
            &["--k8s", "shop", "--env", "qa"],
            "has no environment qa (it has: staging, production)",
        ),
        (
            &[
                "--k8s",
                "shop",
                "--env",
                "staging",
                "--secret",
                "DB-PASSWORD",
            ],
            "--secret \"DB-PASSWORD\" is not a variable name",
        ),
        (
            &["--k8s", "shop", "--env", "staging", "--version", "1 0"],
            "must be 1 to 128 characters without spaces",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["export", "-f", file];
        all.extend_from_slice(args);
        if !args.contains(&"--version") {
            all.extend_from_slice(&["--version", "1.0.0"]);
        }
        let out = ferry(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed objects");
    }
    // A bad manifest gets the same located errors as `ferry validate`.
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("ferry.yaml");
    std::fs::write(
        &bad,
        "app: shop\nservices:\n  web:\n    image: shop/web\nenvironments:\n  production:\n    listen: 127.0.0.1:8082\n    runtime: kubernetes\n    kubernetes:\n      traffic: gateway\n",
    )
    .expect("write");
    let out = ferry(&[
        "export",
        "--k8s",
        "shop",
        "--env",
        "production",
        "--version",
        "1.0.0",
        "-f",
        bad.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ferry.yaml:9:5: environments.production.kubernetes: `traffic: gateway` needs the `route:`"),
        "{stderr}"
    );
}

#[test]
fn the_test_harness_writes_kubernetes_manifests_that_validate_and_export() {
    // `common::Spec` with `runtime: kubernetes`, as the end-to-end tests use it: through
    // Ferry's proxy (no options) and through a Gateway in a namespace of its own.
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        ("", "kshop-production", false),
        (
            "{ namespace: kshop-gw, traffic: gateway, route: kshop }",
            "kshop-gw",
            true,
        ),
    ];
    for (options, namespace, gateway) in cases {
        let spec = common::Spec {
            runtime: common::RuntimeKind::Kubernetes,
            kubernetes: options.to_string(),
            replicas: 3,
            ..common::Spec::new("kshop")
        };
        let path = dir.path().join("ferry.yaml");
        std::fs::write(
            &path,
            common::manifest_yaml(&spec, "mark", &dir.path().join("pids")),
        )
        .expect("write");
        let file = path.to_str().expect("utf-8 path");
        let out = ferry(&["validate", "-f", file]);
        assert!(
            out.status.success(),
            "{options}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = ferry(&[
            "export",
            "--k8s",
            "kshop",
            "--env",
            "production",
            "--version",
            "1.2.3",
            "-f",
            file,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{options}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for expected in [
            format!("namespace: {namespace}"),
            "image: registry.example.com/kshop/web:1.2.3".to_string(),
            "replicas: 3".to_string(),
            "value: mark".to_string(),
        ] {
            assert!(
                stdout.contains(&expected),
                "{options}: {expected} in {stdout}"
            );
        }
        assert_eq!(
            stdout.contains("name: web-stable") && stdout.contains("name: web-canary"),
            gateway,
            "{options}: {stdout}"
        );
    }
}
