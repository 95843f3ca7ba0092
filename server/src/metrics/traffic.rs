//! Pre-aggregated traffic for the dashboard: decisions per surface and outcome, per limit,
//! and latency quantiles, in a ring of one-second buckets covering the last 15 minutes.
//!
//! Recording is one relaxed atomic add per decision (plus the latency histogram the
//! `/metrics` exposition already keeps); a once-a-second sampler turns the running
//! totals into per-second deltas. Memory is fixed: `HISTORY` buckets per series and at
//! most `MAX_LIMIT_SERIES` limits (later limit names share one `(other)` series), so
//! neither traffic volume nor the number of counters grows it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus::HistogramVec;
use serde::Serialize;

/// Seconds of history kept (15 minutes).
pub const HISTORY: usize = 900;
/// Most limits with their own series; the rest are summed under [`OTHER_LIMIT`].
pub const MAX_LIMIT_SERIES: usize = 64;
/// The series of limits beyond [`MAX_LIMIT_SERIES`].
pub const OTHER_LIMIT: &str = "(other)";

/// Where a decision request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `quorate.v1.RateLimiter/Check`.
    QuorateV1,
    /// Envoy `RateLimitService` (RLS).
    Rls,
    /// Envoy ext_authz `Authorization/Check`.
    ExtAuthz,
    /// Forward-auth over HTTP (`/authz`).
    HttpAuthz,
}

impl Surface {
    pub const ALL: [Surface; 4] = [
        Surface::QuorateV1,
        Surface::Rls,
        Surface::ExtAuthz,
        Surface::HttpAuthz,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Surface::QuorateV1 => "quorate_v1",
            Surface::Rls => "rls",
            Surface::ExtAuthz => "ext_authz",
            Surface::HttpAuthz => "http_authz",
        }
    }
}

/// What a decision request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    /// Over a limit (or denied) but let through: shadow mode or a dry-run route.
    Shadow,
    /// Not decided: invalid request, no quorum, internal error.
    Error,
    /// No rule or route applied.
    Unmatched,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Allowed,
        Outcome::Denied,
        Outcome::Shadow,
        Outcome::Error,
        Outcome::Unmatched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Shadow => "shadow",
            Outcome::Error => "error",
            Outcome::Unmatched => "unmatched",
        }
    }

    /// The outcome of an authorization decision, from its metrics label.
    pub fn from_authz(outcome: &str) -> Outcome {
        match outcome {
            "allowed" => Outcome::Allowed,
            "dry_run" => Outcome::Shadow,
            "no_route" => Outcome::Unmatched,
            "failure_open" | "unavailable" | "bad_request" => Outcome::Error,
            _ => Outcome::Denied,
        }
    }
}

const SURFACES: usize = Surface::ALL.len();
const OUTCOMES: usize = Outcome::ALL.len();

/// The running totals the hot path adds to.
#[derive(Debug, Default)]
struct Totals {
    by_surface: [[AtomicU64; OUTCOMES]; SURFACES],
    /// Limit name → (allowed, denied) totals; at most `MAX_LIMIT_SERIES` + 1 names.
    by_limit: Mutex<HashMap<String, [u64; 2]>>,
}

/// One second of one surface.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SurfaceSecond {
    /// Decisions by outcome, in [`Outcome::ALL`] order.
    pub counts: [u32; OUTCOMES],
    /// Latency quantiles of that second's decisions, in milliseconds (`None`: none).
    pub p50_ms: Option<f32>,
    pub p99_ms: Option<f32>,
}

/// The sampled history.
#[derive(Debug, Default)]
struct History {
    /// Unix second of the newest bucket.
    newest: u64,
    surfaces: [VecDeque<SurfaceSecond>; SURFACES],
    /// Limit name → per-second (allowed, denied), aligned with `surfaces`.
    limits: HashMap<String, VecDeque<[u32; 2]>>,
    /// Totals at the previous sample.
    last_surface: [[u64; OUTCOMES]; SURFACES],
    last_limit: HashMap<String, [u64; 2]>,
    /// Cumulative latency bucket counts per surface at the previous sample.
    last_latency: [Vec<u64>; SURFACES],
}

/// Decision counts and latencies for the dashboard.
#[derive(Debug, Default)]
pub struct Traffic {
    totals: Totals,
    history: Mutex<History>,
}

