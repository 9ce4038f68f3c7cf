//! How a model is to be served: what the server's repository config and library
//! users hand to [`crate::Runtime::load`].

use pomme_core::{DType, Dim, Error, LoadOptions, MemoryEstimate, ModelSignature, Result, Shape};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Dynamic batching settings of one model (Triton's `dynamic_batching`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchingConfig {
    /// How long the oldest request may wait for others to join its batch.
    pub max_queue_delay: Duration,
    /// Batch sizes to dispatch at once when reached.
    pub preferred_batch_sizes: Vec<usize>,
    /// Queue bound; a full queue rejects at once (429 / RESOURCE_EXHAUSTED).
    pub max_queue_size: usize,
    /// Queue timeout applied to requests that carry none.
    pub default_queue_timeout: Option<Duration>,
    /// Number of priority levels (1 = highest). 0 or 1: a single level.
    pub priority_levels: u32,
    /// Priority given to requests that ask for none.
    pub default_priority: u32,
    /// Run every batch at a preferred size: a batch of 5 rows with preferred
    /// sizes `[1, 2, 4, 8]` is padded to 8 (repeating its last row; the
    /// padding's outputs are dropped), and each preferred size (plus the max
    /// batch size) is run once on every worker at load, before the model is
    /// ready. This bounds the input shapes an engine sees to a few prepared
    /// ones, for engines that prepare each new shape on its first run.
    #[serde(default)]
    pub pad_to_preferred: bool,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_queue_delay: Duration::from_micros(500),
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_queue_timeout: None,
            priority_levels: 1,
            default_priority: 1,
            pad_to_preferred: false,
        }
    }
}

/// A model to load.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub version: u64,
    /// Model file or bundle.
    pub path: PathBuf,
    /// Backend preference (`["ort", "tract"]`); empty: every backend that reads the format, in registration order.
    pub backends: Vec<String>,
    pub load: LoadOptions,
    /// `Some` turns dynamic batching on.
    pub batching: Option<BatchingConfig>,
    /// Largest batch a worker runs (rows along the first axis); 0: no batching, one request per run.
    pub max_batch_size: usize,
    /// Compute threads for this model, each with its own session.
    pub workers: usize,
    /// Per-model memory cap in MiB: the weights plus the activation estimate
    /// for the largest batch must fit, or the load fails.
    pub memory_budget_mb: Option<u64>,
    /// Inputs a configuration declares: checked against the model's
    /// signature at load, and their fixed dims narrow its variable ones.
    pub declared_inputs: Vec<DeclaredTensor>,
    /// Outputs a configuration declares (checked like the inputs).
    pub declared_outputs: Vec<DeclaredTensor>,
    /// `Some`: measured routing (every candidate loaded, checked against the
    /// CPU reference and timed; the fastest that agrees serves, the others are
    /// fallbacks behind circuit breakers). `None`: the first backend of
    /// `backends` that loads serves.
    pub routing: Option<crate::routing::RoutingConfig>,
    /// Samples every worker runs before the version is ready (Triton's
    /// `model_warmup`); a failing one fails the load.
    pub warmup: Vec<crate::warmup::WarmupSample>,
    /// Answers go to the runtime's response cache, keyed by the exact
    /// inputs (Triton's `response_cache { enable: true }`).
    pub response_cache: bool,
    /// Implicit state (Triton's sequence batcher `state`): the declared
    /// state tensors are kept per sequence on the server.
    pub sequence: Option<crate::implicit::SequenceConfig>,
    /// Wraps the loaded model (a text model's tokenizer and pooling around
    /// its encoder); applied after implicit state.
    pub adapter: Option<std::sync::Arc<dyn pomme_core::ModelAdapter>>,
}

/// An input or output as a model configuration declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeclaredTensor {
    pub name: String,
    pub dtype: DType,
    /// Full dims including the batch dimension (-1: variable).
    pub dims: Vec<i64>,
}

