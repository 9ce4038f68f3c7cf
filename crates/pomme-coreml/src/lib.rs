//! Core ML for pomme.
//!
//! - [`reader`] (every platform, pure Rust): reads `.mlmodel` files and
//!   `.mlpackage` bundles (a subset of the public Core ML protobuf spec) into a
//!   [`reader::CoreMlInfo`], convertible to [`pomme_core::ModelInfo`].
//! - [`convert`] (every platform): image tensor ↔ pixel buffer layouts,
//!   classifier outputs, per-sequence state bookkeeping; the
//!   plain-Rust halves of the native backend's conversions.
//! - [`cache`] (every platform): the compiled-model cache's key (content and
//!   OS build, re-hashed only when files change), LRU size cap, and the
//!   weight bytes of compiled bundles.
//! - [`ane_check`] (every platform): flags what is known to push work off the
//!   Apple Neural Engine, each rule with its source.
//! - [`placement`]: the [`placement::PlacementReport`] type and
//!   [`placement::compute_plan`] (Core ML's `MLComputePlan`, macOS 14.4+).
//! - [`host`]: what macOS reports about the machine, for
//!   `pomme_backends::telemetry`.
//! - [`CoreMlBackend`]: the [`pomme_core::Backend`]; `inspect` works everywhere
//!   (through the reader), `load` runs models through Core ML on macOS and is
//!   `Error::Unavailable` elsewhere. Load options are [`CoreMlOptions`].
//!
//! The native code (the private `native` module, macOS only) has been
//! type-checked and linted for `aarch64-apple-darwin` (`scripts/check-apple.sh`)
//! but never run on Apple hardware; `scripts/macos-smoke.sh` is the first thing
//! to run on a Mac. `unsafe` is denied crate-wide and allowed only in `native`,
//! where every block carries a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod ane_check;
pub mod cache;
pub mod convert;
pub mod host;
pub mod options;
pub mod placement;
pub mod predict;
mod proto;
pub mod reader;

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod native;

use pomme_core::{
    Availability, Backend, DeviceInfo, DeviceKind, Error, LoadOptions, LoadedModel, ModelArtifact,
    ModelFormat, ModelInfo, Result,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use ane_check::{Finding, Severity};
pub use options::CoreMlOptions;
pub use placement::{PlacementReport, compute_plan};
pub use reader::{CoreMlInfo, read};

/// The Core ML backend. Cheap to construct; `load` needs macOS 12.3+.
#[derive(Clone, Debug)]
pub struct CoreMlBackend {
    cache_dir: PathBuf,
}

impl CoreMlBackend {
    /// A backend keeping compiled models in `pomme-cache/coreml` in the temp
    /// dir; see [`CoreMlBackend::with_cache_dir`].
    pub fn new() -> CoreMlBackend {
        CoreMlBackend::with_cache_dir(std::env::temp_dir().join("pomme-cache").join("coreml"))
    }

    /// A backend keeping compiled `.mlmodelc` bundles in `dir` (cached by
    /// content, OS build and compute units) unless a load names its own
    /// ([`CoreMlOptions::cache_dir`]).
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> CoreMlBackend {
        CoreMlBackend {
            cache_dir: dir.into(),
        }
    }

    /// Where compiled models are kept (also what [`compute_plan`] wants).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
}

impl Default for CoreMlBackend {
    fn default() -> Self {
        CoreMlBackend::new()
    }
}

const FORMATS: [ModelFormat; 1] = [ModelFormat::CoreMl];

impl Backend for CoreMlBackend {
    fn name(&self) -> &'static str {
        "coreml"
    }

    fn formats(&self) -> &[ModelFormat] {
        &FORMATS
    }

    fn availability(&self) -> Availability {
        #[cfg(target_os = "macos")]
        {
            let (major, minor) = native::MIN_MACOS;
            match native::require_macos(major, minor, "the Core ML backend") {
                Ok(()) => Availability::Available,
                Err(e) => Availability::Unavailable(e.to_string()),
            }
        }
        #[cfg(not(target_os = "macos"))]
        {
            Availability::Unavailable(
                "Core ML runs on macOS only (this build can still inspect Core ML models)".into(),
            )
        }
    }

    fn option_keys(&self) -> &'static [&'static str] {
        options::KEYS
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        let available = self.availability();
        let dev = |kind, name: String, ok: bool, why: &str| DeviceInfo {
            kind,
            name,
            availability: if ok && available.is_available() {
                Availability::Available
            } else if !available.is_available() {
                available.clone()
            } else {
                Availability::Unavailable(why.to_string())
            },
        };
        #[cfg(target_os = "macos")]
        let h = host::sample();
        #[cfg(not(target_os = "macos"))]
        let h = host::MacHost::default();
        let gpu = h.metal.map(|m| m.name);
        vec![
            dev(
                DeviceKind::Cpu,
                h.cpu_model.unwrap_or_else(|| "CPU".into()),
                true,
                "",
            ),
            dev(
                DeviceKind::Metal,
                gpu.clone().unwrap_or_else(|| "GPU".into()),
                gpu.is_some(),
                "no Metal device",
            ),
            dev(
                DeviceKind::Ane,
                match h.ane_cores {
                    Some(n) => format!("Apple Neural Engine ({n} cores)"),
                    None => "Apple Neural Engine".into(),
                },
                h.ane_available != Some(false),
                "no Neural Engine",
            ),
            dev(
                DeviceKind::Auto,
                "Core ML (all compute units)".into(),
                true,
                "",
            ),
        ]
    }

    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo> {
        Ok(reader::read(&artifact.path)?.to_model_info())
    }

    fn load(
        &self,
        artifact: &ModelArtifact,
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        if artifact.format != ModelFormat::CoreMl {
            return Err(Error::InvalidModelFormat(format!(
                "{} is {}, not a Core ML model",
                artifact.path.display(),
                artifact.format
            )));
        }
        let opts = CoreMlOptions::from_load_options(options)?;
        #[cfg(target_os = "macos")]
        {
            native::load(artifact, options, &opts, &self.cache_dir)
        }
        #[cfg(not(target_os = "macos"))]
        {
            let _ = opts;
            Err(Error::Unavailable(format!(
                "cannot run {}: Core ML runs on macOS only",
                artifact.path.display()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_basics() {
        let b = CoreMlBackend::new();
        assert_eq!(b.name(), "coreml");
        assert_eq!(b.formats(), &[ModelFormat::CoreMl]);
        assert_eq!(b.devices().len(), 4);
        #[cfg(not(target_os = "macos"))]
        {
            assert!(!b.availability().is_available());
            let a = ModelArtifact {
                path: "m.mlpackage".into(),
                format: ModelFormat::CoreMl,
            };
            let e = b.load(&a, &LoadOptions::default()).err().unwrap();
            assert!(matches!(e, Error::Unavailable(_)), "{e}");
        }
    }
}
