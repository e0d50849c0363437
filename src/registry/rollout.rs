//! The rollout roles of `ml_models`: the canary (a share of requests, by routing key) and the
//! shadow (a share of requests mirrored to it). One model each at most, never the active model:
//! the database enforces both (migration 0005).

use chrono::{DateTime, Utc};

use super::{EventKind, ModelRecord, Pool, Registry};
use crate::error::{Error, Result};
use crate::name;

/// A rollout role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutRole {
    /// Serves its percentage of requests (by routing key) in place of the active model.
    Canary,
    /// Runs its percentage of requests after the active model answered; never answers.
    Shadow,
}

impl RolloutRole {
    /// The name in `status`, messages and events.
    pub fn name(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::Shadow => "shadow",
        }
    }
}

/// The rollout as the registry has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollout {
    /// The canary, with its `rollout_percentage`.
    pub canary: Option<ModelRecord>,
    /// The shadow, with its `shadow_percentage`.
    pub shadow: Option<ModelRecord>,
}

impl Rollout {
    /// The model in `role`.
    pub fn get(&self, role: RolloutRole) -> Option<&ModelRecord> {
        match role {
            RolloutRole::Canary => self.canary.as_ref(),
            RolloutRole::Shadow => self.shadow.as_ref(),
        }
    }
}

/// The percentage of `record` in `role`.
pub fn percentage(record: &ModelRecord, role: RolloutRole) -> u8 {
    let p = match role {
        RolloutRole::Canary => record.rollout_percentage,
        RolloutRole::Shadow => record.shadow_percentage,
    };
    u8::try_from(p.clamp(0, 100)).unwrap_or(0)
}

/// What a rollout change did.
#[derive(Debug, Clone)]
pub struct RolloutChange {
    /// The model in the role now (`None` after a clear).
    pub model: Option<ModelRecord>,
    /// The model that held the role before, if another (it is `testing` again).
    pub replaced: Option<ModelRecord>,
}

/// Who changes a rollout role and why: kept in the rollout history and the event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutMeta {
    /// The person, token or process (the guard for an automatic rollback).
    pub changed_by: String,
    /// Why.
    pub reason: String,
    /// An automatic rollback, not a person's change.
    pub automatic: bool,
}

impl RolloutMeta {
    /// A person's (or a script's) change.
    pub fn by(changed_by: &str, reason: &str) -> Self {
        Self {
            changed_by: changed_by.to_string(),
            reason: reason.to_string(),
            automatic: false,
        }
    }

    /// Refuses a `by` or `reason` the registry does not store (a NUL byte, too long).
    ///
    /// # Errors
    /// `InvalidArgument` naming the field.
    pub fn check(&self) -> crate::error::Result<()> {
        super::text::WHO.check(&self.changed_by)?;
        super::text::REASON.check(&self.reason)
    }

    /// What the event adds after its own words: ` (by NAME): REASON`.
    fn suffix(&self) -> String {
        match (self.changed_by.is_empty(), self.reason.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!(" (by {})", self.changed_by),
            (true, false) => format!(": {}", self.reason),
            (false, false) => format!(" (by {}): {}", self.changed_by, self.reason),
        }
    }
}

/// A `rollout_changes` row: one change of a model's place in a rollout role.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RolloutChangeRecord {
    /// Primary key, increasing.
    pub change_id: i64,
    /// The model; `None` once its record was deleted.
    pub model_id: Option<i64>,
    /// Its name at the time.
    pub model_name: String,
    /// `canary` or `shadow`.
    pub role: String,
    /// Its percentage before; `None` when it did not hold the role.
    pub percentage_before: Option<i32>,
    /// Its percentage after; `None` when it left the role (cleared, replaced, activated).
    pub percentage_after: Option<i32>,
    /// When.
    pub changed_at: DateTime<Utc>,
    /// Who.
    pub changed_by: String,
    /// Why.
    pub reason: String,
    /// An automatic rollback.
    pub is_automatic: bool,
}

