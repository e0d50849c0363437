//! What this server knows about its own state: the registry's active model as last read, the
//! last reload and the last failure, whether the registry answers and the served file exists,
//! and from those why it is degraded. Written by the reload task and the watchers, read by
//! GetServerStatus, the metrics and the request path; its own room so that the operations
//! (`ops`) and the watchers (`watch`) both use it without importing each other.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::error::{Error, FileProblem};
use crate::name::quoted;
use crate::registry::ModelRecord;

/// Why a server is degraded, as a code (GetServerStatus, the `modeld_degraded_reason` metric);
/// reported in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The registry database does not answer; the server serves from memory.
    RegistryUnreachable,
    /// The served model's file is gone from disk (the model in memory keeps serving).
    ModelFileMissing,
    /// A model file exists but cannot be read.
    ModelFileUnreadable,
    /// A model file's sha256 differs from the registry's.
    ChecksumMismatch,
    /// A model file is not a model this server can load.
    ModelNotLoadable,
    /// A changed model file's inputs or outputs would break the served model's clients.
    SignatureIncompatible,
    /// The registry names another model (or file) than the one served, for no reason above
    /// (a reload is pending or failed otherwise).
    NotServingRegistryModel,
    /// A reload failed for another reason (see the message).
    ReloadFailed,
}

impl Reason {
    /// Every reason, in the order they are reported.
    pub const ALL: [Reason; 8] = [
        Self::RegistryUnreachable,
        Self::ModelFileMissing,
        Self::ModelFileUnreadable,
        Self::ChecksumMismatch,
        Self::ModelNotLoadable,
        Self::SignatureIncompatible,
        Self::NotServingRegistryModel,
        Self::ReloadFailed,
    ];

    /// The code in metrics and logs.
    pub fn code(self) -> &'static str {
        match self {
            Self::RegistryUnreachable => "registry_unreachable",
            Self::ModelFileMissing => "model_file_missing",
            Self::ModelFileUnreadable => "model_file_unreadable",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::ModelNotLoadable => "model_not_loadable",
            Self::SignatureIncompatible => "signature_incompatible",
            Self::NotServingRegistryModel => "not_serving_registry_model",
            Self::ReloadFailed => "reload_failed",
        }
    }

    /// The reason a failed reload gives.
    pub(crate) fn of(e: &Error) -> Self {
        match e {
            e if e.is_unreachable() => Self::RegistryUnreachable,
            Error::Unavailable(_) => Self::RegistryUnreachable,
            Error::ModelFile { problem, .. } => match problem {
                FileProblem::Missing => Self::ModelFileMissing,
                FileProblem::Unreadable => Self::ModelFileUnreadable,
                FileProblem::ChecksumMismatch => Self::ChecksumMismatch,
                FileProblem::NotLoadable => Self::ModelNotLoadable,
                FileProblem::SignatureChanged => Self::SignatureIncompatible,
            },
            _ => Self::ReloadFailed,
        }
    }
}

/// One reason why a server is degraded, in words, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct Degradation {
    /// The code.
    pub reason: Reason,
    /// For people.
    pub message: String,
    /// Since when it holds.
    pub since: DateTime<Utc>,
}

/// What this server knows about its own state; read by GetServerStatus.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    /// The registry's active model as last read.
    pub registry_active: Option<ModelRecord>,
    /// The last reload error, its reason and when; `None` after a success.
    pub last_error: Option<(String, Reason, DateTime<Utc>)>,
    /// Where the last error came from: "file" or a registry reload source.
    pub last_error_source: String,
    /// The last successful (re)load: source and when.
    pub last_reload: Option<(String, DateTime<Utc>)>,
    /// Since when the served model's file has been missing on disk.
    pub file_missing_since: Option<DateTime<Utc>>,
    /// Since when the registry has not answered (`None`: it answered the last check).
    pub registry_unreachable_since: Option<DateTime<Utc>>,
    /// Why it does not answer, in a client's words (a removed database file).
    pub registry_unreachable_why: Option<String>,
    /// The registry generation this server has caught up with.
    pub generation: i64,
    /// Failed reloads since start.
    pub reload_failures: u64,
}

/// Shared, updated by the reload task and the watchers.
#[derive(Debug)]
pub struct Status {
    inner: Mutex<StatusSnapshot>,
    /// Bumped when events may have been added (local writes, notifications, generation changes);
    /// WatchEvents streams wait on it.
    events: watch::Sender<u64>,
    /// The registry generation whose state this server serves (set after each reload from the
    /// registry, failed or not: a request that waits for it learns either way).
    applied: watch::Sender<Applied>,
    /// Asks the reload task to read the registry now.
    kick: tokio::sync::Notify,
}

/// What the reload task last did with the registry: the generation it read, and whether it
/// serves that generation's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The generation read before the reload.
    pub generation: i64,
    /// The reload succeeded.
    pub ok: bool,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            inner: Mutex::new(StatusSnapshot::default()),
            events: watch::Sender::new(0),
            applied: watch::Sender::new(Applied::default()),
            kick: tokio::sync::Notify::new(),
        }
    }
}

impl StatusSnapshot {
    /// The registry answered the last check.
    pub fn registry_reachable(&self) -> bool {
        self.registry_unreachable_since.is_none()
    }

