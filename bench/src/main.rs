//! `quorate-bench`: the load generator for quorate's decision API.
//!
//! - `check`: drive `quorate.v1.RateLimiter/Check` at a fixed concurrency for a fixed time;
//!   print throughput and p50/p99/p999 latency, and verify every answer was a decision;
//! - `null-server`: a do-nothing `RateLimiter` (the ceiling to compare with);
//! - `suite`: start the null server, a single node and a 3-node cluster, measure them all
//!   in one run and print the markdown table recorded in `docs/benchmarks.md`.
//!
//! - `rls`: drive Envoy RLS `ShouldRateLimit` (1..n descriptors), verifying every answer;
//!   `null-rls`: a do-nothing RLS server; `rls-frame`: write one request as an h2load body;
//! - `ext-authz`: drive Envoy ext_authz `Check` (API key, JWT or no identity);
//! - `sdk`: the Rust SDK next to raw gRPC (overhead per call, the deny cache on a hot
//!   over-limit key), against a node started with `bench/sdk-policy.yaml`;
//! - `nodes`: start one node or a 3-node cluster (as `suite` does) and hold it up, for
//!   scripts that measure other clients or servers next to quorate (`bench/envoy.sh`).
//! - `keys-sweep`: RLS throughput and memory per live key as the key count grows, on one
//!   node and 3 nodes ([`key_sweep`]);
//! - `rlqs`: Envoy RLQS on one node and 3 nodes: the reporting load and assignments a
//!   leader absorbs (proxies × buckets), its CPU, local decisions against RLS calls
//!   ([`rlqs`]);
//! - `sliding-accuracy`: generated Poisson and bursty traffic through the sliding window
//!   at several precisions and the exact sliding log, in process ([`accuracy`]).
//!
//! Modules: [`keys`] (key distributions), [`load`] (the generator and answer checks),
//! [`report`] (human and JSON output), [`null_server`], [`procs`] (child processes,
//! `/proc` CPU time, `/metrics`), [`suite`].

mod accuracy;
mod authz;
mod key_sweep;
mod keys;
mod load;
mod null_server;
mod overload;
mod procs;
mod report;
mod rlqs;
mod rls;
mod rpc;
mod sdk;
mod suite;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::keys::{Distribution, KeySpace};

#[derive(Debug, Parser)]
#[command(name = "quorate-bench", version, about = "Load generator for quorate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive `Check` at a fixed concurrency and report throughput and latency.
    Check(CheckArgs),
    /// Serve a do-nothing `quorate.v1.RateLimiter` (every hit allowed at once).
    NullServer {
        /// Listen address (port 0 picks one; the ready line says which).
        #[arg(long, default_value = "127.0.0.1:8081")]
        grpc: SocketAddr,
    },
    /// Measure the null server, one node and three nodes in one run; print markdown.
    Suite(SuiteArgs),
    /// Drive Envoy RLS v3 `ShouldRateLimit` and report throughput and latency.
    Rls(RlsArgs),
    /// Serve a do-nothing Envoy RLS v3 (OK, one OK status per descriptor).
    NullRls {
        /// Listen address (port 0 picks one; the ready line says which).
        #[arg(long, default_value = "127.0.0.1:8081")]
        grpc: SocketAddr,
    },
    /// Write one `ShouldRateLimit` request as a gRPC frame (h2load's `-d` body).
    RlsFrame {
        #[arg(long, default_value = "bench1")]
        domain: String,
        /// Descriptors in the request (entry `k<i> = <prefix><key>` each).
        #[arg(long, default_value_t = 1)]
        descriptors: usize,
        #[arg(long, default_value = "k")]
        key_prefix: String,
        /// The counter key every descriptor names.
        #[arg(long, default_value_t = 0)]
        key: u64,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Drive Envoy ext_authz v3 `Check` and report throughput and latency.
    ExtAuthz(ExtAuthzArgs),
    /// How far sliding windows overshoot their limit in true windows, against the exact
    /// log, on generated traffic (in process; no server).
    SlidingAccuracy {
        /// Keys; key i runs at 0.2 + 2.8·i/(keys−1) times the limit's rate.
        #[arg(long, default_value_t = 4_000)]
        keys: usize,
        /// Traffic per key (e.g. 30m).
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 100)]
        limit: u64,
        /// The window, in seconds.
        #[arg(long, default_value_t = 60)]
        window_secs: u64,
        /// Sliding-window precisions to measure (1 = the two-counter form).
        #[arg(long, default_value = "1,4,10,20,60", value_delimiter = ',')]
        precisions: Vec<u16>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The Rust SDK next to raw gRPC: overhead per call, deny cache on a hot key.
    Sdk(SdkArgs),
    /// One node offered 0.5x and 2x its capacity (open loop), with load shedding and
    /// without; prints a markdown table.
    Overload(overload::OverloadConfig),
    /// RLS throughput and memory per live key as the number of keys grows (fresh servers
    /// per key count, all keys made live first); prints a markdown table.
    KeysSweep(key_sweep::SweepConfig),
    /// Envoy RLQS on fresh servers: reports and assignments a leader absorbs per
    /// proxies × buckets, node CPU, local decisions next to the same limit over RLS;
    /// prints a markdown table.
    Rlqs(rlqs::RlqsConfig),
    /// Start one quorate node or a 3-node cluster with a policy and hold it up.
    Nodes(suite::NodesConfig),
}

