//! Owned, row-major tensors with cheap row views and batch concatenation.
//!
//! Fixed-size data lives in a reference-counted [`Bytes`] buffer, so splitting a
//! batch's outputs back into per-request tensors is a pointer bump, not a copy.
//! Buffers built here are 8-byte aligned, so typed views of them never copy.

use crate::shape::fmt_dims;
use crate::{DType, Element, Error, Result};
use bytes::Bytes;
use std::borrow::Cow;

/// A tensor: dtype, concrete shape and data.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

#[derive(Clone, Debug, PartialEq)]
enum Data {
    /// Little-endian elements of a fixed-size dtype.
    Raw(Bytes),
    /// One byte string per element, for `DType::Bytes`.
    Strings(Vec<Bytes>),
}

/// An 8-byte aligned, zero-initialized byte buffer that freezes into [`Bytes`].
#[derive(Debug)]
pub struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf {
            words: vec![0u64; len.div_ceil(8)],
            len,
        }
    }

    /// Reuses the allocation for `len` bytes (contents unspecified, then overwritten by callers).
    pub fn resize(&mut self, len: usize) {
        self.words.resize(len.div_ceil(8), 0);
        self.len = len;
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.words.capacity() * 8
    }

    /// The bytes, writable.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }

    /// Turns the buffer into shareable [`Bytes`] without copying.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }
}

struct TypedVec<T: Element>(Vec<T>);

impl<T: Element> AsRef<[u8]> for TypedVec<T> {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}

fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid_input(format!("shape {} overflows", fmt_dims(shape))))
}

impl Tensor {
    /// A tensor from typed elements; `data.len()` must equal the shape's element count.
    pub fn from_vec<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor> {
        let n = element_count(&shape)?;
        if data.len() != n {
            return Err(Error::invalid_input(format!(
                "{} elements given for shape {} ({} expected)",
                data.len(),
                fmt_dims(&shape),
                n
            )));
        }
        Ok(Tensor {
            dtype: T::DTYPE,
            shape,
            data: Data::Raw(Bytes::from_owner(TypedVec(data))),
        })
    }

    /// A tensor from little-endian raw bytes of a fixed-size dtype.
    pub fn from_raw(dtype: DType, shape: Vec<usize>, raw: Bytes) -> Result<Tensor> {
        let Some(size) = dtype.size_of() else {
            return Err(Error::invalid_input(
                "BYTES tensors need Tensor::from_strings",
            ));
        };
        let n = element_count(&shape)?;
        let expected = n
            .checked_mul(size)
            .ok_or_else(|| Error::invalid_input("tensor too large"))?;
        if raw.len() != expected {
            return Err(Error::invalid_input(format!(
                "{} data has {} bytes but shape {} needs {}",
                dtype,
                raw.len(),
                fmt_dims(&shape),
                expected
            )));
        }
        if dtype == DType::Bool && raw.iter().any(|&b| b > 1) {
            return Err(Error::invalid_input(
                "BOOL data holds a byte other than 0 or 1",
            ));
        }
        Ok(Tensor {
            dtype,
            shape,
            data: Data::Raw(raw),
        })
    }

    /// A `BOOL` tensor.
    pub fn from_bools(shape: Vec<usize>, data: &[bool]) -> Result<Tensor> {
        let bytes: Vec<u8> = data.iter().map(|&b| b as u8).collect();
        Tensor::from_raw(DType::Bool, shape, Bytes::from(bytes))
    }

    /// A `BYTES` tensor, one byte string per element.
    pub fn from_strings(shape: Vec<usize>, data: Vec<Bytes>) -> Result<Tensor> {
        let n = element_count(&shape)?;
        if data.len() != n {
            return Err(Error::invalid_input(format!(
                "{} strings given for shape {} ({} expected)",
                data.len(),
                fmt_dims(&shape),
                n
            )));
        }
        Ok(Tensor {
            dtype: DType::Bytes,
            shape,
            data: Data::Strings(data),
        })
    }

