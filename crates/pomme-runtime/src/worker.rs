//! Compute workers: dedicated OS threads, each owning one backend session.
//!
//! Engines block and spin CPU; running them on tokio's workers would stall I/O,
//! so each worker is a plain thread that takes batches from the model's queue,
//! concatenates inputs (into pooled buffers), runs the engine, splits outputs
//! and answers every request; a request that is part of a sequence runs
//! alone, unpadded, through `Session::run_sequence`. A panic inside the
//! engine becomes an `Internal` error for that batch and the session is
//! rebuilt; the thread carries on.

use crate::metrics::ModelMetrics;
use crate::pool::BufferPool;
use crate::scheduler::{ModelQueue, Pending};
use crate::stats::ModelCounters;
use pomme_core::{Error, LoadedModel, ModelSignature, Result, Session, Tensor};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// What a worker shares with the runtime about its model.
pub struct WorkerContext {
    pub name: String,
    pub version: u64,
    pub model: Arc<dyn LoadedModel>,
    pub queue: Arc<ModelQueue>,
    pub counters: Arc<ModelCounters>,
    pub metrics: ModelMetrics,
    pub pool: Arc<BufferPool>,
    /// Batch sizes every run is padded up to (ascending; empty: no padding).
    pub pad_sizes: Vec<usize>,
}

/// The sizes batches are padded to: the preferred sizes up to `max_batch`,
/// plus `max_batch` itself so every batch has one; empty when padding is off.
pub fn pad_sizes(preferred: &[usize], max_batch: usize, on: bool) -> Vec<usize> {
    if !on || max_batch <= 1 {
        return Vec::new();
    }
    let mut sizes: Vec<usize> = preferred
        .iter()
        .copied()
        .filter(|&s| s >= 1 && s <= max_batch)
        .chain([max_batch])
        .collect();
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Runs `session` once at every size of `sizes` on `sample` (one row per
/// input) so the engine prepares those shapes before the first request.
pub fn warm(session: &mut dyn Session, sample: &[Tensor], sizes: &[usize]) -> Result<()> {
    for &n in sizes {
        let inputs = sample
            .iter()
            .map(|t| pad_rows(t, n))
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        session.run(inputs)?;
        tracing::info!(
            batch = n,
            ms = started.elapsed().as_millis() as u64,
            "warmed batch size"
        );
    }
    Ok(())
}

/// `t` grown to `rows` rows by repeating its last row.
fn pad_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    let have = t.shape().first().copied().unwrap_or(0);
    if have == 0 || rows <= have {
        return Ok(t.clone());
    }
    let last = t.slice_rows(have - 1, have)?;
    let mut parts: Vec<&Tensor> = Vec::with_capacity(1 + rows - have);
    parts.push(t);
    parts.extend(std::iter::repeat_n(&last, rows - have));
    Tensor::concat_rows(&parts)
}

/// What a worker runs before it takes its first batch.
pub struct WarmupPlan {
    /// Synthetic rows run at every padded size: a head start, so a failure
    /// only warns (the first batch of that size pays instead).
    pub padded: Option<Arc<Vec<Tensor>>>,
    /// Configured samples (name, runs, inputs): a failure fails the load.
    pub configured: Arc<Vec<(String, usize, Vec<Tensor>)>>,
    /// Told once the worker is warm, or why it could not be.
    pub done: std::sync::mpsc::Sender<std::result::Result<(), String>>,
}

/// Starts one worker thread with its own session; with a `warmup` plan the
/// thread runs it (see [`WarmupPlan`]) and reports before taking any batch.
pub fn spawn(
    ctx: Arc<WorkerContext>,
    session: Box<dyn Session>,
    index: usize,
    warmup: Option<WarmupPlan>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("pomme-{}-v{}-w{}", ctx.name, ctx.version, index))
        .spawn(move || run_loop(ctx, session, index, warmup))
}

fn run_loop(
    ctx: Arc<WorkerContext>,
    mut session: Box<dyn Session>,
    index: usize,
    warmup: Option<WarmupPlan>,
) {
    // On this thread, not the loader's: engines may keep per-thread state
    // (ONNX Runtime's CUDA EP keeps cuDNN/cuBLAS handles per thread).
    if let Some(plan) = warmup {
        if let Some(sample) = &plan.padded {
            let warming = std::panic::catch_unwind(AssertUnwindSafe(|| {
                warm(&mut *session, sample, &ctx.pad_sizes)
            }));
            match warming {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(model = %ctx.name, error = %e, "warming the padded batch sizes failed")
                }
                Err(panic) => {
                    let msg = pomme_core::panic_message(&*panic);
                    tracing::warn!(model = %ctx.name, panic = %msg, "warming panicked; rebuilding the session");
                    if let Ok(fresh) = ctx.model.session() {
                        session = fresh;
                    }
                }
            }
        }
        let outcome = run_configured(&mut *session, &plan.configured)
            .map_err(|e| format!("{e} (worker {index})"));
        // After a failure the loader closes the queue, which ends this thread.
        let _ = plan.done.send(outcome);
    }
    while let Some(batch) = ctx.queue.next_batch() {
        if let Some(fresh) = execute(&ctx, &mut *session, batch) {
            session = fresh;
        }
    }
    tracing::debug!(model = %ctx.name, version = ctx.version, "worker stopped");
}

