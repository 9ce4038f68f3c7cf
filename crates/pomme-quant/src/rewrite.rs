//! Finding quantizable weights and rewriting the graph.
//!
//! The rewrite never touches the consumers of a weight: the float initializer
//! `W` is removed and a small subgraph of constants *producing a value named
//! `W`* takes its place. So `MatMul(x, W)` still reads `W`, now computed from
//! INT8 or packed INT4 data. Engines fold those constant subgraphs at load time
//! (tract always; ONNX Runtime for the INT4 unpacking, while it keeps weight
//! `DequantizeLinear` nodes unfolded so that its QDQ fusions can see them).
//!
//! ## Formats
//!
//! * **INT8**: `W_q` (int8, original shape) → `DequantizeLinear` (`W_scale`;
//!   zero point 0 — omitted per-channel, where it is the default; `axis` =
//!   output channel when per-channel).
//!   Per-axis `DequantizeLinear` needs opset ≥ 13; lower opsets are raised to 13.
//! * **INT8 static** (QDQ, placed the way ONNX Runtime fuses it into
//!   `QLinearConv` / `QGemm` / `QLinearMatMul` / `QLinearAdd`; a QDQ group is
//!   only fused when *every* input comes from a `DequantizeLinear` and the
//!   output goes to a `QuantizeLinear`, which the first version of this
//!   scheme — Q/DQ on inputs only, float bias — never satisfied):
//!   int8 weights as above with an explicit zero point (`QGemm`'s fusion
//!   requires it); `QuantizeLinear` → `DequantizeLinear` (uint8, asymmetric,
//!   per tensor) on the activation input *and* the output of each quantized
//!   `MatMul`/`Gemm`/`Conv` (a Relu that is the only consumer is folded into
//!   the output's zero point 0; graph outputs stay float); the bias as int32
//!   with scale `x_scale · w_scale`; pass-through ops (`MaxPool`, `Reshape`,
//!   `Flatten`...) re-quantized with their input's parameters, and `Add`s of
//!   two quantized values (residuals) quantized too. Tiny weights are not
//!   left float here: a float op in the chain costs more than its bytes.
//! * **INT8 dynamic**: the `MatMul`/`Gemm` node is replaced by
//!   `DynamicQuantizeLinear(x)` (shared per activation) → `MatMulInteger`
//!   (int8 `[K, N]` weights, no weight zero point) → `Cast` → `Mul` by
//!   `x_scale · w_scale` (per column) → (`Add` bias). ONNX Runtime fuses this
//!   into `DynamicQuantizeMatMul` / `MatMulIntegerToFloat`; without a per-
//!   column zero point it prepacks B (with one, it is ~1.6× slower). `Gather`
//!   tables become int8 rows gathered and then scaled by their gathered row
//!   scale, so the table is never dequantized whole.
//! * **INT4 MatMulNBits**: `com.microsoft.MatMulNBits` (bits 4, blocks along K
//!   per output column, codes `q + 8` two per byte low nibble first, default
//!   zero point 8, float scales, `accuracy_level` 4 = int8 compute).
//! * **INT4**: ONNX opset 21 has INT4 tensors and blocked `DequantizeLinear`,
//!   but tract 0.23 rejects `block_size` ("blocked quantization is not
//!   supported") and bumping a model from opset 17 to 21 changes the meaning
//!   of other ops (`ReduceL2` & co. take `axes` as an input from opset 18). So we
//!   store the 4-bit codes packed in a uint8 initializer and unpack them with
//!   opset-13 ops every engine has:
//!   `Cast(float)` → `hi = Floor(x · 1/16)`, `lo = x − 16·hi` → `Concat(lo, hi)`
//!   → `Reshape [blocks, block_size]` → `Sub 8` → `Mul Cast(scale_f16[blocks, 1])` →
//!   (`Reshape` flat, `Slice` off the padding) → `Reshape [rows, cols]` → (`Transpose`) →
//!   (`Reshape` to a Conv kernel). All arithmetic is exact on small integers.

use crate::onnx::{self, Names, pb};
use crate::scheme::{QuantizeOptions, Scheme};
use crate::weights::{
    Int4Weights, quantize_bias, quantize_int4, quantize_int8, quantize_nbits, uint8_params,
};
use pomme_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// One quantizable weight and the node(s) using it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// Name of the first node using the weight (or `OpType#index` when unnamed).
    pub node: String,
    pub op_type: String,
    /// The initializer.
    pub weight: String,
    pub shape: Vec<usize>,
    pub elements: usize,
    /// Float activation inputs of the consumers (static scheme), by node index.
    #[serde(skip)]
    pub(crate) activations: Vec<(usize, String)>,
    #[serde(skip)]
    layout: Layout,
    /// Nodes reading the weight in this slot.
    #[serde(skip)]
    uses: usize,
    /// Indices of those nodes (the integer-kernel schemes replace them).
    #[serde(skip)]
    nodes: Vec<usize>,
}

/// A weight kept float, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptFloat {
    pub node: String,
    pub op_type: String,
    pub weight: String,
    pub elements: usize,
    pub reason: String,
}

/// How a weight maps onto quantization axes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Layout {
    /// Output-channel axis for per-channel INT8.
    channel_axis: usize,
    /// For INT4: view the weight as `[rows, cols]` with the reduction axis as
    /// columns; `transposed` when that needs a transpose of a 2-D weight.
    rows: usize,
    cols: usize,
    transposed: bool,
}

const WEIGHT_OPS: [&str; 4] = ["MatMul", "Gemm", "Conv", "Gather"];

fn node_label(n: &pb::NodeProto, i: usize) -> String {
    if n.name.is_empty() {
        format!("{}#{i}", n.op_type)
    } else {
        n.name.clone()
    }
}

