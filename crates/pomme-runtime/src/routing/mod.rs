//! Measured routing: which (backend, device) serves a model, decided by
//! measurement at load instead of by a fixed preference, with fallback,
//! circuit breakers and retries while it serves.
//!
//! - `decision.rs`: candidates, output comparison, the decision (pure).
//! - `trials.rs`: the load-time trials that produce the figures.
//! - `routed.rs`: the routed model, a `LoadedModel` over every kept candidate.
//! - `breaker.rs`: one circuit breaker per candidate.
//! - `retry.rs`: backoff of retryable errors within the deadline.
//! - `config.rs`: a model's routing settings.
//!
//! A routed model is an ordinary model to the rest of the runtime: its one
//! meeting point with `runtime/` is the [`RouteHandle`] each loaded version
//! holds (empty for a model loaded on one backend).

mod breaker;
mod config;
mod decision;
mod retry;
mod routed;
mod trials;

pub use breaker::{BreakerConfig, BreakerSnapshot, BreakerState, Clock, ManualClock, SystemClock};
pub use config::RoutingConfig;
pub use decision::{
    Agreement, Candidate, CandidateRow, RoutingDecision, Timing, Tolerance, Trial, TrialOutcome,
    parse_candidates,
};
pub use retry::RetryPolicy;
pub use routed::{Route, RouteMetrics, RouteSet, RouteStatus, RoutedModel, load_routed};
pub use trials::{plan, synth_inputs};

use crate::spec::ModelSpec;
use pomme_core::{Backend, Error, LoadedModel, ModelArtifact, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// A loaded model version's routing, as the runtime sees it. Empty for a
/// model loaded on one backend: then every method does nothing (or runs the
/// request once), so the runtime's code is the same for both kinds.
#[derive(Clone, Default)]
pub(crate) struct RouteHandle(Option<Arc<RouteSet>>);

impl RouteHandle {
    /// Loads `spec` with measured routing. Without configured candidates or
    /// backends, `automatic` are tried.
    pub(crate) fn load(
        spec: &ModelSpec,
        cfg: &RoutingConfig,
        artifact: &ModelArtifact,
        backends: &[Arc<dyn Backend>],
        automatic: &[Candidate],
        metrics: &RouteMetrics,
    ) -> Result<(Arc<dyn LoadedModel>, RouteHandle)> {
        let automatic_cfg;
        let cfg = if cfg.candidates.is_empty() && spec.backends.is_empty() {
            automatic_cfg = RoutingConfig {
                candidates: automatic.to_vec(),
                ..cfg.clone()
            };
            &automatic_cfg
        } else {
            cfg
        };
        let (model, set) = load_routed(
            &spec.name,
            spec.version,
            backends,
            artifact,
            &spec.load,
            &spec.backends,
            cfg,
            Some(metrics.clone()),
        )?;
        // A sequence's state lives in one candidate's session: falling back
        // or retrying elsewhere would silently restart it.
        if model.is_stateful() {
            set.forget_metrics();
            return Err(Error::invalid_input(format!(
                "model '{}' is stateful (sequence requests), which measured routing does not support; set routing = \"off\"",
                spec.name
            )));
        }
        Ok((model, RouteHandle(Some(set))))
    }

    /// Which candidate serves and why (routed models only).
    pub(crate) fn decision(&self) -> Option<RoutingDecision> {
        self.0.as_ref().map(|s| s.decision.clone())
    }

    /// The decision and every kept candidate's live figures.
    pub(crate) fn status(&self) -> Option<(RoutingDecision, Vec<RouteStatus>)> {
        self.0.as_ref().map(|s| (s.decision.clone(), s.status()))
    }

    /// Brings time-dependent gauges (breaker states) up to date before a scrape.
    pub(crate) fn refresh_gauges(&self) {
        if let Some(s) = &self.0 {
            s.refresh_gauges();
        }
    }

    /// Removes the version's series when it is unloaded.
    pub(crate) fn forget_metrics(&self) {
        if let Some(s) = &self.0 {
            s.forget_metrics();
        }
    }

    /// Runs `attempt` on `req`; for a routed model, retries it as the
    /// model's retry policy allows within `deadline`.
    pub(crate) async fn run<R, T, Fut>(
        &self,
        req: R,
        deadline: Option<Instant>,
        mut attempt: impl FnMut(R) -> Fut,
    ) -> Result<T>
    where
        R: Clone,
        Fut: Future<Output = Result<T>>,
    {
        match &self.0 {
            None => attempt(req).await,
            Some(set) => retry::with_retries(set, req, deadline, attempt).await,
        }
    }
}
