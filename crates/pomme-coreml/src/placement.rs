//! Where Core ML plans to run each op: the report of `MLComputePlan` (macOS 14.4+).
//!
//! [`PlacementReport`] and its formatting are platform independent (and unit
//! tested everywhere); [`compute_plan`] fills one in on macOS and returns
//! `Error::Unavailable` elsewhere. Apple calls the devices "anticipated": this is
//! Core ML's plan for the given compute units, not a measurement.

use pomme_core::{DeviceKind, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// A Core ML compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// The Apple Neural Engine.
    Ane,
    Gpu,
    Cpu,
    /// Core ML reported no usage for the op (e.g. a `const`).
    Unknown,
}

impl ComputeDevice {
    pub const fn as_str(self) -> &'static str {
        match self {
            ComputeDevice::Ane => "ANE",
            ComputeDevice::Gpu => "GPU",
            ComputeDevice::Cpu => "CPU",
            ComputeDevice::Unknown => "-",
        }
    }
}

/// One op (ML Program) or layer (neural network) in the plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpPlacement {
    /// Op type (`conv`, `linear`) or layer type.
    pub op_type: String,
    /// The op's first output name or the layer name, when known.
    pub name: String,
    pub preferred: ComputeDevice,
    pub supported: Vec<ComputeDevice>,
    /// Core ML's estimated share of the program's cost (0..1), when given.
    pub cost: Option<f64>,
}

/// Share of ops and of estimated cost on one device.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceShare {
    pub device: ComputeDevice,
    pub ops: usize,
    /// Fraction of placed ops (ops with a preferred device).
    pub op_share: f64,
    /// Fraction of the summed estimated cost; `None` when no op has a cost.
    pub cost_share: Option<f64>,
}

/// The compute plan of one model under one compute-units setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementReport {
    /// The compiled model the plan is for.
    pub model: String,
    /// `all`, `cpuAndNeuralEngine`, `cpuAndGPU` or `cpuOnly`.
    pub compute_units: String,
    pub ops: Vec<OpPlacement>,
}

impl PlacementReport {
    /// Ops with a preferred device (Core ML gives none for constants).
    pub fn placed_ops(&self) -> impl Iterator<Item = &OpPlacement> {
        self.ops
            .iter()
            .filter(|o| o.preferred != ComputeDevice::Unknown)
    }

    /// Shares for ANE, GPU and CPU, in that order (always three entries).
    pub fn shares(&self) -> Vec<DeviceShare> {
        let placed = self.placed_ops().count();
        let total_cost: f64 = self.placed_ops().filter_map(|o| o.cost).sum();
        let any_cost = self.placed_ops().any(|o| o.cost.is_some()) && total_cost > 0.0;
        [ComputeDevice::Ane, ComputeDevice::Gpu, ComputeDevice::Cpu]
            .into_iter()
            .map(|device| {
                let on: Vec<&OpPlacement> = self
                    .placed_ops()
                    .filter(|o| o.preferred == device)
                    .collect();
                let cost: f64 = on.iter().filter_map(|o| o.cost).sum();
                DeviceShare {
                    device,
                    ops: on.len(),
                    op_share: if placed == 0 {
                        0.0
                    } else {
                        on.len() as f64 / placed as f64
                    },
                    cost_share: any_cost.then(|| cost / total_cost),
                }
            })
            .collect()
    }

    /// Fraction of placed ops whose preferred device is the Neural Engine.
    pub fn ane_op_share(&self) -> f64 {
        self.shares()[0].op_share
    }

    /// Op type → preferred device → count.
    pub fn by_op_type(&self) -> BTreeMap<String, BTreeMap<ComputeDevice, usize>> {
        let mut m: BTreeMap<String, BTreeMap<ComputeDevice, usize>> = BTreeMap::new();
        for o in &self.ops {
            *m.entry(o.op_type.clone())
                .or_default()
                .entry(o.preferred)
                .or_default() += 1;
        }
        m
    }

