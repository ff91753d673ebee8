//! One declaration per API endpoint: method, path, audit action, the permission it needs
//! and on what, its request and response bodies, how its audit record summarises it and
//! whether its body is secret. The server builds its router, its access rules and its
//! audit records from [`ENDPOINTS`] (tests hold `openapi.json` to it), and the CLI calls
//! the API through the same declarations ([`Endpoint`]), with the same wire types.
//!
//! Adding an endpoint: one line in [`endpoints!`] below, plus its handler bound by name in
//! the server's router.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::alerts::{AlertsAnswer, Silence, SilenceRequest};
use crate::api::audit::{ChangeRecord as ChangeRecordView, VerifyReport};
use crate::api::gates::{ApprovalStatus, ApproveRequest, GatesStatus, OverrideRequest};
use crate::api::identity::{
    BindingView, CanIResponse, CreateBindingRequest, CreateRoleRequest, CreateTokenRequest,
    CreateUserRequest, CreatedToken, LoginLinkRequest, LoginRequest, LoginResponse,
    PasswordRequest, RoleDeleted, TokenView, UseLoginLinkRequest, UserView, WhoAmI,
};
use crate::api::secrets::{KeyRotated, SecretDeleted, SecretSet, SecretView, SetSecretRequest};
use crate::api::{
    AppDeleted, AppStatus, AppSummary, ApplyRequest, ApplyResponse, DeployRequest,
    DeploymentDetail, DeploymentView, EventView, HookOutput, HookRunView, LoginLink,
    PromoteRequest, PromotionRequest, RedeployAnswer, RedeployRequest, ReleaseCreated,
    ReleaseRequest, ReleaseView, RollbackRequest, ServerVersion, TornDown,
};
use crate::audit::{AuditRecord, Checkpoint};
use crate::config::EnvConfig;
use crate::dora::DoraReport;
use crate::notify::DeliveryView;
use crate::rbac::{Permission, Role};

/// The HTTP methods the API serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an endpoint needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// No credentials (login).
    Public,
    /// Any authenticated caller; the handler may check more.
    Authenticated,
    /// This permission on the endpoint's target.
    Perm(Permission),
    /// This permission somewhere (lists; the handler filters what is shown).
    Anywhere(Permission),
    /// The caller is the user named in the path, or has this permission (globally).
    SelfOr(Permission),
    /// This permission on the endpoint's app in at least one environment (recording a
    /// release: whoever may deploy it somewhere).
    InSomeEnv(Permission),
}

/// Where an endpoint's target comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFrom {
    /// The server itself.
    Global,
    /// `{app}` in the path.
    App,
    /// `{app}` and `{env}` in the path.
    AppEnv,
    /// `{id}` of a deployment in the path: its app and env.
    Deployment,
    /// The `app:` of the manifest in an `ApplyRequest` body.
    Manifest,
    /// `{app}` in the path and the environment named by the body's `to` (promotions).
    BodyTo,
}

/// What an audit summary may use: the resolved target, the path parameters and the body
/// (never the body of an endpoint declared [`Spec::secret_body`]).
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a> {
    pub app: Option<&'a str>,
    pub env: Option<&'a str>,
    pub target: Option<&'a str>,
    pub params: &'a HashMap<String, String>,
    pub body: Option<&'a Value>,
}

impl Fields<'_> {
    /// A body field as text (lists joined with `, `); `None` when absent or empty.
    pub fn body(&self, key: &str) -> Option<String> {
        self.body
            .and_then(|b| b.get(key))
            .and_then(|v| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Array(items) => Some(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                _ => None,
            })
            .filter(|v| !v.is_empty())
    }

    fn body_or(&self, key: &str, default: &str) -> String {
        self.body(key).unwrap_or_else(|| default.to_string())
    }

    fn flag(&self, key: &str) -> bool {
        self.body(key).as_deref() == Some("true")
    }

    /// A path parameter (empty when absent).
    pub fn param(&self, key: &str) -> &str {
        self.params.get(key).map_or("", String::as_str)
    }

    pub fn app(&self) -> &str {
        self.app.unwrap_or_default()
    }

    pub fn env(&self) -> &str {
        self.env.unwrap_or_default()
    }

    /// `APP [ENVS]` of a binding or token body.
    fn scope(&self) -> String {
        format!(
            "{} [{}]",
            self.body_or("app", "all apps"),
            self.body_or("envs", "all environments")
        )
    }
}

