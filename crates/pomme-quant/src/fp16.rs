//! Float16 conversion of a float32 ONNX model, keeping float32 inputs and
//! outputs (what `onnxconverter-common`'s `convert_float_to_float16(...,
//! keep_io_types=True)` does).
//!
//! Every FLOAT initializer, `Constant` value and `ConstantOfShape` value
//! becomes FLOAT16 (finite values clamped to ±65504 first, so `-3.4e38` attention
//! masks stay finite), `Cast(to = FLOAT)` becomes `Cast(to = FLOAT16)`, a
//! `Cast` to FLOAT16 follows each float input and a `Cast` back to FLOAT
//! precedes each float output, so callers keep sending and receiving f32. The
//! intermediate `value_info` is dropped (engines infer it again). Inputs that
//! an operator requires in float32 (`Resize`'s scales, `Upsample`'s scales)
//! are left alone. Models with control flow (`If`, `Loop`, `Scan` subgraphs)
//! are refused: their bodies would need the same rewrite.
//!
//! Reduced precision is opt-in everywhere it is used (`--precision f16`); the
//! error it costs is measured, not assumed (BENCHMARKS.md).

use crate::onnx::{FLOAT, FLOAT16, pb};
use pomme_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

const F16_MAX: f32 = 65504.0;

fn to_f16_bits(v: f32) -> [u8; 2] {
    let v = if v.is_finite() {
        v.clamp(-F16_MAX, F16_MAX)
    } else {
        v
    };
    half::f16::from_f32(v).to_le_bytes()
}

/// Rewrites a FLOAT tensor as FLOAT16 in place; other types are left alone.
fn tensor_to_f16(t: &mut pb::TensorProto) -> Result<()> {
    if t.data_type != FLOAT {
        return Ok(());
    }
    // Refuses external data with a one-line error.
    let values = crate::onnx::tensor_f32(t)?;
    t.raw_data = values.iter().flat_map(|&v| to_f16_bits(v)).collect();
    t.float_data.clear();
    t.data_type = FLOAT16;
    Ok(())
}

fn elem_type(v: &pb::ValueInfoProto) -> Option<i32> {
    let pb::type_proto::Value::TensorType(t) = v.r#type.as_ref()?.value.as_ref()?;
    Some(t.elem_type)
}

fn cast(input: &str, output: &str, to: i32, name: String) -> pb::NodeProto {
    pb::NodeProto {
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        name,
        op_type: "Cast".into(),
        attribute: vec![crate::onnx::attr_int("to", to as i64)],
        ..Default::default()
    }
}

/// The float16 version of `model`, with float32 inputs and outputs.
pub fn to_fp16(model: &pb::ModelProto) -> Result<pb::ModelProto> {
    let mut model = model.clone();
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| Error::InvalidModelFormat("the model has no graph".into()))?;

    // Initializers an operator needs in float32.
    let mut keep_f32: HashSet<String> = HashSet::new();
    for n in &graph.node {
        if n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            return Err(Error::UnsupportedPrecision(format!(
                "fp16 conversion does not handle control flow ({} node '{}' has a subgraph)",
                n.op_type, n.name
            )));
        }
        let scales = match n.op_type.as_str() {
            "Resize" => n.input.get(2),
            "Upsample" => n.input.get(1),
            _ => None,
        };
        if let Some(s) = scales.filter(|s| !s.is_empty()) {
            keep_f32.insert(s.clone());
        }
    }
    for init in &mut graph.initializer {
        if !keep_f32.contains(&init.name) {
            tensor_to_f16(init)?;
        }
    }
    for n in &mut graph.node {
        for a in &mut n.attribute {
            match (n.op_type.as_str(), a.name.as_str()) {
                ("Constant", "value") | ("ConstantOfShape", "value") => {
                    if let Some(t) = a.t.as_mut() {
                        tensor_to_f16(t)?;
                    }
                }
                ("Cast", "to") if a.i == FLOAT as i64 => a.i = FLOAT16 as i64,
                _ => {}
            }
        }
    }

    // Float inputs: the graph reads `<name>__fp16`, made by a Cast.
    let initializer_names: HashSet<String> =
        graph.initializer.iter().map(|t| t.name.clone()).collect();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut head = Vec::new();
    for input in &graph.input {
        if elem_type(input) == Some(FLOAT) && !initializer_names.contains(&input.name) {
            let inner = format!("{}__fp16", input.name);
            head.push(cast(
                &input.name,
                &inner,
                FLOAT16,
                format!("{}__to_fp16", input.name),
            ));
            renamed.insert(input.name.clone(), inner);
        }
    }
    for n in &mut graph.node {
        for i in &mut n.input {
            if let Some(r) = renamed.get(i) {
                *i = r.clone();
            }
        }
    }

    // Float outputs: the graph makes `<name>__fp16`, a Cast makes `<name>`.
    let mut tail = Vec::new();
    for output in &graph.output {
        if elem_type(output) != Some(FLOAT) {
            continue;
        }
        let inner = format!("{}__fp16", output.name);
        // An output that is also a float input passes through the two Casts.
        let source = renamed
            .get(&output.name)
            .cloned()
            .unwrap_or_else(|| inner.clone());
        for n in &mut graph.node {
            for o in &mut n.output {
                if *o == output.name {
                    *o = inner.clone();
                }
            }
            for i in &mut n.input {
                if *i == output.name {
                    *i = inner.clone();
                }
            }
        }
        tail.push(cast(
            &source,
            &output.name,
            FLOAT,
            format!("{}__to_fp32", output.name),
        ));
    }
    let body = std::mem::take(&mut graph.node);
    graph.node = head.into_iter().chain(body).chain(tail).collect();
    graph.value_info.clear();
    Ok(model)
}

