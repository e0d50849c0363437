-- Events for audit and WatchEvents, and triggers so that every writer (modeld, the CLI, a SQL
-- console) bumps the registry generation that servers follow.

CREATE TABLE model_events (
    event_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,
    model_id   INTEGER,
    model_name TEXT    NOT NULL DEFAULT '',
    source     TEXT    NOT NULL DEFAULT '',
    server     TEXT    NOT NULL DEFAULT '',
    detail     TEXT    NOT NULL DEFAULT '',
    created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TRIGGER ml_models_bump_insert AFTER INSERT ON ml_models
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER ml_models_bump_update AFTER UPDATE ON ml_models
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;

CREATE TRIGGER ml_models_bump_delete AFTER DELETE ON ml_models
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;
