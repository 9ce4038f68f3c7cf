//! Measured routing on real models and real engines (tract, ONNX Runtime):
//! every available candidate is loaded, checked against the CPU reference and
//! timed; the decision names each candidate's figures. ONNX Runtime is used
//! when its library is found (`ORT_DYLIB_PATH`); otherwise its trial says why
//! and tract serves alone.

use pomme_core::{DeviceKind, LoadOptions, LoadedModel};
use pomme_runtime::{RoutingConfig, TrialOutcome, detect_artifact, load_routed};
use pomme_test_support::fixtures;
use std::path::Path;

fn route(path: &Path, cfg: &RoutingConfig) -> pomme_runtime::RoutingDecision {
    let art = detect_artifact(path).unwrap();
    let (model, set) = load_routed(
        "m",
        1,
        &pomme_backends::compiled_with(&pomme_backends::BackendSettings {
            ort_dylib: pomme_test_support::ort_dylib(),
            ..Default::default()
        }),
        &art,
        &LoadOptions::default(),
        &[],
        cfg,
        None,
    )
    .unwrap();
    let d = set.decision.clone();
    eprintln!("{}: {}", path.display(), d.summary());
    for t in &d.trials {
        eprintln!("  {}: {:?}", t.candidate, t.outcome);
    }
    assert_eq!(model.backend(), d.chosen.backend);
    d
}

#[test]
fn automatic_candidates_on_linux_agree_on_add_one() {
    let automatic = pomme_backends::automatic_candidates()
        .into_iter()
        .map(|(b, d)| pomme_runtime::Candidate::new(b, d))
        .collect();
    let d = route(
        &fixtures::repo_models().join("add_one.onnx"),
        &RoutingConfig {
            candidates: automatic,
            ..RoutingConfig::default()
        },
    );
    // The automatic Linux list: CUDA first (not compiled into this test build),
    // then ONNX Runtime and tract on the CPU; Core AI reads no ONNX.
    let names: Vec<String> = d.trials.iter().map(|t| t.candidate.to_string()).collect();
    if std::env::consts::OS == "linux" {
        assert_eq!(names, ["tract/cuda", "ort/cpu", "tract/cpu", "coreai/cpu"]);
        assert!(matches!(
            d.trials[0].outcome,
            TrialOutcome::Unavailable { .. } | TrialOutcome::Failed { .. }
        ));
    }
    assert_eq!(d.chosen.device, DeviceKind::Cpu);
    assert!(d.reference.is_some());
    // Whatever ran on the CPU agrees with the reference: add_one is exact.
    for t in &d.trials {
        if let TrialOutcome::Measured {
            agreement: Some(a), ..
        } = &t.outcome
        {
            assert!(a.agrees && a.max_abs_diff == 0.0, "{t:?}");
        }
    }
}

#[test]
fn mobilenet_v2_on_tract_and_ort() {
    let Some(dir) = fixtures::models_dir("mobilenet_v2_on_tract_and_ort") else {
        return;
    };
    let cfg = RoutingConfig {
        candidates: vec!["tract/cpu".parse_candidate(), "ort/cpu".parse_candidate()],
        warmup_runs: 1,
        timed_runs: 5,
        ..Default::default()
    };
    let d = route(&dir.join("mobilenet_v2.onnx"), &cfg);
    assert_eq!(d.reference.as_ref().unwrap().to_string(), "tract/cpu");
    match &d.trials[1].outcome {
        TrialOutcome::Measured {
            agreement: Some(a),
            timing,
        } => {
            assert!(a.agrees, "{a:?}");
            assert!(timing.median_us > 0.0);
            assert_eq!(d.order.len(), 2);
        }
        // ONNX Runtime's library not found here: tract serves alone.
        TrialOutcome::Unavailable { reason } | TrialOutcome::Failed { reason } => {
            eprintln!("ort not available: {reason}");
            assert_eq!(d.order.len(), 1);
        }
        other => panic!("unexpected: {other:?}"),
    }
}

trait ParseCandidate {
    fn parse_candidate(&self) -> pomme_runtime::Candidate;
}

impl ParseCandidate for str {
    fn parse_candidate(&self) -> pomme_runtime::Candidate {
        pomme_runtime::Candidate::parse(self, DeviceKind::Cpu).unwrap()
    }
}
