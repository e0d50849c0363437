//! The model operations every front end shares (gRPC, HTTP, the CLI, start-up, the reload
//! task), as services with one job each, in place of one object that did everything:
//!
//! - [`Catalogue`] (`catalogue.rs`, `events.rs`, `client_config.rs`, `served.rs`): reads of the
//!   registry and of what this server serves, for transports to list and show; the event
//!   stream; the model-config endpoint's answer; a change's wait until the fleet serves it.
//! - [`Activation`] (`register.rs`, `activate.rs`): register, update, delete, seed; activate and
//!   the conditional rollback (verify → load → commit → publish).
//! - [`Rollout`] (`rollout.rs`, `guard.rs`): canary, shadow and promote, and the automatic
//!   rollback's guard.
//! - [`Reconcile`] (`reconcile.rs`): the reload task's steps (follow the registry, the model
//!   file, the rollout, the candidate cache).
//! - [`Evaluation`] (`evaluate.rs`): evaluate and compare on a labelled dataset.
//! - [`Inference`] (`inference.rs`): route a request once (the serving set, else a candidate),
//!   then validate → run → encode, with statistics and the guard's windows.
//!
//! They share one private [`Core`] (the registry, the model root, the object cache, the served
//! slot, the activation lock, the status, the executor, the candidate cache, the shadow runner
//! and the guard); nothing outside this module reaches those parts, and a transport is handed
//! only the services it uses. [`Builder`] wires them at start-up.
//!
//! Activation order: resolve the record, confine its path, load + verify sha256 + warm up off to
//! the side, commit the registry transaction, and only then publish into the slot. Any failure
//! before the commit leaves the registry and the served model exactly as they were.

mod activate;
mod catalogue;
mod client_config;
mod evaluate;
mod events;
mod guard;
mod inference;
mod reconcile;
mod register;
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
pub use self::reconcile::{Changes, FileSync, RegistrySync};
pub use self::register::{Registered, Registration};
pub use self::served::{DEFAULT_WAIT, MAX_WAIT};
use crate::error::{Error, FileProblem, Result};
use crate::model::cache::{CandidateLimits, Candidates};
use crate::model::objects::Objects;
use crate::model::slot::ServedModel;
use crate::model::{EngineSettings, LoadedModel, ModelRoot, Slot, load_model_named};
pub use crate::name::ACTIVE_ALIAS;
use crate::name::quoted;
use crate::registry::activations::signature_refusal;
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

/// The services of one process, each a cheap handle on the same parts.
#[derive(Debug, Clone)]
pub struct Services {
    /// Reads of the registry and of what this server serves.
    pub catalogue: Catalogue,
    /// Register, update, delete; activate and roll back.
    pub activation: Activation,
    /// Canary, shadow, promote; the automatic rollback.
    pub rollout: Rollout,
    /// The reload task's steps.
    pub reconcile: Reconcile,
    /// Evaluate and compare.
    pub evaluation: Evaluation,
    /// The request path.
    pub inference: Inference,
}

macro_rules! service {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            core: Arc<Core>,
        }
    };
}

service!(
    /// Reads of the registry and of what this server serves (what transports list and show).
    Catalogue
);
service!(
    /// Register, update and delete records; activate and roll back (verify → load → commit →
    /// publish).
    Activation
);
service!(
    /// Canary, shadow and promote, and the guard that rolls back on its own.
    Rollout
);
service!(
    /// The reload task's steps: follow the registry, the model file, the rollout and the
    /// candidate cache.
    Reconcile
);
service!(
    /// Evaluate and compare models on a labelled dataset.
    Evaluation
);
service!(
    /// The request path: route once, then validate → run → encode.
    Inference
);

impl Activation {
    fn evaluation(&self) -> Evaluation {
        Evaluation {
            core: Arc::clone(&self.core),
        }
    }
}

impl Rollout {
    fn activation(&self) -> Activation {
        Activation {
            core: Arc::clone(&self.core),
        }
    }
}

/// Wires the parts the services share.
#[derive(Debug)]
pub struct Builder {
    core: Core,
}

impl Builder {
    /// A process that edits `registry` with models under `root` and serves into `slot` (the
    /// CLI: no executor, so it serves nothing).
    pub fn new(registry: Registry, root: ModelRoot, slot: Arc<Slot>) -> Self {
        Self {
            core: Core {
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
            },
        }
    }

    /// Keeps copies of models in object storage in `objects`.
    pub fn objects(mut self, objects: Arc<Objects>) -> Self {
        self.core.objects = objects;
        self
    }

    /// A server that runs inference on `executor`, with models loaded for `engine`: publishes
    /// are recorded as `reloaded` events.
    pub fn serving(mut self, executor: Executor, engine: EngineSettings) -> Self {
        self.core.serving = true;
        self.core.executor = Some(executor);
        self.core.engine = engine;
        self
    }

    /// Bounds the cache of candidates (registered models that are not active, loaded when a
    /// request names them).
    pub fn candidates(mut self, limits: CandidateLimits) -> Self {
        self.core.candidates = Candidates::new(limits);
        self
    }

    /// Watches a freshly activated model for `watch` (the automatic rollback acts within it).
    pub fn rollback_watch(mut self, watch: Duration) -> Self {
        self.core.guard = guard::Guard::new(watch);
        self
    }

    /// Runs mirrored requests on `shadows` (a serving process).
    pub fn shadows(mut self, shadows: Shadows) -> Self {
        self.core.shadows = Some(shadows);
        self
    }

    /// The registry the services will use (start-up hands it to the fleet's heartbeat and
    /// closes it at the end).
    pub fn registry(&self) -> &Registry {
        &self.core.registry
    }

    /// The services, over the parts as wired.
    pub fn build(self) -> Services {
        let core = Arc::new(self.core);
        let with = || Arc::clone(&core);
        Services {
            catalogue: Catalogue { core: with() },
            activation: Activation { core: with() },
            rollout: Rollout { core: with() },
            reconcile: Reconcile { core: with() },
            evaluation: Evaluation { core: with() },
            inference: Inference { core: with() },
        }
    }
}

/// What the services share. Only this module sees its parts.
#[derive(Debug)]
struct Core {
    registry: Registry,
    root: ModelRoot,
    objects: Arc<Objects>,
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
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Core {
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
    async fn record_file(&self, record: &ModelRecord) -> Result<PathBuf> {
        if crate::model::objects::is_uri(&record.file_path) {
            let f = self
                .objects
                .fetch(&record.file_path, Some(&record.checksum_sha256))
                .await?;
            return Ok(f.path);
        }
        self.root.resolve(&record.file_path)
    }

    /// [`Core::record_file`] for a load: a path the root refuses is the record's problem
    /// (`FailedPrecondition`), not the request's.
    async fn model_file(&self, record: &ModelRecord) -> Result<PathBuf> {
        if crate::model::objects::is_uri(&record.file_path) {
            return self.record_file(record).await;
        }
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

    /// The registry, for a question only it can answer: `Unavailable` at once while it is
    /// known to be unreachable, instead of after the connection pool's timeout.
    fn reachable_registry(&self) -> Result<&Registry> {
        if self.status.registry_reachable() {
            Ok(&self.registry)
        } else {
            Err(Error::Unavailable(
                "the model registry is unreachable (what this server serves still answers); try again later".into(),
            ))
        }
    }

    /// Counts one request as in flight while the guard lives.
    fn track_request(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
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
