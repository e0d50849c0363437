//! The rollout: the canary (a share of requests by routing key) and the shadow (a share of
//! requests mirrored to it), set through the registry and served by every server from its
//! serving set; `promote` makes the canary the active model.

use std::sync::Arc;

use super::{ActivationOutcome, Core, Gates, Reconcile, Rollout};
use crate::error::{Error, Result};
use crate::model::slot::{ServedModel, Weighted};
use crate::name::quoted;
use crate::registry::rollout::percentage;
use crate::registry::{ActivationMeta, ModelRecord, ModelRef, RolloutChange, RolloutMeta, RolloutRole};

impl Rollout {
    /// Puts `model` in `role` with `percentage`: loaded and verified here first (its signature
    /// must keep the active model's clients working, unless `allow_signature_change`), then
    /// one registry transaction, then served by this server at once (every other server follows
    /// the registry).
    ///
    /// # Errors
    /// `NotFound` for an unknown model; `FailedPrecondition` for the active model, a file that
    /// cannot be loaded, or a refused signature; `InvalidArgument` for a percentage above 100.
    pub async fn set_rollout(
        &self,
        role: RolloutRole,
        model: &ModelRef,
        percentage: u8,
        allow_signature_change: bool,
        by: &str,
        reason: &str,
    ) -> Result<RolloutChange> {
        if percentage > 100 {
            return Err(Error::InvalidArgument(format!(
                "the {} percentage is 0 to 100, got {percentage}",
                role.name()
            )));
        }
        let record = self.core.registry.get(model).await?;
        if record.is_active {
            return Err(Error::FailedPrecondition(format!(
                "{} is the active model: it cannot also be the {}; choose another model",
                quoted(&record.model_name),
                role.name()
            )));
        }
        if !allow_signature_change {
            match role {
                RolloutRole::Canary => {
                    if let Some(active) = self.core.registry.active().await?
                        && let Some(refused) = crate::registry::activations::signature_refusal_as(
                            "the canary",
                            &record.model_name,
                            &record.signature()?,
                            &active.model_name,
                            &active.signature()?,
                        )
                    {
                        return Err(refused);
                    }
                }
                // The shadow's answers reach no client: only its inputs must fit the requests.
                RolloutRole::Shadow => self.check_shadow_inputs(&record).await?,
            }
        }
        let _order = self.core.activation.lock().await;
        // Verified before the commit, as an activation is (a model already in the role, or in
        // the set, is not loaded again).
        if self.core.rollout_model(role, &record).is_none() {
            self.core.load_record(&record).await?;
        }
        let change = self
            .core
            .registry
            .set_rollout(
                role,
                record.model_id,
                &record.checksum_sha256,
                percentage,
                &RolloutMeta::by(by, reason),
            )
            .await?;
        tracing::info!(model = %record.model_name, role = role.name(), percentage, by, reason, "rollout changed");
        self.core.sync_rollout_locked().await?;
        Ok(change)
    }

    /// Takes the model out of `role` (it goes back to `testing`); every server stops routing or
    /// mirroring to it.
    ///
    /// # Errors
    /// `Unavailable` when the registry is unreachable.
    pub async fn clear_rollout(&self, role: RolloutRole, by: &str, reason: &str) -> Result<RolloutChange> {
        let _order = self.core.activation.lock().await;
        let change = self
            .core
            .registry
            .clear_rollout(role, None, &RolloutMeta::by(by, reason))
            .await?;
        self.core.sync_rollout_locked().await?;
        Ok(change)
    }

    /// Makes the canary the active model: one transaction (history row, event), then the hot
    /// swap here, from the canary this server already serves; every server follows.
    ///
    /// # Errors
    /// `FailedPrecondition` when there is no canary; otherwise as [`Rollout::activate`].
    pub async fn promote(&self, by: &str, reason: &str) -> Result<ActivationOutcome> {
        let rollout = self.core.registry.rollout().await?;
        let canary = rollout.canary.ok_or_else(|| {
            Error::FailedPrecondition("there is no canary to promote (modeld canary set NAME --percentage P)".into())
        })?;
        let meta = ActivationMeta {
            activated_by: by.to_string(),
            reason: if reason.is_empty() {
                format!("promote the canary {}", quoted(&canary.model_name))
            } else {
                reason.to_string()
            },
            is_rollback: false,
        };
        // It served beside the active model already: its signature was accepted then.
        let gates = Gates {
            allow_signature_change: true,
            ..Gates::default()
        };
        self.activation()
            .activate(&ModelRef::Id(canary.model_id), &meta, &gates)
            .await
    }

