//! Statistics: per-model counters (Triton's statistics extension), the
//! runtime-wide totals behind [`PerformanceSummary`], an EWMA and an HDR
//! latency histogram for callers that measure (`pomme bench`). Everything a
//! request updates is a relaxed atomic add: no lock on the request path.

use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Exponentially weighted moving average of a sampled value.
#[derive(Clone, Copy, Debug)]
pub struct Ewma {
    alpha: f64,
    value: Option<f64>,
}

impl Ewma {
    /// `alpha` in (0, 1]: the weight of each new sample.
    pub fn new(alpha: f64) -> Ewma {
        Ewma {
            alpha: alpha.clamp(f64::MIN_POSITIVE, 1.0),
            value: None,
        }
    }

    /// Adds a sample.
    #[inline]
    pub fn update(&mut self, sample: f64) {
        self.value = Some(match self.value {
            None => sample,
            Some(v) => v + self.alpha * (sample - v),
        });
    }

    /// Current average, if any sample was seen.
    pub fn value(&self) -> Option<f64> {
        self.value
    }
}

/// A thread-safe latency histogram in microseconds (1 µs .. 1 h, 3 significant digits).
#[derive(Debug)]
pub struct LatencyHistogram {
    hist: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            hist: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("valid bounds"),
            ),
        }
    }
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.hist.lock().record(us);
    }

    /// The `q` quantile (0..=1) in microseconds, 0 if empty.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.hist.lock().value_at_quantile(q)
    }

    /// Mean in microseconds.
    pub fn mean_us(&self) -> f64 {
        self.hist.lock().mean()
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.lock().len()
    }
}

/// A count and a total duration, as Triton's statistics report them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

/// Per-model counters updated on the hot path without locks.
#[derive(Debug, Default)]
pub struct ModelCounters {
    pub(crate) success: DurationCounter,
    pub(crate) fail: DurationCounter,
    pub(crate) queue: DurationCounter,
    pub(crate) compute_input: DurationCounter,
    pub(crate) compute_infer: DurationCounter,
    pub(crate) compute_output: DurationCounter,
    pub(crate) cache_hit: DurationCounter,
    pub(crate) cache_miss: DurationCounter,
    pub(crate) inference_count: AtomicU64,
    pub(crate) execution_count: AtomicU64,
    pub(crate) last_inference_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct DurationCounter {
    count: AtomicU64,
    ns: AtomicU64,
}

impl DurationCounter {
    #[inline]
    pub(crate) fn add(&self, d: Duration) {
        self.add_n(1, d);
    }

    #[inline]
    pub(crate) fn add_n(&self, n: u64, d: Duration) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    fn get(&self) -> StatDuration {
        StatDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

impl ModelCounters {
    pub(crate) fn executed(&self, rows: usize) {
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.last_inference_ms.store(now, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, name: &str, version: u64) -> ModelStats {
        ModelStats {
            name: name.to_string(),
            version,
            last_inference_ms: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            success: self.success.get(),
            fail: self.fail.get(),
            queue: self.queue.get(),
            compute_input: self.compute_input.get(),
            compute_infer: self.compute_infer.get(),
            compute_output: self.compute_output.get(),
            cache_hit: self.cache_hit.get(),
            cache_miss: self.cache_miss.get(),
        }
    }
}

/// Statistics of one model version (Triton's `ModelStatistics`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ModelStats {
    pub name: String,
    pub version: u64,
    /// Unix time of the last execution, in milliseconds.
    pub last_inference_ms: u64,
    /// Rows inferred (a batch of 8 counts 8).
    pub inference_count: u64,
    /// Engine executions (a batch of 8 counts 1).
    pub execution_count: u64,
    /// Requests that succeeded, and their total end-to-end time.
    pub success: StatDuration,
    /// Requests that failed.
    pub fail: StatDuration,
    /// Time spent queued.
    pub queue: StatDuration,
    /// Time preparing inputs (batch concatenation).
    pub compute_input: StatDuration,
    /// Time in the engine.
    pub compute_infer: StatDuration,
    /// Time splitting outputs and answering.
    pub compute_output: StatDuration,
    /// Requests answered from the response cache, and the lookup time.
    pub cache_hit: StatDuration,
    /// Requests the cache could not answer, and the lookup + insert time.
    pub cache_miss: StatDuration,
}

/// A whole-runtime performance summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerformanceSummary {
    pub total_inferences: u64,
    pub failed_inferences: u64,
    pub mean_latency_us: f64,
    pub p50_latency_us: u64,
    pub p90_latency_us: u64,
    pub p99_latency_us: u64,
    /// Requests per second since the runtime started.
    pub throughput_rps: f64,
    /// EWMA of the request rate over recent seconds.
    pub recent_throughput_rps: f64,
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    pub uptime_s: f64,
}

/// Runtime-wide request totals behind [`PerformanceSummary`]: one relaxed
/// atomic add per request (a latency bucket, or the failure count), so the
/// request path takes no lock for them; the summary is computed when read.
#[derive(Debug)]
pub(crate) struct RuntimeTotals {
    /// Successful requests by latency: log-linear buckets of microseconds,
    /// 16 per power of two (within 1/16 of the value).
    buckets: Box<[AtomicU64]>,
    failed: AtomicU64,
    /// The recent-rate EWMA and the (time, successes) it was last folded at;
    /// only `summary` takes it.
    recent: Mutex<(Instant, u64, Ewma)>,
}

/// Sub-buckets per power of two (as a bit count).
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Latencies are clamped to 1 µs ..= 1 h.
const MAX_US: u64 = 3_600_000_000;

impl Default for RuntimeTotals {
    fn default() -> Self {
        RuntimeTotals {
            buckets: (0..=bucket_of(MAX_US)).map(|_| AtomicU64::new(0)).collect(),
            failed: AtomicU64::new(0),
            recent: Mutex::new((Instant::now(), 0, Ewma::new(0.3))),
        }
    }
}

/// The bucket of `us`: values below 2·SUB are their own bucket; above, the
/// top `SUB_BITS + 1` bits pick one.
fn bucket_of(us: u64) -> usize {
    if us < 2 * SUB as u64 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    (shift as usize + 1) * SUB + ((us >> shift) as usize - SUB)
}

/// The smallest and largest value of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < 2 * SUB {
        return (i as u64, i as u64);
    }
    let shift = (i / SUB - 1) as u32;
    let low = ((SUB + i % SUB) as u64) << shift;
    (low, low + (1u64 << shift) - 1)
}

