//! The served model behind an `ArcSwap`.
//!
//! Why ArcSwap: every request reads the slot, swaps are rare. `load_full()` is a few atomic
//! operations, never blocks and never waits for a swap; the request keeps its `Arc` for its whole
//! life, so a swap can neither fail nor split an in-flight request, and the old model is freed
//! when the last request holding it ends.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::LoadedModel;
use crate::registry::ModelRecord;

/// A loaded model together with the registry record it was loaded for.
#[derive(Debug)]
pub struct ServedModel {
    /// The registry record as it was when the model was loaded.
    pub record: ModelRecord,
    /// The loaded, warmed-up model.
    pub model: LoadedModel,
}

impl ServedModel {
    /// A model that is not in any registry (benchmarks and tests): a record is made up for it
    /// from the loaded file.
    pub fn unregistered(name: &str, model: LoadedModel) -> Self {
        let now = chrono::Utc::now();
        let record = ModelRecord {
            model_id: 0,
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
        };
        Self { record, model }
    }
}

/// Holds the served model. Empty until the first model is published, never empty after.
#[derive(Debug)]
pub struct Slot {
    current: ArcSwapOption<ServedModel>,
    /// Tells watchers (health) which model is served; `None` until the first publish.
    changes: watch::Sender<Option<i64>>,
}

impl Default for Slot {
    fn default() -> Self {
        Self::new()
    }
}

impl Slot {
    /// An empty slot.
    pub fn new() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            changes: watch::Sender::new(None),
        }
    }

    /// The served model, if any. One call per request: keep the `Arc` for the whole request.
    pub fn load(&self) -> Option<Arc<ServedModel>> {
        self.current.load_full()
    }

    /// Publishes a model that already loaded and warmed up. Never fails.
    pub fn publish(&self, model: Arc<ServedModel>) {
        let id = model.record.model_id;
        self.current.store(Some(model));
        self.changes.send_replace(Some(id));
    }

    /// Follows publishes: the id of the served model, `None` before the first.
    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(file: &str, id: i64) -> Arc<ServedModel> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(file);
        let mut served = ServedModel::unregistered(
            file,
            crate::model::load_model(&path, None, crate::model::EngineSettings::default()).unwrap(),
        );
        served.record.model_id = id;
        Arc::new(served)
    }

    #[test]
    fn old_model_lives_until_its_last_request_ends() {
        let slot = Slot::new();
        assert!(slot.load().is_none());
        let changes = slot.subscribe();
        slot.publish(served("digits_v1.onnx", 1));
        assert_eq!(*changes.borrow(), Some(1));

        let in_flight = slot.load().unwrap();
        let old = Arc::downgrade(&in_flight);
        slot.publish(served("digits_v2.onnx", 2));
        assert_eq!(
            slot.load().unwrap().record.model_id,
            2,
            "new requests see the new model"
        );
        assert_eq!(in_flight.record.model_id, 1, "the in-flight request keeps its model");
        assert!(old.upgrade().is_some());
        drop(in_flight);
        assert!(
            old.upgrade().is_none(),
            "the old model is freed when its last request ends"
        );
        assert_eq!(*changes.borrow(), Some(2));
    }
}
