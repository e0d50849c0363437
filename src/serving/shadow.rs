//! Shadow traffic: a share of requests also runs on the shadow model, after the caller's answer
//! is computed, on threads and a queue of its own. The caller never waits for it and never
//! gets its answer; when the queue is full the mirrored work is dropped and counted, so shadow
//! work can never refuse or delay a real request beyond the CPU it shares.
//!
//! What the caller's path pays: a random draw, two clones of a short vector of `Arc`s (the input
//! and output tensors, never their data) and a push under a short lock. It never wakes the
//! shadow's threads (a wake-up per request measured 15 % on the caller's p50 at c=1): they
//! look at the queue every millisecond and drain it, at the lowest scheduling priority, so the
//! shadow computes on the CPU the callers leave.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{TValue, TVec};

use crate::model::slot::ServedModel;

/// The shadow runner's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Threads that run mirrored requests.
    pub threads: usize,
    /// Mirrored requests that may wait for them; beyond it they are dropped.
    pub queue: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self { threads: 1, queue: 64 }
    }
}

/// One shadow's figures since the server started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowFigures {
    /// The shadow's model id and name.
    pub model_id: i64,
    /// Its name.
    pub model_name: String,
    /// Mirrored requests that ran on the shadow.
    pub mirrored: u64,
    /// Mirrored requests dropped because the shadow's queue was full.
    pub dropped: u64,
    /// Mirrored requests the shadow failed.
    pub errors: u64,
    /// Rows whose top-1 class (argmax of the first output) both models computed.
    pub rows_compared: u64,
    /// Of those, rows where the two agree.
    pub rows_agreed: u64,
    /// The largest absolute difference between the two models' float outputs (same name and
    /// shape).
    pub max_abs_diff: f64,
    /// The mean absolute difference over every compared value.
    pub mean_abs_diff: f64,
    /// The shadow's mean and largest compute time.
    pub latency_mean: Duration,
    /// The largest.
    pub latency_max: Duration,
}

#[derive(Debug, Default)]
struct Tally {
    dropped: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    name: String,
    mirrored: u64,
    errors: u64,
    rows_compared: u64,
    rows_agreed: u64,
    max_abs_diff: f64,
    sum_abs_diff: f64,
    values_compared: u64,
    latency_sum: Duration,
    latency_max: Duration,
}

struct Job {
    shadow: Arc<ServedModel>,
    served: Arc<ServedModel>,
    inputs: TVec<TValue>,
    outputs: TVec<TValue>,
    tally: Arc<Tally>,
}

/// How often the shadow's threads look at their queue when it is empty: every millisecond
/// while there is work, backing off to every 64 ms when there has been none.
const POLL: Duration = Duration::from_millis(1);
const IDLE_POLL: Duration = Duration::from_millis(64);

/// The shadow runner: its queue, its threads, and every shadow's figures.
pub struct Shadows {
    config: ShadowConfig,
    queue: Arc<Mutex<VecDeque<Job>>>,
    tallies: Mutex<HashMap<i64, Arc<Tally>>>,
}

impl std::fmt::Debug for Shadows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadows")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shadows {
    /// Starts the shadow threads.
    ///
    /// # Errors
    /// When a thread cannot be started.
    pub fn start(config: ShadowConfig) -> std::io::Result<Self> {
        let queue: Arc<Mutex<VecDeque<Job>>> = Arc::new(Mutex::new(VecDeque::with_capacity(config.queue.max(1))));
        for i in 0..config.threads.max(1) {
            // The threads hold the queue weakly: they end when the runner is dropped.
            let queue = Arc::downgrade(&queue);
            std::thread::Builder::new()
                .name(format!("modeld-shadow-{i}"))
                .spawn(move || work(&queue))?;
        }
        Ok(Self {
            config,
            queue,
            tallies: Mutex::default(),
        })
    }

    /// The runner's size.
    pub fn config(&self) -> ShadowConfig {
        self.config
    }

    fn tally(&self, shadow: &ServedModel) -> Arc<Tally> {
        let mut tallies = self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tally = tallies.entry(shadow.record.model_id).or_default();
        Arc::clone(tally)
    }

    /// Hands a computed request to the shadow: `inputs` as the served model took them (in its
    /// signature's order) and the `outputs` it answered. Never blocks: a full queue drops it.
    pub fn offer(
        &self,
        shadow: &Arc<ServedModel>,
        served: &Arc<ServedModel>,
        inputs: TVec<TValue>,
        outputs: TVec<TValue>,
    ) {
        let tally = self.tally(shadow);
        let job = Job {
            shadow: Arc::clone(shadow),
            served: Arc::clone(served),
            inputs,
            outputs,
            tally: Arc::clone(&tally),
        };
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if queue.len() < self.config.queue.max(1) {
            queue.push_back(job);
        } else {
            drop(queue);
            tally.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every shadow's figures, by model id.
    pub fn figures(&self) -> Vec<ShadowFigures> {
        let tallies = self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<ShadowFigures> = tallies
            .iter()
            .map(|(id, t)| {
                let i = t.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let ran = i.mirrored.saturating_sub(i.errors);
                ShadowFigures {
                    model_id: *id,
                    model_name: i.name.clone(),
                    mirrored: i.mirrored,
                    dropped: t.dropped.load(Ordering::Relaxed),
                    errors: i.errors,
                    rows_compared: i.rows_compared,
                    rows_agreed: i.rows_agreed,
                    max_abs_diff: i.max_abs_diff,
                    mean_abs_diff: if i.values_compared == 0 {
                        0.0
                    } else {
                        i.sum_abs_diff / i.values_compared as f64
                    },
                    latency_mean: if ran == 0 {
                        Duration::ZERO
                    } else {
                        i.latency_sum / u32::try_from(ran).unwrap_or(u32::MAX)
                    },
                    latency_max: i.latency_max,
                }
            })
            .collect();
        out.sort_by_key(|f| f.model_id);
        out
    }

    /// The figures of the shadow `model_id`.
    pub fn figures_of(&self, model_id: i64) -> Option<ShadowFigures> {
        self.figures().into_iter().find(|f| f.model_id == model_id)
    }
}

/// Lowers the calling thread's scheduling priority to the least (nice 19): the shadow gets the
/// CPU the callers' requests leave, never theirs.
fn yield_to_callers() {
    #[cfg(target_os = "linux")]
    // SAFETY: gettid and setpriority have no preconditions; on Linux PRIO_PROCESS with a thread
    // id sets that one thread's nice value. A failure leaves the thread at normal priority.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, u32::try_from(tid).unwrap_or(0), 19);
    }
}

