//! How fast a full queue says no: a benchmark, not a test.
//!
//! Starts a real server on loopback ports over the fake backend with one
//! worker and a queue of one, fills both with requests that sleep for a
//! minute, then sends `N` requests one after another over one keep-alive HTTP
//! connection and over one gRPC channel, timing each refusal (HTTP 429 / gRPC
//! RESOURCE_EXHAUSTED) from the client's side: request written → answer read.
//!
//! ```sh
//! cargo run --release -p pomme-server --example overload_latency -- 5000
//! ```

#[path = "../tests/common/platform.rs"]
mod platform;

use pomme_core::Tensor;
use pomme_runtime::{InferRequest, Runtime};
use pomme_server::ServerConfig;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::kserve;
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_test_support::{Behaviour, FakeBackend};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn summary(what: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    let q = |p: f64| us[((us.len() - 1) as f64 * p).round() as usize];
    println!(
        "{what}: n={} p50={:.1}us p90={:.1}us p99={:.1}us max={:.1}us",
        us.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        us[us.len() - 1]
    );
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed");
                buf.extend_from_slice(&chunk[..n]);
            }
            return head[9..12].parse().unwrap();
        }
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("N must be a number"))
        .unwrap_or(5000);
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("slow/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("model.onnx"), b"fake").unwrap();
    std::fs::write(
        tmp.path().join("slow/config.toml"),
        "backends = [\"fake\"]\nmax_batch_size = 1\nworkers = 1\n\
         [dynamic_batching]\nmax_queue_delay_us = 0\nmax_queue_size = 1\n",
    )
    .unwrap();
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Slow(Duration::from_secs(60)), 2);
    let args = ServerArgs {
        model_control_mode: Some("none".into()),
        shutdown_grace: Some("1s".into()),
        ..ServerArgs::loopback(tmp.path().to_path_buf())
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(fake.clone())])
        .fail_fast(true)
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime.clone(), platform::platform())
        .await
        .unwrap();
    assert!(s.wait_ready(Duration::from_secs(30)).await);

    // Fill the worker (one sleeping request) and the queue (one waiting).
    let row = || {
        InferRequest::new(
            "slow",
            vec![(
                "x".into(),
                Tensor::from_vec(vec![1, 4], vec![1f32; 4]).unwrap(),
            )],
        )
    };
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let rt = runtime.clone();
            let r = row();
            tokio::spawn(async move { rt.infer(r).await })
        })
        .collect();
    while runtime.admission().in_flight() < 2
        || fake.script.calls.load(std::sync::atomic::Ordering::SeqCst) == 0
    {
        tokio::task::yield_now().await;
    }

    let body = r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let req = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut sock = TcpStream::connect(s.http_addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut http_us = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        sock.write_all(req.as_bytes()).await.unwrap();
        let status = read_response(&mut sock, &mut buf).await;
        let dt = t.elapsed().as_secs_f64() * 1e6;
        assert_eq!(status, 429, "expected a refusal");
        if i >= n / 10 {
            http_us.push(dt); // the first tenth warms up
        }
    }
    summary("HTTP 429", http_us);

    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();
    let x = Tensor::from_vec(vec![1, 4], vec![1f32; 4]).unwrap();
    let greq = kserve::grpc::encode_request("slow", None, &[("x".into(), x)], &[]).unwrap();
    let mut grpc_us = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let e = c.model_infer(greq.clone()).await.unwrap_err();
        let dt = t.elapsed().as_secs_f64() * 1e6;
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        if i >= n / 10 {
            grpc_us.push(dt);
        }
    }
    summary("gRPC RESOURCE_EXHAUSTED", grpc_us);
    // The worker sleeps for a minute inside the fake engine; a graceful stop
    // would wait for it. Nothing is left to clean up but the temp dir.
    drop(busy);
    drop(s);
    drop(tmp);
    std::process::exit(0);
}
