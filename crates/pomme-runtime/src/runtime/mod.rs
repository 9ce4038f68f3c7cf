//! The [`Runtime`] façade and its [`RuntimeBuilder`]: what the CLI, the server
//! and Rust users call. Loading lives in `load.rs`, the request path in
//! `infer.rs`; this file holds the shared state and the read-only views
//! (models, statistics, metrics, health) and shutdown.

mod infer;
mod load;

pub use infer::{InferRequest, InferResponse};

use crate::admission::Admission;
use crate::cache::{CacheMetrics, ResponseCache};
use crate::eviction::{EvictionMetrics, MemoryPolicy};
use crate::metrics::Metrics;
use crate::pool::BufferPool;
use crate::registry::{ModelStatus, ModelView, Registry};
use crate::routing::{Candidate, RouteMetrics, RouteStatus, RoutingDecision};
use crate::stats::{ModelStats, PerformanceSummary, RuntimeTotals};
use pomme_core::{Backend, Error, Result};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    max_concurrency: usize,
    memory_budget: u64,
    default_timeout: Option<Duration>,
    fail_fast: bool,
    backends: Vec<Arc<dyn Backend>>,
    memory_policy: MemoryPolicy,
    automatic: Vec<Candidate>,
    worker_spin: Option<Duration>,
    reply_spin: Option<Duration>,
    response_cache_bytes: u64,
    available_memory: Option<MemoryProbe>,
    memory_reserve: u64,
}

/// Reports the bytes of memory still available to the process (`None`:
/// unknown); see [`RuntimeBuilder::memory_guard`].
pub type MemoryProbe = Arc<dyn Fn() -> Option<u64> + Send + Sync>;

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            max_concurrency: 1024,
            memory_budget: u64::MAX,
            default_timeout: None,
            fail_fast: false,
            backends: Vec::new(),
            memory_policy: MemoryPolicy::Refuse,
            automatic: Vec::new(),
            worker_spin: None,
            reply_spin: None,
            response_cache_bytes: 64 * 1024 * 1024,
            available_memory: None,
            memory_reserve: 0,
        }
    }
}

impl RuntimeBuilder {
    /// Requests admitted at once (queued or running); beyond it, requests wait
    /// until their deadline or, without one, are refused at once.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Memory budget for model weights and activations, in MiB.
    pub fn memory_budget_mb(mut self, mb: u64) -> Self {
        self.memory_budget = mb.saturating_mul(1024 * 1024);
        self
    }

    /// Memory budget in bytes.
    pub fn memory_budget_bytes(mut self, bytes: u64) -> Self {
        self.memory_budget = bytes;
        self
    }

    /// Deadline given to requests that carry none.
    pub fn default_timeout(mut self, d: Duration) -> Self {
        self.default_timeout = Some(d);
        self
    }

    /// Refuse at once (`ResourceLimit`, HTTP 429) when the concurrency limit is
    /// reached, instead of waiting until the request's deadline. Servers want this.
    pub fn fail_fast(mut self, yes: bool) -> Self {
        self.fail_fast = yes;
        self
    }

    /// What a load does when the memory budget is full: refuse (default) or
    /// evict least recently used idle models.
    pub fn memory_policy(mut self, p: MemoryPolicy) -> Self {
        self.memory_policy = p;
        self
    }

    /// The engines this runtime may use, in default preference order.
    pub fn backends(mut self, backends: Vec<Arc<dyn Backend>>) -> Self {
        self.backends = backends;
        self
    }

    /// Adds one engine.
    pub fn backend(mut self, backend: Arc<dyn Backend>) -> Self {
        self.backends.push(backend);
        self
    }

    /// The candidates a routed model tries when neither its routing
    /// configuration nor its spec names any (`routing = "auto"`). The list
    /// names backends, so it comes from the caller (`pomme-backends` has the
    /// platform's); without one, such a load fails with a one-line error.
    pub fn automatic_candidates(mut self, c: Vec<Candidate>) -> Self {
        self.automatic = c;
        self
    }

    /// How long an idle compute worker polls for new work before it parks
    /// (`Duration::ZERO`: park at once). Default 150 µs, off on a single CPU.
    /// Picking up the next request of a busy stream without a futex wake-up
    /// saves a cross-thread hop per request; an idle model costs nothing.
    pub fn worker_spin(mut self, d: Duration) -> Self {
        self.worker_spin = Some(d);
        self
    }

    /// How long a request's task polls for its answer (yielding to other
    /// tasks in between) before it sleeps (`Duration::ZERO`: sleep at once).
    /// Default 20 µs, off on a single CPU. Catching a fast answer on the same
    /// tokio thread saves the worker→tokio wake-up.
    pub fn reply_spin(mut self, d: Duration) -> Self {
        self.reply_spin = Some(d);
        self
    }

