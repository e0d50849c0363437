//! Loads a model file: read once, sha256 the exact bytes, parse with tract, read the signature,
//! optimise (keeping symbolic dimensions such as the batch), and warm up. Nothing here touches
//! the served slot: a model is published only after all of this succeeded.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use super::Plan;
use super::signature::{DataType, Signature, TensorSpec};
use crate::error::{Error, Result};

/// A model that loaded, optimised and ran a warm-up successfully.
pub struct LoadedModel {
    /// The runnable plan.
    pub plan: Plan,
    /// Inputs and outputs read from the file.
    pub signature: Signature,
    /// Hex sha256 of the file bytes that were loaded.
    pub sha256: String,
    /// Size of the file that was loaded.
    pub size_bytes: u64,
    /// Time spent reading, hashing, loading, optimising and warming up.
    pub load_time: Duration,
    /// The fastest of the warm-up runs at batch 1: what one request costs to compute. The
    /// executor runs models cheaper than its inline limit on the calling thread.
    pub cost: Duration,
    /// Every input and output has a symbolic leading (batch) dimension and a warm-up at batch 2
    /// returned 2 rows per output: requests can be stacked and the outputs split back.
    pub batchable: bool,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("signature", &self.signature)
            .field("sha256", &self.sha256)
            .field("size_bytes", &self.size_bytes)
            .field("load_time", &self.load_time)
            .field("cost", &self.cost)
            .field("batchable", &self.batchable)
            .finish_non_exhaustive()
    }
}

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads, verifies, loads, optimises and warms up the model at `path`.
///
/// `expected_sha256`, when given, must match the file's bytes (the registry's checksum).
/// Blocking and CPU-heavy: call it from a blocking thread.
///
/// # Errors
/// `FailedPrecondition` when the file cannot be read, its checksum differs, tract cannot load or
/// run it, or it uses a datatype modeld does not serve.
pub fn load_model(path: &Path, expected_sha256: Option<&str>) -> Result<LoadedModel> {
    let started = Instant::now();
    let shown = path.display();
    let bytes =
        std::fs::read(path).map_err(|e| Error::FailedPrecondition(format!("cannot read model file {shown}: {e}")))?;
    let sha256 = sha256_hex(&bytes);
    if let Some(expected) = expected_sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(Error::FailedPrecondition(format!(
            "checksum mismatch for {shown}: registry has sha256 {expected}, file has {sha256}"
        )));
    }
    let (plan, signature, warm) =
        build_plan(&bytes).map_err(|e| Error::FailedPrecondition(format!("model file {shown} {e}")))?;
    Ok(LoadedModel {
        plan,
        signature,
        sha256,
        size_bytes: bytes.len() as u64,
        load_time: started.elapsed(),
        cost: warm.cost,
        batchable: warm.batchable,
    })
}

/// Parses, optimises and warms up; the error text continues "model file X ...".
fn build_plan(bytes: &[u8]) -> std::result::Result<(Plan, Signature, WarmUp), String> {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .map_err(|e| format!("is not a loadable ONNX model: {e:#}"))?;
    let typed = model
        .into_typed()
        .map_err(|e| format!("cannot be typed by tract: {e:#}"))?;
    let signature = read_signature(&typed)?;
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| format!("cannot be optimised by tract: {e:#}"))?;
    let warm = warm_up(&plan, &signature)?;
    Ok((plan, signature, warm))
}

