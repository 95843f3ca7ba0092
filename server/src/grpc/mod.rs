//! gRPC surfaces: thin adapters, decode → [`decide`](crate::decide) → encode.
//!
//! - [`ratelimiter`]: `quorate.v1.RateLimiter`, our own API.
//! - [`rls`]: Envoy's Rate Limit Service v3.
//! - [`ext_authz`]: Envoy's external authorization v3.
//! - [`rlqs`]: Envoy's Rate Limit Quota Service (a stream; shares from [`crate::quota`]).

pub mod ext_authz;
pub mod ratelimiter;
pub mod rlqs;
pub mod rls;

use quorate_algorithms::{Decision, DenyReason, Nanos};
use quorate_proto::v1 as pb;

/// Nanoseconds to whole milliseconds, rounded up (a wait is never reported shorter).
pub fn ms_ceil(ns: Nanos) -> u64 {
    ns.div_ceil(1_000_000)
}

/// Our decision on the wire.
pub fn decision_to_pb(limit: &str, window: Nanos, d: &Decision) -> pb::Decision {
    pb::Decision {
        allowed: d.allowed,
        limit: limit.to_string(),
        limit_value: d.limit,
        remaining: d.remaining,
        reset_after_ms: ms_ceil(d.reset_after),
        retry_after_ms: d.retry_after.map(ms_ceil),
        reason: match d.denied {
            None => pb::DenyReason::Unspecified,
            Some(DenyReason::OverLimit) => pb::DenyReason::OverLimit,
            Some(DenyReason::CostExceedsLimit) => pb::DenyReason::CostExceedsLimit,
            Some(DenyReason::StoreFull) => pb::DenyReason::StoreFull,
            Some(DenyReason::LimitKeysFull) => pb::DenyReason::LimitKeysFull,
        } as i32,
        window_ms: ms_ceil(window),
    }
}
