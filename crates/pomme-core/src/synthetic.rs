//! Made-up inputs for a signature: warm-up, routing trials, demos, benches.
//!
//! One shape rule (fixed dims as declared, a symbolic first dim = `rows`, other
//! symbolic dims = `size`) and a few deterministic value fills. Each fill
//! reproduces, value for value, what its caller produced before this module
//! existed, so measured figures and cached results keep their meaning.

use crate::{DType, Dim, Error, ModelSignature, Result, Tensor};

/// How synthetic values are chosen. Every fill is deterministic: the same
/// signature and fill give the same tensors, so runs can be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// No randomness (CLI demos and benches): floats `(i·7919 mod 1000)/1000 − 0.5`,
    /// I64/I32 alternate 1, 2 (valid ids), everything else zeros (BYTES: empty).
    Pattern,
    /// xorshift64* from a non-zero seed (routing trials, padded warm-up): floats
    /// uniform in [-1, 1), I64/I32 alternate 0, 1 (valid indices), booleans
    /// alternate, other fixed-width types zeros. BYTES cannot be made.
    Uniform(u64),
    /// SplitMix64 from a seed (quantization warm-up data): floats N(0, 1),
    /// I64/I32/BOOL random 0/1. Other dtypes cannot be made.
    Normal(u64),
}

/// The concrete shape for a declared one: fixed dims as is, a symbolic first
/// dim `rows`, any other symbolic dim `size`.
pub fn synthetic_shape(dims: &[Dim], rows: usize, size: usize) -> Vec<usize> {
    dims.iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(n) => *n,
            Dim::Symbolic(_) if i == 0 => rows,
            Dim::Symbolic(_) => size,
        })
        .collect()
}

/// One named tensor per input of `sig`, shaped by [`synthetic_shape`] and
/// filled by `fill` (one random stream across the inputs, in order). A dtype
/// the fill cannot make is an `InvalidInput` naming the input.
pub fn synthetic_inputs(
    sig: &ModelSignature,
    rows: usize,
    size: usize,
    fill: Fill,
) -> Result<Vec<(String, Tensor)>> {
    let mut state = match fill {
        Fill::Pattern => 0,
        Fill::Uniform(seed) | Fill::Normal(seed) => seed,
    };
    sig.inputs
        .iter()
        .map(|spec| {
            let shape = synthetic_shape(spec.shape.dims(), rows, size);
            let t = make(fill, &mut state, spec.dtype, shape).ok_or_else(|| {
                Error::invalid_input(format!(
                    "cannot make up synthetic values for {} input '{}'",
                    spec.dtype, spec.name
                ))
            })??;
            Ok((spec.name.clone(), t))
        })
        .collect()
}

/// One tensor of `dtype` and `shape` filled by `fill`, continuing the random
/// stream in `state` (seed it for `Uniform`/`Normal`). A dtype the fill cannot
/// make is an `InvalidInput`.
pub fn synthetic_tensor(
    fill: Fill,
    state: &mut u64,
    dtype: DType,
    shape: Vec<usize>,
) -> Result<Tensor> {
    make(fill, state, dtype, shape).ok_or_else(|| {
        Error::invalid_input(format!("cannot make up synthetic values for {dtype}"))
    })?
}

/// `None`: the fill has no values for `dtype`.
fn make(fill: Fill, state: &mut u64, dtype: DType, shape: Vec<usize>) -> Option<Result<Tensor>> {
    let n: usize = shape.iter().product();
    let alternate = |i: usize| i % 2;
    Some(match (fill, dtype) {
        // The f32 pattern is computed in f32, as the CLI always did.
        (Fill::Pattern, DType::F32) => Tensor::from_vec(
            shape,
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect(),
        ),
        (Fill::Pattern, DType::F64) => Tensor::from_vec(
            shape,
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f64 / 1000.0 - 0.5)
                .collect(),
        ),
        (Fill::Pattern, DType::I64) => {
            Tensor::from_vec(shape, (0..n).map(|i| alternate(i) as i64 + 1).collect())
        }
        (Fill::Pattern, DType::I32) => {
            Tensor::from_vec(shape, (0..n).map(|i| alternate(i) as i32 + 1).collect())
        }
        (Fill::Pattern, other) => Tensor::zeros(other, shape),

        (Fill::Uniform(_), DType::F32) => Tensor::from_vec(
            shape,
            (0..n)
                .map(|_| (xorshift_unit(state) * 2.0 - 1.0) as f32)
                .collect(),
        ),
        (Fill::Uniform(_), DType::F64) => Tensor::from_vec(
            shape,
            (0..n).map(|_| xorshift_unit(state) * 2.0 - 1.0).collect(),
        ),
        (Fill::Uniform(_), DType::I64) => {
            Tensor::from_vec(shape, (0..n).map(|i| alternate(i) as i64).collect())
        }
        (Fill::Uniform(_), DType::I32) => {
            Tensor::from_vec(shape, (0..n).map(|i| alternate(i) as i32).collect())
        }
        (Fill::Uniform(_), DType::Bool) => {
            let v: Vec<bool> = (0..n).map(|i| alternate(i) == 0).collect();
            Tensor::from_bools(shape, &v)
        }
        (Fill::Uniform(_), DType::Bytes) => return None,
        (Fill::Uniform(_), other) => Tensor::zeros(other, shape),

        (Fill::Normal(_), DType::F32) => {
            Tensor::from_vec(shape, (0..n).map(|_| normal(state) as f32).collect())
        }
        (Fill::Normal(_), DType::F64) => {
            Tensor::from_vec(shape, (0..n).map(|_| normal(state)).collect())
        }
        (Fill::Normal(_), DType::I64) => Tensor::from_vec(
            shape,
            (0..n).map(|_| (splitmix(state) >> 63) as i64).collect(),
        ),
        (Fill::Normal(_), DType::I32) => Tensor::from_vec(
            shape,
            (0..n).map(|_| (splitmix(state) >> 63) as i32).collect(),
        ),
        (Fill::Normal(_), DType::Bool) => {
            let v: Vec<bool> = (0..n).map(|_| splitmix(state) >> 63 == 1).collect();
            Tensor::from_bools(shape, &v)
        }
        (Fill::Normal(_), _) => return None,
    })
}

