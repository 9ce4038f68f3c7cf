//! pomme's runtime: the one façade the CLI, the server and Rust users call.
//!
//! A request's path, top-down: [`Runtime::infer`] (`runtime/infer.rs`) finds
//! the model version, checks inputs against its signature, takes an admission
//! [`Permit`] (`admission.rs`) and enqueues into the model's bounded priority
//! queue (`scheduler.rs`). A compute worker, a dedicated OS thread that owns
//! one backend [`pomme_core::Session`] (`worker.rs`), pulls a batch of
//! shape-compatible requests, concatenates their inputs, runs the engine,
//! splits the outputs and answers each request's oneshot. Requests whose
//! caller left or whose deadline passed are dropped before they run.
//!
//! Loading (`runtime/load.rs`) picks the first backend that loads, or, with
//! measured routing (`routing/`), every candidate is tried and the fastest
//! that agrees with the CPU reference serves with the others as fallbacks; a
//! routed model is an ordinary `LoadedModel` to the rest of the runtime.
//!
//! This crate never names a backend and reads no environment: engines arrive
//! as `Arc<dyn Backend>` through [`RuntimeBuilder::backends`], the automatic
//! routing candidates through [`RuntimeBuilder::automatic_candidates`], and
//! tuning through the builder. Every module is private; the public API is
//! the list below.
#![forbid(unsafe_code)]

mod admission;
mod artifact;
mod cache;
mod eviction;
mod implicit;
mod metrics;
mod pipeline;
mod pool;
mod registry;
mod routing;
mod runtime;
mod scheduler;
mod spec;
mod stats;
mod thermal;
mod warmup;
mod worker;

// The façade.
pub use runtime::{InferRequest, InferResponse, MemoryProbe, Runtime, RuntimeBuilder};

// Models: what to load, and what a loaded one looks like.
pub use artifact::detect_artifact;
pub use implicit::{ImplicitState, SequenceConfig, StateDecl};
pub use pipeline::{PipelineSpec, PipelineStep};
pub use registry::{ModelState, ModelStatus, ModelView};
pub use spec::{BatchingConfig, DeclaredTensor, ModelSpec};
pub use warmup::{WarmupData, WarmupInput, WarmupSample};

// Admission and memory.
pub use admission::{Admission, MemoryReservation, Permit};
pub use eviction::MemoryPolicy;
pub use thermal::{ThermalGovernor, ThermalLevel, ThermalPolicy, ThermalSource};

// Statistics and metrics.
pub use metrics::Metrics;
pub use stats::{Ewma, LatencyHistogram, ModelStats, PerformanceSummary, StatDuration};

// Measured routing: configuration, the decision and its figures, live state.
pub use routing::{
    Agreement, BreakerConfig, BreakerSnapshot, BreakerState, Candidate, CandidateRow, Clock,
    ManualClock, RetryPolicy, Route, RouteMetrics, RouteSet, RouteStatus, RoutedModel,
    RoutingConfig, RoutingDecision, SystemClock, Timing, Tolerance, Trial, TrialOutcome,
    load_routed, parse_candidates, plan,
};
