//! NNEF: a directory holding `graph.nnef` (plus `.dat` weights), or the same as
//! a `.nnef.tar` / `.nnef.tgz` archive. tract reads NNEF straight into a typed
//! model, with its `tract_core`, `tract_onnx` and `tract_transformers`
//! extensions enabled so that models tract itself exported load back.

use crate::convert::error_line;
use pomme_core::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use tract_core::ops::konst::Const;
use tract_core::prelude::*;
use tract_onnx::WithOnnx;
use tract_transformers::WithTractTransformers;

/// Loads an NNEF directory or archive, naming what is wrong with the path first.
pub(crate) fn load(path: &Path) -> Result<TypedModel> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::InvalidModelFormat(format!("model path {shown} does not exist"))
        }
        _ => Error::InvalidModelFormat(format!("cannot read model path {shown}: {e}")),
    })?;
    if meta.is_dir() && !path.join("graph.nnef").is_file() {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is a directory without graph.nnef, so not an NNEF model"
        )));
    }
    if meta.is_file() && meta.len() == 0 {
        return Err(Error::InvalidModelFormat(format!(
            "model file {shown} is empty (0 bytes)"
        )));
    }
    tract_nnef::nnef()
        .with_onnx()
        .with_tract_transformers()
        .model_for_path(path)
        .map_err(|e| {
            Error::InvalidModelFormat(format!(
                "tract could not read NNEF model {shown}: {}",
                error_line(&e)
            ))
        })
}

/// Parameters, weight bytes, op histogram and metadata of a typed model:
/// weights are its `Const` nodes, ops are counted by tract op name.
pub(crate) fn typed_facts(
    model: &TypedModel,
) -> (u64, u64, BTreeMap<String, usize>, BTreeMap<String, String>) {
    let (mut params, mut bytes) = (0u64, 0u64);
    let mut hist = BTreeMap::new();
    for node in model.nodes() {
        if let Some(k) = node.op_as::<Const>() {
            let t = k.val();
            params += t.len() as u64;
            bytes += (t.len() * t.datum_type().size_of()) as u64;
        } else if !node.op_is::<tract_core::ops::source::TypedSource>() {
            *hist.entry(node.op().name().to_string()).or_default() += 1;
        }
    }
    let mut md = BTreeMap::new();
    md.insert("format".to_string(), "nnef".to_string());
    for (k, v) in &model.properties {
        if v.len() == 1
            && v.datum_type() == DatumType::String
            && let Ok(view) = v.try_as_plain_ram()
            && let Ok([s]) = view.as_slice::<String>()
        {
            md.insert(k.clone(), s.clone());
        }
    }
    (params, bytes, hist, md)
}
