//! Compiles our `.proto` files with protox (pure Rust: no `protoc` needed on the machine)
//! and generates tonic clients and servers, plus the public API's descriptor set for gRPC
//! reflection (the peer-only `quorate.raft.v1` is deliberately left out of it).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/quorate/v1/ratelimiter.proto",
        "proto/quorate/raft/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let public = protox::compile([files[0]], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("quorate_v1_descriptor.bin"), public.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".quorate.raft.v1")
        .compile_fds(fds)?;
    Ok(())
}
