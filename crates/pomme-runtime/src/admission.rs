//! Admission control: a concurrency limit and a memory budget, taken at the edge.
//!
//! The uncontended path is one compare-and-swap to take and one atomic
//! subtraction to give back (plus one load to see whether anyone waits), so it
//! costs a few nanoseconds. Waiters park on a [`tokio::sync::Notify`] with a
//! deadline; [`Admission::try_acquire`] never waits and fails fast, which is how
//! the server answers 429 when full.

use pomme_core::{Error, Result};
use std::sync::Arc;
// Under `--cfg loom` the counters are loom's, so `tests/loom_admission.rs` can
// explore every interleaving of the compare-and-swap paths (see RELIABILITY.md).
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug)]
struct Inner {
    max_concurrency: AtomicUsize,
    in_flight: AtomicUsize,
    budget: u64,
    used: AtomicU64,
    waiters: AtomicUsize,
    notify: Notify,
}

/// Shared admission state; cheap to clone.
#[derive(Clone, Debug)]
pub struct Admission {
    inner: Arc<Inner>,
}

/// Proof of admission: one concurrency slot plus `bytes` of the memory budget,
/// both given back on drop.
#[derive(Debug)]
#[must_use = "dropping a permit releases it"]
pub struct Permit {
    inner: Arc<Inner>,
    bytes: u64,
}

/// Memory held against the budget (for a loaded model's weights), released on drop.
#[derive(Debug)]
#[must_use = "dropping a reservation releases it"]
pub struct MemoryReservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl MemoryReservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Admission {
    /// `max_concurrency` executions in flight and `memory_budget` bytes (`u64::MAX`: unlimited).
    pub fn new(max_concurrency: usize, memory_budget: u64) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                max_concurrency: AtomicUsize::new(max_concurrency.max(1)),
                in_flight: AtomicUsize::new(0),
                budget: memory_budget,
                used: AtomicU64::new(0),
                waiters: AtomicUsize::new(0),
                notify: Notify::new(),
            }),
        }
    }

    /// Current concurrency limit.
    pub fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency.load(Ordering::Relaxed)
    }

    /// Changes the concurrency limit (e.g. lowered under thermal pressure). Permits
    /// already out stay valid; new ones respect the new limit.
    pub fn set_max_concurrency(&self, n: usize) {
        self.inner
            .max_concurrency
            .store(n.max(1), Ordering::Relaxed);
        self.inner.notify.notify_waiters();
    }

    /// Permits currently out.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Relaxed)
    }

    /// Bytes of the budget in use.
    pub fn memory_used(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// The memory budget in bytes.
    pub fn memory_budget(&self) -> u64 {
        self.inner.budget
    }

    /// Takes a permit now or fails with `ResourceLimit` / `MemoryBudgetExceeded`.
    #[inline]
    pub fn try_acquire(&self, bytes: u64) -> Result<Permit> {
        if !self.try_take_slot() {
            return Err(Error::ResourceLimit(format!(
                "{} requests already in flight (max_concurrency)",
                self.max_concurrency()
            )));
        }
        if bytes > 0
            && let Err(e) = self.try_take_memory(bytes)
        {
            self.give_slot();
            return Err(e);
        }
        Ok(Permit {
            inner: self.inner.clone(),
            bytes,
        })
    }

    /// Takes a permit, waiting until `deadline` for one to free up.
    pub async fn acquire(&self, bytes: u64, deadline: Option<Instant>) -> Result<Permit> {
        if bytes > self.inner.budget {
            return Err(self.budget_error(bytes));
        }
        loop {
            match self.try_acquire(bytes) {
                Ok(p) => return Ok(p),
                Err(e @ Error::MemoryBudgetExceeded(_)) if bytes > self.inner.budget => {
                    return Err(e);
                }
                Err(_) => {}
            }
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.inner.waiters.fetch_add(1, Ordering::SeqCst);
            // Re-check after registering, so a release in between is not missed.
            let retry = self.try_acquire(bytes);
            let outcome = match retry {
                Ok(p) => Some(Ok(p)),
                Err(_) => match deadline {
                    Some(d) => tokio::select! {
                        _ = &mut notified => None,
                        _ = tokio::time::sleep_until(d) => Some(Err(Error::Timeout(
                            "deadline passed while waiting for admission".into(),
                        ))),
                    },
                    None => {
                        notified.await;
                        None
                    }
                },
            };
            self.inner.waiters.fetch_sub(1, Ordering::SeqCst);
            if let Some(r) = outcome {
                return r;
            }
        }
    }

    /// Reserves memory for a model's weights, failing fast when it would not fit.
    pub fn reserve_memory(&self, bytes: u64) -> Result<MemoryReservation> {
        self.try_take_memory(bytes)?;
        Ok(MemoryReservation {
            inner: self.inner.clone(),
            bytes,
        })
    }

    #[inline]
    fn try_take_slot(&self) -> bool {
        let max = self.inner.max_concurrency.load(Ordering::Relaxed);
        let mut cur = self.inner.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                return false;
            }
            match self.inner.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    fn try_take_memory(&self, bytes: u64) -> Result<()> {
        let mut cur = self.inner.used.load(Ordering::Relaxed);
        loop {
            let next = cur.checked_add(bytes).filter(|&n| n <= self.inner.budget);
            let Some(next) = next else {
                return Err(self.budget_error(bytes));
            };
            match self.inner.used.compare_exchange_weak(
                cur,
                next,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => cur = actual,
            }
        }
    }

    fn budget_error(&self, bytes: u64) -> Error {
        Error::MemoryBudgetExceeded(format!(
            "needs {} MiB but {} of {} MiB are in use",
            mib(bytes),
            mib(self.memory_used()),
            mib(self.inner.budget)
        ))
    }

    #[inline]
    fn give_slot(&self) {
        release(&self.inner, 0, true);
    }
}

