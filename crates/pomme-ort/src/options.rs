//! The ort backend's load options: every `LoadOptions.extra` key it reads,
//! parsed once per load into [`OrtOptions`], whose field docs are the
//! reference for each key. A bad value is a one-line
//! [`Error::InvalidInput`] naming the key and what it accepts.

use pomme_core::{DeviceKind, Error, ExtraOptions, LoadOptions, Result};
use std::path::PathBuf;

/// Every key [`OrtOptions`] reads ([`pomme_core::Backend::option_keys`]).
pub const KEYS: &[&str] = &[
    "dylib",
    "sessions",
    "shape_sessions",
    "spin",
    "profile",
    "fp16_cache_dir",
    "cuda_device_id",
    "tf32",
    "cudnn_conv_algo_search",
    "prefer_nhwc",
    "compute_units",
    "coreml_model_format",
    "coreml_cache_dir",
];

/// The ort backend's settings for one load, from `LoadOptions.extra`.
#[derive(Clone, Debug, PartialEq)]
pub struct OrtOptions {
    /// `dylib`: the onnxruntime library for this load instead of the
    /// backend's (a process loads one library; another path is refused).
    pub dylib: Option<PathBuf>,
    /// `sessions`: `per_worker` (default) or `shared`.
    pub sessions: SessionMode,
    /// `shape_sessions`: 1–64 ORT sessions per worker, one per distinct input
    /// shape. Unset: 8 with `device = cuda` for a graph with grouped
    /// (depthwise) convolutions, else 1 ([`crate::default_shape_sessions`]).
    /// The CUDA EP prepares depthwise convolutions again whenever the input
    /// shape changes, so under dynamic batching each batch size needs its own
    /// session (pair it with the server's `pad_to_preferred` so the sizes
    /// stay few); other graphs gain nothing from it, and a text model's many
    /// `[rows, bucket]` shapes would keep building sessions.
    pub shape_sessions: Option<usize>,
    /// `spin`: `false` (default) or `true`. ONNX Runtime lets idle pool threads
    /// spin waiting for work; pomme turns that off so a model's threads leave
    /// the CPUs to the server's I/O threads and other models (a lone session
    /// runs somewhat slower). `true` restores ORT's spinning, for a machine
    /// given to one model.
    pub spin: bool,
    /// `profile`: a path prefix; each session writes ONNX Runtime's per-node
    /// profile (Chrome trace JSON) there when it ends.
    pub profile: Option<PathBuf>,
    /// `fp16_cache_dir`: where `precision = f16` keeps its converted files
    /// (default: the backend's, `<cache root>/fp16`).
    pub fp16_cache_dir: Option<PathBuf>,
    /// CUDA EP settings (`device = cuda`).
    pub cuda: CudaOptions,
    /// Core ML EP settings (`device = ane | metal | auto` on Apple platforms).
    pub coreml: CoreMlOptions,
}

/// How a loaded model's workers share ORT sessions (`sessions`). `ort`'s
/// `Session::run` takes `&mut self`, so one session serves one worker at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionMode {
    /// `per_worker`: each worker has its own session, so workers never wait,
    /// but each session holds its own copy of the weights and its own
    /// intra-op thread pool (`threads` × workers should not exceed the cores).
    PerWorker,
    /// `shared`: one session behind a mutex, workers take turns; one copy of
    /// the weights (large models, GPUs).
    Shared,
}

/// CUDA EP settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// `cuda_device_id`: the GPU, default 0.
    pub device_id: i32,
    /// `tf32` (`true` | `false`), default `false`: TF32 tensor-core math
    /// changes f32 results at the 1e-3 level, so it is opt-in. It only takes
    /// effect when the process allows TF32 (`NVIDIA_TF32_OVERRIDE` not `0`;
    /// the `pomme` binary sets it to `0` when unset).
    pub tf32: bool,
    /// `cudnn_conv_algo_search`: `exhaustive` (default: cuDNN times every
    /// algorithm once per shape, the fastest steady state), `heuristic` or
    /// `default`.
    pub conv_search: ConvSearch,
    /// `prefer_nhwc` (`true` | `false`), default `false`: ORT's NHWC CUDA
    /// kernels, with layout transposes inserted around them.
    pub prefer_nhwc: bool,
}

