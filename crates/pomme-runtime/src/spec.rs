//! How a model is to be served: what the server's repository config and library
//! users hand to [`crate::Runtime::load`].

use pomme_core::LoadOptions;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Dynamic batching settings of one model (Triton's `dynamic_batching`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchingConfig {
    /// How long the oldest request may wait for others to join its batch.
    pub max_queue_delay: Duration,
    /// Batch sizes to dispatch at once when reached.
    pub preferred_batch_sizes: Vec<usize>,
    /// Queue bound; a full queue rejects at once (429 / RESOURCE_EXHAUSTED).
    pub max_queue_size: usize,
    /// Queue timeout applied to requests that carry none.
    pub default_queue_timeout: Option<Duration>,
    /// Number of priority levels (1 = highest). 0 or 1: a single level.
    pub priority_levels: u32,
    /// Priority given to requests that ask for none.
    pub default_priority: u32,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        BatchingConfig {
            max_queue_delay: Duration::from_micros(500),
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_queue_timeout: None,
            priority_levels: 1,
            default_priority: 1,
        }
    }
}

/// A model to load.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub name: String,
    pub version: u64,
    /// Model file or bundle.
    pub path: PathBuf,
    /// Backend preference (`["ort", "tract"]`); empty: every backend that reads the format, in registration order.
    pub backends: Vec<String>,
    pub load: LoadOptions,
    /// `Some` turns dynamic batching on.
    pub batching: Option<BatchingConfig>,
    /// Largest batch a worker runs (rows along the first axis); 0: no batching, one request per run.
    pub max_batch_size: usize,
    /// Compute threads for this model, each with its own session.
    pub workers: usize,
}

impl ModelSpec {
    /// A single-worker, unbatched spec for `path`, version 1.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            version: 1,
            path: path.into(),
            backends: Vec::new(),
            load: LoadOptions::default(),
            batching: None,
            max_batch_size: 0,
            workers: 1,
        }
    }

    /// Prefers these backends, in order.
    pub fn backends(mut self, names: &[&str]) -> Self {
        self.backends = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Turns on dynamic batching up to `max_batch_size` rows.
    pub fn batching(mut self, max_batch_size: usize, cfg: BatchingConfig) -> Self {
        self.max_batch_size = max_batch_size;
        self.batching = Some(cfg);
        self
    }

    /// Sets the number of compute workers.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n.max(1);
        self
    }

    /// Sets the version.
    pub fn version(mut self, v: u64) -> Self {
        self.version = v;
        self
    }
}
