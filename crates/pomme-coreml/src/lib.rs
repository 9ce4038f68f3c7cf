//! Core ML for pomme.
//!
//! - [`reader`] (every platform, pure Rust): reads `.mlmodel` files and
//!   `.mlpackage` bundles (a subset of the public Core ML protobuf spec, compiled
//!   with prost + protox) into a [`reader::CoreMlInfo`], convertible to
//!   [`pomme_core::ModelInfo`].
//! - [`ane_check`] (every platform): flags what is known to push work off the
//!   Apple Neural Engine, from the parsed model, each rule with its source.
//! - [`placement`]: the [`placement::PlacementReport`] type (every platform) and
//!   [`placement::compute_plan`], which asks Core ML's `MLComputePlan` on macOS
//!   14.4+ and answers `Error::Unavailable` elsewhere.
//! - [`telemetry`]: a platform-independent [`telemetry::Telemetry`] snapshot
//!   (macOS: chip, memory, thermal state, low-power mode, Metal, ANE; Linux:
//!   `/proc`, `/sys/class/thermal`, `nvidia-smi`).
//! - [`CoreMlBackend`]: the [`pomme_core::Backend`]. `inspect` works everywhere
//!   (through the reader); `load` runs models through Core ML on macOS and is
//!   `Error::Unavailable` elsewhere.
//!
//! **What was verified, honestly:** nothing in this crate has run on Apple
//! hardware. The native code (the private `native` module, `cfg(target_os =
//! "macos")`) is only type-checked and linted for `aarch64-apple-darwin` on
//! Linux (`scripts/check-apple.sh`). The reader, the pre-check, the placement
//! report's formatting and the Linux telemetry ran on Linux, against fixtures
//! made by coremltools 9.0 (`scripts/make_coreml_fixtures.py`).
//! `scripts/macos-smoke.sh` is the first thing to run on a Mac.
//!
//! `unsafe` is denied crate-wide and allowed only in `native`, where every
//! block carries a `// SAFETY:` comment.
#![deny(unsafe_code)]

pub mod ane_check;
pub mod placement;
mod proto;
pub mod reader;
pub mod telemetry;

#[cfg(target_os = "macos")]
#[allow(unsafe_code)]
mod native;

use pomme_core::{
    Availability, Backend, DeviceInfo, DeviceKind, Error, LoadOptions, LoadedModel, ModelArtifact,
    ModelFormat, ModelInfo, Result,
};
use std::sync::Arc;

pub use ane_check::{Finding, Severity};
pub use placement::{PlacementReport, compute_plan};
pub use reader::{CoreMlInfo, read};
pub use telemetry::{Telemetry, ThermalState};

/// The Core ML backend. Cheap to construct; `load` needs macOS 12.3+.
///
/// Load options: `device` picks the compute units (`ane` → `cpuAndNeuralEngine`,
/// `metal` → `cpuAndGPU`, `cpu` → `cpuOnly`, `auto` → `all`), or
/// `extra["compute_units"]` names them directly. `extra["cache_dir"]` sets where
/// compiled `.mlmodelc` bundles are kept (default `$POMME_COREML_CACHE`, else
/// `~/Library/Caches/pomme/coreml`). `extra["virtual_batch"] = "false"` turns off
/// the symbolic batch offered for models whose inputs and outputs all start
/// with a fixed 1 (such batches run through `MLArrayBatchProvider`).
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreMlBackend;

impl CoreMlBackend {
    pub fn new() -> CoreMlBackend {
        CoreMlBackend
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

    fn devices(&self) -> Vec<DeviceInfo> {
        let t = telemetry::collect();
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
        let gpu = t.gpus.first().map(|g| g.name.clone());
        vec![
            dev(
                DeviceKind::Cpu,
                t.cpu_model.clone().unwrap_or_else(|| "CPU".into()),
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
                match t.ane_cores {
                    Some(n) => format!("Apple Neural Engine ({n} cores)"),
                    None => "Apple Neural Engine".into(),
                },
                t.ane_available != Some(false),
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
        #[cfg(target_os = "macos")]
        {
            native::load(artifact, options)
        }
        #[cfg(not(target_os = "macos"))]
        {
            let _ = options;
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
