//! The desired objects of one release of an app in a `runtime: kubernetes` environment, as
//! pure functions of the manifest, the environment, the version and the names of the
//! environment's secrets (never their values).
//!
//! - a `Namespace` (`APP-ENV` unless `kubernetes.namespace` says otherwise);
//! - per service, a `Deployment` and a `Service` named `SERVICE-VERSION`
//!   ([`names::workload`]) carrying Ferry's labels; with `traffic: gateway`, also the
//!   `SERVICE-stable` and `SERVICE-canary` Services the HTTPRoute's backendRefs name;
//! - the `Secret` with the environment's Ferry secrets ([`secret`], built only by the runtime:
//!   `ferry export` never sees a value), read by the pods through `secretKeyRef`;
//! - per hook attempt, a `Job` ([`hook_job`]).
//!
//! Every pod is locked down: non-root, read-only root filesystem with an `emptyDir` at
//! `/tmp`, no privilege escalation, every capability dropped, the runtime's default seccomp
//! profile, no service-account token and no service links in its environment.

use std::collections::BTreeMap;

use ferry_core::config::{self, EffectiveVar};
use ferry_core::manifest::kubernetes::{Kubernetes, Traffic, parse_user};
use ferry_core::manifest::{Hook, Manifest, RuntimeKind, Service as ServiceSpec};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext,
    Service, ServicePort, ServiceSpec as KubeServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::names;

/// The port every container listens on (`PORT`); pods have their own addresses.
pub const CONTAINER_PORT: i32 = 8080;
/// The port of each version's Service.
pub const SERVICE_PORT: i32 = 80;
/// How long a finished hook Job is kept for its logs.
pub const HOOK_JOB_TTL_SECONDS: i32 = 3600;

pub const LABEL_APP: &str = "ferry.dev/app";
pub const LABEL_ENV: &str = "ferry.dev/env";
pub const LABEL_SERVICE: &str = "ferry.dev/service";
pub const LABEL_VERSION: &str = "ferry.dev/version";
pub const LABEL_HOOK: &str = "ferry.dev/hook";
pub const LABEL_DEPLOYMENT: &str = "ferry.dev/deployment";
/// The one-off task a Job runs (see [`task_job`]).
pub const LABEL_TASK: &str = "ferry.dev/task";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The full version (labels cannot hold every version string).
pub const ANNOTATION_VERSION: &str = "ferry.dev/version";

/// What the objects are computed from.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub manifest: &'a Manifest,
    pub env: &'a str,
    pub version: &'a str,
    /// The names of the environment's Ferry secrets; each becomes a variable read from the
    /// environment's Secret ([`names::secret`]).
    pub secrets: &'a [String],
}

/// Why the objects cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("the manifest of {app} has no environment {env}")]
    UnknownEnvironment { app: String, env: String },
    #[error("environment {env} does not run on `runtime: kubernetes`")]
    NotKubernetes { env: String },
    #[error("service {service} has no `image`, which `runtime: kubernetes` needs")]
    NoImage { service: String },
    #[error("service {service}: `user: {user}` is not a numeric uid[:gid]")]
    User { service: String, user: String },
    #[error("service {service}: {message}")]
    Resources { service: String, message: String },
    #[error("environment {env}: no service has an `image` to run hook {hook} in")]
    NoHookImage { env: String, hook: String },
    #[error("hook {hook} has no `run` command (an HTTP check runs from the server)")]
    NotACommand { hook: String },
    #[error(
        "environment {env} does not run Ferry's proxy pods (`runtime: kubernetes` with `traffic: proxy`)"
    )]
    NotProxyTraffic { env: String },
    #[error("environment {env}: `listen` {listen:?} is not an address:port")]
    Listen { env: String, listen: String },
    #[error("a variable cannot be resolved: {0}")]
    Config(#[from] config::ConfigError),
}

/// The objects of one release, in the order they are applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Objects {
    pub namespace: Namespace,
    /// Each version's Service, then (gateway traffic) the stable/canary Services.
    pub services: Vec<Service>,
    pub deployments: Vec<Deployment>,
}

