//! All-or-nothing checks: the hits of one request decided as one.
//!
//! [`CounterStore::check_all`] grants a group of hits only if every hit passes; a group
//! that does not pass consumes nothing from any counter. Its hits that would have passed
//! are answered as peeks (allowed, `remaining` as it is, nothing taken), so a caller can
//! tell the culprit (denied) from the limits that were fine.
//!
//! # How
//! Every limit the group touches is locked for the whole call, in name order (the store
//! changes a key only under its limit's lock, and no other call waits for a second limit
//! while holding one, so the order rules out deadlock). Under those locks:
//! 1. keys absent from the store are seeded from the caller (a leader's fast store seeds
//!    from the replicated counters; the state machine seeds nothing);
//! 2. every hit is checked on *copies* of its counter (a key hit twice sees its first
//!    hit's consumption): a denial here changes nothing in the store;
//! 3. if every copy passed, the hits are checked for real, in order. They decide exactly
//!    as the copies did, except that a new key can still be refused for room (a key cap or
//!    the store's); then every key the group touched is put back as it was, and the group
//!    is denied with that refusal.
//!
//! # What is promised
//! Against any other call on the same store (concurrent or not), a group is atomic: no
//! other call sees some of its hits consumed and others not, and a denied group leaves
//! every counter of its keys exactly as it found it. **Not promised:** a new key that
//! made room under `on_full: evict_idlest` has evicted its limit's idlest counter even if
//! the group is then denied (eviction forgets, it never consumes); a seeded key stays
//! seeded (seeding copies a counter the caller already counts).

use std::collections::BTreeMap;

use crate::store::{limit_of, lock, Checked, CounterStore, KeyCap, StoredCounter};
use crate::{CounterState, Decision, Nanos, Rate};

/// One hit of a group: a store key (`limit␟key`), its limit's key cap, its rate and cost.
#[derive(Debug, Clone, Copy)]
pub struct GroupHit<'a> {
    pub key: &'a str,
    pub cap: KeyCap,
    pub rate: &'a Rate,
    pub cost: u64,
}

