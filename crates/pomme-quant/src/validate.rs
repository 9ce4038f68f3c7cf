//! Validation: the float and the quantized model side by side on real data,
//! on every engine given, with the figures that say whether the quantized
//! model is good enough: top-1 agreement, accuracy against labels, cosine
//! similarity, max abs error, SNR, file size ratio and latency ratio.
//!
//! An engine that cannot load or run one of the models gets a row with its
//! error (one format may run on tract and not on ONNX Runtime); validation as a
//! whole fails only when no engine produced figures.

use crate::data::{Dataset, batches};
use crate::error::QuantError;
use crate::progress::ProgressEvent;
use crate::runner;
use pomme_core::{Backend, DType, Error, ModelSignature, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// How to validate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidateOptions {
    /// Label array (`None`: `y`, `label` or `labels` when present).
    pub labels: Option<String>,
    /// Output used for top-1 and accuracy (`None`: the first float output of
    /// rank 2, else the first output).
    pub output: Option<String>,
    pub batch_size: usize,
    /// Timed passes over the data per model (after one untimed pass).
    pub latency_repeats: usize,
    /// Budget in accuracy points (without labels: top-1 disagreement in %).
    pub max_accuracy_drop: Option<f64>,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            labels: None,
            output: None,
            batch_size: 64,
            latency_repeats: 5,
            max_accuracy_drop: None,
        }
    }
}

/// Error figures of one float output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputMetrics {
    pub name: String,
    /// Cosine similarity per row (sample), averaged and worst.
    pub cosine_mean: f64,
    pub cosine_min: f64,
    pub max_abs_error: f64,
    /// 10·log10(Σ ref² / Σ (ref − quant)²); capped at 300 when identical.
    pub snr_db: f64,
}

/// One engine's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackendReport {
    pub backend: String,
    /// Why this engine produced no (or partial) figures.
    pub error: Option<String>,
    /// Percent.
    pub float_accuracy: Option<f64>,
    pub quant_accuracy: Option<f64>,
    /// Percentage points (float − quantized).
    pub accuracy_drop: Option<f64>,
    /// Percent of rows whose top-1 class is unchanged.
    pub top1_agreement: Option<f64>,
    pub outputs: Vec<OutputMetrics>,
    /// Median milliseconds per pass over the data.
    pub float_ms: Option<f64>,
    pub quant_ms: Option<f64>,
    /// quant_ms / float_ms.
    pub latency_ratio: Option<f64>,
}

impl BackendReport {
    /// The figure compared with `max_accuracy_drop`: the accuracy drop when
    /// labels exist, else the top-1 disagreement in percent.
    pub fn budget_figure(&self) -> Option<f64> {
        self.accuracy_drop
            .or(self.top1_agreement.map(|a| 100.0 - a))
    }
}

/// The whole validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub float_model: String,
    pub quant_model: String,
    pub float_bytes: u64,
    pub quant_bytes: u64,
    /// quant_bytes / float_bytes.
    pub size_ratio: f64,
    pub samples: usize,
    pub labels: Option<String>,
    pub compared_output: String,
    pub backends: Vec<BackendReport>,
    pub notes: Vec<String>,
}

