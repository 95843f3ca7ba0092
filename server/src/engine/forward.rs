//! Forwarding: a follower hands resolved hits to the leader over the internal
//! `quorate.raft.v1.Raft/Forward` RPC (on the leader's peer address, with this node's
//! peer credentials) and relays the leader's decisions.
//!
//! The hits are resolved here, against this node's policy, so a forwarded request is
//! decided by exactly one policy snapshot, the same as a request the leader received.

use std::sync::Arc;
use std::time::Duration;

use quorate_algorithms::Decision;
use quorate_proto::raft::raft_client::RaftClient;
use quorate_proto::raft::RaftPayload;
use quorate_proto::wire::connection_refused;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Engine, EngineError, ResolvedHit};
use crate::raft::peer::{decode_payload, encode_payload, PeerHandler};
use crate::raft::peer_auth::{peer_client, PeerAuth, PeerChannel};
use crate::raft::Node;

/// What the leader answers to a forwarded request.
pub type ForwardResult = Result<Vec<Decision>, EngineError>;

/// A forwarded request: its resolved hits and whether they are all-or-nothing. Encoded
/// with the hits first, so a leader that predates `atomic` still decodes the hits (and
/// ignores the flag); a request from such a follower (just the hits) is decided hit by
/// hit, as that follower's clients expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardedCheck {
    pub hits: Vec<ResolvedHit>,
    pub atomic: bool,
}

/// Decodes a forwarded request, new or old shape.
pub fn decode_forwarded(data: &[u8]) -> Result<ForwardedCheck, tonic::Status> {
    decode_payload::<ForwardedCheck>(data).or_else(|_| {
        decode_payload::<Vec<ResolvedHit>>(data).map(|hits| ForwardedCheck {
            hits,
            atomic: false,
        })
    })
}

/// The leader side of forwarding, the engine's own peer RPC (the node registers it with
/// the peer service): decode the hits as hostile, cap them, decide them here without
/// forwarding again.
pub fn forward_handler(engine: Arc<Engine>) -> PeerHandler {
    Arc::new(move |data| {
        let engine = Arc::clone(&engine);
        Box::pin(async move {
            let ForwardedCheck { hits, atomic } = decode_forwarded(&data)?;
            check_forwarded(&hits).map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let result: ForwardResult = engine.check(hits, atomic, true).await;
            encode_payload(&result)
        })
    })
}

/// A cached channel to the current leader.
#[derive(Debug, Default)]
pub struct Forwarder {
    auth: PeerAuth,
    channel: Mutex<Option<(Node, RaftClient<PeerChannel>)>>,
}

impl Forwarder {
    /// Forwards with `auth`'s credentials.
    pub fn new(auth: PeerAuth) -> Forwarder {
        Forwarder {
            auth,
            channel: Mutex::default(),
        }
    }

    async fn client(&self, leader: Node) -> Result<RaftClient<PeerChannel>, EngineError> {
        let mut cached = self.channel.lock().await;
        if let Some((node, client)) = cached.as_ref() {
            if *node == leader {
                return Ok(client.clone());
            }
        }
        let client = peer_client(leader.peer, &self.auth)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        *cached = Some((leader, client.clone()));
        Ok(client)
    }

    pub async fn forward(
        &self,
        leader: Node,
        hits: Vec<ResolvedHit>,
        atomic: bool,
        timeout: Duration,
    ) -> Result<Vec<Decision>, EngineError> {
        let mut client = self.client(leader).await?;
        let data = postcard::to_stdvec(&ForwardedCheck { hits, atomic })
            .map_err(|e| EngineError::Internal(e.to_string()))?;
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

/// The most hits one forwarded request may carry: a `quorate.v1` request's cap, or an RLS
/// request's descriptors each matching a few limits, whichever is larger.
pub const MAX_FORWARDED_HITS: usize = 4 * crate::bounds::MAX_HITS;

/// The longest limit name a forwarded hit may carry. RLS limit names are built from the
/// policy's descriptor path, so they may be longer than a `quorate.v1` limit name.
pub const MAX_FORWARDED_LIMIT_LEN: usize = 4 * 1024;

/// The longest counter key a forwarded hit may carry: an RLS key joins up to
/// `MAX_ENTRIES` descriptor entries of up to `MAX_TEXT` bytes each (key and value); an
/// authorization key is bounded by the request's header bytes.
pub const MAX_FORWARDED_KEY_LEN: usize =
    2 * crate::bounds::MAX_ENTRIES * (2 * crate::bounds::MAX_TEXT + 2)
        + crate::authz::MAX_HEADER_BYTES;

/// The caps client hits get, applied to hits a follower forwarded: a peer's hits are
/// decoded as if hostile, like a client's. (Each hit's `Rate` was already validated by
/// its decoder.)
pub fn check_forwarded(hits: &[ResolvedHit]) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidArgument(m));
    if hits.len() > MAX_FORWARDED_HITS {
        return bad(format!(
            "forwarded hits: {} hits, at most {MAX_FORWARDED_HITS} are allowed",
            hits.len()
        ));
    }
    for (i, h) in hits.iter().enumerate() {
        if h.hit.limit.is_empty() || h.hit.limit.len() > MAX_FORWARDED_LIMIT_LEN {
            return bad(format!(
                "forwarded hits[{i}].limit: must be 1 to {MAX_FORWARDED_LIMIT_LEN} bytes"
            ));
        }
        if h.hit.key.len() > MAX_FORWARDED_KEY_LEN {
            return bad(format!(
                "forwarded hits[{i}].key: longer than {MAX_FORWARDED_KEY_LEN} bytes"
            ));
        }
    }
    Ok(())
}
