//! The keyed counter store: counter key → [`CounterState`], with idle expiry, a key cap
//! per limit and a global key cap.
//!
//! [`CounterStore`] is a concurrent map that many request tasks may use at once, and that
//! the Raft state machine drives with the leader's timestamps. Every method is synchronous
//! and short.
//!
//! # Limits (partitions)
//! A key's *limit* is the text before its first [`KEY_SEPARATOR`] (the server stores
//! `limit␟key`, see [`counter_key`]); a key without one belongs to the limit `""`. Each
//! limit keeps an index of its counters ordered by `(idle_at, key)`, guarded by that
//! limit's mutex: calls on keys of one limit are serialized, calls on different limits
//! run in parallel. The index makes expiry and eviction O(log n) per key touched —
//! nothing ever walks the whole store on a hit.
//!
//! # Key caps (memory bound)
//! [`CounterStore::check_capped`] takes the limit's [`KeyCap`]: at most `max_keys` keys
//! for that limit, and what to do when a hit brings a new key to a full limit:
//! - [`OnFull::Refuse`]: the hit is denied with [`DenyReason::LimitKeysFull`]; keys of
//!   that limit already stored keep working, other limits are untouched;
//! - [`OnFull::EvictIdlest`]: the counter with the smallest `(idle_at, key)` of that
//!   limit is dropped to make room. It is the counter that would have become fresh
//!   soonest, so dropping it loses the least; but it does lose something: if that counter
//!   was not idle yet, its key starts afresh on its next hit and may be granted up to
//!   one more full quota within the current window.
//!
//! Before refusing or evicting, the limit's idle counters are swept (they behave like
//! fresh ones, so dropping them changes nothing). The store-wide `max_keys` stays as the
//! last line: a new key is refused with [`DenyReason::StoreFull`] when the whole store
//! is full even after sweeping idle keys. Whatever the cap, a hit on a key that is
//! already stored is always served, and a peek (`cost == 0`) or a hit that is denied
//! anyway stores nothing.
//!
//! The caps are exact under concurrency: a limit's count is only changed under its mutex,
//! and a global slot is reserved (atomic counter) before a new key is inserted.
//!
//! # Expiry
//! Each stored counter carries `idle_at` (see [`CounterState::idle_at`]), recomputed after
//! every call with the rate of that call. [`CounterStore::expire`] drops counters with
//! `idle_at <= now`; since such a counter behaves exactly like a fresh one from `idle_at`
//! on, dropping it changes no later decision made with a `now` at or after the sweep's.
//! **Not promised:** if a later call passes a `now` *earlier* than a sweep's (a leader with
//! a slower clock), a dropped key restarts fresh at that earlier instant; callers that
//! need the guarantee pass non-decreasing time (the server stamps log entries with
//! `max(clock, last stamp)`).
//!
//! # Determinism
//! Decisions, refusals and evictions depend only on the stored counters and the call's
//! arguments, never on the hasher's (random) seed or on iteration order: eviction picks
//! by `(idle_at, key)`, which a snapshot carries. [`CounterStore::export`] sorts by key so
//! snapshots are byte-identical across replicas, and [`CounterStore::import`] rebuilds the
//! same indexes, so a replica restored from a snapshot evicts exactly as one that replayed
//! the log. (Sweeps of *other* limits when the whole store is full are skipped for a limit
//! another thread holds at that moment; only concurrent callers — never the single-threaded
//! state machine — can see that.)
//!
//! [`DenyReason::LimitKeysFull`]: crate::DenyReason::LimitKeysFull
//! [`DenyReason::StoreFull`]: crate::DenyReason::StoreFull

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{CounterState, Decision, Nanos, Rate, ReserveRequest, Reserved};

/// foldhash, seeded randomly per process: fast on short keys, and an attacker who picks
/// keys cannot aim them at one bucket without knowing the seed. Decisions never depend on
/// the seed (only iteration order does, and [`CounterStore::export`] sorts).
type KeyHasher = foldhash::fast::RandomState;

/// Separates a limit name from a counter key inside the store. A unit separator cannot
/// appear in limit names (the server validates them), so keys of different limits never
/// collide and a key's limit is the text before the first separator.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The store key of counter `key` under limit `limit`.
pub fn counter_key(limit: &str, key: &str) -> String {
    let mut k = String::with_capacity(limit.len() + 1 + key.len());
    k.push_str(limit);
    k.push(KEY_SEPARATOR);
    k.push_str(key);
    k
}

