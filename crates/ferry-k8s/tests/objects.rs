//! The desired objects: snapshots (plain YAML files under tests/snapshots, rewritten with
//! `UPDATE_SNAPSHOTS=1`) and the properties every object must have whatever the snapshot.

mod common;

use common::{SECRET_VALUE, VERSION, every_object, manifest, release, secrets};
use ferry_k8s::objects::{self, HookAttempt, ObjectError};
use serde_json::Value;

fn check_snapshot(name: &str, actual: &str) {
    let path = common::data(&format!("snapshots/{name}"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what Ferry now generates (review, then rewrite with UPDATE_SNAPSHOTS=1 cargo test -p ferry-k8s --test objects):\n{actual}",
        path.display()
    );
}

#[test]
fn snapshots_of_both_environments_and_the_hook_job() {
    let manifest = manifest();
    for env in ["staging", "production"] {
        let values = every_object(&manifest, env);
        check_snapshot(&format!("shop-{env}.yaml"), &objects::to_yaml(&values));
    }
}

fn pods(values: &[Value]) -> Vec<(&str, &Value)> {
    values
        .iter()
        .filter_map(|v| {
            let name = v.pointer("/metadata/name")?.as_str()?;
            Some((name, v.pointer("/spec/template/spec")?))
        })
        .collect()
}

#[test]
fn every_pod_is_locked_down() {
    let manifest = manifest();
    let production = every_object(&manifest, "production");
    let staging = every_object(&manifest, "staging");
    assert_eq!(pods(&production).len(), 3, "two Deployments and a Job");
    assert_eq!(
        pods(&staging).len(),
        4,
        "two Deployments, a Job and the proxy"
    );
    for (name, pod) in pods(&production).into_iter().chain(pods(&staging)) {
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(
            pod["volumes"][0]["emptyDir"],
            serde_json::json!({}),
            "{name}"
        );
        for container in pod["containers"].as_array().expect("containers") {
            let security = &container["securityContext"];
            assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(
                security["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert_eq!(container["volumeMounts"][0]["mountPath"], "/tmp", "{name}");
        }
    }
}

#[test]
fn secrets_reach_pods_only_by_reference() {
    let manifest = manifest();
    let values = every_object(&manifest, "staging");
    for value in &values {
        let text = value.to_string();
        let kind = value["kind"].as_str().unwrap_or_default();
        if kind == "Secret" {
            continue;
        }
        assert!(!text.contains(SECRET_VALUE), "{kind} holds a secret value");
        assert!(
            !text.contains(common::ADMIN_TOKEN),
            "{kind} holds the admin token"
        );
        assert!(!text.contains("\"warn\""), "{kind} holds a secret value");
    }
    let web = values
        .iter()
        .find(|v| {
            v["kind"] == "Deployment"
                && v["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("web-"))
        })
        .expect("the web Deployment");
    let env = web["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    let find = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        find("DB_PASSWORD").expect("DB_PASSWORD")["valueFrom"]["secretKeyRef"],
        serde_json::json!({ "name": "shop-staging-ferry-secrets", "key": "DB_PASSWORD", "optional": false })
    );
    // A secret wins over a variable of the same name (the layers' order).
    let log_level = find("LOG_LEVEL").expect("LOG_LEVEL");
    assert!(log_level.get("value").is_none(), "{log_level}");
    assert_eq!(log_level["valueFrom"]["secretKeyRef"]["key"], "LOG_LEVEL");
    // Layered and templated variables.
    assert_eq!(
        find("DATABASE_URL").expect("DATABASE_URL")["value"],
        "postgres://db.internal/shop"
    );
    assert_eq!(
        find("BUILD").expect("BUILD")["value"],
        format!("web-{VERSION}")
    );
    assert_eq!(find("PORT").expect("PORT")["value"], "8080");
    assert_eq!(
        find("FERRY_SERVICE").expect("FERRY_SERVICE")["value"],
        "web"
    );
    assert_eq!(
        find("FERRY_REPLICA_ID").expect("FERRY_REPLICA_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

#[test]
fn probes_resources_and_labels_follow_the_manifest() {
    let manifest = manifest();
    let values = every_object(&manifest, "production");
    let web = values
        .iter()
        .find(|v| {
            v["kind"] == "Deployment" && v["metadata"]["labels"]["ferry.dev/service"] == "web"
        })
        .expect("web");
    assert_eq!(web["metadata"]["namespace"], "shop-prod");
    assert_eq!(web["spec"]["replicas"], 3, "the environment's replicas win");
    let container = &web["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example.com/shop/web:1.4.0");
    assert_eq!(
        container["args"],
        serde_json::json!(["serve", "--port", "8080", "--version", "1.4.0"])
    );
    let readiness = &container["readinessProbe"];
    assert_eq!(readiness["httpGet"]["path"], "/healthz");
    assert_eq!(readiness["periodSeconds"], 2);
    assert_eq!(
        readiness["timeoutSeconds"], 2,
        "1500ms rounds up to whole seconds"
    );
    assert_eq!(readiness["successThreshold"], 2);
    assert_eq!(readiness["failureThreshold"], 4);
    assert_eq!(
        container["livenessProbe"]["successThreshold"], 1,
        "Kubernetes requires 1"
    );
    assert_eq!(
        container["startupProbe"]["failureThreshold"], 30,
        "60s start timeout / 2s"
    );
    assert_eq!(container["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(container["resources"]["limits"]["cpu"], "500m");
    assert_eq!(
        web["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        10001
    );
    assert_eq!(
        web["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        20
    );
    assert_eq!(
        web["spec"]["selector"]["matchLabels"],
        serde_json::json!({
            "ferry.dev/app": "shop", "ferry.dev/env": "production",
            "ferry.dev/service": "web", "ferry.dev/version": "1.4.0"
        })
    );
    // Gateway traffic: the stable and canary Services exist for each service.
    let services: Vec<&str> = values
        .iter()
        .filter(|v| v["kind"] == "Service")
        .filter_map(|v| v["metadata"]["name"].as_str())
        .collect();
    for name in ["web-stable", "web-canary", "worker-stable", "worker-canary"] {
        assert!(services.contains(&name), "{name} in {services:?}");
    }
}

#[test]
fn a_hook_job_is_the_same_job_for_the_same_attempt() {
    let manifest = manifest();
    let secrets = secrets();
    let release = release(&manifest, "staging", &secrets);
    let hook = &manifest.hooks.pre_deploy[0];
    let job = |attempt| {
        objects::hook_job(
            &release,
            &HookAttempt {
                deployment: 7,
                phase: "pre_deploy",
                hook,
                attempt,
                previous: None,
            },
        )
        .expect("job")
    };
    assert_eq!(job(1), job(1));
    assert_ne!(job(1).metadata.name, job(2).metadata.name);
    let spec = job(1).spec.expect("spec");
    assert_eq!(spec.backoff_limit, Some(0), "Ferry counts the attempts");
    assert_eq!(
        spec.active_deadline_seconds,
        Some(120),
        "the hook's timeout"
    );
}

#[test]
fn what_cannot_be_built_is_named() {
    let mut manifest = manifest();
    let secrets = secrets();
    manifest.services.get_mut("worker").expect("worker").image = None;
    let error = objects::objects(&release(&manifest, "staging", &secrets)).unwrap_err();
    assert!(
        matches!(error, ObjectError::NoImage { ref service } if service == "worker"),
        "{error}"
    );
    let error = objects::objects(&release(&manifest, "nowhere", &secrets)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the manifest of shop has no environment nowhere"
    );
}

#[test]
fn the_proxy_fleet_of_a_traffic_proxy_environment() {
    use ferry_k8s::proxy;
    let manifest = manifest();
    let fleet = proxy::proxy_objects(
        &manifest,
        "staging",
        "ferry:9",
        proxy::DEFAULT_SERVER_NAMESPACE,
    )
    .expect("staging's proxy");
    let values = fleet.to_values();
    let kinds: Vec<(&str, &str)> = values
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap_or_default(),
                v["metadata"]["name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("Service", "ferry-proxy"),
            ("Service", "ferry-proxy-admin"),
            ("NetworkPolicy", "ferry-proxy-admin"),
            ("Deployment", "ferry-proxy")
        ]
    );
    for value in &values {
        let labels = &value["metadata"]["labels"];
        assert!(
            labels.get("ferry.dev/app").is_none() && labels.get("ferry.dev/env").is_none(),
            "adoption by app/env labels must never find the proxy: {labels}"
        );
        assert_eq!(labels["ferry.dev/proxy"], "shop-staging");
        assert_eq!(value["metadata"]["namespace"], "shop-staging");
    }
    // Clients reach the environment's port; the server finds ready pods by the admin Service.
    assert_eq!(values[0]["spec"]["type"], "ClusterIP");
    assert_eq!(
        values[0]["spec"]["ports"],
        serde_json::json!([{ "name": "http", "port": 18080, "targetPort": 18080, "protocol": "TCP" }])
    );
    assert_eq!(values[1]["spec"]["clusterIP"], "None");
    assert_eq!(values[1]["spec"]["ports"][0]["port"], 9901);
    assert_eq!(values[1]["spec"]["selector"], values[0]["spec"]["selector"]);
    // The admin port only from the Ferry server's pods (in the server's namespace); the
    // listeners from anyone; no other ingress to the proxy pods.
    let policy = &values[2];
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        values[0]["spec"]["selector"]
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress"])
    );
    assert_eq!(
        policy["spec"]["ingress"],
        serde_json::json!([
            { "from": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "ferry-system" } },
                         "podSelector": { "matchLabels": { "app.kubernetes.io/name": "ferry" } } }],
              "ports": [{ "protocol": "TCP", "port": 9901 }] },
            { "ports": [{ "protocol": "TCP", "port": 18080 }] }
        ])
    );
    let elsewhere = proxy::proxy_objects(&manifest, "staging", "ferry:9", "ops").expect("proxy");
    assert_eq!(
        elsewhere.to_values()[2]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
            ["kubernetes.io/metadata.name"],
        "ops"
    );
    let deployment = &values[3];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        values[0]["spec"]["selector"]
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ferry:9");
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        args,
        [
            "proxy",
            "--state-dir",
            "/var/lib/ferry-proxy",
            "--admin-listen",
            "0.0.0.0:9901",
            "--admin-token-file",
            "/etc/ferry-proxy/admin/token",
            "--seed-routes",
            "/etc/ferry-proxy/routes/routes.json",
            "--listen-ip",
            "$(POD_IP)"
        ]
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/healthz");
    // The manifest's settings win over the defaults; another traffic mode has no proxy.
    let text = std::fs::read_to_string(common::data("data/shop.yaml"))
        .expect("sample")
        .replace(
            "    vars:\n      LOG_LEVEL: debug\n",
            "    vars:\n      LOG_LEVEL: debug\n    kubernetes:\n      proxy: { image: 'reg.example.com/ferry:2', replicas: 4, service_type: LoadBalancer }\n",
        );
    let custom = ferry_core::manifest::parse(&text, "shop.yaml").expect("valid");
    let fleet = proxy::proxy_objects(
        &custom,
        "staging",
        "ferry:9",
        proxy::DEFAULT_SERVER_NAMESPACE,
    )
    .expect("proxy");
    let values = fleet.to_values();
    assert_eq!(values[0]["spec"]["type"], "LoadBalancer");
    assert_eq!(values[3]["spec"]["replicas"], 4);
    assert_eq!(
        values[3]["spec"]["template"]["spec"]["containers"][0]["image"],
        "reg.example.com/ferry:2"
    );
    assert!(matches!(
        proxy::proxy_objects(
            &manifest,
            "production",
            "ferry:9",
            proxy::DEFAULT_SERVER_NAMESPACE
        ),
        Err(ObjectError::NotProxyTraffic { .. })
    ));
    // The table and the token go only where they belong.
    let map = proxy::routes_config_map(&manifest, "staging", common::ROUTES);
    assert_eq!(
        map.data
            .as_ref()
            .and_then(|d| d.get("routes.json"))
            .map(String::as_str),
        Some(common::ROUTES)
    );
    let secret =
        serde_json::to_value(proxy::admin_secret(&manifest, "staging", "t0k")).expect("JSON");
    assert_eq!(secret["metadata"]["name"], "ferry-proxy-admin");
    assert_eq!(secret["data"]["token"], "dDBr", "base64 of the token");
}
