//! The `model_servers` table: every server reports itself (who it is, a heartbeat, the registry
//! generation it has applied, what it serves), so that a change can wait until the whole fleet
//! serves it and `modeld fleet` can show the fleet. Times come from the database's clock: a
//! server whose own clock is off never makes another look gone.

use serde::{Deserialize, Serialize};

use super::{Pool, Registry};
use crate::error::Result;

/// A server is gone after this many missed heartbeats (no janitor: whoever reads decides).
pub const MISSED_BEATS: i64 = 3;

/// Rows of servers gone for this long are removed when a server joins.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// The database's clock in milliseconds since the epoch, per dialect.
const NOW_MS_SQLITE: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
const NOW_MS_POSTGRES: &str = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";

/// One model a server serves in a role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Held {
    /// The registry id.
    pub model_id: i64,
    /// Its name.
    pub model_name: String,
    /// Its version.
    pub version: String,
    /// The sha256 of the file served.
    pub sha256: String,
    /// Its share of requests (canary: routed, shadow: mirrored); absent for the active model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<u8>,
}

/// What a server serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Serving {
    /// The active model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<Held>,
    /// The canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Held>,
    /// The shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Held>,
}

/// Who a server is, as it joins.
#[derive(Debug, Clone)]
pub struct Joining {
    /// A random id, new at every start.
    pub server_id: String,
    /// `--server-name` (default `modeld-<host>-<pid>`).
    pub server_name: String,
    /// The machine's host name.
    pub host: String,
    /// Where its gRPC port listens.
    pub grpc_address: String,
    /// Where its HTTP port listens ('' when off).
    pub http_address: String,
    /// The modeld version.
    pub version: String,
    /// Its heartbeat interval in milliseconds.
    pub beat_ms: i64,
}

/// What a server has applied: the generation, what it serves, and why it could not apply a
/// later generation if it could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The registry generation whose state it serves.
    pub generation: i64,
    /// What it serves.
    pub serving: Serving,
    /// A failure to apply `problem_generation` (e.g. `load failed: …`); '' when none.
    pub problem: String,
    /// The generation the problem concerns.
    pub problem_generation: i64,
    /// Its degradations, for people; '' when none.
    pub degraded: String,
}

/// A `model_servers` row as read, with its liveness on the database's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ServerEntry {
    /// Random, new at every start.
    pub server_id: String,
    /// `--server-name`.
    pub server_name: String,
    /// Host name.
    pub host: String,
    /// gRPC address.
    pub grpc_address: String,
    /// HTTP address ('' when off).
    pub http_address: String,
    /// modeld version.
    pub version: String,
    /// When it started (ms since the epoch, the database's clock).
    pub started_at_ms: i64,
    /// How long ago its last heartbeat was, in ms.
    pub heartbeat_age_ms: i64,
    /// Its heartbeat interval, in ms.
    pub beat_ms: i64,
    /// Its heartbeats have stopped for more than [`MISSED_BEATS`] intervals.
    pub gone: bool,
    /// The registry generation it serves.
    pub applied_generation: i64,
    /// When it got there (ms since the epoch), if it has applied any.
    pub applied_at_ms: Option<i64>,
    /// What it serves.
    pub serving: Serving,
    /// Why it could not apply `problem_generation`; '' when it could.
    pub problem: String,
    /// The generation the problem concerns.
    pub problem_generation: i64,
    /// Its degradations; '' when none.
    pub degraded: String,
}

#[derive(sqlx::FromRow)]
struct Row {
    server_id: String,
    server_name: String,
    host: String,
    grpc_address: String,
    http_address: String,
    version: String,
    started_at_ms: i64,
    heartbeat_ms: i64,
    beat_ms: i64,
    applied_generation: i64,
    applied_at_ms: Option<i64>,
    serving: String,
    problem: String,
    problem_generation: i64,
    degraded: String,
    now_ms: i64,
}

impl ServerEntry {
    /// How many generations behind `generation` (the registry's now) it is; 0 when it serves
    /// the registry's state.
    pub fn lag(&self, generation: i64) -> i64 {
        (generation - self.applied_generation).max(0)
    }
}

impl From<Row> for ServerEntry {
    fn from(r: Row) -> Self {
        let age = (r.now_ms - r.heartbeat_ms).max(0);
        Self {
            gone: age > MISSED_BEATS * r.beat_ms,
            serving: serde_json::from_str(&r.serving).unwrap_or_default(),
            server_id: r.server_id,
            server_name: r.server_name,
            host: r.host,
            grpc_address: r.grpc_address,
            http_address: r.http_address,
            version: r.version,
            started_at_ms: r.started_at_ms,
            heartbeat_age_ms: age,
            beat_ms: r.beat_ms,
            applied_generation: r.applied_generation,
            applied_at_ms: r.applied_at_ms,
            problem: r.problem,
            problem_generation: r.problem_generation,
            degraded: r.degraded,
        }
    }
}

