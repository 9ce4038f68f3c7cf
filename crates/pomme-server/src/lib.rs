//! pomme's network server: the KServe v2 / Open Inference Protocol over HTTP
//! (axum) and gRPC (tonic), with Triton's extensions (model config,
//! statistics, repository control), a Prometheus endpoint, the model
//! repository and the server's configuration and lifecycle, and TLS (rustls)
//! for the HTTP and gRPC ports.
//!
//! Handlers only convert wire types and call `pomme_runtime::Runtime`
//! through [`service::Shared`]. The wire codec is the `pomme-kserve` crate
//! (re-exported as [`kserve`] and [`proto`]), which the load generator and
//! the fuzz targets share; Triton's configuration and statistics are mapped
//! once, in [`triton`], for both protocols. Backend and device names come
//! from the caller as a [`Platform`].
//!
//! Modules, each using only those listed before it (no import cycles):
//! 1. leaves: [`duration`], [`pbtxt`], [`platform`], [`tls`], [`node`];
//! 2. [`routing`] (duration);
//! 3. [`repository`] (pbtxt, platform, routing);
//! 4. [`config`] (duration, tls, routing, repository);
//! 5. [`triton`] (repository);
//! 6. [`service`] (config, platform, repository, routing, triton);
//! 7. [`text`] (service): the OpenAI and TEI text routes;
//! 8. [`http`], [`grpc`] (service, triton, text);
//! 9. [`lifecycle`] (config, http, grpc, service, tls, repository).
#![forbid(unsafe_code)]

pub mod config;
pub mod duration;
pub mod grpc;
pub mod http;
pub mod lifecycle;
pub mod node;
pub mod pbtxt;
pub mod platform;
pub mod repository;
pub mod routing;
pub mod service;
pub mod text;
pub mod tls;
pub mod trace_context;
pub mod triton;

pub use config::{ConfigError, ServerArgs, ServerConfig};
pub use lifecycle::{RunningServer, serve, start};
pub use platform::Platform;
pub use pomme_kserve as kserve;
pub use pomme_kserve::proto;

/// The Triton platform table of the tests, shared with the integration tests
/// (which name this crate `pomme_server`, hence the alias).
#[cfg(test)]
#[path = "../tests/common/platform.rs"]
mod test_platform;
#[cfg(test)]
extern crate self as pomme_server;