    /// The response cache's byte budget, shared by every model whose spec
    /// turns `response_cache` on (default 64 MiB; 0: no cache, and such a
    /// model fails to load).
    pub fn response_cache_mb(mut self, mb: u64) -> Self {
        self.response_cache_bytes = mb.saturating_mul(1024 * 1024);
        self
    }

    /// Refuses a load, with the figures, when the model's files plus
    /// `reserve_mb` exceed what `probe` says is still available, instead of
    /// letting the operating system kill the process mid-load. The probe is
    /// the platform's (`pomme_backends::telemetry::available_memory`).
    pub fn memory_guard(mut self, probe: MemoryProbe, reserve_mb: u64) -> Self {
        self.available_memory = Some(probe);
        self.memory_reserve = reserve_mb.saturating_mul(1024 * 1024);
        self
    }

    pub fn build(self) -> Result<Runtime> {
        if self.backends.is_empty() {
            return Err(Error::Unavailable("no backend given to the runtime".into()));
        }
        let metrics = Metrics::new();
        metrics
            .memory_budget
            .set(if self.memory_budget == u64::MAX {
                -1
            } else {
                self.memory_budget as i64
            });
        let route_metrics = RouteMetrics::register(&metrics);
        let eviction_metrics = EvictionMetrics::register(&metrics);
        let cache =
            (self.response_cache_bytes > 0).then(|| ResponseCache::new(self.response_cache_bytes));
        let cache_metrics = CacheMetrics::register(&metrics, self.response_cache_bytes);
        Ok(Runtime {
            inner: Arc::new(Inner {
                admission: Admission::new(self.max_concurrency, self.memory_budget),
                backends: self.backends,
                default_timeout: self.default_timeout,
                fail_fast: self.fail_fast,
                registry: Registry::default(),
                metrics,
                pool: BufferPool::new(),
                shutting_down: AtomicBool::new(false),
                totals: RuntimeTotals::default(),
                started: Instant::now(),
                route_metrics,
                eviction_metrics,
                memory_policy: self.memory_policy,
                automatic: self.automatic,
                worker_spin: self.worker_spin.unwrap_or_else(|| default_spin(150)),
                reply_spin: self.reply_spin.unwrap_or_else(|| default_spin(20)),
                cache,
                cache_metrics,
                available_memory: self.available_memory,
                memory_reserve: self.memory_reserve,
                pipelines: Default::default(),
                pipeline_failures: Default::default(),
            }),
        })
    }
}

/// `us` microseconds on a multi-core machine; none on a single CPU, where
/// spinning only delays the thread that would produce the work.
fn default_spin(us: u64) -> Duration {
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => Duration::from_micros(us),
        _ => Duration::ZERO,
    }
}

struct Inner {
    backends: Vec<Arc<dyn Backend>>,
    admission: Admission,
    default_timeout: Option<Duration>,
    fail_fast: bool,
    registry: Registry,
    metrics: Metrics,
    pool: Arc<BufferPool>,
    shutting_down: AtomicBool,
    /// Runtime-wide request totals behind [`Runtime::performance_summary`].
    totals: RuntimeTotals,
    started: Instant,
    route_metrics: RouteMetrics,
    eviction_metrics: EvictionMetrics,
    memory_policy: MemoryPolicy,
    automatic: Vec<Candidate>,
    worker_spin: Duration,
    reply_spin: Duration,
    /// `None`: no budget (models asking for it fail to load).
    cache: Option<ResponseCache>,
    cache_metrics: CacheMetrics,
    available_memory: Option<MemoryProbe>,
    memory_reserve: u64,
    /// Pipelines (Triton's ensembles), by name.
    pipelines:
        parking_lot::RwLock<std::collections::BTreeMap<String, Arc<crate::pipeline::Pipeline>>>,
    /// Pipelines whose last load failed, with the reason.
    pipeline_failures: parking_lot::RwLock<std::collections::BTreeMap<String, String>>,
}

