//! Pipelines (Triton's ensembles): a model made of steps, each a request to
//! another served model, wired by tensor names. A pipeline owns no engine:
//! each step is an ordinary [`Runtime::infer`] of its model, so it keeps that
//! model's batching, admission and statistics, and the pipeline counts the
//! whole. Tensors pass from step to step by reference (`Tensor` clones share
//! their bytes). Steps whose inputs are ready run together.
//!
//! The wiring is checked at load: every tensor a step reads is a pipeline
//! input or another step's output, nothing is produced twice, the steps form
//! no cycle, and every pipeline output is produced. Step models are looked up
//! per request (a pipeline may load before its steps), so a missing one is a
//! 503 naming it.

use crate::registry::{ModelState, ModelStatus, ModelView};
use crate::runtime::{InferRequest, InferResponse, Runtime};
use crate::stats::ModelCounters;
use pomme_core::{DeviceKind, Error, ModelSignature, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// A pipeline as a configuration declares it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    /// The pipeline's own inputs and outputs.
    pub signature: ModelSignature,
    pub steps: Vec<PipelineStep>,
}

/// One step: a request to `model` (newest version when `version` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStep {
    pub model: String,
    pub version: Option<u64>,
    /// (the step model's input, the pipeline tensor fed to it)
    pub inputs: Vec<(String, String)>,
    /// (the step model's output, the pipeline tensor it becomes)
    pub outputs: Vec<(String, String)>,
}

pub(crate) struct Pipeline {
    pub spec: PipelineSpec,
    /// Steps in waves: every step of a wave reads only what earlier waves
    /// (or the pipeline's inputs) produce.
    waves: Vec<Vec<usize>>,
    pub counters: ModelCounters,
}

impl Pipeline {
    pub(crate) fn new(spec: PipelineSpec) -> Result<Pipeline> {
        let waves = plan(&spec)?;
        Ok(Pipeline {
            spec,
            waves,
            counters: ModelCounters::default(),
        })
    }

    pub(crate) fn view(&self) -> ModelView {
        ModelView {
            name: self.spec.name.clone(),
            version: 1,
            backend: "pipeline".into(),
            device: DeviceKind::Cpu,
            signature: self.spec.signature.clone(),
            max_batch_size: 0,
            batching: None,
            workers: 0,
            stateful: false,
            memory_bytes: 0,
            load_ms: 0,
            warmup_ms: None,
            response_cache: false,
            routing: None,
            placement: Vec::new(),
        }
    }

    pub(crate) fn status(&self) -> ModelStatus {
        ModelStatus {
            name: self.spec.name.clone(),
            version: 1,
            state: ModelState::Ready,
            backend: Some("pipeline".into()),
        }
    }
}

/// The steps in waves, or the wiring mistake.
fn plan(spec: &PipelineSpec) -> Result<Vec<Vec<usize>>> {
    let bad = |m: String| Error::invalid_input(format!("pipeline '{}': {m}", spec.name));
    if spec.steps.is_empty() {
        return Err(bad("it has no steps".into()));
    }
    // Who produces each tensor: None for a pipeline input, Some(step) else.
    let mut producer: HashMap<&str, Option<usize>> = HashMap::new();
    for t in &spec.signature.inputs {
        producer.insert(&t.name, None);
    }
    for (i, s) in spec.steps.iter().enumerate() {
        for (_, t) in &s.outputs {
            if producer.insert(t, Some(i)).is_some() {
                return Err(bad(format!("tensor '{t}' is produced twice")));
            }
        }
    }
    for (i, s) in spec.steps.iter().enumerate() {
        for (_, t) in &s.inputs {
            if !producer.contains_key(t.as_str()) {
                return Err(bad(format!(
                    "step {} ({}) reads '{t}', which no pipeline input or step produces",
                    i + 1,
                    s.model
                )));
            }
        }
    }
    for o in &spec.signature.outputs {
        if !matches!(producer.get(o.name.as_str()), Some(Some(_))) {
            return Err(bad(format!("no step produces the output '{}'", o.name)));
        }
    }
    let mut done: HashSet<usize> = HashSet::new();
    let mut waves = Vec::new();
    while done.len() < spec.steps.len() {
        let wave: Vec<usize> = (0..spec.steps.len())
            .filter(|i| !done.contains(i))
            .filter(|&i| {
                spec.steps[i]
                    .inputs
                    .iter()
                    .all(|(_, t)| match producer[t.as_str()] {
                        None => true,
                        Some(p) => done.contains(&p),
                    })
            })
            .collect();
        if wave.is_empty() {
            let stuck: Vec<&str> = (0..spec.steps.len())
                .filter(|i| !done.contains(i))
                .map(|i| spec.steps[i].model.as_str())
                .collect();
            return Err(bad(format!(
                "its steps form a cycle ({})",
                stuck.join(" → ")
            )));
        }
        done.extend(&wave);
        waves.push(wave);
    }
    Ok(waves)
}

