//! SmoothQuant (Xiao et al., 2023) for the integer-kernel INT8 schemes.
//!
//! Dynamic INT8 quantizes each activation with one scale per tensor, so a few
//! outlier channels (transformers have them in a fixed handful of hidden
//! dimensions) spend the 8 bits and the rest of the channels round to a few
//! levels. SmoothQuant divides channel `j` of the activation by
//! `s_j = max|X_j|^α / max|W_j|^(1-α)` and multiplies row `j` of the weight by
//! it: `X·W = (X / s)·(s·W)`, the same float product, with the outliers moved
//! into the weights, which are quantized per output column and absorb them.
//!
//! The division is a `Mul` by `1/s` placed before the activation's first
//! consumer (in MiniLM the activations also feed residual adds, so it cannot
//! be folded into the LayerNormalization before them). The result is a float
//! model equal to the input up to rounding; the quantizer then rewrites it.
//! `--target speed` applies it to `int8-dynamic` by default ([`Smooth`]).

use crate::onnx::{self, Names, pb};
use std::collections::HashMap;

/// The strength to pick: in the MiniLM probe (ONNX Runtime's dynamic int8 on
/// the smoothed model, BENCHMARKS.md "SmoothQuant probe"), 0.7–0.9 kept every
/// layer int8 within 0.99 cosine where 0.5 (the paper's default) did not.
pub const DEFAULT_ALPHA: f32 = 0.8;

/// What a user asked for SmoothQuant (CLI `--smooth`, served `smooth`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Smooth {
    /// What the target does: `speed` smooths `int8-dynamic` at
    /// [`DEFAULT_ALPHA`] (MiniLM: every layer int8 within 0.99 cosine, and
    /// faster, BENCHMARKS.md "pomme's own int8-dynamic with SmoothQuant");
    /// static QDQ is not smoothed by default (not measured to help).
    Default,
    Off,
    /// This strength α in (0, 1].
    Alpha(f32),
}

impl Smooth {
    /// The strength for [`crate::QuantizeOptions::smooth`], given the target
    /// (`None` without one) and the scheme it picked.
    pub fn resolve(self, target: Option<crate::Target>, scheme: &crate::Scheme) -> Option<f32> {
        match self {
            Smooth::Default => (target == Some(crate::Target::Speed)
                && matches!(scheme, crate::Scheme::Int8Dynamic { .. }))
            .then_some(DEFAULT_ALPHA),
            Smooth::Off => None,
            Smooth::Alpha(a) => Some(a),
        }
    }
}

/// Sites whose channel maxima are this flat (largest over median) are left
/// alone: their per-tensor scale already serves every channel, and each
/// smoothed site costs a `Mul`. In MiniLM the FFN inputs (9–19) and the first
/// FFN outputs (12–23) pass, the attention inputs and outputs (2–6) do not;
/// smoothing those too bought no cosine and cost 4 % of the int8 latency.
pub const MIN_OUTLIER_RATIO: f32 = 8.0;

/// Largest channel maximum over the median one.
pub fn outlier_ratio(act_max: &[f32]) -> f32 {
    if act_max.is_empty() {
        return 0.0;
    }
    let mut v = act_max.to_vec();
    v.sort_by(f32::total_cmp);
    let median = v[v.len() / 2];
    if median > 0.0 {
        v[v.len() - 1] / median
    } else {
        f32::INFINITY
    }
}

/// An activation and the weight matmuls that read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Site {
    pub activation: String,
    /// `(node index, weight initializer, K axis of the weight)`.
    pub weights: Vec<(usize, String, usize)>,
}

