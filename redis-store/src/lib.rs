//! Redis as quorate's counter store: for teams that already run Redis.
//!
//! A [`RedisStore`] decides hits the way the in-memory
//! [`CounterStore`](quorate_algorithms::CounterStore) does — same algorithms, same
//! [`Decision`](quorate_algorithms::Decision)s for the same calls — but keeps the counters
//! in Redis, so several stateless quorate nodes can share them.
//!
//! # How a decision runs
//! Every algorithm of `quorate-algorithms` (fixed window, sliding window with any
//! precision, sliding log, token bucket) and the per-limit key cap (`max_keys`, refuse or
//! evict the idlest) is ported to one Lua script, `decide.lua`, that Redis runs
//! atomically. One request's hits travel in **one script call** (`EVALSHA`; the `redis`
//! crate's [`Script`](redis::Script) loads the script on `NOSCRIPT`), so a decision costs
//! one round trip. The conformance suite (`tests/conformance.rs`) runs random hit
//! sequences against both stores and requires identical decisions.
//!
//! # Time
//! The caller passes `now`, as the in-memory store takes it: the script never reads Redis'
//! clock. That keeps the arithmetic identical (the same instants go in), and it is what a
//! Raft leader does too. Nodes must keep their clocks in sync (NTP); a node whose clock is
//! off by `δ` can only shift window boundaries by `δ` for the hits it sends — every
//! algorithm clamps a `now` earlier than a counter's latest consumption to that
//! consumption, so a slow clock never mints quota, and a fast one at most opens the next
//! fixed window `δ` early. TTLs keep counters `ttl_slack_ms` (default 2 s) past their idle
//! instant, so skew below that never drops a counter another node still counts.
//!
//! # Keys
//! `<prefix>{<crc32 of limit>}:c:<limit>␟<rate>␟<key>` holds one counter (MessagePack),
//! with a TTL to its idle instant plus the slack; `<prefix>{…}:i:<limit>` is the sorted set
//! that indexes a capped limit's counters by idle instant. The prefix separates
//! deployments sharing one Redis.
//!
//! # Redis Cluster
//! The hash tag is the limit: all counters of one limit share a slot, so a limit's key cap
//! is exact and its script sees all the keys it touches. A request whose hits span several
//! limits makes one script call per limit, sent concurrently (still one round trip of
//! latency), atomic per limit. **Limits of this choice:** one limit's traffic is served by
//! one master (a single very hot limit does not scale out; many limits do), and hits of one
//! request on different limits are not atomic together (quorate decides each hit on its
//! own anyway). MOVED/ASK redirections during resharding and failover are followed by the
//! `redis` crate's cluster client.
//!
//! # Exactness bounds
//! Lua numbers are doubles. The script never turns an absolute nanosecond instant into a
//! number (see `decide.lua`), and [`RedisStore::supports`] refuses rates that could push
//! an intermediate past 2^53: windows over 2^52 ns (52 days), limits over 2^52, slots
//! under 4.096 µs, token buckets that take over 2^52 ns to refill.
//!
//! # What differs from memory
//! - A rate change starts fresh counters (the rate is part of the key).
//! - There is no store-wide key cap: TTLs bound memory, and Redis' own `maxmemory` is the
//!   last line.
//! - Key caps count only counters written while the cap was in force.

mod store;
#[cfg(feature = "test-support")]
pub mod test_support;
mod url;

pub use store::{RedisHit, RedisSettings, RedisStore};
pub use url::StoreUrl;

use std::time::Duration;

/// Why the Redis store could not decide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The `--store` URL is malformed (the message never repeats the URL).
    #[error("invalid store URL: {0}")]
    InvalidUrl(String),
    /// The key prefix contains `{` or `}`.
    #[error("the Redis key prefix must not contain '{{' or '}}' (they mark Cluster hash tags)")]
    InvalidPrefix,
    /// The rate is outside what the script computes exactly.
    #[error("this rate is not supported by the Redis store: {0}")]
    UnsupportedRate(String),
    /// Redis did not answer in time (down, slow, or unreachable).
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    #[error("Redis error: {0}")]
    Redis(String),
    /// The script's reply had an unexpected shape.
    #[error("unexpected reply from the Redis decision script")]
    BadReply,
}

impl StoreError {
    /// Whether this is Redis being unreachable, failing or slow, as opposed to a bad
    /// request: the caller applies its failure mode to these.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Timeout(_) | StoreError::Redis(_) | StoreError::BadReply
        )
    }

    fn from_redis(error: redis::RedisError) -> StoreError {
        // `RedisError`'s text names the failing command or server reply, never the URL.
        StoreError::Redis(error.to_string())
    }
}
