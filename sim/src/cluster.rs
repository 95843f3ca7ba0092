//! N real quorate nodes in one process: start, crash, restart, observe.
//!
//! Each node is the real thing from the Raft handle up — openraft, quorate's state
//! machine (on a temp dir), its engine with batcher, fast path and leadership watcher —
//! wired to the simulated [`Net`], a crashable [`MemLog`] and its own skewable clock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{ServerState, SnapshotPolicy};
use quorate_algorithms::Nanos;
use quorate_server::engine::{BatchSettings, Engine, LeaderClock};
use quorate_server::grpc::rlqs::Rlqs;
use quorate_server::metrics::Metrics;
use quorate_server::raft::peer_auth::PeerAuth;
use quorate_server::raft::state_machine::{SharedState, StateMachine};
use quorate_server::raft::typ::Raft;
use quorate_server::raft::{Node, NodeId};

use crate::log::{DiskMode, MemLog, SharedDisk};
use crate::net::{Net, NodeNet};
use crate::rng::SimRng;
use crate::sm::{ApplyLog, RecordingStateMachine};
use crate::trace::{Faults, Trace};
use crate::SimError;

/// Unix time at which every simulation starts (2025-06-15), so timestamps are realistic
/// and identical across runs.
const EPOCH: Nanos = 1_750_000_000_000_000_000;

/// A running node.
pub struct SimNode {
    pub id: NodeId,
    pub incarnation: u32,
    pub raft: Raft,
    pub engine: Arc<Engine>,
    /// The engine's metrics (decisions resolve their limits against them).
    pub metrics: Arc<Metrics>,
    pub shared: Arc<SharedState>,
    /// The node's RLQS service (runs with simulated proxies only; see [`Cluster::rlqs`]).
    pub rlqs: Option<Arc<Rlqs>>,
    /// Its share rounds, stopped when the node crashes (the process is gone).
    rounds: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("id", &self.id)
            .field("incarnation", &self.incarnation)
            .finish()
    }
}

/// One node incarnation leading under one leader id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    pub term: u64,
    pub node: NodeId,
    pub incarnation: u32,
    /// Simulated milliseconds since the start, when first seen.
    pub at_ms: u64,
}

/// The fake address a node is known by (never bound); the port is the node id.
pub fn node_addr(id: NodeId) -> Node {
    let port = u16::try_from(id).unwrap_or(u16::MAX);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Node {
        grpc: addr,
        http: addr,
        peer: addr,
    }
}

/// Which node a leader hint names.
pub fn node_id_of(node: &Node) -> NodeId {
    NodeId::from(node.peer.port())
}

#[derive(Debug)]
pub struct Cluster {
    pub ids: Vec<NodeId>,
    pub net: Net,
    pub rng: SimRng,
    pub trace: Trace,
    pub faults: Faults,
    pub applied: ApplyLog,
    /// Every leadership, when first seen. openraft restores a restarted leader with its
    /// old leader id at once (`Engine::startup`), so one id may lead in several
    /// incarnations.
    pub leaders: Arc<Mutex<Vec<Leadership>>>,
    disks: BTreeMap<NodeId, SharedDisk>,
    dirs: BTreeMap<NodeId, tempfile::TempDir>,
    skews: BTreeMap<NodeId, Arc<AtomicI64>>,
    live: Mutex<BTreeMap<NodeId, Arc<SimNode>>>,
    incarnations: Mutex<BTreeMap<NodeId, u32>>,
    config: Arc<openraft::Config>,
    pub settings: BatchSettings,
    /// Start each node's RLQS service and share rounds. Off unless proxies run: the
    /// rounds' timers would change the interleavings of every other seed.
    pub rlqs: bool,
    disk_mode: DiskMode,
    start: tokio::time::Instant,
}

