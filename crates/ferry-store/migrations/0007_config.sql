-- The configuration each replica was started with: `config_digest` is a SHA-256 over its
-- effective variables, its environment's secret versions/fingerprints (never values) and
-- its command line; `config_summary` is the JSON those were hashed from (per-variable
-- hashes, secret versions), so a redeploy can say what changed by name. NULL for replicas
-- started before this migration (they count as out of date).
ALTER TABLE replicas ADD COLUMN config_digest TEXT;
ALTER TABLE replicas ADD COLUMN config_summary TEXT;
