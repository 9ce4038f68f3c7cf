//! Prometheus metrics, all named here (prefix `pomme_`).
//!
//! The mapping to Triton's `nv_inference_*` names is documented in
//! `docs/METRICS.md`. Each loaded model caches its own metric handles
//! ([`ModelMetrics`]) so the hot path never hashes label sets.

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ModelLabels {
    pub model: String,
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    pub model: String,
    pub version: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    pub model: String,
    pub version: String,
    pub backend: String,
    pub device: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~40 s
    Histogram::new(exponential_buckets(1e-5, 2.5, 17))
}

fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
}

/// Every metric family the runtime exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    request_success: Family<ModelLabels, Counter>,
    request_failure: Family<FailureLabels, Counter>,
    inference_count: Family<ModelLabels, Counter>,
    execution_count: Family<ModelLabels, Counter>,
    request_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    queue_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    compute_input_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    compute_infer_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    compute_output_duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    batch_size: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pending: Family<ModelLabels, Gauge>,
    model_ready: Family<BackendLabels, Gauge>,
    load_duration: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    warmup_duration: Family<ModelLabels, Gauge<f64, AtomicU64>>,
    placement_op_share: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    placement_cost_share: Family<BackendLabels, Gauge<f64, AtomicU64>>,
    pub(crate) memory_used: Gauge,
    pub(crate) memory_budget: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) max_concurrency: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// A model's cached handles.
