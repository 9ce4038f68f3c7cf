//! Triton's protocol extensions as pomme reports them: the model
//! configuration and the statistics. Each is mapped once from the runtime's
//! view into Triton's protobuf messages, which gRPC sends as they are and HTTP
//! renders as Triton's JSON (protobuf JSON names, enums by name), so the two
//! protocols cannot drift apart.
//!
//! A routed model's decision rides along as a JSON value: in the
//! configuration's free-form `parameters` (the only place Triton's schema
//! leaves for it) and, on HTTP, as a `routing` object too; the HTTP
//! statistics add each routed version's live candidate rows.

use crate::kserve::proto;
use crate::repository::{RepoModel, VersionPolicy};
use pomme_core::{DType, DeviceKind};
use pomme_runtime::{ModelStats, ModelView, StatDuration};
use serde_json::{Value, json};

/// A model version's Triton configuration and, for a routed model, its
/// routing report (`routing::report`).
#[derive(Clone, Debug)]
pub struct ModelConfigReport {
    /// The configuration without the routing parameters.
    pub config: proto::ModelConfig,
    pub routing: Option<Value>,
}

impl ModelConfigReport {
    /// Maps what is loaded (`view`) and what the repository declared.
    pub fn new(
        view: &ModelView,
        declared: Option<&RepoModel>,
        routing: Option<Value>,
    ) -> ModelConfigReport {
        let batched = view.max_batch_size > 0;
        // Triton's dims leave out the batch dimension when max_batch_size > 0.
        let dims = |shape: &pomme_core::Shape| -> Vec<i64> {
            let d = shape.to_i64();
            if batched && shape.has_symbolic_batch() {
                d[1..].to_vec()
            } else {
                d
            }
        };
        let input = view
            .signature
            .inputs
            .iter()
            .map(|s| proto::ModelInput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: dims(&s.shape),
                ..Default::default()
            })
            .collect();
        let output = view
            .signature
            .outputs
            .iter()
            .map(|s| proto::ModelOutput {
                name: s.name.clone(),
                data_type: triton_type(s.dtype) as i32,
                dims: dims(&s.shape),
                ..Default::default()
            })
            .collect();
        let sequence = view.stateful.then(|| {
            proto::model_config::SchedulingChoice::SequenceBatching(
                proto::ModelSequenceBatching::default(),
            )
        });
        let scheduling_choice = sequence.or_else(|| {
            view.batching.as_ref().map(|b| {
                proto::model_config::SchedulingChoice::DynamicBatching(
                    proto::ModelDynamicBatching {
                        preferred_batch_size: b
                            .preferred_batch_sizes
                            .iter()
                            .map(|&p| p as i32)
                            .collect(),
                        max_queue_delay_microseconds: b.max_queue_delay.as_micros() as u64,
                        priority_levels: b.priority_levels as u64,
                        default_priority_level: b.default_priority as u64,
                        default_queue_policy: Some(proto::ModelQueuePolicy {
                            max_queue_size: b.max_queue_size as u32,
                            default_timeout_microseconds: b
                                .default_queue_timeout
                                .map(|t| t.as_micros() as u64)
                                .unwrap_or(0),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )
            })
        });
        let kind = match view.device {
            DeviceKind::Cpu => proto::model_instance_group::Kind::Cpu,
            DeviceKind::Auto => proto::model_instance_group::Kind::Auto,
            _ => proto::model_instance_group::Kind::Gpu,
        };
        let config = proto::ModelConfig {
            name: view.name.clone(),
            platform: declared
                .and_then(|d| d.platform.clone())
                .unwrap_or_default(),
            backend: view.backend.clone(),
            version_policy: Some(version_policy(
                declared
                    .map(|d| &d.version_policy)
                    .unwrap_or(&VersionPolicy::default()),
            )),
            max_batch_size: view.max_batch_size as i32,
            input,
            output,
            scheduling_choice,
            instance_group: vec![proto::ModelInstanceGroup {
                name: view.name.clone(),
                kind: kind as i32,
                count: view.workers as i32,
                ..Default::default()
            }],
            response_cache: view
                .response_cache
                .then_some(proto::ModelResponseCache { enable: true }),
            ..Default::default()
        };
        let mut config = config;
        // Class labels (Triton keeps them in a label file; pomme lists them):
        // `<output>.labels`, a JSON array, for outputs that have them.
        for s in &view.signature.outputs {
            if let Some(labels) = &s.labels {
                config.parameters.insert(
                    format!("{}.labels", s.name),
                    proto::ModelParameter {
                        string_value: serde_json::to_string(labels).unwrap_or_default(),
                    },
                );
            }
        }
        ModelConfigReport { config, routing }
    }

    /// gRPC: the configuration, the routing report in Triton's free-form
    /// parameters (`routing_chosen`, and the whole report as `routing`).
    pub fn into_proto(self) -> proto::ModelConfig {
        let mut config = self.config;
        if let Some(r) = &self.routing {
            let p = |v: String| proto::ModelParameter { string_value: v };
            config.parameters.insert(
                "routing_chosen".to_string(),
                p(r["chosen"].as_str().unwrap_or_default().to_string()),
            );
            config
                .parameters
                .insert("routing".to_string(), p(r.to_string()));
        }
        config
    }

    /// HTTP: Triton's JSON of the same configuration, plus the routing
    /// report as a `routing` object.
    pub fn into_json(self) -> Value {
        let routing = self.routing.clone();
        let mut v = config_json(&self.into_proto());
        if let Some(r) = routing {
            v["routing"] = r;
        }
        v
    }
}

/// Triton's JSON rendering of a `ModelConfig` (protobuf JSON names, enums as names).
pub fn config_json(c: &proto::ModelConfig) -> Value {
    use proto::{DataType, model_config::SchedulingChoice, model_instance_group::Kind};
    let dt = |d: i32| {
        DataType::try_from(d)
            .map(|d| d.as_str_name())
            .unwrap_or("TYPE_INVALID")
    };
    let mut v = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({"name": i.name, "data_type": dt(i.data_type), "dims": i.dims})).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({"name": o.name, "data_type": dt(o.data_type), "dims": o.dims})).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "kind": Kind::try_from(g.kind).map(|k| k.as_str_name()).unwrap_or("KIND_AUTO"),
            "count": g.count,
        })).collect::<Vec<_>>(),
    });
    if !c.parameters.is_empty() {
        v["parameters"] = c
            .parameters
            .iter()
            .map(|(k, p)| (k.clone(), json!({"string_value": p.string_value})))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(p) = c
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        use proto::model_version_policy::PolicyChoice;
        v["version_policy"] = match p {
            PolicyChoice::Latest(l) => json!({"latest": {"num_versions": l.num_versions}}),
            PolicyChoice::All(_) => json!({"all": {}}),
            PolicyChoice::Specific(s) => json!({"specific": {"versions": s.versions}}),
        };
    }
    if let Some(rc) = &c.response_cache {
        v["response_cache"] = json!({"enable": rc.enable});
    }
    if let Some(SchedulingChoice::SequenceBatching(s)) = &c.scheduling_choice {
        v["sequence_batching"] =
            json!({"max_sequence_idle_microseconds": s.max_sequence_idle_microseconds});
    }
    if let Some(SchedulingChoice::DynamicBatching(b)) = &c.scheduling_choice {
        let q = b.default_queue_policy.unwrap_or_default();
        v["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_size,
            "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
            "priority_levels": b.priority_levels,
            "default_priority_level": b.default_priority_level,
            "default_queue_policy": {
                "max_queue_size": q.max_queue_size,
                "default_timeout_microseconds": q.default_timeout_microseconds,
            },
        });
    }
    v
}

