//! Identity bodies: login, whoami, users, passwords, roles, bindings, tokens, can-i.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rbac::{Binding, Decision, Permission};

/// Shortest password the policy accepts (in characters).
pub const MIN_PASSWORD_CHARS: usize = 12;

/// A password in a request: a JSON string that never prints itself (`Password(***)`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    pub fn new(text: impl Into<String>) -> Self {
        Password(text.into())
    }

    /// The password itself: only to hash or verify it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Err(why)` if the password policy refuses it (at least [`MIN_PASSWORD_CHARS`]).
    pub fn check_policy(&self) -> Result<(), String> {
        let chars = self.0.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!(
                "the password is too short ({chars} characters); use at least \
                 {MIN_PASSWORD_CHARS}"
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    /// A person, through a session from `POST /v1/login`.
    User,
    /// An API token (possibly made by a user, then also limited by that user's rights).
    Token,
    /// The admin token from `DATA_DIR/admin.token`.
    Admin,
}

impl fmt::Display for CallerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallerKind::User => "user",
            CallerKind::Token => "token",
            CallerKind::Admin => "admin",
        })
    }
}

/// `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: Password,
}

/// `POST /v1/login/link`: the token of a one-time console login link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UseLoginLinkRequest {
    pub token: String,
}

/// A new session (`POST /v1/login`, `POST /v1/login/link`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The session token: send it as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
    pub expires_at_ms: i64,
    pub user: UserView,
}

/// `POST /v1/login-links`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginLinkRequest {
    /// The user the link logs in.
    pub user: String,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WhoAmI {
    /// `user:alice`, `token:ci`, `token:admin` (what `requested_by` and the audit log say).
    pub name: String,
    pub kind: CallerKind,
    /// The role names held, comma-separated.
    pub role: String,
    /// The person behind the call, when there is one.
    pub user: Option<String>,
    pub token_id: i64,
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub bindings: Vec<Binding>,
}

/// A user as the API shows one (never a password hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub name: String,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `POST /v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateUserRequest {
    pub username: String,
    pub password: Password,
}

/// `PUT /v1/users/{name}/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordRequest {
    pub password: Password,
    /// Required when changing one's own password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_password: Option<Password>,
}

/// `POST /v1/roles`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateRoleRequest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub permissions: Vec<String>,
}

/// `DELETE /v1/roles/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoleDeleted {
    pub deleted: String,
}

/// A role binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingView {
    pub id: i64,
    /// The user the role is given to.
    pub subject: String,
    pub role: String,
    /// `None` = all apps.
    pub app: Option<String>,
    /// Empty = all environments.
    #[serde(default)]
    pub envs: Vec<String>,
    pub created_by: String,
    pub created_at_ms: i64,
}

/// `POST /v1/bindings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateBindingRequest {
    pub user: String,
    pub role: String,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    /// Bind ahead: accept an app or environments that do not exist (yet). Without it a
    /// name that exists nowhere is refused: the binding would grant nothing.
    #[serde(default)]
    pub allow_missing: bool,
}

/// Whether a token still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenState {
    Active,
    Expired,
    Revoked,
}

impl TokenState {
    /// A token's state at `now`.
    pub fn at(revoked_at_ms: Option<i64>, expires_at_ms: Option<i64>, now: i64) -> TokenState {
        if revoked_at_ms.is_some() {
            TokenState::Revoked
        } else if expires_at_ms.is_some_and(|at| at <= now) {
            TokenState::Expired
        } else {
            TokenState::Active
        }
    }
}

impl fmt::Display for TokenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        })
    }
}

/// A token as listed: never its secret nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    /// `admin`, `api` or `session`.
    pub kind: String,
    /// The user the token acts for, if any.
    pub owner: Option<String>,
    /// Empty for sessions (they have the user's roles).
    pub role: String,
    pub app: Option<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
    pub state: TokenState,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    pub name: String,
    pub role: String,
    #[serde(default)]
    pub app: Option<String>,
    #[serde(default)]
    pub envs: Vec<String>,
    /// `90d`, `12h`, ...; absent = never expires.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// A new token: its secret, shown this once, beside what is listed of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The secret: stored only as its SHA-256.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

/// `GET /v1/auth/can-i`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanIResponse {
    /// Who the answer is about: `user:alice`, `token:ci`.
    pub subject: String,
    pub permission: Permission,
    pub app: Option<String>,
    pub env: Option<String>,
    #[serde(flatten)]
    pub decision: Decision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_prints_itself_and_keeps_the_policy() {
        assert_eq!(format!("{:?}", Password::new("secret")), "Password(***)");
        assert!(Password::new("short").check_policy().is_err());
        assert!(Password::new("twelve chars").check_policy().is_ok());
    }

    #[test]
    fn token_states() {
        assert_eq!(TokenState::at(Some(1), None, 5), TokenState::Revoked);
        assert_eq!(TokenState::at(None, Some(5), 5), TokenState::Expired);
        assert_eq!(TokenState::at(None, Some(6), 5), TokenState::Active);
        assert_eq!(TokenState::at(None, None, 5).to_string(), "active");
    }
}