/// The limit a store key belongs to: the text before the first [`KEY_SEPARATOR`], or
/// `""` for a key without one.
pub fn limit_of(key: &str) -> &str {
    key.split_once(KEY_SEPARATOR).map_or("", |(limit, _)| limit)
}

/// What a limit does when it holds its most keys and a hit brings a new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Deny hits on new keys of this limit ([`DenyReason::LimitKeysFull`](crate::DenyReason::LimitKeysFull)).
    #[default]
    Refuse,
    /// Drop the limit's idlest counter (smallest `idle_at`, then smallest key).
    EvictIdlest,
}

impl OnFull {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFull::Refuse => "refuse",
            OnFull::EvictIdlest => "evict_idlest",
        }
    }
}

/// The cap on one limit's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCap {
    pub max_keys: usize,
    pub on_full: OnFull,
}

impl KeyCap {
    /// No cap of its own: only the store-wide one applies.
    pub const NONE: KeyCap = KeyCap {
        max_keys: usize::MAX,
        on_full: OnFull::Refuse,
    };
}

/// The outcome of [`CounterStore::check_capped`]: the decision, and whether a counter of
/// the same limit was evicted to make room for this key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub decision: Decision,
    pub evicted: bool,
}

/// One stored counter and the instant it becomes idle (droppable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCounter {
    pub state: CounterState,
    pub idle_at: Nanos,
}

/// Errors from the store.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error(
        "counter store is full ({max_keys} keys): new keys are refused until idle ones expire"
    )]
    Full { max_keys: usize },
    #[error(
        "this limit holds its most keys ({max_keys}): new keys are refused until idle ones expire"
    )]
    LimitFull { max_keys: usize },
}

/// Why a new key could not be stored.
enum NoRoom {
    Limit(usize),
    Store,
}

/// One limit's counters, ordered by `(idle_at, key)`: the sweep and eviction order.
#[derive(Debug, Default)]
pub(crate) struct Partition {
    by_idle: BTreeSet<(Nanos, Arc<str>)>,
}

pub(crate) type SharedPartition = Arc<Mutex<Partition>>;

/// Concurrent map from counter key to counter state. `Send + Sync`; share it by reference
/// or `Arc`.
pub struct CounterStore {
    /// Keys are shared with their limit's index and looked up by `&str`, so a hit on a
    /// stored key allocates nothing. Only changed while the key's limit mutex is held.
    counters: DashMap<Arc<str>, StoredCounter, KeyHasher>,
    /// Each limit's index (created on its first key, dropped by [`CounterStore::expire`]
    /// once empty).
    partitions: DashMap<Box<str>, SharedPartition, KeyHasher>,
    /// Keys stored plus slots reserved by inserts in flight; never above `max_keys`. This,
    /// not `counters.len()`, enforces the cap, so racing inserts cannot overshoot it.
    slots_taken: AtomicUsize,
    /// The cap on stored keys.
    max_keys: usize,
}

