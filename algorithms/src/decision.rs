//! The answer to one hit: allowed or not, and the numbers a caller needs to say why.

use serde::{Deserialize, Serialize};

use crate::Nanos;

/// The outcome of checking one hit of `cost` against one counter at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the hit passed (and, when `cost > 0`, consumed quota).
    pub allowed: bool,
    /// The configured limit (requests per window, or the bucket's burst).
    pub limit: u64,
    /// Quota left after this decision: a later hit with `cost <= remaining` at the same
    /// instant is allowed.
    pub remaining: u64,
    /// Time from `now` until the counter is back to full quota (window end, or bucket full).
    pub reset_after: Nanos,
    /// For a denial: time from `now` after which the same cost would be allowed if nothing
    /// else happened. `None` when allowed, or when the cost can never pass.
    pub retry_after: Option<Nanos>,
    /// Why the hit was denied; `None` when allowed.
    pub denied: Option<DenyReason>,
}

/// Why a hit was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DenyReason {
    /// The counter has not enough quota left now; retry after `retry_after`.
    OverLimit,
    /// The cost is larger than the limit itself: it can never pass.
    CostExceedsLimit,
    /// The counter store is at its key cap and this key is new (fail closed).
    StoreFull,
    /// This key's limit holds its most keys (`max_keys`, `on_full: refuse`) and this key
    /// is new; keys already counted, and other limits, are unaffected.
    LimitKeysFull,
}

impl DenyReason {
    /// A short, stable, human-readable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::OverLimit => "over limit",
            DenyReason::CostExceedsLimit => "cost exceeds the limit: it can never pass",
            DenyReason::StoreFull => "counter store is full: new keys are refused",
            DenyReason::LimitKeysFull => {
                "this limit holds its most keys (max_keys): new keys are refused"
            }
        }
    }
}

// === impl Decision ===

impl Decision {
    /// An allowed hit (or a peek).
    pub(crate) fn allow(limit: u64, remaining: u64, reset_after: Nanos) -> Decision {
        Decision {
            allowed: true,
            limit,
            remaining,
            reset_after,
            retry_after: None,
            denied: None,
        }
    }

    /// A hit denied for lack of quota now; the same cost passes after `retry_after`.
    pub(crate) fn over_limit(
        limit: u64,
        remaining: u64,
        reset_after: Nanos,
        retry_after: Nanos,
    ) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after: Some(retry_after),
            denied: Some(DenyReason::OverLimit),
        }
    }

    /// A hit whose cost exceeds the capacity: it can never pass, so no `retry_after`.
    pub(crate) fn cost_exceeds_limit(limit: u64, remaining: u64, reset_after: Nanos) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after: None,
            denied: Some(DenyReason::CostExceedsLimit),
        }
    }

    /// A hit on a new key refused because the store is at its key cap. Nothing is known
    /// about when room frees up, so no `retry_after`; `remaining` is zero because this key
    /// can consume nothing right now.
    pub(crate) fn store_full(limit: u64) -> Decision {
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset_after: 0,
            retry_after: None,
            denied: Some(DenyReason::StoreFull),
        }
    }

    /// Like [`Decision::store_full`], for a new key of a limit at its own key cap.
    pub(crate) fn limit_keys_full(limit: u64) -> Decision {
        Decision {
            denied: Some(DenyReason::LimitKeysFull),
            ..Decision::store_full(limit)
        }
    }
}