impl RuntimeTotals {
    #[inline]
    pub(crate) fn success(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, MAX_US);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn failure(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    /// The summary after `uptime`, with the memory figures given.
    pub(crate) fn summary(
        &self,
        uptime: Duration,
        memory_used_bytes: u64,
        memory_budget_bytes: u64,
    ) -> PerformanceSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let ok: u64 = counts.iter().sum();
        let mean = if ok == 0 {
            0.0
        } else {
            let sum: f64 = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, c)| {
                    let (lo, hi) = bucket_range(i);
                    *c as f64 * (lo + hi) as f64 / 2.0
                })
                .sum();
            sum / ok as f64
        };
        let quantile = |q: f64| -> u64 {
            if ok == 0 {
                return 0;
            }
            let rank = ((q * ok as f64).ceil() as u64).clamp(1, ok);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_range(i).1;
                }
            }
            0
        };
        let secs = uptime.as_secs_f64();
        PerformanceSummary {
            total_inferences: ok,
            failed_inferences: self.failed.load(Ordering::Relaxed),
            mean_latency_us: mean,
            p50_latency_us: quantile(0.5),
            p90_latency_us: quantile(0.9),
            p99_latency_us: quantile(0.99),
            throughput_rps: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            recent_throughput_rps: self.recent_rate(ok),
            memory_used_bytes,
            memory_budget_bytes,
            uptime_s: secs,
        }
    }

    /// Folds the rate since the last fold into the EWMA (at most once a second).
    fn recent_rate(&self, ok: u64) -> f64 {
        let mut g = self.recent.lock();
        let elapsed = g.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            let rate = ok.saturating_sub(g.1) as f64 / elapsed.as_secs_f64();
            g.2.update(rate);
            g.0 = Instant::now();
            g.1 = ok;
        }
        g.2.value().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_converges() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.value(), None);
        e.update(10.0);
        assert_eq!(e.value(), Some(10.0));
        e.update(20.0);
        assert_eq!(e.value(), Some(15.0));
        for _ in 0..50 {
            e.update(100.0);
        }
        assert!((e.value().unwrap() - 100.0).abs() < 1e-6);
    }

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut last = 0;
        for us in (1..5000).chain([MAX_US - 1, MAX_US]) {
            let i = bucket_of(us);
            let (lo, hi) = bucket_range(i);
            assert!(lo <= us && us <= hi, "{us} in bucket {i} = {lo}..={hi}");
            assert!(i >= last);
            last = i;
            // Within 1/16 of the value.
            assert!((hi - lo) * 16 <= us.max(16), "{us}: {lo}..={hi}");
        }
    }

    #[test]
    fn totals_summarize_lock_free_counts() {
        let t = RuntimeTotals::default();
        for i in 1..=100 {
            t.success(Duration::from_micros(i * 10));
        }
        t.failure();
        let s = t.summary(Duration::from_secs(10), 1, 2);
        assert_eq!((s.total_inferences, s.failed_inferences), (100, 1));
        assert!((480..=530).contains(&s.p50_latency_us), "{s:?}");
        assert!(s.p99_latency_us >= 980 && s.p99_latency_us <= 1060, "{s:?}");
        assert!((s.mean_latency_us - 505.0).abs() < 30.0, "{s:?}");
        assert_eq!(s.throughput_rps, 10.0);
        let empty = RuntimeTotals::default().summary(Duration::ZERO, 0, 0);
        assert_eq!((empty.p50_latency_us, empty.mean_latency_us), (0, 0.0));
    }

    #[test]
    fn histogram_percentiles() {
        let h = LatencyHistogram::default();
        for i in 1..=100 {
            h.record(Duration::from_micros(i * 10));
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile_us(0.5);
        assert!((495..=505).contains(&p50), "{p50}");
        assert!(h.quantile_us(0.99) >= 980);
    }
}
