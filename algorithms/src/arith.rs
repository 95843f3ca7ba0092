//! Overflow-free integer helpers shared by the algorithms.
//!
//! Every product of two user numbers is taken in `u128` (exact: `u64::MAX²` fits), and every
//! result narrowed back to `u64` saturates instead of truncating. Nothing here panics for
//! any input; a zero divisor is treated as 1 because a hand-built [`crate::Rate`] may bypass
//! [`crate::Rate::new`]'s validation.

use crate::Nanos;

/// Narrows to `u64`, saturating at `u64::MAX` rather than truncating.
pub(crate) fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// `a · b` exactly.
pub(crate) fn mul(a: u64, b: u64) -> u128 {
    u128::from(a) * u128::from(b)
}

/// `⌈a · b / divisor⌉`, exact, in `u128`.
pub(crate) fn mul_div_ceil(a: u64, b: u64, divisor: u64) -> u128 {
    mul(a, b).div_ceil(u128::from(divisor.max(1)))
}

/// `⌊a · b / divisor⌋`, exact, in `u128`.
pub(crate) fn mul_div_floor(a: u64, b: u64, divisor: u64) -> u128 {
    mul(a, b) / u128::from(divisor.max(1))
}

/// Start of the epoch-aligned window of length `window` that contains `now`.
pub(crate) fn window_start(now: Nanos, window: Nanos) -> Nanos {
    now - now % window.max(1)
}

/// Time from `now` until `instant`; zero if `instant` is not in the future.
pub(crate) fn until(instant: Nanos, now: Nanos) -> Nanos {
    instant.saturating_sub(now)
}
