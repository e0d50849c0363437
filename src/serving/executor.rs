//! Where inference runs: inline on the calling thread for microsecond models, otherwise on a
//! bounded pool of compute threads fed by a bounded queue, with dynamic batching.
//!
//! Why this shape (measured, see docs/benchmarks.md):
//! - a hop to another thread costs tens of microseconds, ten times what the MLP computes, so
//!   models whose warm-up cost is under [`ExecutorConfig::inline_max`] run where the request is;
//! - everything else runs on `threads` compute threads (by default one per core), so compute
//!   never stalls the async reactor and never oversubscribes the cores;
//! - the queue in front of them holds at most `queue_capacity` requests: a full queue answers at
//!   once with a retry hint instead of growing memory and latency without bound;
//! - a request whose deadline passed or whose caller went away while it waited is dropped
//!   before it is computed;
//! - a compute thread that picks a request of a batchable model takes the other queued requests
//!   of the *same loaded model* (the same `Arc`, so never two versions) up to `max_batch_size`
//!   rows, waiting at most `max_queue_delay` for more, runs them as one call and splits the
//!   outputs back. A swap during batching is harmless: requests already holding the old model
//!   batch with each other, new ones with the new model.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tract_onnx::prelude::{TValue, TVec};

use super::batch;
use crate::config::EngineArgs;
use crate::error::{Error, Result};
use crate::model::EngineChoice;
use crate::model::slot::ServedModel;

/// How the executor runs models.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Compute threads. 0 means one per available core.
    pub threads: usize,
    /// Requests that may wait for a compute thread; more are refused with `ResourceExhausted`.
    pub queue_capacity: usize,
    /// Models whose measured cost is at most this run inline, on the request's own thread.
    /// `Duration::ZERO` sends every model to the pool.
    pub inline_max: Duration,
    /// Rows one batched call may hold; 1 turns dynamic batching off.
    pub max_batch_size: usize,
    /// How long a compute thread holding an incomplete batch waits for more requests.
    pub max_queue_delay: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            queue_capacity: 256,
            inline_max: Duration::from_micros(200),
            max_batch_size: 8,
            max_queue_delay: Duration::ZERO,
        }
    }
}

/// What running one request produced, besides its outputs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Execution {
    /// Waiting for a compute thread (zero inline).
    pub queue: Duration,
    /// The tract call that computed this request (shared by a batch), including stacking the
    /// batch and splitting it back.
    pub compute: Duration,
    /// Rows in that call.
    pub batch_rows: usize,
    /// Whether this request reports the call (exactly one request of each call does).
    pub leader: bool,
}

impl Execution {
    /// A call that computed one request alone.
    fn alone(queue: Duration, compute: Duration, rows: usize) -> Self {
        Self {
            queue,
            compute,
            batch_rows: rows,
            leader: true,
        }
    }
}

type Reply = oneshot::Sender<Result<(TVec<TValue>, Execution)>>;

struct Job {
    model: Arc<ServedModel>,
    inputs: TVec<TValue>,
    rows: usize,
    deadline: Option<Instant>,
    enqueued: Instant,
    reply: Reply,
    /// The request's id: the job computes in its span ([`crate::trace::job_span`]), so that
    /// lines logged on the compute thread name the request.
    request_id: Option<String>,
}

impl Job {
    /// A job nobody should compute: its caller left, or its deadline passed.
    fn is_stale(&self, now: Instant) -> bool {
        if self.reply.is_closed() {
            return true;
        }
        if self.deadline.is_some_and(|d| d <= now) {
            return true;
        }
        false
    }

    /// Answers a stale job (a caller that left simply does not read it).
    fn expire(self) {
        let waited = self.enqueued.elapsed();
        let _ = self.reply.send(Err(Error::DeadlineExceeded(format!(
            "deadline passed after {} µs in the queue; not computed",
            waited.as_micros()
        ))));
    }
}

