-- Identity and governance: users, custom roles, role bindings, scoped/expiring tokens,
-- the hash-chained audit log and its signed checkpoints. Same portability rules as 0001.

-- Users log in with a password; only its argon2id PHC string is stored.
CREATE TABLE users (
    name          TEXT    NOT NULL PRIMARY KEY,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);

-- Custom roles (the built-in ones live in code). permissions: JSON array of names.
CREATE TABLE roles (
    name          TEXT    NOT NULL PRIMARY KEY,
    description   TEXT    NOT NULL,
    permissions   TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

-- A role granted to a user, over all apps (app NULL) or one, all envs ('[]') or some.
CREATE TABLE role_bindings (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subject       TEXT    NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    role          TEXT    NOT NULL,
    app           TEXT,
    envs          TEXT    NOT NULL DEFAULT '[]',
    created_by    TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

CREATE INDEX role_bindings_subject ON role_bindings (subject);
CREATE INDEX role_bindings_role ON role_bindings (role);

-- Tokens: `admin` (the DATA_DIR/admin.token), `api` (CI, automation) or `session` (login).
ALTER TABLE api_tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'api';
ALTER TABLE api_tokens ADD COLUMN owner TEXT;
ALTER TABLE api_tokens ADD COLUMN app TEXT;
ALTER TABLE api_tokens ADD COLUMN envs TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_tokens ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE api_tokens ADD COLUMN revoked_at_ms BIGINT;
UPDATE api_tokens SET kind = 'admin' WHERE name = 'admin' AND role = 'admin';
CREATE INDEX api_tokens_owner ON api_tokens (owner);

-- The audit log: seq 1, 2, 3, ... without gaps; each record carries the previous one's hash.
CREATE TABLE audit_log (
    seq       BIGINT  NOT NULL PRIMARY KEY,
    at_ms     BIGINT  NOT NULL,
    actor     TEXT    NOT NULL,
    source    TEXT,
    action    TEXT    NOT NULL,
    app       TEXT,
    env       TEXT,
    target    TEXT,
    summary   TEXT    NOT NULL,
    reason    TEXT,
    outcome   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);

CREATE INDEX audit_log_actor ON audit_log (actor, seq);
CREATE INDEX audit_log_app ON audit_log (app, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);
CREATE INDEX audit_log_at ON audit_log (at_ms);

-- One row, written first by every append: serialises appenders on every engine.
CREATE TABLE audit_lock (
    id    INTEGER NOT NULL PRIMARY KEY,
    bumps BIGINT  NOT NULL
);
INSERT INTO audit_lock (id, bumps) VALUES (1, 0);

-- Signed (HMAC) statements "the log had COUNT records ending in HEAD_HASH at AT_MS".
CREATE TABLE audit_checkpoints (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    count     BIGINT  NOT NULL,
    head_hash TEXT    NOT NULL,
    at_ms     BIGINT  NOT NULL,
    signature TEXT    NOT NULL
);
