//! The catalogue: what transports list and show, read from the registry and from what this
//! server serves. Reads only; every change goes through [`super::Activation`] or
//! [`super::Rollout`].

use std::path::PathBuf;
use std::sync::Arc;

use super::Catalogue;
use crate::error::Result;
use crate::model::slot::{ServedModel, ServingSet};
use crate::model::{EngineKind, ModelRoot};
use crate::registry::activations::ActivationRecord;
use crate::registry::rollout::{Rollout, RolloutChangeRecord};
use crate::registry::servers::ServerEntry;
use crate::registry::{
    Deployment, DeploymentSummary, EvaluationRecord, EventRecord, ModelRecord, ModelRef, Order, RolloutRole,
};
use crate::status::{Status, StatusSnapshot};

impl Catalogue {
    /// The catalogue, answering `Unavailable` at once while the registry is known to be
    /// unreachable (instead of after the connection pool's timeout), for a question only the
    /// registry can answer.
    ///
    /// # Errors
    /// `Unavailable` while the registry is unreachable.
    pub fn reachable(&self) -> Result<&Self> {
        self.core.reachable_registry().map(|_| self)
    }

    /// One registered model.
    ///
    /// # Errors
    /// `NotFound` for an unknown model; `Unavailable` when the registry cannot be read.
    pub async fn get(&self, model: &ModelRef) -> Result<ModelRecord> {
        self.core.registry.get(model).await
    }

    /// The model the registry names as active.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn active(&self) -> Result<Option<ModelRecord>> {
        self.core.registry.active().await
    }

    /// A page of registered models.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn list(&self, order: Order, descending: bool, limit: i64, offset: i64) -> Result<Vec<ModelRecord>> {
        self.core.registry.list(order, descending, limit, offset).await
    }

    /// Every deployment, with its model count and active model.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn deployments(&self) -> Result<Vec<DeploymentSummary>> {
        self.core.registry.deployments().await
    }

    /// One deployment.
    ///
    /// # Errors
    /// `NotFound` for an unknown name; `Unavailable` when the registry cannot be read.
    pub async fn deployment(&self, name: &str) -> Result<Deployment> {
        self.core.registry.deployment(name).await
    }

    /// How many models are registered.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn count(&self) -> Result<i64> {
        self.core.registry.count().await
    }

    /// The latest evaluation of `model_id` (on the dataset with `dataset_sha256`).
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn latest_evaluation(
        &self,
        model_id: i64,
        dataset_sha256: Option<&str>,
    ) -> Result<Option<EvaluationRecord>> {
        self.core.registry.latest_evaluation(model_id, dataset_sha256).await
    }

    /// The latest evaluation of each of `model_ids` that has one.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn latest_evaluations(&self, model_ids: &[i64]) -> Result<Vec<EvaluationRecord>> {
        self.core.registry.latest_evaluations(model_ids).await
    }

    /// `model_id`'s evaluations, newest first.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn evaluations_of(&self, model_id: i64, limit: i64) -> Result<Vec<EvaluationRecord>> {
        self.core.registry.evaluations_of(model_id, limit).await
    }

    /// The activations of `model_id` (to it or from it), newest first.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn activations_of(&self, model_id: i64, limit: i64) -> Result<Vec<ActivationRecord>> {
        self.core.registry.activations_of(model_id, limit).await
    }

    /// The activation history, newest first.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn activations(&self, limit: i64) -> Result<Vec<ActivationRecord>> {
        self.core.registry.activations(limit).await
    }

    /// The canary and the shadow the registry names.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn rollout(&self) -> Result<Rollout> {
        self.core.registry.rollout().await
    }

    /// The rollout's history (of `role`, or both), newest first.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn rollout_changes(&self, role: Option<RolloutRole>, limit: i64) -> Result<Vec<RolloutChangeRecord>> {
        self.core.registry.rollout_changes(role, limit).await
    }

    /// The registry's generation (it grows with every change).
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn generation(&self) -> Result<i64> {
        self.core.registry.generation().await
    }

    /// The servers of the fleet, as they last reported.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn servers(&self) -> Result<Vec<ServerEntry>> {
        self.core.registry.servers().await
    }

    /// The id of the newest event (0: none yet).
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn last_event_id(&self) -> Result<i64> {
        self.core.registry.last_event_id().await
    }

    /// Up to `limit` events after `after`, oldest first.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>> {
        self.core.registry.events_after(after, limit).await
    }

    /// This process's name in the fleet (and in the events it writes).
    pub fn server_name(&self) -> &str {
        &self.core.registry.origin().server
    }

    /// The active model this server serves now.
    pub fn served(&self) -> Option<Arc<ServedModel>> {
        self.core.slot.active()
    }

    /// What this server serves now: the active model, the canary and the shadow.
    pub fn serving_set(&self) -> Option<Arc<ServingSet>> {
        self.core.slot.load()
    }

    /// Changes each time this server publishes a model.
    pub fn subscribe_published(&self) -> tokio::sync::watch::Receiver<Option<i64>> {
        self.core.slot.subscribe()
    }

    /// What this process knows about its reloads.
    pub fn status(&self) -> StatusSnapshot {
        self.core.status.snapshot()
    }

    /// This process's reload status, to follow it.
    pub fn status_handle(&self) -> &Arc<Status> {
        &self.core.status
    }

    /// The model root.
    pub fn root(&self) -> &ModelRoot {
        &self.core.root
    }

    /// The local file that holds `record`'s model: under the model root, or for an object URI
    /// the verified copy in the object cache (fetched if it is not there).
    ///
    /// # Errors
    /// As [`ModelRoot::resolve`] and [`crate::model::objects::Objects::fetch`].
    pub async fn record_file(&self, record: &ModelRecord) -> Result<PathBuf> {
        self.core.record_file(record).await
    }

    /// The engine that computes `record`'s model: the served model's own, else the one a load
    /// here would try first (the preferred engine when its library is loaded, else tract).
    pub fn engine_for(&self, record: &ModelRecord) -> EngineKind {
        match self.core.slot.active() {
            Some(served) if served.record.model_id == record.model_id => served.model.engine.kind(),
            _ if self.core.engine.preferred.wants_onnxruntime()
                && matches!(crate::model::engine::onnxruntime_status(), Some(Ok(_))) =>
            {
                EngineKind::Onnxruntime
            }
            _ => EngineKind::Tract,
        }
    }

    /// The registered models this server holds loaded as candidates.
    pub fn cached_candidates(&self) -> Vec<crate::model::cache::CachedCandidate> {
        self.core.candidates.cached()
    }

    /// The object cache's counters.
    pub fn object_counts(&self) -> &crate::model::objects::Counts {
        self.core.objects.counts()
    }
}
