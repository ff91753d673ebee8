//! Authentication: who is calling.
//!
//! - Bearer tokens (admin, API, session) are random 256-bit values stored only as their
//!   SHA-256: high-entropy tokens make a fast hash the right tool, and the lookup is by
//!   hash, so no secret is compared.
//! - Passwords are hashed with argon2id (a KDF, in `spawn_blocking`). An unknown user still
//!   costs one verification against a dummy hash, so timing does not tell users apart.
//!
//! Neither a password nor a token ever reaches a log line, an answer (except a token once,
//! when it is made) or the audit log: [`Password`] redacts itself.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ferry_core::rbac::{Binding, Scope};
use ferry_store::{NewToken, Store, TokenRecord};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::error::ServerError;

/// Sessions made by `POST /v1/login` last this long.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// `last_used_at_ms` of a token is written at most this often.
const TOUCH_EVERY_MS: i64 = 60_000;
/// Shortest password accepted.
/// Ended sessions are kept this long (the owner can still see them in `tokens list`), then
/// deleted by [`purge_ended_sessions`].
const SESSION_KEEP_MS: i64 = 7 * 24 * 60 * 60 * 1000;
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(60 * 60);

/// Deletes sessions that ended a week ago, at start and then hourly, until shutdown.
pub async fn purge_ended_sessions(store: Store, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(PURGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.purge_sessions(now_ms() - SESSION_KEEP_MS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged ended sessions"),
            Err(e) => tracing::warn!(error = %e, "purging ended sessions failed"),
        }
    }
}

/// Reads `DIR/admin.token`, creating it (mode 0600) with a fresh random token on first
/// start, and makes sure the store knows its hash (as the only valid `admin` token: a
/// replaced file revokes the old one).
pub async fn ensure_admin_token(store: &Store, data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("admin.token");
    let token = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            write_private(&path, &format!("{token}\n"))?;
            token
        }
        Err(e) => return Err(ServerError::io(format!("reading {}", path.display()), e)),
    };
    if token.is_empty() {
        return Err(ServerError::io(
            format!("reading {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the admin token file is empty; delete it to get a new one",
            ),
        ));
    }
    let hash = token_hash(&token);
    match store.find_token(&hash).await? {
        Some(found) if found.revoked_at_ms.is_none() => {}
        Some(_) => {
            return Err(ServerError::io(
                format!("reading {}", path.display()),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "this admin token was revoked; delete the file to get a new one",
                ),
            ));
        }
        None => {
            store
                .create_token(NewToken {
                    name: "admin".to_string(),
                    token_hash: hash.clone(),
                    kind: "admin".to_string(),
                    owner: None,
                    role: "admin".to_string(),
                    app: None,
                    envs: Vec::new(),
                    expires_at_ms: None,
                    now_ms: now_ms(),
                })
                .await?;
        }
    }
    let revoked = store
        .revoke_tokens_of_kind_except("admin", &hash, now_ms())
        .await?;
    if revoked > 0 {
        tracing::info!(revoked, "older admin tokens revoked");
    }
    Ok(token)
}

/// Creates `path` with mode 0600 and writes `text` (fails if it exists).
pub fn write_private(path: &Path, text: &str) -> Result<(), ServerError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| ServerError::io(format!("creating {}", path.display()), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| ServerError::io(format!("writing {}", path.display()), e))
}

/// A random 256-bit token, hex encoded, prefixed so it is recognisable in secret scanners.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("ferry_{}", hex(&bytes))
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------------------

/// A password from a request (the wire type): never prints itself.
pub use ferry_core::api::identity::Password;

fn hash_sync(password: &str) -> Result<String, String> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A valid argon2id hash of a random password: what an unknown user is checked against.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_sync(&new_token()).unwrap_or_default())
}

/// argon2id PHC string of `password` (default parameters: 19 MiB, 2 passes), computed off
/// the async threads.
pub async fn hash_password(password: Password) -> Result<String, ServerError> {
    tokio::task::spawn_blocking(move || hash_sync(password.expose()))
        .await
        .map_err(|e| ServerError::io("hashing a password".into(), std::io::Error::other(e)))?
        .map_err(|e| ServerError::io("hashing a password".into(), std::io::Error::other(e)))
}

/// Checks `password` against a stored PHC string, or against a dummy hash when `phc` is
/// `None` (unknown user: same work, always false).
pub async fn verify_password(password: Password, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| dummy_hash().to_string());
        let ok = PasswordHash::new(&phc)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// Computes the dummy hash now (at start), so the first unknown-user login is not faster.
pub async fn warm_up() {
    let _ = tokio::task::spawn_blocking(dummy_hash).await;
}

// ---------------------------------------------------------------------------------------------
// Callers
// ---------------------------------------------------------------------------------------------

pub use ferry_core::api::identity::CallerKind;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `user:alice`, `token:ci`, `token:admin`: what `requested_by` and the audit log say.
    pub name: String,
    pub kind: CallerKind,
    /// The person behind the call: the session's user, or the owner of a user-made token.
    pub user: Option<String>,
    /// The token this request came with.
    pub token_id: i64,
    pub token_expires_at_ms: Option<i64>,
    /// What the caller holds: a user's bindings; one binding for a token (its role and
    /// scope, id = the token's id); admin unscoped for the admin token.
    pub bindings: Vec<Binding>,
    /// For a token made by a user: that user's bindings, which must allow too (a token
    /// never outgrows its owner, even after the owner lost a role).
    pub owner_bindings: Option<Vec<Binding>>,
}

