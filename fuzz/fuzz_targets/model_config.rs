//! A model's `config.pbtxt` (Triton text format) or `config.toml` → the
//! repository loader (`repository::load_model`), which parses it and turns it
//! into a `ModelSpec`; plus the bare pbtxt parser.
//!
//! Input layout: byte 0's low bit picks toml (1) or pbtxt (0); the rest is the
//! file. The loader reads from disk, so a scratch repository is set up once per
//! process with `m/1/model.onnx`.
#![no_main]

/// The server tests' Triton platform table (the same names as the CLI's).
#[path = "../../crates/pomme-server/tests/common/platform.rs"]
mod platform;

use libfuzzer_sys::fuzz_target;
use pomme_server::{pbtxt, repository};
use std::path::PathBuf;
use std::sync::OnceLock;

fn repo() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("pomme-fuzz-repo-{}", std::process::id()));
        std::fs::create_dir_all(p.join("m/1")).unwrap();
        std::fs::write(p.join("m/1/model.onnx"), b"not read by the loader").unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let repo = repo();
    let (write, other) = if sel & 1 == 1 {
        ("config.toml", "config.pbtxt")
    } else {
        let _ = pbtxt::parse(text);
        ("config.pbtxt", "config.toml")
    };
    let _ = std::fs::remove_file(repo.join("m").join(other));
    std::fs::write(repo.join("m").join(write), text).unwrap();
    let _ = repository::load_model(repo, "m", &platform::platform());
});
