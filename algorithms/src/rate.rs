//! What a limit allows: the algorithm and its numbers, validated once.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Nanos;

/// The largest limit a [`Algorithm::SlidingLog`] accepts: the log keeps one entry per
/// allowed hit, so its memory is bounded by the limit.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 10_000;

/// The sliding window's precision when a policy does not give one: the window is cut into
/// this many sub-windows ([`crate::sliding_slots`]). Chosen by measurement
/// (`docs/benchmarks.md`, "Sliding window precision"): on Poisson traffic at 0.2×–3× the
/// limit, the worst true window was 1.74 × the limit at precision 1, 1.16 × at 10, 1.09 ×
/// at 16 and 1.08 × at 20, for 40 + 2·(N+1) bytes per key. 20 is the smallest round
/// precision that keeps the 1.1 × goal with a margin; it divides every window a policy can
/// write (whole milliseconds).
pub const DEFAULT_SLIDING_PRECISION: u16 = 20;

/// The largest precision accepted: memory per key grows by 2 bytes per sub-window
/// (8 beyond 65 535 per sub-window), and 60 already gives one-second slots for a minute.
pub const MAX_SLIDING_PRECISION: u16 = 60;

/// Which algorithm a counter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Epoch-aligned fixed windows (envoyproxy/ratelimit, Kong, Limitador).
    FixedWindow,
    /// Sliding window counter. With [`Rate::precision`] 1, the two-window weighted counter
    /// (Cloudflare's and Kong's; [`crate::sliding_window`]); with `N > 1`, `N` sub-windows
    /// ([`crate::sliding_slots`]). Approximate, with a bound that tightens with `N`.
    SlidingWindow,
    /// Exact sliding log; memory bounded by the limit.
    SlidingLog,
    /// Token bucket (GCRA: one timestamp of state). Also the leaky bucket.
    TokenBucket,
}

impl Algorithm {
    /// The name used in policies and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::TokenBucket => "token_bucket",
        }
    }
}

/// A validated rate: `limit` hits per `window` nanoseconds, run by `algorithm`.
///
/// For the token bucket, `limit` tokens are refilled evenly over each `window` and the
/// bucket holds at most `burst` tokens (defaults to `limit`). For the sliding window,
/// `precision` is the number of sub-windows (1 = the two-counter form); it is 1 for every
/// other algorithm.
///
/// On the wire (Raft log, peer RPCs) a rate is `(algorithm, limit, window, burst)` where a
/// sliding window of precision `N > 1` is an extra algorithm variant carrying `N`: a rate
/// written before precision existed decodes unchanged, as the two-counter form it was
/// decided with.
///
/// The fields are private to this crate and every decoded `Rate` goes through
/// [`Rate::with_precision`] (serde `try_from`): a rate that arrives from the network (a
/// peer's log entry, snapshot or forwarded hit) cannot skip the checks, e.g. a zero window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "WireRate", into = "WireRate")]
pub struct Rate {
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: u64,
    pub(crate) window: Nanos,
    pub(crate) burst: u64,
    pub(crate) precision: u16,
}

/// [`Rate`] as serialized: the four fields it always had, with the precision folded into
/// the algorithm so that old encodings stay valid (new variants go last).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename = "Rate")]
struct WireRate {
    algorithm: WireAlgorithm,
    limit: u64,
    window: Nanos,
    burst: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireAlgorithm {
    FixedWindow,
    SlidingWindow,
    SlidingLog,
    TokenBucket,
    /// A sliding window with this many sub-windows (`> 1`).
    SlidingWindowPrecision(u16),
}

impl From<Rate> for WireRate {
    fn from(rate: Rate) -> WireRate {
        let algorithm = match rate.algorithm {
            Algorithm::FixedWindow => WireAlgorithm::FixedWindow,
            Algorithm::SlidingWindow if rate.precision > 1 => {
                WireAlgorithm::SlidingWindowPrecision(rate.precision)
            }
            Algorithm::SlidingWindow => WireAlgorithm::SlidingWindow,
            Algorithm::SlidingLog => WireAlgorithm::SlidingLog,
            Algorithm::TokenBucket => WireAlgorithm::TokenBucket,
        };
        WireRate {
            algorithm,
            limit: rate.limit,
            window: rate.window,
            burst: rate.burst,
        }
    }
}

impl TryFrom<WireRate> for Rate {
    type Error = RateError;

