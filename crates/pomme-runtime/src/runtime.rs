//! The [`Runtime`] façade: load models, run requests, report health and numbers.

use crate::admission::Admission;
use crate::artifact::detect_artifact;
use crate::eviction::{EvictionMetrics, MemoryPolicy};
use crate::metrics::Metrics;
use crate::pool::BufferPool;
use crate::registry::{Instance, ModelStatus, ModelView, Registry};
use crate::routed::{RouteMetrics, RouteSet, RouteStatus};
use crate::scheduler::{BatchPolicy, ModelQueue, Pending};
use crate::spec::ModelSpec;
use crate::stats::{
    LatencyHistogram, ModelCounters, ModelStats, PerformanceSummary, ThroughputTracker,
};
use crate::worker::{self, WorkerContext};
use parking_lot::Mutex;
use pomme_core::{Backend, DeviceInfo, Error, LoadedModel, Result, Tensor};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// An inference request, as both protocols and library users build it.
#[derive(Clone, Debug, Default)]
pub struct InferRequest {
    pub model: String,
    /// `None`: the newest ready version.
    pub version: Option<u64>,
    /// Caller's request id, echoed back and put in the trace span.
    pub id: Option<String>,
    pub inputs: Vec<(String, Tensor)>,
    /// Outputs to return; `None`: all.
    pub outputs: Option<Vec<String>>,
    /// 1 is the highest priority; `None`: the model's default.
    pub priority: Option<u32>,
    /// Deadline relative to now; `None`: the model's queue timeout or the runtime default.
    pub timeout: Option<Duration>,
}

impl InferRequest {
    /// A request for `model` with named inputs.
    pub fn new(model: impl Into<String>, inputs: Vec<(String, Tensor)>) -> InferRequest {
        InferRequest {
            model: model.into(),
            inputs,
            ..Default::default()
        }
    }
}

/// The answer to an [`InferRequest`].
#[derive(Clone, Debug)]
pub struct InferResponse {
    pub model: String,
    pub version: u64,
    pub id: Option<String>,
    /// Named outputs, in the model's order (filtered by the request's selection).
    pub outputs: Vec<(String, Tensor)>,
}

impl InferResponse {
    /// The output named `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Backends, their devices and the memory budget, for `pomme devices` and health pages.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceStatus {
    pub backends: Vec<BackendStatus>,
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    pub max_concurrency: usize,
    pub in_flight: usize,
}

/// One backend's availability and devices.
#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub name: String,
    pub availability: pomme_core::Availability,
    pub devices: Vec<DeviceInfo>,
}

