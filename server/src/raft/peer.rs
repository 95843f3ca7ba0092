//! Inbound peer RPCs: the `quorate.raft.v1.Raft` service that other members call on this
//! node's peer listener — Raft itself, plus decision and admin forwarding from followers.
//!
//! Every call has passed the peer credentials check ([`super::peer_auth::PeerGate`])
//! before it gets here, and everything in it is still decoded as if hostile: payload
//! types validate themselves on decode (a `Rate` goes through `Rate::new`), forwarded hits
//! get the same caps as client hits, and snapshot chunks must stay under
//! `--max-snapshot-bytes` and continue the snapshot being received, so no offset makes
//! this node allocate beyond the cap.
//!
//! Each handler decodes openraft's request, hands it to the local Raft, and returns the
//! whole `Result` encoded, so the caller sees openraft's own error values.

use std::sync::{Arc, Mutex};

use openraft::raft::InstallSnapshotRequest;
use quorate_proto::raft::raft_server::{Raft as RaftService, RaftServer};
use quorate_proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use super::network::MAX_RAFT_MESSAGE;
use super::peer_auth::{PeerAuth, PeerGate};
use super::typ::Raft;
use super::TypeConfig;
use crate::engine::{check_forwarded, Engine, ForwardResult, ResolvedHit};
use crate::http::admin::{AdminReply, ForwardedAdmin};

/// Serves peers' RPCs for the local node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    engine: Arc<Engine>,
    /// The admin calls a follower may forward (leader writes only).
    admin: axum::Router,
    max_snapshot_bytes: u64,
    /// The snapshot being received: its id and how many bytes of it have arrived.
    receiving: Arc<Mutex<Option<(String, u64)>>>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

impl PeerService {
    pub fn new(
        raft: Raft,
        engine: Arc<Engine>,
        admin: axum::Router,
        max_snapshot_bytes: u64,
    ) -> PeerService {
        PeerService {
            raft,
            engine,
            admin,
            max_snapshot_bytes,
            receiving: Arc::default(),
        }
    }

    /// The tonic service behind `auth`'s credentials check, with message limits sized
    /// for snapshot chunks.
    pub fn server(self, auth: &PeerAuth) -> InterceptedService<RaftServer<PeerService>, PeerGate> {
        let server = RaftServer::new(self)
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE);
        InterceptedService::new(server, auth.gate())
    }

    /// Refuses a chunk that would take the snapshot past the cap, or that does not start
    /// or continue the snapshot being received (a gap would make the receiver grow its
    /// buffer up to the offset).
    fn admit_chunk(&self, rpc: &InstallSnapshotRequest<TypeConfig>) -> Result<(), Status> {
        let len = u64::try_from(rpc.data.len()).unwrap_or(u64::MAX);
        let end = rpc.offset.checked_add(len).unwrap_or(u64::MAX);
        if end > self.max_snapshot_bytes {
            return Err(Status::resource_exhausted(format!(
                "snapshot chunk ends at byte {end}, beyond this node's cap of {} bytes \
                 (--max-snapshot-bytes)",
                self.max_snapshot_bytes
            )));
        }
        if rpc.offset == 0 {
            return Ok(());
        }
        let receiving = self
            .receiving
            .lock()
            .map_err(|_| Status::internal("snapshot state poisoned"))?;
        match &*receiving {
            Some((id, received)) if *id == rpc.meta.snapshot_id && rpc.offset <= *received => {
                Ok(())
            }
            _ => Err(Status::invalid_argument(format!(
                "snapshot chunk at offset {} does not continue the snapshot being received",
                rpc.offset
            ))),
        }
    }

    /// Records what a chunk Raft accepted added to the snapshot being received.
    fn chunk_accepted(&self, id: String, offset: u64, end: u64, done: bool) {
        if let Ok(mut receiving) = self.receiving.lock() {
            *receiving = match receiving.take() {
                _ if done => None,
                _ if offset == 0 => Some((id, end)),
                Some((current, received)) if current == id => Some((id, received.max(end))),
                other => other,
            };
        }
    }
}

/// Decodes a peer's payload; the decoders validate every value (see the module doc).
pub fn decode_payload<T: DeserializeOwned>(data: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(data)
        .map_err(|e| Status::invalid_argument(format!("undecodable peer payload: {e}")))
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    decode_payload(&request.into_inner().data)
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    postcard::to_stdvec(value)
        .map(|data| Response::new(RaftPayload { data: data.into() }))
        .map_err(|e| Status::internal(format!("cannot encode raft response: {e}")))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request)?;
        self.admit_chunk(&rpc)?;
        let (id, offset, done) = (rpc.meta.snapshot_id.clone(), rpc.offset, rpc.done);
        let end = offset.saturating_add(u64::try_from(rpc.data.len()).unwrap_or(u64::MAX));
        let result = self.raft.install_snapshot(rpc).await;
        if result.is_ok() {
            self.chunk_accepted(id, offset, end, done);
        }
        encode(&result)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let hits: Vec<ResolvedHit> = decode(request)?;
        let result: ForwardResult = match check_forwarded(&hits) {
            Ok(()) => self.engine.check(hits, true).await,
            Err(e) => Err(e),
        };
        encode(&result)
    }

    async fn admin(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let call: ForwardedAdmin = decode(request)?;
        let reply: AdminReply = crate::http::admin::serve_forwarded(&self.admin, call).await;
        encode(&reply)
    }
}
