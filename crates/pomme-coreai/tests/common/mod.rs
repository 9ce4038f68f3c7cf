//! The Core AI fixtures (`models/coreai`) and their recorded cases
//! (`expected.json`), shared by the runtime and shim tests.

use pomme_core::{ModelArtifact, ModelFormat, Tensor};
use pomme_test_support::fixtures::repo_models;
use serde_json::Value;

/// `models/coreai/<name>.aimodel`.
pub fn fixture(name: &str) -> ModelArtifact {
    ModelArtifact {
        path: repo_models().join("coreai").join(format!("{name}.aimodel")),
        format: ModelFormat::CoreAi,
    }
}

/// `models/coreai/expected.json`.
pub fn expected() -> Value {
    let text = std::fs::read_to_string(repo_models().join("coreai/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A tensor recorded in expected.json (`dtype`, `shape`, flat `data`).
pub fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"].as_array().unwrap();
    let f = |d: &Value| d.as_f64().unwrap();
    match v["dtype"].as_str().unwrap() {
        "float32" => Tensor::from_vec(shape, data.iter().map(|d| f(d) as f32).collect()),
        "float16" => Tensor::from_vec(
            shape,
            data.iter().map(|d| half::f16::from_f64(f(d))).collect(),
        ),
        "bfloat16" => Tensor::from_vec(
            shape,
            data.iter().map(|d| half::bf16::from_f64(f(d))).collect(),
        ),
        "int32" => Tensor::from_vec(
            shape,
            data.iter().map(|d| d.as_i64().unwrap() as i32).collect(),
        ),
        other => panic!("dtype {other} in expected.json"),
    }
    .unwrap()
}
