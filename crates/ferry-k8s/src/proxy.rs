//! Ferry's proxy in the cluster (`runtime: kubernetes` with `traffic: proxy`): the objects of
//! the environment's proxy fleet, as pure functions of the manifest.
//!
//! - a `Deployment` `ferry-proxy` running `ferry proxy` from Ferry's own image
//!   (`kubernetes.proxy.image`, else the server's default), `kubernetes.proxy.replicas` pods,
//!   locked down like the app pods; each binds the environment's ports on its own pod IP
//!   (`--listen-ip $(POD_IP)`) and serves its admin API on [`PROXY_ADMIN_PORT`], with the
//!   token from the Secret `ferry-proxy-admin`; at start it serves the last table Ferry
//!   wrote to the ConfigMap `ferry-proxy-routes` (`--seed-routes`), so a pod that starts
//!   while Ferry is down routes as the others do;
//! - a `Service` `ferry-proxy` (type `kubernetes.proxy.service_type`, `ClusterIP` by default)
//!   exposing the environment's `listen` port (and a blue/green `preview_listen`) to clients;
//! - a headless `Service` `ferry-proxy-admin` whose EndpointSlices tell the server where the
//!   ready proxy pods are (it pushes every route table to each of them);
//! - a `NetworkPolicy` `ferry-proxy-admin`: the pods' admin port takes connections from the
//!   Ferry server's pods only (`app.kubernetes.io/name: ferry` in the server's namespace),
//!   their listeners from anyone;
//! - the `ConfigMap` with the last route table ([`routes_config_map`]) and the `Secret` with
//!   the admin token ([`admin_secret`]), both written by the server only.
//!
//! None of these carries both `ferry.dev/app` and `ferry.dev/env`: the runtime's adoption
//! (which lists Deployments by those labels) never mistakes the proxy for an app's version.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ferry_core::manifest::kubernetes::{Kubernetes, PROXY_ADMIN_PORT};
use ferry_core::manifest::{Manifest, Strategy};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names;
use crate::objects::{LABEL_MANAGED_BY, ObjectError, meta, namespace_name, tmp_mount, to_value};

/// The proxy's Deployment and its client Service.
pub const PROXY_NAME: &str = "ferry-proxy";
/// The headless Service whose EndpointSlices list the ready proxy pods' admin API.
pub const ADMIN_SERVICE: &str = "ferry-proxy-admin";
/// The Secret holding the admin API's token (key [`TOKEN_KEY`]).
pub const ADMIN_SECRET: &str = "ferry-proxy-admin";
pub const TOKEN_KEY: &str = "token";
/// The ConfigMap holding the last route table (key [`ROUTES_KEY`]).
pub const ROUTES_CONFIG_MAP: &str = "ferry-proxy-routes";
pub const ROUTES_KEY: &str = "routes.json";
/// Which environment's proxy a pod is (`APP-ENV` as a label value).
pub const LABEL_PROXY: &str = "ferry.dev/proxy";
/// The user of Ferry's image (see the Dockerfile).
pub const PROXY_UID: i64 = 10001;
/// The name of the admin port (the EndpointSlices of [`ADMIN_SERVICE`] carry it).
pub const ADMIN_PORT_NAME: &str = "admin";
/// The NetworkPolicy that keeps the admin port to the Ferry server's pods.
pub const ADMIN_POLICY: &str = "ferry-proxy-admin";
/// The namespace Ferry's own manifests (deploy/kubernetes/ferry.yaml) run the server in.
pub const DEFAULT_SERVER_NAMESPACE: &str = "ferry-system";
/// The label (name, value) of the Ferry server's pods (deploy/kubernetes/ferry.yaml).
pub const SERVER_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "ferry");
/// How long a stopping proxy pod may drain its connections (the proxy's own drain is 30 s).
pub const PROXY_GRACE_SECONDS: i64 = 35;

const STATE_DIR: &str = "/var/lib/ferry-proxy";
const TOKEN_DIR: &str = "/etc/ferry-proxy/admin";
const ROUTES_DIR: &str = "/etc/ferry-proxy/routes";

/// The image `ferry proxy` runs from when neither the manifest nor the server names one:
/// Ferry's own image as the Dockerfile tags it, at this build's version.
pub fn default_image() -> String {
    format!("ferry:{}", env!("CARGO_PKG_VERSION"))
}

