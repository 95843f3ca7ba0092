//! Sliding window with sub-windows: `sliding_window` at `precision` N > 1.
//!
//! The window `W` is cut into `N` epoch-aligned slots of length `L = W / N` (the policy
//! checks that `N` divides `W`). The state keeps the cost allowed in the newest `N + 1`
//! slots. At an instant `now` that is `e` into its slot, the slots of age `0..N` (age 0
//! holds `now`) lie wholly inside the true window `(now − W, now]`, and the slot of age `N`
//! overlaps it by `L − e`; as in the two-counter form, that one slot's hits are assumed to
//! be spread evenly over it:
//!
//! ```text
//! estimate = full + ⌊partial · (L − e) / L⌋,   full = Σ_{age < N} count[age],
//!                                            partial = count[N]
//! ```
//!
//! A hit of `cost` is allowed iff `estimate + cost ≤ limit`. With `N = 1` this is exactly
//! the two-counter formula of [`crate::sliding_window`] (which is what `precision: 1` runs).
//! The weighted share is rounded down, for the reason given there: rounding up would keep
//! a saturated key below the limit forever.
//!
//! # The bound: a true window exceeds the limit by at most one slot's count
//! Let an allowed hit of `cost` land at `t = s + e`, `s` the start of its slot (ages are
//! counted from that slot). Then:
//! - slots of age `1 ≤ a ≤ N − 1` (and the hit's own slot, age 0, up to `t`) lie inside
//!   `(t − W, t]`: the slot of age `N − 1` starts at `s − (N−1)L > s + e − NL = t − W`;
//! - slots of age `≥ N + 1` end at `s − NL ≤ t − W`, so none of their hits is inside;
//! - of the slot of age `N`, only a part `tail ≤ partial` is inside.
//!
//! So `exact(t) = full + tail + cost`, and the check passed, `full + ⌊partial·(L−e)/L⌋ +
//! cost ≤ limit`. Subtracting,
//!
//! ```text
//! exact(t) − limit ≤ tail − ⌊partial·(L−e)/L⌋ ≤ partial − ⌊partial·(L−e)/L⌋ = ⌈partial·e/L⌉ ≤ partial
//! ```
//!
//! The count in a true window only grows at an allowed hit, so the largest true window
//! ends at one: **every interval of length `W` holds at most `limit + c` of allowed cost,
//! where `c` is the count of the one slot that straddles its start** (at most `⌈c·e/L⌉`
//! beyond the limit, worst when that slot's hits bunched at its end). Each slot's count is
//! at most `limit` (its own hits all passed the check), so the crude bound is `2·limit`,
//! as for the two-counter form, but on traffic spread over the window a slot holds about
//! `limit / N` and so does the overshoot. In the other direction the counter may deny a hit
//! the exact log would allow, by at most `⌊partial·(L−e)/L⌋` (the slot's hits bunched at
//! its start). The property tests check both against an exact log on random and bursty
//! traffic; `quorate-bench sliding-accuracy` measures them (`docs/benchmarks.md`).
//!
//! The bound holds for a fixed rate, for the hits this state consumed at their effective
//! instants (see below). **Not promised:** anything about hits [`SlidingSlots::force`]d
//! beyond the limit, or across a change of window or precision.
//!
//! # State, memory, time
//! The newest slot's start and `N + 1` counts, newest first, 16 bits each while every
//! count fits (any limit up to 65 535), else 64 bits each: 32 bytes inline plus `2·(N+1)`
//! bytes on the heap (`8·(N+1)` for wide counts). A fresh state allocates nothing. A check
//! is O(N) additions of small integers plus one `u128` multiply-divide; a denial's
//! `retry_after` is O(N). Deterministic integer arithmetic, saturating, never panicking.
//!
//! **Time going backwards:** a `now` in a slot before the newest stored one acts as that
//! slot's start; within a slot an earlier `now` only weighs the straddling slot more,
//! which is stricter. So an earlier clock never admits more, and hits are always counted
//! in a slot at or after the newest one.
//!
//! **A change of precision** (the stored counts do not have `N + 1` slots) folds every
//! counted cost into one slot at the newest slot's start, which then counts for a whole
//! window from there. **A change of window** with the same precision reads the counts as
//! slots of the new length. Both re-align the newest slot's start down to the new slot
//! length, as the two-counter form does on a window change: approximate, and not covered
//! by the bound, which is promised for a fixed rate.

use serde::{Deserialize, Serialize};

