//! Serving quantized models transparently.
//!
//! A model config that asks for `precision = "int8"` (or `"int4"`) gets, at
//! load, [`prepare_served`]: the float file is quantized once into a
//! content-addressed cache directory, the quantized model is validated against
//! the float one on the model's calibration / validation data (or, when the
//! config names none, on deterministic synthetic warm-up inputs built from the
//! signature), and the load is refused — with the measured figures in the
//! error — when the accuracy budget is exceeded. Sensitive layers are kept in
//! float automatically when that brings the model within budget.
//!
//! The validation report is stored beside the cached model
//! (`<model>.report.json`), so a restart reuses both and still knows the
//! figures. The cache key covers the model bytes, every option (scheme,
//! budget, exclusions) and the contents of the data files, so nothing stale is
//! ever served.
//!
//! Synthetic warm-up data is a weak proxy (random inputs say nothing about
//! accuracy on real data; they do catch a quantization that changes the
//! model's decisions); configs should name real validation data.

use crate::data::Dataset;
use crate::progress::silent;
use crate::scheme::{QuantizeOptions, Scheme, Target};
use crate::validate::ValidationReport;
use pomme_core::{
    Backend, Error, Fill, LoadOptions, ModelArtifact, ModelFormat, ModelSignature, Precision,
    Result, synthetic_inputs,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Default accuracy budget in points (percentage points of accuracy with
/// labels, else of top-1 disagreement).
pub const DEFAULT_MAX_ACCURACY_DROP: f64 = 1.0;
/// Default number of synthetic warm-up rows.
pub const DEFAULT_WARMUP_SAMPLES: usize = 64;

/// What a model config says about serving it quantized.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeQuantization {
    /// `Int8` or `Int4`; float precisions need no quantization.
    pub precision: Precision,
    /// A scheme overriding the precision's default (per-channel INT8 weights,
    /// INT4 blocks of 32), e.g. `int8-static` or another block size.
    pub scheme: Option<Scheme>,
    /// Without `scheme`: `speed` picks the integer-kernel scheme for the engine
    /// (see [`Scheme::for_target`]), `size` (the default) the weight-only one.
    pub target: Target,
    /// Calibration data (`.npz`), needed by `int8-static`.
    pub calibration: Option<PathBuf>,
    /// Validation data (`.npz`); defaults to the calibration data, then to
    /// synthetic warm-up inputs.
    pub validation: Option<PathBuf>,
    /// Label array in the validation data (default: `y`/`label`/`labels`).
    pub labels: Option<String>,
    /// The budget; over it the model is refused.
    pub max_accuracy_drop: f64,
    /// Also refuse when the worst cosine of the compared output is below this.
    /// With it, `max_accuracy_drop` applies only when `labels` is named (the
    /// top-1 of an embedding means nothing).
    pub min_cosine: Option<f64>,
    /// SmoothQuant before the integer-kernel INT8 schemes.
    pub smooth: crate::smooth::Smooth,
    /// Rows of synthetic warm-up data when no data file is named.
    pub warmup_samples: usize,
    /// Where quantized models and their reports are cached.
    pub cache_dir: PathBuf,
}

impl ServeQuantization {
    /// Defaults for `precision`, caching into `cache_dir`.
    pub fn new(precision: Precision, cache_dir: impl Into<PathBuf>) -> ServeQuantization {
        ServeQuantization {
            precision,
            scheme: None,
            target: Target::Size,
            calibration: None,
            validation: None,
            labels: None,
            max_accuracy_drop: DEFAULT_MAX_ACCURACY_DROP,
            min_cosine: None,
            smooth: crate::smooth::Smooth::Default,
            warmup_samples: DEFAULT_WARMUP_SAMPLES,
            cache_dir: cache_dir.into(),
        }
    }
}

/// A quantized model ready to serve.
#[derive(Clone, Debug)]
pub struct Served {
    /// The quantized ONNX file (in the cache).
    pub path: PathBuf,
    /// The validation that admitted it.
    pub report: ValidationReport,
    /// Whether it came from the cache (no quantization ran).
    pub cached: bool,
    /// What it was validated on, in words.
    pub data: String,
    /// Admitted by cosine alone (an embedding model without labels): its
    /// top-1 figure means nothing and is left out of the summary.
    pub by_cosine: bool,
}

impl Served {
    /// A one-line summary of the figures, for logs and metadata.
    pub fn summary(&self) -> String {
        let worst = self
            .report
            .backends
            .iter()
            .filter_map(|b| b.budget_figure().map(|f| (f, b)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let figure = match worst {
            _ if self.by_cosine => "gated by cosine".to_string(),
            Some((f, b)) if b.accuracy_drop.is_some() => {
                format!("accuracy drop {f:.2} points on {}", b.backend)
            }
            Some((f, b)) => format!("top-1 disagreement {f:.2}% on {}", b.backend),
            None => "no comparable output".into(),
        };
        let cosine = self
            .report
            .worst_cosine()
            .map(|(c, _)| format!(", worst cosine of '{}' {c:.5}", self.report.compared_output))
            .unwrap_or_default();
        format!(
            "{figure}{cosine}, size {:.3}x, validated on {}",
            self.report.size_ratio, self.data
        )
    }
}

/// Quantizes (or finds in the cache), validates and admits `model` for
/// serving at `q.precision`. Over budget → `UnsupportedPrecision` whose message
/// carries the figures; nothing is cached then.
pub fn prepare_served(
    model: &Path,
    q: &ServeQuantization,
    backends: &[&dyn Backend],
) -> Result<Served> {
    let scheme = match (&q.scheme, Scheme::for_precision(q.precision)) {
        (Some(s), _) => s.clone(),
        (None, Some(_)) if q.target == Target::Speed => {
            let (m, _) = crate::onnx::load_model(model)?;
            let profile = crate::rewrite::profile(&m);
            Scheme::for_target(
                q.precision,
                q.target,
                crate::default_engine(backends),
                &profile,
                q.calibration.is_some(),
            )
            .map(|(s, _)| s)
            .expect("int8 and int4 have schemes")
        }
        (None, Some(s)) => s,
        (None, None) => {
            return Err(Error::UnsupportedPrecision(format!(
                "precision {} is served as stored, not quantized",
                q.precision
            )));
        }
    };
    if q.max_accuracy_drop.is_nan() || q.max_accuracy_drop < 0.0 {
        return Err(Error::invalid_input(format!(
            "max_accuracy_drop must be a number ≥ 0, got {}",
            q.max_accuracy_drop
        )));
    }
    let mut options = QuantizeOptions::new(scheme);
    options.calibration = q.calibration.clone();
    options.validate = q.validation.clone().or_else(|| q.calibration.clone());
    options.labels = q.labels.clone();
    // An embedding model (gated by cosine) has no classes: the top-1 of its
    // vector is noise, so the accuracy budget applies only with labels.
    let by_cosine = q.min_cosine.is_some() && q.labels.is_none();
    options.max_accuracy_drop = (!by_cosine).then_some(q.max_accuracy_drop);
    options.min_cosine = q.min_cosine;
    // An explicit scheme is not picked by the target.
    let target = q.scheme.is_none().then_some(q.target);
    options.smooth = q.smooth.resolve(target, &options.scheme);
    options.auto_exclude = true;
    // Latency is not what admission decides on; one timed pass keeps loads short.
    options.latency_repeats = 1;

    let synthetic = options.validate.is_none();
    let data_words = match &options.validate {
        Some(p) => p.display().to_string(),
        None => format!("{} synthetic warm-up rows", q.warmup_samples.max(1)),
    };
    let mut h = Sha256::new();
    h.update(crate::cache::cache_key(model, &options)?.as_bytes());
    if synthetic {
        h.update(format!("synthetic-warmup v1 {}", q.warmup_samples.max(1)).as_bytes());
    }
    let key = format!("{:x}", h.finalize());
    let out = crate::cache::cached_path(model, &options, &key, &q.cache_dir);
    let report_path = out.with_extension("report.json");

    if out.is_file()
        && let Some(report) = std::fs::read(&report_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ValidationReport>(&b).ok())
    {
        return Ok(Served {
            path: out,
            report,
            cached: true,
            data: data_words,
            by_cosine,
        });
    }

    std::fs::create_dir_all(&q.cache_dir).map_err(|e| {
        Error::Internal(format!(
            "cannot create the quantization cache {}: {e}",
            q.cache_dir.display()
        ))
    })?;
    let vdata = match &options.validate {
        Some(p) => Dataset::from_npz(p)?,
        None => synthetic_data(model, backends, q.warmup_samples.max(1))?,
    };
    let outcome =
        crate::quantize_file_with_data(model, &out, &options, Some(vdata), backends, &silent)
            .map_err(|e| {
                let e: Error = e.into();
                e.with_message(format!(
                    "precision {} refused: {}",
                    q.precision,
                    e.message()
                ))
            })?;
    let report = outcome.validation.ok_or_else(|| {
        Error::Internal("quantization finished without the validation it was asked for".into())
    })?;
    write_atomic(&report_path, report.to_json().as_bytes())?;
    Ok(Served {
        path: out,
        report,
        cached: false,
        data: data_words,
        by_cosine,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}

/// Deterministic warm-up inputs for every model input: `rows` rows, other
/// symbolic dimensions 16; floats N(0,1), integers and booleans 0/1 (valid as
/// token ids, masks and indices alike).
fn synthetic_data(model: &Path, backends: &[&dyn Backend], rows: usize) -> Result<Dataset> {
    let backend = backends
        .iter()
        .find(|b| b.availability().is_available())
        .ok_or_else(|| Error::Unavailable("no engine available to read the model".into()))?;
    let artifact = ModelArtifact {
        path: model.to_path_buf(),
        format: ModelFormat::Onnx,
    };
    let loaded = backend.load(&artifact, &LoadOptions::default())?;
    synthetic_for(loaded.signature(), rows)
}

fn synthetic_for(sig: &ModelSignature, rows: usize) -> Result<Dataset> {
    // Refused like any other quantized load that cannot be validated, with the fix.
    let arrays = synthetic_inputs(sig, rows, 16, Fill::Normal(0x706f_6d6d_6521)).map_err(|e| {
        Error::UnsupportedPrecision(format!(
            "{}; name validation data in the model config",
            e.message()
        ))
    })?;
    Ok(Dataset::from_arrays(arrays))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::{DType, Dim, Shape, TensorSpec};

    #[test]
    fn synthetic_rows_follow_the_signature() {
        let sig = ModelSignature {
            inputs: vec![
                TensorSpec::new(
                    "ids",
                    DType::I64,
                    Shape(vec![
                        Dim::Symbolic("batch".into()),
                        Dim::Symbolic("seq".into()),
                    ]),
                ),
                TensorSpec::new(
                    "x",
                    DType::F32,
                    Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(3)]),
                ),
            ],
            outputs: vec![],
        };
        let d = synthetic_for(&sig, 5).unwrap();
        assert_eq!(d.get("ids").unwrap().shape(), &[5, 16]);
        assert_eq!(d.get("x").unwrap().shape(), &[5, 3]);
        let ids = d.get("ids").unwrap().to_vec::<i64>().unwrap();
        assert!(ids.iter().all(|&v| v == 0 || v == 1));
        assert!(ids.contains(&0) && ids.contains(&1));
        // Deterministic: the cache key assumes the same data every time.
        let again = synthetic_for(&sig, 5).unwrap();
        assert_eq!(
            again.get("x").unwrap().to_vec::<f32>().unwrap(),
            d.get("x").unwrap().to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn float_precision_is_not_quantized() {
        let q = ServeQuantization::new(Precision::F32, "/nonexistent");
        let e = prepare_served(Path::new("m.onnx"), &q, &[]).unwrap_err();
        assert!(e.to_string().contains("served as stored"), "{e}");
    }
}
