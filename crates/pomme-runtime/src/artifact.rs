//! Finding out what a model path holds, with one clear error per way it can be wrong.

use pomme_core::{Error, ModelArtifact, ModelFormat, Result};
use std::path::Path;

/// Checks that `path` exists and is non-empty, and detects its format from its
/// name (and, for ONNX, its first byte: a protobuf ModelProto starts with a field tag).
pub fn detect_artifact(path: &Path) -> Result<ModelArtifact> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::InvalidModelFormat(format!("{shown}: no such file")),
        _ => Error::InvalidModelFormat(format!("{shown}: cannot read: {e}")),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let format = if name.ends_with(".mlmodel")
        || name.ends_with(".mlpackage")
        || name.ends_with(".mlmodelc")
    {
        ModelFormat::CoreMl
    } else if name.ends_with(".aimodel") || name.ends_with(".aimodelx") {
        if !meta.is_dir() {
            return Err(Error::InvalidModelFormat(format!(
                "{shown} is a file; a Core AI asset is a directory (main.mlirb, metadata.json)"
            )));
        }
        ModelFormat::CoreAi
    } else if name.ends_with(".nnef") || name.ends_with(".nnef.tgz") || name.ends_with(".nnef.tar")
    {
        ModelFormat::Nnef
    } else if meta.is_dir() {
        if path.join("graph.nnef").is_file() {
            ModelFormat::Nnef
        } else {
            return Err(Error::InvalidModelFormat(format!(
                "{shown} is a directory, not a model file (expected .onnx, an NNEF directory with graph.nnef, a Core ML bundle or a Core AI .aimodel)"
            )));
        }
    } else if name.ends_with(".onnx") {
        ModelFormat::Onnx
    } else {
        return Err(Error::InvalidModelFormat(format!(
            "{shown}: unknown model format (expected .onnx, .nnef, .nnef.tgz, .mlmodel, .mlpackage, .mlmodelc or .aimodel)"
        )));
    };
    if meta.is_file() && meta.len() == 0 {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is empty (0 bytes)"
        )));
    }
    if format == ModelFormat::Onnx && meta.is_dir() {
        return Err(Error::InvalidModelFormat(format!(
            "{shown} is a directory, not an ONNX file"
        )));
    }
    Ok(ModelArtifact {
        path: path.to_path_buf(),
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_errors() {
        let dir = std::env::temp_dir().join(format!("pomme-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = detect_artifact(&dir.join("nope.onnx")).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let e = detect_artifact(&dir).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let empty = dir.join("empty.onnx");
        std::fs::write(&empty, b"").unwrap();
        let e = detect_artifact(&empty).unwrap_err();
        assert!(e.to_string().contains("empty (0 bytes)"), "{e}");
        let txt = dir.join("model.txt");
        std::fs::write(&txt, b"hello").unwrap();
        let e = detect_artifact(&txt).unwrap_err();
        assert!(e.to_string().contains("unknown model format"), "{e}");
        let ok = dir.join("m.onnx");
        std::fs::write(&ok, b"\x08\x08").unwrap();
        assert_eq!(detect_artifact(&ok).unwrap().format, ModelFormat::Onnx);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
