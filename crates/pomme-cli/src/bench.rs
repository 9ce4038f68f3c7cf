//! `pomme bench`: latency percentiles and throughput, one row per backend ×
//! batch size × concurrency, measured through the same `Runtime` path requests take.
//! With `--url` it is a load generator against a running server instead
//! (see [`crate::loadgen`]).

use crate::cli::{EngineArgs, tokio_runtime, usage};
use crate::env::Settings;
use anyhow::{Result, anyhow};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pomme_core::Availability;
use pomme_runtime::{InferRequest, LatencyHistogram, ModelSpec, Runtime};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model file (local benchmark).
    pub model: Option<PathBuf>,
    /// Load-test a running server instead: http://HOST:PORT or grpc://HOST:PORT.
    #[arg(long, requires = "model_name", conflicts_with_all = ["model", "backend"])]
    pub url: Option<String>,
    /// With --url: the model name on the server.
    #[arg(long = "model", value_name = "M", requires = "url")]
    pub model_name: Option<String>,
    /// With --url: the model version (default: the server's choice).
    #[arg(long, value_name = "V", requires = "url")]
    pub model_version: Option<String>,
    /// With --url: send tensors as raw bytes (HTTP binary tensor extension, gRPC raw_input_contents).
    #[arg(long, requires = "url")]
    pub binary: bool,
    /// With --url: input as NAME=FILE.npy (repeat per input); others are generated from the
    /// model's metadata (a variable first dimension takes --batch).
    #[arg(
        long = "input",
        short = 'i',
        value_name = "NAME=FILE.npy",
        requires = "url"
    )]
    pub inputs: Vec<String>,
    /// With --url: a request unanswered after this long counts as timed out.
    #[arg(long, default_value = "60s", value_parser = parse_duration, requires = "url")]
    pub request_timeout: Duration,
    /// With --url: pace the clients to this many requests per second in all
    /// (each concurrency level), instead of sending back to back. Refused
    /// requests then do not come back at once, so the offered load is the
    /// rate, as long as the clients keep up (latency × rate < concurrency).
    #[arg(long, value_name = "REQ_PER_S", requires = "url")]
    pub rate: Option<f64>,
    /// Backends to compare, comma-separated (default: every available one reading the format).
    #[arg(long, value_delimiter = ',')]
    pub backend: Vec<String>,
    /// Batch sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Concurrent clients, comma-separated (local: one compute worker per client).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// Measurement time per row (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up time per row, not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Print JSON rows instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Durations are parsed as in `pomme.toml` (`10s`, `500ms`, `2m`, bare seconds).
use pomme_server::config::parse_duration;

/// One measured configuration.
#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub backend: String,
    pub device: String,
    pub batch: usize,
    pub concurrency: usize,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub items_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

