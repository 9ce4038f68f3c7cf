//! The coreai backend against Apple's real Core AI runtime (the in-package
//! Linux runtime of `coreai-core`), on the fixtures in `models/coreai`
//! (`scripts/make_coreai_fixtures.py`): load, signatures, outputs against
//! what the runtime and ONNX Runtime gave when the fixtures were made,
//! fp16/bf16, function families, state per sequence, and a runtime crash
//! contained and recovered from. Skips (printing SKIP) without a Python
//! holding `coreai-core`, unless `POMME_REQUIRE_COREAI=1`.

mod common;

use common::{expected, fixture, tensor};
use pomme_core::{
    Backend, DType, DeviceKind, LoadOptions, LoadedModel, ModelArtifact, ModelFormat,
    SequenceControl, Tensor,
};
use pomme_coreai::{CoreAiBackend, CoreAiSettings};
use pomme_test_support::fixtures::coreai_python;
use std::path::PathBuf;
use std::sync::Arc;

fn backend(test: &str) -> Option<(CoreAiBackend, tempfile::TempDir)> {
    let python = coreai_python(test)?;
    let cache = tempfile::tempdir().unwrap();
    Some((
        CoreAiBackend::new(CoreAiSettings {
            python: Some(python),
            fallback_pythons: vec![],
            cache_dir: cache.path().to_path_buf(),
        }),
        cache,
    ))
}

fn close(got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape());
    assert_eq!(got.dtype(), want.dtype());
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err <= tol, "max abs error {err} > {tol}");
}

/// Every case expected.json records for `name`, run through pomme.
fn check_cases(b: &CoreAiBackend, name: &str, tol: f64) -> Arc<dyn LoadedModel> {
    let model = b.load(&fixture(name), &LoadOptions::default()).unwrap();
    let mut s = model.session().unwrap();
    let exp = expected();
    for case in exp["fixtures"][name]["cases"].as_array().unwrap() {
        let sig = model.signature();
        let inputs: Vec<Tensor> = sig
            .inputs
            .iter()
            .map(|i| tensor(&case["inputs"][&i.name]))
            .collect();
        let out = s.run(inputs).unwrap();
        for (spec, got) in sig.outputs.iter().zip(&out) {
            close(got, &tensor(&case["outputs"][&spec.name]), tol);
        }
    }
    model
}

#[test]
fn mlp_matches_the_runtime_and_onnx_runtime() {
    let Some((b, _cache)) = backend("mlp_matches_the_runtime_and_onnx_runtime") else {
        return;
    };
    assert!(b.availability().is_available());
    let devices = b.devices();
    assert!(devices[0].availability.is_available());
    let ane = devices.iter().find(|d| d.kind == DeviceKind::Ane).unwrap();
    assert!(!ane.availability.is_available());
    let model = check_cases(&b, "mlp", 1e-6);
    let sig = model.signature();
    assert_eq!(sig.inputs[0].shape.to_string(), "[batch,32]");
    assert!(sig.is_batchable());
    assert_eq!(model.backend(), "coreai");
}

#[test]
fn compiled_programs_are_cached() {
    let Some((b, cache)) = backend("compiled_programs_are_cached") else {
        return;
    };
    let m1 = b.load(&fixture("mlp"), &LoadOptions::default()).unwrap();
    let entries: Vec<PathBuf> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let name = entries[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("mlp-") && name.ends_with(".aimodelx"),
        "{name}"
    );
    assert!(name.contains("coreai-core1.0.0b3-Linux"), "{name}");
    drop(m1);
    // A second load finds it, and the precompiled form loads directly.
    b.load(&fixture("mlp"), &LoadOptions::default()).unwrap();
    let pre = ModelArtifact {
        path: entries[0].clone(),
        format: ModelFormat::CoreAi,
    };
    let m = b.load(&pre, &LoadOptions::default()).unwrap();
    assert_eq!(m.signature().outputs[0].name, "y");
}

#[test]
fn encoder_takes_int32_and_declares_int64_narrowing() {
    let Some((b, _cache)) = backend("encoder_takes_int32_and_declares_int64_narrowing") else {
        return;
    };
    let model = check_cases(&b, "encoder", 1e-5);
    let ids = &model.signature().inputs[0];
    assert_eq!(ids.dtype, DType::I32);
    assert_eq!(ids.accepts, Some(DType::I64));
    assert_eq!(ids.shape.to_string(), "[batch,?]");
}

#[test]
fn fp16_and_bf16_end_to_end() {
    let Some((b, _cache)) = backend("fp16_and_bf16_end_to_end") else {
        return;
    };
    let m = check_cases(&b, "fp16", 0.0);
    assert_eq!(m.signature().outputs[0].dtype, DType::F16);
    let m = check_cases(&b, "bf16", 0.0);
    assert_eq!(m.signature().inputs[0].dtype, DType::BF16);
}

