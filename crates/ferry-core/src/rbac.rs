//! Authorisation, pure: permissions, roles, scoped role bindings, the allow/deny
//! [`decide`]sion with a human explanation, the separation-of-duties check
//! ([`may_approve`]) and the login [`Throttle`].
//!
//! # The model
//! A principal (user or API token) holds [`Binding`]s. Each binding names a [`Role`] (a set
//! of [`Permission`]s) and a [`Scope`]: one app or all apps, some environments or all.
//! A request asks for one permission on a [`Target`]: an app and environment
//! (`shop/production`), a whole app (`shop`, env `None`), or the server itself (app `None`,
//! a *global* action such as `manage_users`).
//!
//! # Scope rules (what [`decide`] implements)
//! A binding grants `permission` on `target` when **all** of these hold:
//! 1. its role exists in `roles` (unknown role names grant nothing; the reason says so);
//! 2. the role contains `permission`;
//! 3. app: the binding is for all apps (`scope.app == None`), or the target is that same
//!    app. A binding limited to one app never grants anything on a global target;
//! 4. environments: the binding is for all environments (`scope.envs` empty), or the
//!    target's environment is listed. For a target without an environment (app-wide or
//!    global) an environment-limited binding grants only the **read** permissions
//!    ([`Permission::is_read_only`]: `view`, `view_logs`, `view_metrics`) — someone who
//!    may see `shop` in dev may open `shop`'s page, but may not apply `shop`'s manifest or
//!    change app-wide config, which would reach production too.
//!
//! Permissions that are global by nature ([`Permission::is_global`]: `manage_users`,
//! `manage_roles`, `manage_server`) are always judged against the global target, whatever
//! target the caller passes, so an admin bound to one app cannot manage users.
//!
//! Matching of app and environment names is exact (case-sensitive). When several
//! bindings grant, the first one in slice order is reported in
//! [`Decision::granted_by`].

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod throttle;

pub use throttle::{Throttle, ThrottlePolicy, ThrottleState};

/// One thing a principal may do. Serialised and parsed in `snake_case` (`view_logs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Start a deployment of a release into an environment.
    Deploy,
    /// Promote a release from one environment to the next.
    Promote,
    /// Approve (or reject) a deployment waiting on an approval gate.
    Approve,
    /// Roll an environment back to a previous release.
    Rollback,
    /// Abort a deployment in progress.
    Abort,
    /// See apps, environments, releases, deployments and their status.
    View,
    /// Read service logs.
    ViewLogs,
    /// Read metrics and analysis results.
    ViewMetrics,
    /// Apply manifests: create and change apps, services and environments.
    ManageApps,
    /// Change environment variables and other non-secret configuration.
    ManageConfig,
    /// Set and delete secrets (values are never readable back).
    ManageSecrets,
    /// Create and change feature flags.
    ManageFlags,
    /// Add, disable and change users and their role bindings; manage API tokens. Global.
    ManageUsers,
    /// Define custom roles. Global.
    ManageRoles,
    /// Deploy during a freeze window.
    OverrideFreeze,
    /// Server administration, including teardown. Global.
    ManageServer,
}

