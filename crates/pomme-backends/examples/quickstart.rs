//! Load the shipped model through the runtime façade and run one request.
//!
//! `cargo run -p pomme-backends --example quickstart`

use pomme_core::Tensor;
use pomme_runtime::{InferRequest, ModelSpec, Runtime};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/add_one.onnx");
    let rt = Runtime::builder()
        .max_concurrency(4)
        .memory_budget_mb(1024)
        .default_timeout(Duration::from_secs(5))
        .backends(pomme_backends::compiled())
        .build()?;
    let view = rt.load(ModelSpec::new("add_one", model)).await?;
    println!(
        "loaded {} v{} on {}/{}",
        view.name, view.version, view.backend, view.device
    );
    let x = Tensor::from_vec(vec![1, 4], vec![1.0f32, 2.0, 3.0, 4.0])?;
    let out = rt
        .infer(InferRequest::new("add_one", vec![("x".into(), x)]))
        .await?;
    println!(
        "y = {:?}",
        out.output("y")
            .expect("model has output y")
            .to_vec::<f32>()?
    );
    let s = rt.performance_summary();
    println!(
        "{} inference(s), p50 {} µs",
        s.total_inferences, s.p50_latency_us
    );
    Ok(())
}
