//! Served transparently: a repository model whose config asks for
//! `precision = "int8"` is quantized at load into the cache, validated against
//! the float model on its validation data, and served; one whose budget cannot
//! be met is refused with the figures while the rest of the server serves.
//! Needs `digits_mlp.onnx` and `digits_test.npz` from `POMME_TEST_MODELS`.

#[path = "common/platform.rs"]
mod platform;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use pomme_runtime::Runtime;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::{ServerConfig, http};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn write_model(repo: &Path, name: &str, models: &Path, config: &str) {
    let v = repo.join(name).join("1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(models.join("digits_mlp.onnx"), v.join("model.onnx")).unwrap();
    std::fs::copy(
        models.join("digits_test.npz"),
        repo.join(name).join("val.npz"),
    )
    .unwrap();
    std::fs::write(repo.join(name).join("config.toml"), config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn int8_config_is_quantized_validated_and_served() {
    let Some(models) =
        pomme_test_support::fixtures::models_dir("int8_config_is_quantized_validated_and_served")
    else {
        return;
    };
    if !models.join("digits_test.npz").is_file() {
        eprintln!("SKIP int8_config_is_quantized_validated_and_served: digits_test.npz absent");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let cache = tmp.path().join("cache");
    let cfg = |budget: &str, scheme: &str| {
        format!(
            "backends = [\"tract\"]\nprecision = \"int8\"\n[quantization]\nscheme = \"{scheme}\"\nvalidation = \"val.npz\"\nmax_accuracy_drop = {budget}\ncache_dir = \"{}\"\n",
            cache.display()
        )
    };
    write_model(&repo, "digits_int8", &models, &cfg("0.5", "int8"));
    // A bad scheme name is a load error for that model only.
    write_model(
        &repo,
        "digits_bad",
        &models,
        "backends = [\"tract\"]\nprecision = \"int8\"\n[quantization]\nscheme = \"nonsense\"\n",
    );

    let runtime = Runtime::builder()
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()
        .unwrap();
    let args = ServerArgs {
        model_control_mode: Some("none".into()),
        ..ServerArgs::loopback(repo.clone())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    s.wait_ready(Duration::from_secs(120)).await;

    // The quantized file is in the cache, with its validation report.
    let cached: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached
            .iter()
            .any(|n| n.starts_with("model.int8.") && n.ends_with(".onnx")),
        "{cached:?}"
    );
    assert!(
        cached.iter().any(|n| n.ends_with(".report.json")),
        "{cached:?}"
    );

    let app = http::app(s.shared().clone());
    let row: Vec<f32> = (0..64).map(|i| (i % 17) as f32 / 16.0).collect();
    let body =
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]});
    let resp = app
        .clone()
        .oneshot(
            Request::post("/v2/models/digits_int8/infer")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, StatusCode::OK, "{v}");
    let probs = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "probabilities")
        .expect("probabilities output");
    let sum: f64 = probs["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((sum - 1.0).abs() < 1e-3, "softmax row sums to {sum}");

    // The misconfigured model is not served; the error names the problem.
    let resp = app
        .oneshot(
            Request::get("/v2/models/digits_bad/ready")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_ne!(resp.status(), StatusCode::OK);
    s.stop().await.unwrap();
}
