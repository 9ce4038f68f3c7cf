//! OpenTelemetry tracing end to end: the real `pomme serve` binary with
//! `--otlp-endpoint` pointing at an in-process OTLP/HTTP receiver (axum,
//! decoding protobuf `ExportTraceServiceRequest`s), requests over real
//! sockets carrying W3C `traceparent` in HTTP headers and gRPC metadata.
//!
//! The root sampling ratio is 0, so only a sampled `traceparent` can get a
//! request exported: a sampled parent must be followed (spans in the given
//! trace, under the given parent span), an unsampled one must not be.

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use parking_lot::Mutex;
use pomme_kserve::proto;
use pomme_kserve::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spans received, with their resource's `service.name`.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP traces receiver on a free loopback port.
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut g = sink.lock();
                for rs in req.resource_spans {
                    let service = rs
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref())
                        .map(text)
                        .unwrap_or_default();
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            g.push((service.clone(), s));
                        }
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    ExportTraceServiceResponse::default().encode_to_vec(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(s: &Span) -> BTreeMap<String, String> {
    s.attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), text(kv.value.as_ref()?))))
        .collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    c.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

const TID_HTTP: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TID_GRPC: &str = "0af7651916cd43dd8448eb211c80319c";
const TID_UNSAMPLED: &str = "5c2b6b1d8f0e4a7b9c3d2e1f0a9b8c7d";
const PARENT_HTTP: &str = "00f067aa0ba902b7";
const PARENT_GRPC: &str = "b7ad6b7169203331";

