//! The one small interface in front of the engines that compute a model: tract (pure Rust, the
//! default) and, with the cargo feature `onnxruntime`, ONNX Runtime. Both take and return tract
//! tensors, the request path's one tensor type; tract's plan and ort's sessions stay in this
//! module's room.

use tract_onnx::prelude::{TValue, TVec};

use super::Plan;

/// Which engine computes a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// tract: pure Rust, always available.
    #[default]
    Tract,
    /// ONNX Runtime's shared library, loaded at start-up (cargo feature `onnxruntime`).
    Onnxruntime,
}

impl EngineKind {
    /// The name in flags, logs, metrics and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
        }
    }

    /// The Open Inference Protocol `platform` (Triton's names where Triton has one).
    pub fn platform(self) -> &'static str {
        match self {
            Self::Tract => "tract_onnx",
            Self::Onnxruntime => "onnxruntime_onnx",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The engine a server asks for (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum EngineChoice {
    /// tract for every model.
    Tract,
    /// ONNX Runtime for every model it computes as tract does; tract for the others.
    Onnxruntime,
    /// Per model, whichever engine computes it faster at load (ONNX Runtime only if it agrees
    /// with tract and is clearly faster); tract when ONNX Runtime cannot be used. The default.
    #[default]
    Auto,
}

impl EngineChoice {
    /// The name in flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
            Self::Auto => "auto",
        }
    }

    /// Whether ONNX Runtime's library is needed.
    pub fn wants_onnxruntime(self) -> bool {
        self != Self::Tract
    }
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a process wants its models computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineSettings {
    /// The engine asked for.
    pub preferred: EngineChoice,
    /// How many threads may run one model at the same time (ONNX Runtime keeps a session for
    /// each): the compute threads, or the runtime threads for models that run inline.
    pub concurrency: usize,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            preferred: EngineChoice::Tract,
            concurrency: 1,
        }
    }
}

/// Why ONNX Runtime cannot compute models in this process (decided once, at start-up).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unavailable {
    /// This binary was built without it.
    #[error("this modeld was built without the cargo feature `onnxruntime`")]
    NotBuilt,
    /// Nothing asked for it.
    #[error("ONNX Runtime was not loaded")]
    NotLoaded,
    /// Its library could not be loaded (not found, not ONNX Runtime, too old).
    #[cfg(feature = "onnxruntime")]
    #[error("cannot load ONNX Runtime from {}: {source}{}", path.display(), super::onnxruntime::dlerror(source))]
    Load {
        /// The library, resolved.
        path: std::path::PathBuf,
        /// ort's error (dlopen's own words are its source).
        #[source]
        source: std::sync::Arc<ort::LoadDynamicError>,
    },
    /// The library loaded but would not start.
    #[cfg(feature = "onnxruntime")]
    #[error("cannot start ONNX Runtime from {}: {source}", path.display())]
    Start {
        /// The library, resolved.
        path: std::path::PathBuf,
        /// ort's error.
        #[source]
        source: std::sync::Arc<ort::Error>,
    },
}

