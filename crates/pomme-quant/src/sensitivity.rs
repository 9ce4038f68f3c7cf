//! Automatic exclusion: which layers to keep float so the accuracy budget holds.
//!
//! 1. Per-layer sensitivity: quantize one layer at a time (all others float)
//!    and measure the budget figure (accuracy drop in points with labels, top-1
//!    disagreement in % without), the SNR and the worst per-row cosine of the
//!    compared output.
//! 2. Greedy exclusion: starting from "everything quantized", keep the most
//!    sensitive layer float (highest figure, then lowest SNR — or, under a
//!    cosine gate, lowest cosine first), re-measure, and repeat until the
//!    budget and the cosine gate hold.
//!
//! Cost: one model build and one pass over the validation data per layer, plus
//! one per exclusion step, on one engine (the first available). Interactions
//! between layers are only seen by the greedy re-measurements, which is why
//! they are re-measured rather than summed.

use crate::data::{Dataset, batches};
use crate::onnx::{self, pb};
use crate::progress::ProgressEvent;
use crate::rewrite::{self, Layer};
use crate::validate::{ValidateOptions, classes, compare, primary_output};
use crate::{Prepared, QuantizeOptions, runner};
use pomme_core::{Backend, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How much one layer, quantized alone, costs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSensitivity {
    pub node: String,
    pub op_type: String,
    pub weight: String,
    /// Accuracy drop in points (top-1 disagreement % without labels).
    pub figure: f64,
    /// SNR of the compared output, in dB.
    pub snr_db: f64,
    /// Worst per-row cosine of the compared output.
    #[serde(default)]
    pub cosine_min: f64,
}

/// What the search must achieve: an accuracy drop (points; infinite when
/// only the cosine counts) and optionally a minimum cosine.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gate {
    pub max_drop: f64,
    pub min_cosine: Option<f64>,
}

pub(crate) struct Search {
    pub excluded: Vec<String>,
    pub layers: Vec<LayerSensitivity>,
}

struct Reference {
    batches: Vec<Vec<Tensor>>,
    primary: usize,
    float_out: Tensor,
    float_classes: Vec<i64>,
    labels: Option<Vec<i64>>,
}

impl Reference {
    /// (figure, snr, worst cosine) of a candidate model.
    fn score(&self, backend: &dyn Backend, model: &pb::ModelProto) -> Result<(f64, f64, f64)> {
        let loaded = runner::load_bytes(backend, &onnx::encode_model(model))?;
        let (outs, _) = runner::run_batches(loaded.as_ref(), &self.batches, |_| {})?;
        let q = &outs[self.primary];
        let m = compare("primary", &self.float_out, q)?;
        let (snr, cos) = (m.snr_db, m.cosine_min);
        let qc = classes(q)?.unwrap_or_default();
        let figure = match &self.labels {
            Some(l) => {
                let acc = |c: &[i64]| {
                    100.0 * c.iter().zip(l).filter(|(a, b)| a == b).count() as f64
                        / l.len().max(1) as f64
                };
                acc(&self.float_classes) - acc(&qc)
            }
            None => {
                let agree = self
                    .float_classes
                    .iter()
                    .zip(&qc)
                    .filter(|(a, b)| a == b)
                    .count();
                100.0 - 100.0 * agree as f64 / self.float_classes.len().max(1) as f64
            }
        };
        Ok((figure, snr, cos))
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn search(
    float_path: &Path,
    model: &pb::ModelProto,
    options: &QuantizeOptions,
    prepared: &Prepared,
    data: &Dataset,
    vopts: &ValidateOptions,
    backend: &dyn Backend,
    gate: Gate,
    progress: &dyn Fn(&ProgressEvent),
) -> Result<Search> {
    let fm = runner::load(backend, float_path)?;
    let sig = fm.signature().clone();
    let mut notes = Vec::new();
    let inputs = data.inputs_for(&sig, vopts.labels.as_deref(), &mut notes)?;
    let labels = data.labels(vopts.labels.as_deref(), &sig)?.map(|(_, l)| l);
    let batches = batches(&inputs, &sig, vopts.batch_size)?;
    let primary = primary_output(&sig, vopts.output.as_deref())?;
    let (outs, _) = runner::run_batches(fm.as_ref(), &batches, |_| {})?;
    let float_out = outs[primary].clone();
    let float_classes = classes(&float_out)?.unwrap_or_default();
    let reference = Reference {
        batches,
        primary,
        float_out,
        float_classes,
        labels,
    };
    let build = |subset: &[&Layer]| -> Result<pb::ModelProto> {
        Ok(rewrite::apply(model, &options.scheme, subset, prepared.ranges.as_ref())?.model)
    };
    let n = prepared.layers.len();
    let mut layers = Vec::with_capacity(n);
    for (i, l) in prepared.layers.iter().enumerate() {
        let (figure, snr_db, cosine_min) = reference.score(backend, &build(&[l])?)?;
        progress(&ProgressEvent::Sensitivity {
            layer: l.node.clone(),
            done: i + 1,
            total: n,
        });
        layers.push(LayerSensitivity {
            node: l.node.clone(),
            op_type: l.op_type.clone(),
            weight: l.weight.clone(),
            figure,
            snr_db,
            cosine_min,
        });
    }
    let mut order: Vec<&LayerSensitivity> = layers.iter().collect();
    if gate.min_cosine.is_some() {
        order.sort_by(|a, b| {
            a.cosine_min
                .total_cmp(&b.cosine_min)
                .then(b.figure.total_cmp(&a.figure))
        });
    } else {
        order.sort_by(|a, b| {
            b.figure
                .total_cmp(&a.figure)
                .then(a.snr_db.total_cmp(&b.snr_db))
        });
    }
    let mut excluded: Vec<String> = Vec::new();
    for s in order {
        excluded.push(s.weight.clone());
        let keep: Vec<&Layer> = prepared
            .layers
            .iter()
            .filter(|l| !excluded.contains(&l.weight))
            .collect();
        if keep.is_empty() {
            break;
        }
        let (figure, _, cos) = reference.score(backend, &build(&keep)?)?;
        progress(&ProgressEvent::Note {
            message: format!(
                "kept {} float: {figure:.2} points, worst cosine {cos:.5} with {} layer(s) quantized",
                s.node,
                keep.len()
            ),
        });
        if figure <= gate.max_drop + 1e-9 && gate.min_cosine.is_none_or(|c| cos >= c) {
            break;
        }
    }
    Ok(Search { excluded, layers })
}
