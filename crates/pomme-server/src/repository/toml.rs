//! pomme's `config.toml` for a model → [`Declared`]: backends, batching,
//! workers, device, precision, declared tensors, version policy, served
//! quantization and routing. Unknown keys are errors, so a typo is a
//! one-line model error rather than a silent default.

use super::{Declared, TensorDecl, VersionPolicy, check_batching};
use crate::routing::ModelRouting;
use pomme_core::{DType, DeviceKind, LoadOptions, Precision, one_line};
use pomme_runtime::BatchingConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// pomme's `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlConfig {
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    max_batch_size: usize,
    dynamic_batching: Option<TomlBatching>,
    workers: Option<usize>,
    memory_budget_mb: Option<u64>,
    /// `"all"`, `"latest"`, `{ latest = N }`, `{ all = true }` or `{ specific = [1, 3] }`.
    version_policy: Option<TomlPolicy>,
    device: Option<String>,
    threads: Option<usize>,
    precision: Option<String>,
    #[serde(default)]
    input: Vec<TomlTensor>,
    #[serde(default)]
    output: Vec<TomlTensor>,
    /// Backend-specific settings (`compute_units`, `cache_dir`...).
    #[serde(default)]
    extra: BTreeMap<String, String>,
    /// How `precision = "int8" | "int4"` is quantized and validated at load.
    quantization: Option<TomlQuant>,
    /// Measured routing: `"auto"`, `"off"`, a candidate list or a table (`routing.rs`).
    routing: Option<toml::Value>,
    /// `[[pipeline.step]]`: a pipeline (Triton's ensemble) of served models.
    pipeline: Option<TomlPipeline>,
    /// `[sequence]`: implicit state kept per sequence.
    sequence: Option<TomlSequence>,
    /// Unload after this long without a request (`"10m"`).
    unload_after_idle: Option<String>,
    /// With `unload_after_idle`: the next request loads the model again.
    #[serde(default)]
    reload_on_request: bool,
    /// Triton's `response_cache { enable: true }`.
    #[serde(default)]
    response_cache: bool,
    /// `[[warmup]]`: Triton's `model_warmup`.
    #[serde(default)]
    warmup: Vec<TomlWarmup>,
    /// `[text]`: a text model (tokenizer in the model directory).
    text: Option<pomme_text::TextConfig>,
}

/// `[pipeline]` with `[[pipeline.step]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPipeline {
    step: Vec<TomlStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlStep {
    model: String,
    version: Option<u64>,
    /// step model input → pipeline tensor
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    /// step model output → pipeline tensor
    #[serde(default)]
    outputs: BTreeMap<String, String>,
}

/// `[sequence]` with `[[sequence.state]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlSequence {
    max_sequences: Option<usize>,
    /// `"10m"`.
    idle_timeout: Option<String>,
    #[serde(default)]
    state: Vec<TomlState>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlState {
    input: String,
    output: String,
    #[serde(alias = "datatype")]
    dtype: String,
    dims: Vec<usize>,
}

impl TomlSequence {
    fn resolve(self) -> Result<pomme_runtime::SequenceConfig, String> {
        let mut cfg = pomme_runtime::SequenceConfig::default();
        if let Some(n) = self.max_sequences {
            if n == 0 {
                return Err("sequence.max_sequences must be at least 1".into());
            }
            cfg.max_sequences = n;
        }
        if let Some(t) = self.idle_timeout {
            cfg.idle_timeout = crate::duration::parse_duration(&t)
                .map_err(|e| format!("sequence.idle_timeout: {e}"))?;
        }
        for s in self.state {
            let dtype = DType::from_kserve(&s.dtype.to_ascii_uppercase())
                .or_else(|| DType::from_triton_config(&s.dtype))
                .ok_or_else(|| {
                    format!("sequence state '{}': unknown dtype '{}'", s.input, s.dtype)
                })?;
            cfg.states.push(pomme_runtime::StateDecl {
                input: s.input,
                output: s.output,
                dtype,
                dims: s.dims,
            });
        }
        Ok(cfg)
    }
}

