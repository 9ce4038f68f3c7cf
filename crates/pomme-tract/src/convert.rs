//! Conversions between pomme's vocabulary and tract's: dtypes, dims, tensors and errors.
//!
//! Tensor conversion costs one memcpy each way for fixed-size types on input
//! and none on output: an output [`Tensor`] borrows the tract tensor's buffer
//! through [`Bytes::from_owner`].

use bytes::Bytes;
use pomme_core::{DType, Dim, Error, Result, Shape, Tensor};
use tract_core::prelude::{DatumType, IntoTensor, TDim, TValue, Tensor as TractTensor, TractError};

/// The pomme dtype a tract datum type is exposed as. Quantized types are exposed
/// as their storage type; `TDim` (tract's symbolic integer) as `I64`.
pub(crate) fn dtype_from_tract(dt: DatumType) -> Option<DType> {
    Some(match dt {
        DatumType::Bool => DType::Bool,
        DatumType::U8 | DatumType::QU8(_) => DType::U8,
        DatumType::U16 => DType::U16,
        DatumType::U32 => DType::U32,
        DatumType::U64 => DType::U64,
        DatumType::I8 | DatumType::QI8(_) => DType::I8,
        DatumType::I16 => DType::I16,
        DatumType::I32 | DatumType::QI32(_) => DType::I32,
        DatumType::I64 | DatumType::TDim => DType::I64,
        DatumType::F16 => DType::F16,
        DatumType::F32 => DType::F32,
        DatumType::F64 => DType::F64,
        DatumType::String => DType::Bytes,
        _ => return None,
    })
}

/// A tract dimension as a pomme one: integers stay fixed, anything symbolic
/// (`batch`, or an expression such as `batch*2`) keeps its tract spelling.
pub(crate) fn dim_from_tract(d: &TDim) -> Dim {
    match d.as_i64() {
        Some(v) if v >= 0 => Dim::Fixed(v as usize),
        _ => Dim::Symbolic(d.to_string()),
    }
}

pub(crate) fn shape_from_tract<'a>(dims: impl IntoIterator<Item = &'a TDim>) -> Shape {
    Shape(dims.into_iter().map(dim_from_tract).collect())
}

