-- The rollout history: every change of a canary's or a shadow's percentage, who made it and
-- why, including the automatic rollback that sets a failing canary to 0 % (an activation goes
-- to model_activations; this table is for the rollout roles). Keep in step with
-- migrations/postgres/0006_rollout_history.sql.
CREATE TABLE rollout_changes (
    change_id         INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id          INTEGER REFERENCES ml_models (model_id) ON DELETE SET NULL,
    model_name        TEXT    NOT NULL,
    role              TEXT    NOT NULL CHECK (role IN ('canary', 'shadow')),
    -- NULL: the model did not hold the role before (after: it left the role).
    percentage_before INTEGER CHECK (percentage_before BETWEEN 0 AND 100),
    percentage_after  INTEGER CHECK (percentage_after BETWEEN 0 AND 100),
    changed_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    changed_by        TEXT    NOT NULL DEFAULT '',
    reason            TEXT    NOT NULL DEFAULT '',
    is_automatic      INTEGER NOT NULL DEFAULT 0 CHECK (is_automatic IN (0, 1))
);

CREATE INDEX rollout_changes_recent ON rollout_changes (change_id DESC);
