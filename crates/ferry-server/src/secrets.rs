//! Encrypted secrets: the master key, the cipher, and the API.
//!
//! Values are sealed with XChaCha20-Poly1305 under a 256-bit master key and stored as
//! `v1:KEY_ID:NONCE_B64:CT_B64` (KEY_ID: first 8 hex of SHA-256 of the key). The AAD is
//! `app/env/NAME/version`, so a ciphertext copied onto another secret (or another version)
//! fails to decrypt. Plaintexts exist only while a value is sealed and while a replica's
//! environment is built; no answer, log line, event or audit record carries one.
//!
//! Master key: `DATA_DIR/secrets.key` (64 hex characters, mode 0600, created on first start),
//! or the file named by `FERRY_MASTER_KEY_FILE` (which must exist).
//!
//! Key rotation, crash-safe: (1) the new key is written to `KEYFILE.new` (0600, fsynced);
//! (2) every secret is re-encrypted under it in one store transaction; (3) `KEYFILE.new` is
//! renamed over `KEYFILE` (atomic) and the directory fsynced. At start, a leftover
//! `KEYFILE.new` is resolved from the store: if any secret is sealed under its key id the
//! transaction committed and the rename is finished; otherwise it is deleted. Either way
//! every secret stays readable.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_core::api::secrets::{
    KeyRotated, SecretDeleted, SecretSet, SecretView, SetSecretRequest,
};
use ferry_core::audit::hmac_sha256;
use ferry_core::config::ConfigSummary;
use ferry_core::manifest::Manifest;
use ferry_store::{SecretInfo, Store};
use rand::RngExt;
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::access::{Access, AuditSlot};
use crate::api::{ApiFailure, ApiResult, AppState, internal};
use crate::auth;
use crate::clock::now_ms;
use crate::error::ServerError;

/// The environment variable naming an operator-provided master key file.
pub const KEY_FILE_ENV: &str = "FERRY_MASTER_KEY_FILE";
/// Largest secret value accepted.
const MAX_VALUE: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// The cipher
// ---------------------------------------------------------------------------------------------

/// A 256-bit master key and its id. Never printed.
#[derive(Clone)]
pub struct MasterKey {
    bytes: [u8; 32],
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.id)
    }
}

impl MasterKey {
    pub fn new(bytes: [u8; 32]) -> MasterKey {
        let id = auth::hex(&Sha256::digest(bytes))[..8].to_string();
        MasterKey { bytes, id }
    }

    pub fn generate() -> MasterKey {
        MasterKey::new(rand::rng().random())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// Why a stored value could not be opened (never contains the value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("not a v1:KEY_ID:NONCE:CT ciphertext: {0}")]
    Format(&'static str),
    #[error("sealed under master key {0}, which this server does not have")]
    UnknownKey(String),
    #[error("the ciphertext does not authenticate (wrong key, or moved to another secret)")]
    Auth,
    #[error("encryption failed")]
    Seal,
}

/// Why an environment's secrets could not be given to a workload.
#[derive(Debug, thiserror::Error)]
pub enum EnvSecretsError {
    /// The store failed (retry later).
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    /// A secret does not decrypt or is not UTF-8 (needs a person).
    #[error("{0}")]
    Unreadable(String),
}

/// What the ciphertext of `app/env/name` at `version` is bound to.
pub fn aad(app: &str, env: &str, name: &str, version: i64) -> String {
    format!("{app}/{env}/{name}/{version}")
}

/// Seals `plaintext` under `key`, bound to `aad`, with a random 192-bit nonce.
pub fn seal(key: &MasterKey, aad: &str, plaintext: &[u8]) -> Result<String, CryptoError> {
    let nonce: [u8; 24] = rand::rng().random();
    let ct = key
        .cipher()
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Seal)?;
    Ok(format!(
        "v1:{}:{}:{}",
        key.id,
        B64.encode(nonce),
        B64.encode(ct)
    ))
}

/// The key id a stored value was sealed under.
pub fn key_id_of(stored: &str) -> Result<&str, CryptoError> {
    parse(stored).map(|(id, _, _)| id)
}

fn parse(stored: &str) -> Result<(&str, [u8; 24], Vec<u8>), CryptoError> {
    let mut parts = stored.split(':');
    let (Some(v), Some(id), Some(nonce), Some(ct), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(CryptoError::Format("expected 4 fields separated by ':'"));
    };
    if v != "v1" {
        return Err(CryptoError::Format("unknown version"));
    }
    if id.len() != 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CryptoError::Format("key id must be 8 hex characters"));
    }
    let nonce = B64
        .decode(nonce)
        .ok()
        .and_then(|n| <[u8; 24]>::try_from(n.as_slice()).ok())
        .ok_or(CryptoError::Format("nonce must be 24 bytes of base64"))?;
    let ct = B64
        .decode(ct)
        .map_err(|_| CryptoError::Format("ciphertext is not base64"))?;
    if ct.len() < 16 {
        return Err(CryptoError::Format("ciphertext shorter than its tag"));
    }
    Ok((id, nonce, ct))
}

