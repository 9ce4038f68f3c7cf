//! Host telemetry: what the machine is and how it is doing (chip, memory,
//! thermal state, GPUs, Neural Engine), for `pomme devices` and the server's
//! node gauges and thermal governor.
//!
//! [`collect`] fills one platform-independent [`Telemetry`]: on macOS (with
//! the `coreml` feature) from what `pomme_coreml::host` samples natively;
//! elsewhere from `/proc/cpuinfo`, `/proc/meminfo`, `/sys/class/thermal` and
//! `nvidia-smi` when it runs. It lives here rather than in the Core ML crate so
//! that every build has it. Fields a platform cannot report are `None`;
//! collecting never fails.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The system's thermal pressure (macOS `NSProcessInfoThermalState`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ThermalState {
    Nominal,
    Fair,
    Serious,
    Critical,
    /// Not reported on this platform (Linux: see [`Telemetry::thermal_zones`]).
    #[default]
    Unknown,
}

impl ThermalState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ThermalState::Nominal => "nominal",
            ThermalState::Fair => "fair",
            ThermalState::Serious => "serious",
            ThermalState::Critical => "critical",
            ThermalState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for ThermalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Linux thermal zone reading.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThermalZone {
    /// `type` of the zone (`x86_pkg_temp`, `acpitz`, ...).
    pub name: String,
    pub celsius: f64,
}

/// A GPU: Metal device on macOS, NVIDIA GPU (via `nvidia-smi`) on Linux.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    /// Dedicated memory (NVIDIA).
    pub memory_total_bytes: Option<u64>,
    /// Whether the GPU shares memory with the CPU (Metal `hasUnifiedMemory`).
    pub unified_memory: Option<bool>,
    /// Metal `recommendedMaxWorkingSetSize`.
    pub recommended_working_set_bytes: Option<u64>,
    pub driver: Option<String>,
    pub temperature_celsius: Option<f64>,
    pub utilization_percent: Option<f64>,
}

/// A snapshot of the machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// `macos`, `linux`, ...
    pub os: String,
    /// OS version text (macOS `operatingSystemVersionString`, Linux kernel release).
    pub os_version: Option<String>,
    /// Chip / CPU model (`Apple M2 Pro`, `AMD EPYC 7B13`).
    pub cpu_model: Option<String>,
    /// Logical CPUs.
    pub cpu_cores: usize,
    pub memory_total_bytes: Option<u64>,
    /// Linux `MemAvailable`.
    pub memory_available_bytes: Option<u64>,
    pub thermal_state: ThermalState,
    pub thermal_zones: Vec<ThermalZone>,
    /// macOS Low Power Mode (12+).
    pub low_power_mode: Option<bool>,
    pub gpus: Vec<GpuInfo>,
    /// Whether Core ML lists a Neural Engine (macOS 14+); `Some(false)` off Apple platforms.
    pub ane_available: Option<bool>,
    /// Neural Engine core count, when Core ML reports it.
    pub ane_cores: Option<usize>,
}

impl fmt::Display for Telemetry {
    /// One `key: value` line per fact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
        writeln!(
            f,
            "os: {}{}",
            self.os,
            self.os_version
                .as_ref()
                .map_or(String::new(), |v| format!(" {v}"))
        )?;
        writeln!(
            f,
            "cpu: {} ({} cores)",
            self.cpu_model.as_deref().unwrap_or("unknown"),
            self.cpu_cores
        )?;
        if let Some(t) = self.memory_total_bytes {
            match self.memory_available_bytes {
                Some(a) => writeln!(f, "memory: {} ({} available)", gib(t), gib(a))?,
                None => writeln!(f, "memory: {}", gib(t))?,
            }
        }
        writeln!(f, "thermal state: {}", self.thermal_state)?;
        for z in &self.thermal_zones {
            writeln!(f, "thermal zone {}: {:.1} °C", z.name, z.celsius)?;
        }
        if let Some(lp) = self.low_power_mode {
            writeln!(f, "low power mode: {}", if lp { "on" } else { "off" })?;
        }
        for g in &self.gpus {
            let mut parts = vec![g.name.clone()];
            if let Some(m) = g.memory_total_bytes {
                parts.push(gib(m));
            }
            if g.unified_memory == Some(true) {
                parts.push("unified memory".into());
            }
            if let Some(w) = g.recommended_working_set_bytes {
                parts.push(format!("working set {}", gib(w)));
            }
            if let Some(d) = &g.driver {
                parts.push(format!("driver {d}"));
            }
            if let Some(t) = g.temperature_celsius {
                parts.push(format!("{t:.0} °C"));
            }
            if let Some(u) = g.utilization_percent {
                parts.push(format!("{u:.0}% busy"));
            }
            writeln!(f, "gpu: {}", parts.join(", "))?;
        }
        match (self.ane_available, self.ane_cores) {
            (Some(true), Some(n)) => writeln!(f, "neural engine: yes ({n} cores)")?,
            (Some(true), None) => writeln!(f, "neural engine: yes")?,
            (Some(false), _) => writeln!(f, "neural engine: no")?,
            (None, _) => writeln!(f, "neural engine: unknown")?,
        }
        Ok(())
    }
}

