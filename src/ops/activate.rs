//! Activation and rollback: load, verify and warm up first, then one registry transaction,
//! then publish.

use std::sync::Arc;
use std::time::Duration;

use super::{ActivationOutcome, Control, EvaluateOptions};
use crate::error::{Error, Result};
use crate::evaluation::{self, Dataset};
use crate::registry::EvaluationRecord;
use crate::registry::activations::ACTIVE_CHANGED;
use crate::registry::name::quoted;
use crate::registry::{ActivationMeta, Conditions, ModelRecord, ModelRef, RolloutRole};

/// What an activation checks before it loads the model.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    /// Activate even if the model's signature would break the active model's clients.
    pub allow_signature_change: bool,
    /// Refuse a model whose latest evaluation, on the active model's dataset, is worse than the
    /// active model's (the rule of `compare`).
    pub require_better: bool,
    /// With `require_better`: compare on this dataset, evaluating either model on it first
    /// when it has no evaluation of its current file there.
    pub evaluate_on: Option<Arc<Dataset>>,
}

impl Control {
    /// Loads, verifies and warms up `model`, makes it the one active model in the registry, then
    /// publishes it. Activating the model that is already active and served changes nothing.
    ///
    /// Unless `gates` allow it, a model whose signature would break the active model's clients
    /// is refused.
    ///
    /// # Errors
    /// `NotFound` for an unknown model; `FailedPrecondition` when its file is missing, changed
    /// (checksum) or cannot be loaded, or its signature is refused. On any error the registry
    /// and the served model are unchanged.
    pub async fn activate(&self, model: &ModelRef, meta: &ActivationMeta, gates: &Gates) -> Result<ActivationOutcome> {
        // The gates run before the activation lock (an evaluation can take long, and the lock
        // also orders reloads). Under the lock, if the active model changed meanwhile, they run
        // again against the new one; the commit then happens only while the model they checked
        // against is still active, whoever else writes the registry (another server, the CLI).
        // Another writer can change the active model between the gates and the commit; then
        // the commit is refused and the gates run again against the new active model.
        for attempt in 1.. {
            match self.activate_once(model, meta, gates).await {
                Err(Error::FailedPrecondition(m)) if m.starts_with(ACTIVE_CHANGED) && attempt < 5 => {}
                done => return done,
            }
        }
        unreachable!("the loop returns")
    }

    async fn activate_once(&self, model: &ModelRef, meta: &ActivationMeta, gates: &Gates) -> Result<ActivationOutcome> {
        let record = self.registry.get(model).await?;
        let checked = self.run_gates(&record, gates).await?;
        let _order = self.activation.lock().await;
        let now = self.registry.active().await?.map(|a| a.model_id);
        if now != checked {
            self.run_gates(&record, gates).await?;
        }
        let conditions = Conditions {
            // The better-gate's verdict holds against the model it compared with only: commit
            // while that one is still active.
            only_if_active: now.filter(|_| gates.require_better),
            // The signature guard holds against whatever is active at the commit.
            compatible: !gates.allow_signature_change,
        };
        self.activate_locked(record, meta, conditions).await
    }

    /// The signature guard and the `require_better` gate; returns the id of the active model
    /// they checked against.
    async fn run_gates(&self, record: &ModelRecord, gates: &Gates) -> Result<Option<i64>> {
        let active = self.registry.active().await?.map(|a| a.model_id);
        if !gates.allow_signature_change {
            self.check_signature(&record.model_name, &record.signature()?).await?;
        }
        if gates.require_better {
            self.check_better(record, gates).await?;
        }
        Ok(active)
    }

