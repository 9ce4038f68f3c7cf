//! The load-time trials of measured routing: every available candidate is
//! loaded, run on the same synthetic inputs built from the model's signature
//! ([`synth_inputs`]), compared with the first CPU candidate that ran (the
//! reference) within the tolerance for what both compute in
//! ([`RoutingConfig::tolerance_for`]) and timed. [`plan`] returns the decision alone (`pomme inspect
//! --plan`); `routed.rs` keeps what loaded to serve with.

use super::config::RoutingConfig;
use super::decision::{
    Candidate, RoutingDecision, Timing, Trial, TrialOutcome, compare_outputs, decide,
};
use super::routed::run_caught;
use pomme_core::{
    Availability, Backend, DeviceKind, Error, Fill, LoadOptions, LoadedModel, ModelArtifact,
    ModelSignature, Result, Tensor, check_extra_keys, synthetic_inputs,
};
use std::sync::Arc;
use std::time::Instant;

/// Deterministic inputs for a signature: symbolic dims take `symbol_size`
/// (the batch dim 1), values from [`Fill::Uniform`] (floats in [-1, 1),
/// integers 0 or 1, booleans alternate). BYTES inputs cannot be made up: an
/// error says so.
pub fn synth_inputs(sig: &ModelSignature, symbol_size: usize) -> Result<Vec<Tensor>> {
    let named = synthetic_inputs(
        sig,
        1,
        symbol_size.max(1),
        Fill::Uniform(0x9E37_79B9_7F4A_7C15),
    )?;
    Ok(named.into_iter().map(|(_, t)| t).collect())
}

/// Runs the load-time trials exactly as [`load_routed`] does and returns the
/// decision without keeping anything loaded: what `pomme inspect --plan`
/// shows. `on_trial(i, n, candidate)` is called before candidate `i` of `n`
/// is tried (a progress bar). Fails, naming every candidate and why, when
/// none can serve.
pub fn plan(
    backends: &[Arc<dyn Backend>],
    artifact: &ModelArtifact,
    options: &LoadOptions,
    preference: &[String],
    cfg: &RoutingConfig,
    on_trial: &mut dyn FnMut(usize, usize, &Candidate),
) -> Result<RoutingDecision> {
    run_trials(backends, artifact, options, preference, cfg, on_trial).map(|(d, _, _)| d)
}

/// Tries every candidate, compares each with the reference and decides.
/// Returns the decision, the candidates in configuration order and what each
/// one that ran loaded.
pub(super) fn run_trials(
    backends: &[Arc<dyn Backend>],
    artifact: &ModelArtifact,
    options: &LoadOptions,
    preference: &[String],
    cfg: &RoutingConfig,
    on_trial: &mut dyn FnMut(usize, usize, &Candidate),
) -> Result<(RoutingDecision, Vec<Candidate>, Vec<Option<Ran>>)> {
    cfg.validate()?;
    let candidates = cfg.resolve_candidates(preference, options.device)?;
    // Options that none of the candidates' engines reads are a typo, not a no-op.
    let mut engines: Vec<&dyn Backend> = Vec::new();
    for c in &candidates {
        if let Some(b) = backends.iter().find(|b| b.name() == c.backend)
            && !engines.iter().any(|e| e.name() == b.name())
        {
            engines.push(&**b);
        }
    }
    if !engines.is_empty() {
        check_extra_keys(&options.extra, &engines)?;
    }
    let mut ran: Vec<Option<Ran>> = Vec::new();
    let mut outcomes: Vec<Option<TrialOutcome>> = Vec::new();
    let mut input_shapes: Vec<Vec<usize>> = Vec::new();
    let mut broken_model: Option<Error> = None;
    for (i, c) in candidates.iter().enumerate() {
        on_trial(i, candidates.len(), c);
        match try_candidate(c, backends, artifact, options, cfg) {
            Ok((r, shapes)) => {
                input_shapes = shapes;
                ran.push(Some(r));
                outcomes.push(None);
            }
            Err(o) => {
                if let TrialOutcome::Failed { reason } = &o
                    && let Some(msg) = reason.strip_prefix("invalid model: ")
                {
                    broken_model.get_or_insert(Error::InvalidModelFormat(msg.to_string()));
                }
                ran.push(None);
                outcomes.push(Some(o));
            }
        }
    }
    // The reference: the first candidate on the CPU that ran.
    let reference = candidates
        .iter()
        .zip(&ran)
        .position(|(c, r)| c.device == DeviceKind::Cpu && r.is_some());
    let mut trials = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        let outcome = match (&ran[i], outcomes[i].take()) {
            (_, Some(o)) => o,
            (Some(r), None) => match reference {
                Some(ri) if ri != i => {
                    let reference = ran[ri].as_ref().expect("reference ran");
                    let tol = cfg.tolerance_for(
                        reference.model.compute_precision(),
                        r.model.compute_precision(),
                    );
                    let a = compare_outputs(&reference.outputs, &r.outputs, tol);
                    if a.agrees {
                        TrialOutcome::Measured {
                            agreement: Some(a),
                            timing: r.timing.clone(),
                        }
                    } else {
                        TrialOutcome::Disagrees {
                            agreement: a,
                            timing: r.timing.clone(),
                        }
                    }
                }
                _ => TrialOutcome::Measured {
                    agreement: None,
                    timing: r.timing.clone(),
                },
            },
            (None, None) => unreachable!("a candidate either ran or has an outcome"),
        };
        trials.push(Trial {
            candidate: c.clone(),
            outcome,
        });
    }
    let decision = match decide(
        trials,
        reference.map(|i| candidates[i].clone()),
        cfg.tolerance,
        cfg.tolerance_f16,
        input_shapes,
    ) {
        Ok(d) => d,
        // A broken model fails the same way everywhere: say so plainly.
        Err(_) if broken_model.is_some() => return Err(broken_model.expect("checked")),
        Err(e) => return Err(e),
    };
    Ok((decision, candidates, ran))
}

