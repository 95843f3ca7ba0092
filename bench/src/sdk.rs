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

/// One row of the table.
struct Row {
    case: &'static str,
    report: Report,
    /// Deny cache: (answered locally, sent to the cluster).
    cache: Option<(u64, u64)>,
}

async fn sdk_client(target: &str, deny_cache: bool) -> anyhow::Result<Client> {
    Ok(Client::builder()
        .endpoint(target)
        .deny_cache(deny_cache)
        .connect()
        .await?)
}

/// Runs the five cases and prints the markdown table.
pub async fn run(b: SdkBench) -> anyhow::Result<()> {
    ensure!(b.concurrency > 0, "--concurrency must be at least 1");
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

    let mut rows = Vec::new();
    let open = Keys::Open(b.keys);
    let report = rpc::run(&spec("raw"), |channel| Raw {
        client: RateLimiterClient::new(channel),
        keys: open,
    })
    .await?;
    rows.push(Row {
        case: "raw gRPC, allowed hits",
        report,
        cache: None,
    });

    let client = sdk_client(&b.target, true).await?;
    let report = rpc::run(&spec("sdk"), |_| Sdk {
        client: client.clone(),
        keys: open,
    })
    .await?;
    rows.push(Row {
        case: "SDK, allowed hits",
        report,
        cache: None,
    });

    let report = rpc::run(&spec("raw hot"), |channel| Raw {
        client: RateLimiterClient::new(channel),
        keys: Keys::Hot,
    })
    .await?;
    rows.push(Row {
        case: "raw gRPC, hot over-limit key",
        report,
        cache: None,
    });

    let client = sdk_client(&b.target, false).await?;
    let report = rpc::run(&spec("sdk hot"), |_| Sdk {
        client: client.clone(),
        keys: Keys::Hot,
    })
    .await?;
    rows.push(Row {
        case: "SDK without deny cache, hot key",
        report,
        cache: None,
    });

    let client = sdk_client(&b.target, true).await?;
    let report = rpc::run(&spec("sdk hot cache"), |_| Sdk {
        client: client.clone(),
        keys: Keys::Hot,
    })
    .await?;
    let stats = client.deny_cache_stats().unwrap_or_default();
    rows.push(Row {
        case: "SDK with deny cache, hot key",
        report,
        cache: Some((stats.local_denials, stats.misses)),
    });

    println!(
        "| case | calls/s | p50 µs | p99 µs | allowed | denied | errors | network calls saved |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    for row in rows {
        let r = &row.report;
        let saved = match row.cache {
            Some((local, sent)) => format!(
                "{local} of {} ({:.2}%)",
                local + sent,
                100.0 * local as f64 / (local + sent).max(1) as f64
            ),
            None => "—".into(),
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {saved} |",
            row.case,
            r.throughput(),
            r.quantile_us(0.5),
            r.quantile_us(0.99),
            r.allowed_hits,
            r.denied_hits,
            r.problems(),
        );
    }
    Ok(())
}
