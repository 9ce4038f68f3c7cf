//! The `[text]` section of a model's `config.toml`: what the model does with
//! text, how it is tokenized, pooled and batched. Unknown keys are errors.

use pomme_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// What a text model answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A sentence embedding per text (OpenAI `/v1/embeddings`, TEI `/embed`).
    #[default]
    Embed,
    /// Sequence classification: logits over labels (TEI `/predict`).
    Classify,
    /// A cross-encoder: one relevance score per (query, text) pair (TEI `/rerank`).
    Rerank,
}

/// How token states become one vector per text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean over the tokens the attention mask keeps (sentence-transformers' mean pooling).
    #[default]
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
    /// The last real token's state (decoder-style embedding models).
    Last,
    /// The model's own pooled output (`sentence_embedding`, `pooler_output`, or `pooled_output`).
    Model,
}

/// What happens to a text longer than `max_length` tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Keep the first tokens.
    #[default]
    Right,
    /// Keep the last tokens.
    Left,
    /// Refuse the text (HTTP 413 / 4xx with the token count).
    Error,
}

/// `[text]` in `config.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    #[serde(default)]
    pub task: Task,
    #[serde(default)]
    pub pooling: Pooling,
    /// With `pooling = "model"`: the model output that holds the pooled
    /// vector (default: `sentence_embedding`, `pooler_output`,
    /// `pooled_output`, else the only rank-2 float output).
    pub pooled_output: Option<String>,
    /// L2-normalize embeddings (sentence-transformers models that end in `Normalize`).
    #[serde(default = "yes")]
    pub normalize: bool,
    /// Tokens per text at most, special tokens included. Default: the
    /// largest bucket, else 512.
    pub max_length: Option<usize>,
    #[serde(default)]
    pub truncation: Truncation,
    /// Sequence lengths a batch is padded to (the smallest that fits its
    /// longest text); warmed at load. Empty: the model's enumerated
    /// shapes when it has them (Core ML), else each batch's longest text.
    #[serde(default)]
    pub seq_buckets: Vec<usize>,
    /// Padded tokens (rows × bucket) in one engine run at most.
    #[serde(default = "default_batch_tokens")]
    pub max_batch_tokens: usize,
    /// What one engine run costs beyond its padded tokens, in tokens: the
    /// planner splits a batch by length only where the padding saved is
    /// worth more. Default: [`crate::plan::run_overhead_tokens`] of the
    /// encoder's device (32 on a CPU, where padding costs compute; 1024 on
    /// a GPU, where a run's launches and copies cost more).
    pub run_overhead_tokens: Option<usize>,
    /// Tokenizer file, relative to the model directory. Default:
    /// `tokenizer.json`, else `vocab.txt` (BERT WordPiece).
    pub tokenizer: Option<String>,
    /// With a `vocab.txt`: lowercase (and strip accents) as uncased BERT does.
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// Class names for `task = "classify"`, in logit order (default: the
    /// model directory's `config.json` `id2label`, else `LABEL_i`).
    pub labels: Option<Vec<String>>,
    /// Embedding sizes a request may ask for with `dimensions` (Matryoshka
    /// models): the first N values, normalized again. Empty: only the full size.
    #[serde(default)]
    pub dimensions: Vec<usize>,
}

fn yes() -> bool {
    true
}

fn default_batch_tokens() -> usize {
    16_384
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            task: Task::Embed,
            pooling: Pooling::Mean,
            pooled_output: None,
            normalize: true,
            max_length: None,
            truncation: Truncation::Right,
            seq_buckets: Vec::new(),
            max_batch_tokens: default_batch_tokens(),
            run_overhead_tokens: None,
            tokenizer: None,
            lowercase: true,
            labels: None,
            dimensions: Vec::new(),
        }
    }
}

impl TextConfig {
    /// Checks the settings against each other; buckets come back sorted.
    pub fn validated(mut self) -> Result<TextConfig> {
        let bad = |m: String| Err(Error::invalid_input(format!("[text] {m}")));
        self.seq_buckets.sort_unstable();
        self.seq_buckets.dedup();
        if self.seq_buckets.first() == Some(&0) {
            return bad("seq_buckets: a bucket of 0 tokens".into());
        }
        if let Some(m) = self.max_length {
            if m < 2 {
                return bad(format!("max_length {m} leaves no room for a token"));
            }
            if let Some(&top) = self.seq_buckets.last()
                && m > top
            {
                return bad(format!(
                    "max_length {m} is longer than the largest of seq_buckets ({top})"
                ));
            }
        }
        let longest = self.max_length();
        if self.max_batch_tokens < longest {
            return bad(format!(
                "max_batch_tokens {} cannot hold one text of max_length {longest}",
                self.max_batch_tokens
            ));
        }
        if self.pooled_output.is_some() && self.pooling != Pooling::Model {
            return bad("pooled_output is only used with pooling = \"model\"".into());
        }
        if self.task != Task::Embed && !self.dimensions.is_empty() {
            return bad("dimensions is only used with task = \"embed\"".into());
        }
        if self.dimensions.contains(&0) {
            return bad("dimensions: a size of 0".into());
        }
        Ok(self)
    }

    /// Tokens per text at most, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
            .or(self.seq_buckets.last().copied())
            .unwrap_or(512)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> std::result::Result<TextConfig, String> {
        toml::from_str::<TextConfig>(s)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validated().map_err(|e| e.message()))
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse("").unwrap();
        assert_eq!(c.task, Task::Embed);
        assert_eq!(c.max_length(), 512);
        let c = parse(
            r#"task = "embed"
pooling = "cls"
normalize = false
truncation = "left"
seq_buckets = [64, 16, 32]
max_batch_tokens = 4096
run_overhead_tokens = 512
dimensions = [128]"#,
        )
        .unwrap();
        assert_eq!(c.seq_buckets, vec![16, 32, 64]);
        assert_eq!(c.max_length(), 64);
        assert_eq!(c.pooling, Pooling::Cls);
        assert_eq!(c.truncation, Truncation::Left);
        assert_eq!(c.run_overhead_tokens, Some(512));
    }

    #[test]
    fn inconsistent_settings_are_named() {
        assert!(
            parse("pooling = \"max\"")
                .unwrap_err()
                .contains("unknown variant")
        );
        assert!(parse("typo = 1").unwrap_err().contains("unknown field"));
        assert!(
            parse("seq_buckets = [16]\nmax_length = 32")
                .unwrap_err()
                .contains("largest of seq_buckets")
        );
        assert!(
            parse("max_batch_tokens = 100")
                .unwrap_err()
                .contains("cannot hold one text")
        );
        assert!(
            parse("pooled_output = \"x\"")
                .unwrap_err()
                .contains("pooling = \"model\"")
        );
    }
}