/// The weight slot and layout of a node, or why it cannot be quantized.
fn weight_slot(
    n: &pb::NodeProto,
    shape: &[usize],
    scheme: &Scheme,
) -> std::result::Result<(usize, Layout), String> {
    let rank = shape.len();
    // Schemes that replace the node need a plain 2-D `x · W`.
    let replaces = matches!(
        scheme,
        Scheme::Int8Dynamic { .. } | Scheme::Int4NBits { .. }
    );
    let int4 = matches!(scheme, Scheme::Int4 { .. }) || replaces;
    if replaces && n.op_type == "Gemm" {
        let plain = onnx::get_attr_int(n, "transA", 0) == 0
            && onnx::get_attr_float(n, "alpha", 1.0) == 1.0
            && onnx::get_attr_float(n, "beta", 1.0) == 1.0;
        if !plain {
            return Err("Gemm with transA, alpha or beta (not a plain x·W + C)".into());
        }
    }
    if matches!(scheme, Scheme::Int8Dynamic { .. }) && n.op_type == "Conv" {
        return Err("dynamic int8 keeps Conv float (ConvInteger is slower than float Conv on ONNX Runtime; use int8-static)".into());
    }
    let l = match n.op_type.as_str() {
        "MatMul" => {
            if rank < 2 || (int4 && rank != 2) {
                return Err(format!("MatMul weight of rank {rank} (2 needed)"));
            }
            let (k, nn) = (shape[rank - 2], shape[rank - 1]);
            Layout {
                channel_axis: rank - 1,
                rows: nn,
                cols: k,
                transposed: true,
            }
        }
        "Gemm" => {
            if rank != 2 {
                return Err(format!("Gemm weight of rank {rank}"));
            }
            if onnx::get_attr_int(n, "transB", 0) != 0 {
                Layout {
                    channel_axis: 0,
                    rows: shape[0],
                    cols: shape[1],
                    transposed: false,
                }
            } else {
                Layout {
                    channel_axis: 1,
                    rows: shape[1],
                    cols: shape[0],
                    transposed: true,
                }
            }
        }
        "Conv" => {
            if rank < 3 {
                return Err(format!("Conv weight of rank {rank}"));
            }
            Layout {
                channel_axis: 0,
                rows: shape[0],
                cols: shape[1..].iter().product(),
                transposed: false,
            }
        }
        "Gather" => {
            if onnx::get_attr_int(n, "axis", 0) != 0 {
                return Err("Gather along an axis other than 0".into());
            }
            if rank != 2 {
                return Err(format!("Gather table of rank {rank} (2 needed)"));
            }
            Layout {
                channel_axis: 0,
                rows: shape[0],
                cols: shape[1],
                transposed: false,
            }
        }
        _ => unreachable!("filtered by WEIGHT_OPS"),
    };
    let slot = if n.op_type == "Gather" { 0 } else { 1 };
    Ok((slot, l))
}

/// Every weight the scheme could quantize (`layers`), and every weight-like
/// initializer it keeps float with the reason. `--exclude` entries match an op
/// type, a node name or a weight name.
pub fn find_layers(
    model: &pb::ModelProto,
    options: &QuantizeOptions,
) -> Result<(Vec<Layer>, Vec<KeptFloat>)> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::InvalidModelFormat("model has no graph".into()))?;
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let graph_inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
    // How many node inputs read each initializer: a weight is replaced only if
    // every use is a quantized weight slot.
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let excluded = |n: &pb::NodeProto, label: &str, w: &str| {
        options
            .exclude
            .iter()
            .any(|e| e == &n.op_type || e == label || e == w)
    };
    let mut by_weight: BTreeMap<String, Layer> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut kept: Vec<KeptFloat> = Vec::new();
    let mut kept_weights: HashSet<String> = HashSet::new();
    for (idx, n) in graph.node.iter().enumerate() {
        if !WEIGHT_OPS.contains(&n.op_type.as_str())
            || !(n.domain.is_empty() || n.domain == "ai.onnx")
        {
            continue;
        }
        if n.op_type == "Gather" && (!options.quantize_gather || options.scheme.is_static()) {
            continue;
        }
        let slot = if n.op_type == "Gather" { 0 } else { 1 };
        let Some(wname) = n.input.get(slot) else {
            continue;
        };
        let Some(t) = inits.get(wname.as_str()) else {
            continue; // activation x activation, or a computed weight
        };
        let label = node_label(n, idx);
        let shape: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
        let elements = onnx::numel(&t.dims);
        let mut keep = |reason: String| {
            kept_weights.insert(wname.clone());
            kept.push(KeptFloat {
                node: label.clone(),
                op_type: n.op_type.clone(),
                weight: wname.clone(),
                elements,
                reason,
            });
        };
        if excluded(n, &label, wname) {
            keep("excluded".into());
            continue;
        }
        if !onnx::is_inline_float(t) {
            keep("not an inline FLOAT initializer".into());
            continue;
        }
        if graph_inputs.contains(wname.as_str()) || graph_outputs.contains(wname.as_str()) {
            keep("the weight is also a graph input or output".into());
            continue;
        }
        // In a QDQ graph a float op between quantized ones costs a DQ/Q pair
        // and breaks the integer chain; a tiny weight's bytes do not matter.
        if elements < options.min_elements && !options.scheme.is_static() {
            keep(format!(
                "{elements} elements < {} (tiny tensors stay float)",
                options.min_elements
            ));
            continue;
        }
        let (_, layout) = match weight_slot(n, &shape, &options.scheme) {
            Ok(v) => v,
            Err(why) => {
                keep(why);
                continue;
            }
        };
        let activation = (n.op_type != "Gather")
            .then(|| n.input.first().cloned())
            .flatten();
        match by_weight.get_mut(wname) {
            Some(layer) => {
                if layer.op_type != n.op_type || layer.layout != layout {
                    keep("weight shared by ops that quantize it differently".into());
                    continue;
                }
                layer.activations.extend(activation.map(|a| (idx, a)));
                layer.uses += 1;
                layer.nodes.push(idx);
            }
            None => {
                order.push(wname.clone());
                by_weight.insert(
                    wname.clone(),
                    Layer {
                        node: label.clone(),
                        op_type: n.op_type.clone(),
                        weight: wname.clone(),
                        shape,
                        elements,
                        activations: activation.map(|a| (idx, a)).into_iter().collect(),
                        layout,
                        uses: 1,
                        nodes: vec![idx],
                    },
                );
            }
        }
    }
    let mut layers = Vec::new();
    for w in order {
        let layer = by_weight.remove(&w).expect("inserted above");
        let quantized_uses = layer.uses;
        if kept_weights.contains(&w) {
            continue; // another consumer keeps it float
        }
        if uses.get(w.as_str()).copied().unwrap_or(0) != quantized_uses {
            kept.push(KeptFloat {
                node: layer.node,
                op_type: layer.op_type,
                weight: w,
                elements: layer.elements,
                reason: "the weight is also read by an op that is not quantized".into(),
            });
            continue;
        }
        layers.push(layer);
    }
    Ok((layers, kept))
}

