//! `pomme infer`: one request through the runtime, .npy in and out.

use crate::cli::{InferArgs, tokio_runtime};
use crate::env::Settings;
use anyhow::{Context, Result};
use pomme_core::{Fill, ModelSignature, Tensor};
use pomme_runtime::{InferRequest, Runtime};
use std::process::ExitCode;
use std::time::Instant;

pub fn run(args: InferArgs, settings: &Settings) -> Result<ExitCode> {
    let mut named = crate::npy::read_named(&args.inputs)?;
    let backends = pomme_backends::compiled_with(&settings.backends);
    let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
    let rt = Runtime::builder().backends(backends).build()?;
    let mut spec =
        args.engine
            .model_spec("model", &args.model, args.backend.as_deref(), settings)?;
    let tokio = tokio_runtime()?;
    let generated = named.is_empty();
    // Without --backend, a backend that loads the model but cannot run it
    // hands it to the next one that reads the format (load refusals already
    // fall through inside the runtime): the union of the engines is the default.
    let mut fallbacks: Vec<serde_json::Value> = Vec::new();
    // The inference error that sent the model on to the next backend.
    let mut failed: Option<anyhow::Error> = None;
    let (view, resp, load_ms, infer_ms) = loop {
        let t_load = Instant::now();
        let view = match tokio.block_on(rt.load(spec.clone())) {
            Ok(view) => view,
            // No further backend loads it: the inference error is the news.
            Err(_) if failed.is_some() => return Err(failed.take().expect("checked")),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot load {}", args.model.display()))
                );
            }
        };
        let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
        if generated {
            named = synthetic_inputs(&view.signature)?;
        }
        let t_run = Instant::now();
        let mut req = InferRequest::new("model", named.clone());
        if view.stateful {
            // One request of a fresh sequence: state starts at zero and is dropped after.
            req.sequence = Some(pomme_core::SequenceControl {
                id: "pomme-infer".into(),
                start: true,
                end: true,
            });
        }
        let err = match tokio.block_on(rt.infer(req)) {
            Ok(resp) => break (view, resp, load_ms, t_run.elapsed().as_secs_f64() * 1e3),
            Err(e) => e,
        };
        let context = format!("{}/{}", view.backend, view.device);
        // A bad input is the user's on every engine; a named backend is a choice.
        if args.backend.is_some() || matches!(err, pomme_core::Error::InvalidInput(_)) {
            return Err(anyhow::Error::new(err).context(context));
        }
        fallbacks.push(serde_json::json!({"backend": view.backend, "error": err.to_string()}));
        failed = Some(anyhow::Error::new(err).context(context));
        spec.backends = names
            .iter()
            .filter(|n| !fallbacks.iter().any(|f| f["backend"] == n.as_str()))
            .cloned()
            .collect();
        tokio.block_on(rt.unload("model"))?;
        if spec.backends.is_empty() {
            return Err(failed.take().expect("just set"));
        }
    };
    let inputs_summary: Vec<serde_json::Value> = named
        .iter()
        .map(|(n, t)| serde_json::json!({"name": n, "datatype": t.dtype().kserve_name(), "shape": t.shape()}))
        .collect();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for (name, t) in &resp.outputs {
            crate::npy::write(&dir.join(format!("{}.npy", sanitize(name))), t)?;
        }
    }
    let outputs: Vec<serde_json::Value> = resp
        .outputs
        .iter()
        .map(|(n, t)| {
            let mut o = serde_json::json!({"name": n, "datatype": t.dtype().kserve_name(), "shape": t.shape()});
            if let Ok(v) = t.to_f64_vec() {
                let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
                if !finite.is_empty() {
                    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let mean = finite.iter().sum::<f64>() / finite.len() as f64;
                    o["min"] = min.into();
                    o["max"] = max.into();
                    o["mean"] = mean.into();
                }
                o["head"] = serde_json::json!(v.iter().take(8).collect::<Vec<_>>());
            }
            if let Some(dir) = &args.output_dir {
                o["file"] = serde_json::json!(dir.join(format!("{}.npy", sanitize(n))));
            }
            o
        })
        .collect();
    let summary = serde_json::json!({
        "model": args.model,
        "backend": view.backend,
        "device": view.device,
        "load_ms": round3(load_ms),
        "infer_ms": round3(infer_ms),
        "inputs_generated": generated,
        "fallbacks": fallbacks,
        "inputs": inputs_summary,
        "outputs": outputs,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Deterministic inputs of batch 1 (symbolic dims → 1; `seq` → 8), for demos and benches.
pub fn synthetic_inputs(sig: &ModelSignature) -> Result<Vec<(String, Tensor)>> {
    synthetic_batch(sig, 1)
}

/// Deterministic inputs with the first symbolic dimension set to `batch`
/// (other symbolic dims 8), values from [`Fill::Pattern`].
pub fn synthetic_batch(sig: &ModelSignature, batch: usize) -> Result<Vec<(String, Tensor)>> {
    Ok(pomme_core::synthetic_inputs(sig, batch, 8, Fill::Pattern)?)
}
