//! Compiles `proto/edr/v1/*.proto` with protox, a pure-Rust protobuf compiler, so that no
//! system `protoc` is needed.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "edr/v1/capabilities.proto",
    "edr/v1/enrollment.proto",
    "edr/v1/telemetry.proto",
    "edr/v1/command.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
