//! The fleet: every server reports itself in the registry (`model_servers`), and a change waits
//! until every live server serves it.
//!
//! - [`Changes`]: wakes on registry changes the way servers learn of them: PostgreSQL
//!   LISTEN/NOTIFY, or a notify watch on a SQLite registry's files. Never a tight poll.
//! - [`Member`]: this server's row: join at start, a heartbeat every `beat`, a report at once
//!   whenever it has applied (or failed to apply) a registry generation, leave at shutdown.
//! - [`wait_served`]: a change's wait: until every live server has applied its generation, one
//!   has said why it cannot, or the timeout. A server whose heartbeats lapse stops counting.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::name::quoted;
use crate::registry::Registry;
use crate::registry::servers::{Applied, Held, Joining, MISSED_BEATS, ServerEntry, Serving};

/// The PostgreSQL channels: registry changes, and servers that applied a change, joined or left.
const CHANNELS: [&str; 2] = ["modeld_registry", "modeld_servers"];

/// Wakes whoever waits for a change in the registry's database.
pub struct Changes {
    rx: mpsc::UnboundedReceiver<()>,
    _watcher: Option<notify::RecommendedWatcher>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// SQLite: wake again this long after the last file event. A writer appends to the WAL
    /// (the event) a moment before it marks the commit visible in the shared index (no
    /// event): a read at the first wake may still see the old state.
    echoes: &'static [Duration],
    /// The echo wakes still due, soonest first.
    due: Vec<Instant>,
}

/// When to look again after a SQLite file event (see [`Changes::echoes`]).
const SQLITE_ECHOES: [Duration; 2] = [Duration::from_millis(5), Duration::from_millis(50)];

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").finish_non_exhaustive()
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl Changes {
    /// Starts following `registry`'s database: LISTEN on PostgreSQL, a watch on the SQLite
    /// file's directory (the file, its WAL and its journal). Without either (an in-memory
    /// database, a directory notify cannot watch) it never wakes, and callers' own timers
    /// decide.
    ///
    /// # Errors
    /// `Unavailable` when PostgreSQL cannot be listened to.
    pub async fn open(registry: &Registry) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(pool) = registry.pg_pool() {
            let mut listener = sqlx::postgres::PgListener::connect_with(pool)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot listen to the registry: {e}")))?;
            listener
                .listen_all(CHANNELS)
                .await
                .map_err(|e| Error::Unavailable(format!("cannot listen to the registry: {e}")))?;
            let task = tokio::spawn(async move {
                // try_recv: Ok(None) is a reconnect (notifications may be lost: wake anyway).
                while let Ok(_n) = listener.try_recv().await {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                let _ = tx.send(());
            });
            return Ok(Self {
                rx,
                _watcher: None,
                task: Some(task),
                echoes: &[],
                due: Vec::new(),
            });
        }
        let watcher = registry.sqlite_file().and_then(|file| watch_sqlite(file, tx));
        Ok(Self {
            rx,
            _watcher: watcher,
            task: None,
            echoes: &SQLITE_ECHOES,
            due: Vec::new(),
        })
    }

    /// Waits for the next change (or a change's echo), at most `within`; `true` when one
    /// came. A burst of changes wakes once, then once per echo.
    pub async fn next(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        let echo = self.due.first().copied().filter(|e| *e < until);
        let wait = echo.unwrap_or(until).saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(())) => {
                while self.rx.try_recv().is_ok() {}
                let now = Instant::now();
                self.due = self.echoes.iter().map(|d| now + *d).collect();
                true
            }
            Ok(None) => false,
            Err(_) if echo.is_some() => {
                self.due.remove(0);
                true
            }
            Err(_) => false,
        }
    }
}

/// A watch on the directory of a SQLite registry's `file`, for writes to the file, its WAL or
/// its journal; `None` when the directory cannot be watched.
fn watch_sqlite(file: &std::path::Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = file.parent()?.to_path_buf();
    let name = file.file_name()?.to_string_lossy().into_owned();
    let ours: Vec<PathBuf> = ["", "-wal", "-journal"]
        .iter()
        .map(|suffix| dir.join(format!("{name}{suffix}")))
        .collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // notify's thread: forward, never block. Reads are not changes.
        if let Ok(event) = res
            && matches!(
                event.kind,
                notify::EventKind::Modify(_) | notify::EventKind::Create(_) | notify::EventKind::Remove(_)
            )
            && event.paths.iter().any(|p| ours.contains(p))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the registry file; following it by polling"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the registry's directory; following it by polling"))
        .ok()?;
    Some(watcher)
}

