//! Admission acquire+release (uncontended and with two threads) and EWMA update.

use criterion::{Criterion, criterion_group, criterion_main};
use pomme_runtime::{Admission, Ewma};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn admission(c: &mut Criterion) {
    let a = Admission::new(1024, u64::MAX);
    c.bench_function("admission/acquire_release/uncontended", |b| {
        b.iter(|| drop(black_box(a.try_acquire(0).unwrap())))
    });
    c.bench_function("admission/acquire_release_with_memory/uncontended", |b| {
        b.iter(|| drop(black_box(a.try_acquire(4096).unwrap())))
    });
    // A second thread hammers the same controller while we measure.
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let a = a.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(black_box(a.try_acquire(0)));
            }
        })
    };
    c.bench_function("admission/acquire_release/2_threads", |b| {
        b.iter(|| drop(black_box(a.try_acquire(0).unwrap())))
    });
    stop.store(true, Ordering::Relaxed);
    other.join().unwrap();
}

fn ewma(c: &mut Criterion) {
    let mut e = Ewma::new(0.1);
    let mut x = 0.0f64;
    c.bench_function("ewma/update", |b| {
        b.iter(|| {
            x += 1.0;
            e.update(black_box(x));
        })
    });
    black_box(e.value());
}

criterion_group!(benches, admission, ewma);
criterion_main!(benches);
