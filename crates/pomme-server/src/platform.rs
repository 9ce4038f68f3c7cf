//! What the server must know about backends and devices but does not name
//! itself: which pomme backends a Triton `platform` / `backend` value means,
//! and which device a Triton `KIND_GPU` instance group runs on. The caller
//! hands them in (the CLI passes `pomme-backends`' table, tests their own),
//! so the one place naming backends stays `pomme-backends`.

use pomme_core::DeviceKind;

/// Backend and device names the server takes from its caller.
#[derive(Clone, Copy, Debug)]
pub struct Platform {
    /// A Triton `platform` / `backend` value (`onnxruntime_onnx`, `tract`...)
    /// → the pomme backends to try, in preference order; `None` when the
    /// platform is not supported.
    pub triton_backends: fn(&str) -> Option<Vec<&'static str>>,
    /// The device of a `KIND_GPU` instance group.
    pub gpu_device: DeviceKind,
}

impl Platform {
    pub fn new(
        triton_backends: fn(&str) -> Option<Vec<&'static str>>,
        gpu_device: DeviceKind,
    ) -> Platform {
        Platform {
            triton_backends,
            gpu_device,
        }
    }
}
