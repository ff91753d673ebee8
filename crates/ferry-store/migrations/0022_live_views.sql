-- What the leader last saw of each environment's replicas (live health, restarts, last
-- exit, usage) and traffic, as JSON, for the other servers' answers (`ferry status` on a
-- follower): who saw it (`server`) and when (`observed_at_ms`, the leader's clock).
CREATE TABLE env_live (
    app TEXT NOT NULL,
    env TEXT NOT NULL,
    server TEXT NOT NULL,
    observed_at_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (app, env)
);
