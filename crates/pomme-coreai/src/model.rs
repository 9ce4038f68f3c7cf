//! A loaded Core AI model and its sessions: one engine worker per session
//! (one asyncio loop per engine thread), restarted when it dies; batches
//! mapped onto the serving function(s); per-sequence state kept here, in
//! pomme, so that any session can serve any sequence and a restarted engine
//! loses none.

use crate::bridge::{Engine, WireTensor, unpack, wire};
use crate::describe::{Description, Plan, SpecDesc};
use crate::{CoreAiOptions, Runtime, cache_key};
use bytes::Bytes;
use parking_lot::Mutex;
use pomme_core::{
    DType, DeviceKind, Error, LoadedModel, MemoryEstimate, ModelInfo, ModelSignature, Precision,
    Result, SequenceControl, Session, Tensor,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a session reaches Apple's runtime: a Python engine process, or the
/// Swift shim in this process (`runtime.shim`; only when compiled in). Both
/// speak the worker's ops.
enum AnyEngine {
    Process(Engine),
    #[cfg(pomme_coreai_shim)]
    Shim(crate::shim::ShimEngine),
}

impl AnyEngine {
    fn start(runtime: &Runtime, spin: Duration) -> Result<AnyEngine> {
        if runtime.shim {
            #[cfg(pomme_coreai_shim)]
            return Ok(AnyEngine::Shim(crate::shim::ShimEngine::swift()));
            #[cfg(not(pomme_coreai_shim))]
            return Err(Error::Unavailable(crate::shim::NOT_BUILT.into()));
        }
        Engine::spawn(&runtime.python, spin).map(AnyEngine::Process)
    }

    fn call(&mut self, header: &Value, tensors: &[&Tensor]) -> Result<(Value, Bytes)> {
        match self {
            AnyEngine::Process(e) => e.call(header, tensors),
            #[cfg(pomme_coreai_shim)]
            AnyEngine::Shim(e) => e.call(header, tensors),
        }
    }

    fn alive(&mut self) -> bool {
        match self {
            AnyEngine::Process(e) => e.alive(),
            #[cfg(pomme_coreai_shim)]
            AnyEngine::Shim(e) => e.alive(),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            AnyEngine::Process(e) => e.pid(),
            #[cfg(pomme_coreai_shim)]
            AnyEngine::Shim(e) => e.pid(),
        }
    }
}

/// What every session of a model shares.
struct Shared {
    runtime: Runtime,
    /// The `load` request each new engine is sent.
    load: Value,
    plan: Plan,
    /// The functions the first engine reported; a restarted one must agree.
    functions: Vec<String>,
    /// Per-sequence state of a stateful function, in `plan.states` order.
    states: Mutex<HashMap<String, Vec<Tensor>>>,
    max_sequences: usize,
    /// Each engine's poll window ([`CoreAiOptions::spin`]).
    spin: Duration,
}

/// A `.aimodel` loaded for serving.
pub struct CoreAiModel {
    shared: Arc<Shared>,
    device: DeviceKind,
    memory: MemoryEstimate,
    description: Description,
    /// The engine started by the load, handed to the first session.
    first: Mutex<Option<AnyEngine>>,
}

/// Starts an engine and loads the asset into it.
fn start(runtime: &Runtime, load: &Value, spin: Duration) -> Result<(AnyEngine, Description)> {
    let mut engine = AnyEngine::start(runtime, spin)?;
    let (reply, _) = engine.call(load, &[]).map_err(|e| match e {
        Error::InferenceFailed(m) => Error::CompilationFailed(m),
        other => other,
    })?;
    let desc: Description = serde_json::from_value(reply).map_err(|e| {
        Error::Internal(format!("the Core AI engine described the model oddly: {e}"))
    })?;
    Ok((engine, desc))
}

fn load_request(path: &Path, cache: &Path, device: DeviceKind) -> Result<Value> {
    let path = std::path::absolute(path)
        .map_err(|e| Error::InvalidModelFormat(format!("{}: {e}", path.display())))?;
    let precompiled = std::fs::read_dir(&path)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "odix"))
        })
        .unwrap_or(false);
    let compiled = if precompiled {
        None
    } else {
        Some(
            std::path::absolute(cache.join(cache_key(&path)?))
                .map_err(|e| Error::Internal(format!("cache dir: {e}")))?,
        )
    };
    let device = match device {
        DeviceKind::Ane => "ane",
        DeviceKind::Metal => "gpu",
        DeviceKind::Auto => "auto",
        _ => "cpu",
    };
    Ok(json!({"op": "load", "path": path, "compiled": compiled, "device": device}))
}

