//! The simulated network: openraft's transport between in-process nodes.
//!
//! Every RPC is a direct call on the target's `Raft` handle after a seeded random delay,
//! so concurrent RPCs overtake each other (reordering). The nemesis can drop requests or
//! responses, deliver a request twice (the copy arrives later, out of order) and cut
//! links (partitions). A crashed node is unregistered: RPCs to it are `Unreachable`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quorate_server::raft::typ::Raft;
use quorate_server::raft::{Node, NodeId, TypeConfig};

use crate::rng::SimRng;
use crate::trace::Faults;

/// How lossy and slow links are right now (the nemesis changes it).
#[derive(Debug, Clone, Copy)]
pub struct LinkFaults {
    /// Chance in 1,000 that a request or a response is lost.
    pub drop_per_mille: u32,
    /// Chance in 1,000 that a request is delivered a second time, later.
    pub duplicate_per_mille: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl LinkFaults {
    pub const CLEAN: LinkFaults = LinkFaults {
        drop_per_mille: 0,
        duplicate_per_mille: 0,
        min_delay: Duration::from_micros(200),
        max_delay: Duration::from_millis(2),
    };
}

struct NetState {
    nodes: BTreeMap<NodeId, Raft>,
    /// Directed links that are cut.
    cut: BTreeSet<(NodeId, NodeId)>,
    faults: LinkFaults,
}

impl std::fmt::Debug for NetState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetState")
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("cut", &self.cut)
            .field("faults", &self.faults)
            .finish()
    }
}

/// The whole network; cheap to clone.
#[derive(Debug, Clone)]
pub struct Net {
    state: Arc<Mutex<NetState>>,
    rng: SimRng,
    faults: Faults,
}

/// What happens to one message.
enum Fate {
    Unreachable,
    Deliver {
        delay: Duration,
        duplicate: Option<Duration>,
        lose_reply: bool,
        lose_request: bool,
    },
}

impl Net {
    pub fn new(rng: SimRng, faults: Faults) -> Net {
        Net {
            state: Arc::new(Mutex::new(NetState {
                nodes: BTreeMap::new(),
                cut: BTreeSet::new(),
                faults: LinkFaults::CLEAN,
            })),
            rng,
            faults,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut NetState) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// `id` answers RPCs through `raft` (a started or restarted node).
    pub fn register(&self, id: NodeId, raft: Raft) {
        self.with(|s| s.nodes.insert(id, raft));
    }

    /// `id` is down: RPCs to it fail as unreachable.
    pub fn unregister(&self, id: NodeId) {
        self.with(|s| s.nodes.remove(&id));
    }

    pub fn set_faults(&self, faults: LinkFaults) {
        self.with(|s| s.faults = faults);
    }

    /// Cuts every link between `side` and the other nodes, both ways.
    pub fn partition(&self, side: &BTreeSet<NodeId>, all: &[NodeId]) {
        self.with(|s| {
            for a in all {
                for b in all {
                    if side.contains(a) != side.contains(b) {
                        s.cut.insert((*a, *b));
                    }
                }
            }
        });
    }

    /// Cuts one direction only: `from` can no longer reach `to`.
    pub fn cut_one_way(&self, from: NodeId, to: NodeId) {
        self.with(|s| s.cut.insert((from, to)));
    }

    pub fn heal(&self) {
        self.with(|s| s.cut.clear());
    }

    fn target(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        self.with(|s| {
            if s.cut.contains(&(from, to)) {
                return None;
            }
            s.nodes.get(&to).cloned()
        })
    }

    fn fate(&self, from: NodeId, to: NodeId) -> Fate {
        let faults = self.with(|s| s.faults);
        if self.target(from, to).is_none() {
            return Fate::Unreachable;
        }
        let delay = self.rng.duration(faults.min_delay, faults.max_delay);
        let lose_request = self.rng.per_mille(faults.drop_per_mille);
        let lose_reply = !lose_request && self.rng.per_mille(faults.drop_per_mille);
        let duplicate = (!lose_request && self.rng.per_mille(faults.duplicate_per_mille))
            .then(|| self.rng.duration(faults.max_delay, faults.max_delay * 20));
        Fate::Deliver {
            delay,
            duplicate,
            lose_reply,
            lose_request,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("link down or node crashed")]
struct LinkDown;

#[derive(Debug, thiserror::Error)]
#[error("message lost")]
struct Lost;

/// One node's view of the network.
#[derive(Debug, Clone)]
pub struct NodeNet {
    pub net: Net,
    pub from: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for NodeNet {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, _node: &Node) -> Link {
        Link {
            net: self.net.clone(),
            from: self.from,
            to: target,
        }
    }
}

/// The link from one node to another.
#[derive(Debug)]
pub struct Link {
    net: Net,
    from: NodeId,
    to: NodeId,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl Link {
    /// Sends `req` over this link through `call`, applying this message's fate.
    async fn send<Req, Resp, E, F, Fut>(
        &self,
        req: Req,
        option: RPCOption,
        call: F,
    ) -> RpcResult<Resp, E>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft, Req) -> Fut + Send + Sync + 'static + Clone,
        Fut: std::future::Future<Output = Result<Resp, RaftError<NodeId, E>>> + Send + 'static,
    {
        let (net, from, to) = (&self.net, self.from, self.to);
        let (delay, duplicate, lose_reply, lose_request) = match net.fate(from, to) {
            Fate::Unreachable => {
                return Err(RPCError::Unreachable(Unreachable::new(&LinkDown)));
            }
            Fate::Deliver {
                delay,
                duplicate,
                lose_reply,
                lose_request,
            } => (delay, duplicate, lose_reply, lose_request),
        };
        if let Some(later) = duplicate {
            net.faults.count("duplicate");
            let net = net.clone();
            let copy = req.clone();
            let call = call.clone();
            tokio::spawn(async move {
                tokio::time::sleep(later).await;
                if let Some(raft) = net.target(from, to) {
                    let _ = call(raft, copy).await;
                }
            });
        }
        let ttl = option.hard_ttl();
        if lose_request {
            net.faults.count("drop");
            tokio::time::sleep(ttl.min(delay * 10)).await;
            return Err(RPCError::Network(NetworkError::new(&Lost)));
        }
        let delivered = async {
            tokio::time::sleep(delay).await;
            // The link may have been cut, or the target crashed, while in flight.
            let raft = net.target(from, to).ok_or(LinkDown)?;
            let result = call(raft, req).await;
            tokio::time::sleep(delay).await;
            if net.target(from, to).is_none() {
                return Err(LinkDown);
            }
            Ok(result)
        };
        match tokio::time::timeout(ttl, delivered).await {
            Err(_) => Err(RPCError::Network(NetworkError::new(&Lost))),
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Ok(Ok(_)) if lose_reply => {
                net.faults.count("drop");
                Err(RPCError::Network(NetworkError::new(&Lost)))
            }
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(RaftError::Fatal(f)))) => Err(RPCError::Unreachable(Unreachable::new(&f))),
            Ok(Ok(Err(e))) => Err(RPCError::RemoteError(RemoteError::new(to, e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.send(rpc, option, |raft: Raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.send(rpc, option, |raft: Raft, rpc| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.send(rpc, option, |raft: Raft, rpc| async move {
            raft.vote(rpc).await
        })
        .await
    }
}
