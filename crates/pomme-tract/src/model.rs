//! The prepared model ([`TractModel`]), its per-thread [`TractSession`], and
//! what we derive from a typed tract model: signature and activation estimate.

use crate::convert::{dtype_from_tract, from_tract, one_line, shape_from_tract, to_tract};
use crate::device::no_panic;
use pomme_core::{
    DeviceKind, Error, LoadedModel, MemoryEstimate, ModelSignature, Precision, Result, Session,
    Tensor, TensorSpec,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tract_core::ops::konst::Const;
use tract_core::prelude::*;
use tract_core::runtime::{Runnable, State};

/// Reads the signature of a typed model. `names` overrides the tract node names
/// (ONNX gives the graph's input and output names, which tract may rename).
pub(crate) fn signature(
    model: &TypedModel,
    names: Option<&(Vec<String>, Vec<String>)>,
) -> Result<ModelSignature> {
    let spec = |outlet: OutletId, name: String, what: &str| -> Result<TensorSpec> {
        let fact = model
            .outlet_fact(outlet)
            .map_err(|e| Error::Internal(one_line(&e)))?;
        let dtype = dtype_from_tract(fact.datum_type).ok_or_else(|| {
            Error::CompilationFailed(format!(
                "{what} '{name}' has tract type {:?}, which pomme cannot represent",
                fact.datum_type
            ))
        })?;
        Ok(TensorSpec::new(
            name,
            dtype,
            shape_from_tract(fact.shape.dims()),
        ))
    };
    let pick = |given: Option<&Vec<String>>, ix: usize, fallback: String| {
        given.and_then(|v| v.get(ix).cloned()).unwrap_or(fallback)
    };
    let inputs = model
        .inputs
        .iter()
        .enumerate()
        .map(|(ix, &o)| {
            let name = pick(names.map(|n| &n.0), ix, model.node(o.node).name.clone());
            spec(o, name, "input")
        })
        .collect::<Result<Vec<_>>>()?;
    let outputs = model
        .outputs
        .iter()
        .enumerate()
        .map(|(ix, &o)| {
            let fallback = model
                .outlet_label(o)
                .map(str::to_string)
                .unwrap_or_else(|| model.node(o.node).name.clone());
            spec(o, pick(names.map(|n| &n.1), ix, fallback), "output")
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ModelSignature { inputs, outputs })
}

/// Peak bytes of live intermediate tensors for one batch row.
///
/// Method: every symbol is set to 1 (so `batch` = 1; `symbols` overrides a
/// symbol by name, e.g. `seq` = 128), then the nodes are walked in tract's
/// evaluation order. A node's outputs become live when it runs and die after
/// their last consumer ran; model inputs and outputs count, weights (`Const`
/// nodes) do not. The result is the largest live total seen. It is measured
/// on the decluttered model, before tract fuses ops, so it is an upper bound
/// on what the optimized plan holds.
pub(crate) fn activation_estimate(model: &TypedModel, symbols: &BTreeMap<String, i64>) -> u64 {
    let mut values = SymbolValues::default();
    for sym in model.symbols.all_symbols() {
        let v = symbols.get(&sym.to_string()).copied().unwrap_or(1);
        values.set(&sym, v);
    }
    let Ok(order) = model.eval_order() else {
        return 0;
    };
    let size = |outlet: OutletId| -> u64 {
        let Ok(fact) = model.outlet_fact(outlet) else {
            return 0;
        };
        let elems: u64 = fact
            .shape
            .dims()
            .iter()
            .map(|d| d.eval(&values).to_i64().unwrap_or(1).max(0) as u64)
            .product();
        elems * fact.datum_type.size_of() as u64
    };
    let mut last_use: HashMap<OutletId, usize> = HashMap::new();
    for (p, &n) in order.iter().enumerate() {
        for &i in &model.node(n).inputs {
            let e = last_use.entry(i).or_insert(p);
            *e = (*e).max(p);
        }
    }
    for o in &model.outputs {
        last_use.insert(*o, usize::MAX);
    }
    let mut dies_at: HashMap<usize, Vec<OutletId>> = HashMap::new();
    let (mut live, mut peak) = (0u64, 0u64);
    for (p, &n) in order.iter().enumerate() {
        let node = model.node(n);
        if !node.op_is::<Const>() {
            for slot in 0..node.outputs.len() {
                let outlet = OutletId::new(n, slot);
                live += size(outlet);
                let at = last_use.get(&outlet).copied().unwrap_or(p);
                dies_at.entry(at).or_default().push(outlet);
            }
        }
        peak = peak.max(live);
        for outlet in dies_at.remove(&p).unwrap_or_default() {
            live -= size(outlet);
        }
    }
    peak
}

/// What every session of one model shares.
struct Shared {
    runnable: Arc<dyn Runnable>,
    input_types: Vec<DatumType>,
    signature: ModelSignature,
}

impl Shared {
    fn spawn(&self) -> Result<Box<dyn State>> {
        match no_panic("tract", || self.runnable.spawn()) {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => Err(Error::Internal(format!(
                "tract could not create a session: {}",
                one_line(&e)
            ))),
            Err(panic) => Err(Error::Unavailable(panic)),
        }
    }
}

/// A model prepared by tract: one shared plan, many sessions.
pub struct TractModel {
    shared: Arc<Shared>,
    memory: MemoryEstimate,
    device: DeviceKind,
    precision: Precision,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("signature", &self.shared.signature)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

impl TractModel {
    pub(crate) fn new(
        runnable: Arc<dyn Runnable>,
        signature: ModelSignature,
        input_types: Vec<DatumType>,
        memory: MemoryEstimate,
        device: DeviceKind,
        precision: Precision,
    ) -> TractModel {
        TractModel {
            shared: Arc::new(Shared {
                runnable,
                input_types,
                signature,
            }),
            memory,
            device,
            precision,
        }
    }

    /// The raw tract plan, for running tract directly (benchmarks comparing raw
    /// tract with pomme): `model.raw_plan().spawn()?.run(tvec![t.into()])`.
    pub fn raw_plan(&self) -> &Arc<dyn Runnable> {
        &self.shared.runnable
    }

    /// The concrete [`TractSession`] (what [`LoadedModel::session`] boxes).
    pub fn tract_session(&self) -> Result<TractSession> {
        Ok(TractSession {
            state: self.shared.spawn()?,
            shared: Arc::clone(&self.shared),
        })
    }
}

impl LoadedModel for TractModel {
    fn backend(&self) -> &'static str {
        crate::NAME
    }

    fn signature(&self) -> &ModelSignature {
        &self.shared.signature
    }

    fn memory(&self) -> MemoryEstimate {
        self.memory
    }

    fn device(&self) -> DeviceKind {
        self.device
    }

    fn precision(&self) -> Precision {
        self.precision
    }

    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(self.tract_session()?))
    }
}

