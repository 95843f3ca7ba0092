//! Sliding window counter: the two-counter approximation used by Cloudflare and Kong.
//!
//! Time is cut into epoch-aligned windows as in [`crate::fixed_window`]. The state keeps
//! the cost counted in the current window (`current`) and in the one before it
//! (`previous`). At an instant `now` that is `elapsed` into the current window, the cost in
//! the sliding window `(now − window, now]` is estimated by assuming the previous window's
//! hits were spread evenly over it:
//!
//! ```text
//! estimate = ⌈previous · (window − elapsed) / window⌉ + current
//! ```
//!
//! (`window − elapsed` is how much of the previous window still overlaps the sliding
//! window.) A hit of `cost` is allowed iff `estimate + cost ≤ limit`.
//!
//! **Rounding:** the product is exact in `u128`, and the weighted share is rounded *up*, so
//! the estimate is never below the real-valued formula: rounding can only deny, never
//! allow, one unit more than Cloudflare's floating-point version.
//!
//! # Error bound against the exact log
//! Let `exact(now)` be the cost of allowed hits in `(now − window, now]`, and `tail` the
//! part of `previous` that still lies in it. Then `exact = current + tail` with
//! `0 ≤ tail ≤ previous`, so for every instant:
//!
//! - **over-admission:** `exact − estimate ≤ previous − ⌈previous·(window−elapsed)/window⌉
//!   ≤ previous · elapsed / window` (worst when the previous window's hits bunched at its
//!   end);
//! - **under-admission:** `estimate − exact ≤ ⌈previous·(window−elapsed)/window⌉` (worst
//!   when they bunched at its start; the counter then denies hits the exact log allows).
//!
//! Since checks keep `current ≤ limit` and `previous ≤ limit`, **no sliding window of
//! length `window` ever contains more than `2·limit − 1` of allowed cost** (the `−1` because
//! the bunch must sit at least 1 ns inside both windows; the property tests check `2·limit`
//! and the two inequalities above). When the previous window's hits were spread evenly —
//! steady traffic — the estimate is within one unit of exact; the tests compare it with
//! [`crate::sliding_log`] on uniform traffic. Cloudflare measured 0.003 % of 400 M
//! requests wrongly allowed or limited on real traffic.
//!
//! **Guarantees:** O(1) time, 24 bytes of state, deterministic integer arithmetic.
//! **Does not promise:** exactness; use [`crate::sliding_log`] (memory bounded by the
//! limit) when exactness matters.
//!
//! **Time going backwards:** a `now` before the stored window's start acts as that start.
//! Within the window an earlier `now` only gives the previous window more weight, which is
//! stricter, so no separate `last` instant is stored and an earlier clock never admits more.

use serde::{Deserialize, Serialize};

use crate::arith::{mul_div_ceil, mul_div_floor, saturate, until, window_start};
use crate::{Decision, Nanos, Rate};

/// Two-counter sliding-window state for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingWindow {
    /// Start of the window `current` counts, aligned to the window length in force when it
    /// was last written.
    window_start: Nanos,
    /// Cost allowed in the window starting at `window_start`.
    current: u64,
    /// Cost allowed in the window just before it.
    previous: u64,
}

/// The counter as seen at one instant, after rolling windows forward to `now`.
struct View {
    start: Nanos,
    /// `now − start`, clamped at zero; always `< window`.
    elapsed: Nanos,
    current: u64,
    previous: u64,
}

impl View {
    /// The weighted previous count, rounded up.
    fn weighted_previous(&self, window: Nanos) -> u64 {
        saturate(mul_div_ceil(
            self.previous,
            window.saturating_sub(self.elapsed),
            window,
        ))
    }

    fn estimate(&self, window: Nanos) -> u64 {
        self.weighted_previous(window).saturating_add(self.current)
    }

    /// The instant the estimate reaches zero: the current window's hits have slid out.
    fn reset_at(&self, window: Nanos, now: Nanos) -> Nanos {
        if self.current > 0 {
            self.start.saturating_add(window).saturating_add(window)
        } else if self.previous > 0 {
            self.start.saturating_add(window)
        } else {
            now
        }
    }

    /// The earliest instant a hit of `cost` (`cost ≤ limit`) passes if nothing else happens.
    fn allowed_at(&self, window: Nanos, limit: u64, cost: u64) -> Nanos {
        let room = limit.saturating_sub(cost);
        if self.current <= room {
            // Passes within this window once the previous window's weight has decayed:
            // ⌈previous·(window−e)/window⌉ ≤ room  ⇔  window − e ≤ ⌊room·window/previous⌋.
            // At the latest it passes when the next window starts (weight = current only).
            let e = elapsed_needed(self.previous, room - self.current, window);
            self.start.saturating_add(e)
        } else {
            // Must wait for the next window, where `current` becomes the previous count.
            let e = elapsed_needed(self.current, room, window);
            self.start.saturating_add(window).saturating_add(e)
        }
    }
}

