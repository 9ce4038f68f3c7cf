//! Shared helpers for the tract backend's integration tests: fixture paths,
//! `.npy` reading and reference comparison.
#![expect(
    clippy::disallowed_methods,
    reason = "tests find their models through POMME_TEST_MODELS"
)]
#![allow(dead_code)]

use pomme_core::{Backend, LoadedModel, ModelArtifact, ModelFormat, Tensor};
use pomme_tract::TractBackend;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The workspace root (`crates/pomme-tract/../..`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The in-repo fixtures (`<workspace>/models`).
pub fn repo_models() -> PathBuf {
    workspace_root().join("models")
}

/// The shared model collection: `$POMME_TEST_MODELS`, else `<workspace>/../shared/models`.
/// `None` (after printing a visible SKIP line) when it is absent.
pub fn shared_models(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("POMME_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/models"));
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {test}: no model directory at {}; set POMME_TEST_MODELS",
            dir.display()
        );
        None
    }
}

pub fn onnx(path: impl Into<PathBuf>) -> ModelArtifact {
    ModelArtifact {
        path: path.into(),
        format: ModelFormat::Onnx,
    }
}

pub fn load(path: impl Into<PathBuf>) -> Arc<dyn LoadedModel> {
    let artifact = onnx(path);
    TractBackend::new()
        .load(&artifact, &Default::default())
        .unwrap_or_else(|e| panic!("loading {}: {e}", artifact.path.display()))
}

/// Reads a little-endian `.npy` file as a pomme tensor.
pub fn read_npy(path: &Path) -> Tensor {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => panic!("{}: unsupported npy dtype {other:?}", path.display()),
    };
    match descr.as_str() {
        "<f4" => Tensor::from_vec(shape, npy.into_vec::<f32>().unwrap()),
        "<f8" => Tensor::from_vec(shape, npy.into_vec::<f64>().unwrap()),
        "<i8" => Tensor::from_vec(shape, npy.into_vec::<i64>().unwrap()),
        "<i4" => Tensor::from_vec(shape, npy.into_vec::<i32>().unwrap()),
        "|u1" => Tensor::from_vec(shape, npy.into_vec::<u8>().unwrap()),
        "|b1" => Tensor::from_bools(shape, &npy.into_vec::<bool>().unwrap()),
        other => panic!("{}: unsupported npy dtype {other}", path.display()),
    }
    .unwrap()
}

/// Errors of one output against its reference.
#[derive(Debug, Default, Clone, Copy)]
pub struct Diff {
    pub max_abs: f64,
    /// Max |got - want| / |want| over elements with |want| >= 1e-3.
    pub max_rel: f64,
}

/// Compares `got` with `want`: float32 within rtol 1e-3 / atol 1e-4 (as
/// numpy.allclose), everything else exactly. Panics naming the first mismatch.
pub fn compare(what: &str, got: &Tensor, want: &Tensor) -> Diff {
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let g = got.to_f64_vec().unwrap();
    let w = want.to_f64_vec().unwrap();
    let mut diff = Diff::default();
    for (i, (&g, &w)) in g.iter().zip(&w).enumerate() {
        let abs = (g - w).abs();
        if want.dtype().is_float() {
            assert!(
                abs <= 1e-4 + 1e-3 * w.abs(),
                "{what}: element {i} is {g}, expected {w} (|diff| {abs:e})"
            );
        } else {
            assert_eq!(g, w, "{what}: element {i}");
        }
        diff.max_abs = diff.max_abs.max(abs);
        if w.abs() >= 1e-3 {
            diff.max_rel = diff.max_rel.max(abs / w.abs());
        }
    }
    diff
}

/// Feeds `reference/<model>/input.<name>.npy` and compares each output with
/// `reference/<model>/output.<name>.npy`; returns the worst float diff.
pub fn check_reference(model: &dyn LoadedModel, reference: &Path, label: &str) -> Diff {
    let sig = model.signature();
    let inputs: Vec<Tensor> = sig
        .inputs
        .iter()
        .map(|s| read_npy(&reference.join(format!("input.{}.npy", s.name))))
        .collect();
    let outputs = model.session().unwrap().run(inputs).unwrap();
    let mut worst = Diff::default();
    for (spec, got) in sig.outputs.iter().zip(&outputs) {
        let want = read_npy(&reference.join(format!("output.{}.npy", spec.name)));
        let d = compare(&format!("{label}/{}", spec.name), got, &want);
        eprintln!(
            "{label}/{}: max abs err {:.3e}, max rel err {:.3e}",
            spec.name, d.max_abs, d.max_rel
        );
        worst.max_abs = worst.max_abs.max(d.max_abs);
        worst.max_rel = worst.max_rel.max(d.max_rel);
    }
    worst
}
