//! The model registry in SQL (sqlx): SQLite as the embedded default, PostgreSQL for a fleet.
//!
//! Both dialects run the same SQL text (`$1` placeholders work in both); each has its own
//! migration folder. Every state change is one transaction that first bumps
//! `registry_state.generation`: that row lock serialises writers across processes, so two
//! concurrent activations cannot both see the same "previous" model, and the partial unique
//! index `ml_models_one_active` makes a second active row impossible whatever a writer does.

pub mod name;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};
use crate::model::Signature;

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

/// The `ml_models` columns, in [`ModelRecord`] order, for `concat!`-built (static) SQL.
macro_rules! columns {
    () => {
        "model_id, model_name, version, file_path, description, model_type, accuracy, checksum_sha256, \
         file_size_bytes, signature, is_active, created_at, updated_at, created_by"
    };
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
            Self::Name(n) => write!(f, "model {n:?}"),
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
}

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

/// The result of an activation commit.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The model now active.
    pub active: ModelRecord,
    /// The model active before, if any.
    pub previous: Option<ModelRecord>,
}

/// A `model_activations` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
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

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the concrete pool: the same SQL for both dialects, each
/// compiled against its own driver.
macro_rules! with_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Bumps the generation. Run first in every write transaction: it takes the registry's write
/// lock (row lock on PostgreSQL, the database lock on SQLite) so writers queue instead of racing.
macro_rules! bump {
    ($tx:expr, $now:expr) => {
        sqlx::query("UPDATE registry_state SET generation = generation + 1, updated_at = $1 WHERE id = 1")
            .bind($now)
            .execute(&mut *$tx)
            .await?
    };
}

/// Appends a `model_activations` row inside the activating transaction.
macro_rules! record_activation {
    ($tx:expr, $active:expr, $previous:expr, $meta:expr, $now:expr) => {{
        let previous: Option<&ModelRecord> = $previous;
        sqlx::query(
            "INSERT INTO model_activations (model_id, model_name, previous_model_id, previous_name, \
             activated_at, activated_by, reason, is_rollback) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind($active.model_id)
        .bind(&$active.model_name)
        .bind(previous.map(|p| p.model_id))
        .bind(previous.map(|p| p.model_name.clone()))
        .bind($now)
        .bind(&$meta.activated_by)
        .bind(&$meta.reason)
        .bind($meta.is_rollback)
        .execute(&mut *$tx)
        .await?
    }};
}

/// Appends a `model_events` row (inside the transaction of the change it records).
macro_rules! record_event {
    ($exec:expr, $origin:expr, $kind:expr, $model_id:expr, $model_name:expr, $detail:expr, $now:expr) => {{
        let model_id: Option<i64> = $model_id;
        let model_name: &str = $model_name;
        let detail: &str = $detail;
        sqlx::query(
            "INSERT INTO model_events (kind, model_id, model_name, source, server, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind($kind.name())
        .bind(model_id)
        .bind(model_name)
        .bind(&$origin.source)
        .bind(&$origin.server)
        .bind(detail)
        .bind($now)
        .execute($exec)
        .await?
    }};
}

/// A connection pool on the registry database.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: Pool,
    origin: Origin,
}

/// Who writes: recorded with every event this registry handle stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// How the change came in: "api", "cli", "seed"…
    pub source: String,
    /// Which process: the server's name, or "cli@<host>".
    pub server: String,
}

impl Default for Origin {
    fn default() -> Self {
        Self {
            source: "api".into(),
            server: format!("modeld-{}", std::process::id()),
        }
    }
}

/// What happened, as stored in `model_events` and streamed by WatchEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A model was registered.
    Registered,
    /// Metadata changed.
    Updated,
    /// A model became the active one.
    Activated,
    /// A rollback activated the previous model.
    RolledBack,
    /// A record was deleted.
    Deleted,
    /// A server loaded and published a model (source: api, registry, file, startup).
    Reloaded,
    /// A server could not load what it should serve; it keeps its last good model.
    ReloadFailed,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        Self::Registered,
        Self::Updated,
        Self::Activated,
        Self::RolledBack,
        Self::Deleted,
        Self::Reloaded,
        Self::ReloadFailed,
    ];

    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Updated => "updated",
            Self::Activated => "activated",
            Self::RolledBack => "rolled_back",
            Self::Deleted => "deleted",
            Self::Reloaded => "reloaded",
            Self::ReloadFailed => "reload_failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A `model_events` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct EventRecord {
    /// Increasing id.
    pub event_id: i64,
    /// [`EventKind::name`].
    pub kind: String,
    /// The model concerned (no foreign key: events outlive records).
    pub model_id: Option<i64>,
    /// Its name at the time.
    pub model_name: String,
    /// api, cli, seed, registry, file, startup.
    pub source: String,
    /// Which process.
    pub server: String,
    /// Free text: reason, error.
    pub detail: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// `postgres://` and `postgresql://` URLs are PostgreSQL; anything else is a SQLite URL or path.
    pub fn of_url(url: &str) -> Self {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }
}

