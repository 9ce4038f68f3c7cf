//! The model repository end to end: version policies (every selected version
//! loaded and addressable over HTTP `/versions/V/...` and gRPC
//! `model_version`, unknown versions → 404 / NOT_FOUND), declared
//! inputs/outputs checked against the model at load, and the per-model
//! memory budget. Real server on ephemeral ports, tract over the shipped
//! `add_one` (`x: f32[batch, 4]`, `y = x + 1`) and `identity_f32`
//! (`x: f32[batch, 16]`, `y = x`) fixtures.

#[path = "common/platform.rs"]
mod platform;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use pomme_runtime::{ModelState, Runtime};
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::{RunningServer, ServerConfig, http, proto, repository};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

fn shipped(name: &str) -> PathBuf {
    pomme_test_support::fixtures::repo_models().join(name)
}

fn version(repo: &Path, model: &str, v: u64, file: &str) {
    let dir = repo.join(model).join(v.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(shipped(file), dir.join("model.onnx")).unwrap();
}

fn tract() -> Runtime {
    Runtime::builder()
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()
        .unwrap()
}

async fn start(repo: &Path, mode: &str, runtime: Runtime) -> RunningServer {
    let args = ServerArgs {
        model_control_mode: Some(mode.into()),
        ..ServerArgs::loopback(repo.to_path_buf())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    assert!(
        s.wait_ready(Duration::from_secs(60)).await,
        "server never became ready"
    );
    s
}

async fn call(s: &RunningServer, req: Request<Body>) -> (StatusCode, Value) {
    let resp = http::app(s.shared().clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, v)
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn infer(uri: &str, width: usize) -> Request<Body> {
    let data: Vec<f32> = (0..width).map(|i| i as f32).collect();
    let body =
        json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, width], "data": data}]});
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_selected_version_serves_and_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    // Version 1 adds one to 4 floats, version 2 copies 16; version 3 is not selected.
    version(repo, "multi", 1, "add_one.onnx");
    version(repo, "multi", 2, "identity_f32.onnx");
    version(repo, "multi", 3, "add_one.onnx");
    std::fs::write(
        repo.join("multi/config.toml"),
        "backends = [\"tract\"]\nversion_policy = { specific = [1, 2] }\n",
    )
    .unwrap();
    // Triton's spelling in a pbtxt.
    version(repo, "triton", 1, "add_one.onnx");
    version(repo, "triton", 2, "add_one.onnx");
    version(repo, "triton", 3, "add_one.onnx");
    std::fs::write(
        repo.join("triton/config.pbtxt"),
        "name: \"triton\"\nbackend: \"tract\"\nversion_policy: { latest: { num_versions: 2 } }\n",
    )
    .unwrap();
    let s = start(repo, "none", tract()).await;

    let (st, meta) = call(&s, get("/v2/models/multi")).await;
    assert_eq!(st, StatusCode::OK, "{meta}");
    assert_eq!(meta["versions"], json!(["1", "2"]));
    // The newest selected version answers when none is named.
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 16]));
    let (_, m1) = call(&s, get("/v2/models/multi/versions/1")).await;
    assert_eq!(m1["inputs"][0]["shape"], json!([-1, 4]));
    let (_, m2) = call(&s, get("/v2/models/multi/versions/2")).await;
    assert_eq!(m2["inputs"][0]["shape"], json!([-1, 16]));

    let (st, out) = call(&s, infer("/v2/models/multi/versions/1/infer", 4)).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["model_version"], "1");
    assert_eq!(out["outputs"][0]["data"], json!([1.0, 2.0, 3.0, 4.0]));
    let (st, out) = call(&s, infer("/v2/models/multi/versions/2/infer", 16)).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["model_version"], "2");
    assert_eq!(out["outputs"][0]["data"][15], json!(15.0));
    let (st, out) = call(&s, infer("/v2/models/multi/infer", 16)).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    assert_eq!(out["model_version"], "2");

    // A version the policy left out, or that does not exist, is not found.
    for uri in [
        "/v2/models/multi/versions/3/infer",
        "/v2/models/multi/versions/9/infer",
    ] {
        let (st, out) = call(&s, infer(uri, 4)).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{uri}: {out}");
        assert!(out["error"].as_str().unwrap().contains("version"), "{out}");
    }
    let (st, _) = call(&s, get("/v2/models/multi/versions/3")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&s, get("/v2/models/multi/versions/1/ready")).await;
    assert_eq!(st, StatusCode::OK);

    let (_, tmeta) = call(&s, get("/v2/models/triton")).await;
    assert_eq!(tmeta["versions"], json!(["2", "3"]));

    // gRPC: model_version routes the same way.
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();
    let req = |v: &str, width: usize| proto::ModelInferRequest {
        model_name: "multi".into(),
        model_version: v.into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, width as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(vec![0u8; width * 4])],
        ..Default::default()
    };
    let r = c.model_infer(req("1", 4)).await.unwrap().into_inner();
    assert_eq!(r.model_version, "1");
    assert_eq!(&r.raw_output_contents[0][..4], &1.0f32.to_le_bytes());
    let r = c.model_infer(req("2", 16)).await.unwrap().into_inner();
    assert_eq!(r.model_version, "2");
    assert_eq!(r.raw_output_contents[0].len(), 64);
    for v in ["3", "9"] {
        let e = c.model_infer(req(v, 4)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{v}: {e:?}");
    }
    let e = c
        .model_metadata(proto::ModelMetadataRequest {
            name: "multi".into(),
            version: "3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    s.stop().await.unwrap();
}

/// The model configuration reports the version policy in Triton's shape, over
/// HTTP (`version_policy` JSON) and gRPC (`ModelConfig.version_policy`, field 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reports_the_version_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    let models = [
        (
            "specific",
            "config.toml",
            "version_policy = { specific = [1, 3] }\n",
        ),
        ("every", "config.toml", "version_policy = \"all\"\n"),
        (
            "newest2",
            "config.pbtxt",
            "name: \"newest2\"\nversion_policy: { latest: { num_versions: 2 } }\n",
        ),
        ("plain", "config.toml", "backends = [\"tract\"]\n"),
    ];
    for (name, file, text) in models {
        for v in [1, 2, 3] {
            version(repo, name, v, "add_one.onnx");
        }
        std::fs::write(repo.join(name).join(file), text).unwrap();
    }
    let s = start(repo, "none", tract()).await;
    for (name, want) in [
        ("specific", json!({"specific": {"versions": [1, 3]}})),
        ("every", json!({"all": {}})),
        ("newest2", json!({"latest": {"num_versions": 2}})),
        ("plain", json!({"latest": {"num_versions": 1}})),
    ] {
        let (st, c) = call(&s, get(&format!("/v2/models/{name}/config"))).await;
        assert_eq!(st, StatusCode::OK, "{name}: {c}");
        assert_eq!(c["version_policy"], want, "{name}: {c}");
        let (_, c) = call(&s, get(&format!("/v2/models/{name}/versions/1/config"))).await;
        if name != "newest2" && name != "plain" {
            assert_eq!(c["version_policy"], want, "{name} v1: {c}");
        }
    }

    use proto::model_version_policy::{All, Latest, PolicyChoice, Specific};
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();
    for (name, want) in [
        (
            "specific",
            PolicyChoice::Specific(Specific {
                versions: vec![1, 3],
            }),
        ),
        ("every", PolicyChoice::All(All {})),
        ("newest2", PolicyChoice::Latest(Latest { num_versions: 2 })),
        ("plain", PolicyChoice::Latest(Latest { num_versions: 1 })),
    ] {
        let config = c
            .model_config(proto::ModelConfigRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .config
            .unwrap();
        assert_eq!(
            config.version_policy.and_then(|p| p.policy_choice),
            Some(want),
            "{name}"
        );
    }
    // Field 3 on the wire, as in Triton's model_config.proto.
    let config = proto::ModelConfig {
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(PolicyChoice::All(All {})),
        }),
        ..Default::default()
    };
    assert_eq!(
        prost::Message::encode_to_vec(&config),
        vec![3 << 3 | 2, 2, 2 << 3 | 2, 0]
    );
    s.stop().await.unwrap();
}

