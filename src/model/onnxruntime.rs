//! The optional onnxruntime engine (cargo feature `onnxruntime`): ONNX Runtime's shared library,
//! loaded at run time through the `ort` crate (`load-dynamic`), so nothing is downloaded or
//! linked at build time. ort's types stay in this file.
//!
//! ONNX Runtime's `Run` is not safe to call on one session from two threads at once (ort's
//! `Session::run` takes `&mut self` for that reason), so a model keeps a few sessions, one per
//! thread that may run it at the same time, each behind its own lock. Each session computes on
//! the calling thread (one intra-op thread, no spinning): modeld's own compute threads are the
//! parallelism, as with tract.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, TensorRef};
use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor};

/// The loaded library: its version and where it came from.
struct Runtime {
    env: ort::environment::Environment,
    version: String,
    path: PathBuf,
}

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The library to load when none is named: `ORT_DYLIB_PATH`, else the dynamic loader's search
/// path (`LD_LIBRARY_PATH`, the system's directories).
fn default_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| PathBuf::from("libonnxruntime.so"), PathBuf::from)
}

/// Loads ONNX Runtime's library once per process. The first call decides: a process can load
/// one library only, later calls return the first outcome whatever path they name.
///
/// # Errors
/// Why the library cannot be used (not found, not ONNX Runtime, too old).
pub fn init(library: Option<&Path>) -> Result<String, String> {
    let outcome = RUNTIME.get_or_init(|| {
        let path = library.map_or_else(default_library, Path::to_path_buf);
        let builder = ort::init_from(&path).map_err(|e| {
            // libloading's message is in the error's source.
            let detail = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            format!("cannot load ONNX Runtime from {}: {e}{detail}", path.display())
        })?;
        let env = builder
            .with_name("modeld")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        let version = library_version(&path).unwrap_or_else(|| "(version unknown)".into());
        Ok(Runtime { env, version, path })
    });
    outcome.as_ref().map(describe).map_err(Clone::clone)
}

/// The version string of the ONNX Runtime library at `path`, which ort has just loaded.
fn library_version(path: &Path) -> Option<String> {
    // SAFETY: ort loaded this library from this path and checked that it exports
    // `OrtGetApiBase`; opening it again returns the same handle (no second initialisation).
    // `OrtGetApiBase` returns a static table, and `GetVersionString` a static NUL-terminated
    // string that must not be freed.
    unsafe {
        let lib = libloading::Library::new(path).ok()?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
            lib.get(b"OrtGetApiBase").ok()?;
        let base = get_base();
        if base.is_null() {
            return None;
        }
        let version = ((*base).GetVersionString)();
        if version.is_null() {
            return None;
        }
        std::ffi::CStr::from_ptr(version).to_str().ok().map(str::to_owned)
    }
}

fn describe(rt: &Runtime) -> String {
    format!("ONNX Runtime {} ({})", rt.version, rt.path.display())
}

/// What [`init`] decided, if it was called: `Ok` with the library's description, or why not.
pub fn status() -> Option<Result<String, String>> {
    RUNTIME
        .get()
        .map(|outcome| outcome.as_ref().map(describe).map_err(Clone::clone))
}

/// A model compiled by ONNX Runtime: one session per concurrent caller.
pub struct OrtModel {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    input_names: Vec<String>,
    output_names: Vec<String>,
    /// The library that compiled it, for reports.
    pub library: String,
}