/// Opens a stored value with whichever of `keys` it names.
pub fn open(keys: &[&MasterKey], aad: &str, stored: &str) -> Result<Vec<u8>, CryptoError> {
    let (id, nonce, ct) = parse(stored)?;
    let key = keys
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| CryptoError::UnknownKey(id.to_string()))?;
    key.cipher()
        .decrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &ct,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| CryptoError::Auth)
}

/// A value's public fingerprint: HMAC-SHA256, under a key derived from the master key, of
/// the secret's identity (app, env, name, each length-prefixed) and the value; the first 8
/// bytes in hex (16 characters). Equal values of different secrets look different, and
/// without the master key a fingerprint says nothing about its value (no offline guessing).
/// A 12-character fingerprint is the unkeyed SHA-256 of older versions: recomputed at start.
pub fn fingerprint(key: &MasterKey, app: &str, env: &str, name: &str, value: &[u8]) -> String {
    let mut msg = Vec::with_capacity(value.len() + 64);
    for part in [app.as_bytes(), env.as_bytes(), name.as_bytes()] {
        msg.extend_from_slice(&(part.len() as u64).to_be_bytes());
        msg.extend_from_slice(part);
    }
    msg.extend_from_slice(value);
    auth::hex(&hmac_sha256(&fingerprint_key(key), &msg)[..8])
}

/// The fingerprint key: HMAC-SHA256(master key, "ferry-secret-fingerprint-key").
fn fingerprint_key(key: &MasterKey) -> [u8; 32] {
    hmac_sha256(&key.bytes, b"ferry-secret-fingerprint-key")
}

/// Whether a stored fingerprint is the unkeyed one of older versions.
fn is_legacy_fingerprint(fingerprint: &str) -> bool {
    fingerprint.len() == 12
}

/// Replaces the unkeyed fingerprints older versions stored (guessable offline) by keyed
/// ones: first in the replicas' recorded configurations (so no replica looks changed), then
/// in the secrets. Idempotent, so a crash in between is finished at the next start.
async fn rekey_fingerprints(store: &Store, key: &MasterKey) -> Result<usize, ServerError> {
    let mut renamed: BTreeMap<(String, String), BTreeMap<(String, i64), String>> = BTreeMap::new();
    let legacy: Vec<_> = store
        .all_secrets()
        .await?
        .into_iter()
        .filter(|s| is_legacy_fingerprint(&s.fingerprint))
        .collect();
    for s in &legacy {
        // A secret this key cannot open keeps its fingerprint (and is reported elsewhere).
        let Ok(plain) = open(
            &[key],
            &aad(&s.app, &s.env, &s.name, s.version),
            &s.ciphertext,
        ) else {
            continue;
        };
        renamed
            .entry((s.app.clone(), s.env.clone()))
            .or_default()
            .insert(
                (s.name.clone(), s.version),
                fingerprint(key, &s.app, &s.env, &s.name, &plain),
            );
    }
    for ((app, env), new) in &renamed {
        for config in store.replica_configs(app, env).await? {
            let Some(mut summary) = config
                .summary
                .as_deref()
                .and_then(|s| serde_json::from_str::<ConfigSummary>(s).ok())
            else {
                continue;
            };
            let mut changed = false;
            for (name, stamp) in summary.secrets.iter_mut() {
                if is_legacy_fingerprint(&stamp.fingerprint)
                    && let Some(fp) = new.get(&(name.clone(), stamp.version))
                {
                    stamp.fingerprint = fp.clone();
                    changed = true;
                }
            }
            if changed {
                let json = serde_json::to_string(&summary).unwrap_or_default();
                store
                    .set_replica_config(&config.id, &summary.digest(), &json)
                    .await?;
            }
        }
    }
    let mut count = 0;
    for ((app, env), new) in renamed {
        for ((name, version), fp) in new {
            if store
                .set_secret_fingerprint(&app, &env, &name, version, &fp)
                .await?
            {
                count += 1;
            }
        }
    }
    if count > 0 {
        tracing::info!(count, "replaced unkeyed secret fingerprints by keyed ones");
    }
    Ok(count)
}

