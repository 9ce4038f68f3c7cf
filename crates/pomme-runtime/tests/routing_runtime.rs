//! Fault injection through the whole runtime: scheduled faults on fake
//! backends (fail / panic / hang / wrong shape on chosen call numbers), with
//! measured routing, breakers on a manual clock, fallback, retries with
//! backoff, and LRU eviction under memory pressure. Every test checks that
//! each request got an answer (a result or an error) and what the metrics say.

use pomme_core::{Error, ErrorKind, Tensor};
use pomme_runtime::{
    BreakerConfig, BreakerState, Candidate, InferRequest, ManualClock, MemoryPolicy, ModelSpec,
    RetryPolicy, RoutingConfig, Runtime,
};
use pomme_test_support::{Behaviour, FakeBackend};
use std::sync::Arc;
use std::time::Duration;

fn model_file() -> std::path::PathBuf {
    // The fake ignores the file's content, but the runtime checks that it exists.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "pomme-routing-test-{}-{n}.onnx",
        std::process::id()
    ));
    std::fs::write(&p, b"\x08\x08").unwrap();
    p
}

fn req(model: &str, v: f32) -> InferRequest {
    InferRequest::new(
        model,
        vec![(
            "x".into(),
            Tensor::from_vec(vec![1, 2], vec![v; 2]).unwrap(),
        )],
    )
}

/// `primary` then `backup`; the backup is slow during its load trial (calls
/// 0 and 1) so the primary is measured faster and chosen.
fn pair() -> (FakeBackend, FakeBackend) {
    let primary = FakeBackend::new(2).named("primary");
    let backup = FakeBackend::new(2).named("backup");
    backup.on_calls(0..2, Behaviour::Slow(Duration::from_millis(5)));
    (primary, backup)
}

fn runtime(backends: &[&FakeBackend]) -> Runtime {
    let mut b = Runtime::builder().max_concurrency(256);
    for f in backends {
        b = b.backend(Arc::new((*f).clone()));
    }
    b.build().unwrap()
}

fn routing(clock: &ManualClock) -> RoutingConfig {
    RoutingConfig {
        candidates: vec![
            Candidate::parse("primary", pomme_core::DeviceKind::Cpu).unwrap(),
            Candidate::parse("backup", pomme_core::DeviceKind::Cpu).unwrap(),
        ],
        warmup_runs: 1,
        timed_runs: 1,
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
        },
        retry: RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            jitter: 0.5,
        },
        clock: Arc::new(clock.clone()),
        ..Default::default()
    }
}

