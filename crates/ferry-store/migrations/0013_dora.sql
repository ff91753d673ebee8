-- DORA metrics: when a release's commit was made (the start of the lead time for changes),
-- and the production deployments that needed a fix (`ferry deploy --fix-of N`): each row
-- says deployment `deployment_id` had to be fixed, from `opened_at_ms`, by the deployment
-- `fixed_by`. A deployment with several rows is one failed change.
ALTER TABLE releases ADD COLUMN commit_at_ms INTEGER;
CREATE TABLE incidents (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    opened_at_ms  BIGINT NOT NULL,
    fixed_by      BIGINT,
    opened_by     TEXT   NOT NULL
);
CREATE INDEX incidents_by_deployment ON incidents (deployment_id);
