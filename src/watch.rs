//! Keeps the served model in step with the registry and with the active model's file, from
//! every source: a registry watcher (PostgreSQL LISTEN/NOTIFY plus a periodic generation check;
//! SQLite a watch on the database's files plus a slow poll) and a file watcher (notify, debounced) feed **one reload
//! task**, so two triggers can never race each other into publishing an older model after a
//! newer one. A model that cannot be loaded never replaces the served one: the server keeps its
//! last good model, reports itself degraded, logs, records an event and retries with backoff.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::Error;
use crate::ops::{Changes, FileSync, Reconcile, RegistrySync};
use crate::registry::EventKind;
use crate::status::{Reason, Status};

/// How the watchers behave.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// SQLite: how often the generation counter is read.
    pub registry_poll: Duration,
    /// PostgreSQL: how often the generation is checked besides LISTEN/NOTIFY (missed
    /// notifications, reconnects).
    pub registry_check: Duration,
    /// Quiet time after the last file event before the file is reloaded.
    pub file_debounce: Duration,
    /// Refuse a changed file whose sha256 differs from the registry.
    pub strict_checksum: bool,
    /// Watch the active model's file at all.
    pub watch_files: bool,
    /// How often the active model's object is asked for its ETag.
    pub object_poll: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// The registry may name another model (or the named file may be back).
    Registry,
    /// The served model's file changed on disk.
    File,
}

/// The running watchers; dropping it stops them.
pub struct Reloader {
    tasks: Vec<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the reload task and the watchers. The first reload (source "startup") loads what the
/// registry names as active.
///
/// # Errors
/// When the file watcher cannot be created.
pub fn start(
    reconcile: Reconcile,
    config: ReloadConfig,
    member: Option<Arc<crate::fleet::Member>>,
) -> anyhow::Result<Reloader> {
    let status = Arc::clone(reconcile.status());
    let (tx, rx) = mpsc::channel::<Trigger>(64);
    let mut tasks = vec![tokio::spawn(reload_loop(
        reconcile.clone(),
        Arc::clone(&status),
        config.clone(),
        rx,
        member,
    ))];
    tasks.push(tokio::spawn(registry_watcher(
        reconcile.clone(),
        Arc::clone(&status),
        config.clone(),
        tx.clone(),
    )));
    if config.watch_files {
        tasks.push(tokio::spawn(object_poller(
            reconcile.clone(),
            config.object_poll,
            tx.clone(),
        )));
    }
    let watcher = if config.watch_files {
        let (raw_tx, raw_rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Runs on notify's thread: forward into the async world, never block here.
            // Opening and reading a file (our own loads included) is not a change.
            if let Ok(event) = res.map_err(|e| tracing::warn!(error = %e, "file watcher error"))
                && !matches!(event.kind, notify::EventKind::Access(_))
            {
                for path in event.paths {
                    let _ = raw_tx.send(path);
                }
            }
        })?;
        watcher.watch(reconcile.root().path(), RecursiveMode::Recursive)?;
        tasks.push(tokio::spawn(file_debouncer(
            reconcile,
            status,
            config.file_debounce,
            raw_rx,
            tx,
        )));
        Some(watcher)
    } else {
        None
    };
    Ok(Reloader {
        tasks,
        _watcher: watcher,
    })
}

/// Asks for a file check whenever the served model is an object, every `every`: the reload
/// task then compares the object's ETag (and, when it moved, its bytes) with what is served.
async fn object_poller(reconcile: Reconcile, every: Duration, tx: mpsc::Sender<Trigger>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let is_object = reconcile
            .served()
            .is_some_and(|m| crate::model::objects::is_uri(&m.record.file_path));
        if is_object && tx.send(Trigger::File).await.is_err() {
            return;
        }
    }
}

const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

