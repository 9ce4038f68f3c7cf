//! Core ML's scalar features (`Int64`, `Double`, `String`) ↔ one-element
//! pomme tensors (`INT64 [1]`, `FP64 [1]`, `BYTES [1]`, as the reader's
//! signature declares them).

use bytes::Bytes;
use pomme_core::{DType, Error, Result, Tensor};

fn one(name: &str, t: &Tensor, want: DType) -> Result<()> {
    if t.dtype() != want || t.len() != 1 {
        return Err(Error::invalid_input(format!(
            "input '{name}' is a Core ML {} scalar: send one {want} element, not {} {:?}",
            match want {
                DType::I64 => "int64",
                DType::F64 => "double",
                _ => "string",
            },
            t.dtype(),
            t.shape()
        )));
    }
    Ok(())
}

/// The value of an `Int64` input.
pub fn int64(name: &str, t: &Tensor) -> Result<i64> {
    one(name, t, DType::I64)?;
    Ok(t.to_vec::<i64>()?[0])
}

/// The value of a `Double` input.
pub fn double(name: &str, t: &Tensor) -> Result<f64> {
    one(name, t, DType::F64)?;
    Ok(t.to_vec::<f64>()?[0])
}

/// The value of a `String` input (UTF-8).
pub fn string(name: &str, t: &Tensor) -> Result<String> {
    one(name, t, DType::Bytes)?;
    let s = &t.strings().expect("BYTES tensor")[0];
    String::from_utf8(s.to_vec())
        .map_err(|_| Error::invalid_input(format!("input '{name}' is not valid UTF-8")))
}

/// Output tensors for scalar features.
pub fn from_int64(v: i64) -> Result<Tensor> {
    Tensor::from_vec(vec![1], vec![v])
}

pub fn from_double(v: f64) -> Result<Tensor> {
    Tensor::from_vec(vec![1], vec![v])
}

pub fn from_string(s: &str) -> Result<Tensor> {
    Tensor::from_strings(vec![1], vec![Bytes::copy_from_slice(s.as_bytes())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_round_trip() {
        assert_eq!(int64("code", &from_int64(-7).unwrap()).unwrap(), -7);
        assert_eq!(double("d", &from_double(0.25).unwrap()).unwrap(), 0.25);
        assert_eq!(string("s", &from_string("chat").unwrap()).unwrap(), "chat");
    }

    #[test]
    fn wrong_scalars_are_invalid_input_naming_the_feature() {
        let two = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
        let e = int64("code", &two).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(
            e.to_string().contains("'code' is a Core ML int64 scalar"),
            "{e}"
        );
        let e = double("d", &from_int64(1).unwrap()).unwrap_err();
        assert!(e.to_string().contains("double"), "{e}");
        let bad = Tensor::from_strings(vec![1], vec![Bytes::from_static(&[0xff])]).unwrap();
        assert!(string("s", &bad).unwrap_err().to_string().contains("UTF-8"));
    }
}
