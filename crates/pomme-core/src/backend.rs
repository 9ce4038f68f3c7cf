//! The small synchronous contract every engine implements.
//!
//! A [`Backend`] loads a [`ModelArtifact`] into a [`LoadedModel`]: an immutable,
//! shareable prepared plan (`Send + Sync`). Each compute worker thread asks it for
//! its own [`Session`] (mutable per-thread state) and runs batches through that.
//! Async, queues, deadlines and batching live in the runtime, not here.

use crate::{Error, ModelSignature, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

/// On-disk model formats pomme knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// ONNX protobuf (`.onnx`).
    Onnx,
    /// NNEF, as a directory or a `.nnef.tgz` / `.nnef.tar` archive.
    Nnef,
    /// Core ML: `.mlmodel`, `.mlpackage` or compiled `.mlmodelc`.
    CoreMl,
    /// Core AI (macOS 27+): an `.aimodel` asset directory, or a program
    /// compiled for the in-package runtime (`.aimodelx`).
    CoreAi,
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Nnef => "nnef",
            ModelFormat::CoreMl => "coreml",
            ModelFormat::CoreAi => "coreai",
        })
    }
}

/// A model file (or bundle directory) and its detected format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelArtifact {
    pub path: PathBuf,
    pub format: ModelFormat,
}

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Host CPU.
    Cpu,
    /// Apple GPU through Metal.
    Metal,
    /// NVIDIA GPU through CUDA.
    Cuda,
    /// Apple Neural Engine (through Core ML).
    Ane,
    /// Let the backend choose (Core ML's `all` compute units).
    Auto,
}

impl DeviceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Metal => "metal",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Ane => "ane",
            DeviceKind::Auto => "auto",
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "cpu" => DeviceKind::Cpu,
            "metal" | "gpu" => DeviceKind::Metal,
            "cuda" => DeviceKind::Cuda,
            "ane" => DeviceKind::Ane,
            "auto" => DeviceKind::Auto,
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown device '{other}' (expected cpu, metal, gpu, cuda, ane or auto)"
                )));
            }
        })
    }
}

/// Numeric precision a model runs at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Int8,
    Int4,
}

impl Precision {
    pub const fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "fp32" => Precision::F32,
            "f16" | "fp16" => Precision::F16,
            "int8" => Precision::Int8,
            "int4" => Precision::Int4,
            other => {
                return Err(Error::UnsupportedPrecision(format!(
                    "unknown precision '{other}' (expected f32, f16, int8 or int4)"
                )));
            }
        })
    }
}

/// How to load a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    pub device: DeviceKind,
    /// Intra-op threads for CPU engines; `None` lets the engine decide.
    pub threads: Option<usize>,
    pub precision: Precision,
    /// Backend-specific settings (`compute_units`, `cache_dir`, `dylib`...), as text.
    pub extra: BTreeMap<String, String>,
}

impl LoadOptions {
    /// Default options with these backend settings (`extra`).
    pub fn with_extra(pairs: &[(&str, &str)]) -> LoadOptions {
        LoadOptions {
            extra: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LoadOptions::default()
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceKind::Cpu,
            threads: None,
            precision: Precision::F32,
            extra: BTreeMap::new(),
        }
    }
}

/// The share of a model's work a backend planned on one compute device (Core
/// ML's `MLComputePlan`: Neural Engine, GPU, CPU). Backends without such a plan
/// report none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementShare {
    /// `ane`, `gpu` or `cpu`.
    pub device: String,
    /// Operations whose preferred device this is.
    pub ops: usize,
    /// Fraction of placed operations.
    pub op_share: f64,
    /// Fraction of the estimated cost, when the plan gives costs.
    pub cost_share: Option<f64>,
}

/// Memory a loaded model needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEstimate {
    /// Weights held by the engine (bytes).
    pub weight_bytes: u64,
    /// Peak intermediate activations for one batch row (bytes, an estimate).
    pub activation_bytes_per_item: u64,
}

impl MemoryEstimate {
    /// Bytes needed to run a batch of `n` rows.
    pub fn for_batch(&self, n: usize) -> u64 {
        self.weight_bytes + self.activation_bytes_per_item * n as u64
    }
}