/// Activations that feed only-here-used 2-D float weights through `MatMul`
/// (weight `[K, N]`) or `Gemm` (`transA = 0`; `[K, N]`, or `[N, K]` with
/// `transB`), where every such weight is read by that node alone.
pub fn sites(model: &pb::ModelProto, skip: &[String]) -> Vec<Site> {
    let Some(g) = model.graph.as_ref() else {
        return Vec::new();
    };
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut reads: HashMap<&str, usize> = HashMap::new();
    for n in &g.node {
        for i in &n.input {
            *reads.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut by_act: Vec<Site> = Vec::new();
    for (idx, n) in g.node.iter().enumerate() {
        if !n.domain.is_empty() || n.input.len() < 2 {
            continue;
        }
        let k_axis = match n.op_type.as_str() {
            "MatMul" => 0,
            "Gemm" if onnx::get_attr_int(n, "transA", 0) == 0 => {
                if onnx::get_attr_int(n, "transB", 0) == 0 {
                    0
                } else {
                    1
                }
            }
            _ => continue,
        };
        let (x, w) = (&n.input[0], &n.input[1]);
        let Some(t) = inits.get(w.as_str()) else {
            continue;
        };
        if t.dims.len() != 2
            || !onnx::is_inline_float(t)
            || reads.get(w.as_str()) != Some(&1)
            || inits.contains_key(x.as_str())
            || skip
                .iter()
                .any(|s| s == &n.name || s == w || s == &n.op_type)
        {
            continue;
        }
        let site = match by_act.iter_mut().position(|s| &s.activation == x) {
            Some(i) => &mut by_act[i],
            None => {
                by_act.push(Site {
                    activation: x.clone(),
                    weights: Vec::new(),
                });
                by_act.last_mut().expect("pushed")
            }
        };
        site.weights.push((idx, w.clone(), k_axis));
    }
    by_act
}

/// The smoothing factors of one site: `max|X_j|^α / max_w max|W_j|^(1-α)`,
/// 1 where a channel never moved (a factor of 0 or ∞ would lose it).
pub fn factors(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Vec<f32> {
    act_max
        .iter()
        .zip(weight_max)
        .map(|(&a, &w)| {
            let s = a.max(1e-5).powf(alpha) / w.max(1e-5).powf(1.0 - alpha);
            if a > 0.0 && w > 0.0 && s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect()
}

/// Applies SmoothQuant to `model` at the sites whose activation has channel
/// maxima in `act_max` of the right width and outliers (at least
/// `min_ratio`, see [`MIN_OUTLIER_RATIO`]); returns the activations smoothed.
pub fn apply(
    model: &mut pb::ModelProto,
    sites: &[Site],
    act_max: &HashMap<String, Vec<f32>>,
    alpha: f32,
    min_ratio: f32,
) -> crate::Result<Vec<String>> {
    let graph = model.graph.as_mut().expect("sites came from this graph");
    let mut names = Names::of(graph);
    let pos = onnx::initializer_positions(graph);
    // (first consumer, Mul node): inserted once the indices stop mattering.
    let mut muls: Vec<(usize, pb::NodeProto)> = Vec::new();
    let mut new_inits = Vec::new();
    let mut done = Vec::new();
    for site in sites {
        let Some(am) = act_max.get(&site.activation) else {
            continue;
        };
        if outlier_ratio(am) < min_ratio {
            continue;
        }
        let k = am.len();
        // The weights' rows (K) must be the activation's channels.
        let mut ws = Vec::new();
        for (_, w, axis) in &site.weights {
            let t = &graph.initializer[pos[w]];
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            if dims[*axis] != k {
                ws.clear();
                break;
            }
            ws.push((w.clone(), *axis, dims, onnx::tensor_f32(t)?));
        }
        if ws.is_empty() {
            continue;
        }
        let mut wmax = vec![0f32; k];
        for (_, axis, dims, v) in &ws {
            for (i, &x) in v.iter().enumerate() {
                let j = if *axis == 0 { i / dims[1] } else { i % dims[1] };
                wmax[j] = wmax[j].max(x.abs());
            }
        }
        let s = factors(am, &wmax, alpha);
        for (w, axis, dims, mut v) in ws {
            for (i, x) in v.iter_mut().enumerate() {
                let j = if axis == 0 { i / dims[1] } else { i % dims[1] };
                *x *= s[j];
            }
            let t = &mut graph.initializer[pos[&w]];
            *t = onnx::f32_tensor(&w, &t.dims.clone(), &v);
        }
        let inv: Vec<f32> = s.iter().map(|x| 1.0 / x).collect();
        let x = &site.activation;
        let inv_name = names.fresh(&format!("{x}_smooth_inv"));
        let xs = names.fresh(&format!("{x}_smoothed"));
        new_inits.push(onnx::f32_tensor(&inv_name, &[k as i64], &inv));
        let first = site.weights.iter().map(|w| w.0).min().expect("non-empty");
        let mul_name = names.fresh(&format!("{x}_smooth"));
        muls.push((
            first,
            onnx::node("Mul", &mul_name, &[x, &inv_name], &[&xs], vec![]),
        ));
        for (idx, _, _) in &site.weights {
            graph.node[*idx].input[0] = xs.clone();
        }
        done.push(x.clone());
    }
    graph.initializer.extend(new_inits);
    // Insert from the back so earlier indices stay valid.
    muls.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    for (i, n) in muls {
        graph.node.insert(i, n);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> pb::ModelProto {
        // y = x·W (MatMul) and z = x·Vᵀ (Gemm transB): one activation, two weights.
        let w = onnx::f32_tensor("W", &[3, 2], &[1.0, 2.0, 0.5, -1.0, 4.0, 0.25]);
        let v = onnx::f32_tensor("V", &[2, 3], &[1.0, 0.0, -2.0, 0.5, 3.0, 1.0]);
        pb::ModelProto {
            graph: Some(pb::GraphProto {
                node: vec![
                    onnx::node("Relu", "r", &["in"], &["x"], vec![]),
                    onnx::node("MatMul", "mm", &["x", "W"], &["y"], vec![]),
                    onnx::node(
                        "Gemm",
                        "gemm",
                        &["x", "V"],
                        &["z"],
                        vec![onnx::attr_int("transB", 1)],
                    ),
                ],
                initializer: vec![w, v],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn finds_sites_and_keeps_the_product() {
        let mut m = model();
        let sites = sites(&m, &[]);
        assert_eq!(sites.len(), 1);
        assert_eq!(
            sites[0].weights,
            vec![(1, "W".to_string(), 0), (2, "V".to_string(), 1)]
        );
        let amax = HashMap::from([("x".to_string(), vec![100.0, 1.0, 0.0])]);
        let done = apply(&mut m, &sites, &amax, 0.8, MIN_OUTLIER_RATIO).unwrap();
        // Flat channels: left alone.
        let flat = HashMap::from([("x".to_string(), vec![1.0, 2.0, 1.5])]);
        assert!(
            apply(&mut model(), &sites, &flat, 0.8, MIN_OUTLIER_RATIO)
                .unwrap()
                .is_empty()
        );
        assert_eq!(done, vec!["x".to_string()]);
        let g = m.graph.as_ref().unwrap();
        // The Mul sits before the first consumer; both consumers read its output.
        assert_eq!(g.node[1].op_type, "Mul");
        assert_eq!(g.node[2].input[0], g.node[1].output[0]);
        assert_eq!(g.node[3].input[0], g.node[1].output[0]);
        // (x / s)·(s·W) = x·W for a test row.
        let inv = onnx::tensor_f32(g.initializer.iter().find(|t| t.dims == [3]).unwrap()).unwrap();
        let w = onnx::tensor_f32(&g.initializer[0]).unwrap();
        let x = [7.0f32, -0.5, 2.0];
        let y: Vec<f32> = (0..2)
            .map(|n| (0..3).map(|k| x[k] * inv[k] * w[k * 2 + n]).sum())
            .collect();
        let y0: Vec<f32> = (0..2)
            .map(|n| {
                (0..3)
                    .map(|k| x[k] * [1.0, 2.0, 0.5, -1.0, 4.0, 0.25][k * 2 + n])
                    .sum()
            })
            .collect();
        for (a, b) in y.iter().zip(&y0) {
            assert!((a - b).abs() < 1e-5, "{y:?} vs {y0:?}");
        }
        // A channel that never moved keeps factor 1.
        assert_eq!(inv[2], 1.0);
        // The outlier channel is divided down.
        assert!(inv[0] < 0.1);
    }

    #[test]
    fn shared_weights_and_skipped_ops_are_left_alone() {
        let mut m = model();
        m.graph.as_mut().unwrap().node.push(onnx::node(
            "MatMul",
            "again",
            &["in", "W"],
            &["w2"],
            vec![],
        ));
        let s = sites(&m, &["Gemm".to_string()]);
        // W is read twice (not smoothed), V's Gemm is skipped: nothing left.
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn outlier_ratio_is_max_over_median() {
        assert_eq!(outlier_ratio(&[1.0, 2.0, 40.0]), 20.0);
        assert_eq!(outlier_ratio(&[]), 0.0);
        assert_eq!(outlier_ratio(&[0.0, 0.0, 3.0]), f32::INFINITY);
    }

    #[test]
    fn factors_balance_and_never_vanish() {
        let s = factors(&[8.0, 0.0, 1.0], &[2.0, 1.0, 0.0], 0.5);
        assert!((s[0] - 2.0).abs() < 1e-6);
        assert_eq!(s[1], 1.0);
        assert_eq!(s[2], 1.0);
    }
}
