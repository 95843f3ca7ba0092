//! Durable reservations: quota checked now and set aside, to be spent later from memory.
//!
//! A Raft leader answering `strict` hits from memory needs the replicated counters to
//! already count everything it may grant. [`CounterState::reserve`] checks, at `now`,
//! that `need` passes, adds as much `extra` as the sizing allows, and records the whole
//! amount as consumed — at the instant that makes the record at least as strict as *any*
//! way of spending it before `valid_until`:
//!
//! - windowed algorithms (fixed window, sliding window, sliding window slots): the
//!   reservation lives until the end of the counting bucket holding `now`
//!   ([`Rate::bucket_end`]). Cost counts the same anywhere in a bucket, and a check later
//!   in the bucket is never stricter than at `now`, so every hit spent from the
//!   reservation would also have passed the algorithm on its own.
//! - token bucket (GCRA): the amount is checked at `now` and recorded at
//!   `valid_until − 1`. `tat = max(tat, t) + cost·T` grows with `t`, so recording late
//!   bounds every sequence of hits spent in between; the check at `now` (the earliest
//!   instant any of them can be spent) admits each of them. The lifetime is the refill
//!   time of the amount, clamped to `[1 ms, horizon]`, and `tat` is pushed by one more
//!   nanosecond per token to cover the rounding of spending it hit by hit.
//! - sliding log: not reservable (each hit is remembered at its own instant); the amount
//!   is exactly `need`, recorded at `now`, and only usable at once.
//!
//! **What a reservation costs when its holder dies:** its unused part stays counted
//! (never over-granted, possibly under-granted), plus for a token bucket at most its
//! lifetime's refill.

use serde::{Deserialize, Serialize};

use crate::{Algorithm, CounterState, Decision, Nanos, Rate};

/// Shortest lifetime of a token-bucket reservation.
const MIN_BUCKET_LIFETIME: Nanos = 1_000_000;

/// What a leader asks for on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRequest {
    /// Cost that must pass now (the hits waiting for this reservation); 0 only peeks.
    pub need: u64,
    /// Most extra quota wanted beyond `need` (the key's recent demand over the horizon).
    pub extra_cap: u64,
    /// Extra never exceeds this share, in percent, of the headroom left after `need`.
    pub fraction_percent: u8,
    /// Longest lifetime of a token-bucket reservation.
    pub horizon: Nanos,
}

/// What [`CounterState::reserve`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    /// Quota recorded as consumed; 0 when `need` did not pass (see `decision`).
    pub granted: u64,
    /// The reservation may be spent at instants in `[now, valid_until)`.
    pub valid_until: Nanos,
    /// The algorithm's answer for consuming `granted` at `now` (for `need` when refused):
    /// remaining quota, reset and retry times.
    pub decision: Decision,
}

impl CounterState {
    /// Reserves quota at `now` as described in the [module docs](self).
    pub fn reserve(&mut self, rate: &Rate, now: Nanos, request: ReserveRequest) -> Reserved {
        let need = request.need;
        let mut probe = self.clone();
        let for_need = probe.check(rate, now, need);
        if !for_need.allowed || need == 0 {
            return Reserved {
                granted: 0,
                valid_until: now,
                decision: for_need,
            };
        }
        let reservable = rate.algorithm != Algorithm::SlidingLog;
        let share =
            u128::from(for_need.remaining) * u128::from(request.fraction_percent.min(100)) / 100;
        let extra = if reservable {
            u64::try_from(share)
                .unwrap_or(u64::MAX)
                .min(request.extra_cap)
        } else {
            0
        };
        let (granted, decision) = match need.checked_add(extra) {
            Some(amount) if extra > 0 => {
                let mut probe = self.clone();
                let d = probe.check(rate, now, amount);
                if d.allowed {
                    (amount, d)
                } else {
                    (need, for_need)
                }
            }
            _ => (need, for_need),
        };
        let valid_until = match (rate.bucket_end(now), rate.algorithm) {
            (Some(end), _) => end,
            (None, Algorithm::TokenBucket) => {
                let refill = rate.emission_interval().saturating_mul(granted);
                let lifetime = refill.clamp(
                    MIN_BUCKET_LIFETIME,
                    request.horizon.max(MIN_BUCKET_LIFETIME),
                );
                now.saturating_add(lifetime)
            }
            (None, _) => now.saturating_add(1),
        };
        let at = if reservable {
            valid_until.saturating_sub(1).max(now)
        } else {
            now
        };
        self.force(rate, at, granted);
        if let CounterState::TokenBucket(bucket) = self {
            // Spent hit by hit, each hit's increment rounds up by under 1 ns: at most
            // `granted` hits, so `granted` ns covers the rounding of any way of spending.
            bucket.postpone(granted);
        }
        Reserved {
            granted,
            valid_until,
            decision,
        }
    }
}