/// Where each quantized weight went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizedWeight {
    pub node: String,
    pub op_type: String,
    pub weight: String,
    pub elements: usize,
    /// `int8 per-channel (axis 1)`, `int4 blocks of 32`, ...
    pub format: String,
    /// Root-mean-square of the weight quantization error, relative to the
    /// weight's RMS.
    pub relative_rms_error: f64,
}

/// Parameters chosen for one quantized activation (static scheme).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationParams {
    pub name: String,
    /// Calibrated range.
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: u8,
}

/// The result of a rewrite.
pub(crate) struct Rewritten {
    pub model: pb::ModelProto,
    pub weights: Vec<QuantizedWeight>,
    pub activations: Vec<ActivationParams>,
    pub notes: Vec<String>,
}

fn relative_rms(orig: &[f32], back: impl Iterator<Item = f32>) -> f64 {
    let (mut e, mut s) = (0f64, 0f64);
    for (a, b) in orig.iter().zip(back) {
        e += ((a - b) as f64).powi(2);
        s += (*a as f64).powi(2);
    }
    if s == 0.0 { 0.0 } else { (e / s).sqrt() }
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// Shared scalar constants of the INT4 unpacking.
struct Int4Consts {
    sixteenth: String,
    sixteen: String,
    eight: String,
}

/// Rewrites `model`, quantizing `layers` with `scheme`. `ranges` (activation
/// name → calibrated min/max) is required by the static scheme.
pub(crate) fn apply(
    model: &pb::ModelProto,
    scheme: &Scheme,
    layers: &[&Layer],
    ranges: Option<&HashMap<String, (f32, f32)>>,
) -> Result<Rewritten> {
    let mut model = model.clone();
    let mut notes = Vec::new();
    if onnx::ensure_opset(&mut model, 13) {
        notes.push(
            "default-domain opset raised to 13 (per-axis DequantizeLinear needs it)".to_string(),
        );
        model.ir_version = model.ir_version.max(7);
    }
    if matches!(scheme, Scheme::Int4NBits { .. })
        && layers
            .iter()
            .any(|l| l.op_type == "MatMul" || l.op_type == "Gemm")
    {
        onnx::ensure_domain(&mut model, onnx::MS_DOMAIN, 1);
    }
    let graph = model.graph.as_mut().expect("checked by find_layers");
    let mut names = Names::of(graph);
    let init_pos = onnx::initializer_positions(graph);
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let mut prefix_nodes: Vec<pb::NodeProto> = Vec::new();
    // Integer-kernel schemes replace the consuming node itself.
    let mut replace: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
    // Dynamic INT8: one DynamicQuantizeLinear per activation, before its first
    // consumer: activation -> (q, scale, zero point, first consumer).
    let mut dql: HashMap<String, (String, String, String, usize)> = HashMap::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut weights = Vec::new();
    let mut wscales: HashMap<String, Vec<f32>> = HashMap::new();
    let mut int4_consts: Option<Int4Consts> = None;

    for layer in layers {
        let t = &graph.initializer[init_pos[&layer.weight]];
        let w = onnx::tensor_f32(t)?;
        let wn = layer.weight.as_str();
        let format;
        let err;
        let matmul_like = layer.op_type == "MatMul" || layer.op_type == "Gemm";
        match scheme {
            Scheme::Int8Dynamic { per_channel } if matmul_like => {
                let l = layer.layout;
                // [K, N] whatever the op's layout.
                let kn = if l.transposed {
                    w.clone()
                } else {
                    transpose(&w, l.rows, l.cols)
                };
                let (k, n) = (l.cols, l.rows);
                let q = quantize_int8(&kn, &[k, n], per_channel.then_some(1));
                let nch = q.scales.len();
                let back = q
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| v as f32 * q.scales[(i % n) % nch]);
                err = if l.transposed {
                    relative_rms(&w, back)
                } else {
                    let b: Vec<f32> = back.collect();
                    relative_rms(&w, transpose(&b, k, n).into_iter())
                };
                let qn = names.fresh(&format!("{wn}_q"));
                let sn = names.fresh(&format!("{wn}_scale"));
                new_inits.push(onnx::i8_tensor(&qn, &[k as i64, n as i64], &q.values));
                let sdims: Vec<i64> = if *per_channel { vec![n as i64] } else { vec![] };
                new_inits.push(onnx::f32_tensor(&sn, &sdims, &q.scales));
                for &idx in &layer.nodes {
                    let node = &graph.node[idx];
                    let x = node.input[0].clone();
                    let e = dql.entry(x.clone()).or_insert_with(|| {
                        (
                            names.fresh(&format!("{x}_quant")),
                            names.fresh(&format!("{x}_qscale")),
                            names.fresh(&format!("{x}_qzp")),
                            idx,
                        )
                    });
                    e.3 = e.3.min(idx);
                    let (xq, xs, xz) = (e.0.clone(), e.1.clone(), e.2.clone());
                    let y = node.output[0].clone();
                    let yi = names.fresh(&format!("{y}_int"));
                    let yf = names.fresh(&format!("{y}_intf"));
                    let ys = names.fresh(&format!("{y}_qscale"));
                    let bias = node.input.get(2).filter(|c| !c.is_empty()).cloned();
                    let ymm = if bias.is_some() {
                        names.fresh(&format!("{y}_mm"))
                    } else {
                        y.clone()
                    };
                    let mut r = vec![
                        onnx::node("MatMulInteger", "", &[&xq, &qn, &xz], &[&yi], vec![]),
                        onnx::node("Cast", "", &[&yi], &[&yf], to_float()),
                        onnx::node("Mul", "", &[&xs, &sn], &[&ys], vec![]),
                        onnx::node("Mul", "", &[&yf, &ys], &[&ymm], vec![]),
                    ];
                    if let Some(c) = bias {
                        r.push(onnx::node("Add", "", &[&ymm, &c], &[&y], vec![]));
                    }
                    replace.insert(idx, r);
                }
                format = format!(
                    "int8 dynamic, {} weights (MatMulInteger)",
                    if *per_channel {
                        "per-column"
                    } else {
                        "per-tensor"
                    }
                );
            }
            Scheme::Int8Dynamic { per_channel } => {
                // Gather: int8 rows, gathered then scaled (the table is never
                // dequantized whole).
                let axis = per_channel.then_some(0);
                let q = quantize_int8(&w, &layer.shape, axis);
                let cols = layer.layout.cols.max(1);
                let nch = q.scales.len();
                err = relative_rms(
                    &w,
                    q.values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| v as f32 * q.scales[(i / cols) % nch]),
                );
                let qn = names.fresh(&format!("{wn}_q"));
                let sn = names.fresh(&format!("{wn}_scale"));
                new_inits.push(onnx::i8_tensor(&qn, &t.dims, &q.values));
                let sdims: Vec<i64> = if *per_channel {
                    vec![nch as i64, 1]
                } else {
                    vec![]
                };
                new_inits.push(onnx::f32_tensor(&sn, &sdims, &q.scales));
                for &idx in &layer.nodes {
                    let node = &graph.node[idx];
                    let ids = node.input[1].clone();
                    let y = node.output[0].clone();
                    let gq = names.fresh(&format!("{y}_q"));
                    let gf = names.fresh(&format!("{y}_qf"));
                    let mut r = vec![
                        onnx::node("Gather", "", &[&qn, &ids], &[&gq], vec![]),
                        onnx::node("Cast", "", &[&gq], &[&gf], to_float()),
                    ];
                    if *per_channel {
                        let gs = names.fresh(&format!("{y}_qscale"));
                        r.push(onnx::node("Gather", "", &[&sn, &ids], &[&gs], vec![]));
                        r.push(onnx::node("Mul", "", &[&gf, &gs], &[&y], vec![]));
                    } else {
                        r.push(onnx::node("Mul", "", &[&gf, &sn], &[&y], vec![]));
                    }
                    replace.insert(idx, r);
                }
                format = format!(
                    "int8 rows gathered then scaled ({})",
                    if *per_channel {
                        "per-row"
                    } else {
                        "per-tensor"
                    }
                );
            }
            Scheme::Int4NBits { block_size } if matmul_like => {
                let l = layer.layout;
                let kn = if l.transposed {
                    w.clone()
                } else {
                    transpose(&w, l.rows, l.cols)
                };
                let (k, n) = (l.cols, l.rows);
                let q = quantize_nbits(&kn, k, n, *block_size);
                err = relative_rms(&kn, q.dequantized.iter().copied());
                let bn = names.fresh(&format!("{wn}_q4"));
                let sn = names.fresh(&format!("{wn}_scale"));
                new_inits.push(onnx::u8_tensor(
                    &bn,
                    &[n as i64, q.blocks as i64, (*block_size / 2) as i64],
                    &q.packed,
                ));
                new_inits.push(onnx::f32_tensor(&sn, &[(n * q.blocks) as i64], &q.scales));
                for &idx in &layer.nodes {
                    let node = &graph.node[idx];
                    let x = node.input[0].clone();
                    let y = node.output[0].clone();
                    let bias = node.input.get(2).filter(|c| !c.is_empty()).cloned();
                    let ymm = if bias.is_some() {
                        names.fresh(&format!("{y}_mm"))
                    } else {
                        y.clone()
                    };
                    let mut nb = onnx::node(
                        "MatMulNBits",
                        "",
                        &[&x, &bn, &sn],
                        &[&ymm],
                        vec![
                            onnx::attr_int("K", k as i64),
                            onnx::attr_int("N", n as i64),
                            onnx::attr_int("bits", 4),
                            onnx::attr_int("block_size", *block_size as i64),
                            // int8 compute of the activations: the fast CPU path.
                            onnx::attr_int("accuracy_level", 4),
                        ],
                    );
                    nb.domain = onnx::MS_DOMAIN.to_string();
                    let mut r = vec![nb];
                    if let Some(c) = bias {
                        r.push(onnx::node("Add", "", &[&ymm, &c], &[&y], vec![]));
                    }
                    replace.insert(idx, r);
                }
                format = format!("int4 MatMulNBits blocks of {block_size}");
            }
            Scheme::Int8 { per_channel } | Scheme::Int8Static { per_channel, .. } => {
                let axis = per_channel.then_some(layer.layout.channel_axis);
                let q = quantize_int8(&w, &layer.shape, axis);
                let inner: usize = match axis {
                    Some(a) => layer.shape[a + 1..].iter().product(),
                    None => w.len(),
                };
                let nch = q.scales.len();
                err = relative_rms(
                    &w,
                    q.values
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| v as f32 * q.scales[(i / inner.max(1)) % nch]),
                );
                // Short suffixes and unnamed nodes: on small models, names
                // are a visible share of the file.
                let qn = names.fresh(&format!("{wn}_q"));
                let sn = names.fresh(&format!("{wn}_scale"));
                let pdims: Vec<i64> = if axis.is_some() {
                    vec![nch as i64]
                } else {
                    vec![]
                };
                new_inits.push(onnx::i8_tensor(&qn, &t.dims, &q.values));
                new_inits.push(onnx::f32_tensor(&sn, &pdims, &q.scales));
                let attrs = axis
                    .map(|a| vec![onnx::attr_int("axis", a as i64)])
                    .unwrap_or_default();
                // The zero point is optional and 0 by default; per-tensor keeps
                // an explicit int8 one because tract's per-tensor path reads its
                // type from it (and it is one byte). The static scheme always
                // has one, as ONNX Runtime's quantizer writes it.
                let inputs: Vec<String> = if axis.is_some() && !scheme.is_static() {
                    vec![qn, sn]
                } else {
                    let zn = names.fresh(&format!("{wn}_zp"));
                    new_inits.push(onnx::i8_tensor(&zn, &pdims, &vec![0; nch]));
                    vec![qn, sn, zn]
                };
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                prefix_nodes.push(onnx::node("DequantizeLinear", "", &refs, &[wn], attrs));
                wscales.insert(layer.weight.clone(), q.scales);
                format = match axis {
                    Some(a) => format!("int8 per-channel (axis {a})"),
                    None => "int8 per-tensor".to_string(),
                };
            }
            Scheme::Int4 { block_size } | Scheme::Int4NBits { block_size } => {
                let l = layer.layout;
                let m = if l.transposed {
                    transpose(&w, l.cols, l.rows)
                } else {
                    w.clone()
                };
                let q = quantize_int4(&m, l.rows, l.cols, *block_size);
                let back = q.dequantize();
                err = if l.transposed {
                    relative_rms(&w, transpose(&back, l.rows, l.cols).into_iter())
                } else {
                    relative_rms(&w, back.into_iter())
                };
                let consts = int4_consts.get_or_insert_with(|| {
                    let c = Int4Consts {
                        sixteenth: names.fresh("q4_one_sixteenth"),
                        sixteen: names.fresh("q4_sixteen"),
                        eight: names.fresh("q4_eight"),
                    };
                    new_inits.push(onnx::f32_tensor(&c.sixteenth, &[], &[0.0625]));
                    new_inits.push(onnx::f32_tensor(&c.sixteen, &[], &[16.0]));
                    new_inits.push(onnx::f32_tensor(&c.eight, &[], &[8.0]));
                    c
                });
                int4_unpack(
                    wn,
                    weights.len(),
                    &t.dims,
                    &q,
                    l.transposed,
                    consts,
                    &mut names,
                    &mut new_inits,
                    &mut prefix_nodes,
                );
                format = format!("int4 blocks of {block_size} (uint8-packed)");
            }
        }
        removed.insert(layer.weight.clone());
        weights.push(QuantizedWeight {
            node: layer.node.clone(),
            op_type: layer.op_type.clone(),
            weight: layer.weight.clone(),
            elements: layer.elements,
            format,
            relative_rms_error: err,
        });
    }

    let mut activations = Vec::new();
    let old_nodes = std::mem::take(&mut graph.node);
    let mut nodes = prefix_nodes;
    if scheme.is_static() {
        let ranges = ranges.ok_or_else(|| {
            Error::Internal("static quantization without calibration ranges".into())
        })?;
        let ctx = StaticCtx {
            layers,
            wscales: &wscales,
            ranges,
            graph_outputs: graph.output.iter().map(|v| v.name.clone()).collect(),
            inits: graph
                .initializer
                .iter()
                .map(|t| (t.name.clone(), t))
                .collect(),
        };
        let (placed, used_bias) = place_qdq(
            old_nodes,
            &ctx,
            &mut names,
            &mut new_inits,
            &mut activations,
            &mut notes,
        )?;
        nodes.extend(placed);
        removed.extend(used_bias);
    } else {
        let mut pre: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
        let mut dql: Vec<_> = dql.into_iter().collect();
        dql.sort_by_key(|(x, v)| (v.3, x.clone()));
        for (x, (q, s, z, first)) in dql {
            pre.entry(first).or_default().push(onnx::node(
                "DynamicQuantizeLinear",
                "",
                &[&x],
                &[&q, &s, &z],
                vec![],
            ));
        }
        for (i, n) in old_nodes.into_iter().enumerate() {
            if let Some(p) = pre.remove(&i) {
                nodes.extend(p);
            }
            match replace.remove(&i) {
                Some(r) => nodes.extend(r),
                None => nodes.push(n),
            }
        }
    }
    graph.node = nodes;
    graph.initializer.retain(|t| !removed.contains(&t.name));
    graph.initializer.extend(new_inits);
    // Stale type annotations of replaced weights would confuse shape inference.
    graph.value_info.retain(|v| !removed.contains(&v.name));
    Ok(Rewritten {
        model,
        weights,
        activations,
        notes,
    })
}

