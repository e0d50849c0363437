//! gRPC services. One file per service (`inference.rs` modeld.v1 Inference, `registry.rs`
//! ModelRegistry, with its file downloads in `download.rs`, `kserve/` the Open Inference
//! Protocol), each a thin layer over the [`crate::ops`] services it is handed; proto <-> domain
//! conversions live in [`convert`]; `gate.rs` is every call's way in (request id, tokens, the body's
//! charge: one layer), `later.rs` answers while
//! the registry is not reachable yet.

pub mod convert;
pub mod download;
pub mod gate;
pub mod inference;
pub mod kserve;
pub mod later;
pub mod registry;

use std::time::{Duration, Instant};

/// The request's deadline, from the `grpc-timeout` header the client sent (gRPC over HTTP/2:
/// up to 8 digits and a unit, H M S m u n). `None` when absent or malformed.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    Some(Instant::now() + parse_grpc_timeout(value)?)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5x", "123456789S", "-5S", "5.0S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