    /// Refuses a shadow that could not take the active model's requests as they come.
    async fn check_shadow_inputs(&self, record: &ModelRecord) -> Result<()> {
        let Some(active) = self.core.registry.active().await? else {
            return Ok(());
        };
        let breaks: Vec<String> = active
            .signature()?
            .breaks(&record.signature()?)
            .into_iter()
            .filter(|b| b.starts_with("input"))
            .collect();
        if breaks.is_empty() {
            return Ok(());
        }
        Err(Error::FailedPrecondition(format!(
            "the shadow {} cannot take the requests of the active model {}: {}; pass \
             --allow-signature-change (allow_signature_change) to set it anyway (its requests would fail)",
            quoted(&record.model_name),
            quoted(&active.model_name),
            breaks.join("; ")
        )))
    }
}

impl Core {
    /// The model this server serves in `role`, if it is `record`'s (same file).
    pub(super) fn rollout_model(&self, role: RolloutRole, record: &ModelRecord) -> Option<Arc<ServedModel>> {
        let set = self.slot.load()?;
        let held = match role {
            RolloutRole::Canary => set.canary.as_ref(),
            RolloutRole::Shadow => set.shadow.as_ref(),
        };
        held.map(|w| Arc::clone(&w.model))
            .filter(|m| m.record.model_id == record.model_id && m.record.checksum_sha256 == record.checksum_sha256)
    }

    /// [`Core::sync_rollout_locked`] under the activation lock.
    pub(super) async fn sync_rollout(&self) -> Result<()> {
        let _order = self.activation.lock().await;
        self.sync_rollout_locked().await
    }

    pub(super) async fn sync_rollout_locked(&self) -> Result<()> {
        if !self.serving {
            return Ok(());
        }
        let rollout = self.registry.rollout().await?;
        let Some(active) = self.slot.active() else {
            return Ok(());
        };
        let mut weighted = Vec::new();
        for role in [RolloutRole::Canary, RolloutRole::Shadow] {
            let Some(record) = rollout.get(role) else {
                weighted.push(None);
                continue;
            };
            let model = match self.rollout_model(role, record) {
                Some(m) => Some(m),
                None => match self.load_rollout(role, record, &active).await {
                    Ok(m) => {
                        if role == RolloutRole::Canary {
                            self.guard.begin(record.model_id, false);
                        }
                        Some(m)
                    }
                    Err(e) => {
                        tracing::warn!(model = %record.model_name, role = role.name(), error = %e,
                            "the {} cannot be served here; its requests go to the active model", role.name());
                        None
                    }
                },
            };
            // The percentage is the registry's (the record the model was loaded with may be
            // older: it differs in nothing a request reads).
            weighted.push(model.map(|model| Weighted {
                percentage: percentage(record, role),
                model,
            }));
        }
        let shadow = weighted.pop().flatten();
        let canary = weighted.pop().flatten();
        // A shadow's figures are of its time as the shadow: a cleared or replaced one's are
        // forgotten (a shadow set again starts counting afresh).
        if let Some(runner) = &self.shadows {
            runner.forget_all_but(shadow.as_ref().map(|w| w.model.record.model_id));
        }
        self.slot.publish_rollout(canary, shadow);
        Ok(())
    }

    async fn load_rollout(
        &self,
        role: RolloutRole,
        record: &ModelRecord,
        active: &ServedModel,
    ) -> Result<Arc<ServedModel>> {
        let loaded = self.load_record(record).await?;
        let breaks = active.model.signature.breaks(&loaded.signature);
        if !breaks.is_empty() && role == RolloutRole::Canary {
            return Err(Error::FailedPrecondition(format!(
                "the canary {} would break the clients of the active model {}: {}",
                quoted(&record.model_name),
                quoted(&active.record.model_name),
                breaks.join("; ")
            )));
        }
        tracing::info!(model = %record.model_name, role = role.name(), "serving the {}", role.name());
        Ok(Arc::new(ServedModel {
            record: record.clone(),
            model: loaded,
        }))
    }
}

impl Reconcile {
    /// Makes the serving set's canary and shadow what the registry names (a change of
    /// percentage alone loads nothing). A model that cannot be loaded, or whose inputs the
    /// active model's clients would not fit, is left out with a warning: requests go to the
    /// active model.
    ///
    /// # Errors
    /// `Unavailable` when the registry cannot be read.
    pub async fn sync_rollout(&self) -> Result<()> {
        self.core.sync_rollout().await
    }
}
