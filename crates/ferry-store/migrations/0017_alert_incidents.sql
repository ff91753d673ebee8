-- Incidents opened by alerts (docs/alerts.md#incidents): a critical alert that fires opens
-- one, attributed to the deployment running then; `alert_key` names the alert's episode
-- (one incident per firing, however often it is saved), and `restored_at_ms` is when it
-- resolved. `ferry deploy --fix-of` marks have neither.
ALTER TABLE incidents ADD COLUMN alert_key TEXT;
ALTER TABLE incidents ADD COLUMN restored_at_ms BIGINT;
CREATE UNIQUE INDEX incidents_by_alert ON incidents (alert_key);
