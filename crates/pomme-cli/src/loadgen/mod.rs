//! `pomme bench --url`: a load generator for a running KServe v2 server
//! (pomme, Triton, KServe), over HTTP/JSON, HTTP with the binary tensor
//! extension, or gRPC.
//!
//! It shares the machine with the server it measures, so it is built to be
//! cheap: the request is serialized once into `Bytes` (by `pomme_kserve`,
//! the codec the server itself decodes with) and every send reuses it, each
//! simulated client is one tokio task owning one keep-alive connection, and
//! latencies go into a per-task HDR histogram merged at the end.
//!
//! Counting is exact: every request sent is awaited, including those still in
//! flight when the measurement window closes, and lands in exactly one of
//! ok / rejected / timed out / errors, so `sent == ok + rejected + timed_out + errors`.
//!
//! This module reads the target and the model's inputs and prepares the
//! request; `client` holds the connections, `measure` runs one row and
//! `report` renders the results.

mod client;
mod measure;
mod report;

pub use report::{LoadReport, LoadRow, print_table};

use crate::cli::usage;
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use client::{HttpConn, grpc_channel};
use http_body_util::{BodyExt, Full};
use pomme_core::{DType, Dim, ModelSignature, Shape, Tensor, TensorSpec};
use pomme_kserve::grpc::Contents;
use pomme_kserve::{self as kserve, ModelMetadata, proto};
use std::sync::Arc;
use std::time::Duration;

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
pub type InputMeta = kserve::TensorMetadata;

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
            let mut row = measure::measure(&target, prepared.clone(), conc, cfg, &label).await?;
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
                    brief(&String::from_utf8_lossy(&body))
                );
            }
            let meta: ModelMetadata = serde_json::from_slice(&body)
                .with_context(|| format!("GET {path}: the answer is not model metadata"))?;
            Ok(meta.inputs)
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
                        brief(s.message())
                    )
                })?
                .into_inner();
            Ok(ModelMetadata::from(meta).inputs)
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

/// Serializes the request for the target's protocol, with the same codec
/// the server decodes it with.
pub fn prepare(
    target: &Target,
    model: &str,
    version: Option<&str>,
    inputs: &[(String, Tensor)],
    binary: bool,
) -> Result<Prepared> {
    match target {
        Target::Http { .. } => {
            let encoded = kserve::json::encode_request(inputs, binary)?;
            Ok(Prepared::Http {
                path: model_path(model, version, "/infer"),
                body: Bytes::from(encoded.body),
                header_len: encoded.json_len,
            })
        }
        Target::Grpc { .. } => {
            // Typed contents have no field for 16-bit floats: those always go raw.
            let raw = binary
                || inputs
                    .iter()
                    .any(|(_, t)| matches!(t.dtype(), DType::F16 | DType::BF16));
            let contents = if raw { Contents::Raw } else { Contents::Typed };
            let version = version.map(kserve::parse_version).transpose()?.flatten();
            let req = kserve::grpc::encode_request_with(model, version, inputs, &[], contents)?;
            Ok(Prepared::Grpc {
                body: kserve::grpc::frame(&req)?,
            })
        }
    }
}

/// A server's message on one line, at most 300 characters.
fn brief(s: &str) -> String {
    let s = pomme_core::one_line(s);
    if s.chars().count() > 300 {
        s.chars().take(300).collect::<String>() + "…"
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binary form the HTTP extension and gRPC raw contents carry.
    fn raw_bytes(t: &Tensor) -> Bytes {
        kserve::raw_contents(t).unwrap()
    }

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
