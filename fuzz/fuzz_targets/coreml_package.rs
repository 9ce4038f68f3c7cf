//! An `.mlpackage` directory → `pomme_coreml::read`: `Manifest.json` (path
//! resolution, escapes out of the package) plus the root spec it names.
//!
//! Input layout: `u16 LE manifest length | manifest bytes | model.mlmodel bytes`.
//! The spec is written to the path the canonical manifest names, so mutations
//! of either part reach the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

fn package() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let p = base.join(format!("pomme-fuzz-{}.mlpackage", std::process::id()));
        std::fs::create_dir_all(p.join("Data/com.apple.CoreML/weights")).unwrap();
        p
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
    let (manifest, spec) = data[2..].split_at(n);
    let dir = package();
    std::fs::write(dir.join("Manifest.json"), manifest).unwrap();
    std::fs::write(dir.join("Data/com.apple.CoreML/model.mlmodel"), spec).unwrap();
    if let Ok(info) = pomme_coreml::read(dir) {
        let _ = info.to_model_info();
        let _ = pomme_coreml::ane_check::check(&info);
    }
});
