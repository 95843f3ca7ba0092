//! The decision engine: turns hits into decisions through the replicated log.
//!
//! One path for every hit, top to bottom:
//! 1. resolve each hit's limit in the live policy (unknown → `NOT_FOUND`);
//! 2. on a follower, forward the whole request to the leader;
//! 3. on the leader, `strict` hits join the next [`Command::Hits`] batch (group commit:
//!    one Raft entry, one fsync, for every request that arrived meanwhile) and are decided
//!    when the batch applies; `fast` hits are decided at once from the leader's memory and
//!    their consumed quota joins the next [`Command::Consumed`] batch.
//!
//! A leader that lost its quorum cannot commit, so its strict hits time out as
//! `UNAVAILABLE` and are never granted. Fast hits stop too once the leader has not heard
//! from a quorum for an election timeout.

mod batcher;
mod fast;
mod forward;
mod leadership;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_algorithms::{Decision, Nanos};
use thiserror::Error;

use crate::metrics::Metrics;
use crate::policy::Consistency;
use crate::raft::state_machine::SharedState;
use crate::raft::typ::Raft;
use crate::raft::{Hit, HitOutcome, Node, NodeId};

pub use batcher::BatchSettings;
pub use forward::FORWARDED_HEADER;
pub use leadership::Leadership;

/// Why the engine could not decide.
#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The request is malformed; the message names the bad field.
    #[error("{0}")]
    InvalidArgument(String),
    /// A hit names a limit the live policy does not have.
    #[error("unknown limit {0:?}")]
    UnknownLimit(String),
    /// No leader, no quorum, or the leader could not be reached. `leader` is a hint.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        leader: Option<Node>,
    },
    /// Anything else; logged where it happens.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub(crate) fn unavailable(reason: impl Into<String>, leader: Option<Node>) -> EngineError {
        EngineError::Unavailable {
            reason: reason.into(),
            leader,
        }
    }
}

/// The leader's clock for stamping entries: wall time, never running backwards.
#[derive(Debug, Default)]
pub struct LeaderClock {
    last: AtomicU64,
}

/// Wall-clock time in [`Nanos`]; only leaders stamp entries with it.
pub fn wall_nanos() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LeaderClock {
    pub fn now(&self) -> Nanos {
        let wall = wall_nanos();
        let prev = self.last.fetch_max(wall, Ordering::Relaxed);
        wall.max(prev)
    }
}

/// Decides hits for one node.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<SharedState>,
    leadership: Arc<Leadership>,
    strict: batcher::Batcher,
    fast: Arc<fast::FastPath>,
    forwarder: forward::Forwarder,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl Engine {
    /// Starts the engine's background tasks (batchers, leadership watcher) for `raft`.
    pub fn start(
        raft: Raft,
        node_id: NodeId,
        shared: Arc<SharedState>,
        metrics: Arc<Metrics>,
        settings: BatchSettings,
    ) -> Engine {
        let clock = Arc::new(LeaderClock::default());
        let fast = Arc::new(fast::FastPath::new(
            Arc::clone(&shared),
            raft.clone(),
            Arc::clone(&clock),
            Arc::clone(&metrics),
            settings,
        ));
        let leadership = Leadership::watch(
            raft.clone(),
            node_id,
            Arc::clone(&fast),
            Arc::clone(&metrics),
        );
        let strict = batcher::Batcher::start(raft, clock, Arc::clone(&metrics), settings);
        Engine {
            shared,
            leadership,
            strict,
            fast,
            forwarder: forward::Forwarder::default(),
            metrics,
            timeout: settings.decision_timeout,
        }
    }

    /// The live policy.
    pub fn policy(&self) -> Arc<crate::raft::state_machine::LivePolicy> {
        self.shared.policy.load_full()
    }

    /// The replicated state other surfaces read (counters, policy history).
    pub fn shared(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// Who leads, as this node last saw it.
    pub fn leadership(&self) -> &Arc<Leadership> {
        &self.leadership
    }

    /// Decides every hit, in order. `forwarded` marks a request a follower already
    /// forwarded here, so it is never forwarded twice.
    pub async fn check(
        &self,
        hits: Vec<Hit>,
        forwarded: bool,
    ) -> Result<Vec<Decision>, EngineError> {
        let consistency = self.resolve(&hits)?;
        if !self.leadership.is_leader() {
            if forwarded {
                return Err(EngineError::unavailable(
                    "this node is not the leader",
                    self.leadership.leader_node(),
                ));
            }
            let leader = self
                .leadership
                .leader_node()
                .ok_or_else(|| EngineError::unavailable("no leader elected yet", None))?;
            return self.forwarder.check(leader, hits, self.timeout).await;
        }
        let decided = tokio::time::timeout(self.timeout, self.decide(hits, &consistency))
            .await
            .map_err(|_| {
                self.metrics.decision_timeouts.inc();
                EngineError::unavailable(
                    "no quorum: the hit could not be committed in time",
                    self.leadership.leader_node(),
                )
            })??;
        for d in &decided {
            self.metrics.observe_decision(d);
        }
        Ok(decided)
    }

    /// The consistency of each hit's limit; fails on the first unknown limit.
    fn resolve(&self, hits: &[Hit]) -> Result<Vec<Consistency>, EngineError> {
        let policy = self.shared.policy.load();
        hits.iter()
            .map(|hit| {
                policy
                    .set
                    .limit(&hit.limit)
                    .map(|def| def.consistency)
                    .ok_or_else(|| {
                        self.metrics.unknown_limits.inc();
                        EngineError::UnknownLimit(hit.limit.clone())
                    })
            })
            .collect()
    }

    async fn decide(
        &self,
        hits: Vec<Hit>,
        consistency: &[Consistency],
    ) -> Result<Vec<Decision>, EngineError> {
        // Fast hits are answered here and now when this leader may; the rest go to Raft.
        let mut decided: Vec<Option<Decision>> = vec![None; hits.len()];
        let mut strict = Vec::new();
        let mut strict_slots = Vec::new();
        for (i, (hit, c)) in hits.into_iter().zip(consistency).enumerate() {
            let fast = match c {
                Consistency::Fast => self.fast.decide(&hit),
                Consistency::Strict => None,
            };
            match fast {
                Some(d) => decided[i] = Some(d),
                None => {
                    strict.push(hit);
                    strict_slots.push(i);
                }
            }
        }
        if !strict.is_empty() {
            let outcomes = self.strict.submit(strict).await?;
            for (slot, outcome) in strict_slots.into_iter().zip(outcomes) {
                match outcome {
                    HitOutcome::Decided(d) => decided[slot] = Some(d),
                    // The policy changed between resolve and apply.
                    HitOutcome::UnknownLimit => {
                        return Err(EngineError::UnknownLimit(format!("(limit of hit #{slot})")))
                    }
                }
            }
        }
        decided
            .into_iter()
            .map(|d| d.ok_or_else(|| EngineError::Internal("a hit was left undecided".into())))
            .collect()
    }
}
