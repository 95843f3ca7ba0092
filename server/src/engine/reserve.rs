//! The `strict` consistency mode: hits answered from memory within durable reservations.
//!
//! The log records reservations, not hits. For a key, the leader commits a
//! [`Command::Reserve`] entry — "key K may have been granted up to R more" — which every
//! replica counts as consumed when it applies (see `quorate_algorithms::reservation` for
//! why that record is never less strict than any way of spending it). The leader then
//! answers hits within R from memory, with no commit each. So:
//!
//! - **overshoot is 0 across any failover**: every acknowledged grant is covered by a
//!   committed reservation, and a new leader counts every earlier reservation as fully
//!   used; an old leader cut off from its quorum can only spend what is already counted;
//! - **under-grant** on failover is the unused part of the reservations held at that
//!   moment: per key at most `fraction_percent` of the limit (the sizing, below), plus for
//!   a token bucket the refill of one reservation's lifetime;
//! - `remaining` is the leader's own view of the key (seeded from the replicated counter,
//!   plus every hit it granted), so it stays exact, and denials come from it at once.
//!
//! **Sizing** ([`quorate_algorithms::ReserveRequest`]): a reservation asks for the hits
//! waiting on it plus the key's recent demand over the policy's `horizon` (as much again
//! as waits, for a key new to this leader), and the state machine grants no more than `fraction_percent`
//! of the headroom left after those hits — so near the limit reservations shrink to
//! exactly the waiting hits: a commit per hit, decided exactly.
//!
//! A request's hits are decided together (all-or-nothing when `atomic`): every hit is
//! checked against the leader's view, then, if some key lacks reservation, one
//! reservation per such key is proposed (concurrent requests on a key share one) and the
//! request is decided again once they applied. A reservation the ledger refuses denies
//! the hits that needed it, with the ledger's answer.
//!
//! Reservations leave through their own propose loop (group commit, like strict hits),
//! so a burst of new keys costs one entry per batch, not one per key.
//!
//! **Settling.** Credit the leader can no longer spend — its window ended, the key went
//! idle for a `horizon`, the limit's rate changed, or the node is shutting down — is
//! taken out of memory and given back with a [`Command::Settle`] entry, which refunds it
//! from the counting bucket it was recorded in. A sliding window's next window then
//! weighs only what was spent, and a crash after an idle spell loses nothing. Settling
//! is best effort: a settle that never commits only leaves quota counted (under-grant).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use quorate_algorithms::{
    counter_key, Algorithm, CounterState, Decision, Nanos, Rate, ReserveRequest, Reserved,
};
use tokio::sync::{mpsc, Notify};

use super::batcher::write_error;
use super::propose::{propose_batches, BatchSettings, Proposer};
use super::{EngineError, LeaderClock};
use crate::metrics::Metrics;
use crate::raft::state_machine::SharedState;
use crate::raft::typ::Raft;
use crate::raft::{Command, CommandResponse, Hit, ReserveItem, SettleItem};

/// Reservation requests queued beyond this make callers wait.
const QUEUE_DEPTH: usize = 8192;

/// How often a request is decided again after waiting for reservations before it gives
/// up (only reached when concurrent requests keep taking the fresh reservations first).
const MAX_ROUNDS: usize = 8;

/// Shortest span a demand estimate is taken over.
const MIN_DEMAND_SPAN: Nanos = 1_000_000;

/// How often the leader looks for credit to settle (expired, or idle for a horizon).
const SETTLE_EVERY: Duration = Duration::from_millis(250);

/// How long a shutting-down leader waits for its last settle to commit.
const SETTLE_ON_SHUTDOWN: Duration = Duration::from_secs(1);

/// Whether a hit can be decided from reservations: `strict` hits of the windowed
/// algorithms (fixed window, sliding window). The sliding log remembers each hit at its
/// own instant. The token bucket is reservable in `quorate_algorithms::reservation`, but
/// a reservation there must be recorded at the end of its lifetime, which near the limit
/// (one hit per reservation) delays the ledger's refill by that lifetime each time: until
/// that is solved its `strict` hits are decided like `exact` ones.
pub fn reservable(hit: &Hit) -> bool {
    matches!(
        hit.rate.algorithm(),
        Algorithm::FixedWindow | Algorithm::SlidingWindow
    )
}

/// What became of a reservation, as the hits waiting for it see it.
type Outcome = Result<Reserved, EngineError>;

