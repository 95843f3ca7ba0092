//! `quorate-bench keys-sweep`: RLS throughput and server memory as the number of live
//! keys grows (issue 12: "keys 1 k → 1 M uniform: throughput drop ≤ 25 %, memory per live
//! key documented").
//!
//! For every cluster size (1 node, 3 nodes) and every key count N, on fresh servers:
//!
//! 1. start the node(s) with a policy of one strict RLS limit (domain `bench1`, descriptor
//!    `k1 = <key>`, 10¹² per hour, `max_keys` ≥ the largest N), and read every server's
//!    resident memory (`VmRSS`) and the leader's live-counter gauge;
//! 2. **fill**: touch each of the N keys `k0 … k<N-1>` exactly once, many descriptors per
//!    request (each descriptor is its own counter), every answer verified OK — so every
//!    key is live when the measurement starts, and the memory the keys cost can be read;
//! 3. read `VmRSS` and the counter gauge again: (after − before) / new counters is the
//!    memory per live key. It is an upper bound: it also holds the Raft log entries of the
//!    fill kept in memory until the next snapshot (every `--snapshot-every` entries) and
//!    whatever the allocator keeps;
//! 4. **measure**: the closed loop of `quorate-bench rls` (C calls in flight, one
//!    descriptor per request), keys drawn uniformly from the N, `--rounds` times.
//!
//! The table compares each N with the first N of the same cluster size, measured in the
//! same run.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use tonic::transport::Channel;

use crate::keys::KeySpace;
use crate::load::{connect, Report};
use crate::procs::{self, TempDir};
use crate::report::{self, grouped, problems_line};
use crate::suite::{self, QNode};
use crate::{parse_duration, rls, rpc};

/// The RLS domain of the sweep (descriptor `k1 = k<i>`).
const DOMAIN: &str = "bench1";
/// Prefix of every key value, as `quorate-bench rls` draws them.
const KEY_PREFIX: &str = "k";
/// Most descriptors one RLS request may carry (the server's `MAX_DESCRIPTORS`).
const MAX_FILL_DESCRIPTORS: usize = 64;

/// What the sweep runs (its flags).
#[derive(Debug, Clone, clap::Args)]
pub struct SweepConfig {
    #[command(flatten)]
    pub servers: suite::Servers,
    /// Key counts, comma-separated, measured in order.
    #[arg(
        long,
        default_value = "1000,10000,100000,1000000",
        value_delimiter = ','
    )]
    pub keys: Vec<u64>,
    /// Cluster sizes, comma-separated (1 and/or 3).
    #[arg(long, default_value = "1,3", value_delimiter = ',')]
    pub nodes: Vec<usize>,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// In-flight calls per HTTP/2 connection.
    #[arg(long = "per-connection", default_value_t = 16)]
    pub per_channel: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Measured windows per case (medians shown).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Distinct keys per fill request (1 to 64).
    #[arg(long, default_value_t = 64)]
    pub fill_descriptors: usize,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one (cluster size, N) case measured.
#[derive(Debug)]
struct Row {
    nodes: usize,
    keys: u64,
    fill: Duration,
    /// One report per round.
    reports: Vec<Report>,
    /// Live counters on the leader: before the fill, after it, after the measurement.
    counters: [Option<f64>; 3],
    /// `VmRSS` of every server (leader first): before the fill, after it, after the
    /// measurement.
    rss: [Vec<u64>; 3],
    /// `/proc/loadavg` when the case ended.
    load: String,
}

/// The policy: one strict key-only RLS limit able to hold `max_keys` live keys.
fn policy(max_keys: u64) -> String {
    format!(
        "\
# quorate-bench keys-sweep policy: one strict RLS limit no run exhausts, room for every key.
max_counters: {max_keys}
domains:
  - domain: {DOMAIN}
    descriptors:
      - key: k1
        rate_limit: {{name: sweep, unit: hour, requests_per_unit: 1000000000000, max_keys: {max_keys}}}
"
    )
}

