//! The `fast` consistency mode: the leader answers from memory and replicates behind.
//!
//! The leader keeps its own counter store for fast limits. A key is seeded from the
//! replicated state machine the first time it is touched in a leader's term, which is safe
//! because fast decisions start only once the leader has applied an entry of its own term
//! (so every earlier entry is applied too). Each allowed hit's consumed quota is queued and
//! proposed as a [`Command::Consumed`] entry; replicas `force` it into their counters, so
//! they converge on the leader's answers.
//!
//! What can be lost: the hits of consumed batches not yet committed when the leader dies.
//! At most `max_inflight` batches of at most `max_hits` hits are unreplicated at any time,
//! plus the queue; losses are counted in `quorate_fast_hits_unreplicated_total`. A node
//! that loses leadership drops its fast store; the next leader rebuilds from the log.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use quorate_algorithms::{CounterStore, Decision};
use tokio::sync::{mpsc, Semaphore};

use super::{BatchSettings, LeaderClock};
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

#[derive(Debug)]
pub struct FastPath {
    shared: Arc<SharedState>,
    current: ArcSwapOption<FastTerm>,
    clock: Arc<LeaderClock>,
    metrics: Arc<Metrics>,
    consumed: mpsc::Sender<Hit>,
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
            current: ArcSwapOption::empty(),
            clock,
            metrics,
            consumed,
        }
    }

    /// Allows fast decisions for `term` (keeps the store if already enabled for it).
    pub fn enable(&self, term: u64) {
        if self.current.load().as_ref().is_some_and(|t| t.term == term) {
            return;
        }
        let max = self.shared.policy.load().set.max_counters;
        self.current.store(Some(Arc::new(FastTerm {
            term,
            store: CounterStore::new(max),
        })));
        tracing::info!(term, "fast decisions enabled on this leader");
    }

    /// Stops fast decisions and forgets speculative state.
    pub fn disable(&self) {
        if self.current.swap(None).is_some() {
            tracing::info!("fast decisions disabled: not a leader with a quorum");
        }
    }

    /// Decides `hit` now, or `None` when this node may not decide fast hits (the caller
    /// then takes the strict path).
    pub fn decide(&self, hit: &Hit) -> Option<Decision> {
        let term = self.current.load_full()?;
        let key = counter_key(&hit.limit, &hit.key);
        if term.store.get(&key).is_none() {
            if let Some(replicated) = self.shared.counters.load().get(&key) {
                term.store.seed(&key, replicated);
            }
        }
        let now = self.clock.now();
        let decision = term.store.check(&key, &hit.rate, now, hit.cost);
        if decision.allowed && hit.cost > 0 && self.consumed.try_send(hit.clone()).is_err() {
            self.metrics.fast_hits_unreplicated.inc();
        }
        Some(decision)
    }
}

/// Proposes queued consumed hits in batches, like the strict batcher but with no reply.
async fn replicate(
    mut rx: mpsc::Receiver<Hit>,
    raft: Raft,
    clock: Arc<LeaderClock>,
    metrics: Arc<Metrics>,
    settings: BatchSettings,
) {
    let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some((hits, _)) =
            super::batcher::next_batch(&mut rx, settings.max_hits, |_: &Hit| 1).await
        else {
            return;
        };
        let raft = raft.clone();
        let metrics = Arc::clone(&metrics);
        let ts = clock.now();
        tokio::spawn(async move {
            let n = hits.len() as u64;
            if let Err(e) = raft.client_write(Command::Consumed { ts, hits }).await {
                metrics.fast_hits_unreplicated.inc_by(n);
                tracing::warn!(hits = n, error = %e, "fast hits could not be replicated");
            }
            drop(slot);
        });
    }
}