use crate::arith::{mul_div_floor, saturate, until, window_start};
use crate::rate::MAX_SLIDING_PRECISION;
use crate::sliding_window::elapsed_needed;
use crate::{Decision, Nanos, Rate};

/// Sliding-window state with `N` sub-windows, for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlidingSlots {
    /// Start of the newest slot (age 0), aligned to the slot length in force when it was
    /// last written.
    newest_start: Nanos,
    /// Cost per slot, newest first: `counts[a]` is the slot `a` slots before the newest.
    counts: Counts,
}

/// The slot counts, as narrow as they fit. Which form a state has depends only on the
/// counts it holds, so replicas and snapshots agree on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Counts {
    /// Every count fits in 16 bits.
    Narrow(Box<[u16]>),
    /// Some count needs more (a limit above 65 535, or forced cost).
    Wide(Box<[u64]>),
}

impl Default for Counts {
    /// No slots: the fresh state, which allocates nothing.
    fn default() -> Counts {
        Counts::Narrow(Box::default())
    }
}

/// The slot geometry a rate implies: `n` slots of `slot` ns. Never panics, whatever the
/// rate (a hand-built one may have a precision or window that [`Rate::with_precision`]
/// would refuse).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    slot: Nanos,
}

impl Geometry {
    fn of(rate: &Rate) -> Geometry {
        let n = rate.precision.clamp(1, MAX_SLIDING_PRECISION);
        Geometry {
            n: usize::from(n),
            slot: (rate.window / u64::from(n)).max(1),
        }
    }

    /// `k` slots, in ns, saturating.
    fn slots(&self, k: usize) -> Nanos {
        self.slot
            .saturating_mul(u64::try_from(k).unwrap_or(u64::MAX))
    }
}

/// The counter as seen at one instant, after sliding the slots forward to `now`.
struct View {
    /// Start of the slot `now` is in (clamped to the newest stored slot).
    start: Nanos,
    /// `now − start`, clamped at zero; always `< slot`.
    elapsed: Nanos,
    /// How many slots the stored counts age by to reach `start` (capped at `n + 1`).
    shift: usize,
    /// Cost of the slots of age `< n`.
    full: u64,
    /// Cost of the slot of age `n` (the one straddling the window's start).
    partial: u64,
}

impl View {
    fn estimate(&self, g: Geometry) -> u64 {
        let weighted = mul_div_floor(self.partial, g.slot - self.elapsed, g.slot);
        saturate(weighted).saturating_add(self.full)
    }
}

impl SlidingSlots {
    /// Start of the newest slot holding counted cost.
    pub fn newest_start(&self) -> Nanos {
        self.newest_start
    }

    /// The stored counts, newest slot first (empty in the fresh state).
    pub fn counts(&self) -> Vec<u64> {
        match &self.counts {
            Counts::Narrow(c) => c.iter().map(|&v| u64::from(v)).collect(),
            Counts::Wide(c) => c.to_vec(),
        }
    }

    /// Bytes this state holds on the heap (the counts; the rest is inline).
    pub fn heap_bytes(&self) -> usize {
        match &self.counts {
            Counts::Narrow(c) => std::mem::size_of_val::<[u16]>(c),
            Counts::Wide(c) => std::mem::size_of_val::<[u64]>(c),
        }
    }