#[derive(Clone, Debug)]
pub(crate) struct ModelMetrics {
    pub(crate) success: Counter,
    pub(crate) inferences: Counter,
    pub(crate) executions: Counter,
    pub(crate) request_duration: Histogram,
    pub(crate) queue_duration: Histogram,
    pub(crate) compute_input: Histogram,
    pub(crate) compute_infer: Histogram,
    pub(crate) compute_output: Histogram,
    pub(crate) batch_size: Histogram,
    pub(crate) pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("pomme");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            request_success: Family::default(),
            request_failure: Family::default(),
            inference_count: Family::default(),
            execution_count: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            queue_duration: Family::new_with_constructor(latency_histogram),
            compute_input_duration: Family::new_with_constructor(latency_histogram),
            compute_infer_duration: Family::new_with_constructor(latency_histogram),
            compute_output_duration: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            pending: Family::default(),
            model_ready: Family::default(),
            load_duration: Family::default(),
            warmup_duration: Family::default(),
            placement_op_share: Family::default(),
            placement_cost_share: Family::default(),
            memory_used: Gauge::default(),
            memory_budget: Gauge::default(),
            in_flight: Gauge::default(),
            max_concurrency: Gauge::default(),
        };
        r.register(
            "request_success",
            "Requests that succeeded",
            m.request_success.clone(),
        );
        r.register(
            "request_failure",
            "Requests that failed, by reason",
            m.request_failure.clone(),
        );
        r.register(
            "inference_count",
            "Rows inferred (a batch of n counts n)",
            m.inference_count.clone(),
        );
        r.register(
            "execution_count",
            "Engine executions (batches)",
            m.execution_count.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "End-to-end request time inside the runtime",
            prometheus_client::registry::Unit::Seconds,
            m.request_duration.clone(),
        );
        r.register_with_unit(
            "queue_duration",
            "Time a request waited in the model queue",
            prometheus_client::registry::Unit::Seconds,
            m.queue_duration.clone(),
        );
        r.register_with_unit(
            "compute_input_duration",
            "Time preparing a batch's inputs",
            prometheus_client::registry::Unit::Seconds,
            m.compute_input_duration.clone(),
        );
        r.register_with_unit(
            "compute_infer_duration",
            "Time in the engine per execution",
            prometheus_client::registry::Unit::Seconds,
            m.compute_infer_duration.clone(),
        );
        r.register_with_unit(
            "compute_output_duration",
            "Time splitting outputs and answering",
            prometheus_client::registry::Unit::Seconds,
            m.compute_output_duration.clone(),
        );
        r.register("batch_size", "Rows per execution", m.batch_size.clone());
        r.register(
            "pending_requests",
            "Requests queued, not yet running",
            m.pending.clone(),
        );
        r.register(
            "model_ready",
            "1 when the model version serves",
            m.model_ready.clone(),
        );
        r.register_with_unit(
            "model_load_duration",
            "Time the last load of the model took",
            prometheus_client::registry::Unit::Seconds,
            m.load_duration.clone(),
        );
        r.register_with_unit(
            "model_warmup_duration",
            "Time the last load's warm-up took (padded sizes and model_warmup samples, every worker)",
            prometheus_client::registry::Unit::Seconds,
            m.warmup_duration.clone(),
        );
        r.register(
            "memory_budget_used_bytes",
            "Bytes of the memory budget in use",
            m.memory_used.clone(),
        );
        r.register(
            "memory_budget_bytes",
            "The memory budget (-1: unlimited)",
            m.memory_budget.clone(),
        );
        r.register(
            "requests_in_flight",
            "Admitted requests not yet answered",
            m.in_flight.clone(),
        );
        r.register(
            "max_concurrency",
            "Current admission concurrency limit",
            m.max_concurrency.clone(),
        );
        r.register(
            "placement_op_share",
            "Share of a model's operations the backend planned on a device (Core ML compute plan; device label ane/gpu/cpu)",
            m.placement_op_share.clone(),
        );
        r.register(
            "placement_cost_share",
            "Share of a model's estimated cost planned on a device (Core ML compute plan)",
            m.placement_cost_share.clone(),
        );
        *m.registry.lock() = r;
        m
    }

    /// Exports a backend's placement plan (one series per planned device).
    pub(crate) fn placement(
        &self,
        model: &str,
        version: u64,
        backend: &str,
        shares: &[pomme_core::PlacementShare],
    ) {
        for s in shares {
            let labels = BackendLabels {
                model: model.to_string(),
                version: version.to_string(),
                backend: backend.to_string(),
                device: s.device.clone(),
            };
            self.placement_op_share
                .get_or_create(&labels)
                .set(s.op_share);
            if let Some(c) = s.cost_share {
                self.placement_cost_share.get_or_create(&labels).set(c);
            }
        }
    }

    /// Handles for one model version.
    pub(crate) fn model(&self, name: &str, version: u64) -> ModelMetrics {
        let labels = ModelLabels {
            model: name.to_string(),
            version: version.to_string(),
        };
        ModelMetrics {
            success: self.request_success.get_or_create(&labels).clone(),
            inferences: self.inference_count.get_or_create(&labels).clone(),
            executions: self.execution_count.get_or_create(&labels).clone(),
            request_duration: self.request_duration.get_or_create(&labels).clone(),
            queue_duration: self.queue_duration.get_or_create(&labels).clone(),
            compute_input: self.compute_input_duration.get_or_create(&labels).clone(),
            compute_infer: self.compute_infer_duration.get_or_create(&labels).clone(),
            compute_output: self.compute_output_duration.get_or_create(&labels).clone(),
            batch_size: self.batch_size.get_or_create(&labels).clone(),
            pending: self.pending.get_or_create(&labels).clone(),
        }
    }

    /// Counts a failed request.
    pub(crate) fn failure(&self, model: &str, version: Option<u64>, reason: &str) {
        let labels = FailureLabels {
            model: model.to_string(),
            version: version.map(|v| v.to_string()).unwrap_or_default(),
            reason: reason.to_string(),
        };
        self.request_failure.get_or_create(&labels).inc();
    }

    /// Records a finished load.
    pub(crate) fn loaded(
        &self,
        model: &str,
        version: u64,
        backend: &str,
        device: &str,
        took: Duration,
        ready: bool,
    ) {
        let labels = BackendLabels {
            model: model.to_string(),
            version: version.to_string(),
            backend: backend.to_string(),
            device: device.to_string(),
        };
        self.load_duration
            .get_or_create(&labels)
            .set(took.as_secs_f64());
        self.model_ready.get_or_create(&labels).set(ready as i64);
    }

    /// Records how long a load's warm-up took.
    pub(crate) fn warmed(&self, model: &str, version: u64, took: Duration) {
        self.warmup_duration
            .get_or_create(&ModelLabels {
                model: model.to_string(),
                version: version.to_string(),
            })
            .set(took.as_secs_f64());
    }

    /// Marks a model version as no longer serving.
    pub(crate) fn unloaded(&self, model: &str, version: u64, backend: &str, device: &str) {
        let labels = BackendLabels {
            model: model.to_string(),
            version: version.to_string(),
            backend: backend.to_string(),
            device: device.to_string(),
        };
        self.model_ready.get_or_create(&labels).set(0);
    }

    /// Lets other subsystems (the server, routing) register their own families.
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.lock())
    }

    /// Text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock())
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_exported_per_device() {
        let m = Metrics::new();
        let share =
            |device: &str, op_share: f64, cost_share: Option<f64>| pomme_core::PlacementShare {
                device: device.into(),
                ops: 1,
                op_share,
                cost_share,
            };
        m.placement(
            "enc",
            2,
            "coreml",
            &[
                share("ane", 0.75, Some(0.9)),
                share("gpu", 0.0, Some(0.0)),
                share("cpu", 0.25, Some(0.1)),
            ],
        );
        let text = m.encode();
        for needle in [
            "pomme_placement_op_share{model=\"enc\",version=\"2\",backend=\"coreml\",device=\"ane\"} 0.75",
            "pomme_placement_cost_share{model=\"enc\",version=\"2\",backend=\"coreml\",device=\"cpu\"} 0.1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Backends without a plan export nothing.
        let m = Metrics::new();
        m.placement("m", 1, "tract", &[]);
        assert!(!m.encode().contains("pomme_placement_op_share{"));
    }
}
