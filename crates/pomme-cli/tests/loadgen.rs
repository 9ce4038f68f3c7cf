//! `pomme bench --url` end to end: an in-process pomme server on ephemeral
//! ports, the real `pomme` binary driving it over HTTP (JSON and binary) and
//! gRPC, and the `--json` document checked field by field, including the
//! counting invariant `sent == ok + rejected + timed_out + errors`.

#[path = "../../pomme-server/tests/common/platform.rs"]
mod platform;

use pomme_runtime::Runtime;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::{RunningServer, ServerConfig};
use pomme_test_support::{Behaviour, FakeBackend};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

fn identity_repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("identity_f32/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::copy(
        pomme_test_support::fixtures::repo_models().join("identity_f32.onnx"),
        v.join("model.onnx"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("identity_f32/config.toml"),
        "backends = [\"tract\"]\n",
    )
    .unwrap();
    tmp
}

async fn start(repo: &Path, runtime: Runtime) -> RunningServer {
    let args = ServerArgs::loopback(repo.to_path_buf());
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

/// `identity_f32` on tract behind a real server; keep the repo alive with it.
async fn identity_server() -> (tempfile::TempDir, RunningServer) {
    let repo = identity_repo();
    let runtime = Runtime::builder()
        .backends(vec![pomme_backends::by_name("tract").unwrap()])
        .build()
        .unwrap();
    let s = start(repo.path(), runtime).await;
    (repo, s)
}

/// Runs the real binary off the async threads (the server runs on them).
async fn pomme(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_pomme"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn bench_args(url: &str, model: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "bench",
        "--url",
        url,
        "--model",
        model,
        "--duration",
        "700ms",
        "--warmup",
        "100ms",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Parses the one JSON document on stdout and checks its shape and invariant.
fn report(out: &Output, url: &str, model: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pomme bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout}"));
    assert_eq!(v["url"], url);
    assert_eq!(v["model"], model);
    for row in v["rows"].as_array().unwrap() {
        for key in [
            "concurrency",
            "sent",
            "ok",
            "rejected",
            "timed_out",
            "errors",
            "rps",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "max_ms",
        ] {
            assert!(row[key].is_number(), "row lacks '{key}': {row}");
        }
        let n = |k: &str| row[k].as_u64().unwrap();
        assert_eq!(
            n("sent"),
            n("ok") + n("rejected") + n("timed_out") + n("errors"),
            "{row}"
        );
        let f = |k: &str| row[k].as_f64().unwrap();
        assert!(
            f("p50_ms") <= f("p90_ms") && f("p90_ms") <= f("p99_ms") && f("p99_ms") <= f("max_ms"),
            "{row}"
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_http_json_binary_and_grpc() {
    let (_repo, s) = identity_server().await;
    let http = format!("http://{}", s.http_addr);
    let grpc = format!("grpc://{}", s.grpc_addr);
    for (url, extra) in [
        (&http, vec!["--concurrency", "1,3"]),
        (
            &http,
            vec!["--concurrency", "2", "--binary", "--batch", "4"],
        ),
        (&grpc, vec!["--concurrency", "1,3"]),
        (
            &grpc,
            vec!["--concurrency", "2", "--binary", "--model-version", "1"],
        ),
    ] {
        let out = pomme(bench_args(url, "identity_f32", &extra)).await;
        let v = report(&out, url, "identity_f32");
        let rows = v["rows"].as_array().unwrap();
        assert!(!rows.is_empty());
        for row in rows {
            assert!(row["ok"].as_u64().unwrap() > 0, "{url} {extra:?}: {row}");
            assert_eq!(row["errors"], 0, "{url} {extra:?}: {row}");
            assert!(row["rps"].as_f64().unwrap() > 0.0);
        }
        if extra.contains(&"--batch") {
            assert_eq!(rows[0]["batch"], 4);
        }
    }
    // The server counted what the load generator sent.
    let stats = s.shared().stats(Some("identity_f32"), None).unwrap();
    assert!(!stats.is_empty());

    // An unknown model and an unknown version are one-line errors, exit 1.
    for args in [
        bench_args(&http, "nope", &[]),
        bench_args(&grpc, "identity_f32", &["--model-version", "9"]),
    ] {
        let out = pomme(args).await;
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("error:"), "{err}");
    }
    s.stop().await.unwrap();
}

/// One admission slot, a 5 ms deadline and a 20 ms model: the first request
/// of every burst times out (504 / DEADLINE_EXCEEDED) and the others find the
/// slot taken (429 / RESOURCE_EXHAUSTED). Whatever the interleaving, every
/// request sent is counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_rejections_and_timeouts() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("slow/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("model.onnx"), b"fake").unwrap();
    std::fs::write(
        tmp.path().join("slow/config.toml"),
        "backends = [\"fake\"]\n",
    )
    .unwrap();
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Slow(Duration::from_millis(20)), 1_000_000);
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(fake)])
        .max_concurrency(1)
        .fail_fast(true)
        .default_timeout(Duration::from_millis(5))
        .build()
        .unwrap();
    let s = start(tmp.path(), runtime).await;
    for url in [
        format!("http://{}", s.http_addr),
        format!("grpc://{}", s.grpc_addr),
    ] {
        let out = pomme(bench_args(&url, "slow", &["--concurrency", "4"])).await;
        let v = report(&out, &url, "slow");
        let row = &v["rows"][0];
        assert!(row["sent"].as_u64().unwrap() > 0, "{row}");
        assert!(row["timed_out"].as_u64().unwrap() > 0, "{url}: {row}");
        assert!(row["rejected"].as_u64().unwrap() > 0, "{url}: {row}");
        assert_eq!(row["ok"], 0, "{url}: {row}");
        // No successful request: the latency columns are zero, not garbage.
        assert_eq!(row["p99_ms"].as_f64(), Some(0.0));
    }
    s.stop().await.unwrap();
}