    /// Checks a hit of `cost` at `now`; consumes it only if allowed. `cost == 0` peeks.
    pub fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let limit = rate.limit;
        let g = Geometry::of(rate);
        let view = self.view(g, now);
        let remaining = limit.saturating_sub(view.estimate(g));
        let reset_after = until(self.reset_at(g, &view, now), now);
        if cost == 0 {
            return Decision::allow(limit, remaining, reset_after);
        }
        if cost > limit {
            return Decision::cost_exceeds_limit(limit, remaining, reset_after);
        }
        if cost > remaining {
            let retry_after = until(self.allowed_at(g, &view, limit, cost), now);
            return Decision::over_limit(limit, remaining, reset_after, retry_after);
        }
        self.consume(g, &view, cost);
        // The newest slot now holds cost: full quota once it has become the straddling
        // slot and its weight has rounded down to zero.
        let newest = self.count_at(g, 0, 0);
        let reset_at = view
            .start
            .saturating_add(g.slots(g.n))
            .saturating_add(elapsed_needed(newest, 0, g.slot));
        Decision::allow(limit, remaining - cost, until(reset_at, now))
    }

    /// Records `cost` consumed at `now` without asking (replay of a decision made elsewhere).
    /// Saturates; `cost == 0` changes nothing, exactly like a peek.
    pub fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        if cost == 0 {
            return;
        }
        let g = Geometry::of(rate);
        let view = self.view(g, now);
        self.consume(g, &view, cost);
    }

    /// From this instant on the state behaves like [`SlidingSlots::default`]: every slot
    /// holding cost has slid out of the window.
    pub fn idle_at(&self, rate: &Rate) -> Nanos {
        let g = Geometry::of(rate);
        let newest = window_start(self.newest_start, g.slot);
        match (0..=g.n).find(|&age| self.count_at(g, 0, age) > 0) {
            Some(age) => newest.saturating_add(g.slots(g.n + 1 - age)),
            None => 0,
        }
    }

    /// The cost of the slot that is `age` slots old once the stored counts have aged by
    /// `shift` slots. Counts of another shape (a precision change, or the fresh state) act
    /// as one slot at the newest position holding their total.
    fn count_at(&self, g: Geometry, shift: usize, age: usize) -> u64 {
        let Some(stored_age) = age.checked_sub(shift) else {
            return 0;
        };
        match &self.counts {
            Counts::Narrow(c) if c.len() == g.n + 1 => c.get(stored_age).map_or(0, |&v| v.into()),
            Counts::Wide(c) if c.len() == g.n + 1 => c.get(stored_age).copied().unwrap_or(0),
            _ if stored_age == 0 => self.total(),
            _ => 0,
        }
    }

    fn total(&self) -> u64 {
        match &self.counts {
            Counts::Narrow(c) => c.iter().map(|&v| u64::from(v)).sum(),
            Counts::Wide(c) => c.iter().fold(0, |sum, &v| sum.saturating_add(v)),
        }
    }

    /// Takes back `cost` counted in the slot that starts at `start` (an unused
    /// reservation) while that slot is still stored; nothing otherwise.
    pub(crate) fn refund(&mut self, rate: &Rate, start: Nanos, cost: u64) {
        let g = Geometry::of(rate);
        let newest = window_start(self.newest_start, g.slot);
        let Some(behind) = newest.checked_sub(start) else {
            return;
        };
        if behind % g.slot != 0 {
            return;
        }
        let Ok(age) = usize::try_from(behind / g.slot) else {
            return;
        };
        match &mut self.counts {
            Counts::Narrow(c) if c.len() == g.n + 1 => {
                if let Some(v) = c.get_mut(age) {
                    *v = v.saturating_sub(u16::try_from(cost).unwrap_or(u16::MAX));
                }
            }
            Counts::Wide(c) if c.len() == g.n + 1 => {
                if let Some(v) = c.get_mut(age) {
                    *v = v.saturating_sub(cost);
                }
            }
            // Another shape holds one total at the newest position.
            _ => {}
        }
    }

    fn view(&self, g: Geometry, now: Nanos) -> View {
        // Re-align the stored start in case the slot length changed since it was written.
        let stored = window_start(self.newest_start, g.slot);
        let current = window_start(now, g.slot);
        let (start, shift) = if current <= stored {
            (stored, 0)
        } else {
            let slots = (current - stored) / g.slot;
            (
                current,
                usize::try_from(slots).unwrap_or(usize::MAX).min(g.n + 1),
            )
        };
        let (full, partial) = match &self.counts {
            Counts::Narrow(c) if c.len() == g.n + 1 => sums(c, g.n, shift),
            Counts::Wide(c) if c.len() == g.n + 1 => sums(c, g.n, shift),
            _ => (
                (0..g.n).map(|age| self.count_at(g, shift, age)).sum(),
                self.count_at(g, shift, g.n),
            ),
        };
        View {
            start,
            elapsed: now.saturating_sub(start),
            shift,
            full,
            partial,
        }
    }

    /// The instant the estimate reaches zero (full quota): the youngest slot holding cost
    /// has become the straddling one and its weight has rounded down to zero.
    fn reset_at(&self, g: Geometry, view: &View, now: Nanos) -> Nanos {
        let youngest = (0..=g.n)
            .map(|age| (age, self.count_at(g, view.shift, age)))
            .find(|&(_, count)| count > 0);
        match youngest {
            Some((age, count)) => view
                .start
                .saturating_add(g.slots(g.n - age))
                .saturating_add(elapsed_needed(count, 0, g.slot))
                .max(now),
            None => now,
        }
    }

    /// The earliest instant a hit of `cost` (`cost ≤ limit`) passes if nothing else happens.
    ///
    /// The estimate only falls as time passes: during the `j`-th slot from now, the slots
    /// of age `< n − j` count in full and the one of age `n − j` decays. The first slot
    /// whose full part leaves room is where the hit passes, once the decaying slot's weight
    /// is small enough; by slot `n` nothing counts in full, so the loop always returns.
    fn allowed_at(&self, g: Geometry, view: &View, limit: u64, cost: u64) -> Nanos {
        let room = limit.saturating_sub(cost);
        let mut full = view.full;
        for j in 0..=g.n {
            let decaying = self.count_at(g, view.shift, g.n - j);
            if full <= room {
                let e = elapsed_needed(decaying, room - full, g.slot);
                return view.start.saturating_add(g.slots(j)).saturating_add(e);
            }
            if j < g.n {
                full = full.saturating_sub(self.count_at(g, view.shift, g.n - 1 - j));
            }
        }
        // Unreachable: at j = n, `full` is zero.
        view.start.saturating_add(g.slots(g.n + 1))
    }

    fn consume(&mut self, g: Geometry, view: &View, cost: u64) {
        let len = g.n + 1;
        let shaped = match &mut self.counts {
            Counts::Narrow(c) if c.len() == len => {
                age(c, view.shift);
                true
            }
            Counts::Wide(c) if c.len() == len => {
                age(c, view.shift);
                true
            }
            _ => false,
        };
        if !shaped {
            // Fresh state or another precision: one slot at the newest position holding
            // the total, aged like any other (and gone once it has aged past the window).
            let total = if view.shift < len { self.total() } else { 0 };
            let at = view.shift.min(len - 1);
            self.counts = match u16::try_from(total) {
                Ok(narrow) => {
                    let mut counts = vec![0u16; len];
                    counts[at] = narrow;
                    Counts::Narrow(counts.into_boxed_slice())
                }
                Err(_) => {
                    let mut counts = vec![0u64; len];
                    counts[at] = total;
                    Counts::Wide(counts.into_boxed_slice())
                }
            };
        }
        if let Counts::Narrow(c) = &mut self.counts {
            let sum = u64::from(c[0]).saturating_add(cost);
            match u16::try_from(sum) {
                Ok(narrow) => c[0] = narrow,
                Err(_) => {
                    let mut wide: Vec<u64> = c.iter().map(|&v| v.into()).collect();
                    wide[0] = sum;
                    self.counts = Counts::Wide(wide.into_boxed_slice());
                }
            }
        } else if let Counts::Wide(c) = &mut self.counts {
            c[0] = c[0].saturating_add(cost);
            // Back to 2 bytes a slot once every count fits again.
            if c.iter().all(|&v| v <= u64::from(u16::MAX)) {
                let narrow: Vec<u16> = c.iter().map(|&v| v as u16).collect();
                self.counts = Counts::Narrow(narrow.into_boxed_slice());
            }
        }
        self.newest_start = view.start;
    }
}

