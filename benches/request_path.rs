//! Request-path overhead: raw tract run vs modeld's in-process path (validate + build tensors
//! from raw bytes -> blocking thread -> run -> encode raw outputs) on the same plan.
//! Run with `cargo bench --bench request_path`.

use std::path::Path;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modeld::model::load_model;
use modeld::model::slot::ServedModel;
use modeld::serving::{self, InputRef, Payload};
use tract_onnx::prelude::{TValue, Tensor, tvec};

fn served(file: &str) -> Arc<ServedModel> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(file);
    Arc::new(ServedModel::unregistered(
        file,
        load_model(&path, None).expect("bundled model loads"),
    ))
}

fn bench_model(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
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
        group.bench_function(BenchmarkId::new("modeld_request_path", batch), |b| {
            b.to_async(rt).iter(|| {
                let model = Arc::clone(&model);
                let inputs = [InputRef {
                    name: input,
                    datatype: "FP32",
                    shape: &shape_i64,
                    payload: Payload::Raw(&raw),
                }];
                async move { serving::infer(model, &inputs, true).await.unwrap() }
            })
        });
        group.finish();
    }
}

fn request_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    bench_model(c, &rt, "digits_v2.onnx", "input", &[64], &[1, 8]);
    bench_model(c, &rt, "cnn.onnx", "image", &[3, 224, 224], &[1, 8]);
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
