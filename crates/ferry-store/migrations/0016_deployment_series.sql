-- Per-version traffic of a rollout, for the deployment page's charts: one row per version
-- and sampling interval (ending at `t_ms`, `span_ms` long): completed requests, 5xx answers
-- and the p95 latency in µs (NULL without requests). At most `ferry_core::series::MAX_POINTS`
-- rows per version of a deployment: a long rollout's older points are merged pairwise.
CREATE TABLE deployment_series (
    deployment_id BIGINT  NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    version       TEXT    NOT NULL,
    t_ms          BIGINT  NOT NULL,
    span_ms       BIGINT  NOT NULL,
    requests      BIGINT  NOT NULL,
    errors        BIGINT  NOT NULL,
    p95_us        BIGINT,
    PRIMARY KEY (deployment_id, version, t_ms)
);
