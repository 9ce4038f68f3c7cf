//! Per-sequence state bookkeeping for stateful Core ML models (`MLState`,
//! macOS 15+): the table every stateful model shares lives in pomme-core.

pub use pomme_core::sequence::{StateLimits, StateTable};
