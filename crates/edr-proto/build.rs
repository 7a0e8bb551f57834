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
    // Read at run time: a build script compiled for one checkout may be reused by cargo for
    // another checkout that shares the target directory.
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR is not set")?;
    let proto_root = PathBuf::from(manifest_dir).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;
    tonic_prost_build::configure()
        // Event JSON as `Bytes`: the Collector then decodes a batch without copying each event
        // out of the message buffer.
        .bytes(".edr.v1.BufferedRecord.ocsf_event_json")
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
