//! `pomme bench --url`: a load generator for a running KServe v2 server
//! (pomme, Triton, KServe), over HTTP/JSON, HTTP with the binary tensor
//! extension, or gRPC.
//!
//! It shares the machine with the server it measures, so it is built to be
//! cheap: the request is serialized once into `Bytes` and every send reuses
//! it (no per-request JSON or protobuf building), each simulated client is one
//! tokio task owning one keep-alive connection (HTTP/1.1 through hyper's
//! connection API, gRPC through one tonic channel with a pass-through codec),
//! and latencies go into a per-task HDR histogram merged at the end.
//!
//! Counting is exact: every request sent is awaited, including those still in
//! flight when the measurement window closes, and lands in exactly one of
//! ok / rejected / timed out / errors, so `sent == ok + rejected + timed_out + errors`.

use crate::cli::usage;
use anyhow::{Context, Result, anyhow, bail};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use pomme_core::{DType, Dim, ModelSignature, Shape, Tensor, TensorSpec};
use pomme_server::proto;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// What to measure (from the command line).
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub url: String,
    pub model: String,
    pub version: Option<String>,
    pub concurrency: Vec<usize>,
    pub batch: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub binary: bool,
    /// `NAME=FILE.npy` overrides of generated inputs.
    pub inputs: Vec<String>,
    /// A request with no answer after this long counts as timed out (and its
    /// connection is replaced), so a stuck server cannot stall the run.
    pub request_timeout: Duration,
    /// Requests per second over all clients (`--rate`); `None`: each client
    /// sends its next request as soon as the previous one is answered.
    pub rate: Option<f64>,
}

/// The server's address, by protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `authority` is `host:port`, also sent as the `Host` header.
    Http { authority: String },
    /// `endpoint` is the `http://host:port` URI tonic connects to.
    Grpc { endpoint: String },
}

impl Target {
    pub fn protocol(&self) -> &'static str {
        match self {
            Target::Http { .. } => "http",
            Target::Grpc { .. } => "grpc",
        }
    }
}

/// Parses `http://HOST:PORT` or `grpc://HOST:PORT` (a trailing `/` is allowed;
/// a missing port means 8000 for HTTP and 8001 for gRPC, pomme's defaults).
pub fn parse_url(url: &str) -> Result<Target> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        usage(format!(
            "--url '{url}' needs a scheme: http://HOST:PORT or grpc://HOST:PORT"
        ))
    })?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') || authority.contains('?') {
        return Err(usage(format!(
            "--url '{url}' must be just http://HOST:PORT or grpc://HOST:PORT (no path)"
        )));
    }
    let with_port = |default: u16| {
        // An IPv6 literal is `[::1]:port`; a colon after the `]` (or anywhere,
        // for names and IPv4) means the port is given.
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{default}")
        }
    };
    match scheme {
        "http" => Ok(Target::Http {
            authority: with_port(8000),
        }),
        "grpc" => Ok(Target::Grpc {
            endpoint: format!("http://{}", with_port(8001)),
        }),
        "https" | "grpcs" => Err(usage(format!(
            "--url '{url}': TLS is not supported by the load generator; use http:// or grpc://"
        ))),
        other => Err(usage(format!(
            "--url '{url}': unknown scheme '{other}' (use http:// or grpc://)"
        ))),
    }
}

/// One input as the server's metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputMeta {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// One measured concurrency level. Field names are a stable interface:
/// deployment scripts read them from `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub concurrency: usize,
    pub batch: usize,
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub timed_out: u64,
    pub errors: u64,
    /// Successful requests per second over the measurement window (including
    /// the wait for the requests in flight when it closed).
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first error answer seen, to tell what the `errors` were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// The whole `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub protocol: &'static str,
    pub binary: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rows: Vec<LoadRow>,
}

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// HTTP 429 / gRPC RESOURCE_EXHAUSTED: admission said no.
    Rejected,
    /// HTTP 504 / gRPC DEADLINE_EXCEEDED, or no answer within the request timeout.
    TimedOut,
    Error(String),
}

/// Maps an HTTP status to an outcome (the error text is filled in by the caller).
pub fn classify_http(status: u16) -> Outcome {
    match status {
        200 => Outcome::Ok,
        429 => Outcome::Rejected,
        504 => Outcome::TimedOut,
        s => Outcome::Error(format!("HTTP {s}")),
    }
}

/// Maps a gRPC status code to an outcome.
pub fn classify_grpc(code: tonic::Code) -> Outcome {
    match code {
        tonic::Code::Ok => Outcome::Ok,
        tonic::Code::ResourceExhausted => Outcome::Rejected,
        tonic::Code::DeadlineExceeded => Outcome::TimedOut,
        c => Outcome::Error(format!("gRPC {c:?}")),
    }
}

