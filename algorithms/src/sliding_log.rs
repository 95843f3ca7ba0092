//! Sliding log: the exact sliding window.
//!
//! The state is the list of allowed hits `(instant, cost)` that are still inside the last
//! `window` nanoseconds, oldest first, with hits at the same instant coalesced into one
//! entry. A hit of `cost` at `now` is allowed iff the cost logged in `(now − window, now]`
//! plus `cost` is at most `limit`. An entry logged at `t` stops counting at `t + window`.
//!
//! **Guarantees:** exact — in every interval of length `window`, the allowed cost is at
//! most `limit`. Memory is bounded by the limit: every entry has cost ≥ 1 and the logged
//! cost never exceeds the limit through [`SlidingLog::check`], so at most `limit` entries
//! (and [`crate::rate::MAX_SLIDING_LOG_LIMIT`] caps the limit). [`SlidingLog::force`] can
//! log more than the limit; then the oldest entries are merged into their successors,
//! which only makes them count *longer* (stricter), so the bound on entries holds anyway.
//! Checks cost O(1) amortized: a running total is kept, and only entries that have slid
//! out are visited.
//! **Does not promise:** small memory for large limits; use [`crate::sliding_window`].
//!
//! **Time going backwards:** a `now` earlier than the newest entry acts as that entry's
//! instant, so a hit is never logged with an earlier instant (which would make it expire
//! early and hand out quota twice). The newest entry is always the latest consumption, so
//! no separate `last` field is needed.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::arith::until;
use crate::rate::MAX_SLIDING_LOG_LIMIT;
use crate::{Decision, Nanos, Rate};

/// One logged hit (or several at the same instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When the hit was allowed (or forced).
    pub at: Nanos,
    /// Its cost; always ≥ 1.
    pub cost: u64,
}

/// Exact sliding-log state for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingLog {
    /// Logged hits, oldest first, strictly increasing instants. May still hold entries that
    /// slid out since the last consumption: they are pruned only when the state changes, so
    /// that a denial or a peek never alters the state (replicas must match byte for byte).
    entries: VecDeque<LogEntry>,
    /// Sum of `entries[..].cost`, kept so a check need not add up the whole log.
    total: u64,
}

/// The log as seen at one instant.
struct View {
    /// `max(now, newest entry)`.
    now: Nanos,
    /// How many of the oldest entries have slid out.
    expired_entries: usize,
    /// Cost still inside the window.
    in_window: u64,
}

impl SlidingLog {
    /// The logged hits, oldest first (may include entries that have already slid out).
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &LogEntry> {
        self.entries.iter()
    }

