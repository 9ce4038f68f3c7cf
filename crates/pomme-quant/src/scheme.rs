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
            other => {
                return Err(Error::invalid_input(format!(
                    "unknown quantization scheme '{other}' (expected int8, int8-static or int4)"
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

    /// Checks parameters.
    pub fn check(&self) -> Result<()> {
        match self {
            Scheme::Int4 { block_size } if !INT4_BLOCK_SIZES.contains(block_size) => {
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
        }
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
        }
    }
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
}

impl QuantizeOptions {
    /// Defaults for a scheme.
    pub fn new(scheme: Scheme) -> QuantizeOptions {
        QuantizeOptions {
            scheme,
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
            "invalid input: unknown quantization scheme 'int3' (expected int8, int8-static or int4)"
        );
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
}