/// A changed policy takes effect on the next load: newly selected versions
/// load, versions no longer selected stop serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_apply_on_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    for v in [1, 2, 3] {
        version(repo, "m", v, "add_one.onnx");
    }
    let cfg = repo.join("m/config.toml");
    let runtime = tract();
    let serving = |rt: &Runtime| -> Vec<u64> {
        rt.models()
            .into_iter()
            .filter(|m| m.state == ModelState::Ready)
            .map(|m| m.version)
            .collect()
    };
    std::fs::write(&cfg, "version_policy = \"all\"\n").unwrap();
    let m = repository::load_model(repo, "m", &platform::platform()).unwrap();
    repository::load_versions(&runtime, &m, false)
        .await
        .unwrap();
    assert_eq!(serving(&runtime), vec![1, 2, 3]);
    // Loading again without reload leaves the serving versions alone.
    repository::load_versions(&runtime, &m, false)
        .await
        .unwrap();

    std::fs::write(&cfg, "version_policy = { latest = 1 }\n").unwrap();
    let m = repository::load_model(repo, "m", &platform::platform()).unwrap();
    repository::load_versions(&runtime, &m, true).await.unwrap();
    assert_eq!(serving(&runtime), vec![3]);

    std::fs::write(&cfg, "version_policy = { specific = [1, 3] }\n").unwrap();
    let m = repository::load_model(repo, "m", &platform::platform()).unwrap();
    repository::load_versions(&runtime, &m, true).await.unwrap();
    assert_eq!(serving(&runtime), vec![1, 3]);

    // A rollout under the default policy (newest only): a broken new version
    // fails and the old ones keep serving; a good one replaces them.
    std::fs::remove_file(&cfg).unwrap();
    let v4 = repo.join("m/4");
    std::fs::create_dir_all(&v4).unwrap();
    std::fs::write(v4.join("model.onnx"), b"not a model").unwrap();
    let m = repository::load_model(repo, "m", &platform::platform()).unwrap();
    assert!(repository::load_versions(&runtime, &m, true).await.is_err());
    assert_eq!(serving(&runtime), vec![1, 3]);
    std::fs::copy(shipped("add_one.onnx"), v4.join("model.onnx")).unwrap();
    let m = repository::load_model(repo, "m", &platform::platform()).unwrap();
    repository::load_versions(&runtime, &m, true).await.unwrap();
    assert_eq!(serving(&runtime), vec![4]);
    assert!(runtime.model("m", Some(1)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_config_is_checked_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    let cases = [
        // add_one takes x: f32[batch, 4].
        (
            "dims",
            "config.toml",
            "[[input]]\nname = \"x\"\ndtype = \"FP32\"\ndims = [-1, 5]\n",
            StatusCode::BAD_REQUEST,
            "declares input 'x' with dims [-1, 5], but the model's shape is",
        ),
        (
            "dtype",
            "config.pbtxt",
            "name: \"dtype\"\nmax_batch_size: 8\ninput [ { name: \"x\" data_type: TYPE_INT64 dims: [ 4 ] } ]",
            StatusCode::BAD_REQUEST,
            "declares input 'x' as INT64, but the model's is FP32",
        ),
        (
            "name",
            "config.pbtxt",
            "name: \"name\"\noutput [ { name: \"probs\" data_type: TYPE_FP32 dims: [ -1, 4 ] } ]",
            StatusCode::BAD_REQUEST,
            "declares output 'probs' but the model has no such output",
        ),
        (
            "fits",
            "config.toml",
            "memory_budget_mb = 1\n[[input]]\nname = \"x\"\ndtype = \"FP32\"\ndims = [-1, 4]\n[[output]]\nname = \"y\"\ndtype = \"FP32\"\ndims = [-1, 4]\n",
            StatusCode::OK,
            "",
        ),
    ];
    for (name, file, text, _, _) in &cases {
        version(repo, name, 1, "add_one.onnx");
        std::fs::write(repo.join(name).join(file), text).unwrap();
    }
    let s = start(repo, "explicit", tract()).await;
    for (name, _, _, want, needle) in &cases {
        let (st, out) = call(
            &s,
            Request::post(format!("/v2/repository/models/{name}/load"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(st, *want, "{name}: {out}");
        if !needle.is_empty() {
            let msg = out["error"].as_str().unwrap();
            assert!(msg.contains(needle), "{name}: {msg}");
            assert!(!msg.contains('\n'));
            // The failed version is reported, not served.
            let (st, _) = call(&s, infer(&format!("/v2/models/{name}/infer"), 4)).await;
            assert_ne!(st, StatusCode::OK);
        }
    }
    let (st, out) = call(&s, infer("/v2/models/fits/infer", 4)).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    s.stop().await.unwrap();
}

/// A typo in a model's backend options is a load error naming the key and the
/// valid ones, not a setting that silently does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backend_option_fails_the_load() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    for (name, extra) in [("typo", "split_btach"), ("good", "split_batch")] {
        version(repo, name, 1, "add_one.onnx");
        std::fs::write(
            repo.join(name).join("config.toml"),
            format!("[extra]\n{extra} = \"true\"\n"),
        )
        .unwrap();
    }
    let s = start(repo, "explicit", tract()).await;
    let load = |name: &str| {
        Request::post(format!("/v2/repository/models/{name}/load"))
            .body(Body::empty())
            .unwrap()
    };
    let (st, out) = call(&s, load("typo")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{out}");
    let msg = out["error"].as_str().unwrap();
    assert!(
        msg.contains("unknown backend option 'split_btach'") && msg.contains("split_batch"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    let (st, out) = call(&s, load("good")).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    let (st, out) = call(&s, infer("/v2/models/good/infer", 4)).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_model_memory_budget_is_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    for (name, budget) in [("big", 4), ("small", 64)] {
        let dir = repo.join(name).join("1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), b"fake").unwrap();
        std::fs::write(
            repo.join(name).join("config.toml"),
            format!("backends = [\"fake\"]\nmemory_budget_mb = {budget}\n"),
        )
        .unwrap();
    }
    // 10 MiB of weights: over 4 MiB, under 64 MiB.
    let fake = pomme_test_support::FakeBackend::new(4).weight_bytes(10 << 20);
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(fake)])
        .build()
        .unwrap();
    let s = start(repo, "explicit", runtime).await;
    let load = |name: &str| {
        Request::post(format!("/v2/repository/models/{name}/load"))
            .body(Body::empty())
            .unwrap()
    };
    let (st, out) = call(&s, load("big")).await;
    assert_eq!(st.as_u16(), 507, "{out}");
    let msg = out["error"].as_str().unwrap();
    assert!(msg.contains("above its memory_budget_mb of 4"), "{msg}");
    let (st, out) = call(&s, load("small")).await;
    assert_eq!(st, StatusCode::OK, "{out}");
    s.stop().await.unwrap();
}
