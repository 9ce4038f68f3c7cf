//! Several compute workers per model: each owns a session and takes work from
//! the model's shared queue, so one long execution does not hold up the rest.

use pomme_core::Tensor;
use pomme_runtime::{InferRequest, ModelSpec, Runtime};
use pomme_test_support::{Behaviour, FakeBackend};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn model_file() -> std::path::PathBuf {
    // The fake ignores the file's content, but the runtime checks that it exists.
    let p = std::env::temp_dir().join(format!("pomme-workers-test-{}.onnx", std::process::id()));
    std::fs::write(&p, b"\x08\x08").unwrap();
    p
}

fn req(v: f32) -> InferRequest {
    InferRequest::new(
        "m",
        vec![(
            "x".into(),
            Tensor::from_vec(vec![1, 4], vec![v; 4]).unwrap(),
        )],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_serves_while_the_first_is_busy() {
    let fake = FakeBackend::new(4);
    // The first execution takes far longer than anything else here.
    fake.then(Behaviour::Slow(Duration::from_secs(3)), 1);
    let rt = Runtime::builder()
        .backend(Arc::new(fake.clone()))
        .build()
        .unwrap();
    let view = rt
        .load(ModelSpec::new("m", model_file()).workers(2))
        .await
        .unwrap();
    assert_eq!(view.workers, 2);

    let slow = tokio::spawn({
        let rt = rt.clone();
        async move { rt.infer(req(1.0)).await }
    });
    // Wait (without a clock) until a worker is inside the slow execution.
    while fake.script.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // With one worker this would wait for the slow one; with two it does not.
    let quick = rt.infer(req(2.0)).await.unwrap();
    assert_eq!(
        quick.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![4.0; 4]
    );
    assert!(
        !slow.is_finished(),
        "the quick request finished only after the slow one: a single worker served both"
    );
    let out = slow.await.unwrap().unwrap();
    assert_eq!(
        out.output("y").unwrap().to_vec::<f32>().unwrap(),
        vec![2.0; 4]
    );
    assert_eq!(rt.stats(Some("m"))[0].execution_count, 2);
}