/// Reads the machine's telemetry now.
pub fn collect() -> Telemetry {
    #[cfg(all(feature = "coreml", target_os = "macos"))]
    {
        from_mac(pomme_coreml::host::sample())
    }
    #[cfg(not(all(feature = "coreml", target_os = "macos")))]
    {
        linux::collect()
    }
}

/// Bytes of memory a new model can still take without the system swapping
/// or killing processes, for the runtime's memory guard: Linux
/// `MemAvailable`; `None` where it is not known (macOS: not read yet), and
/// the guard then stays out of the way.
pub fn available_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| linux::parse_meminfo(&s).1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// What macOS reported, as a [`Telemetry`].
#[cfg(feature = "coreml")]
pub fn from_mac(h: pomme_coreml::host::MacHost) -> Telemetry {
    use pomme_coreml::host::ThermalState as Mac;
    Telemetry {
        os: "macos".into(),
        os_version: Some(h.os_version),
        cpu_model: h.cpu_model,
        cpu_cores: h.cpu_cores,
        memory_total_bytes: h.memory_total_bytes,
        memory_available_bytes: None,
        thermal_state: match h.thermal_state {
            Mac::Nominal => ThermalState::Nominal,
            Mac::Fair => ThermalState::Fair,
            Mac::Serious => ThermalState::Serious,
            Mac::Critical => ThermalState::Critical,
            Mac::Unknown => ThermalState::Unknown,
        },
        thermal_zones: Vec::new(),
        low_power_mode: h.low_power_mode,
        gpus: h
            .metal
            .map(|m| GpuInfo {
                name: m.name,
                unified_memory: Some(m.unified_memory),
                recommended_working_set_bytes: Some(m.recommended_working_set_bytes),
                ..GpuInfo::default()
            })
            .into_iter()
            .collect(),
        ane_available: h.ane_available,
        ane_cores: h.ane_cores,
    }
}

/// Readers for Linux's text interfaces (pure parsers, tested on any platform).
pub mod linux {
    use super::{GpuInfo, Telemetry, ThermalZone};
    use std::path::Path;

    /// Telemetry from `/proc`, `/sys` and `nvidia-smi`.
    pub fn collect() -> Telemetry {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let meminfo = read("/proc/meminfo").map(|s| parse_meminfo(&s));
        Telemetry {
            os: std::env::consts::OS.to_string(),
            os_version: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
            cpu_model: read("/proc/cpuinfo").and_then(|s| cpu_model(&s)),
            cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_total_bytes: meminfo.and_then(|m| m.0),
            memory_available_bytes: meminfo.and_then(|m| m.1),
            thermal_zones: thermal_zones(Path::new("/sys/class/thermal")),
            gpus: nvidia_gpus(),
            ane_available: Some(false),
            ..Telemetry::default()
        }
    }

