//! A model's bounded priority queue and its dynamic batcher.
//!
//! Requests wait here between admission and a compute worker. A worker asks
//! [`ModelQueue::next_batch`] for work; with batching on, it gathers requests
//! whose non-batch dimensions match the oldest one's, until the batch is full,
//! hits a preferred size, or the oldest request has waited `max_queue_delay`.
//! A request that is part of a sequence (stateful models) is never batched:
//! it goes alone, as soon as it is at the head. Requests whose caller went
//! away are dropped unrun; those past their deadline are answered with
//! `Timeout` unrun. A full queue rejects at once.
//!
//! An idle worker spins for [`BatchPolicy::idle_spin`] (checking a lock-free
//! count) before it parks on the condition variable: on a busy stream of tiny
//! requests the next one usually arrives within that window, and picking it up
//! without a futex wake-up saves a cross-thread hop per request.

use crate::admission::Permit;
use parking_lot::{Condvar, Mutex, MutexGuard};
use pomme_core::{Error, Result, SequenceControl, Tensor};
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// What the batcher needs to know to group requests.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    /// Rows per execution at most; ≤ 1 disables batching.
    pub max_batch: usize,
    pub max_delay: Duration,
    pub preferred: Vec<usize>,
    pub max_queue: usize,
    /// Priority levels; level 1 is served first.
    pub levels: u32,
    /// How long an idle worker polls for new work before parking; zero parks
    /// at once (`RuntimeBuilder::worker_spin`).
    pub idle_spin: Duration,
}

/// A request waiting to run.
pub struct Pending {
    /// Inputs in signature order.
    pub inputs: Vec<Tensor>,
    /// Rows along the batch axis (1 for unbatchable models).
    pub rows: usize,
    pub enqueued: Instant,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<Vec<Tensor>>>,
    /// Held until the request is answered.
    pub permit: Option<Permit>,
    pub span: tracing::Span,
    /// The time spent queued (a `debug` span, child of `span`): closed by the
    /// worker when the request's batch starts.
    pub queue: tracing::Span,
    /// The request's place in a sequence: it then runs alone.
    pub sequence: Option<SequenceControl>,
}

impl Pending {
    /// Answers the request, releasing its admission permit first so that a
    /// caller who sees the answer also sees the slot free.
    pub fn answer(self, result: Result<Vec<Tensor>>) {
        let Pending { reply, permit, .. } = self;
        drop(permit);
        let _ = reply.send(result);
    }

    /// Whether two requests can share a batch: neither is part of a sequence
    /// (a sequence's state advances one request at a time), same dtypes and
    /// same dimensions after the first.
    fn compatible(&self, other: &Pending) -> bool {
        self.sequence.is_none()
            && other.sequence.is_none()
            && self.inputs.len() == other.inputs.len()
            && self
                .inputs
                .iter()
                .zip(&other.inputs)
                .all(|(a, b)| a.dtype() == b.dtype() && a.shape().get(1..) == b.shape().get(1..))
    }

    fn is_cancelled(&self) -> bool {
        self.reply.is_closed()
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }
}

struct State {
    levels: Vec<VecDeque<Pending>>,
    len: usize,
    closed: bool,
}

/// The queue of one model version, shared by its workers.
pub struct ModelQueue {
    state: Mutex<State>,
    cond: Condvar,
    policy: BatchPolicy,
    /// Pushes so far; lets an idle worker see new work without taking the lock.
    pushes: AtomicUsize,
    /// Mirrors the queue length (set under the lock, so it never drifts when
    /// dead requests are purged).
    pending_gauge: Option<Gauge>,
}

impl ModelQueue {
    pub fn new(policy: BatchPolicy) -> ModelQueue {
        let levels = policy.levels.max(1) as usize;
        ModelQueue {
            state: Mutex::new(State {
                levels: (0..levels).map(|_| VecDeque::new()).collect(),
                len: 0,
                closed: false,
            }),
            cond: Condvar::new(),
            policy,
            pushes: AtomicUsize::new(0),
            pending_gauge: None,
        }
    }

