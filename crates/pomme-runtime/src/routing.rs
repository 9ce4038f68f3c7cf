//! Measured routing: which (backend, device) serves a model, decided by
//! measurement at load instead of by a fixed preference.
//!
//! A model has an ordered list of [`Candidate`]s, from its configuration or
//! [`automatic_candidates`] for the platform. At load every available
//! candidate is loaded, run on the same synthetic inputs built from the
//! model's signature ([`synth_inputs`]), compared with the CPU reference
//! within a [`Tolerance`], and timed; [`decide`] then orders the candidates
//! that agree by their median time. The fastest serves; the others stay
//! loaded as fallbacks (see `routed.rs`). The figures behind the choice are
//! kept in a [`RoutingDecision`] that the model's view carries.
//!
//! Everything here is pure (no threads, no clocks): it is unit-tested without
//! a runtime. [`RetryPolicy`] (exponential backoff with jitter, bounded by
//! the request's deadline) lives here too.

use crate::breaker::{BreakerConfig, Clock, SystemClock};
use pomme_core::{
    DType, DeviceKind, Error, Fill, ModelSignature, Result, Tensor, synthetic_inputs,
};
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One (backend, device) pair a model may run on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Candidate {
    pub backend: String,
    pub device: DeviceKind,
}

impl Candidate {
    pub fn new(backend: &str, device: DeviceKind) -> Candidate {
        Candidate {
            backend: backend.to_string(),
            device,
        }
    }

    /// Parses `backend` or `backend/device` (`ort`, `tract/cuda`, `coreml/ane`);
    /// a bare backend runs on `default_device`. Errors name the string and
    /// what is wrong with it. Whether the backend is compiled in is not
    /// checked here: a candidate that is not is skipped at load, with the reason.
    pub fn parse(s: &str, default_device: DeviceKind) -> Result<Candidate> {
        let bad = |why: String| {
            Error::invalid_input(format!(
                "routing candidate '{s}': {why} (expected backend or backend/device, like tract/cuda)"
            ))
        };
        let mut parts = s.trim().split('/');
        let backend = parts.next().unwrap_or_default().trim();
        let device = match parts.next() {
            Some(d) => d.trim().parse::<DeviceKind>().map_err(|e| {
                Error::invalid_input(format!("routing candidate '{s}': {}", e.message()))
            })?,
            None => default_device,
        };
        if parts.next().is_some() {
            return Err(bad("more than one '/'".into()));
        }
        if backend.is_empty() {
            return Err(bad("no backend".into()));
        }
        if !backend
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(format!(
                "backend '{backend}' has characters other than letters, digits, '_' and '-'"
            )));
        }
        Ok(Candidate::new(backend, device))
    }
}

/// Parses a configured candidate list (`["tract/cuda", "ort/cpu"]`) with
/// [`Candidate::parse`]; a candidate listed twice is an error too.
pub fn parse_candidates<S: AsRef<str>>(
    list: &[S],
    default_device: DeviceKind,
) -> Result<Vec<Candidate>> {
    let mut out: Vec<Candidate> = Vec::with_capacity(list.len());
    for s in list {
        let c = Candidate::parse(s.as_ref(), default_device)?;
        if out.contains(&c) {
            return Err(Error::invalid_input(format!(
                "routing candidate '{c}' is listed twice"
            )));
        }
        out.push(c);
    }
    Ok(out)
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.backend, self.device)
    }
}

