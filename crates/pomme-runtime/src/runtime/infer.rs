//! The request path. [`Runtime::infer`] finds the model version, checks the
//! inputs against its signature, takes an admission permit (waiting until the
//! deadline, or refused at once when full and fail-fast), enqueues the request
//! on the model's queue and awaits the worker's answer within the deadline.
//! A routed model's attempts are retried through its routing handle; the code
//! is the same for every model.

use super::Runtime;
use crate::admission::Permit;
use crate::cache::ResponseCache;
use crate::registry::Instance;
use crate::scheduler::Pending;
use pomme_core::{Error, ModelSignature, Result, SequenceControl, Tensor};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// The request's place in a sequence (Triton's `sequence_id`,
    /// `sequence_start`, `sequence_end`). Such a request runs alone, through
    /// [`pomme_core::Session::run_sequence`]; a stateful model refuses
    /// requests without one.
    pub sequence: Option<SequenceControl>,
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

type Reply = Result<Vec<Tensor>>;

impl Runtime {
    /// Runs one request. Dropping the returned future cancels it: if it has not
    /// started, it never will.
    pub async fn infer(&self, req: InferRequest) -> Result<InferResponse> {
        if let Some(p) = self.pipeline(&req.model)
            && req.version.is_none_or(|v| v == 1)
        {
            return self.run_pipeline(p, req).await;
        }
        let started = Instant::now();
        let span =
            tracing::info_span!("infer", model = %req.model, id = req.id.as_deref().unwrap_or(""));
        let inst = match self.find(&req, started) {
            Ok(inst) => inst,
            Err(e) => {
                self.inner.totals.failure();
                self.inner
                    .metrics
                    .failure(&req.model, req.version, e.kind().as_str());
                return Err(e);
            }
        };
        // Requests of a sequence carry state: never answered from the cache.
        let cache = match &self.inner.cache {
            Some(c) if inst.view.response_cache && req.sequence.is_none() => {
                let key = ResponseCache::key(&req, inst.view.version);
                if let Some(hit) = c.get(key) {
                    return Ok(self.answer_from_cache(&inst, req, &hit.outputs, started));
                }
                Some((c, key, started.elapsed()))
            }
            _ => None,
        };
        let timeout = req
            .timeout
            .or(inst.default_queue_timeout)
            .or(self.inner.default_timeout);
        let deadline = timeout.map(|t| started + t);
        let result = inst
            .routing
            .run(req, deadline, |req| {
                self.infer_once(&inst, req, started, timeout, span.clone())
            })
            .await;
        self.record(&inst, &result, started.elapsed());
        if let Some((c, key, lookup)) = cache {
            let t = Instant::now();
            if let Ok(resp) = &result {
                let put = c.put(key, &inst.view.name, inst.view.version, &resp.outputs);
                self.inner.cache_metrics.stored(c, &put);
            }
            let took = lookup + t.elapsed();
            inst.counters.cache_miss.add(took);
            self.inner
                .cache_metrics
                .miss(&inst.view.name, inst.view.version, took);
        }
        result
    }

    /// A cache hit: counted as a success (no execution), answered at once.
    fn answer_from_cache(
        &self,
        inst: &Instance,
        req: InferRequest,
        outputs: &[(String, Tensor)],
        started: Instant,
    ) -> InferResponse {
        let took = started.elapsed();
        inst.counters.cache_hit.add(took);
        self.inner
            .cache_metrics
            .hit(&inst.view.name, inst.view.version, took);
        self.succeeded(inst, took);
        InferResponse {
            model: req.model,
            version: inst.view.version,
            id: req.id,
            outputs: outputs.to_vec(),
        }
    }

    /// The serving instance for a request (one registry lookup per request),
    /// marked as used for LRU eviction.
    fn find(&self, req: &InferRequest, started: Instant) -> Result<Arc<Instance>> {
        if self.inner.shutting_down.load(Ordering::Relaxed) {
            return Err(Error::Unavailable("the server is shutting down".into()));
        }
        let inst = self.inner.registry.get(&req.model, req.version)?;
        // One relaxed store on the instance's own line.
        inst.last_used_ns.store(
            started
                .saturating_duration_since(self.inner.started)
                .as_nanos() as u64,
            Ordering::Relaxed,
        );
        Ok(inst)
    }

