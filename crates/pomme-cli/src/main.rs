//! `pomme`: the command line over pomme's runtime and server.
//!
//! Errors print as one line (`error: …`) with exit code 1, or 2 for bad usage
//! or configuration; never a panic or a backtrace.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod devices;
mod infer;
mod inspect;
mod npy;
mod quantize;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if !matches!(cli.command, cli::Command::Serve(_)) {
        init_logging(
            false,
            std::env::var("POMME_LOG_FORMAT").is_ok_and(|f| f == "json"),
        );
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::from(cli::exit_code_of(&e))
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Structured logs on stderr; `POMME_LOG` filters (default: info for serve,
/// errors only for one-shot commands, which report their own errors).
pub fn init_logging(serve: bool, json: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if serve { "info" } else { "error" };
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