/// The candidates tried when a model's configuration names none, for an
/// operating system (`std::env::consts::OS`): on macOS
/// `coreml/ane → coreml/metal → tract/metal → ort/cpu → tract/cpu`, elsewhere
/// `tract/cuda → ort/cpu → tract/cpu`. Candidates whose backend is not
/// compiled in, or whose device is not available, are skipped at load.
/// `ort/cuda` (ONNX Runtime's CUDA EP, 2–20× faster than tract's CUDA runtime
/// per call on convnets) is not in the automatic list. It serves batches well
/// only with one session per batch size (the ort backend's `shape_sessions`,
/// each holding its own copy of the weights on the GPU) and with
/// `pad_to_preferred` keeping the sizes few; without them its depthwise
/// convolutions are prepared again at every size change, for about a second
/// per batch on an H100 (BENCHMARKS.md). The trials time single calls and
/// cannot see that, so the choice is left to the configuration: name it in a
/// candidate list, or use `backends = ["ort"]` with `device = "cuda"`.
pub fn automatic_candidates(os: &str) -> Vec<Candidate> {
    use DeviceKind::*;
    let list: &[(&str, DeviceKind)] = if os == "macos" {
        &[
            ("coreml", Ane),
            ("coreml", Metal),
            ("tract", Metal),
            ("ort", Cpu),
            ("tract", Cpu),
        ]
    } else {
        &[("tract", Cuda), ("ort", Cpu), ("tract", Cpu)]
    };
    list.iter().map(|(b, d)| Candidate::new(b, *d)).collect()
}

/// How close a candidate's outputs must be to the reference's: every element
/// must satisfy `|got - want| <= abs + rel * |want|` (integers and booleans
/// must be equal).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        // GPU kernels reorder reductions; 1e-3 absolute matches what the
        // repository's CUDA checks accept (BENCHMARKS.md: ResNet-18 off by 1.75e-3
        // would be refused at this default, which is the point of measuring).
        Tolerance {
            abs: 1e-3,
            rel: 1e-3,
        }
    }
}

/// How a candidate's outputs compare with the reference's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agreement {
    pub agrees: bool,
    /// Largest absolute difference over every output element (0 when the
    /// shapes or dtypes differ; see `detail`).
    pub max_abs_diff: f64,
    /// Why it disagrees, in one line; empty when it agrees.
    pub detail: String,
}

/// Compares outputs element by element.
pub fn compare_outputs(reference: &[Tensor], got: &[Tensor], tol: Tolerance) -> Agreement {
    let fail = |detail: String, max_abs_diff: f64| Agreement {
        agrees: false,
        max_abs_diff,
        detail,
    };
    if reference.len() != got.len() {
        return fail(
            format!(
                "{} outputs, the reference has {}",
                got.len(),
                reference.len()
            ),
            0.0,
        );
    }
    let mut max_abs = 0.0f64;
    let mut first_bad: Option<String> = None;
    for (i, (r, g)) in reference.iter().zip(got).enumerate() {
        if r.shape() != g.shape() || r.dtype() != g.dtype() {
            return fail(
                format!(
                    "output {i} is {} {:?}, the reference's is {} {:?}",
                    g.dtype(),
                    g.shape(),
                    r.dtype(),
                    r.shape()
                ),
                0.0,
            );
        }
        if r.dtype() == DType::Bytes {
            if r.strings() != g.strings() {
                first_bad.get_or_insert(format!("output {i} (BYTES) differs"));
            }
            continue;
        }
        let (Ok(rv), Ok(gv)) = (r.to_f64_vec(), g.to_f64_vec()) else {
            return fail(format!("output {i} is not numeric"), 0.0);
        };
        let exact = !is_float(r.dtype());
        for (j, (a, b)) in rv.iter().zip(&gv).enumerate() {
            let d = (a - b).abs();
            let nan_mismatch = a.is_nan() != b.is_nan();
            if d.is_finite() {
                max_abs = max_abs.max(d);
            }
            let bad = nan_mismatch
                || if exact {
                    a != b
                } else {
                    !(a.is_nan() && b.is_nan()) && (d.is_nan() || d > tol.abs + tol.rel * a.abs())
                };
            if bad && first_bad.is_none() {
                first_bad = Some(format!(
                    "output {i} element {j}: {b} vs reference {a} (tolerance {} + {}·|ref|)",
                    tol.abs, tol.rel
                ));
            }
        }
    }
    match first_bad {
        Some(d) => fail(d, max_abs),
        None => Agreement {
            agrees: true,
            max_abs_diff: max_abs,
            detail: String::new(),
        },
    }
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
}

/// Median and spread of timed runs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timing {
    pub runs: usize,
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