impl OrtModel {
    /// Compiles `bytes` (the verified file contents) into `sessions` sessions (at least one).
    /// `inputs` and `outputs` are the signature's names: [`OrtModel::run`] takes and returns
    /// tensors in that order.
    ///
    /// # Errors
    /// The library is not loaded, ONNX Runtime refuses the model, or its inputs and outputs are
    /// not the signature's.
    pub fn new(bytes: &[u8], sessions: usize, inputs: &[&str], outputs: &[&str]) -> Result<Self, String> {
        let rt = match RUNTIME.get() {
            Some(Ok(rt)) => rt,
            Some(Err(e)) => return Err(e.clone()),
            None => return Err("ONNX Runtime was not loaded".into()),
        };
        let weights = ort::session::builder::PrepackedWeights::new();
        let one = || -> ort::Result<Session> {
            Session::builder(&rt.env)?
                .with_optimization_level(GraphOptimizationLevel::All)?
                .with_intra_threads(1)?
                .with_inter_threads(1)?
                .with_intra_op_spinning(false)?
                .with_prepacked_weights(&weights)?
                .commit_from_memory(bytes)
        };
        let sessions = (0..sessions.max(1))
            .map(|_| one().map(Mutex::new))
            .collect::<ort::Result<Vec<_>>>()
            .map_err(|e| format!("cannot be compiled by ONNX Runtime: {e}"))?;
        {
            let first = sessions[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let names =
                |outlets: &[ort::value::Outlet]| outlets.iter().map(|o| o.name().to_string()).collect::<Vec<_>>();
            let (have_in, have_out) = (names(first.inputs()), names(first.outputs()));
            let same = |have: &[String], want: &[&str]| {
                have.len() == want.len() && want.iter().all(|w| have.iter().any(|h| h == w))
            };
            if !same(&have_in, inputs) || !same(&have_out, outputs) {
                return Err(format!(
                    "is read differently by ONNX Runtime: inputs {have_in:?}, outputs {have_out:?}; tract reads inputs {inputs:?}, outputs {outputs:?}"
                ));
            }
        }
        let owned = |names: &[&str]| names.iter().map(|n| (*n).to_string()).collect();
        Ok(Self {
            sessions,
            next: AtomicUsize::new(0),
            input_names: owned(inputs),
            output_names: owned(outputs),
            library: describe(rt),
        })
    }

    /// Input names in the order ONNX Runtime reads them.
    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    /// Output names in the order ONNX Runtime returns them.
    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// Runs `inputs` (in the model's input order) and returns the outputs in its output order.
    ///
    /// # Errors
    /// ONNX Runtime's error text, or an element type it does not share with tract.
    pub fn run(&self, inputs: &[TValue]) -> Result<TVec<TValue>, String> {
        let values = inputs
            .iter()
            .zip(&self.input_names)
            .map(|(t, name)| Ok((name.as_str(), tensor_ref(t)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let mut session = self.session();
        let outputs = session.run(values).map_err(|e| format!("ONNX Runtime failed: {e}"))?;
        self.output_names
            .iter()
            .map(|name| {
                let value = outputs
                    .get(name)
                    .ok_or_else(|| format!("ONNX Runtime returned no output {name:?}"))?;
                to_tract(value).map(TValue::from)
            })
            .collect()
    }

    /// A free session, or the next one in turn when every session is busy.
    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        let n = self.sessions.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            if let Ok(guard) = self.sessions[(start + i) % n].try_lock() {
                return guard;
            }
        }
        // A panic while running cannot leave a session half-updated on our side: reuse it.
        self.sessions[start]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Calls `$body` with `$t` bound to the Rust element type of a tract datum type that ONNX
/// Runtime shares.
macro_rules! with_element {
    ($dt:expr, $t:ident => $body:expr, $other:expr) => {
        match $dt {
            DatumType::F32 => {
                type $t = f32;
                $body
            }
            DatumType::F64 => {
                type $t = f64;
                $body
            }
            DatumType::I8 => {
                type $t = i8;
                $body
            }
            DatumType::I16 => {
                type $t = i16;
                $body
            }
            DatumType::I32 => {
                type $t = i32;
                $body
            }
            DatumType::I64 => {
                type $t = i64;
                $body
            }
            DatumType::U8 => {
                type $t = u8;
                $body
            }
            DatumType::U16 => {
                type $t = u16;
                $body
            }
            DatumType::U32 => {
                type $t = u32;
                $body
            }
            DatumType::U64 => {
                type $t = u64;
                $body
            }
            DatumType::Bool => {
                type $t = bool;
                $body
            }
            other => $other(other),
        }
    };
}

/// A view of tract's tensor for ONNX Runtime: no copy.
fn tensor_ref(t: &Tensor) -> Result<ort::session::SessionInputValue<'_>, String> {
    let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    with_element!(
        t.datum_type(),
        T => {
            let data = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<T>())
                .map_err(|e| e.to_string())?;
            TensorRef::<T>::from_array_view((shape, data))
                .map(Into::into)
                .map_err(|e| format!("cannot pass an input to ONNX Runtime: {e}"))
        },
        |other| Err(format!("element type {other:?} is not passed to ONNX Runtime"))
    )
}

/// Copies an output into a tract tensor.
fn to_tract(value: &DynValue) -> Result<Tensor, String> {
    let ort::value::ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(format!("ONNX Runtime returned a non-tensor output ({})", value.dtype()));
    };
    let dt =
        datum(*ty).ok_or_else(|| format!("ONNX Runtime returned element type {ty}, which modeld does not serve"))?;
    with_element!(
        dt,
        T => {
            let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| e.to_string())?;
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            Tensor::from_shape(&dims, data).map_err(|e| e.to_string())
        },
        |other| Err(format!("element type {other:?} is not read from ONNX Runtime"))
    )
}

fn datum(ty: ort::value::TensorElementType) -> Option<DatumType> {
    use ort::value::TensorElementType as E;
    Some(match ty {
        E::Float32 => DatumType::F32,
        E::Float64 => DatumType::F64,
        E::Int8 => DatumType::I8,
        E::Int16 => DatumType::I16,
        E::Int32 => DatumType::I32,
        E::Int64 => DatumType::I64,
        E::Uint8 => DatumType::U8,
        E::Uint16 => DatumType::U16,
        E::Uint32 => DatumType::U32,
        E::Uint64 => DatumType::U64,
        E::Bool => DatumType::Bool,
        _ => return None,
    })
}
