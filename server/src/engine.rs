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
use crate::raft::{Hit, Node, NodeId};
use serde::{Deserialize, Serialize};

pub use batcher::BatchSettings;
pub use forward::{check_forwarded, ForwardResult};
pub use leadership::Leadership;

/// A hit resolved against the policy: what goes into the log, and how to decide it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedHit {
    pub hit: Hit,
    pub consistency: Consistency,
}

/// Why the engine could not decide.
#[derive(Debug, Clone, Error, Serialize, Deserialize)]
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
        peer_auth: crate::raft::peer_auth::PeerAuth,
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
            forwarder: forward::Forwarder::new(peer_auth),
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

    /// Resolves named hits (the `quorate.v1` API) against the live policy; fails on the
    /// first unknown limit.
    pub fn resolve_named(
        &self,
        hits: Vec<(String, String, u64)>,
    ) -> Result<Vec<ResolvedHit>, EngineError> {
        let policy = self.shared.policy.load();
        hits.into_iter()
            .map(|(limit, key, cost)| match policy.set.limit(&limit) {
                Some(def) => Ok(ResolvedHit {
                    hit: Hit {
                        rate: def.rate,
                        limit,
                        key,
                        cost,
                    },
                    consistency: def.consistency,
                }),
                None => {
                    self.metrics.unknown_limits.inc();
                    Err(EngineError::UnknownLimit(limit))
                }
            })
            .collect()
    }

    /// Decides every hit, in order. `forwarded` marks a request a follower already
    /// forwarded here, so it is never forwarded twice.
    pub async fn check(
        &self,
        hits: Vec<ResolvedHit>,
        forwarded: bool,
    ) -> Result<Vec<Decision>, EngineError> {
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
            return self.forwarder.forward(leader, hits, self.timeout).await;
        }
        let decided = tokio::time::timeout(self.timeout, self.decide(hits))
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

    async fn decide(&self, hits: Vec<ResolvedHit>) -> Result<Vec<Decision>, EngineError> {
        // Fast hits are answered here and now when this leader may; the rest go to Raft.
        let mut decided: Vec<Option<Decision>> = vec![None; hits.len()];
        let mut strict = Vec::new();
        let mut strict_slots = Vec::new();
        let mut guards = Vec::new();
        for (i, resolved) in hits.into_iter().enumerate() {
            if resolved.consistency == Consistency::Fast {
                let guard = loop {
                    match self.fast.decide(&resolved.hit) {
                        fast::FastOutcome::Decided(d) => break Ok(d),
                        fast::FastOutcome::Strict(guard) => break Err(guard),
                        // Waiting while holding guards of this request's own strict
                        // hits would wait for itself: send this one strict as well.
                        fast::FastOutcome::Wait if !guards.is_empty() => {
                            break Err(self.fast.hold(1))
                        }
                        fast::FastOutcome::Wait => self.fast.ready().await,
                    }
                };
                match guard {
                    Ok(d) => {
                        decided[i] = Some(d);
                        continue;
                    }
                    Err(guard) => guards.push(guard),
                }
            }
            strict.push(resolved.hit);
            strict_slots.push(i);
        }
        if !strict.is_empty() {
            let outcomes = self.strict.submit(strict, guards).await?;
            for (slot, decision) in strict_slots.into_iter().zip(outcomes) {
                decided[slot] = Some(decision);
            }
        }
        decided
            .into_iter()
            .map(|d| d.ok_or_else(|| EngineError::Internal("a hit was left undecided".into())))
            .collect()
    }
}