#[derive(Debug, Args)]
struct SdkArgs {
    /// gRPC endpoint of a node started with `bench/sdk-policy.yaml`.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    target: String,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Distinct keys of the allowed-hits cases.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Rounds: every case runs once per round, the rounds interleaved, so a shared
    /// machine's load changes fall on all cases alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The closed loop every load mode runs: how many calls in flight, for how long, over
/// which keys.
#[derive(Debug, Args)]
struct LoopArgs {
    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// In-flight calls per HTTP/2 connection (connections = concurrency / this).
    #[arg(long, default_value_t = 16)]
    per_connection: usize,
    /// Measured time (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before it.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Number of distinct counter keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Zipf exponent s (P(rank k) ∝ 1/k^s).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Per-call timeout (a late answer counts as DEADLINE_EXCEEDED).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
}

impl LoopArgs {
    fn key_space(&self) -> anyhow::Result<KeySpace> {
        KeySpace::new(self.distribution, self.keys, self.zipf_s)
    }
}

/// Where a load mode sends its calls and how it reports, shared by `check`, `rls` and
/// `ext-authz`.
#[derive(Debug, Args)]
struct DriveArgs {
    /// gRPC endpoint(s), comma-separated; connections are spread over them.
    #[arg(long, default_value = "http://127.0.0.1:8081", value_delimiter = ',')]
    target: Vec<String>,
    /// Prefix of every counter key.
    #[arg(long, default_value = "k")]
    key_prefix: String,
    /// Seed of the key draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// Exit 0 even when calls failed (they are still reported).
    #[arg(long)]
    allow_errors: bool,
}

/// Options shared by the Envoy modes.
#[derive(Debug, Args)]
struct EnvoyLoadArgs {
    #[command(flatten)]
    drive: DriveArgs,
    #[command(flatten)]
    run: LoopArgs,
}

#[derive(Debug, Args)]
struct RlsArgs {
    #[arg(long, default_value = "bench1")]
    domain: String,
    /// Descriptors per request (1 to 16).
    #[arg(long, default_value_t = 1)]
    descriptors: usize,
    /// Accept answers with no per-descriptor statuses (Limitador sends the overall code
    /// only); the overall code is still checked.
    #[arg(long)]
    no_statuses: bool,
    #[command(flatten)]
    load: EnvoyLoadArgs,
}

#[derive(Debug, Args)]
struct ExtAuthzArgs {
    #[arg(long, value_enum)]
    identity: authz::Identity,
    /// Host of every request.
    #[arg(long, default_value = "bench.local")]
    host: String,
    /// Path of every request (default by identity: /key/x, /jwt/x, /public/x).
    #[arg(long)]
    path: Option<String>,
    /// The API key sent with `--identity api-key`.
    #[arg(long, default_value = "bench-key")]
    api_key: String,
    /// Ed25519 private key (PEM) that signs the token for `--identity jwt`.
    #[arg(long)]
    jwt_key: Option<PathBuf>,
    #[arg(long, default_value = "https://bench.issuer")]
    jwt_issuer: String,
    #[arg(long, default_value = "bench")]
    jwt_audience: String,
    #[arg(long, default_value = "bench-user")]
    jwt_subject: String,
    /// Count denials as verified answers instead of bad ones.
    #[arg(long)]
    allow_denials: bool,
    #[command(flatten)]
    load: EnvoyLoadArgs,
}

/// Load shape shared by `check` and `suite`.
#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    run: LoopArgs,
    /// Cost of every hit.
    #[arg(long, default_value_t = 1)]
    cost: u64,
    /// Hits per request.
    #[arg(long, default_value_t = 1)]
    hits_per_request: usize,
}

#[derive(Debug, Args)]
struct CheckArgs {
    /// The limit every hit names.
    #[arg(long, default_value = "per_minute")]
    limit: String,
    #[command(flatten)]
    drive: DriveArgs,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Args)]
