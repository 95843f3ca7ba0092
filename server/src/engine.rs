//! The decision engine: turns hits into decisions through the replicated log.
//!
//! One path for every hit, top to bottom:
//! 1. resolve each hit's limit in the live policy (unknown → `NOT_FOUND`);
//! 2. on a follower, forward the whole request to the leader;
//! 3. on the leader, a request of `strict` hits is answered from the leader's memory
//!    within durable reservations ([`reserve`]: the log records reservations, not hits);
//!    `exact` hits (and `strict` ones the leader cannot reserve for: sliding logs, mixed
//!    requests, a leader not yet caught up) join the next [`Command::Requests`] batch
//!    (group commit: one Raft entry, one fsync, for every request that arrived meanwhile)
//!    and are decided when the batch applies; `fast` hits are decided at once from the
//!    leader's memory and their consumed quota joins the next [`Command::Consumed`] batch.
//!
//! A request is *atomic* (all-or-nothing) unless its caller says otherwise: its hits are
//! granted only if every one passes, and a denied request consumes nothing from any
//! counter; its hits that would have passed are answered as peeks (allowed, `remaining`
//! unchanged), so callers can show the culprit. Where it is decided:
//! - every hit `strict` and reservable: checked together against the leader's view and
//!   reservations, spent together or not at all ([`reserve`]);
//! - every hit `exact` (or `strict` but not decided from reservations): one request of a
//!   [`Command::Requests`] entry, decided as one at apply
//!   ([`quorate_algorithms::CounterStore::check_all`]), the same on every replica;
//! - every hit `fast`: checked together in the leader's fast store, under the locks of
//!   every limit involved ([`fast::FastPath::decide_all`]);
//! - `fast` and `strict`/`exact` mixed: the whole request goes down the log path as one atomic
//!   request (simplest correct rule: no fast quota is taken before the strict part is
//!   known). Its fast-limit hits are then decided by the replicated counters, which lag
//!   the leader's fast counters by the consumed hits not yet applied (what fast mode
//!   replicates behind), and once granted they are added to the leader's fast counters.
//!
//! A leader that lost its quorum cannot commit, so its strict hits time out as
//! `UNAVAILABLE` and are never granted. Fast hits stop too once the leader has not heard
//! from a quorum for an election timeout.

mod batcher;
mod fast;
mod forward;
mod leadership;
mod propose;
mod redis_counters;
pub mod reserve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quorate_algorithms::{Decision, Nanos};
use thiserror::Error;

use crate::metrics::Metrics;
use crate::policy::{Consistency, PolicySet};
use crate::raft::state_machine::SharedState;
use crate::raft::typ::Raft;
use crate::raft::{Hit, Node, NodeId};
use serde::{Deserialize, Serialize};

pub use forward::{
    check_forwarded, decode_forwarded, forward_handler, ForwardResult, ForwardedCheck,
};
pub use leadership::Leadership;
pub use propose::BatchSettings;
pub use redis_counters::{policy_fits_redis, RedisCounters};

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
    /// `not_applied` is true only when the hits certainly were not counted (never handed
    /// to Raft, or truncated uncommitted), so a client may resend them without counting
    /// them twice; false means the outcome is unknown.
    #[error("{reason}")]
    Unavailable {
        reason: String,
        leader: Option<Node>,
        not_applied: bool,
    },
    /// Anything else; logged where it happens.
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// Unavailable, and the hits may have been counted.
    pub(crate) fn unavailable(reason: impl Into<String>, leader: Option<Node>) -> EngineError {
        EngineError::Unavailable {
            reason: reason.into(),
            leader,
            not_applied: false,
        }
    }

    /// Unavailable, and the hits were certainly not counted: safe to resend.
    pub(crate) fn not_applied(reason: impl Into<String>, leader: Option<Node>) -> EngineError {
        EngineError::Unavailable {
            reason: reason.into(),
            leader,
            not_applied: true,
        }
    }

    /// The same error, but no longer claiming the hits were not counted (some other hit
    /// of the same request was).
    fn outcome_unknown(self) -> EngineError {
        match self {
            EngineError::Unavailable { reason, leader, .. } => EngineError::Unavailable {
                reason,
                leader,
                not_applied: false,
            },
            other => other,
        }
    }
}

