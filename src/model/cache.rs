//! Candidates: registered models that are not active, loaded when a request names them ("test
//! a model before making it active") and kept in a bounded least-recently-used cache beside the
//! serving set.
//!
//! Bounded three ways, so that a caller cannot swell the server by naming candidates: at most
//! `models` candidates, at most `bytes` of measured resident memory between them (a model's
//! file size is reserved while it loads, its measured RSS growth counted once it has loaded),
//! and at most `loads` loads at a time. A request that finds no room gets `RESOURCE_EXHAUSTED`.
//! Room is made (the least recently used evicted) once a load has succeeded, so a candidate
//! that fails to load evicts nothing.
//! Concurrent requests for one cold candidate share one load (single flight), and a load runs
//! to its end even when the requests that started it gave up. An evicted model is freed when
//! the last request holding it ends. Nothing here touches the serving set: a candidate that
//! fails to load fails only the requests that named it.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use super::LoadedModel;
use super::memory;
use super::slot::ServedModel;
use crate::config::CandidateArgs;
use crate::error::{Error, Result};
use crate::name::quoted;
use crate::registry::ModelRecord;

/// The candidate cache's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateLimits {
    /// Candidates kept loaded at once; 0 turns predicting by a candidate's name off.
    pub models: usize,
    /// Resident bytes the candidates may hold between them.
    pub bytes: u64,
    /// Candidate loads that may run at once.
    pub loads: usize,
}

impl Default for CandidateLimits {
    fn default() -> Self {
        Self {
            models: 2,
            bytes: 1 << 30,
            loads: 1,
        }
    }
}

/// A cached candidate, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedCandidate {
    /// The model's id.
    pub model_id: i64,
    /// Its name.
    pub name: String,
    /// Measured resident bytes; `None` while it loads.
    pub bytes: Option<u64>,
    /// While it loads: the bytes reserved for it (its file size).
    pub reserved: Option<u64>,
}

type Outcome = Option<Result<Arc<ServedModel>>>;

enum State {
    Loading {
        reserved: u64,
        done: watch::Receiver<Outcome>,
    },
    Ready {
        model: Arc<ServedModel>,
        bytes: u64,
    },
}

struct Entry {
    model_id: i64,
    checksum: String,
    name: String,
    /// Larger is more recently used.
    used: u64,
    state: State,
}

impl Entry {
    fn bytes(&self) -> u64 {
        match &self.state {
            State::Loading { reserved, .. } => *reserved,
            State::Ready { bytes, .. } => *bytes,
        }
    }
}

#[derive(Default)]
struct Entries {
    list: Vec<Entry>,
    clock: u64,
    counts: CacheCounts,
}

/// What the cache did since the server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Loads started (one per cold candidate, however many requests waited for it).
    pub loads: u64,
    /// Loads that failed.
    pub load_failures: u64,
    /// Candidates evicted to make room.
    pub evictions: u64,
    /// Requests refused with RESOURCE_EXHAUSTED for want of room.
    pub refusals: u64,
}

impl Entries {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn bytes(&self) -> u64 {
        self.list.iter().map(Entry::bytes).sum()
    }

    /// Evicts loaded candidates, least recently used first, until one more model of `bytes`
    /// fits beside the others. Whether it fits now.
    fn make_room(&mut self, limits: CandidateLimits, bytes: u64) -> bool {
        while self.list.len() >= limits.models || self.bytes() + bytes > limits.bytes {
            let victim = self
                .list
                .iter()
                .enumerate()
                .filter(|(_, e)| matches!(e.state, State::Ready { .. }))
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i);
            let Some(v) = victim else {
                return false;
            };
            let gone = self.list.remove(v);
            self.counts.evictions += 1;
            tracing::info!(model = %gone.name, bytes = gone.bytes(), "candidate evicted from the cache");
            // Dropped here: freed now, or when the last request holding it ends.
        }
        true
    }
}

/// The candidate cache.
pub struct Candidates {
    limits: CandidateLimits,
    entries: Arc<Mutex<Entries>>,
    loads: Arc<Semaphore>,
}

impl std::fmt::Debug for Candidates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Candidates")
            .field("limits", &self.limits)
            .field("cached", &self.cached())
            .finish()
    }
}

fn lock(entries: &Mutex<Entries>) -> MutexGuard<'_, Entries> {
    // The state stays consistent even if a holder panicked: every change is one Vec operation.
    entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

