//! `quorate-bench overload`: what a single node answers when offered more decisions than
//! it can take, with load shedding (`--max-in-flight`, fixed or adaptive) and without
//! (`--max-in-flight=0`).
//!
//! Overload needs an open loop: calls are sent at a fixed rate whether or not earlier
//! ones were answered, as independent clients would (a closed loop slows down with the
//! server and never overloads it). Latency runs from the moment a call was due, so a
//! late sender is charged to the server's account too (no coordinated omission).
//!
//! One run: start a node without shedding and measure its capacity X, the closed-loop
//! throughput at `--concurrency` calls in flight (use a high one: group commit makes a
//! node faster the more it is offered). Offer it 0.5·X (unloaded) and 2·X (overload),
//! recording the latency of answered calls and how many were shed or timed out. Then the
//! same rates against a fresh node for each `--max-in-flight` value (a fixed limit) and
//! each `--adaptive` value (the adaptive limit up to it). Prints a markdown table.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use hdrhistogram::Histogram;
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use tonic::transport::Channel;

use crate::keys::{Distribution, KeySpace};
use crate::load::{self, LoadConfig};
use crate::parse_duration;
use crate::procs::{self, Proc, TempDir};

/// Every hit is allowed: the numbers measure the decision path, not denials.
const POLICY: &str = "\
limits:
  - name: bench_strict
    limit: 1000000000000
    window: 1h
    consistency: strict
";
const LIMIT: &str = "bench_strict";

/// What `quorate-bench overload` runs (its flags).
#[derive(Debug, Clone, clap::Args)]
pub struct OverloadConfig {
    /// The quorate binary to start (a release build).
    #[arg(long, default_value = "target/release/quorate")]
    pub quorate: PathBuf,
    /// `--max-in-flight` of the nodes with a fixed limit, comma-separated (one node each).
    #[arg(long, default_value = "256", value_delimiter = ',')]
    pub max_in_flight: Vec<usize>,
    /// `--max-in-flight` of nodes with the adaptive limit (`--concurrency-limit
    /// adaptive`), comma-separated (one node each; none by default).
    #[arg(long, value_delimiter = ',')]
    pub adaptive: Vec<usize>,
    /// Closed-loop calls in flight when finding the capacity.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured time of each phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// HTTP/2 connections the open-loop calls are spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// A call not answered within this counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Parent of the temporary data directories.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub work_dir: PathBuf,
}

/// The name of the rows of nodes with the adaptive limit.
const ADAPTIVE: &str = "adaptive";

/// One open-loop phase.
struct Phase {
    offered: f64,
    answered: u64,
    /// Failed calls by gRPC code name (`timeout`: no answer within the call timeout).
    errors: BTreeMap<String, u64>,
    /// Answered calls, µs from when each was due.
    latency: Histogram<u64>,
    /// Shed calls (`RESOURCE_EXHAUSTED`), µs.
    shed_latency: Histogram<u64>,
    elapsed: Duration,
}

pub async fn run(cfg: OverloadConfig) -> anyhow::Result<String> {
    ensure!(
        cfg.quorate.is_file(),
        "no quorate binary at {} (build it: cargo build --release -p quorate-server)",
        cfg.quorate.display()
    );
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let tmp = TempDir::new(&cfg.work_dir, false)?;
    let policy = tmp.path().join("policy.yaml");
    std::fs::write(&policy, POLICY).context("cannot write the benchmark policy")?;

    let mut rows = Vec::new();
    let mut rates = None;
    // The node without shedding goes first: the capacity is measured on it, so that the
    // closed loop is never shed whatever the budgets.
    let fixed = cfg.max_in_flight.iter().filter(|&&n| n > 0);
    let variants = [("no shedding", 0)]
        .into_iter()
        .chain(fixed.map(|&n| ("shedding", n)))
        .chain(
            cfg.adaptive
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (ADAPTIVE, n)),
        );
    for (name, max_in_flight) in variants {
        let dir = format!("{}-{max_in_flight}", name.replace(' ', "-"));
        let mode = if name == ADAPTIVE {
            "adaptive"
        } else {
            "fixed"
        };
        let (grpc, _node) = start(&cfg, &tmp, &policy, &dir, mode, max_in_flight).await?;
        let target = format!("http://{grpc}");
        let (capacity, unloaded_rate, overload_rate) = match rates {
            Some(r) => r,
            None => {
                let capacity = closed_loop_capacity(&cfg, &target).await?;
                let r = (capacity, capacity * 0.5, capacity * 2.0);
                rates = Some(r);
                r
            }
        };
        let unloaded = open_loop(&cfg, &target, unloaded_rate).await?;
        let overload = open_loop(&cfg, &target, overload_rate).await?;
        rows.push((name, max_in_flight, capacity, unloaded, overload));
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut out = String::new();
    out.push_str(&format!(
        "Single node, strict limit, 1 hit per call, open loop over {} connections, {:?} per \
         phase, call timeout {:?}. Capacity X = closed-loop throughput at concurrency {}.\n\
         loadavg before: {}; after: {}\n\n",
        cfg.connections,
        cfg.duration,
        cfg.timeout,
        cfg.concurrency,
        load_before.trim(),
        load_after.trim()
    ));
    out.push_str(
        "| node | X (calls/s) | offered | answered/s | p50 | p99 | shed | shed p99 | other failures |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, max_in_flight, capacity, unloaded, overload) in &rows {
        let label = if *max_in_flight > 0 {
            format!("{name} (--max-in-flight={max_in_flight})")
        } else {
            format!("{name} (--max-in-flight=0)")
        };
        for (what, p) in [("0.5·X", unloaded), ("2·X", overload)] {
            let shed = p.errors.get("ResourceExhausted").copied().unwrap_or(0);
            let others: Vec<String> = p
                .errors
                .iter()
                .filter(|(code, _)| code.as_str() != "ResourceExhausted")
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            out.push_str(&format!(
                "| {label} | {:.0} | {what} = {:.0}/s | {:.0} | {} | {} | {} | {} | {} |\n",
                capacity,
                p.offered,
                p.answered as f64 / p.elapsed.as_secs_f64().max(1e-9),
                ms(&p.latency, 0.5),
                ms(&p.latency, 0.99),
                shed,
                if shed > 0 {
                    ms(&p.shed_latency, 0.99)
                } else {
                    "–".into()
                },
                if others.is_empty() {
                    "0".into()
                } else {
                    others.join(", ")
                },
            ));
        }
    }
    Ok(out)
}

