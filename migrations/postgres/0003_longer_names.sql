-- Model names as people write them: up to 255 characters (was 128), as the guide's
-- VARCHAR(255). length() counts characters, as in SQLite. Every existing name stays valid.
ALTER TABLE ml_models DROP CONSTRAINT ml_models_model_name_check;
ALTER TABLE ml_models ADD CONSTRAINT ml_models_model_name_check CHECK (length(model_name) BETWEEN 1 AND 255);
