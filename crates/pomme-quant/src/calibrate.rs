//! Calibration: ranges of the activations feeding quantized ops.
//!
//! The float model is run with the needed intermediate values added as graph
//! outputs (an ONNX graph may expose any value), over the calibration set in
//! batches. A first pass records min/max; `percentile` and `entropy` make a
//! second pass filling fixed-range histograms (2048 bins), so memory stays
//! bounded whatever the data size.

use crate::data::{Dataset, batches};
use crate::onnx::{self, pb};
use crate::progress::ProgressEvent;
use crate::runner;
use crate::scheme::CalibrationMethod;
use pomme_core::{Backend, DType, Error, Result, Tensor};
use std::collections::HashMap;

const BINS: usize = 2048;

#[derive(Clone, Debug)]
struct Stats {
    min: f32,
    max: f32,
    /// Over [min, max] (percentile) or [0, max|x|] (entropy).
    hist: Vec<u64>,
}

/// Calibrated `[min, max]` per activation name.
pub type Ranges = HashMap<String, (f32, f32)>;

/// Runs the float model over `data` and returns a range per activation.
/// Graph inputs among `activations` are measured from the data directly.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    model: &pb::ModelProto,
    activations: &[String],
    data: &Dataset,
    method: CalibrationMethod,
    backend: &dyn Backend,
    batch_size: usize,
    notes: &mut Vec<String>,
    progress: &dyn Fn(&ProgressEvent),
) -> Result<Ranges> {
    let passes = if method == CalibrationMethod::MinMax {
        1
    } else {
        2
    };
    let mut stats: HashMap<String, Stats> = HashMap::new();
    let seen = observe(
        model,
        activations,
        data,
        backend,
        batch_size,
        passes,
        notes,
        progress,
        |pass, a, v, _| {
            if pass == 0 {
                let s = stats.entry(a.to_string()).or_insert(Stats {
                    min: f32::INFINITY,
                    max: f32::NEG_INFINITY,
                    hist: Vec::new(),
                });
                for &x in v.iter().filter(|x| x.is_finite()) {
                    s.min = s.min.min(x);
                    s.max = s.max.max(x);
                }
            } else if let Some(s) = stats.get_mut(a) {
                fill_histogram(s, v, method);
            }
        },
    )?;
    let mut ranges = Ranges::new();
    for a in activations {
        let Some(s) = stats.get(a) else {
            if !seen.contains(a) {
                notes.push(format!(
                    "{} did not expose activation '{a}'; it stays float",
                    backend.name()
                ));
            }
            continue;
        };
        if !s.min.is_finite() || !s.max.is_finite() {
            continue;
        }
        let r = match method {
            CalibrationMethod::MinMax => (s.min, s.max),
            CalibrationMethod::Percentile(p) => percentile_range(s, p),
            CalibrationMethod::Entropy => entropy_range(s),
        };
        ranges.insert(a.clone(), r);
    }
    Ok(ranges)
}

/// The largest magnitude of each channel (last axis) of each float
/// activation over `data`: what SmoothQuant balances against the weights.
/// Activations the engine did not expose are absent from the result.
pub fn channel_max(
    model: &pb::ModelProto,
    activations: &[String],
    data: &Dataset,
    backend: &dyn Backend,
    batch_size: usize,
    notes: &mut Vec<String>,
    progress: &dyn Fn(&ProgressEvent),
) -> Result<HashMap<String, Vec<f32>>> {
    let mut out: HashMap<String, Vec<f32>> = HashMap::new();
    observe(
        model,
        activations,
        data,
        backend,
        batch_size,
        1,
        notes,
        progress,
        |_, a, v, shape| {
            let c = shape.last().copied().unwrap_or(1).max(1);
            let m = out.entry(a.to_string()).or_insert_with(|| vec![0.0; c]);
            if m.len() != c {
                return;
            }
            for row in v.chunks_exact(c) {
                for (m, &x) in m.iter_mut().zip(row) {
                    if x.is_finite() {
                        *m = m.max(x.abs());
                    }
                }
            }
        },
    )?;
    Ok(out)
}

