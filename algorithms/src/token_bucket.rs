//! Token bucket, run as GCRA (the generic cell rate algorithm) on one `u64` timestamp.
//!
//! The bucket holds at most `burst` tokens and refills `limit` tokens evenly per `window`:
//! one token every *emission interval* `window / limit` nanoseconds. GCRA does not store a
//! token count; it stores the **theoretical arrival time** `tat`: the instant the bucket
//! will be full again. At `now`, the bucket's *debt* is `max(tat, now) − now` nanoseconds
//! of refill, i.e. `debt · limit / window` tokens are missing. A hit of `cost` tokens is
//! allowed iff
//!
//! ```text
//! debt · limit + cost · window ≤ burst · window        (exact, in u128)
//! ```
//!
//! and then `tat = max(tat, now) + ⌈cost · window / limit⌉`.
//!
//! **Rounding:** the admission test is exact, and the increment stored in `tat` is rounded
//! *up* to whole nanoseconds, so the stored debt is never less than the real one. Hence:
//! over any interval of length `T`, the allowed cost is at most `burst + limit·T/window`
//! (proof: from the first to the last allowed hit in the interval, `tat` grows by at least
//! `Σcost·window/limit`, and the last admission test bounds it by `T + burst·window/limit`).
//! Rounding up loses less than 1 ns of refill per hit, so the sustained rate is slightly
//! *below* `limit/window` when `window/limit` is not a whole number of nanoseconds (at
//! most `1 ns / emission interval` relatively: 0.1 % at 1 M tokens/s).
//!
//! # The leaky bucket is the same machine
//! gubernator's leaky bucket is a queue-less meter: a level that drains at `limit/window`
//! per nanosecond, capacity `burst`; a hit is allowed iff `level + cost ≤ burst`, and then
//! raises the level by `cost`. Its level at `now` is exactly our debt in tokens,
//! `(tat − now)⁺ · limit / window`, so both accept and refuse the same hits; `tat` just
//! stores the level together with the instant it was measured. quorate therefore has no
//! separate leaky bucket: configure a token bucket with `burst` = the leaky bucket's
//! capacity and `limit/window` = its leak rate.
//!
//! **Guarantees:** 8 bytes of state, O(1), exact admission.
//! **Does not promise:** fairness between callers of one key, or sub-nanosecond refill.
//!
//! **Time going backwards:** after any consumption `tat > ` the instant it was made, so an
//! earlier `now` only sees a larger debt: it can be denied where a later one is allowed,
//! never the other way round, and an allowed hit still moves `tat` from `max(tat, now)`.
//! `tat` is thus also the "latest instant seen"; no separate field is needed.

use serde::{Deserialize, Serialize};

use crate::arith::{mul, mul_div_ceil, mul_div_floor, saturate};
use crate::{Decision, Nanos, Rate};

/// GCRA state for one key: the theoretical arrival time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    /// The instant the bucket is full again; at or before `now` means full.
    tat: Nanos,
}

impl TokenBucket {
    /// The theoretical arrival time: when the bucket is full again.
    pub fn tat(&self) -> Nanos {
        self.tat
    }

    /// Checks a hit of `cost` tokens at `now`; consumes them only if allowed. `cost == 0`
    /// peeks.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let burst = rate.burst;
        let debt = self.tat.saturating_sub(now);
        let remaining = tokens_left(rate, debt);
        if cost == 0 {
            return Decision::allow(burst, remaining, debt);
        }
        if cost > burst {
            return Decision::cost_exceeds_limit(burst, remaining, debt);
        }
        if cost > remaining {
            // The least t ≤ tat with (tat − t)·limit ≤ (burst − cost)·window.
            let slack = saturate(mul_div_floor(burst - cost, rate.window, rate.limit));
            let retry_after = self.tat.saturating_sub(slack).saturating_sub(now);
            return Decision::over_limit(burst, remaining, debt, retry_after);
        }
        self.consume(rate, now, cost);
        let debt = self.tat.saturating_sub(now);
        Decision::allow(burst, tokens_left(rate, debt), debt)
    }

    /// Records `cost` tokens consumed at `now` without asking (replay of a decision made
    /// elsewhere). Saturates; `cost == 0` changes nothing, exactly like a peek.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if cost == 0 {
            return;
        }
        self.consume(rate, now, cost);
    }

    /// From this instant on the state behaves like [`TokenBucket::default`]: the bucket is
    /// full.
    pub fn idle_at(&self, _rate: &Rate) -> Nanos {
        self.tat
    }

    /// Moves `tat` later by `nanos`: stricter, never looser.
    pub(crate) fn postpone(&mut self, nanos: Nanos) {
        self.tat = self.tat.saturating_add(nanos);
    }

    fn consume(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        let increment = saturate(mul_div_ceil(cost, rate.window, rate.limit));
        self.tat = self.tat.max(now).saturating_add(increment);
    }
}

/// Tokens left with `debt` ns of refill outstanding: the largest `cost` with
/// `debt·limit + cost·window ≤ burst·window`.
fn tokens_left(rate: &Rate, debt: Nanos) -> u64 {
    let window = rate.window.max(1);
    let capacity = mul(rate.burst, window);
    let used = mul(debt, rate.limit);
    saturate(capacity.saturating_sub(used) / u128::from(window))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason, SECOND};

    fn rate(limit: u64, window: Nanos, burst: Option<u64>) -> Rate {
        Rate::new(Algorithm::TokenBucket, limit, window, burst).unwrap()
    }

    #[test]
    fn burst_then_steady_refill() {
        // 10 per second, burst 5: one token every 100 ms.
        let r = rate(10, SECOND, Some(5));
        let mut s = TokenBucket::default();
        assert!(s.check(&r, 0, 5).allowed);
        let d = s.check(&r, 0, 1);
        assert_eq!(d.denied, Some(DenyReason::OverLimit));
        assert_eq!(d.retry_after, Some(100_000_000));
        assert_eq!(d.reset_after, 500_000_000);
        assert!(s.check(&r, 100_000_000, 1).allowed);
        assert!(!s.check(&r, 150_000_000, 1).allowed);
    }

    #[test]
    fn full_burst_passes_even_when_interval_is_fractional() {
        // 3 per 10 ns: emission interval 3.33 ns; a full-burst hit must still pass.
        let r = rate(3, 10, Some(2));
        let mut s = TokenBucket::default();
        assert!(s.check(&r, 0, 2).allowed);
        assert_eq!(s.tat(), 7); // ⌈20/3⌉
    }

    #[test]
    fn cost_above_burst_never_passes() {
        let r = rate(100, SECOND, Some(3));
        let d = TokenBucket::default().check(&r, 0, 4);
        assert_eq!(d.denied, Some(DenyReason::CostExceedsLimit));
        assert_eq!(d.limit, 3);
    }
}