impl Registry {
    /// Connects to `url` and applies pending migrations. A SQLite file is created if missing
    /// (WAL mode, foreign keys on, a busy timeout so concurrent writers wait instead of failing).
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be reached; `Internal` when migration fails.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = match Backend::of_url(url) {
            Backend::Postgres => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await
                    .map_err(|e| Error::Unavailable(format!("cannot connect to the registry database: {e}")))?,
            ),
            Backend::Sqlite => {
                let opts = sqlite_options(url)?;
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(opts)
                        .await
                        .map_err(|e| Error::Unavailable(format!("cannot open the registry database {url}: {e}")))?,
                )
            }
        };
        let registry = Self {
            pool,
            origin: Origin::default(),
        };
        registry.migrate().await?;
        Ok(registry)
    }

    /// The same pool, recording events as coming from `origin`.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Who this handle records as the writer.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Which backend this registry uses.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies pending migrations (idempotent).
    ///
    /// # Errors
    /// `Internal` when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        let res = match &self.pool {
            Pool::Sqlite(p) => sqlx::migrate!("migrations/sqlite").run(p).await,
            Pool::Postgres(p) => sqlx::migrate!("migrations/postgres").run(p).await,
        };
        res.map_err(|e| Error::Internal(format!("registry migration failed: {e}")))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }

    /// The registry generation, bumped by every change.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn generation(&self) -> Result<i64> {
        let sql = "SELECT generation FROM registry_state WHERE id = 1";
        Ok(with_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }

    /// One model by id or name.
    ///
    /// # Errors
    /// `NotFound` when there is no such model.
    pub async fn get(&self, model: &ModelRef) -> Result<ModelRecord> {
        self.find(model)
            .await?
            .ok_or_else(|| Error::NotFound(format!("{model} is not registered")))
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
        let sql = concat!("SELECT ", columns!(), " FROM ml_models WHERE is_active = $1");
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
                    return Err(Error::AlreadyExists(format!("a model named {:?} is already registered", new.model_name)));
                }
                other => other?,
            };
            record_event!(&mut *tx, self.origin, EventKind::Registered, Some(record.model_id), &record.model_name, &record.file_path, now);
            let result = match activate {
                None => Activation { active: record, previous: None },
                Some(meta) => {
                    let previous: Option<ModelRecord> = sqlx::query_as(concat!("SELECT ", columns!(), " FROM ml_models WHERE is_active = $1"))
                        .bind(true).fetch_optional(&mut *tx).await?;
                    sqlx::query("UPDATE ml_models SET is_active = $1, updated_at = $2 WHERE is_active = $3")
                        .bind(false).bind(now).bind(true).execute(&mut *tx).await?;
                    let active: ModelRecord = sqlx::query_as(concat!("UPDATE ml_models SET is_active = $1 WHERE model_id = $2 RETURNING ", columns!()))
                        .bind(true).bind(record.model_id).fetch_one(&mut *tx).await?;
                    record_activation!(tx, active, previous.as_ref(), meta, now);
                    record_event!(&mut *tx, self.origin, EventKind::Activated, Some(active.model_id), &active.model_name, &meta.reason, now);
                    Activation { active, previous }
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
            let updated = updated.ok_or_else(|| Error::NotFound(format!("{model} is not registered")))?;
            record_event!(&mut *tx, self.origin, EventKind::Updated, Some(updated.model_id), &updated.model_name, "", now);
            tx.commit().await?;
            Ok(updated)
        })
    }

    /// Makes `model_id` the one active model, if its checksum is still `checksum` (the file that
    /// was verified and loaded), and appends to the activation history.
    ///
    /// # Errors
    /// `NotFound` when the record is gone; `FailedPrecondition` when its checksum changed.
    pub async fn activate(&self, model_id: i64, checksum: &str, meta: &ActivationMeta) -> Result<Activation> {
        let select_active = concat!("SELECT ", columns!(), " FROM ml_models WHERE is_active = $1");
        let select_one = concat!("SELECT ", columns!(), " FROM ml_models WHERE model_id = $1");
        let activate = concat!(
            "UPDATE ml_models SET is_active = $1, updated_at = $2 WHERE model_id = $3 RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            // The write lock first: concurrent activations queue here, then see fresh rows.
            bump!(tx, now);
            let target: Option<ModelRecord> = sqlx::query_as(select_one).bind(model_id).fetch_optional(&mut *tx).await?;
            let target = target.ok_or_else(|| Error::NotFound(format!("model id {model_id} is not registered (deleted meanwhile?)")))?;
            if target.checksum_sha256 != checksum {
                return Err(Error::FailedPrecondition(format!(
                    "model {:?} changed in the registry while it was loading (checksum now {}); try again",
                    target.model_name, target.checksum_sha256
                )));
            }
            let previous: Option<ModelRecord> = sqlx::query_as(select_active).bind(true).fetch_optional(&mut *tx).await?;
            if previous.as_ref().is_some_and(|p| p.model_id == model_id) {
                // Already active: nothing to change, no history row.
                tx.rollback().await?;
                return Ok(Activation { active: target, previous });
            }
            sqlx::query("UPDATE ml_models SET is_active = $1, updated_at = $2 WHERE is_active = $3")
                .bind(false).bind(now).bind(true).execute(&mut *tx).await?;
            let active: ModelRecord = sqlx::query_as(activate).bind(true).bind(now).bind(model_id).fetch_one(&mut *tx).await?;
            record_activation!(tx, active, previous.as_ref(), meta, now);
            let kind = if meta.is_rollback { EventKind::RolledBack } else { EventKind::Activated };
            record_event!(&mut *tx, self.origin, kind, Some(active.model_id), &active.model_name, &meta.reason, now);
            tx.commit().await?;
            Ok(Activation { active, previous })
        })
    }

    /// The most recent activation.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn last_activation(&self) -> Result<Option<ActivationRecord>> {
        Ok(self.activations(1).await?.into_iter().next())
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

    /// Stores an event that is not part of a registry change (reloads, reload failures).
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn add_event(
        &self,
        kind: EventKind,
        model: Option<&ModelRecord>,
        source: &str,
        detail: &str,
    ) -> Result<()> {
        let origin = Origin {
            source: source.to_string(),
            server: self.origin.server.clone(),
        };
        let (id, name) = model.map_or((None, ""), |m| (Some(m.model_id), m.model_name.as_str()));
        let now = Utc::now();
        with_pool!(self, p => { record_event!(p, origin, kind, id, name, detail, now); });
        Ok(())
    }

    /// Events with an id above `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<EventRecord>> {
        let sql = "SELECT event_id, kind, model_id, model_name, source, server, detail, created_at FROM model_events \
                   WHERE event_id > $1 ORDER BY event_id LIMIT $2";
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(after).bind(limit).fetch_all(p).await?))
    }

    /// The newest event id (0 when there are none).
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn last_event_id(&self) -> Result<i64> {
        let sql = "SELECT COALESCE(MAX(event_id), 0) FROM model_events";
        Ok(with_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }

    /// A PostgreSQL pool, for LISTEN; `None` on SQLite.
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// Deletes the record (never the file).
    ///
    /// # Errors
    /// `NotFound` when there is no such model; `FailedPrecondition` when it is the active model.
    pub async fn delete(&self, model: &ModelRef) -> Result<ModelRecord> {
        let id = self.get(model).await?.model_id;
        let sql = concat!(
            "DELETE FROM ml_models WHERE model_id = $1 AND is_active = $2 RETURNING ",
            columns!()
        );
        let now = Utc::now();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            bump!(tx, now);
            let deleted: Option<ModelRecord> = sqlx::query_as(sql).bind(id).bind(false).fetch_optional(&mut *tx).await?;
            let Some(deleted) = deleted else {
                let still: Option<bool> = sqlx::query_scalar("SELECT is_active FROM ml_models WHERE model_id = $1")
                    .bind(id).fetch_optional(&mut *tx).await?;
                return Err(match still {
                    Some(true) => Error::FailedPrecondition(format!(
                        "{model} is the active model; activate another model before deleting it"
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

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions> {
    let opts = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("bad SQLite database URL {url:?}: {e}")))?
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30)))
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    // scheme://user:password@host/... -> scheme://user:***@host/...
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((creds, host)) = rest.split_once('@')
        && let Some((user, _)) = creds.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://modeld.db"), "sqlite://modeld.db");
    }

    #[test]
    fn backend_follows_the_scheme() {
        assert_eq!(Backend::of_url("postgresql://h/db"), Backend::Postgres);
        assert_eq!(Backend::of_url("sqlite://x.db"), Backend::Sqlite);
        assert_eq!(Backend::of_url("x.db"), Backend::Sqlite);
    }
}
