//! `pomme.toml` → `FileConfig::parse` → merge with (empty) flags → validate:
//! the path every server start takes before binding a port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pomme_server::config::{FileConfig, ServerArgs, ServerConfig};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = FileConfig::parse(text, Path::new("pomme.toml")) else {
        return;
    };
    if let Ok(config) = ServerConfig::merge(file, &ServerArgs::default()) {
        let _ = config.validate();
    }
});
