//! Test doubles and fixture helpers shared by pomme's test suites.
//!
//! [`FakeBackend`] serves an in-memory "model" (`y = x * scale`, any batch) whose
//! behaviour can be scripted per call: fail, panic, hang, answer slowly, or
//! return the wrong shape. [`fixtures`] finds the shared model directory and
//! the onnxruntime library ([`ort_dylib`]).
#![forbid(unsafe_code)]

pub mod fake;
pub mod fixtures;

pub use fake::{Behaviour, FakeBackend};
pub use fixtures::ort_dylib;
