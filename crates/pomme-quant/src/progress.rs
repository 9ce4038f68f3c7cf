//! Progress reporting: the quantizer calls a `&dyn Fn(&ProgressEvent)` so a
//! CLI can drive a progress bar (indicatif) or a server can log, without this
//! crate knowing about either.

use serde::Serialize;

/// A step of the work, in the order they happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Loading,
    Calibrating,
    Quantizing,
    Sensitivity,
    Validating,
    Writing,
}

/// What the quantizer reports while it works.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A new stage begins.
    Stage { stage: Stage },
    /// Calibration batches run (`total` counts both passes when two are made).
    Calibration { done: usize, total: usize },
    /// Weights rewritten so far.
    Quantizing { done: usize, total: usize },
    /// Models evaluated during the per-layer sensitivity search.
    Sensitivity {
        layer: String,
        done: usize,
        total: usize,
    },
    /// Validation batches run on one backend (float and quantized models).
    Validation {
        backend: String,
        done: usize,
        total: usize,
    },
    /// Something worth telling the user (a reshape, an engine that failed).
    Note { message: String },
}

/// A callback that ignores everything.
pub fn silent(_: &ProgressEvent) {}
