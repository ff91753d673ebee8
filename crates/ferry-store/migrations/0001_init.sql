-- Ferry store schema, SQLite flavour. Kept portable on purpose (a PostgreSQL folder mirrors it):
-- times are i64 milliseconds, JSON is TEXT, booleans are 0/1 integers, states are their text.

-- One row per app: the latest manifest revision (cheap list/get).
CREATE TABLE apps (
    name          TEXT    NOT NULL PRIMARY KEY,
    revision      BIGINT  NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    updated_at_ms BIGINT  NOT NULL
);

-- Every applied manifest, immutable; revision increases from 1 per app.
CREATE TABLE manifest_revisions (
    app           TEXT    NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    revision      BIGINT  NOT NULL,
    yaml          TEXT    NOT NULL,
    manifest_json TEXT    NOT NULL,
    base_dir      TEXT,
    applied_by    TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (app, revision)
);

CREATE TABLE releases (
    app           TEXT    NOT NULL,
    version       TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    PRIMARY KEY (app, version)
);

CREATE TABLE deployments (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    app               TEXT    NOT NULL,
    env               TEXT    NOT NULL,
    version           TEXT    NOT NULL,
    previous_version  TEXT,
    kind              TEXT    NOT NULL,
    strategy          TEXT    NOT NULL,
    state             TEXT    NOT NULL,
    reason            TEXT,
    requested_by      TEXT    NOT NULL,
    manifest_revision BIGINT  NOT NULL,
    -- the controller's private progress (JSON object)
    phase             TEXT    NOT NULL DEFAULT '{}',
    -- optimistic concurrency: compare-and-set on every transition
    row_version       BIGINT  NOT NULL DEFAULT 1,
    created_at_ms     BIGINT  NOT NULL,
    updated_at_ms     BIGINT  NOT NULL,
    -- set exactly when the state becomes terminal; NULL = still active
    finished_at_ms    BIGINT
);

-- history per app/env, newest first
CREATE INDEX deployments_app_env_id ON deployments (app, env, id);
-- the (at most one, by controller convention) active deployment per app/env, and crash resume
CREATE INDEX deployments_active ON deployments (app, env, id) WHERE finished_at_ms IS NULL;
-- previous_succeeded_version / version_succeeded_in
CREATE INDEX deployments_app_env_state ON deployments (app, env, state, id);

-- Timeline of a deployment; seq increases from 1 per deployment.
CREATE TABLE deployment_events (
    deployment_id BIGINT  NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    seq           BIGINT  NOT NULL,
    at_ms         BIGINT  NOT NULL,
    kind          TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);

-- What serves each environment now.
CREATE TABLE environments (
    app             TEXT    NOT NULL,
    env             TEXT    NOT NULL,
    current_version TEXT,
    deployment_id   BIGINT  REFERENCES deployments (id),
    updated_at_ms   BIGINT  NOT NULL,
    PRIMARY KEY (app, env)
);

-- What the runtime runs (for re-adoption after a crash). No foreign key on deployment_id:
-- replicas are facts about processes and must be recordable whatever the history says.
CREATE TABLE replicas (
    id               TEXT    NOT NULL PRIMARY KEY,
    app              TEXT    NOT NULL,
    env              TEXT    NOT NULL,
    service          TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    port             BIGINT  NOT NULL,
    pid              BIGINT,
    -- process start time (u64 stored as i64, bit-for-bit) to detect pid reuse
    start_time       BIGINT,
    draining         INTEGER NOT NULL DEFAULT 0,
    draining_since_ms BIGINT,
    deployment_id    BIGINT,
    created_at_ms    BIGINT  NOT NULL
);

CREATE INDEX replicas_app_env ON replicas (app, env);

-- API tokens: only the lowercase hex SHA-256 of a token is stored.
CREATE TABLE api_tokens (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT    NOT NULL,
    token_hash      TEXT    NOT NULL UNIQUE,
    role            TEXT    NOT NULL,
    created_at_ms   BIGINT  NOT NULL,
    last_used_at_ms BIGINT
);
