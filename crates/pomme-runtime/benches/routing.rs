//! What measured routing adds per backend call: a plain fake session against
//! the same fake behind a `RoutedSession` (breaker admit + record, output row
//! check, counters), with one and with two candidates. The fake's own work is
//! a 16-float multiply, so the difference is the routing layer.

use criterion::{Criterion, criterion_group, criterion_main};
use pomme_core::{Backend, DeviceKind, LoadOptions, ModelArtifact, ModelFormat, Tensor};
use pomme_runtime::{Candidate, Metrics, RouteMetrics, RoutingConfig, load_routed};
use pomme_test_support::FakeBackend;
use std::hint::black_box;
use std::sync::Arc;

fn routing(c: &mut Criterion) {
    let art = ModelArtifact {
        path: "fake.onnx".into(),
        format: ModelFormat::Onnx,
    };
    let x = vec![Tensor::from_vec(vec![1, 16], vec![1.0f32; 16]).unwrap()];
    let a = FakeBackend::new(16).named("a");
    let b = FakeBackend::new(16).named("b");
    let plain = a.load(&art, &LoadOptions::default()).unwrap();
    let mut s = plain.session().unwrap();
    c.bench_function("routing/plain_session", |bn| {
        bn.iter(|| black_box(s.run(x.clone()).unwrap()))
    });
    let backends: Vec<Arc<dyn Backend>> = vec![Arc::new(a), Arc::new(b)];
    let metrics = Metrics::new();
    for n in [1usize, 2] {
        let cfg = RoutingConfig {
            candidates: ["a", "b"][..n]
                .iter()
                .map(|c| Candidate::parse(c, DeviceKind::Cpu).unwrap())
                .collect(),
            ..Default::default()
        };
        let (model, _) = load_routed(
            "m",
            n as u64,
            &backends,
            &art,
            &LoadOptions::default(),
            &[],
            &cfg,
            Some(RouteMetrics::register(&metrics)),
        )
        .unwrap();
        let mut s = pomme_core::LoadedModel::session(&*model).unwrap();
        c.bench_function(&format!("routing/routed_session/{n}_candidates"), |bn| {
            bn.iter(|| black_box(s.run(x.clone()).unwrap()))
        });
    }
}

criterion_group!(benches, routing);
criterion_main!(benches);
