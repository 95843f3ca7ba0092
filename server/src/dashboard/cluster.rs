//! The cluster as the dashboard shows it: this node's own state, the leader's replication
//! lag per follower (entries and milliseconds), and a bounded timeline of elections and
//! membership changes.
//!
//! A 50 ms poll of Raft's metrics feeds the timeline and the lag tracker; every member's
//! own numbers (uptime, version, data size) come from that member's
//! `/dashboard/api/node`, fetched with a short timeout, so a member that does not answer
//! is shown as unreachable within a second.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;
use crate::raft::typ::{Raft, RaftMetrics};
use crate::raft::NodeId;

/// Timeline entries kept.
pub const MAX_EVENTS: usize = 200;
/// Leader log-index samples kept for the lag-in-time estimate.
const MAX_INDEX_SAMPLES: usize = 4_096;
/// How often Raft's metrics are looked at.
const POLL: Duration = Duration::from_millis(50);

/// One timeline entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterEvent {
    pub at_ms: u64,
    /// `election`, `leader`, `membership`.
    pub kind: String,
    pub detail: String,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Replication {
    pub matched_index: Option<u64>,
    pub lag_entries: u64,
    /// How long ago the leader's log first held an entry this follower still lacks.
    pub lag_ms: u64,
}

/// What `/dashboard/api/node` answers: one member's own view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub state: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    /// On the leader: the highest index a quorum of voters holds.
    pub committed: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub uptime_seconds: u64,
    pub version: String,
    pub data_bytes: u64,
    pub counters: usize,
    pub policy_version: Option<u64>,
    /// On the leader: every other member's replication.
    pub replication: BTreeMap<NodeId, Replication>,
}

#[derive(Debug, Default)]
struct Tracker {
    events: VecDeque<ClusterEvent>,
    /// (leader log index, when it was first seen), increasing.
    index_samples: VecDeque<(u64, Instant)>,
    replication: BTreeMap<NodeId, Replication>,
    committed: Option<u64>,
    last_term: u64,
    last_leader: Option<NodeId>,
    last_membership: Option<String>,
}

/// The cluster state the dashboard keeps on each node.
#[derive(Debug)]
pub struct ClusterWatch {
    started: Instant,
    data_dir: PathBuf,
    tracker: Mutex<Tracker>,
    data_bytes: Mutex<(Option<Instant>, u64)>,
}

fn now_ms() -> u64 {
    crate::engine::wall_nanos() / 1_000_000
}

impl ClusterWatch {
    pub fn new(data_dir: PathBuf) -> ClusterWatch {
        ClusterWatch {
            started: Instant::now(),
            data_dir,
            tracker: Mutex::new(Tracker::default()),
            data_bytes: Mutex::new((None, 0)),
        }
    }

    /// Polls Raft's metrics forever.
    pub async fn run(self: std::sync::Arc<Self>, raft: Raft, metrics: std::sync::Arc<Metrics>) {
        let mut interval = tokio::time::interval(POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            let m = raft.metrics().borrow().clone();
            self.observe(&m, Instant::now(), &metrics);
        }
    }