impl Timing {
    /// Summarizes samples (at least one).
    pub fn of(samples: &[Duration]) -> Timing {
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let n = us.len();
        let median = match n {
            0 => 0.0,
            n if n % 2 == 1 => us[n / 2],
            n => (us[n / 2 - 1] + us[n / 2]) / 2.0,
        };
        Timing {
            runs: n,
            median_us: median,
            min_us: us.first().copied().unwrap_or(0.0),
            max_us: us.last().copied().unwrap_or(0.0),
        }
    }
}

/// What happened to one candidate at load.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum TrialOutcome {
    /// Backend not compiled in, or the device not available here.
    Unavailable { reason: String },
    /// Loading, or running the warm-up inputs, failed.
    Failed { reason: String },
    /// Ran, but its outputs differ from the reference beyond the tolerance.
    Disagrees {
        agreement: Agreement,
        timing: Timing,
    },
    /// Ran and agrees (or is the reference, or no reference could run).
    Measured {
        /// `None` when it is the reference itself or no reference ran.
        agreement: Option<Agreement>,
        timing: Timing,
    },
}

/// One candidate and how its trial went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trial {
    pub candidate: Candidate,
    pub outcome: TrialOutcome,
}

impl Trial {
    fn median(&self) -> Option<f64> {
        match &self.outcome {
            TrialOutcome::Measured { timing, .. } => Some(timing.median_us),
            _ => None,
        }
    }
}

/// Which candidate serves a model and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoutingDecision {
    /// The candidate that serves traffic.
    pub chosen: Candidate,
    /// Serving order: the chosen one, then fallbacks, fastest first.
    pub order: Vec<Candidate>,
    /// The CPU candidate whose outputs were the reference (`None`: no CPU
    /// candidate ran, so nothing was validated; only timed).
    pub reference: Option<Candidate>,
    pub tolerance: Tolerance,
    /// Shape of each synthetic input the candidates ran on.
    pub input_shapes: Vec<Vec<usize>>,
    /// Every candidate, in configuration order, with its figures.
    pub trials: Vec<Trial>,
}

/// One candidate of a decision, flattened for tables and JSON (`pomme inspect
/// --plan`, the server's model configuration endpoint).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CandidateRow {
    /// `backend/device`.
    pub candidate: String,
    /// Backend compiled in, reading the format, with the device present.
    pub available: bool,
    /// Whether its outputs agree with the reference's; `None` when it did not
    /// run, is the reference itself, or no reference ran.
    pub agrees: Option<bool>,
    /// Its outputs were the reference.
    pub reference: bool,
    /// Largest absolute difference from the reference (when compared).
    pub max_abs_diff: Option<f64>,
    /// Median of the timed warm-up runs, in milliseconds (when it ran).
    pub median_ms: Option<f64>,
    /// Serves traffic.
    pub chosen: bool,
    /// Place in the serving order (0: chosen, then fallbacks); `None`: not used.
    pub rank: Option<usize>,
    /// Why it is unavailable, failed or disagrees; empty otherwise.
    pub note: String,
}

impl RoutingDecision {
    /// Every candidate in configuration order, with its figures.
    pub fn rows(&self) -> Vec<CandidateRow> {
        self.trials
            .iter()
            .map(|t| {
                let reference = self.reference.as_ref() == Some(&t.candidate);
                let mut row = CandidateRow {
                    candidate: t.candidate.to_string(),
                    available: !matches!(t.outcome, TrialOutcome::Unavailable { .. }),
                    agrees: None,
                    reference,
                    max_abs_diff: None,
                    median_ms: None,
                    chosen: t.candidate == self.chosen,
                    rank: self.order.iter().position(|c| c == &t.candidate),
                    note: String::new(),
                };
                let ms = |timing: &Timing| Some(timing.median_us / 1e3);
                match &t.outcome {
                    TrialOutcome::Unavailable { reason } => row.note = reason.clone(),
                    TrialOutcome::Failed { reason } => row.note = format!("failed: {reason}"),
                    TrialOutcome::Disagrees { agreement, timing } => {
                        row.agrees = Some(false);
                        row.max_abs_diff = Some(agreement.max_abs_diff);
                        row.median_ms = ms(timing);
                        row.note = agreement.detail.clone();
                    }
                    TrialOutcome::Measured { agreement, timing } => {
                        row.median_ms = ms(timing);
                        if let Some(a) = agreement {
                            row.agrees = Some(a.agrees);
                            row.max_abs_diff = Some(a.max_abs_diff);
                        } else if self.reference.is_none() {
                            row.note =
                                "not validated: no CPU candidate ran as the reference".into();
                        }
                    }
                }
                row
            })
            .collect()
    }

