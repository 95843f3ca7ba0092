//! The `fast` consistency mode: the leader answers from memory and replicates behind.
//!
//! The leader keeps its own counter store for fast limits. A key is seeded from the
//! replicated state machine the first time it is touched in a leader's term, which is safe
//! because fast decisions start only once the leader has applied an entry of its own term
//! (so every earlier entry is applied too). Each allowed hit's consumed quota is queued and
//! proposed as a [`Command::Consumed`] entry; replicas `force` it into their counters, so
//! they converge on the leader's answers.
//!
//! A fresh store (new term, or after the leader lost and regained its quorum) seeds keys
//! from the replicated counters, so it may only start deciding once those counters hold
//! everything this node already granted or proposed for fast limits: its consumed hits
//! still queued or in flight, and fast-limit hits it sent down the strict path while fast
//! decisions were off. Each such hit holds an [`InFlightGuard`] until its entry applied or
//! failed; between enabling and the last guard's release the path is *draining* and fast
//! hits wait (bounded by the caller's decision timeout) instead of deciding.
//!
//! What can be lost: the hits of consumed batches not yet committed when the leader dies.
//! At most `max_inflight` batches of at most `max_hits` hits are unreplicated at any time,
//! plus the queue; losses are counted in `quorate_fast_hits_unreplicated_total`. A node
//! that loses leadership drops its fast store; the next leader rebuilds from the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use quorate_algorithms::{CounterStore, Decision, DenyReason};
use tokio::sync::{mpsc, Notify};

use super::propose::{propose_batches, BatchSettings};
use super::LeaderClock;
use crate::metrics::Metrics;
use crate::raft::state_machine::{counter_key, SharedState};
use crate::raft::typ::Raft;
use crate::raft::{Command, Hit};

/// Consumed hits queued beyond this are dropped from replication (and counted as lost)
/// rather than letting memory grow.
const CONSUMED_QUEUE: usize = 65_536;

/// The leader's fast-mode state for one term.
#[derive(Debug)]
struct FastTerm {
    term: u64,
    store: CounterStore,
}

/// Whether this node decides fast hits.
#[derive(Debug)]
enum State {
    /// Not a leader with a quorum: fast hits take the strict path.
    Off,
    /// Allowed for this term, waiting for earlier fast-limit hits to reach the replicated
    /// counters before a fresh store may seed from them.
    Draining(u64),
    On(Arc<FastTerm>),
}

/// Fast-limit hits whose consumption may not be in the replicated counters yet.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicU64,
    /// Signalled when `count` drops to zero or the state changes.
    changed: Notify,
}

/// Holds `n` hits in flight; releases them when dropped (once their entry has applied or
/// failed).
#[derive(Debug)]
pub struct InFlightGuard {
    in_flight: Arc<InFlight>,
    n: u64,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.in_flight.count.fetch_sub(self.n, Ordering::SeqCst) == self.n {
            self.in_flight.changed.notify_waiters();
        }
    }
}

/// What [`FastPath::decide`] did with a hit.
#[derive(Debug)]
pub enum FastOutcome {
    Decided(Decision),
    /// Decide it on the strict path, holding the guard until its entry applies.
    Strict(InFlightGuard),
    /// Fast decisions are about to start: wait with [`FastPath::ready`], then ask again.
    Wait,
}

#[derive(Debug)]
pub struct FastPath {
    shared: Arc<SharedState>,
    state: ArcSwap<State>,
    in_flight: Arc<InFlight>,
    clock: Arc<LeaderClock>,
    metrics: Arc<Metrics>,
    consumed: mpsc::Sender<(Hit, InFlightGuard)>,
}

impl FastPath {
    pub fn new(
        shared: Arc<SharedState>,
        raft: Raft,
        clock: Arc<LeaderClock>,
        metrics: Arc<Metrics>,
        settings: BatchSettings,
    ) -> FastPath {
        let (consumed, rx) = mpsc::channel(CONSUMED_QUEUE);
        tokio::spawn(replicate(
            rx,
            raft,
            Arc::clone(&clock),
            Arc::clone(&metrics),
            settings,
        ));
        FastPath {
            shared,
            state: ArcSwap::from_pointee(State::Off),
            in_flight: Arc::default(),
            clock,
            metrics,
            consumed,
        }
    }

