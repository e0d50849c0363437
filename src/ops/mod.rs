//! The model operations every front end shares (gRPC API, CLI, start-up, the reload task), one
//! file a job: [`register`](Control::register) and the other record changes in `register.rs`,
//! activation and the conditional rollback in `activate.rs`, canary, shadow and promote in
//! `rollout.rs`, the automatic rollback's windows in `guard.rs`, following the registry and the
//! model file in `reconcile.rs`, evaluation and comparison in `evaluate.rs`, a request's route
//! to its model in `request.rs`, a change's wait until the fleet serves it in `served.rs`, the
//! event stream in `events.rs` and the model-config endpoint's answer in `client_config.rs`.
//! [`Control`] holds what they share: the registry, the model root, the served slot, the
//! activation lock, this server's status, statistics and executor.
//!
//! Activation order: resolve the record, confine its path, load + verify sha256 + warm up off to
//! the side, commit the registry transaction, and only then publish into the slot. Any failure
//! before the commit leaves the registry and the served model exactly as they were.

mod activate;
mod client_config;
mod evaluate;
mod events;
mod guard;
mod reconcile;
mod register;
mod request;
mod rollout;
mod served;

use std::path::{Component, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;

pub use self::activate::Gates;
pub use self::client_config::{ClientConfig, platform};
pub use self::evaluate::{Comparison, EvaluateOptions, Evaluated};
pub use self::guard::GuardWindow;
pub use self::reconcile::{FileSync, RegistrySync};
pub use self::register::{Registered, Registration};
pub use self::served::{DEFAULT_WAIT, MAX_WAIT};
use crate::error::{Error, FileProblem, Result};
use crate::model::cache::{CandidateLimits, Candidates};
use crate::model::slot::ServedModel;
use crate::model::{EngineKind, EngineSettings, LoadedModel, ModelRoot, Slot, load_model_named};
use crate::registry::activations::signature_refusal;
pub use crate::registry::name::ACTIVE_ALIAS;
use crate::registry::name::quoted;
use crate::registry::{EventKind, ModelRecord, Registry};
use crate::serving::Executor;
use crate::serving::shadow::Shadows;
use crate::serving::stats::Stats;
use crate::status::Status;

/// The outcome of an activation.
#[derive(Debug, Clone)]
pub struct ActivationOutcome {
    /// The model now active.
    pub active: ModelRecord,
    /// The model active before, if any.
    pub previous: Option<ModelRecord>,
    /// Time to read, verify, load and warm up the model (zero when it was already served).
    pub load_time: Duration,
    /// It was already the active model: nothing changed (`previous` is `None`).
    pub already_active: bool,
}

/// Registry + model root + served slot, and the lock that orders activations in this process.
#[derive(Debug)]
pub struct Control {
    registry: Registry,
    root: ModelRoot,
    objects: Arc<crate::model::objects::Objects>,
    slot: Arc<Slot>,
    /// Held from load to publish so that two activations in this process publish in the order
    /// they committed (an older model can never be published over a newer one).
    activation: Mutex<()>,
    /// What this process knows about its reloads (GetServerStatus).
    status: Arc<Status>,
    /// Whether this process serves requests (a server) or only edits the registry (the CLI).
    serving: bool,
    /// Requests being computed.
    in_flight: AtomicU64,
    /// Per-model inference statistics.
    stats: Stats,
    /// Where inference runs; only a serving process has one.
    executor: Option<Executor>,
    /// Which engine models are loaded for.
    engine: EngineSettings,
    /// Registered models that are not active, loaded when a request names them.
    candidates: Candidates,
    /// Where mirrored requests run; only a serving process has it.
    shadows: Option<Shadows>,
    /// The automatic rollback's windows.
    guard: guard::Guard,
    /// Signing keys of download URLs, and their bounds.
    downloads: crate::signing::DownloadConfig,
    /// The bearer tokens requests must carry (none: no check).
    access: Arc<crate::auth::Access>,
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Control {
    /// Wires the parts together.
    pub fn new(registry: Registry, root: ModelRoot, slot: Arc<Slot>) -> Self {
        Self {
            registry,
            root,
            objects: Arc::default(),
            slot,
            activation: Mutex::new(()),
            status: Arc::new(Status::default()),
            serving: false,
            in_flight: AtomicU64::new(0),
            stats: Stats::default(),
            executor: None,
            engine: EngineSettings::default(),
            candidates: Candidates::new(CandidateLimits::default()),
            shadows: None,
            guard: guard::Guard::new(Duration::from_secs(600)),
            downloads: crate::signing::DownloadConfig::default(),
            access: Arc::default(),
        }
    }

    /// Keeps copies of models in object storage in `objects`.
    pub fn with_objects(mut self, objects: Arc<crate::model::objects::Objects>) -> Self {
        self.objects = objects;
        self
    }

    /// The object cache.
    pub fn objects(&self) -> &Arc<crate::model::objects::Objects> {
        &self.objects
    }

    /// Checks requests against `access`' tokens.
    pub fn with_access(mut self, access: Arc<crate::auth::Access>) -> Self {
        self.access = access;
        self
    }

    /// The access check.
    pub fn access(&self) -> &Arc<crate::auth::Access> {
        &self.access
    }

    /// Signs download URLs with `downloads`' keys.
    pub fn with_downloads(mut self, downloads: crate::signing::DownloadConfig) -> Self {
        self.downloads = downloads;
        self
    }

    /// The signing keys and bounds of download URLs.
    pub fn downloads(&self) -> &crate::signing::DownloadConfig {
        &self.downloads
    }

    /// Watches a freshly activated model for `watch` (the automatic rollback acts within it).
    pub fn with_rollback_watch(mut self, watch: Duration) -> Self {
        self.guard = guard::Guard::new(watch);
        self
    }

    /// Runs mirrored requests on `shadows` (a serving process).
    pub fn with_shadows(mut self, shadows: Shadows) -> Self {
        self.shadows = Some(shadows);
        self
    }

    /// The shadow runner, in a serving process.
    pub fn shadows(&self) -> Option<&Shadows> {
        self.shadows.as_ref()
    }

    /// Bounds the cache of candidates (registered models that are not active, loaded when a
    /// request names them).
    pub fn with_candidates(mut self, limits: CandidateLimits) -> Self {
        self.candidates = Candidates::new(limits);
        self
    }

    /// The candidate cache.
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// Per-model inference statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The executor, in a serving process.
    pub fn executor(&self) -> Option<&Executor> {
        self.executor.as_ref()
    }

    /// Marks this control as the one of a server that runs inference on `executor`, with
    /// models loaded for `engine`: publishes are recorded as `reloaded` events.
    pub fn serving(mut self, executor: Executor, engine: EngineSettings) -> Self {
        self.serving = true;
        self.executor = Some(executor);
        self.engine = engine;
        self
    }

    /// Which engine models are loaded for.
    pub fn engine_settings(&self) -> EngineSettings {
        self.engine
    }

    /// The engine that computes `record`'s model: the served model's own, else the one a load
    /// here would try first (the preferred engine when its library is loaded, else tract).
    pub fn engine_for(&self, record: &ModelRecord) -> EngineKind {
        match self.slot.active() {
            Some(served) if served.record.model_id == record.model_id => served.model.engine.kind(),
            _ if self.engine.preferred.wants_onnxruntime()
                && matches!(crate::model::engine::onnxruntime_status(), Some(Ok(_))) =>
            {
                EngineKind::Onnxruntime
            }
            _ => EngineKind::Tract,
        }
    }

    /// This process's reload status.
    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Counts one request as in flight while the guard lives.
    pub fn track_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Requests being computed right now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The registry, for a question only it can answer: `Unavailable` at once while it is
    /// known to be unreachable, instead of after the connection pool's timeout.
    ///
    /// # Errors
    /// `Unavailable` while the registry is unreachable.
    pub fn reachable_registry(&self) -> Result<&Registry> {
        if self.status.registry_reachable() {
            Ok(&self.registry)
        } else {
            Err(Error::Unavailable(
                "the model registry is unreachable (what this server serves still answers); try again later".into(),
            ))
        }
    }

    /// Refuses to make `candidate` (of signature `next`) the active model when that would break
    /// the clients of the model the registry names as active now. (The activation's commit
    /// checks the same again, against the model active then.)
    ///
    /// # Errors
    /// `FailedPrecondition` with both signatures and what breaks.
    async fn check_signature(&self, candidate: &str, next: &crate::model::Signature) -> Result<()> {
        let Some(active) = self.registry.active().await? else {
            return Ok(());
        };
        if active.model_name == candidate {
            return Ok(());
        }
        match signature_refusal(candidate, next, &active.model_name, &active.signature()?) {
            Some(refused) => Err(refused),
            None => Ok(()),
        }
    }

    /// The served slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The model root.
    pub fn root(&self) -> &ModelRoot {
        &self.root
    }

    /// Loads a registered model, verifying the file against the registry's checksum. A stored
    /// path that escapes the root (a hand-edited registry) is a precondition failure here.
    async fn load_record(&self, record: &ModelRecord) -> Result<LoadedModel> {
        let path = self.model_file(record).await?;
        load_blocking(
            path,
            &record.file_path,
            Some(record.checksum_sha256.clone()),
            self.engine,
        )
        .await
    }

    /// The local file that holds `record`'s model: under the model root, or for an object URI
    /// the verified copy in the object cache (fetched if it is not there).
    ///
    /// # Errors
    /// As [`ModelRoot::resolve`] and [`crate::model::objects::Objects::fetch`].
    pub async fn record_file(&self, record: &ModelRecord) -> Result<PathBuf> {
        if crate::model::objects::is_uri(&record.file_path) {
            let f = self
                .objects
                .fetch(&record.file_path, Some(&record.checksum_sha256))
                .await?;
            return Ok(f.path);
        }
        self.root.resolve(&record.file_path)
    }

    /// [`Control::record_file`] for a load: a path the root refuses is the record's problem
    /// (`FailedPrecondition`), not the request's.
    async fn model_file(&self, record: &ModelRecord) -> Result<PathBuf> {
        if crate::model::objects::is_uri(&record.file_path) {
            return self.record_file(record).await;
        }
        self.record_path(record)
    }

    /// Where `record`'s file is, confined to the model root.
    fn record_path(&self, record: &ModelRecord) -> Result<PathBuf> {
        self.root.resolve(&record.file_path).map_err(|e| match e {
            Error::InvalidArgument(m) => {
                Error::FailedPrecondition(format!("model {}: {m}", quoted(&record.model_name)))
            }
            other => other,
        })
    }

    /// Whether the slot serves exactly this record's model and file.
    fn serves(&self, record: &ModelRecord) -> bool {
        self.slot
            .active()
            .is_some_and(|s| s.record.model_id == record.model_id && s.record.checksum_sha256 == record.checksum_sha256)
    }

    /// Status and event for a model this server published through its own API.
    async fn published_by_api(&self, record: &ModelRecord) {
        if !self.serving {
            return;
        }
        self.status.record_reload("api", record);
        if let Err(e) = self
            .registry
            .add_event(EventKind::Reloaded, Some(record), "api", "")
            .await
        {
            tracing::warn!(error = %e, "cannot record the reload event");
        }
        self.status.wake_events();
    }

    fn publish(&self, record: ModelRecord, model: LoadedModel) {
        let (engine, note) = (model.engine.kind(), model.engine_note.as_deref().unwrap_or(""));
        let (name, version) = (&record.model_name, &record.version);
        let cost_us = model.cost.as_micros() as u64;
        if !model.engine_fell_back {
            tracing::info!(
                note,
                batchable = model.batchable,
                "serving {} version {} (id {}) on {engine}, {cost_us} µs a request",
                quoted(name),
                quoted(version),
                record.model_id
            );
        } else {
            // Not what the operator asked for: worth a warning.
            tracing::warn!(model = %name, %version, %engine, note, cost_us, batchable = model.batchable, "serving with {engine}: {note}");
        }
        // A cached candidate that became the active model serves from the set now.
        self.candidates.forget(record.model_id);
        if !self.serves(&record) {
            self.guard.begin(record.model_id, true);
        }
        self.slot.publish_active(Arc::new(ServedModel { record, model }));
    }
}

/// Runs the CPU-heavy load on a blocking thread; a panic inside tract becomes an error, never a
/// crash and never a published model. Messages name the file as `shown` (root-relative). The
/// load's scratch memory goes back to the system as soon as it is done.
async fn load_blocking(
    path: PathBuf,
    shown: &str,
    expected_sha256: Option<String>,
    engine: EngineSettings,
) -> Result<LoadedModel> {
    let shown = shown.to_string();
    tokio::task::spawn_blocking(move || {
        let loaded = load_model_named(&path, &shown, expected_sha256.as_deref(), engine);
        crate::model::memory::release_freed();
        loaded
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "loading a model panicked");
        Error::model_file(
            FileProblem::NotLoadable,
            "loading the model crashed; see the server log",
        )
    })?
}

fn validate_accuracy(accuracy: Option<f64>) -> Result<()> {
    match accuracy {
        Some(a) if !(0.0..=1.0).contains(&a) => Err(Error::InvalidArgument(format!(
            "accuracy must be between 0 and 1, got {a}"
        ))),
        _ => Ok(()),
    }
}

/// `./a//b.onnx` -> `a/b.onnx`, after refusing escapes.
fn normalise(rel: &str) -> Result<String> {
    let p = ModelRoot::check_relative(rel)?;
    let clean: PathBuf = p.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    clean
        .to_str()
        .map(str::to_owned)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::InvalidArgument(format!("file_path {rel:?} names no file")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_is_checked() {
        assert!(validate_accuracy(Some(0.5)).is_ok());
        assert!(validate_accuracy(None).is_ok());
        for bad in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert!(validate_accuracy(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise("./a//b.onnx").unwrap(), "a/b.onnx");
        assert!(normalise("../a.onnx").is_err());
        assert!(normalise(".").is_err());
    }
}
