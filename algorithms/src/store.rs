//! The keyed counter store: counter key → [`CounterState`], with idle expiry and a key cap.
//!
//! [`CounterStore`] is a concurrent map (dashmap, sharded `RwLock`s) that many request
//! tasks may use at once, and that the Raft state machine drives with the leader's
//! timestamps. Every method is synchronous and short: a shard lock is held only while one
//! counter is checked or updated (nanoseconds), or while [`CounterStore::expire`],
//! [`CounterStore::clear`] or [`CounterStore::export`] walk one shard.
//!
//! # The key cap (memory bound)
//! The store holds at most `max_keys` keys, and it **fails closed** when full:
//! - a hit on a key that is already stored is always served;
//! - a hit on a *new* key first sweeps idle keys ([`CounterStore::expire`] at the hit's
//!   `now`); if the store is still full, the hit is denied with
//!   [`DenyReason::StoreFull`] (`retry_after: None`) and nothing is inserted;
//!   [`CounterStore::force`] returns [`StoreError::Full`] in the same case;
//! - a peek (`cost == 0`) on a new key answers as a fresh counter would and inserts
//!   nothing, and so does a hit that is denied anyway (cost above the capacity): a key is
//!   only stored once it holds consumption.
//!
//! The cap is exact under concurrency: a slot is reserved (atomic counter) before a new
//! key is inserted, so a flood of unique keys from many threads never exceeds `max_keys`.
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
//! Decisions depend only on the sequence of calls, never on the hasher's (random) seed
//! or on iteration order; [`CounterStore::export`] sorts by key so snapshots are byte-identical
//! across replicas.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{CounterState, Decision, Nanos, Rate};

/// foldhash, seeded randomly per process: fast on short keys, and an attacker who picks
/// keys cannot aim them at one bucket without knowing the seed. Decisions never depend on
/// the seed (only iteration order does, and [`CounterStore::export`] sorts).
type KeyHasher = foldhash::fast::RandomState;

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
}

/// Concurrent map from counter key to counter state. `Send + Sync`; share it by reference
/// or `Arc`.
pub struct CounterStore {
    /// Keys are boxed `str` (two words, no spare capacity) and looked up by `&str`, so a hit
    /// on a stored key allocates nothing.
    counters: DashMap<Box<str>, StoredCounter, KeyHasher>,
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

impl CounterStore {
    /// An empty store holding at most `max_keys` keys.
    pub fn new(max_keys: usize) -> CounterStore {
        CounterStore {
            counters: DashMap::with_hasher(KeyHasher::default()),
            slots_taken: AtomicUsize::new(0),
            max_keys,
        }
    }

    /// The cap on stored keys.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// How many keys are stored (idle ones included until [`CounterStore::expire`]).
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Checks a hit of `cost` on `key` at `now` (see [`CounterState::check`]), creating the
    /// counter if needed. A new key is refused with [`DenyReason::StoreFull`] when the store
    /// is full even after sweeping idle keys; see the module docs.
    ///
    /// [`DenyReason::StoreFull`]: crate::DenyReason::StoreFull
    pub fn check(&self, key: &str, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        if let Some(mut stored) = self.counters.get_mut(key) {
            return stored.check(rate, now, cost);
        }
        // Decide on a fresh counter before taking a slot: a peek or a hit that can never
        // pass leaves nothing to store, so it must not be refused for lack of room.
        let mut fresh = CounterState::new(rate);
        let decision = fresh.check(rate, now, cost);
        if !decision.allowed || cost == 0 {
            return decision;
        }
        if !self.reserve_slot(now) {
            return Decision::store_full(rate.capacity());
        }
        match self.counters.entry(Box::from(key)) {
            Entry::Occupied(mut raced) => {
                // Another thread inserted the key since our lookup: use its counter.
                self.release_slot();
                raced.get_mut().check(rate, now, cost)
            }
            Entry::Vacant(vacant) => {
                let idle_at = fresh.idle_at(rate);
                vacant.insert(StoredCounter {
                    state: fresh,
                    idle_at,
                });
                decision
            }
        }
    }

