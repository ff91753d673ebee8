-- Approvals and rejections of deployments waiting at their environment's gates.
CREATE TABLE approvals (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    approver      TEXT   NOT NULL,
    roles         TEXT   NOT NULL DEFAULT '[]',
    approved      BIGINT NOT NULL,
    reason        TEXT,
    at_ms         BIGINT NOT NULL,
    withdrawn_at_ms BIGINT
);
CREATE INDEX approvals_by_deployment ON approvals (deployment_id, id);
