//! Models in memory: where files may come from ([`root`]), how they are loaded, verified and
//! warmed up ([`loader`]), what they take and return ([`signature`]), and the hot-swappable
//! slot that serves them ([`slot`]).
//!
//! tract's types stay inside this module: [`Plan`] is the only name for tract's runnable model.

pub mod loader;
pub mod root;
pub mod signature;
pub mod slot;

pub use loader::{LoadedModel, load_model};
pub use root::ModelRoot;
pub use signature::{DataType, Signature, TensorSpec};
pub use slot::Slot;

/// tract's optimised, runnable model. The one place that names tract's plan type.
pub type Plan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;
