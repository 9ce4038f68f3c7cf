//! pomme's ONNX Runtime backend, through the [`ort`] crate with the onnxruntime
//! shared library loaded at run time (`load-dynamic`: nothing is linked or
//! downloaded at build time).
//!
//! # Finding the library
//!
//! The first rule that applies decides; a rule whose setting is present but wrong
//! is reported, not skipped, so a typo never silently picks up another library:
//!
//! 1. `LoadOptions.extra["dylib"]` (for that load) or [`OrtBackend::with_dylib`]:
//!    that file ([`OrtBackend::with_venv`]: the library inside that venv).
//! 2. The `ORT_DYLIB_PATH` environment variable: that file.
//! 3. The `POMME_ORT_VENV` environment variable, a Python virtual environment:
//!    `lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`
//!    (`libonnxruntime*.dylib` on macOS) inside it, as `pip install onnxruntime`
//!    leaves it.
//! 4. The same inside `./.venv`, then `$HOME/.venv`, when they have it.
//!
//! [`OrtBackend::new`] applies rules 2 to 4 when it is constructed.
//!
//! The library is loaded once per process (`ort` keeps it, and the ONNX Runtime
//! environment, in process globals), on the first call that needs it:
//! [`Backend::availability`], [`Backend::devices`], [`Backend::inspect`] or
//! [`Backend::load`]. Afterwards a backend naming a *different* file is
//! unavailable. A named file is checked to exist before `ort` sees it, and a file
//! that fails to load is remembered, so probing a bad path has no lasting effect.
//!
//! # Availability
//!
//! [`Backend::availability`] returns `Available`, or `Unavailable` with one of
//! these reasons (and [`Backend::load`] / [`Backend::inspect`] return
//! [`Error::Unavailable`] with the same text; nothing panics):
//!
//! - `onnxruntime library not found: set ORT_DYLIB_PATH or pip install onnxruntime into ./.venv`
//!   (no rule found a library);
//! - `onnxruntime library not found: <path> (from <source>) does not exist`, where
//!   `<source>` is `OrtBackend::with_dylib`, `LoadOptions.extra["dylib"]` or
//!   `ORT_DYLIB_PATH`;
//! - `onnxruntime library not found: <dir> has no lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`,
//!   followed by ` (POMME_ORT_VENV)` when the variable named the venv (without it
//!   for [`OrtBackend::with_venv`]);
//! - `onnxruntime library at <path> could not be loaded: <reason>` (not a shared
//!   library, or older than the ONNX Runtime 1.22 API this crate uses);
//! - `onnxruntime is already loaded from <path> in this process; <other path> cannot be loaded as well`.
//!
//! # Loading
//!
//! [`LoadOptions`] are used as follows:
//!
//! - `device`: `cpu` runs on the CPU execution provider (EP). `cuda` adds ONNX
//!   Runtime's CUDA EP (`extra["cuda_device_id"]`, default 0; `extra["tf32"]`,
//!   default `false`: exact f32, TF32 tensor cores are opt-in, and only take
//!   effect when `NVIDIA_TF32_OVERRIDE` is not `0`, which the `pomme` binary
//!   sets when it is unset;
//!   `extra["cudnn_conv_algo_search"]`, default `exhaustive`; `extra["prefer_nhwc"]`,
//!   default `false`); a library without
//!   it (the plain `onnxruntime` wheel) gives [`Error::Unavailable`]. The EP
//!   needs the `onnxruntime-gpu` build matching the CUDA major of the machine
//!   (1.31 wants CUDA 13 and cuDNN 9 on the library path). `ane`, `metal`
//!   and `auto` use the Core ML EP on Apple platforms, with
//!   `extra["compute_units"]` (`ane` → CPU and Neural Engine, `gpu` → CPU and GPU,
//!   `cpu` → CPU only, `auto` → all; by default from the device: `ane`, `gpu`,
//!   `auto`), `extra["coreml_model_format"]` (`mlprogram` | `neuralnetwork`) and
//!   `extra["coreml_cache_dir"]`. Elsewhere `auto` means the CPU and `ane` /
//!   `metal` are unavailable. The CPU EP is always registered after a device EP,
//!   for the operators the device EP does not take.
//! - `threads`: ONNX Runtime's intra-op threads. `None` lets ONNX Runtime decide
//!   (one per physical core). Inter-op threads are 1 (pomme does not use ORT's
//!   parallel executor).
//! - `extra["spin"]`: `false` (default) or `true`. ONNX Runtime's own default
//!   lets idle intra-op and inter-op pool threads spin while they wait for
//!   work; pomme turns that off (the session config entries
//!   `session.intra_op.allow_spinning` and `session.inter_op.allow_spinning`
//!   set to `"0"`), so a model's pool threads do not hold CPUs that the
//!   server's I/O threads and other models need. Measured on 2 vCPUs with
//!   MobileNetV2 and 2 threads (BENCHMARKS.md, "Overload" and "Dynamic
//!   batching"): behind a saturated model, 429s came back faster in the tail
//!   (p90 3.1 → 1.4 ms for a lone client) and the model finished more requests;
//!   the price is on a lone session: batch 1 runs ~25 % slower without
//!   spinning (4.7 → 5.9 ms), batches of 8–16 ~5–10 % slower. `true` restores
//!   ORT's spinning, for a machine given to one model.
//! - `precision`: `f32` means "as stored in the file". `f16` converts the
//!   float32 file to float16 weights and compute with float32 inputs and
//!   outputs (`pomme_quant::fp16`), once, into `extra["fp16_cache_dir"]`
//!   (default `$POMME_CACHE_DIR/fp16` or `~/.cache/pomme/fp16`), and runs that;
//!   opt-in, since it changes results (BENCHMARKS.md gives the measured error).
//!   INT8/INT4: quantize the file (`pomme quantize`) and load it as `f32`.
//! - `extra["sessions"]`: `per_worker` (default) or `shared`; see below.
//! - `extra["shape_sessions"]`: 1–64 sessions per worker, one per distinct
//!   input shape; default 8 with `device = cuda`, 1 otherwise. The CUDA EP
//!   prepares its depthwise convolutions again whenever the input shape
//!   changes (0.8–1.8 s per MobileNetV2 run on an H100), so under dynamic
//!   batching each batch size needs its own session; see the `shapes` module.
//!   Pair it with the server's `pad_to_preferred` so the sizes stay few.
//! - `extra["profile"]`: a path prefix; each session writes ONNX Runtime's
//!   per-node profile (Chrome trace JSON) there when it ends.
//! - `extra["dylib"]`: the library, as above.
//!
//! Model files are checked before ONNX Runtime sees them: a missing path, a
//! directory and an empty file get a one-line [`Error::InvalidModelFormat`];
//! ORT's own verdict on a corrupt file is collapsed to one line too.
//!
//! # Sessions
//!
//! ONNX Runtime's C `Run` may be called concurrently, but `ort`'s `Session::run`
//! takes `&mut self`, so one ORT session cannot serve several workers at once:
//!
//! - `per_worker` (default): each [`LoadedModel::session`] call gets its own ORT
//!   session. Workers never wait on each other, but **each session holds its own
//!   copy of the weights and its own intra-op thread pool**: memory is about the
//!   model size times the number of workers, and `threads` × workers should not
//!   exceed the cores. The session built at load (to validate the model and read
//!   its signature) goes to the first worker.
//! - `shared`: one ORT session behind a mutex; workers take turns. One copy of
//!   the weights: the choice for large models, or for GPUs.
//!
//! [`LoadedModel::memory`] reports the file size as `weight_bytes` (per session)
//! and the bytes of one batch row of inputs and outputs as a lower bound of
//! `activation_bytes_per_item`.
//!
//! # Running
//!
//! Inputs are passed to ONNX Runtime without copying when their buffers are
//! aligned (pomme's always are); outputs are copied once into pomme tensors.
//! Every pomme dtype is supported, `BYTES` as ONNX strings (UTF-8, no NUL bytes).
//! Run errors are [`Error::InferenceFailed`].
//!
//! # Inspection
//!
//! [`Backend::inspect`] returns the signature and the metadata ONNX Runtime
//! exposes (`producer`, `graph_name`, `domain`, `model_version`, `description`,
//! `opset`, custom keys as `custom.<key>`, and `onnxruntime` build info). It
//! leaves `parameters`, `weight_bytes`, `activation_bytes_estimate` and
//! `op_histogram` empty: ONNX Runtime does not expose the graph, and the tract
//! backend computes those from the file.
#![forbid(unsafe_code)]