#[test]
fn batch_variants_serve_any_batch() {
    let Some((b, _cache)) = backend("batch_variants_serve_any_batch") else {
        return;
    };
    let model = b
        .load(&fixture("two_function"), &LoadOptions::default())
        .unwrap();
    assert!(model.signature().is_batchable());
    let mut s = model.session().unwrap();
    for rows in [1usize, 3, 8, 11] {
        let x: Vec<f32> = (0..rows * 4).map(|i| i as f32 * 0.5).collect();
        let out = s
            .run(vec![Tensor::from_vec(vec![rows, 4], x.clone()).unwrap()])
            .unwrap();
        assert_eq!(out[0].shape(), [rows, 4]);
        let want: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), want, "rows {rows}");
    }
    let one = b
        .load(
            &fixture("two_function"),
            &LoadOptions::with_extra(&[("function", "b1")]),
        )
        .unwrap();
    assert!(!one.signature().is_batchable());
    assert_eq!(one.signature().inputs[0].shape.to_string(), "[1,4]");
    let e = b
        .load(
            &fixture("two_function"),
            &LoadOptions::with_extra(&[("function", "b2")]),
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no such function (it has b1, b8)"), "{e}");
}

fn seq(id: &str, start: bool, end: bool) -> SequenceControl {
    SequenceControl {
        id: id.into(),
        start,
        end,
    }
}

#[test]
fn state_is_kept_per_sequence() {
    let Some((b, _cache)) = backend("state_is_kept_per_sequence") else {
        return;
    };
    let model = b
        .load(&fixture("accumulator"), &LoadOptions::default())
        .unwrap();
    assert!(model.is_stateful());
    let mut s = model.session().unwrap();
    let x = |v: f32| vec![Tensor::from_vec(vec![1, 4], vec![v; 4]).unwrap()];
    let y = |out: Vec<Tensor>| out[0].to_vec::<f32>().unwrap()[0];
    assert_eq!(
        y(s.run_sequence(x(1.0), &seq("a", true, false)).unwrap()),
        1.0
    );
    assert_eq!(
        y(s.run_sequence(x(10.0), &seq("b", true, false)).unwrap()),
        10.0
    );
    assert_eq!(
        y(s.run_sequence(x(1.0), &seq("a", false, false)).unwrap()),
        2.0
    );
    // Another session (another engine process) continues the same sequence.
    let mut s2 = model.session().unwrap();
    assert_eq!(
        y(s2.run_sequence(x(1.0), &seq("a", false, true)).unwrap()),
        3.0
    );
    assert_eq!(
        y(s2.run_sequence(x(5.0), &seq("b", false, true)).unwrap()),
        15.0
    );
    // Ended: no state left; restarting begins at zero.
    let e = s.run_sequence(x(1.0), &seq("a", false, false)).unwrap_err();
    assert!(e.to_string().contains("sequence 'a' has no state"), "{e}");
    assert_eq!(
        y(s.run_sequence(x(4.0), &seq("a", true, true)).unwrap()),
        4.0
    );
    let e = s.run(x(1.0)).unwrap_err();
    assert!(e.to_string().contains("stateful: send sequence_id"), "{e}");
}

#[test]
fn a_runtime_crash_fails_the_call_and_the_engine_restarts() {
    let Some((b, _cache)) = backend("a_runtime_crash_fails_the_call_and_the_engine_restarts")
    else {
        return;
    };
    let model = b.load(&fixture("mlp"), &LoadOptions::default()).unwrap();
    let mut s = model.session().unwrap();
    let good = || vec![Tensor::from_vec(vec![1, 32], vec![0.5f32; 32]).unwrap()];
    let before = s.run(good()).unwrap();
    // A width the signature would refuse, sent past it: Apple's Linux runtime
    // dies with a Swift fatal error (MatMulKernel) on it.
    let bad = vec![Tensor::from_vec(vec![2, 31], vec![0.5f32; 62]).unwrap()];
    let e = s.run(bad).unwrap_err().to_string();
    assert!(e.contains("Core AI engine") && e.contains("died"), "{e}");
    assert!(e.contains("restarted"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // The next call gets a fresh engine and the same answer.
    assert_eq!(s.run(good()).unwrap(), before);
    let e = s
        .run(vec![Tensor::zeros(DType::F32, vec![0, 32]).unwrap()])
        .unwrap_err();
    assert!(e.to_string().contains("empty batch"), "{e}");
}

#[test]
fn inspect_lists_functions_states_and_metadata() {
    let Some((b, _cache)) = backend("inspect_lists_functions_states_and_metadata") else {
        return;
    };
    let info = b.inspect(&fixture("accumulator")).unwrap();
    assert_eq!(
        info.metadata["function main"],
        "inputs x FP32 [1,4]; outputs y FP32 [1,4]; states acc FP32 [1,4]"
    );
    assert!(
        info.metadata["runtime"].starts_with("coreai-core 1.0.0b3"),
        "{:?}",
        info.metadata
    );
    assert!(
        info.metadata.contains_key("metadata.producer"),
        "{:?}",
        info.metadata
    );
    let info = b.inspect(&fixture("two_function")).unwrap();
    assert_eq!(info.metadata["serves"], "b1, b8");
}

#[test]
fn devices_other_than_the_cpu_are_refused_on_linux() {
    let Some((b, _cache)) = backend("devices_other_than_the_cpu_are_refused_on_linux") else {
        return;
    };
    if cfg!(target_os = "macos") {
        return;
    }
    let opts = LoadOptions {
        device: DeviceKind::Ane,
        ..LoadOptions::default()
    };
    let e = b.load(&fixture("mlp"), &opts).err().unwrap().to_string();
    assert!(e.contains("runs on the CPU only"), "{e}");
}