fn ms(h: &Histogram<u64>, q: f64) -> String {
    if h.is_empty() {
        return "–".into();
    }
    format!("{:.2} ms", h.value_at_quantile(q) as f64 / 1000.0)
}

/// Starts one node with `--concurrency-limit` `mode` and `--max-in-flight`; returns its
/// gRPC address and the process (stopped when dropped).
async fn start(
    cfg: &OverloadConfig,
    tmp: &TempDir,
    policy: &std::path::Path,
    name: &str,
    mode: &str,
    max_in_flight: usize,
) -> anyhow::Result<(SocketAddr, Proc)> {
    let (grpc, http, peer) = (
        procs::free_addr()?,
        procs::free_addr()?,
        procs::free_addr()?,
    );
    let dir_name = name.to_string();
    let mut args = procs::serve_args(grpc, http, peer, &tmp.path().join(&dir_name));
    args.extend([
        "--policy".into(),
        policy.display().to_string(),
        format!("--concurrency-limit={mode}"),
        format!("--max-in-flight={max_in_flight}"),
    ]);
    let mut proc = Proc::spawn(
        &dir_name,
        &cfg.quorate,
        &args,
        &tmp.path().join(format!("{dir_name}.log")),
    )?;
    proc.wait_line("quorate ready:", Duration::from_secs(30))
        .await?;
    Ok((grpc, proc))
}

async fn closed_loop_capacity(cfg: &OverloadConfig, target: &str) -> anyhow::Result<f64> {
    let config = LoadConfig {
        targets: vec![target.to_string()],
        concurrency: cfg.concurrency,
        per_channel: cfg.concurrency.div_ceil(cfg.connections).max(1),
        duration: cfg.duration,
        warmup: Duration::from_secs(2),
        keys: KeySpace::new(Distribution::Uniform, 10_000, 1.0)?,
        key_prefix: "k".into(),
        limit: LIMIT.into(),
        cost: 1,
        hits_per_request: 1,
        timeout: cfg.timeout,
        seed: 1,
    };
    let report = load::run(&config).await?;
    ensure!(
        report.problems() == 0,
        "the capacity run had failures: {:?}",
        report.errors
    );
    Ok(report.throughput())
}

/// Offers `rate` calls per second for the configured duration (after 1 s of warm-up at
/// the same rate, not recorded).
async fn open_loop(cfg: &OverloadConfig, target: &str, rate: f64) -> anyhow::Result<Phase> {
    ensure!(rate > 0.0, "the offered rate must be positive");
    let channels = load::connect(&[target.to_string()], cfg.connections).await?;
    let clients: Vec<RateLimiterClient<Channel>> =
        channels.into_iter().map(RateLimiterClient::new).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Result<(), String>, Duration)>();

    let warmup = Duration::from_secs(1);
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + cfg.duration;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let timeout = cfg.timeout;
    let mut sent: u64 = 0;
    loop {
        // The due time of call `sent`; sleep until it, then send every call now due.
        let due = started + interval.mul_f64(sent as f64);
        if due >= stop_at {
            break;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let mut client = clients[(sent as usize) % clients.len()].clone();
        let tx = (due >= measure_from).then(|| tx.clone());
        let key = format!("k{}", sent % 10_000);
        tokio::spawn(async move {
            let request = pb::CheckRequest {
                hits: vec![pb::Hit {
                    limit: LIMIT.into(),
                    key,
                    cost: Some(1),
                }],
                atomic: None,
            };
            let outcome = match tokio::time::timeout(timeout, client.check(request)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(format!("{:?}", status.code())),
                Err(_) => Err("timeout".to_string()),
            };
            if let Some(tx) = tx {
                let _ = tx.send((outcome, due.elapsed()));
            }
        });
        sent += 1;
    }
    drop(tx);

    let mut phase = Phase {
        offered: rate,
        answered: 0,
        errors: BTreeMap::new(),
        latency: load::new_histogram()?,
        shed_latency: load::new_histogram()?,
        elapsed: cfg.duration,
    };
    while let Some((outcome, took)) = rx.recv().await {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        match outcome {
            Ok(()) => {
                phase.answered += 1;
                phase.latency.saturating_record(us);
            }
            Err(code) => {
                if code == "ResourceExhausted" {
                    phase.shed_latency.saturating_record(us);
                }
                *phase.errors.entry(code).or_default() += 1;
            }
        }
    }
    Ok(phase)
}
