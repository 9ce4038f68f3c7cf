//! `.npy` files to and from pomme tensors, for every KServe v2 dtype.
//!
//! Fixed-size dtypes follow the one table in [`DType::numpy_descr`] (either
//! byte order is read; little-endian is written). BF16 is NumPy's raw
//! two-byte `V2`, which is what `np.save` writes for an `ml_dtypes.bfloat16`
//! array (`np.load(f).view(ml_dtypes.bfloat16)` reads it back). BYTES come
//! from NumPy's fixed-width string arrays, `U` (UTF-32, stored as UTF-8) or
//! `S` (raw bytes), and are written as `U` when every element is UTF-8, `S`
//! otherwise; like NumPy itself, fixed-width strings drop trailing NUL bytes.
//! Object arrays (`dtype=object`) are pickles and are refused with the fix.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use npyz::{Endianness, FixedSizeBytes, TypeChar, TypeStr, WriterBuilder};
use pomme_core::{DType, Tensor};
use std::path::Path;

/// Reads `--input NAME=FILE.npy` arguments, in order.
pub fn read_named(specs: &[String]) -> Result<Vec<(String, Tensor)>> {
    specs
        .iter()
        .map(|spec| {
            let (name, file) = spec.split_once('=').ok_or_else(|| {
                crate::cli::usage(format!("--input '{spec}' is not NAME=FILE.npy"))
            })?;
            Ok((name.to_string(), read(Path::new(file))?))
        })
        .collect()
}

/// Reads a `.npy` file.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))
}

/// Decodes the bytes of a `.npy` file.
pub fn decode(bytes: &[u8]) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| anyhow!("not a valid .npy file: {e}"))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let fortran = npy.order() == npyz::Order::Fortran;
    let ts = match npy.dtype() {
        npyz::DType::Plain(ts) => ts,
        other => bail!(
            "structured .npy dtype '{}' is not a tensor; save a plain array",
            other.descr()
        ),
    };
    if ts.type_char() == TypeChar::Object {
        bail!(
            "object arrays (dtype=object) are pickled and not read; save strings as a fixed-width array, e.g. np.array(x, dtype=str)"
        );
    }
    let bad = |e: std::io::Error| anyhow!("{e}");
    let dtype = dtype_of(&ts)?;
    macro_rules! fixed {
        ($ty:ty) => {{
            let v: Vec<$ty> = npy.into_vec().map_err(bad)?;
            Tensor::from_vec(shape.clone(), c_order(v, &shape, fortran))?
        }};
    }
    let t = match dtype {
        DType::Bool => {
            let v: Vec<bool> = npy.into_vec().map_err(bad)?;
            Tensor::from_bools(shape.clone(), &c_order(v, &shape, fortran))?
        }
        DType::U8 => fixed!(u8),
        DType::U16 => fixed!(u16),
        DType::U32 => fixed!(u32),
        DType::U64 => fixed!(u64),
        DType::I8 => fixed!(i8),
        DType::I16 => fixed!(i16),
        DType::I32 => fixed!(i32),
        DType::I64 => fixed!(i64),
        DType::F16 => fixed!(half::f16),
        DType::F32 => fixed!(f32),
        DType::F64 => fixed!(f64),
        DType::BF16 => {
            let raw: Vec<FixedSizeBytes<2>> = npy.into_vec().map_err(bad)?;
            let v: Vec<half::bf16> = raw
                .into_iter()
                .map(|b| match ts.endianness() {
                    Endianness::Big => half::bf16::from_be_bytes(b.0),
                    _ => half::bf16::from_le_bytes(b.0),
                })
                .collect();
            Tensor::from_vec(shape.clone(), c_order(v, &shape, fortran))?
        }
        DType::Bytes => {
            let v: Vec<Bytes> = if ts.type_char() == TypeChar::UnicodeStr {
                let v: Vec<String> = npy
                    .into_vec()
                    .map_err(|e| anyhow!("unicode array is not valid text: {e}"))?;
                v.into_iter().map(Bytes::from).collect()
            } else {
                let v: Vec<Vec<u8>> = npy.into_vec().map_err(bad)?;
                v.into_iter().map(Bytes::from).collect()
            };
            Tensor::from_strings(shape.clone(), c_order(v, &shape, fortran))?
        }
    };
    Ok(t)
}

/// The tensor dtype of a NumPy type string, through [`DType::numpy_descr`].
fn dtype_of(ts: &TypeStr) -> Result<DType> {
    match ts.type_char() {
        TypeChar::ByteStr | TypeChar::UnicodeStr => return Ok(DType::Bytes),
        TypeChar::RawData if ts.size_field() == 2 => return Ok(DType::BF16),
        _ => {}
    }
    let (kind, size) = (ts.type_char().to_string(), ts.size_field());
    DType::ALL
        .into_iter()
        .find(|d| {
            d.numpy_descr()
                .is_some_and(|descr| descr[1..2] == kind && descr[2..] == size.to_string())
        })
        .ok_or_else(|| {
            anyhow!(
                "unsupported .npy dtype '{ts}' (KServe v2 has bool, (u)int8-64, float16, bfloat16 as V2, float32/64 and strings as U or S)"
            )
        })
}

