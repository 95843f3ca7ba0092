//! Outbound Raft RPCs: how this node reaches its peers (`quorate.raft.v1` over tonic, to
//! each member's peer address, with this node's credentials; see [`super::peer_auth`]).
//!
//! openraft's requests and responses travel as postcard bytes inside a protobuf envelope.
//! Every call honours openraft's deadline for it. A peer that cannot be connected to is
//! reported as `Unreachable` so openraft backs off; any other transport failure is a
//! `NetworkError` and is retried at the next heartbeat.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quorate_proto::raft::raft_client::RaftClient;
use quorate_proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use super::peer_auth::MAX_RAFT_MESSAGE;
use super::peer_auth::{peer_client, PeerAuth, PeerChannel};
use super::typ::Entry;
use super::{Node, NodeId, TypeConfig};

/// The most entry bytes one AppendEntries carries (beyond its first entry); see
/// [`PeerClient::append_entries`].
const APPEND_BUDGET: usize = 256 * 1024;

/// How many of `entries`, from the first, fit in `budget` bytes (always at least one).
fn prefix_within(entries: &[Entry], budget: usize) -> usize {
    if entries.len() <= 1 {
        return entries.len();
    }
    let mut used = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        used = used.saturating_add(postcard::experimental::serialized_size(entry).unwrap_or(0));
        if used > budget {
            return i.max(1);
        }
    }
    entries.len()
}

/// Makes one [`PeerClient`] per target; openraft calls it once per replication stream.
#[derive(Debug, Clone, Default)]
pub struct Network {
    auth: PeerAuth,
}

impl Network {
    /// Peer connections carrying `auth`'s credentials.
    pub fn new(auth: PeerAuth) -> Network {
        Network { auth }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> PeerClient {
        PeerClient::new(target, *node, &self.auth)
    }
}

/// A connection to one peer.
#[derive(Debug)]
pub struct PeerClient {
    target: NodeId,
    client: Option<RaftClient<PeerChannel>>,
    node: Node,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Node, RaftError<NodeId, E>>>;

impl PeerClient {
    fn new(target: NodeId, node: Node, auth: &PeerAuth) -> PeerClient {
        let client = peer_client(node.peer, auth).ok();
        PeerClient {
            target,
            client,
            node,
        }
    }

    async fn call<Req, Resp, E>(
        &mut self,
        kind: RpcKind,
        req: &Req,
        option: &RPCOption,
    ) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(format!("invalid peer address {}", self.node.peer)),
            )));
        };
        let data =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(option.hard_ttl());
        let response = match kind {
            RpcKind::Append => client.append_entries(request).await,
            RpcKind::Vote => client.vote(request).await,
            RpcKind::Snapshot => client.install_snapshot(request).await,
        };
        let payload = response.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&payload.into_inner().data)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(self.target, self.node, e))
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    /// openraft gives every AppendEntries one heartbeat interval, and resends the same
    /// range after a timeout. A lagging follower or a new learner is offered up to
    /// `max_payload_entries` entries of up to a full hit batch each: more bytes than can
    /// cross and be fsynced in one heartbeat, so it would never catch up. Only a prefix
    /// within [`APPEND_BUDGET`] bytes is sent (at least one entry), and `PartialSuccess`
    /// tells openraft where to resume (openraft's documented contract for partial sends).
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        let keep = prefix_within(&rpc.entries, APPEND_BUDGET);
        if keep == rpc.entries.len() {
            return self.call(RpcKind::Append, &rpc, &option).await;
        }
        rpc.entries.truncate(keep);
        let last = rpc.entries.last().map(|e| e.log_id);
        let response = self.call(RpcKind::Append, &rpc, &option).await?;
        Ok(match response {
            AppendEntriesResponse::Success => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::raft::Command;

    fn entry(index: u64, key_bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SetPolicy {
                ts: 0,
                format: "quorate".into(),
                source: "x".repeat(key_bytes),
            }),
        }
    }

    #[test]
    fn append_prefix_fits_the_budget_but_never_drops_the_first_entry() {
        let small: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        assert_eq!(prefix_within(&small, APPEND_BUDGET), 10);
        let big: Vec<Entry> = (1..=10).map(|i| entry(i, APPEND_BUDGET / 3)).collect();
        assert_eq!(prefix_within(&big, APPEND_BUDGET), 2);
        let huge: Vec<Entry> = (1..=3).map(|i| entry(i, APPEND_BUDGET * 2)).collect();
        assert_eq!(prefix_within(&huge, APPEND_BUDGET), 1);
        assert_eq!(prefix_within(&[], APPEND_BUDGET), 0);
    }
}
