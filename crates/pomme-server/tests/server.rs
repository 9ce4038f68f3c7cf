//! End-to-end tests: a real server on ephemeral ports over the tract backend
//! and the `add_one` fixture (`y = x + 1`, `x: f32[batch, 4]`). HTTP goes
//! through `app().oneshot`, gRPC through a tonic client on the bound port.

#[path = "common/platform.rs"]
mod platform;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use pomme_core::Tensor;
use pomme_runtime::Runtime;
use pomme_server::config::{ControlMode, FileConfig, ServerArgs};
use pomme_server::kserve::{self, Limits};
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::{RunningServer, ServerConfig, http, proto};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const TOKEN: &str = "s3cret";

fn fixture() -> PathBuf {
    // Shipped in the repository's models/ folder.
    pomme_test_support::fixtures::repo_models().join("add_one.onnx")
}

fn repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["add_one", "spare"] {
        let v = tmp.path().join(name).join("1");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::copy(fixture(), v.join("model.onnx")).unwrap();
    }
    std::fs::write(
        tmp.path().join("add_one/config.toml"),
        "backends = [\"tract\"]\nmax_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 100\npreferred_batch_sizes = [4]\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("spare/config.pbtxt"),
        "name: \"spare\"\nbackend: \"tract\"\nmax_batch_size: 0\n",
    )
    .unwrap();
    tmp
}

