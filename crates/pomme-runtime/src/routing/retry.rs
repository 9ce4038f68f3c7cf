//! Retries of a routed model's requests: a retryable error is tried again
//! after an exponential backoff with jitter, never past the request's
//! deadline, and not at all once every candidate's breaker is open (nothing
//! could run, so the caller hears `Unavailable` at once instead of waiting).

use super::routed::RouteSet;
use pomme_core::{Error, Result};
use serde::Serialize;
use std::future::Future;
use std::time::{Duration, Instant};

/// Retries for retryable errors: exponential backoff with jitter, never past
/// the request's deadline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Cap on any one delay.
    pub max_delay: Duration,
    /// Share of each delay that is random (0: none, 1: anywhere in [0, delay]).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(200),
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1 for the first retry), with
    /// `unit` a random number in [0, 1): `base · 2^(retry-1)`, capped, of which
    /// a `jitter` share is scaled by `unit` ("equal jitter"), so concurrent
    /// clients that failed together do not come back together.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        let j = self.jitter.clamp(0.0, 1.0);
        exp.mul_f64(1.0 - j + j * unit.clamp(0.0, 1.0))
    }

    /// Whether to retry after `attempts` attempts ended in `err`, and after
    /// which delay: `None` when the error is not retryable, the attempts are
    /// used up, or the delay would end at or past `deadline`.
    pub fn next(
        &self,
        attempts: u32,
        err: &Error,
        now: Instant,
        deadline: Option<Instant>,
        unit: f64,
    ) -> Option<Duration> {
        if !err.is_retryable() || attempts >= self.max_attempts {
            return None;
        }
        let d = self.delay(attempts, unit);
        match deadline {
            Some(dl) if now + d >= dl => None,
            _ => Some(d),
        }
    }
}

/// A cheap process-wide random number in [0, 1) for jitter (not for anything
/// that needs real randomness).
pub fn jitter_unit() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        ^ Instant::now().elapsed().as_nanos() as u64
        ^ std::process::id() as u64;
    // splitmix64 finalizer.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Runs `attempt` on `req` and retries it (on a clone) as `set`'s policy
/// allows: retryable errors only, within `deadline`, and only while some
/// candidate's breaker would admit a call.
pub(crate) async fn with_retries<R, T, Fut>(
    set: &RouteSet,
    req: R,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(R) -> Fut,
) -> Result<T>
where
    R: Clone,
    Fut: Future<Output = Result<T>>,
{
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match attempt(req.clone()).await {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if !set.any_admits() {
            return Err(err);
        }
        let unit = jitter_unit();
        match set
            .config
            .retry
            .next(attempts, &err, Instant::now(), deadline, unit)
        {
            Some(delay) => {
                set.count_retry();
                tokio::time::sleep(delay).await;
            }
            None => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_respects_the_deadline() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            jitter: 0.5,
        };
        // Without randomness (unit = 1) the delays are the full exponential.
        let full: Vec<u128> = (1..=4).map(|r| p.delay(r, 1.0).as_millis()).collect();
        assert_eq!(full, [10, 20, 40, 50]);
        // Jitter takes off at most half.
        assert_eq!(p.delay(2, 0.0), Duration::from_millis(10));
        assert!(p.delay(2, 0.5) > Duration::from_millis(10));
        let now = Instant::now();
        let retryable = Error::InferenceFailed("x".into());
        assert_eq!(
            p.next(1, &retryable, now, None, 1.0),
            Some(Duration::from_millis(10))
        );
        // Not retryable, out of attempts, or past the deadline: no retry.
        assert_eq!(p.next(1, &Error::invalid_input("x"), now, None, 1.0), None);
        assert_eq!(p.next(5, &retryable, now, None, 1.0), None);
        let dl = now + Duration::from_millis(15);
        assert_eq!(p.next(2, &retryable, now, Some(dl), 1.0), None);
        assert_eq!(
            p.next(1, &retryable, now, Some(dl), 1.0),
            Some(Duration::from_millis(10))
        );
        let u = jitter_unit();
        assert!((0.0..1.0).contains(&u));
    }
}
