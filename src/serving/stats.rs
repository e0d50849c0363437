//! Per-model inference statistics, as Triton reports them (ModelStatistics): success and
//! failure counts and the cumulative time spent queueing, decoding inputs, computing and
//! encoding outputs. The same [`Timings`] that feed the span feed these.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use super::Timings;
use super::route::Role;
use crate::error::Error;
use crate::model::EngineKind;
use crate::registry::ModelRecord;

/// A count and a cumulative duration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// How many.
    pub count: u64,
    /// Total nanoseconds.
    pub ns: u64,
}

impl Tally {
    fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns = self.ns.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.ns = self.ns.saturating_add(other.ns);
    }
}

/// Upper bounds of the latency histograms' buckets, in seconds (and `+Inf`).
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the batch-size histogram's buckets, in rows (and `+Inf`).
pub const BATCH_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// A histogram over fixed buckets: per-bucket counts (not cumulative; the last is `+Inf`),
/// their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Observations per bucket; one more than the bounds (the last: above every bound).
    pub counts: Vec<u64>,
    /// The sum of the observations.
    pub sum: f64,
    /// How many.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: usize) -> Self {
        Self {
            counts: vec![0; bounds + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }

    /// The cumulative counts, bucket by bucket (what Prometheus' `le` series hold).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }
}

/// A model's requests in one role, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Answered.
    pub success: u64,
    /// Failed in validation or the engine (not counting the two below).
    pub failure: u64,
    /// Refused because the queue was full.
    pub rejected: u64,
    /// Not computed because their deadline passed first.
    pub expired: u64,
}

impl Outcomes {
    fn merge(&mut self, o: Outcomes) {
        self.success += o.success;
        self.failure += o.failure;
        self.rejected += o.rejected;
        self.expired += o.expired;
    }

    /// Every request.
    pub fn total(&self) -> u64 {
        self.success + self.failure + self.rejected + self.expired
    }
}

/// The latency histograms of a model's successful requests in one role.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleLatency {
    /// Waiting for a compute thread.
    pub queue: Histogram,
    /// The engine's run (shared by a batch).
    pub compute: Histogram,
    /// The whole request in the server.
    pub total: Histogram,
}

impl Default for RoleLatency {
    fn default() -> Self {
        let h = || Histogram::new(LATENCY_BUCKETS.len());
        Self {
            queue: h(),
            compute: h(),
            total: h(),
        }
    }
}

/// One model's statistics since the server started.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelStats {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Successful requests, with their whole time in the server.
    pub success: Tally,
    /// Failed requests (for a resolved model), with their time.
    pub fail: Tally,
    /// Waiting for a compute thread.
    pub queue: Tally,
    /// Validating and building inputs.
    pub compute_input: Tally,
    /// The engine's run.
    pub compute_infer: Tally,
    /// Encoding outputs.
    pub compute_output: Tally,
    /// Inferences (samples: a batch of 8 counts 8).
    pub inference_count: u64,
    /// Model executions.
    pub execution_count: u64,
    /// Milliseconds since the epoch of the last inference.
    pub last_inference_ms: u64,
    /// Executions by batch size (rows per engine call).
    pub batches: BTreeMap<u64, BatchTally>,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Requests not computed because their deadline passed first.
    pub expired: u64,
    /// The engine that computed the last inference ("" before the first).
    pub engine: &'static str,
    /// Latency histograms of successful requests, by role (`active`, `canary`, `candidate`).
    pub latency: BTreeMap<&'static str, RoleLatency>,
    /// Every request by role and outcome (what the error rate per model and role is read from).
    pub outcomes: BTreeMap<&'static str, Outcomes>,
    /// Rows per engine call.
    pub batch_sizes: Histogram,
}

impl Default for ModelStats {
    fn default() -> Self {
        Self {
            name: String::new(),
            version: String::new(),
            success: Tally::default(),
            fail: Tally::default(),
            queue: Tally::default(),
            compute_input: Tally::default(),
            compute_infer: Tally::default(),
            compute_output: Tally::default(),
            inference_count: 0,
            execution_count: 0,
            last_inference_ms: 0,
            batches: BTreeMap::new(),
            rejected: 0,
            expired: 0,
            engine: "",
            latency: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            batch_sizes: Histogram::new(BATCH_BUCKETS.len()),
        }
    }
}