/// One SQL text per dialect, with `{now}` standing for the database's clock. Only constants
/// go in (the template and the clock's expression): values are always bound.
fn sql(template: &'static str, pool: &Pool) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(template.replace(
        "{now}",
        match pool {
            Pool::Sqlite(_) => NOW_MS_SQLITE,
            Pool::Postgres(_) => NOW_MS_POSTGRES,
        },
    ))
}

impl Registry {
    /// Adds this server to the fleet (or renews its row), and forgets servers gone for a day.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be written.
    pub async fn join_fleet(&self, me: &Joining) -> Result<()> {
        let insert = sql(
            "INSERT INTO model_servers (server_id, server_name, host, grpc_address, http_address, version, \
             started_at_ms, heartbeat_ms, beat_ms) VALUES ($1, $2, $3, $4, $5, $6, {now}, {now}, $7) \
             ON CONFLICT (server_id) DO UPDATE SET heartbeat_ms = {now}, beat_ms = $7",
            &self.pool,
        );
        let forget = sql("DELETE FROM model_servers WHERE heartbeat_ms < {now} - $1", &self.pool);
        with_pool!(self, p => {
            sqlx::query(forget).bind(FORGET_AFTER_MS).execute(p).await?;
            sqlx::query(insert)
                .bind(&me.server_id)
                .bind(&me.server_name)
                .bind(&me.host)
                .bind(&me.grpc_address)
                .bind(&me.http_address)
                .bind(&me.version)
                .bind(me.beat_ms)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// One heartbeat, with the server's degradations. `false` when its row is gone (removed
    /// by hand, or forgotten): the server joins again.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be written.
    pub async fn heartbeat(&self, server_id: &str, degraded: &str) -> Result<bool> {
        let q = sql(
            "UPDATE model_servers SET heartbeat_ms = {now}, degraded = $2 WHERE server_id = $1",
            &self.pool,
        );
        let done =
            with_pool!(self, p => sqlx::query(q).bind(server_id).bind(degraded).execute(p).await?.rows_affected());
        Ok(done > 0)
    }

    /// Records what this server has applied (at once, not at its next heartbeat): waiting
    /// commands learn of it (PostgreSQL NOTIFY; on SQLite the file changes).
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be written.
    pub async fn report_applied(&self, server_id: &str, applied: &Applied) -> Result<bool> {
        let serving = serde_json::to_string(&applied.serving).map_err(crate::error::Error::internal)?;
        let q = sql(
            "UPDATE model_servers SET heartbeat_ms = {now}, \
             applied_at_ms = CASE WHEN applied_generation = $2 THEN applied_at_ms ELSE {now} END, \
             applied_generation = $2, serving = $3, problem = $4, problem_generation = $5, degraded = $6 \
             WHERE server_id = $1",
            &self.pool,
        );
        let done = with_pool!(self, p => sqlx::query(q)
            .bind(server_id)
            .bind(applied.generation)
            .bind(&serving)
            .bind(&applied.problem)
            .bind(applied.problem_generation)
            .bind(&applied.degraded)
            .execute(p)
            .await?
            .rows_affected());
        Ok(done > 0)
    }

    /// Removes this server from the fleet (it is stopping).
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be written.
    pub async fn leave_fleet(&self, server_id: &str) -> Result<()> {
        let q = "DELETE FROM model_servers WHERE server_id = $1";
        with_pool!(self, p => {
            sqlx::query(q).bind(server_id).execute(p).await?;
        });
        Ok(())
    }

    /// Every server in the table, live ones first (oldest first), then the gone.
    ///
    /// # Errors
    /// `Unavailable` when the database cannot be read.
    pub async fn servers(&self) -> Result<Vec<ServerEntry>> {
        let q = sql(
            "SELECT server_id, server_name, host, grpc_address, http_address, version, started_at_ms, \
             heartbeat_ms, beat_ms, applied_generation, applied_at_ms, serving, problem, problem_generation, \
             degraded, {now} AS now_ms FROM model_servers ORDER BY started_at_ms, server_id",
            &self.pool,
        );
        let rows: Vec<Row> = with_pool!(self, p => sqlx::query_as(q).fetch_all(p).await?);
        let mut all: Vec<ServerEntry> = rows.into_iter().map(ServerEntry::from).collect();
        all.sort_by_key(|s| s.gone);
        Ok(all)
    }
}
