//! Simulated Envoy proxies running the `rate_limit_quota` filter against the simulated
//! cluster's RLQS service (Envoy RLQS, issue 16).
//!
//! Each proxy behaves like the filter as Envoy documents it (the same model as the
//! end-to-end fleet in `tests/tests/rlqs.rs`): one stream per domain; its reports
//! subscribe both workload buckets and carry `num_requests_allowed/denied` and
//! `time_elapsed` every reporting interval; it enforces the assignment it holds (blanket
//! rules; token buckets refilled `tokens_per_fill` per `fill_interval`, a new bucket
//! starting full; a same-strategy assignment only extends the TTL), denies with no
//! assignment or an expired one (`no_assignment_behavior` / `expired_assignment_behavior`
//! deny-all), drops a bucket on `abandon_action`, and reconnects after a stream ends,
//! following the `x-quorate-leader` hint. Assignments outlive streams, as in Envoy.
//!
//! The stream is real tonic: the generated Envoy client calls the node's
//! `RateLimitQuotaServiceServer` in process (request encoding, the server's decoder with
//! its message-size cap, the service, response encoding), so everything from the
//! service's first byte to the committed `Assign` entry is quorate's own code. A crashed
//! node's streams break (the proxy sees its connection reset); partitions cut Raft links
//! only, never a proxy's connection.
//!
//! Everything a proxy admits and every assignment it holds is recorded for the checker
//! ([`crate::check::check_rlqs`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::{BlanketRule, Strategy};
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Action;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use quorate_algorithms::{Nanos, SECOND};
use quorate_server::raft::NodeId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::cluster::Cluster;

/// The RLQS domain the proxies use.
pub const DOMAIN: &str = "sim";
/// `rlqs.interval` and the proxies' reporting interval.
pub const INTERVAL: Duration = Duration::from_millis(250);
/// `rlqs.reserve` (the default): the fraction of each limit kept as the token pool.
pub const RESERVE: f64 = 0.05;
/// How often a proxy decides the requests that came due (they keep their own instants).
const TICK: Duration = Duration::from_millis(10);
/// How soon a proxy notices that the node it streams to crashed (its connection reset).
const RESET_CHECK: Duration = Duration::from_millis(20);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// One bucket of the fleet's workload and the limit the policy binds it to.
#[derive(Debug)]
pub struct FleetBucket {
    /// The policy rule's name (and the `name` entry of the bucket id).
    pub rule: &'static str,
    /// Requests per second, fleet-wide.
    pub limit: u64,
    /// `Some(burst)`: a token-bucket limit; `None`: requests per 1 s window.
    pub burst: Option<u64>,
}

/// A requests-per-window bucket and a token-bucket bucket.
pub const BUCKETS: &[FleetBucket] = &[
    FleetBucket {
        rule: "fleet",
        limit: 1000,
        burst: None,
    },
    FleetBucket {
        rule: "burst",
        limit: 500,
        burst: Some(50),
    },
];

/// The `rlqs:` policy section for [`BUCKETS`].
pub fn policy_section() -> String {
    let mut text = format!(
        "rlqs:\n  interval: {}ms\n  domains:\n    - domain: {DOMAIN}\n      buckets:\n",
        INTERVAL.as_millis()
    );
    for b in BUCKETS {
        let limit = match b.burst {
            None => format!("{{requests_per_unit: {}, unit: second}}", b.limit),
            Some(burst) => format!(
                "{{requests_per_unit: {}, unit: second, algorithm: token_bucket, burst: {burst}}}",
                b.limit
            ),
        };
        text.push_str(&format!(
            "        - name: {}\n          bucket_id: [{{key: name, value: {}}}]\n          rate_limit: {limit}\n",
            b.rule, b.rule
        ));
    }
    text
}

