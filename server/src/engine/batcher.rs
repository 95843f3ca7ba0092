//! Group commit for strict hits: many concurrent requests, one Raft entry.
//!
//! Requests queue on a channel. The batcher takes one in-flight slot, waits for the first
//! request, drains whatever else is already queued (up to `max_hits`), and proposes it all
//! as one [`Command::Requests`] entry (each request's hits kept together, so an atomic
//! request is decided all-or-nothing at apply). Because only `max_inflight` entries are in flight at
//! once, requests arriving while the log is busy pile up and leave together in the next
//! entry: under load batches grow, at rest a lone request leaves at once (no timer wait).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::fast::InFlightGuard;
use super::propose::{propose_batches, BatchSettings, Proposer};
use super::{EngineError, LeaderClock};
use crate::metrics::Metrics;
use crate::raft::typ::{ClientWriteError, Raft, RaftError};
use quorate_algorithms::Decision;

use crate::raft::{Command, CommandResponse, Hit, HitRequest};

/// Requests queued beyond this make callers wait: the queue cannot grow without bound.
const QUEUE_DEPTH: usize = 8192;

type Reply = oneshot::Sender<Result<Vec<Decision>, EngineError>>;

struct Pending {
    hits: Vec<Hit>,
    /// Decide these hits all-or-nothing.
    atomic: bool,
    reply: Reply,
    /// Released once the entry has applied or failed, even if the caller gave up.
    guards: Vec<InFlightGuard>,
}

/// The sending side; cheap to share.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("hits", &self.hits.len())
            .finish()
    }
}

impl Batcher {
    pub fn start(
        raft: Raft,
        clock: Arc<LeaderClock>,
        metrics: Arc<Metrics>,
        settings: BatchSettings,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(
            rx,
            Proposer {
                raft,
                clock,
                metrics,
                settings,
            },
        ));
        Batcher { tx }
    }

    /// Queues `hits` for the next entry and waits for their outcomes, in order; `atomic`
    /// hits are decided all-or-nothing. `guards` are held until the entry has applied or
    /// failed.
    pub async fn submit(
        &self,
        hits: Vec<Hit>,
        atomic: bool,
        guards: Vec<InFlightGuard>,
    ) -> Result<Vec<Decision>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                hits,
                atomic,
                reply,
                guards,
            })
            .await
            .map_err(|_| EngineError::Internal("batcher stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::Internal("batch dropped without an answer".into()))?
    }
}

async fn run(rx: mpsc::Receiver<Pending>, proposer: Proposer) {
    let weight = |p: &Pending| p.hits.len();
    propose_batches(rx, proposer.settings, weight, |batch, total, slot| {
        proposer.metrics.batch_hits.observe(total as f64);
        let raft = proposer.raft.clone();
        let ts = proposer.clock.now();
        let metrics = Arc::clone(&proposer.metrics);
        tokio::spawn(async move {
            let mut requests = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            let mut guards = Vec::new();
            for p in batch {
                replies.push((p.hits.len(), p.reply));
                requests.push(HitRequest {
                    atomic: p.atomic,
                    hits: p.hits,
                });
                guards.extend(p.guards);
            }
            let proposed = std::time::Instant::now();
            let result = raft.client_write(Command::Requests { ts, requests }).await;
            metrics
                .batch_commit_seconds
                .observe(proposed.elapsed().as_secs_f64());
            drop(guards);
            drop(slot);
            match result {
                Ok(resp) => match resp.data {
                    CommandResponse::Decisions(outcomes) if outcomes.len() == total => {
                        let mut outcomes = outcomes.into_iter();
                        for (n, reply) in replies {
                            let _ = reply.send(Ok(outcomes.by_ref().take(n).collect()));
                        }
                    }
                    other => {
                        tracing::error!(?other, "hit batch applied with an unexpected response");
                        fail_all(
                            replies,
                            EngineError::Internal("unexpected apply response".into()),
                        );
                    }
                },
                Err(e) => fail_all(replies, write_error(e)),
            }
        });
    })
    .await;
}

fn fail_all(replies: Vec<(usize, Reply)>, err: EngineError) {
    for (_, reply) in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Maps a failed proposal to what the caller should hear.
pub(super) fn write_error(e: RaftError<ClientWriteError>) -> EngineError {
    match e {
        // openraft answers ForwardToLeader before appending, or after truncating the
        // uncommitted entry: either way the hits were not counted.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            EngineError::not_applied("leadership moved: retry at the leader", f.leader_node)
        }
        RaftError::APIError(other) => EngineError::Internal(other.to_string()),
        RaftError::Fatal(f) => EngineError::unavailable(format!("raft stopped: {f}"), None),
    }
}
