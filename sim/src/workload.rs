//! What the simulated world does to the cluster: clients, policy changes and faults.
//!
//! Clients behave like the SDK: each sticks to the node it believes leads, sends to a
//! random node when it has no idea, and follows the leader hint of an `UNAVAILABLE`
//! answer. Requests reach a node's engine as already-forwarded, so a follower answers
//! with its hint instead of forwarding over the (real, socket-based) peer transport.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use quorate_algorithms::Decision;
use quorate_server::decide::named::{resolve, NamedHit};
use quorate_server::engine::EngineError;
use quorate_server::policy::Consistency;
use quorate_server::raft::{Command, CommandResponse, NodeId};

use crate::cluster::{node_id_of, Cluster};
use crate::net::LinkFaults;

/// One limit the workload uses.
#[derive(Debug)]
pub struct LimitSpec {
    /// `<rate>_<consistency>`, e.g. `slots_fast`.
    pub name: String,
    /// The most one full quota holds (the limit, or a bucket's burst).
    pub capacity: u64,
    pub consistency: Consistency,
    /// The limit as a policy YAML flow mapping.
    yaml: String,
}

/// The rates under test: a short name, the capacity, and the rate as policy YAML.
const RATES: &[(&str, u64, &str)] = &[
    (
        "fixed",
        12,
        "algorithm: fixed_window, limit: 12, window: 1s",
    ),
    (
        "slots",
        12,
        "algorithm: sliding_window, precision: 4, limit: 12, window: 2s",
    ),
    (
        "twocounter",
        12,
        "algorithm: sliding_window, precision: 1, limit: 12, window: 1s",
    ),
    ("log", 10, "algorithm: sliding_log, limit: 10, window: 1s"),
    (
        "bucket",
        10,
        "algorithm: token_bucket, limit: 5, window: 1s, burst: 10",
    ),
];

/// Every rate in every consistency mode (`strict`: from reservations), but two: the
/// sliding log has no reservations, so `log_exact` stands for `log_strict`, and the
/// two-counter window runs exact and strict only. The order is fixed: a seed picks limits
/// by their index, so recorded seeds replay only with this order. `churn_strict`'s
/// limit changes with each policy version.
pub static LIMITS: LazyLock<Vec<LimitSpec>> = LazyLock::new(|| {
    let modes = [
        (Consistency::Exact, "exact"),
        (Consistency::Fast, "fast"),
        (Consistency::Strict, "strict"),
    ];
    let mut limits = Vec::new();
    for (consistency, mode) in modes {
        for &(rate, capacity, yaml) in RATES {
            if matches!((rate, mode), ("log", "strict") | ("twocounter", "fast")) {
                continue;
            }
            let name = format!("{rate}_{mode}");
            limits.push(LimitSpec {
                yaml: format!("{{name: {name}, {yaml}, consistency: {mode}}}"),
                name,
                capacity,
                consistency,
            });
        }
    }
    limits
});

/// The churning limit's name (strict fixed window; its limit changes per policy version).
pub const CHURN: &str = "churn_strict";

const KEYS: &[&str] = &["a", "b", "c"];

/// Costs: peeks, ones, a few more, and one larger than every limit.
const COSTS: &[u64] = &[0, 1, 1, 1, 1, 2, 3, 40];

/// The policy document of version `n` of the workload.
pub fn policy_text(n: u64) -> String {
    let mut text = String::from("limits:\n");
    for l in LIMITS.iter() {
        text.push_str("  - ");
        text.push_str(&l.yaml);
        text.push('\n');
    }
    text.push_str(&format!(
        "  - {{name: {CHURN}, algorithm: fixed_window, limit: {}, window: 1s, consistency: strict}}\n",
        8 + n % 5
    ));
    text
}

/// The consistency a workload limit was declared with.
pub fn consistency_of(limit: &str) -> Consistency {
    LIMITS
        .iter()
        .find(|l| l.name == limit)
        .map_or(Consistency::Strict, |l| l.consistency)
}

/// One client request and what the client heard.
#[derive(Debug, Clone)]
pub struct Op {
    pub client: usize,
    pub node: NodeId,
    pub start_ms: u64,
    pub end_ms: u64,
    /// `(limit, key, cost)` of each hit.
    pub hits: Vec<(String, String, u64)>,
    pub outcome: Result<Vec<Decision>, String>,
}

