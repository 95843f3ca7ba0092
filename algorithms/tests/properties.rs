//! Property tests: every promise the algorithm and store docs make, checked on random
//! sequences of `(now, cost)`.
//!
//! Windows and limits are kept small so that windows roll, buckets drain and quotas run
//! out within a short sequence; case counts are modest so the suite stays fast in debug.
//! Time in a sequence may step backwards; bounds are then checked against each allowed
//! hit's *effective* instant, the latest consumption instant so far, which is what the
//! algorithms promise to clamp to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use quorate_algorithms::{
    Algorithm, CounterState, CounterStore, Decision, DenyReason, Nanos, Rate, SlidingLog,
    SlidingSlots, SlidingWindow, MAX_SLIDING_PRECISION,
};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
    Algorithm::TokenBucket,
];

/// Modest case counts keep the suite well under a second in debug. Failure persistence
/// is off: proptest cannot locate a source root for files under `tests/`.
fn config() -> ProptestConfig {
    cases(256)
}

fn cases(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn rate_for(algorithm: Algorithm) -> impl Strategy<Value = Rate> {
    (1u64..=12, 1u64..=200, 1u64..=15).prop_map(move |(limit, window, burst)| {
        let burst = (algorithm == Algorithm::TokenBucket).then_some(burst);
        Rate::new(algorithm, limit, window, burst).unwrap()
    })
}

/// A sliding window with precision N > 1: `N` slots of 1 to 40 ns each.
fn slots_rate() -> impl Strategy<Value = Rate> {
    (
        1u64..=12,
        prop::sample::select(vec![2u64, 3, 4, 5, 8, 10]),
        1u64..=40,
    )
        .prop_map(|(limit, precision, slot)| {
            Rate::with_precision(
                Algorithm::SlidingWindow,
                limit,
                precision * slot,
                None,
                Some(precision),
            )
            .unwrap()
        })
}

/// Every algorithm, the sliding window at precision 1 (two counters) and above.
fn any_rate() -> impl Strategy<Value = Rate> {
    prop_oneof![
        4 => prop::sample::select(ALGORITHMS.to_vec()).prop_flat_map(rate_for),
        1 => slots_rate(),
    ]
}

/// A start instant and steps `(dt, cost)`; `dt` may be negative (time going backwards).
fn steps(backwards: bool) -> impl Strategy<Value = (Nanos, Vec<(i64, u64)>)> {
    let min_dt = if backwards { -150 } else { 0 };
    (
        0u64..10_000,
        prop::collection::vec((min_dt..=60i64, 0u64..=16), 1..160),
    )
}

/// Bursty traffic: runs of hits a few ns apart, separated by gaps of up to two windows;
/// time may step back inside a burst.
fn bursty_steps() -> impl Strategy<Value = (Nanos, Vec<(i64, u64)>)> {
    (
        0u64..10_000,
        prop::collection::vec(
            prop_oneof![
                6 => (-3i64..=3, 1u64..=3),
                1 => (20i64..=400, 1u64..=4),
            ],
            1..200,
        ),
    )
}

/// The instants of a step sequence (never below zero).
fn instants(start: Nanos, steps: &[(i64, u64)]) -> Vec<(Nanos, u64)> {
    let mut now = start;
    steps
        .iter()
        .map(|&(dt, cost)| {
            now = now.saturating_add_signed(dt);
            (now, cost)
        })
        .collect()
}

/// One allowed hit at its effective instant.
#[derive(Debug, Clone, Copy)]
struct Hit {
    at: Nanos,
    cost: u64,
}

/// Runs `hits` through a fresh counter; returns every decision and the allowed hits at
/// their effective instants.
fn run(rate: &Rate, hits: &[(Nanos, u64)]) -> (Vec<Decision>, Vec<Hit>) {
    let mut state = CounterState::new(rate);
    let mut decisions = Vec::new();
    let mut allowed = Vec::new();
    let mut latest_consumption = 0;
    for &(now, cost) in hits {
        let decision = state.check(rate, now, cost);
        if decision.allowed && cost > 0 {
            latest_consumption = latest_consumption.max(now);
            allowed.push(Hit {
                at: latest_consumption,
                cost,
            });
        }
        decisions.push(decision);
    }
    (decisions, allowed)
}

/// Cost of allowed hits in `(hits[j].at − window, hits[j].at]`, for every `j`.
fn sliding_sums(hits: &[Hit], window: Nanos) -> Vec<u128> {
    (0..hits.len())
        .map(|j| {
            hits[..=j]
                .iter()
                .filter(|h| hits[j].at - h.at < window)
                .map(|h| u128::from(h.cost))
                .sum()
        })
        .collect()
}

// === Rate bounds, one per algorithm ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sliding_log_never_exceeds_limit_in_any_window(
        rate in rate_for(Algorithm::SlidingLog),
        (start, steps) in steps(true),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        for sum in sliding_sums(&allowed, rate.window) {
            prop_assert!(sum <= u128::from(rate.limit), "{sum} > {}", rate.limit);
        }
    }

    #[test]
    fn fixed_window_never_exceeds_limit_per_window(
        rate in rate_for(Algorithm::FixedWindow),
        (start, steps) in steps(true),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        let mut per_window = std::collections::BTreeMap::<u64, u64>::new();
        for hit in allowed {
            *per_window.entry(hit.at / rate.window).or_default() += hit.cost;
        }
        for (window, sum) in per_window {
            prop_assert!(sum <= rate.limit, "window {window}: {sum} > {}", rate.limit);
        }
    }

    #[test]
    fn token_bucket_never_exceeds_burst_plus_rate_times_interval(
        rate in rate_for(Algorithm::TokenBucket),
        (start, steps) in steps(true),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        for i in 0..allowed.len() {
            let mut sum = 0u128;
            for j in i..allowed.len() {
                sum += u128::from(allowed[j].cost);
                let interval = u128::from(allowed[j].at - allowed[i].at);
                // sum ≤ burst + limit · interval / window, multiplied out by window.
                let bound = u128::from(rate.burst) * u128::from(rate.window)
                    + u128::from(rate.limit) * interval;
                prop_assert!(sum * u128::from(rate.window) <= bound);
            }
        }
    }

    /// The documented corollary: at most `2·limit` in any interval of length `window`.
    #[test]
    fn sliding_window_never_exceeds_twice_the_limit(
        rate in rate_for(Algorithm::SlidingWindow),
        (start, steps) in steps(true),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        for sum in sliding_sums(&allowed, rate.window) {
            prop_assert!(sum <= 2 * u128::from(rate.limit), "{sum} > 2·{}", rate.limit);
        }
    }

    /// The documented bounds between the estimate and the exact count, at every hit:
    /// over-admission ≤ ⌈previous·elapsed/window⌉, under-admission ≤ ⌊previous·(window −
    /// elapsed)/window⌋.
    #[test]
    fn sliding_window_error_against_exact_log_is_bounded(
        rate in rate_for(Algorithm::SlidingWindow),
        (start, steps) in steps(false),
    ) {
        let window = u128::from(rate.window);
        let limit = u128::from(rate.limit);
        let mut state = SlidingWindow::default();
        let mut log: Vec<Hit> = Vec::new();
        for (now, cost) in instants(start, &steps) {
            // A probe rolls the windows forward to `now` without touching `state`.
            let mut probe = state.clone();
            probe.force(&rate, now, 1);
            let previous = u128::from(probe.previous());
            let elapsed = u128::from(now - probe.window_start());
            let exact_before: u128 = log
                .iter()
                .filter(|h| now - h.at < rate.window)
                .map(|h| u128::from(h.cost))
                .sum();
            let decision = state.check(&rate, now, cost);
            if cost == 0 || cost > rate.limit {
                continue;
            }
            if decision.allowed {
                log.push(Hit { at: now, cost });
                // estimate + cost ≤ limit, and exact − estimate ≤ ⌈previous·elapsed/window⌉.
                let exact = exact_before + u128::from(cost);
                prop_assert!(exact <= limit + (previous * elapsed).div_ceil(window));
            } else {
                // estimate + cost > limit, and estimate − exact ≤ ⌊previous·(w−e)/w⌋.
                let weighted = previous * (window - elapsed) / window;
                prop_assert!(exact_before + weighted + u128::from(cost) > limit);
            }
        }
    }
}

