//! Which tract runtime serves which pomme device, and whether it is usable here.
//!
//! tract registers runtimes through `inventory` (`cpu` always, `metal` when
//! tract-metal is linked, `cuda` when tract-cuda is); we look them up by name.
//! GPU runtimes create their device context lazily and `expect()` on failure,
//! so every call that may touch a GPU runs under `catch_unwind` and a panic
//! becomes [`Error::Unavailable`].

use crate::convert::error_line;
use pomme_core::{Availability, DeviceInfo, DeviceKind, Error, Result};
use std::panic::{AssertUnwindSafe, catch_unwind};
use tract_core::runtime::{Runtime, runtime_for_name};

/// Runs `f`, turning a panic into an error message that names `what`.
pub(crate) fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        format!(
            "{what} failed (an internal error in the engine): {}",
            pomme_core::panic_message(p.as_ref())
        )
    })
}

fn named_runtime(name: &str) -> Result<&'static dyn Runtime> {
    match no_panic(&format!("tract's {name} runtime"), || {
        runtime_for_name(name)
    }) {
        Ok(Ok(Some(rt))) => Ok(rt),
        Ok(Ok(None)) => Err(Error::Unavailable(format!(
            "tract's {name} runtime is not linked into this build"
        ))),
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "tract's {name} runtime cannot start here: {}",
            error_line(&e)
        ))),
        Err(panic) => Err(Error::Unavailable(panic)),
    }
}

/// The tract runtime for `device`, and the device the model will report.
/// `Auto` picks the CPU: it is tract's reference runtime and needs no warm-up.
pub(crate) fn runtime_for(device: DeviceKind) -> Result<(&'static dyn Runtime, DeviceKind)> {
    match device {
        DeviceKind::Cpu | DeviceKind::Auto => Ok((named_runtime("cpu")?, DeviceKind::Cpu)),
        DeviceKind::Metal => Ok((metal_runtime()?, DeviceKind::Metal)),
        DeviceKind::Cuda => Ok((cuda_runtime()?, DeviceKind::Cuda)),
        DeviceKind::Ane => Err(Error::Unavailable(
            "tract cannot run on the Apple Neural Engine (use the coreml backend)".into(),
        )),
    }
}

#[cfg(target_vendor = "apple")]
fn metal_runtime() -> Result<&'static dyn Runtime> {
    // tract-metal's runtime check always passes; probe for a device first so
    // that a Mac without Metal (a VM) fails here and not in a panic later.
    match no_panic("Metal device probe", tract_metal::MetalContext::new) {
        Ok(Ok(_)) => named_runtime("metal"),
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "no usable Metal device: {}",
            error_line(&e)
        ))),
        Err(panic) => Err(Error::Unavailable(panic)),
    }
}

#[cfg(not(target_vendor = "apple"))]
fn metal_runtime() -> Result<&'static dyn Runtime> {
    Err(Error::Unavailable(format!(
        "Metal needs an Apple platform (this build targets {})",
        std::env::consts::OS
    )))
}

#[cfg(all(feature = "cuda", target_os = "linux"))]
fn cuda_runtime() -> Result<&'static dyn Runtime> {
    // `check()` (run by `runtime_for_name`) dlopens the driver, cudart, NVRTC,
    // cuBLAS and cuDNN and reports the first one missing.
    named_runtime("cuda")
}

#[cfg(all(feature = "cuda", not(target_os = "linux")))]
fn cuda_runtime() -> Result<&'static dyn Runtime> {
    Err(Error::Unavailable(
        "tract's CUDA runtime is supported on Linux only".into(),
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_runtime() -> Result<&'static dyn Runtime> {
    Err(Error::Unavailable(
        "pomme-tract was built without its `cuda` feature".into(),
    ))
}

fn availability(r: Result<&'static dyn Runtime>) -> Availability {
    match r {
        Ok(_) => Availability::Available,
        Err(e) => Availability::Unavailable(match e {
            Error::Unavailable(m) => m,
            other => other.to_string(),
        }),
    }
}

/// CPU always; Metal and CUDA with whether they can be used here and why not.
pub(crate) fn devices() -> Vec<DeviceInfo> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    vec![
        DeviceInfo {
            kind: DeviceKind::Cpu,
            name: format!("CPU ({}, {threads} threads)", std::env::consts::ARCH),
            availability: Availability::Available,
        },
        DeviceInfo {
            kind: DeviceKind::Metal,
            name: "Apple GPU (Metal)".into(),
            availability: availability(metal_runtime()),
        },
        DeviceInfo {
            kind: DeviceKind::Cuda,
            name: "NVIDIA GPU (CUDA)".into(),
            availability: availability(cuda_runtime()),
        },
    ]
}
