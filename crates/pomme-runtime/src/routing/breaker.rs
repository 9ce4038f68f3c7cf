//! Circuit breakers: one per (model, backend candidate).
//!
//! A backend that keeps failing (errors, panics, calls that exceed their time
//! limit) is taken out of rotation for a while so requests go straight to the
//! next candidate instead of paying for a failure first. After the open period
//! a few *probe* calls are let through (half-open); enough successes close the
//! breaker, one failure opens it again for a longer period (doubling, capped).
//!
//! The state machine ([`BreakerCore`]) takes the current time as an argument,
//! so it is tested without clocks or sleeps; [`CircuitBreaker`] pairs it with
//! an injected [`Clock`] (a [`ManualClock`] in tests, [`SystemClock`] in
//! production) and a mutex. The lock is held for a few comparisons per call.

use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where time comes from. Injected so tests move time by hand instead of sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to; clones share the same time.
#[derive(Clone, Debug)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(Instant::now())),
        }
    }
}

impl ManualClock {
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves time forward by `d`.
    pub fn advance(&self, d: Duration) {
        *self.now.lock() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}

/// Breaker thresholds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerConfig {
    /// Consecutive failures (errors or timeouts) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open the first time.
    pub open_for: Duration,
    /// Upper bound of the open period, which doubles each time a probe fails.
    pub max_open_for: Duration,
    /// Probe calls let through at once while half-open, and successes needed to close.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 1,
        }
    }
}

/// The state a breaker is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 open, 2 half-open.
    pub const fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// What the breaker lets a caller do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: a normal call.
    Call,
    /// Half-open: a probe call; its outcome decides the state.
    Probe,
    /// Open (or half-open with every probe slot taken): do not call.
    Reject,
}

/// The state machine, with time passed in.
#[derive(Clone, Debug)]
pub struct BreakerCore {
    cfg: BreakerConfig,
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// The open period used the last time it opened (doubles on a failed probe).
    current_open_for: Duration,
    probes_in_flight: u32,
    probe_successes: u32,
    /// Times the breaker went from closed/half-open to open.
    pub opened: u64,
    /// Times it went from half-open to closed.
    pub closed: u64,
}

impl BreakerCore {
    pub fn new(cfg: BreakerConfig) -> BreakerCore {
        let open_for = cfg.open_for;
        BreakerCore {
            cfg,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            open_until: None,
            current_open_for: open_for,
            probes_in_flight: 0,
            probe_successes: 0,
            opened: 0,
            closed: 0,
        }
    }

    /// The state as of `now` (an open breaker whose period ended reads half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.open_until) {
            (BreakerState::Open, Some(until)) if now >= until => BreakerState::HalfOpen,
            (s, _) => s,
        }
    }

    /// Asks to make a call at `now`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        if self.state(now) == BreakerState::HalfOpen && self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
            self.probe_successes = 0;
        }
        match self.state {
            BreakerState::Closed => Admit::Call,
            BreakerState::Open => Admit::Reject,
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.cfg.half_open_probes.max(1) {
                    self.probes_in_flight += 1;
                    Admit::Probe
                } else {
                    Admit::Reject
                }
            }
        }
    }

    /// Records a successful call that `admit` allowed as `how`.
    pub fn success(&mut self, how: Admit) {
        self.consecutive_failures = 0;
        if how == Admit::Probe && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            self.probe_successes += 1;
            if self.probe_successes >= self.cfg.half_open_probes.max(1) {
                self.state = BreakerState::Closed;
                self.open_until = None;
                self.current_open_for = self.cfg.open_for;
                self.closed += 1;
            }
        }
    }

    /// Gives back a call that decided nothing (the request itself was bad):
    /// a probe slot is freed without closing or opening the breaker.
    pub fn release(&mut self, how: Admit) {
        if how == Admit::Probe && self.state == BreakerState::HalfOpen {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
    }

    /// Records a failed (or timed-out) call that `admit` allowed as `how`, at `now`.
    pub fn failure(&mut self, how: Admit, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        match (how, self.state) {
            (Admit::Probe, BreakerState::HalfOpen) => {
                // The backend is still broken: open again, for longer.
                self.current_open_for = (self.current_open_for * 2).min(self.cfg.max_open_for);
                self.open(now);
            }
            (_, BreakerState::Closed)
                if self.consecutive_failures >= self.cfg.failure_threshold.max(1) =>
            {
                self.current_open_for = self.cfg.open_for;
                self.open(now);
            }
            _ => {}
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.open_until = Some(now + self.current_open_for);
        self.probes_in_flight = 0;
        self.probe_successes = 0;
        self.opened += 1;
    }
}

/// A thread-safe breaker reading an injected clock.
#[derive(Debug)]
pub struct CircuitBreaker {
    core: Mutex<BreakerCore>,
    clock: Arc<dyn Clock>,
}

/// A breaker's figures, for status pages and metrics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub opened: u64,
    pub closed: u64,
}

