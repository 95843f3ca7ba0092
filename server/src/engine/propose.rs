//! The one propose loop of the engine: strict hits (group commit, [`super::batcher`]) and
//! fast mode's consumed hits ([`super::fast`]) both leave through it.
//!
//! The loop takes one in-flight slot, waits for the first queued item, drains whatever
//! else is already queued (up to `max_hits` by weight) and hands the batch with its slot
//! to the caller, which proposes it as one Raft entry and releases the slot once the entry
//! has applied or failed. Because only `max_inflight` entries are in flight at once, items
//! arriving while the log is busy pile up and leave together in the next entry: under
//! load batches grow, at rest a lone item leaves at once (no timer wait).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::LeaderClock;
use crate::metrics::Metrics;
use crate::raft::typ::Raft;

/// What every propose loop writes entries with: Raft, the leader's clock (each entry's
/// timestamp), the metrics and the group-commit settings.
#[derive(Clone)]
pub(super) struct Proposer {
    pub raft: Raft,
    pub clock: Arc<LeaderClock>,
    pub metrics: Arc<Metrics>,
    pub settings: BatchSettings,
}

/// Tuning of group commit.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most hits in one log entry.
    pub max_hits: usize,
    /// Most hit entries proposed but not yet applied.
    ///
    /// 1 by default, by measurement (`quorate-bench suite`, docs/benchmarks.md): openraft
    /// 0.9's core awaits the fsync of each appended entry before it handles anything else,
    /// including the answers of entries already applied, so entries never share an fsync
    /// and a second entry in flight only delays the first one's answers by its own fsync.
    /// One entry in flight lets every request that arrives during that fsync leave in the
    /// next entry: on 2 cores at 64 in flight, 1 → ≈ 31 hits per entry and 3–4× the
    /// throughput of 4 (≈ 9 hits per entry).
    pub max_inflight: usize,
    /// How long a caller waits for its decision before `UNAVAILABLE`.
    pub decision_timeout: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_hits: 1024,
            max_inflight: 1,
            decision_timeout: Duration::from_secs(2),
        }
    }
}

/// Runs until `rx` closes: each batch, its weight and its in-flight slot go to
/// `propose`, which must not block (it spawns the proposal) and drops the slot when the
/// entry has applied or failed.
pub(super) async fn propose_batches<T>(
    mut rx: mpsc::Receiver<T>,
    settings: BatchSettings,
    weight: impl Fn(&T) -> usize,
    mut propose: impl FnMut(Vec<T>, usize, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(settings.max_inflight.max(1)));
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let Some((batch, total)) = next_batch(&mut rx, settings.max_hits, &weight).await else {
            return;
        };
        propose(batch, total, slot);
    }
}

/// Waits for one item, then takes whatever else is already queued until the batch weighs
/// `max_weight`. Returns the batch and its weight; `None` once the channel is closed.
async fn next_batch<T>(
    rx: &mut mpsc::Receiver<T>,
    max_weight: usize,
    weight: impl Fn(&T) -> usize,
) -> Option<(Vec<T>, usize)> {
    let first = rx.recv().await?;
    let mut total = weight(&first);
    let mut batch = vec![first];
    while total < max_weight {
        match rx.try_recv() {
            Ok(item) => {
                total += weight(&item);
                batch.push(item);
            }
            Err(_) => break,
        }
    }
    Some((batch, total))
}
