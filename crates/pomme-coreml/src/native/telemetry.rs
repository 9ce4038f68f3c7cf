//! macOS host sampling: NSProcessInfo, sysctl, Metal and Core ML's device list.

use super::compile::{sysctl_string, sysctl_u64};
use super::macos_at_least;
use crate::host::{MacHost, MetalDevice, ThermalState};
use objc2::runtime::AnyObject;
use objc2_core_ml::{MLAllComputeDevices, MLNeuralEngineComputeDevice};
use objc2_foundation::{NSProcessInfo, NSProcessInfoThermalState};
use objc2_metal::{MTLCreateSystemDefaultDevice, MTLDevice};

pub(crate) fn sample() -> MacHost {
    let pi = NSProcessInfo::processInfo();
    let thermal_state = match pi.thermalState() {
        NSProcessInfoThermalState::Nominal => ThermalState::Nominal,
        NSProcessInfoThermalState::Fair => ThermalState::Fair,
        NSProcessInfoThermalState::Serious => ThermalState::Serious,
        NSProcessInfoThermalState::Critical => ThermalState::Critical,
        _ => ThermalState::Unknown,
    };
    let metal = MTLCreateSystemDefaultDevice().map(|d| MetalDevice {
        name: d.name().to_string(),
        unified_memory: d.hasUnifiedMemory(),
        recommended_working_set_bytes: d.recommendedMaxWorkingSetSize(),
    });
    let (ane_available, ane_cores) = neural_engine();
    MacHost {
        os_version: pi.operatingSystemVersionString().to_string(),
        cpu_model: sysctl_string(c"machdep.cpu.brand_string"),
        cpu_cores: pi.activeProcessorCount(),
        memory_total_bytes: sysctl_u64(c"hw.memsize").or(Some(pi.physicalMemory())),
        thermal_state,
        low_power_mode: macos_at_least(12, 0).then(|| pi.isLowPowerModeEnabled()),
        metal,
        ane_available,
        ane_cores,
    }
}

/// Whether Core ML lists a Neural Engine (`MLAllComputeDevices`, macOS 14+).
/// Before 14 it is `None` on Apple Silicon (present on every M-series chip,
/// but not asked) and `Some(false)` on Intel Macs.
fn neural_engine() -> (Option<bool>, Option<usize>) {
    if !macos_at_least(14, 0) {
        return (cfg!(target_arch = "x86_64").then_some(false), None);
    }
    // SAFETY: MLAllComputeDevices exists on macOS 14+ (checked above).
    let devices = unsafe { MLAllComputeDevices() };
    for d in devices.iter() {
        let obj: &AnyObject = d.as_ref();
        if let Some(ane) = obj.downcast_ref::<MLNeuralEngineComputeDevice>() {
            // SAFETY: getter on a device object Core ML returned.
            let cores = unsafe { ane.totalCoreCount() };
            return (Some(true), usize::try_from(cores).ok());
        }
    }
    (Some(false), None)
}
