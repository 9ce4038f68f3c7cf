//! Routed models over scheduled fake backends, without the runtime around
//! them: load-time choice, fallback, breakers (manual clock), panics, hangs,
//! wrong shapes, and `Unavailable` when no candidate is left.

use pomme_core::{
    Backend, DeviceKind, Error, ErrorKind, LoadOptions, LoadedModel, ModelArtifact, ModelFormat,
    Tensor,
};
use pomme_runtime::{
    BreakerConfig, BreakerState, Candidate, ManualClock, Metrics, RouteMetrics, RouteSet,
    RoutedModel, RoutingConfig, TrialOutcome, load_routed,
};
use pomme_test_support::{Behaviour, FakeBackend};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn artifact() -> ModelArtifact {
    ModelArtifact {
        path: "fake.onnx".into(),
        format: ModelFormat::Onnx,
    }
}

fn cand(s: &str) -> Candidate {
    Candidate::parse(s, DeviceKind::Cpu).unwrap()
}

/// One warm-up and one timed run per candidate: each trial takes call indices 0 and 1.
fn cfg(cands: &[&str], clock: &ManualClock) -> RoutingConfig {
    RoutingConfig {
        candidates: cands.iter().map(|c| cand(c)).collect(),
        warmup_runs: 1,
        timed_runs: 1,
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
        },
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

fn load(
    backends: &[FakeBackend],
    cfg: &RoutingConfig,
    metrics: Option<RouteMetrics>,
) -> pomme_core::Result<(Arc<RoutedModel>, Arc<RouteSet>)> {
    let bs: Vec<Arc<dyn Backend>> = backends
        .iter()
        .map(|b| Arc::new(b.clone()) as Arc<dyn Backend>)
        .collect();
    load_routed(
        "m",
        1,
        &bs,
        &artifact(),
        &LoadOptions::default(),
        &[],
        cfg,
        metrics,
    )
}

fn x() -> Vec<Tensor> {
    vec![Tensor::from_vec(vec![1, 2], vec![1.0f32, 2.0]).unwrap()]
}

#[test]
fn the_fastest_candidate_that_agrees_is_chosen() {
    let clock = ManualClock::new();
    // Fast but wrong (y = 3x instead of 2x) on a "GPU".
    let wrong = FakeBackend::new(2)
        .named("wrong")
        .device(DeviceKind::Cuda)
        .scale(3.0);
    // The CPU reference, slow: every call sleeps 5 ms.
    let slow = FakeBackend::new(2).named("slow");
    slow.on_calls(0..usize::MAX, Behaviour::Slow(Duration::from_millis(5)));
    let fast = FakeBackend::new(2).named("fast");
    let missing_gpu = FakeBackend::new(2)
        .named("nogpu")
        .device(DeviceKind::Cuda)
        .unavailable("no CUDA device");
    let c = cfg(
        &[
            "wrong/cuda",
            "slow/cpu",
            "fast/cpu",
            "nogpu/cuda",
            "absent/cpu",
        ],
        &clock,
    );
    let metrics = Metrics::new();
    let (model, set) = load(
        &[wrong, slow, fast, missing_gpu],
        &c,
        Some(RouteMetrics::register(&metrics)),
    )
    .unwrap();
    let d = &set.decision;
    assert_eq!(d.chosen, cand("fast/cpu"));
    assert_eq!(d.order, vec![cand("fast/cpu"), cand("slow/cpu")]);
    assert_eq!(d.reference, Some(cand("slow/cpu")));
    assert_eq!(d.input_shapes, vec![vec![1, 2]]);
    assert!(
        matches!(&d.trials[0].outcome, TrialOutcome::Disagrees { agreement, .. } if agreement.max_abs_diff > 0.5),
        "{:?}",
        d.trials[0]
    );
    assert!(
        matches!(&d.trials[3].outcome, TrialOutcome::Unavailable { reason } if reason == "no CUDA device")
    );
    assert!(
        matches!(&d.trials[4].outcome, TrialOutcome::Unavailable { reason } if reason.contains("not compiled in"))
    );
    assert_eq!(model.backend(), "fast");
    // Both kept candidates' weights count.
    assert_eq!(model.memory().weight_bytes, 2048);
    let text = metrics.encode();
    assert!(
        text.contains(
            r#"pomme_route_selected{model="m",version="1",backend="fast",device="cpu"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("pomme_route_candidate_median_seconds{"),
        "{text}"
    );
}

#[test]
fn failures_open_the_breaker_fallback_serves_and_a_probe_closes_it() {
    let clock = ManualClock::new();
    let primary = FakeBackend::new(2).named("primary");
    // Calls 0 and 1 are the load trial; 2..5 fail.
    primary.on_calls(
        2..5,
        Behaviour::Fail(Error::InferenceFailed("flaky".into())),
    );
    let backup = FakeBackend::new(2).named("backup");
    // Make the backup slower so the primary is chosen.
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let metrics = Metrics::new();
    let (model, set) = load(
        &[primary.clone(), backup.clone()],
        &cfg(&["primary", "backup"], &clock),
        Some(RouteMetrics::register(&metrics)),
    )
    .unwrap();
    assert_eq!(set.decision.chosen, cand("primary"));
    let mut s = model.session().unwrap();
    // Three failures on the primary, each batch still served by the backup.
    for _ in 0..3 {
        let y = s.run(x()).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
    }
    let st = set.status();
    assert_eq!(st[0].breaker.state, BreakerState::Open);
    assert_eq!((st[0].calls, st[0].failures, st[1].served), (3, 3, 3));
    // Open: the primary is not called at all.
    let before = primary.script.calls();
    s.run(x()).unwrap();
    assert_eq!(primary.script.calls(), before);
    assert_eq!(set.status()[0].rejected, 1);
    // After the open period one probe goes through (call 5 succeeds) and closes it.
    clock.advance(Duration::from_secs(10));
    assert_eq!(set.status()[0].breaker.state, BreakerState::HalfOpen);
    s.run(x()).unwrap();
    let st = set.status();
    assert_eq!(st[0].breaker.state, BreakerState::Closed);
    assert_eq!((st[0].breaker.opened, st[0].breaker.closed), (1, 1));
    assert_eq!(st[1].served, 4);
    let text = metrics.encode();
    for needle in [
        r#"pomme_route_breaker_opened_total{model="m",version="1",backend="primary",device="cpu"} 1"#,
        r#"pomme_route_fallbacks_total{model="m",version="1",backend="backup",device="cpu"} 4"#,
        r#"pomme_route_calls_total{model="m",version="1",backend="primary",device="cpu",outcome="error"} 3"#,
        r#"pomme_route_calls_total{model="m",version="1",backend="primary",device="cpu",outcome="rejected"} 1"#,
        r#"pomme_route_breaker_state{model="m",version="1",backend="primary",device="cpu"} 0"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn a_failed_probe_keeps_it_open() {
    let clock = ManualClock::new();
    let primary = FakeBackend::new(2).named("primary");
    primary.on_calls(
        2..100,
        Behaviour::Fail(Error::InferenceFailed("down".into())),
    );
    let backup = FakeBackend::new(2).named("backup");
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let (model, set) = load(
        &[primary, backup],
        &cfg(&["primary", "backup"], &clock),
        None,
    )
    .unwrap();
    let mut s = model.session().unwrap();
    for _ in 0..3 {
        s.run(x()).unwrap();
    }
    clock.advance(Duration::from_secs(10));
    s.run(x()).unwrap();
    let st = set.status();
    assert_eq!(st[0].breaker.state, BreakerState::Open);
    assert_eq!(st[0].breaker.opened, 2);
    // Reopened for twice as long: still open after another 10 s.
    clock.advance(Duration::from_secs(10));
    assert_eq!(set.status()[0].breaker.state, BreakerState::Open);
    clock.advance(Duration::from_secs(10));
    assert_eq!(set.status()[0].breaker.state, BreakerState::HalfOpen);
}

#[test]
fn panics_and_wrong_shapes_fall_back_and_the_session_is_rebuilt() {
    let clock = ManualClock::new();
    let primary = FakeBackend::new(2).named("primary");
    primary
        .on_calls(2..3, Behaviour::Panic)
        .on_calls(3..4, Behaviour::WrongShape);
    let backup = FakeBackend::new(2).named("backup");
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let metrics = Metrics::new();
    let (model, set) = load(
        &[primary.clone(), backup],
        &cfg(&["primary", "backup"], &clock),
        Some(RouteMetrics::register(&metrics)),
    )
    .unwrap();
    let mut s = model.session().unwrap();
    for _ in 0..3 {
        let y = s.run(x()).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
    }
    let st = set.status();
    // Panic, wrong shape, then a success on a rebuilt session: the run of
    // failures was broken before the threshold, so the breaker stays closed.
    assert_eq!((st[0].calls, st[0].failures, st[0].served), (3, 2, 1));
    assert_eq!(st[0].breaker.state, BreakerState::Closed);
    assert_eq!(st[1].served, 2);
    let text = metrics.encode();
    assert!(text.contains(r#"outcome="panic"} 1"#), "{text}");
    assert!(text.contains(r#"outcome="wrong_output"} 1"#), "{text}");
}

#[test]
fn a_hung_backend_is_abandoned_after_the_call_timeout() {
    let clock = ManualClock::new();
    let primary = FakeBackend::new(2).named("primary");
    primary.on_calls(2..3, Behaviour::Hang);
    let backup = FakeBackend::new(2).named("backup");
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let mut c = cfg(&["primary", "backup"], &clock);
    c.call_timeout = Some(Duration::from_millis(100));
    let (model, set) = load(&[primary.clone(), backup], &c, None).unwrap();
    let mut s = model.session().unwrap();
    let t = Instant::now();
    let y = s.run(x()).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0]);
    // Answered by the backup once the limit passed, not after the hang.
    assert!(t.elapsed() < Duration::from_secs(30));
    let st = set.status();
    assert_eq!((st[0].failures, st[1].served), (1, 1));
    // The next call gets a fresh helper thread and session on the primary.
    s.run(x()).unwrap();
    assert_eq!(set.status()[0].served, 1);
    primary.script.release_hangs();
}

#[test]
fn with_every_breaker_open_the_answer_is_unavailable_at_once() {
    let clock = ManualClock::new();
    let a = FakeBackend::new(2).named("a");
    a.on_calls(
        2..usize::MAX,
        Behaviour::Fail(Error::InferenceFailed("a down".into())),
    );
    let b = FakeBackend::new(2).named("b");
    b.on_calls(
        2..usize::MAX,
        Behaviour::Fail(Error::InferenceFailed("b down".into())),
    );
    let (model, set) = load(&[a.clone(), b.clone()], &cfg(&["a", "b"], &clock), None).unwrap();
    let mut s = model.session().unwrap();
    for _ in 0..3 {
        let e = s.run(x()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InferenceFailed);
        assert!(e.to_string().contains("no backend left"), "{e}");
    }
    assert!(!set.any_admits());
    let calls = (a.script.calls(), b.script.calls());
    let e = s.run(x()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    // Both candidates named (in serving order, which depends on their timing).
    let msg = e.to_string();
    assert!(
        msg.starts_with("unavailable: model 'm' version 1: no backend left (")
            && msg.contains("a/cpu: circuit open")
            && msg.contains("b/cpu: circuit open"),
        "{msg}"
    );
    // Nothing ran.
    assert_eq!((a.script.calls(), b.script.calls()), calls);
}

#[test]
fn request_errors_do_not_trip_breakers_or_fall_back() {
    let clock = ManualClock::new();
    let primary = FakeBackend::new(2).named("primary");
    primary.on_calls(2..10, Behaviour::Fail(Error::invalid_input("bad rows")));
    let backup = FakeBackend::new(2).named("backup");
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let (model, set) = load(
        &[primary, backup.clone()],
        &cfg(&["primary", "backup"], &clock),
        None,
    )
    .unwrap();
    let mut s = model.session().unwrap();
    for _ in 0..5 {
        assert_eq!(s.run(x()).unwrap_err().kind(), ErrorKind::InvalidInput);
    }
    let st = set.status();
    assert_eq!(st[0].breaker.state, BreakerState::Closed);
    assert_eq!(st[1].calls, 0);
    assert_eq!(backup.script.calls(), 2);
}

#[test]
fn load_errors_are_one_clear_line() {
    let clock = ManualClock::new();
    let broken = FakeBackend::new(2)
        .named("a")
        .failing_load(Error::InvalidModelFormat("truncated protobuf".into()));
    let e = load(&[broken], &cfg(&["a"], &clock), None).err().unwrap();
    assert_eq!(e.to_string(), "invalid model: truncated protobuf");
    let down = FakeBackend::new(2)
        .named("a")
        .failing_load(Error::CompilationFailed("unsupported op".into()));
    let e = load(&[down], &cfg(&["a", "zz/cuda"], &clock), None)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert_eq!(
        e.to_string(),
        "unavailable: no routing candidate can serve the model (a/cpu: compilation failed: unsupported op; zz/cuda: backend 'zz' is not compiled in)"
    );
}

#[test]
fn keep_fallbacks_false_loads_only_the_chosen_one() {
    let clock = ManualClock::new();
    let a = FakeBackend::new(2).named("a");
    let b = FakeBackend::new(2).named("b");
    b.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    let mut c = cfg(&["a", "b"], &clock);
    c.keep_fallbacks = false;
    let (model, set) = load(&[a, b], &c, None).unwrap();
    assert_eq!(set.routes.len(), 1);
    assert_eq!(set.decision.order.len(), 2);
    assert_eq!(model.memory().weight_bytes, 1024);
}