impl Candidates {
    /// An empty cache with these bounds.
    pub fn new(limits: CandidateLimits) -> Self {
        Self {
            limits,
            entries: Arc::default(),
            loads: Arc::new(Semaphore::new(limits.loads.max(1))),
        }
    }

    /// The bounds.
    pub fn limits(&self) -> CandidateLimits {
        self.limits
    }

    /// What the cache did since it was made.
    pub fn counts(&self) -> CacheCounts {
        lock(&self.entries).counts
    }

    /// What is cached, most recently used first.
    pub fn cached(&self) -> Vec<CachedCandidate> {
        let entries = lock(&self.entries);
        let mut list: Vec<_> = entries.list.iter().collect();
        list.sort_by_key(|e| std::cmp::Reverse(e.used));
        list.into_iter()
            .map(|e| CachedCandidate {
                model_id: e.model_id,
                name: e.name.clone(),
                bytes: matches!(e.state, State::Ready { .. }).then(|| e.bytes()),
                reserved: matches!(e.state, State::Loading { .. }).then(|| e.bytes()),
            })
            .collect()
    }

    /// The loaded candidate named `name` (stored NFC form), without asking the registry: the
    /// fast path of a request. Entries follow the registry through [`Candidates::retain`].
    pub fn get_loaded(&self, name: &str) -> Option<Arc<ServedModel>> {
        let mut entries = lock(&self.entries);
        let now = entries.tick();
        entries
            .list
            .iter_mut()
            .find(|e| e.name == name)
            .and_then(|e| match &e.state {
                State::Ready { model, .. } => {
                    e.used = now;
                    Some(Arc::clone(model))
                }
                State::Loading { .. } => None,
            })
    }

    /// The candidate of `record`, loaded with `load` if it is not cached: joins a load already
    /// running for it, or starts one when the loads in flight leave room (once it has loaded,
    /// the least recently used candidates are evicted as needed). `load` runs in a task of its own, at most `loads` at a time.
    ///
    /// # Errors
    /// `ResourceExhausted` when the cache cannot make room (or the model turned out larger than
    /// the bound); `FailedPrecondition` when candidates are off; the load's own error, shared by
    /// every request that waited for it.
    pub async fn get<F, Fut>(&self, record: &ModelRecord, load: F) -> Result<Arc<ServedModel>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<LoadedModel>> + Send + 'static,
    {
        let mut done = {
            let mut entries = lock(&self.entries);
            let now = entries.tick();
            let found = entries.list.iter_mut().position(|e| e.model_id == record.model_id);
            match found.map(|i| &mut entries.list[i]) {
                Some(e) if e.checksum == record.checksum_sha256 => {
                    e.used = now;
                    match &e.state {
                        State::Ready { model, .. } => return Ok(Arc::clone(model)),
                        State::Loading { done, .. } => done.clone(),
                    }
                }
                _ => {
                    if let Some(stale) = found {
                        // Its file changed in the registry: the cached model is not its model.
                        entries.list.remove(stale);
                    }
                    self.start(&mut entries, record, now, load)?
                }
            }
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::internal("a candidate load ended without an answer"))?;
        outcome.clone().unwrap_or_else(|| Err(Error::internal("no answer")))
    }