/// Runs the float model over `data` in batches, `passes` times, with the
/// `activations` exposed as graph outputs, handing each float activation's
/// values (and shape) to `each(pass, name, values, shape)`. Graph inputs among
/// `activations` come from the data directly. Returns the activations found.
#[allow(clippy::too_many_arguments)]
fn observe(
    model: &pb::ModelProto,
    activations: &[String],
    data: &Dataset,
    backend: &dyn Backend,
    batch_size: usize,
    passes: usize,
    notes: &mut Vec<String>,
    progress: &dyn Fn(&ProgressEvent),
    mut each: impl FnMut(usize, &str, &[f32], &[usize]),
) -> Result<Vec<String>> {
    let mut m = model.clone();
    let graph = m.graph.as_mut().expect("model has a graph");
    let existing: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    let inputs: Vec<String> = graph.input.iter().map(|o| o.name.clone()).collect();
    for a in activations {
        if !existing.contains(a) && !inputs.contains(a) {
            graph.output.push(onnx::value_info(a, onnx::FLOAT));
        }
    }
    let loaded = runner::load_bytes(backend, &onnx::encode_model(&m)).map_err(|e| {
        Error::CompilationFailed(format!(
            "{} cannot run the calibration model: {e}",
            backend.name()
        ))
    })?;
    let sig = loaded.signature().clone();
    let full = data.inputs_for(&sig, None, notes)?;
    let batches = batches(&full, &sig, batch_size)?;
    let total = batches.len() * passes;
    // Where each activation is found: an input index or an output index.
    let locate = |a: &str| -> Option<(bool, usize)> {
        if let Some(i) = sig.inputs.iter().position(|s| s.name == a) {
            return Some((true, i));
        }
        sig.outputs
            .iter()
            .position(|s| s.name == a)
            .map(|i| (false, i))
    };
    let found: Vec<String> = activations
        .iter()
        .filter(|a| locate(a).is_some())
        .cloned()
        .collect();
    let mut session = loaded.session()?;
    for pass in 0..passes {
        for (bi, b) in batches.iter().enumerate() {
            let outs = session.run(b.clone())?;
            for a in &found {
                let Some((is_input, i)) = locate(a) else {
                    continue;
                };
                let t: &Tensor = if is_input { &b[i] } else { &outs[i] };
                if t.dtype() != DType::F32 {
                    continue;
                }
                let v = t.as_slice::<f32>()?;
                each(pass, a, &v, t.shape());
            }
            progress(&ProgressEvent::Calibration {
                done: pass * batches.len() + bi + 1,
                total,
            });
        }
    }
    Ok(found)
}

fn fill_histogram(s: &mut Stats, v: &[f32], method: CalibrationMethod) {
    if s.hist.is_empty() {
        s.hist = vec![0; BINS];
    }
    let (lo, hi) = match method {
        CalibrationMethod::Entropy => (0.0, s.min.abs().max(s.max.abs())),
        _ => (s.min, s.max),
    };
    let width = (hi - lo) / BINS as f32;
    if width <= 0.0 {
        return;
    }
    let entropy = method == CalibrationMethod::Entropy;
    // For entropy, exact zeros are left out: after ReLU they are a spike that
    // dominates the distribution and makes KL indifferent to the tail (the
    // threshold then clips large, meaningful values), and zero is exactly
    // representable whatever the threshold.
    for &x in v
        .iter()
        .filter(|x| x.is_finite() && !(entropy && **x == 0.0))
    {
        let x = if entropy { x.abs() } else { x };
        let b = (((x - lo) / width) as usize).min(BINS - 1);
        s.hist[b] += 1;
    }
}

/// The two-sided percentile: the values at the `(100 - p)`-th and `p`-th
/// percentiles of the histogram (the low end only for signed tensors).
fn percentile_range(s: &Stats, p: f64) -> (f32, f32) {
    let total: u64 = s.hist.iter().sum();
    if total == 0 {
        return (s.min, s.max);
    }
    let width = (s.max - s.min) / BINS as f32;
    let at = |q: f64| -> f32 {
        let target = (q / 100.0 * total as f64).ceil() as u64;
        let mut acc = 0u64;
        for (i, &c) in s.hist.iter().enumerate() {
            acc += c;
            if acc >= target.max(1) {
                return s.min + (i as f32 + 1.0) * width;
            }
        }
        s.max
    };
    let lo = if s.min >= 0.0 {
        s.min
    } else {
        (at(100.0 - p) - width).max(s.min)
    };
    (lo, at(p).min(s.max))
}