/// `^[A-Z_][A-Z0-9_]*$`, and not a variable Ferry sets itself; the registry credentials
/// of a `runtime: docker` environment ([`crate::runtimes::REGISTRY_USERNAME`],
/// [`crate::runtimes::REGISTRY_PASSWORD`]) are `FERRY_*` names it reads, never sets.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
        return Err(format!(
            "secret name {name:?} must match ^[A-Z_][A-Z0-9_]*$ (an environment variable name)"
        ));
    }
    let registry = [
        crate::runtimes::REGISTRY_USERNAME,
        crate::runtimes::REGISTRY_PASSWORD,
    ];
    if name == "PORT"
        || name == "VERSION"
        || (name.starts_with("FERRY_") && !registry.contains(&name))
    {
        return Err(format!(
            "{name} is set by Ferry itself (PORT, VERSION, FERRY_* but the registry credentials {}); pick another name",
            registry.join(", ")
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The key file and the service
// ---------------------------------------------------------------------------------------------

fn read_key(path: &FsPath) -> Result<Option<MasterKey>, ServerError> {
    let invalid = |why: &str| {
        ServerError::io(
            format!("reading {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
        )
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = ferry_core::audit::from_hex(text.trim())
                .ok_or_else(|| invalid("a master key must be 64 hex characters"))?;
            let bytes = <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| invalid("a master key must be 64 hex characters (32 bytes)"))?;
            Ok(Some(MasterKey::new(bytes)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ServerError::io(format!("reading {}", path.display()), e)),
    }
}

/// Writes `key` to `path` (which must not exist) with mode 0600, and syncs it.
fn write_key(path: &FsPath, key: &MasterKey) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(format!("{}\n", auth::hex(&key.bytes)).as_bytes())?;
    file.sync_all()
}

fn sync_dir(path: &FsPath) {
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

fn pending_path(key_path: &FsPath) -> PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".new");
    PathBuf::from(p)
}

/// `text` with every secret value in `values`, and its simple encodings, replaced by
/// `[redacted]` (check explanations; see `ferry_runtime::redact`).
pub fn redact(text: String, values: &[String]) -> String {
    let redactor = ferry_runtime::redact::Redactor::new(values);
    if redactor.is_empty() {
        return text;
    }
    redactor.redact(&text)
}

/// The secrets of every app: the master key and the store.
pub struct Secrets {
    store: Store,
    key_path: PathBuf,
    /// Read for sealing/opening; written (exclusively) by a rotation.
    key: RwLock<MasterKey>,
}

impl Secrets {
    /// Loads (or on first start creates) the master key; `key_file` is the operator's
    /// `FERRY_MASTER_KEY_FILE`, which must exist. Finishes or undoes an interrupted rotation.
    pub async fn open(
        store: Store,
        data_dir: &FsPath,
        key_file: Option<PathBuf>,
    ) -> Result<Arc<Secrets>, ServerError> {
        let operator = key_file.is_some();
        let key_path = key_file.unwrap_or_else(|| data_dir.join("secrets.key"));
        let pending = pending_path(&key_path);
        let mut key = match read_key(&key_path)? {
            Some(k) => k,
            None if operator => {
                return Err(ServerError::io(
                    format!(
                        "reading the master key {} ({KEY_FILE_ENV})",
                        key_path.display()
                    ),
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                ));
            }
            None => {
                let k = MasterKey::generate();
                write_key(&key_path, &k)
                    .map_err(|e| ServerError::io(format!("creating {}", key_path.display()), e))?;
                sync_dir(&key_path);
                tracing::info!(key_id = %k.id(), path = %key_path.display(), "created the secrets master key");
                k
            }
        };
        if let Some(new) = read_key(&pending)? {
            let committed = store
                .all_secrets()
                .await?
                .iter()
                .any(|s| key_id_of(&s.ciphertext).is_ok_and(|id| id == new.id));
            if committed {
                std::fs::rename(&pending, &key_path).map_err(|e| {
                    ServerError::io(
                        format!("finishing the key rotation of {}", key_path.display()),
                        e,
                    )
                })?;
                sync_dir(&key_path);
                tracing::warn!(key_id = %new.id, "finished an interrupted master key rotation");
                key = new;
            } else {
                std::fs::remove_file(&pending)
                    .map_err(|e| ServerError::io(format!("removing {}", pending.display()), e))?;
                tracing::warn!(key_id = %new.id, "discarded an unfinished master key rotation");
            }
        }
        let stale = store
            .all_secrets()
            .await?
            .iter()
            .filter(|s| key_id_of(&s.ciphertext).ok() != Some(key.id.as_str()))
            .count();
        if stale > 0 {
            tracing::error!(key_id = %key.id, count = stale, "secrets sealed under another master key cannot be injected");
        }
        rekey_fingerprints(&store, &key).await?;
        Ok(Arc::new(Secrets {
            store,
            key_path,
            key: RwLock::new(key),
        }))
    }

    /// Seals and stores a value; returns what may be shown of it.
    pub async fn put(
        &self,
        app: &str,
        env: &str,
        name: &str,
        value: &[u8],
        by: &str,
    ) -> Result<SecretInfo, ferry_store::StoreError> {
        let key = self.key.read().await;
        let fp = fingerprint(&key, app, env, name, value);
        self.store
            .put_secret(app, env, name, &fp, by, now_ms(), |version| {
                seal(&key, &aad(app, env, name, version), value).map_err(|e| e.to_string())
            })
            .await
    }

    /// The decrypted secrets of one environment, by name (for a replica's environment).
    pub async fn env_vars(
        &self,
        app: &str,
        env: &str,
    ) -> Result<BTreeMap<String, String>, EnvSecretsError> {
        let records = self.store.secrets_of(app, env).await?;
        let key = self.key.read().await;
        let mut vars = BTreeMap::new();
        for r in records {
            let plain =
                open(&[&key], &aad(app, env, &r.name, r.version), &r.ciphertext).map_err(|e| {
                    EnvSecretsError::Unreadable(format!("secret {} of {app}/{env}: {e}", r.name))
                })?;
            let value = String::from_utf8(plain).map_err(|_| {
                EnvSecretsError::Unreadable(format!(
                    "secret {} of {app}/{env} is not UTF-8",
                    r.name
                ))
            })?;
            vars.insert(r.name, value);
        }
        Ok(vars)
    }

    /// [`Secrets::env_vars`] as workloads get them: the registry credentials apart, for
    /// image pulls only ([`crate::runtimes::EnvSecrets`]).
    pub async fn for_workloads(
        &self,
        app: &str,
        env: &str,
    ) -> Result<crate::runtimes::EnvSecrets, EnvSecretsError> {
        self.env_vars(app, env)
            .await
            .map(crate::runtimes::EnvSecrets::split)
    }

    /// Generates a new master key and re-encrypts every secret under it (see the module
    /// documentation for the crash-safe order). Returns the new key id and the count.
    pub async fn rotate(&self) -> Result<(String, usize), String> {
        let mut key = self.key.write().await;
        let new = MasterKey::generate();
        let pending = pending_path(&self.key_path);
        // a leftover of a failed attempt in this run: nothing is sealed under it
        let _ = std::fs::remove_file(&pending);
        write_key(&pending, &new).map_err(|e| format!("writing {}: {e}", pending.display()))?;
        sync_dir(&pending);
        let old = key.clone();
        let resealed = self
            .store
            .reencrypt_secrets(|r| {
                let ad = aad(&r.app, &r.env, &r.name, r.version);
                let plain = open(&[&old], &ad, &r.ciphertext).map_err(|e| e.to_string())?;
                seal(&new, &ad, &plain).map_err(|e| e.to_string())
            })
            .await;
        let count = match resealed {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                return Err(e.to_string());
            }
        };
        std::fs::rename(&pending, &self.key_path)
            .map_err(|e| format!("replacing {}: {e}", self.key_path.display()))?;
        sync_dir(&self.key_path);
        tracing::info!(old = %old.id, new = %new.id, count, "rotated the secrets master key");
        let id = new.id.clone();
        *key = new;
        Ok((id, count))
    }
}

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

fn bad(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// The app must exist and declare the environment.
async fn check_env(state: &AppState, app: &str, env: &str) -> ApiResult<()> {
    let record = state.store.get_app(app).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app:?} not found"),
        )
    })?;
    let declared = serde_json::from_str::<Manifest>(&record.manifest_json)
        .is_ok_and(|m| m.environments.get(env).is_some());
    if !declared {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app} has no environment {env:?}"),
        ));
    }
    Ok(())
}

