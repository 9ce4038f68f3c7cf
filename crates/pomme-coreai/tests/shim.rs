//! The Swift shim's contract in action: the fixtures of `models/coreai`
//! through pomme's Swift shim over CoreAI.framework (`bridge = "shim"`),
//! where this build has the shim and the machine has the framework (macOS
//! 27+; `scripts/macos-smoke.sh` builds and runs this). Everywhere else the
//! same checks run through the Python engine (`bridge = "python"`, skipped
//! without a Python holding `coreai-core`), so that this file is exercised on
//! Linux too and the shim is held to what the bridge is held to; and a build
//! without the shim refuses `bridge = "shim"`, saying why.
//!
//! The shim runs on the CPU specialization here (`SpecializationOptions
//! .cpuOnly`), which may round differently from the Linux interpreter that
//! made `expected.json`: its tolerances are a little looser.

mod common;

use common::{expected, fixture, tensor};
use pomme_core::{
    Backend, DType, DeviceKind, Error, LoadOptions, LoadedModel, SequenceControl, Tensor,
};
use pomme_coreai::{CoreAiBackend, CoreAiSettings};
use pomme_test_support::fixtures::coreai_python;
use std::sync::Arc;

struct Setup {
    backend: CoreAiBackend,
    /// `shim` or `python`.
    bridge: &'static str,
    _cache: tempfile::TempDir,
}

fn settings(python: Option<std::path::PathBuf>, cache: &tempfile::TempDir) -> CoreAiSettings {
    CoreAiSettings {
        python,
        fallback_pythons: vec![],
        cache_dir: cache.path().to_path_buf(),
    }
}

/// The shim where it can run, else the Python engine, else `None` (SKIP).
fn setup(test: &str) -> Option<Setup> {
    let cache = tempfile::tempdir().unwrap();
    let backend = CoreAiBackend::new(settings(None, &cache));
    match backend.shim_runtime() {
        Ok(rt) => {
            eprintln!("{test}: through the Swift shim: {}", rt.description);
            return Some(Setup {
                backend,
                bridge: "shim",
                _cache: cache,
            });
        }
        Err(why) => eprintln!("{test}: no Swift shim ({why}); through Python instead"),
    }
    let python = coreai_python(test)?;
    Some(Setup {
        backend: CoreAiBackend::new(settings(Some(python), &cache)),
        bridge: "python",
        _cache: cache,
    })
}

impl Setup {
    fn options(&self, extra: &[(&str, &str)]) -> LoadOptions {
        let mut all = vec![("bridge", self.bridge)];
        all.extend_from_slice(extra);
        LoadOptions {
            device: DeviceKind::Cpu,
            ..LoadOptions::with_extra(&all)
        }
    }

    fn load(&self, name: &str, extra: &[(&str, &str)]) -> Arc<dyn LoadedModel> {
        self.backend
            .load(&fixture(name), &self.options(extra))
            .unwrap_or_else(|e| panic!("{name} through {}: {e}", self.bridge))
    }

    /// Tolerance for a dtype: as tight as the Linux tests through Python.
    fn tol(&self, dtype: DType) -> f64 {
        match (self.bridge, dtype) {
            ("python", DType::F32) => 1e-5,
            ("python", _) => 0.0,
            (_, DType::F32) => 1e-4,
            (_, DType::F16) => 4e-3,
            _ => 2e-2,
        }
    }
}

fn close(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    assert_eq!(got.dtype(), want.dtype(), "{what}");
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let err = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(err <= tol, "{what}: max abs error {err} > {tol}");
}

#[test]
fn every_fixture_gives_the_recorded_outputs() {
    let Some(s) = setup("every_fixture_gives_the_recorded_outputs") else {
        return;
    };
    let exp = expected();
    for name in ["mlp", "encoder", "fp16", "bf16"] {
        let model = s.load(name, &[]);
        let mut session = model.session().unwrap();
        for case in exp["fixtures"][name]["cases"].as_array().unwrap() {
            let sig = model.signature();
            let inputs = sig
                .inputs
                .iter()
                .map(|i| tensor(&case["inputs"][&i.name]))
                .collect();
            let out = session.run(inputs).unwrap();
            for (spec, got) in sig.outputs.iter().zip(&out) {
                let want = tensor(&case["outputs"][&spec.name]);
                close(
                    &format!("{name}.{}", spec.name),
                    got,
                    &want,
                    s.tol(want.dtype()),
                );
            }
        }
    }
}

