//! Locating and reading test fixtures.
//!
//! Big models live outside the repository; `POMME_TEST_MODELS` points at them
//! (default: `../shared/models` next to the workspace). Tests that need them
//! call [`models_dir`] and skip, saying so, when it returns `None`. Test code
//! reads the environment here so that the libraries under test need not.
#![expect(
    clippy::disallowed_methods,
    reason = "tests find their models and ONNX Runtime through POMME_TEST_MODELS and ORT_DYLIB_PATH"
)]

use pomme_core::{DType, Tensor};
use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root exists")
}

/// Tiny fixtures shipped in the repository (`models/`).
pub fn repo_models() -> PathBuf {
    workspace_root().join("models")
}

/// The shared model directory, or `None` (after printing a SKIP line) when absent.
pub fn models_dir(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("POMME_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/models"));
    if dir.join("MODELS.md").is_file() || dir.join("identity_f32.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {test}: shared models not found at {} (set POMME_TEST_MODELS)",
            dir.display()
        );
        None
    }
}

/// The onnxruntime library tests use (the backends read no environment, so
/// tests pass it in): `ORT_DYLIB_PATH` when set, else the library
/// `pip install onnxruntime` put in the workspace's `.venv`, else `None`.
pub fn ort_dylib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let lib = workspace_root().join(".venv/lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .flat_map(|py| {
            let capi = py.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).into_iter().flatten().flatten()
        })
        .map(|f| f.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("libonnxruntime.so")
                || (name.starts_with("libonnxruntime.") && name.ends_with(".dylib"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The Python interpreter tests run Core AI with: `POMME_COREAI_PYTHON` when
/// set, else the workspace's `.venv` (where `scripts/setup.sh` installs
/// `coreai-core`), when it can import `coreai.runtime`. `None` prints a SKIP
/// line, or panics under `POMME_REQUIRE_COREAI=1` (CI), so the Core AI
/// tests cannot pass by skipping there.
pub fn coreai_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("POMME_COREAI_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import coreai.runtime"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    let why = format!(
        "no Core AI runtime: {} cannot import coreai.runtime (pip install coreai-core, or set POMME_COREAI_PYTHON)",
        python.display()
    );
    if std::env::var_os("POMME_REQUIRE_COREAI").is_some_and(|v| v == "1") {
        panic!("{test}: {why}; POMME_REQUIRE_COREAI=1 forbids skipping");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// Reads a `.npy` file of f32, f64, i32, i64, u8 or bool into a tensor.
pub fn read_npy(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let npy = npyz::NpyFile::new(&bytes[..]).expect("valid npy");
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    match descr.as_str() {
        "<f4" => Tensor::from_vec(shape, npy.into_vec::<f32>().unwrap()).unwrap(),
        "<f8" => Tensor::from_vec(shape, npy.into_vec::<f64>().unwrap()).unwrap(),
        "<i4" => Tensor::from_vec(shape, npy.into_vec::<i32>().unwrap()).unwrap(),
        "<i8" => Tensor::from_vec(shape, npy.into_vec::<i64>().unwrap()).unwrap(),
        "|u1" => Tensor::from_vec(shape, npy.into_vec::<u8>().unwrap()).unwrap(),
        "|b1" => {
            let v: Vec<bool> = npy.into_vec::<bool>().unwrap();
            Tensor::from_bools(shape, &v).unwrap()
        }
        other => panic!("{}: unsupported npy dtype {other}", path.display()),
    }
}

/// Largest relative error of `got` against `want`, after checking both agree
/// within `rtol`/`atol` everywhere (panics naming the first bad element).
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> f64 {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    if matches!(
        want.dtype(),
        DType::I64 | DType::I32 | DType::Bool | DType::U8
    ) {
        assert_eq!(
            got.to_f64_vec().unwrap(),
            want.to_f64_vec().unwrap(),
            "{name}: integer outputs differ"
        );
        return 0.0;
    }
    let (g, w) = (got.to_f64_vec().unwrap(), want.to_f64_vec().unwrap());
    let mut worst: f64 = 0.0;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= atol + rtol * b.abs(),
            "{name}[{i}]: got {a}, want {b}"
        );
        if b.abs() > 1e-6 {
            worst = worst.max(err / b.abs());
        }
    }
    worst
}
