//! `quorate.v1` named hits: each names a limit the policy exposes, a counter key and a
//! cost; the answer is one decision per hit, in order.

use quorate_algorithms::{Decision, Nanos};

use super::{hit, Counter};
use crate::engine::{EngineError, ResolvedHit};
use crate::metrics::Metrics;
use crate::policy::PolicySet;

pub use crate::bounds::{MAX_HITS, MAX_KEY_LEN, MAX_LIMIT_LEN};

/// One hit as a client names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedHit {
    pub limit: String,
    pub key: String,
    pub cost: u64,
}

/// One hit's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedDecision {
    pub limit: String,
    /// The limit's window (clients show it next to the decision).
    pub window: Nanos,
    pub decision: Decision,
}

/// Checks a request's shape; the message names the bad field.
pub fn validate(hits: Vec<NamedHit>) -> Result<Vec<NamedHit>, EngineError> {
    let bad = |m: String| Err(EngineError::InvalidArgument(m));
    if hits.is_empty() {
        return bad("hits: at least one hit is required".into());
    }
    if hits.len() > MAX_HITS {
        return bad(format!(
            "hits: {} hits, at most {MAX_HITS} are allowed",
            hits.len()
        ));
    }
    for (i, h) in hits.iter().enumerate() {
        if h.limit.is_empty() || h.limit.len() > MAX_LIMIT_LEN {
            return bad(format!(
                "hits[{i}].limit: must be 1 to {MAX_LIMIT_LEN} bytes"
            ));
        }
        if h.key.is_empty() || h.key.len() > MAX_KEY_LEN {
            return bad(format!("hits[{i}].key: must be 1 to {MAX_KEY_LEN} bytes"));
        }
    }
    Ok(hits)
}

/// Resolves named hits against `policy`; fails on the first unknown limit. Limits that
/// belong to authorization routes and consumers or to RLS descriptor rules count as
/// unknown unless the policy exposes them ([`PolicySet::exposed_limit`]).
pub fn resolve(
    policy: &PolicySet,
    hits: Vec<NamedHit>,
    metrics: &Metrics,
) -> Result<Vec<ResolvedHit>, EngineError> {
    hits.into_iter()
        .map(|h| match policy.exposed_limit(&h.limit) {
            Some(def) => Ok(hit(&h.limit, h.key, h.cost, def.rate, def.consistency)),
            None => {
                metrics.unknown_limits.inc();
                Err(EngineError::UnknownLimit(h.limit))
            }
        })
        .collect()
}

/// Decides validated named hits against the live policy; `atomic`: all-or-nothing (a
/// denied request consumes nothing; its passing hits are answered as peeks).
pub async fn decide(
    counter: &dyn Counter,
    metrics: &Metrics,
    hits: Vec<NamedHit>,
    atomic: bool,
) -> Result<Vec<NamedDecision>, EngineError> {
    let live = counter.policy();
    let hits = resolve(&live.set, hits, metrics)?;
    let shape: Vec<(String, Nanos)> = hits
        .iter()
        .map(|h| (h.hit.limit.clone(), h.hit.rate.window()))
        .collect();
    let decisions = counter.check(hits, atomic).await?;
    Ok(shape
        .into_iter()
        .zip(decisions)
        .map(|((limit, window), decision)| NamedDecision {
            limit,
            window,
            decision,
        })
        .collect())
}