    /// Checks a hit of `cost` at `now`; consumes it only if allowed. `cost == 0` peeks.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let limit = rate.limit;
        let window = rate.window.max(1);
        let view = self.view(window, now);
        let remaining = limit.saturating_sub(view.in_window);
        let reset_after = self.reset_after(&view, window, now);
        if cost == 0 {
            return Decision::allow(limit, remaining, reset_after);
        }
        if cost > limit {
            return Decision::cost_exceeds_limit(limit, remaining, reset_after);
        }
        if cost > remaining {
            let retry_after = until(self.allowed_at(&view, window, limit, cost), now);
            return Decision::over_limit(limit, remaining, reset_after, retry_after);
        }
        self.consume(rate, &view, cost);
        // The newest entry is now at `view.now` and the window is non-empty.
        Decision::allow(
            limit,
            remaining - cost,
            until(view.now.saturating_add(window), now),
        )
    }

    /// Records `cost` consumed at `now` without asking (replay of a decision made elsewhere).
    /// Saturates; `cost == 0` changes nothing, exactly like a peek.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if cost == 0 {
            return;
        }
        let view = self.view(rate.window.max(1), now);
        self.consume(rate, &view, cost);
    }

    /// From this instant on the state behaves like [`SlidingLog::default`]: the newest
    /// entry has slid out.
    pub fn idle_at(&self, rate: &Rate) -> Nanos {
        match self.entries.back() {
            Some(newest) => newest.at.saturating_add(rate.window.max(1)),
            None => 0,
        }
    }

    fn view(&self, window: Nanos, now: Nanos) -> View {
        let now = match self.entries.back() {
            Some(newest) => now.max(newest.at),
            None => now,
        };
        let mut expired_entries = 0;
        let mut expired_cost: u64 = 0;
        for entry in &self.entries {
            // `entry.at <= now` holds for well-formed state; saturate for anything else.
            if now.saturating_sub(entry.at) < window {
                break;
            }
            expired_entries += 1;
            expired_cost = expired_cost.saturating_add(entry.cost);
        }
        View {
            now,
            expired_entries,
            in_window: self.total.saturating_sub(expired_cost),
        }
    }

    fn reset_after(&self, view: &View, window: Nanos, now: Nanos) -> Nanos {
        match self.entries.back() {
            Some(newest) if view.in_window > 0 => until(newest.at.saturating_add(window), now),
            _ => 0,
        }
    }

    /// The instant enough old entries have slid out for `cost` (`≤ limit`) to fit.
    fn allowed_at(&self, view: &View, window: Nanos, limit: u64, cost: u64) -> Nanos {
        let mut in_window = view.in_window;
        for entry in self.entries.iter().skip(view.expired_entries) {
            in_window = in_window.saturating_sub(entry.cost);
            if in_window.saturating_add(cost) <= limit {
                return entry.at.saturating_add(window);
            }
        }
        // Unreachable for well-formed state (the last entry frees everything).
        view.now.saturating_add(window)
    }

    fn consume(&mut self, rate: &Rate, view: &View, cost: u64) {
        for _ in 0..view.expired_entries {
            if let Some(old) = self.entries.pop_front() {
                self.total = self.total.saturating_sub(old.cost);
            }
        }
        let Some(total) = self.total.checked_add(cost) else {
            // More than u64::MAX forced into one window: keep one entry that blocks
            // everything until `window` after now. Stricter than the entries it replaces.
            self.entries.clear();
            self.entries.push_back(LogEntry {
                at: view.now,
                cost: u64::MAX,
            });
            self.total = u64::MAX;
            return;
        };
        self.total = total;
        match self.entries.back_mut() {
            Some(newest) if newest.at == view.now => newest.cost += cost, // ≤ total: no overflow
            _ => self.entries.push_back(LogEntry { at: view.now, cost }),
        }
        // Bound memory even when `force` logs beyond the limit: fold the oldest entry into
        // the next one, which then counts for longer (never shorter).
        let max_entries =
            usize::try_from(rate.limit.clamp(1, MAX_SLIDING_LOG_LIMIT)).unwrap_or(usize::MAX);
        while self.entries.len() > max_entries {
            if let Some(oldest) = self.entries.pop_front() {
                if let Some(next) = self.entries.front_mut() {
                    next.cost = next.cost.saturating_add(oldest.cost);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason};

    fn rate(limit: u64, window: Nanos) -> Rate {
        Rate::new(Algorithm::SlidingLog, limit, window, None).unwrap()
    }

    #[test]
    fn entries_slide_out_after_window() {
        let r = rate(3, 100);
        let mut s = SlidingLog::default();
        assert!(s.check(&r, 10, 1).allowed);
        assert!(s.check(&r, 20, 2).allowed);
        let d = s.check(&r, 50, 2);
        assert_eq!(d.denied, Some(DenyReason::OverLimit));
        // Needs both entries gone: the one at 20 slides out at 120.
        assert_eq!(d.retry_after, Some(70));
        assert!(!s.check(&r, 119, 2).allowed);
        assert!(s.check(&r, 120, 2).allowed);
        assert_eq!(s.entries().len(), 1);
    }

    #[test]
    fn equal_instants_coalesce() {
        let r = rate(10, 100);
        let mut s = SlidingLog::default();
        for _ in 0..5 {
            assert!(s.check(&r, 7, 2).allowed);
        }
        assert_eq!(
            s.entries().copied().collect::<Vec<_>>(),
            vec![LogEntry { at: 7, cost: 10 }]
        );
    }

    #[test]
    fn forced_overflow_is_bounded_and_strict() {
        let r = rate(2, 100);
        let mut s = SlidingLog::default();
        for t in 0..10 {
            s.force(&r, t, 1);
        }
        assert_eq!(s.entries().len(), 2);
        // Merging moves cost later (stricter), yet here it matches the exact log: at 108
        // only the hit at 9 still counts.
        assert!(!s.check(&r, 107, 1).allowed);
        assert!(!s.check(&r, 108, 2).allowed);
        assert!(s.check(&r, 109, 2).allowed);
    }

    #[test]
    fn backwards_time_logs_at_newest_instant() {
        let r = rate(2, 100);
        let mut s = SlidingLog::default();
        assert!(s.check(&r, 50, 1).allowed);
        assert!(s.check(&r, 10, 1).allowed);
        assert_eq!(
            s.entries().copied().collect::<Vec<_>>(),
            vec![LogEntry { at: 50, cost: 2 }]
        );
    }
}
