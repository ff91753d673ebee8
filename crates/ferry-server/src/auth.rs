//! API authentication: bearer tokens, stored only as SHA-256 hashes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ferry_store::{Store, TokenRecord};
use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::error::ServerError;

/// Reads `DIR/admin.token`, creating it (mode 0600) with a fresh random token on first
/// start, and makes sure the store knows its hash.
pub async fn ensure_admin_token(store: &Store, data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join("admin.token");
    let token = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = new_token();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| ServerError::io(format!("creating {}", path.display()), e))?;
            writeln!(file, "{token}")
                .map_err(|e| ServerError::io(format!("writing {}", path.display()), e))?;
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
    if store.find_token(&hash).await?.is_none() {
        store
            .insert_token("admin", &hash, "admin", now_ms())
            .await?;
    }
    Ok(token)
}

/// A random 256-bit token, hex encoded, prefixed so it is recognisable in secret scanners.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!("ferry_{}", hex(&bytes))
}

pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The caller, once its token checked out.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: String,
}

/// Looks the bearer token up by its hash. High-entropy tokens make a fast hash the right
/// tool (a KDF is for passwords); the lookup is by hash, so no secret is compared.
pub async fn authenticate(
    store: &Store,
    header: Option<&str>,
) -> Result<Option<Caller>, ServerError> {
    let Some(token) = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return Ok(None);
    };
    if token.is_empty() {
        return Ok(None);
    }
    let record: Option<TokenRecord> = store.find_token(&token_hash(token)).await?;
    Ok(record.map(|r| Caller {
        name: format!("token:{}", r.name),
        role: r.role,
    }))
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
}