    /// Keeps `gauge` equal to the number of waiting requests.
    pub fn with_pending_gauge(mut self, gauge: Gauge) -> ModelQueue {
        self.pending_gauge = Some(gauge);
        self
    }

    fn publish_len(&self, len: usize) {
        if let Some(g) = &self.pending_gauge {
            g.set(len as i64);
        }
    }

    /// The batching policy.
    pub fn policy(&self) -> &BatchPolicy {
        &self.policy
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.state.lock().len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Enqueues at `priority` (1 = highest; clamped to the configured levels).
    /// Fails at once when the queue is full or closed (the request is dropped,
    /// releasing its permit; the caller answers with the error).
    pub fn push(&self, p: Pending, priority: u32) -> Result<()> {
        let mut st = self.state.lock();
        if st.closed {
            drop(p);
            return Err(Error::Unavailable("model is being unloaded".into()));
        }
        if st.len >= self.policy.max_queue {
            let now = Instant::now();
            purge(&mut st, now);
            self.publish_len(st.len);
            if st.len >= self.policy.max_queue {
                drop(p);
                return Err(Error::ResourceLimit(format!(
                    "queue full ({} requests waiting)",
                    self.policy.max_queue
                )));
            }
        }
        let level = (priority.max(1) as usize - 1).min(st.levels.len() - 1);
        st.levels[level].push_back(p);
        st.len += 1;
        self.pushes.fetch_add(1, Ordering::Release);
        self.publish_len(st.len);
        drop(st);
        // Cheap when every worker is busy or spinning: no waiter, no syscall.
        self.cond.notify_one();
        Ok(())
    }

    /// Stops accepting; workers finish what is queued, then get `None`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.pushes.fetch_add(1, Ordering::Release);
        self.cond.notify_all();
    }

    /// Blocks until a batch is ready; `None` once closed and drained.
    pub fn next_batch(&self) -> Option<Vec<Pending>> {
        let mut st = self.state.lock();
        let mut spun = false;
        loop {
            match self.poll_locked(&mut st, Instant::now()) {
                NextBatch::Ready(batch) => return Some(batch),
                NextBatch::Closed => return None,
                NextBatch::WaitUntil(wake) => {
                    self.cond.wait_until(&mut st, wake);
                }
                NextBatch::Idle => {
                    // Spin once per idle period, then re-check under the lock (a
                    // push between the spin's end and the re-lock must not be missed).
                    if !spun && !self.policy.idle_spin.is_zero() {
                        spun = true;
                        let seen = self.pushes.load(Ordering::Acquire);
                        MutexGuard::unlocked(&mut st, || self.spin_for_push(seen));
                        continue;
                    }
                    self.cond.wait(&mut st);
                    spun = false;
                }
            }
        }
    }

    /// The batching decision at `now`, without blocking: a batch if one is
    /// due, else when to ask again. [`ModelQueue::next_batch`] is this plus
    /// waiting; with the clock a parameter, tests drive the queue delay on a
    /// paused clock instead of sleeping.
    #[cfg(test)]
    pub fn poll_batch(&self, now: Instant) -> NextBatch {
        self.poll_locked(&mut self.state.lock(), now)
    }

    fn poll_locked(&self, st: &mut State, now: Instant) -> NextBatch {
        if purge_fronts(st, now) {
            self.publish_len(st.len);
        }
        if st.len == 0 {
            return if st.closed {
                NextBatch::Closed
            } else {
                NextBatch::Idle
            };
        }
        // Nothing can join a sequence request: it goes without waiting.
        let head_alone = st
            .levels
            .iter()
            .find_map(|q| q.front())
            .is_some_and(|p| p.sequence.is_some());
        if self.policy.max_batch <= 1 || head_alone {
            let one = pop_first(st);
            self.publish_len(st.len);
            return NextBatch::Ready(vec![one]);
        }
        let (head_enqueued, rows) = {
            let head = st.levels.iter().find_map(|q| q.front()).expect("len > 0");
            let rows: usize = st
                .levels
                .iter()
                .flatten()
                .filter(|p| p.compatible(head) && !p.is_cancelled())
                .map(|p| p.rows)
                .sum();
            (head.enqueued, rows)
        };
        let waited_enough = now.saturating_duration_since(head_enqueued) >= self.policy.max_delay;
        if rows >= self.policy.max_batch
            || self.policy.preferred.contains(&rows)
            || waited_enough
            || st.closed
        {
            let batch = take_batch(st, self.policy.max_batch, now);
            self.publish_len(st.len);
            return NextBatch::Ready(batch);
        }
        NextBatch::WaitUntil(head_enqueued + self.policy.max_delay)
    }
}

