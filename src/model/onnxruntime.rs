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
use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor, TractError};

use super::engine::Unavailable;

/// Why ONNX Runtime did not compile or compute a model.
#[derive(Debug, thiserror::Error)]
pub enum OrtError {
    /// The library is not there to do it.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// ONNX Runtime refused the model.
    #[error("cannot be compiled by ONNX Runtime: {0}")]
    Compile(#[source] ort::Error),
    /// ONNX Runtime reads other inputs or outputs than tract.
    #[error(
        "is read differently by ONNX Runtime: inputs {theirs_in:?}, outputs {theirs_out:?}; tract reads inputs {ours_in:?}, outputs {ours_out:?}"
    )]
    Names {
        /// ONNX Runtime's inputs.
        theirs_in: Vec<String>,
        /// ONNX Runtime's outputs.
        theirs_out: Vec<String>,
        /// tract's inputs.
        ours_in: Vec<String>,
        /// tract's outputs.
        ours_out: Vec<String>,
    },
    /// A run failed.
    #[error("ONNX Runtime failed: {0}")]
    Run(#[source] ort::Error),
    /// An input could not be handed over.
    #[error("cannot pass an input to ONNX Runtime: {0}")]
    Input(#[source] ort::Error),
    /// A tensor's elements could not be viewed.
    #[error("{0:#}")]
    View(#[source] TractError),
    /// An input element type the two engines do not share.
    #[error("element type {0:?} is not passed to ONNX Runtime")]
    InputType(DatumType),
    /// An output that is not a tensor.
    #[error("ONNX Runtime returned a non-tensor output ({0})")]
    NotTensor(String),
    /// An output element type modeld does not serve.
    #[error("ONNX Runtime returned element type {0}, which modeld does not serve")]
    Unserved(String),
    /// An output could not be read.
    #[error("{0}")]
    Extract(#[source] ort::Error),
    /// An output element type the two engines do not share.
    #[error("element type {0:?} is not read from ONNX Runtime")]
    OutputType(DatumType),
}

/// The loaded library: its version and where it came from.
struct Runtime {
    env: ort::environment::Environment,
    version: String,
    path: PathBuf,
}

static RUNTIME: OnceLock<Result<Runtime, Unavailable>> = OnceLock::new();

/// The library to load when none is named: `ORT_DYLIB_PATH`, else `libonnxruntime.so`.
fn default_library() -> PathBuf {
    std::env::var_os("ORT_DYLIB_PATH").map_or_else(|| PathBuf::from("libonnxruntime.so"), PathBuf::from)
}

/// Where the library named `path` is, decided the way ort decides it: a relative path is looked
/// for beside the executable first; otherwise a path with a directory is taken from the working
/// directory (made absolute, for the logs), and a bare name is left to the dynamic loader's search
/// (`LD_LIBRARY_PATH`, the system's directories).
fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(path)))
        .filter(|p| p.exists());
    beside_exe
        .or_else(|| {
            (path.components().count() > 1)
                .then(|| std::path::absolute(path).ok())
                .flatten()
        })
        .unwrap_or_else(|| path.to_path_buf())
}

/// Loads ONNX Runtime's library once per process. The first call decides: a process can load
/// one library only, later calls return the first outcome whatever path they name.
///
/// # Errors
/// Why the library cannot be used (not found, not ONNX Runtime, too old).
pub fn init(library: Option<&Path>) -> Result<String, Unavailable> {
    let outcome = RUNTIME.get_or_init(|| {
        let path = resolve(&library.map_or_else(default_library, Path::to_path_buf));
        let builder = ort::init_from(&path).map_err(|e| Unavailable::Load {
            path: path.clone(),
            source: std::sync::Arc::new(e),
        })?;
        let env = builder.with_name("modeld").build().map_err(|e| Unavailable::Start {
            path: path.clone(),
            source: std::sync::Arc::new(e),
        })?;
        let version = library_version(&path).unwrap_or_else(|| "(version unknown)".into());
        Ok(Runtime { env, version, path })
    });
    outcome.as_ref().map(describe).map_err(Clone::clone)
}

/// The version string of the ONNX Runtime library at `path`, which ort has just loaded from
/// that same (resolved) path.
#[cfg(not(unix))]
fn library_version(_: &Path) -> Option<String> {
    None
}

