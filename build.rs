//! Generates the gRPC code from `proto/` with protox (pure Rust: no system protoc).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/modeld/v1/tensor.proto",
        "proto/modeld/v1/inference.proto",
        "proto/modeld/v1/registry.proto",
        "proto/inference/model_config.proto",
        "proto/inference/grpc_service.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds migrations/ at compile time: a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("modeld_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        // The Open Inference Protocol's parameter maps as BTreeMaps: a response's two parameters
        // (`role`, `model_id`) then cost no hasher or hashing, on every request's path.
        .btree_map(".inference")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