    /// One line: `tract/cpu (median 41.0 µs; fallbacks: ort/cpu 57.2 µs)`.
    pub fn summary(&self) -> String {
        let med = |c: &Candidate| {
            self.trials
                .iter()
                .find(|t| &t.candidate == c)
                .and_then(Trial::median)
                .map(|m| format!("{m:.1} µs"))
                .unwrap_or_default()
        };
        let rest: Vec<String> = self.order[1..]
            .iter()
            .map(|c| format!("{c} {}", med(c)))
            .collect();
        format!(
            "{} (median {}; fallbacks: {})",
            self.chosen,
            med(&self.chosen),
            if rest.is_empty() {
                "none".into()
            } else {
                rest.join(", ")
            }
        )
    }
}

/// Orders the candidates that were measured (and agree) by median time;
/// ties keep configuration order. Fails with `Unavailable`, naming every
/// candidate and why, when none can serve.
pub fn decide(
    trials: Vec<Trial>,
    reference: Option<Candidate>,
    tolerance: Tolerance,
    input_shapes: Vec<Vec<usize>>,
) -> Result<RoutingDecision> {
    let mut ok: Vec<(usize, f64)> = trials
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.median().map(|m| (i, m)))
        .collect();
    // Stable sort: equal medians keep the configured preference.
    ok.sort_by(|a, b| a.1.total_cmp(&b.1));
    if ok.is_empty() {
        let why: Vec<String> = trials
            .iter()
            .map(|t| {
                let reason = match &t.outcome {
                    TrialOutcome::Unavailable { reason } | TrialOutcome::Failed { reason } => {
                        reason.clone()
                    }
                    TrialOutcome::Disagrees { agreement, .. } => {
                        format!("disagrees with the reference: {}", agreement.detail)
                    }
                    TrialOutcome::Measured { .. } => unreachable!("filtered above"),
                };
                format!("{}: {reason}", t.candidate)
            })
            .collect();
        return Err(Error::Unavailable(format!(
            "no routing candidate can serve the model ({})",
            if why.is_empty() {
                "no candidates".to_string()
            } else {
                why.join("; ")
            }
        )));
    }
    let order: Vec<Candidate> = ok
        .iter()
        .map(|(i, _)| trials[*i].candidate.clone())
        .collect();
    Ok(RoutingDecision {
        chosen: order[0].clone(),
        order,
        reference,
        tolerance,
        input_shapes,
        trials,
    })
}

/// Deterministic inputs for a signature: symbolic dims take `symbol_size`
/// (the batch dim 1), values from [`Fill::Uniform`] (floats in [-1, 1),
/// integers 0 or 1, booleans alternate). BYTES inputs cannot be made up: an
/// error says so.
pub fn synth_inputs(sig: &ModelSignature, symbol_size: usize) -> Result<Vec<Tensor>> {
    let named = synthetic_inputs(
        sig,
        1,
        symbol_size.max(1),
        Fill::Uniform(0x9E37_79B9_7F4A_7C15),
    )?;
    Ok(named.into_iter().map(|(_, t)| t).collect())
}