/// TensorRT-style entropy calibration on the |x| histogram: the threshold
/// whose 8-bit quantized distribution is closest (KL) to the clipped float one.
fn entropy_range(s: &Stats) -> (f32, f32) {
    let max_abs = s.min.abs().max(s.max.abs());
    if s.hist.iter().sum::<u64>() == 0 || max_abs == 0.0 {
        return (s.min, s.max);
    }
    let width = max_abs / BINS as f32;
    // Non-negative tensors use all 256 uint8 levels on [0, t]; signed ones
    // spread them over [-t, t], so about 128 per side.
    let levels = if s.min >= 0.0 { 255 } else { 128 };
    let best = kl_threshold_bin(&s.hist, levels);
    let t = (best as f32 + 0.5) * width;
    if s.min >= 0.0 {
        (0.0, t.min(s.max))
    } else {
        ((-t).max(s.min), t.min(s.max))
    }
}

/// Index `i` (exclusive end bin) minimising KL(P_i || Q_i).
fn kl_threshold_bin(hist: &[u64], levels: usize) -> usize {
    let n = hist.len();
    let mut best = (f64::INFINITY, n);
    let mut i = levels;
    while i <= n {
        // Reference: the first i bins, outliers folded into the last one.
        let mut p: Vec<f64> = hist[..i].iter().map(|&c| c as f64).collect();
        p[i - 1] += hist[i..].iter().sum::<u64>() as f64;
        // Candidate: the same i bins merged into `levels` groups, each group's
        // mass spread evenly over its non-empty bins.
        let mut q = vec![0f64; i];
        for l in 0..levels {
            let a = l * i / levels;
            let b = ((l + 1) * i / levels).max(a + 1).min(i);
            let mass: f64 = hist[a..b].iter().map(|&c| c as f64).sum();
            let nonzero = hist[a..b].iter().filter(|&&c| c > 0).count();
            if nonzero > 0 {
                for k in a..b {
                    if hist[k] > 0 {
                        q[k] = mass / nonzero as f64;
                    }
                }
            }
        }
        let ps: f64 = p.iter().sum();
        let qs: f64 = q.iter().sum();
        if ps > 0.0 && qs > 0.0 {
            let mut kl = 0.0;
            for k in 0..i {
                if p[k] > 0.0 {
                    let pk = p[k] / ps;
                    // Smoothing: an outlier-bin mass with no candidate mass.
                    let qk = (q[k] / qs).max(1e-10);
                    kl += pk * (pk / qk).ln();
                }
            }
            if kl < best.0 {
                best = (kl, i);
            }
        }
        i += if n > 512 { 4 } else { 1 };
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_trims_outliers() {
        let mut s = Stats {
            min: -100.0,
            max: 100.0,
            hist: Vec::new(),
        };
        let mut v: Vec<f32> = (0..10_000)
            .map(|i| (i as f32 / 10_000.0) * 2.0 - 1.0)
            .collect();
        v.push(100.0);
        v.push(-100.0);
        fill_histogram(&mut s, &v, CalibrationMethod::Percentile(99.9));
        let (lo, hi) = percentile_range(&s, 99.9);
        assert!(hi < 2.0 && hi > 0.9, "{hi}");
        assert!(lo > -2.0 && lo < -0.9, "{lo}");
    }

    #[test]
    fn entropy_clips_a_long_tail() {
        let mut s = Stats {
            min: 0.0,
            max: 50.0,
            hist: Vec::new(),
        };
        let mut v: Vec<f32> = (0..20_000).map(|i| (i % 1000) as f32 / 1000.0).collect();
        v.push(50.0);
        fill_histogram(&mut s, &v, CalibrationMethod::Entropy);
        let (lo, hi) = entropy_range(&s);
        assert_eq!(lo, 0.0);
        assert!(hi < 10.0, "{hi}");
    }
}
