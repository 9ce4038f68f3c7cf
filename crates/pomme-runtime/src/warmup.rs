//! Configured warm-up (Triton's `model_warmup`): samples that run on every
//! worker's own session before the model version turns ready, so the first
//! real request does not pay for lazy initialisation (plan building, kernel
//! selection, GPU context, page faults of the weights).
//!
//! A sample names its batch size, how many times it runs and, per input,
//! zeros, random values or a file of raw data; inputs it leaves out get
//! zeros. Shapes come from the model's signature unless the sample gives
//! dims (variable dims are 1 otherwise). A sample that cannot be built or
//! fails to run fails the load: a model whose warm-up fails would fail the
//! same requests.

use pomme_core::{DType, Dim, Error, Fill, ModelSignature, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One warm-up sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupSample {
    /// For logs and errors.
    pub name: String,
    /// Rows along the batch dimension when the model batches (≥ 1).
    pub batch_size: usize,
    /// Runs per worker (≥ 1).
    pub count: usize,
    /// Per input, by name; inputs not named get zeros.
    pub inputs: Vec<(String, WarmupInput)>,
}

/// How one input of a sample is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WarmupInput {
    /// Dims without the batch dimension when the model batches (Triton's
    /// convention); all dims otherwise. `None`: the signature's.
    pub dims: Option<Vec<usize>>,
    /// Must be the input's dtype when given (Triton requires it).
    pub dtype: Option<DType>,
    pub data: WarmupData,
}

/// Where an input's values come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WarmupData {
    Zero,
    /// Uniform in [-1, 1) for floats, 0/1 for integers and booleans, empty
    /// strings for BYTES; seeded, so every worker and load sees the same.
    Random,
    /// Raw little-endian values of one row (repeated `batch_size` times) or
    /// of the whole batch; BYTES as Triton writes them: each element a
    /// 4-byte little-endian length and its bytes.
    File(PathBuf),
}

impl WarmupSample {
    /// The sample's tensors in the signature's input order. `batching`: the
    /// model runs batches (its first dim is the batch dimension).
    pub(crate) fn tensors(&self, sig: &ModelSignature, batching: bool) -> Result<Vec<Tensor>> {
        let bad =
            |msg: String| Error::invalid_input(format!("model_warmup '{}': {msg}", self.name));
        if let Some((unknown, _)) = self
            .inputs
            .iter()
            .find(|(n, _)| !sig.inputs.iter().any(|s| &s.name == n))
        {
            let known: Vec<&str> = sig.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(bad(format!(
                "the model has no input '{unknown}' (inputs: {})",
                known.join(", ")
            )));
        }
        let rows = self.batch_size.max(1);
        let mut state = 0x5eed_cafe_u64;
        sig.inputs
            .iter()
            .map(|spec| {
                let zero = WarmupInput {
                    dims: None,
                    dtype: None,
                    data: WarmupData::Zero,
                };
                let given = self
                    .inputs
                    .iter()
                    .find(|(n, _)| n == &spec.name)
                    .map_or(&zero, |(_, i)| i);
                if let Some(dt) = given.dtype
                    && dt != spec.dtype
                {
                    return Err(bad(format!(
                        "input '{}' is {dt} here but the model takes {}",
                        spec.name, spec.dtype
                    )));
                }
                let dims = spec.shape.dims();
                let batched = batching && !dims.is_empty();
                let row: Vec<usize> = match &given.dims {
                    Some(d) => d.clone(),
                    None => dims
                        .iter()
                        .skip(usize::from(batched))
                        .map(|d| match d {
                            Dim::Fixed(n) => *n,
                            Dim::Symbolic(_) => 1,
                        })
                        .collect(),
                };
                let shape: Vec<usize> = if batched {
                    std::iter::once(rows).chain(row.iter().copied()).collect()
                } else {
                    row.clone()
                };
                if shape.len() != dims.len() {
                    return Err(bad(format!(
                        "input '{}' has rank {} here but the model's is {}",
                        spec.name,
                        shape.len(),
                        dims.len()
                    )));
                }
                let t = match &given.data {
                    WarmupData::Zero => Tensor::zeros(spec.dtype, shape),
                    WarmupData::Random if spec.dtype == DType::Bytes => {
                        Tensor::zeros(spec.dtype, shape)
                    }
                    WarmupData::Random => pomme_core::synthetic_tensor(
                        Fill::Uniform(state),
                        &mut state,
                        spec.dtype,
                        shape,
                    ),
                    WarmupData::File(path) => {
                        let raw = std::fs::read(path)
                            .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
                        from_file(&raw, spec.dtype, shape, if batched { rows } else { 1 }).map_err(
                            |e| {
                                bad(format!(
                                    "{} for input '{}': {}",
                                    path.display(),
                                    spec.name,
                                    e.message()
                                ))
                            },
                        )
                    }
                };
                t.map_err(|e| bad(format!("input '{}': {}", spec.name, e.message())))
            })
            .collect()
    }
}

