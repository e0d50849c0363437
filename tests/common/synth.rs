//! Large ONNX models made on the spot (the repository keeps only small files): an MLP of
//! Gemm layers with ReLU between them, input `input` FP32 `[N, sizes[0]]`, output `logits`
//! FP32 `[N, sizes.last()]`, weights from a seeded generator. A 64→7000→7000→10 MLP is a
//! 198 MB file. Shared by the tests and the benchmarks (`#[path]`).

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

/// Writes the MLP with layer widths `sizes` to `path`; returns the file's size in bytes.
pub fn write_mlp(path: &Path, sizes: &[usize], seed: u64) -> u64 {
    assert!(sizes.len() >= 2, "an MLP needs an input and an output width");
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: cheap and deterministic; uniform in [-1, 1).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        bits as f32 / (1u64 << 23) as f32 - 1.0
    };
    let tensor = |name: String, dims: Vec<i64>, values: &mut dyn FnMut() -> f32| {
        let count: i64 = dims.iter().product();
        let mut raw = Vec::with_capacity(count as usize * 4);
        for _ in 0..count {
            raw.extend_from_slice(&values().to_le_bytes());
        }
        pb::TensorProto {
            dims,
            data_type: pb::tensor_proto::DataType::Float as i32,
            name,
            raw_data: raw,
            ..Default::default()
        }
    };
    let value_info = |name: &str, width: usize| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimParam("N".into())),
                            ..Default::default()
                        },
                        pb::tensor_shape_proto::Dimension {
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(width as i64)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (mut nodes, mut initializers) = (Vec::new(), Vec::new());
    let mut previous = "input".to_string();
    let layers = sizes.len() - 1;
    for (i, pair) in sizes.windows(2).enumerate() {
        let (inputs, outputs) = (pair[0], pair[1]);
        // Scaled so that activations stay of order one through the layers.
        let scale = 1.0 / (inputs as f32).sqrt();
        initializers.push(tensor(
            format!("w{i}"),
            vec![inputs as i64, outputs as i64],
            &mut || next() * scale,
        ));
        initializers.push(tensor(format!("b{i}"), vec![outputs as i64], &mut || next() * 0.1));
        let dense = if i + 1 == layers {
            "logits".to_string()
        } else {
            format!("dense{i}")
        };
        nodes.push(pb::NodeProto {
            input: vec![previous.clone(), format!("w{i}"), format!("b{i}")],
            output: vec![dense.clone()],
            name: format!("gemm{i}"),
            op_type: "Gemm".into(),
            ..Default::default()
        });
        previous = dense;
        if i + 1 < layers {
            let relu = format!("relu{i}");
            nodes.push(pb::NodeProto {
                input: vec![previous.clone()],
                output: vec![relu.clone()],
                name: relu.clone(),
                op_type: "Relu".into(),
                ..Default::default()
            });
            previous = relu;
        }
    }
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "modeld tests".into(),
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "mlp".into(),
            initializer: initializers,
            input: vec![value_info("input", sizes[0])],
            output: vec![value_info("logits", *sizes.last().unwrap())],
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    std::fs::write(path, &bytes).unwrap();
    bytes.len() as u64
}