pub(crate) mod convert;
pub(crate) mod dylib;
pub(crate) mod ep;
mod model;
mod shapes;

use dylib::{Located, Source};
use model::{OrtModel, SessionConfig, SessionMode};
use ort::session::builder::GraphOptimizationLevel;
use pomme_core::{
    Availability, Backend, DeviceInfo, DeviceKind, Error, LoadOptions, LoadedModel, ModelArtifact,
    ModelFormat, ModelInfo, Precision, Result,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ONNX Runtime backend (`ort`). Cheap to construct: the library is looked
/// for at construction and loaded on first use; see the crate docs.
#[derive(Clone, Debug)]
pub struct OrtBackend {
    located: Located,
}

impl OrtBackend {
    /// A backend that finds the library by the discovery rules (`ORT_DYLIB_PATH`,
    /// `POMME_ORT_VENV`, `./.venv`, `$HOME/.venv`).
    pub fn new() -> OrtBackend {
        OrtBackend {
            located: dylib::discover(),
        }
    }

    /// A backend using exactly this library file (no discovery).
    pub fn with_dylib(path: impl Into<PathBuf>) -> OrtBackend {
        OrtBackend {
            located: Located::given(path.into(), Source::Explicit),
        }
    }

    /// A backend using the library that `pip install onnxruntime` put in the
    /// Python virtual environment `venv`; unavailable when there is none.
    pub fn with_venv(venv: impl AsRef<Path>) -> OrtBackend {
        let venv = venv.as_ref();
        OrtBackend {
            located: match dylib::find_in_venv(venv) {
                Some(p) => Located::Found(p, Source::Venv),
                None => Located::Missing(dylib::venv_missing(venv)),
            },
        }
    }

    /// The library this backend will load, or `None` when none was found
    /// ([`Backend::availability`] then says why).
    pub fn dylib_path(&self) -> Option<&Path> {
        self.located.path()
    }

    fn runtime_for(&self, options: &LoadOptions) -> Result<&'static dylib::OrtRuntime> {
        let located = match options.extra.get("dylib") {
            Some(p) => &Located::given(PathBuf::from(p), Source::LoadOption),
            None => &self.located,
        };
        dylib::runtime(located).map_err(Error::Unavailable)
    }
}