/// One endpoint, as plain data.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub method: Method,
    /// The path template, as in the router (`/v1/apps/{app}`).
    pub path: &'static str,
    /// The stable audit action name (`deploy`, `secrets.set`).
    pub action: &'static str,
    pub need: Need,
    pub target: TargetFrom,
    /// The body carries a secret: the gate never keeps it for the audit record.
    pub secret_body: bool,
    summary: Option<fn(&Fields<'_>) -> String>,
}

const fn spec(
    method: Method,
    path: &'static str,
    action: &'static str,
    need: Need,
    target: TargetFrom,
) -> Spec {
    Spec {
        method,
        path,
        action,
        need,
        target,
        secret_body: false,
        summary: None,
    }
}

const fn get(path: &'static str, action: &'static str, need: Need, target: TargetFrom) -> Spec {
    spec(Method::Get, path, action, need, target)
}

const fn post(path: &'static str, action: &'static str, need: Need, target: TargetFrom) -> Spec {
    spec(Method::Post, path, action, need, target)
}

const fn put(path: &'static str, action: &'static str, need: Need, target: TargetFrom) -> Spec {
    spec(Method::Put, path, action, need, target)
}

const fn delete(path: &'static str, action: &'static str, need: Need, target: TargetFrom) -> Spec {
    spec(Method::Delete, path, action, need, target)
}

impl Spec {
    /// How the audit record summarises a request (default: the action and its target).
    const fn summary(mut self, summary: fn(&Fields<'_>) -> String) -> Spec {
        self.summary = Some(summary);
        self
    }

    /// The body is secret: never kept for the audit record.
    const fn secret_body(mut self) -> Spec {
        self.secret_body = true;
        self
    }

    /// The one-line description of a request in its audit record, from the path and chosen
    /// body fields only — never a password, token or secret value.
    pub fn summarize(&self, fields: &Fields<'_>) -> String {
        if let Some(summary) = self.summary {
            return summary(fields);
        }
        let on = match (fields.app, fields.env, fields.target) {
            (_, _, Some(t)) => format!(" {t}"),
            (Some(a), Some(e), None) => format!(" {a}/{e}"),
            (Some(a), None, None) => format!(" {a}"),
            _ => String::new(),
        };
        format!("{}{on}", self.action)
    }

    /// What `openapi.json` says the endpoint needs (`x-ferry-permission`).
    pub fn permission_label(&self) -> String {
        match (self.need, self.target) {
            (Need::Public, _) => "none".to_string(),
            (Need::Authenticated, _) => "authenticated".to_string(),
            (Need::Perm(p), TargetFrom::BodyTo) => format!("{p} (on the `to` environment)"),
            (Need::Perm(p), _) => p.to_string(),
            (Need::Anywhere(p), _) => format!("{p} (anywhere; results filtered)"),
            (Need::SelfOr(p), _) => format!("self, or {p}"),
            (Need::InSomeEnv(p), _) => format!("{p} (in at least one environment of the app)"),
        }
    }

    /// The names of the path's parameters, in order (`["app", "env"]`).
    pub fn params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
    }

    /// The path's segments with its parameters filled in order from `values` (not escaped:
    /// a client escapes each segment). `Err` names what is missing or extra.
    pub fn segments<'a>(&self, values: &[&'a str]) -> Result<Vec<&'a str>, String>
    where
        'static: 'a,
    {
        let mut values = values.iter();
        let mut out = Vec::new();
        for seg in self.path.trim_start_matches('/').split('/') {
            if seg.starts_with('{') {
                out.push(
                    *values.next().ok_or_else(|| {
                        format!("{} {}: no value for {seg}", self.method, self.path)
                    })?,
                );
            } else {
                out.push(seg);
            }
        }
        if values.next().is_some() {
            return Err(format!(
                "{} {}: more values than parameters",
                self.method, self.path
            ));
        }
        Ok(out)
    }
}