impl Cluster {
    pub fn new(
        n: usize,
        rng: SimRng,
        trace: Trace,
        faults: Faults,
        disk_mode: DiskMode,
    ) -> Result<Cluster, SimError> {
        let ids: Vec<NodeId> = (1..=n as u64).collect();
        let config = openraft::Config {
            cluster_name: "quorate-sim".into(),
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshots are built on a blocking thread (spawn_blocking), whose timing the
            // simulator cannot control; see docs/simulator.md.
            snapshot_policy: SnapshotPolicy::Never,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| SimError::Setup(e.to_string()))?;
        let mut dirs = BTreeMap::new();
        for id in &ids {
            dirs.insert(
                *id,
                tempfile::tempdir().map_err(|e| SimError::Setup(e.to_string()))?,
            );
        }
        Ok(Cluster {
            net: Net::new(rng.clone(), faults.clone()),
            disks: ids.iter().map(|id| (*id, SharedDisk::default())).collect(),
            skews: ids.iter().map(|id| (*id, Arc::default())).collect(),
            ids,
            rng,
            trace,
            faults,
            applied: ApplyLog::default(),
            leaders: Arc::default(),
            dirs,
            live: Mutex::default(),
            incarnations: Mutex::default(),
            config: Arc::new(config),
            settings: BatchSettings {
                max_hits: 64,
                max_inflight: 1,
                decision_timeout: Duration::from_secs(1),
            },
            rlqs: false,
            disk_mode,
            start: tokio::time::Instant::now(),
        })
    }

    /// Node `id`'s wall clock now: simulated time plus its skew.
    pub fn wall(&self, id: NodeId) -> Nanos {
        let skew = self.skews.get(&id).map_or(0, |s| s.load(Ordering::Relaxed));
        wall_at(self.start, skew)
    }

    /// Moves node `id`'s clock by `delta` nanoseconds (negative: backwards).
    pub fn shift_clock(&self, id: NodeId, delta: i64) -> i64 {
        match self.skews.get(&id) {
            Some(s) => s.fetch_add(delta, Ordering::Relaxed) + delta,
            None => 0,
        }
    }

    /// Sets node `id`'s clock skew.
    pub fn set_skew(&self, id: NodeId, skew: i64) {
        if let Some(s) = self.skews.get(&id) {
            s.store(skew, Ordering::Relaxed);
        }
    }

