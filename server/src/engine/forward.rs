//! Forwarding: a follower passes decision requests to the leader over gRPC.

use std::time::Duration;

use quorate_algorithms::Decision;
use quorate_proto::v1 as pb;
use quorate_proto::v1::rate_limiter_client::RateLimiterClient;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use super::EngineError;
use crate::raft::{Hit, Node};

/// Metadata key marking a request a follower already forwarded.
pub const FORWARDED_HEADER: &str = "x-quorate-forwarded";

/// A cached channel to the current leader.
#[derive(Debug, Default)]
pub struct Forwarder {
    channel: Mutex<Option<(Node, RateLimiterClient<Channel>)>>,
}

impl Forwarder {
    async fn client(&self, leader: Node) -> Result<RateLimiterClient<Channel>, EngineError> {
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
        let client = RateLimiterClient::new(endpoint.connect_lazy());
        *cached = Some((leader, client.clone()));
        Ok(client)
    }

    pub async fn check(
        &self,
        leader: Node,
        hits: Vec<Hit>,
        timeout: Duration,
    ) -> Result<Vec<Decision>, EngineError> {
        let mut client = self.client(leader).await?;
        let mut request = tonic::Request::new(pb::CheckRequest {
            hits: hits
                .into_iter()
                .map(|h| pb::Hit {
                    limit: h.limit,
                    key: h.key,
                    cost: Some(h.cost),
                })
                .collect(),
        });
        request.set_timeout(timeout);
        request.metadata_mut().insert(
            FORWARDED_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
        let response = client
            .check(request)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => EngineError::UnknownLimit(status.message().to_string()),
                tonic::Code::InvalidArgument => {
                    EngineError::InvalidArgument(status.message().to_string())
                }
                _ => EngineError::unavailable(
                    format!("forwarding to the leader failed: {}", status.message()),
                    Some(leader),
                ),
            })?;
        Ok(response
            .into_inner()
            .decisions
            .iter()
            .map(crate::grpc::decision_from_pb)
            .collect())
    }
}