#[test]
fn function_families_and_state_work_as_through_python() {
    let Some(s) = setup("function_families_and_state_work_as_through_python") else {
        return;
    };
    // b1 / b8 serve any batch, padded and chunked.
    let model = s.load("two_function", &[]);
    assert!(model.signature().is_batchable());
    let mut session = model.session().unwrap();
    for rows in [1usize, 3, 11] {
        let x: Vec<f32> = (0..rows * 4).map(|i| i as f32 * 0.5).collect();
        let out = session
            .run(vec![Tensor::from_vec(vec![rows, 4], x.clone()).unwrap()])
            .unwrap();
        let want: Vec<f32> = x.iter().map(|v| 2.0 * v + 1.0).collect();
        close(
            &format!("two_function rows {rows}"),
            &out[0],
            &Tensor::from_vec(vec![rows, 4], want).unwrap(),
            s.tol(DType::F32),
        );
    }
    // State per sequence, kept in pomme across calls and sessions.
    let model = s.load("accumulator", &[]);
    assert!(model.is_stateful());
    let (mut a, mut b) = (model.session().unwrap(), model.session().unwrap());
    let x = |v: f32| vec![Tensor::from_vec(vec![1, 4], vec![v; 4]).unwrap()];
    let seq = |start, end| SequenceControl {
        id: "s".into(),
        start,
        end,
    };
    let y = |out: Vec<Tensor>| out[0].to_vec::<f32>().unwrap()[0];
    assert_eq!(y(a.run_sequence(x(1.0), &seq(true, false)).unwrap()), 1.0);
    assert_eq!(y(b.run_sequence(x(2.0), &seq(false, false)).unwrap()), 3.0);
    assert_eq!(y(a.run_sequence(x(4.0), &seq(false, true)).unwrap()), 7.0);
}

#[test]
fn inspect_names_the_runtime_that_served() {
    let Some(s) = setup("inspect_names_the_runtime_that_served") else {
        return;
    };
    if s.bridge != "shim" {
        return; // inspect uses the default bridge: the Linux tests cover Python's
    }
    let info = s.backend.inspect(&fixture("accumulator")).unwrap();
    assert!(
        info.metadata["runtime"].contains("pomme's Swift shim"),
        "{:?}",
        info.metadata
    );
    assert_eq!(
        info.metadata["function main"],
        "inputs x FP32 [1,4]; outputs y FP32 [1,4]; states acc FP32 [1,4]"
    );
    // Every compute unit the framework offers loads the model.
    let rt = s.backend.shim_runtime().unwrap();
    for (kind, device) in [("gpu", DeviceKind::Metal), ("ane", DeviceKind::Ane)] {
        if rt.kinds.iter().any(|k| k == kind) {
            let opts = LoadOptions {
                device,
                ..s.options(&[])
            };
            let m = s.backend.load(&fixture("mlp"), &opts).unwrap();
            let out = m
                .session()
                .unwrap()
                .run(vec![
                    Tensor::from_vec(vec![1, 32], vec![0.5f32; 32]).unwrap(),
                ])
                .unwrap();
            assert_eq!(out[0].shape(), [1, 8], "{kind}");
        }
    }
}

#[test]
fn without_the_shim_bridge_shim_is_refused_with_the_reason() {
    let cache = tempfile::tempdir().unwrap();
    let backend = CoreAiBackend::new(settings(None, &cache));
    let Err(why) = backend.shim_runtime() else {
        return; // the shim is there: the tests above use it
    };
    let opts = LoadOptions::with_extra(&[("bridge", "shim")]);
    let e = backend.load(&fixture("mlp"), &opts).err().unwrap();
    assert!(matches!(e, Error::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("bridge = \"shim\""), "{e}");
    assert!(e.to_string().contains(&why), "{e}");
}

/// Run alone by the Mac proof kit (`--ignored`): whether Core AI on macOS
/// turns a call the signature would refuse into an error, or ends the process
/// (the shim runs in-process, so the second ends pomme). Through Python the
/// engine dies and the call fails; both are errors to the caller.
#[test]
#[ignore = "may end the process through the shim; scripts/macos-smoke.sh runs it alone"]
fn a_call_past_the_signature_is_an_error() {
    let Some(s) = setup("a_call_past_the_signature_is_an_error") else {
        return;
    };
    let model = s.load("mlp", &[]);
    let mut session = model.session().unwrap();
    let bad = vec![Tensor::from_vec(vec![2, 31], vec![0.5f32; 62]).unwrap()];
    let e = session.run(bad).unwrap_err();
    eprintln!("through {}: {e}", s.bridge);
    let good = vec![Tensor::from_vec(vec![1, 32], vec![0.5f32; 32]).unwrap()];
    assert_eq!(session.run(good).unwrap()[0].shape(), [1, 8]);
}
