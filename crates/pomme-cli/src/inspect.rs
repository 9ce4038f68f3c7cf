//! `pomme inspect`: what a model is and who can run it; with `--plan`, which
//! candidate measured routing would serve it on, and why.

use crate::cli::{InspectArgs, usage};
use crate::env::Settings;
use anyhow::{Result, anyhow};
use indicatif::{ProgressBar, ProgressStyle};
use pomme_core::{Availability, DeviceKind, LoadOptions, ModelInfo};
use pomme_runtime::{RoutingConfig, RoutingDecision, parse_candidates};
use std::process::ExitCode;
use std::time::Instant;

pub fn run(args: InspectArgs, settings: &Settings) -> Result<ExitCode> {
    if args.plan {
        return plan(&args, settings);
    }
    let artifact = pomme_runtime::detect_artifact(&args.model)?;
    let backends: Vec<_> = pomme_backends::compiled_with(&settings.backends)
        .into_iter()
        .filter(|b| b.formats().contains(&artifact.format))
        .collect();
    if backends.is_empty() {
        return Err(anyhow!(
            "no compiled-in backend reads {} models",
            artifact.format
        ));
    }
    // The first backend that can inspect this format describes the model.
    let mut info: Option<(ModelInfo, &'static str)> = None;
    let mut last_err = None;
    for b in &backends {
        match b.inspect(&artifact) {
            Ok(i) => {
                info = Some((i, b.name()));
                break;
            }
            // A malformed model is malformed for every backend: say so at once.
            Err(e @ pomme_core::Error::InvalidModelFormat(_)) => return Err(e.into()),
            Err(e) => last_err = Some(e),
        }
    }
    let Some((info, inspected_by)) = info else {
        return Err(last_err
            .map(anyhow::Error::from)
            .unwrap_or_else(|| anyhow!("no backend could inspect the model")));
    };
    // Who can run it: try a real load on each available backend.
    let mut runnable = Vec::new();
    for b in &backends {
        let verdict = match b.availability() {
            Availability::Unavailable(why) => {
                serde_json::json!({"backend": b.name(), "runs": false, "reason": why})
            }
            Availability::Available => {
                let t = Instant::now();
                match b.load(&artifact, &LoadOptions::default()) {
                    Ok(_) => {
                        serde_json::json!({"backend": b.name(), "runs": true, "load_ms": t.elapsed().as_millis() as u64})
                    }
                    Err(e) => {
                        serde_json::json!({"backend": b.name(), "runs": false, "reason": e.to_string()})
                    }
                }
            }
        };
        runnable.push(verdict);
    }
    let memory_total = info.weight_bytes + info.activation_bytes_estimate;
    let coreml = artifact.format == pomme_core::ModelFormat::CoreMl;
    let ane = if coreml {
        pomme_backends::extras::ane_precheck(&args.model).unwrap_or_default()
    } else {
        Vec::new()
    };
    let placement = if args.placement {
        if !coreml {
            return Err(crate::cli::usage(
                "--placement applies to Core ML models (.mlmodel, .mlpackage, .mlmodelc)",
            ));
        }
        Some(pomme_backends::extras::coreml_placement(
            &settings.backends,
            &args.model,
            pomme_core::DeviceKind::Ane,
        )?)
    } else {
        None
    };
    if args.json {
        let out = serde_json::json!({
            "model": args.model,
            "format": artifact.format,
            "inspected_by": inspected_by,
            "signature": info.signature,
            "parameters": info.parameters,
            "weight_bytes": info.weight_bytes,
            "activation_bytes_estimate_batch1": info.activation_bytes_estimate,
            "memory_estimate_batch1": memory_total,
            "op_histogram": info.op_histogram,
            "metadata": info.metadata,
            "backends": runnable,
            "ane_precheck": ane,
            "placement": placement,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("model:       {}", args.model.display());
    println!(
        "format:      {} (inspected by {inspected_by})",
        artifact.format
    );
    for (k, v) in &info.metadata {
        println!("  {k}: {v}");
    }
    println!("inputs:");
    for s in &info.signature.inputs {
        println!("  {:<24} {:<6} {}", s.name, s.dtype.kserve_name(), s.shape);
    }
    println!("outputs:");
    for s in &info.signature.outputs {
        println!("  {:<24} {:<6} {}", s.name, s.dtype.kserve_name(), s.shape);
    }
    println!(
        "parameters:  {} ({:.2} M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    println!(
        "weights:     {} bytes ({:.2} MiB)",
        info.weight_bytes,
        mib(info.weight_bytes)
    );
    println!(
        "memory:      ~{:.2} MiB at batch 1 (weights + {:.2} MiB activations, estimated)",
        mib(memory_total),
        mib(info.activation_bytes_estimate)
    );
    if !info.op_histogram.is_empty() {
        let mut ops: Vec<(&String, &usize)> = info.op_histogram.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = ops.iter().map(|(k, v)| format!("{k}×{v}")).collect();
        println!("operators:   {}", shown.join(" "));
    }
    if !ane.is_empty() {
        println!("neural engine pre-check:");
        for f in &ane {
            println!("  {f}");
        }
    }
    if let Some(p) = &placement {
        println!("placement (Core ML compute plan):");
        println!("{p}");
    }
    println!("backends:");
    for r in &runnable {
        let name = r["backend"].as_str().unwrap_or("?");
        if r["runs"].as_bool() == Some(true) {
            println!("  {name:<8} runs it (loaded in {} ms)", r["load_ms"]);
        } else {
            println!(
                "  {name:<8} cannot run it: {}",
                r["reason"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pomme inspect --plan`: the load-time trials of measured routing
/// (`pomme_runtime::plan`, the code `pomme serve` runs for a model
/// with `routing` set), printed as a table or JSON.
fn plan(args: &InspectArgs, settings: &Settings) -> Result<ExitCode> {
    let mut cfg = RoutingConfig {
        timed_runs: args.runs,
        ..Default::default()
    };
    if args.runs == 0 {
        return Err(usage("--runs must be at least 1"));
    }
    for (flag, v) in [("--atol", args.atol), ("--rtol", args.rtol)] {
        if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
            return Err(usage(format!("{flag} must be a number ≥ 0")));
        }
    }
    cfg.tolerance.abs = args.atol.unwrap_or(cfg.tolerance.abs);
    cfg.tolerance.rel = args.rtol.unwrap_or(cfg.tolerance.rel);
    cfg.candidates = if args.candidates.is_empty() {
        crate::cli::automatic_candidates()
    } else {
        parse_candidates(&args.candidates, DeviceKind::Cpu)
            .map_err(|e| usage(format!("--candidates: {}", e.message())))?
    };
    let artifact = pomme_runtime::detect_artifact(&args.model)?;
    let backends = pomme_backends::compiled_with(&settings.backends);
    // Loading and timing every candidate takes seconds on a big model.
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:20}] {pos}/{len}").expect("valid template"),
    );
    let decision = pomme_runtime::plan(
        &backends,
        &artifact,
        &LoadOptions::default(),
        &[],
        &cfg,
        &mut |i, n, c| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
            bar.set_message(format!("trying {c}"));
        },
    );
    bar.finish_and_clear();
    let d = decision?;
    if args.json {
        let rows = d
            .rows()
            .into_iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = pomme_server::routing::decision_json(&d, rows);
        out["model"] = serde_json::json!(args.model);
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_plan(args, &d);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_plan(args: &InspectArgs, d: &RoutingDecision) {
    let shapes: Vec<String> = d.input_shapes.iter().map(|s| format!("{s:?}")).collect();
    println!("model:      {}", args.model.display());
    println!(
        "inputs:     {} (synthetic, the same for every candidate)",
        shapes.join(", ")
    );
    match &d.reference {
        Some(r) => println!(
            "reference:  {r} (agrees: |got - ref| <= {} + {}·|ref| everywhere; {} + {}·|ref| for float16 engines)",
            d.tolerance.abs, d.tolerance.rel, d.tolerance_f16.abs, d.tolerance_f16.rel
        ),
        None => println!("reference:  none (no CPU candidate ran: timed, not validated)"),
    }
    println!();
    println!(
        "{:<14} {:<10} {:<22} {:>10}  chosen",
        "candidate", "available", "agrees (max abs err)", "median ms"
    );
    let rows = d.rows();
    for r in &rows {
        let agrees = match (r.reference, r.agrees, r.max_abs_diff) {
            (true, _, _) => "reference".to_string(),
            (_, Some(a), Some(m)) => format!("{} ({m:.1e})", if a { "yes" } else { "no" }),
            (_, Some(a), None) => (if a { "yes" } else { "no" }).to_string(),
            (_, None, _) => "-".to_string(),
        };
        let median = r
            .median_ms
            .map(|m| format!("{m:.3}"))
            .unwrap_or_else(|| "-".into());
        let chosen = match r.rank {
            Some(0) => "yes".to_string(),
            Some(n) => format!("fallback {n}"),
            None => "no".to_string(),
        };
        println!(
            "{:<14} {:<10} {:<22} {:>10}  {chosen}",
            r.candidate,
            if r.available { "yes" } else { "no" },
            agrees,
            median
        );
    }
    println!();
    println!("chosen:     {}", d.summary());
    let notes: Vec<_> = rows.iter().filter(|r| !r.note.is_empty()).collect();
    if !notes.is_empty() {
        println!("notes:");
        for r in notes {
            println!("  {}: {}", r.candidate, r.note);
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
