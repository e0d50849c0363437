//! The model operations every front end shares (gRPC API, CLI, start-up): register, activate,
//! roll back, update, delete, and choosing the model for a request.
//!
//! Activation order: resolve the record, confine its path, load + verify sha256 + warm up off to
//! the side, commit the registry transaction, and only then publish into the slot. Any failure
//! before the commit leaves the registry and the served model exactly as they were.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::{Error, FileProblem, Result};
use crate::model::slot::ServedModel;
use crate::model::{EngineKind, EngineSettings, LoadedModel, ModelRoot, Slot, load_model_named};
use crate::registry::{ActivationMeta, EventKind, ModelChanges, ModelRecord, ModelRef, NewModel, Registry};
use crate::serving::stats::Stats;
use crate::serving::{self, Executor, Inference, InputRef};
use crate::watch::Status;

use crate::registry::name;
pub use crate::registry::name::ACTIVE_ALIAS;

/// A registration request.
#[derive(Debug, Clone, Default)]
pub struct Registration {
    /// Unique name: printable Unicode, spaces inside, up to 255 characters (see
    /// [`name::normalise_name`]); stored NFC-normalised.
    pub name: String,
    /// Path relative to the model root.
    pub file_path: String,
    /// Version label.
    pub version: String,
    /// Free text.
    pub description: String,
    /// Free text.
    pub model_type: String,
    /// 0..1.
    pub accuracy: Option<f64>,
    /// Who registers.
    pub created_by: String,
    /// Activate right away (same transaction as the insert).
    pub activate: bool,
}

/// The outcome of an activation.
#[derive(Debug, Clone)]
pub struct ActivationOutcome {
    /// The model now active.
    pub active: ModelRecord,
    /// The model active before, if any.
    pub previous: Option<ModelRecord>,
    /// Time to read, verify, load and warm up the model (zero when it was already served).
    pub load_time: Duration,
}

/// What a reload from the registry did.
#[derive(Debug, Clone)]
pub enum RegistrySync {
    /// The served model is what the registry names.
    InSync(ModelRecord),
    /// The registry names no active model: the served model (if any) keeps serving.
    NoActiveModel,
    /// The model the registry names was loaded and published.
    Reloaded(ModelRecord),
    /// The model the registry names cannot be loaded here; the served model stays.
    Failed(ModelRecord, Error),
}

/// What a reload after a file change did.
#[derive(Debug, Clone)]
pub enum FileSync {
    /// Nothing is served, or the file's bytes are those already served.
    Unchanged,
    /// The served model's file is gone; the model in memory keeps serving.
    Missing(ModelRecord),
    /// The new file was loaded, recorded in the registry and published.
    Reloaded(ModelRecord),
    /// The registry changed underneath; a registry reload decides what to serve.
    RegistryMoved,
}

/// The outcome of a registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The new record.
    pub model: ModelRecord,
    /// Set when activation was requested.
    pub activation: Option<ActivationOutcome>,
}

