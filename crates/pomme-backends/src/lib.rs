//! The one place that names pomme's backends and platforms.
//!
//! Everything else (runtime, server, CLI) takes `Arc<dyn Backend>`s and
//! platform facts from here: which backends this build has ([`compiled_with`],
//! one cargo feature each, in default preference order: tract first, pure Rust
//! and always there; ONNX Runtime when its library is found; Core ML on macOS;
//! Core AI when a Python environment with Apple's `coreai-core` is found),
//! which candidates automatic routing tries ([`automatic_candidates`]), what a
//! Triton platform means ([`triton_platform_backends`]) and what "GPU" means
//! here ([`default_gpu_device`]), plus host [`telemetry`]. Backends read no
//! environment: the caller passes [`BackendSettings`].

#![forbid(unsafe_code)]

pub mod telemetry;

use pomme_core::{Backend, DeviceKind, Error, ModelFormat, Result};
use std::path::PathBuf;
use std::sync::Arc;

/// What backends need from their host: where to cache and where ONNX
/// Runtime is. The `pomme` binary fills it from its environment
/// (`crates/pomme-cli/src/env.rs`); [`Default`] reads nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSettings {
    /// The root of pomme's caches: [`quantized_dir`](Self::quantized_dir),
    /// [`fp16_dir`](Self::fp16_dir) and [`coreml_dir`](Self::coreml_dir) live
    /// under it. Default: `pomme-cache` in the temp dir.
    pub cache_root: PathBuf,
    /// The onnxruntime library file; binding when set (`ORT_DYLIB_PATH`).
    pub ort_dylib: Option<PathBuf>,
    /// A Python virtual environment holding `onnxruntime`; binding when set
    /// (`POMME_ORT_VENV`).
    pub ort_venv: Option<PathBuf>,
    /// Virtual environments tried in order when neither is set. Default
    /// `./.venv`; the `pomme` binary adds `$HOME/.venv`.
    pub ort_fallback_venvs: Vec<PathBuf>,
    /// TF32 is off for the whole process (`NVIDIA_TF32_OVERRIDE=0`): loads
    /// asking for it are warned that they cannot have it.
    pub process_tf32_off: bool,
    /// The Python interpreter of an environment holding Apple's
    /// `coreai-core`, for the coreai backend; binding when set
    /// (`POMME_COREAI_PYTHON`, `coreai_python`).
    pub coreai_python: Option<PathBuf>,
    /// Interpreters the coreai backend tries when `coreai_python` is not
    /// set. Default `./.venv/bin/python`, then `python3`.
    pub coreai_fallback_pythons: Vec<PathBuf>,
}

impl Default for BackendSettings {
    fn default() -> Self {
        BackendSettings {
            cache_root: std::env::temp_dir().join("pomme-cache"),
            ort_dylib: None,
            ort_venv: None,
            ort_fallback_venvs: vec![PathBuf::from(".venv")],
            process_tf32_off: false,
            coreai_python: None,
            coreai_fallback_pythons: vec![
                PathBuf::from(".venv/bin/python"),
                PathBuf::from("python3"),
            ],
        }
    }
}

impl BackendSettings {
    /// Served quantization's cache (`pomme_quant::ServeQuantization::cache_dir`).
    pub fn quantized_dir(&self) -> PathBuf {
        self.cache_root.join("quantized")
    }

    /// ONNX Runtime's `precision = f16` conversions.
    pub fn fp16_dir(&self) -> PathBuf {
        self.cache_root.join("fp16")
    }

    /// Compiled Core ML models (`.mlmodelc`).
    pub fn coreml_dir(&self) -> PathBuf {
        self.cache_root.join("coreml")
    }

    /// Core AI programs compiled for the in-package runtime (`.aimodelx`).
    pub fn coreai_dir(&self) -> PathBuf {
        self.cache_root.join("coreai")
    }
}

/// Every backend compiled into this build, in default preference order,
/// configured by `settings`.
#[allow(clippy::vec_init_then_push)] // each push sits behind its own feature
pub fn compiled_with(settings: &BackendSettings) -> Vec<Arc<dyn Backend>> {
    let _ = settings;
    #[allow(unused_mut)]
    let mut v: Vec<Arc<dyn Backend>> = Vec::new();
    #[cfg(feature = "tract")]
    v.push(Arc::new(pomme_tract::TractBackend::new()));
    #[cfg(feature = "ort")]
    v.push(Arc::new(
        pomme_ort::OrtBackend::discover(&pomme_ort::DylibSearch {
            dylib: settings.ort_dylib.clone(),
            venv: settings.ort_venv.clone(),
            fallback_venvs: settings.ort_fallback_venvs.clone(),
        })
        .with_fp16_cache_dir(settings.fp16_dir())
        .with_process_tf32_off(settings.process_tf32_off),
    ));
    #[cfg(feature = "coreml")]
    v.push(Arc::new(pomme_coreml::CoreMlBackend::with_cache_dir(
        settings.coreml_dir(),
    )));
    #[cfg(feature = "coreai")]
    v.push(Arc::new(pomme_coreai::CoreAiBackend::new(
        pomme_coreai::CoreAiSettings {
            python: settings.coreai_python.clone(),
            fallback_pythons: settings.coreai_fallback_pythons.clone(),
            cache_dir: settings.coreai_dir(),
        },
    )));
    v
}

