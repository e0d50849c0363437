-- no-transaction
-- Model names as people write them: up to 255 characters (was 128), as the guide's
-- VARCHAR(255). length() counts characters, as in PostgreSQL. Every existing name stays valid.
--
-- SQLite cannot alter a CHECK constraint, so the table is rebuilt by SQLite's documented
-- procedure: foreign keys off (dropping the old table must neither fail nor set
-- model_activations' references to NULL), one transaction, then foreign keys back on. Rows keep
-- their ids, so the activation history still points at them, and the id counter goes on from
-- where it was (a deleted model's id is never given again: events name models by id). Rerunning
-- it is harmless.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
DROP TABLE IF EXISTS ml_models_new;
CREATE TABLE ml_models_new (
    model_id        INTEGER PRIMARY KEY AUTOINCREMENT,
    model_name      TEXT    NOT NULL UNIQUE CHECK (length(model_name) BETWEEN 1 AND 255),
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
INSERT INTO ml_models_new (model_id, model_name, version, file_path, description, model_type, accuracy,
                           checksum_sha256, file_size_bytes, signature, is_active, created_at, updated_at, created_by)
    SELECT model_id, model_name, version, file_path, description, model_type, accuracy,
           checksum_sha256, file_size_bytes, signature, is_active, created_at, updated_at, created_by
    FROM ml_models;
-- AUTOINCREMENT's counter: the old table's, not the highest id left.
DELETE FROM sqlite_sequence WHERE name = 'ml_models_new';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'ml_models_new', MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'ml_models'), 0),
                                COALESCE((SELECT MAX(model_id) FROM ml_models_new), 0));
DROP TABLE ml_models;
ALTER TABLE ml_models_new RENAME TO ml_models;

-- At most one active model, enforced by the database.
CREATE UNIQUE INDEX ml_models_one_active ON ml_models (is_active) WHERE is_active = 1;

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
COMMIT;
PRAGMA foreign_keys = ON;