/// Whether a backend can be used here, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Availability {
    Available,
    Unavailable(String),
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available)
    }
}

/// A device a backend can run on, and whether it is usable now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    /// Human-readable name (`CPU`, `NVIDIA H100`, ...).
    pub name: String,
    pub availability: Availability,
}

/// What inspection learns about a model without running it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub signature: ModelSignature,
    /// Number of weight elements.
    pub parameters: u64,
    /// Exact bytes of stored weights.
    pub weight_bytes: u64,
    /// Estimated peak activation memory for batch 1 (bytes).
    pub activation_bytes_estimate: u64,
    /// Operator type → count.
    pub op_histogram: BTreeMap<String, usize>,
    /// Free-form facts (producer, opset, author...).
    pub metadata: BTreeMap<String, String>,
}

/// An inference engine. Implementations are cheap to construct; availability
/// (a missing library, no GPU) is reported, never panicked on.
pub trait Backend: Send + Sync {
    /// Short stable name: `tract`, `ort`, `coreml`.
    fn name(&self) -> &'static str;
    /// Formats this backend reads.
    fn formats(&self) -> &[ModelFormat];
    /// Whether the backend can be used at all on this machine.
    fn availability(&self) -> Availability;
    /// Devices this backend can target here.
    fn devices(&self) -> Vec<DeviceInfo>;
    /// Reads a model's signature, weights and operators without preparing it.
    fn inspect(&self, artifact: &ModelArtifact) -> Result<ModelInfo>;
    /// Loads and prepares a model.
    fn load(&self, artifact: &ModelArtifact, options: &LoadOptions)
    -> Result<Arc<dyn LoadedModel>>;
    /// The `LoadOptions.extra` keys this backend reads. The runtime refuses a
    /// load whose extra keys no candidate backend reads ([`check_extra_keys`]),
    /// so a typo in a model's configuration is an error, not a silent no-op.
    /// A key ending in `*` stands for every key with that prefix and a
    /// non-empty rest (`symbol.*` matches `symbol.seq`).
    fn option_keys(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Whether `key` is the option key `pattern` names: the same text, or, for a
/// pattern ending in `*`, the prefix before it followed by at least one character.
pub fn option_key_matches(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.len() > prefix.len() && key.starts_with(prefix),
        None => pattern == key,
    }
}

/// Refuses `extra` keys that none of `backends` reads, with one line naming
/// the key and, per backend, the keys it does read.
pub fn check_extra_keys(extra: &BTreeMap<String, String>, backends: &[&dyn Backend]) -> Result<()> {
    for key in extra.keys() {
        if backends
            .iter()
            .any(|b| b.option_keys().iter().any(|p| option_key_matches(p, key)))
        {
            continue;
        }
        let valid: Vec<String> = backends
            .iter()
            .map(|b| {
                let keys = b.option_keys();
                if keys.is_empty() {
                    format!("{}: none", b.name())
                } else {
                    format!("{}: {}", b.name(), keys.join(", "))
                }
            })
            .collect();
        return Err(Error::InvalidInput(format!(
            "unknown backend option '{key}'; valid options are {}",
            if valid.is_empty() {
                "none (no backend)".to_string()
            } else {
                valid.join("; ")
            }
        )));
    }
    Ok(())
}

/// A prepared model, shared by all worker threads.
pub trait LoadedModel: Send + Sync {
    /// Backend name.
    fn backend(&self) -> &'static str;
    /// Inputs and outputs, with symbolic dimensions kept symbolic.
    fn signature(&self) -> &ModelSignature;
    /// Memory needed.
    fn memory(&self) -> MemoryEstimate;
    /// Where it runs.
    fn device(&self) -> DeviceKind;
    /// At what precision.
    fn precision(&self) -> Precision;
    /// The precision the engine actually computes in, which can be lower than
    /// [`LoadedModel::precision`]: the Apple Neural Engine computes in float16
    /// whatever the model's weights are. Routing compares this candidate's
    /// outputs with a tolerance suited to it. Default: `precision()`.
    fn compute_precision(&self) -> Precision {
        self.precision()
    }
    /// New per-thread execution state.
    fn session(&self) -> Result<Box<dyn Session>>;
    /// Where the backend planned the work, per device (empty when it has no
    /// such plan).
    fn placement(&self) -> Vec<PlacementShare> {
        Vec::new()
    }
    /// Whether the first run at each new input shape is expensive for this
    /// engine, so a dynamic batcher feeding it every size from 1 to the max
    /// would keep paying it (measured: about a second per new MobileNetV2
    /// batch size on one GPU engine). The runtime warns when such a model is
    /// batched without `pad_to_preferred`.
    fn prefers_few_shapes(&self) -> bool {
        false
    }
    /// Whether the model keeps state between requests (Triton's sequence
    /// batcher). The runtime then refuses requests without sequence
    /// parameters, runs each sequence request alone through
    /// [`Session::run_sequence`], on one worker thread (one session, so
    /// state kept in the session is seen by every request of a sequence, in
    /// order), and skips the padded-size warm-up.
    fn is_stateful(&self) -> bool {
        false
    }
    /// Checks one request's inputs (in signature order, already checked
    /// against the signature) before it is queued, so input a model refuses
    /// for its content (a text model's invalid UTF-8, a text longer than its
    /// limit) fails that request alone instead of the batch it would join.
    fn check_request(&self, inputs: &[Tensor]) -> Result<()> {
        let _ = inputs;
        Ok(())
    }
}

/// Wraps a loaded model in another that changes what it takes or returns
/// (text in, embeddings out) while the runtime serves the result like any
/// model: batching, admission, statistics and caching see the wrapper. The
/// runtime applies a spec's adapter after loading (and routing) the inner
/// model; adapters live above the core, which only knows this trait.
pub trait ModelAdapter: Send + Sync + fmt::Debug {
    /// What the adapter is, for logs (`text`).
    fn name(&self) -> &'static str;
    /// The served model around `inner`, or why `inner` cannot be adapted.
    fn wrap(
        &self,
        inner: std::sync::Arc<dyn LoadedModel>,
    ) -> Result<std::sync::Arc<dyn LoadedModel>>;
}

/// Per-thread execution state of a [`LoadedModel`].
pub trait Session: Send {
    /// Runs one batch. Inputs and outputs are in signature order; inputs have
    /// already been checked against the signature.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>>;
    /// Runs one request of a sequence, alone (never batched with another
    /// request). A stateful model starts the sequence's state afresh on
    /// `seq.start`, carries it from request to request, and drops it after
    /// `seq.end`. The default ignores the sequence, like a Triton model
    /// without a sequence batcher.
    fn run_sequence(&mut self, inputs: Vec<Tensor>, seq: &SequenceControl) -> Result<Vec<Tensor>> {
        let _ = seq;
        self.run(inputs)
    }
}

/// A request's place in a sequence (Triton's sequence parameters), for stateful models.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SequenceControl {
    /// The sequence's id (`sequence_id`, a number or a string, as text).
    pub id: String,
    /// `sequence_start`: this request begins the sequence (state starts fresh).
    pub start: bool,
    /// `sequence_end`: this request ends it (its state is dropped after).
    pub end: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_device_and_precision() {
        assert_eq!("gpu".parse::<DeviceKind>().unwrap(), DeviceKind::Metal);
        assert!(
            "tpu"
                .parse::<DeviceKind>()
                .unwrap_err()
                .to_string()
                .contains("unknown device 'tpu'")
        );
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        assert!(matches!(
            "int3".parse::<Precision>(),
            Err(Error::UnsupportedPrecision(_))
        ));
    }

    #[test]
    fn memory_for_batch() {
        let m = MemoryEstimate {
            weight_bytes: 100,
            activation_bytes_per_item: 10,
        };
        assert_eq!(m.for_batch(8), 180);
    }

    #[test]
    fn prefix_patterns_match_named_keys_only() {
        assert!(option_key_matches("spin", "spin"));
        assert!(!option_key_matches("spin", "spinning"));
        assert!(option_key_matches("symbol.*", "symbol.seq"));
        assert!(!option_key_matches("symbol.*", "symbol."));
        assert!(!option_key_matches("symbol.*", "symbols.seq"));
    }
}