/// Runs each configured warm-up sample its number of times.
fn run_configured(
    session: &mut dyn Session,
    samples: &[(String, usize, Vec<Tensor>)],
) -> std::result::Result<(), String> {
    for (name, count, inputs) in samples {
        for _ in 0..(*count).max(1) {
            let ran = std::panic::catch_unwind(AssertUnwindSafe(|| session.run(inputs.clone())));
            match ran {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("model_warmup '{name}' failed: {e}")),
                Err(panic) => {
                    return Err(format!(
                        "model_warmup '{name}' panicked: {}",
                        pomme_core::panic_message(&*panic)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// When a batch's inputs were ready and when the engine returned.
#[derive(Default)]
struct Marks {
    prepared: Option<Instant>,
    ran: Option<Instant>,
}

/// Runs one batch and answers its requests. Everything between taking the
/// batch and answering it runs inside the panic guard: a panic, in the engine
/// or in this crate's own code, fails this batch with `Internal`, the session
/// is rebuilt and the thread carries on. Returns the new session then.
fn execute(
    ctx: &WorkerContext,
    session: &mut dyn Session,
    mut batch: Vec<Pending>,
) -> Option<Box<dyn Session>> {
    let started = Instant::now();
    let n = batch.len();
    for p in &mut batch {
        let waited = started.duration_since(p.enqueued);
        ctx.counters.queue.add(waited);
        ctx.metrics.queue_duration.observe(waited.as_secs_f64());
        // Ends the request's queue span, with the size of the batch it joined.
        std::mem::replace(&mut p.queue, tracing::Span::none()).record("batch_size", n);
    }
    let parent = batch
        .first()
        .map(|p| p.span.clone())
        .unwrap_or_else(tracing::Span::none);
    // The batch runs in the first request's trace; a debug span, so free
    // unless tracing (or debug logging) is on.
    let span = tracing::debug_span!(
        parent: &parent,
        "batch",
        model = %ctx.name,
        batch_size = n,
        rows = tracing::field::Empty,
    );
    let _enter = span.enter();
    let mut marks = Marks::default();
    let mut in_engine = false;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        run_batch(ctx, session, &batch, &mut marks, &mut in_engine)
    }));
    let (result, fresh) = match outcome {
        Ok(r) => (r, None),
        Err(panic) => {
            let msg = pomme_core::panic_message(&*panic);
            let who = if in_engine { "backend" } else { "worker" };
            tracing::error!(model = %ctx.name, panic = %msg, "{who} panicked; rebuilding the session");
            (
                Err(Error::Internal(format!("{who} panicked: {msg}"))),
                ctx.model.session().ok(),
            )
        }
    };
    let total_rows: usize = batch.iter().map(|p| p.rows).sum();
    span.record("rows", total_rows);
    match result {
        Ok(per_request) => {
            for (p, outs) in batch.into_iter().zip(per_request) {
                p.answer(Ok(outs));
            }
        }
        Err(e) => {
            tracing::warn!(model = %ctx.name, error = %e, requests = n, "batch failed");
            fail_all(batch, e);
        }
    }
    let done = Instant::now();
    let prepared = marks.prepared.unwrap_or(done);
    let ran = marks.ran.unwrap_or(done);
    let (ti, tr, to) = (
        prepared.saturating_duration_since(started),
        ran.saturating_duration_since(prepared),
        done.saturating_duration_since(ran),
    );
    tracing::debug!(
        model = %ctx.name,
        requests = n,
        rows = total_rows,
        input_us = ti.as_micros() as u64,
        infer_us = tr.as_micros() as u64,
        output_us = to.as_micros() as u64,
        "executed batch"
    );
    ctx.counters.compute_input.add_n(n as u64, ti);
    ctx.counters.compute_infer.add_n(n as u64, tr);
    ctx.counters.compute_output.add_n(n as u64, to);
    ctx.metrics.compute_input.observe(ti.as_secs_f64());
    ctx.metrics.compute_infer.observe(tr.as_secs_f64());
    ctx.metrics.compute_output.observe(to.as_secs_f64());
    fresh
}

/// Gathers (and pads) the batch's inputs, runs the engine, checks its
/// outputs and splits them per request, counting the execution.
fn run_batch(
    ctx: &WorkerContext,
    session: &mut dyn Session,
    batch: &[Pending],
    marks: &mut Marks,
    in_engine: &mut bool,
) -> Result<Vec<Vec<Tensor>>> {
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total_rows: usize = rows.iter().sum();
    // The batcher sends a sequence request alone.
    let sequence = match batch {
        [one] => one.sequence.as_ref(),
        _ => None,
    };
    // Padded up to the next preferred size when configured (rows beyond
    // `total_rows` are copies of the last one; their outputs are dropped).
    // Never a sequence request: the padding rows would feed its state.
    let run_rows = match sequence {
        Some(_) => total_rows,
        None => ctx
            .pad_sizes
            .iter()
            .copied()
            .find(|&s| s >= total_rows)
            .unwrap_or(total_rows),
    };
    let mut inputs = gather_inputs(ctx, batch)?;
    if run_rows != total_rows {
        inputs = inputs
            .iter()
            .map(|t| pad_rows(t, run_rows))
            .collect::<Result<_>>()?;
    }
    marks.prepared = Some(Instant::now());
    *in_engine = true;
    let result = tracing::debug_span!("compute", rows = run_rows).in_scope(|| match sequence {
        Some(seq) => session.run_sequence(inputs, seq),
        None => session.run(inputs),
    });
    *in_engine = false;
    marks.ran = Some(Instant::now());
    let mut outputs = result?;
    check_outputs(ctx.model.signature(), &outputs, run_rows)?;
    if run_rows != total_rows {
        outputs = outputs
            .iter()
            .map(|t| t.slice_rows(0, total_rows))
            .collect::<Result<_>>()?;
    }
    let per_request = if batch.len() == 1 {
        vec![outputs]
    } else {
        split_outputs(&outputs, &rows)?
    };
    ctx.counters.executed(total_rows);
    ctx.metrics.executions.inc();
    ctx.metrics.inferences.inc_by(total_rows as u64);
    ctx.metrics.batch_size.observe(total_rows as f64);
    Ok(per_request)
}

fn gather_inputs(ctx: &WorkerContext, batch: &[Pending]) -> Result<Vec<Tensor>> {
    if batch.len() == 1 {
        return Ok(batch[0].inputs.clone());
    }
    let n_inputs = batch[0].inputs.len();
    (0..n_inputs)
        .map(|i| {
            let parts: Vec<&Tensor> = batch.iter().map(|p| &p.inputs[i]).collect();
            concat_pooled(&ctx.pool, &parts)
        })
        .collect()
}

/// Like [`Tensor::concat_rows`], but into a pooled buffer.
fn concat_pooled(pool: &Arc<BufferPool>, parts: &[&Tensor]) -> Result<Tensor> {
    let first = parts[0];
    if first.raw().is_none() {
        return Tensor::concat_rows(parts);
    }
    let total: usize = parts.iter().map(|p| p.byte_len()).sum();
    let mut shape = first.shape().to_vec();
    shape[0] = parts.iter().map(|p| p.shape()[0]).sum();
    let bytes = pool.build(total, |out| {
        let mut at = 0;
        for p in parts {
            let raw = p.raw().expect("same dtype as the first");
            out[at..at + raw.len()].copy_from_slice(raw);
            at += raw.len();
        }
    });
    Tensor::from_raw(first.dtype(), shape, bytes)
}

/// Checks an engine's outputs against the signature: as many as it declares
/// and, for a batchable model, `rows` rows each. The worker and each routed
/// candidate call it, so a wrong answer fails the same way everywhere.
pub(crate) fn check_outputs(sig: &ModelSignature, outputs: &[Tensor], rows: usize) -> Result<()> {
    if outputs.len() != sig.outputs.len() {
        return Err(Error::InferenceFailed(format!(
            "backend returned {} outputs, the model declares {}",
            outputs.len(),
            sig.outputs.len()
        )));
    }
    if sig.is_batchable()
        && let Some((spec, t)) = sig
            .outputs
            .iter()
            .zip(outputs)
            .find(|(_, t)| t.shape().first() != Some(&rows))
    {
        return Err(Error::InferenceFailed(format!(
            "output '{}' has shape {:?}, expected {} rows",
            spec.name,
            t.shape(),
            rows
        )));
    }
    Ok(())
}

fn split_outputs(outputs: &[Tensor], rows: &[usize]) -> Result<Vec<Vec<Tensor>>> {
    let mut per_request: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for out in outputs {
        for (slot, part) in per_request.iter_mut().zip(out.split_rows(rows)?) {
            slot.push(part);
        }
    }
    Ok(per_request)
}

fn fail_all(batch: Vec<Pending>, e: Error) {
    for p in batch {
        p.answer(Err(e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_sizes_are_the_preferred_ones_up_to_the_max_plus_the_max() {
        assert_eq!(pad_sizes(&[16, 4, 1, 64], 32, true), vec![1, 4, 16, 32]);
        assert_eq!(pad_sizes(&[8], 8, true), vec![8]);
        assert!(pad_sizes(&[4], 8, false).is_empty());
        assert!(pad_sizes(&[4], 1, true).is_empty());
    }

    #[test]
    fn pad_rows_repeats_the_last_row() {
        let t = Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let p = pad_rows(&t, 4).unwrap();
        assert_eq!(p.shape(), &[4, 2]);
        assert_eq!(
            p.to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 3.0, 4.0]
        );
        assert_eq!(pad_rows(&t, 2).unwrap().shape(), &[2, 2]);
    }
}