impl Objects {
    /// Every object as JSON (with `apiVersion` and `kind`), in apply order.
    pub fn to_values(&self) -> Vec<serde_json::Value> {
        let mut out = vec![to_value(&self.namespace)];
        out.extend(self.services.iter().map(to_value));
        out.extend(self.deployments.iter().map(to_value));
        out
    }
}

pub(crate) fn to_value<T: serde::Serialize>(object: &T) -> serde_json::Value {
    // k8s-openapi's types always serialize (string keys, no floats).
    serde_json::to_value(object).unwrap_or(serde_json::Value::Null)
}

/// The namespace of the environment (see [`Kubernetes::namespace_of`]).
pub fn namespace_name(manifest: &Manifest, env: &str) -> String {
    Kubernetes::namespace_of(manifest, env)
}

/// The desired objects of `release` (not its Secret nor its hook Jobs).
pub fn objects(release: &Release<'_>) -> Result<Objects, ObjectError> {
    let environment = environment(release)?;
    let namespace = namespace_name(release.manifest, release.env);
    let gateway = environment
        .kubernetes
        .as_ref()
        .is_some_and(|k| k.traffic == Traffic::Gateway);
    let mut services = Vec::new();
    let mut deployments = Vec::new();
    let mut gateway_services = Vec::new();
    for (name, service) in &release.manifest.services {
        deployments.push(deployment(release, &namespace, name, service)?);
        services.push(version_service(release, &namespace, name));
        if gateway {
            // Until a rollout moves them, both select the version being deployed.
            for role in ["stable", "canary"] {
                gateway_services.push(gateway_service(release, &namespace, name, role));
            }
        }
    }
    services.extend(gateway_services);
    Ok(Objects {
        namespace: self::namespace(release.manifest, release.env),
        services,
        deployments,
    })
}

/// The environment's Namespace, labelled with Ferry's app and environment.
pub fn namespace(manifest: &Manifest, env: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(namespace_name(manifest, env)),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), "ferry".to_string()),
                (LABEL_APP.to_string(), manifest.app.clone()),
                (LABEL_ENV.to_string(), env.to_string()),
            ])),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn environment<'a>(
    release: &Release<'a>,
) -> Result<&'a ferry_core::manifest::Environment, ObjectError> {
    let environment = release
        .manifest
        .environments
        .get(release.env)
        .ok_or_else(|| ObjectError::UnknownEnvironment {
            app: release.manifest.app.clone(),
            env: release.env.to_string(),
        })?;
    if environment.runtime != RuntimeKind::Kubernetes {
        return Err(ObjectError::NotKubernetes {
            env: release.env.to_string(),
        });
    }
    Ok(environment)
}

/// Labels that select the pods of one version of one service.
pub fn selector(app: &str, env: &str, service: &str, version: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_APP.to_string(), app.to_string()),
        (LABEL_ENV.to_string(), env.to_string()),
        (LABEL_SERVICE.to_string(), service.to_string()),
        (LABEL_VERSION.to_string(), names::label_value(version)),
    ])
}

/// The selector plus the recommended `app.kubernetes.io/*` labels.
fn labels(release: &Release<'_>, service: &str) -> BTreeMap<String, String> {
    let mut labels = selector(&release.manifest.app, release.env, service, release.version);
    labels.insert(LABEL_MANAGED_BY.to_string(), "ferry".to_string());
    labels.insert("app.kubernetes.io/name".to_string(), service.to_string());
    labels.insert(
        "app.kubernetes.io/instance".to_string(),
        names::label_value(&format!("{}-{}", release.manifest.app, release.env)),
    );
    labels.insert(
        "app.kubernetes.io/version".to_string(),
        names::label_value(release.version),
    );
    labels
}

pub(crate) fn meta(name: String, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn version_annotation(version: &str) -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        ANNOTATION_VERSION.to_string(),
        version.to_string(),
    )]))
}