impl Permission {
    pub const ALL: [Permission; 16] = [
        Permission::Deploy,
        Permission::Promote,
        Permission::Approve,
        Permission::Rollback,
        Permission::Abort,
        Permission::View,
        Permission::ViewLogs,
        Permission::ViewMetrics,
        Permission::ManageApps,
        Permission::ManageConfig,
        Permission::ManageSecrets,
        Permission::ManageFlags,
        Permission::ManageUsers,
        Permission::ManageRoles,
        Permission::OverrideFreeze,
        Permission::ManageServer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Deploy => "deploy",
            Permission::Promote => "promote",
            Permission::Approve => "approve",
            Permission::Rollback => "rollback",
            Permission::Abort => "abort",
            Permission::View => "view",
            Permission::ViewLogs => "view_logs",
            Permission::ViewMetrics => "view_metrics",
            Permission::ManageApps => "manage_apps",
            Permission::ManageConfig => "manage_config",
            Permission::ManageSecrets => "manage_secrets",
            Permission::ManageFlags => "manage_flags",
            Permission::ManageUsers => "manage_users",
            Permission::ManageRoles => "manage_roles",
            Permission::OverrideFreeze => "override_freeze",
            Permission::ManageServer => "manage_server",
        }
    }

    /// Read permissions: `view`, `view_logs`, `view_metrics`. These (and only these) are
    /// granted on an app-wide or global target by an environment-limited binding.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Permission::View | Permission::ViewLogs | Permission::ViewMetrics
        )
    }

    /// Permissions about the server rather than an app: `manage_users`, `manage_roles`,
    /// `manage_server`. [`decide`] judges them against the global target.
    pub fn is_global(self) -> bool {
        matches!(
            self,
            Permission::ManageUsers | Permission::ManageRoles | Permission::ManageServer
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;

    /// Parses the `snake_case` name; `-` is accepted for `_` (`view-logs`), and case is
    /// ignored. The error lists every valid name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = Permission::ALL.iter().map(|p| p.as_str()).collect();
                format!(
                    "unknown permission {s:?}; valid permissions: {}",
                    names.join(", ")
                )
            })
    }
}

/// A named set of permissions. Built-in roles ([`builtin_roles`]) have `builtin: true`
/// and cannot be changed; custom roles are defined by users with `manage_roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub description: String,
    pub permissions: BTreeSet<Permission>,
    pub builtin: bool,
}

impl Role {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }
}

/// Names of the built-in roles, in the order [`builtin_roles`] returns them.
pub const BUILTIN_ROLE_NAMES: [&str; 5] = ["admin", "developer", "deployer", "approver", "viewer"];

/// The built-in roles:
/// - `admin`: every permission, including users, roles, secrets, freeze overrides and
///   server teardown.
/// - `developer`: ships code — `deploy`, `promote`, `rollback`, `abort`, `view`,
///   `view_logs`, `view_metrics`, `manage_apps`, `manage_config`. No approvals (so
///   approval gates mean a second person), no secrets, flags, users or freeze overrides.
/// - `deployer`: for CI tokens — `deploy`, `promote`, `view`, `view_logs`.
/// - `approver`: signs off gated deployments — `approve`, `view`, `view_logs`,
///   `view_metrics`.
/// - `viewer`: read-only — `view`, `view_logs`, `view_metrics`.
pub fn builtin_roles() -> Vec<Role> {
    use Permission::*;
    let role = |name: &str, description: &str, perms: &[Permission]| Role {
        name: name.to_string(),
        description: description.to_string(),
        permissions: perms.iter().copied().collect(),
        builtin: true,
    };
    vec![
        role(
            "admin",
            "Everything: deployments, approvals, configuration, secrets, flags, users, roles, \
             freeze overrides and server administration.",
            &Permission::ALL,
        ),
        role(
            "developer",
            "Ships code: deploy, promote, roll back and abort; apply manifests and change \
             configuration; read status, logs and metrics. Cannot approve, touch secrets, \
             flags or users, or override freezes.",
            &[
                Deploy,
                Promote,
                Rollback,
                Abort,
                View,
                ViewLogs,
                ViewMetrics,
                ManageApps,
                ManageConfig,
            ],
        ),
        role(
            "deployer",
            "For CI tokens: deploy and promote releases; read status and logs.",
            &[Deploy, Promote, View, ViewLogs],
        ),
        role(
            "approver",
            "Approves or rejects gated deployments; reads status, logs and metrics.",
            &[Approve, View, ViewLogs, ViewMetrics],
        ),
        role(
            "viewer",
            "Read-only: status, logs and metrics.",
            &[View, ViewLogs, ViewMetrics],
        ),
    ]
}

/// The built-in role with this name, if any.
pub fn builtin_role(name: &str) -> Option<Role> {
    builtin_roles().into_iter().find(|r| r.name == name)
}