impl ModelStats {
    /// Per-request server overhead: time in the server minus engine compute, summed over
    /// successful requests (divide by `success.count` for the mean).
    pub fn overhead_ns(&self) -> u64 {
        self.success.ns.saturating_sub(self.compute_infer.ns)
    }
}

/// Executions of one batch size and their cumulative times, as Triton's InferBatchStatistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchTally {
    /// Input preparation of the requests of these executions.
    pub compute_input: Tally,
    /// Engine calls.
    pub compute_infer: Tally,
    /// Output encoding.
    pub compute_output: Tally,
}

/// Fixed buckets counted in place: a model's live histograms hold no allocation of their own,
/// so that recording a request touches one block of memory.
#[derive(Debug, Clone, Copy)]
struct Buckets<const N: usize> {
    counts: [u64; N],
    sum: f64,
    count: u64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Self {
            counts: [0; N],
            sum: 0.0,
            count: 0,
        }
    }
}

impl<const N: usize> Buckets<N> {
    /// Counts `v` in the first bucket whose bound holds it (`bounds` has `N - 1` entries).
    fn observe(&mut self, bounds: &[f64], v: f64) {
        let i = bounds.partition_point(|b| *b < v).min(N - 1);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    fn histogram(&self) -> Histogram {
        Histogram {
            counts: self.counts.to_vec(),
            sum: self.sum,
            count: self.count,
        }
    }
}

type LatencyBuckets = Buckets<{ LATENCY_BUCKETS.len() + 1 }>;

/// The three latency histograms of one role, live.
#[derive(Debug, Clone, Copy, Default)]
struct LiveLatency {
    queue: LatencyBuckets,
    compute: LatencyBuckets,
    total: LatencyBuckets,
}

/// Every role, in the order of their slots.
const ROLES: [Role; 3] = [Role::Active, Role::Canary, Role::Candidate];

/// A role's slot in the live arrays.
fn slot(role: Role) -> usize {
    match role {
        Role::Active => 0,
        Role::Canary => 1,
        Role::Candidate => 2,
    }
}

/// One model's statistics as they are counted: roles by slot and histograms in place, read out
/// as a [`ModelStats`] only when someone asks.
#[derive(Debug)]
struct Live {
    name: String,
    version: String,
    success: Tally,
    fail: Tally,
    queue: Tally,
    compute_input: Tally,
    compute_infer: Tally,
    compute_output: Tally,
    inference_count: u64,
    execution_count: u64,
    last_inference_ms: u64,
    rejected: u64,
    expired: u64,
    engine: &'static str,
    latency: [LiveLatency; 3],
    outcomes: [Outcomes; 3],
    batch_sizes: Buckets<{ BATCH_BUCKETS.len() + 1 }>,
    batches: BTreeMap<u64, BatchTally>,
}

impl Live {
    fn new(model: &ModelRecord) -> Self {
        Self {
            name: model.model_name.clone(),
            version: model.version.clone(),
            success: Tally::default(),
            fail: Tally::default(),
            queue: Tally::default(),
            compute_input: Tally::default(),
            compute_infer: Tally::default(),
            compute_output: Tally::default(),
            inference_count: 0,
            execution_count: 0,
            last_inference_ms: 0,
            rejected: 0,
            expired: 0,
            engine: "",
            latency: [LiveLatency::default(); 3],
            outcomes: [Outcomes::default(); 3],
            batch_sizes: Buckets::default(),
            batches: BTreeMap::new(),
        }
    }