impl CoreAiModel {
    /// Loads `path` through `runtime`: starts an engine, which compiles the
    /// program into `cache` when needed, and plans the serving function(s).
    pub fn load(
        runtime: Runtime,
        path: &Path,
        cache: &Path,
        device: DeviceKind,
        options: &CoreAiOptions,
    ) -> Result<CoreAiModel> {
        let load = load_request(path, cache, device)?;
        let (engine, description) = start(&runtime, &load, options.spin)?;
        let plan = Plan::new(&description, &options.functions)?;
        tracing::info!(
            model = %path.display(),
            runtime = %description.runtime,
            how = %description.how,
            load_ms = description.load_ms,
            functions = ?plan.functions,
            "Core AI model loaded"
        );
        let weight_bytes = std::fs::metadata(path.join("main.mlirb"))
            .map(|m| m.len())
            .unwrap_or(0);
        let activation = plan
            .signature
            .inputs
            .iter()
            .chain(&plan.signature.outputs)
            .map(|s| {
                let per_row: usize = s
                    .shape
                    .dims()
                    .iter()
                    .skip(1)
                    .map(|d| d.fixed().unwrap_or(64))
                    .product();
                (per_row * s.dtype.size_of().unwrap_or(4)) as u64
            })
            .sum::<u64>();
        Ok(CoreAiModel {
            shared: Arc::new(Shared {
                runtime,
                load,
                functions: description.order.clone(),
                plan,
                states: Mutex::new(HashMap::new()),
                max_sequences: options.max_sequences,
                spin: options.spin,
            }),
            device,
            memory: MemoryEstimate {
                weight_bytes,
                activation_bytes_per_item: activation,
            },
            description,
            first: Mutex::new(Some(engine)),
        })
    }

    /// What the runtime reported at load.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The serving plan.
    pub fn plan(&self) -> &Plan {
        &self.shared.plan
    }

    /// The runtime serving it.
    pub fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }
}

impl LoadedModel for CoreAiModel {
    fn backend(&self) -> &'static str {
        "coreai"
    }

    fn signature(&self) -> &ModelSignature {
        &self.shared.plan.signature
    }

    fn memory(&self) -> MemoryEstimate {
        self.memory
    }

    fn device(&self) -> DeviceKind {
        self.device
    }

    fn precision(&self) -> Precision {
        if self
            .shared
            .plan
            .signature
            .inputs
            .iter()
            .any(|s| s.dtype == DType::F16)
        {
            Precision::F16
        } else {
            Precision::F32
        }
    }

    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(CoreAiSession {
            shared: self.shared.clone(),
            engine: self.first.lock().take(),
        }))
    }

    fn is_stateful(&self) -> bool {
        !self.shared.plan.states.is_empty()
    }
}

/// One compute worker's engine.
struct CoreAiSession {
    shared: Arc<Shared>,
    engine: Option<AnyEngine>,
}

impl CoreAiSession {
    /// The live engine, started (again) when there is none or it died
    /// while idle.
    fn engine(&mut self) -> Result<&mut AnyEngine> {
        let alive = self.engine.as_mut().is_some_and(AnyEngine::alive);
        if !alive {
            if let Some(old) = self.engine.take() {
                tracing::warn!(
                    pid = old.pid(),
                    "Core AI engine is gone; starting a new one"
                );
            }
            let (engine, desc) = start(&self.shared.runtime, &self.shared.load, self.shared.spin)?;
            if desc.order != self.shared.functions {
                return Err(Error::Unavailable(format!(
                    "the restarted Core AI engine sees functions {:?}, not {:?}: the asset changed on disk",
                    desc.order, self.shared.functions
                )));
            }
            self.engine = Some(engine);
        }
        Ok(self.engine.as_mut().expect("set above"))
    }

