//! Calibration and validation data: `.npz` archives (or arrays built in
//! memory) matched to a model's inputs.
//!
//! Matching rules, in order: an array named like each model input; for a
//! single-input model, the only array (labels aside), or one named `X`, `x`
//! or `input`. The dtype must equal the input's (no silent casts: feeding
//! float64 to a float32 model is a mistake worth hearing about). The shape
//! must fit the declared one; as a convenience, rows whose element count
//! equals the input's fixed per-row size are reshaped (digits' `X` `[N,64]` →
//! `[N,1,8,8]` for the CNN), and this is reported.

use pomme_core::{DType, Error, ModelSignature, Result, Tensor};
use std::io::Read;
use std::path::Path;

/// Named arrays, all sharing the first (row) dimension where used together.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub arrays: Vec<(String, Tensor)>,
    /// Where it came from, for messages.
    pub source: String,
}

/// Label array names tried when none is given.
pub const DEFAULT_LABEL_KEYS: [&str; 3] = ["y", "label", "labels"];

fn npy_dtype(descr: &str) -> Option<DType> {
    Some(match descr {
        "<f4" => DType::F32,
        "<f8" => DType::F64,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "<i2" => DType::I16,
        "|i1" => DType::I8,
        "|u1" => DType::U8,
        "<u2" => DType::U16,
        "<u4" => DType::U32,
        "<u8" => DType::U64,
        "|b1" => DType::Bool,
        _ => return None,
    })
}

