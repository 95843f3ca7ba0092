//! The deny cache against a model cluster in fake time: it never answers "allowed", it
//! denies only what the cluster would deny at that moment, and so never after the reset
//! — for fixed windows and token buckets of random sizes, random costs and latencies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use quorate_client::deny_cache::{DenyCache, ManualClock};
use quorate_client::{Decision, DenyReason, Source};

const MS: u64 = 1_000_000;

/// One key's counter as the cluster keeps it, in nanoseconds.
#[derive(Debug, Clone)]
enum Model {
    /// `limit` per `window`, windows aligned to multiples of `window`.
    FixedWindow {
        limit: u64,
        window: u64,
        index: u64,
        used: u64,
    },
    /// GCRA: one token per `interval`, at most `burst` tokens.
    TokenBucket { burst: u64, interval: u64, tat: u64 },
}

impl Model {
    fn limit(&self) -> u64 {
        match self {
            Model::FixedWindow { limit, .. } => *limit,
            Model::TokenBucket { burst, .. } => *burst,
        }
    }

    /// `Err(retry_after)` when a hit of `cost` at `now` is over limit, `Err(None)` when it
    /// can never pass, `Ok(())` when it passes. Does not consume.
    fn evaluate(&self, cost: u64, now: u64) -> Result<(), Option<u64>> {
        if cost > self.limit() {
            return Err(None);
        }
        match *self {
            Model::FixedWindow {
                limit,
                window,
                index,
                used,
            } => {
                let used = if now / window == index { used } else { 0 };
                if used + cost <= limit {
                    Ok(())
                } else {
                    Err(Some((now / window + 1) * window - now))
                }
            }
            Model::TokenBucket {
                burst,
                interval,
                tat,
            } => {
                let new_tat = tat.max(now) + cost * interval;
                let tolerance = burst * interval;
                if new_tat - now <= tolerance {
                    Ok(())
                } else {
                    Err(Some(new_tat - now - tolerance))
                }
            }
        }
    }