/// This server's row in `model_servers`.
#[derive(Debug)]
pub struct Member {
    registry: Registry,
    joining: Joining,
    beat: Duration,
    /// What was last reported, for a heartbeat that finds the row gone and joins again.
    last: Mutex<Applied>,
}

impl Member {
    /// Joins the fleet: a new row, with a new random id. A registry that cannot be written
    /// now is joined by a later heartbeat.
    pub async fn join(registry: Registry, mut joining: Joining, beat: Duration) -> Arc<Self> {
        joining.server_id = new_id();
        joining.beat_ms = i64::try_from(beat.as_millis()).unwrap_or(i64::MAX).max(1);
        if let Err(e) = registry.join_fleet(&joining).await {
            tracing::warn!(error = %e, "cannot add this server to the fleet table yet; its heartbeats try again");
        }
        Arc::new(Self {
            registry,
            joining,
            beat,
            last: Mutex::default(),
        })
    }

    /// The random id of this server's row.
    pub fn id(&self) -> &str {
        &self.joining.server_id
    }

    /// Records what this server has applied, at once. A failure is logged: the next report or
    /// heartbeat tries again.
    pub async fn report(&self, applied: Applied) {
        *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = applied.clone();
        match self.registry.report_applied(self.id(), &applied).await {
            Ok(true) => {}
            Ok(false) => self.rejoin().await,
            Err(e) => tracing::debug!(error = %e, "cannot report to the fleet table; the next heartbeat tries again"),
        }
    }

    /// The row is gone (removed by hand, or this server was taken for gone and forgotten):
    /// join again with what was last applied.
    async fn rejoin(&self) {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if self.registry.join_fleet(&self.joining).await.is_ok() {
            let _ = self.registry.report_applied(self.id(), &last).await;
        }
    }

    /// Sends a heartbeat every `beat` with the degradations `degraded()` reads, until
    /// dropped (the handle aborts it).
    pub fn heartbeats(self: &Arc<Self>, degraded: impl Fn() -> String + Send + 'static) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.beat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match me.registry.heartbeat(me.id(), &degraded()).await {
                    Ok(true) => {}
                    Ok(false) => me.rejoin().await,
                    Err(e) => tracing::debug!(error = %e, "heartbeat failed; trying again"),
                }
            }
        })
    }

    /// Leaves the fleet (the server is stopping): nothing waits for it any more.
    pub async fn leave(&self) {
        if let Err(e) = self.registry.leave_fleet(self.id()).await {
            tracing::warn!(error = %e, "cannot remove this server from the fleet table; it lapses after its heartbeats stop");
        }
    }
}

/// 128 random bits, hex.
fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness at all is unheard of; the time and pid still tell servers apart.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (now ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a server serves, as reported: the serving set of `slot`.
pub fn serving_of(slot: &crate::model::Slot) -> Serving {
    let held = |m: &crate::model::slot::ServedModel, percentage: Option<u8>| Held {
        model_id: m.record.model_id,
        model_name: m.record.model_name.clone(),
        version: m.record.version.clone(),
        sha256: m.record.checksum_sha256.clone(),
        percentage,
    };
    let Some(set) = slot.load() else {
        return Serving::default();
    };
    Serving {
        active: Some(held(&set.active, None)),
        canary: set.canary.as_ref().map(|w| held(&w.model, Some(w.percentage))),
        shadow: set.shadow.as_ref().map(|w| held(&w.model, Some(w.percentage))),
    }
}

/// One server that has not applied the change, and why if it said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Lagging {
    /// Its row's id.
    pub server_id: String,
    /// `--server-name`.
    pub server_name: String,
    /// Host name.
    pub host: String,
    /// Why, when it said: `load failed: …`, or its degradations; '' when it has not answered yet.
    pub reason: String,
}