    /// Ops that could run on the ANE but are planned elsewhere, and ops that can't run there.
    pub fn off_ane(&self) -> Vec<&OpPlacement> {
        self.placed_ops()
            .filter(|o| o.preferred != ComputeDevice::Ane)
            .collect()
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

impl fmt::Display for PlacementReport {
    /// A summary, the per-device shares, then op types by preferred device.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let placed = self.placed_ops().count();
        writeln!(
            f,
            "compute plan for {} (compute units: {}): {} ops, {} placed",
            self.model,
            self.compute_units,
            self.ops.len(),
            placed
        )?;
        writeln!(
            f,
            "{:<8}{:>8}{:>10}{:>10}",
            "device", "ops", "ops %", "cost %"
        )?;
        for s in self.shares() {
            writeln!(
                f,
                "{:<8}{:>8}{:>10}{:>10}",
                s.device.as_str(),
                s.ops,
                pct(s.op_share),
                s.cost_share.map_or_else(|| "n/a".to_string(), pct)
            )?;
        }
        writeln!(
            f,
            "{:<28}{:>6}{:>6}{:>6}{:>6}",
            "op type", "ANE", "GPU", "CPU", "-"
        )?;
        for (op, devs) in self.by_op_type() {
            let n = |d| devs.get(&d).copied().unwrap_or(0);
            writeln!(
                f,
                "{:<28}{:>6}{:>6}{:>6}{:>6}",
                op,
                n(ComputeDevice::Ane),
                n(ComputeDevice::Gpu),
                n(ComputeDevice::Cpu),
                n(ComputeDevice::Unknown)
            )?;
        }
        Ok(())
    }
}

/// The `LoadOptions::extra` key of a model's minimum Neural Engine share
/// ([`crate::CoreMlOptions::min_ane_share`]).
pub const MIN_ANE_SHARE_KEY: &str = "min_ane_share";

impl PlacementReport {
    /// The Neural Engine's share used for the minimum: of estimated cost when
    /// the plan has costs (that is where the time goes), else of placed ops.
    pub fn ane_share(&self) -> f64 {
        let ane = self.shares()[0];
        ane.cost_share.unwrap_or(ane.op_share)
    }

    /// Refuses a plan whose Neural Engine share is below `min`, naming the
    /// figures and the op types planned elsewhere.
    pub fn require_ane_share(&self, min: f64) -> Result<()> {
        let share = self.ane_share();
        if share + 1e-12 >= min {
            return Ok(());
        }
        let mut off: BTreeMap<&str, usize> = BTreeMap::new();
        for o in self.off_ane() {
            *off.entry(o.op_type.as_str()).or_default() += 1;
        }
        let off: Vec<String> = off.iter().map(|(t, n)| format!("{t}×{n}")).collect();
        let basis = if self.shares()[0].cost_share.is_some() {
            "estimated cost"
        } else {
            "ops"
        };
        Err(pomme_core::Error::CompilationFailed(format!(
            "Core ML plans {} of the {basis} on the Neural Engine (compute units {}), below the configured {MIN_ANE_SHARE_KEY} of {}; planned elsewhere: {}",
            pct(share),
            self.compute_units,
            pct(min),
            if off.is_empty() {
                "-".into()
            } else {
                off.join(", ")
            }
        )))
    }

    /// The shares in the backend-neutral form runtimes export as metrics.
    pub fn placement_shares(&self) -> Vec<pomme_core::PlacementShare> {
        self.shares()
            .into_iter()
            .map(|s| pomme_core::PlacementShare {
                device: s.device.as_str().to_ascii_lowercase(),
                ops: s.ops,
                op_share: s.op_share,
                cost_share: s.cost_share,
            })
            .collect()
    }
}

/// Core ML's compute-units name for a pomme device (`Ane` → `cpuAndNeuralEngine`,
/// `Metal` → `cpuAndGPU`, `Cpu` → `cpuOnly`, `Auto` → `all`); `None` for CUDA.
pub fn compute_units_name(device: DeviceKind) -> Option<&'static str> {
    Some(match device {
        DeviceKind::Ane => "cpuAndNeuralEngine",
        DeviceKind::Metal => "cpuAndGPU",
        DeviceKind::Cpu => "cpuOnly",
        DeviceKind::Auto => "all",
        DeviceKind::Cuda => return None,
    })
}

