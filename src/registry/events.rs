//! The `model_events` table: every registry change and reload, from every server and the CLI.

use chrono::{DateTime, Utc};

use super::{ModelRecord, Origin, Pool, Registry};
use crate::error::Result;

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
    /// A model was evaluated on a dataset (`model_performance_logs`).
    Evaluated,
    /// The canary or the shadow, or its percentage, changed.
    RolloutChanged,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 9] = [
        Self::Registered,
        Self::Updated,
        Self::Activated,
        Self::RolledBack,
        Self::Deleted,
        Self::Reloaded,
        Self::ReloadFailed,
        Self::Evaluated,
        Self::RolloutChanged,
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
            Self::Evaluated => "evaluated",
            Self::RolloutChanged => "rollout_changed",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A `model_events` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
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

impl Registry {
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
}
