//! A text model: an encoder (token ids in, token states or logits out)
//! served as text in, embeddings or scores out.
//!
//! [`TextAdapter`] wraps the loaded encoder in a [`TextModel`], which the
//! runtime serves like any model: its requests are batched by the runtime's
//! batcher (rows = texts, up to `max_batch_size`), and each batch is
//! tokenized, grouped by length into engine runs under `max_batch_tokens`
//! padded to the configured buckets ([`crate::plan`]), pooled and
//! normalized — all on the model's compute thread. Signatures:
//!
//! | task | inputs | outputs |
//! |---|---|---|
//! | embed | `text` BYTES [n] | `embedding` FP32 [n, d], `pooled` FP32 [n, d] (before normalization), `token_count` INT64 [n], `token_embeddings` FP32 [n, t, d] (padded to the longest text of the batch) |
//! | classify | `text` | `logits` FP32 [n, labels] (with labels), `token_count` |
//! | rerank | `text`, `text_pair` | `score` FP32 [n] (raw logit), `token_count` |

use crate::config::{Pooling, Task, TextConfig, Truncation};
use crate::plan;
use crate::pool;
use crate::tokenize::{Encoded, TextTokenizer};
use pomme_core::{
    AllowedShapes, DType, DeviceKind, Dim, Error, LoadedModel, MemoryEstimate, ModelAdapter,
    ModelSignature, PlacementShare, Precision, Result, Session, Shape, Tensor, TensorSpec,
};
use std::path::Path;
use std::sync::Arc;

/// Builds [`TextModel`]s from a model directory's tokenizer and `[text]`.
#[derive(Debug)]
pub struct TextAdapter {
    cfg: TextConfig,
    tokenizer: Arc<TextTokenizer>,
    /// `id2label` from the directory's `config.json`, for classifiers.
    dir_labels: Option<Vec<String>>,
}

impl TextAdapter {
    /// Reads the tokenizer (the configured file, else `tokenizer.json`, else
    /// `vocab.txt`) and, for classifiers, `config.json`'s labels from `dir`.
    pub fn from_dir(dir: &Path, cfg: TextConfig) -> Result<TextAdapter> {
        let cfg = cfg.validated()?;
        let path = match &cfg.tokenizer {
            Some(f) => {
                let rel = Path::new(f);
                if rel.is_absolute()
                    || rel
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(Error::invalid_input(format!(
                        "[text] tokenizer '{f}' must be a path inside the model directory"
                    )));
                }
                dir.join(rel)
            }
            None => ["tokenizer.json", "vocab.txt"]
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::InvalidModelFormat(format!(
                        "text model in {} has no tokenizer.json or vocab.txt (or set [text] tokenizer)",
                        dir.display()
                    ))
                })?,
        };
        let tokenizer = Arc::new(TextTokenizer::from_file(&path, cfg.lowercase)?);
        let dir_labels = read_id2label(&dir.join("config.json"));
        Ok(TextAdapter {
            cfg,
            tokenizer,
            dir_labels,
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }
}

/// Hugging Face `config.json`'s `id2label`, in id order.
fn read_id2label(path: &Path) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let map = v.get("id2label")?.as_object()?;
    let mut pairs: Vec<(usize, String)> = map
        .iter()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .enumerate()
        .all(|(i, (k, _))| i == *k)
        .then(|| pairs.into_iter().map(|(_, l)| l).collect())
}

impl ModelAdapter for TextAdapter {
    fn name(&self) -> &'static str {
        "text"
    }

    fn wrap(&self, inner: Arc<dyn LoadedModel>) -> Result<Arc<dyn LoadedModel>> {
        Ok(Arc::new(TextModel::new(
            inner,
            self.cfg.clone(),
            self.tokenizer.clone(),
            self.dir_labels.clone(),
        )?))
    }
}

/// Where things are in the encoder's inputs and outputs.
#[derive(Debug)]
struct Io {
    /// Inner input index → what it receives.
    feeds: Vec<(Feed, DType)>,
    /// Inner output index of the token states (`[rows, seq, d]`).
    hidden: Option<usize>,
    /// Inner output index of the pooled vector or logits (`[rows, k]`).
    pooled: Option<usize>,
    buckets: Vec<usize>,
    /// What a run costs beyond its padded tokens (`[text] run_overhead_tokens`,
    /// else the encoder device's default).
    run_overhead: usize,
    /// The encoder's enumerated `[batch, seq]` shapes (Core ML).
    allowed: Option<AllowedShapes>,
    max_len: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Feed {
    Ids,
    Mask,
    Types,
}

/// An encoder served as text in, embeddings or scores out.
pub struct TextModel {
    inner: Arc<dyn LoadedModel>,
    cfg: Arc<TextConfig>,
    tokenizer: Arc<TextTokenizer>,
    io: Arc<Io>,
    signature: ModelSignature,
}

impl std::fmt::Debug for TextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextModel")
            .field("task", &self.cfg.task)
            .field("io", &self.io)
            .finish()
    }
}

