//! Generates the prost types for `hookfold/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler), so building needs no system `protoc`.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    const PROTO_ROOT: &str = "hookfold";
    const FILES: &[&str] = &["hookfold/v1/incident.proto"];

    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    // protox bundles the well-known types (google/protobuf/timestamp.proto), so the only
    // include directory is the crate root.
    let descriptors = protox::compile(FILES, ["."])?;
    prost_build::Config::new()
        // BTreeMap keeps `details` in key order: the same input then encodes to the same
        // bytes, which deterministic event ids and replay comparisons rely on.
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
