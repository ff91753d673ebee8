//! Users, custom roles, role bindings and API/session tokens.
//!
//! The store keeps names and JSON lists as given; what a role or permission *means* is the
//! server's business (`ferry_core::rbac`). Secrets are never stored: passwords as their
//! argon2id PHC string, tokens as the lowercase hex SHA-256 of the token.

use std::fmt;

use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

/// A user. `password_hash` (an argon2id PHC string) is never serialised nor debug-printed.
#[derive(Clone, PartialEq, Serialize)]
pub struct UserRecord {
    pub name: String,
    #[serde(skip)]
    pub password_hash: String,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("disabled", &self.disabled)
            .field("created_at_ms", &self.created_at_ms)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// A custom role. `permissions` are permission names (`deploy`, `view_logs`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoleRecord {
    pub name: String,
    pub description: String,
    pub permissions: Vec<String>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewBinding {
    /// The user the role is given to.
    pub subject: String,
    pub role: String,
    /// `None` = all apps.
    pub app: Option<String>,
    /// Empty = all environments.
    pub envs: Vec<String>,
    pub created_by: String,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BindingRecord {
    pub id: i64,
    pub subject: String,
    pub role: String,
    pub app: Option<String>,
    pub envs: Vec<String>,
    pub created_by: String,
    pub created_at_ms: i64,
}

/// A token to store. `kind` is `admin`, `api` or `session`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewToken {
    pub name: String,
    /// Lowercase hex SHA-256 of the token (the token itself is never stored).
    pub token_hash: String,
    pub kind: String,
    /// The user the token acts for (sessions, user-made API tokens); `None` for
    /// free-standing automation tokens and the admin token.
    pub owner: Option<String>,
    pub role: String,
    pub app: Option<String>,
    pub envs: Vec<String>,
    pub expires_at_ms: Option<i64>,
    pub now_ms: i64,
}

/// A stored token (without its hash).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub owner: Option<String>,
    pub role: String,
    pub app: Option<String>,
    pub envs: Vec<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

macro_rules! token_cols {
    () => {
        "id, name, kind, owner, role, app, envs, created_at_ms, expires_at_ms, revoked_at_ms, \
         last_used_at_ms"
    };
}

fn json_list(row: &AnyRow, col: &str, what: &dyn Fn() -> String) -> Result<Vec<String>> {
    let text: String = get(row, col, what)?;
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("{}: column {col}: {e}", what())))
}

fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
    let name: String = get(row, "name", &|| "users row".to_string())?;
    let what = || format!("user {name}");
    let disabled: i64 = get(row, "disabled", &what)?;
    Ok(UserRecord {
        password_hash: get(row, "password_hash", &what)?,
        disabled: disabled != 0,
        created_at_ms: get(row, "created_at_ms", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
        name,
    })
}