/// Registry + model root + served slot, and the lock that orders activations in this process.
#[derive(Debug)]
pub struct Control {
    registry: Registry,
    root: ModelRoot,
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
            slot,
            activation: Mutex::new(()),
            status: Arc::new(Status::default()),
            serving: false,
            in_flight: AtomicU64::new(0),
            stats: Stats::default(),
            executor: None,
            engine: EngineSettings::default(),
        }
    }

    /// Per-model inference statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Runs one inference request for `name` (empty or `active`: the active model): the one
    /// request path behind every API. Picks the model with one slot snapshot, validates, runs
    /// (not at all once `deadline` has passed), encodes (raw bytes when `raw_outputs`), and
    /// records statistics.
    ///
    /// # Errors
    /// As [`Control::model_for`] and [`serving::infer`]; `Unavailable` in a process that does
    /// not serve.
    pub async fn infer(
        &self,
        name: &str,
        inputs: &[InputRef<'_>],
        raw_outputs: bool,
        deadline: Option<Instant>,
    ) -> Result<Inference> {
        let _in_flight = self.track_request();
        let started = Instant::now();
        let Some(executor) = &self.executor else {
            return Err(Error::Unavailable("this process does not serve inference".into()));
        };
        let model = self.model_for(name).await?;
        match serving::infer(executor, Arc::clone(&model), inputs, raw_outputs, deadline).await {
            Ok(done) => {
                self.stats.success(
                    &model.record,
                    model.model.engine.kind(),
                    &done.timings,
                    started.elapsed(),
                );
                Ok(done)
            }
            Err(e) => {
                self.stats.failure(&model.record, &e, started.elapsed());
                Err(e)
            }
        }
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
        match self.slot.load() {
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

    /// The served slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// The model root.
    pub fn root(&self) -> &ModelRoot {
        &self.root
    }

    /// Registers a model: the file must exist under the root, is hashed and loaded once (a
    /// broken file is refused), and with `activate` becomes the active model in the same
    /// transaction, then is published.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad name, path or accuracy; `FailedPrecondition` for a missing or
    /// unloadable file; `AlreadyExists` for a duplicate name.
    pub async fn register(&self, reg: Registration) -> Result<Registered> {
        let model_name = name::normalise_name(&reg.name)?;
        validate_accuracy(reg.accuracy)?;
        let file_path = normalise(&reg.file_path)?;
        let path = self.root.resolve(&file_path)?;
        let _order = if reg.activate {
            Some(self.activation.lock().await)
        } else {
            None
        };
        let loaded = load_blocking(path, &file_path, None, self.engine).await?;
        let new = NewModel {
            model_name: model_name.clone(),
            version: reg.version,
            file_path,
            description: reg.description,
            model_type: reg.model_type,
            accuracy: reg.accuracy,
            checksum_sha256: loaded.sha256.clone(),
            file_size_bytes: i64::try_from(loaded.size_bytes).map_err(Error::internal)?,
            signature: loaded.signature.clone(),
            created_by: if reg.created_by.is_empty() {
                "api".into()
            } else {
                reg.created_by.clone()
            },
        };
        let meta = ActivationMeta {
            activated_by: new.created_by.clone(),
            reason: "registered with activate".into(),
            is_rollback: false,
        };
        let load_time = loaded.load_time;
        let committed = self.registry.insert(&new, reg.activate.then_some(&meta)).await?;
        tracing::info!(model = %model_name, version = %committed.active.version, sha256 = %loaded.sha256, "model registered");
        if !reg.activate {
            return Ok(Registered {
                model: committed.active,
                activation: None,
            });
        }
        self.publish(committed.active.clone(), loaded);
        self.published_by_api(&committed.active).await;
        Ok(Registered {
            model: committed.active.clone(),
            activation: Some(ActivationOutcome {
                active: committed.active,
                previous: committed.previous,
                load_time,
            }),
        })
    }

    /// Loads, verifies and warms up `model`, makes it the one active model in the registry, then
    /// publishes it. Activating the model that is already active and served changes nothing.
    ///
    /// # Errors
    /// `NotFound` for an unknown model; `FailedPrecondition` when its file is missing, changed
    /// (checksum) or cannot be loaded. On any error the registry and the served model are unchanged.
    pub async fn activate(&self, model: &ModelRef, meta: &ActivationMeta) -> Result<ActivationOutcome> {
        let _order = self.activation.lock().await;
        let record = self.registry.get(model).await?;
        self.activate_locked(record, meta).await
    }

    /// Activates the model that was active before the current one (from the activation
    /// history). Rolling back twice returns to where you started.
    ///
    /// # Errors
    /// `FailedPrecondition` when there is no earlier model or it was deleted; otherwise as
    /// [`Control::activate`].
    pub async fn rollback(&self, activated_by: &str, reason: &str) -> Result<ActivationOutcome> {
        let _order = self.activation.lock().await;
        let last = self.registry.last_activation().await?.ok_or_else(|| {
            Error::FailedPrecondition("nothing to roll back to: no model has been activated yet".into())
        })?;
        let target = match (last.previous_model_id, last.previous_name) {
            (Some(id), _) => id,
            (None, Some(name)) => {
                return Err(Error::FailedPrecondition(format!(
                    "cannot roll back to model {name:?}: its record was deleted"
                )));
            }
            (None, None) => {
                return Err(Error::FailedPrecondition(format!(
                    "nothing to roll back to: {:?} was the first model ever activated",
                    last.model_name
                )));
            }
        };
        let record = self.registry.get(&ModelRef::Id(target)).await?;
        let meta = ActivationMeta {
            activated_by: activated_by.to_string(),
            reason: if reason.is_empty() {
                format!("rollback from {:?}", last.model_name)
            } else {
                reason.to_string()
            },
            is_rollback: true,
        };
        self.activate_locked(record, &meta).await
    }

    async fn activate_locked(&self, record: ModelRecord, meta: &ActivationMeta) -> Result<ActivationOutcome> {
        if record.is_active && self.serves(&record) {
            return Ok(ActivationOutcome {
                active: record.clone(),
                previous: Some(record),
                load_time: Duration::ZERO,
            });
        }
        let loaded = self.load_record(&record).await?;
        let load_time = loaded.load_time;
        let committed = self.registry.activate(record.model_id, &loaded.sha256, meta).await?;
        tracing::info!(
            model = %committed.active.model_name,
            version = %committed.active.version,
            previous = committed.previous.as_ref().map(|p| p.model_name.as_str()).unwrap_or("none"),
            load_ms = load_time.as_secs_f64() * 1e3,
            by = %meta.activated_by,
            reason = %meta.reason,
            "model activated"
        );
        self.publish(committed.active.clone(), loaded);
        self.published_by_api(&committed.active).await;
        Ok(ActivationOutcome {
            active: committed.active,
            previous: committed.previous,
            load_time,
        })
    }

    /// Loads a registered model, verifying the file against the registry's checksum. A stored
    /// path that escapes the root (a hand-edited registry) is a precondition failure here.
    async fn load_record(&self, record: &ModelRecord) -> Result<LoadedModel> {
        let path = self.root.resolve(&record.file_path).map_err(|e| match e {
            Error::InvalidArgument(m) => Error::FailedPrecondition(format!("model {:?}: {m}", record.model_name)),
            other => other,
        })?;
        load_blocking(
            path,
            &record.file_path,
            Some(record.checksum_sha256.clone()),
            self.engine,
        )
        .await
    }

    /// Makes the slot serve what the registry names as active (reload source: another process,
    /// another server, a SQL console, or start-up). Holds the activation lock, and re-reads the
    /// registry after loading: a model the registry no longer names is never published, so an
    /// older model cannot be published after a newer one.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read; `FailedPrecondition` when the named model
    /// cannot be loaded (missing file, checksum mismatch, broken file). The slot is unchanged.
    pub async fn sync_with_registry(&self) -> Result<RegistrySync> {
        let _order = self.activation.lock().await;
        // Bounded: each round loads what the registry named; a registry that keeps moving is
        // followed again by the next trigger.
        for _ in 0..3 {
            let Some(record) = self.registry.active().await? else {
                return Ok(RegistrySync::NoActiveModel);
            };
            if self.serves(&record) {
                return Ok(RegistrySync::InSync(record));
            }
            let loaded = match self.load_record(&record).await {
                Ok(l) => l,
                Err(e) => return Ok(RegistrySync::Failed(record, e)),
            };
            let now = self.registry.active().await?;
            if now
                .as_ref()
                .is_some_and(|n| n.model_id == record.model_id && n.checksum_sha256 == record.checksum_sha256)
            {
                tracing::info!(model = %record.model_name, version = %record.version, load_ms = loaded.load_time.as_secs_f64() * 1e3, "model reloaded from the registry");
                self.publish(record.clone(), loaded);
                return Ok(RegistrySync::Reloaded(record));
            }
        }
        Err(Error::Unavailable(
            "the registry kept changing while loading; will retry".into(),
        ))
    }

    /// Handles a change of the served model's file on disk: a valid new file is loaded, warmed,
    /// recorded in the registry (checksum, size, signature, event) and published. A missing,
    /// half-written or corrupt file changes nothing. With `strict`, a file whose sha256 differs
    /// from the registry is refused.
    ///
    /// # Errors
    /// `FailedPrecondition` for a file that cannot be loaded or is refused by `strict`;
    /// `Unavailable` when the registry cannot be written (the new file is then not published,
    /// so the registry and the served model stay consistent).
    pub async fn sync_with_file(&self, strict: bool) -> Result<FileSync> {
        let _order = self.activation.lock().await;
        let Some(served) = self.slot.load() else {
            return Ok(FileSync::Unchanged);
        };
        let record = served.record.clone();
        let path = match self.root.resolve(&record.file_path) {
            Ok(p) => p,
            Err(Error::ModelFile {
                problem: FileProblem::Missing,
                ..
            }) => return Ok(FileSync::Missing(record)),
            Err(e) => return Err(e),
        };
        let bytes_sha = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(&path).map(|b| crate::model::loader::sha256_hex(&b)))
                .await
                .map_err(Error::internal)?
                .map_err(|e| {
                    Error::model_file(
                        FileProblem::Unreadable,
                        format!("cannot read model file {:?}: {e}", record.file_path),
                    )
                })?
        };
        if bytes_sha == record.checksum_sha256 {
            return Ok(FileSync::Unchanged);
        }
        if strict {
            return Err(Error::model_file(
                FileProblem::ChecksumMismatch,
                format!(
                    "model file {:?} changed (sha256 {bytes_sha}) but the registry has {}; --strict-checksum refuses it",
                    record.file_path, record.checksum_sha256
                ),
            ));
        }
        let loaded = load_blocking(path, &record.file_path, None, self.engine).await?;
        let size = i64::try_from(loaded.size_bytes).map_err(Error::internal)?;
        let detail = format!("file changed: sha256 {} -> {}", record.checksum_sha256, loaded.sha256);
        let updated = self
            .registry
            .record_file_change(
                record.model_id,
                &record.checksum_sha256,
                &loaded.sha256,
                size,
                &loaded.signature,
                &detail,
            )
            .await?;
        let Some(updated) = updated else {
            return Ok(FileSync::RegistryMoved);
        };
        if !updated.is_active {
            return Ok(FileSync::RegistryMoved);
        }
        tracing::info!(model = %updated.model_name, sha256 = %updated.checksum_sha256, load_ms = loaded.load_time.as_secs_f64() * 1e3, "model file changed: reloaded");
        self.publish(updated.clone(), loaded);
        Ok(FileSync::Reloaded(updated))
    }

    /// Whether the slot serves exactly this record's model and file.
    fn serves(&self, record: &ModelRecord) -> bool {
        self.slot
            .load()
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
                "serving {name:?} version {version:?} (id {}) on {engine}, {cost_us} µs a request",
                record.model_id
            );
        } else {
            // Not what the operator asked for: worth a warning.
            tracing::warn!(model = %name, %version, %engine, note, cost_us, batchable = model.batchable, "serving with {engine}: {note}");
        }
        self.slot.publish(Arc::new(ServedModel { record, model }));
    }

    /// Changes metadata only.
    ///
    /// # Errors
    /// `InvalidArgument` for an accuracy outside 0..1; `NotFound` for an unknown model.
    pub async fn update(&self, model: &ModelRef, changes: &ModelChanges) -> Result<ModelRecord> {
        validate_accuracy(changes.accuracy)?;
        self.registry.update(model, changes).await
    }

    /// Deletes the record, never the file.
    ///
    /// # Errors
    /// `FailedPrecondition` for the active model; `NotFound` for an unknown model.
    pub async fn delete(&self, model: &ModelRef) -> Result<ModelRecord> {
        let deleted = self.registry.delete(model).await?;
        tracing::info!(model = %deleted.model_name, "model record deleted (file kept)");
        Ok(deleted)
    }

    /// The model that serves a request for `name` (empty or `active`: the active model). Takes
    /// one snapshot of the slot; the registry is asked only to explain a miss.
    ///
    /// # Errors
    /// `Unavailable` when nothing is loaded; `NotFound` for an unknown name;
    /// `FailedPrecondition` for a registered model that is not the active one.
    pub async fn model_for(&self, name: &str) -> Result<Arc<ServedModel>> {
        let served = self.slot.load();
        if let Some(m) = &served
            && (name::is_active_alias(name) || m.record.model_name == name)
        {
            return Ok(Arc::clone(m));
        }
        if name::is_active_alias(name) {
            return Err(Error::Unavailable(
                "no model is loaded yet: register and activate one (modeld register --activate)".into(),
            ));
        }
        // A name in another Unicode normal form than the stored NFC one (rare: not on the fast path).
        let name = name::nfc(name);
        if let Some(m) = &served
            && m.record.model_name == name
        {
            return Ok(Arc::clone(m));
        }
        let serving = served.as_ref().map(|m| m.record.model_name.clone());
        if !self.status.snapshot().registry_reachable() {
            return Err(Error::Unavailable(format!(
                "model {name:?} is not the model this server serves ({}), and the registry is unreachable; try again later",
                serving.map_or_else(|| "nothing".to_string(), |s| format!("{s:?}"))
            )));
        }
        match self.registry.find(&ModelRef::Name(name.to_string())).await? {
            None => Err(Error::NotFound(format!("model {name:?} is not registered"))),
            Some(r) if r.is_active => Err(Error::Unavailable(format!(
                "model {name:?} is active in the registry but not loaded on this server yet (serving {})",
                serving.map_or_else(|| "nothing".to_string(), |s| format!("{s:?}"))
            ))),
            Some(_) => Err(Error::FailedPrecondition(format!(
                "model {name:?} is registered but not active; the active model is {}",
                serving.map_or_else(|| "none".to_string(), |s| format!("{s:?}"))
            ))),
        }
    }

    /// On an empty registry, registers the models listed in the seed manifest and activates the
    /// one it names. Returns how many were registered (0 when the registry was not empty).
    ///
    /// # Errors
    /// `FailedPrecondition` for an unreadable manifest; otherwise as [`Control::register`].
    pub async fn seed(&self, manifest: &Path) -> Result<usize> {
        if self.registry.count().await? > 0 {
            return Ok(0);
        }
        let text = std::fs::read_to_string(manifest)
            .map_err(|e| Error::FailedPrecondition(format!("cannot read seed manifest {}: {e}", manifest.display())))?;
        let manifest: SeedManifest = serde_json::from_str(&text)
            .map_err(|e| Error::FailedPrecondition(format!("bad seed manifest {}: {e}", manifest.display())))?;
        let mut n = 0;
        for m in manifest.models {
            let activate = manifest.activate.as_deref() == Some(m.name.as_str());
            let reg = Registration {
                name: m.name,
                file_path: m.file_path,
                version: m.version,
                description: m.description,
                model_type: m.model_type,
                accuracy: m.accuracy,
                created_by: "seed".into(),
                activate,
            };
            match self.register(reg).await {
                Ok(_) => n += 1,
                // Another process seeded at the same moment: fine.
                Err(Error::AlreadyExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

#[derive(Debug, Deserialize)]
struct SeedManifest {
    activate: Option<String>,
    models: Vec<SeedModel>,
}

#[derive(Debug, Deserialize)]
struct SeedModel {
    name: String,
    file_path: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    model_type: String,
    accuracy: Option<f64>,
}

/// Runs the CPU-heavy load on a blocking thread; a panic inside tract becomes an error, never a
/// crash and never a published model. Messages name the file as `shown` (root-relative).
async fn load_blocking(
    path: PathBuf,
    shown: &str,
    expected_sha256: Option<String>,
    engine: EngineSettings,
) -> Result<LoadedModel> {
    let shown = shown.to_string();
    tokio::task::spawn_blocking(move || load_model_named(&path, &shown, expected_sha256.as_deref(), engine))
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