fn read_signature(model: &TypedModel) -> std::result::Result<Signature, String> {
    let spec = |outlet: OutletId, name: String| -> std::result::Result<TensorSpec, String> {
        let fact = model.outlet_fact(outlet).map_err(|e| e.to_string())?;
        let datatype = DataType::from_datum(fact.datum_type).ok_or_else(|| {
            format!(
                "uses datatype {:?} for {name:?}, which modeld does not serve",
                fact.datum_type
            )
        })?;
        let shape = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
        Ok(TensorSpec { name, datatype, shape })
    };
    let inputs = model
        .input_outlets()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|&o| spec(o, model.node(o.node).name.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|&o| {
            let name = model
                .outlet_label(o)
                .map_or_else(|| model.node(o.node).name.clone(), str::to_owned);
            spec(o, name)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err("has no inputs or no outputs".into());
    }
    Ok(Signature { inputs, outputs })
}

/// What the warm-up learnt about a model.
struct WarmUp {
    cost: Duration,
    batchable: bool,
}

/// How many batch-1 warm-up runs: the first pays for lazy set-up, the fastest is the cost.
const WARM_UP_RUNS: usize = 3;

/// Runs on zeros (dynamic dims = 1) so the first real request does not pay for lazy set-up, so
/// a model that cannot run is refused before it is published, and to learn its cost and whether
/// requests can be batched.
fn warm_up(plan: &Plan, signature: &Signature) -> std::result::Result<WarmUp, String> {
    let zeros = |batch: usize| {
        signature
            .inputs
            .iter()
            .map(|s| {
                let shape: Vec<usize> = s
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (i, d) {
                        (0, d) if d < 0 => batch,
                        (_, d) if d < 0 => 1,
                        (_, d) => d as usize,
                    })
                    .collect();
                Tensor::zero_dt(s.datatype.datum(), &shape).map(TValue::from)
            })
            .collect::<TractResult<TVec<_>>>()
            .map_err(|e| format!("cannot build warm-up inputs: {e:#}"))
    };
    let mut cost = Duration::MAX;
    for _ in 0..WARM_UP_RUNS {
        let inputs = zeros(1)?;
        let t = Instant::now();
        let outputs = plan.run(inputs).map_err(|e| format!("fails its warm-up run: {e:#}"))?;
        cost = cost.min(t.elapsed());
        if outputs.len() != signature.outputs.len() {
            return Err(format!(
                "returned {} outputs in its warm-up run, its signature has {}",
                outputs.len(),
                signature.outputs.len()
            ));
        }
    }
    let batch_dims = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .all(|s| s.has_batch_dim());
    // A graph may declare a batch dim and still not compute per row (a reshape that folds
    // it away): only a batch-2 run that returns 2 rows everywhere proves it can be split.
    let batchable = batch_dims
        && plan
            .run(zeros(2)?)
            .is_ok_and(|out| out.iter().all(|t| t.shape().first() == Some(&2)));
    Ok(WarmUp { cost, batchable })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name)
    }

    #[test]
    fn digits_signature_has_a_batch_dim() {
        let m = load_model(&bundled("digits_v2.onnx"), None).unwrap();
        let sig = &m.signature;
        assert_eq!(sig.inputs.len(), 1);
        assert_eq!(sig.inputs[0].name, "input");
        assert_eq!(sig.inputs[0].datatype, DataType::Fp32);
        assert_eq!(sig.inputs[0].shape, vec![-1, 64]);
        let outs: Vec<_> = sig
            .outputs
            .iter()
            .map(|o| (o.name.as_str(), o.datatype, o.shape.clone()))
            .collect();
        assert_eq!(
            outs,
            vec![
                ("probabilities", DataType::Fp32, vec![-1, 10]),
                ("label", DataType::Int64, vec![-1])
            ]
        );
        assert_eq!(m.sha256.len(), 64);
    }

    #[test]
    fn checksum_mismatch_is_refused() {
        let err = load_model(&bundled("digits_v1.onnx"), Some(&"0".repeat(64))).unwrap_err();
        assert!(
            matches!(err, Error::FailedPrecondition(ref m) if m.contains("checksum mismatch")),
            "{err}"
        );
    }

    #[test]
    fn garbage_and_truncated_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.onnx");
        std::fs::write(&garbage, b"this is not a model").unwrap();
        let full = std::fs::read(bundled("digits_v2.onnx")).unwrap();
        let truncated = dir.path().join("truncated.onnx");
        std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
        for p in [garbage, truncated] {
            let err = load_model(&p, None).unwrap_err();
            assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        }
    }
}