impl CounterState {
    /// Takes back the unused part `cost` of a reservation that was valid until
    /// `valid_until` (a settle). Only windowed algorithms can: the reservation is counted
    /// in the bucket ending at `valid_until`, and while that bucket is still stored the
    /// count simply shrinks. A token bucket or sliding log, or a bucket already dropped,
    /// is left as it is (stricter, never looser).
    pub fn refund(&mut self, rate: &Rate, valid_until: Nanos, cost: u64) {
        let Some(len) = rate.bucket_len() else {
            return;
        };
        // Only the end of a bucket of this rate names one.
        if !valid_until.is_multiple_of(len) || valid_until < len {
            return;
        }
        let start = valid_until - len;
        if !self.runs(rate) {
            return;
        }
        match self {
            CounterState::FixedWindow(s) => s.refund(rate, start, cost),
            CounterState::SlidingWindow(s) => s.refund(rate, start, cost),
            CounterState::SlidingSlots(s) => s.refund(rate, start, cost),
            CounterState::TokenBucket(_) | CounterState::SlidingLog(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::SECOND;

    fn request(need: u64, extra_cap: u64) -> ReserveRequest {
        ReserveRequest {
            need,
            extra_cap,
            fraction_percent: 10,
            horizon: SECOND,
        }
    }

    #[test]
    fn takes_a_tenth_of_the_headroom_beyond_the_need() {
        let rate = Rate::new(Algorithm::FixedWindow, 1000, 60 * SECOND, None).unwrap();
        let mut s = CounterState::new(&rate);
        let r = s.reserve(&rate, 5 * SECOND, request(1, u64::MAX));
        // 999 left after the need, a tenth of it extra.
        assert_eq!(r.granted, 1 + 99);
        assert_eq!(r.valid_until, 60 * SECOND);
        assert_eq!(r.decision.remaining, 900);
    }

    #[test]
    fn shrinks_to_the_need_near_the_limit_and_refuses_past_it() {
        let rate = Rate::new(Algorithm::FixedWindow, 10, SECOND, None).unwrap();
        let mut s = CounterState::new(&rate);
        s.force(&rate, 0, 9);
        let r = s.reserve(&rate, 1, request(1, u64::MAX));
        assert_eq!(r.granted, 1);
        let refused = s.reserve(&rate, 2, request(1, u64::MAX));
        assert_eq!(refused.granted, 0);
        assert!(!refused.decision.allowed);
    }

    #[test]
    fn extra_is_capped_by_recent_demand() {
        let rate = Rate::new(Algorithm::FixedWindow, 1_000_000, SECOND, None).unwrap();
        let mut s = CounterState::new(&rate);
        assert_eq!(s.reserve(&rate, 0, request(2, 30)).granted, 32);
    }

    #[test]
    fn sliding_log_reserves_exactly_the_need_for_now_only() {
        let rate = Rate::new(Algorithm::SlidingLog, 100, SECOND, None).unwrap();
        let mut s = CounterState::new(&rate);
        let r = s.reserve(&rate, 7, request(3, u64::MAX));
        assert_eq!((r.granted, r.valid_until), (3, 8));
    }

    fn windowed_rate() -> impl Strategy<Value = Rate> {
        (
            0..3u8,
            1..50u64,
            1..4u64,
            prop::sample::select(vec![1u16, 2, 4]),
        )
            .prop_map(|(alg, limit, secs, precision)| match alg {
                0 => Rate::new(Algorithm::FixedWindow, limit, secs * SECOND, None).unwrap(),
                1 => Rate::with_precision(
                    Algorithm::SlidingWindow,
                    limit,
                    secs * SECOND,
                    None,
                    Some(u64::from(precision)),
                )
                .unwrap(),
                _ => Rate::with_precision(
                    Algorithm::SlidingWindow,
                    limit,
                    secs * SECOND,
                    None,
                    Some(1),
                )
                .unwrap(),
            })
    }

    /// Random history: (gap, cost) pairs applied with `force`.
    fn history() -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0..2 * SECOND, 0..6u64), 0..12)
    }

    fn replay(rate: &Rate, history: &[(u64, u64)]) -> (CounterState, Nanos) {
        let mut s = CounterState::new(rate);
        let mut now = 10 * SECOND;
        for &(gap, cost) in history {
            now += gap;
            let _ = s.check(rate, now, cost);
        }
        (s, now)
    }

