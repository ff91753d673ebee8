-- Guarded rollouts of flags: each one a row (the latest of a flag is its current one), the
-- whole state as JSON (`ferry_core::flags::guard::Guard`: steps, pause, analysis, current
-- step, the step's analysis run, the verdict). `running` indexes the ones the server
-- drives; `seq` is bumped by every write (compare-and-set: a stop by a person and a step of
-- the server never both win).
CREATE TABLE flag_guards (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    app           TEXT   NOT NULL,
    env           TEXT   NOT NULL,
    flag          TEXT   NOT NULL,
    running       BIGINT NOT NULL,
    seq           BIGINT NOT NULL,
    guard_json    TEXT   NOT NULL,
    started_by    TEXT   NOT NULL,
    started_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX flag_guards_by_flag ON flag_guards (app, env, flag, id);
CREATE INDEX flag_guards_running ON flag_guards (running);
