//! What to quantize and how: schemes, calibration methods and options.

use pomme_core::{Error, Precision, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A quantization scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scheme", rename_all = "kebab-case")]
pub enum Scheme {
    /// Weight-only INT8: symmetric int8 weights + `DequantizeLinear` feeding the
    /// original float op. Activations stay float.
    Int8 { per_channel: bool },
    /// Static INT8 (QDQ): INT8 weights as above, plus `QuantizeLinear` →
    /// `DequantizeLinear` (uint8, asymmetric) on the activation input of every
    /// quantized op, with ranges from calibration data.
    Int8Static {
        per_channel: bool,
        method: CalibrationMethod,
    },
    /// Weight-only INT4, blockwise symmetric along the reduction axis, packed two
    /// values per byte and unpacked in-graph with standard ops (see `int4` in
    /// [`crate::rewrite`]).
    Int4 { block_size: usize },
    /// Dynamic INT8 (integer kernels, no calibration): `MatMul`/`Gemm` run as
    /// `DynamicQuantizeLinear` → `MatMulInteger` → scale, which ONNX Runtime
    /// fuses into `DynamicQuantizeMatMul`; embedding tables are gathered as
    /// int8 rows. `Conv` stays float (ONNX Runtime's `ConvInteger` is slower
    /// than its float `Conv`).
    Int8Dynamic { per_channel: bool },
    /// INT4 for ONNX Runtime's native kernel: `MatMul`/`Gemm` weights become
    /// `com.microsoft.MatMulNBits` (blocks along K, int8 compute); `Conv` and
    /// `Gather` weights use the portable [`Scheme::Int4`] form.
    Int4NBits { block_size: usize },
}

/// What a quantized file is for: `speed` picks the scheme that runs on integer
/// kernels of the engine, `size` the weight-only files (smallest, portable,
/// dequantized to float at run time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Speed,
    #[default]
    Size,
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "speed" => Ok(Target::Speed),
            "size" => Ok(Target::Size),
            other => Err(Error::invalid_input(format!(
                "unknown quantization target '{other}' (expected speed or size)"
            ))),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Speed => "speed",
            Target::Size => "size",
        })
    }
}

/// The engine a speed-targeted file is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// ONNX Runtime (CPU EP): integer kernels for dynamic INT8, QDQ and MatMulNBits.
    Ort,
    /// tract: runs every format, none faster than float; see [`Scheme::for_target`].
    Tract,
}

impl Engine {
    /// From a backend name (`ort`, `onnxruntime`, `tract`); others are `None`.
    pub fn from_backend(name: &str) -> Option<Engine> {
        match name.to_ascii_lowercase().as_str() {
            "ort" | "onnxruntime" => Some(Engine::Ort),
            "tract" => Some(Engine::Tract),
            _ => None,
        }
    }
}

/// Block sizes accepted for INT4.
pub const INT4_BLOCK_SIZES: [usize; 5] = [16, 32, 64, 128, 256];

