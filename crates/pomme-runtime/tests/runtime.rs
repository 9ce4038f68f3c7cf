//! The runtime end to end over the scriptable fake backend: batching, deadlines,
//! cancellation, faults, memory budget, accounting.

use pomme_core::{DType, Error, Tensor};
use pomme_runtime::{BatchingConfig, InferRequest, ModelSpec, Runtime};
use pomme_test_support::{Behaviour, FakeBackend};
use std::sync::Arc;
use std::time::Duration;

fn model_file() -> std::path::PathBuf {
    // The fake ignores the file's content, but the runtime checks that it exists.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("pomme-rt-test-{}-{n}.onnx", std::process::id()));
    std::fs::write(&p, b"\x08\x08").unwrap();
    p
}

fn runtime(fake: &FakeBackend) -> Runtime {
    Runtime::builder()
        .max_concurrency(64)
        .memory_budget_mb(1)
        .backend(Arc::new(fake.clone()))
        .build()
        .unwrap()
}

fn row(v: f32, width: usize) -> Tensor {
    Tensor::from_vec(vec![1, width], vec![v; width]).unwrap()
}

fn req(v: f32) -> InferRequest {
    InferRequest::new("m", vec![("x".into(), row(v, 4))])
}

#[tokio::test]
async fn runs_and_reports() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let view = rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    assert_eq!(view.backend, "fake");
    let out = rt.infer(req(1.5)).await.unwrap();
    assert_eq!(
        out.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![3.0; 4]
    );
    let stats = rt.stats(Some("m"));
    assert_eq!(stats[0].inference_count, 1);
    assert_eq!(stats[0].success.count, 1);
    let metrics = rt.encode_metrics();
    assert!(
        metrics.contains("pomme_request_success_total{model=\"m\",version=\"1\"} 1"),
        "{metrics}"
    );
    assert_eq!(rt.performance_summary().total_inferences, 1);
}

#[tokio::test]
async fn bad_inputs_are_named() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    let e = rt
        .infer(InferRequest::new("m", vec![("x".into(), row(1.0, 5))]))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("shape [1,5], expected [batch,4]"),
        "{e}"
    );
    let e = rt
        .infer(InferRequest::new("nope", vec![]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ModelNotFound(_)));
    let mut r = req(1.0);
    r.outputs = Some(vec!["z".into()]);
    assert!(
        rt.infer(r)
            .await
            .unwrap_err()
            .to_string()
            .contains("unknown output 'z'")
    );
    assert_eq!(
        fake.script.calls.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing invalid reached the engine"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_batching_groups_and_splits() {
    let fake = FakeBackend::new(4);
    // The first call is slow, so the next 8 requests queue up behind it.
    fake.then(Behaviour::Slow(Duration::from_millis(100)), 1);
    let rt = runtime(&fake);
    let cfg = BatchingConfig {
        max_queue_delay: Duration::from_millis(5),
        ..Default::default()
    };
    rt.load(ModelSpec::new("m", model_file()).batching(8, cfg))
        .await
        .unwrap();
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req(0.0)).await }
    });
    while fake.script.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let tasks: Vec<_> = (1..=8)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.infer(req(i as f32)).await })
        })
        .collect();
    first.await.unwrap().unwrap();
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        let y = out.output("y").unwrap();
        assert_eq!(y.shape(), &[1, 4]);
        assert_eq!(
            y.to_vec::<f32>().unwrap(),
            vec![(i + 1) as f32 * 2.0; 4],
            "request {i} got another's rows"
        );
    }
    let batches = fake.script.batches.lock().clone();
    assert_eq!(batches[0], 1);
    assert_eq!(batches[1..].iter().sum::<usize>(), 8);
    assert!(
        batches.len() <= 3,
        "expected the 8 queued requests in few batches: {batches:?}"
    );
    let s = &rt.stats(Some("m"))[0];
    assert_eq!(s.inference_count, 9);
    assert_eq!(s.execution_count as usize, batches.len());
}

