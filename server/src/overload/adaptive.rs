//! The adaptive concurrency limit: how many decisions a node admits at once, moved by the
//! latency of the decisions it admitted (a gradient controller in the spirit of Envoy's
//! `adaptive_concurrency` filter and Netflix's `concurrency-limits`).
//!
//! Why: a fixed `--max-in-flight` only keeps latency low when sized by hand for the node's
//! disk and CPU (`docs/benchmarks.md`, "Overload": 8–16 on an fsync-bound node, where the
//! default 256 lets p99 grow 5–9× under 2× overload). Group commit makes a node *faster*
//! with more decisions in flight, up to the point where they only queue; this controller
//! looks for that point from outside:
//!
//! - Admitted decisions' latencies are averaged over a **window** (at least
//!   [`AdaptiveSettings::window`] and [`AdaptiveSettings::min_samples`] decisions).
//! - The **baseline** is the lowest window average seen (the node's latency without
//!   queueing). Every [`AdaptiveSettings::probe_every`] the limit drops to the minimum for
//!   one window and that window's average *replaces* the baseline, so a baseline measured
//!   in a lucky moment (or on a faster disk) does not shed forever.
//! - A window averaging more than `baseline × tolerance` shrinks the limit by the ratio
//!   (at most halving it); any other window grows it by `√limit` (at least 1), so after
//!   overload the limit is back at the maximum within seconds.
//! - A window run at the minimum limit counts as a probe too (nothing queued in it), so
//!   latency that no limit lowers (an election, a slower disk) resets the baseline at
//!   once instead of holding the limit at the minimum.
//! - The limit always stays within `[min, max]`.
//!
//! This part is pure: time and latencies are arguments (`now` is time since any fixed
//! start), so the controller is tested with made-up clocks. [`super::Overload`] feeds it.

use std::time::Duration;

/// How the adaptive limit moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveSettings {
    /// The limit never goes below this (and probes run at it).
    pub min: usize,
    /// Nor above this (`--max-in-flight`); it starts here.
    pub max: usize,
    /// Shortest window of samples.
    pub window: Duration,
    /// Fewest decisions in a window: a quiet node waits for more before it judges.
    pub min_samples: u64,
    /// A window averaging more than `baseline × tolerance` shrinks the limit.
    pub tolerance: f64,
    /// How often the baseline is measured again (one window at the minimum limit).
    pub probe_every: Duration,
}

/// Lowest limit by default: a few decisions still share an fsync.
pub const DEFAULT_MIN_LIMIT: usize = 4;

/// How far over the baseline a window may average before the limit shrinks. Group commit
/// makes a node's best throughput come at a few fsyncs of latency, not one: at 1.5 the
/// limit settled where an fsync-bound node answered 40 % of its capacity under 2×
/// overload; at 3 it answered 74 %, and the p99 of answered calls still stayed below the
/// p99 at half load (`docs/benchmarks.md`, "Overload", run 10).
pub const DEFAULT_TOLERANCE: f64 = 3.0;

impl AdaptiveSettings {
    /// The defaults with `max` as the ceiling (`min` lowered to `max` if need be).
    pub fn up_to(max: usize) -> AdaptiveSettings {
        let max = max.max(1);
        AdaptiveSettings {
            min: DEFAULT_MIN_LIMIT.min(max),
            max,
            window: Duration::from_millis(100),
            min_samples: 20,
            tolerance: DEFAULT_TOLERANCE,
            probe_every: Duration::from_secs(30),
        }
    }
}

/// The controller's state. Call [`AdaptiveLimit::record`] with every admitted decision's
/// latency; read [`AdaptiveLimit::limit`].
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    settings: AdaptiveSettings,
    /// Kept fractional so that small gradients add up.
    limit: f64,
    /// Lowest window average (µs), `None` until the first window closes.
    baseline_us: Option<f64>,
    window_start: Duration,
    window_sum_us: f64,
    window_samples: u64,
    next_probe: Duration,
    /// While probing: the limit to go back to when the probe window closes.
    probing: Option<f64>,
}

