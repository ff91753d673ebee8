-- Alert rules: every alert (rule × series) of an app environment that is pending, firing or
-- recently resolved, as the evaluation left it (JSON, ferry_core::alerts::AlertInstance);
-- the history of their transitions and actions; silences.
CREATE TABLE alert_states (
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    rule          TEXT   NOT NULL,
    series        TEXT   NOT NULL,
    status        TEXT   NOT NULL,
    alert_json    TEXT   NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (app, env, rule, series)
);
CREATE TABLE alert_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    app     TEXT   NOT NULL,
    env     TEXT   NOT NULL,
    rule    TEXT   NOT NULL,
    series  TEXT   NOT NULL,
    kind    TEXT   NOT NULL,
    message TEXT   NOT NULL,
    at_ms   BIGINT NOT NULL
);
CREATE INDEX alert_events_by_env ON alert_events (app, env, id);
CREATE TABLE alert_silences (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    alert         TEXT   NOT NULL,
    created_by    TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    created_at_ms BIGINT NOT NULL,
    until_ms      BIGINT NOT NULL,
    ended_by      TEXT
);
CREATE INDEX alert_silences_by_env ON alert_silences (app, env, until_ms);
