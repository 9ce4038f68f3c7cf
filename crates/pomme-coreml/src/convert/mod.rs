//! Conversions between Core ML feature values and pomme tensors that need no
//! Core ML: strided array copies ([`array`]), image pixel layouts ([`image`]), classifier outputs
//! ([`classifier`]), scalar features ([`scalar`]) and per-sequence state
//! bookkeeping ([`state`]). The native
//! backend (macOS) wraps these around the Objective-C calls; here they run and
//! are tested on every platform.

pub mod array;
pub mod classifier;
pub mod image;
pub mod scalar;
pub mod state;
