//! A routed model's settings ([`RoutingConfig`]): where its candidates come
//! from, how outputs are compared and timed, and the breaker and retry
//! settings its requests run under. Checked once, at load.

use super::breaker::{BreakerConfig, Clock, SystemClock};
use super::decision::{Candidate, Tolerance};
use super::retry::RetryPolicy;
use pomme_core::{DeviceKind, Error, Precision, Result};
use std::sync::Arc;
use std::time::Duration;

/// How a model is routed (`ModelSpec::routing`). Without it a model loads on
/// the first backend of its preference list that works.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Candidates in preference order; empty: the spec's `backends` (each on the
    /// spec's device), or the runtime's automatic candidates
    /// ([`crate::RuntimeBuilder::automatic_candidates`]) when those are empty too.
    pub candidates: Vec<Candidate>,
    /// Agreement with the reference when both compute in float32 or wider.
    pub tolerance: Tolerance,
    /// Agreement with the reference when either computes in float16 or lower
    /// ([`pomme_core::LoadedModel::compute_precision`]: the Neural Engine,
    /// fp16 engines); default [`Tolerance::F16`].
    pub tolerance_f16: Tolerance,
    /// Untimed runs per candidate before timing (first-run costs: allocation,
    /// kernel compilation, plan specialization).
    pub warmup_runs: usize,
    /// Timed runs per candidate.
    pub timed_runs: usize,
    /// Size given to symbolic non-batch dims of the warm-up inputs.
    pub symbol_size: usize,
    /// Keep the candidates that agree loaded as fallbacks (their weights count
    /// against the memory budget). `false`: only the chosen one stays loaded.
    pub keep_fallbacks: bool,
    pub breaker: BreakerConfig,
    /// Time limit of one backend call. With it, calls run on a helper thread
    /// so a hung backend is abandoned (and counted as a failure); without it,
    /// a hung backend holds its worker until it returns.
    pub call_timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// The breakers' clock (a `ManualClock` in tests).
    pub clock: Arc<dyn Clock>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            candidates: Vec::new(),
            tolerance: Tolerance::default(),
            tolerance_f16: Tolerance::F16,
            warmup_runs: 2,
            timed_runs: 10,
            symbol_size: 8,
            keep_fallbacks: true,
            breaker: BreakerConfig::default(),
            call_timeout: None,
            retry: RetryPolicy::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl RoutingConfig {
    /// The tolerance for comparing a candidate with the reference, from what
    /// each computes in: [`RoutingConfig::tolerance_f16`] when either is
    /// below float32.
    pub fn tolerance_for(&self, reference: Precision, candidate: Precision) -> Tolerance {
        if reference == Precision::F32 && candidate == Precision::F32 {
            self.tolerance
        } else {
            self.tolerance_f16
        }
    }

    /// Checks settings that would make routing meaningless (a negative or
    /// NaN tolerance, no timed run, a breaker that never opens or never
    /// probes); the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid_input(m));
        for (name, v) in [
            ("tolerance abs", self.tolerance.abs),
            ("tolerance rel", self.tolerance.rel),
            ("tolerance_f16 abs", self.tolerance_f16.abs),
            ("tolerance_f16 rel", self.tolerance_f16.rel),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a number ≥ 0, got {v}"));
            }
        }
        if self.timed_runs == 0 {
            return bad("timed_runs must be at least 1".into());
        }
        if self.symbol_size == 0 {
            return bad("symbol_size must be at least 1".into());
        }
        let b = &self.breaker;
        if b.failure_threshold == 0 {
            return bad("breaker failure_threshold must be at least 1".into());
        }
        if b.half_open_probes == 0 {
            return bad("breaker half_open_probes must be at least 1".into());
        }
        if b.open_for.is_zero() || b.max_open_for < b.open_for {
            return bad(format!(
                "breaker open_for ({:?}) must be > 0 and at most max_open_for ({:?})",
                b.open_for, b.max_open_for
            ));
        }
        if self.call_timeout.is_some_and(|t| t.is_zero()) {
            return bad("call_timeout must be more than zero".into());
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return bad("retry max_attempts must be at least 1 (1: no retry)".into());
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return bad(format!(
                "retry jitter must be within 0..=1, got {}",
                r.jitter
            ));
        }
        Ok(())
    }

    /// The candidates to try for a model whose backend preference is
    /// `backends` and whose load options name `device`: the configured ones,
    /// else `backends`. Neither: an error (the runtime fills in its automatic
    /// candidates before it gets here).
    pub fn resolve_candidates(
        &self,
        backends: &[String],
        device: DeviceKind,
    ) -> Result<Vec<Candidate>> {
        if !self.candidates.is_empty() {
            return Ok(self.candidates.clone());
        }
        if !backends.is_empty() {
            return backends
                .iter()
                .map(|b| Candidate::parse(b, device))
                .collect();
        }
        Err(Error::invalid_input(
            "no automatic routing candidates configured: give the runtime a list \
             (RuntimeBuilder::automatic_candidates) or name the model's candidates",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_come_from_the_config_else_the_spec() {
        let cfg = RoutingConfig::default();
        let from_spec = cfg
            .resolve_candidates(&["ort".into(), "tract/cuda".into()], DeviceKind::Cpu)
            .unwrap();
        assert_eq!(from_spec[0].to_string(), "ort/cpu");
        assert_eq!(from_spec[1].to_string(), "tract/cuda");
        let e = cfg.resolve_candidates(&[], DeviceKind::Cpu).unwrap_err();
        assert!(
            e.to_string()
                .contains("no automatic routing candidates configured"),
            "{e}"
        );
        let configured = RoutingConfig {
            candidates: vec![Candidate::new("a", DeviceKind::Cuda)],
            ..Default::default()
        };
        assert_eq!(
            configured
                .resolve_candidates(&["ort".into()], DeviceKind::Cpu)
                .unwrap(),
            [Candidate::new("a", DeviceKind::Cuda)]
        );
    }

    #[test]
    fn tolerance_follows_the_lower_compute_precision() {
        let c = RoutingConfig::default();
        assert_eq!(c.tolerance_for(Precision::F32, Precision::F32), c.tolerance);
        assert_eq!(
            c.tolerance_for(Precision::F32, Precision::F16),
            Tolerance::F16
        );
        assert_eq!(
            c.tolerance_for(Precision::F16, Precision::F32),
            Tolerance::F16
        );
        assert_eq!(
            c.tolerance_for(Precision::F32, Precision::Int8),
            Tolerance::F16
        );
        assert!(Tolerance::F16.abs > Tolerance::default().abs);
    }

    #[test]
    fn routing_settings_are_validated() {
        RoutingConfig::default().validate().unwrap();
        let e = |f: &dyn Fn(&mut RoutingConfig)| {
            let mut c = RoutingConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(e(&|c| c.tolerance.abs = -1.0).contains("tolerance abs"));
        assert!(e(&|c| c.tolerance.rel = f64::NAN).contains("tolerance rel"));
        assert!(e(&|c| c.tolerance_f16.abs = -0.1).contains("tolerance_f16 abs"));
        assert!(e(&|c| c.timed_runs = 0).contains("timed_runs"));
        assert!(e(&|c| c.breaker.failure_threshold = 0).contains("failure_threshold"));
        assert!(e(&|c| c.breaker.max_open_for = Duration::from_millis(1)).contains("open_for"));
        assert!(e(&|c| c.call_timeout = Some(Duration::ZERO)).contains("call_timeout"));
        assert!(e(&|c| c.retry.max_attempts = 0).contains("max_attempts"));
    }
}
