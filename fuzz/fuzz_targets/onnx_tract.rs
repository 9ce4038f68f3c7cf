//! ONNX bytes → the tract backend's full load path (protobuf decode, graph
//! analysis, type inference, declutter, signature). A malformed or hostile
//! model must come back as an `Err`, never a panic, abort or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pomme_core::{Backend, LoadOptions};
use pomme_tract::TractBackend;
use std::path::PathBuf;
use std::sync::OnceLock;

/// tract reads models from a path, so each input is written to one file per
/// process (in /dev/shm when present, so the disk is not worn).
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("pomme-fuzz-{}.onnx", std::process::id()))
    })
}

fuzz_target!(
    init: {
        // pomme-tract runs tract's parser under catch_unwind (tract panics on
        // some malformed graphs). libfuzzer-sys's panic hook aborts on every
        // panic, caught or not, so put the default hook back: a panic pomme
        // catches is then an `Err` like any other, and one that escapes still
        // reaches the harness, which aborts (a crash).
        drop(std::panic::take_hook());
    },
    |data: &[u8]| {
        let path = scratch();
        std::fs::write(path, data).expect("write scratch model");
        let backend = TractBackend::new();
        let Ok(artifact) = TractBackend::artifact_for_path(path) else {
            return;
        };
        let options = LoadOptions {
            threads: Some(1),
            ..LoadOptions::default()
        };
        let _ = backend.load(&artifact, &options);
    }
);