/// The whole history, oldest second first, as `GET /dashboard/api/traffic` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficView {
    /// Unix second of the last bucket (the first is `end - len + 1`).
    pub end: u64,
    pub outcomes: Vec<&'static str>,
    pub surfaces: Vec<SurfaceSeries>,
    pub limits: Vec<LimitSeries>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SurfaceSeries {
    pub surface: &'static str,
    pub seconds: Vec<SurfaceSecond>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitSeries {
    pub limit: String,
    /// Per second: `[allowed, denied]`.
    pub seconds: Vec<[u32; 2]>,
}

fn push_bounded<T>(ring: &mut VecDeque<T>, item: T) {
    if ring.len() == HISTORY {
        ring.pop_front();
    }
    ring.push_back(item);
}

fn delta(now: u64, before: u64) -> u32 {
    u32::try_from(now.saturating_sub(before)).unwrap_or(u32::MAX)
}

impl Traffic {
    /// Counts one decision request.
    pub fn record(&self, surface: Surface, outcome: Outcome) {
        self.totals.by_surface[surface as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts hits of one request per limit (names come from the live policy).
    pub fn record_limits<'a>(&self, hits: impl Iterator<Item = (&'a str, bool)>) {
        let Ok(mut by_limit) = self.totals.by_limit.lock() else {
            return;
        };
        for (limit, allowed) in hits {
            let slot = if let Some(slot) = by_limit.get_mut(limit) {
                slot
            } else if by_limit.len() < MAX_LIMIT_SERIES {
                by_limit.entry(limit.to_string()).or_default()
            } else {
                by_limit.entry(OTHER_LIMIT.to_string()).or_default()
            };
            slot[usize::from(!allowed)] += 1;
        }
    }

    /// Closes the second `now_sec`: appends each series' delta since the last call.
    /// `latency` is the per-surface decision latency histogram (seconds).
    pub fn sample(&self, now_sec: u64, latency: &HistogramVec) {
        let Ok(mut h) = self.history.lock() else {
            return;
        };
        let h = &mut *h;
        // A sampler that fell behind (a stalled process) leaves the missed seconds out
        // rather than inventing them: the chart's x axis is the bucket index.
        h.newest = now_sec;
        for s in Surface::ALL {
            let i = s as usize;
            let mut second = SurfaceSecond::default();
            for o in Outcome::ALL {
                let now = self.totals.by_surface[i][o as usize].load(Ordering::Relaxed);
                second.counts[o as usize] = delta(now, h.last_surface[i][o as usize]);
                h.last_surface[i][o as usize] = now;
            }
            if let Ok(hist) = latency.get_metric_with_label_values(&[s.as_str()]) {
                let proto = prometheus::core::Metric::metric(&hist);
                let buckets = proto.get_histogram().get_bucket();
                let bounds: Vec<f64> = buckets.iter().map(|b| b.upper_bound()).collect();
                let cumulative: Vec<u64> = buckets.iter().map(|b| b.cumulative_count()).collect();
                let total = proto.get_histogram().get_sample_count();
                let mut counts: Vec<u64> = cumulative.clone();
                counts.push(total);
                let last = &h.last_latency[i];
                let deltas: Vec<u64> = counts
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c.saturating_sub(last.get(k).copied().unwrap_or(0)))
                    .collect();
                second.p50_ms = quantile(&bounds, &deltas, 0.50).map(|s| (s * 1e3) as f32);
                second.p99_ms = quantile(&bounds, &deltas, 0.99).map(|s| (s * 1e3) as f32);
                h.last_latency[i] = counts;
            }
            push_bounded(&mut h.surfaces[i], second);
        }
        let totals: HashMap<String, [u64; 2]> = match self.totals.by_limit.lock() {
            Ok(m) => m.clone(),
            Err(_) => HashMap::new(),
        };
        let len = h.surfaces[0].len();
        for (name, now) in &totals {
            let before = h.last_limit.get(name).copied().unwrap_or([0, 0]);
            let ring = h.limits.entry(name.clone()).or_insert_with(|| {
                // A new series starts with zeros so it lines up with the others.
                std::iter::repeat_n([0, 0], len.saturating_sub(1)).collect()
            });
            push_bounded(ring, [delta(now[0], before[0]), delta(now[1], before[1])]);
        }
        h.last_limit = totals;
    }

    /// The whole history.
    pub fn view(&self) -> TrafficView {
        self.view_last(HISTORY)
    }

    /// The last `seconds` of history (the SSE stream sends the last one).
    pub fn view_last(&self, seconds: usize) -> TrafficView {
        let h = match self.history.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        let tail = |len: usize| len.saturating_sub(seconds);
        let mut limits: Vec<LimitSeries> = h
            .limits
            .iter()
            .map(|(name, ring)| LimitSeries {
                limit: name.clone(),
                seconds: ring.iter().skip(tail(ring.len())).copied().collect(),
            })
            .collect();
        limits.sort_by(|a, b| a.limit.cmp(&b.limit));
        TrafficView {
            end: h.newest,
            outcomes: Outcome::ALL.iter().map(|o| o.as_str()).collect(),
            surfaces: Surface::ALL
                .iter()
                .map(|s| {
                    let ring = &h.surfaces[*s as usize];
                    SurfaceSeries {
                        surface: s.as_str(),
                        seconds: ring.iter().skip(tail(ring.len())).copied().collect(),
                    }
                })
                .collect(),
            limits,
        }
    }
}

