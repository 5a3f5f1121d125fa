//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no system `protoc` is
//! needed) and generates the tonic/prost code. The encoded descriptor set is written too, for
//! gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "ringkv/v1/kv.proto",
        "ringkv/v1/admin.proto",
        "ringkv/v1/events.proto",
        "ringkv/v1/raft.proto",
        "ringkv/v1/membership.proto",
    ];
    let fds = protox::compile(files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ringkv_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