async fn fire(rt: &Runtime, model: &str, n: usize) -> Vec<pomme_core::Result<Vec<f32>>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let rt = rt.clone();
            let model = model.to_string();
            tokio::spawn(async move {
                rt.infer(req(&model, i as f32))
                    .await
                    .map(|r| r.output("y").unwrap().to_vec::<f32>().unwrap())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("no task panicked"));
    }
    out
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric line starting with {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fallback_serves_everything_and_a_probe_closes_it() {
    let clock = ManualClock::new();
    let (primary, backup) = pair();
    // Primary calls 2.. are requests: 10, 11, 12 fail, 20 panics, 21 gives a wrong shape.
    primary
        .on_calls(
            10..13,
            Behaviour::Fail(Error::InferenceFailed("injected".into())),
        )
        .on_calls(20..21, Behaviour::Panic)
        .on_calls(21..22, Behaviour::WrongShape);
    let rt = runtime(&[&primary, &backup]);
    let view = rt
        .load(
            // One worker: calls run one after another, so the call numbers
            // of the schedule map to requests exactly.
            ModelSpec::new("m", model_file()).routing(routing(&clock)),
        )
        .await
        .unwrap();
    let decision = view.routing.as_ref().expect("routed");
    assert_eq!(decision.chosen.to_string(), "primary/cpu");
    assert_eq!(view.backend, "primary");

    // 60 concurrent requests: every one answered, correctly, despite the faults.
    let results = fire(&rt, "m", 60).await;
    assert_eq!(results.len(), 60);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &vec![2.0 * i as f32; 2], "request {i}");
    }
    // Calls 2..9 served by the primary; 10, 11, 12 failed over to the backup
    // and opened the breaker; the other 49 went straight to the backup.
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!(st[0].breaker.state, BreakerState::Open);
    assert_eq!(st[0].breaker.opened, 1);
    assert_eq!((st[0].served, st[0].failures, st[0].rejected), (8, 3, 49));
    assert_eq!(st[1].served, 52);
    assert_eq!(rt.admission().in_flight(), 0);

    // The gauge follows the clock at scrape time: open, then half-open.
    let gauge =
        r#"pomme_route_breaker_state{model="m",version="1",backend="primary",device="cpu"}"#;
    assert_eq!(metric(&rt.encode_metrics(), gauge), 1.0);
    clock.advance(Duration::from_secs(10));
    assert_eq!(metric(&rt.encode_metrics(), gauge), 2.0);

    // After the open period, a probe on the primary succeeds and closes it;
    // the faults scheduled at calls 20 and 21 then go to the backup.
    for r in fire(&rt, "m", 1).await {
        r.unwrap();
    }
    for r in fire(&rt, "m", 30).await {
        r.unwrap();
    }
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!(st[0].breaker.state, BreakerState::Closed, "{st:?}");
    assert_eq!(st[0].breaker.closed, 1);
    // The probe (call 13) and 28 of the 30: the panic and the wrong shape
    // (2 failures, under the threshold of 3) went to the backup.
    assert_eq!((st[0].served, st[1].served), (37, 54));
    let text = rt.encode_metrics();
    assert_eq!(
        metric(
            &text,
            r#"pomme_route_breaker_opened_total{model="m",version="1",backend="primary",device="cpu"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"pomme_route_fallbacks_total{model="m",version="1",backend="backup",device="cpu"}"#
        ),
        54.0
    );
    assert_eq!(
        metric(
            &text,
            r#"pomme_route_calls_total{model="m",version="1",backend="primary",device="cpu",outcome="panic"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"pomme_route_calls_total{model="m",version="1",backend="primary",device="cpu",outcome="wrong_output"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"pomme_request_success_total{model="m",version="1"}"#
        ),
        91.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_candidate_left_clients_get_unavailable_at_once() {
    let clock = ManualClock::new();
    let (primary, backup) = pair();
    primary.on_calls(
        2..usize::MAX,
        Behaviour::Fail(Error::InferenceFailed("p down".into())),
    );
    backup.on_calls(
        2..usize::MAX,
        Behaviour::Fail(Error::InferenceFailed("b down".into())),
    );
    let rt = runtime(&[&primary, &backup]);
    rt.load(ModelSpec::new("m", model_file()).routing(routing(&clock)))
        .await
        .unwrap();
    // A long deadline: if anything waited for it, the guard below would fire.
    let guarded = |i: f32| {
        let rt = rt.clone();
        async move {
            let mut r = req("m", i);
            r.timeout = Some(Duration::from_secs(60));
            tokio::time::timeout(Duration::from_secs(20), rt.infer(r))
                .await
                .expect("answered, not hung")
        }
    };
    // First request: primary fails, backup fails; retried (retryable) until
    // both breakers have opened (3 failures each), then Unavailable at once.
    let mut kinds = Vec::new();
    for i in 0..3 {
        kinds.push(guarded(i as f32).await.unwrap_err().kind());
    }
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert!(
        st.iter().all(|s| s.breaker.state == BreakerState::Open),
        "{st:?}"
    );
    let calls = (primary.script.calls(), backup.script.calls());
    for i in 0..20 {
        let e = guarded(i as f32).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.to_string().contains("no backend left"), "{e}");
        assert!(e.to_string().contains("circuit open"), "{e}");
    }
    // Nothing ran, nothing waited.
    assert_eq!((primary.script.calls(), backup.script.calls()), calls);
    assert!(
        kinds
            .iter()
            .all(|k| matches!(k, ErrorKind::InferenceFailed | ErrorKind::Unavailable)),
        "{kinds:?}"
    );
    assert_eq!(rt.admission().in_flight(), 0);
    let text = rt.encode_metrics();
    assert_eq!(
        metric(
            &text,
            r#"pomme_request_failure_total{model="m",version="1",reason="unavailable"}"#
        ) + metric(
            &text,
            r#"pomme_request_failure_total{model="m",version="1",reason="inference_failed"}"#
        ),
        23.0
    );
}