/// A server that does not answer within `--request-timeout`: the request is
/// abandoned, counted as timed out, and the run ends on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_requests_time_out_on_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let v = tmp.path().join("stuck/1");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("model.onnx"), b"fake").unwrap();
    std::fs::write(
        tmp.path().join("stuck/config.toml"),
        "backends = [\"fake\"]\n",
    )
    .unwrap();
    let fake = FakeBackend::new(4);
    fake.then(Behaviour::Slow(Duration::from_secs(1)), 1_000);
    let runtime = Runtime::builder()
        .backends(vec![Arc::new(fake)])
        .build()
        .unwrap();
    let s = start(tmp.path(), runtime).await;
    let url = format!("http://{}", s.http_addr);
    let mut args = bench_args(&url, "stuck", &["--concurrency", "2"]);
    args.extend(["--request-timeout".to_string(), "100ms".to_string()]);
    let out = pomme(args).await;
    let v = report(&out, &url, "stuck");
    let row = &v["rows"][0];
    assert!(row["timed_out"].as_u64().unwrap() >= 2, "{row}");
    assert_eq!(row["ok"], 0, "{row}");
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_clients_send_at_the_rate() {
    let (_repo, s) = identity_server().await;
    let http = format!("http://{}", s.http_addr);
    let mut args = bench_args(
        &http,
        "identity_f32",
        &["--concurrency", "4", "--rate", "200"],
    );
    // A 1 s window at 200 req/s: 200 slots. Back to back, 4 clients on this
    // model send thousands; paced, never more than the slots (a loaded
    // machine may send fewer).
    args[6] = "1s".into();
    let out = pomme(args).await;
    let v = report(&out, &http, "identity_f32");
    let sent = v["rows"][0]["sent"].as_u64().unwrap();
    assert!(
        (100..=205).contains(&sent),
        "sent {sent} at --rate 200 for 1 s"
    );

    let bad = pomme(bench_args(&http, "identity_f32", &["--rate", "0"])).await;
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--rate must be a positive"),
        "{bad:?}"
    );
    s.stop().await.unwrap();
}
