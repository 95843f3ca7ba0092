//! The dashboard's read-only view of RLQS on the leader: each bucket with its rule and
//! limit, the proxies subscribed to it with their committed share and reported demand,
//! what is left unassigned, and how often shares change (the churn).
//!
//! Nothing secret leaves here: `bucket_id` values a rule matches exactly or by wildcard
//! are shown as the policy writes them (the policy is public on the dashboard), and a
//! value that makes its own bucket (a rule entry with `key` alone, e.g. a tenant or an API
//! key Envoy was told to send) only as a short digest, like descriptor values in metric
//! labels. The view is bounded ([`MAX_VIEW_BUCKETS`] buckets, [`MAX_VIEW_PROXIES`] proxies
//! each, the rest counted) and built at most once a second however many pages ask.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quorate_algorithms::{Nanos, SECOND};
use quorate_policy::rlqs::{BucketMatch, QuotaLimit, RlqsPolicy};
use serde::Serialize;

use super::{BucketState, Hub, Rlqs};
use crate::quota::{MilliRate, Pool};

/// Most buckets one view lists (the busiest first).
pub const MAX_VIEW_BUCKETS: usize = 100;
/// Most proxies listed per bucket (the largest shares first).
pub const MAX_VIEW_PROXIES: usize = 20;
/// Most domains listed.
const MAX_VIEW_DOMAINS: usize = 100;
/// How far back churn is counted.
const CHURN_SECONDS: u64 = 60;
/// A bucket's churn is kept in slots of this many seconds (so at most
/// `CHURN_SECONDS / CHURN_SLOT + 1` entries per bucket, however often rounds run).
const CHURN_SLOT: u64 = 10;
/// How long a built view is shared.
const VIEW_TTL: Duration = Duration::from_millis(900);

/// The rounds of one second of leader time and the grants they committed.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct RoundSecond {
    second: u64,
    rounds: u64,
    fresh: u64,
    extended: u64,
}

/// Adds `fresh` grants of a round at `now` to a bucket's churn slots, dropping slots older
/// than the churn window.
pub(super) fn note_churn(churn: &mut VecDeque<(Nanos, u32)>, now: Nanos, fresh: u32) {
    let slot = now / (CHURN_SLOT * SECOND);
    while churn
        .front()
        .is_some_and(|&(s, _)| s + CHURN_SECONDS / CHURN_SLOT < slot)
    {
        churn.pop_front();
    }
    if fresh == 0 {
        return;
    }
    match churn.back_mut() {
        Some((s, n)) if *s == slot => *n = n.saturating_add(fresh),
        _ => churn.push_back((slot, fresh)),
    }
}

fn churn_in_window(churn: &VecDeque<(Nanos, u32)>, now: Nanos) -> u64 {
    let slot = now / (CHURN_SLOT * SECOND);
    churn
        .iter()
        .filter(|&&(s, _)| s + CHURN_SECONDS / CHURN_SLOT >= slot)
        .map(|&(_, n)| u64::from(n))
        .sum()
}

/// `GET /dashboard/api/rlqs`, as the leader builds it.
#[derive(Debug, Clone, Serialize)]
pub struct RlqsView {
    /// Whether the live policy has an `rlqs:` section with at least one domain.
    pub configured: bool,
    /// Whether this node leads (only the leader serves streams and shares).
    pub leader: bool,
    pub domains: Vec<String>,
    pub settings: SettingsView,
    /// Open streams (one per proxy and domain).
    pub streams: usize,
    pub buckets_total: usize,
    /// (stream, bucket) subscriptions over all buckets.
    pub subscriptions_total: usize,
    /// Buckets not listed (over [`MAX_VIEW_BUCKETS`]).
    pub buckets_left_out: usize,
    pub churn: ChurnView,
    /// The busiest buckets first.
    pub buckets: Vec<BucketView>,
}

/// The `rlqs:` settings the leader shares with.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsView {
    pub interval_ms: f64,
    pub ttl_ms: f64,
    pub reserve: f64,
    pub floor: f64,
    pub abandon_after: u32,
    pub max_buckets: usize,
    pub max_buckets_per_stream: usize,
}