/// Where a node reads wall time: the system clock, or (in the simulator) a per-node clock
/// that can be skewed and jump.
pub type WallSource = Arc<dyn Fn() -> Nanos + Send + Sync>;

/// The leader's clock for stamping entries: wall time, never running backwards.
pub struct LeaderClock {
    last: AtomicU64,
    source: Option<WallSource>,
}

impl Default for LeaderClock {
    fn default() -> Self {
        LeaderClock {
            last: AtomicU64::new(0),
            source: None,
        }
    }
}

impl std::fmt::Debug for LeaderClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderClock")
            .field("last", &self.last)
            .field("source", &self.source.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// Wall-clock time in [`Nanos`]; only leaders stamp entries with it.
pub fn wall_nanos() -> Nanos {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl LeaderClock {
    /// A clock reading `source` instead of the system clock (still never running backwards).
    pub fn with_source(source: WallSource) -> LeaderClock {
        LeaderClock {
            last: AtomicU64::new(0),
            source: Some(source),
        }
    }

    /// Never again reads earlier than `instant` (a log time this leader has seen).
    pub fn observe(&self, instant: Nanos) {
        self.last.fetch_max(instant, Ordering::Relaxed);
    }

    pub fn now(&self) -> Nanos {
        let wall = match &self.source {
            Some(source) => source(),
            None => wall_nanos(),
        };
        let prev = self.last.fetch_max(wall, Ordering::Relaxed);
        wall.max(prev)
    }
}

/// Bugs planted on purpose, so the simulator (`sim/`) can prove its checker catches them.
/// Compiled only with the `sim-planted-bugs` feature, and even then off unless a
/// simulator thread switches one on for itself.
#[cfg(feature = "sim-planted-bugs")]
pub mod planted {
    use std::cell::Cell;

    thread_local! {
        static STRICT_BEFORE_COMMIT: Cell<bool> = const { Cell::new(false) };
    }

    /// When on, the leader answers `strict` hits from its fast-path memory before they
    /// are committed (the bug strict mode exists to prevent).
    pub fn set_strict_before_commit(on: bool) {
        STRICT_BEFORE_COMMIT.with(|c| c.set(on));
    }

    pub(crate) fn strict_before_commit() -> bool {
        STRICT_BEFORE_COMMIT.with(Cell::get)
    }

    thread_local! {
        static RLQS_DOUBLE_SHARE: Cell<bool> = const { Cell::new(false) };
    }

    /// When on, the RLQS leader pushes every token-bucket share at twice the rate it
    /// committed (a proxy then holds more than its share of the limit).
    pub fn set_rlqs_double_share(on: bool) {
        RLQS_DOUBLE_SHARE.with(|c| c.set(on));
    }

    pub(crate) fn rlqs_double_share() -> bool {
        RLQS_DOUBLE_SHARE.with(Cell::get)
    }

    thread_local! {
        static RLQS_FORGET_ENDED_STREAMS: Cell<bool> = const { Cell::new(false) };
    }

    /// When on, the RLQS leader plans as if only its current subscribers held shares:
    /// grants pushed on streams that ended (an earlier leader's, or before a reconnect)
    /// are no longer counted as spent.
    pub fn set_rlqs_forget_ended_streams(on: bool) {
        RLQS_FORGET_ENDED_STREAMS.with(|c| c.set(on));
    }

    pub(crate) fn rlqs_forget_ended_streams() -> bool {
        RLQS_FORGET_ENDED_STREAMS.with(Cell::get)
    }
}

/// The consistency a hit is decided with (a planted bug may downgrade strict to fast).
fn effective_consistency(consistency: Consistency) -> Consistency {
    #[cfg(feature = "sim-planted-bugs")]
    if planted::strict_before_commit() {
        return Consistency::Fast;
    }
    consistency
}

/// Decides hits for one node.
#[derive(Debug)]
pub struct Engine {
    shared: Arc<SharedState>,
    leadership: Arc<Leadership>,
    strict: batcher::Batcher,
    fast: Arc<fast::FastPath>,
    reserved: Arc<reserve::Reservations>,
    forwarder: forward::Forwarder,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Stateless mode: counters live in Redis, not in the Raft log (`--store`).
    redis: Option<RedisCounters>,
}

impl Engine {
    /// Starts the engine's background tasks (batchers, leadership watcher) for `raft`.
    /// `election_timeout_min` is Raft's: fast decisions stop once a leader has gone that
    /// long without a quorum's acknowledgement. `clock` gives the leader's timestamps
    /// (`LeaderClock::default()` reads the system clock; the simulator gives each node its
    /// own, skewed one).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        raft: Raft,
        node_id: NodeId,
        shared: Arc<SharedState>,
        metrics: Arc<Metrics>,
        settings: BatchSettings,
        peer_auth: crate::raft::peer_auth::PeerAuth,
        election_timeout_min: Duration,
        clock: Arc<LeaderClock>,
    ) -> Engine {
        let fast = Arc::new(fast::FastPath::new(
            Arc::clone(&shared),
            raft.clone(),
            Arc::clone(&clock),
            Arc::clone(&metrics),
            settings,
        ));
        let reserved = Arc::new(reserve::Reservations::start(
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
            Arc::clone(&reserved),
            Arc::clone(&metrics),
            election_timeout_min,
        );
        let strict = batcher::Batcher::start(raft, clock, Arc::clone(&metrics), settings);
        Engine {
            shared,
            leadership,
            strict,
            fast,
            reserved,
            forwarder: forward::Forwarder::new(peer_auth),
            metrics,
            timeout: settings.decision_timeout,
            redis: None,
        }
    }

    /// Decides every hit in Redis instead of through Raft (stateless mode). The Raft
    /// node still carries the policy; the decision surfaces are unchanged.
    pub fn with_redis(mut self, store: Option<quorate_redis::RedisStore>) -> Engine {
        self.redis = store.map(|s| RedisCounters::new(s, Arc::clone(&self.metrics)));
        self
    }

    /// Stateless mode: counters in Redis (`--store`).
    pub fn is_stateless(&self) -> bool {
        self.redis.is_some()
    }

    /// Whether `set` can go live on this node: always in Raft mode; in stateless mode
    /// only if Redis can decide every limit exactly ([`policy_fits_redis`]).
    pub fn accepts(&self, set: &PolicySet) -> Result<(), String> {
        match &self.redis {
            Some(_) => policy_fits_redis(set),
            None => Ok(()),
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

    /// Decides every hit, in order; `atomic` ones all-or-nothing (see the module docs).
    /// `forwarded` marks a request a follower already forwarded here, so it is never
    /// forwarded twice.
    pub async fn check(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
        forwarded: bool,
    ) -> Result<Vec<Decision>, EngineError> {
        // The dashboard's per-limit traffic and hot keys count each hit once, on the node
        // that received it (a forwarded request was counted by its sender).
        let counted: Option<Vec<(String, String)>> = (!forwarded).then(|| {
            hits.iter()
                .map(|h| (h.hit.limit.clone(), h.hit.key.clone()))
                .collect()
        });
        let result = self.check_here_or_at_leader(hits, atomic, forwarded).await;
        if let (Some(counted), Ok(decisions)) = (counted, &result) {
            let now_ms = wall_nanos() / 1_000_000;
            self.metrics.traffic.record_limits(
                counted
                    .iter()
                    .zip(decisions)
                    .map(|((limit, _), d)| (limit.as_str(), d.allowed)),
            );
            for ((limit, key), d) in counted.iter().zip(decisions) {
                self.metrics.hot_keys.record(
                    limit,
                    key,
                    d.allowed,
                    d.remaining,
                    now_ms.saturating_add(d.reset_after / 1_000_000),
                );
            }
        }
        result
    }

    /// The metrics registry this engine reports to.
    /// Gives back the unused quota this leader reserved (graceful shutdown): the next
    /// leader starts from what was really spent.
    pub async fn settle_reservations(&self) {
        self.reserved.settle_all().await;
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    async fn check_here_or_at_leader(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
        forwarded: bool,
    ) -> Result<Vec<Decision>, EngineError> {
        // The one place stateless mode differs: the counters' home.
        if let Some(redis) = &self.redis {
            return redis
                .check(hits, atomic, &self.shared.policy.load().set)
                .await;
        }
        if !self.leadership.is_leader() {
            if forwarded {
                return Err(EngineError::not_applied(
                    "this node is not the leader",
                    self.leadership.leader_node(),
                ));
            }
            let leader = self
                .leadership
                .leader_node()
                .ok_or_else(|| EngineError::not_applied("no leader elected yet", None))?;
            return self
                .forwarder
                .forward(leader, hits, atomic, self.timeout)
                .await;
        }
        let decided = tokio::time::timeout(self.timeout, self.decide_here(hits, atomic));
        let decided = decided.await.map_err(|_| {
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

    /// Decides a request on the leader: from reservations when every hit is `strict` and
    /// reservable and this leader may; otherwise down the log or fast paths.
    async fn decide_here(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
    ) -> Result<Vec<Decision>, EngineError> {
        let from_reservations = !hits.is_empty()
            && hits.iter().all(|h| {
                effective_consistency(h.consistency) == Consistency::Strict
                    && reserve::reservable(&h.hit)
            });
        if from_reservations {
            let plain: Vec<Hit> = hits.iter().map(|h| h.hit.clone()).collect();
            if let reserve::Decided::Decisions(d) = self.reserved.decide(&plain, atomic).await? {
                return Ok(d);
            }
        }
        if atomic && hits.len() > 1 {
            self.decide_atomic(hits).await
        } else {
            self.decide(hits).await
        }
    }

    /// Decides one all-or-nothing request of two or more hits (see the module docs).
    async fn decide_atomic(&self, hits: Vec<ResolvedHit>) -> Result<Vec<Decision>, EngineError> {
        let is_fast = |h: &ResolvedHit| effective_consistency(h.consistency) == Consistency::Fast;
        let fast_count = hits.iter().filter(|h| is_fast(h)).count();
        if fast_count == hits.len() {
            let hits: Vec<Hit> = hits.into_iter().map(|h| h.hit).collect();
            let guards = loop {
                match self.fast.decide_all(&hits) {
                    fast::FastGroupOutcome::Decided(decisions) => return Ok(decisions),
                    fast::FastGroupOutcome::Strict(guards) => break guards,
                    fast::FastGroupOutcome::Wait => self.fast.ready().await,
                }
            };
            return self.strict.submit(hits, true, guards).await;
        }
        // Mixed (or all strict): the whole request down the log path. Its fast-limit hits
        // hold guards, as every fast-limit hit sent down the strict path does.
        let fast_hits: Vec<Hit> = hits
            .iter()
            .filter(|h| is_fast(h))
            .map(|h| h.hit.clone())
            .collect();
        let guards = (0..fast_count).map(|_| self.fast.hold(1)).collect();
        let absorb = self.fast.before_log(&fast_hits);
        let hits: Vec<Hit> = hits.into_iter().map(|h| h.hit).collect();
        let decisions = self.strict.submit(hits, true, guards).await?;
        self.fast.after_log(absorb, &fast_hits, &decisions);
        Ok(decisions)
    }

    async fn decide(&self, hits: Vec<ResolvedHit>) -> Result<Vec<Decision>, EngineError> {
        // Fast hits are answered here and now when this leader may; the rest go to Raft.
        let mut decided: Vec<Option<Decision>> = vec![None; hits.len()];
        let mut strict = Vec::new();
        let mut strict_slots = Vec::new();
        let mut guards = Vec::new();
        for (i, resolved) in hits.into_iter().enumerate() {
            if effective_consistency(resolved.consistency) == Consistency::Fast {
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
            // Fast hits decided above already took their quota: if the strict ones fail,
            // this request's outcome is no longer "not counted".
            let fast_counted = decided.iter().any(Option::is_some);
            let outcomes = self
                .strict
                .submit(strict, false, guards)
                .await
                .map_err(|e| if fast_counted { e.outcome_unknown() } else { e })?;
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
