-- Encrypted secrets, one row per (app, env, name): the latest value only. `ciphertext` is
-- `v1:KEY_ID:NONCE_B64:CT_B64` (XChaCha20-Poly1305, AAD `app/env/name/version`); the
-- fingerprint is a salted SHA-256 prefix of the plaintext, safe to show.
CREATE TABLE secrets (
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    version       BIGINT NOT NULL,
    ciphertext    TEXT   NOT NULL,
    fingerprint   TEXT   NOT NULL,
    updated_by    TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (app, env, name)
);
