//! Envoy RLQS (issue 16) against real `quorate` processes over real gRPC, with a fleet
//! simulator built from Envoy's own protos (envoy-types).
//!
//! Each simulated proxy behaves like Envoy's `rate_limit_quota` filter as its docs
//! describe: one stream per domain, its first report subscribes a bucket, it reports
//! `num_requests_allowed/denied` and `time_elapsed` every reporting interval, enforces
//! the assignment it holds (blanket rules; token buckets refilled continuously, a new
//! bucket starting full; a same-strategy assignment only extends the TTL), denies when
//! it has no assignment or the assignment expired (`no_assignment_behavior` and
//! `expired_assignment_behavior` set to deny-all), drops a bucket on `abandon_action`,
//! and reconnects after a stream error, following the leader hint. Requests arrive
//! evenly paced at each proxy's demand.
//!
//! Ten proxies with Zipf-skewed demand (twice the limit in total) share one global limit
//! of 2000/s (its 5 % reserve, 100 tokens, affords 2-token buckets for 10 proxies). Measured and asserted:
//! admitted in any sliding window ≤ the limit (overshoot 0), utilisation ≥ 90 % while
//! demand exceeds the limit, a proxy whose demand rises holds its fair share within 3
//! reporting intervals, no overshoot across a leader SIGKILL, and hostile streams get
//! clear errors without hurting the node.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use quorate_e2e::{Cluster, NodeOptions};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// The global limit: requests per second across the fleet.
const LIMIT: u64 = 2000;
const WINDOW_MS: usize = 1000;
/// `rlqs.interval` and the proxies' reporting interval.
const INTERVAL: Duration = Duration::from_millis(250);
const PROXIES: usize = 10;
/// Total fleet demand: twice the limit, Zipf (s = 1) over the proxies.
const DEMAND: f64 = 2.0 * LIMIT as f64;
const DOMAIN: &str = "fleet";
/// The start-up transient left out of the utilisation check: proxies begin with no share
/// and the leader learns their demand from their second report on.
const WARM_UP_MS: usize = 3_000;

const POLICY: &str = r#"
rlqs:
  interval: 250ms
  max_buckets_per_stream: 50
  max_buckets: 200
  domains:
    - domain: fleet
      buckets:
        - name: api
          bucket_id: [{key: name, value: api}]
          rate_limit: {requests_per_unit: 2000, unit: second}
        - name: per_tenant
          bucket_id: [{key: tenant}]
          rate_limit: {requests_per_unit: 10, unit: second}
"#;

/// One RLQS test at a time: they measure timing on a shared 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn options() -> NodeOptions {
    NodeOptions {
        policy: Some(POLICY.into()),
        election_timeout_ms: 200,
        ..NodeOptions::default()
    }
}