fn is_int(d: DType) -> bool {
    matches!(d, DType::I64 | DType::I32)
}

fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::F64 | DType::BF16)
}

impl TextModel {
    /// Wraps `inner`, finding its token inputs (`input_ids`, and
    /// `attention_mask` / `token_type_ids` when it has them) and the output
    /// the task needs.
    pub fn new(
        inner: Arc<dyn LoadedModel>,
        cfg: TextConfig,
        tokenizer: Arc<TextTokenizer>,
        dir_labels: Option<Vec<String>>,
    ) -> Result<TextModel> {
        let cfg = cfg.validated()?;
        let sig = inner.signature();
        let bad = |m: String| Err(Error::InvalidModelFormat(m));
        let mut feeds = Vec::new();
        for s in &sig.inputs {
            let feed = match s.name.as_str() {
                "input_ids" | "ids" | "input" => Feed::Ids,
                "attention_mask" | "mask" => Feed::Mask,
                "token_type_ids" | "segment_ids" => Feed::Types,
                other => {
                    return bad(format!(
                        "encoder input '{other}' is not one of input_ids, attention_mask, token_type_ids"
                    ));
                }
            };
            if !is_int(s.dtype) || s.shape.rank() != 2 {
                return bad(format!(
                    "encoder input '{}' is {} of rank {}, expected INT64 or INT32 [batch, seq]",
                    s.name,
                    s.dtype,
                    s.shape.rank()
                ));
            }
            feeds.push((feed, s.dtype));
        }
        if !feeds.iter().any(|(f, _)| *f == Feed::Ids) {
            return bad("encoder has no input_ids input".into());
        }
        let find = |names: &[&str], rank: usize| -> Option<usize> {
            let ok = |s: &TensorSpec| is_float(s.dtype) && s.shape.rank() == rank;
            names
                .iter()
                .find_map(|n| sig.outputs.iter().position(|s| s.name == *n && ok(s)))
                .or_else(|| {
                    let all: Vec<usize> = (0..sig.outputs.len())
                        .filter(|&i| ok(&sig.outputs[i]))
                        .collect();
                    (all.len() == 1).then(|| all[0])
                })
        };
        let hidden = find(
            &["last_hidden_state", "token_embeddings", "hidden_states"],
            3,
        );
        let pooled = match (cfg.task, cfg.pooling) {
            (Task::Embed, Pooling::Model) => {
                let names: Vec<&str> = match &cfg.pooled_output {
                    Some(n) => vec![n.as_str()],
                    None => vec!["sentence_embedding", "pooler_output", "pooled_output"],
                };
                match find(&names, 2) {
                    Some(i) => Some(i),
                    None => {
                        return bad(format!(
                            "pooling = \"model\" but the encoder has no rank-2 float output named {}",
                            names.join(" / ")
                        ));
                    }
                }
            }
            (Task::Embed, _) => {
                if hidden.is_none() {
                    return bad(format!(
                        "pooling = \"{:?}\" needs token states (a rank-3 float output such as last_hidden_state)",
                        cfg.pooling
                    )
                    .to_lowercase());
                }
                None
            }
            (Task::Classify | Task::Rerank, _) => match find(&["logits", "scores"], 2) {
                Some(i) => Some(i),
                None => {
                    return bad(
                        "a classifier or reranker needs a rank-2 float output of logits [batch, labels]"
                            .into(),
                    );
                }
            },
        };
        let width =
            |i: usize, axis: usize| sig.outputs[i].shape.dims().get(axis).and_then(Dim::fixed);
        let dim = match pooled {
            Some(i) => width(i, 1),
            None => hidden.and_then(|i| width(i, 2)),
        };
        let ids_spec = sig
            .inputs
            .iter()
            .zip(&feeds)
            .find(|(_, (f, _))| *f == Feed::Ids)
            .map(|(s, _)| s)
            .expect("checked above");
        let allowed = ids_spec.allowed.clone();
        let mut buckets = cfg.seq_buckets.clone();
        if buckets.is_empty()
            && let Some(a) = &allowed
        {
            buckets = plan::enumerated_seq_lengths(a);
        }
        if let Some(a) = &allowed {
            for &b in &buckets {
                if !(1..=64).any(|n| a.allows(&[n, b])) {
                    return bad(format!(
                        "seq_bucket {b} is not a sequence length this model takes ({a})"
                    ));
                }
            }
        }
        if let Some(Dim::Fixed(s)) = ids_spec.shape.dims().get(1) {
            if buckets.iter().any(|b| b != s) {
                return bad(format!(
                    "the encoder takes sequences of exactly {s} tokens: set seq_buckets = [{s}]"
                ));
            }
            buckets = vec![*s];
        }
        let max_len = cfg
            .max_length
            .unwrap_or_else(|| buckets.last().copied().unwrap_or(512));
        if let Some(&top) = buckets.last()
            && max_len > top
        {
            return bad(format!(
                "max_length {max_len} is longer than the largest sequence bucket {top}"
            ));
        }
        let labels = match cfg.task {
            Task::Classify => {
                let n = pooled.and_then(|i| width(i, 1));
                let labels = cfg
                    .labels
                    .clone()
                    .or(dir_labels)
                    .or_else(|| n.map(|n| (0..n).map(|i| format!("LABEL_{i}")).collect()));
                if let (Some(l), Some(n)) = (&labels, n)
                    && l.len() != n
                {
                    return bad(format!("{} labels for {n} logits", l.len()));
                }
                labels
            }
            _ => None,
        };
        if cfg.task == Task::Rerank && pooled.and_then(|i| width(i, 1)).is_some_and(|n| n != 1) {
            return bad("a reranker's logits must be [batch, 1] (one relevance score)".into());
        }
        if let Some(d) = dim
            && let Some(&bad_d) = cfg.dimensions.iter().find(|&&k| k > d)
        {
            return bad(format!(
                "dimensions {bad_d} is larger than the embedding size {d}"
            ));
        }
        let n = || Dim::Symbolic("batch".into());
        let d = || dim.map_or_else(|| Dim::Symbolic("dim".into()), Dim::Fixed);
        let text = |name: &str| TensorSpec::new(name, DType::Bytes, Shape(vec![n()]));
        let count = TensorSpec::new("token_count", DType::I64, Shape(vec![n()]));
        let signature = match cfg.task {
            Task::Embed => {
                let mut outputs = vec![
                    TensorSpec::new("embedding", DType::F32, Shape(vec![n(), d()])),
                    TensorSpec::new("pooled", DType::F32, Shape(vec![n(), d()])),
                    count,
                ];
                if hidden.is_some() {
                    outputs.push(TensorSpec::new(
                        "token_embeddings",
                        DType::F32,
                        Shape(vec![n(), Dim::Symbolic("tokens".into()), d()]),
                    ));
                }
                ModelSignature {
                    inputs: vec![text("text")],
                    outputs,
                }
            }
            Task::Classify => {
                let mut logits = TensorSpec::new("logits", DType::F32, Shape(vec![n(), d()]));
                if let Some(l) = labels {
                    logits = logits.with_labels(l);
                }
                ModelSignature {
                    inputs: vec![text("text")],
                    outputs: vec![logits, count],
                }
            }
            Task::Rerank => ModelSignature {
                inputs: vec![text("text"), text("text_pair")],
                outputs: vec![
                    TensorSpec::new("score", DType::F32, Shape(vec![n()])),
                    count,
                ],
            },
        };
        let io = Io {
            feeds,
            hidden,
            pooled,
            buckets,
            run_overhead: cfg
                .run_overhead_tokens
                .unwrap_or_else(|| plan::run_overhead_tokens(inner.device())),
            allowed,
            max_len,
        };
        Ok(TextModel {
            inner,
            cfg: Arc::new(cfg),
            tokenizer,
            io: Arc::new(io),
            signature,
        })
    }

