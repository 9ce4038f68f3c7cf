//! Shared helpers: the backend (or a visible skip), the fixture models, and a
//! tiny ONNX writer for identity models of any element type.
#![expect(
    clippy::disallowed_methods,
    reason = "tests find their models through POMME_TEST_MODELS"
)]
#![allow(dead_code)]

use pomme_core::{Backend, ModelArtifact, ModelFormat};
use pomme_ort::OrtBackend;
use std::path::{Path, PathBuf};

/// The backend when the library can be loaded; prints a SKIP line otherwise.
/// The library is `pomme_test_support::ort_dylib` (`ORT_DYLIB_PATH`, else the
/// workspace's `.venv`).
pub fn backend(test: &str) -> Option<OrtBackend> {
    let b = match pomme_test_support::ort_dylib() {
        Some(lib) => OrtBackend::with_dylib(lib),
        None => OrtBackend::new(),
    };
    match b.availability() {
        pomme_core::Availability::Available => Some(b),
        pomme_core::Availability::Unavailable(reason) if b.dylib_path().is_some() => {
            panic!("{test}: an onnxruntime library was found but does not load: {reason}")
        }
        pomme_core::Availability::Unavailable(reason) => {
            eprintln!("SKIP {test}: onnxruntime library not found ({reason})");
            None
        }
    }
}

/// The shared fixture folder (`POMME_TEST_MODELS`, default `<workspace>/../shared/models`).
pub fn models_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("POMME_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"));
    if dir.join("reference").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {test}: no fixture models at {} (set POMME_TEST_MODELS)",
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

/// A fresh scratch directory under the target dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pomme-ort-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// --- a minimal protobuf writer, enough for ModelProto ---------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint((field as u64) << 3, out);
    varint(v, out);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(((field as u64) << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// One dimension of a value's declared shape.
pub enum D {
    Fixed(u64),
    Sym(&'static str),
    Anon,
}

fn value_info(name: &str, elem_type: u64, dims: &[D]) -> Vec<u8> {
    let mut shape = Vec::new();
    for d in dims {
        let mut dim = Vec::new();
        match d {
            D::Fixed(n) => field_varint(1, *n, &mut dim),
            D::Sym(s) => field_bytes(2, s.as_bytes(), &mut dim),
            D::Anon => {}
        }
        field_bytes(1, &dim, &mut shape);
    }
    let mut tensor = Vec::new();
    field_varint(1, elem_type, &mut tensor);
    field_bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    field_bytes(1, &tensor, &mut ty);
    let mut vi = Vec::new();
    field_bytes(1, name.as_bytes(), &mut vi);
    field_bytes(2, &ty, &mut vi);
    vi
}

/// An ONNX model (IR 8, opset 17) with `y = Identity(x)` of one element type
/// (ONNX `TensorProto.DataType` number) and the given declared shape.
pub fn identity_model(elem_type: u64, dims: &[D]) -> Vec<u8> {
    let mut node = Vec::new();
    field_bytes(1, b"x", &mut node);
    field_bytes(2, b"y", &mut node);
    field_bytes(4, b"Identity", &mut node);
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    field_bytes(2, b"identity_graph", &mut graph);
    field_bytes(11, &value_info("x", elem_type, dims), &mut graph);
    field_bytes(12, &value_info("y", elem_type, dims), &mut graph);
    let mut opset = Vec::new();
    field_bytes(1, b"", &mut opset);
    field_varint(2, 17, &mut opset);
    let mut model = Vec::new();
    field_varint(1, 8, &mut model);
    field_bytes(2, b"pomme-tests", &mut model);
    field_bytes(7, &graph, &mut model);
    field_bytes(8, &opset, &mut model);
    model
}
