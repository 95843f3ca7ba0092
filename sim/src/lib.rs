//! quorate-sim: a deterministic simulator for quorate clusters.
//!
//! One seed fixes everything: N real quorate nodes (openraft, the state machine, the
//! engine with its batcher and fast path) run on one current-thread tokio runtime with
//! paused time, over a simulated network ([`net`]), crashable disks ([`log`]) and skewable
//! clocks ([`cluster`]), under a workload and a nemesis ([`workload`]). The history is
//! then checked against quorate's promises ([`check`]). See docs/simulator.md.
//!
//! - [`run_seed`] runs one seed and returns its [`Report`] (violations, trace, hash).
//! - The `quorate-sim` binary sweeps many seeds.

pub mod check;
pub mod cluster;
pub mod log;
pub mod net;
pub mod rng;
pub mod sm;
pub mod trace;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_server::raft::{Command, CommandResponse};

use crate::check::{Evidence, FinalState, Violation};
use crate::cluster::Cluster;
use crate::rng::SimRng;
use crate::trace::{Faults, Trace};
use crate::workload::History;

/// Why a simulation could not run at all (not a finding about quorate).
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("setting up the simulation failed: {0}")]
    Setup(String),
}

/// A bug planted on purpose, to prove the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// The leader answers strict hits from memory before they commit.
    StrictBeforeCommit,
    /// Disks acknowledge fsyncs before the data is durable.
    LyingFsync,
}

impl PlantedBug {
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::StrictBeforeCommit => "strict-before-commit",
            PlantedBug::LyingFsync => "lying-fsync",
        }
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict-before-commit" => Ok(PlantedBug::StrictBeforeCommit),
            "lying-fsync" => Ok(PlantedBug::LyingFsync),
            other => Err(format!(
                "unknown planted bug {other:?} (known: strict-before-commit, lying-fsync)"
            )),
        }
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    /// Simulated time under workload and faults (then faults heal and the run quiesces).
    pub duration: Duration,
    /// Inject faults (crashes, partitions, lossy links, clock skew).
    pub faults: bool,
    pub plant: Option<PlantedBug>,
    /// Stop injecting faults after this many nemesis actions (set by shrinking).
    pub max_faults: Option<u32>,
}

impl Options {
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            nodes: 3,
            clients: 6,
            duration: Duration::from_secs(6),
            faults: true,
            plant: None,
            max_faults: None,
        }
    }

    /// The command line that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run -p quorate-sim -- --seed {} --nodes {} --clients {} --secs {}",
            self.seed,
            self.nodes,
            self.clients,
            self.duration.as_secs_f64()
        );
        if !self.faults {
            cmd.push_str(" --no-faults");
        }
        if let Some(max) = self.max_faults {
            cmd.push_str(&format!(" --max-faults {max}"));
        }
        if let Some(bug) = self.plant {
            cmd.push_str(" --plant ");
            cmd.push_str(bug.name());
        }
        cmd.push_str(" --trace");
        cmd
    }
}

/// The outcome of one seed.
#[derive(Debug)]
pub struct Report {
    pub options: Options,
    pub violations: Vec<Violation>,
    pub trace: Vec<String>,
    /// Hash of the trace, every client operation and every apply: equal for equal runs.
    pub hash: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub ops: usize,
    pub granted: usize,
    pub entries: usize,
    /// Unused reserved quota given back by committed settles.
    pub settled: u64,
    /// Leaderships seen (node incarnations under a leader id).
    pub terms: usize,
    /// Terms that had more than one leader (legal in openraft's default mode).
    pub shared_terms: usize,
}

impl Report {
    /// The failure text: replay command, violations, trace.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "seed {} FAILED\nreplay: {}\n",
            self.options.seed,
            self.options.replay_command()
        );
        for v in &self.violations {
            out.push_str(&format!("violation [{}]: {}\n", v.invariant, v.detail));
        }
        out.push_str("trace:\n");
        for line in &self.trace {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// Runs one seed on this thread, in a fresh paused-time runtime.
pub fn run_seed(options: &Options) -> Result<Report, SimError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| SimError::Setup(e.to_string()))?;
    quorate_server::raft::runtime::seed_thread_rng(options.seed);
    quorate_server::engine::planted::set_strict_before_commit(
        options.plant == Some(PlantedBug::StrictBeforeCommit),
    );
    let report = runtime.block_on(simulate(options.clone()));
    quorate_server::engine::planted::set_strict_before_commit(false);
    // Drops every task still parked (a crashed node's leftovers) with the runtime.
    drop(runtime);
    report
}