/// An endpoint with its request and response bodies, for typed clients. `Request = ()`:
/// no body is sent.
pub trait Endpoint {
    type Request: Serialize;
    type Response: DeserializeOwned;
    const SPEC: Spec;
}

/// The body of a POST that carries nothing: `{}`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Empty {}

/// An answer that is text (OpenMetrics, log lines, server-sent events, JSON lines), not a
/// JSON value: read it as text.
#[derive(Debug, Clone, Deserialize)]
pub struct Text(pub String);

macro_rules! endpoints {
    ($( $(#[$doc:meta])* $name:ident : $req:ty => $resp:ty = $spec:expr; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;
            impl Endpoint for $name {
                type Request = $req;
                type Response = $resp;
                const SPEC: Spec = $spec;
            }
        )*
        /// Every gated endpoint of the API.
        pub static ENDPOINTS: &[Spec] = &[$($name::SPEC),*];
    };
}

use Need::{Anywhere, Authenticated, InSomeEnv, Perm, Public, SelfOr};
use Permission as P;
use TargetFrom::{App, AppEnv, BodyTo, Deployment, Global, Manifest};

endpoints! {
    Login: LoginRequest => LoginResponse = post("/v1/login", "login", Public, Global)
        .summary(|f| format!("log in as {}", f.body_or("username", "")));
    LoginWithLink: UseLoginLinkRequest => LoginResponse = post("/v1/login/link", "login.link", Public, Global)
        .summary(|_| "log in with a one-time link".to_string());
    LoginLinksCreate: LoginLinkRequest => LoginLink = post("/v1/login-links", "login_links.create", Perm(P::ManageUsers), Global)
        .summary(|f| format!("create a one-time console login link for {}", f.body_or("user", "")));
    Logout: Empty => TokenView = post("/v1/logout", "logout", Authenticated, Global)
        .summary(|_| "log out".to_string());
    Whoami: () => WhoAmI = get("/v1/whoami", "whoami", Authenticated, Global);
    Version: () => ServerVersion = get("/v1/version", "version", Authenticated, Global);
    Metrics: () => Text = get("/metrics", "metrics", Perm(P::ViewMetrics), Global);
    AppsList: () => Vec<AppSummary> = get("/v1/apps", "apps.list", Anywhere(P::View), Global);
    Apply: ApplyRequest => ApplyResponse = post("/v1/apps", "apply", Perm(P::ManageApps), Manifest)
        .summary(|f| format!(
            "apply the manifest of {}{}",
            f.app.filter(|a| !a.is_empty()).unwrap_or("an app"),
            if f.flag("dry_run") { " (dry run)" } else { "" }
        ));
    AppsGet: () => AppSummary = get("/v1/apps/{app}", "apps.get", Perm(P::View), App);
    AppsDelete: () => AppDeleted = delete("/v1/apps/{app}", "apps.delete", Perm(P::ManageApps), App);
    Status: () => AppStatus = get("/v1/apps/{app}/status", "status", Perm(P::View), App);
    Deploy: DeployRequest => DeploymentView = post("/v1/apps/{app}/envs/{env}/deployments", "deploy", Perm(P::Deploy), AppEnv)
        .summary(|f| format!("deploy {} {} to {}", f.app(), f.body_or("version", "?"), f.env()));
    History: () => Vec<DeploymentView> = get("/v1/apps/{app}/envs/{env}/deployments", "history", Perm(P::View), AppEnv);
    Rollback: RollbackRequest => DeploymentView = post("/v1/apps/{app}/envs/{env}/rollback", "rollback", Perm(P::Rollback), AppEnv)
        .summary(|f| match f.body("to") {
            Some(to) => format!("roll back {} in {} to {to}", f.app(), f.env()),
            None => format!("roll back {} in {} to the previous version", f.app(), f.env()),
        });
    Logs: () => Text = get("/v1/apps/{app}/envs/{env}/logs", "logs", Perm(P::ViewLogs), AppEnv);
    Dora: () => DoraReport = get("/v1/apps/{app}/envs/{env}/dora", "dora", Perm(P::View), AppEnv);
    AlertsList: () => AlertsAnswer = get("/v1/alerts", "alerts.list", Anywhere(P::View), Global);
    SilencesList: () => Vec<Silence> = get("/v1/silences", "silences.list", Anywhere(P::View), Global);
    SilencesCreate: SilenceRequest => Silence = post("/v1/apps/{app}/envs/{env}/silences", "silences.create", Perm(P::Rollback), AppEnv);
    SilencesDelete: () => Silence = delete("/v1/apps/{app}/envs/{env}/silences/{id}", "silences.delete", Perm(P::Rollback), AppEnv);
    Watch: () => Text = get("/v1/apps/{app}/envs/{env}/watch", "watch", Perm(P::View), AppEnv);
    Promote: PromoteRequest => DeploymentView = post("/v1/apps/{app}/envs/{env}/promote", "promote", Perm(P::Promote), AppEnv)
        .summary(|f| format!(
            "promote {} in {}{}",
            f.app(),
            f.env(),
            if f.flag("full") { " fully" } else { " one step" }
        ));
    Pause: Empty => DeploymentView = post("/v1/apps/{app}/envs/{env}/pause", "pause", Perm(P::Promote), AppEnv)
        .summary(|f| format!("pause the rollout of {} in {}", f.app(), f.env()));
    Resume: Empty => DeploymentView = post("/v1/apps/{app}/envs/{env}/resume", "resume", Perm(P::Promote), AppEnv)
        .summary(|f| format!("resume the rollout of {} in {}", f.app(), f.env()));
    Abort: Empty => DeploymentView = post("/v1/apps/{app}/envs/{env}/abort", "abort", Perm(P::Abort), AppEnv)
        .summary(|f| format!("abort the rollout of {} in {}", f.app(), f.env()));
    Retry: Empty => DeploymentView = post("/v1/apps/{app}/envs/{env}/retry", "retry", Perm(P::Deploy), AppEnv)
        .summary(|f| format!("retry the last deployment of {} in {}", f.app(), f.env()));
    SecretsList: () => Vec<SecretView> = get("/v1/apps/{app}/envs/{env}/secrets", "secrets.list", Perm(P::View), AppEnv);
    SecretsSet: SetSecretRequest => SecretSet = put("/v1/apps/{app}/envs/{env}/secrets/{name}", "secrets.set", Perm(P::ManageSecrets), AppEnv).secret_body()
        .summary(|f| format!("set secret {} of {} in {}", f.param("name"), f.app(), f.env()));
    SecretsDelete: () => SecretDeleted = delete("/v1/apps/{app}/envs/{env}/secrets/{name}", "secrets.delete", Perm(P::ManageSecrets), AppEnv)
        .summary(|f| format!("delete secret {} of {} in {}", f.param("name"), f.app(), f.env()));
    SecretsRotateKey: Empty => KeyRotated = post("/v1/secrets/rotate-key", "secrets.rotate_key", Perm(P::ManageServer), Global)
        .summary(|_| "rotate the secrets master key".to_string());
    DeploymentsGet: () => DeploymentDetail = get("/v1/deployments/{id}", "deployments.get", Perm(P::View), Deployment);
    DeploymentsEvents: () => Vec<EventView> = get("/v1/deployments/{id}/events", "deployments.events", Perm(P::View), Deployment);
    Approve: ApproveRequest => ApprovalStatus = post("/v1/deployments/{id}/approve", "approve", Perm(P::Approve), Deployment);
    ApproveWithdraw: () => ApprovalStatus = delete("/v1/deployments/{id}/approve", "approve.withdraw", Perm(P::Approve), Deployment);
    Approvals: () => ApprovalStatus = get("/v1/deployments/{id}/approvals", "approvals", Perm(P::View), Deployment);
    ChangeRecord: () => ChangeRecordView = get("/v1/deployments/{id}/change-record", "change_record", Perm(P::View), Deployment);
    Teardown: Empty => TornDown = post("/v1/teardown", "teardown", Perm(P::ManageServer), Global)
        .summary(|_| "tear down every app and stop the server".to_string());
    UsersList: () => Vec<UserView> = get("/v1/users", "users.list", Perm(P::ManageUsers), Global);
    UsersCreate: CreateUserRequest => UserView = post("/v1/users", "users.create", Perm(P::ManageUsers), Global)
        .summary(|f| format!("add user {}", f.body_or("username", "")));
    UsersDisable: Empty => UserView = post("/v1/users/{name}/disable", "users.disable", Perm(P::ManageUsers), Global)
        .summary(|f| format!("disable user {}", f.param("name")));
    UsersEnable: Empty => UserView = post("/v1/users/{name}/enable", "users.enable", Perm(P::ManageUsers), Global)
        .summary(|f| format!("enable user {}", f.param("name")));
    UsersPassword: PasswordRequest => UserView = put("/v1/users/{name}/password", "users.password", SelfOr(P::ManageUsers), Global)
        .summary(|f| format!("change the password of user {}", f.param("name")));
    RolesList: () => Vec<Role> = get("/v1/roles", "roles.list", Authenticated, Global);
    RolesCreate: CreateRoleRequest => Role = post("/v1/roles", "roles.create", Perm(P::ManageRoles), Global)
        .summary(|f| format!(
            "define role {} with permissions [{}]",
            f.body_or("name", ""),
            f.body_or("permissions", "")
        ));
    RolesDelete: () => RoleDeleted = delete("/v1/roles/{name}", "roles.delete", Perm(P::ManageRoles), Global)
        .summary(|f| format!("delete role {}", f.param("name")));
    BindingsList: () => Vec<BindingView> = get("/v1/bindings", "bindings.list", Authenticated, Global);
    BindingsCreate: CreateBindingRequest => BindingView = post("/v1/bindings", "bindings.create", Perm(P::ManageUsers), Global)
        .summary(|f| format!(
            "give role {} to user {} on {}",
            f.body_or("role", ""),
            f.body_or("user", ""),
            f.scope()
        ));
    BindingsDelete: () => BindingView = delete("/v1/bindings/{id}", "bindings.delete", Perm(P::ManageUsers), Global)
        .summary(|f| format!("delete binding #{}", f.param("id")));
    TokensList: () => Vec<TokenView> = get("/v1/tokens", "tokens.list", Authenticated, Global);
    TokensCreate: CreateTokenRequest => CreatedToken = post("/v1/tokens", "tokens.create", Authenticated, Global)
        .summary(|f| format!(
            "create token {} with role {} on {}{}",
            f.body_or("name", ""),
            f.body_or("role", ""),
            f.scope(),
            f.body("expires_in")
                .map(|e| format!(", expiring in {e}"))
                .unwrap_or_else(|| ", never expiring".to_string())
        ));
    TokensDelete: () => TokenView = delete("/v1/tokens/{id}", "tokens.delete", Authenticated, Global)
        .summary(|f| format!("revoke token #{}", f.param("id")));
    AuthCanI: () => CanIResponse = get("/v1/auth/can-i", "auth.can_i", Authenticated, Global);
    Notifications: () => Vec<DeliveryView> = get("/v1/notifications", "notifications", Anywhere(P::View), Global);
    AuditQuery: () => Vec<AuditRecord> = get("/v1/audit", "audit.query", Anywhere(P::View), Global);
    AuditExport: () => Text = get("/v1/audit/export", "audit.export", Anywhere(P::View), Global);
    AuditVerify: () => VerifyReport = get("/v1/audit/verify", "audit.verify", Perm(P::View), Global);
    AuditCheckpoints: () => Vec<Checkpoint> = get("/v1/audit/checkpoints", "audit.checkpoints", Perm(P::View), Global);
    ReleasesCreate: ReleaseRequest => ReleaseCreated = post("/v1/apps/{app}/releases", "releases.create", InSomeEnv(P::Deploy), App)
        .summary(|f| format!("record release {} {}", f.app(), f.body_or("version", "?")));
    ReleasesList: () => Vec<ReleaseView> = get("/v1/apps/{app}/releases", "releases.list", Perm(P::View), App);
    ReleasesGet: () => ReleaseView = get("/v1/apps/{app}/releases/{version}", "releases.get", Perm(P::View), App);
    PromotionsCreate: PromotionRequest => DeploymentView = post("/v1/apps/{app}/promotions", "promotions.create", Perm(P::Deploy), BodyTo)
        .summary(|f| format!(
            "promote {} from {} to {}",
            f.app(),
            f.body_or("from", "?"),
            f.body_or("to", "?")
        ));
    Gates: () => GatesStatus = get("/v1/deployments/{id}/gates", "gates", Perm(P::View), Deployment);
    GatesOverride: OverrideRequest => GatesStatus = post("/v1/deployments/{id}/overrides", "gates.override", Perm(P::OverrideFreeze), Deployment);
    ConfigGet: () => EnvConfig = get("/v1/apps/{app}/envs/{env}/config", "config.get", Perm(P::View), AppEnv);
    Redeploy: RedeployRequest => RedeployAnswer = post("/v1/apps/{app}/envs/{env}/redeploy", "redeploy", Perm(P::Deploy), AppEnv)
        .summary(|f| format!("redeploy {} in {} with its current configuration", f.app(), f.env()));
    DeploymentsHooks: () => Vec<HookRunView> = get("/v1/deployments/{id}/hooks", "deployments.hooks", Perm(P::View), Deployment);
    DeploymentsHookOutput: () => Vec<HookOutput> = get("/v1/deployments/{id}/hooks/{name}/output", "deployments.hook_output", Perm(P::ViewLogs), Deployment);
    FlagsList: () => Value = get("/v1/apps/{app}/envs/{env}/flags", "flags.list", Perm(P::View), AppEnv);
    FlagsCreate: Value => Value = post("/v1/apps/{app}/envs/{env}/flags", "flags.create", Perm(P::ManageFlags), AppEnv);
    FlagsGet: () => Value = get("/v1/apps/{app}/envs/{env}/flags/{flag}", "flags.get", Perm(P::View), AppEnv);
    FlagsSet: Value => Value = put("/v1/apps/{app}/envs/{env}/flags/{flag}", "flags.set", Perm(P::ManageFlags), AppEnv);
    FlagsEnable: Empty => Value = post("/v1/apps/{app}/envs/{env}/flags/{flag}/enable", "flags.enable", Perm(P::ManageFlags), AppEnv);
    FlagsDisable: Empty => Value = post("/v1/apps/{app}/envs/{env}/flags/{flag}/disable", "flags.disable", Perm(P::ManageFlags), AppEnv);
    FlagsArchive: Empty => Value = post("/v1/apps/{app}/envs/{env}/flags/{flag}/archive", "flags.archive", Perm(P::ManageFlags), AppEnv);
    FlagsRollout: Value => Value = put("/v1/apps/{app}/envs/{env}/flags/{flag}/rollout", "flags.rollout", Perm(P::ManageFlags), AppEnv);
    FlagsVariants: Value => Value = put("/v1/apps/{app}/envs/{env}/flags/{flag}/variants", "flags.variants", Perm(P::ManageFlags), AppEnv);
    FlagsGuardedRolloutGet: () => Value = get("/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout", "flags.guarded_rollout.get", Perm(P::View), AppEnv);
    FlagsGuardedRolloutStart: Value => Value = post("/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout", "flags.guarded_rollout.start", Perm(P::ManageFlags), AppEnv);
    FlagsGuardedRolloutStop: () => Value = delete("/v1/apps/{app}/envs/{env}/flags/{flag}/guarded-rollout", "flags.guarded_rollout.stop", Perm(P::ManageFlags), AppEnv);
    FlagsExport: () => Value = get("/v1/apps/{app}/envs/{env}/features", "flags.export", Perm(P::View), AppEnv);
    FlagsImport: Value => Value = post("/v1/apps/{app}/envs/{env}/features", "flags.import", Perm(P::ManageFlags), AppEnv);
    FlagsTokensList: () => Value = get("/v1/apps/{app}/envs/{env}/flag-tokens", "flags.tokens.list", Perm(P::ManageFlags), AppEnv);
    FlagsTokensCreate: Value => Value = post("/v1/apps/{app}/envs/{env}/flag-tokens", "flags.tokens.create", Perm(P::ManageFlags), AppEnv);
    FlagsTokensDelete: () => Value = delete("/v1/apps/{app}/envs/{env}/flag-tokens/{id}", "flags.tokens.delete", Perm(P::ManageFlags), AppEnv);
    FlagsMetrics: () => Value = get("/v1/apps/{app}/envs/{env}/flag-metrics", "flags.metrics", Perm(P::View), AppEnv);
}

/// The endpoint a request's method and matched path template name.
pub fn find(method: &str, path: &str) -> Option<&'static Spec> {
    ENDPOINTS
        .iter()
        .find(|e| e.method.as_str().eq_ignore_ascii_case(method) && e.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_method_and_path_and_action_is_declared_once() {
        let mut routes = std::collections::HashSet::new();
        let mut actions = std::collections::HashSet::new();
        for e in ENDPOINTS {
            assert!(
                routes.insert((e.method, e.path)),
                "{} {} twice",
                e.method,
                e.path
            );
            assert!(actions.insert(e.action), "action {} twice", e.action);
            assert!(e.path.starts_with('/'), "{}", e.path);
        }
    }

    #[test]
    fn paths_fill_their_parameters_in_order() {
        assert_eq!(Deploy::SPEC.params().collect::<Vec<_>>(), ["app", "env"]);
        assert_eq!(
            Deploy::SPEC.segments(&["shop", "prod"]).unwrap(),
            ["v1", "apps", "shop", "envs", "prod", "deployments"]
        );
        assert!(Deploy::SPEC.segments(&["shop"]).is_err());
        assert!(Deploy::SPEC.segments(&["shop", "prod", "x"]).is_err());
        assert_eq!(Metrics::SPEC.segments(&[]).unwrap(), ["metrics"]);
    }

    #[test]
    fn summaries_name_the_target_and_never_a_secret() {
        let params: HashMap<String, String> = [("name".to_string(), "DB_URL".to_string())].into();
        let body = serde_json::json!({ "value": "hunter2", "version": "v2" });
        let fields = Fields {
            app: Some("shop"),
            env: Some("prod"),
            target: None,
            params: &params,
            body: Some(&body),
        };
        assert_eq!(Deploy::SPEC.summarize(&fields), "deploy shop v2 to prod");
        assert_eq!(
            SecretsSet::SPEC.summarize(&fields),
            "set secret DB_URL of shop in prod"
        );
        let secret: Vec<&str> = ENDPOINTS
            .iter()
            .filter(|e| e.secret_body)
            .map(|e| e.action)
            .collect();
        assert_eq!(secret, ["secrets.set"]);
        assert_eq!(Dora::SPEC.summarize(&fields), "dora shop/prod");
        assert_eq!(
            find("post", Deploy::SPEC.path).map(|e| e.action),
            Some("deploy")
        );
        assert!(find("PATCH", Deploy::SPEC.path).is_none());
    }
}
