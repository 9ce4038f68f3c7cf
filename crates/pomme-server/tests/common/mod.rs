//! Shared by the real-socket server tests: a repository served by the fake
//! backend, a server on ephemeral ports, and a minimal HTTP/1.1 client (one
//! request per connection) so the tests exercise hyper's real parsing and
//! body limits rather than `oneshot`.

pub mod platform;

use pomme_runtime::Runtime;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::{RunningServer, ServerConfig};
use pomme_test_support::FakeBackend;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A repository with one model, `slow` (fake backend, `x: f32[batch, 4]`), no
/// batching, one worker, a queue of 4.
pub fn repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("slow/1");
    std::fs::create_dir_all(&v).unwrap();
    // The fake backend never reads the file; the runtime only checks it exists.
    std::fs::write(v.join("model.onnx"), b"fake").unwrap();
    std::fs::write(
        tmp.path().join("slow/config.toml"),
        "backends = [\"fake\"]\nmax_batch_size = 1\nworkers = 1\n\
         [dynamic_batching]\nmax_queue_delay_us = 0\nmax_queue_size = 4\n",
    )
    .unwrap();
    tmp
}

/// Starts a server over `fake` the way `pomme serve` builds its runtime
/// (fail fast when full, 30 s default deadline) and waits until `slow` serves.
pub async fn start(repo: &std::path::Path, fake: &FakeBackend, args: ServerArgs) -> RunningServer {
    let args = ServerArgs {
        model_repository: Some(repo.to_path_buf()),
        model_control_mode: Some("none".into()),
        http_port: Some(0),
        grpc_port: Some(0),
        metrics_port: Some(0),
        host: Some("127.0.0.1".into()),
        shutdown_grace: Some("5s".into()),
        ..args
    };
    let config = ServerConfig::merge(FileConfig::default(), &args).unwrap();
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(fake.clone())])
        .fail_fast(true)
        .default_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let s = pomme_server::start(config, runtime, platform::platform())
        .await
        .unwrap();
    assert!(s.wait_ready(Duration::from_secs(30)).await, "never ready");
    assert!(
        s.shared().model_ready("slow", None),
        "model 'slow' did not load"
    );
    s
}

/// One HTTP/1.1 exchange on a fresh connection: status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut sock = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        head.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await.unwrap();
    // A server may refuse an oversized body before reading it all; a failed
    // write then is expected, the answer is still there to read.
    let _ = sock.write_all(body).await;
    let mut raw = Vec::new();
    let _ = sock.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A JSON infer request body for `slow` with one row.
pub fn good_body() -> &'static str {
    r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}"#
}