    /// As the statistics report it: a role appears once it has a request (its latency once it
    /// has a success).
    fn stats(&self) -> ModelStats {
        let mut latency = BTreeMap::new();
        let mut outcomes = BTreeMap::new();
        for role in ROLES {
            let (o, l) = (self.outcomes[slot(role)], &self.latency[slot(role)]);
            if o.total() > 0 {
                outcomes.insert(role.name(), o);
            }
            if o.success > 0 {
                latency.insert(
                    role.name(),
                    RoleLatency {
                        queue: l.queue.histogram(),
                        compute: l.compute.histogram(),
                        total: l.total.histogram(),
                    },
                );
            }
        }
        ModelStats {
            name: self.name.clone(),
            version: self.version.clone(),
            success: self.success,
            fail: self.fail,
            queue: self.queue,
            compute_input: self.compute_input,
            compute_infer: self.compute_infer,
            compute_output: self.compute_output,
            inference_count: self.inference_count,
            execution_count: self.execution_count,
            last_inference_ms: self.last_inference_ms,
            batches: self.batches.clone(),
            rejected: self.rejected,
            expired: self.expired,
            engine: self.engine,
            latency,
            outcomes,
            batch_sizes: self.batch_sizes.histogram(),
        }
    }
}

/// All models' statistics, keyed by registry model id (no allocation per request).
#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<HashMap<i64, Box<Live>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Stats {
    fn with(&self, model: &ModelRecord, f: impl FnOnce(&mut Live)) {
        // Plain counters: a panic elsewhere cannot leave them in a state worth refusing.
        let mut models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = models
            .entry(model.model_id)
            .or_insert_with(|| Box::new(Live::new(model)));
        // UpdateModel can relabel a model: report under its current name and version.
        if entry.version != model.version || entry.name != model.model_name {
            entry.name.clone_from(&model.model_name);
            entry.version.clone_from(&model.version);
        }
        f(entry);
    }

    /// Records a successful request computed by `engine` for `role`; its execution too when it
    /// leads one.
    pub fn success(&self, model: &ModelRecord, role: Role, engine: EngineKind, t: &Timings, total: Duration) {
        self.with(model, |s| {
            let l = &mut s.latency[slot(role)];
            l.queue.observe(&LATENCY_BUCKETS, t.queue.as_secs_f64());
            l.compute.observe(&LATENCY_BUCKETS, t.compute.as_secs_f64());
            l.total.observe(&LATENCY_BUCKETS, total.as_secs_f64());
            s.outcomes[slot(role)].success += 1;
            s.engine = engine.name();
            s.success.add(total);
            s.queue.add(t.queue);
            s.compute_input.add(t.decode);
            s.compute_infer.add(t.compute);
            s.compute_output.add(t.encode);
            s.inference_count += t.rows as u64;
            if t.leader {
                s.execution_count += 1;
                s.batch_sizes.observe(&BATCH_BUCKETS, t.batch_rows as f64);
                let b = s.batches.entry(t.batch_rows as u64).or_default();
                b.compute_input.add(t.decode);
                b.compute_infer.add(t.compute);
                b.compute_output.add(t.encode);
            }
            s.last_inference_ms = now_ms();
        });
    }

    /// Records a failed request for `role` and why it failed.
    pub fn failure(&self, model: &ModelRecord, role: Role, error: &Error, total: Duration) {
        self.with(model, |s| {
            s.fail.add(total);
            let o = &mut s.outcomes[slot(role)];
            match error {
                Error::ResourceExhausted { .. } => {
                    s.rejected += 1;
                    o.rejected += 1;
                }
                Error::DeadlineExceeded(_) => {
                    s.expired += 1;
                    o.expired += 1;
                }
                _ => o.failure += 1,
            }
            s.last_inference_ms = now_ms();
        });
    }