impl Default for OrtBackend {
    fn default() -> Self {
        OrtBackend::new()
    }
}

fn check_format(artifact: &ModelArtifact) -> Result<()> {
    if artifact.format == ModelFormat::Onnx {
        Ok(())
    } else {
        Err(Error::InvalidModelFormat(format!(
            "{}: the ort backend reads ONNX, not {}",
            artifact.path.display(),
            artifact.format
        )))
    }
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn formats(&self) -> &[ModelFormat] {
        &[ModelFormat::Onnx]
    }

    fn availability(&self) -> Availability {
        match dylib::runtime(&self.located) {
            Ok(_) => Availability::Available,
            Err(reason) => Availability::Unavailable(reason),
        }
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        let rt = dylib::runtime(&self.located);
        let gated = |present: fn() -> bool, missing: &str| match &rt {
            Err(reason) => Availability::Unavailable(reason.clone()),
            Ok(_) if present() => Availability::Available,
            Ok(_) => Availability::Unavailable(missing.to_string()),
        };
        let mut devices = vec![DeviceInfo {
            kind: DeviceKind::Cpu,
            name: "CPU".into(),
            availability: gated(|| true, ""),
        }];
        #[cfg(not(target_vendor = "apple"))]
        devices.push(DeviceInfo {
            kind: DeviceKind::Cuda,
            name: "CUDA (ONNX Runtime CUDA EP)".into(),
            availability: gated(
                ep::has_cuda,
                "this onnxruntime library has no CUDA execution provider (use the onnxruntime-gpu build)",
            ),
        });
        #[cfg(target_vendor = "apple")]
        for (kind, name) in [
            (DeviceKind::Ane, "Neural Engine (Core ML EP)"),
            (DeviceKind::Metal, "GPU (Core ML EP)"),
            (DeviceKind::Auto, "Core ML EP, all compute units"),
        ] {
            devices.push(DeviceInfo {
                kind,
                name: name.into(),
                availability: gated(
                    ep::has_coreml,
                    "this onnxruntime library has no Core ML execution provider",
                ),
            });
        }
        devices
    }

    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo> {
        check_format(artifact)?;
        model::check_model_file(&artifact.path)?;
        let rt = self.runtime_for(&LoadOptions::default())?;
        // Graph optimisation is skipped: inspection only reads declarations.
        let cfg = SessionConfig {
            eps: Vec::new(),
            intra_threads: Some(1),
            optimization: GraphOptimizationLevel::Disable,
            spinning: false,
            profile: None,
            shape_sessions: 1,
        };
        let session = model::build_session(rt, &artifact.path, &cfg)?;
        let signature = model::signature_of(&session)?;
        let mut metadata = std::collections::BTreeMap::new();
        if let Ok(m) = session.metadata() {
            let mut put = |k: &str, v: Option<String>| {
                if let Some(v) = v.filter(|v| !v.is_empty()) {
                    metadata.insert(k.to_string(), v);
                }
            };
            put("producer", m.producer());
            put("graph_name", m.name());
            put("domain", m.domain());
            put("model_version", m.version().map(|v| v.to_string()));
            put("description", m.description());
            put("graph_description", m.graph_description());
            for key in m.custom_keys().unwrap_or_default() {
                let value = m.custom(&key);
                put(&format!("custom.{key}"), value);
            }
        }
        if let Some(opset) = session.opset_for_domain(ort::editor::ONNX_DOMAIN) {
            metadata.insert("opset".into(), opset.to_string());
        }
        metadata.insert("onnxruntime".into(), rt.build_info.clone());
        Ok(ModelInfo {
            signature,
            metadata,
            ..ModelInfo::default()
        })
    }

    fn load(
        &self,
        artifact: &ModelArtifact,
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        check_format(artifact)?;
        let file_bytes = model::check_model_file(&artifact.path)?;
        if !matches!(options.precision, Precision::F32 | Precision::F16) {
            return Err(Error::UnsupportedPrecision(format!(
                "the ort backend converts ONNX files to f16 only, not to {}; quantize the file and load it with precision f32",
                options.precision
            )));
        }
        let mode = SessionMode::from_options(options)?;
        if options.threads == Some(0) {
            return Err(Error::invalid_input("threads must be at least 1"));
        }
        let rt = self.runtime_for(options)?;
        let plan = ep::plan(options)?;
        // After the library and the EPs are known to be there: no conversion
        // for a load that cannot run.
        let path = if options.precision == Precision::F16 {
            // Converted once (float16 weights and compute, f32 inputs and
            // outputs) and cached by content; see `pomme_quant::fp16`.
            let dir = options
                .extra
                .get("fp16_cache_dir")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(pomme_quant::fp16::default_cache_dir);
            let converted = pomme_quant::fp16::convert_file_cached(&artifact.path, &dir)?;
            tracing::info!(from = %artifact.path.display(), to = %converted.display(), "ort: running the float16 conversion");
            converted
        } else {
            artifact.path.clone()
        };
        let cfg = SessionConfig {
            eps: plan.eps,
            intra_threads: options.threads,
            optimization: GraphOptimizationLevel::All,
            spinning: model::spinning(options)?,
            profile: model::profile_prefix(options)?,
            shape_sessions: model::shape_sessions(options)?,
        };
        let model = OrtModel::load(rt, &path, file_bytes, cfg, plan.device, mode)?
            .with_precision(options.precision);
        tracing::debug!(
            path = %artifact.path.display(),
            device = %plan.device,
            ?mode,
            "ort model loaded"
        );
        Ok(Arc::new(model))
    }
}
