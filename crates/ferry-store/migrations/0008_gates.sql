-- Promotion gates: the latest result of each external check of a waiting deployment, and
-- gates lifted for one deployment (a freeze override: who, when, why).
CREATE TABLE gate_check_results (
    deployment_id BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    name          TEXT   NOT NULL,
    passed        BIGINT NOT NULL,
    explanation   TEXT   NOT NULL,
    at_ms         BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, name)
);
CREATE TABLE gate_overrides (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    gate          TEXT   NOT NULL,
    by_principal  TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    at_ms         BIGINT NOT NULL
);
CREATE INDEX gate_overrides_by_deployment ON gate_overrides (deployment_id, id);
-- The gate rows of a deployment as they stood when it passed its gates (JSON array).
CREATE TABLE gate_reports (
    deployment_id BIGINT NOT NULL PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    rows_json     TEXT   NOT NULL,
    at_ms         BIGINT NOT NULL
);