    /// The tokenizer (TEI's `/tokenize`, token counts at the edge).
    pub fn tokenizer(&self) -> &Arc<TextTokenizer> {
        &self.tokenizer
    }

    /// The sequence buckets batches are padded to.
    pub fn buckets(&self) -> &[usize] {
        &self.io.buckets
    }

    /// Tokens per text at most.
    pub fn max_length(&self) -> usize {
        self.io.max_len
    }
}

/// The strings of a BYTES tensor as UTF-8, or which one is not.
fn texts(t: &Tensor, what: &str) -> Result<Vec<String>> {
    let strings = t
        .strings()
        .ok_or_else(|| Error::invalid_input(format!("input '{what}' must be BYTES")))?;
    strings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            std::str::from_utf8(b).map(str::to_string).map_err(|e| {
                Error::invalid_input(format!("input '{what}' element {i} is not UTF-8 text: {e}"))
            })
        })
        .collect()
}

impl LoadedModel for TextModel {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn signature(&self) -> &ModelSignature {
        &self.signature
    }
    fn memory(&self) -> MemoryEstimate {
        self.inner.memory()
    }
    fn device(&self) -> DeviceKind {
        self.inner.device()
    }
    fn precision(&self) -> Precision {
        self.inner.precision()
    }
    fn compute_precision(&self) -> Precision {
        self.inner.compute_precision()
    }
    fn placement(&self) -> Vec<PlacementShare> {
        self.inner.placement()
    }
    fn prefers_few_shapes(&self) -> bool {
        self.inner.prefers_few_shapes()
    }