fn role_from_row(row: &AnyRow) -> Result<RoleRecord> {
    let name: String = get(row, "name", &|| "roles row".to_string())?;
    let what = || format!("role {name}");
    Ok(RoleRecord {
        description: get(row, "description", &what)?,
        permissions: json_list(row, "permissions", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        name,
    })
}

fn binding_from_row(row: &AnyRow) -> Result<BindingRecord> {
    let id: i64 = get(row, "id", &|| "role_bindings row".to_string())?;
    let what = || format!("binding {id}");
    Ok(BindingRecord {
        id,
        subject: get(row, "subject", &what)?,
        role: get(row, "role", &what)?,
        app: get(row, "app", &what)?,
        envs: json_list(row, "envs", &what)?,
        created_by: get(row, "created_by", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<TokenRecord> {
    let id: i64 = get(row, "id", &|| "api_tokens row".to_string())?;
    let what = || format!("token {id}");
    Ok(TokenRecord {
        id,
        name: get(row, "name", &what)?,
        kind: get(row, "kind", &what)?,
        owner: get(row, "owner", &what)?,
        role: get(row, "role", &what)?,
        app: get(row, "app", &what)?,
        envs: json_list(row, "envs", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        expires_at_ms: get(row, "expires_at_ms", &what)?,
        revoked_at_ms: get(row, "revoked_at_ms", &what)?,
        last_used_at_ms: get(row, "last_used_at_ms", &what)?,
    })
}

impl Store {
    // -- users --------------------------------------------------------------------------------

    /// Adds a user (enabled). `Conflict` if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<UserRecord> {
        let row = sqlx::query(
            "INSERT INTO users (name, password_hash, disabled, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, 0, $3, $3) \
             RETURNING name, password_hash, disabled, created_at_ms, updated_at_ms",
        )
        .bind(name)
        .bind(password_hash)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await
        .ctx(|| format!("adding user {name}"))?;
        user_from_row(&row)
    }

    pub async fn get_user(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT name, password_hash, disabled, created_at_ms, updated_at_ms FROM users \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading user {name}"))?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT name, password_hash, disabled, created_at_ms, updated_at_ms FROM users \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing users".into())?;
        rows.iter().map(user_from_row).collect()
    }

    /// Disables or enables a user; returns it. `NotFound` if unknown.
    pub async fn set_user_disabled(
        &self,
        name: &str,
        disabled: bool,
        now_ms: i64,
    ) -> Result<UserRecord> {
        let row = sqlx::query(
            "UPDATE users SET disabled = $1, updated_at_ms = $2 WHERE name = $3 \
             RETURNING name, password_hash, disabled, created_at_ms, updated_at_ms",
        )
        .bind(i64::from(disabled))
        .bind(now_ms)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("changing whether user {name} is disabled"))?;
        row.as_ref()
            .map(user_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("user {name}")))
    }

    /// Replaces a user's password hash. `NotFound` if unknown.
    pub async fn set_user_password(
        &self,
        name: &str,
        password_hash: &str,
        now_ms: i64,
    ) -> Result<()> {
        let done =
            sqlx::query("UPDATE users SET password_hash = $1, updated_at_ms = $2 WHERE name = $3")
                .bind(password_hash)
                .bind(now_ms)
                .bind(name)
                .execute(&self.pool)
                .await
                .ctx(|| format!("changing the password of user {name}"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
        }
        Ok(())
    }

    // -- custom roles -------------------------------------------------------------------------

    /// Defines a custom role. `Conflict` if the name is taken.
    pub async fn create_role(&self, role: &RoleRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO roles (name, description, permissions, created_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&role.name)
        .bind(&role.description)
        .bind(to_json(&role.permissions))
        .bind(role.created_at_ms)
        .execute(&self.pool)
        .await
        .ctx(|| format!("defining role {}", role.name))?;
        Ok(())
    }

    pub async fn get_role(&self, name: &str) -> Result<Option<RoleRecord>> {
        let row = sqlx::query(
            "SELECT name, description, permissions, created_at_ms FROM roles WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading role {name}"))?;
        row.as_ref().map(role_from_row).transpose()
    }

    /// Custom roles, by name.
    pub async fn list_roles(&self) -> Result<Vec<RoleRecord>> {
        let rows = sqlx::query(
            "SELECT name, description, permissions, created_at_ms FROM roles ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing roles".into())?;
        rows.iter().map(role_from_row).collect()
    }

    /// Deletes a custom role. `NotFound` if unknown; `Conflict` (nothing deleted) while a
    /// binding or an unrevoked token still uses it.
    pub async fn delete_role(&self, name: &str, now_ms: i64) -> Result<()> {
        let op = || format!("deleting role {name}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first (takes the write lock), and tells whether the role exists
        let done = sqlx::query("DELETE FROM roles WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("role {name}")));
        }
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM role_bindings WHERE role = $1) AS bindings, \
             (SELECT COUNT(*) FROM api_tokens WHERE role = $1 AND revoked_at_ms IS NULL \
              AND (expires_at_ms IS NULL OR expires_at_ms > $2)) AS tokens",
        )
        .bind(name)
        .bind(now_ms)
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        let what = || format!("uses of role {name}");
        let bindings: i64 = get(&row, "bindings", &what)?;
        let tokens: i64 = get(&row, "tokens", &what)?;
        if bindings > 0 || tokens > 0 {
            drop(tx);
            return Err(StoreError::Conflict(format!(
                "role {name} is still used by {bindings} binding(s) and {tokens} token(s); \
                 delete or revoke them first"
            )));
        }
        tx.commit().await.ctx(op)?;
        Ok(())
    }

    // -- role bindings ------------------------------------------------------------------------

    /// Gives a role to a user. `NotFound` if the user doesn't exist. (Whether the role
    /// exists is the caller's check: built-in roles are not stored.)
    pub async fn create_binding(&self, b: NewBinding) -> Result<BindingRecord> {
        let row = sqlx::query(
            "INSERT INTO role_bindings (subject, role, app, envs, created_by, created_at_ms) \
             SELECT name, $2, $3, $4, $5, $6 FROM users WHERE name = $1 \
             RETURNING id, subject, role, app, envs, created_by, created_at_ms",
        )
        .bind(&b.subject)
        .bind(&b.role)
        .bind(b.app.as_deref())
        .bind(to_json(&b.envs))
        .bind(&b.created_by)
        .bind(b.now_ms)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("binding role {} to {}", b.role, b.subject))?;
        row.as_ref()
            .map(binding_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("user {}", b.subject)))
    }

    pub async fn get_binding(&self, id: i64) -> Result<Option<BindingRecord>> {
        let row = sqlx::query(
            "SELECT id, subject, role, app, envs, created_by, created_at_ms FROM role_bindings \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading binding {id}"))?;
        row.as_ref().map(binding_from_row).transpose()
    }

    /// Bindings, of one user or of everyone, by id.
    pub async fn list_bindings(&self, subject: Option<&str>) -> Result<Vec<BindingRecord>> {
        let rows = sqlx::query(
            "SELECT id, subject, role, app, envs, created_by, created_at_ms FROM role_bindings \
             WHERE ($1 IS NULL OR subject = $1) ORDER BY id",
        )
        .bind(subject)
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing role bindings".into())?;
        rows.iter().map(binding_from_row).collect()
    }

    /// Removes a binding; returns what it was. `NotFound` if unknown.
    pub async fn delete_binding(&self, id: i64) -> Result<BindingRecord> {
        let row = sqlx::query(
            "DELETE FROM role_bindings WHERE id = $1 \
             RETURNING id, subject, role, app, envs, created_by, created_at_ms",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("deleting binding {id}"))?;
        row.as_ref()
            .map(binding_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("binding {id}")))
    }

    // -- tokens -------------------------------------------------------------------------------

    /// Stores a token by its hash. `Conflict` if the same hash is already stored.
    pub async fn create_token(&self, t: NewToken) -> Result<TokenRecord> {
        let row = sqlx::query(concat!(
            "INSERT INTO api_tokens (name, token_hash, kind, owner, role, app, envs, ",
            "created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ",
            "RETURNING ",
            token_cols!()
        ))
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(&t.kind)
        .bind(t.owner.as_deref())
        .bind(&t.role)
        .bind(t.app.as_deref())
        .bind(to_json(&t.envs))
        .bind(t.now_ms)
        .bind(t.expires_at_ms)
        .fetch_one(&self.pool)
        .await
        .ctx(|| format!("storing token {}", t.name))?;
        token_from_row(&row)
    }

    /// Stores an unscoped, never-expiring `api` token without owner; returns its id.
    /// `Conflict` if the same hash is already stored.
    pub async fn insert_token(
        &self,
        name: &str,
        token_hash: &str,
        role: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let t = self
            .create_token(NewToken {
                name: name.to_string(),
                token_hash: token_hash.to_string(),
                kind: "api".to_string(),
                owner: None,
                role: role.to_string(),
                app: None,
                envs: Vec::new(),
                expires_at_ms: None,
                now_ms,
            })
            .await?;
        Ok(t.id)
    }

    /// The token with this hash, whatever its state (revoked and expired included: the
    /// caller refuses them with a precise message).
    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| "looking up a token".into())?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn get_token(&self, id: i64) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading token {id}"))?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Tokens of one owner or of everyone, by id; `kind` filters (`api`, `session`, `admin`).
    pub async fn list_tokens(
        &self,
        owner: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            token_cols!(),
            " FROM api_tokens WHERE ($1 IS NULL OR owner = $1) ",
            "AND ($2 IS NULL OR kind = $2) ORDER BY id"
        ))
        .bind(owner)
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing tokens".into())?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token (idempotent: the first revocation time is kept); returns it.
    /// `NotFound` if unknown.
    pub async fn revoke_token(&self, id: i64, now_ms: i64) -> Result<TokenRecord> {
        let row = sqlx::query(concat!(
            "UPDATE api_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2 ",
            "RETURNING ",
            token_cols!()
        ))
        .bind(now_ms)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("revoking token {id}"))?;
        row.as_ref()
            .map(token_from_row)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound(format!("token {id}")))
    }

    /// Revokes every unrevoked token of `kind` except the one with `keep_hash` (e.g. the
    /// old admin tokens once `admin.token` was replaced); returns how many.
    pub async fn revoke_tokens_of_kind_except(
        &self,
        kind: &str,
        keep_hash: &str,
        now_ms: i64,
    ) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at_ms = $1 \
             WHERE kind = $2 AND token_hash <> $3 AND revoked_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(kind)
        .bind(keep_hash)
        .execute(&self.pool)
        .await
        .ctx(|| format!("revoking old {kind} tokens"))?;
        Ok(done.rows_affected())
    }

    /// Deletes login sessions that expired or were revoked before `before_ms` (a session is
    /// worthless once it ended; API tokens stay listed until revoked and purged by hand).
    /// Returns how many went.
    pub async fn purge_sessions(&self, before_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM api_tokens WHERE kind = 'session' \
             AND ((expires_at_ms IS NOT NULL AND expires_at_ms < $1) \
                  OR (revoked_at_ms IS NOT NULL AND revoked_at_ms < $1))",
        )
        .bind(before_ms)
        .execute(&self.pool)
        .await
        .ctx(|| "purging ended sessions".to_string())?;
        Ok(done.rows_affected())
    }

    /// Records a use of a token.
    pub async fn touch_token(&self, id: i64, now_ms: i64) -> Result<()> {
        let done = sqlx::query("UPDATE api_tokens SET last_used_at_ms = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx(|| format!("touching token {id}"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("token {id}")));
        }
        Ok(())
    }

    pub async fn count_tokens(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM api_tokens")
            .fetch_one(&self.pool)
            .await
            .ctx(|| "counting tokens".into())?;
        get(&row, "n", &|| "token count".to_string())
    }
}