impl CircuitBreaker {
    pub fn new(cfg: BreakerConfig, clock: Arc<dyn Clock>) -> CircuitBreaker {
        CircuitBreaker {
            core: Mutex::new(BreakerCore::new(cfg)),
            clock,
        }
    }

    pub fn admit(&self) -> Admit {
        let now = self.clock.now();
        self.core.lock().admit(now)
    }

    pub fn success(&self, how: Admit) {
        self.core.lock().success(how);
    }

    pub fn release(&self, how: Admit) {
        self.core.lock().release(how);
    }

    pub fn failure(&self, how: Admit) {
        let now = self.clock.now();
        self.core.lock().failure(how, now);
    }

    /// Whether a call would be let through now, without taking a probe slot.
    pub fn would_admit(&self) -> bool {
        let now = self.clock.now();
        self.core.lock().clone().admit(now) != Admit::Reject
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = self.clock.now();
        let c = self.core.lock();
        BreakerSnapshot {
            state: c.state(now),
            consecutive_failures: c.consecutive_failures,
            opened: c.opened,
            closed: c.closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
            max_open_for: Duration::from_secs(25),
            half_open_probes: 2,
        }
    }

    #[test]
    fn consecutive_failures_open_and_successes_reset() {
        let t0 = Instant::now();
        let mut b = BreakerCore::new(cfg());
        for _ in 0..2 {
            assert_eq!(b.admit(t0), Admit::Call);
            b.failure(Admit::Call, t0);
        }
        // A success in between resets the count: failures must be consecutive.
        b.success(Admit::Call);
        for _ in 0..2 {
            b.failure(Admit::Call, t0);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        b.failure(Admit::Call, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.opened, 1);
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), Admit::Reject);
    }

    #[test]
    fn half_open_probes_close_it() {
        let t0 = Instant::now();
        let mut b = BreakerCore::new(cfg());
        for _ in 0..3 {
            b.failure(Admit::Call, t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        // Two probe slots, the third caller is turned away.
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Probe);
        assert_eq!(b.admit(t1), Admit::Reject);
        b.success(Admit::Probe);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.success(Admit::Probe);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert_eq!(b.closed, 1);
        assert_eq!(b.admit(t1), Admit::Call);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = BreakerCore::new(cfg());
        for _ in 0..3 {
            b.failure(Admit::Call, t0);
        }
        let mut t = t0 + Duration::from_secs(10);
        // Open periods: 10 s, then 20 s, then 25 s (capped), then 25 s.
        for expect in [20u64, 25, 25] {
            assert_eq!(b.admit(t), Admit::Probe);
            b.failure(Admit::Probe, t);
            assert_eq!(b.state(t), BreakerState::Open);
            assert_eq!(
                b.state(t + Duration::from_secs(expect) - Duration::from_millis(1)),
                BreakerState::Open
            );
            t += Duration::from_secs(expect);
            assert_eq!(b.state(t), BreakerState::HalfOpen);
        }
        assert_eq!(b.opened, 4);
        // Closing resets the period to the configured one.
        b.admit(t);
        b.admit(t);
        b.success(Admit::Probe);
        b.success(Admit::Probe);
        for _ in 0..3 {
            b.failure(Admit::Call, t);
        }
        assert_eq!(b.state(t + Duration::from_secs(10)), BreakerState::HalfOpen);
    }

    #[test]
    fn manual_clock_drives_the_shared_breaker() {
        let clock = ManualClock::new();
        let b = CircuitBreaker::new(cfg(), Arc::new(clock.clone()));
        for _ in 0..3 {
            let how = b.admit();
            b.failure(how);
        }
        assert_eq!(b.snapshot().state, BreakerState::Open);
        assert!(!b.would_admit());
        clock.advance(Duration::from_secs(10));
        assert!(b.would_admit());
        // `would_admit` took no probe slot.
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        assert_eq!(b.admit(), Admit::Reject);
        // A call that decided nothing frees its probe slot.
        b.release(Admit::Probe);
        assert_eq!(b.admit(), Admit::Probe);
        b.success(Admit::Probe);
        b.success(Admit::Probe);
        let s = b.snapshot();
        assert_eq!((s.state, s.opened, s.closed), (BreakerState::Closed, 1, 1));
    }
}
