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
//! * **INT8 static**: as above, plus `QuantizeLinear` → `DequantizeLinear`
//!   (uint8, asymmetric, per tensor) inserted on the activation input (input 0)
//!   of each quantized `MatMul`/`Gemm`/`Conv`, shared between consumers.
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
use crate::weights::{Int4Weights, quantize_int4, quantize_int8, uint8_params};
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
    let int4 = matches!(scheme, Scheme::Int4 { .. });
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
        if elements < options.min_elements {
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
    let graph = model.graph.as_mut().expect("checked by find_layers");
    let mut names = Names::of(graph);
    let init_pos: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let mut prefix_nodes: Vec<pb::NodeProto> = Vec::new();
    let mut removed: HashSet<String> = HashSet::new();
    let mut weights = Vec::new();
    let mut int4_consts: Option<Int4Consts> = None;

    for layer in layers {
        let t = &graph.initializer[init_pos[&layer.weight]];
        let w = onnx::tensor_f32(t)?;
        let wn = layer.weight.as_str();
        let format;
        let err;
        match scheme {
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
                // type from it (and it is one byte).
                let inputs: Vec<String> = if axis.is_some() {
                    vec![qn, sn]
                } else {
                    let zn = names.fresh(&format!("{wn}_zp"));
                    new_inits.push(onnx::i8_tensor(&zn, &[], &[0]));
                    vec![qn, sn, zn]
                };
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                prefix_nodes.push(onnx::node("DequantizeLinear", "", &refs, &[wn], attrs));
                format = match axis {
                    Some(a) => format!("int8 per-channel (axis {a})"),
                    None => "int8 per-tensor".to_string(),
                };
            }
            Scheme::Int4 { block_size } => {
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

    // Activations: one Q/DQ pair per activation, emitted just before its first
    // quantized consumer (which comes after the producer, so order stays valid).
    let mut activations = Vec::new();
    let mut act_nodes: HashMap<usize, Vec<pb::NodeProto>> = HashMap::new();
    let mut rewire: HashMap<usize, String> = HashMap::new();
    if scheme.is_static() {
        let ranges = ranges.ok_or_else(|| {
            Error::Internal("static quantization without calibration ranges".into())
        })?;
        let mut done: HashMap<String, String> = HashMap::new();
        let mut consumers: Vec<(usize, String)> = layers
            .iter()
            .flat_map(|l| l.activations.iter().cloned())
            .collect();
        consumers.sort();
        for (idx, a) in consumers {
            let Some(&(lo, hi)) = ranges.get(&a) else {
                notes.push(format!(
                    "activation '{a}' has no calibration range (not float?): left float"
                ));
                continue;
            };
            if let Some(dq) = done.get(&a) {
                rewire.insert(idx, dq.clone());
                continue;
            }
            let (scale, zp) = uint8_params(lo, hi);
            let sn = names.fresh(&format!("{a}_scale"));
            let zn = names.fresh(&format!("{a}_zp"));
            let qn = names.fresh(&format!("{a}_q"));
            let dqn = names.fresh(&format!("{a}_dq"));
            new_inits.push(onnx::f32_tensor(&sn, &[], &[scale]));
            new_inits.push(onnx::u8_tensor(&zn, &[], &[zp]));
            act_nodes.entry(idx).or_default().extend([
                onnx::node("QuantizeLinear", "", &[&a, &sn, &zn], &[&qn], vec![]),
                onnx::node("DequantizeLinear", "", &[&qn, &sn, &zn], &[&dqn], vec![]),
            ]);
            rewire.insert(idx, dqn.clone());
            done.insert(a.clone(), dqn);
            activations.push(ActivationParams {
                name: a,
                min: lo,
                max: hi,
                scale,
                zero_point: zp,
            });
        }
    }

    let old_nodes = std::mem::take(&mut graph.node);
    let mut nodes = prefix_nodes;
    for (i, mut n) in old_nodes.into_iter().enumerate() {
        if let Some(extra) = act_nodes.remove(&i) {
            nodes.extend(extra);
        }
        if let Some(dq) = rewire.get(&i) {
            n.input[0] = dq.clone();
        }
        nodes.push(n);
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