impl CounterStore {
    /// Decides `hits` as one: every hit consumes if every hit passes, otherwise none does
    /// (see the [module docs](crate::group)). Returns one [`Checked`] per hit, in order.
    /// `seed` is asked for the counter of each key the store does not hold.
    pub fn check_all(
        &self,
        hits: &[GroupHit<'_>],
        now: Nanos,
        seed: &dyn Fn(&str) -> Option<StoredCounter>,
    ) -> Vec<Checked> {
        // Lock every limit of the group, in name order.
        let mut limits: Vec<&str> = hits.iter().map(|h| limit_of(h.key)).collect();
        limits.sort_unstable();
        limits.dedup();
        let partitions: Vec<_> = limits.iter().map(|l| self.partition(l)).collect();
        let mut guards: Vec<_> = partitions.iter().map(|p| lock(p)).collect();
        let slot = |key: &str| limits.binary_search(&limit_of(key)).unwrap_or(0);

        // 1. Seed, then remember every key's counter as it is.
        let mut before: BTreeMap<&str, Option<StoredCounter>> = BTreeMap::new();
        for h in hits {
            if before.contains_key(h.key) {
                continue;
            }
            if self.get(h.key).is_none() {
                if let Some(counter) = seed(h.key) {
                    self.seed_in(&mut guards[slot(h.key)], h.key, counter);
                }
            }
            before.insert(h.key, self.get(h.key));
        }
        let peek = |h: &GroupHit<'_>| {
            let mut state = match before.get(h.key) {
                Some(Some(stored)) => stored.state.clone(),
                _ => CounterState::new(h.rate),
            };
            Checked {
                decision: state.check(h.rate, now, 0),
                evicted: false,
            }
        };

        // 2. On copies.
        let mut copies: BTreeMap<&str, CounterState> = BTreeMap::new();
        let trial: Vec<Decision> = hits
            .iter()
            .map(|h| {
                copies
                    .entry(h.key)
                    .or_insert_with(|| match before.get(h.key) {
                        Some(Some(stored)) => stored.state.clone(),
                        _ => CounterState::new(h.rate),
                    })
                    .check(h.rate, now, h.cost)
            })
            .collect();
        if trial.iter().any(|d| !d.allowed) {
            return hits
                .iter()
                .zip(trial)
                .map(|(h, d)| {
                    if d.allowed {
                        peek(h)
                    } else {
                        Checked {
                            decision: d,
                            evicted: false,
                        }
                    }
                })
                .collect();
        }

        // 3. For real.
        let mut done: Vec<Checked> = Vec::with_capacity(hits.len());
        for h in hits {
            let i = slot(h.key);
            let checked = self.check_in(
                &partitions[i],
                &mut guards[i],
                h.key,
                h.cap,
                h.rate,
                now,
                h.cost,
            );
            let refused = !checked.decision.allowed;
            done.push(checked);
            if refused {
                break;
            }
        }
        if done.len() == hits.len() && done.iter().all(|c| c.decision.allowed) {
            return done;
        }
        for (key, previous) in &before {
            self.put_back(&mut guards[slot(key)], key, previous.clone());
        }
        let refused = done.len() - 1;
        hits.iter()
            .enumerate()
            .map(|(i, h)| match done.get(i) {
                Some(c) if i == refused => *c,
                Some(c) => Checked {
                    evicted: c.evicted,
                    ..peek(h)
                },
                None => peek(h),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, DenyReason, OnFull};
    use proptest::prelude::*;

    fn rate(limit: u64) -> Rate {
        Rate::new(Algorithm::FixedWindow, limit, 1_000, None).unwrap()
    }

    fn hit<'a>(key: &'a str, rate: &'a Rate, cost: u64) -> GroupHit<'a> {
        GroupHit {
            key,
            cap: KeyCap::NONE,
            rate,
            cost,
        }
    }

    fn no_seed(_: &str) -> Option<StoredCounter> {
        None
    }

    #[test]
    fn a_denied_group_consumes_nothing_and_names_the_culprit() {
        let store = CounterStore::new(100);
        let (small, big) = (rate(1), rate(100));
        let group = [hit("small\u{1f}k", &small, 1), hit("big\u{1f}k", &big, 1)];
        let first = store.check_all(&group, 10, &no_seed);
        assert!(first.iter().all(|c| c.decision.allowed));
        assert_eq!(first[1].decision.remaining, 99);
        for _ in 0..3 {
            let again = store.check_all(&group, 20, &no_seed);
            assert_eq!(again[0].decision.denied, Some(DenyReason::OverLimit));
            assert!(again[1].decision.allowed, "the innocent limit is a peek");
            assert_eq!(again[1].decision.remaining, 99);
        }
        let big_now = store.check("big\u{1f}k", &big, 30, 0);
        assert_eq!(
            big_now.remaining, 99,
            "big was never consumed by a denied group"
        );
    }

    #[test]
    fn a_key_hit_twice_sees_its_own_first_hit() {
        let store = CounterStore::new(100);
        let two = rate(2);
        let group = [hit("l\u{1f}k", &two, 1), hit("l\u{1f}k", &two, 2)];
        let out = store.check_all(&group, 10, &no_seed);
        assert!(out[0].decision.allowed, "a peek");
        assert!(!out[1].decision.allowed, "1 + 2 > 2");
        assert_eq!(store.check("l\u{1f}k", &two, 10, 0).remaining, 2);
        assert!(store.is_empty(), "nothing stored for a denied group");
    }

    #[test]
    fn a_refused_new_key_puts_every_counter_back() {
        let store = CounterStore::new(100);
        let r = rate(10);
        store.check("a\u{1f}old", &r, 10, 3);
        store.check("full\u{1f}x", &r, 10, 1);
        let before = store.export();
        let one_key = KeyCap {
            max_keys: 1,
            on_full: OnFull::Refuse,
        };
        let group = [
            hit("a\u{1f}old", &r, 1),
            hit("a\u{1f}new", &r, 1),
            GroupHit {
                cap: one_key,
                ..hit("full\u{1f}y", &r, 1)
            },
        ];
        let out = store.check_all(&group, 20, &no_seed);
        assert_eq!(out[2].decision.denied, Some(DenyReason::LimitKeysFull));
        assert!(out[0].decision.allowed && out[1].decision.allowed);
        assert_eq!(out[0].decision.remaining, 7, "a peek at the old counter");
        assert_eq!(store.export(), before, "every counter as it was");
        // The slot accounting survived the round trip: the store still admits keys.
        assert!(store.check("b\u{1f}k", &r, 20, 1).allowed);
    }

    #[test]
    fn absent_keys_are_seeded_before_deciding() {
        let store = CounterStore::new(100);
        let r = rate(3);
        let seeded = {
            let other = CounterStore::new(10);
            other.check("l\u{1f}k", &r, 10, 3);
            other.get("l\u{1f}k")
        };
        let out = store.check_all(&[hit("l\u{1f}k", &r, 1)], 20, &|_| seeded.clone());
        assert_eq!(out[0].decision.denied, Some(DenyReason::OverLimit));
    }

    #[test]
    fn huge_costs_and_many_hits_neither_panic_nor_grant() {
        let store = CounterStore::new(1_000);
        let r = rate(5);
        let keys: Vec<String> = (0..2_000)
            .map(|i| format!("l{}\u{1f}k{i}", i % 7))
            .collect();
        let mut group: Vec<GroupHit<'_>> = keys.iter().map(|k| hit(k, &r, 1)).collect();
        group.push(hit("l0\u{1f}k0", &r, u64::MAX));
        let out = store.check_all(&group, 10, &no_seed);
        assert_eq!(out.len(), group.len());
        assert!(!out[group.len() - 1].decision.allowed);
        assert!(store.is_empty());
        // Without the huge hit, more new keys than the store holds: refused, put back.
        group.pop();
        let out = store.check_all(&group, 10, &no_seed);
        assert!(out
            .iter()
            .any(|c| c.decision.denied == Some(DenyReason::StoreFull)));
        assert!(store.is_empty(), "every new key taken back");
    }

    #[test]
    fn concurrent_groups_and_single_hits_stay_atomic() {
        // Threads race groups {a, b} against single hits on b. Whatever interleaving:
        // a counts exactly the granted groups, b exactly granted groups + granted singles.
        let store = std::sync::Arc::new(CounterStore::new(100));
        let (ra, rb) = (rate(40), rate(120));
        let granted: Vec<(usize, usize)> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|t| {
                    let (store, ra, rb) = (&store, &ra, &rb);
                    s.spawn(move || {
                        let (mut groups, mut singles) = (0, 0);
                        for i in 0..200 {
                            if (i + t) % 2 == 0 {
                                let g = [hit("a\u{1f}k", ra, 1), hit("b\u{1f}k", rb, 1)];
                                let out = store.check_all(&g, 10, &no_seed);
                                let all = out.iter().all(|c| c.decision.allowed);
                                groups += usize::from(all);
                            } else {
                                singles += usize::from(store.check("b\u{1f}k", rb, 10, 1).allowed);
                            }
                        }
                        (groups, singles)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let groups: usize = granted.iter().map(|g| g.0).sum();
        let singles: usize = granted.iter().map(|g| g.1).sum();
        let used = |key: &str, r: &Rate| r.limit() - store.check(key, r, 10, 0).remaining;
        assert!(groups <= 40);
        assert_eq!(used("a\u{1f}k", &ra), groups as u64);
        assert_eq!(used("b\u{1f}k", &rb), (groups + singles) as u64);
    }

    proptest! {
        /// For any sequence of groups over a few keys: a denied group leaves every counter
        /// exactly as it was, a granted one is every hit allowed, and the store agrees with
        /// a replay of only the granted groups hit by hit.
        #[test]
        fn denied_groups_change_nothing(
            groups in prop::collection::vec(
                (prop::collection::vec((0usize..4, 0u64..4), 1..5), 0u64..3_000),
                1..40,
            )
        ) {
            let store = CounterStore::new(64);
            let replay = CounterStore::new(64);
            let rates = [rate(3), rate(5), rate(1), rate(8)];
            let keys = ["a\u{1f}x", "b\u{1f}x", "a\u{1f}y", "c\u{1f}z"];
            let mut now = 0;
            for (group, step) in groups {
                now += step;
                let hits: Vec<GroupHit<'_>> = group
                    .iter()
                    .map(|&(k, cost)| hit(keys[k], &rates[k], cost))
                    .collect();
                let before = store.export();
                let out = store.check_all(&hits, now, &no_seed);
                prop_assert_eq!(out.len(), hits.len());
                if out.iter().all(|c| c.decision.allowed) {
                    for h in &hits {
                        prop_assert!(replay.check(h.key, h.rate, now, h.cost).allowed);
                    }
                } else {
                    prop_assert_eq!(store.export(), before);
                }
                for k in 0..keys.len() {
                    prop_assert_eq!(
                        store.check(keys[k], &rates[k], now, 0),
                        replay.check(keys[k], &rates[k], now, 0)
                    );
                }
            }
        }
    }
}
