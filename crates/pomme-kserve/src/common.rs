//! Helpers both wire formats share: shape and datatype checks, model
//! versions, request parameters (priority, sequence) and the binary form of a
//! tensor (raw little-endian elements, or length-prefixed `BYTES`), which the
//! HTTP binary extension and gRPC's `raw_*_contents` carry alike.

use crate::Limits;
use bytes::Bytes;
use pomme_core::{DType, Error, Result, SequenceControl, Tensor};

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

/// The request-level `priority` parameter, shared by HTTP and gRPC.
pub(crate) fn priority_from(v: Option<u64>) -> Result<Option<u32>> {
    v.map(|p| {
        u32::try_from(p)
            .map_err(|_| Error::invalid_input(format!("parameters.priority {p} is too large")))
    })
    .transpose()
}

/// A request's `sequence_id` as the wire carried it, before normalization.
pub(crate) enum SequenceId {
    Number(u64),
    Text(String),
}

/// The request-level sequence parameters, shared by HTTP and gRPC. Id 0 and
/// "" mean "no sequence" (Triton's convention); a number's id is its decimal
/// text, so `42` and `"42"` name the same sequence. `sequence_start` or
/// `sequence_end` set without an id is refused: it would silently be a
/// stateless request.
pub(crate) fn sequence_from(
    id: Option<SequenceId>,
    start: Option<bool>,
    end: Option<bool>,
) -> Result<Option<SequenceControl>> {
    let id = match id {
        None | Some(SequenceId::Number(0)) => None,
        Some(SequenceId::Text(s)) if s.is_empty() => None,
        Some(SequenceId::Number(n)) => Some(n.to_string()),
        Some(SequenceId::Text(s)) => Some(s),
    };
    let (start, end) = (start.unwrap_or(false), end.unwrap_or(false));
    match id {
        Some(id) => Ok(Some(SequenceControl { id, start, end })),
        None if start || end => Err(Error::invalid_input(format!(
            "parameters.{} is set but the request has no sequence_id (0 and \"\" mean none)",
            if start {
                "sequence_start"
            } else {
                "sequence_end"
            }
        ))),
        None => Ok(None),
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

/// Prefixes a tensor-construction error with the input's name.
pub(crate) fn named(input: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) => Error::invalid_input(format!("input '{input}': {m}")),
        other => other,
    }
}

/// A tensor from its binary wire form (raw little-endian, or length-prefixed BYTES).
pub(crate) fn binary_tensor(
    name: &str,
    dtype: DType,
    shape: Vec<usize>,
    raw: Bytes,
    limits: &Limits,
) -> Result<Tensor> {
    if dtype == DType::Bytes {
        let count = shape.iter().product();
        let strings = split_length_prefixed(name, &raw, count, limits)?;
        Tensor::from_strings(shape, strings).map_err(|e| named(name, e))
    } else {
        Tensor::from_raw(dtype, shape, raw).map_err(|e| named(name, e))
    }
}

/// The binary wire form of a tensor: its raw buffer (shared, not copied) or
/// length-prefixed strings.
pub fn raw_contents(t: &Tensor) -> Result<Bytes> {
    match t.strings() {
        Some(s) => {
            let mut out = Vec::with_capacity(binary_len(t));
            write_length_prefixed(&mut out, s)?;
            Ok(Bytes::from(out))
        }
        None => Ok(t.raw().expect("fixed-size dtype has raw data").clone()),
    }
}

/// Splits `BYTES` data in the binary wire form (4-byte little-endian length
/// before each element) into elements, without copying.
pub(crate) fn split_length_prefixed(
    input: &str,
    raw: &Bytes,
    count: usize,
    limits: &Limits,
) -> Result<Vec<Bytes>> {
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
pub(crate) fn write_length_prefixed(out: &mut Vec<u8>, strings: &[Bytes]) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