struct SuiteArgs {
    #[command(flatten)]
    servers: suite::Servers,
    /// Times each case is measured; the table shows medians.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Skip the "3 nodes via a follower" case.
    #[arg(long)]
    no_follower: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Count the servers' fdatasync/fsync calls during each window with `perf stat`.
    #[arg(long)]
    perf: bool,
    /// A line of free text for the report, e.g. the commit measured (repeatable).
    #[arg(long = "note")]
    notes: Vec<String>,
    /// An outside Envoy RLS server to measure next to quorate, NAME=IP:PORT[@PID]
    /// (repeatable; PID adds its CPU time). Adds the RLS rows (domain bench1, descriptor
    /// k1=<key>): configure it like bench/envoy/limitador-limits.yaml.
    #[arg(long = "extra-target")]
    extra_targets: Vec<suite::ExtraTarget>,
    #[command(flatten)]
    load: LoadArgs,
}

/// `10s`, `500ms`, `2m`, `1.5s`.
/// `PROXIESxBUCKETS`, both at least 1 (buckets at most 1000: `max_buckets_per_stream`).
fn parse_load(text: &str) -> Result<(usize, usize), String> {
    let (p, b) = text
        .split_once(['x', '×'])
        .ok_or_else(|| format!("{text:?} is not PROXIESxBUCKETS (e.g. 100x10)"))?;
    let p: usize = p
        .trim()
        .parse()
        .map_err(|e| format!("proxies in {text:?}: {e}"))?;
    let b: usize = b
        .trim()
        .parse()
        .map_err(|e| format!("buckets in {text:?}: {e}"))?;
    if p == 0 || !(1..=1000).contains(&b) {
        return Err(format!("{text:?}: proxies ≥ 1 and 1 ≤ buckets ≤ 1000"));
    }
    Ok((p, b))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?} (e.g. 10s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::NullServer { grpc } => null_server::serve(grpc).await,
        Command::Check(args) => check(args).await,
        Command::NullRls { grpc } => rls::serve_null(grpc).await,
        Command::RlsFrame {
            domain,
            descriptors,
            key_prefix,
            key,
            out,
        } => {
            let frame = rls::grpc_frame(&rls::request(&domain, descriptors, &key_prefix, key));
            std::fs::write(&out, frame).with_context(|| format!("cannot write {}", out.display()))
        }
        Command::Rls(args) => rls_load(args).await,
        Command::SlidingAccuracy {
            keys,
            duration,
            limit,
            window_secs,
            precisions,
            seed,
        } => {
            let config = accuracy::AccuracyConfig {
                keys,
                duration,
                limit,
                window: window_secs.saturating_mul(quorate_algorithms::SECOND),
                precisions,
                seed,
            };
            print!("{}", accuracy::run(&config)?);
            Ok(())
        }
        Command::ExtAuthz(args) => ext_authz_load(args).await,
        Command::Sdk(a) => {
            sdk::run(sdk::SdkBench {
                target: a.target,
                concurrency: a.concurrency,
                duration: a.duration,
                warmup: a.warmup,
                keys: a.keys,
                rounds: a.rounds,
            })
            .await
        }
        Command::Nodes(n) => suite::hold_nodes(n).await,
        Command::KeysSweep(cfg) => print_until_interrupted(key_sweep::run(cfg)).await,
        Command::Rlqs(cfg) => print_until_interrupted(rlqs::run(cfg)).await,
        Command::Overload(cfg) => print_until_interrupted(overload::run(cfg)).await,
        Command::Suite(args) => {
            let cfg = suite_config(args)?;
            print_until_interrupted(suite::run(cfg)).await
        }
    }
}

/// Runs a mode that starts servers and prints its markdown report. Ctrl-C drops the
/// mode's future, and with it every child process (drop guards).
async fn print_until_interrupted(
    mode: impl std::future::Future<Output = anyhow::Result<String>>,
) -> anyhow::Result<()> {
    let markdown = tokio::select! {
        r = mode => r?,
        _ = tokio::signal::ctrl_c() => bail!("interrupted: every server was stopped"),
    };
    println!("{markdown}");
    Ok(())
}

async fn check(args: CheckArgs) -> anyhow::Result<()> {
    let (d, l) = (&args.drive, &args.load.run);
    let config = load::LoadConfig {
        targets: d.target.clone(),
        concurrency: l.concurrency,
        per_channel: l.per_connection,
        duration: l.duration,
        warmup: l.warmup,
        keys: l.key_space()?,
        key_prefix: d.key_prefix.clone(),
        limit: args.limit.clone(),
        cost: args.load.cost,
        hits_per_request: args.load.hits_per_request,
        timeout: l.timeout,
        seed: d.seed,
    };
    let r = load::run(&config).await?;
    finish(&r, d)
}

