//! Conversions between pomme's vocabulary and `ort`'s: element types, declared
//! shapes, and tensor values in both directions.
//!
//! Inputs are handed to ONNX Runtime without copying whenever the pomme buffer is
//! aligned for its element type (always, for buffers pomme builds): the ORT value
//! borrows the bytes for the duration of the run. `BOOL` (Rust `bool` is not `Pod`)
//! and `BYTES` (ORT keeps its own C strings) are copied once. Outputs are copied
//! once out of ORT's buffer into a `Vec<T>` that becomes the pomme tensor.

use bytes::Bytes;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Outlet, TensorElementType, TensorRef, ValueType};
use pomme_core::{DType, Dim, Element, Error, Result, Shape, Tensor, TensorSpec, one_line};
use std::borrow::Cow;
use std::fmt::Debug;

/// pomme's dtype for an ORT element type; `None` for types pomme cannot carry
/// (complex, 8-, 4- and 2-bit floats and ints).
pub(crate) fn dtype_from_ort(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Bool => DType::Bool,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Uint16 => DType::U16,
        TensorElementType::Uint32 => DType::U32,
        TensorElementType::Uint64 => DType::U64,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Int16 => DType::I16,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Bfloat16 => DType::BF16,
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::String => DType::Bytes,
        _ => return None,
    })
}

/// ORT's element type for a pomme dtype (every pomme dtype has one); the inverse
/// of [`dtype_from_ort`], kept to test that the two tables agree.
#[cfg(test)]
pub(crate) fn dtype_to_ort(d: DType) -> TensorElementType {
    match d {
        DType::Bool => TensorElementType::Bool,
        DType::U8 => TensorElementType::Uint8,
        DType::U16 => TensorElementType::Uint16,
        DType::U32 => TensorElementType::Uint32,
        DType::U64 => TensorElementType::Uint64,
        DType::I8 => TensorElementType::Int8,
        DType::I16 => TensorElementType::Int16,
        DType::I32 => TensorElementType::Int32,
        DType::I64 => TensorElementType::Int64,
        DType::F16 => TensorElementType::Float16,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::F32 => TensorElementType::Float32,
        DType::F64 => TensorElementType::Float64,
        DType::Bytes => TensorElementType::String,
    }
}

/// A declared input or output as a pomme spec. Dimensions ORT reports as `-1`
/// keep the model's symbol (`batch`), or become `?` when the model names none.
pub(crate) fn spec_from_outlet(outlet: &Outlet, role: &str) -> Result<TensorSpec> {
    let name = outlet.name();
    let ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    } = outlet.dtype()
    else {
        return Err(Error::InvalidModelFormat(format!(
            "{role} '{name}' is a {}, but the ort backend serves tensors only",
            kind_of(outlet.dtype())
        )));
    };
    let dtype = dtype_from_ort(*ty).ok_or_else(|| {
        Error::InvalidModelFormat(format!(
            "{role} '{name}' has element type {ty}, which pomme cannot carry"
        ))
    })?;
    let dims = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| match usize::try_from(d) {
            Ok(n) => Dim::Fixed(n),
            Err(_) => match dimension_symbols.get(i).map(String::as_str) {
                Some(sym) if !sym.is_empty() => Dim::Symbolic(sym.to_string()),
                _ => Dim::Symbolic("?".to_string()),
            },
        })
        .collect();
    Ok(TensorSpec::new(name, dtype, Shape(dims)))
}

fn kind_of(t: &ValueType) -> &'static str {
    match t {
        ValueType::Tensor { .. } => "tensor",
        ValueType::Sequence(_) => "sequence",
        ValueType::Map { .. } => "map",
        ValueType::Optional(_) => "optional",
    }
}

fn ort_err(spec: &TensorSpec, e: ort::Error) -> Error {
    Error::invalid_input(format!("input '{}': {}", spec.name, one_line(e.message())))
}

fn ort_shape(t: &Tensor) -> Vec<i64> {
    t.shape().iter().map(|&d| d as i64).collect()
}

/// A fixed-size tensor as an ORT value: borrowed when aligned, else one copy.
fn primitive<'a, T>(spec: &TensorSpec, t: &'a Tensor) -> Result<SessionInputValue<'a>>
where
    T: Element + ort::value::PrimitiveTensorElementType + Debug,
{
    let shape = ort_shape(t);
    Ok(match t.as_slice::<T>()? {
        Cow::Borrowed(data) => TensorRef::from_array_view((shape, data))
            .map_err(|e| ort_err(spec, e))?
            .into(),
        Cow::Owned(data) => ort::value::Tensor::from_array((shape, data))
            .map_err(|e| ort_err(spec, e))?
            .into(),
    })
}

