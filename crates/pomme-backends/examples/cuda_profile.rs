//! Per-node profile of a model on tract's CUDA runtime: where the time goes.
//!
//! Builds the plan the way tract-cuda's runtime does (`CudaTransform`, then
//! `optimize`), runs it once to warm up, then runs it `REPEATS` times with the
//! CUDA stream synchronised after every node, so each node's wall time covers
//! its kernels. Prints time per op type and the slowest nodes, and marks op
//! types that are not CUDA ops (left on the CPU). Synchronising per node adds a
//! little to every node: the figures rank costs, they are not latency claims.
//!
//! ```text
//! cargo run --release -p pomme-backends --features cuda --example cuda_profile -- MODEL.onnx BATCH [SEQ]
//! ```
//! Symbols `batch` and `seq` (when the model has them) take BATCH and SEQ
//! (default 128); f32 inputs are filled with 0.5, integer inputs with 1.

#[cfg(all(feature = "cuda", target_os = "linux"))]
fn main() -> pomme_tract::tract_core::prelude::TractResult<()> {
    use pomme_tract::tract_core::internal::*;
    use pomme_tract::tract_core::plan::{SimplePlan, SimpleState};
    use pomme_tract::tract_core::transform::ModelTransform;
    use pomme_tract::tract_onnx::prelude::InferenceModelExt;
    use std::collections::BTreeMap;
    use std::time::Instant;

    const REPEATS: usize = 20;
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: cuda_profile MODEL.onnx BATCH [SEQ]");
        std::process::exit(2);
    };
    let batch: i64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let seq: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);

    let typed = pomme_tract::tract_onnx::onnx()
        .model_for_path(path)?
        .into_typed()?;
    let mut subs: std::collections::HashMap<Symbol, TDim> = Default::default();
    for (name, v) in [("batch", batch), ("seq", seq)] {
        if let Some(s) = typed.symbols.get(name) {
            subs.insert(s, TDim::Val(v));
        }
    }
    let mut model = typed.set_symbols(&subs)?.into_decluttered()?;
    pomme_tract::tract_cuda::CudaTransform.transform(&mut model)?;
    model.optimize()?;
    let options = RunOptions {
        skip_order_opt_ram: true,
        ..RunOptions::default()
    };
    let plan = Arc::new(SimplePlan::build(model, &options)?);
    let mut inputs: TVec<TValue> = tvec![];
    for o in plan.model().input_outlets()? {
        let fact = plan.model().outlet_fact(*o)?;
        let shape: Vec<usize> = fact
            .shape
            .as_concrete()
            .ok_or_else(|| format_err!("input shape not concrete: {fact:?}"))?
            .to_vec();
        let t = if fact.datum_type == f32::datum_type() {
            tract_ndarray::ArrayD::<f32>::from_elem(shape, 0.5).into_tensor()
        } else {
            tract_ndarray::ArrayD::<i64>::from_elem(shape, 1)
                .into_tensor()
                .cast_to_dt(fact.datum_type)?
                .into_owned()
        };
        inputs.push(t.into_tvalue());
    }
    let sync = || pomme_tract::tract_cuda::with_cuda_stream(|s| Ok(s.synchronize()?));

    let mut state = SimpleState::new(&plan)?;
    state.run(inputs.clone())?;
    sync()?;

    let mut per_node: BTreeMap<usize, (String, String, f64)> = BTreeMap::new();
    let mut total_wall = 0.0;
    for _ in 0..REPEATS {
        let t0 = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, input| {
            let t = Instant::now();
            let out = pomme_tract::tract_core::plan::eval(ctx, st, node, input);
            sync()?;
            let e = per_node
                .entry(node.id)
                .or_insert_with(|| (node.name.clone(), node.op().name().to_string(), 0.0));
            e.2 += t.elapsed().as_secs_f64() * 1e3;
            out
        })?;
        sync()?;
        total_wall += t0.elapsed().as_secs_f64() * 1e3;
    }
    let n = REPEATS as f64;
    let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for (_, op, ms) in per_node.values() {
        let e = by_op.entry(op.clone()).or_default();
        e.0 += 1;
        e.1 += ms / n;
    }
    let sum: f64 = by_op.values().map(|v| v.1).sum();
    println!(
        "{path} batch {batch}: {:.3} ms per run with a sync after each node ({} nodes)",
        total_wall / n,
        per_node.len()
    );
    let mut ops: Vec<_> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    println!("{:<40}{:>7}{:>11}{:>8}", "op", "nodes", "ms", "%");
    for (op, (count, ms)) in ops {
        let gpu = op.starts_with("Cuda") || op.starts_with("Gpu") || op.starts_with("Device");
        println!(
            "{:<40}{:>7}{:>11.3}{:>7.1}%{}",
            op,
            count,
            ms,
            100.0 * ms / sum,
            if gpu { "" } else { "  (not a CUDA op)" }
        );
    }
    let mut nodes: Vec<_> = per_node.values().collect();
    nodes.sort_by(|a, b| b.2.total_cmp(&a.2));
    println!("slowest nodes:");
    for (name, op, ms) in nodes.into_iter().take(12) {
        println!("  {:>9.3} ms  {op:<28} {name}", ms / n);
    }
    Ok(())
}

#[cfg(not(all(feature = "cuda", target_os = "linux")))]
fn main() {
    eprintln!("cuda_profile needs Linux and pomme-backends' `cuda` feature");
    std::process::exit(2);
}
