//! The machine under the server: platform telemetry as Prometheus gauges
//! (`pomme_node_*`), and thermal-aware admission fed from the same readings.
//!
//! The server does not name a platform: the caller hands in a
//! [`TelemetrySource`] returning the telemetry snapshot as JSON (the CLI passes
//! `pomme_backends::telemetry::collect`: chip,
//! memory, thermal state and low-power mode, Metal device and working set,
//! Neural Engine on macOS; CPU, memory, thermal zones and `nvidia-smi` GPUs on
//! Linux). Readings are taken on a blocking thread every `interval` (reading
//! them may run `nvidia-smi`, far too slow to do per scrape).
//!
//! Thermal states map to [`ThermalLevel`]; with a [`ThermalPolicy`] the
//! runtime's concurrency limit follows them through a [`ThermalGovernor`]
//! (lowered at `serious` / `critical`, restored once nominal). Linux reports no
//! thermal state (only zone temperatures), so there the governor never acts.

use pomme_runtime::{Runtime, ThermalGovernor, ThermalLevel, ThermalPolicy, ThermalSource};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// Returns the current telemetry snapshot as JSON (`None`: not available).
pub type TelemetrySource = Arc<dyn Fn() -> Option<Value> + Send + Sync>;

type Labels = Vec<(String, String)>;
type F64Gauge = Gauge<f64, AtomicU64>;

/// The `pomme_node_*` gauge families.
#[derive(Clone, Default)]
pub struct NodeGauges {
    info: Family<Labels, Gauge>,
    cpu_cores: Gauge,
    memory_total: Gauge,
    memory_available: Gauge,
    thermal_state: Gauge,
    thermal_zone: Family<Labels, F64Gauge>,
    low_power: Gauge,
    gpu_memory: Family<Labels, Gauge>,
    gpu_working_set: Family<Labels, Gauge>,
    gpu_temperature: Family<Labels, F64Gauge>,
    gpu_utilization: Family<Labels, F64Gauge>,
    ane_available: Gauge,
}

impl NodeGauges {
    /// Registers the families in the runtime's registry.
    pub fn register(runtime: &Runtime) -> NodeGauges {
        let g = NodeGauges::default();
        runtime.metrics().with_registry(|r| {
            let r = r.sub_registry_with_prefix("node");
            r.register(
                "info",
                "Always 1; labels: os, os_version, cpu_model",
                g.info.clone(),
            );
            r.register("cpu_cores", "Logical CPUs", g.cpu_cores.clone());
            r.register(
                "memory_total_bytes",
                "Physical memory",
                g.memory_total.clone(),
            );
            r.register(
                "memory_available_bytes",
                "Memory available (Linux MemAvailable)",
                g.memory_available.clone(),
            );
            r.register(
                "thermal_state",
                "0 nominal, 1 fair, 2 serious, 3 critical, -1 not reported",
                g.thermal_state.clone(),
            );
            r.register(
                "thermal_zone_celsius",
                "Temperature per thermal zone",
                g.thermal_zone.clone(),
            );
            r.register(
                "low_power_mode",
                "1 when macOS Low Power Mode is on, -1 not reported",
                g.low_power.clone(),
            );
            r.register(
                "gpu_memory_total_bytes",
                "GPU memory (unified memory on Apple silicon)",
                g.gpu_memory.clone(),
            );
            r.register(
                "gpu_recommended_working_set_bytes",
                "Metal recommendedMaxWorkingSetSize",
                g.gpu_working_set.clone(),
            );
            r.register(
                "gpu_temperature_celsius",
                "GPU temperature",
                g.gpu_temperature.clone(),
            );
            r.register(
                "gpu_utilization_ratio",
                "GPU busy fraction",
                g.gpu_utilization.clone(),
            );
            r.register(
                "neural_engine_available",
                "1 when Core ML lists a Neural Engine, 0 when not, -1 unknown",
                g.ane_available.clone(),
            );
        });
        g
    }

    /// Sets every gauge from a telemetry snapshot; returns the thermal level
    /// it reports (`None` when the platform reports none).
    pub fn update(&self, t: &Value) -> Option<ThermalLevel> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        self.info.clear();
        self.info
            .get_or_create(&vec![
                ("os".into(), s(t, "os")),
                ("os_version".into(), s(t, "os_version")),
                ("cpu_model".into(), s(t, "cpu_model")),
            ])
            .set(1);
        self.cpu_cores.set(u(t, "cpu_cores").unwrap_or(0) as i64);
        let set_opt = |g: &Gauge, v: Option<u64>| g.set(v.map_or(-1, |v| v as i64));
        set_opt(&self.memory_total, u(t, "memory_total_bytes"));
        set_opt(&self.memory_available, u(t, "memory_available_bytes"));
        let level = thermal_level(&s(t, "thermal_state"));
        self.thermal_state.set(level.map_or(-1, |l| l as i64));
        for z in t
            .get("thermal_zones")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(c) = f(z, "celsius") {
                self.thermal_zone
                    .get_or_create(&vec![("zone".into(), s(z, "name"))])
                    .set(c);
            }
        }
        self.low_power.set(
            t.get("low_power_mode")
                .and_then(Value::as_bool)
                .map_or(-1, i64::from),
        );
        for gpu in t
            .get("gpus")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let l: Labels = vec![("gpu".into(), s(gpu, "name"))];
            if let Some(m) = u(gpu, "memory_total_bytes") {
                self.gpu_memory.get_or_create(&l).set(m as i64);
            }
            if let Some(w) = u(gpu, "recommended_working_set_bytes") {
                self.gpu_working_set.get_or_create(&l).set(w as i64);
            }
            if let Some(c) = f(gpu, "temperature_celsius") {
                self.gpu_temperature.get_or_create(&l).set(c);
            }
            if let Some(p) = f(gpu, "utilization_percent") {
                self.gpu_utilization.get_or_create(&l).set(p / 100.0);
            }
        }
        self.ane_available.set(
            t.get("ane_available")
                .and_then(Value::as_bool)
                .map_or(-1, i64::from),
        );
        level
    }
}

