//! The bad-input catalogue: a real server on ephemeral loopback ports (tract
//! backend, the shipped `add_one` model `y = x + 1, x: f32[batch, 4]` and the
//! BYTES identity model) receives malformed, hostile or merely wrong requests
//! over real TCP connections, HTTP and gRPC. Every one must come back as the
//! expected 4xx / gRPC status with a one-line message, and the server must
//! still answer a good request right after each of them.
//!
//! HTTP is spoken by hand over a `TcpStream` (not through a client library) so
//! that requests a well-behaved client would never send (bad framing, lying
//! headers, invalid UTF-8) can be sent too. Each case's name is the "test
//! name" column of the table in RELIABILITY.md; run with `--nocapture` to print
//! the observed table.

#[path = "common/platform.rs"]
mod platform;

use pomme_core::Tensor;
use pomme_runtime::Runtime;
use pomme_server::config::{FileConfig, ServerArgs};
use pomme_server::kserve::Limits;
use pomme_server::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use pomme_server::proto::{self, InferParameter, infer_parameter::ParameterChoice};
use pomme_server::{RunningServer, ServerConfig};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "s3cret";
/// The server's body limit in these tests (small, so "oversized" is cheap to send).
const MAX_BODY: usize = 1 << 20;
/// A guard against hangs, not a timing assertion: every answer here takes
/// milliseconds; a case still unanswered after this long is reported as a hang.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

fn repo() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (name, file, config) in [
        (
            "add_one",
            "add_one.onnx",
            "backends = [\"tract\"]\nmax_batch_size = 8\n",
        ),
        ("strings", "identity_bytes.onnx", "backends = [\"tract\"]\n"),
    ] {
        let v = tmp.path().join(name).join("1");
        std::fs::create_dir_all(&v).unwrap();
        std::fs::copy(models().join(file), v.join("model.onnx")).unwrap();
        std::fs::write(tmp.path().join(name).join("config.toml"), config).unwrap();
    }
    tmp
}

async fn server(repo: &Path) -> RunningServer {
    let args = ServerArgs {
        model_control_mode: Some("explicit".into()),
        load_model: vec!["add_one".into(), "strings".into()],
        auth_token: Some(TOKEN.into()),
        ..ServerArgs::loopback(repo.to_path_buf())
    };
    let file = FileConfig {
        limits: Some(Limits {
            max_body_bytes: MAX_BODY,
            max_json_depth: 8,
            ..Limits::default()
        }),
        ..FileConfig::default()
    };
    start(file, args).await
}

/// A tract-only server for `args` and `file`, once ready.
async fn start(file: FileConfig, args: ServerArgs) -> RunningServer {
    let config = ServerConfig::merge(file, &args).unwrap();
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

/// A raw HTTP/1.1 answer.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Sends `head` (request line + headers, without the blank line) and `body`
/// on a fresh connection with `Connection: close`, and reads the whole answer.
/// The body is written concurrently with reading, so a server that answers
/// early (413) and closes is still heard.
async fn raw(addr: SocketAddr, head: &str, body: Vec<u8>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let mut req = head.replace('\n', "\r\n").into_bytes();
    if !head.is_empty() {
        req.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    }
    let writer = tokio::spawn(async move {
        // Write errors are expected when the server answers before reading it all.
        let _ = wr.write_all(&req).await;
        let _ = wr.write_all(&body).await;
        wr
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(HANG_GUARD, async {
        let mut chunk = [0u8; 8192];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "no answer within {HANG_GUARD:?}: the server hung on `{}`",
        head.lines().next().unwrap_or("")
    );
    drop(writer.await);
    parse_answer(&buf)
}

fn parse_answer(buf: &[u8]) -> Answer {
    let text_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP answer (connection closed): {:?}",
                String::from_utf8_lossy(buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..text_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let mut body = buf[text_end + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Answer { status, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 2 + n + 2..];
    }
    out
}

fn post_head(path: &str, content_length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\nHost: localhost\nContent-Type: application/json\nContent-Length: {content_length}{extra}"
    )
}

async fn post(addr: SocketAddr, path: &str, body: impl Into<Vec<u8>>) -> Answer {
    let body = body.into();
    raw(addr, &post_head(path, body.len(), ""), body).await
}

/// A binary-extension request: JSON header plus raw bytes after it.
async fn post_binary(addr: SocketAddr, path: &str, header: &Value, bin: &[u8]) -> Answer {
    let h = header.to_string();
    let mut body = h.clone().into_bytes();
    body.extend_from_slice(bin);
    let extra = format!("\nInference-Header-Content-Length: {}", h.len());
    raw(addr, &post_head(path, body.len(), &extra), body).await
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn good_body() -> String {
    json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        .to_string()
}

fn x(shape: Value, data: Value) -> String {
    json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]}).to_string()
}

/// The server still serves: a good request gets `y = x + 1`.
async fn still_serves(addr: SocketAddr, after: &str) -> Result<(), String> {
    let a = post(addr, "/v2/models/add_one/infer", good_body()).await;
    let ok = a.status == 200
        && serde_json::from_slice::<Value>(&a.body)
            .ok()
            .is_some_and(|v| v["outputs"][0]["data"] == json!([2.0, 3.0, 4.0, 5.0]));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "after `{after}` a good request got {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ))
    }
}

/// The error message of a JSON error body, checked to be one non-empty line.
fn one_line_message(body: &[u8]) -> Result<String, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "error body is not JSON: {:?}",
            String::from_utf8_lossy(body)
        )
    })?;
    let m = v["error"]
        .as_str()
        .ok_or_else(|| format!("error body has no \"error\" string: {v}"))?;
    if m.is_empty() || m.contains('\n') {
        return Err(format!("error message is not one non-empty line: {m:?}"));
    }
    Ok(m.to_string())
}

