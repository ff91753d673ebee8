-- Leader leases: one row per lease name. `holder` is the server holding it, `token` the
-- fencing token (incremented at each takeover, never reused), `expires_at_ms` when it ends
-- by the database's own clock (never a server's), so servers with skewed clocks agree.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    acquired_at_ms INTEGER NOT NULL,
    renewed_at_ms INTEGER NOT NULL
);
