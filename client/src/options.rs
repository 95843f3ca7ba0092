//! The SDK's behaviour settings on [`Builder`]: retries, the deny cache, and what a call
//! answers when the cluster cannot be reached. (Where and how to connect stays in
//! `lib.rs`.)

use std::sync::Arc;

use crate::deny_cache::{Clock, DenyCache, SystemClock, DEFAULT_CAPACITY};
use crate::{Backoff, Builder, RetryPolicy};

/// What a call answers when the cluster cannot decide in time (unreachable, no quorum,
/// deadline passed, unknown outcome). Bad requests and unknown limits are always errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fallback {
    /// Return the [`Error`](crate::Error): the caller decides. The default.
    #[default]
    Error,
    /// Fail open: allow the hit; the decision says [`Source::FailOpen`].
    Allow,
    /// Fail closed: deny the hit; the decision says [`Source::FailClosed`].
    Deny,
}

/// Who made a [`Decision`](crate::Decision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The cluster decided (and counted the hit if it was allowed).
    Cluster,
    /// The local deny cache: the key was denied moments ago and cannot pass yet.
    DenyCache,
    /// The cluster was unreachable and [`Fallback::Allow`] allowed the hit uncounted.
    FailOpen,
    /// The cluster was unreachable and [`Fallback::Deny`] denied the hit.
    FailClosed,
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) retry: RetryPolicy,
    pub(crate) backoff: Backoff,
    pub(crate) fallback: Fallback,
    /// Entries the deny cache holds; 0 turns it off.
    pub(crate) deny_cache_capacity: usize,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry: RetryPolicy::default(),
            backoff: Backoff::default(),
            fallback: Fallback::default(),
            deny_cache_capacity: DEFAULT_CAPACITY,
            clock: Arc::new(SystemClock::new()),
        }
    }
}

impl Options {
    pub(crate) fn deny_cache(&self) -> Option<DenyCache> {
        (self.deny_cache_capacity > 0)
            .then(|| DenyCache::new(self.deny_cache_capacity, Arc::clone(&self.clock)))
    }
}

impl Builder {
    /// Whether a hit whose answer was lost may be sent again (default
    /// [`RetryPolicy::AtLeastOnce`]; see the crate docs for why).
    pub fn retry_policy(&mut self, policy: RetryPolicy) -> &mut Self {
        self.sdk.retry = policy;
        self
    }

    /// Waits between attempts (default 20 ms doubling to 500 ms, jittered).
    pub fn backoff(&mut self, backoff: Backoff) -> &mut Self {
        self.sdk.backoff = backoff;
        self
    }

    /// What to answer when the cluster cannot be reached (default: return the error).
    pub fn fallback(&mut self, fallback: Fallback) -> &mut Self {
        self.sdk.fallback = fallback;
        self
    }

    /// Turns the local deny cache on or off (default on, [`DEFAULT_CAPACITY`] keys).
    pub fn deny_cache(&mut self, on: bool) -> &mut Self {
        self.sdk.deny_cache_capacity = if on { DEFAULT_CAPACITY } else { 0 };
        self
    }

    /// Most keys the deny cache holds (0 turns it off).
    pub fn deny_cache_capacity(&mut self, capacity: usize) -> &mut Self {
        self.sdk.deny_cache_capacity = capacity;
        self
    }

    /// The clock the deny cache reads (default: the process's monotonic clock). Tests
    /// pass a [`ManualClock`](crate::deny_cache::ManualClock).
    pub fn clock(&mut self, clock: Arc<dyn Clock>) -> &mut Self {
        self.sdk.clock = clock;
        self
    }
}