    fn try_from(wire: WireRate) -> Result<Rate, RateError> {
        let (algorithm, precision) = match wire.algorithm {
            WireAlgorithm::FixedWindow => (Algorithm::FixedWindow, None),
            WireAlgorithm::SlidingWindow => (Algorithm::SlidingWindow, None),
            WireAlgorithm::SlidingLog => (Algorithm::SlidingLog, None),
            WireAlgorithm::TokenBucket => (Algorithm::TokenBucket, None),
            WireAlgorithm::SlidingWindowPrecision(n) => {
                (Algorithm::SlidingWindow, Some(u64::from(n)))
            }
        };
        // Only a token bucket has a burst of its own; elsewhere it always equals `limit`.
        let burst = match algorithm {
            Algorithm::TokenBucket => Some(wire.burst),
            _ if wire.burst == wire.limit => None,
            other => return Err(RateError::BurstNotSupported(other.as_str())),
        };
        Rate::with_precision(algorithm, wire.limit, wire.window, burst, precision)
    }
}

/// Why a [`Rate`] cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RateError {
    #[error("limit must be at least 1 (use `unlimited` for no limit)")]
    ZeroLimit,
    #[error("window must be at least 1 ns")]
    ZeroWindow,
    #[error("burst must be at least 1")]
    ZeroBurst,
    #[error("burst is only meaningful for token_bucket, not {0}")]
    BurstNotSupported(&'static str),
    #[error("precision is only meaningful for sliding_window, not {0}")]
    PrecisionNotSupported(&'static str),
    #[error("precision must be 1 to {max}, got {precision}")]
    PrecisionOutOfRange { precision: u64, max: u16 },
    #[error(
        "precision {precision} does not cut the window ({window} ns) into whole nanoseconds: \
         pick a precision that divides the window"
    )]
    PrecisionDoesNotDivideWindow { precision: u16, window: Nanos },
    #[error(
        "sliding_log keeps one entry per allowed hit, so its limit is capped at {max}; \
         limit {limit} is too large: use sliding_window (the two-counter approximation) instead"
    )]
    SlidingLogTooLarge { limit: u64, max: u64 },
}

impl Rate {
    /// Builds a rate, refusing what the algorithm cannot honour.
    ///
    /// `burst` is only accepted for [`Algorithm::TokenBucket`]; `None` means `limit`.
    pub fn new(
        algorithm: Algorithm,
        limit: u64,
        window: Nanos,
        burst: Option<u64>,
    ) -> Result<Rate, RateError> {
        if limit == 0 {
            return Err(RateError::ZeroLimit);
        }
        if window == 0 {
            return Err(RateError::ZeroWindow);
        }
        let burst = match (algorithm, burst) {
            (Algorithm::TokenBucket, Some(0)) => return Err(RateError::ZeroBurst),
            (Algorithm::TokenBucket, Some(b)) => b,
            (_, None) => limit,
            (other, Some(_)) => return Err(RateError::BurstNotSupported(other.as_str())),
        };
        if algorithm == Algorithm::SlidingLog && limit > MAX_SLIDING_LOG_LIMIT {
            return Err(RateError::SlidingLogTooLarge {
                limit,
                max: MAX_SLIDING_LOG_LIMIT,
            });
        }
        Ok(Rate {
            algorithm,
            limit,
            window,
            burst,
            precision: 1,
        })
    }

    /// Builds a rate with an explicit sliding-window `precision` (sub-windows per window);
    /// `None` means 1 for every algorithm (the two-counter form for `sliding_window`).
    /// Policies pass [`DEFAULT_SLIDING_PRECISION`] themselves when none is written.
    ///
    /// Refused: a precision for another algorithm, outside `1..=`[`MAX_SLIDING_PRECISION`],
    /// or one that does not divide the window into whole nanoseconds.
    pub fn with_precision(
        algorithm: Algorithm,
        limit: u64,
        window: Nanos,
        burst: Option<u64>,
        precision: Option<u64>,
    ) -> Result<Rate, RateError> {
        let mut rate = Rate::new(algorithm, limit, window, burst)?;
        let Some(precision) = precision else {
            return Ok(rate);
        };
        if algorithm != Algorithm::SlidingWindow {
            return Err(RateError::PrecisionNotSupported(algorithm.as_str()));
        }
        let precision = u16::try_from(precision)
            .ok()
            .filter(|p| (1..=MAX_SLIDING_PRECISION).contains(p))
            .ok_or(RateError::PrecisionOutOfRange {
                precision,
                max: MAX_SLIDING_PRECISION,
            })?;
        if !window.is_multiple_of(u64::from(precision)) {
            return Err(RateError::PrecisionDoesNotDivideWindow { precision, window });
        }
        rate.precision = precision;
        Ok(rate)
    }

    /// The algorithm that runs counters of this rate.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Hits allowed per window (tokens refilled per window, for the token bucket).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The window, in nanoseconds (never 0).
    pub fn window(&self) -> Nanos {
        self.window
    }

    /// The token bucket's capacity; `limit` for every other algorithm.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Sub-windows of a sliding window (1 = the two-counter form); 1 for other algorithms.
    pub fn precision(&self) -> u16 {
        self.precision
    }