    /// Reserves room for `record` and starts its load; the caller holds the lock.
    fn start<F, Fut>(
        &self,
        entries: &mut Entries,
        record: &ModelRecord,
        now: u64,
        load: F,
    ) -> Result<watch::Receiver<Outcome>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<LoadedModel>> + Send + 'static,
    {
        let name = quoted(&record.model_name);
        let limits = self.limits;
        if limits.models == 0 {
            return Err(Error::FailedPrecondition(format!(
                "model {name} is registered but not active, and this server does not load candidates \
                 (--candidate-models 0)"
            )));
        }
        let reserved = u64::try_from(record.file_size_bytes).unwrap_or(0);
        let exhausted = |message: String| Error::ResourceExhausted {
            message,
            retry_after: Duration::from_secs(1),
        };
        if reserved > limits.bytes {
            entries.counts.refusals += 1;
            return Err(exhausted(format!(
                "candidate {name} ({} file) cannot fit in the candidate cache ({} in all, \
                 --candidate-memory); activate it, or raise the bound",
                mib(reserved),
                mib(limits.bytes)
            )));
        }
        // Nothing is evicted for a load that may fail: room is made once it has loaded. Loads
        // in flight count against the bounds and cannot be evicted.
        let loading: Vec<&Entry> = entries
            .list
            .iter()
            .filter(|e| matches!(e.state, State::Loading { .. }))
            .collect();
        let loading_bytes: u64 = loading.iter().map(|e| e.bytes()).sum();
        if loading.len() >= limits.models || loading_bytes + reserved > limits.bytes {
            entries.counts.refusals += 1;
            return Err(exhausted(format!(
                "no room to load candidate {name}: {} other candidates are loading ({} reserved) in a cache of {} \
                 models and {}; try again shortly",
                loading.len(),
                mib(loading_bytes),
                limits.models,
                mib(limits.bytes)
            )));
        }
        let (tx, rx) = watch::channel(None);
        entries.counts.loads += 1;
        entries.list.push(Entry {
            model_id: record.model_id,
            checksum: record.checksum_sha256.clone(),
            name: record.model_name.clone(),
            used: now,
            state: State::Loading {
                reserved,
                done: rx.clone(),
            },
        });
        let (state, loads, record) = (Arc::clone(&self.entries), Arc::clone(&self.loads), record.clone());
        tokio::spawn(async move {
            let outcome = async {
                let _permit = loads
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::internal("the candidate loads were closed"))?;
                let before = tokio::task::spawn_blocking(memory::settled_resident_bytes)
                    .await
                    .ok()
                    .flatten();
                let loaded = load().await?;
                let after = tokio::task::spawn_blocking(memory::settled_resident_bytes)
                    .await
                    .ok()
                    .flatten();
                Ok((loaded, attributed(before, after, record.file_size_bytes)))
            }
            .await;
            let outcome = finish(&state, &record, outcome, limits);
            // Nobody waiting any more is fine: the model is cached for the next request.
            let _ = tx.send(Some(outcome));
        });
        Ok(rx)
    }

    /// Drops the candidates that no longer match `current` (their record was deleted, renamed,
    /// or its file changed; `current` answers with the record as the registry has it now,
    /// `Some(None)` for a deleted one), and the ones that became the active model (they serve
    /// from the serving set). A candidate `current` did not look at (`None`: cached after the
    /// caller read the registry) stays.
    pub fn retain(&self, mut current: impl FnMut(i64) -> Option<Option<ModelRecord>>) {
        let mut entries = lock(&self.entries);
        entries.list.retain(|e| {
            let Some(now) = current(e.model_id) else {
                return true;
            };
            let keep = now.is_some_and(|r| !r.is_active && r.checksum_sha256 == e.checksum && r.model_name == e.name);
            if !keep {
                tracing::info!(model = %e.name, "candidate dropped from the cache: its registry record changed");
            }
            keep
        });
    }

    /// Drops the candidate of `model_id` (it became the active model).
    pub fn forget(&self, model_id: i64) {
        lock(&self.entries).list.retain(|e| e.model_id != model_id);
    }
}

/// The resident bytes a load is taken to have added: the growth of the RSS across it (after
/// freed memory went back to the system), at least the file's size when the RSS cannot be
/// read or a concurrent free hid the growth, and at most twice the file plus 1 MiB: growth
/// beyond that is other work that ran meanwhile (requests, other loads), not the model.
fn attributed(before: Option<u64>, after: Option<u64>, file_size: i64) -> u64 {
    let file = u64::try_from(file_size).unwrap_or(0);
    match (before, after) {
        (Some(b), Some(a)) if a > b => (a - b).min(file.saturating_mul(2).saturating_add(1 << 20)),
        _ => file,
    }
}

/// Settles a finished load: the loaded model is cached if it fits (evicting others as
/// needed), otherwise refused and freed.
fn finish(
    entries: &Mutex<Entries>,
    record: &ModelRecord,
    outcome: Result<(LoadedModel, u64)>,
    limits: CandidateLimits,
) -> Result<Arc<ServedModel>> {
    let mut entries = lock(entries);
    // Out of the list while it is settled: it makes room for itself as a new entry would.
    let loading = entries
        .list
        .iter()
        .position(|e| {
            e.model_id == record.model_id
                && e.checksum == record.checksum_sha256
                && matches!(e.state, State::Loading { .. })
        })
        .map(|i| entries.list.remove(i));
    let (loaded, bytes) = match outcome {
        Ok(done) => done,
        Err(e) => {
            entries.counts.load_failures += 1;
            tracing::warn!(model = %record.model_name, error = %e, "candidate failed to load; nothing that serves changed");
            return Err(e);
        }
    };
    let model = Arc::new(ServedModel {
        record: record.clone(),
        model: loaded,
    });
    let Some(mut entry) = loading else {
        // Dropped meanwhile (its record changed): serve the requests that waited, cache nothing.
        return Ok(model);
    };
    if !entries.make_room(limits, bytes) {
        entries.counts.refusals += 1;
        return Err(Error::ResourceExhausted {
            message: format!(
                "candidate {} takes {} in memory once loaded, more than the candidate cache has room for \
                 ({} in all, --candidate-memory); activate it, or raise the bound",
                quoted(&record.model_name),
                mib(bytes),
                mib(limits.bytes)
            ),
            retry_after: Duration::from_secs(1),
        });
    }
    entry.state = State::Ready {
        model: Arc::clone(&model),
        bytes,
    };
    entries.list.push(entry);
    tracing::info!(
        model = %record.model_name,
        version = %record.version,
        resident = %mib(bytes),
        "candidate loaded into the cache"
    );
    Ok(model)
}