#[tokio::test]
async fn failures_panics_and_wrong_shapes_become_errors() {
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Fail(Error::InferenceFailed("boom".into())), 1)
        .then(Behaviour::Panic, 1)
        .then(Behaviour::WrongShape, 1);
    let rt = runtime(&fake);
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    assert!(matches!(rt.infer(req(1.0)).await, Err(Error::InferenceFailed(m)) if m == "boom"));
    assert!(matches!(rt.infer(req(1.0)).await, Err(Error::Internal(m)) if m.contains("panicked")));
    assert!(
        matches!(rt.infer(req(1.0)).await, Err(Error::InferenceFailed(m)) if m.contains("rows"))
    );
    // The worker survived all three.
    assert!(rt.infer(req(1.0)).await.is_ok());
    assert_eq!(rt.admission().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_cancellation_skip_the_engine() {
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Slow(Duration::from_millis(200)), 1);
    let rt = runtime(&fake);
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    let busy = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req(0.0)).await }
    });
    while fake.script.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // Queued behind the slow call with a short deadline: times out, never runs.
    let mut late = req(1.0);
    late.timeout = Some(Duration::from_millis(20));
    assert!(matches!(rt.infer(late).await, Err(Error::Timeout(_))));
    // Queued, then abandoned by its caller: never runs.
    let abandoned = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req(2.0)).await }
    });
    tokio::task::yield_now().await;
    abandoned.abort();
    busy.await.unwrap().unwrap();
    rt.infer(req(3.0)).await.unwrap();
    let batches = fake.script.batches.lock().clone();
    assert_eq!(
        batches.len(),
        2,
        "only the slow call and the last one ran: {batches:?}"
    );
    assert_eq!(rt.admission().in_flight(), 0);
}

#[tokio::test]
async fn memory_budget_refuses_and_releases() {
    let big = FakeBackend::new(4).weight_bytes(700 * 1024);
    let rt = runtime(&big);
    rt.load(ModelSpec::new("a", model_file())).await.unwrap();
    let e = rt
        .load(ModelSpec::new("b", model_file()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::MemoryBudgetExceeded(_)), "{e}");
    assert!(rt.admission().memory_used() <= 1024 * 1024);
    rt.unload("a").await.unwrap();
    assert_eq!(rt.admission().memory_used(), 0);
    rt.load(ModelSpec::new("b", model_file())).await.unwrap();
    let e = rt
        .load(ModelSpec::new("b", model_file()))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ModelAlreadyLoaded(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_rejects_and_every_request_is_accounted() {
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Slow(Duration::from_millis(50)), 1);
    let rt = runtime(&fake);
    let cfg = BatchingConfig {
        max_queue_size: 4,
        max_queue_delay: Duration::from_millis(1),
        ..Default::default()
    };
    rt.load(ModelSpec::new("m", model_file()).batching(2, cfg))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.infer(req(i as f32)).await })
        })
        .collect();
    let (mut ok, mut rejected, mut other) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::ResourceLimit(_)) => rejected += 1,
            Err(_) => other += 1,
        }
    }
    assert_eq!(ok + rejected + other, 40);
    assert_eq!(other, 0);
    assert!(rejected > 0 && ok > 0, "ok {ok}, rejected {rejected}");
    let s = &rt.stats(Some("m"))[0];
    assert_eq!(s.success.count, ok);
    assert_eq!(rt.admission().in_flight(), 0);
}