/// `[[warmup]]`: a sample every worker runs before the model is ready.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlWarmup {
    name: String,
    #[serde(default = "one")]
    batch_size: usize,
    #[serde(default = "one")]
    count: usize,
    /// `[warmup.inputs.NAME]`: `data = "zero" | "random" | "file:PATH"`,
    /// optional `dims` (without the batch dim) and `dtype`.
    #[serde(default)]
    inputs: BTreeMap<String, TomlWarmupInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlWarmupInput {
    data: String,
    dims: Option<Vec<usize>>,
    #[serde(alias = "datatype")]
    dtype: Option<String>,
}

fn one() -> usize {
    1
}

impl TomlWarmup {
    fn resolve(self) -> Result<pomme_runtime::WarmupSample, String> {
        use pomme_runtime::{WarmupData, WarmupInput};
        let name = self.name;
        let inputs = self
            .inputs
            .into_iter()
            .map(|(key, i)| {
                let what = |m: &str| format!("warmup '{name}' input '{key}': {m}");
                let data = match i.data.as_str() {
                    "zero" => WarmupData::Zero,
                    "random" => WarmupData::Random,
                    f => match f.strip_prefix("file:") {
                        Some(p) if !p.is_empty() => WarmupData::File(p.into()),
                        _ => {
                            return Err(what(&format!(
                                "data '{f}' is not \"zero\", \"random\" or \"file:PATH\""
                            )));
                        }
                    },
                };
                let dtype = i
                    .dtype
                    .map(|d| {
                        DType::from_kserve(&d.to_ascii_uppercase())
                            .or_else(|| DType::from_triton_config(&d))
                            .ok_or_else(|| what(&format!("unknown dtype '{d}'")))
                    })
                    .transpose()?;
                Ok((
                    key.clone(),
                    WarmupInput {
                        dims: i.dims,
                        dtype,
                        data,
                    },
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(pomme_runtime::WarmupSample {
            name,
            batch_size: self.batch_size.max(1),
            count: self.count.max(1),
            inputs,
        })
    }
}

/// `[quantization]`: paths are relative to the model directory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TomlQuant {
    /// `int8`, `int8-static`, `int8-dynamic`, `int4`, `int4-nbits` (default:
    /// from `precision` and `target`).
    pub(super) scheme: Option<String>,
    /// `speed` (integer kernels for the engine) or `size` (weight-only, the
    /// default); only without `scheme`.
    pub(super) target: Option<String>,
    /// Refuse to serve when the worst cosine of the compared output falls
    /// below this (embedding models).
    pub(super) min_cosine: Option<f64>,
    /// SmoothQuant before the integer-kernel INT8 schemes (see
    /// `pomme_quant::smooth`): a strength α in (0, 1], `true` (the default
    /// strength) or `false`; unset: what the target does.
    pub(super) smooth: Option<TomlSmooth>,
    /// INT4 block size (32, 64, 128).
    pub(super) block_size: Option<usize>,
    /// `.npz` calibration data (needed by `int8-static`).
    pub(super) calibration: Option<PathBuf>,
    /// `.npz` validation data (default: the calibration data, else synthetic warm-up rows).
    pub(super) validation: Option<PathBuf>,
    /// Label array in the validation data.
    pub(super) labels: Option<String>,
    /// Refuse to serve beyond this drop (points; default 1.0).
    pub(super) max_accuracy_drop: Option<f64>,
    pub(super) warmup_samples: Option<usize>,
    /// Where quantized files are cached (default: `quantized/` under the
    /// server's cache root, [`crate::Platform::cache_root`]).
    pub(super) cache_dir: Option<PathBuf>,
}

/// `smooth = 0.8 | true | false`.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum TomlSmooth {
    On(bool),
    Alpha(f32),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TomlPolicy {
    Name(String),
    Table(TomlPolicyTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlPolicyTable {
    latest: Option<u64>,
    all: Option<bool>,
    specific: Option<Vec<u64>>,
}

impl TomlPolicy {
    fn resolve(self) -> Result<VersionPolicy, String> {
        match self {
            TomlPolicy::Name(n) if n == "all" => Ok(VersionPolicy::All),
            TomlPolicy::Name(n) if n == "latest" => Ok(VersionPolicy::Latest(1)),
            TomlPolicy::Name(n) => Err(format!(
                "version_policy '{n}' is not one of \"all\", \"latest\", {{ latest = N }}, {{ specific = [..] }}"
            )),
            TomlPolicy::Table(t) => match (t.latest, t.all, t.specific) {
                (Some(n), None, None) => Ok(VersionPolicy::Latest(n)),
                (None, Some(true), None) => Ok(VersionPolicy::All),
                (None, None, Some(v)) => Ok(VersionPolicy::Specific(v)),
                _ => Err(
                    "version_policy must set exactly one of latest = N, all = true, specific = [..]"
                        .into(),
                ),
            },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlBatching {
    max_queue_delay_us: Option<u64>,
    #[serde(default)]
    preferred_batch_sizes: Vec<usize>,
    max_queue_size: Option<usize>,
    default_queue_timeout_us: Option<u64>,
    priority_levels: Option<u32>,
    default_priority: Option<u32>,
    /// Pad each batch to a preferred size and warm those sizes at load.
    #[serde(default)]
    pad_to_preferred: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTensor {
    name: String,
    #[serde(alias = "datatype")]
    dtype: String,
    dims: Vec<i64>,
}

/// `unload_after_idle` (and `reload_on_request`, which needs it), in either format.
pub(super) fn idle_policy(
    after: Option<&str>,
    reload_on_request: bool,
) -> Result<Option<super::IdlePolicy>, String> {
    match after {
        None if reload_on_request => {
            Err("reload_on_request needs unload_after_idle (e.g. \"10m\")".into())
        }
        None => Ok(None),
        Some(a) => {
            let after = crate::duration::parse_duration(a)
                .map_err(|e| format!("unload_after_idle: {e}"))?;
            if after.is_zero() {
                return Err("unload_after_idle must be more than 0".into());
            }
            Ok(Some(super::IdlePolicy {
                after,
                reload_on_request,
            }))
        }
    }
}

/// Parses a `config.toml`.
pub(super) fn from_toml(text: &str) -> Result<Declared, String> {
    let c: TomlConfig = toml::from_str(text).map_err(|e| one_line(e.to_string()))?;
    let mut d = Declared::default();
    d.spec.backends = c.backends;
    d.spec.max_batch_size = c.max_batch_size;
    d.spec.workers = c.workers.unwrap_or(1).max(1);
    d.spec.response_cache = c.response_cache;
    d.spec.sequence = c.sequence.map(TomlSequence::resolve).transpose()?;
    d.text = c.text;
    d.pipeline = c.pipeline.map(|p| {
        p.step
            .into_iter()
            .map(|s| pomme_runtime::PipelineStep {
                model: s.model,
                version: s.version,
                inputs: s.inputs.into_iter().collect(),
                outputs: s.outputs.into_iter().collect(),
            })
            .collect()
    });
    d.idle = idle_policy(c.unload_after_idle.as_deref(), c.reload_on_request)?;
    d.spec.warmup = c
        .warmup
        .into_iter()
        .map(TomlWarmup::resolve)
        .collect::<Result<_, _>>()?;
    d.memory_budget_mb = c.memory_budget_mb;
    if let Some(p) = c.version_policy {
        d.version_policy = p.resolve()?;
    }
    if let Some(b) = c.dynamic_batching {
        let def = BatchingConfig::default();
        d.spec.batching = Some(BatchingConfig {
            max_queue_delay: b
                .max_queue_delay_us
                .map(Duration::from_micros)
                .unwrap_or(def.max_queue_delay),
            preferred_batch_sizes: b.preferred_batch_sizes,
            max_queue_size: b.max_queue_size.unwrap_or(def.max_queue_size),
            default_queue_timeout: b
                .default_queue_timeout_us
                .filter(|&t| t > 0)
                .map(Duration::from_micros),
            priority_levels: b.priority_levels.unwrap_or(def.priority_levels),
            default_priority: b.default_priority.unwrap_or(def.default_priority),
            pad_to_preferred: b.pad_to_preferred,
        });
    }
    d.quantization = c.quantization;
    d.device_set = c.device.is_some();
    d.spec.load = LoadOptions {
        device: match c.device {
            Some(s) => s.parse::<DeviceKind>().map_err(|e| e.to_string())?,
            None => DeviceKind::Cpu,
        },
        threads: c.threads,
        precision: match c.precision {
            Some(s) => s.parse::<Precision>().map_err(|e| e.to_string())?,
            None => Precision::F32,
        },
        extra: c.extra,
    };
    let decl = |t: TomlTensor| -> Result<TensorDecl, String> {
        let dtype = DType::from_kserve(&t.dtype)
            .or_else(|| DType::from_triton_config(&t.dtype))
            .ok_or_else(|| format!("tensor '{}' has unknown dtype '{}'", t.name, t.dtype))?;
        Ok(TensorDecl {
            name: t.name,
            dtype,
            dims: t.dims,
        })
    };
    d.inputs = c.input.into_iter().map(decl).collect::<Result<_, _>>()?;
    d.outputs = c.output.into_iter().map(decl).collect::<Result<_, _>>()?;
    if let Some(r) = c.routing {
        d.routing = ModelRouting::from_toml(r)?;
    }
    check_batching(&d.spec)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{model, scan};
    use super::*;

    #[test]
    fn reads_idle_unload() {
        let d = from_toml("unload_after_idle = \"10m\"\nreload_on_request = true\n").unwrap();
        assert_eq!(
            d.idle,
            Some(crate::repository::IdlePolicy {
                after: Duration::from_secs(600),
                reload_on_request: true
            })
        );
        assert!(from_toml("").unwrap().idle.is_none());
        let e = from_toml("reload_on_request = true\n").unwrap_err();
        assert!(e.contains("needs unload_after_idle"), "{e}");
        let e = from_toml("unload_after_idle = \"soon\"\n").unwrap_err();
        assert!(e.contains("unload_after_idle"), "{e}");
    }

    #[test]
    fn reads_warmup() {
        let d = from_toml(
            r#"
max_batch_size = 8
[[warmup]]
name = "batch8"
batch_size = 8
count = 3
inputs.x = { data = "random", dims = [16], dtype = "FP32" }
inputs.ids = { data = "file:ids.bin" }
[[warmup]]
name = "plain"
"#,
        )
        .unwrap();
        let w = &d.spec.warmup;
        assert_eq!((w[0].batch_size, w[0].count), (8, 3));
        assert_eq!(w[0].inputs[0].0, "ids");
        assert_eq!(
            w[0].inputs[0].1.data,
            pomme_runtime::WarmupData::File("ids.bin".into())
        );
        assert_eq!(w[0].inputs[1].1.dims, Some(vec![16]));
        assert_eq!(w[0].inputs[1].1.dtype, Some(DType::F32));
        assert_eq!((w[1].batch_size, w[1].count, w[1].inputs.len()), (1, 1, 0));
        let e =
            from_toml("[[warmup]]\nname = \"w\"\ninputs.x = { data = \"ones\" }\n").unwrap_err();
        assert!(
            e.contains("warmup 'w' input 'x'") && e.contains("ones"),
            "{e}"
        );
    }

    #[test]
    fn scans_newest_version_and_toml() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path();
        model(repo, "plain", 1, None);
        model(repo, "plain", 3, None);
        model(
            repo,
            "batched",
            1,
            Some((
                "config.toml",
                r#"
backends = ["tract"]
max_batch_size = 8
workers = 2
device = "cpu"
threads = 2
precision = "f16"
[dynamic_batching]
max_queue_delay_us = 200
preferred_batch_sizes = [4, 8]
max_queue_size = 64
default_queue_timeout_us = 5000
priority_levels = 2
default_priority = 2
[[input]]
name = "x"
dtype = "FP32"
dims = [-1, 3]
"#,
            )),
        );
        std::fs::create_dir_all(repo.join("empty")).unwrap();
        let found = scan(repo).unwrap();
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["batched", "empty", "plain"]);
        let plain = found[2].1.as_ref().unwrap();
        assert_eq!(plain.spec.version, 3);
        assert_eq!(plain.versions, vec![1, 3]);
        assert!(plain.spec.path.ends_with("plain/3/model.onnx"));
        let b = found[0].1.as_ref().unwrap();
        assert_eq!(b.spec.backends, vec!["tract"]);
        assert_eq!(b.spec.workers, 2);
        assert_eq!(b.spec.load.precision, Precision::F16);
        let bc = b.spec.batching.as_ref().unwrap();
        assert_eq!(bc.max_queue_delay, Duration::from_micros(200));
        assert_eq!(bc.preferred_batch_sizes, vec![4, 8]);
        assert_eq!(bc.default_queue_timeout, Some(Duration::from_millis(5)));
        assert_eq!(b.inputs[0].dims, vec![-1, 3]);
        let e = found[1].1.as_ref().unwrap_err().to_string();
        assert!(e.contains("no version directory"), "{e}");
    }
}