/// cuDNN convolution algorithm search (`cudnn_conv_algo_search`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvSearch {
    Exhaustive,
    Heuristic,
    Default,
}

/// Core ML EP settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreMlOptions {
    /// `compute_units`: `ane` (CPU and Neural Engine), `gpu` (CPU and GPU),
    /// `cpu` or `auto` (all); by default from the device (`ane`, `metal` →
    /// `gpu`, `cpu`, `auto`).
    pub compute_units: ComputeUnits,
    /// `coreml_model_format`: `mlprogram` or `neuralnetwork` (default: the EP's).
    pub format: Option<CoreMlFormat>,
    /// `coreml_cache_dir`: where the EP caches its compiled models.
    pub cache_dir: Option<String>,
}

/// Core ML compute units (`compute_units`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeUnits {
    /// `ane`: CPU and Neural Engine.
    CpuAndNeuralEngine,
    /// `gpu`: CPU and GPU.
    CpuAndGpu,
    /// `cpu`: CPU only.
    CpuOnly,
    /// `auto`: everything Core ML may use.
    All,
}

/// Core ML model format (`coreml_model_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoreMlFormat {
    MlProgram,
    NeuralNetwork,
}

impl OrtOptions {
    /// Parses every key of [`KEYS`] from `options.extra` (defaults that
    /// depend on the device come from `options.device`).
    pub fn from_load_options(options: &LoadOptions) -> Result<OrtOptions> {
        Self::read(&ExtraOptions::new(&options.extra), options.device)
    }

    fn read(x: &ExtraOptions<'_>, device: DeviceKind) -> Result<OrtOptions> {
        let sessions = match x.get("sessions") {
            None | Some("per_worker") => SessionMode::PerWorker,
            Some("shared") => SessionMode::Shared,
            Some(other) => {
                return Err(Error::invalid_input(format!(
                    "unknown sessions mode '{other}' (expected per_worker or shared)"
                )));
            }
        };
        let shape_sessions = match x.get("shape_sessions") {
            None => None,
            Some(s) => Some(
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| {
                        Error::invalid_input(format!(
                            "shape_sessions '{s}' is not a count from 1 to 64"
                        ))
                    })?,
            ),
        };
        let profile = match x.get("profile") {
            None => None,
            Some(p) if p.trim().is_empty() => {
                return Err(Error::invalid_input(
                    "profile '' is not a path prefix (e.g. /tmp/ort_profile)",
                ));
            }
            Some(p) => Some(PathBuf::from(p)),
        };
        Ok(OrtOptions {
            dylib: x.get("dylib").map(PathBuf::from),
            sessions,
            shape_sessions,
            spin: flag(x, "spin")?,
            profile,
            fp16_cache_dir: x.get("fp16_cache_dir").map(PathBuf::from),
            cuda: cuda(x)?,
            coreml: coreml(x, device)?,
        })
    }
}

fn cuda(x: &ExtraOptions<'_>) -> Result<CudaOptions> {
    let device_id = match x.get("cuda_device_id") {
        None => 0,
        Some(s) => s.parse::<i32>().ok().filter(|&d| d >= 0).ok_or_else(|| {
            Error::invalid_input(format!(
                "cuda_device_id '{s}' is not a device number (0, 1, ...)"
            ))
        })?,
    };
    let conv_search = match x.get("cudnn_conv_algo_search") {
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
        tf32: flag(x, "tf32")?,
        conv_search,
        prefer_nhwc: flag(x, "prefer_nhwc")?,
    })
}

