//! Request-path overhead: raw tract run vs modeld's in-process path (validate + build tensors
//! from raw bytes -> executor (inline or compute pool) -> run -> encode raw outputs) on the same
//! plan. Run with `cargo bench --bench request_path`.
//!
//! After criterion's groups it prints the per-request server overhead as the server itself
//! measures it (time in the request path minus tract compute), median over many requests.

use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modeld::model::load_model;
use modeld::model::slot::ServedModel;
use modeld::serving::{self, Executor, ExecutorConfig, InputRef, Payload};
use tract_onnx::prelude::{TValue, Tensor, tvec};

/// The server's allocator (src/main.rs), so that the bench measures what the server runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn served(file: &str) -> Arc<ServedModel> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
    Arc::new(ServedModel::unregistered(
        file,
        load_model(&path, None).expect("bundled model loads"),
    ))
}

/// The two executors compared: the server's defaults (the MLP runs inline, the CNN on the
/// compute threads) and every model on the compute threads.
fn executors() -> [(&'static str, Executor); 2] {
    let pool = ExecutorConfig {
        inline_max: std::time::Duration::ZERO,
        ..ExecutorConfig::default()
    };
    [
        (
            "modeld_request_path",
            Executor::start(ExecutorConfig::default()).unwrap(),
        ),
        ("modeld_request_path_pool", Executor::start(pool).unwrap()),
    ]
}

fn bench_model(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    executors: &[(&'static str, Executor)],
    file: &str,
    input: &str,
    per_item: &[usize],
    batches: &[usize],
) {
    let model = served(file);
    for &batch in batches {
        let mut group = c.benchmark_group(format!("{file}/batch{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        let mut shape = vec![batch];
        shape.extend_from_slice(per_item);
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i % 97) as f32) / 97.0).collect();
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensor = Tensor::from_shape(&shape, &values).unwrap();
        let plan = model.model.plan.clone();
        group.bench_function(BenchmarkId::new("tract_run", batch), |b| {
            b.iter(|| plan.run(tvec![TValue::from(tensor.clone())]).unwrap())
        });
        let shape_i64: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let inputs = [InputRef {
            name: input,
            datatype: "FP32",
            shape: &shape_i64,
            payload: Payload::Raw(&raw),
        }];
        for (name, executor) in executors {
            if name.ends_with("_pool") && !executors[0].1.runs_inline(&model) {
                continue; // the same path as the default for a model that is not inline
            }
            group.bench_function(BenchmarkId::new(*name, batch), |b| {
                b.to_async(rt).iter(|| {
                    let model = Arc::clone(&model);
                    let inputs = &inputs;
                    async move { serving::infer(executor, model, inputs, true, None).await.unwrap() }
                })
            });
        }
        group.finish();
        for (name, executor) in executors {
            if name.ends_with("_pool") && !executors[0].1.runs_inline(&model) {
                continue;
            }
            let runs = if model.model.cost.as_micros() < 200 { 5000 } else { 50 };
            let mut overhead: Vec<u128> = rt.block_on(async {
                let mut all = Vec::with_capacity(runs);
                for _ in 0..runs {
                    let t = std::time::Instant::now();
                    let done = serving::infer(executor, Arc::clone(&model), &inputs, true, None)
                        .await
                        .unwrap();
                    all.push(t.elapsed().saturating_sub(done.timings.compute).as_nanos());
                }
                all
            });
            overhead.sort_unstable();
            println!(
                "{file}/batch{batch} {name}: per-request server overhead (path minus tract compute), median of {runs}: {:.1} µs",
                overhead[runs / 2] as f64 / 1000.0
            );
        }
    }
}

fn request_path(c: &mut Criterion) {
    // As the server runs by default: one current_thread runtime plus the compute threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let executors = executors();
    bench_model(c, &rt, &executors, "digits_v2.onnx", "input", &[64], &[1, 8]);
    bench_model(c, &rt, &executors, "cnn.onnx", "image", &[3, 224, 224], &[1, 8]);
}

fn slot_and_load(c: &mut Criterion) {
    let slot = modeld::model::Slot::new();
    slot.publish(served("digits_v2.onnx"));
    c.bench_function("slot/load_full", |b| b.iter(|| slot.load()));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_v2.onnx");
    c.bench_function("model_load/digits_v2", |b| b.iter(|| load_model(&path, None).unwrap()));
}

criterion_group!(benches, request_path, slot_and_load);
criterion_main!(benches);
