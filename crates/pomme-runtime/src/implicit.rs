//! Implicit state (Triton's sequence batcher `state`): a model whose graph
//! takes its state as an input and returns the next state as an output (an
//! ONNX RNN or accumulator, any backend) is served as a stateful model. The
//! client sends only the other inputs with Triton's sequence parameters; the
//! server keeps each sequence's state between its requests (zeros on
//! `sequence_start`, dropped after `sequence_end`), with a cap on live
//! sequences (429 beyond it) and an idle timeout
//! ([`pomme_core::sequence::StateTable`]).
//!
//! [`ImplicitState`] wraps the backend's model: its signature leaves the
//! state tensors out, and its sessions merge them in and take them out
//! around every step.

use pomme_core::sequence::{StateLimits, StateTable};
use pomme_core::{
    DType, DeviceKind, Error, LoadedModel, MemoryEstimate, ModelSignature, PlacementShare,
    Precision, Result, SequenceControl, Session, Tensor,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One state tensor as a configuration declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDecl {
    /// The model input that receives the state.
    pub input: String,
    /// The model output that holds the next state.
    pub output: String,
    /// Checked against the model's input and output at load.
    pub dtype: DType,
    /// The initial (zero) state's dims; without the batch dimension when
    /// the model's input has one more dimension (Triton's convention).
    pub dims: Vec<usize>,
}

/// A model's sequence settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceConfig {
    pub states: Vec<StateDecl>,
    /// Live sequences at most; a new one beyond is refused (429).
    pub max_sequences: usize,
    /// A sequence without a request for this long is dropped.
    pub idle_timeout: Duration,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        let d = StateLimits::default();
        SequenceConfig {
            states: Vec::new(),
            max_sequences: d.max_sequences,
            idle_timeout: d.idle_timeout,
        }
    }
}

/// Where the state tensors sit in the wrapped model's inputs and outputs.
struct Layout {
    signature: ModelSignature,
    /// Per state: (input index, output index, initial shape) in the inner model.
    states: Vec<(usize, usize, Vec<usize>, DType)>,
    /// Inner input index of each outer input, in order.
    inputs: Vec<usize>,
    /// Inner output index of each outer output, in order.
    outputs: Vec<usize>,
    limits: StateLimits,
}

/// A model served with implicit state.
pub struct ImplicitState {
    inner: Arc<dyn LoadedModel>,
    layout: Arc<Layout>,
}

impl ImplicitState {
    /// Wraps `inner`; every declared state must name one of its inputs and
    /// one of its outputs, of the declared dtype and a rank that fits.
    pub fn new(inner: Arc<dyn LoadedModel>, cfg: &SequenceConfig) -> Result<ImplicitState> {
        let sig = inner.signature();
        let bad = |m: String| Error::invalid_input(format!("sequence state: {m}"));
        let mut states = Vec::new();
        for s in &cfg.states {
            let i = sig
                .inputs
                .iter()
                .position(|t| t.name == s.input)
                .ok_or_else(|| bad(format!("the model has no input '{}'", s.input)))?;
            let o = sig
                .outputs
                .iter()
                .position(|t| t.name == s.output)
                .ok_or_else(|| bad(format!("the model has no output '{}'", s.output)))?;
            for (what, spec) in [("input", &sig.inputs[i]), ("output", &sig.outputs[o])] {
                if spec.dtype != s.dtype {
                    return Err(bad(format!(
                        "{what} '{}' is {} but the state is declared {}",
                        spec.name, spec.dtype, s.dtype
                    )));
                }
            }
            let rank = sig.inputs[i].shape.rank();
            let shape = if rank == s.dims.len() + 1 {
                std::iter::once(1).chain(s.dims.iter().copied()).collect()
            } else if rank == s.dims.len() {
                s.dims.clone()
            } else {
                return Err(bad(format!(
                    "input '{}' has rank {rank}, the state's dims {:?} do not fit it",
                    s.input, s.dims
                )));
            };
            states.push((i, o, shape, s.dtype));
        }
        if states.is_empty() {
            return Err(bad("no state declared".into()));
        }
        let inputs: Vec<usize> = (0..sig.inputs.len())
            .filter(|i| !states.iter().any(|s| s.0 == *i))
            .collect();
        let outputs: Vec<usize> = (0..sig.outputs.len())
            .filter(|o| !states.iter().any(|s| s.1 == *o))
            .collect();
        let signature = ModelSignature {
            inputs: inputs.iter().map(|&i| sig.inputs[i].clone()).collect(),
            outputs: outputs.iter().map(|&o| sig.outputs[o].clone()).collect(),
        };
        Ok(ImplicitState {
            inner,
            layout: Arc::new(Layout {
                signature,
                states,
                inputs,
                outputs,
                limits: StateLimits {
                    max_sequences: cfg.max_sequences.max(1),
                    idle_timeout: cfg.idle_timeout,
                },
            }),
        })
    }
}

impl LoadedModel for ImplicitState {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn signature(&self) -> &ModelSignature {
        &self.layout.signature
    }
    fn memory(&self) -> MemoryEstimate {
        self.inner.memory()
    }
    fn device(&self) -> DeviceKind {
        self.inner.device()
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn compute_precision(&self) -> Precision {
        self.inner.compute_precision()
    }
    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(StatefulSession {
            inner: self.inner.session()?,
            layout: self.layout.clone(),
            table: StateTable::new(self.layout.limits),
        }))
    }
    fn placement(&self) -> Vec<PlacementShare> {
        self.inner.placement()
    }
    fn is_stateful(&self) -> bool {
        true
    }
}

struct StatefulSession {
    inner: Box<dyn Session>,
    layout: Arc<Layout>,
    table: StateTable<Vec<Tensor>>,
}

impl Session for StatefulSession {
    fn run(&mut self, _inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        Err(Error::invalid_input(
            "this model keeps state between requests: send sequence_id (and sequence_start on the first request)",
        ))
    }

    fn run_sequence(&mut self, inputs: Vec<Tensor>, seq: &SequenceControl) -> Result<Vec<Tensor>> {
        let layout = self.layout.clone();
        let inner = &mut self.inner;
        self.table.step(
            seq,
            Instant::now(),
            || {
                layout
                    .states
                    .iter()
                    .map(|(_, _, shape, dtype)| Tensor::zeros(*dtype, shape.clone()))
                    .collect()
            },
            |state: &mut Vec<Tensor>| {
                let n_in = layout.inputs.len() + layout.states.len();
                let mut full: Vec<Option<Tensor>> = vec![None; n_in];
                for (t, &i) in inputs.into_iter().zip(&layout.inputs) {
                    full[i] = Some(t);
                }
                for (t, s) in state.iter().zip(&layout.states) {
                    full[s.0] = Some(t.clone());
                }
                let full: Vec<Tensor> = full
                    .into_iter()
                    .map(|t| {
                        t.ok_or_else(|| Error::Internal("a model input was left unset".into()))
                    })
                    .collect::<Result<_>>()?;
                let mut outs: Vec<Option<Tensor>> =
                    inner.run(full)?.into_iter().map(Some).collect();
                let mut next = Vec::with_capacity(layout.states.len());
                for s in &layout.states {
                    next.push(outs.get_mut(s.1).and_then(Option::take).ok_or_else(|| {
                        Error::InferenceFailed("the engine returned no state output".into())
                    })?);
                }
                *state = next;
                layout
                    .outputs
                    .iter()
                    .map(|&o| {
                        outs.get_mut(o).and_then(Option::take).ok_or_else(|| {
                            Error::InferenceFailed("the engine returned too few outputs".into())
                        })
                    })
                    .collect()
            },
        )
    }
}
