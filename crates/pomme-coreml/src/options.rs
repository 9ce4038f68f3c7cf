//! The Core ML backend's load options: every `LoadOptions.extra` key it reads,
//! parsed once per load (on every platform, so a bad value reads the same
//! everywhere) into [`CoreMlOptions`], whose field docs are the reference for
//! each key. A bad value is a one-line [`Error::InvalidInput`] naming the key
//! and what it accepts.

use crate::convert::image::ImageLayout;
use crate::convert::state::StateLimits;
use crate::placement::MIN_ANE_SHARE_KEY;
use pomme_core::{Error, ExtraOptions, LoadOptions, Precision, Result};
use std::path::PathBuf;

/// Every key [`CoreMlOptions`] reads ([`pomme_core::Backend::option_keys`]).
pub const KEYS: &[&str] = &[
    "compute_units",
    "cache_dir",
    "allow_low_precision_gpu",
    "virtual_batch",
    MIN_ANE_SHARE_KEY,
    "function",
    "max_sequences",
    "sequence_idle_timeout_s",
    "cache_max_mb",
    "instances",
    "image_layout",
];

/// The compiled-model cache's default size cap (`cache_max_mb`): 8 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 8 << 30;

/// The Core ML backend's settings for one load, from `LoadOptions.extra`.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreMlOptions {
    /// `compute_units`: `all`, `cpuOnly`, `cpuAndGPU` or `cpuAndNeuralEngine`
    /// (case, `_` and `-` ignored; also `cpu`, `gpu`, `ane`). Default: from
    /// the device (`ane` → `cpuAndNeuralEngine`, `metal` → `cpuAndGPU`, `cpu`
    /// → `cpuOnly`, `auto` → `all`).
    pub compute_units: Option<ComputeUnits>,
    /// `cache_dir`: where compiled `.mlmodelc` bundles are kept (default: the
    /// backend's, `<cache root>/coreml`).
    pub cache_dir: Option<PathBuf>,
    /// `cache_max_mb`: the compiled-model cache's size cap in MiB (default
    /// 8192); least recently used bundles are removed past it.
    pub cache_max_mb: Option<u64>,
    /// `allow_low_precision_gpu` (`true` | `false`), default `false`: lets the
    /// GPU accumulate in float16 (always allowed with `precision = f16`).
    pub allow_low_precision_gpu: bool,
    /// `virtual_batch` (`true` | `false`), default `true`: offer a symbolic
    /// batch for models whose inputs and outputs all start with a fixed 1
    /// (such batches run through `MLArrayBatchProvider`).
    pub virtual_batch: bool,
    /// `min_ane_share`: a fraction in [0, 1]; the load is refused when Core
    /// ML's compute plan puts less of the model (its placed ops, or their
    /// estimated cost when Core ML gives costs) on the Neural Engine.
    pub min_ane_share: Option<f64>,
    /// `function`: the function of a multifunction package to serve (macOS
    /// 15+); default: the package's default function.
    pub function: Option<String>,
    /// `max_sequences` (stateful models): live sequences at most, default 64;
    /// a new sequence past it is refused (429).
    /// `sequence_idle_timeout_s`: seconds after which an idle sequence's
    /// state is dropped, default 600.
    pub states: StateLimits,
    /// `instances`: model instances, each on its own thread, that predict
    /// concurrently (sessions, one per worker, take them in turn); default 1.
    /// Stateful models keep one (a sequence's state lives on one instance).
    pub instances: usize,
    /// `image_layout`: how clients lay out tensors for image inputs, `nhwc`
    /// (default: `[H, W, C]`, optionally `[1, H, W, C]`) or `nchw` (the
    /// signature then says `[1, C, H, W]`); image outputs stay `[H, W, C]`.
    pub image_layout: ImageLayout,
}

/// Core ML compute units, as `MLComputeUnits` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputeUnits {
    All,
    CpuOnly,
    CpuAndGpu,
    CpuAndNeuralEngine,
}