    /// Updates the timeline and the lag tracker from one look at Raft's metrics.
    pub fn observe(&self, m: &RaftMetrics, now: Instant, metrics: &Metrics) {
        let Ok(mut t) = self.tracker.lock() else {
            return;
        };
        let t = &mut *t;
        let mut push = |kind: &str, detail: String| {
            if t.events.len() == MAX_EVENTS {
                t.events.pop_front();
            }
            t.events.push_back(ClusterEvent {
                at_ms: now_ms(),
                kind: kind.into(),
                detail,
            });
        };
        if m.current_term != t.last_term && t.last_term != 0 {
            push("election", format!("term {} began", m.current_term));
        }
        if m.current_leader != t.last_leader {
            let detail = match m.current_leader {
                Some(l) => format!("node {l} leads (term {})", m.current_term),
                None => format!("no leader (term {})", m.current_term),
            };
            push("leader", detail);
        }
        let membership = m.membership_config.membership();
        let described = format!(
            "voters {:?}, learners {:?}",
            membership.voter_ids().collect::<Vec<_>>(),
            membership.learner_ids().collect::<Vec<_>>()
        );
        if t.last_membership.as_deref() != Some(described.as_str()) {
            push("membership", described.clone());
        }
        t.last_term = m.current_term;
        t.last_leader = m.current_leader;
        t.last_membership = Some(described);

        // Replication lag, leader side.
        let last = m.last_log_index.unwrap_or(0);
        if t.index_samples.back().is_none_or(|(i, _)| *i < last) {
            if t.index_samples.len() == MAX_INDEX_SAMPLES {
                t.index_samples.pop_front();
            }
            t.index_samples.push_back((last, now));
        }
        t.replication.clear();
        t.committed = None;
        metrics.raft_replication_lag_entries.reset();
        metrics.raft_replication_lag_seconds.reset();
        if let Some(replication) = m.replication.as_ref().filter(|_| m.state.is_leader()) {
            for (id, matched) in replication.iter() {
                if *id == m.id {
                    continue;
                }
                let matched = matched.as_ref().map(|l| l.index);
                let have = matched.unwrap_or(0);
                let lag_entries = last.saturating_sub(have);
                let lag_ms = if lag_entries == 0 {
                    0
                } else {
                    // The first entry the follower lacks appeared when the leader's log
                    // first went past `have`.
                    let since = t
                        .index_samples
                        .iter()
                        .find(|(i, _)| *i > have)
                        .or(t.index_samples.front())
                        .map_or(now, |(_, at)| *at);
                    u64::try_from(now.saturating_duration_since(since).as_millis())
                        .unwrap_or(u64::MAX)
                };
                let label = id.to_string();
                metrics
                    .raft_replication_lag_entries
                    .with_label_values(&[&label])
                    .set(i64::try_from(lag_entries).unwrap_or(i64::MAX));
                metrics
                    .raft_replication_lag_seconds
                    .with_label_values(&[&label])
                    .set(lag_ms as f64 / 1e3);
                t.replication.insert(
                    *id,
                    Replication {
                        matched_index: matched,
                        lag_entries,
                        lag_ms,
                    },
                );
            }
            // Committed: the index a majority of voters (the leader included) holds.
            let mut held: Vec<u64> = membership
                .voter_ids()
                .map(|v| {
                    if v == m.id {
                        last
                    } else {
                        replication
                            .get(&v)
                            .cloned()
                            .flatten()
                            .map_or(0, |l| l.index)
                    }
                })
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            t.committed = held.get(held.len() / 2).copied();
        }
    }

    pub fn events(&self) -> Vec<ClusterEvent> {
        self.tracker
            .lock()
            .map(|t| t.events.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// This node's own view.
    pub fn node_info(
        &self,
        m: &RaftMetrics,
        counters: usize,
        policy_version: Option<u64>,
    ) -> NodeInfo {
        let (replication, committed) = self
            .tracker
            .lock()
            .map(|t| (t.replication.clone(), t.committed))
            .unwrap_or_default();
        NodeInfo {
            id: m.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            committed,
            snapshot_index: m.snapshot.map(|l| l.index),
            uptime_seconds: self.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_bytes: self.data_bytes(),
            counters,
            policy_version,
            replication,
        }
    }

    /// Bytes under the data directory, measured at most every 10 s (a directory walk).
    fn data_bytes(&self) -> u64 {
        let Ok(mut cached) = self.data_bytes.lock() else {
            return 0;
        };
        if cached
            .0
            .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
        {
            *cached = (Some(Instant::now()), dir_size(&self.data_dir, 4));
        }
        cached.1
    }
}

fn dir_size(path: &Path, depth: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() && depth > 0 => dir_size(&e.path(), depth - 1),
            Ok(md) if md.is_file() => md.len(),
            _ => 0,
        })
        .sum()
}
