//! Core ML `.mlmodel` spec bytes → the pure-Rust reader, the summary it gives
//! the runtime, and the Neural Engine pre-check over what it read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = pomme_coreml::reader::read_mlmodel_bytes(data) {
        let _ = info.to_model_info();
        let _ = info.has_flexible_inputs();
        let _ = pomme_coreml::ane_check::check(&info);
    }
});
