//! The model registry in SQL (sqlx): SQLite as the embedded default, PostgreSQL for a fleet.
//!
//! Both dialects run the same SQL text (`$1` placeholders work in both); each has its own
//! migration folder. Every state change is one transaction that first bumps
//! `registry_state.generation`: that row lock serialises writers across processes, so two
//! concurrent activations cannot both see the same "previous" model, and the partial unique
//! index `ml_models_one_active` makes a second active row impossible whatever a writer does.
//!
//! One file a table: `models` (`ml_models`), `deployments` (`deployments`: the names clients
//! call, each with its own active model), `activations` (`model_activations`), `events`
//! (`model_events`), `performance` (`model_performance_logs`), `servers` (`model_servers`, the
//! fleet); this file holds the pool, the migrations, the generation (`registry_state`)
//! and the macros that run one SQL text on either pool.

pub mod text;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{Error, Result};

/// The `ml_models` columns, in [`ModelRecord`] order, for `concat!`-built (static) SQL.
macro_rules! columns {
    () => {
        "model_id, model_name, version, file_path, description, model_type, accuracy, checksum_sha256, \
         file_size_bytes, signature, is_active, created_at, updated_at, created_by, status, \
         rollout_percentage, shadow_percentage, rollback_threshold, rollback_min_samples, \
         rollback_window_secs, rollback_p99_ms, is_stable, deprecated_at, min_app_version, min_app_versions, \
         deployment_id"
    };
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
            Pool::Sqlite($p) => {
                $self.check_file()?;
                $body
            }
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

// The tables' own code; declared after the macros above, which they use.
pub(crate) mod activations;
mod deployments;
mod events;
mod models;
mod performance;
pub mod rollout;
pub mod servers;

pub use activations::{Activation, ActivationMeta, ActivationRecord, Conditions};
pub use deployments::{DEFAULT_DEPLOYMENT, DEFAULT_DEPLOYMENT_ID, Deployment, DeploymentSummary};
pub use events::{EventKind, EventRecord};
pub use models::{
    MAX_MIN_SAMPLES, MAX_WINDOW_SECS, ModelChanges, ModelRecord, ModelRef, NewModel, Order, RollbackPolicy,
};
pub use performance::{ClassFigures, DatasetRef, EvaluationRecord, Figures};
pub use rollout::{Rollout, RolloutChange, RolloutChangeRecord, RolloutMeta, RolloutRole};

/// A connection pool on the registry database.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: Pool,
    origin: Origin,
    /// A SQLite registry's file as opened: its path and identity.
    file: Option<DbFile>,
}

/// The file a SQLite pool opened. Its connections keep the file they opened even after it is
/// removed or replaced on disk: writes would then go where nobody will read them, and new
/// connections would open an empty file. So the path's identity is checked before every
/// query (one `stat`), and a file that is gone or another makes the registry unavailable.
#[derive(Debug, Clone)]
struct DbFile {
    path: std::path::PathBuf,
    identity: (u64, u64),
}

/// A file's device and inode (where they exist; elsewhere nothing is compared).
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        (0, 0)
    }
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
                let unavailable =
                    |e: sqlx::Error| Error::Unavailable(format!("cannot open the registry database {url}: {e}"));
                // The file is made here, once. A connection the pool opens later (after an
                // operator removed the file) must fail, not make an empty registry in its place
                // that the server would then take for the one it was given.
                let first = sqlx::ConnectOptions::connect(&opts).await.map_err(unavailable)?;
                sqlx::Connection::close(first).await.map_err(unavailable)?;
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_with(opts.create_if_missing(false))
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        let file = match Backend::of_url(url) {
            Backend::Sqlite => sqlite_options(url)?
                .get_filename()
                .canonicalize()
                .ok()
                .and_then(|path| {
                    std::fs::metadata(&path).ok().map(|m| DbFile {
                        identity: identity(&m),
                        path,
                    })
                }),
            Backend::Postgres => None,
        };
        let registry = Self {
            pool,
            origin: Origin::default(),
            file,
        };
        registry.migrate().await?;
        Ok(registry)
    }

    /// The file of a SQLite registry URL (`None` for PostgreSQL and in-memory databases).
    pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
        if Backend::of_url(url) != Backend::Sqlite || url.contains(":memory:") || url.contains("mode=memory") {
            return None;
        }
        sqlite_options(url).ok().map(|o| o.get_filename().to_path_buf())
    }

    /// A SQLite registry's file is still the one opened.
    ///
    /// # Errors
    /// `Unavailable` saying that the file was removed or replaced while in use.
    fn check_file(&self) -> Result<()> {
        let Some(f) = &self.file else { return Ok(()) };
        let now = std::fs::metadata(&f.path).map(|m| identity(&m));
        let what = match now {
            Ok(id) if id == f.identity => return Ok(()),
            Ok(_) => "was replaced by another file",
            Err(_) => "was removed",
        };
        Err(Error::Unavailable(format!(
            "the registry's database file {what} while this server used it; nothing is written until the \
             server is restarted on the file it should use (the server log names it)"
        )))
        .inspect_err(|_| {
            crate::client_event!(
                tracing::Level::ERROR,
                "registry_file",
                file = %f.path.display(),
                "the registry's database file {what} while in use: changes are refused; restore the file and restart"
            );
        })
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
        res.map_err(|e| Error::internal_from("registry migration failed", e))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }

    /// The registry generation, bumped by every change.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn generation(&self) -> Result<i64> {
        let sql = "SELECT generation FROM registry_state WHERE id = 1";
        Ok(with_pool!(self, p => sqlx::query_scalar(sql).fetch_one(p).await?))
    }

    /// A SQLite registry's file as opened (its changes are watched); `None` on PostgreSQL.
    pub fn sqlite_file(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(|f| f.path.as_path())
    }

    /// A PostgreSQL pool, for LISTEN; `None` on SQLite.
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
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

    #[tokio::test]
    async fn a_removed_sqlite_file_is_never_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let registry = Registry::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap().flatten() {
            std::fs::remove_file(entry.path()).unwrap();
        }
        let Pool::Sqlite(p) = &registry.pool else {
            unreachable!("a SQLite URL")
        };
        // As many connections as the pool holds: it has to open new ones (heartbeats and
        // streams do, past the file check), and none may make an empty registry in its place.
        let mut held = Vec::new();
        for _ in 0..4 {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(3), p.acquire()).await {
                held.push(c);
            }
        }
        assert!(!path.exists(), "a new connection made the removed file again");
        assert!(registry.check_file().unwrap_err().to_string().contains("was removed"));
    }

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