/// Statistics of model versions and, for each routed one, its live
/// candidate rows (`routing::live_report`).
#[derive(Clone, Debug)]
pub struct StatsReport {
    pub models: Vec<proto::ModelStatistics>,
    /// One entry per model, `None` where it is not routed.
    pub routing: Vec<Option<Value>>,
}

impl StatsReport {
    /// Maps the runtime's statistics; `routing` gives a version's live rows.
    pub fn new(
        stats: &[ModelStats],
        routing: impl Fn(&ModelStats) -> Option<Value>,
    ) -> StatsReport {
        let d = |x: &StatDuration| {
            Some(proto::StatisticDuration {
                count: x.count,
                ns: x.ns,
            })
        };
        let models = stats
            .iter()
            .map(|s| proto::ModelStatistics {
                name: s.name.clone(),
                version: s.version.to_string(),
                last_inference: s.last_inference_ms,
                inference_count: s.inference_count,
                execution_count: s.execution_count,
                inference_stats: Some(proto::InferStatistics {
                    success: d(&s.success),
                    fail: d(&s.fail),
                    queue: d(&s.queue),
                    compute_input: d(&s.compute_input),
                    compute_infer: d(&s.compute_infer),
                    compute_output: d(&s.compute_output),
                    cache_hit: d(&s.cache_hit),
                    cache_miss: d(&s.cache_miss),
                }),
                ..Default::default()
            })
            .collect();
        StatsReport {
            models,
            routing: stats.iter().map(routing).collect(),
        }
    }

