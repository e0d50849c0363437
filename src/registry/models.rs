//! The `ml_models` table: one row per registered model.

use chrono::{DateTime, Utc};

use super::activations::{DEACTIVATE, activate_sql};
use super::{Activation, ActivationMeta, EventKind, Origin, Pool, Registry, text};
use crate::error::{Error, Result};
use crate::name;
use crate::signature::Signature;

/// A registry record (`ml_models` row).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ModelRecord {
    /// Primary key.
    pub model_id: i64,
    /// Unique name.
    pub model_name: String,
    /// Free-form version label.
    pub version: String,
    /// Path relative to the model root.
    pub file_path: String,
    /// Free text.
    pub description: String,
    /// Free text, e.g. "classifier".
    pub model_type: String,
    /// 0..1 when known.
    pub accuracy: Option<f64>,
    /// Hex sha256 of the file.
    pub checksum_sha256: String,
    /// File size.
    pub file_size_bytes: i64,
    /// JSON of [`Signature`].
    pub signature: String,
    /// The one active model.
    pub is_active: bool,
    /// When registered.
    pub created_at: DateTime<Utc>,
    /// When last changed.
    pub updated_at: DateTime<Utc>,
    /// Who registered it.
    pub created_by: String,
    /// Its place in the lifecycle: `registered`, `testing`, `canary`, `shadow`, `active` (exactly
    /// when `is_active`) or `deprecated`.
    pub status: String,
    /// As the canary: its share of requests, 0-100 (by routing key).
    pub rollout_percentage: i32,
    /// As the shadow: the share of requests mirrored to it, 0-100.
    pub shadow_percentage: i32,
    /// Error rate (0-1) over the window above which it is rolled back; `None`: never
    /// automatically.
    pub rollback_threshold: Option<f64>,
    /// Requests the window must hold before the threshold counts.
    pub rollback_min_samples: i32,
    /// The sliding window, in seconds.
    pub rollback_window_secs: i32,
    /// Optional p99 latency threshold over the same window, in ms.
    pub rollback_p99_ms: Option<f64>,
    /// Served as the active model through its watch period without a rollback.
    pub is_stable: bool,
    /// When it stopped being the active model (replaced or rolled back from).
    pub deprecated_at: Option<DateTime<Utc>>,
    /// The oldest app version that may use it, for every platform (the model-config
    /// endpoint's `minAppVersion`).
    pub min_app_version: Option<String>,
    /// Per platform (`X-App-Platform`), a JSON object such as `{"ios": "2.3.0"}`; a platform
    /// not in it gets `min_app_version`.
    pub min_app_versions: String,
    /// The deployment it belongs to (`deployments`; 1 is `default`).
    pub deployment_id: i64,
}

impl ModelRecord {
    /// The parsed signature.
    ///
    /// # Errors
    /// `Internal` when the stored JSON is not a signature.
    pub fn signature(&self) -> Result<Signature> {
        Signature::from_json(&self.signature)
    }
}

/// Names a model by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    /// By `model_id`.
    Id(i64),
    /// By `model_name`.
    Name(String),
}

impl std::fmt::Display for ModelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "model id {id}"),
            Self::Name(n) => write!(f, "model {}", name::quoted(n)),
        }
    }
}

/// What registration stores.
#[derive(Debug, Clone)]
pub struct NewModel {
    /// Unique name.
    pub model_name: String,
    /// Version label.
    pub version: String,
    /// Relative path.
    pub file_path: String,
    /// Free text.
    pub description: String,
    /// Free text.
    pub model_type: String,
    /// 0..1.
    pub accuracy: Option<f64>,
    /// Hex sha256 as computed at registration.
    pub checksum_sha256: String,
    /// Size as read at registration.
    pub file_size_bytes: i64,
    /// The signature read from the file.
    pub signature: Signature,
    /// Who registers.
    pub created_by: String,
}