fn bucket(pairs: &[(&str, &str)]) -> BucketId {
    BucketId {
        bucket: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn pb(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn std_duration(d: &PbDuration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

// === the simulated Envoy ===

#[derive(Debug, Clone, Copy, PartialEq)]
enum Strat {
    Allow,
    Deny,
    /// Refill rate (tokens/s) and capacity.
    Bucket {
        rate: f64,
        max: f64,
    },
}

#[derive(Debug)]
struct Assignment {
    strat: Strat,
    expires: Instant,
    tokens: f64,
    last: Instant,
}

/// One proxy's enforcement state and counters since its last report.
#[derive(Debug, Default)]
struct ProxyState {
    assignment: Option<Assignment>,
    allowed: u64,
    denied: u64,
}

impl ProxyState {
    /// Envoy's rules for a pushed assignment: the same strategy while active only
    /// extends the TTL; anything else replaces it with a fresh (full) bucket.
    fn assign(&mut self, strat: Strat, ttl: Duration, now: Instant) {
        match &mut self.assignment {
            Some(a) if a.strat == strat && now < a.expires => a.expires = now + ttl,
            slot => {
                let tokens = match strat {
                    Strat::Bucket { max, .. } => max,
                    _ => 0.0,
                };
                *slot = Some(Assignment {
                    strat,
                    expires: now + ttl,
                    tokens,
                    last: now,
                })
            }
        }
    }

    /// Decides one request at `t` (never earlier than the assignment's last change);
    /// returns whether it was admitted and the instant it was decided.
    fn decide(&mut self, t: Instant) -> (bool, Instant) {
        let (allowed, at) = match &mut self.assignment {
            None => (false, t),
            Some(a) => {
                let t = t.max(a.last);
                if t >= a.expires {
                    (false, t)
                } else {
                    match a.strat {
                        Strat::Allow => (true, t),
                        Strat::Deny => (false, t),
                        Strat::Bucket { rate, max } => {
                            a.tokens = (a.tokens + (t - a.last).as_secs_f64() * rate).min(max);
                            a.last = t;
                            if a.tokens >= 1.0 {
                                a.tokens -= 1.0;
                                (true, t)
                            } else {
                                (false, t)
                            }
                        }
                    }
                }
            }
        };
        if allowed {
            self.allowed += 1;
        } else {
            self.denied += 1;
        }
        (allowed, at)
    }
}

/// What the test reads from a proxy while it runs.
#[derive(Debug, Default)]
struct ProxyStats {
    /// Demand in milli-requests per second (the test changes it).
    demand: AtomicU64,
    /// The refill rate of the token bucket last assigned, milli-tokens per second.
    granted: AtomicU64,
    assignments: AtomicU64,
    reports: AtomicU64,
    reconnects: AtomicU64,
}

/// Ten proxies and the fleet-wide record of admissions per millisecond.
struct Fleet {
    start: Instant,
    stats: Vec<Arc<ProxyStats>>,
    admitted: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    fn start(addrs: Vec<SocketAddr>, demands: &[f64]) -> Fleet {
        let start = Instant::now();
        let admitted = Arc::new(Mutex::new(vec![0u32; 120_000]));
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::new();
        let mut tasks = Vec::new();
        for (i, &d) in demands.iter().enumerate() {
            let s = Arc::new(ProxyStats::default());
            s.demand.store((d * 1000.0) as u64, Ordering::Relaxed);
            let state = Arc::new(Mutex::new(ProxyState::default()));
            tasks.push(tokio::spawn(traffic(
                Arc::clone(&state),
                Arc::clone(&s),
                Arc::clone(&admitted),
                start,
                Arc::clone(&stop),
            )));
            tasks.push(tokio::spawn(connection(
                i,
                addrs.clone(),
                state,
                Arc::clone(&s),
                Arc::clone(&stop),
            )));
            stats.push(s);
        }
        Fleet {
            start,
            stats,
            admitted,
            stop,
            tasks,
        }
    }

    async fn stop(self) -> Vec<u32> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let slots = self.admitted.lock().unwrap().clone();
        slots
    }

    fn elapsed_ms(&self) -> usize {
        self.start.elapsed().as_millis() as usize
    }
}

/// Paced requests at the proxy's demand, decided locally.
async fn traffic(
    state: Arc<Mutex<ProxyState>>,
    stats: Arc<ProxyStats>,
    admitted: Arc<Mutex<Vec<u32>>>,
    start: Instant,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        let demand = stats.demand.load(Ordering::Relaxed) as f64 / 1000.0;
        if demand <= 0.0 {
            next = now;
            continue;
        }
        let gap = Duration::from_secs_f64(1.0 / demand);
        let mut decided = Vec::new();
        {
            let mut s = state.lock().unwrap();
            while next <= now {
                let (ok, at) = s.decide(next);
                if ok {
                    decided.push(at);
                }
                next += gap;
            }
        }
        let mut slots = admitted.lock().unwrap();
        for at in decided {
            let ms = (at - start).as_millis() as usize;
            if let Some(slot) = slots.get_mut(ms) {
                *slot += 1;
            }
        }
    }
}

/// The stream: subscribe, report every interval, apply pushes; reconnect on errors.
async fn connection(
    index: usize,
    addrs: Vec<SocketAddr>,
    state: Arc<Mutex<ProxyState>>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
) {
    let id = bucket(&[("name", "api")]);
    let mut target: String = format!("http://{}", addrs[index % addrs.len()]);
    let mut next_node = index;
    while !stop.load(Ordering::Relaxed) {
        let outcome = serve_stream(&target, &id, &state, &stats, &stop).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
        target = match outcome.and_then(|s| {
            s.metadata()
                .get("x-quorate-leader")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!("http://{v}"))
        }) {
            Some(leader) => leader,
            None => {
                next_node += 1;
                format!("http://{}", addrs[next_node % addrs.len()])
            }
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One stream's life; returns the status that ended it, if any.
async fn serve_stream(
    target: &str,
    id: &BucketId,
    state: &Mutex<ProxyState>,
    stats: &ProxyStats,
    stop: &AtomicBool,
) -> Option<tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .await
        .ok()?;
    let mut client = RateLimitQuotaServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    let mut last_report = Instant::now();
    let report = |last: &mut Instant, first: bool| {
        let now = Instant::now();
        let mut s = state.lock().unwrap();
        let usage = BucketQuotaUsage {
            bucket_id: Some(id.clone()),
            time_elapsed: Some(pb((now - *last).max(Duration::from_millis(1)))),
            num_requests_allowed: std::mem::take(&mut s.allowed),
            num_requests_denied: std::mem::take(&mut s.denied),
        };
        *last = now;
        RateLimitQuotaUsageReports {
            domain: if first { DOMAIN.into() } else { String::new() },
            bucket_quota_usages: vec![usage],
        }
    };
    tx.send(report(&mut last_report, true)).await.ok()?;
    stats.reports.fetch_add(1, Ordering::Relaxed);
    let mut responses = match client
        .stream_rate_limit_quotas(ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => return Some(status),
    };
    let mut tick = tokio::time::interval_at(Instant::now() + INTERVAL, INTERVAL);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(report(&mut last_report, false)).await.is_err() {
                    return None;
                }
                stats.reports.fetch_add(1, Ordering::Relaxed);
            }
            message = responses.message() => match message {
                Ok(Some(response)) => apply(response, state, stats),
                Ok(None) => return None,
                Err(status) => return Some(status),
            },
        }
    }
}

