//! The KServe v2 JSON request decoder's throughput on the body MobileNetV2
//! gets over HTTP JSON: one FP32 input of 1×3×224×224. Three bodies:
//!
//! - `mobilenet_flat` / `mobilenet_nested`: values uniform in [-2, 2), f32
//!   widened to f64 and written as shortest round-trip text (17 significant
//!   digits mostly, about 3.1 MB), flat and nested as the shape;
//! - `mobilenet_numpy`: what a Python client really sends, an ImageNet-
//!   normalised image (`(img / 255 - mean) / std` in float32), `.tolist()`
//!   (nested lists of f64) through `json.dumps` (Python's `repr` of each
//!   float, `", "` separators).
//!
//! Reported as bytes per second of body.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pomme_kserve::Limits;
use pomme_kserve::json::decode_request;

const C: usize = 3;
const H: usize = 224;
const W: usize = 224;

/// A seeded xorshift generator.
fn rng() -> impl FnMut() -> u64 {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// Writes `value(c, h, w)` for every element, flat or nested 1×C×H×W.
fn data_json(nested: bool, mut value: impl FnMut(usize) -> String) -> String {
    let mut data = String::with_capacity(4 << 20);
    if nested {
        data.push('[');
    }
    data.push('[');
    for ci in 0..C {
        if nested {
            data.push_str(if ci == 0 { "[" } else { ", [" });
        }
        for hi in 0..H {
            if nested {
                data.push_str(if hi == 0 { "[" } else { ", [" });
            }
            for wi in 0..W {
                let first = if nested { wi == 0 } else { ci + hi + wi == 0 };
                if !first {
                    data.push_str(", ");
                }
                data.push_str(&value(ci));
            }
            if nested {
                data.push(']');
            }
        }
        if nested {
            data.push(']');
        }
    }
    data.push(']');
    if nested {
        data.push(']');
    }
    data
}

fn request(data: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"inputs": [{{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": {data}}}]}}"#
    ))
}

/// Values uniform in [-2, 2) as f32, written with Rust's shortest
/// round-trip formatting of the widened f64.
fn uniform_body(nested: bool) -> Bytes {
    let mut next = rng();
    request(&data_json(nested, |_| {
        let v = ((next() >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0;
        format!("{}", v as f32 as f64)
    }))
}

/// Python's `repr(float)`: the shortest round-trip digits, in fixed notation
/// for exponents in [-4, 16) (with `.0` when integral), otherwise `1.5e-05`.
fn py_repr(v: f64) -> String {
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let s = format!("{v}");
        if s.contains('.') { s } else { s + ".0" }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A random 8-bit image, normalised with ImageNet's mean and std in float32
/// (as numpy computes it), then written as `json.dumps(x.tolist())` does.
fn numpy_body() -> Bytes {
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut next = rng();
    request(&data_json(true, |c| {
        let px = (next() >> 56) as u8;
        let v = (px as f32 / 255.0 - MEAN[c]) / STD[c];
        py_repr(v as f64)
    }))
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("kserve_json_decode");
    let bodies = [
        ("mobilenet_flat", uniform_body(false)),
        ("mobilenet_nested", uniform_body(true)),
        ("mobilenet_numpy", numpy_body()),
    ];
    for (label, b) in bodies {
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
