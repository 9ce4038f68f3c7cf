//! Reading, building and writing ONNX protobuf messages.
//!
//! We reuse `tract_onnx::pb` (prost-generated, derives `prost::Message`) rather
//! than vendoring `onnx.proto`: tract is already a dependency of the workspace,
//! and its messages cover ONNX IR 10 (INT4/UINT4 data types included), so one
//! set of types serves both decoding and encoding.

use pomme_core::{Error, Result};
use prost::Message;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
pub use tract_onnx::pb;

use pb::tensor_proto::DataType;

/// ONNX `TensorProto.DataType` numbers we use.
pub(crate) const FLOAT: i32 = DataType::Float as i32;
pub(crate) const UINT8: i32 = DataType::Uint8 as i32;
pub(crate) const INT8: i32 = DataType::Int8 as i32;
pub(crate) const INT64: i32 = DataType::Int64 as i32;
pub(crate) const FLOAT16: i32 = DataType::Float16 as i32;
pub(crate) const INT32: i32 = DataType::Int32 as i32;

/// The domain of ONNX Runtime's contrib ops (`MatMulNBits`).
pub const MS_DOMAIN: &str = "com.microsoft";

/// Decodes a model from bytes; every failure is one line naming the file.
pub fn decode_model(bytes: &[u8], what: &str) -> Result<pb::ModelProto> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| {
        Error::InvalidModelFormat(format!("{what} is not a readable ONNX model: {e}"))
    })?;
    if model.graph.is_none() {
        return Err(Error::InvalidModelFormat(format!(
            "{what} has no graph (not an ONNX model?)"
        )));
    }
    Ok(model)
}

/// Reads and decodes an ONNX file.
pub fn load_model(path: &Path) -> Result<(pb::ModelProto, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::InvalidModelFormat(format!("cannot read model {}: {e}", path.display()))
    })?;
    let model = decode_model(&bytes, &path.display().to_string())?;
    Ok((model, bytes))
}

/// Encodes a model.
pub fn encode_model(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// flushed, then renamed over the destination. A crash or an error never leaves
/// a half-written model behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |e: std::io::Error| Error::Internal(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".pomme-quant-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io)?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The opset version of the default ONNX domain (`""` or `ai.onnx`).
pub fn default_opset(model: &pb::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(1)
}

/// Raises the default-domain opset to at least `min`. Returns whether it changed.
pub fn ensure_opset(model: &mut pb::ModelProto, min: i64) -> bool {
    match model
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    {
        Some(o) if o.version >= min => false,
        Some(o) => {
            o.version = min;
            true
        }
        None => {
            model.opset_import.push(pb::OperatorSetIdProto {
                domain: String::new(),
                version: min,
            });
            true
        }
    }
}

/// Whether an initializer keeps its data outside the file.
fn is_external(t: &pb::TensorProto) -> bool {
    t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
}

/// Element count of a tensor's dims.
pub fn numel(dims: &[i64]) -> usize {
    dims.iter().map(|&d| d.max(0) as usize).product()
}

/// The float values of a FLOAT initializer (raw_data or float_data).
pub fn tensor_f32(t: &pb::TensorProto) -> Result<Vec<f32>> {
    if t.data_type != FLOAT {
        return Err(Error::Internal(format!(
            "initializer '{}' is not FLOAT (data type {})",
            t.name, t.data_type
        )));
    }
    if is_external(t) {
        return Err(Error::InvalidModelFormat(format!(
            "initializer '{}' uses external data, which the quantizer does not read",
            t.name
        )));
    }
    let n = numel(&t.dims);
    let v: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if v.len() != n {
        return Err(Error::InvalidModelFormat(format!(
            "initializer '{}' holds {} values but its dims {:?} need {n}",
            t.name,
            v.len(),
            t.dims
        )));
    }
    Ok(v)
}

/// Whether an initializer is FLOAT with inline data (so we can quantize it).
pub fn is_inline_float(t: &pb::TensorProto) -> bool {
    t.data_type == FLOAT && !is_external(t)
}

fn raw_tensor(name: &str, dims: &[i64], data_type: i32, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type,
        raw_data: raw,
        ..Default::default()
    }
}

/// A FLOAT initializer.
pub fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, FLOAT, raw)
}