fn apply(response: RateLimitQuotaResponse, state: &Mutex<ProxyState>, stats: &ProxyStats) {
    let now = Instant::now();
    let mut s = state.lock().unwrap();
    for action in response.bucket_action {
        match action.bucket_action {
            Some(Action::QuotaAssignmentAction(a)) => {
                let ttl = a
                    .assignment_time_to_live
                    .as_ref()
                    .map_or(Duration::from_secs(3600), std_duration);
                let strat = match a.rate_limit_strategy.and_then(|r| r.strategy) {
                    Some(Strategy::BlanketRule(r)) if r == BlanketRule::AllowAll as i32 => {
                        Strat::Allow
                    }
                    Some(Strategy::TokenBucket(tb)) => {
                        let per_fill = tb.tokens_per_fill.map_or(1, |v| v.value) as f64;
                        let every = tb.fill_interval.as_ref().map(std_duration).unwrap();
                        Strat::Bucket {
                            rate: per_fill / every.as_secs_f64(),
                            max: f64::from(tb.max_tokens),
                        }
                    }
                    _ => Strat::Deny,
                };
                let granted = match strat {
                    Strat::Bucket { rate, .. } => (rate * 1000.0) as u64,
                    _ => 0,
                };
                stats.granted.store(granted, Ordering::Relaxed);
                stats.assignments.fetch_add(1, Ordering::Relaxed);
                s.assign(strat, ttl, now);
            }
            Some(Action::AbandonAction(_)) => s.assignment = None,
            None => {}
        }
    }
}

// === measurements ===

/// The most admitted in any `WINDOW_MS` window (sliding by 1 ms) over `slots[from..to]`.
fn max_window(slots: &[u32], from: usize, to: usize) -> u64 {
    let to = to.min(slots.len());
    let mut sum: u64 = 0;
    let mut best = 0;
    for i in from..to {
        sum += u64::from(slots[i]);
        if i >= from + WINDOW_MS {
            sum -= u64::from(slots[i - WINDOW_MS]);
        }
        best = best.max(sum);
    }
    best
}

/// Admitted in each whole window `[k, k+1)` seconds within `from..to` ms.
fn windows(slots: &[u32], from: usize, to: usize) -> Vec<u64> {
    (from / WINDOW_MS..to / WINDOW_MS)
        .map(|k| {
            slots[k * WINDOW_MS..(k + 1) * WINDOW_MS]
                .iter()
                .map(|&n| u64::from(n))
                .sum()
        })
        .collect()
}

fn zipf(total: f64, n: usize) -> Vec<f64> {
    let h: f64 = (1..=n).map(|i| 1.0 / i as f64).sum();
    (1..=n).map(|i| total / (i as f64 * h)).collect()
}

