//! `modeld predict`: inputs from JSON or .npy files, a Predict call, the outputs as JSON.

use super::args::PredictArgs;
use super::client::connect;
use super::exit::ServerSaid;
use crate::api::{kserve_pb, pb};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::path::Path;

pub(super) async fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let channel = connect(&a.client).await?;
    // The signature of what the server serves comes from its memory (ModelMetadata answers
    // while the registry is unreachable); other models' from the registry.
    let metadata = kserve_pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel.clone())
        .model_metadata(kserve_pb::ModelMetadataRequest {
            name: a.model.clone(),
            version: String::new(),
        })
        .await
        .map_err(ServerSaid)
        .context("cannot read the model's signature")?
        .into_inner();
    let first = metadata.inputs.first().context("the model has no inputs")?;
    let name = a.input_name.clone().unwrap_or_else(|| first.name.clone());
    // A bad input file is refused like a bad input the server would refuse (exit code 4).
    let inputs =
        read_inputs(&a.input, &name, &first.datatype).map_err(|e| crate::Error::InvalidArgument(format!("{e:#}")))?;

    let mut client = pb::inference_client::InferenceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20);
    let resp = client
        .predict(pb::PredictRequest {
            model_name: a.model.clone(),
            inputs,
            routing_key: String::new(),
        })
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": tensor_values(t)}))
        .collect();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "model_id": resp.model_id,
            "model_name": resp.model_name,
            "model_version": resp.model_version,
            "role": resp.role,
            "outputs": outputs,
        }))?
    );
    Ok(())
}

/// Reads `.npy` (sent as raw bytes) or `.json` (sent as typed values).
pub(super) fn read_inputs(path: &Path, name: &str, default_datatype: &str) -> anyhow::Result<Vec<pb::Tensor>> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {shown}"))?;
    if path.extension().is_some_and(|e| e == "npy") {
        return Ok(vec![
            npy_tensor(&bytes, name).with_context(|| format!("cannot use {shown}"))?,
        ]);
    }
    let value: Value = serde_json::from_slice(&bytes).with_context(|| format!("{shown} is not JSON"))?;
    if let Some(list) = value.get("inputs").and_then(Value::as_array) {
        return list
            .iter()
            .map(|i| {
                let name = i
                    .get("name")
                    .and_then(Value::as_str)
                    .context("an input has no \"name\"")?;
                let datatype = i.get("datatype").and_then(Value::as_str).unwrap_or(default_datatype);
                let data = i.get("data").context("an input has no \"data\"")?;
                let (mut flat, inferred) = (Vec::new(), flatten(data, &mut Vec::new(), 0)?);
                collect(data, &mut flat);
                let shape = match i.get("shape") {
                    Some(s) => serde_json::from_value(s.clone()).context("\"shape\" must be a list of integers")?,
                    None => inferred,
                };
                typed_tensor(name, datatype, shape, &flat)
            })
            .collect();
    }
    let shape = flatten(&value, &mut Vec::new(), 0)?;
    let mut flat = Vec::new();
    collect(&value, &mut flat);
    Ok(vec![typed_tensor(name, default_datatype, shape, &flat)?])
}

/// The shape of a nested JSON array (checking it is rectangular).
pub(super) fn flatten(v: &Value, shape: &mut Vec<i64>, depth: usize) -> anyhow::Result<Vec<i64>> {
    match v {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len() as i64);
            } else if shape[depth] != items.len() as i64 {
                bail!("the JSON array is ragged: rows of different lengths at depth {depth}");
            }
            for item in items {
                flatten(item, shape, depth + 1)?;
            }
            Ok(shape.clone())
        }
        Value::Number(_) | Value::Bool(_) => Ok(shape.clone()),
        other => bail!("expected numbers in the input array, found {other}"),
    }
}

pub(super) fn collect<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, out)),
        other => out.push(other),
    }
}