struct State {
    queue: VecDeque<Job>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    config: ExecutorConfig,
    threads: usize,
    /// Compute threads running a model right now.
    busy: AtomicUsize,
    /// Batched calls that failed, whose requests were then run one by one.
    failed_batches: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking job cannot leave the queue half-updated: every mutation is one call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The compute threads and their queue. Dropping it stops the threads after their current call;
/// requests still queued are answered `Unavailable`.
pub struct Executor {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.shared.config)
            .field("threads", &self.shared.threads)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Starts the compute threads.
    ///
    /// # Errors
    /// `Internal` when the operating system refuses a thread.
    pub fn start(config: ExecutorConfig) -> Result<Self> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            n => n,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(config.queue_capacity),
                shutdown: false,
            }),
            work: Condvar::new(),
            config,
            threads,
            busy: AtomicUsize::new(0),
            failed_batches: AtomicU64::new(0),
        });
        let handles = (0..threads)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("modeld-infer-{i}"))
                    .spawn(move || worker(&shared))
                    .map_err(|e| Error::internal(format!("cannot start compute thread: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { shared, handles })
    }

    /// The configuration, with `threads` resolved.
    pub fn config(&self) -> ExecutorConfig {
        ExecutorConfig {
            threads: self.shared.threads,
            ..self.shared.config.clone()
        }
    }

    /// Requests waiting for a compute thread right now.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Compute threads running a model right now.
    pub fn busy(&self) -> usize {
        self.shared.busy.load(Ordering::Relaxed)
    }

    /// Batched calls that failed since start, whose requests were then run one by one.
    pub fn failed_batches(&self) -> u64 {
        self.shared.failed_batches.load(Ordering::Relaxed)
    }

    /// Whether a request of `rows` samples on `model` runs inline rather than on the pool:
    /// when the model's one-row cost times the rows is within `inline_max` (a big batch of a
    /// cheap model would otherwise hold the runtime's thread for as long as it computes).
    pub fn runs_inline(&self, model: &ServedModel, rows: usize) -> bool {
        let rows = u32::try_from(rows.max(1)).unwrap_or(u32::MAX);
        model.model.cost.saturating_mul(rows) <= self.shared.config.inline_max
    }

    /// Runs `inputs` (`rows` samples) on `model`: inline when the model is cheap, otherwise
    /// through the queue. Not computed at all when `deadline` passes first.
    ///
    /// # Errors
    /// `ResourceExhausted` when the queue is full, `DeadlineExceeded` when the deadline passed
    /// before compute started, `Internal` when tract fails, `Unavailable` at shutdown.
    pub async fn run(
        &self,
        model: Arc<ServedModel>,
        inputs: TVec<TValue>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<(TVec<TValue>, Execution)> {
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Error::DeadlineExceeded(
                "deadline passed before compute; not computed".into(),
            ));
        }
        if self.runs_inline(&model, rows) {
            let t = Instant::now();
            let outputs = run_engine(&model, inputs)?;
            return Ok((outputs, Execution::alone(Duration::ZERO, t.elapsed(), rows)));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut state = self.shared.lock();
            if state.shutdown {
                return Err(Error::Unavailable("server is shutting down".into()));
            }
            if state.queue.len() >= self.shared.config.queue_capacity {
                let waiting = state.queue.len();
                drop(state);
                return Err(self.exhausted(&model, waiting));
            }
            state.queue.push_back(Job {
                model,
                inputs,
                rows,
                deadline,
                enqueued: Instant::now(),
                reply,
                request_id: crate::trace::current_request_id(),
            });
        }
        // Every thread may be waiting to fill a batch for a different model: wake them all.
        self.shared.work.notify_all();
        answer
            .await
            .map_err(|_| Error::Unavailable("server is shutting down".into()))?
    }

    /// The refusal for a full queue, with a hint of when to retry: how long the pool needs to
    /// work through what is waiting.
    fn exhausted(&self, model: &ServedModel, waiting: usize) -> Error {
        let per_thread = u32::try_from(waiting.div_ceil(self.shared.threads)).unwrap_or(u32::MAX);
        let retry_after = model
            .model
            .cost
            .saturating_mul(per_thread)
            .clamp(Duration::from_millis(1), Duration::from_secs(10));
        Error::ResourceExhausted {
            message: format!(
                "inference queue is full ({waiting} requests waiting for {} compute threads); retry after {} ms",
                self.shared.threads,
                retry_after.as_millis()
            ),
            retry_after,
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        let stranded = {
            let mut state = self.shared.lock();
            state.shutdown = true;
            std::mem::take(&mut state.queue)
        };
        self.shared.work.notify_all();
        for job in stranded {
            let _ = job
                .reply
                .send(Err(Error::Unavailable("server is shutting down".into())));
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

fn run_engine(model: &ServedModel, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
    // The engine contains its own panics (engine.rs): one request fails, not a thread.
    model.model.engine.run(inputs).map_err(|e| {
        // Here, on the thread that computed it (in the request's span); the caller logs the
        // request's error.
        tracing::debug!(model = %model.record.model_name, error = %e, "the engine failed on a request");
        Error::internal_from(
            format_args!("model {:?} failed on validated inputs", model.record.model_name),
            e,
        )
    })
}

fn worker(shared: &Shared) {
    loop {
        let Some(batch) = next_batch(shared) else { return };
        shared.busy.fetch_add(1, Ordering::Relaxed);
        execute(shared, batch);
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits for work and takes it: one job, plus the queued jobs it can batch with.
/// `None` at shutdown.
fn next_batch(shared: &Shared) -> Option<Vec<Job>> {
    let config = &shared.config;
    let mut state = shared.lock();
    let first = loop {
        if state.shutdown {
            return None;
        }
        match state.queue.pop_front() {
            Some(job) if job.is_stale(Instant::now()) => job.expire(),
            Some(job) => break job,
            None => state = shared.work.wait(state).unwrap_or_else(PoisonError::into_inner),
        }
    };
    let mut batch = vec![first];
    if !batch[0].model.model.batchable || config.max_batch_size <= 1 || batch[0].rows == 0 {
        return Some(batch);
    }
    let mut rows = batch[0].rows;
    let wait_until = batch[0].enqueued + config.max_queue_delay;
    loop {
        take_batchable(&mut state.queue, &mut batch, &mut rows, config.max_batch_size);
        let now = Instant::now();
        if rows >= config.max_batch_size || now >= wait_until || state.shutdown {
            return Some(batch);
        }
        state = shared
            .work
            .wait_timeout(state, wait_until - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Moves the queued jobs that can join `batch` (same loaded model, same trailing shapes, room
/// left) out of the queue, in arrival order.
fn take_batchable(queue: &mut VecDeque<Job>, batch: &mut Vec<Job>, rows: &mut usize, max_rows: usize) {
    let mut i = 0;
    while i < queue.len() && *rows < max_rows {
        let job = &queue[i];
        let fits = Arc::ptr_eq(&job.model, &batch[0].model)
            && job.rows > 0
            && *rows + job.rows <= max_rows
            && batch::same_trailing_shapes(&job.inputs, &batch[0].inputs);
        if fits && let Some(job) = queue.remove(i) {
            *rows += job.rows;
            batch.push(job);
        } else {
            i += 1;
        }
    }
}

/// Runs a batch and answers every job in it.
fn execute(shared: &Shared, batch: Vec<Job>) {
    let started = Instant::now();
    let (live, stale): (Vec<Job>, Vec<Job>) = batch.into_iter().partition(|j| !j.is_stale(started));
    stale.into_iter().for_each(Job::expire);
    match live.len() {
        0 => {}
        1 => {
            let Some(job) = live.into_iter().next() else { return };
            let queue = started - job.enqueued;
            let _in = crate::trace::job_span(job.request_id.as_deref()).entered();
            let t = Instant::now();
            let result = run_engine(&job.model, job.inputs)
                .map(|outputs| (outputs, Execution::alone(queue, t.elapsed(), job.rows)));
            let _ = job.reply.send(result);
        }
        _ => execute_batched(shared, live, started),
    }
}

/// Stacks the jobs' inputs, runs once, splits the outputs by rows. If the batched call fails,
/// each job is run alone so that one request's failure is not every request's.
fn execute_batched(shared: &Shared, jobs: Vec<Job>, started: Instant) {
    // A batch computes in its first request's span; run alone, each in its own.
    let span = crate::trace::job_span(jobs[0].request_id.as_deref());
    let _in = span.enter();
    let t = Instant::now();
    let rows: usize = jobs.iter().map(|j| j.rows).sum();
    let model = Arc::clone(&jobs[0].model);
    let requests: Vec<&[TValue]> = jobs.iter().map(|j| &j.inputs[..]).collect();
    let split = batch::stack(&requests)
        .map_err(|e| Error::internal(format!("cannot stack a batch: {e:#}")))
        .and_then(|inputs| run_engine(&model, inputs))
        .and_then(|outputs| {
            let rows: Vec<usize> = jobs.iter().map(|j| j.rows).collect();
            batch::split(&outputs, &rows).map_err(|e| Error::internal(format!("cannot split a batch: {e:#}")))
        });
    let compute = t.elapsed();
    match split {
        Ok(per_job) => {
            for (i, (job, outputs)) in jobs.into_iter().zip(per_job).enumerate() {
                let execution = Execution {
                    queue: started - job.enqueued,
                    compute,
                    batch_rows: rows,
                    leader: i == 0,
                };
                let _ = job.reply.send(Ok((outputs, execution)));
            }
        }
        Err(e) => {
            shared.failed_batches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(model = %model.record.model_name, error = %e, rows, requests = jobs.len(), "batched call failed; running its requests one by one");
            drop(_in);
            for job in jobs {
                execute(shared, vec![job]);
            }
        }
    }
}

impl Default for EngineArgs {
    fn default() -> Self {
        let e = ExecutorConfig::default();
        Self {
            runtime_threads: 1,
            inference_threads: e.threads,
            queue_capacity: e.queue_capacity as u64,
            inline_max_us: e.inline_max.as_micros() as u64,
            max_batch_size: e.max_batch_size as u64,
            max_queue_delay_us: e.max_queue_delay.as_micros() as u64,
            no_batching: false,
            engine: EngineChoice::Auto,
            onnxruntime_lib: None,
        }
    }
}

impl From<&EngineArgs> for ExecutorConfig {
    /// The executor's configuration, as `modeld serve` was told.
    fn from(a: &EngineArgs) -> Self {
        Self {
            threads: a.inference_threads,
            queue_capacity: usize::try_from(a.queue_capacity).unwrap_or(usize::MAX),
            inline_max: Duration::from_micros(a.inline_max_us),
            max_batch_size: if a.no_batching {
                1
            } else {
                usize::try_from(a.max_batch_size).unwrap_or(usize::MAX)
            },
            max_queue_delay: Duration::from_micros(a.max_queue_delay_us),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::prelude::{Tensor, tvec};

    fn served(file: &str) -> Arc<ServedModel> {
        crate::testing::bundled(file, file, 0)
    }

    fn cnn_input(batch: usize) -> TVec<TValue> {
        tvec![Tensor::zero::<f32>(&[batch, 3, 224, 224]).unwrap().into()]
    }

    fn pool(threads: usize, queue_capacity: usize) -> Executor {
        Executor::start(ExecutorConfig {
            threads,
            queue_capacity,
            inline_max: Duration::ZERO,
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
        })
        .unwrap()
    }

    /// Waits (with a deadline) until a compute thread is running something.
    fn wait_busy(e: &Executor) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while e.busy() == 0 {
            assert!(Instant::now() < deadline, "nothing started computing");
            std::thread::yield_now();
        }
    }

    #[test]
    fn threads_default_to_the_cores() {
        let e = Executor::start(ExecutorConfig::default()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(e.config().threads, cores);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_that_passes_in_the_queue_is_answered_without_compute() {
        let e = Arc::new(pool(1, 8));
        let cnn = served("cnn.onnx");
        let busy = {
            let (e, cnn) = (Arc::clone(&e), Arc::clone(&cnn));
            tokio::spawn(async move { e.run(cnn, cnn_input(16), 16, None).await })
        };
        wait_busy(&e);
        let late = e
            .run(
                Arc::clone(&cnn),
                cnn_input(1),
                1,
                Some(Instant::now() + Duration::from_millis(1)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&late, Error::DeadlineExceeded(m) if m.contains("in the queue; not computed")),
            "{late:?}"
        );
        assert!(busy.await.unwrap().is_ok());
        // Already past: refused before it is queued, inline models too.
        let mlp = served("digits_v2.onnx");
        let inline = Executor::start(ExecutorConfig::default()).unwrap();
        assert!(inline.runs_inline(&mlp, 1));
        // A big batch of a cheap model costs its rows: it goes to the pool, off the runtime.
        assert!(!inline.runs_inline(&mlp, 250_000));
        assert!(!inline.runs_inline(&mlp, usize::MAX));
        let input = tvec![Tensor::zero::<f32>(&[1, 64]).unwrap().into()];
        let past = inline.run(mlp, input, 1, Some(Instant::now())).await.unwrap_err();
        assert!(matches!(past, Error::DeadlineExceeded(_)), "{past:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_refuses_at_once_and_shutdown_answers_the_queued() {
        let e = Arc::new(pool(1, 1));
        let cnn = served("cnn.onnx");
        let busy = {
            let (e, cnn) = (Arc::clone(&e), Arc::clone(&cnn));
            tokio::spawn(async move { e.run(cnn, cnn_input(16), 16, None).await })
        };
        wait_busy(&e);
        let queued = {
            let (e, cnn) = (Arc::clone(&e), Arc::clone(&cnn));
            tokio::spawn(async move { e.run(cnn, cnn_input(1), 1, None).await })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while e.queued() == 0 {
            assert!(Instant::now() < deadline, "the second request never queued");
            tokio::task::yield_now().await;
        }
        let refused = e.run(Arc::clone(&cnn), cnn_input(1), 1, None).await.unwrap_err();
        match refused {
            Error::ResourceExhausted { message, retry_after } => {
                assert!(
                    message.contains("queue is full (1 requests waiting for 1 compute threads)"),
                    "{message}"
                );
                assert!(retry_after >= Duration::from_millis(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(busy.await.unwrap().is_ok());
        assert!(queued.await.unwrap().is_ok());
        // Dropping the executor joins its threads (no tract state cached per thread to trip over).
        let e = Arc::try_unwrap(e).unwrap();
        drop(e);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_hold_one_model_and_split_back_by_rows() {
        let e = Executor::start(ExecutorConfig {
            threads: 1,
            queue_capacity: 64,
            inline_max: Duration::ZERO,
            max_batch_size: 8,
            max_queue_delay: Duration::from_millis(200),
        })
        .unwrap();
        let mlp = served("digits_v2.onnx");
        assert!(mlp.model.batchable);
        let input = |rows: usize, v: f32| tvec![Tensor::from_shape(&[rows, 64], &vec![v; rows * 64]).unwrap().into()];
        let alone: Vec<TVec<TValue>> = {
            let mut out = Vec::new();
            for (rows, v) in [(1, 0.1), (3, 0.5), (2, 0.9)] {
                out.push(e.run(Arc::clone(&mlp), input(rows, v), rows, None).await.unwrap().0);
            }
            out
        };
        let (a, b, c) = tokio::join!(
            e.run(Arc::clone(&mlp), input(1, 0.1), 1, None),
            e.run(Arc::clone(&mlp), input(3, 0.5), 3, None),
            e.run(Arc::clone(&mlp), input(2, 0.9), 2, None),
        );
        for (got, want) in [a, b, c].into_iter().zip(alone) {
            let (got, execution) = got.unwrap();
            assert_eq!(execution.batch_rows, 6, "the three requests ran as one call");
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.shape(), w.shape());
                let f32s = |t: &TValue| {
                    t.try_as_plain_ram()
                        .and_then(|v| v.as_slice::<f32>().map(<[f32]>::to_vec))
                };
                match (f32s(g), f32s(w)) {
                    (Ok(g), Ok(w)) => {
                        for (x, y) in g.iter().zip(w) {
                            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
                        }
                    }
                    _ => assert_eq!(g, w),
                }
            }
        }
    }
}