/// [`compiled_with`] the default settings (reads no environment).
pub fn compiled() -> Vec<Arc<dyn Backend>> {
    compiled_with(&BackendSettings::default())
}

/// Names of the compiled backends.
pub fn names() -> Vec<&'static str> {
    compiled().iter().map(|b| b.name()).collect()
}

/// The backend called `name` configured by `settings`, or an error listing
/// the compiled ones.
pub fn by_name_with(settings: &BackendSettings, name: &str) -> Result<Arc<dyn Backend>> {
    compiled_with(settings)
        .into_iter()
        .find(|b| b.name() == name)
        .ok_or_else(|| {
            Error::Unavailable(format!(
                "backend '{name}' is not compiled in (compiled: {})",
                names().join(", ")
            ))
        })
}

/// [`by_name_with`] the default settings.
pub fn by_name(name: &str) -> Result<Arc<dyn Backend>> {
    by_name_with(&BackendSettings::default(), name)
}

/// The candidates automatic routing tries, best first, for this build's
/// operating system; candidates whose backend is not compiled in or whose
/// device is unavailable are skipped at load.
pub fn automatic_candidates() -> Vec<(&'static str, DeviceKind)> {
    automatic_candidates_for(std::env::consts::OS)
}

/// [`automatic_candidates`] for an operating system (`std::env::consts::OS`):
/// on macOS `coreml/ane → coreml/metal → coreml/cpu → tract/metal → ort/ane
/// (ONNX Runtime's Core ML EP) → ort/cpu → tract/cpu` for ONNX and Core ML
/// models (`coreml/cpu` is the reference Core ML models are checked against;
/// Neural Engine candidates report float16 compute and are compared with
/// routing's float16 tolerance) and `coreai/ane → coreai/metal → coreai/cpu`
/// for Core AI assets (macOS 27+), elsewhere `tract/cuda → ort/cpu →
/// tract/cpu` and `coreai/cpu`. A candidate that does not read the model's
/// format is skipped, so each model sees only its own format's list.
///
/// `ort/cuda` (ONNX Runtime's CUDA EP, much faster than tract's CUDA runtime
/// per call on convnets) is left out: it serves batches well only with one
/// session per batch size (the ort backend's `shape_sessions`, each holding
/// its own copy of the weights) and `pad_to_preferred` keeping the sizes few;
/// otherwise its depthwise convolutions are prepared again at every size
/// change. Single-call trials cannot see that, so the configuration chooses
/// it: a candidate list, or `backends = ["ort"]` with `device = "cuda"`.
pub fn automatic_candidates_for(os: &str) -> Vec<(&'static str, DeviceKind)> {
    use DeviceKind::*;
    if os == "macos" {
        vec![
            ("coreml", Ane),
            ("coreml", Metal),
            ("coreml", Cpu),
            ("tract", Metal),
            ("ort", Ane),
            ("ort", Cpu),
            ("tract", Cpu),
            ("coreai", Ane),
            ("coreai", Metal),
            ("coreai", Cpu),
        ]
    } else {
        vec![
            ("tract", Cuda),
            ("ort", Cpu),
            ("tract", Cpu),
            ("coreai", Cpu),
        ]
    }
}

/// The backends a Triton `config.pbtxt` `platform` / `backend` names, in
/// preference order: `onnxruntime_onnx`, `onnxruntime` and `onnx` → ort then
/// tract; `tract`, `ort` and `coreml` → that backend; `""` → none (no
/// preference: every compiled backend may serve). `None` for any other
/// platform, which the caller refuses as not supported.
pub fn triton_platform_backends(platform: &str) -> Option<Vec<&'static str>> {
    Some(match platform {
        "" => Vec::new(),
        "onnxruntime_onnx" | "onnxruntime" | "onnx" => vec!["ort", "tract"],
        "tract" => vec!["tract"],
        "ort" => vec!["ort"],
        "coreml" => vec!["coreml"],
        "coreai" => vec!["coreai"],
        _ => return None,
    })
}

/// The device a model runs on when its configuration names none: `auto` for
/// Core ML models (compute units `all`: the Neural Engine where Core ML
/// places the work there, which is why one converts to Core ML), `cpu` for
/// every other format. `device = "cpu"` stays one setting away.
pub fn default_device(format: ModelFormat) -> DeviceKind {
    match format {
        ModelFormat::CoreMl => DeviceKind::Auto,
        _ => DeviceKind::Cpu,
    }
}

/// The device a configuration's "GPU" (Triton `KIND_GPU`) means on this
/// build's platform: Metal on Apple targets, CUDA elsewhere.
pub fn default_gpu_device() -> DeviceKind {
    if cfg!(target_vendor = "apple") {
        DeviceKind::Metal
    } else {
        DeviceKind::Cuda
    }
}