    /// Every model's statistics, merged by name and version.
    pub fn snapshot(&self) -> Vec<ModelStats> {
        let models = self.models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut merged: Vec<ModelStats> = Vec::new();
        for s in models.values().map(|l| l.stats()) {
            match merged.iter_mut().find(|m| m.name == s.name && m.version == s.version) {
                Some(m) => {
                    for (a, b) in [
                        (&mut m.success, s.success),
                        (&mut m.fail, s.fail),
                        (&mut m.queue, s.queue),
                        (&mut m.compute_input, s.compute_input),
                        (&mut m.compute_infer, s.compute_infer),
                        (&mut m.compute_output, s.compute_output),
                    ] {
                        a.merge(b);
                    }
                    m.inference_count += s.inference_count;
                    m.execution_count += s.execution_count;
                    m.rejected += s.rejected;
                    m.expired += s.expired;
                    for (size, b) in &s.batches {
                        let into = m.batches.entry(*size).or_default();
                        for (a, b) in [
                            (&mut into.compute_input, b.compute_input),
                            (&mut into.compute_infer, b.compute_infer),
                            (&mut into.compute_output, b.compute_output),
                        ] {
                            a.merge(b);
                        }
                    }
                    m.last_inference_ms = m.last_inference_ms.max(s.last_inference_ms);
                    for (role, l) in &s.latency {
                        let into = m.latency.entry(role).or_default();
                        into.queue.merge(&l.queue);
                        into.compute.merge(&l.compute);
                        into.total.merge(&l.total);
                    }
                    for (role, o) in &s.outcomes {
                        m.outcomes.entry(role).or_default().merge(*o);
                    }
                    m.batch_sizes.merge(&s.batch_sizes);
                }
                None => merged.push(s),
            }
        }
        merged.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_counts_in_the_first_bucket_whose_bound_holds_it() {
        let mut b = Buckets::<4>::default();
        let bounds = [1.0, 2.0, 4.0];
        for v in [0.5, 1.0, 1.5, 2.0, 4.0, 4.5, 100.0] {
            b.observe(&bounds, v);
        }
        // `le` buckets: a value on a bound is in that bound's bucket; above every bound, +Inf.
        assert_eq!(b.counts, [2, 2, 1, 2]);
        assert_eq!(b.count, 7);
        assert_eq!(b.sum, 0.5 + 1.0 + 1.5 + 2.0 + 4.0 + 4.5 + 100.0);
        assert_eq!(b.histogram().cumulative(), vec![2, 4, 5, 7]);
    }

    fn record(id: i64, name: &str) -> ModelRecord {
        let mut r = crate::testing::bundled("digits_v1.onnx", name, id).record.clone();
        r.version = "1".into();
        r
    }

    #[test]
    fn roles_appear_once_they_have_requests_and_models_merge_by_name_and_version() {
        let stats = Stats::default();
        let t = Timings {
            decode: Duration::from_micros(1),
            queue: Duration::ZERO,
            compute: Duration::from_micros(3),
            encode: Duration::from_micros(1),
            batch_rows: 2,
            leader: true,
            rows: 2,
        };
        let (a, b) = (record(1, "m"), record(2, "m"));
        stats.success(&a, Role::Active, EngineKind::Tract, &t, Duration::from_micros(10));
        stats.success(&b, Role::Active, EngineKind::Tract, &t, Duration::from_micros(20));
        let e = Error::ResourceExhausted {
            message: "full".into(),
            retry_after: Duration::from_secs(1),
        };
        stats.failure(&a, Role::Canary, &e, Duration::from_micros(5));
        let all = stats.snapshot();
        assert_eq!(all.len(), 1, "one name and version: {all:?}");
        let m = &all[0];
        assert_eq!((m.success.count, m.success.ns), (2, 30_000));
        assert_eq!(
            (m.fail.count, m.rejected, m.inference_count, m.execution_count),
            (1, 1, 4, 2)
        );
        assert_eq!(m.outcomes.keys().copied().collect::<Vec<_>>(), ["active", "canary"]);
        assert_eq!(m.outcomes["canary"].rejected, 1);
        // The canary has no success, so no latency.
        assert_eq!(m.latency.keys().copied().collect::<Vec<_>>(), ["active"]);
        assert_eq!(m.latency["active"].total.count, 2);
        assert_eq!(m.batches[&2].compute_infer.count, 2);
        assert_eq!(m.batch_sizes.cumulative()[1], 2, "two executions of 2 rows");
        assert_eq!(m.engine, "tract");
    }
}