impl AdaptiveLimit {
    /// Starts at the maximum; `now` is the time since the caller's fixed start.
    pub fn new(settings: AdaptiveSettings, now: Duration) -> AdaptiveLimit {
        let settings = AdaptiveSettings {
            max: settings.max.max(1),
            min: settings.min.clamp(1, settings.max.max(1)),
            min_samples: settings.min_samples.max(1),
            tolerance: if settings.tolerance.is_finite() {
                settings.tolerance.max(1.0)
            } else {
                1.0
            },
            ..settings
        };
        AdaptiveLimit {
            limit: settings.max as f64,
            baseline_us: None,
            window_start: now,
            window_sum_us: 0.0,
            window_samples: 0,
            next_probe: now + settings.probe_every,
            probing: None,
            settings,
        }
    }

    /// Decisions to admit at once now, within `[min, max]`.
    pub fn limit(&self) -> usize {
        // `limit` is kept within [min, max], both usize; the cast only drops the fraction.
        (self.limit as usize).clamp(self.settings.min, self.settings.max)
    }

    /// The baseline latency, once measured.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline_us.map(|us| Duration::from_secs_f64(us / 1e6))
    }

    /// Records one admitted decision that took `latency`, finished at `now`. Returns the
    /// new limit when this sample closed a window and the limit changed.
    pub fn record(&mut self, latency: Duration, now: Duration) -> Option<usize> {
        self.window_sum_us += latency.as_secs_f64() * 1e6;
        self.window_samples += 1;
        if self.window_samples < self.settings.min_samples
            || now.saturating_sub(self.window_start) < self.settings.window
        {
            return None;
        }
        let average_us = self.window_sum_us / self.window_samples as f64;
        self.window_start = now;
        self.window_sum_us = 0.0;
        self.window_samples = 0;
        let before = self.limit();
        self.close_window(average_us, now);
        let after = self.limit();
        (after != before).then_some(after)
    }

    fn close_window(&mut self, average_us: f64, now: Duration) {
        let (min, max) = (self.settings.min as f64, self.settings.max as f64);
        if let Some(restore) = self.probing.take() {
            // The probe window ran at the minimum: its average is the unqueued latency.
            self.baseline_us = Some(average_us);
            self.limit = restore;
            return;
        }
        // A window run at the minimum had nothing to queue behind: like a probe, its
        // average is the unqueued latency now. Without this, latency the limit cannot
        // lower (a leader election, a slower disk, the CPU spent shedding) held the
        // limit at the minimum until the next probe: after a leader kill, seconds of
        // shedding (`docs/benchmarks.md`, "Overload").
        let at_minimum = self.limit() == self.settings.min;
        let baseline = match self.baseline_us {
            Some(b) if b <= average_us && !at_minimum => b,
            _ => {
                self.baseline_us = Some(average_us);
                average_us
            }
        };
        // Queueing: shrink by how far over, at most by half per window; else grow by √limit.
        // (Written so that a zero average or baseline never makes a NaN.)
        let allowed = baseline * self.settings.tolerance;
        self.limit = if average_us > allowed {
            (self.limit * (allowed / average_us).max(0.5)).max(min)
        } else {
            (self.limit + self.limit.sqrt().max(1.0)).min(max)
        };
        if now >= self.next_probe {
            // Even at the minimum: a baseline that is too low keeps the limit there, and
            // only a probe can find that out.
            self.next_probe = now + self.settings.probe_every;
            self.probing = Some(self.limit);
            self.limit = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `windows` windows of 20 samples of `latency`, 5 ms apart (so each closes
    /// one window), from `*now`; returns the limit after each window.
    fn feed(
        c: &mut AdaptiveLimit,
        now: &mut Duration,
        latency: Duration,
        windows: usize,
    ) -> Vec<usize> {
        let mut limits = Vec::new();
        for _ in 0..windows {
            for _ in 0..20 {
                *now += 5 * MS;
                c.record(latency, *now);
            }
            limits.push(c.limit());
        }
        limits
    }

    /// Like [`feed`], for a node that completes `knee` decisions per `unqueued` latency:
    /// above `knee` in flight, decisions queue and latency grows with the limit.
    fn feed_node(
        c: &mut AdaptiveLimit,
        now: &mut Duration,
        unqueued: Duration,
        knee: usize,
        windows: usize,
    ) -> Vec<usize> {
        let mut limits = Vec::new();
        for _ in 0..windows {
            let latency = unqueued.mul_f64((c.limit() as f64 / knee as f64).max(1.0));
            limits.extend(feed(c, now, latency, 1));
        }
        limits
    }

    fn settings() -> AdaptiveSettings {
        AdaptiveSettings {
            probe_every: Duration::from_secs(3600),
            ..AdaptiveSettings::up_to(256)
        }
    }

    #[test]
    fn queueing_shrinks_the_limit_and_calm_grows_it_back_to_the_maximum() {
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(settings(), now);
        assert_eq!(c.limit(), 256);
        feed(&mut c, &mut now, 3 * MS, 5);
        assert_eq!(c.limit(), 256, "at baseline latency the limit stays at max");
        assert_eq!(c.baseline(), Some(3 * MS));

        // The node now completes only 8 decisions per 3 ms; more in flight queue.
        let shrinking = feed_node(&mut c, &mut now, 3 * MS, 8, 40);
        let settled = &shrinking[20..];
        assert!(
            settled.iter().all(|&l| l <= 8 * 3 + 5),
            "the limit stays near where latency reaches the tolerance: {shrinking:?}"
        );
        assert!(shrinking.contains(&DEFAULT_MIN_LIMIT) || shrinking[0] < 256);
        assert_eq!(c.baseline(), Some(3 * MS), "a queued window is no baseline");

        let growing = feed(&mut c, &mut now, 3 * MS, 60);
        assert!(growing.windows(2).all(|w| w[1] >= w[0]), "{growing:?}");
        assert_eq!(c.limit(), 256, "{growing:?}");
    }

    #[test]
    fn latency_within_the_tolerance_does_not_shrink() {
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(settings(), now);
        feed(&mut c, &mut now, 4 * MS, 3);
        feed(&mut c, &mut now, 12 * MS, 20); // DEFAULT_TOLERANCE × baseline
        assert_eq!(c.limit(), 256);
        feed(&mut c, &mut now, 13 * MS, 1);
        assert!(c.limit() < 256);
    }

    #[test]
    fn a_window_needs_enough_samples_and_enough_time() {
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(settings(), now);
        // 19 samples over a long time: no window closes.
        for _ in 0..19 {
            now += Duration::from_secs(1);
            assert_eq!(c.record(MS, now), None);
        }
        assert_eq!(c.baseline(), None);
        // The 20th sample, 19 s after the window opened: it closes.
        c.record(MS, now);
        assert_eq!(c.baseline(), Some(MS));
        // Many samples in under 100 ms: no window closes.
        for _ in 0..100 {
            c.record(50 * MS, now + MS);
        }
        assert_eq!(c.limit(), 256);
    }

    #[test]
    fn a_probe_runs_one_window_at_the_minimum_and_replaces_the_baseline() {
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(
            AdaptiveSettings {
                probe_every: Duration::from_secs(1),
                ..AdaptiveSettings::up_to(64)
            },
            now,
        );
        feed(&mut c, &mut now, 2 * MS, 5);
        assert_eq!(c.baseline(), Some(2 * MS));
        // The disk got slower for good: 8 ms is now the unqueued latency.
        let limits = feed(&mut c, &mut now, 8 * MS, 40);
        assert!(limits.contains(&DEFAULT_MIN_LIMIT), "{limits:?}");
        assert_eq!(c.baseline(), Some(8 * MS));
        // The limit came back once the baseline moved, dipping only for the next probe.
        let limits = feed(&mut c, &mut now, 8 * MS, 20);
        assert!(limits.contains(&64), "{limits:?}");
        assert!(
            limits.iter().all(|&l| l == 64 || l == DEFAULT_MIN_LIMIT),
            "{limits:?}"
        );
    }

    #[test]
    fn zero_latencies_keep_the_limit_a_number() {
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(settings(), now);
        feed(&mut c, &mut now, Duration::ZERO, 3);
        assert_eq!(c.limit(), 256);
        let limits = feed(&mut c, &mut now, MS, 20);
        assert!(limits.contains(&DEFAULT_MIN_LIMIT), "{limits:?}");
        feed(&mut c, &mut now, Duration::ZERO, 60);
        assert_eq!(c.limit(), 256);
    }

    #[test]
    fn latency_no_limit_lowers_does_not_hold_the_limit_down() {
        // A leader election: every decision suddenly takes 10× as long, whatever the
        // limit. The limit dips, then the window at the minimum resets the baseline and
        // it grows back without waiting for a probe.
        let mut now = Duration::ZERO;
        let mut c = AdaptiveLimit::new(settings(), now);
        feed(&mut c, &mut now, 3 * MS, 5);
        let limits = feed(&mut c, &mut now, 30 * MS, 60);
        assert!(limits.contains(&DEFAULT_MIN_LIMIT), "{limits:?}");
        assert_eq!(c.baseline(), Some(30 * MS));
        assert_eq!(c.limit(), 256, "{limits:?}");
    }

    proptest! {
        /// Whatever the latencies and clock steps, the limit stays within [min, max].
        #[test]
        fn the_limit_stays_within_min_and_max(
            min in 1_usize..20,
            extra in 0_usize..300,
            samples in proptest::collection::vec((0_u64..5_000_000, 0_u64..200_000), 1..3_000),
        ) {
            let settings = AdaptiveSettings {
                min,
                max: min + extra,
                window: Duration::from_millis(10),
                min_samples: 3,
                tolerance: 1.5,
                probe_every: Duration::from_millis(500),
            };
            let mut now = Duration::ZERO;
            let mut c = AdaptiveLimit::new(settings, now);
            for (latency_us, step_us) in samples {
                now += Duration::from_micros(step_us);
                c.record(Duration::from_micros(latency_us), now);
                prop_assert!((min..=min + extra).contains(&c.limit()), "{}", c.limit());
            }
        }

        /// On a node that queues above `knee` decisions in flight, the limit settles
        /// where latency reaches the tolerance (within one growth step); once nothing
        /// queues, it always ends at the maximum.
        #[test]
        fn queueing_bounds_the_limit_and_calm_reaches_max(
            max in 1_usize..1_000,
            baseline_us in 100_u64..20_000,
            knee in 1_usize..200,
        ) {
            let mut now = Duration::ZERO;
            let mut c = AdaptiveLimit::new(AdaptiveSettings {
                probe_every: Duration::from_secs(3600),
                ..AdaptiveSettings::up_to(max)
            }, now);
            let base = Duration::from_micros(baseline_us);
            feed(&mut c, &mut now, base, 2);
            let limits = feed_node(&mut c, &mut now, base, knee, 60);
            // Above `tolerance × max(knee, min)` in flight a window is over the tolerance
            // and shrinks; growth adds at most √limit + 1 to a limit below it.
            let ceiling = DEFAULT_TOLERANCE * knee.max(DEFAULT_MIN_LIMIT.min(max)) as f64;
            let ceiling = (ceiling + ceiling.sqrt() + 1.0).min(max as f64) as usize;
            for &l in &limits[30..] {
                prop_assert!(l <= ceiling.max(DEFAULT_MIN_LIMIT.min(max)), "{} > {}: {:?}", l, ceiling, limits);
            }
            feed(&mut c, &mut now, base, 100);
            prop_assert_eq!(c.limit(), max);
        }
    }
}