/// The objects of an environment's proxy fleet, in apply order (not the ConfigMap nor the
/// Secret, which carry the server's state).
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyObjects {
    /// `ferry-proxy` (clients) then `ferry-proxy-admin` (headless, for the server).
    pub services: Vec<Service>,
    /// Applied before the Deployment: no pod is ever without it.
    pub network_policy: NetworkPolicy,
    pub deployment: Deployment,
}

impl ProxyObjects {
    pub fn to_values(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self.services.iter().map(to_value).collect();
        out.push(to_value(&self.network_policy));
        out.push(to_value(&self.deployment));
        out
    }
}

/// The value of [`LABEL_PROXY`] on `env`'s proxy objects (`APP-ENV` as a label value).
pub fn proxy_label(manifest: &Manifest, env: &str) -> String {
    names::label_value(&format!("{}-{env}", manifest.app))
}

/// The labels of every proxy object of `env`; the first two select its pods.
pub fn proxy_labels(manifest: &Manifest, env: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_PROXY.to_string(), proxy_label(manifest, env)),
        ("app.kubernetes.io/name".to_string(), PROXY_NAME.to_string()),
        (LABEL_MANAGED_BY.to_string(), "ferry".to_string()),
        (
            "app.kubernetes.io/component".to_string(),
            "proxy".to_string(),
        ),
    ])
}

fn pod_selector(manifest: &Manifest, env: &str) -> BTreeMap<String, String> {
    let mut labels = proxy_labels(manifest, env);
    labels.retain(|k, _| k == LABEL_PROXY || k == "app.kubernetes.io/name");
    labels
}

/// The environment's client ports: (name, port) of `listen` and, with blue/green, of its
/// `preview_listen`.
pub fn listener_ports(manifest: &Manifest, env: &str) -> Result<Vec<(String, u16)>, ObjectError> {
    let environment =
        manifest
            .environments
            .get(env)
            .ok_or_else(|| ObjectError::UnknownEnvironment {
                app: manifest.app.clone(),
                env: env.to_string(),
            })?;
    let port = |listen: &str| {
        listen
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .map_err(|_| ObjectError::Listen {
                env: env.to_string(),
                listen: listen.to_string(),
            })
    };
    let mut ports = vec![("http".to_string(), port(&environment.listen)?)];
    if let Strategy::BlueGreen(b) = &environment.strategy
        && let Some(preview) = &b.preview_listen
    {
        ports.push(("preview".to_string(), port(preview)?));
    }
    Ok(ports)
}

