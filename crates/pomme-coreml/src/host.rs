//! What macOS says about the machine: chip, memory, thermal state, Low Power
//! Mode, the Metal GPU and the Neural Engine.
//!
//! Only the sampling lives here, because it needs the Objective-C bindings
//! this crate already has (`sample`, macOS only). Host telemetry as a whole
//! (Linux `/proc`, NVIDIA GPUs, the snapshot the server exports) is
//! `pomme_backends::telemetry`, which calls `sample` on macOS.

/// macOS's thermal pressure (`NSProcessInfoThermalState`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThermalState {
    Nominal,
    Fair,
    Serious,
    Critical,
    #[default]
    Unknown,
}

/// The system Metal device.
#[derive(Clone, Debug, PartialEq)]
pub struct MetalDevice {
    pub name: String,
    /// Whether the GPU shares memory with the CPU (`hasUnifiedMemory`).
    pub unified_memory: bool,
    /// `recommendedMaxWorkingSetSize`.
    pub recommended_working_set_bytes: u64,
}

/// One reading of the machine, as macOS reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MacHost {
    /// `operatingSystemVersionString`.
    pub os_version: String,
    /// `machdep.cpu.brand_string` (`Apple M2 Pro`).
    pub cpu_model: Option<String>,
    /// Active logical CPUs.
    pub cpu_cores: usize,
    pub memory_total_bytes: Option<u64>,
    pub thermal_state: ThermalState,
    /// Low Power Mode (macOS 12+).
    pub low_power_mode: Option<bool>,
    pub metal: Option<MetalDevice>,
    /// Whether Core ML lists a Neural Engine (macOS 14+; before 14 `None` on
    /// Apple Silicon, `Some(false)` on Intel Macs).
    pub ane_available: Option<bool>,
    /// Neural Engine cores, when Core ML reports them.
    pub ane_cores: Option<usize>,
}

/// Reads the machine now (never fails: what cannot be read is left out).
#[cfg(target_os = "macos")]
pub fn sample() -> MacHost {
    crate::native::telemetry::sample()
}
