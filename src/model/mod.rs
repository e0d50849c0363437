//! Models in memory: where files may come from ([`root`]), how they are loaded, verified and
//! warmed up ([`loader`]), which engine computes them, cross-checked (`choose`), their signature's element types as tract's ([`datum`]), the hot-swappable slot
//! that serves them ([`slot`]), the bounded cache of candidates tried by name ([`cache`]), and
//! what models cost in memory ([`memory`]).
//!
//! Engines' types stay inside this module: [`Plan`] is the only name for tract's runnable model,
//! [`engine::Engine`] the one interface the request path calls, and ort's types live in
//! `onnxruntime` (cargo feature `onnxruntime`).

pub mod cache;
mod choose;
pub mod engine;
mod lean;
pub mod loader;
pub mod memory;
pub mod objects;
#[cfg(feature = "onnxruntime")]
mod onnxruntime;
pub mod root;
pub mod slot;

pub use crate::signature::{DataType, Signature, TensorSpec};
pub use engine::{Engine, EngineChoice, EngineKind, EngineSettings};
pub use loader::{LoadedModel, load_model, load_model_named};
pub use root::ModelRoot;
pub use slot::Slot;

/// tract's element type for `dt`.
pub fn datum(dt: DataType) -> tract_onnx::prelude::DatumType {
    use tract_onnx::prelude::DatumType;
    match dt {
        DataType::Fp32 => DatumType::F32,
        DataType::Fp64 => DatumType::F64,
        DataType::Int8 => DatumType::I8,
        DataType::Int16 => DatumType::I16,
        DataType::Int32 => DatumType::I32,
        DataType::Int64 => DatumType::I64,
        DataType::Uint8 => DatumType::U8,
        DataType::Uint16 => DatumType::U16,
        DataType::Uint32 => DatumType::U32,
        DataType::Uint64 => DatumType::U64,
        DataType::Bool => DatumType::Bool,
    }
}

/// modeld's element type for tract's `dt`, if modeld serves it.
pub fn served_datatype(dt: tract_onnx::prelude::DatumType) -> Option<DataType> {
    DataType::ALL.into_iter().find(|&d| datum(d) == dt)
}

/// tract's optimised, runnable model. The one place that names tract's plan type.
pub type Plan = std::sync::Arc<tract_onnx::prelude::TypedRunnableModel>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_types_round_trip_through_tract() {
        for d in DataType::ALL {
            assert_eq!(served_datatype(datum(d)), Some(d));
            assert_eq!(d.size(), datum(d).size_of());
        }
    }
}