/// How a change was served across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Served {
    /// The registry generation waited for.
    pub generation: i64,
    /// Live servers at the end of the wait.
    pub servers: usize,
    /// Of those, the ones that serve the change.
    pub applied: usize,
    /// How long the wait took, in ms.
    pub waited_ms: u64,
    /// The wait was asked not to happen (`--no-wait`, wait 0): nothing is known.
    pub skipped: bool,
    /// Servers that said they cannot apply it (a load failure).
    pub failed: Vec<Lagging>,
    /// Servers that had not applied it when the timeout came.
    pub pending: Vec<Lagging>,
}

impl Served {
    /// Every live server serves the change (true with no live server).
    pub fn complete(&self) -> bool {
        !self.skipped && self.failed.is_empty() && self.pending.is_empty()
    }

    /// One line for people: `served by 3 of 3 servers in 14 ms`, or who did not and why.
    pub fn summary(&self) -> String {
        if self.skipped {
            return "not waited for (--no-wait): servers apply it as they notice it".into();
        }
        if self.servers == 0 {
            return "no live server to serve it (each applies it when it starts)".into();
        }
        let plural = if self.servers == 1 { "" } else { "s" };
        let mut out = format!(
            "served by {} of {} server{plural} in {} ms",
            self.applied, self.servers, self.waited_ms
        );
        let name = |l: &Lagging| format!("{} on {}", quoted(&l.server_name), l.host);
        for l in &self.failed {
            out.push_str(&format!("; {} cannot: {}", name(l), l.reason));
        }
        for l in &self.pending {
            if l.reason.is_empty() {
                out.push_str(&format!("; {} has not applied it yet", name(l)));
            } else {
                out.push_str(&format!("; {} has not applied it yet ({})", name(l), l.reason));
            }
        }
        out
    }

    /// The answer when the caller asked not to wait.
    pub fn skipped(generation: i64) -> Self {
        Self {
            generation,
            servers: 0,
            applied: 0,
            waited_ms: 0,
            skipped: true,
            failed: Vec::new(),
            pending: Vec::new(),
        }
    }
}

/// How long the fallback timer is when nothing wakes a wait (a registry no watch can follow).
const SAFETY: Duration = Duration::from_millis(500);

/// Waits until every live server has applied `generation` (or later), one says it cannot,
/// or `timeout`. The change itself is committed already: the wait is not a transaction.
///
/// # Errors
/// `Unavailable` when the registry cannot be read (the change stays committed).
pub async fn wait_served(registry: &Registry, generation: i64, timeout: Duration) -> Result<Served> {
    let started = Instant::now();
    // Listening starts before the first read: a report between the two is not missed.
    let mut changes = match Changes::open(registry).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!(error = %e, "cannot follow the registry's changes; polling for the wait");
            None
        }
    };
    loop {
        let servers = registry.servers().await.map_err(committed_but)?;
        let elapsed = started.elapsed();
        let served = tally(&servers, generation, elapsed);
        let waiting: Vec<&ServerEntry> = servers
            .iter()
            .filter(|s| !s.gone && s.applied_generation < generation && !failed(s, generation))
            .collect();
        if waiting.is_empty() || elapsed >= timeout {
            return Ok(served);
        }
        // Wake at the next change, when a silent server lapses, or at the timeout.
        let lapse = waiting
            .iter()
            .map(|s| {
                let left = (MISSED_BEATS * s.beat_ms - s.heartbeat_age_ms).max(0) + 1;
                Duration::from_millis(u64::try_from(left).unwrap_or(0))
            })
            .min()
            .unwrap_or(SAFETY);
        let within = lapse.min(timeout - elapsed).min(match changes {
            Some(_) => Duration::from_secs(2),
            None => SAFETY,
        });
        match &mut changes {
            Some(c) => {
                c.next(within).await;
            }
            None => tokio::time::sleep(within.min(Duration::from_millis(20))).await,
        }
    }
}

/// An error while waiting for the servers, after the change committed: said so.
pub fn committed_but(e: Error) -> Error {
    let unreachable = matches!(&e, Error::Unavailable(_))
        || matches!(
            &e,
            Error::Database {
                fault: crate::error::DbFault::Unreachable,
                ..
            }
        );
    if unreachable {
        Error::Unavailable(format!(
            "the change is committed, but the registry stopped answering while waiting for the servers: {}",
            e.client_message()
        ))
    } else {
        e
    }
}