fn deployment(
    release: &Release<'_>,
    namespace: &str,
    name: &str,
    service: &ServiceSpec,
) -> Result<Deployment, ObjectError> {
    let labels = labels(release, name);
    let replicas = release.manifest.replicas(name, release.env);
    let vars = config::effective(release.manifest, release.env, name, release.version)?;
    let container = container(release, name, service, &vars)?;
    let (user, group) = user_of(name, service)?;
    let mut metadata = meta(
        names::workload(name, release.version),
        namespace,
        labels.clone(),
    );
    metadata.annotations = version_annotation(release.version);
    Ok(Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            revision_history_limit: Some(2),
            selector: LabelSelector {
                match_labels: Some(selector(
                    &release.manifest.app,
                    release.env,
                    name,
                    release.version,
                )),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: version_annotation(release.version),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(
                    service,
                    vec![container],
                    user,
                    group,
                    None,
                    seconds(service.stop_timeout.get()),
                )),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    })
}

fn user_of(name: &str, service: &ServiceSpec) -> Result<(Option<i64>, Option<i64>), ObjectError> {
    match &service.user {
        None => Ok((None, None)),
        Some(user) => parse_user(user)
            .map(|(uid, gid)| (Some(uid), gid))
            .ok_or_else(|| ObjectError::User {
                service: name.to_string(),
                user: user.clone(),
            }),
    }
}

