//! Which ONNX Runtime execution providers a load registers.
//!
//! The CPU EP is always registered last, as the fallback for operators a
//! device EP does not take. A device EP (CUDA, Core ML) is registered with
//! `error_on_failure`: `ort` otherwise logs a failed registration and silently
//! runs everything on the CPU, which would make `device=cuda` a lie. Only the
//! Core ML registration is compiled on Apple targets; its options are parsed
//! everywhere ([`crate::options`]).

use crate::options::{ConvSearch, OrtOptions};
use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};
use pomme_core::{DeviceKind, Error, Result};

/// Execution providers for one load, and the device the model then runs on.
pub(crate) struct Plan {
    pub(crate) eps: Vec<ExecutionProviderDispatch>,
    pub(crate) device: DeviceKind,
}

fn cpu() -> ExecutionProviderDispatch {
    ep::CPU::default().with_arena_allocator(true).build()
}

/// Whether the loaded library offers an EP; a failed query counts as "no".
fn offers<E: ExecutionProvider>() -> bool {
    E::is_available().unwrap_or(false)
}

/// Chooses the execution providers for a load on `device`. ORT must be
/// initialised. `process_tf32_off`: TF32 is off for the whole process (see
/// [`crate::OrtBackend::with_process_tf32_off`]).
pub(crate) fn plan(
    options: &OrtOptions,
    device: DeviceKind,
    process_tf32_off: bool,
) -> Result<Plan> {
    match device {
        DeviceKind::Cpu => Ok(Plan {
            eps: vec![cpu()],
            device: DeviceKind::Cpu,
        }),
        DeviceKind::Cuda => {
            let cuda = &options.cuda;
            if cuda.tf32 && process_tf32_off {
                tracing::warn!(
                    "tf32 = true has no effect: NVIDIA_TF32_OVERRIDE=0 turns TF32 off for the whole process (pomme sets it when unset); start pomme with NVIDIA_TF32_OVERRIDE=1 to allow TF32"
                );
            }
            if !offers::<ep::CUDA>() {
                return Err(Error::Unavailable(
                    "device cuda: this onnxruntime library has no CUDA execution provider (use the onnxruntime-gpu build)"
                        .into(),
                ));
            }
            Ok(Plan {
                eps: vec![
                    ep::CUDA::default()
                        .with_device_id(cuda.device_id)
                        .with_tf32(cuda.tf32)
                        .with_prefer_nhwc(cuda.prefer_nhwc)
                        .with_conv_algorithm_search(match cuda.conv_search {
                            ConvSearch::Exhaustive => ep::cuda::ConvAlgorithmSearch::Exhaustive,
                            ConvSearch::Heuristic => ep::cuda::ConvAlgorithmSearch::Heuristic,
                            ConvSearch::Default => ep::cuda::ConvAlgorithmSearch::Default,
                        })
                        .build()
                        .error_on_failure(),
                    cpu(),
                ],
                device: DeviceKind::Cuda,
            })
        }
        DeviceKind::Ane | DeviceKind::Metal | DeviceKind::Auto => coreml_plan(options, device),
    }
}

#[cfg(target_vendor = "apple")]
fn coreml_plan(options: &OrtOptions, device: DeviceKind) -> Result<Plan> {
    use crate::options::{ComputeUnits, CoreMlFormat};
    use ort::ep::coreml::{ComputeUnits as Units, ModelFormat};

    let opts = &options.coreml;
    if !offers::<ep::CoreML>() {
        return Err(Error::Unavailable(format!(
            "device {device}: this onnxruntime library has no Core ML execution provider"
        )));
    }
    let mut coreml = ep::CoreML::default().with_compute_units(match opts.compute_units {
        ComputeUnits::CpuAndNeuralEngine => Units::CPUAndNeuralEngine,
        ComputeUnits::CpuAndGpu => Units::CPUAndGPU,
        ComputeUnits::CpuOnly => Units::CPUOnly,
        ComputeUnits::All => Units::All,
    });
    if let Some(format) = opts.format {
        coreml = coreml.with_model_format(match format {
            CoreMlFormat::MlProgram => ModelFormat::MLProgram,
            CoreMlFormat::NeuralNetwork => ModelFormat::NeuralNetwork,
        });
    }
    if let Some(dir) = &opts.cache_dir {
        coreml = coreml.with_model_cache_dir(dir);
    }
    Ok(Plan {
        eps: vec![coreml.build().error_on_failure(), cpu()],
        device,
    })
}

/// Off Apple platforms there is no Core ML: `auto` means the CPU, and the Apple
/// devices are unavailable rather than silently replaced.
#[cfg(not(target_vendor = "apple"))]
fn coreml_plan(_options: &OrtOptions, device: DeviceKind) -> Result<Plan> {
    match device {
        DeviceKind::Auto => Ok(Plan {
            eps: vec![cpu()],
            device: DeviceKind::Cpu,
        }),
        other => Err(Error::Unavailable(format!(
            "device {other}: the ort backend reaches it through the Core ML execution provider, which exists only on Apple platforms"
        ))),
    }
}

/// Whether the CUDA EP is compiled into the loaded library (devices listing;
/// Apple platforms have no CUDA, so they do not list it).
#[cfg(not(target_vendor = "apple"))]
pub(crate) fn has_cuda() -> bool {
    offers::<ep::CUDA>()
}

/// Whether the Core ML EP is compiled into the loaded library (devices listing).
#[cfg(target_vendor = "apple")]
pub(crate) fn has_coreml() -> bool {
    offers::<ep::CoreML>()
}