/// The proxy fleet of `env` (see the module documentation). `default_image` is used when
/// the manifest names none; `server_namespace` is where the Ferry server's pods run (the
/// only ones the NetworkPolicy lets reach the admin port).
pub fn proxy_objects(
    manifest: &Manifest,
    env: &str,
    default_image: &str,
    server_namespace: &str,
) -> Result<ProxyObjects, ObjectError> {
    let fleet =
        Kubernetes::proxy_fleet_of(manifest, env).ok_or_else(|| ObjectError::NotProxyTraffic {
            env: env.to_string(),
        })?;
    let namespace = namespace_name(manifest, env);
    let labels = proxy_labels(manifest, env);
    let selector = pod_selector(manifest, env);
    let ports = listener_ports(manifest, env)?;
    let service_port = |name: &str, port: u16| ServicePort {
        name: Some(name.to_string()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    };
    let clients = Service {
        metadata: meta(PROXY_NAME.to_string(), &namespace, labels.clone()),
        spec: Some(ServiceSpec {
            type_: Some(fleet.service_type.as_str().to_string()),
            selector: Some(selector.clone()),
            ports: Some(ports.iter().map(|(n, p)| service_port(n, *p)).collect()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let admin = Service {
        metadata: meta(ADMIN_SERVICE.to_string(), &namespace, labels.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(selector.clone()),
            // Only ready pods: the server counts a pod once it answers its health check.
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![service_port(ADMIN_PORT_NAME, PROXY_ADMIN_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let image = fleet
        .image
        .clone()
        .unwrap_or_else(|| default_image.to_string());
    let args: Vec<String> = [
        "proxy",
        "--state-dir",
        STATE_DIR,
        "--admin-listen",
        &format!("0.0.0.0:{PROXY_ADMIN_PORT}"),
        "--admin-token-file",
        &format!("{TOKEN_DIR}/{TOKEN_KEY}"),
        "--seed-routes",
        &format!("{ROUTES_DIR}/{ROUTES_KEY}"),
        "--listen-ip",
        "$(POD_IP)",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let probe = |period: i32, failure: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".to_string()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        success_threshold: Some(1),
        failure_threshold: Some(failure),
        ..Probe::default()
    };
    let mut container_ports = vec![ContainerPort {
        name: Some(ADMIN_PORT_NAME.to_string()),
        container_port: i32::from(PROXY_ADMIN_PORT),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }];
    container_ports.extend(ports.iter().map(|(name, port)| ContainerPort {
        name: Some(name.clone()),
        container_port: i32::from(*port),
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }));
    let mut mounts = tmp_mount();
    mounts.extend([
        VolumeMount {
            name: "state".to_string(),
            mount_path: STATE_DIR.to_string(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "admin-token".to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "routes".to_string(),
            mount_path: ROUTES_DIR.to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    ]);
    let container = Container {
        name: "proxy".to_string(),
        image: Some(image),
        args: Some(args),
        env: Some(vec![EnvVar {
            name: "POD_IP".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "status.podIP".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(container_ports),
        readiness_probe: Some(probe(2, 2)),
        liveness_probe: Some(probe(5, 6)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("100m".to_string())),
                ("memory".to_string(), Quantity("64Mi".to_string())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("512Mi".to_string()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let empty_dir = |name: &str| Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(PROXY_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            // The token file is group-readable by this group only.
            fs_group: Some(PROXY_UID),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![
            empty_dir("tmp"),
            empty_dir("state"),
            Volume {
                name: "admin-token".to_string(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(ADMIN_SECRET.to_string()),
                    default_mode: Some(0o440),
                    ..SecretVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "routes".to_string(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ROUTES_CONFIG_MAP.to_string(),
                    // Before the server's first table there is none: the pod starts empty.
                    optional: Some(true),
                    default_mode: Some(0o444),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    let network_policy = admin_policy(&namespace, &labels, &selector, &ports, server_namespace);
    let deployment = Deployment {
        metadata: meta(PROXY_NAME.to_string(), &namespace, labels.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(fleet.replicas).unwrap_or(i32::MAX)),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            // A new pod is ready (and has the table) before an old one goes.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    Ok(ProxyObjects {
        services: vec![clients, admin],
        network_policy,
        deployment,
    })
}

/// The proxy pods' ingress: the admin port from the Ferry server's pods only (those labelled
/// [`SERVER_POD_LABEL`] in `server_namespace`), the listeners' ports from anyone. (Most
/// network plugins let the node's kubelet probe a pod whatever the policy says.)
fn admin_policy(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    ports: &[(String, u16)],
    server_namespace: &str,
) -> NetworkPolicy {
    let port = |port: u16| NetworkPolicyPort {
        protocol: Some("TCP".to_string()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..NetworkPolicyPort::default()
    };
    let server = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                server_namespace.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                SERVER_POD_LABEL.0.to_string(),
                SERVER_POD_LABEL.1.to_string(),
            )])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: meta(ADMIN_POLICY.to_string(), namespace, labels.clone()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector.clone()),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![server]),
                    ports: Some(vec![port(PROXY_ADMIN_PORT)]),
                },
                // No `from`: any source.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(ports.iter().map(|(_, p)| port(*p)).collect()),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The ConfigMap holding `routes_json`, the last route table the server pushed (what a
/// proxy pod serves when it starts).
pub fn routes_config_map(manifest: &Manifest, env: &str, routes_json: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            ROUTES_CONFIG_MAP.to_string(),
            &namespace_name(manifest, env),
            proxy_labels(manifest, env),
        ),
        data: Some(BTreeMap::from([(
            ROUTES_KEY.to_string(),
            routes_json.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// The Secret holding the proxy pods' admin token (built by the server, never printed).
pub fn admin_secret(manifest: &Manifest, env: &str, token: &str) -> Secret {
    Secret {
        metadata: meta(
            ADMIN_SECRET.to_string(),
            &namespace_name(manifest, env),
            proxy_labels(manifest, env),
        ),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