impl ComputeUnits {
    /// What Core ML computes in under these units, for routing's tolerance
    /// ([`pomme_core::LoadedModel::compute_precision`]): float16 when the
    /// Neural Engine may run the model (`all`, `cpuAndNeuralEngine`: it
    /// computes in float16 only), when the GPU may run a neural network
    /// (Core ML runs those in float16 there) or accumulate in float16
    /// (`low_precision_gpu`), and for an ML Program converted to float16;
    /// float32 otherwise.
    pub fn compute_precision(
        self,
        fp16_program: bool,
        neural_network: bool,
        low_precision_gpu: bool,
    ) -> Precision {
        let gpu = matches!(self, ComputeUnits::All | ComputeUnits::CpuAndGpu);
        let ane = matches!(self, ComputeUnits::All | ComputeUnits::CpuAndNeuralEngine);
        if fp16_program || ane || (gpu && (neural_network || low_precision_gpu)) {
            Precision::F16
        } else {
            Precision::F32
        }
    }

    /// The `MLComputeUnits` name (`cpuAndNeuralEngine`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeUnits::All => "all",
            ComputeUnits::CpuOnly => "cpuOnly",
            ComputeUnits::CpuAndGpu => "cpuAndGPU",
            ComputeUnits::CpuAndNeuralEngine => "cpuAndNeuralEngine",
        }
    }
}

impl CoreMlOptions {
    /// The cache's size cap in bytes.
    pub fn cache_max_bytes(&self) -> u64 {
        self.cache_max_mb
            .map_or(DEFAULT_CACHE_MAX_BYTES, |mb| mb.saturating_mul(1 << 20))
    }

    /// Parses every key of [`KEYS`] from `options.extra`.
    pub fn from_load_options(options: &LoadOptions) -> Result<CoreMlOptions> {
        Self::read(&ExtraOptions::new(&options.extra))
    }

    fn read(x: &ExtraOptions<'_>) -> Result<CoreMlOptions> {
        let compute_units = match x.get("compute_units") {
            None => None,
            Some(v) => Some(
                match v.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
                    "all" => ComputeUnits::All,
                    "cpuonly" | "cpu" => ComputeUnits::CpuOnly,
                    "cpuandgpu" | "gpu" => ComputeUnits::CpuAndGpu,
                    "cpuandneuralengine" | "ane" => ComputeUnits::CpuAndNeuralEngine,
                    _ => {
                        return Err(Error::invalid_input(format!(
                            "unknown compute_units '{v}' (expected all, cpuOnly, cpuAndGPU or cpuAndNeuralEngine)"
                        )));
                    }
                },
            ),
        };
        let min_ane_share = match x.get(MIN_ANE_SHARE_KEY) {
            None => None,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(f) if (0.0..=1.0).contains(&f) => Some(f),
                _ => {
                    return Err(Error::invalid_input(format!(
                        "{MIN_ANE_SHARE_KEY} must be a fraction between 0 and 1, got '{v}'"
                    )));
                }
            },
        };
        Ok(CoreMlOptions {
            compute_units,
            cache_dir: x.get("cache_dir").map(PathBuf::from),
            cache_max_mb: match x.get("cache_max_mb") {
                None => None,
                Some(_) => Some(count(x, "cache_max_mb", 0)?),
            },
            allow_low_precision_gpu: flag(x, "allow_low_precision_gpu", false)?,
            virtual_batch: flag(x, "virtual_batch", true)?,
            min_ane_share,
            function: x.get("function").map(str::to_string),
            instances: count(x, "instances", 1)? as usize,
            image_layout: match x.get("image_layout") {
                None => ImageLayout::Hwc,
                Some(v) => ImageLayout::parse(v)?,
            },
            states: StateLimits {
                max_sequences: count(x, "max_sequences", 64)? as usize,
                idle_timeout: std::time::Duration::from_secs(count(
                    x,
                    "sequence_idle_timeout_s",
                    600,
                )?),
            },
        })
    }
}

/// A positive integer option, `default` when absent.
fn count(x: &ExtraOptions<'_>, key: &'static str, default: u64) -> Result<u64> {
    match x.get(key) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid_input(format!(
                "{key} '{v}' is not a positive integer"
            ))),
        },
    }
}

