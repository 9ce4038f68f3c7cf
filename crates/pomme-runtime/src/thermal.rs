//! Thermal-aware admission: lower the concurrency limit while the machine is
//! hot, restore it when it cools.
//!
//! The runtime never reads sensors itself: a [`ThermalSource`] is handed in
//! (on macOS, `NSProcessInfo.thermalState` through pomme-coreml's telemetry;
//! in tests, a fake). [`ThermalGovernor::tick`] applies the policy once;
//! [`ThermalGovernor::spawn`] applies it periodically.

use crate::admission::Admission;
use std::sync::Arc;
use std::time::Duration;

/// Thermal pressure, as macOS reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ThermalLevel {
    Nominal,
    Fair,
    Serious,
    Critical,
}

/// Where the thermal level comes from.
pub trait ThermalSource: Send + Sync {
    fn level(&self) -> ThermalLevel;
}

/// How much of the configured concurrency to keep at each level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThermalPolicy {
    /// Fraction kept at `Serious` (default 0.5).
    pub serious: f64,
    /// Fraction kept at `Critical` (default 0.25).
    pub critical: f64,
}

impl Default for ThermalPolicy {
    fn default() -> Self {
        ThermalPolicy {
            serious: 0.5,
            critical: 0.25,
        }
    }
}

/// Applies a [`ThermalPolicy`] to an [`Admission`] controller.
pub struct ThermalGovernor {
    admission: Admission,
    base: usize,
    policy: ThermalPolicy,
    source: Arc<dyn ThermalSource>,
}

impl ThermalGovernor {
    /// Governs `admission`, whose current limit is taken as the cool-machine limit.
    pub fn new(
        admission: Admission,
        policy: ThermalPolicy,
        source: Arc<dyn ThermalSource>,
    ) -> ThermalGovernor {
        ThermalGovernor {
            base: admission.max_concurrency(),
            admission,
            policy,
            source,
        }
    }

    /// Reads the source once and sets the limit; returns it.
    pub fn tick(&self) -> usize {
        let level = self.source.level();
        let fraction = match level {
            ThermalLevel::Nominal | ThermalLevel::Fair => 1.0,
            ThermalLevel::Serious => self.policy.serious,
            ThermalLevel::Critical => self.policy.critical,
        };
        let limit = ((self.base as f64 * fraction).floor() as usize).max(1);
        if limit != self.admission.max_concurrency() {
            tracing::warn!(
                ?level,
                limit,
                base = self.base,
                "thermal policy changed the concurrency limit"
            );
            self.admission.set_max_concurrency(limit);
        }
        limit
    }

    /// Applies the policy every `interval` on the current tokio runtime.
    pub fn spawn(self, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                self.tick();
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    struct Fake(AtomicU8);

    impl ThermalSource for Fake {
        fn level(&self) -> ThermalLevel {
            match self.0.load(Ordering::Relaxed) {
                0 => ThermalLevel::Nominal,
                1 => ThermalLevel::Fair,
                2 => ThermalLevel::Serious,
                _ => ThermalLevel::Critical,
            }
        }
    }

    #[test]
    fn lowers_and_restores() {
        let a = Admission::new(8, u64::MAX);
        let fake = Arc::new(Fake(AtomicU8::new(0)));
        let g = ThermalGovernor::new(a.clone(), ThermalPolicy::default(), fake.clone());
        assert_eq!(g.tick(), 8);
        fake.0.store(2, Ordering::Relaxed);
        assert_eq!(g.tick(), 4);
        assert_eq!(a.max_concurrency(), 4);
        let permits: Vec<_> = (0..4).map(|_| a.try_acquire(0).unwrap()).collect();
        assert!(a.try_acquire(0).is_err(), "the lowered limit holds");
        fake.0.store(3, Ordering::Relaxed);
        assert_eq!(g.tick(), 2);
        drop(permits);
        fake.0.store(1, Ordering::Relaxed);
        assert_eq!(g.tick(), 8);
        assert_eq!(a.max_concurrency(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn spawned_governor_follows_the_source() {
        let a = Admission::new(4, u64::MAX);
        let fake = Arc::new(Fake(AtomicU8::new(3)));
        let h = ThermalGovernor::new(a.clone(), ThermalPolicy::default(), fake.clone())
            .spawn(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(a.max_concurrency(), 1);
        fake.0.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(a.max_concurrency(), 4);
        h.abort();
    }
}