/// Runs the sweep; returns the markdown report.
pub async fn run(cfg: SweepConfig) -> anyhow::Result<String> {
    ensure!(!cfg.keys.is_empty(), "--keys needs at least one count");
    ensure!(
        cfg.keys.iter().all(|&n| n > 0),
        "every key count must be > 0"
    );
    ensure!(
        cfg.nodes.iter().all(|&n| n == 1 || n == 3),
        "--nodes takes 1 and/or 3"
    );
    ensure!(cfg.rounds > 0, "--rounds must be at least 1");
    ensure!(
        (1..=MAX_FILL_DESCRIPTORS).contains(&cfg.fill_descriptors),
        "--fill-descriptors must be 1 to {MAX_FILL_DESCRIPTORS}"
    );
    cfg.servers.ensure_binary()?;
    let started_at = SystemTime::now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let max_keys = cfg.keys.iter().copied().max().unwrap_or(1);
    let mut rows = Vec::new();
    for &nodes in &cfg.nodes {
        for &keys in &cfg.keys {
            eprintln!("\n== {nodes} node(s), {} keys ==", grouped(keys));
            let tmp = TempDir::new(&cfg.servers.work_dir, cfg.servers.keep)?;
            let policy_file = tmp.path().join("policy.yaml");
            std::fs::write(&policy_file, policy(max_keys))
                .context("cannot write the sweep policy")?;
            let servers = suite::start_nodes(&cfg.servers, tmp.path(), &policy_file, nodes).await?;
            let row = measure_case(&cfg, &servers, nodes, keys).await?;
            eprintln!("{}", row_line(&row));
            rows.push(row);
            drop(servers);
            drop(tmp);
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let markdown = render(&cfg, started_at, &load_before, &load_after, &rows);
    if let Some(out) = &cfg.out {
        std::fs::write(out, &markdown)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(markdown)
}

async fn measure_case(
    cfg: &SweepConfig,
    servers: &[QNode],
    nodes: usize,
    keys: u64,
) -> anyhow::Result<Row> {
    let leader = servers.first().context("no server started")?;
    let target = format!("http://{}", leader.grpc);
    let pids: Vec<u32> = servers.iter().map(|s| s.proc.pid()).collect();
    let rss = |pids: &[u32]| -> anyhow::Result<Vec<u64>> {
        pids.iter().map(|&p| procs::rss_bytes(p)).collect()
    };
    let counters = || async {
        let text = procs::http_get(leader.http, "/metrics").await.ok()?;
        procs::metric(&text, "quorate_counters")
    };

    let rss_before = rss(&pids)?;
    let counters_before = counters().await;
    let fill_started = Instant::now();
    fill(
        &target,
        keys,
        cfg.fill_descriptors,
        cfg.concurrency,
        cfg.per_channel,
        cfg.timeout,
    )
    .await
    .with_context(|| format!("filling {keys} keys"))?;
    let fill = fill_started.elapsed();
    let rss_filled = rss(&pids)?;
    let counters_filled = counters().await;

    let space = KeySpace::Uniform { n: keys };
    let mut reports = Vec::with_capacity(cfg.rounds);
    for round in 1..=cfg.rounds {
        let spec = rpc::RunSpec {
            targets: vec![target.clone()],
            concurrency: cfg.concurrency,
            per_channel: cfg.per_channel,
            duration: cfg.duration,
            warmup: cfg.warmup,
            timeout: cfg.timeout,
            seed: round as u64,
            label: format!("rls {DOMAIN} ×1, {keys} keys"),
            items_per_request: 1,
        };
        let report = rpc::run(&spec, |channel| rls::RlsCaller {
            client: RateLimitServiceClient::new(channel),
            domain: DOMAIN.into(),
            descriptors: 1,
            prefix: KEY_PREFIX.into(),
            keys: space.clone(),
            statuses: true,
        })
        .await?;
        eprint!("{}", crate::report::text(&report));
        reports.push(report);
    }
    Ok(Row {
        nodes,
        keys,
        fill,
        reports,
        counters: [counters_before, counters_filled, counters().await],
        rss: [rss_before, rss_filled, rss(&pids)?],
        load: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
    })
}

/// The fill request: descriptors `[k1 = k<first>] … [k1 = k<first + n − 1>]`.
fn fill_request(first: u64, n: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: DOMAIN.into(),
        descriptors: (first..first + n)
            .map(|key| RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k1".into(),
                    value: format!("{KEY_PREFIX}{key}"),
                }],
                ..Default::default()
            })
            .collect(),
        hits_addend: 0,
    }
}