/// xorshift64*, as a double in [0, 1).
fn xorshift_unit(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
}

/// SplitMix64.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// N(0, 1) by Box–Muller from two SplitMix64 draws in (0, 1).
fn normal(state: &mut u64) -> f64 {
    let mut unit = || ((splitmix(state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (a, b) = (unit(), unit());
    (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Shape, TensorSpec};

    fn sig(inputs: Vec<(&str, DType, Vec<Dim>)>) -> ModelSignature {
        ModelSignature {
            inputs: inputs
                .into_iter()
                .map(|(n, d, s)| TensorSpec::new(n, d, Shape(s)))
                .collect(),
            outputs: vec![],
        }
    }

    fn sym(s: &str) -> Dim {
        Dim::Symbolic(s.into())
    }

    const ALL_FILLS: [Fill; 3] = [Fill::Pattern, Fill::Uniform(7), Fill::Normal(7)];

    #[test]
    fn shapes_take_rows_for_the_first_symbolic_dim_and_size_for_the_others() {
        let s = sig(vec![
            (
                "x",
                DType::F32,
                vec![sym("batch"), sym("seq"), Dim::Fixed(3)],
            ),
            ("ids", DType::I64, vec![Dim::Fixed(4)]),
            // A symbolic dim past the first is never the batch.
            ("m", DType::F32, vec![Dim::Fixed(2), sym("batch")]),
        ]);
        for fill in ALL_FILLS {
            let t = synthetic_inputs(&s, 5, 9, fill).unwrap();
            let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["x", "ids", "m"]);
            assert_eq!(t[0].1.shape(), &[5, 9, 3]);
            assert_eq!(t[1].1.shape(), &[4]);
            assert_eq!(t[2].1.shape(), &[2, 9]);
            for ((_, t), spec) in t.iter().zip(&s.inputs) {
                spec.check(t).unwrap();
            }
        }
    }

    #[test]
    fn fills_are_deterministic_and_seeded() {
        let s = sig(vec![
            ("a", DType::F32, vec![sym("b"), Dim::Fixed(8)]),
            ("b", DType::F64, vec![Dim::Fixed(8)]),
            ("c", DType::I64, vec![Dim::Fixed(8)]),
            ("d", DType::Bool, vec![Dim::Fixed(8)]),
        ]);
        for fill in ALL_FILLS {
            assert_eq!(
                synthetic_inputs(&s, 2, 1, fill).unwrap(),
                synthetic_inputs(&s, 2, 1, fill).unwrap()
            );
        }
        let f = |fill| synthetic_inputs(&s, 2, 1, fill).unwrap()[0].1.clone();
        assert_ne!(f(Fill::Uniform(1)), f(Fill::Uniform(2)));
        assert_ne!(f(Fill::Normal(1)), f(Fill::Normal(2)));
    }

    #[test]
    fn values_follow_each_fill() {
        let s = sig(vec![
            ("x", DType::F32, vec![Dim::Fixed(64)]),
            ("ids", DType::I64, vec![Dim::Fixed(4)]),
        ]);
        let get = |fill| synthetic_inputs(&s, 1, 1, fill).unwrap();
        let p = get(Fill::Pattern);
        let x = p[0].1.to_vec::<f32>().unwrap();
        assert_eq!(x[0], -0.5);
        assert!((x[1] - 0.419).abs() < 1e-6);
        assert_eq!(p[1].1.to_vec::<i64>().unwrap(), [1, 2, 1, 2]);
        let u = get(Fill::Uniform(0x9E37_79B9_7F4A_7C15));
        assert!(
            u[0].1
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| (-1.0..1.0).contains(v))
        );
        assert_eq!(u[1].1.to_vec::<i64>().unwrap(), [0, 1, 0, 1]);
        let n = get(Fill::Normal(1));
        let x = n[0].1.to_vec::<f32>().unwrap();
        assert!(x.iter().any(|v| *v < -1.0) || x.iter().any(|v| *v > 1.0));
        assert!(
            n[1].1
                .to_vec::<i64>()
                .unwrap()
                .iter()
                .all(|&v| v == 0 || v == 1)
        );
    }

    #[test]
    fn unmakeable_dtypes_are_one_line_errors_naming_the_input() {
        let bytes = sig(vec![("s", DType::Bytes, vec![Dim::Fixed(1)])]);
        let half = sig(vec![("h", DType::F16, vec![Dim::Fixed(1)])]);
        for (s, fill, needle) in [
            (&bytes, Fill::Uniform(1), "BYTES input 's'"),
            (&bytes, Fill::Normal(1), "BYTES input 's'"),
            (&half, Fill::Normal(1), "FP16 input 'h'"),
        ] {
            let e = synthetic_inputs(s, 1, 1, fill).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(needle), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        // The pattern makes anything: zeros, empty strings.
        assert!(synthetic_inputs(&bytes, 1, 1, Fill::Pattern).is_ok());
        assert!(synthetic_inputs(&half, 1, 1, Fill::Uniform(1)).is_ok());
    }
}
