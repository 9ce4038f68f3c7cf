//! Token states → one vector per text, as sentence-transformers defines it:
//! mean over the real tokens (the attention mask's ones), the `[CLS]` state,
//! or the last real token's; then L2 normalization (`F.normalize`, eps 1e-12).

use crate::config::Pooling;

/// Pools `hidden` (`[rows, seq, dim]`, row-major) of texts with `lens` real
/// tokens each (left-aligned) into `[lens.len(), dim]`.
pub fn pool(hidden: &[f32], seq: usize, dim: usize, lens: &[usize], mode: Pooling) -> Vec<f32> {
    let mut out = vec![0f32; lens.len() * dim];
    for (r, (&len, o)) in lens.iter().zip(out.chunks_exact_mut(dim)).enumerate() {
        let row = &hidden[r * seq * dim..(r + 1) * seq * dim];
        let token = |t: usize| &row[t * dim..(t + 1) * dim];
        match mode {
            Pooling::Mean | Pooling::Model => {
                for t in 0..len {
                    for (a, &x) in o.iter_mut().zip(token(t)) {
                        *a += x;
                    }
                }
                let n = (len as f32).max(1e-9);
                o.iter_mut().for_each(|a| *a /= n);
            }
            Pooling::Cls => o.copy_from_slice(token(0)),
            Pooling::Last => o.copy_from_slice(token(len.max(1) - 1)),
        }
    }
    out
}

/// L2-normalizes each `dim`-long row in place.
pub fn normalize(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

/// Cosine distance (1 − cos) of two vectors.
pub fn cosine_distance(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    1.0 - dot / (na * nb).max(1e-30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_ignore_padding() {
        // 2 rows, seq 3, dim 2; row 0 has 2 real tokens, row 1 has 3.
        let h = [1., 2., 3., 4., 100., 100., 1., 1., 2., 2., 3., 3.];
        assert_eq!(pool(&h, 3, 2, &[2, 3], Pooling::Mean), vec![2., 3., 2., 2.]);
        assert_eq!(pool(&h, 3, 2, &[2, 3], Pooling::Cls), vec![1., 2., 1., 1.]);
        assert_eq!(pool(&h, 3, 2, &[2, 3], Pooling::Last), vec![3., 4., 3., 3.]);
        let mut v = vec![3., 4., 0., 0.];
        normalize(&mut v, 2);
        assert_eq!(v, vec![0.6, 0.8, 0., 0.]);
        assert!(cosine_distance(&[1., 0.], &[2., 0.]).abs() < 1e-12);
        assert!((cosine_distance(&[1., 0.], &[0., 1.]) - 1.0).abs() < 1e-12);
    }
}
