//! `.npy` files to and from pomme tensors.

use anyhow::{Context, Result, bail};
use npyz::WriterBuilder;
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

/// Reads a `.npy` file (bool, u8, i8, i16, i32, i64, u16, u32, u64, f16, f32, f64).
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let npy = npyz::NpyFile::new(&bytes[..])
        .map_err(|e| anyhow::anyhow!("{}: not a valid .npy file: {e}", path.display()))?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if npy.order() == npyz::Order::Fortran {
        bail!(
            "{}: Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
            path.display()
        );
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => other.descr(),
    };
    let bad = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let t = match descr.as_str() {
        "<f4" => Tensor::from_vec(shape, npy.into_vec::<f32>().map_err(bad)?),
        "<f8" => Tensor::from_vec(shape, npy.into_vec::<f64>().map_err(bad)?),
        "<f2" => {
            let raw: Vec<u16> = npy.into_vec::<u16>().map_err(bad)?;
            Tensor::from_vec(shape, raw.into_iter().map(half::f16::from_bits).collect())
        }
        "|i1" => Tensor::from_vec(shape, npy.into_vec::<i8>().map_err(bad)?),
        "<i2" => Tensor::from_vec(shape, npy.into_vec::<i16>().map_err(bad)?),
        "<i4" => Tensor::from_vec(shape, npy.into_vec::<i32>().map_err(bad)?),
        "<i8" => Tensor::from_vec(shape, npy.into_vec::<i64>().map_err(bad)?),
        "|u1" => Tensor::from_vec(shape, npy.into_vec::<u8>().map_err(bad)?),
        "<u2" => Tensor::from_vec(shape, npy.into_vec::<u16>().map_err(bad)?),
        "<u4" => Tensor::from_vec(shape, npy.into_vec::<u32>().map_err(bad)?),
        "<u8" => Tensor::from_vec(shape, npy.into_vec::<u64>().map_err(bad)?),
        "|b1" => {
            let v: Vec<bool> = npy.into_vec::<bool>().map_err(bad)?;
            Tensor::from_bools(shape, &v)
        }
        other => bail!("{}: unsupported .npy dtype '{other}'", path.display()),
    };
    Ok(t?)
}

/// Writes a tensor as `.npy`.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    macro_rules! put {
        ($ty:ty) => {{
            let data = t.to_vec::<$ty>()?;
            let mut writer = npyz::WriteOptions::<$ty>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut w)
                .begin_nd()?;
            writer.extend(data)?;
            writer.finish()?;
        }};
    }
    match t.dtype() {
        DType::F32 => put!(f32),
        DType::F64 => put!(f64),
        DType::I8 => put!(i8),
        DType::I16 => put!(i16),
        DType::I32 => put!(i32),
        DType::I64 => put!(i64),
        DType::U8 => put!(u8),
        DType::U16 => put!(u16),
        DType::U32 => put!(u32),
        DType::U64 => put!(u64),
        DType::Bool => {
            let data: Vec<bool> = t
                .raw()
                .expect("bool is raw")
                .iter()
                .map(|&b| b != 0)
                .collect();
            let mut writer = npyz::WriteOptions::<bool>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut w)
                .begin_nd()?;
            writer.extend(data)?;
            writer.finish()?;
        }
        DType::F16 | DType::BF16 => {
            let data: Vec<f32> = t.to_f64_vec()?.into_iter().map(|v| v as f32).collect();
            let mut writer = npyz::WriteOptions::<f32>::new()
                .default_dtype()
                .shape(&shape)
                .writer(&mut w)
                .begin_nd()?;
            writer.extend(data)?;
            writer.finish()?;
        }
        DType::Bytes => bail!("BYTES outputs cannot be written as .npy"),
    }
    Ok(())
}
