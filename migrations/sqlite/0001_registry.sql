-- modeld registry, SQLite dialect. Keep in step with migrations/postgres/0001_registry.sql.

CREATE TABLE ml_models (
    model_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name      TEXT    NOT NULL UNIQUE CHECK (length(model_name) BETWEEN 1 AND 128),
    version         TEXT    NOT NULL DEFAULT '',
    file_path       TEXT    NOT NULL CHECK (length(file_path) > 0),
    description     TEXT    NOT NULL DEFAULT '',
    model_type      TEXT    NOT NULL DEFAULT '',
    accuracy        REAL    CHECK (accuracy IS NULL OR (accuracy >= 0 AND accuracy <= 1)),
    checksum_sha256 TEXT    NOT NULL CHECK (length(checksum_sha256) = 64),
    file_size_bytes INTEGER NOT NULL CHECK (file_size_bytes >= 0),
    signature       TEXT    NOT NULL,
    is_active       INTEGER NOT NULL DEFAULT 0 CHECK (is_active IN (0, 1)),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    created_by      TEXT    NOT NULL DEFAULT ''
);

-- At most one active model, enforced by the database.
CREATE UNIQUE INDEX ml_models_one_active ON ml_models (is_active) WHERE is_active = 1;

CREATE TABLE model_activations (
    activation_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id          INTEGER REFERENCES ml_models (model_id) ON DELETE SET NULL,
    model_name        TEXT    NOT NULL,
    previous_model_id INTEGER REFERENCES ml_models (model_id) ON DELETE SET NULL,
    previous_name     TEXT,
    activated_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    activated_by      TEXT    NOT NULL DEFAULT '',
    reason            TEXT    NOT NULL DEFAULT '',
    is_rollback       INTEGER NOT NULL DEFAULT 0 CHECK (is_rollback IN (0, 1))
);

CREATE INDEX model_activations_recent ON model_activations (activation_id DESC);

-- One row: the generation every registry change bumps (what watchers follow).
CREATE TABLE registry_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO registry_state (id, generation) VALUES (1, 0);
