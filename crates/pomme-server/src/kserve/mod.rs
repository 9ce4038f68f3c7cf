//! Wire conversions for the KServe v2 / Open Inference Protocol, as pure
//! functions: HTTP JSON (with Triton's binary tensor data extension) and gRPC
//! messages to and from pomme tensors.
//!
//! Nothing here touches the runtime: decoding yields a [`DecodedRequest`]
//! (inputs as [`Tensor`]s plus the wire options that only matter for encoding
//! the reply), and encoding takes the runtime's named output tensors. Every
//! malformed input becomes [`Error::InvalidInput`] with a one-line message, and
//! every size is checked against [`Limits`] before memory is committed.

pub mod grpc;
pub mod json;

use pomme_core::{DType, Error, Result, Tensor};
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
}

impl DecodedRequest {
    /// Names of the requested outputs, as the runtime wants them.
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

/// Parses a shape given as signed integers, checking sign, overflow and the element limit.
pub(crate) fn checked_shape(input: &str, dims: &[i64], limits: &Limits) -> Result<Vec<usize>> {
    let mut shape = Vec::with_capacity(dims.len());
    let mut count: usize = 1;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| {
            Error::invalid_input(format!("input '{input}' has negative dimension {d}"))
        })?;
        count = count.checked_mul(d).ok_or_else(|| {
            Error::invalid_input(format!("input '{input}' shape {dims:?} overflows"))
        })?;
        shape.push(d);
    }
    if count > limits.max_elements {
        return Err(Error::invalid_input(format!(
            "input '{input}' has {count} elements, more than the limit of {}",
            limits.max_elements
        )));
    }
    Ok(shape)
}

/// Parses a KServe datatype name, naming the input on failure.
pub(crate) fn parse_dtype(input: &str, name: &str) -> Result<DType> {
    DType::from_kserve(name).ok_or_else(|| {
        Error::invalid_input(format!(
            "input '{input}' has unknown datatype '{}'",
            truncate(name, 32)
        ))
    })
}

/// Splits `BYTES` data in the binary wire form (4-byte little-endian length
/// before each element) into elements, without copying.
pub(crate) fn split_length_prefixed(
    input: &str,
    raw: &bytes::Bytes,
    count: usize,
    limits: &Limits,
) -> Result<Vec<bytes::Bytes>> {
    let mut out = Vec::with_capacity(count.min(raw.len() / 4 + 1));
    let mut at = 0usize;
    while at < raw.len() {
        let Some(prefix) = raw.get(at..at + 4) else {
            return Err(Error::invalid_input(format!(
                "input '{input}': BYTES data ends inside a 4-byte length prefix"
            )));
        };
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        at += 4;
        if len > limits.max_string_bytes {
            return Err(Error::invalid_input(format!(
                "input '{input}' has a {len}-byte string, more than the limit of {}",
                limits.max_string_bytes
            )));
        }
        if len > raw.len() - at {
            return Err(Error::invalid_input(format!(
                "input '{input}': BYTES element of {len} bytes runs past the end of its data"
            )));
        }
        out.push(raw.slice(at..at + len));
        at += len;
    }
    if out.len() != count {
        return Err(Error::invalid_input(format!(
            "input '{input}' has {} BYTES elements but its shape needs {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// Appends `BYTES` elements in the binary wire form.
pub(crate) fn write_length_prefixed(out: &mut Vec<u8>, strings: &[bytes::Bytes]) -> Result<()> {
    for s in strings {
        let len = u32::try_from(s.len())
            .map_err(|_| Error::Internal("BYTES element longer than 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s);
    }
    Ok(())
}

/// Size of the binary wire form of a tensor.
pub(crate) fn binary_len(t: &Tensor) -> usize {
    match t.strings() {
        Some(s) => s.iter().map(|b| 4 + b.len()).sum(),
        None => t.byte_len(),
    }
}

/// At most `max` characters of `s`, for echoing client text in errors.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut out: String = s.chars().take(max).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}

/// Parses a model version string: empty means "the latest".
pub fn parse_version(v: &str) -> Result<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>().map(Some).map_err(|_| {
        Error::invalid_input(format!(
            "model version '{}' is not a non-negative integer",
            truncate(v, 32)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn shapes_are_checked() {
        let l = Limits::default();
        assert_eq!(checked_shape("x", &[2, 3], &l).unwrap(), vec![2, 3]);
        assert!(
            checked_shape("x", &[-1, 3], &l)
                .unwrap_err()
                .to_string()
                .contains("negative dimension -1")
        );
        assert!(
            checked_shape("x", &[i64::MAX, i64::MAX], &l)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        assert!(
            checked_shape("x", &[1 << 20, 1 << 20], &l)
                .unwrap_err()
                .to_string()
                .contains("more than the limit")
        );
    }

    #[test]
    fn length_prefixed_round_trip_and_errors() {
        let l = Limits::default();
        let items = vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"xyz"),
        ];
        let mut buf = Vec::new();
        write_length_prefixed(&mut buf, &items).unwrap();
        let raw = Bytes::from(buf.clone());
        assert_eq!(split_length_prefixed("s", &raw, 3, &l).unwrap(), items);
        assert!(split_length_prefixed("s", &raw, 2, &l).is_err());
        let cut = Bytes::from(buf[..buf.len() - 1].to_vec());
        assert!(
            split_length_prefixed("s", &cut, 3, &l)
                .unwrap_err()
                .to_string()
                .contains("runs past the end")
        );
        let cut = Bytes::from(buf[..2].to_vec());
        assert!(
            split_length_prefixed("s", &cut, 1, &l)
                .unwrap_err()
                .to_string()
                .contains("length prefix")
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("").unwrap(), None);
        assert_eq!(parse_version("3").unwrap(), Some(3));
        assert!(parse_version("-1").is_err());
    }

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