fn report_load(fleet_stats: &[Arc<ProxyStats>], seconds: f64) {
    let sum = |f: fn(&ProxyStats) -> u64| fleet_stats.iter().map(|s| f(s)).sum::<u64>();
    eprintln!(
        "fleet load: {:.0} assignments/s received, {:.0} reports/s sent, {} reconnects",
        sum(|s| s.assignments.load(Ordering::Relaxed)) as f64 / seconds,
        sum(|s| s.reports.load(Ordering::Relaxed)) as f64 / seconds,
        sum(|s| s.reconnects.load(Ordering::Relaxed)),
    );
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_shares_one_limit_without_overshoot_and_follows_demand() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::single(options()).await.unwrap();
    let node = cluster.node(1);
    let demands = zipf(DEMAND, PROXIES);
    let fleet = Fleet::start(vec![node.grpc], &demands);

    // Warm up, then the smallest proxy's demand rises to the largest one's.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let riser = PROXIES - 1;
    let new_demand = demands[0];
    let rise_at = Instant::now();
    let rise_ms = fleet.elapsed_ms();
    fleet.stats[riser]
        .demand
        .store((new_demand * 1000.0) as u64, Ordering::Relaxed);
    let total: f64 = demands.iter().sum::<f64>() - demands[riser] + new_demand;
    // The rate pool (limit minus the 5 % reserve), divided in proportion to demand.
    let pool = LIMIT as f64 * 0.95;
    let fair = pool * new_demand / total;
    let mut converged = None;
    while rise_at.elapsed() < Duration::from_secs(3) {
        let granted = fleet.stats[riser].granted.load(Ordering::Relaxed) as f64 / 1000.0;
        if granted >= 0.9 * fair {
            converged = Some(rise_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let end_ms = fleet.elapsed_ms();
    let metrics = quorate_e2e::api::metrics(node.http).await.unwrap();
    let stats = fleet.stats.clone();
    let slots = fleet.stop().await;
    report_load(&stats, end_ms as f64 / 1000.0);
    // The leader's view: one bucket, ten proxies on it, shares changed and extended.
    assert_eq!(
        quorate_e2e::api::series(&metrics, "quorate_rlqs_buckets"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        quorate_e2e::api::series(&metrics, "quorate_rlqs_proxies_per_bucket_max"),
        Some(PROXIES as f64)
    );
    let fresh = quorate_e2e::api::series(&metrics, "quorate_rlqs_grants_total{kind=\"fresh\"}")
        .unwrap_or(0.0);
    let extended =
        quorate_e2e::api::series(&metrics, "quorate_rlqs_grants_total{kind=\"extended\"}")
            .unwrap_or(0.0);
    eprintln!("share churn: {fresh} changed, {extended} extended");
    assert!(fresh >= PROXIES as f64 && extended > fresh, "{metrics}");

    let peak = max_window(&slots, 0, end_ms);
    // From 3 s on: the fleet starts with no shares and demand unknown to the leader.
    let all = windows(&slots, 0, end_ms);
    // …and the windows the rise falls in: capacity taken from the others is reused only
    // when their higher shares expire, so those windows dip (reported, not asserted).
    let settled = rise_ms + 3 * INTERVAL.as_millis() as usize;
    let steady: Vec<u64> = all
        .iter()
        .enumerate()
        .filter(|(k, _)| {
            let (from, to) = (k * WINDOW_MS, (k + 1) * WINDOW_MS);
            from >= WARM_UP_MS && (to <= rise_ms || from >= settled)
        })
        .map(|(_, &n)| n)
        .collect();
    let worst = steady.iter().copied().min().unwrap_or(0);
    eprintln!(
        "overshoot {} (peak sliding-window admitted {peak} of {LIMIT}); whole windows: {all:?} (rise at {rise_ms} ms); \
         riser fair share {fair:.0}/s reached in {converged:?} (interval {INTERVAL:?})",
        peak.saturating_sub(LIMIT)
    );
    assert!(
        peak <= LIMIT,
        "admitted {peak} in one window, limit {LIMIT}"
    );
    assert!(
        worst * 10 >= LIMIT * 9,
        "utilisation below 90 % with demand at twice the limit: {steady:?}"
    );
    let converged = converged.expect("the riser never reached 90 % of its fair share");
    assert!(
        converged <= 3 * INTERVAL,
        "the riser reached its fair share after {converged:?}, more than 3 intervals"
    );

    bad_streams_get_clear_errors(node.grpc).await;
    let metrics = quorate_e2e::api::metrics(node.http).await.unwrap();
    for reason in [
        "unknown_domain",
        "domain_changed",
        "malformed",
        "too_many_buckets",
    ] {
        let series = format!("quorate_rlqs_streams_refused_total{{reason=\"{reason}\"}}");
        assert!(
            quorate_e2e::api::series(&metrics, &series).unwrap_or(0.0) >= 1.0,
            "{series}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_kill_mid_run_causes_no_overshoot() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::three(options()).await.unwrap();
    let leader = cluster.wait_leader(&[1, 2, 3]).await.unwrap();
    let addrs: Vec<SocketAddr> = cluster.nodes().iter().map(|n| n.grpc).collect();

    // A follower refuses the stream and names the leader.
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let refused = attack(
        cluster.node(follower).grpc,
        vec![reports(DOMAIN, vec![bucket(&[("name", "api")])])],
    )
    .await
    .expect_err("a follower must not serve RLQS");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let hint = refused.metadata().get("x-quorate-leader").unwrap();
    assert_eq!(
        hint.to_str().unwrap(),
        cluster.node(leader).grpc.to_string()
    );
    let fleet = Fleet::start(addrs, &zipf(DEMAND, PROXIES));

    tokio::time::sleep(Duration::from_secs(4)).await;
    let kill_ms = fleet.elapsed_ms();
    cluster.kill(leader);
    let survivors = cluster.running();
    let new_leader = cluster.wait_leader(&survivors).await.unwrap();
    eprintln!("leader {leader} killed at {kill_ms} ms; new leader {new_leader}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let end_ms = fleet.elapsed_ms();
    let stats = fleet.stats.clone();
    let slots = fleet.stop().await;
    report_load(&stats, end_ms as f64 / 1000.0);

    let peak = max_window(&slots, 0, end_ms);
    let per_window = windows(&slots, 0, end_ms);
    eprintln!("peak sliding-window admitted {peak} of {LIMIT}; whole windows: {per_window:?}");
    assert!(
        peak <= LIMIT,
        "admitted {peak} in one window across the failover, limit {LIMIT}"
    );
    // Service came back: the last whole window is at full utilisation again.
    let last = *per_window.last().unwrap();
    assert!(
        last * 10 >= LIMIT * 9,
        "utilisation did not recover after the failover: {per_window:?}"
    );
}

/// Opens a stream, sends `reports` and returns the status that ends it (or `None` if the
/// server answered normally within a second).
async fn attack(
    addr: SocketAddr,
    reports: Vec<RateLimitQuotaUsageReports>,
) -> Result<Vec<RateLimitQuotaResponse>, tonic::Status> {
    let mut client = RateLimitQuotaServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(reports.len().max(1));
    for r in reports {
        tx.send(r).await.unwrap();
    }
    let mut stream = client
        .stream_rate_limit_quotas(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Ok(None)) | Err(_) => return Ok(got),
            Ok(Err(status)) => return Err(status),
        }
    }
}

fn usage(id: BucketId) -> BucketQuotaUsage {
    BucketQuotaUsage {
        bucket_id: Some(id),
        time_elapsed: Some(pb(Duration::from_millis(250))),
        num_requests_allowed: 1,
        num_requests_denied: 0,
    }
}

fn reports(domain: &str, ids: Vec<BucketId>) -> RateLimitQuotaUsageReports {
    RateLimitQuotaUsageReports {
        domain: domain.into(),
        bucket_quota_usages: ids.into_iter().map(usage).collect(),
    }
}

async fn bad_streams_get_clear_errors(addr: SocketAddr) {
    let api = || bucket(&[("name", "api")]);
    let expect =
        |r: Result<Vec<RateLimitQuotaResponse>, tonic::Status>, code: Code, words: &str| {
            let status = r.expect_err("the stream should have failed");
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{status:?}");
        };

    expect(
        attack(addr, vec![reports("nope", vec![api()])]).await,
        Code::NotFound,
        "unknown RLQS domain",
    );
    expect(
        attack(addr, vec![reports("", vec![api()])]).await,
        Code::InvalidArgument,
        "must name its domain",
    );
    expect(
        attack(
            addr,
            vec![reports(DOMAIN, vec![api()]), reports("other", vec![api()])],
        )
        .await,
        Code::InvalidArgument,
        "domain changed",
    );
    expect(
        attack(addr, vec![reports(DOMAIN, vec![bucket(&[])])]).await,
        Code::InvalidArgument,
        "bucket_id",
    );
    expect(
        attack(addr, vec![reports(DOMAIN, vec![bucket(&[("name", "")])])]).await,
        Code::InvalidArgument,
        "bucket_id",
    );
    let long = "x".repeat(300);
    expect(
        attack(
            addr,
            vec![reports(DOMAIN, vec![bucket(&[("name", &long)])])],
        )
        .await,
        Code::InvalidArgument,
        "bucket_id",
    );
    let mut no_time = usage(api());
    no_time.time_elapsed = None;
    expect(
        attack(
            addr,
            vec![RateLimitQuotaUsageReports {
                domain: DOMAIN.into(),
                bucket_quota_usages: vec![no_time],
            }],
        )
        .await,
        Code::InvalidArgument,
        "time_elapsed",
    );
    expect(
        attack(addr, vec![reports(DOMAIN, vec![])]).await,
        Code::InvalidArgument,
        "bucket_quota_usages",
    );
    // A huge report: 2 MiB in one message.
    let huge = "v".repeat(2 << 20);
    let huge = attack(
        addr,
        vec![reports(DOMAIN, vec![bucket(&[("name", &huge)])])],
    )
    .await;
    let status = huge.expect_err("a 2 MiB report must be refused");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    // A flood of buckets on one stream: per-value buckets past max_buckets_per_stream.
    let flood: Vec<BucketId> = (0..60)
        .map(|i| bucket(&[("tenant", &format!("t{i}"))]))
        .collect();
    expect(
        attack(addr, vec![reports(DOMAIN, flood)]).await,
        Code::ResourceExhausted,
        "max_buckets_per_stream",
    );
    // A flood across streams: past the node-wide max_buckets (200), held open together.
    let mut held = Vec::new();
    let mut refused = None;
    for s in 0..6 {
        let ids: Vec<BucketId> = (0..45)
            .map(|i| bucket(&[("tenant", &format!("s{s}-{i}"))]))
            .collect();
        let mut client = RateLimitQuotaServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(2);
        tx.send(reports(DOMAIN, ids)).await.unwrap();
        let mut stream = client
            .stream_rate_limit_quotas(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // Wait until the leader has seen the report (its first push), or it refuses.
        match tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            Ok(Err(status)) => {
                refused = Some(status);
                break;
            }
            _ => held.push((tx, stream)),
        }
    }
    let status = refused.expect("the node-wide bucket cap was never reached");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_buckets"), "{status:?}");
    drop(held);

    // Unmatched buckets are answered ALLOW_ALL at once, like unmatched RLS descriptors;
    // and after all that, a good stream still gets its share.
    let answers = attack(addr, vec![reports(DOMAIN, vec![bucket(&[("other", "x")])])])
        .await
        .unwrap();
    let first = answers.first().expect("an answer for an unmatched bucket");
    assert!(matches!(
        first.bucket_action[0].bucket_action,
        Some(Action::QuotaAssignmentAction(_))
    ));
    let answers = attack(addr, vec![reports(DOMAIN, vec![api()])])
        .await
        .unwrap();
    let shared = answers.iter().flat_map(|r| &r.bucket_action).any(|a| {
        matches!(
            &a.bucket_action,
            Some(Action::QuotaAssignmentAction(q))
                if matches!(q.rate_limit_strategy.and_then(|s| s.strategy), Some(Strategy::TokenBucket(_)))
        )
    });
    assert!(shared, "no token bucket share: {answers:?}");
}

#[tokio::test]
async fn policy_test_shows_the_bucket_a_sample_falls_in() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, POLICY).unwrap();
    let run = |sample: &str| {
        let out = std::process::Command::new(quorate_e2e::bin::quorate())
            .args(["policy", "test", "--json", "-f"])
            .arg(&file)
            .args(["--rlqs", sample])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["rlqs"][0].clone()
    };
    let tenant = run(r#"{"domain":"fleet","bucket_id":{"tenant":"acme"}}"#);
    assert_eq!(tenant["rule"], "per_tenant", "{tenant}");
    assert_eq!(tenant["bucket"], "fleet/per_tenant/tenant=acme", "{tenant}");
    // 10/s with a 5 % reserve: 1 token kept back, 9/s shared.
    assert_eq!(tenant["rate_pool"], 9_000, "{tenant}");
    let unmatched = run(r#"{"domain":"fleet","bucket_id":{"other":"x"}}"#);
    assert!(unmatched.get("rule").is_none(), "{unmatched}");
    let unknown = run(r#"{"domain":"nope","bucket_id":{"name":"api"}}"#);
    assert!(
        unknown["refused"].as_str().unwrap().contains("unknown"),
        "{unknown}"
    );
    // A malformed sample is refused with its number.
    let out = std::process::Command::new(quorate_e2e::bin::quorate())
        .args(["policy", "test", "-f"])
        .arg(&file)
        .args(["--rlqs", r#"{"domain":"fleet"}"#])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--rlqs #1"),
        "{out:?}"
    );
}