/// What the leader may hand out for `bucket`, computed here from the policy's numbers
/// (not by quorate's code): `(rate pool in milli-requests/s, token pool)`.
pub fn pools(bucket: &FleetBucket) -> (u64, u64) {
    let mut tokens = ((bucket.limit as f64 * RESERVE).ceil() as u64)
        .max(1)
        .min(bucket.limit);
    if let Some(burst) = bucket.burst {
        tokens = tokens.min(burst);
    }
    ((bucket.limit - tokens) * 1000, tokens)
}

/// An assignment as a proxy enforces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strat {
    Allow,
    Deny,
    Bucket {
        max: u32,
        per_fill: u32,
        /// Nanoseconds per fill.
        every: Nanos,
    },
}

impl Strat {
    /// The rate it admits at, milli-requests per second (`u64::MAX`: unlimited).
    fn milli_rate(self) -> u64 {
        match self {
            Strat::Allow => u64::MAX,
            Strat::Deny => 0,
            Strat::Bucket {
                per_fill, every, ..
            } => {
                let r = u128::from(per_fill) * 1000 * u128::from(SECOND) / u128::from(every.max(1));
                u64::try_from(r).unwrap_or(u64::MAX)
            }
        }
    }
}

#[derive(Debug)]
struct Assignment {
    strat: Strat,
    /// Simulated nanoseconds since the run started.
    expires: Nanos,
    tokens: u32,
    /// The last fill (or the bucket's start).
    filled: Nanos,
    /// Index of its record in [`FleetRecord::holdings`].
    holding: usize,
}

/// One assignment a proxy held, for the checker: `[from, until)` in simulated ns.
#[derive(Debug, Clone)]
pub struct Holding {
    pub proxy: usize,
    pub bucket: usize,
    pub from: Nanos,
    pub until: Nanos,
    /// Milli-requests per second (`u64::MAX` for allow-all).
    pub rate: u64,
}

/// Everything the fleet did.
#[derive(Debug, Default)]
pub struct FleetRecord {
    /// Per bucket: simulated ns of every admitted request, in order per proxy.
    pub admitted: Vec<Vec<Nanos>>,
    /// Per bucket: requests decided (admitted or denied).
    pub decided: Vec<u64>,
    pub holdings: Vec<Holding>,
    pub assignments: u64,
    pub reports: u64,
    pub reconnects: u64,
    /// Simulated ns at which the workload stopped.
    pub end: Nanos,
}

/// The fleet's shared record.
#[derive(Debug, Clone)]
pub struct Fleet {
    record: Arc<Mutex<FleetRecord>>,
    start: Instant,
}