/// On steady traffic the two-counter estimate passes as much as the exact log. Offered load
/// is 0.9×, 1.05×, 1.5×, 3× the limit, evenly spaced, over 200 windows.
#[test]
fn sliding_window_matches_sliding_log_on_uniform_traffic() {
    let window = 1_000_000_000;
    for (limit, spacing) in [
        (100, 11_111_111),
        (100, 9_523_810),
        (100, 6_666_667),
        (100, 3_333_333),
        (1_000, 333_333),
    ] {
        let sw_rate = Rate::new(Algorithm::SlidingWindow, limit, window, None).unwrap();
        let sl_rate = Rate::new(Algorithm::SlidingLog, limit, window, None).unwrap();
        let (mut sw, mut sl) = (SlidingWindow::default(), SlidingLog::default());
        let (mut sw_allowed, mut sl_allowed, mut disagreements, mut requests) = (0u64, 0, 0, 0);
        let mut now = 0;
        while now < 200 * window {
            let a = sw.check(&sw_rate, now, 1).allowed;
            let b = sl.check(&sl_rate, now, 1).allowed;
            sw_allowed += u64::from(a);
            sl_allowed += u64::from(b);
            disagreements += u64::from(a != b);
            requests += 1;
            now += spacing;
        }
        let total_gap = sw_allowed.abs_diff(sl_allowed) as f64 / sl_allowed as f64;
        let disagreement_rate = disagreements as f64 / requests as f64;
        println!(
            "limit {limit}, spacing {spacing} ns: allowed sw {sw_allowed} vs log {sl_allowed} \
             ({:.3} %), decisions differ on {:.3} % of {requests}",
            100.0 * total_gap,
            100.0 * disagreement_rate
        );
        // Both pass `limit` per window under steady overload.
        assert!(
            sw_allowed.abs_diff(sl_allowed) <= 2,
            "{sw_allowed} vs {sl_allowed}"
        );
    }
}

