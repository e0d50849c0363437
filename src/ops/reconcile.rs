//! Following the registry and the model file: what the reload task runs when another process
//! changed the registry or the served model's file changed on disk.

use std::sync::Arc;

use super::{Reconcile, load_blocking};
use crate::error::{Error, FileProblem, Result};
use crate::model::ModelRoot;
use crate::model::slot::ServedModel;
use crate::name::quoted;
use crate::registry::EventKind;
use crate::registry::{ModelRecord, ModelRef};
use crate::status::Status;

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

/// How the reload task hears of the registry's changes.
#[derive(Debug)]
pub enum Changes {
    /// PostgreSQL: LISTEN/NOTIFY on a connection of this pool.
    Notify(sqlx::PgPool),
    /// SQLite: a watch on the database's files (`None`: none could be made; poll only).
    Files(Option<crate::fleet::Changes>),
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

impl Reconcile {
    /// This process's reload status, which the reload task keeps.
    pub fn status(&self) -> &Arc<Status> {
        &self.core.status
    }

    /// The active model this server serves now.
    pub fn served(&self) -> Option<Arc<ServedModel>> {
        self.core.slot.active()
    }

    /// What this server serves, as the fleet table reports it.
    pub fn serving_report(&self) -> crate::registry::servers::Serving {
        crate::fleet::serving_of(&self.core.slot)
    }

    /// The model root (the file watcher watches it).
    pub fn root(&self) -> &ModelRoot {
        &self.core.root
    }

    /// The registry's generation (it grows with every change).
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn generation(&self) -> Result<i64> {
        self.core.registry.generation().await
    }

    /// Records a reload's outcome in the event stream.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be written.
    pub async fn record_event(
        &self,
        kind: EventKind,
        record: Option<&ModelRecord>,
        source: &str,
        detail: &str,
    ) -> Result<()> {
        self.core.registry.add_event(kind, record, source, detail).await
    }

    /// How to hear of the registry's changes: PostgreSQL's pool for a
    /// LISTEN, else (SQLite) a watch on the database's files.
    pub async fn changes(&self) -> Changes {
        match self.core.registry.pg_pool() {
            Some(pg) => Changes::Notify(pg.clone()),
            None => Changes::Files(crate::fleet::Changes::open(&self.core.registry).await.ok()),
        }
    }

    /// Drops the cached candidates whose registry record changed (deleted, renamed, its file
    /// changed, activated). Keeps them while the registry cannot be read: they still are what
    /// was verified.
    pub async fn refresh_candidates(&self) {
        let cached = self.core.candidates.cached();
        if cached.is_empty() {
            return;
        }
        // Only the candidates looked at here are judged: one cached meanwhile (a request
        // loaded it while this read the registry) was loaded from the newer record.
        let mut current = std::collections::HashMap::new();
        for c in cached {
            match self.core.registry.find(&ModelRef::Id(c.model_id)).await {
                Ok(record) => {
                    current.insert(c.model_id, record);
                }
                Err(_) => return,
            }
        }
        self.core.candidates.retain(|id| current.remove(&id));
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
        let _order = self.core.activation.lock().await;
        // Bounded: each round loads what the registry named; a registry that keeps moving is
        // followed again by the next trigger.
        for _ in 0..3 {
            let Some(record) = self.core.registry.active().await? else {
                return Ok(RegistrySync::NoActiveModel);
            };
            if self.core.serves(&record) {
                return Ok(RegistrySync::InSync(record));
            }
            let loaded = match self.core.load_record(&record).await {
                Ok(l) => l,
                Err(e) => return Ok(RegistrySync::Failed(record, e)),
            };
            let now = self.core.registry.active().await?;
            if now
                .as_ref()
                .is_some_and(|n| n.model_id == record.model_id && n.checksum_sha256 == record.checksum_sha256)
            {
                tracing::info!(model = %record.model_name, version = %record.version, load_ms = crate::trace::ms(loaded.load_time), "model reloaded from the registry");
                self.core.publish(record.clone(), loaded);
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
        let _order = self.core.activation.lock().await;
        let Some(served) = self.core.slot.active() else {
            return Ok(FileSync::Unchanged);
        };
        let record = served.record.clone();
        let (path, bytes_sha) = if crate::model::objects::is_uri(&record.file_path) {
            // An object: its ETag says whether to look at its bytes.
            match self
                .core
                .objects
                .changed(&record.file_path, &record.checksum_sha256)
                .await?
            {
                None => return Ok(FileSync::Unchanged),
                Some(f) => (f.path, f.sha256),
            }
        } else {
            let path = match self.core.root.resolve(&record.file_path) {
                Ok(p) => p,
                Err(Error::ModelFile {
                    problem: FileProblem::Missing,
                    ..
                }) => return Ok(FileSync::Missing(record)),
                Err(e) => return Err(e),
            };
            let sha = {
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
            (path, sha)
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
        let loaded = load_blocking(path, &record.file_path, None, self.core.engine).await?;
        // A new file that would break the served model's clients is not served.
        let breaks = served.model.signature.breaks(&loaded.signature);
        if !breaks.is_empty() {
            return Err(Error::model_file(
                FileProblem::SignatureChanged,
                format!(
                    "model file {} changed to a model that would break its clients ({}); the model in memory keeps \
                     serving. Register the new file under a new name and activate it with --allow-signature-change",
                    quoted(&record.file_path),
                    breaks.join("; ")
                ),
            ));
        }
        let size = i64::try_from(loaded.size_bytes).map_err(Error::internal)?;
        let detail = format!("file changed: sha256 {} -> {}", record.checksum_sha256, loaded.sha256);
        let updated = self
            .core
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
        tracing::info!(model = %updated.model_name, sha256 = %updated.checksum_sha256, load_ms = crate::trace::ms(loaded.load_time), "model file changed: reloaded");
        self.core.publish(updated.clone(), loaded);
        Ok(FileSync::Reloaded(updated))
    }
}