/// Appends a `rollout_changes` row inside the changing transaction.
macro_rules! record_rollout_change {
    ($tx:expr, $model:expr, $role:expr, $before:expr, $after:expr, $meta:expr, $now:expr) => {{
        let model: &$crate::registry::ModelRecord = $model;
        let meta: &$crate::registry::RolloutMeta = $meta;
        let (before, after): (Option<i32>, Option<i32>) = ($before, $after);
        sqlx::query(
            "INSERT INTO rollout_changes (model_id, model_name, role, percentage_before, percentage_after, \
             changed_at, changed_by, reason, is_automatic) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(model.model_id)
        .bind(&model.model_name)
        .bind($role.name())
        .bind(before)
        .bind(after)
        .bind($now)
        .bind(&meta.changed_by)
        .bind(&meta.reason)
        .bind(meta.automatic)
        .execute(&mut *$tx)
        .await?
    }};
}
pub(crate) use record_rollout_change;

/// The role `record` holds, if a rollout role, and its percentage there.
pub(crate) fn held_role(record: &ModelRecord) -> Option<(RolloutRole, i32)> {
    match record.status.as_str() {
        "canary" => Some((RolloutRole::Canary, record.rollout_percentage)),
        "shadow" => Some((RolloutRole::Shadow, record.shadow_percentage)),
        _ => None,
    }
}

impl Registry {
    /// The most recent rollout changes (of `role`, or of both), newest first.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn rollout_changes(&self, role: Option<RolloutRole>, limit: i64) -> Result<Vec<RolloutChangeRecord>> {
        let sql = "SELECT change_id, model_id, model_name, role, percentage_before, percentage_after, changed_at, \
                   changed_by, reason, is_automatic FROM rollout_changes WHERE ($1 = '' OR role = $1) \
                   ORDER BY change_id DESC LIMIT $2";
        let role = role.map_or("", RolloutRole::name);
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(role).bind(limit).fetch_all(p).await?))
    }

    /// The canary and the shadow.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn rollout(&self) -> Result<Rollout> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM ml_models WHERE (status = $1 OR status = $2) AND deployment_id = 1"
        );
        let rows: Vec<ModelRecord> =
            with_pool!(self, p => sqlx::query_as(sql).bind("canary").bind("shadow").fetch_all(p).await?);
        let mut out = Rollout::default();
        for r in rows {
            match r.status.as_str() {
                "canary" => out.canary = Some(r),
                _ => out.shadow = Some(r),
            }
        }
        Ok(out)
    }

    /// Puts `model_id` in `role` with `percentage` (0-100), if its checksum is still `checksum`
    /// (the file that was verified): the model that held the role goes back to `testing`. The
    /// same model again only changes its percentage.
    ///
    /// # Errors
    /// `NotFound` when the record is gone; `FailedPrecondition` for the active model or a
    /// changed checksum; `InvalidArgument` for a percentage above 100.
    pub async fn set_rollout(
        &self,
        role: RolloutRole,
        model_id: i64,
        checksum: &str,
        percentage: u8,
        meta: &RolloutMeta,
    ) -> Result<RolloutChange> {
        meta.check()?;
        if percentage > 100 {
            return Err(Error::InvalidArgument(format!(
                "a {} percentage is 0 to 100, got {percentage}",
                role.name()
            )));
        }
        let select_one = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_id = $1");
        let select_role = concat!(
            "SELECT ",
            columns!(),
            " FROM ml_models WHERE status = $1 AND deployment_id = 1"
        );
        let demote = "UPDATE ml_models SET status = 'testing', rollout_percentage = 0, shadow_percentage = 0, \
                      updated_at = $1 WHERE model_id = $2";
        let promote = match role {
            RolloutRole::Canary => concat!(
                "UPDATE ml_models SET status = $1, shadow_percentage = 0, rollout_percentage = $2, updated_at = $3 \
                 WHERE model_id = $4 RETURNING ",
                columns!()
            ),
            RolloutRole::Shadow => concat!(
                "UPDATE ml_models SET status = $1, rollout_percentage = 0, shadow_percentage = $2, updated_at = $3 \
                 WHERE model_id = $4 RETURNING ",
                columns!()
            ),
        };
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let target: Option<ModelRecord> = sqlx::query_as(select_one).bind(model_id).fetch_optional(&mut *tx).await?;
            let target = target.ok_or_else(|| Error::NotFound(format!("model id {model_id} is not registered (deleted meanwhile?)")))?;
            let shown = name::quoted(&target.model_name);
            if target.is_active {
                return Err(Error::FailedPrecondition(format!(
                    "{shown} is the active model: it cannot also be the {}; choose another model",
                    role.name()
                )));
            }
            if target.checksum_sha256 != checksum {
                return Err(Error::FailedPrecondition(format!(
                    "model {shown} changed in the registry while it was loading; try again"
                )));
            }
            let previous: Option<ModelRecord> = sqlx::query_as(select_role).bind(role.name()).fetch_optional(&mut *tx).await?;
            let before = held_role(&target).filter(|(r, _)| *r == role).map(|(_, p)| p);
            let replaced = previous.filter(|p| p.model_id != model_id);
            if let Some(old) = &replaced {
                sqlx::query(demote).bind(now).bind(old.model_id).execute(&mut *tx).await?;
                let why = RolloutMeta {
                    reason: format!("replaced by {}", name::quoted(&target.model_name)),
                    ..meta.clone()
                };
                record_rollout_change!(tx, old, role, held_role(old).map(|(_, p)| p), None, &why, now);
            }
            // Leaving the other role for this one.
            if let Some((other, p)) = held_role(&target).filter(|(r, _)| *r != role) {
                let why = RolloutMeta {
                    reason: format!("became the {}", role.name()),
                    ..meta.clone()
                };
                record_rollout_change!(tx, &target, other, Some(p), None, &why, now);
            }
            let updated: ModelRecord = sqlx::query_as(promote)
                .bind(role.name())
                .bind(i32::from(percentage))
                .bind(now)
                .bind(model_id)
                .fetch_one(&mut *tx)
                .await?;
            record_rollout_change!(tx, &updated, role, before, Some(i32::from(percentage)), meta, now);
            let detail = format!("{} at {percentage}%{}{}", role.name(),
                replaced.as_ref().map_or_else(String::new, |r| format!(", replacing {}", name::quoted(&r.model_name))),
                meta.suffix());
            record_event!(&mut *tx, self.origin, EventKind::RolloutChanged, Some(model_id), &updated.model_name, &detail, now);
            tx.commit().await?;
            Ok(RolloutChange { model: Some(updated), replaced })
        })
    }

    /// Takes the model out of `role` (it goes back to `testing`); with `only_if`, only while
    /// that model still holds it. Nothing in the role: nothing changes.
    ///
    /// # Errors
    /// `FailedPrecondition` when `only_if` no longer holds the role.
    pub async fn clear_rollout(
        &self,
        role: RolloutRole,
        only_if: Option<i64>,
        meta: &RolloutMeta,
    ) -> Result<RolloutChange> {
        meta.check()?;
        let select_role = concat!(
            "SELECT ",
            columns!(),
            " FROM ml_models WHERE status = $1 AND deployment_id = 1"
        );
        let demote = "UPDATE ml_models SET status = 'testing', rollout_percentage = 0, shadow_percentage = 0, \
                      updated_at = $1 WHERE model_id = $2";
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let holder: Option<ModelRecord> = sqlx::query_as(select_role).bind(role.name()).fetch_optional(&mut *tx).await?;
            if let Some(want) = only_if && holder.as_ref().is_none_or(|h| h.model_id != want) {
                return Err(Error::FailedPrecondition(format!(
                    "the {} changed meanwhile (it is now {}); nothing was cleared",
                    role.name(),
                    holder.as_ref().map_or_else(|| "none".to_string(), |h| name::quoted(&h.model_name))
                )));
            }
            let Some(holder) = holder else {
                tx.rollback().await?;
                return Ok(RolloutChange { model: None, replaced: None });
            };
            sqlx::query(demote).bind(now).bind(holder.model_id).execute(&mut *tx).await?;
            record_rollout_change!(tx, &holder, role, held_role(&holder).map(|(_, p)| p), None, meta, now);
            let detail = format!("{} cleared{}", role.name(), meta.suffix());
            record_event!(&mut *tx, self.origin, EventKind::RolloutChanged, Some(holder.model_id), &holder.model_name, &detail, now);
            tx.commit().await?;
            Ok(RolloutChange { model: None, replaced: Some(holder) })
        })
    }

    /// The automatic rollback of a canary: its percentage goes to 0, only while `model_id` is
    /// still the canary with a percentage above 0 (so a fleet whose servers all see the errors
    /// acts once: the others change nothing). Whether this call changed it.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn pause_canary(&self, model_id: i64, why: &str) -> Result<bool> {
        let select_one = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_id = $1");
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let held: Option<ModelRecord> = sqlx::query_as(select_one).bind(model_id).fetch_optional(&mut *tx).await?;
            let Some(canary) = held.filter(|m| m.status == "canary" && m.rollout_percentage > 0) else {
                tx.rollback().await?;
                return Ok(false);
            };
            sqlx::query("UPDATE ml_models SET rollout_percentage = 0, updated_at = $1 WHERE model_id = $2")
                .bind(now)
                .bind(model_id)
                .execute(&mut *tx)
                .await?;
            let meta = RolloutMeta {
                changed_by: "guard".into(),
                reason: format!("automatic rollback: {why}"),
                automatic: true,
            };
            record_rollout_change!(tx, &canary, RolloutRole::Canary, Some(canary.rollout_percentage), Some(0), &meta, now);
            let detail = format!("canary at 0%: automatic rollback: {why}");
            record_event!(&mut *tx, self.origin, EventKind::RolloutChanged, Some(model_id), &canary.model_name, &detail, now);
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Marks the active model `model_id` stable (it served through its watch period without a
    /// rollback), if it is still the active one.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn mark_stable(&self, model_id: i64) -> Result<bool> {
        let sql = "UPDATE ml_models SET is_stable = $1 WHERE model_id = $2 AND is_active = $3 AND is_stable = $4";
        let n = with_pool!(self, p => sqlx::query(sql).bind(true).bind(model_id).bind(true).bind(false).execute(p).await?.rows_affected());
        Ok(n > 0)
    }
}