/// Reads one `.npy` stream into a tensor (C order, little-endian, plain dtypes).
fn read_npy<R: Read>(npy: npyz::NpyFile<R>, what: &str) -> Result<Tensor> {
    let bad = |m: String| Error::invalid_input(format!("{what}: {m}"));
    if npy.order() != npyz::Order::C {
        return Err(bad("Fortran-ordered arrays are not supported".into()));
    }
    let descr = npy.dtype().descr();
    // `descr()` is the header's Python literal: `'<f4'`, quotes included.
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let dtype = npy_dtype(descr).ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let t = match dtype {
        DType::F32 => Tensor::from_vec(
            shape,
            npy.into_vec::<f32>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::F64 => Tensor::from_vec(
            shape,
            npy.into_vec::<f64>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::I64 => Tensor::from_vec(
            shape,
            npy.into_vec::<i64>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::I32 => Tensor::from_vec(
            shape,
            npy.into_vec::<i32>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::I16 => Tensor::from_vec(
            shape,
            npy.into_vec::<i16>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::I8 => Tensor::from_vec(shape, npy.into_vec::<i8>().map_err(|e| bad(e.to_string()))?),
        DType::U8 => Tensor::from_vec(shape, npy.into_vec::<u8>().map_err(|e| bad(e.to_string()))?),
        DType::U16 => Tensor::from_vec(
            shape,
            npy.into_vec::<u16>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::U32 => Tensor::from_vec(
            shape,
            npy.into_vec::<u32>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::U64 => Tensor::from_vec(
            shape,
            npy.into_vec::<u64>().map_err(|e| bad(e.to_string()))?,
        ),
        DType::Bool => {
            let v = npy.into_vec::<bool>().map_err(|e| bad(e.to_string()))?;
            Tensor::from_bools(shape, &v)
        }
        DType::F16 => {
            let v = npy.into_vec::<u16>().map_err(|e| bad(e.to_string()))?;
            let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Tensor::from_raw(DType::F16, shape, raw.into())
        }
        DType::BF16 | DType::Bytes => unreachable!("not produced by npy_dtype"),
    };
    t.map_err(|e| bad(e.to_string()))
}

impl Dataset {
    /// Arrays built in memory.
    pub fn from_arrays(arrays: Vec<(String, Tensor)>) -> Dataset {
        Dataset {
            arrays,
            source: "in-memory data".into(),
        }
    }

    /// Reads every array of an `.npz` archive. A missing, truncated or
    /// otherwise unreadable file is one `InvalidInput` line naming it.
    #[cfg(feature = "npz")]
    pub fn from_npz(path: &Path) -> Result<Dataset> {
        let shown = path.display().to_string();
        let bad = |m: String| Error::invalid_input(format!("data file {shown}: {m}"));
        let mut npz = npyz::npz::NpzArchive::open(path)
            .map_err(|e| bad(format!("not a readable .npz archive ({e})")))?;
        let names: Vec<String> = npz.array_names().map(str::to_string).collect();
        if names.is_empty() {
            return Err(bad("the archive holds no arrays".into()));
        }
        let mut arrays = Vec::with_capacity(names.len());
        for name in names {
            let npy = npz
                .by_name(&name)
                .map_err(|e| bad(format!("array '{name}' is unreadable ({e})")))?
                .ok_or_else(|| bad(format!("array '{name}' vanished")))?;
            let t = read_npy(npy, &format!("data file {shown}, array '{name}'"))?;
            arrays.push((name, t));
        }
        Ok(Dataset {
            arrays,
            source: shown,
        })
    }

    /// Without the `npz` feature: an `InvalidInput` line saying so.
    #[cfg(not(feature = "npz"))]
    pub fn from_npz(path: &Path) -> Result<Dataset> {
        Err(Error::invalid_input(format!(
            "data file {}: this build reads no .npz archives (pomme-quant's npz feature is off)",
            path.display()
        )))
    }

    /// Reads one `.npy` file as an array named `name`.
    pub fn read_npy_file(path: &Path) -> Result<Tensor> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::invalid_input(format!("cannot read {shown}: {e}")))?;
        let npy = npyz::NpyFile::new(&bytes[..])
            .map_err(|e| Error::invalid_input(format!("{shown} is not a .npy file: {e}")))?;
        read_npy(npy, &shown)
    }

    /// The array named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.arrays.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// The label array: `key` when given (it must exist), else the first of
    /// [`DEFAULT_LABEL_KEYS`] present that is not a model input. Returned as
    /// class indices.
    pub fn labels(
        &self,
        key: Option<&str>,
        sig: &ModelSignature,
    ) -> Result<Option<(String, Vec<i64>)>> {
        let name = match key {
            Some(k) => {
                if self.get(k).is_none() {
                    return Err(Error::invalid_input(format!(
                        "{} has no label array '{k}' (arrays: {})",
                        self.source,
                        self.names().join(", ")
                    )));
                }
                k.to_string()
            }
            None => match DEFAULT_LABEL_KEYS
                .iter()
                .find(|k| self.get(k).is_some() && !sig.inputs.iter().any(|i| i.name == **k))
            {
                Some(k) => k.to_string(),
                None => return Ok(None),
            },
        };
        let t = self.get(&name).expect("checked");
        if t.shape().len() != 1 || t.dtype().is_float() || t.dtype() == DType::Bytes {
            return Err(Error::invalid_input(format!(
                "labels '{name}' in {} must be a 1-D integer array, got {} {:?}",
                self.source,
                t.dtype(),
                t.shape()
            )));
        }
        let v = t.to_f64_vec()?.into_iter().map(|x| x as i64).collect();
        Ok(Some((name, v)))
    }

    fn names(&self) -> Vec<&str> {
        self.arrays.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// One tensor per model input, in signature order, all with the same rows;
    /// `notes` receives any reshape made. Mismatches are `InvalidInput` lines
    /// naming the array and the input.
    pub fn inputs_for(
        &self,
        sig: &ModelSignature,
        label_key: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Result<Vec<Tensor>> {
        let src = &self.source;
        let mut out: Vec<Tensor> = Vec::with_capacity(sig.inputs.len());
        for spec in &sig.inputs {
            let (key, t) = match self.arrays.iter().find(|(n, _)| n == &spec.name) {
                Some((n, t)) => (n.clone(), t.clone()),
                None if sig.inputs.len() == 1 => {
                    let candidates: Vec<&(String, Tensor)> = self
                        .arrays
                        .iter()
                        .filter(|(n, _)| {
                            Some(n.as_str()) != label_key
                                && !DEFAULT_LABEL_KEYS.contains(&n.as_str())
                        })
                        .collect();
                    let pick = if candidates.len() == 1 {
                        Some(candidates[0])
                    } else {
                        candidates
                            .iter()
                            .find(|(n, _)| ["X", "x", "input"].contains(&n.as_str()))
                            .copied()
                    };
                    match pick {
                        Some((n, t)) => (n.clone(), t.clone()),
                        None => {
                            return Err(Error::invalid_input(format!(
                                "{src} has no array for model input '{}' (arrays: {})",
                                spec.name,
                                self.names().join(", ")
                            )));
                        }
                    }
                }
                None => {
                    return Err(Error::invalid_input(format!(
                        "{src} has no array named '{}' for the model input of that name (arrays: {})",
                        spec.name,
                        self.names().join(", ")
                    )));
                }
            };
            if t.dtype() != spec.dtype {
                return Err(Error::invalid_input(format!(
                    "array '{key}' in {src} is {} but model input '{}' is {}",
                    t.dtype(),
                    spec.name,
                    spec.dtype
                )));
            }
            let t = if spec.shape.accepts(t.shape()) {
                t
            } else {
                // Reshape rows when the input's per-row shape is fixed and
                // has the same number of elements.
                let per_row: Option<Vec<usize>> = spec
                    .shape
                    .dims()
                    .iter()
                    .skip(1)
                    .map(|d| d.fixed())
                    .collect();
                let rows = t.shape().first().copied().unwrap_or(0);
                let have: usize = t.shape().iter().skip(1).product();
                match per_row {
                    Some(dims)
                        if spec.shape.rank() >= 1
                            && !t.shape().is_empty()
                            && dims.iter().product::<usize>() == have
                            && spec.shape.dims()[0].accepts(rows) =>
                    {
                        let mut shape = vec![rows];
                        shape.extend(dims);
                        notes.push(format!(
                            "array '{key}' {:?} reshaped to {:?} for input '{}'",
                            t.shape(),
                            shape,
                            spec.name
                        ));
                        t.reshape(shape)?
                    }
                    _ => {
                        return Err(Error::invalid_input(format!(
                            "array '{key}' in {src} has shape {:?} but model input '{}' expects {}",
                            t.shape(),
                            spec.name,
                            spec.shape
                        )));
                    }
                }
            };
            out.push(t);
        }
        if let Some(first) = out.first() {
            let rows = first.shape().first().copied();
            if let Some((spec, t)) = sig
                .inputs
                .iter()
                .zip(&out)
                .find(|(_, t)| t.shape().first().copied() != rows)
            {
                return Err(Error::invalid_input(format!(
                    "{src}: input '{}' has {:?} rows but '{}' has {:?}",
                    spec.name,
                    t.shape().first(),
                    sig.inputs[0].name,
                    rows
                )));
            }
            if rows == Some(0) {
                return Err(Error::invalid_input(format!("{src} holds no rows")));
            }
        }
        Ok(out)
    }
}

/// Splits full-data inputs into batches of at most `batch` rows (exactly the
/// model's batch when its first dimension is fixed).
pub fn batches(inputs: &[Tensor], sig: &ModelSignature, batch: usize) -> Result<Vec<Vec<Tensor>>> {
    let rows = inputs
        .first()
        .and_then(|t| t.shape().first().copied())
        .unwrap_or(0);
    let fixed = sig
        .inputs
        .first()
        .and_then(|s| s.shape.dims().first())
        .and_then(|d| d.fixed());
    let step = fixed.unwrap_or(batch.max(1));
    if let Some(f) = fixed
        && !rows.is_multiple_of(f)
    {
        return Err(Error::invalid_input(format!(
            "the model takes batches of exactly {f} rows, and {rows} rows do not divide into them"
        )));
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + step).min(rows);
        out.push(
            inputs
                .iter()
                .map(|t| t.slice_rows(start, end))
                .collect::<Result<Vec<_>>>()?,
        );
        start = end;
    }
    Ok(out)
}