fn infer_body() -> String {
    let data: Vec<String> = (0..16).map(|i| i.to_string()).collect();
    format!(
        r#"{{"id":"otel-1","inputs":[{{"name":"x","shape":[1,16],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_request_spans_honouring_traceparent() {
    let (endpoint, got) = receiver().await;
    let repo = tempfile::tempdir().unwrap();
    let v = repo.path().join("identity_f32/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(
        pomme_test_support::fixtures::repo_models().join("identity_f32.onnx"),
        v.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join("identity_f32/config.toml"),
        "backends = [\"tract\"]\n",
    )
    .unwrap();
    let (hp, gp, mp) = (free_port(), free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pomme"));
    cmd.args(["serve", "--host", "127.0.0.1", "--model-repository"])
        .arg(repo.path())
        .args(["--http-port", &hp.to_string()])
        .args(["--grpc-port", &gp.to_string()])
        .args(["--metrics-port", &mp.to_string()])
        .args(["--otlp-endpoint", &endpoint])
        // Roots are never sampled: only a sampled traceparent exports.
        .args(["--trace-sampling", "0"])
        .args(["--trace-service-name", "pomme-test"])
        // The SDK's batch processor: export every 50 ms (default 5 s).
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env_remove("POMME_LOG")
        .current_dir(repo.path())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let _server = Server(cmd.spawn().unwrap());
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = TcpStream::connect(("127.0.0.1", hp)).is_ok()
            && tokio::task::spawn_blocking(move || http(hp, "GET", "/v2/health/ready", &[], ""))
                .await
                .unwrap()
                .0
                == 200;
        if ready {
            break;
        }
        assert!(Instant::now() < until, "pomme serve never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Unsampled first: its spans, were they exported, would be queued before
    // the sampled requests' ones.
    let unsampled = format!("00-{TID_UNSAMPLED}-{PARENT_HTTP}-00");
    let body = infer_body();
    let (status, out) = tokio::task::spawn_blocking(move || {
        http(
            hp,
            "POST",
            "/v2/models/identity_f32/infer",
            &[("traceparent", &unsampled)],
            &body,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{out}");
    // No traceparent: a new root, sampled at ratio 0, so not exported either.
    let body = infer_body();
    let (status, _) = tokio::task::spawn_blocking(move || {
        http(hp, "POST", "/v2/models/identity_f32/infer", &[], &body)
    })
    .await
    .unwrap();
    assert_eq!(status, 200);

    let sampled = format!("00-{TID_HTTP}-{PARENT_HTTP}-01");
    let body = infer_body();
    let (status, out) = tokio::task::spawn_blocking(move || {
        http(
            hp,
            "POST",
            "/v2/models/identity_f32/infer",
            &[("traceparent", &sampled), ("tracestate", "vendor=1")],
            &body,
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{out}");

    let mut c = GrpcInferenceServiceClient::connect(format!("http://127.0.0.1:{gp}"))
        .await
        .unwrap();
    let raw: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut req = tonic::Request::new(proto::ModelInferRequest {
        model_name: "identity_f32".into(),
        model_version: "1".into(),
        id: "otel-grpc".into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            ..Default::default()
        }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TID_GRPC}-{PARENT_GRPC}-01").parse().unwrap(),
    );
    c.model_infer(req).await.unwrap();

    // Every stage of both sampled requests, within a deadline.
    let want_http = ["http", "infer", "queue", "batch", "compute", "respond"];
    let want_grpc = [
        "grpc_infer",
        "infer",
        "queue",
        "batch",
        "compute",
        "respond",
    ];
    let by_trace = |tid: &str| -> Vec<(String, Span)> {
        got.lock()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == tid)
            .cloned()
            .collect()
    };
    let names = |spans: &[(String, Span)]| -> Vec<String> {
        spans.iter().map(|(_, s)| s.name.clone()).collect()
    };
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (h, g) = (names(&by_trace(TID_HTTP)), names(&by_trace(TID_GRPC)));
        if want_http.iter().all(|n| h.iter().any(|x| x == n))
            && want_grpc.iter().all(|n| g.iter().any(|x| x == n))
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "spans not exported within 30 s: http trace {h:?}, grpc trace {g:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (tid, parent, root, protocol) in [
        (TID_HTTP, PARENT_HTTP, "http", "http"),
        (TID_GRPC, PARENT_GRPC, "grpc_infer", "grpc"),
    ] {
        let spans = by_trace(tid);
        let find = |name: &str| {
            spans
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no {name} span in {tid}"))
        };
        for (service, _) in &spans {
            assert_eq!(service, "pomme-test");
        }
        // The request's root continues the caller's trace, under its span.
        let r = find(root);
        assert_eq!(hex(&r.parent_span_id), parent, "{root} parent");
        assert_eq!(attrs(r)["protocol"], protocol);
        // Each stage under the one before it.
        let infer = find("infer");
        assert_eq!(infer.parent_span_id, r.span_id);
        assert_eq!(attrs(infer)["model"], "identity_f32");
        let queue = find("queue");
        assert_eq!(queue.parent_span_id, infer.span_id);
        let q = attrs(queue);
        assert_eq!(
            (
                q["model"].as_str(),
                q["version"].as_str(),
                q["batch_size"].as_str()
            ),
            ("identity_f32", "1", "1"),
            "{q:?}"
        );
        let batch = find("batch");
        assert_eq!(batch.parent_span_id, infer.span_id);
        assert_eq!(attrs(batch)["batch_size"], "1");
        assert_eq!(attrs(batch)["rows"], "1");
        assert_eq!(find("compute").parent_span_id, batch.span_id);
        let respond = find("respond");
        assert!(
            respond.parent_span_id == r.span_id || respond.parent_span_id == infer.span_id,
            "respond under the request"
        );
        for s in [queue, batch, find("compute"), respond] {
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        }
    }
    assert!(
        !attrs(
            by_trace(TID_HTTP)
                .iter()
                .map(|(_, s)| s)
                .find(|s| s.name == "http")
                .unwrap()
        )["request_id"]
            .is_empty()
    );
    // The unsampled parent was honoured: nothing of its trace was exported,
    // and the root without a traceparent (ratio 0) was not either.
    assert!(
        by_trace(TID_UNSAMPLED).is_empty(),
        "unsampled request exported"
    );
    let others: Vec<String> = got
        .lock()
        .iter()
        .map(|(_, s)| hex(&s.trace_id))
        .filter(|t| t != TID_HTTP && t != TID_GRPC)
        .collect();
    assert!(others.is_empty(), "unexpected traces exported: {others:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
