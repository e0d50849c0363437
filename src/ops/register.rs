//! Registry records: register (optionally activating in the same transaction), update
//! metadata, delete, and seed an empty registry from the manifest.

use std::path::Path;

use serde::Deserialize;

use super::{Activation, ActivationOutcome, load_blocking, normalise, validate_accuracy};
use crate::error::{Error, Result};
use crate::name;
use crate::registry::{ActivationMeta, Deployment, ModelChanges, ModelRecord, ModelRef, NewModel};

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
    /// With `activate`: even if its signature would break the active model's clients.
    pub allow_signature_change: bool,
}

/// The outcome of a registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The new record.
    pub model: ModelRecord,
    /// Set when activation was requested.
    pub activation: Option<ActivationOutcome>,
}

impl Activation {
    /// Refuses a new name that looks the same as a registered one (NFKC: a full-width
    /// `ｄｉｇｉｔｓ_v2` beside `digits_v2`), so that a name means one model to a reader too.
    ///
    /// # Errors
    /// `AlreadyExists` naming the registered model.
    async fn refuse_look_alike(&self, model_name: &str) -> Result<()> {
        let look = name::look(model_name);
        let known = self
            .core
            .registry
            .list(crate::registry::Order::Id, false, i64::MAX, 0)
            .await?;
        if let Some(m) = known
            .iter()
            .find(|m| m.model_name != model_name && name::look(&m.model_name) == look)
        {
            return Err(Error::AlreadyExists(format!(
                "model name {} looks the same as the registered {} (model id {}); choose a name that reads differently",
                name::quoted(model_name),
                name::quoted(&m.model_name),
                m.model_id
            )));
        }
        Ok(())
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
        self.refuse_look_alike(&model_name).await?;
        let (file_path, path) = if crate::model::objects::is_uri(reg.file_path.trim()) {
            let uri = reg.file_path.trim().to_string();
            let fetched = self.core.objects.fetch(&uri, None).await?;
            (uri, fetched.path)
        } else {
            // As the CLI takes it: relative to the root, or to this server's working directory
            // when that lands inside the root.
            let cwd = std::env::current_dir().ok();
            self.core
                .root
                .resolve_sent(&normalise(&reg.file_path)?, cwd.as_deref())?
        };
        let _order = if reg.activate {
            Some(self.core.activation.lock().await)
        } else {
            None
        };
        let loaded = load_blocking(path, &file_path, None, self.core.engine).await?;
        if reg.activate && !reg.allow_signature_change {
            self.core.check_signature(&model_name, &loaded.signature).await?;
        }
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
        let committed = self.core.registry.insert(&new, reg.activate.then_some(&meta)).await?;
        tracing::info!(model = %model_name, version = %committed.active.version, sha256 = %loaded.sha256, "model registered");
        if !reg.activate {
            return Ok(Registered {
                model: committed.active,
                activation: None,
            });
        }
        self.core.publish(committed.active.clone(), loaded);
        self.core.published_by_api(&committed.active).await;
        Ok(Registered {
            model: committed.active.clone(),
            activation: Some(ActivationOutcome {
                active: committed.active,
                previous: committed.previous,
                load_time,
                already_active: false,
            }),
        })
    }

    /// Changes metadata only.
    ///
    /// # Errors
    /// `InvalidArgument` for an accuracy outside 0..1; `NotFound` for an unknown model.
    pub async fn update(&self, model: &ModelRef, changes: &ModelChanges) -> Result<ModelRecord> {
        validate_accuracy(changes.accuracy)?;
        if let Some(r) = &changes.rollback {
            r.check()?;
        }
        self.core.registry.update(model, changes).await
    }

    /// Deletes the record, never the file.
    ///
    /// # Errors
    /// `FailedPrecondition` for the active model; `NotFound` for an unknown model.
    pub async fn delete(&self, model: &ModelRef) -> Result<ModelRecord> {
        let deleted = self.core.registry.delete(model).await?;
        tracing::info!(model = %deleted.model_name, "model record deleted (file kept)");
        Ok(deleted)
    }

    /// Creates a deployment: a name clients call, with its own active model (issue 29; models
    /// are registered into `default` until registration takes a deployment).
    ///
    /// # Errors
    /// `InvalidArgument` for a name the model-name rules refuse; `AlreadyExists` when a
    /// deployment or a model has the name.
    pub async fn create_deployment(&self, name: &str, description: &str, by: &str) -> Result<Deployment> {
        let made = self.core.registry.create_deployment(name, description, by).await?;
        tracing::info!(deployment = %made.name, "deployment created");
        Ok(made)
    }

    /// Deletes a deployment that holds no model.
    ///
    /// # Errors
    /// `NotFound` for an unknown name; `FailedPrecondition` for `default` and for a deployment
    /// that holds models.
    pub async fn delete_deployment(&self, name: &str) -> Result<Deployment> {
        let gone = self.core.registry.delete_deployment(name).await?;
        tracing::info!(deployment = %gone.name, "deployment deleted");
        Ok(gone)
    }

    /// On an empty registry, registers the models listed in the seed manifest and activates the
    /// one it names. Returns how many were registered (0 when the registry was not empty).
    ///
    /// # Errors
    /// `FailedPrecondition` for an unreadable manifest; otherwise as [`Activation::register`].
    pub async fn seed(&self, manifest: &Path) -> Result<usize> {
        if self.core.registry.count().await? > 0 {
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
                allow_signature_change: false,
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