/// Retries for retryable errors: exponential backoff with jitter, never past
/// the request's deadline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Cap on any one delay.
    pub max_delay: Duration,
    /// Share of each delay that is random (0: none, 1: anywhere in [0, delay]).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry), with
    /// `unit` a random number in [0, 1): `base · 2^(retry-1)`, capped, of which
    /// a `jitter` share is scaled by `unit` ("equal jitter"), so concurrent
    /// clients that failed together do not come back together.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let j = self.jitter.clamp(0.0, 1.0);
        exp.mul_f64(1.0 - j + j * unit.clamp(0.0, 1.0))
    }

    /// Whether to retry after `attempts` attempts ended in `err`, and after
    /// which delay: `None` when the error is not retryable, the attempts are
    /// used up, or the delay would end at or past `deadline`.
    pub fn next(
        &self,
        attempts: u32,
        err: &Error,
        now: Instant,
        deadline: Option<Instant>,
        unit: f64,
    ) -> Option<Duration> {
        if !err.is_retryable() || attempts >= self.max_attempts {
            return None;
        }
        let d = self.delay(attempts, unit);
        match deadline {
            Some(dl) if now + d >= dl => None,
            _ => Some(d),
        }
    }
}

/// A cheap process-wide random number in [0, 1) for jitter (not for anything
/// that needs real randomness).
pub fn jitter_unit() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::process::id() as u64;
    // splitmix64 finalizer.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// How a model is routed (`ModelSpec::routing`). Without it a model loads on
