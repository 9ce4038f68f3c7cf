//! Copying a strided Core ML array into a dense row-major buffer, in plain
//! Rust so it is tested everywhere.
//!
//! `MLMultiArray` outputs may be padded (strides larger than the shape), so
//! they cannot be copied blindly; but most are dense or padded only between
//! rows. A dense array is one `memcpy`, an array whose innermost stride is 1
//! is copied a row at a time, and only the rest (transposed views) walks
//! element by element.

use pomme_core::{Error, Result};

/// Dense row-major bytes of an array of `shape` and `strides` (in elements)
/// whose elements are `size` bytes, read from `src`. An error when the strides
/// address past `src`.
pub fn gather(src: &[u8], shape: &[usize], strides: &[usize], size: usize) -> Result<Vec<u8>> {
    let mut out = vec![0u8; shape.iter().product::<usize>() * size];
    gather_into(src, shape, strides, size, &mut out)?;
    Ok(out)
}

/// [`gather`] into `dst`, which holds exactly the dense array.
pub fn gather_into(
    src: &[u8],
    shape: &[usize],
    strides: &[usize],
    size: usize,
    dst: &mut [u8],
) -> Result<()> {
    let n: usize = shape.iter().product();
    let out_len = n * size;
    if dst.len() != out_len {
        return Err(past("destination size differs from the array's"));
    }
    if n == 0 {
        return Ok(());
    }
    if shape.len() != strides.len() {
        return Err(past("shape and strides differ in rank"));
    }
    // The last byte addressed must lie inside `src`.
    let last: usize = shape
        .iter()
        .zip(strides)
        .map(|(&d, &s)| (d - 1) * s)
        .sum::<usize>()
        * size
        + size;
    if last > src.len() {
        return Err(past("strides address past the array's buffer"));
    }
    let dense = dense_strides(shape);
    // Dimensions of extent 1 may carry any stride.
    let same = |a: &[usize], b: &[usize]| {
        a.iter()
            .zip(b)
            .zip(shape)
            .all(|((x, y), &d)| d == 1 || x == y)
    };
    if same(strides, &dense) {
        dst.copy_from_slice(&src[..out_len]);
        return Ok(());
    }
    let mut out = dst.chunks_exact_mut(size);
    let rank = shape.len();
    if strides[rank - 1] == 1 || shape[rank - 1] == 1 {
        let row = shape[rank - 1] * size;
        let rows = n / shape[rank - 1];
        let mut idx = vec![0usize; rank.saturating_sub(1)];
        for chunk in dst.chunks_exact_mut(row).take(rows) {
            let off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * size;
            chunk.copy_from_slice(&src[off..off + row]);
            step(&mut idx, &shape[..rank - 1]);
        }
        return Ok(());
    }
    let mut idx = vec![0usize; rank];
    for elem in &mut out {
        let off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>() * size;
        elem.copy_from_slice(&src[off..off + size]);
        step(&mut idx, shape);
    }
    Ok(())
}

/// Row-major strides of `shape`, in elements.
pub fn dense_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

fn step(idx: &mut [usize], shape: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return;
        }
        idx[d] = 0;
    }
}

fn past(why: &str) -> Error {
    Error::InferenceFailed(format!("Core ML output array: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn dense_padded_and_transposed_arrays() {
        // 2x3, dense.
        let src = bytes(&[0, 1, 2, 3, 4, 5]);
        assert_eq!(gather(&src, &[2, 3], &[3, 1], 2).unwrap(), src);
        // 2x3 with rows padded to 4 elements.
        let padded = bytes(&[0, 1, 2, 99, 3, 4, 5, 99]);
        assert_eq!(gather(&padded, &[2, 3], &[4, 1], 2).unwrap(), src);
        // 2x3 stored transposed (column-major).
        let t = bytes(&[0, 3, 1, 4, 2, 5]);
        assert_eq!(gather(&t, &[2, 3], &[1, 2], 2).unwrap(), src);
        // A leading 1 with an arbitrary stride is still dense.
        assert_eq!(gather(&src, &[1, 2, 3], &[77, 3, 1], 2).unwrap(), src);
        assert_eq!(gather(&[], &[0, 3], &[3, 1], 2).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn strides_past_the_buffer_are_an_error() {
        let src = bytes(&[0, 1, 2, 3, 4, 5]);
        let e = gather(&src, &[2, 3], &[4, 1], 2).unwrap_err();
        assert!(matches!(e, Error::InferenceFailed(_)), "{e}");
        assert!(gather(&src, &[2, 3], &[3], 2).is_err());
        assert_eq!(dense_strides(&[2, 3, 4]), [12, 4, 1]);
    }
}
