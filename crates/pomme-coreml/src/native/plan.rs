//! `MLComputePlan` (macOS 14.4+) → [`PlacementReport`].

use super::{check_units, file_url, ns_error, require_macos, units_for_device};
use crate::placement::{ComputeDevice, OpPlacement, PlacementReport};
use block2::RcBlock;
use objc2::rc::autoreleasepool;
use objc2::runtime::{AnyObject, ProtocolObject};
use objc2_core_ml::{
    MLCPUComputeDevice, MLComputeDeviceProtocol, MLComputePlan, MLComputePlanDeviceUsage,
    MLComputeUnits, MLGPUComputeDevice, MLModelConfiguration, MLModelStructure,
    MLModelStructureProgramBlock, MLNeuralEngineComputeDevice,
};
use objc2_foundation::NSError;
use pomme_core::{DeviceKind, Error, Result};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

fn classify(d: &ProtocolObject<dyn MLComputeDeviceProtocol>) -> ComputeDevice {
    let obj: &AnyObject = d.as_ref();
    if obj.downcast_ref::<MLNeuralEngineComputeDevice>().is_some() {
        ComputeDevice::Ane
    } else if obj.downcast_ref::<MLGPUComputeDevice>().is_some() {
        ComputeDevice::Gpu
    } else if obj.downcast_ref::<MLCPUComputeDevice>().is_some() {
        ComputeDevice::Cpu
    } else {
        ComputeDevice::Unknown
    }
}

fn usage(u: Option<&MLComputePlanDeviceUsage>) -> (ComputeDevice, Vec<ComputeDevice>) {
    match u {
        None => (ComputeDevice::Unknown, Vec::new()),
        // SAFETY: getters on a usage object Core ML returned for this plan.
        Some(u) => unsafe {
            (
                classify(&u.preferredComputeDevice()),
                u.supportedComputeDevices()
                    .iter()
                    .map(|d| classify(&d))
                    .collect(),
            )
        },
    }
}

fn walk(plan: &MLComputePlan, block: &MLModelStructureProgramBlock, out: &mut Vec<OpPlacement>) {
    // SAFETY: walking the plan's own model structure; every op passed back to
    // the plan comes from that structure, as Apple's API requires.
    unsafe {
        for op in block.operations().iter() {
            let u = plan.computeDeviceUsageForMLProgramOperation(&op);
            let (preferred, supported) = usage(u.as_deref());
            out.push(OpPlacement {
                op_type: op.operatorName().to_string(),
                name: op
                    .outputs()
                    .iter()
                    .next()
                    .map(|o| o.name().to_string())
                    .unwrap_or_default(),
                preferred,
                supported,
                cost: plan
                    .estimatedCostOfMLProgramOperation(&op)
                    .map(|c| c.weight()),
            });
            for inner in op.blocks().iter() {
                walk(plan, &inner, out);
            }
        }
    }
}

fn report(plan: &MLComputePlan) -> Vec<OpPlacement> {
    let mut v = Vec::new();
    // SAFETY: getters on a loaded plan (see `walk`).
    let structure = unsafe { plan.modelStructure() };
    walk_structure(plan, &structure, &mut v, 0);
    v
}

/// One model of the structure; a pipeline's models in order (nested
/// pipelines up to a depth that protects the stack).
fn walk_structure(
    plan: &MLComputePlan,
    structure: &MLModelStructure,
    v: &mut Vec<OpPlacement>,
    depth: usize,
) {
    // SAFETY: getters on the plan's own structure (see `walk`).
    unsafe {
        if let Some(pipeline) = structure.pipeline() {
            if depth < 16 {
                for sub in pipeline.subModels().iter() {
                    walk_structure(plan, &sub, v, depth + 1);
                }
            }
        } else if let Some(program) = structure.program() {
            let (names, funcs) = program.functions().to_vecs();
            let mut pairs: Vec<(String, _)> = names
                .iter()
                .map(|n| n.to_string())
                .zip(funcs.iter().map(|f| f.block()))
                .collect();
            pairs.sort_by(|a, b| a.0.cmp(&b.0));
            for (_, block) in pairs {
                walk(plan, &block, v);
            }
        } else if let Some(nn) = structure.neuralNetwork() {
            for layer in nn.layers().iter() {
                let u = plan.computeDeviceUsageForNeuralNetworkLayer(&layer);
                let (preferred, supported) = usage(u.as_deref());
                v.push(OpPlacement {
                    op_type: layer.r#type().to_string(),
                    name: layer.name().to_string(),
                    preferred,
                    supported,
                    cost: None,
                });
            }
        }
    }
}

/// Compiles (cached) and asks Core ML for the plan under the device's compute units.
pub(crate) fn compute_plan(
    model: &Path,
    device: DeviceKind,
    cache_dir: &Path,
) -> Result<PlacementReport> {
    require_macos(14, 4, "MLComputePlan (the placement report)")?;
    let (units, units_name) = units_for_device(device)?;
    check_units(units)?;
    let compiled =
        super::compile::compiled(model, cache_dir, crate::options::DEFAULT_CACHE_MAX_BYTES)?;
    plan_for_compiled(&compiled, units, units_name)
}

/// The plan of an already compiled `.mlmodelc` under `units` (macOS 14.4+;
/// the caller checks the version).
pub(crate) fn plan_for_compiled(
    compiled: &Path,
    units: MLComputeUnits,
    units_name: &str,
) -> Result<PlacementReport> {
    super::catching("the compute plan", || {
        plan_uncaught(compiled, units, units_name)
    })
}

fn plan_uncaught(
    compiled: &Path,
    units: MLComputeUnits,
    units_name: &str,
) -> Result<PlacementReport> {
    // SAFETY: a fresh configuration; setComputeUnits exists on 14.4+.
    let cfg = unsafe {
        let cfg = MLModelConfiguration::new();
        cfg.setComputeUnits(units);
        cfg
    };
    let (tx, rx) = mpsc::channel::<Result<Vec<OpPlacement>>>();
    let handler = RcBlock::new(move |plan: *mut MLComputePlan, err: *mut NSError| {
        // SAFETY: Core ML passes a valid plan or a valid NSError (or null),
        // borrowed for the call. MLComputePlan is not Send, so it is read here
        // and only Rust data crosses the channel.
        let res = match unsafe { plan.as_ref() } {
            // The walk runs on Core ML's queue, outside the caller's catch.
            Some(p) => super::catch_objc(|| autoreleasepool(|_| report(p))).map_err(|e| {
                Error::Internal(format!(
                    "Core ML raised an Objective-C exception while walking the compute plan: {e}"
                ))
            }),
            None => Err(Error::CompilationFailed(
                unsafe { err.as_ref() }.map_or_else(|| "compute plan failed".to_string(), ns_error),
            )),
        };
        let _ = tx.send(res);
    });
    // SAFETY: valid URL and configuration; 14.4+ checked above; the handler is
    // 'static and owns only a Sender.
    unsafe {
        MLComputePlan::loadContentsOfURL_configuration_completionHandler(
            &file_url(compiled),
            &cfg,
            &handler,
        )
    };
    let ops = rx
        .recv_timeout(Duration::from_secs(600))
        .map_err(|e| Error::CompilationFailed(format!("compute plan did not finish: {e}")))??;
    Ok(PlacementReport {
        model: compiled.display().to_string(),
        compute_units: units_name.to_string(),
        ops,
    })
}