impl fmt::Debug for CounterStore {
    /// Summarizes: a store may hold millions of keys, which do not belong in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterStore")
            .field("len", &self.len())
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// Locks a partition. A panic while it was held cannot leave the index half-updated in a
/// way later calls could not live with (it only ever lags the map), so poisoning is ignored.
pub(crate) fn lock(partition: &Mutex<Partition>) -> MutexGuard<'_, Partition> {
    partition
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CounterStore {
    /// An empty store holding at most `max_keys` keys.
    pub fn new(max_keys: usize) -> CounterStore {
        CounterStore {
            counters: DashMap::with_hasher(KeyHasher::default()),
            partitions: DashMap::with_hasher(KeyHasher::default()),
            slots_taken: AtomicUsize::new(0),
            max_keys,
        }
    }

    /// The cap on stored keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many keys are stored (idle ones included until they are swept).
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// How many keys of `limit` are stored.
    pub fn len_of(&self, limit: &str) -> usize {
        self.partitions
            .get(limit)
            .map(|p| Arc::clone(p.value()))
            .map_or(0, |p| lock(&p).by_idle.len())
    }

    /// Checks a hit of `cost` on `key` at `now` (see [`CounterState::check`]), creating the
    /// counter if needed, with only the store-wide cap. See [`CounterStore::check_capped`].
    pub fn check(&self, key: &str, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        self.check_capped(key, KeyCap::NONE, rate, now, cost)
            .decision
    }

    /// Checks a hit of `cost` on `key` at `now` (see [`CounterState::check`]), creating the
    /// counter if needed. A new key of a limit that holds `cap.max_keys` keys is refused or
    /// evicts that limit's idlest counter, as `cap.on_full` says; a new key is refused
    /// with [`DenyReason::StoreFull`](crate::DenyReason::StoreFull) when the whole store
    /// is full. See the module docs.
    pub fn check_capped(
        &self,
        key: &str,
        cap: KeyCap,
        rate: &Rate,
        now: Nanos,
        cost: u64,
    ) -> Checked {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        self.check_in(&partition, &mut index, key, cap, rate, now, cost)
    }

    /// [`CounterStore::check_capped`] with `key`'s limit already locked (`index` is the
    /// guard of `partition`).
    #[allow(clippy::too_many_arguments)] // `check_capped`'s arguments plus the lock
    pub(crate) fn check_in(
        &self,
        partition: &SharedPartition,
        index: &mut Partition,
        key: &str,
        cap: KeyCap,
        rate: &Rate,
        now: Nanos,
        cost: u64,
    ) -> Checked {
        if let Some(decision) = self.update_stored(index, key, rate, |s| s.check(rate, now, cost)) {
            return Checked {
                decision,
                evicted: false,
            };
        }
        // Decide on a fresh counter before taking a slot: a peek or a hit that can never
        // pass leaves nothing to store, so it must not be refused for lack of room.
        let mut fresh = CounterState::new(rate);
        let decision = fresh.check(rate, now, cost);
        if !decision.allowed || cost == 0 {
            return Checked {
                decision,
                evicted: false,
            };
        }
        let evicted = match self.make_room(partition, index, cap, now) {
            Ok(evicted) => evicted,
            Err(NoRoom::Limit(_)) => {
                return Checked {
                    decision: Decision::limit_keys_full(rate.capacity()),
                    evicted: false,
                }
            }
            Err(NoRoom::Store) => {
                return Checked {
                    decision: Decision::store_full(rate.capacity()),
                    evicted: false,
                }
            }
        };
        let idle_at = fresh.idle_at(rate);
        self.insert(index, key, fresh, idle_at);
        Checked { decision, evicted }
    }

    /// Reserves quota on `key` at `now` (see [`CounterState::reserve`]), creating the
    /// counter if needed under the same caps as [`CounterStore::check_capped`]; returns
    /// what was reserved and whether a counter was evicted for it. Nothing is stored when
    /// nothing is granted.
    pub fn reserve_capped(
        &self,
        key: &str,
        cap: KeyCap,
        rate: &Rate,
        now: Nanos,
        request: ReserveRequest,
    ) -> (Reserved, bool) {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        let reserve = |s: &mut CounterState| s.reserve(rate, now, request);
        if let Some(reserved) = self.update_stored(&mut index, key, rate, reserve) {
            return (reserved, false);
        }
        let mut fresh = CounterState::new(rate);
        let reserved = fresh.reserve(rate, now, request);
        if reserved.granted == 0 {
            return (reserved, false);
        }
        let refused = |decision| Reserved {
            granted: 0,
            valid_until: now,
            decision,
        };
        let evicted = match self.make_room(&partition, &mut index, cap, now) {
            Ok(evicted) => evicted,
            Err(NoRoom::Limit(_)) => {
                return (refused(Decision::limit_keys_full(rate.capacity())), false)
            }
            Err(NoRoom::Store) => return (refused(Decision::store_full(rate.capacity())), false),
        };
        let idle_at = fresh.idle_at(rate);
        self.insert(&mut index, key, fresh, idle_at);
        (reserved, evicted)
    }

    /// Takes back the unused part `cost` of a reservation on `key` that was valid until
    /// `valid_until` (see [`CounterState::refund`]). A key no longer stored has nothing
    /// to take back.
    pub fn refund(&self, key: &str, rate: &Rate, valid_until: Nanos, cost: u64) {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        self.update_stored(&mut index, key, rate, |s| s.refund(rate, valid_until, cost));
    }

    /// Records `cost` on `key` at `now` without asking (see [`CounterState::force`]),
    /// creating the counter if needed, with only the store-wide cap.
    pub fn force(&self, key: &str, rate: &Rate, now: Nanos, cost: u64) -> Result<(), StoreError> {
        self.force_capped(key, KeyCap::NONE, rate, now, cost)
            .map(|_| ())
    }

    /// Records `cost` on `key` at `now` without asking, creating the counter if needed;
    /// returns whether a counter was evicted for it. Fails only when `key` is new and
    /// there is no room for it under `cap` or the store-wide cap (the same rules as
    /// [`CounterStore::check_capped`]). `cost == 0` changes nothing.
    pub fn force_capped(
        &self,
        key: &str,
        cap: KeyCap,
        rate: &Rate,
        now: Nanos,
        cost: u64,
    ) -> Result<bool, StoreError> {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        if self
            .update_stored(&mut index, key, rate, |s| s.force(rate, now, cost))
            .is_some()
        {
            return Ok(false);
        }
        if cost == 0 {
            return Ok(false);
        }
        let evicted = self
            .make_room(&partition, &mut index, cap, now)
            .map_err(|no_room| match no_room {
                NoRoom::Limit(max_keys) => StoreError::LimitFull { max_keys },
                NoRoom::Store => StoreError::Full {
                    max_keys: self.max_keys,
                },
            })?;
        let mut state = CounterState::new(rate);
        state.force(rate, now, cost);
        let idle_at = state.idle_at(rate);
        self.insert(&mut index, key, state, idle_at);
        Ok(evicted)
    }

    /// Removes every counter with `idle_at <= now` and returns how many were removed.
    ///
    /// Locks one limit at a time; costs O(limits + removed × log n).
    pub fn expire(&self, now: Nanos) -> usize {
        let partitions: Vec<SharedPartition> = self
            .partitions
            .iter()
            .map(|p| Arc::clone(p.value()))
            .collect();
        let mut removed = 0;
        for partition in &partitions {
            removed += self.sweep(&mut lock(partition), now);
        }
        drop(partitions);
        // Forget empty limits (a policy change may have retired them). Only a partition
        // nobody else holds is dropped: holders clone it under the map's shard lock, which
        // `retain` holds, and `try_lock` never waits while holding that shard lock.
        self.partitions.retain(|_, partition| {
            let unused_and_empty =
                matches!(partition.try_lock(), Ok(index) if index.by_idle.is_empty());
            Arc::strong_count(partition) > 1 || !unused_and_empty
        });
        removed
    }

    /// A copy of the counter stored under `key`.
    pub fn get(&self, key: &str) -> Option<StoredCounter> {
        self.counters.get(key).map(|stored| stored.clone())
    }

    /// Stores `counter` under `key` unless the key is already stored or the store is full;
    /// returns whether it was stored. Seeds a leader's fast-mode store from the replicated
    /// one without ever overwriting a counter that is already being used. Seeding ignores
    /// per-limit caps: the seeded counter is one the replicated store (which enforces
    /// them) already holds.
    pub fn seed(&self, key: &str, counter: StoredCounter) -> bool {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        if self.counters.contains_key(key) || !self.try_reserve_slot() {
            return false;
        }
        let StoredCounter { state, idle_at } = counter;
        self.insert(&mut index, key, state, idle_at);
        true
    }

    /// Removes `key`, returning its counter if it was stored.
    pub fn remove(&self, key: &str) -> Option<StoredCounter> {
        let partition = self.partition(limit_of(key));
        let mut index = lock(&partition);
        let (key, stored) = self.counters.remove(key)?;
        index.by_idle.remove(&(stored.idle_at, key));
        self.release_slots(1);
        Some(stored)
    }

    /// Removes every key.
    pub fn clear(&self) {
        let partitions: Vec<SharedPartition> = self
            .partitions
            .iter()
            .map(|p| Arc::clone(p.value()))
            .collect();
        for partition in &partitions {
            let mut index = lock(partition);
            let removed = index.by_idle.len();
            for (_, key) in std::mem::take(&mut index.by_idle) {
                self.counters.remove(&key);
            }
            self.release_slots(removed);
        }
    }

    /// Every stored counter, sorted by key: a deterministic snapshot.
    ///
    /// Consistent per key, not across keys: concurrent writers may land before or after
    /// the walk reaches their shard. The Raft state machine exports between applies.
    pub fn export(&self) -> Vec<(String, StoredCounter)> {
        let mut entries: Vec<(String, StoredCounter)> = self
            .counters
            .iter()
            .map(|entry| (String::from(&**entry.key()), entry.value().clone()))
            .collect();
        entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        entries
    }

    /// Rebuilds a store from [`CounterStore::export`]'s output. Every entry is kept, even
    /// beyond `max_keys` or a limit's cap (dropping a counter would hand its quota out
    /// again); new keys are then refused (or evict) until enough expire. A key given twice
    /// keeps its last counter.
    pub fn import(entries: Vec<(String, StoredCounter)>, max_keys: usize) -> CounterStore {
        let store = CounterStore::new(max_keys);
        for (key, stored) in entries {
            let partition = store.partition(limit_of(&key));
            let mut index = lock(&partition);
            let key: Arc<str> = Arc::from(key);
            let idle_at = stored.idle_at;
            if let Some(old) = store.counters.insert(Arc::clone(&key), stored) {
                index.by_idle.remove(&(old.idle_at, Arc::clone(&key)));
            }
            index.by_idle.insert((idle_at, key));
        }
        store
            .slots_taken
            .store(store.counters.len(), Ordering::Release);
        store
    }

    /// The index of `limit`, created if needed. The map's shard lock is released before
    /// the caller locks the partition.
    pub(crate) fn partition(&self, limit: &str) -> SharedPartition {
        if let Some(partition) = self.partitions.get(limit) {
            return Arc::clone(partition.value());
        }
        Arc::clone(self.partitions.entry(Box::from(limit)).or_default().value())
    }

    /// Makes room for one new key of the limit whose index is `index` (locked): sweeps its
    /// idle counters if it is at `cap`, then refuses or evicts; then takes a store-wide
    /// slot, sweeping idle counters of other limits once if the store is full. Returns
    /// whether a counter was evicted.
    fn make_room(
        &self,
        own: &SharedPartition,
        index: &mut Partition,
        cap: KeyCap,
        now: Nanos,
    ) -> Result<bool, NoRoom> {
        let mut evicted = false;
        if index.by_idle.len() >= cap.max_keys {
            self.sweep(index, now);
        }
        if index.by_idle.len() >= cap.max_keys {
            if cap.on_full == OnFull::Refuse || cap.max_keys == 0 {
                return Err(NoRoom::Limit(cap.max_keys));
            }
            // Usually one; more after a policy change lowered the cap.
            while index.by_idle.len() >= cap.max_keys {
                let Some((_, key)) = index.by_idle.pop_first() else {
                    break;
                };
                self.counters.remove(&key);
                self.release_slots(1);
            }
            evicted = true;
        }
        if self.try_reserve_slot() {
            return Ok(evicted);
        }
        let mut swept = self.sweep(index, now);
        let others: Vec<SharedPartition> = self
            .partitions
            .iter()
            .map(|p| Arc::clone(p.value()))
            .collect();
        for partition in others.iter().filter(|p| !Arc::ptr_eq(p, own)) {
            // Never wait for another limit while holding this one (lock order).
            if let Ok(mut other) = partition.try_lock() {
                swept += self.sweep(&mut other, now);
            }
        }
        if swept > 0 && self.try_reserve_slot() {
            Ok(evicted)
        } else {
            Err(NoRoom::Store)
        }
    }

    /// Drops the idle counters (`idle_at <= now`) of one limit; returns how many.
    fn sweep(&self, index: &mut Partition, now: Nanos) -> usize {
        let mut removed = 0;
        while index
            .by_idle
            .first()
            .is_some_and(|(idle_at, _)| *idle_at <= now)
        {
            if let Some((_, key)) = index.by_idle.pop_first() {
                self.counters.remove(&key);
                removed += 1;
            }
        }
        self.release_slots(removed);
        removed
    }

    /// Runs `change` on `key`'s stored counter, if there is one (`None`: not stored), then
    /// moves it in its limit's idle order (`index`, locked) to its new idle time. The idle
    /// time is recomputed even when nothing was consumed: the rate (say, its window) may
    /// have changed since the last call, and `idle_at` must follow the rate now in force.
    fn update_stored<T>(
        &self,
        index: &mut Partition,
        key: &str,
        rate: &Rate,
        change: impl FnOnce(&mut CounterState) -> T,
    ) -> Option<T> {
        let mut stored = self.counters.get_mut(key)?;
        let before = stored.idle_at;
        let out = change(&mut stored.state);
        stored.idle_at = stored.state.idle_at(rate);
        if stored.idle_at != before {
            let key = Arc::clone(stored.key());
            reindex(index, before, stored.idle_at, key);
        }
        Some(out)
    }

    /// Stores a new counter whose slot is already reserved.
    fn insert(&self, index: &mut Partition, key: &str, state: CounterState, idle_at: Nanos) {
        let key: Arc<str> = Arc::from(key);
        index.by_idle.insert((idle_at, Arc::clone(&key)));
        self.counters.insert(key, StoredCounter { state, idle_at });
    }

    /// Puts `key` back to `previous` (its counter before a group changed it; `None`: it
    /// was not stored), with its limit locked. A counter that must come back is stored
    /// even past the key caps: dropping it would hand its quota out again.
    pub(crate) fn put_back(
        &self,
        index: &mut Partition,
        key: &str,
        previous: Option<StoredCounter>,
    ) {
        if let Some((key, current)) = self.counters.remove(key) {
            index.by_idle.remove(&(current.idle_at, key));
            self.release_slots(1);
        }
        if let Some(StoredCounter { state, idle_at }) = previous {
            self.slots_taken.fetch_add(1, Ordering::AcqRel);
            self.insert(index, key, state, idle_at);
        }
    }

    /// Stores `counter` under `key` (absent) if a slot is free, with its limit locked.
    pub(crate) fn seed_in(&self, index: &mut Partition, key: &str, counter: StoredCounter) {
        if !self.counters.contains_key(key) && self.try_reserve_slot() {
            self.insert(index, key, counter.state, counter.idle_at);
        }
    }

    fn try_reserve_slot(&self) -> bool {
        self.slots_taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max_keys).then_some(taken + 1)
            })
            .is_ok()
    }

    fn release_slots(&self, n: usize) {
        if n > 0 {
            self.slots_taken.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// Moves `key` in its limit's index from `before` to `after`.
fn reindex(index: &mut Partition, before: Nanos, after: Nanos, key: Arc<str>) {
    index.by_idle.remove(&(before, Arc::clone(&key)));
    index.by_idle.insert((after, key));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason};

    fn rate() -> Rate {
        Rate::new(Algorithm::FixedWindow, 2, 100, None).unwrap()
    }

    #[test]
    fn store_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CounterStore>();
    }

    #[test]
    fn full_store_refuses_new_keys_but_serves_old_ones() {
        let store = CounterStore::new(2);
        assert!(store.check("a", &rate(), 0, 1).allowed);
        assert!(store.check("b", &rate(), 0, 1).allowed);
        let d = store.check("c", &rate(), 50, 1);
        assert_eq!(d.denied, Some(DenyReason::StoreFull));
        assert_eq!(d.retry_after, None);
        assert_eq!(
            store.force("c", &rate(), 50, 1),
            Err(StoreError::Full { max_keys: 2 })
        );
        assert!(store.check("a", &rate(), 50, 1).allowed);
        assert_eq!(store.len(), 2);
        // At 100 both windows have ended: the sweep frees room for "c".
        assert!(store.check("c", &rate(), 100, 1).allowed);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn peeks_and_hopeless_hits_insert_nothing() {
        let store = CounterStore::new(0);
        let peek = store.check("k", &rate(), 0, 0);
        assert!(peek.allowed);
        assert_eq!(peek.remaining, 2);
        let hopeless = store.check("k", &rate(), 0, 3);
        assert_eq!(hopeless.denied, Some(DenyReason::CostExceedsLimit));
        assert!(store.is_empty());
    }

    #[test]
    fn remove_and_clear_free_slots() {
        let store = CounterStore::new(1);
        assert!(store.check("a", &rate(), 0, 1).allowed);
        assert!(store.remove("a").is_some());
        assert!(store.check("b", &rate(), 0, 1).allowed);
        store.clear();
        assert!(store.is_empty());
        assert!(store.check("c", &rate(), 0, 1).allowed);
    }
}