async fn reload_loop(
    reconcile: Reconcile,
    status: Arc<Status>,
    config: ReloadConfig,
    mut rx: mpsc::Receiver<Trigger>,
    member: Option<Arc<crate::fleet::Member>>,
) {
    let mut source = "startup";
    let (mut registry_due, mut file_due) = (true, false);
    let mut retry_at: Option<Instant> = None;
    let mut backoff = RETRY_MIN;
    // The last generation this server serves, for reports after a failure.
    let mut served_generation = 0;
    loop {
        if registry_due {
            registry_due = false;
            // Read before the reload: serving what the registry named after reading it means
            // serving this generation's state (or a later one's).
            let generation = reconcile.generation().await.ok();
            let ok = sync_registry(&reconcile, &status, source).await;
            if ok {
                retry_at = None;
                backoff = RETRY_MIN;
            } else {
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
            if let Some(g) = generation {
                if ok {
                    served_generation = served_generation.max(g);
                }
                status.set_applied(crate::status::Applied { generation: g, ok });
                if let Some(m) = &member {
                    m.report(applied(&reconcile, &status, served_generation, (!ok).then_some(g)))
                        .await;
                }
            }
        }
        if file_due {
            file_due = false;
            if sync_file(&reconcile, &status, config.strict_checksum).await {
                // The registry moved underneath the file change: let the registry decide.
                registry_due = true;
                continue;
            }
        }
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            trigger = rx.recv() => match trigger {
                None => return,
                Some(t) => mark(t, &mut registry_due, &mut file_due),
            },
            () = status.kicked() => registry_due = true,
            () = retry => registry_due = true,
        }
        // Coalesce whatever else is queued: one reload serves them all.
        while let Ok(t) = rx.try_recv() {
            mark(t, &mut registry_due, &mut file_due);
        }
        source = "registry";
    }
}

/// What this server reports to the fleet table: the generation it serves, what it serves,
/// and, when the reload of generation `failed` did not succeed, why.
fn applied(
    reconcile: &Reconcile,
    status: &Status,
    served: i64,
    failed: Option<i64>,
) -> crate::registry::servers::Applied {
    let snapshot = status.snapshot();
    let serving = reconcile.served();
    let degraded = degraded_text(&snapshot, serving.as_ref().map(|s| &s.record));
    let problem = match (failed, &snapshot.last_error) {
        (Some(_), Some((message, _, _))) => message.clone(),
        (Some(_), None) => "the reload failed (see the server's log)".into(),
        (None, _) => String::new(),
    };
    crate::registry::servers::Applied {
        generation: served,
        serving: reconcile.serving_report(),
        problem,
        problem_generation: failed.unwrap_or(0),
        degraded,
    }
}

/// A server's degradations in one line for the fleet table ('' when none).
pub fn degraded_text(
    snapshot: &crate::status::StatusSnapshot,
    serving: Option<&crate::registry::ModelRecord>,
) -> String {
    snapshot
        .degradations(serving)
        .iter()
        .map(|d| d.message.clone())
        .collect::<Vec<_>>()
        .join("; ")
}

fn mark(t: Trigger, registry_due: &mut bool, file_due: &mut bool) {
    match t {
        Trigger::Registry => *registry_due = true,
        Trigger::File => *file_due = true,
    }
}

/// One registry reload; `false` when it should be retried.
async fn sync_registry(reconcile: &Reconcile, status: &Status, source: &str) -> bool {
    // Cached candidates follow their records (deleted, renamed, file changed, activated).
    reconcile.refresh_candidates().await;
    let synced = sync_active(reconcile, status, source).await;
    // Then the canary and the shadow, beside whatever is active now.
    if let Err(e) = reconcile.sync_rollout().await {
        tracing::warn!(error = %e, "cannot follow the registry's canary and shadow; will retry");
        return false;
    }
    synced
}

