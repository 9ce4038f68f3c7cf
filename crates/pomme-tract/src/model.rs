//! The loaded model ([`TractModel`]), its per-thread [`TractSession`], and
//! what we derive from a typed tract model: signature and activation estimate.

use crate::convert::{dtype_from_tract, error_line, from_tract, shape_from_tract, to_tract};
use crate::device::no_panic;
use crate::plans::{Key, Specializer};
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
            .map_err(|e| Error::Internal(error_line(&e)))?;
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
    plans: Specializer,
    /// Run a batch of n rows as n batch-1 runs (`split_batch` option).
    split_batch: bool,
    input_types: Vec<DatumType>,
    signature: ModelSignature,
}

/// A model prepared by tract: the analysed model with its symbols, and the
/// plans specialized to the symbol values seen so far (see `plans.rs`).
pub struct TractModel {
    shared: Arc<Shared>,
    /// The key of the plan built at load (validation and warm-up).
    warm_key: Key,
    memory: MemoryEstimate,
    device: DeviceKind,
    precision: Precision,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("signature", &self.shared.signature)
            .field("plans", &self.shared.plans)
            .field("device", &self.device)
            .field("precision", &self.precision)
            .finish_non_exhaustive()
    }
}

impl TractModel {
    /// Wraps the specializer and builds the warm-up plan for `warm_key`, so
    /// that a model tract cannot prepare fails here, at load.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        plans: Specializer,
        split_batch: bool,
        warm_key: Key,
        signature: ModelSignature,
        input_types: Vec<DatumType>,
        memory: MemoryEstimate,
        device: DeviceKind,
        precision: Precision,
    ) -> Result<TractModel> {
        plans.plan(&warm_key)?;
        Ok(TractModel {
            shared: Arc::new(Shared {
                plans,
                split_batch,
                input_types,
                signature,
            }),
            warm_key,
            memory,
            device,
            precision,
        })
    }

    /// The tract plan specialized to the shapes of `inputs` (built and cached
    /// on first use), for running tract directly, e.g. in benchmarks comparing
    /// raw tract with pomme:
    /// `model.plan_for(&inputs)?.spawn()?.run(model.tract_inputs(&inputs)?)`.
    pub fn plan_for(&self, inputs: &[Tensor]) -> Result<Arc<dyn Runnable>> {
        self.shared.check_count(inputs.len())?;
        self.shared.plans.plan(&self.shared.plans.key_for(inputs)?)
    }

    /// `inputs` as tract values of the model's input types (one copy each).
    pub fn tract_inputs(&self, inputs: &[Tensor]) -> Result<TVec<TValue>> {
        self.shared.check_count(inputs.len())?;
        self.shared.to_tract(inputs)
    }

    /// How many specialized plans the model's cache holds.
    pub fn cached_plans(&self) -> usize {
        self.shared.plans.cached()
    }

    /// The concrete [`TractSession`] (what [`LoadedModel::session`] boxes).
    /// It starts with a state over the warm-up plan.
    pub fn tract_session(&self) -> Result<TractSession> {
        let plan = self.shared.plans.plan(&self.warm_key)?;
        Ok(TractSession {
            states: vec![(self.warm_key.clone(), spawn(plan.as_ref())?)],
            shared: Arc::clone(&self.shared),
        })
    }
}

impl Shared {
    fn check_count(&self, given: usize) -> Result<()> {
        let want = self.signature.inputs.len();
        if given != want {
            return Err(Error::invalid_input(format!(
                "{given} inputs given, the model takes {want}"
            )));
        }
        Ok(())
    }

    fn to_tract(&self, inputs: &[Tensor]) -> Result<TVec<TValue>> {
        inputs
            .iter()
            .zip(&self.signature.inputs)
            .zip(&self.input_types)
            .map(|((t, spec), &dt)| to_tract(t, dt, &spec.name))
            .collect()
    }
}

fn spawn(plan: &dyn Runnable) -> Result<Box<dyn State>> {
    match no_panic("tract", || plan.spawn()) {
        Ok(Ok(state)) => Ok(state),
        Ok(Err(e)) => Err(Error::Internal(format!(
            "tract could not create a session: {}",
            error_line(&e)
        ))),
        Err(panic) => Err(Error::Unavailable(panic)),
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

/// One thread's tract states, one per specialized plan it ran, most recently
/// used first, as many as the shared cache holds plans.
pub struct TractSession {
    states: Vec<(Key, Box<dyn State>)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TractSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession")
            .field("states", &self.states.len())
            .finish_non_exhaustive()
    }
}

impl TractSession {
    /// The state for `key`, moved to the front; spawned over the shared
    /// plan when this session has none.
    fn state_for(&mut self, key: Key) -> Result<&mut Box<dyn State>> {
        match self.states.iter().position(|(k, _)| *k == key) {
            Some(0) => {}
            Some(p) => {
                let entry = self.states.remove(p);
                self.states.insert(0, entry);
            }
            None => {
                let plan = self.shared.plans.plan(&key)?;
                let state = spawn(plan.as_ref())?;
                self.states.insert(0, (key, state));
                self.states.truncate(self.shared.plans.capacity());
            }
        }
        Ok(&mut self.states[0].1)
    }
}

impl TractSession {
    fn run_one(&mut self, inputs: Vec<Tensor>) -> Result<TVec<TValue>> {
        let key = self.shared.plans.key_for(&inputs)?;
        let values = self.shared.to_tract(&inputs)?;
        drop(inputs);
        let state = self.state_for(key)?;
        match no_panic("tract", || state.run(values)) {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(Error::InferenceFailed(error_line(&e))),
            Err(panic) => {
                // The state may be half-updated: the next run spawns a new one.
                self.states.remove(0);
                Err(Error::InferenceFailed(panic))
            }
        }
    }

    /// `split_batch`: rows one at a time through the batch-1 plan, outputs
    /// joined (zero-copy row views in, one copy out).
    fn run_split(&mut self, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>> {
        let mut per_output: Vec<Vec<Tensor>> = Vec::new();
        for r in 0..rows {
            let row = inputs
                .iter()
                .map(|t| t.slice_rows(r, r + 1))
                .collect::<Result<Vec<_>>>()?;
            let outs = self.run_one(row)?;
            let outs = self.convert(outs)?;
            per_output.resize_with(outs.len(), Vec::new);
            for (acc, o) in per_output.iter_mut().zip(outs) {
                acc.push(o);
            }
        }
        per_output
            .iter()
            .map(|parts| Tensor::concat_rows(&parts.iter().collect::<Vec<_>>()))
            .collect()
    }
}

impl Session for TractSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.shared.check_count(inputs.len())?;
        if self.shared.split_batch {
            let rows = inputs.first().and_then(|t| t.shape().first().copied());
            if let Some(rows) = rows.filter(|&n| n > 1)
                && inputs.iter().all(|t| t.shape().first() == Some(&rows))
            {
                return self.run_split(inputs, rows);
            }
        }
        let outputs = self.run_one(inputs)?;
        self.convert(outputs)
    }
}

impl TractSession {
    fn convert(&self, outputs: TVec<TValue>) -> Result<Vec<Tensor>> {
        let sig = &self.shared.signature;
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
