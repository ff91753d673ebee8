-- Deployment hooks: one row per attempt, written `running` before the process starts and
-- finished after it ends, so that a restarted server knows what ran (exactly once).
CREATE TABLE hook_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id  BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    phase          TEXT   NOT NULL,
    hook           TEXT   NOT NULL,
    attempt        BIGINT NOT NULL,
    state          TEXT   NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    finished_at_ms BIGINT,
    exit_code      BIGINT,
    pid            BIGINT,
    start_time     BIGINT,
    output_path    TEXT,
    summary        TEXT,
    migration      TEXT,
    UNIQUE (deployment_id, phase, hook, attempt)
);
CREATE INDEX hook_runs_by_state ON hook_runs (state);
