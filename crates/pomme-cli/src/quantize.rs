//! `pomme quantize`: INT8 / INT4 ONNX quantization with measured accuracy.

use crate::cli::usage;
use crate::env::Settings;
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pomme_quant::{CalibrationMethod, ProgressEvent, QuantError, QuantizeOptions, Scheme};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Float ONNX model.
    pub model: PathBuf,
    /// int8 (weight-only), int8-static (QDQ, needs --calibration) or int4 (weight-only, blockwise).
    #[arg(long)]
    pub scheme: String,
    /// Per-channel scales (int8).
    #[arg(long)]
    pub per_channel: bool,
    /// Block size for int4 (32, 64 or 128).
    #[arg(long, default_value_t = 32)]
    pub block_size: usize,
    /// Calibration data (.npz keyed by input name, or `X`).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Activation range method: minmax, percentile[:P], entropy.
    #[arg(long, default_value = "minmax")]
    pub calibration_method: String,
    /// Keep these op types or node names in float (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Keep layers in float, most harmful first, until --max-accuracy-drop is met.
    #[arg(long)]
    pub auto_exclude: bool,
    /// Validation data (.npz); reports agreement, accuracy, cosine, SNR, size and latency per backend.
    #[arg(long)]
    pub validate: Option<PathBuf>,
    /// Key of the labels array in the validation data (default: y, label or labels).
    #[arg(long)]
    pub labels: Option<String>,
    /// Fail (nothing written) when accuracy drops by more than this many points.
    #[arg(long)]
    pub max_accuracy_drop: Option<f64>,
    /// Output model.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: QuantizeArgs, settings: &Settings) -> Result<ExitCode> {
    let method: CalibrationMethod = args
        .calibration_method
        .parse()
        .map_err(|e| usage(format!("{e}")))?;
    let scheme = Scheme::from_cli(&args.scheme, args.per_channel, args.block_size, method)
        .map_err(|e| usage(e.message()))?;
    let mut options = QuantizeOptions::new(scheme);
    options.exclude = args.exclude.clone();
    options.calibration = args.calibration.clone();
    options.validate = args.validate.clone();
    options.labels = args.labels.clone();
    options.max_accuracy_drop = args.max_accuracy_drop;
    options.auto_exclude = args.auto_exclude;
    let backends = pomme_backends::compiled_with(&settings.backends);
    let refs: Vec<&dyn pomme_core::Backend> = backends
        .iter()
        .filter(|b| b.formats().contains(&pomme_core::ModelFormat::Onnx))
        .map(|b| b.as_ref())
        .collect();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {pos}/{len}").expect("valid template"),
    );
    let progress = |e: &ProgressEvent| match e {
        ProgressEvent::Stage { stage } => {
            bar.set_message(format!("{stage:?}").to_lowercase());
            bar.set_position(0);
        }
        ProgressEvent::Calibration { done, total }
        | ProgressEvent::Quantizing { done, total }
        | ProgressEvent::Sensitivity { done, total, .. }
        | ProgressEvent::Validation { done, total, .. } => {
            bar.set_length(*total as u64);
            bar.set_position(*done as u64);
        }
        ProgressEvent::Note { message } => bar.println(format!("note: {message}")),
    };
    let outcome = pomme_quant::quantize_file(&args.model, &args.output, &options, &refs, &progress);
    bar.finish_and_clear();
    match outcome {
        Ok(o) => {
            if args.json {
                let v = serde_json::json!({
                    "output": o.output,
                    "summary": o.summary,
                    "validation": o.validation,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("{}", o.summary);
                if let Some(v) = &o.validation {
                    println!("{v}");
                }
                println!("wrote {}", o.output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(QuantError::AccuracyBudgetExceeded { message, report }) => {
            println!("{report}");
            Err(anyhow::anyhow!("{message} (nothing written)"))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
