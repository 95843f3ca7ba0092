//! `quorate-bench sdk`: the Rust SDK (`quorate-client`) next to raw gRPC against the same
//! node, over one HTTP/2 connection each: the SDK's cost per call, and what its local
//! deny cache does for a hot key that is over its limit (calls/s, network calls saved).
//!
//! Start a node with `bench/sdk-policy.yaml` first (`quorate-bench nodes`).

use std::time::Duration;

use anyhow::ensure;
use quorate_client::Client;
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use rand::rngs::StdRng;
use rand::Rng;
use tonic::transport::Channel;

use crate::load::Report;
use crate::rpc::{self, Caller, Outcome, RunSpec};

/// The limit no run exhausts, and the one that is over its limit after 10 hits.
pub const OPEN_LIMIT: &str = "sdk_open";
pub const HOT_LIMIT: &str = "sdk_hot";
const HOT_KEY: &str = "hot";

/// Where and how hard to drive.
#[derive(Debug, Clone)]
pub struct SdkBench {
    pub target: String,
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub keys: u64,
    /// How many times each case runs, interleaved with the others.
    pub rounds: usize,
}

/// Which key a call names.
#[derive(Debug, Clone, Copy)]
enum Keys {
    /// Uniform over `n` keys of the open limit: every hit allowed.
    Open(u64),
    /// The one hot key of the hot limit: every hit denied.
    Hot,
}

impl Keys {
    fn pick(self, rng: &mut StdRng) -> (&'static str, String) {
        match self {
            Keys::Open(n) => (OPEN_LIMIT, format!("k{}", rng.random_range(0..n.max(1)))),
            Keys::Hot => (HOT_LIMIT, HOT_KEY.to_string()),
        }
    }
}

fn verified(allowed: bool) -> Outcome {
    Outcome::Verified {
        allowed: u64::from(allowed),
        denied: u64::from(!allowed),
    }
}

/// A `Check` built and sent by hand.
struct Raw {
    client: RateLimiterClient<Channel>,
    keys: Keys,
}

impl Caller for Raw {
    async fn call(&mut self, rng: &mut StdRng) -> Outcome {
        let (limit, key) = self.keys.pick(rng);
        let request = pb::CheckRequest {
            hits: vec![pb::Hit {
                limit: limit.to_string(),
                key,
                cost: Some(1),
            }],
            atomic: None,
        };
        match self.client.check(request).await {
            Ok(r) => match r.into_inner().decisions.as_slice() {
                [d] => verified(d.allowed),
                other => Outcome::Bad(format!("{} decisions", other.len())),
            },
            Err(status) => Outcome::from_status(&status),
        }
    }
}

/// The same check through `Client::check`.
struct Sdk {
    client: Client,
    keys: Keys,
}

impl Caller for Sdk {
    async fn call(&mut self, rng: &mut StdRng) -> Outcome {
        let (limit, key) = self.keys.pick(rng);
        match self.client.check(limit, &key, 1).await {
            Ok(d) => verified(d.allowed),
            Err(e) => Outcome::Failed {
                code: "SDK_ERROR".into(),
                message: e.to_string(),
            },
        }
    }
}

async fn sdk_client(target: &str, deny_cache: bool) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .endpoint(target)
        .deny_cache(deny_cache)
        .connect()
        .await?)
}

/// The five cases, in the order of the first round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    RawOpen,
    SdkOpen,
    RawHot,
    SdkHotNoCache,
    SdkHotCache,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::RawOpen,
        Case::SdkOpen,
        Case::RawHot,
        Case::SdkHotNoCache,
        Case::SdkHotCache,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::RawOpen => "raw gRPC, allowed hits",
            Case::SdkOpen => "SDK, allowed hits",
            Case::RawHot => "raw gRPC, hot over-limit key",
            Case::SdkHotNoCache => "SDK without deny cache, hot key",
            Case::SdkHotCache => "SDK with deny cache, hot key",
        }
    }
}

/// One case summed over all rounds.
struct Total {
    case: Case,
    ok: u64,
    allowed: u64,
    denied: u64,
    problems: u64,
    elapsed: Duration,
    latency: hdrhistogram::Histogram<u64>,
    /// Calls/s of each round, to show the spread.
    per_round: Vec<f64>,
}

impl Total {
    fn new(case: Case) -> anyhow::Result<Total> {
        Ok(Total {
            case,
            ok: 0,
            allowed: 0,
            denied: 0,
            problems: 0,
            elapsed: Duration::ZERO,
            latency: crate::load::new_histogram()?,
            per_round: Vec::new(),
        })
    }

    fn add(&mut self, r: &Report) -> anyhow::Result<()> {
        self.ok += r.ok;
        self.allowed += r.allowed_hits;
        self.denied += r.denied_hits;
        self.problems += r.problems();
        self.elapsed += r.elapsed;
        self.latency.add(&r.latency)?;
        self.per_round.push(r.throughput());
        Ok(())
    }

    fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn p50(&self) -> u64 {
        self.latency.value_at_quantile(0.5)
    }
}

/// The 1-, 5- and 15-minute load averages, to judge how busy a shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs the five cases `rounds` times, interleaved (each round in a different order), so
/// a shared machine's changing load falls on all of them alike, then prints the markdown
/// table and the ratios.
pub async fn run(b: SdkBench) -> anyhow::Result<()> {
    ensure!(b.concurrency > 0, "--concurrency must be at least 1");
    ensure!(b.rounds > 0, "--rounds must be at least 1");
    let spec = |label: &str| RunSpec {
        targets: vec![b.target.clone()],
        concurrency: b.concurrency,
        // One HTTP/2 connection, as the SDK uses per member.
        per_channel: b.concurrency,
        duration: b.duration,
        warmup: b.warmup,
        timeout: Duration::from_secs(5),
        seed: 1,
        label: label.to_string(),
        items_per_request: 1,
    };
    // Make the hot key hot: spend its 10 hits.
    let probe = sdk_client(&b.target, false).await?;
    for _ in 0..11 {
        probe.check(HOT_LIMIT, HOT_KEY, 1).await?;
    }
    let load_before = load_average();

    let open = Keys::Open(b.keys);
    let sdk = sdk_client(&b.target, true).await?;
    let sdk_no_cache = sdk_client(&b.target, false).await?;
    let sdk_cache = sdk_client(&b.target, true).await?;
    let mut totals = Case::ALL
        .iter()
        .map(|&c| Total::new(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for round in 0..b.rounds {
        let mut order = Case::ALL;
        // Odd rounds run backwards: no case always follows the same one.
        if round % 2 == 1 {
            order.reverse();
        }
        for case in order {
            let report = match case {
                Case::RawOpen => {
                    rpc::run(&spec("raw"), |channel| Raw {
                        client: RateLimiterClient::new(channel),
                        keys: open,
                    })
                    .await?
                }
                Case::SdkOpen => {
                    rpc::run(&spec("sdk"), |_| Sdk {
                        client: sdk.clone(),
                        keys: open,
                    })
                    .await?
                }
                Case::RawHot => {
                    rpc::run(&spec("raw hot"), |channel| Raw {
                        client: RateLimiterClient::new(channel),
                        keys: Keys::Hot,
                    })
                    .await?
                }
                Case::SdkHotNoCache => {
                    rpc::run(&spec("sdk hot"), |_| Sdk {
                        client: sdk_no_cache.clone(),
                        keys: Keys::Hot,
                    })
                    .await?
                }
                Case::SdkHotCache => {
                    rpc::run(&spec("sdk hot cache"), |_| Sdk {
                        client: sdk_cache.clone(),
                        keys: Keys::Hot,
                    })
                    .await?
                }
            };
            if let Some(t) = totals.iter_mut().find(|t| t.case == case) {
                t.add(&report)?;
            }
        }
    }
    let cache = sdk_cache.deny_cache_stats().unwrap_or_default();
    let load_after = load_average();

    println!(
        "{} rounds × {:?} per case (warm-up {:?}), concurrency {}, load average before: {load_before}, after: {load_after}\n",
        b.rounds, b.duration, b.warmup, b.concurrency
    );
    println!(
        "| case | calls/s | calls/s per round | p50 µs | p99 µs | allowed | denied | errors | network calls saved |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---|");
    for t in &totals {
        let saved = if t.case == Case::SdkHotCache {
            let (local, sent) = (cache.local_denials, cache.misses);
            format!(
                "{local} of {} ({:.2}%)",
                local + sent,
                100.0 * local as f64 / (local + sent).max(1) as f64
            )
        } else {
            "—".into()
        };
        let rounds = t
            .per_round
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" / ");
        println!(
            "| {} | {:.0} | {rounds} | {} | {} | {} | {} | {} | {saved} |",
            t.case.name(),
            t.throughput(),
            t.p50(),
            t.latency.value_at_quantile(0.99),
            t.allowed,
            t.denied,
            t.problems,
        );
    }
    let get = |c: Case| totals.iter().find(|t| t.case == c);
    if let (Some(raw), Some(sdk), Some(raw_hot), Some(cached)) = (
        get(Case::RawOpen),
        get(Case::SdkOpen),
        get(Case::RawHot),
        get(Case::SdkHotCache),
    ) {
        println!();
        println!(
            "SDK / raw gRPC, allowed hits: {:.3}× the calls/s; p50 {} µs vs {} µs ({:+} µs per call)",
            sdk.throughput() / raw.throughput().max(f64::MIN_POSITIVE),
            sdk.p50(),
            raw.p50(),
            sdk.p50() as i64 - raw.p50() as i64,
        );
        println!(
            "deny cache on the hot key: {:.1}× raw gRPC's calls/s",
            cached.throughput() / raw_hot.throughput().max(f64::MIN_POSITIVE),
        );
    }
    Ok(())
}
