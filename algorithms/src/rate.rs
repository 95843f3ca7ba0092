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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rate {
    pub algorithm: Algorithm,
    pub limit: u64,
    pub window: Nanos,
    pub burst: u64,
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

    /// The quota a fresh counter starts with: `burst` for token buckets, else `limit`.
    pub fn capacity(&self) -> u64 {
        match self.algorithm {
            Algorithm::TokenBucket => self.burst,
            _ => self.limit,
        }
    }
}
