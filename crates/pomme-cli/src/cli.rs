//! Command-line definitions (clap derive) and dispatch.

use crate::env::Settings;
use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use pomme_core::{DeviceKind, LoadOptions};
use std::path::PathBuf;
use std::process::ExitCode;

/// pomme — ML inference runtime and KServe v2 server (tract, ONNX Runtime, Core ML).
#[derive(Parser, Debug)]
#[command(name = "pomme", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve a model repository over KServe v2 / Open Inference Protocol (HTTP, gRPC) with Prometheus metrics.
    Serve(Box<pomme_server::ServerArgs>),
    /// Show a model's signature, operators, parameters, memory and which backends can run it.
    Inspect(InspectArgs),
    /// Run a model once on .npy inputs; write .npy outputs and print a JSON summary.
    Infer(InferArgs),
    /// Measure latency and throughput (p50/p90/p99) per backend, batch size and concurrency,
    /// or load-test a running server with --url.
    Bench(crate::bench::BenchArgs),
    /// List the backends compiled in and their devices, available or why not.
    Devices(DevicesArgs),
    /// Quantize an ONNX model to INT8 or INT4 and measure the accuracy cost.
    Quantize(crate::quantize::QuantizeArgs),
    /// Embed texts with a text model (tokenizer + encoder): JSON on stdout or a .npy.
    Embed(crate::embed::EmbedArgs),
    /// Run a model and a reference (e.g. a Core AI conversion and its ONNX source) on the
    /// same inputs and report per-output agreement; exit 1 when an output disagrees.
    Check(crate::check::CheckArgs),
}

/// How to load a model (shared by infer and bench).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Device to run on (default: auto for Core ML models, which lets Core ML
    /// use the Neural Engine; cpu for every other format).
    #[arg(long, value_parser = ["cpu", "metal", "gpu", "cuda", "ane", "auto"])]
    pub device: Option<String>,
    /// Intra-op threads for CPU engines (default: the engine's choice).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Backend-specific option KEY=VALUE (e.g. compute_units=ane, dylib=/path/libonnxruntime.so).
    #[arg(long = "backend-option", value_name = "KEY=VALUE")]
    pub backend_options: Vec<String>,
    /// Compute precision: f32 (the file as stored) or f16 (opt-in: float16
    /// weights and compute, f32 inputs and outputs; tract and ort).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub precision: String,
}

impl EngineArgs {
    /// The spec for loading `path` as `name` with these options, on
    /// `backend` when one is named (refused when not compiled in).
    pub fn model_spec(
        &self,
        name: &str,
        path: &std::path::Path,
        backend: Option<&str>,
        settings: &crate::env::Settings,
    ) -> Result<pomme_runtime::ModelSpec> {
        let mut spec = pomme_runtime::ModelSpec::new(name, path);
        spec.load = self.load_options(path)?;
        if let Some(b) = backend {
            pomme_backends::by_name_with(&settings.backends, b)?;
            spec.backends = vec![b.to_string()];
        }
        Ok(spec)
    }

    /// Load options for `model`; without `--device`, the format's default
    /// device ([`pomme_backends::default_device`]).
    pub fn load_options(&self, model: &std::path::Path) -> Result<LoadOptions> {
        let device: DeviceKind = match &self.device {
            Some(d) => d.parse()?,
            None => pomme_runtime::detect_artifact(model).map_or(DeviceKind::Cpu, |a| {
                pomme_backends::default_device(a.format)
            }),
        };
        let mut extra = std::collections::BTreeMap::new();
        for kv in &self.backend_options {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| usage(format!("--backend-option '{kv}' is not KEY=VALUE")))?;
            extra.insert(k.to_string(), v.to_string());
        }
        Ok(LoadOptions {
            device,
            threads: self.threads,
            precision: self.precision.parse()?,
            extra,
        })
    }
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model file (.onnx, .nnef/.nnef.tgz, .mlmodel, .mlpackage, .mlmodelc, .aimodel).
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Core ML: print the compute plan (per-operation device placement; macOS 14.4+).
    #[arg(long)]
    pub placement: bool,
    /// Run the measured-routing trials the server runs at load (every candidate
    /// loaded, checked against the CPU reference, timed) and print the decision.
    #[arg(long, conflicts_with = "placement")]
    pub plan: bool,
    /// Candidates for --plan, as backend[/device] (default: the platform's list,
    /// like `routing = "auto"`).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "BACKEND/DEVICE",
        requires = "plan"
    )]
    pub candidates: Vec<String>,
    /// Timed runs per candidate for --plan.
    #[arg(long, default_value_t = 10, requires = "plan")]
    pub runs: usize,
    /// Absolute tolerance against the reference for --plan (default 1e-3).
    #[arg(long, requires = "plan")]
    pub atol: Option<f64>,
    /// Relative tolerance against the reference for --plan (default 1e-3).
    #[arg(long, requires = "plan")]
    pub rtol: Option<f64>,
}