/// Share rounds and grants over the last minute of this leader.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnView {
    pub window_seconds: u64,
    /// Rounds run (each re-divides every bucket).
    pub rounds: u64,
    /// Grants that changed a proxy's share (a new token bucket at the proxy).
    pub fresh_grants: u64,
    /// Grants that only extended a share's lifetime.
    pub extended_grants: u64,
}

/// One `bucket_id` entry of a bucket.
#[derive(Debug, Clone, Serialize)]
pub struct BucketIdEntry {
    pub key: String,
    /// The policy's value or pattern; for a `per_value` entry, a digest of the value.
    pub value: String,
    /// `exact`, `wildcard` or `per_value`.
    pub matched: &'static str,
}

/// A bucket's global limit.
#[derive(Debug, Clone, Serialize)]
pub struct LimitView {
    pub requests: u64,
    pub window_ms: f64,
    /// A token-bucket limit's burst.
    pub burst: Option<u64>,
}

/// One bucket on the leader.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    pub domain: String,
    /// The policy's bucket rule.
    pub rule: String,
    pub bucket_id: Vec<BucketIdEntry>,
    /// `None` when the live policy no longer has the rule (the bucket is being abandoned).
    pub limit: Option<LimitView>,
    /// The limit as requests per second.
    pub limit_per_second: f64,
    /// What may be assigned as rate: the limit less the reserve.
    pub assignable_per_second: f64,
    /// The rate the proxies hold now (each proxy's highest unexpired share), summed.
    pub assigned_per_second: f64,
    /// `assignable − assigned`: free for raises.
    pub unassigned_per_second: f64,
    /// Part of `assigned` held by streams no longer subscribed here (an earlier leader's
    /// or ended streams), counted as spent until it expires.
    pub held_by_gone_streams_per_second: f64,
    /// The reserve: starting tokens of the proxies' token buckets, and how many are free.
    pub reserve_tokens: u64,
    pub reserve_tokens_free: u64,
    /// Reported demand (allowed + denied), summed over the proxies.
    pub demand_per_second: f64,
    /// Fresh grants (changed shares) over about the last minute.
    pub fresh_grants_last_minute: u64,
    pub proxies_total: usize,
    /// Proxies not listed (over [`MAX_VIEW_PROXIES`]).
    pub proxies_left_out: usize,
    /// The largest shares first.
    pub proxies: Vec<ProxyView>,
}

/// One proxy (a stream's subscription to a bucket).
#[derive(Debug, Clone, Serialize)]
pub struct ProxyView {
    /// The subscription (the grant table's proxy id), as a string: ids use all 64 bits.
    pub id: String,
    pub stream: String,
    /// The stream's remote address.
    pub peer: Option<String>,
    /// The rate of its latest unexpired share; 0 when it holds none.
    pub share_per_second: f64,
    /// Capacity of its token bucket.
    pub max_tokens: Option<u32>,
    /// When its latest share lapses (leader time).
    pub expires_in_ms: Option<u64>,
    /// How long it has held the same share (a fresh grant restarts it).
    pub share_age_ms: Option<u64>,
    /// Its smoothed demand, the weight its share follows.
    pub demand_per_second: f64,
    /// Its last report, per second.
    pub allowed_per_second: f64,
    pub denied_per_second: f64,
    pub last_report_ms_ago: u64,
}

fn per_second(milli: MilliRate) -> f64 {
    milli as f64 / 1000.0
}

fn ms(nanos: Nanos) -> u64 {
    nanos / 1_000_000
}