impl Fleet {
    pub fn new(start: Instant) -> Fleet {
        Fleet {
            record: Arc::new(Mutex::new(FleetRecord {
                admitted: vec![Vec::new(); BUCKETS.len()],
                decided: vec![0; BUCKETS.len()],
                ..FleetRecord::default()
            })),
            start,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FleetRecord) -> T) -> T {
        let mut guard = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    fn now(&self) -> Nanos {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks the end of the workload: the proxies stop deciding now.
    pub fn stopped(&self) {
        let end = self.now();
        self.with(|r| r.end = end);
    }

    /// The record, with every holding still open closed when the proxies stopped.
    pub fn finish(&self) -> FleetRecord {
        let end = self.with(|r| r.end);
        let end = if end == 0 { self.now() } else { end };
        self.with(|r| {
            r.end = end;
            for h in &mut r.holdings {
                h.until = h.until.min(end);
            }
            std::mem::take(r)
        })
    }
}

/// Demand of proxy `index` of `proxies` for a bucket: Zipf (s = 1), twice the limit in
/// total, in requests per second.
pub fn demand(bucket: &FleetBucket, index: usize, proxies: usize) -> f64 {
    let h: f64 = (1..=proxies).map(|i| 1.0 / i as f64).sum();
    2.0 * bucket.limit as f64 / ((index + 1) as f64 * h)
}

/// When (simulated ns since the start) the smallest proxy's demand rises to the largest
/// one's, so the checker can measure how soon the leader follows a moving demand.
pub const RISE_AT: Nanos = 3 * SECOND;

/// The proxy whose demand rises at [`RISE_AT`] (none with a single proxy).
pub fn riser(proxies: usize) -> Option<usize> {
    (proxies > 1).then(|| proxies - 1)
}

/// Demand of proxy `index` at simulated time `t`: [`demand`], with the rise.
pub fn demand_at(bucket: &FleetBucket, index: usize, proxies: usize, t: Nanos) -> f64 {
    if t >= RISE_AT && riser(proxies) == Some(index) {
        demand(bucket, 0, proxies)
    } else {
        demand(bucket, index, proxies)
    }
}

/// The riser's fair share after the rise, milli-requests per second: the rate pool in
/// proportion to demand (the policy's floor only lifts the small proxies, so this is at
/// most a few percent above what the leader aims for).
pub fn riser_fair_share(bucket: &FleetBucket, proxies: usize) -> Option<u64> {
    let riser = riser(proxies)?;
    let total: f64 = (0..proxies)
        .map(|i| demand_at(bucket, i, proxies, RISE_AT))
        .sum();
    let (rate_pool, _) = pools(bucket);
    Some((rate_pool as f64 * demand_at(bucket, riser, proxies, RISE_AT) / total) as u64)
}

/// One proxy's enforcement state and its counts since the last report.
#[derive(Debug, Default)]
struct ProxyState {
    assignments: Vec<Option<Assignment>>,
    allowed: Vec<u64>,
    denied: Vec<u64>,
}

impl ProxyState {
    fn new() -> ProxyState {
        ProxyState {
            assignments: (0..BUCKETS.len()).map(|_| None).collect(),
            allowed: vec![0; BUCKETS.len()],
            denied: vec![0; BUCKETS.len()],
        }
    }

    /// Envoy's rule for a pushed assignment: the same strategy while active only
    /// extends the TTL; anything else replaces it with a new (full) bucket.
    fn assign(&mut self, fleet: &Fleet, proxy: usize, bucket: usize, strat: Strat, ttl: Nanos) {
        let now = fleet.now();
        let expires = now.saturating_add(ttl);
        let slot = &mut self.assignments[bucket];
        fleet.with(|r| {
            r.assignments += 1;
            match slot {
                Some(a) if a.strat == strat && now < a.expires => {
                    a.expires = expires;
                    r.holdings[a.holding].until = expires;
                }
                _ => {
                    if let Some(old) = slot.take() {
                        let h = &mut r.holdings[old.holding];
                        h.until = h.until.min(now);
                    }
                    r.holdings.push(Holding {
                        proxy,
                        bucket,
                        from: now,
                        until: expires,
                        rate: strat.milli_rate(),
                    });
                    let tokens = match strat {
                        Strat::Bucket { max, .. } => max,
                        _ => 0,
                    };
                    *slot = Some(Assignment {
                        strat,
                        expires,
                        tokens,
                        filled: now,
                        holding: r.holdings.len() - 1,
                    });
                }
            }
        });
    }

    fn abandon(&mut self, fleet: &Fleet, bucket: usize) {
        let now = fleet.now();
        if let Some(old) = self.assignments[bucket].take() {
            fleet.with(|r| {
                let h = &mut r.holdings[old.holding];
                h.until = h.until.min(now);
            });
        }
    }

    /// Decides one request of `bucket` due at `t` (never earlier than the assignment's
    /// last fill); returns the instant it was admitted at, if it was.
    fn decide(&mut self, bucket: usize, t: Nanos) -> Option<Nanos> {
        let admitted = match &mut self.assignments[bucket] {
            None => None,
            Some(a) => {
                let t = t.max(a.filled);
                if t >= a.expires {
                    None
                } else {
                    match a.strat {
                        Strat::Allow => Some(t),
                        Strat::Deny => None,
                        Strat::Bucket {
                            max,
                            per_fill,
                            every,
                        } => {
                            let fills = (t - a.filled) / every.max(1);
                            let added = fills.saturating_mul(u64::from(per_fill));
                            let tokens = (u64::from(a.tokens) + added).min(u64::from(max));
                            a.tokens = u32::try_from(tokens).unwrap_or(max);
                            // A full bucket wastes the rest of the interval, as Envoy's does.
                            a.filled = if a.tokens == max {
                                t
                            } else {
                                a.filled + fills * every
                            };
                            if a.tokens >= 1 {
                                a.tokens -= 1;
                                Some(t)
                            } else {
                                None
                            }
                        }
                    }
                }
            }
        };
        if admitted.is_some() {
            self.allowed[bucket] += 1;
        } else {
            self.denied[bucket] += 1;
        }
        admitted
    }
}

/// Runs proxy `index` of `proxies` until `stop`: its traffic and its stream.
pub async fn proxy(
    cluster: Arc<Cluster>,
    fleet: Fleet,
    index: usize,
    proxies: usize,
    stop: Arc<AtomicBool>,
) {
    let state = Arc::new(Mutex::new(ProxyState::new()));
    let traffic = tokio::spawn(traffic(
        fleet.clone(),
        Arc::clone(&state),
        index,
        proxies,
        Arc::clone(&stop),
    ));
    connection(cluster, fleet, index, &state, &stop).await;
    let _ = traffic.await;
}

/// Paced requests at the proxy's demand per bucket, decided locally.
async fn traffic(
    fleet: Fleet,
    state: Arc<Mutex<ProxyState>>,
    index: usize,
    proxies: usize,
    stop: Arc<AtomicBool>,
) {
    let gaps_at = |t: Nanos| -> Vec<Nanos> {
        BUCKETS
            .iter()
            .map(|b| (SECOND as f64 / demand_at(b, index, proxies, t)) as Nanos)
            .collect()
    };
    // Demand is one step: before the rise and after it.
    let (before, after) = (gaps_at(0), gaps_at(RISE_AT));
    let mut next: Vec<Nanos> = vec![fleet.now(); BUCKETS.len()];
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(TICK).await;
        let now = fleet.now();
        let gaps = if now >= RISE_AT { &after } else { &before };
        let mut admitted: Vec<Vec<Nanos>> = vec![Vec::new(); BUCKETS.len()];
        let mut decided = vec![0u64; BUCKETS.len()];
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            for b in 0..BUCKETS.len() {
                while next[b] <= now {
                    decided[b] += 1;
                    if let Some(at) = s.decide(b, next[b]) {
                        admitted[b].push(at);
                    }
                    next[b] += gaps[b].max(1);
                }
            }
        }
        fleet.with(|r| {
            for (b, times) in admitted.into_iter().enumerate() {
                r.admitted[b].extend(times);
                r.decided[b] += decided[b];
            }
        });
    }
}