/// Touches every key in `0..keys` once, `per_request` keys per call, `concurrency` calls in
/// flight; fails on the first call that is not answered OK for every descriptor (a key
/// left out would make the memory figures wrong).
async fn fill(
    target: &str,
    keys: u64,
    per_request: usize,
    concurrency: usize,
    per_channel: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    ensure!(
        concurrency > 0 && per_channel > 0,
        "concurrency must be > 0"
    );
    let channels = connect(&[target.to_string()], concurrency.div_ceil(per_channel)).await?;
    let next = Arc::new(AtomicU64::new(0));
    let step = per_request as u64;
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let mut client: RateLimitServiceClient<Channel> =
            RateLimitServiceClient::new(channels[i % channels.len()].clone());
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(step, Ordering::Relaxed);
                if first >= keys {
                    return anyhow::Ok(());
                }
                let n = step.min(keys - first);
                let call = client.should_rate_limit(fill_request(first, n));
                let answer = tokio::time::timeout(timeout, call)
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
                    .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
                let (allowed, denied) =
                    rls::verify(answer.get_ref(), n as usize, true).map_err(anyhow::Error::msg)?;
                if denied > 0 || allowed != n {
                    bail!("keys {first}..{}: {denied} descriptor(s) denied", first + n);
                }
            }
        }));
    }
    for w in workers {
        w.await.context("a fill worker panicked")??;
    }
    Ok(())
}