    /// The served model's file is missing on disk.
    pub fn file_missing(&self) -> bool {
        self.file_missing_since.is_some()
    }

    /// Degraded: any of [`StatusSnapshot::degradations`] holds.
    pub fn degraded(&self, serving: Option<&ModelRecord>) -> bool {
        !self.degradations(serving).is_empty()
    }

    /// Why this server is degraded, each reason once, in [`Reason::ALL`] order: the registry is
    /// unreachable, the served file is missing, the last reload failed (its file's problem),
    /// or what is served differs from what the registry names.
    pub fn degradations(&self, serving: Option<&ModelRecord>) -> Vec<Degradation> {
        let mut out = Vec::new();
        if let Some(since) = self.registry_unreachable_since {
            let what = serving.map_or_else(
                || "nothing is served".to_string(),
                |m| format!("serving {} from memory", quoted(&m.model_name)),
            );
            out.push(Degradation {
                reason: Reason::RegistryUnreachable,
                message: format!(
                    "the model registry database has been unreachable since {}{}; {what}",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    self.registry_unreachable_why
                        .as_ref()
                        .map_or_else(String::new, |w| format!(" ({w})"))
                ),
                since,
            });
        }
        if let (Some(since), Some(m)) = (self.file_missing_since, serving) {
            out.push(Degradation {
                reason: Reason::ModelFileMissing,
                message: format!(
                    "the served model's file {} is missing on disk; the model in memory keeps serving",
                    quoted(&m.file_path)
                ),
                since,
            });
        }
        if let Some((message, reason, since)) = &self.last_error
            && !out.iter().any(|d| d.reason == *reason)
        {
            out.push(Degradation {
                reason: *reason,
                message: message.clone(),
                since: *since,
            });
        }
        let differs = match (serving, &self.registry_active) {
            (Some(m), Some(r)) => m.model_id != r.model_id || m.checksum_sha256 != r.checksum_sha256,
            (None, Some(_)) => true,
            _ => false,
        };
        if differs && out.is_empty() {
            let registry = self.registry_active.as_ref();
            let wanted = registry.map_or("", |r| r.model_name.as_str());
            let served = serving.map_or_else(|| "nothing".to_string(), |m| quoted(&m.model_name));
            out.push(Degradation {
                reason: Reason::NotServingRegistryModel,
                message: format!(
                    "the registry names {} but this server serves {served}; a reload is pending",
                    quoted(wanted)
                ),
                // Since the registry's record changed (the activation), a stable time.
                since: registry.map_or_else(Utc::now, |r| r.updated_at),
            });
        }
        out.sort_by_key(|d| d.reason);
        out
    }

    /// The registry does not answer because of `error` (its client words are kept as the why).
    pub(crate) fn set_unreachable(&mut self, error: &Error) {
        self.set_reachable(false);
        self.registry_unreachable_why = Some(error.client_message());
    }

    pub(crate) fn set_reachable(&mut self, reachable: bool) {
        match (reachable, self.registry_unreachable_since) {
            (true, _) => {
                self.registry_unreachable_since = None;
                self.registry_unreachable_why = None;
                // The registry answers again: its outage is no reason any more.
                if self
                    .last_error
                    .as_ref()
                    .is_some_and(|(_, r, _)| *r == Reason::RegistryUnreachable)
                {
                    self.last_error = None;
                }
            }
            (false, None) => self.registry_unreachable_since = Some(Utc::now()),
            (false, Some(_)) => {}
        }
    }

    pub(crate) fn set_file_missing(&mut self, missing: bool) {
        match (missing, self.file_missing_since) {
            (false, _) => self.file_missing_since = None,
            (true, None) => self.file_missing_since = Some(Utc::now()),
            (true, Some(_)) => {}
        }
    }
}

impl Status {
    /// A copy of the current state.
    pub fn snapshot(&self) -> StatusSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusSnapshot> {
        // A panic while holding this lock cannot leave the snapshot half-written in a way that
        // matters (plain fields), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the state under the lock.
    pub(crate) fn update(&self, f: impl FnOnce(&mut StatusSnapshot)) {
        f(&mut self.lock());
    }

    /// Records a successful (re)load of `record` from `source`.
    pub fn record_reload(&self, source: &str, record: &ModelRecord) {
        self.update(|s| {
            s.set_reachable(true);
            s.last_error = None;
            s.set_file_missing(false);
            s.last_reload = Some((source.to_string(), Utc::now()));
            s.registry_active = Some(record.clone());
        });
    }

    /// Whether the registry answered the last check (without copying the snapshot).
    pub fn registry_reachable(&self) -> bool {
        self.lock().registry_reachable()
    }

    /// Wakes WatchEvents streams.
    pub fn wake_events(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records what a reload from the registry did.
    pub fn set_applied(&self, applied: Applied) {
        self.applied.send_replace(applied);
    }

    /// Follows [`Status::set_applied`].
    pub fn subscribe_applied(&self) -> watch::Receiver<Applied> {
        self.applied.subscribe()
    }

    /// Asks the reload task to read the registry now (a change was just made, or a request
    /// names a model the registry serves and this server does not yet).
    pub fn kick_reload(&self) {
        self.kick.notify_one();
    }

    /// Waits for [`Status::kick_reload`].
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }

    /// Follows [`Status::wake_events`].
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}