    /// A zero-filled tensor (empty strings for `BYTES`).
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Result<Tensor> {
        let n = element_count(&shape)?;
        match dtype.size_of() {
            Some(size) => {
                let len = n
                    .checked_mul(size)
                    .ok_or_else(|| Error::invalid_input("tensor too large"))?;
                Tensor::from_raw(dtype, shape, AlignedBuf::zeroed(len).freeze())
            }
            None => Tensor::from_strings(shape, vec![Bytes::new(); n]),
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Concrete shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (for `BYTES`, the sum of the strings' lengths).
    pub fn byte_len(&self) -> usize {
        match &self.data {
            Data::Raw(b) => b.len(),
            Data::Strings(s) => s.iter().map(Bytes::len).sum(),
        }
    }

    /// The raw little-endian bytes of a fixed-size tensor.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            Data::Raw(b) => Some(b),
            Data::Strings(_) => None,
        }
    }

    /// The strings of a `BYTES` tensor.
    pub fn strings(&self) -> Option<&[Bytes]> {
        match &self.data {
            Data::Raw(_) => None,
            Data::Strings(s) => Some(s),
        }
    }

    /// A typed view; borrows when the buffer is aligned, copies otherwise.
    pub fn as_slice<T: Element>(&self) -> Result<Cow<'_, [T]>> {
        if self.dtype != T::DTYPE {
            return Err(Error::invalid_input(format!(
                "tensor has dtype {}, not {}",
                self.dtype,
                T::DTYPE
            )));
        }
        let raw = self.raw().expect("fixed-size dtype has raw data");
        Ok(match bytemuck::try_cast_slice::<u8, T>(raw) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(raw)),
        })
    }

    /// A typed copy of the data.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        Ok(self.as_slice::<T>()?.into_owned())
    }

    /// The data as f64 values, for numeric comparisons in tests and validation.
    pub fn to_f64_vec(&self) -> Result<Vec<f64>> {
        let raw = match &self.data {
            Data::Raw(r) => r,
            Data::Strings(_) => return Err(Error::invalid_input("BYTES tensor is not numeric")),
        };
        macro_rules! conv {
            ($t:ty, $f:expr) => {
                bytemuck::pod_collect_to_vec::<u8, $t>(raw)
                    .into_iter()
                    .map($f)
                    .collect()
            };
        }
        Ok(match self.dtype {
            DType::Bool | DType::U8 => raw.iter().map(|&b| b as f64).collect(),
            DType::I8 => raw.iter().map(|&b| b as i8 as f64).collect(),
            DType::U16 => conv!(u16, |v| v as f64),
            DType::U32 => conv!(u32, |v| v as f64),
            DType::U64 => conv!(u64, |v| v as f64),
            DType::I16 => conv!(i16, |v| v as f64),
            DType::I32 => conv!(i32, |v| v as f64),
            DType::I64 => conv!(i64, |v| v as f64),
            DType::F16 => conv!(half::f16, |v| v.to_f64()),
            DType::BF16 => conv!(half::bf16, |v| v.to_f64()),
            DType::F32 => conv!(f32, |v| v as f64),
            DType::F64 => conv!(f64, |v| v),
            DType::Bytes => unreachable!("handled above"),
        })
    }

    /// The same data under another shape with the same element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor> {
        if element_count(&shape)? != self.len() {
            return Err(Error::invalid_input(format!(
                "cannot reshape {} into {}",
                fmt_dims(&self.shape),
                fmt_dims(&shape)
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Elements per row (product of all dimensions after the first).
    fn row_elements(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Rows `start..end` along the first axis, without copying.
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<Tensor> {
        let rows = *self
            .shape
            .first()
            .ok_or_else(|| Error::invalid_input("cannot slice a scalar"))?;
        if start > end || end > rows {
            return Err(Error::invalid_input(format!(
                "rows {start}..{end} out of 0..{rows}"
            )));
        }
        let per_row = self.row_elements();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let data = match &self.data {
            Data::Raw(b) => {
                let size = self.dtype.size_of().expect("raw dtype has a size");
                Data::Raw(b.slice(start * per_row * size..end * per_row * size))
            }
            Data::Strings(s) => Data::Strings(s[start * per_row..end * per_row].to_vec()),
        };
        Ok(Tensor {
            dtype: self.dtype,
            shape,
            data,
        })
    }

    /// Splits along the first axis into consecutive parts of `rows[i]` rows each.
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>> {
        let total: usize = rows.iter().sum();
        if self.shape.first() != Some(&total) {
            return Err(Error::Internal(format!(
                "cannot split {} into parts of {:?} rows",
                fmt_dims(&self.shape),
                rows
            )));
        }
        let mut start = 0;
        rows.iter()
            .map(|&n| {
                let t = self.slice_rows(start, start + n);
                start += n;
                t
            })
            .collect()
    }

    /// Concatenates along the first axis. All parts need the same dtype and the
    /// same trailing dimensions. A single part is returned without copying.
    pub fn concat_rows(parts: &[&Tensor]) -> Result<Tensor> {
        let first = *parts
            .first()
            .ok_or_else(|| Error::Internal("concat of no tensors".into()))?;
        if first.shape.is_empty() {
            return Err(Error::invalid_input("cannot batch scalars"));
        }
        for p in &parts[1..] {
            if p.dtype != first.dtype || p.shape.get(1..) != first.shape.get(1..) {
                return Err(Error::invalid_input(format!(
                    "cannot batch {} {} with {} {}",
                    first.dtype,
                    fmt_dims(&first.shape),
                    p.dtype,
                    fmt_dims(&p.shape)
                )));
            }
        }
        if parts.len() == 1 {
            return Ok(first.clone());
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        match &first.data {
            Data::Raw(_) => {
                let total: usize = parts.iter().map(|p| p.byte_len()).sum();
                let mut buf = AlignedBuf::zeroed(total);
                let out = buf.as_mut_bytes();
                let mut at = 0;
                for p in parts {
                    let raw = p.raw().expect("same dtype");
                    out[at..at + raw.len()].copy_from_slice(raw);
                    at += raw.len();
                }
                Ok(Tensor {
                    dtype: first.dtype,
                    shape,
                    data: Data::Raw(buf.freeze()),
                })
            }
            Data::Strings(_) => {
                let strings = parts
                    .iter()
                    .flat_map(|p| p.strings().expect("same dtype").iter().cloned());
                Ok(Tensor {
                    dtype: DType::Bytes,
                    shape,
                    data: Data::Strings(strings.collect()),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn from_vec_checks_length() {
        assert!(Tensor::from_vec(vec![2, 2], vec![1f32, 2., 3.]).is_err());
        let t = Tensor::from_vec(vec![2, 2], vec![1f32, 2., 3., 4.]).unwrap();
        assert_eq!(t.as_slice::<f32>().unwrap().as_ref(), &[1., 2., 3., 4.]);
        assert!(matches!(t.as_slice::<i32>(), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn from_raw_names_the_mismatch() {
        let e = Tensor::from_raw(DType::F32, vec![2, 3], Bytes::from(vec![0u8; 20])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: FP32 data has 20 bytes but shape [2,3] needs 24"
        );
    }

    #[test]
    fn split_is_zero_copy() {
        let t = Tensor::from_vec(vec![3, 2], vec![0f32, 1., 2., 3., 4., 5.]).unwrap();
        let parts = t.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts[1].shape(), &[2, 2]);
        assert_eq!(parts[1].to_vec::<f32>().unwrap(), vec![2., 3., 4., 5.]);
        let base = t.raw().unwrap().as_ptr();
        assert_eq!(parts[1].raw().unwrap().as_ptr(), base.wrapping_add(8));
    }

    #[test]
    fn concat_rejects_mismatched_rows() {
        let a = Tensor::zeros(DType::F32, vec![1, 3]).unwrap();
        let b = Tensor::zeros(DType::F32, vec![1, 4]).unwrap();
        assert!(Tensor::concat_rows(&[&a, &b]).is_err());
    }

    #[test]
    fn strings_batch_and_split() {
        let a = Tensor::from_strings(vec![1], vec![Bytes::from_static(b"a")]).unwrap();
        let b =
            Tensor::from_strings(vec![2], vec![Bytes::from_static(b"bb"), Bytes::new()]).unwrap();
        let c = Tensor::concat_rows(&[&a, &b]).unwrap();
        assert_eq!(c.shape(), &[3]);
        let parts = c.split_rows(&[1, 2]).unwrap();
        assert_eq!(parts[1], b);
    }

    proptest! {
        #[test]
        fn concat_then_split_round_trips(rows in proptest::collection::vec(1usize..5, 1..6), width in 1usize..5) {
            let parts: Vec<Tensor> = rows.iter().enumerate().map(|(i, &r)| {
                let data: Vec<i64> = (0..r * width).map(|j| (i * 100 + j) as i64).collect();
                Tensor::from_vec(vec![r, width], data).unwrap()
            }).collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            let batch = Tensor::concat_rows(&refs).unwrap();
            prop_assert_eq!(batch.shape()[0], rows.iter().sum::<usize>());
            let back = batch.split_rows(&rows).unwrap();
            prop_assert_eq!(back, parts);
        }
    }
}
