//! Serves a model repository with the tract backend, for trying the server
//! with stock clients (tritonclient, curl):
//! `cargo run -p pomme-server --example serve_repo -- --model-repository DIR`.

#[path = "../tests/common/platform.rs"]
mod platform;

use clap::Parser;
use pomme_runtime::Runtime;
use pomme_server::{ServerArgs, ServerConfig};
use std::sync::Arc;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: ServerArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match ServerConfig::load(&cli.args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let runtime = Runtime::builder()
        .max_concurrency(config.runtime.max_concurrency)
        .default_timeout(config.runtime.default_timeout)
        .backends(vec![Arc::new(pomme_tract::TractBackend::new())])
        .build()?;
    pomme_server::serve(config, runtime, platform::platform()).await
}