/// One catalogue entry: what is sent, the status expected and a fragment the
/// message must contain (case-insensitive; empty: any message).
struct Case {
    name: &'static str,
    status: u16,
    contains: &'static str,
    answer: Answer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bad_inputs() {
    let tmp = repo();
    let s = server(tmp.path()).await;
    let a = s.http_addr;
    let infer = "/v2/models/add_one/infer";
    let strings = "/v2/models/strings/infer";
    still_serves(a, "start").await.unwrap();

    let mut cases: Vec<Case> = Vec::new();
    macro_rules! case {
        ($name:expr, $status:expr, $contains:expr, $answer:expr) => {{
            // Boxed: sixty cases inlined into one future overflow the test
            // thread's stack in debug builds.
            let answer = Box::pin(async { $answer }).await;
            cases.push(Case {
                name: $name,
                status: $status,
                contains: $contains,
                answer,
            });
            if let Err(e) = still_serves(a, $name).await {
                panic!("{e}");
            }
        }};
    }

    // --- JSON framing
    case!(
        "json_truncated",
        400,
        "malformed JSON",
        post(a, infer, "{\"inputs\": [").await
    );
    case!(
        "json_garbage_bytes",
        400,
        "malformed JSON",
        post(a, infer, vec![0xff, 0xfe, 0x00, 0x01]).await
    );
    case!("json_empty_body", 400, "", post(a, infer, "").await);
    case!(
        "json_not_an_object",
        400,
        "",
        post(a, infer, "[1, 2, 3]").await
    );
    case!(
        "json_trailing_garbage",
        400,
        "",
        post(a, infer, format!("{} xyz", good_body())).await
    );
    case!(
        "json_invalid_utf8_in_string",
        400,
        "",
        post(a, infer, b"{\"id\": \"\xc3\x28\", \"inputs\": []}".to_vec()).await
    );
    case!(
        "json_nan_literal",
        400,
        "",
        post(
            a,
            infer,
            r#"{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[NaN,1,2,3]}]}"#
        )
        .await
    );
    case!("inputs_missing", 400, "inputs", post(a, infer, "{}").await);
    case!(
        "inputs_not_an_array",
        400,
        "",
        post(a, infer, "{\"inputs\": 5}").await
    );
    case!(
        "inputs_empty",
        400,
        "",
        post(a, infer, "{\"inputs\": []}").await
    );
    case!("id_wrong_type", 400, "", post(a, infer, json!({"id": 5, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!(
        "data_nested_too_deep",
        400,
        "",
        post(
            a,
            infer,
            x(json!([1, 4]), json!([[[[[[[[[[[1, 2, 3, 4]]]]]]]]]]]))
        )
        .await
    );

    // --- types and shapes
    case!("datatype_unknown", 400, "FP99", post(a, infer, json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP99", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("datatype_wrong_for_model", 400, "", post(a, infer, json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!(
        "data_shape_mismatch",
        400,
        "",
        post(a, infer, x(json!([1, 4]), json!([1, 2, 3]))).await
    );
    case!(
        "shape_wrong_for_model",
        400,
        "shape",
        post(a, infer, x(json!([1, 5]), json!([1, 2, 3, 4, 5]))).await
    );
    case!(
        "data_element_wrong_type",
        400,
        "",
        post(a, infer, x(json!([1, 4]), json!(["a", "b", "c", "d"]))).await
    );
    case!(
        "data_value_out_of_range_int8",
        400,
        "",
        post(
            a,
            infer,
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [300]}]})
                .to_string()
        )
        .await
    );
    case!(
        "shape_huge_declared",
        400,
        "",
        post(
            a,
            infer,
            x(json!([1_000_000_000i64, 4]), json!([1, 2, 3, 4]))
        )
        .await
    );
    case!(
        "shape_element_count_overflows",
        400,
        "",
        post(
            a,
            infer,
            x(
                json!([4611686018427387904i64, 4611686018427387904i64]),
                json!([1])
            )
        )
        .await
    );
    case!(
        "shape_negative_dim",
        400,
        "",
        post(a, infer, x(json!([-1, 4]), json!([1, 2, 3, 4]))).await
    );
    case!(
        "shape_not_integers",
        400,
        "",
        post(a, infer, x(json!([1.5, "4"]), json!([1, 2, 3, 4]))).await
    );
    case!("input_missing", 400, "", post(a, infer, json!({"inputs": [{"name": "other", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!(
        "input_duplicate",
        400,
        "",
        post(
            a,
            infer,
            json!({"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]},
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
            .to_string()
        )
        .await
    );
    case!(
        "input_name_missing",
        400,
        "",
        post(
            a,
            infer,
            json!({"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
                .to_string()
        )
        .await
    );
    case!("output_unknown", 400, "", post(a, infer, json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
        "outputs": [{"name": "nope"}]}).to_string()).await);

    // --- parameters
    case!("parameters_not_an_object", 400, "", post(a, infer, json!({"parameters": 5, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("priority_negative", 400, "priority", post(a, infer, json!({"parameters": {"priority": -1}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("priority_string", 400, "priority", post(a, infer, json!({"parameters": {"priority": "high"}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("priority_huge", 400, "priority", post(a, infer, json!({"parameters": {"priority": u64::MAX}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("timeout_string", 400, "timeout", post(a, infer, json!({"parameters": {"timeout": "soon"}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("timeout_negative", 400, "timeout", post(a, infer, json!({"parameters": {"timeout": -5}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);
    case!("binary_data_output_not_bool", 400, "", post(a, infer, json!({"parameters": {"binary_data_output": "yes"}, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).to_string()).await);

    // --- binary tensor data extension
    let bin_x = |size: Value| json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    case!(
        "binary_header_length_not_a_number",
        400,
        "Inference-Header-Content-Length",
        {
            let body = good_body();
            raw(
                a,
                &post_head(
                    infer,
                    body.len(),
                    "\nInference-Header-Content-Length: twelve",
                ),
                body.into_bytes(),
            )
            .await
        }
    );
    case!(
        "binary_header_length_beyond_body",
        400,
        "Inference-Header-Content-Length",
        {
            let body = good_body();
            raw(
                a,
                &post_head(
                    infer,
                    body.len(),
                    "\nInference-Header-Content-Length: 99999",
                ),
                body.into_bytes(),
            )
            .await
        }
    );
    case!(
        "binary_size_beyond_body",
        400,
        "",
        post_binary(
            a,
            infer,
            &bin_x(json!(1_000_000)),
            &f32_bytes(&[1., 2., 3., 4.])
        )
        .await
    );
    case!(
        "binary_size_wrong_for_shape",
        400,
        "",
        post_binary(a, infer, &bin_x(json!(12)), &f32_bytes(&[1., 2., 3.])).await
    );
    case!(
        "binary_size_negative",
        400,
        "",
        post_binary(a, infer, &bin_x(json!(-16)), &f32_bytes(&[1., 2., 3., 4.])).await
    );
    case!(
        "binary_trailing_bytes",
        400,
        "",
        post_binary(
            a,
            infer,
            &bin_x(json!(16)),
            &f32_bytes(&[1., 2., 3., 4., 5.])
        )
        .await
    );
    case!("binary_and_json_data_both", 400, "", post_binary(a, infer,
        &json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], "parameters": {"binary_data_size": 16}}]}),
        &f32_bytes(&[1., 2., 3., 4.])).await);

    // --- BYTES oddities
    let s_bin = |size: usize| json!({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]});
    case!("bytes_length_prefix_beyond_data", 400, "", {
        let mut b = 1000u32.to_le_bytes().to_vec();
        b.extend_from_slice(b"ab");
        post_binary(a, strings, &s_bin(b.len()), &b).await
    });
    case!(
        "bytes_truncated_length_prefix",
        400,
        "",
        post_binary(a, strings, &s_bin(2), &[1, 0]).await
    );
    case!("bytes_element_count_mismatch", 400, "", {
        let mut b = 2u32.to_le_bytes().to_vec();
        b.extend_from_slice(b"ab");
        post_binary(a, strings, &s_bin(b.len()), &b).await
    });
    case!("bytes_json_element_not_string", 400, "", post(a, strings, json!({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "data": [1, {"a": 2}]}]}).to_string()).await);
    case!("bytes_sent_to_f32_model", 400, "", post(a, infer, json!({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]}).to_string()).await);

    // --- size limits
    case!("body_over_limit", 413, "", {
        let mut big = b"{\"inputs\": [{\"name\": \"x\", \"shape\": [1, 4], \"datatype\": \"FP32\", \"data\": [".to_vec();
        big.resize(MAX_BODY + 4096, b' ');
        post(a, infer, big).await
    });

    // --- routing, versions, names
    case!(
        "model_unknown",
        404,
        "nope",
        post(a, "/v2/models/nope/infer", good_body()).await
    );
    case!(
        "version_unknown",
        404,
        "",
        post(a, "/v2/models/add_one/versions/7/infer", good_body()).await
    );
    case!(
        "version_not_a_number",
        400,
        "",
        post(a, "/v2/models/add_one/versions/abc/infer", good_body()).await
    );
    case!(
        "version_overflows_u64",
        400,
        "",
        post(
            a,
            "/v2/models/add_one/versions/99999999999999999999999/infer",
            good_body()
        )
        .await
    );
    case!(
        "model_name_path_traversal_encoded",
        404,
        "",
        post(a, "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", good_body()).await
    );
    case!(
        "model_name_path_traversal_raw",
        404,
        "",
        post(a, "/v2/models/../../etc/infer", good_body()).await
    );
    case!("repository_load_path_traversal", 400, "", raw(a, &format!("POST /v2/repository/models/..%2F..%2Fetc/load HTTP/1.1\nHost: localhost\nAuthorization: Bearer {TOKEN}\nContent-Length: 0"), vec![]).await);
    case!("repository_load_dot_dot", 400, "", raw(a, &format!("POST /v2/repository/models/../load HTTP/1.1\nHost: localhost\nAuthorization: Bearer {TOKEN}\nContent-Length: 0"), vec![]).await);
    case!(
        "repository_load_no_token",
        401,
        "token",
        raw(
            a,
            "POST /v2/repository/models/add_one/load HTTP/1.1\nHost: localhost\nContent-Length: 0",
            vec![]
        )
        .await
    );
    case!("repository_load_wrong_token", 401, "token", raw(a, "POST /v2/repository/models/add_one/unload HTTP/1.1\nHost: localhost\nAuthorization: Bearer nope\nContent-Length: 0", vec![]).await);
    case!("repository_index_bad_json", 400, "malformed JSON", raw(a, &format!("POST /v2/repository/index HTTP/1.1\nHost: localhost\nAuthorization: Bearer {TOKEN}\nContent-Length: 3"), b"{x:".to_vec()).await);
    case!(
        "endpoint_unknown",
        404,
        "no such endpoint",
        raw(a, "GET /v3/what HTTP/1.1\nHost: localhost", vec![]).await
    );
    case!(
        "method_wrong",
        405,
        "",
        raw(
            a,
            "GET /v2/models/add_one/infer HTTP/1.1\nHost: localhost",
            vec![]
        )
        .await
    );
    case!(
        "http_request_line_garbage",
        400,
        "",
        raw(a, "", b"\x16\x03\x01 hello\r\n\r\n".to_vec()).await
    );

    // The catalogue: print it, then check each entry.
    let mut failures = Vec::new();
    println!("| case | status | message |");
    for c in &cases {
        let msg = if c.answer.body.is_empty() {
            Ok(String::new())
        } else {
            one_line_message(&c.answer.body)
        };
        println!(
            "| `{}` | {} | {} |",
            c.name,
            c.answer.status,
            msg.clone().unwrap_or_else(|e| e)
        );
        if c.answer.status != c.status {
            failures.push(format!(
                "{}: expected {}, got {}: {}",
                c.name,
                c.status,
                c.answer.status,
                String::from_utf8_lossy(&c.answer.body)
            ));
            continue;
        }
        // hyper answers requests it cannot parse with an empty 400 and axum
        // answers an unrouted method with an empty 405: no message to check.
        let bodyless = matches!(c.name, "http_request_line_garbage" | "method_wrong");
        match msg {
            Ok(m) if m.is_empty() && !bodyless => {
                failures.push(format!("{}: empty error body", c.name));
            }
            Ok(m) if !m.to_lowercase().contains(&c.contains.to_lowercase()) => {
                failures.push(format!("{}: message {m:?} lacks {:?}", c.name, c.contains));
            }
            Ok(_) => {}
            Err(e) => failures.push(format!("{}: {e}", c.name)),
        }
    }
    println!("{} HTTP cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(s.stop().await.unwrap());
}

fn tensor(
    name: &str,
    datatype: &str,
    shape: &[i64],
) -> proto::model_infer_request::InferInputTensor {
    proto::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn good_grpc() -> proto::ModelInferRequest {
    proto::ModelInferRequest {
        model_name: "add_one".into(),
        inputs: vec![tensor("x", "FP32", &[1, 4])],
        raw_input_contents: vec![f32_bytes(&[1., 2., 3., 4.]).into()],
        ..Default::default()
    }
}

fn with_auth<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_bad_inputs() {
    use tonic::Code;
    let tmp = repo();
    let s = server(tmp.path()).await;
    let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
        .await
        .unwrap();

    let param = |choice: ParameterChoice| InferParameter {
        parameter_choice: Some(choice),
    };
    let mut cases: Vec<(&str, Code, proto::ModelInferRequest)> = Vec::new();
    let mut r = good_grpc();
    r.model_name = "nope".into();
    cases.push(("grpc_model_unknown", Code::NotFound, r));
    let mut r = good_grpc();
    r.model_version = "seven".into();
    cases.push(("grpc_version_not_a_number", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.model_version = "7".into();
    cases.push(("grpc_version_unknown", Code::NotFound, r));
    let mut r = good_grpc();
    r.raw_input_contents.push(vec![0; 4].into());
    cases.push(("grpc_raw_count_mismatch", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.raw_input_contents[0].truncate(12);
    cases.push(("grpc_raw_size_mismatch", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs[0].datatype = "FP99".into();
    cases.push(("grpc_datatype_unknown", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs[0].shape = vec![-1, 4];
    cases.push(("grpc_shape_negative_dim", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs[0].shape = vec![i64::MAX, i64::MAX];
    cases.push(("grpc_shape_overflow", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs[0].shape = vec![1, 5];
    r.raw_input_contents[0] = f32_bytes(&[1., 2., 3., 4., 5.]).into();
    cases.push(("grpc_shape_wrong_for_model", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.raw_input_contents.clear();
    r.inputs[0].contents = Some(proto::InferTensorContents {
        int_contents: vec![1, 2, 3, 4],
        ..Default::default()
    });
    cases.push(("grpc_typed_contents_wrong_kind", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.raw_input_contents.clear();
    cases.push(("grpc_no_data", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs.push(r.inputs[0].clone());
    r.raw_input_contents.push(r.raw_input_contents[0].clone());
    cases.push(("grpc_input_duplicate", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.inputs[0].name = "other".into();
    cases.push(("grpc_input_missing", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.parameters.insert(
        "priority".into(),
        param(ParameterChoice::StringParam("high".into())),
    );
    cases.push(("grpc_priority_string", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.parameters
        .insert("timeout".into(), param(ParameterChoice::Int64Param(-5)));
    cases.push(("grpc_timeout_negative", Code::InvalidArgument, r));
    let mut r = good_grpc();
    r.outputs
        .push(proto::model_infer_request::InferRequestedOutputTensor {
            name: "nope".into(),
            ..Default::default()
        });
    cases.push(("grpc_output_unknown", Code::InvalidArgument, r));
    let mut r = proto::ModelInferRequest {
        model_name: "strings".into(),
        inputs: vec![tensor("s", "BYTES", &[2])],
        ..Default::default()
    };
    let mut b = 1000u32.to_le_bytes().to_vec();
    b.extend_from_slice(b"ab");
    r.raw_input_contents = vec![b.into()];
    cases.push((
        "grpc_bytes_length_prefix_beyond_data",
        Code::InvalidArgument,
        r,
    ));
    let r = proto::ModelInferRequest {
        model_name: "add_one".into(),
        inputs: vec![tensor("x", "FP32", &[1_000_000_000, 4])],
        raw_input_contents: vec![f32_bytes(&[1., 2., 3., 4.]).into()],
        ..Default::default()
    };
    cases.push(("grpc_shape_huge_declared", Code::InvalidArgument, r));
    // Over max_body_bytes: RESOURCE_EXHAUSTED, as gRPC's guide and Triton say
    // (tonic itself answers OUT_OF_RANGE).
    let mut r = good_grpc();
    r.raw_input_contents[0] = vec![0u8; MAX_BODY + 64].into();
    cases.push((
        "grpc_message_over_the_size_limit",
        Code::ResourceExhausted,
        r,
    ));

    let good = || async {
        let mut c = GrpcInferenceServiceClient::connect(format!("http://{}", s.grpc_addr))
            .await
            .unwrap();
        let out = c.model_infer(good_grpc()).await.unwrap().into_inner();
        let y = pomme_server::kserve::grpc::decode_response(out, &Limits::default()).unwrap();
        assert_eq!(
            y[0].1,
            Tensor::from_vec(vec![1, 4], vec![2.0f32, 3.0, 4.0, 5.0]).unwrap()
        );
    };
    good().await;
    let mut failures = Vec::new();
    let mut n = 0;
    for (name, want, req) in cases {
        n += 1;
        let got = tokio::time::timeout(HANG_GUARD, c.model_infer(req))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer within {HANG_GUARD:?}"));
        check_status(name, want, got.map(|_| ()), &mut failures);
        good().await;
    }
    // Repository control with hostile names and without the token.
    let got = c
        .repository_model_load(with_auth(proto::RepositoryModelLoadRequest {
            model_name: "../../etc".into(),
            ..Default::default()
        }))
        .await;
    n += 1;
    check_status(
        "grpc_repository_load_path_traversal",
        Code::InvalidArgument,
        got.map(|_| ()),
        &mut failures,
    );
    let got = c
        .repository_model_unload(proto::RepositoryModelUnloadRequest {
            model_name: "add_one".into(),
            ..Default::default()
        })
        .await;
    n += 1;
    check_status(
        "grpc_repository_unload_no_token",
        Code::Unauthenticated,
        got.map(|_| ()),
        &mut failures,
    );
    let got = c
        .model_metadata(proto::ModelMetadataRequest {
            name: "../../etc/passwd".into(),
            version: String::new(),
        })
        .await;
    n += 1;
    check_status(
        "grpc_metadata_path_traversal",
        Code::NotFound,
        got.map(|_| ()),
        &mut failures,
    );
    good().await;
    println!("{n} gRPC cases");
    assert!(
        failures.is_empty(),
        "{} of {n} gRPC cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(s.stop().await.unwrap());
}

fn check_status(
    name: &str,
    want: tonic::Code,
    got: Result<(), tonic::Status>,
    failures: &mut Vec<String>,
) {
    match got {
        Ok(()) => {
            println!("| `{name}` | OK | |");
            failures.push(format!("{name}: accepted, expected {want:?}"));
        }
        Err(st) => {
            println!("| `{name}` | {:?} | {} |", st.code(), st.message());
            if st.code() != want {
                failures.push(format!(
                    "{name}: expected {want:?}, got {:?}: {}",
                    st.code(),
                    st.message()
                ));
            } else if st.message().is_empty() || st.message().contains('\n') {
                failures.push(format!(
                    "{name}: message is not one non-empty line: {:?}",
                    st.message()
                ));
            }
        }
    }
}

/// `--model-control-mode explicit --load-model '*'` loads every model of the
/// repository, as in Triton (it used to be refused as an invalid name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_model_star_loads_every_model() {
    let tmp = repo();
    let args = ServerArgs {
        model_control_mode: Some("explicit".into()),
        load_model: vec!["*".into()],
        ..ServerArgs::loopback(tmp.path().to_path_buf())
    };
    let s = start(FileConfig::default(), args).await;
    let mut names: Vec<String> = s
        .shared()
        .runtime
        .models()
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    assert_eq!(names, ["add_one", "strings"]);
    // Other names are still checked.
    let bad = ServerArgs {
        model_control_mode: Some("explicit".into()),
        load_model: vec!["../x".into()],
        ..ServerArgs::loopback(tmp.path().to_path_buf())
    };
    let e = ServerConfig::merge(FileConfig::default(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("load_model"), "{e}");
}