/// Whole seconds, at least 1, rounded up (Kubernetes counts probes in seconds).
pub(crate) fn seconds(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

fn seconds32(d: std::time::Duration) -> i32 {
    i32::try_from(seconds(d)).unwrap_or(i32::MAX)
}

fn pod_spec(
    service: &ServiceSpec,
    containers: Vec<Container>,
    user: Option<i64>,
    group: Option<i64>,
    restart_policy: Option<&str>,
    grace_seconds: i64,
) -> PodSpec {
    PodSpec {
        containers,
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: restart_policy.map(str::to_string),
        termination_grace_period_seconds: Some(grace_seconds),
        security_context: Some(PodSecurityContext {
            run_as_non_root: (!service.allow_root).then_some(true),
            run_as_user: user,
            run_as_group: group,
            fs_group: group,
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        volumes: Some(vec![Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        }]),
        ..PodSpec::default()
    }
}

fn security_context(service: &ServiceSpec) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: (!service.allow_root).then_some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

pub(crate) fn tmp_mount() -> Vec<VolumeMount> {
    vec![VolumeMount {
        name: "tmp".to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    }]
}

fn image(service: &ServiceSpec, name: &str, version: &str) -> Result<String, ObjectError> {
    service
        .image
        .as_ref()
        .map(|image| image.replace("${VERSION}", version))
        .ok_or_else(|| ObjectError::NoImage {
            service: name.to_string(),
        })
}

fn container(
    release: &Release<'_>,
    name: &str,
    service: &ServiceSpec,
    vars: &[EffectiveVar],
) -> Result<Container, ObjectError> {
    let image = image(service, name, release.version)?;
    let args: Vec<String> = service
        .run
        .iter()
        .map(|a| {
            a.replace("${PORT}", &CONTAINER_PORT.to_string())
                .replace("${VERSION}", release.version)
        })
        .collect();
    let mut env = vec![
        plain("PORT", &CONTAINER_PORT.to_string()),
        plain("HOST", "0.0.0.0"),
        EnvVar {
            name: "FERRY_REPLICA_ID".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
    ];
    env.extend(variables(release, vars));
    let health = &service.health;
    let probe = |success: u32, failure: u32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(health.path.clone()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(seconds32(health.interval.get())),
        timeout_seconds: Some(seconds32(health.timeout.get())),
        success_threshold: Some(i32::try_from(success).unwrap_or(i32::MAX)),
        failure_threshold: Some(i32::try_from(failure).unwrap_or(i32::MAX)),
        ..Probe::default()
    };
    // The start timeout is the startup probe's budget; liveness only judges after it.
    let start_checks = health
        .start_timeout
        .get()
        .as_millis()
        .div_ceil(health.interval.get().as_millis().max(1))
        .max(1);
    Ok(Container {
        name: name.to_string(),
        image: Some(image),
        args: (!args.is_empty()).then_some(args),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_string()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(probe(health.healthy_threshold, health.unhealthy_threshold)),
        liveness_probe: Some(probe(1, health.unhealthy_threshold)),
        startup_probe: Some(probe(1, u32::try_from(start_checks).unwrap_or(u32::MAX))),
        resources: resources(name, service)?,
        security_context: Some(security_context(service)),
        volume_mounts: Some(tmp_mount()),
        ..Container::default()
    })
}

pub(crate) fn plain(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.to_string()),
        ..EnvVar::default()
    }
}

/// The layered variables (a secret of the same name wins), then the secrets, each read
/// from the environment's Secret.
fn variables(release: &Release<'_>, vars: &[EffectiveVar]) -> Vec<EnvVar> {
    let secret_name = names::secret(&release.manifest.app, release.env);
    let mut out: BTreeMap<&str, EnvVar> = vars
        .iter()
        .map(|v| (v.name.as_str(), plain(&v.name, &v.value)))
        .collect();
    for name in release.secrets {
        out.insert(
            name,
            EnvVar {
                name: name.clone(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret_name.clone(),
                        key: name.clone(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        );
    }
    out.into_values().collect()
}

fn resources(
    name: &str,
    service: &ServiceSpec,
) -> Result<Option<ResourceRequirements>, ObjectError> {
    let Some(resources) = &service.resources else {
        return Ok(None);
    };
    let fail = |message: String| ObjectError::Resources {
        service: name.to_string(),
        message,
    };
    let mut limits = BTreeMap::new();
    if let Some(bytes) = resources.memory_bytes().map_err(fail)? {
        limits.insert("memory".to_string(), Quantity(canonical_bytes(bytes)));
    }
    if let Some(nano) = resources.nano_cpus().map_err(fail)? {
        let milli = (nano / 1_000_000).max(1);
        let cpu = if milli % 1000 == 0 {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        };
        limits.insert("cpu".to_string(), Quantity(cpu));
    }
    if limits.is_empty() {
        return Ok(None);
    }
    // Requests = limits: the pod gets what it may use (Guaranteed QoS).
    Ok(Some(ResourceRequirements {
        requests: Some(limits.clone()),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }))
}

/// A byte count as the API server writes it back (its canonical form), so that what Ferry
/// applies compares equal to what it reads: the largest binary suffix that divides it
/// exactly, else the largest decimal one.
fn canonical_bytes(bytes: i64) -> String {
    for (factor, suffix) in [
        (1_i64 << 30, "Gi"),
        (1 << 20, "Mi"),
        (1 << 10, "Ki"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ] {
        if bytes % factor == 0 {
            return format!("{}{suffix}", bytes / factor);
        }
    }
    bytes.to_string()
}

fn version_service(release: &Release<'_>, namespace: &str, name: &str) -> Service {
    let mut metadata = meta(
        names::workload(name, release.version),
        namespace,
        labels(release, name),
    );
    metadata.annotations = version_annotation(release.version);
    Service {
        metadata,
        spec: Some(service_spec(selector(
            &release.manifest.app,
            release.env,
            name,
            release.version,
        ))),
        ..Service::default()
    }
}

/// `SERVICE-stable` / `SERVICE-canary`, selecting the pods of `release.version`.
pub fn gateway_service(release: &Release<'_>, namespace: &str, name: &str, role: &str) -> Service {
    let mut labels = selector(&release.manifest.app, release.env, name, release.version);
    labels.remove(LABEL_VERSION);
    labels.insert(LABEL_MANAGED_BY.to_string(), "ferry".to_string());
    labels.insert("ferry.dev/role".to_string(), role.to_string());
    let mut metadata = meta(names::gateway_backend(name, role), namespace, labels);
    metadata.annotations = version_annotation(release.version);
    Service {
        metadata,
        spec: Some(service_spec(selector(
            &release.manifest.app,
            release.env,
            name,
            release.version,
        ))),
        ..Service::default()
    }
}

fn service_spec(selector: BTreeMap<String, String>) -> KubeServiceSpec {
    KubeServiceSpec {
        selector: Some(selector),
        ports: Some(vec![ServicePort {
            name: Some("http".to_string()),
            port: SERVICE_PORT,
            target_port: Some(IntOrString::String("http".to_string())),
            protocol: Some("TCP".to_string()),
            ..ServicePort::default()
        }]),
        ..KubeServiceSpec::default()
    }
}

/// The environment's Secret with the values of its Ferry secrets (built by the runtime,
/// which alone knows them; never printed).
pub fn secret(manifest: &Manifest, env: &str, values: &BTreeMap<String, String>) -> Secret {
    let namespace = namespace_name(manifest, env);
    Secret {
        metadata: meta(
            names::secret(&manifest.app, env),
            &namespace,
            BTreeMap::from([
                (LABEL_MANAGED_BY.to_string(), "ferry".to_string()),
                (LABEL_APP.to_string(), manifest.app.clone()),
                (LABEL_ENV.to_string(), env.to_string()),
            ]),
        ),
        type_: Some("Opaque".to_string()),
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Identifies one attempt of one hook of one deployment.
#[derive(Debug, Clone, Copy)]
pub struct HookAttempt<'a> {
    pub deployment: i64,
    /// `pre_deploy`, `post_deploy`, `on_rollback`, `migration_down`.
    pub phase: &'a str,
    pub hook: &'a Hook,
    pub attempt: u32,
    /// The version serving before this deployment (`PREVIOUS_VERSION`).
    pub previous: Option<&'a str>,
}

/// The Job of one hook attempt: the image of the first service that has one (as the Docker
/// runtime does), the hook's `run` as the container's args, the environment's variables,
/// the hook's `env`, `VERSION`/`PREVIOUS_VERSION`/`FERRY_APP`/`FERRY_ENV` and the secrets; killed at the hook's timeout
/// (`activeDeadlineSeconds`), never retried by Kubernetes (Ferry counts attempts), kept
/// [`HOOK_JOB_TTL_SECONDS`] after it ends. Its name ([`names::hook_job`]) depends on the
/// attempt alone, so creating it twice finds the first one.
pub fn hook_job(release: &Release<'_>, attempt: &HookAttempt<'_>) -> Result<Job, ObjectError> {
    environment(release)?;
    let hook = attempt.hook;
    let argv = hook.run.clone().ok_or_else(|| ObjectError::NotACommand {
        hook: hook.name.clone(),
    })?;
    let (service_name, service) = release
        .manifest
        .services
        .iter()
        .find(|(_, s)| s.image.is_some())
        .ok_or_else(|| ObjectError::NoHookImage {
            env: release.env.to_string(),
            hook: hook.name.clone(),
        })?;
    let (vars, mut errors) =
        config::environment_vars(release.manifest, release.env, release.version);
    if !errors.is_empty() {
        return Err(ObjectError::Config(errors.remove(0)));
    }
    let mut vars: BTreeMap<String, EffectiveVar> =
        vars.into_iter().map(|v| (v.name.clone(), v)).collect();
    for (name, value) in &hook.env {
        vars.insert(
            name.clone(),
            EffectiveVar {
                name: name.clone(),
                value: value.clone(),
                source: config::Source::Builtin,
            },
        );
    }
    let builtins = [
        ("VERSION", Some(release.version)),
        ("PREVIOUS_VERSION", attempt.previous),
        ("FERRY_APP", Some(release.manifest.app.as_str())),
        ("FERRY_ENV", Some(release.env)),
    ];
    for (name, value) in builtins {
        let Some(value) = value else { continue };
        vars.insert(
            name.to_string(),
            EffectiveVar {
                name: name.to_string(),
                value: value.to_string(),
                source: config::Source::Builtin,
            },
        );
    }
    let vars: Vec<EffectiveVar> = vars.into_values().collect();
    let namespace = namespace_name(release.manifest, release.env);
    let (user, group) = user_of(service_name, service)?;
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "ferry".to_string()),
        (LABEL_APP.to_string(), release.manifest.app.clone()),
        (LABEL_ENV.to_string(), release.env.to_string()),
        (LABEL_HOOK.to_string(), names::label_value(&hook.name)),
        (LABEL_DEPLOYMENT.to_string(), attempt.deployment.to_string()),
        ("ferry.dev/phase".to_string(), attempt.phase.to_string()),
        ("ferry.dev/attempt".to_string(), attempt.attempt.to_string()),
    ]);
    labels.insert(
        LABEL_VERSION.to_string(),
        names::label_value(release.version),
    );
    let container = Container {
        name: "hook".to_string(),
        image: Some(image(service, service_name, release.version)?),
        args: Some(argv),
        env: Some(variables(release, &vars)),
        resources: resources(service_name, service)?,
        security_context: Some(security_context(service)),
        volume_mounts: Some(tmp_mount()),
        ..Container::default()
    };
    let mut metadata = meta(
        names::hook_job(
            attempt.deployment,
            attempt.phase,
            &hook.name,
            attempt.attempt,
        ),
        &namespace,
        labels.clone(),
    );
    metadata.annotations = version_annotation(release.version);
    Ok(run_once_job(
        metadata,
        labels,
        hook.timeout(),
        service,
        container,
        (user, group),
    ))
}

/// Objects as a multi-document YAML stream (`---` between documents).
pub fn to_yaml(values: &[serde_json::Value]) -> String {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        // Plain JSON values always serialize.
        out.push_str(&serde_saphyr::to_string(value).unwrap_or_default());
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// The Job of a one-off task the runtime is asked to run (a hook attempt, a gate's command
/// check, a command analysis): named from `name` (which the server derives from the
/// deployment, the hook and the attempt's record, so asking twice finds the same Job), the
/// image of the first service that has one, `argv` as its args, `vars` as its environment
/// except the environment's secrets, which are read from its Secret by `secretKeyRef`
/// (their values never appear in the Job). Killed at `timeout`, never retried by Kubernetes.
pub fn task_job(
    release: &Release<'_>,
    name: &str,
    argv: &[String],
    vars: &BTreeMap<String, String>,
    timeout: std::time::Duration,
) -> Result<Job, ObjectError> {
    environment(release)?;
    let (service_name, service) = release
        .manifest
        .services
        .iter()
        .find(|(_, s)| s.image.is_some())
        .ok_or_else(|| ObjectError::NoHookImage {
            env: release.env.to_string(),
            hook: name.to_string(),
        })?;
    let plain_vars: Vec<EffectiveVar> = vars
        .iter()
        .filter(|(k, _)| !release.secrets.contains(k))
        .map(|(k, v)| EffectiveVar {
            name: k.clone(),
            value: v.clone(),
            source: config::Source::Builtin,
        })
        .collect();
    let namespace = namespace_name(release.manifest, release.env);
    let (user, group) = user_of(service_name, service)?;
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "ferry".to_string()),
        (LABEL_APP.to_string(), release.manifest.app.clone()),
        (LABEL_ENV.to_string(), release.env.to_string()),
        (LABEL_TASK.to_string(), names::label_value(name)),
    ]);
    let container = Container {
        name: "task".to_string(),
        image: Some(image(service, service_name, release.version)?),
        args: (!argv.is_empty()).then(|| argv.to_vec()),
        env: Some(variables(release, &plain_vars)),
        resources: resources(service_name, service)?,
        security_context: Some(security_context(service)),
        volume_mounts: Some(tmp_mount()),
        ..Container::default()
    };
    let mut metadata = meta(names::task_job(name), &namespace, labels.clone());
    metadata.annotations = version_annotation(release.version);
    Ok(run_once_job(
        metadata,
        labels,
        timeout,
        service,
        container,
        (user, group),
    ))
}

/// A Job that runs `container` once (no retry) in `service`'s locked-down pod, stopped by
/// Kubernetes after `timeout` and removed some time after it finished: hooks and tasks.
fn run_once_job(
    metadata: ObjectMeta,
    labels: BTreeMap<String, String>,
    timeout: std::time::Duration,
    service: &ServiceSpec,
    container: Container,
    (user, group): (Option<i64>, Option<i64>),
) -> Job {
    Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(seconds(timeout)),
            ttl_seconds_after_finished: Some(HOOK_JOB_TTL_SECONDS),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(
                    service,
                    vec![container],
                    user,
                    group,
                    Some("Never"),
                    seconds(service.stop_timeout.get()),
                )),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}
