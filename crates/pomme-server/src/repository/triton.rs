//! Triton's `config.pbtxt` for a model → [`Declared`]: platform, batch size,
//! tensors (Triton leaves the batch dimension out of `dims`), dynamic
//! batching, instance groups, version policy, and pomme's own `parameters`
//! (`memory_budget_mb`, `routing`). Which pomme backends a Triton platform
//! means and which device `KIND_GPU` means are the caller's [`Platform`]: the
//! server names no backend.

use super::{Declared, TensorDecl, VersionPolicy, check_batching};
use crate::Platform;
use crate::pbtxt;
use crate::routing::ModelRouting;
use pomme_core::{DType, DeviceKind};
use pomme_runtime::{
    BatchingConfig, PipelineStep, SequenceConfig, StateDecl, WarmupData, WarmupInput, WarmupSample,
};
use std::time::Duration;

/// The fields of a `config.pbtxt` pomme reads, per message: anything else is
/// reported at load as not implemented (Triton users expect a word, not
/// silence, when `model_warmup` or `response_cache` does nothing).
const IMPLEMENTED: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "name",
            "platform",
            "backend",
            "max_batch_size",
            "input",
            "output",
            "dynamic_batching",
            "instance_group",
            "version_policy",
            "parameters",
            "model_warmup",
            "response_cache",
            "sequence_batching",
            "ensemble_scheduling",
        ],
    ),
    ("ensemble_scheduling", &["step"]),
    (
        "ensemble_scheduling.step",
        &["model_name", "model_version", "input_map", "output_map"],
    ),
    ("ensemble_scheduling.step.input_map", &["key", "value"]),
    ("ensemble_scheduling.step.output_map", &["key", "value"]),
    (
        "sequence_batching",
        &["max_sequence_idle_microseconds", "state"],
    ),
    (
        "sequence_batching.state",
        &["input_name", "output_name", "data_type", "dims"],
    ),
    ("response_cache", &["enable"]),
    ("model_warmup", &["name", "batch_size", "count", "inputs"]),
    ("model_warmup.inputs", &["key", "value"]),
    (
        "model_warmup.inputs.value",
        &[
            "data_type",
            "dims",
            "zero_data",
            "random_data",
            "input_data_file",
        ],
    ),
    ("input", &["name", "data_type", "dims"]),
    ("output", &["name", "data_type", "dims"]),
    (
        "dynamic_batching",
        &[
            "max_queue_delay_microseconds",
            "preferred_batch_size",
            "default_queue_policy",
            "priority_levels",
            "default_priority_level",
        ],
    ),
    (
        "dynamic_batching.default_queue_policy",
        &["max_queue_size", "default_timeout_microseconds"],
    ),
    ("instance_group", &["name", "count", "kind"]),
    ("version_policy", &["latest", "all", "specific"]),
    ("parameters", &["key", "value"]),
];

/// Every field of `m` (under `path`) that [`IMPLEMENTED`] does not list,
/// as dotted paths, once each, in the order written.
fn unimplemented(m: &pbtxt::Message, path: &str, out: &mut Vec<String>) {
    let Some((_, known)) = IMPLEMENTED.iter().find(|(p, _)| *p == path) else {
        return; // a message pomme reads whole (version_policy's bodies, parameter values)
    };
    for (name, value) in &m.fields {
        let full = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        if !known.contains(&name.as_str()) {
            if !out.contains(&full) {
                out.push(full);
            }
        } else if let Some(inner) = value.as_message() {
            unimplemented(inner, &full, out);
        }
    }
}