/// The `q` quantile of one interval's histogram: `deltas[k]` is the cumulative count up
/// to `bounds[k]` (the last entry is the total, bucket `+Inf`). Linear within a bucket,
/// as Prometheus' `histogram_quantile` does.
pub fn quantile(bounds: &[f64], deltas: &[u64], q: f64) -> Option<f64> {
    let total = *deltas.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0u64;
    for (k, &count) in deltas.iter().enumerate() {
        if count as f64 >= rank {
            let Some(&upper) = bounds.get(k) else {
                // In the +Inf bucket: the largest finite bound is the best we know.
                return Some(lower_bound);
            };
            let in_bucket = count.saturating_sub(lower_count) as f64;
            if in_bucket == 0.0 {
                return Some(upper);
            }
            let fraction = (rank - lower_count as f64) / in_bucket;
            return Some(lower_bound + (upper - lower_bound) * fraction);
        }
        lower_bound = bounds.get(k).copied().unwrap_or(lower_bound);
        lower_count = count;
    }
    Some(lower_bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn latency() -> HistogramVec {
        HistogramVec::new(
            HistogramOpts::new("t", "t").buckets(vec![0.001, 0.01, 0.1]),
            &["surface"],
        )
        .unwrap()
    }

    #[test]
    fn samples_turn_totals_into_per_second_deltas() {
        let t = Traffic::default();
        let lat = latency();
        t.record(Surface::Rls, Outcome::Allowed);
        t.record(Surface::Rls, Outcome::Denied);
        t.record_limits([("a", true), ("a", false), ("b", true)].into_iter());
        lat.with_label_values(&["rls"]).observe(0.005);
        t.sample(100, &lat);
        t.record(Surface::Rls, Outcome::Allowed);
        t.sample(101, &lat);
        let v = t.view();
        assert_eq!(v.end, 101);
        let rls = &v.surfaces[Surface::Rls as usize];
        assert_eq!(rls.seconds.len(), 2);
        assert_eq!(rls.seconds[0].counts, [1, 1, 0, 0, 0]);
        assert_eq!(rls.seconds[1].counts, [1, 0, 0, 0, 0]);
        let p50 = rls.seconds[0].p50_ms.unwrap();
        assert!((1.0..=10.0).contains(&p50), "{p50}");
        assert_eq!(rls.seconds[1].p50_ms, None);
        assert_eq!(v.limits[0].limit, "a");
        assert_eq!(v.limits[0].seconds, vec![[1, 1], [0, 0]]);
    }

    #[test]
    fn history_and_limit_series_are_bounded() {
        let t = Traffic::default();
        let lat = latency();
        for i in 0..(MAX_LIMIT_SERIES + 50) {
            t.record_limits([(format!("limit{i}").as_str(), true)].into_iter());
        }
        for s in 0..(HISTORY as u64 + 30) {
            t.record(Surface::QuorateV1, Outcome::Allowed);
            t.sample(s, &lat);
        }
        let v = t.view();
        assert!(v.surfaces.iter().all(|s| s.seconds.len() == HISTORY));
        assert_eq!(v.limits.len(), MAX_LIMIT_SERIES + 1);
        assert!(v.limits.iter().any(|l| l.limit == OTHER_LIMIT));
        assert!(v.limits.iter().all(|l| l.seconds.len() == HISTORY));
        assert_eq!(t.view_last(1).surfaces[0].seconds.len(), 1);
    }

    #[test]
    fn quantile_interpolates_within_buckets() {
        // 10 samples in (0, 1], 10 in (1, 2].
        let q = quantile(&[1.0, 2.0], &[10, 20, 20], 0.5).unwrap();
        assert!((q - 1.0).abs() < 1e-9);
        let q = quantile(&[1.0, 2.0], &[10, 20, 20], 0.75).unwrap();
        assert!((q - 1.5).abs() < 1e-9);
        assert_eq!(quantile(&[1.0], &[0, 0], 0.5), None);
    }
}