/// Every client request of a run.
#[derive(Debug, Clone, Default)]
pub struct History(Arc<Mutex<Vec<Op>>>);

impl History {
    fn push(&self, op: Op) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn all(&self) -> Vec<Op> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One client: requests until `stop`.
pub async fn client(cluster: Arc<Cluster>, id: usize, history: History, stop: Arc<AtomicBool>) {
    let rng = cluster.rng.clone();
    let mut preferred: Option<NodeId> = None;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.duration(Duration::from_millis(1), Duration::from_millis(40))).await;
        let n_hits = if rng.per_mille(200) { 2 } else { 1 };
        let mut hits = Vec::new();
        for _ in 0..n_hits {
            let limit = if rng.per_mille(100) {
                CHURN
            } else {
                rng.pick(&LIMITS).name.as_str()
            };
            hits.push((
                limit.to_string(),
                rng.pick(KEYS).to_string(),
                *rng.pick(COSTS),
            ));
        }
        let live = cluster.live_ids();
        if live.is_empty() {
            continue;
        }
        let target = match preferred.filter(|p| live.contains(p)) {
            Some(p) => p,
            None => *rng.pick(&live),
        };
        let Some(node) = cluster.node(target) else {
            continue;
        };
        let start_ms = cluster.trace.millis();
        let named = hits
            .iter()
            .map(|(limit, key, cost)| NamedHit {
                limit: limit.clone(),
                key: key.clone(),
                cost: *cost,
            })
            .collect();
        let outcome = match resolve(&node.engine.policy().set, named, &node.metrics) {
            Err(e) => Err(e),
            Ok(resolved) => {
                match tokio::time::timeout(
                    Duration::from_secs(3),
                    node.engine.check(resolved, true, true),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(EngineError::Internal("client timeout".into())),
                }
            }
        };
        drop(node);
        let outcome = match outcome {
            Ok(d) => Ok(d),
            Err(EngineError::Unavailable { reason, leader, .. }) => {
                preferred = leader
                    .as_ref()
                    .map(node_id_of)
                    .or_else(|| live.iter().copied().find(|n| Some(*n) != preferred));
                Err(format!("unavailable: {reason}"))
            }
            Err(e) => {
                preferred = None;
                Err(e.to_string())
            }
        };
        history.push(Op {
            client: id,
            node: target,
            start_ms,
            end_ms: cluster.trace.millis(),
            hits,
            outcome,
        });
    }
}

