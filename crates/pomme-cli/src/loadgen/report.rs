//! The load generator's results: one row per measured concurrency level and
//! batch, the `--json` document (its field names are a stable interface for
//! deployment scripts) and the table printed without `--json`.

use serde::Serialize;

/// One measured concurrency level. Field names are a stable interface:
/// deployment scripts read them from `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    pub concurrency: usize,
    pub batch: usize,
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub timed_out: u64,
    pub errors: u64,
    /// Successful requests per second over the measurement window (including
    /// the wait for the requests in flight when it closed).
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first error answer seen, to tell what the `errors` were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// The whole `--json` document.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub url: String,
    pub model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    pub protocol: &'static str,
    pub binary: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub rows: Vec<LoadRow>,
}

/// The table printed without `--json`.
pub fn print_table(report: &LoadReport) {
    println!(
        "{} {} model {}{}{}",
        report.protocol,
        report.url,
        report.model,
        report
            .model_version
            .as_ref()
            .map(|v| format!(" version {v}"))
            .unwrap_or_default(),
        if report.binary {
            " (binary tensors)"
        } else {
            ""
        }
    );
    println!(
        "{:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8}",
        "CONC",
        "BATCH",
        "SENT",
        "OK",
        "REJECTED",
        "TIMEOUT",
        "ERRORS",
        "REQ/S",
        "P50 ms",
        "P90 ms",
        "P99 ms",
        "MAX ms"
    );
    for r in &report.rows {
        println!(
            "{:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9.1} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            r.concurrency,
            r.batch,
            r.sent,
            r.ok,
            r.rejected,
            r.timed_out,
            r.errors,
            r.rps,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms
        );
    }
    for r in &report.rows {
        if let Some(e) = &r.first_error {
            eprintln!("concurrency {}: first error: {e}", r.concurrency);
        }
    }
}
