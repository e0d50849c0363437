-- Every server reports itself here: who it is, a heartbeat, the registry generation it has
-- applied and what it serves; a change waits until every live server has applied it
-- (docs/operations.md, "Fleet"). Times are milliseconds since the epoch on the database's
-- clock, so a server whose own clock is off never makes another look gone. Heartbeats do not
-- bump the registry generation, and do not notify: a server that applied a change, joined or
-- left does (channel modeld_servers), so a waiting command learns of it at once.
-- Keep in step with migrations/sqlite/0008_servers.sql.
CREATE TABLE model_servers (
    server_id          TEXT    PRIMARY KEY,
    server_name        TEXT    NOT NULL,
    host               TEXT    NOT NULL,
    grpc_address       TEXT    NOT NULL DEFAULT '',
    http_address       TEXT    NOT NULL DEFAULT '',
    version            TEXT    NOT NULL,
    started_at_ms      BIGINT  NOT NULL,
    heartbeat_ms       BIGINT  NOT NULL,
    beat_ms            BIGINT  NOT NULL CHECK (beat_ms > 0),
    applied_generation BIGINT  NOT NULL DEFAULT 0,
    applied_at_ms      BIGINT,
    serving            TEXT    NOT NULL DEFAULT '{}' CHECK (serving::jsonb IS NOT NULL),
    problem            TEXT    NOT NULL DEFAULT '',
    problem_generation BIGINT  NOT NULL DEFAULT 0,
    degraded           TEXT    NOT NULL DEFAULT ''
);

CREATE FUNCTION modeld_server_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('modeld_servers', COALESCE(NEW.server_id, OLD.server_id));
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_servers_joined AFTER INSERT OR DELETE ON model_servers
    FOR EACH ROW EXECUTE FUNCTION modeld_server_changed();
CREATE TRIGGER model_servers_applied AFTER UPDATE OF applied_generation, problem_generation, problem, serving
    ON model_servers FOR EACH ROW EXECUTE FUNCTION modeld_server_changed();