async fn simulate(options: Options) -> Result<Report, SimError> {
    let rng = SimRng::new(options.seed);
    let trace = Trace::new();
    let faults = Faults::default();
    let disk_mode = match options.plant {
        Some(PlantedBug::LyingFsync) => {
            log::DiskMode::Lying(Duration::from_millis(200), Duration::from_millis(1500))
        }
        _ => log::DiskMode::Honest(Duration::from_micros(50), Duration::from_millis(3)),
    };
    let cluster = Arc::new(Cluster::new(
        options.nodes,
        rng,
        trace.clone(),
        faults.clone(),
        disk_mode,
    )?);
    for id in cluster.ids.clone() {
        cluster.start(id).await?;
    }
    cluster.initialize().await?;
    trace.event(format!("cluster of {} formed", options.nodes));
    let initial = workload::write_through_leader(
        &cluster,
        |c, leader| Command::SetPolicy {
            ts: c.wall(leader),
            format: "quorate".into(),
            source: workload::policy_text(0),
        },
        Duration::from_secs(10),
    )
    .await;
    if !matches!(initial, Ok(CommandResponse::Policy(Ok(_)))) {
        return Err(SimError::Setup(format!("initial policy: {initial:?}")));
    }

    let history = History::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..options.clients {
        tasks.push(tokio::spawn(workload::client(
            Arc::clone(&cluster),
            c,
            history.clone(),
            Arc::clone(&stop),
        )));
    }
    tasks.push(tokio::spawn(workload::policy_churn(
        Arc::clone(&cluster),
        Arc::clone(&stop),
    )));
    if options.faults {
        tasks.push(tokio::spawn(workload::nemesis(
            Arc::clone(&cluster),
            Arc::clone(&stop),
            options.max_faults,
        )));
    }
    tokio::time::sleep(options.duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Every node back up, clocks as they are: the cluster must converge.
    for id in cluster.ids.clone() {
        workload::restart(&cluster, id).await;
    }
    trace.event("quiescing");
    let finals = quiesce(&cluster).await;
    let leaders = cluster
        .leaders
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    cluster.shutdown().await;

    let ops = history.all();
    let applied = cluster.applied.all();
    let violations = check::check(&Evidence {
        ops: &ops,
        applied: &applied,
        leaders: &leaders,
        finals: &finals,
        fast_unreplicated_cap: (cluster.settings.max_inflight * cluster.settings.max_hits) as u64
            + 65_536,
    });
    for v in &violations {
        trace.event(format!("VIOLATION [{}] {}", v.invariant, v.detail));
    }
    let lines = trace.lines();
    let op_lines: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    let apply_lines: Vec<String> = applied.iter().map(|a| format!("{a:?}")).collect();
    let hash = trace::hash_lines(
        lines
            .iter()
            .chain(&op_lines)
            .chain(&apply_lines)
            .map(String::as_str),
    );
    let granted = ops
        .iter()
        .filter_map(|o| o.outcome.as_ref().ok())
        .flatten()
        .filter(|d| d.allowed)
        .count();
    let entries = applied.iter().map(|a| a.log_id.index).max().unwrap_or(0) as usize;
    let settles: BTreeMap<u64, u64> = applied
        .iter()
        .filter_map(|a| match &a.command {
            Some(Command::Settle { items, .. }) => {
                Some((a.log_id.index, items.iter().map(|i| i.unused).sum()))
            }
            _ => None,
        })
        .collect();
    Ok(Report {
        options,
        violations,
        trace: lines,
        hash,
        faults: faults.snapshot(),
        ops: ops.len(),
        granted,
        entries,
        settled: settles.values().sum(),
        terms: leaders.len(),
        shared_terms: {
            let mut per_term: BTreeMap<u64, usize> = BTreeMap::new();
            let ids: std::collections::BTreeSet<(u64, u64)> =
                leaders.iter().map(|l| (l.term, l.node)).collect();
            for (term, _) in ids {
                *per_term.entry(term).or_default() += 1;
            }
            per_term.values().filter(|n| **n > 1).count()
        },
    })
}

/// Waits (bounded) until every node has applied the same index, then reads final states.
async fn quiesce(cluster: &Cluster) -> Vec<FinalState> {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut stable = 0;
    while tokio::time::Instant::now() < until && stable < 5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let applied: Vec<_> = cluster
            .live_nodes()
            .iter()
            .map(|n| n.raft.metrics().borrow().last_applied)
            .collect();
        let same = applied.windows(2).all(|w| w[0] == w[1]);
        stable = if same && cluster.leader().is_some() {
            stable + 1
        } else {
            0
        };
    }
    cluster
        .live_nodes()
        .iter()
        .map(|n| {
            let mut counters: Vec<String> = n
                .shared
                .counters
                .load()
                .export()
                .into_iter()
                .map(|(k, c)| format!("{k}={c:?}"))
                .collect();
            counters.sort();
            FinalState {
                node: n.id,
                incarnation: n.incarnation,
                last_applied: n.raft.metrics().borrow().last_applied.map(|l| l.index),
                counters,
                policy_versions: n
                    .shared
                    .policy_history()
                    .iter()
                    .map(|p| p.version)
                    .collect(),
            }
        })
        .collect()
}

/// Looks for a shorter failing run of the same seed. Both knobs keep the run's prefix
/// identical: the fewest nemesis actions that still fail (binary search), then the
/// shortest workload (halving). `None` when the original does not fail.
pub fn shrink(options: &Options) -> Option<Options> {
    let fails = |o: &Options| {
        run_seed(o)
            .map(|r| !r.violations.is_empty())
            .unwrap_or(false)
    };
    if !fails(options) {
        return None;
    }
    let mut best = options.clone();
    if best.faults {
        // Upper bound: one action per 150 ms at most.
        let most = u32::try_from(best.duration.as_millis() / 150 + 1).unwrap_or(u32::MAX);
        let (mut lo, mut hi) = (0u32, best.max_faults.unwrap_or(most).min(most));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let mut trial = best.clone();
            trial.max_faults = Some(mid);
            if fails(&trial) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let mut trial = best.clone();
        trial.max_faults = Some(hi);
        if fails(&trial) {
            best = trial;
        }
    }
    loop {
        let mut shorter = best.clone();
        shorter.duration = best.duration / 2;
        if shorter.duration >= Duration::from_millis(250) && fails(&shorter) {
            best = shorter;
        } else {
            return Some(best);
        }
    }
}
