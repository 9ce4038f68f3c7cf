//! The gRPC `inference.GRPCInferenceService` (tonic), with the same semantics
//! as the HTTP endpoints. Handlers only convert: messages through
//! `pomme_kserve::grpc`, configuration and statistics through
//! [`crate::triton`], and call [`Shared`]; status codes come from
//! `Error::grpc_code()`.

use crate::kserve;
use crate::proto::{self, grpc_inference_service_server::GrpcInferenceService};
use crate::service::Shared;
use futures::{Stream, StreamExt};
use pomme_core::{Error, GrpcCode};
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

/// How many requests of one stream run at once; replies keep request order.
const STREAM_CONCURRENCY: usize = 16;

/// The gRPC service over the shared server state.
#[derive(Clone)]
pub struct GrpcService {
    shared: Arc<Shared>,
}

impl GrpcService {
    pub fn new(shared: Arc<Shared>) -> GrpcService {
        GrpcService { shared }
    }

    /// The tonic server for this service, with message limits from the config.
    pub fn into_server(
        self,
    ) -> proto::grpc_inference_service_server::GrpcInferenceServiceServer<GrpcService> {
        let max = self.shared.limits.max_body_bytes;
        proto::grpc_inference_service_server::GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if self.shared.authorized(auth) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token"))
        }
    }
}

/// tonic refuses a request message over `max_decoding_message_size` with
/// OUT_OF_RANGE before any handler runs; gRPC's status-code guide (and
/// Triton) say RESOURCE_EXHAUSTED for a message over a size limit. The
/// refusal is a trailers-only response, so its header is rewritten here.
pub fn oversize_is_resource_exhausted<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let h = resp.headers_mut();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if oversize {
        h.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("8"),
        );
    }
    resp
}

/// Maps a pomme error to a gRPC status, hiding internal details.
pub fn status(e: Error) -> Status {
    if let Error::Internal(detail) = &e {
        tracing::error!(error = %detail, "internal error");
    }
    let code = match e.grpc_code() {
        GrpcCode::Cancelled => Code::Cancelled,
        GrpcCode::InvalidArgument => Code::InvalidArgument,
        GrpcCode::DeadlineExceeded => Code::DeadlineExceeded,
        GrpcCode::NotFound => Code::NotFound,
        GrpcCode::AlreadyExists => Code::AlreadyExists,
        GrpcCode::ResourceExhausted => Code::ResourceExhausted,
        GrpcCode::FailedPrecondition => Code::FailedPrecondition,
        GrpcCode::Unimplemented => Code::Unimplemented,
        GrpcCode::Internal => Code::Internal,
        GrpcCode::Unavailable => Code::Unavailable,
    };
    Status::new(code, e.client_message())
}

/// One request; `parent` is the call's W3C trace context (tracing on only).
async fn infer_one(
    shared: &Shared,
    req: proto::ModelInferRequest,
    parent: Option<opentelemetry::Context>,
) -> Result<proto::ModelInferResponse, Error> {
    let (model, version, decoded) = kserve::grpc::decode_request(req, &shared.limits)?;
    let span = tracing::info_span!("grpc_infer", model = %model, request_id = decoded.id.as_deref().unwrap_or(""), protocol = "grpc", otel.kind = "server");
    crate::trace_context::adopt(&span, parent);
    async move {
        let resp = shared.infer(model, version, decoded).await?;
        tracing::debug_span!("respond", outputs = resp.outputs.len()).in_scope(|| {
            kserve::grpc::encode_response(
                &resp.model,
                resp.version,
                resp.id.as_deref(),
                &resp.outputs,
            )
        })
    }
    .instrument(span)
    .await
}

