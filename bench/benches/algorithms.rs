//! Criterion micro-benchmarks: nanoseconds per rate-limit decision.
//!
//! Two groups, each measured together with `governor` (GCRA on an `AtomicU64`, the
//! reference Rust limiter) in the same run:
//! - `one_key`: every algorithm's bare state on one key, and governor's direct limiter;
//! - `keyed_100k`: decisions spread round-robin over 100 000 warm keys through
//!   [`CounterStore::check`] (string keys), and governor's keyed limiter with `u64` keys
//!   (the figure the brief quotes) and with `String` keys (like for like).
//!
//! Limits are large so that decisions are allowed: this measures the normal path. Our
//! `now` is an argument that advances by a fixed step per decision (the server reads its
//! clock once per request, outside this code); governor reads its quanta clock inside
//! each decision, which costs it a few nanoseconds.
//!
//! Not promised: multi-threaded contention (2-core machine) or denial-path costs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use quorate_algorithms::{
    Algorithm, CounterState, CounterStore, Nanos, Rate, SlidingLog, TokenBucket, SECOND,
};

const KEYS: usize = 100_000;

/// A rate for `algorithm` that one key hit every `step` ns never exceeds.
fn generous_rate(algorithm: Algorithm) -> (Rate, Nanos) {
    match algorithm {
        // The log keeps one entry per hit: 10 000 per second, one hit per 100 µs, keeps
        // it at its steady-state size (10 000 entries) with every hit allowed.
        Algorithm::SlidingLog => (Rate::new(algorithm, 10_000, SECOND, None).unwrap(), 100_000),
        // One token per ns, one hit per ns: the bucket neither fills nor empties.
        Algorithm::TokenBucket => (
            Rate::new(algorithm, SECOND, SECOND, Some(1_000_000)).unwrap(),
            1,
        ),
        _ => (Rate::new(algorithm, u64::MAX / 2, SECOND, None).unwrap(), 1),
    }
}

/// A rate for `algorithm` whose keys, each hit once per `KEYS · step` ns, stay allowed.
fn keyed_rate(algorithm: Algorithm) -> (Rate, Nanos) {
    match algorithm {
        // 10 per second per key, one hit per key every 100 ms: ≤ 10 entries per key.
        Algorithm::SlidingLog => (Rate::new(algorithm, 10, SECOND, None).unwrap(), 1_000),
        _ => generous_rate(algorithm),
    }
}

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
        .allow_burst(NonZeroU32::new(1_000_000).unwrap())
}

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
    Algorithm::TokenBucket,
];

fn one_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_key");
    for algorithm in ALGORITHMS {
        let (rate, step) = generous_rate(algorithm);
        let mut state = CounterState::new(&rate);
        let mut now: Nanos = 0;
        // Warm up to steady state (the sliding log fills to its limit) and check that the
        // measured path is the allowed one.
        for _ in 0..20_000 {
            now += step;
            assert!(state.check(&rate, now, 1).allowed, "{algorithm:?}");
        }
        group.bench_function(format!("quorate/{}", algorithm.as_str()), |b| {
            b.iter(|| {
                now += step;
                black_box(state.check(black_box(&rate), now, 1))
            })
        });
    }
    // The concrete types, without the `CounterState` dispatch.
    let (rate, step) = generous_rate(Algorithm::TokenBucket);
    let mut bucket = TokenBucket::default();
    let mut now: Nanos = 0;
    group.bench_function("quorate/token_bucket_bare", |b| {
        b.iter(|| {
            now += step;
            black_box(bucket.check(black_box(&rate), now, 1))
        })
    });
    let (rate, step) = generous_rate(Algorithm::SlidingLog);
    let mut log = SlidingLog::default();
    let mut now: Nanos = 0;
    group.bench_function("quorate/sliding_log_bare", |b| {
        b.iter(|| {
            now += step;
            black_box(log.check(black_box(&rate), now, 1))
        })
    });

    let governor = RateLimiter::direct(governor_quota());
    group.bench_function("governor/direct", |b| {
        b.iter(|| black_box(governor.check()))
    });
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_100k");
    let keys: Vec<String> = (0..KEYS).map(|i| format!("tenant:{i:06}")).collect();

    for algorithm in ALGORITHMS {
        let (rate, step) = keyed_rate(algorithm);
        let store = CounterStore::new(KEYS);
        let mut now: Nanos = 0;
        for key in &keys {
            now += step;
            assert!(store.check(key, &rate, now, 1).allowed, "{algorithm:?}");
        }
        let mut next = 0;
        group.bench_function(format!("quorate/{}", algorithm.as_str()), |b| {
            b.iter(|| {
                now += step;
                next = if next + 1 == KEYS { 0 } else { next + 1 };
                black_box(store.check(&keys[next], black_box(&rate), now, 1))
            })
        });
    }

    let by_number = RateLimiter::keyed(governor_quota());
    for key in 0..KEYS as u64 {
        assert!(by_number.check_key(&key).is_ok());
    }
    let mut next = 0u64;
    group.bench_function("governor/keyed_u64", |b| {
        b.iter(|| {
            next = if next + 1 == KEYS as u64 { 0 } else { next + 1 };
            black_box(by_number.check_key(&next))
        })
    });

    let by_string = RateLimiter::keyed(governor_quota());
    for key in &keys {
        assert!(by_string.check_key(key).is_ok());
    }
    let mut next = 0;
    group.bench_function("governor/keyed_string", |b| {
        b.iter(|| {
            next = if next + 1 == KEYS { 0 } else { next + 1 };
            black_box(by_string.check_key(&keys[next]))
        })
    });
    group.finish();
}

criterion_group!(benches, one_key, keyed);
criterion_main!(benches);
