//! pomme's ONNX Runtime backend, through the [`ort`] crate with the onnxruntime
//! shared library loaded at run time (nothing is linked or downloaded at build
//! time): CPU, CUDA EP, and the Core ML EP on Apple platforms.
//!
//! The library is found by [`OrtBackend`]'s constructor ([`DylibSearch`], or a
//! given file or venv) and loaded once per process on first use; a missing or
//! broken library makes the backend unavailable with a one-line reason,
//! never a panic. Load options are [`OrtOptions`]; `threads` sets ORT's
//! intra-op threads (inter-op is 1: pomme does not use ORT's parallel
//! executor), and `precision = f16` runs `pomme_quant::fp16`'s conversion of
//! the file, cached. Model files are checked before ONNX Runtime sees them, so
//! common mistakes get a short [`Error::InvalidModelFormat`].
#![forbid(unsafe_code)]

pub(crate) mod convert;
pub(crate) mod dylib;
pub(crate) mod ep;
mod model;
pub mod options;
mod shapes;

pub use dylib::DylibSearch;
pub use options::OrtOptions;

use dylib::{Located, Source};
use model::{OrtModel, SessionConfig};
use ort::session::builder::GraphOptimizationLevel;
use pomme_core::{
    Availability, Backend, DeviceInfo, DeviceKind, Error, LoadOptions, LoadedModel, ModelArtifact,
    ModelFormat, ModelInfo, Precision, Result,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ONNX Runtime backend (`ort`). Cheap to construct: the library is looked
/// for at construction and loaded on first use.
#[derive(Clone, Debug)]
pub struct OrtBackend {
    located: Located,
    fp16_cache_dir: PathBuf,
    process_tf32_off: bool,
}

impl OrtBackend {
    /// A backend that looks for the library in `./.venv` only
    /// ([`DylibSearch::default`]); see [`OrtBackend::discover`].
    pub fn new() -> OrtBackend {
        OrtBackend::discover(&DylibSearch::default())
    }

    /// A backend that finds the library by `search`'s rules.
    pub fn discover(search: &DylibSearch) -> OrtBackend {
        OrtBackend::with_located(dylib::discover(search))
    }

    /// A backend using exactly this library file (no discovery).
    pub fn with_dylib(path: impl Into<PathBuf>) -> OrtBackend {
        OrtBackend::with_located(Located::given(path.into(), Source::Explicit))
    }

    /// A backend using the library that `pip install onnxruntime` put in the
    /// Python virtual environment `venv`; unavailable when there is none.
    pub fn with_venv(venv: impl AsRef<Path>) -> OrtBackend {
        let venv = venv.as_ref();
        OrtBackend::with_located(match dylib::find_in_venv(venv) {
            Some(p) => Located::Found(p, Source::Venv),
            None => Located::Missing(dylib::venv_missing(venv)),
        })
    }

    fn with_located(located: Located) -> OrtBackend {
        OrtBackend {
            located,
            fp16_cache_dir: std::env::temp_dir().join("pomme-cache").join("fp16"),
            process_tf32_off: false,
        }
    }

    /// Where `precision = f16` keeps converted files unless a load names its
    /// own ([`OrtOptions::fp16_cache_dir`]); default `pomme-cache/fp16` in the
    /// temp dir.
    pub fn with_fp16_cache_dir(mut self, dir: impl Into<PathBuf>) -> OrtBackend {
        self.fp16_cache_dir = dir.into();
        self
    }

    /// Whether TF32 is off for the whole process (`NVIDIA_TF32_OVERRIDE=0`,
    /// read by the NVIDIA libraries when they load): a CUDA load asking for
    /// `tf32` then gets a warning that it cannot have it.
    pub fn with_process_tf32_off(mut self, off: bool) -> OrtBackend {
        self.process_tf32_off = off;
        self
    }

    /// The library this backend will load, or `None` when none was found
    /// ([`Backend::availability`] then says why).
    pub fn dylib_path(&self) -> Option<&Path> {
        self.located.path()
    }

    fn runtime_for(&self, dylib: Option<&Path>) -> Result<&'static dylib::OrtRuntime> {
        let located = match dylib {
            Some(p) => &Located::given(p.to_path_buf(), Source::LoadOption),
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

    fn option_keys(&self) -> &'static [&'static str] {
        options::KEYS
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

    /// The signature and the metadata ONNX Runtime exposes (`producer`,
    /// `graph_name`, `opset`, custom keys as `custom.<key>`, `onnxruntime`
    /// build info); parameters, weight bytes and the op histogram stay empty
    /// (ORT does not expose the graph; the tract backend computes them).
    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo> {
        check_format(artifact)?;
        model::check_model_file(&artifact.path)?;
        let rt = self.runtime_for(None)?;
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
        let opts = OrtOptions::from_load_options(options)?;
        if options.threads == Some(0) {
            return Err(Error::invalid_input("threads must be at least 1"));
        }
        let rt = self.runtime_for(opts.dylib.as_deref())?;
        let plan = ep::plan(&opts, options.device, self.process_tf32_off)?;
        // After the library and the EPs are known to be there: no conversion
        // for a load that cannot run.
        let path = if options.precision == Precision::F16 {
            // Converted once (float16 weights and compute, f32 inputs and
            // outputs) and cached by content; see `pomme_quant::fp16`.
            let dir = opts
                .fp16_cache_dir
                .as_deref()
                .unwrap_or(&self.fp16_cache_dir);
            let converted = pomme_quant::fp16::convert_file_cached(&artifact.path, dir)?;
            tracing::info!(from = %artifact.path.display(), to = %converted.display(), "ort: running the float16 conversion");
            converted
        } else {
            artifact.path.clone()
        };
        let mode = opts.sessions;
        let cfg = SessionConfig {
            eps: plan.eps,
            intra_threads: options.threads,
            optimization: GraphOptimizationLevel::All,
            spinning: opts.spin,
            profile: opts.profile,
            shape_sessions: opts
                .shape_sessions
                .unwrap_or_else(|| default_shape_sessions(plan.device, &path)),
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
/// ORT sessions per worker when `shape_sessions` is unset: 8 on CUDA for a
/// graph with a grouped convolution (the EP re-prepares those at every shape
/// change; [`crate::shapes`]), else 1. A file that does not decode here gets
/// 8 on CUDA, the old default (ORT itself reports what is wrong with it).
pub fn default_shape_sessions(device: DeviceKind, path: &std::path::Path) -> usize {
    if device != DeviceKind::Cuda {
        return 1;
    }
    match pomme_quant::onnx::load_model(path) {
        Ok((m, _)) => {
            if m.graph.as_ref().is_some_and(has_grouped_conv) {
                8
            } else {
                1
            }
        }
        Err(_) => 8,
    }
}

/// Whether a graph (or a subgraph of its control flow) holds a `Conv` with
/// `group` > 1.
fn has_grouped_conv(g: &pomme_quant::onnx::pb::GraphProto) -> bool {
    g.node.iter().any(|n| {
        (n.op_type == "Conv" && pomme_quant::onnx::get_attr_int(n, "group", 1) > 1)
            || n.attribute.iter().any(|a| {
                a.g.as_ref().is_some_and(has_grouped_conv) || a.graphs.iter().any(has_grouped_conv)
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_quant::onnx::{attr_int, node, pb};

    fn graph(nodes: Vec<pb::NodeProto>) -> pb::GraphProto {
        pb::GraphProto {
            node: nodes,
            ..Default::default()
        }
    }

    #[test]
    fn per_shape_sessions_only_for_grouped_convolutions_on_cuda() {
        let plain = node("Conv", "c", &["x", "w"], &["y"], vec![attr_int("group", 1)]);
        let depthwise = node(
            "Conv",
            "d",
            &["x", "w"],
            &["y"],
            vec![attr_int("group", 32)],
        );
        let matmul = node("MatMul", "m", &["x", "w"], &["y"], vec![]);
        assert!(!has_grouped_conv(&graph(vec![plain.clone(), matmul])));
        assert!(has_grouped_conv(&graph(vec![
            plain.clone(),
            depthwise.clone()
        ])));
        // Inside an If branch too.
        let branch = pb::AttributeProto {
            name: "then_branch".into(),
            g: Some(graph(vec![depthwise])),
            ..Default::default()
        };
        assert!(has_grouped_conv(&graph(vec![node(
            "If",
            "i",
            &["c"],
            &["y"],
            vec![branch]
        )])));
        // The CPU never needs them; a file that does not decode keeps the old CUDA default.
        let missing = std::path::Path::new("/nonexistent/model.onnx");
        assert_eq!(default_shape_sessions(DeviceKind::Cpu, missing), 1);
        assert_eq!(default_shape_sessions(DeviceKind::Cuda, missing), 8);
        // A transformer (the BERT-style text fixture) shares one session.
        let text = pomme_test_support::fixtures::repo_models().join("text/tiny_embed.onnx");
        assert_eq!(default_shape_sessions(DeviceKind::Cuda, &text), 1);
    }
}
