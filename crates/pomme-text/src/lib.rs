//! Text models for pomme: a model directory with a tokenizer (`tokenizer.json`
//! or a WordPiece `vocab.txt`) and a `[text]` section is served as text in,
//! embeddings (or classification logits, or reranking scores) out.
//!
//! - [`config`]: the `[text]` settings (task, pooling, normalization,
//!   truncation, sequence buckets, token budget).
//! - [`tokenize`]: Hugging Face `tokenizers`, truncation that keeps special tokens.
//! - [`plan`]: texts grouped by length into engine runs padded to buckets
//!   under a padded-token budget.
//! - [`pool`]: mean / CLS / last-token pooling and L2 normalization.
//! - [`model`]: [`TextAdapter`] (a [`pomme_core::ModelAdapter`]) and the
//!   [`TextModel`] it wraps an encoder in; the runtime serves that model like
//!   any other (batching, admission, statistics, response cache).
//!
//! The crate names no backend and reads no environment: the server builds a
//! [`TextAdapter`] from the model directory and puts it on the model's spec.

pub mod config;
pub mod model;
pub mod plan;
pub mod pool;
pub mod tokenize;

pub use config::{Pooling, Task, TextConfig, Truncation};
pub use model::{TextAdapter, TextModel};
pub use tokenize::{Encoded, TextTokenizer, Token};
