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