pub async fn set(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<SecretSet>> {
    slot.with(|n| n.target = Some(format!("secret {name}")));
    check_name(&name).map_err(bad)?;
    check_env(&state, &app, &env).await?;
    // parsed here, not by an extractor whose error message could quote the body
    let request: SetSecretRequest = serde_json::from_slice(&body).map_err(|_| {
        bad("the body must be a JSON object {\"value\": \"...\"} with a string value")
    })?;
    let value = request.value;
    if value.is_empty() {
        return Err(bad(
            "a secret value must not be empty (delete the secret instead)",
        ));
    }
    if value.len() > MAX_VALUE || value.contains('\0') {
        return Err(bad(format!(
            "a secret value must be at most {MAX_VALUE} bytes without NUL characters"
        )));
    }
    let info = state
        .secrets
        .put(&app, &env, &name, value.as_bytes(), &access.caller.name)
        .await?;
    drop(value);
    slot.with(|n| {
        n.summary = Some(format!(
            "secret {name} set (version {}, fingerprint {})",
            info.version, info.fingerprint
        ))
    });
    Ok(Json(SecretSet {
        name: info.name,
        version: info.version,
        fingerprint: info.fingerprint,
        updated_at_ms: info.updated_at_ms,
    }))
}

pub async fn list(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Json<Vec<SecretView>>> {
    check_env(&state, &app, &env).await?;
    let list = state.store.list_secrets(&app, &env).await?;
    Ok(Json(
        list.into_iter()
            .map(|s| SecretView {
                name: s.name,
                version: s.version,
                fingerprint: s.fingerprint,
                updated_by: s.updated_by,
                updated_at_ms: s.updated_at_ms,
            })
            .collect(),
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, name)): Path<(String, String, String)>,
) -> ApiResult<Json<SecretDeleted>> {
    slot.with(|n| n.target = Some(format!("secret {name}")));
    if !state.store.delete_secret(&app, &env, &name).await? {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{app}/{env} has no secret {name}"),
        ));
    }
    slot.with(|n| n.summary = Some(format!("secret {name} deleted")));
    Ok(Json(SecretDeleted {
        name,
        deleted: true,
    }))
}

pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
) -> ApiResult<Json<KeyRotated>> {
    let (key_id, count) = state.secrets.rotate().await.map_err(internal)?;
    slot.with(|n| {
        n.summary = Some(format!(
            "rotate the secrets master key to {key_id} ({count} secret(s) re-encrypted)"
        ))
    });
    Ok(Json(KeyRotated {
        key_id,
        reencrypted: u64::try_from(count).unwrap_or(u64::MAX),
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_format() {
        let key = MasterKey::new([7; 32]);
        let ad = aad("shop", "prod", "DB_PASSWORD", 3);
        let stored = seal(&key, &ad, b"hunter2").unwrap();
        let parts: Vec<&str> = stored.split(':').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "v1");
        assert_eq!(parts[1], key.id());
        assert_eq!(key.id().len(), 8);
        assert!(!stored.contains("hunter2"));
        assert_eq!(open(&[&key], &ad, &stored).unwrap(), b"hunter2");
        // fresh nonce each time
        assert_ne!(seal(&key, &ad, b"hunter2").unwrap(), stored);
    }

    #[test]
    fn wrong_aad_fails() {
        let key = MasterKey::new([7; 32]);
        let stored = seal(&key, &aad("shop", "prod", "DB_PASSWORD", 3), b"v").unwrap();
        for other in [
            aad("shop", "prod", "DB_PASSWORD", 4),
            aad("shop", "prod", "API_KEY", 3),
            aad("shop", "dev", "DB_PASSWORD", 3),
            aad("blog", "prod", "DB_PASSWORD", 3),
        ] {
            assert_eq!(open(&[&key], &other, &stored), Err(CryptoError::Auth));
        }
    }

    #[test]
    fn wrong_key_fails() {
        let key = MasterKey::new([7; 32]);
        let other = MasterKey::new([8; 32]);
        let ad = aad("a", "e", "N", 1);
        let stored = seal(&key, &ad, b"v").unwrap();
        assert_eq!(
            open(&[&other], &ad, &stored),
            Err(CryptoError::UnknownKey(key.id().to_string()))
        );
        // same id claimed, different key: authentication fails
        let forged = stored.replacen(key.id(), other.id(), 1);
        assert_eq!(open(&[&other], &ad, &forged), Err(CryptoError::Auth));
        // either key of a ring opens what it sealed
        assert_eq!(open(&[&other, &key], &ad, &stored).unwrap(), b"v");
    }

    #[test]
    fn format_errors() {
        let key = MasterKey::new([7; 32]);
        let ad = "a/e/N/1";
        let good = seal(&key, ad, b"v").unwrap();
        let (_, rest) = good.split_once(':').unwrap();
        for bad in [
            String::new(),
            "v1:abc".to_string(),
            format!("v2:{rest}"),
            format!("{good}:extra"),
            format!("v1:zzzzzzzz:{}", rest.split_once(':').unwrap().1),
            format!("v1:{}:!!!:AAAA", key.id()),
            format!("v1:{}:{}:AAAA", key.id(), B64.encode([0u8; 24])),
            format!("v1:{}:{}:@@", key.id(), B64.encode([0u8; 24])),
        ] {
            assert!(
                matches!(open(&[&key], ad, &bad), Err(CryptoError::Format(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn fingerprints_are_keyed_and_salted_per_secret() {
        let key = MasterKey::new([7; 32]);
        let a = fingerprint(&key, "shop", "prod", "A", b"same");
        assert_eq!(a.len(), 16);
        assert!(!is_legacy_fingerprint(&a));
        assert_eq!(a, fingerprint(&key, "shop", "prod", "A", b"same"));
        assert_ne!(a, fingerprint(&key, "shop", "prod", "B", b"same"));
        assert_ne!(a, fingerprint(&key, "shop", "dev", "A", b"same"));
        assert_ne!(a, fingerprint(&key, "shop", "prod", "A", b"other"));
        // Without the master key, the value cannot be guessed from the fingerprint: the
        // unkeyed SHA-256 an attacker could compute does not match, another key neither.
        let mut h = Sha256::new();
        h.update(b"ferry-secret-fingerprint\0");
        for part in [&b"shop"[..], b"prod", b"A"] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(b"same");
        assert!(!auth::hex(&h.finalize()).starts_with(&a));
        assert_ne!(
            a,
            fingerprint(&MasterKey::new([8; 32]), "shop", "prod", "A", b"same")
        );
    }

    #[tokio::test]
    async fn unkeyed_fingerprints_are_replaced_at_start_and_replicas_keep_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .unwrap();
        let key = MasterKey::new([7; 32]);
        std::fs::write(
            dir.path().join("secrets.key"),
            format!("{}\n", auth::hex(&key.bytes)),
        )
        .unwrap();
        // What an older version stored: a 12-hex unkeyed fingerprint.
        store
            .put_secret("shop", "prod", "PIN", "0123456789ab", "t", 1, |version| {
                seal(&key, &aad("shop", "prod", "PIN", version), b"123456")
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap();
        store
            .insert_replica(&ferry_store::ReplicaRecord {
                id: "r1".into(),
                app: "shop".into(),
                env: "prod".into(),
                service: "web".into(),
                version: "1.0".into(),
                port: 1,
                pid: None,
                start_time: None,
                draining: false,
                deployment_id: None,
                created_at_ms: 1,
            })
            .await
            .unwrap();
        let old = ConfigSummary {
            secrets: BTreeMap::from([(
                "PIN".to_string(),
                ferry_core::config::SecretStamp {
                    version: 1,
                    fingerprint: "0123456789ab".into(),
                },
            )]),
            ..ConfigSummary::default()
        };
        store
            .set_replica_config("r1", &old.digest(), &serde_json::to_string(&old).unwrap())
            .await
            .unwrap();

        let _secrets = Secrets::open(store.clone(), dir.path(), None)
            .await
            .unwrap();
        let keyed = fingerprint(&key, "shop", "prod", "PIN", b"123456");
        let listed = store.list_secrets("shop", "prod").await.unwrap();
        assert_eq!(listed[0].fingerprint, keyed);
        let config = &store.replica_configs("shop", "prod").await.unwrap()[0];
        let summary: ConfigSummary =
            serde_json::from_str(config.summary.as_deref().unwrap()).unwrap();
        assert_eq!(summary.secrets["PIN"].fingerprint, keyed);
        assert_eq!(config.digest.as_deref(), Some(summary.digest().as_str()));
        // Idempotent.
        assert_eq!(rekey_fingerprints(&store, &key).await.unwrap(), 0);
    }

    #[test]
    fn names() {
        for ok in [
            "DB_PASSWORD",
            "_X",
            "A1",
            "API_KEY_2",
            "FERRY_REGISTRY_USERNAME",
            "FERRY_REGISTRY_PASSWORD",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "db",
            "1A",
            "A-B",
            "A B",
            "PORT",
            "VERSION",
            "FERRY_X",
            "FERRY_REGISTRY_TOKEN",
            "É",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn key_file_and_interrupted_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .unwrap();
        let secrets = Secrets::open(store.clone(), dir.path(), None)
            .await
            .unwrap();
        let key_path = dir.path().join("secrets.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        secrets.put("a", "e", "N", b"value", "t").await.unwrap();
        let (new_id, n) = secrets.rotate().await.unwrap();
        assert_eq!(n, 1);
        assert_eq!(read_key(&key_path).unwrap().unwrap().id(), new_id);
        assert_eq!(secrets.env_vars("a", "e").await.unwrap()["N"], "value");
        drop(secrets);

        // a crash after writing KEYFILE.new, before the transaction: discarded
        let stray = MasterKey::new([9; 32]);
        write_key(&pending_path(&key_path), &stray).unwrap();
        let secrets = Secrets::open(store.clone(), dir.path(), None)
            .await
            .unwrap();
        assert!(!pending_path(&key_path).exists());
        assert_eq!(secrets.env_vars("a", "e").await.unwrap()["N"], "value");
        drop(secrets);

        // a crash after the transaction, before the rename: finished at start
        let current = read_key(&key_path).unwrap().unwrap();
        let next = MasterKey::new([10; 32]);
        write_key(&pending_path(&key_path), &next).unwrap();
        store
            .reencrypt_secrets(|r| {
                let ad = aad(&r.app, &r.env, &r.name, r.version);
                let plain = open(&[&current], &ad, &r.ciphertext).map_err(|e| e.to_string())?;
                seal(&next, &ad, &plain).map_err(|e| e.to_string())
            })
            .await
            .unwrap();
        let secrets = Secrets::open(store.clone(), dir.path(), None)
            .await
            .unwrap();
        assert!(!pending_path(&key_path).exists());
        assert_eq!(read_key(&key_path).unwrap().unwrap().id(), next.id());
        assert_eq!(secrets.env_vars("a", "e").await.unwrap()["N"], "value");

        // an operator key file that does not exist is an error, not a fresh key
        assert!(
            Secrets::open(store, dir.path(), Some(dir.path().join("missing.key")))
                .await
                .is_err()
        );
    }
}
