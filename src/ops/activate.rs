//! Activation and rollback: load, verify and warm up first, then one registry transaction,
//! then publish.

use std::sync::Arc;
use std::time::Duration;

use super::{Activation, ActivationOutcome, EvaluateOptions};
use crate::error::{Error, Result};
use crate::evaluation::{self, Dataset};
use crate::name::quoted;
use crate::registry::EvaluationRecord;
use crate::registry::activations::ActivationRecord;
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

impl Activation {
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
                Err(Error::ActiveChanged(_)) if attempt < 5 => {}
                done => return done,
            }
        }
        unreachable!("the loop returns")
    }

    async fn activate_once(&self, model: &ModelRef, meta: &ActivationMeta, gates: &Gates) -> Result<ActivationOutcome> {
        let record = self.core.registry.get(model).await?;
        let checked = self.run_gates(&record, gates).await?;
        let _order = self.core.activation.lock().await;
        let now = self.core.registry.active().await?.map(|a| a.model_id);
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
        let active = self.core.registry.active().await?.map(|a| a.model_id);
        if !gates.allow_signature_change {
            self.core
                .check_signature(&record.model_name, &record.signature()?)
                .await?;
        }
        if gates.require_better {
            self.check_better(record, gates).await?;
        }
        Ok(active)
    }

    /// Rolls back from the active model to the model that served before it, walking back
    /// through the activation history ([`rollback_target`]): v3 → v2 → v1, never to a model
    /// a rollback left (name it to activate it). Only while that model is still the active one
    /// — checked again inside the activating transaction, so concurrent rollbacks from one
    /// model (two servers, a person and the automatic guard) roll back once. `from` names the
    /// model to roll back from: refused unless it is the active model.
    ///
    /// # Errors
    /// `FailedPrecondition` when no model is active, `from` is not the active model, or there
    /// is no earlier model to go back to; otherwise as [`Activation::activate`].
    pub async fn rollback(
        &self,
        activated_by: &str,
        reason: &str,
        from: Option<&ModelRef>,
    ) -> Result<ActivationOutcome> {
        let _order = self.core.activation.lock().await;
        let active = self
            .core
            .registry
            .active()
            .await?
            .ok_or_else(|| Error::FailedPrecondition("nothing to roll back: no model is active".into()))?;
        if let Some(from) = from {
            let model = self.core.registry.get(from).await?;
            if model.model_id != active.model_id {
                return Err(Error::FailedPrecondition(format!(
                    "{} is not the active model (the active model is {}); nothing was rolled back",
                    quoted(&model.model_name),
                    quoted(&active.model_name)
                )));
            }
        }
        let history = self.core.registry.activations(ROLLBACK_HISTORY).await?;
        let target = rollback_target(&history, (active.model_id, &active.model_name))?;
        let last = active;
        let from_id = last.model_id;
        let record = self.core.registry.get(&ModelRef::Id(target)).await?;
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
        let Some(active) = self.core.registry.active().await? else {
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
                        self.evaluation()
                            .evaluate(&ModelRef::Id(model.model_id), Arc::clone(d), &options, |_, _| {})
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
            .core
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
        if record.is_active
            && self.core.serves(&record)
            && conditions.only_if_active.is_none_or(|id| id == record.model_id)
        {
            return Ok(ActivationOutcome {
                active: record,
                previous: None,
                load_time: Duration::ZERO,
                already_active: true,
            });
        }
        // A model this server already holds in another role (the canary being promoted, the
        // shadow, a cached candidate), verified when it was loaded, is not loaded again.
        let held = self
            .core
            .rollout_model(RolloutRole::Canary, &record)
            .or_else(|| self.core.rollout_model(RolloutRole::Shadow, &record))
            .or_else(|| {
                self.core.candidates.get_loaded(&record.model_name).filter(|m| {
                    m.record.model_id == record.model_id && m.record.checksum_sha256 == record.checksum_sha256
                })
            });
        let loaded = match held {
            Some(m) => m.model.share(),
            None => self.core.load_record(&record).await?,
        };
        let load_time = loaded.load_time;
        let committed = self
            .core
            .registry
            .activate(record.model_id, &loaded.sha256, meta, conditions)
            .await?;
        tracing::info!(
            model = %committed.active.model_name,
            version = %committed.active.version,
            previous = committed.previous.as_ref().map(|p| p.model_name.as_str()).unwrap_or("none"),
            load_ms = crate::trace::ms(load_time),
            by = %meta.activated_by,
            reason = %meta.reason,
            "model activated"
        );
        self.core.publish(committed.active.clone(), loaded);
        self.core.published_by_api(&committed.active).await;
        Ok(ActivationOutcome {
            active: committed.active,
            previous: committed.previous,
            load_time,
            already_active: committed.unchanged,
        })
    }
}

/// How many activations a rollback reads to find where to go back to.
const ROLLBACK_HISTORY: i64 = 1000;

