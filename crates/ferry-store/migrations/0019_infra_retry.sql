-- When acting for a deployment first failed on the store or the engine (cleared when it
-- works again): the infrastructure-retry window (10 min) counts from here, across restarts.
ALTER TABLE deployments ADD COLUMN infra_failing_since_ms BIGINT;
