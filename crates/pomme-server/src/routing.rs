//! Measured routing as the server configures and shows it.
//!
//! A model's `config.toml` turns routing on with `routing = "auto"`, a
//! candidate list (`routing = ["tract/cuda", "ort/cpu", "tract/cpu"]`) or a
//! `[routing]` table (candidates, tolerance, `tolerance_f16` for candidates
//! computing in float16 such as the Neural Engine, runs, call timeout,
//! breaker, retry); `routing = "off"` keeps the first backend that loads even when
//! `pomme.toml` makes `routing = "auto"` the default. A Triton `config.pbtxt`
//! takes `parameters { key: "routing" value { string_value: "auto" } }` (or a
//! comma-separated candidate list). The settings are checked when the
//! repository is read, so a typo is a one-line model error, not a silent
//! default.
//!
//! [`report`] renders a routed model version's decision with each
//! candidate's live breaker and counters: the model configuration endpoints
//! (HTTP `routing` field, gRPC `parameters["routing"]`) and the HTTP
//! statistics show it.

use crate::duration::parse_duration;
use pomme_core::{DeviceKind, one_line};
use pomme_runtime::{Candidate, RouteStatus, RoutingConfig, RoutingDecision, parse_candidates};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Server-wide routing for models whose configuration says nothing about it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoutingMode {
    /// The first backend that loads serves (no trials).
    #[default]
    Off,
    /// Measured routing over the model's `backends`, else the platform's list.
    Auto,
}

impl std::str::FromStr for RoutingMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(RoutingMode::Off),
            "auto" => Ok(RoutingMode::Auto),
            other => Err(format!("'{other}' is not one of off, auto")),
        }
    }
}

/// What a model's configuration says about routing.
#[derive(Clone, Debug, Default)]
pub enum ModelRouting {
    /// Nothing: the server's default applies.
    #[default]
    Unset,
    Off,
    /// Boxed: a routing configuration is large beside the other variants.
    /// Beside it, which candidates are bare (`coreml`, no `/device`): those
    /// run on the model version's device, known only once the model file's
    /// format has given the platform default ([`ModelRouting::resolve`]).
    On(Box<RoutingConfig>, Vec<bool>),
}

impl ModelRouting {
    /// The routing of a model version on `device` under the server's
    /// default: bare candidates take `device`.
    pub fn resolve(&self, default: RoutingMode, device: DeviceKind) -> Option<RoutingConfig> {
        match (self, default) {
            (ModelRouting::On(c, bare), _) => {
                let mut c = RoutingConfig::clone(c);
                for (cand, _) in c.candidates.iter_mut().zip(bare).filter(|(_, b)| **b) {
                    cand.device = device;
                }
                // `coreml` and `coreml/auto` on an auto model: tried once.
                let mut seen = Vec::with_capacity(c.candidates.len());
                c.candidates.retain(|x| {
                    let new = !seen.contains(x);
                    seen.push(x.clone());
                    new
                });
                Some(c)
            }
            (ModelRouting::Unset, RoutingMode::Auto) => Some(RoutingConfig::default()),
            _ => None,
        }
    }