fn bucket_id(bucket: &FleetBucket) -> BucketId {
    BucketId {
        bucket: [("name".to_string(), bucket.rule.to_string())].into(),
    }
}

fn pb(nanos: Nanos) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(nanos / SECOND).unwrap_or(i64::MAX),
        nanos: (nanos % SECOND) as i32,
    }
}

fn nanos(d: &PbDuration) -> Nanos {
    u64::try_from(d.seconds)
        .unwrap_or(0)
        .saturating_mul(SECOND)
        .saturating_add(u64::try_from(d.nanos).unwrap_or(0))
}

/// The stream, reconnecting until `stop`: to the node a refusal names as leader, else to
/// a random live node.
async fn connection(
    cluster: Arc<Cluster>,
    fleet: Fleet,
    index: usize,
    state: &Mutex<ProxyState>,
    stop: &AtomicBool,
) {
    let mut preferred: Option<NodeId> = None;
    let mut last_report = fleet.now();
    while !stop.load(Ordering::Relaxed) {
        let live = cluster.live_ids();
        let target = match preferred.filter(|p| live.contains(p)) {
            Some(p) => Some(p),
            None if live.is_empty() => None,
            None => Some(*cluster.rng.pick(&live)),
        };
        let status = match target {
            Some(target) => {
                serve_stream(
                    &cluster,
                    &fleet,
                    index,
                    target,
                    state,
                    stop,
                    &mut last_report,
                )
                .await
            }
            None => None,
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        fleet.with(|r| r.reconnects += 1);
        preferred = status.and_then(|s| {
            let hint = s.metadata().get("x-quorate-leader")?.to_str().ok()?;
            let addr: std::net::SocketAddr = hint.parse().ok()?;
            Some(NodeId::from(addr.port()))
        });
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// One stream's life on node `target`; returns the status that ended it, if any.
async fn serve_stream(
    cluster: &Cluster,
    fleet: &Fleet,
    index: usize,
    target: NodeId,
    state: &Mutex<ProxyState>,
    stop: &AtomicBool,
    last_report: &mut Nanos,
) -> Option<tonic::Status> {
    let node = cluster.node(target)?;
    let incarnation = node.incarnation;
    let mut client = RateLimitQuotaServiceClient::new(node.rlqs.as_ref()?.server());
    drop(node);
    let report = |last: &mut Nanos, first: bool| {
        let now = fleet.now();
        let elapsed = now.saturating_sub(*last).max(1_000_000);
        *last = now;
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let usages = BUCKETS
            .iter()
            .enumerate()
            .map(|(b, bucket)| BucketQuotaUsage {
                bucket_id: Some(bucket_id(bucket)),
                time_elapsed: Some(pb(elapsed)),
                num_requests_allowed: std::mem::take(&mut s.allowed[b]),
                num_requests_denied: std::mem::take(&mut s.denied[b]),
            })
            .collect();
        RateLimitQuotaUsageReports {
            domain: if first { DOMAIN.into() } else { String::new() },
            bucket_quota_usages: usages,
        }
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(report(last_report, true)).await.ok()?;
    fleet.with(|r| r.reports += 1);
    let mut responses = match client
        .stream_rate_limit_quotas(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Some(status),
    };
    let mut tick = tokio::time::interval_at(Instant::now() + INTERVAL, INTERVAL);
    let mut reset = tokio::time::interval(RESET_CHECK);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        tokio::select! {
            biased;
            _ = reset.tick() => {
                // The process behind the connection died: the proxy sees a reset.
                if cluster.node(target).is_none_or(|n| n.incarnation != incarnation) {
                    return None;
                }
            }
            _ = tick.tick() => {
                if tx.send(report(last_report, false)).await.is_err() {
                    return None;
                }
                fleet.with(|r| r.reports += 1);
            }
            message = responses.message() => match message {
                Ok(Some(response)) => apply(fleet, index, response, state),
                Ok(None) => return None,
                Err(status) => return Some(status),
            },
        }
    }
}

fn apply(fleet: &Fleet, index: usize, response: RateLimitQuotaResponse, state: &Mutex<ProxyState>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    for action in response.bucket_action {
        let Some(bucket) = action.bucket_id.as_ref().and_then(|id| {
            let name = id.bucket.get("name")?;
            BUCKETS.iter().position(|b| b.rule == name)
        }) else {
            continue;
        };
        match action.bucket_action {
            Some(Action::QuotaAssignmentAction(a)) => {
                let ttl = a
                    .assignment_time_to_live
                    .as_ref()
                    .map_or(3600 * SECOND, nanos);
                let strat = match a.rate_limit_strategy.and_then(|r| r.strategy) {
                    Some(Strategy::BlanketRule(r)) if r == BlanketRule::AllowAll as i32 => {
                        Strat::Allow
                    }
                    Some(Strategy::TokenBucket(tb)) => Strat::Bucket {
                        max: tb.max_tokens,
                        per_fill: tb.tokens_per_fill.map_or(1, |v| v.value),
                        every: tb.fill_interval.as_ref().map_or(SECOND, nanos),
                    },
                    _ => Strat::Deny,
                };
                s.assign(fleet, index, bucket, strat, ttl);
            }
            Some(Action::AbandonAction(_)) => s.abandon(fleet, bucket),
            None => {}
        }
    }
}
