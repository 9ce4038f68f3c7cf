//! The native Core ML backend (macOS only, through objc2 / objc2-core-ml).
//!
//! Type-checked for `aarch64-apple-darwin` on Linux; never run (no Apple
//! hardware was available). Every Objective-C call is `unsafe` in the bindings;
//! each block says why the call is sound. Selectors newer than the running OS
//! are gated with [`macos_at_least`] and answer `Error::Unavailable`, because
//! objc2 does not check availability and a missing selector raises an
//! Objective-C exception. Every Core ML call (compile, load, describe,
//! predict, compute plan) also runs inside [`catching`]: an exception that
//! slips through becomes an error for that call instead of aborting the
//! server (type-checked, not run).

pub(crate) mod compile;
pub(crate) mod model;
pub(crate) mod pixels;
pub(crate) mod plan;
pub(crate) mod telemetry;

use crate::options::{ComputeUnits, CoreMlOptions};
use objc2::rc::Retained;
use objc2_core_ml::MLComputeUnits;
use objc2_foundation::{NSError, NSOperatingSystemVersion, NSProcessInfo, NSString, NSURL};
use pomme_core::{DeviceKind, Error, Result};
use std::path::{Path, PathBuf};

pub(crate) use model::load;
pub(crate) use plan::{compute_plan, plan_for_compiled};

/// Runs `f`, catching an Objective-C exception raised inside it. Core ML
/// raises exceptions (not NSErrors) for problems it finds late, and an
/// uncaught one aborts the process. `Err` carries the exception's name and
/// reason on one line. Rust panics pass through untouched.
pub(crate) fn catch_objc<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    objc2::exception::catch(std::panic::AssertUnwindSafe(f)).map_err(|e| {
        e.map_or_else(|| "nil exception".to_string(), |e| format!("{e:?}"))
            .replace('\n', " ")
    })
}

/// [`catch_objc`] for a call returning a pomme result: an exception becomes
/// `Error::Internal` naming `what` (a 500 for the request, logged).
pub(crate) fn catching<R>(what: &str, f: impl FnOnce() -> Result<R>) -> Result<R> {
    catch_objc(f).unwrap_or_else(|e| {
        tracing::error!(exception = %e, "Core ML raised an Objective-C exception during {what}");
        Err(Error::Internal(format!(
            "Core ML raised an Objective-C exception during {what}: {e}"
        )))
    })
}

/// Whether the running macOS is at least `major.minor`.
pub(crate) fn macos_at_least(major: isize, minor: isize) -> bool {
    NSProcessInfo::processInfo().isOperatingSystemAtLeastVersion(NSOperatingSystemVersion {
        majorVersion: major,
        minorVersion: minor,
        patchVersion: 0,
    })
}

/// `Error::Unavailable` unless macOS is at least `major.minor`.
pub(crate) fn require_macos(major: isize, minor: isize, what: &str) -> Result<()> {
    if macos_at_least(major, minor) {
        Ok(())
    } else {
        Err(Error::Unavailable(format!(
            "{what} needs macOS {major}.{minor} or later (running {})",
            NSProcessInfo::processInfo().operatingSystemVersionString()
        )))
    }
}

/// The oldest macOS the backend runs on: `getBytesWithHandler:` (12.3) reads outputs.
pub(crate) const MIN_MACOS: (isize, isize) = (12, 3);

/// One line from an `NSError`.
pub(crate) fn ns_error(e: &NSError) -> String {
    format!(
        "{} (domain {}, code {})",
        e.localizedDescription(),
        e.domain(),
        e.code()
    )
    .replace('\n', " ")
}

pub(crate) fn file_url(p: &Path) -> Retained<NSURL> {
    NSURL::fileURLWithPath(&NSString::from_str(&p.to_string_lossy()))
}

pub(crate) fn url_path(u: &NSURL) -> Option<PathBuf> {
    u.path().map(|s| PathBuf::from(s.to_string()))
}

/// Compute units from the `compute_units` option, else from the device.
pub(crate) fn compute_units(
    opts: &CoreMlOptions,
    device: DeviceKind,
) -> Result<(MLComputeUnits, &'static str)> {
    let Some(units) = opts.compute_units else {
        return units_for_device(device);
    };
    let ml = match units {
        ComputeUnits::All => MLComputeUnits::All,
        ComputeUnits::CpuOnly => MLComputeUnits::CPUOnly,
        ComputeUnits::CpuAndGpu => MLComputeUnits::CPUAndGPU,
        ComputeUnits::CpuAndNeuralEngine => MLComputeUnits::CPUAndNeuralEngine,
    };
    Ok((ml, units.as_str()))
}

/// The options' name for Core ML compute units.
pub(crate) fn units_kind(units: MLComputeUnits) -> ComputeUnits {
    match units {
        u if u == MLComputeUnits::CPUOnly => ComputeUnits::CpuOnly,
        u if u == MLComputeUnits::CPUAndGPU => ComputeUnits::CpuAndGpu,
        u if u == MLComputeUnits::CPUAndNeuralEngine => ComputeUnits::CpuAndNeuralEngine,
        _ => ComputeUnits::All,
    }
}

pub(crate) fn units_for_device(device: DeviceKind) -> Result<(MLComputeUnits, &'static str)> {
    Ok(match device {
        DeviceKind::Ane => (MLComputeUnits::CPUAndNeuralEngine, "cpuAndNeuralEngine"),
        DeviceKind::Metal => (MLComputeUnits::CPUAndGPU, "cpuAndGPU"),
        DeviceKind::Cpu => (MLComputeUnits::CPUOnly, "cpuOnly"),
        DeviceKind::Auto => (MLComputeUnits::All, "all"),
        DeviceKind::Cuda => {
            return Err(Error::Unavailable(
                "Core ML runs on cpu, metal (gpu), ane or auto, not cuda".into(),
            ));
        }
    })
}

/// Gate for the compute units themselves: `CPUAndNeuralEngine` is macOS 13+.
pub(crate) fn check_units(units: MLComputeUnits) -> Result<()> {
    if units == MLComputeUnits::CPUAndNeuralEngine {
        require_macos(13, 0, "compute units cpuAndNeuralEngine")?;
    }
    Ok(())
}
