//! The arithmetic: symmetric INT8 (per tensor or per channel), blockwise INT4,
//! and asymmetric UINT8 activation parameters.
//!
//! Rounding is half-to-even, as ONNX `QuantizeLinear` does, so our offline
//! weights are exactly what an engine would produce from the same scale.

/// INT8 weights and their scales (one per channel along `axis`, or one).
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Weights {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// A scale that never divides by zero: an all-zero channel gets scale 1.
fn safe_scale(max_abs: f32, levels: f32) -> f32 {
    if max_abs > 0.0 && max_abs.is_finite() {
        max_abs / levels
    } else {
        1.0
    }
}

/// Symmetric INT8 in [-127, 127] (not -128, so the range is symmetric and
/// negating a weight is exact). `axis = Some(a)` gives one scale per index
/// along dimension `a` of `shape`.
pub fn quantize_int8(w: &[f32], shape: &[usize], axis: Option<usize>) -> Int8Weights {
    let (channels, inner) = match axis {
        Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>()),
        None => (1, w.len().max(1)),
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let mut max_abs = vec![0f32; channels];
    for (i, &v) in w.iter().enumerate() {
        let c = channel_of(i);
        max_abs[c] = max_abs[c].max(v.abs());
    }
    let scales: Vec<f32> = max_abs.iter().map(|&m| safe_scale(m, 127.0)).collect();
    let values = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (v / scales[channel_of(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    Int8Weights { values, scales }
}

/// INT4 weights of a `[rows, cols]` matrix quantized in blocks of `block_size`
/// consecutive elements of its row-major order (the reduction axis is the
/// column axis, so when `cols` is a multiple of `block_size` each block lies in
/// one row; otherwise a block may straddle two rows, which wastes no storage on
/// per-row padding). The flat data is zero-padded to a whole number of blocks.
///
/// Storage is "planar": with `padded` 4-bit codes `u = q + 8` (0..15), byte `i`
/// holds code `i` in its low nibble and code `padded/2 + i` in its high nibble.
/// That layout unpacks with elementwise ops and one `Concat`, no interleaving
/// (see `rewrite`).
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Weights {
    pub packed: Vec<u8>,
    /// One scale per block (float16-representable values).
    pub scales: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols` rounded up to a multiple of `block_size`.
    pub padded: usize,
    pub block_size: usize,
}

/// Clipping ratios tried per block: the scale with the least squared error
/// wins. Shrinking the range a little often beats covering one outlier.
const INT4_CLIP_RATIOS: [f32; 5] = [1.0, 0.95, 0.9, 0.85, 0.8];

fn int4_block_scale(block: &[f32]) -> f32 {
    let max_abs = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    if max_abs == 0.0 || !max_abs.is_finite() {
        return 1.0;
    }
    // The code range is [-8, 7]: dividing by 8 uses -8 for the largest negative
    // weight, by 7 keeps the largest positive one unclipped; try both.
    let mut best = (f32::INFINITY, max_abs / 7.0);
    for r in INT4_CLIP_RATIOS {
        for d in [7.0f32, 8.0] {
            let s = r * max_abs / d;
            let err: f32 = block
                .iter()
                .map(|&v| {
                    let q = (v / s).round_ties_even().clamp(-8.0, 7.0);
                    (q * s - v).powi(2)
                })
                .sum();
            if err < best.0 {
                best = (err, s);
            }
        }
    }
    best.1
}

/// The nearest float16 value, kept within float16's normal range (a scale
/// must stay positive and finite).
pub fn f16_round(s: f32) -> f32 {
    half::f16::from_f32(s.clamp(6.2e-5, 65000.0)).to_f32()
}

/// Quantizes a row-major `[rows, cols]` matrix to blockwise INT4.
pub fn quantize_int4(m: &[f32], rows: usize, cols: usize, block_size: usize) -> Int4Weights {
    let n = rows * cols;
    let nblocks = n.div_ceil(block_size);
    let padded = nblocks * block_size;
    let mut codes = vec![8u8; padded];
    let mut scales = Vec::with_capacity(nblocks);
    for (b, block) in m[..n].chunks(block_size).enumerate() {
        // Stored as float16: round first so the codes match the stored scale.
        let s = f16_round(int4_block_scale(block));
        scales.push(s);
        for (k, &v) in block.iter().enumerate() {
            let q = (v / s).round_ties_even().clamp(-8.0, 7.0) as i32;
            codes[b * block_size + k] = (q + 8) as u8;
        }
    }
    let half = padded / 2;
    let packed = (0..half)
        .map(|i| codes[i] | (codes[half + i] << 4))
        .collect();
    Int4Weights {
        packed,
        scales,
        rows,
        cols,
        padded,
        block_size,
    }
}

impl Int4Weights {
    /// The float matrix `[rows, cols]` the packed codes stand for (what the
    /// in-graph unpacking computes); used by tests and error estimates.
    pub fn dequantize(&self) -> Vec<f32> {
        let half = self.padded / 2;
        (0..self.rows * self.cols)
            .map(|i| {
                let code = if i < half {
                    self.packed[i] & 0x0f
                } else {
                    self.packed[i - half] >> 4
                };
                (code as f32 - 8.0) * self.scales[i / self.block_size]
            })
            .collect()
    }
}

/// INT4 weights in `com.microsoft.MatMulNBits` layout.
#[derive(Clone, Debug, PartialEq)]
pub struct NBitsWeights {
    /// `[N, blocks, block_size / 2]`: column `n`'s block `b` holds codes
    /// `u = q + 8` of rows `b·block_size..`, element `2j` in the low nibble of
    /// byte `j`, `2j + 1` in the high one (K padded with zeros).
    pub packed: Vec<u8>,
    /// `[N · blocks]`, column-major by block.
    pub scales: Vec<f32>,
    pub blocks: usize,
    /// The weight as the kernel sees it, `[K, N]` row-major (for error figures).
    pub dequantized: Vec<f32>,
}

/// Quantizes a `[k, n]` row-major MatMul weight for `MatMulNBits`: symmetric
/// 4-bit blocks of `block_size` along K per output column, zero point 8 (the
/// op's default, so none is stored).
pub fn quantize_nbits(w: &[f32], k: usize, n: usize, block_size: usize) -> NBitsWeights {
    let blocks = k.div_ceil(block_size);
    let blob = block_size / 2;
    let mut packed = vec![0u8; n * blocks * blob];
    let mut scales = Vec::with_capacity(n * blocks);
    let mut dequantized = vec![0f32; k * n];
    let mut col = vec![0f32; block_size];
    for c in 0..n {
        for b in 0..blocks {
            let rows = b * block_size..((b + 1) * block_size).min(k);
            let len = rows.len();
            for (j, r) in rows.clone().enumerate() {
                col[j] = w[r * n + c];
            }
            let s = int4_block_scale(&col[..len]);
            scales.push(s);
            let base = (c * blocks + b) * blob;
            for j in 0..block_size {
                let code = if j < len {
                    let q = (col[j] / s).round_ties_even().clamp(-8.0, 7.0);
                    dequantized[(b * block_size + j) * n + c] = q * s;
                    (q as i32 + 8) as u8
                } else {
                    8
                };
                packed[base + j / 2] |= if j % 2 == 0 { code } else { code << 4 };
            }
        }
    }
    NBitsWeights {
        packed,
        scales,
        blocks,
        dequantized,
    }
}

/// An INT32 bias for a QDQ op: `b / (x_scale · w_scale[c])`, rounded, per
/// output channel (what ONNX Runtime's QLinearConv / QGemm add to the int32
/// accumulator). Returns the values and their scales.
pub fn quantize_bias(b: &[f32], x_scale: f32, w_scales: &[f32]) -> (Vec<i32>, Vec<f32>) {
    let scales: Vec<f32> = (0..b.len())
        .map(|c| x_scale * w_scales[if w_scales.len() == 1 { 0 } else { c }])
        .map(|s| if s > 0.0 && s.is_finite() { s } else { 1.0 })
        .collect();
    let q = b
        .iter()
        .zip(&scales)
        .map(|(v, s)| {
            (v / s)
                .round_ties_even()
                .clamp(i32::MIN as f32, i32::MAX as f32) as i32
        })
        .collect();
    (q, scales)
}

/// Asymmetric UINT8 parameters covering `[lo, hi]` (widened to include 0, so
/// that zero — padding, ReLU output — is exactly representable).
pub fn uint8_params(lo: f32, hi: f32) -> (f32, u8) {
    let lo = lo.min(0.0);
    let hi = hi.max(0.0);
    let scale = if hi > lo && (hi - lo).is_finite() {
        (hi - lo) / 255.0
    } else {
        1.0
    };
    let zp = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    (scale, zp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_per_channel_uses_each_channels_range() {
        // shape [2, 3], axis 1: channels are columns.
        let w = [1.0, -0.5, 0.01, -2.0, 0.25, 0.02];
        let q = quantize_int8(&w, &[2, 3], Some(1));
        assert_eq!(q.scales.len(), 3);
        assert!((q.scales[0] - 2.0 / 127.0).abs() < 1e-7);
        assert!((q.scales[2] - 0.02 / 127.0).abs() < 1e-9);
        assert_eq!(q.values[3], -127);
        assert_eq!(q.values[5], 127);
        for (i, &v) in w.iter().enumerate() {
            let back = q.values[i] as f32 * q.scales[i % 3];
            assert!((back - v).abs() <= q.scales[i % 3] / 2.0 + 1e-7);
        }
        let t = quantize_int8(&w, &[2, 3], None);
        assert_eq!(t.scales.len(), 1);
        assert_eq!(t.values[2], 1); // 0.01 / (2/127) = 0.635 -> 1
    }

    #[test]
    fn int8_zero_channel_is_safe() {
        let q = quantize_int8(&[0.0; 4], &[2, 2], Some(0));
        assert_eq!(q.scales, vec![1.0, 1.0]);
        assert_eq!(q.values, vec![0; 4]);
    }

    #[test]
    fn int4_round_trip_is_close() {
        let rows = 3;
        let cols = 40; // 120 values: 4 blocks of 32, padded to 128
        let m: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let q = quantize_int4(&m, rows, cols, 32);
        assert_eq!(q.padded, 128);
        assert_eq!(q.packed.len(), 64);
        assert_eq!(q.scales.len(), 4);
        let back = q.dequantize();
        for (i, (a, b)) in m.iter().zip(&back).enumerate() {
            let s = q.scales[i / 32];
            // Within half a step, or clipped by at most 20 % of the range.
            assert!(
                (a - b).abs() <= s * 2.0 + 1e-6,
                "{i}: {a} vs {b} (scale {s})"
            );
        }
    }

    #[test]
    fn nbits_layout_is_column_blocks_low_nibble_first() {
        // K = 20 (one full block of 16 and a padded one), N = 2.
        let (k, n) = (20, 2);
        let w: Vec<f32> = (0..k * n).map(|i| (i as f32 - 20.0) / 10.0).collect();
        let q = quantize_nbits(&w, k, n, 16);
        assert_eq!(q.blocks, 2);
        assert_eq!(q.packed.len(), n * 2 * 8);
        assert_eq!(q.scales.len(), 4);
        // Element (k=1, n=0) is the high nibble of column 0's first byte.
        let s = q.scales[0];
        let hi = (q.packed[0] >> 4) as f32 - 8.0;
        assert!((hi * s - w[n]).abs() <= s / 2.0 + 1e-6);
        // Padding codes are 8 (zero).
        assert_eq!(q.packed[8 + 2] & 0x0f, 8);
        for (a, b) in w.iter().zip(&q.dequantized) {
            assert!((a - b).abs() < 0.2, "{a} vs {b}");
        }
    }

    #[test]
    fn bias_scale_is_input_times_weight_scale() {
        let (q, s) = quantize_bias(&[1.0, -0.5], 0.1, &[0.01, 0.02]);
        assert!((s[0] - 0.001).abs() < 1e-9 && (s[1] - 0.002).abs() < 1e-9);
        assert_eq!(q, vec![1000, -250]);
    }

    #[test]
    fn uint8_params_include_zero() {
        let (s, zp) = uint8_params(0.5, 2.0);
        assert_eq!(zp, 0);
        assert!((s - 2.0 / 255.0).abs() < 1e-7);
        let (s, zp) = uint8_params(-1.0, 1.0);
        assert!((s - 2.0 / 255.0).abs() < 1e-7);
        // -lo/scale is 127.5 up to float rounding: either neighbour is right.
        assert!(zp == 127 || zp == 128, "{zp}");
        let (s, zp) = uint8_params(-3.0, 1.0);
        assert!((s - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(zp, 191); // 3 / (4/255) = 191.25
        assert_eq!(uint8_params(0.0, 0.0), (1.0, 0));
    }
}
