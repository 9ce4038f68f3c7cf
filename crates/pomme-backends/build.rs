//! Links CoreGraphics into binaries on Apple targets: Apple's Metal docs say
//! "in order for the system to provide a default Metal device object, you
//! must link to the Core Graphics framework"; without it
//! `MTLCreateSystemDefaultDevice` returns nil in command-line tools, and
//! tract's Metal runtime and Core ML's GPU device go missing. Every backend
//! reaches the binary through this crate, so the link lives here (pomme-coreml
//! links it too, for library users who depend on it directly).
#![expect(
    clippy::disallowed_methods,
    reason = "a build script reads what cargo sets for it"
)]

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple") {
        println!("cargo:rustc-link-lib=framework=CoreGraphics");
    }
}