/// Where a rollback from the `active` model goes: the activation history (newest first) is
/// replayed as a stack, each activation pushing its model and each rollback popping back to
/// the model it went to, so repeated rollbacks walk back through the models that served
/// before (v3 → v2 → v1). A model a rollback left since the last forward activation is never
/// gone back to (name it to activate it), nor a deleted one.
///
/// # Errors
/// `FailedPrecondition` when there is nothing to go back to, saying why.
fn rollback_target(history: &[ActivationRecord], active: (i64, &str)) -> Result<i64> {
    let (active_id, active_name) = active;
    let mut stack: Vec<(Option<i64>, &str)> = Vec::new();
    let mut left: Vec<i64> = Vec::new();
    for row in history.iter().rev() {
        if row.is_rollback {
            left.extend(row.previous_model_id);
            match stack.iter().rposition(|(id, _)| id.is_some() && *id == row.model_id) {
                Some(at) => stack.truncate(at + 1),
                None => stack = vec![(row.model_id, row.model_name.as_str())],
            }
        } else {
            left.clear();
            if stack.is_empty()
                && let Some(name) = &row.previous_name
            {
                stack.push((row.previous_model_id, name));
            }
            stack.push((row.model_id, row.model_name.as_str()));
        }
    }
    // Made active without a history row (an SQL console): it is on top all the same.
    if stack.last().is_none_or(|(id, _)| *id != Some(active_id)) {
        stack.push((Some(active_id), active_name));
    }
    let below = &stack[..stack.len() - 1];
    if below.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "nothing to roll back to: {} is the first model activated",
            quoted(active_name)
        )));
    }
    let found = below
        .iter()
        .rev()
        .find(|(id, _)| id.is_some_and(|id| id != active_id && !left.contains(&id)));
    match found {
        Some((Some(id), _)) => Ok(*id),
        _ => {
            let mut skipped: Vec<String> = Vec::new();
            for (id, name) in below.iter().rev() {
                let why = if id.is_none() { "deleted" } else { "rolled back from" };
                let shown = format!("{} ({why})", quoted(name));
                if !skipped.contains(&shown) {
                    skipped.push(shown);
                }
            }
            Err(Error::FailedPrecondition(format!(
                "nothing to roll back to from {}: the models before it are {}; activate one by name to go \
                 back to it (modeld activate NAME)",
                quoted(active_name),
                skipped.join(", ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, model: i64, previous: Option<i64>, rollback: bool) -> ActivationRecord {
        ActivationRecord {
            activation_id: id,
            model_id: Some(model),
            model_name: format!("m{model}"),
            previous_model_id: previous,
            previous_name: previous.map(|p| format!("m{p}")),
            activated_at: chrono::Utc::now(),
            activated_by: "t".into(),
            reason: String::new(),
            is_rollback: rollback,
        }
    }

    /// Oldest first, as people read a history; the registry gives it newest first.
    fn target(rows: &[ActivationRecord], now: i64) -> Result<i64> {
        let newest_first: Vec<ActivationRecord> = rows.iter().rev().cloned().collect();
        rollback_target(&newest_first, (now, &format!("m{now}")))
    }

    #[test]
    fn repeated_rollbacks_walk_back_through_the_history() {
        let mut h = vec![
            row(1, 1, None, false),
            row(2, 2, Some(1), false),
            row(3, 3, Some(2), false),
        ];
        assert_eq!(target(&h, 3).unwrap(), 2);
        h.push(row(4, 2, Some(3), true));
        assert_eq!(target(&h, 2).unwrap(), 1, "not back to m3, which the rollback left");
        h.push(row(5, 1, Some(2), true));
        let e = target(&h, 1).unwrap_err().to_string();
        assert!(e.contains("\"m1\" is the first model activated"), "{e}");
        // A forward activation starts a new walk.
        h.push(row(6, 3, Some(1), false));
        assert_eq!(target(&h, 3).unwrap(), 1);
    }

    #[test]
    fn a_model_a_rollback_left_is_not_gone_back_to() {
        // m1, m2, m1 again; back to m2, then m1 is the model that rollback left.
        let h = vec![
            row(1, 1, None, false),
            row(2, 2, Some(1), false),
            row(3, 1, Some(2), false),
            row(4, 2, Some(1), true),
        ];
        let e = target(&h, 2).unwrap_err().to_string();
        assert!(
            e.contains("\"m1\" (rolled back from)") && e.contains("modeld activate"),
            "{e}"
        );
    }

    #[test]
    fn a_deleted_model_is_passed_over() {
        let mut h = vec![
            row(1, 1, None, false),
            row(2, 2, Some(1), false),
            row(3, 3, Some(2), false),
        ];
        h[1].model_id = None;
        h[2].previous_model_id = None;
        assert_eq!(target(&h, 3).unwrap(), 1);
    }

    #[test]
    fn a_history_cut_short_starts_from_the_first_rows_previous_model() {
        let h = vec![row(7, 5, Some(4), false)];
        assert_eq!(target(&h, 5).unwrap(), 4);
        assert_eq!(
            target(&h, 9).unwrap(),
            5,
            "made active outside the history: back to the last one"
        );
    }
}