/// Whether `name` is one of [`BUILTIN_ROLE_NAMES`] (custom roles may not take these).
pub fn is_builtin_role_name(name: &str) -> bool {
    BUILTIN_ROLE_NAMES.contains(&name)
}

/// The role named `name` in `roles`.
pub fn find_role<'a>(roles: &'a [Role], name: &str) -> Option<&'a Role> {
    roles.iter().find(|r| r.name == name)
}

/// Role names: 1 to 63 characters, starting with a lowercase ASCII letter, then lowercase
/// letters, digits, `-` or `_`. (Purely syntactic; see [`is_builtin_role_name`] for the
/// reserved names.)
pub fn validate_role_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("role name must not be empty".to_string());
    }
    if name.len() > 63 {
        return Err(format!(
            "role name {name:?} is too long ({} characters; at most 63)",
            name.len()
        ));
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase()) {
        return Err(format!(
            "role name {name:?} must start with a lowercase letter (a-z)"
        ));
    }
    if let Some(bad) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "role name {name:?} contains {bad:?}; use lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Where a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Scope {
    /// `None` = all apps (and global actions).
    pub app: Option<String>,
    /// Empty = all environments.
    pub envs: Vec<String>,
}

impl Scope {
    /// All apps, all environments (and global actions).
    pub fn all() -> Self {
        Scope::default()
    }

    /// One app, all its environments.
    pub fn app(app: impl Into<String>) -> Self {
        Scope {
            app: Some(app.into()),
            envs: Vec::new(),
        }
    }

    /// One app, some environments.
    pub fn app_envs<S: Into<String>>(
        app: impl Into<String>,
        envs: impl IntoIterator<Item = S>,
    ) -> Self {
        Scope {
            app: Some(app.into()),
            envs: envs.into_iter().map(Into::into).collect(),
        }
    }

    /// Long form, as used in "allowed" reasons: `app shop, environments dev, staging`,
    /// `all apps, all environments`.
    pub fn describe(&self) -> String {
        let app = match &self.app {
            Some(a) => format!("app {a}"),
            None => "all apps".to_string(),
        };
        let envs = if self.envs.is_empty() {
            "all environments".to_string()
        } else {
            format!("environments {}", self.envs.join(", "))
        };
        format!("{app}, {envs}")
    }

    /// Short form, as used in "denied" reasons: `shop [dev, staging]`,
    /// `all apps [all environments]`.
    pub fn short(&self) -> String {
        let app = self.app.as_deref().unwrap_or("all apps");
        let envs = if self.envs.is_empty() {
            "all environments".to_string()
        } else {
            self.envs.join(", ")
        };
        format!("{app} [{envs}]")
    }
}

/// A role given to a principal within a scope. `id` is the store's id, quoted in reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub id: i64,
    pub role: String,
    pub scope: Scope,
}

/// What a request acts on. `app: None` = a global action (e.g. `manage_users`);
/// `env: None` = the whole app (or, with `app: None`, the whole server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Target<'a> {
    pub app: Option<&'a str>,
    pub env: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The server itself (global actions).
    pub const fn global() -> Self {
        Target {
            app: None,
            env: None,
        }
    }

    /// A whole app.
    pub const fn app(app: &'a str) -> Self {
        Target {
            app: Some(app),
            env: None,
        }
    }

    /// One environment of an app.
    pub const fn env(app: &'a str, env: &'a str) -> Self {
        Target {
            app: Some(app),
            env: Some(env),
        }
    }

    pub fn is_global(&self) -> bool {
        self.app.is_none() && self.env.is_none()
    }
}

impl fmt::Display for Target<'_> {
    /// `shop/production`, `shop`, `global`, `all apps/production`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.app, self.env) {
            (Some(a), Some(e)) => write!(f, "{a}/{e}"),
            (Some(a), None) => f.write_str(a),
            (None, Some(e)) => write!(f, "all apps/{e}"),
            (None, None) => f.write_str("global"),
        }
    }
}

