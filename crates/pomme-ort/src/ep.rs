//! Which ONNX Runtime execution providers a load registers, from [`LoadOptions`].
//!
//! The CPU EP is always registered last, as the fallback for operators a
//! device EP does not take. A device EP (CUDA, Core ML) is registered with
//! `error_on_failure`: `ort` otherwise logs a failed registration and silently
//! runs everything on the CPU, which would make `device=cuda` a lie.
//!
//! The option parsers here are platform-independent so that bad values are
//! reported the same way everywhere; only the Core ML registration itself is
//! compiled on Apple targets.

use ort::ep::{self, ExecutionProvider, ExecutionProviderDispatch};
use pomme_core::{DeviceKind, Error, LoadOptions, Result};

/// Execution providers for one load, and the device the model then runs on.
pub(crate) struct Plan {
    pub(crate) eps: Vec<ExecutionProviderDispatch>,
    pub(crate) device: DeviceKind,
}

/// Core ML compute units (`LoadOptions.extra["compute_units"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) enum ComputeUnits {
    /// `ane`: CPU and Neural Engine.
    CpuAndNeuralEngine,
    /// `gpu`: CPU and GPU.
    CpuAndGpu,
    /// `cpu`: CPU only.
    CpuOnly,
    /// `auto`: everything Core ML may use.
    All,
}

/// Core ML model format (`LoadOptions.extra["coreml_model_format"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) enum CoreMlFormat {
    MlProgram,
    NeuralNetwork,
}

/// Core ML EP settings parsed from a load's options.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) struct CoreMlOptions {
    pub(crate) compute_units: ComputeUnits,
    pub(crate) format: Option<CoreMlFormat>,
    pub(crate) cache_dir: Option<String>,
}

#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
pub(crate) fn coreml_options(options: &LoadOptions) -> Result<CoreMlOptions> {
    let compute_units = match options.extra.get("compute_units").map(String::as_str) {
        None => match options.device {
            DeviceKind::Ane => ComputeUnits::CpuAndNeuralEngine,
            DeviceKind::Metal => ComputeUnits::CpuAndGpu,
            DeviceKind::Cpu => ComputeUnits::CpuOnly,
            DeviceKind::Auto | DeviceKind::Cuda => ComputeUnits::All,
        },
        Some("ane") => ComputeUnits::CpuAndNeuralEngine,
        Some("gpu") => ComputeUnits::CpuAndGpu,
        Some("cpu") => ComputeUnits::CpuOnly,
        Some("auto") => ComputeUnits::All,
        Some(other) => {
            return Err(Error::invalid_input(format!(
                "unknown compute_units '{other}' (expected ane, gpu, cpu or auto)"
            )));
        }
    };
    let format = match options.extra.get("coreml_model_format").map(String::as_str) {
        None => None,
        Some("mlprogram") => Some(CoreMlFormat::MlProgram),
        Some("neuralnetwork") => Some(CoreMlFormat::NeuralNetwork),
        Some(other) => {
            return Err(Error::invalid_input(format!(
                "unknown coreml_model_format '{other}' (expected mlprogram or neuralnetwork)"
            )));
        }
    };
    Ok(CoreMlOptions {
        compute_units,
        format,
        cache_dir: options.extra.get("coreml_cache_dir").cloned(),
    })
}

/// CUDA EP settings parsed from a load's options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CudaOptions {
    /// `extra["cuda_device_id"]`, default 0.
    pub(crate) device_id: i32,
    /// `extra["tf32"]` (`true` | `false`), default `false`: TF32 tensor-core
    /// math changes f32 results at the 1e-3 level, so it is opt-in (as for
    /// tract's CUDA runtime, where `NVIDIA_TF32_OVERRIDE` decides).
    /// `NVIDIA_TF32_OVERRIDE=0` in the environment turns TF32 off for the
    /// whole process whatever this says, and the `pomme` binary sets it when
    /// it is unset; a load asking for TF32 under it gets a warning (measured
    /// in session 4: bit-identical outputs with `tf32=true`).
    pub(crate) tf32: bool,
    /// `extra["cudnn_conv_algo_search"]`: `exhaustive` (default: cuDNN times
    /// every algorithm once per shape, the fastest steady state), `heuristic`
    /// or `default`.
    pub(crate) conv_search: ConvSearch,
    /// `extra["prefer_nhwc"]` (`true` | `false`), default `false`: ORT's
    /// NHWC CUDA kernels, with layout transposes inserted around them.
    pub(crate) prefer_nhwc: bool,
}

/// cuDNN convolution algorithm search (`extra["cudnn_conv_algo_search"]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConvSearch {
    Exhaustive,
    Heuristic,
    Default,
}

pub(crate) fn cuda_options(options: &LoadOptions) -> Result<CudaOptions> {
    let device_id = match options.extra.get("cuda_device_id") {
        None => 0,
        Some(s) => s.parse::<i32>().ok().filter(|&d| d >= 0).ok_or_else(|| {
            Error::invalid_input(format!(
                "cuda_device_id '{s}' is not a device number (0, 1, ...)"
            ))
        })?,
    };
    let tf32 = flag(options, "tf32")?;
    if tf32 && std::env::var_os("NVIDIA_TF32_OVERRIDE").is_some_and(|v| v == "0") {
        tracing::warn!(
            "tf32 = true has no effect: NVIDIA_TF32_OVERRIDE=0 turns TF32 off for the whole process (pomme sets it when unset); start pomme with NVIDIA_TF32_OVERRIDE=1 to allow TF32"
        );
    }
    let prefer_nhwc = flag(options, "prefer_nhwc")?;
    let conv_search = match options
        .extra
        .get("cudnn_conv_algo_search")
        .map(String::as_str)
    {
        None | Some("exhaustive") => ConvSearch::Exhaustive,
        Some("heuristic") => ConvSearch::Heuristic,
        Some("default") => ConvSearch::Default,
        Some(other) => {
            return Err(Error::invalid_input(format!(
                "unknown cudnn_conv_algo_search '{other}' (expected exhaustive, heuristic or default)"
            )));
        }
    };
    Ok(CudaOptions {
        device_id,
        tf32,
        conv_search,
        prefer_nhwc,
    })
}

