-- Rollout (guide 000: status, rollout_percentage, shadow_mode/shadow_percentage,
-- rollback_threshold, is_stable, deprecated_at). Keep in step with migrations/postgres/0005_rollout.sql.
--
-- `status` is a model's place in its lifecycle: registered -> testing -> canary | shadow ->
-- active -> deprecated. The serving roles are enforced by the database as the one active model
-- is: `active` exactly when is_active, at most one canary, at most one shadow. is_active stays
-- the switch (a SQL console that flips it keeps working): triggers derive the status from it,
-- and the model it replaced becomes `deprecated`. (SQLite cannot add a table CHECK or change
-- NEW in a trigger: AFTER triggers set the status, a BEFORE trigger refuses a status that
-- contradicts is_active.)
ALTER TABLE ml_models ADD COLUMN status TEXT NOT NULL DEFAULT 'registered'
    CHECK (status IN ('registered', 'testing', 'canary', 'shadow', 'active', 'deprecated'));
ALTER TABLE ml_models ADD COLUMN deprecated_at TEXT;
UPDATE ml_models SET status = 'active' WHERE is_active;
CREATE UNIQUE INDEX ml_models_one_canary ON ml_models (status) WHERE status = 'canary';
CREATE UNIQUE INDEX ml_models_one_shadow ON ml_models (status) WHERE status = 'shadow';

CREATE TRIGGER ml_models_status_on_insert AFTER INSERT ON ml_models
    WHEN NEW.is_active AND NEW.status <> 'active'
BEGIN
    UPDATE ml_models SET status = 'active', deprecated_at = NULL WHERE model_id = NEW.model_id;
END;
CREATE TRIGGER ml_models_status_on_activate AFTER UPDATE OF is_active ON ml_models
    WHEN NEW.is_active AND NOT OLD.is_active
BEGIN
    UPDATE ml_models SET status = 'active', deprecated_at = NULL WHERE model_id = NEW.model_id;
END;
CREATE TRIGGER ml_models_status_on_deactivate AFTER UPDATE OF is_active ON ml_models
    WHEN OLD.is_active AND NOT NEW.is_active AND NEW.status = 'active'
BEGIN
    UPDATE ml_models SET status = 'deprecated', deprecated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        WHERE model_id = NEW.model_id;
END;
CREATE TRIGGER ml_models_status_matches BEFORE UPDATE OF status ON ml_models
    WHEN NEW.is_active <> (NEW.status = 'active')
        AND NOT (NEW.is_active IS NOT OLD.is_active)
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: ml_models_active_status');
END;

-- The canary's share of requests (by routing key), and the shadow's share mirrored to it.
ALTER TABLE ml_models ADD COLUMN rollout_percentage INTEGER NOT NULL DEFAULT 0
    CHECK (rollout_percentage BETWEEN 0 AND 100);
ALTER TABLE ml_models ADD COLUMN shadow_percentage INTEGER NOT NULL DEFAULT 0
    CHECK (shadow_percentage BETWEEN 0 AND 100);

-- Automatic rollback: an error rate above the threshold over the sliding window (once it holds
-- at least the minimum of requests) rolls the model back; NULL turns it off for the model. An
-- optional p99 latency threshold over the same window.
ALTER TABLE ml_models ADD COLUMN rollback_threshold REAL DEFAULT 0.05
    CHECK (rollback_threshold IS NULL OR (rollback_threshold >= 0 AND rollback_threshold <= 1));
ALTER TABLE ml_models ADD COLUMN rollback_min_samples INTEGER NOT NULL DEFAULT 100
    CHECK (rollback_min_samples >= 1);
ALTER TABLE ml_models ADD COLUMN rollback_window_secs INTEGER NOT NULL DEFAULT 60
    CHECK (rollback_window_secs >= 1);
ALTER TABLE ml_models ADD COLUMN rollback_p99_ms REAL
    CHECK (rollback_p99_ms IS NULL OR rollback_p99_ms > 0);

-- Stable: served as the active model through its watch period without a rollback.
ALTER TABLE ml_models ADD COLUMN is_stable BOOLEAN NOT NULL DEFAULT FALSE;
