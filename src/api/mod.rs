//! gRPC services. One file per service, each a thin layer over [`crate::control`] and
//! [`crate::serving`]; proto <-> domain conversions live in [`convert`].

pub mod convert;
pub mod inference;
pub mod kserve;
pub mod registry;

/// Code generated from `proto/modeld/v1`.
pub mod pb {
    #![expect(missing_docs, reason = "generated code")]
    #![expect(clippy::all, reason = "generated code")]
    tonic::include_proto!("modeld.v1");
}

/// Code generated from `proto/inference` (Open Inference Protocol, KServe v2).
pub mod kserve_pb {
    #![expect(missing_docs, reason = "generated code")]
    #![expect(clippy::all, reason = "generated code")]
    tonic::include_proto!("inference");
}

/// Encoded descriptors of every modeld proto, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modeld_descriptor.bin"));