/// macOS `ProcessInfo.thermalState` names → levels; anything else (Linux's
/// `unknown`) → `None`.
pub fn thermal_level(state: &str) -> Option<ThermalLevel> {
    match state {
        "nominal" => Some(ThermalLevel::Nominal),
        "fair" => Some(ThermalLevel::Fair),
        "serious" => Some(ThermalLevel::Serious),
        "critical" => Some(ThermalLevel::Critical),
        _ => None,
    }
}

/// The latest thermal reading, as the governor's source.
#[derive(Default)]
struct LatestLevel(AtomicU8);

impl ThermalSource for LatestLevel {
    fn level(&self) -> ThermalLevel {
        match self.0.load(Ordering::Relaxed) {
            1 => ThermalLevel::Fair,
            2 => ThermalLevel::Serious,
            3 => ThermalLevel::Critical,
            _ => ThermalLevel::Nominal,
        }
    }
}

/// Registers the gauges and refreshes them every `interval` on the current
/// tokio runtime; with `policy`, also governs the runtime's concurrency.
pub fn spawn(
    runtime: &Runtime,
    source: TelemetrySource,
    interval: Duration,
    policy: Option<ThermalPolicy>,
) -> tokio::task::JoinHandle<()> {
    let node = Node::new(runtime, policy);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let src = source.clone();
            if let Ok(Some(snapshot)) = tokio::task::spawn_blocking(move || src()).await {
                node.apply(&snapshot);
            }
        }
    })
}

/// Gauges plus the optional governor: what one reading updates.
struct Node {
    gauges: NodeGauges,
    latest: Arc<LatestLevel>,
    governor: Option<ThermalGovernor>,
}

impl Node {
    fn new(runtime: &Runtime, policy: Option<ThermalPolicy>) -> Node {
        let latest = Arc::new(LatestLevel::default());
        Node {
            gauges: NodeGauges::register(runtime),
            governor: policy
                .map(|p| ThermalGovernor::new(runtime.admission().clone(), p, latest.clone())),
            latest,
        }
    }

    fn apply(&self, snapshot: &Value) {
        let level = self.gauges.update(snapshot);
        // No reported state counts as nominal: never throttle on missing data.
        self.latest
            .0
            .store(level.map_or(0, |l| l as u8), Ordering::Relaxed);
        if let Some(g) = &self.governor {
            g.tick();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_test_support::fake::FakeBackend;
    use serde_json::json;

    fn runtime() -> Runtime {
        Runtime::builder()
            .max_concurrency(8)
            .backend(Arc::new(FakeBackend::new(4)))
            .build()
            .unwrap()
    }

    #[test]
    fn gauges_follow_a_linux_snapshot() {
        let rt = runtime();
        let g = NodeGauges::register(&rt);
        let level = g.update(&json!({
            "os": "linux", "os_version": "6.1", "cpu_model": "AMD EPYC", "cpu_cores": 2,
            "memory_total_bytes": 25_000_000_000u64, "memory_available_bytes": 20_000_000_000u64,
            "thermal_state": "unknown",
            "thermal_zones": [{"name": "x86_pkg_temp", "celsius": 41.5}],
            "low_power_mode": null,
            "gpus": [{"name": "NVIDIA H100", "memory_total_bytes": 85_000_000_000u64,
                      "temperature_celsius": 35.0, "utilization_percent": 12.0}],
            "ane_available": false
        }));
        assert_eq!(level, None);
        let text = rt.encode_metrics();
        for needle in [
            "pomme_node_cpu_cores 2",
            "pomme_node_memory_total_bytes 25000000000",
            "pomme_node_thermal_state -1",
            "pomme_node_thermal_zone_celsius{zone=\"x86_pkg_temp\"} 41.5",
            "pomme_node_gpu_memory_total_bytes{gpu=\"NVIDIA H100\"} 85000000000",
            "pomme_node_gpu_utilization_ratio{gpu=\"NVIDIA H100\"} 0.12",
            "pomme_node_neural_engine_available 0",
            "pomme_node_low_power_mode -1",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn serious_thermal_state_halves_concurrency_and_nominal_restores_it() {
        let rt = runtime();
        let node = Node::new(&rt, Some(ThermalPolicy::default()));
        let snap = |state: &str| json!({"os": "macos", "cpu_cores": 8, "thermal_state": state});
        node.apply(&snap("fair"));
        assert_eq!(rt.admission().max_concurrency(), 8);
        node.apply(&snap("serious"));
        assert_eq!(rt.admission().max_concurrency(), 4);
        assert!(rt.encode_metrics().contains("pomme_node_thermal_state 2"));
        node.apply(&snap("critical"));
        assert_eq!(rt.admission().max_concurrency(), 2);
        node.apply(&snap("nominal"));
        assert_eq!(rt.admission().max_concurrency(), 8);
        // Linux: no state reported → never throttled.
        node.apply(&snap("unknown"));
        assert_eq!(rt.admission().max_concurrency(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_loop_reads_the_source() {
        let rt = runtime();
        let source: TelemetrySource = Arc::new(|| Some(json!({"os": "linux", "cpu_cores": 3})));
        let h = spawn(&rt, source, Duration::from_millis(5), None);
        // A deadline, not a fixed sleep: poll until the gauge appears.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !rt.encode_metrics().contains("pomme_node_cpu_cores 3") {
            assert!(tokio::time::Instant::now() < deadline, "gauge never set");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        h.abort();
    }
}