    /// `model name` (x86) or `Model` / `Hardware` (ARM boards) from `/proc/cpuinfo`.
    pub fn cpu_model(cpuinfo: &str) -> Option<String> {
        ["model name", "Model", "Hardware", "cpu model"]
            .iter()
            .find_map(|key| {
                cpuinfo.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == *key && !v.trim().is_empty()).then(|| v.trim().to_string())
                })
            })
    }

    /// (`MemTotal`, `MemAvailable`) in bytes from `/proc/meminfo`.
    pub fn parse_meminfo(text: &str) -> (Option<u64>, Option<u64>) {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
                kib.checked_mul(1024)
            })
        };
        (field("MemTotal"), field("MemAvailable"))
    }

    /// Every `thermal_zone*` under `dir` with a readable type and temperature.
    pub fn thermal_zones(dir: &Path) -> Vec<ThermalZone> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut zones: Vec<(String, ThermalZone)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let file = e.file_name().to_string_lossy().into_owned();
                if !file.starts_with("thermal_zone") {
                    return None;
                }
                let name = std::fs::read_to_string(e.path().join("type")).ok()?;
                let milli: f64 = std::fs::read_to_string(e.path().join("temp"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((
                    file,
                    ThermalZone {
                        name: name.trim().to_string(),
                        celsius: milli / 1000.0,
                    },
                ))
            })
            .collect();
        zones.sort_by(|a, b| a.0.cmp(&b.0));
        zones.into_iter().map(|(_, z)| z).collect()
    }

    /// The query pomme sends to `nvidia-smi`.
    pub const NVIDIA_SMI_ARGS: [&str; 2] = [
        "--query-gpu=name,memory.total,driver_version,temperature.gpu,utilization.gpu",
        "--format=csv,noheader,nounits",
    ];

    /// NVIDIA GPUs, when `nvidia-smi` runs (found on the `PATH`) and answers.
    pub fn nvidia_gpus() -> Vec<GpuInfo> {
        std::process::Command::new("nvidia-smi")
            .args(NVIDIA_SMI_ARGS)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)))
            .unwrap_or_default()
    }

    /// Parses `nvidia-smi` CSV output for [`NVIDIA_SMI_ARGS`] (memory in MiB).
    pub fn parse_nvidia_smi(csv: &str) -> Vec<GpuInfo> {
        csv.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split(',').map(str::trim).collect();
                let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
                GpuInfo {
                    name: f.first().unwrap_or(&"").to_string(),
                    memory_total_bytes: num(1).map(|mib| (mib * 1024.0 * 1024.0) as u64),
                    driver: f.get(2).filter(|s| !s.is_empty()).map(|s| s.to_string()),
                    temperature_celsius: num(3),
                    utilization_percent: num(4),
                    ..GpuInfo::default()
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::linux::{cpu_model, parse_meminfo, parse_nvidia_smi, thermal_zones};

    #[test]
    fn parses_proc_files() {
        let cpu = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n";
        assert_eq!(
            cpu_model(cpu).as_deref(),
            Some("AMD EPYC 7B13 64-Core Processor")
        );
        assert_eq!(
            cpu_model("processor : 0\nModel : Raspberry Pi 4\n").as_deref(),
            Some("Raspberry Pi 4")
        );
        assert_eq!(cpu_model(""), None);
        let mem = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   12288000 kB\n";
        assert_eq!(
            parse_meminfo(mem),
            (Some(24_576_000 * 1024), Some(12_288_000 * 1024))
        );
        assert_eq!(parse_meminfo("garbage"), (None, None));
    }

    #[test]
    fn parses_nvidia_smi() {
        let g = parse_nvidia_smi(
            "NVIDIA H100 80GB HBM3, 81559, 550.54.15, 34, 0\n\nNVIDIA A10G, 23028, 535.1, [N/A], 7\n",
        );
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].name, "NVIDIA H100 80GB HBM3");
        assert_eq!(g[0].memory_total_bytes, Some(81559 * 1024 * 1024));
        assert_eq!(g[0].driver.as_deref(), Some("550.54.15"));
        assert_eq!(g[0].temperature_celsius, Some(34.0));
        assert_eq!(g[1].temperature_celsius, None);
        assert_eq!(g[1].utilization_percent, Some(7.0));
    }

    #[test]
    fn reads_thermal_zones_from_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (i, (name, temp)) in [("acpitz", "41000"), ("x86_pkg_temp", "55500")]
            .iter()
            .enumerate()
        {
            let z = dir.path().join(format!("thermal_zone{i}"));
            std::fs::create_dir(&z).unwrap();
            std::fs::write(z.join("type"), format!("{name}\n")).unwrap();
            std::fs::write(z.join("temp"), format!("{temp}\n")).unwrap();
        }
        std::fs::create_dir(dir.path().join("cooling_device0")).unwrap();
        let zones = thermal_zones(dir.path());
        assert_eq!(zones.len(), 2);
        assert_eq!(zones[1].name, "x86_pkg_temp");
        assert!((zones[1].celsius - 55.5).abs() < 1e-9);
        assert!(thermal_zones(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn collect_never_fails_and_prints() {
        let t = super::collect();
        assert!(t.cpu_cores >= 1);
        let text = t.to_string();
        assert!(text.starts_with("os: "), "{text}");
        assert!(text.contains("neural engine:"));
    }
}
