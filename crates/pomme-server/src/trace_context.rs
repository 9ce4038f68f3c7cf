//! W3C trace context (`traceparent`, `tracestate`) from HTTP headers and gRPC
//! metadata, made the parent of a request's span.
//!
//! Only used when tracing is configured ([`crate::config::TracingConfig`]):
//! the handlers check [`crate::service::Shared::trace_context`] first, so a
//! server without tracing does no propagation work. The propagator is the
//! process-wide OpenTelemetry one, which the CLI sets to W3C trace context
//! along with the exporter.

use opentelemetry::propagation::Extractor;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// HTTP headers as an OpenTelemetry extractor.
struct Headers<'a>(&'a axum::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// gRPC (ASCII) metadata as an OpenTelemetry extractor.
struct Metadata<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The remote parent named by the request's headers, if any.
pub fn from_headers(headers: &axum::http::HeaderMap) -> Option<opentelemetry::Context> {
    headers
        .contains_key("traceparent")
        .then(|| opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(headers))))
}

/// The remote parent named by the call's metadata, if any.
pub fn from_metadata(metadata: &tonic::metadata::MetadataMap) -> Option<opentelemetry::Context> {
    metadata
        .contains_key("traceparent")
        .then(|| opentelemetry::global::get_text_map_propagator(|p| p.extract(&Metadata(metadata))))
}

/// Makes `parent` (a remote span context) the parent of `span`. A malformed
/// `traceparent` extracts as an empty context: the span starts a new trace.
pub fn adopt(span: &tracing::Span, parent: Option<opentelemetry::Context>) {
    if let Some(cx) = parent {
        let _ = span.set_parent(cx);
    }
}
