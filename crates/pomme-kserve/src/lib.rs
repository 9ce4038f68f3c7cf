//! The KServe v2 / Open Inference Protocol on the wire, as pure functions:
//! HTTP JSON with Triton's binary tensor data extension ([`json`]), the gRPC
//! messages and service generated from `proto/` ([`proto`], converted by
//! [`grpc`]), server and model metadata and the repository index
//! ([`metadata`]), and the [`Limits`] every decoder enforces.
//!
//! One codec for every user of the protocol: the server decodes requests and
//! encodes replies with it, the load generator (`pomme bench --url`) and the
//! tests encode requests and decode replies with the same functions, and the
//! fuzz targets drive the decoders without pulling in the server. Nothing here
//! touches the runtime: decoding yields a [`DecodedRequest`] (inputs as
//! [`Tensor`]s plus the wire options that only matter for encoding the
//! reply), and encoding takes named output tensors. Every malformed input
//! becomes [`Error::InvalidInput`](pomme_core::Error::InvalidInput) with a
//! one-line message, and every size is checked against [`Limits`] before
//! memory is committed.
//!
//! Module order (each uses only those before it): `common` (shared
//! helpers) → [`proto`] → [`json`], [`grpc`], [`metadata`].

pub mod classification;
mod common;
pub mod grpc;
pub mod json;
pub mod metadata;
pub mod proto;

pub use common::{parse_version, raw_contents};
pub use metadata::{IndexEntry, ModelMetadata, ServerMetadata, TensorMetadata};

use pomme_core::{SequenceControl, Tensor};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The HTTP header carrying the JSON part's length when binary tensor data follows it.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Size limits enforced while decoding requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted, in bytes (JSON and binary parts together).
    pub max_body_bytes: usize,
    /// Most elements a single input tensor may hold.
    pub max_elements: usize,
    /// Deepest nesting of a JSON `data` array.
    pub max_json_depth: usize,
    /// Longest single `BYTES` element, in bytes.
    pub max_string_bytes: usize,
    /// Most input tensors in one request.
    pub max_inputs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_elements: 64 << 20,
            max_json_depth: 64,
            max_string_bytes: 16 << 20,
            max_inputs: 1024,
        }
    }
}

/// An output the client asked for by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// Per-output `binary_data` parameter; `None` follows the request default.
    pub binary: Option<bool>,
    /// Triton's `classification` parameter: reply with the top `k` classes
    /// ([`classification::classify`]).
    pub classification: Option<usize>,
}

/// A decoded inference request, independent of the transport it came on.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedRequest {
    pub id: Option<String>,
    pub inputs: Vec<(String, Tensor)>,
    /// Outputs asked for; `None` means all of the model's outputs.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// Request-level `binary_data_output` (HTTP only).
    pub binary_data_output: bool,
    pub priority: Option<u32>,
    /// Triton's `timeout` parameter (given in microseconds).
    pub timeout: Option<Duration>,
    /// Triton's `sequence_id` / `sequence_start` / `sequence_end` parameters;
    /// `None` when the request has no sequence id (or id 0 or "").
    pub sequence: Option<SequenceControl>,
}

impl DecodedRequest {
    /// Names of the requested outputs, as the runtime wants them.
    /// The outputs asked for as classifications, with their `k`.
    pub fn classifications(&self) -> Vec<(String, usize)> {
        self.outputs
            .iter()
            .flatten()
            .filter_map(|o| o.classification.map(|k| (o.name.clone(), k)))
            .collect()
    }

    pub fn output_names(&self) -> Option<Vec<String>> {
        self.outputs
            .as_ref()
            .map(|o| o.iter().map(|r| r.name.clone()).collect())
    }

    /// How each output of the reply is to be encoded.
    pub fn output_prefs(&self) -> OutputPrefs {
        OutputPrefs {
            binary_default: self.binary_data_output,
            per_output: self
                .outputs
                .iter()
                .flatten()
                .filter_map(|o| o.binary.map(|b| (o.name.clone(), b)))
                .collect(),
        }
    }
}

/// Which outputs of an HTTP reply go in the binary section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputPrefs {
    pub binary_default: bool,
    pub per_output: Vec<(String, bool)>,
}

impl OutputPrefs {
    /// Whether output `name` is sent as binary data.
    pub fn is_binary(&self, name: &str) -> bool {
        self.per_output
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| *b)
            .unwrap_or(self.binary_default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_prefs_follow_request_default() {
        let p = OutputPrefs {
            binary_default: true,
            per_output: vec![("a".into(), false)],
        };
        assert!(!p.is_binary("a"));
        assert!(p.is_binary("b"));
    }
}
