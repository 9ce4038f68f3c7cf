//! What measured routing decides and the figures behind it: the candidates
//! a model may run on, how a candidate's outputs compare with the reference's,
//! and [`decide`], which orders the candidates that agree by median time.
//!
//! Everything here is pure (no threads, no clocks, no engines), so it is
//! unit-tested without a runtime; `trials.rs` produces the figures.

use pomme_core::{DType, DeviceKind, Error, Result, Tensor};
use serde::Serialize;
use std::fmt;
use std::time::Duration;

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

/// How close a candidate's outputs must be to the reference's: every element
/// must satisfy `|got - want| <= abs + rel * |want|` (integers and booleans
/// must be equal).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// For candidates computing in float16 or lower (the Neural Engine, fp16
    /// engines; [`pomme_core::LoadedModel::compute_precision`]): float16 keeps
    /// 11 significant bits (a relative step of about 1e-3 per operation), and
    /// a network's rounding errors add up over its layers, so 1e-3 would
    /// refuse every Neural Engine result. 2e-2 absolute and relative accepts
    /// float16 rounding over a deep convnet's logits and still refuses a wrong
    /// kernel or a swapped channel order.
    pub const F16: Tolerance = Tolerance {
        abs: 2e-2,
        rel: 2e-2,
    };
}

impl Default for Tolerance {
    fn default() -> Self {
        // GPU kernels reorder reductions; 1e-3 absolute matches what the
        // repository's CUDA checks accept. A GPU result further off is refused
        // at this default, which is the point of measuring.
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
    /// The tolerance it was compared with (by compute precision).
    pub tolerance: Tolerance,
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
        tolerance: tol,
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
            tolerance: tol,
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
    /// Tolerance for candidates computing in float32 or wider.
    pub tolerance: Tolerance,
    /// Tolerance when the candidate or the reference computes in float16 or lower.
    pub tolerance_f16: Tolerance,
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
    tolerance_f16: Tolerance,
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
        tolerance_f16,
        input_shapes,
        trials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn candidates_parse() {
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
                        tolerance: Tolerance::default(),
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
        let d = decide(
            trials,
            None,
            Tolerance::default(),
            Tolerance::F16,
            vec![vec![1, 4]],
        )
        .unwrap();
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
    fn no_candidate_is_one_unavailable_line() {
        let trials = vec![Trial {
            candidate: Candidate::new("ort", DeviceKind::Cpu),
            outcome: TrialOutcome::Failed {
                reason: "libonnxruntime not found".into(),
            },
        }];
        let e = decide(trials, None, Tolerance::default(), Tolerance::F16, vec![]).unwrap_err();
        assert_eq!(e.kind(), pomme_core::ErrorKind::Unavailable);
        assert!(e.to_string().contains("ort/cpu: libonnxruntime not found"));
        assert!(!e.to_string().contains('\n'));
    }
}