    /// One call of `function` on `inputs` (signature order) and `states`;
    /// returns the outputs in signature order and the updated states.
    fn call(
        &mut self,
        function: &str,
        inputs: &[Tensor],
        states: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let sig = &self.shared.plan.signature;
        let in_specs: Vec<WireTensor> = sig
            .inputs
            .iter()
            .zip(inputs)
            .map(|(s, t)| wire(&s.name, t))
            .collect::<Result<_>>()?;
        let state_specs: Vec<WireTensor> = self
            .shared
            .plan
            .states
            .iter()
            .zip(states)
            .map(|(s, t)| wire(&s.name, t))
            .collect::<Result<_>>()?;
        let header =
            json!({"op": "run", "function": function, "inputs": in_specs, "states": state_specs});
        let tensors: Vec<&Tensor> = inputs.iter().chain(states).collect();
        let shared = self.shared.clone();
        // Inference is a pure function of the inputs and the state sent with
        // them (state is only replaced on success), so a call whose engine
        // died under it runs once more on a fresh engine: an engine killed
        // while idle costs no request, and an input that crashes the runtime
        // fails after its second crash.
        let mut attempt = 0;
        let (reply, payload) = loop {
            let engine = self.engine()?;
            match engine.call(&header, &tensors) {
                Ok(r) => break r,
                Err(e) if attempt == 0 && !engine.alive() => {
                    tracing::warn!(error = %e, "Core AI engine died during a call; retrying once on a new engine");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let outs: Vec<WireTensor> = serde_json::from_value(reply["outputs"].clone())
            .map_err(|e| Error::Internal(format!("bad Core AI reply: {e}")))?;
        let new_states: Vec<WireTensor> =
            serde_json::from_value(reply["states"].clone()).unwrap_or_default();
        let mut all = unpack(
            &outs.iter().chain(&new_states).cloned().collect::<Vec<_>>(),
            &payload,
        )?;
        let state_values = all.split_off(outs.len());
        // The runtime names its outputs; serve them in the signature's order.
        let mut by_name: HashMap<&str, Tensor> =
            outs.iter().map(|w| w.name.as_str()).zip(all).collect();
        let outputs = shared
            .plan
            .signature
            .outputs
            .iter()
            .map(|s| {
                by_name.remove(s.name.as_str()).ok_or_else(|| {
                    Error::InferenceFailed(format!("Core AI returned no output '{}'", s.name))
                })
            })
            .collect::<Result<_>>()?;
        Ok((outputs, state_values))
    }

    /// A batch of `rows` on the plan's function for it, padded up to a fixed
    /// batch size and the padding cut off again.
    fn run_rows(&mut self, inputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>> {
        let (function, fixed) = self.shared.plan.pick(rows);
        let function = function.to_string();
        match fixed {
            Some(b) if b > rows => {
                let padded = inputs
                    .iter()
                    .map(|t| {
                        let mut pad_shape = t.shape().to_vec();
                        pad_shape[0] = b - rows;
                        let pad = Tensor::zeros(t.dtype(), pad_shape)?;
                        Tensor::concat_rows(&[t, &pad])
                    })
                    .collect::<Result<Vec<_>>>()?;
                let (outs, _) = self.call(&function, &padded, &[])?;
                outs.iter().map(|t| t.slice_rows(0, rows)).collect()
            }
            _ => Ok(self.call(&function, &inputs, &[])?.0),
        }
    }
}

impl Session for CoreAiSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if !self.shared.plan.states.is_empty() {
            return Err(Error::invalid_input(
                "this Core AI function is stateful: send sequence_id (with sequence_start on a sequence's first request)",
            ));
        }
        let batchable = self.shared.plan.signature.is_batchable();
        let rows = if batchable { inputs[0].shape()[0] } else { 1 };
        if rows == 0 {
            // The Linux runtime dies on empty batches (a Swift fatal error).
            return Err(Error::invalid_input("an empty batch (0 rows)"));
        }
        match self.shared.plan.max_batch() {
            Some(max) if batchable && rows > max => {
                // Larger than the largest function: in chunks of it.
                let mut parts: Vec<Vec<Tensor>> = Vec::new();
                let mut start = 0;
                while start < rows {
                    let end = (start + max).min(rows);
                    let chunk = inputs
                        .iter()
                        .map(|t| t.slice_rows(start, end))
                        .collect::<Result<Vec<_>>>()?;
                    parts.push(self.run_rows(chunk, end - start)?);
                    start = end;
                }
                (0..parts[0].len())
                    .map(|i| Tensor::concat_rows(&parts.iter().map(|p| &p[i]).collect::<Vec<_>>()))
                    .collect()
            }
            _ => self.run_rows(inputs, rows),
        }
    }

    fn run_sequence(&mut self, inputs: Vec<Tensor>, seq: &SequenceControl) -> Result<Vec<Tensor>> {
        let shared = self.shared.clone();
        let plan_states = &shared.plan.states;
        if plan_states.is_empty() {
            return self.run(inputs);
        }
        let current = {
            let mut table = self.shared.states.lock();
            match table.remove(&seq.id) {
                Some(s) if !seq.start => s,
                _ if seq.start => fresh_states(plan_states)?,
                _ => {
                    return Err(Error::invalid_input(format!(
                        "sequence '{}' has no state: start it with sequence_start = true",
                        seq.id
                    )));
                }
            }
        };
        let function = self.shared.plan.functions[0].0.clone();
        let result = self.call(&function, &inputs, &current);
        let mut table = self.shared.states.lock();
        match result {
            Ok((outputs, new_states)) => {
                if !seq.end {
                    if table.len() >= self.shared.max_sequences {
                        return Err(Error::ResourceLimit(format!(
                            "{} sequences are live (max_sequences); end one with sequence_end",
                            table.len()
                        )));
                    }
                    table.insert(seq.id.clone(), new_states);
                }
                Ok(outputs)
            }
            Err(e) => {
                // The step did not happen: the sequence keeps its state.
                if !seq.start {
                    table.insert(seq.id.clone(), current);
                }
                Err(e)
            }
        }
    }
}

/// Zeroed state arrays for a new sequence.
fn fresh_states(specs: &[SpecDesc]) -> Result<Vec<Tensor>> {
    specs
        .iter()
        .map(|s| {
            let dtype = crate::bridge::dtype_of(&s.dtype).ok_or_else(|| {
                Error::InvalidModelFormat(format!("state '{}' has dtype {}", s.name, s.dtype))
            })?;
            Tensor::zeros(dtype, s.fixed_shape()?)
        })
        .collect()
}

/// What `pomme inspect` shows of an asset: the default plan's signature,
/// every function's inputs, outputs and states, `metadata.json` and the
/// runtime that read it.
pub fn describe_asset(runtime: &Runtime, path: &Path, cache: &Path) -> Result<ModelInfo> {
    let load = load_request(path, cache, DeviceKind::Cpu)?;
    let (_engine, desc) = start(runtime, &load, Duration::ZERO)?;
    let mut metadata = std::collections::BTreeMap::new();
    for name in &desc.order {
        metadata.insert(format!("function {name}"), desc.functions[name].line());
    }
    for (k, v) in &desc.metadata {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        metadata.insert(format!("metadata.{k}"), text);
    }
    metadata.insert("runtime".into(), desc.runtime.clone());
    let signature = match Plan::new(&desc, &[]) {
        Ok(p) => {
            let served: Vec<&str> = p.functions.iter().map(|(n, _)| n.as_str()).collect();
            metadata.insert("serves".into(), served.join(", "));
            p.signature
        }
        Err(e) => {
            metadata.insert("serves".into(), e.to_string());
            ModelSignature::default()
        }
    };
    let weight_bytes = std::fs::metadata(path.join("main.mlirb"))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(ModelInfo {
        signature,
        parameters: 0,
        weight_bytes,
        activation_bytes_estimate: 0,
        op_histogram: Default::default(),
        metadata,
    })
}
