//! A routed model: several (backend, device) candidates behind one
//! [`LoadedModel`], with a circuit breaker each and fallback between them.
//!
//! [`load_routed`] runs the load-time trials (`trials.rs`) and wraps the
//! candidates that agree, fastest first, in a [`RoutedModel`]. Because it is
//! a `LoadedModel`, the queue, batcher, workers and admission are those of
//! any model: each worker's [`RoutedSession`] holds one session per candidate
//! and, for every batch, calls the first candidate whose breaker admits it. A
//! failure (error, panic, wrong output shape, or, with `call_timeout`, a call
//! that takes too long) is recorded on that candidate's breaker and the batch
//! goes to the next. When every breaker is open the batch fails at once with
//! `Unavailable`, so clients are answered quickly instead of waiting.

use super::breaker::{Admit, BreakerSnapshot, CircuitBreaker};
use super::config::RoutingConfig;
use super::decision::{Candidate, RoutingDecision, TrialOutcome};
use super::trials::run_trials;
use crate::metrics::Metrics;
use pomme_core::{
    Backend, DeviceKind, Error, ErrorKind, LoadOptions, LoadedModel, MemoryEstimate, ModelArtifact,
    ModelSignature, PlacementShare, Precision, Result, Session, Tensor,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    pub model: String,
    pub version: String,
    pub backend: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCallLabels {
    pub model: String,
    pub version: String,
    pub backend: String,
    pub device: String,
    /// `ok`, `error`, `timeout`, `panic`, `wrong_output` or `rejected` (breaker open).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteModelLabels {
    pub model: String,
    pub version: String,
}

/// The `pomme_route_*` metric families, registered once per runtime.
#[derive(Clone, Debug, Default)]
pub struct RouteMetrics {
    calls: Family<RouteCallLabels, Counter>,
    retries: Family<RouteModelLabels, Counter>,
    fallbacks: Family<RouteLabels, Counter>,
    breaker_state: Family<RouteLabels, Gauge>,
    breaker_opened: Family<RouteLabels, Counter>,
    selected: Family<RouteLabels, Gauge>,
    median: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    max_abs_diff: Family<RouteLabels, Gauge<f64, AtomicU64>>,
}

impl RouteMetrics {
    /// Creates the families and adds them to the runtime's registry.
    pub fn register(metrics: &Metrics) -> RouteMetrics {
        let m = RouteMetrics::default();
        metrics.with_registry(|r| {
            r.register(
                "route_calls",
                "Backend calls of routed models, by candidate and outcome",
                m.calls.clone(),
            );
            r.register(
                "route_retries",
                "Requests of routed models retried after a retryable error (after a backoff)",
                m.retries.clone(),
            );
            r.register(
                "route_fallbacks",
                "Batches a routed model served on a candidate other than its first",
                m.fallbacks.clone(),
            );
            r.register(
                "route_breaker_state",
                "Circuit breaker of a candidate: 0 closed, 1 open, 2 half-open",
                m.breaker_state.clone(),
            );
            r.register(
                "route_breaker_opened",
                "Times a candidate's circuit breaker opened",
                m.breaker_opened.clone(),
            );
            r.register(
                "route_selected",
                "1 for the candidate chosen at load, 0 for fallbacks",
                m.selected.clone(),
            );
            r.register_with_unit(
                "route_candidate_median",
                "Median warm-up run time of a candidate at load",
                prometheus_client::registry::Unit::Seconds,
                m.median.clone(),
            );
            r.register(
                "route_candidate_max_abs_diff",
                "Largest absolute difference from the CPU reference at load",
                m.max_abs_diff.clone(),
            );
        });
        m
    }
}

/// Per-candidate counters, readable without parsing metrics.
#[derive(Debug, Default)]
struct RouteCounters {
    calls: AtomicU64,
    failures: AtomicU64,
    served: AtomicU64,
    rejected: AtomicU64,
}

/// One candidate of a routed model.
pub struct Route {
    pub candidate: Candidate,
    pub model: Arc<dyn LoadedModel>,
    pub(crate) breaker: CircuitBreaker,
    counters: RouteCounters,
    labels: RouteLabels,
}

/// A candidate's live figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    pub candidate: Candidate,
    pub breaker: BreakerSnapshot,
    pub calls: u64,
    pub failures: u64,
    /// Batches this candidate answered.
    pub served: u64,
    /// Batches skipped because its breaker was open.
    pub rejected: u64,
}

