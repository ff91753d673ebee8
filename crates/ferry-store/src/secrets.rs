//! Encrypted secrets. The store only ever sees ciphertexts and fingerprints: encryption,
//! keys and plaintexts belong to the server.

use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

/// A stored secret with its ciphertext (for decryption by the server; never shown).
#[derive(Clone, PartialEq)]
pub struct SecretRecord {
    pub app: String,
    pub env: String,
    pub name: String,
    pub version: i64,
    /// `v1:KEY_ID:NONCE_B64:CT_B64`.
    pub ciphertext: String,
    pub fingerprint: String,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("app", &self.app)
            .field("env", &self.env)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SecretRecord {
    pub fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            version: self.version,
            fingerprint: self.fingerprint.clone(),
            updated_by: self.updated_by.clone(),
            updated_at_ms: self.updated_at_ms,
        }
    }
}

/// What may be shown of a secret: never its value or ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub version: i64,
    pub fingerprint: String,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

macro_rules! secret_cols {
    () => {
        "app, env, name, version, ciphertext, fingerprint, updated_by, updated_at_ms"
    };
}

impl Store {
    /// Sets a secret: its version becomes the previous one + 1 (1 when new). `seal` gets
    /// that version and returns the ciphertext (the version is part of what it binds), in
    /// the same transaction, so two concurrent sets never share a version.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
        fingerprint: &str,
        updated_by: &str,
        now_ms: i64,
        seal: impl FnOnce(i64) -> std::result::Result<String, String> + Send,
    ) -> Result<SecretInfo> {
        let op = || format!("setting secret {name} of {app}/{env}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: takes the write lock (SQLite) / the row lock (PostgreSQL)
        sqlx::query(
            "UPDATE secrets SET version = version WHERE app = $1 AND env = $2 AND name = $3",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        let previous: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM secrets WHERE app = $1 AND env = $2 AND name = $3",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .ctx(op)?;
        let version = previous.unwrap_or(0) + 1;
        let ciphertext =
            seal(version).map_err(|e| StoreError::Corrupt(format!("{}: {e}", op())))?;
        sqlx::query(
            "INSERT INTO secrets (app, env, name, version, ciphertext, fingerprint, updated_by, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (app, env, name) DO UPDATE SET version = excluded.version, \
             ciphertext = excluded.ciphertext, fingerprint = excluded.fingerprint, \
             updated_by = excluded.updated_by, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(version)
        .bind(&ciphertext)
        .bind(fingerprint)
        .bind(updated_by)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        Ok(SecretInfo {
            name: name.to_string(),
            version,
            fingerprint: fingerprint.to_string(),
            updated_by: updated_by.to_string(),
            updated_at_ms: now_ms,
        })
    }

    pub async fn get_secret(
        &self,
        app: &str,
        env: &str,
        name: &str,
    ) -> Result<Option<SecretRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            secret_cols!(),
            " FROM secrets WHERE app = $1 AND env = $2 AND name = $3"
        ))
        .bind(app)
        .bind(env)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading secret {name} of {app}/{env}"))?;
        row.as_ref().map(secret_from_row).transpose()
    }

    /// The secrets of one environment, by name, with their ciphertexts (for injection).
    pub async fn secrets_of(&self, app: &str, env: &str) -> Result<Vec<SecretRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            secret_cols!(),
            " FROM secrets WHERE app = $1 AND env = $2 ORDER BY name"
        ))
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the secrets of {app}/{env}"))?;
        rows.iter().map(secret_from_row).collect()
    }

    /// Names, versions and fingerprints of one environment's secrets (no ciphertexts).
    pub async fn list_secrets(&self, app: &str, env: &str) -> Result<Vec<SecretInfo>> {
        Ok(self
            .secrets_of(app, env)
            .await?
            .iter()
            .map(SecretRecord::info)
            .collect())
    }

    /// Every secret of every app (for key checks).
    pub async fn all_secrets(&self) -> Result<Vec<SecretRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            secret_cols!(),
            " FROM secrets ORDER BY app, env, name"
        ))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading every secret".to_string())?;
        rows.iter().map(secret_from_row).collect()
    }

    /// Replaces the fingerprint of one version of a secret (a recomputation: the value is
    /// unchanged). Whether that version still exists.
    pub async fn set_secret_fingerprint(
        &self,
        app: &str,
        env: &str,
        name: &str,
        version: i64,
        fingerprint: &str,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE secrets SET fingerprint = $1 \
             WHERE app = $2 AND env = $3 AND name = $4 AND version = $5",
        )
        .bind(fingerprint)
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(version)
        .execute(&self.pool)
        .await
        .ctx(|| format!("recording the fingerprint of secret {name} of {app}/{env}"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a secret; whether it existed.
    pub async fn delete_secret(&self, app: &str, env: &str, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM secrets WHERE app = $1 AND env = $2 AND name = $3")
            .bind(app)
            .bind(env)
            .bind(name)
            .execute(&self.pool)
            .await
            .ctx(|| format!("deleting secret {name} of {app}/{env}"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Replaces every secret's ciphertext with `reseal(record)` in one transaction: all or
    /// nothing (key rotation). Returns how many were re-encrypted.
    pub async fn reencrypt_secrets(
        &self,
        mut reseal: impl FnMut(&SecretRecord) -> std::result::Result<String, String> + Send,
    ) -> Result<usize> {
        let op = || "re-encrypting every secret".to_string();
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: takes the write lock up front
        sqlx::query("UPDATE secrets SET version = version")
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        let rows = sqlx::query(concat!("SELECT ", secret_cols!(), " FROM secrets"))
            .fetch_all(&mut *tx)
            .await
            .ctx(op)?;
        let records = rows
            .iter()
            .map(secret_from_row)
            .collect::<Result<Vec<_>>>()?;
        for record in &records {
            let ciphertext = reseal(record).map_err(|e| {
                StoreError::Corrupt(format!(
                    "secret {} of {}/{}: {e}",
                    record.name, record.app, record.env
                ))
            })?;
            sqlx::query(
                "UPDATE secrets SET ciphertext = $1 \
                 WHERE app = $2 AND env = $3 AND name = $4 AND version = $5",
            )
            .bind(&ciphertext)
            .bind(&record.app)
            .bind(&record.env)
            .bind(&record.name)
            .bind(record.version)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        }
        tx.commit().await.ctx(op)?;
        Ok(records.len())
    }
}

fn secret_from_row(row: &AnyRow) -> Result<SecretRecord> {
    let what = || "secrets row".to_string();
    Ok(SecretRecord {
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        name: get(row, "name", &what)?,
        version: get(row, "version", &what)?,
        ciphertext: get(row, "ciphertext", &what)?,
        fingerprint: get(row, "fingerprint", &what)?,
        updated_by: get(row, "updated_by", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
    })
}