    /// Rolls back from a model: activates the model that was active before it (from the
    /// activation history), only while it is still the active model — checked again inside the
    /// activating transaction, so concurrent rollbacks from one model (two servers, a person
    /// and the automatic guard) roll back once and never flip it back in. `from` names the
    /// model to roll back from; without it, the model of the latest activation. Rolling back
    /// twice, one after the other, returns to where you started.
    ///
    /// # Errors
    /// `FailedPrecondition` when `from` (or the latest activation's model) is not the active
    /// model, when there is no earlier model or it was deleted; otherwise as
    /// [`Control::activate`].
    pub async fn rollback(
        &self,
        activated_by: &str,
        reason: &str,
        from: Option<&ModelRef>,
    ) -> Result<ActivationOutcome> {
        let _order = self.activation.lock().await;
        let nothing = || Error::FailedPrecondition("nothing to roll back to: no model has been activated yet".into());
        let last = match from {
            None => self.registry.last_activation().await?.ok_or_else(nothing)?,
            Some(from) => {
                let model = self.registry.get(from).await?;
                self.registry.last_activation_of(model.model_id).await?.ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "nothing to roll back: {} has never been activated",
                        quoted(&model.model_name)
                    ))
                })?
            }
        };
        let from_id = last.model_id.ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "cannot roll back from {}: its record was deleted",
                quoted(&last.model_name)
            ))
        })?;
        let active = self.registry.active().await?;
        if active.as_ref().is_none_or(|a| a.model_id != from_id) {
            return Err(Error::FailedPrecondition(format!(
                "{} is not the active model (the active model is {}); nothing was rolled back",
                quoted(&last.model_name),
                active
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |a| quoted(&a.model_name))
            )));
        }
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
        // A rollback returns to a model that served before: its clients are the ones that
        // were there, so no signature guard.
        let conditions = Conditions {
            only_if_active: Some(from_id),
            compatible: false,
        };
        self.activate_locked(record, &meta, conditions).await
    }

    /// The gate of `require_better`: `record`'s latest evaluation of its current file on the
    /// active model's dataset (its latest, or `gates.evaluate_on`) must not be worse than the
    /// active model's. Returns the active model's id, to commit only while it is still active.
    async fn check_better(&self, record: &ModelRecord, gates: &Gates) -> Result<Option<i64>> {
        let Some(active) = self.registry.active().await? else {
            return Ok(None);
        };
        if active.model_id == record.model_id {
            return Ok(None);
        }
        let (a, c) = (quoted(&active.model_name), quoted(&record.model_name));
        let (dataset_sha, dataset_name) = match &gates.evaluate_on {
            Some(d) => (d.sha256.clone(), d.name.clone()),
            None => {
                let e = self.current_evaluation(&active, None).await?.ok_or_else(|| {
                    Error::FailedPrecondition(format!(
                        "--require-better: the active model {a} has no evaluation to compare with; evaluate it \
                         first (modeld evaluate {a} --dataset FILE), or activate with --evaluate FILE"
                    ))
                })?;
                (e.dataset_sha256, e.dataset_name)
            }
        };
        let mut figures = Vec::new();
        for (model, shown) in [(&active, &a), (record, &c)] {
            let found = match self.current_evaluation(model, Some(&dataset_sha)).await? {
                Some(e) => e,
                None => match &gates.evaluate_on {
                    Some(d) => {
                        let options = EvaluateOptions {
                            notes: "evaluated for --require-better".into(),
                            evaluated_by: "gate".into(),
                            ..EvaluateOptions::default()
                        };
                        self.evaluate(&ModelRef::Id(model.model_id), Arc::clone(d), &options, |_, _| {})
                            .await?
                            .record
                    }
                    None => {
                        return Err(Error::FailedPrecondition(format!(
                            "--require-better: {shown} has no evaluation on {} (the dataset the active model was \
                             evaluated on); evaluate it first (modeld evaluate {shown} --dataset {}), or activate \
                             with --evaluate FILE",
                            quoted(&dataset_name),
                            dataset_name
                        )));
                    }
                },
            };
            figures.push(found.summary());
        }
        let (fa, fc) = (&figures[0], &figures[1]);
        if evaluation::better(fc, fa) == std::cmp::Ordering::Greater {
            let top3 = |f: &evaluation::Figures| f.top3_accuracy.map_or_else(|| "-".into(), |t| format!("{t:.4}"));
            return Err(Error::FailedPrecondition(format!(
                "{c} is worse than the active model {a} on {} ({a}: {}): accuracy {:.4} vs {:.4}, top-3 {} vs {}, \
                 median latency {:.1} vs {:.1} µs; not activated",
                quoted(&dataset_name),
                evaluation::decided_by(fa, fc),
                fc.accuracy,
                fa.accuracy,
                top3(fc),
                top3(fa),
                fc.latency_p50_us,
                fa.latency_p50_us
            )));
        }
        Ok(Some(active.model_id))
    }

    /// `model`'s latest evaluation of its current file (on the dataset with `dataset_sha256`).
    async fn current_evaluation(
        &self,
        model: &ModelRecord,
        dataset_sha256: Option<&str>,
    ) -> Result<Option<EvaluationRecord>> {
        Ok(self
            .registry
            .latest_evaluation(model.model_id, dataset_sha256)
            .await?
            .filter(|e| e.model_sha256 == model.checksum_sha256))
    }

    /// Activates `record` if the `conditions` hold at the commit. Holds no lock itself: the
    /// caller holds the activation lock.
    async fn activate_locked(
        &self,
        record: ModelRecord,
        meta: &ActivationMeta,
        conditions: Conditions,
    ) -> Result<ActivationOutcome> {
        if record.is_active && self.serves(&record) && conditions.only_if_active.is_none_or(|id| id == record.model_id)
        {
            return Ok(ActivationOutcome {
                active: record.clone(),
                previous: Some(record),
                load_time: Duration::ZERO,
            });
        }
        // A model this server already holds in another role (the canary being promoted, the
        // shadow, a cached candidate), verified when it was loaded, is not loaded again.
        let held = self
            .rollout_model(RolloutRole::Canary, &record)
            .or_else(|| self.rollout_model(RolloutRole::Shadow, &record))
            .or_else(|| {
                self.candidates.get_loaded(&record.model_name).filter(|m| {
                    m.record.model_id == record.model_id && m.record.checksum_sha256 == record.checksum_sha256
                })
            });
        let loaded = match held {
            Some(m) => m.model.share(),
            None => self.load_record(&record).await?,
        };
        let load_time = loaded.load_time;
        let committed = self
            .registry
            .activate(record.model_id, &loaded.sha256, meta, conditions)
            .await?;
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