/// The candidates of one routed model version and how to call them.
pub struct RouteSet {
    pub name: String,
    pub version: u64,
    pub routes: Vec<Route>,
    pub decision: RoutingDecision,
    pub config: RoutingConfig,
    metrics: Option<RouteMetrics>,
    retries: AtomicU64,
}

impl RouteSet {
    /// Whether any candidate's breaker would let a call through now.
    pub fn any_admits(&self) -> bool {
        self.routes.iter().any(|r| r.breaker.would_admit())
    }

    /// Counts a request retried by the runtime.
    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.retries
                .get_or_create(&RouteModelLabels {
                    model: self.name.clone(),
                    version: self.version.to_string(),
                })
                .inc();
        }
    }

    /// Requests retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Every candidate's breaker and counters.
    pub fn status(&self) -> Vec<RouteStatus> {
        self.routes
            .iter()
            .map(|r| RouteStatus {
                candidate: r.candidate.clone(),
                breaker: r.breaker.snapshot(),
                calls: r.counters.calls.load(Ordering::Relaxed),
                failures: r.counters.failures.load(Ordering::Relaxed),
                served: r.counters.served.load(Ordering::Relaxed),
                rejected: r.counters.rejected.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn count(&self, route: &Route, outcome: &str) {
        if let Some(m) = &self.metrics {
            let l = &route.labels;
            m.calls
                .get_or_create(&RouteCallLabels {
                    model: l.model.clone(),
                    version: l.version.clone(),
                    backend: l.backend.clone(),
                    device: l.device.clone(),
                    outcome: outcome.to_string(),
                })
                .inc();
        }
    }

    fn after_call(&self, route: &Route, opened_before: u64) {
        if let Some(m) = &self.metrics {
            let s = route.breaker.snapshot();
            m.breaker_state
                .get_or_create(&route.labels)
                .set(s.state.as_gauge());
            if s.opened > opened_before {
                m.breaker_opened
                    .get_or_create(&route.labels)
                    .inc_by(s.opened - opened_before);
            }
        }
    }

    fn publish_decision(&self) {
        let Some(m) = &self.metrics else { return };
        for (i, r) in self.routes.iter().enumerate() {
            m.selected.get_or_create(&r.labels).set((i == 0) as i64);
            m.breaker_state.get_or_create(&r.labels).set(0);
            let _ = m.breaker_opened.get_or_create(&r.labels);
            let _ = m.fallbacks.get_or_create(&r.labels);
            let trial = self
                .decision
                .trials
                .iter()
                .find(|t| t.candidate == r.candidate);
            if let Some(TrialOutcome::Measured { agreement, timing }) = trial.map(|t| &t.outcome) {
                m.median
                    .get_or_create(&r.labels)
                    .set(timing.median_us / 1e6);
                if let Some(a) = agreement {
                    m.max_abs_diff.get_or_create(&r.labels).set(a.max_abs_diff);
                }
            }
        }
    }

    /// Sets every candidate's breaker gauge from its state now (an open
    /// breaker whose period ran out reads half-open), before a scrape.
    pub(crate) fn refresh_gauges(&self) {
        let Some(m) = &self.metrics else { return };
        for r in &self.routes {
            m.breaker_state
                .get_or_create(&r.labels)
                .set(r.breaker.snapshot().state.as_gauge());
        }
    }

    /// Removes this model version's series (on unload), so a dashboard does
    /// not show breakers of models that are gone.
    pub(crate) fn forget_metrics(&self) {
        let Some(m) = &self.metrics else { return };
        for r in &self.routes {
            m.selected.remove(&r.labels);
            m.breaker_state.remove(&r.labels);
        }
    }
}

/// A model served by the first healthy candidate of a [`RouteSet`].
pub struct RoutedModel {
    set: Arc<RouteSet>,
}

impl RoutedModel {
    pub fn route_set(&self) -> &Arc<RouteSet> {
        &self.set
    }
}

impl LoadedModel for RoutedModel {
    fn backend(&self) -> &'static str {
        self.set.routes[0].model.backend()
    }
    fn signature(&self) -> &ModelSignature {
        self.set.routes[0].model.signature()
    }
    fn memory(&self) -> MemoryEstimate {
        // Every loaded candidate holds its weights; a batch runs on one at a time.
        MemoryEstimate {
            weight_bytes: self
                .set
                .routes
                .iter()
                .map(|r| r.model.memory().weight_bytes)
                .sum(),
            activation_bytes_per_item: self
                .set
                .routes
                .iter()
                .map(|r| r.model.memory().activation_bytes_per_item)
                .max()
                .unwrap_or(0),
        }
    }
    fn device(&self) -> DeviceKind {
        self.set.routes[0].model.device()
    }
    fn precision(&self) -> Precision {
        self.set.routes[0].model.precision()
    }
    fn session(&self) -> Result<Box<dyn Session>> {
        let mut runners: Vec<Option<Runner>> = self.set.routes.iter().map(|_| None).collect();
        // The chosen candidate's session is made now so a failure shows at load.
        runners[0] = Some(Runner::new(
            &self.set.routes[0],
            self.set.config.call_timeout,
        )?);
        Ok(Box::new(RoutedSession {
            set: self.set.clone(),
            runners,
        }))
    }
    fn placement(&self) -> Vec<PlacementShare> {
        self.set.routes[0].model.placement()
    }
    fn is_stateful(&self) -> bool {
        self.set.routes.iter().any(|r| r.model.is_stateful())
    }
}

/// Runs a candidate's session inline, or on a helper thread when calls have
/// a time limit (a blocking call cannot be interrupted; it can be abandoned).
enum Runner {
    Inline(Box<dyn Session>),
    Thread {
        tx: mpsc::Sender<Vec<Tensor>>,
        rx: mpsc::Receiver<Result<Vec<Tensor>>>,
        limit: Duration,
    },
}

impl Runner {
    fn new(route: &Route, limit: Option<Duration>) -> Result<Runner> {
        let session = route.model.session()?;
        let Some(limit) = limit else {
            return Ok(Runner::Inline(session));
        };
        let (tx, job_rx) = mpsc::channel::<Vec<Tensor>>();
        let (res_tx, rx) = mpsc::channel();
        let model = route.model.clone();
        std::thread::Builder::new()
            .name(format!("pomme-route-{}", route.candidate))
            .spawn(move || {
                let mut session = session;
                // Ends when the session is dropped by its owner or abandoned
                // after a timeout (then the send below fails).
                while let Ok(inputs) = job_rx.recv() {
                    let (result, panicked) = run_caught(&mut *session, inputs);
                    if res_tx.send(result).is_err() {
                        break;
                    }
                    if panicked {
                        match model.session() {
                            Ok(s) => session = s,
                            Err(_) => break,
                        }
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start a routing thread: {e}")))?;
        Ok(Runner::Thread { tx, rx, limit })
    }

    /// Runs one call. `Err((e, keep))`: `keep` false means this runner is no
    /// longer usable (it panicked inline or was abandoned) and must be rebuilt.
    fn call(&mut self, inputs: Vec<Tensor>) -> (Result<Vec<Tensor>>, bool) {
        match self {
            Runner::Inline(session) => {
                let (r, panicked) = run_caught(&mut **session, inputs);
                (r, !panicked)
            }
            Runner::Thread { tx, rx, limit } => {
                if tx.send(inputs).is_err() {
                    return (Err(Error::Internal("routing thread stopped".into())), false);
                }
                match rx.recv_timeout(*limit) {
                    Ok(r) => (r, true),
                    Err(mpsc::RecvTimeoutError::Timeout) => (
                        Err(Error::Timeout(format!(
                            "backend call took longer than {} ms; abandoned",
                            limit.as_millis()
                        ))),
                        false,
                    ),
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        (Err(Error::Internal("routing thread stopped".into())), false)
                    }
                }
            }
        }
    }
}

/// Runs a session, turning a panic into an `Internal` error. Returns whether it panicked.
pub(super) fn run_caught(
    session: &mut dyn Session,
    inputs: Vec<Tensor>,
) -> (Result<Vec<Tensor>>, bool) {
    match std::panic::catch_unwind(AssertUnwindSafe(|| session.run(inputs))) {
        Ok(r) => (r, false),
        Err(panic) => {
            let msg = pomme_core::panic_message(&*panic);
            (
                Err(Error::Internal(format!("backend panicked: {msg}"))),
                true,
            )
        }
    }
}

/// Whether an error says something about the backend (counts against its
/// breaker and moves the batch on) rather than about the request.
fn is_backend_fault(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::InvalidInput
            | ErrorKind::UnsupportedPrecision
            | ErrorKind::Cancelled
            | ErrorKind::ModelNotFound
            | ErrorKind::InvalidModelFormat
    )
}

/// One worker's sessions over every candidate.
pub(crate) struct RoutedSession {
    set: Arc<RouteSet>,
    runners: Vec<Option<Runner>>,
}

impl Session for RoutedSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let set = self.set.clone();
        let rows = inputs.first().and_then(|t| t.shape().first().copied());
        let mut failures: Vec<String> = Vec::new();
        let mut last_err: Option<Error> = None;
        for (i, route) in set.routes.iter().enumerate() {
            let how = route.breaker.admit();
            if how == Admit::Reject {
                route.counters.rejected.fetch_add(1, Ordering::Relaxed);
                set.count(route, "rejected");
                failures.push(format!("{}: circuit open", route.candidate));
                continue;
            }
            let opened_before = route.breaker.snapshot().opened;
            route.counters.calls.fetch_add(1, Ordering::Relaxed);
            let (result, outcome) = match self.call(i, inputs.clone()) {
                Ok(outs) => {
                    match rows.map_or(Ok(()), |r| {
                        crate::worker::check_outputs(route.model.signature(), &outs, r)
                    }) {
                        Ok(()) => (Ok(outs), "ok"),
                        Err(e) => (Err(e), "wrong_output"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::Timeout => (Err(e), "timeout"),
                Err(e) if e.to_string().contains("backend panicked") => (Err(e), "panic"),
                Err(e) => (Err(e), "error"),
            };
            set.count(route, outcome);
            match result {
                Ok(outs) => {
                    route.breaker.success(how);
                    route.counters.served.fetch_add(1, Ordering::Relaxed);
                    if i > 0
                        && let Some(m) = &set.metrics
                    {
                        m.fallbacks.get_or_create(&route.labels).inc();
                    }
                    set.after_call(route, opened_before);
                    return Ok(outs);
                }
                Err(e) if is_backend_fault(&e) => {
                    route.breaker.failure(how);
                    route.counters.failures.fetch_add(1, Ordering::Relaxed);
                    set.after_call(route, opened_before);
                    tracing::warn!(model = %set.name, version = set.version, candidate = %route.candidate,
                        error = %e, "routed call failed; trying the next candidate");
                    failures.push(format!("{}: {}", route.candidate, e));
                    last_err = Some(e);
                }
                Err(e) => {
                    // The request is at fault; every candidate would refuse it.
                    route.breaker.release(how);
                    return Err(e);
                }
            }
        }
        let detail = format!(
            "model '{}' version {}: no backend left ({})",
            set.name,
            set.version,
            failures.join("; ")
        );
        Err(match last_err {
            // Every candidate was skipped: nothing ran, nothing to wait for.
            None => Error::Unavailable(detail),
            Some(e) => e.with_message(detail),
        })
    }
}

impl RoutedSession {
    fn call(&mut self, i: usize, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if self.runners[i].is_none() {
            self.runners[i] = Some(Runner::new(
                &self.set.routes[i],
                self.set.config.call_timeout,
            )?);
        }
        let runner = self.runners[i].as_mut().expect("made above");
        let (result, keep) = runner.call(inputs);
        if !keep {
            // Rebuilt lazily on the next call: a panicked or hung session is dropped.
            self.runners[i] = None;
        }
        result
    }
}

/// Loads and times every candidate, picks the fastest that agrees with the
/// CPU reference, and returns the routed model with its decision.
#[allow(clippy::too_many_arguments)]
pub fn load_routed(
    name: &str,
    version: u64,
    backends: &[Arc<dyn Backend>],
    artifact: &ModelArtifact,
    options: &LoadOptions,
    preference: &[String],
    cfg: &RoutingConfig,
    metrics: Option<RouteMetrics>,
) -> Result<(Arc<RoutedModel>, Arc<RouteSet>)> {
    let (decision, candidates, ran) = run_trials(
        backends,
        artifact,
        options,
        preference,
        cfg,
        &mut |_, _, _| {},
    )?;
    tracing::info!(model = %name, version, routing = %decision.summary(), "routing decided");
    let keep = if cfg.keep_fallbacks {
        decision.order.len()
    } else {
        1
    };
    let routes: Vec<Route> = decision.order[..keep]
        .iter()
        .map(|c| {
            let i = candidates
                .iter()
                .position(|x| x == c)
                .expect("from the list");
            let model = ran[i].as_ref().expect("measured").model.clone();
            Route {
                candidate: c.clone(),
                model,
                breaker: CircuitBreaker::new(cfg.breaker.clone(), cfg.clock.clone()),
                counters: RouteCounters::default(),
                labels: RouteLabels {
                    model: name.to_string(),
                    version: version.to_string(),
                    backend: c.backend.clone(),
                    device: c.device.to_string(),
                },
            }
        })
        .collect();
    let set = Arc::new(RouteSet {
        name: name.to_string(),
        version,
        routes,
        decision,
        config: cfg.clone(),
        metrics,
        retries: AtomicU64::new(0),
    });
    set.publish_decision();
    Ok((Arc::new(RoutedModel { set: set.clone() }), set))
}