fn to_float() -> Vec<pb::AttributeProto> {
    vec![onnx::attr_int("to", onnx::FLOAT as i64)]
}

/// Ops whose output is a reordering or a max of their input: in a QDQ graph
/// they take their input's quantization parameters (ONNX Runtime then runs
/// them on uint8, or drops the Q/DQ pair around them).
const PASS_THROUGH: [&str; 6] = [
    "MaxPool",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
];

/// What the static QDQ placement reads.
struct StaticCtx<'a> {
    layers: &'a [&'a Layer],
    wscales: &'a HashMap<String, Vec<f32>>,
    ranges: &'a HashMap<String, (f32, f32)>,
    graph_outputs: HashSet<String>,
    inits: HashMap<String, &'a pb::TensorProto>,
}

/// The value whose range quantizes the output of node `i`: its output, or
/// the output of a `Relu` that is its only consumer (the Relu is then folded
/// into the quantization: zero point 0 clamps exactly as Relu does). `None`
/// for graph outputs, which stay float (quantizing the logits could only
/// change decisions).
fn qdq_output(
    nodes: &[pb::NodeProto],
    consumers: &HashMap<&str, Vec<usize>>,
    graph_outputs: &HashSet<String>,
    i: usize,
) -> Option<(String, Option<usize>)> {
    let y = nodes[i].output.first()?;
    if graph_outputs.contains(y) {
        return None;
    }
    match consumers.get(y.as_str()).map(Vec::as_slice) {
        Some(&[c])
            if nodes[c].op_type == "Relu"
                && nodes[c].domain.is_empty()
                && !graph_outputs.contains(&nodes[c].output[0]) =>
        {
            Some((nodes[c].output[0].clone(), Some(c)))
        }
        _ => Some((y.clone(), None)),
    }
}