/// Metadata changes (`UpdateModel`); `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ModelChanges {
    /// New version label.
    pub version: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New type.
    pub model_type: Option<String>,
    /// New accuracy.
    pub accuracy: Option<f64>,
    /// A new automatic rollback policy (replacing the whole policy).
    pub rollback: Option<RollbackPolicy>,
    /// A new minimum app version for every platform; `Some("")` clears it.
    pub min_app_version: Option<String>,
    /// New per-platform minimum app versions (replacing them all).
    pub min_app_versions: Option<std::collections::BTreeMap<String, String>>,
}

/// When a model is rolled back automatically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackPolicy {
    /// Error rate 0-1 over the window; `None`: never automatically.
    pub threshold: Option<f64>,
    /// Requests the window must hold before it counts.
    pub min_samples: u32,
    /// The window, in seconds (1-3600).
    pub window_secs: u32,
    /// An optional p99 latency threshold, in ms.
    pub p99_ms: Option<f64>,
}

/// The largest `min_samples` of a rollback policy.
pub const MAX_MIN_SAMPLES: u32 = 1_000_000;

/// The longest window of a rollback policy, in seconds.
pub const MAX_WINDOW_SECS: u32 = 3600;

impl RollbackPolicy {
    /// Refuses values the schema would (the column is a 32-bit integer).
    ///
    /// # Errors
    /// `InvalidArgument` naming the value.
    pub fn check(&self) -> Result<()> {
        if let Some(t) = self.threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(Error::InvalidArgument(format!(
                "the rollback threshold is an error rate from 0 to 1, got {t}"
            )));
        }
        if !(1..=MAX_MIN_SAMPLES).contains(&self.min_samples) {
            return Err(Error::InvalidArgument(format!(
                "the rollback's minimum sample count is 1 to {MAX_MIN_SAMPLES}, got {}",
                self.min_samples
            )));
        }
        if !(1..=MAX_WINDOW_SECS).contains(&self.window_secs) {
            return Err(Error::InvalidArgument(format!(
                "the rollback window is 1 to {MAX_WINDOW_SECS} seconds, got {}",
                self.window_secs
            )));
        }
        if let Some(p) = self.p99_ms
            && !(p.is_finite() && p > 0.0)
        {
            return Err(Error::InvalidArgument(format!(
                "the rollback p99 threshold is a positive number of ms, got {p}"
            )));
        }
        Ok(())
    }
}

/// Sort order for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Registration time (the default).
    #[default]
    CreatedAt,
    /// Name.
    Name,
    /// Accuracy (unknown last).
    Accuracy,
    /// Id.
    Id,
}

impl Registry {
    /// One model by id or name.
    ///
    /// # Errors
    /// `NotFound` when there is no such model.
    pub async fn get(&self, model: &ModelRef) -> Result<ModelRecord> {
        match self.find(model).await? {
            Some(found) => Ok(found),
            None => Err(self.not_registered(model).await),
        }
    }

    /// The answer for a model that is not registered: for a name, with the registered names
    /// it is closest to (a typo: `digts_v2` → did you mean "digits_v2"?).
    pub async fn not_registered(&self, model: &ModelRef) -> Error {
        let ModelRef::Name(typed) = model else {
            return Error::NotFound(format!("{model} is not registered (modeld list shows what is)"));
        };
        // The names of a registry of any size: the most recent thousand are enough to
        // suggest from, and one indexed scan of a column.
        let sql = "SELECT model_name FROM ml_models ORDER BY model_id DESC LIMIT 1000";
        let names: Vec<String> = match &self.pool {
            Pool::Sqlite(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap_or_default(),
            Pool::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.unwrap_or_default(),
        };
        let close = name::closest(typed, names.iter().map(String::as_str));
        if close.is_empty() {
            return Error::NotFound(format!("{model} is not registered (modeld list shows what is)"));
        }
        let close: Vec<String> = close.iter().map(|n| name::quoted(n)).collect();
        Error::NotFound(format!(
            "{model} is not registered; did you mean {}? (modeld list shows every model)",
            close.join(" or ")
        ))
    }

    /// One model by id or name, or `None`.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn find(&self, model: &ModelRef) -> Result<Option<ModelRecord>> {
        let found = match model {
            ModelRef::Id(id) => {
                let sql = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_id = $1");
                with_pool!(self, p => sqlx::query_as(sql).bind(*id).fetch_optional(p).await?)
            }
            ModelRef::Name(name) => {
                name::refuse_nul(name, "model")?;
                // Names are stored NFC: a name typed in another normal form finds its model.
                let name = name::nfc(name);
                let sql = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_name = $1");
                with_pool!(self, p => sqlx::query_as(sql).bind(name.as_ref()).fetch_optional(p).await?)
            }
        };
        Ok(found)
    }

