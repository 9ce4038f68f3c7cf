//! The one place that names pomme's backends.
//!
//! Everything else (runtime, server, CLI) takes `Arc<dyn Backend>`s from here.
//! Each backend is a cargo feature; the order of [`compiled`] is the default
//! preference when a model names none: tract first (pure Rust, always works),
//! then ONNX Runtime (when its library is found), then Core ML (macOS).

#![forbid(unsafe_code)]

use pomme_core::{Backend, Error, Result};
use std::sync::Arc;

/// Every backend compiled into this build, in default preference order.
#[allow(clippy::vec_init_then_push)] // each push sits behind its own feature
pub fn compiled() -> Vec<Arc<dyn Backend>> {
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn Backend>> = Vec::new();
    #[cfg(feature = "tract")]
    v.push(Arc::new(pomme_tract::TractBackend::new()));
    #[cfg(feature = "ort")]
    v.push(Arc::new(pomme_ort::OrtBackend::new()));
    #[cfg(feature = "coreml")]
    v.push(Arc::new(pomme_coreml::CoreMlBackend::new()));
    v
}

/// Names of the compiled backends.
pub fn names() -> Vec<&'static str> {
    compiled().iter().map(|b| b.name()).collect()
}

/// The backend called `name`, or an error listing the compiled ones.
pub fn by_name(name: &str) -> Result<Arc<dyn Backend>> {
    compiled()
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "backend '{name}' is not compiled in (compiled: {})",
                names().join(", ")
            ))
        })
}

/// Backend-specific reports that have no place in the generic `Backend` trait.
pub mod extras {
    #[cfg(not(feature = "coreml"))]
    use pomme_core::Error;
    use pomme_core::{DeviceKind, Result};
    use std::path::Path;

    /// Neural Engine compatibility findings for a Core ML model (every platform),
    /// one display line each, warnings first.
    pub fn ane_precheck(path: &Path) -> Result<Vec<String>> {
        #[cfg(feature = "coreml")]
        {
            let info = pomme_coreml::read(path)?;
            Ok(pomme_coreml::ane_check::check(&info)
                .iter()
                .map(|f| f.to_string())
                .collect())
        }
        #[cfg(not(feature = "coreml"))]
        {
            let _ = path;
            Err(Error::Unavailable(
                "built without the coreml feature".into(),
            ))
        }
    }

    /// Platform telemetry (chip/CPU, memory, thermal state, GPUs, Neural Engine)
    /// as display text and JSON; `None` without the coreml feature.
    pub fn telemetry() -> Option<(String, serde_json::Value)> {
        #[cfg(feature = "coreml")]
        {
            let t = pomme_coreml::telemetry::collect();
            Some((t.to_string(), serde_json::to_value(&t).unwrap_or_default()))
        }
        #[cfg(not(feature = "coreml"))]
        {
            None
        }
    }

    /// Core ML's compute plan for a model, as a printable table (macOS 14.4+;
    /// `Unavailable` elsewhere).
    pub fn coreml_placement(path: &Path, device: DeviceKind) -> Result<String> {
        #[cfg(feature = "coreml")]
        {
            Ok(pomme_coreml::compute_plan(path, device)?.to_string())
        }
        #[cfg(not(feature = "coreml"))]
        {
            let _ = (path, device);
            Err(Error::Unavailable(
                "built without the coreml feature".into(),
            ))
        }
    }
}

/// Whether the `cuda` feature was compiled in.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        #[cfg(feature = "tract")]
        assert_eq!(by_name("tract").unwrap().name(), "tract");
        let e = by_name("tpu").err().unwrap();
        assert!(e.to_string().contains("not compiled in"), "{e}");
    }
}