/// What [`ModelQueue::poll_batch`] finds.
pub enum NextBatch {
    /// A batch to run now.
    Ready(Vec<Pending>),
    /// Requests wait for more to join; the oldest one's delay ends then.
    WaitUntil(Instant),
    /// Nothing waits.
    Idle,
    /// Closed and drained.
    Closed,
}

impl ModelQueue {
    /// Polls the push counter for up to `idle_spin`; whether something arrived.
    ///
    /// Each poll is followed by `sched_yield`, not a pure spin: threads that
    /// are runnable on this CPU (tokio's, the clients') run first, so the spin
    /// mostly takes CPU that would otherwise idle.
    fn spin_for_push(&self, seen: usize) -> bool {
        let until = Instant::now() + self.policy.idle_spin;
        loop {
            if self.pushes.load(Ordering::Acquire) != seen {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

fn pop_first(st: &mut State) -> Pending {
    let q = st
        .levels
        .iter_mut()
        .find(|q| !q.is_empty())
        .expect("len > 0");
    st.len -= 1;
    q.pop_front().expect("non-empty")
}

/// Takes the head and every compatible request after it (priority order) that fits.
fn take_batch(st: &mut State, max_batch: usize, now: Instant) -> Vec<Pending> {
    let head = pop_first(st);
    let mut rows = head.rows;
    let mut batch = vec![head];
    for level in 0..st.levels.len() {
        let mut i = 0;
        while i < st.levels[level].len() && rows < max_batch {
            let p = &st.levels[level][i];
            if p.is_cancelled() || p.is_expired(now) {
                let p = st.levels[level].remove(i).expect("index in range");
                st.len -= 1;
                answer_dead(p, now);
                continue;
            }
            if p.compatible(&batch[0]) && rows + p.rows <= max_batch {
                let p = st.levels[level].remove(i).expect("index in range");
                st.len -= 1;
                rows += p.rows;
                batch.push(p);
                continue;
            }
            i += 1;
        }
    }
    batch
}

/// Drops dead requests at the front of each level, so the head is live.
/// Returns whether any was dropped.
fn purge_fronts(st: &mut State, now: Instant) -> bool {
    let before = st.len;
    for level in 0..st.levels.len() {
        while let Some(p) = st.levels[level].front() {
            if p.is_cancelled() || p.is_expired(now) {
                let p = st.levels[level].pop_front().expect("front exists");
                st.len -= 1;
                answer_dead(p, now);
            } else {
                break;
            }
        }
    }
    st.len != before
}

fn purge(st: &mut State, now: Instant) {
    for level in 0..st.levels.len() {
        let before = st.levels[level].len();
        let (dead, live): (Vec<Pending>, Vec<Pending>) = st.levels[level]
            .drain(..)
            .partition(|p| p.is_cancelled() || p.is_expired(now));
        st.levels[level] = live.into();
        st.len -= before - st.levels[level].len();
        dead.into_iter().for_each(|p| answer_dead(p, now));
    }
}

fn answer_dead(p: Pending, now: Instant) {
    if !p.is_cancelled() {
        let waited = now.duration_since(p.enqueued);
        p.answer(Err(Error::Timeout(format!(
            "deadline passed after {} ms in the queue",
            waited.as_millis()
        ))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pomme_core::DType;
    use std::sync::Arc;

    fn pending(rows: usize, width: usize) -> (Pending, oneshot::Receiver<Result<Vec<Tensor>>>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            inputs: vec![Tensor::zeros(DType::F32, vec![rows, width]).unwrap()],
            rows,
            enqueued: Instant::now(),
            deadline: None,
            reply: tx,
            permit: None,
            span: tracing::Span::none(),
            queue: tracing::Span::none(),
            sequence: None,
        };
        (p, rx)
    }

    fn policy(max_batch: usize, delay_ms: u64) -> BatchPolicy {
        BatchPolicy {
            max_batch,
            max_delay: Duration::from_millis(delay_ms),
            preferred: vec![],
            max_queue: 8,
            levels: 2,
            idle_spin: Duration::ZERO,
        }
    }

    #[test]
    fn full_batch_goes_at_once_and_never_mixes_shapes() {
        let q = ModelQueue::new(policy(4, 10_000));
        let mut rxs = vec![];
        for w in [3, 3, 5, 3, 3] {
            let (p, rx) = pending(1, w);
            rxs.push(rx);
            q.push(p, 1).unwrap();
        }
        let batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 4);
        assert!(batch.iter().all(|p| p.inputs[0].shape() == [1, 3]));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn sequence_requests_go_alone_without_waiting() {
        let q = ModelQueue::new(policy(4, 3_600_000));
        let mut keep = vec![];
        for (i, seq) in [true, true, false, false, true].into_iter().enumerate() {
            let (mut p, rx) = pending(1, 3);
            p.sequence = seq.then(|| SequenceControl {
                id: i.to_string(),
                start: true,
                end: false,
            });
            keep.push(rx);
            q.push(p, 1).unwrap();
        }
        // Each sequence request goes at once (the delay is an hour); the two
        // plain ones wait for it (here: for the close) and batch together.
        let ids = |b: Vec<Pending>| -> Vec<Option<String>> {
            b.into_iter().map(|p| p.sequence.map(|s| s.id)).collect()
        };
        assert_eq!(ids(q.next_batch().unwrap()), [Some("0".to_string())]);
        assert_eq!(ids(q.next_batch().unwrap()), [Some("1".to_string())]);
        q.close();
        assert_eq!(ids(q.next_batch().unwrap()), [None, None]);
        assert_eq!(ids(q.next_batch().unwrap()), [Some("4".to_string())]);
    }

    #[test]
    fn preferred_size_goes_without_waiting_for_the_delay() {
        let mut pol = policy(8, 3_600_000);
        pol.preferred = vec![3];
        let q = ModelQueue::new(pol);
        let mut keep = vec![];
        for rows in [1, 2] {
            let (p, rx) = pending(rows, 3);
            keep.push(rx);
            q.push(p, 1).unwrap();
        }
        // 3 rows waiting = a preferred size: formed at once (an hour's delay otherwise).
        let batch = q.next_batch().unwrap();
        assert_eq!(batch.iter().map(|p| p.rows).sum::<usize>(), 3);
    }

    #[test]
    fn a_batch_never_exceeds_max_rows() {
        let q = ModelQueue::new(policy(4, 0));
        let mut keep = vec![];
        for rows in [3, 2, 1] {
            let (p, rx) = pending(rows, 3);
            keep.push(rx);
            q.push(p, 1).unwrap();
        }
        // 3 + 2 > 4, so the 2-row request waits; the 1-row one fits behind it.
        let rows: Vec<usize> = q.next_batch().unwrap().iter().map(|p| p.rows).collect();
        assert_eq!(rows, vec![3, 1]);
        assert_eq!(q.next_batch().unwrap()[0].rows, 2);
    }

    #[test]
    fn pending_gauge_follows_pushes_takes_and_purges() {
        let gauge = Gauge::default();
        let q = ModelQueue::new(policy(1, 0)).with_pending_gauge(gauge.clone());
        let (p1, rx1) = pending(1, 3);
        let (p2, _rx2) = pending(1, 3);
        q.push(p1, 1).unwrap();
        q.push(p2, 1).unwrap();
        assert_eq!(gauge.get(), 2);
        drop(rx1); // cancelled: purged, not run
        let batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn idle_spin_picks_up_work_and_parks_after() {
        let mut pol = policy(1, 0);
        pol.idle_spin = Duration::from_millis(1);
        let q = Arc::new(ModelQueue::new(pol));
        let q2 = q.clone();
        let h = std::thread::spawn(move || {
            let a = q2.next_batch().map(|b| b.len());
            let b = q2.next_batch().map(|b| b.len());
            (a, b)
        });
        let (p, _rx1) = pending(1, 3);
        q.push(p, 1).unwrap();
        // Whether the worker is spinning or parked by now, it gets this one too.
        let (p, _rx2) = pending(1, 3);
        q.push(p, 1).unwrap();
        assert_eq!(h.join().unwrap(), (Some(1), Some(1)));
        // And a closed queue ends a worker that is spinning or parked.
        let q3 = q.clone();
        let h = std::thread::spawn(move || q3.next_batch().is_none());
        q.close();
        assert!(h.join().unwrap());
    }

    #[test]
    fn delay_bounds_the_wait() {
        let q = ModelQueue::new(policy(8, 20));
        let (p, _rx) = pending(1, 3);
        q.push(p, 1).unwrap();
        let t = Instant::now();
        let batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    /// The paused tokio clock as a `std` instant: the queue takes its `now`
    /// from the caller, so the delay is driven by `advance`, not by sleeping.
    fn paused_now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn rows_of(n: NextBatch) -> Option<Vec<usize>> {
        match n {
            NextBatch::Ready(b) => Some(b.iter().map(|p| p.rows).collect()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn queue_delay_runs_from_the_oldest_request_to_the_microsecond() {
        let q = ModelQueue::new(BatchPolicy {
            max_delay: Duration::from_micros(500),
            ..policy(8, 0)
        });
        let mut keep = vec![];
        let mut push = |rows: usize| {
            let (mut p, rx) = pending(rows, 3);
            p.enqueued = paused_now();
            keep.push(rx);
            q.push(p, 1).unwrap();
        };
        assert!(matches!(q.poll_batch(paused_now()), NextBatch::Idle));
        let t0 = paused_now();
        push(1);
        push(2);
        tokio::time::advance(Duration::from_micros(200)).await;
        push(1); // joins the wait; the deadline stays the oldest's
        match q.poll_batch(paused_now()) {
            NextBatch::WaitUntil(t) => assert_eq!(t, t0 + Duration::from_micros(500)),
            _ => panic!("a partial batch must wait for the delay"),
        }
        tokio::time::advance(Duration::from_micros(299)).await;
        assert!(matches!(
            q.poll_batch(paused_now()),
            NextBatch::WaitUntil(_)
        ));
        tokio::time::advance(Duration::from_micros(1)).await;
        assert_eq!(rows_of(q.poll_batch(paused_now())), Some(vec![1, 2, 1]));
        assert!(q.is_empty());
        // The next request's delay counts from its own arrival.
        let t1 = paused_now();
        push(1);
        tokio::time::advance(Duration::from_micros(499)).await;
        match q.poll_batch(paused_now()) {
            NextBatch::WaitUntil(t) => assert_eq!(t, t1 + Duration::from_micros(500)),
            _ => panic!("499 µs is not the delay"),
        }
        tokio::time::advance(Duration::from_micros(1)).await;
        assert_eq!(rows_of(q.poll_batch(paused_now())), Some(vec![1]));
    }

    #[tokio::test(start_paused = true)]
    async fn full_or_preferred_batches_do_not_wait_for_the_delay() {
        let q = ModelQueue::new(BatchPolicy {
            max_delay: Duration::from_secs(3600),
            preferred: vec![4],
            ..policy(6, 0)
        });
        let mut keep = vec![];
        for rows in [2, 1] {
            let (mut p, rx) = pending(rows, 3);
            p.enqueued = paused_now();
            keep.push(rx);
            q.push(p, 1).unwrap();
        }
        // 3 rows: neither full (6) nor preferred (4): waits the hour.
        assert!(matches!(
            q.poll_batch(paused_now()),
            NextBatch::WaitUntil(_)
        ));
        let (mut p, rx) = pending(1, 3);
        p.enqueued = paused_now();
        keep.push(rx);
        q.push(p, 1).unwrap();
        // 4 rows = preferred: formed with no time passed.
        assert_eq!(rows_of(q.poll_batch(paused_now())), Some(vec![2, 1, 1]));
        for rows in [5, 3] {
            let (mut p, rx) = pending(rows, 3);
            p.enqueued = paused_now();
            keep.push(rx);
            q.push(p, 1).unwrap();
        }
        // 8 rows waiting ≥ max 6: a batch of what fits goes at once; the 3
        // left are neither full nor preferred, so they wait.
        assert_eq!(rows_of(q.poll_batch(paused_now())), Some(vec![5]));
        assert!(matches!(
            q.poll_batch(paused_now()),
            NextBatch::WaitUntil(_)
        ));
        // A deadline passing in the queue answers Timeout, on the paused clock too.
        let (mut p, mut rx) = pending(1, 3);
        p.enqueued = paused_now();
        p.deadline = Some(paused_now() + Duration::from_millis(5));
        q.push(p, 2).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let _ = q.poll_batch(paused_now());
        assert!(matches!(rx.try_recv(), Ok(Err(Error::Timeout(_)))));
        q.close();
        assert_eq!(rows_of(q.poll_batch(paused_now())), Some(vec![3]));
        assert!(matches!(q.poll_batch(paused_now()), NextBatch::Closed));
    }

    #[test]
    fn priority_one_first_and_full_queue_rejects() {
        let q = ModelQueue::new(policy(1, 0));
        let mut keep = vec![];
        for i in 0..8 {
            let (mut p, rx) = pending(1, 3);
            p.rows = i + 1; // tag
            keep.push(rx);
            q.push(p, if i == 7 { 1 } else { 2 }).unwrap();
        }
        let (p, _rx) = pending(1, 3);
        let err = q.push(p, 1).unwrap_err();
        assert!(matches!(err, Error::ResourceLimit(_)), "{err}");
        assert_eq!(q.next_batch().unwrap()[0].rows, 8);
        assert_eq!(q.next_batch().unwrap()[0].rows, 1);
    }

    #[test]
    fn cancelled_requests_are_dropped_and_expired_ones_answered() {
        let q = ModelQueue::new(policy(4, 0));
        let (p1, rx1) = pending(1, 3);
        drop(rx1);
        q.push(p1, 1).unwrap();
        let (mut p2, mut rx2) = pending(1, 3);
        p2.deadline = Some(Instant::now());
        q.push(p2, 1).unwrap();
        let (p3, _rx3) = pending(1, 3);
        q.push(p3, 1).unwrap();
        let batch = q.next_batch().unwrap();
        assert_eq!(batch.len(), 1);
        assert!(matches!(rx2.try_recv(), Ok(Err(Error::Timeout(_)))));
    }

    #[test]
    fn close_drains_then_ends() {
        let q = Arc::new(ModelQueue::new(policy(4, 10_000)));
        let (p, _rx) = pending(1, 3);
        q.push(p, 1).unwrap();
        q.close();
        assert_eq!(q.next_batch().unwrap().len(), 1);
        assert!(q.next_batch().is_none());
        let (p, _rx) = pending(1, 3);
        assert!(matches!(q.push(p, 1).unwrap_err(), Error::Unavailable(_)));
    }

    #[test]
    fn workers_wake_on_push() {
        let q = Arc::new(ModelQueue::new(policy(1, 0)));
        let q2 = q.clone();
        let h = std::thread::spawn(move || q2.next_batch().map(|b| b.len()));
        let (p, _rx) = pending(1, 3);
        q.push(p, 1).unwrap();
        assert_eq!(h.join().unwrap(), Some(1));
    }
}
