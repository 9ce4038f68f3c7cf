//! Serving quantized models transparently: when a model config asks for
//! `precision = "int8"` (or `int4`), the runtime calls [`quantize_cached`],
//! which quantizes once into a content-addressed cache and afterwards returns
//! the cached file at the cost of hashing the model.
//!
//! The key is the SHA-256 of the model bytes, of the options (scheme and its
//! parameters, exclusions, thresholds) and, for files the options name
//! (calibration / validation data), of their contents — so a retrained model,
//! other data or other settings never reuse a stale file. Files are written
//! atomically, so concurrent callers at worst both do the work.

use crate::error::Result;
use crate::progress::ProgressEvent;
use crate::scheme::QuantizeOptions;
use pomme_core::{Backend, Error};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn read(path: &Path) -> Result<Vec<u8>> {
    Ok(std::fs::read(path)
        .map_err(|e| Error::InvalidModelFormat(format!("cannot read {}: {e}", path.display())))?)
}

/// The cache key (hex SHA-256) of a model file under `options`.
pub fn cache_key(model_path: &Path, options: &QuantizeOptions) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"pomme-quant v1\0");
    h.update(read(model_path)?);
    h.update(b"\0");
    // Paths do not matter, contents do.
    let mut o = options.clone();
    for p in [o.calibration.take(), o.validate.take()]
        .into_iter()
        .flatten()
    {
        h.update(Sha256::digest(read(&p)?));
    }
    h.update(serde_json::to_vec(&o).expect("options serialize"));
    Ok(format!("{:x}", h.finalize()))
}

/// Where the model quantized under `options` with cache key `key` lives in
/// `cache_dir`: `<stem>.<scheme>.<key16>.onnx`.
pub fn cached_path(
    model_path: &Path,
    options: &QuantizeOptions,
    key: &str,
    cache_dir: &Path,
) -> PathBuf {
    let stem = model_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    cache_dir.join(format!(
        "{stem}.{}.{}.onnx",
        options.scheme.name(),
        &key[..16]
    ))
}

/// Returns the path of `model_path` quantized with `options`, quantizing into
/// `cache_dir` on first use (`<stem>.<scheme>.<key16>.onnx`). `backends` are
/// needed only for `int8-static` calibration and validation options.
pub fn quantize_cached(
    model_path: &Path,
    options: &QuantizeOptions,
    cache_dir: &Path,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<PathBuf> {
    let key = cache_key(model_path, options)?;
    let out = cached_path(model_path, options, &key, cache_dir);
    if out.is_file() {
        return Ok(out);
    }
    crate::quantize_file(model_path, &out, options, backends, progress)?;
    Ok(out)
}
