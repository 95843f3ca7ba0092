//! `quorate-bench sliding-accuracy`: how far each sliding window lets a true window exceed
//! its limit, measured on generated traffic against the exact sliding log.
//!
//! Two traces, both deterministic for a seed:
//! - **Poisson**: each key receives hits as a Poisson process; key `i` of `K` runs at
//!   `0.2 + 2.8·i/(K−1)` times the limit's rate (0.2× to 3×);
//! - **bursty**: each key receives bursts (a uniform 10 to 2·limit hits, ~20 ms apart),
//!   the bursts themselves a Poisson process, at the same spread of average rates.
//!
//! Every algorithm (the sliding window at each precision, and the exact `sliding_log`) runs
//! on its own over the same arrivals, one key at a time through [`CounterState::check`]
//! (the enum the store holds). For each it reports: the worst count of allowed hits in any
//! true window `(t − W, t]`, over the limit; the share of allowed hits that close a true
//! window holding more than the limit; the keys where that ever happens; allowed hits
//! against the exact log's; nanoseconds per decision (the check loop alone, timed per key,
//! state hot in cache, allowed and denied hits mixed as the trace makes them); and the
//! bytes of state per key (`size_of::<CounterState>()` plus what it holds on the heap, the
//! most any key held at the end of its trace).

use std::hint::black_box;
use std::time::{Duration, Instant};

use quorate_algorithms::{Algorithm, CounterState, Nanos, Rate, SECOND};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What to generate and measure.
#[derive(Debug, Clone)]
pub struct AccuracyConfig {
    pub keys: usize,
    pub duration: Duration,
    pub limit: u64,
    pub window: Nanos,
    pub precisions: Vec<u16>,
    pub seed: u64,
}

/// Which trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trace {
    Poisson,
    Bursty,
}

impl Trace {
    fn name(self) -> &'static str {
        match self {
            Trace::Poisson => "Poisson",
            Trace::Bursty => "bursty",
        }
    }
}

/// The figures of one algorithm on one trace.
#[derive(Debug, Clone, Default)]
struct Tally {
    offered: u64,
    allowed: u64,
    /// Allowed hits that close a true window over the limit.
    closing_over: u64,
    worst_window: u64,
    keys_over: u64,
    decide_time: Duration,
    max_state_bytes: usize,
}

/// Runs both traces and returns the markdown report.
pub fn run(config: &AccuracyConfig) -> anyhow::Result<String> {
    let mut rates = Vec::new();
    for &precision in &config.precisions {
        let rate = Rate::with_precision(
            Algorithm::SlidingWindow,
            config.limit,
            config.window,
            None,
            Some(u64::from(precision)),
        )?;
        rates.push((format!("sliding_window, precision {precision}"), rate));
    }
    rates.push((
        "sliding_log (exact)".to_string(),
        Rate::new(Algorithm::SlidingLog, config.limit, config.window, None)?,
    ));

    let mut out = String::new();
    out.push_str(&format!(
        "{} keys, limit {} per {} s, {} s of traffic per key, seed {}; \
         `size_of::<CounterState>()` = {} bytes\n\n",
        config.keys,
        config.limit,
        config.window / SECOND,
        config.duration.as_secs(),
        config.seed,
        std::mem::size_of::<CounterState>(),
    ));
    for trace in [Trace::Poisson, Trace::Bursty] {
        let tallies = measure(config, trace, &rates);
        let exact_allowed = tallies.last().map_or(1, |t| t.allowed.max(1));
        out.push_str(&format!(
            "**{} trace** ({} hits offered per algorithm)\n\n",
            trace.name(),
            tallies.first().map_or(0, |t| t.offered)
        ));
        out.push_str(
            "| algorithm | worst true window / limit | allowed hits closing an over-limit window | keys ever over | allowed vs exact log | ns / decision | bytes / key |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for ((name, _), t) in rates.iter().zip(&tallies) {
            out.push_str(&format!(
                "| {name} | {:.2} | {:.2} % | {} of {} | {:+.2} % | {:.1} | {} |\n",
                t.worst_window as f64 / config.limit as f64,
                100.0 * t.closing_over as f64 / t.allowed.max(1) as f64,
                t.keys_over,
                config.keys,
                100.0 * (t.allowed as f64 / exact_allowed as f64 - 1.0),
                t.decide_time.as_nanos() as f64 / t.offered.max(1) as f64,
                t.max_state_bytes,
            ));
        }
        out.push('\n');
    }
    Ok(out)
}

