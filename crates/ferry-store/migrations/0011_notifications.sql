-- Notifications: the durable outbox (written in the transaction of the event that causes
-- each one), the deliveries the dispatcher plans from it (one per receiver and group flush,
-- with attempts and the last error: the delivery history), the state of each notification
-- group (Alertmanager-style grouping), and the alerts firing now (for inhibition).
CREATE TABLE notifications (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    nkey          TEXT    NOT NULL UNIQUE,
    kind          TEXT    NOT NULL,
    app           TEXT    NOT NULL,
    env           TEXT    NOT NULL,
    fingerprint   TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    routed_at_ms  BIGINT
);
CREATE INDEX notifications_unrouted ON notifications (routed_at_ms, id);
CREATE TABLE notification_deliveries (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    dkey               TEXT    NOT NULL UNIQUE,
    receiver           TEXT    NOT NULL,
    receiver_type      TEXT    NOT NULL,
    app                TEXT    NOT NULL,
    env                TEXT    NOT NULL,
    group_key          TEXT    NOT NULL,
    summary            TEXT    NOT NULL,
    notification_ids   TEXT    NOT NULL,
    state              TEXT    NOT NULL,
    attempts           BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT  NOT NULL,
    last_error         TEXT,
    created_at_ms      BIGINT  NOT NULL,
    delivered_at_ms    BIGINT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (state, next_attempt_at_ms);
CREATE INDEX notification_deliveries_by_app ON notification_deliveries (app, env, id);
CREATE TABLE notification_groups (
    app        TEXT   NOT NULL,
    receiver   TEXT   NOT NULL,
    group_key  TEXT   NOT NULL,
    state      TEXT   NOT NULL,
    due_at_ms  BIGINT,
    PRIMARY KEY (app, receiver, group_key)
);
CREATE INDEX notification_groups_due ON notification_groups (due_at_ms);
CREATE TABLE notification_active_alerts (
    fingerprint   TEXT   NOT NULL PRIMARY KEY,
    app           TEXT   NOT NULL,
    body          TEXT   NOT NULL,
    since_ms      BIGINT NOT NULL
);