    /// Each bucket runs once on the new session (batch 1), so the engine's
    /// per-shape preparation happens before the model is ready.
    fn session(&self) -> Result<Box<dyn Session>> {
        let mut s = TextSession {
            inner: self.inner.session()?,
            cfg: self.cfg.clone(),
            tokenizer: self.tokenizer.clone(),
            io: self.io.clone(),
        };
        for &b in &self.io.buckets {
            let rows = match &self.io.allowed {
                Some(a) => (1..=64).find(|&n| a.allows(&[n, b])).unwrap_or(1),
                None => 1,
            };
            let enc = Encoded {
                ids: vec![self.tokenizer.pad_id; 2],
                type_ids: vec![0; 2],
                truncated: 0,
            };
            let group = plan::Group {
                rows: vec![0],
                seq: b,
                padded_rows: rows,
            };
            s.run_group(&[&enc], &group).map_err(|e| {
                Error::InvalidModelFormat(format!("warming sequence bucket {b}: {}", e.message()))
            })?;
        }
        Ok(Box::new(s))
    }

    /// Texts must be UTF-8 and, with `truncation = "error"`, within the limit.
    fn check_request(&self, inputs: &[Tensor]) -> Result<()> {
        let names = ["text", "text_pair"];
        let all: Vec<Vec<String>> = inputs
            .iter()
            .zip(names)
            .map(|(t, n)| texts(t, n))
            .collect::<Result<_>>()?;
        if all[0].is_empty() {
            return Err(Error::invalid_input("input 'text' holds no texts"));
        }
        if self.cfg.truncation == Truncation::Error {
            for (i, t) in all[0].iter().enumerate() {
                let pair = all.get(1).map(|p| p[i].as_str());
                self.tokenizer
                    .encode(t, pair, self.io.max_len, Truncation::Error)
                    .map_err(|e| Error::invalid_input(format!("text {i}: {}", e.message())))?;
            }
        }
        Ok(())
    }
}

struct TextSession {
    inner: Box<dyn Session>,
    cfg: Arc<TextConfig>,
    tokenizer: Arc<TextTokenizer>,
    io: Arc<Io>,
}

/// What one engine run gave for its texts (in group row order).
struct GroupOut {
    /// `[rows, k]`: pooled vectors (before normalization) or logits.
    vectors: Vec<f32>,
    k: usize,
    /// `[rows, seq, d]` token states, when the encoder has them.
    hidden: Option<(Vec<f32>, usize, usize)>,
}