impl Scheme {
    /// Builds a scheme from the CLI's words: `int8`, `int8-static` or `int4`.
    /// `per_channel` applies to the INT8 schemes, `block_size` to INT4 and
    /// `method` to `int8-static`. An unknown name is an `InvalidInput` error.
    pub fn from_cli(
        name: &str,
        per_channel: bool,
        block_size: usize,
        method: CalibrationMethod,
    ) -> Result<Scheme> {
        let s = match name {
            "int8" => Scheme::Int8 { per_channel },
            "int8-static" | "int8_static" | "static" => Scheme::Int8Static {
                per_channel,
                method,
            },
            "int4" => Scheme::Int4 { block_size },
            "int8-dynamic" | "int8_dynamic" | "dynamic" => Scheme::Int8Dynamic { per_channel },
            "int4-nbits" | "int4_nbits" | "matmulnbits" => Scheme::Int4NBits { block_size },
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown quantization scheme '{other}' (expected int8, int8-static, int8-dynamic, int4 or int4-nbits)"
                )));
            }
        };
        s.check()?;
        Ok(s)
    }

    /// The scheme a model config's `precision` asks for, with pomme's defaults
    /// (per-channel INT8; INT4 in blocks of 32). `None` for float precisions.
    pub fn for_precision(p: Precision) -> Option<Scheme> {
        match p {
            Precision::Int8 => Some(Scheme::Int8 { per_channel: true }),
            Precision::Int4 => Some(Scheme::Int4 { block_size: 32 }),
            Precision::F32 | Precision::F16 => None,
        }
    }

    /// The scheme for `precision` and `target` on `engine`, for a model with
    /// the given [`Profile`]. `calibration`: whether calibration data exists.
    /// Returns the scheme and, when the choice needs explaining, a note.
    ///
    /// `size` keeps the weight-only schemes (`for_precision`). `speed`:
    /// * ONNX Runtime, INT8: a model with convolutions and calibration data gets
    ///   `int8-static` (QDQ that ORT fuses into QLinearConv / QGemm); otherwise
    ///   `int8-dynamic` (convolutions, if any, stay float). INT4: `int4-nbits`.
    /// * tract 0.23 loads and runs every format (QDQ, dynamic, MatMulNBits),
    ///   but none faster than float (measured: MiniLM int8-dynamic 1.77×,
    ///   int4-nbits 4.4×, ResNet-18 QDQ 1.6× of float), while it folds the
    ///   weight-only files to float at load: `speed` on tract keeps them.
    pub fn for_target(
        precision: Precision,
        target: Target,
        engine: Engine,
        profile: &Profile,
        calibration: bool,
    ) -> Option<(Scheme, Option<String>)> {
        let size = Scheme::for_precision(precision)?;
        if target == Target::Size {
            return Some((size, None));
        }
        Some(match (precision, engine) {
            (_, Engine::Tract) => (
                size,
                Some("tract 0.23 has no integer kernel faster than its float one: weight-only (folded to float at load)".into()),
            ),
            (Precision::Int4, Engine::Ort) => (Scheme::Int4NBits { block_size: 32 }, None),
            (_, Engine::Ort) if profile.conv_weights > 0 && calibration => (
                Scheme::Int8Static {
                    per_channel: true,
                    method: CalibrationMethod::MinMax,
                },
                None,
            ),
            _ => {
                let note = (profile.conv_weights > 0).then(|| {
                    "convolutional model without calibration data: int8-dynamic, Conv stays float (give calibration data for int8-static)".to_string()
                });
                (Scheme::Int8Dynamic { per_channel: true }, note)
            }
        })
    }

    /// Checks parameters.
    pub fn check(&self) -> Result<()> {
        match self {
            Scheme::Int4 { block_size } | Scheme::Int4NBits { block_size }
                if !INT4_BLOCK_SIZES.contains(block_size) =>
            {
                Err(Error::invalid_input(format!(
                    "INT4 block size {block_size} is not supported (use 16, 32, 64, 128 or 256)"
                )))
            }
            Scheme::Int8Static {
                method: CalibrationMethod::Percentile(p),
                ..
            } if !(*p > 50.0 && *p <= 100.0) => Err(Error::invalid_input(format!(
                "percentile {p} must be in (50, 100]"
            ))),
            _ => Ok(()),
        }
    }

    /// Short name: `int8`, `int8-static`, `int4`.
    pub fn name(&self) -> &'static str {
        match self {
            Scheme::Int8 { .. } => "int8",
            Scheme::Int8Static { .. } => "int8-static",
            Scheme::Int4 { .. } => "int4",
            Scheme::Int8Dynamic { .. } => "int8-dynamic",
            Scheme::Int4NBits { .. } => "int4-nbits",
        }
    }

    /// Whether the scheme's files run on integer kernels (ONNX Runtime).
    pub fn runs_integer_kernels(&self) -> bool {
        matches!(
            self,
            Scheme::Int8Static { .. } | Scheme::Int8Dynamic { .. } | Scheme::Int4NBits { .. }
        )
    }

    /// Whether activations are quantized (needs calibration data).
    pub fn is_static(&self) -> bool {
        matches!(self, Scheme::Int8Static { .. })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Int8 { per_channel } => write!(
                f,
                "int8 weight-only ({})",
                if *per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                }
            ),
            Scheme::Int8Static {
                per_channel,
                method,
            } => write!(
                f,
                "int8 static QDQ ({} weights, {method} calibration)",
                if *per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                }
            ),
            Scheme::Int4 { block_size } => write!(f, "int4 weight-only (blocks of {block_size})"),
            Scheme::Int8Dynamic { per_channel } => write!(
                f,
                "int8 dynamic ({} weights, activations quantized at run time)",
                if *per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                }
            ),
            Scheme::Int4NBits { block_size } => {
                write!(f, "int4 MatMulNBits (blocks of {block_size})")
            }
        }
    }
}

