//! Sequence requests (Triton's `sequence_id` / `sequence_start` /
//! `sequence_end`) through the whole runtime, on an accumulator backend that
//! keeps a running sum per sequence: state carries from request to request,
//! sequences stay apart, a stateful model refuses requests without a
//! sequence, and sequence requests are never batched (nor padded).

use parking_lot::Mutex;
use pomme_core::{
    Availability, Backend, DType, DeviceInfo, DeviceKind, Dim, Error, LoadOptions, LoadedModel,
    MemoryEstimate, ModelArtifact, ModelFormat, ModelInfo, ModelSignature, Precision, Result,
    SequenceControl, Session, Shape, Tensor, TensorSpec,
};
use pomme_runtime::{BatchingConfig, Candidate, InferRequest, ModelSpec, RoutingConfig, Runtime};
use pomme_test_support::FakeBackend;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WIDTH: usize = 2;

/// What the accumulator's sessions saw: (`Some(id)` for `run_sequence`,
/// `None` for `run`; rows).
type CallLog = Arc<Mutex<Vec<(Option<String>, usize)>>>;

/// A stateful backend: `y = the sequence's running sum of x` (per column,
/// over every row of every request since `sequence_start`).
#[derive(Clone, Default)]
struct Accumulator {
    /// Sequence id → running sum; dropped after `sequence_end`.
    state: Arc<Mutex<HashMap<String, Vec<f32>>>>,
    calls: CallLog,
}

struct AccModel {
    acc: Accumulator,
    signature: ModelSignature,
}

struct AccSession {
    acc: Accumulator,
}

impl Backend for Accumulator {
    fn name(&self) -> &'static str {
        "acc"
    }
    fn formats(&self) -> &[ModelFormat] {
        &[ModelFormat::Onnx]
    }
    fn availability(&self) -> Availability {
        Availability::Available
    }
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            kind: DeviceKind::Cpu,
            name: "acc".into(),
            availability: Availability::Available,
        }]
    }
    fn inspect(&self, _artifact: &ModelArtifact) -> Result<ModelInfo> {
        Ok(ModelInfo {
            signature: signature(),
            ..Default::default()
        })
    }
    fn load(
        &self,
        _artifact: &ModelArtifact,
        _options: &LoadOptions,
    ) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(AccModel {
            acc: self.clone(),
            signature: signature(),
        }))
    }
}

fn signature() -> ModelSignature {
    let shape = Shape(vec![Dim::Symbolic("batch".into()), Dim::Fixed(WIDTH)]);
    ModelSignature {
        inputs: vec![TensorSpec::new("x", DType::F32, shape.clone())],
        outputs: vec![TensorSpec::new("y", DType::F32, shape)],
    }
}

impl LoadedModel for AccModel {
    fn backend(&self) -> &'static str {
        "acc"
    }
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn memory(&self) -> MemoryEstimate {
        MemoryEstimate::default()
    }
    fn device(&self) -> DeviceKind {
        DeviceKind::Cpu
    }
    fn precision(&self) -> Precision {
        Precision::F32
    }
    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(AccSession {
            acc: self.acc.clone(),
        }))
    }
    fn is_stateful(&self) -> bool {
        true
    }
}

impl Session for AccSession {
    /// Without a sequence (routing trials only): the input itself.
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        self.acc.calls.lock().push((None, inputs[0].shape()[0]));
        Ok(inputs)
    }

    fn run_sequence(&mut self, inputs: Vec<Tensor>, seq: &SequenceControl) -> Result<Vec<Tensor>> {
        let x = &inputs[0];
        let rows = x.shape()[0];
        self.acc.calls.lock().push((Some(seq.id.clone()), rows));
        let mut state = self.acc.state.lock();
        if seq.start {
            state.insert(seq.id.clone(), vec![0.0; WIDTH]);
        }
        let Some(sum) = state.get_mut(&seq.id) else {
            return Err(Error::invalid_input(format!(
                "sequence '{}' was not started (send sequence_start first)",
                seq.id
            )));
        };
        for row in x.as_slice::<f32>()?.chunks(WIDTH) {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
        let y: Vec<f32> = sum.iter().copied().cycle().take(rows * WIDTH).collect();
        if seq.end {
            state.remove(&seq.id);
        }
        Tensor::from_vec(vec![rows, WIDTH], y).map(|t| vec![t])
    }
}

fn model_file() -> std::path::PathBuf {
    // The backends ignore the file's content, but the runtime checks that it exists.
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("pomme-seq-test-{}-{n}.onnx", std::process::id()));
    std::fs::write(&p, b"\x08\x08").unwrap();
    p
}

fn runtime(backend: Arc<dyn Backend>) -> Runtime {
    Runtime::builder()
        .max_concurrency(64)
        .backend(backend)
        .build()
        .unwrap()
}

fn req(v: f32, seq: Option<(&str, bool, bool)>) -> InferRequest {
    InferRequest {
        sequence: seq.map(|(id, start, end)| SequenceControl {
            id: id.into(),
            start,
            end,
        }),
        ..InferRequest::new(
            "m",
            vec![(
                "x".into(),
                Tensor::from_vec(vec![1, WIDTH], vec![v; WIDTH]).unwrap(),
            )],
        )
    }
}