impl Caller {
    /// The person who acts (`user:alice`, also for a token alice made), else the token:
    /// what a deployment records as its requester, so separation of duties compares people.
    pub fn principal(&self) -> String {
        match &self.user {
            Some(user) => format!("user:{user}"),
            None => self.name.clone(),
        }
    }

    /// The role names held (for `whoami`'s `role`).
    pub fn role_names(&self) -> String {
        let mut names: Vec<&str> = self.bindings.iter().map(|b| b.role.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.join(",")
    }
}

/// A user's bindings in the form `ferry_core::rbac` decides on.
pub async fn user_bindings(store: &Store, user: &str) -> Result<Vec<Binding>, ServerError> {
    Ok(store
        .list_bindings(Some(user))
        .await?
        .into_iter()
        .map(|b| Binding {
            id: b.id,
            role: b.role,
            scope: Scope {
                app: b.app,
                envs: b.envs,
            },
        })
        .collect())
}

/// Formats epoch milliseconds as RFC 3339 (UTC, seconds).
pub fn rfc3339(ms: i64) -> String {
    let secs = u64::try_from(ms.max(0) / 1000).unwrap_or(0);
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// Looks the bearer token up by its hash and builds the caller. `Ok(Err(message))` = not
/// authenticated, with a message saying why (missing, unknown, revoked, expired, disabled).
pub async fn authenticate(
    store: &Store,
    header: Option<&str>,
    now: i64,
) -> Result<Result<Caller, String>, ServerError> {
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    else {
        return Ok(Err(
            "missing API token: send `Authorization: Bearer <token>` (log in with `ferry login`, \
             or use the admin token in DATA_DIR/admin.token)"
                .to_string(),
        ));
    };
    let Some(record) = store.find_token(&token_hash(token)).await? else {
        return Ok(Err("invalid token".to_string()));
    };
    if let Some(at) = record.revoked_at_ms {
        return Ok(Err(format!(
            "token {} #{} was revoked at {}",
            record.name,
            record.id,
            rfc3339(at)
        )));
    }
    if let Some(at) = record.expires_at_ms
        && at <= now
    {
        return Ok(Err(format!(
            "token {} #{} expired at {}{}",
            record.name,
            record.id,
            rfc3339(at),
            if record.kind == "session" {
                "; log in again"
            } else {
                ""
            }
        )));
    }
    let owner_bindings = match &record.owner {
        Some(owner) => match store.get_user(owner).await? {
            Some(user) if user.disabled => {
                return Ok(Err(format!("user {owner} is disabled")));
            }
            Some(_) => Some(user_bindings(store, owner).await?),
            None => return Ok(Err(format!("user {owner} no longer exists"))),
        },
        None => None,
    };
    if record
        .last_used_at_ms
        .is_none_or(|last| now.saturating_sub(last) >= TOUCH_EVERY_MS)
    {
        store.touch_token(record.id, now).await?;
    }
    Ok(Ok(caller_for(record, owner_bindings)))
}

fn caller_for(record: TokenRecord, owner_bindings: Option<Vec<Binding>>) -> Caller {
    let token_binding = || Binding {
        id: record.id,
        role: record.role.clone(),
        scope: Scope {
            app: record.app.clone(),
            envs: record.envs.clone(),
        },
    };
    match (record.kind.as_str(), owner_bindings) {
        ("session", Some(bindings)) => Caller {
            name: format!("user:{}", record.owner.as_deref().unwrap_or("?")),
            kind: CallerKind::User,
            user: record.owner.clone(),
            token_id: record.id,
            token_expires_at_ms: record.expires_at_ms,
            bindings,
            owner_bindings: None,
        },
        ("admin", _) => Caller {
            name: format!("token:{}", record.name),
            kind: CallerKind::Admin,
            user: None,
            token_id: record.id,
            token_expires_at_ms: record.expires_at_ms,
            bindings: vec![token_binding()],
            owner_bindings: None,
        },
        (_, owner_bindings) => Caller {
            name: format!("token:{}", record.name),
            kind: CallerKind::Token,
            user: record.owner.clone(),
            token_id: record.id,
            token_expires_at_ms: record.expires_at_ms,
            bindings: vec![token_binding()],
            owner_bindings,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_deterministically() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), "ferry_".len() + 64);
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_ne!(token_hash(&a), token_hash(&b));
    }

    #[tokio::test]
    async fn passwords_hash_with_argon2id_and_verify() {
        let phc = hash_password(Password::new("correct horse battery"))
            .await
            .expect("hash");
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify_password(Password::new("correct horse battery"), Some(phc.clone())).await);
        assert!(!verify_password(Password::new("wrong horse battery"), Some(phc)).await);
        assert!(!verify_password(Password::new("anything at all"), None).await);
        assert_eq!(format!("{:?}", Password::new("secret")), "Password(***)");
        assert!(Password::new("short").check_policy().is_err());
        assert!(Password::new("twelve chars").check_policy().is_ok());
    }

    #[test]
    fn rfc3339_formats_ms() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(86_400_000 + 1_500), "1970-01-02T00:00:01Z");
    }
}