/// Runs every row and returns the report.
pub async fn run(cfg: &LoadConfig) -> Result<LoadReport> {
    let target = parse_url(&cfg.url)?;
    if cfg.concurrency.is_empty() || cfg.concurrency.contains(&0) {
        return Err(usage("--concurrency values must be at least 1"));
    }
    if cfg.batch.is_empty() || cfg.batch.contains(&0) {
        return Err(usage("--batch values must be at least 1"));
    }
    if cfg.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err(usage(
            "--rate must be a positive number of requests per second",
        ));
    }
    if cfg.duration.is_zero() {
        return Err(usage("--duration must be more than 0"));
    }
    if cfg.request_timeout.is_zero() {
        return Err(usage("--request-timeout must be more than 0"));
    }
    let meta = fetch_inputs(&target, &cfg.model, cfg.version.as_deref()).await?;
    let overrides = cfg
        .inputs
        .iter()
        .map(|kv| {
            let (name, path) = kv
                .split_once('=')
                .ok_or_else(|| usage(format!("--input '{kv}' is not NAME=FILE.npy")))?;
            if !meta.iter().any(|m| m.name == name) {
                let known: Vec<&str> = meta.iter().map(|m| m.name.as_str()).collect();
                return Err(usage(format!(
                    "--input '{name}': the model has no such input (inputs: {})",
                    known.join(", ")
                )));
            }
            Ok((
                name.to_string(),
                crate::npy::read(std::path::Path::new(path))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    let total = cfg.batch.len() * cfg.concurrency.len();
    for &batch in &cfg.batch {
        let tensors = make_inputs(&meta, batch, &overrides)?;
        let prepared = Arc::new(prepare(
            &target,
            &cfg.model,
            cfg.version.as_deref(),
            &tensors,
            cfg.binary,
        )?);
        let rows_batch = tensors
            .first()
            .and_then(|(_, t)| t.shape().first().copied())
            .unwrap_or(1);
        for &conc in &cfg.concurrency {
            let label = format!(
                "[{}/{total}] {} batch {rows_batch} conc {conc}",
                rows.len() + 1,
                target.protocol()
            );
            let mut row = measure(&target, prepared.clone(), conc, cfg, &label).await?;
            row.batch = rows_batch;
            rows.push(row);
        }
    }
    Ok(LoadReport {
        url: cfg.url.clone(),
        model: cfg.model.clone(),
        model_version: cfg.version.clone(),
        protocol: target.protocol(),
        binary: cfg.binary,
        duration_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        rows,
    })
}

/// Reads the model's inputs from its metadata (`GET /v2/models/M[/versions/V]`
/// or gRPC `ModelMetadata`).
pub async fn fetch_inputs(
    target: &Target,
    model: &str,
    version: Option<&str>,
) -> Result<Vec<InputMeta>> {
    match target {
        Target::Http { authority } => {
            let path = model_path(model, version, "");
            let mut conn = HttpConn::connect(authority).await?;
            let req = hyper::Request::get(&path)
                .header(hyper::header::HOST, authority.as_str())
                .body(Full::new(Bytes::new()))?;
            let resp = conn
                .sender
                .send_request(req)
                .await
                .with_context(|| format!("GET {path} on {authority}"))?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            if !status.is_success() {
                bail!(
                    "GET {path} on {authority} answered {status}: {}",
                    one_line(&String::from_utf8_lossy(&body))
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&body)
                .with_context(|| format!("GET {path}: the answer is not JSON"))?;
            let inputs = v["inputs"]
                .as_array()
                .ok_or_else(|| anyhow!("GET {path}: the metadata has no 'inputs' list"))?;
            inputs
                .iter()
                .map(|i| {
                    Ok(InputMeta {
                        name: i["name"]
                            .as_str()
                            .ok_or_else(|| anyhow!("GET {path}: an input has no name"))?
                            .to_string(),
                        datatype: i["datatype"]
                            .as_str()
                            .ok_or_else(|| anyhow!("GET {path}: an input has no datatype"))?
                            .to_string(),
                        shape: i["shape"]
                            .as_array()
                            .ok_or_else(|| anyhow!("GET {path}: an input has no shape"))?
                            .iter()
                            .map(|d| {
                                d.as_i64()
                                    .ok_or_else(|| anyhow!("GET {path}: a non-integer dim"))
                            })
                            .collect::<Result<_>>()?,
                    })
                })
                .collect()
        }
        Target::Grpc { endpoint } => {
            let channel = grpc_channel(endpoint).await?;
            let mut client =
                proto::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
            let meta = client
                .model_metadata(proto::ModelMetadataRequest {
                    name: model.to_string(),
                    version: version.unwrap_or_default().to_string(),
                })
                .await
                .map_err(|s| {
                    anyhow!(
                        "ModelMetadata '{model}' on {endpoint}: {:?}: {}",
                        s.code(),
                        one_line(s.message())
                    )
                })?
                .into_inner();
            Ok(meta
                .inputs
                .into_iter()
                .map(|t| InputMeta {
                    name: t.name,
                    datatype: t.datatype,
                    shape: t.shape,
                })
                .collect())
        }
    }
}

fn model_path(model: &str, version: Option<&str>, suffix: &str) -> String {
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}{suffix}"),
        None => format!("/v2/models/{model}{suffix}"),
    }
}

/// Inputs for one batch size: `NAME=FILE.npy` where given, otherwise
/// deterministic data shaped from the metadata (a variable first dimension
/// becomes `batch`, other variable ones 8, as the local `pomme bench` does).
pub fn make_inputs(
    meta: &[InputMeta],
    batch: usize,
    overrides: &[(String, Tensor)],
) -> Result<Vec<(String, Tensor)>> {
    let specs = meta
        .iter()
        .map(|m| {
            let dtype = DType::from_kserve(&m.datatype).ok_or_else(|| {
                anyhow!("input '{}' has unknown datatype '{}'", m.name, m.datatype)
            })?;
            let shape = Shape(
                m.shape
                    .iter()
                    .map(|&d| {
                        if d >= 0 {
                            Dim::Fixed(d as usize)
                        } else {
                            Dim::Symbolic("?".into())
                        }
                    })
                    .collect(),
            );
            Ok(TensorSpec::new(m.name.clone(), dtype, shape))
        })
        .collect::<Result<Vec<_>>>()?;
    let sig = ModelSignature {
        inputs: specs,
        outputs: Vec::new(),
    };
    let mut tensors = crate::infer::synthetic_batch(&sig, batch)?;
    for (name, t) in overrides {
        if let Some(slot) = tensors.iter_mut().find(|(n, _)| n == name) {
            slot.1 = t.clone();
        }
    }
    Ok(tensors)
}

/// A request serialized once, sent many times.
#[derive(Debug)]
pub enum Prepared {
    Http {
        path: String,
        body: Bytes,
        /// `Inference-Header-Content-Length` with the binary extension.
        header_len: Option<usize>,
    },
    /// An encoded `ModelInferRequest` in its gRPC frame (a 0 compression
    /// flag and the 4-byte big-endian length before the message).
    Grpc { body: Bytes },
}

/// Serializes the request for the target's protocol.
pub fn prepare(
    target: &Target,
    model: &str,
    version: Option<&str>,
    inputs: &[(String, Tensor)],
    binary: bool,
) -> Result<Prepared> {
    match target {
        Target::Http { .. } => {
            let path = model_path(model, version, "/infer");
            if binary {
                let mut header_inputs = Vec::new();
                let mut raw = BytesMut::new();
                for (name, t) in inputs {
                    let data = raw_bytes(t);
                    header_inputs.push(serde_json::json!({
                        "name": name,
                        "datatype": t.dtype().kserve_name(),
                        "shape": t.shape(),
                        "parameters": {"binary_data_size": data.len()},
                    }));
                    raw.put_slice(&data);
                }
                let header = serde_json::to_vec(&serde_json::json!({
                    "inputs": header_inputs,
                    "parameters": {"binary_data_output": true},
                }))?;
                let mut body = BytesMut::with_capacity(header.len() + raw.len());
                body.put_slice(&header);
                body.put_slice(&raw);
                Ok(Prepared::Http {
                    path,
                    body: body.freeze(),
                    header_len: Some(header.len()),
                })
            } else {
                let json_inputs = inputs
                    .iter()
                    .map(|(name, t)| {
                        Ok(serde_json::json!({
                            "name": name,
                            "datatype": t.dtype().kserve_name(),
                            "shape": t.shape(),
                            "data": json_data(t)?,
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let body = serde_json::to_vec(&serde_json::json!({ "inputs": json_inputs }))?;
                Ok(Prepared::Http {
                    path,
                    body: Bytes::from(body),
                    header_len: None,
                })
            }
        }
        Target::Grpc { .. } => {
            use proto::model_infer_request::InferInputTensor;
            let mut req = proto::ModelInferRequest {
                model_name: model.to_string(),
                model_version: version.unwrap_or_default().to_string(),
                ..Default::default()
            };
            // Typed contents have no field for 16-bit floats: those always go raw.
            let raw = binary
                || inputs
                    .iter()
                    .any(|(_, t)| matches!(t.dtype(), DType::F16 | DType::BF16));
            for (name, t) in inputs {
                req.inputs.push(InferInputTensor {
                    name: name.clone(),
                    datatype: t.dtype().kserve_name().to_string(),
                    shape: t.shape().iter().map(|&d| d as i64).collect(),
                    contents: if raw { None } else { Some(typed_contents(t)?) },
                    ..Default::default()
                });
                if raw {
                    req.raw_input_contents.push(raw_bytes(t));
                }
            }
            let msg = prost::Message::encode_to_vec(&req);
            let len = u32::try_from(msg.len())
                .map_err(|_| anyhow!("the request is larger than 4 GiB"))?;
            let mut body = BytesMut::with_capacity(5 + msg.len());
            body.put_u8(0);
            body.put_u32(len);
            body.put_slice(&msg);
            Ok(Prepared::Grpc {
                body: body.freeze(),
            })
        }
    }
}

/// A tensor's bytes as the binary extension and `raw_input_contents` carry
/// them: little-endian elements, or for BYTES each element as a 4-byte
/// little-endian length followed by its bytes.
fn raw_bytes(t: &Tensor) -> Bytes {
    if let Some(strings) = t.strings() {
        let mut out = BytesMut::new();
        for s in strings {
            out.put_u32_le(s.len() as u32);
            out.put_slice(s);
        }
        out.freeze()
    } else {
        t.raw().cloned().unwrap_or_default()
    }
}

fn json_data(t: &Tensor) -> Result<serde_json::Value> {
    use serde_json::Value;
    let v = match t.dtype() {
        DType::Bytes => Value::from(
            t.strings()
                .unwrap_or_default()
                .iter()
                .map(|s| Value::from(String::from_utf8_lossy(s).into_owned()))
                .collect::<Vec<_>>(),
        ),
        DType::Bool => Value::from(
            t.raw()
                .map(|r| r.iter().map(|&b| b != 0).collect::<Vec<_>>())
                .unwrap_or_default(),
        ),
        DType::U8 => Value::from(t.to_vec::<u8>()?),
        DType::U16 => Value::from(t.to_vec::<u16>()?),
        DType::U32 => Value::from(t.to_vec::<u32>()?),
        DType::U64 => Value::from(t.to_vec::<u64>()?),
        DType::I8 => Value::from(t.to_vec::<i8>()?),
        DType::I16 => Value::from(t.to_vec::<i16>()?),
        DType::I32 => Value::from(t.to_vec::<i32>()?),
        DType::I64 => Value::from(t.to_vec::<i64>()?),
        DType::F32 => Value::from(t.to_vec::<f32>()?),
        DType::F64 | DType::F16 | DType::BF16 => Value::from(t.to_f64_vec()?),
    };
    Ok(v)
}

fn typed_contents(t: &Tensor) -> Result<proto::InferTensorContents> {
    let mut c = proto::InferTensorContents::default();
    let widen = |v: Vec<i64>| v.into_iter().map(|x| x as i32).collect::<Vec<i32>>();
    match t.dtype() {
        DType::Bytes => c.bytes_contents = t.strings().unwrap_or_default().to_vec(),
        DType::Bool => {
            c.bool_contents = t
                .raw()
                .map(|r| r.iter().map(|&b| b != 0).collect())
                .unwrap_or_default()
        }
        DType::U8 => c.uint_contents = t.to_vec::<u8>()?.into_iter().map(u32::from).collect(),
        DType::U16 => c.uint_contents = t.to_vec::<u16>()?.into_iter().map(u32::from).collect(),
        DType::U32 => c.uint_contents = t.to_vec::<u32>()?,
        DType::U64 => c.uint64_contents = t.to_vec::<u64>()?,
        DType::I8 => c.int_contents = widen(t.to_vec::<i8>()?.into_iter().map(i64::from).collect()),
        DType::I16 => {
            c.int_contents = widen(t.to_vec::<i16>()?.into_iter().map(i64::from).collect())
        }
        DType::I32 => c.int_contents = t.to_vec::<i32>()?,
        DType::I64 => c.int64_contents = t.to_vec::<i64>()?,
        DType::F32 => c.fp32_contents = t.to_vec::<f32>()?,
        DType::F64 => c.fp64_contents = t.to_vec::<f64>()?,
        DType::F16 | DType::BF16 => bail!("16-bit floats have no typed gRPC contents"),
    }
    Ok(c)
}

/// One HTTP/1.1 keep-alive connection.
struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl HttpConn {
    async fn connect(authority: &str) -> Result<HttpConn> {
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {authority}"))?;
        // Requests are small and latency is what is measured: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {authority}"))?;
        tokio::spawn(async move {
            // The connection ends when its sender is dropped or the server closes it.
            let _ = conn.await;
        });
        Ok(HttpConn { sender })
    }
}

async fn grpc_channel(endpoint: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| usage(format!("bad gRPC endpoint '{endpoint}': {e}")))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

/// One HTTP/2 connection for unary gRPC calls, driven by the client task
/// that owns it (h2 directly, no connection task and no tonic channel).
///
/// tonic's `Channel` puts a buffer task and hyper's connection task between
/// the caller and the socket, and hyper writes a request's HEADERS and DATA
/// frames in two `writev`s (the body waits for stream capacity, which the
/// connection task assigns after sending the headers). On a 2-core machine
/// shared with the server those hops, thread wake-ups and the server's second
/// read cost more than the server's own work per tiny request. Here the
/// request is queued whole (HEADERS, then DATA with END_STREAM) and the owning
/// task polls the connection itself, so one request is one write and the
/// answer one read, on whichever thread runs the task.
struct GrpcConn {
    send: h2::client::SendRequest<Bytes>,
    conn: h2::client::Connection<TcpStream, Bytes>,
}

/// The connection ended (or failed) while a call waited on it.
enum Driven<T> {
    Done(T),
    Closed(String),
}

impl GrpcConn {
    async fn connect(endpoint: &str) -> Result<GrpcConn> {
        let authority = endpoint.trim_start_matches("http://");
        let stream = TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        let _ = stream.set_nodelay(true);
        // hyper's client windows (tonic's defaults), so large tensors are not
        // held back by HTTP/2's 64 KiB default.
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(2 << 20)
            .initial_connection_window_size(5 << 20)
            .handshake(stream)
            .await
            .with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
        Ok(GrpcConn { send, conn })
    }

    /// Polls `fut` and, while it is pending, the connection (which writes
    /// what `fut` queued and reads what answers it).
    ///
    /// Only the connection's progress can complete `fut`, and the connection
    /// is polled here, so `fut` is polled with a no-op waker: h2 wakes a
    /// stream's waker when its answer arrives, during the connection poll of
    /// this very task, and a task woken while it runs is re-queued (waking an
    /// idle runtime thread for nothing on every call).
    async fn drive<F: std::future::Future>(&mut self, fut: F) -> Driven<F::Output> {
        use std::task::{Context, Poll, Waker};
        let mut fut = std::pin::pin!(fut);
        let conn = &mut self.conn;
        std::future::poll_fn(|cx| {
            let mut noop = Context::from_waker(Waker::noop());
            if let Poll::Ready(v) = fut.as_mut().poll(&mut noop) {
                return Poll::Ready(Driven::Done(v));
            }
            match std::pin::Pin::new(&mut *conn).poll(cx) {
                Poll::Pending => match fut.as_mut().poll(&mut noop) {
                    Poll::Ready(v) => Poll::Ready(Driven::Done(v)),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(Ok(())) => {
                    Poll::Ready(Driven::Closed("the server closed the connection".into()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Driven::Closed(format!("connection: {e}"))),
            }
        })
        .await
    }

    /// Polls the connection once with a no-op waker.
    ///
    /// h2 wakes the connection's last waker when a request is queued or a
    /// finished stream's handles are dropped; that waker is this very task,
    /// and a task woken while it runs is re-queued, which wakes an idle runtime
    /// thread for nothing on every call. After this poll those events wake
    /// nobody; `drive` polls with the real waker again before any wait
    /// (socket readiness seen in between is kept by tokio, not lost).
    fn quiesce(&mut self) -> std::result::Result<(), String> {
        let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
        match std::pin::Pin::new(&mut self.conn).poll(&mut noop) {
            std::task::Poll::Pending => Ok(()),
            std::task::Poll::Ready(Ok(())) => Err("the server closed the connection".into()),
            std::task::Poll::Ready(Err(e)) => Err(format!("connection: {e}")),
        }
    }

    /// One unary call: `uri` and the framed message `body`. `Err` means the
    /// connection is unusable.
    async fn unary(&mut self, uri: &str, body: &Bytes) -> std::result::Result<Outcome, String> {
        let mut send = self.send.clone();
        match self
            .drive(std::future::poll_fn(|cx| send.poll_ready(cx)))
            .await
        {
            Driven::Done(Ok(())) => {}
            Driven::Done(Err(e)) => return Err(format!("HTTP/2: {e}")),
            Driven::Closed(e) => return Err(e),
        }
        self.quiesce()?;
        let req = hyper::Request::post(uri)
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (resp, mut stream) = send
            .send_request(req, false)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        stream
            .send_data(body.clone(), true)
            .map_err(|e| format!("HTTP/2: {e}"))?;
        let resp = match self.drive(resp).await {
            Driven::Done(Ok(r)) => r,
            Driven::Done(Err(e)) => return Ok(Outcome::Error(format!("HTTP/2 stream: {e}"))),
            Driven::Closed(e) => return Err(e),
        };
        let (head, mut recv) = resp.into_parts();
        if head.status != hyper::StatusCode::OK {
            return Ok(Outcome::Error(format!("HTTP {}", head.status.as_u16())));
        }
        // A trailers-only answer (how errors come) carries grpc-status in its headers.
        let mut status = grpc_status(&head.headers);
        while !recv.is_end_stream() {
            match self.drive(recv.data()).await {
                Driven::Done(Some(Ok(chunk))) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
                Driven::Done(None) => break,
                Driven::Done(Some(Err(e))) => {
                    return Ok(Outcome::Error(format!("reading the answer: {e}")));
                }
                Driven::Closed(e) => return Err(e),
            }
        }
        if status.is_none() {
            match self.drive(recv.trailers()).await {
                Driven::Done(Ok(Some(t))) => status = grpc_status(&t),
                Driven::Done(Ok(None)) => {}
                Driven::Done(Err(e)) => {
                    return Ok(Outcome::Error(format!("reading the trailers: {e}")));
                }
                Driven::Closed(e) => return Err(e),
            }
        }
        // Dropping the finished stream's handles wakes the connection too.
        self.quiesce()?;
        drop((recv, stream));
        Ok(match status {
            None => Outcome::Error("the answer has no grpc-status".into()),
            Some((code, message)) => match classify_grpc(code) {
                Outcome::Error(c) => Outcome::Error(format!("{c}: {}", one_line(&message))),
                o => o,
            },
        })
    }
}

/// `grpc-status` and the (percent-decoded) `grpc-message` from headers or trailers.
fn grpc_status(h: &hyper::HeaderMap) -> Option<(tonic::Code, String)> {
    tonic::Status::from_header_map(h).map(|s| (s.code(), s.message().to_string()))
}

/// One simulated client: a connection and the request it repeats.
enum Client {
    Http {
        authority: String,
        conn: Option<HttpConn>,
    },
    Grpc {
        endpoint: String,
        /// `endpoint` + the ModelInfer path.
        uri: String,
        conn: Option<Box<GrpcConn>>,
    },
}

const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

impl Client {
    async fn connect(target: &Target) -> Result<Client> {
        Ok(match target {
            Target::Http { authority } => Client::Http {
                authority: authority.clone(),
                conn: Some(HttpConn::connect(authority).await?),
            },
            Target::Grpc { endpoint } => Client::Grpc {
                endpoint: endpoint.clone(),
                uri: format!("{endpoint}{MODEL_INFER}"),
                conn: Some(Box::new(GrpcConn::connect(endpoint).await?)),
            },
        })
    }

    /// Drops the connection of a request abandoned half-way (HTTP/1.1 cannot
    /// reuse it; the gRPC connection may hold the abandoned stream's state).
    fn abandon(&mut self) {
        match self {
            Client::Http { conn, .. } => *conn = None,
            Client::Grpc { conn, .. } => *conn = None,
        }
    }

    async fn call(&mut self, p: &Prepared) -> Outcome {
        match (self, p) {
            (
                Client::Http { authority, conn },
                Prepared::Http {
                    path,
                    body,
                    header_len,
                },
            ) => {
                // A connection the server closed is replaced; the request that
                // found it closed counts as an error.
                let c = match conn {
                    Some(c) if !c.sender.is_closed() => c,
                    _ => match HttpConn::connect(authority).await {
                        Ok(c) => conn.insert(c),
                        Err(e) => return Outcome::Error(format!("{e:#}")),
                    },
                };
                if let Err(e) = c.sender.ready().await {
                    *conn = None;
                    return Outcome::Error(format!("connection: {e}"));
                }
                let mut req = hyper::Request::post(path.as_str())
                    .header(hyper::header::HOST, authority.as_str())
                    .header(hyper::header::CONTENT_LENGTH, body.len());
                req = match header_len {
                    Some(n) => req
                        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                        .header("inference-header-content-length", *n),
                    None => req.header(hyper::header::CONTENT_TYPE, "application/json"),
                };
                let req = match req.body(Full::new(body.clone())) {
                    Ok(r) => r,
                    Err(e) => return Outcome::Error(e.to_string()),
                };
                match c.sender.send_request(req).await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        // The body is read to the end so the connection can be reused.
                        let body = resp.into_body().collect().await;
                        match (classify_http(status), body) {
                            (_, Err(e)) => {
                                *conn = None;
                                Outcome::Error(format!("reading the answer: {e}"))
                            }
                            (Outcome::Error(s), Ok(b)) => Outcome::Error(format!(
                                "{s}: {}",
                                one_line(&String::from_utf8_lossy(&b.to_bytes()))
                            )),
                            (o, Ok(_)) => o,
                        }
                    }
                    Err(e) => {
                        *conn = None;
                        Outcome::Error(format!("request: {e}"))
                    }
                }
            }
            (
                Client::Grpc {
                    endpoint,
                    uri,
                    conn,
                },
                Prepared::Grpc { body },
            ) => {
                // A broken connection is replaced; the request that found it
                // broken counts as an error.
                let c = match conn {
                    Some(c) => c,
                    None => match GrpcConn::connect(endpoint).await {
                        Ok(c) => conn.insert(Box::new(c)),
                        Err(e) => return Outcome::Error(format!("{e:#}")),
                    },
                };
                match c.unary(uri, body).await {
                    Ok(o) => o,
                    Err(e) => {
                        *conn = None;
                        Outcome::Error(e)
                    }
                }
            }
            _ => Outcome::Error("request prepared for another protocol".into()),
        }
    }
}

/// What one client task counted.
struct TaskCounts {
    sent: u64,
    ok: u64,
    rejected: u64,
    timed_out: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; values above are clamped.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `conc` clients for warm-up + duration and counts what the
/// measurement window saw.
async fn measure(
    target: &Target,
    prepared: Arc<Prepared>,
    conc: usize,
    cfg: &LoadConfig,
    label: &str,
) -> Result<LoadRow> {
    // Connect every client first so connection set-up is not measured.
    let mut clients = Vec::with_capacity(conc);
    for _ in 0..conc {
        clients.push(Client::connect(target).await?);
    }
    let pb = ProgressBar::new(cfg.duration.as_millis() as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {elapsed} ok {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    let ok_so_far = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    // Paced: each client owns every conc-th slot of the schedule, offset so
    // the clients interleave evenly.
    let interval = cfg.rate.map(|r| Duration::from_secs_f64(conc as f64 / r));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let prepared = prepared.clone();
            let ok_so_far = ok_so_far.clone();
            let request_timeout = cfg.request_timeout;
            let mut next_at = interval.map(|iv| start + iv.mul_f64(i as f64 / conc as f64));
            tokio::spawn(async move {
                let mut c = TaskCounts {
                    sent: 0,
                    ok: 0,
                    rejected: 0,
                    timed_out: 0,
                    errors: 0,
                    first_error: None,
                    hist: new_hist(),
                };
                loop {
                    if let (Some(at), Some(iv)) = (next_at.as_mut(), interval) {
                        if *at >= end {
                            break;
                        }
                        tokio::time::sleep_until((*at).into()).await;
                        // A client that fell behind (slow answers) resumes the
                        // schedule from now rather than bursting to catch up.
                        *at = (*at + iv).max(Instant::now());
                    }
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let outcome =
                        match tokio::time::timeout(request_timeout, client.call(&prepared)).await {
                            Ok(o) => o,
                            Err(_) => {
                                client.abandon();
                                Outcome::TimedOut
                            }
                        };
                    // Warm-up requests are sent but never counted.
                    if t < measure_from {
                        continue;
                    }
                    c.sent += 1;
                    match outcome {
                        Outcome::Ok => {
                            c.ok += 1;
                            ok_so_far.fetch_add(1, Ordering::Relaxed);
                            let us = t.elapsed().as_micros().max(1) as u64;
                            c.hist.saturating_record(us);
                        }
                        Outcome::Rejected => c.rejected += 1,
                        Outcome::TimedOut => c.timed_out += 1,
                        Outcome::Error(e) => {
                            c.errors += 1;
                            c.first_error.get_or_insert(e);
                        }
                    }
                }
                c
            })
        })
        .collect();
    let ticker = {
        let pb = pb.clone();
        let ok_so_far = ok_so_far.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = Instant::now();
                pb.set_position(now.saturating_duration_since(measure_from).as_millis() as u64);
                pb.set_prefix(ok_so_far.load(Ordering::Relaxed).to_string());
            }
        })
    };
    let mut total = TaskCounts {
        sent: 0,
        ok: 0,
        rejected: 0,
        timed_out: 0,
        errors: 0,
        first_error: None,
        hist: new_hist(),
    };
    for t in tasks {
        let c = t.await.context("a load generator task failed")?;
        total.sent += c.sent;
        total.ok += c.ok;
        total.rejected += c.rejected;
        total.timed_out += c.timed_out;
        total.errors += c.errors;
        if total.first_error.is_none() {
            total.first_error = c.first_error;
        }
        total
            .hist
            .add(&c.hist)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
    }
    // The window closes when the last in-flight request has come back.
    let window = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    ticker.abort();
    pb.finish_and_clear();
    let ms = |q: f64| {
        if total.hist.is_empty() {
            0.0
        } else {
            total.hist.value_at_quantile(q) as f64 / 1e3
        }
    };
    Ok(LoadRow {
        concurrency: conc,
        batch: 0,
        sent: total.sent,
        ok: total.ok,
        rejected: total.rejected,
        timed_out: total.timed_out,
        errors: total.errors,
        rps: total.ok as f64 / window,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: if total.hist.is_empty() {
            0.0
        } else {
            total.hist.max() as f64 / 1e3
        },
        first_error: total.first_error,
    })
}

/// The table printed without `--json`.
pub fn print_table(report: &LoadReport) {
    println!(
        "{} {} model {}{}{}",
        report.protocol,
        report.url,
        report.model,
        report
            .model_version
            .as_ref()
            .map(|v| format!(" version {v}"))
            .unwrap_or_default(),
        if report.binary {
            " (binary tensors)"
        } else {
            ""
        }
    );
    println!(
        "{:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "CONC",
        "BATCH",
        "SENT",
        "OK",
        "REJECTED",
        "TIMEOUT",
        "ERRORS",
        "REQ/S",
        "P50 ms",
        "P90 ms",
        "P99 ms",
        "MAX ms"
    );
    for r in &report.rows {
        println!(
            "{:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            r.concurrency,
            r.batch,
            r.sent,
            r.ok,
            r.rejected,
            r.timed_out,
            r.errors,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms
        );
    }
    for r in &report.rows {
        if let Some(e) = &r.first_error {
            eprintln!("concurrency {}: first error: {e}", r.concurrency);
        }
    }
}

fn one_line(s: &str) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > 300 {
        s.chars().take(300).collect::<String>() + "…"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8000").unwrap(),
            Target::Http {
                authority: "127.0.0.1:8000".into()
            }
        );
        assert_eq!(
            parse_url("http://localhost/").unwrap(),
            Target::Http {
                authority: "localhost:8000".into()
            }
        );
        assert_eq!(
            parse_url("grpc://[::1]").unwrap(),
            Target::Grpc {
                endpoint: "http://[::1]:8001".into()
            }
        );
        assert_eq!(
            parse_url("grpc://h:9").unwrap(),
            Target::Grpc {
                endpoint: "http://h:9".into()
            }
        );
        for bad in [
            "127.0.0.1:8000",
            "ftp://x",
            "https://x",
            "http://x/v2",
            "http://",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(crate::cli::exit_code_of(&e), 2, "{bad}");
        }
    }

    #[test]
    fn outcomes() {
        assert_eq!(classify_http(200), Outcome::Ok);
        assert_eq!(classify_http(429), Outcome::Rejected);
        assert_eq!(classify_http(504), Outcome::TimedOut);
        assert!(matches!(classify_http(503), Outcome::Error(_)));
        assert_eq!(
            classify_grpc(tonic::Code::ResourceExhausted),
            Outcome::Rejected
        );
        assert_eq!(
            classify_grpc(tonic::Code::DeadlineExceeded),
            Outcome::TimedOut
        );
        assert!(matches!(
            classify_grpc(tonic::Code::NotFound),
            Outcome::Error(_)
        ));
    }

    fn meta() -> Vec<InputMeta> {
        vec![
            InputMeta {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 4],
            },
            InputMeta {
                name: "s".into(),
                datatype: "BYTES".into(),
                shape: vec![2],
            },
        ]
    }

    #[test]
    fn inputs_follow_metadata_and_overrides() {
        let t = make_inputs(&meta(), 3, &[]).unwrap();
        assert_eq!(t[0].1.shape(), &[3, 4]);
        assert_eq!(t[1].1.shape(), &[2]);
        let o = Tensor::from_vec(vec![1, 4], vec![1.0f32; 4]).unwrap();
        let t = make_inputs(&meta(), 3, &[("x".into(), o)]).unwrap();
        assert_eq!(t[0].1.shape(), &[1, 4]);
        let bad = vec![InputMeta {
            name: "x".into(),
            datatype: "FP99".into(),
            shape: vec![1],
        }];
        assert!(make_inputs(&bad, 1, &[]).is_err());
    }

    #[test]
    fn bodies_are_valid_kserve() {
        let x = Tensor::from_vec(vec![1, 2], vec![1.5f32, -2.0]).unwrap();
        let inputs = vec![("x".to_string(), x)];
        let http = Target::Http {
            authority: "h:1".into(),
        };
        let Prepared::Http {
            path,
            body,
            header_len,
        } = prepare(&http, "m", Some("2"), &inputs, false).unwrap()
        else {
            panic!("not HTTP")
        };
        assert_eq!(path, "/v2/models/m/versions/2/infer");
        assert!(header_len.is_none());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["inputs"][0]["data"], serde_json::json!([1.5, -2.0]));
        assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 2]));

        let Prepared::Http {
            body, header_len, ..
        } = prepare(&http, "m", None, &inputs, true).unwrap()
        else {
            panic!("not HTTP")
        };
        let n = header_len.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
        assert_eq!(
            v["inputs"][0]["parameters"]["binary_data_size"],
            serde_json::json!(8)
        );
        assert_eq!(&body[n..n + 4], &1.5f32.to_le_bytes());

        let grpc = Target::Grpc {
            endpoint: "http://h:1".into(),
        };
        for binary in [false, true] {
            let Prepared::Grpc { body } = prepare(&grpc, "m", None, &inputs, binary).unwrap()
            else {
                panic!("not gRPC")
            };
            assert_eq!(body[0], 0, "uncompressed");
            assert_eq!(
                u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize,
                body.len() - 5
            );
            let req: proto::ModelInferRequest = prost::Message::decode(&body[5..]).unwrap();
            assert_eq!(req.model_name, "m");
            assert_eq!(req.inputs[0].shape, vec![1, 2]);
            if binary {
                assert_eq!(req.raw_input_contents[0].len(), 8);
            } else {
                assert_eq!(
                    req.inputs[0].contents.as_ref().unwrap().fp32_contents,
                    vec![1.5, -2.0]
                );
            }
        }
    }

    #[test]
    fn bytes_tensors_are_length_prefixed() {
        let t = Tensor::from_strings(vec![2], vec![Bytes::from("ab"), Bytes::from("")]).unwrap();
        assert_eq!(&raw_bytes(&t)[..], &[2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
    }
}
