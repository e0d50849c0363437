//! Models in memory: where files may come from ([`root`]), how they are loaded, verified and
//! warmed up ([`loader`]), what they take and return ([`signature`]), the hot-swappable slot
//! that serves them ([`slot`]), the bounded cache of candidates tried by name ([`cache`]), and
//! what models cost in memory ([`memory`]).
//!
//! Engines' types stay inside this module: [`Plan`] is the only name for tract's runnable model,
//! [`engine::Engine`] the one interface the request path calls, and ort's types live in
//! `onnxruntime` (cargo feature `onnxruntime`).

pub mod cache;
pub mod engine;
mod lean;
pub mod loader;
pub mod memory;
pub mod objects;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;
pub mod root;
pub mod signature;
pub mod slot;

pub use engine::{Engine, EngineChoice, EngineKind, EngineSettings};
pub use loader::{LoadedModel, load_model, load_model_named};
pub use root::ModelRoot;
pub use signature::{DataType, Signature, TensorSpec};
pub use slot::Slot;

/// tract's optimised, runnable model. The one place that names tract's plan type.
pub type Plan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;
