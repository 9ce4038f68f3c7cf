//! `pomme quantize`: INT8 / INT4 ONNX quantization with measured accuracy.

use crate::cli::usage;
use crate::env::Settings;
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pomme_core::Precision;
use pomme_quant::{
    CalibrationMethod, Engine, ProgressEvent, QuantError, QuantizeOptions, Scheme, Target,
};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Float ONNX model.
    pub model: PathBuf,
    /// int8 (weight-only), int8-static (QDQ, needs --calibration), int8-dynamic
    /// (integer matmuls), int4 (weight-only, blockwise) or int4-nbits
    /// (ONNX Runtime's MatMulNBits). With --target, `int8` or `int4` name the
    /// precision and the target picks the scheme. Default: int8.
    #[arg(long)]
    pub scheme: Option<String>,
    /// speed: the scheme that runs on integer kernels of --engine (int8:
    /// int8-static for convolutional models with --calibration, else
    /// int8-dynamic; int4: int4-nbits on ort). size: the weight-only files.
    #[arg(long)]
    pub target: Option<String>,
    /// Engine the speed target optimises for: ort or tract (default: ort when
    /// it is available, else tract).
    #[arg(long)]
    pub engine: Option<String>,
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
    /// Fail (nothing written) when the worst per-row cosine of the compared
    /// output falls below this (embedding models); with --auto-exclude,
    /// keep layers float until it holds.
    #[arg(long)]
    pub min_cosine: Option<f64>,
    /// SmoothQuant for int8-dynamic / int8-static matmuls: the migration
    /// strength α in (0, 1], or `off`. Default: 0.8 for `--target speed`
    /// when it picks int8-dynamic, else off. Channel maxima come from
    /// --calibration, else --validate (without either: not smoothed).
    #[arg(long)]
    pub smooth: Option<String>,
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
    let backends = pomme_backends::compiled_with(&settings.backends);
    let refs: Vec<&dyn pomme_core::Backend> = backends
        .iter()
        .filter(|b| b.formats().contains(&pomme_core::ModelFormat::Onnx))
        .map(|b| b.as_ref())
        .collect();
    let mut refs = refs;
    let scheme_word = args.scheme.as_deref().unwrap_or("int8");
    let target: Option<Target> = args
        .target
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e: pomme_core::Error| usage(e.message()))?;
    let scheme = match target {
        None => Scheme::from_cli(scheme_word, args.per_channel, args.block_size, method)
            .map_err(|e| usage(e.message()))?,
        Some(target) => {
            let precision = match scheme_word {
                "int8" => Precision::Int8,
                "int4" => Precision::Int4,
                other => {
                    return Err(usage(format!(
                        "--target picks the scheme: give --scheme int8 or int4 (the precision), not '{other}'"
                    )));
                }
            };
            let engine = match args.engine.as_deref() {
                Some(e) => Engine::from_backend(e).ok_or_else(|| {
                    usage(format!("unknown engine '{e}' (expected ort or tract)"))
                })?,
                None => pomme_quant::default_engine(&refs),
            };
            let (model, _) =
                pomme_quant::onnx::load_model(&args.model).map_err(|e| anyhow::anyhow!("{e}"))?;
            let profile = pomme_quant::rewrite::profile(&model);
            let (mut scheme, note) = Scheme::for_target(
                precision,
                target,
                engine,
                &profile,
                args.calibration.is_some(),
            )
            .expect("int8 and int4 have schemes");
            if let Scheme::Int4 { block_size } | Scheme::Int4NBits { block_size } = &mut scheme {
                *block_size = args.block_size;
            }
            if let Scheme::Int8 { per_channel } = &mut scheme {
                *per_channel = args.per_channel;
            }
            if let Scheme::Int8Static { method: m, .. } = &mut scheme {
                *m = method;
            }
            scheme.check().map_err(|e| usage(e.message()))?;
            if target == Target::Speed {
                // A speed file is made for one engine's integer kernels, whose
                // rounding differs from other engines': calibrate, validate
                // and gate on that engine only.
                let only: Vec<&dyn pomme_core::Backend> = refs
                    .iter()
                    .copied()
                    .filter(|b| Engine::from_backend(b.name()) == Some(engine))
                    .collect();
                if only.is_empty() {
                    return Err(anyhow::anyhow!(
                        "--target speed for {engine:?}: that engine is not compiled in"
                    ));
                }
                refs = only;
            }
            eprintln!("target {target} on {engine:?}: {scheme}");
            if let Some(n) = note {
                eprintln!("note: {n}");
            }
            scheme
        }
    };
    let mut options = QuantizeOptions::new(scheme);
    options.exclude = args.exclude.clone();
    options.calibration = args.calibration.clone();
    options.validate = args.validate.clone();
    options.labels = args.labels.clone();
    options.max_accuracy_drop = args.max_accuracy_drop;
    options.auto_exclude = args.auto_exclude;
    options.min_cosine = args.min_cosine;
    let smooth = match args.smooth.as_deref() {
        None => pomme_quant::Smooth::Default,
        Some("off") => pomme_quant::Smooth::Off,
        Some(a) => pomme_quant::Smooth::Alpha(
            a.parse()
                .ok()
                .filter(|a: &f32| *a > 0.0 && *a <= 1.0)
                .ok_or_else(|| {
                    usage(format!(
                        "--smooth takes a strength in (0, 1] or 'off', not '{a}'"
                    ))
                })?,
        ),
    };
    options.smooth = smooth.resolve(target, &options.scheme);
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
            // The message already ends with "nothing written".
            Err(anyhow::anyhow!("{message}"))
        }
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