    /// One attempt: check, admit, enqueue, await the answer.
    async fn infer_once(
        &self,
        inst: &Instance,
        req: InferRequest,
        started: Instant,
        timeout: Option<Duration>,
        span: tracing::Span,
    ) -> Result<InferResponse> {
        if req.sequence.is_none() && inst.ctx.model.is_stateful() {
            return Err(Error::invalid_input(format!(
                "model '{}' is stateful: send parameters.sequence_id (with sequence_start on a sequence's first request)",
                req.model
            )));
        }
        let sig = &inst.view.signature;
        let selected = select_outputs(sig, &req)?;
        let inputs = sig.arrange_inputs(req.inputs)?;
        inst.ctx.model.check_request(&inputs)?;
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
        let permit = self.admit(inst, rows, started, timeout).await?;
        // A debug span: disabled (one interest check) unless tracing or debug logs are on.
        let queue = tracing::debug_span!(
            parent: &span,
            "queue",
            model = %inst.view.name,
            version = inst.view.version,
            rows,
            batch_size = tracing::field::Empty,
        );
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            inputs,
            rows,
            enqueued: Instant::now(),
            deadline: timeout.map(|t| started + t),
            reply: tx,
            permit: Some(permit),
            span,
            queue,
            sequence: req.sequence,
        };
        inst.queue
            .push(pending, req.priority.unwrap_or(inst.default_priority))?;
        let outputs = self.await_reply(rx, started, timeout).await?;
        Ok(InferResponse {
            model: req.model,
            version: inst.view.version,
            id: req.id,
            outputs: name_outputs(sig, outputs, selected),
        })
    }

    /// An admission permit for `rows` rows and their activation memory (what
    /// is left of the budget at most): waits until the deadline, or is
    /// refused at once without a deadline or when the runtime fails fast.
    async fn admit(
        &self,
        inst: &Instance,
        rows: usize,
        started: Instant,
        timeout: Option<Duration>,
    ) -> Result<Permit> {
        let adm = &self.inner.admission;
        let activation = inst
            .ctx
            .model
            .memory()
            .activation_bytes_per_item
            .saturating_mul(rows as u64)
            .min(adm.memory_budget().saturating_sub(adm.memory_used()));
        match timeout {
            Some(t) if !self.inner.fail_fast => {
                let until = tokio::time::Instant::now() + t.saturating_sub(started.elapsed());
                adm.acquire(activation, Some(until)).await
            }
            _ => adm.try_acquire(activation),
        }
    }

    /// The worker's answer, within the deadline.
    async fn await_reply(
        &self,
        rx: oneshot::Receiver<Reply>,
        started: Instant,
        timeout: Option<Duration>,
    ) -> Reply {
        let (rx, early) = spin_for_reply(rx, self.inner.reply_spin).await;
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
        answer.map_err(|_| Error::Internal("compute worker dropped the request".into()))?
    }

    /// Counts a finished request on the model version and the runtime.
    fn succeeded(&self, inst: &Instance, elapsed: Duration) {
        self.inner.totals.success(elapsed);
        inst.counters.success.add(elapsed);
        inst.ctx.metrics.success.inc();
        inst.ctx
            .metrics
            .request_duration
            .observe(elapsed.as_secs_f64());
    }

    fn record(&self, inst: &Instance, result: &Result<InferResponse>, elapsed: Duration) {
        match result {
            Ok(_) => self.succeeded(inst, elapsed),
            Err(e) => {
                self.inner.totals.failure();
                // Labelled with the version that served (or refused) it, so
                // failures and successes of one version add up.
                self.inner.metrics.failure(
                    &inst.view.name,
                    Some(inst.view.version),
                    e.kind().as_str(),
                );
                inst.counters.fail.add(elapsed);
            }
        }
    }
}

/// The indices of the outputs a request asks for; `None`: all.
fn select_outputs(sig: &ModelSignature, req: &InferRequest) -> Result<Option<Vec<usize>>> {
    let Some(names) = &req.outputs else {
        return Ok(None);
    };
    names
        .iter()
        .map(|n| {
            sig.outputs
                .iter()
                .position(|o| &o.name == n)
                .ok_or_else(|| {
                    Error::invalid_input(format!("unknown output '{n}' for model '{}'", req.model))
                })
        })
        .collect::<Result<_>>()
        .map(Some)
}

/// Outputs paired with their names, filtered by the request's selection.
fn name_outputs(
    sig: &ModelSignature,
    outputs: Vec<Tensor>,
    selected: Option<Vec<usize>>,
) -> Vec<(String, Tensor)> {
    match selected {
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
    }
}

/// Polls for the answer for up to `spin` (yielding to other tasks in
/// between) before the caller registers a waker and sleeps. A tiny model
/// answers within a few µs when a worker is spinning; catching that answer on
/// the same tokio thread saves the worker→tokio wake-up (a futex or eventfd
/// write plus a scheduler hop). Other ready tasks run during each yield, so
/// this costs nothing when the runtime is busy.
async fn spin_for_reply(
    mut rx: oneshot::Receiver<Reply>,
    spin: Duration,
) -> (oneshot::Receiver<Reply>, Option<Reply>) {
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