    /// Records `cost` on `key` at `now` without asking (see [`CounterState::force`]),
    /// creating the counter if needed. Fails only when `key` is new and the store is full
    /// even after sweeping idle keys. `cost == 0` changes nothing.
    pub fn force(&self, key: &str, rate: &Rate, now: Nanos, cost: u64) -> Result<(), StoreError> {
        if let Some(mut stored) = self.counters.get_mut(key) {
            stored.force(rate, now, cost);
            return Ok(());
        }
        if cost == 0 {
            return Ok(());
        }
        if !self.reserve_slot(now) {
            return Err(StoreError::Full {
                max_keys: self.max_keys,
            });
        }
        match self.counters.entry(Box::from(key)) {
            Entry::Occupied(mut raced) => {
                self.release_slot();
                raced.get_mut().force(rate, now, cost);
            }
            Entry::Vacant(vacant) => {
                let mut state = CounterState::new(rate);
                state.force(rate, now, cost);
                let idle_at = state.idle_at(rate);
                vacant.insert(StoredCounter { state, idle_at });
            }
        }
        Ok(())
    }

    /// Removes every counter with `idle_at <= now` and returns how many were removed.
    ///
    /// Locks one shard at a time while walking it.
    pub fn expire(&self, now: Nanos) -> usize {
        let mut removed = 0;
        self.counters.retain(|_, stored| {
            let keep = stored.idle_at > now;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.slots_taken.fetch_sub(removed, Ordering::AcqRel);
        removed
    }

    /// A copy of the counter stored under `key`.
    pub fn get(&self, key: &str) -> Option<StoredCounter> {
        self.counters.get(key).map(|stored| stored.clone())
    }

    /// Stores `counter` under `key` unless the key is already stored or the store is full;
    /// returns whether it was stored. Seeds a leader's fast-mode store from the replicated
    /// one without ever overwriting a counter that is already being used.
    pub fn seed(&self, key: &str, counter: StoredCounter) -> bool {
        if self.counters.contains_key(key) || !self.try_reserve_slot() {
            return false;
        }
        match self.counters.entry(Box::from(key)) {
            Entry::Occupied(_) => {
                self.release_slot();
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(counter);
                true
            }
        }
    }

    /// Removes `key`, returning its counter if it was stored.
    pub fn remove(&self, key: &str) -> Option<StoredCounter> {
        let (_, stored) = self.counters.remove(key)?;
        self.release_slot();
        Some(stored)
    }

    /// Removes every key.
    pub fn clear(&self) {
        let mut removed = 0;
        // `retain` rather than `DashMap::clear`, to count exactly what this call removed
        // while other threads may be inserting.
        self.counters.retain(|_, _| {
            removed += 1;
            false
        });
        self.slots_taken.fetch_sub(removed, Ordering::AcqRel);
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
    /// beyond `max_keys` (dropping a counter would hand its quota out again); new keys are
    /// then refused until enough expire. A key given twice keeps its last counter.
    pub fn import(entries: Vec<(String, StoredCounter)>, max_keys: usize) -> CounterStore {
        let counters = DashMap::with_capacity_and_hasher(entries.len(), KeyHasher::default());
        for (key, stored) in entries {
            counters.insert(key.into_boxed_str(), stored);
        }
        let slots_taken = AtomicUsize::new(counters.len());
        CounterStore {
            counters,
            slots_taken,
            max_keys,
        }
    }

    /// Takes a slot for a new key, sweeping idle keys once if the store is full.
    fn reserve_slot(&self, now: Nanos) -> bool {
        self.try_reserve_slot() || (self.expire(now) > 0 && self.try_reserve_slot())
    }

    fn try_reserve_slot(&self) -> bool {
        self.slots_taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |taken| {
                (taken < self.max_keys).then_some(taken + 1)
            })
            .is_ok()
    }

    fn release_slot(&self) {
        self.slots_taken.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl StoredCounter ===

impl StoredCounter {
    fn check(&mut self, rate: &Rate, now: Nanos, cost: u64) -> Decision {
        let decision = self.state.check(rate, now, cost);
        // Recomputed even when nothing was consumed: the rate (say, its window) may have
        // changed since the last call, and `idle_at` must follow the rate now in force.
        self.idle_at = self.state.idle_at(rate);
        decision
    }

    fn force(&mut self, rate: &Rate, now: Nanos, cost: u64) {
        self.state.force(rate, now, cost);
        self.idle_at = self.state.idle_at(rate);
    }
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