/// The active model's part of a registry reload.
async fn sync_active(reconcile: &Reconcile, status: &Status, source: &str) -> bool {
    match reconcile.sync_with_registry().await {
        Ok(RegistrySync::InSync(record)) => {
            let missing = !crate::model::objects::is_uri(&record.file_path)
                && reconcile.root().resolve(&record.file_path).is_err();
            status.update(|s| {
                s.set_reachable(true);
                s.last_error = None;
                s.set_file_missing(missing);
                s.registry_active = Some(record);
            });
            true
        }
        Ok(RegistrySync::Failed(record, e)) => {
            status.update(|s| {
                s.set_reachable(true);
                s.registry_active = Some(record);
            });
            failed(reconcile, status, source, &e).await;
            false
        }
        Ok(RegistrySync::NoActiveModel) => {
            let serving = reconcile.served().map(|s| s.record.model_name.clone());
            if let Some(name) = serving {
                tracing::warn!(serving = %name, "the registry names no active model; keeping the served model");
            }
            status.update(|s| {
                s.set_reachable(true);
                s.registry_active = None;
            });
            true
        }
        Ok(RegistrySync::Reloaded(record)) => {
            status.record_reload(source, &record);
            let _ = reconcile
                .record_event(EventKind::Reloaded, Some(&record), source, "")
                .await;
            status.wake_events();
            true
        }
        Err(e) => {
            failed(reconcile, status, source, &e).await;
            false
        }
    }
}

/// One file reload; `true` when the registry moved and must be reloaded instead.
async fn sync_file(reconcile: &Reconcile, status: &Status, strict: bool) -> bool {
    match reconcile.sync_with_file(strict).await {
        Ok(FileSync::Unchanged) => {
            // The file is back to what is served: a file error is over; a registry error (the
            // registry names a model this server cannot load) is not.
            status.update(|s| {
                s.set_file_missing(false);
                if s.last_error_source == "file" {
                    s.last_error = None;
                }
            });
            false
        }
        Ok(FileSync::Missing(record)) => {
            let first = !status.snapshot().file_missing();
            status.update(|s| s.set_file_missing(true));
            if first {
                tracing::warn!(model = %record.model_name, file = %record.file_path, "the served model's file is gone; the model in memory keeps serving");
                let detail = format!(
                    "file {:?} is missing; the model in memory keeps serving",
                    record.file_path
                );
                let _ = reconcile
                    .record_event(EventKind::ReloadFailed, Some(&record), "file", &detail)
                    .await;
                status.wake_events();
            }
            false
        }
        Ok(FileSync::Reloaded(record)) => {
            status.record_reload("file", &record);
            status.wake_events();
            false
        }
        Ok(FileSync::RegistryMoved) => true,
        Err(e) => {
            // Half-written, corrupt or refused: keep serving; the next change is tried again.
            failed(reconcile, status, "file", &e).await;
            false
        }
    }
}

async fn failed(reconcile: &Reconcile, status: &Status, source: &str, e: &Error) {
    // Status and events are read by clients: the database's words stay in the log.
    let message = e.client_message();
    let previous = status.snapshot().last_error;
    let repeated = previous.as_ref().is_some_and(|(m, _, _)| *m == message);
    let reason = Reason::of(e);
    status.update(|s| {
        if reason == Reason::RegistryUnreachable {
            s.set_reachable(false);
        }
        // The same error goes on: it holds since it first happened.
        let since = previous.filter(|_| repeated).map_or_else(Utc::now, |(_, _, t)| t);
        s.last_error = Some((message.clone(), reason, since));
        s.last_error_source = source.to_string();
        s.reload_failures += 1;
    });
    if repeated {
        tracing::debug!(%source, error = %e, "reload still failing");
        return;
    }
    tracing::error!(%source, error = %e, "reload failed; keeping the served model");
    let wanted = status.snapshot().registry_active;
    if reconcile
        .record_event(EventKind::ReloadFailed, wanted.as_ref(), source, &message)
        .await
        .is_ok()
    {
        status.wake_events();
    }
}