#[derive(Args, Debug)]
pub struct InferArgs {
    /// Model file.
    pub model: PathBuf,
    /// Input as NAME=FILE.npy (repeat per input). Without any, a deterministic input
    /// of batch 1 is made for every input, and the summary says so.
    #[arg(long = "input", short = 'i', value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// Backend (default: the first compiled-in backend that reads the format).
    #[arg(long)]
    pub backend: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Directory for the outputs as NAME.npy.
    #[arg(long, short = 'o')]
    pub output_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A usage/configuration error: exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// 2 for usage and configuration errors, 1 for everything else.
pub fn exit_code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<UsageError>()) {
        2
    } else {
        1
    }
}

pub fn run(cli: Cli, settings: &Settings) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => serve(*a, settings),
        Command::Inspect(a) => crate::inspect::run(a, settings),
        Command::Infer(a) => crate::infer::run(a, settings),
        Command::Bench(a) => crate::bench::run(a, settings),
        Command::Devices(a) => crate::devices::run(a, settings),
        Command::Quantize(a) => crate::quantize::run(a, settings),
        Command::Embed(a) => crate::embed::run(a, settings),
        Command::Check(a) => crate::check::run(a, settings),
    }
}

/// A multi-threaded tokio runtime for commands that need one.
pub fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The platform's automatic routing candidates (named in pomme-backends).
pub fn automatic_candidates() -> Vec<pomme_runtime::Candidate> {
    pomme_backends::automatic_candidates()
        .into_iter()
        .map(|(backend, device)| pomme_runtime::Candidate::new(backend, device))
        .collect()
}

/// `pomme serve`: configuration is merged and validated before any port is bound.
fn serve(args: pomme_server::ServerArgs, settings: &Settings) -> Result<ExitCode> {
    let config = pomme_server::ServerConfig::load(&args).map_err(|e| usage(e.to_string()))?;
    let tracer = crate::init_serve_logging(
        config.log_format == pomme_server::config::LogFormat::Json,
        config.tracing.as_ref(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let mut backend_settings = settings.backends.clone();
    if let Some(root) = &config.cache_dir {
        backend_settings.cache_root = root.clone();
    }
    if let Some(python) = &config.coreai_python {
        backend_settings.coreai_python = Some(python.clone());
    }
    let mut builder = pomme_runtime::Runtime::builder()
        .max_concurrency(config.runtime.max_concurrency)
        .default_timeout(config.runtime.default_timeout)
        .fail_fast(true)
        .automatic_candidates(automatic_candidates())
        .backends(pomme_backends::compiled_with(&backend_settings));
    if let Some(d) = config.runtime.worker_spin {
        builder = builder.worker_spin(d);
    }
    if let Some(d) = config.runtime.reply_spin {
        builder = builder.reply_spin(d);
    }
    builder = builder.response_cache_mb(config.runtime.response_cache_mb);
    if config.runtime.memory_guard {
        builder = builder.memory_guard(
            std::sync::Arc::new(pomme_backends::telemetry::available_memory),
            config.runtime.memory_reserve_mb,
        );
    }
    if config.runtime.memory_budget_mb > 0 {
        builder = builder.memory_budget_mb(config.runtime.memory_budget_mb);
    }
    builder = builder.memory_policy(config.runtime.memory_policy);
    let runtime = builder.build()?;
    let platform = triton_platform().with_cache_root(backend_settings.cache_root.clone());
    let (interval, policy) = (config.node.telemetry_interval, config.node.thermal_policy);
    let source: pomme_server::node::TelemetrySource =
        std::sync::Arc::new(|| serde_json::to_value(pomme_backends::telemetry::collect()).ok());
    let served = tokio_runtime()?.block_on(async move {
        let node = pomme_server::node::spawn(&runtime, source, interval, policy);
        let served = pomme_server::serve(config, runtime, platform).await;
        node.abort();
        served
    });
    // Exports the spans still batched (outside the tokio runtime: the
    // exporter's blocking client must not run on it).
    if let Some(provider) = tracer
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "flushing traces at exit failed");
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// The backends Triton platforms mean, the device of `KIND_GPU` and of a model
/// that names none, for the
/// server's `config.pbtxt` translation (named in pomme-backends).
fn triton_platform() -> pomme_server::Platform {
    pomme_server::Platform::new(
        pomme_backends::triton_platform_backends,
        pomme_backends::default_gpu_device(),
    )
    .with_default_device(pomme_backends::default_device)
}
