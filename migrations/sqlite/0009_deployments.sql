-- Deployments (issue 29): a name that clients call, with at any time exactly one active model
-- version, at most one canary and at most one shadow. Every model belongs to one deployment; an
-- existing registry's models all go into `default`, which behaves as the one registry did.
-- Keep in step with migrations/postgres/0009_deployments.sql.
CREATE TABLE deployments (
    deployment_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    description   TEXT    NOT NULL DEFAULT '',
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    created_by    TEXT    NOT NULL DEFAULT ''
);
INSERT INTO deployments (deployment_id, name, description, created_by)
    VALUES (1, 'default', 'the deployment of every model registered without one', 'modeld');

-- SQLite cannot add a column with both a foreign key and a default: triggers hold the
-- reference (a model's deployment exists; a deployment that holds models is not deleted).
ALTER TABLE ml_models ADD COLUMN deployment_id INTEGER NOT NULL DEFAULT 1;
CREATE INDEX ml_models_by_deployment ON ml_models (deployment_id);
CREATE TRIGGER ml_models_deployment_exists_insert BEFORE INSERT ON ml_models
    WHEN NOT EXISTS (SELECT 1 FROM deployments WHERE deployment_id = NEW.deployment_id)
BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: ml_models.deployment_id');
END;
CREATE TRIGGER ml_models_deployment_exists_update BEFORE UPDATE OF deployment_id ON ml_models
    WHEN NOT EXISTS (SELECT 1 FROM deployments WHERE deployment_id = NEW.deployment_id)
BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: ml_models.deployment_id');
END;
CREATE TRIGGER deployments_keep_their_models BEFORE DELETE ON deployments
    WHEN EXISTS (SELECT 1 FROM ml_models WHERE deployment_id = OLD.deployment_id)
BEGIN
    SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed: the deployment holds models');
END;

-- One active model, one canary and one shadow per deployment (they were per registry).
DROP INDEX ml_models_one_active;
CREATE UNIQUE INDEX ml_models_one_active ON ml_models (deployment_id) WHERE is_active = 1;
DROP INDEX ml_models_one_canary;
CREATE UNIQUE INDEX ml_models_one_canary ON ml_models (deployment_id) WHERE status = 'canary';
DROP INDEX ml_models_one_shadow;
CREATE UNIQUE INDEX ml_models_one_shadow ON ml_models (deployment_id) WHERE status = 'shadow';

-- Deployment and model names share one namespace: a name means one thing. (A model that was
-- already named `default` before this migration keeps its name.)
CREATE TRIGGER deployments_name_free_insert BEFORE INSERT ON deployments
    WHEN EXISTS (SELECT 1 FROM ml_models WHERE model_name = NEW.name)
BEGIN
    SELECT RAISE(ABORT, 'UNIQUE constraint failed: a model has the deployment''s name');
END;
CREATE TRIGGER deployments_name_free_update BEFORE UPDATE OF name ON deployments
    WHEN NEW.name <> OLD.name AND EXISTS (SELECT 1 FROM ml_models WHERE model_name = NEW.name)
BEGIN
    SELECT RAISE(ABORT, 'UNIQUE constraint failed: a model has the deployment''s name');
END;
CREATE TRIGGER ml_models_name_free_insert BEFORE INSERT ON ml_models
    WHEN EXISTS (SELECT 1 FROM deployments WHERE name = NEW.model_name)
BEGIN
    SELECT RAISE(ABORT, 'UNIQUE constraint failed: a deployment has the model''s name');
END;
CREATE TRIGGER ml_models_name_free_update BEFORE UPDATE OF model_name ON ml_models
    WHEN NEW.model_name <> OLD.model_name AND EXISTS (SELECT 1 FROM deployments WHERE name = NEW.model_name)
BEGIN
    SELECT RAISE(ABORT, 'UNIQUE constraint failed: a deployment has the model''s name');
END;

-- Servers follow deployments as they follow models.
CREATE TRIGGER deployments_bump_insert AFTER INSERT ON deployments
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER deployments_bump_update AFTER UPDATE ON deployments
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER deployments_bump_delete AFTER DELETE ON deployments
BEGIN
    UPDATE registry_state SET generation = generation + 1 WHERE id = 1;
END;