#[tokio::test]
async fn unknown_backend_and_shutdown() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let e = rt
        .load(ModelSpec::new("m", model_file()).backends(&["cuda-magic"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not compiled in"), "{e}");
    rt.load(ModelSpec::new("m2", model_file())).await.unwrap();
    assert!(rt.drain(Duration::from_secs(1)).await);
    assert!(!rt.is_ready());
    assert!(matches!(
        rt.infer(InferRequest::new("m2", vec![("x".into(), row(1.0, 4))]))
            .await,
        Err(Error::Unavailable(_))
    ));
    let _ = DType::F32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn padded_batches_run_at_preferred_sizes_and_answer_real_rows() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let cfg = BatchingConfig {
        max_queue_delay: Duration::from_millis(5),
        preferred_batch_sizes: vec![4],
        pad_to_preferred: true,
        ..Default::default()
    };
    rt.load(ModelSpec::new("m", model_file()).batching(8, cfg))
        .await
        .unwrap();
    // Load warmed each size a batch can run at: the preferred 4 and the max 8.
    assert_eq!(*fake.script.batches.lock(), vec![4, 8]);
    // One slow run, so the next 3 requests queue up behind it.
    fake.then(Behaviour::Slow(Duration::from_millis(100)), 1);
    let first = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req(0.5)).await }
    });
    while fake.script.calls.load(std::sync::atomic::Ordering::SeqCst) == 2 {
        tokio::task::yield_now().await;
    }
    let tasks: Vec<_> = (1..=3)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move { rt.infer(req(i as f32)).await })
        })
        .collect();
    let y = first.await.unwrap().unwrap();
    assert_eq!(
        y.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![1.0; 4]
    );
    for (i, t) in tasks.into_iter().enumerate() {
        let out = t.await.unwrap().unwrap();
        let y = out.output("y").unwrap();
        assert_eq!(y.shape(), &[1, 4], "padding rows leaked into a reply");
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![(i + 1) as f32 * 2.0; 4]);
    }
    let batches = fake.script.batches.lock().clone();
    assert!(
        batches[2..].iter().all(|&b| b == 4),
        "every run padded to the preferred size: {batches:?}"
    );
    // Statistics count the requests' rows, not the padding.
    assert_eq!(rt.stats(Some("m"))[0].inference_count, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_warming_leaves_the_worker_serving() {
    let fake = FakeBackend::new(4);
    // The first warm-up run panics: the session is rebuilt and the thread serves.
    fake.then(Behaviour::Panic, 1);
    let rt = runtime(&fake);
    let cfg = BatchingConfig {
        max_queue_delay: Duration::from_millis(1),
        preferred_batch_sizes: vec![4],
        pad_to_preferred: true,
        ..Default::default()
    };
    rt.load(ModelSpec::new("m", model_file()).batching(8, cfg))
        .await
        .unwrap();
    let mut r = req(1.0);
    r.timeout = Some(Duration::from_secs(10));
    let out = rt.infer(r).await.unwrap();
    assert_eq!(
        out.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![2.0; 4]
    );
}

#[tokio::test]
async fn spins_are_set_on_the_builder_and_zero_turns_them_off() {
    let fake = FakeBackend::new(4);
    let rt = Runtime::builder()
        .worker_spin(Duration::ZERO)
        .reply_spin(Duration::ZERO)
        .backend(Arc::new(fake.clone()))
        .build()
        .unwrap();
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    for i in 0..3 {
        rt.infer(req(i as f32)).await.unwrap();
    }
    let rt = Runtime::builder()
        .worker_spin(Duration::from_millis(1))
        .reply_spin(Duration::from_millis(1))
        .backend(Arc::new(fake))
        .build()
        .unwrap();
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    rt.infer(req(1.0)).await.unwrap();
    let s = rt.performance_summary();
    assert_eq!((s.total_inferences, s.failed_inferences), (1, 0));
}

#[tokio::test]
async fn unknown_backend_options_are_one_line_errors() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let mut spec = ModelSpec::new("m", model_file());
    spec.load.extra.insert("shape_sesions".into(), "8".into());
    let e = rt.load(spec).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e}");
    assert!(
        e.to_string()
            .contains("unknown backend option 'shape_sesions'; valid options are fake: none"),
        "{e}"
    );
    assert_eq!(fake.script.calls(), 0);
}

/// A model one engine's parser refuses ("invalid model") goes to the next
/// backend reading the format; when every one refuses, the first error is
/// kept, with each backend's reason.
#[tokio::test]
async fn a_model_one_engine_cannot_parse_loads_on_the_next() {
    let picky = FakeBackend::new(4)
        .named("picky")
        .failing_load(Error::InvalidModelFormat(
            "attribute softcap is not supported".into(),
        ));
    let other = FakeBackend::new(4).named("other");
    let rt = Runtime::builder()
        .backend(Arc::new(picky.clone()))
        .backend(Arc::new(other))
        .build()
        .unwrap();
    let view = rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    assert_eq!(view.backend, "other");
    assert!(rt.infer(req(1.0)).await.is_ok());

    let also_picky = FakeBackend::new(4)
        .named("also")
        .failing_load(Error::CompilationFailed("operator Foo".into()));
    let rt = Runtime::builder()
        .backend(Arc::new(picky))
        .backend(Arc::new(also_picky))
        .build()
        .unwrap();
    let e = rt
        .load(ModelSpec::new("m", model_file()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), pomme_core::ErrorKind::InvalidModelFormat);
    let msg = e.to_string();
    assert!(
        msg.contains("picky: attribute softcap") && msg.contains("also: operator Foo"),
        "{msg}"
    );
}