/// One thread's tract state over the shared plan.
pub struct TractSession {
    state: Box<dyn State>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TractSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession").finish_non_exhaustive()
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let sig = &self.shared.signature;
        if inputs.len() != sig.inputs.len() {
            return Err(Error::invalid_input(format!(
                "{} inputs given, the model takes {}",
                inputs.len(),
                sig.inputs.len()
            )));
        }
        let values = inputs
            .iter()
            .zip(&sig.inputs)
            .zip(&self.shared.input_types)
            .map(|((t, spec), &dt)| to_tract(t, dt, &spec.name))
            .collect::<Result<TVec<TValue>>>()?;
        drop(inputs);
        let outputs = match no_panic("tract", || self.state.run(values)) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(Error::InferenceFailed(one_line(&e))),
            Err(panic) => {
                // The state may be half-updated: start the next run afresh.
                if let Ok(state) = self.shared.spawn() {
                    self.state = state;
                }
                return Err(Error::InferenceFailed(panic));
            }
        };
        if outputs.len() != sig.outputs.len() {
            return Err(Error::Internal(format!(
                "tract returned {} outputs, the signature has {}",
                outputs.len(),
                sig.outputs.len()
            )));
        }
        outputs
            .into_iter()
            .zip(&sig.outputs)
            .map(|(v, spec)| from_tract(v, &spec.name))
            .collect()
    }
}