/// A server that said it cannot apply `generation`.
fn failed(s: &ServerEntry, generation: i64) -> bool {
    s.applied_generation < generation && s.problem_generation >= generation && !s.problem.is_empty()
}

/// The live servers' standing against `generation`.
fn tally(servers: &[ServerEntry], generation: i64, elapsed: Duration) -> Served {
    let live: Vec<&ServerEntry> = servers.iter().filter(|s| !s.gone).collect();
    let lagging = |s: &ServerEntry, reason: &str| Lagging {
        server_id: s.server_id.clone(),
        server_name: s.server_name.clone(),
        host: s.host.clone(),
        reason: reason.to_string(),
    };
    Served {
        generation,
        servers: live.len(),
        applied: live.iter().filter(|s| s.applied_generation >= generation).count(),
        waited_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        skipped: false,
        failed: live
            .iter()
            .filter(|s| failed(s, generation))
            .map(|s| lagging(s, &s.problem))
            .collect(),
        pending: live
            .iter()
            .filter(|s| s.applied_generation < generation && !failed(s, generation))
            .map(|s| lagging(s, &s.degraded))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, applied: i64, problem: (&str, i64), gone: bool) -> ServerEntry {
        ServerEntry {
            server_id: format!("id-{name}"),
            server_name: name.into(),
            host: "h".into(),
            grpc_address: String::new(),
            http_address: String::new(),
            version: String::new(),
            started_at_ms: 0,
            heartbeat_age_ms: 0,
            beat_ms: 2000,
            gone,
            applied_generation: applied,
            applied_at_ms: None,
            serving: Serving::default(),
            problem: problem.0.into(),
            problem_generation: problem.1,
            degraded: String::new(),
        }
    }

    #[test]
    fn the_tally_counts_live_servers_and_says_who_lags_and_why() {
        let servers = [
            server("a", 7, ("", 0), false),
            server("b", 6, ("load failed: no file", 7), false),
            server("c", 5, ("load failed: old", 5), false),
            server("d", 1, ("", 0), true),
        ];
        let t = tally(&servers, 7, Duration::from_millis(14));
        assert_eq!((t.servers, t.applied), (3, 1));
        assert_eq!(t.failed.len(), 1);
        assert_eq!(t.failed[0].server_name, "b");
        assert_eq!(t.pending.len(), 1, "an old problem is not this change's");
        assert_eq!(t.pending[0].server_name, "c");
        assert!(!t.complete());
        assert!(
            t.summary()
                .starts_with("served by 1 of 3 servers in 14 ms; \"b\" on h cannot: load failed: no file"),
            "{}",
            t.summary()
        );
        let done = tally(&servers[..1], 7, Duration::from_millis(3));
        assert!(done.complete());
        assert_eq!(done.summary(), "served by 1 of 1 server in 3 ms");
        assert!(
            tally(&[], 7, Duration::ZERO).complete(),
            "no live server: nothing to wait for"
        );
    }

    #[tokio::test]
    async fn a_sqlite_write_wakes_a_waiter_and_its_echoes_follow() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let registry = Registry::connect(&url).await.unwrap();
        let mut changes = Changes::open(&registry).await.unwrap();
        assert!(!changes.next(Duration::from_millis(20)).await, "nothing written yet");
        let joining = Joining {
            server_id: "a".into(),
            server_name: "a".into(),
            host: "h".into(),
            grpc_address: String::new(),
            http_address: String::new(),
            version: String::new(),
            beat_ms: 1000,
        };
        registry.join_fleet(&joining).await.unwrap();
        assert!(changes.next(Duration::from_secs(10)).await, "the write wakes it");
        // Then its echoes (the commit may become visible a moment after the file event),
        // and then it is quiet.
        let started = Instant::now();
        let mut wakes = 0;
        while changes.next(Duration::from_millis(200)).await {
            wakes += 1;
            assert!(started.elapsed() < Duration::from_secs(5), "it settles");
        }
        assert!(wakes >= SQLITE_ECHOES.len(), "{wakes} wakes after the first");
    }

    #[test]
    fn ids_are_random() {
        assert_ne!(new_id(), new_id());
        assert_eq!(new_id().len(), 32);
    }
}
