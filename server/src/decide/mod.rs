//! Every decision, one module per request kind, shared by every surface.
//!
//! The adapters in [`crate::grpc`] and [`crate::http`] decode a request, call one of these
//! and encode the typed answer; `quorate policy test` ([`simulate`]) and the dashboard's
//! explain run the same code with a different [`Counter`]. Nothing here knows a wire
//! format.
//!
//! - [`rls`]: Envoy RLS descriptors → plans → hits → per-descriptor statuses.
//! - [`authz`]: authenticate → authorize → limits → verdict (ext_authz, forward-auth).
//! - [`named`]: `quorate.v1` named hits → decisions.
//! - [`headers`]: RateLimit / Retry-After headers and shadow mode, once for all three.
//!
//! Hits are built in one place, [`hit`]; counting them is the [`Counter`]'s job (the
//! replicated [`Engine`] live, copies of the live counters for explain, a private
//! in-memory store for `policy test`).

pub mod authz;
pub mod headers;
pub mod named;
pub mod rls;
pub mod simulate;

use std::sync::Arc;

use futures::future::BoxFuture;
use quorate_algorithms::{Decision, Rate};

use crate::engine::{Engine, EngineError, ResolvedHit};
use crate::policy::Consistency;
use crate::raft::state_machine::LivePolicy;
use crate::raft::Hit;

/// What a decision needs from below: the live policy and a way to count hits.
/// The [`Engine`] in production; explain and tests substitute in-memory or failing
/// counters.
pub trait Counter: Send + Sync + 'static {
    /// The live policy (one snapshot per decision).
    fn policy(&self) -> Arc<LivePolicy>;
    /// Decides every hit, in order; `atomic`: all-or-nothing (see [`Engine::check`]).
    fn check(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
    ) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>>;
}

impl Counter for Engine {
    fn policy(&self) -> Arc<LivePolicy> {
        Engine::policy(self)
    }

    fn check(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
    ) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>> {
        Box::pin(Engine::check(self, hits, atomic, false))
    }
}

/// A hit on `limit`'s counter `key`: the one constructor every request kind uses.
pub fn hit(
    limit: &str,
    key: String,
    cost: u64,
    rate: Rate,
    consistency: Consistency,
) -> ResolvedHit {
    ResolvedHit {
        hit: Hit {
            limit: limit.to_string(),
            key,
            cost,
            rate,
        },
        consistency,
    }
}

/// Decides one request's hits all-or-nothing, except the `advisory` ones (shadow-mode
/// limits: counted, but they never deny). The enforced hits are one atomic request; the
/// advisory ones are then counted if it was granted, and only peeked (cost 0) if not, so
/// a denied request consumes nothing, shadow counters included. `advisory` has one entry
/// per hit.
pub async fn check_all_or_nothing(
    counter: &dyn Counter,
    hits: Vec<ResolvedHit>,
    advisory: &[bool],
) -> Result<Vec<Decision>, EngineError> {
    let is_advisory = |i: usize| advisory.get(i).copied().unwrap_or(false);
    let n = hits.len();
    let enforced_count = (0..hits.len()).filter(|&i| !is_advisory(i)).count();
    if enforced_count == hits.len() {
        return counter.check(hits, true).await;
    }
    if enforced_count == 0 {
        return counter.check(hits, false).await;
    }
    let (mut enforced, mut shadow) = (Vec::new(), Vec::new());
    for (i, h) in hits.into_iter().enumerate() {
        if is_advisory(i) {
            shadow.push(h);
        } else {
            enforced.push(h);
        }
    }
    let decided = counter.check(enforced, true).await?;
    if !decided.iter().all(|d| d.allowed) {
        for h in &mut shadow {
            h.hit.cost = 0;
        }
    }
    let shadow_decided = counter.check(shadow, false).await?;
    let (mut decided, mut shadow_decided) = (decided.into_iter(), shadow_decided.into_iter());
    (0..n)
        .map(|i| {
            let next = if is_advisory(i) {
                shadow_decided.next()
            } else {
                decided.next()
            };
            next.ok_or_else(|| EngineError::Internal("a hit was left undecided".into()))
        })
        .collect()
}