/// Turns one input into an ORT value for `spec` (dtype already checked by the caller).
pub(crate) fn to_ort<'a>(spec: &TensorSpec, t: &'a Tensor) -> Result<SessionInputValue<'a>> {
    if t.dtype() != spec.dtype {
        return Err(Error::invalid_input(format!(
            "input '{}' has datatype {}, expected {}",
            spec.name,
            t.dtype(),
            spec.dtype
        )));
    }
    match t.dtype() {
        DType::U8 => primitive::<u8>(spec, t),
        DType::U16 => primitive::<u16>(spec, t),
        DType::U32 => primitive::<u32>(spec, t),
        DType::U64 => primitive::<u64>(spec, t),
        DType::I8 => primitive::<i8>(spec, t),
        DType::I16 => primitive::<i16>(spec, t),
        DType::I32 => primitive::<i32>(spec, t),
        DType::I64 => primitive::<i64>(spec, t),
        DType::F16 => primitive::<half::f16>(spec, t),
        DType::BF16 => primitive::<half::bf16>(spec, t),
        DType::F32 => primitive::<f32>(spec, t),
        DType::F64 => primitive::<f64>(spec, t),
        DType::Bool => {
            let raw = t.raw().expect("BOOL tensors hold raw bytes");
            let data: Vec<bool> = raw.iter().map(|&b| b != 0).collect();
            Ok(ort::value::Tensor::from_array((ort_shape(t), data))
                .map_err(|e| ort_err(spec, e))?
                .into())
        }
        DType::Bytes => {
            let strings = t.strings().expect("BYTES tensors hold strings");
            let text = strings
                .iter()
                .enumerate()
                .map(|(i, s)| match std::str::from_utf8(s) {
                    Ok(s) if !s.contains('\0') => Ok(s.to_string()),
                    Ok(_) => Err(Error::invalid_input(format!(
                        "input '{}' element {i} contains a NUL byte, which ONNX Runtime strings cannot hold",
                        spec.name
                    ))),
                    Err(_) => Err(Error::invalid_input(format!(
                        "input '{}' element {i} is not UTF-8, which ONNX Runtime strings must be",
                        spec.name
                    ))),
                })
                .collect::<Result<Vec<String>>>()?;
            Ok(
                ort::value::Tensor::from_string_array((ort_shape(t), &text[..]))
                    .map_err(|e| ort_err(spec, e))?
                    .into(),
            )
        }
    }
}

fn out_err(name: &str, e: ort::Error) -> Error {
    Error::InferenceFailed(format!("output '{name}': {}", one_line(e.message())))
}

fn extract<T>(name: &str, v: &DynValue) -> Result<Tensor>
where
    T: Element + ort::value::PrimitiveTensorElementType,
{
    let (shape, data) = v.try_extract_tensor::<T>().map_err(|e| out_err(name, e))?;
    Tensor::from_vec(usize_shape(shape), data.to_vec())
}

fn usize_shape(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

/// Copies one ORT output into a pomme tensor.
pub(crate) fn from_ort(name: &str, v: &DynValue) -> Result<Tensor> {
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => {
            return Err(Error::InferenceFailed(format!(
                "output '{name}' is a {}, not a tensor",
                kind_of(other)
            )));
        }
    };
    let dtype = dtype_from_ort(ty).ok_or_else(|| {
        Error::InferenceFailed(format!(
            "output '{name}' has element type {ty}, which pomme cannot carry"
        ))
    })?;
    match dtype {
        DType::U8 => extract::<u8>(name, v),
        DType::U16 => extract::<u16>(name, v),
        DType::U32 => extract::<u32>(name, v),
        DType::U64 => extract::<u64>(name, v),
        DType::I8 => extract::<i8>(name, v),
        DType::I16 => extract::<i16>(name, v),
        DType::I32 => extract::<i32>(name, v),
        DType::I64 => extract::<i64>(name, v),
        DType::F16 => extract::<half::f16>(name, v),
        DType::BF16 => extract::<half::bf16>(name, v),
        DType::F32 => extract::<f32>(name, v),
        DType::F64 => extract::<f64>(name, v),
        DType::Bool => {
            let (shape, data) = v
                .try_extract_tensor::<bool>()
                .map_err(|e| out_err(name, e))?;
            let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
            Tensor::from_raw(DType::Bool, usize_shape(shape), Bytes::from(bytes))
        }
        DType::Bytes => {
            let (shape, data) = v.try_extract_strings().map_err(|e| out_err(name, e))?;
            let shape = usize_shape(shape);
            Tensor::from_strings(shape, data.into_iter().map(Bytes::from).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_from_ort(dtype_to_ort(d)), Some(d), "{d}");
        }
        assert_eq!(dtype_from_ort(TensorElementType::Float8E4M3FN), None);
        assert_eq!(dtype_from_ort(TensorElementType::Complex64), None);
    }

    #[test]
    fn multi_line_messages_collapse() {
        assert_eq!(
            one_line("Load model failed:\n  Protobuf parsing failed.\n"),
            "Load model failed: Protobuf parsing failed."
        );
    }
}
