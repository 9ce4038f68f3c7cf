//! Measures HTTP JSON infer-request decoding for a MobileNet-sized input
//! (f32[1,3,224,224], nested arrays, ~1.6 MB), against parsing the same body
//! into a `serde_json::Value` tree (what a generic decoder starts with).

use bytes::Bytes;
use pomme_server::kserve::{Limits, json};
use std::time::Instant;

fn main() {
    let n = 3 * 224 * 224;
    let vals: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
        .collect();
    let rows: Vec<String> = vals
        .chunks(224)
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let planes: Vec<String> = rows
        .chunks(224)
        .map(|p| format!("[{}]", p.join(",")))
        .collect();
    let body = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,3,224,224],"datatype":"FP32","data":[[{}]]}}]}}"#,
        planes.join(",")
    );
    let body = Bytes::from(body);
    let limits = Limits::default();
    let iters = 30;
    let time = |f: &dyn Fn()| {
        f();
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        t.elapsed().as_secs_f64() * 1e3 / iters as f64
    };
    let ours = time(&|| {
        let r = json::decode_request(body.clone(), None, &limits).unwrap();
        assert_eq!(r.inputs[0].1.len(), n);
    });
    let value = time(&|| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["inputs"].is_array());
    });
    println!(
        "body {:.2} MB: pomme decode {ours:.2} ms/request ({:.0} MB/s); serde_json::Value parse alone {value:.2} ms",
        body.len() as f64 / 1e6,
        body.len() as f64 / 1e3 / ours
    );
}