/// A FLOAT16 initializer (values rounded to nearest).
pub fn f16_tensor(name: &str, dims: &[i64], data: &[f32]) -> pb::TensorProto {
    let raw = data
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    raw_tensor(name, dims, FLOAT16, raw)
}

/// An INT8 initializer.
pub fn i8_tensor(name: &str, dims: &[i64], data: &[i8]) -> pb::TensorProto {
    raw_tensor(name, dims, INT8, data.iter().map(|&v| v as u8).collect())
}

/// A UINT8 initializer.
pub fn u8_tensor(name: &str, dims: &[i64], data: &[u8]) -> pb::TensorProto {
    raw_tensor(name, dims, UINT8, data.to_vec())
}

/// An INT32 initializer.
pub fn i32_tensor(name: &str, dims: &[i64], data: &[i32]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, INT32, raw)
}

/// Imports `domain` at `version` unless the model already does.
pub fn ensure_domain(model: &mut pb::ModelProto, domain: &str, version: i64) {
    if !model.opset_import.iter().any(|o| o.domain == domain) {
        model.opset_import.push(pb::OperatorSetIdProto {
            domain: domain.to_string(),
            version,
        });
    }
}

/// An INT64 initializer.
pub fn i64_tensor(name: &str, dims: &[i64], data: &[i64]) -> pb::TensorProto {
    let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_tensor(name, dims, INT64, raw)
}

/// An integer attribute.
pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

/// An integer-list attribute.
pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// A float attribute of a node, or `default`.
pub fn get_attr_float(node: &pb::NodeProto, name: &str, default: f32) -> f32 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.f)
        .unwrap_or(default)
}

/// An integer attribute of a node, or `default`.
pub fn get_attr_int(node: &pb::NodeProto, name: &str, default: i64) -> i64 {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.i)
        .unwrap_or(default)
}

/// A node in the default domain.
pub fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

/// Each initializer's index in `graph.initializer`, by name.
pub fn initializer_positions(graph: &pb::GraphProto) -> std::collections::HashMap<String, usize> {
    graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect()
}

/// A graph output / value info of element type `elem_type` with unknown shape.
pub fn value_info(name: &str, elem_type: i32) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: None,
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every value and node name used in a graph, so new names never collide.
pub struct Names {
    used: HashSet<String>,
}

impl Names {
    pub fn of(graph: &pb::GraphProto) -> Names {
        let mut used = HashSet::new();
        for n in &graph.node {
            used.insert(n.name.clone());
            used.extend(n.input.iter().cloned());
            used.extend(n.output.iter().cloned());
        }
        used.extend(graph.initializer.iter().map(|t| t.name.clone()));
        used.extend(graph.input.iter().map(|v| v.name.clone()));
        used.extend(graph.output.iter().map(|v| v.name.clone()));
        used.extend(graph.value_info.iter().map(|v| v.name.clone()));
        Names { used }
    }

    /// `base` if unused, else `base_1`, `base_2`...; the result is reserved.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_round_trip() {
        let t = f32_tensor("w", &[2, 2], &[1.0, -2.0, 3.5, 0.0]);
        assert_eq!(tensor_f32(&t).unwrap(), vec![1.0, -2.0, 3.5, 0.0]);
        let t = pb::TensorProto {
            name: "f".into(),
            dims: vec![3],
            data_type: FLOAT,
            float_data: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        assert_eq!(tensor_f32(&t).unwrap(), vec![1.0, 2.0, 3.0]);
        let bad = pb::TensorProto { dims: vec![4], ..t };
        assert!(tensor_f32(&bad).is_err());
    }

    #[test]
    fn fresh_names_do_not_collide() {
        let g = pb::GraphProto {
            node: vec![node("Relu", "r", &["x"], &["x_q"], vec![])],
            ..Default::default()
        };
        let mut names = Names::of(&g);
        assert_eq!(names.fresh("x_q"), "x_q_1");
        assert_eq!(names.fresh("x_q"), "x_q_2");
        assert_eq!(names.fresh("y"), "y");
    }

    #[test]
    fn corrupted_bytes_are_one_line_errors() {
        let e = decode_model(b"\xff\xff\xff garbage", "m.onnx").unwrap_err();
        assert!(!e.to_string().contains('\n'));
    }
}