    /// Spends reservation `r` (made at `now`) on `truth` hit by hit: `spends` are
    /// (instant in thousandths of its lifetime, cost) pairs, taken in time order, each
    /// cost cut to what is left. Every hit must pass the algorithm. Returns what is left.
    fn spend(
        truth: &mut CounterState,
        rate: &Rate,
        now: Nanos,
        r: &Reserved,
        spends: &[(u64, u64)],
    ) -> Result<u64, TestCaseError> {
        let span = r.valid_until - now;
        let mut times: Vec<Nanos> = spends.iter().map(|(f, _)| now + span * f / 1000).collect();
        times.sort_unstable();
        let mut left = r.granted;
        for (t, (_, cost)) in times.into_iter().zip(spends) {
            let cost = (*cost).min(left);
            if cost == 0 {
                break;
            }
            prop_assert!(
                truth.check(rate, t, cost).allowed,
                "spent hit denied at {t}"
            );
            left -= cost;
        }
        Ok(left)
    }

    proptest! {
        /// Windowed algorithms: spending a reservation at any instants before it expires
        /// is allowed hit by hit by the algorithm itself, and the reservation's record is
        /// the state those hits leave when all of it is spent.
        #[test]
        fn windowed_reservation_is_spent_as_the_algorithm_allows(
            rate in windowed_rate(),
            past in history(),
            gap in 0..SECOND,
            need in 1..5u64,
            extra_cap in 0..40u64,
            spends in prop::collection::vec((0u64..1000, 1..4u64), 1..20),
        ) {
            let (state, last) = replay(&rate, &past);
            let now = last + gap;
            let mut ledger = state.clone();
            let r = ledger.reserve(&rate, now, request(need, extra_cap));
            prop_assume!(r.granted > 0);
            prop_assert!(r.valid_until > now);
            // Spend it all at random instants in [now, valid_until), in time order.
            let mut truth = state.clone();
            let left = spend(&mut truth, &rate, now, &r, &spends)?;
            if left > 0 {
                let t = r.valid_until - 1;
                prop_assert!(truth.check(&rate, t, left).allowed);
            }
            // Every later check sees the same counts.
            for probe in [r.valid_until - 1, r.valid_until, r.valid_until + rate.window()] {
                let a = ledger.clone().check(&rate, probe, 0);
                let b = truth.clone().check(&rate, probe, 0);
                prop_assert_eq!(a.remaining, b.remaining);
            }
        }

        /// Windowed algorithms: giving back the unused part of a reservation, at any
        /// later time, leaves the ledger exactly as strict as the hits actually spent.
        #[test]
        fn refunding_the_unused_part_leaves_what_was_spent(
            rate in windowed_rate(),
            past in history(),
            gap in 0..SECOND,
            need in 1..5u64,
            spend_share in 0u64..=100,
            settle_after in 0..3 * SECOND,
        ) {
            let (state, last) = replay(&rate, &past);
            let now = last + gap;
            let mut ledger = state.clone();
            let r = ledger.reserve(&rate, now, request(need, u64::MAX));
            prop_assume!(r.granted > 0);
            let spent = r.granted * spend_share / 100;
            let mut truth = state.clone();
            if spent > 0 {
                prop_assert!(truth.check(&rate, now, spent).allowed);
            }
            ledger.refund(&rate, r.valid_until, r.granted - spent);
            for probe in [now, r.valid_until - 1, now + settle_after, r.valid_until + rate.window()] {
                let a = ledger.clone().check(&rate, probe, 0);
                let b = truth.clone().check(&rate, probe, 0);
                prop_assert_eq!(a.remaining, b.remaining, "at {}", probe);
            }
        }

        /// Token bucket: any way of spending a reservation before it expires passes GCRA
        /// hit by hit, and the ledger is never less strict than what those hits left.
        #[test]
        fn bucket_reservation_bounds_every_way_of_spending_it(
            limit in 1..50u64,
            burst in 1..80u64,
            past in history(),
            gap in 0..SECOND,
            need in 1..5u64,
            extra_cap in 0..40u64,
            spends in prop::collection::vec((0u64..1000, 1..4u64), 1..20),
        ) {
            let rate = Rate::new(Algorithm::TokenBucket, limit, SECOND, Some(burst)).unwrap();
            let (state, last) = replay(&rate, &past);
            let now = last + gap;
            let mut ledger = state.clone();
            let r = ledger.reserve(&rate, now, request(need, extra_cap));
            prop_assume!(r.granted > 0);
            let mut truth = state.clone();
            spend(&mut truth, &rate, now, &r, &spends)?;
            let (CounterState::TokenBucket(l), CounterState::TokenBucket(t)) = (&ledger, &truth) else {
                return Err(TestCaseError::fail("not a token bucket"));
            };
            prop_assert!(l.tat() >= t.tat(), "ledger {} less strict than truth {}", l.tat(), t.tat());
        }
    }
}
