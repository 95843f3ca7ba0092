//! Who leads: a cheap, always-current view of Raft's metrics for the request path.
//!
//! A watcher task follows openraft's metrics channel (and a short tick, because a
//! partitioned leader stops receiving acknowledgements and so stops producing metrics)
//! and keeps the leader's id and address, and whether fast decisions are allowed here.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

// tokio's clock, not std's: it is the clock openraft's `millis_since_quorum_ack` is measured
// on, and the one the simulator pauses and advances.
use tokio::time::Instant;

use arc_swap::ArcSwapOption;

use super::fast::FastPath;
use super::reserve::Reservations;
use crate::metrics::{Metrics, RaftGauges};
use crate::raft::typ::{LogId, Raft, RaftMetrics};
use crate::raft::{Node, NodeId};

/// How often the watcher re-evaluates without a metrics change.
const TICK: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Leadership {
    node_id: NodeId,
    is_leader: AtomicBool,
    leader: ArcSwapOption<(NodeId, Node)>,
    /// Milliseconds since `epoch` at which the last quorum ack was seen.
    quorum_ack_ms: AtomicU64,
    epoch: Instant,
    /// How long a leader may go without a quorum's acknowledgement and still decide fast
    /// hits: the minimum election timeout, so by the time the other members can have
    /// elected a new leader, this one has stopped deciding alone.
    fast_quorum_grace: Duration,
}

/// `(term, last log index)` when this process first saw itself lead that term. A leader
/// restarted within its term resumes without an election or a new entry of its own, so
/// "an own entry applied" holds at once, while entries its previous incarnation committed
/// after the commit index it saved are not applied yet: until they are, this node is not
/// caught up. Kept by the watcher task alone.
type LeadFloor = Option<(u64, u64)>;

impl Leadership {
    pub fn watch(
        raft: Raft,
        node_id: NodeId,
        fast: Arc<FastPath>,
        reserved: Arc<Reservations>,
        metrics: Arc<Metrics>,
        election_timeout_min: Duration,
    ) -> Arc<Leadership> {
        let leadership = Arc::new(Leadership {
            node_id,
            is_leader: AtomicBool::new(false),
            leader: ArcSwapOption::empty(),
            quorum_ack_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            fast_quorum_grace: election_timeout_min,
        });
        let this = Arc::clone(&leadership);
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut floor: LeadFloor = None;
            loop {
                let m = rx.borrow_and_update().clone();
                this.update(&m, &mut floor, &fast, &reserved, &metrics);
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tick.tick() => {}
                }
            }
        });
        leadership
    }

    fn update(
        &self,
        m: &RaftMetrics,
        floor: &mut LeadFloor,
        fast: &FastPath,
        reserved: &Reservations,
        metrics: &Metrics,
    ) {
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|node| Arc::new((id, *node)))
        });
        self.leader.store(leader);
        let is_leader = m.current_leader == Some(self.node_id) && m.state.is_leader();
        self.is_leader.store(is_leader, Ordering::Release);
        let now_ms = self.millis();
        if let Some(since) = m.millis_since_quorum_ack {
            self.quorum_ack_ms
                .store(now_ms.saturating_sub(since), Ordering::Release);
        }
        let voters = m.membership_config.membership().voter_ids().count();
        let has_quorum = voters <= 1
            || now_ms.saturating_sub(self.quorum_ack_ms.load(Ordering::Acquire))
                < u64::try_from(self.fast_quorum_grace.as_millis()).unwrap_or(u64::MAX);
        let floor = lead_floor(floor, is_leader, m.current_term, m.last_log_index);
        let caught_up = applied_own_entry(m.last_applied, m.current_term, self.node_id)
            && m.last_applied.map_or(0, |l| l.index) >= floor;
        if is_leader && caught_up && has_quorum {
            fast.enable(m.current_term);
        } else {
            fast.disable();
        }
        // Spending committed reservations needs no quorum: they are counted already.
        if is_leader && caught_up {
            reserved.enable(m.current_term);
        } else {
            reserved.disable();
        }
        metrics.observe_raft(RaftGauges {
            term: m.current_term,
            last_applied: m.last_applied.map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            is_leader: m.state.is_leader(),
            leader_id: m.current_leader.unwrap_or(0),
            voters: voters as u64,
        });
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn is_leader(&self) -> bool {
        self.is_leader.load(Ordering::Acquire)
    }

    pub fn leader_node(&self) -> Option<Node> {
        self.leader.load().as_ref().map(|l| l.1)
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        self.leader.load().as_ref().map(|l| l.0)
    }
}

/// The log index this leader must have applied before it is caught up (0 when it does
/// not lead): the last log index when it first saw itself lead `term` (see [`LeadFloor`]).
fn lead_floor(floor: &mut LeadFloor, is_leader: bool, term: u64, last_log: Option<u64>) -> u64 {
    if !is_leader {
        *floor = None;
        return 0;
    }
    match *floor {
        Some((t, index)) if t == term => index,
        _ => {
            let index = last_log.unwrap_or(0);
            *floor = Some((term, index));
            index
        }
    }
}

/// Whether the last applied entry was written by this node's own leadership, which means
/// every entry of earlier leaders is applied too. The term alone is not enough: openraft's
/// default leader ids are `(term, node)`, so an earlier leader may share this leader's
/// term (found by the simulator, `sim/`, seed 203).
fn applied_own_entry(last_applied: Option<LogId>, term: u64, node_id: NodeId) -> bool {
    last_applied.map(|l| (l.leader_id.term, l.leader_id.node_id)) == Some((term, node_id))
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    #[test]
    fn an_entry_of_an_earlier_leader_of_the_same_term_is_not_our_own() {
        let by = |term, node| Some(LogId::new(CommittedLeaderId::new(term, node), 10));
        assert!(applied_own_entry(by(7, 3), 7, 3));
        assert!(
            !applied_own_entry(by(7, 2), 7, 3),
            "n2 led term 7 before n3"
        );
        assert!(!applied_own_entry(by(6, 3), 7, 3));
        assert!(!applied_own_entry(None, 7, 3));
    }

    #[test]
    fn a_leader_is_caught_up_only_past_the_log_it_found_in_its_term() {
        let mut floor = None;
        assert_eq!(lead_floor(&mut floor, true, 6, Some(40)), 40);
        assert_eq!(
            lead_floor(&mut floor, true, 6, Some(55)),
            40,
            "fixed for the term"
        );
        assert_eq!(lead_floor(&mut floor, true, 7, Some(60)), 60, "a new term");
        assert_eq!(lead_floor(&mut floor, false, 7, Some(61)), 0);
        assert_eq!(
            lead_floor(&mut floor, true, 7, Some(62)),
            62,
            "led again: re-measured"
        );
    }
}