fn coreml(x: &ExtraOptions<'_>, device: DeviceKind) -> Result<CoreMlOptions> {
    let compute_units = match x.get("compute_units") {
        None => match device {
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
    let format = match x.get("coreml_model_format") {
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
        cache_dir: x.get("coreml_cache_dir").map(str::to_string),
    })
}

/// A boolean option (`true` | `false`), `false` when absent.
fn flag(x: &ExtraOptions<'_>, key: &'static str) -> Result<bool> {
    match x.get(key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(Error::invalid_input(format!(
            "{key} '{other}' is not a boolean (true or false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(device: DeviceKind, extra: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            device,
            ..LoadOptions::with_extra(extra)
        }
    }

    fn coreml_options(o: &LoadOptions) -> Result<CoreMlOptions> {
        OrtOptions::from_load_options(o).map(|o| o.coreml)
    }

    fn cuda_options(o: &LoadOptions) -> Result<CudaOptions> {
        OrtOptions::from_load_options(o).map(|o| o.cuda)
    }

    fn spinning(o: &LoadOptions) -> Result<bool> {
        OrtOptions::from_load_options(o).map(|o| o.spin)
    }

    fn shape_sessions(o: &LoadOptions) -> Result<Option<usize>> {
        OrtOptions::from_load_options(o).map(|o| o.shape_sessions)
    }

    fn session_mode(o: &LoadOptions) -> Result<SessionMode> {
        OrtOptions::from_load_options(o).map(|o| o.sessions)
    }

    #[test]
    fn option_keys_are_what_the_parser_reads() {
        let empty = Default::default();
        let x = ExtraOptions::new(&empty);
        OrtOptions::read(&x, DeviceKind::Cpu).unwrap();
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(x.keys_read(), keys);
    }

    #[test]
    fn wrong_values_are_refused_naming_the_key() {
        for (key, bad) in [
            ("sessions", "many"),
            ("shape_sessions", "0"),
            ("spin", "yes"),
            ("profile", " "),
            ("cuda_device_id", "gpu0"),
            ("tf32", "on"),
            ("cudnn_conv_algo_search", "fast"),
            ("prefer_nhwc", "1"),
            ("compute_units", "npu"),
            ("coreml_model_format", "onnx"),
        ] {
            let e = OrtOptions::from_load_options(&opts(DeviceKind::Cpu, &[(key, bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid input: "), "{e}");
            assert!(e.contains(key), "{e}");
            assert!(!e.contains('\n'), "{e}");
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

    #[test]
    fn spinning_is_off_unless_asked() {
        let mut o = LoadOptions::default();
        assert!(!spinning(&o).unwrap());
        o.extra.insert("spin".into(), "true".into());
        assert!(spinning(&o).unwrap());
        o.extra.insert("spin".into(), "false".into());
        assert!(!spinning(&o).unwrap());
        o.extra.insert("spin".into(), "yes".into());
        let e = spinning(&o).unwrap_err();
        assert!(e.to_string().contains("spin 'yes'"), "{e}");
    }

    #[test]
    fn shape_sessions_default_by_device_and_parse() {
        let mut o = LoadOptions::default();
        assert_eq!(shape_sessions(&o).unwrap(), None);
        o.device = DeviceKind::Cuda;
        assert_eq!(shape_sessions(&o).unwrap(), None);
        o.extra.insert("shape_sessions".into(), "3".into());
        assert_eq!(shape_sessions(&o).unwrap(), Some(3));
        for bad in ["0", "65", "many"] {
            o.extra.insert("shape_sessions".into(), bad.into());
            let e = shape_sessions(&o).unwrap_err();
            assert!(
                e.to_string().contains(&format!("shape_sessions '{bad}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn session_mode_parses() {
        let mut o = LoadOptions::default();
        assert_eq!(session_mode(&o).unwrap(), SessionMode::PerWorker);
        o.extra.insert("sessions".into(), "shared".into());
        assert_eq!(session_mode(&o).unwrap(), SessionMode::Shared);
        o.extra.insert("sessions".into(), "many".into());
        assert!(session_mode(&o).is_err());
    }
}
