//! The HTTP/REST endpoints of the KServe v2 protocol and Triton's extensions
//! (axum). Handlers only convert: the body through `pomme_kserve::json`,
//! configuration and statistics through [`crate::triton`], and call
//! [`Shared`]; errors become `{"error": "..."}` with the status from
//! `Error::http_status()`.

use crate::kserve::{self, HEADER_CONTENT_LENGTH};
use crate::service::Shared;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pomme_core::Error;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;

/// Bodies larger than this are decoded off the async worker threads.
const BLOCKING_DECODE_BYTES: usize = 256 * 1024;

/// An error on its way to the client.
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Error::Internal(detail) = &self.0 {
            tracing::error!(error = %detail, "internal error");
        }
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        error_response(status, &self.0.client_message())
    }
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

type ApiResult<T> = Result<T, ApiError>;

/// The HTTP application: every route, the body limit and request-id spans.
pub fn app(shared: Arc<Shared>) -> Router {
    let limit = shared.limits.max_body_bytes;
    Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/stats", get(all_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats_v),
        )
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .merge(crate::text::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(shared.clone(), request_span))
        .with_state(shared)
}

/// The metrics application: `GET /metrics`.
pub fn metrics_app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared)
}

static NEXT_REQUEST: AtomicU64 = AtomicU64::new(1);

/// Gives every request a span carrying its id (the client's `x-request-id`, or
/// a counter). With tracing configured, the span continues the trace named by
/// the request's W3C `traceparent` header (sampled flag included).
async fn request_span(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect::<String>())
        .unwrap_or_else(|| NEXT_REQUEST.fetch_add(1, Ordering::Relaxed).to_string());
    let span = tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id, protocol = "http", otel.kind = "server");
    if s.trace_context {
        crate::trace_context::adopt(&span, crate::trace_context::from_headers(req.headers()));
    }
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Health answers carry the Open Inference Protocol's JSON bodies
/// (`{"live": true}`, `{"ready": true}`), which KServe's SDK reads; Triton's
/// clients look at the status code only.
async fn live(State(s): State<Arc<Shared>>) -> (StatusCode, Json<serde_json::Value>) {
    let live = s.is_live();
    (health_code(live), Json(serde_json::json!({ "live": live })))
}

async fn ready(State(s): State<Arc<Shared>>) -> (StatusCode, Json<serde_json::Value>) {
    let ready = s.is_ready();
    (
        health_code(ready),
        Json(serde_json::json!({ "ready": ready })),
    )
}

fn health_code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata(State(s): State<Arc<Shared>>) -> Json<kserve::ServerMetadata> {
    Json(s.server_metadata())
}

fn version(v: &str) -> ApiResult<Option<u64>> {
    Ok(kserve::parse_version(v)?)
}

async fn model_metadata(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
) -> ApiResult<Json<kserve::ModelMetadata>> {
    Ok(Json(s.metadata(&model, None)?))
}

async fn model_metadata_v(
    State(s): State<Arc<Shared>>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Json<kserve::ModelMetadata>> {
    Ok(Json(s.metadata(&model, version(&v)?)?))
}

fn ready_status(s: &Shared, model: &str, v: Option<u64>) -> Response {
    if s.model_ready(model, v) {
        // The Open Inference Protocol's model-ready body.
        Json(serde_json::json!({ "name": model, "ready": true })).into_response()
    } else if s.runtime.models().iter().any(|m| m.name == model) {
        error_response(StatusCode::SERVICE_UNAVAILABLE, "model is not ready")
    } else {
        ApiError(Error::ModelNotFound(format!("'{model}'"))).into_response()
    }
}

async fn model_ready(State(s): State<Arc<Shared>>, Path(model): Path<String>) -> Response {
    ready_status(&s, &model, None)
}

async fn model_ready_v(
    State(s): State<Arc<Shared>>,
    Path((model, v)): Path<(String, String)>,
) -> Response {
    match version(&v) {
        Ok(v) => ready_status(&s, &model, v),
        Err(e) => e.into_response(),
    }
}

async fn infer(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    run_infer(s, model, None, headers, body).await
}

async fn infer_v(
    State(s): State<Arc<Shared>>,
    Path((model, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let v = version(&v)?;
    run_infer(s, model, v, headers, body).await
}

async fn run_infer(
    s: Arc<Shared>,
    model: String,
    version: Option<u64>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return Ok(error_response(rejection.status(), &rejection.body_text())),
    };
    let header_len = match headers.get(HEADER_CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::invalid_input("bad Inference-Header-Content-Length value"))?
                .to_string(),
        ),
    };
    let limits = s.limits.clone();
    let decoded = if body.len() > BLOCKING_DECODE_BYTES {
        tokio::task::spawn_blocking(move || {
            kserve::json::decode_request(body, header_len.as_deref(), &limits)
        })
        .await
        .map_err(|e| Error::Internal(format!("decode task: {e}")))??
    } else {
        kserve::json::decode_request(body, header_len.as_deref(), &limits)?
    };
    let prefs = decoded.output_prefs();
    let resp = s.infer(model, version, decoded).await?;
    let encoded = tracing::debug_span!("respond", outputs = resp.outputs.len()).in_scope(|| {
        kserve::json::encode_response(
            &resp.model,
            resp.version,
            resp.id.as_deref(),
            &resp.outputs,
            &prefs,
        )
    })?;
    let mut r = Response::new(axum::body::Body::from(encoded.body));
    let h = r.headers_mut();
    match encoded.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(r)
}

async fn model_config(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.model_config(&model, None)?.into_json()))
}

async fn model_config_v(
    State(s): State<Arc<Shared>>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.model_config(&model, version(&v)?)?.into_json()))
}

async fn all_stats(State(s): State<Arc<Shared>>) -> ApiResult<Json<Value>> {
    Ok(Json(s.stats_report(None, None)?.into_json()))
}

async fn model_stats(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.stats_report(Some(&model), None)?.into_json()))
}

async fn model_stats_v(
    State(s): State<Arc<Shared>>,
    Path((model, v)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(
        s.stats_report(Some(&model), version(&v)?)?.into_json(),
    ))
}

fn check_auth(s: &Shared, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    (!s.authorized(auth)).then(|| {
        let mut r = error_response(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        r
    })
}

async fn repository_index(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    if let Some(denied) = check_auth(&s, &headers) {
        return Ok(denied);
    }
    let ready_only = if body.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid_input(format!("malformed JSON: {e}")))?;
        v.get("ready").and_then(Value::as_bool).unwrap_or(false)
    };
    Ok(Json(s.index(ready_only)).into_response())
}

async fn repository_load(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(denied) = check_auth(&s, &headers) {
        return Ok(denied);
    }
    s.load_from_api(&model).await?;
    Ok(StatusCode::OK.into_response())
}

async fn repository_unload(
    State(s): State<Arc<Shared>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(denied) = check_auth(&s, &headers) {
        return Ok(denied);
    }
    s.unload_from_api(&model).await?;
    Ok(StatusCode::OK.into_response())
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let body = s.runtime.encode_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
