-- Feature flags. Each app environment has its own state of each flag: the Unleash feature
-- as served (JSON), archived or not. `flag_envs.revision` is bumped in the same
-- transaction as any change that alters what is served; the ETag SDKs poll with is
-- `epoch-revision` (epoch: random per row, so a recreated environment never repeats an
-- old ETag).
CREATE TABLE flag_envs (
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    revision      BIGINT NOT NULL,
    epoch         TEXT   NOT NULL,
    segments_json TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (app, env)
);
CREATE TABLE flags (
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    feature_json  TEXT   NOT NULL,
    archived      BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    updated_by    TEXT   NOT NULL,
    PRIMARY KEY (app, env, name)
);
-- Every change of a flag: who, what before and after (JSON, NULL when absent), why.
CREATE TABLE flag_changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT   NOT NULL,
    env         TEXT   NOT NULL,
    flag        TEXT   NOT NULL,
    revision    BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    before_json TEXT,
    after_json  TEXT,
    reason      TEXT
);
CREATE INDEX flag_changes_by_flag ON flag_changes (app, env, flag, id);
-- Client tokens of the SDK endpoints: one app environment each, stored as SHA-256.
CREATE TABLE flag_tokens (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    name          TEXT   NOT NULL,
    token_sha256  TEXT   NOT NULL UNIQUE,
    created_by    TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL
);
-- SDK instances that registered (POST /api/client/register).
CREATE TABLE flag_clients (
    app          TEXT   NOT NULL,
    env          TEXT   NOT NULL,
    app_name     TEXT   NOT NULL,
    instance_id  TEXT   NOT NULL,
    sdk_version  TEXT   NOT NULL,
    seen_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (app, env, app_name, instance_id)
);
-- Evaluation counts the SDKs report, per flag and hour.
CREATE TABLE flag_metrics (
    app       TEXT   NOT NULL,
    env       TEXT   NOT NULL,
    flag      TEXT   NOT NULL,
    bucket_ms BIGINT NOT NULL,
    yes       BIGINT NOT NULL,
    no        BIGINT NOT NULL,
    PRIMARY KEY (app, env, flag, bucket_ms)
);
CREATE TABLE flag_metric_variants (
    app       TEXT   NOT NULL,
    env       TEXT   NOT NULL,
    flag      TEXT   NOT NULL,
    bucket_ms BIGINT NOT NULL,
    variant   TEXT   NOT NULL,
    count     BIGINT NOT NULL,
    PRIMARY KEY (app, env, flag, bucket_ms, variant)
);