/// Debounces file events for the served model's file (-> File) and for the file the registry
/// names but this server could not load (-> Registry: it may be loadable now).
async fn file_debouncer(
    reconcile: Reconcile,
    status: Arc<Status>,
    debounce: Duration,
    mut raw: mpsc::UnboundedReceiver<PathBuf>,
    tx: mpsc::Sender<Trigger>,
) {
    let mut due: Option<Instant> = None;
    let (mut file, mut registry) = (false, false);
    loop {
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            path = raw.recv() => {
                let Some(path) = path else { return };
                let root = reconcile.root().path();
                let served = reconcile.served().map(|s| root.join(&s.record.file_path));
                let wanted = status.snapshot().registry_active.map(|r| root.join(&r.file_path));
                let hit_served = served.as_ref() == Some(&path);
                let hit_wanted = wanted.as_ref() == Some(&path) && !hit_served;
                if hit_served || hit_wanted {
                    file |= hit_served;
                    registry |= hit_wanted;
                    // Every event restarts the quiet period: a file being written is reloaded
                    // once, after the writer is done.
                    due = Some(Instant::now() + debounce);
                }
            }
            () = timer => {
                due = None;
                if std::mem::take(&mut file) {
                    let _ = tx.send(Trigger::File).await;
                }
                if std::mem::take(&mut registry) {
                    let _ = tx.send(Trigger::Registry).await;
                }
            }
        }
    }
}

/// Follows the registry generation: LISTEN/NOTIFY plus a periodic check on PostgreSQL, a poll
/// on SQLite. Sends a reload trigger whenever the generation moves (or may have moved).
async fn registry_watcher(reconcile: Reconcile, status: Arc<Status>, config: ReloadConfig, tx: mpsc::Sender<Trigger>) {
    let mut last = status.snapshot().generation;
    let check = async |last: &mut i64| match reconcile.generation().await {
        Ok(g) => {
            let was_reachable = status.snapshot().registry_reachable();
            status.update(|s| s.set_reachable(true));
            if !was_reachable {
                tracing::info!("the registry is reachable again");
            }
            // Back after an outage: reload even if the generation did not move (a reload may
            // have failed while the registry was away).
            if g != *last || !was_reachable {
                *last = g;
                status.update(|s| s.generation = g);
                status.wake_events();
                let _ = tx.send(Trigger::Registry).await;
            }
        }
        Err(e) => {
            let was = status.snapshot().registry_reachable();
            status.update(|s| s.set_unreachable(&e));
            if was {
                tracing::warn!(error = %e, "registry unreachable; serving from memory");
            }
        }
    };
    let pg = match reconcile.changes().await {
        Changes::Notify(pg) => pg,
        // SQLite: every write changes the database's files, so a watch on them notices a
        // change within milliseconds; the poll stays as a safety net (a file system that
        // sends no events).
        Changes::Files(mut changes) => {
            let mut tick = tokio::time::interval(config.registry_poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                match &mut changes {
                    Some(c) => {
                        c.next(config.registry_poll).await;
                    }
                    None => {
                        tick.tick().await;
                    }
                }
                check(&mut last).await;
            }
        }
    };
    let mut tick = tokio::time::interval(config.registry_check);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pg).await {
            Ok(mut l) => match l.listen_all(["modeld_registry", "modeld_events"]).await {
                Ok(()) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            Err(e) => {
                status.update(|s| s.set_reachable(false));
                tracing::debug!(error = %e, "cannot connect the registry listener; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Anything may have changed while we were not listening.
        check(&mut last).await;
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(n)) if n.channel() == "modeld_events" => status.wake_events(),
                    Ok(Some(_)) => check(&mut last).await,
                    // The connection dropped and was re-established: notifications may be lost.
                    Ok(None) => check(&mut last).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "registry listener failed; reconnecting");
                        status.update(|s| s.set_reachable(false));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                },
                _ = tick.tick() => check(&mut last).await,
            }
        }
    }
}