/// the first backend of its preference list that works, as before.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Candidates in preference order; empty: the spec's `backends` (each on the
    /// spec's device), or [`automatic_candidates`] when those are empty too.
    pub candidates: Vec<Candidate>,
    pub tolerance: Tolerance,
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
    /// Checks settings that would make routing meaningless (a negative or
    /// NaN tolerance, no timed run, a breaker that never opens or never
    /// probes); the message names the setting.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid_input(m));
        for (name, v) in [("abs", self.tolerance.abs), ("rel", self.tolerance.rel)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("tolerance {name} must be a number ≥ 0, got {v}"));
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
    /// `backends` and whose load options name `device`.
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
        Ok(automatic_candidates(std::env::consts::OS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::{Dim, Shape, TensorSpec};

    fn t(v: Vec<f32>) -> Tensor {
        Tensor::from_vec(vec![1, v.len()], v).unwrap()
    }

    fn measured(c: &str, median: f64) -> Trial {
        Trial {
            candidate: Candidate::parse(c, DeviceKind::Cpu).unwrap(),
            outcome: TrialOutcome::Measured {
                agreement: None,
                timing: Timing {
                    runs: 3,
                    median_us: median,
                    min_us: median,
                    max_us: median,
                },
            },
        }
    }

    #[test]
    fn candidates_parse_and_platform_lists() {
        assert_eq!(
            Candidate::parse("tract/cuda", DeviceKind::Cpu).unwrap(),
            Candidate::new("tract", DeviceKind::Cuda)
        );
        assert_eq!(
            Candidate::parse("ort", DeviceKind::Cpu)
                .unwrap()
                .to_string(),
            "ort/cpu"
        );
        for (bad, needle) in [
            (
                "tract/tpu",
                "routing candidate 'tract/tpu': unknown device 'tpu'",
            ),
            ("/cpu", "'/cpu': no backend"),
            ("", "'': no backend"),
            ("tract/cpu/x", "more than one '/'"),
            ("tr act/cpu", "backend 'tr act' has characters"),
        ] {
            let e = Candidate::parse(bad, DeviceKind::Cpu)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert_eq!(
            parse_candidates(&["tract/cuda", "ort"], DeviceKind::Cpu).unwrap(),
            [
                Candidate::new("tract", DeviceKind::Cuda),
                Candidate::new("ort", DeviceKind::Cpu)
            ]
        );
        let e = parse_candidates(&["ort", "ort/cpu"], DeviceKind::Cpu).unwrap_err();
        assert!(e.to_string().contains("'ort/cpu' is listed twice"), "{e}");
        let linux: Vec<String> = automatic_candidates("linux")
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(linux, ["tract/cuda", "ort/cpu", "tract/cpu"]);
        let mac: Vec<String> = automatic_candidates("macos")
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            mac,
            [
                "coreml/ane",
                "coreml/metal",
                "tract/metal",
                "ort/cpu",
                "tract/cpu"
            ]
        );
        let cfg = RoutingConfig::default();
        let from_spec = cfg
            .resolve_candidates(&["ort".into(), "tract/cuda".into()], DeviceKind::Cpu)
            .unwrap();
        assert_eq!(from_spec[0].to_string(), "ort/cpu");
        assert_eq!(from_spec[1].to_string(), "tract/cuda");
    }

    #[test]
    fn outputs_within_tolerance_agree() {
        let tol = Tolerance {
            abs: 1e-3,
            rel: 0.0,
        };
        let a = compare_outputs(&[t(vec![1.0, 2.0])], &[t(vec![1.0005, 2.0])], tol);
        assert!(a.agrees, "{a:?}");
        assert!((a.max_abs_diff - 0.0005).abs() < 1e-6);
        let a = compare_outputs(&[t(vec![1.0, 2.0])], &[t(vec![1.0, 2.01])], tol);
        assert!(!a.agrees);
        assert!(a.detail.contains("element 1"), "{}", a.detail);
        let a = compare_outputs(&[t(vec![1.0, 2.0])], &[t(vec![1.0])], tol);
        assert!(
            !a.agrees && a.detail.contains("the reference's is"),
            "{}",
            a.detail
        );
        let a = compare_outputs(&[t(vec![f32::NAN])], &[t(vec![f32::NAN])], tol);
        assert!(a.agrees);
        let a = compare_outputs(&[t(vec![1.0])], &[t(vec![f32::NAN])], tol);
        assert!(!a.agrees);
        // Integers must match exactly.
        let i = |v: i64| Tensor::from_vec(vec![1], vec![v]).unwrap();
        assert!(!compare_outputs(&[i(3)], &[i(4)], Tolerance { abs: 5.0, rel: 0.0 }).agrees);
        assert!(
            compare_outputs(&[], &[t(vec![1.0])], tol)
                .detail
                .contains("1 outputs")
        );
    }

    #[test]
    fn timing_median_and_spread() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let tm = Timing::of(&ms(&[5, 1, 3]));
        assert_eq!(
            (tm.median_us, tm.min_us, tm.max_us),
            (3000.0, 1000.0, 5000.0)
        );
        assert_eq!(Timing::of(&ms(&[1, 2, 3, 4])).median_us, 2500.0);
    }

    #[test]
    fn fastest_agreeing_candidate_wins_ties_keep_preference() {
        let trials = vec![
            Trial {
                candidate: Candidate::new("tract", DeviceKind::Cuda),
                outcome: TrialOutcome::Disagrees {
                    agreement: Agreement {
                        agrees: false,
                        max_abs_diff: 0.5,
                        detail: "output 0 element 3".into(),
                    },
                    timing: Timing::of(&[Duration::from_micros(1)]),
                },
            },
            measured("ort", 50.0),
            measured("tract", 40.0),
            measured("other", 40.0),
            Trial {
                candidate: Candidate::new("coreml", DeviceKind::Ane),
                outcome: TrialOutcome::Unavailable {
                    reason: "not compiled in".into(),
                },
            },
        ];
        let d = decide(trials, None, Tolerance::default(), vec![vec![1, 4]]).unwrap();
        let order: Vec<String> = d.order.iter().map(|c| c.to_string()).collect();
        // The fast but wrong CUDA candidate is never chosen.
        assert_eq!(order, ["tract/cpu", "other/cpu", "ort/cpu"]);
        assert_eq!(d.chosen.to_string(), "tract/cpu");
        assert_eq!(
            d.summary(),
            "tract/cpu (median 40.0 µs; fallbacks: other/cpu 40.0 µs, ort/cpu 50.0 µs)"
        );
        let rows = d.rows();
        assert_eq!(rows.len(), 5);
        assert_eq!(
            (rows[0].agrees, rows[0].max_abs_diff, rows[0].rank),
            (Some(false), Some(0.5), None)
        );
        assert_eq!(rows[0].note, "output 0 element 3");
        assert!(rows[2].chosen && rows[2].rank == Some(0));
        assert_eq!(rows[2].median_ms, Some(0.04));
        assert_eq!(rows[1].rank, Some(2));
        assert!(!rows[4].available && rows[4].median_ms.is_none());
        assert_eq!(rows[4].note, "not compiled in");
        // No reference ran: the figures say nothing was validated.
        assert!(rows[1].note.starts_with("not validated"), "{:?}", rows[1]);
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
        assert!(e(&|c| c.timed_runs = 0).contains("timed_runs"));
        assert!(e(&|c| c.breaker.failure_threshold = 0).contains("failure_threshold"));
        assert!(e(&|c| c.breaker.max_open_for = Duration::from_millis(1)).contains("open_for"));
        assert!(e(&|c| c.call_timeout = Some(Duration::ZERO)).contains("call_timeout"));
        assert!(e(&|c| c.retry.max_attempts = 0).contains("max_attempts"));
    }

    #[test]
    fn no_candidate_is_one_unavailable_line() {
        let trials = vec![Trial {
            candidate: Candidate::new("ort", DeviceKind::Cpu),
            outcome: TrialOutcome::Failed {
                reason: "libonnxruntime not found".into(),
            },
        }];
        let e = decide(trials, None, Tolerance::default(), vec![]).unwrap_err();
        assert_eq!(e.kind(), pomme_core::ErrorKind::Unavailable);
        assert!(e.to_string().contains("ort/cpu: libonnxruntime not found"));
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn synthetic_inputs_follow_the_signature() {
        let sig = ModelSignature {
            inputs: vec![
                TensorSpec::new(
                    "x",
                    DType::F32,
                    Shape(vec![
                        Dim::Symbolic("b".into()),
                        Dim::Symbolic("s".into()),
                        Dim::Fixed(3),
                    ]),
                ),
                TensorSpec::new("ids", DType::I64, Shape(vec![Dim::Fixed(4)])),
            ],
            outputs: vec![],
        };
        let a = synth_inputs(&sig, 5).unwrap();
        assert_eq!(a[0].shape(), &[1, 5, 3]);
        assert_eq!(a[1].to_vec::<i64>().unwrap(), vec![0, 1, 0, 1]);
        assert!(
            a[0].to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| (-1.0..1.0).contains(v))
        );
        // Reproducible: every candidate sees the same values.
        assert_eq!(synth_inputs(&sig, 5).unwrap()[0], a[0]);
        let bytes = ModelSignature {
            inputs: vec![TensorSpec::new(
                "s",
                DType::Bytes,
                Shape(vec![Dim::Fixed(1)]),
            )],
            outputs: vec![],
        };
        assert!(
            synth_inputs(&bytes, 1)
                .unwrap_err()
                .to_string()
                .contains("BYTES input 's'")
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_respects_the_deadline() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            jitter: 0.5,
        };
        // Without randomness (unit = 1) the delays are the full exponential.
        let full: Vec<u128> = (1..=4).map(|r| p.delay(r, 1.0).as_millis()).collect();
        assert_eq!(full, [10, 20, 40, 50]);
        // Jitter takes off at most half.
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(10));
        assert!(p.delay(2, 0.5) > Duration::from_millis(10));
        let now = Instant::now();
        let retryable = Error::InferenceFailed("x".into());
        assert_eq!(
            p.next(1, &retryable, now, None, 1.0),
            Some(Duration::from_millis(10))
        );
        // Not retryable, out of attempts, or past the deadline: no retry.
        assert_eq!(p.next(1, &Error::invalid_input("x"), now, None, 1.0), None);
        assert_eq!(p.next(5, &retryable, now, None, 1.0), None);
        let dl = now + Duration::from_millis(15);
        assert_eq!(p.next(2, &retryable, now, Some(dl), 1.0), None);
        assert_eq!(
            p.next(1, &retryable, now, Some(dl), 1.0),
            Some(Duration::from_millis(10))
        );
        let u = jitter_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
