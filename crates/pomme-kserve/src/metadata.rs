//! The documents that describe a server and its models: server metadata
//! (`GET /v2`, gRPC `ServerMetadata`), model metadata (`GET
//! /v2/models/{name}`, gRPC `ModelMetadata`) and Triton's repository index.
//! One type each, which the server fills and renders in either protocol and
//! clients read back from either.

use crate::proto::{self, model_metadata_response};
use serde::{Deserialize, Serialize};

/// Server metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMetadata {
    pub name: String,
    pub version: String,
    /// Protocol extensions the server implements.
    pub extensions: Vec<String>,
}

/// One row of Triton's repository index: a model (version) and its state;
/// empty fields are left out of the JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A tensor in model metadata: `shape` has -1 for a variable dimension.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Model metadata, as the HTTP JSON has it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    /// Other servers may leave these out; only `inputs` is required to read it.
    #[serde(default)]
    pub versions: Vec<String>,
    #[serde(default)]
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    #[serde(default)]
    pub outputs: Vec<TensorMetadata>,
}

impl From<ServerMetadata> for proto::ServerMetadataResponse {
    fn from(m: ServerMetadata) -> Self {
        proto::ServerMetadataResponse {
            name: m.name,
            version: m.version,
            extensions: m.extensions,
        }
    }
}

impl From<IndexEntry> for proto::repository_index_response::ModelIndex {
    fn from(e: IndexEntry) -> Self {
        proto::repository_index_response::ModelIndex {
            name: e.name,
            version: e.version,
            state: e.state,
            reason: e.reason,
        }
    }
}

impl From<TensorMetadata> for model_metadata_response::TensorMetadata {
    fn from(t: TensorMetadata) -> Self {
        model_metadata_response::TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        }
    }
}

impl From<model_metadata_response::TensorMetadata> for TensorMetadata {
    fn from(t: model_metadata_response::TensorMetadata) -> Self {
        TensorMetadata {
            name: t.name,
            datatype: t.datatype,
            shape: t.shape,
        }
    }
}

impl From<ModelMetadata> for proto::ModelMetadataResponse {
    fn from(m: ModelMetadata) -> Self {
        proto::ModelMetadataResponse {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: m.inputs.into_iter().map(Into::into).collect(),
            outputs: m.outputs.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<proto::ModelMetadataResponse> for ModelMetadata {
    fn from(m: proto::ModelMetadataResponse) -> Self {
        ModelMetadata {
            name: m.name,
            versions: m.versions,
            platform: m.platform,
            inputs: m.inputs.into_iter().map(Into::into).collect(),
            outputs: m.outputs.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_proto_carry_the_same_document() {
        let m = ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![TensorMetadata {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            }],
            outputs: vec![],
        };
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["inputs"][0]["shape"], serde_json::json!([-1, 4]));
        let back: ModelMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, m);
        let p: proto::ModelMetadataResponse = m.clone().into();
        assert_eq!(ModelMetadata::from(p), m);
        // Only `inputs` is needed to read another server's answer.
        let sparse: ModelMetadata = serde_json::from_str(r#"{"name":"m","inputs":[]}"#).unwrap();
        assert!(sparse.versions.is_empty());
    }
}