/// How much of a model's weight sits in convolutions and in matmuls (element
/// counts of the quantizable initializers): what `speed` chooses by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    pub conv_weights: usize,
    pub matmul_weights: usize,
}

/// How activation ranges are chosen from calibration data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// The observed minimum and maximum.
    #[default]
    MinMax,
    /// The given two-sided percentile of the observed values (e.g. 99.99).
    Percentile(f64),
    /// The clipping threshold minimising the KL divergence between the float
    /// histogram and its quantized version (TensorRT's entropy calibration).
    Entropy,
}

impl fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalibrationMethod::MinMax => f.write_str("minmax"),
            CalibrationMethod::Percentile(p) => write!(f, "percentile:{p}"),
            CalibrationMethod::Entropy => f.write_str("entropy"),
        }
    }
}

impl FromStr for CalibrationMethod {
    type Err = Error;
    /// `minmax`, `percentile` (99.99), `percentile:99.9`, `entropy` (or `kl`).
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        Ok(match (name, arg) {
            ("minmax" | "min-max", None) => CalibrationMethod::MinMax,
            ("percentile", None) => CalibrationMethod::Percentile(99.99),
            ("percentile", Some(a)) => {
                let p: f64 = a.parse().map_err(|_| {
                    Error::invalid_input(format!("percentile '{a}' is not a number"))
                })?;
                CalibrationMethod::Percentile(p)
            }
            ("entropy" | "kl", None) => CalibrationMethod::Entropy,
            _ => {
                return Err(Error::invalid_input(format!(
                    "unknown calibration method '{s}' (expected minmax, percentile[:P] or entropy)"
                )));
            }
        })
    }
}

/// Everything the quantizer needs besides the model and the engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeOptions {
    pub scheme: Scheme,
    /// Op types (`Conv`, `MatMul`...), node names or weight names to keep float.
    pub exclude: Vec<String>,
    /// Weights with fewer elements stay float (biases, tiny layers): their
    /// bytes do not matter and they are often the most sensitive.
    pub min_elements: usize,
    /// Also quantize the data of `Gather` (embedding tables) in weight-only
    /// schemes. On by default: in MiniLM the word embeddings are half the model.
    pub quantize_gather: bool,
    /// Calibration data (`.npz`), required by `int8-static`.
    pub calibration: Option<PathBuf>,
    /// Rows per calibration / validation batch.
    pub batch_size: usize,
    /// Validation data (`.npz`); when set, the result is validated on every
    /// engine passed in before anything is written.
    pub validate: Option<PathBuf>,
    /// Label array in the validation file; `None` uses `y`, `label` or `labels`
    /// when present.
    pub labels: Option<String>,
    /// Output compared (default: the first float output of rank 2, else the first float output).
    pub compare_output: Option<String>,
    /// Fail (writing nothing) when accuracy drops by more than this many
    /// percentage points on any engine (without labels: top-1 disagreement %).
    pub max_accuracy_drop: Option<f64>,
    /// With `validate` and `max_accuracy_drop`: when the budget is exceeded,
    /// measure each layer's sensitivity and keep the worst layers float
    /// greedily until the budget is met.
    pub auto_exclude: bool,
    /// Timed passes per model and engine for the latency ratio.
    pub latency_repeats: usize,
    /// Fail (writing nothing) when the worst per-row cosine similarity of the
    /// compared output falls below this on any engine (embedding models).
    /// With `auto_exclude`, sensitive layers are kept float until it holds.
    #[serde(default)]
    pub min_cosine: Option<f64>,
    /// SmoothQuant's migration strength α for the integer-kernel schemes
    /// (see [`crate::smooth`]); `None` (the default) leaves activations as
    /// they are; [`crate::smooth::DEFAULT_ALPHA`] is the measured choice.
    /// Measured on the calibration data, else on the validation data.
    #[serde(default)]
    pub smooth: Option<f32>,
}