/// The fp16 version of the ONNX file at `path`, converted once into `dir`
/// (named by the SHA-256 of the source bytes) and reused afterwards.
pub fn convert_file_cached(path: &Path, dir: &Path) -> Result<PathBuf> {
    let (model, bytes) = crate::onnx::load_model(path)?;
    let mut h = Sha256::new();
    h.update(b"pomme-fp16 v1\0");
    h.update(&bytes);
    let out = dir.join(format!("{:x}.onnx", h.finalize()));
    if out.is_file() {
        return Ok(out);
    }
    let converted = to_fp16(&model)?;
    crate::onnx::write_atomic(&out, &crate::onnx::encode_model(&converted))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{f32_tensor, tensor_f32};

    fn value(name: &str, elem: i32) -> pb::ValueInfoProto {
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: elem,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: format!("{op}_{}", outputs[0]),
            ..Default::default()
        }
    }

    fn model(nodes: Vec<pb::NodeProto>, inits: Vec<pb::TensorProto>) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: 8,
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: inits,
                input: vec![value("x", FLOAT)],
                output: vec![value("y", FLOAT)],
                value_info: vec![value("h", FLOAT)],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn weights_become_f16_and_io_stays_f32() {
        let m = model(
            vec![
                node("Add", &["x", "w"], &["h"]),
                node("Relu", &["h"], &["y"]),
            ],
            vec![f32_tensor("w", &[2], &[1.5, -1e30])],
        );
        let c = to_fp16(&m).unwrap();
        let g = c.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Cast", "Add", "Relu", "Cast"]);
        assert_eq!(g.node[0].input, ["x"]);
        assert_eq!(g.node[0].attribute[0].i, FLOAT16 as i64);
        assert_eq!(g.node[1].input, ["x__fp16", "w"]);
        assert_eq!(g.node[2].output, ["y__fp16"]);
        assert_eq!(g.node[3].input, ["y__fp16"]);
        assert_eq!(g.node[3].output, ["y"]);
        assert_eq!(g.node[3].attribute[0].i, FLOAT as i64);
        let w = &g.initializer[0];
        assert_eq!(w.data_type, FLOAT16);
        let back: Vec<f32> = w
            .raw_data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(back, [1.5, -65504.0], "finite values are clamped");
        assert!(g.value_info.is_empty());
        assert_eq!(elem_type(&g.input[0]), Some(FLOAT));
        assert_eq!(elem_type(&g.output[0]), Some(FLOAT));
    }

    #[test]
    fn casts_constants_and_resize_scales() {
        let mut to_float = node("Cast", &["x"], &["c"]);
        to_float.attribute = vec![crate::onnx::attr_int("to", FLOAT as i64)];
        let mut constant = node("Constant", &[], &["k"]);
        constant.attribute = vec![pb::AttributeProto {
            name: "value".into(),
            t: Some(f32_tensor("", &[1], &[2.0])),
            ..Default::default()
        }];
        let m = model(
            vec![
                to_float,
                constant,
                node("Mul", &["c", "k"], &["h"]),
                node("Resize", &["h", "", "scales"], &["y"]),
            ],
            vec![f32_tensor("scales", &[4], &[1.0, 1.0, 2.0, 2.0])],
        );
        let g = to_fp16(&m).unwrap().graph.unwrap();
        assert_eq!(
            g.node[1].attribute[0].i, FLOAT16 as i64,
            "Cast to FLOAT now to FLOAT16"
        );
        assert_eq!(
            g.node[2].attribute[0].t.as_ref().unwrap().data_type,
            FLOAT16
        );
        assert_eq!(g.initializer[0].data_type, FLOAT, "Resize scales stay f32");
        assert_eq!(tensor_f32(&g.initializer[0]).unwrap(), [1.0, 1.0, 2.0, 2.0]);
    }

    #[test]
    fn control_flow_is_refused() {
        let mut iff = node("If", &["x"], &["y"]);
        iff.attribute = vec![pb::AttributeProto {
            name: "then_branch".into(),
            g: Some(pb::GraphProto::default()),
            ..Default::default()
        }];
        let e = to_fp16(&model(vec![iff], vec![])).unwrap_err();
        assert!(e.to_string().contains("control flow"), "{e}");
    }
}