// === Sliding window with precision N > 1 ===

/// Checks the documented bound at every allowed hit: the true window `(t − W, t]` holds at
/// most `limit + ⌈c·e/L⌉ ≤ limit + c`, `c` being the cost of the slot that straddles its
/// start and `e` how far `t` is into its own slot. Slots are read from the exact log of
/// allowed hits at their effective instants.
fn check_slot_bound(rate: &Rate, allowed: &[Hit]) -> Result<(), TestCaseError> {
    let n = u64::from(rate.precision);
    let slot = rate.window / n;
    let limit = u128::from(rate.limit);
    for (j, sum) in sliding_sums(allowed, rate.window).into_iter().enumerate() {
        let t = allowed[j].at;
        let straddling = (t / slot).checked_sub(n);
        let c: u128 = allowed[..=j]
            .iter()
            .filter(|h| Some(h.at / slot) == straddling)
            .map(|h| u128::from(h.cost))
            .sum();
        let e = u128::from(t % slot);
        let tight = limit + (c * e).div_ceil(u128::from(slot));
        prop_assert!(
            sum <= tight,
            "window ending {t}: {sum} > {limit} + ⌈{c}·{e}/{slot}⌉"
        );
        prop_assert!(sum <= limit + c);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sliding_slots_exceed_the_limit_by_at_most_one_slot(
        rate in slots_rate(),
        (start, steps) in steps(true),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        check_slot_bound(&rate, &allowed)?;
    }

    #[test]
    fn sliding_slots_bound_holds_on_bursty_traffic(
        rate in slots_rate(),
        (start, steps) in bursty_steps(),
    ) {
        let (_, allowed) = run(&rate, &instants(start, &steps));
        check_slot_bound(&rate, &allowed)?;
    }

    /// The other direction: a denial means the exact count plus the straddling slot's
    /// weighted share leaves no room, so the counter denies at most what that share hides.
    #[test]
    fn sliding_slots_deny_only_what_the_straddling_share_explains(
        rate in slots_rate(),
        (start, steps) in bursty_steps(),
    ) {
        let n = u64::from(rate.precision);
        let slot = rate.window / n;
        let mut state = CounterState::new(&rate);
        let mut log: Vec<Hit> = Vec::new();
        let mut latest = 0;
        for (now, cost) in instants(start, &steps) {
            let decision = state.check(&rate, now, cost);
            if cost == 0 || cost > rate.limit {
                continue;
            }
            // The instant the counter decided at: clamped to its newest slot.
            let t = now.max(latest - latest % slot);
            if decision.allowed {
                latest = latest.max(now);
                log.push(Hit { at: latest, cost });
                continue;
            }
            let exact: u128 = log
                .iter()
                .filter(|h| h.at + rate.window > t.max(latest))
                .map(|h| u128::from(h.cost))
                .sum();
            let straddling = (t / slot).checked_sub(n);
            let c: u128 = log
                .iter()
                .filter(|h| Some(h.at / slot) == straddling)
                .map(|h| u128::from(h.cost))
                .sum();
            let share = c * u128::from(slot - t % slot) / u128::from(slot);
            prop_assert!(exact + share + u128::from(cost) > u128::from(rate.limit));
        }
    }

    /// Precision 1 through the sub-window code is the two-counter form, decision for
    /// decision; and a policy's `precision: 1` runs the two-counter state itself.
    #[test]
    fn precision_one_is_the_two_counter_form(
        limit in 1u64..=12,
        window in 1u64..=200,
        (start, steps) in steps(true),
    ) {
        let one = Rate::with_precision(Algorithm::SlidingWindow, limit, window, None, Some(1))
            .unwrap();
        prop_assert_eq!(one, Rate::new(Algorithm::SlidingWindow, limit, window, None).unwrap());
        let mut pair = CounterState::new(&one);
        prop_assert!(matches!(pair, CounterState::SlidingWindow(_)));
        let mut slots = SlidingSlots::default();
        for (now, cost) in instants(start, &steps) {
            prop_assert_eq!(pair.check(&one, now, cost), slots.check(&one, now, cost));
        }
    }
}

/// On evenly spaced traffic at 0.9× to 3× the limit, every precision admits what the exact
/// log admits: both pass `limit` per window under steady overload.
#[test]
fn sliding_slots_match_sliding_log_on_uniform_traffic() {
    // 1.2 s: every precision measured divides it. Spacings are ⌈window / k⌉ for k = 90,
    // 105, 150, 300 (and 3 000): with a spacing a little short of that, the log would wait
    // one extra arrival per cycle for its oldest entry to expire, and fall below `limit`
    // per window for reasons of its own discreteness.
    let window = 1_200_000_000;
    for precision in [2, 4, 10, 20, 60] {
        for (limit, spacing) in [
            (100, 13_333_334),
            (100, 11_428_572),
            (100, 8_000_000),
            (100, 4_000_000),
            (1_000, 400_000),
        ] {
            let slots_rate = Rate::with_precision(
                Algorithm::SlidingWindow,
                limit,
                window,
                None,
                Some(precision),
            )
            .unwrap();
            let log_rate = Rate::new(Algorithm::SlidingLog, limit, window, None).unwrap();
            let (mut slots, mut log) = (CounterState::new(&slots_rate), SlidingLog::default());
            let (mut slots_allowed, mut log_allowed) = (0u64, 0u64);
            let mut now = 0;
            while now < 200 * window {
                slots_allowed += u64::from(slots.check(&slots_rate, now, 1).allowed);
                log_allowed += u64::from(log.check(&log_rate, now, 1).allowed);
                now += spacing;
            }
            println!(
                "precision {precision}, limit {limit}, spacing {spacing} ns: \
                 allowed {slots_allowed} vs log {log_allowed}"
            );
            assert_eq!(slots_allowed, log_allowed, "precision {precision}");
        }
    }
}

#[test]
fn precision_is_validated() {
    let sw = Algorithm::SlidingWindow;
    assert!(Rate::with_precision(sw, 10, 60, None, Some(0)).is_err());
    assert!(Rate::with_precision(sw, 10, 61, None, Some(60)).is_err());
    let max = u64::from(MAX_SLIDING_PRECISION);
    assert!(Rate::with_precision(sw, 10, 60 * max, None, Some(max)).is_ok());
    assert!(Rate::with_precision(sw, 10, 60 * (max + 1), None, Some(max + 1)).is_err());
    assert!(Rate::with_precision(Algorithm::FixedWindow, 10, 60, None, Some(2)).is_err());
    assert_eq!(
        Rate::with_precision(sw, 10, 60, None, None)
            .unwrap()
            .precision,
        1
    );
}

// === Consistency of the numbers a decision reports ===

proptest! {
    #![proptest_config(config())]

    /// `cost ≤ remaining` passes; a denial retried after `retry_after` passes, and not
    /// one nanosecond earlier; a cost above the capacity is refused with no retry.
    #[test]
    fn remaining_and_retry_after_are_consistent(
        rate in any_rate(),
        (start, steps) in steps(true),
    ) {
        let mut state = CounterState::new(&rate);
        for (now, cost) in instants(start, &steps) {
            let peek = state.clone().check(&rate, now, 0);
            prop_assert!(peek.allowed);
            prop_assert_eq!(peek.limit, rate.capacity());
            let before = state.clone();
            let decision = state.check(&rate, now, cost);
            prop_assert_eq!(decision.allowed, cost <= peek.remaining);
            if decision.allowed {
                // Exactly what a peek now reports. The token bucket may report one less
                // than `before − cost`: its stored debt rounds up to whole nanoseconds.
                prop_assert_eq!(decision.remaining, state.clone().check(&rate, now, 0).remaining);
                prop_assert!(decision.remaining <= peek.remaining - cost);
                if rate.algorithm != Algorithm::TokenBucket {
                    prop_assert_eq!(decision.remaining, peek.remaining - cost);
                }
                prop_assert!(decision.retry_after.is_none() && decision.denied.is_none());
                if cost > 0 {
                    // After consuming, the counter is full again exactly `reset_after` later.
                    let at_reset = now + decision.reset_after;
                    prop_assert_eq!(
                        state.clone().check(&rate, at_reset, 0).remaining,
                        rate.capacity()
                    );
                }
                continue;
            }
            prop_assert_eq!(&state, &before, "a denial changed the state");
            if cost > rate.capacity() {
                prop_assert_eq!(decision.denied, Some(DenyReason::CostExceedsLimit));
                prop_assert_eq!(decision.retry_after, None);
                continue;
            }
            prop_assert_eq!(decision.denied, Some(DenyReason::OverLimit));
            let retry = decision.retry_after.unwrap();
            prop_assert!(retry > 0);
            prop_assert!(state.clone().check(&rate, now + retry, cost).allowed);
            prop_assert!(!state.clone().check(&rate, now + retry - 1, cost).allowed);
        }
    }

    /// A peek never changes the state.
    #[test]
    fn peeks_change_nothing(rate in any_rate(), (start, steps) in steps(true)) {
        let mut state = CounterState::new(&rate);
        for (now, cost) in instants(start, &steps) {
            let before = state.clone();
            state.check(&rate, now, 0);
            prop_assert_eq!(&state, &before);
            state.check(&rate, now, cost);
        }
    }
}

// === Determinism, replay and snapshots ===

proptest! {
    #![proptest_config(config())]

    #[test]
    fn same_sequence_same_decisions(rate in any_rate(), (start, steps) in steps(true)) {
        let hits = instants(start, &steps);
        prop_assert_eq!(run(&rate, &hits).0, run(&rate, &hits).0);
    }

    /// Serializing with postcard and continuing from the copy changes nothing.
    #[test]
    fn snapshot_mid_sequence_changes_nothing(
        rate in any_rate(),
        (start, steps) in steps(true),
        cut in any::<prop::sample::Index>(),
    ) {
        let hits = instants(start, &steps);
        let cut = cut.index(hits.len());
        let mut original = CounterState::new(&rate);
        for &(now, cost) in &hits[..cut] {
            original.check(&rate, now, cost);
        }
        let bytes = postcard::to_stdvec(&original).unwrap();
        let mut restored: CounterState = postcard::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&restored, &original);
        for &(now, cost) in &hits[cut..] {
            prop_assert_eq!(original.check(&rate, now, cost), restored.check(&rate, now, cost));
        }
        prop_assert_eq!(original, restored);
    }

    /// A follower that replays only the leader's allowed hits through `force` holds the
    /// leader's state after every step.
    #[test]
    fn force_replay_matches_leader(rate in any_rate(), (start, steps) in steps(true)) {
        let mut leader = CounterState::new(&rate);
        let mut follower = CounterState::new(&rate);
        for (now, cost) in instants(start, &steps) {
            if leader.check(&rate, now, cost).allowed {
                follower.force(&rate, now, cost);
            }
            prop_assert_eq!(&follower, &leader);
            prop_assert_eq!(follower.idle_at(&rate), leader.idle_at(&rate));
        }
    }

    /// From `idle_at` on, the state answers exactly like a fresh one.
    #[test]
    fn idle_state_behaves_like_fresh(
        rate in any_rate(),
        (start, steps) in steps(true),
        probes in prop::collection::vec((0u64..400, 0u64..=16), 1..20),
    ) {
        let mut state = CounterState::new(&rate);
        for (now, cost) in instants(start, &steps) {
            state.check(&rate, now, cost);
        }
        let mut fresh = CounterState::new(&rate);
        let mut now = state.idle_at(&rate);
        for (dt, cost) in probes {
            now += dt;
            prop_assert_eq!(state.check(&rate, now, cost), fresh.check(&rate, now, cost));
        }
    }
}

