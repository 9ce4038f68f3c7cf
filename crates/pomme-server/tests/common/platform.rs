//! The Triton platform table the server's tests run with: the same names and
//! device as the one `pomme-backends` hands the CLI. The library's unit tests,
//! the examples and the CLI's server tests include this file too (`#[path]`),
//! so there is one test table.

use pomme_core::DeviceKind;

/// Triton `platform` / `backend` → pomme backends, in preference order.
pub fn triton_backends(platform: &str) -> Option<Vec<&'static str>> {
    Some(match platform {
        "onnxruntime_onnx" | "onnxruntime" | "onnx" => vec!["ort", "tract"],
        "tract" => vec!["tract"],
        "ort" => vec!["ort"],
        "coreml" => vec!["coreml"],
        _ => return None,
    })
}

/// The device of a `KIND_GPU` instance group.
pub const GPU_DEVICE: DeviceKind = DeviceKind::Cuda;

/// The server's [`Platform`](pomme_server::Platform) over this table.
pub fn platform() -> pomme_server::Platform {
    pomme_server::Platform::new(triton_backends, GPU_DEVICE)
}
