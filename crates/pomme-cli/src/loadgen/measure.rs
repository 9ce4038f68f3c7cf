//! One measured row: `conc` client tasks send the prepared request back to
//! back (or paced to `--rate`) through warm-up and the measurement window,
//! each counting its outcomes and recording latencies in its own HDR
//! histogram; the counts and histograms are merged at the end. Every request
//! sent is awaited, so `sent == ok + rejected + timed_out + errors`.

use super::client::Client;
use super::{LoadConfig, LoadRow, Outcome, Prepared, Target};
use anyhow::{Context, Result, anyhow};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What one client task counted.
struct TaskCounts {
    sent: u64,
    ok: u64,
    rejected: u64,
    timed_out: u64,
    errors: u64,
    first_error: Option<String>,
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    // 1 µs to 10 min at 3 significant digits; values above are clamped.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Runs `conc` clients for warm-up + duration and counts what the
/// measurement window saw.
pub(super) async fn measure(
    target: &Target,
    prepared: Arc<Prepared>,
    conc: usize,
    cfg: &LoadConfig,
    label: &str,
) -> Result<LoadRow> {
    // Connect every client first so connection set-up is not measured.
    let mut clients = Vec::with_capacity(conc);
    for _ in 0..conc {
        clients.push(Client::connect(target).await?);
    }
    let pb = ProgressBar::new(cfg.duration.as_millis() as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {elapsed} ok {prefix}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_message(label.to_string());
    let ok_so_far = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    // Paced: each client owns every conc-th slot of the schedule, offset so
    // the clients interleave evenly.
    let interval = cfg.rate.map(|r| Duration::from_secs_f64(conc as f64 / r));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let prepared = prepared.clone();
            let ok_so_far = ok_so_far.clone();
            let request_timeout = cfg.request_timeout;
            let mut next_at = interval.map(|iv| start + iv.mul_f64(i as f64 / conc as f64));
            tokio::spawn(async move {
                let mut c = TaskCounts {
                    sent: 0,
                    ok: 0,
                    rejected: 0,
                    timed_out: 0,
                    errors: 0,
                    first_error: None,
                    hist: new_hist(),
                };
                loop {
                    if let (Some(at), Some(iv)) = (next_at.as_mut(), interval) {
                        if *at >= end {
                            break;
                        }
                        tokio::time::sleep_until((*at).into()).await;
                        // A client that fell behind (slow answers) resumes the
                        // schedule from now rather than bursting to catch up.
                        *at = (*at + iv).max(Instant::now());
                    }
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    let outcome =
                        match tokio::time::timeout(request_timeout, client.call(&prepared)).await {
                            Ok(o) => o,
                            Err(_) => {
                                client.abandon();
                                Outcome::TimedOut
                            }
                        };
                    // Warm-up requests are sent but never counted.
                    if t < measure_from {
                        continue;
                    }
                    c.sent += 1;
                    match outcome {
                        Outcome::Ok => {
                            c.ok += 1;
                            ok_so_far.fetch_add(1, Ordering::Relaxed);
                            let us = t.elapsed().as_micros().max(1) as u64;
                            c.hist.saturating_record(us);
                        }
                        Outcome::Rejected => c.rejected += 1,
                        Outcome::TimedOut => c.timed_out += 1,
                        Outcome::Error(e) => {
                            c.errors += 1;
                            c.first_error.get_or_insert(e);
                        }
                    }
                }
                c
            })
        })
        .collect();
    let ticker = {
        let pb = pb.clone();
        let ok_so_far = ok_so_far.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = Instant::now();
                pb.set_position(now.saturating_duration_since(measure_from).as_millis() as u64);
                pb.set_prefix(ok_so_far.load(Ordering::Relaxed).to_string());
            }
        })
    };
    let mut total = TaskCounts {
        sent: 0,
        ok: 0,
        rejected: 0,
        timed_out: 0,
        errors: 0,
        first_error: None,
        hist: new_hist(),
    };
    for t in tasks {
        let c = t.await.context("a load generator task failed")?;
        total.sent += c.sent;
        total.ok += c.ok;
        total.rejected += c.rejected;
        total.timed_out += c.timed_out;
        total.errors += c.errors;
        if total.first_error.is_none() {
            total.first_error = c.first_error;
        }
        total
            .hist
            .add(&c.hist)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
    }
    // The window closes when the last in-flight request has come back.
    let window = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .max(1e-9);
    ticker.abort();
    pb.finish_and_clear();
    let ms = |q: f64| {
        if total.hist.is_empty() {
            0.0
        } else {
            total.hist.value_at_quantile(q) as f64 / 1e3
        }
    };
    Ok(LoadRow {
        concurrency: conc,
        batch: 0,
        sent: total.sent,
        ok: total.ok,
        rejected: total.rejected,
        timed_out: total.timed_out,
        errors: total.errors,
        rps: total.ok as f64 / window,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: if total.hist.is_empty() {
            0.0
        } else {
            total.hist.max() as f64 / 1e3
        },
        first_error: total.first_error,
    })
}
