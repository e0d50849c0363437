//! The serving set (the active model, and later a canary and a shadow) behind an `ArcSwap`.
//!
//! Why ArcSwap: every request reads the slot, swaps are rare. `load_full()` is a few atomic
//! operations, never blocks and never waits for a swap; the request keeps the model it resolved
//! from that one snapshot for its whole life, so a swap can neither fail nor split an in-flight
//! request, and an old model is freed when the last request holding it ends. The whole set is
//! one value: a rollout change (a new canary and its percentage) is seen whole or not at all.

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

/// A model served beside the active one for a share of requests (the canary, the shadow).
#[derive(Debug, Clone)]
pub struct Weighted {
    /// The model.
    pub model: Arc<ServedModel>,
    /// Its share of requests, 0-100.
    pub percentage: u8,
}

/// Everything a server serves, swapped as one value so that a request never sees half of a
/// rollout change: the active model, and the canary and the shadow with their percentages
/// (set by `ops/rollout.rs` and the reload task from the registry's rollout columns).
#[derive(Debug)]
pub struct ServingSet {
    /// The active model.
    pub active: Arc<ServedModel>,
    /// The canary and its share of requests.
    pub canary: Option<Weighted>,
    /// The shadow and the share of requests mirrored to it.
    pub shadow: Option<Weighted>,
}

impl ServingSet {
    /// A set of the active model alone.
    pub fn only(active: Arc<ServedModel>) -> Self {
        Self {
            active,
            canary: None,
            shadow: None,
        }
    }
}

/// Holds the serving set. Empty until the first model is published, never empty after.
#[derive(Debug)]
pub struct Slot {
    current: ArcSwapOption<ServingSet>,
    /// Tells watchers (health) which model is active; `None` until the first publish.
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

    /// The serving set, if any. One call per request: the request resolves its model from this
    /// one snapshot ([`crate::serving::route`]) and keeps that `Arc` for its whole life.
    pub fn load(&self) -> Option<Arc<ServingSet>> {
        self.current.load_full()
    }

    /// The active model, if any (for callers that want nothing else of the set).
    pub fn active(&self) -> Option<Arc<ServedModel>> {
        self.current.load().as_ref().map(|set| Arc::clone(&set.active))
    }

    /// Publishes a set whose models already loaded and warmed up. Never fails.
    pub fn publish(&self, set: Arc<ServingSet>) {
        let id = set.active.record.model_id;
        self.current.store(Some(set));
        self.changes.send_replace(Some(id));
    }

    /// Makes `model` the active model, keeping the rest of the set as it is (but for a canary
    /// or shadow that is this model: it is the active one now). Never fails.
    pub fn publish_active(&self, model: Arc<ServedModel>) {
        let id = model.record.model_id;
        let other = |w: &Option<Weighted>| w.clone().filter(|w| w.model.record.model_id != id);
        self.current.rcu(|current| {
            let (canary, shadow) = current
                .as_ref()
                .map_or((None, None), |set| (other(&set.canary), other(&set.shadow)));
            Some(Arc::new(ServingSet {
                active: Arc::clone(&model),
                canary,
                shadow,
            }))
        });
        self.changes.send_replace(Some(id));
    }

    /// Sets the canary and the shadow, keeping the active model. Does nothing before the first
    /// model is published (a rollout needs an active model to route beside). Never fails.
    pub fn publish_rollout(&self, canary: Option<Weighted>, shadow: Option<Weighted>) {
        self.current.rcu(|current| {
            current.as_ref().map(|set| {
                Arc::new(ServingSet {
                    active: Arc::clone(&set.active),
                    canary: canary.clone(),
                    shadow: shadow.clone(),
                })
            })
        });
    }

    /// Follows publishes: the id of the active model, `None` before the first.
    pub fn subscribe(&self) -> watch::Receiver<Option<i64>> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(file: &str, id: i64) -> Arc<ServedModel> {
        crate::testing::bundled(file, file, id)
    }

    #[test]
    fn old_model_lives_until_its_last_request_ends() {
        let slot = Slot::new();
        assert!(slot.load().is_none());
        let changes = slot.subscribe();
        slot.publish_active(served("digits_v1.onnx", 1));
        assert_eq!(*changes.borrow(), Some(1));

        let in_flight = slot.active().unwrap();
        let old = Arc::downgrade(&in_flight);
        slot.publish_active(served("digits_v2.onnx", 2));
        assert_eq!(
            slot.active().unwrap().record.model_id,
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

#[cfg(test)]
mod set_tests {
    use super::*;

    #[test]
    fn a_new_active_model_keeps_the_rest_of_the_set() {
        let model = |id| crate::testing::bundled("digits_v1.onnx", "m", id);
        let slot = Slot::new();
        slot.publish(Arc::new(ServingSet {
            active: model(1),
            canary: Some(Weighted {
                model: model(2),
                percentage: 10,
            }),
            shadow: None,
        }));
        let before = slot.load().unwrap();
        slot.publish_active(model(3));
        let after = slot.load().unwrap();
        assert_eq!(after.active.record.model_id, 3);
        assert_eq!(
            after.canary.as_ref().map(|c| (c.model.record.model_id, c.percentage)),
            Some((2, 10))
        );
        assert_eq!(
            before.active.record.model_id, 1,
            "a snapshot taken before is whole and unchanged"
        );
    }
}