impl Runtime {
    /// Serves a pipeline under its name (replacing one of the same name).
    /// A loaded model of that name is a conflict.
    pub fn load_pipeline(&self, spec: PipelineSpec) -> Result<ModelView> {
        if self.models().iter().any(|m| m.name == spec.name) {
            return Err(Error::invalid_input(format!(
                "'{}' is already a loaded model; a pipeline needs a name of its own",
                spec.name
            )));
        }
        let name = spec.name.clone();
        let p = match Pipeline::new(spec) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                // Shown as UNAVAILABLE with the reason, like a failed model load.
                self.pipelines().write().remove(&name);
                self.pipeline_failures()
                    .write()
                    .insert(name, e.message().to_string());
                return Err(e);
            }
        };
        let view = p.view();
        tracing::info!(pipeline = %view.name, steps = p.spec.steps.len(), waves = p.waves.len(), "pipeline loaded");
        self.pipeline_failures().write().remove(&view.name);
        self.pipelines().write().insert(view.name.clone(), p);
        Ok(view)
    }

    pub(crate) fn pipeline(&self, name: &str) -> Option<Arc<Pipeline>> {
        self.pipelines().read().get(name).cloned()
    }

    /// Runs a request through a pipeline: its steps wave by wave.
    /// Boxed: a step may itself be a pipeline, and the recursion
    /// (`infer` → here → `infer`) needs a future of known size and `Send`.
    pub(crate) fn run_pipeline(
        &self,
        p: Arc<Pipeline>,
        req: InferRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<InferResponse>> + Send + '_>>
    {
        Box::pin(async move {
            let started = Instant::now();
            let result = self.run_steps(&p, req).await;
            let took = started.elapsed();
            match &result {
                Ok(_) => {
                    p.counters.success.add(took);
                    p.counters.executed(1);
                }
                Err(_) => p.counters.fail.add(took),
            }
            result
        })
    }

    async fn run_steps(&self, p: &Pipeline, req: InferRequest) -> Result<InferResponse> {
        let sig = &p.spec.signature;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in req.inputs {
            if !sig.inputs.iter().any(|s| s.name == name) {
                return Err(Error::invalid_input(format!(
                    "unknown input '{name}' for pipeline '{}'",
                    p.spec.name
                )));
            }
            tensors.insert(name, t);
        }
        if let Some(missing) = sig.inputs.iter().find(|s| !tensors.contains_key(&s.name)) {
            return Err(Error::invalid_input(format!(
                "missing input '{}' for pipeline '{}'",
                missing.name, p.spec.name
            )));
        }
        for wave in &p.waves {
            let calls = wave.iter().map(|&i| {
                let step = &p.spec.steps[i];
                let inputs = step
                    .inputs
                    .iter()
                    .map(|(si, t)| (si.clone(), tensors[t].clone()))
                    .collect();
                self.infer(InferRequest {
                    model: step.model.clone(),
                    version: step.version,
                    id: req.id.clone(),
                    inputs,
                    outputs: Some(step.outputs.iter().map(|(so, _)| so.clone()).collect()),
                    priority: req.priority,
                    timeout: req.timeout,
                    sequence: None,
                })
            });
            let answers = futures::future::join_all(calls).await;
            for (&i, answer) in wave.iter().zip(answers) {
                let step = &p.spec.steps[i];
                let mut resp = answer.map_err(|e| {
                    let msg = format!(
                        "pipeline '{}' step {} ({}): {}",
                        p.spec.name,
                        i + 1,
                        step.model,
                        e.message()
                    );
                    e.with_message(msg)
                })?;
                for (so, t) in &step.outputs {
                    let pos = resp
                        .outputs
                        .iter()
                        .position(|(n, _)| n == so)
                        .ok_or_else(|| {
                            Error::Internal(format!(
                                "step model '{}' returned no '{so}'",
                                step.model
                            ))
                        })?;
                    let (_, tensor) = resp.outputs.swap_remove(pos);
                    tensors.insert(t.clone(), tensor);
                }
            }
        }
        let wanted: Vec<&str> = match &req.outputs {
            Some(names) => {
                for n in names {
                    if !sig.outputs.iter().any(|o| &o.name == n) {
                        return Err(Error::invalid_input(format!(
                            "unknown output '{n}' for pipeline '{}'",
                            p.spec.name
                        )));
                    }
                }
                names.iter().map(String::as_str).collect()
            }
            None => sig.outputs.iter().map(|o| o.name.as_str()).collect(),
        };
        let outputs = wanted
            .into_iter()
            .map(|n| (n.to_string(), tensors[n].clone()))
            .collect();
        Ok(InferResponse {
            model: p.spec.name.clone(),
            version: 1,
            id: req.id,
            outputs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::{DType, Shape, TensorSpec};

    fn t(name: &str) -> TensorSpec {
        TensorSpec::new(name, DType::F32, Shape::fixed(&[4]))
    }

    fn step(model: &str, ins: &[(&str, &str)], outs: &[(&str, &str)]) -> PipelineStep {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        PipelineStep {
            model: model.into(),
            version: None,
            inputs: pairs(ins),
            outputs: pairs(outs),
        }
    }

    fn spec(steps: Vec<PipelineStep>) -> PipelineSpec {
        PipelineSpec {
            name: "p".into(),
            signature: ModelSignature {
                inputs: vec![t("IN")],
                outputs: vec![t("OUT")],
            },
            steps,
        }
    }

    #[test]
    fn independent_steps_share_a_wave() {
        let s = spec(vec![
            step("join", &[("a", "L"), ("b", "R")], &[("y", "OUT")]),
            step("left", &[("x", "IN")], &[("y", "L")]),
            step("right", &[("x", "IN")], &[("y", "R")]),
        ]);
        assert_eq!(plan(&s).unwrap(), vec![vec![1, 2], vec![0]]);
    }

    #[test]
    fn wiring_mistakes_are_load_errors() {
        let cycle = spec(vec![
            step("a", &[("x", "B")], &[("y", "A")]),
            step("b", &[("x", "A")], &[("y", "B")]),
            step("c", &[("x", "IN")], &[("y", "OUT")]),
        ]);
        let e = plan(&cycle).unwrap_err().to_string();
        assert!(e.contains("cycle (a → b)"), "{e}");
        let missing = spec(vec![step("a", &[("x", "NOPE")], &[("y", "OUT")])]);
        let e = plan(&missing).unwrap_err().to_string();
        assert!(e.contains("step 1 (a) reads 'NOPE'"), "{e}");
        let twice = spec(vec![
            step("a", &[("x", "IN")], &[("y", "OUT")]),
            step("b", &[("x", "IN")], &[("y", "OUT")]),
        ]);
        assert!(
            plan(&twice)
                .unwrap_err()
                .to_string()
                .contains("produced twice")
        );
        let unproduced = spec(vec![step("a", &[("x", "IN")], &[("y", "MID")])]);
        assert!(
            plan(&unproduced)
                .unwrap_err()
                .to_string()
                .contains("output 'OUT'")
        );
        assert!(
            plan(&spec(vec![]))
                .unwrap_err()
                .to_string()
                .contains("no steps")
        );
    }
}
