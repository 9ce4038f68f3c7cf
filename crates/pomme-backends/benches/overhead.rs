//! The runtime's overhead: the same model through raw tract and through
//! `Runtime::infer`, in one run; prints the ratio.
//!
//! Model: `$POMME_BENCH_MODEL` (default: MobileNetV2 from the shared models),
//! batch 1, tract CPU backend. The raw side runs a tract state over the very
//! plan pomme runs for these inputs (specialized to batch 1, from
//! `TractModel::plan_for`) on inputs already converted to tract values, so the
//! ratio is what pomme adds: admission, queueing, batching, tensor copies.
#![expect(
    clippy::disallowed_methods,
    reason = "the bench's model is chosen with POMME_BENCH_MODEL"
)]

use criterion::{Criterion, criterion_group, criterion_main};
use pomme_core::{Backend, DType, LoadOptions, Tensor};
use pomme_runtime::{InferRequest, ModelSpec, Runtime};
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("POMME_BENCH_MODEL") {
        return Some(PathBuf::from(p));
    }
    let dir = pomme_test_support::fixtures::models_dir("overhead bench")?;
    Some(dir.join("mobilenet_v2.onnx"))
}

fn input_for(sig: &pomme_core::ModelSignature) -> Vec<(String, Tensor)> {
    sig.inputs
        .iter()
        .map(|s| {
            let shape: Vec<usize> = s
                .shape
                .dims()
                .iter()
                .map(|d| d.fixed().unwrap_or(1))
                .collect();
            let n: usize = shape.iter().product();
            let t = match s.dtype {
                DType::F32 => {
                    Tensor::from_vec(shape, (0..n).map(|i| (i % 255) as f32 / 255.0).collect())
                        .unwrap()
                }
                DType::I64 => Tensor::from_vec(shape, vec![1i64; n]).unwrap(),
                other => Tensor::zeros(other, shape).unwrap(),
            };
            (s.name.clone(), t)
        })
        .collect()
}

fn overhead(c: &mut Criterion) {
    let Some(path) = model_path() else { return };
    let backend = pomme_backends::by_name("tract").expect("tract compiled in");
    let artifact = pomme_core::ModelArtifact {
        path: path.clone(),
        format: pomme_core::ModelFormat::Onnx,
    };
    let model = pomme_tract::TractBackend::new()
        .load_tract(&artifact, &LoadOptions::default())
        .expect("model loads");
    let inputs = input_for(pomme_core::LoadedModel::signature(model.as_ref()));
    let ordered: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    let values = model.tract_inputs(&ordered).expect("inputs convert");
    let mut state = model
        .plan_for(&ordered)
        .expect("plan for batch 1")
        .spawn()
        .expect("tract state");

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt = Runtime::builder()
        .backends(vec![backend.clone() as Arc<dyn Backend>])
        .build()
        .unwrap();
    tokio
        .block_on(rt.load(ModelSpec::new("m", &path).backends(&["tract"])))
        .unwrap();

    let mut group = c.benchmark_group("runtime_overhead");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("raw_engine", |b| {
        b.iter(|| black_box(state.run(values.clone()).unwrap()))
    });
    group.bench_function("runtime_infer", |b| {
        b.iter(|| {
            let req = InferRequest::new("m", inputs.clone());
            black_box(tokio.block_on(rt.infer(req)).unwrap())
        })
    });
    group.finish();

    // Interleaved medians for the ratio, so drift hits both sides alike.
    let (mut raw, mut full) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let t = Instant::now();
        black_box(state.run(values.clone()).unwrap());
        raw.push(t.elapsed());
        let t = Instant::now();
        black_box(
            tokio
                .block_on(rt.infer(InferRequest::new("m", inputs.clone())))
                .unwrap(),
        );
        full.push(t.elapsed());
    }
    raw.sort();
    full.sort();
    let (r, f) = (raw[raw.len() / 2], full[full.len() / 2]);
    println!(
        "runtime_overhead: model {} raw median {:.3} ms, Runtime::infer median {:.3} ms, ratio {:.4}",
        path.file_name().unwrap().to_string_lossy(),
        r.as_secs_f64() * 1e3,
        f.as_secs_f64() * 1e3,
        f.as_secs_f64() / r.as_secs_f64()
    );
}

criterion_group!(benches, overhead);
criterion_main!(benches);