    /// Decides a hit as the cluster does: consumes on allow, never on deny.
    fn decide(&mut self, limit_name: &str, cost: u64, now: u64) -> Decision {
        let outcome = self.evaluate(cost, now);
        if outcome.is_ok() {
            match self {
                Model::FixedWindow {
                    window,
                    index,
                    used,
                    ..
                } => {
                    if now / *window != *index {
                        *index = now / *window;
                        *used = 0;
                    }
                    *used += cost;
                }
                Model::TokenBucket { interval, tat, .. } => {
                    *tat = (*tat).max(now) + cost * *interval;
                }
            }
        }
        let ms_ceil = |ns: u64| Duration::from_millis(ns.div_ceil(MS));
        Decision {
            allowed: outcome.is_ok(),
            limit: limit_name.to_string(),
            limit_value: self.limit(),
            remaining: 0,
            reset_after: ms_ceil(match self {
                Model::FixedWindow { window, .. } => (now / *window + 1) * *window - now,
                Model::TokenBucket { tat, .. } => tat.saturating_sub(now),
            }),
            retry_after: outcome.err().flatten().map(ms_ceil),
            reason: match outcome {
                Ok(()) => None,
                Err(Some(_)) => Some(DenyReason::OverLimit),
                Err(None) => Some(DenyReason::CostExceedsLimit),
            },
            window: Duration::from_secs(1),
            source: Source::Cluster,
        }
    }
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        (1u64..6, 1u64..2_000).prop_map(|(limit, window_ms)| Model::FixedWindow {
            limit,
            window: window_ms * MS,
            index: 0,
            used: 0,
        }),
        (1u64..6, 1u64..500).prop_map(|(burst, interval_ms)| Model::TokenBucket {
            burst,
            interval: interval_ms * MS + 1,
            tat: 0,
        }),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    /// Time passes (ns).
    Wait(u64),
    /// A hit on key `key` of `cost`; the request takes `to_cluster` ns to be decided and
    /// `back` ns for the answer to arrive.
    Hit {
        key: usize,
        cost: u64,
        to_cluster: u64,
        back: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..3_000 * MS).prop_map(Op::Wait),
        (0usize..3, 0u64..7, 0u64..5 * MS, 0u64..5 * MS).prop_map(
            |(key, cost, to_cluster, back)| Op::Hit {
                key,
                cost,
                to_cluster,
                back
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_cache_denies_only_what_the_cluster_would_deny_then(
        models in proptest::collection::vec(model(), 3),
        ops in proptest::collection::vec(op(), 1..200),
        capacity in 1usize..4,
    ) {
        let mut models = models;
        let clock = ManualClock::new();
        let cache = DenyCache::new(capacity, Arc::new(clock.clone()));
        let now = |clock: &ManualClock| u64::try_from(quorate_client::deny_cache::Clock::now(clock).as_nanos()).unwrap();
        let mut local = 0u64;
        let mut asked = 0u64;
        for op in ops {
            match op {
                Op::Wait(ns) => clock.advance(Duration::from_nanos(ns)),
                Op::Hit { key, cost, to_cluster, back } => {
                    let key_name = format!("k{key}");
                    if let Some(d) = cache.lookup("lim", &key_name, cost) {
                        local += 1;
                        prop_assert!(!d.allowed, "the cache allowed: {d:?}");
                        prop_assert_eq!(d.source, Source::DenyCache);
                        let t = now(&clock);
                        let truth = models[key].evaluate(cost, t);
                        prop_assert!(
                            matches!(truth, Err(Some(_))),
                            "denied locally at {t} ns what the cluster would answer {truth:?} ({:?})",
                            models[key]
                        );
                        continue;
                    }
                    asked += 1;
                    let sent = cache.now();
                    clock.advance(Duration::from_nanos(to_cluster));
                    let decision = models[key].decide("lim", cost, now(&clock));
                    clock.advance(Duration::from_nanos(back));
                    cache.record(&key_name, cost, sent, &decision);
                }
            }
        }
        let stats = cache.stats();
        prop_assert_eq!(stats.local_denials, local);
        prop_assert_eq!(stats.misses, asked);
        prop_assert!(stats.entries <= capacity as u64);
    }
}

fn over_limit(retry_after: Duration) -> Decision {
    Decision {
        allowed: false,
        limit: "lim".into(),
        limit_value: 10,
        remaining: 0,
        reset_after: retry_after,
        retry_after: Some(retry_after),
        reason: Some(DenyReason::OverLimit),
        window: Duration::from_secs(60),
        source: Source::Cluster,
    }
}

#[test]
fn stops_denying_at_the_reset_and_asks_for_smaller_costs_and_peeks() {
    let clock = ManualClock::new();
    let cache = DenyCache::new(10, Arc::new(clock.clone()));
    let sent = cache.now();
    clock.advance(Duration::from_millis(3));
    cache.record("k", 2, sent, &over_limit(Duration::from_millis(1000)));
    // Denied for the same or a larger cost, not for a smaller one or a peek.
    assert!(cache.lookup("lim", "k", 2).is_some());
    assert!(cache.lookup("lim", "k", 5).is_some());
    assert!(cache.lookup("lim", "k", 1).is_none());
    assert!(cache.lookup("lim", "k", 0).is_none());
    assert!(cache.lookup("other", "k", 2).is_none());
    // Until 1 s after sending, less the server's millisecond rounding; then it asks.
    clock.advance(Duration::from_millis(995));
    let d = cache.lookup("lim", "k", 2).expect("still denied");
    assert_eq!(d.retry_after, Some(Duration::from_millis(1)));
    clock.advance(Duration::from_millis(1));
    assert!(cache.lookup("lim", "k", 2).is_none());
    assert_eq!(cache.stats().entries, 0, "the expired entry was dropped");
}

#[test]
fn an_allow_from_the_cluster_clears_the_key_and_fallbacks_are_not_learned() {
    let clock = ManualClock::new();
    let cache = DenyCache::new(10, Arc::new(clock.clone()));
    cache.record("k", 1, cache.now(), &over_limit(Duration::from_secs(60)));
    assert!(cache.lookup("lim", "k", 1).is_some());
    let mut allowed = over_limit(Duration::ZERO);
    allowed.allowed = true;
    allowed.reason = None;
    cache.record("k", 1, cache.now(), &allowed);
    assert!(cache.lookup("lim", "k", 1).is_none());

    let mut fail_closed = over_limit(Duration::from_secs(60));
    fail_closed.source = Source::FailClosed;
    cache.record("k", 1, cache.now(), &fail_closed);
    assert!(cache.lookup("lim", "k", 1).is_none());
    // A cost that can never pass has no reset to wait for: not cached.
    let mut never = over_limit(Duration::from_secs(60));
    never.retry_after = None;
    never.reason = Some(DenyReason::CostExceedsLimit);
    cache.record("k", 1, cache.now(), &never);
    assert!(cache.lookup("lim", "k", 1).is_none());
}

#[test]
fn memory_is_bounded_and_the_soonest_expiry_is_evicted_first() {
    let clock = ManualClock::new();
    let cache = DenyCache::new(100, Arc::new(clock.clone()));
    for i in 0..10_000u64 {
        let key = format!("k{i}");
        cache.record(
            &key,
            1,
            cache.now(),
            &over_limit(Duration::from_secs(10 + i)),
        );
    }
    let stats = cache.stats();
    assert_eq!(stats.entries, 100);
    assert_eq!(stats.evictions, 9_900);
    // The survivors are the longest-lived entries.
    assert!(cache.lookup("lim", "k9999", 1).is_some());
    assert!(cache.lookup("lim", "k0", 1).is_none());
    // Expired entries make room without counting as evictions.
    clock.advance(Duration::from_secs(100_000));
    cache.record("fresh", 1, cache.now(), &over_limit(Duration::from_secs(1)));
    assert_eq!(cache.stats().evictions, 9_900);
}
