//! The unit tests' fixture: a bundled model (`models/`) loaded and served under a record made
//! up for it. Built only for tests.

use std::sync::Arc;

use crate::model::slot::ServedModel;
use crate::model::{EngineSettings, load_model};
use crate::registry::ModelRecord;

/// `models/<file>` loaded with the default engine, served as `name` with id `id` (a record made
/// up from the file: registered, not active, no version).
pub(crate) fn bundled(file: &str, name: &str, id: i64) -> Arc<ServedModel> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(file);
    let model = load_model(&path, None, EngineSettings::default()).unwrap();
    let now = chrono::Utc::now();
    let record = ModelRecord {
        model_id: id,
        model_name: name.into(),
        version: String::new(),
        file_path: String::new(),
        description: String::new(),
        model_type: String::new(),
        accuracy: None,
        checksum_sha256: model.sha256.clone(),
        file_size_bytes: i64::try_from(model.size_bytes).unwrap_or(i64::MAX),
        signature: model.signature.to_json(),
        is_active: false,
        created_at: now,
        updated_at: now,
        created_by: String::new(),
        status: "registered".into(),
        rollout_percentage: 0,
        shadow_percentage: 0,
        rollback_threshold: None,
        rollback_min_samples: 1,
        rollback_window_secs: 60,
        rollback_p99_ms: None,
        is_stable: false,
        deprecated_at: None,
        min_app_version: None,
        min_app_versions: "{}".into(),
        deployment_id: 1,
    };
    Arc::new(ServedModel { record, model })
}
