//! Forwarding: a follower hands resolved hits to the leader over the internal
//! `quorate.raft.v1.Raft/Forward` RPC and relays the leader's decisions.
//!
//! The hits are resolved here, against this node's policy, so a forwarded request is
//! decided by exactly one policy snapshot, the same as a request the leader received.

use std::time::Duration;

use quorate_algorithms::Decision;
use quorate_proto::raft::raft_client::RaftClient;
use quorate_proto::raft::RaftPayload;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::{EngineError, ResolvedHit};
use crate::raft::Node;

/// What the leader answers to a forwarded request.
pub type ForwardResult = Result<Vec<Decision>, EngineError>;

/// A cached channel to the current leader.
#[derive(Debug, Default)]
pub struct Forwarder {
    channel: Mutex<Option<(Node, RaftClient<Channel>)>>,
}

impl Forwarder {
    async fn client(&self, leader: Node) -> Result<RaftClient<Channel>, EngineError> {
        let mut cached = self.channel.lock().await;
        if let Some((node, client)) = cached.as_ref() {
            if *node == leader {
                return Ok(client.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{}", leader.grpc))
            .map_err(|e| EngineError::Internal(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let client = RaftClient::new(endpoint.connect_lazy());
        *cached = Some((leader, client.clone()));
        Ok(client)
    }

    pub async fn forward(
        &self,
        leader: Node,
        hits: Vec<ResolvedHit>,
        timeout: Duration,
    ) -> Result<Vec<Decision>, EngineError> {
        let mut client = self.client(leader).await?;
        let data = postcard::to_stdvec(&hits).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut request = tonic::Request::new(RaftPayload { data: data.into() });
        request.set_timeout(timeout);
        let response = client.forward(request).await.map_err(|status| {
            let reason = format!("forwarding to the leader failed: {}", status.message());
            // A refused connection never carried the request; anything later might have.
            if connection_refused(&status) {
                EngineError::not_applied(reason, Some(leader))
            } else {
                EngineError::unavailable(reason, Some(leader))
            }
        })?;
        let result: ForwardResult =
            postcard::from_bytes(&response.into_inner().data).map_err(|e| {
                EngineError::Internal(format!("undecodable answer from the leader: {e}"))
            })?;
        result
    }
}

/// Whether `status` is a refused TCP connection: the request was never sent.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = e.source();
    }
    false
}
