//! Stateless mode: the engine's hits decided by a shared Redis instead of the Raft log.
//!
//! The policy still comes from this node's own (single-node) Raft log, fed by the policy
//! file or the admin API; every node of a deployment loads the same file, and operators
//! compare `GET /admin/policy`'s `sha256` across nodes. Each request's hits go to Redis in
//! one script call (see `quorate-redis`), stamped with this node's clock (never running
//! backwards). When Redis is down or slow the call fails within the store timeout, and
//! the engine answers `Unavailable`: authorization routes then apply their
//! `failure_mode` (open or closed), RLS answers `UNAVAILABLE` (Envoy's own
//! `failure_mode_deny` decides). A metric and one log line mark the outage and the
//! recovery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use quorate_algorithms::{Decision, DenyReason};
use quorate_redis::{RedisHit, RedisStore, StoreError};

use super::{EngineError, LeaderClock, ResolvedHit};
use crate::metrics::Metrics;
use crate::policy::PolicySet;

/// Refuses a policy with a limit whose rate the Redis script cannot decide exactly (e.g.
/// a window over ~52 days): stateless mode checks every policy before it goes live, so
/// no hit fails later because of its limit's rate.
pub fn policy_fits_redis(set: &PolicySet) -> Result<(), String> {
    for (name, def) in &set.limits {
        if let Err(e) = RedisStore::supports(&def.rate) {
            return Err(format!("limit {name:?}: {e}"));
        }
    }
    Ok(())
}

/// Decides hits in Redis, and reports Redis' health.
#[derive(Debug)]
pub struct RedisCounters {
    store: RedisStore,
    clock: LeaderClock,
    metrics: Arc<Metrics>,
    /// Whether the last call succeeded: the log says so once per change, not per request.
    up: AtomicBool,
    /// Whether an unsupported rate was logged already (once, not per request).
    unsupported_logged: AtomicBool,
}

impl RedisCounters {
    pub fn new(store: RedisStore, metrics: Arc<Metrics>) -> RedisCounters {
        tracing::info!(store = %store.url(), "stateless mode: counters in Redis");
        metrics.store_up.set(1);
        RedisCounters {
            store,
            clock: LeaderClock::default(),
            metrics,
            up: AtomicBool::new(true),
            unsupported_logged: AtomicBool::new(false),
        }
    }

    /// Decides every hit, in order, with the key caps of the live `policy`.
    ///
    /// **Not all-or-nothing** (`_atomic` is not honoured yet): the script decides and
    /// writes each hit in turn, so a denied request may have consumed its other hits, as
    /// before. Making it atomic needs a two-pass script (check every hit on copies, then
    /// write, putting counters back on a key-cap refusal), and on a Redis Cluster the
    /// hits of different limits live in different slots and cannot share one script call.
    pub async fn check(
        &self,
        hits: Vec<ResolvedHit>,
        _atomic: bool,
        policy: &PolicySet,
    ) -> Result<Vec<Decision>, EngineError> {
        let batch: Vec<RedisHit<'_>> = hits
            .iter()
            .map(|h| RedisHit {
                limit: &h.hit.limit,
                key: &h.hit.key,
                rate: h.hit.rate,
                cap: policy.key_cap(&h.hit.limit),
                cost: h.hit.cost,
            })
            .collect();
        match self.store.check(&batch, self.clock.now()).await {
            Ok(checked) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(store = %self.store.url(), "Redis counter store is back");
                    self.metrics.store_up.set(1);
                }
                Ok(checked
                    .into_iter()
                    .zip(&hits)
                    .map(|(c, h)| {
                        if c.evicted || c.decision.denied == Some(DenyReason::LimitKeysFull) {
                            let refused = !c.decision.allowed;
                            self.metrics
                                .observe_key_cap(&h.hit.limit, refused, c.evicted);
                        }
                        self.metrics.observe_decision(&c.decision);
                        c.decision
                    })
                    .collect())
            }
            Err(e) if e.is_unavailable() => {
                self.metrics.store_errors.inc();
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(store = %self.store.url(), error = %e,
                        "Redis counter store unavailable: answering per failure_mode");
                    self.metrics.store_up.set(0);
                }
                Err(EngineError::unavailable(
                    format!("counter store unavailable: {e}"),
                    None,
                ))
            }
            Err(e @ StoreError::UnsupportedRate(_)) => {
                if !self.unsupported_logged.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "a limit's rate cannot be decided in Redis: \
                        its hits fail until the policy changes it (logged once)");
                }
                Err(EngineError::Internal(e.to_string()))
            }
            Err(e) => Err(EngineError::Internal(e.to_string())),
        }
    }
}
