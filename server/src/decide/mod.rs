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
    /// Decides every hit, in order (see [`Engine::check`]).
    fn check(&self, hits: Vec<ResolvedHit>) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>>;
}

impl Counter for Engine {
    fn policy(&self) -> Arc<LivePolicy> {
        Engine::policy(self)
    }

    fn check(&self, hits: Vec<ResolvedHit>) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>> {
        Box::pin(Engine::check(self, hits, false))
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
