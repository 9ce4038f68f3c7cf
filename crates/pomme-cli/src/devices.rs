//! `pomme devices`: backends compiled in, their devices, available or why not.

use crate::cli::DevicesArgs;
use crate::env::Settings;
use anyhow::Result;
use pomme_core::Availability;
use std::process::ExitCode;

pub fn run(args: DevicesArgs, settings: &Settings) -> Result<ExitCode> {
    let backends = pomme_backends::compiled_with(&settings.backends);
    let rows: Vec<serde_json::Value> = backends
        .iter()
        .map(|b| {
            serde_json::json!({
                "backend": b.name(),
                "formats": b.formats().iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                "availability": b.availability(),
                "devices": b.devices(),
            })
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "backends": rows, "cuda_feature": pomme_backends::CUDA_COMPILED })
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<8} {:<12} {:<32} STATUS",
        "BACKEND", "DEVICE", "FORMATS", "NAME"
    );
    for b in &backends {
        let formats: Vec<String> = b.formats().iter().map(|f| f.to_string()).collect();
        if let Availability::Unavailable(why) = b.availability() {
            println!(
                "{:<8} {:<8} {:<12} {:<32} unavailable: {why}",
                b.name(),
                "-",
                formats.join(","),
                "-"
            );
            continue;
        }
        for d in b.devices() {
            let status = match &d.availability {
                Availability::Available => "available".to_string(),
                Availability::Unavailable(why) => format!("unavailable: {why}"),
            };
            println!(
                "{:<8} {:<8} {:<12} {:<32} {status}",
                b.name(),
                d.kind.as_str(),
                formats.join(","),
                d.name
            );
        }
    }
    println!();
    println!("platform:");
    for line in pomme_backends::telemetry::collect().to_string().lines() {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}