/// A reservation's outcome, once known, for every request waiting on it. (Not a
/// `tokio::sync::watch`: its waiters wake in a random order, and the simulator needs runs
/// to replay exactly.)
#[derive(Debug, Default)]
struct OutcomeCell {
    outcome: std::sync::OnceLock<Outcome>,
    known: Notify,
}

impl OutcomeCell {
    fn set(&self, outcome: Outcome) {
        let _ = self.outcome.set(outcome);
        self.known.notify_waiters();
    }

    async fn wait(&self) -> Outcome {
        loop {
            let known = self.known.notified();
            tokio::pin!(known);
            known.as_mut().enable();
            if let Some(outcome) = self.outcome.get() {
                return outcome.clone();
            }
            known.await;
        }
    }
}

/// The leader's state of one key in its term.
#[derive(Debug)]
struct KeyState {
    /// The hit's limit and key, which a settle names.
    limit: String,
    key: String,
    /// The leader's view: the replicated counter when first touched, plus every hit
    /// this leader granted since. Decides hits and reports `remaining`.
    view: CounterState,
    /// Reserved quota not yet spent, usable at instants in `[valid_from, valid_until)`
    /// for hits of `rate`.
    credit: u64,
    valid_from: Nanos,
    valid_until: Nanos,
    rate: Rate,
    /// A reservation in flight for this key: requests short of credit wait for it.
    pending: Option<Arc<OutcomeCell>>,
    /// Demand since the last reservation request: (since, cost granted).
    demand_since: Nanos,
    demand: u64,
    /// Whether a reservation was ever asked for in this term (a new key has no demand
    /// estimate yet).
    asked: bool,
    /// What the replicated counter had left after this leader's last reservation on the
    /// key (its own credit counted as used), known until `ledger_until`. Quota can only
    /// come back to a key with time (a sliding window's decay, a bucket's refill), so
    /// this is a lower bound meanwhile: `ledger_left + credit` is what this leader can
    /// still grant without asking.
    ledger_left: u64,
    ledger_until: Nanos,
}

impl KeyState {
    fn credit_at(&self, rate: &Rate, now: Nanos) -> u64 {
        if self.rate == *rate && self.valid_from <= now && now < self.valid_until {
            self.credit
        } else {
            0
        }
    }

    /// What this leader can grant for `rate` at `now` without asking the ledger, when
    /// known.
    fn grantable(&self, rate: &Rate, now: Nanos) -> Option<u64> {
        (self.rate == *rate && now < self.ledger_until)
            .then(|| self.ledger_left.saturating_add(self.credit_at(rate, now)))
    }

    fn idle(&self, now: Nanos) -> bool {
        self.pending.is_none() && self.valid_until <= now && self.view.idle_at(&self.rate) <= now
    }

    /// Takes all credit out of memory, to be settled: this leader never spends it again.
    fn give_back(&mut self) -> Option<SettleItem> {
        if self.credit == 0 {
            return None;
        }
        let unused = std::mem::take(&mut self.credit);
        // Within the same bucket the ledger gets it back once the settle applies.
        if self.ledger_until == self.valid_until {
            self.ledger_left = self.ledger_left.saturating_add(unused);
        }
        Some(SettleItem {
            limit: self.limit.clone(),
            key: self.key.clone(),
            rate: self.rate,
            valid_until: self.valid_until,
            unused,
        })
    }
}

/// One leader term's reservations and views.
#[derive(Debug)]
struct Term {
    term: u64,
    keys: Mutex<HashMap<String, KeyState>>,
    /// Sweep idle keys once the map holds this many.
    sweep_at: AtomicUsize,
    /// Where credit given back goes to be settled.
    settle: mpsc::Sender<SettleItem>,
}

impl Term {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, KeyState>> {
        // A panic while held leaves at worst a stale view, which only under-grants.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the credit of every key `which` picks out of memory, in key order (so a
    /// simulated run replays the same log).
    fn give_back(&self, which: impl Fn(&KeyState) -> bool) -> Vec<SettleItem> {
        let mut items: Vec<SettleItem> = self
            .lock()
            .values_mut()
            .filter(|s| which(s))
            .filter_map(KeyState::give_back)
            .collect();
        items.sort_by(|a, b| (&a.limit, &a.key).cmp(&(&b.limit, &b.key)));
        items
    }