/// A boolean `extra` option, `false` when absent.
fn flag(options: &LoadOptions, key: &str) -> Result<bool> {
    flag_or(options, key, false)
}

/// A boolean `extra` option (`true` | `false`), `default` when absent.
pub(crate) fn flag_or(options: &LoadOptions, key: &str, default: bool) -> Result<bool> {
    match options.extra.get(key).map(String::as_str) {
        None => Ok(default),
        Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Error::invalid_input(format!(
            "{key} '{other}' is not a boolean (true or false)"
        ))),
    }
}

fn cpu() -> ExecutionProviderDispatch {
    ep::CPU::default().with_arena_allocator(true).build()
}

/// Whether the loaded library offers an EP; a failed query counts as "no".
fn offers<E: ExecutionProvider>() -> bool {
    E::is_available().unwrap_or(false)
}

/// Chooses the execution providers for `options`. ORT must be initialised.
pub(crate) fn plan(options: &LoadOptions) -> Result<Plan> {
    match options.device {
        DeviceKind::Cpu => Ok(Plan {
            eps: vec![cpu()],
            device: DeviceKind::Cpu,
        }),
        DeviceKind::Cuda => {
            let cuda = cuda_options(options)?;
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
        DeviceKind::Ane | DeviceKind::Metal | DeviceKind::Auto => coreml_plan(options),
    }
}

#[cfg(target_vendor = "apple")]
fn coreml_plan(options: &LoadOptions) -> Result<Plan> {
    use ort::ep::coreml::{ComputeUnits as Units, ModelFormat};

    let opts = coreml_options(options)?;
    if !offers::<ep::CoreML>() {
        return Err(Error::Unavailable(format!(
            "device {}: this onnxruntime library has no Core ML execution provider",
            options.device
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
    if let Some(dir) = opts.cache_dir {
        coreml = coreml.with_model_cache_dir(dir);
    }
    Ok(Plan {
        eps: vec![coreml.build().error_on_failure(), cpu()],
        device: options.device,
    })
}

/// Off Apple platforms there is no Core ML: `auto` means the CPU, and the Apple
/// devices are unavailable rather than silently replaced.
#[cfg(not(target_vendor = "apple"))]
fn coreml_plan(options: &LoadOptions) -> Result<Plan> {
    match options.device {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(device: DeviceKind, extra: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            device,
            extra: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LoadOptions::default()
        }
    }

    #[test]
    fn compute_units_follow_device_then_option() {
        let o = coreml_options(&opts(DeviceKind::Ane, &[])).unwrap();
        assert_eq!(o.compute_units, ComputeUnits::CpuAndNeuralEngine);
        let o = coreml_options(&opts(DeviceKind::Metal, &[])).unwrap();
        assert_eq!(o.compute_units, ComputeUnits::CpuAndGpu);
        let o = coreml_options(&opts(
            DeviceKind::Auto,
            &[
                ("compute_units", "cpu"),
                ("coreml_model_format", "mlprogram"),
                ("coreml_cache_dir", "/tmp/c"),
            ],
        ))
        .unwrap();
        assert_eq!(o.compute_units, ComputeUnits::CpuOnly);
        assert_eq!(o.format, Some(CoreMlFormat::MlProgram));
        assert_eq!(o.cache_dir.as_deref(), Some("/tmp/c"));
    }

    #[test]
    fn bad_values_are_named() {
        let e = coreml_options(&opts(DeviceKind::Ane, &[("compute_units", "npu")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: unknown compute_units 'npu' (expected ane, gpu, cpu or auto)"
        );
        let e =
            coreml_options(&opts(DeviceKind::Ane, &[("coreml_model_format", "x")])).unwrap_err();
        assert!(e.to_string().contains("coreml_model_format 'x'"), "{e}");
        let e = cuda_options(&opts(DeviceKind::Cuda, &[("cuda_device_id", "-1")])).unwrap_err();
        assert!(e.to_string().contains("cuda_device_id '-1'"), "{e}");
        let e = cuda_options(&opts(DeviceKind::Cuda, &[("tf32", "yes")])).unwrap_err();
        assert!(e.to_string().contains("tf32 'yes'"), "{e}");
        let e =
            cuda_options(&opts(DeviceKind::Cuda, &[("cudnn_conv_algo_search", "x")])).unwrap_err();
        assert!(e.to_string().contains("cudnn_conv_algo_search 'x'"), "{e}");
    }

    #[test]
    fn cuda_defaults_are_exact_fp32_and_exhaustive_search() {
        let o = cuda_options(&opts(DeviceKind::Cuda, &[])).unwrap();
        assert_eq!(
            o,
            CudaOptions {
                device_id: 0,
                tf32: false,
                conv_search: ConvSearch::Exhaustive,
                prefer_nhwc: false,
            }
        );
        let o = cuda_options(&opts(
            DeviceKind::Cuda,
            &[
                ("tf32", "true"),
                ("cuda_device_id", "1"),
                ("cudnn_conv_algo_search", "heuristic"),
            ],
        ))
        .unwrap();
        assert!(o.tf32);
        assert_eq!(o.device_id, 1);
        assert_eq!(o.conv_search, ConvSearch::Heuristic);
    }
}
