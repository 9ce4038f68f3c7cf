//! loom model checks of the admission controller's lock-free paths: every
//! interleaving (within loom's bounds) of `try_acquire`'s compare-and-swap on
//! the in-flight count and on the memory counter, the failed-memory path that
//! gives its slot back, and the releases in `Drop`.
//!
//! Compiled only under `--cfg loom` (then `admission.rs` uses loom's atomics):
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p pomme-runtime --test loom_admission
//! ```
//!
//! Not covered: the waiting path of `Admission::acquire` parks on
//! `tokio::sync::Notify`, which loom does not model; `tests/stress_admission.rs`
//! exercises it with many tasks instead.
#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use pomme_runtime::Admission;

/// Runs `body` on `threads` loom threads plus the model's main thread.
fn on_threads(threads: usize, body: impl Fn(usize) + Send + Sync + 'static) {
    let body = Arc::new(body);
    let handles: Vec<_> = (1..=threads)
        .map(|i| {
            let body = body.clone();
            loom::thread::spawn(move || body(i))
        })
        .collect();
    body(0);
    for h in handles {
        h.join().unwrap();
    }
}

/// With a limit of one, no two permits are ever held at once, whoever wins
/// the race; afterwards everything is given back.
#[test]
fn permits_never_exceed_the_limit() {
    loom::model(|| {
        let a = Admission::new(1, u64::MAX);
        // A shadow count of permits actually held, bumped by each holder.
        let held = Arc::new(AtomicUsize::new(0));
        let granted = Arc::new(AtomicUsize::new(0));
        let (a2, held2, granted2) = (a.clone(), held.clone(), granted.clone());
        on_threads(2, move |_| {
            if let Ok(p) = a2.try_acquire(0) {
                granted2.fetch_add(1, SeqCst);
                let now = held2.fetch_add(1, SeqCst) + 1;
                assert_eq!(now, 1, "two permits out under a limit of one");
                assert!(a2.in_flight() <= 1);
                held2.fetch_sub(1, SeqCst);
                drop(p);
            }
        });
        assert!(granted.load(SeqCst) >= 1, "every thread was refused");
        assert_eq!(a.in_flight(), 0);
    });
}

/// Two slots, two contenders each taking 10 bytes of a 15-byte budget: the
/// memory CAS admits one at a time, and a contender refused for memory gives
/// its concurrency slot back (so the counters return to zero). (Two threads,
/// not three: with both CAS loops, three threads' interleavings do not finish
/// exhaustively in minutes.)
#[test]
fn memory_never_exceeds_the_budget_and_returns_to_zero() {
    loom::model(|| {
        let a = Admission::new(2, 15);
        let bytes_held = Arc::new(AtomicU64::new(0));
        let (a2, held2) = (a.clone(), bytes_held.clone());
        on_threads(1, move |_| match a2.try_acquire(10) {
            Ok(p) => {
                let now = held2.fetch_add(10, SeqCst) + 10;
                assert!(now <= 15, "{now} bytes admitted against a 15-byte budget");
                assert!(a2.memory_used() <= 15);
                assert!(a2.in_flight() <= 2);
                held2.fetch_sub(10, SeqCst);
                drop(p);
            }
            Err(e) => {
                let m = e.to_string();
                assert!(!m.contains('\n'), "{m}");
            }
        });
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.memory_used(), 0);
    });
}

/// A model's weight reservation racing requests' activation memory: the sum
/// never exceeds the budget and both kinds of release restore zero.
#[test]
fn reservations_and_permits_share_the_budget() {
    loom::model(|| {
        let a = Admission::new(4, 10);
        let (a2, a3) = (a.clone(), a.clone());
        let t = loom::thread::spawn(move || {
            let r = a2.reserve_memory(6).ok();
            assert!(a2.memory_used() <= 10);
            drop(r);
        });
        let p = a3.try_acquire(6).ok();
        assert!(a3.memory_used() <= 10);
        drop(p);
        t.join().unwrap();
        assert_eq!((a.in_flight(), a.memory_used()), (0, 0));
    });
}

/// Lowering the limit while permits are being taken: permits already out stay
/// valid, nothing is lost or double-counted, and the count returns to zero.
#[test]
fn lowering_the_limit_races_acquisition() {
    loom::model(|| {
        let a = Admission::new(2, u64::MAX);
        let (a2, a3) = (a.clone(), a.clone());
        let t = loom::thread::spawn(move || {
            let p = a2.try_acquire(0).ok();
            assert!(a2.in_flight() <= 2);
            drop(p);
        });
        a3.set_max_concurrency(1);
        let p = a3.try_acquire(0).ok();
        assert!(a3.in_flight() <= 2);
        drop(p);
        t.join().unwrap();
        assert_eq!(a.in_flight(), 0);
        // Once everyone is gone, the new limit holds exactly.
        let p = a.try_acquire(0).unwrap();
        assert!(a.try_acquire(0).is_err());
        drop(p);
    });
}