    /// Counts `n` fast-limit hits in flight until the guard drops.
    pub fn hold(&self, n: u64) -> InFlightGuard {
        self.in_flight.count.fetch_add(n, Ordering::SeqCst);
        InFlightGuard {
            in_flight: Arc::clone(&self.in_flight),
            n,
        }
    }

    /// Allows fast decisions for `term` (keeps the store if already enabled for it). They
    /// start once every earlier fast-limit hit has reached the replicated counters.
    pub fn enable(&self, term: u64) {
        match &**self.state.load() {
            State::On(t) if t.term == term => return,
            State::Draining(t) if *t == term => {}
            _ => {
                self.state.store(Arc::new(State::Draining(term)));
                self.in_flight.changed.notify_waiters();
            }
        }
        self.try_start(term);
    }

    /// Draining for `term` with nothing in flight: start deciding with a fresh store.
    fn try_start(&self, term: u64) {
        let current = self.state.load_full();
        if !matches!(&*current, State::Draining(t) if *t == term)
            || self.in_flight.count.load(Ordering::SeqCst) != 0
        {
            return;
        }
        let max = self.shared.policy.load().set.max_counters;
        let on = Arc::new(State::On(Arc::new(FastTerm {
            term,
            store: CounterStore::new(max),
        })));
        let previous = self.state.compare_and_swap(&current, on);
        if Arc::ptr_eq(&previous, &current) {
            tracing::info!(term, "fast decisions enabled on this leader");
            self.in_flight.changed.notify_waiters();
        }
    }

    /// Stops fast decisions and forgets speculative state.
    pub fn disable(&self) {
        let previous = self.state.swap(Arc::new(State::Off));
        if matches!(&*previous, State::On(_)) {
            tracing::info!("fast decisions disabled: not a leader with a quorum");
        }
        self.in_flight.changed.notify_waiters();
    }

    /// Waits until fast decisions are no longer draining.
    pub async fn ready(&self) {
        loop {
            let changed = self.in_flight.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match &**self.state.load() {
                State::Draining(term) => self.try_start(*term),
                _ => return,
            }
            if !matches!(&**self.state.load(), State::Draining(_)) {
                return;
            }
            changed.await;
        }
    }

    /// Decides `hit` now if this node may; otherwise says how to proceed.
    pub fn decide(&self, hit: &Hit) -> FastOutcome {
        // Counted before the state is read, so a store that starts after this read
        // waits for this hit.
        let guard = self.hold(1);
        let term = match &**self.state.load() {
            State::On(term) => Arc::clone(term),
            State::Off => return FastOutcome::Strict(guard),
            State::Draining(_) => return FastOutcome::Wait,
        };
        let key = counter_key(&hit.limit, &hit.key);
        if term.store.get(&key).is_none() {
            if let Some(replicated) = self.shared.counters.load().get(&key) {
                term.store.seed(&key, replicated);
            }
        }
        let now = self.clock.now();
        let cap = self.shared.policy.load().set.key_cap(&hit.limit);
        let checked = term.store.check_capped(&key, cap, &hit.rate, now, hit.cost);
        let refused =
            checked.decision.denied == Some(quorate_algorithms::DenyReason::LimitKeysFull);
        self.metrics
            .observe_key_cap(&hit.limit, refused, checked.evicted);
        let decision = checked.decision;
        if decision.allowed && hit.cost > 0 && self.consumed.try_send((hit.clone(), guard)).is_err()
        {
            self.metrics.fast_hits_unreplicated.inc();
        }
        FastOutcome::Decided(decision)
    }
}

/// What [`FastPath::decide_all`] did with a request's fast hits.
#[derive(Debug)]
pub enum FastGroupOutcome {
    Decided(Vec<Decision>),
    /// Decide them on the strict path (all-or-nothing too), holding the guards until
    /// their entry applies.
    Strict(Vec<InFlightGuard>),
    /// Fast decisions are about to start: wait with [`FastPath::ready`], then ask again.
    Wait,
}

/// The fast store a mixed all-or-nothing request's fast-limit hits must reach once their
/// log entry granted them ([`FastPath::before_log`], [`FastPath::after_log`]).
#[derive(Debug)]
pub struct Absorb {
    term: Option<Arc<FastTerm>>,
}

