//! Compute workers: dedicated OS threads, each owning one backend session.
//!
//! Engines block and spin CPU; running them on tokio's workers would stall I/O,
//! so each worker is a plain thread that takes batches from the model's queue,
//! concatenates inputs (into pooled buffers), runs the engine, splits outputs
//! and answers every request. A panic inside the engine becomes an `Internal`
//! error for that batch and the session is rebuilt; the thread carries on.

use crate::metrics::ModelMetrics;
use crate::pool::BufferPool;
use crate::scheduler::{ModelQueue, Pending};
use crate::stats::ModelCounters;
use pomme_core::{Error, LoadedModel, Result, Session, Tensor};
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

/// Starts one worker thread with its own session. With a `warmup` sample the
/// thread first runs it at every padded size (see [`warm`]) and then signals
/// `warmed`, before taking any batch.
pub fn spawn(
    ctx: Arc<WorkerContext>,
    session: Box<dyn Session>,
    index: usize,
    warmup: Option<(Arc<Vec<Tensor>>, std::sync::mpsc::Sender<()>)>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("pomme-{}-v{}-w{}", ctx.name, ctx.version, index))
        .spawn(move || run_loop(ctx, session, warmup))
}

fn run_loop(
    ctx: Arc<WorkerContext>,
    mut session: Box<dyn Session>,
    warmup: Option<(Arc<Vec<Tensor>>, std::sync::mpsc::Sender<()>)>,
) {
    // On this thread, not the loader's: engines may keep per-thread state
    // (ONNX Runtime's CUDA EP keeps cuDNN/cuBLAS handles per thread).
    if let Some((sample, warmed)) = warmup {
        if let Err(e) = warm(&mut *session, &sample, &ctx.pad_sizes) {
            // Warming is a head start, not a requirement: the first batch
            // of each size pays instead.
            tracing::warn!(model = %ctx.name, error = %e, "warming the padded batch sizes failed");
        }
        let _ = warmed.send(());
    }
    while let Some(batch) = ctx.queue.next_batch() {
        if let Some(fresh) = execute(&ctx, &mut *session, batch) {
            session = fresh;
        }
    }
    tracing::debug!(model = %ctx.name, version = ctx.version, "worker stopped");
}

/// Runs one batch and answers its requests. Returns a new session when the old
/// one panicked.
fn execute(
    ctx: &WorkerContext,
    session: &mut dyn Session,
    batch: Vec<Pending>,
) -> Option<Box<dyn Session>> {
    let started = Instant::now();
    for p in &batch {
        let waited = started.duration_since(p.enqueued);
        ctx.counters.queue.add(waited);
        ctx.metrics.queue_duration.observe(waited.as_secs_f64());
    }
    let rows: Vec<usize> = batch.iter().map(|p| p.rows).collect();
    let total_rows: usize = rows.iter().sum();
    let span = batch[0].span.clone();
    let _enter = span.enter();

    // Padded up to the next preferred size when configured (rows beyond
    // `total_rows` are copies of the last one; their outputs are dropped).
    let run_rows = ctx
        .pad_sizes
        .iter()
        .copied()
        .find(|&s| s >= total_rows)
        .unwrap_or(total_rows);
    let inputs = match gather_inputs(ctx, &batch).and_then(|i| {
        if run_rows == total_rows {
            return Ok(i);
        }
        i.iter().map(|t| pad_rows(t, run_rows)).collect()
    }) {
        Ok(i) => i,
        Err(e) => {
            fail_all(batch, e);
            return None;
        }
    };
    let prepared = Instant::now();
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| session.run(inputs)));
    let ran = Instant::now();
    let (result, fresh) = match outcome {
        Ok(r) => (r, None),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(model = %ctx.name, panic = %msg, "backend panicked; rebuilding its session");
            let fresh = ctx.model.session().ok();
            (
                Err(Error::Internal(format!("backend panicked: {msg}"))),
                fresh,
            )
        }
    };
    let n = batch.len();
    let checked = result
        .and_then(|outs| check_outputs(ctx, outs, run_rows))
        .and_then(|outs| {
            if run_rows == total_rows {
                return Ok(outs);
            }
            outs.iter().map(|t| t.slice_rows(0, total_rows)).collect()
        });
    match checked {
        Ok(outputs) => {
            ctx.counters.executed(total_rows);
            ctx.metrics.executions.inc();
            ctx.metrics.inferences.inc_by(total_rows as u64);
            ctx.metrics.batch_size.observe(total_rows as f64);
            if n == 1 {
                let p = batch.into_iter().next().expect("one request");
                p.answer(Ok(outputs));
            } else {
                match split_outputs(&outputs, &rows) {
                    Ok(per_request) => {
                        for (p, outs) in batch.into_iter().zip(per_request) {
                            p.answer(Ok(outs));
                        }
                    }
                    Err(e) => fail_all(batch, e),
                }
            }
        }
        Err(e) => {
            tracing::warn!(model = %ctx.name, error = %e, requests = n, "batch failed");
            fail_all(batch, e);
        }
    }
    let done = Instant::now();
    let (ti, tr, to) = (prepared - started, ran - prepared, done - ran);
    tracing::debug!(
        model = %ctx.name,
        requests = n,
        rows = total_rows,
        run_rows,
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

fn check_outputs(ctx: &WorkerContext, outputs: Vec<Tensor>, rows: usize) -> Result<Vec<Tensor>> {
    let sig = ctx.model.signature();
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
            .zip(&outputs)
            .find(|(_, t)| t.shape().first() != Some(&rows))
    {
        return Err(Error::InferenceFailed(format!(
            "output '{}' has shape {:?}, expected {} rows",
            spec.name,
            t.shape(),
            rows
        )));
    }
    Ok(outputs)
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
