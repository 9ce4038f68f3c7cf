//! Many-task stress of the admission controller's *waiting* path
//! (`Admission::acquire`, parked on `tokio::sync::Notify`), which the loom
//! checks cannot model, mixed with fail-fast `try_acquire`, weight
//! reservations and limit changes. Invariants asserted throughout:
//!
//! - permits held never exceed the concurrency limit in force when taken;
//! - admitted memory never exceeds the budget;
//! - no lost wake-ups: every waiter without a deadline is eventually admitted
//!   (a hang fails the test through the outer timeout, which is a guard, not
//!   a timing assertion);
//! - afterwards the in-flight count and memory in use are back to zero.

use pomme_runtime::Admission;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::time::Instant;

const LIMIT: usize = 3;
const BUDGET: u64 = 100;

struct Shadow {
    held: AtomicUsize,
    peak: AtomicUsize,
    bytes: AtomicU64,
}

impl Shadow {
    fn enter(&self, a: &Admission, bytes: u64) {
        let n = self.held.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        assert!(n <= LIMIT, "{n} permits held under a limit of {LIMIT}");
        let b = self.bytes.fetch_add(bytes, SeqCst) + bytes;
        assert!(
            b <= BUDGET,
            "{b} bytes admitted against a budget of {BUDGET}"
        );
        assert!(a.memory_used() <= BUDGET);
    }
    fn leave(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes, SeqCst);
        self.held.fetch_sub(1, SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_are_all_admitted_and_counters_return_to_zero() {
    let a = Admission::new(LIMIT, BUDGET);
    let shadow = Arc::new(Shadow {
        held: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        bytes: AtomicU64::new(0),
    });
    let admitted = Arc::new(AtomicUsize::new(0));
    let timed_out = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let (a, shadow, admitted, timed_out) = (
            a.clone(),
            shadow.clone(),
            admitted.clone(),
            timed_out.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let bytes = (t * 7 + i) % 40;
                // A quarter of the tasks wait with a short deadline, the rest
                // without one (those must all get in eventually).
                let deadline = t
                    .is_multiple_of(4)
                    .then(|| Instant::now() + Duration::from_millis(2));
                match a.acquire(bytes, deadline).await {
                    Ok(p) => {
                        shadow.enter(&a, bytes);
                        admitted.fetch_add(1, SeqCst);
                        if i.is_multiple_of(3) {
                            tokio::task::yield_now().await;
                        }
                        shadow.leave(bytes);
                        drop(p);
                    }
                    Err(e) => {
                        assert!(deadline.is_some(), "a waiter without deadline failed: {e}");
                        timed_out.fetch_add(1, SeqCst);
                    }
                }
            }
        }));
    }
    // Fail-fast callers on plain threads at the same time.
    let stop = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (a, shadow, stop) = (a.clone(), shadow.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while stop.load(SeqCst) == 0 {
                    n += 1;
                    if let Ok(p) = a.try_acquire(n % 30) {
                        shadow.enter(&a, n % 30);
                        shadow.leave(n % 30);
                        drop(p);
                    }
                    if n.is_multiple_of(64)
                        && let Ok(r) = a.reserve_memory(5)
                    {
                        drop(r);
                    }
                }
            })
        })
        .collect();
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("waiters still parked after 120 s: a lost wake-up");
    stop.store(1, SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!((a.in_flight(), a.memory_used()), (0, 0));
    let no_deadline = 48 * 200;
    assert!(admitted.load(SeqCst) >= no_deadline);
    assert!(shadow.peak.load(SeqCst) >= 1);
}

/// Changing the limit up and down while waiters are parked: a raised limit
/// wakes them (`notify_waiters`), and everyone finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_changes_wake_waiters() {
    let a = Admission::new(1, u64::MAX);
    let held = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (a, held) = (a.clone(), held.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                let p = a.acquire(0, None).await.unwrap();
                let n = held.fetch_add(1, SeqCst) + 1;
                // The limit moves between 1 and 4 below.
                assert!(n <= 4, "{n} permits held, limit never above 4");
                tokio::task::yield_now().await;
                held.fetch_sub(1, SeqCst);
                drop(p);
            }
        }));
    }
    let changer = {
        let a = a.clone();
        tokio::spawn(async move {
            for i in 0..500 {
                a.set_max_concurrency(1 + i % 4);
                tokio::task::yield_now().await;
            }
            a.set_max_concurrency(4);
        })
    };
    let all = async {
        changer.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("waiters still parked after 120 s: a lost wake-up");
    assert_eq!(a.in_flight(), 0);
}