type InferStream =
    Pin<Box<dyn Stream<Item = Result<proto::ModelStreamInferResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl GrpcInferenceService for GrpcService {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Result<Response<proto::ServerLiveResponse>, Status> {
        Ok(Response::new(proto::ServerLiveResponse {
            live: self.shared.is_live(),
        }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Result<Response<proto::ServerReadyResponse>, Status> {
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.shared.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<proto::ModelReadyRequest>,
    ) -> Result<Response<proto::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let v = kserve::parse_version(&r.version).map_err(status)?;
        Ok(Response::new(proto::ModelReadyResponse {
            ready: self.shared.model_ready(&r.name, v),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Result<Response<proto::ServerMetadataResponse>, Status> {
        Ok(Response::new(self.shared.server_metadata().into()))
    }

    async fn model_metadata(
        &self,
        req: Request<proto::ModelMetadataRequest>,
    ) -> Result<Response<proto::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let v = kserve::parse_version(&r.version).map_err(status)?;
        let m = self.shared.metadata(&r.name, v).map_err(status)?;
        Ok(Response::new(m.into()))
    }

    async fn model_infer(
        &self,
        req: Request<proto::ModelInferRequest>,
    ) -> Result<Response<proto::ModelInferResponse>, Status> {
        let parent = self
            .shared
            .trace_context
            .then(|| crate::trace_context::from_metadata(req.metadata()))
            .flatten();
        infer_one(&self.shared, req.into_inner(), parent)
            .await
            .map(Response::new)
            .map_err(status)
    }

    type ModelStreamInferStream = InferStream;

    async fn model_stream_infer(
        &self,
        req: Request<Streaming<proto::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let shared = self.shared.clone();
        // The stream's trace context (its metadata) parents every request on it.
        let parent = shared
            .trace_context
            .then(|| crate::trace_context::from_metadata(req.metadata()))
            .flatten();
        let incoming = req.into_inner();
        // A failed request is reported in its reply's error_message; only a
        // broken stream ends the call.
        let out = incoming
            .map(move |msg| {
                let shared = shared.clone();
                let parent = parent.clone();
                async move {
                    let req = msg?;
                    let id = req.id.clone();
                    Ok(match infer_one(&shared, req, parent).await {
                        Ok(r) => proto::ModelStreamInferResponse {
                            error_message: String::new(),
                            infer_response: Some(r),
                        },
                        Err(e) => proto::ModelStreamInferResponse {
                            error_message: e.client_message(),
                            infer_response: Some(proto::ModelInferResponse {
                                id,
                                ..Default::default()
                            }),
                        },
                    })
                }
            })
            .buffered(STREAM_CONCURRENCY);
        Ok(Response::new(Box::pin(out)))
    }

    async fn model_config(
        &self,
        req: Request<proto::ModelConfigRequest>,
    ) -> Result<Response<proto::ModelConfigResponse>, Status> {
        let r = req.into_inner();
        let v = kserve::parse_version(&r.version).map_err(status)?;
        let config = self.shared.model_config(&r.name, v).map_err(status)?;
        Ok(Response::new(proto::ModelConfigResponse {
            config: Some(config.into_proto()),
        }))
    }

    async fn model_statistics(
        &self,
        req: Request<proto::ModelStatisticsRequest>,
    ) -> Result<Response<proto::ModelStatisticsResponse>, Status> {
        let r = req.into_inner();
        let v = kserve::parse_version(&r.version).map_err(status)?;
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let stats = self.shared.stats_report(name, v).map_err(status)?;
        Ok(Response::new(stats.into_proto()))
    }

    async fn repository_index(
        &self,
        req: Request<proto::RepositoryIndexRequest>,
    ) -> Result<Response<proto::RepositoryIndexResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let models = self
            .shared
            .index(r.ready)
            .into_iter()
            .map(Into::into)
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        req: Request<proto::RepositoryModelLoadRequest>,
    ) -> Result<Response<proto::RepositoryModelLoadResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        self.shared
            .load_from_api(&r.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        req: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Result<Response<proto::RepositoryModelUnloadResponse>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        self.shared
            .unload_from_api(&r.model_name)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }
}
