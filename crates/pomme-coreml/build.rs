//! Compiles the Core ML format subset in `proto/` with protox (pure Rust, no
//! system protoc) and prost-build, and writes a table of the field numbers of
//! the `Model.Type` and `NeuralNetworkLayer.layer` oneofs so the reader can
//! name a model's or layer's type from the wire. On Apple targets it also
//! links CoreGraphics (see `main`).
#![expect(
    clippy::disallowed_methods,
    reason = "a build script reads what cargo sets for it"
)]

use std::fmt::Write as _;
use std::path::PathBuf;

fn main() {
    // Apple: "In macOS, in order for the system to provide a default Metal
    // device object, you must link to the Core Graphics framework" (else
    // MTLCreateSystemDefaultDevice returns nil in command-line tools, and the
    // host sampling reports no GPU). Nothing else pulls it in, so it is
    // linked explicitly into every binary using this crate on Apple targets.
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple") {
        println!("cargo:rustc-link-lib=framework=CoreGraphics");
    }
    let files = [
        "proto/Model.proto",
        "proto/FeatureTypes.proto",
        "proto/NeuralNetwork.proto",
        "proto/MIL.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"]).unwrap_or_else(|e| panic!("protox: {e}"));

    let mut table = String::new();
    for (message, oneof, konst) in [
        ("Model", "Type", "MODEL_TYPES"),
        ("NeuralNetworkLayer", "layer", "LAYER_TYPES"),
    ] {
        let msg = fds
            .file
            .iter()
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == message)
            .unwrap_or_else(|| panic!("message {message} missing"));
        let index =
            msg.oneof_decl
                .iter()
                .position(|o| o.name() == oneof)
                .unwrap_or_else(|| panic!("oneof {message}.{oneof} missing")) as i32;
        writeln!(
            table,
            "/// `{message}.{oneof}` oneof: (field number, field name)."
        )
        .unwrap();
        writeln!(table, "pub const {konst}: &[(u32, &str)] = &[").unwrap();
        for f in msg.field.iter().filter(|f| f.oneof_index == Some(index)) {
            writeln!(table, "    ({}, {:?}),", f.number(), f.name()).unwrap();
        }
        writeln!(table, "];").unwrap();
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("oneof_tables.rs"), table).expect("write oneof table");

    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost-build: {e}"));
}
