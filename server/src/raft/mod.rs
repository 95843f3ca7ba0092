//! The Raft layer: type declarations, the log entry payload ([`Command`]) and its
//! response, plus the storage, state machine and network that openraft drives.
//!
//! - [`LogStore`]: the durable, group-committed Raft log and vote (ours, on disk; the
//!   `quorate-raft-log` crate).
//! - [`state_machine`]: applies [`Command`]s to the counters and the policy. Pure: no
//!   clock, no I/O during apply; every replica computes the same decisions.
//! - [`network`]: outbound Raft RPCs to peers over tonic (`quorate.raft.v1`).
//! - [`peer`]: the inbound side of those RPCs, served on the peer listener only.
//! - [`peer_auth`]: how peers prove they belong to the cluster (the seam for mTLS).
//! - [`runtime`]: tokio with a seedable election-timeout RNG (for the simulator).

pub mod network;
pub mod peer;
pub mod peer_auth;
pub mod runtime;
pub mod state_machine;

use std::fmt;
use std::io::Cursor;
use std::net::SocketAddr;

use quorate_algorithms::{Decision, Nanos, Rate, ReserveRequest, Reserved};
use serde::{Deserialize, Serialize};

/// A node's identity in the cluster.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// quorate's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = NodeId,
        Node = Node,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::SeededTokio,
);

/// quorate's Raft log: the `quorate-raft-log` store for this type configuration.
pub type LogStore = quorate_raft_log::LogStore<TypeConfig>;

/// Aliases of openraft's generic types, declared once.
pub mod typ {
    use super::{NodeId, TypeConfig};

    pub type Raft = openraft::Raft<TypeConfig>;
    pub type Entry = openraft::Entry<TypeConfig>;
    pub type LogId = openraft::LogId<NodeId>;
    pub type Vote = openraft::Vote<NodeId>;
    pub type StorageError = openraft::StorageError<NodeId>;
    pub type StoredMembership = openraft::StoredMembership<NodeId, super::Node>;
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, super::Node>;
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, super::Node>;
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, super::Node>;
    pub type ClientWriteResponse = openraft::raft::ClientWriteResponse<TypeConfig>;
}

/// Where a cluster member can be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The member's public gRPC address: decisions (given to clients as a leader hint).
    pub grpc: SocketAddr,
    /// The member's HTTP address: admin API, metrics, forward-auth.
    pub http: SocketAddr,
    /// The member's peer address: Raft traffic, decision and admin forwarding. Only peers
    /// holding the cluster's credentials are served there.
    pub peer: SocketAddr,
}

impl Default for Node {
    fn default() -> Self {
        let unspecified = SocketAddr::from(([127, 0, 0, 1], 0));
        Node {
            grpc: unspecified,
            http: unspecified,
            peer: unspecified,
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grpc={} http={} peer={}",
            self.grpc, self.http, self.peer
        )
    }
}

/// One hit as it travels through the log: the limit it counts against, the counter key
/// within that limit, its cost (0 = peek), and the rate in force when the node that
/// received it resolved the limit. Carrying the rate makes every decision depend on one
/// policy snapshot only, even while a new policy is being applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hit {
    pub limit: String,
    pub key: String,
    pub cost: u64,
    pub rate: Rate,
}

/// `hits` as one group for `CounterStore::check_all`, each under its limit's key cap in
/// `set`; `keys` are their counter keys, in the same order.
pub(crate) fn group_hits<'a>(
    hits: &'a [Hit],
    keys: &'a [String],
    set: &crate::policy::PolicySet,
) -> Vec<quorate_algorithms::GroupHit<'a>> {
    hits.iter()
        .zip(keys)
        .map(|(hit, key)| quorate_algorithms::GroupHit {
            key,
            cap: set.key_cap(&hit.limit),
            rate: &hit.rate,
            cost: hit.cost,
        })
        .collect()
}