fn mib(b: u64) -> String {
    if b == u64::MAX {
        "unlimited".into()
    } else {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    }
}

#[inline]
fn release(inner: &Inner, bytes: u64, slot: bool) {
    if bytes > 0 {
        inner.used.fetch_sub(bytes, Ordering::Release);
    }
    if slot {
        inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    if inner.waiters.load(Ordering::SeqCst) > 0 {
        inner.notify.notify_one();
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        release(&self.inner, self.bytes, true);
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        release(&self.inner, self.bytes, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn limits_and_releases() {
        let a = Admission::new(2, 100);
        let p1 = a.try_acquire(10).unwrap();
        let p2 = a.try_acquire(10).unwrap();
        assert!(matches!(a.try_acquire(0), Err(Error::ResourceLimit(_))));
        drop(p1);
        let p3 = a.try_acquire(80).unwrap();
        assert_eq!(a.memory_used(), 90);
        assert!(matches!(
            a.reserve_memory(20),
            Err(Error::MemoryBudgetExceeded(_))
        ));
        drop((p2, p3));
        assert_eq!((a.in_flight(), a.memory_used()), (0, 0));
    }

    #[test]
    fn failed_memory_gives_the_slot_back() {
        let a = Admission::new(1, 10);
        assert!(a.try_acquire(11).is_err());
        assert_eq!(a.in_flight(), 0);
        assert!(a.try_acquire(10).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waits_until_released() {
        let a = Admission::new(1, u64::MAX);
        let p = a.try_acquire(0).unwrap();
        let a2 = a.clone();
        let waiter = tokio::spawn(async move { a2.acquire(0, None).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(p);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_gives_timeout() {
        let a = Admission::new(1, u64::MAX);
        let _p = a.try_acquire(0).unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        let e = a.acquire(0, Some(deadline)).await.unwrap_err();
        assert!(matches!(e, Error::Timeout(_)));
        assert_eq!(a.in_flight(), 1);
    }

    #[tokio::test]
    async fn request_larger_than_budget_fails_at_once() {
        let a = Admission::new(4, 100);
        assert!(matches!(
            a.acquire(101, None).await,
            Err(Error::MemoryBudgetExceeded(_))
        ));
    }

    #[test]
    fn stress_never_exceeds_limit() {
        let a = Admission::new(3, 1000);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let a = a.clone();
                let peak = peak.clone();
                s.spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(p) = a.try_acquire(7) {
                            let n = a.in_flight();
                            assert!(n <= 3, "{n} permits out");
                            assert!(a.memory_used() <= 1000);
                            peak.fetch_max(n, Ordering::Relaxed);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert_eq!((a.in_flight(), a.memory_used()), (0, 0));
        assert!(peak.load(Ordering::Relaxed) >= 1);
    }
}
