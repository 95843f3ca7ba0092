//! quorate-sim: a deterministic simulator for quorate clusters.
//!
//! One seed fixes everything: N real quorate nodes (openraft, the state machine, the
//! engine with its batcher and fast path) run on one current-thread tokio runtime with
//! paused time, over a simulated network ([`net`]), crashable disks ([`log`]) and skewable
//! clocks ([`cluster`]), under a workload and a nemesis ([`workload`]). The history is
//! then checked against quorate's promises ([`check`]). See docs/simulator.md.
//!
//! - [`run_seed`] runs one seed and returns its [`Report`] (violations, trace, hash).
//!   With `proxies > 0` a fleet of simulated Envoy proxies ([`fleet`]) also shares RLQS
//!   limits through the cluster, checked by [`check::check_rlqs`].
//! - The `quorate-sim` binary sweeps many seeds.

pub mod check;
pub mod cluster;
pub mod fleet;
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
    /// The RLQS leader pushes shares at twice the rate it committed.
    RlqsDoubleShare,
    /// The RLQS leader stops counting shares pushed on streams that ended (an earlier
    /// leader's, or before a proxy reconnected) as spent.
    RlqsForgetEndedStreams,
}

impl PlantedBug {
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::StrictBeforeCommit => "strict-before-commit",
            PlantedBug::LyingFsync => "lying-fsync",
            PlantedBug::RlqsDoubleShare => "rlqs-double-share",
            PlantedBug::RlqsForgetEndedStreams => "rlqs-forget-ended-streams",
        }
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict-before-commit" => Ok(PlantedBug::StrictBeforeCommit),
            "lying-fsync" => Ok(PlantedBug::LyingFsync),
            "rlqs-double-share" => Ok(PlantedBug::RlqsDoubleShare),
            "rlqs-forget-ended-streams" => Ok(PlantedBug::RlqsForgetEndedStreams),
            other => Err(format!(
                "unknown planted bug {other:?} (known: strict-before-commit, lying-fsync, \
                 rlqs-double-share, rlqs-forget-ended-streams)"
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
    /// Simulated Envoy proxies sharing RLQS limits (0: no RLQS service runs).
    pub proxies: usize,
    /// Simulated time under workload and faults (then faults heal and the run quiesces).
    pub duration: Duration,
    /// Inject faults (crashes, partitions, lossy links, clock skew).
    pub faults: bool,
    /// With `faults`: skew and jump node clocks too.
    pub clock_faults: bool,
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
            proxies: 0,
            duration: Duration::from_secs(6),
            faults: true,
            clock_faults: true,
            plant: None,
            max_faults: None,
        }
    }

    /// An RLQS run: six proxies sharing the fleet's limits, two ordinary clients beside
    /// them, the same faults, clock faults in even seeds only (odd seeds assert the
    /// real-time properties across crashes, partitions and leader changes; see
    /// [`check::check_rlqs`]).
    pub fn rlqs(seed: u64) -> Options {
        Options {
            clients: 2,
            proxies: 6,
            clock_faults: seed.is_multiple_of(2),
            ..Options::new(seed)
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
        if self.proxies > 0 {
            cmd.push_str(&format!(" --workload rlqs --proxies {}", self.proxies));
        } else {
            cmd.push_str(" --workload hits");
        }
        if !self.faults {
            cmd.push_str(" --no-faults");
        } else if !self.clock_faults {
            cmd.push_str(" --no-clock-faults");
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
    /// What the RLQS fleet did, when proxies ran.
    pub rlqs: Option<RlqsOutcome>,
}

/// What the RLQS fleet did in one run, per bucket of [`fleet::BUCKETS`].
#[derive(Debug, Clone)]
pub struct RlqsOutcome {
    /// Most admitted by the fleet within any 1 s window.
    pub peak: Vec<u64>,
    /// Admitted per whole second from [`RLQS_WARM_UP`] on, as a fraction of the limit:
    /// the lowest second and the mean.
    pub utilisation_min: Vec<f64>,
    pub utilisation_mean: Vec<f64>,
    /// Reporting intervals from the riser's demand rise ([`fleet::RISE_AT`]) until it held
    /// 90 % of its fair share (`None`: never, or the run ended first).
    pub riser_converged: Vec<Option<f64>>,
    pub decided: Vec<u64>,
    pub admitted: Vec<u64>,
    pub assignments: u64,
    pub reports: u64,
    pub reconnects: u64,
    /// Whether the real-time properties were asserted (no clock fault was injected).
    pub clocks_in_step: bool,
    /// Real-time findings in a run with clock faults (reported, not asserted).
    pub skewed_findings: usize,
}

/// Seconds left out of the utilisation figures: proxies start with no share, and the
/// leader learns their demand from their second report on.
pub const RLQS_WARM_UP: Duration = Duration::from_secs(2);

fn rlqs_outcome(record: &fleet::FleetRecord, proxies: usize, clocks_in_step: bool) -> RlqsOutcome {
    let peaks = check::fleet_peaks(record);
    let from = RLQS_WARM_UP.as_nanos() as u64;
    let seconds: Vec<u64> = (from / 1_000_000_000..record.end / 1_000_000_000).collect();
    let mut utilisation_min = Vec::new();
    let mut utilisation_mean = Vec::new();
    for (b, bucket) in fleet::BUCKETS.iter().enumerate() {
        let per_second: Vec<f64> = seconds
            .iter()
            .map(|k| {
                let n = record.admitted[b]
                    .iter()
                    .filter(|&&t| t / 1_000_000_000 == *k)
                    .count();
                n as f64 / bucket.limit as f64
            })
            .collect();
        utilisation_min.push(per_second.iter().copied().fold(f64::NAN, f64::min));
        utilisation_mean.push(per_second.iter().sum::<f64>() / per_second.len().max(1) as f64);
    }
    let riser_converged = fleet::BUCKETS
        .iter()
        .enumerate()
        .map(|(b, bucket)| {
            let riser = fleet::riser(proxies)?;
            let fair = fleet::riser_fair_share(bucket, proxies)?;
            let reached = record
                .holdings
                .iter()
                .filter(|h| h.proxy == riser && h.bucket == b && h.from >= fleet::RISE_AT)
                .find(|h| h.rate >= fair - fair / 10)?;
            Some((reached.from - fleet::RISE_AT) as f64 / fleet::INTERVAL.as_nanos() as f64)
        })
        .collect();
    RlqsOutcome {
        peak: peaks.iter().map(|p| p.0).collect(),
        utilisation_min,
        utilisation_mean,
        riser_converged,
        decided: record.decided.clone(),
        admitted: record.admitted.iter().map(|a| a.len() as u64).collect(),
        assignments: record.assignments,
        reports: record.reports,
        reconnects: record.reconnects,
        clocks_in_step,
        skewed_findings: 0,
    }
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
    quorate_server::engine::planted::set_rlqs_double_share(
        options.plant == Some(PlantedBug::RlqsDoubleShare),
    );
    quorate_server::engine::planted::set_rlqs_forget_ended_streams(
        options.plant == Some(PlantedBug::RlqsForgetEndedStreams),
    );
    let report = runtime.block_on(simulate(options.clone()));
    quorate_server::engine::planted::set_strict_before_commit(false);
    quorate_server::engine::planted::set_rlqs_double_share(false);
    quorate_server::engine::planted::set_rlqs_forget_ended_streams(false);
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
    let mut cluster = Cluster::new(options.nodes, rng, trace.clone(), faults.clone(), disk_mode)?;
    cluster.rlqs = options.proxies > 0;
    let cluster = Arc::new(cluster);
    let with_rlqs = options.proxies > 0;
    let policy = move |n| {
        let mut text = workload::policy_text(n);
        if with_rlqs {
            text.push_str(&fleet::policy_section());
        }
        text
    };
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
            source: policy(0),
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
        policy,
    )));
    let fleet = fleet::Fleet::new(tokio::time::Instant::now());
    for p in 0..options.proxies {
        tasks.push(tokio::spawn(fleet::proxy(
            Arc::clone(&cluster),
            fleet.clone(),
            p,
            options.proxies,
            Arc::clone(&stop),
        )));
    }
    if options.faults {
        tasks.push(tokio::spawn(workload::nemesis(
            Arc::clone(&cluster),
            Arc::clone(&stop),
            options.max_faults,
            options.clock_faults,
        )));
    }
    tokio::time::sleep(options.duration).await;
    stop.store(true, Ordering::Relaxed);
    fleet.stopped();
    for t in tasks {
        let _ = t.await;
    }
    let fleet_record = fleet.finish();
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
    let mut violations = check::check(&Evidence {
        ops: &ops,
        applied: &applied,
        leaders: &leaders,
        finals: &finals,
        fast_unreplicated_cap: (cluster.settings.max_inflight * cluster.settings.max_hits) as u64
            + 65_536,
    });
    let injected = faults.snapshot();
    let rlqs = (options.proxies > 0).then(|| {
        let clocks_in_step =
            !injected.contains_key("clock_skew") && !injected.contains_key("clock_jump");
        let (found, skewed) = check::check_rlqs(&check::RlqsEvidence {
            fleet: &fleet_record,
            applied: &applied,
            clocks_in_step,
        });
        violations.extend(found);
        for v in &skewed {
            trace.event(format!("UNDER CLOCK FAULTS [{}] {}", v.invariant, v.detail));
        }
        let mut outcome = rlqs_outcome(&fleet_record, options.proxies, clocks_in_step);
        outcome.skewed_findings = skewed.len();
        outcome
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
        faults: injected,
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
        rlqs,
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
