//! Compiles the repository's `proto/grpc_service.proto` with protox (pure
//! Rust, no system `protoc`) and generates the tonic service, client and
//! prost messages from it.
#![expect(
    clippy::disallowed_methods,
    reason = "a build script reads what cargo sets for it"
)]

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): a build script binary reused
    // from another checkout of the same workspace must look in this one.
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["grpc_service.proto", "model_config.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", proto_dir.join(f).display());
    }
    let fds = protox::compile(["grpc_service.proto"], [&proto_dir])?;
    // Kept for tests that check field numbers against Triton's descriptors.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("inference_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Tensor payloads stay reference-counted instead of being copied into Vec<u8>.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
