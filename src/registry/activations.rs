//! The `model_activations` table: who activated what, from which model, when and why; the
//! activation itself (one transaction) and the history rollback reads.

use chrono::{DateTime, Utc};

use super::{EventKind, ModelRecord, Pool, Registry};
use crate::error::{Error, Result};
use crate::name;
use crate::signature::Signature;

/// Ends the active model's term (bind: false, now, true): it becomes `deprecated`.
///
/// Every query about "the" active model, canary or shadow reads the `default` deployment
/// (id 1, [`super::DEFAULT_DEPLOYMENT_ID`]), where every model is registered until
/// registration and serving take a deployment (issue 29): another deployment's roles, made
/// from a SQL console, never reach what this registry's servers serve.
pub(super) const DEACTIVATE: &str = "UPDATE ml_models SET is_active = $1, status = 'deprecated', deprecated_at = $2, \
     updated_at = $2 WHERE is_active = $3 AND deployment_id = 1";

/// Makes a model the active one (bind: true, now, model_id), out of any rollout role; append
/// `RETURNING` and the columns.
macro_rules! activate_sql {
    () => {
        concat!(
            "UPDATE ml_models SET is_active = $1, status = 'active', deprecated_at = NULL, rollout_percentage = 0, \
             shadow_percentage = 0, updated_at = $2 WHERE model_id = $3 RETURNING ",
            columns!()
        )
    };
}
pub(super) use activate_sql;

/// Who activates and why, for the history.
#[derive(Debug, Clone)]
pub struct ActivationMeta {
    /// Recorded as activated_by.
    pub activated_by: String,
    /// Recorded as reason.
    pub reason: String,
    /// Whether this activation is a rollback.
    pub is_rollback: bool,
}

impl ActivationMeta {
    /// Refuses a `by` or `reason` the registry does not store (a NUL byte, too long).
    ///
    /// # Errors
    /// `InvalidArgument` naming the field.
    pub fn check(&self) -> crate::error::Result<()> {
        super::text::WHO.check(&self.activated_by)?;
        super::text::REASON.check(&self.reason)
    }
}

/// What an activation commits under, checked inside its transaction (under the write lock), so
/// another writer changing the active model between a check and the commit cannot slip past it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conditions {
    /// Only while this model is still the active one: a rollback from it, or a gate's verdict
    /// that holds against it only.
    pub only_if_active: Option<i64>,
    /// Only if the model's signature keeps the clients of the active model (whichever it is
    /// at the commit) working. A compatibility test, not an identity test: activations of
    /// models with one signature never refuse each other.
    pub compatible: bool,
}

/// The refusal of the signature guard: activating `candidate` (signature `next`) would break
/// the clients of `active` (signature `served`). `None` when nothing breaks.
pub(crate) fn signature_refusal(candidate: &str, next: &Signature, active: &str, served: &Signature) -> Option<Error> {
    signature_refusal_as("activating", candidate, next, active, served)
}

/// [`signature_refusal`], for another change than an activation ("the canary \"x\" would break …").
pub(crate) fn signature_refusal_as(
    action: &str,
    candidate: &str,
    next: &Signature,
    active: &str,
    served: &Signature,
) -> Option<Error> {
    let breaks = served.breaks(next);
    if breaks.is_empty() {
        return None;
    }
    Some(Error::FailedPrecondition(format!(
        "{action} {} would break the clients of the active model {}: {}. Its signature: {}; the active \
         model's: {}. Pass --allow-signature-change (allow_signature_change) to do it anyway",
        name::quoted(candidate),
        name::quoted(active),
        breaks.join("; "),
        next.text(),
        served.text()
    )))
}

/// The result of an activation commit.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The model now active.
    pub active: ModelRecord,
    /// The model active before, if any, as the activation left it (no longer active).
    pub previous: Option<ModelRecord>,
    /// The model was already the active one: nothing changed (and `previous` is `None`).
    pub unchanged: bool,
}

/// `previous` as [`DEACTIVATE`] left it (it was read before the statement ran).
pub(super) fn deactivated(previous: Option<ModelRecord>, now: DateTime<Utc>) -> Option<ModelRecord> {
    previous.map(|mut p| {
        p.is_active = false;
        p.status = "deprecated".into();
        p.deprecated_at = Some(now);
        p.updated_at = now;
        p
    })
}

/// A `model_activations` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct ActivationRecord {
    /// Primary key, increasing.
    pub activation_id: i64,
    /// The activated model; `None` once that record was deleted.
    pub model_id: Option<i64>,
    /// Its name at the time.
    pub model_name: String,
    /// The model active before; `None` when there was none or it was deleted.
    pub previous_model_id: Option<i64>,
    /// Its name at the time.
    pub previous_name: Option<String>,
    /// When.
    pub activated_at: DateTime<Utc>,
    /// Who.
    pub activated_by: String,
    /// Why.
    pub reason: String,
    /// Whether it was a rollback.
    pub is_rollback: bool,
}