/// Parses a Triton `config.pbtxt` for the model directory `dir_name`.
pub(super) fn from_pbtxt(
    text: &str,
    dir_name: &str,
    platform: &Platform,
) -> Result<Declared, String> {
    let m = pbtxt::parse(text).map_err(|e| e.to_string())?;
    let mut d = Declared::default();
    unimplemented(&m, "", &mut d.ignored);
    if let Some(n) = m.get("name").and_then(pbtxt::Value::as_str)
        && n != dir_name
    {
        return Err(format!(
            "name '{n}' does not match the directory '{dir_name}'"
        ));
    }
    let declared = m
        .get("backend")
        .or_else(|| m.get("platform"))
        .and_then(pbtxt::Value::as_str)
        .map(str::to_string);
    d.spec.backends = match declared.as_deref() {
        None | Some("") | Some("ensemble") => Vec::new(),
        Some(p) => (platform.triton_backends)(p)
            .ok_or_else(|| format!("platform '{p}' is not supported"))?
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    d.platform = declared;
    let int = |m: &pbtxt::Message, f: &str| -> Result<Option<i64>, String> {
        match m.get(f) {
            None => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("'{f}' must be an integer")),
        }
    };
    let max_batch = int(&m, "max_batch_size")?.unwrap_or(0);
    d.spec.max_batch_size = usize::try_from(max_batch)
        .map_err(|_| format!("max_batch_size {max_batch} is negative"))?;
    let tensors = |field: &str| -> Result<Vec<TensorDecl>, String> {
        m.all(field)
            .map(|v| {
                let t = v
                    .as_message()
                    .ok_or_else(|| format!("'{field}' must be a message"))?;
                let name = t
                    .get("name")
                    .and_then(pbtxt::Value::as_str)
                    .ok_or_else(|| format!("an {field} has no name"))?
                    .to_string();
                let dt = t
                    .get("data_type")
                    .and_then(pbtxt::Value::as_ident)
                    .ok_or_else(|| format!("{field} '{name}' has no data_type"))?;
                let dtype = DType::from_triton_config(dt)
                    .ok_or_else(|| format!("{field} '{name}' has unknown data_type {dt}"))?;
                let mut dims = t
                    .all("dims")
                    .map(|v| {
                        v.as_i64()
                            .ok_or_else(|| format!("{field} '{name}' has a non-integer dim"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                // With max_batch_size > 0, Triton's dims leave out the batch dimension.
                if max_batch > 0 {
                    dims.insert(0, -1);
                }
                Ok(TensorDecl { name, dtype, dims })
            })
            .collect()
    };
    d.inputs = tensors("input")?;
    d.outputs = tensors("output")?;
    if let Some(db) = m.get("dynamic_batching") {
        let db = db
            .as_message()
            .ok_or("'dynamic_batching' must be a message")?;
        let def = BatchingConfig::default();
        let u = |m: &pbtxt::Message, f: &str| -> Result<Option<u64>, String> {
            match m.get(f) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| format!("'{f}' must be a non-negative integer")),
            }
        };
        let policy = db
            .get("default_queue_policy")
            .and_then(pbtxt::Value::as_message);
        let empty = pbtxt::Message::default();
        let policy = policy.unwrap_or(&empty);
        d.spec.batching = Some(BatchingConfig {
            max_queue_delay: u(db, "max_queue_delay_microseconds")?
                .map(Duration::from_micros)
                .unwrap_or(def.max_queue_delay),
            preferred_batch_sizes: db
                .all("preferred_batch_size")
                .map(|v| {
                    v.as_u64().map(|p| p as usize).ok_or_else(|| {
                        "preferred_batch_size must be a positive integer".to_string()
                    })
                })
                .collect::<Result<_, _>>()?,
            // Triton: 0 means unbounded; keep the runtime's bound instead.
            max_queue_size: u(policy, "max_queue_size")?
                .filter(|&q| q > 0)
                .map(|q| q as usize)
                .unwrap_or(def.max_queue_size),
            default_queue_timeout: u(policy, "default_timeout_microseconds")?
                .filter(|&t| t > 0)
                .map(Duration::from_micros),
            priority_levels: u(db, "priority_levels")?
                .map(|p| p as u32)
                .unwrap_or(def.priority_levels),
            default_priority: u(db, "default_priority_level")?
                .filter(|&p| p > 0)
                .map(|p| p as u32)
                .unwrap_or(def.default_priority),
            // No Triton equivalent; config.toml only.
            pad_to_preferred: false,
        });
    }
    let mut workers = 0usize;
    for g in m.all("instance_group") {
        let g = g.as_message().ok_or("'instance_group' must be a message")?;
        workers += int(g, "count")?.unwrap_or(1).max(0) as usize;
        match g.get("kind").and_then(pbtxt::Value::as_ident) {
            Some("KIND_GPU") => {
                d.spec.load.device = platform.gpu_device;
                d.device_set = true;
            }
            Some("KIND_CPU") => {
                d.spec.load.device = DeviceKind::Cpu;
                d.device_set = true;
            }
            _ => {}
        }
    }
    d.spec.workers = workers.max(1);
    if let Some(p) = m.get("version_policy") {
        d.version_policy = pbtxt_policy(p)?;
    }
    if d.platform.as_deref() == Some("ensemble") || m.get("ensemble_scheduling").is_some() {
        let es = m
            .get("ensemble_scheduling")
            .and_then(pbtxt::Value::as_message)
            .ok_or("an ensemble needs ensemble_scheduling { step [ ... ] }")?;
        d.pipeline = Some(
            es.all("step")
                .map(pbtxt_step)
                .collect::<Result<Vec<_>, _>>()?,
        );
    }
    if let Some(sb) = m.get("sequence_batching") {
        d.spec.sequence = Some(pbtxt_sequence(sb, max_batch > 0)?);
    }
    // Not in Triton's schema: pomme's per-model budget and routing, also
    // accepted in a pbtxt as `parameters { key: "memory_budget_mb" value {
    // string_value: "64" } }` and `parameters { key: "routing" value {
    // string_value: "auto" } }`; `image_layout` (a Core ML option:
    // `nchw` image tensors) goes to the backend's options like config.toml's
    // `[extra]`.
    let (mut idle_after, mut reload_on_request) = (None, false);
    for p in m.all("parameters") {
        let p = p.as_message().ok_or("'parameters' must be a message")?;
        let key = p.get("key").and_then(pbtxt::Value::as_str);
        if !matches!(
            key,
            Some(
                "memory_budget_mb"
                    | "routing"
                    | "unload_after_idle"
                    | "reload_on_request"
                    | "max_sequences"
                    | "image_layout"
            )
        ) {
            continue;
        }
        let key = key.expect("matched");
        let v = p
            .get("value")
            .and_then(pbtxt::Value::as_message)
            .and_then(|v| v.get("string_value"))
            .and_then(pbtxt::Value::as_str)
            .ok_or_else(|| format!("parameter {key} needs value {{ string_value: \"...\" }}"))?;
        if key == "routing" {
            d.routing = ModelRouting::from_parameter(v)?;
        } else if key == "max_sequences" {
            let n: usize =
                v.trim().parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("parameter max_sequences '{v}' is not a positive number")
                })?;
            d.spec
                .sequence
                .get_or_insert_with(SequenceConfig::default)
                .max_sequences = n;
        } else if key == "image_layout" {
            d.spec.load.extra.insert(key.into(), v.trim().into());
        } else if key == "unload_after_idle" {
            idle_after = Some(v.to_string());
        } else if key == "reload_on_request" {
            reload_on_request = match v.trim() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(format!(
                        "parameter reload_on_request '{other}' is not true or false"
                    ));
                }
            };
        } else {
            d.memory_budget_mb = Some(
                v.trim()
                    .parse()
                    .map_err(|_| format!("parameter memory_budget_mb '{v}' is not a number"))?,
            );
        }
    }
    d.idle = super::toml::idle_policy(idle_after.as_deref(), reload_on_request)?;
    if let Some(rc) = m.get("response_cache") {
        let rc = rc
            .as_message()
            .ok_or("'response_cache' must be a message")?;
        d.spec.response_cache = match rc.get("enable") {
            None => false,
            Some(v) => v
                .as_bool()
                .ok_or("response_cache enable must be true or false")?,
        };
    }
    d.spec.warmup = m
        .all("model_warmup")
        .map(pbtxt_warmup)
        .collect::<Result<_, _>>()?;
    check_batching(&d.spec)?;
    Ok(d)
}

