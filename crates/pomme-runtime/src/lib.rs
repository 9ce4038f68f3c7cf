//! pomme's runtime: the one façade the CLI, the server and Rust users call.
//!
//! A request's path, top-down:
//! [`Runtime::infer`] (`runtime.rs`) checks inputs against the signature, takes an
//! admission [`Permit`] (`admission.rs`), and enqueues into the model's bounded
//! priority queue (`scheduler.rs`). A compute worker — a dedicated OS thread that
//! owns one backend [`pomme_core::Session`] (`worker.rs`) — pulls a batch of
//! shape-compatible requests, concatenates their inputs, runs the engine, splits
//! the outputs and answers each request's oneshot. Requests whose caller left or
//! whose deadline passed are dropped before they run.
//!
//! This crate never names a backend: engines arrive as `Arc<dyn Backend>` through
//! [`RuntimeBuilder::backends`].
#![forbid(unsafe_code)]

pub mod admission;
pub mod artifact;
pub mod breaker;
pub mod eviction;
pub mod metrics;
pub mod pool;
pub mod registry;
pub mod routed;
pub mod routing;
pub mod runtime;
pub mod scheduler;
pub mod spec;
pub mod stats;
pub mod thermal;
pub mod worker;

pub use admission::{Admission, Permit};
pub use artifact::detect_artifact;
pub use registry::{ModelState, ModelStatus, ModelView};
pub use runtime::{DeviceStatus, InferRequest, InferResponse, Runtime, RuntimeBuilder};
pub use spec::{BatchingConfig, DeclaredTensor, ModelSpec};
pub use stats::{Ewma, LatencyHistogram, ModelStats, PerformanceSummary, StatDuration};
pub use thermal::{ThermalGovernor, ThermalLevel, ThermalPolicy, ThermalSource};
