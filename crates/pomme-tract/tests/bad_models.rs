//! Every bad input gets a one-line error of the right kind that names the
//! problem; none panics. Fixtures come from `scripts/make_bad_models.py`.

mod common;

use common::*;
use pomme_core::{Backend, Error, ModelArtifact, ModelFormat};
use pomme_tract::TractBackend;
use std::path::PathBuf;

fn bad(name: &str) -> PathBuf {
    repo_models().join("bad").join(name)
}

/// Loads and inspects `artifact`; both must fail alike. Returns the load error.
fn fails(artifact: &ModelArtifact) -> Error {
    let backend = TractBackend::new();
    let e = match backend.load(artifact, &Default::default()) {
        Err(e) => e,
        Ok(_) => panic!("{} loaded", artifact.path.display()),
    };
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    eprintln!("{}: {msg}", artifact.path.display());
    let i = backend.inspect(artifact).unwrap_err();
    assert_eq!(i.kind(), e.kind(), "inspect: {i}");
    e
}

fn invalid(artifact: &ModelArtifact, needle: &str) {
    match fails(artifact) {
        Error::InvalidModelFormat(m) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected InvalidModelFormat, got {other}"),
    }
}

#[test]
fn missing_path() {
    invalid(&onnx(bad("no_such_model.onnx")), "does not exist");
    let nnef = ModelArtifact {
        path: bad("no_such_model.nnef.tgz"),
        format: ModelFormat::Nnef,
    };
    invalid(&nnef, "does not exist");
    let e = TractBackend::artifact_for_path(bad("no_such_model.bin")).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn directory_given_for_onnx() {
    invalid(&onnx(repo_models()), "is a directory");
}

#[test]
fn directory_without_graph_nnef() {
    let dir = ModelArtifact {
        path: repo_models().join("bad"),
        format: ModelFormat::Nnef,
    };
    invalid(&dir, "without graph.nnef");
}

#[test]
fn empty_file() {
    invalid(&onnx(bad("empty.onnx")), "empty (0 bytes)");
}

#[test]
fn truncated_protobuf() {
    invalid(&onnx(bad("truncated.onnx")), "truncated or corrupt");
}

#[test]
fn random_bytes() {
    let e = fails(&onnx(bad("random.onnx")));
    assert!(matches!(e, Error::InvalidModelFormat(_)), "{e}");
    let nnef = ModelArtifact {
        path: bad("random.onnx"),
        format: ModelFormat::Nnef,
    };
    invalid(&nnef, "could not read NNEF");
}

#[test]
fn unknown_format() {
    let e = TractBackend::artifact_for_path(repo_models().join("reference/add_one/input.x.npy"))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidModelFormat(_)), "{e}");
    let coreml = ModelArtifact {
        path: repo_models().join("add_one.onnx"),
        format: ModelFormat::CoreMl,
    };
    invalid(&coreml, "not coreml");
}

#[test]
fn unsupported_operators_are_listed_by_name() {
    match fails(&onnx(bad("unsupported_op.onnx"))) {
        Error::CompilationFailed(m) => {
            assert!(m.contains("PommeFrobnicate"), "{m}");
            assert!(m.contains("PommeTwiddle"), "{m}");
            assert!(!m.contains("Relu"), "{m}");
        }
        other => panic!("expected CompilationFailed, got {other}"),
    }
}

#[test]
fn input_without_shape() {
    invalid(
        &onnx(bad("no_input_shape.onnx")),
        "input 'x' declares no shape",
    );
}