/// Builds a [`Runtime`].
pub struct RuntimeBuilder {
    max_concurrency: usize,
    memory_budget: u64,
    default_timeout: Option<Duration>,
    fail_fast: bool,
    backends: Vec<Arc<dyn Backend>>,
    memory_policy: MemoryPolicy,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            max_concurrency: 1024,
            memory_budget: u64::MAX,
            default_timeout: None,
            fail_fast: false,
            backends: Vec::new(),
            memory_policy: MemoryPolicy::Refuse,
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
    /// evict least recently used idle models (see [`crate::eviction`]).
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
                latency: LatencyHistogram::default(),
                throughput: ThroughputTracker::default(),
                ok: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                started: Instant::now(),
                route_metrics,
                eviction_metrics,
                memory_policy: self.memory_policy,
            }),
        })
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
    latency: LatencyHistogram,
    throughput: ThroughputTracker,
    ok: AtomicU64,
    failed: AtomicU64,
    started: Instant,
    route_metrics: RouteMetrics,
    eviction_metrics: EvictionMetrics,
    memory_policy: MemoryPolicy,
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

    /// Loads a model on a blocking thread; other models keep serving meanwhile.
    pub async fn load(&self, spec: ModelSpec) -> Result<ModelView> {
        let rt = self.clone();
        spawn_blocking(move || rt.load_blocking(spec, false)).await
    }

    /// Loads a new instance of a model version, replacing the serving one only
    /// when the new one is ready; on failure the old one keeps serving.
    pub async fn reload(&self, spec: ModelSpec) -> Result<ModelView> {
        let rt = self.clone();
        spawn_blocking(move || rt.load_blocking(spec, true)).await
    }

    /// Synchronous [`Runtime::load`], for callers outside async code.
    pub fn load_blocking(&self, spec: ModelSpec, reload: bool) -> Result<ModelView> {
        self.inner.registry.begin_load(&spec, reload)?;
        let started = Instant::now();
        let outcome = self.build_instance(&spec, started);
        let (name, version) = (spec.name.clone(), spec.version);
        match outcome {
            Ok(inst) => {
                let view = inst.view.clone();
                self.inner.metrics.loaded(
                    &name,
                    version,
                    &view.backend,
                    view.device.as_str(),
                    started.elapsed(),
                    true,
                );
                self.inner
                    .metrics
                    .placement(&name, version, &view.backend, &view.placement);
                tracing::info!(model = %name, version, backend = %view.backend, device = %view.device,
                    ms = view.load_ms, memory_bytes = view.memory_bytes, "model loaded");
                if let Some(old) = self.inner.registry.finish_load(&name, version, Ok(inst)) {
                    // The replaced instance finishes its queue in the background.
                    old.retire();
                    let _ = std::thread::Builder::new()
                        .name("pomme-retire".into())
                        .spawn(move || old.join());
                }
                self.update_memory_gauge();
                Ok(view)
            }
            Err(e) => {
                tracing::warn!(model = %name, version, error = %e, "model load failed");
                self.inner
                    .registry
                    .finish_load(&name, version, Err(e.clone()));
                Err(e)
            }
        }
    }

    /// Loads several models concurrently; returns each outcome in order.
    pub async fn preload(&self, specs: Vec<ModelSpec>) -> Vec<Result<ModelView>> {
        let tasks: Vec<_> = specs
            .into_iter()
            .map(|s| {
                tokio::spawn({
                    let rt = self.clone();
                    async move { rt.load(s).await }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(
                t.await
                    .unwrap_or_else(|e| Err(Error::Internal(format!("load task failed: {e}")))),
            );
        }
        out
    }

    fn build_instance(&self, spec: &ModelSpec, started: Instant) -> Result<Arc<Instance>> {
        let artifact = detect_artifact(&spec.path)?;
        let (model, routes): (Arc<dyn LoadedModel>, Option<Arc<RouteSet>>) = match &spec.routing {
            Some(cfg) => {
                let (m, set) = crate::routed::load_routed(
                    &spec.name,
                    spec.version,
                    &self.inner.backends,
                    &artifact,
                    &spec.load,
                    &spec.backends,
                    cfg,
                    Some(self.inner.route_metrics.clone()),
                )?;
                (m, Some(set))
            }
            None => (self.load_with_backends(spec, &artifact)?, None),
        };
        let memory = model.memory();
        // The model's own configuration: its memory cap and declared inputs/outputs.
        spec.check_memory(
            &memory,
            if spec.batching.is_some() {
                spec.max_batch_size
            } else {
                1
            },
        )?;
        let signature = spec.apply_declared(model.signature())?;
        let reservation = self
            .reserve_or_evict(spec, memory.weight_bytes)
            .map_err(|e| {
                Error::MemoryBudgetExceeded(format!("cannot load '{}': {}", spec.name, e.message()))
            })?;
        let batchable = model.signature().is_batchable();
        let max_batch = if batchable && spec.batching.is_some() {
            spec.max_batch_size.max(1)
        } else {
            1
        };
        let batching = spec.batching.clone().unwrap_or_default();
        let policy = BatchPolicy {
            max_batch,
            max_delay: batching.max_queue_delay,
            preferred: batching.preferred_batch_sizes.clone(),
            max_queue: batching.max_queue_size.max(1),
            levels: batching.priority_levels.max(1),
            idle_spin: crate::scheduler::default_idle_spin(),
        };
        let metrics = self.inner.metrics.model(&spec.name, spec.version);
        let queue = Arc::new(ModelQueue::new(policy).with_pending_gauge(metrics.pending.clone()));
        let counters = Arc::new(ModelCounters::default());
        let ctx = Arc::new(WorkerContext {
            name: spec.name.clone(),
            version: spec.version,
            model: model.clone(),
            queue: queue.clone(),
            counters: counters.clone(),
            metrics,
            pool: self.inner.pool.clone(),
            pad_sizes: crate::worker::pad_sizes(
                &batching.preferred_batch_sizes,
                max_batch,
                batching.pad_to_preferred,
            ),
        });
        if max_batch > 1 && !batching.pad_to_preferred && model.prefers_few_shapes() {
            tracing::warn!(
                model = %spec.name,
                backend = model.backend(),
                device = %model.device(),
                max_batch,
                "dynamic batching without pad_to_preferred: this engine prepares each new batch size on its first run (up to seconds); set preferred_batch_sizes (e.g. [1, 8, 16, 32]) and pad_to_preferred = true"
            );
        }
        let workers = spec.workers.max(1);
        let mut threads = Vec::with_capacity(workers);
        // Synthetic rows to warm the padded sizes with, on each worker's own
        // thread; the load returns (and the model turns ready) once all are warm.
        let sample = if ctx.pad_sizes.is_empty() {
            None
        } else {
            crate::routing::synth_inputs(&signature, 8)
                .ok()
                .map(Arc::new)
        };
        let (warmed_tx, warmed_rx) = std::sync::mpsc::channel();
        for i in 0..workers {
            let session = model.session()?;
            let warmup = sample.as_ref().map(|s| (s.clone(), warmed_tx.clone()));
            threads.push(
                worker::spawn(ctx.clone(), session, i, warmup)
                    .map_err(|e| Error::Internal(format!("cannot start a worker thread: {e}")))?,
            );
        }
        drop(warmed_tx);
        if sample.is_some() {
            // Ends early only if a worker thread died; it still serves then.
            for _ in 0..workers {
                if warmed_rx.recv().is_err() {
                    break;
                }
            }
        }
        let view = ModelView {
            name: spec.name.clone(),
            version: spec.version,
            backend: model.backend().to_string(),
            device: model.device(),
            signature,
            max_batch_size: if spec.batching.is_some() {
                spec.max_batch_size
            } else {
                0
            },
            batching: spec.batching.clone(),
            workers,
            memory_bytes: reservation.bytes(),
            load_ms: started.elapsed().as_millis() as u64,
            routing: routes.as_ref().map(|r| r.decision.clone()),
            placement: model.placement(),
        };
        Ok(Arc::new(Instance {
            view,
            ctx,
            queue,
            counters,
            threads: Mutex::new(threads),
            reservation: Mutex::new(Some(reservation)),
            default_priority: batching.default_priority.max(1),
            default_queue_timeout: spec.batching.as_ref().and_then(|b| b.default_queue_timeout),
            routes,
            last_used_ns: std::sync::atomic::AtomicU64::new(
                Instant::now()
                    .saturating_duration_since(self.inner.started)
                    .as_nanos() as u64,
            ),
        }))
    }

    /// Tries the spec's backends (or every backend reading the format) in order.
    fn load_with_backends(
        &self,
        spec: &ModelSpec,
        artifact: &pomme_core::ModelArtifact,
    ) -> Result<Arc<dyn LoadedModel>> {
        let candidates: Vec<&Arc<dyn Backend>> = if spec.backends.is_empty() {
            self.inner
                .backends
                .iter()
                .filter(|b| b.formats().contains(&artifact.format))
                .collect()
        } else {
            let mut v = Vec::new();
            for name in &spec.backends {
                match self.inner.backends.iter().find(|b| b.name() == name) {
                    Some(b) => v.push(b),
                    None => {
                        let known: Vec<&str> =
                            self.inner.backends.iter().map(|b| b.name()).collect();
                        return Err(Error::Unavailable(format!(
                            "backend '{name}' is not compiled in (available: {})",
                            known.join(", ")
                        )));
                    }
                }
            }
            v
        };
        if candidates.is_empty() {
            return Err(Error::Unavailable(format!(
                "no backend reads {} models",
                artifact.format
            )));
        }
        let mut reasons = Vec::new();
        // The most preferred backend's real load error (not mere unavailability).
        let mut first_err: Option<Error> = None;
        for b in candidates {
            if !b.formats().contains(&artifact.format) {
                reasons.push(format!("{} does not read {}", b.name(), artifact.format));
                continue;
            }
            if let pomme_core::Availability::Unavailable(why) = b.availability() {
                reasons.push(format!("{}: {why}", b.name()));
                continue;
            }
            match b.load(artifact, &spec.load) {
                Ok(m) => return Ok(m),
                // A broken model fails the same way everywhere: report it as it is.
                Err(e @ (Error::InvalidModelFormat(_) | Error::InvalidInput(_))) => return Err(e),
                Err(e) => {
                    reasons.push(format!("{}: {}", b.name(), e.message()));
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) if reasons.len() == 1 => Err(e),
            Some(e) => Err(e.with_message(format!(
                "no backend could load the model ({})",
                reasons.join("; ")
            ))),
            None if reasons.len() == 1 => Err(Error::Unavailable(reasons.remove(0))),
            None => Err(Error::Unavailable(format!(
                "no backend could load the model ({})",
                reasons.join("; ")
            ))),
        }
    }

    /// Unloads every version of a model. New requests are refused at once;
    /// queued ones still run, and this returns once they have and the model's
    /// memory is released.
    pub async fn unload(&self, name: &str) -> Result<()> {
        let instances = self.inner.registry.remove(name)?;
        for inst in &instances {
            self.inner.metrics.unloaded(
                name,
                inst.view.version,
                &inst.view.backend,
                inst.view.device.as_str(),
            );
            if let Some(r) = &inst.routes {
                r.forget_metrics();
            }
            inst.retire();
        }
        let _ = tokio::task::spawn_blocking(move || instances.iter().for_each(|i| i.join())).await;
        self.update_memory_gauge();
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Unloads one version of a model; its other versions keep serving. As
    /// with [`Runtime::unload`], queued requests still run, and this returns
    /// once they have and the version's memory is released.
    pub async fn unload_version(&self, name: &str, version: u64) -> Result<()> {
        let Some(inst) = self.inner.registry.remove_version(name, version)? else {
            return Ok(());
        };
        self.inner
            .metrics
            .unloaded(name, version, &inst.view.backend, inst.view.device.as_str());
        if let Some(r) = &inst.routes {
            r.forget_metrics();
        }
        inst.retire();
        let _ = tokio::task::spawn_blocking(move || inst.join()).await;
        self.update_memory_gauge();
        tracing::info!(model = %name, version, "model version unloaded");
        Ok(())
    }

    /// Every model version known, with its state.
    pub fn models(&self) -> Vec<ModelStatus> {
        self.inner.registry.statuses()
    }

    /// A serving model version (newest when `version` is `None`).
    pub fn model(&self, name: &str, version: Option<u64>) -> Result<ModelView> {
        Ok(self.inner.registry.get(name, version)?.view.clone())
    }

    /// Runs one request. Dropping the returned future cancels it: if it has not
    /// started, it never will.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        let started = Instant::now();
        let model = req.model.clone();
        let version = req.version;
        let span =
            tracing::info_span!("infer", model = %model, id = req.id.as_deref().unwrap_or(""));
        // One registry lookup per request; the instance then serves the stats too.
        let lookup = if self.inner.shutting_down.load(Ordering::Relaxed) {
            Err(Error::Unavailable("the server is shutting down".into()))
        } else {
            self.inner.registry.get(&model, version)
        };
        let (result, inst) = match lookup {
            Ok(inst) => {
                // For LRU eviction: one relaxed store on the instance's own line.
                inst.last_used_ns.store(
                    started
                        .saturating_duration_since(self.inner.started)
                        .as_nanos() as u64,
                    Ordering::Relaxed,
                );
                (
                    self.infer_with_retries(&inst, req, started, span).await,
                    Some(inst),
                )
            }
            Err(e) => (Err(e), None),
        };
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => {
                self.inner.ok.fetch_add(1, Ordering::Relaxed);
                self.inner.latency.record(elapsed);
                self.inner.throughput.tick();
                if let Some(inst) = &inst {
                    inst.counters.success.add(elapsed);
                    inst.ctx.metrics.success.inc();
                    inst.ctx
                        .metrics
                        .request_duration
                        .observe(elapsed.as_secs_f64());
                }
            }
            Err(e) => {
                self.inner.failed.fetch_add(1, Ordering::Relaxed);
                // Label with the version that served (or refused) it when known,
                // so failures and successes of one version add up.
                let served = inst.as_ref().map(|i| i.view.version).or(version);
                self.inner
                    .metrics
                    .failure(&model, served, e.kind().as_str());
                if let Some(inst) = &inst {
                    inst.counters.fail.add(elapsed);
                }
            }
        }
        result
    }

    /// [`Runtime::infer_inner`], retried with backoff for a routed model:
    /// retryable errors only, within the request's deadline, and never when
    /// every candidate's breaker is open (then nothing would run: the caller
    /// gets `Unavailable` at once instead of waiting out backoffs).
    async fn infer_with_retries(
        &self,
        inst: &Arc<Instance>,
        req: InferRequest,
        started: Instant,
        span: tracing::Span,
    ) -> Result<InferResponse> {
        let Some(routes) = &inst.routes else {
            return self.infer_inner(inst, req, started, span).await;
        };
        let deadline = req
            .timeout
            .or(inst.default_queue_timeout)
            .or(self.inner.default_timeout)
            .map(|t| started + t);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match self
                .infer_inner(inst, req.clone(), started, span.clone())
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            if !routes.any_admits() {
                return Err(err);
            }
            let unit = crate::routing::jitter_unit();
            match routes
                .config
                .retry
                .next(attempts, &err, Instant::now(), deadline, unit)
            {
                Some(delay) => {
                    routes.count_retry();
                    tokio::time::sleep(delay).await;
                }
                None => return Err(err),
            }
        }
    }

    /// Reserves a new model's weights; under [`MemoryPolicy::EvictLru`] a full
    /// budget first unloads least recently used idle models (only when that
    /// makes enough room). The reservation itself is the admission
    /// controller's compare-and-swap, so the budget holds even when loads race.
    fn reserve_or_evict(
        &self,
        spec: &ModelSpec,
        bytes: u64,
    ) -> Result<crate::admission::MemoryReservation> {
        let adm = &self.inner.admission;
        match adm.reserve_memory(bytes) {
            Ok(r) => return Ok(r),
            Err(e) if self.inner.memory_policy == MemoryPolicy::Refuse => return Err(e),
            Err(_) => {}
        }
        let victims = crate::eviction::take_victims(
            &self.inner.registry,
            adm,
            bytes,
            (&spec.name, spec.version),
        );
        for inst in &victims {
            let v = &inst.view;
            tracing::warn!(model = %v.name, version = v.version, freed_bytes = v.memory_bytes,
                for_model = %spec.name, "evicted (least recently used, idle) to make room");
            self.inner
                .metrics
                .unloaded(&v.name, v.version, &v.backend, v.device.as_str());
            self.inner.eviction_metrics.evicted(&v.name, v.version);
            if let Some(r) = &inst.routes {
                r.forget_metrics();
            }
            inst.retire();
            inst.join();
        }
        self.update_memory_gauge();
        adm.reserve_memory(bytes)
    }

    /// The routing decision and live candidate figures (breakers, calls,
    /// fallbacks) of a routed model version; `None` for a model loaded
    /// without measured routing.
    pub fn routing_status(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<(crate::routing::RoutingDecision, Vec<RouteStatus>)>> {
        let inst = self.inner.registry.get(name, version)?;
        Ok(inst
            .routes
            .as_ref()
            .map(|r| (r.decision.clone(), r.status())))
    }

    async fn infer_inner(
        &self,
        inst: &Arc<Instance>,
        req: InferRequest,
        started: Instant,
        span: tracing::Span,
    ) -> Result<InferResponse> {
        let sig = &inst.view.signature;
        let selected: Option<Vec<usize>> = match &req.outputs {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        sig.outputs
                            .iter()
                            .position(|o| &o.name == n)
                            .ok_or_else(|| {
                                Error::invalid_input(format!(
                                    "unknown output '{n}' for model '{}'",
                                    req.model
                                ))
                            })
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        let inputs = sig.arrange_inputs(req.inputs)?;
        let rows = if sig.is_batchable() {
            inputs[0].shape()[0]
        } else {
            1
        };
        let max_batch = inst.queue.policy().max_batch;
        if max_batch > 1 && rows > max_batch {
            return Err(Error::invalid_input(format!(
                "batch of {rows} rows exceeds max_batch_size {max_batch} of model '{}'",
                req.model
            )));
        }
        let timeout = req
            .timeout
            .or(inst.default_queue_timeout)
            .or(self.inner.default_timeout);
        let deadline = timeout.map(|t| started + t);
        let activation = inst
            .ctx
            .model
            .memory()
            .activation_bytes_per_item
            .saturating_mul(rows as u64);
        let activation = activation.min(
            self.inner
                .admission
                .memory_budget()
                .saturating_sub(self.inner.admission.memory_used()),
        );
        let permit = match timeout {
            Some(t) if !self.inner.fail_fast => {
                self.inner
                    .admission
                    .acquire(
                        activation,
                        Some(tokio::time::Instant::now() + t.saturating_sub(started.elapsed())),
                    )
                    .await?
            }
            _ => self.inner.admission.try_acquire(activation)?,
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            enqueued: Instant::now(),
            deadline,
            reply: tx,
            permit: Some(permit),
            span,
        };
        let priority = req.priority.unwrap_or(inst.default_priority);
        inst.queue.push(pending, priority)?;
        let (rx, early) = spin_for_reply(rx).await;
        let answer = match (early, timeout) {
            (Some(a), _) => Ok(a),
            (None, Some(t)) => {
                match tokio::time::timeout(t.saturating_sub(started.elapsed()), rx).await {
                    Ok(a) => a,
                    Err(_) => {
                        return Err(Error::Timeout(format!(
                            "no answer within {} ms",
                            t.as_millis()
                        )));
                    }
                }
            }
            (None, None) => rx.await,
        };
        let outputs =
            answer.map_err(|_| Error::Internal("compute worker dropped the request".into()))??;
        let named: Vec<(String, Tensor)> = match selected {
            None => sig
                .outputs
                .iter()
                .map(|s| s.name.clone())
                .zip(outputs)
                .collect(),
            Some(idx) => idx
                .into_iter()
                .map(|i| (sig.outputs[i].name.clone(), outputs[i].clone()))
                .collect(),
        };
        Ok(InferResponse {
            model: req.model,
            version: inst.view.version,
            id: req.id,
            outputs: named,
        })
    }

    /// Statistics of one model (all its versions) or of every model.
    pub fn stats(&self, name: Option<&str>) -> Vec<ModelStats> {
        self.inner
            .registry
            .instances()
            .into_iter()
            .filter(|i| name.is_none_or(|n| n == i.view.name))
            .map(|i| i.counters.snapshot(&i.view.name, i.view.version))
            .collect()
    }

    /// Totals, latency percentiles, throughput and memory.
    pub fn performance_summary(&self) -> PerformanceSummary {
        let ok = self.inner.ok.load(Ordering::Relaxed);
        let uptime = self.inner.started.elapsed().as_secs_f64();
        PerformanceSummary {
            total_inferences: ok,
            failed_inferences: self.inner.failed.load(Ordering::Relaxed),
            mean_latency_us: self.inner.latency.mean_us(),
            p50_latency_us: self.inner.latency.quantile_us(0.5),
            p90_latency_us: self.inner.latency.quantile_us(0.9),
            p99_latency_us: self.inner.latency.quantile_us(0.99),
            throughput_rps: if uptime > 0.0 {
                ok as f64 / uptime
            } else {
                0.0
            },
            recent_throughput_rps: self.inner.throughput.rate(),
            memory_used_bytes: self.inner.admission.memory_used(),
            memory_budget_bytes: self.inner.admission.memory_budget(),
            uptime_s: uptime,
        }
    }

    /// Backends, devices and memory.
    pub fn device_status(&self) -> DeviceStatus {
        DeviceStatus {
            backends: self
                .inner
                .backends
                .iter()
                .map(|b| BackendStatus {
                    name: b.name().to_string(),
                    availability: b.availability(),
                    devices: b.devices(),
                })
                .collect(),
            memory_used_bytes: self.inner.admission.memory_used(),
            memory_budget_bytes: self.inner.admission.memory_budget(),
            max_concurrency: self.inner.admission.max_concurrency(),
            in_flight: self.inner.admission.in_flight(),
        }
    }

    /// Live: the process answers. Always true while the runtime exists.
    pub fn is_live(&self) -> bool {
        true
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
        // Breakers change state with time too (open → half-open), not only on calls.
        for inst in self.inner.registry.instances() {
            if let Some(r) = &inst.routes {
                r.refresh_gauges();
            }
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

/// How long a request's task polls for its answer (yielding to other tasks in
/// between) before it registers a waker and sleeps: 20 µs, `POMME_REPLY_SPIN_US`
/// overrides it (0: off), none on a single core. A tiny model answers within a
/// few µs when a worker is spinning; catching that answer on the same tokio
/// thread saves the worker→tokio wake-up (a futex or eventfd write plus a
/// scheduler hop). Other ready tasks run during each yield, so this costs
/// nothing when the runtime is busy.
fn reply_spin() -> Duration {
    // Read once: the environment and `available_parallelism` (cgroup files) are slow.
    static SPIN: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SPIN.get_or_init(|| crate::scheduler::spin_setting("POMME_REPLY_SPIN_US", 20))
}

type Reply = Result<Vec<Tensor>>;

async fn spin_for_reply(
    mut rx: oneshot::Receiver<Reply>,
) -> (oneshot::Receiver<Reply>, Option<Reply>) {
    let spin = reply_spin();
    if spin.is_zero() {
        return (rx, None);
    }
    let until = Instant::now() + spin;
    loop {
        match rx.try_recv() {
            Ok(answer) => return (rx, Some(answer)),
            // Closed: the normal await reports it.
            Err(oneshot::error::TryRecvError::Closed) => return (rx, None),
            Err(oneshot::error::TryRecvError::Empty) if Instant::now() < until => {
                tokio::task::yield_now().await;
            }
            Err(oneshot::error::TryRecvError::Empty) => return (rx, None),
        }
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("blocking task failed: {e}"))))
}