    /// `"auto"`, `"off"`, a candidate list, or a `[routing]` table, from
    /// `config.toml`. Bare backends in candidates run on the version's device.
    pub fn from_toml(v: toml::Value) -> Result<ModelRouting, String> {
        let wrong = || {
            "routing must be \"auto\", \"off\", a list of candidates like [\"tract/cuda\", \"ort/cpu\"], or a [routing] table".to_string()
        };
        match v {
            toml::Value::String(s) => match s.as_str() {
                "auto" => Ok(ModelRouting::On(Box::default(), Vec::new())),
                "off" => Ok(ModelRouting::Off),
                other => Err(format!("routing '{other}' is not \"auto\" or \"off\"")),
            },
            toml::Value::Array(items) => {
                let list = items
                    .into_iter()
                    .map(|i| match i {
                        toml::Value::String(s) => Ok(s),
                        _ => Err("routing candidates must be strings like \"ort/cpu\"".to_string()),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                on(TomlRouting {
                    candidates: Some(list),
                    ..Default::default()
                })
            }
            t @ toml::Value::Table(_) => {
                let t: TomlRouting = t
                    .try_into()
                    .map_err(|e: toml::de::Error| format!("routing: {}", one_line(e.message())))?;
                on(t)
            }
            _ => Err(wrong()),
        }
    }

    /// The value of a Triton `parameters { key: "routing" }`: `auto`, `off`
    /// or comma-separated candidates.
    pub fn from_parameter(s: &str) -> Result<ModelRouting, String> {
        match s.trim() {
            "auto" => Ok(ModelRouting::On(Box::default(), Vec::new())),
            "off" => Ok(ModelRouting::Off),
            list => on(TomlRouting {
                candidates: Some(list.split(',').map(str::to_string).collect()),
                ..Default::default()
            }),
        }
    }
}

/// `[routing]` in `config.toml`; durations as `"250ms"`, `"5s"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRouting {
    /// `backend[/device]` in preference order; absent: the model's
    /// `backends`, else the platform's list.
    candidates: Option<Vec<String>>,
    tolerance: Option<TomlTolerance>,
    /// For candidates (or a reference) computing in float16 or lower.
    tolerance_f16: Option<TomlTolerance>,
    warmup_runs: Option<usize>,
    timed_runs: Option<usize>,
    keep_fallbacks: Option<bool>,
    call_timeout: Option<String>,
    breaker: Option<TomlBreaker>,
    retry: Option<TomlRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlTolerance {
    abs: Option<f64>,
    rel: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlBreaker {
    failure_threshold: Option<u32>,
    open_for: Option<String>,
    max_open_for: Option<String>,
    half_open_probes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRetry {
    max_attempts: Option<u32>,
    base: Option<String>,
    max_delay: Option<String>,
    jitter: Option<f64>,
}

fn on(t: TomlRouting) -> Result<ModelRouting, String> {
    let mut c = RoutingConfig::default();
    let mut bare = Vec::new();
    if let Some(list) = t.candidates {
        if list.is_empty() {
            return Err("routing candidates is empty (leave it out for the automatic list)".into());
        }
        // Bare ones get their device at `resolve` (CPU stands in until
        // then), so duplicates are checked among bare and named ones apart.
        bare = list.iter().map(|s| !s.contains('/')).collect();
        let (b, named): (Vec<&String>, Vec<&String>) = list.iter().partition(|s| !s.contains('/'));
        parse_candidates(&b, DeviceKind::Cpu).map_err(|e| e.message().replace("/cpu'", "'"))?;
        parse_candidates(&named, DeviceKind::Cpu).map_err(|e| e.message())?;
        c.candidates = list
            .iter()
            .map(|s| Candidate::parse(s, DeviceKind::Cpu))
            .collect::<pomme_core::Result<_>>()
            .map_err(|e| e.message())?;
    }
    let dur = |what: &str, s: &str| -> Result<Duration, String> {
        parse_duration(s).map_err(|e| format!("routing {what}: {e}"))
    };
    for (tol, into) in [
        (t.tolerance, &mut c.tolerance),
        (t.tolerance_f16, &mut c.tolerance_f16),
    ] {
        if let Some(tol) = tol {
            into.abs = tol.abs.unwrap_or(into.abs);
            into.rel = tol.rel.unwrap_or(into.rel);
        }
    }
    c.warmup_runs = t.warmup_runs.unwrap_or(c.warmup_runs);
    c.timed_runs = t.timed_runs.unwrap_or(c.timed_runs);
    c.keep_fallbacks = t.keep_fallbacks.unwrap_or(c.keep_fallbacks);
    if let Some(s) = &t.call_timeout {
        c.call_timeout = Some(dur("call_timeout", s)?);
    }
    if let Some(b) = t.breaker {
        c.breaker.failure_threshold = b.failure_threshold.unwrap_or(c.breaker.failure_threshold);
        c.breaker.half_open_probes = b.half_open_probes.unwrap_or(c.breaker.half_open_probes);
        if let Some(s) = &b.open_for {
            c.breaker.open_for = dur("breaker.open_for", s)?;
        }
        if let Some(s) = &b.max_open_for {
            c.breaker.max_open_for = dur("breaker.max_open_for", s)?;
        }
    }
    if let Some(r) = t.retry {
        c.retry.max_attempts = r.max_attempts.unwrap_or(c.retry.max_attempts);
        c.retry.jitter = r.jitter.unwrap_or(c.retry.jitter);
        if let Some(s) = &r.base {
            c.retry.base = dur("retry.base", s)?;
        }
        if let Some(s) = &r.max_delay {
            c.retry.max_delay = dur("retry.max_delay", s)?;
        }
    }
    c.validate()
        .map_err(|e| format!("routing: {}", e.message()))?;
    Ok(ModelRouting::On(Box::new(c), bare))
}

/// A routed model version's decision, each candidate with its load-time
/// figures and, for those kept loaded, its breaker state and counters now.
pub fn report(decision: &RoutingDecision, live: &[RouteStatus]) -> Value {
    let candidates: Vec<Value> = decision
        .rows()
        .into_iter()
        .map(|row| {
            let name = row.candidate.clone();
            let mut v = serde_json::to_value(row).unwrap_or(Value::Null);
            let now = live.iter().find(|s| s.candidate.to_string() == name);
            v["breaker"] = json!(now.map(|s| s.breaker.state.as_str()));
            if let Some(s) = now {
                v["calls"] = json!(s.calls);
                v["failures"] = json!(s.failures);
                v["served"] = json!(s.served);
                v["rejected"] = json!(s.rejected);
            }
            v
        })
        .collect();
    decision_json(decision, candidates)
}

/// A decision as JSON with these candidate rows: the shape both the server
/// (`report`, rows with live breaker state) and `pomme inspect --plan --json`
/// (the load-time rows) print.
pub fn decision_json(decision: &RoutingDecision, candidates: Vec<Value>) -> Value {
    json!({
        "chosen": decision.chosen.to_string(),
        "order": decision.order.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "reference": decision.reference.as_ref().map(ToString::to_string),
        "tolerance": decision.tolerance,
        "tolerance_f16": decision.tolerance_f16,
        "input_shapes": decision.input_shapes,
        "summary": decision.summary(),
        "candidates": candidates,
    })
}

/// The live part of [`report`], for the statistics endpoint: each loaded
/// candidate's breaker and counters.
pub fn live_report(live: &[RouteStatus]) -> Value {
    json!(
        live.iter()
            .map(|s| json!({
                "candidate": s.candidate.to_string(),
                "breaker": s.breaker.state.as_str(),
                "consecutive_failures": s.breaker.consecutive_failures,
                "opened": s.breaker.opened,
                "calls": s.calls,
                "failures": s.failures,
                "served": s.served,
                "rejected": s.rejected,
            }))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ModelRouting, String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        ModelRouting::from_toml(t["routing"].clone())
    }

    fn cfg(text: &str) -> RoutingConfig {
        let parsed = parse(text).unwrap();
        match &parsed {
            ModelRouting::On(..) => parsed.resolve(RoutingMode::Off, DeviceKind::Cpu).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modes_lists_and_tables() {
        assert!(cfg("routing = \"auto\"").candidates.is_empty());
        assert!(matches!(
            parse("routing = \"off\"").unwrap(),
            ModelRouting::Off
        ));
        let c = cfg("routing = [\"tract/cuda\", \"ort\", \"tract/cpu\"]");
        let names: Vec<String> = c.candidates.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["tract/cuda", "ort/cpu", "tract/cpu"]);
        let c = cfg(r#"
[routing]
candidates = ["ort/cpu", "tract/cpu"]
tolerance = { abs = 1e-4, rel = 0 }
tolerance_f16 = { abs = 5e-2 }
warmup_runs = 1
timed_runs = 5
keep_fallbacks = false
call_timeout = "250ms"
breaker = { failure_threshold = 3, open_for = "2s", max_open_for = "30s", half_open_probes = 2 }
retry = { max_attempts = 1 }
"#);
        assert_eq!(c.candidates.len(), 2);
        assert_eq!((c.tolerance.abs, c.tolerance.rel), (1e-4, 0.0));
        assert_eq!(
            (c.tolerance_f16.abs, c.tolerance_f16.rel),
            (5e-2, pomme_runtime::Tolerance::F16.rel)
        );
        assert_eq!((c.warmup_runs, c.timed_runs), (1, 5));
        assert!(!c.keep_fallbacks);
        assert_eq!(c.call_timeout, Some(Duration::from_millis(250)));
        assert_eq!(c.breaker.failure_threshold, 3);
        assert_eq!(c.breaker.open_for, Duration::from_secs(2));
        assert_eq!(c.breaker.half_open_probes, 2);
        assert_eq!(c.retry.max_attempts, 1);
        // An empty table is routing with every default.
        assert!(cfg("[routing]").candidates.is_empty());
    }

    #[test]
    fn bad_settings_name_the_problem() {
        for (text, needle) in [
            (
                "routing = \"fastest\"",
                "routing 'fastest' is not \"auto\" or \"off\"",
            ),
            ("routing = true", "routing must be \"auto\""),
            ("routing = [1]", "candidates must be strings"),
            (
                "routing = [\"tract/tpu\"]",
                "routing candidate 'tract/tpu': unknown device 'tpu'",
            ),
            (
                "routing = [\"/cpu\"]",
                "routing candidate '/cpu': no backend",
            ),
            (
                "routing = [\"ort/cpu\", \"ort/cpu\"]",
                "'ort/cpu' is listed twice",
            ),
            // `ort` and `ort/cpu` are one only on a CPU model: `resolve` drops the second.
            ("routing = [\"ort\", \"ort\"]", "'ort' is listed twice"),
            ("routing = []", "candidates is empty"),
            (
                "[routing]\ncandidate = [\"ort\"]",
                "unknown field `candidate`",
            ),
            (
                "[routing]\ntimed_runs = 0",
                "routing: timed_runs must be at least 1",
            ),
            (
                "[routing]\ntolerance = { abs = -1 }",
                "tolerance abs must be",
            ),
            (
                "[routing]\ncall_timeout = \"soon\"",
                "routing call_timeout: 'soon'",
            ),
            (
                "[routing.breaker]\nopen_for = \"1m\"\nmax_open_for = \"1s\"",
                "breaker open_for",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn default_mode_applies_only_when_unset() {
        let cpu = DeviceKind::Cpu;
        assert!(ModelRouting::Unset.resolve(RoutingMode::Off, cpu).is_none());
        assert!(
            ModelRouting::Unset
                .resolve(RoutingMode::Auto, cpu)
                .is_some()
        );
        assert!(ModelRouting::Off.resolve(RoutingMode::Auto, cpu).is_none());
        let on = ModelRouting::from_parameter("ort/cpu, tract").unwrap();
        let c = on.resolve(RoutingMode::Off, cpu).unwrap();
        assert_eq!(c.candidates[1].to_string(), "tract/cpu");
        // A bare candidate follows the version's device; a named one stays.
        let c = on.resolve(RoutingMode::Off, DeviceKind::Cuda).unwrap();
        assert_eq!(c.candidates[0].to_string(), "ort/cpu");
        assert_eq!(c.candidates[1].to_string(), "tract/cuda");
        assert_eq!("auto".parse(), Ok(RoutingMode::Auto));
    }
}