/// The answer to "may this principal do `permission` on `target`?", with an explanation
/// fit for `ferry auth can-i` and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    /// `allowed: binding #3 gives role developer on app shop, environments dev, staging`,
    /// or `denied: no binding gives deploy on shop/production; bindings: #3 developer on
    /// shop [dev, staging] (production not in scope)`.
    pub reason: String,
    /// The id of the binding that grants, when allowed.
    pub granted_by: Option<i64>,
}

/// Why one binding does or does not grant `permission` on `target` (`Ok(())` = grants,
/// `Err(why)` = the parenthesised explanation used in denied reasons).
pub fn binding_grants(
    roles: &[Role],
    binding: &Binding,
    permission: Permission,
    target: Target<'_>,
) -> Result<(), String> {
    let target = effective_target(permission, target);
    let Some(role) = find_role(roles, &binding.role) else {
        return Err(format!("unknown role {}", binding.role));
    };
    if !role.has(permission) {
        return Err(format!("{} lacks {permission}", role.name));
    }
    if let Some(bound_app) = binding.scope.app.as_deref() {
        match target.app {
            None => {
                return Err(format!(
                    "{permission} is global; binding limited to app {bound_app}"
                ));
            }
            Some(app) if app != bound_app => {
                return Err(format!("app {app} not in scope"));
            }
            Some(_) => {}
        }
    }
    if !binding.scope.envs.is_empty() {
        match target.env {
            Some(env) => {
                if !binding.scope.envs.iter().any(|e| e == env) {
                    return Err(format!("{env} not in scope"));
                }
            }
            None => {
                if !permission.is_read_only() {
                    let what = if target.app.is_some() {
                        "app-wide"
                    } else {
                        "global"
                    };
                    return Err(format!(
                        "{permission} {what} needs all environments; binding limited to {}",
                        binding.scope.envs.join(", ")
                    ));
                }
            }
        }
    }
    Ok(())
}

fn effective_target(permission: Permission, target: Target<'_>) -> Target<'_> {
    if permission.is_global() {
        Target::global()
    } else {
        target
    }
}

/// Decides whether `bindings` (resolved against `roles`) give `permission` on `target`.
/// See the module documentation for the rules. The first granting binding (slice order)
/// is reported; a denial lists every binding and why it does not apply.
pub fn decide(
    roles: &[Role],
    bindings: &[Binding],
    permission: Permission,
    target: Target<'_>,
) -> Decision {
    let mut why_not = Vec::with_capacity(bindings.len());
    for binding in bindings {
        match binding_grants(roles, binding, permission, target) {
            Ok(()) => {
                return Decision {
                    allowed: true,
                    reason: format!(
                        "allowed: binding #{} gives role {} on {}",
                        binding.id,
                        binding.role,
                        binding.scope.describe()
                    ),
                    granted_by: Some(binding.id),
                };
            }
            Err(why) => why_not.push(format!(
                "#{} {} on {} ({why})",
                binding.id,
                binding.role,
                binding.scope.short()
            )),
        }
    }
    let on = effective_target(permission, target);
    let on = if on.is_global() {
        "globally".to_string()
    } else {
        format!("on {on}")
    };
    let listed = if why_not.is_empty() {
        "no bindings".to_string()
    } else {
        format!("bindings: {}", why_not.join("; "))
    };
    Decision {
        allowed: false,
        reason: format!("denied: no binding gives {permission} {on}; {listed}"),
        granted_by: None,
    }
}

/// Every permission the bindings give on `target` (for `ferry auth can-i --list`-style
/// answers and "whoami").
pub fn permissions_on(
    roles: &[Role],
    bindings: &[Binding],
    target: Target<'_>,
) -> BTreeSet<Permission> {
    Permission::ALL
        .into_iter()
        .filter(|p| {
            bindings
                .iter()
                .any(|b| binding_grants(roles, b, *p, target).is_ok())
        })
        .collect()
}

/// Separation of duties for an approval.
///
/// - `requester` and `approver` are principal identities (e.g. `user:alice`); they are
///   compared after trimming, ignoring ASCII case. The requester of a deployment can
///   never approve it. (A deployment requested by a token should be attributed to the
///   human behind it by the caller, if known, before calling this.)
/// - `approver_roles`: the names of the roles the approver holds *in scope of the
///   deployment's app/environment* (the caller has already checked the `approve`
///   permission with [`decide`]).
/// - `require_other_role_than`: `None` = only the "not the requester" rule. `Some(roles)`
///   = the environment also requires "an approver with another role": `roles` are the
///   requester's role names (in the same scope), and the approver must hold at least one
///   role that is not among them.
///
/// `Err` carries a human sentence saying which rule failed.
pub fn may_approve(
    requester: &str,
    approver: &str,
    approver_roles: &[&str],
    require_other_role_than: Option<&[&str]>,
) -> Result<(), String> {
    let (req, app) = (requester.trim(), approver.trim());
    if app.is_empty() {
        return Err("separation of duties: the approver is unknown".to_string());
    }
    if req.eq_ignore_ascii_case(app) {
        return Err(format!(
            "separation of duties: {app} requested this deployment and cannot approve it"
        ));
    }
    if let Some(requester_roles) = require_other_role_than {
        let other = approver_roles.iter().any(|r| !requester_roles.contains(r));
        if !other {
            return Err(format!(
                "separation of duties: this environment needs an approver with a role the \
                 requester lacks; {app} has [{}], requester {req} has [{}]",
                approver_roles.join(", "),
                requester_roles.join(", ")
            ));
        }
    }
    Ok(())
}

/// A name in a binding's scope that names nothing (yet): a binding for an app that was
/// never applied, or for an environment the app does not have, would silently grant
/// nothing, so `ferry grant` refuses it unless asked to bind ahead (`--allow-missing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownName {
    /// No app of this name.
    App { app: String, near: Option<String> },
    /// `app`'s manifest has no such environment (`app: None`: no app has it).
    Env {
        app: Option<String>,
        env: String,
        known: Vec<String>,
        near: Option<String>,
    },
}

