//! What the server must know about backends and devices but does not name
//! itself: which pomme backends a Triton `platform` / `backend` value means,
//! which device a Triton `KIND_GPU` instance group runs on, and which device a
//! model whose configuration names none runs on. The caller
//! hands them in (the CLI passes `pomme-backends`' table, tests their own),
//! so the one place naming backends stays `pomme-backends`. With them comes
//! the host's one cache root, under which served quantization keeps its files.

use pomme_core::{DeviceKind, ModelFormat};
use std::path::PathBuf;

/// Backend and device names, and the cache root, the server takes from its caller.
#[derive(Clone, Debug)]
pub struct Platform {
    /// A Triton `platform` / `backend` value (`onnxruntime_onnx`, `tract`...)
    /// → the pomme backends to try, in preference order; `None` when the
    /// platform is not supported.
    pub triton_backends: fn(&str) -> Option<Vec<&'static str>>,
    /// The device of a `KIND_GPU` instance group.
    pub gpu_device: DeviceKind,
    /// The device of a model whose configuration names none, by its format
    /// (default: the CPU for every format).
    pub default_device: fn(ModelFormat) -> DeviceKind,
    /// pomme's cache root; quantized models go to `quantized/` under it unless
    /// a model's `[quantization] cache_dir` says otherwise. Default:
    /// `pomme-cache` in the temp dir (the CLI passes the configured root).
    pub cache_root: PathBuf,
}

impl Platform {
    pub fn new(
        triton_backends: fn(&str) -> Option<Vec<&'static str>>,
        gpu_device: DeviceKind,
    ) -> Platform {
        Platform {
            triton_backends,
            gpu_device,
            default_device: |_| DeviceKind::Cpu,
            cache_root: std::env::temp_dir().join("pomme-cache"),
        }
    }

    /// The same, with this device for models whose configuration names none.
    pub fn with_default_device(mut self, f: fn(ModelFormat) -> DeviceKind) -> Platform {
        self.default_device = f;
        self
    }

    /// The same, caching under `root`.
    pub fn with_cache_root(mut self, root: PathBuf) -> Platform {
        self.cache_root = root;
        self
    }
}
