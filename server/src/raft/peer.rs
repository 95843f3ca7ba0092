//! Inbound Raft RPCs: the `quorate.raft.v1.Raft` service that peers call, plus the
//! engine's forwarding of decisions from followers to the leader.
//!
//! Each handler decodes openraft's request, hands it to the local Raft, and returns the
//! whole `Result` encoded, so the caller sees openraft's own error values.

use quorate_proto::raft::raft_server::{Raft as RaftService, RaftServer};
use quorate_proto::raft::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use super::network::MAX_RAFT_MESSAGE;
use super::typ::Raft;
use crate::engine::{Engine, ForwardResult, ResolvedHit};

/// Serves peers' Raft RPCs for the local node.
#[derive(Clone)]
pub struct PeerService {
    raft: Raft,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

impl PeerService {
    /// The tonic service, with message limits sized for snapshot chunks.
    pub fn server(raft: Raft, engine: Arc<Engine>) -> RaftServer<PeerService> {
        RaftServer::new(PeerService { raft, engine })
            .max_decoding_message_size(MAX_RAFT_MESSAGE)
            .max_encoding_message_size(MAX_RAFT_MESSAGE)
    }
}

fn decode<T: DeserializeOwned>(request: Request<RaftPayload>) -> Result<T, Status> {
    postcard::from_bytes(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
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
        let rpc = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let hits: Vec<ResolvedHit> = decode(request)?;
        let result: ForwardResult = self.engine.check(hits, true).await;
        encode(&result)
    }
}