pub fn run(args: BenchArgs, settings: &Settings) -> Result<ExitCode> {
    if let Some(url) = &args.url {
        return run_remote(url, &args);
    }
    let model = args
        .model
        .clone()
        .ok_or_else(|| usage("bench needs a MODEL path"))?;
    let artifact = pomme_runtime::detect_artifact(&model)?;
    let backends: Vec<_> = if args.backend.is_empty() {
        pomme_backends::compiled_with(&settings.backends)
            .into_iter()
            .filter(|b| b.formats().contains(&artifact.format) && b.availability().is_available())
            .collect()
    } else {
        args.backend
            .iter()
            .map(|n| pomme_backends::by_name_with(&settings.backends, n))
            .collect::<pomme_core::Result<_>>()?
    };
    if backends.is_empty() {
        return Err(anyhow!(
            "no available backend reads {} models",
            artifact.format
        ));
    }
    let tokio = tokio_runtime()?;
    let mut rows = Vec::new();
    let total = backends.len() * args.batch.len() * args.concurrency.len();
    for b in &backends {
        if let Availability::Unavailable(why) = b.availability() {
            return Err(anyhow!("backend {} is unavailable: {why}", b.name()));
        }
        for &conc in &args.concurrency {
            let rt = Runtime::builder().backends(vec![b.clone()]).build()?;
            let mut spec = ModelSpec::new("bench", &model)
                .backends(&[b.name()])
                .workers(conc.max(1));
            spec.load = args.engine.load_options(&model)?;
            let view = tokio.block_on(rt.load(spec))?;
            for &batch in &args.batch {
                let inputs = crate::infer::synthetic_batch(&view.signature, batch.max(1))?;
                let label = format!(
                    "[{}/{}] {} batch {batch} conc {conc}",
                    rows.len() + 1,
                    total,
                    b.name()
                );
                let row = tokio.block_on(measure(&rt, inputs, conc.max(1), &args, &label))?;
                rows.push(Row {
                    backend: b.name().into(),
                    device: view.device.to_string(),
                    batch,
                    ..row
                });
            }
            tokio.block_on(rt.unload("bench"))?;
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(ExitCode::SUCCESS)
}

/// `pomme bench --url`: drives a running server; progress on stderr, the
/// table or the JSON document on stdout.
fn run_remote(url: &str, args: &BenchArgs) -> Result<ExitCode> {
    let cfg = crate::loadgen::LoadConfig {
        url: url.to_string(),
        model: args
            .model_name
            .clone()
            .ok_or_else(|| usage("--url needs --model M"))?,
        version: args.model_version.clone(),
        concurrency: args.concurrency.clone(),
        batch: args.batch.clone(),
        duration: args.duration,
        warmup: args.warmup,
        binary: args.binary,
        inputs: args.inputs.clone(),
        request_timeout: args.request_timeout,
        rate: args.rate,
    };
    let report = tokio_runtime()?.block_on(crate::loadgen::run(&cfg))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        crate::loadgen::print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(
    rt: &Runtime,
    inputs: Vec<(String, pomme_core::Tensor)>,
    conc: usize,
    args: &BenchArgs,
    label: &str,
) -> Result<Row> {
    let batch = inputs
        .first()
        .map(|(_, t)| t.shape().first().copied().unwrap_or(1))
        .unwrap_or(1);
    // Warm-up, unmeasured.
    let warm_end = Instant::now() + args.warmup;
    while Instant::now() < warm_end {
        rt.infer(InferRequest::new("bench", inputs.clone())).await?;
    }
    let pb = ProgressBar::new(args.duration.as_millis() as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {elapsed}/{duration}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    let hist = Arc::new(LatencyHistogram::default());
    let start = Instant::now();
    let end = start + args.duration;
    let tasks: Vec<_> = (0..conc)
        .map(|_| {
            let rt = rt.clone();
            let inputs = inputs.clone();
            let hist = hist.clone();
            tokio::spawn(async move {
                let mut errors = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    match rt.infer(InferRequest::new("bench", inputs.clone())).await {
                        Ok(_) => hist.record(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                errors
            })
        })
        .collect();
    let ticker = {
        let pb = pb.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                pb.set_position(start.elapsed().as_millis() as u64);
            }
        })
    };
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    ticker.abort();
    pb.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    let ms = |us: u64| us as f64 / 1e3;
    let (n, p50, p90, p99, mean) = (
        hist.count(),
        ms(hist.quantile_us(0.5)),
        ms(hist.quantile_us(0.9)),
        ms(hist.quantile_us(0.99)),
        hist.mean_us() / 1e3,
    );
    Ok(Row {
        backend: String::new(),
        device: String::new(),
        batch,
        concurrency: conc,
        requests: n,
        errors,
        requests_per_s: n as f64 / elapsed,
        items_per_s: (n as f64 * batch as f64) / elapsed,
        p50_ms: p50,
        p90_ms: p90,
        p99_ms: p99,
        mean_ms: mean,
    })
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<8} {:<6} {:>5} {:>5} {:>9} {:>6} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "BACKEND",
        "DEVICE",
        "BATCH",
        "CONC",
        "REQUESTS",
        "ERRORS",
        "REQ/S",
        "ITEMS/S",
        "P50 ms",
        "P90 ms",
        "P99 ms"
    );
    for r in rows {
        println!(
            "{:<8} {:<6} {:>5} {:>5} {:>9} {:>6} {:>10.1} {:>10.1} {:>9.3} {:>9.3} {:>9.3}",
            r.backend,
            r.device,
            r.batch,
            r.concurrency,
            r.requests,
            r.errors,
            r.requests_per_s,
            r.items_per_s,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms
        );
    }
}