    fn with_live<T>(&self, f: impl FnOnce(&mut BTreeMap<NodeId, Arc<SimNode>>) -> T) -> T {
        let mut guard = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn node(&self, id: NodeId) -> Option<Arc<SimNode>> {
        self.with_live(|l| l.get(&id).cloned())
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        self.with_live(|l| l.keys().copied().collect())
    }

    pub fn live_nodes(&self) -> Vec<Arc<SimNode>> {
        self.with_live(|l| l.values().cloned().collect())
    }

    /// The node that currently believes it leads with the highest term, if any.
    pub fn leader(&self) -> Option<Arc<SimNode>> {
        self.live_nodes()
            .into_iter()
            .filter(|n| {
                let m = n.raft.metrics().borrow().clone();
                m.state == ServerState::Leader
            })
            .max_by_key(|n| n.raft.metrics().borrow().current_term)
    }

    /// Starts (or restarts) node `id` from what its disk holds.
    pub async fn start(self: &Arc<Self>, id: NodeId) -> Result<Arc<SimNode>, SimError> {
        let incarnation = {
            let mut inc = self.incarnations.lock().unwrap_or_else(|p| p.into_inner());
            let n = inc.entry(id).or_default();
            *n += 1;
            *n
        };
        let disk = self.disks.get(&id).cloned().unwrap_or_default();
        let log = MemLog::open(disk, self.rng.clone(), self.disk_mode);
        let dir = self
            .dirs
            .get(&id)
            .ok_or_else(|| SimError::Setup(format!("no directory for node {id}")))?;
        let sm = StateMachine::open(dir.path()).map_err(|e| SimError::Setup(e.to_string()))?;
        let shared = sm.shared();
        let recording = RecordingStateMachine {
            inner: sm,
            node: id,
            incarnation,
            log: self.applied.clone(),
        };
        let network = NodeNet {
            net: self.net.clone(),
            from: id,
        };
        let raft = Raft::new(id, Arc::clone(&self.config), network, log, recording)
            .await
            .map_err(|e| SimError::Setup(e.to_string()))?;
        let metrics = Arc::new(Metrics::new().map_err(|e| SimError::Setup(e.to_string()))?);
        let skew = self.skews.get(&id).cloned().unwrap_or_default();
        let start = self.start;
        let source: quorate_server::engine::WallSource =
            Arc::new(move || wall_at(start, skew.load(Ordering::Relaxed)));
        let clock = Arc::new(LeaderClock::with_source(Arc::clone(&source)));
        let engine = Arc::new(Engine::start(
            raft.clone(),
            id,
            Arc::clone(&shared),
            Arc::clone(&metrics),
            self.settings,
            PeerAuth::default(),
            std::time::Duration::from_millis(self.config.election_timeout_min),
            clock,
        ));
        // As in `node.rs`: the RLQS service has its own leader clock on the node's wall
        // time. Stream ids unique per node incarnation, without drawing from the RNG.
        let rlqs = self.rlqs.then(|| {
            Rlqs::with_clock(
                raft.clone(),
                Arc::clone(&engine),
                Arc::clone(&metrics),
                LeaderClock::with_source(source),
                (id << 48) | (u64::from(incarnation) << 32),
            )
        });
        let rounds = rlqs
            .as_ref()
            .map(|r| tokio::spawn(Arc::clone(r).run_rounds()));
        let node = Arc::new(SimNode {
            id,
            incarnation,
            raft: raft.clone(),
            engine,
            metrics,
            shared,
            rlqs,
            rounds,
        });
        self.with_live(|l| l.insert(id, Arc::clone(&node)));
        self.net.register(id, raft.clone());
        self.watch_leadership(id, incarnation, raft);
        Ok(node)
    }

    /// Records every (term, leader) this node reports, for the election-safety check.
    fn watch_leadership(&self, id: NodeId, incarnation: u32, raft: Raft) {
        let leaders = Arc::clone(&self.leaders);
        let trace = self.trace.clone();
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            loop {
                // The same test quorate's engine uses to act as leader: openraft may
                // report `state: Leader` for a moment after granting a higher vote to
                // another node, but `current_leader` then already names that node.
                let (leads, term, vote) = {
                    let m = rx.borrow_and_update();
                    (
                        m.state == ServerState::Leader && m.current_leader == Some(id),
                        m.current_term,
                        m.vote,
                    )
                };
                if leads {
                    let new = {
                        let mut seen = leaders.lock().unwrap_or_else(|p| p.into_inner());
                        let new = !seen
                            .iter()
                            .any(|l| (l.term, l.node, l.incarnation) == (term, id, incarnation));
                        if new {
                            seen.push(Leadership {
                                term,
                                node: id,
                                incarnation,
                                at_ms: trace.millis(),
                            });
                        }
                        new
                    };
                    if new {
                        trace.event(format!(
                            "n{id}#{incarnation} leads term {term} (vote {vote})"
                        ));
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Node `id` loses power: it stops at once and keeps only what its disk fsynced.
    pub async fn crash(&self, id: NodeId) {
        let Some(node) = self.with_live(|l| l.remove(&id)) else {
            return;
        };
        self.net.unregister(id);
        if let Some(rounds) = &node.rounds {
            rounds.abort();
        }
        let lost = self.disks.get(&id).map_or(0, SharedDisk::crash);
        let _ = node.raft.shutdown().await;
        self.faults.count("crash");
        for _ in 0..lost {
            self.faults.count("unfsynced_entry_lost");
        }
        self.trace.event(format!(
            "CRASH n{id} (incarnation {}): {lost} unfsynced entries lost",
            node.incarnation
        ));
    }

    /// Forms the cluster with every node as a voter.
    pub async fn initialize(&self) -> Result<(), SimError> {
        let first = self
            .ids
            .first()
            .and_then(|id| self.node(*id))
            .ok_or_else(|| SimError::Setup("first node is not running".into()))?;
        let members: BTreeMap<NodeId, Node> =
            self.ids.iter().map(|id| (*id, node_addr(*id))).collect();
        first
            .raft
            .initialize(members)
            .await
            .map_err(|e| SimError::Setup(e.to_string()))
    }

    /// Stops every node (end of run).
    pub async fn shutdown(&self) {
        for node in self.with_live(std::mem::take).into_values() {
            if let Some(rounds) = &node.rounds {
                rounds.abort();
            }
            let _ = node.raft.shutdown().await;
        }
    }
}

fn wall_at(start: tokio::time::Instant, skew: i64) -> Nanos {
    let elapsed = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    EPOCH.saturating_add(elapsed).saturating_add_signed(skew)
}