impl Registry {
    /// Makes `model_id` the one active model, if its checksum is still `checksum` (the file that
    /// was verified and loaded) and the `conditions` hold; appends to the activation history.
    ///
    /// # Errors
    /// `NotFound` when the record is gone; `FailedPrecondition` when its checksum changed, the
    /// model of `only_if_active` is no longer the active model, or (with `compatible`) the
    /// model's signature would break the active model's clients.
    pub async fn activate(
        &self,
        model_id: i64,
        checksum: &str,
        meta: &ActivationMeta,
        conditions: Conditions,
    ) -> Result<Activation> {
        meta.check()?;
        let only_if_active = conditions.only_if_active;
        let select_active = concat!(
            "SELECT ",
            columns!(),
            " FROM ml_models WHERE is_active = $1 AND deployment_id = 1"
        );
        let select_one = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_id = $1");
        let activate = activate_sql!();
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The write lock first: concurrent activations queue here, then see fresh rows.
            bump!(tx, now);
            let target: Option<ModelRecord> = sqlx::query_as(select_one).bind(model_id).fetch_optional(&mut *tx).await?;
            let target = target.ok_or_else(|| Error::NotFound(format!("model id {model_id} is not registered (deleted meanwhile?)")))?;
            if target.checksum_sha256 != checksum {
                return Err(Error::FailedPrecondition(format!(
                    "model {} changed in the registry while it was loading (checksum now {}); try again",
                    name::quoted(&target.model_name),
                    target.checksum_sha256
                )));
            }
            let previous: Option<ModelRecord> = sqlx::query_as(select_active).bind(true).fetch_optional(&mut *tx).await?;
            // A conditional change (a rollback from a model): only while that model is still
            // the active one, checked under the write lock, so two servers (or a person and the
            // automatic guard) rolling back from it at once never flip it back in.
            if let Some(from) = only_if_active
                && previous.as_ref().is_none_or(|p| p.model_id != from)
            {
                return Err(Error::ActiveChanged(format!(
                    "the active model changed meanwhile (it is now {}); nothing was {}",
                    previous.as_ref().map_or_else(|| "none".to_string(), |p| name::quoted(&p.model_name)),
                    if meta.is_rollback { "rolled back" } else { "activated: check again and retry" }
                )));
            }
            // The signature guard, against the model active at the commit (not the one active
            // when the caller checked: another server may have activated one meanwhile).
            if conditions.compatible
                && let Some(p) = previous.as_ref().filter(|p| p.model_id != model_id)
                && let Some(refused) = signature_refusal(&target.model_name, &target.signature()?, &p.model_name, &p.signature()?)
            {
                return Err(refused);
            }
            if previous.as_ref().is_some_and(|p| p.model_id == model_id) {
                // Already active: nothing to change, no history row.
                tx.rollback().await?;
                return Ok(Activation { active: target, previous: None, unchanged: true });
            }
            sqlx::query(DEACTIVATE).bind(false).bind(now).bind(true).execute(&mut *tx).await?;
            // A canary (promoted) or a shadow leaves its rollout role as it becomes active.
            if let Some((role, p)) = super::rollout::held_role(&target) {
                let left = super::RolloutMeta {
                    changed_by: meta.activated_by.clone(),
                    reason: if meta.reason.is_empty() { "activated".into() } else { format!("activated: {}", meta.reason) },
                    automatic: false,
                };
                super::rollout::record_rollout_change!(tx, &target, role, Some(p), None, &left, now);
            }
            let active: ModelRecord = sqlx::query_as(activate).bind(true).bind(now).bind(model_id).fetch_one(&mut *tx).await?;
            record_activation!(tx, active, previous.as_ref(), meta, now);
            let kind = if meta.is_rollback { EventKind::RolledBack } else { EventKind::Activated };
            record_event!(&mut *tx, self.origin, kind, Some(active.model_id), &active.model_name, &meta.reason, now);
            tx.commit().await?;
            Ok(Activation { active, previous: deactivated(previous, now), unchanged: false })
        })
    }

    /// The most recent activation.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn last_activation(&self) -> Result<Option<ActivationRecord>> {
        Ok(self.activations(1).await?.into_iter().next())
    }

    /// The most recent activation of `model_id` (the one rolling back from it undoes).
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn last_activation_of(&self, model_id: i64) -> Result<Option<ActivationRecord>> {
        let sql = "SELECT activation_id, model_id, model_name, previous_model_id, previous_name, activated_at, \
                   activated_by, reason, is_rollback FROM model_activations WHERE model_id = $1 \
                   ORDER BY activation_id DESC LIMIT 1";
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(model_id).fetch_optional(p).await?))
    }

    /// The most recent activations that made `model_id` active or replaced it, newest first.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn activations_of(&self, model_id: i64, limit: i64) -> Result<Vec<ActivationRecord>> {
        let sql = "SELECT activation_id, model_id, model_name, previous_model_id, previous_name, activated_at, \
                   activated_by, reason, is_rollback FROM model_activations \
                   WHERE model_id = $1 OR previous_model_id = $1 ORDER BY activation_id DESC LIMIT $2";
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(model_id).bind(limit).fetch_all(p).await?))
    }

    /// The most recent activations, newest first.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn activations(&self, limit: i64) -> Result<Vec<ActivationRecord>> {
        let sql = "SELECT activation_id, model_id, model_name, previous_model_id, previous_name, activated_at, \
                   activated_by, reason, is_rollback FROM model_activations ORDER BY activation_id DESC LIMIT $1";
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(limit).fetch_all(p).await?))
    }
}