impl Rlqs {
    /// The dashboard's view, rebuilt at most once every [`VIEW_TTL`].
    pub fn dashboard_view(&self) -> Arc<RlqsView> {
        let mut cache = self.view_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, view)) = cache.as_ref() {
            if at.elapsed() < VIEW_TTL {
                return Arc::clone(view);
            }
        }
        let view = Arc::new(self.build_view(MAX_VIEW_BUCKETS, MAX_VIEW_PROXIES));
        *cache = Some((Instant::now(), Arc::clone(&view)));
        view
    }

    /// Records a round at `at` and its grants for the churn figures (one entry per
    /// second of leader time, the last minute only).
    pub(super) fn note_round(&self, at: Nanos, fresh: u64, extended: u64) {
        let second = at / SECOND;
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        while rounds
            .front()
            .is_some_and(|r| r.second + CHURN_SECONDS <= second)
        {
            rounds.pop_front();
        }
        if rounds.back().is_none_or(|last| last.second != second) {
            rounds.push_back(RoundSecond {
                second,
                ..RoundSecond::default()
            });
        }
        if let Some(last) = rounds.back_mut() {
            last.rounds += 1;
            last.fresh += fresh;
            last.extended += extended;
        }
    }

    fn churn(&self, now: Nanos) -> ChurnView {
        let second = now / SECOND;
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let recent = || rounds.iter().filter(|r| r.second + CHURN_SECONDS > second);
        ChurnView {
            window_seconds: CHURN_SECONDS,
            rounds: recent().map(|r| r.rounds).sum(),
            fresh_grants: recent().map(|r| r.fresh).sum(),
            extended_grants: recent().map(|r| r.extended).sum(),
        }
    }

    /// Builds the view with at most `max_buckets` buckets of at most `max_proxies`
    /// proxies each.
    pub fn build_view(&self, max_buckets: usize, max_proxies: usize) -> RlqsView {
        let policy = self.engine.policy();
        let rlqs = &policy.set.rlqs;
        let now = self.clock.now();
        let leader = self.engine.leadership().is_leader();
        let hub = self.hub();
        // The busiest buckets first: demand summed over subscribers, then key.
        let mut order: Vec<(MilliRate, &String, &BucketState)> = hub
            .buckets
            .iter()
            .map(|(key, state)| {
                let demand = state
                    .subscribers
                    .values()
                    .fold(0u64, |sum, s| sum.saturating_add(s.demand));
                (demand, key, state)
            })
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let buckets = order
            .iter()
            .take(max_buckets)
            .map(|&(demand, key, state)| {
                self.bucket_view(rlqs, &hub, key, state, demand, now, max_proxies)
            })
            .collect();
        RlqsView {
            configured: !rlqs.domains.is_empty(),
            leader,
            domains: rlqs
                .domains
                .keys()
                .take(MAX_VIEW_DOMAINS)
                .cloned()
                .collect(),
            settings: settings_view(rlqs),
            streams: hub.streams.len(),
            buckets_total: hub.buckets.len(),
            subscriptions_total: hub.buckets.values().map(|b| b.subscribers.len()).sum(),
            buckets_left_out: hub.buckets.len().saturating_sub(max_buckets),
            churn: self.churn(now),
            buckets,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn bucket_view(
        &self,
        rlqs: &RlqsPolicy,
        hub: &Hub,
        key: &str,
        state: &BucketState,
        demand: MilliRate,
        now: Nanos,
        max_proxies: usize,
    ) -> BucketView {
        let rule = rlqs
            .domains
            .get(&state.domain)
            .and_then(|rules| rules.iter().find(|r| r.name == state.rule));
        // Every subscriber of a bucket reported the same per-value entries (they are
        // part of its key), so any one of them shows them.
        let reported = state.subscribers.values().next().map(|s| &s.bucket_id);
        let bucket_id = rule
            .map(|r| {
                r.bucket_id
                    .iter()
                    .map(|(k, how)| {
                        let (value, matched) = match how {
                            BucketMatch::Exact(v) => (v.clone(), "exact"),
                            BucketMatch::Wildcard(p) => (p.clone(), "wildcard"),
                            BucketMatch::PerValue => (
                                reported
                                    .and_then(|id| id.bucket.get(k))
                                    .map(|v| crate::metrics::redacted_value(v))
                                    .unwrap_or_default(),
                                "per_value",
                            ),
                        };
                        BucketIdEntry {
                            key: k.clone(),
                            value,
                            matched,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let limit = rule.map(|r| r.limit);
        let pool = limit.map(|l| Pool::of(l, rlqs.settings.reserve));
        let charge = self.engine.shared().assignment_charge(key, now);
        let assigned: u64 = charge
            .held
            .values()
            .fold(0u64, |sum, &r| sum.saturating_add(r));
        let gone: u64 = charge
            .held
            .iter()
            .filter(|(proxy, _)| !state.subscribers.contains_key(proxy))
            .fold(0u64, |sum, (_, &r)| sum.saturating_add(r));

        let mut proxies: Vec<ProxyView> = state
            .subscribers
            .iter()
            .map(|(&id, s)| {
                let latest = charge.latest.get(&id);
                ProxyView {
                    id: id.to_string(),
                    stream: s.stream.to_string(),
                    peer: hub
                        .peers
                        .get(&s.stream)
                        .copied()
                        .flatten()
                        .map(|a| a.to_string()),
                    share_per_second: per_second(latest.map_or(0, |g| g.rate)),
                    max_tokens: latest.map(|g| g.max_tokens),
                    expires_in_ms: latest.map(|g| ms(g.expires_at.saturating_sub(now))),
                    share_age_ms: latest.map(|g| ms(now.saturating_sub(g.since))),
                    demand_per_second: per_second(s.demand),
                    allowed_per_second: per_second(s.allowed),
                    denied_per_second: per_second(s.denied),
                    last_report_ms_ago: ms(now.saturating_sub(s.last_report)),
                }
            })
            .collect();
        proxies.sort_by(|a, b| {
            b.share_per_second
                .total_cmp(&a.share_per_second)
                .then_with(|| b.demand_per_second.total_cmp(&a.demand_per_second))
        });
        let proxies_total = proxies.len();
        proxies.truncate(max_proxies);

        let (requests, window) = limit.map_or((0, SECOND), |l| l.rate());
        let assignable = pool.map_or(0, |p| p.rate);
        BucketView {
            domain: state.domain.clone(),
            rule: state.rule.clone(),
            bucket_id,
            limit: limit.map(|l| LimitView {
                requests,
                window_ms: window as f64 / 1e6,
                burst: match l {
                    QuotaLimit::TokenBucket { burst, .. } => Some(burst),
                    QuotaLimit::RequestsPerWindow { .. } => None,
                },
            }),
            limit_per_second: requests as f64 * SECOND as f64 / window.max(1) as f64,
            assignable_per_second: per_second(assignable),
            assigned_per_second: per_second(assigned),
            unassigned_per_second: per_second(assignable.saturating_sub(assigned)),
            held_by_gone_streams_per_second: per_second(gone),
            reserve_tokens: pool.map_or(0, |p| p.tokens),
            reserve_tokens_free: pool.map_or(0, |p| p.tokens.saturating_sub(charge.tokens)),
            demand_per_second: per_second(demand),
            fresh_grants_last_minute: churn_in_window(&state.churn, now),
            proxies_total,
            proxies_left_out: proxies_total - proxies.len(),
            proxies,
        }
    }
}

fn settings_view(rlqs: &RlqsPolicy) -> SettingsView {
    let s = rlqs.settings;
    SettingsView {
        interval_ms: s.interval as f64 / 1e6,
        ttl_ms: s.ttl as f64 / 1e6,
        reserve: s.reserve,
        floor: s.floor,
        abandon_after: s.abandon_after,
        max_buckets: s.max_buckets,
        max_buckets_per_stream: s.max_buckets_per_stream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_counts_the_last_minute_in_bounded_slots() {
        let mut churn = VecDeque::new();
        let t0 = 1_000 * SECOND;
        for s in 0..200 {
            // Rounds four times a second, one fresh grant each.
            for q in 0..4 {
                note_churn(&mut churn, t0 + s * SECOND + q * SECOND / 4, 1);
            }
            assert!(churn.len() <= (CHURN_SECONDS / CHURN_SLOT + 1) as usize);
        }
        let now = t0 + 199 * SECOND;
        let got = churn_in_window(&churn, now);
        // A minute of rounds, give or take one slot.
        assert!((240..=240 + 4 * CHURN_SLOT).contains(&got), "{got}");
        // Quiet rounds age it out.
        let later = now + 2 * CHURN_SECONDS * SECOND;
        note_churn(&mut churn, later, 0);
        assert_eq!(churn_in_window(&churn, later), 0);
        assert!(churn.is_empty());
    }
}
