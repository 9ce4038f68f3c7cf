//! pomme's ONNX quantizer: INT8 weight-only, INT8 static (QDQ) and INT4
//! blockwise weight-only, with the accuracy measured rather than hoped for.
//!
//! The output is a plain ONNX file that both tract and ONNX Runtime run (see
//! [`rewrite`] for the exact formats and why INT4 is not opset-21 INT4).
//! The entry points, all usable from a thin CLI:
//!
//! * [`quantize_file`]: model in, quantized model out (written atomically, and
//!   only once everything — calibration, validation, the accuracy budget —
//!   succeeded), with a [`QuantSummary`] and an optional [`ValidationReport`].
//! * [`validate()`]: compares any float / quantized pair on data, per engine.
//! * [`quantize_cached`]: what the runtime calls when a model config asks for
//!   `precision = "int8"`: quantizes once into a content-addressed cache.
//! * [`prepare_served`]: the whole served-transparently step (quantize into
//!   the cache, validate against the float model, enforce the budget).
//! * [`quantize_model`]: the in-memory core, for callers that hold a proto.
//!
//! Engines are passed in as `&dyn pomme_core::Backend` (the first available
//! one runs calibration and the sensitivity search; all of them validate), and
//! progress goes to a `&dyn Fn(&ProgressEvent)`.
#![forbid(unsafe_code)]

pub mod cache;
pub mod calibrate;
pub mod data;
pub mod error;
pub mod fp16;
pub mod onnx;
pub mod progress;
pub mod rewrite;
mod runner;
pub mod scheme;
pub mod sensitivity;
pub mod serve;
pub mod smooth;
pub mod validate;
pub mod weights;

pub use cache::{cache_key, quantize_cached};
pub use data::Dataset;
pub use error::{QuantError, Result};
pub use progress::{ProgressEvent, Stage, silent};
pub use rewrite::{ActivationParams, KeptFloat, Layer, QuantizedWeight};
pub use scheme::{CalibrationMethod, Engine, Profile, QuantizeOptions, Scheme, Target};
pub use sensitivity::LayerSensitivity;
pub use serve::{ServeQuantization, Served, prepare_served};
pub use smooth::Smooth;
pub use validate::{BackendReport, OutputMetrics, ValidateOptions, ValidationReport, validate};

use onnx::pb;
use pomme_core::{Backend, Error};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Which engines run each output format, as verified by this crate's tests.
pub const ENGINE_SUPPORT: &str = "int8 and int8-static (QDQ, opset >= 13) and int4 (uint8-packed, unpacked with standard opset-13 ops) run on tract 0.23 and ONNX Runtime 1.31; ONNX opset-21 INT4 DequantizeLinear(block_size) is not produced because tract 0.23 rejects blocked DequantizeLinear";

/// Where each scheme's files run, and on which kernels (verified by this
/// crate's tests and `benches/quant_vs_ort.py`).
pub fn engine_support(scheme: &Scheme) -> &'static str {
    match scheme {
        Scheme::Int8 { .. } | Scheme::Int4 { .. } => {
            "weight-only: tract 0.23 and ONNX Runtime 1.31 run it; weights are dequantized to float (ORT at run time), so it is smaller, not faster"
        }
        Scheme::Int8Static { .. } => {
            "QDQ: ONNX Runtime fuses it into QLinearConv / QGemm / QLinearMatMul / QLinearAdd (integer kernels); tract 0.23 runs it, slower than float"
        }
        Scheme::Int8Dynamic { .. } => {
            "DynamicQuantizeLinear + MatMulInteger: ONNX Runtime fuses it into DynamicQuantizeMatMul / MatMulIntegerToFloat (integer kernels); tract 0.23 runs it, slower than float"
        }
        Scheme::Int4NBits { .. } => {
            "com.microsoft.MatMulNBits: ONNX Runtime's native int4 kernel; tract 0.23 runs it too, much slower than float"
        }
    }
}

