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
    /// Concurrent clients, 0–64 (default 6 in hits runs, 2 beside the RLQS proxies).
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=64))]
    clients: Option<u8>,
    /// Which runs each seed gets: the hits workload, an RLQS run (Envoy proxies sharing
    /// limits, see docs/simulator.md), or both, one after the other.
    #[arg(long, value_enum, default_value_t = Workload::Both)]
    workload: Workload,
    /// Simulated Envoy proxies in RLQS runs, 1–64.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=64))]
    proxies: u8,
    /// Simulated seconds of workload and faults per seed (0.1–3600).
    #[arg(long, default_value_t = 6.0, value_parser = parse_secs)]
    secs: f64,
    /// No crashes, partitions, lossy links or clock skew.
    #[arg(long)]
    no_faults: bool,
    /// No clock skews or jumps (other faults as usual). RLQS runs of odd seeds always
    /// run without them.
    #[arg(long)]
    no_clock_faults: bool,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Hits,
    Rlqs,
    Both,
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
    let options = |seed, rlqs: bool| {
        let base = if rlqs {
            Options {
                proxies: usize::from(args.proxies),
                ..Options::rlqs(seed)
            }
        } else {
            Options::new(seed)
        };
        Options {
            nodes: usize::from(args.nodes),
            clients: args.clients.map_or(base.clients, usize::from),
            duration: Duration::from_secs_f64(args.secs),
            faults: !args.no_faults,
            clock_faults: base.clock_faults && !args.no_clock_faults,
            plant: args.plant,
            max_faults: args.max_faults,
            ..base
        }
    };
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.from..args.from.saturating_add(args.seeds)).collect(),
    };
    let runs: Vec<(u64, bool)> = seeds
        .iter()
        .flat_map(|&s| match args.workload {
            Workload::Hits => vec![(s, false)],
            Workload::Rlqs => vec![(s, true)],
            Workload::Both => vec![(s, false), (s, true)],
        })
        .collect();
    let mut rlqs_runs = RlqsTotals::default();
    let started = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let (mut failed, mut ops, mut granted, mut sim_secs) = (Vec::new(), 0usize, 0usize, 0f64);
    for &(seed, rlqs) in &runs {
        let opts = options(seed, rlqs);
        let label = if rlqs {
            format!("seed {seed} rlqs")
        } else {
            format!("seed {seed}")
        };
        let report = match run_seed(&opts) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{label}: {e}");
                failed.push(label);
                continue;
            }
        };
        if let Some(outcome) = &report.rlqs {
            rlqs_runs.add(outcome);
        }
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
            let fleet = report.rlqs.as_ref().map_or(String::new(), |o| {
                format!(
                    ", fleet peak {:?} utilisation min {} mean {} assignments {}{}",
                    o.peak,
                    percent(&o.utilisation_min),
                    percent(&o.utilisation_mean),
                    o.assignments,
                    if o.clocks_in_step {
                        ""
                    } else {
                        ", clocks skewed"
                    }
                )
            });
            println!(
                "{label}: ok ({} ops, {} granted, {} entries, {} settled, {} leaderships, {} shared terms{fleet}, hash {:016x})",
                report.ops, report.granted, report.entries, report.settled, report.terms, report.shared_terms, report.hash
            );
        } else {
            println!("{}", report.describe());
            failed.push(label);
            if args.shrink {
                if let Some(smaller) = shrink(&opts) {
                    println!("shrunk: {}", smaller.replay_command());
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    println!(
        "{} runs of {} seeds in {wall:.1}s ({:.2} runs/s, {sim_secs:.0} simulated s), {ops} client requests, {granted} granted",
        runs.len(),
        seeds.len(),
        runs.len() as f64 / wall.max(1e-9)
    );
    if rlqs_runs.runs > 0 {
        println!("{}", rlqs_runs.summary());
    }
    println!("faults injected: {faults:?}");
    if failed.is_empty() {
        println!("violations: 0");
        ExitCode::SUCCESS
    } else {
        println!("FAILED seeds: {failed:?}");
        ExitCode::FAILURE
    }
}

fn percent(fractions: &[f64]) -> String {
    let parts: Vec<String> = fractions
        .iter()
        .map(|f| format!("{:.0}%", f * 100.0))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The RLQS runs of a sweep, summed.
#[derive(Debug, Default)]
struct RlqsTotals {
    runs: u64,
    clocks_in_step: u64,
    /// Runs with clock faults whose real-time properties did not hold (not asserted).
    skewed_findings: u64,
    admitted: u64,
    decided: u64,
    assignments: u64,
    reports: u64,
    reconnects: u64,
    /// Per bucket, the highest 1 s peak in a run with clocks in step.
    peak: Vec<u64>,
    /// Per bucket, the lowest per-second utilisation in any run.
    utilisation_min: Vec<f64>,
    /// Per bucket, the riser's convergence (intervals) in each run where it converged.
    converged: Vec<Vec<f64>>,
    /// Per bucket, runs in which the riser never reached 90 % of its fair share.
    not_converged: Vec<u64>,
}

impl RlqsTotals {
    fn add(&mut self, o: &quorate_sim::RlqsOutcome) {
        self.runs += 1;
        self.skewed_findings += u64::from(o.skewed_findings > 0);
        self.admitted += o.admitted.iter().sum::<u64>();
        self.decided += o.decided.iter().sum::<u64>();
        self.assignments += o.assignments;
        self.reports += o.reports;
        self.reconnects += o.reconnects;
        self.peak.resize(o.peak.len(), 0);
        self.utilisation_min.resize(o.peak.len(), f64::INFINITY);
        if o.clocks_in_step {
            self.clocks_in_step += 1;
            for (p, q) in self.peak.iter_mut().zip(&o.peak) {
                *p = (*p).max(*q);
            }
        }
        for (u, v) in self.utilisation_min.iter_mut().zip(&o.utilisation_min) {
            *u = u.min(*v);
        }
        self.converged.resize(o.peak.len(), Vec::new());
        self.not_converged.resize(o.peak.len(), 0);
        for (b, c) in o.riser_converged.iter().enumerate() {
            match c {
                Some(intervals) => self.converged[b].push(*intervals),
                None => self.not_converged[b] += 1,
            }
        }
    }

    /// Per bucket: median and worst intervals to the riser's fair share, and misses.
    fn convergence(&self) -> String {
        let per_bucket: Vec<String> = self
            .converged
            .iter()
            .zip(&self.not_converged)
            .map(|(runs, &missed)| {
                let mut sorted = runs.clone();
                sorted.sort_by(f64::total_cmp);
                let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
                let worst = sorted.last().copied().unwrap_or(f64::NAN);
                format!("median {median:.1}, worst {worst:.1}, never {missed}")
            })
            .collect();
        format!("[{}]", per_bucket.join("; "))
    }

    fn summary(&self) -> String {
        format!(
            "rlqs: {} runs ({} with clocks in step; {} with clock faults broke a real-time property), {} requests decided by proxies, {} admitted, \
             {} assignments, {} reports, {} reconnects; highest 1 s peak per bucket (clocks in step) {:?}, \
             lowest per-second utilisation {}; intervals until the riser held 90 % of its fair share {}",
            self.runs,
            self.clocks_in_step,
            self.skewed_findings,
            self.decided,
            self.admitted,
            self.assignments,
            self.reports,
            self.reconnects,
            self.peak,
            percent(&self.utilisation_min),
            self.convergence()
        )
    }
}
