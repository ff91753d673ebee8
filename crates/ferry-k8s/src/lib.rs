//! `ferry-k8s`: Kubernetes as a runtime target.
//!
//! The core is pure: [`objects`] computes the objects of a release (Namespace, a Deployment
//! and a Service per service and version, the environment's Secret, hook Jobs) from the
//! manifest, and [`gateway`] computes the `HTTPRoute` weight patch of `traffic: gateway`.
//! Both are snapshot-tested, and every generated object is validated against the official
//! Kubernetes OpenAPI schemas (`tests/validate.rs`, PyPI `kubernetes-validate`).
//!
//! [`proxy`] computes the objects of a `traffic: proxy` environment's proxy fleet (the
//! `ferry-proxy` Deployment, its client and admin Services, the route table's ConfigMap).
//!
//! [`client`] (cargo feature `client`) talks to a cluster through kube-rs: server-side apply
//! under the field manager [`FIELD_MANAGER`], no write when nothing changed, adoption by
//! labels, endpoints from EndpointSlices, hook Jobs. It is tested against a mocked API
//! server (tower-test), not a real cluster: see docs/kubernetes.md.

#[cfg(feature = "client")]
pub mod client;
pub mod gateway;
pub mod names;
pub mod objects;
pub mod proxy;
#[cfg(feature = "client")]
pub mod runtime;

pub use objects::{HookAttempt, ObjectError, Objects, Release, hook_job, objects, to_yaml};

/// The field manager of every server-side apply Ferry makes.
pub const FIELD_MANAGER: &str = "ferry";
/// The Kubernetes versions whose schemas the objects are validated against (the oldest
/// and newest that `k8s-openapi` and `kubernetes-validate` both know).
pub const SUPPORTED_VERSIONS: [&str; 2] = ["1.33", "1.37"];