    /// The active model, if one is active.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn active(&self) -> Result<Option<ModelRecord>> {
        let sql = concat!(
            "SELECT ",
            columns!(),
            " FROM ml_models WHERE is_active = $1 AND deployment_id = 1"
        );
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(true).fetch_optional(p).await?))
    }

    /// Number of registered models.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn count(&self) -> Result<i64> {
        let sql = "SELECT COUNT(*) FROM ml_models";
        Ok(with_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }

    /// A page of models.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn list(&self, order: Order, descending: bool, limit: i64, offset: i64) -> Result<Vec<ModelRecord>> {
        let dir = if descending { "DESC" } else { "ASC" };
        let key = match order {
            Order::CreatedAt => format!("created_at {dir}, model_id {dir}"),
            Order::Name => format!("model_name {dir}"),
            Order::Accuracy => format!("(accuracy IS NULL) ASC, accuracy {dir}, model_id {dir}"),
            Order::Id => format!("model_id {dir}"),
        };
        // `key` comes from the `Order` enum above, never from user text.
        let sql = format!(
            concat!("SELECT ", columns!(), " FROM ml_models ORDER BY {} LIMIT $1 OFFSET $2"),
            key
        );
        Ok(
            with_pool!(self, p => sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(limit).bind(offset).fetch_all(p).await?),
        )
    }

    /// Inserts a model; with `activate`, also makes it the active model in the same transaction.
    ///
    /// # Errors
    /// `AlreadyExists` for a duplicate name; `InvalidArgument` for values the schema refuses.
    pub async fn insert(&self, new: &NewModel, activate: Option<&ActivationMeta>) -> Result<Activation> {
        text::check_field("model_name", &new.model_name, name::MAX_NAME_CHARS)?;
        text::VERSION.check(&new.version)?;
        text::FILE_PATH.check(&new.file_path)?;
        text::DESCRIPTION.check(&new.description)?;
        text::MODEL_TYPE.check(&new.model_type)?;
        text::check_field("created_by", &new.created_by, text::WHO.1)?;
        if let Some(meta) = activate {
            meta.check()?;
        }
        let insert = concat!(
            "INSERT INTO ml_models (model_name, version, file_path, description, model_type, accuracy, \
             checksum_sha256, file_size_bytes, signature, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            // After the bump: writers queue on it, so no other can take the name meanwhile.
            let deployment: Option<i64> = sqlx::query_scalar("SELECT deployment_id FROM deployments WHERE name = $1")
                .bind(&new.model_name)
                .fetch_optional(&mut *tx)
                .await?;
            if deployment.is_some() {
                return Err(Error::AlreadyExists(format!(
                    "{} is a deployment's name; deployments and models share one namespace (a name means one thing)",
                    name::quoted(&new.model_name)
                )));
            }
            let inserted: std::result::Result<ModelRecord, sqlx::Error> = sqlx::query_as(insert)
                .bind(&new.model_name)
                .bind(&new.version)
                .bind(&new.file_path)
                .bind(&new.description)
                .bind(&new.model_type)
                .bind(new.accuracy)
                .bind(&new.checksum_sha256)
                .bind(new.file_size_bytes)
                .bind(new.signature.to_json())
                .bind(&new.created_by)
                .bind(now)
                .fetch_one(&mut *tx)
                .await;
            let record = match inserted {
                Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                    return Err(Error::AlreadyExists(format!("a model named {} is already registered", name::quoted(&new.model_name))));
                }
                other => other?,
            };
            record_event!(&mut *tx, self.origin, EventKind::Registered, Some(record.model_id), &record.model_name, &record.file_path, now);
            let result = match activate {
                None => Activation { active: record, previous: None, unchanged: false },
                Some(meta) => {
                    let previous: Option<ModelRecord> = sqlx::query_as(concat!("SELECT ", columns!(), " FROM ml_models WHERE is_active = $1 AND deployment_id = 1"))
                        .bind(true).fetch_optional(&mut *tx).await?;
                    sqlx::query(DEACTIVATE).bind(false).bind(now).bind(true).execute(&mut *tx).await?;
                    let active: ModelRecord = sqlx::query_as(activate_sql!())
                        .bind(true).bind(now).bind(record.model_id).fetch_one(&mut *tx).await?;
                    record_activation!(tx, active, previous.as_ref(), meta, now);
                    record_event!(&mut *tx, self.origin, EventKind::Activated, Some(active.model_id), &active.model_name, &meta.reason, now);
                    Activation { active, previous: super::activations::deactivated(previous, now), unchanged: false }
                }
            };
            tx.commit().await?;
            Ok(result)
        })
    }

    /// Changes metadata.
    ///
    /// # Errors
    /// `NotFound` when there is no such model; `InvalidArgument` for values the schema refuses.
    pub async fn update(&self, model: &ModelRef, changes: &ModelChanges) -> Result<ModelRecord> {
        for (limit, value) in [
            (text::VERSION, &changes.version),
            (text::DESCRIPTION, &changes.description),
            (text::MODEL_TYPE, &changes.model_type),
            (text::APP_VERSION, &changes.min_app_version),
        ] {
            if let Some(v) = value {
                limit.check(v)?;
            }
        }
        for (platform, v) in changes.min_app_versions.iter().flatten() {
            text::check_field("min_app_versions", platform, text::APP_VERSION.1)?;
            text::check_field(&format!("min_app_versions[{platform:?}]"), v, text::APP_VERSION.1)?;
        }
        if let Some(v) = changes.min_app_version.as_deref().filter(|v| !v.trim().is_empty()) {
            check_app_version("min_app_version", v)?;
        }
        for (platform, v) in changes.min_app_versions.iter().flatten() {
            check_platform(platform)?;
            check_app_version(&format!("min_app_versions[{platform:?}]"), v)?;
        }
        let id = self.get(model).await?.model_id;
        let sql = concat!(
            "UPDATE ml_models SET version = COALESCE($1, version), description = COALESCE($2, description), \
             model_type = COALESCE($3, model_type), accuracy = COALESCE($4, accuracy), updated_at = $5 \
             WHERE model_id = $6 RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let updated: Option<ModelRecord> = sqlx::query_as(sql)
                .bind(&changes.version)
                .bind(&changes.description)
                .bind(&changes.model_type)
                .bind(changes.accuracy)
                .bind(now)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let mut updated = updated.ok_or_else(|| Error::NotFound(format!("{model} is not registered")))?;
            if let Some(r) = &changes.rollback {
                updated = sqlx::query_as(concat!(
                    "UPDATE ml_models SET rollback_threshold = $1, rollback_min_samples = $2, rollback_window_secs = $3, \
                     rollback_p99_ms = $4 WHERE model_id = $5 RETURNING ",
                    columns!()
                ))
                .bind(r.threshold)
                .bind(i32::try_from(r.min_samples).unwrap_or(i32::MAX))
                .bind(i32::try_from(r.window_secs).unwrap_or(3600))
                .bind(r.p99_ms)
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            }
            if let Some(v) = &changes.min_app_version {
                let v = Some(v.trim()).filter(|v| !v.is_empty());
                updated = sqlx::query_as(concat!("UPDATE ml_models SET min_app_version = $1 WHERE model_id = $2 RETURNING ", columns!()))
                    .bind(v)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            }
            if let Some(map) = &changes.min_app_versions {
                let json = serde_json::to_string(map).map_err(|e| Error::internal(format!("cannot write min_app_versions: {e}")))?;
                updated = sqlx::query_as(concat!("UPDATE ml_models SET min_app_versions = $1 WHERE model_id = $2 RETURNING ", columns!()))
                    .bind(json)
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            }
            record_event!(&mut *tx, self.origin, EventKind::Updated, Some(updated.model_id), &updated.model_name, "", now);
            tx.commit().await?;
            Ok(updated)
        })
    }

    /// Records that the active model's file changed on disk and was loaded: the new checksum,
    /// size and signature, with a `reloaded` event, in one transaction. Only if the record still
    /// has `old_checksum` (another server may have recorded the same change first).
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn record_file_change(
        &self,
        model_id: i64,
        old_checksum: &str,
        new_checksum: &str,
        size: i64,
        signature: &Signature,
        detail: &str,
    ) -> Result<Option<ModelRecord>> {
        let sql = concat!(
            "UPDATE ml_models SET checksum_sha256 = $1, file_size_bytes = $2, signature = $3, updated_at = $4 \
             WHERE model_id = $5 AND checksum_sha256 = $6 RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let updated: Option<ModelRecord> = sqlx::query_as(sql)
                .bind(new_checksum).bind(size).bind(signature.to_json()).bind(now).bind(model_id).bind(old_checksum)
                .fetch_optional(&mut *tx).await?;
            if let Some(r) = &updated {
                let origin = Origin { source: "file".into(), server: self.origin.server.clone() };
                record_event!(&mut *tx, origin, EventKind::Reloaded, Some(r.model_id), &r.model_name, detail, now);
            }
            tx.commit().await?;
            Ok(updated)
        })
    }

    /// Deletes the record (never the file).
    ///
    /// # Errors
    /// `NotFound` when there is no such model; `FailedPrecondition` when it is the active model.
    pub async fn delete(&self, model: &ModelRef) -> Result<ModelRecord> {
        let id = self.get(model).await?.model_id;
        let sql = concat!(
            "DELETE FROM ml_models WHERE model_id = $1 AND is_active = $2 AND status NOT IN ('canary', 'shadow') RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let deleted: Option<ModelRecord> = sqlx::query_as(sql).bind(id).bind(false).fetch_optional(&mut *tx).await?;
            let Some(deleted) = deleted else {
                let still: Option<String> = sqlx::query_scalar("SELECT status FROM ml_models WHERE model_id = $1")
                    .bind(id).fetch_optional(&mut *tx).await?;
                return Err(match still.as_deref() {
                    Some("active") => Error::FailedPrecondition(format!(
                        "{model} is the active model; activate another model before deleting it"
                    )),
                    Some(role @ ("canary" | "shadow")) => Error::FailedPrecondition(format!(
                        "{model} is the {role}; clear it first (modeld {role} clear)"
                    )),
                    _ => Error::NotFound(format!("{model} is not registered")),
                });
            };
            record_event!(&mut *tx, self.origin, EventKind::Deleted, Some(deleted.model_id), &deleted.model_name, &deleted.file_path, now);
            tx.commit().await?;
            Ok(deleted)
        })
    }
}

/// An app version as apps name theirs: 1 to 64 characters of letters, digits, `.`, `-`, `+`
/// and `_` (`2.3.0`, `2.3.0-beta.1`).
fn check_app_version(what: &str, v: &str) -> Result<()> {
    let fine = (1..=64).contains(&v.len())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '_'));
    if fine {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} {v:?} is not an app version: 1-64 letters, digits, '.', '-', '+' or '_' (e.g. 2.3.0)"
        )))
    }
}

/// A platform as the `X-App-Platform` header names it: 1 to 32 lowercase letters, digits, `-`
/// and `_` (`ios`, `android`, `web`).
fn check_platform(p: &str) -> Result<()> {
    let fine = (1..=32).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
    if fine {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "platform {p:?} is not one X-App-Platform names: 1-32 lowercase letters, digits, '-' or '_' (e.g. ios)"
        )))
    }
}
