//! Shared helpers: where the models are, which engines exist.
#![expect(
    clippy::disallowed_methods,
    reason = "tests find their models through POMME_TEST_MODELS"
)]
#![allow(dead_code)]

use pomme_core::Backend;
use pomme_quant::{QuantizeOptions, QuantizeOutcome, Scheme};
use std::path::{Path, PathBuf};

/// `POMME_TEST_MODELS`, default `<workspace>/../shared/models`; `None` (with a
/// visible SKIP line) when absent.
pub fn models(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("POMME_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models"));
    if dir.join("digits_mlp.onnx").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIP {test}: models not found at {} (set POMME_TEST_MODELS)",
            dir.display()
        );
        None
    }
}

/// tract always; ONNX Runtime when its library is found.
pub fn backends() -> Vec<Box<dyn Backend>> {
    let mut v: Vec<Box<dyn Backend>> = vec![Box::new(pomme_tract::TractBackend::new())];
    let ort = match pomme_test_support::ort_dylib() {
        Some(lib) => pomme_ort::OrtBackend::with_dylib(lib),
        None => pomme_ort::OrtBackend::new(),
    };
    match ort.availability() {
        pomme_core::Availability::Available => v.push(Box::new(ort)),
        pomme_core::Availability::Unavailable(why) => {
            eprintln!("SKIP ort validation: {why}")
        }
    }
    v
}

/// ONNX Runtime alone (speed files are gated on the engine they are made
/// for); `None` after a SKIP line for `test` when it is absent.
pub fn ort_only(test: &str) -> Option<Vec<Box<dyn Backend>>> {
    let ort: Vec<_> = backends()
        .into_iter()
        .filter(|b| b.name() == "ort")
        .collect();
    if ort.is_empty() {
        eprintln!("SKIP {test}: ONNX Runtime absent");
        return None;
    }
    Some(ort)
}

pub fn refs(b: &[Box<dyn Backend>]) -> Vec<&dyn Backend> {
    b.iter().map(|b| b.as_ref()).collect()
}

/// Quantizes `model` with `options`, validating on digits_test.npz, and prints
/// the summary and the table.
pub fn quantize_digits(
    dir: &Path,
    model: &str,
    mut options: QuantizeOptions,
    out_dir: &Path,
) -> pomme_quant::Result<QuantizeOutcome> {
    let b = backends();
    options.validate = Some(dir.join("digits_test.npz"));
    let out = out_dir.join(format!("{model}.{}.onnx", options.scheme.name()));
    let r = pomme_quant::quantize_file(
        &dir.join(format!("{model}.onnx")),
        &out,
        &options,
        &refs(&b),
        &pomme_quant::silent,
    );
    if let Ok(o) = &r {
        eprintln!("{}\n{}", o.summary, o.validation.as_ref().unwrap());
    }
    r
}

pub fn scheme_int8(per_channel: bool) -> Scheme {
    Scheme::Int8 { per_channel }
}

/// An `.npz` of int64 `.npy` files, under the given array names.
pub fn write_npz(out: &Path, arrays: &[(&str, &Path)]) {
    let arrays: Vec<(&str, Vec<u64>, Vec<i64>)> = arrays
        .iter()
        .map(|(name, npy)| {
            let t = pomme_quant::Dataset::read_npy_file(npy).unwrap();
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            (*name, shape, t.to_vec().unwrap())
        })
        .collect();
    write_npz_i64(out, &arrays);
}

/// An `.npz` of int64 arrays `(name, shape, values)`.
pub fn write_npz_i64(out: &Path, arrays: &[(&str, Vec<u64>, Vec<i64>)]) {
    use npyz::WriterBuilder;
    let mut w = npyz::npz::NpzWriter::create(out).unwrap();
    for (name, shape, v) in arrays {
        let mut a = w
            .array::<i64>(name, Default::default())
            .unwrap()
            .default_dtype()
            .shape(shape)
            .begin_nd()
            .unwrap();
        a.extend(v.iter().copied()).unwrap();
        a.finish().unwrap();
    }
}
