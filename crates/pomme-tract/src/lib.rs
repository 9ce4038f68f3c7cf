//! pomme's tract backend: ONNX and NNEF models run by [tract](https://github.com/sonos/tract).
//!
//! Loading analyses the model with its input dimensions kept symbolic (ONNX
//! `dim_param`s such as `batch` become tract symbols, so the signature reads
//! `[batch,3,224,224]`); runs use plans specialized to the symbol values of
//! their inputs, built on first use and cached per model (`plans.rs` says
//! why). Loading builds one warm-up plan, so a model tract cannot prepare
//! fails at load, not at the first request.
//!
//! Devices map to tract runtimes: `cpu` and `auto` → CPU; `metal` →
//! tract-metal (Apple targets); `cuda` → tract-cuda (the `cuda` feature, Linux).
//! A runtime that cannot start yields [`Error::Unavailable`] naming why.
//! `threads = Some(n > 1)` gives the model a private rayon pool; `Some(0 | 1)`
//! runs single-threaded; `None` uses tract's process default executor.
//! `precision = f16` applies tract's `f32_to_f16` transform; int8 / int4 are
//! refused (quantize the file instead). Load options are [`TractOptions`].
//!
//! On NVIDIA GPUs cuDNN/cuBLAS use TF32 for f32 work unless
//! `NVIDIA_TF32_OVERRIDE=0` is in the environment before they load; the
//! `pomme` binary sets it, a library user must set it before starting threads.
//!
//! [`TractBackend::load_tract`] returns the concrete [`TractModel`] for
//! benchmarks against raw tract ([`TractModel::plan_for`],
//! [`TractModel::tract_inputs`]); the tract crates are re-exported.
#![forbid(unsafe_code)]

mod convert;
mod device;
mod flatten;
mod model;
mod nnef;
mod onnx;
pub mod options;
mod plans;

pub use options::TractOptions;

// Linking a runtime crate is what registers its runtime with tract.
/// tract's CUDA runtime, for tools that profile it (e.g. pomme-backends'
/// `cuda_profile` example).
#[cfg(all(feature = "cuda", target_os = "linux"))]
pub use tract_cuda;
#[cfg(target_vendor = "apple")]
extern crate tract_metal;

pub use model::{TractModel, TractSession};
pub use {tract_core, tract_nnef, tract_onnx};