/// A tract error as one line: anyhow's `{:#}` joins the cause chain with `: `,
/// then whitespace (node dumps span lines) is collapsed and very long text cut.
pub(crate) fn error_line(e: &TractError) -> String {
    const MAX: usize = 600;
    let s = pomme_core::one_line(format!("{e:#}"));
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A pomme tensor as a tract one of datum type `dt` (the model input's type).
pub(crate) fn to_tract(t: &Tensor, dt: DatumType, name: &str) -> Result<TValue> {
    let shape = t.shape();
    let fail = |e: TractError| {
        Error::invalid_input(format!(
            "input '{name}' cannot be handed to tract: {}",
            error_line(&e)
        ))
    };
    macro_rules! copy {
        ($t:ty) => {
            TractTensor::from_shape::<$t>(shape, &t.as_slice::<$t>()?).map_err(fail)?
        };
    }
    if dt.is_quantized() {
        // A quantized input has the storage of its pomme dtype: copy the bytes
        // under the model's datum type (which carries the zero point and scale).
        let raw = t.raw().ok_or_else(|| {
            Error::invalid_input(format!(
                "input '{name}' must be numeric for tract type {dt:?}"
            ))
        })?;
        let mut out = TractTensor::zero_dt(dt, shape).map_err(fail)?;
        if out.as_bytes().len() != raw.len() {
            return Err(Error::invalid_input(format!(
                "input '{name}' is {} but the model takes {dt:?}",
                t.dtype()
            )));
        }
        out.as_bytes_mut().copy_from_slice(raw);
        return Ok(out.into());
    }
    let tensor = match t.dtype() {
        DType::F32 => copy!(f32),
        DType::F64 => copy!(f64),
        DType::F16 => copy!(half::f16),
        DType::I8 => copy!(i8),
        DType::I16 => copy!(i16),
        DType::I32 => copy!(i32),
        DType::I64 => copy!(i64),
        DType::U8 => copy!(u8),
        DType::U16 => copy!(u16),
        DType::U32 => copy!(u32),
        DType::U64 => copy!(u64),
        DType::Bool => {
            // `bool` is not `Pod`, so copy the bytes into a bool tensor; pomme
            // guarantees BOOL bytes are 0 or 1, which is a valid `bool`.
            let mut out = TractTensor::zero_dt(DatumType::Bool, shape).map_err(fail)?;
            out.as_bytes_mut()
                .copy_from_slice(t.raw().map(|b| &b[..]).unwrap_or_default());
            out
        }
        DType::Bytes => {
            let strings = t.strings().unwrap_or_default();
            let strings = strings
                .iter()
                .map(|b| String::from_utf8(b.to_vec()))
                .collect::<std::result::Result<Vec<String>, _>>()
                .map_err(|_| {
                    Error::invalid_input(format!(
                        "input '{name}' holds a string that is not UTF-8 (tract strings are UTF-8)"
                    ))
                })?;
            let array =
                tract_core::prelude::tract_ndarray::ArrayD::from_shape_vec(shape.to_vec(), strings)
                    .map_err(|e| Error::invalid_input(format!("input '{name}': {e}")))?;
            TractTensor::from(array)
        }
        DType::BF16 => {
            return Err(Error::invalid_input(format!(
                "input '{name}' is BF16, which tract does not support"
            )));
        }
    };
    // Shape-typed inputs (`TDim`) arrive as I64.
    let tensor = if dt == DatumType::TDim && tensor.datum_type() != dt {
        tensor.cast_to_dt(dt).map_err(fail)?.into_owned()
    } else {
        tensor
    };
    Ok(tensor.into())
}

/// Holds a tract tensor so that its buffer can back a [`Bytes`] without a copy.
struct TractBuf(TractTensor);

impl AsRef<[u8]> for TractBuf {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A tract output as a pomme tensor, named `name` for error messages.
pub(crate) fn from_tract(v: TValue, name: &str) -> Result<Tensor> {
    let fail = |e: TractError| {
        Error::InferenceFailed(format!(
            "output '{name}' cannot be read back: {}",
            error_line(&e)
        ))
    };
    let mut t = v.into_tensor();
    if !t.is_plain_ram() {
        t = t.into_plain_ram().map_err(fail)?;
    }
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    match dt {
        DatumType::String => {
            let strings = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<String>().map(|s| s.to_vec()))
                .map_err(fail)?;
            let strings = strings
                .into_iter()
                .map(|s| Bytes::from(s.into_bytes()))
                .collect();
            Tensor::from_strings(shape, strings)
        }
        DatumType::TDim => {
            let t = t.cast_to_dt(DatumType::I64).map_err(fail)?.into_owned();
            Tensor::from_raw(DType::I64, shape, Bytes::from_owner(TractBuf(t)))
        }
        _ => {
            let Some(dtype) = dtype_from_tract(dt) else {
                return Err(Error::InferenceFailed(format!(
                    "output '{name}' has tract type {dt:?}, which pomme cannot represent"
                )));
            };
            Tensor::from_raw(dtype, shape, Bytes::from_owner(TractBuf(t)))
        }
    }
    .map_err(|e| Error::InferenceFailed(format!("output '{name}': {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_round_trip_shares_the_output_buffer() {
        let t = Tensor::from_vec(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        let tv = to_tract(&t, DatumType::F32, "x").unwrap();
        let back = from_tract(tv, "x").unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn bools_strings_and_i64() {
        let b = Tensor::from_bools(vec![3], &[true, false, true]).unwrap();
        assert_eq!(
            from_tract(to_tract(&b, DatumType::Bool, "b").unwrap(), "b").unwrap(),
            b
        );
        let s = Tensor::from_strings(
            vec![2],
            vec![Bytes::from_static(b"pomme"), Bytes::from_static(b"")],
        )
        .unwrap();
        assert_eq!(
            from_tract(to_tract(&s, DatumType::String, "s").unwrap(), "s").unwrap(),
            s
        );
        let i = Tensor::from_vec(vec![2], vec![-1i64, 7]).unwrap();
        assert_eq!(
            from_tract(to_tract(&i, DatumType::I64, "i").unwrap(), "i").unwrap(),
            i
        );
        let bad = Tensor::from_strings(vec![1], vec![Bytes::from_static(&[0xff])]).unwrap();
        assert!(matches!(
            to_tract(&bad, DatumType::String, "s"),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn dims_keep_their_names() {
        let scope = tract_core::prelude::SymbolScope::default();
        let batch = TDim::Sym(scope.sym("batch"));
        assert_eq!(dim_from_tract(&batch), Dim::Symbolic("batch".into()));
        assert_eq!(dim_from_tract(&TDim::Val(3)), Dim::Fixed(3));
    }
}