#[tokio::test]
async fn retries_back_off_recover_transient_failures_and_respect_deadlines() {
    let clock = ManualClock::new();
    let only = FakeBackend::new(2).named("primary");
    // Call 2 fails (retried), call 3 panics (Internal: not retried), call 4
    // fails (retried), call 5 succeeds.
    only.on_calls(
        2..3,
        Behaviour::Fail(Error::InferenceFailed("transient".into())),
    )
    .on_calls(3..4, Behaviour::Panic)
    .on_calls(4..5, Behaviour::Fail(Error::InferenceFailed("once".into())));
    let rt = runtime(&[&only]);
    let mut cfg = routing(&clock);
    cfg.candidates.truncate(1);
    cfg.breaker.failure_threshold = 10;
    rt.load(ModelSpec::new("m", model_file()).routing(cfg))
        .await
        .unwrap();
    let e = rt.infer(req("m", 1.0)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Internal, "{e}");
    assert!(e.to_string().contains("panicked"), "{e}");
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!(st[0].calls, 2);
    let y = rt.infer(req("m", 1.0)).await.unwrap();
    assert_eq!(
        y.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![2.0, 2.0]
    );
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!((st[0].calls, st[0].failures, st[0].served), (4, 3, 1));
    let text = rt.encode_metrics();
    assert_eq!(
        metric(&text, r#"pomme_route_retries_total{model="m",version="1"}"#),
        2.0
    );
}

#[tokio::test]
async fn a_retry_never_goes_past_the_deadline() {
    let clock = ManualClock::new();
    let only = FakeBackend::new(2).named("primary");
    only.on_calls(
        2..3,
        Behaviour::Fail(Error::InferenceFailed("transient".into())),
    );
    let rt = runtime(&[&only]);
    let mut cfg = routing(&clock);
    cfg.candidates.truncate(1);
    // The first backoff (1 s) would end after the request's 200 ms deadline.
    cfg.retry.base = Duration::from_secs(1);
    cfg.retry.max_delay = Duration::from_secs(1);
    cfg.retry.jitter = 0.0;
    rt.load(ModelSpec::new("m", model_file()).routing(cfg))
        .await
        .unwrap();
    let mut r = req("m", 1.0);
    r.timeout = Some(Duration::from_millis(200));
    let e = rt.infer(r).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InferenceFailed);
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!(st[0].calls, 1);
    assert!(
        !rt.encode_metrics()
            .contains(r#"pomme_route_retries_total{model="m""#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_is_abandoned_and_the_backup_answers() {
    let clock = ManualClock::new();
    let (primary, backup) = pair();
    primary.on_calls(2..4, Behaviour::Hang);
    let rt = runtime(&[&primary, &backup]);
    let mut cfg = routing(&clock);
    cfg.call_timeout = Some(Duration::from_millis(100));
    rt.load(ModelSpec::new("m", model_file()).routing(cfg))
        .await
        .unwrap();
    for r in fire(&rt, "m", 4).await {
        r.unwrap();
    }
    let (_, st) = rt.routing_status("m", None).unwrap().unwrap();
    assert_eq!(st[0].failures, 2, "{st:?}");
    assert_eq!(st[1].served, 2, "{st:?}");
    let text = rt.encode_metrics();
    assert_eq!(
        metric(
            &text,
            r#"pomme_route_calls_total{model="m",version="1",backend="primary",device="cpu",outcome="timeout"}"#
        ),
        2.0
    );
    primary.script.release_hangs();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_without_routing_fail_only_their_request_and_the_worker_goes_on() {
    let fake = FakeBackend::new(2);
    fake.on_calls(5..8, Behaviour::Panic);
    let rt = runtime(&[&fake]);
    rt.load(ModelSpec::new("m", model_file()).workers(2))
        .await
        .unwrap();
    let results = fire(&rt, "m", 40).await;
    let failed: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    // Unbatched: one request per call, so exactly the three panicking calls fail.
    assert_eq!(failed.len(), 3);
    assert!(
        failed
            .iter()
            .all(|e| e.kind() == ErrorKind::Internal && e.to_string().contains("panicked"))
    );
    // Both workers still serve, on rebuilt sessions.
    for r in fire(&rt, "m", 10).await {
        r.unwrap();
    }
    assert_eq!(fake.script.calls(), 50);
}

fn evicting_runtime(fake: &FakeBackend, policy: MemoryPolicy) -> Runtime {
    Runtime::builder()
        .memory_budget_bytes(2500)
        .memory_policy(policy)
        .backend(Arc::new(fake.clone()))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_least_recently_used_idle_model_is_evicted_to_make_room() {
    // Every model weighs 1024 B; two fit in 2500 B.
    let fake = FakeBackend::new(2).weight_bytes(1024);
    let rt = evicting_runtime(&fake, MemoryPolicy::EvictLru);
    rt.load(ModelSpec::new("a", model_file())).await.unwrap();
    rt.load(ModelSpec::new("b", model_file())).await.unwrap();
    // `a` is used after `b` loaded: `b` is the least recently used.
    rt.infer(req("a", 1.0)).await.unwrap();
    rt.load(ModelSpec::new("c", model_file())).await.unwrap();
    assert_eq!(
        rt.model("b", None).unwrap_err().kind(),
        ErrorKind::ModelNotFound
    );
    rt.infer(req("a", 1.0)).await.unwrap();
    rt.infer(req("c", 1.0)).await.unwrap();
    assert!(rt.admission().memory_used() <= 2500);
    assert_eq!(rt.admission().memory_used(), 2048);
    let text = rt.encode_metrics();
    assert_eq!(
        metric(
            &text,
            r#"pomme_model_evictions_total{model="b",version="1"}"#
        ),
        1.0
    );
    // A model larger than the whole budget evicts nothing.
    let big = FakeBackend::new(2).named("big").weight_bytes(4096);
    let rt2 = Runtime::builder()
        .memory_budget_bytes(2500)
        .memory_policy(MemoryPolicy::EvictLru)
        .backend(Arc::new(fake.clone()))
        .backend(Arc::new(big))
        .build()
        .unwrap();
    rt2.load(ModelSpec::new("a", model_file())).await.unwrap();
    let e = rt2
        .load(ModelSpec::new("huge", model_file()).backends(&["big"]))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MemoryBudgetExceeded);
    rt2.infer(req("a", 1.0)).await.unwrap();
}

#[tokio::test]
async fn refuse_policy_and_busy_models_are_never_evicted() {
    let fake = FakeBackend::new(2).weight_bytes(1024);
    let rt = evicting_runtime(&fake, MemoryPolicy::Refuse);
    rt.load(ModelSpec::new("a", model_file())).await.unwrap();
    rt.load(ModelSpec::new("b", model_file())).await.unwrap();
    let e = rt
        .load(ModelSpec::new("c", model_file()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MemoryBudgetExceeded, "{e}");
    rt.infer(req("a", 1.0)).await.unwrap();
    rt.infer(req("b", 1.0)).await.unwrap();

    // Evicting policy, but both models are busy (a request each, hung in the backend).
    let fake = FakeBackend::new(2).weight_bytes(1024);
    fake.on_calls(0..2, Behaviour::Hang);
    let rt = evicting_runtime(&fake, MemoryPolicy::EvictLru);
    rt.load(ModelSpec::new("a", model_file())).await.unwrap();
    rt.load(ModelSpec::new("b", model_file())).await.unwrap();
    let ta = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req("a", 1.0)).await }
    });
    let tb = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req("b", 1.0)).await }
    });
    while fake.script.calls() < 2 {
        tokio::task::yield_now().await;
    }
    let e = rt
        .load(ModelSpec::new("c", model_file()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MemoryBudgetExceeded, "{e}");
    fake.script.release_hangs();
    ta.await.unwrap().unwrap();
    tb.await.unwrap().unwrap();
    assert!(rt.model("a", None).is_ok() && rt.model("b", None).is_ok());
}

#[tokio::test]
async fn automatic_candidates_come_from_the_builder() {
    let auto = RoutingConfig {
        warmup_runs: 1,
        timed_runs: 1,
        ..Default::default()
    };
    // Without a list, "auto" cannot route: one clear line.
    let (primary, backup) = pair();
    let rt = runtime(&[&primary, &backup]);
    let e = rt
        .load(ModelSpec::new("m", model_file()).routing(auto.clone()))
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no automatic routing candidates configured"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'));
    // With one, the model routes over it.
    let rt = Runtime::builder()
        .backend(Arc::new(primary.clone()))
        .backend(Arc::new(backup.clone()))
        .automatic_candidates(vec![
            Candidate::new("primary", pomme_core::DeviceKind::Cpu),
            Candidate::new("backup", pomme_core::DeviceKind::Cpu),
        ])
        .build()
        .unwrap();
    let view = rt
        .load(ModelSpec::new("m", model_file()).routing(auto))
        .await
        .unwrap();
    let d = view.routing.expect("routed");
    assert_eq!(d.trials.len(), 2);
    assert_eq!(d.chosen.to_string(), "primary/cpu");
    rt.infer(req("m", 1.0)).await.unwrap();
}