fn consumers_of(nodes: &[pb::NodeProto]) -> HashMap<&str, Vec<usize>> {
    let mut m: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for x in &n.input {
            m.entry(x.as_str()).or_default().push(i);
        }
    }
    m
}

/// The activations the static scheme calibrates: the input and the (Relu-
/// folded) output of every quantized op, and the outputs of `Add`s of two
/// activations (residual connections, quantized when both inputs are).
pub(crate) fn static_activations(model: &pb::ModelProto, layers: &[Layer]) -> Vec<String> {
    let Some(graph) = model.graph.as_ref() else {
        return Vec::new();
    };
    let nodes = &graph.node;
    let consumers = consumers_of(nodes);
    let outs: HashSet<String> = graph.output.iter().map(|v| v.name.clone()).collect();
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut acts: Vec<String> = Vec::new();
    for l in layers {
        for (idx, a) in &l.activations {
            acts.push(a.clone());
            acts.extend(qdq_output(nodes, &consumers, &outs, *idx).map(|(y, _)| y));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.op_type == "Add"
            && n.domain.is_empty()
            && n.input.len() == 2
            && n.input.iter().all(|x| !inits.contains(x.as_str()))
        {
            acts.extend(qdq_output(nodes, &consumers, &outs, i).map(|(y, _)| y));
        }
    }
    acts.sort();
    acts.dedup();
    acts
}

/// Quantization parameters of one activation, with their initializers.
#[derive(Clone)]
struct QParams {
    scale: f32,
    scale_name: String,
    zp_name: String,
}

/// Places Q/DQ the way ONNX Runtime fuses them into QLinearConv / QGemm /
/// QLinearMatMul / QLinearAdd: `Q → DQ` on the activation input and on the
/// output of every quantized op (a following Relu folded in), int8 weights
/// behind `DequantizeLinear` (placed by the caller), int32 bias behind
/// `DequantizeLinear` with scale `x_scale · w_scale`, and pass-through ops
/// (MaxPool, Reshape...) re-quantized with their input's parameters.
/// Returns the nodes and the float bias initializers it replaced.
fn place_qdq(
    old: Vec<pb::NodeProto>,
    ctx: &StaticCtx<'_>,
    names: &mut Names,
    inits: &mut Vec<pb::TensorProto>,
    activations: &mut Vec<ActivationParams>,
    notes: &mut Vec<String>,
) -> Result<(Vec<pb::NodeProto>, Vec<String>)> {
    let qops: HashMap<usize, &Layer> = ctx
        .layers
        .iter()
        .filter(|l| l.op_type != "Gather")
        .flat_map(|l| l.nodes.iter().map(move |&i| (i, *l)))
        .collect();
    let consumers = consumers_of(&old);
    // Owned copy so `old` can be consumed below.
    let consumers: HashMap<String, Vec<usize>> = consumers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let cref: HashMap<&str, Vec<usize>> = consumers
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let outputs: Vec<Option<(String, Option<usize>)>> = (0..old.len())
        .map(|i| qdq_output(&old, &cref, &ctx.graph_outputs, i))
        .collect();
    let mut skip: HashSet<usize> = HashSet::new();
    // Values that are DequantizeLinear outputs, with their parameters.
    let mut quantized: HashMap<String, QParams> = HashMap::new();
    // Float activation -> its DQ output, shared between consumers.
    let mut input_pairs: HashMap<String, String> = HashMap::new();
    let mut used_bias: Vec<String> = Vec::new();
    let mut out: Vec<pb::NodeProto> = Vec::with_capacity(old.len() * 2);

    let new_params = |a: &str,
                      names: &mut Names,
                      inits: &mut Vec<pb::TensorProto>,
                      activations: &mut Vec<ActivationParams>|
     -> Option<QParams> {
        let &(lo, hi) = ctx.ranges.get(a)?;
        let (scale, zp) = uint8_params(lo, hi);
        let sn = names.fresh(&format!("{a}_scale"));
        let zn = names.fresh(&format!("{a}_zp"));
        inits.push(onnx::f32_tensor(&sn, &[], &[scale]));
        inits.push(onnx::u8_tensor(&zn, &[], &[zp]));
        activations.push(ActivationParams {
            name: a.to_string(),
            min: lo,
            max: hi,
            scale,
            zero_point: zp,
        });
        Some(QParams {
            scale,
            scale_name: sn,
            zp_name: zn,
        })
    };
    // Renames `n`'s output and appends `n`, Q and DQ; the DQ writes `target`.
    let requantize = |mut n: pb::NodeProto,
                      target: &str,
                      p: &QParams,
                      names: &mut Names,
                      out: &mut Vec<pb::NodeProto>| {
        let f = names.fresh(&format!("{}_f", n.output[0]));
        let q = names.fresh(&format!("{target}_q"));
        n.output[0] = f.clone();
        out.push(n);
        out.push(onnx::node(
            "QuantizeLinear",
            "",
            &[&f, &p.scale_name, &p.zp_name],
            &[&q],
            vec![],
        ));
        out.push(onnx::node(
            "DequantizeLinear",
            "",
            &[&q, &p.scale_name, &p.zp_name],
            &[target],
            vec![],
        ));
    };

    for (i, mut n) in old.into_iter().enumerate() {
        if skip.contains(&i) {
            continue;
        }
        if let Some(layer) = qops.get(&i) {
            let x = n.input[0].clone();
            let xp = if let Some(p) = quantized.get(&x) {
                Some(p.clone())
            } else if let Some(dq) = input_pairs.get(&x) {
                n.input[0] = dq.clone();
                quantized.get(dq).cloned()
            } else if let Some(p) = new_params(&x, names, inits, activations) {
                let q = names.fresh(&format!("{x}_q"));
                let dq = names.fresh(&format!("{x}_dq"));
                out.push(onnx::node(
                    "QuantizeLinear",
                    "",
                    &[&x, &p.scale_name, &p.zp_name],
                    &[&q],
                    vec![],
                ));
                out.push(onnx::node(
                    "DequantizeLinear",
                    "",
                    &[&q, &p.scale_name, &p.zp_name],
                    &[&dq],
                    vec![],
                ));
                input_pairs.insert(x.clone(), dq.clone());
                quantized.insert(dq.clone(), p.clone());
                n.input[0] = dq;
                Some(p)
            } else {
                notes.push(format!(
                    "activation '{x}' has no calibration range (not float?): left float"
                ));
                None
            };
            // Bias: int32 with scale x_scale · w_scale, as the kernels add it.
            if let (Some(xp), Some(b)) = (&xp, n.input.get(2).cloned())
                && (n.op_type == "Conv" || n.op_type == "Gemm")
                && let Some(t) = ctx.inits.get(b.as_str())
                && onnx::is_inline_float(t)
                && t.dims.len() == 1
                && let Some(ws) = ctx.wscales.get(&layer.weight)
                && (ws.len() == 1 || ws.len() as i64 == t.dims[0])
            {
                let bv = onnx::tensor_f32(t)?;
                let (q, s) = quantize_bias(&bv, xp.scale, ws);
                let qn = names.fresh(&format!("{b}_q"));
                let sn = names.fresh(&format!("{b}_scale"));
                let zn = names.fresh(&format!("{b}_zp"));
                let dq = names.fresh(&format!("{b}_dq"));
                inits.push(onnx::i32_tensor(&qn, &t.dims, &q));
                inits.push(onnx::f32_tensor(&sn, &t.dims, &s));
                inits.push(onnx::i32_tensor(&zn, &t.dims, &vec![0; q.len()]));
                out.push(onnx::node(
                    "DequantizeLinear",
                    "",
                    &[&qn, &sn, &zn],
                    &[&dq],
                    vec![onnx::attr_int("axis", 0)],
                ));
                n.input[2] = dq;
                if consumers.get(&b).is_some_and(|c| c.len() == 1) {
                    used_bias.push(b);
                }
            }
            if xp.is_some()
                && let Some((target, relu)) = &outputs[i]
                && let Some(p) = new_params(target, names, inits, activations)
            {
                if let Some(r) = relu {
                    skip.insert(*r);
                }
                requantize(n, target, &p, names, &mut out);
                quantized.insert(target.clone(), p);
            } else {
                out.push(n);
            }
            continue;
        }
        let single_out = n.output.len() == 1 && !ctx.graph_outputs.contains(&n.output[0]);
        if PASS_THROUGH.contains(&n.op_type.as_str())
            && n.domain.is_empty()
            && single_out
            && let Some(p) = n.input.first().and_then(|x| quantized.get(x)).cloned()
        {
            let y = n.output[0].clone();
            requantize(n, &y, &p, names, &mut out);
            quantized.insert(y, p);
            continue;
        }
        if n.op_type == "Add"
            && n.domain.is_empty()
            && n.input.len() == 2
            && n.input.iter().all(|x| quantized.contains_key(x))
            && let Some((target, relu)) = &outputs[i]
            && let Some(p) = new_params(target, names, inits, activations)
        {
            if let Some(r) = relu {
                skip.insert(*r);
            }
            requantize(n, target, &p, names, &mut out);
            quantized.insert(target.clone(), p);
            continue;
        }
        out.push(n);
    }
    Ok((out, used_bias))
}

/// Emits the INT4 unpacking subgraph whose last node outputs `wn`.
///
/// Names are short (`q4_<layer>_<step>`) and nodes unnamed: with a dozen
/// nodes per weight, long names would cost more bytes than a small layer's
/// 4-bit data. Scales are stored as float16 (rounded before the codes are
/// computed, so codes and stored scales agree) and cast to float in-graph.
#[allow(clippy::too_many_arguments)]
fn int4_unpack(
    wn: &str,
    layer_no: usize,
    dims: &[i64],
    q: &Int4Weights,
    transposed: bool,
    c: &Int4Consts,
    names: &mut Names,
    inits: &mut Vec<pb::TensorProto>,
    nodes: &mut Vec<pb::NodeProto>,
) {
    let total = q.padded;
    let nblocks = total / q.block_size;
    let mut step = 0usize;
    let mut tmp = |names: &mut Names| {
        step += 1;
        names.fresh(&format!("q4_{layer_no}_{step}"))
    };
    let packed = tmp(names);
    let scales16 = tmp(names);
    let blocks_shape = tmp(names);
    let matrix_shape = tmp(names);
    let flat_shape = tmp(names);
    inits.push(onnx::u8_tensor(&packed, &[(total / 2) as i64], &q.packed));
    inits.push(onnx::f16_tensor(&scales16, &[nblocks as i64, 1], &q.scales));
    inits.push(onnx::i64_tensor(
        &blocks_shape,
        &[2],
        &[nblocks as i64, q.block_size as i64],
    ));
    inits.push(onnx::i64_tensor(
        &matrix_shape,
        &[2],
        &[q.rows as i64, q.cols as i64],
    ));
    // (op, inputs, attributes); "$" is the previous step's output.
    let prev = || "$".to_string();
    let mut steps: Vec<(&str, Vec<String>, Vec<pb::AttributeProto>)> = Vec::new();
    let f = tmp(names);
    let hi = tmp(names);
    let lo = tmp(names);
    let scales = tmp(names);
    let to_float = || vec![onnx::attr_int("to", onnx::FLOAT as i64)];
    let mut emit = |op: &str, inputs: &[&str], out: &str, attrs| {
        nodes.push(onnx::node(op, "", inputs, &[out], attrs));
    };
    emit("Cast", &[&scales16], &scales, to_float());
    emit("Cast", &[&packed], &f, to_float());
    // hi = floor(f / 16), lo = f - 16 hi: exact for integers 0..255.
    let t1 = tmp(names);
    emit("Mul", &[&f, &c.sixteenth], &t1, vec![]);
    emit("Floor", &[&t1], &hi, vec![]);
    let t2 = tmp(names);
    emit("Mul", &[&hi, &c.sixteen], &t2, vec![]);
    emit("Sub", &[&f, &t2], &lo, vec![]);
    steps.push(("Concat", vec![lo, hi], vec![onnx::attr_int("axis", 0)]));
    steps.push(("Reshape", vec![prev(), blocks_shape], vec![]));
    steps.push(("Sub", vec![prev(), c.eight.clone()], vec![]));
    steps.push(("Mul", vec![prev(), scales], vec![]));
    if q.padded != q.rows * q.cols {
        // Drop the padding of the last block.
        let starts = tmp(names);
        let ends = tmp(names);
        inits.push(onnx::i64_tensor(&starts, &[1], &[0]));
        inits.push(onnx::i64_tensor(&ends, &[1], &[(q.rows * q.cols) as i64]));
        inits.push(onnx::i64_tensor(&flat_shape, &[1], &[total as i64]));
        steps.push(("Reshape", vec![prev(), flat_shape], vec![]));
        steps.push(("Slice", vec![prev(), starts, ends], vec![]));
    }
    steps.push(("Reshape", vec![prev(), matrix_shape], vec![]));
    if transposed {
        steps.push((
            "Transpose",
            vec![prev()],
            vec![onnx::attr_ints("perm", &[1, 0])],
        ));
    }
    if dims.len() != 2 {
        let shape = tmp(names);
        inits.push(onnx::i64_tensor(&shape, &[dims.len() as i64], dims));
        steps.push(("Reshape", vec![prev(), shape], vec![]));
    }
    let last = steps.len() - 1;
    let mut before = String::new();
    for (i, (op, inputs, attrs)) in steps.into_iter().enumerate() {
        let out = if i == last {
            wn.to_string()
        } else {
            tmp(names)
        };
        let inputs: Vec<String> = inputs
            .into_iter()
            .map(|s| if s == "$" { before.clone() } else { s })
            .collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        nodes.push(onnx::node(op, "", &refs, &[&out], attrs));
        before = out;
    }
}

/// How much weight the model's convolutions and matmuls hold (what
/// [`Scheme::for_target`](crate::Scheme::for_target) chooses by).
pub fn profile(model: &pb::ModelProto) -> crate::scheme::Profile {
    let mut p = crate::scheme::Profile::default();
    let Some(graph) = model.graph.as_ref() else {
        return p;
    };
    let inits: HashMap<&str, &pb::TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    for n in &graph.node {
        let Some(t) = n.input.get(1).and_then(|w| inits.get(w.as_str())) else {
            continue;
        };
        match n.op_type.as_str() {
            "Conv" => p.conv_weights += onnx::numel(&t.dims),
            "MatMul" | "Gemm" => p.matmul_weights += onnx::numel(&t.dims),
            _ => {}
        }
    }
    p
}
