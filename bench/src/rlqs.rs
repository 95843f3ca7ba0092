//! `quorate-bench rlqs`: what Envoy RLQS (issue 16) costs the leader, and what it saves
//! the proxies, on real `quorate` processes.
//!
//! For every cluster size (1 node, 3 nodes), on fresh servers whose policy shares one limit
//! per bucket (`rlqs.interval` = the reporting interval, 1 s by default):
//!
//! 1. **fleet load** — for each `P×B`: P simulated proxies, each one RLQS stream (its own
//!    HTTP/2 connection) subscribing B buckets (`b = b0 … b<B-1>`, one bucket each) and
//!    reporting all B every interval, with a steady demand of 10 requests/s per bucket
//!    (so shares are extended, not changed, once settled). After a warm-up, over the
//!    measured window: report messages and bucket usages the leader absorbs per second,
//!    assignment messages and bucket assignments pushed per second (as the proxies count
//!    them), grants committed per second (the leader's `quorate_rlqs_grants_total`), and
//!    each node's CPU (user + system from `/proc`, in cores).
//! 2. **local decisions** — while the largest fleet still streams, one proxy decides
//!    requests from the token bucket it holds, as Envoy's filter does (a lock, a clock
//!    read, refill arithmetic): the time per decision (batch mean, and p50/p99 of
//!    individually timed decisions, timer reads included).
//! 3. **the same limit through RLS** — the closed loop of `quorate-bench rls` (one
//!    descriptor `k1 = k<i>` per call, i uniform over B keys, a strict RLS limit of the
//!    same requests per second per key) against the leader: calls/s and latency per
//!    decision.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use envoy_types::pb::envoy::r#type::v3::rate_limit_strategy::Strategy;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_response::bucket_action::BucketAction as Action;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_service_client::RateLimitQuotaServiceClient;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::rate_limit_quota_usage_reports::BucketQuotaUsage;
use envoy_types::pb::envoy::service::rate_limit_quota::v3::{
    BucketId, RateLimitQuotaResponse, RateLimitQuotaUsageReports,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::keys::KeySpace;
use crate::load::{new_histogram, Report};
use crate::procs::{self, TempDir};
use crate::report::{self, grouped};
use crate::suite::{self, QNode};
use crate::{parse_duration, parse_load, rls, rpc};

const RLQS_DOMAIN: &str = "fleet";
const RLS_DOMAIN: &str = "bench1";
/// Requests per second each simulated proxy reports per bucket.
const DEMAND_PER_BUCKET: u64 = 10;

/// What the run measures (its flags).
#[derive(Debug, Clone, clap::Args)]
pub struct RlqsConfig {
    #[command(flatten)]
    pub servers: suite::Servers,
    /// Cluster sizes, comma-separated (1 and/or 3).
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    /// Fleet loads as PROXIESxBUCKETS, comma-separated, measured in order.
    #[arg(long, default_value = "10x10,100x10,100x100", value_delimiter = ',', value_parser = parse_load)]
    pub loads: Vec<(usize, usize)>,
    /// Every bucket's limit (and every RLS key's), requests per second.
    #[arg(long, default_value_t = 1000)]
    pub limit: u64,
    /// `rlqs.interval` and the proxies' reporting interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Measured time per load.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Local decisions timed on one proxy (at least 1).
    #[arg(long, default_value_t = 2_000_000)]
    pub decisions: u64,
    /// RLS calls in flight for the comparison.
    #[arg(long, default_value_t = 64)]
    pub rls_concurrency: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub rls_duration: Duration,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Counts the fleet's streams keep.
#[derive(Debug, Default)]
struct FleetCounts {
    reports: AtomicU64,
    usages: AtomicU64,
    responses: AtomicU64,
    assignments: AtomicU64,
    token_buckets: AtomicU64,
    stream_errors: AtomicU64,
}

impl FleetCounts {
    fn snapshot(&self) -> [u64; 6] {
        [
            &self.reports,
            &self.usages,
            &self.responses,
            &self.assignments,
            &self.token_buckets,
            &self.stream_errors,
        ]
        .map(|a| a.load(Ordering::Relaxed))
    }
}

/// One load's measurements.
#[derive(Debug)]
struct FleetRow {
    nodes: usize,
    proxies: usize,
    buckets: usize,
    /// Per second over the window: report messages, bucket usages, response messages,
    /// bucket assignments, of which token buckets.
    rates: [f64; 5],
    stream_errors: u64,
    /// Committed grants per second (leader metrics), if readable.
    grants: Option<f64>,
    /// CPU in cores, leader first.
    cpu: Vec<f64>,
    load: String,
}

/// The local-decision timing.
#[derive(Debug)]
struct LocalRow {
    nodes: usize,
    mean_ns: f64,
    p50_ns: u64,
    p99_ns: u64,
    admitted: u64,
    decided: u64,
}

#[derive(Debug)]
struct RlsRow {
    nodes: usize,
    keys: usize,
    report: Report,
}

fn policy(cfg: &RlqsConfig) -> String {
    format!(
        "\
# quorate-bench rlqs policy: one shared limit per RLQS bucket; the same limit per RLS key.
rlqs:
  interval: {interval}ms
  max_buckets_per_stream: 1000
  max_buckets: 100000
  domains:
    - domain: {RLQS_DOMAIN}
      buckets:
        - name: per_bucket
          bucket_id: [{{key: b}}]
          rate_limit: {{requests_per_unit: {limit}, unit: second}}
domains:
  - domain: {RLS_DOMAIN}
    descriptors:
      - key: k1
        rate_limit: {{name: per_key, unit: second, requests_per_unit: {limit}, max_keys: 100000}}
",
        interval = cfg.interval.as_millis(),
        limit = cfg.limit,
    )
}

/// Runs every case; returns the markdown report.
pub async fn run(cfg: RlqsConfig) -> anyhow::Result<String> {
    ensure!(!cfg.loads.is_empty(), "--loads needs at least one PxB");
    ensure!(
        cfg.nodes.iter().all(|&n| n == 1 || n == 3),
        "--nodes takes 1 and/or 3"
    );
    cfg.servers.ensure_binary()?;
    let started_at = SystemTime::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (mut fleet_rows, mut local_rows, mut rls_rows) = (Vec::new(), Vec::new(), Vec::new());
    for &nodes in &cfg.nodes {
        eprintln!("\n== {nodes} node(s) ==");
        let tmp = TempDir::new(&cfg.servers.work_dir, cfg.servers.keep)?;
        let policy_file = tmp.path().join("policy.yaml");
        std::fs::write(&policy_file, policy(&cfg)).context("cannot write the rlqs policy")?;
        let servers = suite::start_nodes(&cfg.servers, tmp.path(), &policy_file, nodes).await?;
        let leader = find_leader(&servers).await?;
        let mut ordered: Vec<&QNode> = vec![&servers[leader]];
        ordered.extend(
            servers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .map(|(_, s)| s),
        );
        let max_buckets = cfg.loads.iter().map(|l| l.1).max().unwrap_or(1);
        for (i, &(proxies, buckets)) in cfg.loads.iter().enumerate() {
            let last = i + 1 == cfg.loads.len();
            let (row, local) = measure_fleet(&cfg, &ordered, nodes, proxies, buckets, last).await?;
            eprintln!("{}", fleet_line(&row));
            fleet_rows.push(row);
            if let Some(l) = local {
                local_rows.push(l);
            }
        }
        // The leader again: a slow machine may have moved leadership meanwhile.
        let rls_leader = find_leader(&servers).await?;
        let target = format!("http://{}", servers[rls_leader].grpc);
        let spec = rpc::RunSpec {
            targets: vec![target],
            concurrency: cfg.rls_concurrency,
            per_channel: 16,
            duration: cfg.rls_duration,
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            seed: 1,
            label: format!("rls {RLS_DOMAIN} ×1, {max_buckets} keys"),
            items_per_request: 1,
        };
        let keys = KeySpace::Uniform {
            n: max_buckets as u64,
        };
        let report = rpc::run(&spec, |channel| rls::RlsCaller {
            client: RateLimitServiceClient::new(channel),
            domain: RLS_DOMAIN.into(),
            descriptors: 1,
            prefix: "k".into(),
            keys: keys.clone(),
            statuses: true,
        })
        .await?;
        eprint!("{}", crate::report::text(&report));
        rls_rows.push(RlsRow {
            nodes,
            keys: max_buckets,
            report,
        });
        drop(servers);
        drop(tmp);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let markdown = render(
        &cfg,
        started_at,
        &load_before,
        &load_after,
        &fleet_rows,
        &local_rows,
        &rls_rows,
    );
    if let Some(out) = &cfg.out {
        std::fs::write(out, &markdown)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(markdown)
}

async fn channel(grpc: std::net::SocketAddr) -> anyhow::Result<Channel> {
    Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {grpc}"))
}

/// The node that accepts RLQS streams (followers answer `UNAVAILABLE`).
async fn find_leader(servers: &[QNode]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for (i, s) in servers.iter().enumerate() {
            let mut client = RateLimitQuotaServiceClient::new(channel(s.grpc).await?);
            let (tx, rx) = mpsc::channel(1);
            tx.send(report_message(&[0], true)).await?;
            if client
                .stream_rate_limit_quotas(ReceiverStream::new(rx))
                .await
                .is_ok()
            {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no node accepted an RLQS stream within 10 s")
}

fn pb(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn std_duration(d: &PbDuration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

/// A report of `buckets` with one interval's steady demand each.
fn report_message(buckets: &[usize], first: bool) -> RateLimitQuotaUsageReports {
    RateLimitQuotaUsageReports {
        domain: if first {
            RLQS_DOMAIN.into()
        } else {
            String::new()
        },
        bucket_quota_usages: buckets
            .iter()
            .map(|b| BucketQuotaUsage {
                bucket_id: Some(BucketId {
                    bucket: [("b".to_string(), format!("b{b}"))].into(),
                }),
                time_elapsed: Some(pb(Duration::from_secs(1))),
                num_requests_allowed: DEMAND_PER_BUCKET,
                num_requests_denied: 0,
            })
            .collect(),
    }
}

/// A held token-bucket assignment, enforced as Envoy's filter does.
#[derive(Debug)]
struct Held {
    max: f64,
    tokens: f64,
    /// Tokens per second.
    rate: f64,
    last: Instant,
    expires: Instant,
}

/// A proxy's assignments by bucket index.
type Assignments = Arc<Mutex<Vec<Option<Held>>>>;

/// One local decision: the filter's work for a request.
fn decide(held: &Assignments, bucket: usize) -> bool {
    let now = Instant::now();
    let mut all = held.lock().unwrap_or_else(|p| p.into_inner());
    let Some(Some(h)) = all.get_mut(bucket) else {
        return false;
    };
    if now >= h.expires {
        return false;
    }
    h.tokens = (h.tokens + now.duration_since(h.last).as_secs_f64() * h.rate).min(h.max);
    h.last = now;
    if h.tokens >= 1.0 {
        h.tokens -= 1.0;
        true
    } else {
        false
    }
}

fn apply(response: &RateLimitQuotaResponse, held: &Assignments, counts: &FleetCounts) {
    counts.responses.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut all = held.lock().unwrap_or_else(|p| p.into_inner());
    for action in &response.bucket_action {
        let Some(bucket) = action
            .bucket_id
            .as_ref()
            .and_then(|id| id.bucket.get("b"))
            .and_then(|v| v.strip_prefix('b'))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let Some(slot) = all.get_mut(bucket) else {
            continue;
        };
        match &action.bucket_action {
            Some(Action::QuotaAssignmentAction(a)) => {
                counts.assignments.fetch_add(1, Ordering::Relaxed);
                let ttl = a
                    .assignment_time_to_live
                    .as_ref()
                    .map_or(Duration::from_secs(3600), std_duration);
                match a
                    .rate_limit_strategy
                    .as_ref()
                    .and_then(|r| r.strategy.as_ref())
                {
                    Some(Strategy::TokenBucket(tb)) => {
                        counts.token_buckets.fetch_add(1, Ordering::Relaxed);
                        let per_fill =
                            f64::from(tb.tokens_per_fill.as_ref().map_or(1, |v| v.value));
                        let every = tb
                            .fill_interval
                            .as_ref()
                            .map_or(Duration::from_secs(1), std_duration)
                            .as_secs_f64()
                            .max(1e-9);
                        let (max, rate) = (f64::from(tb.max_tokens), per_fill / every);
                        match slot {
                            Some(h) if h.max == max && h.rate == rate && now < h.expires => {
                                h.expires = now + ttl
                            }
                            _ => {
                                *slot = Some(Held {
                                    max,
                                    tokens: max,
                                    rate,
                                    last: now,
                                    expires: now + ttl,
                                })
                            }
                        }
                    }
                    _ => *slot = None,
                }
            }
            Some(Action::AbandonAction(_)) => *slot = None,
            None => {}
        }
    }
}

/// One simulated proxy's stream, until `stop`; reconnects after errors.
async fn proxy_stream(
    grpc: std::net::SocketAddr,
    buckets: usize,
    interval: Duration,
    held: Assignments,
    counts: Arc<FleetCounts>,
    stop: Arc<tokio::sync::Notify>,
) {
    let ids: Vec<usize> = (0..buckets).collect();
    loop {
        let Ok(ch) = channel(grpc).await else {
            counts.stream_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut client = RateLimitQuotaServiceClient::new(ch);
        let (tx, rx) = mpsc::channel(4);
        if tx.send(report_message(&ids, true)).await.is_err() {
            return;
        }
        counts.reports.fetch_add(1, Ordering::Relaxed);
        counts.usages.fetch_add(buckets as u64, Ordering::Relaxed);
        let mut responses = match client
            .stream_rate_limit_quotas(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => {
                counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Proxies start their intervals at different instants, as a real fleet does.
        let phase = interval.mul_f64(rand::random::<f64>());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tick.tick() => {
                    if tx.send(report_message(&ids, false)).await.is_err() {
                        break;
                    }
                    counts.reports.fetch_add(1, Ordering::Relaxed);
                    counts.usages.fetch_add(buckets as u64, Ordering::Relaxed);
                }
                message = responses.message() => match message {
                    Ok(Some(r)) => apply(&r, &held, &counts),
                    _ => {
                        counts.stream_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                },
            }
        }
    }
}

fn cpu_of(servers: &[&QNode]) -> Vec<Duration> {
    servers
        .iter()
        .map(|s| procs::cpu_time(&format!("/proc/{}/stat", s.proc.pid())).unwrap_or_default())
        .collect()
}

async fn grants_total(leader: &QNode) -> Option<f64> {
    let text = procs::http_get(leader.http, "/metrics").await.ok()?;
    let fresh = procs::metric(&text, "quorate_rlqs_grants_total{kind=\"fresh\"}").unwrap_or(0.0);
    let extended =
        procs::metric(&text, "quorate_rlqs_grants_total{kind=\"extended\"}").unwrap_or(0.0);
    Some(fresh + extended)
}

async fn measure_fleet(
    cfg: &RlqsConfig,
    servers: &[&QNode],
    nodes: usize,
    proxies: usize,
    buckets: usize,
    time_local: bool,
) -> anyhow::Result<(FleetRow, Option<LocalRow>)> {
    eprintln!("-- {proxies} proxies × {buckets} buckets --");
    let leader = servers[0];
    let counts = Arc::new(FleetCounts::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(proxies);
    let mut first_held = None;
    for _ in 0..proxies {
        let held: Assignments = Arc::new(Mutex::new((0..buckets).map(|_| None).collect()));
        first_held.get_or_insert_with(|| Arc::clone(&held));
        tasks.push(tokio::spawn(proxy_stream(
            leader.grpc,
            buckets,
            cfg.interval,
            held,
            Arc::clone(&counts),
            Arc::clone(&stop),
        )));
    }
    tokio::time::sleep(cfg.warmup).await;
    let (c0, cpu0, g0, t0) = (
        counts.snapshot(),
        cpu_of(servers),
        grants_total(leader).await,
        Instant::now(),
    );
    tokio::time::sleep(cfg.duration).await;
    let (c1, cpu1, g1, t1) = (
        counts.snapshot(),
        cpu_of(servers),
        grants_total(leader).await,
        Instant::now(),
    );
    let secs = (t1 - t0).as_secs_f64();
    let local = match (time_local, first_held) {
        (true, Some(held)) => Some(time_decisions(&held, buckets, cfg.decisions.max(1), nodes)?),
        _ => None,
    };
    stop.notify_waiters();
    for t in tasks {
        t.abort();
    }
    let rate = |i: usize| (c1[i] - c0[i]) as f64 / secs;
    Ok((
        FleetRow {
            nodes,
            proxies,
            buckets,
            rates: [rate(0), rate(1), rate(2), rate(3), rate(4)],
            stream_errors: c1[5] - c0[5],
            grants: match (g0, g1) {
                (Some(a), Some(b)) => Some((b - a) / secs),
                _ => None,
            },
            cpu: cpu0
                .iter()
                .zip(&cpu1)
                .map(|(a, b)| b.saturating_sub(*a).as_secs_f64() / secs)
                .collect(),
            load: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
        },
        local,
    ))
}

/// Decides `n` requests on one proxy's held assignments, cycling through its buckets.
fn time_decisions(
    held: &Assignments,
    buckets: usize,
    n: u64,
    nodes: usize,
) -> anyhow::Result<LocalRow> {
    let mut admitted = 0u64;
    let started = Instant::now();
    for i in 0..n {
        admitted += u64::from(decide(held, (i as usize) % buckets));
    }
    let mean_ns = started.elapsed().as_nanos() as f64 / n.max(1) as f64;
    let mut histogram = new_histogram()?;
    // Individually timed (the two clock reads are included): a sample of 100 k.
    for i in 0..n.min(100_000) {
        let t = Instant::now();
        admitted += u64::from(decide(held, (i as usize) % buckets));
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(ns.max(1));
    }
    Ok(LocalRow {
        nodes,
        mean_ns,
        p50_ns: histogram.value_at_quantile(0.5),
        p99_ns: histogram.value_at_quantile(0.99),
        admitted,
        decided: n + n.min(100_000),
    })
}

fn fleet_line(r: &FleetRow) -> String {
    format!(
        "{} node(s), {}×{}: {:.0} reports/s ({:.0} usages/s), {:.0} responses/s, {:.0} assignments/s ({:.0} token buckets), grants {:?}/s, cpu {:?}, {} stream errors",
        r.nodes,
        r.proxies,
        r.buckets,
        r.rates[0],
        r.rates[1],
        r.rates[2],
        r.rates[3],
        r.rates[4],
        r.grants.map(|g| g.round()),
        r.cpu.iter().map(|c| format!("{:.0}%", c * 100.0)).collect::<Vec<_>>(),
        r.stream_errors
    )
}

fn render(
    cfg: &RlqsConfig,
    started_at: SystemTime,
    load_before: &str,
    load_after: &str,
    fleet: &[FleetRow],
    local: &[LocalRow],
    rls_rows: &[RlsRow],
) -> String {
    let when = started_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut out = format!(
        "Command: `{}` (unix time {when}; load average before: {}, after: {}).\n\
         Every bucket's limit {} requests/s, `rlqs.interval` and the proxies' reporting \
         interval {} ms, steady demand {DEMAND_PER_BUCKET} requests/s per proxy and bucket; \
         warm-up {} s, measured {} s per load.\n\n",
        report::command_line(),
        load_before.trim(),
        load_after.trim(),
        cfg.limit,
        cfg.interval.as_millis(),
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64(),
    );
    out.push_str(
        "| nodes | proxies × buckets | reports/s (bucket usages/s) absorbed | assignment messages/s | bucket assignments/s pushed | grants committed/s | leader CPU | followers' CPU | stream errors | load average after |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in fleet {
        let followers: Vec<String> = r.cpu[1..]
            .iter()
            .map(|c| format!("{:.0} %", c * 100.0))
            .collect();
        out.push_str(&format!(
            "| {} | {}×{} | {} ({}) | {} | {} | {} | {:.0} % | {} | {} | {} |\n",
            r.nodes,
            r.proxies,
            r.buckets,
            grouped(r.rates[0].round() as u64),
            grouped(r.rates[1].round() as u64),
            grouped(r.rates[2].round() as u64),
            grouped(r.rates[3].round() as u64),
            r.grants.map_or("–".into(), |g| grouped(g.round() as u64)),
            r.cpu.first().copied().unwrap_or(0.0) * 100.0,
            if followers.is_empty() {
                "–".into()
            } else {
                followers.join(", ")
            },
            r.stream_errors,
            r.load.split_whitespace().next().unwrap_or("?"),
        ));
    }
    out.push_str(
        "\n| nodes | decision | decisions/s | mean | p50 | p99 |\n|---|---|---|---|---|---|\n",
    );
    for l in local {
        out.push_str(&format!(
            "| {} | local, from the held assignment (one proxy, {} decisions, {} admitted) | {} per core | {:.0} ns | {} ns | {} ns |\n",
            l.nodes,
            grouped(l.decided),
            grouped(l.admitted),
            grouped((1e9 / l.mean_ns.max(1e-9)) as u64),
            l.mean_ns,
            l.p50_ns,
            l.p99_ns
        ));
    }
    for r in rls_rows {
        out.push_str(&format!(
            "| {} | RLS `ShouldRateLimit` per request ({} in flight, {} keys, {} problems) | {} | – | {} µs | {} µs |\n",
            r.nodes,
            r.report.concurrency,
            r.keys,
            r.report.problems(),
            grouped(r.report.throughput().round() as u64),
            r.report.quantile_us(0.5),
            r.report.quantile_us(0.99)
        ));
    }
    out
}
