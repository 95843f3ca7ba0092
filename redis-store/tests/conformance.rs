//! Conformance: the same hits, at the same instants, give the same decisions from the
//! in-memory `CounterStore` and from Redis (`decide.lua` against a real `redis-server`).
//!
//! Random hit sequences over every algorithm (and sliding-window precisions 1 to 20),
//! costs including 0, the limit, just above it and `u64::MAX`, time that steps forward,
//! stands still, jumps over windows and runs backwards, several keys per limit, and key
//! caps that refuse or evict. Instants are real ones (around 2026, about 1.8e18 ns), where
//! Lua's doubles would round: the script must not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use quorate_algorithms::{counter_key, Algorithm, CounterStore, KeyCap, OnFull, Rate};
use quorate_redis::test_support::RedisServer;
use quorate_redis::{RedisHit, RedisSettings, RedisStore, StoreUrl};

const MS: u64 = 1_000_000;
/// 2026-01-01T00:00:00Z in ns, plus an odd offset so no instant is round.
const BASE: u64 = 1_767_225_600_000_000_000 + 123_456_789;

#[derive(Debug, Clone)]
struct Case {
    rate: Rate,
    cap: KeyCap,
    /// Per step: time delta (may be negative), then the hits (key index, cost) at that instant.
    steps: Vec<(i64, Vec<(u8, u64)>)>,
}

fn rate() -> impl Strategy<Value = Rate> {
    let limit = prop_oneof![1u64..=12, Just(70_000u64)];
    (
        0u8..4,
        limit,
        1u64..=10,
        prop_oneof![Just(1u64), Just(2), Just(5), Just(20)],
        1u64..=30,
    )
        .prop_map(|(algorithm, limit, window_ms, precision, burst)| {
            let window = window_ms * MS;
            match algorithm {
                0 => Rate::new(Algorithm::FixedWindow, limit, window, None),
                1 => Rate::with_precision(
                    Algorithm::SlidingWindow,
                    limit,
                    window,
                    None,
                    Some(precision),
                ),
                2 => Rate::new(Algorithm::SlidingLog, limit.min(10_000), window, None),
                _ => Rate::new(Algorithm::TokenBucket, limit, window, Some(burst)),
            }
            .expect("valid rate")
        })
}

fn cap() -> impl Strategy<Value = KeyCap> {
    prop_oneof![
        2 => Just(KeyCap::NONE),
        1 => (0usize..=2, any::<bool>()).prop_map(|(max_keys, evict)| KeyCap {
            max_keys,
            on_full: if evict { OnFull::EvictIdlest } else { OnFull::Refuse },
        }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (rate(), cap()).prop_flat_map(|(rate, cap)| {
        let window = i64::try_from(rate.window()).unwrap_or(i64::MAX);
        let delta = prop_oneof![
            3 => 0..window / 3,
            1 => Just(0i64),
            1 => window..3 * window,
            1 => -window / 2..0,
            1 => (0i64..4).prop_map(move |k| k * window / 4), // slot and window edges
        ];
        let cost = prop_oneof![
            6 => Just(1u64),
            2 => 0u64..=3,
            1 => Just(rate.capacity()),
            1 => Just(rate.capacity() + 1),
            1 => Just(u64::MAX),
        ];
        let hits = prop::collection::vec((0u8..3, cost), 1..=3);
        prop::collection::vec((delta, hits), 1..40).prop_map(move |steps| Case { rate, cap, steps })
    })
}

fn run(
    case: &Case,
    store: &RedisStore,
    runtime: &tokio::runtime::Runtime,
) -> Result<(), TestCaseError> {
    let memory = CounterStore::new(usize::MAX);
    let mut now = BASE;
    for (step, (delta, hits)) in case.steps.iter().enumerate() {
        now = now.saturating_add_signed(*delta);
        let keys: Vec<String> = hits.iter().map(|(k, _)| format!("user-{k}")).collect();
        let batch: Vec<RedisHit<'_>> = hits
            .iter()
            .zip(&keys)
            .map(|((_, cost), key)| RedisHit {
                limit: "api",
                key,
                rate: case.rate,
                cap: case.cap,
                cost: *cost,
            })
            .collect();
        let remote = runtime
            .block_on(store.check(&batch, now))
            .map_err(|e| TestCaseError::fail(format!("redis: {e}")))?;
        for ((hit, key), remote) in batch.iter().zip(&keys).zip(remote) {
            let local = memory.check_capped(
                &counter_key("api", key),
                case.cap,
                &case.rate,
                now,
                hit.cost,
            );
            prop_assert_eq!(
                remote,
                local,
                "step {} at +{} ns, key {}, cost {}",
                step,
                now - BASE,
                key,
                hit.cost
            );
        }
    }
    Ok(())
}

#[test]
fn redis_decides_exactly_like_memory() {
    let redis = RedisServer::start().expect("redis-server (Debian package redis-server) starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicU64::new(0);
    let result = runner.run(&case(), |case| {
        let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A fresh key prefix per case: no case sees another's counters.
        let settings = RedisSettings {
            key_prefix: format!("conformance:{n}:"),
            timeout: Duration::from_secs(5),
            ..RedisSettings::default()
        };
        let store =
            RedisStore::new(StoreUrl::parse(&redis.url()).expect("url"), settings).expect("store");
        run(&case, &store, &runtime)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Rates the script cannot compute exactly are refused up front, not decided wrongly.
#[test]
fn rates_outside_the_exact_range_are_refused() {
    let too_long = Rate::new(Algorithm::FixedWindow, 10, (1 << 52) + 1, None).expect("rate");
    assert!(RedisStore::supports(&too_long).is_err());
    let too_fine = Rate::new(Algorithm::FixedWindow, 10, 1_000, None).expect("rate");
    assert!(RedisStore::supports(&too_fine).is_err());
    let slow_refill = Rate::new(Algorithm::TokenBucket, 1, 1 << 40, Some(1 << 20)).expect("rate");
    assert!(RedisStore::supports(&slow_refill).is_err());
    let ok = Rate::new(Algorithm::TokenBucket, 100, 60_000 * MS, Some(200)).expect("rate");
    assert!(RedisStore::supports(&ok).is_ok());
}
