-- The oldest app version that may use a model (guide 000: min_app_version), for the
-- model-config endpoint that devices poll: one for every platform, and optionally one per
-- platform (a JSON object such as {"ios": "2.3.0"}, chosen by the X-App-Platform header).
-- Keep in step with migrations/sqlite/0007_min_app_version.sql.
ALTER TABLE ml_models ADD COLUMN min_app_version TEXT;
ALTER TABLE ml_models ADD COLUMN min_app_versions TEXT NOT NULL DEFAULT '{}'
    CHECK (min_app_versions::jsonb IS NOT NULL AND jsonb_typeof(min_app_versions::jsonb) = 'object');