/// What the quantizer did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QuantSummary {
    pub model: String,
    pub scheme: String,
    pub quantized: Vec<QuantizedWeight>,
    pub kept_float: Vec<KeptFloat>,
    pub activations: Vec<ActivationParams>,
    /// Weights the automatic search kept float.
    pub auto_excluded: Vec<String>,
    /// Per-layer figures from the automatic search (empty when not run).
    pub sensitivity: Vec<LayerSensitivity>,
    pub float_bytes: u64,
    pub quant_bytes: u64,
    pub size_ratio: f64,
    pub opset: i64,
    pub engines: String,
    pub notes: Vec<String>,
}

impl fmt::Display for QuantSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.model, self.scheme)?;
        writeln!(
            f,
            "size: {} -> {} bytes ({:.3}x), opset {}",
            self.float_bytes, self.quant_bytes, self.size_ratio, self.opset
        )?;
        for w in &self.quantized {
            writeln!(
                f,
                "  quantized {:<8} {} ({}, {} elements, rel. RMS error {:.4})",
                w.op_type, w.node, w.format, w.elements, w.relative_rms_error
            )?;
        }
        for k in &self.kept_float {
            writeln!(f, "  float     {:<8} {} ({})", k.op_type, k.node, k.reason)?;
        }
        for a in &self.activations {
            writeln!(
                f,
                "  activation {} range [{:.4}, {:.4}] scale {:.6} zero point {}",
                a.name, a.min, a.max, a.scale, a.zero_point
            )?;
        }
        for s in &self.sensitivity {
            writeln!(
                f,
                "  sensitivity {} ({}): {:.2} points alone, SNR {:.1} dB{}",
                s.node,
                s.weight,
                s.figure,
                s.snr_db,
                if self.auto_excluded.contains(&s.weight) {
                    " -> kept float"
                } else {
                    ""
                }
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        write!(f, "  engines: {}", self.engines)
    }
}

/// The result of [`quantize_file`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeOutcome {
    pub output: PathBuf,
    pub summary: QuantSummary,
    pub validation: Option<ValidationReport>,
}

/// The engine a speed-targeted file is made for: ONNX Runtime when it is among
/// the available `backends`, else tract.
pub fn default_engine(backends: &[&dyn Backend]) -> Engine {
    let ort = backends.iter().any(|b| {
        b.availability().is_available() && Engine::from_backend(b.name()) == Some(Engine::Ort)
    });
    if ort { Engine::Ort } else { Engine::Tract }
}

/// The available backend with the worst figures in `report` (lowest cosine
/// under a cosine gate, else highest budget figure).
fn worst_backend<'a>(
    report: &ValidationReport,
    backends: &[&'a dyn Backend],
    by_cosine: bool,
) -> Option<&'a dyn Backend> {
    let score = |b: &BackendReport| -> Option<f64> {
        if by_cosine {
            b.outputs
                .iter()
                .find(|o| o.name == report.compared_output)
                .map(|o| -o.cosine_min)
        } else {
            b.budget_figure()
        }
    };
    let worst = report
        .backends
        .iter()
        .filter_map(|b| score(b).map(|s| (s, b.backend.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0))?
        .1;
    backends
        .iter()
        .copied()
        .find(|b| b.name() == worst && b.availability().is_available())
}

/// The first backend that reports itself available.
fn first_available<'a>(backends: &[&'a dyn Backend]) -> Option<&'a dyn Backend> {
    backends
        .iter()
        .copied()
        .find(|b| b.availability().is_available())
}