fn warmup(count: usize) -> pomme_runtime::WarmupSample {
    pomme_runtime::WarmupSample {
        name: "w".into(),
        batch_size: 2,
        count,
        inputs: vec![(
            "x".into(),
            pomme_runtime::WarmupInput {
                dims: None,
                dtype: None,
                data: pomme_runtime::WarmupData::Random,
            },
        )],
    }
}

/// Triton's `model_warmup`: every worker runs each sample its count of
/// times before the version is ready, and the time is reported.
#[tokio::test]
async fn configured_warmup_runs_on_every_worker_before_ready() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let mut spec = ModelSpec::new("m", model_file());
    spec.workers = 2;
    spec.warmup = vec![warmup(3)];
    let view = rt.load(spec).await.unwrap();
    assert_eq!(fake.script.calls(), 6, "2 workers x 3 runs");
    assert!(view.warmup_ms.is_some());
    let metrics = rt.encode_metrics();
    assert!(
        metrics.contains("pomme_model_warmup_duration_seconds{model=\"m\",version=\"1\"}"),
        "{metrics}"
    );
    assert!(rt.infer(req(1.0)).await.is_ok());
}

/// A warm-up that fails fails the load, naming the sample and the cause;
/// nothing is left serving.
#[tokio::test]
async fn a_failing_warmup_fails_the_load() {
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Fail(Error::InferenceFailed("boom".into())), 1);
    let rt = runtime(&fake);
    let mut spec = ModelSpec::new("m", model_file());
    spec.warmup = vec![warmup(1)];
    let e = rt.load(spec).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("model_warmup 'w' failed") && msg.contains("boom"),
        "{msg}"
    );
    assert!(rt.infer(req(1.0)).await.is_err());
    // The same spec loads once the engine behaves.
    let mut spec = ModelSpec::new("m", model_file());
    spec.warmup = vec![warmup(1)];
    assert!(rt.load(spec).await.is_ok());
}

/// Triton's response cache: the same request is answered from memory (no
/// second execution), counted as a hit; any other byte is a miss; sequence
/// requests never use it; statistics and metrics count both.
#[tokio::test]
async fn response_cache_answers_repeats_without_running() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    let mut spec = ModelSpec::new("m", model_file());
    spec.response_cache = true;
    rt.load(spec).await.unwrap();
    let a = rt.infer(req(1.0)).await.unwrap();
    let b = rt.infer(req(1.0)).await.unwrap();
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(fake.script.calls(), 1, "the repeat came from the cache");
    rt.infer(req(2.0)).await.unwrap();
    assert_eq!(fake.script.calls(), 2);
    let s = &rt.stats(Some("m"))[0];
    assert_eq!((s.cache_hit.count, s.cache_miss.count), (1, 2));
    assert_eq!(s.success.count, 3);
    assert_eq!(s.execution_count, 2);
    let metrics = rt.encode_metrics();
    for line in [
        "pomme_cache_hits_total{model=\"m\",version=\"1\"} 1",
        "pomme_cache_misses_total{model=\"m\",version=\"1\"} 2",
        "pomme_cache_entries 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // A failed answer is not cached.
    fake.then(Behaviour::Fail(Error::InferenceFailed("boom".into())), 1);
    assert!(rt.infer(req(3.0)).await.is_err());
    assert!(rt.infer(req(3.0)).await.is_ok());
    // Unloading drops the version's entries.
    rt.unload("m").await.unwrap();
    let metrics = rt.encode_metrics();
    assert!(metrics.contains("pomme_cache_entries 0"), "{metrics}");
}

/// Without a budget, a model asking for the cache fails to load, saying so.
#[tokio::test]
async fn response_cache_needs_a_budget() {
    let fake = FakeBackend::new(4);
    let rt = Runtime::builder()
        .response_cache_mb(0)
        .backend(Arc::new(fake))
        .build()
        .unwrap();
    let mut spec = ModelSpec::new("m", model_file());
    spec.response_cache = true;
    let e = rt.load(spec).await.unwrap_err().to_string();
    assert!(e.contains("response_cache_mb = 0"), "{e}");
}

