//! Fixed window: at most `limit` cost per epoch-aligned window of `window` nanoseconds.
//!
//! Windows are aligned to the Unix epoch, as in envoyproxy/ratelimit: window `k` covers
//! `[k·window, (k+1)·window)`, so minute windows start at :00 and N×unit windows (10 s,
//! 15 min) start at multiples of their length. Every replica and every restart therefore
//! agrees on where a window starts without storing it per key.
//!
//! **Guarantees:** within one window the allowed cost never exceeds `limit`; the state is
//! one window start and one counter (16 bytes).
//! **Does not promise:** smoothness across a boundary. Up to `2·limit` can pass within
//! `window` nanoseconds straddling a boundary (the known weakness of fixed windows; use
//! [`crate::sliding_window`] or [`crate::sliding_log`] when that matters).
//!
//! **Time going backwards:** a `now` in a window before the stored one is counted in the
//! stored window (it "acts as" that window's start); within one window the exact instant
//! does not affect the decision, so no separate `last` instant is stored.

use serde::{Deserialize, Serialize};

use crate::arith::{until, window_start};
use crate::{Decision, Nanos, Rate};

/// Fixed-window counter state for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedWindow {
    /// Start of the window `count` belongs to, aligned to the window length in force when it
    /// was last written.
    window_start: Nanos,
    /// Cost consumed in that window. Zero only in the default (fresh) state.
    count: u64,
}

/// The counter as seen at one instant: which window is current and how much it has used.
struct View {
    start: Nanos,
    end: Nanos,
    used: u64,
}

impl FixedWindow {
    /// Start of the window holding [`FixedWindow::count`].
    pub fn window_start(&self) -> Nanos {
        self.window_start
    }

    /// Cost consumed in the stored window.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks a hit of `cost` at `now`; consumes it only if allowed. `cost == 0` peeks.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let limit = rate.limit;
        let view = self.view(rate, now);
        let remaining = limit.saturating_sub(view.used);
        let reset_after = if view.used == 0 {
            0
        } else {
            until(view.end, now)
        };
        if cost == 0 {
            return Decision::allow(limit, remaining, reset_after);
        }
        if cost > limit {
            return Decision::cost_exceeds_limit(limit, remaining, reset_after);
        }
        if cost > remaining {
            // The next window starts empty and `cost <= limit`, so it passes there.
            return Decision::over_limit(limit, remaining, reset_after, until(view.end, now));
        }
        self.consume(&view, cost);
        Decision::allow(limit, remaining - cost, until(view.end, now))
    }

    /// Records `cost` consumed at `now` without asking (replay of a decision made elsewhere).
    /// Saturates; `cost == 0` changes nothing, exactly like a peek.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if cost == 0 {
            return;
        }
        let view = self.view(rate, now);
        self.consume(&view, cost);
    }

    /// Takes back `cost` counted in the window that starts at `start` (an unused
    /// reservation); nothing if that window is no longer the stored one.
    pub(crate) fn refund(&mut self, rate: &Rate, start: Nanos, cost: u64) {
        if window_start(self.window_start, rate.window) == start {
            self.count = self.count.saturating_sub(cost);
        }
    }

    /// From this instant on the state behaves like [`FixedWindow::default`]: the stored
    /// window has ended.
    pub fn idle_at(&self, rate: &Rate) -> Nanos {
        if self.count == 0 {
            return 0;
        }
        window_start(self.window_start, rate.window).saturating_add(rate.window.max(1))
    }

    fn view(&self, rate: &Rate, now: Nanos) -> View {
        let window = rate.window.max(1);
        // Re-align the stored start in case the window length changed since it was written.
        let stored = window_start(self.window_start, window);
        let current = window_start(now, window);
        if current > stored || self.count == 0 {
            View {
                start: current,
                end: current.saturating_add(window),
                used: 0,
            }
        } else {
            // Same window, or `now` is behind it: clamp to the stored window.
            View {
                start: stored,
                end: stored.saturating_add(window),
                used: self.count,
            }
        }
    }

    fn consume(&mut self, view: &View, cost: u64) {
        self.window_start = view.start;
        self.count = view.used.saturating_add(cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason, SECOND};

    fn rate(limit: u64, window: Nanos) -> Rate {
        Rate::new(Algorithm::FixedWindow, limit, window, None).unwrap()
    }

    #[test]
    fn windows_are_epoch_aligned() {
        let r = rate(2, 10 * SECOND);
        let mut s = FixedWindow::default();
        // 9.5 s is in window [0, 10 s); 10 s starts a new one.
        assert!(s.check(&r, 9_500_000_000, 2).allowed);
        let denied = s.check(&r, 9_600_000_000, 1);
        assert_eq!(denied.denied, Some(DenyReason::OverLimit));
        assert_eq!(denied.retry_after, Some(400_000_000));
        assert!(s.check(&r, 10 * SECOND, 2).allowed);
    }

    #[test]
    fn cost_above_limit_never_passes() {
        let r = rate(5, SECOND);
        let d = FixedWindow::default().check(&r, 0, 6);
        assert_eq!(d.denied, Some(DenyReason::CostExceedsLimit));
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn backwards_time_counts_in_the_stored_window() {
        let r = rate(3, SECOND);
        let mut s = FixedWindow::default();
        assert!(s.check(&r, 5 * SECOND, 3).allowed);
        let d = s.check(&r, 4 * SECOND, 1);
        assert!(!d.allowed);
        // Retry is measured from the caller's (earlier) now to the stored window's end.
        assert_eq!(d.retry_after, Some(2 * SECOND));
    }

    #[test]
    fn peek_reports_full_quota_and_changes_nothing() {
        let r = rate(3, SECOND);
        let mut s = FixedWindow::default();
        let d = s.check(&r, 7, 0);
        assert_eq!((d.allowed, d.remaining, d.reset_after), (true, 3, 0));
        assert_eq!(s, FixedWindow::default());
    }
}