/// What a load-time trial produced before the reference comparison.
pub(super) struct Ran {
    pub(super) model: Arc<dyn LoadedModel>,
    outputs: Vec<Tensor>,
    timing: Timing,
}

fn try_candidate(
    c: &Candidate,
    backends: &[Arc<dyn Backend>],
    artifact: &ModelArtifact,
    options: &LoadOptions,
    cfg: &RoutingConfig,
) -> std::result::Result<(Ran, Vec<Vec<usize>>), TrialOutcome> {
    let unavailable = |reason: String| TrialOutcome::Unavailable { reason };
    let failed = |e: Error| TrialOutcome::Failed {
        reason: e.to_string(),
    };
    let Some(b) = backends.iter().find(|b| b.name() == c.backend) else {
        return Err(unavailable(format!(
            "backend '{}' is not compiled in",
            c.backend
        )));
    };
    if !b.formats().contains(&artifact.format) {
        return Err(unavailable(format!(
            "{} does not read {}",
            c.backend, artifact.format
        )));
    }
    if let Availability::Unavailable(why) = b.availability() {
        return Err(unavailable(why));
    }
    let devices = b.devices();
    match devices.iter().find(|d| d.kind == c.device) {
        None => {
            return Err(unavailable(format!(
                "{} has no {} device",
                c.backend, c.device
            )));
        }
        Some(d) => {
            if let Availability::Unavailable(why) = &d.availability {
                return Err(unavailable(why.clone()));
            }
        }
    }
    let mut opts = options.clone();
    opts.device = c.device;
    let model = b.load(artifact, &opts).map_err(failed)?;
    let inputs = synth_inputs(model.signature(), cfg.symbol_size).map_err(failed)?;
    let shapes = inputs.iter().map(|t| t.shape().to_vec()).collect();
    let mut session = model.session().map_err(failed)?;
    let mut first: Option<Vec<Tensor>> = None;
    for _ in 0..cfg.warmup_runs.max(1) {
        let (r, _) = run_caught(&mut *session, inputs.clone());
        let outs = r.map_err(failed)?;
        first.get_or_insert(outs);
    }
    let mut samples = Vec::with_capacity(cfg.timed_runs.max(1));
    for _ in 0..cfg.timed_runs.max(1) {
        let t = Instant::now();
        let (r, _) = run_caught(&mut *session, inputs.clone());
        r.map_err(failed)?;
        samples.push(t.elapsed());
    }
    Ok((
        Ran {
            model,
            outputs: first.expect("at least one warm-up run"),
            timing: Timing::of(&samples),
        },
        shapes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::decision::Tolerance;
    use pomme_core::{DType, Dim, Shape, TensorSpec};

    /// A candidate computing in float16 is held to `tolerance_f16`: off by
    /// 0.5% it agrees, where a float32 candidate off by as much does not.
    #[test]
    fn fp16_candidates_are_compared_with_the_fp16_tolerance() {
        use pomme_test_support::FakeBackend;
        let file = std::env::temp_dir().join(format!("pomme-f16-tol-{}.onnx", std::process::id()));
        std::fs::write(&file, b"\x08\x08").unwrap();
        let artifact = ModelArtifact {
            path: file.clone(),
            format: pomme_core::ModelFormat::Onnx,
        };
        let reference = FakeBackend::new(4).named("ref");
        let ane = FakeBackend::new(4)
            .named("ane")
            .scale(2.01)
            .device(DeviceKind::Ane)
            .computing_in(pomme_core::Precision::F16);
        let f32_off = FakeBackend::new(4)
            .named("gpu")
            .scale(2.01)
            .device(DeviceKind::Metal);
        let backends: Vec<Arc<dyn Backend>> =
            vec![Arc::new(reference), Arc::new(ane), Arc::new(f32_off)];
        let cfg = RoutingConfig {
            candidates: vec![
                Candidate::new("ref", DeviceKind::Cpu),
                Candidate::new("ane", DeviceKind::Ane),
                Candidate::new("gpu", DeviceKind::Metal),
            ],
            timed_runs: 1,
            warmup_runs: 0,
            ..RoutingConfig::default()
        };
        let run = |cfg: &RoutingConfig| {
            plan(
                &backends,
                &artifact,
                &LoadOptions::default(),
                &[],
                cfg,
                &mut |_, _, _| {},
            )
            .unwrap()
        };
        let d = run(&cfg);
        let agreement = |d: &RoutingDecision, i: usize| match &d.trials[i].outcome {
            TrialOutcome::Measured { agreement, .. } => {
                agreement.clone().map(|a| (a.agrees, a.tolerance))
            }
            TrialOutcome::Disagrees { agreement, .. } => {
                Some((agreement.agrees, agreement.tolerance))
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(agreement(&d, 1), Some((true, Tolerance::F16)));
        assert_eq!(agreement(&d, 2), Some((false, Tolerance::default())));
        assert_eq!(d.tolerance_f16, Tolerance::F16);
        // Overridable: a strict fp16 tolerance refuses the same candidate.
        let strict = RoutingConfig {
            tolerance_f16: Tolerance::default(),
            ..cfg
        };
        assert_eq!(agreement(&run(&strict), 1).map(|a| a.0), Some(false));
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn synthetic_inputs_follow_the_signature() {
        let sig = ModelSignature {
            inputs: vec![
                TensorSpec::new(
                    "x",
                    DType::F32,
                    Shape(vec![
                        Dim::Symbolic("b".into()),
                        Dim::Symbolic("s".into()),
                        Dim::Fixed(3),
                    ]),
                ),
                TensorSpec::new("ids", DType::I64, Shape(vec![Dim::Fixed(4)])),
            ],
            outputs: vec![],
        };
        let a = synth_inputs(&sig, 5).unwrap();
        assert_eq!(a[0].shape(), &[1, 5, 3]);
        assert_eq!(a[1].to_vec::<i64>().unwrap(), vec![0, 1, 0, 1]);
        assert!(
            a[0].to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| (-1.0..1.0).contains(v))
        );
        // Reproducible: every candidate sees the same values.
        assert_eq!(synth_inputs(&sig, 5).unwrap()[0], a[0]);
        let bytes = ModelSignature {
            inputs: vec![TensorSpec::new(
                "s",
                DType::Bytes,
                Shape(vec![Dim::Fixed(1)]),
            )],
            outputs: vec![],
        };
        assert!(
            synth_inputs(&bytes, 1)
                .unwrap_err()
                .to_string()
                .contains("BYTES input 's'")
        );
    }
}