fn int_tensor(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor> {
    match dtype {
        DType::I32 => Tensor::from_vec(shape, v.into_iter().map(|x| x as i32).collect::<Vec<_>>()),
        _ => Tensor::from_vec(shape, v),
    }
}

impl TextSession {
    /// Runs one padded group: `encs` are the group's texts in row order.
    fn run_group(&mut self, encs: &[&Encoded], g: &plan::Group) -> Result<GroupOut> {
        let (rows, seq) = (g.padded_rows, g.seq);
        let mut ids = vec![i64::from(self.tokenizer.pad_id); rows * seq];
        let mut mask = vec![0i64; rows * seq];
        let mut types = vec![0i64; rows * seq];
        for (r, e) in encs.iter().enumerate() {
            for (t, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate().take(seq) {
                ids[r * seq + t] = i64::from(id);
                mask[r * seq + t] = 1;
                types[r * seq + t] = i64::from(ty);
            }
        }
        // Padding rows get one real token so a masked mean never divides by zero.
        for r in encs.len()..rows {
            mask[r * seq] = 1;
        }
        let mut inputs = Vec::with_capacity(self.io.feeds.len());
        for &(feed, dtype) in &self.io.feeds {
            let v = match feed {
                Feed::Ids => ids.clone(),
                Feed::Mask => mask.clone(),
                Feed::Types => types.clone(),
            };
            inputs.push(int_tensor(dtype, vec![rows, seq], v)?);
        }
        let outs = self.inner.run(inputs)?;
        let floats = |i: usize| -> Result<(Vec<f32>, Vec<usize>)> {
            let t = outs
                .get(i)
                .ok_or_else(|| Error::Internal(format!("encoder returned no output {i}")))?;
            let v = match t.dtype() {
                DType::F32 => t.to_vec::<f32>()?,
                _ => t.to_f64_vec()?.into_iter().map(|x| x as f32).collect(),
            };
            Ok((v, t.shape().to_vec()))
        };
        let lens: Vec<usize> = encs.iter().map(|e| e.len().min(seq)).collect();
        let hidden = match self.io.hidden {
            Some(i) => {
                let (v, shape) = floats(i)?;
                if shape.len() != 3 || shape[0] != rows || shape[1] != seq {
                    return Err(Error::InferenceFailed(format!(
                        "encoder token states are {shape:?}, expected [{rows}, {seq}, d]"
                    )));
                }
                Some((v, seq, shape[2]))
            }
            None => None,
        };
        let (vectors, k) = match self.io.pooled {
            Some(i) => {
                let (v, shape) = floats(i)?;
                let k = shape.get(1).copied().unwrap_or(1);
                if shape.len() != 2 || shape[0] != rows {
                    return Err(Error::InferenceFailed(format!(
                        "encoder output is {shape:?}, expected [{rows}, k]"
                    )));
                }
                (v[..encs.len() * k].to_vec(), k)
            }
            None => {
                let (h, seq, d) = hidden.as_ref().expect("checked at load");
                (pool::pool(h, *seq, *d, &lens, self.cfg.pooling), *d)
            }
        };
        Ok(GroupOut { vectors, k, hidden })
    }
}

impl Session for TextSession {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let text = texts(&inputs[0], "text")?;
        let pair = inputs.get(1).map(|t| texts(t, "text_pair")).transpose()?;
        let n = text.len();
        let encs: Vec<Encoded> = text
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let p = pair.as_ref().map(|p| p[i].as_str());
                self.tokenizer
                    .encode(t, p, self.io.max_len, self.cfg.truncation)
            })
            .collect::<Result<_>>()?;
        let lens: Vec<usize> = encs.iter().map(Encoded::len).collect();
        let groups = plan::plan(
            &lens,
            &self.io.buckets,
            self.cfg.max_batch_tokens,
            self.io.run_overhead,
            self.io.allowed.as_ref(),
        )?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut k = 0;
        let mut vectors: Vec<f32> = Vec::new();
        let mut tokens: Option<(Vec<f32>, usize)> = None;
        for g in &groups {
            let group_encs: Vec<&Encoded> = g.rows.iter().map(|&r| &encs[r]).collect();
            let out = self.run_group(&group_encs, g)?;
            if vectors.is_empty() {
                k = out.k;
                vectors = vec![0.0; n * k];
            }
            for (j, &r) in g.rows.iter().enumerate() {
                vectors[r * k..(r + 1) * k].copy_from_slice(&out.vectors[j * k..(j + 1) * k]);
            }
            if let Some((h, seq, d)) = &out.hidden {
                let (buf, _) = tokens.get_or_insert_with(|| (vec![0.0; n * longest * d], *d));
                for (j, &r) in g.rows.iter().enumerate() {
                    let len = lens[r].min(*seq);
                    let src = &h[j * seq * d..(j * seq + len) * d];
                    buf[r * longest * d..(r * longest + len) * d].copy_from_slice(src);
                }
            }
        }
        let counts: Vec<i64> = lens.iter().map(|&l| l as i64).collect();
        let count = Tensor::from_vec(vec![n], counts)?;
        match self.cfg.task {
            Task::Embed => {
                let mut embedding = vectors.clone();
                if self.cfg.normalize {
                    pool::normalize(&mut embedding, k.max(1));
                }
                let mut out = vec![
                    Tensor::from_vec(vec![n, k], embedding)?,
                    Tensor::from_vec(vec![n, k], vectors)?,
                    count,
                ];
                if self.io.hidden.is_some() {
                    let (buf, d) = tokens.unwrap_or((Vec::new(), k));
                    out.push(Tensor::from_vec(vec![n, longest, d], buf)?);
                }
                Ok(out)
            }
            Task::Classify => Ok(vec![Tensor::from_vec(vec![n, k], vectors)?, count]),
            Task::Rerank => {
                let scores: Vec<f32> = (0..n).map(|r| vectors[r * k]).collect();
                Ok(vec![Tensor::from_vec(vec![n], scores)?, count])
            }
        }
    }
}
