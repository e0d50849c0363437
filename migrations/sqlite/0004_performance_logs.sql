-- Evaluations (guide 001's model_performance_logs): one row per `modeld evaluate` /
-- EvaluateModel / `modeld compare` run of a model on a labelled dataset. Rows outlive the model
-- record (model_id becomes NULL; the name stays), as the activation history does.
CREATE TABLE model_performance_logs (
    log_id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id        INTEGER REFERENCES ml_models (model_id) ON DELETE SET NULL,
    model_name      TEXT    NOT NULL,
    model_sha256    TEXT    NOT NULL,
    dataset_name    TEXT    NOT NULL,
    dataset_sha256  TEXT    NOT NULL CHECK (length(dataset_sha256) = 64),
    evaluated_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    accuracy        REAL    NOT NULL CHECK (accuracy >= 0 AND accuracy <= 1),
    top3_accuracy   REAL    CHECK (top3_accuracy IS NULL OR (top3_accuracy >= 0 AND top3_accuracy <= 1)),
    sample_size     INTEGER NOT NULL CHECK (sample_size > 0),
    latency_mean_us REAL    NOT NULL,
    latency_p50_us  REAL    NOT NULL,
    latency_p99_us  REAL    NOT NULL,
    details         TEXT    NOT NULL DEFAULT '{}',
    notes           TEXT    NOT NULL DEFAULT '',
    evaluated_by    TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX model_performance_logs_latest ON model_performance_logs (model_id, log_id DESC);
