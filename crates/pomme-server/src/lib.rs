//! pomme's network server: the KServe v2 / Open Inference Protocol over HTTP
//! (axum) and gRPC (tonic), with Triton's extensions (model config,
//! statistics, repository control), a Prometheus endpoint, the model
//! repository and the server's configuration and lifecycle, and TLS (rustls)
//! for the HTTP and gRPC ports.
//!
//! Handlers only convert wire types and call `pomme_runtime::Runtime`; the wire
//! conversions live in [`kserve`] as pure functions.
#![forbid(unsafe_code)]

pub mod config;
pub mod grpc;
pub mod http;
pub mod kserve;
pub mod lifecycle;
pub mod node;
pub mod pbtxt;
pub mod proto;
pub mod repository;
pub mod routing;
pub mod service;
pub mod tls;

pub use config::{ConfigError, ServerArgs, ServerConfig};
pub use lifecycle::{RunningServer, serve, start};
