//! `pomme embed`: texts in, embeddings out, through the same text model the
//! server runs (tokenizer, buckets, pooling, normalization), as JSON on
//! stdout or a `[texts, dim]` float32 `.npy`.

use crate::cli::tokio_runtime;
use crate::env::Settings;
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pomme_core::Tensor;
use pomme_runtime::{InferRequest, Runtime};
use pomme_text::{TextAdapter, TextConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A model directory (as in a repository: `config.toml` with `[text]`,
    /// `tokenizer.json` or `vocab.txt`, `1/model.onnx`) or a model file
    /// (its tokenizer next to it, or `--tokenizer`).
    pub model: PathBuf,
    /// Texts to embed.
    pub texts: Vec<String>,
    /// A file of texts, one per line (empty lines skipped).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Tokenizer file (`tokenizer.json` or a WordPiece `vocab.txt`).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write the embeddings as a float32 `.npy` of [texts, dim] instead of JSON.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Texts per engine request.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Backend (default: the first compiled-in backend that loads the model).
    #[arg(long)]
    pub backend: Option<String>,
    #[command(flatten)]
    pub engine: crate::cli::EngineArgs,
}

/// The model file of a model directory: `model.*` in it, else in its
/// highest-numbered version directory.
fn model_file(dir: &Path) -> Result<PathBuf> {
    let find = |d: &Path| -> Option<PathBuf> {
        std::fs::read_dir(d)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_stem().is_some_and(|s| s == "model")
                    && pomme_runtime::detect_artifact(p).is_ok()
            })
    };
    if let Some(p) = find(dir) {
        return Ok(p);
    }
    let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    versions.sort();
    versions
        .iter()
        .rev()
        .find_map(|(_, v)| find(v))
        .with_context(|| {
            format!(
                "{} holds no model file (model.onnx or 1/model.onnx)",
                dir.display()
            )
        })
}

/// `[text]` of a directory's `config.toml`, or the defaults.
fn text_config(dir: &Path) -> Result<TextConfig> {
    let path = dir.join("config.toml");
    if !path.is_file() {
        return Ok(TextConfig::default());
    }
    let text = std::fs::read_to_string(&path)?;
    let table: toml::Table = toml::from_str(&text).with_context(|| path.display().to_string())?;
    match table.get("text") {
        Some(t) => t
            .clone()
            .try_into()
            .with_context(|| format!("{}: [text]", path.display())),
        None => Ok(TextConfig::default()),
    }
}

pub fn run(args: EmbedArgs, settings: &Settings) -> Result<ExitCode> {
    let mut texts = args.texts.clone();
    if let Some(f) = &args.file {
        let body =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        texts.extend(
            body.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string),
        );
    }
    if texts.is_empty() {
        bail!("no texts: give them as arguments or with --file");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (file, dir) = if args.model.is_dir() {
        (model_file(&args.model)?, args.model.clone())
    } else {
        let parent = args.model.parent().unwrap_or(Path::new(".")).to_path_buf();
        (args.model.clone(), parent)
    };
    let mut cfg = text_config(&dir)?;
    let tk_dir = match &args.tokenizer {
        Some(t) => {
            cfg.tokenizer = Some(
                t.file_name()
                    .and_then(|n| n.to_str())
                    .context("--tokenizer names no file")?
                    .to_string(),
            );
            t.parent().unwrap_or(Path::new(".")).to_path_buf()
        }
        None => dir.clone(),
    };
    let adapter = TextAdapter::from_dir(&tk_dir, cfg).map_err(anyhow::Error::new)?;
    let rt = Runtime::builder()
        .backends(pomme_backends::compiled_with(&settings.backends))
        .build()?;
    let mut spec = args
        .engine
        .model_spec("text", &file, args.backend.as_deref(), settings)?;
    spec.adapter = Some(Arc::new(adapter));
    let tokio = tokio_runtime()?;
    let view = tokio
        .block_on(rt.load(spec))
        .with_context(|| format!("cannot load {}", file.display()))?;
    if view.signature.output("embedding").is_none() {
        bail!(
            "{} is not an embedding model ([text] task is not \"embed\")",
            args.model.display()
        );
    }
    let pb = ProgressBar::new(texts.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("embedding [{bar:30}] {pos}/{len} texts {per_sec} {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    if args.file.is_none() {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut rows: Vec<f32> = Vec::new();
    let (mut dim, mut tokens) = (0, 0i64);
    for chunk in texts.chunks(args.batch) {
        let t = Tensor::from_strings(
            vec![chunk.len()],
            chunk
                .iter()
                .map(|s| bytes::Bytes::from(s.clone()))
                .collect(),
        )?;
        let mut req = InferRequest::new("text", vec![("text".into(), t)]);
        req.outputs = Some(vec!["embedding".into(), "token_count".into()]);
        let resp = tokio.block_on(rt.infer(req))?;
        let e = resp.output("embedding").context("no embedding output")?;
        dim = e.shape()[1];
        rows.extend(e.to_vec::<f32>()?);
        tokens += resp
            .output("token_count")
            .map(|c| c.to_vec::<i64>().map(|v| v.iter().sum::<i64>()))
            .transpose()?
            .unwrap_or(0);
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    match &args.output {
        Some(path) => {
            crate::npy::write(path, &Tensor::from_vec(vec![texts.len(), dim], rows)?)?;
            println!(
                "{}",
                serde_json::json!({"model": args.model, "backend": view.backend, "texts": texts.len(), "dim": dim, "tokens": tokens, "output": path})
            );
        }
        None => {
            let v: Vec<&[f32]> = rows.chunks(dim.max(1)).collect();
            println!(
                "{}",
                serde_json::json!({"model": args.model, "backend": view.backend, "dim": dim, "tokens": tokens, "embeddings": v})
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