/// Backend-specific reports that have no place in the generic `Backend` trait.
pub mod extras {
    #[cfg(not(feature = "coreml"))]
    use pomme_core::Error;
    use pomme_core::{DeviceKind, Result};
    use std::path::Path;

    /// Neural Engine compatibility findings for a Core ML model (every platform),
    /// one display line each, warnings first.
    pub fn ane_precheck(path: &Path) -> Result<Vec<String>> {
        #[cfg(feature = "coreml")]
        {
            let info = pomme_coreml::read(path)?;
            Ok(pomme_coreml::ane_check::check(&info)
                .iter()
                .map(|f| f.to_string())
                .collect())
        }
        #[cfg(not(feature = "coreml"))]
        {
            let _ = path;
            Err(Error::Unavailable(
                "built without the coreml feature".into(),
            ))
        }
    }

    /// Core ML's compute plan for a model, as a printable table (macOS 14.4+;
    /// `Unavailable` elsewhere), compiling into `settings`' Core ML cache.
    pub fn coreml_placement(
        settings: &crate::BackendSettings,
        path: &Path,
        device: DeviceKind,
    ) -> Result<String> {
        #[cfg(feature = "coreml")]
        {
            Ok(pomme_coreml::compute_plan(path, device, &settings.coreml_dir())?.to_string())
        }
        #[cfg(not(feature = "coreml"))]
        {
            let _ = (settings, path, device);
            Err(Error::Unavailable(
                "built without the coreml feature".into(),
            ))
        }
    }
}

/// Whether the `cuda` feature was compiled in.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        #[cfg(feature = "tract")]
        assert_eq!(by_name("tract").unwrap().name(), "tract");
        let e = by_name("tpu").err().unwrap();
        assert!(e.to_string().contains("not compiled in"), "{e}");
    }

    #[test]
    fn core_ml_models_default_to_auto() {
        assert_eq!(default_device(ModelFormat::CoreMl), DeviceKind::Auto);
        assert_eq!(default_device(ModelFormat::Onnx), DeviceKind::Cpu);
        assert_eq!(default_device(ModelFormat::CoreAi), DeviceKind::Cpu);
    }

    #[test]
    fn automatic_candidates_per_platform() {
        let names = |os| {
            automatic_candidates_for(os)
                .iter()
                .map(|(b, d)| format!("{b}/{d}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("macos"),
            [
                "coreml/ane",
                "coreml/metal",
                "coreml/cpu",
                "tract/metal",
                "ort/ane",
                "ort/cpu",
                "tract/cpu",
                "coreai/ane",
                "coreai/metal",
                "coreai/cpu"
            ]
        );
        assert_eq!(
            names("linux"),
            ["tract/cuda", "ort/cpu", "tract/cpu", "coreai/cpu"]
        );
        assert_eq!(
            automatic_candidates(),
            automatic_candidates_for(std::env::consts::OS)
        );
    }

    #[test]
    fn triton_platforms() {
        assert_eq!(
            triton_platform_backends("onnxruntime_onnx"),
            Some(vec!["ort", "tract"])
        );
        assert_eq!(triton_platform_backends("coreml"), Some(vec!["coreml"]));
        assert_eq!(triton_platform_backends(""), Some(vec![]));
        assert_eq!(triton_platform_backends("tensorrt_plan"), None);
    }

    #[test]
    fn gpu_means_the_platform_gpu() {
        let want = if cfg!(target_vendor = "apple") {
            DeviceKind::Metal
        } else {
            DeviceKind::Cuda
        };
        assert_eq!(default_gpu_device(), want);
    }

    #[test]
    fn one_cache_root() {
        let s = BackendSettings {
            cache_root: PathBuf::from("/c"),
            ..BackendSettings::default()
        };
        assert_eq!(s.quantized_dir(), PathBuf::from("/c/quantized"));
        assert_eq!(s.fp16_dir(), PathBuf::from("/c/fp16"));
        assert_eq!(s.coreml_dir(), PathBuf::from("/c/coreml"));
        assert_eq!(s.coreai_dir(), PathBuf::from("/c/coreai"));
    }

    /// Every backend's `option_keys` against `check_extra_keys`: known keys
    /// (including prefixed ones) pass, a typo is refused naming it.
    #[test]
    fn typo_in_extra_is_refused() {
        use std::collections::BTreeMap;
        let backends = compiled();
        let refs: Vec<&dyn Backend> = backends.iter().map(|b| b.as_ref()).collect();
        let extra = |k: &str| BTreeMap::from([(k.to_string(), "1".to_string())]);
        #[cfg(feature = "tract")]
        pomme_core::check_extra_keys(&extra("symbol.seq"), &refs).unwrap();
        #[cfg(feature = "ort")]
        pomme_core::check_extra_keys(&extra("shape_sessions"), &refs).unwrap();
        #[cfg(feature = "coreml")]
        pomme_core::check_extra_keys(&extra("min_ane_share"), &refs).unwrap();
        let e = pomme_core::check_extra_keys(&extra("shape_sesions"), &refs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown backend option 'shape_sesions'"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        #[cfg(feature = "ort")]
        assert!(e.contains("ort: dylib, sessions, shape_sessions"), "{e}");
    }
}
