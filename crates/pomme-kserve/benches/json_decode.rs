//! The KServe v2 JSON request decoder's throughput on the body MobileNetV2
//! gets over HTTP JSON: one FP32 input of 1×3×224×224 written as Python's
//! `json.dumps` writes floats (shortest round-trip repr, about 1.6 MB), flat
//! and nested. Reported as bytes per second of body.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pomme_kserve::Limits;
use pomme_kserve::json::decode_request;
use std::fmt::Write;

/// A seeded body: values uniform in [-2, 2), written with Rust's shortest
/// round-trip float formatting (what Python's `repr(float)` also writes).
fn body(nested: bool) -> Bytes {
    let (c, h, w) = (3usize, 224usize, 224usize);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
    };
    let mut data = String::with_capacity(2 << 20);
    if nested {
        data.push_str("[[");
        for ci in 0..c {
            data.push_str(if ci == 0 { "[" } else { ",[" });
            for hi in 0..h {
                data.push_str(if hi == 0 { "[" } else { ",[" });
                for wi in 0..w {
                    if wi > 0 {
                        data.push_str(", ");
                    }
                    write!(data, "{}", next() as f32 as f64).unwrap();
                }
                data.push(']');
            }
            data.push(']');
        }
        data.push_str("]]");
    } else {
        data.push('[');
        for i in 0..c * h * w {
            if i > 0 {
                data.push_str(", ");
            }
            write!(data, "{}", next() as f32 as f64).unwrap();
        }
        data.push(']');
    }
    Bytes::from(format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": {data}}}]}}"#
    ))
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("kserve_json_decode");
    for (label, nested) in [("mobilenet_flat", false), ("mobilenet_nested", true)] {
        let b = body(nested);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(label, |bench| {
            bench.iter(|| decode_request(b.clone(), None, &limits).unwrap())
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