// === the report ===

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Row {
    fn throughput(&self) -> f64 {
        median(self.reports.iter().map(Report::throughput).collect())
    }

    fn quantile_us(&self, q: f64) -> f64 {
        median(
            self.reports
                .iter()
                .map(|r| r.quantile_us(q) as f64)
                .collect(),
        )
    }

    fn problems(&self) -> u64 {
        self.reports.iter().map(Report::problems).sum()
    }

    /// Counters the fill made live on the leader (from its gauge).
    fn new_counters(&self) -> Option<f64> {
        Some(self.counters[1]? - self.counters[0]?)
    }

    /// Bytes of resident memory per new live key on server `i`, over the fill.
    fn bytes_per_key(&self, i: usize) -> Option<f64> {
        let new = self.new_counters().filter(|&n| n > 0.0)?;
        let before = *self.rss[0].get(i)? as f64;
        let after = *self.rss[1].get(i)? as f64;
        Some((after - before) / new)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn row_line(r: &Row) -> String {
    format!(
        "{} node(s), {} keys: fill {:.1} s, {} req/s, leader RSS {} → {} → {} MiB, {} B/key",
        r.nodes,
        grouped(r.keys),
        r.fill.as_secs_f64(),
        grouped(r.throughput().round() as u64),
        r.rss[0].first().map_or("?".into(), |&b| mib(b)),
        r.rss[1].first().map_or("?".into(), |&b| mib(b)),
        r.rss[2].first().map_or("?".into(), |&b| mib(b)),
        r.bytes_per_key(0).map_or("?".into(), |b| format!("{b:.0}")),
    )
}

fn render(
    cfg: &SweepConfig,
    started_at: SystemTime,
    load_before: &str,
    load_after: &str,
    rows: &[Row],
) -> String {
    let loadavg = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let mut md = format!(
        "Keys sweep run {} on a {}-core machine; client and servers share it. Load average \
         before: {}; after: {}.\n\n",
        suite::utc_timestamp(started_at),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg(load_before),
        loadavg(load_after),
    );
    md.push_str(&format!(
        "Load: RLS `ShouldRateLimit`, 1 descriptor (`k1 = k<i>`, domain `{DOMAIN}`, strict, \
         10¹²/h), i uniform over N keys, all N made live first by a fill ({} keys per \
         request); {} in flight over {} HTTP/2 connection(s), {} s measured after {} s \
         warm-up, {} round(s) (medians). Fresh servers for every row. Bytes/key = VmRSS \
         growth over the fill ÷ new live counters (leader's `quorate_counters`); it includes \
         the fill's Raft entries still held in memory, so it is an upper bound.\n\n",
        cfg.fill_descriptors,
        cfg.concurrency,
        cfg.concurrency.div_ceil(cfg.per_channel),
        cfg.duration.as_secs_f64(),
        cfg.warmup.as_secs_f64(),
        cfg.rounds,
    ));
    md.push_str(&format!("Command: `{}`\n\n", report::command_line()));
    md.push_str(
        "| nodes | keys N | fill s | req/s | × first N | p50 µs | p99 µs | errors | live counters | \
         leader RSS MiB (start → filled → end) | bytes/key leader | bytes/key followers | load avg |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n",
    );
    for r in rows {
        let first = rows
            .iter()
            .find(|f| f.nodes == r.nodes)
            .map(Row::throughput)
            .unwrap_or(f64::NAN);
        let followers: Vec<String> = (1..r.rss[0].len())
            .filter_map(|i| r.bytes_per_key(i))
            .map(|b| format!("{b:.0}"))
            .collect();
        let problems = r.problems();
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {:.2} | {} | {} | {} | {} | {} → {} → {} | {} | {} | {} |\n",
            r.nodes,
            grouped(r.keys),
            r.fill.as_secs_f64(),
            grouped(r.throughput().round() as u64),
            r.throughput() / first,
            grouped(r.quantile_us(0.50) as u64),
            grouped(r.quantile_us(0.99) as u64),
            if problems == 0 {
                "0".into()
            } else {
                format!("**{}**", grouped(problems))
            },
            r.counters[2].map_or("?".into(), |c| grouped(c as u64)),
            r.rss[0].first().map_or("?".into(), |&b| mib(b)),
            r.rss[1].first().map_or("?".into(), |&b| mib(b)),
            r.rss[2].first().map_or("?".into(), |&b| mib(b)),
            r.bytes_per_key(0).map_or("?".into(), |b| format!("{b:.0}")),
            if followers.is_empty() {
                "—".into()
            } else {
                followers.join(", ")
            },
            loadavg(&r.load),
        ));
    }
    md.push('\n');
    for &nodes in &cfg.nodes {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.nodes == nodes).collect();
        if let (Some(a), Some(b)) = (mine.first(), mine.last()) {
            if a.keys != b.keys {
                let r = b.throughput() / a.throughput();
                md.push_str(&format!(
                    "- {nodes} node(s): {} → {} keys keeps {r:.2}× the throughput (goal ≥ 0.75×: {})\n",
                    grouped(a.keys),
                    grouped(b.keys),
                    if r >= 0.75 { "**met**" } else { "**missed**" }
                ));
            }
        }
    }
    let failures: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r.reports
                .iter()
                .filter(|rep| rep.problems() > 0)
                .map(move |rep| {
                    format!(
                        "- {} node(s), {} keys: {}\n",
                        r.nodes,
                        grouped(r.keys),
                        problems_line(rep)
                    )
                })
        })
        .collect();
    if !failures.is_empty() {
        md.push_str("\n**Failed calls (not counted in req/s):**\n\n");
        for f in failures {
            md.push_str(&f);
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_requests_name_each_key_once() {
        let r = fill_request(10, 3);
        assert_eq!(r.domain, DOMAIN);
        let values: Vec<&str> = r
            .descriptors
            .iter()
            .map(|d| d.entries[0].value.as_str())
            .collect();
        assert_eq!(values, ["k10", "k11", "k12"]);
        assert!(r.descriptors.iter().all(|d| d.entries[0].key == "k1"));
    }

    #[test]
    fn the_policy_has_room_for_every_key() {
        let p = policy(1_000_000);
        assert!(p.contains("max_counters: 1000000"));
        assert!(p.contains("max_keys: 1000000"));
        assert!(p.contains(&format!("domain: {DOMAIN}")));
    }

    #[test]
    fn bytes_per_key_is_growth_over_new_counters() {
        let row = Row {
            nodes: 1,
            keys: 1000,
            fill: Duration::from_secs(1),
            reports: Vec::new(),
            counters: [Some(0.0), Some(1000.0), Some(1000.0)],
            rss: [vec![10_000_000], vec![10_200_000], vec![10_300_000]],
            load: String::new(),
        };
        assert_eq!(row.bytes_per_key(0), Some(200.0));
        assert_eq!(row.bytes_per_key(1), None);
        let no_gauge = Row {
            counters: [None, Some(1000.0), None],
            ..row
        };
        assert_eq!(no_gauge.bytes_per_key(0), None);
    }
}