    /// gRPC: Triton's statistics response.
    pub fn into_proto(self) -> proto::ModelStatisticsResponse {
        proto::ModelStatisticsResponse {
            model_stats: self.models,
        }
    }

    /// HTTP: Triton's statistics JSON, with a `routing` array on each routed version.
    pub fn into_json(self) -> Value {
        let d = |x: &Option<proto::StatisticDuration>| {
            let x = x.unwrap_or_default();
            json!({"count": x.count, "ns": x.ns})
        };
        let rows: Vec<Value> = self
            .models
            .iter()
            .zip(self.routing)
            .map(|(s, routing)| {
                let i = s.inference_stats.unwrap_or_default();
                let mut row = json!({
                    "name": s.name,
                    "version": s.version,
                    "last_inference": s.last_inference,
                    "inference_count": s.inference_count,
                    "execution_count": s.execution_count,
                    "inference_stats": {
                        "success": d(&i.success),
                        "fail": d(&i.fail),
                        "queue": d(&i.queue),
                        "compute_input": d(&i.compute_input),
                        "compute_infer": d(&i.compute_infer),
                        "compute_output": d(&i.compute_output),
                        "cache_hit": d(&i.cache_hit),
                        "cache_miss": d(&i.cache_miss),
                    },
                    // pomme keeps no per-batch-size statistics.
                    "batch_stats": [],
                });
                if let Some(r) = routing {
                    row["routing"] = r;
                }
                row
            })
            .collect();
        json!({ "model_stats": rows })
    }
}

/// Triton's `ModelVersionPolicy` for a repository version policy.
pub fn version_policy(p: &VersionPolicy) -> proto::ModelVersionPolicy {
    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let choice = match p {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest {
            num_versions: u32::try_from(*n).unwrap_or(u32::MAX),
        }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(v) => PolicyChoice::Specific(Specific {
            versions: v
                .iter()
                .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
                .collect(),
        }),
    };
    proto::ModelVersionPolicy {
        policy_choice: Some(choice),
    }
}

/// Triton's `DataType` for a dtype.
pub fn triton_type(d: DType) -> proto::DataType {
    use proto::DataType as T;
    match d {
        DType::Bool => T::TypeBool,
        DType::U8 => T::TypeUint8,
        DType::U16 => T::TypeUint16,
        DType::U32 => T::TypeUint32,
        DType::U64 => T::TypeUint64,
        DType::I8 => T::TypeInt8,
        DType::I16 => T::TypeInt16,
        DType::I32 => T::TypeInt32,
        DType::I64 => T::TypeInt64,
        DType::F16 => T::TypeFp16,
        DType::BF16 => T::TypeBf16,
        DType::F32 => T::TypeFp32,
        DType::F64 => T::TypeFp64,
        DType::Bytes => T::TypeString,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_json_and_proto_come_from_one_mapping() {
        let s = ModelStats {
            name: "m".into(),
            version: 2,
            inference_count: 3,
            ..Default::default()
        };
        let report = StatsReport::new(std::slice::from_ref(&s), |_| Some(json!(["live"])));
        let v = report.clone().into_json();
        let row = &v["model_stats"][0];
        assert_eq!(row["version"], "2");
        assert_eq!(row["inference_count"], 3);
        assert_eq!(
            row["inference_stats"]["cache_hit"],
            json!({"count": 0, "ns": 0})
        );
        assert_eq!(row["routing"], json!(["live"]));
        let p = report.into_proto();
        assert_eq!(p.model_stats[0].inference_count, 3);
        assert_eq!(p.model_stats[0].version, "2");
    }

    #[test]
    fn routing_rides_in_the_parameters_and_the_json() {
        let r = ModelConfigReport {
            config: proto::ModelConfig {
                name: "m".into(),
                ..Default::default()
            },
            routing: Some(json!({"chosen": "ort/cpu", "candidates": []})),
        };
        let p = r.clone().into_proto();
        assert_eq!(p.parameters["routing_chosen"].string_value, "ort/cpu");
        let doc: Value = serde_json::from_str(&p.parameters["routing"].string_value).unwrap();
        assert_eq!(doc["chosen"], "ort/cpu");
        let v = r.into_json();
        assert_eq!(v["routing"]["chosen"], "ort/cpu");
        assert_eq!(v["parameters"]["routing_chosen"]["string_value"], "ort/cpu");
    }
}
