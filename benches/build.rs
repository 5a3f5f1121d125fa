//! Compiles the etcd v3 KV subset in `proto/etcd/` with protox (no system `protoc`) into a
//! tonic client, so the harness can drive etcd with the same workloads as ringkv.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let files = ["etcd/kv.proto"];
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure().build_server(false).bytes(".").compile_fds(fds)?;
    for f in files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    Ok(())
}