// === Backwards time and hostile numbers ===

fn hostile_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(u64::MAX / 2),
        0u64..1_000,
        any::<u64>(),
    ]
}

/// Any rate, even one [`Rate::new`] would refuse (zero limit or window, huge burst).
fn hostile_rate() -> impl Strategy<Value = Rate> {
    (
        prop::sample::select(ALGORITHMS.to_vec()),
        hostile_u64(),
        hostile_u64(),
        hostile_u64(),
        prop_oneof![Just(0u16), Just(1), Just(2), Just(u16::MAX), any::<u16>()],
    )
        .prop_map(|(algorithm, limit, window, burst, precision)| Rate {
            algorithm,
            limit,
            window,
            burst,
            precision,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn hostile_inputs_never_panic(
        rate in hostile_rate(),
        calls in prop::collection::vec((hostile_u64(), hostile_u64(), any::<bool>()), 1..40),
    ) {
        let mut state = CounterState::new(&rate);
        let store = CounterStore::new(4);
        for (now, cost, forced) in calls {
            if forced {
                state.force(&rate, now, cost);
                let _ = store.force("k", &rate, now, cost);
            } else {
                state.check(&rate, now, cost);
                store.check("k", &rate, now, cost);
            }
            state.idle_at(&rate);
            store.expire(now);
        }
        let bytes = postcard::to_stdvec(&state).unwrap();
        let _: CounterState = postcard::from_bytes(&bytes).unwrap();
    }

    /// An earlier `now` never does better than the latest instant: whatever passes at
    /// `now − back` passes at `now`, with at least as much left.
    #[test]
    fn earlier_time_never_grants_more(
        rate in any_rate(),
        (start, steps) in steps(false),
        back in 1u64..500,
        cost in 0u64..=16,
    ) {
        let hits = instants(start, &steps);
        let mut state = CounterState::new(&rate);
        for &(now, cost) in &hits {
            state.check(&rate, now, cost);
        }
        let latest = hits.last().unwrap().0;
        let earlier = state.clone().check(&rate, latest.saturating_sub(back), cost);
        let later = state.clone().check(&rate, latest, cost);
        prop_assert!(!earlier.allowed || later.allowed);
        let peek_earlier = state.clone().check(&rate, latest.saturating_sub(back), 0);
        let peek_later = state.clone().check(&rate, latest, 0);
        prop_assert!(peek_earlier.remaining <= peek_later.remaining);
    }
}

// === The store ===

fn store_rate() -> Rate {
    Rate::new(Algorithm::TokenBucket, 5, 100, Some(5)).unwrap()
}

proptest! {
    #![proptest_config(cases(64))]

    /// Under a flood of new keys the store never holds more than `max_keys`, and refuses a
    /// new key exactly when it is full of keys that are not yet idle.
    #[test]
    fn store_cap_holds_under_a_flood(
        max_keys in 0usize..20,
        flood in prop::collection::vec((0u64..50, 0u64..=6, 0u8..40), 1..300),
    ) {
        let rate = store_rate();
        let store = CounterStore::new(max_keys);
        let mut now = 0;
        for (dt, cost, key) in flood {
            now += dt;
            let key = format!("key-{key}");
            let known = store.get(&key).is_some();
            let idle_keys = store
                .export()
                .iter()
                .filter(|(_, c)| c.idle_at <= now)
                .count();
            let full = store.len() - idle_keys >= max_keys;
            let decision = store.check(&key, &rate, now, cost);
            prop_assert!(store.len() <= max_keys);
            let refused = decision.denied == Some(DenyReason::StoreFull);
            let needs_slot = !known && cost > 0 && cost <= rate.burst;
            prop_assert_eq!(refused, needs_slot && full);
            if refused {
                prop_assert!(store.get(&key).is_none());
                prop_assert_eq!(decision.retry_after, None);
            }
        }
    }

    /// The store answers like a bare counter per key, and export → postcard → import in
    /// the middle of a sequence changes no decision.
    #[test]
    fn store_matches_counters_and_survives_snapshots(
        rate in any_rate(),
        calls in prop::collection::vec((0u64..60, 0u64..=16, 0u8..4, any::<bool>()), 1..200),
        cut in any::<prop::sample::Index>(),
    ) {
        let cut = cut.index(calls.len());
        let mut store = CounterStore::new(usize::MAX);
        let mut bare: Vec<CounterState> = vec![CounterState::new(&rate); 4];
        let mut now = 0;
        for (i, (dt, cost, key, forced)) in calls.into_iter().enumerate() {
            if i == cut {
                let bytes = postcard::to_stdvec(&store.export()).unwrap();
                let snapshot = postcard::from_bytes(&bytes).unwrap();
                store = CounterStore::import(snapshot, usize::MAX);
            }
            now += dt;
            let name = format!("k{key}");
            if forced {
                store.force(&name, &rate, now, cost).unwrap();
                bare[usize::from(key)].force(&rate, now, cost);
            } else {
                prop_assert_eq!(
                    store.check(&name, &rate, now, cost),
                    bare[usize::from(key)].check(&rate, now, cost)
                );
            }
            store.expire(now);
        }
        for (key, counter) in store.export() {
            let index: usize = key[1..].parse().unwrap();
            prop_assert_eq!(&counter.state, &bare[index]);
            prop_assert_eq!(counter.idle_at, bare[index].idle_at(&rate));
        }
    }
}

#[test]
fn expiry_frees_keys() {
    let rate = store_rate();
    let store = CounterStore::new(3);
    for key in ["a", "b", "c"] {
        assert!(store.check(key, &rate, 0, 5).allowed);
    }
    // Each bucket is refilled (idle) at 100: nothing expires before.
    assert_eq!(store.expire(99), 0);
    assert_eq!(
        store.check("d", &rate, 99, 1).denied,
        Some(DenyReason::StoreFull)
    );
    assert_eq!(store.expire(100), 3);
    assert!(store.is_empty());
    assert!(store.check("d", &rate, 100, 1).allowed);
}

#[test]
fn new_key_sweeps_idle_keys_when_full() {
    let rate = store_rate();
    let store = CounterStore::new(2);
    assert!(store.check("a", &rate, 0, 5).allowed);
    assert!(store.check("b", &rate, 50, 5).allowed);
    // At 120 "a" is idle (since 100) but "b" is not (until 150): one slot frees up.
    assert!(store.check("c", &rate, 120, 1).allowed);
    assert!(store.get("a").is_none());
    assert_eq!(store.len(), 2);
}

#[test]
fn export_is_sorted_and_round_trips() {
    let rate = store_rate();
    let store = CounterStore::new(10);
    for key in ["zeta", "alpha", "mid"] {
        store.check(key, &rate, 0, 1);
    }
    let exported = store.export();
    let keys: Vec<&str> = exported.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["alpha", "mid", "zeta"]);
    let again = CounterStore::import(exported.clone(), 10);
    assert_eq!(again.export(), exported);
}

#[test]
fn cap_holds_across_threads() {
    let rate = store_rate();
    let store = CounterStore::new(100);
    let allowed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let (store, allowed) = (&store, &allowed);
            scope.spawn(move || {
                for i in 0..1_000 {
                    let key = format!("{thread}-{i}");
                    if store.check(&key, &rate, 0, 1).allowed {
                        allowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(store.len(), 100);
    assert_eq!(allowed.into_inner(), 100);
}

#[test]
fn switching_algorithm_starts_a_fresh_counter() {
    let fixed = Rate::new(Algorithm::FixedWindow, 2, 100, None).unwrap();
    let bucket = Rate::new(Algorithm::TokenBucket, 2, 100, None).unwrap();
    let store = CounterStore::new(1);
    assert!(store.check("k", &fixed, 0, 2).allowed);
    assert!(!store.check("k", &fixed, 1, 1).allowed);
    assert!(store.check("k", &bucket, 1, 2).allowed);
    assert!(matches!(
        store.get("k").unwrap().state,
        CounterState::TokenBucket(_)
    ));
}