/// The memory guard refuses a load the system cannot hold, with the
/// figures, before any backend touches the file; with room it loads.
#[tokio::test]
async fn memory_guard_refuses_with_the_figures() {
    let fake = FakeBackend::new(4);
    let file = model_file(); // 2 bytes
    let starved = Runtime::builder()
        .backend(Arc::new(fake.clone()))
        .memory_guard(Arc::new(|| Some(1024 * 1024)), 2)
        .build()
        .unwrap();
    let e = starved.load(ModelSpec::new("m", &file)).await.unwrap_err();
    assert_eq!(e.kind(), pomme_core::ErrorKind::MemoryBudgetExceeded);
    let msg = e.to_string();
    assert!(
        msg.contains("2 MiB are kept in reserve")
            && msg.contains("only 1.0 MiB of memory is available"),
        "{msg}"
    );
    let roomy = Runtime::builder()
        .backend(Arc::new(fake.clone()))
        .memory_guard(Arc::new(|| Some(64 * 1024 * 1024)), 2)
        .build()
        .unwrap();
    assert!(roomy.load(ModelSpec::new("m", &file)).await.is_ok());
    // An unknown figure keeps the guard out of the way.
    let unknown = Runtime::builder()
        .backend(Arc::new(fake))
        .memory_guard(Arc::new(|| None), 1 << 30)
        .build()
        .unwrap();
    assert!(unknown.load(ModelSpec::new("m", &file)).await.is_ok());
}

/// Idle time is per model, from its last request; a request in flight
/// keeps it out of the idle list.
#[tokio::test]
async fn idle_models_are_reported_with_their_idle_time() {
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    let before = rt.idle_models();
    assert_eq!(before.len(), 1);
    fake.then(Behaviour::Hang, 1);
    let sent = std::time::Instant::now();
    let busy = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.infer(req(1.0)).await })
    };
    // Wait (bounded) until the request is in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !rt.idle_models().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never started"
        );
        tokio::task::yield_now().await;
    }
    fake.script.release_hangs();
    busy.await.unwrap().unwrap();
    let after = rt.idle_models();
    assert_eq!(after.len(), 1);
    // Counted from the last request, not the load.
    assert!(after[0].1 <= sent.elapsed(), "{after:?}");
}

/// Triton's ensembles: a pipeline of two models, each step an ordinary
/// request to its model (its own statistics), the whole counted too; a
/// failing step names itself; unloading removes the pipeline.
#[tokio::test]
async fn pipelines_chain_models_and_count_each_step() {
    use pomme_core::{ModelSignature, Shape, TensorSpec};
    use pomme_runtime::{PipelineSpec, PipelineStep};
    let fake = FakeBackend::new(4);
    let rt = runtime(&fake);
    rt.load(ModelSpec::new("a", model_file())).await.unwrap();
    rt.load(ModelSpec::new("b", model_file())).await.unwrap();
    let spec_t = |n: &str| TensorSpec::new(n, DType::F32, Shape::fixed(&[1, 4]));
    let step = |m: &str, i: &str, o: &str| PipelineStep {
        model: m.into(),
        version: None,
        inputs: vec![("x".into(), i.into())],
        outputs: vec![("y".into(), o.into())],
    };
    rt.load_pipeline(PipelineSpec {
        name: "p".into(),
        signature: ModelSignature {
            inputs: vec![spec_t("IN")],
            outputs: vec![spec_t("OUT")],
        },
        steps: vec![step("b", "MID", "OUT"), step("a", "IN", "MID")],
    })
    .unwrap();
    let out = rt
        .infer(InferRequest::new("p", vec![("IN".into(), row(1.5, 4))]))
        .await
        .unwrap();
    assert_eq!(
        out.output("OUT").unwrap().to_vec::<f32>().unwrap(),
        vec![6.0; 4]
    );
    let stats = rt.stats(None);
    let count = |n: &str| stats.iter().find(|s| s.name == n).unwrap().success.count;
    assert_eq!((count("p"), count("a"), count("b")), (1, 1, 1));
    assert!(rt.models().iter().any(|m| m.name == "p"));
    assert_eq!(rt.model("p", None).unwrap().backend, "pipeline");
    // A step that fails names the pipeline and the step.
    fake.then(Behaviour::Fail(Error::InferenceFailed("boom".into())), 1);
    let e = rt
        .infer(InferRequest::new("p", vec![("IN".into(), row(1.0, 4))]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pipeline 'p' step 2 (a)") && e.contains("boom"),
        "{e}"
    );
    // A missing step model is reported per request.
    rt.unload("b").await.unwrap();
    let e = rt
        .infer(InferRequest::new("p", vec![("IN".into(), row(1.0, 4))]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("step 1 (b)"), "{e}");
    rt.unload("p").await.unwrap();
    assert!(rt.model("p", None).is_err());
}