    /// Queues a settle; when the queue is full the quota simply stays counted.
    fn settle(&self, item: Option<SettleItem>) {
        if let Some(item) = item {
            let _ = self.settle.try_send(item);
        }
    }
}

#[derive(Debug)]
enum State {
    Off,
    On(Arc<Term>),
}

/// A reservation on its way into the log.
#[derive(Debug)]
struct Pending {
    term: Arc<Term>,
    key: String,
    item: ReserveItem,
    done: Arc<OutcomeCell>,
}

/// What [`Reservations::decide`] did.
#[derive(Debug)]
pub enum Decided {
    Decisions(Vec<Decision>),
    /// This node does not decide from reservations now (not a caught-up leader, or its
    /// key table is full): decide on the exact path instead.
    NotHere,
}

/// The reservations of this node while it leads.
pub struct Reservations {
    shared: Arc<SharedState>,
    state: Arc<ArcSwap<State>>,
    clock: Arc<LeaderClock>,
    tx: mpsc::Sender<Pending>,
    settle_tx: mpsc::Sender<SettleItem>,
    raft: Raft,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Reservations {
    pub fn start(
        shared: Arc<SharedState>,
        raft: Raft,
        clock: Arc<LeaderClock>,
        metrics: Arc<Metrics>,
        settings: BatchSettings,
    ) -> Reservations {
        let proposer = Proposer {
            raft: raft.clone(),
            clock: Arc::clone(&clock),
            metrics,
            settings,
        };
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(rx, proposer.clone()));
        let (settle_tx, settle_rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_settles(settle_rx, proposer));
        let state = Arc::new(ArcSwap::from_pointee(State::Off));
        tokio::spawn(settle_unused(
            Arc::downgrade(&state),
            Arc::clone(&shared),
            Arc::clone(&clock),
        ));
        Reservations {
            shared,
            state,
            clock,
            tx,
            settle_tx,
            raft,
        }
    }

    /// Starts deciding for `term` (keeps the state if already on for it). Called once the
    /// leader has applied an entry of its own term, so every earlier reservation is in the
    /// replicated counters the views are seeded from.
    pub fn enable(&self, term: u64) {
        if matches!(&**self.state.load(), State::On(t) if t.term == term) {
            return;
        }
        let max = self.shared.policy.load().set.max_counters;
        self.state.store(Arc::new(State::On(Arc::new(Term {
            term,
            keys: Mutex::new(HashMap::new()),
            sweep_at: AtomicUsize::new(max.clamp(1024, 1 << 16)),
            settle: self.settle_tx.clone(),
        }))));
        tracing::info!(
            term,
            "strict decisions from reservations enabled on this leader"
        );
    }

    /// Stops deciding; unused reservations stay counted (under-granted, never over).
    pub fn disable(&self) {
        let previous = self.state.swap(Arc::new(State::Off));
        if matches!(&*previous, State::On(_)) {
            tracing::info!("strict decisions from reservations disabled: not a leader");
        }
    }

    /// Stops deciding and settles every unused credit, waiting up to a second for the
    /// settle to commit: a leader shutting down gracefully leaves the next one its quota.
    pub async fn settle_all(&self) {
        let State::On(term) = &*self.state.swap(Arc::new(State::Off)) else {
            return;
        };
        let items = term.give_back(|_| true);
        if items.is_empty() {
            return;
        }
        let count = items.len();
        let settle = Command::Settle {
            ts: self.clock.now(),
            items,
        };
        match tokio::time::timeout(SETTLE_ON_SHUTDOWN, self.raft.client_write(settle)).await {
            Ok(Ok(_)) => tracing::info!(keys = count, "settled unused reservations"),
            Ok(Err(e)) => tracing::warn!(error = %e, "unused reservations not settled"),
            Err(_) => tracing::warn!("unused reservations not settled in time"),
        }
    }

