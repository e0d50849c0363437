-- Every server reports itself here: who it is, a heartbeat, the registry generation it has
-- applied and what it serves; a change waits until every live server has applied it
-- (docs/operations.md, "Fleet"). Times are milliseconds since the epoch on the database's
-- clock, so a server whose own clock is off never makes another look gone. Heartbeats do not
-- bump the registry generation.
-- Keep in step with migrations/postgres/0008_servers.sql.
CREATE TABLE model_servers (
    server_id          TEXT    PRIMARY KEY,
    server_name        TEXT    NOT NULL,
    host               TEXT    NOT NULL,
    grpc_address       TEXT    NOT NULL DEFAULT '',
    http_address       TEXT    NOT NULL DEFAULT '',
    version            TEXT    NOT NULL,
    started_at_ms      INTEGER NOT NULL,
    heartbeat_ms       INTEGER NOT NULL,
    beat_ms            INTEGER NOT NULL CHECK (beat_ms > 0),
    -- The registry generation whose state this server serves, and when it got there.
    applied_generation INTEGER NOT NULL DEFAULT 0,
    applied_at_ms      INTEGER,
    -- What it serves: {"active": {...}, "canary": {...}, "shadow": {...}} (JSON).
    serving            TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(serving)),
    -- Why it could not apply generation problem_generation (a load failure), if it could not.
    problem            TEXT    NOT NULL DEFAULT '',
    problem_generation INTEGER NOT NULL DEFAULT 0,
    -- Its degradations, for people ("the model file is missing; ..."), '' when none.
    degraded           TEXT    NOT NULL DEFAULT ''
);