    /// The quota a fresh counter starts with: `burst` for token buckets, else `limit`.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.limit,
        }
    }

    /// The end of the counting bucket that holds `now`: the epoch-aligned window (fixed
    /// window, two-counter sliding window) or sub-window slot (sliding window with
    /// precision > 1). Within one bucket, cost consumed at any instant is counted the
    /// same, and a check later in the bucket is never stricter than one earlier (a
    /// previous window's weight only decays), so quota checked at `now` may be spent at
    /// any later instant before this end: what a durable reservation relies on.
    ///
    /// `None` for the token bucket (time-continuous: no buckets) and the sliding log
    /// (every hit is remembered at its own instant).
    pub fn bucket_end(&self, now: Nanos) -> Option<Nanos> {
        let bucket = self.bucket_len()?;
        Some((now - now % bucket).saturating_add(bucket))
    }

    /// The length of the counting buckets of [`Rate::bucket_end`].
    pub fn bucket_len(&self) -> Option<Nanos> {
        let bucket = match self.algorithm {
            Algorithm::FixedWindow => self.window,
            Algorithm::SlidingWindow => {
                let n = self.precision.clamp(1, MAX_SLIDING_PRECISION);
                self.window / u64::from(n)
            }
            Algorithm::TokenBucket | Algorithm::SlidingLog => return None,
        };
        Some(bucket.max(1))
    }

    /// Nanoseconds of refill one token takes (`window / limit`, rounded up): how far a
    /// token bucket's state moves per token.
    pub fn emission_interval(&self) -> Nanos {
        let limit = u128::from(self.limit.max(1));
        u64::try_from(u128::from(self.window).div_ceil(limit)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Rate` as it was serialized before precision existed.
    #[derive(Serialize)]
    struct OldRate {
        algorithm: Algorithm,
        limit: u64,
        window: Nanos,
        burst: u64,
    }

    #[test]
    fn old_encodings_decode_as_precision_one() {
        for algorithm in [
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::SlidingLog,
            Algorithm::TokenBucket,
        ] {
            let old = OldRate {
                algorithm,
                limit: 7,
                window: 60,
                burst: 7,
            };
            let bytes = postcard::to_stdvec(&old).unwrap();
            let rate: Rate = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(rate, Rate::new(algorithm, 7, 60, None).unwrap());
            // And a precision-1 rate still encodes exactly as before.
            assert_eq!(postcard::to_stdvec(&rate).unwrap(), bytes);
        }
    }

    #[test]
    fn precision_round_trips() {
        let rate = Rate::with_precision(Algorithm::SlidingWindow, 100, 60, None, Some(10)).unwrap();
        let bytes = postcard::to_stdvec(&rate).unwrap();
        assert_eq!(postcard::from_bytes::<Rate>(&bytes).unwrap(), rate);
    }

    /// The wire form of a rate, with any field values: what a hostile peer can send.
    #[derive(Serialize)]
    struct Forged {
        algorithm: Algorithm,
        limit: u64,
        window: Nanos,
        burst: u64,
    }

    fn decode(algorithm: Algorithm, limit: u64, window: Nanos, burst: u64) -> Option<Rate> {
        let bytes = postcard::to_stdvec(&Forged {
            algorithm,
            limit,
            window,
            burst,
        })
        .unwrap();
        postcard::from_bytes(&bytes).ok()
    }

    #[test]
    fn a_decoded_rate_went_through_the_constructor() {
        let valid = Rate::new(Algorithm::TokenBucket, 10, 1_000, Some(3)).unwrap();
        let bytes = postcard::to_stdvec(&valid).unwrap();
        assert_eq!(postcard::from_bytes::<Rate>(&bytes).unwrap(), valid);
        let fixed = Rate::new(Algorithm::FixedWindow, 10, 1_000, None).unwrap();
        assert_eq!(decode(Algorithm::FixedWindow, 10, 1_000, 10), Some(fixed));

        let invalid = [
            ((Algorithm::FixedWindow, 10, 0, 10), "zero window"),
            ((Algorithm::FixedWindow, 0, 1_000, 0), "zero limit"),
            ((Algorithm::TokenBucket, 10, 1_000, 0), "zero burst"),
            (
                (Algorithm::SlidingWindow, 10, 1_000, 99),
                "a burst on an algorithm without one",
            ),
            (
                (Algorithm::SlidingLog, u64::MAX, 1_000, u64::MAX),
                "a sliding log beyond its memory cap",
            ),
        ];
        for ((algorithm, limit, window, burst), why) in invalid {
            assert_eq!(decode(algorithm, limit, window, burst), None, "{why}");
        }
    }
}
