//! The local deny cache: once the cluster denies a key for lack of quota, later hits on
//! that key are answered "denied" here, without a network call, until the time the
//! cluster said the hit could pass again.
//!
//! # Why it never allows and never denies late
//! The cache answers only "denied" or "ask the cluster" ([`DenyCache::lookup`] returns an
//! `Option`); it has no way to say "allowed". An entry is made only from an `OverLimit`
//! denial that carries `retry_after`, which every algorithm defines as the earliest time
//! *the same cost* can pass if no other hit arrives (fixed window: the window's end;
//! sliding window/log: when enough old hits slide out; token bucket/GCRA: when enough
//! tokens drip back). Other clients' hits can only push that time later, and a denial
//! consumes nothing, so the cluster would deny the same key for the same or a larger cost
//! until then. The entry expires at `sent + retry_after - 1 ms`, where `sent` is when the
//! request left this process (before the cluster decided) and the millisecond covers the
//! server rounding `retry_after` up: the cache stops denying at or before the reset.
//!
//! What it cannot see: a policy change that raises the limit, or a new leader whose
//! clock runs ahead of the old one's, can make the cluster allow a key a little before
//! the cached time. Hits smaller than the denied one are always asked (a cost of 1 may
//! pass while a cost of 5 may not), and peeks (cost 0) always go to the cluster.
//!
//! # Memory
//! At most `capacity` entries. A full cache drops expired entries first, then the
//! entry that expires soonest (the one that would be least useful). Counters for export
//! are in [`DenyCacheStats`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Decision, DenyReason, Source};

/// Default number of keys the cache holds.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// A monotonic clock; the deny cache reads time through it so tests can drive it.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time since an arbitrary fixed origin; never decreases.
    fn now(&self) -> Duration;
}

/// The process's monotonic clock ([`std::time::Instant`]).
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to: for tests of code that uses the deny cache.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Counters an application can export (e.g. as Prometheus counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DenyCacheStats {
    /// Hits answered "denied" locally: network calls saved.
    pub local_denials: u64,
    /// Hits the cache had no answer for, sent to the cluster.
    pub misses: u64,
    /// Entries dropped to stay within capacity before they expired.
    pub evictions: u64,
    /// Entries held now (expired ones included until they are swept).
    pub entries: u64,
}

/// One denied key: hits of at least `cost` are denied until `until`.
#[derive(Debug, Clone)]
struct Entry {
    until: Duration,
    cost: u64,
    /// Index key in `Table::by_expiry`.
    seq: u64,
    limit_value: u64,
    window: Duration,
    reset_at: Duration,
}

#[derive(Debug, Default)]
struct Table {
    /// limit → key → entry; nested so a lookup by `(&str, &str)` does not allocate.
    entries: HashMap<String, HashMap<String, Entry>>,
    /// `(until, seq)` → `(limit, key)`: what to evict first.
    by_expiry: BTreeMap<(Duration, u64), (String, String)>,
    len: usize,
    next_seq: u64,
}

impl Table {
    fn remove(&mut self, limit: &str, key: &str) -> Option<Entry> {
        let keys = self.entries.get_mut(limit)?;
        let entry = keys.remove(key)?;
        if keys.is_empty() {
            self.entries.remove(limit);
        }
        self.by_expiry.remove(&(entry.until, entry.seq));
        self.len -= 1;
        Some(entry)
    }

    /// Removes the entry that expires first; returns whether it had expired by `now`.
    fn pop_soonest(&mut self, now: Duration) -> Option<bool> {
        let (&(until, _), (limit, key)) = self.by_expiry.iter().next()?;
        let (limit, key) = (limit.clone(), key.clone());
        self.remove(&limit, &key);
        Some(until <= now)
    }
}

/// A bounded map of keys known to be denied, shared by every clone of a
/// [`Client`](crate::Client).
pub struct DenyCache {
    table: Mutex<Table>,
    capacity: usize,
    clock: Arc<dyn Clock>,
    local_denials: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl fmt::Debug for DenyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DenyCache")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl DenyCache {
    /// An empty cache of at most `capacity` keys (at least 1), reading time from `clock`.
    pub fn new(capacity: usize, clock: Arc<dyn Clock>) -> DenyCache {
        DenyCache {
            table: Mutex::new(Table::default()),
            capacity: capacity.max(1),
            clock,
            local_denials: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The cache's clock reading now; pass it to [`record`](Self::record) as the time the
    /// request was sent.
    pub fn now(&self) -> Duration {
        self.clock.now()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent table (every mutation is
        // completed before anything that can panic), so a poisoned lock is still usable.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A local denial for a hit of `cost` on `key` under `limit`, or `None`: ask the
    /// cluster. Peeks (cost 0) are always asked.
    pub fn lookup(&self, limit: &str, key: &str, cost: u64) -> Option<Decision> {
        let answer = if cost == 0 {
            None
        } else {
            let now = self.clock.now();
            let mut table = self.table();
            match table.entries.get(limit).and_then(|keys| keys.get(key)) {
                // A cost above the limit never passes: the cluster says so, with its own reason.
                Some(e) if now < e.until && cost >= e.cost && cost <= e.limit_value => {
                    Some(Decision {
                        allowed: false,
                        limit: limit.to_string(),
                        limit_value: e.limit_value,
                        remaining: 0,
                        reset_after: e.reset_at.saturating_sub(now).max(e.until - now),
                        retry_after: Some(e.until - now),
                        reason: Some(DenyReason::OverLimit),
                        window: e.window,
                        source: Source::DenyCache,
                    })
                }
                Some(e) if now >= e.until => {
                    table.remove(limit, key);
                    None
                }
                _ => None,
            }
        };
        let counter = if answer.is_some() {
            &self.local_denials
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        answer
    }

    /// Learns from the cluster's `decision` for a hit of `cost` on `key`, sent at `sent`
    /// (a reading of [`now`](Self::now) taken before the request left).
    pub fn record(&self, key: &str, cost: u64, sent: Duration, decision: &Decision) {
        if decision.source != Source::Cluster {
            return;
        }
        if decision.allowed {
            // Whatever the cache believed about this key, the cluster now allows it.
            self.table().remove(&decision.limit, key);
            return;
        }
        let (Some(DenyReason::OverLimit), Some(retry_after)) =
            (decision.reason, decision.retry_after)
        else {
            return;
        };
        if cost == 0 {
            return;
        }
        // `retry_after` was rounded up to the millisecond by the server.
        let until = sent + retry_after.saturating_sub(Duration::from_millis(1));
        let now = self.clock.now();
        if until <= now {
            return;
        }
        let mut table = self.table();
        table.remove(&decision.limit, key);
        while table.len >= self.capacity {
            match table.pop_soonest(now) {
                Some(false) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Some(true) => {}
                None => break,
            }
        }
        let seq = table.next_seq;
        table.next_seq += 1;
        table
            .by_expiry
            .insert((until, seq), (decision.limit.clone(), key.to_string()));
        table
            .entries
            .entry(decision.limit.clone())
            .or_default()
            .insert(
                key.to_string(),
                Entry {
                    until,
                    cost,
                    seq,
                    limit_value: decision.limit_value,
                    window: decision.window,
                    reset_at: sent + decision.reset_after,
                },
            );
        table.len += 1;
    }

    /// The counters so far.
    pub fn stats(&self) -> DenyCacheStats {
        DenyCacheStats {
            local_denials: self.local_denials.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.table().len as u64,
        }
    }
}