/// One `ensemble_scheduling` step: `model_version` -1 (or absent) is the newest.
fn pbtxt_step(v: &pbtxt::Value) -> Result<PipelineStep, String> {
    let st = v.as_message().ok_or("an ensemble step must be a message")?;
    let model = st
        .get("model_name")
        .and_then(pbtxt::Value::as_str)
        .ok_or("an ensemble step has no model_name")?
        .to_string();
    let version = match st.get("model_version").map(|v| v.as_i64()) {
        None | Some(Some(-1)) => None,
        Some(Some(v)) if v > 0 => Some(v as u64),
        Some(_) => {
            return Err(format!(
                "ensemble step '{model}': model_version must be -1 or a version number"
            ));
        }
    };
    let map = |field: &str| -> Result<Vec<(String, String)>, String> {
        st.all(field)
            .map(|e| {
                let e = e
                    .as_message()
                    .ok_or_else(|| format!("ensemble step '{model}': {field} must be a message"))?;
                let get = |k: &str| {
                    e.get(k)
                        .and_then(pbtxt::Value::as_str)
                        .map(str::to_string)
                        .ok_or_else(|| format!("ensemble step '{model}': {field} needs {k}"))
                };
                Ok((get("key")?, get("value")?))
            })
            .collect()
    };
    Ok(PipelineStep {
        inputs: map("input_map")?,
        outputs: map("output_map")?,
        model,
        version,
    })
}