/// A tensor of `shape` from a file holding either the whole tensor or one of
/// its `rows` rows (then repeated).
fn from_file(raw: &[u8], dtype: DType, shape: Vec<usize>, rows: usize) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let per_row = n / rows.max(1);
    match dtype.size_of() {
        Some(size) => {
            let data = if raw.len() == n * size {
                raw.to_vec()
            } else if rows > 1 && raw.len() == per_row * size {
                raw.repeat(rows)
            } else {
                return Err(Error::invalid_input(format!(
                    "{} bytes, but {} {dtype} values ({} bytes) or one row of them ({} bytes) are needed",
                    raw.len(),
                    n,
                    n * size,
                    per_row * size
                )));
            };
            Tensor::from_raw(dtype, shape, data.into())
        }
        None => {
            let mut items = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                let (len, tail) = rest
                    .split_first_chunk::<4>()
                    .ok_or_else(|| Error::invalid_input("a BYTES length prefix is cut short"))?;
                let len = u32::from_le_bytes(*len) as usize;
                if tail.len() < len {
                    return Err(Error::invalid_input(
                        "a BYTES element is shorter than its length prefix",
                    ));
                }
                items.push(bytes::Bytes::copy_from_slice(&tail[..len]));
                rest = &tail[len..];
            }
            if items.len() == per_row && rows > 1 {
                items = items.iter().cycle().take(n).cloned().collect();
            }
            if items.len() != n {
                return Err(Error::invalid_input(format!(
                    "{} strings, but {n} (or one row of {per_row}) are needed",
                    items.len()
                )));
            }
            Tensor::from_strings(shape, items)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::{Shape, TensorSpec};

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorSpec::new(
                    "x",
                    DType::F32,
                    Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(4)]),
                ),
                TensorSpec::new(
                    "s",
                    DType::Bytes,
                    Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(2)]),
                ),
            ],
            outputs: vec![],
        }
    }

    fn sample(inputs: Vec<(String, WarmupInput)>) -> WarmupSample {
        WarmupSample {
            name: "w".into(),
            batch_size: 3,
            count: 1,
            inputs,
        }
    }

    fn input(data: WarmupData) -> WarmupInput {
        WarmupInput {
            dims: None,
            dtype: None,
            data,
        }
    }

    #[test]
    fn shapes_follow_the_signature_and_the_batch_size() {
        let t = sample(vec![]).tensors(&sig(), true).unwrap();
        assert_eq!(t[0].shape(), &[3, 4]);
        assert_eq!(t[0].to_vec::<f32>().unwrap(), vec![0.0; 12]);
        assert_eq!(t[1].shape(), &[3, 2]);
        // Not batching: the signature's dims, variable ones 1.
        let t = sample(vec![]).tensors(&sig(), false).unwrap();
        assert_eq!(t[0].shape(), &[1, 4]);
        let r = sample(vec![("x".into(), input(WarmupData::Random))])
            .tensors(&sig(), true)
            .unwrap();
        let v = r[0].to_vec::<f32>().unwrap();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)) && v.iter().any(|&x| x != 0.0));
    }

    #[test]
    fn files_hold_one_row_or_the_batch() {
        let dir = tempfile::tempdir().unwrap();
        let row: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(dir.path().join("x"), &row).unwrap();
        let mut strings = Vec::new();
        for s in ["ab", ""] {
            strings.extend((s.len() as u32).to_le_bytes());
            strings.extend(s.as_bytes());
        }
        std::fs::write(dir.path().join("s"), &strings).unwrap();
        let file = |n: &str| input(WarmupData::File(dir.path().join(n)));
        let t = sample(vec![("x".into(), file("x")), ("s".into(), file("s"))])
            .tensors(&sig(), true)
            .unwrap();
        assert_eq!(
            t[0].to_vec::<f32>().unwrap(),
            [1.0, 2.0, 3.0, 4.0].repeat(3)
        );
        assert_eq!(t[1].strings().unwrap().len(), 6);
        assert_eq!(&t[1].strings().unwrap()[0][..], b"ab");

        std::fs::write(dir.path().join("short"), &row[..6]).unwrap();
        let e = sample(vec![("x".into(), file("short"))])
            .tensors(&sig(), true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model_warmup 'w'") && e.contains("6 bytes"),
            "{e}"
        );
    }

    #[test]
    fn mistakes_are_named() {
        let e = sample(vec![("y".into(), input(WarmupData::Zero))])
            .tensors(&sig(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no input 'y'") && e.contains("x, s"), "{e}");
        let mut wrong = input(WarmupData::Zero);
        wrong.dtype = Some(DType::F64);
        let e = sample(vec![("x".into(), wrong)])
            .tensors(&sig(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("FP64") && e.contains("FP32"), "{e}");
        let mut rank = input(WarmupData::Zero);
        rank.dims = Some(vec![2, 2]);
        let e = sample(vec![("x".into(), rank)])
            .tensors(&sig(), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank 3"), "{e}");
    }
}
