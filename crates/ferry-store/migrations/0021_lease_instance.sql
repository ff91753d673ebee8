-- The process holding a lease besides its server id (`HOST:PID:RANDOM`, new at every start):
-- two live servers given the same `--server-id` are two holders, so only one of them can
-- hold the lease; a restarted server takes over its dead predecessor's holding by it.
ALTER TABLE leases ADD COLUMN instance TEXT NOT NULL DEFAULT '';