use pomme_core::{
    Availability, Backend, DeviceInfo, Error, LoadOptions, LoadedModel, MemoryEstimate,
    ModelArtifact, ModelFormat, ModelInfo, ModelSignature, Precision, Result,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tract_core::prelude::*;
use tract_core::runtime::RunOptions;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::InferenceModelExt;

use crate::convert::error_line;
use crate::device::no_panic;

/// The backend's stable name.
pub const NAME: &str = "tract";

const FORMATS: [ModelFormat; 2] = [ModelFormat::Onnx, ModelFormat::Nnef];

/// The tract backend. Cheap to construct; holds no state.
#[derive(Clone, Copy, Debug, Default)]
pub struct TractBackend;

/// A model read and analysed, not yet prepared for a device.
struct Analysed {
    model: TypedModel,
    /// ONNX graph input / output names (tract may rename nodes).
    names: Option<(Vec<String>, Vec<String>)>,
    parameters: u64,
    weight_bytes: u64,
    op_histogram: BTreeMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl TractBackend {
    pub fn new() -> TractBackend {
        TractBackend
    }

    /// The artifact for a path, by its name: `.onnx` → ONNX; a directory,
    /// `.nnef.tgz`, `.nnef.tar`, `.tgz` or `.tar` → NNEF.
    pub fn artifact_for_path(path: impl AsRef<Path>) -> Result<ModelArtifact> {
        let path = path.as_ref();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let format = if name.ends_with(".onnx") {
            ModelFormat::Onnx
        } else if path.is_dir()
            || [".tgz", ".tar", ".tar.gz"]
                .iter()
                .any(|e| name.ends_with(e))
        {
            ModelFormat::Nnef
        } else if !path.exists() {
            return Err(Error::InvalidModelFormat(format!(
                "model path {} does not exist",
                path.display()
            )));
        } else {
            return Err(Error::InvalidModelFormat(format!(
                "unknown model format for {} (tract reads .onnx, .nnef.tgz, .nnef.tar or an NNEF directory)",
                path.display()
            )));
        };
        Ok(ModelArtifact {
            path: path.to_path_buf(),
            format,
        })
    }

    fn analyse(&self, artifact: &ModelArtifact) -> Result<Analysed> {
        match artifact.format {
            ModelFormat::Onnx => {
                let proto = onnx::read_proto(&artifact.path)?;
                let facts = onnx::proto_facts(&proto);
                let inference = onnx::parse(&proto, &artifact.path)?;
                let names = onnx::io_names(&proto);
                drop(proto);
                let typed = inference.into_typed().map_err(|e| {
                    Error::CompilationFailed(format!(
                        "tract could not analyse the model: {}",
                        error_line(&e)
                    ))
                })?;
                Ok(Analysed {
                    model: declutter(typed)?,
                    names: Some(names),
                    parameters: facts.parameters,
                    weight_bytes: facts.weight_bytes,
                    op_histogram: facts.op_histogram,
                    metadata: facts.metadata,
                })
            }
            ModelFormat::Nnef => {
                let model = declutter(nnef::load(&artifact.path)?)?;
                let (parameters, weight_bytes, op_histogram, metadata) = nnef::typed_facts(&model);
                Ok(Analysed {
                    model,
                    names: None,
                    parameters,
                    weight_bytes,
                    op_histogram,
                    metadata,
                })
            }
            other => Err(Error::InvalidModelFormat(format!(
                "tract reads onnx and nnef models, not {other} ({})",
                artifact.path.display()
            ))),
        }
    }

    /// Loads a model and returns the concrete [`TractModel`] (what
    /// [`Backend::load`] returns as a trait object).
    pub fn load_tract(
        &self,
        artifact: &ModelArtifact,
        options: &LoadOptions,
    ) -> Result<Arc<TractModel>> {
        let (runtime, device) = device::runtime_for(options.device)?;
        let opts = TractOptions::from_load_options(options)?;
        let executor = executor(options.threads)?;
        let mut a = self.analyse(artifact)?;
        match options.precision {
            Precision::F32 => {}
            Precision::F16 => to_f16(&mut a.model)?,
            other => {
                return Err(Error::UnsupportedPrecision(format!(
                    "tract runs models at f32 or f16, not {other} (quantize the model file instead)"
                )));
            }
        }
        let signature = model::signature(&a.model, a.names.as_ref())?;
        let input_types = a
            .model
            .inputs
            .iter()
            .map(|&o| a.model.outlet_fact(o).map(|f| f.datum_type))
            .collect::<TractResult<Vec<_>>>()
            .map_err(|e| Error::Internal(error_line(&e)))?;
        let memory = MemoryEstimate {
            weight_bytes: a.weight_bytes,
            activation_bytes_per_item: model::activation_estimate(&a.model, &opts.symbols),
        };
        let run_options = RunOptions {
            executor,
            ..RunOptions::default()
        };
        let input_names = signature.inputs.iter().map(|s| s.name.clone()).collect();
        let plans = plans::Specializer::new(
            a.model,
            runtime,
            run_options,
            device,
            input_names,
            opts.plan_cache,
        )?;
        let warm_key = warmup_key(&plans, &opts);
        let split_batch = opts.split_batch && check_split_batch(&signature)?;
        Ok(Arc::new(TractModel::new(
            plans,
            split_batch,
            warm_key,
            signature,
            input_types,
            memory,
            device,
            options.precision,
        )?))
    }
}

/// The symbol values of the plan built at load: `warmup.<name>`, else
/// `symbol.<name>`, else 1 for a leading (batch) dimension and 8 for any other.
fn warmup_key(plans: &plans::Specializer, opts: &TractOptions) -> plans::Key {
    plans
        .symbols()
        .iter()
        .enumerate()
        .map(|(at, sym)| {
            let name = sym.to_string();
            opts.warmups
                .get(&name)
                .or_else(|| opts.symbols.get(&name))
                .copied()
                .unwrap_or(if plans.is_leading(at) { 1 } else { 8 })
        })
        .collect()
}

/// `split_batch = true` needs rows to be independent: every input and output
/// has the same symbolic first dimension. Returns `true` or the refusal.
fn check_split_batch(signature: &ModelSignature) -> Result<bool> {
    let leading = |s: &pomme_core::TensorSpec| match s.shape.dims().first() {
        Some(pomme_core::Dim::Symbolic(name)) => Some(name.clone()),
        _ => None,
    };
    let first = signature.inputs.first().and_then(leading);
    let all_same = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .all(|s| first.is_some() && leading(s) == first);
    if !all_same {
        return Err(Error::invalid_input(
            "option split_batch = true needs every input and output to share a symbolic first (batch) dimension",
        ));
    }
    Ok(true)
}

/// Simplifies the model while its symbols are free. Some graphs cannot be
/// simplified symbolically (MiniLM: "Undetermined symbol in expression:
/// seq" in an attention `Mul`); those are kept as analysed, and tract
/// simplifies each specialized copy once the symbols have values, so a real
/// error still surfaces at load, from the warm-up plan.
fn declutter(model: TypedModel) -> Result<TypedModel> {
    match model.clone().into_decluttered() {
        Ok(m) => Ok(m),
        Err(_) if !model.symbols.all_symbols().is_empty() => Ok(model),
        Err(e) => Err(Error::CompilationFailed(format!(
            "tract could not simplify the model: {}",
            error_line(&e)
        ))),
    }
}

fn to_f16(model: &mut TypedModel) -> Result<()> {
    let transform = tract_core::transform::get_transform("f32_to_f16")
        .ok()
        .flatten()
        .ok_or_else(|| Error::UnsupportedPrecision("tract has no f32_to_f16 transform".into()))?;
    transform.transform(model).map_err(|e| {
        Error::CompilationFailed(format!(
            "tract could not convert the model to f16: {}",
            error_line(&e)
        ))
    })
}

fn executor(threads: Option<usize>) -> Result<Option<Executor>> {
    match threads {
        None => Ok(None),
        Some(0 | 1) => Ok(Some(Executor::SingleThread)),
        Some(n) => no_panic("building tract's thread pool", || {
            Executor::multithread_with_name(n, "pomme-tract")
        })
        .map(Some)
        .map_err(Error::ResourceLimit),
    }
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn formats(&self) -> &[ModelFormat] {
        &FORMATS
    }

    fn option_keys(&self) -> &'static [&'static str] {
        options::KEYS
    }

    fn availability(&self) -> Availability {
        Availability::Available
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        device::devices()
    }

    /// Reads signature, weights, operators and an activation estimate. For
    /// ONNX, parameters / weight bytes / op histogram / metadata come from the
    /// protobuf; the signature and estimate from tract's analysed model
    /// (parsed and decluttered, not optimized).
    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo> {
        let a = self.analyse(artifact)?;
        let signature: ModelSignature = model::signature(&a.model, a.names.as_ref())?;
        Ok(ModelInfo {
            signature,
            parameters: a.parameters,
            weight_bytes: a.weight_bytes,
            activation_bytes_estimate: model::activation_estimate(&a.model, &BTreeMap::new()),
            op_histogram: a.op_histogram,
            metadata: a.metadata,
        })
    }

    fn load(
        &self,
        artifact: &ModelArtifact,
        options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        Ok(self.load_tract(artifact, options)?)
    }
}