async fn server(repo: &Path) -> RunningServer {
    let args = ServerArgs {
        model_control_mode: Some("explicit".into()),
        load_model: vec!["add_one".into()],
        auth_token: Some(TOKEN.into()),
        ..ServerArgs::loopback(repo.to_path_buf())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    assert_eq!(config.repository.control_mode, ControlMode::Explicit);
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    assert!(
        s.wait_ready(Duration::from_secs(30)).await,
        "server never became ready"
    );
    s
}

async fn call(s: &RunningServer, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Bytes) {
    let resp = http::app(s.shared().clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    (
        status,
        headers,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

fn json_of(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints() {
    let tmp = repo();
    let s = server(tmp.path()).await;

    // The Open Inference Protocol's health bodies (KServe's SDK reads them).
    let (st, _, b) = call(&s, get("/v2/health/live")).await;
    assert_eq!((st, json_of(&b)), (StatusCode::OK, json!({"live": true})));
    let (st, _, b) = call(&s, get("/v2/health/ready")).await;
    assert_eq!((st, json_of(&b)), (StatusCode::OK, json!({"ready": true})));
    let (st, _, b) = call(&s, get("/v2/models/add_one/ready")).await;
    assert_eq!(
        (st, json_of(&b)),
        (StatusCode::OK, json!({"name": "add_one", "ready": true}))
    );
    let (_, _, b) = call(&s, get("/v2")).await;
    assert_eq!(json_of(&b)["name"], "pomme");
    assert!(
        json_of(&b)["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );

    let (st, _, b) = call(&s, get("/v2/models/add_one")).await;
    assert_eq!(st, StatusCode::OK);
    let meta = json_of(&b);
    assert_eq!(
        meta["inputs"][0],
        json!({"name": "x", "datatype": "FP32", "shape": [-1, 4]})
    );
    assert_eq!(meta["versions"], json!(["1"]));
    assert_eq!(
        call(&s, get("/v2/models/add_one/ready")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, get("/v2/models/add_one/versions/1/ready")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&s, get("/v2/models/spare/ready")).await.0,
        StatusCode::NOT_FOUND
    );

    // JSON inference, nested data.
    let body = json!({"id": "r1", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
        "data": [[1, 2, 3, 4], [5, 6, 7, 8]]}]});
    let (st, h, b) = call(&s, post("/v2/models/add_one/infer", body.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["content-type"], "application/json");
    let r = json_of(&b);
    assert_eq!(r["id"], "r1");
    assert_eq!(r["model_version"], "1");
    assert_eq!(
        r["outputs"][0]["data"],
        json!([2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    );
    assert_eq!(r["outputs"][0]["shape"], json!([2, 4]));
    assert!(h.contains_key("x-request-id"));

    // Triton's classification extension: the top 2 of each row, as strings.
    let out = r["outputs"][0]["name"].as_str().unwrap().to_string();
    let body = json!({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
        "data": [[1, 2, 3, 4], [8, 7, 6, 5]]}],
        "outputs": [{"name": out, "parameters": {"classification": 2}}]});
    let (st, _, b) = call(&s, post("/v2/models/add_one/infer", body.to_string())).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let r = json_of(&b);
    assert_eq!(r["outputs"][0]["datatype"], "BYTES");
    assert_eq!(r["outputs"][0]["shape"], json!([2, 2]));
    assert_eq!(r["outputs"][0]["data"], json!(["5:3", "4:2", "9:0", "8:1"]));

    // Binary in, binary out.
    let head = json!({"parameters": {"binary_data_output": true},
        "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    for v in [0.5f32, 1.5, 2.5, 3.5] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    let req = Request::post("/v2/models/add_one/versions/1/infer")
        .header("Inference-Header-Content-Length", head.len())
        .body(Body::from(body))
        .unwrap();
    let (st, h, b) = call(&s, req).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let n: usize = h["inference-header-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = json_of(&b.slice(..n));
    assert_eq!(r["outputs"][0]["parameters"]["binary_data_size"], 16);
    let out: Vec<f32> = b[n..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(out, vec![1.5, 2.5, 3.5, 4.5]);

    // Errors: JSON body, status from the one table.
    let (st, _, b) = call(&s, post("/v2/models/nope/infer", body_ok())).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(json_of(&b)["error"].as_str().unwrap().contains("nope"));
    let (st, _, b) = call(&s, post("/v2/models/add_one/infer", "{\"inputs\": [")).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        json_of(&b)["error"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let bad_shape =
        json!({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    let (st, _, b) = call(&s, post("/v2/models/add_one/infer", bad_shape.to_string())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        json_of(&b)["error"]
            .as_str()
            .unwrap()
            .contains("shape [1,3]"),
        "{}",
        json_of(&b)
    );
    let (st, _, _) = call(&s, post("/v2/models/add_one/versions/x/infer", body_ok())).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    let (st, _, b) = call(&s, get("/v2/nothing")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(json_of(&b)["error"].is_string());

    // Triton extensions.
    let (st, _, b) = call(&s, get("/v2/models/add_one/config")).await;
    assert_eq!(st, StatusCode::OK);
    let c = json_of(&b);
    assert_eq!(c["max_batch_size"], 8);
    assert_eq!(c["backend"], "tract");
    assert_eq!(c["input"][0]["dims"], json!([4]));
    assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(c["dynamic_batching"]["preferred_batch_size"], json!([4]));
    let (st, _, b) = call(&s, get("/v2/models/add_one/stats")).await;
    assert_eq!(st, StatusCode::OK);
    let st_json = json_of(&b);
    assert!(
        st_json["model_stats"][0]["inference_count"]
            .as_u64()
            .unwrap()
            >= 3,
        "{st_json}"
    );
    assert_eq!(call(&s, get("/v2/models/stats")).await.0, StatusCode::OK);
    assert_eq!(
        call(&s, get("/v2/models/spare/stats")).await.0,
        StatusCode::NOT_FOUND
    );

    // Repository control needs the token.
    assert_eq!(
        call(&s, post("/v2/repository/index", "")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let auth =
        |r: axum::http::request::Builder| r.header("authorization", format!("Bearer {TOKEN}"));
    let (st, _, b) = call(
        &s,
        auth(Request::post("/v2/repository/index"))
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let idx = json_of(&b);
    assert_eq!(idx.as_array().unwrap().len(), 2, "{idx}");
    assert_eq!(
        idx[0],
        json!({"name": "add_one", "version": "1", "state": "READY"})
    );
    assert_eq!(idx[1], json!({"name": "spare"}));
    let (st, _, b) = call(
        &s,
        auth(Request::post("/v2/repository/models/spare/load"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        call(&s, get("/v2/models/spare/ready")).await.0,
        StatusCode::OK
    );
    let (st, _, _) = call(
        &s,
        auth(Request::post("/v2/repository/models/spare/unload"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        call(&s, get("/v2/models/spare/ready")).await.0,
        StatusCode::NOT_FOUND
    );
    let (st, _, _) = call(
        &s,
        auth(Request::post("/v2/repository/models/..%2Fetc/load"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Metrics.
    let resp = http::metrics_app(s.shared().clone())
        .oneshot(get("/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(!text.is_empty());

    assert!(s.stop().await.unwrap());
}

fn body_ok() -> String {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_endpoints() {
    let tmp = repo();
    let s = server(tmp.path()).await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();

    assert!(
        c.server_live(proto::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(proto::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let r = c
        .model_ready(proto::ModelReadyRequest {
            name: "add_one".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(r.into_inner().ready);
    let m = c
        .model_metadata(proto::ModelMetadataRequest {
            name: "add_one".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.inputs[0].shape, vec![-1, 4]);

    let x = Tensor::from_vec(vec![2, 4], vec![0f32, 1., 2., 3., 4., 5., 6., 7.]).unwrap();
    let req = kserve::grpc::encode_request("add_one", None, &[("x".into(), x)], &[]).unwrap();
    let resp = c.model_infer(req.clone()).await.unwrap().into_inner();
    let outs = kserve::grpc::decode_response(resp, &Limits::default()).unwrap();
    assert_eq!(outs[0].0, "y");
    assert_eq!(
        outs[0].1.to_vec::<f32>().unwrap(),
        vec![1., 2., 3., 4., 5., 6., 7., 8.]
    );

    // Typed contents work too.
    let typed = proto::ModelInferRequest {
        model_name: "add_one".into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(proto::InferTensorContents {
                fp32_contents: vec![1., 1., 1., 1.],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = c.model_infer(typed).await.unwrap().into_inner();
    assert_eq!(resp.raw_output_contents[0].len(), 16);

    // Error codes from the one table.
    let mut missing = req.clone();
    missing.model_name = "nope".into();
    assert_eq!(
        c.model_infer(missing.clone()).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let mut bad = req.clone();
    bad.raw_input_contents[0] = Bytes::from_static(&[0; 3]);
    assert_eq!(
        c.model_infer(bad).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );

    // Streaming: a failed request answers with error_message, the stream goes on.
    let stream = futures::stream::iter(vec![req.clone(), missing, req.clone()]);
    let mut replies = c.model_stream_infer(stream).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(r) = futures::StreamExt::next(&mut replies).await {
        got.push(r.unwrap());
    }
    assert_eq!(got.len(), 3);
    assert!(got[0].error_message.is_empty());
    assert!(
        got[1].error_message.contains("nope"),
        "{}",
        got[1].error_message
    );
    assert_eq!(
        got[2].infer_response.as_ref().unwrap().raw_output_contents[0].len(),
        32
    );

    let cfg = c
        .model_config(proto::ModelConfigRequest {
            name: "add_one".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cfg.config.unwrap().max_batch_size, 8);
    let st = c
        .model_statistics(proto::ModelStatisticsRequest {
            name: "add_one".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(st.model_stats[0].inference_count >= 4);

    // Repository RPCs need the token.
    let err = c
        .repository_index(proto::RepositoryIndexRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut idx = tonic::Request::new(proto::RepositoryIndexRequest {
        repository_name: String::new(),
        ready: true,
    });
    idx.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let models = c.repository_index(idx).await.unwrap().into_inner().models;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name, "add_one");

    drop(c);
    assert!(s.stop().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_mode_loads_everything_and_poll_picks_up_changes() {
    let tmp = repo();
    let args = ServerArgs {
        model_control_mode: Some("poll".into()),
        poll_interval: Some("200ms".into()),
        ..ServerArgs::loopback(tmp.path().to_path_buf())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    assert!(s.wait_ready(Duration::from_secs(30)).await);
    assert!(s.shared().model_ready("add_one", None));
    assert!(s.shared().model_ready("spare", None));
    // Explicit load is refused outside explicit mode.
    let (st, _, _) = call(&s, post("/v2/repository/models/spare/load", "")).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);

    // A broken new model does not disturb the others; a removed one unloads.
    let broken = tmp.path().join("broken/1");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("model.onnx"), b"not a model").unwrap();
    std::fs::remove_dir_all(tmp.path().join("spare")).unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !s.shared().model_ready("spare", None) {
            gone = true;
            break;
        }
    }
    assert!(gone, "removed model still loaded");
    assert!(s.shared().model_ready("add_one", None));
    assert!(!s.shared().model_ready("broken", None));
    assert!(s.stop().await.unwrap());
}
