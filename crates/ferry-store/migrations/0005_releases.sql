-- Releases become real: the commit a version was built from, each service's artifact, notes,
-- who recorded it. A release recorded by a plain `ferry deploy` has none of these (bare).
ALTER TABLE releases ADD COLUMN commit_sha TEXT;
ALTER TABLE releases ADD COLUMN artifacts TEXT NOT NULL DEFAULT '{}';
ALTER TABLE releases ADD COLUMN notes TEXT;
ALTER TABLE releases ADD COLUMN created_by TEXT;

-- releases per env and "was this version ever deployed here" (auto-promotion)
CREATE INDEX deployments_app_version ON deployments (app, version, env);