impl fmt::Display for UnknownName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownName::App { app, near } => {
                write!(f, "no app named {app:?}")?;
                if let Some(near) = near {
                    write!(f, " (did you mean {near}?)")?;
                }
                Ok(())
            }
            UnknownName::Env {
                app,
                env,
                known,
                near,
            } => {
                match app {
                    Some(app) => write!(f, "app {app} has no environment {env:?}")?,
                    None => write!(f, "no app has an environment {env:?}")?,
                }
                match near {
                    Some(near) => write!(f, " (did you mean {near}?)"),
                    None if app.is_some() && !known.is_empty() => {
                        write!(f, " (its environments: {})", known.join(", "))
                    }
                    None => Ok(()),
                }
            }
        }
    }
}

/// The names in `scope` that do not exist, given the existing apps with their
/// environments. An unknown app's environments are not judged (they cannot be known);
/// with all apps (`scope.app == None`), an environment must exist in at least one app.
pub fn unknown_in_scope(
    scope: &Scope,
    apps: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<UnknownName> {
    let known: Vec<&str> = match &scope.app {
        Some(app) => match apps.get(app) {
            Some(envs) => envs.iter().map(String::as_str).collect(),
            None => {
                let names: Vec<&str> = apps.keys().map(String::as_str).collect();
                return vec![UnknownName::App {
                    app: app.clone(),
                    near: crate::manifest::closest(app, &names).map(str::to_string),
                }];
            }
        },
        None => {
            let all: BTreeSet<&str> = apps.values().flatten().map(String::as_str).collect();
            all.into_iter().collect()
        }
    };
    scope
        .envs
        .iter()
        .filter(|env| !known.contains(&env.as_str()))
        .map(|env| UnknownName::Env {
            app: scope.app.clone(),
            env: env.clone(),
            known: known.iter().map(|k| k.to_string()).collect(),
            near: crate::manifest::closest(env, &known).map(str::to_string),
        })
        .collect()
}
