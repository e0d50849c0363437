//! Activation and rollback: load, verify and warm up first, then one registry transaction,
//! then publish.

use std::time::Duration;

use super::{ActivationOutcome, Control};
use crate::error::{Error, Result};
use crate::registry::name::quoted;
use crate::registry::{ActivationMeta, ModelRecord, ModelRef};

impl Control {
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
                    "cannot roll back to model {}: its record was deleted",
                    quoted(&name)
                )));
            }
            (None, None) => {
                return Err(Error::FailedPrecondition(format!(
                    "nothing to roll back to: {} was the first model ever activated",
                    quoted(&last.model_name)
                )));
            }
        };
        let record = self.registry.get(&ModelRef::Id(target)).await?;
        let meta = ActivationMeta {
            activated_by: activated_by.to_string(),
            reason: if reason.is_empty() {
                format!("rollback from {}", quoted(&last.model_name))
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
}