impl FastPath {
    /// Decides one request's fast hits all-or-nothing now if this node may: all consume,
    /// or none does (the passing ones are answered as peeks). Atomic against every other
    /// fast decision on the same keys: [`CounterStore::check_all`] holds the locks of
    /// every limit involved while it decides (see its docs for what it does not promise).
    pub fn decide_all(&self, hits: &[Hit]) -> FastGroupOutcome {
        // Counted before the state is read, as in `decide`.
        let guards: Vec<InFlightGuard> = hits.iter().map(|_| self.hold(1)).collect();
        let term = match &**self.state.load() {
            State::On(term) => Arc::clone(term),
            State::Off => return FastGroupOutcome::Strict(guards),
            State::Draining(_) => return FastGroupOutcome::Wait,
        };
        let policy = self.shared.policy.load();
        let keys: Vec<String> = hits.iter().map(|h| counter_key(&h.limit, &h.key)).collect();
        let group = crate::raft::group_hits(hits, &keys, &policy.set);
        let replicated = self.shared.counters.load();
        let now = self.clock.now();
        let checked = term
            .store
            .check_all(&group, now, &|key| replicated.get(key));
        let granted = checked.iter().all(|c| c.decision.allowed);
        let mut decisions = Vec::with_capacity(hits.len());
        for ((hit, checked), guard) in hits.iter().zip(checked).zip(guards) {
            let refused = checked.decision.denied == Some(DenyReason::LimitKeysFull);
            self.metrics
                .observe_key_cap(&hit.limit, refused, checked.evicted);
            if granted && hit.cost > 0 && self.consumed.try_send((hit.clone(), guard)).is_err() {
                self.metrics.fast_hits_unreplicated.inc();
            }
            decisions.push(checked.decision);
        }
        FastGroupOutcome::Decided(decisions)
    }

    /// Before a mixed all-or-nothing request sends fast-limit `hits` down the log while
    /// this term's store decides: seeds their keys now, from replicated counters that do
    /// not hold these hits yet, so [`FastPath::after_log`] can add them exactly once.
    pub fn before_log(&self, hits: &[Hit]) -> Absorb {
        let term = match &**self.state.load() {
            State::On(term) => Arc::clone(term),
            // No live store: the next one seeds after these hits' guards are released,
            // from counters that hold them.
            _ => return Absorb { term: None },
        };
        let replicated = self.shared.counters.load();
        for hit in hits {
            let key = counter_key(&hit.limit, &hit.key);
            if term.store.get(&key).is_none() {
                if let Some(counter) = replicated.get(&key) {
                    term.store.seed(&key, counter);
                }
            }
        }
        Absorb { term: Some(term) }
    }

    /// After the log decided a mixed request: its granted fast-limit hits are added to
    /// the store they were seeded in, if it still decides, so this leader's fast counters
    /// hold everything that was granted.
    pub fn after_log(&self, absorb: Absorb, hits: &[Hit], decisions: &[Decision]) {
        let Some(term) = absorb.term else { return };
        let live = matches!(&**self.state.load(), State::On(t) if Arc::ptr_eq(t, &term));
        let granted = decisions.iter().all(|d| d.allowed);
        if !live || !granted {
            return;
        }
        let policy = self.shared.policy.load();
        let now = self.clock.now();
        for hit in hits {
            let key = counter_key(&hit.limit, &hit.key);
            let cap = policy.set.key_cap(&hit.limit);
            if term
                .store
                .force_capped(&key, cap, &hit.rate, now, hit.cost)
                .is_err()
            {
                self.metrics.observe_key_cap(&hit.limit, true, false);
            }
        }
    }
}

/// Proposes queued consumed hits in batches, through the strict path's loop but with no
/// reply.
async fn replicate(
    rx: mpsc::Receiver<(Hit, InFlightGuard)>,
    raft: Raft,
    clock: Arc<LeaderClock>,
    metrics: Arc<Metrics>,
    settings: BatchSettings,
) {
    let weight = |_: &(Hit, InFlightGuard)| 1;
    propose_batches(rx, settings, weight, |batch, _, slot| {
        // The guards are released once the entry has applied (or failed).
        let (hits, guards): (Vec<Hit>, Vec<InFlightGuard>) = batch.into_iter().unzip();
        let raft = raft.clone();
        let metrics = Arc::clone(&metrics);
        let ts = clock.now();
        tokio::spawn(async move {
            let n = hits.len() as u64;
            if let Err(e) = raft.client_write(Command::Consumed { ts, hits }).await {
                metrics.fast_hits_unreplicated.inc_by(n);
                tracing::warn!(hits = n, error = %e, "fast hits could not be replicated");
            }
            drop(guards);
            drop(slot);
        });
    })
    .await;
}