/// The inference runtime. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// The engines this runtime knows.
    pub fn backends(&self) -> &[Arc<dyn Backend>] {
        &self.inner.backends
    }

    /// Admission state (limits, in-flight, memory).
    pub fn admission(&self) -> &Admission {
        &self.inner.admission
    }

    /// Every model version known, with its state.
    pub fn models(&self) -> Vec<ModelStatus> {
        let mut all = self.inner.registry.statuses();
        all.extend(self.inner.pipelines.read().values().map(|p| p.status()));
        all.extend(
            self.inner
                .pipeline_failures
                .read()
                .iter()
                .map(|(name, why)| ModelStatus {
                    name: name.clone(),
                    version: 1,
                    state: crate::registry::ModelState::Unavailable(why.clone()),
                    backend: Some("pipeline".into()),
                }),
        );
        all
    }

    pub(crate) fn pipeline_failures(
        &self,
    ) -> &parking_lot::RwLock<std::collections::BTreeMap<String, String>> {
        &self.inner.pipeline_failures
    }

    pub(crate) fn pipelines(
        &self,
    ) -> &parking_lot::RwLock<std::collections::BTreeMap<String, Arc<crate::pipeline::Pipeline>>>
    {
        &self.inner.pipelines
    }

    /// How long each loaded model has been idle: no request queued or
    /// running on any of its versions, and none started since (the least
    /// idle version counts). Models with work in hand are left out.
    pub fn idle_models(&self) -> Vec<(String, Duration)> {
        let now = Instant::now();
        let mut idle: std::collections::BTreeMap<String, Option<Duration>> = Default::default();
        for inst in self.inner.registry.instances() {
            // The registry's reference and this scan's: nothing else holds it.
            let quiet = Arc::strong_count(&inst) <= 2 && inst.queue.is_empty();
            let used = self.inner.started
                + Duration::from_nanos(inst.last_used_ns.load(Ordering::Relaxed));
            let since = now.saturating_duration_since(used);
            let entry = idle.entry(inst.view.name.clone()).or_insert(Some(since));
            *entry = match (*entry, quiet) {
                (Some(d), true) => Some(d.min(since)),
                _ => None,
            };
        }
        idle.into_iter()
            .filter_map(|(name, d)| d.map(|d| (name, d)))
            .collect()
    }

    /// A serving model version (newest when `version` is `None`); a
    /// pipeline is version 1.
    pub fn model(&self, name: &str, version: Option<u64>) -> Result<ModelView> {
        if let Some(p) = self.pipeline(name)
            && version.is_none_or(|v| v == 1)
        {
            return Ok(p.view());
        }
        Ok(self.inner.registry.get(name, version)?.view.clone())
    }

    /// The routing decision and live candidate figures (breakers, calls,
    /// fallbacks) of a routed model version; `None` for a model loaded
    /// without measured routing.
    pub fn routing_status(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<(RoutingDecision, Vec<RouteStatus>)>> {
        Ok(self.inner.registry.get(name, version)?.routing.status())
    }

    /// Statistics of one model (all its versions) or of every model.
    pub fn stats(&self, name: Option<&str>) -> Vec<ModelStats> {
        self.inner
            .registry
            .instances()
            .into_iter()
            .filter(|i| name.is_none_or(|n| n == i.view.name))
            .map(|i| i.counters.snapshot(&i.view.name, i.view.version))
            .chain(
                self.inner
                    .pipelines
                    .read()
                    .values()
                    .filter(|p| name.is_none_or(|n| n == p.spec.name))
                    .map(|p| p.counters.snapshot(&p.spec.name, 1)),
            )
            .collect()
    }

    /// Totals, latency percentiles, throughput and memory since the runtime
    /// started. Computed when asked, from lock-free counters.
    pub fn performance_summary(&self) -> PerformanceSummary {
        self.inner.totals.summary(
            self.inner.started.elapsed(),
            self.inner.admission.memory_used(),
            self.inner.admission.memory_budget(),
        )
    }

    /// Ready: not shutting down (the server adds "configured models loaded").
    pub fn is_ready(&self) -> bool {
        !self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition of every runtime metric.
    pub fn encode_metrics(&self) -> String {
        self.update_memory_gauge();
        self.inner
            .metrics
            .in_flight
            .set(self.inner.admission.in_flight() as i64);
        self.inner
            .metrics
            .max_concurrency
            .set(self.inner.admission.max_concurrency() as i64);
        for inst in self.inner.registry.instances() {
            inst.routing.refresh_gauges();
        }
        self.inner.metrics.encode()
    }

    /// The metrics registry, for other subsystems to add their families.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn update_memory_gauge(&self) {
        self.inner
            .metrics
            .memory_used
            .set(self.inner.admission.memory_used() as i64);
    }

    /// Readiness goes false and new requests are refused with `Unavailable`.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Waits up to `grace` for admitted requests to finish, then stops every
    /// worker. Returns whether everything in flight finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.begin_shutdown();
        let deadline = tokio::time::Instant::now() + grace;
        let drained = loop {
            if self.inner.admission.in_flight() == 0 {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let instances = self.inner.registry.instances();
        for inst in &instances {
            inst.retire();
        }
        let _ = tokio::task::spawn_blocking(move || instances.iter().for_each(|i| i.join())).await;
        drained
    }
}
