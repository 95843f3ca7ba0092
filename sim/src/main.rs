//! `quorate-sim`: run one seed (with its trace) or sweep many, report seeds/s and faults,
//! exit non-zero on any violation.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use quorate_sim::{run_seed, shrink, Options, PlantedBug};

#[derive(Debug, Parser)]
#[command(about = "Deterministic simulation of a quorate cluster under faults")]
struct Args {
    /// Run exactly this seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep this many seeds, starting at --from.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Cluster size, 1–9.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    nodes: u8,
    /// Concurrent clients, 0–64.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(0..=64))]
    clients: u8,
    /// Simulated seconds of workload and faults per seed (0.1–3600).
    #[arg(long, default_value_t = 6.0, value_parser = parse_secs)]
    secs: f64,
    /// No crashes, partitions, lossy links or clock skew.
    #[arg(long)]
    no_faults: bool,
    /// Plant a known bug (strict-before-commit) to see the checker catch it.
    #[arg(long)]
    plant: Option<PlantedBug>,
    /// Stop injecting faults after this many nemesis actions (what --shrink prints).
    #[arg(long)]
    max_faults: Option<u32>,
    /// Print the trace of every run, not only of failing ones.
    #[arg(long)]
    trace: bool,
    /// On a failure, look for a shorter run of the same seed that still fails.
    #[arg(long)]
    shrink: bool,
}

fn parse_secs(text: &str) -> Result<f64, String> {
    let secs: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.1..=3600.0).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!("{secs} is outside 0.1..=3600"))
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = |seed| Options {
        seed,
        nodes: usize::from(args.nodes),
        clients: usize::from(args.clients),
        duration: Duration::from_secs_f64(args.secs),
        faults: !args.no_faults,
        plant: args.plant,
        max_faults: args.max_faults,
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.from..args.from.saturating_add(args.seeds)).collect(),
    };
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut failed, mut ops, mut granted, mut sim_secs) = (Vec::new(), 0usize, 0usize, 0f64);
    for seed in &seeds {
        let opts = options(*seed);
        let report = match run_seed(&opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("seed {seed}: {e}");
                failed.push(*seed);
                continue;
            }
        };
        for (k, n) in &report.faults {
            *faults.entry(k).or_default() += n;
        }
        ops += report.ops;
        granted += report.granted;
        sim_secs += opts.duration.as_secs_f64();
        if report.violations.is_empty() {
            if args.trace {
                for line in &report.trace {
                    println!("  {line}");
                }
            }
            println!(
                "seed {seed}: ok ({} ops, {} granted, {} entries, {} settled, {} leaderships, {} shared terms, hash {:016x})",
                report.ops, report.granted, report.entries, report.settled, report.terms, report.shared_terms, report.hash
            );
        } else {
            println!("{}", report.describe());
            failed.push(*seed);
            if args.shrink {
                if let Some(smaller) = shrink(&opts) {
                    println!("shrunk: {}", smaller.replay_command());
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} seeds in {wall:.1}s ({:.2} seeds/s, {sim_secs:.0} simulated s), {ops} client requests, {granted} granted",
        seeds.len(),
        seeds.len() as f64 / wall.max(1e-9)
    );
    println!("faults injected: {faults:?}");
    if failed.is_empty() {
        println!("violations: 0");
        ExitCode::SUCCESS
    } else {
        println!("FAILED seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
