//! Per-sequence state bookkeeping, shared by every stateful model: Core ML's
//! `MLState` (macOS 15+) and the runtime's implicit state for ONNX models
//! (Triton's sequence batcher `state`).
//!
//! One state per live sequence, addressed by Triton's sequence parameters
//! ([`SequenceControl`]): `sequence_start` makes a fresh state (replacing a
//! live one of the same id), later steps reuse it, `sequence_end` drops it
//! after the step. A failed step keeps the sequence's state (a failed first
//! step leaves nothing behind). States idle longer than the timeout are
//! dropped before each step, and a new sequence past the cap is refused with
//! `ResourceLimit` (429): the caller should end sequences it is done with.
//! The table belongs to the model's owner thread, so it needs no lock.

use crate::{Error, Result, SequenceControl};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Limits on live sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLimits {
    /// Live sequences at most (default 64).
    pub max_sequences: usize,
    /// A sequence with no step for this long is dropped (default 10 minutes).
    pub idle_timeout: Duration,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_sequences: 64,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

struct Live<S> {
    state: S,
    last_used: Instant,
}

/// Sequence id → its state.
pub struct StateTable<S> {
    live: HashMap<String, Live<S>>,
    limits: StateLimits,
}

impl<S> StateTable<S> {
    pub fn new(limits: StateLimits) -> StateTable<S> {
        StateTable {
            live: HashMap::new(),
            limits,
        }
    }

    /// Live sequences.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Drops states idle for longer than the timeout; returns their ids.
    pub fn evict_idle(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.limits.idle_timeout;
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_used) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.live.remove(id);
        }
        gone
    }

    /// Runs one step of `seq` on its state: a fresh one from `fresh` when the
    /// step starts the sequence, the kept one otherwise.
    pub fn step<T>(
        &mut self,
        seq: &SequenceControl,
        now: Instant,
        fresh: impl FnOnce() -> Result<S>,
        run: impl FnOnce(&mut S) -> Result<T>,
    ) -> Result<T> {
        for id in self.evict_idle(now) {
            tracing::info!(sequence = %id, "sequence state dropped after idling");
        }
        let mut state = if seq.start {
            self.live.remove(&seq.id);
            if !seq.end && self.live.len() >= self.limits.max_sequences {
                return Err(Error::ResourceLimit(format!(
                    "{} sequences are live (max_sequences); end one with sequence_end",
                    self.live.len()
                )));
            }
            fresh()?
        } else {
            match self.live.remove(&seq.id) {
                Some(l) => l.state,
                None => {
                    return Err(Error::invalid_input(format!(
                        "sequence '{}' has no state (never started, ended, or dropped after idling): start it with sequence_start = true",
                        seq.id
                    )));
                }
            }
        };
        let result = run(&mut state);
        let keep = match &result {
            Ok(_) => !seq.end,
            Err(_) => !seq.start,
        };
        if keep {
            self.live.insert(
                seq.id.clone(),
                Live {
                    state,
                    last_used: now,
                },
            );
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(id: &str, start: bool, end: bool) -> SequenceControl {
        SequenceControl {
            id: id.into(),
            start,
            end,
        }
    }

    fn add(t: &mut StateTable<i32>, s: &SequenceControl, now: Instant, x: i32) -> Result<i32> {
        t.step(
            s,
            now,
            || Ok(0),
            |acc| {
                *acc += x;
                Ok(*acc)
            },
        )
    }

    #[test]
    fn a_sequence_accumulates_until_it_ends() {
        let mut t = StateTable::new(StateLimits::default());
        let now = Instant::now();
        assert_eq!(add(&mut t, &seq("a", true, false), now, 1).unwrap(), 1);
        assert_eq!(add(&mut t, &seq("b", true, false), now, 10).unwrap(), 10);
        assert_eq!(add(&mut t, &seq("a", false, false), now, 2).unwrap(), 3);
        assert_eq!(add(&mut t, &seq("a", false, true), now, 3).unwrap(), 6);
        assert_eq!(t.len(), 1);
        let e = add(&mut t, &seq("a", false, false), now, 1).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(e.to_string().contains("sequence_start"), "{e}");
        // Starting again resets.
        assert_eq!(add(&mut t, &seq("b", true, false), now, 5).unwrap(), 5);
    }

    #[test]
    fn a_failed_step_keeps_the_state_and_a_failed_start_leaves_none() {
        let mut t = StateTable::new(StateLimits::default());
        let now = Instant::now();
        add(&mut t, &seq("a", true, false), now, 4).unwrap();
        let fail = |t: &mut StateTable<i32>, s| {
            t.step(
                &s,
                now,
                || Ok(0),
                |acc: &mut i32| -> Result<i32> {
                    *acc = -1; // even a step that scribbled before failing
                    Err(Error::InferenceFailed("boom".into()))
                },
            )
        };
        fail(&mut t, seq("a", false, false)).unwrap_err();
        assert_eq!(t.len(), 1);
        fail(&mut t, seq("new", true, false)).unwrap_err();
        assert_eq!(t.len(), 1);
        // Bookkeeping only: what the model wrote into its state stays written.
        assert_eq!(add(&mut t, &seq("a", false, false), now, 1).unwrap(), 0);
    }

    #[test]
    fn cap_and_idle_timeout() {
        let limits = StateLimits {
            max_sequences: 2,
            idle_timeout: Duration::from_secs(60),
        };
        let mut t = StateTable::new(limits);
        let t0 = Instant::now();
        add(&mut t, &seq("a", true, false), t0, 1).unwrap();
        add(&mut t, &seq("b", true, false), t0, 1).unwrap();
        let e = add(&mut t, &seq("c", true, false), t0, 1).unwrap_err();
        assert!(matches!(e, Error::ResourceLimit(_)), "{e}");
        // A one-step sequence needs no slot; restarting a live one reuses its own.
        add(&mut t, &seq("c", true, true), t0, 1).unwrap();
        add(&mut t, &seq("a", true, false), t0, 1).unwrap();
        // After the timeout both are gone, and there is room again.
        let later = t0 + Duration::from_secs(61);
        assert_eq!(add(&mut t, &seq("c", true, false), later, 7).unwrap(), 7);
        assert_eq!(t.len(), 1);
        let e = add(&mut t, &seq("a", false, false), later, 1).unwrap_err();
        assert!(e.to_string().contains("idling"), "{e}");
    }
}
