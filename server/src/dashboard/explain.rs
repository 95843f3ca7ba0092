//! "Explain a decision": a typed request evaluated against the live policy and the live
//! counters without spending quota.
//!
//! Every path is the one the surfaces run — RLS through `policy test`'s
//! [`simulate_with`], HTTP through the real [`Authorizer`], quorate.v1 through the live
//! limit table — except the counter step: each counter is *copied* out of the live store
//! and the hit is applied to the copy, so the answer is exactly what a real request would
//! get now, while the store, the Raft log and the decision metrics stay untouched.

use std::sync::Arc;

use futures::future::BoxFuture;
use quorate_algorithms::{CounterState, Decision, Rate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::authz::RequestHeaders;
use crate::decide::authz::{Authorizer, AuthzRequest, Surface, Verdict};
use crate::decide::simulate::{parse_sample, simulate_with};
use crate::decide::Counter;
use crate::engine::{wall_nanos, EngineError, ResolvedHit};
use crate::raft::state_machine::{counter_key, LivePolicy, SharedState};

/// Decides a hit on a copy of its live counter.
pub fn peek(shared: &SharedState, limit: &str, key: &str, rate: &Rate, cost: u64) -> Decision {
    let now = wall_nanos();
    let mut state = match shared.counters.load().get(&counter_key(limit, key)) {
        Some(stored) => stored.state,
        None => CounterState::new(rate),
    };
    state.check(rate, now, cost)
}

/// A [`Counter`] over copies of the live counters (the explain authorizer's).
#[derive(Debug)]
pub struct PeekCounter {
    pub shared: Arc<SharedState>,
}

impl Counter for PeekCounter {
    fn policy(&self) -> Arc<LivePolicy> {
        self.shared.policy.load_full()
    }

    fn check(
        &self,
        hits: Vec<ResolvedHit>,
        atomic: bool,
    ) -> BoxFuture<'_, Result<Vec<Decision>, EngineError>> {
        let decide = |h: &ResolvedHit, cost: u64| {
            peek(&self.shared, &h.hit.limit, &h.hit.key, &h.hit.rate, cost)
        };
        let mut decisions: Vec<Decision> = hits.iter().map(|h| decide(h, h.hit.cost)).collect();
        // All-or-nothing: a denied request's passing hits are answered as peeks.
        if atomic && decisions.iter().any(|d| !d.allowed) {
            for (d, h) in decisions.iter_mut().zip(&hits) {
                if d.allowed {
                    *d = decide(h, 0);
                }
            }
        }
        Box::pin(async move { Ok(decisions) })
    }
}

/// `POST /dashboard/api/explain`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExplainRequest {
    /// An Envoy RLS request, as `policy test --request` takes it.
    Rls { sample: Value },
    /// An HTTP request as forward-auth or ext_authz would see it.
    Http {
        method: String,
        host: String,
        path: String,
        #[serde(default)]
        headers: Vec<(String, String)>,
        peer: Option<std::net::IpAddr>,
    },
    /// One quorate.v1 hit.
    Quorate {
        limit: String,
        key: String,
        cost: Option<u64>,
    },
}

/// The answer of an HTTP explain.
#[derive(Debug, Serialize)]
pub struct HttpExplained {
    pub allowed: bool,
    pub status: u16,
    pub kind: Option<&'static str>,
    pub reason: Option<String>,
    pub route: Option<String>,
    pub consumer: Option<String>,
    pub identity: Option<String>,
    pub groups: Vec<String>,
    pub upstream_headers: Vec<(String, String)>,
    pub client_headers: Vec<(String, String)>,
}

/// Evaluates one request; `Err` is a message for a 400.
pub async fn explain(
    shared: &Arc<SharedState>,
    authorizer: &Authorizer,
    request: ExplainRequest,
) -> Result<Value, String> {
    let live = shared.policy.load_full();
    match request {
        ExplainRequest::Rls { sample } => {
            let sample = parse_sample(&sample.to_string())?;
            let reports = simulate_with(
                &live.set,
                std::slice::from_ref(&sample),
                &|limit, key, rate, cost| peek(shared, limit, key, rate, cost),
            );
            Ok(serde_json::json!({"kind": "rls", "report": reports.first()}))
        }
        ExplainRequest::Http {
            method,
            host,
            path,
            headers,
            peer,
        } => {
            let request = AuthzRequest {
                surface: Surface::ForwardAuth,
                method,
                target: path,
                host,
                headers: RequestHeaders::new(headers),
                peer,
                route: None,
                malformed: None,
                forwarded_by: None,
            };
            let decision = authorizer
                .decide(request)
                .await
                .map_err(|e| e.to_string())?;
            let meta = decision.metadata;
            let explained = match decision.verdict {
                Verdict::Allow(a) => HttpExplained {
                    allowed: true,
                    status: 200,
                    kind: None,
                    reason: None,
                    route: meta.route,
                    consumer: meta.consumer,
                    identity: meta.identity,
                    groups: meta.groups,
                    upstream_headers: a.upstream_headers,
                    client_headers: a.client_headers,
                },
                Verdict::Deny(d) => HttpExplained {
                    allowed: false,
                    status: d.status,
                    kind: Some(d.kind.as_str()),
                    reason: Some(d.reason),
                    route: meta.route,
                    consumer: meta.consumer,
                    identity: meta.identity,
                    groups: meta.groups,
                    upstream_headers: Vec::new(),
                    client_headers: d.headers,
                },
            };
            Ok(serde_json::json!({"kind": "http", "answer": explained}))
        }
        ExplainRequest::Quorate { limit, key, cost } => {
            let def = live.set.limit(&limit).ok_or_else(|| {
                format!("unknown limit {limit:?}: the live policy has no such limit")
            })?;
            let cost = cost.unwrap_or(1);
            let d = peek(shared, &limit, &key, &def.rate, cost);
            Ok(serde_json::json!({
                "kind": "quorate",
                "limit": limit,
                "algorithm": def.rate.algorithm().as_str(),
                "requests": def.rate.limit(),
                "window": crate::decide::simulate::window_text(def.rate.window()),
                "consistency": def.consistency.as_str(),
                "allowed": d.allowed,
                "remaining": d.remaining,
                "reset_after_ms": d.reset_after / 1_000_000,
                "retry_after_ms": d.retry_after.map(|r| r / 1_000_000),
            }))
        }
    }
}