pub(super) fn typed_tensor(
    name: &str,
    datatype: &str,
    shape: Vec<i64>,
    values: &[&Value],
) -> anyhow::Result<pb::Tensor> {
    let mut t = pb::Tensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        ..Default::default()
    };
    let num = |v: &Value| v.as_f64().with_context(|| format!("{v} is not a number"));
    let int = |v: &Value| v.as_i64().with_context(|| format!("{v} is not an integer"));
    match datatype {
        "FP32" => {
            t.fp32_data = values
                .iter()
                .map(|v| num(v).map(|x| x as f32))
                .collect::<anyhow::Result<_>>()?
        }
        "FP64" => t.fp64_data = values.iter().map(|v| num(v)).collect::<anyhow::Result<_>>()?,
        "INT64" => t.int64_data = values.iter().map(|v| int(v)).collect::<anyhow::Result<_>>()?,
        "INT8" | "INT16" | "INT32" => {
            t.int32_data = values
                .iter()
                .map(|v| Ok(i32::try_from(int(v)?)?))
                .collect::<anyhow::Result<_>>()?;
        }
        "UINT8" | "UINT16" | "UINT32" => {
            t.uint32_data = values
                .iter()
                .map(|v| Ok(u32::try_from(int(v)?)?))
                .collect::<anyhow::Result<_>>()?;
        }
        "UINT64" => {
            t.uint64_data = values
                .iter()
                .map(|v| v.as_u64().with_context(|| format!("{v} is not a UINT64")))
                .collect::<anyhow::Result<_>>()?;
        }
        "BOOL" => {
            t.bool_data = values
                .iter()
                .map(|v| v.as_bool().with_context(|| format!("{v} is not a bool")))
                .collect::<anyhow::Result<_>>()?;
        }
        other => bail!("datatype {other:?} cannot be written in JSON here"),
    }
    Ok(t)
}

pub(super) fn npy_tensor(bytes: &[u8], name: &str) -> anyhow::Result<pb::Tensor> {
    let npy = npyz::NpyFile::new(bytes)?;
    if npy.order() != npyz::Order::C {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let descr = npy.dtype().descr();
    let descr = descr.trim_matches('\'').trim_start_matches(['<', '|', '=']);
    macro_rules! raw {
        ($t:ty, $dt:literal) => {{
            let v: Vec<$t> = npy.into_vec()?;
            ($dt, v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
        }};
    }
    let (datatype, raw_data) = match descr {
        "f4" => raw!(f32, "FP32"),
        "f8" => raw!(f64, "FP64"),
        "i1" => raw!(i8, "INT8"),
        "i2" => raw!(i16, "INT16"),
        "i4" => raw!(i32, "INT32"),
        "i8" => raw!(i64, "INT64"),
        "u1" => raw!(u8, "UINT8"),
        "u2" => raw!(u16, "UINT16"),
        "u4" => raw!(u32, "UINT32"),
        "u8" => raw!(u64, "UINT64"),
        "b1" => {
            let v: Vec<bool> = npy.into_vec()?;
            ("BOOL", v.iter().map(|&b| u8::from(b)).collect())
        }
        other => bail!("unsupported .npy dtype {other:?} (big-endian or exotic)"),
    };
    Ok(pb::Tensor {
        name: name.into(),
        datatype: datatype.into(),
        shape,
        raw_data,
        ..Default::default()
    })
}

/// A wire tensor's values as JSON numbers, whichever field carries them.
pub(super) fn tensor_values(t: &pb::Tensor) -> Value {
    if t.raw_data.is_empty() {
        return match t.datatype.as_str() {
            "FP32" => json!(t.fp32_data),
            "FP64" => json!(t.fp64_data),
            "INT64" => json!(t.int64_data),
            "UINT64" => json!(t.uint64_data),
            "BOOL" => json!(t.bool_data),
            "UINT8" | "UINT16" | "UINT32" => json!(t.uint32_data),
            _ => json!(t.int32_data),
        };
    }
    macro_rules! le {
        ($t:ty) => {
            json!(
                t.raw_data
                    .chunks_exact(size_of::<$t>())
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("exact chunk")))
                    .collect::<Vec<$t>>()
            )
        };
    }
    match t.datatype.as_str() {
        "FP32" => le!(f32),
        "FP64" => le!(f64),
        "INT8" => le!(i8),
        "INT16" => le!(i16),
        "INT32" => le!(i32),
        "INT64" => le!(i64),
        "UINT8" => le!(u8),
        "UINT16" => le!(u16),
        "UINT32" => le!(u32),
        "UINT64" => le!(u64),
        "BOOL" => json!(t.raw_data.iter().map(|&b| b != 0).collect::<Vec<_>>()),
        _ => Value::Null,
    }
}