/// Writes `command` through whichever node leads; retries until `deadline`.
pub async fn write_through_leader(
    cluster: &Cluster,
    command: impl Fn(&Cluster, NodeId) -> Command,
    deadline: Duration,
) -> Result<CommandResponse, String> {
    let until = tokio::time::Instant::now() + deadline;
    let mut last = String::from("no leader");
    while tokio::time::Instant::now() < until {
        if let Some(leader) = cluster.leader() {
            let cmd = command(cluster, leader.id);
            match tokio::time::timeout(Duration::from_secs(1), leader.raft.client_write(cmd)).await
            {
                Ok(Ok(resp)) => return Ok(resp.data),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(last)
}

/// Applies policy version after version, every 0.7–2 s, until `stop`.
pub async fn policy_churn(
    cluster: Arc<Cluster>,
    stop: Arc<AtomicBool>,
    policy_text: impl Fn(u64) -> String,
) {
    let mut n = 1;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(
            cluster
                .rng
                .duration(Duration::from_millis(700), Duration::from_secs(2)),
        )
        .await;
        let text = policy_text(n);
        let result = write_through_leader(
            &cluster,
            |c, leader| Command::SetPolicy {
                ts: c.wall(leader),
                format: "quorate".into(),
                source: text.clone(),
            },
            Duration::from_secs(1),
        )
        .await;
        cluster
            .trace
            .event(format!("policy write #{n}: {result:?}"));
        n += 1;
    }
}

/// Injects faults until `stop` (or after `max_actions`, for shrinking: the run up to the
/// last action taken is the same as the full run's), then undoes them all.
/// Without `clock_faults`, the draws that would skew or jump a clock do nothing.
pub async fn nemesis(
    cluster: Arc<Cluster>,
    stop: Arc<AtomicBool>,
    max_actions: Option<u32>,
    clock_faults: bool,
) {
    let rng = cluster.rng.clone();
    let ids = cluster.ids.clone();
    let trace = cluster.trace.clone();
    let faults = cluster.faults.clone();
    let mut restarts = Vec::new();
    let mut actions = 0u32;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(rng.duration(Duration::from_millis(150), Duration::from_millis(700)))
            .await;
        if max_actions.is_some_and(|max| actions >= max) {
            break;
        }
        actions += 1;
        match rng.range(0, 100) {
            0..=14 => {
                let size = rng.range(1, (ids.len() as u64 / 2).max(1) + 1);
                let mut side = std::collections::BTreeSet::new();
                while (side.len() as u64) < size {
                    side.insert(*rng.pick(&ids));
                }
                cluster.net.partition(&side, &ids);
                faults.count("partition");
                trace.event(format!("PARTITION {side:?} | rest"));
            }
            15..=24 => {
                if let Some(leader) = cluster.leader() {
                    let side = std::collections::BTreeSet::from([leader.id]);
                    cluster.net.partition(&side, &ids);
                    faults.count("partition");
                    trace.event(format!("PARTITION leader n{} away", leader.id));
                }
            }
            25..=31 => {
                let (a, b) = (*rng.pick(&ids), *rng.pick(&ids));
                if a != b {
                    cluster.net.cut_one_way(a, b);
                    faults.count("one_way_cut");
                    trace.event(format!("CUT n{a} -> n{b}"));
                }
            }
            32..=49 => {
                cluster.net.heal();
                trace.event("HEAL network");
            }
            50..=61 => {
                let live = cluster.live_ids();
                if live.len() + 1 >= ids.len() && !live.is_empty() {
                    // Prefer the leader half of the time: that is where it hurts.
                    let victim = match cluster.leader() {
                        Some(l) if rng.per_mille(500) => l.id,
                        _ => *rng.pick(&live),
                    };
                    cluster.crash(victim).await;
                    let c = Arc::clone(&cluster);
                    let down =
                        rng.duration(Duration::from_millis(100), Duration::from_millis(1500));
                    restarts.push(tokio::spawn(async move {
                        tokio::time::sleep(down).await;
                        restart(&c, victim).await;
                    }));
                }
            }
            62..=81 if !clock_faults => {}
            62..=73 => {
                let id = *rng.pick(&ids);
                let skew = rng.range(0, 6_000_000_000) as i64 - 3_000_000_000;
                cluster.set_skew(id, skew);
                faults.count("clock_skew");
                trace.event(format!("CLOCK n{id} skew {:+}ms", skew / 1_000_000));
            }
            74..=81 => {
                let id = *rng.pick(&ids);
                let jump = rng.range(0, 10_000_000_000) as i64 - 5_000_000_000;
                let skew = cluster.shift_clock(id, jump);
                faults.count("clock_jump");
                trace.event(format!(
                    "CLOCK n{id} jumps {:+}ms (skew now {:+}ms)",
                    jump / 1_000_000,
                    skew / 1_000_000
                ));
            }
            82..=92 => {
                let f = LinkFaults {
                    drop_per_mille: rng.range(0, 150) as u32,
                    duplicate_per_mille: rng.range(0, 150) as u32,
                    min_delay: Duration::from_micros(100),
                    max_delay: rng.duration(Duration::from_millis(1), Duration::from_millis(40)),
                };
                cluster.net.set_faults(f);
                faults.count("lossy_links");
                trace.event(format!(
                    "LINKS drop {}‰ dup {}‰ delay ≤ {:?}",
                    f.drop_per_mille, f.duplicate_per_mille, f.max_delay
                ));
            }
            _ => {
                cluster.net.set_faults(LinkFaults::CLEAN);
                trace.event("LINKS clean");
            }
        }
    }
    for r in restarts {
        let _ = r.await;
    }
    cluster.net.heal();
    cluster.net.set_faults(LinkFaults::CLEAN);
    trace.event("HEAL everything (end of faults)");
}

/// Restarts a crashed node (a failure to start is itself a finding, logged in the trace).
pub async fn restart(cluster: &Arc<Cluster>, id: NodeId) {
    if cluster.node(id).is_some() {
        return;
    }
    match cluster.start(id).await {
        Ok(n) => {
            cluster.faults.count("restart");
            cluster
                .trace
                .event(format!("RESTART n{id} (incarnation {})", n.incarnation));
        }
        Err(e) => cluster.trace.event(format!("RESTART n{id} FAILED: {e}")),
    }
}