// -- one-time login links ------------------------------------------------------------------

/// Why a one-time login link was not exchanged for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkRefusal {
    /// No link has this token.
    Unknown,
    /// It was exchanged already (at this time).
    Used(i64),
    /// It expired (at this time) unused.
    Expired(i64),
}

impl Store {
    /// Stores a one-time login link for `username` (its token as SHA-256 only).
    pub async fn create_login_link(
        &self,
        token_hash: &str,
        username: &str,
        created_by: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_links (token_hash, username, created_by, created_at_ms, \
             expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(username)
        .bind(created_by)
        .bind(now_ms)
        .bind(expires_at_ms)
        .execute(&self.pool)
        .await
        .ctx(|| format!("storing a login link for {username}"))?;
        Ok(())
    }

    /// Uses a one-time login link: marks it used — once, in one statement, so two
    /// concurrent uses cannot both win — and returns its user; or says why not.
    pub async fn use_login_link(
        &self,
        token_hash: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<String, LinkRefusal>> {
        let used = sqlx::query(
            "UPDATE login_links SET used_at_ms = $1 \
             WHERE token_hash = $2 AND used_at_ms IS NULL AND expires_at_ms > $1 \
             RETURNING username",
        )
        .bind(now_ms)
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| "using a login link".into())?;
        if let Some(row) = used {
            return Ok(Ok(get(&row, "username", &|| "login link".to_string())?));
        }
        let row =
            sqlx::query("SELECT used_at_ms, expires_at_ms FROM login_links WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await
                .ctx(|| "reading a login link".into())?;
        let Some(row) = row else {
            return Ok(Err(LinkRefusal::Unknown));
        };
        let what = || "login link".to_string();
        Ok(Err(match get::<Option<i64>>(&row, "used_at_ms", &what)? {
            Some(at) => LinkRefusal::Used(at),
            None => LinkRefusal::Expired(get(&row, "expires_at_ms", &what)?),
        }))
    }
}
