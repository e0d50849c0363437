//! Loads a model file: read once, sha256 the exact bytes, parse with tract, read the signature,
//! optimise (keeping symbolic dimensions such as the batch), and warm up. Nothing here touches
//! the served slot: a model is published only after all of this succeeded.

use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use super::Plan;
use super::engine::{Engine, EngineError, EngineSettings};
use crate::error::{Error, FileProblem, Result};
use crate::signature::{DataType, Signature, TensorSpec};

/// Why a model file cannot be served by an engine; the words continue "model file X ...".
#[derive(Debug, thiserror::Error)]
pub enum Unloadable {
    /// Another format that people try (a Keras, PyTorch or pickle file).
    #[error("is {0}, not an ONNX model; {CONVERT}")]
    OtherFormat(&'static str),
    /// An ONNX file cut short or damaged.
    #[error("is not a loadable ONNX model (truncated or damaged? copy it again): {0:#}")]
    Damaged(#[source] TractError),
    /// Not ONNX protobuf at all.
    #[error("is not an ONNX model (it does not decode as ONNX protobuf: {0:#}); {CONVERT}")]
    NotProtobuf(#[source] TractError),
    /// ONNX that tract cannot load.
    #[error("is not a loadable ONNX model: {0:#}")]
    NotLoadable(#[source] TractError),
    /// The lean read's tensors did not fit the skeleton.
    #[error("{0:#}")]
    Tensors(#[source] TractError),
    /// tract cannot infer its types and shapes.
    #[error("cannot be typed by tract: {0:#}")]
    Untyped(#[source] TractError),
    /// tract cannot optimise it.
    #[error("cannot be optimised by tract: {0:#}")]
    Unoptimised(#[source] TractError),
    /// Its inputs and outputs cannot be read.
    #[error("{0:#}")]
    Facts(#[source] TractError),
    /// A datatype modeld does not serve.
    #[error("uses datatype {datum:?} for {name:?}, which modeld does not serve")]
    Datatype {
        /// tract's datatype.
        datum: DatumType,
        /// The input or output.
        name: String,
    },
    /// Nothing in or nothing out.
    #[error("has no inputs or no outputs")]
    Empty,
    /// Test inputs for its signature cannot be built.
    #[error("cannot build test inputs: {0:#}")]
    TestInputs(#[source] TractError),
    /// A warm-up run failed.
    #[error("fails its warm-up run: {0}")]
    WarmUp(#[source] EngineError),
    /// A warm-up run returned the wrong number of outputs.
    #[error("returned {got} outputs in its warm-up run, its signature has {want}")]
    WarmUpOutputs {
        /// Outputs returned.
        got: usize,
        /// Outputs in the signature.
        want: usize,
    },
    /// ONNX Runtime cannot compile it.
    #[cfg(feature = "onnxruntime")]
    #[error(transparent)]
    Onnxruntime(#[from] super::onnxruntime::OrtError),
    /// ONNX Runtime cannot be used in this process.
    #[error(transparent)]
    Unavailable(#[from] super::engine::Unavailable),
    /// The other engine's warm-up failed.
    #[error("the model {0}")]
    OtherWarmUp(#[source] Box<Unloadable>),
    /// tract failed on the cross-check input.
    #[error("tract failed on the cross-check input: {0:#}")]
    CrossCheckTract(#[source] TractError),
    /// The other engine failed on the cross-check input.
    #[error("{engine} failed on the cross-check input: {source}")]
    CrossCheckOther {
        /// The other engine.
        engine: super::EngineKind,
        /// Its error.
        #[source]
        source: EngineError,
    },
    /// The other engine's outputs are not tract's.
    #[error("{0}")]
    Disagrees(super::choose::Disagreement),
}

/// A model that loaded, optimised and ran a warm-up successfully.
pub struct LoadedModel {
    /// What computes the model.
    pub engine: Engine,
    /// How the engine was chosen: why the asked-for engine is not computing the model, how
    /// ONNX Runtime's outputs compared with tract's at load, the warm-up costs that decided
    /// `--engine auto`.
    pub engine_note: Option<String>,
    /// The asked-for engine could not be used for this model (library not loaded, model not
    /// compiled, outputs differ): tract computes it instead.
    pub engine_fell_back: bool,
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
    /// Last, so that it drops after the engine: gives the freed weights back to the system.
    _release: super::memory::ReleaseOnDrop,
}

impl LoadedModel {
    /// The same loaded model, shared (the engine is reference-counted): for a model that moves
    /// from one role to another (a canary promoted) without being loaded again.
    pub fn share(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            engine_note: self.engine_note.clone(),
            engine_fell_back: self.engine_fell_back,
            signature: self.signature.clone(),
            sha256: self.sha256.clone(),
            size_bytes: self.size_bytes,
            load_time: std::time::Duration::ZERO,
            cost: self.cost,
            batchable: self.batchable,
            _release: super::memory::ReleaseOnDrop,
        }
    }
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("engine", &self.engine)
            .field("engine_note", &self.engine_note)
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

/// Reads, verifies, loads, optimises and warms up the model at `path`, for the engine that
/// `settings` prefers where that engine can compute it (see [`super::choose::choose_engine`]). Messages name
/// the file by its path as given; see [`load_model_named`].
///
/// # Errors
/// As [`load_model_named`].
pub fn load_model(path: &Path, expected_sha256: Option<&str>, settings: EngineSettings) -> Result<LoadedModel> {
    load_model_named(path, &path.display().to_string(), expected_sha256, settings)
}

/// [`load_model`], with messages that name the file as `shown` (the registry's path relative
/// to the model root: messages reach API clients, the server's absolute paths must not).
///
/// `expected_sha256`, when given, must match the file's bytes (the registry's checksum).
/// Blocking and CPU-heavy: call it from a blocking thread.
///
/// # Errors
/// [`Error::ModelFile`] when the file is missing or cannot be read, its checksum differs, tract
/// cannot load or run it, or it uses a datatype modeld does not serve.
pub fn load_model_named(
    path: &Path,
    shown: &str,
    expected_sha256: Option<&str>,
    settings: EngineSettings,
) -> Result<LoadedModel> {
    let started = Instant::now();
    let fail = |e: Unloadable| Error::model_file_from(FileProblem::NotLoadable, format!("model file {shown:?} {e}"), e);
    let read = read_model(path, shown, expected_sha256)?;
    let (plan, signature) = (read.plan, read.signature);
    let tract_warm = warm_up(&Engine::Tract(Arc::clone(&plan)), &signature).map_err(fail)?;
    // ONNX Runtime compiles from the file's bytes: read again, and checked to be the same
    // bytes. Only when it may be used (asked for, and its library not known to be missing):
    // the tract path never holds the whole file.
    let ort_usable =
        settings.preferred.wants_onnxruntime() && !matches!(super::engine::onnxruntime_status(), Some(Err(_)));
    let bytes = if ort_usable {
        let bytes = std::fs::read(path).map_err(|e| io_error(e, shown))?;
        if sha256_hex(&bytes) != read.sha256 {
            return Err(Error::model_file(
                FileProblem::ChecksumMismatch,
                format!("model file {shown:?} changed while it was loading; try again"),
            ));
        }
        bytes
    } else {
        Vec::new()
    };
    let chosen = super::choose::choose_engine(&bytes, plan, &signature, settings, tract_warm);
    drop(bytes);
    let (engine, warm) = (chosen.engine, chosen.warm);
    Ok(LoadedModel {
        engine,
        engine_note: chosen.note,
        engine_fell_back: chosen.fell_back,
        signature,
        sha256: read.sha256,
        size_bytes: read.size,
        load_time: started.elapsed(),
        cost: warm.cost,
        batchable: warm.batchable,
        _release: super::memory::ReleaseOnDrop,
    })
}

/// A model file read, verified and optimised by tract.
struct Read {
    plan: Plan,
    signature: Signature,
    sha256: String,
    size: u64,
}

/// Reads, verifies and optimises the model at `path`: the lean way ([`super::lean`]), which
/// never holds the whole file, else (a file it does not understand, or a parse that went
/// otherwise than it expects) the plain way, whose errors are tract's own.
fn read_model(path: &Path, shown: &str, expected_sha256: Option<&str>) -> Result<Read> {
    let fail = |e: Unloadable| Error::model_file_from(FileProblem::NotLoadable, format!("model file {shown:?} {e}"), e);
    // MODELD_PLAIN_LOAD=1: the plain way only, to compare what loading costs in memory
    // (docs/benchmarks.md, "Memory while loading").
    let plain_only = std::env::var_os("MODELD_PLAIN_LOAD").is_some_and(|v| !v.is_empty() && v != "0");
    let lean = if plain_only {
        Err(super::lean::Failure::Format("MODELD_PLAIN_LOAD is set".into()))
    } else {
        super::lean::read(path)
    };
    match lean {
        Ok(lean) => {
            check_sha256(expected_sha256, &lean.sha256, shown)?;
            let (sha256, size) = (lean.sha256.clone(), lean.size);
            match build_plan_lean(lean) {
                Ok((plan, signature)) => {
                    return Ok(Read {
                        plan,
                        signature,
                        sha256,
                        size,
                    });
                }
                Err(why) => {
                    tracing::debug!(file = shown, why = %why, "the lean load did not work; loading the plain way");
                }
            }
        }
        Err(super::lean::Failure::Io(e)) => return Err(io_error(e, shown)),
        Err(super::lean::Failure::Format(why)) => {
            tracing::debug!(file = shown, why, "the lean load did not work; loading the plain way");
        }
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(e, shown))?;
    let sha256 = sha256_hex(&bytes);
    check_sha256(expected_sha256, &sha256, shown)?;
    let (plan, signature) = build_plan(&bytes).map_err(fail)?;
    Ok(Read {
        plan,
        signature,
        sha256,
        size: bytes.len() as u64,
    })
}

fn io_error(e: std::io::Error, shown: &str) -> Error {
    let problem = match e.kind() {
        std::io::ErrorKind::NotFound => FileProblem::Missing,
        _ => FileProblem::Unreadable,
    };
    Error::model_file_from(problem, format!("cannot read model file {shown:?}: {e}"), e)
}

fn check_sha256(expected: Option<&str>, actual: &str, shown: &str) -> Result<()> {
    match expected {
        Some(expected) if !expected.eq_ignore_ascii_case(actual) => Err(Error::model_file(
            FileProblem::ChecksumMismatch,
            format!("checksum mismatch for model file {shown:?}: registry has sha256 {expected}, file has {actual}"),
        )),
        _ => Ok(()),
    }
}

/// Parses and optimises; the error text continues "model file X ...".
fn build_plan(bytes: &[u8]) -> std::result::Result<(Plan, Signature), Unloadable> {
    let model = tract_onnx::onnx().model_for_read(&mut &bytes[..]).map_err(|e| {
        match sniff(bytes) {
            Some(what) => Unloadable::OtherFormat(what),
            // An ONNX file opens with its ir_version (field 1, a varint: byte 0x08): one that
            // does not decode after that is cut short or damaged, not another format.
            None if bytes.first() == Some(&0x08) => Unloadable::Damaged(e),
            None if e.chain().any(|c| c.is::<prost::DecodeError>()) => Unloadable::NotProtobuf(e),
            None => Unloadable::NotLoadable(e),
        }
    })?;
    optimise(model)
}

/// What to do with a model that is not ONNX.
const CONVERT: &str = "modeld serves ONNX: convert a Keras or TensorFlow model with tf2onnx \
                       (python -m tf2onnx.convert), a PyTorch one with torch.onnx.export, a scikit-learn one \
                       with skl2onnx, and register the .onnx file";

/// What a file that is not ONNX probably is, from its first bytes (the formats people try).
fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let text = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if bytes.starts_with(b"PK\x03\x04") {
        Some("a zip archive (a .keras model, or a PyTorch .pt/.pth file)")
    } else if bytes.starts_with(b"\x89HDF\r\n\x1a\n") {
        Some("an HDF5 file (a Keras .h5 model)")
    } else if bytes.get(4..8) == Some(b"TFL3") {
        Some("a TensorFlow Lite model")
    } else if bytes.starts_with(b"GGUF") {
        Some("a GGUF file (llama.cpp weights)")
    } else if bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|v| (2..=5).contains(v)) {
        Some("a Python pickle (joblib, pickle or an old PyTorch file)")
    } else if matches!(text, Some(b'{' | b'[' | b'<')) {
        Some("a text file (JSON, HTML or XML)")
    } else {
        None
    }
}

/// [`build_plan`] from a lean read: tract parses the skeleton, then the tensors read from the
/// file take their stand-ins' places.
fn build_plan_lean(lean: super::lean::Lean) -> std::result::Result<(Plan, Signature), Unloadable> {
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(&lean.proto)
        .map_err(Unloadable::NotLoadable)?;
    lean.fill(&mut model).map_err(Unloadable::Tensors)?;
    optimise(model)
}

fn optimise(model: InferenceModel) -> std::result::Result<(Plan, Signature), Unloadable> {
    let typed = model.into_typed().map_err(Unloadable::Untyped)?;
    let signature = read_signature(&typed)?;
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(Unloadable::Unoptimised)?;
    Ok((plan, signature))
}

fn read_signature(model: &TypedModel) -> std::result::Result<Signature, Unloadable> {
    let spec = |outlet: OutletId, name: String| -> std::result::Result<TensorSpec, Unloadable> {
        let fact = model.outlet_fact(outlet).map_err(Unloadable::Facts)?;
        let datatype = super::served_datatype(fact.datum_type).ok_or_else(|| Unloadable::Datatype {
            datum: fact.datum_type,
            name: name.clone(),
        })?;
        let shape = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
        Ok(TensorSpec { name, datatype, shape })
    };
    let inputs = model
        .input_outlets()
        .map_err(Unloadable::Facts)?
        .iter()
        .map(|&o| spec(o, model.node(o.node).name.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(Unloadable::Facts)?
        .iter()
        .map(|&o| {
            let name = model
                .outlet_label(o)
                .map_or_else(|| model.node(o.node).name.clone(), str::to_owned);
            spec(o, name)
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(Unloadable::Empty);
    }
    Ok(Signature { inputs, outputs })
}

/// What the warm-up learnt about a model.
pub(super) struct WarmUp {
    pub(super) cost: Duration,
    pub(super) batchable: bool,
}

/// How many batch-1 warm-up runs: the first pays for lazy set-up, the fastest is the cost.
const WARM_UP_RUNS: usize = 3;

/// Inputs for a warm-up or a cross-check: dynamic dims are 1 (the leading one `batch`), values
/// are zeros, or for `varied` FP32 and FP64 inputs a fixed pseudo-random sequence in [0, 1).
pub(super) fn test_inputs(
    signature: &Signature,
    batch: usize,
    varied: bool,
) -> std::result::Result<TVec<TValue>, Unloadable> {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
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
            let mut t = Tensor::zero_dt(super::datum(s.datatype), &shape)?;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f64 / (1u64 << 24) as f64
            };
            if varied && s.datatype == DataType::Fp32 {
                let mut view = t.try_as_plain_ram_mut()?;
                view.as_slice_mut::<f32>()?.iter_mut().for_each(|v| *v = next() as f32);
            } else if varied && s.datatype == DataType::Fp64 {
                let mut view = t.try_as_plain_ram_mut()?;
                view.as_slice_mut::<f64>()?.iter_mut().for_each(|v| *v = next());
            }
            Ok(TValue::from(t))
        })
        .collect::<TractResult<TVec<_>>>()
        .map_err(Unloadable::TestInputs)
}

/// Runs on zeros (dynamic dims = 1) so the first real request does not pay for lazy set-up, so
/// a model that cannot run is refused before it is published, and to learn its cost and whether
/// requests can be batched.
pub(super) fn warm_up(engine: &Engine, signature: &Signature) -> std::result::Result<WarmUp, Unloadable> {
    let mut cost = Duration::MAX;
    for _ in 0..WARM_UP_RUNS {
        let inputs = test_inputs(signature, 1, false)?;
        let t = Instant::now();
        let outputs = engine.run(inputs).map_err(Unloadable::WarmUp)?;
        cost = cost.min(t.elapsed());
        if outputs.len() != signature.outputs.len() {
            return Err(Unloadable::WarmUpOutputs {
                got: outputs.len(),
                want: signature.outputs.len(),
            });
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
        && engine
            .run(test_inputs(signature, 2, false)?)
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
    fn a_file_that_is_not_onnx_says_what_it_is_and_how_to_convert() {
        let dir = tempfile::tempdir().unwrap();
        for (file, bytes, says) in [
            (
                "m.keras",
                &b"PK\x03\x04\x14\x00\x00\x00config.json"[..],
                "a zip archive (a .keras model",
            ),
            ("m.h5", &b"\x89HDF\r\n\x1a\n\x00\x00"[..], "an HDF5 file"),
            ("m.pkl", &b"\x80\x04\x95\x10\x00"[..], "a Python pickle"),
            ("m.onnx", &b"<html>not found</html>"[..], "a text file"),
            ("m.bin", &[0u8, 0, 0, 0, 1, 2, 3][..], "not an ONNX model"),
        ] {
            let path = dir.path().join(file);
            std::fs::write(&path, bytes).unwrap();
            let e = load_model(&path, None, EngineSettings::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{file}: {e}");
            assert!(
                e.contains("modeld serves ONNX")
                    && e.contains("tf2onnx")
                    && e.contains("torch.onnx")
                    && e.contains("skl2onnx"),
                "{file}: {e}"
            );
        }
    }

    #[test]
    fn digits_signature_has_a_batch_dim() {
        let m = load_model(&bundled("digits_v2.onnx"), None, EngineSettings::default()).unwrap();
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
        let err = load_model(
            &bundled("digits_v1.onnx"),
            Some(&"0".repeat(64)),
            EngineSettings::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, Error::ModelFile { problem: FileProblem::ChecksumMismatch, ref message, .. } if message.contains("checksum mismatch")),
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
            let err = load_model(&p, None, EngineSettings::default()).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::ModelFile {
                        problem: FileProblem::NotLoadable,
                        ..
                    }
                ),
                "{err}"
            );
        }
    }
}