/// A boolean option (`true` | `false`), `default` when absent.
fn flag(x: &ExtraOptions<'_>, key: &'static str, default: bool) -> Result<bool> {
    match x.get(key) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(Error::invalid_input(format!(
            "{key} '{other}' is not a boolean (true or false)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_precision_by_units_and_model() {
        use ComputeUnits::*;
        let p = |u: ComputeUnits, fp16, nn, low| u.compute_precision(fp16, nn, low);
        assert_eq!(p(CpuOnly, false, false, false), Precision::F32);
        assert_eq!(p(CpuOnly, false, true, true), Precision::F32);
        assert_eq!(p(CpuOnly, true, false, false), Precision::F16);
        assert_eq!(p(All, false, false, false), Precision::F16);
        assert_eq!(p(CpuAndNeuralEngine, false, false, false), Precision::F16);
        assert_eq!(p(CpuAndGpu, false, false, false), Precision::F32);
        assert_eq!(p(CpuAndGpu, false, true, false), Precision::F16);
        assert_eq!(p(CpuAndGpu, false, false, true), Precision::F16);
    }

    #[test]
    fn option_keys_are_what_the_parser_reads() {
        let empty = Default::default();
        let x = ExtraOptions::new(&empty);
        CoreMlOptions::read(&x).unwrap();
        let mut keys = KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(x.keys_read(), keys);
    }

    #[test]
    fn wrong_values_are_refused_naming_the_key() {
        for (key, bad) in [
            ("compute_units", "npu"),
            ("allow_low_precision_gpu", "yes"),
            ("virtual_batch", "off"),
            ("min_ane_share", "80%"),
            ("max_sequences", "0"),
            ("sequence_idle_timeout_s", "ten"),
            ("cache_max_mb", "-1"),
            ("instances", "0"),
            ("image_layout", "planar"),
        ] {
            let e = CoreMlOptions::from_load_options(&LoadOptions::with_extra(&[(key, bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("invalid input: "), "{e}");
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn values_and_defaults() {
        let o = CoreMlOptions::from_load_options(&LoadOptions::with_extra(&[])).unwrap();
        assert_eq!(o.compute_units, None);
        assert!(o.virtual_batch && !o.allow_low_precision_gpu);
        let o = CoreMlOptions::from_load_options(&LoadOptions::with_extra(&[
            ("compute_units", "CPU_AND_GPU"),
            ("cache_dir", "/tmp/c"),
            ("virtual_batch", "false"),
            ("min_ane_share", "0.8"),
            ("function", "prefill"),
            ("max_sequences", "4"),
        ]))
        .unwrap();
        assert_eq!(o.function.as_deref(), Some("prefill"));
        assert_eq!(o.states.max_sequences, 4);
        assert_eq!(o.states.idle_timeout.as_secs(), 600);
        assert_eq!(o.cache_max_bytes(), DEFAULT_CACHE_MAX_BYTES);
        assert_eq!(o.instances, 1);
        assert_eq!(o.image_layout, ImageLayout::Hwc);
        let nchw =
            CoreMlOptions::from_load_options(&LoadOptions::with_extra(&[("image_layout", "NCHW")]))
                .unwrap();
        assert_eq!(nchw.image_layout, ImageLayout::Chw);
        let small =
            CoreMlOptions::from_load_options(&LoadOptions::with_extra(&[("cache_max_mb", "2")]))
                .unwrap();
        assert_eq!(small.cache_max_bytes(), 2 << 20);
        assert_eq!(o.compute_units, Some(ComputeUnits::CpuAndGpu));
        assert_eq!(o.compute_units.unwrap().as_str(), "cpuAndGPU");
        assert_eq!(o.cache_dir, Some(PathBuf::from("/tmp/c")));
        assert!(!o.virtual_batch);
        assert_eq!(o.min_ane_share, Some(0.8));
    }

    fn min_ane_share(extra: &std::collections::BTreeMap<String, String>) -> Result<Option<f64>> {
        CoreMlOptions::read(&ExtraOptions::new(extra)).map(|o| o.min_ane_share)
    }

    #[test]
    fn min_ane_share_setting_is_validated() {
        let mut extra = std::collections::BTreeMap::new();
        assert_eq!(min_ane_share(&extra).unwrap(), None);
        extra.insert(MIN_ANE_SHARE_KEY.to_string(), "0.8".to_string());
        assert_eq!(min_ane_share(&extra).unwrap(), Some(0.8));
        for bad in ["1.5", "-0.1", "most", ""] {
            extra.insert(MIN_ANE_SHARE_KEY.to_string(), bad.to_string());
            let e = min_ane_share(&extra).unwrap_err().to_string();
            assert!(e.contains("min_ane_share must be a fraction"), "{e}");
        }
    }
}
