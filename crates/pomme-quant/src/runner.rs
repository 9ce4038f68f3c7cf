//! Running a model (a file, or bytes written to a temporary file) through a
//! [`Backend`] over batches and gathering whole outputs.
//!
//! Backends load from paths (`ModelArtifact`), so in-memory variants
//! (calibration models with extra outputs, sensitivity candidates) are written
//! to a private temporary directory first.

use pomme_core::{
    Backend, Error, LoadOptions, LoadedModel, ModelArtifact, ModelFormat, ModelSignature, Result,
    Tensor,
};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Loads an ONNX file on the CPU at f32 (the quantization is in the file).
pub fn load(backend: &dyn Backend, path: &Path) -> Result<Arc<dyn LoadedModel>> {
    let artifact = ModelArtifact {
        path: path.to_path_buf(),
        format: ModelFormat::Onnx,
    };
    backend.load(&artifact, &LoadOptions::default())
}

/// Loads model bytes through a temporary file that lives as long as the call.
pub fn load_bytes(backend: &dyn Backend, bytes: &[u8]) -> Result<Arc<dyn LoadedModel>> {
    let dir = tempfile::tempdir()
        .map_err(|e| Error::Internal(format!("cannot create a temporary directory: {e}")))?;
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes)
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
    // Engines read the file during load; it may go once loading is done.
    load(backend, &path)
}

/// Runs every batch; returns each output concatenated over rows (signature
/// order) and the time spent in `run` calls.
pub fn run_batches(
    model: &dyn LoadedModel,
    batches: &[Vec<Tensor>],
    mut each: impl FnMut(usize),
) -> Result<(Vec<Tensor>, Duration)> {
    let mut session = model.session()?;
    let sig = model.signature();
    let mut parts: Vec<Vec<Tensor>> = vec![Vec::new(); sig.outputs.len()];
    let mut spent = Duration::ZERO;
    for (i, b) in batches.iter().enumerate() {
        check_inputs(sig, b)?;
        let t0 = Instant::now();
        let outs = session.run(b.clone())?;
        spent += t0.elapsed();
        if outs.len() != parts.len() {
            return Err(Error::Internal(format!(
                "{} returned {} outputs, its signature declares {}",
                model.backend(),
                outs.len(),
                parts.len()
            )));
        }
        for (p, o) in parts.iter_mut().zip(outs) {
            p.push(o);
        }
        each(i + 1);
    }
    let outputs = parts
        .iter()
        .map(|p| {
            let refs: Vec<&Tensor> = p.iter().collect();
            Tensor::concat_rows(&refs)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((outputs, spent))
}

/// Runs every batch once more, only timing it.
pub fn time_batches(model: &dyn LoadedModel, batches: &[Vec<Tensor>]) -> Result<Duration> {
    let mut session = model.session()?;
    let mut spent = Duration::ZERO;
    for b in batches {
        let t0 = Instant::now();
        session.run(b.clone())?;
        spent += t0.elapsed();
    }
    Ok(spent)
}

fn check_inputs(sig: &ModelSignature, inputs: &[Tensor]) -> Result<()> {
    if sig.inputs.len() != inputs.len() {
        return Err(Error::invalid_input(format!(
            "the model takes {} inputs, {} given",
            sig.inputs.len(),
            inputs.len()
        )));
    }
    for (s, t) in sig.inputs.iter().zip(inputs) {
        s.check(t)?;
    }
    Ok(())
}