/// `(Σ count[age] for age < n, count[n])` after the counts age by `shift` slots.
fn sums<T: Copy + Into<u64>>(counts: &[T], n: usize, shift: usize) -> (u64, u64) {
    let full = counts
        .get(..n.saturating_sub(shift))
        .unwrap_or(&[])
        .iter()
        .fold(0u64, |sum, &v| sum.saturating_add(v.into()));
    let partial = n
        .checked_sub(shift)
        .and_then(|age| counts.get(age))
        .map_or(0, |&v| v.into());
    (full, partial)
}

/// Ages the counts by `shift` slots: everything moves `shift` places older, the oldest
/// fall off, and the new slots start empty.
fn age<T: Copy + Default>(counts: &mut [T], shift: usize) {
    let shift = shift.min(counts.len());
    counts.rotate_right(shift);
    counts[..shift].fill(T::default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason};

    fn rate(limit: u64, window: Nanos, precision: u64) -> Rate {
        Rate::with_precision(
            Algorithm::SlidingWindow,
            limit,
            window,
            None,
            Some(precision),
        )
        .unwrap()
    }

    #[test]
    fn only_the_straddling_slot_is_weighted() {
        // 4 slots of 25 ns.
        let r = rate(10, 100, 4);
        let mut s = SlidingSlots::default();
        assert!(s.check(&r, 10, 4).allowed); // slot [0, 25)
        assert!(s.check(&r, 60, 4).allowed); // slot [50, 75)
        assert_eq!(s.counts(), vec![4, 0, 4, 0, 0]);
        // At 110 (slot [100,125), e = 10): slot [0,25) straddles, weight ⌊4·15/25⌋ = 2;
        // slot [50,75) counts in full: estimate 6.
        assert_eq!(s.check(&r, 110, 0).remaining, 4);
        // 5 fits once the weight is 1: ⌊4·(25−e)/25⌋ ≤ 1 needs e ≥ 13, i.e. at 113.
        let d = s.check(&r, 110, 5);
        assert_eq!(d.denied, Some(DenyReason::OverLimit));
        assert_eq!(d.retry_after, Some(3));
        assert!(!s.clone().check(&r, 112, 5).allowed);
        assert!(s.check(&r, 113, 5).allowed);
    }

    #[test]
    fn full_window_waits_for_whole_slots_to_slide_out() {
        let r = rate(4, 100, 4);
        let mut s = SlidingSlots::default();
        assert!(s.check(&r, 30, 4).allowed); // slot [25, 50)
        let d = s.check(&r, 40, 1);
        // The slot straddles from 125; ⌊4·(25−e)/25⌋ ≤ 3 needs e ≥ 1: at 126.
        assert_eq!(d.retry_after, Some(86));
        // Full quota once its weight is 0: ⌊4·(25−e)/25⌋ = 0 needs e ≥ 19: at 144.
        assert_eq!(d.reset_after, 104);
        assert_eq!(s.check(&r, 144, 0).remaining, 4);
        assert_eq!(s.check(&r, 143, 0).remaining, 3);
        assert_eq!(s.idle_at(&r), 150);
    }

    #[test]
    fn backwards_time_counts_in_the_newest_slot() {
        let r = rate(4, 100, 4);
        let mut s = SlidingSlots::default();
        assert!(s.check(&r, 80, 1).allowed);
        assert!(s.check(&r, 10, 1).allowed);
        assert_eq!(s.newest_start(), 75);
        assert_eq!(s.counts(), vec![2, 0, 0, 0, 0]);
    }

    #[test]
    fn counts_widen_past_16_bits_and_narrow_back() {
        let r = rate(200_000, 100, 4);
        let mut s = SlidingSlots::default();
        assert!(s.check(&r, 0, 70_000).allowed);
        assert_eq!(s.heap_bytes(), 5 * 8);
        assert_eq!(s.check(&r, 1, 0).remaining, 130_000);
        // Once the big slot has slid out, the next write narrows the counts again.
        assert!(s.check(&r, 200, 1).allowed);
        assert_eq!(s.heap_bytes(), 5 * 2);
        assert_eq!(s.counts(), vec![1, 0, 0, 0, 0]);
    }

    #[test]
    fn a_precision_change_folds_into_the_newest_slot() {
        let mut s = SlidingSlots::default();
        assert!(s.check(&rate(10, 100, 4), 10, 3).allowed);
        assert!(s.check(&rate(10, 100, 4), 60, 3).allowed);
        // Now precision 5 (slots of 20): the 6 counted act as one slot at the newest
        // slot's start (50) re-aligned, [40, 60); it counts in full until 140.
        let r5 = rate(10, 100, 5);
        assert_eq!(s.check(&r5, 70, 0).remaining, 4);
        assert!(s.check(&r5, 70, 1).allowed);
        assert_eq!(s.counts(), vec![1, 6, 0, 0, 0, 0]);
        assert_eq!(s.check(&r5, 139, 0).remaining, 3);
    }

    #[test]
    fn precision_one_is_the_two_counter_formula() {
        let r1 = rate(10, 100, 1);
        let two = Rate::new(Algorithm::SlidingWindow, 10, 100, None).unwrap();
        let mut slots = SlidingSlots::default();
        let mut pair = crate::SlidingWindow::default();
        for (now, cost) in [(5, 3), (50, 4), (120, 5), (130, 2), (170, 6), (260, 1)] {
            assert_eq!(slots.check(&r1, now, cost), pair.check(&two, now, cost));
        }
    }

    #[test]
    fn state_stays_small() {
        println!(
            "SlidingSlots {} CounterState {} SlidingWindow {} SlidingLog {}",
            std::mem::size_of::<SlidingSlots>(),
            std::mem::size_of::<crate::CounterState>(),
            std::mem::size_of::<crate::SlidingWindow>(),
            std::mem::size_of::<crate::SlidingLog>(),
        );
        assert_eq!(std::mem::size_of::<SlidingSlots>(), 32);
    }
}