/// The version string of the ONNX Runtime library at `path`, which ort has just loaded from
/// that same (resolved) path.
#[cfg(unix)]
fn library_version(path: &Path) -> Option<String> {
    // RTLD_NOLOAD (glibc and musl: 4): only find the library already loaded, never load another.
    #[cfg(target_os = "linux")]
    let flags = libloading::os::unix::RTLD_LAZY | 0x4;
    #[cfg(not(target_os = "linux"))]
    let flags = libloading::os::unix::RTLD_LAZY;
    // SAFETY: ort loaded this library from this path and checked that it exports
    // `OrtGetApiBase`; opening it again returns the same handle (its initialisers do not run
    // again). `OrtGetApiBase` returns a static table, and `GetVersionString` a static
    // NUL-terminated string that must not be freed.
    unsafe {
        let lib = libloading::os::unix::Library::open(Some(path), flags).ok()?;
        let get_base: libloading::os::unix::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> =
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

/// dlopen's own message (dlerror), the source of libloading's error, as ` (words)`; empty for
/// other load errors.
pub(super) fn dlerror(e: &ort::LoadDynamicError) -> String {
    match e {
        ort::LoadDynamicError::Dlopen { error, .. } => std::error::Error::source(error).map(|s| format!(" ({s})")),
        _ => None,
    }
    .unwrap_or_default()
}

fn describe(rt: &Runtime) -> String {
    format!("ONNX Runtime {} ({})", rt.version, rt.path.display())
}

/// What [`init`] decided, if it was called: `Ok` with the library's description, or why not.
pub fn status() -> Option<Result<String, Unavailable>> {
    RUNTIME
        .get()
        .map(|outcome| outcome.as_ref().map(describe).map_err(Clone::clone))
}

/// A model compiled by ONNX Runtime: one session per concurrent caller.
pub struct OrtModel {
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// For each session input, in session order: its position in the signature.
    input_order: Vec<usize>,
    /// For each signature output: its position among the session's outputs.
    output_positions: Vec<usize>,
}

impl OrtModel {
    /// Compiles `bytes` (the verified file contents) into `sessions` sessions (at least one).
    /// `inputs` and `outputs` are the signature's names: [`OrtModel::run`] takes and returns
    /// tensors in that order.
    ///
    /// # Errors
    /// The library is not loaded, ONNX Runtime refuses the model, or its inputs and outputs are
    /// not the signature's.
    pub fn new(bytes: &[u8], sessions: usize, inputs: &[&str], outputs: &[&str]) -> Result<Self, OrtError> {
        let rt = match RUNTIME.get() {
            Some(Ok(rt)) => rt,
            Some(Err(e)) => return Err(e.clone().into()),
            None => return Err(Unavailable::NotLoaded.into()),
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
            .map_err(OrtError::Compile)?;
        let (input_order, output_positions) = {
            let first = sessions[0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let position = |outlets: &[ort::value::Outlet], name: &str| outlets.iter().position(|o| o.name() == name);
            let input_order: Option<Vec<usize>> = first
                .inputs()
                .iter()
                .map(|o| inputs.iter().position(|&name| name == o.name()))
                .collect();
            let output_positions: Option<Vec<usize>> =
                outputs.iter().map(|name| position(first.outputs(), name)).collect();
            match (input_order, output_positions) {
                (Some(i), Some(o)) if i.len() == inputs.len() => (i, o),
                _ => {
                    let names = |outlets: &[ort::value::Outlet]| {
                        outlets.iter().map(|o| o.name().to_string()).collect::<Vec<_>>()
                    };
                    let ours = |names: &[&str]| names.iter().map(|n| (*n).to_string()).collect();
                    return Err(OrtError::Names {
                        theirs_in: names(first.inputs()),
                        theirs_out: names(first.outputs()),
                        ours_in: ours(inputs),
                        ours_out: ours(outputs),
                    });
                }
            }
        };
        Ok(Self {
            sessions,
            next: AtomicUsize::new(0),
            input_order,
            output_positions,
        })
    }

    /// Runs `inputs` (in signature order) and returns the outputs in signature order. Inputs are
    /// passed as views (no copy) by position; each output is copied once into a tract tensor.
    ///
    /// # Errors
    /// ONNX Runtime's error, or an element type it does not share with tract.
    pub fn run(&self, inputs: &[TValue]) -> Result<TVec<TValue>, OrtError> {
        let values = self
            .input_order
            .iter()
            .map(|&i| tensor_ref(&inputs[i]))
            .collect::<Result<TVec<_>, OrtError>>()?;
        let mut session = self.session();
        let outputs = session.run(&values[..]).map_err(OrtError::Run)?;
        self.output_positions
            .iter()
            .map(|&j| to_tract(&outputs[j]).map(TValue::from))
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
fn tensor_ref(t: &Tensor) -> Result<ort::session::SessionInputValue<'_>, OrtError> {
    let shape = t.shape();
    with_element!(
        t.datum_type(),
        T => {
            let data = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<T>())
                .map_err(OrtError::View)?;
            TensorRef::<T>::from_array_view((shape, data))
                .map(Into::into)
                .map_err(OrtError::Input)
        },
        |other| Err(OrtError::InputType(other))
    )
}

/// Copies an output into a tract tensor.
fn to_tract(value: &DynValue) -> Result<Tensor, OrtError> {
    let ort::value::ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(OrtError::NotTensor(value.dtype().to_string()));
    };
    let dt = datum(*ty).ok_or_else(|| OrtError::Unserved(ty.to_string()))?;
    with_element!(
        dt,
        T => {
            let (shape, data) = value.try_extract_tensor::<T>().map_err(OrtError::Extract)?;
            let dims: TVec<usize> = shape.iter().map(|&d| d as usize).collect();
            Tensor::from_shape(&dims, data).map_err(OrtError::View)
        },
        |other| Err(OrtError::OutputType(other))
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