/// Why an engine did not compute a model on some inputs.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// tract refused or failed.
    #[error("{0:#}")]
    Tract(#[source] tract_onnx::prelude::TractError),
    /// ONNX Runtime refused or failed.
    #[cfg(feature = "onnxruntime")]
    #[error(transparent)]
    Onnxruntime(#[from] super::onnxruntime::OrtError),
    /// The engine panicked (a faulty model on some inputs); the panic was contained.
    #[error("the engine panicked at {place}: {message}")]
    Panicked {
        /// The panic's place, without the machine's directories.
        place: String,
        /// The panic's message, cut short.
        message: String,
    },
}

/// Loads the library a preferred engine needs, once per process, and says what happened: `Ok`
/// with a description of what will compute models, or `Err` with why models will be computed
/// by tract instead.
///
/// # Errors
/// The preferred engine cannot be used here.
pub fn prepare(preferred: EngineChoice, library: Option<&std::path::Path>) -> Result<String, Unavailable> {
    if !preferred.wants_onnxruntime() {
        return Ok("tract".into());
    }
    #[cfg(feature = "onnxruntime")]
    let loaded = super::onnxruntime::init(library);
    #[cfg(not(feature = "onnxruntime"))]
    let loaded = {
        let _ = library;
        Err(Unavailable::NotBuilt)
    };
    match preferred {
        EngineChoice::Auto => loaded.map(|what| format!("tract or {what}, whichever computes each model faster")),
        _ => loaded,
    }
}

/// How to get ONNX Runtime's library, for the messages that say it is missing.
#[cfg(feature = "onnxruntime")]
pub const HOW_TO_GET_ONNXRUNTIME: &str = "To use it: `bash scripts/onnxruntime.sh` (fetches the library from PyPI into \
     target/onnxruntime), then start with --onnxruntime-lib target/onnxruntime/libonnxruntime.so.1.31.1 \
     (or set ORT_DYLIB_PATH); --engine tract silences this";
/// How to get ONNX Runtime's library, for the messages that say it is missing.
#[cfg(not(feature = "onnxruntime"))]
pub const HOW_TO_GET_ONNXRUNTIME: &str =
    "To use it: build modeld with its default features (cargo feature `onnxruntime`); --engine tract silences this";

/// What [`prepare`] decided for ONNX Runtime, if it was asked.
pub fn onnxruntime_status() -> Option<Result<String, Unavailable>> {
    #[cfg(feature = "onnxruntime")]
    return super::onnxruntime::status();
    #[cfg(not(feature = "onnxruntime"))]
    return Some(Err(Unavailable::NotBuilt));
}

/// A model ready to compute; cloning shares it.
#[derive(Clone)]
pub enum Engine {
    /// tract's optimised plan.
    Tract(Plan),
    /// ONNX Runtime sessions.
    #[cfg(feature = "onnxruntime")]
    Onnxruntime(std::sync::Arc<super::onnxruntime::OrtModel>),
}

impl Engine {
    /// Which engine this is.
    pub fn kind(&self) -> EngineKind {
        match self {
            Self::Tract(_) => EngineKind::Tract,
            #[cfg(feature = "onnxruntime")]
            Self::Onnxruntime(_) => EngineKind::Onnxruntime,
        }
    }

    /// Computes the outputs (in signature order) of inputs given in signature order.
    ///
    /// # Errors
    /// The engine's error.
    /// A panic inside the engine (a faulty model on some inputs) costs this one call: it is
    /// caught and returned as [`EngineError::Panicked`] naming its place, with nothing printed
    /// and no backtrace taken (see [`install_panic_hook`]); the caller logs it like any other
    /// engine error.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>, EngineError> {
        contained(|| match self {
            Self::Tract(plan) => plan.run(inputs).map_err(EngineError::Tract),
            #[cfg(feature = "onnxruntime")]
            Self::Onnxruntime(m) => m.run(&inputs).map_err(EngineError::Onnxruntime),
        })
    }
}

thread_local! {
    /// Set while this thread runs an engine; the panic hook then keeps quiet and leaves the
    /// panic's place for [`contained`] to report.
    static IN_ENGINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PANIC_PLACE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Installs the process's panic hook (once): a panic inside an engine is left to the engine
/// call that caught it, which turns it into an error; every other panic goes to the previous hook
/// (Rust's own, with its backtrace when `RUST_BACKTRACE` asks for one), as a bug should.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_ENGINE.with(std::cell::Cell::get) {
                let place = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
                PANIC_PLACE.with(|p| *p.borrow_mut() = place);
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f` (an engine call), turning a panic into an error.
fn contained<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    let was = IN_ENGINE.with(|e| e.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_ENGINE.with(|e| e.set(was));
    outcome.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let place = PANIC_PLACE.with(|p| p.borrow_mut().take()).unwrap_or_default();
        // The caller reports it as it reports any engine error (the request path: one
        // rate-limited line with the request id; the client hears "internal error").
        Err(EngineError::Panicked {
            place: short_place(&place),
            message: crate::error::cut(&message, 300).into_owned(),
        })
    })
}

/// A panic's place without the machine's directories: `tract-core-0.21.13/src/ops/x.rs:55`
/// for a dependency's source, the last three parts of any other path.
fn short_place(place: &str) -> String {
    if let Some((_, rest)) = place.split_once("/registry/src/") {
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_string();
    }
    let parts: Vec<&str> = place.split('/').collect();
    parts[parts.len().saturating_sub(3)..].join("/")
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind().name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_thread_goes_on() {
        install_panic_hook();
        let got: Result<(), EngineError> = contained(|| panic!("index out of bounds: the len is 1 but the index is 2"));
        let e = got.unwrap_err().to_string();
        assert!(e.starts_with("the engine panicked at "), "{e}");
        assert!(
            e.ends_with("index out of bounds: the len is 1 but the index is 2"),
            "{e}"
        );
        assert!(e.contains("engine.rs:"), "names the place: {e}");
        assert!(!e.contains("/work/") && !e.starts_with('/'), "no machine paths: {e}");
        assert!(!IN_ENGINE.with(std::cell::Cell::get), "the flag is cleared");
        assert_eq!(contained(|| Ok::<_, EngineError>(7)).unwrap(), 7);
        let plain = contained(|| Err::<(), _>(EngineError::Tract(tract_onnx::prelude::TractError::msg("plain"))));
        assert_eq!(plain.unwrap_err().to_string(), "plain");
    }

    #[test]
    fn places_lose_the_machine_directories() {
        assert_eq!(
            short_place(
                "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/tract-core-0.21.13/src/ops/a.rs:55"
            ),
            "tract-core-0.21.13/src/ops/a.rs:55"
        );
        assert_eq!(short_place("/work/main/src/model/engine.rs:9"), "src/model/engine.rs:9");
        assert_eq!(short_place("src/lib.rs:1"), "src/lib.rs:1");
        assert_eq!(short_place(""), "");
    }
}