async fn y(rt: &Runtime, r: InferRequest) -> Result<f32> {
    let out = rt.infer(r).await?;
    let y = out.output("y").unwrap().to_vec::<f32>().unwrap();
    assert!(y.iter().all(|v| *v == y[0]), "{y:?}");
    Ok(y[0])
}

/// Batching on, with a delay no sequence request should ever wait for, and
/// padding to a preferred size.
fn batching() -> BatchingConfig {
    BatchingConfig {
        max_queue_delay: Duration::from_secs(10),
        preferred_batch_sizes: vec![4],
        pad_to_preferred: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn state_accumulates_within_a_sequence_and_sequences_stay_apart() {
    let acc = Accumulator::default();
    let rt = runtime(Arc::new(acc.clone()));
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();

    assert_eq!(
        y(&rt, req(1.0, Some(("a", true, false)))).await.unwrap(),
        1.0
    );
    assert_eq!(
        y(&rt, req(10.0, Some(("b", true, false)))).await.unwrap(),
        10.0
    );
    assert_eq!(
        y(&rt, req(2.0, Some(("a", false, false)))).await.unwrap(),
        3.0
    );
    assert_eq!(
        y(&rt, req(20.0, Some(("b", false, false)))).await.unwrap(),
        30.0
    );
    assert_eq!(
        y(&rt, req(3.0, Some(("a", false, true)))).await.unwrap(),
        6.0
    );
    // `a` ended: its state is gone, `b`'s is untouched.
    assert_eq!(acc.state.lock().keys().collect::<Vec<_>>(), vec!["b"]);
    let e = y(&rt, req(4.0, Some(("a", false, false))))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("was not started"), "{e}");
    // A new start begins afresh; start and end on one request leave nothing.
    assert_eq!(
        y(&rt, req(5.0, Some(("a", true, true)))).await.unwrap(),
        5.0
    );
    assert_eq!(
        y(&rt, req(40.0, Some(("b", false, true)))).await.unwrap(),
        70.0
    );
    assert!(acc.state.lock().is_empty());
    assert!(acc.calls.lock().iter().all(|(id, _)| id.is_some()));
}

#[tokio::test]
async fn a_stateful_model_refuses_requests_without_a_sequence() {
    let acc = Accumulator::default();
    let rt = runtime(Arc::new(acc.clone()));
    rt.load(ModelSpec::new("m", model_file())).await.unwrap();
    let e = rt.infer(req(1.0, None)).await.unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("model 'm'") && m.contains("sequence_id") && !m.contains('\n'),
        "{m}"
    );
    assert!(acc.calls.lock().is_empty(), "the refused request ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_requests_run_alone_even_with_batching() {
    let acc = Accumulator::default();
    let rt = runtime(Arc::new(acc.clone()));
    let view = rt
        .load(
            ModelSpec::new("m", model_file())
                .batching(8, batching())
                .workers(3),
        )
        .await
        .unwrap();
    // One session holds the state; the padded sizes are not warmed.
    assert_eq!(view.workers, 1);
    assert!(acc.calls.lock().is_empty(), "warm-up ran: {:?}", acc.calls);

    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let rt = rt.clone();
            tokio::spawn(async move {
                let id = format!("s{i}");
                y(&rt, req(i as f32, Some((&id, true, true)))).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().unwrap(), i as f32);
    }
    // None waited for the 10 s batching delay: nothing could join them.
    assert!(started.elapsed() < Duration::from_secs(5));
    let calls = acc.calls.lock().clone();
    assert_eq!(calls.len(), 8);
    assert!(
        calls.iter().all(|(id, rows)| id.is_some() && *rows == 1),
        "batched or padded: {calls:?}"
    );
    assert_eq!(rt.stats(Some("m"))[0].execution_count, 8);
}

#[tokio::test]
async fn a_stateless_model_answers_sequence_requests_unpadded() {
    let fake = FakeBackend::new(WIDTH);
    let rt = runtime(Arc::new(fake.clone()));
    let cfg = BatchingConfig {
        max_queue_delay: Duration::ZERO,
        ..batching()
    };
    rt.load(ModelSpec::new("m", model_file()).batching(8, cfg))
        .await
        .unwrap();
    let warm_runs = fake.script.batches.lock().len();
    assert_eq!(warm_runs, 2, "sizes 4 and 8 warmed");
    // The sequence is ignored (`run_sequence`'s default), and the request
    // runs at its own size; without a sequence it is padded to 4 rows.
    assert_eq!(
        y(&rt, req(1.5, Some(("42", true, false)))).await.unwrap(),
        3.0
    );
    assert_eq!(y(&rt, req(1.5, None)).await.unwrap(), 3.0);
    assert_eq!(fake.script.batches.lock()[warm_runs..], [1, 4]);
}

#[tokio::test]
async fn measured_routing_refuses_a_stateful_model() {
    let rt = runtime(Arc::new(Accumulator::default()));
    let routing = RoutingConfig {
        candidates: vec![Candidate::parse("acc", DeviceKind::Cpu).unwrap()],
        warmup_runs: 1,
        timed_runs: 1,
        ..Default::default()
    };
    let e = rt
        .load(ModelSpec::new("m", model_file()).routing(routing))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    assert!(
        e.to_string().contains("stateful") && e.to_string().contains("routing = \"off\""),
        "{e}"
    );
}