/// The least `e ∈ [0, window]` with `⌈weighted · (window − e) / window⌉ ≤ room`.
fn elapsed_needed(weighted: u64, room: u64, window: Nanos) -> Nanos {
    if weighted == 0 {
        return 0;
    }
    let overlap_allowed = saturate(mul_div_floor(room, window, weighted)).min(window);
    window - overlap_allowed
}

impl SlidingWindow {
    /// Start of the window `current` counts.
    pub fn window_start(&self) -> Nanos {
        self.window_start
    }

    /// Cost allowed in the stored window.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// Cost allowed in the window before the stored one.
    pub fn previous(&self) -> u64 {
        self.previous
    }

    /// Checks a hit of `cost` at `now`; consumes it only if allowed. `cost == 0` peeks.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let limit = rate.limit;
        let window = rate.window.max(1);
        let view = self.view(window, now);
        let estimate = view.estimate(window);
        let remaining = limit.saturating_sub(estimate);
        let reset_after = until(view.reset_at(window, now), now);
        if cost == 0 {
            return Decision::allow(limit, remaining, reset_after);
        }
        if cost > limit {
            return Decision::cost_exceeds_limit(limit, remaining, reset_after);
        }
        if cost > remaining {
            let retry_after = until(view.allowed_at(window, limit, cost), now);
            return Decision::over_limit(limit, remaining, reset_after, retry_after);
        }
        self.consume(&view, cost);
        let after = View {
            current: self.current,
            ..view
        };
        Decision::allow(
            limit,
            remaining - cost,
            until(after.reset_at(window, now), now),
        )
    }

    /// Records `cost` consumed at `now` without asking (replay of a decision made elsewhere).
    /// Saturates; `cost == 0` changes nothing, exactly like a peek.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if cost == 0 {
            return;
        }
        let view = self.view(rate.window.max(1), now);
        self.consume(&view, cost);
    }

    /// From this instant on the state behaves like [`SlidingWindow::default`]: both counted
    /// windows have slid out.
    pub fn idle_at(&self, rate: &Rate) -> Nanos {
        let window = rate.window.max(1);
        let start = window_start(self.window_start, window);
        if self.current > 0 {
            start.saturating_add(window).saturating_add(window)
        } else if self.previous > 0 {
            start.saturating_add(window)
        } else {
            0
        }
    }

    fn view(&self, window: Nanos, now: Nanos) -> View {
        // Re-align the stored start in case the window length changed since it was written.
        let stored = window_start(self.window_start, window);
        let current = window_start(now, window);
        if current <= stored {
            // Same window, or `now` is behind it: clamp to the stored window.
            return View {
                start: stored,
                elapsed: now.saturating_sub(stored),
                current: self.current,
                previous: self.previous,
            };
        }
        // `checked_add`: if `stored + window` overflows, no later window exists, and we are
        // in the branch above.
        let previous = if stored.checked_add(window) == Some(current) {
            self.current
        } else {
            0
        };
        View {
            start: current,
            elapsed: now - current,
            current: 0,
            previous,
        }
    }

    fn consume(&mut self, view: &View, cost: u64) {
        self.window_start = view.start;
        self.current = view.current.saturating_add(cost);
        self.previous = view.previous;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason};

    fn rate(limit: u64, window: Nanos) -> Rate {
        Rate::new(Algorithm::SlidingWindow, limit, window, None).unwrap()
    }

    #[test]
    fn previous_window_weighs_by_overlap() {
        let r = rate(10, 100);
        let mut s = SlidingWindow::default();
        assert!(s.check(&r, 50, 10).allowed);
        // At 125 the previous window [0,100) overlaps (25,125] by 75 %: ⌈10·0.75⌉ = 8.
        let d = s.check(&r, 125, 0);
        assert_eq!(d.remaining, 2);
        // 3 does not fit now; it fits when the weight drops to 7 (⌊7·100/10⌋ = 70 overlap).
        let d = s.check(&r, 125, 3);
        assert_eq!(d.denied, Some(DenyReason::OverLimit));
        assert_eq!(d.retry_after, Some(5));
        assert!(s.check(&r, 130, 3).allowed);
    }

    #[test]
    fn full_window_waits_for_next_one() {
        let r = rate(4, 100);
        let mut s = SlidingWindow::default();
        assert!(s.check(&r, 10, 4).allowed);
        let d = s.check(&r, 20, 4);
        // Next window starts at 100 with previous = 4, full weight; room 0 needs e = 100.
        assert_eq!(d.retry_after, Some(180));
        assert_eq!(d.reset_after, 180);
        assert!(!s.check(&r, 199, 4).allowed);
        assert!(s.check(&r, 200, 4).allowed);
    }

    #[test]
    fn skipped_windows_forget_everything() {
        let r = rate(4, 100);
        let mut s = SlidingWindow::default();
        assert!(s.check(&r, 10, 4).allowed);
        assert_eq!(s.idle_at(&r), 200);
        assert_eq!(s.check(&r, 250, 0).remaining, 4);
    }
}