impl ValidationReport {
    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serializes")
    }

    /// The worst per-row cosine of the compared output over the engines that
    /// produced it, with the engine's name.
    pub fn worst_cosine(&self) -> Option<(f64, &str)> {
        self.backends
            .iter()
            .filter_map(|b| {
                b.outputs
                    .iter()
                    .find(|o| o.name == self.compared_output)
                    .map(|o| (o.cosine_min, b.backend.as_str()))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// `Err(AccuracyBudgetExceeded)` when the compared output's worst cosine
    /// falls below `min` on some engine (the gate for embedding models).
    pub fn check_cosine(&self, min: f64) -> std::result::Result<(), QuantError> {
        match self.worst_cosine() {
            Some((c, backend)) if c < min => Err(QuantError::AccuracyBudgetExceeded {
                message: format!(
                    "worst cosine of '{}' {c:.5} on {backend} is below the minimum of {min} (size {:.3}x); nothing written",
                    self.compared_output, self.size_ratio
                ),
                report: Box::new(self.clone()),
            }),
            _ => Ok(()),
        }
    }

    /// `Err(AccuracyBudgetExceeded)` naming the worst engine when its figure
    /// exceeds `budget`.
    pub fn check_budget(&self, budget: f64) -> std::result::Result<(), QuantError> {
        let worst = self
            .backends
            .iter()
            .filter_map(|b| b.budget_figure().map(|f| (f, b)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((figure, b)) = worst else {
            return Ok(());
        };
        if figure <= budget + 1e-9 {
            return Ok(());
        }
        let pct = |v: Option<f64>| v.map(|v| format!("{v:.2}%")).unwrap_or_else(|| "-".into());
        let message = match b.accuracy_drop {
            Some(d) => format!(
                "accuracy drop {d:.2} points on {} exceeds the budget of {budget:.2} (float {}, quantized {}, top-1 agreement {}, size {:.3}x); nothing written",
                b.backend,
                pct(b.float_accuracy),
                pct(b.quant_accuracy),
                pct(b.top1_agreement),
                self.size_ratio
            ),
            None => format!(
                "top-1 disagreement {figure:.2}% on {} exceeds the budget of {budget:.2} points (no labels; size {:.3}x); nothing written",
                b.backend, self.size_ratio
            ),
        };
        Err(QuantError::AccuracyBudgetExceeded {
            message,
            report: Box::new(self.clone()),
        })
    }
}

fn opt(v: Option<f64>, unit: &str, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}{unit}"))
        .unwrap_or_else(|| "-".into())
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "validation on {} samples, output '{}', labels {}",
            self.samples,
            self.compared_output,
            self.labels
                .as_deref()
                .map(|l| format!("'{l}'"))
                .unwrap_or_else(|| "none".into())
        )?;
        writeln!(
            f,
            "size: {} -> {} bytes ({:.3}x)",
            self.float_bytes, self.quant_bytes, self.size_ratio
        )?;
        writeln!(
            f,
            "{:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>7}",
            "backend",
            "float acc",
            "quant acc",
            "drop",
            "top1 agr",
            "cos mean",
            "cos min",
            "max abs",
            "SNR dB",
            "float ms",
            "quant ms",
            "ratio"
        )?;
        for b in &self.backends {
            if b.outputs.is_empty() && b.error.is_some() {
                writeln!(
                    f,
                    "{:<8} cannot run: {}",
                    b.backend,
                    b.error.as_deref().unwrap_or("")
                )?;
                continue;
            }
            let first = b
                .outputs
                .iter()
                .find(|o| o.name == self.compared_output)
                .or(b.outputs.first());
            writeln!(
                f,
                "{:<8} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>7}",
                b.backend,
                opt(b.float_accuracy, "%", 2),
                opt(b.quant_accuracy, "%", 2),
                opt(b.accuracy_drop, "", 2),
                opt(b.top1_agreement, "%", 2),
                opt(first.map(|o| o.cosine_mean), "", 5),
                opt(first.map(|o| o.cosine_min), "", 5),
                first
                    .map(|o| format!("{:.3e}", o.max_abs_error))
                    .unwrap_or_else(|| "-".into()),
                opt(first.map(|o| o.snr_db), "", 1),
                opt(b.float_ms, "", 2),
                opt(b.quant_ms, "", 2),
                opt(b.latency_ratio, "x", 2),
            )?;
            for o in b.outputs.iter().filter(|o| Some(*o) != first) {
                writeln!(
                    f,
                    "{:<8}   output '{}': cos mean {:.5}, cos min {:.5}, max abs {:.3e}, SNR {:.1} dB",
                    "", o.name, o.cosine_mean, o.cosine_min, o.max_abs_error, o.snr_db
                )?;
            }
            if let Some(e) = &b.error {
                writeln!(f, "{:<8}   note: {e}", "")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Validates `quant_model` against `float_model` on `data` with every backend.
/// With `max_accuracy_drop`, exceeding it is `AccuracyBudgetExceeded`.
pub fn validate(
    float_model: &Path,
    quant_model: &Path,
    data: &Dataset,
    options: &ValidateOptions,
    backends: &[&dyn Backend],
    progress: &dyn Fn(&ProgressEvent),
) -> std::result::Result<ValidationReport, QuantError> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| Error::InvalidModelFormat(format!("cannot read {}: {e}", p.display())))
    };
    let float_bytes = size(float_model)?;
    let quant_bytes = size(quant_model)?;
    let mut report = ValidationReport {
        float_model: float_model.display().to_string(),
        quant_model: quant_model.display().to_string(),
        float_bytes,
        quant_bytes,
        size_ratio: quant_bytes as f64 / float_bytes.max(1) as f64,
        ..Default::default()
    };
    let mut any = false;
    for &backend in backends {
        let name = backend.name().to_string();
        if let pomme_core::Availability::Unavailable(why) = backend.availability() {
            report.notes.push(format!("{name} skipped: {why}"));
            continue;
        }
        match validate_on(
            backend,
            float_model,
            quant_model,
            data,
            options,
            &mut report,
            progress,
        ) {
            Ok(b) => {
                any |= !b.outputs.is_empty();
                report.backends.push(b);
            }
            Err(e) => report.backends.push(BackendReport {
                backend: name,
                error: Some(e.to_string()),
                ..Default::default()
            }),
        }
    }
    if !any {
        let why: Vec<String> = report
            .backends
            .iter()
            .map(|b| {
                format!(
                    "{}: {}",
                    b.backend,
                    b.error.as_deref().unwrap_or("no figures")
                )
            })
            .chain(report.notes.iter().cloned())
            .collect();
        return Err(Error::Unavailable(format!(
            "no engine could validate the quantized model ({})",
            why.join("; ")
        ))
        .into());
    }
    if let Some(budget) = options.max_accuracy_drop {
        report.check_budget(budget)?;
    }
    Ok(report)
}

fn validate_on(
    backend: &dyn Backend,
    float_model: &Path,
    quant_model: &Path,
    data: &Dataset,
    options: &ValidateOptions,
    report: &mut ValidationReport,
    progress: &dyn Fn(&ProgressEvent),
) -> Result<BackendReport> {
    let name = backend.name().to_string();
    let fm = runner::load(backend, float_model)
        .map_err(|e| Error::CompilationFailed(format!("float model: {e}")))?;
    let sig = fm.signature().clone();
    let mut notes = Vec::new();
    let inputs = data.inputs_for(&sig, options.labels.as_deref(), &mut notes)?;
    let labels = data.labels(options.labels.as_deref(), &sig)?;
    let batches = batches(&inputs, &sig, options.batch_size)?;
    let samples = inputs[0].shape()[0];
    if let Some((_, l)) = &labels
        && l.len() != samples
    {
        return Err(Error::invalid_input(format!(
            "{} labels for {samples} samples",
            l.len()
        )));
    }
    let total = batches.len() * 2;
    let tick = |done: usize| {
        progress(&ProgressEvent::Validation {
            backend: name.clone(),
            done,
            total,
        })
    };
    let (float_out, _) = runner::run_batches(fm.as_ref(), &batches, &tick)?;
    let mut out = BackendReport {
        backend: name.clone(),
        ..Default::default()
    };
    let qm = match runner::load(backend, quant_model) {
        Ok(m) => m,
        Err(e) => {
            out.error = Some(format!("cannot load the quantized model: {e}"));
            return Ok(out);
        }
    };
    let off = batches.len();
    let (quant_out, _) = match runner::run_batches(qm.as_ref(), &batches, |d| tick(off + d)) {
        Ok(v) => v,
        Err(e) => {
            out.error = Some(format!("cannot run the quantized model: {e}"));
            return Ok(out);
        }
    };
    let primary = primary_output(&sig, options.output.as_deref())?;
    report.samples = samples;
    report.compared_output = sig.outputs[primary].name.clone();
    report.labels = labels.as_ref().map(|(k, _)| k.clone());
    for n in notes {
        if !report.notes.contains(&n) {
            report.notes.push(n);
        }
    }
    for (i, spec) in sig.outputs.iter().enumerate() {
        if float_out[i].dtype() == DType::F32 && quant_out[i].dtype() == DType::F32 {
            out.outputs
                .push(compare(&spec.name, &float_out[i], &quant_out[i])?);
        }
    }
    let fc = classes(&float_out[primary])?;
    let qc = classes(&quant_out[primary])?;
    if let (Some(fc), Some(qc)) = (&fc, &qc) {
        let agree = fc.iter().zip(qc).filter(|(a, b)| a == b).count();
        out.top1_agreement = Some(100.0 * agree as f64 / fc.len().max(1) as f64);
        if let Some((_, l)) = &labels {
            let acc = |c: &[i64]| {
                100.0 * c.iter().zip(l).filter(|(a, b)| a == b).count() as f64
                    / l.len().max(1) as f64
            };
            let (fa, qa) = (acc(fc), acc(qc));
            out.float_accuracy = Some(fa);
            out.quant_accuracy = Some(qa);
            out.accuracy_drop = Some(fa - qa);
        }
    }
    if options.latency_repeats > 0 {
        let mut ft = Vec::new();
        let mut qt = Vec::new();
        for _ in 0..options.latency_repeats {
            // Interleaved so that machine noise hits both alike.
            ft.push(runner::time_batches(fm.as_ref(), &batches)?);
            qt.push(runner::time_batches(qm.as_ref(), &batches)?);
        }
        let (f, q) = (median_ms(&mut ft), median_ms(&mut qt));
        out.float_ms = Some(f);
        out.quant_ms = Some(q);
        out.latency_ratio = Some(q / f.max(1e-9));
    }
    Ok(out)
}

fn median_ms(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

/// The output used for classes: by name, else the first float output of rank
/// 2 (`[batch, classes]`), else the first output.
pub(crate) fn primary_output(sig: &ModelSignature, name: Option<&str>) -> Result<usize> {
    if let Some(n) = name {
        return sig.outputs.iter().position(|o| o.name == n).ok_or_else(|| {
            Error::invalid_input(format!(
                "the model has no output '{n}' (outputs: {})",
                sig.outputs
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        });
    }
    Ok(sig
        .outputs
        .iter()
        .position(|o| o.dtype == DType::F32 && o.shape.rank() == 2)
        .or_else(|| sig.outputs.iter().position(|o| o.dtype == DType::F32))
        .unwrap_or(0))
}

/// Per-row class: argmax over each row of a float output; the values of a 1-D
/// integer output. `None` for other outputs.
pub(crate) fn classes(t: &Tensor) -> Result<Option<Vec<i64>>> {
    let rows = t.shape().first().copied().unwrap_or(0);
    if t.dtype().is_float() && t.shape().len() >= 2 {
        let v = t.to_f64_vec()?;
        let per = v.len() / rows.max(1);
        return Ok(Some(
            v.chunks(per.max(1))
                .map(|r| {
                    r.iter()
                        .enumerate()
                        .fold((0usize, f64::NEG_INFINITY), |b, (i, &x)| {
                            if x > b.1 { (i, x) } else { b }
                        })
                        .0 as i64
                })
                .collect(),
        ));
    }
    if !t.dtype().is_float() && t.dtype() != DType::Bytes && t.shape().len() == 1 {
        return Ok(Some(
            t.to_f64_vec()?.into_iter().map(|x| x as i64).collect(),
        ));
    }
    Ok(None)
}

/// Error figures of `q` against the reference `r`.
pub(crate) fn compare(name: &str, r: &Tensor, q: &Tensor) -> Result<OutputMetrics> {
    if r.shape() != q.shape() {
        return Err(Error::InferenceFailed(format!(
            "output '{name}' has shape {:?} float but {:?} quantized",
            r.shape(),
            q.shape()
        )));
    }
    let a = r.to_f64_vec()?;
    let b = q.to_f64_vec()?;
    let rows = r.shape().first().copied().unwrap_or(1).max(1);
    let per = (a.len() / rows).max(1);
    let (mut cmin, mut csum, mut n) = (f64::INFINITY, 0f64, 0usize);
    for (ra, rb) in a.chunks(per).zip(b.chunks(per)) {
        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
        let na: f64 = ra.iter().map(|x| x * x).sum::<f64>().sqrt();
        let nb: f64 = rb.iter().map(|x| x * x).sum::<f64>().sqrt();
        let c = if na == 0.0 && nb == 0.0 {
            1.0
        } else if na == 0.0 || nb == 0.0 {
            0.0
        } else {
            dot / (na * nb)
        };
        cmin = cmin.min(c);
        csum += c;
        n += 1;
    }
    let max_abs_error = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    let sig: f64 = a.iter().map(|x| x * x).sum();
    let noise: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum();
    let snr_db = if noise == 0.0 {
        300.0
    } else {
        (10.0 * (sig / noise).log10()).min(300.0)
    };
    Ok(OutputMetrics {
        name: name.to_string(),
        cosine_mean: if n > 0 { csum / n as f64 } else { 1.0 },
        cosine_min: if n > 0 { cmin } else { 1.0 },
        max_abs_error,
        snr_db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_of_identical_and_noisy_outputs() {
        let r = Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3., -1., 0., 1.]).unwrap();
        let m = compare("y", &r, &r).unwrap();
        assert_eq!(m.snr_db, 300.0);
        assert!((m.cosine_min - 1.0).abs() < 1e-12);
        let q = Tensor::from_vec(vec![2, 3], vec![1f32, 2., 3.1, -1., 0., 1.]).unwrap();
        let m = compare("y", &r, &q).unwrap();
        assert!((m.max_abs_error - 0.1).abs() < 1e-6);
        assert!(m.snr_db > 20.0 && m.snr_db < 40.0, "{}", m.snr_db);
        assert_eq!(classes(&r).unwrap().unwrap(), vec![2, 2]);
    }

    #[test]
    fn budget_message_has_the_figures() {
        let report = ValidationReport {
            size_ratio: 0.25,
            backends: vec![BackendReport {
                backend: "tract".into(),
                float_accuracy: Some(97.0),
                quant_accuracy: Some(95.0),
                accuracy_drop: Some(2.0),
                top1_agreement: Some(96.0),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(report.check_budget(2.5).is_ok());
        let e = report.check_budget(0.5).unwrap_err().to_string();
        assert!(
            e.contains("accuracy drop 2.00 points on tract exceeds the budget of 0.50"),
            "{e}"
        );
        assert!(e.contains("float 97.00%, quantized 95.00%"), "{e}");
        assert!(!e.contains('\n'));
    }
}
