//! `pomme`: the command line over pomme's runtime and server.
//!
//! Errors print as one line (`error: …`) with exit code 1, or 2 for bad usage
//! or configuration; never a panic or a backtrace.
//!
//! The two `unsafe` blocks are [`fp32_exact_gpu_math`], run first in `main`
//! while the process is still single-threaded, and [`leave`], the last call.
#![deny(unsafe_code)]

mod bench;
mod check;
mod cli;
mod devices;
mod embed;
mod env;
mod infer;
mod inspect;
mod loadgen;
mod npy;
mod quantize;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() {
    let code = run_main();
    leave(code)
}

/// Ends the process with `code` once everything pomme owns has been dropped and
/// the standard streams flushed, without running C/C++ exit handlers.
///
/// ONNX Runtime's CUDA execution provider (onnxruntime-gpu 1.31.1 with CUDA 13
/// on an H100) segfaults in its static destructors at process exit, after
/// pomme's sessions and workers are already gone and the command's output is
/// written: `pomme infer` printed its result and then died with SIGSEGV, so the
/// exit status (139) contradicted the output, and `pomme serve` would fail its
/// SIGTERM → exit 0 contract. Nothing of pomme's state lives in C exit
/// handlers, so skipping them (`_exit`) loses nothing.
fn leave(code: u8) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and never returns; every Rust value
    // with a meaningful destructor (runtime, server, output files) was dropped
    // when `run_main` returned, and the streams were flushed above.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(i32::from(code))
    }
}

fn run_main() -> u8 {
    fp32_exact_gpu_math();
    let settings = env::Settings::from_env();
    quiet_panics();
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if !matches!(cli.command, cli::Command::Serve(_)) {
        init_logging(false, settings.log_json);
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cli::run(cli, &settings))) {
        Ok(Ok(code)) => u8::from(code != ExitCode::SUCCESS),
        Ok(Err(e)) => {
            eprintln!("error: {}", pomme_core::one_line(format!("{e:#}")));
            cli::exit_code_of(&e)
        }
        Err(_) => {
            let what = LAST_PANIC.with(|p| p.borrow_mut().take());
            eprintln!(
                "error: internal error: {}",
                what.unwrap_or_else(|| "panic".into())
            );
            1
        }
    }
}

/// Keeps f32 models exact on NVIDIA GPUs unless the user opts out.
///
/// cuDNN and cuBLAS use TF32 tensor cores for f32 convolutions and matrix
/// products on Ampere and newer by default; on ResNet-18 that moved outputs by
/// 1.7e-3 (norm-relative 1.0e-3) from the CPU reference on an H100, and
/// `NVIDIA_TF32_OVERRIDE=0` brought it to 2.5e-6 (see BENCHMARKS.md). The
/// override is read by the NVIDIA libraries when they load, so it must be in
/// the environment before any backend starts. Users who accept TF32's 10-bit
/// mantissa for speed set `NVIDIA_TF32_OVERRIDE=1` themselves: reduced
/// precision stays opt-in.
#[expect(
    clippy::disallowed_methods,
    reason = "the process-wide override must be set before any thread starts"
)]
fn fp32_exact_gpu_math() {
    if std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        // SAFETY: called first thing in `main`, before any thread (tokio,
        // rayon, compute workers, logging) exists, so nothing can read the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
        }
    }
}

/// Panics never reach the user as a backtrace. Engines that panic inside
/// pomme's `catch_unwind` guards (tract on a malformed file, a worker) become
/// one-line errors there, so the default hook's message and backtrace would be
/// noise; the hook logs them at debug level instead (`POMME_LOG=debug`).
/// A panic that reaches `main` ends the process with a one-line `error:`.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = pomme_core::panic_message(info.payload());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::debug!(message = %msg, at = %at, "panic");
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg} (at {at})")));
    }));
}

thread_local! {
    /// The last panic on this thread, for `main`'s one-line report.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Structured logs on stderr; `POMME_LOG` filters (default: info for serve,
/// errors only for one-shot commands, which report their own errors).
pub fn init_logging(serve: bool, json: bool) {
    use tracing_subscriber::EnvFilter;
    // ONNX Runtime logs every graph transformer at info level (dozens of
    // lines per session): its warnings are what an operator needs.
    let default = if serve { "info,ort=warn" } else { "error" };
    let filter = EnvFilter::try_from_env("POMME_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// `pomme serve`'s logging, plus OpenTelemetry export when `[tracing]` is
/// configured. Without it this is [`init_logging`] exactly: no OpenTelemetry
/// layer, so the `debug` spans of a request's stages (queue, batch,
/// compute, respond) stay disabled and cost one interest check.
///
/// With it, the log filter (`POMME_LOG`) applies to the log output only and
/// the exporter sees pomme's spans at debug level and above, whatever the log
/// level. Spans go to the OTLP/HTTP endpoint in protobuf through the SDK's
/// batch processor (its own thread; `OTEL_BSP_*` tune it), sampled
/// parent-based: a request's W3C `traceparent` decides, else the ratio.
/// Returns the provider, to flush with `shutdown` when serving ends.
pub fn init_serve_logging(
    json: bool,
    tracing_config: Option<&pomme_server::config::TracingConfig>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _, filter::Targets};
    let Some(t) = tracing_config else {
        init_logging(true, json);
        return Ok(None);
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(t.otlp_endpoint.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("tracing.otlp_endpoint: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            t.sampling_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(t.service_name.clone())
                .build(),
        )
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("pomme"))
        .with_filter(Targets::new().with_target("pomme", tracing::Level::DEBUG));
    let filter =
        EnvFilter::try_from_env("POMME_LOG").unwrap_or_else(|_| EnvFilter::new("info,ort=warn"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Some(provider))
}
