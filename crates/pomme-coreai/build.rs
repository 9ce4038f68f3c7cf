//! Builds pomme's Swift shim over Core AI (`swift/PommeCoreAI.swift`) into a
//! static library and sets `cfg(pomme_coreai_shim)`, when building for macOS
//! with `swiftc` at hand; on any other target, or without `swiftc`, it does
//! nothing and Core AI runs through the Python engine.
//!
//! - `POMME_COREAI_NO_SHIM` (any value): never build the shim.
//! - `POMME_COREAI_REQUIRE_SHIM=1`: fail the build when the shim cannot be
//!   built (the Mac proof kit sets it; otherwise a failure is a warning).
//! - `SWIFTC`: the compiler (default `xcrun --find swiftc`, else `swiftc`).
//! - `MACOSX_DEPLOYMENT_TARGET`: the library's minimum macOS (at least 12,
//!   where Swift's concurrency runtime is part of the OS).
//!
//! The Swift code touches Core AI only behind `#available(macOS 27.0, *)`,
//! so its references to CoreAI.framework are weak imports; the framework and
//! the Swift runtime are linked through the library's autolink entries, and
//! the linker finds them through the search paths printed here.
#![expect(
    clippy::disallowed_methods,
    reason = "a build script reads what cargo sets for it"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = "swift/PommeCoreAI.swift";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pomme_coreai_shim)");
    println!("cargo::rerun-if-changed={SOURCE}");
    for var in [
        "POMME_COREAI_NO_SHIM",
        "POMME_COREAI_REQUIRE_SHIM",
        "SWIFTC",
        "MACOSX_DEPLOYMENT_TARGET",
        "SDKROOT",
        "DEVELOPER_DIR",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("macos")
        || std::env::var_os("POMME_COREAI_NO_SHIM").is_some()
    {
        return;
    }
    let required = std::env::var("POMME_COREAI_REQUIRE_SHIM").as_deref() == Ok("1");
    match build() {
        Ok(()) => println!("cargo::rustc-cfg=pomme_coreai_shim"),
        Err(Skip::NoCompiler(why) | Skip::Failed(why)) if required => {
            panic!("POMME_COREAI_REQUIRE_SHIM=1 but the Swift shim cannot be built: {why}")
        }
        // Expected when type-checking for macOS on another OS: no noise.
        Err(Skip::NoCompiler(_)) => {}
        Err(Skip::Failed(why)) => println!(
            "cargo::warning=pomme-coreai: no Swift shim ({why}); Core AI will run through the Python engine"
        ),
    }
}

/// Why the shim was not built.
enum Skip {
    /// No `swiftc` runs here.
    NoCompiler(String),
    /// `swiftc` is there but the build failed (e.g. an SDK without CoreAI).
    Failed(String),
}

fn build() -> Result<(), Skip> {
    let swiftc = swiftc().ok_or_else(|| Skip::NoCompiler("no swiftc found".into()))?;
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => "arm64",
        Ok("x86_64") => "x86_64",
        other => return Err(Skip::Failed(format!("unsupported architecture {other:?}"))),
    };
    let triple = format!("{arch}-apple-macos{}", deployment_target());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut cmd = Command::new(&swiftc);
    cmd.args(["-emit-library", "-static", "-parse-as-library"])
        .args(["-module-name", "PommeCoreAI", "-swift-version", "5", "-O"])
        .args(["-target", &triple])
        .arg("-module-cache-path")
        .arg(out.join("module-cache"))
        .arg("-o")
        .arg(out.join("libPommeCoreAI.a"))
        .arg(manifest.join(SOURCE));
    if let Some(sdk) = sdk() {
        cmd.arg("-sdk").arg(sdk);
    }
    let done = cmd
        .output()
        .map_err(|e| Skip::Failed(format!("{}: {e}", swiftc.display())))?;
    if !done.status.success() {
        let err = String::from_utf8_lossy(&done.stderr);
        let first: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error"))
            .take(5)
            .collect();
        return Err(Skip::Failed(format!(
            "swiftc failed ({}): {}",
            done.status,
            if first.is_empty() {
                err.trim().to_string()
            } else {
                first.join(" | ")
            }
        )));
    }
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=PommeCoreAI");
    for dir in runtime_library_paths(&swiftc, &triple) {
        println!("cargo::rustc-link-search=native={dir}");
    }
    Ok(())
}

/// `SWIFTC`, else Xcode's (`xcrun --find swiftc`), else `swiftc` on the PATH;
/// `None` when none runs.
fn swiftc() -> Option<PathBuf> {
    let xcrun = stdout(Command::new("xcrun").args(["--sdk", "macosx", "--find", "swiftc"]));
    std::env::var_os("SWIFTC")
        .map(PathBuf::from)
        .into_iter()
        .chain(xcrun.map(PathBuf::from))
        .chain(std::iter::once(PathBuf::from("swiftc")))
        .find(|c| runs(c))
}

fn runs(swiftc: &Path) -> bool {
    Command::new(swiftc)
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sdk() -> Option<String> {
    std::env::var("SDKROOT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| stdout(Command::new("xcrun").args(["--sdk", "macosx", "--show-sdk-path"])))
}

/// `MACOSX_DEPLOYMENT_TARGET` (rustc's own default when unset is 11.0), at
/// least 12.0: below it the Swift concurrency runtime is a back-deployed
/// library found through an rpath that a dependency cannot add to the final
/// link.
fn deployment_target() -> String {
    let given = std::env::var("MACOSX_DEPLOYMENT_TARGET").unwrap_or_default();
    let major: u32 = given
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major >= 12 { given } else { "12.0".into() }
}

/// Where the Swift runtime and its compatibility libraries are, from
/// `swiftc -print-target-info` (`paths.runtimeLibraryPaths`).
fn runtime_library_paths(swiftc: &Path, triple: &str) -> Vec<String> {
    let info = stdout(Command::new(swiftc).args(["-target", triple, "-print-target-info"]));
    let parsed: Option<serde_json::Value> = info.and_then(|t| serde_json::from_str(&t).ok());
    let mut paths: Vec<String> = parsed
        .as_ref()
        .and_then(|v| v["paths"]["runtimeLibraryPaths"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !paths.iter().any(|p| p == "/usr/lib/swift") {
        paths.push("/usr/lib/swift".into());
    }
    paths
}

fn stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}
