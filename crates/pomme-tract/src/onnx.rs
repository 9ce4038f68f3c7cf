//! ONNX: reading the protobuf, facts that come straight from it (op histogram,
//! parameters, metadata), and parsing it into a tract model with clear errors.
//!
//! The file is decoded once with prost into `tract_onnx::pb::ModelProto`;
//! inspection reads that, and loading hands the same proto to tract's parser.

use crate::convert::error_line;
use crate::device::no_panic;
use pomme_core::{Error, Result};
use prost::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::Op;
use tract_onnx::tract_hir::infer::{DimFact, Factoid, InferenceFact, ShapeFactoid};
use tract_onnx::tract_hir::ops::unimpl::UnimplementedOp;

/// Checks that `path` is a non-empty file, then decodes it as an ONNX model.
pub(crate) fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidModelFormat(format!("model file {shown} does not exist"))
        }
        _ => Error::InvalidModelFormat(format!("cannot read model file {shown}: {e}")),
    })?;
    if meta.is_dir() {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is a directory, expected an .onnx file"
        )));
    }
    if meta.len() == 0 {
        return Err(Error::InvalidModelFormat(format!(
            "model file {shown} is empty (0 bytes)"
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::InvalidModelFormat(format!("cannot read model file {shown}: {e}")))?;
    let proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| {
        Error::InvalidModelFormat(format!(
            "{shown} is not a valid ONNX protobuf (truncated or corrupt): {e}"
        ))
    })?;
    // Protobuf decoding is lenient: arbitrary bytes can decode to a message
    // with no graph, so insist on the parts every real model has.
    let Some(graph) = proto.graph.as_ref() else {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is not an ONNX model: it has no graph"
        )));
    };
    if graph.output.is_empty() || proto.ir_version <= 0 {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is not an ONNX model: no ir_version or no graph outputs"
        )));
    }
    Ok(proto)
}

/// What inspection reads from the protobuf without building a tract model.
pub(crate) struct ProtoFacts {
    pub parameters: u64,
    pub weight_bytes: u64,
    pub op_histogram: BTreeMap<String, usize>,
    pub metadata: BTreeMap<String, String>,
}

/// Bytes per element, times two so that 4-bit types are exact.
fn half_bytes_per_element(data_type: i32) -> Option<u64> {
    use pb::tensor_proto::DataType as D;
    Some(match D::try_from(data_type).ok()? {
        D::Float | D::Int32 | D::Uint32 => 8,
        D::Uint8 | D::Int8 | D::Bool => 2,
        D::Uint16 | D::Int16 | D::Float16 | D::Bfloat16 => 4,
        D::Int64 | D::Uint64 | D::Double | D::Complex64 => 16,
        D::Complex128 => 32,
        // FLOAT8 variants (17..=20) are one byte; INT4/UINT4/FLOAT4 (21..=23) half a byte.
        _ if (17..=20).contains(&data_type) => 2,
        _ if (21..=23).contains(&data_type) => 1,
        _ => return None,
    })
}

fn tensor_elements(t: &pb::TensorProto) -> u64 {
    t.dims.iter().map(|&d| d.max(0) as u64).product()
}

fn tensor_bytes(t: &pb::TensorProto) -> u64 {
    let n = tensor_elements(t);
    match half_bytes_per_element(t.data_type) {
        Some(h) => (n * h).div_ceil(2),
        // Strings (and types we do not know): what is stored.
        None => t.string_data.iter().map(|s| s.len() as u64).sum::<u64>() + t.raw_data.len() as u64,
    }
}

/// Counts nodes by op type, descending into subgraphs (`If` branches, `Loop`
/// and `Scan` bodies) so that every node executed is counted once. Ops from a
/// non-default domain are keyed `domain:OpType`.
fn count_ops(graph: &pb::GraphProto, hist: &mut BTreeMap<String, usize>) {
    for node in &graph.node {
        let key = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}:{}", node.domain, node.op_type)
        };
        *hist.entry(key).or_default() += 1;
        for attr in &node.attribute {
            if let Some(g) = &attr.g {
                count_ops(g, hist);
            }
            for g in &attr.graphs {
                count_ops(g, hist);
            }
        }
    }
}