/// Elements in row-major order: Fortran-ordered files store them column-major.
fn c_order<T: Clone>(v: Vec<T>, shape: &[usize], fortran: bool) -> Vec<T> {
    if !fortran || shape.len() < 2 {
        return v;
    }
    // Column-major strides; walk the row-major index space with an odometer.
    let mut strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        strides[k] = strides[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(v.len());
    for _ in 0..v.len() {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(v[off].clone());
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Writes a tensor as `.npy`.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    encode(&mut w, t)?;
    std::io::Write::flush(&mut w).with_context(|| format!("cannot write {}", path.display()))
}

/// Encodes a tensor as the bytes of a `.npy` file.
pub fn encode<W: std::io::Write>(w: &mut W, t: &Tensor) -> Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($ty:ty, $dtype:expr, $data:expr) => {{
            let mut writer = npyz::WriteOptions::<$ty>::new()
                .dtype($dtype)
                .shape(&shape)
                .writer(&mut *w)
                .begin_nd()?;
            writer.extend($data)?;
            writer.finish()?;
        }};
    }
    let plain = |descr: &str| -> Result<npyz::DType> {
        Ok(npyz::DType::Plain(
            descr
                .parse::<TypeStr>()
                .map_err(|e| anyhow!("bad type string {descr}: {e}"))?,
        ))
    };
    let descr = t.dtype().numpy_descr().unwrap_or("");
    match t.dtype() {
        DType::F32 => put!(f32, plain(descr)?, t.to_vec::<f32>()?),
        DType::F64 => put!(f64, plain(descr)?, t.to_vec::<f64>()?),
        DType::F16 => put!(half::f16, plain(descr)?, t.to_vec::<half::f16>()?),
        DType::I8 => put!(i8, plain(descr)?, t.to_vec::<i8>()?),
        DType::I16 => put!(i16, plain(descr)?, t.to_vec::<i16>()?),
        DType::I32 => put!(i32, plain(descr)?, t.to_vec::<i32>()?),
        DType::I64 => put!(i64, plain(descr)?, t.to_vec::<i64>()?),
        DType::U8 => put!(u8, plain(descr)?, t.to_vec::<u8>()?),
        DType::U16 => put!(u16, plain(descr)?, t.to_vec::<u16>()?),
        DType::U32 => put!(u32, plain(descr)?, t.to_vec::<u32>()?),
        DType::U64 => put!(u64, plain(descr)?, t.to_vec::<u64>()?),
        DType::Bool => {
            let raw = t.raw().ok_or_else(|| anyhow!("BOOL tensor without data"))?;
            put!(bool, plain(descr)?, raw.iter().map(|&b| b != 0))
        }
        DType::BF16 => put!(
            FixedSizeBytes<2>,
            plain(descr)?,
            t.to_vec::<half::bf16>()?
                .into_iter()
                .map(|v| FixedSizeBytes(v.to_le_bytes()))
        ),
        DType::Bytes => {
            let items = t
                .strings()
                .ok_or_else(|| anyhow!("BYTES tensor without strings"))?;
            let texts: Option<Vec<&str>> =
                items.iter().map(|b| std::str::from_utf8(b).ok()).collect();
            match texts {
                Some(texts) => {
                    let width = texts.iter().map(|s| s.chars().count()).max().unwrap_or(0);
                    let ts = plain(&format!("<U{}", width.max(1)))?;
                    put!(String, ts, texts.iter().map(|s| s.to_string()))
                }
                None => {
                    let width = items.iter().map(|b| b.len()).max().unwrap_or(0);
                    let ts = plain(&format!("|S{}", width.max(1)))?;
                    put!(Vec<u8>, ts, items.iter().map(|b| b.to_vec()))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(t: &Tensor) -> Tensor {
        let mut buf = Vec::new();
        encode(&mut buf, t).unwrap();
        decode(&buf).unwrap()
    }

    #[test]
    fn every_dtype_round_trips() {
        let shape = vec![2, 3];
        let tensors = vec![
            Tensor::from_bools(shape.clone(), &[true, false, true, true, false, false]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![0u8, 1, 2, 3, 254, 255]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![0u16, 1, 2, 3, 4, u16::MAX]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![0u32, 1, 2, 3, 4, u32::MAX]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![0u64, 1, 2, 3, 4, u64::MAX]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![-128i8, 1, 2, 3, 4, 127]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![i16::MIN, 1, 2, 3, 4, i16::MAX]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![i32::MIN, 1, 2, 3, 4, i32::MAX]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![i64::MIN, 1, 2, 3, 4, i64::MAX]).unwrap(),
            Tensor::from_vec(
                shape.clone(),
                [0.5f32, -1.0, 2.0, 65504.0, 1e-3, -0.0]
                    .map(half::f16::from_f32)
                    .to_vec(),
            )
            .unwrap(),
            Tensor::from_vec(
                shape.clone(),
                [0.5f32, -1.0, 2.0, 3.0e38, 1e-3, -0.0]
                    .map(half::bf16::from_f32)
                    .to_vec(),
            )
            .unwrap(),
            Tensor::from_vec(shape.clone(), vec![0.5f32, -1.0, 2.0, f32::MAX, 1e-3, -0.0]).unwrap(),
            Tensor::from_vec(shape.clone(), vec![0.5f64, -1.0, 2.0, f64::MAX, 1e-3, -0.0]).unwrap(),
            Tensor::from_strings(
                shape.clone(),
                ["a", "", "héllo", "🍎 pomme", "tab\tx", "z"]
                    .map(|s| Bytes::from(s.to_string()))
                    .to_vec(),
            )
            .unwrap(),
            Tensor::from_strings(
                shape.clone(),
                [&b"\xff\xfe"[..], b"", b"ab", b"\x00x", b"c", b"d"]
                    .map(Bytes::copy_from_slice)
                    .to_vec(),
            )
            .unwrap(),
        ];
        for t in &tensors {
            let back = roundtrip(t);
            assert_eq!(back.dtype(), t.dtype(), "{}", t.dtype());
            assert_eq!(back.shape(), t.shape(), "{}", t.dtype());
            match t.dtype() {
                DType::Bytes => assert_eq!(back.strings(), t.strings()),
                _ => assert_eq!(back.raw(), t.raw(), "{}", t.dtype()),
            }
        }
    }

    /// What `np.save` writes, byte for byte (numpy 2.3).
    fn numpy_file(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn numpy_float16_bfloat16_and_strings_are_read() {
        let f16 = numpy_file("<f2", false, "(2,)", &[0x00, 0x3c, 0x00, 0xc0]);
        let t = decode(&f16).unwrap();
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.0, -2.0]);

        // ml_dtypes.bfloat16 [1.5, 2.25] as np.save writes it.
        let bf16 = numpy_file("<V2", false, "(2,)", &[0xc0, 0x3f, 0x10, 0x40]);
        let t = decode(&bf16).unwrap();
        assert_eq!(t.dtype(), DType::BF16);
        assert_eq!(t.to_f64_vec().unwrap(), vec![1.5, 2.25]);

        let mut u = Vec::new();
        for s in ["ab", "c"] {
            let mut cps: Vec<u32> = s.chars().map(|c| c as u32).collect();
            cps.resize(2, 0);
            u.extend(cps.iter().flat_map(|c| c.to_le_bytes()));
        }
        let t = decode(&numpy_file("<U2", false, "(2,)", &u)).unwrap();
        assert_eq!(t.strings().unwrap(), &[Bytes::from("ab"), Bytes::from("c")]);

        let t = decode(&numpy_file("|S3", false, "(2,)", b"ab\0xyz")).unwrap();
        assert_eq!(
            t.strings().unwrap(),
            &[Bytes::from("ab"), Bytes::from("xyz")]
        );

        let be = numpy_file(">i4", false, "(2,)", &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(decode(&be).unwrap().to_vec::<i32>().unwrap(), vec![1, -2]);
    }

    #[test]
    fn fortran_order_is_transposed_to_row_major() {
        // np.asfortranarray([[1, 2, 3], [4, 5, 6]], dtype='<i2')
        let data: Vec<u8> = [1i16, 4, 2, 5, 3, 6]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let t = decode(&numpy_file("<i2", true, "(2, 3)", &data)).unwrap();
        assert_eq!(t.shape(), &[2, 3]);
        assert_eq!(t.to_vec::<i16>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn unreadable_files_get_one_line_errors() {
        let object = numpy_file("|O", false, "(1,)", b"\x80\x04");
        let e = decode(&object).unwrap_err().to_string();
        assert!(e.contains("dtype=object") && e.contains("dtype=str"), "{e}");
        let complex = numpy_file("<c8", false, "(1,)", &[0; 8]);
        let e = decode(&complex).unwrap_err().to_string();
        assert!(e.contains("unsupported .npy dtype '<c8'"), "{e}");
        assert!(
            decode(b"not numpy")
                .unwrap_err()
                .to_string()
                .contains("not a valid .npy")
        );
        let short = numpy_file("<f4", false, "(4,)", &[0; 8]);
        assert!(decode(&short).is_err());
    }
}