    /// Decides `hits` (all reservable), all-or-nothing when `atomic`.
    pub async fn decide(&self, hits: &[Hit], atomic: bool) -> Result<Decided, EngineError> {
        // Ledger refusals seen by this request, by key: they deny hits short of credit.
        let mut refused: HashMap<String, Decision> = HashMap::new();
        for _ in 0..MAX_ROUNDS {
            let term = match &**self.state.load() {
                State::On(term) => Arc::clone(term),
                State::Off => return Ok(Decided::NotHere),
            };
            let waits = match self.round(&term, hits, atomic, &refused)? {
                Round::Done(decisions) => return Ok(Decided::Decisions(decisions)),
                Round::NotHere => return Ok(Decided::NotHere),
                Round::Wait(waits) => waits,
            };
            for (key, cell, mine) in waits {
                match cell.wait().await {
                    Ok(r) if r.granted == 0 && mine => {
                        refused.insert(key, r.decision);
                    }
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(EngineError::unavailable(
            "reservations contended: try again",
            None,
        ))
    }

    /// One attempt at deciding `hits` under the term's lock.
    fn round(
        &self,
        term: &Arc<Term>,
        hits: &[Hit],
        atomic: bool,
        refused: &HashMap<String, Decision>,
    ) -> Result<Round, EngineError> {
        let mut keys = term.lock();
        // Read under the lock: a reservation's credit is inserted under it after the
        // clock has seen the reservation's log time, so `now` is never before it.
        let now = self.clock.now();
        // This request's working copy of each key it touches, and the credit it uses.
        let mut work: BTreeMap<String, (CounterState, u64)> = BTreeMap::new();
        let mut decisions = Vec::with_capacity(hits.len());
        let mut denied = false;
        // Ordered, so reservations are proposed in the same order on every run (the
        // simulator replays seeds).
        let mut short: BTreeMap<String, (u64, &Hit)> = BTreeMap::new();
        for hit in hits {
            let key = counter_key(&hit.limit, &hit.key);
            // A policy change gave the key another rate: start again from the ledger.
            let stale = keys.get(&key).is_some_and(|s| {
                s.rate != hit.rate && s.pending.is_none() && !work.contains_key(&key)
            });
            if stale {
                term.settle(keys.remove(&key).and_then(|mut s| s.give_back()));
            }
            if !keys.contains_key(&key) {
                if keys.len() >= term.sweep_at.load(Ordering::Relaxed) {
                    sweep(term, &mut keys, now);
                    if keys.len() >= self.shared.policy.load().set.max_counters {
                        return Ok(Round::NotHere);
                    }
                }
                keys.insert(key.clone(), self.seed(&key, hit, now));
            }
            let Some(state) = keys.get(&key) else {
                return Err(EngineError::Internal("key vanished under lock".into()));
            };
            let (view, used) = work
                .entry(key.clone())
                .or_insert_with(|| (state.view.clone(), 0));
            let mut trial = view.clone();
            let mut decision = trial.check(&hit.rate, now, hit.cost);
            // What the ledger still lets this leader grant bounds `remaining` (the
            // view does not count earlier leaders' unused reservations).
            let grantable = state
                .grantable(&hit.rate, now)
                .map(|g| g.saturating_sub(*used));
            if let Some(g) = grantable {
                let left_after = g.saturating_sub(if decision.allowed { hit.cost } else { 0 });
                decision.remaining = decision.remaining.min(left_after);
            }
            if !decision.allowed {
                denied = true;
                decisions.push(decision);
                continue;
            }
            // A fixed window's ledger only changes within its window by this leader's
            // own reservations: when it has not enough left, deny without asking.
            if hit.rate.algorithm() == Algorithm::FixedWindow
                && grantable.is_some_and(|g| g < hit.cost)
            {
                denied = true;
                decisions.push(Decision {
                    allowed: false,
                    remaining: grantable.unwrap_or(0),
                    retry_after: Some(state.ledger_until.saturating_sub(now)),
                    denied: Some(quorate_algorithms::DenyReason::OverLimit),
                    ..decision
                });
                continue;
            }
            let credit = state.credit_at(&hit.rate, now).saturating_sub(*used);
            if hit.cost > credit {
                if let Some(ledger) = refused.get(&key) {
                    // The ledger already refused this key for this request.
                    denied = true;
                    decisions.push(Decision {
                        remaining: ledger
                            .remaining
                            .saturating_add(credit)
                            .min(decision.remaining),
                        ..*ledger
                    });
                    continue;
                }
                short.entry(key.clone()).or_insert((0, hit)).0 += hit.cost - credit;
            }
            *view = trial;
            *used = used.saturating_add(hit.cost);
            decisions.push(decision);
        }
        if denied && atomic {
            // Nothing is consumed for an atomic request that is denied: report the hits
            // that would have passed as peeks.
            for (hit, d) in hits.iter().zip(decisions.iter_mut()) {
                if d.allowed {
                    let key = counter_key(&hit.limit, &hit.key);
                    if let Some(state) = keys.get(&key) {
                        *d = state.view.clone().check(&hit.rate, now, 0);
                    }
                }
            }
            return Ok(Round::Done(decisions));
        }
        if !short.is_empty() {
            let mut waits = Vec::with_capacity(short.len());
            for (key, (need, hit)) in short {
                let Some(state) = keys.get_mut(&key) else {
                    continue;
                };
                if let Some(cell) = &state.pending {
                    waits.push((key, Arc::clone(cell), false));
                    continue;
                }
                let set = &self.shared.policy.load().set;
                let horizon = set.reservations.horizon;
                let extra_cap = if state.asked {
                    let span = now.saturating_sub(state.demand_since).max(MIN_DEMAND_SPAN);
                    let per_horizon =
                        u128::from(state.demand) * u128::from(horizon) / u128::from(span);
                    u64::try_from(per_horizon.saturating_mul(2)).unwrap_or(u64::MAX)
                } else {
                    // A key new to this leader has no demand estimate: ask for twice what
                    // waits, and size the next reservation by what it then sees. Taking
                    // `fraction_percent` of the headroom at once would be lost whole if
                    // this leader died soon after (measured: ~10 % of the headroom per
                    // kill in tests/tests/failover_loop.rs).
                    need
                };
                state.asked = true;
                state.demand = 0;
                state.demand_since = now;
                let done = Arc::new(OutcomeCell::default());
                state.pending = Some(Arc::clone(&done));
                let item = ReserveItem {
                    limit: hit.limit.clone(),
                    key: hit.key.clone(),
                    rate: hit.rate,
                    request: ReserveRequest {
                        need,
                        extra_cap,
                        fraction_percent: set.reservation_percent(&hit.limit),
                        horizon,
                    },
                };
                let pending = Pending {
                    term: Arc::clone(term),
                    key: key.clone(),
                    item,
                    done: Arc::clone(&done),
                };
                if self.tx.try_send(pending).is_err() {
                    state.pending = None;
                    return Err(EngineError::not_applied(
                        "reservation queue full: the leader is saturated",
                        None,
                    ));
                }
                waits.push((key, done, true));
            }
            return Ok(Round::Wait(waits));
        }
        // Every hit is allowed (or, not atomic, the denied ones consume nothing) and
        // covered: spend.
        for (key, (view, used)) in work {
            if let Some(state) = keys.get_mut(&key) {
                state.view = view;
                state.credit = state.credit.saturating_sub(used);
                state.demand = state.demand.saturating_add(used);
            }
        }
        Ok(Round::Done(decisions))
    }

    /// A key's state when first touched in this term: the replicated counter, which
    /// counts every reservation of earlier terms as used.
    fn seed(&self, key: &str, hit: &Hit, now: Nanos) -> KeyState {
        let rate = &hit.rate;
        let view = self
            .shared
            .counters
            .load()
            .get(key)
            .map(|c| c.state)
            .filter(|s| s.runs(rate))
            .unwrap_or_else(|| CounterState::new(rate));
        KeyState {
            limit: hit.limit.clone(),
            key: hit.key.clone(),
            view,
            credit: 0,
            valid_from: now,
            valid_until: now,
            rate: *rate,
            pending: None,
            demand_since: now,
            demand: 0,
            asked: false,
            ledger_left: 0,
            ledger_until: now,
        }
    }
}

enum Round {
    Done(Vec<Decision>),
    NotHere,
    /// Reservations to wait for: key, outcome, and whether this request asked for it
    /// (only its own refusals deny its hits: another request may have needed more).
    Wait(Vec<(String, Arc<OutcomeCell>, bool)>),
}

/// Drops keys with no live reservation whose view has gone idle (they would be seeded
/// again from the replicated counter, which is at least as strict). If the table is
/// still large, the next sweep waits until it has doubled.
fn sweep(term: &Term, keys: &mut HashMap<String, KeyState>, now: Nanos) {
    keys.retain(|_, state| {
        let idle = state.idle(now);
        if idle {
            term.settle(state.give_back());
        }
        !idle
    });
    term.sweep_at
        .fetch_max(keys.len().saturating_mul(2), Ordering::Relaxed);
}

/// Proposes queued reservations in batches, one [`Command::Reserve`] entry each, and
/// hands every outcome to its key and its waiters.
async fn run(rx: mpsc::Receiver<Pending>, proposer: Proposer) {
    propose_batches(
        rx,
        proposer.settings,
        |_| 1,
        |batch, _, slot| {
            let raft = proposer.raft.clone();
            let clock = Arc::clone(&proposer.clock);
            let metrics = Arc::clone(&proposer.metrics);
            let ts = clock.now();
            tokio::spawn(async move {
                let items = batch.iter().map(|p| p.item.clone()).collect();
                let result = raft.client_write(Command::Reserve { ts, items }).await;
                drop(slot);
                let outcomes = match result {
                    Ok(resp) => match resp.data {
                        CommandResponse::Reserved { at, outcomes }
                            if outcomes.len() == batch.len() =>
                        {
                            // Hits spend credit only at instants from the log time on.
                            clock.observe(at);
                            Ok((at, outcomes))
                        }
                        other => {
                            tracing::error!(
                                ?other,
                                "reservation applied with an unexpected response"
                            );
                            Err(EngineError::Internal("unexpected apply response".into()))
                        }
                    },
                    Err(e) => Err(write_error(e)),
                };
                match outcomes {
                    Ok((at, outcomes)) => {
                        for (pending, reserved) in batch.into_iter().zip(outcomes) {
                            let outcome = if reserved.granted > 0 {
                                "granted"
                            } else {
                                "refused"
                            };
                            metrics.reservations.with_label_values(&[outcome]).inc();
                            metrics.reserved_quota.inc_by(reserved.granted);
                            credit(&pending, at, &reserved);
                            pending.done.set(Ok(reserved));
                        }
                    }
                    Err(e) => {
                        for pending in batch {
                            if let Some(state) = pending.term.lock().get_mut(&pending.key) {
                                state.pending = None;
                            }
                            pending.done.set(Err(e.clone()));
                        }
                    }
                }
            });
        },
    )
    .await;
}

/// Adds a committed reservation to its key's credit. Credit of the same rate that is
/// still valid is kept, usable until the earlier of both ends.
fn credit(pending: &Pending, at: Nanos, reserved: &Reserved) {
    let mut keys = pending.term.lock();
    let Some(state) = keys.get_mut(&pending.key) else {
        return;
    };
    state.pending = None;
    let rate = pending.item.rate;
    // A refusal for room (a full limit or store) says nothing about the key's quota.
    let quota_answer = reserved.granted > 0
        || reserved.decision.denied == Some(quorate_algorithms::DenyReason::OverLimit);
    if quota_answer && (state.rate == rate || state.ledger_until <= at) {
        state.ledger_left = reserved.decision.remaining;
        state.ledger_until = match rate.bucket_end(at) {
            // Within a window the ledger only moves by this leader's reservations.
            Some(end) => end,
            // A bucket refills: the figure is a lower bound for a moment only.
            None => reserved.valid_until.max(at.saturating_add(1)),
        };
    }
    if reserved.granted == 0 {
        return;
    }
    let kept = state.credit_at(&rate, at);
    if kept == 0 {
        // Credit of another bucket or rate: this leader can no longer spend it.
        pending.term.settle(state.give_back());
    }
    state.credit = kept.saturating_add(reserved.granted);
    state.valid_until = if kept > 0 {
        state.valid_until.min(reserved.valid_until)
    } else {
        reserved.valid_until
    };
    state.valid_from = at;
    state.rate = rate;
}

/// Every [`SETTLE_EVERY`], gives back the credit of the current term that has expired or
/// whose key saw no hit for a `horizon`. Ends with the [`Reservations`] it serves.
async fn settle_unused(
    state: Weak<ArcSwap<State>>,
    shared: Arc<SharedState>,
    clock: Arc<LeaderClock>,
) {
    loop {
        tokio::time::sleep(SETTLE_EVERY).await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let State::On(term) = &**state.load() else {
            continue;
        };
        let horizon = shared.policy.load().set.reservations.horizon;
        let now = clock.now();
        let items = term.give_back(|s| {
            s.pending.is_none()
                && (s.valid_until <= now
                    || (s.demand == 0 && now.saturating_sub(s.demand_since) >= horizon))
        });
        for item in items {
            term.settle(Some(item));
        }
    }
}

/// Proposes queued settles in batches, one [`Command::Settle`] entry each.
async fn run_settles(rx: mpsc::Receiver<SettleItem>, proposer: Proposer) {
    propose_batches(
        rx,
        proposer.settings,
        |_| 1,
        |items, _, slot| {
            let unused: u64 = items.iter().map(|i| i.unused).sum();
            let ts = proposer.clock.now();
            let raft = proposer.raft.clone();
            let metrics = Arc::clone(&proposer.metrics);
            tokio::spawn(async move {
                match raft.client_write(Command::Settle { ts, items }).await {
                    Ok(_) => metrics.settled_quota.inc_by(unused),
                    // Left counted: under-granted, never over.
                    Err(e) => tracing::debug!(error = %e, unused, "settle not committed"),
                }
                drop(slot);
            });
        },
    )
    .await;
}
