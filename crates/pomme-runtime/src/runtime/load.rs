//! Loading and unloading: a model version goes from a [`ModelSpec`] to a
//! running instance (engine loaded, memory reserved, queue and workers
//! started, padded batch sizes warmed; a stateful model gets one worker and
//! no warm-up) on a blocking thread, so other models keep serving. Under
//! [`MemoryPolicy::EvictLru`] a full budget first unloads least recently used
//! idle versions (`eviction.rs`).

use super::Runtime;
use crate::admission::MemoryReservation;
use crate::artifact::detect_artifact;
use crate::eviction::{self, MemoryPolicy};
use crate::registry::{Instance, ModelView};
use crate::routing::{RouteHandle, synth_inputs};
use crate::scheduler::{BatchPolicy, ModelQueue};
use crate::spec::ModelSpec;
use crate::stats::ModelCounters;
use crate::worker::{self, WorkerContext};
use parking_lot::Mutex;
use pomme_core::{
    Availability, Backend, Error, LoadedModel, ModelArtifact, Result, check_extra_keys,
};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

impl Runtime {
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
                    ms = view.load_ms, warmup_ms = view.warmup_ms, memory_bytes = view.memory_bytes,
                    "model loaded");
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

    /// Unloads every version of a model. New requests are refused at once;
    /// queued ones still run, and this returns once they have and the model's
    /// memory is released.
    pub async fn unload(&self, name: &str) -> Result<()> {
        let failed = self.pipeline_failures().write().remove(name).is_some();
        if self.pipelines().write().remove(name).is_some() || failed {
            tracing::info!(pipeline = %name, "pipeline unloaded");
            return Ok(());
        }
        let instances = self.inner.registry.remove(name)?;
        for inst in &instances {
            self.take_down(inst);
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
        self.take_down(&inst);
        let _ = tokio::task::spawn_blocking(move || inst.join()).await;
        self.update_memory_gauge();
        tracing::info!(model = %name, version, "model version unloaded");
        Ok(())
    }

    /// Stops a version taken out of the registry (unloaded or evicted): its
    /// series go, its queue closes; the caller joins it.
    fn take_down(&self, inst: &Instance) {
        let v = &inst.view;
        self.inner
            .metrics
            .unloaded(&v.name, v.version, &v.backend, v.device.as_str());
        inst.routing.forget_metrics();
        if let Some(cache) = &self.inner.cache {
            cache.forget(&v.name, v.version);
            self.inner.cache_metrics.refresh(cache);
        }
        inst.retire();
    }

    fn build_instance(&self, spec: &ModelSpec, started: Instant) -> Result<Arc<Instance>> {
        let artifact = detect_artifact(&spec.path)?;
        self.check_free_memory(spec)?;
        let (model, routing) = match &spec.routing {
            Some(cfg) => RouteHandle::load(
                spec,
                cfg,
                &artifact,
                &self.inner.backends,
                &self.inner.automatic,
                &self.inner.route_metrics,
            )?,
            None => (self.load_first(spec, &artifact)?, RouteHandle::default()),
        };
        let model: Arc<dyn LoadedModel> = match &spec.sequence {
            Some(cfg) if !cfg.states.is_empty() => {
                Arc::new(crate::implicit::ImplicitState::new(model, cfg)?)
            }
            _ => model,
        };
        let model = match &spec.adapter {
            Some(a) => a.wrap(model).map_err(|e| {
                Error::InvalidModelFormat(format!(
                    "{} model '{}': {}",
                    a.name(),
                    spec.name,
                    e.message()
                ))
            })?,
            None => model,
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
            idle_spin: self.inner.worker_spin,
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
            pad_sizes: worker::pad_sizes(
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
        // One session serves a stateful model, so a sequence's requests run
        // in order and see the state a backend keeps in its session.
        let workers = if model.is_stateful() {
            if spec.workers > 1 {
                tracing::info!(model = %spec.name, workers = spec.workers,
                    "stateful model: served by one worker thread");
            }
            1
        } else {
            spec.workers.max(1)
        };
        if spec.response_cache {
            if self.inner.cache.is_none() {
                ctx.queue.close();
                return Err(Error::invalid_input(format!(
                    "model '{}' turns response_cache on, but the server's response cache has no budget (response_cache_mb = 0)",
                    spec.name
                )));
            }
            if model.is_stateful() {
                ctx.queue.close();
                return Err(Error::invalid_input(format!(
                    "model '{}' is stateful: its answers depend on the sequence, so response_cache cannot be on",
                    spec.name
                )));
            }
        }
        if !spec.warmup.is_empty() && model.is_stateful() {
            ctx.queue.close();
            return Err(Error::invalid_input(format!(
                "model '{}' is stateful: model_warmup would need a sequence; remove it",
                spec.name
            )));
        }
        // Triton's convention: with max_batch_size > 0 a sample's dims leave
        // out the batch dimension.
        let configured = spec
            .warmup
            .iter()
            .map(|w| {
                let tensors = w.tensors(&signature, batchable && spec.max_batch_size > 0)?;
                Ok((w.name.clone(), w.count, tensors))
            })
            .collect::<Result<Vec<_>>>()?;
        let (threads, warmed) = start_workers(&ctx, &*model, &signature, workers, configured)?;
        if let Some(took) = warmed {
            self.inner.metrics.warmed(&spec.name, spec.version, took);
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
            stateful: model.is_stateful(),
            memory_bytes: reservation.bytes(),
            load_ms: started.elapsed().as_millis() as u64,
            warmup_ms: warmed.map(|d| d.as_millis() as u64),
            response_cache: spec.response_cache,
            routing: routing.decision(),
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
            routing,
            last_used_ns: AtomicU64::new(
                Instant::now()
                    .saturating_duration_since(self.inner.started)
                    .as_nanos() as u64,
            ),
        }))
    }

    /// The memory guard: the model's files (what its weights will take, at
    /// least) plus the reserve must fit in what the system still has.
    fn check_free_memory(&self, spec: &ModelSpec) -> Result<()> {
        let Some(probe) = &self.inner.available_memory else {
            return Ok(());
        };
        let Some(available) = probe() else {
            return Ok(());
        };
        let files = disk_bytes(&spec.path);
        let need = files.saturating_add(self.inner.memory_reserve);
        if need > available {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            return Err(Error::MemoryBudgetExceeded(format!(
                "cannot load '{}': its files take {:.1} MiB and {:.0} MiB are kept in reserve, but only {:.1} MiB of memory is available",
                spec.name,
                mib(files),
                mib(self.inner.memory_reserve),
                mib(available)
            )));
        }
        Ok(())
    }

    /// Loads on the first of the spec's backends (or of every backend reading
    /// the format) that works.
    fn load_first(
        &self,
        spec: &ModelSpec,
        artifact: &ModelArtifact,
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
        // Options that none of the candidates reads are a typo, not a no-op.
        let engines: Vec<&dyn Backend> = candidates.iter().map(|b| &***b).collect();
        check_extra_keys(&spec.load.extra, &engines)?;
        let mut reasons = Vec::new();
        // The most preferred backend's real load error (not mere unavailability).
        let mut first_err: Option<Error> = None;
        for b in candidates {
            if !b.formats().contains(&artifact.format) {
                reasons.push(format!("{} does not read {}", b.name(), artifact.format));
                continue;
            }
            if let Availability::Unavailable(why) = b.availability() {
                reasons.push(format!("{}: {why}", b.name()));
                continue;
            }
            match b.load(artifact, &spec.load) {
                Ok(m) => return Ok(m),
                // Bad load options are the caller's, whichever engine reads them.
                Err(e @ Error::InvalidInput(_)) => return Err(e),
                // Anything else, "invalid model" included, can be one engine's
                // limit (an attribute or opset its parser lacks): the next one
                // may read it. When none does, the first error is reported.
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

    /// Reserves a new model's weights; under [`MemoryPolicy::EvictLru`] a full
    /// budget first unloads least recently used idle models (only when that
    /// makes enough room). The reservation itself is the admission
    /// controller's compare-and-swap, so the budget holds even when loads race.
    fn reserve_or_evict(&self, spec: &ModelSpec, bytes: u64) -> Result<MemoryReservation> {
        let adm = &self.inner.admission;
        match adm.reserve_memory(bytes) {
            Ok(r) => return Ok(r),
            Err(e) if self.inner.memory_policy == MemoryPolicy::Refuse => return Err(e),
            Err(_) => {}
        }
        let victims =
            eviction::take_victims(&self.inner.registry, adm, bytes, (&spec.name, spec.version));
        for inst in &victims {
            let v = &inst.view;
            tracing::warn!(model = %v.name, version = v.version, freed_bytes = v.memory_bytes,
                for_model = %spec.name, "evicted (least recently used, idle) to make room");
            self.inner.eviction_metrics.evicted(&v.name, v.version);
            self.take_down(inst);
            inst.join();
        }
        self.update_memory_gauge();
        adm.reserve_memory(bytes)
    }
}

/// Starts `workers` compute threads, each with its own session. With padded
/// batch sizes, each thread first runs synthetic rows at every size, then
/// the configured warm-up samples; this returns once all are warm (with the
/// time that took), so the model turns ready warm. A configured sample that
/// fails fails the load.
fn start_workers(
    ctx: &Arc<WorkerContext>,
    model: &dyn LoadedModel,
    signature: &pomme_core::ModelSignature,
    workers: usize,
    configured: Vec<(String, usize, Vec<pomme_core::Tensor>)>,
) -> Result<(
    Vec<std::thread::JoinHandle<()>>,
    Option<std::time::Duration>,
)> {
    // A stateful model's requests are never padded (each runs alone, at its
    // own size), so there are no padded sizes to warm, and a warm-up run
    // would need a sequence of its own.
    let padded = if ctx.pad_sizes.is_empty() || model.is_stateful() {
        None
    } else {
        synth_inputs(signature, 8).ok().map(Arc::new)
    };
    let warming = padded.is_some() || !configured.is_empty();
    let configured = Arc::new(configured);
    let started = Instant::now();
    let (warmed_tx, warmed_rx) = std::sync::mpsc::channel();
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let warmup = warming.then(|| worker::WarmupPlan {
            padded: padded.clone(),
            configured: configured.clone(),
            done: warmed_tx.clone(),
        });
        let started = model.session().and_then(|session| {
            worker::spawn(ctx.clone(), session, i, warmup)
                .map_err(|e| Error::Internal(format!("cannot start a worker thread: {e}")))
        });
        match started {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The threads already started end once their queue is closed.
                ctx.queue.close();
                return Err(e);
            }
        }
    }
    drop(warmed_tx);
    if !warming {
        return Ok((threads, None));
    }
    for _ in 0..workers {
        match warmed_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => {
                ctx.queue.close();
                return Err(Error::InferenceFailed(why));
            }
            // A worker thread died while warming; the others still serve.
            Err(_) => break,
        }
    }
    Ok((threads, Some(started.elapsed())))
}

/// Bytes a file, or every file under a directory (a bundle), takes on disk.
fn disk_bytes(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| disk_bytes(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Error::Internal(format!("blocking task failed: {e}"))))
}
