//! The automatic rollback (guide 000: rollback_threshold). Each server counts its own window
//! of outcomes per model ([`crate::serving::window`]) and acts through the registry with a
//! conditional change, so a fleet acts once and every server follows: a canary whose error
//! rate (or p99 latency) over its window exceeds its threshold goes to 0 %; a freshly activated
//! model (within the watch period) that does is rolled back from, through the conditional
//! rollback. An active model that served through its watch period is marked stable.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Core, Rollout};
use crate::error::Error;
use crate::name::quoted;
use crate::registry::ModelRecord;
use crate::registry::ModelRef;
use crate::serving::route::Role;
use crate::serving::window::Windows;

/// The guard's state: the windows, and what it last saw serve.
#[derive(Debug, Default)]
pub struct Guard {
    windows: Windows,
    watch: Duration,
    seen: Mutex<Seen>,
    /// A model just failed: the guard looks now, not at its next tick (a failing canary is
    /// paused by the request that crosses its threshold, not up to half a second later).
    due: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Seen {
    /// The active model and since when this server has served it.
    active: Option<(i64, Instant)>,
}

impl Guard {
    /// A guard that watches freshly activated models for `watch`.
    pub fn new(watch: Duration) -> Self {
        Self {
            watch,
            ..Self::default()
        }
    }

    /// `model_id` begins a term as the active model (or, with `active` false, as the canary):
    /// its window starts empty.
    pub fn begin(&self, model_id: i64, active: bool) {
        self.windows.reset(model_id);
        if active {
            let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.active = Some((model_id, Instant::now()));
        }
    }
}

/// Why `record`'s window calls for a rollback, if it does.
fn exceeded(windows: &Windows, record: &ModelRecord) -> Option<String> {
    if record.rollback_threshold.is_none() && record.rollback_p99_ms.is_none() {
        return None;
    }
    let window = Duration::from_secs(u64::try_from(record.rollback_window_secs).unwrap_or(60).max(1));
    let f = windows.figures(record.model_id, window);
    if f.total < u64::try_from(record.rollback_min_samples).unwrap_or(1) {
        return None;
    }
    if let Some(threshold) = record.rollback_threshold
        && f.error_rate() > threshold
    {
        return Some(format!(
            "error rate {:.3} over the last {} s ({} of {} requests failed in the model) is above its rollback \
             threshold {threshold}",
            f.error_rate(),
            window.as_secs(),
            f.faults,
            f.total
        ));
    }
    match (record.rollback_p99_ms, f.p99) {
        (Some(limit), Some(p99)) if p99.as_secs_f64() * 1e3 > limit => Some(format!(
            "p99 latency {:.1} ms over the last {} s ({} requests) is above its threshold {limit} ms",
            p99.as_secs_f64() * 1e3,
            window.as_secs(),
            f.total
        )),
        _ => None,
    }
}

/// One model's window as the guard sees it.
#[derive(Debug, Clone)]
pub struct GuardWindow {
    /// The model.
    pub record: ModelRecord,
    /// Its role here.
    pub role: Role,
    /// Its window's length.
    pub window: Duration,
    /// What the window holds.
    pub figures: crate::serving::window::WindowFigures,
}

impl Rollout {
    /// The active model's and the canary's windows on this server.
    pub fn guard_windows(&self) -> Vec<GuardWindow> {
        let Some(set) = self.core.slot.load() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let canary = set.canary.as_ref().map(|c| (&c.model.record, Role::Canary));
        for (record, role) in std::iter::once((&set.active.record, Role::Active)).chain(canary) {
            let window = Duration::from_secs(u64::try_from(record.rollback_window_secs).unwrap_or(60).max(1));
            out.push(GuardWindow {
                record: record.clone(),
                role,
                window,
                figures: self.core.guard.windows.figures(record.model_id, window),
            });
        }
        out
    }

    /// Waits until a request has failed in a model (the guard should look now).
    pub async fn guard_due(&self) {
        self.core.guard.due.notified().await;
    }

    /// One look at the windows of the canary and the active model; acts through the registry.
    /// The server runs it every half second, and at once after a request fails in a model.
    pub async fn guard_tick(&self) {
        let Some(set) = self.core.slot.load() else {
            return;
        };
        let (active, canary) = {
            let mut seen = self
                .core
                .guard
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let id = set.active.record.model_id;
            if seen.active.is_none_or(|(a, _)| a != id) {
                // Published before the guard was told (start-up): its term starts now.
                seen.active = Some((id, Instant::now()));
            }
            (seen.active, set.canary.clone())
        };
        if let Some(c) = canary.filter(|c| c.percentage > 0)
            && let Some(why) = exceeded(&self.core.guard.windows, &c.model.record)
        {
            match self.core.registry.pause_canary(c.model.record.model_id, &why).await {
                Ok(true) => {
                    tracing::warn!(canary = %c.model.record.model_name, "automatic rollback: the canary goes to 0%: {why}");
                    self.core.guard.windows.reset(c.model.record.model_id);
                    if let Err(e) = self.core.sync_rollout().await {
                        tracing::warn!(error = %e, "cannot follow the paused canary yet; the reload task will");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "automatic rollback of the canary failed; will retry: {why}"),
            }
        }
        let Some((id, since)) = active else { return };
        let record = &set.active.record;
        if since.elapsed() < self.core.guard.watch {
            if let Some(why) = exceeded(&self.core.guard.windows, record) {
                let reason = format!("automatic rollback: {why}");
                match self
                    .activation()
                    .rollback("guard", &reason, Some(&ModelRef::Id(id)))
                    .await
                {
                    Ok(done) => tracing::warn!(
                        from = %record.model_name,
                        to = %done.active.model_name,
                        "automatic rollback from {}: {why}",
                        quoted(&record.model_name)
                    ),
                    // Someone (another server, a person) changed it first: nothing to undo.
                    Err(Error::FailedPrecondition(m) | Error::ActiveChanged(m)) => {
                        tracing::info!("automatic rollback not needed: {m}");
                    }
                    Err(e) => tracing::warn!(error = %e, "automatic rollback failed; will retry: {why}"),
                }
                self.core.guard.windows.reset(id);
            }
        } else if !record.is_stable {
            match self.core.registry.mark_stable(id).await {
                Ok(true) => tracing::info!(model = %record.model_name, "served through its watch period: stable"),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "cannot mark the active model stable yet"),
            }
        }
    }
}

impl Core {
    /// Records a request's outcome for the guard: only the active model's and the canary's,
    /// and only what the model did (a success, or a failure in the engine).
    pub(super) fn guard_record(&self, role: Role, record: &ModelRecord, outcome: Result<(), &Error>, took: Duration) {
        if !matches!(role, Role::Active | Role::Canary) {
            return;
        }
        let fault = match outcome {
            Ok(()) => false,
            Err(Error::Internal { .. }) => true,
            // The caller's input, its deadline, overload: not the model's doing.
            Err(_) => return,
        };
        self.guard.windows.record(record.model_id, fault, took);
        if fault {
            self.guard.due.notify_one();
        }
    }
}
