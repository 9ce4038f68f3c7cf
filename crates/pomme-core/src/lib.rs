//! pomme's vocabulary, shared by every other crate.
//!
//! This crate owns the data types a request carries ([`Tensor`], [`DType`],
//! [`Shape`]), what a model promises ([`ModelSignature`]), the small synchronous
//! [`Backend`] / [`LoadedModel`] / [`Session`] traits every engine implements, and
//! the single [`Error`] enum with its retryability and its HTTP / gRPC mapping,
//! plus deterministic synthetic inputs for a signature ([`synthetic`]).
//! It does no I/O, no async, and never names a backend.
#![forbid(unsafe_code)]

pub mod backend;
pub mod dtype;
pub mod error;
pub mod extra;
pub mod sequence;
pub mod shape;
pub mod signature;
pub mod synthetic;
pub mod tensor;
pub mod text;

pub use backend::{
    Availability, Backend, DeviceInfo, DeviceKind, LoadOptions, LoadedModel, MemoryEstimate,
    ModelAdapter, ModelArtifact, ModelFormat, ModelInfo, PlacementShare, Precision,
    SequenceControl, Session, check_extra_keys, option_key_matches,
};
pub use dtype::{DType, Element};
pub use error::{Error, ErrorKind, GrpcCode, Result};
pub use extra::ExtraOptions;
pub use shape::{Dim, Shape};
pub use signature::{AllowedShapes, ModelSignature, TensorSpec};
pub use synthetic::{Fill, synthetic_inputs, synthetic_shape, synthetic_tensor};
pub use tensor::Tensor;
pub use text::{one_line, panic_message};