impl Default for CandidateArgs {
    fn default() -> Self {
        let d = CandidateLimits::default();
        Self {
            candidate_models: d.models,
            candidate_memory: d.bytes,
            candidate_loads: d.loads as u64,
        }
    }
}

impl From<&CandidateArgs> for CandidateLimits {
    /// The cache's bounds, as `modeld serve` was told.
    fn from(a: &CandidateArgs) -> Self {
        Self {
            models: a.candidate_models,
            bytes: a.candidate_memory,
            loads: usize::try_from(a.candidate_loads).unwrap_or(usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::model::{EngineSettings, load_model};

    fn record(id: i64) -> ModelRecord {
        crate::testing::bundled("digits_v1.onnx", &format!("m{id}"), id)
            .record
            .clone()
    }

    /// A real load of the bundled model that counts how many run at once.
    fn counted_load(
        running: &Arc<AtomicUsize>,
        most: &Arc<AtomicUsize>,
        calls: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<LoadedModel>> + Send>> + Send + 'static {
        let (running, most, calls) = (Arc::clone(running), Arc::clone(most), Arc::clone(calls));
        move || {
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_v2.onnx");
                let loaded = tokio::task::spawn_blocking(move || load_model(&path, None, EngineSettings::default()))
                    .await
                    .unwrap();
                running.fetch_sub(1, Ordering::SeqCst);
                loaded
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_load_per_cold_candidate_and_at_most_n_at_once() {
        for loads in [1, 2] {
            let cache = Arc::new(Candidates::new(CandidateLimits {
                models: 8,
                bytes: 1 << 30,
                loads,
            }));
            let (running, most, calls) = (Arc::default(), Arc::default(), Arc::default());
            let mut tasks = Vec::new();
            for i in 0..12 {
                // Four candidates, three requests each, all at once.
                let (cache, record) = (Arc::clone(&cache), record(i % 4));
                let load = counted_load(&running, &most, &calls);
                tasks.push(tokio::spawn(async move {
                    cache.get(&record, load).await.map(|m| m.record.model_id)
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                assert_eq!(t.await.unwrap().unwrap(), (i % 4) as i64);
            }
            assert_eq!(calls.load(Ordering::SeqCst), 4, "one load per candidate");
            assert!(most.load(Ordering::SeqCst) <= loads, "at most {loads} at once");
            assert_eq!(cache.counts().loads, 4);
            assert_eq!(cache.cached().len(), 4);
        }
    }

    #[tokio::test]
    async fn least_recently_used_goes_first_and_a_failure_is_not_cached() {
        let cache = Candidates::new(CandidateLimits {
            models: 2,
            bytes: 1 << 30,
            loads: 1,
        });
        let (running, most, calls) = (Arc::default(), Arc::default(), Arc::default());
        for id in [1, 2, 1, 3] {
            cache
                .get(&record(id), counted_load(&running, &most, &calls))
                .await
                .unwrap();
        }
        // 2 was least recently used when 3 came.
        let ids: Vec<i64> = cache.cached().iter().map(|c| c.model_id).collect();
        assert_eq!(ids, [3, 1]);
        assert_eq!(cache.counts().evictions, 1);
        let failed = cache
            .get(&record(4), || async {
                Err(Error::FailedPrecondition("broken on purpose".into()))
            })
            .await
            .unwrap_err();
        assert!(failed.to_string().contains("broken on purpose"));
        assert_eq!(
            cache.cached().len(),
            2,
            "a failed load evicts nothing and is not cached"
        );
        assert_eq!(cache.counts().load_failures, 1);
    }
}