fn run_spec(a: &EnvoyLoadArgs, label: String, items: usize) -> rpc::RunSpec {
    let l = &a.run;
    rpc::RunSpec {
        targets: a.drive.target.clone(),
        concurrency: l.concurrency,
        per_channel: l.per_connection,
        duration: l.duration,
        warmup: l.warmup,
        timeout: l.timeout,
        seed: a.drive.seed,
        label,
        items_per_request: items,
    }
}

/// Prints a closed-loop run's report (one JSON line with `--json`) and fails when calls
/// failed (unless `--allow-errors`) or none succeeded.
fn finish(r: &load::Report, d: &DriveArgs) -> anyhow::Result<()> {
    if d.json {
        println!("{}", report::json(r));
    } else {
        print!("{}", report::text(r));
    }
    if r.problems() > 0 {
        eprintln!("{}", report::problems_line(r));
        if !d.allow_errors {
            bail!("{} call(s) failed or were not real decisions", r.problems());
        }
    }
    if r.ok == 0 {
        bail!("no call succeeded in the measured window");
    }
    Ok(())
}

async fn rls_load(args: RlsArgs) -> anyhow::Result<()> {
    let l = &args.load;
    if !(1..=16).contains(&args.descriptors) {
        bail!("--descriptors must be 1 to 16");
    }
    let keys = l.run.key_space()?;
    let spec = run_spec(
        l,
        format!("rls {} ×{}", args.domain, args.descriptors),
        args.descriptors,
    );
    let r = rpc::run(&spec, |channel| rls::RlsCaller {
        client: envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient::new(channel),
        domain: args.domain.clone(),
        descriptors: args.descriptors,
        prefix: l.drive.key_prefix.clone(),
        keys: keys.clone(),
        statuses: !args.no_statuses,
    })
    .await?;
    finish(&r, &l.drive)
}

async fn ext_authz_load(args: ExtAuthzArgs) -> anyhow::Result<()> {
    use authz::Identity;
    let l = &args.load;
    let (credential, default_path) = match args.identity {
        Identity::ApiKey => (vec![("x-api-key".into(), args.api_key.clone())], "/key/x"),
        Identity::Jwt => {
            let key = args
                .jwt_key
                .as_deref()
                .ok_or_else(|| anyhow!("--identity jwt needs --jwt-key"))?;
            let token =
                authz::sign_jwt(key, &args.jwt_issuer, &args.jwt_audience, &args.jwt_subject)?;
            (
                vec![("authorization".into(), format!("Bearer {token}"))],
                "/jwt/x",
            )
        }
        Identity::None => (Vec::new(), "/public/x"),
    };
    let shape = std::sync::Arc::new(authz::Shape {
        host: args.host.clone(),
        path: args.path.clone().unwrap_or_else(|| default_path.into()),
        credential,
        key_prefix: l.drive.key_prefix.clone(),
        keys: l.run.key_space()?,
        expect_allow: !args.allow_denials,
    });
    let label = format!("ext_authz {:?} {}", args.identity, shape.path);
    let r = rpc::run(&run_spec(l, label, 1), |channel| authz::AuthzCaller {
        client: envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel),
        shape: std::sync::Arc::clone(&shape),
    })
    .await?;
    finish(&r, &l.drive)
}

fn suite_config(args: SuiteArgs) -> anyhow::Result<suite::SuiteConfig> {
    let LoadArgs {
        run: l,
        cost,
        hits_per_request,
    } = args.load;
    let myself = std::env::current_exe().map_err(|e| anyhow!("cannot find this binary: {e}"))?;
    Ok(suite::SuiteConfig {
        servers: args.servers,
        myself,
        duration: l.duration,
        warmup: l.warmup,
        concurrency: l.concurrency,
        per_channel: l.per_connection,
        keys: l.keys,
        distribution: l.distribution,
        zipf_s: l.zipf_s,
        cost,
        hits_per_request,
        timeout: l.timeout,
        rounds: args.rounds,
        follower: !args.no_follower,
        out: args.out,
        notes: args.notes,
        perf: args.perf,
        extra_targets: args.extra_targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every mode's flags (the shared flattened groups included) form one valid command:
    /// no two flags of a mode share a name.
    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "quorate-bench",
            "check",
            "--target",
            "http://a:1,http://b:2",
            "--hits-per-request",
            "3",
            "--seed",
            "7",
        ])
        .expect("check flags parse");
        let Command::Check(args) = cli.command else {
            panic!("not check")
        };
        assert_eq!(args.drive.target.len(), 2);
        assert_eq!((args.load.hits_per_request, args.drive.seed), (3, 7));
        assert_eq!(args.load.run.concurrency, 64);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("1h").is_err());
    }
}