/// Quantizes a model in memory (no validation, nothing written). The static
/// scheme reads `options.calibration` and runs it on the first available backend.
pub fn quantize_model(
    model: &pb::ModelProto,
    options: &QuantizeOptions,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<(pb::ModelProto, QuantSummary)> {
    let prepared = prepare(model, options, None, backends, progress)?;
    let all: Vec<&Layer> = prepared.layers.iter().collect();
    build(options, &prepared, &all, progress)
}

/// Layers found and calibration done, ready to build any subset.
struct Prepared {
    /// The model the layers were found in: the input, or the input smoothed
    /// (SmoothQuant), which computes the same function.
    model: pb::ModelProto,
    layers: Vec<Layer>,
    kept: Vec<KeptFloat>,
    ranges: Option<calibrate::Ranges>,
    notes: Vec<String>,
}

/// `data` is the fallback for SmoothQuant's statistics when no calibration
/// file is given (the validation data).
fn prepare(
    model: &pb::ModelProto,
    options: &QuantizeOptions,
    data: Option<&Dataset>,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<Prepared> {
    options.scheme.check()?;
    let mut notes = Vec::new();
    let smoothed = match options.smooth {
        Some(alpha)
            if matches!(
                options.scheme,
                Scheme::Int8Dynamic { .. } | Scheme::Int8Static { .. }
            ) =>
        {
            smooth_model(model, options, alpha, data, backends, &mut notes, progress)?
        }
        Some(_) => {
            notes.push(format!(
                "not smoothed: SmoothQuant is for int8-dynamic and int8-static, not {}",
                options.scheme.name()
            ));
            None
        }
        None => None,
    };
    let model = smoothed.unwrap_or_else(|| model.clone());
    let (layers, kept) = rewrite::find_layers(&model, options)?;
    if layers.is_empty() {
        let why = if kept.is_empty() {
            "no MatMul, Gemm, Conv or Gather reads a float initializer".to_string()
        } else {
            kept.iter()
                .map(|k| format!("{} {}: {}", k.op_type, k.node, k.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(Error::UnsupportedPrecision(format!(
            "the model has no quantizable weights for {} ({why})",
            options.scheme.name()
        ))
        .into());
    }
    let ranges = if options.scheme.is_static() {
        let Scheme::Int8Static { method, .. } = options.scheme else {
            unreachable!()
        };
        let path = options.calibration.as_ref().ok_or_else(|| {
            Error::invalid_input("int8-static needs calibration data (--calibration DATA.npz)")
        })?;
        let data = Dataset::from_npz(path)?;
        let backend = first_available(backends).ok_or_else(|| {
            Error::Unavailable("int8-static calibration needs an available engine".into())
        })?;
        progress(&ProgressEvent::Stage {
            stage: Stage::Calibrating,
        });
        let acts = rewrite::static_activations(&model, &layers);
        Some(calibrate::calibrate(
            &model,
            &acts,
            &data,
            method,
            backend,
            options.batch_size,
            &mut notes,
            progress,
        )?)
    } else {
        None
    };
    Ok(Prepared {
        model,
        layers,
        kept,
        ranges,
        notes,
    })
}

/// SmoothQuant on the MatMul/Gemm inputs (see [`smooth`]), with channel
/// maxima measured on the calibration file, else on `data`. `None` (and a
/// note) when there is nothing to measure on or nothing to smooth.
fn smooth_model(
    model: &pb::ModelProto,
    options: &QuantizeOptions,
    alpha: f32,
    data: Option<&Dataset>,
    backends: &[&dyn Backend],
    notes: &mut Vec<String>,
    progress: &dyn Fn(&ProgressEvent),
) -> Result<Option<pb::ModelProto>> {
    if !(alpha > 0.0 && alpha <= 1.0) {
        return Err(Error::invalid_input(format!(
            "the SmoothQuant strength must lie in (0, 1], got {alpha}"
        ))
        .into());
    }
    let owned;
    let (data, source) = match (&options.calibration, data) {
        (Some(p), _) => {
            owned = Dataset::from_npz(p)?;
            (&owned, "the calibration data")
        }
        (None, Some(d)) => (d, "the validation data"),
        (None, None) => {
            notes.push(
                "not smoothed (SmoothQuant needs calibration or validation data)".to_string(),
            );
            return Ok(None);
        }
    };
    let sites = smooth::sites(model, &options.exclude);
    if sites.is_empty() {
        return Ok(None);
    }
    let backend = first_available(backends).ok_or_else(|| {
        Error::Unavailable("SmoothQuant's statistics need an available engine".into())
    })?;
    progress(&ProgressEvent::Stage {
        stage: Stage::Calibrating,
    });
    let acts: Vec<String> = sites.iter().map(|s| s.activation.clone()).collect();
    let amax = calibrate::channel_max(
        model,
        &acts,
        data,
        backend,
        options.batch_size,
        notes,
        progress,
    )?;
    let mut m = model.clone();
    let done = smooth::apply(&mut m, &sites, &amax, alpha, smooth::MIN_OUTLIER_RATIO)?;
    notes.push(format!(
        "SmoothQuant (alpha {alpha}) on {} of {} matmul inputs (the others' channels are flat), channel maxima from {source} on {}",
        done.len(),
        sites.len(),
        backend.name()
    ));
    Ok(Some(m))
}

fn build(
    options: &QuantizeOptions,
    prepared: &Prepared,
    layers: &[&Layer],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<(pb::ModelProto, QuantSummary)> {
    progress(&ProgressEvent::Stage {
        stage: Stage::Quantizing,
    });
    let r = rewrite::apply(
        &prepared.model,
        &options.scheme,
        layers,
        prepared.ranges.as_ref(),
    )?;
    progress(&ProgressEvent::Quantizing {
        done: layers.len(),
        total: layers.len(),
    });
    let mut kept = prepared.kept.clone();
    for l in &prepared.layers {
        if !layers.iter().any(|s| s.weight == l.weight) {
            kept.push(KeptFloat {
                node: l.node.clone(),
                op_type: l.op_type.clone(),
                weight: l.weight.clone(),
                elements: l.elements,
                reason: "kept float by the sensitivity search".into(),
            });
        }
    }
    let mut notes = prepared.notes.clone();
    notes.extend(r.notes);
    let summary = QuantSummary {
        scheme: options.scheme.to_string(),
        quantized: r.weights,
        kept_float: kept,
        activations: r.activations,
        opset: onnx::default_opset(&r.model),
        engines: engine_support(&options.scheme).to_string(),
        notes,
        ..Default::default()
    };
    Ok((r.model, summary))
}

/// Quantizes `input` into `output`.
///
/// Order of work: read the model; find weights; calibrate (static scheme);
/// rewrite; with `options.validate`, validate on every available backend (and
/// with `auto_exclude`, keep the most sensitive layers float until
/// `max_accuracy_drop` holds); then write `output` atomically. Any failure —
/// including an exceeded budget — leaves `output` untouched.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<QuantizeOutcome> {
    // Validation data is read up front so a bad file fails before the work.
    let vdata = options
        .validate
        .as_ref()
        .map(|p| Dataset::from_npz(p))
        .transpose()?;
    quantize_file_with_data(input, output, options, vdata, backends, progress)
}

/// [`quantize_file`] with the validation data given in memory (it replaces
/// `options.validate`); the server uses it for synthetic warm-up data.
pub fn quantize_file_with_data(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    vdata: Option<Dataset>,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> Result<QuantizeOutcome> {
    progress(&ProgressEvent::Stage {
        stage: Stage::Loading,
    });
    let (model, float_bytes) = onnx::load_model(input)?;
    let float_len = float_bytes.len() as u64;
    drop(float_bytes);
    let prepared = prepare(&model, options, vdata.as_ref(), backends, progress)?;
    drop(model);
    let all: Vec<&Layer> = prepared.layers.iter().collect();
    let (mut qmodel, mut summary) = build(options, &prepared, &all, progress)?;

    let vopts = ValidateOptions {
        labels: options.labels.clone(),
        output: options.compare_output.clone(),
        batch_size: options.batch_size,
        latency_repeats: options.latency_repeats,
        max_accuracy_drop: None,
    };
    let mut validation = None;
    if let Some(data) = &vdata {
        let dir = tempfile::tempdir()
            .map_err(|e| Error::Internal(format!("cannot create a temporary directory: {e}")))?;
        let tmp = dir.path().join("quantized.onnx");
        let write_tmp = |m: &pb::ModelProto| {
            std::fs::write(&tmp, onnx::encode_model(m))
                .map_err(|e| Error::Internal(format!("cannot write {}: {e}", tmp.display())))
        };
        write_tmp(&qmodel)?;
        progress(&ProgressEvent::Stage {
            stage: Stage::Validating,
        });
        let mut report = validate::validate(input, &tmp, data, &vopts, backends, progress)?;
        let gated = options.max_accuracy_drop.is_some() || options.min_cosine.is_some();
        // Without an accuracy budget, only the cosine gate counts.
        let budget = options.max_accuracy_drop.unwrap_or(f64::INFINITY);
        let check = |r: &ValidationReport| {
            r.check_budget(budget)
                .and_then(|_| options.min_cosine.map_or(Ok(()), |c| r.check_cosine(c)))
        };
        if gated {
            if options.auto_exclude
                && let Err(whole) = check(&report)
            {
                // Search on the engine that failed the gate: integer kernels
                // round differently from one engine to another.
                let backend = worst_backend(&report, backends, options.min_cosine.is_some())
                    .or_else(|| first_available(backends))
                    .ok_or_else(|| {
                        Error::Unavailable(
                            "the sensitivity search needs an available engine".into(),
                        )
                    })?;
                progress(&ProgressEvent::Stage {
                    stage: Stage::Sensitivity,
                });
                let search = sensitivity::search(
                    input,
                    &prepared.model,
                    options,
                    &prepared,
                    data,
                    &vopts,
                    backend,
                    sensitivity::Gate {
                        max_drop: budget,
                        min_cosine: options.min_cosine,
                    },
                    progress,
                )?;
                let keep: Vec<&Layer> = prepared
                    .layers
                    .iter()
                    .filter(|l| !search.excluded.contains(&l.weight))
                    .collect();
                if keep.is_empty() {
                    // Name the figures of the fully quantized model too.
                    let whole = whole.to_string();
                    let whole = whole.trim_end_matches("; nothing written");
                    let gate = match options.min_cosine {
                        Some(c) if budget.is_finite() => {
                            format!("an accuracy drop of {budget} points and a cosine of {c}")
                        }
                        Some(c) => format!("a minimum cosine of {c}"),
                        None => format!("an accuracy drop of {budget} points"),
                    };
                    return Err(Error::UnsupportedPrecision(format!(
                        "no layer can be quantized with {} within {gate} (all layers quantized: {whole})",
                        options.scheme.name()
                    ))
                    .into());
                }
                (qmodel, summary) = build(options, &prepared, &keep, progress)?;
                summary.auto_excluded = search.excluded;
                summary.sensitivity = search.layers;
                write_tmp(&qmodel)?;
                progress(&ProgressEvent::Stage {
                    stage: Stage::Validating,
                });
                report = validate::validate(input, &tmp, data, &vopts, backends, progress)?;
            }
            check(&report)?;
        }
        validation = Some(report);
    }

    progress(&ProgressEvent::Stage {
        stage: Stage::Writing,
    });
    let bytes = onnx::encode_model(&qmodel);
    onnx::write_atomic(output, &bytes)?;
    summary.model = input.display().to_string();
    summary.float_bytes = float_len;
    summary.quant_bytes = bytes.len() as u64;
    summary.size_ratio = bytes.len() as f64 / float_len.max(1) as f64;
    if let Some(v) = validation.as_mut() {
        v.quant_model = output.display().to_string();
    }
    Ok(QuantizeOutcome {
        output: output.to_path_buf(),
        summary,
        validation,
    })
}