/// The compute plan of a `.mlmodel`, `.mlpackage` or `.mlmodelc` for the
/// compute units `device` selects, compiling first into `cache_dir` (where
/// the backend keeps compiled bundles: [`crate::CoreMlBackend::cache_dir`]).
/// macOS 14.4+ only; elsewhere `Error::Unavailable`.
pub fn compute_plan(model: &Path, device: DeviceKind, cache_dir: &Path) -> Result<PlacementReport> {
    #[cfg(target_os = "macos")]
    {
        crate::native::compute_plan(model, device, cache_dir)
    }
    #[cfg(not(target_os = "macos"))]
    {
        let _ = (device, cache_dir);
        Err(pomme_core::Error::Unavailable(format!(
            "the Core ML compute plan of {} needs macOS 14.4 or later",
            model.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(t: &str, d: ComputeDevice, cost: Option<f64>) -> OpPlacement {
        OpPlacement {
            op_type: t.into(),
            name: format!("{t}_0"),
            preferred: d,
            supported: vec![d],
            cost,
        }
    }

    fn report() -> PlacementReport {
        use ComputeDevice::*;
        PlacementReport {
            model: "m.mlmodelc".into(),
            compute_units: "all".into(),
            ops: vec![
                op("const", Unknown, None),
                op("conv", Ane, Some(0.6)),
                op("conv", Ane, Some(0.2)),
                op("relu", Ane, Some(0.05)),
                op("gather", Cpu, Some(0.15)),
            ],
        }
    }

    #[test]
    fn shares_ignore_unplaced_ops() {
        let r = report();
        let s = r.shares();
        assert_eq!(s[0].device, ComputeDevice::Ane);
        assert_eq!(s[0].ops, 3);
        assert!((s[0].op_share - 0.75).abs() < 1e-9);
        assert!((s[0].cost_share.unwrap() - 0.85).abs() < 1e-9);
        assert_eq!(s[1].ops, 0);
        assert!((s[2].cost_share.unwrap() - 0.15).abs() < 1e-9);
        assert!((r.ane_op_share() - 0.75).abs() < 1e-9);
        assert_eq!(r.off_ane().len(), 1);
    }

    #[test]
    fn no_costs_means_no_cost_share() {
        let mut r = report();
        for o in &mut r.ops {
            o.cost = None;
        }
        assert!(r.shares().iter().all(|s| s.cost_share.is_none()));
        assert!(r.to_string().contains("n/a"));
        assert_eq!(PlacementReport::default().ane_op_share(), 0.0);
    }

    #[test]
    fn table_format() {
        let text = report().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "compute plan for m.mlmodelc (compute units: all): 5 ops, 4 placed"
        );
        assert_eq!(lines[2], "ANE            3     75.0%     85.0%");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("conv") && l.contains("     2     0     0     0"))
        );
    }

    #[test]
    fn units_names() {
        assert_eq!(
            compute_units_name(DeviceKind::Ane),
            Some("cpuAndNeuralEngine")
        );
        assert_eq!(compute_units_name(DeviceKind::Cuda), None);
    }

    #[cfg(not(target_os = "macos"))]
    #[test]
    fn unavailable_off_macos() {
        let e =
            compute_plan(Path::new("m.mlpackage"), DeviceKind::Ane, Path::new("/tmp")).unwrap_err();
        assert!(matches!(e, pomme_core::Error::Unavailable(_)), "{e}");
    }

    #[test]
    fn minimum_ane_share_admits_and_refuses_with_figures() {
        let r = report();
        let share = r.ane_share();
        assert!(share > 0.0 && share < 1.0, "{share}");
        r.require_ane_share(share).unwrap();
        r.require_ane_share(0.0).unwrap();
        let e = r.require_ane_share(0.99).unwrap_err().to_string();
        assert!(
            e.contains("below the configured min_ane_share of 99.0%"),
            "{e}"
        );
        assert!(e.contains("planned elsewhere"), "{e}");
        assert!(!e.contains('\n'));
        let shares = r.placement_shares();
        assert_eq!(
            shares.iter().map(|s| s.device.as_str()).collect::<Vec<_>>(),
            ["ane", "gpu", "cpu"]
        );
        let sum: f64 = shares.iter().map(|s| s.op_share).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }
}