/// Triton's `sequence_batching` with implicit `state` (initial state: zeros).
fn pbtxt_sequence(v: &pbtxt::Value, batching: bool) -> Result<SequenceConfig, String> {
    let sb = v
        .as_message()
        .ok_or("'sequence_batching' must be a message")?;
    let mut cfg = SequenceConfig::default();
    if let Some(us) = sb.get("max_sequence_idle_microseconds") {
        let us = us
            .as_u64()
            .ok_or("max_sequence_idle_microseconds must be a non-negative integer")?;
        // Triton: 0 means its default (1 s); pomme keeps its own default.
        if us > 0 {
            cfg.idle_timeout = Duration::from_micros(us);
        }
    }
    for st in sb.all("state") {
        let st = st
            .as_message()
            .ok_or("sequence_batching state must be a message")?;
        let field = |f: &str| {
            st.get(f)
                .and_then(pbtxt::Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("sequence_batching state needs {f}"))
        };
        let (input, output) = (field("input_name")?, field("output_name")?);
        let dt = st
            .get("data_type")
            .and_then(pbtxt::Value::as_ident)
            .ok_or_else(|| format!("state '{input}' has no data_type"))?;
        let dtype = DType::from_triton_config(dt)
            .ok_or_else(|| format!("state '{input}' has unknown data_type {dt}"))?;
        let dims = st
            .all("dims")
            .map(|d| {
                d.as_i64()
                    .and_then(|d| usize::try_from(d).ok())
                    .ok_or_else(|| {
                        format!("state '{input}': dims must be fixed (non-negative) for the zero initial state")
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let _ = batching; // the batch dim is matched against the model's rank at load
        cfg.states.push(StateDecl {
            input,
            output,
            dtype,
            dims,
        });
    }
    Ok(cfg)
}

/// One `model_warmup` entry. Files are relative to the model's `warmup/`
/// directory (resolved by the caller, as Triton does).
fn pbtxt_warmup(v: &pbtxt::Value) -> Result<WarmupSample, String> {
    let w = v.as_message().ok_or("'model_warmup' must be a message")?;
    let name = w
        .get("name")
        .and_then(pbtxt::Value::as_str)
        .ok_or("a model_warmup has no name")?
        .to_string();
    let uint = |m: &pbtxt::Message, f: &str| -> Result<Option<u64>, String> {
        m.get(f)
            .map(|v| {
                v.as_u64().ok_or_else(|| {
                    format!("model_warmup '{name}': '{f}' must be a non-negative integer")
                })
            })
            .transpose()
    };
    let batch_size = uint(w, "batch_size")?.unwrap_or(1).max(1) as usize;
    // Triton: 0 (the default) runs the sample once.
    let count = uint(w, "count")?.unwrap_or(1).max(1) as usize;
    let mut inputs = Vec::new();
    for i in w.all("inputs") {
        let i = i
            .as_message()
            .ok_or_else(|| format!("model_warmup '{name}': 'inputs' must be a message"))?;
        let key = i
            .get("key")
            .and_then(pbtxt::Value::as_str)
            .ok_or_else(|| format!("model_warmup '{name}': an input has no key"))?
            .to_string();
        let value = i
            .get("value")
            .and_then(pbtxt::Value::as_message)
            .ok_or_else(|| format!("model_warmup '{name}': input '{key}' has no value"))?;
        let what = |msg: &str| format!("model_warmup '{name}' input '{key}': {msg}");
        let dtype = match value.get("data_type").and_then(pbtxt::Value::as_ident) {
            None => None,
            Some(dt) => Some(
                DType::from_triton_config(dt)
                    .ok_or_else(|| what(&format!("unknown data_type {dt}")))?,
            ),
        };
        let dims = value
            .all("dims")
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| what("dims must be non-negative integers"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let flag = |f: &str| value.get(f).and_then(pbtxt::Value::as_bool) == Some(true);
        let file = value.get("input_data_file").and_then(pbtxt::Value::as_str);
        let data = match (flag("zero_data"), flag("random_data"), file) {
            (true, false, None) => WarmupData::Zero,
            (false, true, None) => WarmupData::Random,
            (false, false, Some(f)) => WarmupData::File(f.into()),
            _ => {
                return Err(what(
                    "set exactly one of zero_data: true, random_data: true, input_data_file",
                ));
            }
        };
        inputs.push((
            key,
            WarmupInput {
                dims: (!dims.is_empty()).then_some(dims),
                dtype,
                data,
            },
        ));
    }
    Ok(WarmupSample {
        name,
        batch_size,
        count,
        inputs,
    })
}

/// Triton's `version_policy: { latest { num_versions: N } }`, `{ all {} }`
/// or `{ specific { versions: [..] } }`.
fn pbtxt_policy(v: &pbtxt::Value) -> Result<VersionPolicy, String> {
    let p = v.as_message().ok_or("'version_policy' must be a message")?;
    let [(kind, body)] = p.fields.as_slice() else {
        return Err("version_policy must hold exactly one of latest, all, specific".into());
    };
    let body = body
        .as_message()
        .ok_or_else(|| format!("version_policy {kind} must be a message"))?;
    match kind.as_str() {
        "latest" => Ok(VersionPolicy::Latest(
            body.get("num_versions")
                .map(|n| {
                    n.as_u64()
                        .ok_or("version_policy latest num_versions must be a non-negative integer")
                })
                .transpose()?
                .unwrap_or(1),
        )),
        "all" => Ok(VersionPolicy::All),
        "specific" => Ok(VersionPolicy::Specific(
            body.all("versions")
                .map(|n| {
                    n.as_u64()
                        .ok_or("version_policy specific versions must be non-negative integers")
                })
                .collect::<Result<_, _>>()?,
        )),
        other => Err(format!(
            "version_policy '{other}' is not one of latest, all, specific"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load_model, model, platform};
    use super::*;
    use proptest::prelude::*;

    fn from_pbtxt(text: &str, dir_name: &str) -> Result<Declared, String> {
        super::from_pbtxt(text, dir_name, &platform())
    }

    #[test]
    fn unimplemented_fields_are_named() {
        let d = from_pbtxt(
            r#"name: "m"
backend: "tract"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
dynamic_batching { max_queue_delay_microseconds: 100 preserve_ordering: true }
model_warmup [ { name: "w" batch_size: 1 } ]
response_cache { enable: true }
instance_group [ { count: 1 kind: KIND_CPU gpus: [ 0 ] } ]
version_policy: { specific: { versions: [1] } }
"#,
            "m",
        )
        .unwrap();
        assert_eq!(
            d.ignored,
            [
                "input.reshape",
                "dynamic_batching.preserve_ordering",
                "instance_group.gpus"
            ]
        );
        let plain = from_pbtxt("name: \"m\"\nbackend: \"tract\"\n", "m").unwrap();
        assert!(plain.ignored.is_empty());
    }

    #[test]
    fn reads_ensemble_scheduling() {
        let d = from_pbtxt(
            r#"name: "pipe"
platform: "ensemble"
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ 4 ] } ]
ensemble_scheduling {
  step [
    { model_name: "a" model_version: -1 input_map { key: "x" value: "IN" } output_map { key: "y" value: "MID" } },
    { model_name: "b" model_version: 2 input_map { key: "x" value: "MID" } output_map { key: "y" value: "OUT" } }
  ]
}
"#,
            "pipe",
        )
        .unwrap();
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let steps = d.pipeline.unwrap();
        assert_eq!(steps.len(), 2);
        assert_eq!((steps[0].model.as_str(), steps[0].version), ("a", None));
        assert_eq!(steps[1].version, Some(2));
        assert_eq!(steps[1].inputs, [("x".to_string(), "MID".to_string())]);
        let e = from_pbtxt("name: \"p\"\nplatform: \"ensemble\"\n", "p").unwrap_err();
        assert!(e.contains("ensemble_scheduling"), "{e}");
    }

    #[test]
    fn reads_sequence_batching_state() {
        let d = from_pbtxt(
            r#"name: "m"
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 2000000
  state [ { input_name: "h_in" output_name: "h_out" data_type: TYPE_FP32 dims: [ 2, 8 ] } ]
}
parameters { key: "max_sequences" value { string_value: "16" } }
"#,
            "m",
        )
        .unwrap();
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let seq = d.spec.sequence.unwrap();
        assert_eq!(seq.max_sequences, 16);
        assert_eq!(seq.idle_timeout, Duration::from_secs(2));
        assert_eq!(
            seq.states,
            [StateDecl {
                input: "h_in".into(),
                output: "h_out".into(),
                dtype: DType::F32,
                dims: vec![2, 8]
            }]
        );
        let e = from_pbtxt(
            r#"name: "m"
sequence_batching { state [ { input_name: "h" output_name: "o" data_type: TYPE_FP32 dims: [ -1 ] } ] }"#,
            "m",
        )
        .unwrap_err();
        assert!(e.contains("dims must be fixed"), "{e}");
    }

    #[test]
    fn image_layout_parameter_reaches_the_backend_options() {
        let d = from_pbtxt(
            "platform: \"coreml\"\nparameters { key: \"image_layout\" value { string_value: \" nchw \" } }\n",
            "m",
        )
        .unwrap();
        assert_eq!(d.spec.load.extra["image_layout"], "nchw");
        let plain = from_pbtxt("platform: \"coreml\"\n", "m").unwrap();
        assert!(!plain.spec.load.extra.contains_key("image_layout"));
    }

    #[test]
    fn reads_model_warmup() {
        let d = from_pbtxt(
            r#"name: "m"
max_batch_size: 8
model_warmup [
  {
    name: "zeros"
    batch_size: 8
    count: 2
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } }
  },
  {
    name: "file"
    inputs [
      { key: "x" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "x.bin" } },
      { key: "y" value: { data_type: TYPE_INT64 random_data: true } }
    ]
  }
]
"#,
            "m",
        )
        .unwrap();
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let w = &d.spec.warmup;
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].name.as_str(), w[0].batch_size, w[0].count),
            ("zeros", 8, 2)
        );
        assert_eq!(w[0].inputs[0].1.dims, Some(vec![16]));
        assert_eq!(w[0].inputs[0].1.dtype, Some(DType::F32));
        assert_eq!(w[0].inputs[0].1.data, WarmupData::Zero);
        assert_eq!((w[1].batch_size, w[1].count), (1, 1));
        assert_eq!(w[1].inputs[0].1.data, WarmupData::File("x.bin".into()));
        assert_eq!(w[1].inputs[1].1.data, WarmupData::Random);
        assert_eq!(w[1].inputs[1].1.dims, None);
        let e = from_pbtxt(
            r#"name: "m"
model_warmup [ { name: "w" inputs { key: "x" value: { data_type: TYPE_FP32 zero_data: true random_data: true } } } ]"#,
            "m",
        )
        .unwrap_err();
        assert!(
            e.contains("model_warmup 'w' input 'x'") && e.contains("exactly one"),
            "{e}"
        );
    }

    #[test]
    fn reads_triton_pbtxt() {
        let tmp = tempfile::tempdir().unwrap();
        model(
            tmp.path(),
            "resnet",
            1,
            Some((
                "config.pbtxt",
                r#"name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 16
input [ { name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] } ]
output [ { name: "probs" data_type: TYPE_FP32 dims: [1000] } ]
dynamic_batching { preferred_batch_size: [8, 16] max_queue_delay_microseconds: 100
  default_queue_policy { max_queue_size: 32 } priority_levels: 3 default_priority_level: 2 }
instance_group [ { count: 2 kind: KIND_CPU } ]
optimization { graph { level: 1 } }"#,
            )),
        );
        let m = load_model(tmp.path(), "resnet").unwrap();
        assert_eq!(m.spec.backends, vec!["ort", "tract"]);
        assert_eq!(m.spec.max_batch_size, 16);
        assert_eq!(m.spec.workers, 2);
        assert_eq!(m.inputs[0].dims, vec![-1, 3, 224, 224]);
        assert_eq!(m.outputs[0].dtype, DType::F32);
        let b = m.spec.batching.unwrap();
        assert_eq!(b.max_queue_size, 32);
        assert_eq!(b.priority_levels, 3);
        assert_eq!(b.default_priority, 2);
        assert_eq!(m.platform.as_deref(), Some("onnxruntime_onnx"));
    }

    proptest! {
        #[test]
        fn pbtxt_configs_never_panic(s in "\\PC{0,120}") {
            let _ = from_pbtxt(&s, "m");
        }
    }
}