impl ModelSpec {
    /// A single-worker, unbatched spec for `path`, version 1.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            version: 1,
            path: path.into(),
            backends: Vec::new(),
            load: LoadOptions::default(),
            batching: None,
            max_batch_size: 0,
            workers: 1,
            memory_budget_mb: None,
            declared_inputs: Vec::new(),
            declared_outputs: Vec::new(),
            routing: None,
            warmup: Vec::new(),
            response_cache: false,
            sequence: None,
            adapter: None,
        }
    }

    /// Turns on measured routing with fallback (see [`crate::RoutingConfig`]).
    pub fn routing(mut self, cfg: crate::routing::RoutingConfig) -> Self {
        self.routing = Some(cfg);
        self
    }

    /// Caps this model's memory (weights + activations of its largest batch).
    pub fn memory_budget_mb(mut self, mb: u64) -> Self {
        self.memory_budget_mb = Some(mb);
        self
    }

    /// Checks the loaded model's memory estimate against the per-model budget.
    pub fn check_memory(&self, memory: &MemoryEstimate, max_batch: usize) -> Result<()> {
        let Some(mb) = self.memory_budget_mb else {
            return Ok(());
        };
        let need = memory.for_batch(max_batch.max(1));
        if need > mb.saturating_mul(1 << 20) {
            return Err(Error::MemoryBudgetExceeded(format!(
                "model '{}' version {} needs {:.1} MiB (weights + activations for a batch of {}), above its memory_budget_mb of {mb}",
                self.name,
                self.version,
                need as f64 / (1u64 << 20) as f64,
                max_batch.max(1)
            )));
        }
        Ok(())
    }

    /// The signature to serve: the model's, checked against the declared
    /// inputs and outputs (every declared name must exist with the same
    /// dtype and rank, and each declared fixed dim must be one the model
    /// accepts), with declared fixed dims narrowing the model's variable ones.
    /// The first dim of a model whose first dim is variable stays variable:
    /// batching depends on it.
    pub fn apply_declared(&self, sig: &ModelSignature) -> Result<ModelSignature> {
        let mut out = sig.clone();
        for (what, declared, specs) in [
            ("input", &self.declared_inputs, &mut out.inputs),
            ("output", &self.declared_outputs, &mut out.outputs),
        ] {
            for d in declared {
                let bad = |msg: String| {
                    Error::InvalidModelFormat(format!(
                        "model '{}' version {}: the configuration declares {what} '{}' {msg}",
                        self.name, self.version, d.name
                    ))
                };
                let Some(spec) = specs.iter_mut().find(|s| s.name == d.name) else {
                    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    return Err(bad(format!(
                        "but the model has no such {what} (it has {})",
                        known.join(", ")
                    )));
                };
                if spec.dtype != d.dtype {
                    return Err(bad(format!(
                        "as {}, but the model's is {}",
                        d.dtype, spec.dtype
                    )));
                }
                let dims = spec.shape.dims();
                let mismatch = || {
                    bad(format!(
                        "with dims {:?}, but the model's shape is {}",
                        d.dims, spec.shape
                    ))
                };
                if dims.len() != d.dims.len() {
                    return Err(mismatch());
                }
                let mut narrowed = Vec::with_capacity(dims.len());
                for (i, (m, &want)) in dims.iter().zip(&d.dims).enumerate() {
                    let dim = match (m, want) {
                        (_, w) if w < -1 => return Err(mismatch()),
                        (m, -1) => m.clone(),
                        (Dim::Fixed(f), w) if *f as i64 == w => m.clone(),
                        (Dim::Fixed(_), _) => return Err(mismatch()),
                        (Dim::Symbolic(_), _) if i == 0 => m.clone(),
                        (Dim::Symbolic(_), w) => Dim::Fixed(w as usize),
                    };
                    narrowed.push(dim);
                }
                spec.shape = Shape(narrowed);
            }
        }
        Ok(out)
    }

    /// Prefers these backends, in order.
    pub fn backends(mut self, names: &[&str]) -> Self {
        self.backends = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Turns on dynamic batching up to `max_batch_size` rows.
    pub fn batching(mut self, max_batch_size: usize, cfg: BatchingConfig) -> Self {
        self.max_batch_size = max_batch_size;
        self.batching = Some(cfg);
        self
    }

    /// Sets the number of compute workers.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Sets the version.
    pub fn version(mut self, v: u64) -> Self {
        self.version = v;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::TensorSpec;

    fn sig() -> ModelSignature {
        let shape = Shape(vec![
            Dim::Symbolic("batch".into()),
            Dim::Symbolic("seq".into()),
            Dim::Fixed(4),
        ]);
        ModelSignature {
            inputs: vec![TensorSpec::new("x", DType::F32, shape.clone())],
            outputs: vec![TensorSpec::new("y", DType::F32, shape)],
        }
    }

    fn declared(name: &str, dtype: DType, dims: &[i64]) -> DeclaredTensor {
        DeclaredTensor {
            name: name.into(),
            dtype,
            dims: dims.to_vec(),
        }
    }

    #[test]
    fn declared_dims_narrow_the_signature() {
        let mut spec = ModelSpec::new("m", "m.onnx");
        assert_eq!(spec.apply_declared(&sig()).unwrap(), sig());
        spec.declared_inputs = vec![declared("x", DType::F32, &[8, 16, 4])];
        let s = spec.apply_declared(&sig()).unwrap();
        // The batch dim stays variable; the others take the declared extents.
        assert_eq!(s.inputs[0].shape.to_i64(), vec![-1, 16, 4]);
        assert_eq!(s.outputs, sig().outputs);
    }

    #[test]
    fn declared_mismatches_are_load_errors() {
        for (d, needle) in [
            (
                declared("z", DType::F32, &[-1, -1, 4]),
                "no such input (it has x)",
            ),
            (
                declared("x", DType::I64, &[-1, -1, 4]),
                "as INT64, but the model's is FP32",
            ),
            (
                declared("x", DType::F32, &[-1, -1, 5]),
                "with dims [-1, -1, 5]",
            ),
            (declared("x", DType::F32, &[-1, 4]), "with dims [-1, 4]"),
            (declared("x", DType::F32, &[-1, -2, 4]), "with dims"),
        ] {
            let mut spec = ModelSpec::new("m", "m.onnx");
            spec.declared_inputs = vec![d];
            let e = spec.apply_declared(&sig()).unwrap_err();
            assert_eq!(e.kind(), pomme_core::ErrorKind::InvalidModelFormat);
            assert!(e.to_string().contains(needle), "{e}");
        }
        let mut spec = ModelSpec::new("m", "m.onnx");
        spec.declared_outputs = vec![declared("y", DType::F32, &[-1, 3, 3])];
        let e = spec.apply_declared(&sig()).unwrap_err().to_string();
        assert!(e.contains("declares output 'y'"), "{e}");
    }

    #[test]
    fn memory_budget() {
        let mem = MemoryEstimate {
            weight_bytes: 3 << 20,
            activation_bytes_per_item: 1 << 20,
        };
        let spec = ModelSpec::new("m", "m.onnx");
        spec.check_memory(&mem, 8).unwrap();
        let spec = spec.memory_budget_mb(8);
        spec.check_memory(&mem, 1).unwrap();
        spec.check_memory(&mem, 5).unwrap();
        let e = spec.check_memory(&mem, 6).unwrap_err();
        assert_eq!(e.kind(), pomme_core::ErrorKind::MemoryBudgetExceeded);
        assert!(
            e.to_string().contains("above its memory_budget_mb of 8"),
            "{e}"
        );
    }
}