/// The payload of a Raft log entry. Every entry carries the leader's timestamp `ts`:
/// replicas never read their own clock while applying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `strict` hits, decided when the entry applies, in log order.
    Hits { ts: Nanos, hits: Vec<Hit> },
    /// `fast` hits the leader already decided: the quota it granted, replayed with
    /// `force` so every replica converges on the leader's answers.
    Consumed { ts: Nanos, hits: Vec<Hit> },
    /// Replace the live policy. `source` is the policy document as submitted, in the
    /// named `format`; it is parsed again at apply (deterministically) so that every
    /// replica holds the same compiled policy.
    SetPolicy {
        ts: Nanos,
        format: String,
        source: String,
    },
    /// Like `SetPolicy`, but only when no policy was ever applied: the built-in example a
    /// fresh node starts with must never overwrite a policy an operator applied meanwhile.
    InitPolicy {
        ts: Nanos,
        format: String,
        source: String,
    },
    /// Re-activate an earlier policy version (`quorate policy rollback`).
    RollbackPolicy { ts: Nanos, version: u64 },
    /// `strict` hits with their request boundaries: each request is decided when the
    /// entry applies, in log order, all-or-nothing when it is `atomic` (see
    /// [`HitRequest`]). What the engine proposes since all-or-nothing requests; old logs'
    /// [`Command::Hits`] entries still apply hit by hit. (Last, so older logs decode.)
    Requests {
        ts: Nanos,
        requests: Vec<HitRequest>,
    },
    /// Durable reservations for `strict` limits: each item's quota is checked and counted
    /// as consumed when the entry applies; the leader then answers hits within it from
    /// memory (see `engine::reserve`).
    Reserve { ts: Nanos, items: Vec<ReserveItem> },
    /// Envoy RLQS shares the leader is about to push (`crate::quota`): recorded in the
    /// replicated grant table, so every share is committed before a proxy sees it.
    Assign {
        ts: Nanos,
        grants: Vec<crate::quota::Grant>,
    },
    /// Unused parts of `strict` reservations the leader gave up (it can no longer spend
    /// them): each is taken back from the counting bucket it was recorded in, so a crash
    /// or a sliding window's next window loses less (see `engine::reserve`).
    Settle { ts: Nanos, items: Vec<SettleItem> },
}

/// The unused part of one key's reservations, given back by a [`Command::Settle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleItem {
    pub limit: String,
    pub key: String,
    pub rate: Rate,
    /// The end of the reservations' validity: names the bucket they were recorded in.
    pub valid_until: Nanos,
    pub unused: u64,
}

/// One key's reservation request in a [`Command::Reserve`] entry. Like a [`Hit`], it
/// carries the rate (and sizing) in force when the leader asked, so every replica
/// decides it from the entry alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveItem {
    pub limit: String,
    pub key: String,
    pub rate: Rate,
    pub request: ReserveRequest,
}

/// One request's strict hits in a [`Command::Requests`] entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitRequest {
    /// All-or-nothing: every hit consumes if every hit passes, otherwise none does (its
    /// passing hits are answered as peeks). `false`: each hit decided on its own, as in
    /// [`Command::Hits`].
    pub atomic: bool,
    pub hits: Vec<Hit>,
}

impl Default for Command {
    /// An empty hit batch (openraft's test suite needs a default payload).
    fn default() -> Self {
        Command::Hits {
            ts: 0,
            hits: Vec::new(),
        }
    }
}

impl Command {
    /// The leader's timestamp this entry carries.
    pub fn ts(&self) -> Nanos {
        match self {
            Command::Hits { ts, .. }
            | Command::Consumed { ts, .. }
            | Command::SetPolicy { ts, .. }
            | Command::InitPolicy { ts, .. }
            | Command::RollbackPolicy { ts, .. }
            | Command::Requests { ts, .. }
            | Command::Reserve { ts, .. }
            | Command::Assign { ts, .. }
            | Command::Settle { ts, .. } => *ts,
        }
    }
}

impl Command {
    /// The requests whose decisions this entry's [`CommandResponse::Decisions`] lists, in
    /// order: `(atomic, hits)`. A [`Command::Hits`] is one request decided hit by hit.
    /// A hit of an atomic request consumed only if every decision of its request allowed.
    pub fn decided_requests(&self) -> Option<Vec<(bool, &[Hit])>> {
        match self {
            Command::Hits { hits, .. } => Some(vec![(false, hits.as_slice())]),
            Command::Requests { requests, .. } => Some(
                requests
                    .iter()
                    .map(|r| (r.atomic, r.hits.as_slice()))
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// What applying one [`Command`] produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResponse {
    /// Membership changes and blank entries.
    #[default]
    Empty,
    /// One decision per hit of a [`Command::Hits`] (or of every request of a
    /// [`Command::Requests`], flattened), in order.
    Decisions(Vec<Decision>),
    /// A [`Command::Consumed`] batch was recorded.
    Consumed,
    /// The policy version that is now live, or why the command was refused (the previous
    /// policy stays live).
    Policy(Result<u64, String>),
    /// One outcome per item of a [`Command::Reserve`], in order, and the log time `at`
    /// they apply from.
    Reserved { at: Nanos, outcomes: Vec<Reserved> },
    /// A [`Command::Assign`] was recorded.
    Assigned,
    /// A [`Command::Settle`] was applied.
    Settled,
}
