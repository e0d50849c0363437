//! Shadow traffic: a share of requests also runs on the shadow model, after the caller's answer
//! is computed, on threads and a queue of its own. The caller never waits for it and never
//! gets its answer; when the queue is full the mirrored work is dropped and counted, so shadow
//! work can never refuse or delay a real request beyond the CPU it shares.
//!
//! What the caller's path pays: a random draw, two clones of a short vector of `Arc`s (the input
//! and output tensors, never their data) and a push under a short lock. It never wakes the
//! shadow's threads (a wake-up per request measured 15 % on the caller's p50 at c=1): they
//! look at the queue every millisecond and drain it, at the lowest scheduling priority, so the
//! shadow computes on the CPU the callers leave. A shadow thread takes what has queued up as
//! one batched call (same shadow, same serving model, same trailing shapes, up to
//! `max_batch` rows), so under load a mirrored request costs a fraction of a served one; a
//! failed batch runs its requests one by one, so one request's failure is counted as one.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{TValue, TVec};

use super::batch;
use crate::config::ShadowArgs;
use crate::model::slot::ServedModel;

/// The shadow runner's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShadowConfig {
    /// Threads that run mirrored requests.
    pub threads: usize,
    /// Mirrored requests that may wait for them; beyond it they are dropped.
    pub queue: usize,
    /// Bytes of tensors (inputs and the serving model's outputs) the waiting requests may
    /// hold; beyond it they are dropped.
    pub queue_bytes: usize,
    /// Rows one batched shadow call may hold; 1 runs every mirrored request alone.
    pub max_batch: usize,
}

impl Default for ShadowConfig {
    fn default() -> Self {
        Self {
            threads: 1,
            queue: 1024,
            queue_bytes: 64 << 20,
            max_batch: 32,
        }
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
    /// Engine calls that ran the mirrored requests (fewer than `mirrored` when they were
    /// batched).
    pub calls: u64,
    /// The shadow's mean and largest compute time per call.
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
    calls: u64,
    latency_sum: Duration,
    latency_max: Duration,
}

struct Job {
    /// The bytes of its tensors, for the queue's byte bound.
    bytes: usize,
    shadow: Arc<ServedModel>,
    served: Arc<ServedModel>,
    inputs: TVec<TValue>,
    outputs: TVec<TValue>,
    tally: Arc<Tally>,
    /// The mirrored request's id: the shadow computes it in its span
    /// ([`crate::trace::job_span`]).
    request_id: Option<String>,
}

/// How often the shadow's threads look at their queue when it is empty: every millisecond
/// while there is work, backing off to every 64 ms when there has been none.
const POLL: Duration = Duration::from_millis(1);
const IDLE_POLL: Duration = Duration::from_millis(64);

/// The mirrored requests waiting, and the bytes of their tensors.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    bytes: usize,
}

