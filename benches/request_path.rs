//! Request-path overhead: a raw engine run vs modeld's in-process path (validate + build tensors
//! from raw bytes -> executor (inline or compute pool) -> run -> encode raw outputs) on the same
//! model, for tract and, when ONNX Runtime's library is at hand (`MODELD_ONNXRUNTIME_LIB`, or
//! `scripts/onnxruntime.sh`'s download), for ONNX Runtime side by side.
//! Run with `cargo bench --bench request_path`.
//!
//! After criterion's groups it prints the per-request server overhead as the server itself
//! measures it (time in the request path minus engine compute), median over many requests.

use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modeld::model::slot::ServedModel;
use modeld::model::{EngineChoice, EngineKind, EngineSettings, load_model};
use modeld::registry::ModelRecord;
use modeld::serving::{self, Executor, ExecutorConfig, InputRef, Payload};
use tract_onnx::prelude::{TValue, Tensor, tvec};

/// The server's allocator (src/main.rs), so that the bench measures what the server runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn served(file: &str, engine: EngineKind) -> Arc<ServedModel> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
    let settings = EngineSettings {
        preferred: match engine {
            EngineKind::Tract => EngineChoice::Tract,
            EngineKind::Onnxruntime => EngineChoice::Onnxruntime,
        },
        concurrency: 2,
    };
    let model = load_model(&path, None, settings).expect("bundled model loads");
    assert_eq!(model.engine.kind(), engine, "{:?}", model.engine_note);
    let record = unregistered(file, &model);
    Arc::new(ServedModel { record, model })
}

/// A record made up for a model that is in no registry.
fn unregistered(name: &str, model: &modeld::model::LoadedModel) -> ModelRecord {
    let now = chrono::Utc::now();
    ModelRecord {
        model_id: 0,
        model_name: name.into(),
        version: String::new(),
        file_path: String::new(),
        description: String::new(),
        model_type: String::new(),
        accuracy: None,
        checksum_sha256: model.sha256.clone(),
        file_size_bytes: i64::try_from(model.size_bytes).unwrap_or(i64::MAX),
        signature: model.signature.to_json(),
        is_active: false,
        created_at: now,
        updated_at: now,
        created_by: String::new(),
        status: "registered".into(),
        rollout_percentage: 0,
        shadow_percentage: 0,
        rollback_threshold: None,
        rollback_min_samples: 1,
        rollback_window_secs: 60,
        rollback_p99_ms: None,
        is_stable: false,
        deprecated_at: None,
        min_app_version: None,
        min_app_versions: "{}".into(),
        deployment_id: 1,
    }
}

/// The engines to compare: tract, and ONNX Runtime when its library loads.
fn engines() -> Vec<EngineKind> {
    let library = std::env::var_os("MODELD_ONNXRUNTIME_LIB")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let out = std::process::Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/onnxruntime.sh"))
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().into())
        });
    match modeld::model::engine::prepare(EngineChoice::Onnxruntime, library.as_deref()) {
        Ok(what) => {
            println!("comparing tract with {what}");
            vec![EngineKind::Tract, EngineKind::Onnxruntime]
        }
        Err(why) => {
            println!("tract only: {why}");
            vec![EngineKind::Tract]
        }
    }
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
    for engine in engines() {
        let model = served(file, engine);
        for &batch in batches {
            bench_batch(c, rt, executors, file, &model, input, per_item, batch);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn bench_batch(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    executors: &[(&'static str, Executor)],
    file: &str,
    model: &Arc<ServedModel>,
    input: &str,
    per_item: &[usize],
    batch: usize,
) {
    let engine = model.model.engine.kind();
    let mut group = c.benchmark_group(format!("{file}/batch{batch}"));
    group.throughput(Throughput::Elements(batch as u64));
    let mut shape = vec![batch];
    shape.extend_from_slice(per_item);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i % 97) as f32) / 97.0).collect();
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensor = Tensor::from_shape(&shape, &values).unwrap();
    group.bench_function(BenchmarkId::new(format!("{engine}_run"), batch), |b| {
        b.iter(|| model.model.engine.run(tvec![TValue::from(tensor.clone())]).unwrap())
    });
    let shape_i64: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let inputs = [InputRef {
        name: input,
        datatype: "FP32",
        shape: &shape_i64,
        payload: Payload::Raw(&raw),
    }];
    // The pool variant only where it differs from the default (a model that runs inline).
    let compared = |name: &str| !name.ends_with("_pool") || executors[0].1.runs_inline(model, 1);
    for (name, executor) in executors.iter().filter(|(name, _)| compared(name)) {
        group.bench_function(BenchmarkId::new(format!("{engine}_{name}"), batch), |b| {
            b.to_async(rt).iter(|| {
                let model = Arc::clone(model);
                let inputs = &inputs;
                async move { serving::infer(executor, model, inputs, true, None, None).await.unwrap() }
            })
        });
    }
    group.finish();
    for (name, executor) in executors.iter().filter(|(name, _)| compared(name)) {
        let runs = if model.model.cost.as_micros() < 200 { 5000 } else { 50 };
        let mut overhead: Vec<u128> = rt.block_on(async {
            let mut all = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = std::time::Instant::now();
                let done = serving::infer(executor, Arc::clone(model), &inputs, true, None, None)
                    .await
                    .unwrap();
                all.push(t.elapsed().saturating_sub(done.timings.compute).as_nanos());
            }
            all
        });
        overhead.sort_unstable();
        println!(
            "{file}/batch{batch} {engine}_{name}: per-request server overhead (path minus engine compute), median of {runs}: {:.1} µs",
            overhead[runs / 2] as f64 / 1000.0
        );
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
    let model = served("digits_v2.onnx", EngineKind::Tract);
    let slot = modeld::model::Slot::new();
    slot.publish_active(Arc::clone(&model));
    c.bench_function("slot/load_full", |b| b.iter(|| slot.load()));
    // The routing step against what it replaced: one `load_full()` of the served model and a
    // name check (before the serving set), vs one snapshot of the set and `route::resolve`.
    let before = arc_swap::ArcSwapOption::from(Some(Arc::clone(&model)));
    let mut group = c.benchmark_group("route");
    for name in ["active", "digits_v2.onnx"] {
        group.bench_with_input(BenchmarkId::new("before", name), name, |b, name| {
            b.iter(|| {
                let m = before.load_full().unwrap();
                let hit = name == "active" || m.record.model_name == *name;
                std::hint::black_box((m, hit))
            })
        });
        group.bench_with_input(BenchmarkId::new("resolve", name), name, |b, name| {
            b.iter(|| {
                let set = slot.load().unwrap();
                std::hint::black_box(modeld::serving::route::resolve(&set, name, ""))
            })
        });
    }
    group.finish();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_v2.onnx");
    c.bench_function("model_load/digits_v2", |b| {
        b.iter(|| load_model(&path, None, EngineSettings::default()).unwrap())
    });
}

criterion_group!(benches, request_path, slot_and_load);
criterion_main!(benches);
