//! pomme's tract backend: ONNX and NNEF models run by [tract](https://github.com/sonos/tract).
//!
//! [`TractBackend`] implements [`pomme_core::Backend`]. Loading parses the model
//! and analyses it into a typed model whose input dimensions stay symbolic
//! (ONNX `dim_param`s such as `batch` or `seq` become tract symbols), so the
//! signature reads `[batch,3,224,224]`. Runs use plans *specialized* to the
//! values those symbols take in the run's inputs (`batch=8, seq=17`), built
//! on first use and kept in a small LRU cache shared by all sessions of the
//! model (`src/plans.rs` says why: tract only reaches its fast
//! kernels with concrete shapes, and some models cannot be optimized with
//! symbols at all). Every [`Session`](pomme_core::Session) spawns its own
//! tract state per plan, so one loaded model serves any batch size from any
//! number of threads. Loading builds one plan (the warm-up, batch 1 by
//! default), so a model tract cannot prepare fails at load, not at the
//! first request. Each new shape costs one plan build (tens of ms for
//! MobileNetV2, about a second for MiniLM in a debug build) on its first
//! request; clients with free sequence lengths should pad to a few buckets.
//!
//! Devices map to tract runtimes: `cpu` (and `auto`) → tract's CPU runtime;
//! `metal` → tract-metal, compiled on Apple targets only; `cuda` → tract-cuda,
//! behind this crate's `cuda` feature on Linux. A runtime that cannot start
//! (no feature, no GPU, no driver) yields [`Error::Unavailable`] naming why.
//!
//! Threads: `LoadOptions::threads = Some(n)` with `n > 1` gives the model a
//! private `n`-thread rayon pool that tract uses inside ops (matrix products,
//! element-wise kernels); `Some(0 | 1)` runs single-threaded; `None` uses
//! tract's process default executor, single-threaded unless the application
//! called `tract_linalg::multithread::set_default_executor`.
//!
//! CUDA and f32: cuDNN/cuBLAS use TF32 tensor cores for f32 work on Ampere and
//! newer unless `NVIDIA_TF32_OVERRIDE=0` is in the environment before the
//! libraries load (~1e-3 relative error on ResNet-18). The `pomme` binary sets
//! it first thing in `main`; a library user must set it before starting threads.
//!
//! Precision: `f32` runs the model as stored; `f16` applies tract's
//! `f32_to_f16` transform; `int8` / `int4` are refused with
//! [`Error::UnsupportedPrecision`] (quantize the model file instead).
//!
//! `LoadOptions::extra` keys read here:
//! - `symbol.<name>` = positive integer: the value a model symbol (e.g.
//!   `symbol.seq` = `128`) takes in the activation estimate (every symbol
//!   defaults to 1; the estimate is always per batch row); also the warm-up
//!   value when no `warmup.<name>` is given.
//! - `warmup.<name>` = positive integer: the symbol's value in the plan built
//!   at load. Default: 1 for a symbol that is axis 0 of an input (the batch),
//!   8 for any other (e.g. `seq`).
//! - `split_batch` = `true` / `false` (default `false`): run a batch of n
//!   rows as n runs of the batch-1 plan, then join the outputs. Refused at
//!   load unless every input and output shares the symbolic first dimension.
//!   Why: tract 0.23.9 optimizes convolutions worse at batch > 1 (at batch 8
//!   MobileNetV2 gets 68 `MoveAxis` and 34 unfused `Add` nodes that batch 1
//!   does not have, and its depthwise convolutions take 15× as long), so on
//!   conv nets n batch-1 runs beat one batch-n run (see BENCHMARKS.md);
//!   transformers (MiniLM) batch well and should leave it off.
//! - `plan_cache` = positive integer: how many specialized plans the model
//!   keeps (default 8; each holds its own packed copy of the weights). Each
//!   session keeps at most as many tract states.
//!
//! For benchmarks against raw tract, [`TractBackend::load_tract`] returns the
//! concrete [`TractModel`]; [`TractModel::plan_for`] is the tract `Runnable`
//! specialized to given inputs and [`TractModel::tract_inputs`] converts them;
//! the tract crates are re-exported so callers use the same version.
#![forbid(unsafe_code)]

mod convert;
mod device;
mod flatten;
mod model;
mod nnef;
mod onnx;
mod plans;

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

use crate::convert::one_line;
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
                        one_line(&e)
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
        let symbols = symbol_overrides(options)?;
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
            .map_err(|e| Error::Internal(one_line(&e)))?;
        let memory = MemoryEstimate {
            weight_bytes: a.weight_bytes,
            activation_bytes_per_item: model::activation_estimate(&a.model, &symbols),
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
            cache_capacity(options)?,
        )?;
        let warm_key = warmup_key(&plans, options, &symbols)?;
        let split_batch = split_batch(options, &signature)?;
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
/// `symbol.<name>`, else 1 for a leading (batch) dimension and 8 for any
/// other (a sequence length of 1 is a degenerate case some graphs fold away).
fn warmup_key(
    plans: &plans::Specializer,
    options: &LoadOptions,
    symbols: &BTreeMap<String, i64>,
) -> Result<plans::Key> {
    let warmups = positive_options(options, "warmup.")?;
    Ok(plans
        .symbols()
        .iter()
        .enumerate()
        .map(|(at, sym)| {
            let name = sym.to_string();
            warmups
                .get(&name)
                .or_else(|| symbols.get(&name))
                .copied()
                .unwrap_or(if plans.is_leading(at) { 1 } else { 8 })
        })
        .collect())
}

/// `split_batch` = `true` / `false` (default): run a batch of n rows as n
/// batch-1 runs. Only for models whose every input and output has the same
/// symbolic first dimension (rows are independent), else refused at load.
fn split_batch(options: &LoadOptions, signature: &ModelSignature) -> Result<bool> {
    let on = match options.extra.get("split_batch").map(|v| v.trim()) {
        None | Some("false") => return Ok(false),
        Some("true") => true,
        Some(v) => {
            return Err(Error::invalid_input(format!(
                "option split_batch = '{v}' is not true or false"
            )));
        }
    };
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
    Ok(on)
}

/// `plan_cache` = how many specialized plans to keep (default 8).
fn cache_capacity(options: &LoadOptions) -> Result<usize> {
    match options.extra.get("plan_cache") {
        None => Ok(8),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid_input(format!(
                "option plan_cache = '{v}' is not a positive integer"
            ))),
        },
    }
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
            one_line(&e)
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
            one_line(&e)
        ))
    })
}

fn symbol_overrides(options: &LoadOptions) -> Result<BTreeMap<String, i64>> {
    positive_options(options, "symbol.")
}

/// Every `<prefix><name>` = positive integer in `LoadOptions::extra`, by name.
fn positive_options(options: &LoadOptions, prefix: &str) -> Result<BTreeMap<String, i64>> {
    options
        .extra
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|name| (name, v)))
        .map(|(name, v)| match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Ok((name.to_string(), n)),
            _ => Err(Error::invalid_input(format!(
                "option {prefix}{name} = '{v}' is not a positive integer"
            ))),
        })
        .collect()
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
