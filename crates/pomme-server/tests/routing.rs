//! Measured routing configured from the model repository and shown by a real
//! server: a model's `config.toml` `[routing]` table and the server-wide
//! default (`routing = "auto"`) reach the runtime, and the decision with its
//! figures comes back on the HTTP and gRPC model configuration, the HTTP
//! statistics and the metrics.

#[allow(dead_code)]
mod common;

use common::http;
use pomme_core::DeviceKind;
use pomme_runtime::Runtime;
use pomme_server::ServerConfig;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::proto::{self, ModelConfigRequest};
use pomme_test_support::FakeBackend;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

fn model(repo: &std::path::Path, name: &str, config: &str) {
    let v = repo.join(name).join("1");
    std::fs::create_dir_all(&v).unwrap();
    // The fake backends never read the file.
    std::fs::write(v.join("model.onnx"), b"fake").unwrap();
    std::fs::write(repo.join(name).join("config.toml"), config).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_model_config_shows_the_decision() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    model(
        repo,
        "routed",
        "[routing]\ncandidates = [\"fake/cpu\", \"wrong/cpu\", \"spare/cuda\", \"absent/cpu\"]\n\
         timed_runs = 3\nbreaker = { failure_threshold = 2 }\n",
    );
    // No routing setting: the server default (auto) routes it over its backends.
    model(repo, "plain", "backends = [\"fake\"]\n");
    model(repo, "off", "backends = [\"fake\"]\nrouting = \"off\"\n");

    let args = ServerArgs {
        model_control_mode: Some("none".into()),
        shutdown_grace: Some("5s".into()),
        routing: Some("auto".into()),
        ..ServerArgs::loopback(repo.to_path_buf())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let runtime = Runtime::builder()
        .backends(vec![
            Arc::new(FakeBackend::new(4)),
            // Computes x·3 where the reference computes x·2: never chosen.
            Arc::new(FakeBackend::new(4).named("wrong").scale(3.0)),
            Arc::new(FakeBackend::new(4).named("spare").device(DeviceKind::Cuda)),
        ])
        .fail_fast(true)
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime, common::platform::platform())
        .await
        .unwrap();
    assert!(s.wait_ready(Duration::from_secs(30)).await, "never ready");
    for m in ["routed", "plain", "off"] {
        assert!(s.shared().model_ready(m, None), "{m} did not load");
    }

    let (status, body) = http(s.http_addr, "GET", "/v2/models/routed/config", &[], b"").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let r = &v["routing"];
    let chosen = r["chosen"].as_str().unwrap().to_string();
    assert!(chosen == "fake/cpu" || chosen == "spare/cuda", "{r}");
    assert_eq!(r["reference"], "fake/cpu");
    assert_eq!(r["order"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(v["parameters"]["routing_chosen"]["string_value"], chosen);
    let rows = r["candidates"].as_array().unwrap();
    let row = |name: &str| rows.iter().find(|c| c["candidate"] == name).unwrap();
    let wrong = row("wrong/cpu");
    assert_eq!(wrong["agrees"], false, "{wrong}");
    assert!(wrong["max_abs_diff"].as_f64().unwrap() > 0.0);
    assert!(wrong["median_ms"].as_f64().is_some());
    assert_eq!(wrong["breaker"], Value::Null, "not kept: no breaker");
    let absent = row("absent/cpu");
    assert_eq!(absent["available"], false);
    assert!(
        absent["note"].as_str().unwrap().contains("not compiled in"),
        "{absent}"
    );
    let spare = row("spare/cuda");
    assert_eq!(spare["agrees"], true, "{spare}");
    assert_eq!(spare["max_abs_diff"], 0.0);
    for c in ["fake/cpu", "spare/cuda"] {
        assert_eq!(row(c)["breaker"], "closed");
        assert_eq!(row(c)["chosen"], c == chosen);
    }

    // One request, then the statistics show which candidate served it.
    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let (status, out) = http(
        s.http_addr,
        "POST",
        "/v2/models/routed/infer",
        &[],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let (status, stats) = http(s.http_addr, "GET", "/v2/models/routed/stats", &[], b"").await;
    assert_eq!(status, 200, "{stats}");
    let stats: Value = serde_json::from_str(&stats).unwrap();
    let live = stats["model_stats"][0]["routing"].as_array().unwrap();
    let served: u64 = live.iter().map(|c| c["served"].as_u64().unwrap()).sum();
    assert_eq!(served, 1, "{live:?}");
    assert_eq!(live[0]["candidate"], chosen);
    assert_eq!(live[0]["breaker"], "closed");

    // gRPC: the same document in Triton's parameters map.
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();
    let cfg = |name: &str| ModelConfigRequest {
        name: name.into(),
        version: String::new(),
    };
    let got = c.model_config(cfg("routed")).await.unwrap().into_inner();
    let params = got.config.unwrap().parameters;
    assert_eq!(params["routing_chosen"].string_value, chosen);
    let doc: Value = serde_json::from_str(&params["routing"].string_value).unwrap();
    assert_eq!(doc["chosen"], chosen);
    assert_eq!(doc["candidates"].as_array().unwrap().len(), 4);

    // The server default routed `plain`; `off` opted out.
    let got = c.model_config(cfg("plain")).await.unwrap().into_inner();
    let plain: proto::ModelConfig = got.config.unwrap();
    assert_eq!(plain.parameters["routing_chosen"].string_value, "fake/cpu");
    let got = c.model_config(cfg("off")).await.unwrap().into_inner();
    assert!(got.config.unwrap().parameters.is_empty());
    let (_, off) = http(s.http_addr, "GET", "/v2/models/off/config", &[], b"").await;
    let off: Value = serde_json::from_str(&off).unwrap();
    assert!(
        off.get("routing").is_none() && off.get("parameters").is_none(),
        "{off}"
    );

    // And the metrics carry the load-time figures.
    let (_, metrics) = http(s.metrics_addr, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains(&format!(
            "pomme_route_selected{{model=\"routed\",version=\"1\",backend=\"{}\",device=\"{}\"}} 1",
            chosen.split('/').next().unwrap(),
            chosen.split('/').nth(1).unwrap()
        )),
        "{metrics}"
    );
    s.stop().await.unwrap();
}