fn work(queue: &std::sync::Weak<Mutex<VecDeque<Job>>>) {
    yield_to_callers();
    let mut idle = POLL;
    loop {
        let Some(queue) = queue.upgrade() else {
            return;
        };
        let job = queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        drop(queue);
        match job {
            Some(job) => {
                run(job);
                idle = POLL;
            }
            None => {
                std::thread::sleep(idle);
                idle = (idle * 2).min(IDLE_POLL);
            }
        }
    }
}

fn run(job: Job) {
    let Job {
        shadow,
        served,
        inputs,
        outputs,
        tally,
    } = job;
    // The shadow takes the inputs by name, in its own signature's order (a few inputs: a
    // linear search allocates nothing).
    let served_inputs = &served.model.signature.inputs;
    let ordered: Option<TVec<TValue>> = shadow
        .model
        .signature
        .inputs
        .iter()
        .map(|s| {
            served_inputs
                .iter()
                .position(|o| o.name == s.name)
                .and_then(|i| inputs.get(i).cloned())
        })
        .collect();
    let started = Instant::now();
    let result = match ordered {
        Some(inputs) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shadow.model.engine.run(inputs)))
            .unwrap_or_else(|_| Err("the shadow's engine panicked".into())),
        None => Err("the shadow needs an input the request does not carry".into()),
    };
    let took = started.elapsed();
    let mut i = tally.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if i.name.is_empty() {
        i.name.clone_from(&shadow.record.model_name);
    }
    i.mirrored += 1;
    let theirs = match result {
        Ok(o) => o,
        Err(e) => {
            i.errors += 1;
            drop(i);
            tracing::debug!(shadow = %shadow.record.model_name, error = %e, "a mirrored request failed on the shadow");
            return;
        }
    };
    i.latency_sum += took;
    i.latency_max = i.latency_max.max(took);
    compare(&mut i, &served, &outputs, &shadow, &theirs);
}

/// Folds the comparison of the served model's outputs with the shadow's into the tally: float
/// outputs of the same name and shape value by value, and the top-1 class of the first output.
fn compare(i: &mut Inner, served: &ServedModel, ours: &[TValue], shadow: &ServedModel, theirs: &[TValue]) {
    let shadow_outputs = &shadow.model.signature.outputs;
    for (index, (spec, ours)) in served.model.signature.outputs.iter().zip(ours).enumerate() {
        let Some(theirs) = shadow_outputs
            .iter()
            .position(|o| o.name == spec.name)
            .and_then(|k| theirs.get(k))
        else {
            continue;
        };
        if ours.shape() != theirs.shape() {
            continue;
        }
        let (Ok(a), Ok(b)) = (ours.try_as_plain_ram(), theirs.try_as_plain_ram()) else {
            continue;
        };
        let (Ok(a), Ok(b)) = (a.as_slice::<f32>(), b.as_slice::<f32>()) else {
            continue;
        };
        for (x, y) in a.iter().zip(b) {
            let d = f64::from((x - y).abs());
            if d.is_finite() {
                i.max_abs_diff = i.max_abs_diff.max(d);
                i.sum_abs_diff += d;
                i.values_compared += 1;
            }
        }
        let shape = ours.shape();
        if index == 0 && shape.len() == 2 && shape[1] > 0 {
            for (ra, rb) in a.chunks(shape[1]).zip(b.chunks(shape[1])) {
                i.rows_compared += 1;
                if argmax(ra) == argmax(rb) {
                    i.rows_agreed += 1;
                }
            }
        }
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}
