//! Secrets bodies: values go to the server once and never come back, only names, versions
//! and fingerprints.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `PUT /v1/apps/{app}/envs/{env}/secrets/{name}`: the value (never printed).
#[derive(Clone, Serialize, Deserialize)]
pub struct SetSecretRequest {
    pub value: String,
}

impl fmt::Debug for SetSecretRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SetSecretRequest { value: *** }")
    }
}

/// The answer to setting a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretSet {
    pub name: String,
    pub version: i64,
    pub fingerprint: String,
    pub updated_at_ms: i64,
}

/// A secret as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    pub version: i64,
    pub fingerprint: String,
    pub updated_by: String,
    pub updated_at_ms: i64,
}

/// `DELETE /v1/apps/{app}/envs/{env}/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretDeleted {
    pub name: String,
    pub deleted: bool,
}

/// `POST /v1/secrets/rotate-key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRotated {
    /// The new master key's id.
    pub key_id: String,
    /// How many secrets were re-encrypted under it.
    pub reencrypted: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_value_never_prints_itself() {
        let request = SetSecretRequest {
            value: "hunter2".into(),
        };
        assert!(!format!("{request:?}").contains("hunter2"));
    }
}
