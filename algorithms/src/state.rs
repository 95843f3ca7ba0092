//! The per-key state of one counter, whichever algorithm it runs.

use serde::{Deserialize, Serialize};

use crate::fixed_window::FixedWindow;
use crate::sliding_log::SlidingLog;
use crate::sliding_slots::SlidingSlots;
use crate::sliding_window::SlidingWindow;
use crate::token_bucket::TokenBucket;
use crate::{Algorithm, Decision, Nanos, Rate};

/// One counter's state. Small and serde-compact: snapshots carry millions of these.
///
/// The [`Rate`] is not stored here; it comes from the policy on every call, so a
/// snapshot holds only what changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterState {
    FixedWindow(FixedWindow),
    SlidingWindow(SlidingWindow),
    SlidingLog(SlidingLog),
    TokenBucket(TokenBucket),
    /// `sliding_window` with precision > 1. Last, so older snapshots decode unchanged.
    SlidingSlots(SlidingSlots),
}

impl CounterState {
    /// A fresh, full counter for `rate`.
    pub fn new(rate: &Rate) -> CounterState {
        match rate.algorithm {
            Algorithm::FixedWindow => CounterState::FixedWindow(FixedWindow::default()),
            Algorithm::SlidingWindow if rate.precision > 1 => {
                CounterState::SlidingSlots(SlidingSlots::default())
            }
            Algorithm::SlidingWindow => CounterState::SlidingWindow(SlidingWindow::default()),
            Algorithm::SlidingLog => CounterState::SlidingLog(SlidingLog::default()),
            Algorithm::TokenBucket => CounterState::TokenBucket(TokenBucket::default()),
        }
    }

    /// Whether this state is of the kind `rate` runs (a policy change may switch
    /// algorithms, or a sliding window between precision 1 and more; then the old state is
    /// discarded and a fresh counter starts). A change between two precisions above 1 keeps
    /// the state: [`SlidingSlots`] folds it, stricter.
    pub fn runs(&self, rate: &Rate) -> bool {
        let slotted = rate.precision > 1;
        matches!(
            (self, rate.algorithm),
            (CounterState::FixedWindow(_), Algorithm::FixedWindow)
                | (CounterState::SlidingLog(_), Algorithm::SlidingLog)
                | (CounterState::TokenBucket(_), Algorithm::TokenBucket)
        ) || match (self, rate.algorithm) {
            (CounterState::SlidingWindow(_), Algorithm::SlidingWindow) => !slotted,
            (CounterState::SlidingSlots(_), Algorithm::SlidingWindow) => slotted,
            _ => false,
        }
    }

    /// Checks a hit of `cost` at `now`, consuming quota if allowed. `cost == 0` only peeks.
    ///
    /// `rate.algorithm` must match the state; otherwise the state is reset first.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        if !self.runs(rate) {
            *self = CounterState::new(rate);
        }
        match self {
            CounterState::FixedWindow(s) => s.check(rate, now, cost),
            CounterState::SlidingWindow(s) => s.check(rate, now, cost),
            CounterState::SlidingLog(s) => s.check(rate, now, cost),
            CounterState::TokenBucket(s) => s.check(rate, now, cost),
            CounterState::SlidingSlots(s) => s.check(rate, now, cost),
        }
    }

    /// Records `cost` as consumed at `now` without asking: used to replay a decision
    /// another node already made (fast consistency mode). Never fails; saturates at the
    /// limit rather than overflowing.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if !self.runs(rate) {
            *self = CounterState::new(rate);
        }
        match self {
            CounterState::FixedWindow(s) => s.force(rate, now, cost),
            CounterState::SlidingWindow(s) => s.force(rate, now, cost),
            CounterState::SlidingLog(s) => s.force(rate, now, cost),
            CounterState::TokenBucket(s) => s.force(rate, now, cost),
            CounterState::SlidingSlots(s) => s.force(rate, now, cost),
        }
    }

    /// The instant from which this state is indistinguishable from a fresh one, so the
    /// key may be dropped. Deterministic: depends only on the state and the rate.
    pub fn idle_at(&self, rate: &Rate) -> Nanos {
        match self {
            CounterState::FixedWindow(s) => s.idle_at(rate),
            CounterState::SlidingWindow(s) => s.idle_at(rate),
            CounterState::SlidingLog(s) => s.idle_at(rate),
            CounterState::TokenBucket(s) => s.idle_at(rate),
            CounterState::SlidingSlots(s) => s.idle_at(rate),
        }
    }
}