impl QuantizeOptions {
    /// Defaults for a scheme.
    pub fn new(scheme: Scheme) -> QuantizeOptions {
        QuantizeOptions {
            exclude: Vec::new(),
            min_elements: 256,
            quantize_gather: true,
            calibration: None,
            batch_size: 64,
            validate: None,
            labels: None,
            compare_output: None,
            max_accuracy_drop: None,
            auto_exclude: false,
            latency_repeats: 5,
            min_cosine: None,
            smooth: None,
            scheme,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cli_words() {
        assert_eq!(
            Scheme::from_cli("int4", false, 64, CalibrationMethod::MinMax).unwrap(),
            Scheme::Int4 { block_size: 64 }
        );
        let e = Scheme::from_cli("int3", false, 32, CalibrationMethod::MinMax).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid input: unknown quantization scheme 'int3' (expected int8, int8-static, int8-dynamic, int4 or int4-nbits)"
        );
        assert_eq!(
            Scheme::from_cli("int8-dynamic", true, 32, CalibrationMethod::MinMax).unwrap(),
            Scheme::Int8Dynamic { per_channel: true }
        );
        assert!(Scheme::from_cli("int4-nbits", false, 24, CalibrationMethod::MinMax).is_err());
        assert!("fast".parse::<Target>().is_err());
        assert!(Scheme::from_cli("int4", false, 48, CalibrationMethod::MinMax).is_err());
        assert_eq!(
            "percentile:99.9".parse::<CalibrationMethod>().unwrap(),
            CalibrationMethod::Percentile(99.9)
        );
        assert_eq!(
            "percentile".parse::<CalibrationMethod>().unwrap(),
            CalibrationMethod::Percentile(99.99)
        );
        assert!("mse".parse::<CalibrationMethod>().is_err());
    }

    #[test]
    fn speed_picks_integer_kernel_schemes() {
        let conv = Profile {
            conv_weights: 1000,
            matmul_weights: 10,
        };
        let mlp = Profile {
            conv_weights: 0,
            matmul_weights: 1000,
        };
        let pick = |p, t, e, prof: &Profile, c| Scheme::for_target(p, t, e, prof, c).unwrap().0;
        use Precision::*;
        assert_eq!(
            pick(Int8, Target::Speed, Engine::Ort, &mlp, false),
            Scheme::Int8Dynamic { per_channel: true }
        );
        assert!(pick(Int8, Target::Speed, Engine::Ort, &conv, true).is_static());
        assert_eq!(
            pick(Int8, Target::Speed, Engine::Ort, &conv, false),
            Scheme::Int8Dynamic { per_channel: true }
        );
        assert_eq!(
            pick(Int4, Target::Speed, Engine::Ort, &mlp, false),
            Scheme::Int4NBits { block_size: 32 }
        );
        assert_eq!(
            pick(Int4, Target::Speed, Engine::Tract, &mlp, false),
            Scheme::Int4 { block_size: 32 }
        );
        assert_eq!(
            pick(Int8, Target::Speed, Engine::Tract, &conv, true),
            Scheme::Int8 { per_channel: true }
        );
        assert_eq!(
            pick(Int8, Target::Size, Engine::Ort, &conv, true),
            Scheme::Int8 { per_channel: true }
        );
        assert!(Scheme::for_target(F32, Target::Speed, Engine::Ort, &mlp, false).is_none());
    }
}