fn measure(config: &AccuracyConfig, trace: Trace, rates: &[(String, Rate)]) -> Vec<Tally> {
    let mut tallies = vec![Tally::default(); rates.len()];
    let mut rng = StdRng::seed_from_u64(config.seed ^ (trace as u64 + 1));
    let mut arrivals = Vec::new();
    let mut allowed = Vec::new();
    for key in 0..config.keys {
        let factor = if config.keys > 1 {
            0.2 + 2.8 * key as f64 / (config.keys - 1) as f64
        } else {
            1.0
        };
        // Hits per ns at this key.
        let rate = factor * config.limit as f64 / config.window as f64;
        // Start each key at a random phase of the window, past zero, so slots and windows
        // are not aligned with the trace.
        let start = config.window + rng.random_range(0..config.window);
        arrivals.clear();
        generate(
            &mut rng,
            trace,
            rate,
            config.limit,
            start,
            config.duration,
            &mut arrivals,
        );
        for ((_, rate), tally) in rates.iter().zip(tallies.iter_mut()) {
            allowed.clear();
            let mut state = CounterState::new(rate);
            let began = Instant::now();
            for &now in &arrivals {
                if black_box(state.check(rate, now, 1)).allowed {
                    allowed.push(now);
                }
            }
            tally.decide_time += began.elapsed();
            tally.offered += arrivals.len() as u64;
            tally.allowed += allowed.len() as u64;
            tally.max_state_bytes = tally.max_state_bytes.max(state_bytes(&state));
            let (worst, closing_over) = true_windows(&allowed, config.window, config.limit);
            tally.worst_window = tally.worst_window.max(worst);
            tally.closing_over += closing_over;
            tally.keys_over += u64::from(closing_over > 0);
        }
    }
    tallies
}

/// Arrival instants for one key, increasing.
fn generate(
    rng: &mut StdRng,
    trace: Trace,
    rate: f64,
    limit: u64,
    start: Nanos,
    duration: Duration,
    out: &mut Vec<Nanos>,
) {
    let end = start.saturating_add(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    let exponential = |rng: &mut StdRng, mean: f64| -> u64 {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        (-u.ln() * mean) as u64
    };
    let mut t = start;
    match trace {
        Trace::Poisson => loop {
            t = t.saturating_add(exponential(rng, 1.0 / rate).max(1));
            if t >= end {
                break;
            }
            out.push(t);
        },
        Trace::Bursty => {
            let (min_burst, max_burst) = (10, (2 * limit).max(11));
            let mean_burst = (min_burst + max_burst) as f64 / 2.0;
            let gap_mean = mean_burst / rate;
            let spacing_mean = 20_000_000.0; // 20 ms between the hits of a burst
            loop {
                t = t.saturating_add(exponential(rng, gap_mean).max(1));
                if t >= end {
                    break;
                }
                let size = rng.random_range(min_burst..=max_burst);
                let mut h = t;
                for _ in 0..size {
                    h = h.saturating_add(exponential(rng, spacing_mean).max(1));
                    if h >= end {
                        break;
                    }
                    out.push(h);
                }
                t = h;
            }
        }
    }
}

/// The most allowed hits in any `(t − window, t]`, and how many allowed hits close such a
/// window holding more than `limit`. `allowed` is increasing; the largest windows end at an
/// allowed hit.
fn true_windows(allowed: &[Nanos], window: Nanos, limit: u64) -> (u64, u64) {
    let (mut worst, mut over, mut first) = (0u64, 0u64, 0usize);
    for (j, &t) in allowed.iter().enumerate() {
        while t - allowed[first] >= window {
            first += 1;
        }
        let count = (j + 1 - first) as u64;
        worst = worst.max(count);
        over += u64::from(count > limit);
    }
    (worst, over)
}

/// Bytes one key's state takes: the enum the store holds plus what it owns on the heap.
fn state_bytes(state: &CounterState) -> usize {
    let heap = match state {
        CounterState::SlidingSlots(s) => s.heap_bytes(),
        // 16 bytes per logged entry (the deque's length; its capacity may be larger).
        CounterState::SlidingLog(s) => s.entries().len() * 16,
        _ => 0,
    };
    std::mem::size_of::<CounterState>() + heap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_windows_count_the_half_open_interval() {
        // Window 10: (0,10] holds 1,5,10 → 3; (5,15] holds 10,12,15 → 3; 15 − 5 = 10 drops 5.
        assert_eq!(true_windows(&[1, 5, 10, 12, 15], 10, 2), (3, 3));
        assert_eq!(true_windows(&[], 10, 2), (0, 0));
    }

    #[test]
    fn the_exact_log_never_exceeds_and_counters_are_compared_with_it() {
        let config = AccuracyConfig {
            keys: 20,
            duration: Duration::from_secs(300),
            limit: 20,
            window: 60 * SECOND,
            precisions: vec![1, 10],
            seed: 7,
        };
        let report = run(&config).unwrap();
        // The exact log's rows: no window over the limit, and it is its own reference.
        for line in report.lines().filter(|l| l.starts_with("| sliding_log")) {
            assert!(
                line.contains("| 1.00 | 0.00 % | 0 of 20 | +0.00 % |"),
                "{line}"
            );
        }
        assert_eq!(
            report.matches("| sliding_window, precision 10 |").count(),
            2
        );
    }
}