/// Parameters and weight bytes are the initializers' (learned weights);
/// `Constant` nodes hold shape constants and scalars and are not counted.
pub(crate) fn proto_facts(proto: &pb::ModelProto) -> ProtoFacts {
    let mut facts = ProtoFacts {
        parameters: 0,
        weight_bytes: 0,
        op_histogram: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    let md = &mut facts.metadata;
    md.insert("format".into(), "onnx".into());
    md.insert("ir_version".into(), proto.ir_version.to_string());
    for op in &proto.opset_import {
        let key = if op.domain.is_empty() || op.domain == "ai.onnx" {
            "opset".to_string()
        } else {
            format!("opset.{}", op.domain)
        };
        md.insert(key, op.version.to_string());
    }
    for (k, v) in [
        ("producer", &proto.producer_name),
        ("producer_version", &proto.producer_version),
        ("domain", &proto.domain),
        ("doc_string", &proto.doc_string),
    ] {
        if !v.is_empty() {
            md.insert(k.into(), v.clone());
        }
    }
    if proto.model_version != 0 {
        md.insert("model_version".into(), proto.model_version.to_string());
    }
    for p in &proto.metadata_props {
        md.insert(format!("meta.{}", p.key), p.value.clone());
    }
    if let Some(graph) = &proto.graph {
        if !graph.name.is_empty() {
            md.insert("graph_name".into(), graph.name.clone());
        }
        for t in &graph.initializer {
            facts.parameters += tensor_elements(t);
            facts.weight_bytes += tensor_bytes(t);
        }
        count_ops(graph, &mut facts.op_histogram);
    }
    facts
}

/// The graph's real inputs (not initializers) and outputs, by name, in order.
pub(crate) fn io_names(proto: &pb::ModelProto) -> (Vec<String>, Vec<String>) {
    let Some(graph) = &proto.graph else {
        return (vec![], vec![]);
    };
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .map(|i| i.name.clone())
        .collect();
    let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
    (inputs, outputs)
}

/// Every input must declare a shape: tract needs input ranks to analyse a graph.
fn check_input_shapes(proto: &pb::ModelProto) -> Result<()> {
    let Some(graph) = &proto.graph else {
        return Ok(());
    };
    let inits: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    for input in graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
    {
        let tensor_type = input.r#type.as_ref().and_then(|t| t.value.as_ref());
        let Some(pb::type_proto::Value::TensorType(tt)) = tensor_type else {
            return Err(Error::InvalidModelFormat(format!(
                "input '{}' declares no tensor type",
                input.name
            )));
        };
        if tt.shape.is_none() {
            return Err(Error::InvalidModelFormat(format!(
                "input '{}' declares no shape (tract needs at least the rank of every input)",
                input.name
            )));
        }
    }
    Ok(())
}

/// Parses the proto into a tract inference model, reporting every operator
/// tract does not implement by name, and giving anonymous input dimensions
/// (`?`, or neither value nor name) a symbol of their own so they stay
/// variable instead of blocking analysis.
pub(crate) fn parse(proto: &pb::ModelProto, path: &Path) -> Result<InferenceModel> {
    check_input_shapes(proto)?;
    // External data files are resolved next to the model.
    let dir = path.parent().and_then(|p| p.to_str());
    // tract-onnx 0.23.9 panics on some malformed graphs (e.g. a node input
    // naming no known value: `no entry found for key`, found by fuzzing), so
    // the parse runs under catch_unwind and a panic is a bad model, not a crash.
    let parsed = no_panic("tract's ONNX parser", || {
        tract_onnx::onnx().parse(proto, dir)
    })
    .map_err(|m| Error::InvalidModelFormat(format!("{}: {m}", path.display())))?
    .map_err(|e| {
        Error::InvalidModelFormat(format!(
            "tract could not parse {}: {}",
            path.display(),
            error_line(&e)
        ))
    })?;
    let mut model = parsed.model;
    let unsupported: BTreeSet<String> = model
        .nodes()
        .iter()
        .filter_map(|n| n.op_as::<UnimplementedOp>())
        .map(|op| {
            let name = op.name();
            name.strip_prefix("Unimplemented(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or(&name)
                .to_string()
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(Error::CompilationFailed(format!(
            "tract does not support operator(s): {}",
            unsupported.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::InvalidModelFormat(format!(
            "the graph uses tensors that nothing defines: {}",
            parsed.unresolved_inputs.join(", ")
        )));
    }
    name_anonymous_dims(&mut model)?;
    crate::flatten::patch(&mut model);
    Ok(model)
}

fn name_anonymous_dims(model: &mut InferenceModel) -> Result<()> {
    let internal = |e: TractError| Error::Internal(error_line(&e));
    for ix in 0..model.inputs.len() {
        let fact = model.input_fact(ix).map_err(internal)?.clone();
        if fact.shape.is_open() || fact.shape.dims().all(|d| d.concretize().is_some()) {
            continue;
        }
        let input_name = model.node(model.inputs[ix].node).name.clone();
        let dims: TVec<DimFact> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(axis, d)| match d.concretize() {
                Some(d) => DimFact::from(d),
                None => {
                    let sym = model
                        .symbols
                        .new_with_prefix(&format!("{input_name}_dim{axis}"));
                    DimFact::from(TDim::Sym(sym))
                }
            })
            .collect();
        let fact = InferenceFact {
            shape: ShapeFactoid::closed(dims),
            ..fact
        };
        model.set_input_fact(ix, fact).map_err(internal)?;
    }
    Ok(())
}
