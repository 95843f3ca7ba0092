//! What a limit allows: the algorithm and its numbers, validated once.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::Nanos;

/// The largest limit a [`Algorithm::SlidingLog`] accepts: the log keeps one entry per
/// allowed hit, so its memory is bounded by the limit.
pub const MAX_SLIDING_LOG_LIMIT: u64 = 10_000;

/// Which algorithm a counter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Epoch-aligned fixed windows (envoyproxy/ratelimit, Kong, Limitador).
    FixedWindow,
    /// Two-window weighted counter (Cloudflare's and Kong's sliding window). Approximate.
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
/// bucket holds at most `burst` tokens (defaults to `limit`).
///
/// The fields are private to this crate and every decoded `Rate` goes through
/// [`Rate::new`] (serde `try_from`): a rate that arrives from the network (a peer's log
/// entry, snapshot or forwarded hit) cannot skip the checks, e.g. a zero window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawRate")]
pub struct Rate {
    pub(crate) algorithm: Algorithm,
    pub(crate) limit: u64,
    pub(crate) window: Nanos,
    pub(crate) burst: u64,
}

/// A [`Rate`] as encoded, before validation.
#[derive(Deserialize)]
struct RawRate {
    algorithm: Algorithm,
    limit: u64,
    window: Nanos,
    burst: u64,
}

impl TryFrom<RawRate> for Rate {
    type Error = RateError;

    fn try_from(raw: RawRate) -> Result<Rate, RateError> {
        // Only a token bucket has a burst of its own; elsewhere it always equals `limit`.
        let burst = match raw.algorithm {
            Algorithm::TokenBucket => Some(raw.burst),
            _ if raw.burst == raw.limit => None,
            other => return Err(RateError::BurstNotSupported(other.as_str())),
        };
        Rate::new(raw.algorithm, raw.limit, raw.window, burst)
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
        })
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

    /// The quota a fresh counter starts with: `burst` for token buckets, else `limit`.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        assert_eq!(decode(Algorithm::FixedWindow, 10, 0, 10), None, "zero window");
        assert_eq!(decode(Algorithm::FixedWindow, 0, 1_000, 0), None, "zero limit");
        assert_eq!(decode(Algorithm::TokenBucket, 10, 1_000, 0), None, "zero burst");
        assert_eq!(
            decode(Algorithm::SlidingWindow, 10, 1_000, 99),
            None,
            "a burst on an algorithm without one"
        );
        assert_eq!(
            decode(Algorithm::SlidingLog, u64::MAX, 1_000, u64::MAX),
            None,
            "a sliding log beyond its memory cap"
        );
    }
}