/// The shadow runner: its queue, its threads, and every shadow's figures.
pub struct Shadows {
    config: ShadowConfig,
    queue: Arc<Mutex<Queue>>,
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
        let queue = Arc::new(Mutex::new(Queue {
            jobs: VecDeque::with_capacity(config.queue.clamp(1, 4096)),
            bytes: 0,
        }));
        for i in 0..config.threads.max(1) {
            // The threads hold the queue weakly: they end when the runner is dropped.
            let queue = Arc::downgrade(&queue);
            let max_batch = config.max_batch.max(1);
            std::thread::Builder::new()
                .name(format!("modeld-shadow-{i}"))
                .spawn(move || work(&queue, max_batch))?;
        }
        Ok(Self {
            config,
            queue,
            tallies: Mutex::default(),
        })
    }

    /// Drops the figures of every model but `shadow` (the one now shadowing, if any).
    pub fn forget_all_but(&self, shadow: Option<i64>) {
        let mut tallies = self.tallies.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tallies.retain(|id, _| Some(*id) == shadow);
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
        let bytes = inputs
            .iter()
            .chain(&outputs)
            .map(|t| t.len() * t.datum_type().size_of())
            .sum();
        let job = Job {
            bytes,
            shadow: Arc::clone(shadow),
            served: Arc::clone(served),
            inputs,
            outputs,
            tally: Arc::clone(&tally),
            request_id: crate::trace::current_request_id(),
        };
        let mut queue = self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let room = queue.jobs.len() < self.config.queue.max(1)
            && (queue.jobs.is_empty() || queue.bytes + bytes <= self.config.queue_bytes);
        if room {
            queue.bytes += bytes;
            queue.jobs.push_back(job);
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
                    calls: i.calls,
                    latency_mean: if i.calls == 0 {
                        Duration::ZERO
                    } else {
                        i.latency_sum / u32::try_from(i.calls).unwrap_or(u32::MAX)
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

fn work(queue: &std::sync::Weak<Mutex<Queue>>, max_batch: usize) {
    yield_to_callers();
    let mut idle = POLL;
    loop {
        let Some(queue) = queue.upgrade() else {
            return;
        };
        let batch = {
            let mut queue = queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let batch = take_batch(&mut queue.jobs, max_batch);
            let taken: usize = batch.iter().map(|j| j.bytes).sum();
            queue.bytes = queue.bytes.saturating_sub(taken);
            batch
        };
        drop(queue);
        if batch.is_empty() {
            std::thread::sleep(idle);
            idle = (idle * 2).min(IDLE_POLL);
        } else {
            run_batch(batch);
            idle = POLL;
        }
    }
}

/// Takes the first queued job and the queued jobs that can run in one call with it: the same
/// loaded shadow and serving model (the same `Arc`s), inputs of the same trailing shapes, up
/// to `max_rows` rows, for a shadow that takes a batch.
fn take_batch(queue: &mut VecDeque<Job>, max_rows: usize) -> Vec<Job> {
    let Some(first) = queue.pop_front() else {
        return Vec::new();
    };
    let mut total = batch::rows(&first.inputs);
    if !first.shadow.model.batchable || total == 0 || max_rows <= 1 {
        return vec![first];
    }
    let mut batch = vec![first];
    let mut i = 0;
    while i < queue.len() && total < max_rows {
        let job = &queue[i];
        let n = batch::rows(&job.inputs);
        let fits = n > 0
            && total + n <= max_rows
            && Arc::ptr_eq(&job.shadow, &batch[0].shadow)
            && Arc::ptr_eq(&job.served, &batch[0].served)
            && batch::same_trailing_shapes(&job.inputs, &batch[0].inputs);
        if fits && let Some(job) = queue.remove(i) {
            total += n;
            batch.push(job);
        } else {
            i += 1;
        }
    }
    batch
}

/// The request's inputs in the shadow's signature order, by name (a few inputs: a linear
/// search allocates nothing); `None` when the request lacks one.
fn ordered_inputs(job: &Job) -> Option<TVec<TValue>> {
    let served_inputs = &job.served.model.signature.inputs;
    job.shadow
        .model
        .signature
        .inputs
        .iter()
        .map(|s| {
            served_inputs
                .iter()
                .position(|o| o.name == s.name)
                .and_then(|i| job.inputs.get(i).cloned())
        })
        .collect()
}

/// Why a mirrored request did not run on the shadow (logged at debug, counted as an error).
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Engine(#[from] crate::model::engine::EngineError),
    #[error("the shadow needs an input the request does not carry")]
    MissingInput,
    #[error("cannot stack a shadow batch: {0:#}")]
    Stack(#[source] tract_onnx::prelude::TractError),
    #[error("cannot split a shadow batch: {0:#}")]
    Split(#[source] tract_onnx::prelude::TractError),
}

fn run_engine(shadow: &ServedModel, inputs: TVec<TValue>) -> Result<TVec<TValue>, Failed> {
    // The engine contains its own panics (engine.rs).
    Ok(shadow.model.engine.run(inputs)?)
}

/// Runs a batch on the shadow in one call and compares each request's share of the answer
/// with what the serving model said; a batch that cannot be stacked, run or split runs its
/// requests one by one.
fn run_batch(mut batch: Vec<Job>) {
    if batch.len() == 1 {
        if let Some(job) = batch.pop() {
            run_one(job);
        }
        return;
    }
    let Some(ordered) = batch.iter().map(ordered_inputs).collect::<Option<Vec<_>>>() else {
        batch.into_iter().for_each(run_one);
        return;
    };
    // A batch computes in its first request's span; run alone, each in its own.
    let span = crate::trace::job_span(batch[0].request_id.as_deref());
    let in_span = span.enter();
    let started = Instant::now();
    let requests: Vec<&[TValue]> = ordered.iter().map(|r| &r[..]).collect();
    let answer = batch::stack(&requests)
        .map_err(Failed::Stack)
        .and_then(|inputs| run_engine(&batch[0].shadow, inputs));
    let took = started.elapsed();
    let rows: Vec<usize> = ordered.iter().map(|r| batch::rows(r)).collect();
    let parts = answer.and_then(|outputs| batch::split(&outputs, &rows).map_err(Failed::Split));
    let Ok(parts) = parts else {
        drop(in_span);
        batch.into_iter().for_each(run_one);
        return;
    };
    let tally = Arc::clone(&batch[0].tally);
    let mut i = tally.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if i.name.is_empty() {
        i.name.clone_from(&batch[0].shadow.record.model_name);
    }
    i.calls += 1;
    i.latency_sum += took;
    i.latency_max = i.latency_max.max(took);
    for (job, theirs) in batch.iter().zip(parts) {
        i.mirrored += 1;
        compare(&mut i, &job.served, &job.outputs, &job.shadow, &theirs);
    }
}

fn run_one(job: Job) {
    let _in = crate::trace::job_span(job.request_id.as_deref()).entered();
    let started = Instant::now();
    let result = match ordered_inputs(&job) {
        Some(inputs) => run_engine(&job.shadow, inputs),
        None => Err(Failed::MissingInput),
    };
    let took = started.elapsed();
    let Job {
        shadow,
        served,
        outputs,
        tally,
        ..
    } = job;
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
    i.calls += 1;
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

impl Default for ShadowArgs {
    fn default() -> Self {
        let d = ShadowConfig::default();
        Self {
            shadow_threads: d.threads as u64,
            shadow_queue: d.queue as u64,
            shadow_queue_bytes: d.queue_bytes as u64,
            shadow_max_batch: d.max_batch as u64,
        }
    }
}

impl From<&ShadowArgs> for ShadowConfig {
    /// The shadow runner's size, as `modeld serve` was told.
    fn from(a: &ShadowArgs) -> Self {
        Self {
            threads: usize::try_from(a.shadow_threads).unwrap_or(1),
            queue: usize::try_from(a.shadow_queue).unwrap_or(1024),
            queue_bytes: usize::try_from(a.shadow_queue_bytes).unwrap_or(usize::MAX),
            max_batch: usize::try_from(a.shadow_max_batch).unwrap_or(32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serving::batch::rows;
    use tract_onnx::prelude::{Tensor, tvec};

    fn served(file: &str) -> Arc<ServedModel> {
        crate::testing::bundled(file, file, 0)
    }

    /// `rows` digits-shaped rows whose pixels depend on `seed`, so each request differs.
    fn digits(rows: usize, seed: usize) -> TVec<TValue> {
        let values: Vec<f32> = (0..rows * 64).map(|i| ((i * 7 + seed * 13) % 17) as f32).collect();
        tvec![Tensor::from_shape(&[rows, 64], &values).unwrap().into()]
    }

    fn job(shadow: &Arc<ServedModel>, served: &Arc<ServedModel>, inputs: TVec<TValue>, tally: &Arc<Tally>) -> Job {
        let outputs = served.model.engine.run(inputs.clone()).unwrap();
        Job {
            bytes: 0,
            shadow: Arc::clone(shadow),
            served: Arc::clone(served),
            inputs,
            outputs,
            tally: Arc::clone(tally),
            request_id: None,
        }
    }

    fn figures(tally: &Tally) -> (u64, u64, u64, u64, u64, f64) {
        let i = tally.inner.lock().unwrap();
        (
            i.mirrored,
            i.errors,
            i.calls,
            i.rows_compared,
            i.rows_agreed,
            i.max_abs_diff,
        )
    }

    #[test]
    fn a_batch_holds_one_shadow_one_serving_model_one_shape_and_its_row_limit() {
        let (v1, v2) = (served("digits_v1.onnx"), served("digits_v2.onnx"));
        let other_v1 = served("digits_v1.onnx");
        let tally = Arc::new(Tally::default());
        let mut queue: VecDeque<Job> = VecDeque::new();
        queue.push_back(job(&v1, &v2, digits(1, 0), &tally));
        queue.push_back(job(&other_v1, &v2, digits(1, 1), &tally)); // another load of the shadow
        queue.push_back(job(&v1, &v1, digits(1, 2), &tally)); // another serving model
        queue.push_back(job(&v1, &v2, digits(3, 3), &tally));
        queue.push_back(job(&v1, &v2, digits(2, 4), &tally)); // would make 6 rows: over 5
        queue.push_back(job(&v1, &v2, digits(1, 5), &tally));
        let batch = take_batch(&mut queue, 5);
        let rows_taken: Vec<usize> = batch.iter().map(|j| rows(&j.inputs)).collect();
        assert_eq!(
            rows_taken,
            vec![1, 3, 1],
            "same shadow and serving model, up to 5 rows, in order"
        );
        assert_eq!(queue.len(), 3, "the others stay queued in order");
        assert!(Arc::ptr_eq(&queue[0].shadow, &other_v1));
        assert!(Arc::ptr_eq(&queue[1].served, &v1));
        assert_eq!(rows(&queue[2].inputs), 2);
        // Batching off: one at a time.
        assert_eq!(take_batch(&mut queue, 1).len(), 1);
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn a_batched_call_compares_each_request_as_running_them_alone_does() {
        let (v1, v2) = (served("digits_v1.onnx"), served("digits_v2.onnx"));
        let (batched, alone) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
        let requests: Vec<TVec<TValue>> = (0..6).map(|k| digits(1 + k % 3, k)).collect();
        let total_rows: u64 = requests.iter().map(|r| rows(r) as u64).sum();
        let mut queue: VecDeque<Job> = requests.iter().map(|r| job(&v1, &v2, r.clone(), &batched)).collect();
        let batch = take_batch(&mut queue, 32);
        assert_eq!(batch.len(), 6);
        run_batch(batch);
        for r in &requests {
            run_one(job(&v1, &v2, r.clone(), &alone));
        }
        let (b, a) = (figures(&batched), figures(&alone));
        assert_eq!(
            (b.0, b.1, b.2, b.3),
            (6, 0, 1, total_rows),
            "six mirrored in one call, every row compared"
        );
        assert_eq!((a.0, a.1, a.2, a.3), (6, 0, 6, total_rows));
        assert_eq!(b.4, a.4, "the same rows agree");
        assert!(
            b.4 < total_rows,
            "two different models disagree somewhere on these inputs"
        );
        assert!(
            (b.5 - a.5).abs() < 1e-4,
            "the same largest difference: {} vs {}",
            b.5,
            a.5
        );
    }

    #[test]
    fn a_request_the_shadow_cannot_take_fails_alone_and_the_rest_of_its_batch_runs() {
        let (v1, v2) = (served("digits_v1.onnx"), served("digits_v2.onnx"));
        let tally = Arc::new(Tally::default());
        let mut bad = job(&v1, &v2, digits(2, 0), &tally);
        // Inputs of the wrong width: the batched call fails, then each request runs alone.
        bad.inputs = tvec![Tensor::zero::<f32>(&[2, 65]).unwrap().into()];
        let batch = vec![
            job(&v1, &v2, digits(1, 1), &tally),
            bad,
            job(&v1, &v2, digits(1, 2), &tally),
        ];
        run_batch(batch);
        let (mirrored, errors, calls, rows_compared, _, _) = figures(&tally);
        assert_eq!((mirrored, errors, calls, rows_compared), (3, 1, 2, 2));
    }
}
